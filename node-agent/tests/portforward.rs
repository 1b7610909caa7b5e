//! Port-forward over SPDY/3.1 end to end: a real network namespace with busybox httpd inside,
//! `serve_spdy` on one end of an in-memory duplex, and a minimal SPDY/3.1 client written here
//! independently of the module's framing (header blocks as zlib *stored* blocks under a header
//! announcing the SPDY/3 dictionary, as a Go client's zlib stream announces it; replies decoded
//! with plain flate2, which would fail if the server relied on a preset dictionary).
//!
//! Needs root and iproute2; skipped (with a message) otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_node_agent::portforward::{Config, serve_spdy, serve_spdy_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(root && ip) {
        eprintln!("skipping: needs root and iproute2");
    }
    root && ip && std::path::Path::new("/usr/bin/busybox").exists()
}

/// A network namespace with `lo` up and (optionally) busybox httpd in it; removed on drop.
struct Netns {
    name: String,
    httpd: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Netns {
    fn new(suffix: &str) -> Netns {
        let name = format!("skpf-{}{suffix}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ns = Netns {
            name,
            httpd: None,
            _dir: None,
        };
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success(), "lo up");
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn start_httpd(&mut self, files: &[(&str, &[u8])]) {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "/usr/bin/busybox",
                "httpd",
                "-f",
            ])
            .args(["-p", "127.0.0.1:8080", "-h"])
            .arg(dir.path())
            .spawn()
            .unwrap();
        self.httpd = Some(child);
        self._dir = Some(dir);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(child) = &mut self.httpd {
            // `ip netns exec` execs busybox: this PID is httpd's own.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

async fn wait_listening(netns: PathBuf, port: u16) {
    for _ in 0..100 {
        if skiff_node_agent::portforward::netns::connect_in_netns(
            netns.clone(),
            port,
            Duration::from_secs(1),
        )
        .await
        .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("httpd did not start listening");
}

// ---- a minimal SPDY/3.1 client ----

fn header_block(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_be_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

#[derive(Debug, Default)]
struct StreamLog {
    replied: bool,
    data: Vec<u8>,
    fin: bool,
    rst: Option<u32>,
}

#[derive(Debug)]
enum Event {
    /// SYN_REPLY, DATA or RST_STREAM (recorded in `Client::streams`).
    Stream,
    Ping(u32),
    GoAway(u32),
}

struct Client {
    /// `None` once a test moved it into a writer task.
    w: Option<WriteHalf<DuplexStream>>,
    r: ReadHalf<DuplexStream>,
    /// Whether our zlib stream's header (with FDICT) went out yet.
    zlib_started: bool,
    inflate: flate2::Decompress,
    streams: HashMap<u32, StreamLog>,
}

impl Client {
    fn new(io: DuplexStream) -> Client {
        let (r, w) = tokio::io::split(io);
        Client {
            w: Some(w),
            r,
            zlib_started: false,
            inflate: flate2::Decompress::new(true),
            streams: HashMap::new(),
        }
    }

    /// The next piece of our zlib stream: a stored block holding `block`.
    fn compress(&mut self, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.zlib_started {
            self.zlib_started = true;
            let cmf = 0x78u8;
            let mut flg = 0x20u8 | 0x80; // FDICT, default level
            while (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                flg += 1;
            }
            out.extend_from_slice(&[cmf, flg]);
            out.extend_from_slice(&DICTIONARY_ADLER32.to_be_bytes());
        }
        let len = block.len() as u16;
        out.push(0x00); // BFINAL=0, BTYPE=00 (stored), padded to the byte
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
        out
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) {
        let mut f = vec![0x80, 0x03];
        f.extend_from_slice(&kind.to_be_bytes());
        f.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        self.w.as_mut().unwrap().write_all(&f).await.unwrap();
    }

    async fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) {
        let block = self.compress(&header_block(headers));
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&block);
        self.control(1, 0, &p).await;
        self.streams.entry(id).or_default();
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut f = id.to_be_bytes().to_vec();
        f.extend_from_slice(&((u32::from(fin) << 24) | data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        self.w.as_mut().unwrap().write_all(&f).await.unwrap();
    }

    async fn ping(&mut self, id: u32) {
        self.control(6, 0, &id.to_be_bytes()).await;
    }

    async fn pair(&mut self, first_id: u32, port: &str, request_id: &str) {
        self.syn_stream(
            first_id,
            &[
                ("streamtype", "error"),
                ("port", port),
                ("requestid", request_id),
            ],
        )
        .await;
        // kubectl half-closes the error stream at once.
        self.data(first_id, &[], true).await;
        self.syn_stream(
            first_id + 2,
            &[
                ("streamtype", "data"),
                ("port", port),
                ("requestid", request_id),
            ],
        )
        .await;
    }

    /// Reads one frame; `None` at EOF.
    async fn next(&mut self) -> Option<Event> {
        let mut head = [0u8; 8];
        self.r.read_exact(&mut head).await.ok()?;
        let len = (usize::from(head[5]) << 16) | (usize::from(head[6]) << 8) | usize::from(head[7]);
        let flags = head[4];
        let mut payload = vec![0u8; len];
        self.r.read_exact(&mut payload).await.unwrap();
        let be = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes(head[..4].try_into().unwrap());
            let fin = flags & 1 != 0;
            let log = self.streams.entry(id).or_default();
            log.data.extend_from_slice(&payload);
            log.fin |= fin;
            return Some(Event::Stream);
        }
        assert_eq!(&head[..2], &[0x80, 0x03], "version 3 control frame");
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Some(match kind {
            2 => {
                let id = be(0);
                let mut block = Vec::with_capacity(1024);
                self.inflate
                    .decompress_vec(&payload[4..], &mut block, flate2::FlushDecompress::Sync)
                    .expect("server header blocks decode without a dictionary");
                assert_eq!(block, header_block(&[]), "empty SYN_REPLY headers");
                self.streams.entry(id).or_default().replied = true;
                Event::Stream
            }
            3 => {
                let (id, status) = (be(0), be(4));
                self.streams.entry(id).or_default().rst = Some(status);
                Event::Stream
            }
            6 => Event::Ping(be(0)),
            7 => Event::GoAway(be(4)),
            other => panic!("unexpected control frame type {other}"),
        })
    }

    /// Reads until every stream in `ids` has FIN or RST (or EOF/timeout).
    async fn until_closed(&mut self, ids: &[u32]) -> Vec<Event> {
        let mut events = Vec::new();
        let done = |c: &Client| {
            ids.iter()
                .all(|id| c.streams.get(id).is_some_and(|s| s.fin || s.rst.is_some()))
        };
        while !done(self) {
            match tokio::time::timeout(Duration::from_secs(20), self.next()).await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(_) => panic!("timed out; streams: {:?}", self.streams),
            }
        }
        events
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_http_into_the_pod_netns() {
    if !can_run() {
        return;
    }
    let mut ns = Netns::new("a");
    let index = b"<html>hello from skiff pod</html>\n";
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ns.start_httpd(&[("index.html", index), ("big.bin", &big)]);
    wait_listening(ns.path(), 8080).await;

    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve_spdy(server_io, ns.path(), "pod-uid-1".into(), vec![]));
    let mut c = Client::new(client_io);

    // Request 0: the page. Request 1: a refused port. Request 2: 3 MiB (well past any 64 KiB
    // window: spdystream has no flow control and neither side waits for WINDOW_UPDATE).
    c.pair(1, "8080", "0").await;
    c.ping(1).await;
    c.data(3, b"GET /index.html HTTP/1.0\r\n\r\n", false).await;
    c.pair(5, "8081", "1").await;
    c.pair(9, "8080", "2").await;
    c.data(11, b"GET /big.bin HTTP/1.0\r\n\r\n", false).await;

    let events = c.until_closed(&[1, 3, 5, 7, 9, 11]).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Ping(1))),
        "ping echoed: {events:?}"
    );
    for id in [1, 3, 5, 7, 9, 11] {
        let s = &c.streams[&id];
        assert!(s.replied, "stream {id} got SYN_REPLY");
        assert!(
            s.fin && s.rst.is_none(),
            "stream {id} closed with FIN: {s:?}"
        );
    }

