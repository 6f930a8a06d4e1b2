//! Waiting for a node to catch up.

use std::time::Duration;
use std::time::Instant;

use txlog_client::Client;

/// How often a waiting caller is told where the node is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Pause between status polls.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Pause between trickle appends.
const TRICKLE_EVERY: Duration = Duration::from_millis(50);

/// Wait until the node at `address` has applied `target` (its `last_seq`),
/// up to `timeout`; says where it is every two seconds on stderr.
pub async fn wait_for_seq(client: &Client, address: &str, target: u64, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut reached = None;
    loop {
        if let Ok(s) = client.node_status(address).await {
            if s.last_seq >= target {
                return Ok(());
            }
            reached = Some(s.last_seq);
            if last_report.elapsed() >= PROGRESS_EVERY {
                eprintln!("    node {} at seq {} of {target}", s.id, s.last_seq);
                last_report = Instant::now();
            }
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "node at {address} did not reach seq {target} within {timeout:?} (last seen at {reached:?})"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`wait_for_seq`] with a trickle of appends meanwhile (one every 50 ms,
/// channel `trickle`), as in production: openraft re-probes an idle
/// follower's log only when there is something to send.
pub async fn catch_up_with_trickle(
    client: &Client,
    address: &str,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let trickle = {
        let client = client.clone();
        // Txids unique per call: a repeated txid would write nothing.
        let run_id = txlog_client::wall_clock_ns();
        tokio::spawn(async move {
            for n in 0u64.. {
                tokio::time::sleep(TRICKLE_EVERY).await;
                let _ = client
                    .append_one("trickle", format!("trickle-{run_id}-{n}").as_bytes(), b"t")
                    .await;
            }
        })
    };
    let result = wait_for_seq(client, address, target, timeout).await;
    trickle.abort();
    result
}
