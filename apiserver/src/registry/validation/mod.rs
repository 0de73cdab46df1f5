//! Validation shared by every kind: object metadata, names, quantities,
//! ports, selectors and pod specs. Each check appends [`FieldViolation`]s
//! with the JSON path of the field, so one response names every problem.
//!
//! Pure checks; no I/O and no defaulting.

use std::net::IpAddr;

use skiff::api::core::v1 as core;
use skiff::api::meta::v1 as meta;
use skiff::names::{
    validate_dns1123_label, validate_dns1123_subdomain, validate_label_key, validate_label_value,
    validate_qualified_name,
};
use skiff::quantity::Quantity;
use skiff::selector::LabelSelector;

use crate::error::FieldViolation;

pub mod dns;
pub mod scheduling;
pub mod security;
mod volumes;

/// Collected violations.
pub type Violations = Vec<FieldViolation>;

/// How a kind's names are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label: a DNS label starting with a letter (services).
    Dns1035Label,
    /// Any path segment: no '/', '%', not "." or ".." (RBAC roles, e.g. "system:node").
    PathSegment,
}

/// The longest grace period or deadline accepted, in seconds (ten years):
/// beyond it, a deadline is not a time a clock holds (and a sum with the
/// present overflows), and "never" is meant anyway.
pub const MAX_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// A violation if `seconds` (at `field`) is past [`MAX_SECONDS`].
pub fn check_max_seconds(seconds: Option<i64>, field: &str, v: &mut Vec<FieldViolation>) {
    if let Some(s) = seconds
        && s > MAX_SECONDS
    {
        v.push(FieldViolation::new(
            field.to_owned(),
            format!("{s}: must be at most {MAX_SECONDS} (ten years)"),
        ));
    }
}

/// Checks a name against a rule.
pub fn check_name(rule: NameRule, name: &str) -> Result<(), String> {
    match rule {
        NameRule::Subdomain => validate_dns1123_subdomain(name),
        NameRule::Label => validate_dns1123_label(name),
        NameRule::Dns1035Label => {
            validate_dns1123_label(name)?;
            if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                return Err("must start with a lower case letter".into());
            }
            Ok(())
        }
        NameRule::PathSegment => {
            if name.is_empty() {
                Err("must not be empty".into())
            } else if name == "." || name == ".." {
                Err("may not be '.' or '..'".into())
            } else if name.contains('/') || name.contains('%') {
                Err("may not contain '/' or '%'".into())
            } else if name.len() > 253 {
                Err("must be no more than 253 characters".into())
            } else {
                Ok(())
            }
        }
    }
}

