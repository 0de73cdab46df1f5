//! Kinds defined at run time: a `ResourceDefinition` carries .proto
//! sources; the server compiles them ([`schema`]), refuses updates that
//! break stored objects ([`compat`]), and serves each kind like one of its
//! own — a store with its own watch cache, the generic service with RBAC,
//! quota and audit, selectors, the gRPC methods of a synthesized service
//! ([`grpc`]) and live reflection ([`reflection`]), with the constraints
//! written in the schema enforced ([`validate`]) — with no code per kind:
//! every such kind is [`DynamicObject`]s behind a [`ServedKind`] built
//! from its definition.
//!
//! [`DefinedKinds`] is what is served now; its controller follows the
//! definitions: it serves a definition's kinds and marks it Established,
//! and when a definition is deleted it stops serving them, deletes their
//! objects, then lets the definition go (its finalizer).

pub mod cel;
pub mod compat;
pub mod grpc;
pub mod reflection;
pub mod schema;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, ReflectMessage, Value};
use skiff::api::apiextensions::v1::{ResourceDefinition, ResourceDefinitionCondition};
use skiff::dynamic_object::DynamicObject;
use skiff::{KindInfo, Resource};

use crate::cacher::{Cacher, CacherConfig, feed::Feed};
use crate::error::ApiError;
use crate::object_store::kind::{FieldReader, SchemaRules, ServedKind};
use crate::object_store::predicate::Predicate;
use crate::object_store::{
    ListOptions, ObjectStore, ReadVersion, StorageStore, WatchOptions, WatchStart,
};
use crate::registry::{ApiContext, ResourceServer};
use crate::storage::Storage;
use schema::{CompiledDefinition, KindSchema};

/// The finalizer a definition carries until its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "apiextensions.skiff.dev/cleanup";

/// One kind served from a definition.
pub struct DefinedKind {
    /// Its schema.
    pub schema: KindSchema,
    /// Its facts (for the lifetime of the process: see [`served_kind`]).
    pub info: &'static KindInfo,
    /// The generic service over its objects.
    pub server: Arc<ResourceServer<DynamicObject>>,
    /// The definition it came from.
    pub definition: String,
    /// Its watch cache, if the server caches.
    cacher: Option<Arc<Cacher<DynamicObject>>>,
}

/// What is served at one moment.
#[derive(Default)]
pub struct Served {
    /// Kinds by service name (`acme.v1.WidgetService`).
    pub by_service: HashMap<String, Arc<DefinedKind>>,
    /// Each definition compiled, with the version it was built from.
    pub definitions: HashMap<String, (String, Arc<CompiledDefinition>)>,
}

impl Served {
    /// Every served definition's pool, for reflection.
    pub fn pools(&self) -> impl Iterator<Item = &DescriptorPool> {
        self.definitions.values().map(|(_, c)| &c.pool)
    }
}

/// Where the stores of defined kinds come from.
struct StoreMaker {
    storage: Arc<dyn Storage>,
    feed: Option<Arc<Feed>>,
    config: Option<CacherConfig>,
}

/// The kinds served from definitions, and what builds them.
pub struct DefinedKinds {
    served: RwLock<Arc<Served>>,
    stores: StoreMaker,
    ctx: Arc<ApiContext>,
    definitions: Arc<dyn ObjectStore<ResourceDefinition>>,
}

