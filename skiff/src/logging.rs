//! Log setup for `skiff store`: etcd's `--log-level` names (or a tracing EnvFilter;
//! openraft's INFO lines, which dump Raft state structs, only at `debug`), `--log-outputs` (stderr, stdout, files; several at once), and ANSI colours
//! only when every output is a terminal.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// One log destination.
#[derive(Clone)]
enum Sink {
    Stderr,
    Stdout,
    File(Arc<Mutex<File>>),
}

/// Every `--log-outputs` destination; each log line goes to all of them.
#[derive(Clone)]
pub(crate) struct Outputs(Vec<Sink>);

impl Outputs {
    /// Parse etcd's `--log-outputs`: comma-separated `default` (= stderr), `stderr`,
    /// `stdout` or file paths (appended to, created if missing).
    pub(crate) fn parse(value: &str) -> Result<Outputs, String> {
        let mut sinks = Vec::new();
        for output in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            sinks.push(match output {
                "default" | "stderr" => Sink::Stderr,
                "stdout" => Sink::Stdout,
                path => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("--log-outputs: cannot open {path}: {e}"))?;
                    Sink::File(Arc::new(Mutex::new(file)))
                }
            });
        }
        if sinks.is_empty() {
            sinks.push(Sink::Stderr);
        }
        Ok(Outputs(sinks))
    }

    /// Whether colour codes belong in the output: only if every output is a terminal.
    fn all_terminals(&self) -> bool {
        self.0.iter().all(|sink| match sink {
            Sink::Stderr => std::io::stderr().is_terminal(),
            Sink::Stdout => std::io::stdout().is_terminal(),
            Sink::File(_) => false,
        })
    }
}

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        for sink in &self.0 {
            // A failing output must not stop the others (or the process).
            let _ = match sink {
                Sink::Stderr => std::io::stderr().write_all(buf),
                Sink::Stdout => std::io::stdout().write_all(buf),
                Sink::File(file) => match file.lock() {
                    Ok(mut file) => file.write_all(buf),
                    Err(poisoned) => poisoned.into_inner().write_all(buf),
                },
            };
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for sink in &self.0 {
            let _ = match sink {
                Sink::Stderr => std::io::stderr().flush(),
                Sink::Stdout => std::io::stdout().flush(),
                Sink::File(file) => match file.lock() {
                    Ok(mut file) => file.flush(),
                    Err(poisoned) => poisoned.into_inner().flush(),
                },
            };
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Outputs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The filter for a level: etcd's names (`panic`, `fatal` and `dpanic` log errors), any
/// tracing EnvFilter; none given: `$SKIFF_LOG`, else `info`.
fn filter(level: Option<&str>) -> tracing_subscriber::EnvFilter {
    let level = level
        .map(str::to_string)
        .or_else(|| std::env::var("SKIFF_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let level = match level.as_str() {
        "panic" | "fatal" | "dpanic" => "error".to_string(),
        // openraft's own INFO lines dump whole Raft state structs: at etcd's plain levels
        // only its warnings show (ask for `debug`, or an EnvFilter, to see them).
        plain @ ("info" | "warn") => format!("{plain},openraft=warn"),
        other => other.to_string(),
    };
    tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Install the global subscriber.
pub(crate) fn init(level: Option<&str>, outputs: Outputs) {
    let ansi = outputs.all_terminals();
    tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(ansi)
        .with_writer(outputs)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_like_etcd() {
        assert!(matches!(
            Outputs::parse("default").unwrap().0[..],
            [Sink::Stderr]
        ));
        assert!(matches!(
            Outputs::parse("stdout,stderr").unwrap().0[..],
            [Sink::Stdout, Sink::Stderr]
        ));
        assert!(Outputs::parse("/nonexistent-dir/x/log").is_err());
    }
}
