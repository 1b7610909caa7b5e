//! SPDY/3 header-block compression: one stateful zlib stream per direction of a connection, each
//! header block ending with a sync flush.
//!
//! - Inbound ([`HeaderDecompressor`]): the peer (Go's `compress/zlib` writer in spdystream) primes
//!   its stream with the SPDY/3 dictionary, so its zlib header carries FDICT and the dictionary's
//!   adler32. flate2's pure-Rust backend cannot preset a dictionary, so this drives
//!   `miniz_oxide`'s low-level inflater over a 32 KiB *wrapping* window whose first bytes are
//!   pre-filled with the dictionary: back-references into the dictionary then resolve like any
//!   other back-reference. The 2-byte zlib header (and the 4-byte dictionary id) are parsed here,
//!   the rest is inflated raw; the trailing adler32 never comes (the stream never ends).
//! - Outbound ([`HeaderCompressor`]): a zlib stream *without* a preset dictionary. Go's
//!   `zlib.NewReaderDict` only checks the dictionary id when the header's FDICT bit is set; a
//!   stream that never references the dictionary decodes the same either way.

use flate2::{Compress, Compression, FlushCompress, Status};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use super::dictionary::{DICTIONARY, DICTIONARY_ADLER32};

/// The inflate window (deflate's maximum distance); a power of two, as the wrapping buffer needs.
const WINDOW: usize = 32 * 1024;

/// A zlib-level error in a header block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZlibError {
    #[error("invalid zlib header {0:#04x} {1:#04x}")]
    BadHeader(u8, u8),
    #[error("zlib stream wants dictionary {0:#010x}, not the SPDY/3 dictionary")]
    WrongDictionary(u32),
    #[error("corrupt deflate data ({0})")]
    Corrupt(String),
    #[error("deflate stream ended; no more header blocks can follow")]
    StreamEnded,
    #[error("decompressed header block exceeds {0} bytes")]
    TooLarge(usize),
    #[error("compression failed: {0}")]
    Compress(String),
}

/// zlib's adler32 checksum.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 is the largest n with 255n(n+1)/2 + (n+1)(MOD-1) < 2^32.
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Where the decompressor is in the zlib framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting the 2-byte header (and, with FDICT, the 4-byte dictionary id).
    Header,
    /// Inflating deflate blocks.
    Inflate,
    /// The final deflate block ended.
    Ended,
}

/// The inbound header-block decompressor of one connection.
pub struct HeaderDecompressor {
    inflater: Box<DecompressorOxide>,
    window: Vec<u8>,
    pos: usize,
    phase: Phase,
    header: Vec<u8>,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("phase", &self.phase)
            .field("pos", &self.pos)
            .finish()
    }
}

impl HeaderDecompressor {
    pub fn new() -> Self {
        let mut window = vec![0u8; WINDOW];
        window[..DICTIONARY.len()].copy_from_slice(&DICTIONARY);
        Self {
            inflater: Box::default(),
            window,
            pos: DICTIONARY.len(),
            phase: Phase::Header,
            header: Vec::with_capacity(6),
        }
    }

