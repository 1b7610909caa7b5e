//! `skiff scheduler --config FILE`: the part of kube-scheduler's `KubeSchedulerConfiguration`
//! (`kubescheduler.config.k8s.io/v1`, YAML or JSON) that skiff honours, parsed and validated
//! with kube-scheduler's rules and messages (`field.path: Invalid value: ...`):
//!
//! - `clientConnection.kubeconfig`;
//! - `leaderElection.{leaderElect, leaseDuration, renewDeadline, retryPeriod, resourceLock
//!   (leases only), resourceName, resourceNamespace}` (durations in Go's syntax: `15s`,
//!   `1m30s`; each must be positive);
//! - `profiles[].schedulerName` (no profiles, or one without a name, is `default-scheduler`;
//!   names must be unique);
//! - `percentageOfNodesToScore` (0..=100) and `parallelism` (> 0): validated and kept, not
//!   used yet (every feasible node is scored, filters run on one task).
//!
//! Any other field is an error naming it (kube-scheduler would accept, e.g., `plugins`; skiff
//! refuses what it would silently ignore). Every value is optional here: the caller lays the
//! file over the defaults and explicit flags over the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "kubescheduler.config.k8s.io/v1";
/// The only `kind` accepted.
pub const KIND: &str = "KubeSchedulerConfiguration";
/// The profile name when the file names none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// A validated configuration file; `None` = not set in the file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KubeSchedulerConfiguration {
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `leaderElection`.
    pub leader_election: LeaderElection,
    /// `profiles[].schedulerName`, in file order, defaulted and unique (never empty).
    pub scheduler_names: Vec<String>,
    /// `percentageOfNodesToScore` (0 = kube-scheduler's adaptive default); not used yet.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// `parallelism`; not used yet.
    pub parallelism: Option<u32>,
}

/// `leaderElection`, each value as set in the file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LeaderElection {
    /// `leaderElect`.
    pub leader_elect: Option<bool>,
    /// `leaseDuration`.
    pub lease_duration: Option<Duration>,
    /// `renewDeadline`.
    pub renew_deadline: Option<Duration>,
    /// `retryPeriod`.
    pub retry_period: Option<Duration>,
    /// `resourceName`.
    pub resource_name: Option<String>,
    /// `resourceNamespace`.
    pub resource_namespace: Option<String>,
}

/// Just the type fields, read first so a file of another kind is named as such rather than
/// through its first unknown field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: Option<String>,
    client_connection: Option<ClientConnectionDoc>,
    leader_election: Option<LeaderElectionDoc>,
    profiles: Option<Vec<ProfileDoc>>,
    percentage_of_nodes_to_score: Option<i64>,
    parallelism: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientConnectionDoc {
    kubeconfig: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaderElectionDoc {
    leader_elect: Option<bool>,
    lease_duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
    resource_lock: Option<String>,
    resource_name: Option<String>,
    resource_namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileDoc {
    scheduler_name: Option<String>,
}

fn invalid(field: &str, value: impl std::fmt::Debug, why: &str) -> Error {
    Error::Invalid(format!("{field}: Invalid value: {value:?}: {why}"))
}

/// The first line of a parser's message (`line 3 column 1: unknown field ...`), without the
/// source snippet that follows it.
fn one_line(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("not a valid YAML or JSON document");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A Go `time.ParseDuration` string (`300ms`, `-1.5h`, `2h45m`; `0` alone needs no unit) in
/// nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let bad = || format!("{text:?}: not a duration (e.g. 15s, 1m30s, 500ms)");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_end);
        if number.is_empty() || number == "." {
            return Err(bad());
        }
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = after;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad());
    }
    let nanos = total.round() as i128;
    Ok(if negative { -nanos } else { nanos })
}

