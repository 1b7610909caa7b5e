//! `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=1&stdout=1&stderr=1&tty=0`:
//! `runc exec` in the current attempt's container, streamed over a WebSocket.
//!
//! Subprotocols, most preferred first: `v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io` (also the one assumed when the
//! client offers none). Every binary message starts with its channel: 0 stdin, 1 stdout,
//! 2 stderr, 3 error/status, 4 resize (`{"Width","Height"}`, v3+; accepted and ignored: no
//! tty), 255 (v5) "channel closed", whose one payload byte names the channel (0: stdin EOF).
//! As kubelet does, an empty message on the lowest writable channel tells the client the
//! stream is up.
//!
//! When the command ends, channel 3 carries kubelet's `metav1.Status`: v4/v5 as JSON
//! ([`status_success`], [`status_exit_code`], [`status_internal`]); v1–v3 only the message of
//! a failure. Then the socket closes. A client that goes away kills the command.
//!
//! `tty=1` (`kubectl exec -it`): the agent opens a pseudo-terminal, makes its slave side the
//! controlling terminal of a new session and `runc exec -t`'s stdin, stdout and stderr; runc
//! (not detached) puts it in raw mode, makes the container's own terminal and copies between
//! the two, and follows its size (SIGWINCH). The agent reads the master onto channel 1, writes
//! channel 0 to it, and a resize message sets its window size.
//!
//! Queues: [`OUTPUT_QUEUE`] output chunks to the client, [`STDIN_QUEUE`] stdin chunks to the
//! process.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::pods::locate;
use super::{Peer, Shared, deny, query, text};
use crate::runtime::{ContainerState, RuncRuntime};

/// Output chunks (channel, bytes) waiting for the socket.
pub const OUTPUT_QUEUE: usize = 32;
/// Stdin chunks waiting for the process.
pub const STDIN_QUEUE: usize = 32;
/// How long output may still drain after the command exited (a background process may hold
/// the pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Bytes read from the process's pipes at a time.
const READ_SIZE: usize = 32 * 1024;

/// The subprotocols, most preferred first.
pub const PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The negotiated protocol version (1 for `channel.k8s.io`).
fn version(protocol: Option<&str>) -> u8 {
    match protocol {
        Some("v5.channel.k8s.io") => 5,
        Some("v4.channel.k8s.io") => 4,
        Some("v3.channel.k8s.io") => 3,
        Some("v2.channel.k8s.io") => 2,
        _ => 1,
    }
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

/// `metav1.Status`, fields in Go's order.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

fn to_json(status: &Status<'_>) -> Vec<u8> {
    serde_json::to_vec(status).unwrap_or_default()
}

/// `{"metadata":{},"status":"Success"}`.
pub fn status_success() -> Vec<u8> {
    to_json(&Status {
        metadata: Empty {},
        status: "Success",
        message: None,
        reason: None,
        details: None,
        code: None,
    })
}

/// The message of a non-zero exit, as kubelet words it.
pub fn exit_code_message(argv: &[String], code: i32) -> String {
    format!(
        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
        argv.join(" ")
    )
}

/// kubelet's `NonZeroExitCode` status; kubectl takes its exit code from the `ExitCode` cause.
pub fn status_exit_code(argv: &[String], code: i32) -> Vec<u8> {
    let message = exit_code_message(argv, code);
    let code_text = code.to_string();
    to_json(&Status {
        metadata: Empty {},
        status: "Failure",
        message: Some(&message),
        reason: Some("NonZeroExitCode"),
        details: Some(Details {
            causes: vec![Cause {
                reason: Some("ExitCode"),
                message: Some(&code_text),
            }],
        }),
        code: None,
    })
}

/// `apierrors.NewInternalError(err).Status()`.
pub fn status_internal(err: &str) -> Vec<u8> {
    let message = format!("Internal error occurred: {err}");
    to_json(&Status {
        metadata: Empty {},
        status: "Failure",
        message: Some(&message),
        reason: Some("InternalError"),
        details: Some(Details {
            causes: vec![Cause {
                reason: None,
                message: Some(err),
            }],
        }),
        code: Some(500),
    })
}

/// What ended the command.
enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The channel-3 payload for protocol `version` (`None`: nothing to send).
    fn payload(&self, version: u8, argv: &[String]) -> Option<Vec<u8>> {
        match (self, version >= 4) {
            (Outcome::Exited(0), true) => Some(status_success()),
            (Outcome::Exited(0), false) => None,
            (Outcome::Exited(code), true) => Some(status_exit_code(argv, *code)),
            (Outcome::Exited(code), false) => Some(exit_code_message(argv, *code).into_bytes()),
            (Outcome::Failed(err), true) => Some(status_internal(err)),
            (Outcome::Failed(err), false) => Some(err.clone().into_bytes()),
        }
    }
}

