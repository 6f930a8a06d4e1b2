//! Request tokens: what a client sends with every request, so the cluster
//! knows which key made it and which roles it claims, and that it was made
//! for this one request, recently, and is used once.
//!
//! A token ([`RequestToken`], defined in `txlog.proto`) names a client key,
//! the roles it claims, when it was issued and when it expires (at most
//! [`TOKEN_TTL_MAX`] later), and 16 random bytes. Its MAC is HMAC-SHA256
//! under the key's 32-byte secret. The MAC covers those fields, the gRPC
//! method and the SHA-256 of the request message's encoding
//! ([`token_mac_input`]). So a token captured on the way cannot carry another
//! payload or call another method, and its nonce lets the cluster refuse
//! it the second time.
//!
//! Issuing lives here, so the CLI, the benches and the client library all
//! make tokens the same way. Checking is the server's job
//! (`src/token_check.rs`), using the same [`token_mac_input`].
//!
//! The client library signs its calls with [`crate::Credentials`]; nodes
//! refuse calls without a valid token unless they run `--insecure`.

use std::time::Duration;

use hmac::KeyInit as _;
use hmac::Mac as _;
use sha2::Digest as _;
use txlog_proto::RequestToken;

/// Binary gRPC metadata key that carries the encoded [`RequestToken`].
pub const TOKEN_METADATA_KEY: &str = "txlog-token-bin";
/// The `version` of the tokens this build issues and checks.
pub const TOKEN_VERSION: u32 = 1;
/// The longest a token may be valid: the firm's protocol says 300 s.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(300);
pub const TOKEN_NONCE_BYTES: usize = 16;
pub const TOKEN_MAC_BYTES: usize = 32;
pub const CLIENT_SECRET_BYTES: usize = 32;
/// Longest key id and role name, in bytes.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;
/// Most roles one token may claim.
pub const TOKEN_ROLES_MAX: usize = 16;

/// Largest client secret file read (one line).
const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// What the MAC is computed over starts with this, so that a txlog token
/// MAC can never be taken for a MAC of anything else under the same secret.
const MAC_DOMAIN: &[u8] = b"txlog request token v1\0";

/// A token that cannot be issued as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a token lives at most {max:?}; {asked:?} was asked")]
    TtlTooLong { asked: Duration, max: Duration },
    #[error("a token must live longer than zero")]
    TtlZero,
    #[error("{what} must be 1 to {TOKEN_NAME_BYTES_MAX} bytes of [A-Za-z0-9._-]: {name:?}")]
    BadName { what: &'static str, name: String },
    #[error("a token claims at most {TOKEN_ROLES_MAX} roles; {0} were given")]
    TooManyRoles(usize),
    #[error("a client secret line is `KEY_ID:SECRET` with a 64-digit hex secret")]
    BadSecret,
    #[error("no randomness for a token nonce: {0}")]
    NoRandomness(String),
}

