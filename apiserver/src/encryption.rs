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

use crate::resources::ResourceInfo;
use crate::storage::{Change, Page, Result, Storage, StorageError, Stored};

/// The `apiVersion` of the configuration file.
pub const CONFIG_API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// What every encrypted value starts with.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AESCBC_PREFIX: &str = "k8s:enc:aescbc:v1:";
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
const SECRETBOX_PREFIX: &str = "k8s:enc:secretbox:v1:";
/// kube-apiserver's accepted key sizes, in bytes.
const AES_KEY_SIZES: [usize; 3] = [16, 24, 32];
const SECRETBOX_KEY_SIZES: [usize; 1] = [32];
const AES_BLOCK: usize = 16;
const GCM_NONCE: usize = 12;
const SECRETBOX_NONCE: usize = 24;
/// Poly1305's tag, which secretbox puts before the ciphertext.
const SECRETBOX_TAG: usize = 16;

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

/// A loaded configuration: which providers each configured resource uses.
#[derive(Clone, Default)]
pub struct EncryptionConfig {
    /// `(group, resource)` → providers, in file order; `resource` may be `*` (every resource of
    /// the group) and the group `*` (with resource `*`: everything).
    rules: HashMap<(String, String), Arc<Transformer>>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        let mut names: Vec<String> = self.rules.keys().map(|(g, r)| format!("{r}.{g}")).collect();
        names.sort();
        f.debug_struct("EncryptionConfig")
            .field("resources", &names)
            .finish()
    }
}

