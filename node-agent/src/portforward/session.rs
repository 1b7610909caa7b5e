//! One upgraded SPDY/3.1 port-forward connection: kubelet's `httpStreamHandler` over a
//! spdystream-compatible server.
//!
//! Three kinds of task, joined by bounded channels only:
//! - the frame reader (owns the read half and the inbound zlib stream) turns bytes into
//!   [`Inbound`] items, splitting large DATA frames into chunks;
//! - the session loop (the caller's task) validates streams, replies, pairs `error`/`data` streams
//!   by `requestid`, times out unpaired streams, routes DATA to forwarders, echoes PINGs;
//! - the frame writer (owns the write half and the outbound zlib stream: header blocks must be
//!   compressed in wire order) serialises [`Outgoing`] items;
//! - one forwarder per complete pair connects inside the pod's netns and copies both ways.
//!
//! Flow control: spdystream (kubectl's and kubelet's SPDY implementation) neither sends nor
//! honours WINDOW_UPDATE, so neither does this; backpressure is TCP's, through the bounded
//! channels.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::frame::{self, Control, FrameError, FrameHead, Headers};
use super::netns::connect_in_netns;
use super::zlib::{HeaderCompressor, HeaderDecompressor};
use super::{Config, PortForwardError};

/// An item from the frame reader.
#[derive(Debug)]
enum Inbound {
    Control(Control),
    /// A piece of a DATA frame; `fin` only on the frame's last piece.
    Data {
        stream_id: u32,
        data: Vec<u8>,
        fin: bool,
    },
}

