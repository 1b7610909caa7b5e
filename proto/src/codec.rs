//! The gRPC codec of every generated service: prost's, with the decoder bounding txn
//! nesting first (see [`crate::depth`]). A request nested too deep is refused with etcd's
//! answer for it: INVALID_ARGUMENT "etcdserver: too many operations in txn request".

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::depth::{BoundedDecodeError, decode_bounded};

/// etcd's message for a txn over its op budget (`rpctypes.ErrGRPCTooManyOps`).
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

/// prost's codec with bounded txn nesting.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, bounding txn nesting before prost recurses.
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        match decode_bounded::<U>(&bytes) {
            Ok(item) => Ok(Some(item)),
            Err(BoundedDecodeError::TooDeep) => Err(Status::invalid_argument(TOO_MANY_OPS)),
            // As prost's own codec: a parse error is INTERNAL.
            Err(BoundedDecodeError::Invalid(e)) => Err(Status::internal(e)),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
