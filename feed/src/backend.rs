//! Where packets leave the publisher: one trait, a kernel UDP backend and
//! (feature `dpdk`) a DPDK one.

use std::io;
use std::sync::Arc;

/// Sends the feed's packets to its targets.
pub trait Backend: Send {
    /// Send each packet to every target, in order. Returns the datagrams
    /// the backend had to drop for lack of buffer space (counted; the
    /// packets stay in the retransmit ring). Any other error is returned.
    fn send(&mut self, packets: &[&[u8]]) -> io::Result<u64>;

    /// [`Self::send`] for packets the publisher holds shared (its
    /// retransmit ring keeps them too). A backend that hands packets to
    /// another thread keeps a reference instead of copying them; the
    /// default borrows them for [`Self::send`].
    fn send_shared(&mut self, packets: &[Arc<Vec<u8>>]) -> io::Result<u64> {
        let refs: Vec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
        self.send(&refs)
    }

    /// A short name for logs and status ("kernel", "dpdk").
    fn name(&self) -> &'static str;
}
