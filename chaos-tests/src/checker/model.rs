//! Sequential specifications the linearizability search checks histories against.
//!
//! A model is a deterministic state machine: [`Model::step`] says whether an operation, with the
//! outcome the history recorded, can take effect in a state, and what state follows. Indeterminate
//! outcomes are encoded in the operation itself (e.g. [`RegisterOp::CasUnknown`]) and are legal in
//! every state, which is what lets the search place them at the end of time (= never happened).
//!
//! Both models describe one key: the checker partitions histories by key first, so the key-value
//! map model is the product of independent [`KvModel`]s (P-compositionality).

use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use crate::history::Value;

/// A sequential specification.
pub(crate) trait Model {
    /// The state; compared and hashed for memoisation.
    type State: Clone + Eq + Hash;
    /// An operation together with its recorded outcome.
    type Op;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `op`, or `None` if `op` cannot have produced its recorded outcome in
    /// `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;

    /// True only if `step` never changes the state when it succeeds (reads). The search
    /// linearizes such operations as soon as they are legal, without trying to postpone them.
    fn is_read_only(&self, op: &Self::Op) -> bool;

    /// Heap bytes a state holds beyond its inline size (for the memo's memory budget).
    fn heap_bytes(&self, _state: &Self::State) -> usize {
        0
    }

    /// A short human-readable rendering of a state.
    fn describe_state(&self, state: &Self::State) -> String;
}

/// Interned register value: 0 is "absent".
pub(crate) type ValueId = u32;
/// The absent register.
pub(crate) const ABSENT: ValueId = 0;

/// A register that starts absent; values are interned to small integers.
#[derive(Debug, Default)]
pub(crate) struct RegisterModel {
    values: Vec<Value>,
    ids: HashMap<Value, ValueId>,
}

/// A register operation with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegisterOp {
    /// A read that returned this value (`ABSENT` = nil).
    Read(ValueId),
    /// A write (acknowledged or indeterminate: a write is legal in every state).
    Write(ValueId),
    /// A cas that succeeded: legal iff the register is present and equals `from`.
    CasOk { from: ValueId, to: ValueId },
    /// A cas whose compare failed: legal iff the register is absent or differs from `from`.
    CasFail { from: ValueId },
    /// A cas with unknown outcome: always legal, sets `to` iff present and equal to `from`.
    CasUnknown { from: ValueId, to: ValueId },
}

impl RegisterModel {
    pub(crate) fn new() -> RegisterModel {
        RegisterModel::default()
    }

    /// The id of a value; `null` is [`ABSENT`].
    pub(crate) fn intern(&mut self, v: &Value) -> ValueId {
        if v.is_null() {
            return ABSENT;
        }
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        self.values.push(v.clone());
        let id = self.values.len() as ValueId;
        self.ids.insert(v.clone(), id);
        id
    }
}

impl Model for RegisterModel {
    type State = ValueId;
    type Op = RegisterOp;

    fn init(&self) -> ValueId {
        ABSENT
    }

    fn step(&self, &state: &ValueId, op: &RegisterOp) -> Option<ValueId> {
        match *op {
            RegisterOp::Read(v) => (state == v).then_some(state),
            RegisterOp::Write(v) => Some(v),
            RegisterOp::CasOk { from, to } => (state != ABSENT && state == from).then_some(to),
            RegisterOp::CasFail { from } => (state == ABSENT || state != from).then_some(state),
            RegisterOp::CasUnknown { from, to } => Some(if state != ABSENT && state == from {
                to
            } else {
                state
            }),
        }
    }

    fn is_read_only(&self, op: &RegisterOp) -> bool {
        matches!(op, RegisterOp::Read(_) | RegisterOp::CasFail { .. })
    }

    fn describe_state(&self, &state: &ValueId) -> String {
        match state
            .checked_sub(1)
            .and_then(|i| self.values.get(i as usize))
        {
            Some(v) => v.to_string(),
            None => "absent".to_owned(),
        }
    }
}

