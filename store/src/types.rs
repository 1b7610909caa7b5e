//! Types shared by the Raft glue: the openraft type configuration, the replicated
//! command, its reply, and what the cluster knows about a member.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A member's identity, as etcd shows it (`member list` prints it in hex).
pub type MemberId = u64;

/// What Raft needs to reach a member, plus the name it was created with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Name from `--initial-cluster` (empty for a member added at runtime until it starts).
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// Attributes a running member publishes through Raft when it starts (like etcd).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A command replicated through the Raft log. KV requests travel as their etcd protobuf
/// encoding, so the state machine applies exactly what the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(Vec<u8>),
    DeleteRange(Vec<u8>),
    Txn(Vec<u8>),
    Compact(Vec<u8>),
    PublishMember {
        id: MemberId,
        attrs: MemberAttrs,
    },
    /// Several client commands proposed together (one log entry, one fsync); applied in
    /// order, each with its own revision.
    Batch(Vec<Command>),
    /// An etcd `AlarmRequest` (ACTIVATE or DEACTIVATE), protobuf-encoded.
    Alarm(Vec<u8>),
    /// An etcd `LeaseGrantRequest` (ID chosen and TTL raised to the minimum by the member
    /// that received it), protobuf-encoded.
    LeaseGrant(Vec<u8>),
    /// An etcd `LeaseRevokeRequest`, protobuf-encoded: from a client, or from the leader
    /// when the lease expired.
    LeaseRevoke(Vec<u8>),
}

impl Command {
    /// Approximate encoded size, for batch limits.
    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Put(b) | Command::DeleteRange(b) | Command::Txn(b) | Command::Compact(b) => {
                b.len() + 8
            }
            Command::Alarm(b) => b.len() + 8,
            Command::LeaseGrant(b) | Command::LeaseRevoke(b) => b.len() + 8,
            Command::PublishMember { attrs, .. } => {
                64 + attrs.name.len() + attrs.client_urls.iter().map(String::len).sum::<usize>()
            }
            Command::Batch(commands) => {
                commands.iter().map(Command::encoded_len).sum::<usize>() + 8
            }
        }
    }
}

/// The state machine's answer to one command: an encoded etcd response or an etcd error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Response(Vec<u8>),
    Failed(Error),
    /// One reply per command of a `Command::Batch`, in order.
    Batch(Vec<Reply>),
    #[default]
    Done,
}

openraft::declare_raft_types!(
    /// skiff's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = MemberId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<MemberId>;
pub type StoredMembership = openraft::StoredMembership<MemberId, Member>;
pub type StorageError = openraft::StorageError<MemberId>;
pub type Entry = openraft::Entry<TypeConfig>;
