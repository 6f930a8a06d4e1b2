//! State machine tests: dense sequences, txid dedup, idempotent re-apply,
//! snapshot build → install round trip, and rebuild from a snapshot on open.

use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::RaftSnapshotBuilder;
use txlog_raft::BatchBody;
use txlog_raft::BatchFrame;
use txlog_raft::Entry;
use txlog_raft::StateMachine;
use txlog_raft::TypeConfig;
use txlog_storage::NewRecord;
use txlog_storage::StoredRecord;

fn record(txid: &str, channel: &str) -> NewRecord {
    NewRecord {
        txid: txid.as_bytes().to_vec().into(),
        channel: channel.to_string(),
        payload: format!("payload of {txid}").into_bytes().into(),
        client_time_ns: 0,
    }
}

fn batch_entry(index: u64, records: Vec<NewRecord>) -> Entry {
    batch_entry_from(1, index, records)
}

/// A batch entry proposed by leader `leader` in term 1.
fn batch_entry_from(leader: u64, index: u64, records: Vec<NewRecord>) -> Entry {
    let frame = BatchFrame::encode(
        leader,
        &BatchBody {
            created_ns: 1000 + index,
            records,
        },
    );
    Entry {
        log_id: log_id::<TypeConfig>(1, leader, index),
        payload: openraft::EntryPayload::Normal(frame),
    }
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

/// Open the state machine in `dir` again (the record store waits for sled's
/// lock, which its flusher holds for a moment after the previous drop).
async fn reopen(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(dir).expect("reopen")
}

fn all(sm: &StateMachine) -> Vec<StoredRecord> {
    sm.reader().store().read(1, 10_000, usize::MAX, None).unwrap()
}

fn entries() -> Vec<Entry> {
    vec![
        batch_entry(1, vec![record("a", "orders"), record("b", "fills")]),
        batch_entry(2, vec![record("c", "orders"), record("a", "orders")]), // "a" retried
        batch_entry(3, vec![record("d", "fills"), record("d", "fills")]),   // duplicate within one batch
        batch_entry(4, vec![record("e", "orders")]),
    ]
}

/// Sequences are dense 1..=n, channel sequences count per channel, and retried txids write nothing.
#[tokio::test]
async fn dense_sequences_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    apply(&mut sm, entries()).await;
    let records = all(&sm);
    let txids: Vec<&[u8]> = records.iter().map(|r| r.txid.as_slice()).collect();
    assert_eq!(txids, vec![&b"a"[..], b"b", b"c", b"d", b"e"]);
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    let orders: Vec<u64> = records
        .iter()
        .filter(|r| r.channel == "orders")
        .map(|r| r.channel_seq)
        .collect();
    assert_eq!(orders, vec![1, 2, 3]);
    assert_eq!(
        records[0].commit_time_ns, 1001,
        "commit time comes from the batch, identical on every node"
    );
    assert_eq!(sm.reader().last_seq(), 5);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 4);
}

/// Re-applying entries at or below the applied index (as after a crash) changes nothing.
#[tokio::test]
async fn reapply_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(&mut sm, entries()[..2].to_vec()).await;
    }
    let mut sm = reopen(dir.path()).await;
    // openraft re-applies from the WAL after restart: entries 1..=4, of which 1..=2 are already in the store.
    apply(&mut sm, entries()).await;
    let seqs: Vec<u64> = all(&sm).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = StateMachine::open(reference_dir.path()).unwrap();
    apply(&mut reference, entries()).await;
    assert_eq!(all(&sm), all(&reference), "restart + re-apply equals one clean apply");
}

/// A reopened state machine reports exactly the log id it applied, whatever the leader's
/// node id (the applied index once read back as the leader's id), re-applying changes
/// nothing, and the next entry applies.
#[tokio::test]
async fn reopen_keeps_applied_log_id_for_any_leader_id() {
    for leader in [1u64, 2, 3, 1000, 2000, 300_000, 1 << 40, u64::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (1..=120u64)
            .map(|i| batch_entry_from(leader, i, vec![record(&format!("t{i}"), "orders")]))
            .collect();
        {
            let mut sm = StateMachine::open(dir.path()).unwrap();
            apply(&mut sm, entries[..60].to_vec()).await;
            apply(&mut sm, entries[60..].to_vec()).await;
        }
        let mut sm = reopen(dir.path()).await;
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id::<TypeConfig>(1, leader, 120)), "leader {leader}");
        assert_eq!(sm.reader().last_seq(), 120, "leader {leader}");
        apply(&mut sm, entries.clone()).await;
        assert_eq!(sm.reader().last_seq(), 120, "re-apply wrote nothing (leader {leader})");
        apply(
            &mut sm,
            vec![batch_entry_from(leader, 121, vec![record("next", "orders")])],
        )
        .await;
        let records = all(&sm);
        assert_eq!(records.len(), 121, "leader {leader}");
        assert!(records.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
        assert_eq!(records[120].txid, b"next");
    }
}

