//! What the feed's socket-less tests share.

use std::sync::Arc;
use std::sync::Mutex;

use txlog_feed::Backend;

/// A backend that keeps the packets a publisher sent, in order.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<Vec<u8>>>>);

impl Backend for Capture {
    fn send(&mut self, packets: &[&[u8]]) -> std::io::Result<u64> {
        self.0.lock().unwrap().extend(packets.iter().map(|p| p.to_vec()));
        Ok(0)
    }

    fn name(&self) -> &'static str {
        "capture"
    }
}
