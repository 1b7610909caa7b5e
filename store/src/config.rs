//! Store configuration with etcd's flag names and meanings, and its validation.
//!
//! The binary (`skiff store`) maps command-line flags onto [`StoreConfig`]; everything a
//! flag means is decided here, so the library can be started from tests the same way.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::pki::TlsFiles;

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Why a configuration was refused (printed as one line by the binary).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything a store member needs to start.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// name → peer URLs, from `--initial-cluster`.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// `--pre-vote`: elections run by [`crate::campaign`] with etcd's pre-vote; otherwise
    /// openraft's own election timer (see there).
    pub pre_vote: bool,
    /// Entries applied between two Raft snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept after a snapshot for slow followers (`--snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// How often applied writes are made durable in the backend (`--backend-batch-interval`,
    /// etcd's default 100 ms); the WAL holds them meanwhile.
    pub backend_batch_interval: Duration,
    /// Largest client request accepted (`--max-request-bytes`, etcd default 1.5 MiB).
    pub max_request_bytes: usize,
    /// Largest number of operations in one Txn branch (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Extra plain-HTTP listeners for `/metrics`, `/health`, `/version`.
    pub listen_metrics_urls: Vec<String>,
    /// Interval of progress notifications to watchers that asked for them
    /// (`--experimental-watch-progress-notify-interval`).
    pub watch_progress_notify_interval: Duration,
    /// Backend quota (`--quota-backend-bytes`): 0 = etcd's default of 2 GiB, negative =
    /// no quota. Writes are refused with a NOSPACE alarm once the engine grows past it.
    pub quota_backend_bytes: i64,
    /// TLS for client listeners with https URLs.
    pub client_tls: TlsFiles,
    /// TLS for peer listeners and connections with https URLs.
    pub peer_tls: TlsFiles,
    /// `--auth-token-ttl`, `--bcrypt-cost` (see [`crate::auth`]).
    pub auth: crate::auth::AuthConfig,
    /// `--auto-compaction-mode` and `--auto-compaction-retention` (see
    /// [`crate::compactor`]); `None`: no automatic compaction (etcd's default).
    pub auto_compaction: Option<AutoCompaction>,
}

/// etcd's automatic compaction modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history (by time).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// Parse etcd's flag pair: `periodic` takes a duration (`1h`, `30m`, `90s`; a bare
    /// number is hours), `revision` a revision count; retention `0` turns compaction off.
    pub fn from_flags(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, ConfigError> {
        let retention = retention.trim();
        let bad = |why: &str| {
            ConfigError(format!(
                "--auto-compaction-retention={retention:?}: {why} (--auto-compaction-mode={mode})"
            ))
        };
        match mode {
            "periodic" => {
                if let Ok(hours) = retention.parse::<u64>() {
                    return Ok((hours > 0).then(|| {
                        AutoCompaction::Periodic(Duration::from_secs(hours.saturating_mul(3600)))
                    }));
                }
                let duration = parse_go_duration(retention)
                    .ok_or_else(|| bad("not a duration such as 1h, 30m or 90s"))?;
                Ok((!duration.is_zero()).then_some(AutoCompaction::Periodic(duration)))
            }
            "revision" => {
                let revisions: i64 = retention
                    .parse()
                    .map_err(|_| bad("not a number of revisions"))?;
                if revisions < 0 {
                    return Err(bad("must not be negative"));
                }
                Ok((revisions > 0).then_some(AutoCompaction::Revision(revisions)))
            }
            other => Err(ConfigError(format!(
                "--auto-compaction-mode={other:?}: must be \"periodic\" or \"revision\""
            ))),
        }
    }
}

/// A Go duration such as `1h30m`, `90s`, `500ms`, `1.5h`.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, after) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// etcd's defaults.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

