//! openraft's own threads.
//!
//! openraft's core, its replication, heartbeat and state-machine tasks, and
//! the peer connections that carry heartbeats and votes run on a tokio
//! runtime of their own (two worker threads named `txlog-raft`). Client
//! calls, the append stream's decoding and the encoding of entries for
//! replication stay on the node's main runtime.
//!
//! Why: under load (64 clients appending 256 KB each) the main runtime's
//! workers (one per core, two here) had a long queue of ready tasks, and a
//! task that woke up waited 25–60 ms for its turn. The heartbeat tasks were among them: the leader
//! sent heartbeats 36–68 ms apart, both followers' failure detectors fired,
//! and the leader changed in most 10 s runs. On a runtime of their own the
//! heartbeats wait only behind Raft's own work (see BENCHMARKS.md).

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::Error;
use crate::Result;

/// openraft's runtime, owned by a thread of its own (a runtime cannot be
/// shut down from inside another one).
pub(crate) struct RaftRuntime {
    handle: Handle,
    /// Dropped to tell the owning thread to shut the runtime down.
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How long [`RaftRuntime::stop`] waits for openraft's tasks and blocking
/// applies to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl RaftRuntime {
    /// Start the runtime on a new thread; returns once it runs.
    pub(crate) fn start() -> Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("txlog-raft".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .thread_name("txlog-raft")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started.send(Err(err));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Waits for the blocking tasks (applies) that are running.
                runtime.shutdown_timeout(STOP_TIMEOUT);
            })
            .map_err(|e| Error::Internal(format!("cannot start the raft runtime's thread: {e}")))?;
        let handle = handle
            .recv()
            .map_err(|_| Error::Internal("the raft runtime's thread ended at start".into()))?
            .map_err(|e| Error::Internal(format!("cannot start the raft runtime: {e}")))?;
        Ok(RaftRuntime { handle, stop, thread })
    }

    /// Run `future` on the raft runtime; what it spawns runs there too. A
    /// panic in it is resumed here.
    pub(crate) async fn run<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(future).await {
            Ok(output) => Ok(output),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(Error::Internal(format!("raft runtime task failed: {err}"))),
        }
    }

    /// Shut the runtime down and wait (at most [`STOP_TIMEOUT`], plus a
    /// margin) until its tasks have ended. Call after `Raft::shutdown`.
    pub(crate) async fn stop(self) {
        drop(self.stop);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(STOP_TIMEOUT + Duration::from_secs(1), joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(_))) | Ok(Err(_)) => tracing::warn!("the raft runtime's thread panicked"),
            Err(_) => tracing::warn!("the raft runtime did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}
