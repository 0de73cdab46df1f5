//! Helpers the controllers share: pod states, owner references, making
//! pods from templates.

use std::time::{Duration, SystemTime};

use skiff::api::core::v1::{Pod, PodTemplateSpec};
use skiff::api::meta::v1::{ObjectMeta, OwnerReference};
use skiff::{KindInfo, Resource};

/// Index of pods by their controller's uid.
pub const BY_CONTROLLER: &str = "controller-uid";

/// Indexes an informer's objects by their controller's uid ([`BY_CONTROLLER`]).
pub fn index_by_controller<K: Resource>(objects: &skiff::runtime::Informer<K>) {
    objects.store().add_index(BY_CONTROLLER, |p: &K| {
        controller_ref(p.meta())
            .map(|r| vec![r.uid.clone()])
            .unwrap_or_default()
    });
}

/// Whether a pod still counts toward its controller (not finished, not being deleted).
pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    p.meta().deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

fn ready_condition(p: &Pod) -> Option<&skiff::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready" && c.status == "True")
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    ready_condition(p).is_some()
}

/// Whether a pod has been ready for `min_ready`; if not yet but ready,
/// how long until it will be.
pub fn availability(p: &Pod, min_ready: Duration, now: SystemTime) -> (bool, Option<Duration>) {
    let Some(c) = ready_condition(p) else {
        return (false, None);
    };
    if min_ready.is_zero() {
        return (true, None);
    }
    let since = c
        .last_transition_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(now);
    let ready_for = now.duration_since(since).unwrap_or_default();
    if ready_for >= min_ready {
        (true, None)
    } else {
        (false, Some(min_ready - ready_for))
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_ref(m: &ObjectMeta) -> Option<&OwnerReference> {
    m.owner_references
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference to `owner`.
pub fn owner_ref<K: Resource>(owner: &K) -> OwnerReference {
    owner_ref_of(&K::INFO, owner.meta())
}

/// A controller owner reference to an owner of kind `info`.
pub fn owner_ref_of(info: &KindInfo, m: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: info.api_version.to_owned(),
        kind: info.kind.to_owned(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod from a template, owned by `owner`, named `<prefix>` + 5 random characters.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: Some(ObjectMeta {
            generate_name: format!("{prefix}-"),
            namespace: namespace.to_owned(),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: vec![owner],
            finalizers: tm.finalizers,
            ..Default::default()
        }),
        spec: template.spec.clone(),
        status: None,
    }
}

/// Writes an object's status. Losing to a newer object (a conflict) or to
/// its deletion is no error: the newer object's arrival in the cache
/// reconciles again.
pub async fn write_status<K: skiff::client::ResourceClient>(
    client: &skiff::client::Client,
    obj: &K,
) -> Result<(), skiff::client::Error> {
    use skiff::client::Error;
    match client.api::<K>(obj.namespace()).update_status(obj).await {
        Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Now as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    SystemTime::now().into()
}

/// Resolves an int-or-percent ("25%", "2") against `total`; percentages
/// round up when `round_up`, down otherwise.
pub fn int_or_percent(value: &str, total: i32, round_up: bool, default: &str) -> i32 {
    let v = if value.is_empty() { default } else { value };
    match v.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.parse().unwrap_or(0.0);
            let x = p * total as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
        None => v.parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_does() {
        assert_eq!(int_or_percent("25%", 10, true, "25%"), 3);
        assert_eq!(int_or_percent("25%", 10, false, "25%"), 2);
        assert_eq!(int_or_percent("", 4, true, "25%"), 1);
        assert_eq!(int_or_percent("3", 10, true, "25%"), 3);
    }
}
