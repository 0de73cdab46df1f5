//! Node IPAM: gives each node a distinct pod CIDR carved from the cluster
//! CIDR. The default cluster CIDR lies inside 127.0.0.0/8, so pods get
//! loopback addresses reachable on one machine with no set-up.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use skiff::Resource;
use skiff::api::core::v1::Node;
use skiff::client::Error;
use skiff::net::Ipv4Cidr;
use skiff::runtime::{Action, Controller, ControllerConfig, Request, Store};

use crate::Context;

/// The default cluster CIDR (127.128.0.0 – 127.255.255.255).
pub const DEFAULT_CLUSTER_CIDR: &str = "127.128.0.0/9";

/// Why a CIDR is not usable.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid CIDR {0:?}: expected an IPv4 network like 127.128.0.0/9 with a mask below the node mask"
)]
pub struct CidrError(pub String);

/// An IPv4 range split into per-node blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrAllocator {
    range: Ipv4Cidr,
    node_prefix: u8,
}

impl CidrAllocator {
    /// Blocks of `/node_prefix` from `cidr`.
    pub fn new(cidr: &str, node_prefix: u8) -> Result<Self, CidrError> {
        let err = || CidrError(cidr.to_owned());
        let range: Ipv4Cidr = cidr.parse().map_err(|_| err())?;
        if range.prefix() > node_prefix || node_prefix > 30 {
            return Err(err());
        }
        Ok(Self { range, node_prefix })
    }

    /// Number of node blocks.
    pub fn capacity(&self) -> u32 {
        1 << (self.node_prefix - self.range.prefix())
    }

    /// The `i`-th block as text.
    pub fn block(&self, i: u32) -> String {
        self.range
            .subnet(self.node_prefix, u64::from(i))
            .expect("a block within capacity")
            .to_string()
    }

    /// The first block not in `used`.
    pub fn next_free(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..self.capacity())
            .map(|i| self.block(i))
            .find(|b| !used.contains(b))
    }
}

struct Ipam {
    ctx: Context,
    nodes: Store<Node>,
    allocator: CidrAllocator,
    /// Blocks handed out but maybe not yet seen in the store.
    pending: Mutex<BTreeSet<String>>,
}

/// Runs Node IPAM until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let allocator = match CidrAllocator::new(&ctx.config.cluster_cidr, ctx.config.node_cidr_mask) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "node IPAM disabled");
            return;
        }
    };
    let nodes = ctx.factory.all::<Node>();
    let controller = Controller::new(ControllerConfig {
        workers: 1,
        ..ControllerConfig::new(nodes.clone())
    });
    let ipam = Arc::new(Ipam {
        ctx,
        nodes: nodes.store(),
        allocator,
        pending: Mutex::new(BTreeSet::new()),
    });
    controller
        .run(
            move |req| {
                let ipam = ipam.clone();
                async move { ipam.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

impl Ipam {
    async fn reconcile(&self, req: Request<Node>) -> Result<Action, Error> {
        let Some(node) = req.object else {
            return Ok(Action::Done);
        };
        if node.spec.as_ref().is_some_and(|s| !s.pod_cidr.is_empty()) {
            return Ok(Action::Done);
        }
        let mut used: BTreeSet<String> = self
            .nodes
            .list()
            .iter()
            .filter_map(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone()))
            .filter(|c| !c.is_empty())
            .collect();
        used.extend(self.pending.lock().expect("ipam").iter().cloned());
        let Some(block) = self.allocator.next_free(&used) else {
            tracing::error!(node = node.name(), "the cluster CIDR is exhausted");
            return Ok(Action::Done);
        };
        self.pending.lock().expect("ipam").insert(block.clone());
        let mut updated = (*node).clone();
        let spec = updated.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = block.clone();
        spec.pod_cidrs = vec![block.clone()];
        let result = self.ctx.client.nodes().update(&updated).await;
        match result {
            Ok(_) => Ok(Action::Done),
            Err(Error::Conflict(_)) => {
                self.pending.lock().expect("ipam").remove(&block);
                Ok(Action::RequeueAfter(std::time::Duration::from_millis(20)))
            }
            Err(Error::NotFound(_)) => {
                self.pending.lock().expect("ipam").remove(&block);
                Ok(Action::Done)
            }
            Err(e) => {
                self.pending.lock().expect("ipam").remove(&block);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_distinct_and_skip_used_ones() {
        let a = CidrAllocator::new(DEFAULT_CLUSTER_CIDR, 24).unwrap();
        assert_eq!(a.capacity(), 32768);
        assert_eq!(a.block(0), "127.128.0.0/24");
        assert_eq!(a.block(1), "127.128.1.0/24");
        let used: BTreeSet<String> = ["127.128.0.0/24".to_string()].into();
        assert_eq!(a.next_free(&used).unwrap(), "127.128.1.0/24");
        assert!(CidrAllocator::new("10.0.0.0/25", 24).is_err());
        assert!(CidrAllocator::new("nonsense", 24).is_err());
    }
}
