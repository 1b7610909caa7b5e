//! The graph and [`attempt`] without a cluster: single decisions, then a small simulated API
//! server (finalizers and propagation policies as kube-apiserver applies them) driven to
//! quiescence through the same queue discipline as the shell — background, orphan and
//! foreground deletions, chains, two owners, and ownership cycles that must end.

use std::collections::{BTreeMap, VecDeque};

use super::*;

fn owner_ref(owner: &Node, block: bool) -> OwnerRef {
    OwnerRef {
        api_version: owner.api_version.clone(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        block_owner_deletion: block,
    }
}

fn cm(name: &str, owners: &[OwnerRef]) -> Node {
    Node {
        uid: format!("uid-{name}"),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("ns".into()),
        name: name.into(),
        owners: owners.to_vec(),
        deleting: false,
        finalizers: Vec::new(),
        source: "v1/configmaps".into(),
    }
}

fn uid(name: &str) -> String {
    format!("uid-{name}")
}

#[test]
fn a_dependent_of_an_absent_owner_is_queued_and_deleted_in_the_background() {
    let mut g = Graph::new();
    let ghost = cm("ghost", &[]);
    let dep = cm("dep", &[owner_ref(&ghost, false)]);
    assert_eq!(g.upsert(dep.clone()), vec![uid("dep")]);
    assert_eq!(
        attempt(&g, &dep, &[OwnerState::Absent]),
        Action::Delete(Propagation::Background)
    );
    // Its own finalizers choose the policy, as upstream.
    let mut held = dep.clone();
    held.finalizers = vec![FINALIZER_ORPHAN.into()];
    assert_eq!(
        attempt(&g, &held, &[OwnerState::Absent]),
        Action::Delete(Propagation::Orphan)
    );
}

#[test]
fn a_live_owner_keeps_its_dependent_and_dangling_references_are_removed() {
    let mut g = Graph::new();
    let owner = cm("owner", &[]);
    let other = cm("other", &[]);
    assert!(g.upsert(owner.clone()).is_empty());
    let dep = cm("dep", &[owner_ref(&owner, true)]);
    assert!(
        g.upsert(dep.clone()).is_empty(),
        "an observed live owner needs nothing"
    );
    assert_eq!(attempt(&g, &dep, &[OwnerState::Solid]), Action::Nothing);
    let two = cm("two", &[owner_ref(&owner, true), owner_ref(&other, true)]);
    assert_eq!(
        attempt(&g, &two, &[OwnerState::Solid, OwnerState::Absent]),
        Action::RemoveOwnerRefs(vec![uid("other")])
    );
    assert_eq!(
        attempt(
            &g,
            &two,
            &[OwnerState::WaitingForDependents, OwnerState::Solid]
        ),
        Action::RemoveOwnerRefs(vec![uid("owner")])
    );
    assert_eq!(attempt(&g, &owner, &[]), Action::Nothing);
}

#[test]
fn an_owner_in_another_namespace_is_not_taken_for_the_referenced_one() {
    let mut g = Graph::new();
    let mut elsewhere = cm("owner", &[]);
    elsewhere.namespace = Some("other".into());
    g.upsert(elsewhere.clone());
    let dep = cm("dep", &[owner_ref(&elsewhere, false)]);
    assert_eq!(g.upsert(dep), vec![uid("dep")], "verified by a live read");
}

#[test]
fn removing_an_owner_queues_its_dependents_and_waiting_owners() {
    let mut g = Graph::new();
    let mut owner = cm("owner", &[]);
    owner.deleting = true;
    owner.finalizers = vec![FINALIZER_FOREGROUND.into()];
    assert_eq!(g.upsert(owner.clone()), vec![uid("owner")]);
    let mid = cm("mid", &[owner_ref(&owner, true)]);
    assert_eq!(g.upsert(mid.clone()), vec![uid("mid")]);
    let leaf = cm("leaf", &[owner_ref(&mid, true)]);
    assert!(g.upsert(leaf).is_empty());
    assert_eq!(g.remove(&uid("mid")), vec![uid("leaf"), uid("owner")]);
    assert!(g.remove(&uid("nothing")).is_empty());
    assert_eq!(g.len(), 2);
}

#[test]
fn a_relist_forgets_what_it_no_longer_lists() {
    let mut g = Graph::new();
    let owner = cm("owner", &[]);
    g.upsert(owner.clone());
    g.upsert(cm("dep", &[owner_ref(&owner, false)]));
    let seen: HashSet<String> = [uid("dep")].into();
    assert_eq!(g.retain_source("v1/configmaps", &seen), vec![uid("dep")]);
    assert!(g.get(&uid("owner")).is_none());
    assert_eq!(g.sweep(), vec![uid("dep")]);
}

/// kube-apiserver and the collector's shell in miniature: objects with finalizers, deletes
/// with a propagation policy, and a deduplicating queue of uids.
struct Sim {
    objects: BTreeMap<String, Node>,
    graph: Graph,
    queue: VecDeque<String>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            objects: BTreeMap::new(),
            graph: Graph::new(),
            queue: VecDeque::new(),
        }
    }

    fn enqueue(&mut self, uids: Vec<String>) {
        for uid in uids {
            if !self.queue.contains(&uid) {
                self.queue.push_back(uid);
            }
        }
    }

    /// A write as the API server stores it: deleting and without finalizers = gone.
    fn write(&mut self, node: Node) {
        if node.deleting && node.finalizers.is_empty() {
            self.objects.remove(&node.uid);
            let queued = self.graph.remove(&node.uid);
            self.enqueue(queued);
        } else {
            self.objects.insert(node.uid.clone(), node.clone());
            let queued = self.graph.upsert(node);
            self.enqueue(queued);
        }
    }

    fn create(&mut self, node: Node) {
        self.write(node);
    }

    /// `DELETE` with a policy (the registry's `finalizers_for_deletion`, simplified).
    fn delete(&mut self, uid: &str, policy: Propagation) {
        let Some(mut node) = self.objects.get(uid).cloned() else {
            return;
        };
        node.finalizers
            .retain(|f| f != FINALIZER_ORPHAN && f != FINALIZER_FOREGROUND);
        match policy {
            Propagation::Orphan => node.finalizers.push(FINALIZER_ORPHAN.into()),
            Propagation::Foreground => node.finalizers.push(FINALIZER_FOREGROUND.into()),
            Propagation::Background => {}
        }
        node.deleting = true;
        self.write(node);
    }

    fn owner_state(&self, item: &Node, r: &OwnerRef) -> OwnerState {
        match self.objects.get(&r.uid) {
            Some(o) if o.name == r.name && o.namespace == item.namespace => {
                if o.deleting_dependents() {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Absent,
        }
    }

    /// One worker pass over `uid`, as the shell runs it.
    fn step(&mut self, uid: &str) {
        let Some(item) = self.objects.get(uid).cloned() else {
            return;
        };
        let owners: Vec<OwnerState> = item
            .owners
            .iter()
            .map(|r| self.owner_state(&item, r))
            .collect();
        match attempt(&self.graph, &item, &owners) {
            Action::Nothing => {}
            Action::RemoveOwnerRefs(uids) => {
                let mut next = item;
                next.owners.retain(|r| !uids.contains(&r.uid));
                self.write(next);
            }
            Action::Delete(policy) => self.delete(uid, policy),
            Action::UnblockThenDeleteForeground => {
                let mut next = item;
                for r in &mut next.owners {
                    r.block_owner_deletion = false;
                }
                self.write(next);
                self.delete(uid, Propagation::Foreground);
            }
            Action::Orphan(dependents) => {
                for d in dependents {
                    if let Some(mut dep) = self.objects.get(&d).cloned() {
                        dep.owners.retain(|r| r.uid != uid);
                        self.write(dep);
                    }
                }
                let mut next = item;
                next.finalizers.retain(|f| f != FINALIZER_ORPHAN);
                self.write(next);
            }
            Action::RemoveFinalizer(finalizer) => {
                let mut next = item;
                next.finalizers.retain(|f| f != finalizer);
                self.write(next);
            }
            Action::Enqueue(uids) => self.enqueue(uids),
            Action::UnblockDependents(uids) => {
                for d in uids {
                    if let Some(mut dep) = self.objects.get(&d).cloned() {
                        for r in &mut dep.owners {
                            if r.uid == uid {
                                r.block_owner_deletion = false;
                            }
                        }
                        self.write(dep);
                    }
                }
            }
        }
    }

    /// Runs the queue dry; panics past `max` passes (a hang).
    fn settle(&mut self, max: usize) -> usize {
        let mut passes = 0;
        while let Some(uid) = self.queue.pop_front() {
            passes += 1;
            assert!(
                passes <= max,
                "no quiescence after {max} passes: {:?}",
                self.objects
            );
            self.step(&uid);
        }
        passes
    }

    fn alive(&self, name: &str) -> bool {
        self.objects.contains_key(&uid(name))
    }
}

/// owner ← mid ← leaf (blocking references), plus a second dependent of the owner.
fn chain(sim: &mut Sim) {
    let owner = cm("owner", &[]);
    let mid = cm("mid", &[owner_ref(&owner, true)]);
    let leaf = cm("leaf", &[owner_ref(&mid, true)]);
    let side = cm("side", &[owner_ref(&owner, false)]);
    for n in [owner, mid, leaf, side] {
        sim.create(n);
    }
    sim.settle(10);
}

#[test]
fn background_deletion_collects_the_whole_chain() {
    let mut sim = Sim::new();
    chain(&mut sim);
    sim.delete(&uid("owner"), Propagation::Background);
    assert!(!sim.alive("owner"));
    sim.settle(50);
    assert!(sim.objects.is_empty(), "{:?}", sim.objects);
}

#[test]
fn orphan_deletion_keeps_the_dependents_without_the_reference() {
    let mut sim = Sim::new();
    chain(&mut sim);
    sim.delete(&uid("owner"), Propagation::Orphan);
    assert!(sim.alive("owner"), "held by its orphan finalizer");
    sim.settle(50);
    assert!(!sim.alive("owner"));
    for name in ["mid", "side"] {
        assert!(sim.objects[&uid(name)].owners.is_empty(), "{name}");
    }
    assert_eq!(sim.objects[&uid("leaf")].owners.len(), 1, "not the owner's");
}

#[test]
fn foreground_deletion_waits_for_blocking_dependents() {
    let mut sim = Sim::new();
    chain(&mut sim);
    sim.delete(&uid("owner"), Propagation::Foreground);
    assert!(sim.alive("owner"));
    let mut passes = 0;
    while let Some(next) = sim.queue.pop_front() {
        passes += 1;
        assert!(passes < 100, "no quiescence");
        sim.step(&next);
        if !sim.alive("owner") {
            assert!(!sim.alive("mid") && !sim.alive("leaf"), "owner went first");
        }
        if !sim.alive("mid") {
            assert!(!sim.alive("leaf"), "mid went before its blocking dependent");
        }
    }
    assert!(sim.objects.is_empty(), "{:?}", sim.objects);
}

#[test]
fn a_dependent_with_a_second_owner_survives_with_one_reference() {
    let mut sim = Sim::new();
    let a = cm("a", &[]);
    let b = cm("b", &[]);
    let dep = cm("dep", &[owner_ref(&a, true), owner_ref(&b, true)]);
    for n in [a, b, dep] {
        sim.create(n);
    }
    sim.delete(&uid("a"), Propagation::Background);
    sim.settle(20);
    let left = &sim.objects[&uid("dep")];
    assert_eq!(
        left.owners
            .iter()
            .map(|r| r.uid.as_str())
            .collect::<Vec<_>>(),
        ["uid-b"]
    );
}

#[test]
fn a_dependent_whose_owner_never_existed_is_collected() {
    let mut sim = Sim::new();
    let ghost = cm("ghost", &[]);
    sim.create(cm("orphaned", &[owner_ref(&ghost, false)]));
    sim.settle(10);
    assert!(sim.objects.is_empty());
}

/// Two cycles: a ↔ b, and c → d → e → c, all references blocking.
fn cycles(sim: &mut Sim) {
    let b0 = cm("b", &[]);
    let a = cm("a", &[owner_ref(&b0, true)]);
    let b = Node {
        owners: vec![owner_ref(&a, true)],
        ..b0
    };
    let e0 = cm("e", &[]);
    let c = cm("c", &[owner_ref(&e0, true)]);
    let d = cm("d", &[owner_ref(&c, true)]);
    let e = Node {
        owners: vec![owner_ref(&d, true)],
        ..e0
    };
    for n in [a, b, c, d, e] {
        sim.create(n);
    }
}

#[test]
fn a_cycle_of_live_objects_stays_and_the_queue_drains() {
    let mut sim = Sim::new();
    cycles(&mut sim);
    sim.settle(20);
    assert_eq!(sim.objects.len(), 5);
    assert!(sim.graph.sweep().is_empty());
}

#[test]
fn deleting_into_a_cycle_ends_in_every_policy() {
    for policy in [
        Propagation::Background,
        Propagation::Foreground,
        Propagation::Orphan,
    ] {
        let mut sim = Sim::new();
        cycles(&mut sim);
        sim.settle(20);
        sim.delete(&uid("a"), policy);
        sim.delete(&uid("c"), policy);
        sim.settle(200);
        let left: Vec<&str> = sim.objects.values().map(|n| n.name.as_str()).collect();
        match policy {
            Propagation::Orphan => assert_eq!(left, ["b", "d", "e"], "{policy:?}"),
            _ => assert!(left.is_empty(), "{policy:?}: {left:?}"),
        }
    }
}

#[test]
fn foreground_deletion_of_a_cycle_member_whose_dependent_also_waits_unblocks() {
    // a ↔ b, both deleted in the foreground at once: each waits for the other.
    let mut sim = Sim::new();
    cycles(&mut sim);
    sim.settle(20);
    sim.delete(&uid("a"), Propagation::Foreground);
    sim.delete(&uid("b"), Propagation::Foreground);
    sim.settle(200);
    assert!(!sim.alive("a") && !sim.alive("b"), "{:?}", sim.objects);
}
