//! Protocol definitions for skiff.
//!
//! This crate compiles two families of protobuf schemas (see `proto/`) into
//! Rust with `prost`/`tonic`:
//!
//! * the etcd v3 client API — [`etcdserverpb`] (services `KV`, `Watch`,
//!   `Lease`, `Cluster`, `Maintenance`, `Auth`) together with the record types
//!   it builds on, [`mvccpb`] and [`authpb`], and etcd's optional [`v3lockpb`]
//!   (`Lock`) and [`v3electionpb`] (`Election`) services. Package, service, message names
//!   and field numbers are identical to upstream etcd, so unmodified etcd
//!   clients can talk to a skiff server;
//! * skiff's own member-to-member protocol — [`skiffpeer`], a `Peer` service
//!   whose messages carry opaque, postcard-encoded payloads produced by the
//!   store crate.
//!
//! Both client stubs and server traits are generated. The modules live at the
//! crate root because generated code refers to sibling packages through
//! `super::` paths (e.g. `super::mvccpb::KeyValue`).

pub mod codec;
pub mod depth;

/// Key/value records and watch events (etcd package `mvccpb`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions (etcd package `authpb`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 gRPC services and their messages (etcd package `etcdserverpb`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's optional `Lock` service (package `v3lockpb`): named locks held by a lease.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's optional `Election` service (package `v3electionpb`): leader election on a lease.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// skiff's internal member-to-member `Peer` service.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod skiffpeer {
    tonic::include_proto!("skiffpeer");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::etcdserverpb::{
        Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
    };
    use crate::mvccpb::{Event, KeyValue, event};
    use crate::skiffpeer::Blob;

    #[test]
    fn put_request_uses_etcd_tags() {
        let req = PutRequest {
            key: b"a".to_vec(),
            value: b"b".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec(),
            vec![0x0a, 0x01, b'a', 0x12, 0x01, b'b']
        );

        let req = PutRequest {
            lease: 7,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        };
        // lease=3 (varint), prev_kv=4, ignore_value=5, ignore_lease=6
        assert_eq!(
            req.encode_to_vec(),
            vec![0x18, 7, 0x20, 1, 0x28, 1, 0x30, 1]
        );
    }

    #[test]
    fn range_request_uses_etcd_tags() {
        let req = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit: 5,
            serializable: true,
            max_create_revision: 9,
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec(),
            vec![
                0x0a, 0x01, b'k', 0x12, 0x01, b'l', 0x18, 5, 0x38, 1, 0x68, 9
            ]
        );
        assert_eq!(
            RangeRequest::decode(req.encode_to_vec().as_slice()).unwrap(),
            req
        );
    }

    #[test]
    fn compare_range_end_is_tag_64() {
        let cmp = Compare {
            key: b"x".to_vec(),
            range_end: b"y".to_vec(),
            target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
            ..Default::default()
        };
        let bytes = cmp.encode_to_vec();
        // key=3, value=7 (oneof member), range_end=64 (0x82 0x04 varint key).
        assert_eq!(
            bytes,
            vec![0x1a, 0x01, b'x', 0x3a, 0x01, b'v', 0x82, 0x04, 0x01, b'y']
        );

        let txn = TxnRequest {
            compare: vec![cmp],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest::default())),
            }],
            failure: vec![],
        };
        assert_eq!(
            TxnRequest::decode(txn.encode_to_vec().as_slice()).unwrap(),
            txn
        );
    }

    #[test]
    fn watch_event_round_trips() {
        let ev = Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                mod_revision: 3,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let bytes = ev.encode_to_vec();
        assert_eq!(&bytes[..2], &[0x08, 0x01]);
        assert_eq!(Event::decode(bytes.as_slice()).unwrap(), ev);
    }

    #[test]
    fn peer_blob_is_plain_bytes() {
        let blob = Blob {
            data: vec![1, 2, 3],
        };
        assert_eq!(blob.encode_to_vec(), vec![0x0a, 0x03, 1, 2, 3]);
    }
}

/// skiff's gRPC automation API (package `skiff.api.v1`, service `Resources`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod skiff_api {
    tonic::include_proto!("skiff.api.v1");

    /// The encoded file descriptor set of `skiff/api.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("skiff_api_descriptor");
}
