//! The pod strategy: status starts Pending, the spec is nearly immutable
//! (as in Kubernetes), and deleting a pod that runs on a node is graceful —
//! its kubelet stops the containers and then removes the object.
//!
//! Pure rules on the object; no I/O (admission reads what pods need).

use futures::future::BoxFuture;
use skiff::api::core::v1::{Pod, PodSpec, PodStatus};

use super::Strategy;
use crate::admission::{Admission, Usage, quota};
use crate::authz::node::NodeAccess;
use crate::error::{ApiError, FieldViolation};
use crate::registry::validation::validate_pod_spec;

/// Default grace period of a pod deletion, in seconds.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

impl Strategy for Pod {
    const STREAMING_METHODS: &'static [&'static str] = crate::registry::pod::STREAMING_METHODS;
    const TRIGGER_FIELD: Option<&'static str> = Some("spec.nodeName");
    const NODE_ACCESS: NodeAccess = NodeAccess::BoundPods;
    const QUOTA_RESOURCES: &'static [&'static str] = quota::POD_RESOURCES;

    fn admit<'a>(&'a mut self, admission: &'a Admission) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            admission.default_service_account(self).await?;
            admission.assign_pod_priority(self).await?;
            admission.apply_limit_ranges(self).await
        })
    }

    fn quota_usage(&self, usage: &mut Usage) {
        quota::add_pod_usage(self, usage);
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
        if let Some(spec) = self.spec.as_mut() {
            set_pod_defaults(spec);
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        validate_pod_spec(self.spec.as_ref(), "spec", &mut v);
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        if let (Some(new), Some(old)) = (&self.spec, &old.spec)
            && !spec_update_allowed(new, old)
        {
            v.push(FieldViolation::new(
                "spec",
                "pod updates may not change fields other than spec.containers[*].image, \
                 spec.initContainers[*].image, spec.activeDeadlineSeconds and spec.tolerations \
                 (only additions); spec.nodeName is set by BindPod",
            ));
        }
        v
    }

    fn validate_status(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if let Some(s) = &self.status {
            if !matches!(
                s.phase.as_str(),
                "" | "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
            ) {
                v.push(FieldViolation::new(
                    "status.phase",
                    format!(
                        "{:?}: must be Pending, Running, Succeeded, Failed or Unknown",
                        s.phase
                    ),
                ));
            }
            for (i, c) in s.conditions.iter().enumerate() {
                if c.r#type.is_empty() {
                    v.push(FieldViolation::new(
                        format!("status.conditions[{i}].type"),
                        "required",
                    ));
                }
                if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
                    v.push(FieldViolation::new(
                        format!("status.conditions[{i}].status"),
                        "must be True, False or Unknown",
                    ));
                }
            }
            for (i, ip) in s.pod_ips.iter().enumerate() {
                crate::registry::validation::validate_ip(
                    &format!("status.podIPs[{i}].ip"),
                    &ip.ip,
                    &mut v,
                );
            }
            if !s.pod_ip.is_empty() {
                crate::registry::validation::validate_ip("status.podIP", &s.pod_ip, &mut v);
            }
        }
        v
    }

    fn graceful_delete_seconds(&self, requested: Option<i64>) -> Option<i64> {
        let bound = self.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
        let phase = self.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        if !bound || matches!(phase, "Succeeded" | "Failed") {
            return None;
        }
        let grace = requested
            .or_else(|| {
                self.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        (grace > 0).then_some(grace)
    }
}

/// Whether `new` differs from `old` only where Kubernetes allows a pod spec to change.
fn spec_update_allowed(new: &PodSpec, old: &PodSpec) -> bool {
    let mut relaxed = old.clone();
    if new.containers.len() != old.containers.len()
        || new.init_containers.len() != old.init_containers.len()
    {
        return false;
    }
    for (r, n) in relaxed.containers.iter_mut().zip(&new.containers) {
        r.image = n.image.clone();
    }
    for (r, n) in relaxed.init_containers.iter_mut().zip(&new.init_containers) {
        r.image = n.image.clone();
    }
    relaxed.active_deadline_seconds = new.active_deadline_seconds;
    if !old.tolerations.iter().all(|t| new.tolerations.contains(t)) {
        return false;
    }
    relaxed.tolerations = new.tolerations.clone();
    relaxed == *new
}

/// Kubernetes' defaults for what a pod spec leaves out: restart policy,
/// grace period, DNS policy, image pull policy, termination message,
/// port protocols and probe timing.
pub fn set_pod_defaults(spec: &mut skiff::api::core::v1::PodSpec) {
    if spec.restart_policy.is_empty() {
        spec.restart_policy = "Always".into();
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(30);
    }
    if spec.dns_policy.is_empty() {
        spec.dns_policy = "ClusterFirst".into();
    }
    for c in spec
        .init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
    {
        if c.image_pull_policy.is_empty() {
            c.image_pull_policy = default_pull_policy(&c.image).into();
        }
        if c.termination_message_path.is_empty() {
            c.termination_message_path = "/dev/termination-log".into();
        }
        if c.termination_message_policy.is_empty() {
            c.termination_message_policy = "File".into();
        }
        for p in &mut c.ports {
            if p.protocol.is_empty() {
                p.protocol = "TCP".into();
            }
        }
        for probe in [
            &mut c.liveness_probe,
            &mut c.readiness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            if probe.timeout_seconds == 0 {
                probe.timeout_seconds = 1;
            }
            if probe.period_seconds == 0 {
                probe.period_seconds = 10;
            }
            if probe.success_threshold == 0 {
                probe.success_threshold = 1;
            }
            if probe.failure_threshold == 0 {
                probe.failure_threshold = 3;
            }
        }
    }
}

/// Kubernetes' default pull policy: Always for `:latest` or no tag, else
/// IfNotPresent (a digest counts as a tag).
pub fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{Container, Toleration};

    #[test]
    fn pull_policy_defaults_to_always_only_for_latest_or_untagged() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/app:v1"), "IfNotPresent");
        assert_eq!(default_pull_policy("app@sha256:abc"), "IfNotPresent");
    }

    fn spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_images_deadlines_and_added_tolerations_may_change() {
        let old = spec();
        let mut new = spec();
        new.containers[0].image = "b".into();
        new.tolerations.push(Toleration {
            key: "k".into(),
            ..Default::default()
        });
        assert!(spec_update_allowed(&new, &old));
        let mut bad = spec();
        bad.containers[0].command = vec!["x".into()];
        assert!(!spec_update_allowed(&bad, &old));
        let mut bind = spec();
        bind.node_name = "n1".into();
        assert!(!spec_update_allowed(&bind, &old));
        assert!(
            !spec_update_allowed(&old, &new),
            "tolerations may not be removed"
        );
    }

    #[test]
    fn deleting_a_running_pod_is_graceful_and_an_unbound_one_is_not() {
        let mut p = Pod {
            spec: Some(spec()),
            ..Default::default()
        };
        assert_eq!(p.graceful_delete_seconds(None), None);
        p.spec.as_mut().unwrap().node_name = "n1".into();
        assert_eq!(p.graceful_delete_seconds(None), Some(DEFAULT_GRACE_SECONDS));
        assert_eq!(p.graceful_delete_seconds(Some(5)), Some(5));
        assert_eq!(p.graceful_delete_seconds(Some(0)), None);
        p.status = Some(PodStatus {
            phase: "Succeeded".into(),
            ..Default::default()
        });
        assert_eq!(p.graceful_delete_seconds(None), None);
    }
}
