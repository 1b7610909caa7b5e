//! Bounded decoding of etcd's one recursive message family: a `TxnRequest` holds
//! `RequestOp`s that may hold a `TxnRequest` (and a `TxnResponse` the same way).
//!
//! prost's own recursion limit (100 message levels) stops a txn at about 49 levels, below
//! what etcd accepts (its op budget, `--max-txn-ops` 128 by default, allows 128 levels), and
//! it failed *after* a write had committed when only the reply was too deep. So skiff
//! builds prost without that limit and bounds the nesting here instead, before prost
//! recurses: [`MAX_TXN_DEPTH`] txn levels, found by an iterative scan of the wire bytes
//! (no recursion, so no input can overflow a stack). Every decoder of these messages from
//! outside — the gRPC codec ([`crate::codec`]), peers' forwarded writes and replies, log
//! entries at apply — goes through [`decode_bounded`].

use std::any::TypeId;

use prost::Message;

use crate::etcdserverpb::{TxnRequest, TxnResponse};

/// Most levels of nested txns a request or response may have (etcd's default op budget
/// admits exactly this many; one op per level).
pub const MAX_TXN_DEPTH: usize = 128;

/// Why bytes were refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepthError {
    /// Nested deeper than [`MAX_TXN_DEPTH`].
    TooDeep,
    /// Not valid protobuf wire data.
    Malformed(&'static str),
}

/// Field numbers of one recursive family: the txn's repeated op fields and the op's txn
/// field.
struct Family {
    op_fields: &'static [u32],
    txn_field: u32,
}

const REQUEST: Family = Family {
    op_fields: &[2, 3],
    txn_field: 4,
};
const RESPONSE: Family = Family {
    op_fields: &[3],
    txn_field: 4,
};

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, DepthError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf
            .get(*at)
            .ok_or(DepthError::Malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DepthError::Malformed("varint too long"))
}

/// Calls `field(number, payload)` for every length-delimited field of `buf`, skipping the
/// others.
fn for_each_bytes_field<'a>(
    buf: &'a [u8],
    mut field: impl FnMut(u32, &'a [u8]) -> Result<(), DepthError>,
) -> Result<(), DepthError> {
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let number = u32::try_from(key >> 3).map_err(|_| DepthError::Malformed("field number"))?;
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?)
                    .map_err(|_| DepthError::Malformed("length"))?;
                let end = at
                    .checked_add(len)
                    .filter(|end| *end <= buf.len())
                    .ok_or(DepthError::Malformed("length past the end"))?;
                field(number, &buf[at..end])?;
                at = end;
            }
            _ => return Err(DepthError::Malformed("unsupported wire type")),
        }
        if at > buf.len() {
            return Err(DepthError::Malformed("field past the end"));
        }
    }
    Ok(())
}

/// The txn nesting depth of `buf` (1 for a txn without nested txns), or an error once it
/// passes `limit`. Iterative: the work list holds at most the fields seen so far.
fn nesting(buf: &[u8], family: &Family, limit: usize) -> Result<usize, DepthError> {
    let mut deepest = 1;
    let mut pending: Vec<(&[u8], usize)> = vec![(buf, 1)];
    while let Some((txn, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if depth > limit {
            return Err(DepthError::TooDeep);
        }
        for_each_bytes_field(txn, |number, op| {
            if !family.op_fields.contains(&number) {
                return Ok(());
            }
            for_each_bytes_field(op, |number, inner| {
                if number == family.txn_field {
                    pending.push((inner, depth + 1));
                }
                Ok(())
            })
        })?;
    }
    Ok(deepest)
}

/// The nesting depth of an encoded `TxnRequest`, refused past [`MAX_TXN_DEPTH`].
pub fn txn_request_depth(buf: &[u8]) -> Result<usize, DepthError> {
    nesting(buf, &REQUEST, MAX_TXN_DEPTH)
}

/// The nesting depth of an encoded `TxnResponse`, refused past [`MAX_TXN_DEPTH`].
pub fn txn_response_depth(buf: &[u8]) -> Result<usize, DepthError> {
    nesting(buf, &RESPONSE, MAX_TXN_DEPTH)
}

/// Why [`decode_bounded`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedDecodeError {
    /// Txns nested deeper than [`MAX_TXN_DEPTH`].
    TooDeep,
    /// Not a valid message.
    Invalid(String),
}

