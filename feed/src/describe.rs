//! A publisher's description: its session, classes and counters, the body
//! of a Description packet (the answer to a Describe request). Subscribers
//! learn which channels each class carries from it; `txlog feed status`
//! prints it.
//!
//! ```text
//! session u64 | class_count u8 | class_count × (weight u16 | name_len u8 | name
//!   | pattern_count u8 | pattern_count × (len u8 | pattern))
//! | counter_count u8 | counter_count × (name_len u8 | name | value u64)
//! ```

use crate::class::Classes;
use crate::class::PriorityClass;
use crate::error::Error;
use crate::packet::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub session: u64,
    pub classes: Classes,
    pub counters: Vec<(String, u64)>,
}

impl Description {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.session.to_le_bytes());
        out.push(self.classes.len() as u8);
        for class in self.classes.iter() {
            out.extend_from_slice(&(class.weight as u16).to_le_bytes());
            put_str(&mut out, &class.name);
            out.push(class.patterns.len() as u8);
            for pattern in &class.patterns {
                put_str(&mut out, pattern);
            }
        }
        out.push(self.counters.len() as u8);
        for (name, value) in &self.counters {
            put_str(&mut out, name);
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<Description, Error> {
        let mut reader = Reader(body);
        let session = reader.u64()?;
        let mut classes = Vec::new();
        for _ in 0..reader.u8()? {
            let weight = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes")) as u32;
            let name = get_str(&mut reader)?;
            let mut patterns = Vec::new();
            for _ in 0..reader.u8()? {
                patterns.push(get_str(&mut reader)?);
            }
            classes.push(PriorityClass { name, weight, patterns });
        }
        let classes = Classes::new(classes).map_err(|e| Error::malformed(format!("description: {e}")))?;
        let mut counters = Vec::new();
        for _ in 0..reader.u8()? {
            let name = get_str(&mut reader)?;
            counters.push((name, reader.u64()?));
        }
        Ok(Description {
            session,
            classes,
            counters,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u8::MAX as usize)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn get_str(reader: &mut Reader<'_>) -> Result<String, Error> {
    let len = reader.u8()? as usize;
    String::from_utf8(reader.take(len)?.to_vec()).map_err(|_| Error::malformed("description text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let description = Description {
            session: 77,
            classes: Classes::default(),
            counters: vec![("packets_sent".into(), 12), ("rerequests".into(), 0)],
        };
        let bytes = description.encode();
        assert_eq!(Description::decode(&bytes).expect("valid"), description);
        for len in 0..bytes.len() {
            assert!(Description::decode(&bytes[..len]).is_err(), "cut at {len} accepted");
        }
    }
}
