//! `skiff apiserver` authentication and authorization (client certificates, bearer tokens,
//! anonymous requests, `--authorization-mode`) and its answers to bad input, over real HTTPS
//! with curl and kubectl.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::process::Command;

use apiserver::{ADMIN_TOKEN, ApiHome, Backend, DEV_TOKEN, bearer, client_pki, status_of};
use common::skiff_bin;
use serde_json::Value;

fn client_certificates_tokens_anonymous_and_authorization(store: &Backend) {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, jane_crt, jane_key) = client_pki(pki.path(), "jane", "jane", &["dev", "ops"]);
    let (_, rogue_crt, rogue_key) = client_pki(pki.path(), "rogue", "mallory", &["system:masters"]);
    let ca_arg = ca.to_string_lossy().into_owned();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &["--client-ca-file", &ca_arg]);

    eprintln!("--- kubectl with a client certificate (no token)");
    let kubeconfig = home.path().join("jane.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: jane\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: s\n  context: {{cluster: s, user: jane}}\ncurrent-context: s\n",
            api.url(""),
            api.ca().display(),
            jane_crt.display(),
            jane_key.display()
        ),
    )
    .expect("kubeconfig");
    let out = api.kubectl(
        &kubeconfig,
        &[
            "create",
            "configmap",
            "by-jane",
            "-n",
            "default",
            "--from-literal=a=b",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", api.log());
    let out = api.kubectl(&kubeconfig, &["get", "configmap", "by-jane", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/by-jane\n",
        "{out:?}"
    );

    let jane = [
        "--cert",
        &jane_crt.to_string_lossy(),
        "--key",
        &jane_key.to_string_lossy(),
    ]
    .map(str::to_string);
    let jane: Vec<&str> = jane.iter().map(String::as_str).collect();
    let resp = api.curl(&jane, "/api/v1/namespaces/default/configmaps/by-jane");
    assert_eq!((resp.0, resp.1["data"]["a"].as_str()), (200, Some("b")));

    eprintln!("--- a certificate from another CA is refused in the handshake");
    let rogue = [
        "--cert",
        &rogue_crt.to_string_lossy(),
        "--key",
        &rogue_key.to_string_lossy(),
    ]
    .map(str::to_string);
    let rogue: Vec<&str> = rogue.iter().map(String::as_str).collect();
    assert_eq!(api.curl(&rogue, "/api/v1/namespaces").0, 0);

    eprintln!("--- tokens: right → 200, wrong → 401 Status, none → 401 Status");
    assert_eq!(
        api.curl(&["-H", &bearer(ADMIN_TOKEN)], "/api/v1/namespaces")
            .0,
        200
    );
    let wrong = api.curl(&["-H", &bearer("wrong")], "/api/v1/namespaces");
    assert_eq!(status_of(&wrong), (401, "Unauthorized"));
    let none = api.curl(&[], "/api/v1/namespaces");
    assert_eq!(status_of(&none), (401, "Unauthorized"));
    let empty = home.path().join("empty.kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").expect("kubeconfig");
    let (server, ca_flag) = (
        api.url(""),
        format!("--certificate-authority={}", api.ca().display()),
    );
    let out = api.kubectl(
        &empty,
        &[
            "--server", &server, &ca_flag, "--token", "wrong", "get", "ns",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{out:?}"
    );
    // Health stays open; the server still serves.
    assert_eq!(api.curl(&[], "/healthz").0, 200);
    assert_eq!(api.curl(&jane, "/api/v1/namespaces").0, 200);

    eprintln!("--- --anonymous-auth=true with --authorization-mode AlwaysDeny: 403 for everyone");
    let deny = home.start(
        &store.endpoints(),
        &[
            "--anonymous-auth=true",
            "--authorization-mode",
            "AlwaysDeny",
        ],
    );
    let anon = deny.curl(&[], "/api/v1/namespaces");
    assert_eq!(status_of(&anon), (403, "Forbidden"));
    let message = anon.1["message"].as_str().unwrap_or("");
    assert!(
        message.contains("system:anonymous") && message.contains("list"),
        "{message}"
    );
    let admin = deny.curl(&["-H", &bearer(ADMIN_TOKEN)], "/api/v1/namespaces/default");
    assert_eq!(status_of(&admin), (403, "Forbidden"));
    assert!(
        admin.1["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"admin\" cannot get")
    );
    // A wrong token is still 401 even where anonymous requests are allowed.
    assert_eq!(
        status_of(&deny.curl(&["-H", &bearer("wrong")], "/api")),
        (401, "Unauthorized")
    );

    eprintln!("--- --anonymous-auth=true with AlwaysAllow: anonymous reads work");
    let open = home.start(&store.endpoints(), &["--anonymous-auth=true"]);
    assert_eq!(open.curl(&[], "/api/v1/namespaces").0, 200);

    eprintln!("--- a bad --authorization-mode exits with code 2");
    let out = Command::new(skiff_bin())
        .args([
            "apiserver",
            "--authorization-mode",
            "Nope",
            "--secure-port",
            "0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Bad requests get the Status code and reason kube-apiserver gives them, and the server keeps
/// serving.
fn bad_input_gets_the_right_status(store: &Backend) {
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let post = |content_type: &str, body: &str, path: &str| {
        let file = home.path().join("body");
        std::fs::write(&file, body).expect("write body");
        let data = format!("@{}", file.display());
        let ct = format!("Content-Type: {content_type}");
        api.admin(&["-X", "POST", "-H", &ct, "--data-binary", &data], path)
    };
    let json = "application/json";
    let protobuf = "application/vnd.kubernetes.protobuf";
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"k":"{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    let cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        (
            "malformed JSON",
            post(json, r#"{"apiVersion": "v1", "kind": "#, CMS),
            400,
            "BadRequest",
        ),
        ("a JSON array", post(json, "[1, 2]", CMS), 400, "BadRequest"),
        (
            "protobuf without the k8s envelope",
            post(protobuf, "not protobuf at all", CMS),
            400,
            "BadRequest",
        ),
        (
            "truncated protobuf (a field longer than the body)",
            post(protobuf, "k8s\0\x0a\x7f\x0a\x02v1", CMS),
            400,
            "BadRequest",
        ),
        (
            "a field of the wrong type",
            post(
                json,
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"t"},"data":{"a":1}}"#,
                CMS,
            ),
            400,
            "BadRequest",
        ),
        (
            "an unknown field under fieldValidation=Strict",
            post(
                json,
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"s"},"bogus":1}"#,
                &format!("{CMS}?fieldValidation=Strict"),
            ),
            400,
            "BadRequest",
        ),
        (
            "an invalid name",
            post(
                json,
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
                CMS,
            ),
            422,
            "Invalid",
        ),
        (
            "a kind that does not match the URL",
            post(
                json,
                r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"k"}}"#,
                CMS,
            ),
            400,
            "BadRequest",
        ),
        (
            "malformed YAML",
            post(
                "application/yaml",
                "apiVersion: v1\nkind: [ConfigMap\nmetadata: }",
                CMS,
            ),
            400,
            "BadRequest",
        ),
        (
            "YAML with a field of the wrong type",
            post(
                "application/yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: wrong-type}\ndata: {a: [1]}\n",
                CMS,
            ),
            400,
            "BadRequest",
        ),
        (
            "an unsupported media type",
            post("text/plain", "hello", CMS),
            415,
            "UnsupportedMediaType",
        ),
        (
            "a body over 3 MiB",
            post(json, &big, CMS),
            413,
            "RequestEntityTooLarge",
        ),
        (
            "an unknown resource",
            api.admin(&[], "/api/v1/namespaces/default/widgets"),
            404,
            "NotFound",
        ),
        (
            "a wrong token",
            api.curl(&["-H", &bearer("wrong")], CMS),
            401,
            "Unauthorized",
        ),
        ("no credentials", api.curl(&[], CMS), 401, "Unauthorized"),
    ];
    let mut failures = Vec::new();
    for (what, resp, code, reason) in &cases {
        let got = (resp.0, resp.1["kind"].as_str(), resp.1["reason"].as_str());
        if got != (*code, Some("Status"), Some(*reason)) {
            failures.push(format!(
                "{what}: want {code} {reason}, got {got:?}: {}",
                resp.1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let find = |what: &str| &cases.iter().find(|c| c.0 == what).expect("case").1.1;
    let strict = &find("an unknown field under fieldValidation=Strict")["message"];
    assert!(
        strict
            .as_str()
            .unwrap_or("")
            .contains(r#"unknown field "bogus""#),
        "{strict}"
    );
    let limit = &find("a body over 3 MiB")["message"];
    assert_eq!(limit, "Request entity too large: limit is 3145728");

    let yaml = post(
        "application/yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n",
        CMS,
    );
    assert_eq!(
        (yaml.0, yaml.1["data"]["k"].as_str()),
        (201, Some("v")),
        "{yaml:?}"
    );
    // Without Strict an unknown field is dropped; the server still serves.
    let ok = post(
        json,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"lax"},"bogus":1}"#,
        CMS,
    );
    assert_eq!(ok.0, 201, "{ok:?}");
    assert_eq!(ok.1.get("bogus"), None);
    let list = api.admin(&[], CMS);
    assert_eq!(list.0, 200);
    assert_eq!(
        list.1["items"].as_array().map(Vec::len),
        Some(2),
        "only the valid objects were stored: {}",
        list.1
    );

    // Status bodies are kube-apiserver's bytes (some clients compare them): Go's field order,
    // `metadata: {}`, no empty `group`, a trailing newline. (As the Python client: for a
    // curl user agent kube-apiserver would pretty-print.)
    let raw = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "--cacert"])
            .arg(api.ca())
            .args(["-A", "OpenAPI-Generator/33.1.0/python"])
            .args(["-H", &bearer(ADMIN_TOKEN)])
            .arg(api.url(path))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        raw(&format!("{CMS}/nope")),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
         \"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
         \"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );
    assert_eq!(
        raw("/apis/apps/v1/namespaces/default/deployments/nope"),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
         \"message\":\"deployments.apps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
         \"details\":{\"name\":\"nope\",\"group\":\"apps\",\"kind\":\"deployments\"},\"code\":404}\n"
    );
    assert_eq!(
        raw("/api/v1/namespaces/default/widgets"),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
         \"message\":\"the server could not find the requested resource\",\"reason\":\"NotFound\",\
         \"details\":{},\"code\":404}\n"
    );
    // `/version/` answers as `/version` (the Python client's VersionApi asks for it).
    let version = api.admin(&[], "/version/");
    assert_eq!(
        (version.0, version.1["gitVersion"].as_str()),
        (200, Some("v1.33.0")),
        "{version:?}"
    );
}

