//! The one generic service every kind is served by: request semantics of
//! Kubernetes' generic registry (server-set metadata, generate_name,
//! generation, status kept apart from spec, compare-and-swap, finalizers,
//! graceful deletion, namespace existence), over an [`ObjectStore`].
//! Errors are [`ApiError`] until the gRPC boundary, where they become
//! `Status` through its one conversion.
//!
//! Owns the order of a request (authorize, admit, validate, store, hooks);
//! must not hold per-kind rules (they are in [`super::strategy`]) or touch
//! raw storage.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use rand::Rng;
use skiff::api::core::v1::Namespace;
use skiff::params::{DeleteParams, GetParams, ListParams, WatchParams};
use skiff::resource::object_key;
use skiff::server::{ResourceService, WatchStream};
use skiff::wire::ListResponse;
use skiff::{Resource, api};
use tonic::{Request, Status};

use crate::admission::{Charge, Usage, UsageCounter};
use crate::authn::UserInfo;
use crate::authz::rbac::Attributes;
use crate::error::{ApiError, FieldViolation};
use crate::filters::{audit_target, caller};
use crate::object_store::keys;
use crate::object_store::kind::ServedKind;
use crate::object_store::predicate::Predicate;
use crate::object_store::{
    ContinueToken, EventStream, ListOptions, ObjectStore, ReadVersion, WatchOptions, WatchStart,
    decode_object,
};
use crate::registry::multiplex::{KindEvents, WatchableKind};
use crate::registry::strategy::Strategy;
use crate::registry::validation::{check_name, validate_meta};
use skiff::api::meta::v1::WatchCreateRequest;

/// Finalizer of an object deleted with `Foreground` propagation.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of an object deleted with `Orphan` propagation.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Largest object the server stores (etcd's request limit).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// State shared by every kind's service.
pub struct ApiContext {
    /// Namespaces, to refuse objects in missing or terminating namespaces.
    pub namespaces: Arc<dyn ObjectStore<Namespace>>,
    /// Turns true when the server shuts down: long-running streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Connections to kubelets (logs, exec).
    pub kubelets: Arc<crate::kubelet_client::KubeletConnector>,
    /// RBAC; `None` allows every request (authorization off).
    pub authorizer: Option<Arc<crate::authz::rbac::RbacAuthorizer>>,
    /// Pods, for what nodes may read (the secrets their pods use).
    pub pods: Option<Arc<dyn ObjectStore<api::core::v1::Pod>>>,
    /// Admission (service accounts, limit ranges, quotas); `None` for none.
    pub admission: Option<Arc<crate::admission::Admission>>,
    /// Service IPs and node ports; `None` before it exists (bootstrap).
    pub allocator: Option<Arc<crate::allocation::ServiceAllocator>>,
    /// Signs requested service-account tokens; `None`: they cannot be issued.
    pub token_signer: Option<crate::registry::service_account::TokenSigner>,
}

/// What a kind needs beyond its object (Kubernetes' registry hooks):
/// values allocated before an object is stored (a Service's cluster IP)
/// and freed when it goes or its write fails.
#[async_trait::async_trait]
pub trait ObjectHooks<K>: Send + Sync {
    /// Before a new, valid object is stored: allocate and fill in.
    async fn before_create(&self, obj: &mut K) -> Result<(), ApiError>;
    /// The create failed: free what `before_create` took.
    async fn create_failed(&self, obj: &K);
    /// The object is stored.
    async fn created(&self, obj: &K) {
        let _ = obj;
    }
    /// Before a valid update is stored: allocate what `new` adds.
    async fn before_update(&self, new: &mut K, old: &K) -> Result<(), ApiError>;
    /// The update failed: free what `before_update` took.
    async fn update_failed(&self, new: &K, old: &K);
    /// The update is stored: free what `old` had and `new` has not.
    async fn updated(&self, new: &K, old: &K);
    /// The object is gone.
    async fn deleted(&self, obj: &K);
}

/// The generic service of kind `K`.
pub struct ResourceServer<K: Resource> {
    store: Arc<dyn ObjectStore<K>>,
    kind: Arc<ServedKind<K>>,
    pub(crate) ctx: Arc<ApiContext>,
    hooks: Option<Arc<dyn ObjectHooks<K>>>,
}

impl<K: Strategy> ResourceServer<K> {
    /// A service over `store`.
    /// A service over `store`, with the hooks the kind's strategy names.
    pub fn new(store: Arc<dyn ObjectStore<K>>, ctx: Arc<ApiContext>) -> Self {
        Self::for_kind(store, ctx, Arc::new(ServedKind::of_type()))
    }

    /// A service of `kind` over `store` (a kind defined at run time).
    pub fn for_kind(
        store: Arc<dyn ObjectStore<K>>,
        ctx: Arc<ApiContext>,
        kind: Arc<ServedKind<K>>,
    ) -> Self {
        let hooks = K::hooks(&ctx);
        Self {
            store,
            kind,
            ctx,
            hooks,
        }
    }

