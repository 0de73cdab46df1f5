//! Strategies of the core kinds other than pods.
//!
//! Pure rules on the objects; no I/O (a Service's allocations are its hooks,
//! in [`crate::allocation`]).

use skiff::Resource;
use skiff::api::core::v1::{
    ConfigMap, Endpoints, LimitRange, Namespace, NamespaceSpec, NamespaceStatus, Node,
    ResourceQuota, Secret, Service,
};

use std::sync::Arc;

use futures::future::BoxFuture;

use super::Strategy;
use crate::admission::{Admission, Usage, quota};
use crate::authz::node::NodeAccess;
use crate::error::{ApiError, FieldViolation};
use crate::registry::service::{ApiContext, ObjectHooks};
use crate::registry::validation::{
    NameRule, validate_ip, validate_labels, validate_port, validate_port_ref, validate_protocol,
    validate_resource_list, validate_taint_effect,
};

/// Finalizer the namespace controller removes once a namespace is empty.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Namespaces Kubernetes refuses to delete.
const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

impl Strategy for Namespace {
    const NAME_RULE: NameRule = NameRule::Label;

    fn deletion_forbidden(&self) -> Option<&'static str> {
        UNDELETABLE_NAMESPACES
            .contains(&self.meta().name.as_str())
            .then_some("this namespace may not be deleted")
    }

    fn prepare_for_create(&mut self) {
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        if spec.finalizers.is_empty() {
            spec.finalizers.push(NAMESPACE_FINALIZER.to_owned());
        }
        self.status = Some(NamespaceStatus {
            phase: "Active".into(),
        });
    }

    fn prepare_for_update(&mut self, old: &Self) {
        // Removing spec finalizers is how the namespace controller releases a
        // namespace; nobody may add them back once it is terminating.
        if old.meta().deletion_timestamp.is_some() {
            let old_f = old
                .spec
                .as_ref()
                .map(|s| s.finalizers.clone())
                .unwrap_or_default();
            let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
            spec.finalizers.retain(|f| old_f.contains(f));
        } else if self.spec.as_ref().is_none_or(|s| s.finalizers.is_empty()) {
            self.spec = old.spec.clone();
        }
    }

    fn validate_status(&self) -> Vec<FieldViolation> {
        let phase = self.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        if matches!(phase, "" | "Active" | "Terminating") {
            Vec::new()
        } else {
            vec![FieldViolation::new(
                "status.phase",
                "must be Active or Terminating",
            )]
        }
    }

    fn has_pending_finalizers(&self) -> bool {
        !self.meta().finalizers.is_empty()
            || self.spec.as_ref().is_some_and(|s| !s.finalizers.is_empty())
    }

    fn mark_deleting(&mut self) {
        self.status.get_or_insert_with(Default::default).phase = "Terminating".into();
    }
}

impl Strategy for Node {
    const NODE_ACCESS: NodeAccess = NodeAccess::OwnNode;

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if let Some(spec) = &self.spec {
            for (i, t) in spec.taints.iter().enumerate() {
                if let Err(e) = skiff::names::validate_qualified_name(&t.key, "taint key") {
                    v.push(FieldViolation::new(format!("spec.taints[{i}].key"), e));
                }
                validate_taint_effect(
                    &format!("spec.taints[{i}].effect"),
                    &t.effect,
                    false,
                    &mut v,
                );
            }
            for cidr in spec
                .pod_cidr
                .split(',')
                .filter(|c| !c.is_empty())
                .chain(spec.pod_cidrs.iter().map(String::as_str))
            {
                if !valid_cidr(cidr) {
                    v.push(FieldViolation::new(
                        "spec.podCIDR",
                        format!("{cidr:?} is not a CIDR"),
                    ));
                }
            }
        }
        v.extend(self.validate_status());
        v
    }

    fn validate_status(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if let Some(s) = &self.status {
            validate_resource_list(&s.capacity, "status.capacity", &mut v);
            validate_resource_list(&s.allocatable, "status.allocatable", &mut v);
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
        }
        v
    }
}

/// Whether `s` is an IPv4 or IPv6 CIDR.
pub fn valid_cidr(s: &str) -> bool {
    if s.parse::<skiff::net::Ipv4Cidr>().is_ok() {
        return true;
    }
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    ip.parse::<std::net::Ipv6Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
}

