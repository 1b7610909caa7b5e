//! The raw append stream: AppendEntries (and heartbeats) to one member as length-prefixed
//! postcard frames on a plain TCP connection, for `http://` peer URLs.
//!
//! Why: over the gRPC `AppendStream` every AppendEntries crosses four task hand-offs that
//! do no work of their own (replication task → h2 connection task → socket → the
//! follower's h2 connection task → its stream task, and the same back). Here the leader's
//! replication task writes the frame to the socket and reads the answer itself, and on the
//! follower one task per connection reads a frame, hands it to Raft and writes the answer.
//!
//! The peer port serves both: a connection that opens with [`MAGIC`] is a raw append
//! stream, anything else (the HTTP/2 preface) goes to the gRPC server. `https://` peer
//! URLs never use it: their traffic stays on gRPC over TLS, and a TLS listener hands every
//! connection to the TLS server.
//!
//! Wire format: the client sends [`MAGIC`], then requests; each request and each answer is
//! `[u32 little-endian length][postcard body]`, at most [`PEER_MAX_MESSAGE_BYTES`]. Answers
//! come in request order, one per request. Any failure closes the connection; the client
//! opens a new one for its next request. When this member stops, its raw connections
//! close at once (the stream has no status to send; a closed connection is its "stopped").

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::network::PEER_MAX_MESSAGE_BYTES;
use crate::node::StoreNode;
use crate::types::{MemberId, TypeConfig};

/// The first bytes of a raw append stream (an HTTP/2 client starts with `PRI * HT`).
pub const MAGIC: &[u8; 8] = b"SKIFFAE1";
/// Accepted gRPC connections waiting for the gRPC server to take them.
pub const PEER_ACCEPT_QUEUE: usize = 64;
/// How long an accepted connection may take to send its first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of one raw connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A follower's answer to one request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Raft(Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>>),
    /// The sender was removed from the cluster (see [`crate::network::removed_status`]).
    Removed,
    /// The request could not be decoded.
    Invalid(String),
}

/// Errors of one raw exchange.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the peer message limit")]
    TooLarge(usize),
    #[error("decode: {0}")]
    Decode(String),
}