    /// The kind served.
    pub fn served_kind(&self) -> &Arc<ServedKind<K>> {
        &self.kind
    }

    /// What `obj` counts against quotas: one of its kind, plus what its
    /// strategy adds.
    pub(crate) fn usage_of(&self, obj: &K) -> Usage {
        let mut usage = crate::admission::quota::count_usage(&self.kind.info);
        obj.quota_usage(&mut usage);
        usage
    }

    /// Removes an object from storage, then runs the deletion hook.
    async fn remove(&self, ns: &str, name: &str, rv: Option<i64>) -> Result<K, ApiError> {
        let gone = self.store.delete(ns, name, rv).await?;
        if let Some(h) = &self.hooks {
            h.deleted(&gone).await;
        }
        if let Some(a) = &self.ctx.admission
            && K::RELEASES_QUOTA
        {
            a.release(gone.namespace(), self.usage_of(&gone)).await;
        }
        Ok(gone)
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.kind.info.kind
    }

    /// Authorizes a list or watch of `(namespace, labels, fields, version)`
    /// (the node restriction included) and records its selectors for the audit log.
    async fn authorize_collection(
        &self,
        extensions: &http::Extensions,
        verb: &'static str,
        (namespace, labels, fields, version): (&str, &str, &str, &str),
    ) -> Result<(), ApiError> {
        let ns = if namespace.is_empty() {
            String::new()
        } else {
            self.namespace_of(namespace)
        };
        let user = self.authorize(extensions, verb, "", &ns, "").await?;
        self.restrict_node(&user, verb, &ns, "", fields, None)
            .await?;
        self.audit_request(extensions, labels, fields, version);
        Ok(())
    }

    /// Checks that the caller may do `verb` (on `sub`resource) to `ns/name`,
    /// and records the target for the audit log; returns the caller.
    pub(crate) async fn authorize(
        &self,
        extensions: &http::Extensions,
        verb: &'static str,
        sub: &'static str,
        ns: &str,
        name: &str,
    ) -> Result<Arc<UserInfo>, ApiError> {
        if let Some(t) = audit_target(extensions) {
            t.set(ns, name);
        }
        self.authorize_unaudited(extensions, verb, sub, ns, name)
            .await
    }

    /// As [`Self::authorize`], for calls that act on many objects and
    /// record no single target.
    pub(crate) async fn authorize_unaudited(
        &self,
        extensions: &http::Extensions,
        verb: &'static str,
        sub: &'static str,
        ns: &str,
        name: &str,
    ) -> Result<Arc<UserInfo>, ApiError> {
        let user = caller(extensions);
        if let Some(authz) = &self.ctx.authorizer {
            let attrs = Attributes {
                verb,
                group: self.kind.info.group,
                resource: self.kind.info.plural,
                subresource: sub,
                namespace: ns.to_owned(),
                name: name.to_owned(),
            };
            authz.authorize(&user, &attrs).await?;
        }
        Ok(user)
    }

    /// Narrows what a kubelet may do to its own node, by the kind's
    /// [`NodeAccess`](crate::authz::node::NodeAccess) rule.
    async fn restrict_node(
        &self,
        user: &UserInfo,
        verb: &str,
        ns: &str,
        name: &str,
        field_selector: &str,
        object: Option<&K>,
    ) -> Result<(), ApiError> {
        let Some(node) = user.node_name() else {
            return Ok(());
        };
        if self.ctx.authorizer.is_none() {
            return Ok(());
        }
        let request = crate::authz::node::NodeRequest {
            node,
            verb,
            namespace: ns,
            name,
            field_selector,
        };
        crate::authz::node::check(K::NODE_ACCESS, &request, object, self.ctx.pods.as_deref()).await
    }

    /// The namespace a request means: "default" when a namespaced kind's is
    /// empty, always empty for cluster-scoped kinds.
    pub(crate) fn namespace_of(&self, ns: &str) -> String {
        if !self.kind.info.namespaced {
            String::new()
        } else if ns.is_empty() {
            "default".to_owned()
        } else {
            ns.to_owned()
        }
    }

    pub(crate) fn require_name(&self, name: &str) -> Result<(), ApiError> {
        if name.is_empty() {
            return Err(ApiError::invalid(self.kind(), "", "name", "required"));
        }
        Ok(())
    }

