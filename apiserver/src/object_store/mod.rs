//! Typed access to one kind's objects: [`ObjectStore`] is what the generic
//! service calls. [`StorageStore`] implements it directly over [`Storage`]
//! (encode, decode, key layout, selectors, paging); the cacher implements it
//! too, as a decorator that serves reads and watches from memory.
//!
//! Objects are stored without `resource_version`; reads set it from the
//! key's mod revision, as Kubernetes does with etcd.
//!
//! Owns encoding, key layout and selector evaluation on reads; must not apply
//! request semantics (metadata, validation, admission are the registry's).

pub mod keys;
pub mod kind;
pub mod predicate;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use skiff::api::meta::v1::{EventType, ListMeta};
use skiff::wire::{ListResponse, OutgoingEvent, WatchEvent};
use skiff::{Resource, resource::object_key};

use crate::error::ApiError;
use crate::storage::{self, EventKind, RangeRequest, Revision, Storage, StorageError};
use kind::ServedKind;
use predicate::Predicate;

/// How fresh a read must be (Kubernetes' resourceVersion semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVersion {
    /// Unset: the latest state (a consistent read).
    Latest,
    /// "0": any state the server holds.
    Any,
    /// N: a state not older than N.
    AtLeast(Revision),
    /// Exactly N (continuing a paged list).
    Exact(Revision),
}

impl ReadVersion {
    /// Parses a request's `resource_version`; `field` names it in errors.
    pub fn parse(kind: &str, field: &str, s: &str) -> Result<Self, ApiError> {
        match s {
            "" => Ok(Self::Latest),
            "0" => Ok(Self::Any),
            n => n
                .parse::<Revision>()
                .ok()
                .filter(|n| *n > 0)
                .map(Self::AtLeast)
                .ok_or_else(|| {
                    ApiError::invalid(kind, "", field, format!("{n:?} is not a resource version"))
                }),
        }
    }
}

/// What a list asks for.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Which objects.
    pub predicate: Predicate,
    /// How fresh.
    pub version: ReadVersion,
    /// Maximum items; 0 means all.
    pub limit: usize,
    /// Where the previous page ended.
    pub continue_token: Option<ContinueToken>,
}

/// Where to start a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Send the current state (a consistent read) as ADDED events, then changes.
    CurrentState,
    /// Send any recent state the server holds ("0") as ADDED events, then changes.
    AnyState,
    /// Send changes after this revision.
    After(Revision),
}

/// What a watch asks for.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Which objects.
    pub predicate: Predicate,
    /// Where to start.
    pub start: WatchStart,
    /// End the initial state with a BOOKMARK (Kubernetes' watch-list).
    pub initial_events_end_bookmark: bool,
    /// Send periodic BOOKMARKs.
    pub allow_bookmarks: bool,
}

/// A position in a paged list: the revision of the first page and the last key returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    /// Revision every page is read at.
    pub revision: Revision,
    /// Storage key of the last item returned.
    pub start_after: String,
}

impl ContinueToken {
    /// Encodes the token for `next_page_token`.
    pub fn encode(&self) -> String {
        let raw = format!("v1\n{}\n{}", self.revision, self.start_after);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a `page_token`, checking it belongs to a list of `prefix`.
    pub fn decode(kind: &str, token: &str, prefix: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::invalid(kind, "", "page_token", why.to_owned());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad("not a token this server issued"))?;
        let raw = String::from_utf8(raw).map_err(|_| bad("not a token this server issued"))?;
        let mut parts = raw.splitn(3, '\n');
        let (Some("v1"), Some(rev), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not a token this server issued"));
        };
        let revision = rev
            .parse::<Revision>()
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| bad("not a token this server issued"))?;
        if !key.starts_with(prefix) {
            return Err(bad(
                "the token belongs to another list (namespace or kind differs)",
            ));
        }
        Ok(Self {
            revision,
            start_after: key.to_owned(),
        })
    }
}

/// Stream of watch events as they go on the wire.
pub type EventStream<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<OutgoingEvent<K>, ApiError>> + Send>>;

/// Stream of watch events as the gRPC frames of their `WatchEvent`s (what
/// a watch response writes).
pub type FrameStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send>>;

