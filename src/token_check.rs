//! Checking a request token (see `client/src/token.rs` for what a token is
//! and what its MAC covers).
//!
//! In order, cheapest and secret-free first:
//! 1. shape: version, nonce and MAC sizes, key id and role names;
//! 2. time: issued no later than now + [`CLOCK_SKEW_MAX`], expiring no
//!    earlier than now − [`CLOCK_SKEW_MAX`], valid for at most
//!    [`TOKEN_TTL_MAX`];
//! 3. the key is known, and the MAC matches in constant time;
//! 4. the nonce has not been seen under this key while the token can be
//!    valid. A nonce is only recorded after its MAC matched, so no one
//!    without a secret can fill the cache.
//!
//! **Replay memory.** Each key remembers the nonces of its accepted
//! tokens until they expire (plus the skew), at most
//! [`NONCES_PER_KEY_MAX`]. Once it has forgotten nonces up to some time,
//! it refuses every token that would be forgotten by then, so a check
//! with an earlier clock cannot accept a replay of a forgotten nonce. A
//! key's memory is pruned when that key is checked; a key that goes quiet
//! keeps its last nonces (bounded per key; there is one memory per key the
//! policy knows). It never forgets a nonce early: when a key's
//! memory is full, its new tokens are refused (`RESOURCE_EXHAUSTED`, with
//! the time until the oldest entry expires) rather than accepted
//! unchecked. A client that keeps its tokens' TTL short (as the client
//! library does) needs room for its request rate × (TTL + 2 × skew).
//!
//! Nodes check every call through `access_guard.rs`, with the secrets of
//! the root key and of the keys in the log.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use txlog_client::check_token_name;
use txlog_client::token_mac_input;
use txlog_client::token_mac_matches;
use txlog_client::CLIENT_SECRET_BYTES;
use txlog_client::TOKEN_MAC_BYTES;
use txlog_client::TOKEN_NONCE_BYTES;
use txlog_client::TOKEN_ROLES_MAX;
use txlog_client::TOKEN_TTL_MAX;
use txlog_client::TOKEN_VERSION;
use txlog_proto::RequestToken;

/// How far a client's clock may be from this node's (the firm's
/// protocol: ±30 s).
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(30);
/// Nonces one key's replay memory holds: ~1 MB of memory per 20,000.
/// 1,000,000 covers a key sending ~2,800 requests a second with 300-s
/// tokens, or ~14,000 a second with 10-s tokens.
pub const NONCES_PER_KEY_MAX: usize = 1_000_000;

/// Why a token was refused. Every variant says which check failed, never
/// a secret or an expected MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("token: {0}")]
    Malformed(String),
    #[error("token expired {ago_ms} ms ago (clock skew allowed: {skew_ms} ms)")]
    Expired { ago_ms: u64, skew_ms: u64 },
    #[error("token issued {ahead_ms} ms in the future (clock skew allowed: {skew_ms} ms)")]
    FromTheFuture { ahead_ms: u64, skew_ms: u64 },
    #[error("token valid for {valid_ms} ms; at most {max_ms} ms allowed")]
    TooLong { valid_ms: u64, max_ms: u64 },
    #[error("token of unknown key {0:?}")]
    UnknownKey(String),
    #[error("token MAC does not match (another secret, method or payload) for key {0:?}")]
    BadMac(String),
    #[error("token already used (nonce seen before) for key {0:?}")]
    Replayed(String),
    #[error("too many live tokens for key {key:?}: retry in {retry_after_ms} ms, or use shorter-lived tokens")]
    ReplayMemoryFull { key: String, retry_after_ms: u64 },
}

impl TokenRefusal {
    /// `UNAUTHENTICATED`, except a full replay memory, which is the
    /// client's rate and passes: `RESOURCE_EXHAUSTED`, retryable.
    pub fn code(&self) -> tonic::Code {
        match self {
            TokenRefusal::ReplayMemoryFull { .. } => tonic::Code::ResourceExhausted,
            _ => tonic::Code::Unauthenticated,
        }
    }

    /// Refused for its times against this node's clock (expired, or
    /// issued in the future), not for what it is.
    pub fn is_about_time(&self) -> bool {
        matches!(self, TokenRefusal::Expired { .. } | TokenRefusal::FromTheFuture { .. })
    }
}

/// Who made an accepted request, as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub roles: Vec<String>,
}

