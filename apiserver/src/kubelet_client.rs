//! Connections from the API server to kubelets, for the streams only a node
//! can serve (container logs, exec). A node publishes where its kubelet
//! listens in `status.daemonEndpoints.kubeletEndpoint.port` and its
//! addresses; connections are made lazily and reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff::api::core::v1::Node;
use skiff::api::kubelet::v1::kubelet_service_client::KubeletServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::ApiError;
use crate::object_store::{ObjectStore, ReadVersion};

/// Finds and connects to the kubelet of a node.
pub struct KubeletConnector {
    nodes: Arc<dyn ObjectStore<Node>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl KubeletConnector {
    /// A connector reading node addresses from `nodes`.
    pub fn new(nodes: Arc<dyn ObjectStore<Node>>) -> Self {
        Self {
            nodes,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client of `node`'s kubelet.
    pub async fn client(&self, node: &str) -> Result<KubeletServiceClient<Channel>, ApiError> {
        let n = self
            .nodes
            .get("", node, ReadVersion::Any)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: "Node".into(),
                name: node.to_owned(),
            })?;
        let status = n.status.unwrap_or_default();
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .unwrap_or(0);
        let address = status
            .addresses
            .iter()
            .find(|a| a.r#type == "InternalIP")
            .or_else(|| status.addresses.first())
            .map(|a| a.address.clone());
        let (Some(address), true) = (address, port > 0) else {
            return Err(ApiError::Unavailable {
                message: format!(
                    "the kubelet of node {node:?} has not published its address and port"
                ),
                retry_after: Some(Duration::from_secs(1)),
            });
        };
        let url = format!("http://{address}:{port}");
        let mut channels = self.channels.lock().expect("kubelet channels");
        let channel = match channels.get(&url) {
            Some(c) => c.clone(),
            None => {
                let c = Endpoint::from_shared(url.clone())
                    .map_err(|_| ApiError::Internal(format!("bad kubelet address {url}")))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(url, c.clone());
                c
            }
        };
        Ok(KubeletServiceClient::new(channel).max_decoding_message_size(usize::MAX))
    }
}
