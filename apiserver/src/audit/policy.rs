//! The `audit.k8s.io/v1` `Policy` (`--audit-policy-file`): the first rule that matches a
//! request (users, userGroups, verbs, resources, namespaces, nonResourceURLs) sets its level
//! and the stages it omits.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{AUDIT_API_VERSION, AuditError, Level, ObjectRef, Stage};
use crate::auth::User;
use crate::request_info::RequestInfo;

/// The `audit.k8s.io/v1` `Policy`.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Without `--audit-policy-file`: everything at `Metadata`.
    pub fn metadata_for_everything() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
                omit_stages: Vec::new(),
                omit_managed_fields: None,
            }],
            omit_managed_fields: false,
        }
    }

    pub fn load(path: &Path) -> Result<Policy, AuditError> {
        let error = |message: String| AuditError::Policy {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Policy::parse(&text).map_err(error)
    }

    /// Parses and validates a policy (YAML or JSON) with kube-apiserver's rules.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let doc: PolicyDoc = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if doc.api_version.as_deref() != Some(AUDIT_API_VERSION) {
            return Err(format!(
                "apiVersion must be {AUDIT_API_VERSION:?}, got {:?}",
                doc.api_version.as_deref().unwrap_or("")
            ));
        }
        if doc.kind.as_deref() != Some("Policy") {
            return Err(format!(
                "kind must be \"Policy\", got {:?}",
                doc.kind.as_deref().unwrap_or("")
            ));
        }
        let _ = doc.metadata;
        if doc.rules.is_empty() {
            return Err("loaded illegal policy with 0 rules".into());
        }
        let mut rules = doc.rules;
        for (i, rule) in rules.iter_mut().enumerate() {
            let path = format!("rules[{i}]");
            for (j, url) in rule.non_resource_urls.iter().enumerate() {
                if url == "*" {
                    continue;
                }
                if !url.starts_with('/') {
                    return Err(format!(
                        "{path}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL rules must begin with a '/' character"
                    ));
                }
                if url[..url.len() - 1].contains('*') {
                    return Err(format!(
                        "{path}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL wildcards '*' must be the final character of the rule"
                    ));
                }
            }
            if !rule.non_resource_urls.is_empty()
                && (!rule.resources.is_empty() || !rule.namespaces.is_empty())
            {
                return Err(format!(
                    "{path}.nonResourceURLs: Invalid value: {:?}: rules cannot apply to both regular resources and non-resource URLs",
                    rule.non_resource_urls
                ));
            }
            for gr in &rule.resources {
                if !gr.resource_names.is_empty() && gr.resources.is_empty() {
                    return Err(format!(
                        "{path}.resources.resourceNames: Invalid value: {:?}: using resourceNames requires at least one resource",
                        gr.resource_names
                    ));
                }
            }
            // As upstream's policy reader: the policy's omitted stages apply to every rule.
            for stage in &doc.omit_stages {
                if !rule.omit_stages.contains(stage) {
                    rule.omit_stages.push(*stage);
                }
            }
        }
        Ok(Policy {
            rules,
            omit_managed_fields: doc.omit_managed_fields,
        })
    }

    /// The first matching rule's level and omitted stages; `None` when no rule matches.
    pub fn evaluate(&self, user: Option<&User>, info: &RequestInfo) -> Decision {
        for rule in &self.rules {
            if rule.matches(user, info) {
                return Decision {
                    level: rule.level,
                    omit_stages: rule.omit_stages.clone(),
                    omit_managed_fields: rule
                        .omit_managed_fields
                        .unwrap_or(self.omit_managed_fields),
                };
            }
        }
        Decision {
            level: Level::None,
            omit_stages: Vec::new(),
            omit_managed_fields: self.omit_managed_fields,
        }
    }
}