/// Checks tokens and remembers the nonces of those it accepted.
#[derive(Default)]
pub struct TokenChecker {
    replay: Mutex<HashMap<String, KeyNonces>>,
}

/// One key's live nonces: a set to look them up and a heap by expiry to
/// forget them once no token carrying them can be valid.
#[derive(Default)]
struct KeyNonces {
    seen: HashSet<[u8; TOKEN_NONCE_BYTES]>,
    by_expiry: BinaryHeap<Reverse<(u64, [u8; TOKEN_NONCE_BYTES])>>,
    /// Nonces remembered until this time or earlier have been forgotten.
    /// A token that would be remembered no longer than that is refused:
    /// its nonce may have been forgotten already (a check that ran with a
    /// later clock pruned it), so a replay could not be told apart.
    forgotten_until_ms: u64,
}

impl TokenChecker {
    /// Check `token` for a call of `method` whose request message has
    /// SHA-256 `payload_digest`, at `now_ms` (Unix milliseconds).
    /// `secret_of` gives a known key's secret.
    pub fn check(
        &self,
        token: &RequestToken,
        method: &str,
        payload_digest: &[u8; 32],
        now_ms: u64,
        secret_of: impl FnOnce(&str) -> Option<[u8; CLIENT_SECRET_BYTES]>,
    ) -> Result<Caller, TokenRefusal> {
        let malformed = |what: String| Err(TokenRefusal::Malformed(what));
        if token.version != TOKEN_VERSION {
            return malformed(format!("version {} (this node checks {TOKEN_VERSION})", token.version));
        }
        let Ok(nonce) = <[u8; TOKEN_NONCE_BYTES]>::try_from(&token.nonce[..]) else {
            return malformed(format!(
                "nonce of {} bytes (want {TOKEN_NONCE_BYTES})",
                token.nonce.len()
            ));
        };
        if token.mac.len() != TOKEN_MAC_BYTES {
            return malformed(format!("MAC of {} bytes (want {TOKEN_MAC_BYTES})", token.mac.len()));
        }
        check_token_name("the key id", &token.key_id).map_err(|e| TokenRefusal::Malformed(e.to_string()))?;
        if token.roles.len() > TOKEN_ROLES_MAX {
            return malformed(format!("{} roles (at most {TOKEN_ROLES_MAX})", token.roles.len()));
        }
        for role in &token.roles {
            check_token_name("a role", role).map_err(|e| TokenRefusal::Malformed(e.to_string()))?;
        }

        let skew_ms = CLOCK_SKEW_MAX.as_millis() as u64;
        let max_ms = TOKEN_TTL_MAX.as_millis() as u64;
        if token.expires_at_ms < token.issued_at_ms {
            return malformed("expires before it is issued".into());
        }
        if token.expires_at_ms - token.issued_at_ms > max_ms {
            return Err(TokenRefusal::TooLong {
                valid_ms: token.expires_at_ms - token.issued_at_ms,
                max_ms,
            });
        }
        if token.issued_at_ms > now_ms.saturating_add(skew_ms) {
            return Err(TokenRefusal::FromTheFuture {
                ahead_ms: token.issued_at_ms - now_ms,
                skew_ms,
            });
        }
        if token.expires_at_ms.saturating_add(skew_ms) < now_ms {
            return Err(TokenRefusal::Expired {
                ago_ms: now_ms - token.expires_at_ms,
                skew_ms,
            });
        }

        let secret = secret_of(&token.key_id).ok_or_else(|| TokenRefusal::UnknownKey(token.key_id.clone()))?;
        if !token_mac_matches(&secret, &token_mac_input(token, method, payload_digest), &token.mac) {
            return Err(TokenRefusal::BadMac(token.key_id.clone()));
        }

        // Remembered until no clock within the skew can take it as valid.
        let forget_at_ms = token.expires_at_ms.saturating_add(skew_ms);
        let mut replay = self.replay.lock().expect("replay memory lock poisoned");
        let nonces = replay.entry(token.key_id.clone()).or_default();
        while let Some(Reverse((at, old))) = nonces.by_expiry.peek().copied() {
            if at >= now_ms {
                break;
            }
            nonces.by_expiry.pop();
            nonces.seen.remove(&old);
            nonces.forgotten_until_ms = nonces.forgotten_until_ms.max(at);
        }
        if forget_at_ms <= nonces.forgotten_until_ms {
            return Err(TokenRefusal::Expired {
                ago_ms: now_ms.saturating_sub(token.expires_at_ms),
                skew_ms,
            });
        }
        if nonces.seen.contains(&nonce) {
            return Err(TokenRefusal::Replayed(token.key_id.clone()));
        }
        if nonces.seen.len() >= NONCES_PER_KEY_MAX {
            let oldest = nonces.by_expiry.peek().map_or(now_ms, |Reverse((at, _))| *at);
            return Err(TokenRefusal::ReplayMemoryFull {
                key: token.key_id.clone(),
                retry_after_ms: oldest.saturating_sub(now_ms) + 1,
            });
        }
        nonces.seen.insert(nonce);
        nonces.by_expiry.push(Reverse((forget_at_ms, nonce)));
        Ok(Caller {
            key_id: token.key_id.clone(),
            roles: token.roles.clone(),
        })
    }