    let page = String::from_utf8_lossy(&c.streams[&3].data).into_owned();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.ends_with("<html>hello from skiff pod</html>\n"),
        "{page}"
    );
    assert!(c.streams[&1].data.is_empty(), "no error for request 0");

    let err = String::from_utf8_lossy(&c.streams[&5].data).into_owned();
    assert!(
        err.starts_with("error forwarding port 8081 to pod pod-uid-1, uid : "),
        "{err}"
    );
    assert!(
        err.contains("failed to connect to localhost:8081 inside namespace")
            && err.contains("dial tcp4 127.0.0.1:8081: connect: connection refused"),
        "{err}"
    );
    assert!(c.streams[&7].data.is_empty());

    let resp = &c.streams[&11].data;
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end")
        + 4;
    assert!(resp.starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(resp.len() - body_at, big.len());
    assert!(resp[body_at..] == big[..], "3 MiB body intact");
    assert!(c.streams[&9].data.is_empty());

    // The client goes away: the server returns cleanly.
    drop(c);
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server ends when the client goes away")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_streams_time_out_and_bad_streams_are_refused() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let config = Config {
        stream_creation_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let server = tokio::spawn(serve_spdy_with(
        server_io,
        "/nonexistent/netns".into(),
        "pod-uid-2".into(),
        vec![8080],
        config,
    ));
    let mut c = Client::new(client_io);
    // An error stream whose data stream never comes.
    c.syn_stream(
        1,
        &[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "7"),
        ],
    )
    .await;
    // No port; a port not requested; a bad stream type; an even (server-side) id.
    c.syn_stream(3, &[("streamtype", "data"), ("requestid", "8")])
        .await;
    c.syn_stream(
        5,
        &[("streamtype", "data"), ("port", "9999"), ("requestid", "8")],
    )
    .await;
    c.syn_stream(
        7,
        &[("streamtype", "nope"), ("port", "8080"), ("requestid", "8")],
    )
    .await;
    c.syn_stream(
        10,
        &[("streamtype", "data"), ("port", "8080"), ("requestid", "8")],
    )
    .await;
    c.until_closed(&[1, 3, 5, 7, 10]).await;
    let s1 = &c.streams[&1];
    assert!(s1.replied && s1.fin);
    assert_eq!(
        String::from_utf8_lossy(&s1.data),
        "(request=7) timed out waiting for streams"
    );
    for id in [3, 5, 7, 10] {
        assert!(c.streams[&id].rst.is_some(), "stream {id} reset");
        assert!(!c.streams[&id].replied, "stream {id} not replied");
    }

    // A malformed frame (SPDY/2 version) ends the connection with GOAWAY(PROTOCOL_ERROR).
    c.w.as_mut()
        .unwrap()
        .write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut goaway = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), c.next()).await {
        if let Event::GoAway(status) = e {
            goaway = Some(status);
        }
    }
    assert_eq!(goaway, Some(1), "GOAWAY with PROTOCOL_ERROR");
    let r = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "malformed frame is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_echoed_back_through_an_echo_server() {
    if !can_run() {
        return;
    }
    let mut ns = Netns::new("e");
    // `nc -ll -e cat`: a persistent echo server on port 9000 inside the namespace.
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/bin/busybox",
            "nc",
            "-ll",
            "-p",
            "9000",
        ])
        .args(["-e", "/usr/bin/busybox", "cat"])
        .spawn()
        .unwrap();
    ns.httpd = Some(child);
    wait_listening(ns.path(), 9000).await;

    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve_spdy(
        server_io,
        ns.path(),
        "pod-uid-4".into(),
        vec![9000],
    ));
    let mut c = Client::new(client_io);
    c.pair(1, "9000", "0").await;
    // Write 2 MiB in 100 KiB DATA frames (bigger than the server's 32 KiB read size), then FIN,
    // while reading the echo concurrently (as spdystream does).
    let upload: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let mut w = c.w.take().unwrap();
    let to_send = upload.clone();
    let writer = tokio::spawn(async move {
        for (i, chunk) in to_send.chunks(100 * 1024).enumerate() {
            let last = (i + 1) * 100 * 1024 >= to_send.len();
            let mut f = 3u32.to_be_bytes().to_vec();
            f.extend_from_slice(&((u32::from(last) << 24) | chunk.len() as u32).to_be_bytes());
            f.extend_from_slice(chunk);
            w.write_all(&f).await.unwrap();
        }
        w
    });
    c.until_closed(&[1, 3]).await;
    let _w = writer.await.unwrap();
    assert!(
        c.streams[&1].data.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&c.streams[&1].data)
    );
    assert_eq!(c.streams[&3].data.len(), upload.len());
    assert!(c.streams[&3].data == upload, "echo intact");
    drop(c);
    drop(_w);
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

