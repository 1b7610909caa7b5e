//! CNI plumbing: the pod CIDR, the conflist the agent owns, and running a plugin chain
//! (ADD in order with `prevResult` threaded through, DEL in reverse with the cached result).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{NetworkConfig, NetworkError, PortMapping};

/// The CNI network name in the conflist (host-local keeps its files in `dataDir/<name>/`).
pub const NETWORK_NAME: &str = "skiff";
/// The CNI spec version of the conflist.
pub const CNI_VERSION: &str = "0.4.0";
/// Plugin binaries that must be present in `cni_bin_dir`.
pub const REQUIRED_PLUGINS: [&str; 5] = ["bridge", "host-local", "portmap", "firewall", "loopback"];

/// An IPv4 network in CIDR form, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n`. Rejects host bits, and prefixes that leave no room for a gateway
    /// and a pod (`/31`, `/32`) or are absurdly wide (< `/8`).
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("pod CIDR {s:?} is not of the form a.b.c.d/n"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("pod CIDR {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("pod CIDR {s:?}: prefix must be a number between 8 and 30"))?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "pod CIDR {s:?} has host bits set (network address is {}/{prefix})",
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Ipv4Cidr { network, prefix })
    }

    /// `.1` of the network: the bridge's address and the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The conflist: bridge (+ host-local IPAM), portmap, firewall.
///
/// `firewall` (iptables backend) accepts the pods' traffic in FORWARD (its `CNI-FORWARD` chain,
/// jumped to first): without it, bridged pod-to-pod traffic dies on hosts whose FORWARD policy
/// is DROP (Docker sets that) while `br_netfilter` sends bridged frames through iptables.
pub fn conflist(config: &NetworkConfig, cidr: &Ipv4Cidr) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr.to_string(), "gateway": cidr.gateway().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": config.state_dir.join("ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "backend": "iptables"}
        ]
    })
}

/// What one invocation of the chain needs besides the conflist.
#[derive(Clone, Debug)]
pub struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub port_mappings: &'a [PortMapping],
    pub timeout: Duration,
}

/// The stdin of one plugin: its object from the conflist plus `name`, `cniVersion`,
/// `prevResult` and the `runtimeConfig` keys it declares in `capabilities`.
pub fn plugin_stdin(
    list: &Value,
    plugin: &Value,
    prev_result: Option<&Value>,
    port_mappings: &[PortMapping],
) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert(
        "name".into(),
        list.get("name").cloned().unwrap_or(Value::Null),
    );
    conf.insert(
        "cniVersion".into(),
        list.get("cniVersion").cloned().unwrap_or(Value::Null),
    );
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .pointer("/capabilities/portMappings")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !port_mappings.is_empty() {
        conf.insert(
            "runtimeConfig".into(),
            json!({ "portMappings": port_mappings }),
        );
    }
    Value::Object(conf)
}

