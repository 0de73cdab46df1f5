//! Volume binding, as Kubernetes' VolumeBinding plugin: a pod's claims
//! must exist; a bound claim's volume must reach the node (its node
//! affinity); a claim that waits for its first consumer may go anywhere
//! and is told the chosen node (`volume.kubernetes.io/selected-node`)
//! before the pod is bound, so that its volume is made there. A claim
//! still unbound whose class binds at once keeps the pod waiting.

use skiff::Resource;
use skiff::api::core::v1::{Node, NodeSelector, PersistentVolume, PersistentVolumeClaim, Pod};
use skiff::api::storage::v1::StorageClass;
use skiff::client::{Client, Error};
use skiff::runtime::{ObjectKey, Store};

/// Annotation telling a claim's provisioner the node its first pod runs on.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// The claims, volumes and classes the scheduler reads.
#[derive(Clone)]
pub struct VolumeStores {
    /// Claims.
    pub claims: Store<PersistentVolumeClaim>,
    /// Volumes.
    pub volumes: Store<PersistentVolume>,
    /// Storage classes.
    pub classes: Store<StorageClass>,
}

/// What a pod's claims ask of its node.
#[derive(Debug, Default)]
pub struct VolumeNeeds {
    /// Node selectors of bound volumes, all of which the node must match.
    pub node_affinity: Vec<NodeSelector>,
    /// Claims (names) to tell the chosen node before binding.
    pub delayed: Vec<String>,
}

impl VolumeNeeds {
    /// Whether the node can reach every bound volume.
    pub fn fits(&self, node: &Node) -> bool {
        self.node_affinity
            .iter()
            .all(|s| skiff::scheduling::selector_matches(s, node))
    }
}

/// What the pod's claims need, or why no node can take the pod now.
pub fn needs(pod: &Pod, stores: &VolumeStores) -> Result<VolumeNeeds, String> {
    let mut out = VolumeNeeds::default();
    let Some(spec) = &pod.spec else {
        return Ok(out);
    };
    for v in &spec.volumes {
        let Some(src) = &v.persistent_volume_claim else {
            continue;
        };
        let key = ObjectKey::new(pod.namespace(), &src.claim_name);
        let Some(claim) = stores.claims.get(&key) else {
            return Err(format!(
                "persistentvolumeclaim {:?} not found",
                src.claim_name
            ));
        };
        if claim.meta().deletion_timestamp.is_some() {
            return Err(format!(
                "persistentvolumeclaim {:?} is being deleted",
                src.claim_name
            ));
        }
        let volume_name = claim
            .spec
            .as_ref()
            .map(|s| s.volume_name.clone())
            .unwrap_or_default();
        if !volume_name.is_empty() {
            let Some(volume) = stores.volumes.get(&ObjectKey::new("", &volume_name)) else {
                return Err(format!(
                    "persistentvolume {volume_name:?} of claim {:?} not found",
                    src.claim_name
                ));
            };
            if let Some(sel) = volume
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.clone())
            {
                out.node_affinity.push(sel);
            }
            continue;
        }
        let class_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default();
        let delayed = stores
            .classes
            .get(&ObjectKey::new("", &class_name))
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if !delayed {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        out.delayed.push(src.claim_name.clone());
    }
    Ok(out)
}

/// Tells each delayed claim of `pod` the node it will be used on.
pub async fn select_node(
    client: &Client,
    pod: &Pod,
    claims: &[String],
    node: &str,
) -> Result<(), Error> {
    let api = client.api::<PersistentVolumeClaim>(pod.namespace());
    for name in claims {
        loop {
            let mut claim = api.get(name).await?;
            let bound = claim
                .spec
                .as_ref()
                .is_some_and(|s| !s.volume_name.is_empty());
            let annotations = &mut claim.meta_mut().annotations;
            // Already told, or bound by now: that choice stands.
            if annotations
                .get(SELECTED_NODE_ANNOTATION)
                .map(String::as_str)
                == Some(node)
                || bound
            {
                break;
            }
            annotations.insert(SELECTED_NODE_ANNOTATION.into(), node.to_owned());
            match api.update(&claim).await {
                Ok(_) => break,
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
