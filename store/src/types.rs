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

/// One client or member request, as replicated through the Raft log. KV requests travel
/// as their etcd protobuf encoding, so the state machine applies exactly what the client
/// sent. A `Command` never holds another: several are grouped only by a [`Proposal`], so
/// nesting is bounded by type and decoding one never recurses.
///
/// Wire form (postcard): the variant index, then its fields. Index 5 is a [`Proposal`]'s
/// batch and is refused when a lone `Command` is decoded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "wire::CommandWire")]
pub enum Command {
    Put(Vec<u8>),
    DeleteRange(Vec<u8>),
    Txn(Vec<u8>),
    Compact(Vec<u8>),
    PublishMember {
        id: MemberId,
        attrs: MemberAttrs,
    },
    /// An etcd `AlarmRequest` (ACTIVATE or DEACTIVATE), protobuf-encoded.
    Alarm(Vec<u8>),
    /// An etcd `LeaseGrantRequest` (ID chosen and TTL raised to the minimum by the member
    /// that received it), protobuf-encoded.
    LeaseGrant(Vec<u8>),
    /// An etcd `LeaseRevokeRequest`, protobuf-encoded: from a client, or from the leader
    /// when the lease expired.
    LeaseRevoke(Vec<u8>),
    /// A change of users, roles or the auth switch, or a token assignment (see
    /// [`crate::auth`]); passwords travel only as bcrypt hashes.
    Auth(crate::auth::AuthOp),
    /// A client request whose permissions were checked, by the member that received it,
    /// at auth revision `auth_revision`: the postcard encoding of a single non-`Guarded`
    /// command. It applies only if the auth state has not changed since (else
    /// `AuthOldRevision`, and the member checks again).
    Guarded {
        auth_revision: u64,
        command: Vec<u8>,
    },
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
            Command::Auth(op) => op.encoded_len(),
            Command::Guarded { command, .. } => command.len() + 16,
        }
    }
}

/// The payload of one normal Raft log entry: one command, or several proposed together
/// (one log entry, one fsync) and applied in order, each with its own revision.
///
/// Its wire form is the one log entries have always had: a lone command encodes exactly as
/// that [`Command`], a batch as variant index 5 and a sequence of commands.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "wire::ProposalWire")]
pub enum Proposal {
    One(Command),
    Batch(Vec<Command>),
}

impl Proposal {
    /// The commands, in the order they apply.
    pub fn commands(&self) -> &[Command] {
        match self {
            Proposal::One(command) => std::slice::from_ref(command),
            Proposal::Batch(commands) => commands,
        }
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        const NAME: &str = "Command";
        match self {
            Command::Put(b) => s.serialize_newtype_variant(NAME, 0, "Put", &bytes::Bytes(b)),
            Command::DeleteRange(b) => {
                s.serialize_newtype_variant(NAME, 1, "DeleteRange", &bytes::Bytes(b))
            }
            Command::Txn(b) => s.serialize_newtype_variant(NAME, 2, "Txn", &bytes::Bytes(b)),
            Command::Compact(b) => {
                s.serialize_newtype_variant(NAME, 3, "Compact", &bytes::Bytes(b))
            }
            Command::PublishMember { id, attrs } => {
                let mut v = s.serialize_struct_variant(NAME, 4, "PublishMember", 2)?;
                v.serialize_field("id", id)?;
                v.serialize_field("attrs", attrs)?;
                v.end()
            }
            Command::Alarm(b) => s.serialize_newtype_variant(NAME, 6, "Alarm", &bytes::Bytes(b)),
            Command::LeaseGrant(b) => {
                s.serialize_newtype_variant(NAME, 7, "LeaseGrant", &bytes::Bytes(b))
            }
            Command::LeaseRevoke(b) => {
                s.serialize_newtype_variant(NAME, 8, "LeaseRevoke", &bytes::Bytes(b))
            }
            Command::Auth(op) => s.serialize_newtype_variant(NAME, 9, "Auth", op),
            Command::Guarded {
                auth_revision,
                command,
            } => {
                let mut v = s.serialize_struct_variant(NAME, 10, "Guarded", 2)?;
                v.serialize_field("auth_revision", auth_revision)?;
                v.serialize_field("command", &bytes::Bytes(command))?;
                v.end()
            }
        }
    }
}

impl Serialize for Proposal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Proposal::One(command) => command.serialize(s),
            Proposal::Batch(commands) => {
                s.serialize_newtype_variant("Command", 5, "Batch", commands)
            }
        }
    }
}

/// Payload bytes on the wire as one byte string: postcard writes it exactly as it writes a
/// sequence of `u8` (a varint length, then the bytes), so the encoding is unchanged, but
/// it is one copy instead of a call per byte (a 1.5 MB put took ~130 ms per encode and
/// decode in a debug build, more than a heartbeat's budget for replicating it).
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::{Serialize, Serializer};

    pub struct Bytes<'a>(pub &'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct ByteBuf;
        impl<'de> Visitor<'de> for ByteBuf {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(ByteBuf)
    }
}

/// Decoding twins of [`Command`] and [`Proposal`]: the derived variant indices are the wire's.
mod wire {
    use serde::Deserialize;

    use super::{Command, MemberAttrs, MemberId, Proposal};

