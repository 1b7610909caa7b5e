//! Pulling from registries with oci-client: mirrors first (for a mirrored registry), then the
//! upstream; plain HTTP for `insecure` hosts and `http://` mirrors; image indexes resolved to
//! this machine's platform; blobs already in the store are not fetched again.

use std::time::Duration;

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use super::manifest::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Parsed};
use super::reference::parse;
use super::store::{NewImage, TempPath, sha256_bytes};
use super::{
    ImageError, ImageRecord, ImageStore, PullAuth, RegistryConfig, image_config_from_json,
};

/// One place to pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// For error messages: `mirror http://127.0.0.1:5000` or the registry host.
    pub label: String,
    /// The reference rewritten to this endpoint's host.
    pub reference: Reference,
    /// Only the upstream gets the pull secret's credentials.
    pub upstream: bool,
}

/// `http://host:port/path` → (`host:port`, plain http?); a bare `host[:port]` is https.
fn parse_endpoint(endpoint: &str) -> Option<(String, bool)> {
    let (rest, http) = if let Some(r) = endpoint.strip_prefix("http://") {
        (r, true)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        (r, false)
    } else {
        (endpoint, false)
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return None;
    }
    Some((host.to_string(), http))
}

fn rebase(r: &Reference, registry: &str) -> Reference {
    let (reg, repo) = (registry.to_string(), r.repository().to_string());
    match (r.tag(), r.digest()) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(reg, repo, t.to_string(), d.to_string())
        }
        (None, Some(d)) => Reference::with_digest(reg, repo, d.to_string()),
        (t, None) => Reference::with_tag(reg, repo, t.unwrap_or("latest").to_string()),
    }
}

/// The endpoints to try for `reference`, in order, and the hosts to reach over plain HTTP.
pub(crate) fn endpoints(
    config: &RegistryConfig,
    reference: &Reference,
) -> (Vec<Endpoint>, Vec<String>) {
    let mut plain: Vec<String> = Vec::new();
    for h in &config.insecure {
        plain.push(h.clone());
        if h == "docker.io" {
            plain.push("index.docker.io".into());
        }
    }
    let registry = reference.registry();
    let mirrors = config
        .mirrors
        .get(registry)
        .or_else(|| {
            if registry == "docker.io" {
                config.mirrors.get("index.docker.io")
            } else {
                None
            }
        })
        .or_else(|| config.mirrors.get("*"));
    let mut out = Vec::new();
    for m in mirrors.into_iter().flatten() {
        let Some((host, http)) = parse_endpoint(m) else {
            tracing::warn!(mirror = %m, "ignoring a malformed registry mirror endpoint");
            continue;
        };
        if http && !plain.contains(&host) {
            plain.push(host.clone());
        }
        out.push(Endpoint {
            label: format!("mirror {m}"),
            reference: rebase(reference, &host),
            upstream: false,
        });
    }
    out.push(Endpoint {
        label: registry.to_string(),
        reference: reference.clone(),
        upstream: true,
    });
    (out, plain)
}

/// The registry's own words for an oci-client error.
fn describe(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, url } => {
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| {
                    let code = serde_json::to_value(&err.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    if err.message.is_empty() {
                        code
                    } else {
                        format!("{} ({code})", err.message)
                    }
                })
                .collect();
            format!("{}: {url}", msgs.join("; "))
        }
        OciDistributionError::ServerError { code, url, message } => {
            let msg = message.trim();
            let what = if *code == 404 {
                "not found"
            } else {
                "registry error"
            };
            if msg.is_empty() {
                format!("{what} (HTTP {code}): {url}")
            } else {
                format!("{what} (HTTP {code}): {msg}: {url}")
            }
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!(
                "pull access denied, repository does not exist or may require authorization: {url}"
            )
        }
        other => {
            // Include the source chain (connection refused, dns errors…).
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                let m = e.to_string();
                if !s.contains(&m) {
                    s.push_str(": ");
                    s.push_str(&m);
                }
                src = e.source();
            }
            s
        }
    }
}

fn pull_err(e: ImageError) -> String {
    match e {
        ImageError::Pull(m) => m,
        other => other.to_string(),
    }
}

/// Pulls `reference` and records it under its normalized name.
pub(crate) async fn pull(
    store: &ImageStore,
    reference: &str,
    auth: Option<&PullAuth>,
) -> Result<ImageRecord, ImageError> {
    let parsed = parse(reference)?;
    let normalized = parsed.whole();
    let (endpoints, plain) = endpoints(&store.registries, &parsed);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        platform_resolver: None,
        ..Default::default()
    });
    let mut errors = Vec::new();
    for ep in &endpoints {
        let registry_auth = match (auth, ep.upstream) {
            (Some(a), true) => RegistryAuth::Basic(a.username.clone(), a.password.clone()),
            _ => RegistryAuth::Anonymous,
        };
        let mut written = Vec::new();
        match fetch(store, &client, &ep.reference, &registry_auth, &mut written).await {
            Ok(mut new) => {
                new.names = vec![normalized.clone()];
                written.extend(new.layers.iter().map(|(d, _)| d.clone()));
                let s = store.clone();
                let committed = tokio::task::spawn_blocking(move || s.commit(new))
                    .await
                    .map_err(|e| ImageError::Pull(format!("pull task failed: {e}")))?;
                let record = match committed {
                    Ok(record) => record,
                    Err(e) => {
                        discard(store, written).await;
                        return Err(ImageError::Pull(format!(
                            "failed to unpack image \"{normalized}\": {}",
                            pull_err(e)
                        )));
                    }
                };
                tracing::info!(image = %normalized, digest = %record.digest, via = %ep.label, "pulled image");
                return Ok(record);
            }
            Err(e) => {
                discard(store, written).await;
                tracing::debug!(image = %normalized, via = %ep.label, error = %pull_err_ref(&e), "pull attempt failed");
                errors.push((ep.label.clone(), pull_err(e)));
            }
        }
    }
    let detail = if errors.len() == 1 {
        errors.pop().map(|(_, m)| m).unwrap_or_default()
    } else {
        errors
            .into_iter()
            .map(|(l, m)| format!("{l}: {m}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(ImageError::Pull(format!(
        "failed to pull image \"{normalized}\": {detail}"
    )))
}