impl std::fmt::Display for BoundedDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundedDecodeError::TooDeep => {
                write!(f, "txns nested deeper than {MAX_TXN_DEPTH} levels")
            }
            BoundedDecodeError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Decode `M` from `buf`, first bounding the nesting of txn requests and responses.
pub fn decode_bounded<M: Message + Default + 'static>(buf: &[u8]) -> Result<M, BoundedDecodeError> {
    let kind = TypeId::of::<M>();
    let check = if kind == TypeId::of::<TxnRequest>() {
        Some(txn_request_depth(buf))
    } else if kind == TypeId::of::<TxnResponse>() {
        Some(txn_response_depth(buf))
    } else {
        None
    };
    match check {
        Some(Err(DepthError::TooDeep)) => return Err(BoundedDecodeError::TooDeep),
        Some(Err(DepthError::Malformed(why))) => {
            return Err(BoundedDecodeError::Invalid(format!("invalid txn: {why}")));
        }
        _ => {}
    }
    M::decode(buf).map_err(|e| BoundedDecodeError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{
        PutRequest, PutResponse, RequestOp, ResponseOp, request_op, response_op,
    };

    fn nested_request(depth: usize) -> TxnRequest {
        let mut txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        for _ in 1..depth {
            txn = TxnRequest {
                compare: vec![],
                success: vec![],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(txn)),
                }],
            };
        }
        txn
    }

    fn nested_response(depth: usize) -> TxnResponse {
        let mut txn = TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponsePut(PutResponse::default())),
            }],
        };
        for _ in 1..depth {
            txn = TxnResponse {
                header: None,
                succeeded: false,
                responses: vec![ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(txn)),
                }],
            };
        }
        txn
    }

    #[test]
    fn depth_is_counted_and_bounded() {
        for depth in [1, 2, 49, 50, 127, 128] {
            let bytes = nested_request(depth).encode_to_vec();
            assert_eq!(txn_request_depth(&bytes), Ok(depth));
            let decoded: TxnRequest = decode_bounded(&bytes).expect("decode");
            assert_eq!(decoded, nested_request(depth));
            let bytes = nested_response(depth).encode_to_vec();
            assert_eq!(txn_response_depth(&bytes), Ok(depth));
            let decoded: TxnResponse = decode_bounded(&bytes).expect("decode");
            assert_eq!(decoded, nested_response(depth));
        }
        let bytes = nested_request(129).encode_to_vec();
        assert_eq!(txn_request_depth(&bytes), Err(DepthError::TooDeep));
        assert_eq!(
            decode_bounded::<TxnRequest>(&bytes),
            Err(BoundedDecodeError::TooDeep)
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // Each level is a RequestOp (field 3) holding a TxnRequest (field 4).
        let mut bytes: Vec<u8> = Vec::new();
        for _ in 0..1_000 {
            let mut op = vec![0x22];
            put_varint(&mut op, bytes.len() as u64);
            op.extend(&bytes);
            let mut txn = vec![0x1a];
            put_varint(&mut txn, op.len() as u64);
            txn.extend(op);
            bytes = txn;
        }
        assert_eq!(txn_request_depth(&bytes), Err(DepthError::TooDeep));
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[test]
    fn malformed_bytes_are_refused_not_panicked_on() {
        for bytes in [
            &[0x12, 0x05][..],
            &[
                0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x13],
            &[0x12, 0x02, 0x22, 0x09],
        ] {
            assert!(matches!(
                txn_request_depth(bytes),
                Err(DepthError::Malformed(_))
            ));
        }
    }
}