/// The parsed request.
#[derive(Clone, Debug)]
struct ExecRequest {
    argv: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn parse_request(raw: &str) -> Result<ExecRequest, String> {
    let pairs = query::parse(raw);
    let req = ExecRequest {
        argv: query::all(&pairs, "command"),
        stdin: query::flag(&pairs, "stdin")?,
        stdout: query::flag(&pairs, "stdout")?,
        stderr: query::flag(&pairs, "stderr")?,
        tty: query::flag(&pairs, "tty")?,
    };
    if req.argv.is_empty() {
        return Err("you must specify at least 1 command".into());
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(req)
}

/// The handler.
pub(crate) async fn handler(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(denied) = deny(&shared, peer) {
        return denied;
    }
    let req = match parse_request(raw.as_deref().unwrap_or_default()) {
        Ok(req) => req,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let located = match locate(&shared.config, &namespace, &pod, &container) {
        Ok(l) => l,
        Err((status, msg)) => return text(status, msg),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "exec needs a WebSocket upgrade with one of {} (SPDY is not supported): {rejection}",
                    PROTOCOLS.join(", ")
                ),
            );
        }
    };
    let attempt = located.attempts.last().copied().unwrap_or(0);
    let id = located.container_id(&container, attempt);
    let runtime = shared.config.runtime.clone();
    ws.protocols(PROTOCOLS)
        .on_upgrade(move |socket| session(socket, runtime, id, container, req))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(Bytes::from(bytes))
}

/// One exec, from the upgrade to the close.
async fn session(
    socket: WebSocket,
    runtime: RuncRuntime,
    id: String,
    container: String,
    req: ExecRequest,
) {
    let version = version(socket.protocol().and_then(|p| p.to_str().ok()));
    let (mut sink, stream) = socket.split();
    let first = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    if sink.send(frame(first, &[])).await.is_err() {
        return;
    }
    let outcome = run(&mut sink, stream, &runtime, &id, &container, &req).await;
    let Some(outcome) = outcome else {
        // The client went away; the command was killed.
        return;
    };
    if let Some(payload) = outcome.payload(version, &req.argv) {
        let _ = sink.send(frame(ERROR, &payload)).await;
    }
    // A normal closure (1000): client-go's stream reader treats anything else, even a close
    // without a code (1005), as an error after the status.
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;
type Source = futures::stream::SplitStream<WebSocket>;

/// Runs the command; `None` when the client went away first.
async fn run(
    sink: &mut Sink,
    stream: Source,
    runtime: &RuncRuntime,
    id: &str,
    container: &str,
    req: &ExecRequest,
) -> Option<Outcome> {
    match runtime.state(id).await {
        Ok(ContainerState::Running { .. }) => {}
        Ok(_) => {
            return Some(Outcome::Failed(format!(
                "container not found ({container:?})"
            )));
        }
        Err(e) => return Some(Outcome::Failed(e.to_string())),
    }
    let terminal = if req.tty {
        match Terminal::open() {
            Ok(t) => Some(t),
            Err(e) => return Some(Outcome::Failed(format!("opening a terminal: {e}"))),
        }
    } else {
        None
    };
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut cmd = runtime.exec_command(id, &req.argv, req.tty);
    match &terminal {
        Some(t) => {
            if let Err(e) = t.attach(&mut cmd) {
                return Some(Outcome::Failed(format!("opening a terminal: {e}")));
            }
        }
        None => {
            cmd.stdin(piped(req.stdin))
                .stdout(piped(req.stdout))
                .stderr(piped(req.stderr));
        }
    }
    cmd.kill_on_drop(true);
    let spawned = cmd.spawn();
    // The Command holds the terminal's slave side until dropped: without dropping it the
    // master would never see the command's end.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Some(Outcome::Failed(format!("starting runc exec: {e}"))),
    };

    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(OUTPUT_QUEUE);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    let mut resize_fd = None;
    match terminal {
        Some(t) => {
            let files = t
                .master_file()
                .and_then(|r| Ok((r, t.master_file()?, t.master_file()?)));
            match files {
                Ok((reader, writer, resizer)) => {
                    tokio::spawn(pump(
                        tokio::fs::File::from_std(reader),
                        STDOUT,
                        out_tx.clone(),
                    ));
                    if req.stdin {
                        tokio::spawn(feed_stdin(tokio::fs::File::from_std(writer), stdin_rx));
                    }
                    resize_fd = Some(resizer);
                }
                Err(e) => {
                    let _ = child.start_kill();
                    return Some(Outcome::Failed(format!("opening a terminal: {e}")));
                }
            }
            // Our copy of the slave side goes, so the master sees the command's end.
            drop(t);
        }
        None => {
            if let Some(stdout) = child.stdout.take() {
                tokio::spawn(pump(stdout, STDOUT, out_tx.clone()));
            }
            if let Some(stderr) = child.stderr.take() {
                tokio::spawn(pump(stderr, STDERR, out_tx.clone()));
            }
            if let Some(stdin) = child.stdin.take() {
                tokio::spawn(feed_stdin(stdin, stdin_rx));
            }
        }
    }
    drop(out_tx);
    let mut reader = tokio::spawn(read_client(stream, stdin_tx, resize_fd));
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let mut waiter = tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => status,
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        }
    });

    let mut outcome: Option<Outcome> = None;
    let mut drain_deadline = None;
    let mut output_done = false;
    loop {
        tokio::select! {
            chunk = out_rx.recv(), if !output_done => match chunk {
                Some((channel, data)) => {
                    if sink.send(frame(channel, &data)).await.is_err() {
                        break;
                    }
                }
                None => output_done = true,
            },
            status = &mut waiter, if outcome.is_none() => {
                outcome = Some(match status {
                    Ok(Ok(status)) => Outcome::Exited(exit_code(&status)),
                    Ok(Err(e)) => Outcome::Failed(format!("waiting for runc exec: {e}")),
                    Err(e) => Outcome::Failed(format!("waiting for runc exec: {e}")),
                });
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            },
            _ = &mut reader => break,
            _ = sleep_until(drain_deadline) => output_done = true,
        }
        if outcome.is_some() && output_done {
            reader.abort();
            return outcome;
        }
    }
    // The client went away (or the socket broke): kill the command.
    let _ = kill_tx.send(());
    reader.abort();
    None
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Copies a pipe to the output queue until EOF.
async fn pump(mut pipe: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((channel, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes stdin chunks to the process; the queue's end is stdin's EOF.
async fn feed_stdin(mut stdin: impl tokio::io::AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if stdin.write_all(&data).await.is_err() {
            return;
        }
        let _ = stdin.flush().await;
    }
    let _ = stdin.shutdown().await;
}

/// Reads the client's messages until it closes: stdin, resize, close signals.
async fn read_client(
    mut stream: Source,
    stdin_tx: mpsc::Sender<Bytes>,
    terminal: Option<std::fs::File>,
) {
    let mut stdin_tx = Some(stdin_tx);
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            STDIN => {
                if let Some(tx) = &stdin_tx
                    && !payload.is_empty()
                    && tx.send(data.slice(1..)).await.is_err()
                {
                    stdin_tx = None;
                }
            }
            RESIZE => match (&terminal, serde_json::from_slice::<TerminalSize>(payload)) {
                (Some(t), Ok(size)) => set_window_size(t, size),
                (None, _) => tracing::debug!("exec resize ignored (no tty)"),
                (_, Err(e)) => tracing::debug!(error = %e, "bad resize message"),
            },
            // v5: the client closed its stdin.
            CLOSE if payload.first() == Some(&STDIN) => stdin_tx = None,
            _ => {}
        }
    }
}