fn plugins(list: &Value) -> Vec<(String, &Value)> {
    list.get("plugins")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        p,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ADD through the chain in order. On error returns the last successful result (if any) with
/// the error, so the caller can DEL with it.
pub async fn add_list(
    list: &Value,
    inv: &Invocation<'_>,
) -> Result<Value, (Option<Value>, NetworkError)> {
    let mut prev: Option<Value> = None;
    for (kind, plugin) in plugins(list) {
        let stdin = plugin_stdin(list, plugin, prev.as_ref(), inv.port_mappings);
        match exec_plugin(&kind, "ADD", &stdin, inv).await {
            Ok(out) if out.is_object() => prev = Some(out),
            Ok(_) => {
                let err = plugin_error(&kind, "ADD", "result is not a JSON object".into());
                return Err((prev, err));
            }
            Err(e) => return Err((prev, e)),
        }
    }
    prev.ok_or_else(|| {
        (
            None,
            NetworkError::Netns("the CNI conflist has no plugins".into()),
        )
    })
}

/// DEL through the chain in reverse, every plugin given `prev_result` (the cached ADD result).
/// Runs every plugin even if one fails; returns the first error.
pub async fn del_list(
    list: &Value,
    inv: &Invocation<'_>,
    prev_result: Option<&Value>,
) -> Result<(), NetworkError> {
    let mut first_err = None;
    for (kind, plugin) in plugins(list).into_iter().rev() {
        let stdin = plugin_stdin(list, plugin, prev_result, inv.port_mappings);
        if let Err(e) = exec_plugin(&kind, "DEL", &stdin, inv).await {
            tracing::warn!(sandbox = inv.container_id, plugin = %kind, error = %e, "CNI DEL failed");
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn plugin_error(plugin: &str, command: &str, message: String) -> NetworkError {
    NetworkError::Plugin {
        plugin: plugin.to_string(),
        command: command.to_string(),
        message,
    }
}

/// The message of a CNI error result (`msg` and `details`), if `stdout` is one.
pub fn error_message(stdout: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let msg = v.get("msg").and_then(Value::as_str)?;
    let mut message = msg.to_string();
    if let Some(details) = v
        .get("details")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
    {
        message.push_str(": ");
        message.push_str(details);
    }
    if let Some(code) = v.get("code").and_then(Value::as_u64) {
        message.push_str(&format!(" (code {code})"));
    }
    Some(message)
}

/// Runs one plugin binary with the CNI environment, `stdin` as its config, killed after the
/// invocation's timeout. Returns its parsed stdout (`Null` when empty, as DEL usually is).
pub async fn exec_plugin(
    kind: &str,
    command: &str,
    stdin: &Value,
    inv: &Invocation<'_>,
) -> Result<Value, NetworkError> {
    if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
        return Err(plugin_error(kind, command, "invalid plugin type".into()));
    }
    let path: PathBuf = inv.bin_dir.join(kind);
    let input = serde_json::to_vec(stdin)
        .map_err(|e| plugin_error(kind, command, format!("encode config: {e}")))?;
    let mut cmd = Command::new(&path);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if std::env::var_os("PATH").is_none() {
        // portmap and bridge exec iptables through PATH.
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| plugin_error(kind, command, format!("cannot run {}: {e}", path.display())))?;
    let mut child_stdin = child.stdin.take();
    let run = async move {
        if let Some(w) = child_stdin.as_mut() {
            // A plugin that exits without reading its stdin gives EPIPE; its exit status tells.
            let _ = w.write_all(&input).await;
            let _ = w.shutdown().await;
        }
        drop(child_stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(inv.timeout, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(plugin_error(kind, command, format!("wait: {e}"))),
        // Dropping the future dropped the child: kill_on_drop killed it.
        Err(_) => {
            return Err(plugin_error(
                kind,
                command,
                format!("timed out after {:?}, killed", inv.timeout),
            ));
        }
    };
    if !output.status.success() {
        let message = error_message(&output.stdout).unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let text = if stderr.is_empty() { stdout } else { stderr };
            if text.is_empty() {
                format!("{}", output.status)
            } else {
                format!("{text} ({})", output.status)
            }
        });
        return Err(plugin_error(kind, command, message));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| plugin_error(kind, command, format!("unparsable result: {e}")))
}

/// Removes the bridge plugin's ipMasq rules of a sandbox: every nat POSTROUTING rule with the
/// comment `name: "<network>" id: "<sandbox>"` and the `CNI-<hash>` chain it jumps to.
///
/// bridge's DEL skips this when the netns is already gone (it learns the IPs from inside it),
/// leaking the chain; a later ADD+DEL of the same id then fails with `CHAIN_DEL … busy`. Run
/// before DEL; best-effort (logged).
pub async fn remove_masq_rules(sandbox_id: &str, timeout: Duration) {
    let comment = format!("name: \"{NETWORK_NAME}\" id: \"{sandbox_id}\"");
    // `iptables -S` prints the comment quoted, inner quotes escaped.
    let shown = format!("--comment \"{}\"", comment.replace('"', "\\\""));
    let listing = match iptables(&["-t", "nat", "-S", "POSTROUTING"], timeout).await {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(error = %e, "iptables -S POSTROUTING");
            return;
        }
    };
    for line in listing.lines().filter(|l| l.contains(&shown)) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let (Some(source), Some(chain)) = (after("-s"), after("-j")) else {
            continue;
        };
        if !chain.starts_with("CNI-") {
            continue;
        }
        let del = [
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-s",
            source,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            chain,
        ];
        if let Err(e) = iptables(&del, timeout).await {
            tracing::warn!(sandbox = sandbox_id, error = %e, "removing a leftover ipMasq rule");
            continue;
        }
        let _ = iptables(&["-t", "nat", "-F", chain], timeout).await;
        if let Err(e) = iptables(&["-t", "nat", "-X", chain], timeout).await {
            tracing::debug!(sandbox = sandbox_id, error = %e, "deleting a leftover ipMasq chain");
        }
    }
}

async fn iptables(args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut cmd = Command::new("iptables");
    cmd.arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| "iptables timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first IPv4 address of a CNI (0.3/0.4/1.0) result, preferring one on a sandbox interface.
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |ip: &Value| -> bool {
        let idx = ip.get("interface").and_then(Value::as_u64);
        match (idx, interfaces) {
            (Some(i), Some(ifs)) => usize::try_from(i)
                .ok()
                .and_then(|i| ifs.get(i))
                .and_then(|iface| iface.get("sandbox"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            _ => false,
        }
    };
    let v4 = |ip: &Value| -> Option<Ipv4Addr> {
        let addr = ip.get("address")?.as_str()?;
        addr.split('/').next()?.parse().ok()
    };
    let ips = result.get("ips")?.as_array()?;
    ips.iter()
        .filter(|ip| in_sandbox(ip))
        .find_map(v4)
        .or_else(|| ips.iter().find_map(v4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NetworkConfig {
        NetworkConfig {
            pod_cidr: "10.42.0.0/24".into(),
            bridge: "cni0".into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            state_dir: "/run/skiff".into(),
            netns_prefix: "skiff-".into(),
        }
    }

    #[test]
    fn cidr_parses_and_rejects() {
        let c = Ipv4Cidr::parse("10.42.0.0/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 42, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 1, 2)));
        assert_eq!(c.to_string(), "10.42.0.0/24");
        for bad in [
            "",
            "10.42.0.0",
            "10.42.0.1/24",
            "10.42.0.0/31",
            "10.42.0.0/33",
            "x/24",
            "10.0.0.0/-1",
            "::1/64",
        ] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Ipv4Cidr::parse("10.42.0.1/24")
                .unwrap_err()
                .contains("host bits")
        );
    }

    #[test]
    fn conflist_shape() {
        let cfg = config();
        let list = conflist(&cfg, &Ipv4Cidr::parse(&cfg.pod_cidr).unwrap());
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["name"], "skiff");
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.0.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.42.0.1");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(bridge["ipam"]["dataDir"], "/run/skiff/ipam");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(list["plugins"][2]["type"], "firewall");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn stdin_carries_only_declared_capabilities() {
        let cfg = config();
        let list = conflist(&cfg, &Ipv4Cidr::parse(&cfg.pod_cidr).unwrap());
        let pm = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }];
        let prev = json!({"cniVersion": "0.4.0", "ips": []});
        let bridge = plugin_stdin(&list, &list["plugins"][0], None, &pm);
        assert_eq!(bridge["name"], "skiff");
        assert_eq!(bridge["cniVersion"], "0.4.0");
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());
        let portmap = plugin_stdin(&list, &list["plugins"][1], Some(&prev), &pm);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        let none = plugin_stdin(&list, &list["plugins"][1], Some(&prev), &[]);
        assert!(none.get("runtimeConfig").is_none());
    }

    #[test]
    fn parses_result_and_errors() {
        let result = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "br"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"version": "4", "interface": 0, "address": "10.42.0.1/24"},
                {"version": "6", "interface": 2, "address": "fd00::2/64"},
                {"version": "4", "interface": 2, "address": "10.42.0.7/24", "gateway": "10.42.0.1"}
            ]
        });
        assert_eq!(result_ipv4(&result), Some(Ipv4Addr::new(10, 42, 0, 7)));
        assert_eq!(
            result_ipv4(&json!({"ips": [{"address": "10.1.2.3/16"}]})),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(result_ipv4(&json!({"ips": []})), None);
        assert_eq!(result_ipv4(&json!("garbage")), None);

        let err =
            br#"{"code":11,"msg":"failed to allocate","details":"no IP addresses available"}"#;
        assert_eq!(
            error_message(err).unwrap(),
            "failed to allocate: no IP addresses available (code 11)"
        );
        assert_eq!(
            error_message(br#"{"code":7,"msg":"bad"}"#).unwrap(),
            "bad (code 7)"
        );
        assert_eq!(error_message(b"not json"), None);
    }

    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn inv<'a>(dir: &'a Path, timeout: Duration) -> Invocation<'a> {
        Invocation {
            bin_dir: dir,
            container_id: "sb1",
            netns: Path::new("/run/netns/none"),
            ifname: "eth0",
            port_mappings: &[],
            timeout,
        }
    }

    #[tokio::test]
    async fn exec_plugin_env_stdin_errors_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes env + stdin back as a result.
        script(
            dir.path(),
            "echo",
            r#"in=$(cat); printf '{"cmd":"%s","id":"%s","netns":"%s","if":"%s","path":"%s","in":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "$in""#,
        );
        script(
            dir.path(),
            "fail",
            r#"cat >/dev/null; echo '{"code":100,"msg":"boom","details":"it broke"}'; exit 1"#,
        );
        script(dir.path(), "stderr", "echo oops >&2; exit 3");
        script(dir.path(), "slow", "sleep 30");
        let i = inv(dir.path(), Duration::from_secs(10));
        let out = exec_plugin("echo", "ADD", &json!({"a": 1}), &i)
            .await
            .unwrap();
        assert_eq!(out["cmd"], "ADD");
        assert_eq!(out["id"], "sb1");
        assert_eq!(out["netns"], "/run/netns/none");
        assert_eq!(out["if"], "eth0");
        assert_eq!(out["path"], dir.path().to_str().unwrap());
        assert_eq!(out["in"], json!({"a": 1}));

        let err = exec_plugin("fail", "DEL", &json!({}), &i)
            .await
            .unwrap_err();
        match &err {
            NetworkError::Plugin {
                plugin,
                command,
                message,
            } => {
                assert_eq!(plugin, "fail");
                assert_eq!(command, "DEL");
                assert!(message.contains("boom: it broke"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let err = exec_plugin("stderr", "ADD", &json!({}), &i)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        let err = exec_plugin("missing", "ADD", &json!({}), &i)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot run"), "{err}");
        let err = exec_plugin("../echo", "ADD", &json!({}), &i)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid plugin type"), "{err}");

        let quick = inv(dir.path(), Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = exec_plugin("slow", "ADD", &json!({}), &quick)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn chain_threads_prev_result_and_del_runs_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // Each plugin logs "<type> <cmd> <has prevResult>" and returns a result naming itself.
        for kind in ["p1", "p2"] {
            script(
                dir.path(),
                kind,
                &format!(
                    r#"in=$(cat); case "$in" in *prevResult*) p=prev;; *) p=noprev;; esac; echo "{kind} $CNI_COMMAND $p" >> {log}; [ "$CNI_COMMAND" = ADD ] && printf '{{"cniVersion":"0.4.0","ips":[{{"address":"10.9.0.5/24"}}],"by":"{kind}"}}'; exit 0"#,
                    log = log.display()
                ),
            );
        }
        let list = json!({"cniVersion": "0.4.0", "name": "t", "plugins": [{"type": "p1"}, {"type": "p2"}]});
        let i = inv(dir.path(), Duration::from_secs(10));
        let result = add_list(&list, &i).await.unwrap();
        assert_eq!(result["by"], "p2");
        assert_eq!(result_ipv4(&result), Some(Ipv4Addr::new(10, 9, 0, 5)));
        del_list(&list, &i, Some(&result)).await.unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            log,
            "p1 ADD noprev\np2 ADD prev\np2 DEL prev\np1 DEL prev\n"
        );
    }
}
