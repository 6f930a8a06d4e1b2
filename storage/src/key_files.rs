//! The files that hold secrets: the cluster's key-encryption keys, a node's
//! ed25519 signing seeds, and a node's nonce-counter reservations.
//!
//! Each is a durable file ([`crate::durable_file`]: `magic | version | len |
//! body | crc32`, replaced atomically, file and directory fsynced) whose
//! body is `postcard` of the one type below that writes and reads it.
//!
//! * [`KekFile`] — `--key-file`: the cluster key-encryption keys (KEKs).
//!   Every node of a cluster holds the same file; data keys travel through
//!   the log wrapped under the newest KEK, and older KEKs stay so that data
//!   keys wrapped under them still open. Created by `txlog keys init`.
//! * [`SigningSeeds`] — `DATA_DIR/keys/signing`: this node's ed25519 seeds,
//!   newest last. A seed is written here before its public key is proposed
//!   to the log, so a crash between the two only leaves a key unused.
//! * [`NonceReservations`] — `DATA_DIR/keys/nonce`: per data key, the
//!   counter value up to which this node may seal. A node reserves a block
//!   (durably) before it seals with any counter in it, and starts past the
//!   reservation after a restart, so a (key, node, counter) nonce is never
//!   used twice, whatever crashes.
//!
//! Secret files are created with mode 0600 and refused on open when group
//! or others may read them (the file is not trusted after such exposure,
//! and an operator should know).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::durable_file;
use crate::error::Error;
use crate::error::Result;

const KEK_MAGIC: &[u8; 8] = b"TXLOGKEK";
const SEEDS_MAGIC: &[u8; 8] = b"TXLOGSIG";
const NONCE_MAGIC: &[u8; 8] = b"TXLNONCE";
const SECRET_MODE: u32 = 0o600;

/// One AES-256 key-encryption key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kek {
    pub id: u32,
    pub created_ns: u64,
    pub key: [u8; 32],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek {{ id: {}, created_ns: {} }}", self.id, self.created_ns)
    }
}

/// The cluster's key-encryption keys, oldest first; the last one wraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekFile {
    pub keks: Vec<Kek>,
}

impl KekFile {
    /// Write a new key file at `path`; refuses to replace an existing one
    /// (it would orphan every data key wrapped under it).
    pub fn create(path: &Path, kek: Kek) -> Result<KekFile> {
        if path.exists() {
            return Err(Error::InvalidInput(format!(
                "key file {} exists already; a new one would make the data keys wrapped under it unreadable",
                path.display()
            )));
        }
        let file = KekFile { keks: vec![kek] };
        file.store(path)?;
        Ok(file)
    }

    /// Read the key file at `path`, checking its mode first.
    pub fn load(path: &Path) -> Result<KekFile> {
        check_private(path)?;
        let body = durable_file::read(path, KEK_MAGIC)?
            .ok_or_else(|| Error::InvalidInput(format!("key file {} does not exist", path.display())))?;
        let file: KekFile = decode(path, &body)?;
        if file.keks.is_empty() {
            return Err(Error::corruption(path, "key file holds no key"));
        }
        Ok(file)
    }

    /// Durably replace the file at `path` with this one.
    pub fn store(&self, path: &Path) -> Result<()> {
        durable_file::write_atomic_mode(path, KEK_MAGIC, &encode(self), SECRET_MODE)
    }

    /// The key that wraps new data keys.
    pub fn current(&self) -> &Kek {
        self.keks.last().expect("a key file holds at least one key")
    }
}

/// One ed25519 seed of this node and the id its public key is announced under.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSeed {
    pub id: u32,
    pub created_ns: u64,
    pub seed: [u8; 32],
}

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSeed {{ id: {}, created_ns: {} }}", self.id, self.created_ns)
    }
}

/// This node's signing seeds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSeeds {
    pub seeds: Vec<SigningSeed>,
}

/// Seeds kept: older ones sign nothing new, and their public keys stay in
/// the log forever, so only the recent few are worth keeping.
pub const SIGNING_SEEDS_KEPT: usize = 8;

impl SigningSeeds {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys").join("signing")
    }

    /// The seeds in `data_dir`; none when the file does not exist yet.
    pub fn load(data_dir: &Path) -> Result<SigningSeeds> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(SigningSeeds::default());
        }
        check_private(&path)?;
        match durable_file::read(&path, SEEDS_MAGIC)? {
            Some(body) => decode(&path, &body),
            None => Ok(SigningSeeds::default()),
        }
    }

    /// Add `seed` as the newest and store the file durably.
    pub fn push(&mut self, data_dir: &Path, seed: SigningSeed) -> Result<()> {
        self.seeds.push(seed);
        if self.seeds.len() > SIGNING_SEEDS_KEPT {
            self.seeds.remove(0);
        }
        let path = Self::path(data_dir);
        create_private_dir(path.parent().expect("keys dir"))?;
        durable_file::write_atomic_mode(&path, SEEDS_MAGIC, &encode(self), SECRET_MODE)
    }

    pub fn newest(&self) -> Option<&SigningSeed> {
        self.seeds.last()
    }
}

