//! Jepsen-style chaos suite for skiff (issue 4): histories, history parsers and checkers; the
//! fault-injecting harness (`skiff-chaos`) is built on top of these.
//!
//! - [`history`]: operations and `history.jsonl`, with Jepsen's field names and semantics;
//! - [`edn`] and [`parse`]: readers for Jepsen logs and EDN histories (the checker's corpus);
//! - [`checker`]: the per-key linearizability checker (Wing–Gong / Lowe search, Porcupine style).

pub mod checker;
pub mod edn;
pub mod history;
pub mod parse;
