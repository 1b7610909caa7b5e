//! The node IPAM range allocator's pure part (upstream `cidrset`): the cluster CIDR cut into
//! `/node-cidr-mask-size` subnets, a bit per subnet, handed out in order (wrapping round
//! after the last one given, as upstream's `nextCandidate`), occupied from what nodes
//! already hold, released when their node goes.

use std::net::Ipv4Addr;

/// Subnets a cluster CIDR may be cut into at most (upstream: the mask may be at most 16
/// bits longer than the cluster CIDR's prefix).
pub const SUBNETS_MAX: usize = 1 << 16;

/// An IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; the address is masked to its network.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR address: {text}"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid CIDR address: {text}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("invalid CIDR address: {text}"))?;
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The subnets of a cluster CIDR and which are taken.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Cidr,
    subnet_prefix: u8,
    used: Vec<bool>,
    in_use: usize,
    next: usize,
}

impl CidrSet {
    /// The `/subnet_prefix` subnets of `cluster`. Refused (upstream's messages) when the
    /// subnet is not smaller than the cluster CIDR or would make more than
    /// [`SUBNETS_MAX`] subnets.
    pub fn new(cluster: Cidr, subnet_prefix: u8) -> Result<CidrSet, String> {
        if subnet_prefix > 32 || subnet_prefix < cluster.prefix {
            return Err(format!(
                "--node-cidr-mask-size {subnet_prefix} is not within the cluster CIDR {cluster}"
            ));
        }
        let bits = subnet_prefix - cluster.prefix;
        if bits > 16 {
            return Err(
                "CIDRSet: the size of the subnet mask can not be more than 16 bits bigger than the cluster CIDR's prefix"
                    .to_string(),
            );
        }
        let count = 1usize << bits;
        Ok(CidrSet {
            cluster,
            subnet_prefix,
            used: vec![false; count.min(SUBNETS_MAX)],
            in_use: 0,
            next: 0,
        })
    }

    fn subnet(&self, index: usize) -> Cidr {
        let size = 1u64 << (32 - u32::from(self.subnet_prefix));
        let base = u64::from(u32::from(self.cluster.network)) + index as u64 * size;
        Cidr {
            network: Ipv4Addr::from(base as u32),
            prefix: self.subnet_prefix,
        }
    }

    /// The index of `cidr` if it is one of this set's subnets.
    fn index_of(&self, cidr: &Cidr) -> Option<usize> {
        if cidr.prefix != self.subnet_prefix {
            return None;
        }
        let offset = u32::from(cidr.network).checked_sub(u32::from(self.cluster.network))?;
        let index = (offset >> (32 - u32::from(self.subnet_prefix))) as usize;
        (index < self.used.len() && self.subnet(index) == *cidr).then_some(index)
    }

    /// Marks a subnet a node already holds as taken; `false` if it is not one of ours.
    pub fn occupy(&mut self, cidr: &Cidr) -> bool {
        let Some(index) = self.index_of(cidr) else {
            return false;
        };
        if !self.used[index] {
            self.used[index] = true;
            self.in_use += 1;
        }
        true
    }

    /// The next free subnet, taken; `None` when all are taken (upstream's
    /// `CIDRNotAvailable`).
    pub fn allocate_next(&mut self) -> Option<Cidr> {
        let count = self.used.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            if !self.used[index] {
                self.used[index] = true;
                self.in_use += 1;
                self.next = (index + 1) % count;
                return Some(self.subnet(index));
            }
        }
        None
    }

    /// Frees a subnet (its node is gone).
    pub fn release(&mut self, cidr: &Cidr) {
        if let Some(index) = self.index_of(cidr)
            && self.used[index]
        {
            self.used[index] = false;
            self.in_use -= 1;
        }
    }

    /// Subnets taken.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        Cidr::parse(text).unwrap()
    }

    #[test]
    fn subnets_are_handed_out_in_order_skipping_occupied_ones() {
        let mut set = CidrSet::new(cidr("10.42.0.0/16"), 24).unwrap();
        assert!(set.occupy(&cidr("10.42.1.0/24")));
        assert_eq!(set.allocate_next(), Some(cidr("10.42.0.0/24")));
        assert_eq!(set.allocate_next(), Some(cidr("10.42.2.0/24")));
        assert_eq!(set.in_use(), 3);
        set.release(&cidr("10.42.0.0/24"));
        // Wraps round only after the last one given.
        assert_eq!(set.allocate_next(), Some(cidr("10.42.3.0/24")));
        assert!(
            !set.occupy(&cidr("10.43.0.0/24")),
            "outside the cluster CIDR"
        );
        assert!(!set.occupy(&cidr("10.42.0.0/25")), "another size");
    }

    #[test]
    fn a_full_set_says_so_and_frees_what_is_released() {
        let mut set = CidrSet::new(cidr("10.0.0.0/30"), 31).unwrap();
        assert_eq!(set.allocate_next(), Some(cidr("10.0.0.0/31")));
        assert_eq!(set.allocate_next(), Some(cidr("10.0.0.2/31")));
        assert_eq!(set.allocate_next(), None);
        set.release(&cidr("10.0.0.2/31"));
        assert_eq!(set.allocate_next(), Some(cidr("10.0.0.2/31")));
    }

    #[test]
    fn bad_sizes_and_addresses_are_refused() {
        assert!(CidrSet::new(cidr("10.0.0.0/24"), 16).is_err());
        assert!(CidrSet::new(cidr("10.0.0.0/8"), 25).is_err());
        assert!(CidrSet::new(cidr("10.0.0.0/8"), 24).is_ok());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert_eq!(cidr("10.42.7.9/16").to_string(), "10.42.0.0/16");
    }
}
