//! Image store against real programs: Debian's `docker-registry` on a free loopback port, an
//! image built by `scripts/busybox-image.sh` (umoci) and pushed/converted with skopeo, overlay
//! mounts. Needs root and those programs (no internet); skipped with a message otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_node_agent::image::{
    ImageError, ImageRecord, ImageStore, RegistryConfig, mount_rootfs, unmount_rootfs,
};

const TAG: &str = "1.0";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Root plus the programs, or a reason to skip.
fn skip_reason(programs: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for p in programs {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{p} is not installed"));
        }
    }
    None
}

macro_rules! require {
    ($($p:expr),*) => {
        if let Some(why) = skip_reason(&[$($p),*]) {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `scripts/busybox-image.sh DIR TAG`.
fn build_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    run(Command::new("bash")
        .arg(repo_root().join("scripts/busybox-image.sh"))
        .arg(&layout)
        .arg(TAG));
    layout
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()[..64].to_string()
}

/// Adds to `layout` an image index tagged `tag` listing the image (as this machine's platform)
/// next to a foreign-platform entry; returns the image's manifest digest.
fn add_index(layout: &Path, tag: &str) -> String {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let image = index["manifests"][0].clone();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut foreign = image.clone();
    foreign["platform"] = serde_json::json!({"os": "windows", "architecture": "amd64"});
    foreign.as_object_mut().unwrap().remove("annotations");
    let mut native = image.clone();
    native["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    native.as_object_mut().unwrap().remove("annotations");
    let blob = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign, native],
    }))
    .unwrap();
    let hex = sha256_hex(&blob);
    fs::write(layout.join("blobs/sha256").join(&hex), &blob).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": blob.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    image["digest"].as_str().unwrap().to_string()
}

