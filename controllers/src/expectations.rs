//! Expectations, kube-controller-manager's `UIDTrackingControllerExpectations`: after a
//! controller creates or deletes pods it must not act on the same owner again until its
//! informer has seen those changes, or a lagging cache would make it create (or delete)
//! twice. Here each owner remembers the pods it created and deleted (name and uid); it is
//! *satisfied* once every created one has been seen — an informer event for its uid
//! ([`Expectations::observed`]), or the cache holding it — and the cache holds none of the
//! deleted ones (absence is checked against the cache itself, so a watch relist that drops a
//! delete event cannot strand it), or after [`EXPECTATIONS_TIMEOUT`] (upstream's 5 minutes),
//! when the controller acts on what it sees.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long unmet expectations hold an owner back (upstream `ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// A pod by name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodId {
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
}

#[derive(Debug, Default)]
struct Pending {
    creates: Vec<PodId>,
    deletes: Vec<PodId>,
    since: Option<Instant>,
}

/// Per-owner expectations, keyed by the owner's key.
#[derive(Debug)]
pub struct Expectations<K> {
    owners: Mutex<HashMap<K, Pending>>,
}

impl<K> Default for Expectations<K> {
    fn default() -> Self {
        Expectations {
            owners: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether the cache holds a pod with this name *and* uid.
pub trait PodCache {
    /// The uid of the cached pod named `name` in the owner's namespace, if any.
    fn uid_of(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> PodCache for F {
    fn uid_of(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl<K: Clone + Eq + Hash> Expectations<K> {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<K, Pending>) -> T) -> T {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut owners)
    }

    /// `owner` created this pod.
    pub fn created(&self, owner: &K, pod: PodId) {
        self.with(|owners| {
            let pending = owners.entry(owner.clone()).or_default();
            pending.since.get_or_insert_with(Instant::now);
            pending.creates.push(pod);
        });
    }

    /// `owner` deleted this pod.
    pub fn deleted(&self, owner: &K, pod: PodId) {
        self.with(|owners| {
            let pending = owners.entry(owner.clone()).or_default();
            pending.since.get_or_insert_with(Instant::now);
            pending.deletes.push(pod);
        });
    }

    /// The informer saw the pod with this uid (created, changed or deleted): a create of it
    /// is met, even if the pod is gone again by the time the owner looks.
    pub fn observed(&self, owner: &K, uid: &str) {
        self.with(|owners| {
            if let Some(pending) = owners.get_mut(owner) {
                pending.creates.retain(|pod| pod.uid != uid);
            }
        });
    }

    /// Whether `owner` may act (`Ok`): every pod it created was seen and `cache` holds none it
    /// deleted. Met entries are dropped; expired expectations are dropped whole. `Err` holds
    /// how long until they expire: the owner must be looked at again by then at the latest.
    pub fn satisfied(&self, owner: &K, cache: &impl PodCache) -> Result<(), Duration> {
        self.with(|owners| {
            let Some(pending) = owners.get_mut(owner) else {
                return Ok(());
            };
            let age = pending
                .since
                .map_or(Duration::ZERO, |since| since.elapsed());
            if age >= EXPECTATIONS_TIMEOUT {
                owners.remove(owner);
                return Ok(());
            }
            pending
                .creates
                .retain(|pod| cache.uid_of(&pod.name).as_deref() != Some(pod.uid.as_str()));
            pending
                .deletes
                .retain(|pod| cache.uid_of(&pod.name).as_deref() == Some(pod.uid.as_str()));
            if pending.creates.is_empty() && pending.deletes.is_empty() {
                owners.remove(owner);
                Ok(())
            } else {
                Err(EXPECTATIONS_TIMEOUT - age)
            }
        })
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &K) {
        self.with(|owners| owners.remove(owner));
    }

    /// Owners with unmet expectations.
    pub fn len(&self) -> usize {
        self.with(|owners| owners.len())
    }

    /// Whether no owner waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn id(name: &str, uid: &str) -> PodId {
        PodId {
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn waits_until_the_cache_shows_creates_and_deletes() {
        let expectations = Expectations::default();
        let mut cache: BTreeMap<String, String> = [("old".to_string(), "u-old".to_string())]
            .into_iter()
            .collect();
        expectations.created(&"rs", id("new", "u-new"));
        expectations.deleted(&"rs", id("old", "u-old"));
        let view = |cache: &BTreeMap<String, String>| {
            let cache = cache.clone();
            move |name: &str| cache.get(name).cloned()
        };
        assert!(expectations.satisfied(&"rs", &view(&cache)).is_err());
        cache.insert("new".into(), "u-new".into());
        assert!(expectations.satisfied(&"rs", &view(&cache)).is_err());
        // A pod of the same name but another uid is not the deleted one.
        cache.insert("old".into(), "u-recreated".into());
        assert_eq!(expectations.satisfied(&"rs", &view(&cache)), Ok(()));
        assert!(expectations.is_empty());
        assert_eq!(expectations.satisfied(&"other", &view(&cache)), Ok(()));
    }

    #[test]
    fn a_created_pod_seen_by_an_event_counts_even_once_it_is_gone() {
        let expectations = Expectations::default();
        expectations.created(&"rs", id("brief", "u-brief"));
        let empty = |_: &str| None;
        let wait = expectations.satisfied(&"rs", &empty).unwrap_err();
        assert!(wait <= EXPECTATIONS_TIMEOUT && wait > EXPECTATIONS_TIMEOUT / 2);
        expectations.observed(&"rs", "u-other");
        assert!(expectations.satisfied(&"rs", &empty).is_err());
        expectations.observed(&"rs", "u-brief");
        assert_eq!(expectations.satisfied(&"rs", &empty), Ok(()));
    }
}
