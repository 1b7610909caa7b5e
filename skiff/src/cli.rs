//! Helpers shared by the subcommands: duration flags, the usage exit code, signals.

use std::process::ExitCode;
use std::time::Duration;

/// Parse a Go-style duration: `500ms`, `5s`, `10m`, `1h`.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{value:?}: missing unit (ms, s, m, h)"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?}: not a duration"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{value:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Exit code for bad flags or configuration (like etcd).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Go's `strconv.ParseBool`, which etcd's boolean flags and `ETCD_*` variables use
/// (`--client-cert-auth=true`, as kubeadm writes them).
pub(crate) fn parse_go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{value:?}: not a boolean (true or false)")),
    }
}

/// The multi-threaded runtime every long-running subcommand runs on; on failure the line
/// is printed and the exit code returned.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("skiff: cannot start runtime: {err}");
            ExitCode::FAILURE
        })
}