    /// The object a write starts from: the cached one (no wait, possibly
    /// behind) or a consistent read.
    pub(crate) async fn existing(
        &self,
        ns: &str,
        name: &str,
        origin: Origin,
    ) -> Result<K, ApiError> {
        let version = match origin {
            Origin::Cached => ReadVersion::Any,
            Origin::Fresh => ReadVersion::Latest,
        };
        self.store
            .get(ns, name, version)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: self.kind().to_owned(),
                name: object_key(ns, name),
            })
    }

    /// Where a write's first attempt reads its object: the cache, as
    /// Kubernetes' `cachedExistingObject`, unless hooks act on the old
    /// object before the compare-and-swap can tell it was stale.
    fn first_origin(&self) -> Origin {
        if self.hooks.is_none() {
            Origin::Cached
        } else {
            Origin::Fresh
        }
    }

    async fn check_namespace_for_create(&self, ns: &str) -> Result<(), ApiError> {
        if !self.kind.info.namespaced {
            return Ok(());
        }
        crate::admission::namespace_lifecycle::check_create(&*self.ctx.namespaces, self.kind(), ns)
            .await
    }

    /// Runs the kind's admission plugins, then charges the object to its
    /// namespace's quotas; the charge is refunded if storing fails. For a
    /// create of a `named` object (not a generated name) the name is checked
    /// first wherever the create would charge a quota or allocate (hooks),
    /// so that a refusal for a name in use writes nothing.
    async fn admit(&self, obj: &mut K, named: bool) -> Result<Option<Charge>, ApiError> {
        let Some(a) = &self.ctx.admission else {
            if named && self.hooks.is_some() {
                self.refuse_a_name_in_use(obj).await?;
            }
            return Ok(None);
        };
        obj.admit(a).await?;
        let ns = obj.namespace().to_owned();
        let usage = self.usage_of(obj);
        let quotas = a.tracking(&ns, &usage).await?;
        if named && (self.hooks.is_some() || !quotas.is_empty()) {
            self.refuse_a_name_in_use(obj).await?;
        }
        if ns.is_empty() {
            return Ok(Some(Charge::default()));
        }
        Ok(Some(a.charge_tracked(&ns, usage, quotas).await?))
    }

    fn check_size(&self, obj: &K) -> Result<(), ApiError> {
        let len = obj.encoded_len();
        if len > MAX_OBJECT_BYTES {
            return Err(ApiError::ResourceExhausted {
                message: format!(
                    "{} {:?} is {len} bytes; the limit is {MAX_OBJECT_BYTES} bytes",
                    self.kind(),
                    object_key(obj.namespace(), obj.name())
                ),
                retry_after: None,
            });
        }
        Ok(())
    }

    fn invalid_if_any(&self, obj: &K, violations: Vec<FieldViolation>) -> Result<(), ApiError> {
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: self.kind().to_owned(),
                name: object_key(obj.namespace(), obj.name()),
                violations,
            })
        }
    }

    /// Creates an object with Kubernetes' create semantics.
    pub async fn create_object(&self, mut obj: K) -> Result<K, ApiError> {
        let ns = self.namespace_of(obj.namespace());
        let generate = {
            let m = obj.meta_mut();
            m.namespace = ns.clone();
            m.name.is_empty() && !m.generate_name.is_empty()
        };
        {
            let m = obj.meta_mut();
            m.uid = uuid::Uuid::new_v4().to_string();
            m.creation_timestamp = Some(now());
            m.resource_version.clear();
            m.deletion_timestamp = None;
            m.deletion_grace_period_seconds = None;
            m.generation = 1;
        }
        obj.prepare_for_create();
        if self.kind.rules.is_some() {
            // As Kubernetes does for custom resources: a create cannot set
            // the status of a kind defined at run time.
            self.kind.clear_status(&mut obj);
        }
        if generate {
            let prefix = obj.meta().generate_name.clone();
            if let Err(e) = check_name(K::NAME_RULE, &format!("{prefix}x")) {
                return Err(ApiError::invalid(
                    self.kind(),
                    &ns,
                    "metadata.generateName",
                    e,
                ));
            }
            obj.meta_mut().name = generated_name(&prefix);
        }
        let mut violations = Vec::new();
        validate_meta(obj.meta(), K::NAME_RULE, &mut violations);
        violations.extend(obj.validate());
        self.invalid_if_any(&obj, violations)?;
        self.check_size(&obj)?;
        self.check_namespace_for_create(&ns).await?;
        let charge = self.admit(&mut obj, !generate).await?;
        if let Err(e) = self.run_before_create(&mut obj).await {
            if let (Some(a), Some(c)) = (&self.ctx.admission, charge) {
                a.refund(c).await;
            }
            return Err(e);
        }
        let mut charge = charge;
        // The object is needed again only to retry a generated name or to
        // tell the hooks of a failure; otherwise it moves into the store.
        let keep = generate || self.hooks.is_some();
        // A generated name may collide; try a few others, as Kubernetes' clients do.
        let mut attempts = 0;
        loop {
            let attempt = if keep {
                obj.clone()
            } else {
                std::mem::take(&mut obj)
            };
            match self.store.create(attempt).await {
                Err(ApiError::AlreadyExists { .. }) if generate && attempts < 5 => {
                    attempts += 1;
                    let prefix = obj.meta().generate_name.clone();
                    obj.meta_mut().name = generated_name(&prefix);
                }
                Err(e) => {
                    if let Some(h) = &self.hooks {
                        h.create_failed(&obj).await;
                    }
                    if let (Some(a), Some(c)) = (&self.ctx.admission, charge.take()) {
                        a.refund(c).await;
                    }
                    return Err(e);
                }
                Ok(created) => {
                    if let Some(h) = &self.hooks {
                        h.created(&created).await;
                    }
                    return Ok(created);
                }
            }
        }
    }

    /// Refuses a create whose name is in use, before anything is allocated
    /// (a Service's cluster IP) or charged (a quota). A consistent read: a
    /// name deleted just before is free. (The store still decides a race
    /// between two creates.)
    async fn refuse_a_name_in_use(&self, obj: &K) -> Result<(), ApiError> {
        let (ns, name) = (obj.namespace(), obj.name());
        match self.store.get(ns, name, ReadVersion::Latest).await? {
            Some(_) => Err(ApiError::AlreadyExists {
                kind: self.kind().to_owned(),
                name: object_key(ns, name),
            }),
            None => Ok(()),
        }
    }

    async fn run_before_create(&self, obj: &mut K) -> Result<(), ApiError> {
        if let Some(h) = &self.hooks {
            h.before_create(obj).await?;
        }
        Ok(())
    }

    /// Reads, changes and writes an object until the write is not
    /// concurrent with another; `change` returning `None` means no change.
    /// The first read may come from the cache; whatever it leads to short
    /// of a successful write is tried again on a consistent read.
    pub async fn guaranteed_update(
        &self,
        ns: &str,
        name: &str,
        mut change: impl FnMut(&K) -> Result<Option<K>, ApiError> + Send,
    ) -> Result<K, ApiError> {
        let mut origin = self.first_origin();
        loop {
            let attempt = async {
                let old = self.existing(ns, name, origin).await?;
                let Some(new) = change(&old)? else {
                    return Ok(Attempt::Unchanged(old));
                };
                self.check_size(&new)?;
                written(self.store.update(new, old.resource_version() as i64).await)
            }
            .await;
            if let Some(result) = settle(attempt, &mut origin, true) {
                return result;
            }
        }
    }

    async fn update_object(&self, obj: K, status_only: bool) -> Result<K, ApiError> {
        let ns = self.namespace_of(obj.namespace());
        let name = obj.name().to_owned();
        self.require_name(&name)
            .map_err(|_| ApiError::invalid(self.kind(), &ns, "metadata.name", "required"))?;
        let requested: Option<u64> = match obj.meta().resource_version.as_str() {
            "" => None,
            rv => Some(rv.parse().map_err(|_| {
                ApiError::invalid(
                    self.kind(),
                    &object_key(&ns, &name),
                    "metadata.resourceVersion",
                    format!("{rv:?} is not a resource version"),
                )
            })?),
        };
        let mut origin = self.first_origin();
        loop {
            let attempt = self
                .update_attempt(&obj, &ns, &name, requested, status_only, origin)
                .await;
            // A lost compare-and-swap is retried only for unconditional updates.
            if let Some(result) = settle(attempt, &mut origin, requested.is_none()) {
                return result;
            }
        }
    }

    /// One try of an update, from the object as `origin` holds it.
    async fn update_attempt(
        &self,
        obj: &K,
        ns: &str,
        name: &str,
        requested: Option<u64>,
        status_only: bool,
        origin: Origin,
    ) -> Result<Attempt<K>, ApiError> {
        let old = self.existing(ns, name, origin).await?;
        if let Some(rv) = requested
            && rv != old.resource_version()
        {
            return Err(ApiError::Conflict {
                kind: self.kind().to_owned(),
                name: object_key(ns, name),
                reason: format!(
                    "the object has been modified (resource version {rv} is stale, current is {}); read it again and retry",
                    old.resource_version()
                ),
            });
        }
        let mut new = if status_only {
            let mut n = old.clone();
            self.kind.copy_status_from(&mut n, obj);
            self.invalid_if_any(&n, n.validate_status())?;
            n
        } else {
            let mut n = obj.clone();
            n.meta_mut().namespace = ns.to_owned();
            self.kind.copy_status_from(&mut n, &old);
            let mut violations = Vec::new();
            {
                let om = old.meta();
                let m = n.meta_mut();
                if !m.uid.is_empty() && m.uid != om.uid {
                    violations.push(FieldViolation::new("metadata.uid", "field is immutable"));
                }
                m.uid = om.uid.clone();
                m.creation_timestamp = om.creation_timestamp;
                m.deletion_timestamp = om.deletion_timestamp;
                m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
                m.generation = om.generation;
            }
            n.prepare_for_update(&old);
            if !self.kind.spec_eq(&n, &old) {
                n.meta_mut().generation = old.meta().generation + 1;
            }
            validate_meta(n.meta(), K::NAME_RULE, &mut violations);
            violations.extend(n.validate_update(&old));
            self.invalid_if_any(&n, violations)?;
            n
        };
        new.meta_mut().resource_version = old.meta().resource_version.clone();
        if new == old {
            return Ok(Attempt::Unchanged(old));
        }
        self.check_size(&new)?;
        let old_rv = old.resource_version() as i64;
        // An object in its graceful period (a terminating pod) stays until
        // its owner finishes the deletion, whatever updates meanwhile (the
        // kubelet's status reports, say), as Kubernetes' ShouldDeleteDuringUpdate.
        let graceful = new
            .meta()
            .deletion_grace_period_seconds
            .is_some_and(|g| g > 0);
        if new.meta().deletion_timestamp.is_some() && !new.has_pending_finalizers() && !graceful {
            // The last finalizer is gone: the object goes.
            return written(self.remove(ns, name, Some(old_rv)).await);
        }
        match (&self.hooks, status_only) {
            (Some(h), false) => {
                h.before_update(&mut new, &old).await?;
                let result = self.store.update(new.clone(), old_rv).await;
                match &result {
                    Ok(stored) => h.updated(stored, &old).await,
                    Err(_) => h.update_failed(&new, &old).await,
                }
                written(result)
            }
            _ => written(self.store.update(new, old_rv).await),
        }
    }

    async fn delete_object(&self, p: DeleteParams) -> Result<K, ApiError> {
        let ns = self.namespace_of(&p.namespace);
        self.require_name(&p.name)?;
        let key = object_key(&ns, &p.name);
        if !matches!(
            p.propagation_policy.as_str(),
            "" | "Background" | "Foreground" | "Orphan"
        ) {
            return Err(ApiError::invalid(
                self.kind(),
                &key,
                "propagation_policy",
                format!(
                    "{:?}: must be Background, Foreground or Orphan",
                    p.propagation_policy
                ),
            ));
        }
        if p.grace_period_seconds.is_some_and(|g| g < 0) {
            return Err(ApiError::invalid(
                self.kind(),
                &key,
                "grace_period_seconds",
                "must not be negative",
            ));
        }
        if let Some(g) = p
            .grace_period_seconds
            .filter(|g| *g > crate::registry::validation::MAX_SECONDS)
        {
            return Err(ApiError::invalid(
                self.kind(),
                &key,
                "grace_period_seconds",
                format!(
                    "{g}: must be at most {} (ten years)",
                    crate::registry::validation::MAX_SECONDS
                ),
            ));
        }
        let precondition_rv: Option<u64> = match p
            .preconditions
            .as_ref()
            .map(|c| c.resource_version.as_str())
        {
            None | Some("") => None,
            Some(rv) => Some(rv.parse().map_err(|_| {
                ApiError::invalid(
                    self.kind(),
                    &key,
                    "preconditions.resource_version",
                    "not a resource version",
                )
            })?),
        };
        let mut origin = self.first_origin();
        loop {
            let attempt = self
                .delete_attempt(&p, &ns, &key, precondition_rv, origin)
                .await;
            if let Some(result) = settle(attempt, &mut origin, precondition_rv.is_none()) {
                return result;
            }
        }
    }

    /// One try of a delete, from the object as `origin` holds it.
    async fn delete_attempt(
        &self,
        p: &DeleteParams,
        ns: &str,
        key: &str,
        precondition_rv: Option<u64>,
        origin: Origin,
    ) -> Result<Attempt<K>, ApiError> {
        let old = self.existing(ns, &p.name, origin).await?;
        if let Some(why) = old.deletion_forbidden() {
            return Err(ApiError::Forbidden(format!(
                "{} {key:?} is forbidden: {why}",
                self.kind.info.plural
            )));
        }
        if let Some(c) = &p.preconditions {
            if !c.uid.is_empty() && c.uid != old.meta().uid {
                return Err(ApiError::Conflict {
                    kind: self.kind().to_owned(),
                    name: key.to_owned(),
                    reason: format!(
                        "precondition failed: uid is {}, not {}",
                        old.meta().uid,
                        c.uid
                    ),
                });
            }
            if let Some(rv) = precondition_rv
                && rv != old.resource_version()
            {
                return Err(ApiError::Conflict {
                    kind: self.kind().to_owned(),
                    name: key.to_owned(),
                    reason: format!(
                        "precondition failed: resource version is {}, not {rv}",
                        old.resource_version()
                    ),
                });
            }
        }
        let old_rv = old.resource_version() as i64;
        let grace = old.graceful_delete_seconds(p.grace_period_seconds);
        // Foreground and Orphan propagation are carried out by the garbage
        // collector, through these finalizers (as in Kubernetes).
        let propagation = match p.propagation_policy.as_str() {
            "Foreground" => Some(FOREGROUND_FINALIZER),
            "Orphan" => Some(ORPHAN_FINALIZER),
            _ => None,
        };
        if let Some(f) = propagation
            && old.meta().deletion_timestamp.is_none()
            && !old.meta().finalizers.iter().any(|x| x == f)
        {
            let mut new = old.clone();
            new.meta_mut().finalizers.push(f.to_owned());
            let grace = grace.unwrap_or(0);
            {
                let m = new.meta_mut();
                m.deletion_timestamp = Some(timestamp_after(Duration::from_secs(grace as u64)));
                m.deletion_grace_period_seconds = Some(grace);
            }
            new.mark_deleting();
            return written(self.store.update(new, old_rv).await);
        }
        let pending = old.has_pending_finalizers();
        if old.meta().deletion_timestamp.is_some() {
            // Already being deleted: finish it if nothing remains to wait for.
            let in_grace = old
                .meta()
                .deletion_grace_period_seconds
                .is_some_and(|g| g > 0);
            if pending && grace.is_none() && in_grace {
                // Its graceful period is over (a delete without one, as the
                // kubelet sends when the pod has stopped); the object goes
                // when its last finalizer does.
                let mut new = old.clone();
                {
                    let m = new.meta_mut();
                    m.deletion_timestamp = Some(timestamp_after(Duration::ZERO));
                    m.deletion_grace_period_seconds = Some(0);
                }
                return written(self.store.update(new, old_rv).await);
            }
            if pending || grace.is_some() {
                return Ok(Attempt::Unchanged(old));
            }
            return written(self.remove(ns, &p.name, Some(old_rv)).await);
        }
        if pending || grace.is_some() {
            let mut new = old.clone();
            let grace = grace.unwrap_or(0);
            {
                let m = new.meta_mut();
                m.deletion_timestamp = Some(timestamp_after(Duration::from_secs(grace as u64)));
                m.deletion_grace_period_seconds = Some(grace);
            }
            new.mark_deleting();
            return written(self.store.update(new, old_rv).await);
        }
        written(self.remove(ns, &p.name, Some(old_rv)).await)
    }

    async fn list_objects(&self, p: ListParams) -> Result<ListResponse<K>, ApiError> {
        let predicate = Predicate::parse_for(
            &self.kind,
            &p.namespace,
            &p.label_selector,
            &p.field_selector,
        )?;
        let version = ReadVersion::parse(self.kind(), "resource_version", &p.resource_version)?;
        if p.page_size < 0 {
            return Err(ApiError::invalid(
                self.kind(),
                "",
                "page_size",
                "must not be negative",
            ));
        }
        let continue_token = if p.page_token.is_empty() {
            None
        } else if !p.resource_version.is_empty() {
            // Kubernetes refuses the combination too: the token fixes the
            // revision every page is read at.
            return Err(ApiError::invalid(
                self.kind(),
                "",
                "resource_version",
                "must be empty with page_token: later pages are read at the first page's revision",
            ));
        } else {
            let prefix = keys::prefix(&*self.kind, predicate.namespace.as_deref());
            Some(ContinueToken::decode(self.kind(), &p.page_token, &prefix)?)
        };
        self.store
            .list(ListOptions {
                predicate,
                version,
                limit: p.page_size as usize,
                continue_token,
            })
            .await
    }

    async fn watch_objects(&self, p: WatchParams) -> Result<WatchStream<K>, ApiError> {
        let timeout = p.timeout_seconds;
        let stream = self.open_watch(p).await?;
        // Watches end cleanly when the server shuts down (clients resume elsewhere).
        let mut shutdown = self.ctx.shutdown.clone();
        let stream = stream
            .map(|r| r.map_err(Status::from))
            .take_until(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            });
        if timeout > 0 {
            let deadline = tokio::time::sleep(Duration::from_secs(timeout as u64));
            Ok(Box::pin(stream.take_until(deadline)))
        } else {
            Ok(Box::pin(stream))
        }
    }

    /// A watch's events from the store, its parameters checked; the caller
    /// ends it (timeout, shutdown).
    async fn open_watch(&self, p: WatchParams) -> Result<EventStream<K>, ApiError> {
        self.store.watch(self.watch_options(p)?).await
    }

    /// What a watch asks of the store, its parameters checked.
    fn watch_options(&self, p: WatchParams) -> Result<WatchOptions, ApiError> {
        let predicate = Predicate::parse_for(
            &self.kind,
            &p.namespace,
            &p.label_selector,
            &p.field_selector,
        )?;
        let version = ReadVersion::parse(self.kind(), "resource_version", &p.resource_version)?;
        if p.timeout_seconds < 0 {
            return Err(ApiError::invalid(
                self.kind(),
                "",
                "timeout_seconds",
                "must not be negative",
            ));
        }
        let start = match version {
            ReadVersion::Any => WatchStart::AnyState,
            _ if p.send_initial_events => WatchStart::CurrentState,
            ReadVersion::Latest => WatchStart::CurrentState,
            ReadVersion::AtLeast(n) | ReadVersion::Exact(n) => WatchStart::After(n),
        };
        Ok(WatchOptions {
            predicate,
            start,
            initial_events_end_bookmark: p.send_initial_events,
            allow_bookmarks: p.allow_bookmarks,
        })
    }
}

