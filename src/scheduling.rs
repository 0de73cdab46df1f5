//! Which nodes a pod may run on, as Kubernetes decides it: tolerations
//! against taints, node selectors and required node affinity. Shared by
//! the scheduler, the node lifecycle controller (evictions) and the daemon
//! set controller (eligible nodes).

use crate::Resource;
use crate::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => t.key.is_empty() || t.key == taint.key,
        _ => t.key == taint.key && t.value == taint.value,
    }
}

/// The node's taints with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    tolerations: &[Toleration],
    node: &'a Node,
    effects: &[&str],
) -> Vec<&'a Taint> {
    node.spec
        .as_ref()
        .map(|s| s.taints.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

/// Whether a node selector requirement holds for a value (`None`: absent).
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !r.values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                r.values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term (label expressions and `metadata.name` fields) holds.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = &node.meta().labels;
    term.match_expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && term.match_fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then(|| node.meta().name.as_str());
            requirement_matches(r, v)
        })
}

/// Whether any term of a node selector holds (a volume's or a pod's node affinity).
pub fn selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// A pod spec's node selector and required node affinity hold for the node.
pub fn affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = &node.meta().labels;
    if !spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(selector) => selector_matches(selector, node),
        None => true,
    }
}