/// Typed storage of one kind.
#[async_trait::async_trait]
pub trait ObjectStore<K: Resource>: Send + Sync + 'static {
    /// Stores a new object; its name and namespace must be set.
    async fn create(&self, obj: K) -> Result<K, ApiError>;
    /// Reads one object; `None` if absent.
    async fn get(
        &self,
        namespace: &str,
        name: &str,
        version: ReadVersion,
    ) -> Result<Option<K>, ApiError>;
    /// Lists objects.
    async fn list(&self, options: ListOptions) -> Result<ListResponse<K>, ApiError>;
    /// Replaces an object if its stored revision is `expected`.
    async fn update(&self, obj: K, expected: Revision) -> Result<K, ApiError>;
    /// Deletes an object (if its revision is `expected`, when given); returns
    /// its last state with the deletion's revision.
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<K, ApiError>;
    /// Streams changes.
    async fn watch(&self, options: WatchOptions) -> Result<EventStream<K>, ApiError>;
    /// Streams changes as their frames: [`watch`](Self::watch)'s events,
    /// framed (a store that holds them framed hands them over as they are).
    async fn watch_frames(&self, options: WatchOptions) -> Result<FrameStream, ApiError> {
        use futures::StreamExt;
        let events = self.watch(options).await?;
        Ok(Box::pin(
            events.map(|r| r.map(OutgoingEvent::into_grpc_frame)),
        ))
    }
}

/// Decodes a stored value and sets its resource version.
pub fn decode_object<K: Resource>(
    key: &str,
    value: &[u8],
    revision: Revision,
) -> Result<K, ApiError> {
    let mut obj = K::decode(value)
        .map_err(|e| ApiError::Internal(format!("stored object {key} does not decode: {e}")))?;
    obj.meta_mut().resource_version = revision.to_string();
    Ok(obj)
}

/// Encodes an object for storage (without its resource version, which the
/// object gets back afterwards).
pub fn encode_object<K: Resource>(obj: &mut K) -> Bytes {
    let version = std::mem::take(&mut obj.meta_mut().resource_version);
    let bytes = Bytes::from(obj.encode_to_vec());
    obj.meta_mut().resource_version = version;
    bytes
}

/// What a storage event means to a watcher with `predicate`, given the
/// object before and after: ADDED when it starts matching, DELETED (with
/// its previous content) when it stops, MODIFIED while it keeps matching.
pub fn classify<'a, K: Resource>(
    predicate: &Predicate,
    kind: EventKind,
    current: Option<&'a K>,
    previous: Option<&'a K>,
) -> Option<(EventType, &'a K)> {
    let t = classify_matches(
        kind,
        current.map(|c| predicate.matches(c)),
        previous.is_some_and(|p| predicate.matches(p)),
    )?;
    match t {
        EventType::Deleted => previous.map(|p| (t, p)),
        _ => current.map(|c| (t, c)),
    }
}