/// An item for the frame writer.
#[derive(Debug)]
enum Outgoing {
    SynReply(u32),
    Data {
        stream_id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    Rst(u32, u32),
    Ping(u32),
    GoAway(u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

#[derive(Debug)]
struct StreamState {
    request_id: String,
    kind: Kind,
    /// Inbound DATA for a `data` stream, until the peer's FIN/RST.
    inbound: Option<mpsc::Sender<Vec<u8>>>,
}

#[derive(Debug)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
    deadline: Instant,
    /// The data stream's receiver, until the forwarder takes it.
    inbound_rx: Option<mpsc::Receiver<Vec<u8>>>,
    task: Option<AbortHandle>,
}

/// Reads frames until EOF or a malformed frame; stops when the session drops its receiver.
async fn read_frames<R: AsyncRead + Unpin>(
    r: R,
    tx: mpsc::Sender<Result<Inbound, PortForwardError>>,
    config: Config,
) {
    let mut r = BufReader::with_capacity(config.data_chunk, r);
    let mut dec = HeaderDecompressor::new();
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).await.is_err() {
            return; // EOF or a broken connection: the peer is gone.
        }
        let item = match frame::parse_head(head) {
            FrameHead::Control {
                version,
                kind,
                flags,
                length,
            } => {
                if length > config.max_control_frame {
                    let _ = tx.send(Err(FrameError::TooLarge(length).into())).await;
                    return;
                }
                let mut payload = vec![0u8; length];
                if r.read_exact(&mut payload).await.is_err() {
                    return;
                }
                match frame::parse_control(
                    version,
                    kind,
                    flags,
                    &payload,
                    &mut dec,
                    config.max_header_block,
                ) {
                    Ok(c) => Inbound::Control(c),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            FrameHead::Data {
                stream_id,
                flags,
                length,
            } => {
                if stream_id == 0 {
                    let _ = tx.send(Err(FrameError::ZeroStreamId.into())).await;
                    return;
                }
                let fin = flags & frame::FLAG_FIN != 0;
                let mut left = length;
                loop {
                    let n = left.min(config.data_chunk);
                    let mut data = vec![0u8; n];
                    if r.read_exact(&mut data).await.is_err() {
                        return;
                    }
                    left -= n;
                    let last = left == 0;
                    let item = Inbound::Data {
                        stream_id,
                        data,
                        fin: fin && last,
                    };
                    if last {
                        break item;
                    }
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        };
        if tx.send(Ok(item)).await.is_err() {
            return;
        }
    }
}

/// Writes frames until every sender is gone (or the connection breaks).
async fn write_frames<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<(), PortForwardError> {
    let mut w = BufWriter::new(w);
    let mut comp = HeaderCompressor::new();
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::SynReply(id) => {
                w.write_all(&frame::encode_syn_reply(id, 0, &[], &mut comp)?)
                    .await?
            }
            Outgoing::Data {
                stream_id,
                data,
                fin,
            } => {
                let flags = if fin { frame::FLAG_FIN } else { 0 };
                for (i, chunk) in data.chunks(frame::MAX_FRAME_LEN).enumerate() {
                    let last = (i + 1) * frame::MAX_FRAME_LEN >= data.len();
                    let f = if last { flags } else { 0 };
                    w.write_all(&frame::encode_data_head(stream_id, f, chunk.len())?)
                        .await?;
                    w.write_all(chunk).await?;
                }
                if data.is_empty() {
                    w.write_all(&frame::encode_data_head(stream_id, flags, 0)?)
                        .await?;
                }
            }
            Outgoing::Rst(id, status) => w.write_all(&frame::encode_rst_stream(id, status)).await?,
            Outgoing::Ping(id) => w.write_all(&frame::encode_ping(id)).await?,
            Outgoing::GoAway(last, status) => {
                w.write_all(&frame::encode_goaway(last, status)).await?
            }
        }
        if rx.is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    let _ = w.shutdown().await;
    Ok(())
}

/// What a forwarder needs.
struct Forward {
    request_id: String,
    port: u16,
    data_id: u32,
    error_id: u32,
    netns: PathBuf,
    pod_uid: String,
    inbound: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Outgoing>,
    done: mpsc::Sender<String>,
    config: Config,
}

async fn forward(mut f: Forward) {
    let result = match connect_in_netns(f.netns.clone(), f.port, f.config.connect_timeout).await {
        Ok(tcp) => copy_both_ways(tcp, &mut f.inbound, &f.out, f.data_id, f.config.data_chunk)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        let msg = format!(
            "error forwarding port {} to pod {}, uid : {e}",
            f.port, f.pod_uid
        );
        tracing::debug!(request = %f.request_id, "{msg}");
        let _ = f
            .out
            .send(Outgoing::Data {
                stream_id: f.error_id,
                data: msg.into_bytes(),
                fin: false,
            })
            .await;
    }
    for stream_id in [f.data_id, f.error_id] {
        let _ = f
            .out
            .send(Outgoing::Data {
                stream_id,
                data: Vec::new(),
                fin: true,
            })
            .await;
    }
    let _ = f.done.send(f.request_id).await;
}

/// Copies pod→client until the pod closes its side; client→pod until the client's FIN (then
/// half-closes the pod connection) — or until either side fails.
async fn copy_both_ways(
    tcp: tokio::net::TcpStream,
    inbound: &mut mpsc::Receiver<Vec<u8>>,
    out: &mpsc::Sender<Outgoing>,
    data_id: u32,
    chunk: usize,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        while let Some(data) = inbound.recv().await {
            wr.write_all(&data).await?;
        }
        let _ = wr.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    let down = async move {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let item = Outgoing::Data {
                stream_id: data_id,
                data: buf[..n].to_vec(),
                fin: false,
            };
            if out.send(item).await.is_err() {
                return Ok(()); // the connection is going away
            }
        }
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r {
                    // A pod that stops reading while it writes is not an error worth a message
                    // unless the copy the other way fails too.
                    if e.kind() != std::io::ErrorKind::BrokenPipe
                        && e.kind() != std::io::ErrorKind::ConnectionReset
                    {
                        return Err(e);
                    }
                }
            }
            r = &mut down => return r,
        }
    }
}

/// The session state of one connection.
struct Session {
    netns: PathBuf,
    pod_uid: String,
    allowed_ports: Vec<u16>,
    config: Config,
    out: mpsc::Sender<Outgoing>,
    done_tx: mpsc::Sender<String>,
    streams: HashMap<u32, StreamState>,
    pairs: HashMap<String, Pair>,
    last_peer_stream: u32,
    going_away: bool,
}

