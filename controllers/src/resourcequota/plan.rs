//! The ResourceQuota controller's decisions, as kube-controller-manager's
//! `syncResourceQuota` makes them, without any IO: from a quota and the objects of its
//! namespace, the status the quota should have (`hard` = `spec.hard`; `used` recounted for
//! every hard resource something measures, the previous value kept for the others), whether
//! that differs from the status it has (quantities compared by value, so `1000m` and `1` are
//! the same and the admission's and the controller's spellings never make it flap), and when
//! to look again on its own (a pod being deleted stops using quota when its grace period
//! ends).
//!
//! Scopes are upstream's: `Terminating`/`NotTerminating` (`activeDeadlineSeconds`),
//! `BestEffort`/`NotBestEffort` (the pod's QoS class), `PriorityClass` and
//! `CrossNamespacePodAffinity`, from `spec.scopes` (operator `Exists`) and
//! `spec.scopeSelector`; a scoped quota counts only the pods that match every scope, and no
//! object of any other kind (upstream's `MatchesNoScopeFunc`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::usage::{
    GroupResource, Measured, ResourceAmounts, add_amounts, claim_usage, format_quantity, is_binary,
    measured_by, object_count_usage, parse_quantity, pod_usage, until_pod_stops_using_quota,
};

/// The objects of a quota's namespace the controller measured.
#[derive(Debug, Default, Clone)]
pub struct Observed<'a> {
    /// Every pod of the namespace.
    pub pods: Vec<&'a Pod>,
    /// Every service of the namespace.
    pub services: Vec<&'a Service>,
    /// Every persistent volume claim of the namespace.
    pub claims: Vec<&'a PersistentVolumeClaim>,
    /// How many objects of each other kind the namespace holds, for the kinds the shell
    /// could count (see [`kinds_to_count`]); a kind missing here is left unmeasured.
    pub object_counts: BTreeMap<GroupResource, u64>,
}

/// What one sync of a quota should do.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaPlan {
    /// The status the quota should have.
    pub status: ResourceQuotaStatus,
    /// Whether that differs from the quota's status (then the shell writes it).
    pub write: bool,
    /// Sync again after this long (a counted pod's deletion grace period ends), if ever.
    pub requeue_after: Option<Duration>,
}

/// The quota's `spec.hard`.
fn hard_of(quota: &ResourceQuota) -> BTreeMap<String, Quantity> {
    quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default()
}

/// The kinds (other than pods, services and claims) whose objects the quota counts: what
/// the shell must count into [`Observed::object_counts`].
pub fn kinds_to_count(quota: &ResourceQuota) -> BTreeSet<GroupResource> {
    hard_of(quota)
        .keys()
        .filter_map(|name| match measured_by(name) {
            Some(Measured::Objects(kind)) => Some(kind),
            _ => None,
        })
        .collect()
}

/// Whether a change to objects measured by `measured` can change the quota's usage (some
/// hard resource is measured by it): upstream's replenishment filter.
pub fn quota_measures(quota: &ResourceQuota, measured: &Measured) -> bool {
    hard_of(quota)
        .keys()
        .any(|name| measured_by(name).as_ref() == Some(measured))
}

/// One scope a quota requires of a pod: upstream's `ScopedResourceSelectorRequirement`
/// (`spec.scopes` entries have operator `Exists`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScopeRequirement {
    scope: String,
    operator: String,
    values: Vec<String>,
}

/// Every scope requirement of a quota (`spec.scopes`, then `spec.scopeSelector`).
fn scope_requirements(quota: &ResourceQuota) -> Vec<ScopeRequirement> {
    let Some(spec) = quota.spec.as_ref() else {
        return Vec::new();
    };
    let from_scopes = spec.scopes.iter().flatten().map(|scope| ScopeRequirement {
        scope: scope.clone(),
        operator: "Exists".into(),
        values: Vec::new(),
    });
    let from_selector = spec
        .scope_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .map(|r| ScopeRequirement {
            scope: r.scope_name.clone(),
            operator: r.operator.clone(),
            values: r.values.clone().unwrap_or_default(),
        });
    from_scopes.chain(from_selector).collect()
}

