//! Pod IP allocation: `--pod-cidr` split into one subnet per node (kube-controller-manager's
//! `--node-cidr-mask-size`, /24 by default), and per node the addresses handed to its pods,
//! keyed by pod UID so that handing out is idempotent and survives a simulator restart (pods
//! already running keep the address they report).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::Error;

/// An IPv4 network, `a.b.c.d/len`, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    base: u32,
    prefix_len: u8,
}

impl std::str::FromStr for PodCidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<PodCidr, Error> {
        let bad = |why: &str| Error::Config(format!("--pod-cidr {s:?}: {why}"));
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("not a CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix_len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad("prefix length must be 8..=30"));
        }
        let base = u32::from(addr);
        if base & !mask(prefix_len) != 0 {
            return Err(bad("host bits set"));
        }
        Ok(PodCidr { base, prefix_len })
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix_len)
    }
}

impl PodCidr {
    /// The first `count` subnets of length `mask_size`; an error when they do not fit.
    pub fn subnets(&self, mask_size: u8, count: usize) -> Result<Vec<PodCidr>, Error> {
        if mask_size < self.prefix_len || mask_size > 30 {
            return Err(Error::Config(format!(
                "--node-cidr-mask-size {mask_size}: must be between the --pod-cidr prefix \
                 ({}) and 30",
                self.prefix_len
            )));
        }
        let available = 1u64 << (mask_size - self.prefix_len);
        if count as u64 > available {
            return Err(Error::Config(format!(
                "--pod-cidr {self} holds {available} /{mask_size} node subnets, fewer than \
                 --nodes {count}: use a larger --pod-cidr or a larger --node-cidr-mask-size"
            )));
        }
        let step = 1u32 << (32 - mask_size);
        Ok((0..count as u32)
            .map(|i| PodCidr {
                base: self.base + i * step,
                prefix_len: mask_size,
            })
            .collect())
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == self.base
    }

    /// Usable host addresses: all but the network and broadcast address.
    fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix_len)) - 2
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// The pod addresses of one node's subnet.
#[derive(Debug)]
pub struct NodeIps {
    subnet: PodCidr,
    /// Pod UID → host offset (1..=hosts) inside the subnet.
    by_uid: BTreeMap<String, u32>,
    /// Host offset → pod UID.
    used: BTreeMap<u32, String>,
}

impl NodeIps {
    pub fn new(subnet: PodCidr) -> NodeIps {
        NodeIps {
            subnet,
            by_uid: BTreeMap::new(),
            used: BTreeMap::new(),
        }
    }

    pub fn subnet(&self) -> PodCidr {
        self.subnet
    }

    /// The address of pod `uid`: the one it already has, else `reported` (what its status
    /// says, e.g. after a simulator restart) if inside the subnet and free, else the lowest
    /// free one. `None` when the subnet is full.
    pub fn assign(&mut self, uid: &str, reported: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(&offset) = self.by_uid.get(uid) {
            return Some(self.address(offset));
        }
        let wanted = reported
            .filter(|ip| self.subnet.contains(*ip))
            .map(|ip| u32::from(ip) - self.subnet.base)
            .filter(|&offset| (1..=self.subnet.hosts()).contains(&offset))
            .filter(|offset| !self.used.contains_key(offset));
        let offset = match wanted {
            Some(offset) => offset,
            None => self.lowest_free()?,
        };
        self.by_uid.insert(uid.to_string(), offset);
        self.used.insert(offset, uid.to_string());
        Some(self.address(offset))
    }

    /// Frees pod `uid`'s address, if it has one.
    pub fn release(&mut self, uid: &str) {
        if let Some(offset) = self.by_uid.remove(uid) {
            self.used.remove(&offset);
        }
    }

    /// Keeps only the pods `alive` says exist (after a relist of the pods).
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.by_uid.retain(|uid, _| alive(uid));
        self.used.retain(|_, uid| alive(uid));
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    fn lowest_free(&self) -> Option<u32> {
        // Offsets in `used` are sorted: the first gap is the lowest free offset.
        let mut candidate = 1;
        for &offset in self.used.keys() {
            if offset != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate <= self.subnet.hosts()).then_some(candidate)
    }

    fn address(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.subnet.base + offset)
    }
}

#[cfg(test)]
mod tests;
