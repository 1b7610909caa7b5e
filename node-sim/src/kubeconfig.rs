//! The API client: from a kubeconfig file, or as kubectl finds one (`KUBECONFIG`,
//! `~/.kube/config`, in-cluster). Kept small so it can move into the shared client crate.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// A client for the current context of `path`, or of the inferred configuration.
pub async fn client(path: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
}