impl DefinedKinds {
    /// An empty set, building stores over `storage` (cached through `feed`
    /// with `config` when the server caches).
    pub fn new(
        storage: Arc<dyn Storage>,
        feed: Option<Arc<Feed>>,
        config: Option<CacherConfig>,
        ctx: Arc<ApiContext>,
        definitions: Arc<dyn ObjectStore<ResourceDefinition>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            served: RwLock::new(Arc::new(Served::default())),
            stores: StoreMaker {
                storage,
                feed,
                config,
            },
            ctx,
            definitions,
        })
    }

    /// What is served now.
    pub fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The kind served by `service`, if any.
    pub fn by_service(&self, service: &str) -> Option<Arc<DefinedKind>> {
        self.current().by_service.get(service).cloned()
    }

    fn replace(&self, f: impl FnOnce(&mut Served)) {
        let mut guard = self
            .served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Served {
            by_service: guard.by_service.clone(),
            definitions: guard.definitions.clone(),
        };
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// Serves the definitions stored now, then follows changes until
    /// `shutdown`.
    pub async fn load(self: &Arc<Self>) -> Result<(), ApiError> {
        let list = self
            .definitions
            .list(ListOptions {
                predicate: Predicate::everything(),
                version: ReadVersion::Latest,
                limit: 0,
                continue_token: None,
            })
            .await?;
        for d in list.items {
            self.reconcile(d).await;
        }
        Ok(())
    }

    /// Follows the definitions until the server shuts down.
    pub async fn run(self: Arc<Self>) {
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            let watch = self
                .definitions
                .watch(WatchOptions {
                    predicate: Predicate::everything(),
                    start: WatchStart::CurrentState,
                    initial_events_end_bookmark: false,
                    allow_bookmarks: false,
                })
                .await;
            let mut events = match watch {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "resource definitions: cannot watch; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            };
            let mut seen = Vec::new();
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let Some(Ok(event)) = next else { break };
                let Ok((kind, bytes)) = event.into_type_and_object() else {
                    continue;
                };
                let Ok(def) = <ResourceDefinition as prost::Message>::decode(bytes) else {
                    continue;
                };
                if kind == skiff::api::meta::v1::EventType::Deleted as i32 {
                    self.forget(&def.meta().name);
                } else if kind != skiff::api::meta::v1::EventType::Bookmark as i32 {
                    seen.push(def.meta().name.clone());
                    self.reconcile(def).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Brings what is served in line with `def`.
    async fn reconcile(self: &Arc<Self>, def: ResourceDefinition) {
        let name = def.meta().name.clone();
        if def.meta().deletion_timestamp.is_some() {
            self.clean_up(def).await;
            return;
        }
        let version = format!("{}/{}", def.meta().uid, def.meta().generation);
        let already = self
            .current()
            .definitions
            .get(&name)
            .is_some_and(|(v, _)| *v == version);
        if !already {
            let Some(spec) = &def.spec else { return };
            let compiled = match schema::compile(&name, spec) {
                Ok(c) => c,
                Err(v) => {
                    let why = v
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(definition = %name, %why, "resource definition does not compile");
                    self.set_status(&name, false, "InvalidSchema", &why, None)
                        .await;
                    return;
                }
            };
            if let Some(clash) = self.name_clash(&name, &compiled) {
                self.set_status(&name, false, "NameConflict", &clash, None)
                    .await;
                return;
            }
            let compiled = Arc::new(compiled);
            self.serve(&name, version, compiled.clone());
            self.set_status(
                &name,
                true,
                "Established",
                "the kinds are served",
                Some(&compiled),
            )
            .await;
        } else if !is_established(&def)
            && let Some((_, compiled)) = self.current().definitions.get(&name)
        {
            self.set_status(
                &name,
                true,
                "Established",
                "the kinds are served",
                Some(compiled),
            )
            .await;
        }
    }

    /// Why a definition's kinds clash with another definition's, if they do.
    fn name_clash(&self, name: &str, compiled: &CompiledDefinition) -> Option<String> {
        let served = self.current();
        for k in &compiled.kinds {
            let service = k.service.full_name();
            if let Some(other) = served.by_service.get(service)
                && other.definition != name
            {
                return Some(format!(
                    "{service} is served from the definition {:?}",
                    other.definition
                ));
            }
            if let Some(other) = served.by_service.values().find(|o| {
                o.definition != name && o.schema.plural == k.plural && o.schema.group == k.group
            }) {
                return Some(format!(
                    "{}.{} is served from the definition {:?}",
                    k.plural, k.group, other.definition
                ));
            }
            if KindInfo::find(&k.plural).is_some_and(|b| b.group == k.group) {
                return Some(format!("{} is one of the API's own kinds", k.plural));
            }
        }
        None
    }

    /// Serves a compiled definition's kinds (in place of what it served).
    fn serve(&self, name: &str, version: String, compiled: Arc<CompiledDefinition>) {
        let mut kinds = Vec::new();
        for schema in &compiled.kinds {
            kinds.push(Arc::new(self.build(name, schema.clone())));
        }
        let old = self.current();
        let retired: Vec<Arc<DefinedKind>> = old
            .by_service
            .values()
            .filter(|k| k.definition == name)
            .cloned()
            .collect();
        for k in &retired {
            if let (Some(feed), Some(_)) = (&self.stores.feed, &k.cacher)
                && !kinds
                    .iter()
                    .any(|n| n.schema.segment() == k.schema.segment())
            {
                feed.unregister(&k.schema.segment());
            }
        }
        self.replace(|s| {
            s.by_service.retain(|_, k| k.definition != name);
            for k in kinds {
                s.by_service
                    .insert(k.schema.service.full_name().to_owned(), k);
            }
            s.definitions
                .insert(name.to_owned(), (version, compiled.clone()));
        });
        tracing::info!(definition = %name, "serving the kinds of a resource definition");
    }

    /// The store, cache and service of one kind.
    fn build(&self, definition: &str, schema: KindSchema) -> DefinedKind {
        let kind = Arc::new(served_kind(&schema));
        let (store, cacher): (Arc<dyn ObjectStore<DynamicObject>>, _) =
            match (&self.stores.feed, self.stores.config) {
                (Some(feed), Some(config)) => {
                    let c = Arc::new(Cacher::for_kind(feed, config, kind.clone()));
                    (c.clone(), Some(c))
                }
                _ => (
                    Arc::new(StorageStore::for_kind(
                        self.stores.storage.clone(),
                        kind.clone(),
                    )),
                    None,
                ),
            };
        if let Some(admission) = &self.ctx.admission {
            admission.count_kind(crate::registry::service::usage_counter_of::<DynamicObject>(
                kind.info,
            ));
        }
        let info: &'static KindInfo = Box::leak(Box::new(kind.info));
        let server = Arc::new(ResourceServer::for_kind(store, self.ctx.clone(), kind));
        DefinedKind {
            schema,
            info,
            server,
            definition: definition.to_owned(),
            cacher,
        }
    }

    /// Stops serving a deleted definition's kinds.
    fn forget(&self, name: &str) {
        let old = self.current();
        for k in old.by_service.values().filter(|k| k.definition == name) {
            if let (Some(feed), Some(_)) = (&self.stores.feed, &k.cacher) {
                feed.unregister(&k.schema.segment());
            }
        }
        self.replace(|s| {
            s.by_service.retain(|_, k| k.definition != name);
            s.definitions.remove(name);
        });
    }

    /// A definition being deleted: stop serving its kinds, delete their
    /// objects, then drop the finalizer so the definition goes.
    async fn clean_up(&self, def: ResourceDefinition) {
        let name = def.meta().name.clone();
        if !def.meta().finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            return;
        }
        let kinds: Vec<Arc<DefinedKind>> = self
            .current()
            .by_service
            .values()
            .filter(|k| k.definition == name)
            .cloned()
            .collect();
        self.forget(&name);
        // The objects, whether or not the kinds were being served.
        let mut segments: Vec<(String, bool)> = kinds
            .iter()
            .map(|k| (k.schema.segment(), k.schema.namespaced))
            .collect();
        if segments.is_empty()
            && let Some(spec) = &def.spec
        {
            segments = spec
                .kinds
                .iter()
                .map(|k| (format!("{}.{}", k.plural, spec.group), k.scope != "Cluster"))
                .collect();
        }
        for (segment, _) in &segments {
            let prefix = format!("{}{segment}/", crate::object_store::keys::ROOT);
            if let Err(e) = delete_prefix(&*self.stores.storage, &prefix).await {
                tracing::warn!(definition = %name, error = %e, "cannot delete a defined kind's objects; retrying later");
                return;
            }
        }
        for attempt in 0..5 {
            let Ok(Some(mut current)) = self.definitions.get("", &name, ReadVersion::Latest).await
            else {
                return;
            };
            current
                .meta_mut()
                .finalizers
                .retain(|f| f != CLEANUP_FINALIZER);
            let rv = current.resource_version() as i64;
            match self.definitions.update(current, rv).await {
                Ok(updated) => {
                    // Its last finalizer gone, a deleted object goes.
                    if updated.meta().finalizers.is_empty() {
                        let rv = updated.resource_version() as i64;
                        let _ = self.definitions.delete("", &name, Some(rv)).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "resource definition cleanup: retrying");
                }
            }
        }
    }

    /// Writes a definition's conditions (and what it serves).
    async fn set_status(
        &self,
        name: &str,
        established: bool,
        reason: &str,
        message: &str,
        served: Option<&CompiledDefinition>,
    ) {
        for _ in 0..5 {
            let Ok(Some(mut def)) = self.definitions.get("", name, ReadVersion::Latest).await
            else {
                return;
            };
            if def.meta().deletion_timestamp.is_some() {
                return;
            }
            let status = def.status.get_or_insert_with(Default::default);
            let wanted = |t: &str, ok: bool| ResourceDefinitionCondition {
                r#type: t.to_owned(),
                status: if ok { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(crate::registry::now()),
                reason: reason.to_owned(),
                message: message.to_owned(),
            };
            let names_ok = reason != "NameConflict";
            let next = vec![
                wanted("NamesAccepted", names_ok),
                wanted("Established", established),
            ];
            let same = status.conditions.len() == next.len()
                && status.conditions.iter().zip(&next).all(|(a, b)| {
                    a.r#type == b.r#type && a.status == b.status && a.message == b.message
                })
                && served.is_none_or(|c| {
                    c.served_descriptor_set == status.served_descriptor_set
                        && c.service_files == status.service_files
                });
            if same {
                return;
            }
            status.conditions = next;
            if let Some(c) = served {
                status.served_descriptor_set = c.served_descriptor_set.clone();
                status.service_files = c.service_files.clone();
            } else if !established {
                status.served_descriptor_set.clear();
                status.service_files.clear();
            }
            let rv = def.resource_version() as i64;
            if self.definitions.update(def, rv).await.is_ok() {
                return;
            }
        }
    }
}

impl crate::registry::multiplex::MoreKinds for DefinedKinds {
    fn find(
        &self,
        name: &str,
    ) -> Option<(
        &'static KindInfo,
        Arc<dyn crate::registry::multiplex::WatchableKind>,
    )> {
        let served = self.current();
        let kind = served
            .by_service
            .values()
            .find(|k| k.info.message_name == name)
            .or_else(|| {
                let short = name.split('.').next().unwrap_or(name);
                served.by_service.values().find(|k| {
                    k.info.matches(short)
                        && (short == name || name == format!("{}.{}", k.info.plural, k.info.group))
                })
            })?;
        Some((kind.info, kind.server.clone()))
    }
}

fn is_established(def: &ResourceDefinition) -> bool {
    def.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Established" && c.status == "True")
            && !s.served_descriptor_set.is_empty()
    })
}

/// Deletes every key under `prefix`.
async fn delete_prefix(
    storage: &dyn Storage,
    prefix: &str,
) -> Result<(), crate::storage::StorageError> {
    loop {
        let resp = storage
            .range(crate::storage::RangeRequest {
                prefix: prefix.to_owned(),
                start_after: String::new(),
                revision: None,
                limit: 500,
            })
            .await?;
        if resp.kvs.is_empty() {
            return Ok(());
        }
        for kv in &resp.kvs {
            match storage.delete(&kv.key, None).await {
                Ok(_) | Err(crate::storage::StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The kind as the generic layers see it. Its strings live as long as the
/// process (a definition's kinds are built once per generation of it).
pub fn served_kind(schema: &KindSchema) -> ServedKind<DynamicObject> {
    let short: Vec<&'static str> = schema.short_names.iter().cloned().map(leak).collect();
    let info = KindInfo {
        kind: leak(schema.kind.clone()),
        plural: leak(schema.plural.clone()),
        group: leak(schema.group.clone()),
        version: leak(schema.version.clone()),
        api_version: leak(schema.api_version()),
        namespaced: schema.namespaced,
        has_status: schema.status_field.is_some(),
        short_names: Box::leak(short.into_boxed_slice()),
        message_name: leak(schema.message.full_name().to_owned()),
        service_name: leak(schema.service.full_name().to_owned()),
    };
    let selectable: Vec<&'static str> =
        schema.selectable_fields.iter().cloned().map(leak).collect();
    let message = schema.message.clone();
    ServedKind {
        info,
        segment: leak(schema.segment()),
        selectable_fields: Box::leak(selectable.into_boxed_slice()),
        fields: Some(FieldReader::new(move |encoded, path| {
            let m = DynamicMessage::decode(message.clone(), encoded).ok()?;
            field_text(&m, path)
        })),
        rules: Some(Arc::new(StatusField(schema.status_field))),
    }
}

/// The value at a dotted path of a message, as field selectors compare it.
pub fn field_text(message: &DynamicMessage, path: &str) -> Option<String> {
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let desc = current.descriptor();
        let field = desc
            .get_field_by_json_name(part)
            .or_else(|| desc.get_field_by_name(part))?;
        let value = current.get_field(&field).into_owned();
        if i + 1 == parts.len() {
            return Some(match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::I32(n) => n.to_string(),
                Value::I64(n) => n.to_string(),
                Value::U32(n) => n.to_string(),
                Value::U64(n) => n.to_string(),
                Value::F32(n) => n.to_string(),
                Value::F64(n) => n.to_string(),
                Value::EnumNumber(n) => match field.kind() {
                    Kind::Enum(e) => e
                        .get_value(n)
                        .map_or_else(|| n.to_string(), |v| v.name().to_owned()),
                    _ => n.to_string(),
                },
                _ => return None,
            });
        }
        match value {
            Value::Message(m) => current = m,
            _ => return None,
        }
    }
    None
}

/// Status rules of a defined kind: its status is the field numbered so.
struct StatusField(Option<u32>);

impl SchemaRules<DynamicObject> for StatusField {
    fn spec_eq(&self, a: &DynamicObject, b: &DynamicObject) -> bool {
        match self.0 {
            Some(n) => a.body_without(n) == b.body_without(n),
            None => a.body == b.body,
        }
    }

    fn copy_status_from(&self, to: &mut DynamicObject, from: &DynamicObject) {
        if let Some(n) = self.0 {
            to.copy_field_from(from, n);
        }
    }

    fn clear_status(&self, obj: &mut DynamicObject) {
        if let Some(n) = self.0 {
            obj.clear_field(n);
        }
    }
}