/// A client key: its id and its 32-byte secret, which the cluster knows
/// too. The secret never appears in `Debug` output or in errors.
#[derive(Clone)]
pub struct ClientSecret {
    key_id: String,
    secret: [u8; CLIENT_SECRET_BYTES],
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ClientSecret {
    pub fn new(key_id: &str, secret: [u8; CLIENT_SECRET_BYTES]) -> Result<ClientSecret, TokenError> {
        check_token_name("a key id", key_id)?;
        Ok(ClientSecret {
            key_id: key_id.to_string(),
            secret,
        })
    }

    /// A new key with a secret from the operating system's generator.
    pub fn generate(key_id: &str) -> Result<ClientSecret, TokenError> {
        let mut secret = [0u8; CLIENT_SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| TokenError::NoRandomness(e.to_string()))?;
        ClientSecret::new(key_id, secret)
    }

    /// Read `KEY_ID:SECRET` (the secret as 64 hex digits), as
    /// [`Self::to_line`] writes it.
    pub fn parse(line: &str) -> Result<ClientSecret, TokenError> {
        let (key_id, hex) = line.trim().split_once(':').ok_or(TokenError::BadSecret)?;
        if hex.len() != 2 * CLIENT_SECRET_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadSecret);
        }
        let mut secret = [0u8; CLIENT_SECRET_BYTES];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| TokenError::BadSecret)?;
        }
        ClientSecret::new(key_id, secret)
    }

    /// Read a secret file (one `KEY_ID:SECRET` line, as `txlog token
    /// secret` writes it), refusing one that group or others may read.
    pub fn read_file(path: &std::path::Path) -> Result<ClientSecret, String> {
        let what = "client secret file";
        let bytes = crate::local_file::read_bounded(path, what, SECRET_FILE_BYTES_MAX, true)?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{what} {}: not text", path.display()))?;
        ClientSecret::parse(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
    }

    pub fn to_line(&self) -> String {
        let hex: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.key_id)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret(&self) -> &[u8; CLIENT_SECRET_BYTES] {
        &self.secret
    }

    /// A token for one call of `method` (the full gRPC path, e.g.
    /// `/txlog.v1.LogService/Append`) whose request message encodes to
    /// bytes with SHA-256 `payload_digest` ([`token_payload_digest`]), valid from
    /// `now_ms` (Unix milliseconds) for `ttl`.
    pub fn issue(
        &self,
        roles: &[String],
        ttl: Duration,
        now_ms: u64,
        method: &str,
        payload_digest: &[u8; 32],
    ) -> Result<RequestToken, TokenError> {
        if ttl > TOKEN_TTL_MAX {
            return Err(TokenError::TtlTooLong {
                asked: ttl,
                max: TOKEN_TTL_MAX,
            });
        }
        if ttl.is_zero() {
            return Err(TokenError::TtlZero);
        }
        if roles.len() > TOKEN_ROLES_MAX {
            return Err(TokenError::TooManyRoles(roles.len()));
        }
        for role in roles {
            check_token_name("a role", role)?;
        }
        let mut nonce = vec![0u8; TOKEN_NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| TokenError::NoRandomness(e.to_string()))?;
        let mut token = RequestToken {
            version: TOKEN_VERSION,
            key_id: self.key_id.clone(),
            roles: roles.to_vec(),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + ttl.as_millis() as u64,
            nonce: nonce.into(),
            mac: Default::default(),
        };
        token.mac = token_mac(&self.secret, &token_mac_input(&token, method, payload_digest))
            .to_vec()
            .into();
        Ok(token)
    }
}

/// SHA-256 of a request message's protobuf encoding: what a token binds.
/// The server computes it again from the message it decoded, so a field
/// it does not know (dropped on decode) makes the digests differ.
pub fn token_payload_digest(message: &impl prost::Message) -> [u8; 32] {
    sha2::Sha256::digest(message.encode_to_vec()).into()
}

/// The bytes a token's MAC covers: a domain tag, then each field
/// length-prefixed (u32 little endian) or fixed-width, so no two different
/// tokens or calls give the same bytes. `mac` itself is left out.
pub fn token_mac_input(token: &RequestToken, method: &str, payload_digest: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + token.key_id.len() + method.len());
    out.extend_from_slice(MAC_DOMAIN);
    out.extend_from_slice(&token.version.to_le_bytes());
    put_bytes(&mut out, token.key_id.as_bytes());
    out.extend_from_slice(&(token.roles.len() as u32).to_le_bytes());
    for role in &token.roles {
        put_bytes(&mut out, role.as_bytes());
    }
    out.extend_from_slice(&token.issued_at_ms.to_le_bytes());
    out.extend_from_slice(&token.expires_at_ms.to_le_bytes());
    put_bytes(&mut out, &token.nonce);
    put_bytes(&mut out, method.as_bytes());
    out.extend_from_slice(payload_digest);
    out
}