    /// Nonces remembered for `key_id` (for metrics and tests).
    pub fn remembered(&self, key_id: &str) -> usize {
        self.replay
            .lock()
            .expect("replay memory lock poisoned")
            .get(key_id)
            .map_or(0, |n| n.seen.len())
    }
}

#[cfg(test)]
mod tests {
    use txlog_client::ClientSecret;

    use super::*;

    const METHOD: &str = "/txlog.v1.LogService/Append";
    const NOW: u64 = 1_800_000_000_000;

    fn secrets(key: &ClientSecret) -> impl Fn(&str) -> Option<[u8; 32]> + '_ {
        move |id| (id == key.key_id()).then(|| *key.secret())
    }

    /// Each refusal the protocol names, with its status code, and a good
    /// token accepted exactly once.
    #[test]
    fn every_check_refuses_what_it_should() {
        let key = ClientSecret::new("desk-1", [1; 32]).unwrap();
        let digest = [9u8; 32];
        let checker = TokenChecker::default();
        let check = |token: &RequestToken, digest: &[u8; 32], now: u64| {
            checker.check(token, METHOD, digest, now, secrets(&key))
        };
        let issue = |at: u64, ttl_s: u64| {
            key.issue(&["writer".into()], Duration::from_secs(ttl_s), at, METHOD, &digest)
                .unwrap()
        };

        let good = issue(NOW, 300);
        let caller = check(&good, &digest, NOW).unwrap();
        assert_eq!(
            caller,
            Caller {
                key_id: "desk-1".into(),
                roles: vec!["writer".into()]
            }
        );
        let err = check(&good, &digest, NOW + 1).unwrap_err();
        assert_eq!(
            (err.code(), err.clone()),
            (tonic::Code::Unauthenticated, TokenRefusal::Replayed("desk-1".into()))
        );

        // Expired beyond the skew; within it, still taken.
        let old = issue(NOW - 400_000, 60);
        assert!(matches!(check(&old, &digest, NOW), Err(TokenRefusal::Expired { .. })));
        let just = issue(NOW - 80_000, 60);
        check(&just, &digest, NOW).unwrap();
        // Issued 5 minutes in the future; 20 s ahead is within the skew.
        let future = issue(NOW + 300_000, 60);
        assert!(matches!(
            check(&future, &digest, NOW),
            Err(TokenRefusal::FromTheFuture { .. })
        ));
        check(&issue(NOW + 20_000, 60), &digest, NOW).unwrap();

        // Another payload, another method, another secret, an unknown key.
        assert_eq!(
            check(&issue(NOW, 60), &[8; 32], NOW).unwrap_err(),
            TokenRefusal::BadMac("desk-1".into())
        );
        let other_method = issue(NOW, 60);
        assert!(matches!(
            checker.check(&other_method, "/txlog.v1.LogService/Read", &digest, NOW, secrets(&key)),
            Err(TokenRefusal::BadMac(_))
        ));
        let stranger = ClientSecret::new("desk-1", [2; 32]).unwrap();
        let forged = stranger
            .issue(&["admin".into()], Duration::from_secs(60), NOW, METHOD, &digest)
            .unwrap();
        assert!(matches!(check(&forged, &digest, NOW), Err(TokenRefusal::BadMac(_))));
        let unknown = ClientSecret::new("desk-9", [1; 32]).unwrap();
        let token = unknown
            .issue(&[], Duration::from_secs(60), NOW, METHOD, &digest)
            .unwrap();
        assert_eq!(
            check(&token, &digest, NOW).unwrap_err(),
            TokenRefusal::UnknownKey("desk-9".into())
        );

        // A token stretched past 300 s (its MAC would not match anyway: the
        // length is judged first, without the secret).
        let mut long = issue(NOW, 300);
        long.expires_at_ms += 1;
        assert!(matches!(check(&long, &digest, NOW), Err(TokenRefusal::TooLong { .. })));
        // Malformed shapes.
        let mut bad = issue(NOW, 60);
        bad.nonce = vec![0; 3].into();
        assert!(matches!(check(&bad, &digest, NOW), Err(TokenRefusal::Malformed(_))));
        let mut bad = issue(NOW, 60);
        bad.version = 9;
        assert!(matches!(check(&bad, &digest, NOW), Err(TokenRefusal::Malformed(_))));
        let mut bad = issue(NOW, 60);
        bad.roles = vec!["a b".into()];
        assert!(matches!(check(&bad, &digest, NOW), Err(TokenRefusal::Malformed(_))));

        // Refused tokens left nothing behind: only the accepted ones are remembered.
        assert_eq!(checker.remembered("desk-1"), 3);
        assert_eq!(checker.remembered("desk-9"), 0);
    }

    /// A nonce is remembered until its token can no longer be valid, then
    /// forgotten; a key with a full memory is refused, retryably, and never
    /// accepts a replay.
    #[test]
    fn replay_memory_forgets_only_expired_nonces_and_refuses_when_full() {
        let key = ClientSecret::new("bot", [4; 32]).unwrap();
        let digest = [0u8; 32];
        let checker = TokenChecker::default();
        let token = key.issue(&[], Duration::from_secs(10), NOW, METHOD, &digest).unwrap();
        checker.check(&token, METHOD, &digest, NOW, secrets(&key)).unwrap();
        // Still within expiry + skew: a replay is refused.
        let last_valid = NOW + 10_000 + 30_000;
        assert!(matches!(
            checker.check(&token, METHOD, &digest, last_valid, secrets(&key)),
            Err(TokenRefusal::Replayed(_))
        ));
        // Past it, the token is refused as expired, and its nonce is gone.
        assert!(matches!(
            checker.check(&token, METHOD, &digest, last_valid + 1, secrets(&key)),
            Err(TokenRefusal::Expired { .. })
        ));
        let fresh = key
            .issue(&[], Duration::from_secs(10), last_valid + 1, METHOD, &digest)
            .unwrap();
        checker
            .check(&fresh, METHOD, &digest, last_valid + 1, secrets(&key))
            .unwrap();
        assert_eq!(checker.remembered("bot"), 1);
        // The first token's nonce is forgotten now. A check with an earlier
        // clock (a concurrent request, or the clock stepping back) would
        // take its replay as new: it is refused instead.
        assert!(matches!(
            checker.check(&token, METHOD, &digest, NOW + 1, secrets(&key)),
            Err(TokenRefusal::Expired { .. })
        ));

        // Fill one key's memory (directly: a million tokens would make a slow test).
        {
            let mut replay = checker.replay.lock().unwrap();
            let nonces = replay.get_mut("bot").unwrap();
            for i in 0..NONCES_PER_KEY_MAX as u64 {
                let mut nonce = [0xffu8; TOKEN_NONCE_BYTES];
                nonce[..8].copy_from_slice(&i.to_le_bytes());
                nonces.seen.insert(nonce);
                nonces.by_expiry.push(Reverse((last_valid + 60_000, nonce)));
            }
        }
        let now = last_valid + 2;
        let next = key.issue(&[], Duration::from_secs(10), now, METHOD, &digest).unwrap();
        let err = checker.check(&next, METHOD, &digest, now, secrets(&key)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let TokenRefusal::ReplayMemoryFull { retry_after_ms, .. } = err else {
            unreachable!()
        };
        assert!(retry_after_ms > 0 && retry_after_ms <= 40_000, "{retry_after_ms}");
        // The remembered token is still refused as a replay, not let through.
        assert!(matches!(
            checker.check(&fresh, METHOD, &digest, now, secrets(&key)),
            Err(TokenRefusal::Replayed(_))
        ));
        // Another key is not affected.
        let other = ClientSecret::new("risk", [5; 32]).unwrap();
        let token = other.issue(&[], Duration::from_secs(10), now, METHOD, &digest).unwrap();
        checker.check(&token, METHOD, &digest, now, secrets(&other)).unwrap();
    }
}