#[tonic::async_trait]
impl<K: Strategy> WatchableKind for ResourceServer<K> {
    async fn open(
        &self,
        extensions: &http::Extensions,
        create: &WatchCreateRequest,
    ) -> Result<KindEvents, ApiError> {
        let selectors = (
            create.namespace.as_str(),
            create.label_selector.as_str(),
            create.field_selector.as_str(),
            create.resource_version.as_str(),
        );
        self.authorize_collection(extensions, "watch", selectors)
            .await?;
        let options = self.watch_options(WatchParams {
            namespace: create.namespace.clone(),
            label_selector: create.label_selector.clone(),
            field_selector: create.field_selector.clone(),
            resource_version: create.resource_version.clone(),
            allow_bookmarks: create.allow_bookmarks,
            send_initial_events: create.send_initial_events,
            timeout_seconds: 0,
        })?;
        self.store.watch_frames(options).await
    }
}

/// What `obj` counts against quotas: one of its kind, plus what its
/// strategy adds.
pub fn usage_of<K: Strategy>(obj: &K) -> Usage {
    let mut usage = crate::admission::quota::count_usage(&K::INFO);
    obj.quota_usage(&mut usage);
    usage
}

/// The gRPC paths (`/package.KindService/Method`) of kind `K`'s streaming
/// methods, for the filters.
pub fn streaming_paths<K: Strategy>() -> impl Iterator<Item = String> {
    K::STREAMING_METHODS
        .iter()
        .map(|m| format!("/{}/{m}", K::INFO.service_name))
}