    /// Decompresses one header block (the next piece of the connection's zlib stream), returning
    /// at most `limit` bytes (more is an error).
    pub fn decompress(&mut self, mut input: &[u8], limit: usize) -> Result<Vec<u8>, ZlibError> {
        if self.phase == Phase::Header {
            while self.phase == Phase::Header {
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(Vec::new());
                };
                input = rest;
                self.header.push(byte);
                self.check_header()?;
            }
        }
        let mut out = Vec::new();
        while !input.is_empty() {
            if self.phase == Phase::Ended {
                return Err(ZlibError::StreamEnded);
            }
            let (status, consumed, produced) = decompress(
                &mut self.inflater,
                input,
                &mut self.window,
                self.pos,
                inflate_flags::TINFL_FLAG_HAS_MORE_INPUT,
            );
            if out.len() + produced > limit {
                return Err(ZlibError::TooLarge(limit));
            }
            out.extend_from_slice(&self.window[self.pos..self.pos + produced]);
            self.pos = (self.pos + produced) & (WINDOW - 1);
            input = &input[consumed..];
            match status {
                TINFLStatus::Done => self.phase = Phase::Ended,
                TINFLStatus::NeedsMoreInput => {
                    if !input.is_empty() && consumed == 0 && produced == 0 {
                        return Err(ZlibError::Corrupt("inflater made no progress".into()));
                    }
                }
                TINFLStatus::HasMoreOutput => {
                    if consumed == 0 && produced == 0 {
                        return Err(ZlibError::Corrupt("inflater made no progress".into()));
                    }
                }
                other => return Err(ZlibError::Corrupt(format!("{other:?}"))),
            }
        }
        Ok(out)
    }

    fn check_header(&mut self) -> Result<(), ZlibError> {
        match self.header.len() {
            2 => {
                let (cmf, flg) = (self.header[0], self.header[1]);
                let valid = cmf & 0x0f == 8
                    && cmf >> 4 <= 7
                    && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
                if !valid {
                    return Err(ZlibError::BadHeader(cmf, flg));
                }
                if flg & 0x20 == 0 {
                    self.phase = Phase::Inflate;
                }
            }
            6 => {
                let id = u32::from_be_bytes([
                    self.header[2],
                    self.header[3],
                    self.header[4],
                    self.header[5],
                ]);
                if id != DICTIONARY_ADLER32 {
                    return Err(ZlibError::WrongDictionary(id));
                }
                self.phase = Phase::Inflate;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The outbound header-block compressor of one connection.
pub struct HeaderCompressor {
    compress: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor").finish_non_exhaustive()
    }
}

impl HeaderCompressor {
    pub fn new() -> Self {
        Self {
            compress: Compress::new(Compression::default(), true),
        }
    }

    /// Compresses one header block, ending it with a sync flush so the peer can decode it whole.
    pub fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>, ZlibError> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let start = self.compress.total_in();
        loop {
            let consumed = usize::try_from(self.compress.total_in() - start)
                .map_err(|e| ZlibError::Compress(e.to_string()))?;
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let status = self
                .compress
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| ZlibError::Compress(e.to_string()))?;
            let consumed = usize::try_from(self.compress.total_in() - start)
                .map_err(|e| ZlibError::Compress(e.to_string()))?;
            match status {
                Status::Ok | Status::BufError => {
                    if consumed == input.len() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                }
                Status::StreamEnd => return Err(ZlibError::StreamEnded),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header blocks compressed by C zlib (Python's `zlib.compressobj(zdict=<SPDY/3
    /// dictionary>)`, two blocks each ending in `Z_SYNC_FLUSH`), as spdystream's Go writer does:
    /// `streamtype: error|data, port: 8080, requestid: 0`.
    const VECTOR_1: &str = "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff";
    const VECTOR_2: &str = "c2aa19540e2512d60b000000ffff";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn block(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    #[test]
    fn dictionary_adler32_matches_constant() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), DICTIONARY_ADLER32);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn decompresses_zlib_vector_with_dictionary_across_blocks() {
        let mut d = HeaderDecompressor::new();
        let one = d.decompress(&unhex(VECTOR_1), 4096).unwrap();
        assert_eq!(
            one,
            block(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ])
        );
        let two = d.decompress(&unhex(VECTOR_2), 4096).unwrap();
        assert_eq!(
            two,
            block(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
        );
    }

    #[test]
    fn decompresses_byte_by_byte() {
        let mut d = HeaderDecompressor::new();
        let mut out = Vec::new();
        for b in unhex(VECTOR_1) {
            out.extend(d.decompress(&[b], 4096).unwrap());
        }
        assert_eq!(
            out,
            block(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ])
        );
    }

    #[test]
    fn rejects_bad_header_and_wrong_dictionary_and_limit() {
        let mut d = HeaderDecompressor::new();
        assert!(matches!(
            d.decompress(&[0x12, 0x34], 10),
            Err(ZlibError::BadHeader(..))
        ));
        let mut v = unhex(VECTOR_1);
        v[5] ^= 1;
        assert!(matches!(
            HeaderDecompressor::new().decompress(&v, 4096),
            Err(ZlibError::WrongDictionary(_))
        ));
        assert!(matches!(
            HeaderDecompressor::new().decompress(&unhex(VECTOR_1), 10),
            Err(ZlibError::TooLarge(10))
        ));
        // Garbage after a valid header: an error, never a panic.
        let mut g = HeaderDecompressor::new();
        let _ = g.decompress(&[0x78, 0x9c, 0xff, 0xff, 0xff, 0xff, 0xff], 4096);
    }

    #[test]
    fn compressor_round_trips_through_decompressor_statefully() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new();
        for i in 0..50 {
            let b = block(&[("streamtype", "data"), ("port", &i.to_string())]);
            let z = c.compress(&b).unwrap();
            assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
            assert_eq!(d.decompress(&z, 4096).unwrap(), b);
        }
        // A large block spanning the window.
        let big = vec![b'x'; 100_000];
        let z = c.compress(&big).unwrap();
        assert_eq!(d.decompress(&z, 200_000).unwrap(), big);
    }

    #[test]
    fn compressor_output_needs_no_dictionary() {
        let mut c = HeaderCompressor::new();
        let b = block(&[]);
        let z = c.compress(&b).unwrap();
        assert_eq!(z[1] & 0x20, 0, "no FDICT");
        let mut plain = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(64);
        plain
            .decompress_vec(&z, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, b);
    }
}
