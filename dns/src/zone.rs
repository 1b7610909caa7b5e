//! The cluster's names as pure data (CoreDNS's `kubernetes` plugin, `pods insecure`): built
//! from Services and EndpointSlices, queried by [`Zone::answer`]. No IO here.
//!
//! - `<svc>.<ns>.svc.<domain>`: A = the ClusterIP; for a headless Service, one A per ready
//!   endpoint; an ExternalName Service is a CNAME.
//! - `<endpoint>.<svc>.<ns>.svc.<domain>` (headless): the endpoint's `hostname`, else its IP
//!   with dashes.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV per named port (headless: one per
//!   endpoint, pointing at its own name).
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A = that IP.
//! - Names above these (`<ns>.svc.<domain>`, …) exist with no records; anything else under
//!   the domain is NXDOMAIN; names outside it are not ours (forwarded).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The record types the zone answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    A,
    Srv,
    /// Any other type: names exist, records do not (AAAA on this IPv4 cluster, TXT, …).
    Other,
}

/// One answer record (names without the trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    A {
        name: String,
        ip: Ipv4Addr,
    },
    Cname {
        name: String,
        target: String,
    },
    Srv {
        name: String,
        port: u16,
        target: String,
    },
}

/// What the zone says about a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answers, and A records for SRV targets (the additional section).
    Found {
        answers: Vec<Record>,
        additional: Vec<Record>,
    },
    /// The name exists; no records of that type.
    NoData,
    NxDomain,
    /// Outside the cluster domain: forward it.
    NotOurs,
}

#[derive(Clone, Debug)]
struct Endpoint {
    ip: Ipv4Addr,
    /// The label under the Service's name: `hostname`, else the IP with dashes.
    label: String,
}

#[derive(Clone, Debug, Default)]
struct ServiceEntry {
    cluster_ip: Option<Ipv4Addr>,
    external_name: Option<String>,
    /// (port name, protocol in lower case, port): the Service's ports (for a headless
    /// Service, the endpoints' target ports).
    ports: Vec<(String, String, u16)>,
    /// Ready endpoints (headless Services only).
    endpoints: Vec<Endpoint>,
}

/// The cluster's names.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// `cluster.local`, lower case, no dots at the ends.
    domain: String,
    services: BTreeMap<(String, String), ServiceEntry>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

