//! Client keys and roles, kept in the log so that every node holds the
//! same policy at the same index (access control, item 3).
//!
//! Each change is one record on the reserved channel [`ACCESS_CHANNEL`],
//! proposed by the admin service on the leader through the batcher, so it
//! is sealed like any batch (encrypted on the wire, sealed at rest): a
//! client secret is never in clear in the log or on disk. An unsealed
//! cluster refuses key changes for that reason. The policy is the fold of
//! those records in seq order ([`AccessPolicy::apply`]); a node rebuilds it
//! from its record store.
//!
//! Records: `version u8 | postcard(AccessEvent)`, txid
//! `_access/<kind>/<name>/<unix ns>`.
//!
//! Nodes enforce the policy on every call (`access_guard.rs`). Not yet:
//! the secret travels in the admin request without TLS.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

/// The reserved channel of access changes.
pub const ACCESS_CHANNEL: &str = "_access";
const ACCESS_EVENT_VERSION: u8 = 1;
/// Largest encoded access event: a role with many rules is still small.
pub const ACCESS_EVENT_BYTES_MAX: usize = 64 * 1024;
/// Rules in one role.
pub const ROLE_RULES_MAX: usize = 256;

/// What a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    Append,
    Read,
    Subscribe,
    Admin,
}

impl Operation {
    pub fn parse(text: &str) -> Result<Operation, String> {
        match text {
            "append" => Ok(Operation::Append),
            "read" => Ok(Operation::Read),
            "subscribe" => Ok(Operation::Subscribe),
            "admin" => Ok(Operation::Admin),
            other => Err(format!(
                "unknown operation {other:?}: use append, read, subscribe or admin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Append => "append",
            Operation::Read => "read",
            Operation::Subscribe => "subscribe",
            Operation::Admin => "admin",
        }
    }
}

/// Which channels a rule covers: `*` (all), `prefix*`, or one exact name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl ChannelPattern {
    pub fn parse(text: &str) -> Result<ChannelPattern, String> {
        // A name, or a prefix, follows the rules of channel names.
        let valid = |name: &str| txlog_storage::ChannelName::parse(name).is_ok();
        match text {
            "*" => Ok(ChannelPattern::Any),
            // The reserved channels clients may read (an auditor's role).
            crate::audit::AUDIT_CHANNEL | txlog_raft::KEYS_CHANNEL => Ok(ChannelPattern::Exact(text.to_string())),
            _ => match text.strip_suffix('*') {
                Some(prefix) if valid(prefix) => Ok(ChannelPattern::Prefix(prefix.to_string())),
                None if valid(text) => Ok(ChannelPattern::Exact(text.to_string())),
                _ => Err(format!(
                    "channel pattern {text:?}: use *, a channel name, or a name prefix ending in *"
                )),
            },
        }
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            ChannelPattern::Any => true,
            ChannelPattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
            ChannelPattern::Exact(name) => channel == name,
        }
    }
}

impl std::fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelPattern::Any => f.write_str("*"),
            ChannelPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            ChannelPattern::Exact(name) => f.write_str(name),
        }
    }
}

/// Operations allowed on the channels a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRule {
    pub operations: Vec<Operation>,
    pub channels: ChannelPattern,
}

impl RoleRule {
    /// `OPS:PATTERN`, e.g. `append,read:orders` or `subscribe:md.*`.
    pub fn parse(text: &str) -> Result<RoleRule, String> {
        let (ops, pattern) = text
            .split_once(':')
            .ok_or_else(|| format!("rule {text:?}: write OPERATIONS:CHANNELS, e.g. append,read:orders"))?;
        let mut operations = ops
            .split(',')
            .map(|op| Operation::parse(op.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        operations.sort();
        operations.dedup();
        Ok(RoleRule {
            operations,
            channels: ChannelPattern::parse(pattern.trim())?,
        })
    }
}

impl std::fmt::Display for RoleRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: Vec<&str> = self.operations.iter().map(|op| op.as_str()).collect();
        write!(f, "{}:{}", ops.join(","), self.channels)
    }
}

