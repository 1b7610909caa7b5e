//! A container's OCI runtime spec (`config.json`) from the pod, the container, the image's
//! config and the mounts the volume layer prepared: kubelet's and containerd's CRI plugin's
//! rules for the process (command/args over entrypoint/cmd, env merge, user), resources to
//! cgroup settings, Docker's default capabilities, and the pod's shared network namespace.
//! Pure: no IO but reading the rootfs's `/etc/passwd` to resolve a user name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use crate::image::ImageConfig;
use crate::volumes::BindMount;

/// Annotations recording which pod and container a runc container belongs to (CRI's names).
pub const ANNOTATION_POD_UID: &str = "io.kubernetes.pod.uid";
pub const ANNOTATION_POD_NAME: &str = "io.kubernetes.pod.name";
pub const ANNOTATION_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// Default `PATH` when neither the image nor the pod sets one (containerd's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's and containerd's default capability set.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Everything a container's spec is made from.
pub struct ContainerSpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    /// Environment with `valueFrom` already resolved by the caller, in the container's order.
    pub env: Vec<(String, String)>,
    pub image: &'a ImageConfig,
    /// The container's mounted rootfs.
    pub rootfs: &'a Path,
    /// Absolute `linux.cgroupsPath`.
    pub cgroups_path: String,
    /// The pod's network namespace; `None` for `hostNetwork` pods.
    pub netns: Option<&'a Path>,
    /// Volume mounts, then the pod's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub mounts: Vec<BindMount>,
    pub restart_count: u32,
}

/// Why a spec could not be made (kubelet reports these as `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Config(String),
    #[error("oci spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// The process's argv: `command` replaces the image's Entrypoint, `args` its Cmd; `command`
/// without `args` drops the image's Cmd.
pub fn argv(container: &Container, image: &ImageConfig) -> Vec<String> {
    let entrypoint = match &container.command {
        Some(command) if !command.is_empty() => command.clone(),
        _ => image.entrypoint.clone().unwrap_or_default(),
    };
    let command_given = container.command.as_ref().is_some_and(|c| !c.is_empty());
    let args = match &container.args {
        Some(args) if !args.is_empty() => args.clone(),
        _ if command_given => Vec::new(),
        _ => image.cmd.clone().unwrap_or_default(),
    };
    entrypoint.into_iter().chain(args).collect()
}

/// The environment: the image's, then the container's (container wins), `PATH` always set.
pub fn environment(image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut put = |name: &str, value: &str| {
        if !values.contains_key(name) {
            order.push(name.to_string());
        }
        values.insert(name.to_string(), value.to_string());
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        put(name, value);
    }
    for (name, value) in env {
        put(name, value);
    }
    if !values.contains_key("PATH") {
        let (name, value) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        order.push(name.to_string());
        values.insert(name.to_string(), value.to_string());
    }
    order
        .into_iter()
        .map(|name| {
            let value = values.get(&name).cloned().unwrap_or_default();
            format!("{name}={value}")
        })
        .collect()
}

/// uid and gid: `runAsUser`/`runAsGroup` (container, then pod), else the image's `User`
/// (`uid[:gid]` or a name from the rootfs's /etc/passwd and /etc/group).
pub fn user(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<(u32, u32), SpecError> {
    let ctx = container.security_context.as_ref();
    let pod_ctx = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let run_as_user = ctx
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_ctx.and_then(|c| c.run_as_user));
    let run_as_group = ctx
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_ctx.and_then(|c| c.run_as_group));
    let (mut uid, mut gid) = (0u32, 0u32);
    let image_user = image
        .user
        .as_deref()
        .filter(|u| !u.is_empty() && run_as_user.is_none());
    if let Some(image_user) = image_user {
        let (u, g) = image_user
            .split_once(':')
            .map_or((image_user, None), |(u, g)| (u, Some(g)));
        match u.parse::<u32>() {
            Ok(n) => {
                uid = n;
                gid = passwd_lookup(rootfs, |_, id| id == n).map_or(0, |(_, gid)| gid);
            }
            Err(_) => {
                let (found_uid, found_gid) = passwd_lookup(rootfs, |name, _| name == u)
                    .ok_or_else(|| {
                        SpecError::Config(format!(
                            "unable to find user {u}: no matching entries in passwd file"
                        ))
                    })?;
                uid = found_uid;
                gid = found_gid;
            }
        }
        if let Some(g) = g {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_lookup(rootfs, g).ok_or_else(|| {
                    SpecError::Config(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
            };
        }
    }
    if let Some(u) = run_as_user {
        uid = u32::try_from(u)
            .map_err(|_| SpecError::Config(format!("runAsUser {u} is out of range")))?;
        if run_as_group.is_none() {
            gid = passwd_lookup(rootfs, |_, id| id == uid).map_or(0, |(_, gid)| gid);
        }
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g)
            .map_err(|_| SpecError::Config(format!("runAsGroup {g} is out of range")))?;
    }
    Ok((uid, gid))
}

fn passwd_lookup(rootfs: &Path, matches: impl Fn(&str, u32) -> bool) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?);
        matches(fields.first()?, uid).then_some((uid, gid))
    })
}

fn group_lookup(rootfs: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (*fields.first()? == name).then(|| fields.get(2)?.parse().ok())?
    })
}