impl Zone {
    /// The zone of `domain` (`--cluster-domain`) over these objects.
    pub fn build(domain: &str, services: &[&Service], slices: &[&EndpointSlice]) -> Zone {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let mut entries = BTreeMap::new();
        for service in services {
            let (Some(ns), Some(name), Some(spec)) = (
                service.metadata.namespace.clone(),
                service.metadata.name.clone(),
                service.spec.as_ref(),
            ) else {
                continue;
            };
            let mut entry = ServiceEntry::default();
            if spec.type_.as_deref() == Some("ExternalName") {
                entry.external_name = spec
                    .external_name
                    .as_ref()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            } else {
                entry.cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
            }
            if entry.cluster_ip.is_some() {
                for port in spec.ports.iter().flatten() {
                    let Some(port_name) = port.name.clone().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let protocol = port
                        .protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .to_ascii_lowercase();
                    if let Ok(p) = u16::try_from(port.port) {
                        entry.ports.push((port_name, protocol, p));
                    }
                }
            }
            entries.insert((ns, name), entry);
        }
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let (Some(ns), Some(service)) = (
                slice.metadata.namespace.clone(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
            ) else {
                continue;
            };
            let Some(entry) = entries.get_mut(&(ns, service)) else {
                continue;
            };
            if entry.cluster_ip.is_some() || entry.external_name.is_some() {
                continue;
            }
            for port in slice.ports.iter().flatten() {
                let (Some(name), Some(p)) = (port.name.clone(), port.port) else {
                    continue;
                };
                let protocol = port
                    .protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase();
                if let Ok(p) = u16::try_from(p)
                    && !name.is_empty()
                    && !entry
                        .ports
                        .iter()
                        .any(|(n, pr, _)| *n == name && *pr == protocol)
                {
                    entry.ports.push((name, protocol, p));
                }
            }
            for e in &slice.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &e.addresses {
                    let Ok(ip) = address.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let label = e
                        .hostname
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| dashed(ip))
                        .to_ascii_lowercase();
                    if !entry.endpoints.iter().any(|x| x.ip == ip) {
                        entry.endpoints.push(Endpoint { ip, label });
                    }
                }
            }
        }
        for entry in entries.values_mut() {
            entry.endpoints.sort_by_key(|e| e.ip);
        }
        Zone {
            domain,
            services: entries,
        }
    }

    /// The answer to `qtype` for `name` (any case, trailing dot or not).
    pub fn answer(&self, name: &str, qtype: QueryType) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(inner) = name
            .strip_suffix(&self.domain)
            .filter(|rest| rest.is_empty() || rest.ends_with('.'))
        else {
            return Answer::NotOurs;
        };
        let labels: Vec<&str> = inner
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .collect();
        // Read from the domain down: [.., ns, "svc"] / [ip, ns, "pod"].
        let mut rev = labels.iter().rev();
        match rev.next() {
            None => Answer::NoData,
            Some(&"svc") => self.service_answer(&name, &labels[..labels.len() - 1], qtype),
            Some(&"pod") => match labels.len() {
                1 | 2 => Answer::NoData,
                3 => match labels[0].replace('-', ".").parse::<Ipv4Addr>() {
                    Ok(ip) if qtype == QueryType::A => found(vec![Record::A { name, ip }]),
                    Ok(_) => Answer::NoData,
                    Err(_) => Answer::NxDomain,
                },
                _ => Answer::NxDomain,
            },
            Some(_) => Answer::NxDomain,
        }
    }

    /// `labels` are those before `svc`: [.., svc, ns].
    fn service_answer(&self, name: &str, labels: &[&str], qtype: QueryType) -> Answer {
        let n = labels.len();
        if n == 0 {
            return Answer::NoData;
        }
        let ns = labels[n - 1];
        if n == 1 {
            return if self.services.keys().any(|(s_ns, _)| s_ns == ns) {
                Answer::NoData
            } else {
                Answer::NxDomain
            };
        }
        let svc = labels[n - 2];
        let Some(entry) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return Answer::NxDomain;
        };
        let service_name = format!("{svc}.{ns}.svc.{}", self.domain);
        match &labels[..n - 2] {
            [] => {
                if let Some(target) = &entry.external_name {
                    return found(vec![Record::Cname {
                        name: name.to_string(),
                        target: target.clone(),
                    }]);
                }
                match qtype {
                    QueryType::A => {
                        let ips: Vec<Ipv4Addr> = match entry.cluster_ip {
                            Some(ip) => vec![ip],
                            None => entry.endpoints.iter().map(|e| e.ip).collect(),
                        };
                        if ips.is_empty() {
                            return Answer::NoData;
                        }
                        found(
                            ips.into_iter()
                                .map(|ip| Record::A {
                                    name: name.to_string(),
                                    ip,
                                })
                                .collect(),
                        )
                    }
                    QueryType::Srv => self.srv(entry, &service_name, None, None),
                    QueryType::Other => Answer::NoData,
                }
            }
            [endpoint] if entry.cluster_ip.is_none() && !endpoint.starts_with('_') => {
                match entry.endpoints.iter().find(|e| e.label == *endpoint) {
                    Some(e) if qtype == QueryType::A => found(vec![Record::A {
                        name: name.to_string(),
                        ip: e.ip,
                    }]),
                    Some(_) => Answer::NoData,
                    None => Answer::NxDomain,
                }
            }
            [port, protocol] if port.starts_with('_') && protocol.starts_with('_') => {
                let (port, protocol) = (&port[1..], &protocol[1..]);
                if qtype != QueryType::Srv {
                    let exists = entry
                        .ports
                        .iter()
                        .any(|(n, p, _)| n == port && p == protocol);
                    return if exists {
                        Answer::NoData
                    } else {
                        Answer::NxDomain
                    };
                }
                match self.srv(entry, &service_name, Some(port), Some(protocol)) {
                    Answer::NoData => Answer::NxDomain,
                    other => other.renamed(name),
                }
            }
            _ => Answer::NxDomain,
        }
    }

    /// SRV records of the Service's named ports (of `port`/`protocol` only, if given).
    fn srv(
        &self,
        entry: &ServiceEntry,
        service_name: &str,
        port: Option<&str>,
        protocol: Option<&str>,
    ) -> Answer {
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        for (port_name, proto, number) in &entry.ports {
            if port.is_some_and(|p| p != port_name) || protocol.is_some_and(|p| p != proto) {
                continue;
            }
            let name = format!("_{port_name}._{proto}.{service_name}");
            if entry.cluster_ip.is_some() {
                answers.push(Record::Srv {
                    name,
                    port: *number,
                    target: service_name.to_string(),
                });
                continue;
            }
            for e in &entry.endpoints {
                let target = format!("{}.{service_name}", e.label);
                answers.push(Record::Srv {
                    name: name.clone(),
                    port: *number,
                    target: target.clone(),
                });
                let a = Record::A {
                    name: target,
                    ip: e.ip,
                };
                if !additional.contains(&a) {
                    additional.push(a);
                }
            }
        }
        if let (Some(ip), false) = (entry.cluster_ip, answers.is_empty()) {
            additional.push(Record::A {
                name: service_name.to_string(),
                ip,
            });
        }
        if answers.is_empty() {
            Answer::NoData
        } else {
            Answer::Found {
                answers,
                additional,
            }
        }
    }
}

fn found(answers: Vec<Record>) -> Answer {
    Answer::Found {
        answers,
        additional: Vec::new(),
    }
}

impl Answer {
    /// The SRV answers under the name asked (the query's own spelling).
    fn renamed(self, asked: &str) -> Answer {
        match self {
            Answer::Found {
                answers,
                additional,
            } => Answer::Found {
                answers: answers
                    .into_iter()
                    .map(|r| match r {
                        Record::Srv { port, target, .. } => Record::Srv {
                            name: asked.to_string(),
                            port,
                            target,
                        },
                        other => other,
                    })
                    .collect(),
                additional,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
