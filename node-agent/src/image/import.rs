//! Importing images from an OCI image layout (a directory, or a tar of one as written by
//! `skopeo copy … oci-archive:`) or a `docker save` tar (`manifest.json` with
//! Config/RepoTags/Layers). Every blob is digest-verified as it is copied into the store; for
//! `docker save` the layers are checked against the config's `rootfs.diff_ids` and a Docker v2
//! manifest is synthesized (its digest is the record's digest). Tars are extracted into the
//! store's `tmp/` first (same filesystem, removed afterwards). See the module docs of `image`
//! for how names are chosen.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::manifest::{self, CONTAINERD_NAME, DOCKER_LAYER_TAR, DOCKER_MANIFEST, Parsed, REF_NAME};
use super::reference::{import_name, is_sha256_digest, normalize};
use super::store::{NewImage, TempPath, hex_digest, sha256_bytes};
use super::{ImageError, ImageRecord, ImageStore, image_config_from_json};

const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

fn ie(msg: impl Into<String>) -> ImageError {
    ImageError::Import(msg.into())
}

fn with_ctx(what: &str) -> impl Fn(ImageError) -> ImageError + '_ {
    move |e| match e {
        ImageError::Import(m) => ImageError::Import(format!("{what}: {m}")),
        ImageError::Io(e) => ImageError::Import(format!("{what}: {e}")),
        other => other,
    }
}

/// Imports `path` (see the module docs); blocking.
pub(crate) fn import(store: &ImageStore, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let meta = fs::metadata(path).map_err(|e| ie(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        return import_dir(store, path);
    }
    let tmp = TempPath::new(store.tmp_path(&store.tmp_dir(), "import"));
    fs::DirBuilder::new().mode(0o700).create(tmp.path())?;
    extract(path, tmp.path()).map_err(|e| ie(format!("extracting {}: {e}", path.display())))?;
    import_dir(store, tmp.path())
}

/// Extracts an (optionally gzip-compressed) tar; tar refuses `..` and symlink escapes.
fn extract(path: &Path, dest: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let gz = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.unpack(dest)
}

fn import_dir(store: &ImageStore, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    if dir.join("manifest.json").is_file() {
        import_docker(store, dir)
    } else if dir.join("index.json").is_file() {
        import_oci(store, dir)
    } else {
        Err(ie(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            dir.display()
        )))
    }
}

/// `base/rel`, refusing paths (or symlinks) that lead outside `base`.
fn inside(base: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let base = base.canonicalize()?;
    let p = base
        .join(rel.trim_start_matches('/'))
        .canonicalize()
        .map_err(|e| ie(format!("{rel}: {e}")))?;
    if !p.starts_with(&base) {
        return Err(ie(format!("{rel} points outside the archive")));
    }
    Ok(p)
}

fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    if !is_sha256_digest(digest) {
        return Err(ie(format!("unsupported digest {digest:?}")));
    }
    inside(dir, &format!("blobs/sha256/{}", &digest[7..]))
}

/// Reads a small layout blob (manifest, index) and checks its digest.
fn read_verified(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let bytes = fs::read(layout_blob(dir, digest)?)?;
    let got = sha256_bytes(&bytes);
    if got != digest {
        return Err(ie(format!("blob {digest} has digest {got}")));
    }
    Ok(bytes)
}

fn copy_blob(
    store: &ImageStore,
    dir: &Path,
    digest: &str,
    size: Option<u64>,
) -> Result<(), ImageError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let f = File::open(layout_blob(dir, digest)?)?;
    store
        .write_blob(digest, size, BufReader::new(f))
        .map_err(with_ctx(digest))
}

fn names_from(annotations: Option<&HashMap<String, String>>) -> Result<Vec<String>, ImageError> {
    let Some(a) = annotations else {
        return Ok(Vec::new());
    };
    if let Some(full) = a.get(CONTAINERD_NAME) {
        return Ok(vec![normalize(full)?]);
    }
    match a.get(REF_NAME) {
        Some(r) => Ok(vec![import_name(r)?]),
        None => Ok(Vec::new()),
    }
}

