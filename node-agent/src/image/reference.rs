//! Image references: Docker's normalization rules (through `oci_spec::distribution::Reference`)
//! and naming of imported images.

use oci_client::Reference;

use super::ImageError;

/// The repository bare-tag imports are recorded under: `docker.io/library/import:<tag>`.
pub const IMPORT_REPOSITORY: &str = "docker.io/library/import";

/// Parses with Docker's rules: default registry `docker.io`, `library/` for official images,
/// tag `latest` when neither tag nor digest is given.
pub(crate) fn parse(reference: &str) -> Result<Reference, ImageError> {
    if reference.is_empty() || reference.trim() != reference {
        return Err(ImageError::InvalidReference(reference.to_string()));
    }
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference(format!("{reference}: {e}")))
}

/// `busybox` → `docker.io/library/busybox:latest`; digests and ports are kept.
pub(crate) fn normalize(reference: &str) -> Result<String, ImageError> {
    Ok(parse(reference)?.whole())
}

/// The name an `org.opencontainers.image.ref.name` annotation stands for (see the module docs).
pub(crate) fn import_name(ref_name: &str) -> Result<String, ImageError> {
    if ref_name.contains('/') || ref_name.contains(':') || ref_name.contains('@') {
        normalize(ref_name)
    } else {
        normalize(&format!("{IMPORT_REPOSITORY}:{ref_name}"))
    }
}

/// `sha256:<64 lowercase hex>`.
pub(crate) fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize("foo/bar").unwrap(), "docker.io/foo/bar:latest");
        assert_eq!(
            normalize("index.docker.io/library/busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/x/y:1").unwrap(),
            "127.0.0.1:5000/x/y:1"
        );
        assert_eq!(normalize("localhost/x").unwrap(), "localhost/x:latest");
        assert_eq!(normalize("quay.io/a/b:c").unwrap(), "quay.io/a/b:c");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "a b",
            " busybox",
            "busybox@sha256:abc",
            "-x",
            "x/",
            "a::b",
        ] {
            assert!(
                matches!(normalize(bad), Err(ImageError::InvalidReference(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn import_names() {
        assert_eq!(import_name("bb").unwrap(), "docker.io/library/import:bb");
        assert_eq!(
            import_name("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            import_name("127.0.0.1:5000/x/y:1").unwrap(),
            "127.0.0.1:5000/x/y:1"
        );
        assert!(import_name("Bad Name").is_err());
    }

    #[test]
    fn digests() {
        assert!(is_sha256_digest(&format!("sha256:{}", "0f".repeat(32))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "0F".repeat(32))));
        assert!(!is_sha256_digest("sha256:../../etc"));
    }
}
