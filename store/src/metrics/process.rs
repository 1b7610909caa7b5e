//! The Prometheus Go client's process collector, read from `/proc/self` as it reads it:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_virtual_memory_max_bytes`,
//! `process_open_fds`, `process_max_fds` and `process_start_time_seconds`.

use std::fmt::Write as _;

/// What `/proc/self/stat` says, in the collector's units.
#[derive(Debug, Default, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
}

/// Parse `/proc/self/stat` given the clock tick rate, the page size and the boot time.
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: f64, boot_time: f64) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        start_time_seconds: boot_time + field(22)? / ticks_per_second,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    (value > 0).then_some(value as f64)
}

/// The soft limit of `resource`, as the Go client reports it (infinity as `u64::MAX`).
fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur as f64)
}

/// Resident memory of this process in bytes (0 if `/proc` cannot be read).
pub fn resident_memory_bytes() -> f64 {
    read_stat().map_or(0.0, |stat| stat.resident_bytes)
}

fn read_stat() -> Option<Stat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    parse_stat(
        &stat,
        sysconf(libc::_SC_CLK_TCK)?,
        sysconf(libc::_SC_PAGESIZE)?,
        boot,
    )
}

/// Append the process metrics in Prometheus text (those that cannot be read are left out).
pub fn render(out: &mut String) {
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    if let Some(stat) = read_stat() {
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.cpu_seconds,
        );
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.resident_bytes,
        );
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.start_time_seconds,
        );
        gauge(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.virtual_bytes,
        );
    }
    if let Some(max) = soft_limit(libc::RLIMIT_AS) {
        gauge(
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            max,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = soft_limit(libc::RLIMIT_NOFILE) {
        gauge(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_after_the_command_name() {
        let stat = "4242 (skiff (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    8 0 1000 123456789 300 18446744073709551615";
        let parsed = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).expect("parse");
        assert_eq!(
            parsed,
            Stat {
                cpu_seconds: 3.0,
                start_time_seconds: 1_700_000_010.0,
                virtual_bytes: 123_456_789.0,
                resident_bytes: 300.0 * 4096.0,
            }
        );
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_is_described() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(out.contains(&format!("\n{name}")), "{name} in {out}");
        }
        assert!(resident_memory_bytes() > 0.0);
    }
}
