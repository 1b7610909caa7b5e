//! Pod volumes, laid out like kubelet's under `<pods_root>/<uid>/volumes/<plugin>/<name>`:
//! emptyDir (on disk, or a tmpfs for `medium: Memory`), hostPath (with its type checks),
//! configMap, secret, downwardAPI and projected volumes (written with kubelet's AtomicWriter so
//! updates are atomic and visible through bind mounts; secret, downwardAPI and projected volumes
//! are tmpfs-backed when we may mount), and persistentVolumeClaims bound to hostPath or local PVs.
//! Also each container's bind mounts (`subPath`, `subPathExpr`, `readOnly`) and the pod's
//! teardown, which unmounts first and never deletes through a mount point.

pub mod atomic_writer;
mod mount;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, PersistentVolume, Pod, Secret, Volume};

use atomic_writer::Payload;
use render::{DEFAULT_MODE, Quantity};

/// kubelet's plugin directory names.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP_PLUGIN: &str = "kubernetes.io~configmap";
pub const SECRET_PLUGIN: &str = "kubernetes.io~secret";
pub const DOWNWARD_API_PLUGIN: &str = "kubernetes.io~downward-api";
pub const PROJECTED_PLUGIN: &str = "kubernetes.io~projected";
/// Where `sync` records the claim volumes mounted read-only.
const READ_ONLY_FILE: &str = "read-only-volumes";

/// Objects a pod's volumes read, fetched by the caller from the API server.
#[derive(Clone, Debug, Default)]
pub struct VolumeObjects {
    /// ConfigMaps by name (the pod's namespace).
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets by name (the pod's namespace).
    pub secrets: BTreeMap<String, Secret>,
    /// The PersistentVolume bound to each claim, by claim name.
    pub claims: BTreeMap<String, PersistentVolume>,
}

/// What a pod's volumes need fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeRefs {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub claims: BTreeSet<String>,
}

/// One bind mount into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// kubelet's wording, e.g. `configmap "app" not found`.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A pod's volumes under `<pods_root>/<uid>/volumes`.
#[derive(Clone, Debug)]
pub struct PodVolumes {
    dir: PathBuf,
}