/// One access change, as stored in the log. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessEvent {
    /// A client key and its secret; replaces an earlier key of that id.
    KeyAdd {
        key_id: String,
        secret: [u8; 32],
        roles: Vec<String>,
        created_ns: u64,
    },
    /// The key's tokens are refused from this record on.
    KeyRevoke { key_id: String, created_ns: u64 },
    /// A role's rules; replaces an earlier role of that name.
    RoleSet {
        name: String,
        rules: Vec<RoleRule>,
        created_ns: u64,
    },
    /// An address allowlist (`allow_clients`, `allow_admin`,
    /// `allow_peers`) for every node; `None` goes back to each node's config.
    AllowlistSet {
        list: String,
        cidrs: Option<Vec<String>>,
        created_ns: u64,
    },
}

impl std::fmt::Debug for AccessEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessEvent::KeyAdd {
                key_id,
                roles,
                created_ns,
                ..
            } => f
                .debug_struct("KeyAdd")
                .field("key_id", key_id)
                .field("roles", roles)
                .field("created_ns", created_ns)
                .finish_non_exhaustive(),
            AccessEvent::KeyRevoke { key_id, created_ns } => f
                .debug_struct("KeyRevoke")
                .field("key_id", key_id)
                .field("created_ns", created_ns)
                .finish(),
            AccessEvent::RoleSet {
                name,
                rules,
                created_ns,
            } => f
                .debug_struct("RoleSet")
                .field("name", name)
                .field("rules", rules)
                .field("created_ns", created_ns)
                .finish(),
            AccessEvent::AllowlistSet {
                list,
                cidrs,
                created_ns,
            } => f
                .debug_struct("AllowlistSet")
                .field("list", list)
                .field("cidrs", cidrs)
                .field("created_ns", created_ns)
                .finish(),
        }
    }
}

impl AccessEvent {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ACCESS_EVENT_VERSION];
        out.extend(postcard::to_allocvec(self).expect("encoding an access event cannot fail"));
        assert!(out.len() <= ACCESS_EVENT_BYTES_MAX, "access event over its limit");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<AccessEvent, String> {
        if bytes.len() > ACCESS_EVENT_BYTES_MAX {
            return Err(format!("access event of {} bytes", bytes.len()));
        }
        match bytes.split_first() {
            Some((&ACCESS_EVENT_VERSION, body)) => postcard::from_bytes(body).map_err(|e| format!("access event: {e}")),
            Some((version, _)) => Err(format!("access event version {version}")),
            None => Err("empty access event".into()),
        }
    }

    /// The record's txid: unique per change.
    pub fn txid(&self) -> String {
        match self {
            AccessEvent::KeyAdd { key_id, created_ns, .. } => format!("_access/key/{key_id}/add/{created_ns}"),
            AccessEvent::KeyRevoke { key_id, created_ns } => format!("_access/key/{key_id}/revoke/{created_ns}"),
            AccessEvent::RoleSet { name, created_ns, .. } => format!("_access/role/{name}/set/{created_ns}"),
            AccessEvent::AllowlistSet { list, created_ns, .. } => format!("_access/allowlist/{list}/{created_ns}"),
        }
    }
}

/// A client key as the policy holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub secret: [u8; 32],
    pub roles: Vec<String>,
    pub added_seq: u64,
    /// The seq of the revocation, if revoked.
    pub revoked_seq: Option<u64>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("roles", &self.roles)
            .field("added_seq", &self.added_seq)
            .field("revoked_seq", &self.revoked_seq)
            .finish_non_exhaustive()
    }
}

/// A role as the policy holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub rules: Vec<RoleRule>,
    pub set_seq: u64,
}

/// The fold of the access records up to `applied_seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    pub keys: BTreeMap<String, ClientKey>,
    pub roles: BTreeMap<String, Role>,
    /// The last access record applied.
    pub applied_seq: u64,
    /// The first access record this build could not read, and why. A
    /// policy with one is broken: it may have missed a revocation (say,
    /// written by a newer build), so it grants nothing until rebuilt by a
    /// build that reads every record.
    pub unreadable: Option<(u64, String)>,
    /// Address allowlists set through the log, by setting name; each
    /// replaces that list of every node's config.
    pub allowlists: BTreeMap<String, Vec<String>>,
}

