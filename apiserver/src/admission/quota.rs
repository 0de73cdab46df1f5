//! The ResourceQuota admission plugin: every new namespaced object is
//! charged to the quotas of its namespace that track what it uses, with
//! compare-and-swap on the quota's `used` so that two creates never both
//! take the last slot; a failed create is refunded and a removed object
//! released. A new quota starts with what already exists counted. Touches
//! only ResourceQuota objects.

use std::collections::BTreeMap;

use skiff::KindInfo;
use skiff::Resource;
use skiff::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus, Service};
use skiff::quantity::Quantity;

use super::{Admission, list_in};
use crate::error::ApiError;
use crate::object_store::ReadVersion;
use crate::storage::{KeyValue, RangeRequest};

/// Resource amounts by resource name ("pods", "requests.cpu", …).
pub type Usage = BTreeMap<String, Quantity>;

/// What a create took from quotas, to give back if the create fails.
#[derive(Debug, Default)]
pub struct Charge {
    namespace: String,
    usage: Usage,
    quotas: Vec<String>,
}

/// What one stored object of a kind uses, read from its key and value.
pub type CountFn = std::sync::Arc<dyn Fn(&KeyValue) -> Result<Usage, ApiError> + Send + Sync>;

/// How one kind's stored objects count against a new quota.
#[derive(Clone)]
pub struct UsageCounter {
    /// The kind.
    pub info: KindInfo,
    /// Resources beyond its object count that it may use.
    pub resources: &'static [&'static str],
    /// What one stored object uses.
    pub count: CountFn,
}

impl Admission {
    /// Gives back what a failed create took.
    pub async fn refund(&self, charge: Charge) {
        for q in &charge.quotas {
            if let Err(e) = self.adjust(&charge.namespace, q, &charge.usage, -1).await {
                tracing::warn!(quota = %q, error = %e, "cannot refund a quota charge");
            }
        }
    }

    /// Gives back what a removed object in `ns` used.
    pub async fn release(&self, ns: &str, usage: Usage) {
        if ns.is_empty() {
            return;
        }
        let Ok(quotas) = self.quotas_tracking(ns, &usage).await else {
            return;
        };
        for q in quotas {
            if let Err(e) = self.adjust(ns, &q, &usage, -1).await {
                tracing::warn!(quota = %q, error = %e, "cannot release a quota charge");
            }
        }
    }

    async fn quotas_tracking(&self, ns: &str, usage: &Usage) -> Result<Vec<String>, ApiError> {
        let list = self.quotas.list(list_in(ns)).await?;
        Ok(list
            .into_objects()
            .map_err(|e| ApiError::Internal(format!("decoding a cached list: {e}")))?
            .into_iter()
            .filter(|q| hard(q).keys().any(|k| usage.contains_key(k)))
            .map(|q| q.name().to_owned())
            .collect())
    }

    /// The quotas of `ns` that track any of `usage`: those a create using
    /// it would be charged to (none outside a namespace or for no usage).
    pub async fn tracking(&self, ns: &str, usage: &Usage) -> Result<Vec<String>, ApiError> {
        if ns.is_empty() || usage.is_empty() {
            return Ok(Vec::new());
        }
        self.quotas_tracking(ns, usage).await
    }

    /// Charges `usage` to `quotas` of `ns`, as found by [`Self::tracking`]
    /// (a quota deleted since is skipped); the returned charge is refunded
    /// if storing the object fails.
    pub async fn charge_tracked(
        &self,
        ns: &str,
        usage: Usage,
        quotas: Vec<String>,
    ) -> Result<Charge, ApiError> {
        let mut charge = Charge {
            namespace: ns.to_owned(),
            usage,
            quotas: Vec::new(),
        };
        for q in quotas {
            match self.adjust(ns, &q, &charge.usage, 1).await {
                Ok(()) => charge.quotas.push(q),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => {
                    self.refund(charge).await;
                    return Err(e);
                }
            }
        }
        Ok(charge)
    }

