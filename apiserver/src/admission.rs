//! Admission: what happens to a valid new object before it is stored, as
//! Kubernetes' admission plugins do — service-account defaulting (pods get
//! `default` and its token), LimitRange defaults and bounds, and
//! ResourceQuota charging with compare-and-swap on the quota's `used`, so
//! that two creates never both take the last slot.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::api::core::v1::{
    EnvVar, EnvVarSource, LimitRange, Pod, ResourceQuota, ResourceQuotaStatus,
    ResourceRequirements, SecretKeySelector, ServiceAccount,
};
use skiff::quantity::Quantity;
use skiff::{KindInfo, Resource};

use crate::error::{ApiError, FieldViolation};
use crate::predicate::Predicate;
use crate::storage::{RangeRequest, Storage};
use crate::store::{ListOptions, ObjectStore, ReadVersion, decode_object};

/// Environment variable pods find their service account's token in.
pub const TOKEN_ENV: &str = "SKIFF_SERVICE_ACCOUNT_TOKEN";

/// Resource amounts by resource name ("pods", "requests.cpu", …).
pub type Usage = BTreeMap<String, Quantity>;

/// What a create took from quotas, to give back if the create fails.
#[derive(Debug, Default)]
pub struct Charge {
    namespace: String,
    usage: Usage,
    quotas: Vec<String>,
}

/// The admission chain of a server.
pub struct Admission {
    accounts: Arc<dyn ObjectStore<ServiceAccount>>,
    limit_ranges: Arc<dyn ObjectStore<LimitRange>>,
    quotas: Arc<dyn ObjectStore<ResourceQuota>>,
    storage: Arc<dyn Storage>,
}

