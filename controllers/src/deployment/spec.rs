//! What a Deployment's spec asks for, with the API server's defaults filled in (replicas 1,
//! RollingUpdate 25%/25%, revisionHistoryLimit 10, progressDeadlineSeconds 600) and upstream's
//! fencepost rules (`ResolveFenceposts`, `MaxSurge`, `MaxUnavailable`, `MinAvailable`).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The API default of `spec.revisionHistoryLimit`.
pub(super) const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
/// The API default of `spec.progressDeadlineSeconds`.
pub(super) const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// The API default of `maxSurge` and `maxUnavailable`.
const DEFAULT_FENCEPOST: &str = "25%";

/// A Deployment's spec resolved to plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResolvedSpec {
    /// `spec.replicas` (default 1, negative → 0).
    pub replicas: i32,
    /// The strategy is `Recreate` (anything else rolls).
    pub recreate: bool,
    /// How many pods above `replicas` a rollout may run (0 for Recreate).
    pub max_surge: i32,
    /// How many of `replicas` may be unavailable during a rollout (0 for Recreate or 0 replicas).
    pub max_unavailable: i32,
    /// `spec.minReadySeconds` as written (the RS copies it).
    pub min_ready_seconds: Option<i32>,
    /// How many old ReplicaSets to keep; `None` means keep all (upstream: MaxInt32).
    pub revision_history_limit: Option<i32>,
    /// The progress deadline in seconds; `None` means no deadline (upstream: MaxInt32).
    pub progress_deadline_seconds: Option<i32>,
    /// `spec.paused`.
    pub paused: bool,
}