/// Issue 11: a malformed selector is 400 BadRequest with apimachinery's parse error and touches
/// nothing (a DELETE with one deleted every object before); a write the store refuses for its
/// size is 413 RequestEntityTooLarge, not a retryable 503 with gRPC text; a JSON patch of more
/// than 10,000 operations is kube-apiserver's 413; and the server keeps serving.
fn malformed_selectors_and_oversized_writes(store: &Backend) {
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let send_file = |method: &str, content_type: &str, body: &str, path: &str| {
        let file = home.path().join("body");
        std::fs::write(&file, body).expect("write body");
        let data = format!("@{}", file.display());
        let ct = format!("Content-Type: {content_type}");
        api.admin(&["-X", method, "-H", &ct, "--data-binary", &data], path)
    };
    let names = || -> Vec<String> {
        let list = api.admin(&[], CMS);
        assert_eq!(list.0, 200, "{list:?}");
        let mut names: Vec<String> = list.1["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    };
    for (name, app) in [("a", "one"), ("b", "two"), ("c", "")] {
        let mut labels = serde_json::json!({"tier": "x"});
        if !app.is_empty() {
            labels["app"] = app.into();
        }
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels}});
        let created = api.send("POST", CMS, &cm);
        assert_eq!(created.0, 201, "{created:?}");
    }
    let all = ["a", "b", "c"];

    // The exact inputs of the issue, and others upstream rejects, on DELETE and on list.
    let cases = [
        (
            "labelSelector=!!app",
            "unable to parse requirement: found '!', expected: identifier",
        ),
        (
            "labelSelector=!",
            "unable to parse requirement: found '', expected: identifier",
        ),
        (
            "labelSelector=,,,",
            "found ',', expected: !, identifier, or 'end of string'",
        ),
        (
            "labelSelector=(((!!!==,,in",
            "found '(', expected: !, identifier, or 'end of string'",
        ),
        (
            "labelSelector=app%3Done,",
            "found '', expected: identifier after ','",
        ),
        (
            "labelSelector=app+in+one",
            "unable to parse requirement: found 'one' expected: '('",
        ),
        (
            "fieldSelector=metadata.name",
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
        ),
        (
            "fieldSelector=metadata.name%3Da%3Db",
            "invalid field selector: unescaped character in value: 61",
        ),
    ];
    for (query, message) in cases {
        for method in ["DELETE", "GET"] {
            let resp = api.admin(&["-X", method], &format!("{CMS}?{query}"));
            assert_eq!(status_of(&resp), (400, "BadRequest"), "{method} {query}");
            assert_eq!(resp.1["message"], message, "{method} {query}");
        }
        assert_eq!(names(), all, "nothing deleted by {query}");
    }
    // Invalid UTF-8 in a selector (percent-encoded) is a 400 too.
    for query in [
        "labelSelector=%FF",
        "labelSelector=app%3D%C3",
        "fieldSelector=metadata.name%3D%FF",
    ] {
        for method in ["DELETE", "GET"] {
            let resp = api.admin(&["-X", method], &format!("{CMS}?{query}"));
            assert_eq!(status_of(&resp), (400, "BadRequest"), "{method} {query}");
        }
    }
    let watch = api.admin(&[], &format!("{CMS}?watch=true&labelSelector=!!app"));
    assert_eq!(status_of(&watch), (400, "BadRequest"));
    assert_eq!(names(), all);
    // Well-formed selectors still select.
    let some = api.admin(
        &[],
        &format!("{CMS}?labelSelector=app+in+(one,two),tier%3Dx"),
    );
    assert_eq!(
        some.1["items"].as_array().map(Vec::len),
        Some(2),
        "{some:?}"
    );
    let none = api.admin(&[], &format!("{CMS}?labelSelector=!app"));
    assert_eq!(
        none.1["items"].as_array().map(Vec::len),
        Some(1),
        "{none:?}"
    );
    let deleted = api.admin(&["-X", "DELETE"], &format!("{CMS}?labelSelector=app%3Dtwo"));
    assert_eq!(deleted.0, 200, "{deleted:?}");
    assert_eq!(names(), ["a", "c"]);

    // Objects over the store's request limit (1.5 MiB by default, as etcd's
    // --max-request-bytes): just over it (the store's own check) and just under the 3 MiB body
    // limit (over the gRPC message limit in front of the store).
    for (what, size) in [("1.8 MiB", 1_800_000), ("2.9 MiB", 2_900_000)] {
        let big = |name: &str, rv: Option<&str>| {
            let mut cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name}, "data": {"k": "x".repeat(size)}});
            if let Some(rv) = rv {
                cm["metadata"]["resourceVersion"] = rv.into();
            }
            cm.to_string()
        };
        let json = "application/json";
        let created = send_file("POST", json, &big("big", None), CMS);
        assert_eq!(
            status_of(&created),
            (413, "RequestEntityTooLarge"),
            "create {what}"
        );
        assert_eq!(
            created.1["message"], "Request entity too large: etcdserver: request is too large",
            "create {what}"
        );
        let a = api.admin(&[], &format!("{CMS}/a"));
        let rv = a.1["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_string();
        let updated = send_file("PUT", json, &big("a", Some(&rv)), &format!("{CMS}/a"));
        assert_eq!(
            status_of(&updated),
            (413, "RequestEntityTooLarge"),
            "update {what}"
        );
        let patch = serde_json::json!({"data": {"k": "x".repeat(size)}}).to_string();
        let patched = send_file(
            "PATCH",
            "application/merge-patch+json",
            &patch,
            &format!("{CMS}/a"),
        );
        assert_eq!(
            status_of(&patched),
            (413, "RequestEntityTooLarge"),
            "patch {what}"
        );
        // Nothing was written, and the server still serves.
        assert_eq!(names(), ["a", "c"], "after {what}");
        let same = api.admin(&[], &format!("{CMS}/a"));
        assert_eq!(same.1["metadata"]["resourceVersion"], rv.as_str());
    }

    // JSON patch: 10,000 operations are allowed, 10,001 are kube-apiserver's 413.
    let ops = |n: usize| {
        let op = r#"{"op":"test","path":"/metadata/name","value":"a"}"#;
        format!("[{}]", vec![op; n].join(","))
    };
    let json_patch = "application/json-patch+json";
    let ok = send_file("PATCH", json_patch, &ops(10_000), &format!("{CMS}/a"));
    assert_eq!(ok.0, 200, "{:?}", ok.1["message"]);
    let over = send_file("PATCH", json_patch, &ops(10_001), &format!("{CMS}/a"));
    assert_eq!(status_of(&over), (413, "RequestEntityTooLarge"));
    assert_eq!(
        over.1["message"],
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got \
         10001"
    );
    let small = api.send(
        "POST",
        CMS,
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}),
    );
    assert_eq!(small.0, 201, "{small:?}");
    assert_eq!(names(), ["a", "c", "d"]);
}