/// How a new quota counts the stored objects of kind `K`.
pub fn usage_counter<K: Strategy>() -> UsageCounter {
    usage_counter_of::<K>(K::INFO)
}

/// How a new quota counts the stored objects of the kind `info` describes,
/// whose type is `K`.
pub fn usage_counter_of<K: Strategy>(info: skiff::KindInfo) -> UsageCounter {
    UsageCounter {
        info,
        resources: K::QUOTA_RESOURCES,
        count: Arc::new(move |kv| {
            let obj = decode_object::<K>(&kv.key, &kv.value, kv.mod_revision)?;
            let mut usage = crate::admission::quota::count_usage(&info);
            obj.quota_usage(&mut usage);
            Ok(usage)
        }),
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    SystemTime::now().into()
}

fn timestamp_after(d: Duration) -> prost_types::Timestamp {
    // Requests are bounded (MAX_SECONDS); an object stored before the
    // bound existed saturates instead of overflowing.
    let now = SystemTime::now();
    now.checked_add(d)
        .or_else(|| {
            now.checked_add(Duration::from_secs(
                crate::registry::validation::MAX_SECONDS.unsigned_abs(),
            ))
        })
        .unwrap_or(now)
        .into()
}

/// `prefix` plus five random characters, as Kubernetes generates names.
fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .filter_map(|_| ALPHABET.get(rng.random_range(0..ALPHABET.len())))
        .map(|&b| char::from(b))
        .collect();
    // At most 58 bytes of the prefix, cut where a character starts (names
    // of RBAC kinds may hold any character but '/' and '%').
    let mut cut = prefix.len().min(63 - 5);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", prefix.get(..cut).unwrap_or_default())
}