fn import_oci(store: &ImageStore, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    if !dir.join("oci-layout").is_file() {
        return Err(ie(format!(
            "{}: index.json without oci-layout",
            dir.display()
        )));
    }
    let index_bytes = fs::read(dir.join("index.json"))?;
    let index = match manifest::parse(&index_bytes).map_err(|e| ie(format!("index.json: {e}")))? {
        Parsed::Index(i) => i,
        Parsed::Manifest(_) => return Err(ie("index.json is not an image index")),
    };
    if index.manifests.is_empty() {
        return Err(ie("index.json lists no images"));
    }
    let mut records: Vec<ImageRecord> = Vec::new();
    for desc in &index.manifests {
        let names = names_from(desc.annotations.as_ref())?;
        let mut digest = desc.digest.clone();
        let mut bytes = read_verified(dir, &digest)?;
        let mut depth = 0;
        let m = loop {
            match manifest::parse(&bytes).map_err(ie)? {
                Parsed::Manifest(m) => break m,
                Parsed::Index(i) if depth < 3 => {
                    let entry = manifest::choose_platform(&i).map_err(|e| ie(e.to_string()))?;
                    digest = entry.digest.clone();
                    bytes = read_verified(dir, &digest)?;
                    depth += 1;
                }
                Parsed::Index(_) => return Err(ie("image indexes nested too deeply")),
            }
        };
        copy_blob(store, dir, &m.config.digest, m.config.size)?;
        let config = image_config_from_json(&store.read_blob(&m.config.digest)?)
            .map_err(with_ctx("image config"))?;
        let mut layers = Vec::new();
        for l in &m.layers {
            if l.media_type.contains("zstd") {
                return Err(ie(format!(
                    "layer {} is zstd-compressed ({}), which is not supported",
                    l.digest, l.media_type
                )));
            }
            copy_blob(store, dir, &l.digest, l.size)?;
            layers.push((l.digest.clone(), l.media_type.clone()));
        }
        let manifest_digest = store.write_blob_bytes(&bytes)?;
        let record = store
            .commit(NewImage {
                manifest_digest,
                config_digest: m.config.digest.clone(),
                config,
                layers,
                names,
            })
            .map_err(with_ctx(&digest))?;
        records.retain(|r| r.digest != record.digest);
        records.push(record);
    }
    Ok(records)
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigRootFs {
    #[serde(default)]
    rootfs: RootFs,
}

/// (digest of the file, digest of its uncompressed content, gzip?)
fn layer_digests(path: &Path) -> io::Result<(String, String, bool)> {
    let mut reader = BufReader::new(File::open(path)?);
    let gz = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    if gz {
        let mut raw = Sha256::new();
        let mut dec = flate2::read::MultiGzDecoder::new(HashingReader {
            inner: reader,
            hasher: &mut raw,
        });
        loop {
            let n = dec.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        drop(dec);
        Ok((hex_digest(raw), hex_digest(h), true))
    } else {
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let d = hex_digest(h);
        Ok((d.clone(), d, false))
    }
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A 64-hex name somewhere in `path` (`<hex>.json`, `blobs/sha256/<hex>`) is a claimed digest.
fn claimed_digest(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".json").unwrap_or(file);
    let d = format!("sha256:{stem}");
    is_sha256_digest(&d).then_some(d)
}

fn import_docker(store: &ImageStore, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(&fs::read(dir.join("manifest.json"))?)
        .map_err(|e| ie(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(ie("manifest.json lists no images"));
    }
    let mut records: Vec<ImageRecord> = Vec::new();
    for entry in entries {
        let config_bytes = fs::read(inside(dir, &entry.config)?)?;
        let config_digest = sha256_bytes(&config_bytes);
        if let Some(claimed) = claimed_digest(&entry.config)
            && claimed != config_digest
        {
            return Err(ie(format!(
                "config {} has digest {config_digest}",
                entry.config
            )));
        }
        let diff_ids = serde_json::from_slice::<ConfigRootFs>(&config_bytes)
            .map_err(|e| ie(format!("config {}: {e}", entry.config)))?
            .rootfs
            .diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(ie(format!(
                "config lists {} layers (rootfs.diff_ids), manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let config = image_config_from_json(&config_bytes).map_err(with_ctx("image config"))?;
        store.write_blob(
            &config_digest,
            Some(config_bytes.len() as u64),
            &config_bytes[..],
        )?;
        let mut layers = Vec::new();
        let mut layer_json = Vec::new();
        for (rel, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let path = inside(dir, rel)?;
            let (digest, uncompressed, gz) = layer_digests(&path)?;
            if &uncompressed != diff_id {
                return Err(ie(format!(
                    "layer {rel} has diff id {uncompressed}, the config says {diff_id}"
                )));
            }
            let size = fs::metadata(&path)?.len();
            store
                .write_blob(&digest, Some(size), BufReader::new(File::open(&path)?))
                .map_err(with_ctx(rel))?;
            let media_type = if gz {
                DOCKER_LAYER_GZIP
            } else {
                DOCKER_LAYER_TAR
            };
            layer_json
                .push(serde_json::json!({"mediaType": media_type, "size": size, "digest": digest}));
            layers.push((digest, media_type.to_string()));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config_bytes.len(), "digest": config_digest},
            "layers": layer_json,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let manifest_digest = store.write_blob_bytes(&manifest_bytes)?;
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| normalize(t))
            .collect::<Result<Vec<_>, _>>()?;
        let record = store.commit(NewImage {
            manifest_digest,
            config_digest,
            config,
            layers,
            names,
        })?;
        records.retain(|r| r.digest != record.digest);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_digests() {
        let hex = "a".repeat(64);
        assert_eq!(
            claimed_digest(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            claimed_digest(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(claimed_digest("abc/json"), None);
    }

    #[test]
    fn refuses_outside_paths() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("evil")).unwrap();
        assert!(inside(d.path(), "evil").is_err());
        assert!(inside(d.path(), "../x").is_err());
        fs::write(d.path().join("ok"), b"").unwrap();
        assert!(inside(d.path(), "ok").is_ok());
    }

    #[test]
    fn not_an_archive() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&d.path().join("store"), Default::default()).unwrap();
        let e = store.import(d.path()).unwrap_err();
        assert!(matches!(e, ImageError::Import(_)), "{e}");
        assert!(store.import(&d.path().join("missing")).is_err());
    }
}
