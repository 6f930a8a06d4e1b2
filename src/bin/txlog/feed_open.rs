//! Opening a sealed cluster's feed payloads on the subscriber, with the
//! cluster's key file: the data keys come from the log's `_keys` channel,
//! unwrapped under the key file's KEKs exactly as a node does it.
//!
//! A committed record's payload is sealed at rest (nonce: its seq); a
//! speculative one under the speculative key of its term (nonce: index and
//! position). Both name their data key in their first four bytes. A key
//! the keyring does not hold yet (a rotation since the last look) makes
//! the opener read `_keys` again from where it stopped, once per payload.

use std::path::Path;

use anyhow::Context;
use txlog_client::Client;
use txlog_raft::Keys;

/// Records per read of `_keys`.
const KEYS_READ_LIMIT: u32 = 1000;
/// Reads of `_keys` per refresh, at most (1,000 records each).
const KEYS_READS_MAX: usize = 1000;

pub struct PayloadOpener {
    keys: Keys,
    client: Client,
    /// The next seq to read `_keys` from.
    next_seq: u64,
}

impl PayloadOpener {
    /// Load `key_file` and the key events the log holds.
    pub async fn new(key_file: &Path, client: Client) -> anyhow::Result<PayloadOpener> {
        let kek_file =
            txlog_storage::KekFile::load(key_file).with_context(|| format!("key file {}", key_file.display()))?;
        let mut opener = PayloadOpener {
            keys: Keys::new(&kek_file),
            client,
            next_seq: 1,
        };
        opener.refresh().await?;
        Ok(opener)
    }

    /// Fold the key events appended since the last refresh into the keyring.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        for _ in 0..KEYS_READS_MAX {
            let response = self
                .client
                .read(self.next_seq, KEYS_READ_LIMIT, Some(txlog_raft::KEYS_CHANNEL), false)
                .await
                .context("reading the cluster's keys (channel _keys) from the log")?;
            for record in &response.records {
                // A rejected event is one no node accepted either; skip it.
                if let Err(err) = self.keys.observe(&record.payload, Some(record.seq)) {
                    tracing::debug!(seq = record.seq, %err, "key event not taken");
                }
            }
            if response.records.is_empty() || response.next_seq <= self.next_seq {
                return Ok(());
            }
            self.next_seq = response.next_seq;
        }
        anyhow::bail!(
            "more than {} key events in the log",
            KEYS_READS_MAX * KEYS_READ_LIMIT as usize
        )
    }

    /// Open a committed record's payload, sealed at rest.
    pub async fn open_committed(&mut self, seq: u64, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self.keys.open_at_rest(seq, sealed) {
            Ok(plain) => Ok(plain),
            Err(_) => {
                self.refresh().await?;
                self.keys
                    .open_at_rest(seq, sealed)
                    .with_context(|| format!("record {seq}"))
            }
        }
    }

    /// Open a speculative record's payload.
    pub async fn open_speculative(
        &mut self,
        term: u64,
        index: u64,
        position: u32,
        sealed: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let id = sealed
            .first_chunk::<4>()
            .map(|id| u32::from_le_bytes(*id))
            .with_context(|| format!("speculative record {index}.{position}: shorter than its seal"))?;
        let key = match self.keys.speculative_key(id, term) {
            Some(key) => key,
            None => {
                self.refresh().await?;
                self.keys.speculative_key(id, term).with_context(|| {
                    format!("speculative record {index}.{position}: data key {id} is not in the log")
                })?
            }
        };
        Ok(key.open(index, position, sealed)?)
    }
}
