//! Priority classes: which channels go on which feed stream, and the share
//! of egress each stream gets under overload.
//!
//! Classes are ordered, highest priority first. A channel belongs to the
//! first class with a pattern that matches it (`name` exactly, or `prefix*`);
//! a class with the pattern `*` takes everything left. Channels whose names
//! start with `_` (the cluster's own: keyring, audit trail, access policy)
//! are never published.

use std::fmt;

use crate::error::Error;

/// Most classes a publisher runs (each is a stream with its own queue and ring share).
pub const CLASSES_MAX: usize = 16;
/// Largest weight: the number of packets a class may send per scheduling round.
pub const WEIGHT_MAX: u32 = 1024;
/// Longest class name and pattern.
const NAME_BYTES_MAX: usize = 64;
const PATTERNS_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityClass {
    pub name: String,
    /// Packets this class may send per scheduling round when every class is backlogged.
    pub weight: u32,
    pub patterns: Vec<String>,
}

impl PriorityClass {
    fn matches(&self, channel: &str) -> bool {
        self.patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => pattern == channel,
        })
    }
}

/// The ordered classes of a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    classes: Vec<PriorityClass>,
}

impl Default for Classes {
    /// Market data, then order book, then executions, then everything else.
    fn default() -> Classes {
        let class = |name: &str, weight, patterns: &[&str]| PriorityClass {
            name: name.into(),
            weight,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        };
        Classes {
            classes: vec![
                class("market-data", 8, &["market-data*"]),
                class("order-book", 4, &["order-book*"]),
                class("execution", 2, &["execution*"]),
                class("other", 1, &["*"]),
            ],
        }
    }
}

impl Classes {
    pub fn new(classes: Vec<PriorityClass>) -> Result<Classes, Error> {
        if classes.is_empty() || classes.len() > CLASSES_MAX {
            return Err(Error::config(format!(
                "a feed needs 1..={CLASSES_MAX} priority classes, got {}",
                classes.len()
            )));
        }
        for (i, class) in classes.iter().enumerate() {
            if class.name.is_empty() || class.name.len() > NAME_BYTES_MAX || !class.name.bytes().all(name_byte) {
                return Err(Error::config(format!(
                    "class name {:?} must be 1..={NAME_BYTES_MAX} of [a-z0-9._-]",
                    class.name
                )));
            }
            if classes[..i].iter().any(|c| c.name == class.name) {
                return Err(Error::config(format!("class {:?} is named twice", class.name)));
            }
            if !(1..=WEIGHT_MAX).contains(&class.weight) {
                return Err(Error::config(format!(
                    "class {:?} has weight {}; weights are 1..={WEIGHT_MAX}",
                    class.name, class.weight
                )));
            }
            if class.patterns.is_empty() || class.patterns.len() > PATTERNS_MAX {
                return Err(Error::config(format!(
                    "class {:?} needs 1..={PATTERNS_MAX} channel patterns",
                    class.name
                )));
            }
            for pattern in &class.patterns {
                let stem = pattern.strip_suffix('*').unwrap_or(pattern);
                if pattern.len() > NAME_BYTES_MAX
                    || !stem.bytes().all(name_byte)
                    || (stem.is_empty() && pattern.is_empty())
                {
                    return Err(Error::config(format!(
                        "class {:?}: pattern {pattern:?} must be a channel name, a prefix ending in '*', or '*'",
                        class.name
                    )));
                }
            }
        }
        Ok(Classes { classes })
    }

    /// Parse `name=weight:pattern,pattern;name=weight:pattern…`, the form
    /// [`fmt::Display`] writes (for flags and environment variables).
    pub fn parse(spec: &str) -> Result<Classes, Error> {
        let mut classes = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                Error::config(format!(
                    "class {part:?} is not name=weight:pattern[,pattern…] (e.g. market-data=8:market-data*,md.*)"
                ))
            };
            let (name, rest) = part.split_once('=').ok_or_else(bad)?;
            let (weight, patterns) = rest.split_once(':').ok_or_else(bad)?;
            classes.push(PriorityClass {
                name: name.trim().to_string(),
                weight: weight.trim().parse().map_err(|_| bad())?,
                patterns: patterns.split(',').map(|p| p.trim().to_string()).collect(),
            });
        }
        Classes::new(classes)
    }

    /// The class of `channel`, or `None` if it is not published.
    pub fn classify(&self, channel: &str) -> Option<u8> {
        if channel.starts_with('_') {
            return None;
        }
        self.classes.iter().position(|c| c.matches(channel)).map(|i| i as u8)
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    pub fn get(&self, class: u8) -> Option<&PriorityClass> {
        self.classes.get(class as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PriorityClass> {
        self.classes.iter()
    }
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

impl fmt::Display for Classes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, class) in self.classes.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}={}:{}", class.name, class.weight, class.patterns.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_classes_order_and_catch_all() {
        let classes = Classes::default();
        assert_eq!(classes.classify("market-data"), Some(0));
        assert_eq!(classes.classify("market-data.eurex"), Some(0));
        assert_eq!(classes.classify("order-book"), Some(1));
        assert_eq!(classes.classify("execution"), Some(2));
        assert_eq!(classes.classify("orders"), Some(3));
        assert_eq!(
            classes.classify("_audit"),
            None,
            "the cluster's own channels are never published"
        );
        assert_eq!(classes.classify("_keys"), None);
    }

    /// The flag form parses back to the classes it was written from.
    #[test]
    fn spec_round_trip() {
        let classes = Classes::default();
        assert_eq!(Classes::parse(&classes.to_string()).expect("valid"), classes);
        let custom = Classes::parse("md=10:md.*,ticks; rest=1:*").expect("valid");
        assert_eq!(custom.classify("md.x"), Some(0));
        assert_eq!(custom.classify("ticks"), Some(0));
        assert_eq!(custom.classify("ticks2"), Some(1));
        let only = Classes::parse("fills=1:fills").expect("valid");
        assert_eq!(
            only.classify("orders"),
            None,
            "no catch-all: unmatched channels are not published"
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        for (spec, says) in [
            ("", "1..=16"),
            ("md", "name=weight"),
            ("md=0:md", "weight 0"),
            ("md=x:md", "name=weight"),
            ("md=1:md;md=2:x", "named twice"),
            ("MD=1:md", "class name"),
            ("md=1:Bad", "pattern"),
            ("md=1:", "pattern"),
        ] {
            let err = Classes::parse(spec).expect_err(spec).to_string();
            assert!(err.contains(says), "{spec:?}: {err}");
        }
    }
}
