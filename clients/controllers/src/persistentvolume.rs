//! The persistent volume binder: binds each claim to a volume that fits
//! (storage class, access modes, capacity, label selector; the smallest
//! such volume), both ways (`claim.spec.volumeName`, `volume.spec.claimRef`),
//! and sets both phases. A claim whose class binds on first use waits for
//! the scheduler to name a node; a claim no volume fits waits for its
//! class's provisioner, or says why nobody will provision it — as
//! Kubernetes' events do. A volume whose claim is gone is Released, and
//! deleted if its reclaim policy is Delete.

use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use skiff::api::storage::v1::StorageClass;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::quantity::Quantity;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};
use skiff::selector::LabelSelector;

use crate::Context;

/// Annotation the scheduler sets on a claim waiting for its first consumer.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// Annotation naming the provisioner expected to make a claim's volume.
pub const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";

/// The class a claim asks for ("" for none).
pub fn claim_class(c: &PersistentVolumeClaim) -> String {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// The storage a claim requests.
pub fn claim_request(c: &PersistentVolumeClaim) -> Quantity {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.get("storage"))
        .and_then(|q| q.parse().ok())
        .unwrap_or_default()
}

fn volume_capacity(v: &PersistentVolume) -> Quantity {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.get("storage"))
        .and_then(|q| q.parse().ok())
        .unwrap_or_default()
}

fn claim_ref_of(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        kind: "PersistentVolumeClaim".into(),
        namespace: c.namespace().to_owned(),
        name: c.name().to_owned(),
        uid: c.meta().uid.clone(),
        api_version: "v1".into(),
        ..Default::default()
    }
}

/// Whether `v` may serve claim `c`: free (or reserved for it), of its
/// class, with its access modes, big enough, matching its selector.
fn fits(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (&v.spec, &c.spec) else {
        return false;
    };
    if v.meta().deletion_timestamp.is_some() {
        return false;
    }
    match &vs.claim_ref {
        Some(r) if r.name != c.name() || r.namespace != c.namespace() => return false,
        Some(r) if !r.uid.is_empty() && r.uid != c.meta().uid => return false,
        _ => {}
    }
    if vs.storage_class_name != claim_class(c) {
        return false;
    }
    if !cs.access_modes.iter().all(|m| vs.access_modes.contains(m)) {
        return false;
    }
    if vs.volume_mode != cs.volume_mode && cs.volume_mode.is_some() {
        return false;
    }
    if volume_capacity(v) < claim_request(c) {
        return false;
    }
    match &cs.selector {
        Some(sel) => LabelSelector::from_proto(sel).is_ok_and(|s| s.matches(&v.meta().labels)),
        None => true,
    }
}

struct Binder {
    ctx: Context,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

/// Runs the binder until `shutdown`: claims are reconciled, and every
/// volume or class change looks at the claims again.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let claims = ctx.factory.all::<PersistentVolumeClaim>();
    let volumes = ctx.factory.all::<PersistentVolume>();
    let classes = ctx.factory.all::<StorageClass>();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let volume_side = run_volumes(
        ctx.clone(),
        volumes.clone(),
        claims.store(),
        until(stopped.clone()),
    );
    let pending = claims.store();
    let unbound = move || -> Vec<ObjectKey> {
        pending
            .list()
            .iter()
            .filter(|c| c.status.as_ref().is_none_or(|s| s.phase != "Bound"))
            .map(|c| ObjectKey::of(&**c))
            .collect()
    };
    let unbound2 = unbound.clone();
    let controller = Controller::new(ControllerConfig {
        triggers: vec![
            Trigger::mapped(&volumes, move |_: &PersistentVolume| unbound()),
            Trigger::mapped(&classes, move |_: &StorageClass| unbound2()),
        ],
        workers: ctx.config.workers,
        ..ControllerConfig::new(claims.clone())
    });
    let this = Arc::new(Binder {
        ctx,
        volumes: volumes.store(),
        classes: classes.store(),
    });
    let claim_side = controller.run(
        move |req| {
            let this = this.clone();
            async move { this.reconcile_claim(req).await }
        },
        until(stopped),
    );
    let driver = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    futures::join!(claim_side, volume_side, driver);
}

