//! Real cgroup tests (as root): pod parents under a private test root in the live hierarchies.

use std::path::{Path, PathBuf};

use skiff_node_agent::cgroups::{self, Cgroups, QosClass};

fn root_ok() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0 && !cgroups::hierarchies().is_empty();
    if !ok {
        eprintln!("skipping: needs root and mounted cgroup hierarchies");
    }
    ok
}

/// Hierarchies to create in, like runc does for a container: memory + cpu on v1, the
/// unified tree on v2.
fn test_hierarchies() -> Vec<PathBuf> {
    let all = cgroups::hierarchies();
    if cgroups::is_v2() {
        return all;
    }
    all.into_iter()
        .filter(|h| {
            matches!(
                h.file_name().and_then(|n| n.to_str()),
                Some("memory" | "cpu" | "cpu,cpuacct" | "pids")
            )
        })
        .collect()
}

#[test]
fn qos_paths() {
    let c = Cgroups::new("/");
    assert_eq!(
        c.pod_parent(QosClass::Guaranteed, "u-1"),
        "/kubepods/podu-1"
    );
    assert_eq!(
        c.pod_parent(QosClass::Burstable, "u-1"),
        "/kubepods/burstable/podu-1"
    );
    assert_eq!(
        c.pod_parent(QosClass::BestEffort, "u-1"),
        "/kubepods/besteffort/podu-1"
    );
    let t = Cgroups::new("/skiff-test-123");
    assert_eq!(
        t.pod_parent(QosClass::Guaranteed, "u"),
        "/skiff-test-123/kubepods/podu"
    );
    assert_eq!(
        t.pod_parent(QosClass::Burstable, "u"),
        "/skiff-test-123/kubepods/burstable/podu"
    );
    assert_eq!(
        t.pod_parent(QosClass::BestEffort, "u"),
        "/skiff-test-123/kubepods/besteffort/podu"
    );
    for dir in t.pod_dirs(QosClass::Burstable, "u") {
        assert!(
            dir.ends_with("skiff-test-123/kubepods/burstable/podu"),
            "{}",
            dir.display()
        );
        assert!(dir.starts_with(cgroups::CGROUP_MOUNT));
    }
    assert!(t.pod_dirs(QosClass::Burstable, "../../x").is_empty());
}

#[test]
fn hierarchies_found() {
    let hs = cgroups::hierarchies();
    assert!(!hs.is_empty());
    if !cgroups::is_v2() && Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert!(
            hs.contains(&PathBuf::from("/sys/fs/cgroup/memory")),
            "{hs:?}"
        );
    }
}

#[test]
fn remove_pod_removes_every_level_in_every_hierarchy() {
    if !root_ok() {
        return;
    }
    let root = format!("/skiff-test-cg-{}", std::process::id());
    let c = Cgroups::new(&root);
    for (i, qos) in [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ]
    .into_iter()
    .enumerate()
    {
        let uid = format!("uid-{i}");
        let parent = c.pod_parent(qos, &uid);
        let mut made = Vec::new();
        for h in test_hierarchies() {
            // The pod parent and two container leaves (one nested) as runc would leave them.
            let pod = h.join(parent.trim_start_matches('/'));
            std::fs::create_dir_all(pod.join("ctr-a")).unwrap();
            std::fs::create_dir_all(pod.join("ctr-b")).unwrap();
            made.push(pod);
        }
        let dirs = c.pod_dirs(qos, &uid);
        for pod in &made {
            assert!(dirs.contains(pod), "{} not in {dirs:?}", pod.display());
            assert!(pod.join("ctr-a").is_dir());
        }
        c.remove_pod(qos, &uid).unwrap();
        for pod in &made {
            assert!(!pod.exists(), "{} left", pod.display());
        }
        // Absent is fine.
        c.remove_pod(qos, &uid).unwrap();
    }
    c.remove_root().unwrap();
    for h in cgroups::hierarchies() {
        assert!(
            !h.join(root.trim_start_matches('/')).exists(),
            "{} left in {}",
            root,
            h.display()
        );
    }
    c.remove_root().unwrap();
}

#[test]
fn busy_pod_cgroup_is_an_error() {
    if !root_ok() {
        return;
    }
    let root = format!("/skiff-test-cgbusy-{}", std::process::id());
    let c = Cgroups::new(&root);
    let Some(h) = test_hierarchies().into_iter().next() else {
        return;
    };
    let pod = h.join(
        c.pod_parent(QosClass::BestEffort, "busy")
            .trim_start_matches('/'),
    );
    let leaf = pod.join("ctr");
    std::fs::create_dir_all(&leaf).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
    let busy = c.remove_pod(QosClass::BestEffort, "busy");
    let _ = child.kill();
    let _ = child.wait();
    let err = busy.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    // Once the task is gone the cgroup empties (possibly a moment later).
    let mut removed = false;
    for _ in 0..50 {
        if c.remove_pod(QosClass::BestEffort, "busy").is_ok() {
            removed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(removed && !pod.exists());
    c.remove_root().unwrap();
}