/// Removes what a failed attempt wrote (see `ImageStore::discard_unreferenced`).
async fn discard(store: &ImageStore, written: Vec<String>) {
    if written.is_empty() {
        return;
    }
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.discard_unreferenced(&written)).await;
}

fn pull_err_ref(e: &ImageError) -> String {
    match e {
        ImageError::Pull(m) => m.clone(),
        other => other.to_string(),
    }
}

const ACCEPTED: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// Downloads manifest, config and missing layer blobs of `reference` into the store.
async fn fetch(
    store: &ImageStore,
    client: &oci_client::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    written: &mut Vec<String>,
) -> Result<NewImage, ImageError> {
    let pe = |e: OciDistributionError| ImageError::Pull(describe(&e));
    let (mut bytes, _) = client
        .pull_manifest_raw(reference, auth, ACCEPTED)
        .await
        .map_err(pe)?;
    let mut parsed = manifest::parse(&bytes).map_err(ImageError::Pull)?;
    if let Parsed::Index(index) = &parsed {
        let entry = manifest::choose_platform(index)?;
        let platform_ref = reference.clone_with_digest(entry.digest.clone());
        let (b, _) = client
            .pull_manifest_raw(&platform_ref, auth, ACCEPTED)
            .await
            .map_err(pe)?;
        if sha256_bytes(&b) != entry.digest {
            return Err(ImageError::Pull(format!(
                "manifest {} failed digest verification",
                entry.digest
            )));
        }
        bytes = b;
        parsed = manifest::parse(&bytes).map_err(ImageError::Pull)?;
    }
    let Parsed::Manifest(m) = parsed else {
        return Err(ImageError::Pull("nested image index".into()));
    };
    let manifest_new = !store.has_blob(&sha256_bytes(&bytes));
    let manifest_digest = store.write_blob_bytes(&bytes)?;
    if manifest_new {
        written.push(manifest_digest.clone());
    }
    // (oci-client checked the top-level bytes against a digest in the reference.)
    download(store, client, reference, &m.config.digest, written).await?;
    let config = image_config_from_json(&store.read_blob(&m.config.digest)?)
        .map_err(|e| ImageError::Pull(format!("image config: {}", pull_err(e))))?;
    let mut layers = Vec::new();
    for l in &m.layers {
        if l.media_type.contains("zstd") {
            return Err(ImageError::Pull(format!(
                "layer {} uses zstd compression ({}), which is not supported",
                l.digest, l.media_type
            )));
        }
        download(store, client, reference, &l.digest, written).await?;
        layers.push((l.digest.clone(), l.media_type.clone()));
    }
    Ok(NewImage {
        manifest_digest,
        config_digest: m.config.digest.clone(),
        config,
        layers,
        names: Vec::new(),
    })
}

/// Fetches the blob `digest` unless the store has it: to a temp file, verified, renamed.
async fn download(
    store: &ImageStore,
    client: &oci_client::Client,
    reference: &Reference,
    digest: &str,
    written: &mut Vec<String>,
) -> Result<(), ImageError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    written.push(digest.to_string());
    store.blob_path(digest)?;
    let tmp = TempPath::new(store.tmp_path(&store.blobs_dir(), "pull"));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp.path())
        .await?;
    let mut file = tokio::io::BufWriter::new(file);
    client
        .pull_blob(reference, digest, &mut file)
        .await
        .map_err(|e| ImageError::Pull(format!("fetching blob {digest}: {}", describe(&e))))?;
    drop(file);
    let s = store.clone();
    let d = digest.to_string();
    tokio::task::spawn_blocking(move || s.persist_blob_file(tmp, &d))
        .await
        .map_err(|e| ImageError::Pull(format!("pull task failed: {e}")))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_endpoints() {
        let mut cfg = RegistryConfig {
            insecure: vec!["reg.local:5000".into()],
            ..Default::default()
        };
        cfg.mirrors.insert(
            "docker.io".into(),
            vec![
                "http://127.0.0.1:5000".into(),
                "mirror.example.com/v2".into(),
            ],
        );
        let r = parse("busybox:1").unwrap();
        let (eps, plain) = endpoints(&cfg, &r);
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].reference.whole(), "127.0.0.1:5000/library/busybox:1");
        assert!(!eps[0].upstream);
        assert_eq!(
            eps[1].reference.whole(),
            "mirror.example.com/library/busybox:1"
        );
        assert_eq!(eps[2].reference.whole(), "docker.io/library/busybox:1");
        assert!(eps[2].upstream);
        assert_eq!(
            plain,
            vec!["reg.local:5000".to_string(), "127.0.0.1:5000".to_string()]
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let (eps, _) = endpoints(&cfg, &parse(&format!("reg.local:5000/x@{digest}")).unwrap());
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].reference.digest(), Some(digest.as_str()));
    }
}
