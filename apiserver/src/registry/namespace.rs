//! The namespace finalizer (kube-controller-manager's namespace controller, run by every
//! replica): empties each `Terminating` namespace, then lets it go.

use super::*;

impl Registry {
    /// The namespace finalizer (kube-controller-manager's namespace controller, run by every
    /// replica): empties each `Terminating` namespace, then drops its `kubernetes` finalizer, so
    /// that it goes once its contents are gone. Every step is a conditional write, so replicas
    /// running it at once do no harm. Runs until the process ends.
    pub async fn run_namespace_finalizer(self: Arc<Self>) {
        loop {
            if let Err(e) = self.finalize_namespaces().await {
                tracing::debug!(error = %e.message, "namespace finalizer pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(NAMESPACE_SWEEP_INTERVAL) => {}
                _ = self.namespace_kick.notified() => {}
            }
        }
    }

    /// One pass of the namespace finalizer over every `Terminating` namespace.
    pub(super) async fn finalize_namespaces(&self) -> Result<(), ApiError> {
        let ns_info = self.namespaces();
        let prefix = self.collection_prefix(ns_info, None);
        let page = self
            .storage
            .list(&prefix, "", 0, 0)
            .await
            .map_err(|e| ApiError::from_storage(e, "namespaces", "", ""))?;
        for stored in &page.items {
            let ns = self.decode(ns_info, stored)?;
            if ns["metadata"]["deletionTimestamp"].is_string() {
                self.finalize_namespace(stored, ns).await?;
            }
        }
        Ok(())
    }

    /// Deletes everything in one terminating namespace (objects with finalizers get their
    /// `deletionTimestamp` and stay until those are removed); when nothing is left, removes the
    /// `kubernetes` finalizer, which deletes the namespace unless `metadata.finalizers` hold it.
    pub(super) async fn finalize_namespace(
        &self,
        stored: &Stored,
        mut ns: Value,
    ) -> Result<(), ApiError> {
        let name = ns["metadata"]["name"].as_str().unwrap_or("").to_string();
        let none = HashMap::new();
        let mut left = 0;
        for info in self.resources.iter().filter(|r| r.namespaced) {
            let prefix = self.collection_prefix(info, Some(&name));
            let page = self
                .storage
                .list(&prefix, "", 0, 0)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, ""))?;
            for item in &page.items {
                let obj = self.decode(info, item)?;
                match self.delete_one(info, item, obj, &none).await {
                    Ok(obj) if obj["metadata"]["deletionTimestamp"].is_string() => left += 1,
                    Ok(_) => {}
                    Err(e) if matches!(e.reason, Reason::Conflict | Reason::NotFound) => left += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        let finalizers = ns["spec"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if left > 0 || !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
            return Ok(());
        }
        let kept: Vec<Value> = finalizers
            .into_iter()
            .filter(|f| f != NAMESPACE_FINALIZER)
            .collect();
        ns["spec"]["finalizers"] = json!(kept);
        let info = self.namespaces();
        let written = if info.strategy.holds_deletion(&ns) {
            self.storage
                .update(&stored.key, Self::encode(&ns), stored.revision)
                .await
        } else {
            self.storage
                .delete(&stored.key, stored.revision, self.children(info, &ns))
                .await
        };
        match written {
            // Changed meanwhile (e.g. a new finalizer pass elsewhere): the next pass decides.
            Ok(_) | Err(StorageError::Conflict | StorageError::NotFound) => Ok(()),
            Err(e) => Err(ApiError::from_storage(e, "namespaces", "", &name)),
        }
    }
}
