//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's CRI log file as kubectl
//! shows it.
//!
//! A CRI line is `<RFC3339Nano> stdout|stderr F|P <text>`; `P` parts are joined with the parts
//! that follow on the same stream up to an `F` into one *line* (timestamped with its first
//! part). Output: each line's text and `\n` (`timestamps=true` puts the RFC3339Nano time and a
//! space before it); a partial line left at the end of a finished attempt is written without
//! `\n`, as kubelet writes it.
//!
//! Query parameters as kubelet reads them: `previous` (attempt n-1), `tailLines` (the last N
//! lines; negative = all), `sinceSeconds` / `sinceTime` (lines at or after; at most one),
//! `timestamps`, `limitBytes` (the output stops after that many bytes), `follow` (after the
//! file's end, poll it every [`FOLLOW_POLL`] until the attempt's exit file appears, a newer
//! attempt starts, runc no longer knows the container, or the client goes away). The body is
//! streamed through a bounded queue ([`BODY_QUEUE`] chunks).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::pods::{attempts, locate};
use super::{Peer, Shared, deny, query, text};
use crate::runtime::{ContainerState, RuncRuntime};

/// How often `follow` looks for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// How often (in polls) `follow` asks runc whether the container still exists.
const STATE_CHECK_POLLS: u32 = 20;
/// Chunks of output in flight to the client.
pub const BODY_QUEUE: usize = 16;
/// Output is gathered into chunks of about this size.
const CHUNK: usize = 32 * 1024;
/// Bytes read from the file at a time.
const READ_SIZE: usize = 64 * 1024;

/// Which stream a CRI line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One parsed CRI log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriEntry {
    pub time: Timestamp,
    pub stream: Stream,
    /// `P`: more parts of this line follow.
    pub partial: bool,
    pub content: Vec<u8>,
}

/// Parses one CRI line (without its `\n`); `None` for a malformed line.
pub fn parse_cri_line(line: &[u8]) -> Option<CriEntry> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // The tag is `:`-separated; its first field is P or F.
    let tag = parts.next()?;
    let partial = match tag.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or_default().to_vec();
    Some(CriEntry {
        time,
        stream,
        partial,
        content,
    })
}

/// One log line as kubectl shows it (its parts joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The time of its first part.
    pub time: Timestamp,
    pub content: Vec<u8>,
    /// Ended by an `F` part (false only for a partial line flushed at the end).
    pub complete: bool,
}

impl LogLine {
    /// The bytes written for this line.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + 40);
        if timestamps {
            out.extend_from_slice(self.time.to_string().as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
        if self.complete {
            out.push(b'\n');
        }
        out
    }
}

/// Joins `P` parts (per stream) into lines.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: [Option<LogLine>; 2],
}

impl Joiner {
    /// Adds one entry; a line when it completes one.
    pub fn push(&mut self, entry: CriEntry) -> Option<LogLine> {
        let slot = &mut self.pending[entry.stream as usize];
        let line = slot.get_or_insert_with(|| LogLine {
            time: entry.time,
            content: Vec::new(),
            complete: false,
        });
        line.content.extend_from_slice(&entry.content);
        if entry.partial {
            return None;
        }
        let mut line = slot.take()?;
        line.complete = true;
        Some(line)
    }

    /// The partial lines left (the log ended without their `F`), oldest first.
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut left: Vec<LogLine> = self.pending.iter_mut().filter_map(Option::take).collect();
        left.sort_by_key(|l| l.time);
        left
    }
}

/// Reads a CRI log file incrementally: whole lines only, `P` parts joined.
pub struct CriReader {
    file: tokio::fs::File,
    /// Bytes of a line not yet ended by `\n`.
    rest: Vec<u8>,
    joiner: Joiner,
    buf: Vec<u8>,
}

impl CriReader {
    pub async fn open(path: &std::path::Path) -> std::io::Result<CriReader> {
        Ok(CriReader {
            file: tokio::fs::File::open(path).await?,
            rest: Vec::new(),
            joiner: Joiner::default(),
            buf: vec![0; READ_SIZE],
        })
    }