impl AccessPolicy {
    /// Apply the access record at `seq`. Records come in seq order; one
    /// that does not decode leaves the policy broken ([`Self::unreadable`])
    /// and is reported.
    pub fn apply(&mut self, seq: u64, payload: &[u8]) -> Result<(), String> {
        self.applied_seq = self.applied_seq.max(seq);
        let event = match AccessEvent::decode(payload) {
            Ok(event) => event,
            Err(err) => {
                self.unreadable.get_or_insert((seq, err.clone()));
                return Err(err);
            }
        };
        match event {
            AccessEvent::KeyAdd {
                key_id, secret, roles, ..
            } => {
                self.keys.insert(
                    key_id,
                    ClientKey {
                        secret,
                        roles,
                        added_seq: seq,
                        revoked_seq: None,
                    },
                );
            }
            AccessEvent::KeyRevoke { key_id, .. } => {
                if let Some(key) = self.keys.get_mut(&key_id) {
                    key.revoked_seq.get_or_insert(seq);
                }
            }
            AccessEvent::RoleSet { name, rules, .. } => {
                self.roles.insert(name, Role { rules, set_seq: seq });
            }
            AccessEvent::AllowlistSet { list, cidrs, .. } => match cidrs {
                Some(cidrs) => {
                    self.allowlists.insert(list, cidrs);
                }
                None => {
                    self.allowlists.remove(&list);
                }
            },
        }
        Ok(())
    }

    /// The secret of a key that exists and is not revoked (none while the
    /// policy is broken).
    pub fn secret_of(&self, key_id: &str) -> Option<[u8; 32]> {
        if self.unreadable.is_some() {
            return None;
        }
        self.keys
            .get(key_id)
            .filter(|k| k.revoked_seq.is_none())
            .map(|k| k.secret)
    }