/// Encode `value` as one frame: length prefix, then postcard.
fn frame<T: Serialize>(value: &T) -> Result<Vec<u8>, StreamError> {
    let mut out =
        postcard::to_extend(value, vec![0u8; 4]).map_err(|e| StreamError::Decode(e.to_string()))?;
    let len = out.len() - 4;
    if len > PEER_MAX_MESSAGE_BYTES {
        return Err(StreamError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Read one frame's body into `buf`; `Ok(false)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, StreamError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > PEER_MAX_MESSAGE_BYTES {
        return Err(StreamError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    Ok(true)
}

/// The leader's end of one raw append stream (owned by openraft's replication task).
///
/// Answers carry no request id: they pair with requests by order only. So a call whose
/// future was dropped between sending and reading (openraft wraps every AppendEntries in
/// its own timeout) leaves the stream [`abandoned`](RawStream::abandoned): the answer still
/// on its way belongs to that request, and read as the next one's it would report entries
/// the peer never stored (an old `Success` counts as a match of everything sent since).
/// The caller must open a new connection instead.
pub struct RawStream {
    conn: BufReader<TcpStream>,
    buf: Vec<u8>,
    /// A request was sent and its answer not read yet.
    in_flight: bool,
}

impl RawStream {
    /// Connect to `addr` (`host:port`) and announce a raw append stream.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<RawStream, StreamError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                StreamError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(StreamError::Connect)?;
        stream.set_nodelay(true).map_err(StreamError::Connect)?;
        let mut conn = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        conn.write_all(MAGIC).await.map_err(StreamError::Connect)?;
        Ok(RawStream {
            conn,
            buf: Vec::new(),
            in_flight: false,
        })
    }

    /// An earlier call was given up between sending and reading its answer: the stream can
    /// no longer pair answers with requests.
    pub fn abandoned(&self) -> bool {
        self.in_flight
    }

    /// Send one AppendEntries and wait for its answer (`Ok(None)`: the peer closed the
    /// connection without answering), counting the bytes each way in `peer`.
    pub async fn call(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        peer: &crate::metrics::PeerMetrics,
    ) -> Result<Option<Answer>, StreamError> {
        let out = frame(rpc)?;
        // Set before the first byte goes out and cleared only once the answer is read, so a
        // drop anywhere in between (even mid-write) leaves the stream marked.
        self.in_flight = true;
        self.conn.write_all(&out).await?;
        peer.sent_bytes.fetch_add(out.len() as u64, Relaxed);
        if !read_frame(&mut self.conn, &mut self.buf).await? {
            return Ok(None);
        }
        self.in_flight = false;
        let received = self.buf.len() as u64 + 4;
        peer.received_bytes.fetch_add(received, Relaxed);
        postcard::from_bytes(&self.buf)
            .map(Some)
            .map_err(|e| StreamError::Decode(e.to_string()))
    }
}

/// Serve a plain-text peer listener: raw append streams here, every other connection to
/// the gRPC server through `grpc` (a bounded queue of accepted connections).
pub async fn accept_loop(
    node: Arc<StoreNode>,
    listener: TcpListener,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<TcpStream>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("peer accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let grpc = grpc.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stopping = stop.clone();
            let connection = async move {
                match tokio::time::timeout(SNIFF_TIMEOUT, opens_with_magic(&stream)).await {
                    Ok(Ok(true)) => serve_raw(node, stream, stop).await,
                    Ok(Ok(false)) => {
                        let _ = grpc.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("peer connection: {e}"),
                    Err(_) => tracing::debug!("peer connection sent nothing; closed"),
                }
            };
            // When this member stops, the connection closes wherever it is (sniffing, in
            // Raft, writing an answer): the leader sees it end and stops sending.
            tokio::select! {
                () = connection => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        });
    }
}

/// Whether the connection's first bytes are [`MAGIC`] (peeked, not consumed); `false` as
/// soon as they differ from it.
async fn opens_with_magic(stream: &TcpStream) -> std::io::Result<bool> {
    let mut seen = [0u8; MAGIC.len()];
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 {
            return Ok(false);
        }
        if seen[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == MAGIC.len() {
            return Ok(true);
        }
        // Part of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The follower's end: read a request, hand it to Raft, write the answer; in order, one
/// at a time, until the connection ends or this member stops.
async fn serve_raw(
    node: Arc<StoreNode>,
    stream: TcpStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut magic = [0u8; MAGIC.len()];
    if conn.read_exact(&mut magic).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    // The leader this stream comes from, for etcd_network_peer_{received,sent}_bytes_total.
    let mut leader: Option<Arc<crate::metrics::PeerMetrics>> = None;
    loop {
        let more = tokio::select! {
            more = read_frame(&mut conn, &mut buf) => more,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match more {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!("raw append stream: {e}");
                return;
            }
        }
        let answer = match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&buf) {
            Err(e) => Answer::Invalid(e.to_string()),
            Ok(rpc) => {
                if let Some(id) = rpc.vote.leader_id().voted_for()
                    && leader.as_ref().is_none_or(|peer| peer.id != id)
                {
                    leader = Some(crate::metrics::peer(id));
                }
                if node.from_removed_member(&rpc.vote) {
                    Answer::Removed
                } else {
                    Answer::Raft(node.raft.append_entries(rpc).await)
                }
            }
        };
        let last = matches!(answer, Answer::Invalid(_));
        let out = match frame(&answer) {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!("raw append stream: {e}");
                return;
            }
        };
        if let Some(peer) = &leader {
            peer.received_bytes.fetch_add(buf.len() as u64 + 4, Relaxed);
            peer.sent_bytes.fetch_add(out.len() as u64, Relaxed);
        }
        if conn.write_all(&out).await.is_err() || last {
            return;
        }
    }
}

/// `host:port` of an `http://` peer URL, or `None` for any other URL.
pub fn plain_addr(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let addr = rest.split('/').next()?;
    (!addr.is_empty()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_only_for_http_urls() {
        assert_eq!(plain_addr("http://127.0.0.1:2380"), Some("127.0.0.1:2380"));
        assert_eq!(plain_addr("http://host:2380/"), Some("host:2380"));
        assert_eq!(plain_addr("https://127.0.0.1:2380"), None);
        assert_eq!(plain_addr("unix:///tmp/x"), None);
        assert_eq!(plain_addr("http://"), None);
    }

    #[test]
    fn a_frame_carries_its_length() {
        let out = frame(&Answer::Removed).expect("frame");
        let len = u32::from_le_bytes(out[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, out.len() - 4);
        let back: Answer = postcard::from_bytes(&out[4..]).expect("decode");
        assert!(matches!(back, Answer::Removed));
    }

    #[tokio::test]
    async fn an_oversize_frame_is_refused_before_reading_it() {
        let mut input: &[u8] = &((PEER_MAX_MESSAGE_BYTES as u32 + 1).to_le_bytes());
        let mut buf = Vec::new();
        let result = read_frame(&mut input, &mut buf).await;
        assert!(
            matches!(result, Err(StreamError::TooLarge(_))),
            "{result:?}"
        );
        assert!(buf.capacity() < 1024);
    }
}