/// The claim a generic ephemeral volume creates: `<pod name>-<volume name>`.
pub fn ephemeral_claim_name(pod: &Pod, volume: &str) -> String {
    format!(
        "{}-{volume}",
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl PodVolumes {
    pub fn new(pods_root: &Path, pod_uid: &str) -> PodVolumes {
        PodVolumes {
            dir: pods_root.join(pod_uid).join("volumes"),
        }
    }

    /// The pod's volumes directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ConfigMaps, Secrets and claims the pod's volumes read (not env references).
    pub fn references(pod: &Pod) -> VolumeRefs {
        let mut refs = VolumeRefs::default();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for v in volumes.into_iter().flatten() {
            if let Some(cm) = &v.config_map {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
                refs.secrets.insert(name.clone());
            }
            if let Some(claim) = &v.persistent_volume_claim {
                refs.claims.insert(claim.claim_name.clone());
            }
            if v.ephemeral.is_some() {
                refs.claims.insert(ephemeral_claim_name(pod, &v.name));
            }
            let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
            for s in sources.into_iter().flatten() {
                if let Some(cm) = &s.config_map {
                    refs.config_maps.insert(cm.name.clone());
                }
                if let Some(secret) = &s.secret {
                    refs.secrets.insert(secret.name.clone());
                }
            }
        }
        refs.config_maps.retain(|n| !n.is_empty());
        refs.secrets.retain(|n| !n.is_empty());
        refs.claims.retain(|n| !n.is_empty());
        refs
    }

    /// Sets up every volume of the pod (idempotent); volume name → host path to bind.
    pub fn sync(
        &self,
        pod: &Pod,
        objects: &VolumeObjects,
    ) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
        let mut out = BTreeMap::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for v in volumes.into_iter().flatten() {
            validate_volume_name(&v.name)?;
        }
        self.record_read_only_claims(&Self::read_only_claims(pod))?;
        for v in volumes.into_iter().flatten() {
            let path = self.sync_volume(pod, v, objects)?;
            out.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    /// Volumes kubelet always mounts read-only: claims with `readOnly: true` (configMap, secret,
    /// downwardAPI and projected volumes are read-only too; `container_mounts` knows them by
    /// their directory).
    pub fn read_only_claims(pod: &Pod) -> BTreeSet<String> {
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        volumes
            .into_iter()
            .flatten()
            .filter(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .and_then(|c| c.read_only)
                    .unwrap_or(false)
            })
            .map(|v| v.name.clone())
            .collect()
    }

    /// Persists the read-only claim volumes (`<dir>/read-only-volumes`, one name a line) so that
    /// `container_mounts`, which sees only host paths, honours them.
    fn record_read_only_claims(&self, names: &BTreeSet<String>) -> Result<(), VolumeError> {
        let path = self.dir.join(READ_ONLY_FILE);
        let want: String = names.iter().map(|n| format!("{n}\n")).collect();
        let have = match fs::read_to_string(&path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if names.is_empty() {
            if have.is_some() {
                fs::remove_file(&path)?;
            }
            return Ok(());
        }
        if have.as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!("{READ_ONLY_FILE}.tmp"));
        fs::write(&tmp, want)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Whether a volume's mounts are forced read-only, as kubelet's plugins' `ReadOnly`
    /// attribute does.
    fn forced_read_only(&self, name: &str, path: &Path) -> Result<bool, VolumeError> {
        let atomic = [
            CONFIG_MAP_PLUGIN,
            SECRET_PLUGIN,
            DOWNWARD_API_PLUGIN,
            PROJECTED_PLUGIN,
        ];
        if atomic.iter().any(|p| path.starts_with(self.dir.join(p))) {
            return Ok(true);
        }
        match fs::read_to_string(self.dir.join(READ_ONLY_FILE)) {
            Ok(s) => Ok(s.lines().any(|l| l == name)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn sync_volume(
        &self,
        pod: &Pod,
        v: &Volume,
        objects: &VolumeObjects,
    ) -> Result<PathBuf, VolumeError> {
        if let Some(ed) = &v.empty_dir {
            let dir = self.dir.join(EMPTY_DIR_PLUGIN).join(&v.name);
            let medium = ed.medium.as_deref().unwrap_or_default();
            let size = match &ed.size_limit {
                Some(q) => Some(
                    Quantity::parse(&q.0)
                        .map_err(VolumeError::Invalid)?
                        .scaled(0),
                ),
                None => None,
            };
            match medium {
                "" => {
                    self.volume_dir(&dir)?;
                }
                "Memory" => {
                    self.volume_dir(&dir)?;
                    if !mount::is_mount_point(&dir)? {
                        mount::mount_tmpfs(&dir, size)?;
                    }
                }
                m if m.starts_with("HugePages") => {
                    return Err(VolumeError::Invalid(format!(
                        "emptyDir medium {m} is not supported"
                    )));
                }
                m => {
                    return Err(VolumeError::Invalid(format!(
                        "unknown storage medium {m:?}"
                    )));
                }
            }
            return Ok(dir);
        }
        if let Some(hp) = &v.host_path {
            return check_host_path(&hp.path, hp.type_.as_deref());
        }
        if let Some(src) = &v.config_map {
            let optional = src.optional.unwrap_or(false);
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            let payload = match objects.config_maps.get(&src.name) {
                Some(cm) => render::config_map_payload(cm, src.items.as_deref(), mode, optional)?,
                None if optional => Payload::new(),
                None => {
                    return Err(VolumeError::Missing(format!(
                        "configmap {:?} not found",
                        src.name
                    )));
                }
            };
            return self.write_atomic(CONFIG_MAP_PLUGIN, &v.name, false, &payload);
        }
        if let Some(src) = &v.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let optional = src.optional.unwrap_or(false);
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            let payload = match objects.secrets.get(&name) {
                Some(s) => render::secret_payload(s, src.items.as_deref(), mode, optional)?,
                None if optional => Payload::new(),
                None => return Err(VolumeError::Missing(format!("secret {name:?} not found"))),
            };
            return self.write_atomic(SECRET_PLUGIN, &v.name, true, &payload);
        }
        if let Some(src) = &v.downward_api {
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            let items = src.items.as_deref().unwrap_or_default();
            let payload = render::downward_api_payload(pod, items, mode)?;
            return self.write_atomic(DOWNWARD_API_PLUGIN, &v.name, true, &payload);
        }
        if let Some(src) = &v.projected {
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            for s in src.sources.iter().flatten() {
                if let Some(p) = &s.config_map {
                    let optional = p.optional.unwrap_or(false);
                    match objects.config_maps.get(&p.name) {
                        Some(cm) => payload.extend(render::config_map_payload(
                            cm,
                            p.items.as_deref(),
                            mode,
                            optional,
                        )?),
                        None if optional => {}
                        None => {
                            return Err(VolumeError::Missing(format!(
                                "configmap {:?} not found",
                                p.name
                            )));
                        }
                    }
                }
                if let Some(p) = &s.secret {
                    let optional = p.optional.unwrap_or(false);
                    match objects.secrets.get(&p.name) {
                        Some(secret) => payload.extend(render::secret_payload(
                            secret,
                            p.items.as_deref(),
                            mode,
                            optional,
                        )?),
                        None if optional => {}
                        None => {
                            return Err(VolumeError::Missing(format!(
                                "secret {:?} not found",
                                p.name
                            )));
                        }
                    }
                }
                if let Some(p) = &s.downward_api {
                    let items = p.items.as_deref().unwrap_or_default();
                    payload.extend(render::downward_api_payload(pod, items, mode)?);
                }
                if let Some(t) = &s.service_account_token {
                    tracing::debug!(
                        volume = %v.name,
                        path = %t.path,
                        "skipping serviceAccountToken projection: no token API yet"
                    );
                }
                if s.cluster_trust_bundle.is_some() {
                    tracing::debug!(volume = %v.name, "skipping clusterTrustBundle projection");
                }
            }
            return self.write_atomic(PROJECTED_PLUGIN, &v.name, true, &payload);
        }
        if let Some(src) = &v.persistent_volume_claim {
            return claim_path(&src.claim_name, objects);
        }
        if v.ephemeral.is_some() {
            return claim_path(&ephemeral_claim_name(pod, &v.name), objects);
        }
        Err(VolumeError::Invalid(format!(
            "unsupported volume type: {}",
            volume_kind(v)
        )))
    }

    /// Creates a volume directory (parents 0750, the directory itself 0777 like kubelet's
    /// emptyDir) if missing.
    fn volume_dir(&self, dir: &Path) -> Result<(), VolumeError> {
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)?;
        }
        match fs::DirBuilder::new().mode(0o777).create(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(dir)?.is_dir() {
                    return Err(VolumeError::Invalid(format!(
                        "{} exists and is not a directory",
                        dir.display()
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Sets up `<plugin>/<name>` (a tmpfs when `memory` and we may mount, like kubelet's
    /// memory-medium wrapper) and writes `payload` into it atomically.
    fn write_atomic(
        &self,
        plugin: &str,
        name: &str,
        memory: bool,
        payload: &Payload,
    ) -> Result<PathBuf, VolumeError> {
        let dir = self.dir.join(plugin).join(name);
        self.volume_dir(&dir)?;
        // SAFETY: geteuid has no preconditions.
        if memory
            && unsafe { libc::geteuid() } == 0
            && !mount::is_mount_point(&dir)?
            && let Err(e) = mount::mount_tmpfs(&dir, None)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot mount tmpfs; using disk");
        }
        atomic_writer::write(&dir, payload)?;
        Ok(dir)
    }

    /// The bind mounts of a container's `volumeMounts`, given `sync`'s result.
    pub fn container_mounts(
        &self,
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<BindMount>, VolumeError> {
        let mut mounts = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let base = volumes.get(&m.name).ok_or_else(|| {
                VolumeError::Invalid(format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    m.name, container.name
                ))
            })?;
            let sub_path = match (m.sub_path.as_deref(), m.sub_path_expr.as_deref()) {
                (Some(s), _) if !s.is_empty() => Some(s.to_string()),
                (_, Some(e)) if !e.is_empty() => Some(expand_sub_path_expr(e, container)?),
                _ => None,
            };
            let source = match sub_path {
                Some(sub) if !sub.is_empty() => {
                    prepare_sub_path(base, &sub, &m.name, &container.name)?
                }
                _ => base.clone(),
            };
            mounts.push(BindMount {
                source,
                destination: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false) || self.forced_read_only(&m.name, base)?,
            });
        }
        Ok(mounts)
    }

    /// Unmounts the pod's tmpfs volumes and removes its volumes directory. Refuses (without
    /// deleting anything) when something is still mounted below it.
    pub fn teardown(&self) -> Result<(), VolumeError> {
        match fs::symlink_metadata(&self.dir) {
            Ok(md) if md.file_type().is_symlink() => return Ok(fs::remove_file(&self.dir)?),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let real = match fs::canonicalize(&self.dir) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for m in mount::mounts_under(&real)? {
            if let Err(e) = mount::unmount(&m) {
                tracing::warn!(mount = %m.display(), error = %e, "unmount failed");
            }
        }
        let left = mount::mounts_under(&real)?;
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
            return Err(VolumeError::Invalid(format!(
                "refusing to remove {}: still mounted: {}",
                real.display(),
                list.join(", ")
            )));
        }
        let dev = fs::symlink_metadata(&real)?.dev();
        mount::remove_tree(&real, dev)
    }
}

/// A volume name is one path segment.
fn validate_volume_name(name: &str) -> Result<(), VolumeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(VolumeError::Invalid(format!(
            "invalid volume name {name:?}"
        )));
    }
    Ok(())
}

/// The source field set on a volume, by its API name (`nfs`, `csi`, ...).
fn volume_kind(v: &Volume) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|val| {
            val.as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
        })
        .unwrap_or_else(|| "none".to_string())
}

/// kubelet's hostPath type check (`checkTypeInternal`); returns the path to bind.
pub fn check_host_path(path: &str, type_: Option<&str>) -> Result<PathBuf, VolumeError> {
    if path.is_empty() || !path.starts_with('/') || path.contains('\0') {
        return Err(VolumeError::Invalid(format!(
            "hostPath path {path:?} must be an absolute path"
        )));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(VolumeError::Invalid(format!(
            "hostPath path {path:?} must not contain '..'"
        )));
    }
    let p = PathBuf::from(path);
    let failed = |what: &str| {
        Err(VolumeError::Invalid(format!(
            "hostPath type check failed: {path} is not {what}"
        )))
    };
    let stat = || match fs::metadata(&p) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VolumeError::from(e)),
    };
    match type_.unwrap_or_default() {
        "" => {}
        t @ ("DirectoryOrCreate" | "Directory") => match stat()? {
            None if t == "DirectoryOrCreate" => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&p)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            }
            Some(md) if md.is_dir() => {}
            _ => return failed("a directory"),
        },
        t @ ("FileOrCreate" | "File") => match stat()? {
            None if t == "FileOrCreate" => {
                match fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&p)
                {
                    Ok(_) => fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(md) if md.is_file() => {}
            _ => return failed("a file"),
        },
        "Socket" => {
            if !stat()?.is_some_and(|md| md.file_type().is_socket()) {
                return failed("a socket file");
            }
        }
        "CharDevice" => {
            if !stat()?.is_some_and(|md| md.file_type().is_char_device()) {
                return failed("a character device");
            }
        }
        "BlockDevice" => {
            if !stat()?.is_some_and(|md| md.file_type().is_block_device()) {
                return failed("a block device");
            }
        }
        t => {
            return Err(VolumeError::Invalid(format!(
                "{t} is an invalid volume type"
            )));
        }
    }
    Ok(p)
}

