//! The garbage collector's pure part (kube-controller-manager's `GraphBuilder` and the
//! decisions of `attemptToDeleteItem`, `processDeletingDependentsItem` and
//! `attemptToOrphanWorker`): a graph of the observed objects' metadata (uid, kind, namespace,
//! name, ownerReferences, deletionTimestamp, finalizers) that says which objects to look at
//! after each change, and [`attempt`], which turns one object, its dependents and the state of
//! its owners into one [`Action`]. No IO: the shell (`super`) reads the objects, verifies absent
//! owners with a live GET and carries the actions out.

use std::collections::{BTreeSet, HashMap, HashSet};

/// The finalizer of an `Orphan` deletion (`metav1.FinalizerOrphanDependents`).
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer of a `Foreground` deletion (`metav1.FinalizerDeleteDependents`).
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// A deletion's propagation policy (`metav1.DeletionPropagation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Keep the dependents, without their references to the object.
    Orphan,
    /// Delete the object now; the collector deletes its dependents afterwards.
    Background,
    /// Keep the object, being deleted, until its blocking dependents are gone.
    Foreground,
}

/// One `metadata.ownerReferences` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerRef {
    /// The owner's `apiVersion` (its group names the owner's resource).
    pub api_version: String,
    pub kind: String,
    /// The owner's name, in the dependent's namespace unless the owner is cluster-scoped.
    pub name: String,
    pub uid: String,
    /// `blockOwnerDeletion: true`: a foreground deletion of the owner waits for this object.
    pub block_owner_deletion: bool,
}

/// What the collector keeps of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub uid: String,
    pub api_version: String,
    pub kind: String,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
    pub owners: Vec<OwnerRef>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub finalizers: Vec<String>,
    /// The watch that reported it (`<apiVersion>/<plural>`), so a relist can drop what it
    /// no longer lists.
    pub source: String,
}

impl Node {
    fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }

    /// Being deleted in the foreground: waiting for its blocking dependents.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FINALIZER_FOREGROUND)
    }

    /// Being deleted with its dependents orphaned.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.has_finalizer(FINALIZER_ORPHAN)
    }

    /// The reference from this object to `owner`, if any.
    pub fn reference_to(&self, owner: &str) -> Option<&OwnerRef> {
        self.owners.iter().find(|r| r.uid == owner)
    }
}