impl EncryptionConfig {
    /// Reads and validates `--encryption-provider-config`.
    pub fn load(path: &Path) -> std::result::Result<EncryptionConfig, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        EncryptionConfig::parse(&text).map_err(error)
    }

    /// Parses and validates a configuration (YAML or JSON), with kube-apiserver's rules and
    /// messages (`field path: problem`).
    pub fn parse(text: &str) -> std::result::Result<EncryptionConfig, String> {
        let doc: ConfigDoc = serde_saphyr::from_str(text).map_err(|e| redacted(&e.to_string()))?;
        match doc.api_version.as_deref() {
            Some(CONFIG_API_VERSION) => {}
            other => {
                return Err(format!(
                    "apiVersion must be {CONFIG_API_VERSION:?}, got {:?}",
                    other.unwrap_or("")
                ));
            }
        }
        if doc.kind.as_deref() != Some("EncryptionConfiguration") {
            return Err(format!(
                "kind must be \"EncryptionConfiguration\", got {:?}",
                doc.kind.as_deref().unwrap_or("")
            ));
        }
        if doc.resources.is_empty() {
            return Err("resources: at least one resources is required".into());
        }
        let mut lists: HashMap<(String, String), Vec<Provider>> = HashMap::new();
        for (i, entry) in doc.resources.iter().enumerate() {
            let path = format!("resources[{i}]");
            if entry.resources.is_empty() {
                return Err(format!(
                    "{path}.resources: at least one {path}.resources is required"
                ));
            }
            if entry.providers.is_empty() {
                return Err(format!(
                    "{path}.providers: at least one {path}.providers is required"
                ));
            }
            let names = validate_resource_names(&entry.resources, &format!("{path}.resources"))?;
            let providers = entry
                .providers
                .iter()
                .enumerate()
                .map(|(j, p)| Provider::build(p, &format!("{path}.providers[{j}]")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for (group, resource) in names {
                for masking in [(group.clone(), "*".to_string()), ("*".into(), "*".into())] {
                    if masking != (group.clone(), resource.clone()) && lists.contains_key(&masking)
                    {
                        return Err(format!(
                            "resource \"{}\" is masked by earlier rule \"{}\"",
                            yaml_name(&group, &resource),
                            yaml_name(&masking.0, &masking.1)
                        ));
                    }
                }
                lists
                    .entry((group, resource))
                    .or_default()
                    .extend(providers.iter().cloned());
            }
        }
        Ok(EncryptionConfig {
            rules: lists
                .into_iter()
                .map(|(gr, providers)| (gr, Arc::new(Transformer { providers })))
                .collect(),
        })
    }

    /// The providers of a resource: its own entry, else its group's `*.<group>`, else `*.*`.
    pub fn transformer_for(&self, group: &str, resource: &str) -> Option<Arc<Transformer>> {
        [(group, resource), (group, "*"), ("*", "*")]
            .into_iter()
            .find_map(|(g, r)| self.rules.get(&(g.to_string(), r.to_string())))
            .cloned()
    }
}

/// A parse error without what could be key material: its first line only (the YAML parser
/// quotes the file's lines below it), with quoted values replaced.
fn redacted(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    let mut out = String::new();
    for (i, part) in line.split('"').enumerate() {
        out.push_str(if i % 2 == 1 { "REDACTED" } else { part });
        out.push('"');
    }
    out.pop();
    out
}

/// How a resource name reads in the file (`secrets`, `deployments.apps`, `*.`, `*.*`).
fn yaml_name(group: &str, resource: &str) -> String {
    if group.is_empty() && resource != "*" {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// Splits `resource[.group]` at the first dot, as apimachinery's `ParseGroupResource`.
fn parse_group_resource(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((resource, group)) => (group.to_string(), resource.to_string()),
        None => (String::new(), name.to_string()),
    }
}

/// kube-apiserver's checks of one `resources` list; returns its `(group, resource)`s.
fn validate_resource_names(
    names: &[String],
    path: &str,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut parsed = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let bad = |why: &str| format!("{path}[{j}]: Invalid value: {name:?}: {why}");
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("resource name should not contain capital letters"));
        }
        if name.is_empty() {
            return Err(bad("resource name must not be empty"));
        }
        if name == "*" {
            return Err(bad(
                "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources",
            ));
        }
        if matches!(
            name.as_str(),
            "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
        ) {
            return Err(bad(
                "resources which do not have REST API/s cannot be encrypted",
            ));
        }
        let (group, resource) = parse_group_resource(name);
        if group == "events.k8s.io" {
            return Err(bad(
                "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file",
            ));
        }
        if group == "extensions" {
            return Err(bad(
                "'extensions' group has been removed and cannot be used for encryption",
            ));
        }
        if group == "*" && resource != "*" {
            return Err(bad(
                "encrypting the same resource across groups is not supported",
            ));
        }
        parsed.push((group, resource));
    }
    for (i, a) in parsed.iter().enumerate() {
        for (j, b) in parsed.iter().enumerate() {
            if i == j {
                continue;
            }
            if a == b {
                return Err(format!(
                    "{path}: Invalid value: {names:?}: the same resource cannot be specified multiple times"
                ));
            }
            let everything = a.0 == "*" && a.1 == "*";
            if everything || (a.0 == b.0 && (a.1 == "*" || b.1 == "*")) {
                return Err(format!(
                    "{path}: Invalid value: {names:?}: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked"
                ));
            }
        }
    }
    Ok(parsed)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigDoc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceDoc {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderDoc {
    aescbc: Option<KeysDoc>,
    aesgcm: Option<KeysDoc>,
    secretbox: Option<KeysDoc>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    #[serde(default)]
    keys: Vec<KeyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// One key of a provider, with its name (the last part of the value's prefix).
#[derive(Clone)]
struct NamedKey<K> {
    name: String,
    key: K,
}

/// An AES key of 128, 192 or 256 bits.
#[derive(Clone)]
enum AesKey {
    Aes128([u8; 16]),
    Aes192([u8; 24]),
    Aes256([u8; 32]),
}

/// One entry of a `providers` list.
#[derive(Clone)]
enum Provider {
    Identity,
    AesCbc(Vec<NamedKey<AesKey>>),
    AesGcm(Vec<NamedKey<AesKey>>),
    Secretbox(Vec<NamedKey<[u8; 32]>>),
}

impl Provider {
    fn build(doc: &ProviderDoc, path: &str) -> std::result::Result<Provider, String> {
        let given = [
            doc.aescbc.is_some(),
            doc.aesgcm.is_some(),
            doc.secretbox.is_some(),
            doc.identity.is_some(),
            doc.kms.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if given == 0 {
            return Err(format!(
                "{path}: provider does not contain any of the expected providers: AESGCM, AESCBC, Secretbox, Identity"
            ));
        }
        if given > 1 {
            return Err(format!(
                "{path}: more than one provider specified in a single element, should split into different list elements"
            ));
        }
        if doc.kms.is_some() {
            return Err(format!(
                "{path}.kms: the KMS provider is not supported (use aescbc, aesgcm, secretbox or identity)"
            ));
        }
        match (&doc.aescbc, &doc.aesgcm, &doc.secretbox) {
            (Some(keys), _, _) => {
                let keys = decode_keys(keys, &format!("{path}.aescbc.keys"), &AES_KEY_SIZES)?;
                Ok(Provider::AesCbc(aes_keys(keys)))
            }
            (_, Some(keys), _) => {
                let keys = decode_keys(keys, &format!("{path}.aesgcm.keys"), &AES_KEY_SIZES)?;
                Ok(Provider::AesGcm(aes_keys(keys)))
            }
            (_, _, Some(keys)) => {
                let keys = decode_keys(
                    keys,
                    &format!("{path}.secretbox.keys"),
                    &SECRETBOX_KEY_SIZES,
                )?;
                Ok(Provider::Secretbox(
                    keys.into_iter()
                        .filter_map(|k| {
                            Some(NamedKey {
                                name: k.name,
                                key: k.key.try_into().ok()?,
                            })
                        })
                        .collect(),
                ))
            }
            // Exactly one provider is given: identity.
            _ => Ok(Provider::Identity),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::AesCbc(_) => "aescbc",
            Provider::AesGcm(_) => "aesgcm",
            Provider::Secretbox(_) => "secretbox",
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Provider::Identity => "",
            Provider::AesCbc(_) => AESCBC_PREFIX,
            Provider::AesGcm(_) => AESGCM_PREFIX,
            Provider::Secretbox(_) => SECRETBOX_PREFIX,
        }
    }
}

/// Checks a provider's keys (a name, a base64 secret of an accepted size) and decodes them.
fn decode_keys(
    doc: &KeysDoc,
    path: &str,
    sizes: &[usize],
) -> std::result::Result<Vec<NamedKey<Vec<u8>>>, String> {
    if doc.keys.is_empty() {
        return Err(format!("{path}: at least one keys is required"));
    }
    let mut out: Vec<NamedKey<Vec<u8>>> = Vec::new();
    for (i, key) in doc.keys.iter().enumerate() {
        let path = format!("{path}[{i}]");
        if key.name.is_empty() {
            return Err(format!("{path}.name: name is a mandatory field for a key"));
        }
        if key.name.contains(':') {
            return Err(format!("{path}.name: a key name must not contain ':'"));
        }
        if out.iter().any(|k| k.name == key.name) {
            return Err(format!(
                "{path}.name: key name {:?} is used twice in this provider",
                key.name
            ));
        }
        if key.secret.is_empty() {
            return Err(format!(
                "{path}.secret: secret is a mandatory field for a key"
            ));
        }
        // Never echo the secret itself.
        let secret = base64::engine::general_purpose::STANDARD
            .decode(key.secret.trim())
            .map_err(|_| {
                format!(
                    "{path}.secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
                )
            })?;
        if !sizes.contains(&secret.len()) {
            return Err(format!(
                "{path}.secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of {sizes:?}",
                secret.len()
            ));
        }
        out.push(NamedKey {
            name: key.name.clone(),
            key: secret,
        });
    }
    Ok(out)
}

fn aes_keys(keys: Vec<NamedKey<Vec<u8>>>) -> Vec<NamedKey<AesKey>> {
    keys.into_iter()
        .filter_map(|k| {
            let key = match k.key.len() {
                16 => AesKey::Aes128(k.key.try_into().ok()?),
                24 => AesKey::Aes192(k.key.try_into().ok()?),
                _ => AesKey::Aes256(k.key.try_into().ok()?),
            };
            Some(NamedKey { name: k.name, key })
        })
        .collect()
}

/// The providers of one resource: the first writes, any of them reads.
pub struct Transformer {
    providers: Vec<Provider>,
}

impl Transformer {
    /// The value to store for `plaintext` at store key `key`.
    pub fn to_storage(
        &self,
        key: &str,
        plaintext: &[u8],
    ) -> std::result::Result<Vec<u8>, TransformError> {
        let Some(provider) = self.providers.first() else {
            return Ok(plaintext.to_vec());
        };
        let name = provider.name();
        let encrypt_err = |reason: String| TransformError::Encrypt {
            provider: name,
            reason,
        };
        let (key_name, sealed) = match provider {
            Provider::Identity => return Ok(plaintext.to_vec()),
            Provider::AesCbc(keys) => {
                let k = first_key(keys, name)?;
                (
                    &k.name,
                    cbc_encrypt(&k.key, plaintext).map_err(&encrypt_err)?,
                )
            }
            Provider::AesGcm(keys) => {
                let k = first_key(keys, name)?;
                let sealed = gcm_seal(&k.key, plaintext, key.as_bytes()).map_err(&encrypt_err)?;
                (&k.name, sealed)
            }
            Provider::Secretbox(keys) => {
                let k = first_key(keys, name)?;
                let sealed = secretbox_seal(&k.key, plaintext).map_err(&encrypt_err)?;
                (&k.name, sealed)
            }
        };
        let prefix = provider.prefix();
        let mut out = Vec::with_capacity(prefix.len() + key_name.len() + 1 + sealed.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(key_name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of the value stored at `key`: the providers are tried in order, each by its
    /// prefix and key name; `identity` reads only unencrypted data.
    pub fn from_storage(
        &self,
        key: &str,
        data: &[u8],
    ) -> std::result::Result<Vec<u8>, TransformError> {
        let mut error = None;
        for provider in &self.providers {
            let attempt = match provider {
                Provider::Identity => {
                    if data.starts_with(ENCRYPTED_PREFIX) {
                        error.get_or_insert(TransformError::EncryptedData);
                        continue;
                    }
                    return Ok(data.to_vec());
                }
                Provider::AesCbc(keys) => open_with(provider, keys, data, cbc_decrypt),
                Provider::AesGcm(keys) => open_with(provider, keys, data, |k, body| {
                    gcm_open(k, body, key.as_bytes())
                }),
                Provider::Secretbox(keys) => open_with(provider, keys, data, secretbox_open),
            };
            match attempt {
                Some(Ok(plaintext)) => return Ok(plaintext),
                Some(Err(e)) => error = Some(e),
                None => {}
            }
        }
        Err(error.unwrap_or(TransformError::NoMatchingPrefix))
    }
}

fn first_key<'a, K>(
    keys: &'a [NamedKey<K>],
    provider: &'static str,
) -> std::result::Result<&'a NamedKey<K>, TransformError> {
    keys.first().ok_or(TransformError::Encrypt {
        provider,
        reason: "no key".into(),
    })
}

/// Tries the keys of `provider` whose `<prefix><name>:` starts `data`; None when none does.
fn open_with<K>(
    provider: &Provider,
    keys: &[NamedKey<K>],
    data: &[u8],
    open: impl Fn(&K, &[u8]) -> std::result::Result<Vec<u8>, String>,
) -> Option<std::result::Result<Vec<u8>, TransformError>> {
    let rest = data.strip_prefix(provider.prefix().as_bytes())?;
    let mut result = None;
    for k in keys {
        let Some(body) = rest
            .strip_prefix(k.name.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            continue;
        };
        match open(&k.key, body) {
            Ok(plaintext) => return Some(Ok(plaintext)),
            Err(reason) => {
                result = Some(Err(TransformError::Decrypt {
                    provider: provider.name(),
                    key: k.name.clone(),
                    reason,
                }));
            }
        }
    }
    Some(result.unwrap_or_else(|| {
        Err(TransformError::Decrypt {
            provider: provider.name(),
            key: String::from_utf8_lossy(rest.split(|b| *b == b':').next().unwrap_or_default())
                .into_owned(),
            reason: format!(
                "no matching key was found for the provided {} transformer",
                provider.name()
            ),
        })
    }))
}

fn cbc_encrypt(key: &AesKey, plaintext: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<C>(
        key: &[u8],
        iv: &[u8; AES_BLOCK],
        plaintext: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        C: BlockCipherEncrypt,
        cbc::Encryptor<C>: KeyIvInit + BlockModeEncrypt,
    {
        let encryptor = cbc::Encryptor::<C>::new_from_slices(key, iv).map_err(|e| e.to_string())?;
        Ok(encryptor.encrypt_padded_vec::<Pkcs7>(plaintext))
    }
    let iv: [u8; AES_BLOCK] = rand::random();
    let body = match key {
        AesKey::Aes128(k) => run::<aes::Aes128>(k, &iv, plaintext),
        AesKey::Aes192(k) => run::<aes::Aes192>(k, &iv, plaintext),
        AesKey::Aes256(k) => run::<aes::Aes256>(k, &iv, plaintext),
    }?;
    let mut out = Vec::with_capacity(AES_BLOCK + body.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&body);
    Ok(out)
}

fn cbc_decrypt(key: &AesKey, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<C>(key: &[u8], iv: &[u8], body: &[u8]) -> std::result::Result<Vec<u8>, String>
    where
        C: BlockCipherDecrypt,
        cbc::Decryptor<C>: KeyIvInit + BlockModeDecrypt,
    {
        cbc::Decryptor::<C>::new_from_slices(key, iv)
            .map_err(|e| e.to_string())?
            .decrypt_padded_vec::<Pkcs7>(body)
            .map_err(|_| "invalid padding on input".to_string())
    }
    if data.len() < AES_BLOCK {
        return Err("the stored data was shorter than the required size".into());
    }
    let (iv, body) = data.split_at(AES_BLOCK);
    if body.is_empty() || body.len() % AES_BLOCK != 0 {
        return Err("the stored data is not a multiple of the block size".into());
    }
    match key {
        AesKey::Aes128(k) => run::<aes::Aes128>(k, iv, body),
        AesKey::Aes192(k) => run::<aes::Aes192>(k, iv, body),
        AesKey::Aes256(k) => run::<aes::Aes256>(k, iv, body),
    }
}

type Gcm<C> = AesGcm<C, aes_gcm::aead::consts::U12>;

fn gcm_seal(key: &AesKey, plaintext: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<A: Aead + KeyInit>(
        key: &[u8],
        nonce: &[u8; GCM_NONCE],
        msg: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        for<'a> &'a aes_gcm::aead::Nonce<A>: TryFrom<&'a [u8]>,
    {
        let aead = A::new_from_slice(key).map_err(|e| e.to_string())?;
        let nonce: &aes_gcm::aead::Nonce<A> = nonce[..]
            .try_into()
            .map_err(|_| "bad nonce size".to_string())?;
        aead.encrypt(nonce, Payload { msg, aad })
            .map_err(|_| "AES-GCM seal failed".to_string())
    }
    let nonce: [u8; GCM_NONCE] = rand::random();
    let sealed = match key {
        AesKey::Aes128(k) => run::<Gcm<aes::Aes128>>(k, &nonce, plaintext, aad),
        AesKey::Aes192(k) => run::<Gcm<aes::Aes192>>(k, &nonce, plaintext, aad),
        AesKey::Aes256(k) => run::<Gcm<aes::Aes256>>(k, &nonce, plaintext, aad),
    }?;
    let mut out = Vec::with_capacity(GCM_NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn gcm_open(key: &AesKey, data: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn run<A: Aead + KeyInit>(
        key: &[u8],
        nonce: &[u8],
        msg: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, String>
    where
        for<'a> &'a aes_gcm::aead::Nonce<A>: TryFrom<&'a [u8]>,
    {
        let aead = A::new_from_slice(key).map_err(|e| e.to_string())?;
        let nonce: &aes_gcm::aead::Nonce<A> =
            nonce.try_into().map_err(|_| "bad nonce size".to_string())?;
        aead.decrypt(nonce, Payload { msg, aad })
            .map_err(|_| "message authentication failed".to_string())
    }
    if data.len() < GCM_NONCE {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, body) = data.split_at(GCM_NONCE);
    match key {
        AesKey::Aes128(k) => run::<Gcm<aes::Aes128>>(k, nonce, body, aad),
        AesKey::Aes192(k) => run::<Gcm<aes::Aes192>>(k, nonce, body, aad),
        AesKey::Aes256(k) => run::<Gcm<aes::Aes256>>(k, nonce, body, aad),
    }
}

fn secretbox_seal(key: &[u8; 32], plaintext: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use crypto_secretbox::aead::Aead as _;
    use crypto_secretbox::{KeyInit as _, Nonce, XSalsa20Poly1305};
    let nonce: [u8; SECRETBOX_NONCE] = rand::random();
    let boxed = XSalsa20Poly1305::new(&(*key).into())
        .encrypt(&Nonce::from(nonce), plaintext)
        .map_err(|_| "secretbox seal failed".to_string())?;
    let mut out = Vec::with_capacity(SECRETBOX_NONCE + boxed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&boxed);
    Ok(out)
}

fn secretbox_open(key: &[u8; 32], data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use crypto_secretbox::aead::Aead as _;
    use crypto_secretbox::{KeyInit as _, Nonce, XSalsa20Poly1305};
    if data.len() < SECRETBOX_NONCE + SECRETBOX_TAG {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, body) = data.split_at(SECRETBOX_NONCE);
    let nonce: [u8; SECRETBOX_NONCE] =
        nonce.try_into().map_err(|_| "bad nonce size".to_string())?;
    XSalsa20Poly1305::new(&(*key).into())
        .decrypt(&Nonce::from(nonce), body)
        .map_err(|_| "message authentication failed".to_string())
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
        served: &[ResourceInfo],
    ) -> EncryptedStorage {
        let by_resource = served
            .iter()
            .filter_map(|info| {
                config
                    .transformer_for(info.group, info.resource)
                    .map(|t| (info.resource, t))
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
            let stream = changes.map(move |change| match change? {
                Change::Put { new, prev } => Ok(Change::Put {
                    new: open(new)?,
                    prev: prev.map(&open).transpose()?,
                }),
                Change::Delete { prev } => Ok(Change::Delete { prev: open(prev)? }),
                progress @ Change::Progress(_) => Ok(progress),
            });
            Ok(stream.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes(range(32))`, base64.
    const KEY32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY: &str = "/registry/secrets/default/s1";
    const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

    fn config(providers: &str) -> EncryptionConfig {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        );
        EncryptionConfig::parse(&text).unwrap()
    }

    fn secrets(config: &EncryptionConfig) -> Arc<Transformer> {
        config.transformer_for("", "secrets").unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn stored(prefix: &str, body_hex: &str) -> Vec<u8> {
        let mut v = prefix.as_bytes().to_vec();
        v.extend(hex(body_hex));
        v
    }

    #[test]
    fn values_written_by_other_implementations_decrypt() {
        // Made with Python's `cryptography` (AES-CBC/PKCS#7, AES-GCM with the key as AAD), laid
        // out as kube-apiserver stores them.
        let t = secrets(&config(&format!(
            "  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - aesgcm:\n      keys: [{{name: key1, secret: {KEY32}}}]\n"
        )));
        let cbc = stored(
            "k8s:enc:aescbc:v1:key1:",
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafda54e881eafae68f34aa2ddb00e56b52ebc8f04455a57c27e78aeee850c41f0287a4a7535609c48c0de9e74dbdbab3018af66c95ed00289fb479660eb4e37993",
        );
        assert_eq!(t.from_storage(KEY, &cbc).unwrap(), PLAIN);
        let gcm = stored(
            "k8s:enc:aesgcm:v1:key1:",
            "101112131415161718191a1b06dcf37f27ad1889e8266d7e7d1c1d71fb722a6f6fa3758b9cdb92062d2723b4228d7539d7c726b90b52d507f3d574262e9e3a0e4ce72c958f1d65fc170561715e6c4312",
        );
        assert_eq!(t.from_storage(KEY, &gcm).unwrap(), PLAIN);
        // AES-GCM binds the value to its key: moved elsewhere, it does not decrypt.
        assert!(matches!(
            t.from_storage("/registry/secrets/default/other", &gcm),
            Err(TransformError::Decrypt { .. })
        ));
        // Unprefixed data without identity listed.
        assert_eq!(
            t.from_storage(KEY, PLAIN),
            Err(TransformError::NoMatchingPrefix)
        );
    }

    #[test]
    fn every_provider_round_trips_with_its_prefix() {
        for provider in ["aescbc", "aesgcm", "secretbox"] {
            let t = secrets(&config(&format!(
                "  - {provider}:\n      keys:\n      - name: key1\n        secret: {KEY32}\n"
            )));
            let value = t.to_storage(KEY, PLAIN).unwrap();
            let prefix = format!("k8s:enc:{provider}:v1:key1:");
            assert!(value.starts_with(prefix.as_bytes()), "{provider}");
            assert!(!value.windows(8).any(|w| w == b"password"), "{provider}");
            assert_eq!(t.from_storage(KEY, &value).unwrap(), PLAIN, "{provider}");
            // Two writes of the same value differ (random IV/nonce).
            assert_ne!(value, t.to_storage(KEY, PLAIN).unwrap(), "{provider}");
            // A flipped byte is refused (CBC has no authentication; its padding usually fails).
            if provider != "aescbc" {
                let mut bad = value.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(t.from_storage(KEY, &bad).is_err(), "{provider}");
            }
        }
        for size in [16, 24] {
            let key = base64::engine::general_purpose::STANDARD.encode(vec![7u8; size]);
            for provider in ["aescbc", "aesgcm"] {
                let t = secrets(&config(&format!(
                    "  - {provider}:\n      keys: [{{name: k, secret: {key}}}]\n"
                )));
                let value = t.to_storage(KEY, PLAIN).unwrap();
                assert_eq!(t.from_storage(KEY, &value).unwrap(), PLAIN);
            }
        }
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_the_first() {
        let key2 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let old = secrets(&config(&format!(
            "  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - identity: {{}}\n"
        )));
        let new = secrets(&config(&format!(
            "  - secretbox:\n      keys: [{{name: key2, secret: {key2}}}]\n  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n  - identity: {{}}\n"
        )));
        let written_before = old.to_storage(KEY, PLAIN).unwrap();
        assert_eq!(new.from_storage(KEY, &written_before).unwrap(), PLAIN);
        // Plaintext from before encryption was turned on reads through identity.
        assert_eq!(new.from_storage(KEY, PLAIN).unwrap(), PLAIN);
        let rewritten = new.to_storage(KEY, PLAIN).unwrap();
        assert!(rewritten.starts_with(b"k8s:enc:secretbox:v1:key2:"));
        // The old configuration does not know key2.
        assert!(matches!(
            old.from_storage(KEY, &rewritten),
            Err(TransformError::EncryptedData)
        ));
        // Identity first: writes plaintext, still reads encrypted data.
        let off = secrets(&config(&format!(
            "  - identity: {{}}\n  - aescbc:\n      keys: [{{name: key1, secret: {KEY32}}}]\n"
        )));
        assert_eq!(off.to_storage(KEY, PLAIN).unwrap(), PLAIN);
        assert_eq!(off.from_storage(KEY, &written_before).unwrap(), PLAIN);
    }

    #[test]
    fn resources_match_exactly_then_by_group_then_everything() {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [events]\n  providers: [{{identity: {{}}}}]\n\
             - resources: [secrets, configmaps]\n  providers:\n  - aesgcm: {{keys: [{{name: a, secret: {KEY32}}}]}}\n\
             - resources: ['*.apps']\n  providers:\n  - aescbc: {{keys: [{{name: b, secret: {KEY32}}}]}}\n\
             - resources: ['*.*']\n  providers:\n  - secretbox: {{keys: [{{name: c, secret: {KEY32}}}]}}\n"
        );
        let c = EncryptionConfig::parse(&text).unwrap();
        let prefix_of = |g: &str, r: &str| {
            let t = c.transformer_for(g, r).unwrap();
            let v = t.to_storage("/k", b"x").unwrap();
            String::from_utf8_lossy(&v[..v.len().min(22)]).into_owned()
        };
        assert_eq!(prefix_of("", "events"), "x");
        assert!(prefix_of("", "configmaps").starts_with("k8s:enc:aesgcm:v1:a:"));
        assert!(prefix_of("apps", "deployments").starts_with("k8s:enc:aescbc:v1:b:"));
        assert!(prefix_of("", "pods").starts_with("k8s:enc:secretbox:v1:c"));
        let only_secrets = config("  - identity: {}\n");
        assert!(only_secrets.transformer_for("", "configmaps").is_none());
        assert!(only_secrets.transformer_for("", "secrets").is_some());
    }

    #[test]
    fn bad_configurations_name_the_problem() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        let err = |body: &str| EncryptionConfig::parse(&format!("{head}{body}")).unwrap_err();
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 10]);
        assert!(
            err(&format!(
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k, secret: {short}}}]}}\n"
            ))
            .contains("resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 10")
        );
        assert!(
            err(&format!(
                "resources:\n- resources: [secrets]\n  providers:\n  - secretbox: {{keys: [{{name: k, secret: {}}}]}}\n",
                base64::engine::general_purpose::STANDARD.encode([1u8; 16])
            ))
            .contains("expected one of [32]")
        );
        assert!(
            err("resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: '%%%'}]}\n")
                .contains("secrets must be base64 encoded")
        );
        assert!(
            err("resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n")
                .contains("at least one keys is required")
        );
        assert!(
            err("resources:\n- resources: [secrets]\n  providers:\n  - aescbs: {keys: []}\n")
                .contains("aescbs")
        );
        assert!(
            err("resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: x}\n")
                .contains("KMS provider is not supported")
        );
        assert!(
            err("resources:\n- resources: [secrets]\n  providers:\n  - {identity: {}, aescbc: {keys: []}}\n")
                .contains("more than one provider")
        );
        assert!(
            err("resources:\n- resources: [Secrets]\n  providers: [{identity: {}}]\n")
                .contains("capital letters")
        );
        assert!(
            err("resources:\n- resources: ['*']\n  providers: [{identity: {}}]\n")
                .contains("use '*.'")
        );
        assert!(
            err("resources:\n- resources: [secrets, '*.']\n  providers: [{identity: {}}]\n")
                .contains("overlapping")
        );
        assert!(
            err("resources:\n- resources: ['*.*']\n  providers: [{identity: {}}]\n- resources: [secrets]\n  providers: [{identity: {}}]\n")
                .contains("resource \"secrets\" is masked by earlier rule \"*.*\"")
        );
        assert!(err("resources: []\n").contains("at least one resources"));
        let wrong =
            EncryptionConfig::parse("apiVersion: v1\nkind: EncryptionConfiguration\n").unwrap_err();
        assert!(wrong.contains("apiVersion"), "{wrong}");
        let e = err(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: \"{KEY32}\"}}\n"
        ));
        assert!(!e.contains(KEY32) && e.contains("line 6"), "{e}");
        let e = err(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: a, secret: {KEY32}}}]}}\n  - aesgcm: {{keys: [{{name: a, secret: {KEY32}, extra: 1}}]}}\n"
        ));
        assert!(!e.contains(KEY32) && e.contains("extra"), "{e}");
        assert_eq!(
            redacted("error: invalid type: string \"c2Vj\", expected a sequence\n 6 | keys: c2Vj"),
            "error: invalid type: string \"REDACTED\", expected a sequence"
        );
        // The key never appears in an error.
        let e = err(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: k:1, secret: {KEY32}}}]}}\n"
        ));
        assert!(!e.contains(KEY32), "{e}");
    }
}
