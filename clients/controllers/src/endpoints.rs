//! The Endpoints controller: for each Service with a selector, an Endpoints
//! object of the same name listing the ready and not-ready addresses and
//! ports of the pods the selector matches, updated as pods come, go or
//! change readiness.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};
use skiff::selector::LabelSelector;

use crate::Context;
use crate::util::is_ready;

struct Ec {
    ctx: Context,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
}

/// Runs the Endpoints controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let services = ctx.factory.all::<Service>();
    let pods = ctx.factory.all::<Pod>();
    let endpoints = ctx.factory.all::<Endpoints>();
    let svc_store = services.store();
    let by_pod = Trigger::mapped(&pods, move |p: &Pod| {
        svc_store
            .in_namespace(p.namespace())
            .into_iter()
            .filter(|s| selects(s, p))
            .map(|s| ObjectKey::of(&*s))
            .collect()
    });
    let by_endpoints = Trigger::mapped(&endpoints, |e: &Endpoints| vec![ObjectKey::of(e)]);
    let controller = Controller::new(ControllerConfig {
        triggers: vec![by_pod, by_endpoints],
        workers: ctx.config.workers,
        ..ControllerConfig::new(services)
    });
    let ec = Arc::new(Ec {
        ctx,
        pods: pods.store(),
        endpoints: endpoints.store(),
    });
    controller
        .run(
            move |req| {
                let ec = ec.clone();
                async move { ec.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

fn selector(s: &Service) -> Option<LabelSelector> {
    let labels = &s.spec.as_ref()?.selector;
    (!labels.is_empty()).then(|| LabelSelector::from_labels(labels))
}

fn selects(s: &Service, p: &Pod) -> bool {
    selector(s).is_some_and(|sel| sel.matches(&p.meta().labels))
}

/// The container port a service port's target names, in one pod.
fn resolve_port(target: &str, default: i32, pod: &Pod) -> Option<i32> {
    if target.is_empty() {
        return Some(default);
    }
    if let Ok(n) = target.parse::<i32>() {
        return Some(n);
    }
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .find(|p| p.name == target)
        .map(|p| p.container_port)
}

/// The subsets of a service's endpoints: pods grouped by their resolved ports.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let publish_not_ready = spec.publish_not_ready_addresses;
    let mut groups: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let ip = pod
            .status
            .as_ref()
            .map(|s| s.pod_ip.clone())
            .unwrap_or_default();
        if ip.is_empty() || pod.meta().deletion_timestamp.is_some() {
            continue;
        }
        let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let ports: Option<Vec<(String, i32, String)>> = spec
            .ports
            .iter()
            .map(|p| {
                let proto = if p.protocol.is_empty() {
                    "TCP".to_owned()
                } else {
                    p.protocol.clone()
                };
                resolve_port(&p.target_port, p.port, pod).map(|n| (p.name.clone(), n, proto))
            })
            .collect();
        let Some(ports) = ports else { continue };
        // A pod whose subdomain is this service is published under its
        // hostname (HOSTNAME.SVC.NS.svc in DNS), as Kubernetes does.
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| !s.hostname.is_empty() && s.subdomain == svc.name())
            .map(|s| s.hostname.clone())
            .unwrap_or_default();
        let address = EndpointAddress {
            ip,
            hostname,
            node_name: pod
                .spec
                .as_ref()
                .map(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: pod.namespace().to_owned(),
                name: pod.name().to_owned(),
                uid: pod.meta().uid.clone(),
                ..Default::default()
            }),
        };
        let subset = groups
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                addresses: vec![],
                not_ready_addresses: vec![],
                ports: ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: name.clone(),
                        port: *port,
                        protocol: protocol.clone(),
                    })
                    .collect(),
            });
        if is_ready(pod) || publish_not_ready {
            subset.addresses.push(address);
        } else {
            subset.not_ready_addresses.push(address);
        }
    }
    let mut out: Vec<EndpointSubset> = groups.into_values().collect();
    for s in &mut out {
        s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    out
}

impl Ec {
    async fn reconcile(&self, req: Request<Service>) -> Result<Action, Error> {
        let api = self.ctx.client.endpoints(&req.key.namespace);
        let existing = self.endpoints.get(&req.key);
        let Some(svc) = req.object else {
            if existing.is_some() {
                match api.delete(&req.key.name, &DeleteParams::default()).await {
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Action::Done);
        };
        // Services without a selector have hand-made endpoints.
        let Some(sel) = selector(&svc) else {
            return Ok(Action::Done);
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .in_namespace(svc.namespace())
            .into_iter()
            .filter(|p| sel.matches(&p.meta().labels))
            .collect();
        let subsets = subsets(&svc, &pods);
        match existing {
            Some(e) if e.subsets == subsets => Ok(Action::Done),
            Some(e) => {
                let mut updated = (*e).clone();
                updated.subsets = subsets;
                updated.meta_mut().labels = svc.meta().labels.clone();
                match api.update(&updated).await {
                    Ok(_) => Ok(Action::Done),
                    Err(Error::Conflict(_) | Error::NotFound(_)) => {
                        Ok(Action::RequeueAfter(std::time::Duration::from_millis(50)))
                    }
                    Err(e) => Err(e),
                }
            }
            None => {
                let e = Endpoints {
                    metadata: Some(ObjectMeta {
                        name: svc.name().to_owned(),
                        namespace: svc.namespace().to_owned(),
                        labels: svc.meta().labels.clone(),
                        ..Default::default()
                    }),
                    subsets,
                };
                match api.create(&e).await {
                    Ok(_) => Ok(Action::Done),
                    Err(Error::AlreadyExists(_)) => {
                        Ok(Action::RequeueAfter(std::time::Duration::from_millis(50)))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };

    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    ports: vec![ContainerPort {
                        name: port_name.into(),
                        container_port: port,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: "Running".into(),
                pod_ip: ip.into(),
                conditions: vec![PodCondition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
    }

    #[test]
    fn addresses_split_by_readiness_and_ports_resolve_by_name() {
        let svc = Service {
            metadata: None,
            spec: Some(ServiceSpec {
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: "web".into(),
                    ..Default::default()
                }],
                selector: [("app".to_string(), "x".to_string())].into(),
                ..Default::default()
            }),
            status: None,
        };
        let pods = vec![
            pod("a", "127.1.0.3", true, "web", 8080),
            pod("b", "127.1.0.2", false, "web", 8080),
            pod("c", "127.1.0.4", true, "web", 9090),
            pod("no-ip", "", true, "web", 8080),
        ];
        let s = subsets(&svc, &pods);
        assert_eq!(
            s.len(),
            2,
            "pods serving on different ports form different subsets"
        );
        let s8080 = s.iter().find(|s| s.ports[0].port == 8080).unwrap();
        assert_eq!(
            s8080
                .addresses
                .iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>(),
            ["127.1.0.3"]
        );
        assert_eq!(
            s8080
                .not_ready_addresses
                .iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>(),
            ["127.1.0.2"]
        );
        assert_eq!(s8080.ports[0].name, "http");
    }
}
