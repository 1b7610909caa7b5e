//! Unit tests for pod volumes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolume, Pod, Secret, Volume, VolumeMount,
};
use serde_json::json;

use super::*;

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web", "namespace": "prod", "uid": "u-1",
            "labels": {"b": "2", "a": "one \"quoted\""},
            "annotations": {"note": "x\ny"}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "resources": {
                    "limits": {"cpu": "1500m", "memory": "128Mi"},
                    "requests": {"cpu": "250m"}
                }
            }],
            "volumes": volumes
        }
    }))
    .unwrap()
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect(),
    );
    s
}

/// A temporary pods root whose volumes are torn down (tmpfs unmounted) on drop.
struct Root {
    tmp: tempfile::TempDir,
    vols: PodVolumes,
}

impl Root {
    fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = self.vols.teardown();
    }
}

fn setup() -> (Root, PodVolumes) {
    let tmp = tempfile::tempdir().unwrap();
    let vols = PodVolumes::new(tmp.path(), "u-1");
    (
        Root {
            tmp,
            vols: vols.clone(),
        },
        vols,
    )
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN).
fn can_mount_tmpfs() -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let ok = mount::mount_tmpfs(tmp.path(), None).is_ok();
    if ok {
        mount::unmount(tmp.path()).unwrap();
    }
    ok
}

fn ts_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    v.sort();
    v
}

fn err_string<T: std::fmt::Debug>(r: Result<T, VolumeError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn references_lists_volume_objects_only() {
    let mut p = pod(json!([
        {"name": "c", "configMap": {"name": "cfg"}},
        {"name": "s", "secret": {"secretName": "tls"}},
        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "p", "projected": {"sources": [
            {"configMap": {"name": "cfg2"}},
            {"secret": {"name": "creds"}},
            {"serviceAccountToken": {"path": "token"}}
        ]}},
        {"name": "e", "emptyDir": {}}
    ]));
    p.spec.as_mut().unwrap().containers[0].env = Some(vec![EnvVar {
        name: "X".into(),
        value_from: Some(
            serde_json::from_value(json!({"configMapKeyRef": {"name": "envcm", "key": "k"}}))
                .unwrap(),
        ),
        ..Default::default()
    }]);
    let refs = PodVolumes::references(&p);
    assert_eq!(
        refs.config_maps.into_iter().collect::<Vec<_>>(),
        ["cfg", "cfg2"]
    );
    assert_eq!(
        refs.secrets.into_iter().collect::<Vec<_>>(),
        ["creds", "tls"]
    );
    assert_eq!(refs.claims.into_iter().collect::<Vec<_>>(), ["data"]);
}

#[test]
fn empty_dir_on_disk() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "scratch", "emptyDir": {}}]));
    let out = vols.sync(&p, &VolumeObjects::default()).unwrap();
    let path = &out["scratch"];
    assert_eq!(path, &vols.dir().join("kubernetes.io~empty-dir/scratch"));
    assert!(path.is_dir());
    assert_eq!(mode_of(path), 0o777);
    fs::write(path.join("f"), b"keep").unwrap();
    // Idempotent: contents survive a second sync.
    vols.sync(&p, &VolumeObjects::default()).unwrap();
    assert_eq!(fs::read(path.join("f")).unwrap(), b"keep");
    vols.teardown().unwrap();
    assert!(!vols.dir().exists());
    // Teardown of nothing is fine.
    vols.teardown().unwrap();
}

#[test]
fn empty_dir_memory_mounts_tmpfs_once_and_teardown_unmounts() {
    if !is_root() {
        eprintln!("skipping: not root");
        return;
    }
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]));
    let out = match vols.sync(&p, &VolumeObjects::default()) {
        Ok(o) => o,
        Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("skipping: cannot mount");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let path = fs::canonicalize(&out["mem"]).unwrap();
    let count = || {
        mount::mount_points()
            .unwrap()
            .iter()
            .filter(|m| **m == path)
            .count()
    };
    assert_eq!(count(), 1);
    vols.sync(&p, &VolumeObjects::default()).unwrap();
    assert_eq!(count(), 1, "tmpfs mounted twice");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == path.to_str())
        .unwrap();
    assert!(line.contains("tmpfs"), "{line}");
    assert!(line.contains("size=1024k"), "{line}");
    vols.teardown().unwrap();
    assert_eq!(count(), 0);
    assert!(!vols.dir().exists());
}

