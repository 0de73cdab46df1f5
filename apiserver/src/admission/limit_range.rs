//! The LimitRanger admission plugin: containers' missing requests and
//! limits are filled from the namespace's LimitRanges and their minimums and
//! maximums checked. Touches only the pod being admitted.

use skiff::Resource;
use skiff::api::core::v1::{Pod, ResourceRequirements};
use skiff::quantity::Quantity;

use super::{Admission, list_in};
use crate::error::{ApiError, FieldViolation};

impl Admission {
    /// Fills containers' missing requests and limits from the namespace's
    /// LimitRanges and checks their minimums and maximums.
    pub async fn apply_limit_ranges(&self, pod: &mut Pod) -> Result<(), ApiError> {
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
                            match r.limits.get(res).and_then(|l| Some((l, Quantity::parse(l).ok()?))) {
                                Some((limit, l)) if l.milli() > max_q.milli() => violations.push(FieldViolation::new(
                                    at("limits", res),
                                    format!("maximum {res} usage per Container is {max} (LimitRange {}), but limit is {limit}", range.name()),
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
                            match r.requests.get(res).and_then(|l| Some((l, Quantity::parse(l).ok()?))) {
                                Some((request, q)) if q.milli() < min_q.milli() => violations.push(FieldViolation::new(
                                    at("requests", res),
                                    format!("minimum {res} usage per Container is {min} (LimitRange {}), but request is {request}", range.name()),
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