fn list_in(namespace: &str) -> ListOptions {
    ListOptions {
        predicate: Predicate {
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        version: ReadVersion::Any,
        limit: 0,
        continue_token: None,
    }
}

impl Admission {
    /// Admission over these stores.
    pub fn new(
        accounts: Arc<dyn ObjectStore<ServiceAccount>>,
        limit_ranges: Arc<dyn ObjectStore<LimitRange>>,
        quotas: Arc<dyn ObjectStore<ResourceQuota>>,
        storage: Arc<dyn Storage>,
    ) -> Self {
        Self {
            accounts,
            limit_ranges,
            quotas,
            storage,
        }
    }

    /// Mutates and checks a new object of kind `K`, then charges it to the
    /// namespace's quotas; the returned charge is refunded if storing fails.
    pub async fn admit_create<K: Resource + Any>(&self, obj: &mut K) -> Result<Charge, ApiError> {
        let ns = obj.namespace().to_owned();
        if let Some(pod) = (obj as &mut dyn Any).downcast_mut::<Pod>() {
            self.default_service_account(pod).await?;
            self.apply_limit_ranges(pod).await?;
        }
        if let Some(quota) = (obj as &mut dyn Any).downcast_mut::<ResourceQuota>() {
            self.initial_quota_status(quota).await?;
        }
        if ns.is_empty() {
            return Ok(Charge::default());
        }
        let usage = usage_of(obj);
        self.charge(&ns, usage).await
    }

    /// Gives back what a failed create took.
    pub async fn refund(&self, charge: Charge) {
        for q in &charge.quotas {
            if let Err(e) = self.adjust(&charge.namespace, q, &charge.usage, -1).await {
                tracing::warn!(quota = %q, error = %e, "cannot refund a quota charge");
            }
        }
    }

    /// Gives back what a removed object used.
    pub async fn release<K: Resource + Any>(&self, obj: &K) {
        let ns = obj.namespace();
        if ns.is_empty() || (obj as &dyn Any).is::<ResourceQuota>() {
            return;
        }
        let usage = usage_of(obj);
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

    async fn charge(&self, ns: &str, usage: Usage) -> Result<Charge, ApiError> {
        let mut charge = Charge {
            namespace: ns.to_owned(),
            usage,
            quotas: Vec::new(),
        };
        if charge.usage.is_empty() {
            return Ok(charge);
        }
        for q in self.quotas_tracking(ns, &charge.usage).await? {
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
    async fn initial_quota_status(&self, quota: &mut ResourceQuota) -> Result<(), ApiError> {
        let ns = quota.namespace().to_owned();
        let hard_limits = hard(quota);
        let mut used = Usage::new();
        for info in skiff::KINDS.iter().filter(|i| i.namespaced) {
            let names = count_names(info);
            let wants_count = names.iter().any(|n| hard_limits.contains_key(n));
            let is_pod = info.kind == "Pod";
            if !wants_count && !is_pod {
                continue;
            }
            let resp = self
                .storage
                .range(RangeRequest {
                    prefix: crate::keys::prefix(info, Some(&ns)),
                    start_after: String::new(),
                    revision: None,
                    limit: 0,
                })
                .await
                .map_err(|e| ApiError::from_storage(info.kind, &ns, e))?;
            for kv in &resp.kvs {
                let usage = if is_pod {
                    usage_of(&decode_object::<Pod>(&kv.key, &kv.value, kv.mod_revision)?)
                } else {
                    names
                        .iter()
                        .map(|n| (n.clone(), Quantity::from_units(1)))
                        .collect()
                };
                for (k, v) in usage {
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

    /// Pods without a service account run as `default`; they get its token
    /// in [`TOKEN_ENV`] unless automounting is off.
    async fn default_service_account(&self, pod: &mut Pod) -> Result<(), ApiError> {
        let ns = pod.namespace().to_owned();
        let pod_name = pod.name().to_owned();
        let Some(spec) = pod.spec.as_mut() else {
            return Ok(());
        };
        if spec.service_account_name.is_empty() {
            spec.service_account_name = if spec.service_account.is_empty() {
                "default".into()
            } else {
                spec.service_account.clone()
            };
        }
        let name = spec.service_account_name.clone();
        // The cache first (cheap); a miss is confirmed with a consistent read.
        let mut account = self.accounts.get(&ns, &name, ReadVersion::Any).await?;
        if account.is_none() && name != "default" {
            account = self.accounts.get(&ns, &name, ReadVersion::Latest).await?;
        }
        let Some(account) = account else {
            if name == "default" {
                // Made by the service-account controller moments after the namespace.
                return Ok(());
            }
            return Err(ApiError::Forbidden(format!(
                "pod {ns}/{pod_name}: service account {ns}/{name} does not exist \
                 (spec.serviceAccountName); create it first"
            )));
        };
        let automount = spec
            .automount_service_account_token
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        let Some(secret) = account.secrets.first().map(|s| s.name.clone()) else {
            return Ok(());
        };
        if !automount {
            return Ok(());
        }
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut())
        {
            if c.env.iter().any(|e| e.name == TOKEN_ENV) {
                continue;
            }
            c.env.push(EnvVar {
                name: TOKEN_ENV.into(),
                value: String::new(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: "token".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
            });
        }
        Ok(())
    }

    /// Fills containers' missing requests and limits from the namespace's
    /// LimitRanges and checks their minimums and maximums.
    async fn apply_limit_ranges(&self, pod: &mut Pod) -> Result<(), ApiError> {
        let ns = pod.namespace().to_owned();
        let ranges = self
            .limit_ranges
            .list(list_in(&ns))
            .await?
            .into_objects()
            .map_err(|e| ApiError::Internal(format!("decoding a cached list: {e}")))?;
        if ranges.is_empty() {
            return Ok(());
        }
        let pod_name = pod.name().to_owned();
        let Some(spec) = pod.spec.as_mut() else {
            return Ok(());
        };
        let mut violations = Vec::new();
        for range in &ranges {
            let items = range.spec.iter().flat_map(|s| &s.limits);
            for item in items.filter(|i| i.r#type == "Container" || i.r#type.is_empty()) {
                let lists = [
                    ("containers", &mut spec.containers),
                    ("initContainers", &mut spec.init_containers),
                ];
                for (field, containers) in lists {
                    for (i, c) in containers.iter_mut().enumerate() {
                        let r = c
                            .resources
                            .get_or_insert_with(ResourceRequirements::default);
                        for (res, v) in &item.default {
                            r.limits.entry(res.clone()).or_insert_with(|| v.clone());
                        }
                        for (res, v) in &item.default_request {
                            r.requests.entry(res.clone()).or_insert_with(|| v.clone());
                        }
                        // A request defaults to its limit, as in Kubernetes.
                        for (res, v) in r.limits.clone() {
                            r.requests.entry(res).or_insert(v);
                        }
                        let at = |list: &str, res: &str| {
                            format!("spec.{field}[{i}].resources.{list}.{res}")
                        };
                        for (res, max) in &item.max {
                            let Ok(max_q) = Quantity::parse(max) else {
                                continue;
                            };
                            match r.limits.get(res).and_then(|l| Quantity::parse(l).ok()) {
                                Some(l) if l.milli() > max_q.milli() => violations.push(FieldViolation::new(
                                    at("limits", res),
                                    format!("maximum {res} usage per Container is {max} (LimitRange {}), but limit is {}", range.name(), r.limits[res]),
                                )),
                                None => violations.push(FieldViolation::new(
                                    at("limits", res),
                                    format!("maximum {res} usage per Container is {max} (LimitRange {}), but no limit is specified", range.name()),
                                )),
                                _ => {}
                            }
                        }
                        for (res, min) in &item.min {
                            let Ok(min_q) = Quantity::parse(min) else {
                                continue;
                            };
                            match r.requests.get(res).and_then(|l| Quantity::parse(l).ok()) {
                                Some(q) if q.milli() < min_q.milli() => violations.push(FieldViolation::new(
                                    at("requests", res),
                                    format!("minimum {res} usage per Container is {min} (LimitRange {}), but request is {}", range.name(), r.requests[res]),
                                )),
                                None => violations.push(FieldViolation::new(
                                    at("requests", res),
                                    format!("minimum {res} usage per Container is {min} (LimitRange {}), but no request is specified", range.name()),
                                )),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: "Pod".into(),
                name: format!("{ns}/{pod_name}"),
                violations,
            })
        }
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
fn count_names(info: &KindInfo) -> Vec<String> {
    if info.group.is_empty() {
        vec![info.plural.to_owned(), format!("count/{}", info.plural)]
    } else {
        vec![format!("count/{}.{}", info.plural, info.group)]
    }
}

/// What an object counts against quotas.
pub fn usage_of<K: Resource + Any>(obj: &K) -> Usage {
    let mut usage: Usage = count_names(&K::INFO)
        .into_iter()
        .map(|n| (n, Quantity::from_units(1)))
        .collect();
    if let Some(pod) = (obj as &dyn Any).downcast_ref::<Pod>() {
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
    if let Some(svc) = (obj as &dyn Any).downcast_ref::<skiff::api::core::v1::Service>()
        && let Some(spec) = &svc.spec
        && (spec.r#type == "NodePort" || spec.r#type == "LoadBalancer")
    {
        usage.insert(
            "services.nodeports".into(),
            Quantity::from_units(spec.ports.len() as i64),
        );
    }
    usage
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
        use skiff::api::core::v1::{Container, PodSpec};
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
        let u = usage_of(&pod);
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