impl Strategy for Service {
    const QUOTA_RESOURCES: &'static [&'static str] = quota::SERVICE_RESOURCES;

    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        ctx.allocator
            .clone()
            .map(|a| a as Arc<dyn ObjectHooks<Self>>)
    }

    fn quota_usage(&self, usage: &mut Usage) {
        quota::add_service_usage(self, usage);
    }

    const NAME_RULE: NameRule = NameRule::Dns1035Label;

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        let headless = spec.cluster_ip == "None";
        if spec.ports.is_empty() && !headless {
            v.push(FieldViolation::new(
                "spec.ports",
                "at least one port is required",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            validate_port(&format!("{path}.port"), p.port, &mut v);
            validate_protocol(&format!("{path}.protocol"), &p.protocol, &mut v);
            validate_port_ref(&format!("{path}.targetPort"), &p.target_port, true, &mut v);
            if spec.ports.len() > 1 && p.name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{path}.name"),
                    "required when a service has several ports",
                ));
            }
            if !p.name.is_empty() && !names.insert(p.name.clone()) {
                v.push(FieldViolation::new(
                    format!("{path}.name"),
                    "duplicate port name",
                ));
            }
            let proto = if p.protocol.is_empty() {
                "TCP"
            } else {
                &p.protocol
            };
            if !seen.insert((p.port, proto.to_owned())) {
                v.push(FieldViolation::new(
                    format!("{path}.port"),
                    "duplicate port and protocol",
                ));
            }
            if p.node_port != 0 {
                validate_port(&format!("{path}.nodePort"), p.node_port, &mut v);
                if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
                    v.push(FieldViolation::new(
                        format!("{path}.nodePort"),
                        "only valid for NodePort and LoadBalancer services",
                    ));
                }
            }
        }
        if !matches!(
            spec.r#type.as_str(),
            "" | "ClusterIP" | "NodePort" | "LoadBalancer"
        ) {
            v.push(FieldViolation::new(
                "spec.type",
                "must be ClusterIP, NodePort or LoadBalancer",
            ));
        }
        if !matches!(spec.session_affinity.as_str(), "" | "None" | "ClientIP") {
            v.push(FieldViolation::new(
                "spec.sessionAffinity",
                "must be None or ClientIP",
            ));
        }
        if let Some(t) = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            && !(1..=86400).contains(&t)
        {
            v.push(FieldViolation::new(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "must be between 1 and 86400",
            ));
        }
        if !spec.cluster_ip.is_empty() && !headless {
            validate_ip("spec.clusterIP", &spec.cluster_ip, &mut v);
        }
        for (i, ip) in spec.external_ips.iter().enumerate() {
            validate_ip(&format!("spec.externalIPs[{i}]"), ip, &mut v);
        }
        validate_labels(&spec.selector, "spec.selector", &mut v);
        v
    }

    fn prepare_for_update(&mut self, old: &Self) {
        // The cluster IP is allocated once; an update that leaves it empty keeps it.
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) {
            if new.cluster_ip.is_empty() {
                new.cluster_ip = old.cluster_ip.clone();
            }
            if new.cluster_ips.is_empty() {
                new.cluster_ips = old.cluster_ips.clone();
            }
            let node_ports = matches!(new.r#type.as_str(), "NodePort" | "LoadBalancer");
            if !node_ports {
                // A service that stops being a NodePort gives its ports back
                // (Kubernetes drops type-dependent fields the same way).
                for p in &mut new.ports {
                    if old
                        .ports
                        .iter()
                        .any(|o| o.node_port == p.node_port && o.port == p.port)
                    {
                        p.node_port = 0;
                    }
                }
            }
            for p in new.ports.iter_mut().filter(|_| node_ports) {
                if p.node_port == 0
                    && let Some(o) = old
                        .ports
                        .iter()
                        .find(|o| o.port == p.port && o.protocol == p.protocol)
                {
                    p.node_port = o.node_port;
                }
            }
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let new_ip = self
            .spec
            .as_ref()
            .map(|s| s.cluster_ip.as_str())
            .unwrap_or("");
        let old_ip = old
            .spec
            .as_ref()
            .map(|s| s.cluster_ip.as_str())
            .unwrap_or("");
        if !old_ip.is_empty() && new_ip != old_ip {
            v.push(FieldViolation::new("spec.clusterIP", "field is immutable"));
        }
        v
    }
}

impl Strategy for Endpoints {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        for (i, s) in self.subsets.iter().enumerate() {
            for (list, name) in [
                (&s.addresses, "addresses"),
                (&s.not_ready_addresses, "notReadyAddresses"),
            ] {
                for (j, a) in list.iter().enumerate() {
                    validate_ip(&format!("subsets[{i}].{name}[{j}].ip"), &a.ip, &mut v);
                }
            }
            for (j, p) in s.ports.iter().enumerate() {
                validate_port(&format!("subsets[{i}].ports[{j}].port"), p.port, &mut v);
                validate_protocol(
                    &format!("subsets[{i}].ports[{j}].protocol"),
                    &p.protocol,
                    &mut v,
                );
            }
        }
        v
    }
}

impl Strategy for Secret {
    const NODE_ACCESS: NodeAccess = NodeAccess::SecretsOfItsPods;

