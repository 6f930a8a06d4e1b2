//! Input limits and checks for client requests. A request that fails any of
//! these is rejected whole with `INVALID_ARGUMENT` before anything is written.

use txlog_storage::ChannelName;

use crate::Error;

/// Longest txid accepted.
pub const TXID_BYTES_MAX: usize = 64;
/// Default payload limit (configurable per node).
pub const PAYLOAD_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Most records in one `Append` call.
pub const APPEND_RECORDS_MAX: usize = 4096;
/// Most bytes in one gRPC request or response (the client refuses to send more).
pub use txlog_client::MESSAGE_BYTES_MAX;
/// Default and maximum `limit` for `Read`.
pub const READ_LIMIT_DEFAULT: u32 = 1000;
pub const READ_LIMIT_MAX: u32 = 10_000;
/// Soft cap on bytes in one `Read` response.
pub const READ_BYTES_MAX: usize = 8 * 1024 * 1024;

pub fn txid(txid: &[u8]) -> Result<(), Error> {
    if txid.is_empty() || txid.len() > TXID_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "txid must be 1..={TXID_BYTES_MAX} bytes, got {}",
            txid.len()
        )));
    }
    Ok(())
}

pub fn channel(name: &str) -> Result<ChannelName, Error> {
    ChannelName::parse(name).map_err(|e| match e {
        txlog_storage::Error::InvalidInput(m) => Error::InvalidInput(m),
        other => Error::InvalidInput(other.to_string()),
    })
}

/// A channel to read or subscribe to: a client channel, or one of the
/// reserved channels the cluster writes itself (the keyring's key events,
/// the audit trail).
pub fn channel_to_read(name: &str) -> Result<(), Error> {
    if name == txlog_raft::KEYS_CHANNEL || name == crate::audit::AUDIT_CHANNEL {
        return Ok(());
    }
    channel(name).map(drop)
}

pub fn payload(payload: &[u8], payload_bytes_max: usize) -> Result<(), Error> {
    if payload.len() > payload_bytes_max {
        return Err(Error::InvalidInput(format!(
            "payload is {} bytes, over the limit of {payload_bytes_max}",
            payload.len()
        )));
    }
    Ok(())
}

pub fn read_limit(limit: u32) -> Result<usize, Error> {
    match limit {
        0 => Ok(READ_LIMIT_DEFAULT as usize),
        l if l > READ_LIMIT_MAX => Err(Error::InvalidInput(format!(
            "limit {l} is over the maximum of {READ_LIMIT_MAX}"
        ))),
        l => Ok(l as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each limit accepts its boundary value and rejects one past it.
    #[test]
    fn limits_at_their_boundaries() {
        assert!(txid(b"").is_err());
        assert!(txid(&[b'a'; 64]).is_ok());
        assert!(txid(&[b'a'; 65]).is_err());
        assert!(payload(&[0; 10], 10).is_ok());
        assert!(payload(&[0; 11], 10).is_err());
        assert_eq!(read_limit(0).unwrap(), READ_LIMIT_DEFAULT as usize);
        assert!(read_limit(READ_LIMIT_MAX).is_ok());
        assert!(read_limit(READ_LIMIT_MAX + 1).is_err());
        assert!(channel("Bad Name").is_err());
        assert!(channel("execution").is_ok());
        assert!(
            channel(txlog_raft::KEYS_CHANNEL).is_err(),
            "no client appends key events"
        );
        assert!(channel_to_read(txlog_raft::KEYS_CHANNEL).is_ok());
        assert!(channel_to_read("_other").is_err());
    }
}
