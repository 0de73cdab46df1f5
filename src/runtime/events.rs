//! Recording Events about objects, as Kubernetes' event recorder does: the
//! same event about the same object (type, reason, message) is counted on
//! one Event object rather than written again. Recording is best effort:
//! failures are logged, never returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::Resource;
use crate::api::core::v1::{Event, EventSource, ObjectReference};
use crate::api::meta::v1::ObjectMeta;
use crate::client::{Api, Client, Error};

/// Normal events report progress.
pub const NORMAL: &str = "Normal";
/// Warning events report trouble.
pub const WARNING: &str = "Warning";

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    object: String,
    kind: &'static str,
    event_type: String,
    reason: String,
    message: String,
}

/// Records events on behalf of one component.
pub struct Recorder {
    client: Client,
    component: String,
    instance: String,
    /// Events already written: (namespace, name).
    seen: Mutex<HashMap<Key, (String, String)>>,
}

/// Most distinct events remembered for counting.
const REMEMBERED: usize = 4096;

impl Recorder {
    /// A recorder for `component` (e.g. "default-scheduler"), running as `instance`.
    pub fn new(client: Client, component: &str, instance: &str) -> Self {
        Self {
            client,
            component: component.to_owned(),
            instance: instance.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `obj`.
    pub async fn record<K: Resource>(
        &self,
        obj: &K,
        event_type: &str,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(obj, event_type, reason, message).await {
            tracing::debug!(reason, error = %e, "could not record an event");
        }
    }

    async fn try_record<K: Resource>(
        &self,
        obj: &K,
        event_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let meta = obj.meta();
        // Events of cluster-scoped objects live in "default", as in Kubernetes.
        let namespace = if meta.namespace.is_empty() {
            "default"
        } else {
            meta.namespace.as_str()
        };
        let key = Key {
            object: if meta.uid.is_empty() {
                format!("{namespace}/{}", meta.name)
            } else {
                meta.uid.clone()
            },
            kind: K::INFO.kind,
            event_type: event_type.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let api: Api<Event> = self.client.events(namespace);
        let now: prost_types::Timestamp = SystemTime::now().into();
        let existing = self.seen.lock().expect("events lock").get(&key).cloned();
        if let Some((_, name)) = existing {
            for _ in 0..3 {
                let Some(mut ev) = api.get_opt(&name).await? else {
                    break;
                };
                ev.count += 1;
                ev.last_timestamp = Some(now);
                match api.update(&ev).await {
                    Ok(_) => return Ok(()),
                    Err(Error::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let event = Event {
            metadata: Some(ObjectMeta {
                name: format!("{}.{nanos:x}", meta.name),
                namespace: namespace.to_owned(),
                ..Default::default()
            }),
            involved_object: Some(ObjectReference {
                kind: K::INFO.kind.to_owned(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                api_version: K::INFO.api_version.to_owned(),
                resource_version: meta.resource_version.clone(),
                field_path: String::new(),
            }),
            reason: reason.to_owned(),
            message: message.to_owned(),
            source: Some(EventSource {
                component: self.component.clone(),
                host: String::new(),
            }),
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            count: 1,
            r#type: event_type.to_owned(),
            reporting_component: self.component.clone(),
            reporting_instance: self.instance.clone(),
        };
        let created = api.create(&event).await?;
        let mut seen = self.seen.lock().expect("events lock");
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(key, (namespace.to_owned(), created.meta().name.clone()));
        Ok(())
    }
}
