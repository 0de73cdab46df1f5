//! The watch cache of one kind: a ring of recent events (each with the
//! object's previous state), a store of the latest object of every key, and
//! the revision it has reached. It owns no tasks and does no I/O; the cacher
//! feeds it and serves from it under one lock.
//!
//! Objects are held once, as [`Cached`]: their protobuf encoding (for
//! lists and watch events) and what selectors read (namespace, name,
//! labels, the trigger field); not decoded. Each event's wire
//! frames are built at most once, however many watchers receive them.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff::Resource;
use skiff::api::meta::v1::EventType;
use skiff::wire::frame_watch_event;

use crate::object_store::classify_matches;
use crate::object_store::predicate::Predicate;
use crate::storage::{EventKind, Revision};

/// One object as the cache holds it: its encoding, and what selectors and
/// the trigger index read without decoding it. The decoded object is not
/// kept (it is several times the size of its encoding); [`Cached::object`]
/// decodes it for the rare reader that wants it whole.
#[derive(Debug)]
pub struct Cached<K> {
    /// Its protobuf encoding, resource version set.
    pub encoded: Bytes,
    namespace: Box<str>,
    name: Box<str>,
    labels: BTreeMap<String, String>,
    /// The kind's trigger field and its value.
    trigger: Option<(&'static str, Box<str>)>,
    added_frame: OnceLock<Bytes>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource> Cached<K> {
    /// Keeps what selectors read of `object` (with the value of
    /// `trigger_field`, the field its kind indexes watchers by) and its
    /// encoding.
    pub fn new(mut object: K, trigger_field: Option<&'static str>) -> Self {
        let encoded = Bytes::from(prost::Message::encode_to_vec(&object));
        let trigger = trigger_field.map(|f| {
            let value = object.field(f).unwrap_or_default();
            (f, Box::from(value.as_ref()))
        });
        let meta = object.meta_mut();
        Self {
            encoded,
            namespace: std::mem::take(&mut meta.namespace).into_boxed_str(),
            name: std::mem::take(&mut meta.name).into_boxed_str(),
            labels: std::mem::take(&mut meta.labels),
            trigger,
            added_frame: OnceLock::new(),
            kind: PhantomData,
        }
    }

    /// The object, decoded from its encoding.
    #[allow(
        clippy::expect_used,
        reason = "the cache encoded these bytes itself from a `K`"
    )]
    pub fn object(&self) -> K {
        <K as prost::Message>::decode(&self.encoded[..]).expect("the cache's own encoding decodes")
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// A field selectors and the trigger index read, if kept without
    /// decoding: name, namespace and the kind's trigger field.
    pub fn kept_field(&self, path: &str) -> Option<&str> {
        match path {
            "metadata.name" => Some(&self.name),
            "metadata.namespace" => Some(&self.namespace),
            _ => match &self.trigger {
                Some((field, value)) if *field == path => Some(value),
                _ => None,
            },
        }
    }

    /// Whether it matches `predicate`; decodes it only for a field
    /// selector on a field not kept.
    pub fn matches(&self, predicate: &Predicate) -> bool {
        if let Some(ns) = &predicate.namespace
            && *self.namespace != **ns
        {
            return false;
        }
        if !predicate.labels.matches(&self.labels) {
            return false;
        }
        if predicate.fields.is_everything() {
            return true;
        }
        if predicate
            .fields
            .paths()
            .all(|p| self.kept_field(p).is_some())
        {
            predicate
                .fields
                .matches(|path: &str| self.kept_field(path).map(Cow::Borrowed))
        } else if let Some(matched) =
            predicate.encoded_fields_match(&self.encoded, |p| self.kept_field(p).map(str::to_owned))
        {
            matched
        } else {
            let object = self.object();
            predicate.fields.matches(|path: &str| object.field(path))
        }
    }

    /// The ADDED watch event of this object, encoded once.
    pub fn added_frame(&self) -> Bytes {
        self.added_frame
            .get_or_init(|| frame_watch_event(EventType::Added, &self.encoded))
            .clone()
    }
}

/// One change in the ring.
#[derive(Debug)]
pub struct CacheEvent<K> {
    /// Revision of the change.
    pub revision: Revision,
    /// Put or delete.
    pub kind: EventKind,
    /// Storage key.
    pub key: String,
    /// The object after a put.
    pub current: Option<Arc<Cached<K>>>,
    /// The object before the change.
    pub prev: Option<Arc<Cached<K>>>,
    /// When the cache saw it (sizes the ring by event age).
    pub seen: Instant,
    modified: OnceLock<Bytes>,
    deleted: OnceLock<Bytes>,
}

impl<K: Resource> CacheEvent<K> {
    /// The event type a watcher of everything sees.
    pub fn natural_type(&self) -> EventType {
        match (self.kind, &self.prev) {
            (EventKind::Delete, _) => EventType::Deleted,
            (EventKind::Put, None) => EventType::Added,
            (EventKind::Put, Some(_)) => EventType::Modified,
        }
    }