/// One key of a string key-value map, Porcupine's `kv` model: an absent key reads as `""`,
/// `put` replaces the value and `append` concatenates to it.
#[derive(Debug, Default)]
pub(crate) struct KvModel;

/// A key-value operation with its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KvOp {
    /// A get that returned this string.
    Get(Rc<str>),
    /// A put (acknowledged or indeterminate).
    Put(Rc<str>),
    /// An append (acknowledged or indeterminate).
    Append(Rc<str>),
}

impl Model for KvModel {
    type State = Rc<str>;
    type Op = KvOp;

    fn init(&self) -> Rc<str> {
        Rc::from("")
    }

    fn step(&self, state: &Rc<str>, op: &KvOp) -> Option<Rc<str>> {
        match op {
            KvOp::Get(v) => (**state == **v).then(|| state.clone()),
            KvOp::Put(v) => Some(v.clone()),
            KvOp::Append(v) => {
                let mut s = String::with_capacity(state.len() + v.len());
                s.push_str(state);
                s.push_str(v);
                Some(Rc::from(s))
            }
        }
    }

    fn is_read_only(&self, op: &KvOp) -> bool {
        matches!(op, KvOp::Get(_))
    }

    fn heap_bytes(&self, state: &Rc<str>) -> usize {
        // Counted in full even when shared: an over-estimate is the safe side of a budget.
        state.len() + 16
    }

    fn describe_state(&self, state: &Rc<str>) -> String {
        const MAX: usize = 80;
        if state.chars().count() <= MAX {
            format!("{:?}", &**state)
        } else {
            let head: String = state.chars().take(MAX).collect();
            format!("{head:?}… ({} bytes)", state.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_semantics() {
        let mut m = RegisterModel::new();
        let one = m.intern(&1.into());
        let two = m.intern(&2.into());
        assert_eq!(m.intern(&Value::Null), ABSENT);
        assert_eq!(m.intern(&1.into()), one);
        let s = m.init();
        assert_eq!(m.step(&s, &RegisterOp::Read(ABSENT)), Some(ABSENT));
        assert_eq!(m.step(&s, &RegisterOp::Read(one)), None);
        // A cas never succeeds on an absent register, and its compare fails there.
        assert_eq!(
            m.step(
                &s,
                &RegisterOp::CasOk {
                    from: ABSENT,
                    to: one
                }
            ),
            None
        );
        assert_eq!(m.step(&s, &RegisterOp::CasFail { from: one }), Some(ABSENT));
        assert_eq!(
            m.step(&s, &RegisterOp::CasUnknown { from: one, to: two }),
            Some(ABSENT)
        );
        let s = m.step(&s, &RegisterOp::Write(one)).unwrap();
        assert_eq!(
            m.step(&s, &RegisterOp::CasOk { from: one, to: two }),
            Some(two)
        );
        assert_eq!(m.step(&s, &RegisterOp::CasFail { from: one }), None);
        assert_eq!(m.step(&s, &RegisterOp::CasFail { from: two }), Some(one));
        assert_eq!(
            m.step(&s, &RegisterOp::CasUnknown { from: one, to: two }),
            Some(two)
        );
        assert_eq!(m.describe_state(&s), "1");
        assert_eq!(m.describe_state(&ABSENT), "absent");
    }

    #[test]
    fn kv_semantics() {
        let m = KvModel;
        let s = m.init();
        assert!(m.step(&s, &KvOp::Get(Rc::from(""))).is_some());
        let s = m.step(&s, &KvOp::Append(Rc::from("x 0 0 y"))).unwrap();
        let s = m.step(&s, &KvOp::Append(Rc::from("x 1 0 y"))).unwrap();
        assert_eq!(&*s, "x 0 0 yx 1 0 y");
        assert!(m.step(&s, &KvOp::Get(Rc::from("x 0 0 y"))).is_none());
        let s = m.step(&s, &KvOp::Put(Rc::from("z"))).unwrap();
        assert_eq!(&*s, "z");
    }
}
