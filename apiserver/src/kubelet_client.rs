//! Connections from the API server to kubelets, for the streams only a node
//! can serve (container logs, exec). A node publishes where its kubelet
//! listens in `status.daemonEndpoints.kubeletEndpoint.port` and its
//! addresses; connections are made lazily and reused.
//!
//! Owns the connections and the meaning of a kubelet's failures; must not
//! read pods or authorize (the registry does both first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff::api::core::v1::Node;
use skiff::api::kubelet::v1::kubelet_service_client::KubeletServiceClient;
use tonic::Status;
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
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// What a kubelet call's failure means to the API server's caller: a
/// kubelet that cannot be reached is UNAVAILABLE naming the node; a
/// kubelet's own refusal passes through with its code and message.
pub fn relay_error(node: &str, status: Status) -> ApiError {
    if is_transport_failure(&status) {
        return ApiError::Unavailable {
            message: format!(
                "cannot reach the kubelet of node {node:?}: {}",
                status.message()
            ),
            retry_after: Some(Duration::from_secs(1)),
        };
    }
    ApiError::Relayed {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// Whether `status` was made by the client's transport (connect, I/O)
/// rather than sent by the kubelet.
fn is_transport_failure(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::kubelet::v1::GetContainerLogsRequest;

    #[tokio::test]
    async fn an_unreachable_kubelet_is_unavailable_naming_its_node() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let status = KubeletServiceClient::new(channel)
            .get_container_logs(GetContainerLogsRequest::default())
            .await
            .unwrap_err();
        let e = relay_error("n1", status);
        assert!(
            matches!(&e, ApiError::Unavailable { message, .. }
                if message.starts_with("cannot reach the kubelet of node \"n1\"")),
            "{e:?}"
        );
    }

    #[test]
    fn a_kubelet_refusal_passes_through_with_its_code_and_message() {
        let e = relay_error("n1", Status::not_found("container \"c\" not found"));
        let status = Status::from(e);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "container \"c\" not found");
        // A kubelet's own UNAVAILABLE (not a transport failure) too.
        let e = relay_error(
            "n1",
            Status::unavailable("transport of the runtime is busy"),
        );
        assert_eq!(
            Status::from(e).message(),
            "transport of the runtime is busy"
        );
    }
}
