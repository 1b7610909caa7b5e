//! SPDY/3.1 framing, pure: the 8-byte frame head, control frame payloads, data frames and the
//! (uncompressed) name/value header block. Compression of header blocks lives in
//! [`super::zlib`]; the parse/encode functions here take the connection's (de)compressor.
//!
//! Wire format (big endian):
//! - control: `1 | version:15 | type:16 | flags:8 | length:24 | payload`
//! - data: `0 | stream-id:31 | flags:8 | length:24 | data`
//! - header block: `count:32 { name-len:32 name value-len:32 value }*` (values may hold several
//!   NUL-separated values).

use super::zlib::{HeaderCompressor, HeaderDecompressor, ZlibError};

/// The SPDY version spoken (SPDY/3.1 keeps version 3 in frames).
pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FIN on control (SYN_STREAM, SYN_REPLY, HEADERS) and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// The largest frame payload the 24-bit length allows.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    #[error("control frame type {kind} with invalid length {len}")]
    BadLength { kind: u16, len: usize },
    #[error("stream id 0 in a frame that needs one")]
    ZeroStreamId,
    #[error("malformed header block: {0}")]
    HeaderBlock(&'static str),
    #[error("header block compression: {0}")]
    Zlib(#[from] ZlibError),
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(usize),
}

/// A decoded frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        length: usize,
    },
    Data {
        stream_id: u32,
        flags: u8,
        length: usize,
    },
}

impl FrameHead {
    /// The payload length that follows the head.
    pub fn length(&self) -> usize {
        match *self {
            FrameHead::Control { length, .. } | FrameHead::Data { length, .. } => length,
        }
    }
}

/// Decodes the first 8 bytes of a frame.
pub fn parse_head(b: [u8; 8]) -> FrameHead {
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let flags = b[4];
    let length = (usize::from(b[5]) << 16) | (usize::from(b[6]) << 8) | usize::from(b[7]);
    if first & 0x8000_0000 != 0 {
        FrameHead::Control {
            version: ((first >> 16) & 0x7fff) as u16,
            kind: (first & 0xffff) as u16,
            flags,
            length,
        }
    } else {
        FrameHead::Data {
            stream_id: first & 0x7fff_ffff,
            flags,
            length,
        }
    }
}

/// Name/value pairs, names lowercase, in wire order.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (values are NUL-separated lists).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// A decoded control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control type SPDY/3.1 does not define (ignored, as the spec says).
    Unknown {
        kind: u16,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a control frame's payload. Header blocks go through `dec` (stateful: every header
/// block of the connection must pass through, in order, even of frames that are then ignored).
pub fn parse_control(
    version: u16,
    kind: u16,
    flags: u8,
    payload: &[u8],
    dec: &mut HeaderDecompressor,
    max_header_block: usize,
) -> Result<Control, FrameError> {
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let len = payload.len();
    let bad = || FrameError::BadLength { kind, len };
    let id_at = |at: usize| -> Result<u32, FrameError> {
        let id = be32(payload, at) & 0x7fff_ffff;
        if id == 0 {
            Err(FrameError::ZeroStreamId)
        } else {
            Ok(id)
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            if len < 10 {
                return Err(bad());
            }
            let stream_id = id_at(0)?;
            let associated_to = be32(payload, 4) & 0x7fff_ffff;
            let priority = payload[8] >> 5;
            let block = dec.decompress(&payload[10..], max_header_block)?;
            Control::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers: decode_header_block(&block)?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            if len < 4 {
                return Err(bad());
            }
            let stream_id = id_at(0)?;
            let block = dec.decompress(&payload[4..], max_header_block)?;
            let headers = decode_header_block(&block)?;
            if kind == TYPE_SYN_REPLY {
                Control::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Control::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        TYPE_RST_STREAM => {
            if len != 8 {
                return Err(bad());
            }
            Control::RstStream {
                stream_id: id_at(0)?,
                status: be32(payload, 4),
            }
        }
        TYPE_SETTINGS => {
            if len < 4 {
                return Err(bad());
            }
            let count = be32(payload, 0) as usize;
            if count.checked_mul(8).and_then(|n| n.checked_add(4)) != Some(len) {
                return Err(bad());
            }
            let entries = (0..count)
                .map(|i| {
                    let at = 4 + i * 8;
                    let fid = be32(payload, at);
                    ((fid >> 24) as u8, fid & 0x00ff_ffff, be32(payload, at + 4))
                })
                .collect();
            Control::Settings { flags, entries }
        }
        TYPE_PING => {
            if len != 4 {
                return Err(bad());
            }
            Control::Ping {
                id: be32(payload, 0),
            }
        }
        TYPE_GOAWAY => {
            // SPDY/3 has a status; SPDY/2 did not. Accept both lengths.
            if len != 8 && len != 4 {
                return Err(bad());
            }
            Control::GoAway {
                last_good_stream_id: be32(payload, 0) & 0x7fff_ffff,
                status: if len == 8 { be32(payload, 4) } else { 0 },
            }
        }
        TYPE_WINDOW_UPDATE => {
            if len != 8 {
                return Err(bad());
            }
            Control::WindowUpdate {
                stream_id: be32(payload, 0) & 0x7fff_ffff,
                delta: be32(payload, 4) & 0x7fff_ffff,
            }
        }
        kind => Control::Unknown { kind },
    };
    Ok(frame)
}

/// Decodes an uncompressed header block. Names are lowercased.
pub fn decode_header_block(b: &[u8]) -> Result<Headers, FrameError> {
    let mut at = 0usize;
    let mut next = |n: usize| -> Result<&[u8], FrameError> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= b.len())
            .ok_or(FrameError::HeaderBlock("truncated"))?;
        let s = &b[at..end];
        at = end;
        Ok(s)
    };
    let count = be32(next(4)?, 0) as usize;
    // Each pair takes at least 8 bytes: bound the allocation by the input.
    if count > b.len() / 8 {
        return Err(FrameError::HeaderBlock("pair count exceeds block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = be32(next(4)?, 0) as usize;
        let name = std::str::from_utf8(next(n)?)
            .map_err(|_| FrameError::HeaderBlock("name is not UTF-8"))?
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(FrameError::HeaderBlock("empty name"));
        }
        let n = be32(next(4)?, 0) as usize;
        let value = std::str::from_utf8(next(n)?)
            .map_err(|_| FrameError::HeaderBlock("value is not UTF-8"))?
            .to_owned();
        headers.push((name, value));
    }
    if at != b.len() {
        return Err(FrameError::HeaderBlock("trailing bytes"));
    }
    Ok(headers)
}

/// Encodes an uncompressed header block (names lowercased).
pub fn encode_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + headers
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend(k.bytes().map(|c| c.to_ascii_lowercase()));
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn control_head(kind: u16, flags: u8, length: usize) -> Result<Vec<u8>, FrameError> {
    if length > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(length));
    }
    let mut out = Vec::with_capacity(8 + length);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | length as u32).to_be_bytes());
    Ok(out)
}

