//! kubelet's port-forward protocol over SPDY/3.1 (`kubectl port-forward`).
//!
//! The HTTPS server answers a `pods/portforward` request that [`wants_spdy`] (and whose
//! [`protocol_supported`]) with `101 Switching Protocols` carrying
//! [`upgrade_response_headers`], then hands the raw upgraded connection to [`serve_spdy`], which
//! speaks SPDY/3.1 as the server until the client goes away.
//!
//! Per forwarded connection the client opens two streams, `streamtype: error` and
//! `streamtype: data`, both with `port` and a shared `requestid`. Once both arrived, the agent
//! connects to `localhost:<port>` inside the pod's network namespace and copies bytes between that
//! connection and the data stream; a failure is written as text to the error stream. Both streams
//! are then closed. A stream left unpaired for [`Config::stream_creation_timeout`] is closed with
//! a message, as kubelet does.
//!
//! Submodules: `frame` (pure framing), `zlib` (header-block compression with the SPDY/3
//! dictionary), `dictionary`, `netns` (connecting inside a netns), `session` (the connection).

pub mod dictionary;
pub mod frame;
pub mod netns;
mod session;
pub mod zlib;

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};

/// The only port-forward subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The `Upgrade` token.
pub const SPDY_3_1: &str = "SPDY/3.1";

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Open streams (two per forwarded connection) before new ones are refused.
    pub max_streams: usize,
    /// How long the first stream of a pair waits for the second (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// Per-address connect timeout inside the pod's netns.
    pub connect_timeout: Duration,
    /// Largest control frame accepted.
    pub max_control_frame: usize,
    /// Largest decompressed header block accepted.
    pub max_header_block: usize,
    /// Read size, and the size DATA frames are split into on the way in.
    pub data_chunk: usize,
    /// Decoded frames buffered between the reader and the session.
    pub frame_queue: usize,
    /// Frames buffered for the writer.
    pub write_queue: usize,
    /// DATA chunks buffered per data stream on the way to the pod.
    pub inbound_queue: usize,
    /// How long to let the writer flush (e.g. a GOAWAY) when the session ends.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_streams: 128,
            stream_creation_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_control_frame: 64 * 1024,
            max_header_block: 64 * 1024,
            data_chunk: 32 * 1024,
            frame_queue: 16,
            write_queue: 64,
            inbound_queue: 16,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why a port-forward connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("port-forward connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("port-forward protocol error: {0}")]
    Protocol(#[from] frame::FrameError),
}

/// The headers of the `101 Switching Protocols` answer.
pub fn upgrade_response_headers() -> [(&'static str, &'static str); 3] {
    [
        ("Connection", "Upgrade"),
        ("Upgrade", SPDY_3_1),
        ("X-Stream-Protocol-Version", PROTOCOL_V1),
    ]
}

fn header_tokens<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a request asks for a SPDY/3.1 upgrade (`Connection: Upgrade`, `Upgrade: SPDY/3.1`).
pub fn wants_spdy(headers: &HeaderMap) -> bool {
    header_tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade"))
        && header_tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case(SPDY_3_1))
}

/// Whether the request's `X-Stream-Protocol-Version`s allow [`PROTOCOL_V1`] (none at all is an
/// old client, which kubelet accepts too). If not, kubelet answers 403 Forbidden.
pub fn protocol_supported(headers: &HeaderMap) -> bool {
    let mut offered = header_tokens(headers, "x-stream-protocol-version").peekable();
    offered.peek().is_none() || offered.any(|p| p == PROTOCOL_V1)
}

/// Serves kubelet's port-forward protocol on an upgraded SPDY/3.1 connection until the client
/// goes away. `netns` is the pod's network namespace (`/run/netns/skiff-<uid>`);
/// `allowed_ports` are the request's `port` query parameters (empty: any port).
pub async fn serve_spdy<IO>(
    io: IO,
    netns: PathBuf,
    pod_uid: String,
    allowed_ports: Vec<u16>,
) -> Result<(), PortForwardError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_spdy_with(io, netns, pod_uid, allowed_ports, Config::default()).await
}

/// [`serve_spdy`] with explicit limits.
pub async fn serve_spdy_with<IO>(
    io: IO,
    netns: PathBuf,
    pod_uid: String,
    allowed_ports: Vec<u16>,
    config: Config,
) -> Result<(), PortForwardError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    session::run(io, netns, pod_uid, allowed_ports, config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn wants_spdy_checks_connection_and_upgrade() {
        assert!(wants_spdy(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "SPDY/3.1")
        ])));
        assert!(wants_spdy(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "spdy/3.1")
        ])));
        assert!(!wants_spdy(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_spdy(&map(&[("upgrade", "SPDY/3.1")])));
    }

    #[test]
    fn protocol_negotiation() {
        assert!(protocol_supported(&map(&[])));
        assert!(protocol_supported(&map(&[(
            "x-stream-protocol-version",
            "portforward.k8s.io"
        )])));
        assert!(!protocol_supported(&map(&[(
            "x-stream-protocol-version",
            "v4.channel.k8s.io"
        )])));
        assert_eq!(
            upgrade_response_headers()[2],
            ("X-Stream-Protocol-Version", "portforward.k8s.io")
        );
    }
}
