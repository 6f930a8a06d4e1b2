//! WAL durability tests: every-byte truncation, purge/truncate/reopen, vote
//! durability and damage detection, using a small openraft type config.

use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use txlog_storage::LogStore;
use txlog_storage::WalOptions;
use txlog_storage::REPLICATION_BYTES_MAX;

openraft::declare_raft_types!(
    pub TestConfig:
        D = String,
        R = String,
);

type Entry = openraft::type_config::alias::EntryOf<TestConfig>;
type Vote = openraft::type_config::alias::VoteOf<TestConfig>;

fn entry(index: u64) -> Entry {
    Entry::new_normal(
        log_id::<TestConfig>(1, 1, index),
        format!("payload-{index}-{}", "x".repeat((index % 7) as usize)),
    )
}

fn open(dir: &Path, segment_bytes_max: u64) -> LogStore<TestConfig> {
    LogStore::open(
        dir,
        WalOptions {
            segment_bytes_max,
            fsync_observer: None,
        },
    )
    .expect("open wal")
}

/// Append and wait until the flusher reports the entries durable.
async fn append_durable(store: &mut LogStore<TestConfig>, entries: Vec<Entry>) {
    let (tx, rx) = TestConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback fired").expect("io ok");
}

async fn all_entries(store: &mut LogStore<TestConfig>) -> Vec<Entry> {
    store.try_get_log_entries(0..u64::MAX).await.expect("read")
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Where each frame of a segment ends: the header is 28 bytes, each frame is 8 + len.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 28usize;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
        ends.push(pos);
    }
    ends
}

/// Cutting the segment at every byte offset reopens to exactly the entries whose frames are whole.
#[tokio::test]
async fn truncation_at_every_byte_keeps_a_valid_prefix() {
    let src = tempfile::tempdir().unwrap();
    let originals: Vec<Entry> = (1..=24).map(entry).collect();
    {
        let mut store = open(src.path(), 1 << 30);
        append_durable(&mut store, originals.clone()).await;
    }
    let segment = segment_files(src.path()).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let ends = frame_ends(&bytes);
    assert_eq!(ends.len(), originals.len());
    assert_eq!(*ends.last().unwrap(), bytes.len());

    for cut in 0..=bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment.file_name().unwrap()), &bytes[..cut]).unwrap();
        let mut store = open(dir.path(), 1 << 30);
        let survivors = all_entries(&mut store).await;
        let expected = ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(survivors.len(), expected, "cut at byte {cut}");
        assert_eq!(survivors[..], originals[..expected], "cut at byte {cut}: not a prefix");
        // The log stays appendable after recovery, and the new entry survives a reopen.
        let next = expected as u64 + 1;
        append_durable(&mut store, vec![entry(next)]).await;
        drop(store);
        let mut reopened = open(dir.path(), 1 << 30);
        assert_eq!(
            all_entries(&mut reopened).await.len(),
            expected + 1,
            "cut at byte {cut}: append after recovery"
        );
    }
}

/// Frames larger than the 4 MiB read chunk of recovery, and frames straddling chunk
/// boundaries: cuts around every boundary reopen to the whole frames before the cut,
/// and damage past the first chunk with data after it is still corruption.
#[tokio::test]
async fn recovery_across_read_chunks() {
    const MIB: usize = 1024 * 1024;
    let big = |index: u64, bytes: usize| {
        Entry::new_normal(
            log_id::<TestConfig>(1, 1, index),
            format!("{index}:{}", "b".repeat(bytes)),
        )
    };
    // 3 MiB, 3 MiB (crosses 4 MiB), 5 MiB (larger than a chunk), small ones, 1 MiB.
    let originals: Vec<Entry> = [3 * MIB, 3 * MIB, 5 * MIB, 100, 200, MIB]
        .iter()
        .enumerate()
        .map(|(i, &bytes)| big(i as u64 + 1, bytes))
        .collect();
    let src = tempfile::tempdir().unwrap();
    {
        let mut store = open(src.path(), 1 << 30);
        append_durable(&mut store, originals.clone()).await;
    }
    let segment = segment_files(src.path()).pop().unwrap();
    let name = segment.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&segment).unwrap();
    let ends = frame_ends(&bytes);
    assert_eq!(ends.len(), originals.len());
    let mut cuts: Vec<usize> = Vec::new();
    for &point in ends.iter().chain(&[4 * MIB, 8 * MIB, 12 * MIB]) {
        for delta in [-9isize, -8, -1, 0, 1, 7, 8, 9] {
            let cut = point as isize + delta;
            if cut >= 0 && cut as usize <= bytes.len() {
                cuts.push(cut as usize);
            }
        }
    }
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(&name), &bytes[..cut]).unwrap();
        let mut store = open(dir.path(), 1 << 30);
        let survivors = all_entries(&mut store).await;
        let expected = ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(survivors.len(), expected, "cut at byte {cut}");
        assert_eq!(survivors[..], originals[..expected], "cut at byte {cut}: not a prefix");
    }
    // A flipped byte in the 5 MiB frame (past the first chunk), with frames after it.
    let mut damaged = bytes.clone();
    damaged[ends[1] + 8 + MIB] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(&name), &damaged).unwrap();
    let err = LogStore::<TestConfig>::open(dir.path(), WalOptions::default())
        .err()
        .expect("open must fail");
    assert!(matches!(err, txlog_storage::Error::Corruption { .. }), "{err}");
}

