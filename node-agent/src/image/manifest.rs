//! The few manifest/index fields the store reads (OCI and Docker v2 share them), and platform
//! selection from an image index.

use std::collections::HashMap;

use serde::Deserialize;

use super::ImageError;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Annotation naming an image in an OCI layout's `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's full-name annotation (also written by `docker save` ≥ 25).
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// Just enough to tell a manifest from an index.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    schema_version: Option<u32>,
}

pub(crate) enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

/// Parses manifest or index bytes (by `mediaType`, else by shape).
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
    if probe.schema_version == Some(1) {
        return Err("docker schema 1 manifests are not supported".into());
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) if probe.manifests.is_none() => {
            return Err(format!("unsupported manifest media type {other}"));
        }
        _ => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Parsed::Index)
            .map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_slice(bytes)
            .map(Parsed::Manifest)
            .map_err(|e| format!("invalid image manifest: {e}"))
    }
}

/// The OCI name of the machine's architecture (`x86_64` → `amd64`).
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The index entry for linux on this machine's architecture (an `arm64` entry prefers variant
/// `v8` or none); entries without a platform are taken only when nothing matches.
pub(crate) fn choose_platform(index: &Index) -> Result<&Descriptor, ImageError> {
    let arch = host_arch();
    let manifests: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .collect();
    let matching = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    };
    let preferred_variant = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| arch != "arm64" || matches!(p.variant.as_deref(), None | Some("v8")))
    };
    if let Some(d) = manifests
        .iter()
        .find(|d| matching(d) && preferred_variant(d))
        .or_else(|| manifests.iter().find(|d| matching(d)))
    {
        return Ok(d);
    }
    if let Some(d) = manifests.iter().find(|d| d.platform.is_none()) {
        return Ok(d);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .map(|p| format!("{}/{}", p.os, p.architecture))
        })
        .collect();
    Err(ImageError::Pull(format!(
        "no matching manifest for linux/{arch} in the image index (available: {})",
        available.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_platform() {
        let idx: Index = serde_json::from_str(&format!(
            r#"{{"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:1","platform":{{"os":"linux","architecture":"s390x-not"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:2","platform":{{"os":"linux","architecture":"{}"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:3","platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            host_arch()
        ))
        .unwrap();
        assert_eq!(choose_platform(&idx).unwrap().digest, "sha256:2");
        let none: Index = serde_json::from_str(r#"{"manifests":[]}"#).unwrap();
        assert!(choose_platform(&none).is_err());
    }

    #[test]
    fn tells_index_from_manifest() {
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"manifests":[]}"#),
            Ok(Parsed::Index(_))
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"config":{"digest":"sha256:1"},"layers":[]}"#),
            Ok(Parsed::Manifest(_))
        ));
        assert!(parse(br#"{"schemaVersion":1}"#).is_err());
        assert!(parse(b"[").is_err());
    }
}
