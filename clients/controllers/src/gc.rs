//! The garbage collector: a graph of owner references over objects of every
//! kind. Objects whose owners are all gone are deleted (background
//! propagation); an owner deleted in the foreground (finalizer
//! `foregroundDeletion`) waits until its dependents are gone; one deleted
//! with `Orphan` (finalizer `orphan`) has its dependents released first.
//! Before deleting anything because an owner seems gone, the collector asks
//! the API server, so a graph that lags never deletes wrongly. Objects of
//! kinds defined at run time (ResourceDefinitions) join the graph from a
//! listing every sweep, so they own and are owned like the API's own kinds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff::api::meta::v1::OwnerReference;
use skiff::client::dynamic::{DynamicClient, DynamicKind};
use skiff::client::{Error, ResourceClient};
use skiff::params::DeleteParams;
use skiff::runtime::{Change, InformerFactory};
use skiff::{KINDS, KindInfo, KindVisitor, Resource, visit_kinds};
use tokio::sync::mpsc;

use crate::Context;

/// How often every object is checked again (and objects of defined kinds
/// listed).
const SWEEP: Duration = Duration::from_secs(10);

/// Finalizer of an owner deleted in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are to be orphaned.
pub const ORPHAN: &str = "orphan";

#[derive(Debug, Clone)]
struct Node {
    uid: String,
    kind: &'static KindInfo,
    namespace: String,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

enum GraphEvent {
    Upsert(Node),
    Remove(String),
    Synced,
}

/// The graph node of an object of a kind defined at run time.
fn dynamic_node(kind: &DynamicKind, obj: &prost_reflect::DynamicMessage) -> Option<Node> {
    let meta = obj.get_field_by_number(1)?;
    let m = meta
        .as_message()?
        .transcode_to::<skiff::api::meta::v1::ObjectMeta>()
        .ok()?;
    Some(Node {
        uid: m.uid,
        kind: kind.info,
        namespace: m.namespace,
        name: m.name,
        owners: m.owner_references,
        deleting: m.deletion_timestamp.is_some(),
        finalizers: m.finalizers,
    })
}

/// Feeds the graph with the objects of kinds defined at run time: there is
/// no informer for them, so they are listed every `every` (objects gone
/// since the last complete listing are removed).
async fn feed_defined(
    dynamic: DynamicClient,
    tx: mpsc::UnboundedSender<GraphEvent>,
    every: Duration,
) {
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        if dynamic.learn_defined_kinds().await.is_ok() {
            let mut now = HashSet::new();
            let mut complete = true;
            for kind in skiff::client::dynamic::defined_kinds() {
                let params = skiff::params::ListParams {
                    resource_version: "0".into(),
                    ..Default::default()
                };
                match dynamic.list_all(&kind, &params).await {
                    Ok((items, _)) => {
                        for n in items.iter().filter_map(|o| dynamic_node(&kind, o)) {
                            now.insert(n.uid.clone());
                            let _ = tx.send(GraphEvent::Upsert(n));
                        }
                    }
                    Err(e) => {
                        tracing::debug!(kind = kind.info.kind, error = %e, "cannot list a defined kind");
                        complete = false;
                    }
                }
            }
            if complete {
                for uid in listed.difference(&now) {
                    let _ = tx.send(GraphEvent::Remove(uid.clone()));
                }
                listed = now;
            } else {
                listed.extend(now);
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The descriptors of `info`'s kind: the API's own, or one defined at run
/// time and still served.
fn dynamic_kind(info: &'static KindInfo) -> Option<DynamicKind> {
    if KindInfo::by_api_version(info.api_version, info.kind).is_some() {
        return Some(DynamicKind::of(info));
    }
    DynamicKind::by_api_version(info.api_version, info.kind)
}

fn node_of<K: Resource>(o: &K) -> Node {
    let m = o.meta();
    Node {
        uid: m.uid.clone(),
        kind: &K::INFO,
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        owners: m.owner_references.clone(),
        deleting: m.deletion_timestamp.is_some(),
        finalizers: m.finalizers.clone(),
    }
}

struct Feeder {
    factory: Arc<InformerFactory>,
    tx: mpsc::UnboundedSender<GraphEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KindVisitor for Feeder {
    fn visit<K: ResourceClient>(&mut self) {
        let informer = self.factory.all::<K>();
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut changes = informer.subscribe();
            let store = informer.store();
            store.wait_until_ready().await;
            for o in store.list() {
                let _ = tx.send(GraphEvent::Upsert(node_of(&*o)));
            }
            let _ = tx.send(GraphEvent::Synced);
            loop {
                match changes.recv().await {
                    Ok(Change::Applied(o)) => {
                        let _ = tx.send(GraphEvent::Upsert(node_of(&*o)));
                    }
                    Ok(Change::Deleted(o)) => {
                        let _ = tx.send(GraphEvent::Remove(o.meta().uid.clone()));
                    }
                    Ok(Change::Resynced)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for o in store.list() {
                            let _ = tx.send(GraphEvent::Upsert(node_of(&*o)));
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, n: Node) {
        if let Some(old) = self.nodes.get(&n.uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(&n.uid);
                }
            }
        }
        for o in &n.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(n.uid.clone());
        }
        self.nodes.insert(n.uid.clone(), n);
    }

    fn remove(&mut self, uid: &str) -> Option<Node> {
        let n = self.nodes.remove(uid)?;
        for o in &n.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(n)
    }

    fn dependents_of(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .map(|d| {
                d.iter()
                    .filter_map(|u| self.nodes.get(u).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Collector {
    dynamic: DynamicClient,
    graph: Graph,
}

/// Runs the garbage collector until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut feeder = Feeder {
        factory: ctx.factory.clone(),
        tx,
        tasks: Vec::new(),
    };
    visit_kinds(&mut feeder);
    feeder.tasks.push(tokio::spawn(feed_defined(
        DynamicClient::new(ctx.client.transport()),
        feeder.tx.clone(),
        SWEEP,
    )));
    let mut gc = Collector {
        dynamic: DynamicClient::new(ctx.client.transport()),
        graph: Graph::default(),
    };
    let mut synced = 0;
    let mut sweep = tokio::time::interval(SWEEP);
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = sweep.tick() => {
                if synced == KINDS.len() {
                    gc.sweep().await;
                }
                continue;
            }
            _ = &mut shutdown => break,
        };
        let Some(event) = event else { break };
        match event {
            GraphEvent::Synced => {
                synced += 1;
                if synced == KINDS.len() {
                    gc.sweep().await;
                }
            }
            GraphEvent::Upsert(n) => {
                let uid = n.uid.clone();
                gc.graph.upsert(n);
                if synced == KINDS.len() {
                    gc.check(&uid).await;
                }
            }
            GraphEvent::Remove(uid) => {
                if let Some(gone) = gc.graph.remove(&uid)
                    && synced == KINDS.len()
                {
                    for d in gc.graph.dependents_of(&uid) {
                        gc.check(&d.uid).await;
                    }
                    // An owner waiting in the foreground may be free now.
                    for o in &gone.owners {
                        gc.check(&o.uid).await;
                    }
                }
            }
        }
    }
    for t in feeder.tasks {
        t.abort();
    }
}

impl Collector {
    async fn sweep(&mut self) {
        let uids: Vec<String> = self.graph.nodes.keys().cloned().collect();
        for uid in uids {
            self.check(&uid).await;
        }
    }

    /// Looks at one object: its owners, and its own deletion.
    async fn check(&mut self, uid: &str) {
        let Some(n) = self.graph.nodes.get(uid).cloned() else {
            return;
        };
        if let Err(e) = self.check_node(&n).await {
            tracing::debug!(kind = n.kind.kind, name = %n.name, error = %e, "garbage collection step failed");
        }
    }

    async fn check_node(&mut self, n: &Node) -> Result<(), Error> {
        if n.deleting && n.finalizers.iter().any(|f| f == ORPHAN) {
            for d in self.graph.dependents_of(&n.uid) {
                self.edit(&d, |v| {
                    if let Some(refs) = v
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| {
                            r.get("uid").and_then(Value::as_str) != Some(n.uid.as_str())
                        });
                    }
                })
                .await?;
            }
            return self.drop_finalizer(n, ORPHAN).await;
        }
        if n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND) {
            let dependents = self.graph.dependents_of(&n.uid);
            if dependents.is_empty() {
                return self.drop_finalizer(n, FOREGROUND).await;
            }
            for d in dependents {
                if !d.deleting {
                    self.delete(&d, "Foreground").await?;
                }
            }
            return Ok(());
        }
        if n.owners.is_empty() || n.deleting {
            return Ok(());
        }
        // Delete only when every owner is gone; an owner merely missing from
        // the graph is checked with the API server.
        for o in &n.owners {
            if self.graph.nodes.contains_key(&o.uid) || self.owner_exists(n, o).await? {
                return Ok(());
            }
        }
        self.delete(n, "Background").await
    }

    async fn owner_exists(&self, n: &Node, o: &OwnerReference) -> Result<bool, Error> {
        let kind = match DynamicKind::by_api_version(&o.api_version, &o.kind) {
            Some(kind) => kind,
            None => {
                // Perhaps a kind defined at run time since last asked.
                self.dynamic.learn_defined_kinds().await?;
                match DynamicKind::by_api_version(&o.api_version, &o.kind) {
                    Some(kind) => kind,
                    // An owner of a kind this server does not serve: leave the dependent alone.
                    None => return Ok(true),
                }
            }
        };
        let ns = if kind.info.namespaced {
            n.namespace.as_str()
        } else {
            ""
        };
        match self.dynamic.get(&kind, ns, &o.name).await {
            Ok(obj) => {
                let v = skiff::manifest::message_value(&obj);
                Ok(v.pointer("/metadata/uid").and_then(Value::as_str) == Some(o.uid.as_str()))
            }
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, n: &Node, policy: &str) -> Result<(), Error> {
        let params = DeleteParams {
            namespace: n.namespace.clone(),
            name: n.name.clone(),
            propagation_policy: policy.to_owned(),
            preconditions: Some(skiff::api::meta::v1::Preconditions {
                uid: n.uid.clone(),
                resource_version: String::new(),
            }),
            grace_period_seconds: None,
        };
        let Some(kind) = dynamic_kind(n.kind) else {
            return Ok(());
        };
        match self.dynamic.delete(&kind, &params).await {
            Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn drop_finalizer(&self, n: &Node, finalizer: &str) -> Result<(), Error> {
        self.edit(n, |v| {
            if let Some(f) = v
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                f.retain(|x| x.as_str() != Some(finalizer));
            }
        })
        .await
    }

    /// Reads an object, changes its JSON, writes it back (retrying conflicts).
    async fn edit(&self, n: &Node, change: impl Fn(&mut Value)) -> Result<(), Error> {
        let Some(kind) = dynamic_kind(n.kind) else {
            return Ok(());
        };
        for _ in 0..5 {
            let obj = match self.dynamic.get(&kind, &n.namespace, &n.name).await {
                Ok(o) => o,
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut v = skiff::manifest::message_value(&obj);
            if v.pointer("/metadata/uid").and_then(Value::as_str) != Some(n.uid.as_str()) {
                return Ok(());
            }
            let before = v.clone();
            change(&mut v);
            if v == before {
                return Ok(());
            }
            let Ok(msg) = skiff::manifest::to_message(&kind.message, v, "garbage collector") else {
                return Ok(());
            };
            match self.dynamic.update(&kind, msg).await {
                Ok(_) | Err(Error::NotFound(_)) => return Ok(()),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, owners: &[&str]) -> Node {
        Node {
            uid: uid.into(),
            kind: &skiff::api::core::v1::Pod::INFO,
            namespace: "ns".into(),
            name: uid.into(),
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    uid: (*o).into(),
                    ..Default::default()
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    #[test]
    fn the_graph_tracks_dependents_through_changes() {
        let mut g = Graph::default();
        g.upsert(node("rs", &["deploy"]));
        g.upsert(node("p1", &["rs"]));
        g.upsert(node("p2", &["rs"]));
        assert_eq!(g.dependents_of("rs").len(), 2);
        // An ownership change moves the edge.
        g.upsert(node("p2", &["other"]));
        assert_eq!(g.dependents_of("rs").len(), 1);
        assert_eq!(g.dependents_of("other").len(), 1);
        g.remove("p1");
        assert!(g.dependents_of("rs").is_empty());
    }
}