/// Per data key id, the first counter value this node has not reserved. A
/// node seals only under data keys listed here: it lists a key (durably)
/// when it announces it, so a node whose file was lost (a wiped data dir)
/// cannot restart a counter it has used; it announces a key of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceReservations {
    pub reserved: BTreeMap<u32, u64>,
}

impl NonceReservations {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys").join("nonce")
    }

    pub fn load(data_dir: &Path) -> Result<NonceReservations> {
        let path = Self::path(data_dir);
        match durable_file::read(&path, NONCE_MAGIC)? {
            Some(body) => decode(&path, &body),
            None => Ok(NonceReservations::default()),
        }
    }

    /// Whether this node may seal under `data_key_id`.
    pub fn contains(&self, data_key_id: u32) -> bool {
        self.reserved.contains_key(&data_key_id)
    }

    /// Counters below this for `data_key_id` may have been used already.
    pub fn reserved(&self, data_key_id: u32) -> u64 {
        self.reserved.get(&data_key_id).copied().unwrap_or(0)
    }

    /// Durably reserve counters up to (not including) `until` for
    /// `data_key_id`. Returns only once the reservation is on disk.
    pub fn reserve(&mut self, data_dir: &Path, data_key_id: u32, until: u64) -> Result<()> {
        let entry = self.reserved.entry(data_key_id).or_insert(0);
        assert!(until >= *entry, "a reservation never moves back");
        *entry = until;
        let path = Self::path(data_dir);
        create_private_dir(path.parent().expect("keys dir"))?;
        durable_file::write_atomic_mode(&path, NONCE_MAGIC, &encode(self), SECRET_MODE)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding an in-memory value cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(path: &Path, body: &[u8]) -> Result<T> {
    crate::meta_key::decode_whole(body).map_err(|detail| Error::corruption(path, detail))
}

/// Refuse a secret file that group or others may read or write.
fn check_private(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::InvalidInput(format!(
            "{} has mode {mode:04o}: it holds secret keys and must be readable by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    durable_file::fsync_dir(dir.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file round-trips, is created 0600, refuses to be overwritten,
    /// and is refused once others may read it.
    #[test]
    fn kek_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let kek = Kek {
            id: 7,
            created_ns: 99,
            key: [3; 32],
        };
        let created = KekFile::create(&path, kek.clone()).unwrap();
        assert_eq!(KekFile::load(&path).unwrap(), created);
        assert_eq!(created.current(), &kek);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(KekFile::create(&path, kek).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KekFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    }

    /// Seeds keep the newest few, in order, and survive a reload.
    #[test]
    fn signing_seeds_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut seeds = SigningSeeds::load(dir.path()).unwrap();
        assert!(seeds.newest().is_none());
        for id in 1..=(SIGNING_SEEDS_KEPT as u32 + 3) {
            seeds
                .push(
                    dir.path(),
                    SigningSeed {
                        id,
                        created_ns: u64::from(id),
                        seed: [id as u8; 32],
                    },
                )
                .unwrap();
        }
        let loaded = SigningSeeds::load(dir.path()).unwrap();
        assert_eq!(loaded, seeds);
        assert_eq!(loaded.seeds.len(), SIGNING_SEEDS_KEPT);
        assert_eq!(loaded.newest().unwrap().id, SIGNING_SEEDS_KEPT as u32 + 3);
        let mode = std::fs::metadata(SigningSeeds::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Reservations are per data key and survive a reload.
    #[test]
    fn nonce_reservations_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut reservations = NonceReservations::load(dir.path()).unwrap();
        assert_eq!(reservations.reserved(5), 0);
        assert!(!reservations.contains(5));
        reservations.reserve(dir.path(), 5, 0).unwrap();
        assert!(reservations.contains(5));
        reservations.reserve(dir.path(), 5, 65_536).unwrap();
        reservations.reserve(dir.path(), u32::MAX, 1 << 32).unwrap();
        let loaded = NonceReservations::load(dir.path()).unwrap();
        assert_eq!(loaded.reserved(5), 65_536);
        assert_eq!(loaded.reserved(u32::MAX), 1 << 32);
        assert_eq!(loaded.reserved(6), 0);
    }
}
