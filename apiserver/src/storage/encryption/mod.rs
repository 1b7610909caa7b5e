//! Encryption at rest: kube-apiserver's `--encryption-provider-config` (an
//! `apiserver.config.k8s.io/v1` `EncryptionConfiguration`) and [`EncryptedStorage`], the
//! [`Storage`] wrapper that applies it to the values of the configured resources.
//!
//! The on-disk format is kube-apiserver's (`k8s.io/apiserver/pkg/storage/value/encrypt`), so an
//! operator's tools and knowledge carry over: a stored value is `k8s:enc:<provider>:v1:<key>:`
//! followed by
//! - `aescbc`: a random 16-byte IV, then AES-CBC with PKCS#7 padding;
//! - `aesgcm`: a random 12-byte nonce, then AES-GCM (ciphertext and tag), with the store key
//!   (`/registry/secrets/<ns>/<name>`) as the authenticated data;
//! - `secretbox`: a random 24-byte nonce, then NaCl's secretbox (XSalsa20-Poly1305, tag first).
//!
//! `identity` stores plaintext. Writes use the first provider (its first key); reads pick the
//! provider and key by the value's prefix, so data written under any listed key stays readable
//! and re-writing an object moves it to the first key (key rotation). Unprefixed data is read
//! only when `identity` is listed; a resource no entry names is stored as plaintext, and its
//! encrypted values are refused rather than handed to the JSON decoder.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{AesGcm, KeyInit};
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Deserialize;

use crate::storage::{Change, Page, Result, Storage, StorageError, Stored};

mod config;
mod transformer;

pub use config::EncryptionConfig;
pub use transformer::Transformer;

/// The `apiVersion` of the configuration file.
pub const CONFIG_API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// What every encrypted value starts with.
pub(super) const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
pub(super) const AESCBC_PREFIX: &str = "k8s:enc:aescbc:v1:";
pub(super) const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
pub(super) const SECRETBOX_PREFIX: &str = "k8s:enc:secretbox:v1:";
/// kube-apiserver's accepted key sizes, in bytes.
pub(super) const AES_KEY_SIZES: [usize; 3] = [16, 24, 32];
pub(super) const SECRETBOX_KEY_SIZES: [usize; 1] = [32];
pub(super) const AES_BLOCK: usize = 16;
pub(super) const GCM_NONCE: usize = 12;
pub(super) const SECRETBOX_NONCE: usize = 24;
/// Poly1305's tag, which secretbox puts before the ciphertext.
pub(super) const SECRETBOX_TAG: usize = 16;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--encryption-provider-config {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Why a value could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransformError {
    /// No listed provider (and no `identity`) reads data of this form.
    #[error("no matching prefix found")]
    NoMatchingPrefix,
    /// Encrypted data where plaintext is expected (the resource is not configured, or the
    /// provider that wrote it is no longer listed).
    #[error("identity transformer tried to read encrypted data")]
    EncryptedData,
    /// A provider's prefix and key matched, but the data did not decrypt.
    #[error("{provider} key {key:?}: {reason}")]
    Decrypt {
        provider: &'static str,
        key: String,
        reason: String,
    },
    #[error("encrypt with {provider}: {reason}")]
    Encrypt {
        provider: &'static str,
        reason: String,
    },
}

/// [`Storage`] that encrypts the values of configured resources on the way in and decrypts them
/// on the way out (gets, lists, watch events), as kube-apiserver's etcd3 store does with its
/// value transformer. Keys are `<prefix>/<resource>/...`; a resource no rule names is stored
/// as is, and reading an encrypted value of it is an error.
pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    /// `--etcd-prefix` with one trailing slash.
    prefix: String,
    /// The key segment of each served resource that has providers.
    by_resource: HashMap<&'static str, Arc<Transformer>>,
}

impl EncryptedStorage {
    pub fn new(
        inner: Arc<dyn Storage>,
        etcd_prefix: &str,
        config: &EncryptionConfig,
        served: &[(&'static str, &'static str)],
    ) -> EncryptedStorage {
        let by_resource = served
            .iter()
            .filter_map(|&(group, resource)| {
                config
                    .transformer_for(group, resource)
                    .map(|t| (resource, t))
            })
            .collect();
        EncryptedStorage {
            inner,
            prefix: format!("{}/", etcd_prefix.trim_end_matches('/')),
            by_resource,
        }
    }

