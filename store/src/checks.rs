//! Request checks, as etcd's `v3rpc` layer makes them (`checkPutRequest`,
//! `checkTxnRequest`, `checkIntervals`, ...), in one place for every way a write arrives:
//! a client handler checks before it proposes, the leader checks a write a peer forwarded
//! before it proposes it, and the state machine checks every command before it applies it
//! (an entry that fails a check fails its own request, never the member).
//!
//! The apply-time checks are the structural ones only: they must give the same verdict on
//! every member whatever its flags, so limits set by flags (`--max-txn-ops`,
//! `--max-request-bytes`) are checked before proposing, never at apply.

use std::collections::BTreeSet;

use prost::Message;
use skiff_proto::etcdserverpb::{
    self as pb, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, request_op,
};

use crate::error::Error;
use crate::types::Command;

/// Limits a member sets by flags; checked before a write is proposed.
#[derive(Clone, Copy, Debug)]
pub struct ProposeLimits {
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--max-request-bytes`: the largest encoded request.
    pub max_request_bytes: usize,
}

/// Check a command that arrived from a peer (a forwarded write) before proposing it: its
/// payload must decode and pass every check a client handler makes.
pub fn check_forwarded(command: &Command, limits: ProposeLimits) -> Result<(), Error> {
    if command.encoded_len() > limits.max_request_bytes + 64 {
        return Err(Error::RequestTooLarge);
    }
    match command {
        Command::Put(raw) => check_put(&decode(raw)?),
        Command::DeleteRange(raw) => check_delete(&decode(raw)?),
        Command::Txn(raw) => check_txn_request(&decode(raw)?, limits.max_txn_ops),
        Command::Compact(raw) => decode::<pb::CompactionRequest>(raw).map(drop),
        Command::Alarm(raw) => decode::<pb::AlarmRequest>(raw).map(drop),
        Command::LeaseGrant(raw) => decode::<LeaseGrantRequest>(raw).map(drop),
        Command::LeaseRevoke(raw) => decode::<LeaseRevokeRequest>(raw).map(drop),
        // A follower publishes its own attributes through the leader (bounded by size above).
        Command::PublishMember { .. } => Ok(()),
        Command::Auth(op) => op.check(),
        // One level only: the payload must be a client request, itself checked.
        Command::Guarded { command, .. } => match postcard::from_bytes::<Command>(command) {
            Ok(
                inner @ (Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::LeaseRevoke(_)),
            ) => check_forwarded(&inner, limits),
            Ok(_) => Err(Error::Internal(
                "a guarded command must be a client request".into(),
            )),
            Err(e) => Err(Error::Internal(format!("decode guarded command: {e}"))),
        },
    }
}

fn decode<M: Message + Default + 'static>(raw: &[u8]) -> Result<M, Error> {
    use skiff_proto::depth::{BoundedDecodeError, decode_bounded};
    decode_bounded(raw).map_err(|e| match e {
        BoundedDecodeError::TooDeep => Error::TooManyOps,
        BoundedDecodeError::Invalid(e) => Error::Internal(format!("decode request: {e}")),
    })
}

/// A delete names a key.
pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Every check of a txn: ops per branch within `max_ops` (nested txns draw on what is
/// left), keys given, no key put twice or put and deleted in one branch.
pub fn check_txn_request(req: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    check_txn(req, max_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    check_from_key_deletes(&req.success)?;
    check_from_key_deletes(&req.failure)
}

/// etcd's `checkPutRequest`.
pub fn check_put(req: &PutRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_range(req: &RangeRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(req.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the op limit is per branch, nested txns draw on what is left.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    let count = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if count > max_ops {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(Error::EmptyKey);
            }
            Some(request_op::Request::RequestDeleteRange(_)) => {}
            Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_ops - count)?,
            // etcd's `checkRequestOp` answers an empty union with "key not found".
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// An interval a delete covers: `end == None` is a single key, else `[start, end)`.
///
/// Like etcd's `adt.NewStringAffineInterval`, a from-key `range_end` of `"\0"` is taken
/// literally, so such a delete overlaps no put (etcd 3.4 and 3.5 accept a txn that deletes
/// `[k, "\0")` and puts a key above `k`; the ops then apply in order).
#[derive(Clone, Debug)]
pub struct DeleteInterval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl DeleteInterval {
    fn covers(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: within one branch (nested txns included) a key may not be put
/// twice, nor put and deleted.
pub fn check_intervals(
    ops: &[RequestOp],
) -> Result<(BTreeSet<Vec<u8>>, Vec<DeleteInterval>), Error> {
    let mut dels: Vec<DeleteInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(DeleteInterval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        // A key put by an earlier sibling txn may not be put again; the two branches of one
        // txn may put the same key (only one of them runs).
        for key in &puts_then {
            if puts.contains(key) || dels.iter().any(|d| d.covers(key)) {
                return Err(Error::DuplicateKey);
            }
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key))
                || dels.iter().any(|d| d.covers(key))
            {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.covers(&p.key)) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// etcd accepts a txn that deletes `[k, "\0")` and puts a key at or above `k` (see
/// [`DeleteInterval`]) and applies its ops in order. When such a put has ignore_value or
/// ignore_lease and the delete has removed its key, etcd's apply fails half-way and the
/// server panics ("unexpected error during txn: etcdserver: key not found", seen with
/// etcd 3.4.23). skiff refuses these txns up front, as a duplicate key: within one branch
/// (nested txns included), no ignore_value/ignore_lease put may fall in a from-key delete.
pub fn check_from_key_deletes(ops: &[RequestOp]) -> Result<(), Error> {
    fn collect<'a>(ops: &'a [RequestOp], starts: &mut Vec<&'a [u8]>, puts: &mut Vec<&'a [u8]>) {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestDeleteRange(d)) if d.range_end == [0] => {
                    starts.push(&d.key)
                }
                Some(request_op::Request::RequestPut(p)) if p.ignore_value || p.ignore_lease => {
                    puts.push(&p.key)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    collect(&t.success, starts, puts);
                    collect(&t.failure, starts, puts);
                }
                _ => {}
            }
        }
    }
    let (mut starts, mut puts) = (Vec::new(), Vec::new());
    collect(ops, &mut starts, &mut puts);
    if puts
        .iter()
        .any(|key| starts.iter().any(|start| key >= start))
    {
        return Err(Error::DuplicateKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn duplicate_puts_and_put_delete_overlap_are_refused() {
        assert!(check_intervals(&[put("a"), put("b")]).is_ok());
        assert_eq!(
            check_intervals(&[put("a"), put("a")]).unwrap_err(),
            Error::DuplicateKey
        );
        assert_eq!(
            check_intervals(&[del("a", "c"), put("b")]).unwrap_err(),
            Error::DuplicateKey
        );
        assert!(check_intervals(&[del("a", "c"), put("c")]).is_ok());
        assert!(check_intervals(&[del("a", ""), del("a", "z")]).is_ok());
    }

    #[test]
    fn txn_op_limit_is_per_branch() {
        let ops: Vec<RequestOp> = (0..128).map(|i| put(&format!("k{i}"))).collect();
        let txn = TxnRequest {
            compare: vec![],
            success: ops.clone(),
            failure: ops,
        };
        assert!(check_txn(&txn, 128).is_ok());
        let mut big = txn.clone();
        big.success.push(put("extra"));
        assert_eq!(check_txn(&big, 128).unwrap_err(), Error::TooManyOps);
    }
}