/// Validates metadata a client may set.
pub fn validate_meta(m: &meta::ObjectMeta, rule: NameRule, v: &mut Violations) {
    if m.name.is_empty() {
        v.push(FieldViolation::new(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if let Err(e) = check_name(rule, &m.name) {
        v.push(FieldViolation::new(
            "metadata.name",
            format!("{:?}: {e}", m.name),
        ));
    }
    validate_labels(&m.labels, "metadata.labels", v);
    let mut total = 0;
    for k in m.annotations.keys() {
        if let Err(e) = validate_qualified_name(k, "annotation key") {
            v.push(FieldViolation::new(format!("metadata.annotations[{k}]"), e));
        }
    }
    for (k, val) in &m.annotations {
        total += k.len() + val.len();
    }
    if total > 256 * 1024 {
        v.push(FieldViolation::new(
            "metadata.annotations",
            "total size must be at most 256 KiB",
        ));
    }
    for (i, o) in m.owner_references.iter().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        for (field, value) in [
            ("apiVersion", &o.api_version),
            ("kind", &o.kind),
            ("name", &o.name),
            ("uid", &o.uid),
        ] {
            if value.is_empty() {
                v.push(FieldViolation::new(format!("{p}.{field}"), "required"));
            }
        }
    }
    if m.owner_references
        .iter()
        .filter(|o| o.controller == Some(true))
        .count()
        > 1
    {
        v.push(FieldViolation::new(
            "metadata.ownerReferences",
            "only one reference may be a controller",
        ));
    }
    for (i, f) in m.finalizers.iter().enumerate() {
        if let Err(e) = validate_qualified_name(f, "finalizer") {
            v.push(FieldViolation::new(format!("metadata.finalizers[{i}]"), e));
        }
    }
}

/// Validates a label map.
pub fn validate_labels(
    labels: &std::collections::BTreeMap<String, String>,
    path: &str,
    v: &mut Violations,
) {
    for (k, val) in labels {
        if let Err(e) = validate_label_key(k) {
            v.push(FieldViolation::new(format!("{path}[{k}]"), e));
        }
        if let Err(e) = validate_label_value(val) {
            v.push(FieldViolation::new(format!("{path}[{k}]"), e));
        }
    }
}

/// Validates a quantity string.
pub fn validate_quantity(path: &str, value: &str, v: &mut Violations) {
    match Quantity::parse(value) {
        Ok(q) if q.milli() < 0 => v.push(FieldViolation::new(path, "must not be negative")),
        Ok(_) => {}
        Err(e) => v.push(FieldViolation::new(path, e.to_string())),
    }
}

/// Validates a map of resource quantities.
pub fn validate_resource_list(
    list: &std::collections::BTreeMap<String, String>,
    path: &str,
    v: &mut Violations,
) {
    for (name, q) in list {
        if name.is_empty() {
            v.push(FieldViolation::new(path, "resource name must not be empty"));
        }
        validate_quantity(&format!("{path}[{name}]"), q, v);
    }
}

/// Validates a port number (1-65535).
pub fn validate_port(path: &str, port: i32, v: &mut Violations) {
    if !(1..=65535).contains(&port) {
        v.push(FieldViolation::new(
            path,
            format!("{port} must be between 1 and 65535"),
        ));
    }
}

/// Validates a protocol (empty means TCP).
pub fn validate_protocol(path: &str, protocol: &str, v: &mut Violations) {
    if !matches!(protocol, "" | "TCP" | "UDP" | "SCTP") {
        v.push(FieldViolation::new(
            path,
            format!("{protocol:?}: must be TCP, UDP or SCTP"),
        ));
    }
}

/// Validates a port given as number or name (Kubernetes' IntOrString).
pub fn validate_port_ref(path: &str, port: &str, allow_empty: bool, v: &mut Violations) {
    if port.is_empty() {
        if !allow_empty {
            v.push(FieldViolation::new(path, "required"));
        }
        return;
    }
    if let Ok(n) = port.parse::<i32>() {
        validate_port(path, n, v);
    } else {
        validate_port_name(path, port, v);
    }
}

/// Validates a port name (IANA service name: at most 15 characters, lower
/// case alphanumerics and '-', with at least one letter).
pub fn validate_port_name(path: &str, name: &str, v: &mut Violations) {
    let ok = name.len() <= 15
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        v.push(FieldViolation::new(
            path,
            format!("{name:?}: a port name has at most 15 lower case letters, digits or '-', with at least one letter"),
        ));
    }
}

/// Validates an IP address.
pub fn validate_ip(path: &str, ip: &str, v: &mut Violations) {
    if ip.parse::<IpAddr>().is_err() {
        v.push(FieldViolation::new(
            path,
            format!("{ip:?} is not an IP address"),
        ));
    }
}

/// Validates a structured label selector; `required` rejects an empty one.
pub fn validate_label_selector(
    sel: Option<&meta::LabelSelector>,
    path: &str,
    required: bool,
    v: &mut Violations,
) {
    match sel {
        None => {
            if required {
                v.push(FieldViolation::new(path, "required"));
            }
        }
        Some(s) => {
            validate_labels(&s.match_labels, &format!("{path}.matchLabels"), v);
            if let Err(e) = LabelSelector::from_proto(s) {
                v.push(FieldViolation::new(
                    format!("{path}.matchExpressions"),
                    e.reason,
                ));
            }
            if required && s.match_labels.is_empty() && s.match_expressions.is_empty() {
                v.push(FieldViolation::new(
                    path,
                    "must select something (empty selectors match every object)",
                ));
            }
        }
    }
}

/// Validates a pod spec at `path` ("spec" or "spec.template.spec").
pub fn validate_pod_spec(spec: Option<&core::PodSpec>, path: &str, v: &mut Violations) {
    let Some(spec) = spec else {
        v.push(FieldViolation::new(path, "required"));
        return;
    };
    if spec.containers.is_empty() {
        v.push(FieldViolation::new(
            format!("{path}.containers"),
            "at least one container is required",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut host_ports = std::collections::BTreeSet::new();
    for (list, field) in [
        (&spec.init_containers, "initContainers"),
        (&spec.containers, "containers"),
    ] {
        for (i, c) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            validate_container(c, &p, field == "initContainers", v);
            if !c.name.is_empty() && !names.insert(c.name.clone()) {
                v.push(FieldViolation::new(
                    format!("{p}.name"),
                    format!("duplicate container name {:?}", c.name),
                ));
            }
            for (j, port) in c.ports.iter().enumerate() {
                if port.host_port != 0 {
                    let proto = if port.protocol.is_empty() {
                        "TCP"
                    } else {
                        &port.protocol
                    };
                    if !host_ports.insert((port.host_port, proto.to_owned())) {
                        v.push(FieldViolation::new(
                            format!("{p}.ports[{j}].hostPort"),
                            format!("host port {}/{proto} is used twice", port.host_port),
                        ));
                    }
                }
            }
        }
    }
    if !matches!(
        spec.restart_policy.as_str(),
        "" | "Always" | "OnFailure" | "Never"
    ) {
        v.push(FieldViolation::new(
            format!("{path}.restartPolicy"),
            format!(
                "{:?}: must be Always, OnFailure or Never",
                spec.restart_policy
            ),
        ));
    }
    if spec.termination_grace_period_seconds.is_some_and(|g| g < 0) {
        v.push(FieldViolation::new(
            format!("{path}.terminationGracePeriodSeconds"),
            "must not be negative",
        ));
    }
    if spec.active_deadline_seconds.is_some_and(|g| g <= 0) {
        v.push(FieldViolation::new(
            format!("{path}.activeDeadlineSeconds"),
            "must be positive",
        ));
    }
    check_max_seconds(
        spec.termination_grace_period_seconds,
        &format!("{path}.terminationGracePeriodSeconds"),
        v,
    );
    check_max_seconds(
        spec.active_deadline_seconds,
        &format!("{path}.activeDeadlineSeconds"),
        v,
    );
    validate_labels(&spec.node_selector, &format!("{path}.nodeSelector"), v);
    if !spec.node_name.is_empty()
        && let Err(e) = validate_dns1123_subdomain(&spec.node_name)
    {
        v.push(FieldViolation::new(format!("{path}.nodeName"), e));
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        match t.operator.as_str() {
            "" | "Equal" => {
                if t.key.is_empty() {
                    v.push(FieldViolation::new(
                        format!("{p}.key"),
                        "required when operator is Equal",
                    ));
                }
            }
            "Exists" => {
                if !t.value.is_empty() {
                    v.push(FieldViolation::new(
                        format!("{p}.value"),
                        "must be empty when operator is Exists",
                    ));
                }
            }
            other => v.push(FieldViolation::new(
                format!("{p}.operator"),
                format!("{other:?}: must be Equal or Exists"),
            )),
        }
        validate_taint_effect(&format!("{p}.effect"), &t.effect, true, v);
        if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
            v.push(FieldViolation::new(
                format!("{p}.tolerationSeconds"),
                "only valid with effect NoExecute",
            ));
        }
    }
    if let Some(na) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
    {
        if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
            if req.node_selector_terms.is_empty() {
                v.push(FieldViolation::new(
                    format!("{path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"),
                    "must have at least one term",
                ));
            }
            for (i, term) in req.node_selector_terms.iter().enumerate() {
                validate_node_selector_term(
                    term,
                    &format!(
                        "{path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]"
                    ),
                    v,
                );
            }
        }
        for (i, pref) in na
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!(
                "{path}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
            );
            if !(1..=100).contains(&pref.weight) {
                v.push(FieldViolation::new(
                    format!("{p}.weight"),
                    "must be between 1 and 100",
                ));
            }
            if let Some(t) = &pref.preference {
                validate_node_selector_term(t, &format!("{p}.preference"), v);
            }
        }
    }
    if !matches!(
        spec.preemption_policy.as_str(),
        "" | "PreemptLowerPriority" | "Never"
    ) {
        v.push(FieldViolation::new(
            format!("{path}.preemptionPolicy"),
            "must be PreemptLowerPriority or Never",
        ));
    }
    if !spec.subdomain.is_empty()
        && let Err(e) = validate_dns1123_label(&spec.subdomain)
    {
        v.push(FieldViolation::new(format!("{path}.subdomain"), e));
    }
    security::validate_pod_security_context(
        spec.security_context.as_ref(),
        &format!("{path}.securityContext"),
        v,
    );
    dns::validate_dns(spec, path, v);
    scheduling::validate_pod_affinity(spec.affinity.as_ref(), &format!("{path}.affinity"), v);
    scheduling::validate_topology_spread(
        &spec.topology_spread_constraints,
        &format!("{path}.topologySpreadConstraints"),
        v,
    );
    if !spec.priority_class_name.is_empty()
        && let Err(e) = validate_dns1123_subdomain(&spec.priority_class_name)
    {
        v.push(FieldViolation::new(format!("{path}.priorityClassName"), e));
    }
    let mut volume_names = std::collections::BTreeSet::new();
    for (i, vol) in spec.volumes.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        if let Err(e) = validate_dns1123_label(&vol.name) {
            v.push(FieldViolation::new(format!("{p}.name"), e));
        }
        if !volume_names.insert(vol.name.clone()) {
            v.push(FieldViolation::new(
                format!("{p}.name"),
                "duplicate volume name",
            ));
        }
        volumes::validate_volume_source(vol, &p, v);
    }
    for list in [&spec.init_containers, &spec.containers] {
        for c in list.iter() {
            for (j, m) in c.volume_mounts.iter().enumerate() {
                let p = format!("{path}.containers[{}].volumeMounts[{j}]", c.name);
                if !volume_names.contains(&m.name) {
                    v.push(FieldViolation::new(
                        format!("{p}.name"),
                        format!("no volume named {:?}", m.name),
                    ));
                }
                volumes::validate_mount(m, &p, v);
            }
        }
    }
}

