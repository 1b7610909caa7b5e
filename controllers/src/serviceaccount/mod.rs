//! The ServiceAccount controller (kube-controller-manager's `serviceaccount`): every active
//! namespace holds a ServiceAccount `default`, created when the namespace appears and again
//! whenever it is deleted ([`plan`] decides).
//!
//! The IO shell: informers on namespaces and service accounts feed a work queue of namespace
//! names (a namespace added or updated; an ensured service account deleted). A create the
//! API server refuses because the namespace is being terminated, or that finds the account
//! already there, is done; any other failure is retried after a back-off.

pub mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::Error;
use crate::shell::{Key, Plumbing, SyncOutcome, api_code};

/// What the workers share.
struct Shell {
    client: kube::Client,
    namespaces: Store<Namespace>,
    service_accounts: Store<ServiceAccount>,
}

/// The queue key of a namespace (a cluster-scoped object: its name only).
fn namespace_key(namespace: &str) -> Key {
    Key::new("", namespace)
}

/// Runs the ServiceAccount controller with `workers` concurrent syncs until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("serviceaccount");
    let namespace_store = plumbing.informer(
        Api::<Namespace>::all(client.clone()),
        |event, queue| match event {
            watcher::Event::Apply(namespace) | watcher::Event::InitApply(namespace) => {
                queue.add(namespace_key(&namespace.name_any()));
            }
            watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let namespaces = namespace_store.clone();
    let account_store = plumbing.informer(
        Api::<ServiceAccount>::all(client.clone()),
        move |event, queue| match event {
            watcher::Event::Delete(account)
                if plan::ENSURED_SERVICE_ACCOUNTS.contains(&account.name_any().as_str()) =>
            {
                if let Some(namespace) = account.namespace() {
                    queue.add(namespace_key(&namespace));
                }
            }
            // A relist may have hidden deletions: look at every namespace again.
            watcher::Event::InitDone => {
                for namespace in namespaces.state() {
                    queue.add(namespace_key(&namespace.name_any()));
                }
            }
            _ => {}
        },
    );
    let shell = Arc::new(Shell {
        client,
        namespaces: namespace_store,
        service_accounts: account_store,
    });
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key.name).await }
    };
    plumbing
        .run(workers, sync, |_| {}, std::future::pending(), shutdown)
        .await;
    Ok(())
}

impl Shell {
    /// One sync of one namespace: create the ensured service accounts it lacks.
    async fn sync(&self, namespace_name: &str) -> Result<SyncOutcome, Error> {
        let Some(namespace) = self.namespaces.get(&ObjectRef::new(namespace_name)) else {
            return Ok(SyncOutcome::Done);
        };
        let existing: BTreeSet<String> = self
            .service_accounts
            .state()
            .iter()
            .filter(|account| account.namespace().as_deref() == Some(namespace_name))
            .map(|account| account.name_any())
            .collect();
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace_name);
        for name in plan::missing_service_accounts(&namespace, &existing) {
            let account = plan::service_account(namespace_name, &name);
            match accounts.create(&PostParams::default(), &account).await {
                Ok(_) => {
                    tracing::info!(namespace = namespace_name, name, "created service account");
                }
                // Created meanwhile (our cache lags our own create).
                Err(err) if api_code(&err) == Some(409) => {}
                Err(kube::Error::Api(status))
                    if plan::refused_for_termination(status.code, &status.message) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(SyncOutcome::Done)
    }
}