/// Encodes a SYN_STREAM (used by clients; here for tests and completeness).
pub fn encode_syn_stream(
    stream_id: u32,
    associated_to: u32,
    priority: u8,
    flags: u8,
    headers: &[(&str, &str)],
    comp: &mut HeaderCompressor,
) -> Result<Vec<u8>, FrameError> {
    let block = comp.compress(&encode_header_block(headers))?;
    let mut out = control_head(TYPE_SYN_STREAM, flags, 10 + block.len())?;
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
    out.push((priority & 0x7) << 5);
    out.push(0); // slot
    out.extend_from_slice(&block);
    Ok(out)
}

/// Encodes a SYN_REPLY.
pub fn encode_syn_reply(
    stream_id: u32,
    flags: u8,
    headers: &[(&str, &str)],
    comp: &mut HeaderCompressor,
) -> Result<Vec<u8>, FrameError> {
    let block = comp.compress(&encode_header_block(headers))?;
    let mut out = control_head(TYPE_SYN_REPLY, flags, 4 + block.len())?;
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&block);
    Ok(out)
}

/// Encodes a RST_STREAM.
pub fn encode_rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&TYPE_RST_STREAM.to_be_bytes());
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out
}

/// Encodes a PING.
pub fn encode_ping(id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&TYPE_PING.to_be_bytes());
    out.extend_from_slice(&4u32.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Encodes a GOAWAY.
pub fn encode_goaway(last_good_stream_id: u32, status: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&TYPE_GOAWAY.to_be_bytes());
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out
}

/// Encodes a WINDOW_UPDATE.
pub fn encode_window_update(stream_id: u32, delta: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&TYPE_WINDOW_UPDATE.to_be_bytes());
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
    out
}