/// A positive duration field, as componentbaseconfig's validation wants it.
fn positive_duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, Error> {
    let Some(text) = text else {
        return Ok(None);
    };
    let nanos = parse_go_duration(text).map_err(|e| Error::Invalid(format!("{field}: {e}")))?;
    if nanos <= 0 {
        return Err(invalid(field, text, "must be greater than zero"));
    }
    let nanos = u64::try_from(nanos).map_err(|_| invalid(field, text, "too long"))?;
    Ok(Some(Duration::from_nanos(nanos)))
}

fn required(field: &str, value: Option<String>) -> Result<Option<String>, Error> {
    match value {
        Some(v) if v.is_empty() => Err(Error::Invalid(format!("{field}: Required value"))),
        other => Ok(other),
    }
}

impl KubeSchedulerConfiguration {
    /// Reads and validates `--config`; errors name the file.
    pub fn load(path: &Path) -> Result<KubeSchedulerConfiguration, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("--config {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Invalid(format!("--config {}: {e}", path.display())))
    }

    /// Parses and validates a configuration (YAML or JSON).
    pub fn parse(text: &str) -> Result<KubeSchedulerConfiguration, Error> {
        let parse_err = |e: serde_saphyr::Error| Error::Invalid(one_line(&e.to_string()));
        let meta: TypeMeta = serde_saphyr::from_str(text).map_err(parse_err)?;
        if meta.api_version.as_deref() != Some(API_VERSION) {
            return Err(Error::Invalid(format!(
                "apiVersion must be {API_VERSION:?}, got {:?}",
                meta.api_version.unwrap_or_default()
            )));
        }
        if meta.kind.as_deref() != Some(KIND) {
            return Err(Error::Invalid(format!(
                "kind must be {KIND:?}, got {:?}",
                meta.kind.unwrap_or_default()
            )));
        }
        let doc: Doc = serde_saphyr::from_str(text).map_err(parse_err)?;

        let kubeconfig = doc
            .client_connection
            .and_then(|c| c.kubeconfig)
            .filter(|k| !k.is_empty())
            .map(PathBuf::from);

        let leader_election = match doc.leader_election {
            None => LeaderElection::default(),
            Some(le) => {
                if let Some(lock) = &le.resource_lock
                    && lock != "leases"
                {
                    return Err(invalid(
                        "leaderElection.resourceLock",
                        lock,
                        "only \"leases\" is supported",
                    ));
                }
                LeaderElection {
                    leader_elect: le.leader_elect,
                    lease_duration: positive_duration(
                        "leaderElection.leaseDuration",
                        le.lease_duration.as_deref(),
                    )?,
                    renew_deadline: positive_duration(
                        "leaderElection.renewDeadline",
                        le.renew_deadline.as_deref(),
                    )?,
                    retry_period: positive_duration(
                        "leaderElection.retryPeriod",
                        le.retry_period.as_deref(),
                    )?,
                    resource_name: required("leaderElection.resourceName", le.resource_name)?,
                    resource_namespace: required(
                        "leaderElection.resourceNamespace",
                        le.resource_namespace,
                    )?,
                }
            }
        };

        // kube-scheduler's defaults: no profiles is one default profile; a lone profile without
        // a name is `default-scheduler`. Then every name is required and unique.
        let mut profiles = doc.profiles.unwrap_or_default();
        if profiles.is_empty() {
            profiles.push(ProfileDoc {
                scheduler_name: None,
            });
        }
        if profiles.len() == 1 && profiles[0].scheduler_name.is_none() {
            profiles[0].scheduler_name = Some(DEFAULT_SCHEDULER_NAME.into());
        }
        let mut scheduler_names: Vec<String> = Vec::with_capacity(profiles.len());
        for (i, profile) in profiles.into_iter().enumerate() {
            let field = format!("profiles[{i}].schedulerName");
            let name = profile.scheduler_name.unwrap_or_default();
            if name.is_empty() {
                return Err(Error::Invalid(format!("{field}: Required value")));
            }
            if scheduler_names.contains(&name) {
                return Err(Error::Invalid(format!(
                    "{field}: Duplicate value: {name:?}"
                )));
            }
            scheduler_names.push(name);
        }

        let percentage_of_nodes_to_score = match doc.percentage_of_nodes_to_score {
            None => None,
            Some(p @ 0..=100) => u32::try_from(p).ok(),
            Some(p) => {
                return Err(invalid(
                    "percentageOfNodesToScore",
                    p,
                    "not in valid range [0-100]",
                ));
            }
        };
        let parallelism = match doc.parallelism {
            None => None,
            Some(p) if p > 0 => Some(
                u32::try_from(p)
                    .map_err(|_| invalid("parallelism", p, "should be at most 2147483647"))?,
            ),
            Some(p) => {
                return Err(invalid(
                    "parallelism",
                    p,
                    "should be an integer value greater than zero",
                ));
            }
        };

        Ok(KubeSchedulerConfiguration {
            kubeconfig,
            leader_election,
            scheduler_names,
            percentage_of_nodes_to_score,
            parallelism,
        })
    }