    /// Adds (`sign` 1) or subtracts (-1) `usage` to quota `name`'s `used`,
    /// refusing an addition past `hard`; compare-and-swap, retried on conflict.
    async fn adjust(&self, ns: &str, name: &str, usage: &Usage, sign: i32) -> Result<(), ApiError> {
        loop {
            let Some(mut quota) = self.quotas.get(ns, name, ReadVersion::Latest).await? else {
                return Err(ApiError::NotFound {
                    kind: "ResourceQuota".into(),
                    name: format!("{ns}/{name}"),
                });
            };
            let hard_limits: Usage = hard(&quota);
            let status = quota
                .status
                .get_or_insert_with(ResourceQuotaStatus::default);
            let mut changed = false;
            let mut over = Vec::new();
            for (resource, limit) in &hard_limits {
                let Some(amount) = usage.get(resource) else {
                    continue;
                };
                let used = status
                    .used
                    .get(resource)
                    .and_then(|u| Quantity::parse(u).ok())
                    .unwrap_or_default();
                let new = if sign > 0 {
                    used + *amount
                } else {
                    let n = used - *amount;
                    if n.milli() < 0 {
                        Quantity::default()
                    } else {
                        n
                    }
                };
                if sign > 0 && new.milli() > limit.milli() {
                    over.push(format!(
                        "requested: {resource}={}, used: {resource}={}, limited: {resource}={}",
                        format_quantity(resource, *amount),
                        format_quantity(resource, used),
                        format_quantity(resource, *limit)
                    ));
                }
                status
                    .used
                    .insert(resource.clone(), format_quantity(resource, new));
                changed = true;
            }
            if !over.is_empty() {
                return Err(ApiError::ResourceExhausted {
                    message: format!("exceeded quota: {name}, {}", over.join(", ")),
                    retry_after: None,
                });
            }
            if !changed {
                return Ok(());
            }
            status.hard = hard_limits
                .iter()
                .map(|(k, v)| (k.clone(), format_quantity(k, *v)))
                .collect();
            let rv = quota.resource_version() as i64;
            match self.quotas.update(quota, rv).await {
                Ok(_) => return Ok(()),
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Counts what already exists in the namespace when a quota is created.
    pub async fn initial_quota_status(&self, quota: &mut ResourceQuota) -> Result<(), ApiError> {
        let ns = quota.namespace().to_owned();
        let hard_limits = hard(quota);
        let mut used = Usage::new();
        let counters = self
            .counters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for c in counters.iter().filter(|c| c.info.namespaced) {
            let names = count_names(&c.info);
            let wanted = names
                .iter()
                .map(String::as_str)
                .chain(c.resources.iter().copied());
            if !wanted.into_iter().any(|n| hard_limits.contains_key(n)) {
                continue;
            }
            let resp = self
                .storage
                .range(RangeRequest {
                    prefix: crate::object_store::keys::prefix(&c.info, Some(&ns)),
                    start_after: String::new(),
                    revision: None,
                    limit: 0,
                })
                .await
                .map_err(|e| ApiError::from_storage(c.info.kind, &ns, e))?;
            for kv in &resp.kvs {
                for (k, v) in (c.count)(kv)? {
                    if hard_limits.contains_key(&k) {
                        *used.entry(k).or_default() += v;
                    }
                }
            }
        }
        quota.status = Some(ResourceQuotaStatus {
            hard: hard_limits
                .iter()
                .map(|(k, v)| (k.clone(), format_quantity(k, *v)))
                .collect(),
            used: hard_limits
                .keys()
                .map(|k| {
                    let u = used.get(k).copied().unwrap_or_default();
                    (k.clone(), format_quantity(k, u))
                })
                .collect(),
        });
        Ok(())
    }
}

fn hard(quota: &ResourceQuota) -> Usage {
    quota
        .spec
        .iter()
        .flat_map(|s| &s.hard)
        .filter_map(|(k, v)| Quantity::parse(v).ok().map(|q| (k.clone(), q)))
        .collect()
}

/// The object-count names a kind is counted under: `count/<plural>[.<group>]`,
/// and the plain plural for core kinds ("pods", "services", "secrets").
pub fn count_names(info: &KindInfo) -> Vec<String> {
    if info.group.is_empty() {
        vec![info.plural.to_owned(), format!("count/{}", info.plural)]
    } else {
        vec![format!("count/{}.{}", info.plural, info.group)]
    }
}

/// What any object counts against quotas: one of its kind.
pub fn count_usage(info: &KindInfo) -> Usage {
    count_names(info)
        .into_iter()
        .map(|n| (n, Quantity::from_units(1)))
        .collect()
}

/// Resources a pod counts beyond itself.
pub const POD_RESOURCES: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Adds what a pod's containers request and limit.
pub fn add_pod_usage(pod: &Pod, usage: &mut Usage) {
    let mut add = |name: &str, list: &BTreeMap<String, String>| {
        for res in ["cpu", "memory"] {
            if let Some(q) = list.get(res).and_then(|v| Quantity::parse(v).ok()) {
                *usage.entry(format!("{name}.{res}")).or_default() += q;
                if name == "requests" {
                    *usage.entry(res.to_owned()).or_default() += q;
                }
            }
        }
    };
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        if let Some(r) = &c.resources {
            add("requests", &r.requests);
            add("limits", &r.limits);
        }
    }
}

/// Resources a Service counts beyond itself.
pub const SERVICE_RESOURCES: &[&str] = &["services.nodeports"];

/// Adds the node ports a NodePort or LoadBalancer Service takes.
pub fn add_service_usage(svc: &Service, usage: &mut Usage) {
    if let Some(spec) = &svc.spec
        && (spec.r#type == "NodePort" || spec.r#type == "LoadBalancer")
    {
        usage.insert(
            "services.nodeports".into(),
            Quantity::from_units(spec.ports.len() as i64),
        );
    }
}

/// Writes a quantity as Kubernetes does: CPU in millicores when fractional,
/// everything else in whole units.
fn format_quantity(resource: &str, q: Quantity) -> String {
    if q.milli() % 1000 == 0 {
        (q.milli() / 1000).to_string()
    } else if resource.ends_with("cpu") {
        format!("{}m", q.milli())
    } else {
        q.value().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_count_their_requests_and_limits() {
        use skiff::Resource;
        use skiff::api::core::v1::{Container, PodSpec, ResourceRequirements};
        let container = |requests: &[(&str, &str)], limits: &[(&str, &str)]| Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: requests
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                limits: limits
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..Default::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(&[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "1")]),
                    container(&[("cpu", "750m")], &[]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut u = count_usage(&Pod::INFO);
        add_pod_usage(&pod, &mut u);
        assert_eq!(format_quantity("requests.cpu", u["requests.cpu"]), "1");
        assert_eq!(format_quantity("cpu", u["cpu"]), "1");
        assert_eq!(u["requests.memory"].value(), 64 * 1024 * 1024);
        assert_eq!(u["limits.cpu"].value(), 1);
        assert_eq!(u["pods"].value(), 1);
        assert_eq!(u["count/pods"].value(), 1);
        assert_eq!(
            format_quantity("cpu", Quantity::parse("1500m").unwrap()),
            "1500m"
        );
    }
}