/// The observed objects by uid, and who depends on whom.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → the uids of the objects that reference it (the owner may be unobserved).
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The object `uid`, if observed.
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// How many objects are observed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing is observed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The observed objects that reference `owner`.
    pub fn dependents_of(&self, owner: &str) -> Vec<&Node> {
        self.dependents
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.nodes.get(uid))
            .collect()
    }

    /// Whether any observed object references `owner`.
    pub fn has_dependents(&self, owner: &str) -> bool {
        !self.dependents_of(owner).is_empty()
    }

    fn link(&mut self, node: &Node) {
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(node.uid.clone());
        }
    }

    fn unlink(&mut self, node: &Node) {
        for owner in &node.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(&node.uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
    }

    /// Whether `owner` (referenced by a dependent in `namespace`) is observed where the
    /// dependent expects it: same uid and name, and the dependent's namespace unless the owner
    /// is cluster-scoped.
    fn owner_observed(&self, reference: &OwnerRef, namespace: Option<&str>) -> Option<&Node> {
        self.nodes.get(&reference.uid).filter(|owner| {
            owner.name == reference.name
                && owner.kind == reference.kind
                && (owner.namespace.is_none() || owner.namespace.as_deref() == namespace)
        })
    }

    /// Whether `node` should be looked at: an owner is unobserved or deletes its dependents,
    /// or the object itself waits for the collector (orphan or foreground finalizer).
    fn needs_attention(&self, node: &Node) -> bool {
        node.orphaning()
            || node.deleting_dependents()
            || node.owners.iter().any(|r| {
                self.owner_observed(r, node.namespace.as_deref())
                    .is_none_or(Node::deleting_dependents)
            })
    }

    /// Records an added or changed object; returns the uids to look at (upstream
    /// `processGraphChanges`): the object if it needs the collector, its dependents when it
    /// starts deleting them, owners waiting for dependents whose references changed.
    pub fn upsert(&mut self, node: Node) -> Vec<String> {
        let mut queue = BTreeSet::new();
        let old = self.nodes.remove(&node.uid);
        if let Some(old) = &old {
            self.unlink(old);
            if old.owners != node.owners {
                // An owner waiting for its dependents may have lost a blocking one.
                for r in &old.owners {
                    if self
                        .nodes
                        .get(&r.uid)
                        .is_some_and(Node::deleting_dependents)
                    {
                        queue.insert(r.uid.clone());
                    }
                }
            }
        }
        self.link(&node);
        let changed = old.as_ref() != Some(&node);
        if changed && self.needs_attention(&node) {
            queue.insert(node.uid.clone());
        }
        let starts_deleting_dependents =
            node.deleting_dependents() && !old.as_ref().is_some_and(Node::deleting_dependents);
        let starts_orphaning = node.orphaning() && !old.as_ref().is_some_and(Node::orphaning);
        if starts_deleting_dependents {
            for dependent in self.dependents.get(&node.uid).into_iter().flatten() {
                queue.insert(dependent.clone());
            }
        }
        if starts_orphaning || starts_deleting_dependents {
            queue.insert(node.uid.clone());
        }
        self.nodes.insert(node.uid.clone(), node);
        queue.into_iter().collect()
    }

    /// Records a deleted object; returns its dependents (their owner is gone) and its owners
    /// that wait for their dependents.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        self.unlink(&node);
        let mut queue: BTreeSet<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for r in &node.owners {
            if self
                .nodes
                .get(&r.uid)
                .is_some_and(Node::deleting_dependents)
            {
                queue.insert(r.uid.clone());
            }
        }
        queue.into_iter().collect()
    }

    /// After a relist of `source`: forgets its objects not in `seen` (deleted while the watch
    /// was down) and returns the uids to look at.
    pub fn retain_source(&mut self, source: &str, seen: &HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.source == source && !seen.contains(&n.uid))
            .map(|n| n.uid.clone())
            .collect();
        let mut queue = BTreeSet::new();
        for uid in gone {
            queue.extend(self.remove(&uid));
        }
        queue.into_iter().collect()
    }

    /// The observed dependents of `owner` that block its deletion (`blockOwnerDeletion`).
    fn blocking_dependents_of(&self, owner: &str) -> Vec<&Node> {
        self.dependents_of(owner)
            .into_iter()
            .filter(|d| {
                d.reference_to(owner)
                    .is_some_and(|r| r.block_owner_deletion)
            })
            .collect()
    }

    /// Whether `from`, deleting its dependents, waits (through blocking dependents that also
    /// delete theirs) for `target`: a foreground deletion cycle. A search over each object at
    /// most once.
    pub fn waits_on(&self, from: &str, target: &str) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(uid) = stack.pop() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            for dep in self.blocking_dependents_of(&uid) {
                if dep.uid == target {
                    return true;
                }
                if dep.deleting_dependents() {
                    stack.push(dep.uid.clone());
                }
            }
        }
        false
    }

    /// Whether the observed object `uid` needs the collector: an owner the graph does not
    /// hold where its reference points, or one deleting its dependents, or an orphan or
    /// foreground finalizer of its own.
    pub fn wants_attention(&self, uid: &str) -> bool {
        self.nodes.get(uid).is_some_and(|n| self.needs_attention(n))
    }

    /// Every object that needs the collector now (a periodic sweep: nothing is lost to a full
    /// queue or a failed pass).
    pub fn sweep(&self) -> Vec<String> {
        let mut uids: Vec<String> = self
            .nodes
            .values()
            .filter(|n| self.needs_attention(n))
            .map(|n| n.uid.clone())
            .collect();
        uids.sort();
        uids
    }
}

/// What a live read found of one owner (upstream `classifyReferences`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with the referenced uid and is not deleting its dependents.
    Solid,
    /// Exists and is being deleted in the foreground.
    WaitingForDependents,
    /// No object of that name, or one with another uid (verified by a live GET).
    Absent,
}