impl StoreConfig {
    /// A single member named `name` with etcd's defaults (loopback, ports 2379/2380).
    pub fn single(name: &str) -> StoreConfig {
        let peer = "http://127.0.0.1:2380".to_string();
        StoreConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(format!("{name}.skiff")),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: BTreeMap::from([(name.to_string(), vec![peer])]),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            pre_vote: true,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            backend_batch_interval: crate::raft_log::CHECKPOINT_INTERVAL,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            listen_metrics_urls: Vec::new(),
            watch_progress_notify_interval: Duration::from_secs(600),
            client_tls: TlsFiles::default(),
            peer_tls: TlsFiles::default(),
            quota_backend_bytes: 0,
            auth: crate::auth::AuthConfig::default(),
            auto_compaction: None,
        }
    }

    /// The backend quota in force: `None` when disabled (negative flag value).
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            q if q < 0 => None,
            q => Some(q as u64),
        }
    }

    /// Check the configuration the way etcd does before starting anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError("--name must not be empty".into()));
        }
        for (flag, urls) in [
            ("--listen-client-urls", &self.listen_client_urls),
            ("--advertise-client-urls", &self.advertise_client_urls),
            ("--listen-peer-urls", &self.listen_peer_urls),
            (
                "--initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
        ] {
            if urls.is_empty() {
                return Err(ConfigError(format!("{flag} must name at least one URL")));
            }
            for url in urls {
                socket_addr(url).map_err(|e| ConfigError(format!("{flag}: {e}")))?;
            }
        }
        for url in &self.listen_metrics_urls {
            socket_addr(url).map_err(|e| ConfigError(format!("--listen-metrics-urls: {e}")))?;
        }
        if self.initial_cluster_state == ClusterState::New {
            let Some(mine) = self.initial_cluster.get(&self.name) else {
                return Err(ConfigError(format!(
                    "couldn't find local name {:?} in the initial cluster configuration",
                    self.name
                )));
            };
            let mut mine = mine.clone();
            let mut advertised = self.initial_advertise_peer_urls.clone();
            mine.sort();
            advertised.sort();
            if mine != advertised {
                return Err(ConfigError(format!(
                    "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (the URLs must match)",
                    self.name,
                    mine.join(","),
                    advertised.join(",")
                )));
            }
        }
        if self.heartbeat_interval.is_zero() || self.election_timeout < self.heartbeat_interval * 5
        {
            return Err(ConfigError(
                "--election-timeout should be at least 5 times --heartbeat-interval".into(),
            ));
        }
        self.client_tls.validate("").map_err(ConfigError)?;
        self.peer_tls.validate("peer-").map_err(ConfigError)?;
        if self
            .listen_client_urls
            .iter()
            .any(|u| u.starts_with("https://"))
            && !self.client_tls.is_configured()
        {
            return Err(ConfigError(
                "https client URLs need --cert-file and --key-file".into(),
            ));
        }
        if self
            .listen_peer_urls
            .iter()
            .any(|u| u.starts_with("https://"))
            && !self.peer_tls.is_configured()
        {
            return Err(ConfigError(
                "https peer URLs need --peer-cert-file and --peer-key-file".into(),
            ));
        }
        if self.watch_progress_notify_interval < Duration::from_millis(100) {
            return Err(ConfigError(
                "--experimental-watch-progress-notify-interval must be at least 100ms".into(),
            ));
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError("--max-txn-ops must be > 0".into()));
        }
        if self.snapshot_count == 0 {
            return Err(ConfigError("--snapshot-count must be > 0".into()));
        }
        Ok(())
    }
}

/// Parse a comma-separated URL list flag.
pub fn parse_urls(value: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
        .collect();
    for url in &urls {
        socket_addr(url)?;
    }
    Ok(urls)
}

/// Parse `--initial-cluster` (`name1=url1,name2=url2`; a name may repeat for several URLs).
pub fn parse_initial_cluster(value: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(ConfigError(format!(
                "--initial-cluster: {part:?} is not of the form name=url"
            )));
        };
        let url = url.trim_end_matches('/').to_string();
        socket_addr(&url).map_err(|e| ConfigError(format!("--initial-cluster: {e}")))?;
        let urls = cluster.entry(name.to_string()).or_default();
        if urls.contains(&url) {
            return Err(ConfigError(format!(
                "--initial-cluster: duplicate URL {url}"
            )));
        }
        urls.push(url);
    }
    if cluster.is_empty() {
        return Err(ConfigError("--initial-cluster must not be empty".into()));
    }
    Ok(cluster)
}

/// The socket address an `http://host:port` URL names.
pub fn socket_addr(url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else {
        return Err(ConfigError(format!(
            "{url}: URL scheme must be http:// or https:// (e.g. http://127.0.0.1:2379)"
        )));
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    if !host_port.contains(':') {
        return Err(ConfigError(format!("{url}: missing port in address")));
    }
    host_port
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError(format!("{url}: address does not resolve")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_style_flags() {
        let cluster = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2").unwrap();
        assert_eq!(cluster["a"], vec!["http://127.0.0.1:1"]);
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_urls("ftp://x:1").is_err());
        assert!(parse_urls("http://127.0.0.1").is_err());
        assert_eq!(
            parse_urls("http://127.0.0.1:5,http://127.0.0.1:6")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn default_single_member_validates_and_mismatch_is_refused() {
        let config = StoreConfig::single("default");
        config.validate().unwrap();
        let mut bad = config.clone();
        bad.name = "other".into();
        assert!(
            bad.validate()
                .unwrap_err()
                .0
                .contains("couldn't find local name")
        );
        let mut bad = config;
        bad.initial_advertise_peer_urls = vec!["http://127.0.0.1:9999".into()];
        assert!(bad.validate().is_err());
    }
}
