//! Linked snapshots against the record store: they read, verify and stream
//! exactly like a snapshot file of the same records, stay whole while the
//! store moves on or is cleared, and report any damage.

use std::path::Path;
use std::path::PathBuf;

use txlog_storage::snapshot_file;
use txlog_storage::NewRecord;
use txlog_storage::RecordStore;
use txlog_storage::SnapshotDir;
use txlog_storage::StoredRecord;

/// Small segments, so a few dozen records span several of them.
const SEGMENT_BYTES: u64 = 2_000;
const META: &[u8] = b"snapshot meta";

fn append(store: &RecordStore, from: u64, to: u64) {
    let mut batch = store.batch().unwrap();
    for i in from..=to {
        let record = NewRecord {
            txid: format!("tx-{i}").into_bytes().into(),
            channel: if i % 3 == 0 { "fills" } else { "orders" }.to_string(),
            payload: vec![i as u8; 90 + (i as usize % 7)].into(),
            client_time_ns: i,
        };
        let outcome = batch.append(record.borrowed(), i, 1, 1, 1_000 + i).unwrap();
        assert_eq!(outcome.seq, i);
    }
    assert_eq!(batch.commit().unwrap(), to);
}

fn records(path: &Path) -> Vec<StoredRecord> {
    let mut seen = Vec::new();
    snapshot_file::for_each_record(path, |record| {
        seen.push(record);
        Ok(())
    })
    .unwrap();
    seen
}

fn stream(path: &Path, chunk_bytes: usize) -> Vec<(Vec<u8>, bool)> {
    let mut chunks = Vec::new();
    snapshot_file::read_chunks(path, chunk_bytes, |chunk, done| {
        chunks.push((chunk, done));
        true
    })
    .unwrap();
    chunks
}

/// A snapshot file of records `1..=upto` of `store`, written the way
/// snapshot files are.
fn file_snapshot(store: &RecordStore, path: PathBuf, upto: u64) -> PathBuf {
    let mut writer = snapshot_file::SnapshotWriter::create(path, META).unwrap();
    store.for_each_record(1, upto, |record| writer.append(record)).unwrap();
    writer.finish().unwrap()
}

/// A linked snapshot streams byte for byte as the snapshot file of the same
/// records (chunk by chunk, at several chunk sizes), verifies, counts and
/// visits the same records — before and after the store appends past it.
#[test]
fn a_linked_snapshot_reads_as_the_equivalent_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), SEGMENT_BYTES).unwrap();
    append(&store, 1, 25);
    append(&store, 26, 40);
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let linked = store.link_snapshot(&snapshots.join("linked.snap"), META, 40).unwrap();
    assert!(linked.is_dir());
    let file = file_snapshot(&store, snapshots.join("file.snap"), 40);

    let check = |linked: &Path| {
        for chunk_bytes in [1, 777, 4096, 1 << 20] {
            assert_eq!(
                stream(linked, chunk_bytes),
                stream(&file, chunk_bytes),
                "chunks of {chunk_bytes}"
            );
        }
        let info = snapshot_file::verify(linked).unwrap();
        assert_eq!(info.meta, META);
        assert_eq!(info.record_count, 40);
        assert_eq!(info.file_bytes, std::fs::metadata(&file).unwrap().len());
        assert_eq!(snapshot_file::read_meta(linked).unwrap(), META);
        assert_eq!(snapshot_file::record_count(linked).unwrap(), 40);
        assert_eq!(records(linked), records(&file));
        // Reading from any seq (first, inside and at the start of a later
        // segment, the last, past the end) gives what a file gives.
        for from in [1, 2, 17, 25, 26, 39, 40, 41] {
            let from_seqs = |path: &Path| {
                let mut seqs = Vec::new();
                snapshot_file::for_each_record_from(path, from, |r| {
                    seqs.push(r.seq);
                    Ok(())
                })
                .unwrap();
                seqs
            };
            assert_eq!(from_seqs(linked), (from..=40).collect::<Vec<_>>(), "from {from}");
            assert_eq!(from_seqs(linked), from_seqs(&file), "from {from}");
        }
    };
    check(&linked);
    // The chain stored at any seq is the store's; past the end, or in a
    // snapshot file (which stores none), there is none.
    for seq in [0, 1, 14, 26, 40] {
        assert_eq!(
            snapshot_file::chain_at(&linked, seq).unwrap(),
            store.chain_at(seq).unwrap(),
            "seq {seq}"
        );
    }
    assert_eq!(snapshot_file::chain_at(&linked, 41).unwrap(), None);
    assert_eq!(snapshot_file::chain_at(&file, 5).unwrap(), None);
    append(&store, 41, 90);
    check(&linked);
    // Clearing the store (as a full install does) drops only its own names.
    store.clear().unwrap();
    assert_eq!(store.last_seq().unwrap(), 0);
    check(&linked);
}