// ---- real kubectl against a stub API server ----

/// Reads an HTTP/1.1 request head byte by byte (so nothing after it is consumed).
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn respond(s: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(r.as_bytes()).await;
    let _ = s.shutdown().await;
}

const API_RESOURCES: &str = r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"v1","resources":[
 {"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},
 {"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#;
const POD: &str = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x","namespace":"default","uid":"pod-uid-3"},
 "spec":{"containers":[{"name":"c","image":"busybox","ports":[{"containerPort":8080}]}]},
 "status":{"phase":"Running"}}"#;

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn stub_connection(mut s: tokio::net::TcpStream, netns: PathBuf, log: Log) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let upgrade = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("upgrade: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    log.lock().unwrap().push(format!(
        "{} upgrade={upgrade}",
        head.lines().next().unwrap_or_default()
    ));
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let path = request_line.split(' ').nth(1).unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/api" => {
            respond(
                &mut s,
                "200 OK",
                r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#,
            )
            .await
        }
        "/apis" => {
            respond(
                &mut s,
                "200 OK",
                r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#,
            )
            .await
        }
        "/api/v1" => respond(&mut s, "200 OK", API_RESOURCES).await,
        "/api/v1/namespaces/default/pods/x" => respond(&mut s, "200 OK", POD).await,
        "/api/v1/namespaces/default/pods/x/portforward" => {
            let lower = head.to_ascii_lowercase();
            if !(lower.contains("upgrade: spdy/3.1")
                && lower.contains("x-stream-protocol-version: portforward.k8s.io"))
            {
                respond(&mut s, "400 Bad Request", r#"{"kind":"Status"}"#).await;
                return;
            }
            let mut r = String::from("HTTP/1.1 101 Switching Protocols\r\n");
            for (k, v) in skiff_node_agent::portforward::upgrade_response_headers() {
                r.push_str(&format!("{k}: {v}\r\n"));
            }
            r.push_str("\r\n");
            if s.write_all(r.as_bytes()).await.is_err() {
                return;
            }
            let _ = serve_spdy(s, netns, "pod-uid-3".into(), vec![]).await;
        }
        _ => respond(&mut s, "404 Not Found", r#"{"kind":"Status","code":404}"#).await,
    }
}