    /// The lines completed by the next read; `None` at the end of the file (for now).
    pub async fn next_batch(&mut self) -> std::io::Result<Option<Vec<LogLine>>> {
        let n = self.file.read(&mut self.buf).await?;
        if n == 0 {
            return Ok(None);
        }
        self.rest.extend_from_slice(&self.buf[..n]);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.rest[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            if let Some(entry) = parse_cri_line(&self.rest[start..end])
                && let Some(line) = self.joiner.push(entry)
            {
                lines.push(line);
            }
            start = end + 1;
        }
        self.rest.drain(..start);
        Ok(Some(lines))
    }

    /// The file is complete: what is left (an unterminated last line, partial lines).
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        let rest = std::mem::take(&mut self.rest);
        if let Some(entry) = parse_cri_line(&rest)
            && let Some(line) = self.joiner.push(entry)
        {
            lines.push(line);
        }
        lines.extend(self.joiner.finish());
        lines
    }
}

/// kubelet's log options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    /// `None`: all lines.
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// From the query pairs; the error is the 400 message.
    pub fn from_query(pairs: &[(String, String)], now: Timestamp) -> Result<LogOptions, String> {
        let mut opts = LogOptions {
            follow: query::flag(pairs, "follow")?,
            previous: query::flag(pairs, "previous")?,
            timestamps: query::flag(pairs, "timestamps")?,
            ..LogOptions::default()
        };
        let int = |key: &str| -> Result<Option<i64>, String> {
            match query::last(pairs, key) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| format!("invalid value for {key:?}: {v:?}")),
            }
        };
        if let Some(n) = int("tailLines")? {
            opts.tail_lines = usize::try_from(n).ok();
        }
        if let Some(n) = int("limitBytes")? {
            if n < 1 {
                return Err("limitBytes: must be greater than 0".into());
            }
            opts.limit_bytes = u64::try_from(n).ok();
        }
        let since_seconds = int("sinceSeconds")?;
        let since_time = query::last(pairs, "sinceTime").filter(|v| !v.is_empty());
        match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into());
            }
            (Some(secs), None) => {
                if secs < 1 {
                    return Err("sinceSeconds: must be greater than 0".into());
                }
                let since = now
                    .checked_sub(jiff::SignedDuration::from_secs(secs))
                    .unwrap_or(Timestamp::MIN);
                opts.since = Some(since);
            }
            (None, Some(t)) => {
                let t: Timestamp = t
                    .parse()
                    .map_err(|_| format!("invalid value for \"sinceTime\": {t:?}"))?;
                opts.since = Some(t);
            }
            (None, None) => {}
        }
        Ok(opts)
    }
}

/// What to do after writing a line.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The byte limit was reached or the client went away.
    Stop,
}