fn validate_node_selector_term(term: &core::NodeSelectorTerm, path: &str, v: &mut Violations) {
    for (j, r) in term.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{j}]");
        if let Err(e) = validate_label_key(&r.key) {
            v.push(FieldViolation::new(format!("{p}.key"), e));
        }
        validate_node_selector_operator(&p, &r.operator, &r.values, v);
    }
    for (j, r) in term.match_fields.iter().enumerate() {
        let p = format!("{path}.matchFields[{j}]");
        if r.key != "metadata.name" {
            v.push(FieldViolation::new(
                format!("{p}.key"),
                "only metadata.name is supported",
            ));
        }
        validate_node_selector_operator(&p, &r.operator, &r.values, v);
    }
}

fn validate_node_selector_operator(p: &str, op: &str, values: &[String], v: &mut Violations) {
    match op {
        "In" | "NotIn" => {
            if values.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.values"),
                    "required for In and NotIn",
                ));
            }
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.values"),
                    "must be empty for Exists and DoesNotExist",
                ));
            }
        }
        "Gt" | "Lt" => {
            if values.len() != 1 || values.first().is_none_or(|v| v.parse::<i64>().is_err()) {
                v.push(FieldViolation::new(
                    format!("{p}.values"),
                    "must be one integer for Gt and Lt",
                ));
            }
        }
        other => v.push(FieldViolation::new(
            format!("{p}.operator"),
            format!("{other:?}: must be In, NotIn, Exists, DoesNotExist, Gt or Lt"),
        )),
    }
}

