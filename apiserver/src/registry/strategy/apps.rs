//! Strategies of replica sets, deployments, daemon sets and stateful sets:
//! a selector is required and immutable, the template must match it,
//! replicas are not negative, update strategies are Kubernetes' own.
//!
//! Pure rules on the objects; no I/O.

use skiff::Resource;
use skiff::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};

use super::Strategy;
use crate::error::FieldViolation;
use crate::registry::validation::{
    NameRule, validate_int_or_percent, validate_label_selector, validate_template,
};

/// A workload's selector may not change (Kubernetes: it would orphan its pods).
fn keep_selector(
    new: Option<skiff::api::meta::v1::LabelSelector>,
    old: Option<skiff::api::meta::v1::LabelSelector>,
    v: &mut Vec<FieldViolation>,
) {
    if new != old {
        v.push(FieldViolation::new("spec.selector", "field is immutable"));
    }
}

impl Strategy for ReplicaSet {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.replicas.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new("spec.replicas", "must not be negative"));
        }
        if spec.min_ready_seconds < 0 {
            v.push(FieldViolation::new(
                "spec.minReadySeconds",
                "must not be negative",
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        validate_template(
            spec.template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let sel = |x: &Self| x.spec.as_ref().and_then(|s| s.selector.clone());
        keep_selector(sel(self), sel(old), &mut v);
        v
    }
}

impl Strategy for Deployment {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.replicas.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new("spec.replicas", "must not be negative"));
        }
        if spec.revision_history_limit.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new(
                "spec.revisionHistoryLimit",
                "must not be negative",
            ));
        }
        if spec.progress_deadline_seconds.is_some_and(|r| r <= 0) {
            v.push(FieldViolation::new(
                "spec.progressDeadlineSeconds",
                "must be positive",
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        validate_template(
            spec.template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        if let Some(strategy) = &spec.strategy {
            match strategy.r#type.as_str() {
                "" | "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxSurge",
                            &ru.max_surge,
                            &mut v,
                        );
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            &ru.max_unavailable,
                            &mut v,
                        );
                        let zero = |s: &str| s == "0" || s == "0%";
                        if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                            v.push(FieldViolation::new(
                                "spec.strategy.rollingUpdate.maxUnavailable",
                                "may not be 0 when maxSurge is 0",
                            ));
                        }
                    }
                }
                "Recreate" => {
                    if strategy.rolling_update.is_some() {
                        v.push(FieldViolation::new(
                            "spec.strategy.rollingUpdate",
                            "may not be given when strategy type is Recreate",
                        ));
                    }
                }
                other => v.push(FieldViolation::new(
                    "spec.strategy.type",
                    format!("{other:?}: must be RollingUpdate or Recreate"),
                )),
            }
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let sel = |x: &Self| x.spec.as_ref().and_then(|s| s.selector.clone());
        keep_selector(sel(self), sel(old), &mut v);
        v
    }
}

impl Strategy for DaemonSet {
    fn prepare_for_create(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            let strategy = spec.update_strategy.get_or_insert_with(Default::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let ru = strategy.rolling_update.get_or_insert_with(Default::default);
                if ru.max_unavailable.is_empty() {
                    ru.max_unavailable = "1".into();
                }
                if ru.max_surge.is_empty() {
                    ru.max_surge = "0".into();
                }
            }
            if spec.revision_history_limit.is_none() {
                spec.revision_history_limit = Some(10);
            }
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        let _ = old;
        self.prepare_for_create();
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.min_ready_seconds < 0 {
            v.push(FieldViolation::new(
                "spec.minReadySeconds",
                "must be greater than or equal to 0",
            ));
        }
        if spec.revision_history_limit.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new(
                "spec.revisionHistoryLimit",
                "must be greater than or equal to 0",
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        validate_template(
            spec.template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        if let Some(strategy) = &spec.update_strategy {
            match strategy.r#type.as_str() {
                "" | "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        let p = "spec.updateStrategy.rollingUpdate";
                        validate_int_or_percent(&format!("{p}.maxUnavailable"), &ru.max_unavailable, &mut v);
                        validate_int_or_percent(&format!("{p}.maxSurge"), &ru.max_surge, &mut v);
                        let zero = |s: &str| s.is_empty() || s == "0" || s == "0%";
                        if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                            v.push(FieldViolation::new(
                                format!("{p}.maxUnavailable"),
                                "may not be 0 when maxSurge is 0",
                            ));
                        }
                        if !zero(&ru.max_surge) && !zero(&ru.max_unavailable) {
                            v.push(FieldViolation::new(
                                format!("{p}.maxSurge"),
                                "may not be set when maxUnavailable is non-zero",
                            ));
                        }
                    }
                }
                "OnDelete" => {}
                other => v.push(FieldViolation::new(
                    "spec.updateStrategy.type",
                    format!("Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""),
                )),
            }
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let sel = |x: &Self| x.spec.as_ref().and_then(|s| s.selector.clone());
        keep_selector(sel(self), sel(old), &mut v);
        v
    }
}

impl Strategy for StatefulSet {
    // Pods are NAME-ORDINAL and their hostname is the pod name: a DNS label.
    const NAME_RULE: NameRule = NameRule::Label;