    /// The resources whose values are encrypted (their key segments), sorted.
    pub fn encrypted_resources(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.by_resource.keys().copied().collect();
        names.sort_unstable();
        names
    }

    fn transformer(&self, key: &str) -> Option<&Transformer> {
        let resource = key.strip_prefix(&self.prefix)?.split('/').next()?;
        self.by_resource.get(resource).map(|t| &**t)
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        match self.transformer(key) {
            Some(t) => t
                .to_storage(key, &value)
                .map_err(|e| transform_error(key, e)),
            None => Ok(value),
        }
    }

    fn open(&self, mut stored: Stored) -> Result<Stored> {
        stored.value = open_value(self.transformer(&stored.key), &stored.key, stored.value)?;
        Ok(stored)
    }
}

fn open_value(transformer: Option<&Transformer>, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
    match transformer {
        Some(t) => t
            .from_storage(key, &value)
            .map_err(|e| transform_error(key, e)),
        None if value.starts_with(ENCRYPTED_PREFIX) => {
            Err(transform_error(key, TransformError::EncryptedData))
        }
        None => Ok(value),
    }
}

fn transform_error(key: &str, err: TransformError) -> StorageError {
    StorageError::Internal(format!("unable to transform key {key:?}: {err}"))
}

impl Storage for EncryptedStorage {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>>> {
        let key = key.to_string();
        Box::pin(async move {
            match self.inner.get(&key).await? {
                Some(stored) => Ok(Some(self.open(stored)?)),
                None => Ok(None),
            }
        })
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<i64>> {
        let key = key.to_string();
        Box::pin(async move {
            let value = self.seal(&key, value)?;
            self.inner.create(&key, value).await
        })
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> BoxFuture<'_, Result<i64>> {
        let key = key.to_string();
        Box::pin(async move {
            let value = self.seal(&key, value)?;
            self.inner.update(&key, value, expected).await
        })
    }

    fn delete(
        &self,
        key: &str,
        expected: i64,
        children: Vec<String>,
    ) -> BoxFuture<'_, Result<i64>> {
        self.inner.delete(key, expected, children)
    }

    fn list(
        &self,
        prefix: &str,
        start: &str,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page>> {
        let (prefix, start) = (prefix.to_string(), start.to_string());
        Box::pin(async move {
            let mut page = self.inner.list(&prefix, &start, limit, revision).await?;
            page.items = std::mem::take(&mut page.items)
                .into_iter()
                .map(|stored| self.open(stored))
                .collect::<Result<_>>()?;
            Ok(page)
        })
    }

    fn watch(
        &self,
        prefix: &str,
        after: i64,
        bookmarks: bool,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let changes = self.inner.watch(&prefix, after, bookmarks).await?;
            Ok(self.open_changes(changes))
        })
    }

    fn watch_with_progress_requests(
        &self,
        prefix: &str,
        after: i64,
        progress_requests: Arc<tokio::sync::Notify>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let changes = self
                .inner
                .watch_with_progress_requests(&prefix, after, progress_requests)
                .await?;
            Ok(self.open_changes(changes))
        })
    }
}

impl EncryptedStorage {
    /// The watch `changes` with their values decrypted.
    fn open_changes(
        &self,
        changes: BoxStream<'static, Result<Change>>,
    ) -> BoxStream<'static, Result<Change>> {
        // The stream outlives `self`'s borrow: it keeps its own handles on the transformers.
        let transformers: HashMap<&'static str, Arc<Transformer>> = self.by_resource.clone();
        let key_prefix = self.prefix.clone();
        let open = move |stored: Stored| -> Result<Stored> {
            let transformer = stored
                .key
                .strip_prefix(&key_prefix)
                .and_then(|rest| rest.split('/').next())
                .and_then(|resource| transformers.get(resource));
            let value = open_value(transformer.map(|t| &**t), &stored.key, stored.value)?;
            Ok(Stored { value, ..stored })
        };
        changes
            .map(move |change| match change? {
                Change::Put { new, prev } => Ok(Change::Put {
                    new: open(new)?,
                    prev: prev.map(&open).transpose()?,
                }),
                Change::Delete { prev } => Ok(Change::Delete { prev: open(prev)? }),
                progress @ Change::Progress(_) => Ok(progress),
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests;
