//! The cluster under test: one real store process per node slot, each in its own namespace.
//!
//! A member is a `skiff store` process (`--target skiff`) or Debian's `etcd` (`--target etcd`,
//! the control): both take etcd's flags, so [`node_args`] builds one command line for either.
//! The process is started as `ip netns exec <ns> <binary> <args>`: `ip` execs the binary in place,
//! so the PID we hold is the store's own (chaos.md §0.4), and kill/pause signal exactly it.
//!
//! [`ClusterSpec::binary`], [`ClusterSpec::extra_args`] and [`ClusterSpec::extra_env`] are the
//! hooks for running a differently built store (e.g. one with test-only bug switches) later.
//!
//! Output of every start goes to `nodes/<n>/stdout` and `nodes/<n>/stderr` of the run directory
//! (appended across restarts, each start marked).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::cluster_client::ClusterClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberRemoveRequest, StatusRequest, StatusResponse,
};

use crate::client::{channel, peer_url, timed};
use crate::net::Topology;

/// Where libfaketime lives on Debian (package `libfaketime`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Which store runs on the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `skiff store`.
    Skiff,
    /// Real etcd (Debian `etcd-server`), the control.
    Etcd,
}

impl Target {
    /// `skiff` or `etcd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Skiff => "skiff",
            Target::Etcd => "etcd",
        }
    }
}

/// How to start the members.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Store implementation.
    pub target: Target,
    /// The binary (`skiff` or `etcd`).
    pub binary: PathBuf,
    /// Initial members (slots 1..=nodes).
    pub nodes: usize,
    /// Cluster token.
    pub token: String,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// Start members under libfaketime (wall clock only) so the clock nemesis can skew them.
    pub faketime: bool,
    /// Extra arguments appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Extra environment of every member.
    pub extra_env: Vec<(String, String)>,
}

/// Node name of slot `slot`.
pub fn node_name(slot: usize) -> String {
    format!("n{slot}")
}

/// The command line (after the binary) of a member.
///
/// `initial_cluster` lists `name=peer-url` for the members the new one should know;
/// `existing` selects `--initial-cluster-state existing` (joining a running cluster).
pub fn node_args(
    spec: &ClusterSpec,
    slot: usize,
    data_dir: &Path,
    initial_cluster: &[(String, String)],
    existing: bool,
) -> Vec<String> {
    let client = crate::client::client_url(slot);
    let peer = peer_url(slot);
    let cluster = initial_cluster
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = Vec::new();
    if spec.target == Target::Skiff {
        args.push("store".into());
    }
    let mut flag = |k: &str, v: String| {
        args.push(format!("--{k}"));
        args.push(v);
    };
    flag("name", node_name(slot));
    flag("data-dir", data_dir.display().to_string());
    flag("listen-client-urls", client.clone());
    flag("advertise-client-urls", client);
    flag("listen-peer-urls", peer.clone());
    flag("initial-advertise-peer-urls", peer);
    flag("initial-cluster", cluster);
    flag("initial-cluster-token", spec.token.clone());
    flag(
        "initial-cluster-state",
        if existing { "existing" } else { "new" }.into(),
    );
    flag("heartbeat-interval", spec.heartbeat_ms.to_string());
    flag("election-timeout", spec.election_ms.to_string());
    flag("snapshot-count", spec.snapshot_count.to_string());
    if spec.target == Target::Etcd {
        flag("logger", "zap".into());
    }
    args.extend(spec.extra_args.iter().cloned());
    args
}

/// What the harness knows about one node slot.
#[derive(Debug)]
struct Slot {
    child: Option<Child>,
    paused: bool,
    /// In the cluster's membership (as far as the harness knows).
    member: bool,
    /// Member id, once learned.
    id: Option<u64>,
    starts: u32,
    /// Extra environment of this slot only (e.g. `FAILPOINTS` while a failpoint fault holds).
    env: Vec<(String, String)>,
    /// An exit on its own is expected (a failpoint may crash it): not reported by [`Cluster::reap`].
    expect_exit: bool,
    /// Joined a running cluster (restarts use `--initial-cluster-state existing`).
    joined: bool,
    /// How its process last exited on its own (cleared at every start).
    last_exit: Option<String>,
}