/// The writer went away: the connection is broken.
struct Closed;

impl Session {
    async fn send(&self, item: Outgoing) -> Result<(), Closed> {
        self.out.send(item).await.map_err(|_| Closed)
    }

    async fn on_control(&mut self, c: Control) -> Result<(), Closed> {
        match c {
            Control::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.on_syn_stream(stream_id, flags, &headers).await?,
            Control::RstStream { stream_id, status } => {
                tracing::debug!(stream_id, status, "port-forward stream reset by peer");
                if let Some(s) = self.streams.get(&stream_id) {
                    let request_id = s.request_id.clone();
                    self.finish_pair(&request_id, Some(stream_id)).await?;
                }
            }
            Control::Ping { id } => {
                // Odd ids are the client's (we are the SPDY server); even ones answer ours,
                // and we send none.
                if id % 2 == 1 {
                    self.send(Outgoing::Ping(id)).await?;
                }
            }
            Control::GoAway { .. } => self.going_away = true,
            Control::SynReply { .. }
            | Control::Settings { .. }
            | Control::Headers { .. }
            | Control::WindowUpdate { .. }
            | Control::Unknown { .. } => {}
        }
        Ok(())
    }

    async fn on_syn_stream(
        &mut self,
        stream_id: u32,
        flags: u8,
        headers: &Headers,
    ) -> Result<(), Closed> {
        if stream_id.is_multiple_of(2) || stream_id <= self.last_peer_stream {
            return self
                .send(Outgoing::Rst(stream_id, frame::rst::PROTOCOL_ERROR))
                .await;
        }
        self.last_peer_stream = stream_id;
        if self.going_away || self.streams.len() >= self.config.max_streams {
            return self
                .send(Outgoing::Rst(stream_id, frame::rst::REFUSED_STREAM))
                .await;
        }
        let (kind, port) = match validate(headers, &self.allowed_ports) {
            Ok(v) => v,
            Err(why) => {
                tracing::debug!(stream_id, "rejecting port-forward stream: {why}");
                return self
                    .send(Outgoing::Rst(stream_id, frame::rst::CANCEL))
                    .await;
            }
        };
        let request_id = match frame::header(headers, "requestid") {
            Some(id) if !id.is_empty() => id.to_owned(),
            // Pre-requestid clients: kubelet derives an id from the stream ids.
            _ => match kind {
                Kind::Error => stream_id.to_string(),
                Kind::Data => stream_id.saturating_sub(2).to_string(),
            },
        };
        if let Some(p) = self.pairs.get(&request_id) {
            let taken = match kind {
                Kind::Error => p.error.is_some(),
                Kind::Data => p.data.is_some(),
            };
            if taken {
                let what = if kind == Kind::Error { "error" } else { "data" };
                let msg = format!(
                    "error processing stream for request {request_id}: {what} stream already assigned"
                );
                if let Some(err_id) = p.error {
                    self.send(Outgoing::Data {
                        stream_id: err_id,
                        data: msg.into_bytes(),
                        fin: false,
                    })
                    .await?;
                }
                return self
                    .send(Outgoing::Rst(stream_id, frame::rst::STREAM_IN_USE))
                    .await;
            }
        }
        self.send(Outgoing::SynReply(stream_id)).await?;
        let deadline = Instant::now() + self.config.stream_creation_timeout;
        let pair = self
            .pairs
            .entry(request_id.clone())
            .or_insert_with(|| Pair {
                error: None,
                data: None,
                port,
                deadline,
                inbound_rx: None,
                task: None,
            });
        let mut inbound = None;
        match kind {
            Kind::Error => pair.error = Some(stream_id),
            Kind::Data => {
                let (tx, rx) = mpsc::channel(self.config.inbound_queue);
                // The peer may already have half-closed (FIN on SYN_STREAM).
                if flags & frame::FLAG_FIN == 0 {
                    inbound = Some(tx);
                }
                pair.inbound_rx = Some(rx);
                pair.data = Some(stream_id);
                pair.port = port;
            }
        }
        self.streams.insert(
            stream_id,
            StreamState {
                request_id: request_id.clone(),
                kind,
                inbound,
            },
        );
        if let (Some(error_id), Some(data_id), Some(rx)) =
            (pair.error, pair.data, pair.inbound_rx.take())
        {
            let task = tokio::spawn(forward(Forward {
                request_id,
                port: pair.port,
                data_id,
                error_id,
                netns: self.netns.clone(),
                pod_uid: self.pod_uid.clone(),
                inbound: rx,
                out: self.out.clone(),
                done: self.done_tx.clone(),
                config: self.config.clone(),
            }));
            pair.task = Some(task.abort_handle());
        }
        Ok(())
    }

