//! `skiff apiserver` security features that operators check from outside: Secrets encrypted at
//! rest (`--encryption-provider-config`, read back raw with etcdctl, key rotation by re-writing)
//! and the audit log (`--audit-log-path`, `--audit-policy-file`), over real HTTPS with curl and
//! kubectl, on a skiff store and on real etcd.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ADMIN_TOKEN, ApiHome, ApiServer, Backend, DEV_TOKEN, bearer};
use common::{etcdctl, skiff_bin};
use serde_json::{Value, json};

/// The secret's value in plain text and as the object's `data` holds it (base64).
const PLAINTEXT: &str = "s3cr3t-plaintext-value";
const PLAINTEXT_B64: &str = "czNjcjN0LXBsYWludGV4dC12YWx1ZQ==";
/// Two 32-byte keys, base64.
const KEY1: &str = "BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=";
const KEY2: &str = "Dg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0=";

/// An EncryptionConfiguration for secrets with these providers (YAML list items).
fn encryption_config(dir: &Path, name: &str, providers: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets]\n  providers:\n{providers}"
        ),
    )
    .expect("write encryption config");
    path.to_string_lossy().into_owned()
}

fn provider(kind: &str, key_name: &str, secret: &str) -> String {
    format!("  - {kind}:\n      keys:\n      - name: {key_name}\n        secret: {secret}\n")
}

/// The raw stored value of `key`, as an operator reads it with etcdctl.
fn raw(store: &Backend, key: &str) -> Vec<u8> {
    let out = etcdctl(&store.endpoints(), &["get", key, "--print-value-only"]);
    assert!(out.status.success(), "etcdctl get {key}: {out:?}");
    out.stdout
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn create_secret(api: &ApiServer, name: &str) {
    let created = api.send(
        "POST",
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "data": {"password": PLAINTEXT_B64}}),
    );
    assert_eq!(created.0, 201, "{created:?}\n{}", api.log());
}

fn assert_reads_plaintext(api: &ApiServer, name: &str) {
    let got = api.admin(&[], &format!("/api/v1/namespaces/default/secrets/{name}"));
    assert_eq!(got.0, 200, "{got:?}");
    assert_eq!(got.1["data"]["password"], PLAINTEXT_B64, "{got:?}");
}

