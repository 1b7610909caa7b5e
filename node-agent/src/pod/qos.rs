//! A pod's QoS class, by Kubernetes' rules (`GetPodQOS`): Guaranteed when every container
//! has cpu and memory limits equal to its requests, BestEffort when none has any cpu or
//! memory request or limit, Burstable otherwise.

use k8s_openapi::api::core::v1::Pod;

use crate::cgroups::QosClass;

/// The pod's QoS class; `status.qosClass` wins when the API server already set it.
pub fn qos_class(pod: &Pod) -> QosClass {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("Guaranteed") => return QosClass::Guaranteed,
        Some("Burstable") => return QosClass::Burstable,
        Some("BestEffort") => return QosClass::BestEffort,
        _ => {}
    }
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for container in containers {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(name));
            let limit = limits.and_then(|l| l.get(name));
            if request.is_some() || limit.is_some() {
                any = true;
            }
            let Some(limit) = limit else {
                guaranteed = false;
                continue;
            };
            // A missing request defaults to the limit.
            let request = request.unwrap_or(limit);
            let equal = skiff_client::quantity::parse(&request.0)
                == skiff_client::quantity::parse(&limit.0);
            if !equal {
                guaranteed = false;
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The class's name as `status.qosClass` spells it.
pub fn qos_name(qos: QosClass) -> &'static str {
    match qos {
        QosClass::Guaranteed => "Guaranteed",
        QosClass::Burstable => "Burstable",
        QosClass::BestEffort => "BestEffort",
    }
}
