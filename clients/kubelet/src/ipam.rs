//! Pod IPs from the node's pod CIDR, remembered on disk so a restarted
//! kubelet hands out the same IPs to the pods it finds again and never one
//! IP twice. Inside 127.0.0.0/8 these addresses work on one machine with no
//! set-up; several nodes on one machine get distinct CIDRs, hence distinct IPs.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use skiff::net::Ipv4Cidr;

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The CIDR is not usable.
    #[error("invalid pod CIDR {0:?}")]
    Cidr(String),
    /// Every address is taken.
    #[error("the pod CIDR {0} has no free address")]
    Exhausted(String),
}

/// Allocates pod IPs.
pub struct PodIps {
    cidr: String,
    base: u32,
    size: u32,
    state: PathBuf,
    used: Mutex<BTreeMap<String, u32>>,
}

impl PodIps {
    /// Addresses of `cidr`, remembered in `state`.
    pub fn new(cidr: &str, state: PathBuf) -> Result<Self, IpamError> {
        let err = || IpamError::Cidr(cidr.to_owned());
        let range: Ipv4Cidr = cidr.parse().map_err(|_| err())?;
        if !(8..=30).contains(&range.prefix()) {
            return Err(err());
        }
        let size = range.size() as u32;
        let base = u32::from(range.network());
        let used: BTreeMap<String, u32> = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        // Forget allocations from another CIDR (the node's CIDR changed).
        let used = used
            .into_iter()
            .filter(|(_, ip)| *ip >= base && *ip < base + size)
            .collect();
        Ok(Self {
            cidr: cidr.to_owned(),
            base,
            size,
            state,
            used: Mutex::new(used),
        })
    }

    fn save(&self, used: &BTreeMap<String, u32>) {
        if let Ok(text) = serde_json::to_string(used) {
            let _ = std::fs::write(&self.state, text);
        }
    }

    /// The IP of pod `uid`, allocating one if it has none.
    pub fn allocate(&self, uid: &str) -> Result<String, IpamError> {
        let mut used = self.used.lock().expect("ipam");
        if let Some(ip) = used.get(uid) {
            return Ok(Ipv4Addr::from(*ip).to_string());
        }
        let taken: HashSet<u32> = used.values().copied().collect();
        // Skip the network address, .1 (a gateway) and the broadcast address.
        let ip = (2..self.size - 1)
            .map(|i| self.base + i)
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| IpamError::Exhausted(self.cidr.clone()))?;
        used.insert(uid.to_owned(), ip);
        self.save(&used);
        Ok(Ipv4Addr::from(ip).to_string())
    }

    /// Frees the IP of pod `uid`.
    pub fn release(&self, uid: &str) {
        let mut used = self.used.lock().expect("ipam");
        if used.remove(uid).is_some() {
            self.save(&used);
        }
    }

    /// The CIDR.
    pub fn cidr(&self) -> &str {
        &self.cidr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_distinct_stable_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ips.json");
        let ips = PodIps::new("127.128.3.0/24", state.clone()).unwrap();
        let a = ips.allocate("a").unwrap();
        let b = ips.allocate("b").unwrap();
        assert_eq!(a, "127.128.3.2");
        assert_eq!(b, "127.128.3.3");
        assert_eq!(ips.allocate("a").unwrap(), a, "the same pod keeps its IP");
        ips.release("a");
        let again = PodIps::new("127.128.3.0/24", state).unwrap();
        assert_eq!(
            again.allocate("b").unwrap(),
            b,
            "remembered across restarts"
        );
        assert_eq!(
            again.allocate("c").unwrap(),
            "127.128.3.2",
            "freed IPs are reused"
        );
        let tiny = PodIps::new("127.1.0.0/30", dir.path().join("t.json")).unwrap();
        tiny.allocate("x").unwrap();
        assert!(tiny.allocate("y").is_err());
    }
}
