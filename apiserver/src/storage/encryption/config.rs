//! `--encryption-provider-config`: the `EncryptionConfiguration` file, its resource names
//! and providers, checked as kube-apiserver checks them.

use super::*;

/// A loaded configuration: which providers each configured resource uses.
#[derive(Clone, Default)]
pub struct EncryptionConfig {
    /// `(group, resource)` → providers, in file order; `resource` may be `*` (every resource of
    /// the group) and the group `*` (with resource `*`: everything).
    pub(super) rules: HashMap<(String, String), Arc<Transformer>>,
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
pub(super) fn redacted(error: &str) -> String {
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
pub(super) fn yaml_name(group: &str, resource: &str) -> String {
    if group.is_empty() && resource != "*" {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// Splits `resource[.group]` at the first dot, as apimachinery's `ParseGroupResource`.
pub(super) fn parse_group_resource(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((resource, group)) => (group.to_string(), resource.to_string()),
        None => (String::new(), name.to_string()),
    }
}

/// kube-apiserver's checks of one `resources` list; returns its `(group, resource)`s.
pub(super) fn validate_resource_names(
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
pub(super) struct ConfigDoc {
    pub(super) api_version: Option<String>,
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) resources: Vec<ResourceDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResourceDoc {
    #[serde(default)]
    pub(super) resources: Vec<String>,
    #[serde(default)]
    pub(super) providers: Vec<ProviderDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderDoc {
    pub(super) aescbc: Option<KeysDoc>,
    pub(super) aesgcm: Option<KeysDoc>,
    pub(super) secretbox: Option<KeysDoc>,
    pub(super) identity: Option<serde_json::Value>,
    pub(super) kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysDoc {
    #[serde(default)]
    pub(super) keys: Vec<KeyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyDoc {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) secret: String,
}

/// One key of a provider, with its name (the last part of the value's prefix).
#[derive(Clone)]
pub(super) struct NamedKey<K> {
    pub(super) name: String,
    pub(super) key: K,
}

/// An AES key of 128, 192 or 256 bits.
#[derive(Clone)]
pub(super) enum AesKey {
    Aes128([u8; 16]),
    Aes192([u8; 24]),
    Aes256([u8; 32]),
}

/// One entry of a `providers` list.
#[derive(Clone)]
pub(super) enum Provider {
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

    pub(super) fn name(&self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::AesCbc(_) => "aescbc",
            Provider::AesGcm(_) => "aesgcm",
            Provider::Secretbox(_) => "secretbox",
        }
    }

    pub(super) fn prefix(&self) -> &'static str {
        match self {
            Provider::Identity => "",
            Provider::AesCbc(_) => AESCBC_PREFIX,
            Provider::AesGcm(_) => AESGCM_PREFIX,
            Provider::Secretbox(_) => SECRETBOX_PREFIX,
        }
    }
}

/// Checks a provider's keys (a name, a base64 secret of an accepted size) and decodes them.
pub(super) fn decode_keys(
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

pub(super) fn aes_keys(keys: Vec<NamedKey<Vec<u8>>>) -> Vec<NamedKey<AesKey>> {
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