/// Validates a taint effect.
pub fn validate_taint_effect(path: &str, effect: &str, allow_empty: bool, v: &mut Violations) {
    let ok = match effect {
        "" => allow_empty,
        "NoSchedule" | "PreferNoSchedule" | "NoExecute" => true,
        _ => false,
    };
    if !ok {
        v.push(FieldViolation::new(
            path,
            format!("{effect:?}: must be NoSchedule, PreferNoSchedule or NoExecute"),
        ));
    }
}

fn validate_container(c: &core::Container, p: &str, init: bool, v: &mut Violations) {
    if let Err(e) = validate_dns1123_label(&c.name) {
        v.push(FieldViolation::new(format!("{p}.name"), e));
    }
    if c.image.trim().is_empty() {
        v.push(FieldViolation::new(format!("{p}.image"), "required"));
    }
    if !matches!(
        c.image_pull_policy.as_str(),
        "" | "Always" | "IfNotPresent" | "Never"
    ) {
        v.push(FieldViolation::new(
            format!("{p}.imagePullPolicy"),
            "must be Always, IfNotPresent or Never",
        ));
    }
    let mut port_names = std::collections::BTreeSet::new();
    for (j, port) in c.ports.iter().enumerate() {
        let pp = format!("{p}.ports[{j}]");
        validate_port(&format!("{pp}.containerPort"), port.container_port, v);
        if port.host_port != 0 {
            validate_port(&format!("{pp}.hostPort"), port.host_port, v);
        }
        validate_protocol(&format!("{pp}.protocol"), &port.protocol, v);
        if !port.name.is_empty() {
            validate_port_name(&format!("{pp}.name"), &port.name, v);
            if !port_names.insert(port.name.clone()) {
                v.push(FieldViolation::new(
                    format!("{pp}.name"),
                    "duplicate port name",
                ));
            }
        }
        if !port.host_ip.is_empty() {
            validate_ip(&format!("{pp}.hostIP"), &port.host_ip, v);
        }
    }
    for (j, e) in c.env.iter().enumerate() {
        if e.name.is_empty() {
            v.push(FieldViolation::new(
                format!("{p}.env[{j}].name"),
                "required",
            ));
        }
        if let Some(from) = &e.value_from {
            if !e.value.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.env[{j}].valueFrom"),
                    "may not be given with value",
                ));
            }
            let n = from.field_ref.is_some() as u8
                + from.secret_key_ref.is_some() as u8
                + from.config_map_key_ref.is_some() as u8
                + from.resource_field_ref.is_some() as u8;
            if n != 1 {
                v.push(FieldViolation::new(
                    format!("{p}.env[{j}].valueFrom"),
                    "exactly one of fieldRef, resourceFieldRef, secretKeyRef or configMapKeyRef \
                     is required",
                ));
            }
            if let Some(r) = &from.resource_field_ref {
                volumes::validate_resource_field_ref(
                    r,
                    &format!("{p}.env[{j}].valueFrom.resourceFieldRef"),
                    false,
                    v,
                );
            }
            for (name, key, field) in [
                from.secret_key_ref
                    .as_ref()
                    .map(|r| (&r.name, &r.key, "secretKeyRef")),
                from.config_map_key_ref
                    .as_ref()
                    .map(|r| (&r.name, &r.key, "configMapKeyRef")),
            ]
            .into_iter()
            .flatten()
            {
                for (value, part) in [(name, "name"), (key, "key")] {
                    if value.is_empty() {
                        v.push(FieldViolation::new(
                            format!("{p}.env[{j}].valueFrom.{field}.{part}"),
                            "required",
                        ));
                    }
                }
            }
            if let Some(f) = &from.field_ref
                && !SUPPORTED_FIELD_REFS.contains(&f.field_path.as_str())
                && !f.field_path.starts_with("metadata.labels[")
                && !f.field_path.starts_with("metadata.annotations[")
            {
                v.push(FieldViolation::new(
                    format!("{p}.env[{j}].valueFrom.fieldRef.fieldPath"),
                    format!(
                        "{:?} is not supported; use one of {}",
                        f.field_path,
                        SUPPORTED_FIELD_REFS.join(", ")
                    ),
                ));
            }
        }
    }
    for (j, from) in c.env_from.iter().enumerate() {
        let refs = [
            from.config_map_ref
                .as_ref()
                .map(|r| (&r.name, "configMapRef")),
            from.secret_ref.as_ref().map(|r| (&r.name, "secretRef")),
        ];
        let given: Vec<_> = refs.into_iter().flatten().collect();
        if given.len() != 1 {
            v.push(FieldViolation::new(
                format!("{p}.envFrom[{j}]"),
                "exactly one of configMapRef or secretRef is required",
            ));
        }
        for (name, field) in given {
            if name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.envFrom[{j}].{field}.name"),
                    "required",
                ));
            }
        }
    }
    if let Some(r) = &c.resources {
        validate_resource_list(&r.limits, &format!("{p}.resources.limits"), v);
        validate_resource_list(&r.requests, &format!("{p}.resources.requests"), v);
        for (name, req) in &r.requests {
            if let (Some(limit), Ok(req)) = (r.limits.get(name), Quantity::parse(req))
                && let Ok(limit) = Quantity::parse(limit)
                && req > limit
            {
                v.push(FieldViolation::new(
                    format!("{p}.resources.requests[{name}]"),
                    "must be less than or equal to the limit",
                ));
            }
        }
    }
    for (probe, name) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        if let Some(probe) = probe {
            if init {
                v.push(FieldViolation::new(
                    format!("{p}.{name}"),
                    "init containers may not have probes",
                ));
            }
            validate_probe(probe, &format!("{p}.{name}"), v);
            check_max_seconds(
                probe.termination_grace_period_seconds,
                &format!("{p}.{name}.terminationGracePeriodSeconds"),
                v,
            );
            if let Some(g) = probe.termination_grace_period_seconds {
                if name == "readinessProbe" {
                    v.push(FieldViolation::new(
                        format!("{p}.{name}.terminationGracePeriodSeconds"),
                        "must not be set for readinessProbes",
                    ));
                } else if g <= 0 {
                    v.push(FieldViolation::new(
                        format!("{p}.{name}.terminationGracePeriodSeconds"),
                        format!("{g}: must be greater than 0"),
                    ));
                }
            }
        }
    }
    if let Some(l) = &c.lifecycle {
        if init {
            v.push(FieldViolation::new(
                format!("{p}.lifecycle"),
                "init containers may not have lifecycle hooks",
            ));
        }
        for (h, name) in [(&l.post_start, "postStart"), (&l.pre_stop, "preStop")] {
            if let Some(h) = h {
                validate_handler(h, &format!("{p}.lifecycle.{name}"), v);
            }
        }
    }
    if !matches!(
        c.termination_message_policy.as_str(),
        "" | "File" | "FallbackToLogsOnError"
    ) {
        v.push(FieldViolation::new(
            format!("{p}.terminationMessagePolicy"),
            format!(
                "Unsupported value: {:?}: supported values: \"File\", \"FallbackToLogsOnError\"",
                c.termination_message_policy
            ),
        ));
    }
    if !c.termination_message_path.is_empty() && !c.termination_message_path.starts_with('/') {
        v.push(FieldViolation::new(
            format!("{p}.terminationMessagePath"),
            "must be an absolute path",
        ));
    }
    security::validate_security_context(
        c.security_context.as_ref(),
        &format!("{p}.securityContext"),
        v,
    );
}

