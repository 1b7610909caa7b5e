//! Connecting to `localhost:<port>` inside a pod's network namespace.
//!
//! `setns(2)` switches the namespace of the calling *thread*; a socket keeps the namespace it was
//! created in. So a dedicated, short-lived std thread (never a tokio worker) enters the
//! namespace, connects (IPv4 `127.0.0.1`, then IPv6 `::1`, as containerd's port forwarder
//! does), hands the connected socket back and exits; the socket is then driven by tokio.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a connection inside the namespace failed; its `Display` is the text kubelet/containerd
/// write to the error stream (after kubelet's `error forwarding port …` prefix).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("failed to execute portforward in network namespace {netns:?}: {source}")]
    Namespace { netns: String, source: io::Error },
    #[error(
        "failed to execute portforward in network namespace {netns:?}: failed to connect to localhost:{port} inside namespace {netns:?}, IPv4: {v4} IPv6 {v6}"
    )]
    Connect {
        netns: String,
        port: u16,
        v4: String,
        v6: String,
    },
    #[error("port-forward connect thread failed: {0}")]
    Thread(io::Error),
}

/// Go-like rendering of a dial error: `dial tcp4 127.0.0.1:8080: connect: connection refused`.
fn dial_error(family: &str, addr: SocketAddr, e: &io::Error) -> String {
    let mut text = e.to_string();
    if let Some(i) = text.find(" (os error") {
        text.truncate(i);
    }
    let mut chars = text.chars();
    let text = match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    };
    let op = if e.kind() == io::ErrorKind::TimedOut {
        "i/o timeout"
    } else {
        "connect"
    };
    if op == "connect" {
        format!("dial {family} {addr}: connect: {text}")
    } else {
        format!("dial {family} {addr}: {op}")
    }
}

fn connect_blocking(
    netns: &Path,
    port: u16,
    timeout: Duration,
) -> Result<StdTcpStream, ConnectError> {
    let name = netns.display().to_string();
    let ns_err = |source| ConnectError::Namespace {
        netns: name.clone(),
        source,
    };
    let file = File::open(netns).map_err(ns_err)?;
    // SAFETY: setns on a valid, open namespace fd; affects only this (dedicated) thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ns_err(io::Error::last_os_error()));
    }
    drop(file);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v4_err = match StdTcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => return Ok(s),
        Err(e) => dial_error("tcp4", v4, &e),
    };
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match StdTcpStream::connect_timeout(&v6, timeout) {
        Ok(s) => Ok(s),
        Err(e) => Err(ConnectError::Connect {
            netns: name,
            port,
            v4: v4_err,
            v6: dial_error("tcp6", v6, &e),
        }),
    }
}

/// Connects to `localhost:port` inside the network namespace at `netns` (a path such as
/// `/run/netns/skiff-<uid>`), each address attempt bounded by `timeout`.
pub async fn connect_in_netns(
    netns: PathBuf,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-portfwd-netns".into())
        .spawn(move || {
            let _ = tx.send(connect_blocking(&netns, port, timeout));
        })
        .map_err(ConnectError::Thread)?;
    let stream = rx
        .await
        .map_err(|_| ConnectError::Thread(io::Error::other("connect thread vanished")))??;
    stream.set_nonblocking(true).map_err(ConnectError::Thread)?;
    TcpStream::from_std(stream).map_err(ConnectError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_error_reads_like_go() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            dial_error("tcp4", "127.0.0.1:8080".parse().unwrap(), &e),
            "dial tcp4 127.0.0.1:8080: connect: connection refused"
        );
    }

    #[tokio::test]
    async fn missing_namespace_is_an_error() {
        let e = connect_in_netns("/nonexistent/netns".into(), 80, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::Namespace { .. }), "{e}");
    }
}