/// A resize message (`remotecommand.TerminalSize`).
#[derive(serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

fn set_window_size(master: &std::fs::File, size: TerminalSize) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid pty master fd and a valid winsize.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "setting the terminal size");
    }
}

/// A pseudo-terminal for `tty=1`.
struct Terminal {
    master: std::os::fd::OwnedFd,
    slave: std::os::fd::OwnedFd,
}

impl Terminal {
    fn open() -> std::io::Result<Terminal> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: out-pointers to two ints; no name, termios or winsize.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openpty returned two fresh descriptors that nothing else owns.
        let (master, slave) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(master),
                std::os::fd::OwnedFd::from_raw_fd(slave),
            )
        };
        for fd in [&master, &slave] {
            // SAFETY: a valid fd; FD_CLOEXEC keeps them out of other children.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Terminal { master, slave })
    }

    /// Gives the slave side to `cmd` as stdin, stdout and stderr, and makes it the
    /// controlling terminal of a new session in the child.
    fn attach(&self, cmd: &mut tokio::process::Command) -> std::io::Result<()> {
        cmd.stdin(Stdio::from(self.slave.try_clone()?))
            .stdout(Stdio::from(self.slave.try_clone()?))
            .stderr(Stdio::from(self.slave.try_clone()?));
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    fn master_file(&self) -> std::io::Result<std::fs::File> {
        Ok(std::fs::File::from(self.master.try_clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn status_bytes_are_kubelets() {
        assert_eq!(
            String::from_utf8(status_success()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            String::from_utf8(status_exit_code(&argv(&["sh", "-c", "exit 3"]), 3)).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(status_internal("container not found (\"c\")")).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: container not found (\"c\")","reason":"InternalError","details":{"causes":[{"message":"container not found (\"c\")"}]},"code":500}"#
        );
    }

    #[test]
    fn older_protocols_get_only_failure_messages() {
        let a = argv(&["false"]);
        assert_eq!(Outcome::Exited(0).payload(3, &a), None);
        assert_eq!(
            Outcome::Exited(1).payload(2, &a).unwrap(),
            b"command terminated with non-zero exit code: error executing command [false], exit code 1"
        );
        assert_eq!(Outcome::Exited(0).payload(5, &a).unwrap(), status_success());
        assert_eq!(version(Some("v4.channel.k8s.io")), 4);
        assert_eq!(version(None), 1);
    }

    #[test]
    fn request_parsing() {
        let r = parse_request("command=ls&command=-l&stdout=1&tty=true").unwrap();
        assert_eq!(r.argv, argv(&["ls", "-l"]));
        assert!(r.stdout && r.tty && !r.stdin && !r.stderr);
        assert!(parse_request("stdout=1").is_err());
        assert!(parse_request("command=ls").is_err());
        assert!(parse_request("command=ls&stdout=perhaps").is_err());
    }
}