/// An unexpected process exit.
#[derive(Clone, Debug)]
pub struct Exit {
    /// The slot.
    pub slot: usize,
    /// The exit status.
    pub status: String,
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// How members are started.
    pub spec: ClusterSpec,
    /// Network namespaces.
    pub topology: Topology,
    data_root: PathBuf,
    log_root: PathBuf,
    slots: Mutex<Vec<Slot>>,
}

impl Cluster {
    /// A cluster of `spec.nodes` members on `topology` (not started). Data directories go under
    /// `data_root`, logs under `log_root/<name>/`.
    pub fn new(spec: ClusterSpec, topology: Topology, data_root: &Path, log_root: &Path) -> Self {
        let slots = (0..topology.slots)
            .map(|i| Slot {
                child: None,
                paused: false,
                member: i < spec.nodes,
                id: None,
                starts: 0,
                env: Vec::new(),
                expect_exit: false,
                joined: false,
                last_exit: None,
            })
            .collect();
        Cluster {
            spec,
            topology,
            data_root: data_root.to_path_buf(),
            log_root: log_root.to_path_buf(),
            slots: Mutex::new(slots),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Data directory of a slot.
    pub fn data_dir(&self, slot: usize) -> PathBuf {
        self.data_root.join(node_name(slot))
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.topology.slots
    }

    /// Slots currently in the membership (as the harness knows it).
    pub fn members(&self) -> Vec<usize> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.member)
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Member slots whose process runs and is not paused.
    pub fn live(&self) -> Vec<usize> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.member && s.child.is_some() && !s.paused)
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Whether slot's process is running.
    pub fn running(&self, slot: usize) -> bool {
        self.lock()[slot - 1].child.is_some()
    }

    /// Starts every initial member (`--initial-cluster-state new`).
    pub fn start_all(&self) -> std::io::Result<()> {
        let initial: Vec<(String, String)> = (1..=self.spec.nodes)
            .map(|s| (node_name(s), peer_url(s)))
            .collect();
        for slot in 1..=self.spec.nodes {
            std::fs::create_dir_all(self.data_dir(slot))?;
            self.spawn(slot, &initial, false)?;
        }
        Ok(())
    }