/// Builds the spec.
pub fn build(input: &ContainerSpecInput<'_>) -> Result<Spec, SpecError> {
    let container = input.container;
    let pod_meta = &input.pod.metadata;
    let args = argv(container, input.image);
    if args.is_empty() {
        return Err(SpecError::Config("no command specified".into()));
    }
    let (uid, gid) = user(input.pod, container, input.image, input.rootfs)?;
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| input.image.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());

    let capabilities = capabilities(container);
    let ctx = container.security_context.as_ref();
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(environment(input.image, &input.env))
        .cwd(PathBuf::from(cwd))
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .build()?,
        )
        .no_new_privileges(
            !ctx.and_then(|c| c.allow_privilege_escalation)
                .unwrap_or(true),
        )
        .build()?;

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=1777".to_string(),
            ])
            .build()?,
    );
    for bind in &input.mounts {
        let mode = if bind.read_only { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(&bind.destination))
                .typ("bind")
                .source(bind.source.clone())
                .options(vec![
                    "rbind".to_string(),
                    "rprivate".to_string(),
                    mode.to_string(),
                ])
                .build()?,
        );
    }

    let mut namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<_, _>>()?;
    if let Some(netns) = input.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns.to_path_buf())
                .build()?,
        );
    } else {
        // hostNetwork: the host's network and UTS namespaces, as kubelet gives them.
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Uts);
    }

    let resources = resources(container)?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()?;

    let mut annotations = HashMap::new();
    let uid_annotation = pod_meta.uid.clone().unwrap_or_default();
    annotations.insert(ANNOTATION_POD_UID.to_string(), uid_annotation);
    annotations.insert(
        ANNOTATION_POD_NAME.to_string(),
        pod_meta.name.clone().unwrap_or_default(),
    );
    annotations.insert(
        ANNOTATION_POD_NAMESPACE.to_string(),
        pod_meta.namespace.clone().unwrap_or_default(),
    );
    annotations.insert(
        ANNOTATION_CONTAINER_NAME.to_string(),
        container.name.clone(),
    );
    annotations.insert(
        ANNOTATION_RESTART_COUNT.to_string(),
        input.restart_count.to_string(),
    );

    let read_only_root = ctx
        .and_then(|c| c.read_only_root_filesystem)
        .unwrap_or(false);
    let mut builder = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(input.rootfs.to_path_buf())
                .readonly(read_only_root)
                .build()?,
        )
        .mounts(mounts)
        .process(process)
        .annotations(annotations)
        .linux(linux);
    if input.netns.is_some() {
        builder = builder.hostname(hostname(input.pod));
    }
    Ok(builder.build()?)
}

/// The pod's hostname: `spec.hostname`, else its name (truncated to 63 as kubelet does).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

fn capabilities(container: &Container) -> std::collections::HashSet<Capability> {
    let mut caps: std::collections::HashSet<Capability> =
        DEFAULT_CAPABILITIES.into_iter().collect();
    let Some(ctx) = container
        .security_context
        .as_ref()
        .and_then(|c| c.capabilities.as_ref())
    else {
        return caps;
    };
    let parse = |name: &str| -> Option<Capability> {
        let name = name.trim().to_ascii_uppercase();
        let full = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        serde_json::from_value(serde_json::Value::String(full)).ok()
    };
    for name in ctx.drop.iter().flatten() {
        if name.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else if let Some(cap) = parse(name) {
            caps.remove(&cap);
        }
    }
    for name in ctx.add.iter().flatten() {
        if let Some(cap) = parse(name) {
            caps.insert(cap);
        }
    }
    caps
}

/// Limits to cgroup settings as kubelet maps them: memory limit (swap the same: no swap), cpu
/// request to shares (min 2), cpu limit to a CFS quota over a 100 ms period.
pub fn resources(container: &Container) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let resources = container.resources.as_ref();
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let mut builder = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if let Some(memory) = limits.and_then(|l| l.get("memory")) {
        let bytes = quantity_bytes(&memory.0)?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    let cpu_request = requests
        .and_then(|r| r.get("cpu"))
        .or_else(|| limits.and_then(|l| l.get("cpu")))
        .map(|q| quantity_millis(&q.0))
        .transpose()?;
    let cpu_limit = limits
        .and_then(|l| l.get("cpu"))
        .map(|q| quantity_millis(&q.0))
        .transpose()?;
    let mut cpu = LinuxCpuBuilder::default();
    cpu = cpu.shares(cpu_shares(cpu_request));
    if let Some(limit) = cpu_limit {
        cpu = cpu.quota(cpu_quota(limit)).period(100_000u64);
    }
    builder = builder.cpu(cpu.build()?);
    builder = builder.pids(LinuxPidsBuilder::default().limit(POD_PIDS_LIMIT).build()?);
    Ok(builder.build()?)
}

fn quantity_bytes(text: &str) -> Result<u64, SpecError> {
    skiff_client::quantity::whole_units(text)
        .ok_or_else(|| SpecError::Config(format!("invalid quantity {text:?}")))
}

fn quantity_millis(text: &str) -> Result<u64, SpecError> {
    skiff_client::quantity::milli_units(text)
        .ok_or_else(|| SpecError::Config(format!("invalid quantity {text:?}")))
}

/// Per-container pids cap (kubelet's `--pod-max-pids` idea, always on here).
pub const POD_PIDS_LIMIT: i64 = 4096;

/// kubelet's `MilliCPUToShares`: 2 for no request.
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    match request_millis {
        None | Some(0) => 2,
        Some(m) => (m * 1024 / 1000).max(2),
    }
}

/// kubelet's `MilliCPUToQuota` over a 100 ms period (minimum 1 ms).
pub fn cpu_quota(limit_millis: u64) -> i64 {
    let quota = limit_millis.saturating_mul(100_000) / 1000;
    i64::try_from(quota.max(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
