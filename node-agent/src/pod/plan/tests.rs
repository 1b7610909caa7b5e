//! The plan, level-triggered: each case is a pod and an observed state, and the actions.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::pod::state::{Attempt, ContainerState, ImageState, PodState, Sandbox, Terminated};

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn pod(policy: &str, init: &[&str], containers: &[&str]) -> Pod {
    let c = |n: &&str| Container {
        name: n.to_string(),
        image: Some("busybox:1.36".into()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
            containers: containers.iter().map(c).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ready_state() -> PodState {
    PodState {
        sandbox: Sandbox::Ready {
            ip: Some("10.42.0.2".parse().unwrap()),
        },
        images: BTreeMap::from([(
            "busybox:1.36".to_string(),
            ImageState::Present {
                image_id: "x@sha256:1".into(),
            },
        )]),
        ..Default::default()
    }
}

fn exited(code: i32) -> ContainerState {
    ContainerState {
        attempts: 1,
        current: Some(Attempt {
            id: "u1_c_0".into(),
            number: 0,
            started_at: at(0),
            terminated: Some(Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: None,
                started_at: at(0),
                finished_at: at(1),
                container_id: "runc://u1_c_0".into(),
            }),
        }),
        ..Default::default()
    }
}

fn running() -> ContainerState {
    ContainerState {
        attempts: 1,
        current: Some(Attempt {
            id: "u1_c_0".into(),
            number: 0,
            started_at: at(0),
            terminated: None,
        }),
        ..Default::default()
    }
}

fn start(name: &str) -> Action {
    Action::Start {
        container: name.into(),
    }
}

#[test]
fn sandbox_then_image_then_start() {
    let p = pod("Always", &[], &["web"]);
    assert_eq!(
        plan(&p, &PodState::default(), at(0)),
        vec![Action::SetupSandbox]
    );
    let mut s = ready_state();
    s.images.clear();
    assert_eq!(
        plan(&p, &s, at(0)),
        vec![Action::EnsureImage {
            image: "busybox:1.36".into(),
            policy: PullPolicy::IfNotPresent
        }]
    );
    assert_eq!(plan(&p, &ready_state(), at(0)), vec![start("web")]);
    // Level-triggered: the same inputs give the same answer.
    assert_eq!(
        plan(&p, &ready_state(), at(0)),
        plan(&p, &ready_state(), at(0))
    );
}

#[test]
fn failed_sandbox_and_image_wait_for_their_retry_time() {
    let p = pod("Always", &[], &["web"]);
    let s = PodState {
        sandbox: Sandbox::Failed {
            message: "x".into(),
            retry_at: at(10),
        },
        ..Default::default()
    };
    assert!(plan(&p, &s, at(5)).is_empty());
    assert_eq!(plan(&p, &s, at(10)), vec![Action::SetupSandbox]);
    let mut s = ready_state();
    s.images.insert(
        "busybox:1.36".into(),
        ImageState::Failed {
            reason: "ErrImagePull".into(),
            message: "m".into(),
            retry_at: at(20),
            backoff: Default::default(),
        },
    );
    assert!(plan(&p, &s, at(19)).is_empty());
    assert!(matches!(
        plan(&p, &s, at(20))[..],
        [Action::EnsureImage { .. }]
    ));
}

#[test]
fn init_containers_run_one_at_a_time_in_order() {
    let p = pod("Always", &["a", "b"], &["web"]);
    let mut s = ready_state();
    assert_eq!(plan(&p, &s, at(0)), vec![start("a")]);
    s.containers.insert("a".into(), running());
    assert!(plan(&p, &s, at(0)).is_empty(), "wait for a");
    s.containers.insert("a".into(), exited(0));
    assert_eq!(plan(&p, &s, at(0)), vec![start("b")]);
    s.containers.insert("b".into(), exited(1));
    assert_eq!(
        plan(&p, &s, at(0)),
        vec![start("b")],
        "a failed init container retries"
    );
    s.containers.insert("b".into(), exited(0));
    assert_eq!(plan(&p, &s, at(0)), vec![start("web")]);
    // Under Never a failed init container fails the pod: nothing more starts.
    let never = pod("Never", &["a"], &["web"]);
    let mut s = ready_state();
    s.containers.insert("a".into(), exited(2));
    assert!(is_finished(&never, &s));
    assert_eq!(plan(&never, &s, at(0)), vec![Action::TeardownSandbox]);
}

#[test]
fn restart_policies_and_backoff() {
    for (policy, code, restarts_expected) in [
        ("Always", 0, true),
        ("Always", 1, true),
        ("OnFailure", 0, false),
        ("OnFailure", 1, true),
        ("Never", 1, false),
    ] {
        let p = pod(policy, &[], &["web"]);
        let mut s = ready_state();
        s.containers.insert("web".into(), exited(code));
        let actions = plan(&p, &s, at(5));
        assert_eq!(
            actions == vec![start("web")],
            restarts_expected,
            "{policy} exit {code}: {actions:?}"
        );
        // Back-off: not before restart_after.
        s.containers.get_mut("web").unwrap().restart_after = Some(at(20));
        if restarts_expected {
            assert!(plan(&p, &s, at(19)).is_empty());
            assert_eq!(plan(&p, &s, at(20)), vec![start("web")]);
        }
    }
}

#[test]
fn liveness_failure_stops_the_container_once() {
    let p = pod("Always", &[], &["web"]);
    let mut s = ready_state();
    let mut c = running();
    c.probes.kill_reason = Some("Container web failed liveness probe, will be restarted".into());
    s.containers.insert("web".into(), c.clone());
    assert!(
        matches!(&plan(&p, &s, at(0))[..], [Action::Stop { container, .. }] if container == "web")
    );
    c.stopping = true;
    s.containers.insert("web".into(), c);
    assert!(plan(&p, &s, at(0)).is_empty());
}

#[test]
fn deletion_stops_within_the_grace_period_then_tears_down_then_confirms() {
    let mut p = pod("Always", &[], &["web", "side"]);
    p.metadata.deletion_timestamp = Some(Time(at(0)));
    p.metadata.deletion_grace_period_seconds = Some(7);
    let mut s = ready_state();
    s.containers.insert("web".into(), running());
    s.containers.insert("side".into(), exited(0));
    assert_eq!(
        plan(&p, &s, at(1)),
        vec![Action::Stop {
            container: "web".into(),
            grace: Duration::from_secs(7),
            reason: "pod deleted".into()
        }]
    );
    s.containers.insert("web".into(), exited(137));
    assert_eq!(plan(&p, &s, at(2)), vec![Action::TeardownSandbox]);
    s.sandbox = Sandbox::TornDown;
    assert_eq!(plan(&p, &s, at(2)), vec![Action::ConfirmDeletion]);
}

#[test]
fn pull_policy_defaults_as_the_api_server() {
    let c = |image: &str| Container {
        name: "c".into(),
        image: Some(image.into()),
        ..Default::default()
    };
    assert_eq!(pull_policy(&c("busybox")), PullPolicy::Always);
    assert_eq!(pull_policy(&c("busybox:latest")), PullPolicy::Always);
    assert_eq!(
        pull_policy(&c("127.0.0.1:5000/busybox")),
        PullPolicy::Always
    );
    assert_eq!(
        pull_policy(&c("127.0.0.1:5000/busybox:1.36")),
        PullPolicy::IfNotPresent
    );
    assert_eq!(
        pull_policy(&c("busybox@sha256:abc")),
        PullPolicy::IfNotPresent
    );
    let mut never = c("busybox");
    never.image_pull_policy = Some("Never".into());
    assert_eq!(pull_policy(&never), PullPolicy::Never);
}
