//! Throttling for log lines that repeat for as long as a fault lasts.
//!
//! openraft's leader sends every member a heartbeat each heartbeat interval
//! (10 ms on LAN) and logs each failure at WARN in its own words
//! (`HeartbeatWorker(id=1, target=4) failed to send a heartbeat: …`, from
//! `core/heartbeat/worker.rs`). A member that stays down — such as a node
//! added with `txlog admin join` that never started, which stays a learner —
//! filled the leader's log with about 80 such lines a second. The line is
//! made inside openraft, so [`OpenraftWarnings`] holds it back in the
//! subscriber instead and writes one line of its own per peer per
//! [`PEER_WARNING_INTERVAL`], with the number of lines it held back.
//! [`RateLimiter`] is the counting part, usable for any keyed log line.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tracing::field::Field;
use tracing::field::Visit;
use tracing::Event;
use tracing::Level;
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// At most one heartbeat-failure line per peer per this interval.
pub const PEER_WARNING_INTERVAL: Duration = Duration::from_secs(5);
/// Peers tracked at once; more than any real membership.
const PEERS_MAX: usize = 1024;

/// Lets the first occurrence of each key through per `interval` and counts
/// the ones it holds back, so the next line let through can say how many.
pub struct RateLimiter<K> {
    interval: Duration,
    keys_max: usize,
    windows: Mutex<HashMap<K, Window>>,
}

struct Window {
    opened: Instant,
    held_back: u64,
}

impl<K: Eq + Hash> RateLimiter<K> {
    /// Tracks at most `keys_max` keys; past that, keys whose window has
    /// closed are forgotten, and if none has, new keys are never held back.
    pub fn new(interval: Duration, keys_max: usize) -> Self {
        RateLimiter {
            interval,
            keys_max,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// One occurrence of `key` at `now`. `Some(n)`: log it, and say `n`
    /// earlier occurrences were held back since the last one logged.
    /// `None`: hold it back (it is counted).
    pub fn check(&self, key: K, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().expect("rate limiter lock poisoned");
        if let Some(window) = windows.get_mut(&key) {
            if now.saturating_duration_since(window.opened) < self.interval {
                window.held_back += 1;
                return None;
            }
            let held_back = window.held_back;
            *window = Window {
                opened: now,
                held_back: 0,
            };
            return Some(held_back);
        }
        if windows.len() >= self.keys_max {
            let interval = self.interval;
            windows.retain(|_, w| now.saturating_duration_since(w.opened) < interval);
        }
        if windows.len() < self.keys_max {
            windows.insert(
                key,
                Window {
                    opened: now,
                    held_back: 0,
                },
            );
        }
        Some(0)
    }
}

/// A `tracing` layer that throttles openraft's per-peer heartbeat warnings
/// (see the module comment); every other event passes untouched.
pub struct OpenraftWarnings {
    heartbeats: RateLimiter<u64>,
}

impl OpenraftWarnings {
    pub fn new() -> Self {
        OpenraftWarnings {
            heartbeats: RateLimiter::new(PEER_WARNING_INTERVAL, PEERS_MAX),
        }
    }
}

impl Default for OpenraftWarnings {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Subscriber> Layer<S> for OpenraftWarnings {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::WARN || !metadata.target().starts_with("openraft::core::heartbeat") {
            return true;
        }
        let mut message = MessageText::default();
        event.record(&mut message);
        let Some((peer, detail)) = heartbeat_warning(&message.0) else {
            return true;
        };
        if let Some(suppressed) = self.heartbeats.check(peer, Instant::now()) {
            // Logged from inside the dispatch of openraft's event. With the
            // global subscriber `txlog` installs that is fine; under a scoped
            // one (`tracing::subscriber::with_default`) tracing drops nested
            // events, and this line with them.
            tracing::warn!(
                peer,
                suppressed,
                interval = ?PEER_WARNING_INTERVAL,
                %detail,
                "heartbeats to a peer are failing"
            );
        }
        false
    }
}

/// `HeartbeatWorker(id=1, target=4) failed to …` → `(4, "failed to …")`.
fn heartbeat_warning(message: &str) -> Option<(u64, &str)> {
    let rest = message.strip_prefix("HeartbeatWorker(")?;
    let (worker, detail) = rest.split_once(") ")?;
    let peer = worker.split(", ").find_map(|part| part.strip_prefix("target="))?;
    Some((peer.parse().ok()?, detail))
}

/// The `message` field of an event, formatted.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One occurrence per key per interval passes; the next one to pass
    /// reports how many were held back; keys do not share windows.
    #[test]
    fn rate_limiter_counts_what_it_holds_back() {
        let limiter = RateLimiter::new(Duration::from_secs(5), 8);
        let t0 = Instant::now();
        assert_eq!(limiter.check(4, t0), Some(0));
        for ms in [10, 20, 4_999] {
            assert_eq!(limiter.check(4, t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limiter.check(7, t0 + Duration::from_millis(30)), Some(0));
        assert_eq!(limiter.check(4, t0 + Duration::from_secs(5)), Some(3));
        assert_eq!(limiter.check(4, t0 + Duration::from_secs(6)), None);
        assert_eq!(limiter.check(4, t0 + Duration::from_secs(11)), Some(1));
    }

    /// With every slot taken by an open window, a new key is let through
    /// every time rather than tracked; closed windows make room.
    #[test]
    fn rate_limiter_key_limit() {
        let limiter = RateLimiter::new(Duration::from_secs(5), 2);
        let t0 = Instant::now();
        assert_eq!(limiter.check(1, t0), Some(0));
        assert_eq!(limiter.check(2, t0), Some(0));
        assert_eq!(limiter.check(3, t0), Some(0));
        assert_eq!(limiter.check(3, t0), Some(0));
        assert_eq!(limiter.check(3, t0 + Duration::from_secs(5)), Some(0));
        assert_eq!(limiter.check(3, t0 + Duration::from_secs(6)), None);
    }

    /// openraft's wording, as in openraft 0.10.0-alpha.37's heartbeat worker.
    #[test]
    fn heartbeat_warning_parsing() {
        let line = "HeartbeatWorker(id=1, target=4) failed to send a heartbeat: Ok(Err(Unreachable(…)))";
        assert_eq!(
            heartbeat_warning(line),
            Some((4, "failed to send a heartbeat: Ok(Err(Unreachable(…)))"))
        );
        assert_eq!(
            heartbeat_warning("HeartbeatWorker(id=2, target=17) heartbeat stream returned no response"),
            Some((17, "heartbeat stream returned no response"))
        );
        assert_eq!(heartbeat_warning("something else"), None);
    }
}
