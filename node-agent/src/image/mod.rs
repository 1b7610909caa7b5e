//! The node's image store: pull (oci-client), import (OCI layouts, `docker save` tars), unpack
//! into shared per-layer directories with overlayfs whiteouts, and overlay rootfs mounts.
//!
//! Layout under `root` (`<root-dir>/images`):
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, content-addressed. A blob is
//!   written to a `.tmp-*` file in the same directory, its digest verified, then renamed, so a
//!   failed pull never leaves a half-written blob.
//! - `layers/<hex of the layer blob's digest>/`: one unpacked layer each, shared by every image
//!   that has it. OCI whiteouts are converted to overlayfs ones (`.wh.NAME` → a 0:0 character
//!   device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory), the way
//!   containerd's overlay snapshotter does. Unpacked into a `.tmp-*` directory, then renamed.
//! - `index.json`: the [`ImageRecord`]s (plus each one's config digest), replaced atomically;
//!   read-modify-write under an `flock` on `.lock`.
//!
//! Names from imports: `io.containerd.image.name` wins; else `org.opencontainers.image.ref.name`
//! is normalized when it looks like a full reference (contains `/` or `:`, e.g. `busybox:1.36`),
//! and is otherwise a bare tag (what `skopeo copy … oci:DIR:TAG` writes) recorded as
//! `docker.io/library/import:<tag>`; `docker save` tars use their `RepoTags`. An image without
//! any name is still recorded (lookup and remove by digest).
//!
//! A name points at one image: pulling or importing a name onto a different manifest moves it,
//! and the old image, if left without names, stays as a dangling record (`references` empty;
//! its containers may still use its layers) until `remove(<its digest>)`.
//!
//! Pulls through a mirror are recorded under the original normalized reference. Credentials
//! from [`PullAuth`] are only sent to the upstream registry, never to mirrors.

mod config;
pub mod gc;
mod import;
mod manifest;
mod pull;
mod reference;
mod rootfs;
mod store;
mod unpack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use config::{image_config_from_json, image_config_from_oci};
pub use reference::IMPORT_REPOSITORY;
pub use rootfs::{mount_rootfs, overlay_options, unmount_rootfs};

/// The parts of an image's config a container inherits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image present in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalized references naming it, e.g. `docker.io/library/busybox:latest`.
    pub references: Vec<String>,
    /// `sha256:…` of the manifest (a pod's `imageID` is `<repo>@<digest>`).
    pub digest: String,
    pub config: ImageConfig,
    /// Layer digests (`sha256:…`), base first.
    pub layers: Vec<String>,
    /// Bytes on disk of the unpacked layers and blobs.
    pub size: u64,
}

/// Registry settings: k3s `registries.yaml`'s idea.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryConfig {
    /// `host[:port]`s reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Registry host (`docker.io`) → mirror endpoints (`http://127.0.0.1:5000`), tried in order.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
}