    /// Whether key `key_id`, claiming `claimed` roles, may do `operation`
    /// on `channel`. `None` means every channel (an unfiltered read, or an
    /// admin call): only a `*` rule covers it. Only roles both claimed and
    /// granted to the key count; the error says which check failed.
    pub fn authorize(
        &self,
        key_id: &str,
        claimed: &[String],
        operation: Operation,
        channel: Option<&str>,
    ) -> Result<(), String> {
        if let Some((seq, err)) = &self.unreadable {
            return Err(format!(
                "the access policy is unreadable at seq {seq} ({err}); nothing is granted until every node runs a build that reads it"
            ));
        }
        let key = self
            .keys
            .get(key_id)
            .filter(|k| k.revoked_seq.is_none())
            .ok_or_else(|| format!("key {key_id:?} is unknown or revoked"))?;
        let allowed = claimed
            .iter()
            .filter(|role| key.roles.contains(role))
            .filter_map(|role| self.roles.get(role))
            .flat_map(|role| &role.rules)
            .any(|rule| {
                rule.operations.contains(&operation)
                    && match channel {
                        Some(channel) => rule.channels.matches(channel),
                        None => rule.channels == ChannelPattern::Any,
                    }
            });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "key {key_id:?} with roles {claimed:?} may not {} on {}",
                operation.as_str(),
                channel.map_or("every channel".to_string(), |c| format!("channel {c:?}"))
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules parse from the CLI's form and print back the same.
    #[test]
    fn rules_parse_and_print() {
        let rule = RoleRule::parse("read,append,read:orders").unwrap();
        assert_eq!(rule.operations, vec![Operation::Append, Operation::Read]);
        assert_eq!(rule.to_string(), "append,read:orders");
        assert_eq!(RoleRule::parse("subscribe:md.*").unwrap().to_string(), "subscribe:md.*");
        assert_eq!(RoleRule::parse("admin:*").unwrap().channels, ChannelPattern::Any);
        assert_eq!(RoleRule::parse("read:_audit").unwrap().to_string(), "read:_audit");
        for bad in [
            "append",
            "write:orders",
            "read:Orders",
            "read:",
            "read:*x*",
            ":orders",
            "read:_access",
            "read:_x",
        ] {
            assert!(RoleRule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The fold: keys and roles replace by name, a revocation sticks, a
    /// record that does not decode changes nothing; authorization needs a
    /// role both claimed and granted, whose rule covers the operation and
    /// the channel.
    #[test]
    fn the_policy_is_the_fold_of_its_records() {
        let mut policy = AccessPolicy::default();
        let events = [
            AccessEvent::RoleSet {
                name: "md-bot".into(),
                rules: vec![RoleRule::parse("subscribe:order-book").unwrap()],
                created_ns: 1,
            },
            AccessEvent::RoleSet {
                name: "risk".into(),
                rules: vec![RoleRule::parse("read,subscribe:*").unwrap()],
                created_ns: 2,
            },
            AccessEvent::KeyAdd {
                key_id: "bot-1".into(),
                secret: [1; 32],
                roles: vec!["md-bot".into()],
                created_ns: 3,
            },
            AccessEvent::KeyAdd {
                key_id: "risk-1".into(),
                secret: [2; 32],
                roles: vec!["risk".into()],
                created_ns: 4,
            },
        ];
        for (i, event) in events.iter().enumerate() {
            assert_eq!(AccessEvent::decode(&event.encode()).unwrap(), *event, "round trip");
            policy.apply(10 + i as u64, &event.encode()).unwrap();
        }
        let md = ["md-bot".to_string()];
        let risk = ["risk".to_string()];
        policy
            .authorize("bot-1", &md, Operation::Subscribe, Some("order-book"))
            .unwrap();
        let err = policy
            .authorize("bot-1", &md, Operation::Subscribe, Some("executions"))
            .unwrap_err();
        assert!(err.contains("may not subscribe on channel \"executions\""), "{err}");
        assert!(policy
            .authorize("bot-1", &md, Operation::Append, Some("order-book"))
            .is_err());
        assert!(
            policy
                .authorize("bot-1", &risk, Operation::Read, Some("orders"))
                .is_err(),
            "a role claimed but not granted counts for nothing"
        );
        policy
            .authorize("risk-1", &risk, Operation::Read, Some("anything"))
            .unwrap();
        assert!(policy.authorize("risk-1", &risk, Operation::Admin, None).is_err());
        policy.authorize("risk-1", &risk, Operation::Read, None).unwrap();
        assert!(
            policy.authorize("bot-1", &md, Operation::Subscribe, None).is_err(),
            "every channel needs a * rule"
        );
        assert!(!format!("{:?}", events[2]).contains("[1, 1"), "Debug hides the secret");

        let revoke = AccessEvent::KeyRevoke {
            key_id: "bot-1".into(),
            created_ns: 5,
        };
        policy.apply(30, &revoke.encode()).unwrap();
        assert_eq!(policy.secret_of("bot-1"), None);
        assert!(policy
            .authorize("bot-1", &md, Operation::Subscribe, Some("order-book"))
            .unwrap_err()
            .contains("revoked"));
        assert_eq!(policy.keys["bot-1"].revoked_seq, Some(30));
        assert_eq!(policy.applied_seq, 30);
        assert!(!format!("{:?}", policy.keys["risk-1"]).contains("secret"));

        // A record this build cannot read (a newer format, say) leaves the
        // policy granting nothing: it may have been a revocation.
        let mut broken = policy.clone();
        assert!(broken.apply(40, b"\x07").is_err());
        assert!(broken.apply(41, b"\x01garbage").is_err());
        assert_eq!(broken.unreadable.as_ref().map(|(seq, _)| *seq), Some(40));
        assert_eq!(broken.secret_of("risk-1"), None);
        let err = broken
            .authorize("risk-1", &risk, Operation::Read, Some("x"))
            .unwrap_err();
        assert!(err.contains("unreadable at seq 40"), "{err}");
    }
}
