//! Probes as kubelet runs them: exec (in the container, success is exit 0), httpGet (from the
//! node to the pod IP, 200–399 is success, redirects not followed) and tcpSocket (a connect),
//! each under `timeoutSeconds`; and the pure bookkeeping of `initialDelaySeconds`,
//! `periodSeconds`, `successThreshold` and `failureThreshold` (`ProbeTracker`).

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// A probe's knobs with kubelet's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(probe: &Probe) -> ProbeTiming {
        let secs = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
        };
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        ProbeTiming {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Consecutive results of one probe of one container attempt.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProbeTracker {
    pub last_run: Option<Timestamp>,
    pub successes: u32,
    pub failures: u32,
    /// The settled result: `Some(true)` after `successThreshold` successes, `Some(false)`
    /// after `failureThreshold` failures.
    pub result: Option<bool>,
    /// The last failure's message (for the event).
    pub last_message: String,
}

impl ProbeTracker {
    /// Whether the probe is due at `now` for a container started at `started_at`.
    pub fn due(&self, timing: &ProbeTiming, started_at: Timestamp, now: Timestamp) -> bool {
        let since_start = now.duration_since(started_at).unsigned_abs();
        if since_start < timing.initial_delay {
            return false;
        }
        match self.last_run {
            None => true,
            Some(last) => now.duration_since(last).unsigned_abs() >= timing.period,
        }
    }

    /// Records one result; returns the settled result when it changed.
    pub fn record(
        &mut self,
        timing: &ProbeTiming,
        now: Timestamp,
        outcome: Result<(), String>,
    ) -> Option<bool> {
        self.last_run = Some(now);
        let before = self.result;
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= timing.success_threshold {
                    self.result = Some(true);
                }
            }
            Err(message) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_message = message;
                if self.failures >= timing.failure_threshold {
                    self.result = Some(false);
                }
            }
        }
        (self.result != before).then_some(self.result).flatten()
    }
}

/// Runs an httpGet probe against `ip`: 200–399 is success.
pub async fn http_get(
    ip: IpAddr,
    probe: &Probe,
    container: &Container,
    timeout: Duration,
) -> Result<(), String> {
    let Some(get) = probe.http_get.as_ref() else {
        return Err("no httpGet".into());
    };
    let port = resolve_port(&get.port, container)?;
    let host = get
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| ip.to_string());
    let path = get
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let scheme = get.scheme.as_deref().unwrap_or("HTTP");
    if scheme.eq_ignore_ascii_case("HTTPS") {
        // kubelet skips certificate verification; a TCP-level check is what we can offer
        // without a TLS client here.
        return tcp(ip, port, timeout).await;
    }
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let request = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get \"http://{url_host}:{port}{path}\": dial tcp {url_host}:{port}: connect: {}", io_reason(&e)))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for header in get.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", header.name, header.value));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        // The status line is all we need.
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!("Get \"http://{url_host}:{port}{path}\": malformed HTTP response")
            })?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Get \"http://{url_host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// Runs a tcpSocket probe (or connects for httpGet over HTTPS).
pub async fn tcp(ip: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: connect: {}", io_reason(&e))),
        Err(_) => Err(format!("dial tcp {ip}:{port}: i/o timeout")),
    }
}

/// A tcpSocket probe's port.
pub fn tcp_port(probe: &Probe, container: &Container) -> Result<u16, String> {
    let socket = probe.tcp_socket.as_ref().ok_or("no tcpSocket")?;
    resolve_port(&socket.port, container)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// A numeric port, or a named container port.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port number: {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn thresholds_and_periods_as_kubelet() {
        let probe = Probe {
            period_seconds: Some(2),
            initial_delay_seconds: Some(5),
            failure_threshold: Some(2),
            success_threshold: Some(2),
            ..Default::default()
        };
        let timing = ProbeTiming::of(&probe);
        let mut t = ProbeTracker::default();
        assert!(!t.due(&timing, at(0), at(4)), "initial delay");
        assert!(t.due(&timing, at(0), at(5)));
        assert_eq!(t.record(&timing, at(5), Ok(())), None, "one success of two");
        assert!(!t.due(&timing, at(0), at(6)), "period");
        assert_eq!(t.record(&timing, at(7), Ok(())), Some(true));
        assert_eq!(t.record(&timing, at(9), Err("boom".into())), None);
        assert_eq!(t.record(&timing, at(11), Err("boom".into())), Some(false));
        assert_eq!(t.last_message, "boom");
        let defaults = ProbeTiming::of(&Probe::default());
        assert_eq!(
            (
                defaults.period.as_secs(),
                defaults.timeout.as_secs(),
                defaults.failure_threshold,
                defaults.success_threshold
            ),
            (10, 1, 3, 1)
        );
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = if req.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "404 Not Found"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let container = Container {
            name: "c".into(),
            ..Default::default()
        };
        let probe = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            http_get(ip, &probe("/ok"), &container, second).await,
            Ok(())
        );
        assert_eq!(
            http_get(ip, &probe("/nope"), &container, second).await,
            Err("HTTP probe failed with statuscode: 404".into())
        );
        assert_eq!(tcp(ip, port, second).await, Ok(()));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = tcp(ip, closed_port, second).await.unwrap_err();
        assert!(err.contains("connection refused"), "{err}");
        let named = Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &named),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("web".into()), &named).is_err());
    }
}