/// `--max-mutating-requests-inflight`: a write beyond the limit is 429 TooManyRequests (with
/// `retryAfterSeconds`) while reads, watches and `system:masters` go on; once the slot frees,
/// writes are served again.
fn too_many_requests_in_flight(store: &Backend) {
    use std::io::Write as _;
    let home = ApiHome::new();
    let api = home.start(
        &store.endpoints(),
        &["--max-mutating-requests-inflight", "1"],
    );
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let dev = bearer(DEV_TOKEN);
    let create = |auth: &str, name: &str| {
        let body =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
        let args = [
            "-H",
            auth,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ];
        let mut all = args.to_vec();
        all.extend(["--data-binary", &body]);
        api.curl(&all, CMS)
    };

    eprintln!("--- a create whose body is still arriving holds the one write slot");
    let mut holder = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(api.ca())
        .args([
            "-H",
            &dev,
            "-H",
            "Content-Type: application/json",
            "-H",
            "Expect:",
        ])
        .args(["-X", "POST", "-T", "-", "-w", "\n%{http_code}"])
        .arg(api.url(CMS))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut stdin = holder.stdin.take().expect("piped");
    stdin
        .write_all(br#"{"apiVersion":"v1","kind":"ConfigMap","#)
        .expect("first half of the body");
    stdin.flush().expect("flush");
    // The server's in-flight gauge says when the held create has the slot.
    let started = std::time::Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let metrics = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(api.ca())
            .args(["-H", &bearer(ADMIN_TOKEN)])
            .arg(api.url("/metrics"))
            .output()
            .expect("curl /metrics");
        let text = String::from_utf8_lossy(&metrics.stdout);
        if text
            .lines()
            .any(|l| l == r#"apiserver_current_inflight_requests{request_kind="mutating"} 1"#)
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the held create never showed as in flight:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("the held create was in flight after {polls} poll(s) of /metrics");
    let refused = create(&dev, "refused");
    assert_eq!(status_of(&refused), (429, "TooManyRequests"));
    assert_eq!(refused.1["details"]["retryAfterSeconds"], 1, "{refused:?}");
    // Reads have their own pool; system:masters is not limited.
    assert_eq!(api.curl(&["-H", &dev], CMS).0, 200);
    assert_eq!(create(&bearer(ADMIN_TOKEN), "by-admin").0, 201);

    eprintln!("--- the held create completes; writes are served again");
    stdin
        .write_all(br#""metadata":{"name":"held"}}"#)
        .expect("rest of the body");
    drop(stdin);
    let out = holder.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n201"), "{text}");
    assert_eq!(create(&dev, "after").0, 201);
    let names: Vec<String> = api.admin(&[], CMS).1["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, ["after", "by-admin", "held"]);
}

// Each scenario runs on a skiff store and on real etcd (issue 6 acceptance).

#[test]
fn too_many_requests_in_flight_on_a_skiff_store() {
    too_many_requests_in_flight(&Backend::skiff());
}

#[test]
fn too_many_requests_in_flight_on_real_etcd() {
    too_many_requests_in_flight(&Backend::etcd());
}

#[test]
fn client_certificates_tokens_anonymous_and_authorization_on_a_skiff_store() {
    client_certificates_tokens_anonymous_and_authorization(&Backend::skiff());
}

#[test]
fn client_certificates_tokens_anonymous_and_authorization_on_real_etcd() {
    client_certificates_tokens_anonymous_and_authorization(&Backend::etcd());
}

#[test]
fn bad_input_gets_the_right_status_on_a_skiff_store() {
    bad_input_gets_the_right_status(&Backend::skiff());
}

#[test]
fn bad_input_gets_the_right_status_on_real_etcd() {
    bad_input_gets_the_right_status(&Backend::etcd());
}

#[test]
fn malformed_selectors_and_oversized_writes_on_a_skiff_store() {
    malformed_selectors_and_oversized_writes(&Backend::skiff());
}

#[test]
fn malformed_selectors_and_oversized_writes_on_real_etcd() {
    malformed_selectors_and_oversized_writes(&Backend::etcd());
}
