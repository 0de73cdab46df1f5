//! Strategies of persistent volumes, their claims and storage classes:
//! access modes and sizes as Kubernetes checks them, a claim's request
//! immutable once made (but for growing it), a bound volume's claim
//! reference, a storage class's provisioner and modes fixed at creation.
//! The default class of a claim that names none comes from admission.
//!
//! Pure rules on the objects; no I/O beyond the admission they name.

use futures::future::BoxFuture;
use skiff::api::core::v1::{PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec};
use skiff::api::storage::v1::StorageClass;
use skiff::quantity::Quantity;

use super::Strategy;
use crate::admission::Admission;
use crate::error::{ApiError, FieldViolation};
use crate::registry::validation::{validate_label_selector, validate_resource_list};

/// The access modes Kubernetes knows.
const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

fn validate_access_modes(modes: &[String], path: &str, v: &mut Vec<FieldViolation>) {
    if modes.is_empty() {
        v.push(FieldViolation::new(
            path,
            "at least 1 access mode is required",
        ));
    }
    for m in modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            v.push(FieldViolation::new(
                path,
                format!(
                    "Unsupported value: {m:?}: supported values: {}",
                    ACCESS_MODES
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        v.push(FieldViolation::new(
            path,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn validate_volume_mode(mode: Option<&str>, path: &str, v: &mut Vec<FieldViolation>) {
    if let Some(m) = mode
        && !matches!(m, "Filesystem" | "Block")
    {
        v.push(FieldViolation::new(
            path,
            format!("Unsupported value: {m:?}: supported values: \"Block\", \"Filesystem\""),
        ));
    }
}

/// The rules of a claim's spec at `path` (also a stateful set's claim template).
pub fn validate_claim_spec(
    spec: Option<&PersistentVolumeClaimSpec>,
    path: &str,
) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    let Some(spec) = spec else {
        return vec![FieldViolation::new(path, "required")];
    };
    validate_access_modes(&spec.access_modes, &format!("{path}.accessModes"), &mut v);
    validate_label_selector(
        spec.selector.as_ref(),
        &format!("{path}.selector"),
        false,
        &mut v,
    );
    let requests = spec.resources.as_ref().map(|r| &r.requests);
    match requests.and_then(|r| r.get("storage")) {
        None => v.push(FieldViolation::new(
            format!("{path}.resources.requests[storage]"),
            "Required value",
        )),
        Some(q) => match q.parse::<Quantity>() {
            Ok(q) if q.milli() > 0 => {}
            Ok(_) => v.push(FieldViolation::new(
                format!("{path}.resources.requests[storage]"),
                "must be greater than zero",
            )),
            Err(_) => {}
        },
    }
    if let Some(r) = &spec.resources {
        validate_resource_list(&r.requests, &format!("{path}.resources.requests"), &mut v);
        validate_resource_list(&r.limits, &format!("{path}.resources.limits"), &mut v);
    }
    validate_volume_mode(
        spec.volume_mode.as_deref(),
        &format!("{path}.volumeMode"),
        &mut v,
    );
    v
}

fn storage_request(spec: Option<&PersistentVolumeClaimSpec>) -> Option<Quantity> {
    spec?
        .resources
        .as_ref()?
        .requests
        .get("storage")?
        .parse()
        .ok()
}

impl Strategy for PersistentVolumeClaim {
    fn admit<'a>(&'a mut self, admission: &'a Admission) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(admission.default_storage_class(self))
    }

    fn prepare_for_create(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.volume_mode.is_none() {
            spec.volume_mode = Some("Filesystem".into());
        }
        self.status = Some(skiff::api::core::v1::PersistentVolumeClaimStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
    }

    fn validate(&self) -> Vec<FieldViolation> {
        validate_claim_spec(self.spec.as_ref(), "spec")
    }

    fn prepare_for_update(&mut self, old: &Self) {
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) {
            // What the binder set and the admission defaulted stays.
            if new.volume_name.is_empty() {
                new.volume_name = old.volume_name.clone();
            }
            if new.storage_class_name.is_none() {
                new.storage_class_name = old.storage_class_name.clone();
            }
            if new.volume_mode.is_none() {
                new.volume_mode = old.volume_mode.clone();
            }
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let (Some(new), Some(old_spec)) = (&self.spec, &old.spec) else {
            return v;
        };
        // Kubernetes: the spec is immutable after creation except
        // resources.requests (to grow a bound claim) and volumeName (set once).
        let mut relaxed = old_spec.clone();
        relaxed.resources = new.resources.clone();
        if old_spec.volume_name.is_empty() {
            relaxed.volume_name = new.volume_name.clone();
        }
        if relaxed != *new {
            v.push(FieldViolation::new(
                "spec",
                "spec is immutable after creation except resources.requests for bound claims",
            ));
        }
        if let (Some(new_q), Some(old_q)) =
            (storage_request(Some(new)), storage_request(Some(old_spec)))
            && new_q.milli() < old_q.milli()
        {
            v.push(FieldViolation::new(
                "spec.resources.requests[storage]",
                "field can not be less than previous value",
            ));
        }
        v
    }
}

impl Strategy for PersistentVolume {
    fn prepare_for_create(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.persistent_volume_reclaim_policy.is_empty() {
            spec.persistent_volume_reclaim_policy = "Retain".into();
        }
        if spec.volume_mode.is_none() {
            spec.volume_mode = Some("Filesystem".into());
        }
        self.status = Some(skiff::api::core::v1::PersistentVolumeStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        validate_access_modes(&spec.access_modes, "spec.accessModes", &mut v);
        match spec.capacity.get("storage") {
            None => v.push(FieldViolation::new(
                "spec.capacity[storage]",
                "Required value",
            )),
            Some(_) => validate_resource_list(&spec.capacity, "spec.capacity", &mut v),
        }
        let sources = [spec.host_path.is_some(), spec.local.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if sources != 1 {
            v.push(FieldViolation::new(
                "spec",
                "exactly one of hostPath or local is required",
            ));
        }
        for (path, field) in [
            (
                spec.host_path.as_ref().map(|h| &h.path),
                "spec.hostPath.path",
            ),
            (spec.local.as_ref().map(|l| &l.path), "spec.local.path"),
        ] {
            if let Some(p) = path
                && !p.starts_with('/')
            {
                v.push(FieldViolation::new(field, "must be an absolute path"));
            }
        }
        if spec.local.is_some() && spec.node_affinity.is_none() {
            v.push(FieldViolation::new(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
        if let Some(a) = &spec.node_affinity
            && a.required
                .as_ref()
                .is_none_or(|r| r.node_selector_terms.is_empty())
        {
            v.push(FieldViolation::new(
                "spec.nodeAffinity.required.nodeSelectorTerms",
                "must have at least one node selector term",
            ));
        }
        if !matches!(
            spec.persistent_volume_reclaim_policy.as_str(),
            "" | "Retain" | "Delete" | "Recycle"
        ) {
            v.push(FieldViolation::new(
                "spec.persistentVolumeReclaimPolicy",
                format!(
                    "Unsupported value: {:?}: supported values: \"Delete\", \"Recycle\", \"Retain\"",
                    spec.persistent_volume_reclaim_policy
                ),
            ));
        }
        validate_volume_mode(spec.volume_mode.as_deref(), "spec.volumeMode", &mut v);
        v
    }

    fn prepare_for_update(&mut self, old: &Self) {
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref())
            && new.volume_mode.is_none()
        {
            new.volume_mode = old.volume_mode.clone();
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        if let (Some(new), Some(old)) = (&self.spec, &old.spec) {
            if new.host_path != old.host_path || new.local != old.local {
                v.push(FieldViolation::new(
                    "spec",
                    "the volume source is immutable",
                ));
            }
            if old.node_affinity.is_some() && new.node_affinity != old.node_affinity {
                v.push(FieldViolation::new(
                    "spec.nodeAffinity",
                    "field is immutable",
                ));
            }
            if new.volume_mode != old.volume_mode {
                v.push(FieldViolation::new("spec.volumeMode", "field is immutable"));
            }
        }
        v
    }
}

/// Annotation that marks a storage class as the default of claims naming none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

impl Strategy for StorageClass {
    fn prepare_for_create(&mut self) {
        if self.reclaim_policy.is_none() {
            self.reclaim_policy = Some("Delete".into());
        }
        if self.volume_binding_mode.is_none() {
            self.volume_binding_mode = Some("Immediate".into());
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        if self.reclaim_policy.is_none() {
            self.reclaim_policy = old.reclaim_policy.clone();
        }
        if self.volume_binding_mode.is_none() {
            self.volume_binding_mode = old.volume_binding_mode.clone();
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if self.provisioner.is_empty() {
            v.push(FieldViolation::new("provisioner", "Required value"));
        } else if self.provisioner.len() > 253 {
            v.push(FieldViolation::new(
                "provisioner",
                "must be no more than 253 characters",
            ));
        }
        if let Some(p) = &self.reclaim_policy
            && !matches!(p.as_str(), "Delete" | "Retain")
        {
            v.push(FieldViolation::new(
                "reclaimPolicy",
                format!("Unsupported value: {p:?}: supported values: \"Delete\", \"Retain\""),
            ));
        }
        if let Some(m) = &self.volume_binding_mode
            && !matches!(m.as_str(), "Immediate" | "WaitForFirstConsumer")
        {
            v.push(FieldViolation::new(
                "volumeBindingMode",
                format!(
                    "Unsupported value: {m:?}: supported values: \"Immediate\", \"WaitForFirstConsumer\""
                ),
            ));
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        for (changed, field) in [
            (self.provisioner != old.provisioner, "provisioner"),
            (self.parameters != old.parameters, "parameters"),
            (self.reclaim_policy != old.reclaim_policy, "reclaimPolicy"),
            (
                self.volume_binding_mode != old.volume_binding_mode,
                "volumeBindingMode",
            ),
        ] {
            if changed {
                v.push(FieldViolation::new(
                    field,
                    "updates to this field are forbidden",
                ));
            }
        }
        v
    }
}