#[tonic::async_trait]
impl<K: Strategy> ResourceService<K> for ResourceServer<K> {
    async fn create(&self, request: Request<K>) -> Result<K, Status> {
        let obj = request.get_ref();
        let ns = self.namespace_of(obj.namespace());
        let user = self
            .authorize(request.extensions(), "create", "", &ns, obj.name())
            .await?;
        self.restrict_node(&user, "create", &ns, obj.name(), "", Some(obj))
            .await?;
        Ok(self.create_object(request.into_inner()).await?)
    }

    async fn get(&self, request: Request<GetParams>) -> Result<K, Status> {
        let ns = self.namespace_of(&request.get_ref().namespace);
        let user = self
            .authorize(
                request.extensions(),
                "get",
                "",
                &ns,
                &request.get_ref().name,
            )
            .await?;
        let p = request.into_inner();
        self.require_name(&p.name)?;
        let version = ReadVersion::parse(self.kind(), "resource_version", &p.resource_version)?;
        let obj = self
            .store
            .get(&ns, &p.name, version)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: self.kind().to_owned(),
                name: object_key(&ns, &p.name),
            })?;
        self.restrict_node(&user, "get", &ns, &p.name, "", Some(&obj))
            .await?;
        Ok(obj)
    }

    async fn list(&self, request: Request<ListParams>) -> Result<ListResponse<K>, Status> {
        let p = request.get_ref();
        let selectors = (
            p.namespace.as_str(),
            p.label_selector.as_str(),
            p.field_selector.as_str(),
            p.resource_version.as_str(),
        );
        self.authorize_collection(request.extensions(), "list", selectors)
            .await?;
        Ok(self.list_objects(request.into_inner()).await?)
    }

    async fn update(&self, request: Request<K>) -> Result<K, Status> {
        let obj = request.get_ref();
        let ns = self.namespace_of(obj.namespace());
        let user = self
            .authorize(request.extensions(), "update", "", &ns, obj.name())
            .await?;
        self.restrict_existing(&user, "update", &ns, obj.name())
            .await?;
        Ok(self.update_object(request.into_inner(), false).await?)
    }

    async fn update_status(&self, request: Request<K>) -> Result<K, Status> {
        if !self.kind.info.has_status {
            return Err(ApiError::Unimplemented(format!("{} has no status", self.kind())).into());
        }
        let obj = request.get_ref();
        let ns = self.namespace_of(obj.namespace());
        let user = self
            .authorize(request.extensions(), "update", "status", &ns, obj.name())
            .await?;
        self.restrict_existing(&user, "update_status", &ns, obj.name())
            .await?;
        Ok(self.update_object(request.into_inner(), true).await?)
    }

    async fn delete(&self, request: Request<DeleteParams>) -> Result<K, Status> {
        let p = request.get_ref();
        let ns = self.namespace_of(&p.namespace);
        let user = self
            .authorize(request.extensions(), "delete", "", &ns, &p.name)
            .await?;
        self.restrict_existing(&user, "delete", &ns, &p.name)
            .await?;
        Ok(self.delete_object(request.into_inner()).await?)
    }

    async fn watch(&self, request: Request<WatchParams>) -> Result<WatchStream<K>, Status> {
        let p = request.get_ref();
        let selectors = (
            p.namespace.as_str(),
            p.label_selector.as_str(),
            p.field_selector.as_str(),
            p.resource_version.as_str(),
        );
        self.authorize_collection(request.extensions(), "watch", selectors)
            .await?;
        Ok(self.watch_objects(request.into_inner()).await?)
    }
}