/// The empty state snapshots too: no segments, a stream of header and trailer.
#[test]
fn an_empty_store_has_an_empty_linked_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), SEGMENT_BYTES).unwrap();
    let linked = store.link_snapshot(&dir.path().join("empty.snap"), META, 0).unwrap();
    let file = file_snapshot(&store, dir.path().join("file.snap"), 0);
    assert_eq!(stream(&linked, 64), stream(&file, 64));
    assert_eq!(snapshot_file::verify(&linked).unwrap().record_count, 0);
}

/// A snapshot is asked for no further than the store has published.
#[test]
fn a_linked_snapshot_past_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), SEGMENT_BYTES).unwrap();
    append(&store, 1, 5);
    let err = store.link_snapshot(&dir.path().join("x.snap"), META, 6).unwrap_err();
    assert!(err.to_string().contains("only 5 are published"), "{err}");
    assert!(!dir.path().join("x.snap").exists());
}

/// Any flipped byte in the part of a linked segment the snapshot covers, a
/// missing segment, or a flipped manifest byte fails the check; bytes the
/// store wrote after the snapshot do not matter to it.
#[test]
fn damage_in_a_linked_snapshot_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), 1 << 20).unwrap();
    append(&store, 1, 6);
    let linked = store.link_snapshot(&dir.path().join("s.snap"), META, 6).unwrap();
    append(&store, 7, 9);
    drop(store);
    let segment = linked.join(format!("{:020}.rec", 1));
    let whole = std::fs::read(&segment).unwrap();
    let covered = {
        // The store's own records 7..=9 follow the snapshot's; find where by
        // cutting the segment until the check would fail.
        let mut end = whole.len();
        while end > 0 {
            std::fs::write(&segment, &whole[..end - 1]).unwrap();
            if snapshot_file::verify(&linked).is_err() {
                break;
            }
            end -= 1;
        }
        end
    };
    assert!(covered < whole.len(), "records after the snapshot were appended");
    for i in 0..covered {
        let mut bad = whole.clone();
        bad[i] ^= 0x20;
        std::fs::write(&segment, &bad).unwrap();
        assert!(
            snapshot_file::verify(&linked).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
    for i in covered..whole.len() {
        let mut bad = whole.clone();
        bad[i] ^= 0x20;
        std::fs::write(&segment, &bad).unwrap();
        assert!(
            snapshot_file::verify(&linked).is_ok(),
            "flip at byte {i} is past the snapshot"
        );
    }
    std::fs::write(&segment, &whole).unwrap();
    assert_eq!(snapshot_file::verify(&linked).unwrap().record_count, 6);

    let manifest = linked.join("manifest");
    let good = std::fs::read(&manifest).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&manifest, &bad).unwrap();
        assert!(
            snapshot_file::verify(&linked).is_err(),
            "manifest flip at byte {i} went unnoticed"
        );
    }
    std::fs::write(&manifest, &good).unwrap();
    std::fs::remove_file(&segment).unwrap();
    assert!(snapshot_file::verify(&linked).is_err());
}

/// The snapshot directory removes a linked snapshot whose build was cut off
/// (a `.partial` directory) and prunes older linked snapshots like files.
#[test]
fn the_snapshot_directory_handles_linked_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), SEGMENT_BYTES).unwrap();
    let snapshots = SnapshotDir::open(dir.path().join("snapshots")).unwrap();
    append(&store, 1, 10);
    let older = store
        .link_snapshot(&snapshots.snapshot_path(&SnapshotDir::file_name(10, 1)), META, 10)
        .unwrap();
    append(&store, 11, 30);
    let newer = store
        .link_snapshot(&snapshots.snapshot_path(&SnapshotDir::file_name(30, 1)), META, 30)
        .unwrap();
    let leftover = snapshots.path().join(format!(
        "{}.partial",
        SnapshotDir::file_name(40, 1).trim_end_matches(".snap")
    ));
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("manifest"), b"cut off").unwrap();

    assert_eq!(snapshots.newest().unwrap(), Some(newer.clone()));
    snapshots.prune_older_than(&newer);
    assert!(!older.exists());
    let snapshots = SnapshotDir::open(snapshots.path()).unwrap();
    assert!(!leftover.exists());
    assert_eq!(snapshots.newest().unwrap(), Some(newer.clone()));
    assert_eq!(snapshot_file::verify(&newer).unwrap().record_count, 30);
}

/// A linked snapshot removed (pruned by a newer one) while it is being
/// streamed to a peer still streams whole: its files were opened up front.
#[test]
fn a_pruned_linked_snapshot_finishes_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open_with(dir.path().join("store"), SEGMENT_BYTES).unwrap();
    append(&store, 1, 60);
    let linked = store.link_snapshot(&dir.path().join("old.snap"), META, 60).unwrap();
    let file = file_snapshot(&store, dir.path().join("file.snap"), 60);
    let mut streamed = Vec::new();
    snapshot_file::read_chunks(&linked, 512, |chunk, _| {
        if streamed.is_empty() {
            std::fs::remove_dir_all(&linked).unwrap();
        }
        streamed.extend_from_slice(&chunk);
        true
    })
    .unwrap();
    assert!(!linked.exists());
    assert_eq!(streamed, std::fs::read(&file).unwrap());
}
