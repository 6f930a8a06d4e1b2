//! The channel index and metadata written to sled behind the apply path.
//!
//! An apply writes its records to the record file and publishes them; its
//! sled writes (channel heads and runs, [`crate::LAST_SEQ`], the state
//! machine's metadata) go to the *indexer* thread, which applies them in
//! order as atomic sled batches, merging whatever has queued up into one.
//! Measured at one client: a sled batch took ~70 µs alone and ~240 µs
//! beside two other nodes, most of an apply; under load, one sled batch
//! now covers many applies.
//!
//! Until a change reaches sled, [`Unindexed`] answers for it: each
//! channel's head and the seqs sled does not hold yet. They are updated
//! before the records are published, and dropped only after sled has them,
//! so a reader that takes them before reading sled misses nothing.
//!
//! After a crash sled is at an earlier, consistent point than the record
//! file, as it could be before (sled writes its buffers every 500 ms): the
//! store is cut back to sled's `LAST_SEQ` on open and openraft re-applies
//! the rest from the WAL. A failed sled write stops the process for the
//! same reason.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;

/// Index changes queued for sled, at most; an apply past this waits.
pub const QUEUED_CHANGES_MAX: usize = 1024;

/// One apply's sled writes and the channel seqs they index.
pub(crate) struct IndexChange {
    pub writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// How many seqs each channel's runs in `writes` hold.
    pub indexed: Vec<(String, usize)>,
}

/// A channel's appends that sled does not hold yet.
#[derive(Debug, Default)]
struct ChannelTail {
    head: u64,
    seqs: VecDeque<u64>,
}

/// What the queued changes add to sled's view.
#[derive(Debug, Default)]
struct Unindexed {
    channels: HashMap<String, ChannelTail>,
    queued: usize,
}

/// Handle to the indexer thread of one store.
pub(crate) struct Indexer {
    tx: Mutex<Option<mpsc::SyncSender<IndexChange>>>,
    state: Arc<(Mutex<Unindexed>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Indexer {
    pub fn start(tree: sled::Tree) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUED_CHANGES_MAX);
        let state: Arc<(Mutex<Unindexed>, Condvar)> = Arc::default();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("txlog-index".into())
            .spawn(move || run(&tree, &rx, &shared))?;
        Ok(Indexer {
            tx: Mutex::new(Some(tx)),
            state,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn unindexed(&self) -> std::sync::MutexGuard<'_, Unindexed> {
        self.state.0.lock().expect("indexer lock poisoned")
    }

    /// Queue `change`, whose records move each `(channel, head, seqs)` of
    /// `appended` to `head` and add `seqs` to it. Call before publishing
    /// the records.
    pub fn queue<'a>(&self, change: IndexChange, appended: impl Iterator<Item = (&'a str, u64, &'a [u64])>) {
        {
            let mut unindexed = self.unindexed();
            for (channel, head, seqs) in appended {
                let tail = unindexed.channels.entry(channel.to_string()).or_default();
                tail.head = head;
                tail.seqs.extend(seqs);
            }
            unindexed.queued += 1;
        }
        let tx = self.tx.lock().expect("indexer lock poisoned");
        let sent = tx.as_ref().map(|tx| tx.send(change));
        if !matches!(sent, Some(Ok(()))) {
            // Only a panicked indexer thread closes the queue.
            panic!("the sled indexer thread is gone");
        }
    }

    /// `channel`'s head if sled does not hold it yet.
    pub fn head(&self, channel: &str) -> Option<u64> {
        self.unindexed().channels.get(channel).map(|tail| tail.head)
    }

    /// `channel`'s seqs sled does not hold yet, ascending (a suffix of the
    /// channel's seqs).
    pub fn seqs(&self, channel: &str) -> Vec<u64> {
        self.unindexed()
            .channels
            .get(channel)
            .map(|tail| tail.seqs.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Block until sled holds every change queued so far.
    pub fn wait(&self) {
        let (lock, indexed) = &*self.state;
        let mut unindexed = lock.lock().expect("indexer lock poisoned");
        while unindexed.queued > 0 {
            unindexed = indexed.wait(unindexed).expect("indexer lock poisoned");
        }
    }
}

impl Drop for Indexer {
    /// Everything queued reaches sled before the store closes.
    fn drop(&mut self) {
        drop(self.tx.lock().expect("indexer lock poisoned").take());
        if let Some(thread) = self.thread.lock().expect("indexer lock poisoned").take() {
            let _ = thread.join();
        }
    }
}

fn run(tree: &sled::Tree, rx: &mpsc::Receiver<IndexChange>, state: &(Mutex<Unindexed>, Condvar)) {
    while let Ok(first) = rx.recv() {
        let mut changes = vec![first];
        while let Ok(more) = rx.try_recv() {
            changes.push(more);
        }
        let mut batch = sled::Batch::default();
        for change in &changes {
            for (key, value) in &change.writes {
                batch.insert(key.as_slice(), value.as_slice());
            }
        }
        if let Err(err) = tree.apply_batch(batch) {
            // Readers would miss records the file holds; a restart cuts the
            // file back to what sled has and re-applies from the WAL.
            tracing::error!(%err, "writing the channel index to sled failed; aborting so recovery can run");
            eprintln!("txlog: fatal: writing the channel index to sled failed: {err}");
            std::process::abort();
        }
        let (lock, indexed) = state;
        let mut unindexed = lock.lock().expect("indexer lock poisoned");
        for change in &changes {
            for (channel, count) in &change.indexed {
                let tail = unindexed
                    .channels
                    .get_mut(channel)
                    .expect("an indexed channel has a tail");
                tail.seqs.drain(..*count);
                if tail.seqs.is_empty() {
                    // sled now has this channel's head too.
                    unindexed.channels.remove(channel);
                }
            }
        }
        unindexed.queued -= changes.len();
        indexed.notify_all();
    }
}