#[test]
fn empty_dir_bad_medium() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "x", "emptyDir": {"medium": "Floppy"}}]));
    assert_eq!(
        err_string(vols.sync(&p, &VolumeObjects::default())),
        "unknown storage medium \"Floppy\""
    );
}

#[test]
fn host_path_types() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().display().to_string();
    let dir = format!("{base}/made/dir");
    assert_eq!(
        check_host_path(&dir, Some("DirectoryOrCreate")).unwrap(),
        PathBuf::from(&dir)
    );
    assert_eq!(mode_of(Path::new(&dir)), 0o755);
    let file = format!("{base}/made/file");
    check_host_path(&file, Some("FileOrCreate")).unwrap();
    assert_eq!(mode_of(Path::new(&file)), 0o644);
    assert_eq!(fs::read(&file).unwrap(), b"");
    // FileOrCreate does not create the parent.
    assert!(check_host_path(&format!("{base}/nope/file"), Some("FileOrCreate")).is_err());
    check_host_path(&dir, Some("Directory")).unwrap();
    check_host_path(&file, Some("File")).unwrap();
    check_host_path(&file, None).unwrap();
    check_host_path(&format!("{base}/absent"), Some("")).unwrap();
    assert_eq!(
        err_string(check_host_path(&file, Some("Directory"))),
        format!("hostPath type check failed: {file} is not a directory")
    );
    assert_eq!(
        err_string(check_host_path(&file, Some("DirectoryOrCreate"))),
        format!("hostPath type check failed: {file} is not a directory")
    );
    assert_eq!(
        err_string(check_host_path(&dir, Some("File"))),
        format!("hostPath type check failed: {dir} is not a file")
    );
    assert_eq!(
        err_string(check_host_path(&dir, Some("Socket"))),
        format!("hostPath type check failed: {dir} is not a socket file")
    );
    assert_eq!(
        err_string(check_host_path(&dir, Some("CharDevice"))),
        format!("hostPath type check failed: {dir} is not a character device")
    );
    check_host_path("/dev/null", Some("CharDevice")).unwrap();
    assert_eq!(
        err_string(check_host_path(&dir, Some("BlockDevice"))),
        format!("hostPath type check failed: {dir} is not a block device")
    );
    let sock = format!("{base}/s.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    check_host_path(&sock, Some("Socket")).unwrap();
    assert_eq!(
        err_string(check_host_path(&dir, Some("Weird"))),
        "Weird is an invalid volume type"
    );
    assert!(check_host_path("relative", None).is_err());

    // Through sync: the path itself.
    let (_t2, vols) = setup();
    let p = pod(json!([{"name": "h", "hostPath": {"path": dir, "type": "Directory"}}]));
    let out = vols.sync(&p, &VolumeObjects::default()).unwrap();
    assert_eq!(out["h"], PathBuf::from(&dir));
}

#[test]
fn config_map_all_keys_default_mode_and_binary_data() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "cfg", "configMap": {"name": "app"}}]));
    let mut c = cm("app", &[("app.conf", "port=80"), ("other", "o")]);
    c.binary_data = Some(BTreeMap::from([(
        "blob".to_string(),
        ByteString(vec![0, 1, 2]),
    )]));
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), c)]),
        ..Default::default()
    };
    let out = vols.sync(&p, &objects).unwrap();
    let dir = &out["cfg"];
    assert_eq!(dir, &vols.dir().join("kubernetes.io~configmap/cfg"));
    assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "port=80");
    assert_eq!(fs::read(dir.join("blob")).unwrap(), [0, 1, 2]);
    assert_eq!(mode_of(&dir.join("other")), 0o644);
    assert_eq!(
        fs::read_link(dir.join("app.conf")).unwrap(),
        PathBuf::from("..data/app.conf")
    );
    let target = fs::read_link(dir.join("..data")).unwrap();
    assert!(target.to_string_lossy().starts_with("..20"), "{target:?}");
}