/// A built snapshot installs into an empty state machine and reproduces every record and index.
#[tokio::test]
async fn snapshot_build_install_round_trip() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open(leader_dir.path()).unwrap();
    apply(&mut leader, entries()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.unwrap().index, 4);

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path()).unwrap();
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .unwrap();
    assert_eq!(all(&follower), all(&leader));
    assert_eq!(follower.reader().store().lookup_txid(b"c").unwrap().unwrap().seq, 3);
    let orders = follower
        .reader()
        .store()
        .read(1, 100, usize::MAX, Some("orders"))
        .unwrap();
    assert_eq!(orders.len(), 3);
    assert_eq!(follower.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    // Appends after the install continue the dense sequence and still dedup old txids.
    apply(
        &mut follower,
        vec![batch_entry(5, vec![record("a", "orders"), record("f", "orders")])],
    )
    .await;
    let seqs: Vec<u64> = all(&follower).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

/// A snapshot received as a file (a linked one streams as one) is installed,
/// then swapped for a linked snapshot of the follower's own store under the
/// same name: one copy of the records on its disk, and it reopens from it.
#[tokio::test]
async fn an_installed_snapshot_file_becomes_a_linked_snapshot() {
    use std::io::Write;
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open(leader_dir.path()).unwrap();
    apply(&mut leader, entries()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(snapshot.snapshot.path.is_dir(), "a built snapshot is linked");

    let staging = tempfile::tempdir().unwrap();
    let received = staging.path().join("received");
    let mut out = std::fs::File::create(&received).unwrap();
    txlog_storage::snapshot_file::read_chunks(&snapshot.snapshot.path, 1 << 20, |chunk, _| {
        out.write_all(&chunk).unwrap();
        true
    })
    .unwrap();
    drop(out);

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path()).unwrap();
    let file = txlog_raft::SnapshotFile {
        path: received,
        delta_base: None,
    };
    follower.install_snapshot(&snapshot.meta, file).await.unwrap();
    assert_eq!(all(&follower), all(&leader));
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert!(current.snapshot.path.is_dir(), "{}", current.snapshot.path.display());
    assert_eq!(current.snapshot.path.file_name(), snapshot.snapshot.path.file_name());
    let info = txlog_storage::snapshot_file::verify(&current.snapshot.path).unwrap();
    assert_eq!(info.record_count, all(&leader).len() as u64);
    let names: Vec<_> = std::fs::read_dir(follower_dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    drop(follower);
    let reopened = reopen(follower_dir.path()).await;
    assert_eq!(all(&reopened), all(&leader));
}

/// Put `snapshot` (another state machine's) in the snapshot directory of
/// the state machine at `dir`, as its newest snapshot.
fn place_snapshot(dir: &std::path::Path, snapshot: &txlog_raft::Snapshot) {
    let name = snapshot.snapshot.path.file_name().unwrap().to_str().unwrap();
    txlog_storage::SnapshotDir::open(dir.join("snapshots"))
        .unwrap()
        .install_copy(&snapshot.snapshot.path, name)
        .unwrap();
}

/// A state machine that applied [`entries`], and a snapshot of it.
async fn source_with_snapshot() -> (tempfile::TempDir, StateMachine, txlog_raft::Snapshot) {
    let source_dir = tempfile::tempdir().unwrap();
    let mut source = StateMachine::open(source_dir.path()).unwrap();
    apply(&mut source, entries()).await;
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();
    (source_dir, source, snapshot)
}

/// When the store lost writes that the WAL no longer holds, opening rebuilds the store from the newest snapshot.
#[tokio::test]
async fn open_rebuilds_from_a_newer_snapshot() {
    let (_source_dir, source, snapshot) = source_with_snapshot().await;

    let dir = tempfile::tempdir().unwrap();
    {
        let _empty = StateMachine::open(dir.path()).unwrap();
    }
    place_snapshot(dir.path(), &snapshot);
    let mut reopened = reopen(dir.path()).await;
    assert_eq!(all(&reopened), all(&source));
    assert_eq!(reopened.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
}

/// A store that is a prefix of its newest snapshot (sled lost the writes
/// after a snapshot was built) gets only the snapshot's records after its
/// own on open: its first record segment keeps its inode.
#[tokio::test]
async fn open_adds_to_a_store_that_is_a_prefix_of_the_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let (_source_dir, source, snapshot) = source_with_snapshot().await;

    let dir = tempfile::tempdir().unwrap();
    {
        let mut behind = StateMachine::open(dir.path()).unwrap();
        apply(&mut behind, entries()[..2].to_vec()).await;
        assert!(all(&behind).len() < all(&source).len());
    }
    place_snapshot(dir.path(), &snapshot);
    let segment = dir
        .path()
        .join("records")
        .join("segments")
        .join(format!("{:020}.rec", 1));
    let inode = std::fs::metadata(&segment).unwrap().ino();
    // Held, so a rebuilt segment could not reuse the inode number.
    std::fs::hard_link(&segment, dir.path().join("held")).unwrap();
    let mut reopened = reopen(dir.path()).await;
    assert_eq!(all(&reopened), all(&source));
    assert_eq!(reopened.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    assert_eq!(
        std::fs::metadata(&segment).unwrap().ino(),
        inode,
        "the store was not rebuilt"
    );
}

fn many_entries(count: u64, per_entry: usize) -> Vec<Entry> {
    (1..=count)
        .map(|i| {
            let records = (0..per_entry)
                .map(|j| record(&format!("tx-{i}-{j}"), if j % 2 == 0 { "orders" } else { "fills" }))
                .collect();
            batch_entry(i, records)
        })
        .collect()
}

/// Snapshots bigger than one restore batch (4096 records) install whole — full and delta —
/// and leave the follower's hash chain equal to the leader's.
#[tokio::test]
async fn large_snapshot_full_and_delta_install() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open(leader_dir.path()).unwrap();
    let entries = many_entries(20, 500); // 10,000 records
    apply(&mut leader, entries.clone()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let leader_store = leader.reader().store().clone();
    let leader_all = leader_store.read(1, 20_000, usize::MAX, None).unwrap();
    assert_eq!(leader_all.len(), 10_000);

    // Full: an empty follower.
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = StateMachine::open(full_dir.path()).unwrap();
    full.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .unwrap();
    let full_store = full.reader().store().clone();
    assert_eq!(full_store.read(1, 20_000, usize::MAX, None).unwrap(), leader_all);
    assert_eq!(
        full_store.chain_at(10_000).unwrap(),
        leader_store.chain_at(10_000).unwrap()
    );

    // Delta: a follower that applied the first 3 entries (1,500 records) gets the rest.
    let delta_dir = tempfile::tempdir().unwrap();
    let mut delta = StateMachine::open(delta_dir.path()).unwrap();
    apply(&mut delta, entries[..3].to_vec()).await;
    let base = delta.reader().last_seq();
    assert_eq!(base, 1_500);
    assert_eq!(
        delta.reader().store().chain_at(base).unwrap(),
        leader_store.chain_at(base).unwrap(),
        "same records, same chain"
    );
    let mut file = snapshot.snapshot.clone();
    file.delta_base = Some(base);
    delta.install_snapshot(&snapshot.meta, file).await.unwrap();
    let delta_store = delta.reader().store().clone();
    assert_eq!(delta_store.read(1, 20_000, usize::MAX, None).unwrap(), leader_all);
    assert_eq!(
        delta_store.chain_at(10_000).unwrap(),
        leader_store.chain_at(10_000).unwrap()
    );
    assert_eq!(delta.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
}

/// A leader that applied 6 entries of 10 records and a follower that applied
/// the first `follower_entries` of them (the temporary dirs live as long as
/// the first element).
async fn leader_and_follower(follower_entries: usize) -> ([tempfile::TempDir; 2], StateMachine, StateMachine) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut leader = StateMachine::open(dirs[0].path()).unwrap();
    let entries = many_entries(6, 10);
    apply(&mut leader, entries.clone()).await;
    let mut follower = StateMachine::open(dirs[1].path()).unwrap();
    apply(&mut follower, entries[..follower_entries].to_vec()).await;
    (dirs, leader, follower)
}

/// The leader plans a delta only when the follower's hash chain at its last seq equals
/// its own; a follower whose chain diverges (tampered here) gets a full snapshot.
#[tokio::test]
async fn diverged_chain_gets_a_full_snapshot() {
    use txlog_raft::ProbeRequest;
    use txlog_raft::ResyncFollower;
    use txlog_raft::ResyncPlan;
    let (_dirs, leader, follower) = leader_and_follower(2).await;
    let request = ProbeRequest { snapshot: "s".into() };
    let resync = ResyncFollower::new(follower.reader());

    let probe = resync.answer_probe(&request).unwrap();
    assert_eq!(probe.last_seq, 20);
    assert_eq!(
        ResyncPlan::decide(&leader.reader(), &probe, 60, "s"),
        ResyncPlan::Delta {
            base_seq: 20,
            base_chain: probe.chain,
            first_seq: 21,
            last_seq: 60
        }
    );

    follower.reader().store().set_chain_at(20, [7u8; 32]).unwrap();
    let probe = resync.answer_probe(&request).unwrap();
    match ResyncPlan::decide(&leader.reader(), &probe, 60, "s") {
        ResyncPlan::Full(reason) => assert!(reason.contains("hash chains differ at seq 20"), "{reason}"),
        other => panic!("a diverged follower got {other:?}"),
    }
    // A chain damaged below the last seq is caught when the follower re-verifies its prefix.
    let verdict = follower.reader().store().verify_chain(20, |_| Ok(())).unwrap();
    assert!(verdict.is_err(), "{verdict:?}");
}

/// While a full snapshot is being installed, the follower's store holds only part of it:
/// a resync probe in that window is refused (retryable), never answered with the partial
/// store, which a leader would take as the base of a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_during_an_install_is_refused() {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use txlog_raft::ProbeRequest;
    use txlog_raft::ResyncFollower;
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open(leader_dir.path()).unwrap();
    apply(&mut leader, many_entries(40, 1000)).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path()).unwrap();
    apply(&mut follower, many_entries(1, 100)).await;

    let resync = Arc::new(ResyncFollower::new(follower.reader()));
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (resync, done) = (resync.clone(), done.clone());
        std::thread::spawn(move || {
            let request = ProbeRequest { snapshot: "s".into() };
            let (mut answered, mut refused) = (Vec::new(), 0);
            while !done.load(Ordering::Acquire) {
                match resync.answer_probe(&request) {
                    Ok(probe) => answered.push(probe.last_seq),
                    Err(err) => {
                        assert!(err.to_string().contains("installing a snapshot"), "{err}");
                        refused += 1;
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            (answered, refused)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .unwrap();
    done.store(true, Ordering::Release);
    let (answered, refused) = prober.join().unwrap();
    assert!(refused > 0, "no probe landed during the install");
    assert!(
        answered.iter().all(|&seq| seq == 100 || seq == 40_000),
        "a probe saw a partial store: {:?}",
        answered
            .iter()
            .filter(|&&seq| seq != 100 && seq != 40_000)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        resync
            .answer_probe(&ProbeRequest { snapshot: "s".into() })
            .unwrap()
            .last_seq,
        40_000
    );
}

/// A follower already past the snapshot with the leader's records gets nothing (it holds
/// the snapshot already); one past it with other records gets the full snapshot.
#[tokio::test]
async fn follower_past_the_snapshot_is_covered_only_with_the_same_records() {
    use txlog_raft::ProbeRequest;
    use txlog_raft::ResyncFollower;
    use txlog_raft::ResyncPlan;
    let (_dirs, leader, follower) = leader_and_follower(5).await;
    let request = ProbeRequest { snapshot: "s".into() };
    let resync = ResyncFollower::new(follower.reader());

    let probe = resync.answer_probe(&request).unwrap();
    assert_eq!(probe.last_seq, 50);
    assert_eq!(
        ResyncPlan::decide(&leader.reader(), &probe, 30, "s"),
        ResyncPlan::Covered { follower_seq: 50 }
    );
    follower.reader().store().set_chain_at(50, [7u8; 32]).unwrap();
    let probe = resync.answer_probe(&request).unwrap();
    match ResyncPlan::decide(&leader.reader(), &probe, 30, "s") {
        ResyncPlan::Full(reason) => assert!(reason.contains("past the snapshot"), "{reason}"),
        other => panic!("a follower past the snapshot with other records got {other:?}"),
    }
}