impl ResolvedSpec {
    /// Resolves `deployment.spec` (an absent spec resolves like an empty one).
    pub fn of(deployment: &Deployment) -> Self {
        let spec = deployment.spec.as_ref();
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
        let strategy = spec.and_then(|s| s.strategy.as_ref());
        let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let (max_surge, max_unavailable) = if recreate {
            (0, 0)
        } else {
            let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
            let default = IntOrString::String(DEFAULT_FENCEPOST.to_string());
            let surge = rolling
                .and_then(|r| r.max_surge.as_ref())
                .unwrap_or(&default);
            let unavailable = rolling
                .and_then(|r| r.max_unavailable.as_ref())
                .unwrap_or(&default);
            let (surge, unavailable) = resolve_fenceposts(surge, unavailable, replicas);
            let unavailable = if replicas == 0 {
                0
            } else {
                unavailable.min(replicas)
            };
            (surge, unavailable)
        };
        let revision_history_limit = match spec.and_then(|s| s.revision_history_limit) {
            Some(i32::MAX) => None,
            Some(limit) => Some(limit.max(0)),
            None => Some(DEFAULT_REVISION_HISTORY_LIMIT),
        };
        let progress_deadline_seconds = match spec.and_then(|s| s.progress_deadline_seconds) {
            Some(i32::MAX) => None,
            Some(seconds) => Some(seconds.max(0)),
            None => Some(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        };
        ResolvedSpec {
            replicas,
            recreate,
            max_surge,
            max_unavailable,
            min_ready_seconds: spec.and_then(|s| s.min_ready_seconds),
            revision_history_limit,
            progress_deadline_seconds,
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
        }
    }

    /// `replicas + maxSurge`: the most pods a rollout may run (the max-replicas annotation).
    pub fn max_replicas(&self) -> i32 {
        self.replicas.saturating_add(self.max_surge)
    }

    /// `replicas - maxUnavailable` for RollingUpdate, 0 for Recreate (upstream `MinAvailable`).
    pub fn min_available(&self) -> i32 {
        if self.recreate {
            0
        } else {
            self.replicas - self.max_unavailable
        }
    }

    /// `spec.minReadySeconds` as a number (absent → 0).
    pub fn min_ready(&self) -> i32 {
        self.min_ready_seconds.unwrap_or(0).max(0)
    }
}

/// Upstream `ResolveFenceposts`: surge rounds up, unavailable rounds down, and when both come
/// to 0 unavailable becomes 1 (surge might not work because of quota).
pub(super) fn resolve_fenceposts(
    max_surge: &IntOrString,
    max_unavailable: &IntOrString,
    desired: i32,
) -> (i32, i32) {
    let surge = scaled_value(max_surge, desired, true);
    let unavailable = scaled_value(max_unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Upstream `GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total` rounded up or
/// down. Anything unparsable (`"abc%"`, `"5"`) and negative values count as 0.
pub(super) fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(text) => {
            let Some(percent) = text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i64>().ok())
            else {
                return 0;
            };
            let product = percent.max(0) * i64::from(total.max(0));
            let scaled = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(scaled).unwrap_or(i32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    use super::*;

    fn percent(p: &str) -> IntOrString {
        IntOrString::String(p.to_string())
    }

    fn deployment(spec: DeploymentSpec) -> Deployment {
        Deployment {
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn quarter_of_ten_is_surge_three_unavailable_two() {
        assert_eq!(
            resolve_fenceposts(&percent("25%"), &percent("25%"), 10),
            (3, 2)
        );
    }

    #[test]
    fn both_zero_resolve_to_one_unavailable() {
        assert_eq!(
            resolve_fenceposts(&IntOrString::Int(0), &IntOrString::Int(0), 10),
            (0, 1)
        );
        // 10% of 3 rounds down to 0 unavailable and up to 1 surge: no bump.
        assert_eq!(
            resolve_fenceposts(&percent("10%"), &percent("10%"), 3),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(&percent("0%"), &percent("10%"), 3),
            (0, 1)
        );
    }

    #[test]
    fn garbage_and_negative_values_count_as_zero() {
        assert_eq!(scaled_value(&percent("abc%"), 10, true), 0);
        assert_eq!(scaled_value(&percent("5"), 10, true), 0);
        assert_eq!(scaled_value(&percent("-50%"), 10, true), 0);
        assert_eq!(scaled_value(&IntOrString::Int(-3), 10, true), 0);
        assert_eq!(scaled_value(&percent("100%"), i32::MAX, true), i32::MAX);
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let resolved = ResolvedSpec::of(&Deployment::default());
        assert_eq!(resolved.replicas, 1);
        assert!(!resolved.recreate);
        // 25% of 1: surge rounds up to 1, unavailable down to 0.
        assert_eq!((resolved.max_surge, resolved.max_unavailable), (1, 0));
        assert_eq!(resolved.revision_history_limit, Some(10));
        assert_eq!(resolved.progress_deadline_seconds, Some(600));
        assert!(!resolved.paused);
    }

    #[test]
    fn recreate_has_no_surge_and_no_unavailability_budget() {
        let resolved = ResolvedSpec::of(&deployment(DeploymentSpec {
            replicas: Some(5),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            ..Default::default()
        }));
        assert!(resolved.recreate);
        assert_eq!((resolved.max_surge, resolved.max_unavailable), (0, 0));
        assert_eq!(resolved.min_available(), 0);
        assert_eq!(resolved.max_replicas(), 5);
    }

    #[test]
    fn unavailable_is_capped_by_replicas_and_negative_replicas_are_zero() {
        let resolved = ResolvedSpec::of(&deployment(DeploymentSpec {
            replicas: Some(2),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(5)),
                }),
            }),
            ..Default::default()
        }));
        assert_eq!(resolved.max_unavailable, 2);
        assert_eq!(resolved.min_available(), 0);
        let resolved = ResolvedSpec::of(&deployment(DeploymentSpec {
            replicas: Some(-4),
            revision_history_limit: Some(i32::MAX),
            progress_deadline_seconds: Some(i32::MAX),
            ..Default::default()
        }));
        assert_eq!(resolved.replicas, 0);
        assert_eq!(resolved.max_unavailable, 0);
        assert_eq!(resolved.revision_history_limit, None);
        assert_eq!(resolved.progress_deadline_seconds, None);
    }
}