/// The host path of the PV bound to `claim`: its hostPath (type honoured, default
/// DirectoryOrCreate) or local path (created if missing).
fn claim_path(claim: &str, objects: &VolumeObjects) -> Result<PathBuf, VolumeError> {
    let pv = objects.claims.get(claim).ok_or_else(|| {
        VolumeError::Missing(format!("persistentvolumeclaim {claim:?} not bound"))
    })?;
    let spec = pv.spec.as_ref();
    if let Some(hp) = spec.and_then(|s| s.host_path.as_ref()) {
        return check_host_path(
            &hp.path,
            Some(hp.type_.as_deref().unwrap_or("DirectoryOrCreate")),
        );
    }
    if let Some(local) = spec.and_then(|s| s.local.as_ref()) {
        return check_host_path(&local.path, Some("DirectoryOrCreate"));
    }
    Err(VolumeError::Invalid(format!(
        "unsupported volume source for PV {}",
        pv.metadata.name.as_deref().unwrap_or_default()
    )))
}

/// kubelet's `ExpandContainerVolumeMounts` over the container's plain `env` values: `$(VAR)`
/// expands, `$$` is a literal `$`; a variable that is unset or empty is an error.
pub fn expand_sub_path_expr(expr: &str, container: &Container) -> Result<String, VolumeError> {
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    for e in container.env.iter().flatten() {
        if e.value_from.is_none() {
            env.insert(e.name.as_str(), e.value.as_deref().unwrap_or_default());
        }
    }
    let mut missing = BTreeSet::new();
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.get(name) {
                        Some(v) if !v.is_empty() => out.push_str(v),
                        _ => {
                            missing.insert(name.to_string());
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if !missing.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "missing value for {}",
            missing.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

/// kubelet's subPath preparation: relative, no `..`, created (with the volume's mode) when
/// missing, and never resolving outside the volume through a symlink. Returns the resolved path.
fn prepare_sub_path(
    base: &Path,
    sub: &str,
    mount_name: &str,
    container: &str,
) -> Result<PathBuf, VolumeError> {
    if sub.starts_with('/') {
        return Err(VolumeError::Invalid(format!(
            "error SubPath `{sub}` must not be an absolute path"
        )));
    }
    if sub.split('/').any(|c| c == "..") {
        return Err(VolumeError::Invalid(format!(
            "unable to provision SubPath `{sub}`: must not contain '..'"
        )));
    }
    let base_real = fs::canonicalize(base)?;
    let mode = fs::metadata(&base_real)?.permissions().mode() & 0o7777;
    let mut cur = base_real.clone();
    for comp in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let next = cur.join(comp);
        match fs::symlink_metadata(&next) {
            Ok(_) => {
                let real = fs::canonicalize(&next)?;
                if !real.starts_with(&base_real) {
                    return Err(VolumeError::Invalid(format!(
                        "subpath {:?} not within volume path {:?}",
                        real.display().to_string(),
                        base_real.display().to_string()
                    )));
                }
                cur = real;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let created = fs::DirBuilder::new()
                    .mode(mode)
                    .create(&next)
                    .and_then(|()| fs::set_permissions(&next, fs::Permissions::from_mode(mode)));
                if let Err(e) = created {
                    tracing::error!(error = %e, path = %next.display(), "creating subPath directory");
                    return Err(VolumeError::Invalid(format!(
                        "failed to create subPath directory for volumeMount {mount_name:?} of container {container:?}"
                    )));
                }
                cur = next;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cur)
}
