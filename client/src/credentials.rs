//! What a client signs its requests with: a client key and the roles it
//! claims. Every attempt of every call gets a fresh token
//! ([`ClientSecret::issue`]) bound to its method and message, so tokens
//! refresh themselves: there is no long-lived token to expire under a
//! long-running client, and a retried attempt is a new request with its
//! own nonce.
//!
//! Tokens live [`CLIENT_TOKEN_TTL`]: a node must remember a token's nonce
//! until the token expires plus the clock skew it allows, so short tokens
//! keep that memory small.

use std::path::Path;
use std::time::Duration;

use prost::Message as _;
use tonic::metadata::MetadataValue;
use tonic::Status;
use txlog_proto::RequestToken;

use crate::token::check_token_name;
use crate::token::token_payload_digest;
use crate::ClientSecret;
use crate::TokenError;
use crate::TOKEN_METADATA_KEY;
use crate::TOKEN_ROLES_MAX;

/// How long the tokens the library issues live.
pub const CLIENT_TOKEN_TTL: Duration = Duration::from_secs(10);

/// A client key and the roles its requests claim. An empty claim stands
/// for every role the cluster grants the key.
#[derive(Debug, Clone)]
pub struct Credentials {
    secret: ClientSecret,
    roles: Vec<String>,
}

impl Credentials {
    pub fn new(secret: ClientSecret, roles: Vec<String>) -> Result<Credentials, TokenError> {
        if roles.len() > TOKEN_ROLES_MAX {
            return Err(TokenError::TooManyRoles(roles.len()));
        }
        for role in &roles {
            check_token_name("a role", role)?;
        }
        Ok(Credentials { secret, roles })
    }

    /// Read a secret file (`KEY_ID:SECRET`, as `txlog token secret` writes it).
    pub fn from_file(path: &Path, roles: Vec<String>) -> Result<Credentials, String> {
        let secret = ClientSecret::read_file(path)?;
        Credentials::new(secret, roles).map_err(|e| e.to_string())
    }

    pub fn key_id(&self) -> &str {
        self.secret.key_id()
    }

    pub fn secret(&self) -> &ClientSecret {
        &self.secret
    }

    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// A token for one call of `method` carrying `message`.
    pub fn token(&self, method: &str, message: &impl prost::Message) -> Result<RequestToken, TokenError> {
        self.secret.issue(
            &self.roles,
            CLIENT_TOKEN_TTL,
            crate::wall_clock_ms(),
            method,
            &token_payload_digest(message),
        )
    }

    /// Put a token for `method` in `request`'s metadata.
    pub fn sign<M: prost::Message>(&self, request: &mut tonic::Request<M>, method: &str) -> Result<(), Status> {
        let token = self
            .token(method, request.get_ref())
            .map_err(|e| Status::internal(format!("cannot issue a request token: {e}")))?;
        request
            .metadata_mut()
            .insert_bin(TOKEN_METADATA_KEY, MetadataValue::from_bytes(&token.encode_to_vec()));
        Ok(())
    }
}