/// [`classify`] from whether the object matches after the change (`None`
/// for a delete or no object) and before it.
pub fn classify_matches(
    kind: EventKind,
    current: Option<bool>,
    prev_matches: bool,
) -> Option<EventType> {
    match kind {
        EventKind::Delete => prev_matches.then_some(EventType::Deleted),
        EventKind::Put => match (current?, prev_matches) {
            (true, true) => Some(EventType::Modified),
            (true, false) => Some(EventType::Added),
            (false, true) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

/// A bookmark event carrying `revision` (and the initial-events-end
/// annotation when it closes an initial state).
pub fn bookmark<K: Resource>(revision: Revision, initial_events_end: bool) -> WatchEvent<K> {
    WatchEvent::new(
        EventType::Bookmark,
        bookmark_object(revision, initial_events_end),
    )
}

/// The object a BOOKMARK carries: only its resource version (and the
/// initial-events-end annotation) is set.
pub fn bookmark_object<K: Resource>(revision: Revision, initial_events_end: bool) -> K {
    let mut obj = K::default();
    let meta = obj.meta_mut();
    meta.resource_version = revision.to_string();
    if initial_events_end {
        meta.annotations
            .insert(INITIAL_EVENTS_END.to_owned(), "true".to_owned());
    }
    obj
}

/// Annotation on the BOOKMARK that ends a watch's initial state.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Keys per storage read when a whole kind is read: lists stay within
/// message limits however large the kind grows.
pub const LIST_PAGE: usize = 1000;

/// [`ObjectStore`] straight over [`Storage`].
pub struct StorageStore<K> {
    storage: Arc<dyn Storage>,
    kind: Arc<ServedKind<K>>,
}

impl<K> Clone for StorageStore<K> {
    fn clone(&self) -> Self {
        Self {
            storage: self.storage.clone(),
            kind: self.kind.clone(),
        }
    }
}

impl<K: Resource> StorageStore<K> {
    /// A store of kind `K` in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::for_kind(storage, Arc::new(ServedKind::of_type()))
    }

    /// A store of `kind`'s objects in `storage`.
    pub fn for_kind(storage: Arc<dyn Storage>, kind: Arc<ServedKind<K>>) -> Self {
        Self { storage, kind }
    }

    /// The kind stored.
    pub fn kind(&self) -> &Arc<ServedKind<K>> {
        &self.kind
    }

    /// The underlying storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn name_of(namespace: &str, name: &str) -> String {
        object_key(namespace, name)
    }

    fn err(&self, name: &str, e: StorageError) -> ApiError {
        ApiError::from_storage(self.kind.info.kind, name, e)
    }

    /// Reads every object of the kind at one revision (the latest when
    /// `None`), in pages of [`LIST_PAGE`].
    pub async fn list_all(
        &self,
        revision: Option<Revision>,
    ) -> Result<(Vec<K>, Revision), ApiError> {
        let prefix = keys::prefix(&*self.kind, None);
        let mut at = revision;
        let mut start_after = String::new();
        let mut items = Vec::new();
        loop {
            let resp = self
                .storage
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    start_after: std::mem::take(&mut start_after),
                    revision: at,
                    limit: LIST_PAGE,
                })
                .await
                .map_err(|e| self.err("", e))?;
            at = Some(resp.revision);
            for kv in &resp.kvs {
                items.push(decode_object(&kv.key, &kv.value, kv.mod_revision)?);
            }
            match resp.kvs.last() {
                Some(last) if resp.more => start_after = last.key.clone(),
                _ => break,
            }
        }
        Ok((items, at.unwrap_or(0)))
    }

    /// Streams every storage change of the kind from `start` (inclusive),
    /// decoded, with previous objects.
    pub async fn watch_changes(
        &self,
        start: Revision,
    ) -> Result<
        impl Stream<Item = Result<Vec<Change<K>>, StorageError>> + Send + use<K>,
        StorageError,
    > {
        let prefix = keys::prefix(&*self.kind, None);
        let stream = self.storage.watch(&prefix, start).await?;
        Ok(stream.map(|batch| {
            let batch = batch?;
            batch
                .events
                .into_iter()
                .map(|e| {
                    let revision = e.revision();
                    let decode = |kv: &storage::KeyValue, rev: Revision| {
                        decode_object::<K>(&kv.key, &kv.value, rev).map_err(|err| {
                            StorageError::Corrupt {
                                key: kv.key.clone(),
                                reason: err.to_string(),
                            }
                        })
                    };
                    let current = match e.kind {
                        EventKind::Put => Some(decode(&e.kv, revision)?),
                        EventKind::Delete => None,
                    };
                    // A deleted object's last state carries the deletion revision.
                    let previous = match (&e.prev, e.kind) {
                        (Some(p), EventKind::Delete) => Some(decode(p, revision)?),
                        (Some(p), EventKind::Put) => Some(decode(p, p.mod_revision)?),
                        (None, _) => None,
                    };
                    Ok(Change {
                        kind: e.kind,
                        revision,
                        current,
                        previous,
                    })
                })
                .collect()
        }))
    }
}

/// One decoded storage change of a kind.
#[derive(Debug, Clone)]
pub struct Change<K> {
    /// Put or delete.
    pub kind: EventKind,
    /// Revision of the change.
    pub revision: Revision,
    /// The object after a put.
    pub current: Option<K>,
    /// The object before (for deletes: its last state, at the deletion revision).
    pub previous: Option<K>,
}

#[async_trait::async_trait]
impl<K: Resource> ObjectStore<K> for StorageStore<K> {
    async fn create(&self, mut obj: K) -> Result<K, ApiError> {
        let key = keys::object_key(&*self.kind, obj.namespace(), obj.name());
        let kv = self
            .storage
            .create(&key, encode_object(&mut obj))
            .await
            .map_err(|e| self.err(&Self::name_of(obj.namespace(), obj.name()), e))?;
        obj.meta_mut().resource_version = kv.mod_revision.to_string();
        Ok(obj)
    }