impl Rule {
    fn matches(&self, user: Option<&User>, info: &RequestInfo) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&info.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(info);
        }
        if !self.non_resource_urls.is_empty() {
            return !info.is_resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&info.path, spec));
        }
        true
    }

    fn matches_resource(&self, info: &RequestInfo) -> bool {
        let Some(object) = ObjectRef::of(info) else {
            return false;
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(&object.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if object.subresource.is_empty() {
            object.resource.clone()
        } else {
            format!("{}/{}", object.resource, object.subresource)
        };
        self.resources.iter().any(|gr| {
            if gr.group != object.api_group && gr.group != "*" {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(&object.name) {
                return false;
            }
            gr.resources.iter().any(|res| {
                res == &combined
                    || res == "*"
                    || (!object.subresource.is_empty()
                        && res.strip_prefix("*/") == Some(object.subresource.as_str()))
                    || res.strip_suffix("/*") == Some(object.resource.as_str())
            })
        })
    }
}

/// `nonResourceURLs` entries: exact, `*`, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: "1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// A GET of `path`, authorized as `verb`.
    fn request(verb: &str, path: &str) -> RequestInfo {
        RequestInfo {
            verb: verb.into(),
            ..RequestInfo::new(&Method::GET, path, None)
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
  verbs: [watch]
- level: None
  nonResourceURLs: ["/healthz*", /version]
- level: Metadata
  resources:
  - group: ""
    resources: [secrets, configmaps/status]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
  namespaces: [kube-system, default]
- level: Request
  userGroups: [dev]
  resources:
  - group: apps
    resources: ["*/scale"]
- level: Metadata
  omitStages: [ResponseStarted]
"#,
        )
        .unwrap();
        let admin = user("admin", &["system:masters"]);
        let dev = user("jane", &["dev"]);
        let proxy = user("system:kube-proxy", &[]);
        let level =
            |u: &User, verb: &str, path: &str| policy.evaluate(Some(u), &request(verb, path)).level;
        assert_eq!(level(&proxy, "watch", "/api/v1/pods"), Level::None);
        assert_eq!(level(&proxy, "list", "/api/v1/pods"), Level::Metadata);
        assert_eq!(level(&admin, "get", "/healthz/etcd"), Level::None);
        assert_eq!(level(&admin, "get", "/version"), Level::None);
        assert_eq!(
            level(&admin, "get", "/api/v1/namespaces/default/secrets/s"),
            Level::Metadata
        );
        assert_eq!(
            level(&admin, "create", "/api/v1/namespaces/default/configmaps"),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &admin,
                "update",
                "/api/v1/namespaces/default/configmaps/c/status"
            ),
            Level::Metadata
        );
        assert_eq!(
            level(&admin, "create", "/api/v1/namespaces/other/configmaps"),
            Level::Metadata
        );
        assert_eq!(
            level(
                &dev,
                "update",
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            ),
            Level::Request
        );
        assert_eq!(
            level(
                &admin,
                "update",
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            ),
            Level::Metadata
        );
        // The policy's omitted stages join each rule's.
        let last = policy.evaluate(Some(&admin), &request("get", "/openapi/v3"));
        assert_eq!(
            last.omit_stages,
            vec![Stage::ResponseStarted, Stage::RequestReceived]
        );
        // No rule matches: not logged.
        let narrow = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  users: [alice]\n",
        )
        .unwrap();
        assert_eq!(
            narrow.evaluate(None, &request("get", "/api/v1/pods")).level,
            Level::None
        );
        assert_eq!(
            Policy::metadata_for_everything()
                .evaluate(None, &request("get", "/version"))
                .level,
            Level::Metadata
        );
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let err = |rules: &str| {
            Policy::parse(&format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\n{rules}"
            ))
            .unwrap_err()
        };
        assert!(err("rules: []\n").contains("0 rules"));
        assert!(err("rules:\n- level: Everything\n").contains("Everything"));
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: [healthz]\n")
                .contains("must begin with a '/'")
        );
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: ['/a*b']\n").contains("final character")
        );
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: [/a]\n  namespaces: [x]\n")
                .contains("both regular resources and non-resource URLs")
        );
        assert!(err("rules:\n- level: None\n  userz: [a]\n").contains("userz"));
        assert!(err("omitStages: [Sometimes]\nrules:\n- level: None\n").contains("Sometimes"));
        assert!(
            Policy::parse(
                "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: [{level: None}]\n"
            )
            .unwrap_err()
            .contains("apiVersion")
        );
    }
}