impl Binder {
    async fn reconcile_claim(&self, req: Request<PersistentVolumeClaim>) -> Result<Action, Error> {
        let Some(claim) = req.object else {
            return Ok(Action::Done);
        };
        if claim.meta().deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = claim.spec.clone().unwrap_or_default();
        let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
        // A claim naming its volume (the binder's earlier half, or the user).
        if !spec.volume_name.is_empty() {
            let Some(volume) = self.volumes.get(&ObjectKey::new("", &spec.volume_name)) else {
                if bound {
                    self.set_claim_phase(&claim, "Lost", None).await?;
                    let message =
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!";
                    self.record(&*claim, WARNING, "ClaimLost", message).await;
                }
                return Ok(Action::Done);
            };
            if fits(&volume, &claim) {
                self.bind(&volume, &claim).await?;
            }
            return Ok(Action::Done);
        }
        let class_name = claim_class(&claim);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(&ObjectKey::new("", &class_name)))
            .flatten();
        let wait_for_consumer = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        let selected = claim
            .meta()
            .annotations
            .get(SELECTED_NODE_ANNOTATION)
            .cloned();
        if wait_for_consumer && selected.is_none() {
            self.record(
                &*claim,
                NORMAL,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(Action::Done);
        }
        // The smallest volume that fits (and, for a selected node, reaches it).
        let node = match &selected {
            Some(n) => self.ctx.client.nodes().get_opt(n).await?,
            None => None,
        };
        let best = self
            .volumes
            .list()
            .into_iter()
            .filter(|v| fits(v, &claim))
            .filter(|v| {
                v.spec.as_ref().is_some_and(|s| {
                    s.claim_ref.is_none()
                        || s.claim_ref.as_ref().is_some_and(|r| r.name == claim.name())
                })
            })
            .filter(|v| {
                let affinity = v
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_affinity.as_ref())
                    .and_then(|a| a.required.as_ref());
                match (affinity, &node) {
                    (Some(sel), Some(n)) => skiff::scheduling::selector_matches(sel, n),
                    _ => true,
                }
            })
            .min_by_key(|v| (volume_capacity(v), v.name().to_owned()));
        if let Some(volume) = best {
            self.bind(&volume, &claim).await?;
            return Ok(Action::Done);
        }
        // Nothing fits: a provisioner may make one.
        match (&class, class_name.is_empty()) {
            (_, true) => {
                self.record(
                    &*claim,
                    NORMAL,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            }
            (None, false) => {
                let message = format!("storageclass.storage.k8s.io {class_name:?} not found");
                self.record(&*claim, WARNING, "ProvisioningFailed", &message)
                    .await;
            }
            (Some(class), false) => {
                if claim.meta().annotations.get(PROVISIONER_ANNOTATION) != Some(&class.provisioner)
                {
                    let mut annotated = (*claim).clone();
                    annotated
                        .meta_mut()
                        .annotations
                        .insert(PROVISIONER_ANNOTATION.into(), class.provisioner.clone());
                    ignore_gone(
                        self.ctx
                            .client
                            .api::<PersistentVolumeClaim>(claim.namespace())
                            .update(&annotated)
                            .await,
                    )?;
                }
                let message = format!(
                    "Waiting for a volume to be created either by the external provisioner \
                     '{}' or manually by the system administrator. If volume creation is \
                     delayed, please verify that the provisioner is running and correctly \
                     registered.",
                    class.provisioner
                );
                self.record(&*claim, NORMAL, "ExternalProvisioning", &message)
                    .await;
            }
        }
        Ok(Action::Done)
    }