/// Whether a quota has scopes or a scope selector.
pub fn is_scoped(quota: &ResourceQuota) -> bool {
    !scope_requirements(quota).is_empty()
}

/// upstream's `isTerminating`: a pod with an active deadline.
fn is_terminating(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .is_some_and(|d| d >= 0)
}

/// upstream's `qos.GetPodQOS(pod) == BestEffort`: the class the kubelet reported, else no
/// container (init containers included) requests or limits any CPU or memory.
fn is_best_effort(pod: &Pod) -> bool {
    if let Some(class) = pod
        .status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .filter(|c| !c.is_empty())
    {
        return class == "BestEffort";
    }
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let states_cpu_or_memory = |list: Option<&BTreeMap<String, Quantity>>| {
        list.into_iter().flatten().any(|(name, q)| {
            matches!(name.as_str(), "cpu" | "memory")
                && parse_quantity(&q.0).is_some_and(|v| v.0 != 0)
        })
    };
    !spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref())
        .any(|r| {
            states_cpu_or_memory(r.requests.as_ref()) || states_cpu_or_memory(r.limits.as_ref())
        })
}

/// upstream's `usesCrossNamespacePodAffinity`: an affinity or anti-affinity term naming
/// namespaces or a namespace selector.
fn uses_cross_namespace_pod_affinity(pod: &Pod) -> bool {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return false;
    };
    let crosses = |term: &k8s_openapi::api::core::v1::PodAffinityTerm| {
        term.namespaces.as_ref().is_some_and(|n| !n.is_empty()) || term.namespace_selector.is_some()
    };
    let affinity_terms = affinity.pod_affinity.iter().flat_map(|a| {
        a.required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .chain(
                a.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|w| &w.pod_affinity_term),
            )
    });
    let anti_affinity_terms = affinity.pod_anti_affinity.iter().flat_map(|a| {
        a.required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .chain(
                a.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|w| &w.pod_affinity_term),
            )
    });
    affinity_terms.chain(anti_affinity_terms).any(crosses)
}

/// upstream's `podMatchesScopeFunc` for one requirement.
fn pod_matches_requirement(pod: &Pod, requirement: &ScopeRequirement) -> bool {
    match requirement.scope.as_str() {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .spec
                .as_ref()
                .and_then(|s| s.priority_class_name.as_deref())
                .unwrap_or("");
            // A label selector over the set {PriorityClass: <class>}: the key is always
            // there, so `DoesNotExist` never matches, as upstream.
            match requirement.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => requirement.values.iter().any(|v| v == class),
                "NotIn" => !requirement.values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => uses_cross_namespace_pod_affinity(pod),
        _ => false,
    }
}

/// Whether a pod falls under every scope of the quota.
fn pod_in_scope(pod: &Pod, requirements: &[ScopeRequirement]) -> bool {
    requirements
        .iter()
        .all(|requirement| pod_matches_requirement(pod, requirement))
}