fn secrets_are_encrypted_at_rest(store: &Backend) {
    let home = ApiHome::new();
    let dir = home.path();
    let all_key1 = format!(
        "{}{}{}",
        provider("aescbc", "key1", KEY1),
        provider("aesgcm", "key1", KEY1),
        provider("secretbox", "key1", KEY1)
    );
    // Before encryption: a Secret stored as plaintext.
    let mut api = home.start(&store.endpoints(), &[]);
    create_secret(&api, "before");
    assert!(contains(
        &raw(store, "/registry/secrets/default/before"),
        PLAINTEXT_B64
    ));
    api.kill9();

    // Each provider first in turn (all three listed, so every earlier Secret stays readable).
    for kind in ["aescbc", "aesgcm", "secretbox"] {
        eprintln!("--- {kind} writes");
        let providers = format!(
            "{}{all_key1}  - identity: {{}}\n",
            provider(kind, "key1", KEY1)
        );
        let config = encryption_config(dir, &format!("{kind}.yaml"), &providers);
        let api = home.start(
            &store.endpoints(),
            &["--encryption-provider-config", &config],
        );
        let name = format!("by-{kind}");
        create_secret(&api, &name);
        let value = raw(store, &format!("/registry/secrets/default/{name}"));
        let prefix = format!("k8s:enc:{kind}:v1:key1:");
        assert!(
            value.starts_with(prefix.as_bytes()),
            "{kind}: {:?}",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
        assert!(!contains(&value, PLAINTEXT_B64) && !contains(&value, PLAINTEXT));
        assert!(
            !contains(&value, "password"),
            "{kind}: field names are encrypted too"
        );
        assert_reads_plaintext(&api, &name);
        // Plaintext from before encryption reads through `identity`.
        assert_reads_plaintext(&api, "before");
        // Other kinds are not configured: still plain JSON.
        let cm = api.send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": format!("cm-{kind}")}, "data": {"k": "visible"}}),
        );
        assert_eq!(cm.0, 201, "{cm:?}");
        assert!(contains(
            &raw(store, &format!("/registry/configmaps/default/cm-{kind}")),
            "visible"
        ));
    }

    eprintln!("--- lists and watches decrypt");
    let config = encryption_config(dir, "read.yaml", &format!("{all_key1}  - identity: {{}}\n"));
    let api = home.start(
        &store.endpoints(),
        &["--encryption-provider-config", &config],
    );
    let list = api.admin(&[], "/api/v1/namespaces/default/secrets");
    let items = list.1["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 4, "{list:?}");
    assert!(
        items.iter().all(|s| s["data"]["password"] == PLAINTEXT_B64),
        "{list:?}"
    );
    let watch = Command::new("curl")
        .args(["-s", "--max-time", "3", "--cacert"])
        .arg(api.ca())
        .args(["-H", &bearer(ADMIN_TOKEN)])
        .arg(api.url("/api/v1/namespaces/default/secrets?watch=true&resourceVersion=0"))
        .output()
        .expect("curl");
    let events = String::from_utf8_lossy(&watch.stdout);
    assert_eq!(events.matches(PLAINTEXT_B64).count(), 4, "{events}");
    drop(api);

    eprintln!("--- rotation: a new first key, then every Secret re-written");
    let config = encryption_config(
        dir,
        "rotated.yaml",
        &format!(
            "{}{all_key1}  - identity: {{}}\n",
            provider("aescbc", "key2", KEY2)
        ),
    );
    let api = home.start(
        &store.endpoints(),
        &["--encryption-provider-config", &config],
    );
    let kubeconfig = dir.join("admin.kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let all = api.kubectl(&kubeconfig, &["get", "secrets", "-A", "-o", "json"]);
    assert!(all.status.success(), "{all:?}");
    // `--validate=false`: kubectl validates a `List` on the client against /openapi/v2, which
    // this server does not serve (single objects use server-side validation).
    let mut replace = Command::new("kubectl")
        .args(["replace", "--validate=false", "-f", "-"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl replace");
    replace
        .stdin
        .take()
        .expect("stdin")
        .write_all(&all.stdout)
        .expect("write");
    let replaced = replace.wait_with_output().expect("kubectl replace");
    assert!(replaced.status.success(), "{replaced:?}\n{}", api.log());
    for name in ["before", "by-aescbc", "by-aesgcm", "by-secretbox"] {
        let value = raw(store, &format!("/registry/secrets/default/{name}"));
        assert!(
            value.starts_with(b"k8s:enc:aescbc:v1:key2:"),
            "{name}: {:?}",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
        assert_reads_plaintext(&api, name);
    }
    drop(api);

    eprintln!("--- without the keys: a clear 500, not a crash and not ciphertext");
    let config = encryption_config(dir, "identity.yaml", "  - identity: {}\n");
    let api = home.start(
        &store.endpoints(),
        &["--encryption-provider-config", &config],
    );
    let got = api.admin(&[], "/api/v1/namespaces/default/secrets/before");
    assert_eq!(got.0, 500, "{got:?}");
    assert_eq!(got.1["reason"], "InternalError", "{got:?}");
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/registry/secrets/default/before")
            && message.contains("identity transformer tried to read encrypted data"),
        "{got:?}"
    );
    let ready = api.admin(&[], "/readyz");
    assert_eq!(ready.0, 200);
}

/// Runs `skiff apiserver` with `args` expecting a startup failure; returns (exit code, stderr).
fn startup_failure(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(skiff_bin())
        .arg("apiserver")
        .args([
            "--etcd-servers",
            "127.0.0.1:1",
            "--bind-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &common::free_port().to_string()])
        .arg("--cert-dir")
        .arg(dir.path().join("certs"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff apiserver");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("skiff apiserver {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_encryption_and_audit_files_stop_the_server_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = encryption_config(
        dir.path(),
        "short.yaml",
        &provider("aescbc", "key1", "c2hvcnQ="),
    );
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbs: {keys: []}\n",
    )
    .expect("write");
    let typo = typo.to_string_lossy().into_owned();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n",
    )
    .expect("write");
    let policy = policy.to_string_lossy().into_owned();
    let log = dir.path().join("audit.log").to_string_lossy().into_owned();
    // A log "directory" that is a file.
    let blocked = dir.path().join("policy.yaml/audit.log");
    let blocked = blocked.to_string_lossy().into_owned();
    let cases: [(Vec<&str>, &[&str]); 6] = [
        (
            vec!["--encryption-provider-config", &short],
            &[
                "short.yaml",
                "aescbc.keys[0].secret",
                "expected length, got 5",
            ],
        ),
        (
            vec!["--encryption-provider-config", &typo],
            &["typo.yaml", "aescbs"],
        ),
        (
            vec!["--encryption-provider-config", "/nonexistent/enc.yaml"],
            &["/nonexistent/enc.yaml"],
        ),
        (
            vec!["--audit-log-path", &log, "--audit-policy-file", &policy],
            &["--audit-policy-file", "policy.yaml", "Everything"],
        ),
        (
            vec!["--audit-log-path", &blocked],
            &["--audit-log-path", "policy.yaml/audit.log"],
        ),
        (
            vec!["--audit-policy-file", &policy],
            &["--audit-policy-file needs --audit-log-path"],
        ),
    ];
    for (args, wanted) in cases {
        let (code, stderr) = startup_failure(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        for want in wanted {
            assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
        }
        assert!(
            !stderr.contains(KEY1) && !stderr.contains("c2hvcnQ="),
            "{stderr}"
        );
    }
}

/// The audit log's events, once at least `until` holds (the writer is asynchronous).
fn audit_events(path: &Path, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // The writer may be in the middle of a line: only whole (newline-ended) lines count.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let events: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect();
        if until(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "audit log incomplete: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of requests sent with user agent `agent`.
fn by_agent<'a>(events: &'a [Value], agent: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["userAgent"] == agent).collect()
}

fn complete<'a>(events: &'a [Value], agent: &str) -> Vec<&'a Value> {
    by_agent(events, agent)
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect()
}

/// One request of the audit test, told apart in the log by its user agent.
struct Probe {
    agent: String,
    args: Vec<String>,
    path: String,
    verb: &'static str,
    code: u64,
    user: &'static str,
}

impl Probe {
    fn get(
        n: u32,
        auth: &str,
        path: &str,
        verb: &'static str,
        code: u64,
        user: &'static str,
    ) -> Probe {
        Probe {
            agent: format!("audit-test-{n}"),
            args: vec!["-H".into(), auth.into()],
            path: path.into(),
            verb,
            code,
            user,
        }
    }

    fn post(n: u32, auth: &str, path: &str, body: &Value, user: &'static str) -> Probe {
        Probe {
            args: [
                "-H",
                auth,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            ..Probe::get(n, auth, path, "create", 201, user)
        }
    }
}

fn audit_log_records_every_request(store: &Backend) {
    let home = ApiHome::new();
    let log = home.path().join("audit/audit.log");
    let log_arg = log.to_string_lossy().into_owned();
    let api = home.start(&store.endpoints(), &["--audit-log-path", &log_arg]);
    let cms = "/api/v1/namespaces/default/configmaps";
    let admin = bearer(ADMIN_TOKEN);
    let dev = bearer(DEV_TOKEN);
    let wrong = bearer("not-a-token-0123456789");
    let cm = json!({"metadata": {"name": "audited"}, "data": {"k": "value-not-logged"}});
    let secret = json!({"metadata": {"name": "s"}, "data": {"password": PLAINTEXT_B64}});
    let requests = [
        Probe::get(1, &admin, cms, "list", 200, "admin"),
        Probe::post(2, &admin, cms, &cm, "admin"),
        Probe::get(3, &dev, &format!("{cms}/missing"), "get", 404, "dev"),
        Probe::get(4, &wrong, cms, "list", 401, ""),
        Probe::get(5, &admin, "/version", "get", 200, "admin"),
        Probe::post(
            6,
            &admin,
            "/api/v1/namespaces/default/secrets",
            &secret,
            "admin",
        ),
    ];
    for probe in &requests {
        let mut args = vec!["-A", &probe.agent];
        args.extend(probe.args.iter().map(String::as_str));
        let got = api.curl(&args, &probe.path);
        assert_eq!(u64::from(got.0), probe.code, "{}: {got:?}", probe.agent);
    }
    let kubeconfig = home.path().join("admin.kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let out = api.kubectl(&kubeconfig, &["get", "configmaps", "-n", "default"]);
    assert!(out.status.success(), "{out:?}");
    // A watch: ResponseStarted when the stream starts, ResponseComplete when it ends.
    let watch = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "2",
            "-A",
            "audit-test-watch",
            "--cacert",
        ])
        .arg(api.ca())
        .args(["-H", &admin])
        .arg(api.url(&format!("{cms}?watch=true")))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&watch.stdout).contains("audited"));

    let events = audit_events(&log, |events| {
        requests
            .iter()
            .all(|p| complete(events, &p.agent).len() == 1)
            && events.iter().any(|e| {
                e["userAgent"].as_str().unwrap_or("").starts_with("kubectl")
                    && e["stage"] == "ResponseComplete"
                    && e["verb"] == "list"
            })
    });
    for Probe {
        agent,
        path,
        verb,
        code,
        user,
        ..
    } in &requests
    {
        let done = complete(&events, agent);
        assert_eq!(done.len(), 1, "{agent}: {done:?}");
        let e = done[0];
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["level"], "Metadata", "{e}");
        assert_eq!(e["verb"], *verb, "{e}");
        assert_eq!(e["requestURI"], *path, "{e}");
        assert_eq!(e["responseStatus"]["code"], *code, "{e}");
        assert_eq!(e["user"]["username"].as_str().unwrap_or(""), *user, "{e}");
        assert_eq!(e["sourceIPs"][0], "127.0.0.1", "{e}");
        assert!(
            e["auditID"].as_str().is_some_and(|id| id.len() == 36),
            "{e}"
        );
        assert!(e.get("requestObject").is_none() && e.get("responseObject").is_none());
        // The RequestReceived event of the same request (same auditID).
        let received: Vec<&Value> = by_agent(&events, agent)
            .into_iter()
            .filter(|r| r["stage"] == "RequestReceived")
            .collect();
        assert_eq!(received.len(), 1, "{agent}");
        assert_eq!(received[0]["auditID"], e["auditID"]);
    }
    let watch_events = audit_events(&log, |events| {
        !complete(events, "audit-test-watch").is_empty()
    });
    let stages: Vec<&Value> = by_agent(&watch_events, "audit-test-watch")
        .iter()
        .map(|e| &e["stage"])
        .collect();
    assert_eq!(
        stages,
        ["RequestReceived", "ResponseStarted", "ResponseComplete"],
        "{watch_events:?}"
    );
    assert_eq!(
        complete(&watch_events, "audit-test-watch")[0]["verb"],
        "watch"
    );
    let create = complete(&events, &requests[1].agent)[0];
    assert_eq!(
        create["objectRef"],
        json!({"resource": "configmaps", "namespace": "default", "name": "audited", "apiVersion": "v1"})
    );
    let missing = complete(&events, &requests[2].agent)[0];
    assert_eq!(missing["responseStatus"]["reason"], "NotFound", "{missing}");
    assert_eq!(missing["user"]["uid"], "2");
    assert!(
        complete(&events, &requests[4].agent)[0]
            .get("objectRef")
            .is_none()
    );

    let text = std::fs::read_to_string(&log).expect("audit log");
    for never in [
        ADMIN_TOKEN,
        DEV_TOKEN,
        "not-a-token-0123456789",
        "value-not-logged",
        PLAINTEXT_B64,
    ] {
        assert!(!text.contains(never), "{never:?} is in the audit log");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let metrics = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(api.ca())
        .args(["-H", &admin])
        .arg(api.url("/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("apiserver_audit_error_total{plugin=\"buffered\"} 0"),
        "{metrics}"
    );
}

fn audit_policy_decides_the_level(store: &Backend) {
    let home = ApiHome::new();
    let log = home.path().join("audit.log");
    let policy = home.path().join("policy.yaml");
    std::fs::write(
        &policy,
        r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/readyz", "/healthz*"]
- level: Metadata
  resources:
  - group: ""
    resources: [secrets]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
- level: Request
  userGroups: [system:masters]
"#,
    )
    .expect("write policy");
    let (log_arg, policy_arg) = (
        log.to_string_lossy().into_owned(),
        policy.to_string_lossy().into_owned(),
    );
    let api = home.start(
        &store.endpoints(),
        &[
            "--audit-log-path",
            &log_arg,
            "--audit-policy-file",
            &policy_arg,
        ],
    );
    let cm = json!({"metadata": {"name": "logged-cm"}, "data": {"k": "configmap-body-is-logged"}});
    let created = api.send("POST", "/api/v1/namespaces/default/configmaps", &cm);
    assert_eq!(created.0, 201, "{created:?}");
    create_secret(&api, "kept-secret");
    let ns = api.send(
        "POST",
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "audited-ns", "labels": {"team": "request-body"}}}),
    );
    assert_eq!(ns.0, 201, "{ns:?}");
    // Not logged at all.
    assert_eq!(api.admin(&[], "/readyz").0, 200);

    let events = audit_events(&log, |events| {
        events
            .iter()
            .any(|e| e["objectRef"]["name"] == "audited-ns")
    });
    assert!(
        events.iter().all(|e| e["stage"] == "ResponseComplete"),
        "RequestReceived is omitted: {events:?}"
    );
    assert!(
        events.iter().all(|e| e["requestURI"] != "/readyz"),
        "level None: {events:?}"
    );
    let find = |resource: &str, name: &str| -> &Value {
        events
            .iter()
            .find(|e| e["objectRef"]["resource"] == resource && e["objectRef"]["name"] == name)
            .unwrap_or_else(|| panic!("no event for {resource}/{name}: {events:?}"))
    };
    let cm_event = find("configmaps", "logged-cm");
    assert_eq!(cm_event["level"], "RequestResponse");
    assert_eq!(
        cm_event["requestObject"]["data"]["k"],
        "configmap-body-is-logged"
    );
    assert_eq!(
        cm_event["responseObject"]["data"]["k"],
        "configmap-body-is-logged"
    );
    assert!(
        cm_event["responseObject"]["metadata"]["uid"].is_string(),
        "{cm_event}"
    );
    let secret_event = find("secrets", "kept-secret");
    assert_eq!(secret_event["level"], "Metadata");
    assert!(secret_event.get("requestObject").is_none());
    let ns_event = find("namespaces", "audited-ns");
    assert_eq!(ns_event["level"], "Request");
    assert_eq!(
        ns_event["requestObject"]["metadata"]["labels"]["team"],
        "request-body"
    );
    assert!(ns_event.get("responseObject").is_none());
    let text = std::fs::read_to_string(&log).expect("audit log");
    assert!(!text.contains(PLAINTEXT_B64) && !text.contains(ADMIN_TOKEN));
}

#[test]
fn secrets_are_encrypted_at_rest_on_a_skiff_store() {
    secrets_are_encrypted_at_rest(&Backend::skiff());
}

#[test]
fn secrets_are_encrypted_at_rest_on_real_etcd() {
    secrets_are_encrypted_at_rest(&Backend::etcd());
}

#[test]
fn audit_log_records_every_request_on_a_skiff_store() {
    audit_log_records_every_request(&Backend::skiff());
}

#[test]
fn audit_log_records_every_request_on_real_etcd() {
    audit_log_records_every_request(&Backend::etcd());
}

#[test]
fn audit_policy_decides_the_level_on_a_skiff_store() {
    audit_policy_decides_the_level(&Backend::skiff());
}

#[test]
fn audit_policy_decides_the_level_on_real_etcd() {
    audit_policy_decides_the_level(&Backend::etcd());
}
