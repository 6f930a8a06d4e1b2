//! openraft's own threads.
//!
//! openraft's core, its replication, heartbeat and state-machine tasks, and
//! the peer connections that carry heartbeats and votes run on a tokio
//! runtime of their own (two worker threads named `txlog-raft`). Client
//! calls, the append stream's decoding and the encoding of entries for
//! replication stay on the node's main runtime.
//!
//! Why: under load (64 clients appending 256 KB each) the main runtime's two
//! workers had a long queue of ready tasks, and a task that woke up waited
//! 25–60 ms for its turn. The heartbeat tasks were among them: the leader
//! sent heartbeats 36–68 ms apart, both followers' failure detectors fired,
//! and the leader changed in most 10 s runs. On a runtime of their own the
//! heartbeats wait only behind Raft's own work (see BENCHMARKS.md).

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::Error;
use crate::Result;

/// openraft's runtime; it stops when dropped.
pub struct RaftRuntime {
    handle: Handle,
    /// Dropped to stop the thread that owns the runtime, which then drops it (a runtime
    /// cannot be dropped from inside another one).
    _stop: oneshot::Sender<()>,
}

impl RaftRuntime {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("txlog-raft")
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the raft runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("txlog-raft".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::Internal(format!("cannot start the raft runtime's thread: {e}")))?;
        Ok(RaftRuntime { handle, _stop: stop })
    }

    /// Run `future` on the raft runtime; what it spawns runs there too.
    pub async fn run<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .map_err(|e| Error::Internal(format!("raft runtime task failed: {e}")))
    }
}