/// Renders lines into chunks, applying `since` and `limitBytes`.
struct Emitter {
    opts: LogOptions,
    written: u64,
    chunk: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Emitter {
    fn wanted(&self, line: &LogLine) -> bool {
        self.opts.since.is_none_or(|since| line.time >= since)
    }

    async fn line(&mut self, line: &LogLine) -> Flow {
        if !self.wanted(line) {
            return Flow::Continue;
        }
        let mut bytes = line.render(self.opts.timestamps);
        let mut flow = Flow::Continue;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written);
            if bytes.len() as u64 >= left {
                bytes.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                flow = Flow::Stop;
            }
        }
        self.written += bytes.len() as u64;
        self.chunk.extend_from_slice(&bytes);
        if (self.chunk.len() >= CHUNK || flow == Flow::Stop) && self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        flow
    }

    async fn flush(&mut self) -> Flow {
        if self.chunk.is_empty() {
            return if self.tx.is_closed() {
                Flow::Stop
            } else {
                Flow::Continue
            };
        }
        let chunk = Bytes::from(std::mem::take(&mut self.chunk));
        match self.tx.send(Ok(chunk)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

/// The handler.
pub(crate) async fn handler(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(denied) = deny(&shared, peer) {
        return denied;
    }
    let pairs = query::parse(raw.as_deref().unwrap_or_default());
    let opts = match LogOptions::from_query(&pairs, Timestamp::now()) {
        Ok(opts) => opts,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let located = match locate(&shared.config, &namespace, &pod, &container) {
        Ok(l) => l,
        Err((status, msg)) => return text(status, msg),
    };
    let current = located.attempts.last().copied().unwrap_or(0);
    let attempt = if opts.previous {
        match located.attempts.iter().rev().nth(1) {
            Some(n) => *n,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
        }
    } else {
        current
    };
    let reader = match CriReader::open(&located.log_path(attempt)).await {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to open log of container {container:?} in pod {pod:?}: {e}"),
            );
        }
    };
    let follow = opts.follow && attempt == current;
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let emitter = Emitter {
        opts,
        written: 0,
        chunk: Vec::new(),
        tx,
    };
    let watch = follow.then(|| FollowWatch {
        runtime: shared.config.runtime.clone(),
        id: located.container_id(&container, attempt),
        dir: located.dir.clone(),
        attempt,
    });
    tokio::spawn(produce(reader, emitter, watch));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// When `follow` ends.
struct FollowWatch {
    runtime: RuncRuntime,
    id: String,
    dir: PathBuf,
    attempt: u32,
}

impl FollowWatch {
    /// The attempt is over (its lines are all written once the file is read to its end).
    async fn ended(&self, polls: u32) -> bool {
        if tokio::fs::try_exists(self.runtime.exit_file(&self.id))
            .await
            .unwrap_or(false)
        {
            return true;
        }
        let dir = self.dir.clone();
        let newer = tokio::task::spawn_blocking(move || attempts(&dir))
            .await
            .unwrap_or_default()
            .last()
            .is_some_and(|n| *n > self.attempt);
        if newer {
            return true;
        }
        // A fallback for a container removed with its exit file (the pod was deleted); not on
        // the first poll, so a container that is only starting is not taken for gone.
        if polls % STATE_CHECK_POLLS == STATE_CHECK_POLLS - 1 {
            return matches!(
                self.runtime.state(&self.id).await,
                Ok(ContainerState::NotFound | ContainerState::Unknown | ContainerState::Exited(_))
            );
        }
        false
    }
}

/// Reads the file and feeds the body.
async fn produce(mut reader: CriReader, mut emitter: Emitter, watch: Option<FollowWatch>) {
    let tail = emitter.opts.tail_lines;
    let mut kept: VecDeque<LogLine> = VecDeque::new();
    // To the current end of the file.
    loop {
        let batch = match reader.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                let _ = emitter.tx.send(Err(e)).await;
                return;
            }
        };
        for line in batch {
            match tail {
                Some(n) => {
                    if n == 0 || !emitter.wanted(&line) {
                        continue;
                    }
                    if kept.len() == n {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
                None => {
                    if emitter.line(&line).await == Flow::Stop {
                        return;
                    }
                }
            }
        }
    }
    let Some(watch) = watch else {
        kept.extend(reader.finish());
        if let Some(n) = tail {
            while kept.len() > n {
                kept.pop_front();
            }
        }
        for line in &kept {
            if emitter.line(line).await == Flow::Stop {
                return;
            }
        }
        emitter.flush().await;
        return;
    };
    for line in kept.drain(..) {
        if emitter.line(&line).await == Flow::Stop {
            return;
        }
    }
    if emitter.flush().await == Flow::Stop {
        return;
    }
    let mut polls: u32 = 0;
    loop {
        // Checked before reading: lines written before the exit are then all read.
        let ended = watch.ended(polls).await;
        polls = polls.wrapping_add(1);
        loop {
            match reader.next_batch().await {
                Ok(Some(batch)) => {
                    for line in batch {
                        if emitter.line(&line).await == Flow::Stop {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = emitter.tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if ended {
            for line in reader.finish() {
                if emitter.line(&line).await == Flow::Stop {
                    return;
                }
            }
            emitter.flush().await;
            return;
        }
        if emitter.flush().await == Flow::Stop {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests;