/// The status `quota` should have given what its namespace holds, and whether to write it.
pub fn plan(quota: &ResourceQuota, observed: &Observed<'_>, now: Timestamp) -> QuotaPlan {
    let hard = hard_of(quota);
    let requirements = scope_requirements(quota);
    let scoped = !requirements.is_empty();
    let measured: BTreeSet<Measured> = hard.keys().filter_map(|k| measured_by(k)).collect();

    let mut totals = ResourceAmounts::new();
    let mut requeue_after: Option<Duration> = None;
    if measured.contains(&Measured::Pods) {
        for pod in observed
            .pods
            .iter()
            .filter(|pod| pod_in_scope(pod, &requirements))
        {
            add_amounts(&mut totals, &pod_usage(pod, now));
            if let Some(left) = until_pod_stops_using_quota(pod, now) {
                requeue_after = Some(requeue_after.map_or(left, |r| r.min(left)));
            }
        }
    }
    // A scoped quota matches objects of no other kind (upstream's MatchesNoScopeFunc).
    if !scoped {
        if measured.contains(&Measured::Services) {
            for service in &observed.services {
                add_amounts(&mut totals, &super::usage::service_usage(service));
            }
        }
        if measured.contains(&Measured::PersistentVolumeClaims) {
            for claim in &observed.claims {
                add_amounts(&mut totals, &claim_usage(claim));
            }
        }
        for (kind, count) in &observed.object_counts {
            add_amounts(&mut totals, &object_count_usage(kind, *count));
        }
    }

    let previous = quota.status.as_ref().and_then(|s| s.used.as_ref());
    let mut used = BTreeMap::new();
    for (name, limit) in &hard {
        let counted = match measured_by(name) {
            None => false,
            Some(Measured::Objects(kind)) => observed.object_counts.contains_key(&kind),
            Some(_) => true,
        };
        if counted {
            let total = totals.get(name).copied().unwrap_or_default();
            used.insert(
                name.clone(),
                Quantity(format_quantity(total, is_binary(&limit.0))),
            );
        } else if let Some(kept) = previous.and_then(|p| p.get(name)) {
            // Nothing measures it (or it could not be counted now): keep what was there.
            used.insert(name.clone(), kept.clone());
        }
    }
    let status = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    };
    QuotaPlan {
        write: status_differs(quota.status.as_ref(), &status),
        status,
        requeue_after: if measured.contains(&Measured::Pods) {
            requeue_after
        } else {
            None
        },
    }
}

/// Whether two resource lists hold the same resources with equal amounts (by value; a
/// quantity that does not parse is compared as written).
pub fn resource_lists_equal(
    a: &BTreeMap<String, Quantity>,
    b: &BTreeMap<String, Quantity>,
) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, qa)| {
            b.get(name)
                .is_some_and(|qb| match (parse_quantity(&qa.0), parse_quantity(&qb.0)) {
                    (Some(x), Some(y)) => x == y,
                    _ => qa.0 == qb.0,
                })
        })
}