/// The one thing to do for an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing (a live owner, or no owners).
    Nothing,
    /// Remove the references to these owner uids (absent owners, or owners waiting for
    /// dependents, when a solid owner keeps the object).
    RemoveOwnerRefs(Vec<String>),
    /// Delete the object (precondition: its uid) with this propagation policy.
    Delete(Propagation),
    /// Make the object's owner references non-blocking, then delete it in the foreground
    /// (an ownership cycle in which a dependent is also deleting its dependents).
    UnblockThenDeleteForeground,
    /// Remove the object's references from these dependents, then its `orphan` finalizer.
    Orphan(Vec<String>),
    /// Remove this finalizer from the object (its foreground deletion is done).
    RemoveFinalizer(&'static str),
    /// Look at these dependents (the object waits for them to go).
    Enqueue(Vec<String>),
    /// Make these dependents' references to the object non-blocking: each deletes its own
    /// dependents in the foreground and waits, through them, for the object (a cycle).
    UnblockDependents(Vec<String>),
}

/// Decides for `item` (as just read live) given the graph (its dependents) and the verified
/// state of each of its owners (`owners[i]` for `item.owners[i]`; ignored when the item is
/// being deleted). Upstream's `attemptToDeleteItem`, `processDeletingDependentsItem` and
/// `attemptToOrphanWorker` in one function; each call is one bounded step, so ownership
/// cycles never loop, and a foreground deletion waiting on itself around a cycle is broken.
pub fn attempt(graph: &Graph, item: &Node, owners: &[OwnerState]) -> Action {
    let dependents = graph.dependents_of(&item.uid);
    if item.orphaning() {
        let mut uids: Vec<String> = dependents.iter().map(|d| d.uid.clone()).collect();
        uids.sort();
        return Action::Orphan(uids);
    }
    if item.deleting_dependents() {
        let blocking = graph.blocking_dependents_of(&item.uid);
        if blocking.is_empty() {
            return Action::RemoveFinalizer(FINALIZER_FOREGROUND);
        }
        let mut cyclic: Vec<String> = blocking
            .iter()
            .filter(|d| d.deleting_dependents() && graph.waits_on(&d.uid, &item.uid))
            .map(|d| d.uid.clone())
            .collect();
        if !cyclic.is_empty() {
            cyclic.sort();
            return Action::UnblockDependents(cyclic);
        }
        let mut uids: Vec<String> = blocking
            .iter()
            .filter(|d| !d.deleting_dependents())
            .map(|d| d.uid.clone())
            .collect();
        uids.sort();
        return Action::Enqueue(uids);
    }
    if item.deleting || item.owners.is_empty() {
        return Action::Nothing;
    }
    let state = |i: usize| owners.get(i).copied().unwrap_or(OwnerState::Solid);
    let mut solid = false;
    let mut dangling = Vec::new();
    let mut waiting = Vec::new();
    for (i, r) in item.owners.iter().enumerate() {
        match state(i) {
            OwnerState::Solid => solid = true,
            OwnerState::Absent => dangling.push(r.uid.clone()),
            OwnerState::WaitingForDependents => waiting.push(r.uid.clone()),
        }
    }
    if solid {
        if dangling.is_empty() && waiting.is_empty() {
            return Action::Nothing;
        }
        dangling.extend(waiting);
        return Action::RemoveOwnerRefs(dangling);
    }
    if !waiting.is_empty() && !dependents.is_empty() {
        if dependents.iter().any(|d| d.deleting_dependents()) {
            return Action::UnblockThenDeleteForeground;
        }
        return Action::Delete(Propagation::Foreground);
    }
    let policy = if item.finalizers.iter().any(|f| f == FINALIZER_ORPHAN) {
        Propagation::Orphan
    } else if item.finalizers.iter().any(|f| f == FINALIZER_FOREGROUND) {
        Propagation::Foreground
    } else {
        Propagation::Background
    };
    Action::Delete(policy)
}

#[cfg(test)]
mod tests;