    /// The frame a watcher with `predicate` receives, if any.
    pub fn frame_for(&self, everything: bool, predicate: &Predicate) -> Option<Bytes> {
        let t = if everything {
            self.natural_type()
        } else {
            classify_matches(
                self.kind,
                self.current.as_ref().map(|c| c.matches(predicate)),
                self.prev.as_ref().is_some_and(|c| c.matches(predicate)),
            )?
        };
        self.frame(t)
    }

    /// The encoded event of type `t`, built once.
    pub fn frame(&self, t: EventType) -> Option<Bytes> {
        match t {
            EventType::Added => self.current.as_ref().map(|c| c.added_frame()),
            EventType::Modified => {
                let c = self.current.as_ref()?;
                Some(
                    self.modified
                        .get_or_init(|| frame_watch_event(EventType::Modified, &c.encoded))
                        .clone(),
                )
            }
            EventType::Deleted => {
                let p = self.prev.as_ref()?;
                Some(
                    self.deleted
                        .get_or_init(|| {
                            // The last state, stamped with the revision of its removal.
                            let mut obj = p.object();
                            obj.meta_mut().resource_version = self.revision.to_string();
                            frame_watch_event(
                                EventType::Deleted,
                                &prost::Message::encode_to_vec(&obj),
                            )
                        })
                        .clone(),
                )
            }
            _ => None,
        }
    }

    /// Namespace of the object.
    pub fn namespace(&self) -> &str {
        self.current
            .as_ref()
            .or(self.prev.as_ref())
            .map(|c| c.namespace())
            .unwrap_or("")
    }
}

/// How the ring is sized.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Starting capacity.
    pub initial_capacity: usize,
    /// Largest capacity under churn.
    pub max_capacity: usize,
    /// The ring grows while its oldest event is younger than this.
    pub min_history: Duration,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            initial_capacity: 1024,
            max_capacity: 100 * 1024,
            min_history: Duration::from_secs(75),
        }
    }
}

/// Why the cache cannot serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMiss {
    /// The revision asked for is older than the ring holds.
    TooOld {
        /// Oldest revision events can be served after.
        oldest: Revision,
    },
    /// The revision asked for is newer than the cache.
    TooNew {
        /// The cache's revision.
        current: Revision,
    },
}

/// A page of a list served from the cache.
pub struct CachedPage<K> {
    /// Matching objects in key order.
    pub items: Vec<Arc<Cached<K>>>,
    /// Whether more matching objects may follow.
    pub more: bool,
    /// Storage key of the last item.
    pub last_key: String,
    /// Revision the page reflects.
    pub revision: Revision,
}

/// Ring, store and revision of one kind.
pub struct WatchCache<K> {
    ring: VecDeque<Arc<CacheEvent<K>>>,
    capacity: usize,
    config: RingConfig,
    store: BTreeMap<String, Arc<Cached<K>>>,
    revision: Revision,
    oldest: Revision,
    ready: bool,
    epoch: u64,
}