/// Kills kubectl (by its PID) on drop.
struct Kubectl(Child);

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `kubectl port-forward pod/x :8080 :8081` against a stub API server whose
/// `pods/portforward` upgrades to SPDY/3.1 and calls `serve_spdy`; returns the stub's log.
async fn kubectl_port_forward(ns: &Netns, websockets: &str) -> Vec<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let netns = ns.path();
    let requests = Log::default();
    let stub_log = requests.clone();
    let stub = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(stub_connection(s, netns.clone(), stub_log.clone()));
        }
    });

    let home = tempfile::tempdir().unwrap();
    let child = Command::new("kubectl")
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("none"))
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
        .arg(format!("--server=http://{api}"))
        .args(["port-forward", "pod/x", ":8080", ":8081"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kubectl = Kubectl(child);
    let stdout = kubectl.0.stdout.take().unwrap();
    let stderr = kubectl.0.stderr.take().unwrap();
    let stderr_log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log = stderr_log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    // "Forwarding from 127.0.0.1:NNNNN -> 8080"
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let mut it = rest.split(" -> ");
                let local: u16 = it.next().unwrap().parse().unwrap();
                let remote: u16 = it.next().unwrap().trim().parse().unwrap();
                let _ = tx.send((remote, local));
            }
        }
    });
    let mut ports = HashMap::new();
    while ports.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((remote, local)) => {
                ports.insert(remote, local);
            }
            Err(_) => panic!(
                "kubectl did not start forwarding; stderr:\n{}",
                stderr_log.lock().unwrap()
            ),
        }
    }

    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", ports[&8080]))
            .await
            .unwrap();
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut resp))
            .await
            .expect("response in time")
            .unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(
            resp.ends_with("<html>kubectl through skiff</html>\n"),
            "{resp}"
        );
    }

    // A refused port: kubectl reports the error stream's text.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", ports[&8081]))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut buf)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = stderr_log.lock().unwrap().clone();
        if log.contains("error forwarding port 8081 to pod pod-uid-3")
            && log.contains("connection refused")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl did not report the refused port; stderr:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(kubectl);
    stub.abort();
    let requests = requests.lock().unwrap().clone();
    eprintln!("stub requests: {requests:#?}");
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_port_forward() {
    if !can_run() {
        return;
    }
    if Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("skipping: no kubectl");
        return;
    }
    let mut ns = Netns::new("k");
    ns.start_httpd(&[("index.html", b"<html>kubectl through skiff</html>\n")]);
    wait_listening(ns.path(), 8080).await;

    // SPDY only.
    let log = kubectl_port_forward(&ns, "false").await;
    assert!(log.iter().any(
        |l| l.starts_with("POST /api/v1/namespaces/default/pods/x/portforward")
            && l.ends_with("upgrade=spdy/3.1")
    ));
    assert!(!log.iter().any(|l| l.ends_with("upgrade=websocket")));

    // kubectl's default tries a WebSocket (tunnelling SPDY) first and falls back to SPDY/3.1
    // when the upgrade is refused (here: 400).
    let log = kubectl_port_forward(&ns, "true").await;
    let ws = log
        .iter()
        .position(|l| l.contains("/portforward") && l.ends_with("upgrade=websocket"));
    let spdy = log
        .iter()
        .position(|l| l.contains("/portforward") && l.ends_with("upgrade=spdy/3.1"));
    assert!(
        matches!((ws, spdy), (Some(w), Some(s)) if w < s),
        "{log:#?}"
    );
}