/// Checks a lifecycle hook: exactly one action, each well formed.
fn validate_handler(h: &core::LifecycleHandler, p: &str, v: &mut Violations) {
    let n = h.exec.is_some() as u8
        + h.http_get.is_some() as u8
        + h.tcp_socket.is_some() as u8
        + h.sleep.is_some() as u8;
    if n != 1 {
        v.push(FieldViolation::new(
            p,
            "exactly one of exec, httpGet, tcpSocket or sleep is required",
        ));
    }
    if let Some(e) = &h.exec
        && e.command.is_empty()
    {
        v.push(FieldViolation::new(format!("{p}.exec.command"), "required"));
    }
    if let Some(g) = &h.http_get {
        validate_http_get(g, &format!("{p}.httpGet"), v);
    }
    if let Some(t) = &h.tcp_socket {
        validate_port_ref(&format!("{p}.tcpSocket.port"), &t.port, false, v);
    }
    if let Some(s) = &h.sleep
        && s.seconds <= 0
    {
        v.push(FieldViolation::new(
            format!("{p}.sleep.seconds"),
            format!("{}: must be greater than 0", s.seconds),
        ));
    }
}

/// Checks an HTTP GET action: its port, scheme and header names.
fn validate_http_get(h: &core::HttpGetAction, p: &str, v: &mut Violations) {
    validate_port_ref(&format!("{p}.port"), &h.port, false, v);
    if !matches!(h.scheme.as_str(), "" | "HTTP" | "HTTPS") {
        v.push(FieldViolation::new(
            format!("{p}.scheme"),
            format!(
                "Unsupported value: {:?}: supported values: \"HTTP\", \"HTTPS\"",
                h.scheme
            ),
        ));
    }
    for (i, header) in h.http_headers.iter().enumerate() {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if header.name.is_empty() || !header.name.chars().all(token) {
            v.push(FieldViolation::new(
                format!("{p}.httpHeaders[{i}].name"),
                format!(
                    "{:?}: a valid HTTP header must consist of alphanumeric characters or '-'",
                    header.name
                ),
            ));
        }
    }
}

