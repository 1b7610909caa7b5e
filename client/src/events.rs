//! A core/v1 Event recorder like client-go's `record.EventRecorder`: `record` never blocks (a
//! bounded queue; when it is full the event is dropped and counted, as client-go's broadcaster
//! drops), and a background task writes Events, folding a repeat of the same
//! (object, type, reason, message, source) into the existing Event by raising `count` and
//! `lastTimestamp` — client-go's `EventCorrelator` dedup, with its LRU of 4096 keys.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

/// Events waiting to be written; more are dropped (counted in `dropped`).
pub const EVENT_QUEUE_MAX: usize = 1024;
/// Keys remembered for deduplication (client-go's `maxLruCacheEntries`).
pub const EVENT_CACHE_MAX: usize = 4096;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An expected thing happened.
    Normal,
    /// Something may need attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The object the event is about.
    pub object: ObjectReference,
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// A CamelCase reason, e.g. `FailedScheduling`.
    pub reason: String,
    /// A human-readable message.
    pub message: String,
    /// What was done or failed, e.g. `Scheduling` or `Binding`.
    pub action: String,
}

/// The deduplication key: client-go's `getEventKey` without the timestamp.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKey {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    type_: &'static str,
    reason: String,
    message: String,
}

impl EventKey {
    fn of(event: &NewEvent) -> Self {
        let o = &event.object;
        EventKey {
            namespace: o.namespace.clone().unwrap_or_default(),
            kind: o.kind.clone().unwrap_or_default(),
            name: o.name.clone().unwrap_or_default(),
            uid: o.uid.clone().unwrap_or_default(),
            type_: event.type_.as_str(),
            reason: event.reason.clone(),
            message: event.message.clone(),
        }
    }
}

/// What to write for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event object with this name, count 1.
    Create {
        /// Name of the Event object.
        name: String,
    },
    /// Raise the existing Event's count.
    Bump {
        /// Name of the Event object.
        name: String,
        /// The new count.
        count: i32,
    },
}

/// The dedup cache: key → (Event name, count), oldest evicted first.
#[derive(Debug, Default)]
pub struct EventCache {
    entries: BTreeMap<EventKey, (String, i32)>,
    order: VecDeque<EventKey>,
}

impl EventCache {
    /// Decides whether `event` is new or a repeat; `fresh_name` names a new Event.
    pub fn observe(&mut self, event: &NewEvent, fresh_name: impl FnOnce() -> String) -> Write {
        let key = EventKey::of(event);
        if let Some((name, count)) = self.entries.get_mut(&key) {
            *count = count.saturating_add(1);
            return Write::Bump {
                name: name.clone(),
                count: *count,
            };
        }
        let name = fresh_name();
        if self.entries.len() >= EVENT_CACHE_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key.clone(), (name.clone(), 1));
        self.order.push_back(key);
        Write::Create { name }
    }

    /// Forgets `event` (its Event object is gone), so the next one creates a new object.
    pub fn forget(&mut self, event: &NewEvent) {
        let key = EventKey::of(event);
        self.entries.remove(&key);
        self.order.retain(|k| k != &key);
    }
}

/// Hands events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<NewEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventRecorder {
    /// Starts the writer task for `component` (`source.component` and `reportingComponent`)
    /// on `instance` (`reportingInstance`, `source.host`).
    pub fn start(client: kube::Client, component: &str, instance: &str) -> EventRecorder {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            client,
            component: component.to_string(),
            instance: instance.to_string(),
            cache: EventCache::default(),
        };
        tokio::spawn(writer.run(rx));
        EventRecorder { tx, dropped }
    }

    /// Queues an event; never blocks. Dropped (and counted) when the queue is full.
    pub fn record(&self, event: NewEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Writer {
    client: kube::Client,
    component: String,
    instance: String,
    cache: EventCache,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<NewEvent>) {
        while let Some(event) = rx.recv().await {
            if let Err(err) = self.write(&event).await {
                tracing::warn!(error = %err, reason = %event.reason, "cannot write event");
            }
        }
    }

    async fn write(&mut self, event: &NewEvent) -> Result<(), kube::Error> {
        let namespace = event
            .object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = crate::now_timestamp();
        let object_name = event.object.name.clone().unwrap_or_default();
        let write = self.cache.observe(event, || {
            format!("{object_name}.{:x}", now.as_nanosecond().max(0))
        });
        match write {
            Write::Bump { name, count } => {
                let patch = serde_json::json!({
                    "count": count,
                    "lastTimestamp": Time(now),
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        self.cache.forget(event);
                        let Write::Create { name } = self.cache.observe(event, || {
                            format!("{object_name}.{:x}", now.as_nanosecond().max(0) + 1)
                        }) else {
                            return Ok(());
                        };
                        self.create(&api, &name, &namespace, event, now).await
                    }
                    Err(err) => Err(err),
                }
            }
            Write::Create { name } => self.create(&api, &name, &namespace, event, now).await,
        }
    }

    async fn create(
        &self,
        api: &Api<Event>,
        name: &str,
        namespace: &str,
        event: &NewEvent,
        now: jiff::Timestamp,
    ) -> Result<(), kube::Error> {
        let object = Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            involved_object: event.object.clone(),
            reason: Some(event.reason.clone()),
            message: Some(event.message.clone()),
            type_: Some(event.type_.as_str().into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            action: Some(event.action.clone()).filter(|a| !a.is_empty()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, message: &str) -> NewEvent {
        NewEvent {
            object: ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("ns".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            message: message.into(),
            action: "Scheduling".into(),
        }
    }

    #[test]
    fn repeats_bump_count_and_different_messages_create() {
        let mut cache = EventCache::default();
        assert_eq!(
            cache.observe(&ev("p", "m"), || "p.1".into()),
            Write::Create { name: "p.1".into() }
        );
        assert_eq!(
            cache.observe(&ev("p", "m"), || "p.2".into()),
            Write::Bump {
                name: "p.1".into(),
                count: 2
            }
        );
        assert_eq!(
            cache.observe(&ev("p", "m"), || "p.3".into()),
            Write::Bump {
                name: "p.1".into(),
                count: 3
            }
        );
        assert_eq!(
            cache.observe(&ev("p", "other"), || "p.4".into()),
            Write::Create { name: "p.4".into() }
        );
        assert_eq!(
            cache.observe(&ev("q", "m"), || "q.1".into()),
            Write::Create { name: "q.1".into() }
        );
        cache.forget(&ev("p", "m"));
        assert_eq!(
            cache.observe(&ev("p", "m"), || "p.5".into()),
            Write::Create { name: "p.5".into() }
        );
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = EventCache::default();
        for i in 0..EVENT_CACHE_MAX + 10 {
            cache.observe(&ev(&format!("p{i}"), "m"), || format!("p{i}.0"));
        }
        assert_eq!(cache.entries.len(), EVENT_CACHE_MAX);
        assert_eq!(cache.order.len(), EVENT_CACHE_MAX);
        // The oldest was evicted: it creates again.
        assert!(matches!(
            cache.observe(&ev("p0", "m"), || "new".into()),
            Write::Create { .. }
        ));
    }
}