    async fn on_data(&mut self, stream_id: u32, data: Vec<u8>, fin: bool) -> Result<(), Closed> {
        let Some(s) = self.streams.get_mut(&stream_id) else {
            return Ok(()); // gone, or never ours: spdystream ignores these too
        };
        if s.kind == Kind::Error {
            return Ok(()); // clients never write to the error stream; ignore
        }
        let request_id = s.request_id.clone();
        if let Some(tx) = &s.inbound
            && !data.is_empty()
        {
            let started = self
                .pairs
                .get(&request_id)
                .is_some_and(|p| p.task.is_some());
            if started {
                // The forwarder drains this; a closed receiver means it finished.
                let _ = tx.send(data).await;
            } else if tx.try_send(data).is_err() {
                // An unpaired stream must not block the session: drop it.
                tracing::debug!(stream_id, "unpaired port-forward stream overflowed");
                self.send(Outgoing::Rst(stream_id, frame::rst::CANCEL))
                    .await?;
                return self.finish_pair(&request_id, Some(stream_id)).await;
            }
        }
        if fin && let Some(s) = self.streams.get_mut(&stream_id) {
            s.inbound = None;
        }
        Ok(())
    }

    /// Ends a pair: stops its forwarder, closes (FIN) its streams except `reset` (which the peer
    /// reset) and forgets it.
    async fn finish_pair(&mut self, request_id: &str, reset: Option<u32>) -> Result<(), Closed> {
        let Some(pair) = self.pairs.remove(request_id) else {
            return Ok(());
        };
        if let Some(task) = &pair.task {
            task.abort();
        }
        for id in [pair.error, pair.data].into_iter().flatten() {
            self.streams.remove(&id);
            if Some(id) != reset {
                self.send(Outgoing::Data {
                    stream_id: id,
                    data: Vec::new(),
                    fin: true,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// A forwarder finished (it closed its streams itself).
    fn on_done(&mut self, request_id: &str) {
        if let Some(pair) = self.pairs.remove(request_id) {
            for id in [pair.error, pair.data].into_iter().flatten() {
                self.streams.remove(&id);
            }
        }
    }

    /// The earliest deadline of a pair still waiting for its second stream.
    fn next_deadline(&self) -> Option<Instant> {
        self.pairs
            .values()
            .filter(|p| p.task.is_none())
            .map(|p| p.deadline)
            .min()
    }

    async fn expire(&mut self, now: Instant) -> Result<(), Closed> {
        let expired: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.task.is_none() && p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for request_id in expired {
            let msg = format!("(request={request_id}) timed out waiting for streams");
            tracing::debug!("port-forward {msg}");
            if let Some(err_id) = self.pairs.get(&request_id).and_then(|p| p.error) {
                self.send(Outgoing::Data {
                    stream_id: err_id,
                    data: msg.into_bytes(),
                    fin: false,
                })
                .await?;
            }
            self.finish_pair(&request_id, None).await?;
        }
        Ok(())
    }

    fn abort_all(&mut self) {
        for pair in self.pairs.values() {
            if let Some(task) = &pair.task {
                task.abort();
            }
        }
        self.pairs.clear();
        self.streams.clear();
    }
}

/// Checks a new stream's headers as kubelet's `httpStreamReceived` does.
fn validate(headers: &Headers, allowed_ports: &[u16]) -> Result<(Kind, u16), String> {
    let port = frame::header(headers, "port")
        .filter(|p| !p.is_empty())
        .ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port < 1 {
        return Err(format!("port \"{port}\" must be > 0"));
    }
    if !allowed_ports.is_empty() && !allowed_ports.contains(&port) {
        return Err(format!("port {port} was not requested"));
    }
    let kind = match frame::header(headers, "streamtype") {
        None | Some("") => return Err("\"streamType\" header is required".into()),
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
    };
    Ok((kind, port))
}

pub(super) async fn run<IO>(
    io: IO,
    netns: PathBuf,
    pod_uid: String,
    allowed_ports: Vec<u16>,
    config: Config,
) -> Result<(), PortForwardError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (in_tx, mut in_rx) = mpsc::channel(config.frame_queue);
    let (out_tx, out_rx) = mpsc::channel(config.write_queue);
    let (done_tx, mut done_rx) = mpsc::channel(config.max_streams);
    let reader = tokio::spawn(read_frames(rd, in_tx, config.clone()));
    let mut writer: JoinHandle<Result<(), PortForwardError>> =
        tokio::spawn(write_frames(wr, out_rx));
    let mut s = Session {
        netns,
        pod_uid,
        allowed_ports,
        config: config.clone(),
        out: out_tx,
        done_tx,
        streams: HashMap::new(),
        pairs: HashMap::new(),
        last_peer_stream: 0,
        going_away: false,
    };
    let mut writer_result = None;
    let outcome: Result<(), PortForwardError> = loop {
        if s.going_away && s.pairs.is_empty() {
            break Ok(());
        }
        let deadline = s.next_deadline();
        let step = tokio::select! {
            item = in_rx.recv() => match item {
                None => break Ok(()), // the peer closed the connection
                Some(Err(e)) => {
                    tracing::debug!("port-forward connection protocol error: {e}");
                    let _ = s
                        .send(Outgoing::GoAway(s.last_peer_stream, frame::goaway::PROTOCOL_ERROR))
                        .await;
                    break Err(e);
                }
                Some(Ok(Inbound::Control(c))) => s.on_control(c).await,
                Some(Ok(Inbound::Data { stream_id, data, fin })) => {
                    s.on_data(stream_id, data, fin).await
                }
            },
            Some(request_id) = done_rx.recv() => {
                s.on_done(&request_id);
                Ok(())
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => s.expire(Instant::now()).await,
            r = &mut writer => {
                writer_result = Some(r);
                break Ok(());
            }
        };
        if step.is_err() {
            break Ok(()); // the writer is gone; its result says why
        }
    };
    s.abort_all();
    reader.abort();
    drop(s);
    let writer_result = match writer_result {
        Some(r) => r,
        None => match tokio::time::timeout(config.shutdown_grace, &mut writer).await {
            Ok(r) => r,
            Err(_) => {
                writer.abort();
                Ok(Ok(()))
            }
        },
    };
    outcome?;
    match writer_result {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(PortForwardError::Io(std::io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn validate_follows_kubelet() {
        assert_eq!(
            validate(&h(&[("port", "80"), ("streamtype", "data")]), &[]),
            Ok((Kind::Data, 80))
        );
        assert_eq!(
            validate(&h(&[("port", "80"), ("streamtype", "error")]), &[80]),
            Ok((Kind::Error, 80))
        );
        assert!(validate(&h(&[("streamtype", "data")]), &[]).is_err());
        assert!(validate(&h(&[("port", "0"), ("streamtype", "data")]), &[]).is_err());
        assert!(validate(&h(&[("port", "70000"), ("streamtype", "data")]), &[]).is_err());
        assert!(validate(&h(&[("port", "80"), ("streamtype", "x")]), &[]).is_err());
        assert!(validate(&h(&[("port", "80")]), &[]).is_err());
        assert!(validate(&h(&[("port", "81"), ("streamtype", "data")]), &[80]).is_err());
    }
}