/// Field paths the downward API gives containers.
pub const SUPPORTED_FIELD_REFS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.hostIP",
];

fn validate_probe(probe: &core::Probe, p: &str, v: &mut Violations) {
    let handlers = probe.exec.is_some() as u8
        + probe.http_get.is_some() as u8
        + probe.tcp_socket.is_some() as u8
        + probe.grpc.is_some() as u8;
    if handlers != 1 {
        v.push(FieldViolation::new(
            p,
            "exactly one of exec, httpGet, tcpSocket or grpc is required",
        ));
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        v.push(FieldViolation::new(format!("{p}.exec.command"), "required"));
    }
    if let Some(h) = &probe.http_get {
        validate_http_get(h, &format!("{p}.httpGet"), v);
    }
    if let Some(g) = &probe.grpc {
        validate_port(&format!("{p}.grpc.port"), g.port, v);
    }
    if let Some(t) = &probe.tcp_socket {
        validate_port_ref(&format!("{p}.tcpSocket.port"), &t.port, false, v);
    }
    for (value, field) in [
        (probe.initial_delay_seconds, "initialDelaySeconds"),
        (probe.timeout_seconds, "timeoutSeconds"),
        (probe.period_seconds, "periodSeconds"),
        (probe.success_threshold, "successThreshold"),
        (probe.failure_threshold, "failureThreshold"),
    ] {
        if value < 0 {
            v.push(FieldViolation::new(
                format!("{p}.{field}"),
                "must not be negative",
            ));
        }
    }
}