    /// Binds both halves: the volume's claimRef first (so no other claim
    /// takes it), then the claim's volumeName, then both phases.
    async fn bind(
        &self,
        volume: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), Error> {
        let pvs = self.ctx.client.all::<PersistentVolume>();
        let mut v = volume.clone();
        let reference = claim_ref_of(claim);
        let spec = v.spec.get_or_insert_with(Default::default);
        if spec
            .claim_ref
            .as_ref()
            .map(|r| (&r.name, &r.namespace, &r.uid))
            != Some((&reference.name, &reference.namespace, &reference.uid))
        {
            spec.claim_ref = Some(reference);
            v = match pvs.update(&v).await {
                Ok(v) => v,
                Err(Error::Conflict(_) | Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
        }
        if v.status.as_ref().is_none_or(|s| s.phase != "Bound") {
            v.status = Some(PersistentVolumeStatus {
                phase: "Bound".into(),
                last_phase_transition_time: Some(self.ctx.config.clock.now().into()),
                ..Default::default()
            });
            ignore_gone(pvs.update_status(&v).await)?;
        }
        let claims = self
            .ctx
            .client
            .api::<PersistentVolumeClaim>(claim.namespace());
        let mut c = claim.clone();
        let cs = c.spec.get_or_insert_with(Default::default);
        if cs.volume_name != v.name() {
            cs.volume_name = v.name().to_owned();
            c = match claims.update(&c).await {
                Ok(c) => c,
                Err(Error::Conflict(_) | Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
        }
        self.set_claim_phase(&c, "Bound", Some(&v)).await
    }

    async fn set_claim_phase(
        &self,
        claim: &PersistentVolumeClaim,
        phase: &str,
        volume: Option<&PersistentVolume>,
    ) -> Result<(), Error> {
        let status = PersistentVolumeClaimStatus {
            phase: phase.into(),
            access_modes: volume
                .and_then(|v| v.spec.as_ref())
                .map(|s| s.access_modes.clone())
                .unwrap_or_default(),
            capacity: volume
                .and_then(|v| v.spec.as_ref())
                .map(|s| s.capacity.clone())
                .unwrap_or_default(),
            conditions: claim
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        };
        if claim.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut c = claim.clone();
        c.status = Some(status);
        ignore_gone(
            self.ctx
                .client
                .api::<PersistentVolumeClaim>(claim.namespace())
                .update_status(&c)
                .await,
        )
    }

    async fn record<K: Resource>(&self, obj: &K, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(obj, kind, reason, message).await;
    }
}

/// Volumes: Available when free, Released when their claim is gone (and
/// deleted then if their reclaim policy is Delete).
async fn run_volumes(
    ctx: Context,
    volumes: skiff::runtime::Informer<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let claim_changes = Trigger::mapped(&ctx.factory.all::<PersistentVolumeClaim>(), {
        let volumes = volumes.store();
        move |c: &PersistentVolumeClaim| {
            let name = c
                .spec
                .as_ref()
                .map(|s| s.volume_name.clone())
                .unwrap_or_default();
            let mut keys: Vec<ObjectKey> = volumes
                .list()
                .iter()
                .filter(|v| {
                    v.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| r.name == c.name() && r.namespace == c.namespace())
                })
                .map(|v| ObjectKey::of(&**v))
                .collect();
            if !name.is_empty() {
                keys.push(ObjectKey::new("", &name));
            }
            keys
        }
    });
    let controller = Controller::new(ControllerConfig {
        triggers: vec![claim_changes],
        workers: ctx.config.workers,
        ..ControllerConfig::new(volumes)
    });
    let ctx = Arc::new(ctx);
    controller
        .run(
            move |req: Request<PersistentVolume>| {
                let (ctx, claims) = (ctx.clone(), claims.clone());
                async move { reconcile_volume(&ctx, &claims, req).await }
            },
            shutdown,
        )
        .await;
}

async fn reconcile_volume(
    ctx: &Context,
    claims: &Store<PersistentVolumeClaim>,
    req: Request<PersistentVolume>,
) -> Result<Action, Error> {
    let Some(volume) = req.object else {
        return Ok(Action::Done);
    };
    if volume.meta().deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let spec = volume.spec.clone().unwrap_or_default();
    let phase = volume
        .status
        .as_ref()
        .map(|s| s.phase.as_str())
        .unwrap_or("");
    let want = match &spec.claim_ref {
        None => "Available",
        Some(r) => {
            let claim = claims.get(&ObjectKey::new(&r.namespace, &r.name));
            let claim = match claim {
                Some(c) => Some(c),
                // Not cached: ask before calling it gone.
                None => ctx
                    .client
                    .api::<PersistentVolumeClaim>(&r.namespace)
                    .get_opt(&r.name)
                    .await?
                    .map(Arc::new),
            };
            match claim {
                Some(c) if r.uid.is_empty() || c.meta().uid == r.uid => {
                    if phase == "Bound" || phase == "Released" {
                        phase
                    } else {
                        // Reserved for a claim the binder will finish binding.
                        "Available"
                    }
                }
                _ if r.uid.is_empty() => "Available",
                _ => "Released",
            }
        }
    };
    let want = if phase == "Released" && want == "Bound" {
        "Released"
    } else {
        want
    };
    if want == "Released" && spec.persistent_volume_reclaim_policy == "Delete" {
        match ctx
            .client
            .all::<PersistentVolume>()
            .delete(volume.name(), &DeleteParams::default())
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => {
                let message = format!("Deleted volume {} of a claim that is gone", volume.name());
                ctx.recorder
                    .record(&*volume, NORMAL, "VolumeDelete", &message)
                    .await;
                return Ok(Action::Done);
            }
            Err(e) => return Err(e),
        }
    }
    if phase != want {
        let mut v = (*volume).clone();
        v.status = Some(PersistentVolumeStatus {
            phase: want.into(),
            last_phase_transition_time: Some(ctx.config.clock.now().into()),
            ..Default::default()
        });
        ignore_gone(ctx.client.all::<PersistentVolume>().update_status(&v).await)?;
    }
    Ok(Action::Done)
}

fn ignore_gone<T>(r: Result<T, Error>) -> Result<(), Error> {
    match r {
        Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeSpec, ResourceRequirements,
    };
    use skiff::api::meta::v1::ObjectMeta;

    fn claim(class: Option<&str>, size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: Some(ObjectMeta {
                name: "data".into(),
                namespace: "default".into(),
                uid: "c-1".into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: modes.iter().map(|m| m.to_string()).collect(),
                resources: Some(ResourceRequirements {
                    requests: [("storage".to_owned(), size.to_owned())].into(),
                    ..Default::default()
                }),
                storage_class_name: class.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn volume(class: &str, size: &str, modes: &[&str]) -> PersistentVolume {
        PersistentVolume {
            metadata: Some(ObjectMeta {
                name: "pv".into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeSpec {
                capacity: [("storage".to_owned(), size.to_owned())].into(),
                access_modes: modes.iter().map(|m| m.to_string()).collect(),
                storage_class_name: class.into(),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_volume_fits_a_claim_of_its_class_modes_and_size() {
        let rwo = ["ReadWriteOnce"];
        assert!(fits(
            &volume("fast", "10Gi", &rwo),
            &claim(Some("fast"), "1Gi", &rwo)
        ));
        assert!(
            !fits(
                &volume("fast", "1Gi", &rwo),
                &claim(Some("fast"), "2Gi", &rwo)
            ),
            "too small"
        );
        assert!(
            !fits(
                &volume("slow", "10Gi", &rwo),
                &claim(Some("fast"), "1Gi", &rwo)
            ),
            "class"
        );
        assert!(!fits(
            &volume("", "10Gi", &rwo),
            &claim(Some("fast"), "1Gi", &rwo)
        ));
        assert!(
            fits(&volume("", "10Gi", &rwo), &claim(None, "1Gi", &rwo)),
            "no class, no class"
        );
        assert!(
            !fits(
                &volume("fast", "10Gi", &rwo),
                &claim(Some("fast"), "1Gi", &["ReadWriteMany"])
            ),
            "modes"
        );
        let mut taken = volume("fast", "10Gi", &rwo);
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: "other".into(),
            namespace: "default".into(),
            ..Default::default()
        });
        assert!(
            !fits(&taken, &claim(Some("fast"), "1Gi", &rwo)),
            "bound elsewhere"
        );
    }
}
