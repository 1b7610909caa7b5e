//! config.json from pods: process merge rules, users, resources, namespaces.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use oci_spec::runtime::LinuxNamespaceType;

use super::*;
use crate::image::ImageConfig;

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: Some(vec!["/entry".into()]),
        cmd: Some(vec!["serve".into(), "--port=80".into()]),
        env: vec!["PATH=/bin".into(), "MODE=image".into()],
        working_dir: Some("/srv".into()),
        user: None,
    }
}

#[test]
fn command_and_args_replace_entrypoint_and_cmd_as_kubernetes() {
    let c = |command: Option<Vec<&str>>, args: Option<Vec<&str>>| Container {
        name: "c".into(),
        command: command.map(|v| v.into_iter().map(String::from).collect()),
        args: args.map(|v| v.into_iter().map(String::from).collect()),
        ..Default::default()
    };
    assert_eq!(
        argv(&c(None, None), &image()),
        ["/entry", "serve", "--port=80"]
    );
    assert_eq!(
        argv(&c(Some(vec!["sh"]), None), &image()),
        ["sh"],
        "command drops the image's Cmd"
    );
    assert_eq!(argv(&c(None, Some(vec!["x"])), &image()), ["/entry", "x"]);
    assert_eq!(
        argv(&c(Some(vec!["sh", "-c"]), Some(vec!["echo"])), &image()),
        ["sh", "-c", "echo"]
    );
}

#[test]
fn environment_merges_with_the_container_winning_and_path_always_set() {
    let env = environment(
        &image(),
        &[("MODE".into(), "pod".into()), ("X".into(), "1".into())],
    );
    assert_eq!(env, ["PATH=/bin", "MODE=pod", "X=1"]);
    let env = environment(&ImageConfig::default(), &[]);
    assert_eq!(env, [DEFAULT_PATH]);
}

#[test]
fn users_from_security_context_image_and_passwd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    let pod = Pod::default();
    let c = Container {
        name: "c".into(),
        ..Default::default()
    };
    let mut img = ImageConfig {
        user: Some("www".into()),
        ..Default::default()
    };
    assert_eq!(user(&pod, &c, &img, dir.path()).unwrap(), (33, 34));
    img.user = Some("33:staff".into());
    assert_eq!(user(&pod, &c, &img, dir.path()).unwrap(), (33, 50));
    img.user = Some("nobody".into());
    assert!(
        user(&pod, &c, &img, dir.path())
            .unwrap_err()
            .to_string()
            .contains("unable to find user nobody")
    );
    let sc = Container {
        name: "c".into(),
        security_context: Some(SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(2000),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(user(&pod, &sc, &img, dir.path()).unwrap(), (1000, 2000));
}

#[test]
fn resources_become_cgroup_settings_as_kubelet_maps_them() {
    let c = Container {
        name: "c".into(),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                Quantity("250m".into()),
            )])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("500m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = resources(&c).unwrap();
    let memory = r.memory().as_ref().unwrap();
    assert_eq!(
        (memory.limit(), memory.swap()),
        (Some(33_554_432), Some(33_554_432))
    );
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(256), Some(50_000), Some(100_000))
    );
    assert_eq!(cpu_shares(None), 2);
    assert_eq!(cpu_quota(1), 1000, "at least 1 ms");
}

#[test]
fn spec_joins_the_pod_netns_and_keeps_the_pod_in_annotations() {
    let pod = Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        ..Default::default()
    };
    let container = Container {
        name: "web".into(),
        command: Some(vec!["httpd".into()]),
        ..Default::default()
    };
    let img = image();
    let input = ContainerSpecInput {
        pod: &pod,
        container: &container,
        env: vec![],
        image: &img,
        rootfs: Path::new("/nonexistent/rootfs"),
        cgroups_path: "/kubepods/besteffort/podu1/u1_web_0".into(),
        netns: Some(Path::new("/run/netns/skiff-u1")),
        mounts: vec![BindMount {
            source: "/tmp/hosts".into(),
            destination: "/etc/hosts".into(),
            read_only: false,
        }],
        restart_count: 2,
    };
    let spec = build(&input).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let net = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .unwrap();
    assert_eq!(
        net.path().as_deref(),
        Some(Path::new("/run/netns/skiff-u1"))
    );
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/besteffort/podu1/u1_web_0"))
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-1"));
    let annotations = spec.annotations().as_ref().unwrap();
    assert_eq!(
        annotations
            .get(ANNOTATION_RESTART_COUNT)
            .map(String::as_str),
        Some("2")
    );
    assert!(
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/etc/hosts"))
    );
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_ref().unwrap(), &["httpd".to_string()]);
    assert_eq!(process.cwd(), Path::new("/srv"));
}