#[test]
fn config_map_items_modes_and_nested_paths() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "cfg", "configMap": {
        "name": "app", "defaultMode": 0o600,
        "items": [
            {"key": "a", "path": "conf/a.txt", "mode": 0o400},
            {"key": "b", "path": "b.txt"}
        ]
    }}]));
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([(
            "app".into(),
            cm("app", &[("a", "A"), ("b", "B"), ("c", "C")]),
        )]),
        ..Default::default()
    };
    let dir = vols.sync(&p, &objects).unwrap().remove("cfg").unwrap();
    assert_eq!(fs::read_to_string(dir.join("conf/a.txt")).unwrap(), "A");
    assert_eq!(mode_of(&dir.join("conf/a.txt")), 0o400);
    assert_eq!(mode_of(&dir.join("b.txt")), 0o600);
    assert!(!dir.join("c").exists());
    assert_eq!(
        fs::read_link(dir.join("conf")).unwrap(),
        PathBuf::from("..data/conf")
    );
}

#[test]
fn config_map_missing_and_optional() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "cfg", "configMap": {"name": "app"}}]));
    let r = vols.sync(&p, &VolumeObjects::default());
    assert!(
        matches!(r, Err(VolumeError::Missing(ref m)) if m == "configmap \"app\" not found"),
        "{r:?}"
    );

    let p = pod(json!([{"name": "cfg", "configMap": {"name": "app", "optional": true}}]));
    let dir = vols
        .sync(&p, &VolumeObjects::default())
        .unwrap()
        .remove("cfg")
        .unwrap();
    let visible: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    assert!(visible.is_empty(), "{visible:?}");

    let p = pod(
        json!([{"name": "cfg", "configMap": {"name": "app", "items": [{"key": "nope", "path": "x"}]}}]),
    );
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), cm("app", &[("a", "A")]))]),
        ..Default::default()
    };
    assert_eq!(
        err_string(vols.sync(&p, &objects)),
        "configmap references non-existent config key: nope"
    );
    let p = pod(
        json!([{"name": "cfg", "configMap": {"name": "app", "optional": true,
        "items": [{"key": "nope", "path": "x"}, {"key": "a", "path": "y"}]}}]),
    );
    let dir = vols.sync(&p, &objects).unwrap().remove("cfg").unwrap();
    assert!(!dir.join("x").exists());
    assert_eq!(fs::read_to_string(dir.join("y")).unwrap(), "A");
}

#[test]
fn items_paths_must_be_relative_without_dotdot() {
    let (_tmp, vols) = setup();
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), cm("app", &[("a", "A")]))]),
        ..Default::default()
    };
    for (path, msg) in [
        (
            "/etc/passwd",
            "invalid path: must be relative path: /etc/passwd",
        ),
        (
            "x/../../y",
            "invalid path: must not contain '..': x/../../y",
        ),
        ("..foo", "invalid path: must not start with '..': ..foo"),
    ] {
        let p = pod(
            json!([{"name": "cfg", "configMap": {"name": "app", "items": [{"key": "a", "path": path}]}}]),
        );
        assert_eq!(err_string(vols.sync(&p, &objects)), msg);
    }
    let p = pod(
        json!([{"name": "cfg", "configMap": {"name": "app", "items": [{"key": "a", "path": "a", "mode": 0o1777}]}}]),
    );
    assert!(vols.sync(&p, &objects).is_err());
    let p = pod(json!([{"name": "../evil", "emptyDir": {}}]));
    assert!(vols.sync(&p, &objects).is_err());
}