    fn prepare_for_create(&mut self) {
        merge_string_data(self);
    }

    fn prepare_for_update(&mut self, _old: &Self) {
        merge_string_data(self);
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let mut size = 0;
        for (k, val) in &self.data {
            size += val.len();
            if let Some(why) = config_key_violation(k) {
                v.push(FieldViolation::new(format!("data[{k}]"), why));
            }
        }
        if size > 1024 * 1024 {
            v.push(FieldViolation::new(
                "data",
                "must be at most 1 MiB in total",
            ));
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        v.extend(immutable_violations(
            old.immutable,
            self.immutable,
            &[("data", self.data != old.data)],
        ));
        if !old.r#type.is_empty() && self.r#type != old.r#type {
            v.push(FieldViolation::new("type", "field is immutable"));
        }
        v
    }
}

/// What an update of a ConfigMap or Secret whose old state was `immutable`
/// may not do: change any of `changed` (field, whether it changed) or
/// unset `immutable`.
fn immutable_violations(
    old: Option<bool>,
    new: Option<bool>,
    changed: &[(&str, bool)],
) -> Vec<FieldViolation> {
    if old != Some(true) {
        return Vec::new();
    }
    let mut v: Vec<FieldViolation> = changed
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| FieldViolation::new(*field, "field is immutable when `immutable` is set"))
        .collect();
    if new != Some(true) {
        v.push(FieldViolation::new(
            "immutable",
            "may not be unset once set",
        ));
    }
    v
}

/// Kubernetes' rule for a ConfigMap or Secret key, which pods see as a file name.
fn config_key_violation(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.len() > 253 {
        return Some("a valid config key must be 1 to 253 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Some(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name')",
        );
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Some("must not be '.' or '..' nor start with '..'");
    }
    None
}

/// Largest total size of a ConfigMap's data and binaryData, as Kubernetes.
const CONFIG_MAP_MAX_BYTES: usize = 1024 * 1024;

impl Strategy for ConfigMap {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let mut size = 0;
        for (k, val) in &self.data {
            size += k.len() + val.len();
            if let Some(why) = config_key_violation(k) {
                v.push(FieldViolation::new(format!("data[{k}]"), why));
            }
        }
        for (k, val) in &self.binary_data {
            size += k.len() + val.len();
            if let Some(why) = config_key_violation(k) {
                v.push(FieldViolation::new(format!("binaryData[{k}]"), why));
            }
            if self.data.contains_key(k) {
                v.push(FieldViolation::new(
                    format!("binaryData[{k}]"),
                    "duplicate of key present in data",
                ));
            }
        }
        if size > CONFIG_MAP_MAX_BYTES {
            v.push(FieldViolation::new(
                "data",
                format!(
                    "data and binaryData must be at most {CONFIG_MAP_MAX_BYTES} bytes in total"
                ),
            ));
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        v.extend(immutable_violations(
            old.immutable,
            self.immutable,
            &[
                ("data", self.data != old.data),
                ("binaryData", self.binary_data != old.binary_data),
            ],
        ));
        v
    }
}

fn merge_string_data(s: &mut Secret) {
    for (k, val) in std::mem::take(&mut s.string_data) {
        s.data.insert(k, val.into_bytes());
    }
}

impl Strategy for ResourceQuota {
    const RELEASES_QUOTA: bool = false;

    fn admit<'a>(&'a mut self, admission: &'a Admission) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(admission.initial_quota_status(self))
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if let Some(spec) = &self.spec {
            validate_resource_list(&spec.hard, "spec.hard", &mut v);
        }
        v
    }

    fn validate_status(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if let Some(s) = &self.status {
            validate_resource_list(&s.hard, "status.hard", &mut v);
            validate_resource_list(&s.used, "status.used", &mut v);
        }
        v
    }
}

impl Strategy for LimitRange {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        for (i, item) in self.spec.iter().flat_map(|s| &s.limits).enumerate() {
            let at = |f: &str| format!("spec.limits[{i}].{f}");
            if !matches!(item.r#type.as_str(), "Container" | "Pod") {
                v.push(FieldViolation::new(
                    at("type"),
                    format!(
                        "{:?} is not a limit type; use Container or Pod",
                        item.r#type
                    ),
                ));
            }
            validate_resource_list(&item.max, &at("max"), &mut v);
            validate_resource_list(&item.min, &at("min"), &mut v);
            validate_resource_list(&item.default, &at("default"), &mut v);
            validate_resource_list(&item.default_request, &at("defaultRequest"), &mut v);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_recognised() {
        assert!(valid_cidr("127.1.0.0/24"));
        assert!(valid_cidr("fd00::/64"));
        assert!(!valid_cidr("127.1.0.0"));
        assert!(!valid_cidr("127.1.0.0/33"));
    }
}
