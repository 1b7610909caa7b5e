//! The reported status for the states a pod goes through.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::pod::backoff::Backoff;
use crate::pod::state::{
    Attempt, ContainerState, ImageState, PodState, Probes, Sandbox, Terminated,
};

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn pod(policy: &str, readiness: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(policy.into()),
            containers: vec![Container {
                name: "web".into(),
                image: Some("busybox:1.36".into()),
                readiness_probe: readiness.then(|| Probe {
                    http_get: Some(HTTPGetAction {
                        port: IntOrString::Int(80),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn terminated(code: i32, reason: &str) -> Terminated {
    Terminated {
        exit_code: code,
        signal: None,
        reason: reason.into(),
        message: None,
        started_at: at(0),
        finished_at: at(2),
        container_id: "runc://u1_web_0".into(),
    }
}

fn base() -> PodState {
    PodState {
        sandbox: Sandbox::Ready {
            ip: Some("10.42.0.9".parse().unwrap()),
        },
        images: BTreeMap::from([(
            "busybox:1.36".to_string(),
            ImageState::Present {
                image_id: "docker.io/library/busybox@sha256:ab".into(),
            },
        )]),
        start_time: Some(at(0)),
        ..Default::default()
    }
}

fn condition(status: &PodStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[test]
fn creating_then_running_then_ready() {
    let node: std::net::Ipv4Addr = "192.0.2.10".parse().unwrap();
    let p = pod("Always", true);
    let s = base();
    let st = pod_status(&p, &s, node, at(1));
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("ContainerCreating")
    );
    assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.9"));
    assert_eq!(st.host_ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));

    let mut s = base();
    s.containers.insert(
        "web".into(),
        ContainerState {
            attempts: 1,
            current: Some(Attempt {
                id: "u1_web_0".into(),
                number: 0,
                started_at: at(1),
                terminated: None,
            }),
            probes: Probes {
                ready: false,
                started: true,
                kill_reason: None,
            },
            ..Default::default()
        },
    );
    let st = pod_status(&p, &s, node, at(2));
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&st, "Ready"), "False", "readiness not yet passed");
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.container_id.as_deref(), Some("runc://u1_web_0"));
    assert_eq!(cs.image_id, "docker.io/library/busybox@sha256:ab");
    assert!(!cs.ready);
    s.containers.get_mut("web").unwrap().probes.ready = true;
    let st = pod_status(&p, &s, node, at(3));
    assert_eq!(condition(&st, "Ready"), "True");
    assert_eq!(condition(&st, "ContainersReady"), "True");
    assert!(st.container_statuses.as_ref().unwrap()[0].ready);
}

#[test]
fn crash_loop_shows_back_off_and_last_state() {
    let p = pod("Always", false);
    let mut s = base();
    s.containers.insert(
        "web".into(),
        ContainerState {
            attempts: 3,
            current: Some(Attempt {
                id: "u1_web_2".into(),
                number: 2,
                started_at: at(0),
                terminated: Some(terminated(1, "Error")),
            }),
            backoff: Backoff {
                last: std::time::Duration::from_secs(20),
            },
            restart_after: Some(at(22)),
            ..Default::default()
        },
    );
    let st = pod_status(&p, &s, "192.0.2.10".parse().unwrap(), at(3));
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    let waiting = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(
        waiting.message.as_deref(),
        Some("back-off 20s restarting failed container=web pod=web-1_default(u1)")
    );
    assert_eq!(cs.restart_count, 2);
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        1
    );
}

#[test]
fn terminal_phases() {
    let node = "192.0.2.10".parse().unwrap();
    for (policy, code, reason, phase) in [
        ("Never", 0, "Completed", "Succeeded"),
        ("Never", 1, "Error", "Failed"),
        ("OnFailure", 0, "Completed", "Succeeded"),
        ("Never", 137, "OOMKilled", "Failed"),
    ] {
        let p = pod(policy, false);
        let mut s = base();
        s.containers.insert(
            "web".into(),
            ContainerState {
                attempts: 1,
                current: Some(Attempt {
                    id: "u1_web_0".into(),
                    number: 0,
                    started_at: at(0),
                    terminated: Some(terminated(code, reason)),
                }),
                ..Default::default()
            },
        );
        let st = pod_status(&p, &s, node, at(3));
        assert_eq!(st.phase.as_deref(), Some(phase), "{policy} {code}");
        let t = st.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (code, Some(reason)));
        assert_eq!(condition(&st, "Ready"), "False");
    }
}

#[test]
fn image_pull_failures_show_their_reason() {
    let p = pod("Always", false);
    let mut s = base();
    s.images.insert(
        "busybox:1.36".into(),
        ImageState::Failed {
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image".into(),
            retry_at: at(10),
            backoff: Default::default(),
        },
    );
    let st = pod_status(&p, &s, "192.0.2.10".parse().unwrap(), at(3));
    let waiting = st.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ImagePullBackOff"));
}