#[test]
fn secret_volume_bytes_items_and_errors() {
    let (_tmp, vols) = setup();
    let p = pod(
        json!([{"name": "tls", "secret": {"secretName": "cert", "defaultMode": 0o440,
        "items": [{"key": "tls.key", "path": "key.pem"}]}}]),
    );
    let objects = VolumeObjects {
        secrets: BTreeMap::from([(
            "cert".into(),
            secret("cert", &[("tls.key", b"\xffsecret"), ("other", b"o")]),
        )]),
        ..Default::default()
    };
    let dir = vols.sync(&p, &objects).unwrap().remove("tls").unwrap();
    assert_eq!(dir, vols.dir().join("kubernetes.io~secret/tls"));
    assert_eq!(fs::read(dir.join("key.pem")).unwrap(), b"\xffsecret");
    assert_eq!(mode_of(&dir.join("key.pem")), 0o440);
    assert!(!dir.join("other").exists());
    if is_root() && can_mount_tmpfs() {
        // Memory-backed like kubelet's, when we may mount.
        assert!(mount::is_mount_point(&dir).unwrap());
    }

    let p = pod(json!([{"name": "tls", "secret": {"secretName": "gone"}}]));
    let r = vols.sync(&p, &objects);
    assert!(
        matches!(r, Err(VolumeError::Missing(ref m)) if m == "secret \"gone\" not found"),
        "{r:?}"
    );
    let p = pod(
        json!([{"name": "tls", "secret": {"secretName": "cert", "items": [{"key": "nope", "path": "x"}]}}]),
    );
    assert_eq!(
        err_string(vols.sync(&p, &objects)),
        "secret references non-existent secret key: nope"
    );
    let p = pod(json!([{"name": "opt", "secret": {"secretName": "gone", "optional": true}}]));
    vols.sync(&p, &objects).unwrap();
    vols.teardown().unwrap();
    assert!(!vols.dir().exists());
}

#[test]
fn downward_api_fields_and_resources() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}, "mode": 0o400},
        {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "label-b", "fieldRef": {"fieldPath": "metadata.labels['b']"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu"}},
        {"path": "cpu-m", "resourceFieldRef": {"containerName": "app", "resource": "requests.cpu", "divisor": "1m"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
        {"path": "mem-req", "resourceFieldRef": {"containerName": "app", "resource": "requests.memory"}}
    ]}}]));
    let dir = vols
        .sync(&p, &VolumeObjects::default())
        .unwrap()
        .remove("info")
        .unwrap();
    assert_eq!(dir, vols.dir().join("kubernetes.io~downward-api/info"));
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("name"), "web");
    assert_eq!(read("ns"), "prod");
    assert_eq!(mode_of(&dir.join("ns")), 0o400);
    assert_eq!(mode_of(&dir.join("name")), 0o644);
    assert_eq!(read("uid"), "u-1");
    assert_eq!(read("labels"), "a=\"one \\\"quoted\\\"\"\nb=\"2\"");
    assert_eq!(read("annotations"), "note=\"x\\ny\"");
    assert_eq!(read("label-b"), "2");
    assert_eq!(read("cpu"), "2");
    assert_eq!(read("cpu-m"), "250");
    assert_eq!(read("mem"), "128");
    assert_eq!(read("mem-req"), "0");

    let p = pod(json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}]));
    assert_eq!(
        err_string(vols.sync(&p, &VolumeObjects::default())),
        "unsupported fieldPath: spec.nodeName"
    );
}

#[test]
fn projected_merges_sources_and_skips_tokens() {
    let (_tmp, vols) = setup();
    let p = pod(
        json!([{"name": "all", "projected": {"defaultMode": 0o640, "sources": [
            {"configMap": {"name": "app", "items": [{"key": "a", "path": "cfg/a"}]}},
            {"secret": {"name": "cert", "items": [{"key": "k", "path": "tls/k", "mode": 0o400}]}},
            {"secret": {"name": "gone", "optional": true}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
        ]}}]),
    );
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), cm("app", &[("a", "A")]))]),
        secrets: BTreeMap::from([("cert".into(), secret("cert", &[("k", b"K")]))]),
        ..Default::default()
    };
    let dir = vols.sync(&p, &objects).unwrap().remove("all").unwrap();
    assert_eq!(dir, vols.dir().join("kubernetes.io~projected/all"));
    assert_eq!(fs::read_to_string(dir.join("cfg/a")).unwrap(), "A");
    assert_eq!(mode_of(&dir.join("cfg/a")), 0o640);
    assert_eq!(fs::read_to_string(dir.join("tls/k")).unwrap(), "K");
    assert_eq!(mode_of(&dir.join("tls/k")), 0o400);
    assert_eq!(fs::read_to_string(dir.join("name")).unwrap(), "web");
    assert!(!dir.join("token").exists());

    let p =
        pod(json!([{"name": "all", "projected": {"sources": [{"configMap": {"name": "nope"}}]}}]));
    assert_eq!(
        err_string(vols.sync(&p, &objects)),
        "configmap \"nope\" not found"
    );
    vols.teardown().unwrap();
}