/// Validates a pod template against a selector (used by replica sets and deployments).
pub fn validate_template(
    template: Option<&core::PodTemplateSpec>,
    selector: Option<&meta::LabelSelector>,
    path: &str,
    v: &mut Violations,
) {
    validate_template_restart(template, selector, path, &["", "Always"], v);
}

/// The template's labels, its selector match and its pod spec.
fn validate_template_labels(
    template: Option<&core::PodTemplateSpec>,
    selector: Option<&meta::LabelSelector>,
    path: &str,
    v: &mut Violations,
) {
    let Some(t) = template else {
        v.push(FieldViolation::new(path, "required"));
        return;
    };
    let labels = t
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    validate_labels(&labels, &format!("{path}.metadata.labels"), v);
    if let Some(sel) = selector
        && let Ok(sel) = LabelSelector::from_proto(sel)
        && !sel.matches(&labels)
    {
        v.push(FieldViolation::new(
            format!("{path}.metadata.labels"),
            "`selector` does not match template `labels`",
        ));
    }
    validate_pod_spec(t.spec.as_ref(), &format!("{path}.spec"), v);
}

/// Validates a pod template whose pods may restart only as `allowed` says
/// (a job's pods: Never or OnFailure).
pub fn validate_template_restart(
    template: Option<&core::PodTemplateSpec>,
    selector: Option<&meta::LabelSelector>,
    path: &str,
    allowed: &[&str],
    v: &mut Violations,
) {
    validate_template_labels(template, selector, path, v);
    if let Some(spec) = template.and_then(|t| t.spec.as_ref())
        && !allowed.contains(&spec.restart_policy.as_str())
    {
        v.push(FieldViolation::new(
            format!("{path}.spec.restartPolicy"),
            format!(
                "Unsupported value: {:?}: supported values: {}",
                spec.restart_policy,
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
}

/// Validates an int-or-percent value such as "25%" or "1".
pub fn validate_int_or_percent(path: &str, value: &str, v: &mut Violations) {
    if value.is_empty() {
        return;
    }
    let ok = match value.strip_suffix('%') {
        Some(p) => p.parse::<u32>().is_ok_and(|p| p <= 100),
        None => value.parse::<u32>().is_ok(),
    };
    if !ok {
        v.push(FieldViolation::new(
            path,
            format!("{value:?}: must be a non-negative integer or a percentage up to 100%"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec(name: &str, image: &str) -> core::PodSpec {
        core::PodSpec {
            containers: vec![core::Container {
                name: name.into(),
                image: image.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn pod_spec_violations_name_their_fields() {
        let mut v = Vec::new();
        let mut spec = pod_spec("Bad_Name", "");
        spec.restart_policy = "Sometimes".into();
        spec.containers[0].ports.push(core::ContainerPort {
            container_port: 70000,
            protocol: "ICMP".into(),
            ..Default::default()
        });
        spec.containers[0].resources = Some(core::ResourceRequirements {
            requests: [("cpu".to_string(), "lots".to_string())].into(),
            ..Default::default()
        });
        validate_pod_spec(Some(&spec), "spec", &mut v);
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        for f in [
            "spec.containers[0].name",
            "spec.containers[0].image",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].ports[0].protocol",
            "spec.containers[0].resources.requests[cpu]",
            "spec.restartPolicy",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn a_good_pod_spec_has_no_violations() {
        let mut v = Vec::new();
        validate_pod_spec(Some(&pod_spec("web", "busybox")), "spec", &mut v);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(check_name(NameRule::Subdomain, "a.b").is_ok());
        assert!(check_name(NameRule::Label, "a.b").is_err());
        assert!(check_name(NameRule::Dns1035Label, "1abc").is_err());
        assert!(check_name(NameRule::PathSegment, "system:node").is_ok());
        assert!(check_name(NameRule::PathSegment, "a/b").is_err());
    }
}