    fn prepare_for_create(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            if spec.replicas.is_none() {
                spec.replicas = Some(1);
            }
            if spec.pod_management_policy.is_empty() {
                spec.pod_management_policy = "OrderedReady".into();
            }
            let strategy = spec.update_strategy.get_or_insert_with(Default::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let ru = strategy.rolling_update.get_or_insert_with(Default::default);
                if ru.partition.is_none() {
                    ru.partition = Some(0);
                }
            }
            if spec.revision_history_limit.is_none() {
                spec.revision_history_limit = Some(10);
            }
            let policy = spec
                .persistent_volume_claim_retention_policy
                .get_or_insert_with(Default::default);
            if policy.when_deleted.is_empty() {
                policy.when_deleted = "Retain".into();
            }
            if policy.when_scaled.is_empty() {
                policy.when_scaled = "Retain".into();
            }
            for claim in &mut spec.volume_claim_templates {
                let claim_spec = claim.spec.get_or_insert_with(Default::default);
                if claim_spec.volume_mode.is_none() {
                    claim_spec.volume_mode = Some("Filesystem".into());
                }
            }
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        let _ = old;
        self.prepare_for_create();
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.replicas.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new(
                "spec.replicas",
                "must be greater than or equal to 0",
            ));
        }
        if spec.min_ready_seconds < 0 {
            v.push(FieldViolation::new(
                "spec.minReadySeconds",
                "must be greater than or equal to 0",
            ));
        }
        if spec.ordinals.as_ref().is_some_and(|o| o.start < 0) {
            v.push(FieldViolation::new(
                "spec.ordinals.start",
                "must be greater than or equal to 0",
            ));
        }
        if !matches!(
            spec.pod_management_policy.as_str(),
            "" | "OrderedReady" | "Parallel"
        ) {
            v.push(FieldViolation::new(
                "spec.podManagementPolicy",
                format!(
                    "Unsupported value: {:?}: supported values: \"OrderedReady\", \"Parallel\"",
                    spec.pod_management_policy
                ),
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        // Pods mount their claims as volumes named after the templates.
        let mut template = spec.template.clone();
        if let Some(pod) = template.as_mut().and_then(|t| t.spec.as_mut()) {
            for claim in &spec.volume_claim_templates {
                let name = claim.meta().name.clone();
                if pod.volumes.iter().all(|v| v.name != name) {
                    pod.volumes.push(skiff::api::core::v1::Volume {
                        persistent_volume_claim: Some(
                            skiff::api::core::v1::PersistentVolumeClaimVolumeSource {
                                claim_name: name.clone(),
                                read_only: false,
                            },
                        ),
                        name,
                        ..Default::default()
                    });
                }
            }
        }
        validate_template(
            template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        if let Some(strategy) = &spec.update_strategy {
            match strategy.r#type.as_str() {
                "" | "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        if ru.partition.is_some_and(|p| p < 0) {
                            v.push(FieldViolation::new(
                                "spec.updateStrategy.rollingUpdate.partition",
                                "must be greater than or equal to 0",
                            ));
                        }
                        validate_int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            &ru.max_unavailable,
                            &mut v,
                        );
                    }
                }
                "OnDelete" => {
                    if strategy.rolling_update.is_some() {
                        v.push(FieldViolation::new(
                            "spec.updateStrategy.rollingUpdate",
                            "only allowed for updateStrategy 'RollingUpdate'",
                        ));
                    }
                }
                other => v.push(FieldViolation::new(
                    "spec.updateStrategy.type",
                    format!("Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""),
                )),
            }
        }
        if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
            for (value, field) in [
                (&policy.when_deleted, "whenDeleted"),
                (&policy.when_scaled, "whenScaled"),
            ] {
                if !matches!(value.as_str(), "" | "Retain" | "Delete") {
                    v.push(FieldViolation::new(
                        format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                        format!(
                            "Unsupported value: {value:?}: supported values: \"Retain\", \"Delete\""
                        ),
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, claim) in spec.volume_claim_templates.iter().enumerate() {
            let p = format!("spec.volumeClaimTemplates[{i}]");
            let name = claim.meta().name.clone();
            if name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.metadata.name"),
                    "required",
                ));
            } else if !names.insert(name.clone()) {
                v.push(FieldViolation::new(
                    format!("{p}.metadata.name"),
                    format!("duplicate claim template {name:?}"),
                ));
            }
            v.extend(super::storage::validate_claim_spec(
                claim.spec.as_ref(),
                &format!("{p}.spec"),
            ));
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        // Kubernetes lets an update change replicas, ordinals, template,
        // updateStrategy, the retention policy and minReadySeconds only.
        if let (Some(new), Some(old)) = (&self.spec, &old.spec) {
            for (changed, field) in [
                (new.selector != old.selector, "selector"),
                (new.service_name != old.service_name, "serviceName"),
                (
                    new.pod_management_policy != old.pod_management_policy,
                    "podManagementPolicy",
                ),
                (
                    new.volume_claim_templates != old.volume_claim_templates,
                    "volumeClaimTemplates",
                ),
            ] {
                if changed {
                    v.push(FieldViolation::new(
                        format!("spec.{field}"),
                        "updates to statefulset spec for fields other than 'replicas', \
                         'ordinals', 'template', 'updateStrategy', \
                         'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' \
                         are forbidden",
                    ));
                }
            }
        }
        v
    }
}
