//! Cluster IPs of Services: the range they come from, one storage key per
//! address held (`/registry/ranges/serviceips/<ip>`), a free one picked or a
//! requested one checked and reserved. Must not touch node ports or the
//! Service object itself (the registry stores it).

use std::net::Ipv4Addr;

use skiff::Resource;
use skiff::api::core::v1::Service;
use skiff::net::Ipv4Cidr;
use skiff::resource::object_key;

use super::ServiceAllocator;
use crate::error::ApiError;

/// Where reservations of cluster IPs are kept.
pub(super) const IP_PREFIX: &str = "/registry/ranges/serviceips/";

/// The service range of `cidr`: an IPv4 CIDR of prefix 8 to 30 (so that it
/// has hosts beside its network and broadcast addresses).
pub fn parse_range(cidr: &str) -> Result<Ipv4Cidr, String> {
    let range: Ipv4Cidr = cidr
        .parse()
        .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR such as 127.96.0.0/12"))?;
    if !(8..=30).contains(&range.prefix()) {
        return Err(format!(
            "{cidr:?}: the prefix length must be between 8 and 30"
        ));
    }
    Ok(range)
}

/// The storage key of cluster IP `ip`.
pub(super) fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_PREFIX}{ip}")
}

/// The cluster IP `svc` holds, if any (not headless).
pub(super) fn has_cluster_ip(svc: &Service) -> Option<&str> {
    let ip = svc.spec.as_ref()?.cluster_ip.as_str();
    (!ip.is_empty() && ip != "None").then_some(ip)
}

impl ServiceAllocator {
    /// A free cluster IP for `svc`, reserved.
    pub(super) async fn allocate_ip(&self, svc: &Service) -> Result<String, ApiError> {
        let range = self.ips;
        let hosts = (range.size() - 2) as u32;
        #[allow(
            clippy::expect_used,
            reason = "pick offers offsets below `hosts`, all inside the range"
        )]
        let ip = self
            .pick(
                svc,
                IP_PREFIX,
                hosts,
                |o| range.nth(u64::from(o) + 1).expect("a host of the range"),
                ip_key,
            )
            .await?
            .ok_or_else(|| ApiError::ResourceExhausted {
                message: format!("no cluster IP is free in the service range {range}"),
                retry_after: None,
            })?;
        Ok(ip.to_string())
    }

    /// Reserves the cluster IP `svc` asks for.
    pub(super) async fn reserve_ip(&self, svc: &Service, ip: &str) -> Result<(), ApiError> {
        let key = object_key(svc.namespace(), svc.name());
        let addr: Ipv4Addr = ip.parse().map_err(|_| {
            ApiError::invalid(
                "Service",
                &key,
                "spec.clusterIP",
                format!("{ip:?} is not an IPv4 address"),
            )
        })?;
        if !self.ips.holds_host(addr) {
            return Err(ApiError::invalid(
                "Service",
                &key,
                "spec.clusterIP",
                format!(
                    "{ip} is not in the service range {}; leave it empty to get one",
                    self.ips
                ),
            ));
        }
        if !self.reserve(&ip_key(addr), svc).await? {
            let owner = self
                .holder(&ip_key(addr))
                .await?
                .map(|r| r.owner)
                .unwrap_or_default();
            return Err(ApiError::Allocated {
                kind: "Service".into(),
                name: key,
                field: "spec.clusterIP".into(),
                message: format!("{ip} is already allocated to service {owner:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exclude_network_and_broadcast() {
        let r = parse_range("10.0.0.0/30").unwrap();
        assert!(!r.holds_host("10.0.0.0".parse().unwrap()));
        assert!(r.holds_host("10.0.0.1".parse().unwrap()));
        assert!(r.holds_host("10.0.0.2".parse().unwrap()));
        assert!(!r.holds_host("10.0.0.3".parse().unwrap()));
        assert!(!r.holds_host("10.0.0.9".parse().unwrap()));
        assert_eq!(
            parse_range("127.96.7.1/12").unwrap().to_string(),
            "127.96.0.0/12"
        );
        assert!(parse_range("127.0.0.0/31").is_err());
        assert!(parse_range("nope").is_err());
    }
}