impl<K: Strategy> ResourceServer<K> {
    /// Node restrictions that depend on the stored object (a node's pods).
    async fn restrict_existing(
        &self,
        user: &UserInfo,
        verb: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if user.node_name().is_none() || self.ctx.authorizer.is_none() {
            return Ok(());
        }
        let existing = self.store.get(ns, name, ReadVersion::Latest).await?;
        self.restrict_node(user, verb, ns, name, "", existing.as_ref())
            .await
    }

    /// Records a read's options at the audit log's Request level.
    fn audit_request(
        &self,
        extensions: &http::Extensions,
        labels: &str,
        fields: &str,
        version: &str,
    ) {
        if let Some(t) = audit_target(extensions) {
            t.set_request(serde_json::json!({
                "labelSelector": labels,
                "fieldSelector": fields,
                "resourceVersion": version,
            }));
        }
    }
}

/// Where a write reads the object it starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The watch cache, without waiting: cheap, possibly behind.
    Cached,
    /// A consistent read.
    Fresh,
}

/// What one try of a write came to.
enum Attempt<K> {
    /// The write was stored.
    Written(K),
    /// Nothing needed writing; the object as it was read.
    Unchanged(K),
    /// The compare-and-swap lost to another write (its conflict error).
    Stale(ApiError),
}