#[test]
fn atomic_update_is_visible_and_cleans_up() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "cfg", "configMap": {"name": "app"}}]));
    let mut objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), cm("app", &[("key", "v1"), ("old", "x")]))]),
        ..Default::default()
    };
    let dir = vols.sync(&p, &objects).unwrap().remove("cfg").unwrap();
    let first_target = fs::read_link(dir.join("..data")).unwrap();
    let first_ts = ts_dirs(&dir);
    assert_eq!(first_ts.len(), 1);
    // A path as a container sees it, resolved once before the update.
    let seen = dir.join("key");
    assert_eq!(fs::read_to_string(&seen).unwrap(), "v1");

    // Unchanged content: no new timestamp dir.
    vols.sync(&p, &objects).unwrap();
    assert_eq!(ts_dirs(&dir), first_ts);
    assert_eq!(fs::read_link(dir.join("..data")).unwrap(), first_target);

    objects
        .config_maps
        .insert("app".into(), cm("app", &[("key", "v2"), ("new", "n")]));
    vols.sync(&p, &objects).unwrap();
    assert_eq!(fs::read_to_string(&seen).unwrap(), "v2");
    let second_target = fs::read_link(dir.join("..data")).unwrap();
    assert_ne!(second_target, first_target);
    assert!(
        !dir.join(&first_target).exists(),
        "old timestamp dir left behind"
    );
    assert_eq!(
        ts_dirs(&dir),
        vec![second_target.to_string_lossy().into_owned()]
    );
    assert!(
        fs::symlink_metadata(dir.join("old")).is_err(),
        "stale user-visible path left"
    );
    assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "n");
    assert!(fs::symlink_metadata(dir.join("..data_tmp")).is_err());

    // A mode change alone rewrites.
    let p = pod(json!([{"name": "cfg", "configMap": {"name": "app", "defaultMode": 0o600}}]));
    vols.sync(&p, &objects).unwrap();
    assert_ne!(fs::read_link(dir.join("..data")).unwrap(), second_target);
    assert_eq!(mode_of(&seen), 0o600);
}

#[test]
fn atomic_writer_through_open_directory() {
    // A bind mount of the volume dir behaves like an open directory handle: paths resolved
    // relative to it see the new contents after an update.
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("vol");
    fs::create_dir(&target).unwrap();
    let mut payload = atomic_writer::Payload::new();
    payload.insert(
        "k".into(),
        atomic_writer::FileProjection {
            data: b"1".to_vec(),
            mode: 0o644,
        },
    );
    assert!(atomic_writer::write(&target, &payload).unwrap());
    assert!(!atomic_writer::write(&target, &payload).unwrap());
    let dirfd = fs::File::open(&target).unwrap();
    use std::os::fd::AsRawFd;
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}/k", dirfd.as_raw_fd()));
    assert_eq!(fs::read(&proc_path).unwrap(), b"1");
    payload.insert(
        "k".into(),
        atomic_writer::FileProjection {
            data: b"2".to_vec(),
            mode: 0o644,
        },
    );
    assert!(atomic_writer::write(&target, &payload).unwrap());
    assert_eq!(fs::read(&proc_path).unwrap(), b"2");
}

#[test]
fn persistent_volume_claims() {
    let (tmp, vols) = setup();
    let local = tmp.path().join("pv/local");
    let host = tmp.path().join("pv/host");
    let pv = |name: &str, spec: serde_json::Value| -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let objects = VolumeObjects {
        claims: BTreeMap::from([
            ("l".into(), pv("pv-l", json!({"local": {"path": local}}))),
            ("h".into(), pv("pv-h", json!({"hostPath": {"path": host}}))),
            (
                "n".into(),
                pv("pv-nfs", json!({"nfs": {"server": "s", "path": "/x"}})),
            ),
        ]),
        ..Default::default()
    };
    let p = pod(json!([
        {"name": "a", "persistentVolumeClaim": {"claimName": "l"}},
        {"name": "b", "persistentVolumeClaim": {"claimName": "h"}}
    ]));
    let out = vols.sync(&p, &objects).unwrap();
    assert_eq!(out["a"], local);
    assert_eq!(out["b"], host);
    assert!(local.is_dir() && host.is_dir());

    let p = pod(json!([{"name": "a", "persistentVolumeClaim": {"claimName": "n"}}]));
    assert_eq!(
        err_string(vols.sync(&p, &objects)),
        "unsupported volume source for PV pv-nfs"
    );
    let p = pod(json!([{"name": "a", "persistentVolumeClaim": {"claimName": "zz"}}]));
    let r = vols.sync(&p, &objects);
    assert!(
        matches!(r, Err(VolumeError::Missing(ref m)) if m == "persistentvolumeclaim \"zz\" not bound"),
        "{r:?}"
    );
    // Teardown never touches PV paths.
    fs::write(local.join("data"), b"keep").unwrap();
    vols.teardown().unwrap();
    assert_eq!(fs::read(local.join("data")).unwrap(), b"keep");
}

