//! The local-path provisioner, in the spirit of k3s's: claims of a class
//! whose provisioner is `skiff.dev/local-path` get a PersistentVolume that
//! is a directory on the node the scheduler chose for the claim's first
//! pod (`WaitForFirstConsumer`). The volume's node affinity keeps later
//! pods on that node; the directory lives under the root the node's
//! kubelet reports (annotation `skiff.dev/local-path-root`), which creates
//! it on first use and removes it once the volume is deleted (reclaim
//! policy Delete).

use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::api::storage::v1::StorageClass;
use skiff::client::Error;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};

use crate::Context;
use crate::persistentvolume::{SELECTED_NODE_ANNOTATION, claim_class};

/// The provisioner name of local-path storage classes.
pub const PROVISIONER: &str = "skiff.dev/local-path";
/// Node annotation with the directory its local-path volumes live under.
pub const ROOT_ANNOTATION: &str = "skiff.dev/local-path-root";
/// Annotation naming who provisioned a volume (Kubernetes').
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";

struct Provisioner {
    ctx: Context,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    volumes: Store<PersistentVolume>,
}

/// Runs the provisioner until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let claims = ctx.factory.all::<PersistentVolumeClaim>();
    let classes = ctx.factory.all::<StorageClass>();
    let nodes = ctx.factory.all::<Node>();
    let volumes = ctx.factory.all::<PersistentVolume>();
    let waiting = claims.store();
    // A node reporting its root may unblock the claims waiting for it.
    let for_node = Trigger::mapped(&nodes, move |n: &Node| {
        waiting
            .list()
            .iter()
            .filter(|c| c.meta().annotations.get(SELECTED_NODE_ANNOTATION) == Some(&n.meta().name))
            .map(|c| ObjectKey::of(&**c))
            .collect()
    });
    let controller = Controller::new(ControllerConfig {
        triggers: vec![for_node],
        workers: ctx.config.workers,
        ..ControllerConfig::new(claims)
    });
    let this = Arc::new(Provisioner {
        ctx,
        classes: classes.store(),
        nodes: nodes.store(),
        volumes: volumes.store(),
    });
    // The class and volume stores are read, not watched for keys: wait for them.
    this.classes.wait_until_ready().await;
    this.volumes.wait_until_ready().await;
    controller
        .run(
            move |req| {
                let this = this.clone();
                async move { this.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

/// The volume name of a claim: `pvc-<claim uid>`, as Kubernetes' provisioners.
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.meta().uid)
}

impl Provisioner {
    async fn reconcile(&self, req: Request<PersistentVolumeClaim>) -> Result<Action, Error> {
        let Some(claim) = req.object else {
            return Ok(Action::Done);
        };
        let spec = claim.spec.clone().unwrap_or_default();
        if claim.meta().deletion_timestamp.is_some() || !spec.volume_name.is_empty() {
            return Ok(Action::Done);
        }
        let class_name = claim_class(&claim);
        let Some(class) = self.classes.get(&ObjectKey::new("", &class_name)) else {
            return Ok(Action::Done);
        };
        if class.provisioner != PROVISIONER {
            return Ok(Action::Done);
        }
        let name = volume_name(&claim);
        if self.volumes.get(&ObjectKey::new("", &name)).is_some() {
            return Ok(Action::Done);
        }
        let Some(node_name) = claim
            .meta()
            .annotations
            .get(SELECTED_NODE_ANNOTATION)
            .cloned()
        else {
            if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
                self.record(
                    &claim,
                    WARNING,
                    "ProvisioningFailed",
                    "local-path volumes live on the node of their first pod: \
                     the class needs volumeBindingMode: WaitForFirstConsumer",
                )
                .await;
            }
            return Ok(Action::Done);
        };
        let root = self
            .nodes
            .get(&ObjectKey::new("", &node_name))
            .and_then(|n| n.meta().annotations.get(ROOT_ANNOTATION).cloned());
        let Some(root) = root else {
            let message = format!(
                "node {node_name:?} does not say where local-path volumes live (annotation \
                 {ROOT_ANNOTATION}): is a Skiff kubelet running there?"
            );
            self.record(&claim, WARNING, "ProvisioningFailed", &message)
                .await;
            return Ok(Action::Done);
        };
        let request = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.get("storage"))
            .cloned()
            .unwrap_or_else(|| "0".into());
        let volume = PersistentVolume {
            metadata: Some(ObjectMeta {
                name: name.clone(),
                annotations: [(PROVISIONED_BY_ANNOTATION.to_owned(), PROVISIONER.to_owned())]
                    .into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeSpec {
                capacity: [("storage".to_owned(), request)].into(),
                host_path: Some(HostPathVolumeSource {
                    path: format!("{}/{name}", root.trim_end_matches('/')),
                    r#type: "DirectoryOrCreate".into(),
                }),
                access_modes: spec.access_modes.clone(),
                claim_ref: Some(skiff::api::core::v1::ObjectReference {
                    kind: "PersistentVolumeClaim".into(),
                    namespace: claim.namespace().to_owned(),
                    name: claim.name().to_owned(),
                    uid: claim.meta().uid.clone(),
                    api_version: "v1".into(),
                    ..Default::default()
                }),
                persistent_volume_reclaim_policy: class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
                storage_class_name: class_name,
                volume_mode: spec.volume_mode.clone(),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: vec![node_name.clone()],
                            }],
                            match_fields: vec![],
                        }],
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        match self
            .ctx
            .client
            .all::<PersistentVolume>()
            .create(&volume)
            .await
        {
            Ok(_) => {
                let message = format!("Successfully provisioned volume {name} on node {node_name}");
                self.record(&claim, NORMAL, "ProvisioningSucceeded", &message)
                    .await;
                Ok(Action::Done)
            }
            Err(Error::AlreadyExists(_)) => Ok(Action::Done),
            Err(e) => {
                let message = format!("failed to provision volume {name}: {e}");
                self.record(&claim, WARNING, "ProvisioningFailed", &message)
                    .await;
                Err(e)
            }
        }
    }

    async fn record(&self, claim: &PersistentVolumeClaim, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(claim, kind, reason, message).await;
    }
}
