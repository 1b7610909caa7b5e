//! The `kubernetes` Service in `default` (kube-apiserver's bootstrap controller): the first
//! ClusterIP of the range, port 443 to the API servers' secure port, and its Endpoints and
//! EndpointSlice kept by the lease reconciler (`--endpoint-reconciler-type=lease`).
//!
//! Each API server renews a lease under `<prefix>/masterleases/<address>:<port>` every
//! [`RENEW_INTERVAL`] (its value carries the renew time; one older than [`LEASE_TTL`] has
//! expired and is deleted by the next replica that sees it) and writes the Endpoints from the
//! live leases when they differ. A server that stops removes its own lease and writes the
//! Endpoints without itself. All writes are conditional, so replicas doing this at once do no
//! harm.

use std::net::IpAddr;

use super::*;

/// How long a lease lives without renewal (kube-apiserver's master lease TTL).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a replica renews its lease and reconciles the Endpoints.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// One API server as the Endpoints list it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiServerEndpoint {
    pub address: IpAddr,
    pub port: u16,
}

fn unix_now() -> i64 {
    resources::now().as_second()
}

impl Registry {
    fn master_lease_prefix(&self) -> String {
        format!("{}/masterleases/", self.prefix)
    }

    fn master_lease_key(&self, me: ApiServerEndpoint) -> String {
        format!("{}{}:{}", self.master_lease_prefix(), me.address, me.port)
    }