/// Encodes a data frame's 8-byte head (the data follows it on the wire).
pub fn encode_data_head(stream_id: u32, flags: u8, length: usize) -> Result<[u8; 8], FrameError> {
    if length > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(length));
    }
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out[4..].copy_from_slice(&((u32::from(flags) << 24) | length as u32).to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> (FrameHead, &[u8]) {
        let head = parse_head(frame[..8].try_into().unwrap());
        assert_eq!(head.length(), frame.len() - 8);
        (head, &frame[8..])
    }

    fn parse(frame: &[u8], dec: &mut HeaderDecompressor) -> Control {
        match split(frame) {
            (
                FrameHead::Control {
                    version,
                    kind,
                    flags,
                    ..
                },
                payload,
            ) => parse_control(version, kind, flags, payload, dec, 65536).unwrap(),
            other => panic!("not control: {other:?}"),
        }
    }

    #[test]
    fn syn_stream_and_reply_round_trip_with_shared_zlib_state() {
        let mut comp = HeaderCompressor::new();
        let mut dec = HeaderDecompressor::new();
        let f = encode_syn_stream(
            1,
            0,
            2,
            FLAG_FIN,
            &[
                ("StreamType", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
            &mut comp,
        )
        .unwrap();
        assert_eq!(&f[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(
            parse(&f, &mut dec),
            Control::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 2,
                flags: FLAG_FIN,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
            }
        );
        let f = encode_syn_reply(3, 0, &[], &mut comp).unwrap();
        assert_eq!(
            parse(&f, &mut dec),
            Control::SynReply {
                stream_id: 3,
                flags: 0,
                headers: vec![],
            }
        );
    }

    #[test]
    fn fixed_control_frames_round_trip() {
        let mut dec = HeaderDecompressor::new();
        assert_eq!(
            encode_rst_stream(5, rst::CANCEL),
            [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]
        );
        assert_eq!(
            parse(&encode_rst_stream(5, rst::CANCEL), &mut dec),
            Control::RstStream {
                stream_id: 5,
                status: rst::CANCEL
            }
        );
        assert_eq!(parse(&encode_ping(7), &mut dec), Control::Ping { id: 7 });
        assert_eq!(
            parse(&encode_goaway(9, goaway::OK), &mut dec),
            Control::GoAway {
                last_good_stream_id: 9,
                status: 0
            }
        );
        assert_eq!(
            parse(&encode_window_update(3, 65536), &mut dec),
            Control::WindowUpdate {
                stream_id: 3,
                delta: 65536
            }
        );
        // SETTINGS as spdystream writes it: count, then (flags<<24|id, value).
        let settings = [
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0x01, 0, 0, 7, 0, 1, 0, 0,
        ];
        assert_eq!(
            parse(&settings, &mut dec),
            Control::Settings {
                flags: 0,
                entries: vec![(1, 7, 65536)]
            }
        );
        assert_eq!(
            parse(&[0x80, 3, 0, 0x42, 0, 0, 0, 0], &mut dec),
            Control::Unknown { kind: 0x42 }
        );
    }

    #[test]
    fn data_head_round_trip() {
        let h = encode_data_head(0x7fff_fffe, FLAG_FIN, 0x12_3456).unwrap();
        assert_eq!(
            parse_head(h),
            FrameHead::Data {
                stream_id: 0x7fff_fffe,
                flags: FLAG_FIN,
                length: 0x12_3456
            }
        );
        assert!(encode_data_head(1, 0, MAX_FRAME_LEN + 1).is_err());
    }

    #[test]
    fn malformed_control_frames_are_errors_not_panics() {
        let mut dec = HeaderDecompressor::new();
        for (kind, payload) in [
            (TYPE_SYN_STREAM, &[0u8, 0, 0, 1][..]),
            (TYPE_SYN_REPLY, &[0, 0][..]),
            (TYPE_RST_STREAM, &[0, 0, 0, 1, 0][..]),
            (TYPE_RST_STREAM, &[0, 0, 0, 0, 0, 0, 0, 1][..]),
            (TYPE_SETTINGS, &[0xff, 0xff, 0xff, 0xff][..]),
            (TYPE_PING, &[][..]),
            (TYPE_GOAWAY, &[1][..]),
            (TYPE_WINDOW_UPDATE, &[1, 2, 3][..]),
            (
                TYPE_SYN_STREAM,
                &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3][..],
            ),
        ] {
            assert!(
                parse_control(3, kind, 0, payload, &mut HeaderDecompressor::new(), 1024).is_err(),
                "{kind} {payload:?}"
            );
        }
        assert_eq!(
            parse_control(2, TYPE_PING, 0, &[0, 0, 0, 1], &mut dec, 1024),
            Err(FrameError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn header_block_round_trip_and_bad_blocks() {
        let b = encode_header_block(&[("Port", "80"), ("x", "a\0b")]);
        let h = decode_header_block(&b).unwrap();
        assert_eq!(
            h,
            vec![("port".into(), "80".into()), ("x".into(), "a\0b".into())]
        );
        assert_eq!(header(&h, "x"), Some("a"));
        assert_eq!(header(&h, "port"), Some("80"));
        assert_eq!(header(&h, "nope"), None);
        assert!(decode_header_block(&[]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_header_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(decode_header_block(&trailing).is_err());
    }
}
