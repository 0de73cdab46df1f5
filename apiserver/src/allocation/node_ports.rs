//! Node ports of Services: one storage key per port and protocol held
//! (`/registry/ranges/servicenodeports/<port>-<protocol>`), from the node
//! port range. Must not touch cluster IPs or the Service object itself.

use std::collections::HashSet;

use skiff::Resource;
use skiff::api::core::v1::Service;
use skiff::resource::object_key;

use super::ServiceAllocator;
use crate::error::ApiError;

/// Where reservations of node ports are kept.
pub(super) const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The storage key of node port `port`/`protocol`.
pub(super) fn port_key(port: i32, protocol: &str) -> String {
    let protocol = if protocol.is_empty() { "TCP" } else { protocol };
    format!("{PORT_PREFIX}{port}-{protocol}")
}

/// (index, node port, protocol) of each port of `svc` that gets a node port.
pub(super) fn node_ports(svc: &Service) -> Vec<(usize, i32, String)> {
    let Some(spec) = &svc.spec else { return vec![] };
    if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
        return vec![];
    }
    spec.ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.node_port, p.protocol.clone()))
        .collect()
}

impl ServiceAllocator {
    /// Reserves node port `port` (a free one when 0) for port `index` of `svc`.
    async fn reserve_port(
        &self,
        svc: &Service,
        index: usize,
        port: i32,
        protocol: &str,
    ) -> Result<i32, ApiError> {
        let key = object_key(svc.namespace(), svc.name());
        let field = format!("spec.ports[{index}].nodePort");
        if port == 0 {
            let (lo, hi) = (*self.ports.start(), *self.ports.end());
            let proto = protocol.to_owned();
            return self
                .pick(
                    svc,
                    PORT_PREFIX,
                    u32::from(hi - lo) + 1,
                    |o| i32::from(lo) + o as i32,
                    move |p| port_key(p, &proto),
                )
                .await?
                .ok_or_else(|| ApiError::ResourceExhausted {
                    message: format!("no node port is free in {lo}-{hi}"),
                    retry_after: None,
                });
        }
        if !u16::try_from(port).is_ok_and(|p| self.ports.contains(&p)) {
            return Err(ApiError::invalid(
                "Service",
                &key,
                &field,
                format!(
                    "{port} is not in the node port range {}-{}",
                    self.ports.start(),
                    self.ports.end()
                ),
            ));
        }
        if !self.reserve(&port_key(port, protocol), svc).await? {
            let owner = self
                .holder(&port_key(port, protocol))
                .await?
                .map(|r| r.owner)
                .unwrap_or_default();
            return Err(ApiError::Allocated {
                kind: "Service".into(),
                name: key,
                field,
                message: format!("node port {port} is already allocated to service {owner:?}"),
            });
        }
        Ok(port)
    }

    /// Reserves the node ports `svc` has that `old` had not; returns the keys taken.
    pub(super) async fn reserve_ports(
        &self,
        svc: &mut Service,
        old: Option<&Service>,
    ) -> Result<Vec<String>, ApiError> {
        let had: HashSet<String> = old
            .map(|o| {
                node_ports(o)
                    .into_iter()
                    .map(|(_, p, proto)| port_key(p, &proto))
                    .collect()
            })
            .unwrap_or_default();
        let mut taken = Vec::new();
        for (i, port, protocol) in node_ports(svc) {
            if port != 0 && had.contains(&port_key(port, &protocol)) {
                continue;
            }
            match self.reserve_port(svc, i, port, &protocol).await {
                Ok(p) => {
                    if let Some(port) = svc.spec.as_mut().and_then(|s| s.ports.get_mut(i)) {
                        port.node_port = p;
                    }
                    taken.push(port_key(p, &protocol));
                }
                Err(e) => {
                    for k in &taken {
                        self.release(k, &svc.meta().uid).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }
}