/// A `docker-registry serve` child, killed by its PID on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reg.v2_status() == Some(200) {
                break;
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log =
                    fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    fn v2_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn push(&self, layout: &Path, repo_tag: &str) {
        run(Command::new("skopeo").args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci:{}:{TAG}", layout.display()),
            &format!("docker://{}/{repo_tag}", self.host()),
        ]));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // By PID (Child::kill signals exactly this process), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unmounts on drop (so a failed assertion leaves no mount behind).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount_rootfs(&self.0);
    }
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// (inode, mtime) of every blob and layer dir of `rec`.
fn fingerprint(
    root: &Path,
    store: &ImageStore,
    rec: &ImageRecord,
) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    let mut paths: Vec<PathBuf> = rec.layers.iter().map(|d| blob_path(root, d)).collect();
    paths.push(blob_path(root, &rec.digest));
    paths.extend(store.layer_dirs(rec));
    paths
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, (m.ino(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// The checks every busybox record passes: 2 layers, unpacked, whiteout, motd, config.
fn check_busybox(store: &ImageStore, rec: &ImageRecord) {
    assert_eq!(rec.layers.len(), 2, "{rec:?}");
    assert!(rec.digest.starts_with("sha256:") && rec.digest.len() == 71);
    assert!(rec.size > 1_000_000, "size {}", rec.size);
    assert_eq!(rec.config.cmd, Some(vec!["sh".to_string()]));
    assert!(
        rec.config.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        rec.config.env
    );
    let dirs = store.layer_dirs(rec);
    assert_eq!(dirs.len(), 2);
    for d in &dirs {
        assert!(d.is_dir(), "{} not unpacked", d.display());
    }
    let (top, base) = (&dirs[0], &dirs[1]);
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(base.join("www/old.html").is_file());
    assert_eq!(
        fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let wh = fs::symlink_metadata(top.join("www/old.html")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is not a char device: {wh:?}"
    );
    assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 0, 0));
    assert!(!top.join("www/.wh.old.html").exists());
    assert!(
        fs::read_to_string(top.join("etc/motd"))
            .unwrap()
            .contains("layer 2")
    );
}

fn store_at(dir: &Path, registries: RegistryConfig) -> (PathBuf, ImageStore) {
    let root = dir.join("images");
    let store = ImageStore::open(&root, registries).unwrap();
    (root, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_local_registry_insecure_mirror_and_errors() {
    require!("docker-registry", "skopeo", "umoci");
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let registry = Registry::start();
    registry.push(&layout, &format!("library/busybox:{TAG}"));
    let host = registry.host();

    // Plain HTTP through `insecure`.
    let (root, store) = store_at(
        work.path(),
        RegistryConfig {
            insecure: vec![host.clone()],
            ..Default::default()
        },
    );
    let name = format!("{host}/library/busybox:{TAG}");
    let rec = store.pull(&name, None).await.unwrap();
    assert_eq!(rec.references, vec![name.clone()]);
    check_busybox(&store, &rec);
    assert_eq!(store.lookup(&name).unwrap().as_ref(), Some(&rec));
    assert_eq!(store.lookup(&rec.digest).unwrap().as_ref(), Some(&rec));
    assert_eq!(
        store
            .lookup(&format!("{host}/library/busybox@{}", rec.digest))
            .unwrap()
            .as_ref(),
        Some(&rec)
    );
    assert_eq!(store.list().unwrap(), vec![rec.clone()]);
    let leftovers: Vec<_> = fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // A second pull fetches and unpacks nothing again.
    let before = fingerprint(&root, &store, &rec);
    let again = store.pull(&name, None).await.unwrap();
    assert_eq!(again.digest, rec.digest);
    assert_eq!(
        fingerprint(&root, &store, &again),
        before,
        "blobs or layers were rewritten"
    );
    assert_eq!(store.list().unwrap().len(), 1);

    // An image index: the entry for this machine's platform is pulled.
    let image_digest = add_index(&layout, "multi");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{host}/library/busybox:multi"),
    ]));
    let multi = store
        .pull(&format!("{host}/library/busybox:multi"), None)
        .await
        .unwrap();
    assert_eq!(multi.digest, image_digest);
    assert_eq!(multi.digest, rec.digest);
    assert_eq!(multi.references.len(), 2, "{multi:?}");
    assert_eq!(store.list().unwrap().len(), 1);
    store
        .remove(&format!("{host}/library/busybox:multi"))
        .unwrap();

    // Missing tag / repository: the registry's words.
    match store
        .pull(&format!("{host}/library/busybox:nope"), None)
        .await
    {
        Err(ImageError::Pull(m)) => {
            eprintln!("missing tag: {m}");
            assert!(m.contains("manifest unknown"), "{m}");
        }
        other => panic!("expected a pull error, got {other:?}"),
    }
    match store.pull(&format!("{host}/library/nothere:1"), None).await {
        Err(ImageError::Pull(m)) => {
            eprintln!("missing repository: {m}");
            assert!(m.contains("unknown"), "{m}");
        }
        other => panic!("expected a pull error, got {other:?}"),
    }
    // Without `insecure` the client speaks TLS to a plain-HTTP registry and fails.
    let (_, tls_store) = store_at(&work.path().join("tls"), RegistryConfig::default());
    match tls_store.pull(&name, None).await {
        Err(ImageError::Pull(m)) => eprintln!("https to a plain-http registry: {m}"),
        other => panic!("expected a pull error, got {other:?}"),
    }
    assert!(matches!(
        store.pull("Not A Ref", None).await,
        Err(ImageError::InvalidReference(_))
    ));

    // docker.io through an http:// mirror (no internet needed); recorded under docker.io.
    let mut mirrors = BTreeMap::new();
    mirrors.insert("docker.io".to_string(), vec![format!("http://{host}")]);
    let (_, mstore) = store_at(
        &work.path().join("m"),
        RegistryConfig {
            mirrors,
            ..Default::default()
        },
    );
    let mrec = mstore.pull(&format!("busybox:{TAG}"), None).await.unwrap();
    assert_eq!(
        mrec.references,
        vec![format!("docker.io/library/busybox:{TAG}")]
    );
    assert_eq!(mrec.digest, rec.digest);
    check_busybox(&mstore, &mrec);
    assert_eq!(
        mstore.lookup(&format!("busybox:{TAG}")).unwrap().as_ref(),
        Some(&mrec)
    );
    // A tag the mirror lacks: the mirror's message is in the error (upstream fails offline too).
    match mstore.pull("busybox:absent", None).await {
        Err(ImageError::Pull(m)) => {
            eprintln!("missing tag through the mirror: {m}");
            assert!(m.contains("manifest unknown"), "{m}");
        }
        other => panic!("expected a pull error, got {other:?}"),
    }

    // Remove drops the name, then the content.
    store.remove(&name).unwrap();
    assert_eq!(store.lookup(&name).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    for d in &rec.layers {
        assert!(!blob_path(&root, d).exists());
    }
    for d in store.layer_dirs(&rec) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(matches!(store.remove(&name), Err(ImageError::NotFound(_))));
    drop(registry);
}

#[test]
fn import_layout_dir_oci_archive_and_docker_archive() {
    require!("skopeo", "umoci");
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let oci_tar = work.path().join("bb-oci.tar");
    let docker_tar = work.path().join("bb-docker.tar");
    let src = format!("oci:{}:{TAG}", layout.display());
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("oci-archive:{}:{TAG}", oci_tar.display()),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("docker-archive:{}:busybox:{TAG}", docker_tar.display()),
    ]));
    let (root, store) = store_at(work.path(), RegistryConfig::default());

    // OCI layout dir: ref.name "1.0" is a bare tag → docker.io/library/import:1.0.
    let recs = store.import(&layout).unwrap();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(
        rec.references,
        vec![format!("docker.io/library/import:{TAG}")]
    );
    check_busybox(&store, rec);
    let before = fingerprint(&root, &store, rec);

    // The same image as an oci-archive tar: same digest, layers reused, not re-unpacked.
    let recs2 = store.import(&oci_tar).unwrap();
    assert_eq!(recs2.len(), 1);
    assert_eq!(recs2[0].digest, rec.digest);
    assert_eq!(fingerprint(&root, &store, &recs2[0]), before);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(
        fs::read_dir(root.join("tmp")).unwrap().next().is_none(),
        "import temp dir left behind"
    );

    // docker-archive: RepoTags name it; uncompressed layers, a synthesized manifest.
    let recs3 = store.import(&docker_tar).unwrap();
    assert_eq!(recs3.len(), 1);
    let drec = &recs3[0];
    assert_eq!(
        drec.references,
        vec![format!("docker.io/library/busybox:{TAG}")]
    );
    assert_ne!(drec.digest, rec.digest);
    check_busybox(&store, drec);
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(
        store.lookup(&format!("busybox:{TAG}")).unwrap().as_ref(),
        Some(drec)
    );

    // A corrupted blob is refused.
    let bad = work.path().join("bad-layout");
    run(Command::new("cp").arg("-a").arg(&layout).arg(&bad));
    let big = fs::read_dir(bad.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = fs::read(&big).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&big, bytes).unwrap();
    let (_, fresh) = store_at(&work.path().join("fresh"), RegistryConfig::default());
    match fresh.import(&bad) {
        Err(ImageError::Import(m)) => assert!(m.contains("digest"), "{m}"),
        other => panic!("expected an import error, got {other:?}"),
    }
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn overlay_rootfs_and_remove_of_shared_layers() {
    require!("umoci");
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());

    // A second image in the layout sharing only the base layer, named "base".
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(&layout, &mdigest)).unwrap()).unwrap();
    manifest["layers"].as_array_mut().unwrap().truncate(1);
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let hex = sha256_hex(&mbytes);
    fs::write(layout.join("blobs/sha256").join(&hex), &mbytes).unwrap();
    let mut index2 = index.clone();
    index2["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "example.com/base:1"},
        }));
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index2).unwrap(),
    )
    .unwrap();

    let (root, store) = store_at(work.path(), RegistryConfig::default());
    let recs = store.import(&layout).unwrap();
    assert_eq!(recs.len(), 2);
    let full = store.lookup(&format!("import:{TAG}")).unwrap().unwrap();
    let base = store.lookup("example.com/base:1").unwrap().unwrap();
    assert_eq!(base.layers.len(), 1);
    assert_eq!(base.layers[0], full.layers[0]);

    // Overlay: motd from layer 2, the whited-out file hidden, busybox runs inside.
    let ctr = work.path().join("ctr");
    let target = ctr.join("rootfs");
    mount_rootfs(
        &store.layer_dirs(&full),
        &ctr.join("upper"),
        &ctr.join("work"),
        &target,
    )
    .unwrap();
    let guard = Mounted(target.clone());
    assert!(
        fs::read_to_string(target.join("etc/motd"))
            .unwrap()
            .contains("layer 2")
    );
    assert!(!target.join("www/old.html").exists());
    assert!(fs::symlink_metadata(target.join("www/old.html")).is_err());
    assert!(target.join("www/index.html").is_file());
    let out = Command::new("chroot")
        .arg(&target)
        .args(["/bin/busybox", "cat", "/etc/motd"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("layer 2"),
        "{out:?}"
    );
    let out = Command::new("chroot")
        .args(["--userspec=65534:65534"])
        .arg(&target)
        .args(["/bin/busybox", "cat", "/www/index.html"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nobody can't read the rootfs: {out:?}"
    );
    fs::write(target.join("tmp/written"), b"x").unwrap();
    assert!(
        ctr.join("upper/tmp/written").is_file(),
        "writes go to the upper dir"
    );

    // Mounted layers can't be collected.
    match store.remove(&format!("import:{TAG}")) {
        Err(ImageError::InUse(_)) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    drop(guard);
    unmount_rootfs(&target).unwrap(); // not mounted any more: fine
    assert!(!target.join("etc/motd").exists());

    // Removing the full image deletes only its unshared top layer.
    store
        .remove(&format!("docker.io/library/import:{TAG}"))
        .unwrap();
    let dirs = store.layer_dirs(&full);
    assert!(!dirs[0].exists(), "unshared top layer kept");
    assert!(dirs[1].is_dir(), "shared base layer deleted");
    assert!(!blob_path(&root, &full.layers[1]).exists());
    assert!(blob_path(&root, &full.layers[0]).exists());
    assert!(!blob_path(&root, &full.digest).exists());
    assert_eq!(store.list().unwrap(), vec![base.clone()]);

    // By digest, the last image goes with everything.
    store.remove(&base.digest).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!dirs[1].exists());
    let blobs: Vec<_> = fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .collect();
    assert!(blobs.is_empty(), "blobs left: {blobs:?}");
}

/// Everything under `dir` (relative paths), for "nothing half-written is left" checks.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // The store's lock file is not content.
            if entry.file_name() == ".lock" {
                continue;
            }
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A pull into a store on a filesystem too small for the image fails with a clear error and
/// leaves no blob, layer, temp file or index entry behind; with room it then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_runs_out_of_disk_leaves_nothing_half_written() {
    require!("docker-registry", "skopeo", "umoci");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: mounting a small tmpfs needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let registry = Registry::start();
    registry.push(&layout, &format!("library/busybox:{TAG}"));
    let host = registry.host();
    // 600 KiB: room for the index and a layer's start, not for the busybox layer (≈1 MiB
    // compressed, ≈2 MiB unpacked).
    let small = work.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let registries = RegistryConfig {
        insecure: vec![host.clone()],
        ..Default::default()
    };
    let (root, store) = store_at(&small, registries.clone());
    let before = tree(&root);
    let name = format!("{host}/library/busybox:{TAG}");
    let err = store.pull(&name, None).await.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("no space left"),
        "the error names the cause: {err}"
    );
    assert_eq!(tree(&root), before, "nothing half-written is left");
    assert!(store.lookup(&name).unwrap().is_none());
    assert!(store.list().unwrap().is_empty());
    // A store that reopens on the same (full) disk is still consistent.
    let reopened = ImageStore::open(&root, registries.clone()).unwrap();
    assert!(reopened.list().unwrap().is_empty());
    // With room, the same pull works.
    let (_, roomy) = store_at(work.path(), registries);
    let rec = roomy.pull(&name, None).await.unwrap();
    check_busybox(&roomy, &rec);
}
