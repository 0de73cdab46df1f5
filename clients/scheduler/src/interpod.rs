//! Placement relative to other pods, as Kubernetes' InterPodAffinity and
//! PodTopologySpread plugins do it: required pod affinity (a domain that
//! already holds a matching pod), required anti-affinity (no such pod in
//! the domain — both the incoming pod's terms and existing pods' terms
//! against it), topology spread constraints with DoNotSchedule (the skew
//! after placing stays within maxSkew), and as scores the preferred
//! (anti-)affinity weights and ScheduleAnyway spreading.
//!
//! A domain is the value of a node label (the term's topology key): every
//! node with the same `topology.kubernetes.io/zone` is one zone. The facts
//! are gathered once per scheduling attempt from the cache; pure afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};

use skiff::Resource;
use skiff::api::core::v1::{Node, Pod, PodAffinityTerm, TopologySpreadConstraint};
use skiff::selector::LabelSelector;

use crate::cache::Cache;
use crate::framework::Reason;

/// Labels of a namespace, for terms with a namespace selector.
pub type NamespaceLabels<'a> = &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>;

/// Which namespaces a term looks in.
enum Namespaces {
    /// Every namespace (an empty namespace selector).
    All,
    /// These, and those whose labels the selector matches.
    Listed(HashSet<String>, Option<LabelSelector>),
}

/// Which pods a term counts.
struct Term {
    topology_key: String,
    selector: LabelSelector,
    namespaces: Namespaces,
}

impl Term {
    fn of(t: &PodAffinityTerm, own_ns: &str) -> Option<Self> {
        let selector = match &t.label_selector {
            Some(s) => LabelSelector::from_proto(s).ok()?,
            // No selector matches no pod.
            None => return None,
        };
        let listed: HashSet<String> = t.namespaces.iter().cloned().collect();
        let namespaces = match &t.namespace_selector {
            Some(sel) if sel.match_labels.is_empty() && sel.match_expressions.is_empty() => {
                Namespaces::All
            }
            Some(sel) => Namespaces::Listed(listed, Some(LabelSelector::from_proto(sel).ok()?)),
            None if listed.is_empty() => Namespaces::Listed([own_ns.to_owned()].into(), None),
            None => Namespaces::Listed(listed, None),
        };
        Some(Self {
            topology_key: t.topology_key.clone(),
            selector,
            namespaces,
        })
    }

    fn matches(&self, p: &Pod, ns_labels: NamespaceLabels<'_>) -> bool {
        let in_namespace = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(set, selector) => {
                set.contains(p.namespace())
                    || selector.as_ref().is_some_and(|sel| {
                        ns_labels(p.namespace()).is_some_and(|l| sel.matches(&l))
                    })
            }
        };
        in_namespace && self.selector.matches(&p.meta().labels)
    }
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.meta().labels.get(key).map(String::as_str)
}

/// One spread constraint with the counts it needs.
#[derive(Debug)]
struct Spread {
    key: String,
    max_skew: i64,
    hard: bool,
    min_domains: usize,
    /// Matching pods per domain, for every domain of an eligible node.
    counts: HashMap<String, i64>,
}

/// What inter-pod rules say about placing one pod.
#[derive(Debug, Default)]
pub struct Constraints {
    /// Required affinity: per term, its key, the domains holding a match,
    /// and whether the pod may start a group (no match anywhere, and it
    /// matches its own term).
    affinity: Vec<(String, HashSet<String>, bool)>,
    /// Required anti-affinity (its own terms and existing pods' terms
    /// against it): key and the domains it must stay out of.
    anti_affinity: Vec<(String, HashSet<String>, bool)>,
    /// Preferred terms: key, signed weight, matching pods per domain.
    preferred: Vec<(String, i64, HashMap<String, i64>)>,
    spread: Vec<Spread>,
}