/// A store write's result as an attempt: a conflict means the start was stale.
fn written<K>(result: Result<K, ApiError>) -> Result<Attempt<K>, ApiError> {
    match result {
        Ok(k) => Ok(Attempt::Written(k)),
        Err(e @ ApiError::Conflict { .. }) => Ok(Attempt::Stale(e)),
        Err(e) => Err(e),
    }
}

/// Whether a write is done after `attempt`: `Some(result)`, or `None` to try
/// again from a consistent read. Whatever an attempt from the cache leads
/// to short of a stored write may come from a stale object, so it is tried
/// again; a lost compare-and-swap is retried when `retry_stale`.
fn settle<K>(
    attempt: Result<Attempt<K>, ApiError>,
    origin: &mut Origin,
    retry_stale: bool,
) -> Option<Result<K, ApiError>> {
    let from_cache = *origin == Origin::Cached;
    *origin = Origin::Fresh;
    match attempt {
        Ok(Attempt::Written(k)) => Some(Ok(k)),
        Ok(Attempt::Stale(_)) if retry_stale || from_cache => None,
        Ok(Attempt::Stale(e)) => Some(Err(e)),
        // Storage did not answer: the write's fate is unknown (it may have
        // been applied), so it is the caller's to retry, never ours — a try
        // again would find the write's own result and call it a conflict.
        Err(e @ ApiError::Unavailable { .. }) => Some(Err(e)),
        Ok(Attempt::Unchanged(_)) | Err(_) if from_cache => None,
        Ok(Attempt::Unchanged(k)) => Some(Ok(k)),
        Err(e) => Some(Err(e)),
    }
}