    fn default_target(&self, resource: (&str, &str, &str), name: Option<&str>) -> Target<'_> {
        let (group, version, plural) = resource;
        Target {
            info: self
                .find(group, version, plural)
                .expect("the kubernetes Service's kinds are served"),
            namespace: Some(NAMESPACE.into()),
            name: name.map(str::to_string),
            subresource: None,
        }
    }

    /// Creates the `kubernetes` Service if it is missing (another replica may be doing the
    /// same: whoever is second finds it there).
    pub async fn ensure_kubernetes_service(&self, secure_port: u16) -> Result<(), ApiError> {
        let t = self.default_target(("", "v1", "services"), None);
        let key = self.key(t.info, Some(NAMESPACE), NAME);
        let exists = || async {
            self.storage
                .get(&key)
                .await
                .map(|s| s.is_some())
                .map_err(|e| ApiError::from_storage(e, "services", "", NAME))
        };
        if exists().await? {
            return Ok(());
        }
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE,
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "sessionAffinity": "None",
                     "clusterIP": self.service_ranges.first_ip().to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                "targetPort": secure_port}]}});
        match self.create_value(&t, &HashMap::new(), service).await {
            Ok(_) => Ok(()),
            Err(e) if exists().await? => {
                tracing::debug!(error = %e.message, "the kubernetes Service was created meanwhile");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Renews this server's lease and writes the Endpoints from the live leases, every
    /// [`RENEW_INTERVAL`], until the process ends.
    pub async fn run_endpoint_reconciler(self: Arc<Self>, me: ApiServerEndpoint) {
        loop {
            if let Err(e) = self.reconcile_endpoints(me, true).await {
                tracing::debug!(error = %e.message, "kubernetes endpoints pass failed");
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// On shutdown: drops this server's lease and writes the Endpoints without it.
    pub async fn remove_from_endpoints(&self, me: ApiServerEndpoint) {
        let key = self.master_lease_key(me);
        if let Ok(Some(stored)) = self.storage.get(&key).await {
            let _ = self.storage.delete(&key, stored.revision, Vec::new()).await;
        }
        if let Err(e) = self.reconcile_endpoints(me, false).await {
            tracing::warn!(error = %e.message, "could not remove this server from the kubernetes endpoints");
        }
    }

    /// One pass: renew (if `renew`), collect the live leases, drop the expired ones, write the
    /// Endpoints and EndpointSlice if they differ.
    pub(super) async fn reconcile_endpoints(
        &self,
        me: ApiServerEndpoint,
        renew: bool,
    ) -> Result<(), ApiError> {
        let lease_error = |e| ApiError::from_storage(e, "masterleases", "", "");
        let now = unix_now();
        if renew {
            let key = self.master_lease_key(me);
            let value = serde_json::to_vec(&json!({
                "address": me.address.to_string(), "port": me.port, "renewTime": now,
            }))
            .unwrap_or_default();
            match self.storage.get(&key).await.map_err(lease_error)? {
                Some(stored) => self.storage.update(&key, value, stored.revision).await,
                None => self.storage.create(&key, value).await,
            }
            .map_err(lease_error)?;
        }
        let page = self
            .storage
            .list(&self.master_lease_prefix(), "", 0, 0)
            .await
            .map_err(lease_error)?;
        let mut live = Vec::new();
        for stored in page.items {
            let lease: Value = serde_json::from_slice(&stored.value).unwrap_or(Value::Null);
            let parsed = lease["address"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .zip(lease["port"].as_u64().and_then(|p| u16::try_from(p).ok()));
            let fresh =
                lease["renewTime"].as_i64().unwrap_or(0) + LEASE_TTL.as_secs() as i64 >= now;
            match parsed {
                Some((address, port)) if fresh => live.push(ApiServerEndpoint { address, port }),
                _ => {
                    let _ = self
                        .storage
                        .delete(&stored.key, stored.revision, Vec::new())
                        .await;
                }
            }
        }
        if !renew {
            live.retain(|e| *e != me);
        }
        live.sort();
        self.write_endpoints(&live).await?;
        self.write_endpoint_slice(&live).await
    }

    /// The Endpoints: one subset per port (all API servers share one in a real cluster).
    async fn write_endpoints(&self, live: &[ApiServerEndpoint]) -> Result<(), ApiError> {
        let mut ports: Vec<u16> = live.iter().map(|e| e.port).collect();
        ports.dedup();
        let subsets: Vec<Value> = ports
            .iter()
            .map(|port| {
                let addresses: Vec<Value> = live
                    .iter()
                    .filter(|e| e.port == *port)
                    .map(|e| json!({"ip": e.address.to_string()}))
                    .collect();
                json!({"addresses": addresses,
                       "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
            })
            .collect();
        let t = self.default_target(("", "v1", "endpoints"), Some(NAME));
        self.put_default(&t, |obj| {
            obj["metadata"]["labels"] = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
            if subsets.is_empty() {
                if let Some(map) = obj.as_object_mut() {
                    map.remove("subsets");
                }
            } else {
                obj["subsets"] = json!(subsets);
            }
        })
        .await
    }

    /// The EndpointSlice `kubernetes`: the API servers on the most common port.
    async fn write_endpoint_slice(&self, live: &[ApiServerEndpoint]) -> Result<(), ApiError> {
        let mut counts: Vec<(usize, u16)> = Vec::new();
        for e in live {
            match counts.iter_mut().find(|(_, p)| *p == e.port) {
                Some((n, _)) => *n += 1,
                None => counts.push((1, e.port)),
            }
        }
        let port = counts
            .iter()
            .max_by_key(|(n, p)| (*n, std::cmp::Reverse(*p)))
            .map(|(_, p)| *p);
        let endpoints: Vec<Value> = live
            .iter()
            .filter(|e| Some(e.port) == port)
            .map(|e| json!({"addresses": [e.address.to_string()], "conditions": {"ready": true}}))
            .collect();
        let ports = port.map_or(
            json!([]),
            |p| json!([{"name": "https", "port": p, "protocol": "TCP"}]),
        );
        let t = self.default_target(("discovery.k8s.io", "v1", "endpointslices"), Some(NAME));
        self.put_default(&t, |obj| {
            obj["metadata"]["labels"] = json!({"kubernetes.io/service-name": NAME});
            obj["addressType"] = json!("IPv4");
            obj["endpoints"] = json!(endpoints);
            obj["ports"] = ports.clone();
        })
        .await
    }

    /// Creates or updates `default/<t.name>` of `t`'s kind as `fill` writes it; no write if
    /// nothing changed.
    async fn put_default(&self, t: &Target<'_>, fill: impl Fn(&mut Value)) -> Result<(), ApiError> {
        let name = t.name.as_deref().unwrap_or(NAME);
        let key = self.key(t.info, Some(NAMESPACE), name);
        let found = self
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::from_storage(e, t.info.resource, t.info.group, name))?;
        match found {
            None => {
                let mut obj = json!({"apiVersion": t.info.api_version(), "kind": t.info.kind,
                                     "metadata": {"name": name, "namespace": NAMESPACE}});
                fill(&mut obj);
                let create = Target {
                    info: t.info,
                    namespace: t.namespace.clone(),
                    name: None,
                    subresource: None,
                };
                self.create_value(&create, &HashMap::new(), obj).await?;
            }
            Some(stored) => {
                let current = self.decode(t.info, &stored)?;
                let mut obj = current.clone();
                fill(&mut obj);
                if obj != current {
                    self.replace(
                        t.info,
                        Some(NAMESPACE),
                        name,
                        &current,
                        obj,
                        stored.revision,
                        &HashMap::new(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}