    #[derive(Deserialize)]
    pub enum CommandWire {
        Put(#[serde(with = "super::bytes")] Vec<u8>),
        DeleteRange(#[serde(with = "super::bytes")] Vec<u8>),
        Txn(#[serde(with = "super::bytes")] Vec<u8>),
        Compact(#[serde(with = "super::bytes")] Vec<u8>),
        PublishMember {
            id: MemberId,
            attrs: MemberAttrs,
        },
        /// A batch where a single command belongs: refused.
        Batch,
        Alarm(#[serde(with = "super::bytes")] Vec<u8>),
        LeaseGrant(#[serde(with = "super::bytes")] Vec<u8>),
        LeaseRevoke(#[serde(with = "super::bytes")] Vec<u8>),
        Auth(crate::auth::AuthOp),
        Guarded {
            auth_revision: u64,
            #[serde(with = "super::bytes")]
            command: Vec<u8>,
        },
    }

    impl TryFrom<CommandWire> for Command {
        type Error = &'static str;

        fn try_from(wire: CommandWire) -> Result<Command, &'static str> {
            Ok(match wire {
                CommandWire::Put(b) => Command::Put(b),
                CommandWire::DeleteRange(b) => Command::DeleteRange(b),
                CommandWire::Txn(b) => Command::Txn(b),
                CommandWire::Compact(b) => Command::Compact(b),
                CommandWire::PublishMember { id, attrs } => Command::PublishMember { id, attrs },
                CommandWire::Batch => return Err("a batch may only hold single commands"),
                CommandWire::Alarm(b) => Command::Alarm(b),
                CommandWire::LeaseGrant(b) => Command::LeaseGrant(b),
                CommandWire::LeaseRevoke(b) => Command::LeaseRevoke(b),
                CommandWire::Auth(op) => Command::Auth(op),
                CommandWire::Guarded {
                    auth_revision,
                    command,
                } => Command::Guarded {
                    auth_revision,
                    command,
                },
            })
        }
    }

    #[derive(Deserialize)]
    pub enum ProposalWire {
        Put(#[serde(with = "super::bytes")] Vec<u8>),
        DeleteRange(#[serde(with = "super::bytes")] Vec<u8>),
        Txn(#[serde(with = "super::bytes")] Vec<u8>),
        Compact(#[serde(with = "super::bytes")] Vec<u8>),
        PublishMember {
            id: MemberId,
            attrs: MemberAttrs,
        },
        Batch(Vec<Command>),
        Alarm(#[serde(with = "super::bytes")] Vec<u8>),
        LeaseGrant(#[serde(with = "super::bytes")] Vec<u8>),
        LeaseRevoke(#[serde(with = "super::bytes")] Vec<u8>),
        Auth(crate::auth::AuthOp),
        Guarded {
            auth_revision: u64,
            #[serde(with = "super::bytes")]
            command: Vec<u8>,
        },
    }

    impl From<ProposalWire> for Proposal {
        fn from(wire: ProposalWire) -> Proposal {
            Proposal::One(match wire {
                ProposalWire::Put(b) => Command::Put(b),
                ProposalWire::DeleteRange(b) => Command::DeleteRange(b),
                ProposalWire::Txn(b) => Command::Txn(b),
                ProposalWire::Compact(b) => Command::Compact(b),
                ProposalWire::PublishMember { id, attrs } => Command::PublishMember { id, attrs },
                ProposalWire::Batch(commands) => return Proposal::Batch(commands),
                ProposalWire::Alarm(b) => Command::Alarm(b),
                ProposalWire::LeaseGrant(b) => Command::LeaseGrant(b),
                ProposalWire::LeaseRevoke(b) => Command::LeaseRevoke(b),
                ProposalWire::Auth(op) => Command::Auth(op),
                ProposalWire::Guarded {
                    auth_revision,
                    command,
                } => Command::Guarded {
                    auth_revision,
                    command,
                },
            })
        }
    }
}

/// The state machine's answer to one command: an encoded etcd response or an etcd error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Response(#[serde(with = "bytes")] Vec<u8>),
    Failed(Error),
    #[default]
    Done,
}

/// The state machine's answer to one log entry: one reply per command of its [`Proposal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    One(Reply),
    Batch(Vec<Reply>),
}

impl Default for Applied {
    fn default() -> Applied {
        Applied::One(Reply::Done)
    }
}

openraft::declare_raft_types!(
    /// skiff's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_of_log_entries_is_unchanged() {
        // Bytes as the derived encoding of the earlier single enum wrote them.
        let put = Proposal::One(Command::Put(vec![0xaa, 0xbb]));
        assert_eq!(postcard::to_stdvec(&put).unwrap(), [0, 2, 0xaa, 0xbb]);
        let batch = Proposal::Batch(vec![Command::Put(vec![1]), Command::LeaseRevoke(vec![2])]);
        let bytes = postcard::to_stdvec(&batch).unwrap();
        assert_eq!(bytes, [5, 2, 0, 1, 1, 8, 1, 2]);
        assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), batch);
        let member = Command::PublishMember {
            id: 7,
            attrs: MemberAttrs {
                name: "a".into(),
                client_urls: vec![],
            },
        };
        let bytes = postcard::to_stdvec(&member).unwrap();
        assert_eq!(bytes, [4, 7, 1, b'a', 0]);
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), member);
        assert_eq!(
            postcard::from_bytes::<Proposal>(&bytes).unwrap(),
            Proposal::One(member)
        );
    }

    #[test]
    fn a_batch_inside_a_batch_does_not_decode() {
        // The message that once overflowed every member's stack: 3,000 nested batches.
        let mut bytes = vec![0u8];
        for _ in 0..3000 {
            bytes.extend([5, 1]);
        }
        bytes.extend([0, 0]);
        assert!(postcard::from_bytes::<Command>(&bytes[1..]).is_err());
        assert!(postcard::from_bytes::<Proposal>(&bytes[1..]).is_err());
        assert!(postcard::from_bytes::<Command>(&[5, 0]).is_err());
        assert_eq!(
            postcard::from_bytes::<Proposal>(&[5, 0]).unwrap(),
            Proposal::Batch(vec![])
        );
    }
}
