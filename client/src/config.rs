//! Kubeconfig loading as kubectl and kube-scheduler do it: `--kubeconfig` first, else the
//! `KUBECONFIG` variable (a colon-separated list, merged), else the in-cluster service account.
//! Reading the environment is the caller's job; `resolve` is pure.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// Where the client configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// One kubeconfig file (`--kubeconfig`).
    File(PathBuf),
    /// The files listed in `KUBECONFIG`, merged as kubectl merges them.
    Env(OsString),
    /// The pod's service account token and CA, and `KUBERNETES_SERVICE_HOST`.
    InCluster,
}

/// Picks the source: the flag, else a non-empty `KUBECONFIG`, else in-cluster.
pub fn resolve(flag: Option<&Path>, kubeconfig_env: Option<OsString>) -> ConfigSource {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return ConfigSource::File(path.to_path_buf());
    }
    match kubeconfig_env {
        Some(value) if !value.is_empty() => ConfigSource::Env(value),
        _ => ConfigSource::InCluster,
    }
}

/// Loads a kube-rs configuration from `source`.
pub async fn load(source: &ConfigSource) -> Result<kube::Config, Error> {
    let options = KubeConfigOptions::default();
    match source {
        ConfigSource::File(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
        }
        ConfigSource::Env(paths) => {
            let mut merged: Option<Kubeconfig> = None;
            for path in std::env::split_paths(paths).filter(|p| !p.as_os_str().is_empty()) {
                let next = Kubeconfig::read_from(&path)
                    .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
                merged = Some(match merged {
                    None => next,
                    Some(prev) => prev
                        .merge(next)
                        .map_err(|e| Error::Kubeconfig(format!("KUBECONFIG: {e}")))?,
                });
            }
            let kubeconfig =
                merged.ok_or_else(|| Error::Kubeconfig("KUBECONFIG names no file".into()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Kubeconfig(format!("KUBECONFIG: {e}")))
        }
        ConfigSource::InCluster => kube::Config::incluster()
            .map_err(|e| Error::Kubeconfig(format!("in-cluster configuration: {e}"))),
    }
}

/// Loads the configuration and builds a client.
pub async fn client(source: &ConfigSource) -> Result<kube::Client, Error> {
    let config = load(source).await?;
    kube::Client::try_from(config).map_err(Error::Api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_env() {
        let got = resolve(Some(Path::new("/a")), Some("/b".into()));
        assert_eq!(got, ConfigSource::File("/a".into()));
    }

    #[test]
    fn env_when_no_flag_and_in_cluster_last() {
        assert_eq!(
            resolve(None, Some("/b:/c".into())),
            ConfigSource::Env("/b:/c".into())
        );
        assert_eq!(resolve(None, Some("".into())), ConfigSource::InCluster);
        assert_eq!(resolve(Some(Path::new("")), None), ConfigSource::InCluster);
    }
}
