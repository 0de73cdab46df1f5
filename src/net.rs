//! IPv4 networks as the cluster writes them (`10.244.0.0/16`): one parser
//! and one set of range operations for every component that hands out or
//! checks addresses (Service IPs, pod CIDRs of nodes, pod IPs of a node,
//! the container runtime's networks).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR such as 10.244.0.0/16")]
pub struct CidrError(pub String);

/// An IPv4 network: its first address and prefix length. Host bits given
/// in the text are cleared (`10.1.2.3/16` is `10.1.0.0/16`), as Kubernetes
/// parses CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    base: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `addr` with `prefix` bits (at most 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            base: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the network spans (network and broadcast included).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The address `offset` places after the network address, if inside.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(self.base + offset as u32))
    }

    /// How far `ip` lies after the network address, if inside.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains_addr(ip)
            .then(|| u64::from(u32::from(ip) - self.base))
    }

    /// Whether `ip` is in the network.
    pub fn contains_addr(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    /// Whether `ip` is a host address of the network: neither its network
    /// nor its broadcast address.
    pub fn holds_host(&self, ip: Ipv4Addr) -> bool {
        self.offset_of(ip)
            .is_some_and(|o| o >= 1 && o + 1 < self.size())
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && other.base & mask(self.prefix) == self.base
    }

    /// The `index`-th subnet of `prefix` bits, if the network has one.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 || index >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        Some(Self {
            base: (u64::from(self.base) + index * step) as u32,
            prefix,
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = bits.parse().map_err(|_| bad())?;
        Self::new(ip, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parsing_clears_host_bits_and_refuses_what_is_not_a_cidr() {
        assert_eq!(cidr("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(cidr("10.0.0.7/32").size(), 1);
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0/8",
            "fd00::/8",
            "10.0.0.0/8/8",
        ] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn addresses_and_hosts_of_a_network() {
        let n = cidr("10.0.0.0/30");
        assert_eq!(n.nth(0), Some(Ipv4Addr::new(10, 0, 0, 0)));
        assert_eq!(n.nth(3), Some(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(n.nth(4), None);
        assert_eq!(n.offset_of(Ipv4Addr::new(10, 0, 0, 2)), Some(2));
        assert_eq!(n.offset_of(Ipv4Addr::new(10, 0, 1, 2)), None);
        let hosts: Vec<bool> = (0..4)
            .map(|i| n.holds_host(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        assert_eq!(hosts, [false, true, true, false]);
        assert!(!cidr("10.0.0.0/31").holds_host(Ipv4Addr::new(10, 0, 0, 0)));
    }

    #[test]
    fn containment_and_subnets() {
        assert!(cidr("10.244.0.0/16").contains(&cidr("10.244.3.0/24")));
        assert!(!cidr("10.244.0.0/16").contains(&cidr("10.245.3.0/24")));
        assert!(!cidr("10.244.3.0/24").contains(&cidr("10.244.0.0/16")));
        assert!(cidr("0.0.0.0/0").contains(&cidr("192.168.1.0/24")));
        let n = cidr("10.244.0.0/16");
        assert_eq!(n.subnet(24, 0), Some(cidr("10.244.0.0/24")));
        assert_eq!(n.subnet(24, 255), Some(cidr("10.244.255.0/24")));
        assert_eq!(n.subnet(24, 256), None);
        assert_eq!(n.subnet(16, 0), Some(n));
        assert_eq!(n.subnet(15, 0), None);
        assert_eq!(n.subnet(32, 5), Some(cidr("10.244.0.5/32")));
    }
}