    /// The one profile's scheduler name: skiff schedules for a single profile.
    pub fn scheduler_name(&self) -> Result<&str, Error> {
        match self.scheduler_names.as_slice() {
            [one] => Ok(one),
            [] => Ok(DEFAULT_SCHEDULER_NAME),
            many => Err(Error::Invalid(format!(
                "profiles: only one profile is supported, got {} ({})",
                many.len(),
                many.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n";

    fn parse(body: &str) -> Result<KubeSchedulerConfiguration, String> {
        KubeSchedulerConfiguration::parse(&format!("{HEAD}{body}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let config = parse(
            "clientConnection:\n  kubeconfig: /etc/kubernetes/scheduler.conf\n\
             leaderElection:\n  leaderElect: true\n  leaseDuration: 1m30s\n  renewDeadline: 20s\n  \
             retryPeriod: 500ms\n  resourceLock: leases\n  resourceName: sched\n  resourceNamespace: ops\n\
             profiles:\n- schedulerName: my-scheduler\n\
             percentageOfNodesToScore: 50\nparallelism: 8\n",
        )
        .unwrap();
        assert_eq!(
            config,
            KubeSchedulerConfiguration {
                kubeconfig: Some("/etc/kubernetes/scheduler.conf".into()),
                leader_election: LeaderElection {
                    leader_elect: Some(true),
                    lease_duration: Some(Duration::from_secs(90)),
                    renew_deadline: Some(Duration::from_secs(20)),
                    retry_period: Some(Duration::from_millis(500)),
                    resource_name: Some("sched".into()),
                    resource_namespace: Some("ops".into()),
                },
                scheduler_names: vec!["my-scheduler".into()],
                percentage_of_nodes_to_score: Some(50),
                parallelism: Some(8),
            }
        );
        assert_eq!(config.scheduler_name().unwrap(), "my-scheduler");
    }

    #[test]
    fn a_minimal_file_and_json_default_the_profile() {
        let config = parse("").unwrap();
        assert_eq!(config.scheduler_names, vec![DEFAULT_SCHEDULER_NAME]);
        assert_eq!(config.leader_election, LeaderElection::default());
        assert_eq!(config.kubeconfig, None);
        let json = KubeSchedulerConfiguration::parse(
            r#"{"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
                "leaderElection": {"leaderElect": false}, "profiles": [{}]}"#,
        )
        .unwrap();
        assert_eq!(json.leader_election.leader_elect, Some(false));
        assert_eq!(json.scheduler_name().unwrap(), DEFAULT_SCHEDULER_NAME);
    }

    #[test]
    fn wrong_api_version_or_kind_is_named() {
        let err = KubeSchedulerConfiguration::parse(
            "apiVersion: kubescheduler.config.k8s.io/v1beta3\nkind: KubeSchedulerConfiguration\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "apiVersion must be \"kubescheduler.config.k8s.io/v1\", got \"kubescheduler.config.k8s.io/v1beta3\""
        );
        let err = KubeSchedulerConfiguration::parse(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: Pod\nspec: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "kind must be \"KubeSchedulerConfiguration\", got \"Pod\""
        );
        let err = KubeSchedulerConfiguration::parse("kind: KubeSchedulerConfiguration\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("apiVersion must be"), "{err}");
    }

    #[test]
    fn unknown_fields_are_one_line_errors_naming_them() {
        for (body, field) in [
            ("podMaxBackoffSeconds: 10\n", "podMaxBackoffSeconds"),
            ("leaderElection:\n  leaseDurationn: 15s\n", "leaseDurationn"),
            ("profiles:\n- schedulerName: a\n  plugins: {}\n", "plugins"),
            ("clientConnection:\n  qps: 50\n", "qps"),
        ] {
            let err = parse(body).unwrap_err();
            assert!(
                err.contains(&format!("unknown field `{field}`")),
                "{body}: {err}"
            );
            assert!(err.starts_with("line "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = parse("parallelism: [1\n").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn durations_must_be_positive_go_durations() {
        let err = parse("leaderElection:\n  leaseDuration: -5s\n").unwrap_err();
        assert_eq!(
            err,
            "leaderElection.leaseDuration: Invalid value: \"-5s\": must be greater than zero"
        );
        let err = parse("leaderElection:\n  retryPeriod: \"0\"\n").unwrap_err();
        assert!(
            err.starts_with("leaderElection.retryPeriod: Invalid value"),
            "{err}"
        );
        let err = parse("leaderElection:\n  renewDeadline: 10\n").unwrap_err();
        assert!(err.starts_with("leaderElection.renewDeadline: "), "{err}");
        assert!(err.contains("not a duration"), "{err}");
        let err = parse("leaderElection:\n  resourceLock: endpoints\n").unwrap_err();
        assert!(err.contains("only \"leases\""), "{err}");
        let err = parse("leaderElection:\n  resourceName: \"\"\n").unwrap_err();
        assert_eq!(err, "leaderElection.resourceName: Required value");

        assert_eq!(parse_go_duration("2h45m"), Ok(9_900_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("-100ms"), Ok(-100_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        for bad in ["", "-", "5", "s", "5x", "1..5s", "9999999999999h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_profiles_parse_but_only_one_is_supported() {
        let config = parse("profiles:\n- schedulerName: a\n- schedulerName: b\n").unwrap();
        assert_eq!(config.scheduler_names, vec!["a", "b"]);
        let err = config.scheduler_name().unwrap_err().to_string();
        assert_eq!(err, "profiles: only one profile is supported, got 2 (a, b)");

        let err = parse("profiles:\n- schedulerName: a\n- schedulerName: a\n").unwrap_err();
        assert_eq!(err, "profiles[1].schedulerName: Duplicate value: \"a\"");
        let err = parse("profiles:\n- schedulerName: a\n- {}\n").unwrap_err();
        assert_eq!(err, "profiles[1].schedulerName: Required value");
    }

    #[test]
    fn score_percentage_and_parallelism_ranges() {
        assert_eq!(
            parse("percentageOfNodesToScore: 0\n")
                .unwrap()
                .percentage_of_nodes_to_score,
            Some(0)
        );
        assert_eq!(
            parse("percentageOfNodesToScore: 101\n").unwrap_err(),
            "percentageOfNodesToScore: Invalid value: 101: not in valid range [0-100]"
        );
        assert!(parse("percentageOfNodesToScore: -1\n").is_err());
        assert_eq!(
            parse("parallelism: 0\n").unwrap_err(),
            "parallelism: Invalid value: 0: should be an integer value greater than zero"
        );
        assert!(parse("parallelism: -3\n").is_err());
        assert!(parse("parallelism: lots\n").is_err());
    }
}
