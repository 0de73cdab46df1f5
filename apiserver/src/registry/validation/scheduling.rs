//! Placement constraints between pods: pod affinity and anti-affinity
//! terms and topology spread constraints, with Kubernetes' rules (a
//! topology key on every term, weights 1–100, one constraint per key and
//! mode, minDomains only where it means something).
//!
//! Pure checks; no I/O and no defaulting.

use skiff::api::core::v1 as core;
use skiff::names::validate_label_key;

use super::{Violations, validate_label_selector};
use crate::error::FieldViolation;

fn validate_term(term: &core::PodAffinityTerm, path: &str, v: &mut Violations) {
    validate_label_selector(
        term.label_selector.as_ref(),
        &format!("{path}.labelSelector"),
        false,
        v,
    );
    validate_label_selector(
        term.namespace_selector.as_ref(),
        &format!("{path}.namespaceSelector"),
        false,
        v,
    );
    for (i, ns) in term.namespaces.iter().enumerate() {
        if let Err(e) = skiff::names::validate_dns1123_label(ns) {
            v.push(FieldViolation::new(format!("{path}.namespaces[{i}]"), e));
        }
    }
    if term.topology_key.is_empty() {
        v.push(FieldViolation::new(
            format!("{path}.topologyKey"),
            "can not be empty",
        ));
    } else if let Err(e) = skiff::names::validate_qualified_name(&term.topology_key, "topology key")
    {
        v.push(FieldViolation::new(format!("{path}.topologyKey"), e));
    }
}

fn validate_terms(
    required: &[core::PodAffinityTerm],
    preferred: &[core::WeightedPodAffinityTerm],
    path: &str,
    v: &mut Violations,
) {
    for (i, t) in required.iter().enumerate() {
        validate_term(
            t,
            &format!("{path}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
            v,
        );
    }
    for (i, w) in preferred.iter().enumerate() {
        let p = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
        if !(1..=100).contains(&w.weight) {
            v.push(FieldViolation::new(
                format!("{p}.weight"),
                "must be in the range 1-100",
            ));
        }
        match &w.pod_affinity_term {
            Some(t) => validate_term(t, &format!("{p}.podAffinityTerm"), v),
            None => v.push(FieldViolation::new(
                format!("{p}.podAffinityTerm"),
                "required",
            )),
        }
    }
}

/// Validates the pod (anti-)affinity of `affinity` at `path` ("spec.affinity").
pub fn validate_pod_affinity(affinity: Option<&core::Affinity>, path: &str, v: &mut Violations) {
    let Some(a) = affinity else { return };
    if let Some(pa) = &a.pod_affinity {
        validate_terms(
            &pa.required_during_scheduling_ignored_during_execution,
            &pa.preferred_during_scheduling_ignored_during_execution,
            &format!("{path}.podAffinity"),
            v,
        );
    }
    if let Some(pa) = &a.pod_anti_affinity {
        validate_terms(
            &pa.required_during_scheduling_ignored_during_execution,
            &pa.preferred_during_scheduling_ignored_during_execution,
            &format!("{path}.podAntiAffinity"),
            v,
        );
    }
}

/// Validates topology spread constraints at `path` ("spec.topologySpreadConstraints").
pub fn validate_topology_spread(
    constraints: &[core::TopologySpreadConstraint],
    path: &str,
    v: &mut Violations,
) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in constraints.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if c.max_skew <= 0 {
            v.push(FieldViolation::new(
                format!("{p}.maxSkew"),
                format!("{}: must be greater than zero", c.max_skew),
            ));
        }
        if c.topology_key.is_empty() {
            v.push(FieldViolation::new(
                format!("{p}.topologyKey"),
                "can not be empty",
            ));
        } else if let Err(e) =
            skiff::names::validate_qualified_name(&c.topology_key, "topology key")
        {
            v.push(FieldViolation::new(format!("{p}.topologyKey"), e));
        }
        match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" | "ScheduleAnyway" => {}
            "" => v.push(FieldViolation::new(
                format!("{p}.whenUnsatisfiable"),
                "required",
            )),
            other => v.push(FieldViolation::new(
                format!("{p}.whenUnsatisfiable"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
                ),
            )),
        }
        if !seen.insert((c.topology_key.clone(), c.when_unsatisfiable.clone())) {
            v.push(FieldViolation::new(
                format!("{p}.{{topologyKey, whenUnsatisfiable}}"),
                format!(
                    "Duplicate value: {{{:?}, {:?}}}",
                    c.topology_key, c.when_unsatisfiable
                ),
            ));
        }
        if let Some(m) = c.min_domains {
            if m <= 0 {
                v.push(FieldViolation::new(
                    format!("{p}.minDomains"),
                    format!("{m}: must be greater than 0"),
                ));
            } else if c.when_unsatisfiable != "DoNotSchedule" {
                v.push(FieldViolation::new(
                    format!("{p}.minDomains"),
                    "can only use minDomains if whenUnsatisfiable=DoNotSchedule",
                ));
            }
        }
        for (field, value) in [
            ("nodeAffinityPolicy", &c.node_affinity_policy),
            ("nodeTaintsPolicy", &c.node_taints_policy),
        ] {
            if !matches!(value.as_str(), "" | "Honor" | "Ignore") {
                v.push(FieldViolation::new(
                    format!("{p}.{field}"),
                    format!(
                        "Unsupported value: {value:?}: supported values: \"Honor\", \"Ignore\""
                    ),
                ));
            }
        }
        validate_label_selector(
            c.label_selector.as_ref(),
            &format!("{p}.labelSelector"),
            false,
            v,
        );
        for (j, k) in c.match_label_keys.iter().enumerate() {
            if let Err(e) = validate_label_key(k) {
                v.push(FieldViolation::new(format!("{p}.matchLabelKeys[{j}]"), e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_constraints_follow_kubernetes_rules() {
        let good = core::TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            min_domains: Some(2),
            ..Default::default()
        };
        let mut v = Vec::new();
        validate_topology_spread(std::slice::from_ref(&good), "s", &mut v);
        assert!(v.is_empty(), "{v:?}");
        let bad = core::TopologySpreadConstraint {
            max_skew: 0,
            topology_key: String::new(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            min_domains: Some(1),
            node_taints_policy: "Maybe".into(),
            ..Default::default()
        };
        validate_topology_spread(&[good.clone(), good, bad], "s", &mut v);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "s[1].{topologyKey, whenUnsatisfiable}",
                "s[2].maxSkew",
                "s[2].topologyKey",
                "s[2].minDomains",
                "s[2].nodeTaintsPolicy",
            ]
        );
    }

    #[test]
    fn affinity_terms_need_a_topology_key_and_weights_in_range() {
        let a = core::Affinity {
            pod_anti_affinity: Some(core::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: vec![
                    core::PodAffinityTerm::default(),
                ],
                preferred_during_scheduling_ignored_during_execution: vec![
                    core::WeightedPodAffinityTerm {
                        weight: 101,
                        pod_affinity_term: Some(core::PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        }),
                    },
                ],
            }),
            ..Default::default()
        };
        let mut v = Vec::new();
        validate_pod_affinity(Some(&a), "spec.affinity", &mut v);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
                "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
            ]
        );
    }
}