/// k3s's `registries.yaml` (`--private-registry`): `mirrors.<registry>.endpoint` lists, and
/// `configs.<host>.tls.insecure_skip_verify` (treated as plain HTTP for that host, as an
/// `http://` endpoint is).
#[derive(Debug, Default, Deserialize)]
struct K3sRegistries {
    #[serde(default)]
    mirrors: BTreeMap<String, K3sMirror>,
    #[serde(default)]
    configs: BTreeMap<String, K3sConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct K3sMirror {
    #[serde(default)]
    endpoint: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct K3sConfig {
    #[serde(default)]
    tls: Option<K3sTls>,
}

#[derive(Debug, Default, Deserialize)]
struct K3sTls {
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl RegistryConfig {
    /// Reads k3s's `registries.yaml` format.
    pub fn from_registries_yaml(text: &str) -> Result<RegistryConfig, String> {
        let parsed: K3sRegistries = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let mut config = RegistryConfig::default();
        for (registry, mirror) in parsed.mirrors {
            config.mirrors.insert(registry, mirror.endpoint);
        }
        for (host, c) in parsed.configs {
            if c.tls.is_some_and(|t| t.insecure_skip_verify) {
                config.insecure.push(host);
            }
        }
        Ok(config)
    }

    /// Adds `other`'s mirrors (after this one's) and insecure hosts.
    pub fn merge(&mut self, other: RegistryConfig) {
        for (registry, endpoints) in other.mirrors {
            self.mirrors.entry(registry).or_default().extend(endpoints);
        }
        self.insecure.extend(other.insecure);
    }
}

/// Credentials for a pull (from `imagePullSecrets`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullAuth {
    pub username: String,
    pub password: String,
}

/// Image store failures; `Pull` messages are what a pod's `ErrImagePull` shows.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid reference format: {0}")]
    InvalidReference(String),
    #[error("{0}")]
    Pull(String),
    #[error("import: {0}")]
    Import(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("image {0} is in use")]
    InUse(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The content-addressed store under `<root-dir>/images`.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    registries: RegistryConfig,
}

impl ImageStore {
    /// Opens (creating the directories of) the store under `root`, and removes temp files and
    /// directories left behind by processes that are gone.
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            root: root.to_path_buf(),
            registries,
        };
        store.init()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registry settings the store pulls with.
    pub fn registries(&self) -> &RegistryConfig {
        &self.registries
    }

    /// `busybox` → `docker.io/library/busybox:latest`.
    pub fn normalize(reference: &str) -> Result<String, ImageError> {
        reference::normalize(reference)
    }

    /// Finds an image by (normalizable) reference, by `repo@sha256:…`, or by its manifest
    /// digest `sha256:…`.
    pub fn lookup(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let index = self.load_index()?;
        Ok(store::find(&index, reference)?.map(|i| index.images[i].record.clone()))
    }

    /// Pulls `reference` (mirrors first for a mirrored registry, then upstream) and records it.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&PullAuth>,
    ) -> Result<ImageRecord, ImageError> {
        pull::pull(self, reference, auth).await
    }

    /// Imports an OCI layout (directory or tar) or a `docker save` tar; blocking.
    pub fn import(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        import::import(self, path)
    }

    /// Every image in the store.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self
            .load_index()?
            .images
            .into_iter()
            .map(|e| e.record)
            .collect())
    }

    /// Drops the name `reference` (or, given a manifest digest, the whole image). An image left
    /// without names is deleted with the blobs and layers no other image uses. Fails with
    /// `InUse` when one of those layers is a lower dir of a mounted overlay.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_reference(reference)
    }

    /// Directories of the unpacked layers, top layer first (overlay `lowerdir` order).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|d| self.layer_path(d))
            .collect()
    }
}

#[cfg(test)]
mod registries_tests {
    use super::*;

    #[test]
    fn k3s_registries_yaml_gives_mirrors_and_insecure_hosts() {
        let text = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example"
configs:
  "127.0.0.1:5000":
    tls:
      insecure_skip_verify: true
  "secure.example":
    auth:
      username: u
"#;
        let mut config = RegistryConfig::from_registries_yaml(text).unwrap();
        assert_eq!(
            config.mirrors.get("docker.io").unwrap(),
            &vec![
                "http://127.0.0.1:5000".to_string(),
                "https://mirror.example".to_string()
            ]
        );
        assert_eq!(config.insecure, vec!["127.0.0.1:5000".to_string()]);
        config.merge(RegistryConfig {
            insecure: vec!["a:1".into()],
            mirrors: BTreeMap::from([("docker.io".to_string(), vec!["http://b".to_string()])]),
        });
        assert_eq!(config.mirrors["docker.io"].len(), 3);
        assert!(RegistryConfig::from_registries_yaml("mirrors: [").is_err());
        assert_eq!(
            RegistryConfig::from_registries_yaml("").unwrap(),
            RegistryConfig::default()
        );
    }
}