impl<K: Resource> WatchCache<K> {
    /// An empty, not yet ready cache.
    pub fn new(config: RingConfig) -> Self {
        Self {
            ring: VecDeque::with_capacity(config.initial_capacity.min(1024)),
            capacity: config.initial_capacity.max(1),
            config,
            store: BTreeMap::new(),
            revision: 0,
            oldest: 0,
            ready: false,
            epoch: 0,
        }
    }

    /// Counts the listed states the cache has held: events of one epoch
    /// never follow those of another.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the cache holds a listed state.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The revision the cache has reached.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Events after this revision are all in the ring.
    pub fn oldest(&self) -> Revision {
        self.oldest
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the cache holds no objects.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Number of events in the ring, and its capacity.
    pub fn ring_usage(&self) -> (usize, usize) {
        (self.ring.len(), self.capacity)
    }

    /// Replaces everything with a fresh listing at `revision`.
    pub fn replace(&mut self, items: Vec<(String, Arc<Cached<K>>)>, revision: Revision) {
        self.ring.clear();
        self.store = items.into_iter().collect();
        self.revision = revision;
        self.oldest = revision;
        self.ready = true;
        self.epoch += 1;
    }

    /// Marks the cache as not serving (while re-listing).
    pub fn set_unready(&mut self) {
        self.ready = false;
    }

    /// Applies one storage change (`current` is the new object for puts);
    /// the previous state comes from the store. A deletion of a key the
    /// store does not hold changes nothing and yields no event.
    pub fn apply(
        &mut self,
        kind: EventKind,
        key: String,
        revision: Revision,
        current: Option<Arc<Cached<K>>>,
        now: Instant,
    ) -> Option<Arc<CacheEvent<K>>> {
        let prev = match (&kind, &current) {
            (EventKind::Put, Some(c)) => self.store.insert(key.clone(), c.clone()),
            _ => self.store.remove(&key),
        };
        self.revision = self.revision.max(revision);
        if kind == EventKind::Delete && prev.is_none() {
            return None;
        }
        let event = Arc::new(CacheEvent {
            revision,
            kind,
            key,
            current,
            prev,
            seen: now,
            modified: OnceLock::new(),
            deleted: OnceLock::new(),
        });
        self.push(event.clone(), now);
        Some(event)
    }

    /// Records that storage has delivered everything up to `revision`.
    pub fn advance(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
    }

    fn push(&mut self, event: Arc<CacheEvent<K>>, now: Instant) {
        if self.ring.len() >= self.capacity {
            let age = self
                .ring
                .front()
                .map(|e| now.duration_since(e.seen))
                .unwrap_or_default();
            if age < self.config.min_history && self.capacity < self.config.max_capacity {
                // Churn is high: keep more history rather than lose young events.
                self.capacity = (self.capacity * 2).min(self.config.max_capacity);
            } else {
                if age > self.config.min_history * 4 && self.capacity > self.config.initial_capacity
                {
                    // Churn has calmed down: give memory back.
                    self.capacity = (self.capacity / 2).max(self.config.initial_capacity);
                }
                while self.ring.len() >= self.capacity {
                    if let Some(e) = self.ring.pop_front() {
                        self.oldest = e.revision;
                    }
                }
            }
        }
        self.ring.push_back(event);
    }

    /// Every event with revision after `after`, or why not.
    pub fn events_after(&self, after: Revision) -> Result<Vec<Arc<CacheEvent<K>>>, CacheMiss> {
        if after < self.oldest {
            return Err(CacheMiss::TooOld {
                oldest: self.oldest,
            });
        }
        if after > self.revision {
            return Err(CacheMiss::TooNew {
                current: self.revision,
            });
        }
        let start = self.ring.partition_point(|e| e.revision <= after);
        Ok(self.ring.range(start..).cloned().collect())
    }

    /// Every object (for watches that start from the current state).
    pub fn snapshot(&self, prefix: &str) -> Vec<Arc<Cached<K>>> {
        self.store
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<Arc<Cached<K>>> {
        self.store.get(key).cloned()
    }

    /// A page of objects under `prefix` matching `predicate`, after
    /// `start_after`, as of revision `at` (the current one when `None`).
    pub fn list(
        &self,
        prefix: &str,
        start_after: &str,
        at: Option<Revision>,
        predicate: &Predicate,
        limit: usize,
    ) -> Result<CachedPage<K>, CacheMiss> {
        let at = at.unwrap_or(self.revision);
        if at > self.revision {
            return Err(CacheMiss::TooNew {
                current: self.revision,
            });
        }
        if at < self.oldest {
            return Err(CacheMiss::TooOld {
                oldest: self.oldest,
            });
        }
        let in_range =
            |k: &str| k.starts_with(prefix) && (start_after.is_empty() || k > start_after);
        // Keys changed after `at`, with their state at `at`.
        let mut undo: BTreeMap<&str, Option<&Arc<Cached<K>>>> = BTreeMap::new();
        if at < self.revision {
            let start = self.ring.partition_point(|e| e.revision <= at);
            for e in self.ring.range(start..) {
                if in_range(&e.key) {
                    undo.entry(e.key.as_str()).or_insert(e.prev.as_ref());
                }
            }
        }
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut items = Vec::new();
        let mut last_key = String::new();
        let mut more = false;
        let lower = if start_after.is_empty() {
            prefix.to_owned()
        } else {
            format!("{start_after}\0")
        };
        let mut current = self
            .store
            .range(lower..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut undo = undo.into_iter().peekable();
        loop {
            let take_undo = match (current.peek(), undo.peek()) {
                (None, None) => break,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some((ck, _)), Some((uk, _))) => *uk <= ck.as_str(),
            };
            let (key, item) = if take_undo {
                let Some((k, v)) = undo.next() else { break };
                if current.peek().is_some_and(|(ck, _)| ck.as_str() == k) {
                    current.next();
                }
                (k, v)
            } else {
                let Some((k, v)) = current.next() else { break };
                (k.as_str(), Some(v))
            };
            let Some(item) = item else { continue };
            if !item.matches(predicate) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            last_key = key.to_owned();
            items.push(item.clone());
        }
        Ok(CachedPage {
            items,
            more,
            last_key,
            revision: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use skiff::api::core::v1::Pod;
    use skiff::api::meta::v1::ObjectMeta;

    fn pod(name: &str, rv: Revision, app: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv.to_string(),
                labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn key(name: &str) -> String {
        format!("/registry/pods/default/{name}")
    }

    fn put(c: &mut WatchCache<Pod>, name: &str, rev: Revision, app: &str) -> Arc<CacheEvent<Pod>> {
        let obj = Arc::new(Cached::new(pod(name, rev, app), None));
        c.apply(EventKind::Put, key(name), rev, Some(obj), Instant::now())
            .unwrap()
    }

    fn cached(items: Vec<(String, Pod)>) -> Vec<(String, Arc<Cached<Pod>>)> {
        items
            .into_iter()
            .map(|(k, o)| (k, Arc::new(Cached::new(o, None))))
            .collect()
    }

    #[test]
    fn events_carry_previous_objects_and_frames_are_built_once() {
        let mut c = WatchCache::new(RingConfig::default());
        c.replace(vec![], 10);
        let added = put(&mut c, "a", 11, "web");
        assert_eq!(added.natural_type(), EventType::Added);
        let modified = put(&mut c, "a", 12, "db");
        assert_eq!(modified.natural_type(), EventType::Modified);
        assert_eq!(
            modified
                .prev
                .as_ref()
                .unwrap()
                .object()
                .meta()
                .resource_version,
            "11"
        );
        let web = Predicate {
            labels: skiff::selector::LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        // Leaving the selector is a DELETED carrying the old content at the new revision.
        let frame = modified.frame_for(false, &web).unwrap();
        // A whole gRPC message: prefix (uncompressed, length), then the event.
        assert_eq!(frame[0], 0);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + skiff::wire::GRPC_PREFIX, frame.len());
        let ev = skiff::wire::WatchEvent::<Pod>::decode(frame.slice(skiff::wire::GRPC_PREFIX..))
            .unwrap();
        assert_eq!(ev.event_type(), EventType::Deleted);
        assert_eq!(ev.object.as_ref().unwrap().meta().labels["app"], "web");
        assert_eq!(ev.object.as_ref().unwrap().meta().resource_version, "12");
        let again = modified.frame_for(false, &web).unwrap();
        assert_eq!(
            frame.as_ptr(),
            again.as_ptr(),
            "the frame is shared, not re-encoded"
        );
    }

    #[test]
    fn events_after_a_revision_and_too_old_ones() {
        let mut c = WatchCache::new(RingConfig {
            initial_capacity: 4,
            max_capacity: 4,
            min_history: Duration::ZERO,
        });
        c.replace(vec![], 10);
        for i in 0..6 {
            put(&mut c, &format!("p{i}"), 11 + i, "web");
        }
        assert_eq!(c.ring_usage(), (4, 4));
        assert_eq!(c.oldest(), 12, "events up to 12 were evicted");
        assert_eq!(
            c.events_after(11).err(),
            Some(CacheMiss::TooOld { oldest: 12 })
        );
        let evs = c.events_after(13).unwrap();
        assert_eq!(
            evs.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [14, 15, 16]
        );
        assert!(c.events_after(16).unwrap().is_empty());
        assert_eq!(
            c.events_after(17).err(),
            Some(CacheMiss::TooNew { current: 16 })
        );
    }

    #[test]
    fn the_ring_grows_while_events_are_young() {
        let mut c = WatchCache::new(RingConfig {
            initial_capacity: 2,
            max_capacity: 8,
            min_history: Duration::from_secs(3600),
        });
        c.replace(vec![], 1);
        for i in 0..20 {
            put(&mut c, &format!("p{i}"), 2 + i, "web");
        }
        assert_eq!(c.ring_usage().1, 8, "grew to its maximum");
        assert_eq!(c.ring_usage().0, 8);
    }

    #[test]
    fn lists_read_the_past_from_the_ring() {
        let mut c = WatchCache::new(RingConfig::default());
        c.replace(
            cached(vec![
                (key("a"), pod("a", 5, "web")),
                (key("b"), pod("b", 6, "web")),
            ]),
            10,
        );
        put(&mut c, "a", 11, "db");
        put(&mut c, "c", 12, "web");
        assert!(
            c.apply(EventKind::Delete, key("b"), 13, None, Instant::now())
                .is_some()
        );
        assert!(
            c.apply(EventKind::Delete, key("zz"), 14, None, Instant::now())
                .is_none(),
            "deleting what the store lacks is no event"
        );
        assert_eq!(c.revision(), 14);
        let everything = Predicate::default();
        let now = c.list("/registry/pods/", "", None, &everything, 0).unwrap();
        let names: Vec<_> = now
            .items
            .iter()
            .map(|i| i.object().meta().name.clone())
            .collect();
        assert_eq!(names, ["a", "c"]);
        let past = c
            .list("/registry/pods/", "", Some(10), &everything, 0)
            .unwrap();
        let past: Vec<_> = past
            .items
            .iter()
            .map(|i| {
                (
                    i.object().meta().name.clone(),
                    i.object().meta().labels["app"].clone(),
                )
            })
            .collect();
        assert_eq!(
            past,
            [("a".into(), "web".into()), ("b".into(), "web".into())]
        );
        let page = c
            .list("/registry/pods/", &key("a"), Some(12), &everything, 1)
            .unwrap();
        assert_eq!(page.items[0].object().meta().name, "b");
        assert!(page.more);
        assert!(matches!(
            c.list("/registry/pods/", "", Some(9), &everything, 0),
            Err(CacheMiss::TooOld { .. })
        ));
    }
}