    fn spawn(
        &self,
        slot: usize,
        initial: &[(String, String)],
        existing: bool,
    ) -> std::io::Result<()> {
        let mut slots = self.lock();
        if slots[slot - 1].child.is_some() {
            return Ok(());
        }
        let dir = self.log_root.join(node_name(slot));
        std::fs::create_dir_all(&dir)?;
        let open = |name: &str| -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))?;
            writeln!(
                f,
                "===== skiff-chaos: start #{} of {} =====",
                slots[slot - 1].starts + 1,
                node_name(slot)
            )?;
            Ok(f)
        };
        let (stdout, stderr) = (open("stdout")?, open("stderr")?);
        let args = node_args(&self.spec, slot, &self.data_dir(slot), initial, existing);
        let mut cmd = Command::new("ip");
        // Own process group: a terminal's Ctrl-C reaches the harness, which stops the members.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(["netns", "exec", &self.topology.node_ns(slot)])
            .arg(&self.spec.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        cmd.env("NO_COLOR", "1");
        for (k, v) in self.spec.extra_env.iter().chain(&slots[slot - 1].env) {
            cmd.env(k, v);
        }
        if self.spec.faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_TIMESTAMP_FILE", self.skew_file(slot));
            write_skew(&self.skew_file(slot), "+0")?;
        }
        let child = cmd.spawn()?;
        let s = &mut slots[slot - 1];
        s.child = Some(child);
        s.paused = false;
        s.starts += 1;
        s.last_exit = None;
        Ok(())
    }

    /// The libfaketime timestamp file of a slot.
    pub fn skew_file(&self, slot: usize) -> PathBuf {
        self.data_root.join(format!("{}.faketime", node_name(slot)))
    }

    /// Sets a slot's wall-clock skew (libfaketime syntax, e.g. `+120` or `-30 x2`).
    pub fn set_skew(&self, slot: usize, spec: &str) -> std::io::Result<()> {
        write_skew(&self.skew_file(slot), spec)
    }

    /// SIGKILLs a slot's process (resuming it first is unnecessary: SIGKILL works on stopped
    /// processes) and reaps it.
    pub fn kill(&self, slot: usize) -> bool {
        let child = {
            let mut slots = self.lock();
            slots[slot - 1].paused = false;
            slots[slot - 1].child.take()
        };
        match child {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// Restarts a killed member from its data directory (same flags as its first start).
    pub fn restart(&self, slot: usize) -> std::io::Result<()> {
        let existing = self.lock()[slot - 1].joined;
        let initial = self.initial_cluster_for(slot, existing);
        self.spawn(slot, &initial, existing)
    }

    fn initial_cluster_for(&self, slot: usize, existing: bool) -> Vec<(String, String)> {
        if existing {
            let mut m = self.members();
            if !m.contains(&slot) {
                m.push(slot);
            }
            m.sort_unstable();
            m.into_iter().map(|s| (node_name(s), peer_url(s))).collect()
        } else {
            (1..=self.spec.nodes)
                .map(|s| (node_name(s), peer_url(s)))
                .collect()
        }
    }

    fn signal(&self, slot: usize, sig: i32) -> bool {
        let slots = self.lock();
        match &slots[slot - 1].child {
            Some(c) => {
                // SAFETY: kill(2) on the PID of our own, not yet reaped, child.
                unsafe { libc::kill(c.id() as i32, sig) == 0 }
            }
            None => false,
        }
    }

    /// SIGSTOPs a slot.
    pub fn pause(&self, slot: usize) -> bool {
        let ok = self.signal(slot, libc::SIGSTOP);
        if ok {
            self.lock()[slot - 1].paused = true;
        }
        ok
    }

    /// SIGCONTs a slot.
    pub fn resume(&self, slot: usize) -> bool {
        let ok = self.signal(slot, libc::SIGCONT);
        self.lock()[slot - 1].paused = false;
        ok
    }

    /// Whether a slot is paused.
    pub fn paused(&self, slot: usize) -> bool {
        self.lock()[slot - 1].paused
    }

    /// Reaps processes that exited on their own (not killed by the harness); returns those of
    /// members (a slot being removed may exit by itself).
    pub fn reap(&self) -> Vec<Exit> {
        let mut exits = Vec::new();
        let mut slots = self.lock();
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(c) = &mut s.child
                && let Ok(Some(status)) = c.try_wait()
            {
                // A member being removed may stop by itself: expected, not a crash.
                if s.member && !s.expect_exit {
                    exits.push(Exit {
                        slot: i + 1,
                        status: status.to_string(),
                    });
                }
                s.last_exit = Some(status.to_string());
                s.child = None;
                s.paused = false;
            }
        }
        exits
    }

    /// How a slot's process exited on its own since its latest start (reaping it if it just
    /// did; the monitor may have reaped it first), `None` while it runs.
    pub fn poll_exit(&self, slot: usize) -> Option<String> {
        let mut slots = self.lock();
        let s = &mut slots[slot - 1];
        if let Some(c) = &mut s.child
            && let Ok(Some(status)) = c.try_wait()
        {
            s.last_exit = Some(status.to_string());
            s.child = None;
            s.paused = false;
        }
        if s.child.is_some() {
            None
        } else {
            s.last_exit.clone()
        }
    }

    /// Kills every process (e.g. at the end of the run).
    pub fn kill_all(&self) {
        for slot in 1..=self.slot_count() {
            self.kill(slot);
        }
    }

    /// Sets the extra environment of one slot (used from its next start).
    pub fn set_slot_env(&self, slot: usize, env: Vec<(String, String)>) {
        self.lock()[slot - 1].env = env;
    }

    /// Whether a slot has extra environment of its own.
    pub fn has_slot_env(&self, slot: usize) -> bool {
        !self.lock()[slot - 1].env.is_empty()
    }

    /// Marks whether a slot may exit on its own without that being a crash.
    pub fn set_expect_exit(&self, slot: usize, expect: bool) {
        self.lock()[slot - 1].expect_exit = expect;
    }

    /// Whether the slot's stdout or stderr contains `pattern` (after its latest start marker).
    pub fn log_contains(&self, slot: usize, pattern: &str) -> bool {
        let dir = self.log_root.join(node_name(slot));
        ["stdout", "stderr"].iter().any(|f| {
            std::fs::read_to_string(dir.join(f)).is_ok_and(|text| {
                let last = text.rfind("===== skiff-chaos: start #").unwrap_or(0);
                text[last..].contains(pattern)
            })
        })
    }

    /// The slot's stdout and stderr since its latest start.
    pub fn log_since_start(&self, slot: usize) -> String {
        let dir = self.log_root.join(node_name(slot));
        ["stdout", "stderr"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .map(|text| {
                let last = text.rfind("===== skiff-chaos: start #").unwrap_or(0);
                text[last..].to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Records membership as the harness now knows it.
    pub fn set_member(&self, slot: usize, member: bool) {
        self.lock()[slot - 1].member = member;
    }

    /// The member id of a slot, once known.
    pub fn id(&self, slot: usize) -> Option<u64> {
        self.lock()[slot - 1].id
    }

    /// The slot with member id `id`.
    pub fn slot_of_id(&self, id: u64) -> Option<usize> {
        self.lock()
            .iter()
            .position(|s| s.id == Some(id))
            .map(|i| i + 1)
    }

    fn set_id(&self, slot: usize, id: u64) {
        self.lock()[slot - 1].id = Some(id);
    }

    /// Asks every live member for its status; returns `slot -> (own id, leader id, raft index)`
    /// for those that answered within `timeout`, learning member ids on the way.
    pub async fn statuses(&self, timeout: Duration) -> BTreeMap<usize, (u64, u64, u64)> {
        let live = self.live();
        let calls = live.iter().map(|&slot| async move {
            let mut c = MaintenanceClient::new(channel(slot));
            let r = timed(timeout, async { c.status(StatusRequest {}).await }).await;
            (slot, r)
        });
        let mut out = BTreeMap::new();
        for (slot, r) in futures::future::join_all(calls).await {
            if let Ok(resp) = r {
                let s = resp.into_inner();
                let id = s.header.map(|h| h.member_id).unwrap_or(0);
                if id != 0 {
                    self.set_id(slot, id);
                }
                out.insert(slot, (id, s.leader, s.raft_index));
            }
        }
        out
    }

    /// One slot's status, if it answers within `timeout` (learning its member id).
    pub async fn status_of(&self, slot: usize, timeout: Duration) -> Option<StatusResponse> {
        let mut c = MaintenanceClient::new(channel(slot));
        let s = timed(timeout, async { c.status(StatusRequest {}).await })
            .await
            .ok()?
            .into_inner();
        let id = s.header.as_ref().map(|h| h.member_id).unwrap_or(0);
        if id != 0 {
            self.set_id(slot, id);
        }
        Some(s)
    }

    /// The slot of the leader, when live members agree on one that is itself live.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let statuses = self.statuses(timeout).await;
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, (_, leader, _)) in statuses.iter() {
            if *leader != 0 {
                *votes.entry(*leader).or_default() += 1;
            }
        }
        let (leader, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        let slot = self.slot_of_id(leader)?;
        statuses.contains_key(&slot).then_some(slot)
    }

    /// The membership as some live member reports it: `(id, name, peer URLs)`.
    pub async fn member_list(&self, timeout: Duration) -> Option<Vec<(u64, String, Vec<String>)>> {
        for slot in self.live() {
            let mut c = ClusterClient::new(channel(slot));
            let r = timed(timeout, async {
                c.member_list(MemberListRequest { linearizable: true })
                    .await
            })
            .await;
            if let Ok(resp) = r {
                return Some(
                    resp.into_inner()
                        .members
                        .into_iter()
                        .map(|m| (m.id, m.name, m.peer_ur_ls))
                        .collect(),
                );
            }
        }
        None
    }

    /// Removes slot `slot` from the membership through member `via`; `Ok(true)` = acknowledged.
    pub async fn member_remove(
        &self,
        slot: usize,
        via: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let id = self.id(slot).ok_or("member id unknown")?;
        let mut c = ClusterClient::new(channel(via));
        timed(timeout, async {
            c.member_remove(MemberRemoveRequest { id }).await
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            None => "timeout".to_owned(),
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
        })
    }

    /// Adds slot `slot` back through member `via`; returns the new member id.
    pub async fn member_add(
        &self,
        slot: usize,
        via: usize,
        timeout: Duration,
    ) -> Result<u64, String> {
        let mut c = ClusterClient::new(channel(via));
        let r = timed(timeout, async {
            c.member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url(slot)],
                is_learner: false,
            })
            .await
        })
        .await
        .map_err(|e| match e {
            None => "timeout".to_owned(),
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
        })?;
        let id = r.into_inner().member.map(|m| m.id).unwrap_or(0);
        if id != 0 {
            self.set_id(slot, id);
        }
        Ok(id)
    }

    /// Wipes a slot's data directory (after its process is gone).
    pub fn wipe(&self, slot: usize) -> std::io::Result<()> {
        let dir = self.data_dir(slot);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)
    }

    /// Starts a wiped slot as a new member joining the running cluster.
    pub fn join(&self, slot: usize) -> std::io::Result<()> {
        self.set_member(slot, true);
        self.lock()[slot - 1].joined = true;
        let initial = self.initial_cluster_for(slot, true);
        self.spawn(slot, &initial, true)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn write_skew(path: &Path, spec: &str) -> std::io::Result<()> {
    // Write then rename, so a reader never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{spec}\n"))?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: Target) -> ClusterSpec {
        ClusterSpec {
            target,
            binary: PathBuf::from("/bin/x"),
            nodes: 3,
            token: "t".into(),
            heartbeat_ms: 100,
            election_ms: 1000,
            snapshot_count: 1000,
            faketime: false,
            extra_args: vec!["--extra".into()],
            extra_env: vec![],
        }
    }

    #[test]
    fn command_lines_use_etcd_flags() {
        let initial = vec![
            ("n1".to_owned(), peer_url(1)),
            ("n2".to_owned(), peer_url(2)),
        ];
        let a = node_args(&spec(Target::Skiff), 2, Path::new("/d/n2"), &initial, true);
        assert_eq!(a[0], "store");
        let joined = a.join(" ");
        assert!(joined.contains("--name n2"));
        assert!(joined.contains("--listen-client-urls http://10.77.0.2:2379"));
        assert!(
            joined.contains("--initial-cluster n1=http://10.77.0.1:2380,n2=http://10.77.0.2:2380")
        );
        assert!(joined.contains("--initial-cluster-state existing"));
        assert!(joined.ends_with("--extra"));
        let e = node_args(&spec(Target::Etcd), 1, Path::new("/d/n1"), &initial, false);
        assert_eq!(e[0], "--name");
        assert!(e.join(" ").contains("--initial-cluster-state new"));
        assert!(e.join(" ").contains("--logger zap"));
    }
}
