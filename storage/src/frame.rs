//! The frame of the WAL and the record file: `len u32 LE | crc32(body) u32 LE | body`.
//!
//! `len` counts body bytes only. A frame is valid only if all of it is
//! present, `len <= WAL_RECORD_BYTES_MAX` and the checksum matches.

use crate::WAL_RECORD_BYTES_MAX;

pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// Append one framed record to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&header(body));
    out.extend_from_slice(body);
}

/// The header of the frame holding `body`.
fn header(body: &[u8]) -> [u8; FRAME_HEADER_BYTES] {
    assert!(
        !body.is_empty() && body.len() <= WAL_RECORD_BYTES_MAX as usize,
        "wal record too large: {}",
        body.len()
    );
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    header
}

/// Frame `value`'s postcard encoding onto `out`, encoding it in place
/// (no copy of the body); returns the frame's length.
pub(crate) fn encode_value_into<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    *out = postcard::to_extend(value, std::mem::take(out)).expect("encoding an in-memory value cannot fail");
    let header = header(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header);
    out.len() - start
}

/// Outcome of decoding the frame at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, valid frame; `frame_bytes` is header plus body.
    Frame { body: &'a [u8], frame_bytes: usize },
    /// Fewer bytes than the frame needs: a torn write if at the end of a file.
    Incomplete,
    /// The frame is whole but its length or checksum is wrong; `frame_end`
    /// is where the frame claims to end, relative to the start of `buf`.
    Invalid { detail: String, frame_end: usize },
}

/// The body length a frame header announces, or `None` when it is out of
/// range. Zero is never written (an entry encodes to at least one byte) and
/// is what a zero-filled tail after a crash looks like.
pub(crate) fn body_len(header: &[u8; FRAME_HEADER_BYTES]) -> Option<u32> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    (len != 0 && len <= WAL_RECORD_BYTES_MAX).then_some(len)
}

/// Whether `body` has the checksum `header` carries (for readers that read
/// the header and the body separately).
pub(crate) fn body_matches(header: &[u8; FRAME_HEADER_BYTES], body: &[u8]) -> bool {
    u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) == crc32fast::hash(body)
}

pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Decoded::Incomplete;
    };
    let Some(len) = body_len(header) else {
        return Decoded::Invalid {
            detail: format!(
                "record length {} out of range",
                u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"))
            ),
            frame_end: buf.len(),
        };
    };
    let end = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < end {
        return Decoded::Incomplete;
    }
    let body = &buf[FRAME_HEADER_BYTES..end];
    if !body_matches(header, body) {
        return Decoded::Invalid {
            detail: "record checksum mismatch".to_string(),
            frame_end: end,
        };
    }
    Decoded::Frame { body, frame_bytes: end }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every strict prefix of a frame is Incomplete, the whole frame decodes, a flipped body byte is Invalid.
    #[test]
    fn prefixes_and_damage() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"hello wal");
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            decode(&buf),
            Decoded::Frame {
                body: b"hello wal",
                frame_bytes: buf.len()
            }
        );
        buf[10] ^= 1;
        assert!(matches!(decode(&buf), Decoded::Invalid { .. }));
    }

    /// Encoding a value in place frames the same bytes as encoding it first.
    #[test]
    fn value_encoded_in_place_is_the_same_frame() {
        let value = (7u64, "channel".to_string(), vec![3u8; 300]);
        let mut expected = b"before".to_vec();
        encode_into(&mut expected, &postcard::to_allocvec(&value).unwrap());
        let mut framed = b"before".to_vec();
        let frame_bytes = encode_value_into(&mut framed, &value);
        assert_eq!(framed, expected);
        assert_eq!(frame_bytes, expected.len() - b"before".len());
    }
}