    async fn get(
        &self,
        namespace: &str,
        name: &str,
        version: ReadVersion,
    ) -> Result<Option<K>, ApiError> {
        let key = keys::object_key(&*self.kind, namespace, name);
        let kv = self
            .storage
            .get(&key)
            .await
            .map_err(|e| self.err(&Self::name_of(namespace, name), e))?;
        let Some(kv) = kv else { return Ok(None) };
        if let ReadVersion::AtLeast(n) | ReadVersion::Exact(n) = version {
            let current = self
                .storage
                .current_revision()
                .await
                .map_err(|e| self.err(name, e))?;
            if current < n {
                return Err(ApiError::Unavailable {
                    message: format!(
                        "resource version {n} is not reached yet (at {current}); retry"
                    ),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
        }
        Ok(Some(decode_object(&kv.key, &kv.value, kv.mod_revision)?))
    }

    async fn list(&self, options: ListOptions) -> Result<ListResponse<K>, ApiError> {
        let prefix = keys::prefix(&*self.kind, options.predicate.namespace.as_deref());
        let (mut revision, mut start_after) = match &options.continue_token {
            Some(t) => (Some(t.revision), t.start_after.clone()),
            None => match options.version {
                ReadVersion::Exact(n) => (Some(n), String::new()),
                _ => (None, String::new()),
            },
        };
        let limit = options.limit;
        let chunk = if limit == 0 {
            LIST_PAGE
        } else {
            limit.clamp(128, LIST_PAGE)
        };
        let mut items: Vec<K> = Vec::new();
        let mut last_key = String::new();
        let mut more_after_last = false;
        loop {
            let resp = self
                .storage
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    revision,
                    limit: chunk,
                })
                .await
                .map_err(|e| match e {
                    StorageError::Compacted { .. } if options.continue_token.is_some() => ApiError::Expired(
                        "the page token has expired (its revision was compacted); list again from the start"
                            .into(),
                    ),
                    e => self.err("", e),
                })?;
            if revision.is_none() {
                if let ReadVersion::AtLeast(n) = options.version
                    && resp.revision < n
                {
                    return Err(ApiError::Unavailable {
                        message: format!("resource version {n} is not reached yet; retry"),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                revision = Some(resp.revision);
            }
            let n = resp.kvs.len();
            for (i, kv) in resp.kvs.iter().enumerate() {
                let obj: K = decode_object(&kv.key, &kv.value, kv.mod_revision)?;
                if !options.predicate.matches(&obj) {
                    continue;
                }
                if limit > 0 && items.len() == limit {
                    more_after_last = true;
                    break;
                }
                last_key = kv.key.clone();
                items.push(obj);
                if limit > 0 && items.len() == limit && (i + 1 < n || resp.more) {
                    more_after_last = true;
                }
            }
            if more_after_last || !resp.more || n == 0 {
                break;
            }
            start_after = resp.kvs.last().map(|kv| kv.key.clone()).unwrap_or_default();
        }
        let revision = revision.unwrap_or(0);
        // A page that is full might have nothing after it; we only know by
        // looking, so the token may lead to an empty last page (as in Kubernetes).
        let next_page_token = if more_after_last {
            ContinueToken {
                revision,
                start_after: last_key,
            }
            .encode()
        } else {
            String::new()
        };
        Ok(ListResponse::new(
            ListMeta {
                resource_version: revision.to_string(),
                next_page_token,
                remaining_item_count: None,
            },
            items,
        ))
    }

    async fn update(&self, mut obj: K, expected: Revision) -> Result<K, ApiError> {
        let key = keys::object_key(&*self.kind, obj.namespace(), obj.name());
        let kv = self
            .storage
            .update(&key, encode_object(&mut obj), expected)
            .await
            .map_err(|e| self.err(&Self::name_of(obj.namespace(), obj.name()), e))?;
        obj.meta_mut().resource_version = kv.mod_revision.to_string();
        Ok(obj)
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<K, ApiError> {
        let key = keys::object_key(&*self.kind, namespace, name);
        let deleted = self
            .storage
            .delete(&key, expected)
            .await
            .map_err(|e| self.err(&Self::name_of(namespace, name), e))?;
        decode_object(&key, &deleted.prev.value, deleted.revision)
    }

    async fn watch(&self, options: WatchOptions) -> Result<EventStream<K>, ApiError> {
        let (initial, from) = match options.start {
            WatchStart::CurrentState | WatchStart::AnyState => {
                let (items, revision) = self.list_all(None).await?;
                let initial: Vec<K> = items
                    .into_iter()
                    .filter(|o| options.predicate.matches(o))
                    .collect();
                (initial, revision)
            }
            WatchStart::After(rev) => (Vec::new(), rev),
        };
        let changes = self
            .watch_changes(from + 1)
            .await
            .map_err(|e| self.err("", e))?;
        let predicate = options.predicate.clone();
        let mut head: Vec<Result<OutgoingEvent<K>, ApiError>> = initial
            .into_iter()
            .map(|o| Ok(WatchEvent::new(EventType::Added, o).into()))
            .collect();
        if options.initial_events_end_bookmark && !matches!(options.start, WatchStart::After(_)) {
            head.push(Ok(bookmark::<K>(from, true).into()));
        }
        let kind = self.kind.info.kind;
        let live = changes.flat_map(move |batch| {
            let events: Vec<Result<OutgoingEvent<K>, ApiError>> = match batch {
                Err(e) => vec![Err(ApiError::from_storage(kind, "", e))],
                Ok(changes) => changes
                    .iter()
                    .filter_map(|c| {
                        classify(&predicate, c.kind, c.current.as_ref(), c.previous.as_ref()).map(
                            |(t, o)| {
                                let mut o = o.clone();
                                o.meta_mut().resource_version = c.revision.to_string();
                                Ok(WatchEvent::new(t, o).into())
                            },
                        )
                    })
                    .collect(),
            };
            futures::stream::iter(events)
        });
        Ok(Box::pin(futures::stream::iter(head).chain(live)))
    }
}

/// A decorator that lets "any state" reads see this server's own writes:
/// a read at [`ReadVersion::Any`] waits for the revision of the last write
/// made through it. The namespace lifecycle check reads namespaces so,
/// cheaply from the cache, yet never misses a deletion this server just
/// stored (Kubernetes' NamespaceLifecycle forces a live lookup then).
pub struct ReadYourWrites<K: Resource> {
    inner: Arc<dyn ObjectStore<K>>,
    written: std::sync::atomic::AtomicI64,
}

impl<K: Resource> ReadYourWrites<K> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore<K>>) -> Self {
        Self {
            inner,
            written: std::sync::atomic::AtomicI64::new(0),
        }
    }

    fn record(&self, result: Result<K, ApiError>) -> Result<K, ApiError> {
        if let Ok(obj) = &result
            && let Ok(rev) = obj.meta().resource_version.parse::<Revision>()
        {
            self.written
                .fetch_max(rev, std::sync::atomic::Ordering::AcqRel);
        }
        result
    }
}

#[async_trait::async_trait]
impl<K: Resource> ObjectStore<K> for ReadYourWrites<K> {
    async fn create(&self, obj: K) -> Result<K, ApiError> {
        self.record(self.inner.create(obj).await)
    }

    async fn get(
        &self,
        namespace: &str,
        name: &str,
        version: ReadVersion,
    ) -> Result<Option<K>, ApiError> {
        let version = match version {
            ReadVersion::Any => match self.written.load(std::sync::atomic::Ordering::Acquire) {
                0 => ReadVersion::Any,
                rev => ReadVersion::AtLeast(rev),
            },
            v => v,
        };
        self.inner.get(namespace, name, version).await
    }

    async fn list(&self, options: ListOptions) -> Result<ListResponse<K>, ApiError> {
        self.inner.list(options).await
    }

    async fn update(&self, obj: K, expected: Revision) -> Result<K, ApiError> {
        self.record(self.inner.update(obj, expected).await)
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<K, ApiError> {
        self.record(self.inner.delete(namespace, name, expected).await)
    }

    async fn watch(&self, options: WatchOptions) -> Result<EventStream<K>, ApiError> {
        self.inner.watch(options).await
    }

    async fn watch_frames(&self, options: WatchOptions) -> Result<FrameStream, ApiError> {
        self.inner.watch_frames(options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_foreign_lists() {
        let t = ContinueToken {
            revision: 42,
            start_after: "/registry/pods/default/web-3".into(),
        };
        let s = t.encode();
        assert_eq!(
            ContinueToken::decode("Pod", &s, "/registry/pods/").unwrap(),
            t
        );
        assert!(ContinueToken::decode("Pod", &s, "/registry/pods/other/").is_err());
        assert!(ContinueToken::decode("Pod", "garbage!", "/registry/pods/").is_err());
    }

    #[test]
    fn read_versions_parse_as_in_kubernetes() {
        assert_eq!(
            ReadVersion::parse("Pod", "rv", "").unwrap(),
            ReadVersion::Latest
        );
        assert_eq!(
            ReadVersion::parse("Pod", "rv", "0").unwrap(),
            ReadVersion::Any
        );
        assert_eq!(
            ReadVersion::parse("Pod", "rv", "17").unwrap(),
            ReadVersion::AtLeast(17)
        );
        assert!(ReadVersion::parse("Pod", "rv", "abc").is_err());
        assert!(ReadVersion::parse("Pod", "rv", "-3").is_err());
    }
}
