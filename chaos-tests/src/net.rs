//! Network namespaces for one run: the hosts of the cluster and the wire between them.
//!
//! Layout (chaos.md §3.1), every name carrying the run's unique prefix `skc-<pid>-<tag>-`:
//! - `…-sw`, the *switch* namespace, holds bridge `br0` and the harness's own address
//!   [`CLIENT_IP`] on it. The harness process enters this namespace ([`enter_netns`]) before its
//!   async runtime starts, so every client connection comes from [`CLIENT_IP`]: partitions drop
//!   only node-to-node traffic and clients keep reaching every member, as in Jepsen;
//! - `…-n1` … `…-nN`, one namespace per node slot, with `eth0` = `10.77.0.<slot>/24`, the
//!   other end of a veth pair whose switch-side end (`v<slot>`) is enslaved to `br0`.
//!
//! The veth pairs are created directly between the switch namespace and the node namespaces
//! (`ip -n SW link add … peer … netns NODE`), so the root namespace gets no interface, address,
//! route or rule at all. Addresses exist only inside our namespaces.
//!
//! Cleanup discipline: `ip netns del` does not stop what runs inside, so [`destroy_namespace`]
//! first SIGKILLs every PID `ip netns pids` lists (never our own), waits for them to go, then
//! deletes. Every namespace this process creates is remembered in a process-wide registry that
//! [`cleanup_registered`] tears down (on normal exit, Ctrl-C/SIGTERM and from the panic hook).
//! [`stale_namespaces`] lists namespaces of runs whose harness is gone, for `skiff-chaos cleanup`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prefix of every namespace the suite creates.
pub const PREFIX: &str = "skc-";
/// The harness's (clients') address on the bridge.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// The node slots' addresses are `10.77.0.<slot>`.
const SUBNET: [u8; 3] = [10, 77, 0];
/// At most this many node slots (addresses .1 ... .MAX_SLOTS).
pub const MAX_SLOTS: usize = 9;

/// Errors of the network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `setns` failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Setns {
        /// The namespace.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Async form of [`run`] (for the nemesis, which must not block the runtime).
pub async fn run_async(program: &str, args: &[String]) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs as root (namespaces and iptables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh run id: `<pid>-<4 hex digits>`; the pid lets `cleanup` tell live runs from stale ones.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{:04x}", std::process::id(), (nanos >> 8) & 0xffff)
}

/// The names and addresses of one run's namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The run id.
    pub run: String,
    /// Number of node slots.
    pub slots: usize,
}

impl Topology {
    /// The topology of run `run` with `slots` node slots (1-based slot numbers).
    pub fn new(run: &str, slots: usize) -> Topology {
        assert!((1..=MAX_SLOTS).contains(&slots), "1..={MAX_SLOTS} slots");
        Topology {
            run: run.to_owned(),
            slots,
        }
    }

    /// The switch namespace.
    pub fn switch_ns(&self) -> String {
        format!("{PREFIX}{}-sw", self.run)
    }

    /// Namespace of node slot `slot` (1-based).
    pub fn node_ns(&self, slot: usize) -> String {
        format!("{PREFIX}{}-n{slot}", self.run)
    }

