//! Server-side accounting from `/proc`: which local processes listen on the benchmarked
//! endpoints, their CPU time (utime + stime) and resident memory, the load generator's own
//! CPU time, and the machine's busy time (to tell how much other processes used meanwhile).
//!
//! Everything here is best effort: on a machine without `/proc`, or for remote endpoints,
//! the functions return nothing and the report leaves the fields out.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Kernel clock ticks per second (`USER_HZ`), the unit of `/proc/PID/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// One local member process serving one or more benchmarked endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: u32,
    /// The endpoints (as given on the command line) this process listens on.
    pub endpoints: Vec<String>,
}

/// Resolve an endpoint (`host:port` or `http://host:port`) to a socket address.
pub fn endpoint_addr(endpoint: &str) -> Option<SocketAddr> {
    let rest = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port.to_socket_addrs().ok()?.next()
}

/// Whether an address belongs to this machine (loopback, unspecified, or one of the
/// addresses a local socket listens on is checked by the caller).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// A listening TCP socket from `/proc/net/tcp{,6}`: local address and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListeningSocket {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// Parse the text of `/proc/net/tcp` or `/proc/net/tcp6`, keeping sockets in LISTEN state.
pub fn parse_proc_net_tcp(text: &str) -> Vec<ListeningSocket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        if fields.len() < 10 || fields[3] != "0A" {
            continue;
        }
        let Some((ip_hex, port_hex)) = fields[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        let ip = match ip_hex.len() {
            8 => match u32::from_str_radix(ip_hex, 16) {
                // The kernel prints the address as a host-order (little-endian) u32.
                Ok(v) => IpAddr::V4(Ipv4Addr::from(v.to_le_bytes())),
                Err(_) => continue,
            },
            32 => {
                let mut bytes = [0u8; 16];
                let mut ok = true;
                for (word, chunk) in ip_hex.as_bytes().chunks(8).enumerate() {
                    match std::str::from_utf8(chunk)
                        .ok()
                        .and_then(|s| u32::from_str_radix(s, 16).ok())
                    {
                        Some(v) => bytes[word * 4..word * 4 + 4].copy_from_slice(&v.to_le_bytes()),
                        None => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => continue,
        };
        let Ok(inode) = fields[9].parse::<u64>() else {
            continue;
        };
        out.push(ListeningSocket {
            addr: SocketAddr::new(ip, port),
            inode,
        });
    }
    out
}

/// The PIDs of local processes listening on the given endpoints' ports, grouped by process.
/// Endpoints on other machines are skipped.
pub fn find_server_processes(endpoints: &[String]) -> Vec<ServerProcess> {
    let mut sockets = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(file) {
            sockets.extend(parse_proc_net_tcp(&text));
        }
    }
    // inode -> endpoints served through it
    let mut wanted: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for endpoint in endpoints {
        let Some(addr) = endpoint_addr(endpoint) else {
            continue;
        };
        if !is_local(addr.ip()) {
            continue;
        }
        for socket in &sockets {
            let ip_matches = socket.addr.ip() == addr.ip()
                || socket.addr.ip().is_unspecified()
                || (addr.ip().is_loopback() && socket.addr.ip().is_loopback());
            if socket.addr.port() == addr.port() && ip_matches {
                wanted
                    .entry(socket.inode)
                    .or_default()
                    .push(endpoint.clone());
            }
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let own = std::process::id();
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(eps) = wanted.get(&inode) {
                let list = by_pid.entry(pid).or_default();
                for ep in eps {
                    if !list.contains(ep) {
                        list.push(ep.clone());
                    }
                }
            }
        }
    }
    by_pid
        .into_iter()
        .map(|(pid, endpoints)| ServerProcess { pid, endpoints })
        .collect()
}

/// utime + stime of a process, from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(3) ppid(4) ... utime is field 14, stime field 15 => index 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second(),
    ))
}

/// CPU time (user + system) a process has used so far.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    parse_stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time of this process (the load generator).
pub fn own_cpu() -> Option<Duration> {
    parse_stat_cpu(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// A `kB` field (e.g. `VmRSS`, `VmHWM`) of `/proc/PID/status`, in bytes.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident set size of a process in bytes.
pub fn process_rss(pid: u32) -> Option<u64> {
    parse_status_kb(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS",
    )
}

/// Busy CPU time of the whole machine so far (all CPUs, excluding idle and iowait).
pub fn machine_busy() -> Option<Duration> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&text)
}

/// Busy time from the first (`cpu`) line of `/proc/stat`.
pub fn parse_machine_busy(text: &str) -> Option<Duration> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if values.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user/nice.
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some(Duration::from_secs_f64(
        total.saturating_sub(idle) as f64 / ticks_per_second(),
    ))
}

/// CPU counters at one instant: each server process, this process and the machine.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub servers: BTreeMap<u32, Duration>,
    pub own: Option<Duration>,
    pub machine: Option<Duration>,
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> CpuSample {
        CpuSample {
            servers: pids
                .iter()
                .filter_map(|&pid| process_cpu(pid).map(|cpu| (pid, cpu)))
                .collect(),
            own: own_cpu(),
            machine: machine_busy(),
        }
    }
}

/// How busy the machine is apart from the given processes: CPU cores used by everything
/// else, sampled over `window`.
pub fn other_load(exclude: &[u32], window: Duration) -> Option<f64> {
    let before = CpuSample::take(exclude);
    std::thread::sleep(window);
    let after = CpuSample::take(exclude);
    let machine = after.machine?.checked_sub(before.machine?)?;
    let mut ours = after.own?.saturating_sub(before.own?);
    for (pid, cpu) in &after.servers {
        if let Some(b) = before.servers.get(pid) {
            ours += cpu.saturating_sub(*b);
        }
    }
    Some(machine.saturating_sub(ours).as_secs_f64() / window.as_secs_f64())
}

/// Distinct PIDs of the given processes.
pub fn pids(servers: &[ServerProcess]) -> Vec<u32> {
    let set: HashSet<u32> = servers.iter().map(|s| s.pid).collect();
    let mut pids: Vec<u32> = set.into_iter().collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_ipv4_and_ipv6_sockets() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:094B 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        let sockets = parse_proc_net_tcp(text);
        assert_eq!(
            sockets,
            vec![ListeningSocket {
                addr: "127.0.0.1:2379".parse().unwrap(),
                inode: 123456
            }]
        );
        let text6 = "header\n   0: 00000000000000000000000001000000:0950 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42 1\n";
        let sockets = parse_proc_net_tcp(text6);
        assert_eq!(sockets[0].addr, "[::1]:2384".parse().unwrap());
        assert_eq!(sockets[0].inode, 42);
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat =
            "4242 (skiff store) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        let cpu = parse_stat_cpu(stat).unwrap();
        let expected = 300.0 / ticks_per_second();
        assert!((cpu.as_secs_f64() - expected).abs() < 1e-9);
    }

    #[test]
    fn parses_status_and_machine_busy() {
        let status = "Name:\tskiff\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(2048 * 1024));
        let stat = "cpu  100 0 50 1000 20 5 5 0 0 0\ncpu0 1 2 3 4\n";
        let busy = parse_machine_busy(stat).unwrap();
        assert!((busy.as_secs_f64() - 160.0 / ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn finds_this_test_listener_only_in_other_processes() {
        // Our own process is excluded on purpose (the load generator is not a server).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = find_server_processes(&[format!("127.0.0.1:{port}")]);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            endpoint_addr("http://127.0.0.1:2379"),
            Some("127.0.0.1:2379".parse().unwrap())
        );
    }
}