#[test]
fn unsupported_volume_type() {
    let (_tmp, vols) = setup();
    let p = pod(json!([{"name": "n", "nfs": {"server": "s", "path": "/x"}}]));
    let r = vols.sync(&p, &VolumeObjects::default());
    assert!(
        matches!(r, Err(VolumeError::Invalid(ref m)) if m == "unsupported volume type: nfs"),
        "{r:?}"
    );
}

fn container(mounts: serde_json::Value) -> Container {
    serde_json::from_value(json!({
        "name": "app",
        "env": [{"name": "POD", "value": "web-0"}, {"name": "EMPTY", "value": ""}],
        "volumeMounts": mounts
    }))
    .unwrap()
}

#[test]
fn container_mounts_sub_paths_and_read_only() {
    let (_tmp, vols) = setup();
    let p = pod(json!([
        {"name": "data", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "app"}}
    ]));
    let objects = VolumeObjects {
        config_maps: BTreeMap::from([("app".into(), cm("app", &[("a.conf", "A")]))]),
        ..Default::default()
    };
    let volumes = vols.sync(&p, &objects).unwrap();
    let c = container(json!([
        {"name": "data", "mountPath": "/data"},
        {"name": "data", "mountPath": "/logs", "subPath": "logs/app", "readOnly": true},
        {"name": "data", "mountPath": "/per-pod", "subPathExpr": "pods/$(POD)"},
        {"name": "cfg", "mountPath": "/etc/a.conf", "subPath": "a.conf"}
    ]));
    let mounts = vols.container_mounts(&c, &volumes).unwrap();
    let data = fs::canonicalize(&volumes["data"]).unwrap();
    assert_eq!(
        mounts[0],
        BindMount {
            source: volumes["data"].clone(),
            destination: "/data".into(),
            read_only: false
        }
    );
    assert_eq!(mounts[1].source, data.join("logs/app"));
    assert!(mounts[1].read_only);
    assert!(data.join("logs/app").is_dir());
    assert_eq!(mode_of(&data.join("logs/app")), 0o777);
    assert_eq!(mounts[2].source, data.join("pods/web-0"));
    assert!(data.join("pods/web-0").is_dir());
    assert_eq!(fs::read_to_string(&mounts[3].source).unwrap(), "A");
    assert_eq!(mounts[3].destination, "/etc/a.conf");
    // configMap volumes are always read-only, like kubelet's.
    assert!(mounts[3].read_only);

    let bad =
        |m: serde_json::Value| err_string(vols.container_mounts(&container(json!([m])), &volumes));
    assert_eq!(
        bad(json!({"name": "nope", "mountPath": "/x"})),
        "cannot find volume \"nope\" to mount into container \"app\""
    );
    assert_eq!(
        bad(json!({"name": "data", "mountPath": "/x", "subPath": "/abs"})),
        "error SubPath `/abs` must not be an absolute path"
    );
    assert_eq!(
        bad(json!({"name": "data", "mountPath": "/x", "subPath": "a/../../b"})),
        "unable to provision SubPath `a/../../b`: must not contain '..'"
    );
    assert_eq!(
        bad(json!({"name": "data", "mountPath": "/x", "subPathExpr": "$(NOPE)/$(EMPTY)"})),
        "missing value for EMPTY, NOPE"
    );
    // A symlink planted in the volume must not lead a subPath out of it.
    std::os::unix::fs::symlink("/", data.join("escape")).unwrap();
    let e = bad(json!({"name": "data", "mountPath": "/x", "subPath": "escape/etc"}));
    assert!(e.contains("not within volume path"), "{e}");
}

