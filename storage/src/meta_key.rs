//! Typed metadata keys: one Rust type writes a key and the same type reads it.
//!
//! A metadata value is `version u8 | postcard(T)`. The [`MetaKey`] carries
//! the key's name, its format version and the value type, so a value cannot
//! be written as one type and read back as another: the only way to touch a
//! key is [`crate::RecordStore::get_meta`] / [`crate::ApplyBatch::set_meta`]
//! with the same `MetaKey<T>`.
//!
//! This exists because a value written as `Option<LogId>` and read as
//! `LogId` once decoded without an error: postcard's `Some` tag became the
//! term and every field shifted by one, so the applied index read back as
//! the leader's node id and acknowledged records vanished from a restarted
//! follower. Decoding is therefore strict as well: the version must match
//! and every byte must be consumed, so a shape mismatch is reported as
//! [`Error::Decode`] instead of producing a plausible wrong value.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::error::Result;

/// A named, versioned metadata value of type `T`.
pub struct MetaKey<T> {
    name: &'static str,
    version: u8,
    value: PhantomData<fn() -> T>,
}

impl<T> MetaKey<T> {
    /// Declare a key. `version` changes whenever `T`'s encoding changes; a
    /// stored value with another version is refused, never reinterpreted.
    pub const fn new(name: &'static str, version: u8) -> Self {
        MetaKey {
            name,
            version,
            value: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// The sled key: `m` + name.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + self.name.len());
        key.push(b'm');
        key.extend_from_slice(self.name.as_bytes());
        key
    }
}

impl<T: Serialize + DeserializeOwned> MetaKey<T> {
    /// `version | postcard(value)`.
    pub fn encode(&self, value: &T) -> Vec<u8> {
        postcard::to_extend(value, vec![self.version]).expect("encoding an in-memory value cannot fail")
    }

    /// The inverse of [`MetaKey::encode`]; refuses another version and trailing bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<T> {
        let decode_error = |detail: String| Error::Decode {
            what: self.name,
            detail,
        };
        let (&version, body) = bytes
            .split_first()
            .ok_or_else(|| decode_error("empty value".to_string()))?;
        if version != self.version {
            return Err(decode_error(format!(
                "stored with format version {version}, this build reads version {}",
                self.version
            )));
        }
        decode_whole(body).map_err(decode_error)
    }
}

/// `postcard(T)` that must use every byte: a shape mismatch (a value
/// written as another type) is an error, never a plausible wrong value (see
/// the module doc). Every versioned value txlog decodes goes through here;
/// the error is a message for the caller's own error type.
pub fn decode_whole<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes: the value was written as another type",
            rest.len()
        ));
    }
    Ok(value)
}

impl<T> Clone for MetaKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for MetaKey<T> {}

impl<T> std::fmt::Debug for MetaKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetaKey({} v{})", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value read with the key that wrote it comes back equal; the shape bug that lost records (Option written, plain read) is an error.
    #[test]
    fn round_trip_and_shape_mismatch() {
        const AS_OPTION: MetaKey<Option<(u64, u64, u64)>> = MetaKey::new("applied", 1);
        const AS_PLAIN: MetaKey<(u64, u64, u64)> = MetaKey::new("applied", 1);
        for value in [None, Some((1, 1000, 121)), Some((u64::MAX, 300_000, 1 << 40))] {
            assert_eq!(AS_OPTION.decode(&AS_OPTION.encode(&value)).unwrap(), value);
        }
        let written = AS_OPTION.encode(&Some((1, 1000, 121)));
        let err = AS_PLAIN.decode(&written).unwrap_err();
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    /// Another version, an empty value and a cut value are refused with the key's name.
    #[test]
    fn version_and_damage_are_refused() {
        const V1: MetaKey<u64> = MetaKey::new("last_seq", 1);
        const V2: MetaKey<u64> = MetaKey::new("last_seq", 2);
        let bytes = V1.encode(&123_456_789);
        assert!(V2.decode(&bytes).unwrap_err().to_string().contains("version 1"));
        assert!(V1.decode(&[]).unwrap_err().to_string().contains("last_seq"));
        assert!(V1.decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
