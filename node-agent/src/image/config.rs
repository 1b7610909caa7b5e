//! Image config → the [`ImageConfig`] a container inherits (Entrypoint, Cmd, Env, WorkingDir,
//! User).

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;

use super::{ImageConfig, ImageError};

/// The runtime part of an OCI image configuration. Empty strings count as unset.
pub fn image_config_from_oci(config: &ImageConfiguration) -> ImageConfig {
    let Some(c) = config.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|s| !s.is_empty()),
        user: c.user().clone().filter(|s| !s.is_empty()),
    }
}

/// Lenient fallback for configs `oci_spec` refuses (e.g. missing `rootfs`/`os` fields).
#[derive(Deserialize, Default)]
struct LooseImage {
    #[serde(default)]
    config: Option<LooseConfig>,
}

#[derive(Deserialize, Default)]
struct LooseConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// Parses an image config blob (OCI or Docker) into an [`ImageConfig`].
pub fn image_config_from_json(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    if let Ok(oci) = serde_json::from_slice::<ImageConfiguration>(bytes) {
        return Ok(image_config_from_oci(&oci));
    }
    let loose: LooseImage = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Import(format!("invalid image config: {e}")))?;
    let c = loose.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|s| !s.is_empty()),
        user: c.user.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_oci_config() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin"],"Entrypoint":["/e"],"Cmd":["sh","-c","x"],"WorkingDir":"/w","User":"0:0"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = image_config_from_json(json).unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/e".to_string()]));
        assert_eq!(c.cmd, Some(vec!["sh".into(), "-c".into(), "x".into()]));
        assert_eq!(c.env, vec!["PATH=/bin".to_string()]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.user.as_deref(), Some("0:0"));
    }

    #[test]
    fn loose_and_bad() {
        let c = image_config_from_json(br#"{"config":{"Cmd":["sh"],"User":""}}"#).unwrap();
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.user, None);
        assert_eq!(
            image_config_from_json(b"{}").unwrap(),
            ImageConfig::default()
        );
        assert!(image_config_from_json(b"nope").is_err());
    }
}