#[test]
fn sub_path_expr_expansion() {
    let c = container(json!([]));
    assert_eq!(
        expand_sub_path_expr("a/$(POD)/$$(POD)/$x/$(", &c).unwrap(),
        "a/web-0/$(POD)/$x/$("
    );
}

#[test]
fn teardown_detaches_bind_mounts_without_touching_their_source() {
    if !is_root() {
        eprintln!("skipping: not root");
        return;
    }
    let (tmp, vols) = setup();
    let p = pod(json!([{"name": "e", "emptyDir": {}}]));
    let out = vols.sync(&p, &VolumeObjects::default()).unwrap();
    // A bind mount of an outside directory into the volume, made busy by no one: teardown
    // detaches it first and then removes the tree without touching the outside directory.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"x").unwrap();
    let inner = out["e"].join("bind");
    fs::create_dir(&inner).unwrap();
    let src = std::ffi::CString::new(outside.to_str().unwrap()).unwrap();
    let dst = std::ffi::CString::new(inner.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!("skipping: cannot bind mount");
        return;
    }
    vols.teardown().unwrap();
    assert!(!vols.dir().exists());
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"x");
}

#[test]
fn remove_tree_refuses_other_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("sub/f"), b"x").unwrap();
    assert!(mount::remove_tree(&d, u64::MAX).is_err());
    assert!(d.join("sub/f").exists());
    use std::os::unix::fs::MetadataExt;
    mount::remove_tree(&d, fs::metadata(&d).unwrap().dev()).unwrap();
    assert!(!d.exists());
}

#[test]
fn quantities() {
    use render::Quantity;
    let q = |s: &str| Quantity::parse(s).unwrap();
    assert_eq!(q("128Mi").scaled(0), 128 << 20);
    assert_eq!(q("1500m").scaled(3), 1500);
    assert_eq!(q("1500m").scaled(0), 2);
    assert_eq!(q("0.5").scaled(3), 500);
    assert_eq!(q("1e3").scaled(0), 1000);
    assert_eq!(q("2G").scaled(0), 2_000_000_000);
    assert_eq!(q("1m").scaled(0), 1);
    assert!(Quantity::parse("12x").is_err());
    assert!(Quantity::parse("").is_err());
    assert!(Quantity::parse("1.2.3").is_err());
}

#[test]
fn mountinfo_unescapes() {
    let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n";
    assert_eq!(
        mount::parse_mountinfo(text),
        vec![PathBuf::from("/mnt two")]
    );
}

#[test]
fn volume_and_mount_types_used() {
    // Keep the imports honest: Volume/VolumeMount deserialize from the API shapes used above.
    let _: Volume = serde_json::from_value(json!({"name": "x", "emptyDir": {}})).unwrap();
    let _: VolumeMount = serde_json::from_value(json!({"name": "x", "mountPath": "/x"})).unwrap();
}

#[test]
fn read_only_claims_and_atomic_volumes_force_read_only() {
    let (root, vols) = setup();
    let pv: PersistentVolume = serde_json::from_value(
        json!({"metadata": {"name": "pv"}, "spec": {"local": {"path": root.path().join("pv")}}}),
    )
    .unwrap();
    let objects = VolumeObjects {
        claims: BTreeMap::from([("c".into(), pv)]),
        ..Default::default()
    };
    let p = pod(json!([
        {"name": "ro", "persistentVolumeClaim": {"claimName": "c", "readOnly": true}},
        {"name": "rw", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "info", "downwardAPI": {"items": []}}
    ]));
    let volumes = vols.sync(&p, &objects).unwrap();
    let c = container(json!([
        {"name": "ro", "mountPath": "/ro"},
        {"name": "rw", "mountPath": "/rw"},
        {"name": "info", "mountPath": "/info"}
    ]));
    let ro: Vec<bool> = vols
        .container_mounts(&c, &volumes)
        .unwrap()
        .iter()
        .map(|m| m.read_only)
        .collect();
    assert_eq!(ro, [true, false, true]);
    assert_eq!(PodVolumes::references(&p).claims.len(), 1);
}