/// A damaged record with valid records after it is corruption, not a torn tail: open refuses.
#[tokio::test]
async fn damage_before_the_tail_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path(), 1 << 30);
        append_durable(&mut store, (1..=10).map(entry).collect()).await;
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[28 + 8 + 2] ^= 0xff; // inside the first record's body
    std::fs::write(&segment, &bytes).unwrap();
    let err = LogStore::<TestConfig>::open(dir.path(), WalOptions::default())
        .err()
        .expect("open must fail");
    assert!(matches!(err, txlog_storage::Error::Corruption { .. }), "{err}");
}

/// Purge removes whole segments behind the purge point, truncate cuts the tail, and both survive a reopen.
#[tokio::test]
async fn purge_truncate_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1024);
    for chunk in (1..=300u64).collect::<Vec<_>>().chunks(10) {
        append_durable(&mut store, chunk.iter().map(|&i| entry(i)).collect()).await;
    }
    let segments_before = segment_files(dir.path()).len();
    assert!(segments_before > 3, "small segments should roll: {segments_before}");

    store
        .truncate_after(Some(log_id::<TestConfig>(1, 1, 250)))
        .await
        .unwrap();
    store.purge(log_id::<TestConfig>(1, 1, 100)).await.unwrap();
    store.wait_for_purges();
    let segments_after = segment_files(dir.path()).len();
    assert!(segments_after < segments_before, "purge deletes whole segments");
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id::<TestConfig>(1, 1, 100)));
    assert_eq!(state.last_log_id, Some(log_id::<TestConfig>(1, 1, 250)));
    drop(store);

    let mut store = open(dir.path(), 1024);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id::<TestConfig>(1, 1, 100)));
    assert_eq!(state.last_log_id, Some(log_id::<TestConfig>(1, 1, 250)));
    let entries = all_entries(&mut store).await;
    assert_eq!(entries.first().unwrap().index(), 101);
    assert_eq!(entries.len(), 150);
    assert_eq!(entries, (101..=250).map(entry).collect::<Vec<_>>());

    // Appending after a truncate continues at the cut, in a new term.
    let replacement = Entry::new_normal(log_id::<TestConfig>(2, 2, 251), "new-term".to_string());
    append_durable(&mut store, vec![replacement.clone()]).await;
    // Purging past the end leaves an empty, appendable log.
    store.purge(log_id::<TestConfig>(2, 2, 251)).await.unwrap();
    store.wait_for_purges();
    drop(store);
    let mut store = open(dir.path(), 1024);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id::<TestConfig>(2, 2, 251)));
    assert!(all_entries(&mut store).await.is_empty());
    append_durable(
        &mut store,
        vec![Entry::new_normal(log_id::<TestConfig>(2, 2, 252), "after".into())],
    )
    .await;
    drop(store);
    let mut store = open(dir.path(), 1024);
    assert_eq!(all_entries(&mut store).await.len(), 1);
}

/// A saved vote is on disk when save_vote returns: a reopened store reads it back, and the latest one wins.
#[tokio::test]
async fn vote_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(store.read_vote().await.unwrap(), None);
    store.save_vote(&Vote::new(3, 2)).await.unwrap();
    store.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    drop(store);
    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(4, 1)));
}

/// A replication read stops at `REPLICATION_BYTES_MAX` of frames, across
/// segments, but always returns the first entry even when it alone is
/// larger; the entries it returns are the ones asked for, in order.
#[tokio::test]
async fn replication_reads_are_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Segments about one limit long, so the reads cross segment files.
    let mut store = open(dir.path(), REPLICATION_BYTES_MAX);
    let quarter = (REPLICATION_BYTES_MAX / 4) as usize;
    let big = |index: u64, bytes: usize| Entry::new_normal(log_id::<TestConfig>(1, 1, index), "y".repeat(bytes));
    // Entries 1–6 of just under a quarter of the limit, then one of twice the limit.
    let mut entries: Vec<Entry> = (1..=6).map(|i| big(i, quarter - 64)).collect();
    entries.push(big(7, 2 * REPLICATION_BYTES_MAX as usize));
    append_durable(&mut store, entries.clone()).await;

    let mut reader = store.get_log_reader().await;
    let first = reader.limited_get_log_entries(1, 8).await.expect("read");
    assert_eq!(first, entries[..4], "four frames fit, a fifth would not");
    let rest = reader.limited_get_log_entries(5, 8).await.expect("read");
    assert_eq!(rest, entries[4..6], "the oversized entry waits for its own request");
    let oversized = reader.limited_get_log_entries(7, 8).await.expect("read");
    assert_eq!(oversized, entries[6..], "an entry over the limit still goes, alone");
    let small = reader.limited_get_log_entries(2, 3).await.expect("read");
    assert_eq!(small, entries[1..2]);
}

/// A purge past the last entry (a snapshot installed ahead of the log) is
/// durable when it returns: entries appended after the gap reopen without
/// waiting for the purger thread, as a crash right after would find them.
#[tokio::test]
async fn purge_past_the_end_is_durable_before_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1024);
    append_durable(&mut store, (1..=20).map(entry).collect()).await;
    let purged_file = dir.path().join("purged");
    assert!(!purged_file.exists());
    store.purge(log_id::<TestConfig>(1, 1, 50)).await.unwrap();
    // On disk already, not left to the purger thread.
    assert!(purged_file.exists(), "the purge point is written before purge returns");
    append_durable(&mut store, (51..=60).map(entry).collect()).await;
    drop(store);
    let mut store = open(dir.path(), 1024);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id::<TestConfig>(1, 1, 50)));
    assert_eq!(all_entries(&mut store).await, (51..=60).map(entry).collect::<Vec<_>>());
}