    /// Address of node slot `slot`.
    pub fn node_ip(slot: usize) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], slot as u8)
    }

    /// The slot whose address is `ip`, if any.
    pub fn slot_of_ip(ip: Ipv4Addr) -> Option<usize> {
        let o = ip.octets();
        (o[..3] == SUBNET && (1..=MAX_SLOTS as u8).contains(&o[3])).then_some(o[3] as usize)
    }

    /// Every namespace of the run, switch first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch_ns()];
        v.extend((1..=self.slots).map(|s| self.node_ns(s)));
        v
    }

    /// The `ip` invocations that build the topology, in order (pure, for tests and `--dry-run`).
    pub fn setup_commands(&self) -> Vec<Vec<String>> {
        let sw = self.switch_ns();
        let mut cmds: Vec<Vec<String>> = Vec::new();
        let mut c = |args: &[&str]| cmds.push(args.iter().map(|s| s.to_string()).collect());
        c(&["netns", "add", &sw]);
        c(&["-n", &sw, "link", "set", "lo", "up"]);
        c(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        c(&["-n", &sw, "link", "set", "br0", "up"]);
        let client = format!("{CLIENT_IP}/24");
        c(&["-n", &sw, "addr", "add", &client, "dev", "br0"]);
        for slot in 1..=self.slots {
            let ns = self.node_ns(slot);
            let veth = format!("v{slot}");
            let addr = format!("{}/24", Topology::node_ip(slot));
            c(&["netns", "add", &ns]);
            c(&["-n", &ns, "link", "set", "lo", "up"]);
            c(&[
                "-n", &sw, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            c(&["-n", &sw, "link", "set", &veth, "master", "br0"]);
            c(&["-n", &sw, "link", "set", &veth, "up"]);
            c(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            c(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        cmds
    }

    /// Creates every namespace and link. On failure what was created is torn down again.
    pub fn create(&self) -> Result<(), NetError> {
        for args in self.setup_commands() {
            if args[0] == "netns" && args[1] == "add" {
                register(&args[2]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = run("ip", &refs) {
                self.destroy();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Kills everything left in the run's namespaces and deletes them (idempotent).
    pub fn destroy(&self) {
        // Node namespaces first: the veth pairs go with them.
        let mut names = self.namespaces();
        names.rotate_left(1);
        for ns in names {
            destroy_namespace(&ns);
            unregister(&ns);
        }
    }
}

/// Makes the calling thread (and every thread it starts afterwards) use namespace `name`.
///
/// Call it on the main thread before the async runtime starts its workers.
pub fn enter_netns(name: &str) -> Result<(), NetError> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).map_err(|source| NetError::Setns {
        name: name.to_owned(),
        source,
    })?;
    // SAFETY: the descriptor is valid for the call; CLONE_NEWNET only switches this thread's
    // network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetError::Setns {
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// PIDs of processes in namespace `ns` (empty if it does not exist), never our own.
pub fn pids_in(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in `ns`, waits (≤ 3 s) until none is left, then deletes `ns`.
pub fn destroy_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2) on a PID that `ip netns pids` reported for our namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Every namespace with the suite's prefix.
pub fn suite_namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(PREFIX))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The PID of the harness that owns namespace `ns` (parsed from its name).
pub fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether `pid` is a live `skiff-chaos` process.
pub fn harness_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("skiff-chaos"))
        .unwrap_or(false)
}

/// Namespaces of runs whose harness is no longer running (or all suite namespaces with `all`).
pub fn stale_namespaces(all: bool) -> Vec<String> {
    suite_namespaces()
        .into_iter()
        .filter(|ns| all || !owner_pid(ns).is_some_and(harness_alive))
        .collect()
}

static REGISTRY: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn register(ns: &str) {
    if let Ok(mut r) = REGISTRY.lock()
        && !r.iter().any(|n| n == ns)
    {
        r.push(ns.to_owned());
    }
}

fn unregister(ns: &str) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.retain(|n| n != ns);
    }
}

/// Tears down every namespace this process created and has not deleted yet (idempotent; safe to
/// call from a signal-handling task or the panic hook).
pub fn cleanup_registered() {
    let names: Vec<String> = match REGISTRY.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    // Node namespaces before switch namespaces.
    let (sw, nodes): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|n| n.ends_with("-sw"));
    for ns in nodes.into_iter().chain(sw) {
        destroy_namespace(&ns);
    }
}

/// Installs a panic hook that tears down this process's namespaces before the default report.
pub fn install_panic_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cleanup_registered();
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let t = Topology::new("123-abcd", 3);
        assert_eq!(t.switch_ns(), "skc-123-abcd-sw");
        assert_eq!(t.node_ns(2), "skc-123-abcd-n2");
        assert_eq!(Topology::node_ip(2), Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(Topology::slot_of_ip(Ipv4Addr::new(10, 77, 0, 3)), Some(3));
        assert_eq!(Topology::slot_of_ip(CLIENT_IP), None);
        assert_eq!(owner_pid("skc-123-abcd-n2"), Some(123));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(t.namespaces().len(), 4);
    }

    #[test]
    fn setup_never_touches_the_root_namespace() {
        let t = Topology::new("1-0000", 3);
        let cmds = t.setup_commands();
        for c in &cmds {
            // Either a netns management command or one scoped to one of our namespaces.
            let scoped = c[0] == "-n" && c[1].starts_with(PREFIX);
            let netns = c[0] == "netns" && c[2].starts_with(PREFIX);
            assert!(scoped || netns, "unscoped command: ip {}", c.join(" "));
        }
        let veths: Vec<_> = cmds.iter().filter(|c| c.contains(&"veth".into())).collect();
        assert_eq!(veths.len(), 3);
        assert!(
            veths
                .iter()
                .all(|c| c.last().unwrap().starts_with("skc-1-0000-n"))
        );
    }
}
