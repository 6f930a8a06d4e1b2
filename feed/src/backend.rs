//! Where packets leave the publisher: one trait, a kernel UDP backend and
//! (feature `dpdk`) a DPDK one.

use std::io;

/// Sends the feed's packets to its targets.
pub trait Backend: Send {
    /// Send each packet to every target, in order. Returns the datagrams
    /// the backend had to drop for lack of buffer space (counted; the
    /// packets stay in the retransmit ring). Any other error is returned.
    fn send(&mut self, packets: &[&[u8]]) -> io::Result<u64>;

    /// A short name for logs and status ("kernel", "dpdk").
    fn name(&self) -> &'static str;
}