/// Whether the quota's `current` status must be replaced by `desired` (upstream's dirty
/// check: no `hard` or `used` yet, or either differs in value).
pub fn status_differs(
    current: Option<&ResourceQuotaStatus>,
    desired: &ResourceQuotaStatus,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    let (Some(current_hard), Some(current_used)) = (&current.hard, &current.used) else {
        return true;
    };
    let empty = BTreeMap::new();
    !resource_lists_equal(current_hard, desired.hard.as_ref().unwrap_or(&empty))
        || !resource_lists_equal(current_used, desired.used.as_ref().unwrap_or(&empty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PodSpec, PodStatus, ResourceQuotaSpec, ResourceRequirements, ScopeSelector,
        ScopedResourceSelectorRequirement, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn list(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    fn quota(hard: &[(&str, &str)], used: Option<&[(&str, &str)]>) -> ResourceQuota {
        ResourceQuota {
            metadata: ObjectMeta {
                name: Some("q".into()),
                namespace: Some("team".into()),
                ..Default::default()
            },
            spec: Some(ResourceQuotaSpec {
                hard: Some(list(hard)),
                ..Default::default()
            }),
            status: used.map(|used| ResourceQuotaStatus {
                hard: Some(list(hard)),
                used: Some(list(used)),
            }),
        }
    }

    fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = Vec::new();
        if !cpu.is_empty() {
            requests.push(("cpu", cpu));
        }
        if !memory.is_empty() {
            requests.push(("memory", memory));
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(list(&requests)),
                        limits: Some(list(&requests)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn with_phase(mut pod: Pod, phase: &str) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        pod
    }

    fn used_of(plan: &QuotaPlan) -> BTreeMap<String, String> {
        plan.status
            .used
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn pods_and_compute_are_recounted_without_terminal_pods() {
        let q = quota(
            &[
                ("pods", "5"),
                ("count/pods", "10"),
                ("requests.cpu", "4"),
                ("requests.memory", "1Gi"),
                ("limits.cpu", "4"),
                ("memory", "1Gi"),
            ],
            Some(&[("pods", "3")]),
        );
        let running = pod("a", "250m", "64Mi");
        let other = pod("b", "500m", "64Mi");
        let done = with_phase(pod("c", "1", "512Mi"), "Succeeded");
        let failed = with_phase(pod("d", "1", "512Mi"), "Failed");
        let observed = Observed {
            pods: vec![&running, &other, &done, &failed],
            ..Default::default()
        };
        let plan = plan(&q, &observed, t0());
        assert_eq!(
            used_of(&plan),
            strings(&[
                ("pods", "2"),
                ("count/pods", "4"),
                ("requests.cpu", "750m"),
                ("requests.memory", "128Mi"),
                ("limits.cpu", "750m"),
                ("memory", "128Mi"),
            ])
        );
        assert_eq!(
            plan.status.hard,
            q.spec.as_ref().and_then(|s| s.hard.clone())
        );
        assert!(plan.write);
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn object_counts_per_resource_and_unmeasured_resources_keep_their_usage() {
        let q = quota(
            &[
                ("services", "10"),
                ("services.nodeports", "4"),
                ("count/services", "10"),
                ("secrets", "10"),
                ("count/configmaps", "10"),
                ("count/deployments.apps", "3"),
                ("count/widgets.example.com", "3"),
                ("nonsense", "1"),
            ],
            Some(&[("nonsense", "1"), ("count/widgets.example.com", "2")]),
        );
        let node_port = Service {
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                ports: Some(vec![Default::default(); 2]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cluster_ip = Service::default();
        let deployments = GroupResource {
            group: "apps".into(),
            resource: "deployments".into(),
        };
        assert_eq!(
            kinds_to_count(&q),
            BTreeSet::from([
                GroupResource::core("configmaps"),
                GroupResource::core("secrets"),
                deployments.clone(),
                GroupResource {
                    group: "example.com".into(),
                    resource: "widgets".into()
                },
            ])
        );
        let observed = Observed {
            services: vec![&node_port, &cluster_ip],
            object_counts: BTreeMap::from([
                (GroupResource::core("secrets"), 3),
                (GroupResource::core("configmaps"), 0),
                (deployments, 1),
            ]),
            ..Default::default()
        };
        let plan = plan(&q, &observed, t0());
        assert_eq!(
            used_of(&plan),
            strings(&[
                ("services", "2"),
                ("services.nodeports", "2"),
                ("count/services", "2"),
                ("secrets", "3"),
                ("count/configmaps", "0"),
                ("count/deployments.apps", "1"),
                // Not countable now (an unknown kind): the last value stays.
                ("count/widgets.example.com", "2"),
                ("nonsense", "1"),
            ])
        );
    }

    #[test]
    fn used_is_masked_to_hard() {
        let q = quota(&[("pods", "2")], Some(&[("pods", "1"), ("secrets", "4")]));
        let p = pod("a", "", "");
        let observed = Observed {
            pods: vec![&p],
            ..Default::default()
        };
        let plan = plan(&q, &observed, t0());
        assert_eq!(used_of(&plan), strings(&[("pods", "1")]));
        assert!(plan.write, "the stray secrets usage goes");
    }

    #[test]
    fn status_is_written_only_when_it_differs_in_value() {
        let q = quota(
            &[("pods", "2"), ("requests.cpu", "1")],
            Some(&[("pods", "1"), ("requests.cpu", "0.25")]),
        );
        let p = pod("a", "250m", "");
        let observed = Observed {
            pods: vec![&p],
            ..Default::default()
        };
        let same = plan(&q, &observed, t0());
        assert!(!same.write, "250m = 0.25");
        let empty = Observed::default();
        assert!(plan(&q, &empty, t0()).write, "the pod is gone");
        let fresh = quota(&[("pods", "2")], None);
        assert!(plan(&fresh, &empty, t0()).write, "no status yet");
        let mut spec_changed = q.clone();
        spec_changed.spec.as_mut().unwrap().hard =
            Some(list(&[("pods", "3"), ("requests.cpu", "1")]));
        assert!(
            plan(&spec_changed, &observed, t0()).write,
            "hard follows spec"
        );
        let desired = ResourceQuotaStatus {
            hard: Some(list(&[("memory", "1Gi")])),
            used: Some(list(&[("memory", "1024Mi")])),
        };
        let current = ResourceQuotaStatus {
            hard: Some(list(&[("memory", "1073741824")])),
            used: Some(list(&[("memory", "1Gi")])),
        };
        assert!(!status_differs(Some(&current), &desired));
        let no_used = ResourceQuotaStatus {
            hard: current.hard.clone(),
            used: None,
        };
        assert!(status_differs(Some(&no_used), &desired));
    }

    #[test]
    fn a_pod_being_deleted_is_looked_at_again_when_its_grace_period_ends() {
        let q = quota(&[("pods", "2")], Some(&[("pods", "1")]));
        let mut deleting = pod("a", "", "");
        deleting.metadata.deletion_timestamp = Some(Time(t0()));
        deleting.metadata.deletion_grace_period_seconds = Some(30);
        let observed = Observed {
            pods: vec![&deleting],
            ..Default::default()
        };
        let plan = plan(&q, &observed, t0());
        assert!(!plan.write);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(31)));
        let later = t0() + jiff::SignedDuration::from_secs(31);
        let after = super::plan(&q, &observed, later);
        assert_eq!(used_of(&after), strings(&[("pods", "0")]));
    }

    #[test]
    fn scoped_quotas_count_only_matching_pods() {
        let mut best_effort = quota(&[("pods", "5")], None);
        best_effort.spec.as_mut().unwrap().scopes = Some(vec!["BestEffort".into()]);
        let no_resources = pod("a", "", "");
        let burstable = pod("b", "100m", "");
        let mut terminating = pod("c", "", "");
        terminating.spec.as_mut().unwrap().active_deadline_seconds = Some(60);
        let observed = Observed {
            pods: vec![&no_resources, &burstable, &terminating],
            ..Default::default()
        };
        assert_eq!(
            used_of(&plan(&best_effort, &observed, t0())),
            strings(&[("pods", "2")])
        );

        let mut not_terminating_best_effort = best_effort.clone();
        not_terminating_best_effort.spec.as_mut().unwrap().scopes =
            Some(vec!["BestEffort".into(), "NotTerminating".into()]);
        assert_eq!(
            used_of(&plan(&not_terminating_best_effort, &observed, t0())),
            strings(&[("pods", "1")])
        );

        let mut high = pod("d", "", "");
        high.spec.as_mut().unwrap().priority_class_name = Some("high".into());
        let observed = Observed {
            pods: vec![&no_resources, &high],
            ..Default::default()
        };
        let selector = |operator: &str, values: Option<Vec<String>>| {
            let mut q = quota(&[("pods", "5"), ("services", "5")], None);
            q.spec.as_mut().unwrap().scope_selector = Some(ScopeSelector {
                match_expressions: Some(vec![ScopedResourceSelectorRequirement {
                    scope_name: "PriorityClass".into(),
                    operator: operator.into(),
                    values,
                }]),
            });
            q
        };
        let count = |q: &ResourceQuota| used_of(&plan(q, &observed, t0()))["pods"].clone();
        assert_eq!(count(&selector("In", Some(vec!["high".into()]))), "1");
        assert_eq!(count(&selector("NotIn", Some(vec!["high".into()]))), "1");
        assert_eq!(count(&selector("Exists", None)), "1");
        assert_eq!(count(&selector("DoesNotExist", None)), "0");
        let svc = Service::default();
        let with_service = Observed {
            services: vec![&svc],
            ..observed.clone()
        };
        assert_eq!(
            used_of(&plan(&selector("Exists", None), &with_service, t0()))["services"],
            "0",
            "a scoped quota counts no other kind"
        );
        assert!(is_scoped(&selector("Exists", None)));
        assert!(!is_scoped(&quota(&[("pods", "1")], None)));
    }

    #[test]
    fn events_concern_quotas_measuring_their_kind() {
        let q = quota(&[("pods", "2"), ("count/secrets", "1")], None);
        assert!(quota_measures(&q, &Measured::Pods));
        assert!(quota_measures(
            &q,
            &Measured::Objects(GroupResource::core("secrets"))
        ));
        assert!(!quota_measures(&q, &Measured::Services));
        assert!(!quota_measures(
            &q,
            &Measured::Objects(GroupResource::core("configmaps"))
        ));
    }
}
