//! The files kubelet writes for every pod and bind-mounts into its containers: `/etc/hosts`
//! ("Kubernetes-managed hosts file"), `/etc/hostname` and `/etc/resolv.conf` (cluster DNS
//! with the pod's search path and `ndots:5` under `dnsPolicy: ClusterFirst`, the node's
//! resolver under `Default` or without cluster DNS, `dnsConfig` merged in).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The pod's `/etc/hosts`.
pub fn hosts(pod: &Pod, pod_ip: Option<Ipv4Addr>, hostname: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        let spec = pod.spec.as_ref();
        let fqdn = spec.and_then(|s| s.subdomain.as_ref()).map(|sub| {
            format!(
                "{hostname}.{sub}.{}.svc.cluster.local\t",
                pod.metadata.namespace.as_deref().unwrap_or("default")
            )
        });
        out.push_str(&format!("{ip}\t{}{hostname}\n", fqdn.unwrap_or_default()));
    }
    for alias in pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_ref())
        .into_iter()
        .flatten()
    {
        let names = alias.hostnames.clone().unwrap_or_default().join("\t");
        out.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{names}\n",
            alias.ip
        ));
    }
    out
}

/// The pod's `/etc/resolv.conf`; `host` is the node's own resolv.conf.
pub fn resolv_conf(
    pod: &Pod,
    cluster_dns: &[Ipv4Addr],
    cluster_domain: &str,
    host: &str,
) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let use_cluster = !cluster_dns.is_empty()
        && match policy {
            "ClusterFirst" => !host_network,
            "ClusterFirstWithHostNet" => true,
            _ => false,
        };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        if policy == "None" {
            (vec![], vec![], vec![])
        } else if use_cluster {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            (
                cluster_dns.iter().map(ToString::to_string).collect(),
                vec![
                    format!("{ns}.svc.{cluster_domain}"),
                    format!("svc.{cluster_domain}"),
                    cluster_domain.to_string(),
                ],
                vec!["ndots:5".to_string()],
            )
        } else {
            let mut servers = Vec::new();
            let mut searches = Vec::new();
            let mut options = Vec::new();
            for line in host.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("nameserver") => servers.extend(words.next().map(str::to_string)),
                    Some("search") | Some("domain") => searches.extend(words.map(str::to_string)),
                    Some("options") => options.extend(words.map(str::to_string)),
                    _ => {}
                }
            }
            (servers, searches, options)
        };
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(config.nameservers.iter().flatten().cloned());
        searches.extend(config.searches.iter().flatten().cloned());
        for option in config.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            options.retain(|o| o.split(':').next() != Some(name.as_str()));
            options.push(match &option.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    servers.truncate(3);
    searches.dedup();
    searches.truncate(32);
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn cluster_first_uses_cluster_dns_with_search_path() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        let dns = ["10.43.0.10".parse().unwrap()];
        assert_eq!(
            resolv_conf(&pod, &dns, "cluster.local", "nameserver 1.1.1.1\n"),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(
                &pod,
                &[],
                "cluster.local",
                "nameserver 192.0.2.53\nsearch lan\n"
            ),
            "search lan\nnameserver 192.0.2.53\n"
        );
        let hosts = hosts(&pod, Some("10.42.0.7".parse().unwrap()), "p");
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.42.0.7\tp\n"), "{hosts}");
    }
}