/// HMAC-SHA256 of `input` under `secret`.
pub fn token_mac(secret: &[u8; CLIENT_SECRET_BYTES], input: &[u8]) -> [u8; TOKEN_MAC_BYTES] {
    let mut hmac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    hmac.update(input);
    hmac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `input` under `secret`, compared in
/// constant time.
pub fn token_mac_matches(secret: &[u8; CLIENT_SECRET_BYTES], input: &[u8], tag: &[u8]) -> bool {
    let mut hmac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    hmac.update(input);
    hmac.verify_slice(tag).is_ok()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Key ids and role names: short, printable, no separators that a log line
/// or the secret file format would need to quote.
pub fn check_token_name(what: &'static str, name: &str) -> Result<(), TokenError> {
    let ok = (1..=TOKEN_NAME_BYTES_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadName {
            what,
            name: name.chars().take(TOKEN_NAME_BYTES_MAX + 8).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token's MAC covers every field, the method and the payload: change
    /// any one and it no longer matches.
    #[test]
    fn the_mac_binds_every_field_the_method_and_the_payload() {
        let key = ClientSecret::new("risk-1", [7; 32]).unwrap();
        let digest = [3u8; 32];
        let token = key
            .issue(
                &["reader".into()],
                Duration::from_secs(60),
                1_000,
                "/txlog.v1.LogService/Read",
                &digest,
            )
            .unwrap();
        let matches = |t: &RequestToken, method: &str, digest: &[u8; 32]| {
            token_mac_matches(key.secret(), &token_mac_input(t, method, digest), &t.mac)
        };
        assert!(matches(&token, "/txlog.v1.LogService/Read", &digest));
        assert!(!matches(&token, "/txlog.v1.LogService/Append", &digest));
        assert!(!matches(&token, "/txlog.v1.LogService/Read", &[4; 32]));
        let changes: [fn(&mut RequestToken); 7] = [
            |t| t.version = 2,
            |t| t.key_id = "risk-2".into(),
            |t| t.roles = vec!["admin".into()],
            |t| t.roles.push("admin".into()),
            |t| t.issued_at_ms += 1,
            |t| t.expires_at_ms += 1,
            |t| t.nonce = vec![0; TOKEN_NONCE_BYTES].into(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = token.clone();
            change(&mut changed);
            assert!(!matches(&changed, "/txlog.v1.LogService/Read", &digest), "change {i}");
        }
        let other = ClientSecret::new("risk-1", [8; 32]).unwrap();
        assert!(!token_mac_matches(
            other.secret(),
            &token_mac_input(&token, "/txlog.v1.LogService/Read", &digest),
            &token.mac
        ));
    }

    /// Issue refuses what the protocol forbids, and the secret file line
    /// round-trips without the secret ever showing in `Debug`.
    #[test]
    fn issue_limits_and_the_secret_line() {
        let key = ClientSecret::generate("bot.7").unwrap();
        let digest = [0u8; 32];
        let issue = |roles: &[String], ttl| key.issue(roles, ttl, 0, "/m", &digest);
        assert!(matches!(
            issue(&[], Duration::from_secs(301)),
            Err(TokenError::TtlTooLong { .. })
        ));
        assert_eq!(issue(&[], Duration::ZERO), Err(TokenError::TtlZero));
        assert!(matches!(
            issue(&["no spaces".into()], Duration::from_secs(1)),
            Err(TokenError::BadName { .. })
        ));
        let many: Vec<String> = (0..17).map(|i| format!("r{i}")).collect();
        assert_eq!(issue(&many, Duration::from_secs(1)), Err(TokenError::TooManyRoles(17)));
        let a = issue(&[], TOKEN_TTL_MAX).unwrap();
        let b = issue(&[], TOKEN_TTL_MAX).unwrap();
        assert_ne!(a.nonce, b.nonce, "every token has a fresh nonce");
        assert_eq!(a.expires_at_ms - a.issued_at_ms, 300_000);

        let line = key.to_line();
        let back = ClientSecret::parse(&line).unwrap();
        assert_eq!((back.key_id(), back.secret()), (key.key_id(), key.secret()));
        assert!(!format!("{key:?}").contains(&line[6..]));
        let non_ascii = format!("k:{}", "é".repeat(32));
        let signed = format!("k:+f{}", "0".repeat(62));
        for bad in [
            "bot.7",
            "bot.7:abc",
            &line.replace(':', ";"),
            &format!("{}zz", &line[..line.len() - 2]),
            &non_ascii,
            &signed,
        ] {
            assert_eq!(ClientSecret::parse(bad).unwrap_err(), TokenError::BadSecret, "{bad}");
        }
        assert!(ClientSecret::new("", [0; 32]).is_err());
        assert!(ClientSecret::new(&"k".repeat(65), [0; 32]).is_err());
    }
}
