//! `#[serde(with = "byte_string")]` for `Vec<u8>` fields: one byte string
//! instead of a sequence of integers.
//!
//! With postcard both are a varint length followed by the raw bytes, so the
//! encoding does not change; only decoding does: serde's `Vec<u8>` reads a
//! sequence one element at a time, which cost a fifth of the leader's CPU
//! when serving reads. A sequence is still accepted, for formats that write
//! one.

use serde::Deserializer;
use serde::Serializer;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(Visitor)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde::Serialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSequence {
        seq: u64,
        payload: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        seq: u64,
        #[serde(with = "super")]
        payload: Vec<u8>,
    }

    /// Stored records and WAL entries written before the attribute decode
    /// unchanged: the postcard bytes are the same both ways.
    #[test]
    fn postcard_bytes_are_unchanged() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let old = postcard::to_allocvec(&AsSequence {
                seq: 9,
                payload: payload.clone(),
            })
            .unwrap();
            let new = postcard::to_allocvec(&AsBytes {
                seq: 9,
                payload: payload.clone(),
            })
            .unwrap();
            assert_eq!(old, new, "{len} bytes");
            let decoded: AsBytes = postcard::from_bytes(&old).unwrap();
            assert_eq!(decoded.payload, payload);
        }
    }
}