impl Constraints {
    /// The constraints on `pod` given what `cache` holds; `None` when no
    /// inter-pod rule applies (the common case costs nothing more).
    pub fn of(cache: &Cache, pod: &Pod, ns_labels: NamespaceLabels<'_>) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let affinity = spec.affinity.as_ref();
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let own = pa.is_some() || anti.is_some() || !spec.topology_spread_constraints.is_empty();
        if !own && !cache.has_anti_affinity_pods() {
            return None;
        }
        let ns = pod.namespace();
        let mut c = Self::default();
        // Existing pods whose required anti-affinity rules out this pod:
        // only those pods are looked at (the cache keeps them apart).
        let mut existing = Vec::new();
        for (node, p) in cache.anti_affinity_pods() {
            if p.meta().uid == pod.meta().uid {
                continue;
            }
            let terms = p
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .map(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_slice()
                })
                .unwrap_or(&[]);
            for t in terms {
                if let Some(term) = Term::of(t, p.namespace())
                    && term.matches(pod, ns_labels)
                    && let Some(v) = label(node, &term.topology_key)
                {
                    existing.push((term.topology_key.clone(), [v.to_owned()].into(), true));
                }
            }
        }
        if !own {
            c.anti_affinity = existing;
            return (!c.anti_affinity.is_empty()).then_some(c);
        }
        // The pod's own rules need every placed pod.
        let nodes: Vec<&Node> = cache
            .order()
            .iter()
            .filter_map(|n| cache.node(n)?.node.as_deref())
            .collect();
        let placed: Vec<(&Node, &Pod)> = cache
            .order()
            .iter()
            .filter_map(|n| cache.node(n))
            .filter_map(|info| Some((info.node.as_deref()?, info)))
            .flat_map(|(node, info)| info.pods.values().map(move |e| (node, &*e.pod)))
            .filter(|(_, p)| p.meta().uid != pod.meta().uid)
            .collect();
        let domains_of = |term: &Term| -> HashMap<String, i64> {
            let mut out = HashMap::new();
            for (node, p) in &placed {
                if term.matches(p, ns_labels)
                    && let Some(v) = label(node, &term.topology_key)
                {
                    *out.entry(v.to_owned()).or_default() += 1;
                }
            }
            out
        };
        if let Some(pa) = pa {
            for t in &pa.required_during_scheduling_ignored_during_execution {
                let Some(term) = Term::of(t, ns) else {
                    continue;
                };
                let domains: HashSet<String> = domains_of(&term).into_keys().collect();
                let first_of_group = domains.is_empty() && term.matches(pod, ns_labels);
                c.affinity
                    .push((term.topology_key, domains, first_of_group));
            }
            for w in &pa.preferred_during_scheduling_ignored_during_execution {
                if let Some(term) = w.pod_affinity_term.as_ref().and_then(|t| Term::of(t, ns)) {
                    let counts = domains_of(&term);
                    c.preferred
                        .push((term.topology_key, i64::from(w.weight), counts));
                }
            }
        }
        if let Some(anti) = anti {
            for t in &anti.required_during_scheduling_ignored_during_execution {
                if let Some(term) = Term::of(t, ns) {
                    let domains = domains_of(&term).into_keys().collect();
                    c.anti_affinity.push((term.topology_key, domains, false));
                }
            }
            for w in &anti.preferred_during_scheduling_ignored_during_execution {
                if let Some(term) = w.pod_affinity_term.as_ref().and_then(|t| Term::of(t, ns)) {
                    let counts = domains_of(&term);
                    c.preferred
                        .push((term.topology_key, -i64::from(w.weight), counts));
                }
            }
        }
        // The pod's own terms are named first when both rule a node out.
        c.anti_affinity.extend(existing);
        for t in &spec.topology_spread_constraints {
            c.spread.extend(spread(t, pod, &nodes, &placed));
        }
        Some(c)
    }

    /// Why `node` breaks a required rule (empty: it does not).
    pub fn filter(&self, node: &Node) -> Vec<Reason> {
        let mut out = Vec::new();
        for (key, domains, first) in &self.affinity {
            let ok = match label(node, key) {
                Some(v) => domains.contains(v) || *first,
                None => false,
            };
            if !ok {
                out.push(Reason::PodAffinity);
                break;
            }
        }
        for (key, domains, existing) in &self.anti_affinity {
            if label(node, key).is_some_and(|v| domains.contains(v)) {
                out.push(if *existing {
                    Reason::ExistingPodAntiAffinity
                } else {
                    Reason::PodAntiAffinity
                });
                break;
            }
        }
        for s in self.spread.iter().filter(|s| s.hard) {
            let Some(v) = label(node, &s.key) else {
                out.push(Reason::TopologySpreadMissingLabel);
                break;
            };
            let min = if s.counts.len() < s.min_domains {
                0
            } else {
                s.counts.values().copied().min().unwrap_or(0)
            };
            let here = s.counts.get(v).copied().unwrap_or(0);
            if here + 1 - min > s.max_skew {
                out.push(Reason::TopologySpread);
                break;
            }
        }
        out
    }

    /// Raw scores of `node`: preferred (anti-)affinity (higher is better)
    /// and soft spreading (matching pods in its domains: lower is better).
    pub fn raw_scores(&self, node: &Node) -> (i64, i64) {
        let affinity = self
            .preferred
            .iter()
            .map(|(key, weight, counts)| {
                label(node, key)
                    .and_then(|v| counts.get(v))
                    .map_or(0, |n| weight * n)
            })
            .sum();
        let spread = self
            .spread
            .iter()
            .filter(|s| !s.hard)
            .map(|s| {
                label(node, &s.key)
                    .and_then(|v| s.counts.get(v))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        (affinity, spread)
    }
}

/// The counts of one spread constraint: matching pods per domain over the
/// nodes that count (those the pod's node affinity admits, unless the
/// policy says Ignore; tainted ones only if the policy says Honor and the
/// pod tolerates them… Kubernetes' defaults: affinity Honor, taints Ignore).
fn spread(
    t: &TopologySpreadConstraint,
    pod: &Pod,
    nodes: &[&Node],
    placed: &[(&Node, &Pod)],
) -> Option<Spread> {
    let selector = match &t.label_selector {
        Some(s) => LabelSelector::from_proto(s).ok()?,
        None => return None,
    };
    // matchLabelKeys: the incoming pod's values of those keys also select.
    let extra: Vec<(&String, &String)> = t
        .match_label_keys
        .iter()
        .filter_map(|k| pod.meta().labels.get_key_value(k))
        .collect();
    let honor_affinity = t.node_affinity_policy != "Ignore";
    let honor_taints = t.node_taints_policy == "Honor";
    let eligible = |node: &Node| -> bool {
        (!honor_affinity || crate::framework::affinity_matches(pod, node))
            && (!honor_taints || {
                let tolerations = pod
                    .spec
                    .as_ref()
                    .map(|s| s.tolerations.as_slice())
                    .unwrap_or(&[]);
                node.spec.as_ref().is_none_or(|s| {
                    s.taints.iter().all(|taint| {
                        !(taint.effect == "NoSchedule" || taint.effect == "NoExecute")
                            || tolerations
                                .iter()
                                .any(|tol| crate::framework::tolerates(tol, taint))
                    })
                })
            })
    };
    let mut counts: HashMap<String, i64> = HashMap::new();
    for n in nodes.iter().filter(|n| eligible(n)) {
        if let Some(v) = label(n, &t.topology_key) {
            counts.entry(v.to_owned()).or_default();
        }
    }
    for (node, p) in placed {
        let labels = &p.meta().labels;
        if p.namespace() == pod.namespace()
            && selector.matches(labels)
            && extra.iter().all(|(k, v)| labels.get(*k) == Some(*v))
            && let Some(v) = label(node, &t.topology_key)
            && let Some(n) = counts.get_mut(v)
        {
            *n += 1;
        }
    }
    Some(Spread {
        key: t.topology_key.clone(),
        max_skew: i64::from(t.max_skew.max(1)),
        hard: t.when_unsatisfiable != "ScheduleAnyway",
        min_domains: t.min_domains.map(|m| m.max(1) as usize).unwrap_or(1),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff::api::core::v1::{
        Affinity, NodeCondition, NodeSpec, NodeStatus, PodAntiAffinity, PodSpec,
        WeightedPodAffinityTerm,
    };
    use skiff::api::meta::v1::{LabelSelector as Sel, ObjectMeta};

    use super::*;

    fn node(name: &str, zone: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: [
                    ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                    ("topology.kubernetes.io/zone".to_owned(), zone.to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: vec![NodeCondition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
    }

    fn pod(name: &str, app: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                labels: [("app".to_owned(), app.to_owned())].into(),
                ..Default::default()
            }),
            spec: Some(PodSpec::default()),
            status: None,
        }
    }

    fn selects(app: &str) -> Option<Sel> {
        Some(Sel {
            match_labels: [("app".to_owned(), app.to_owned())].into(),
            match_expressions: vec![],
        })
    }

    fn cache() -> Cache {
        let mut c = Cache::new();
        c.upsert_node(node("a1", "a"));
        c.upsert_node(node("a2", "a"));
        c.upsert_node(node("b1", "b"));
        c
    }

    fn place(c: &mut Cache, p: Pod, node: &str) {
        let mut p = p;
        p.spec.as_mut().unwrap().node_name = node.into();
        c.upsert_pod(Arc::new(p));
    }

    fn no_ns(_: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    #[test]
    fn required_anti_affinity_keeps_pods_apart_both_ways() {
        let mut c = cache();
        let mut web = pod("web-0", "web");
        web.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm {
                    label_selector: selects("web"),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        place(&mut c, web.clone(), "a1");
        let mut next = web.clone();
        next.metadata.as_mut().unwrap().name = "web-1".into();
        next.metadata.as_mut().unwrap().uid = "uid-web-1".into();
        let k = Constraints::of(&c, &next, &no_ns).unwrap();
        assert_eq!(k.filter(&node("a1", "a")), [Reason::PodAntiAffinity]);
        assert!(k.filter(&node("a2", "a")).is_empty());
        // A pod without rules of its own is kept off a1 by web-0's rule.
        let other = pod("other", "web");
        let k = Constraints::of(&c, &other, &no_ns).unwrap();
        assert_eq!(
            k.filter(&node("a1", "a")),
            [Reason::ExistingPodAntiAffinity]
        );
        // …and a pod it does not select is not (no rule applies to it at all).
        let k = Constraints::of(&c, &pod("db", "db"), &no_ns);
        assert!(k.is_none_or(|k| k.filter(&node("a1", "a")).is_empty()));
    }

    #[test]
    fn required_affinity_needs_a_matching_pod_in_the_domain_except_for_the_first() {
        let mut c = cache();
        let mut app = pod("app", "app");
        app.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(skiff::api::core::v1::PodAffinity {
                required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm {
                    label_selector: selects("cache"),
                    topology_key: "topology.kubernetes.io/zone".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let k = Constraints::of(&c, &app, &no_ns).unwrap();
        assert_eq!(
            k.filter(&node("a1", "a")),
            [Reason::PodAffinity],
            "no cache anywhere"
        );
        place(&mut c, pod("cache-0", "cache"), "b1");
        let k = Constraints::of(&c, &app, &no_ns).unwrap();
        assert_eq!(k.filter(&node("a1", "a")), [Reason::PodAffinity]);
        assert!(
            k.filter(&node("b1", "b")).is_empty(),
            "same zone as the cache"
        );
    }

    #[test]
    fn spread_constraints_bound_the_skew_and_soft_ones_score() {
        let mut c = cache();
        place(&mut c, pod("w0", "web"), "a1");
        place(&mut c, pod("w1", "web"), "a2");
        let mut w = pod("w2", "web");
        w.spec.as_mut().unwrap().topology_spread_constraints = vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            label_selector: selects("web"),
            ..Default::default()
        }];
        let k = Constraints::of(&c, &w, &no_ns).unwrap();
        // Zone a has 2, b has 0: a third in a would make the skew 3.
        assert_eq!(k.filter(&node("a1", "a")), [Reason::TopologySpread]);
        assert!(k.filter(&node("b1", "b")).is_empty());
        w.spec.as_mut().unwrap().topology_spread_constraints[0].when_unsatisfiable =
            "ScheduleAnyway".into();
        let k = Constraints::of(&c, &w, &no_ns).unwrap();
        assert!(k.filter(&node("a1", "a")).is_empty(), "soft");
        assert!(k.raw_scores(&node("b1", "b")).1 < k.raw_scores(&node("a1", "a")).1);
        // Preferred anti-affinity scores down the busy domain.
        let mut p = pod("w3", "web");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: Some(PodAffinityTerm {
                            label_selector: selects("web"),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        }),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        });
        let k = Constraints::of(&c, &p, &no_ns).unwrap();
        assert_eq!(k.raw_scores(&node("a1", "a")).0, -100);
        assert_eq!(k.raw_scores(&node("b1", "b")).0, 0);
    }
}
