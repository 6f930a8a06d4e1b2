//! Round trips between members, and how far each member is from a commit
//! quorum.
//!
//! Every node pings each other member once a second (the node's
//! `peer_ping` task, over [`crate::Network::ping`]) and keeps the last
//! [`SAMPLES_KEPT`] round trips per peer; their median is the peer's RTT.
//! A node's **quorum RTT** is how long a commit it leads waits for the
//! network: the RTT to the voter that completes a majority with it (with
//! three voters, the nearest other voter).
//!
//! Each ping carries the sender's own quorum RTT ([`PingReport`]), so every
//! node — the leader included — learns every member's quorum RTT without a
//! message of its own. Leader placement (`--prefer-region auto`) moves the
//! leadership to the member with the smallest one.
//!
//! Each ping, and each ping's answer, also carries the sender's wall clock,
//! so every node knows how far its clock is from each peer's, from its own
//! first round of pings on ([`PeerLatency::clock_offsets`]); a
//! node whose clock disagrees with most of its peers is the one that is
//! off (the node's `clock_guard` moves leadership away from it: request
//! tokens are checked against the clock of the node that receives them).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

/// Round trips kept per peer; the median of these is its RTT, so one
/// delayed ping (a GC pause, a busy core) does not move it.
pub const SAMPLES_KEPT: usize = 5;
/// A report older than this is not used (the member may be down).
pub const REPORT_FRESH_FOR: Duration = Duration::from_secs(5);

/// What a ping tells its receiver about the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReport {
    pub from: u64,
    /// The sender's quorum RTT in microseconds; `None` while it has too few
    /// measurements.
    pub quorum_rtt_us: Option<u64>,
    /// The sender's wall clock when it sent the ping (ns since the epoch).
    pub wall_clock_ns: u64,
}

#[derive(Default)]
struct Inner {
    /// Own round trips to each peer, newest last.
    samples: HashMap<u64, VecDeque<Duration>>,
    /// Quorum RTTs members reported in their pings, with when.
    reported: HashMap<u64, (Duration, Instant)>,
    /// Each peer's wall clock minus this node's (ns), from its last ping, with when.
    clock_offsets: HashMap<u64, (i64, Instant)>,
}

/// This node's view of member round trips; cheap to clone (shared).
#[derive(Clone)]
pub struct PeerLatency {
    self_id: u64,
    inner: Arc<Mutex<Inner>>,
}

impl PeerLatency {
    pub fn new(self_id: u64) -> Self {
        PeerLatency {
            self_id,
            inner: Arc::default(),
        }
    }

    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    /// Record one round trip to `peer`.
    pub fn sample(&self, peer: u64, rtt: Duration) {
        let mut inner = self.inner.lock().expect("peer latency lock poisoned");
        let samples = inner.samples.entry(peer).or_default();
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(rtt);
    }

    /// Forget a peer that left the membership.
    pub fn retain(&self, members: &[u64]) {
        let mut inner = self.inner.lock().expect("peer latency lock poisoned");
        inner.samples.retain(|id, _| members.contains(id));
        inner.reported.retain(|id, _| members.contains(id));
        inner.clock_offsets.retain(|id, _| members.contains(id));
    }

    /// The median of the round trips kept for `peer`.
    pub fn rtt(&self, peer: u64) -> Option<Duration> {
        let inner = self.inner.lock().expect("peer latency lock poisoned");
        median(inner.samples.get(&peer)?)
    }

    /// This node's quorum RTT among `voters` (this node may or may not be
    /// one): the RTT to the voter that completes a majority with this node.
    /// `None` while some needed peer has no measurement.
    pub fn quorum_rtt(&self, voters: &[u64]) -> Option<Duration> {
        let inner = self.inner.lock().expect("peer latency lock poisoned");
        let majority = voters.len() / 2 + 1;
        let self_votes = usize::from(voters.contains(&self.self_id));
        let others_needed = majority.saturating_sub(self_votes);
        if others_needed == 0 {
            return Some(Duration::ZERO);
        }
        let mut rtts: Vec<Duration> = voters
            .iter()
            .filter(|&&v| v != self.self_id)
            .filter_map(|v| median(inner.samples.get(v)?))
            .collect();
        rtts.sort();
        rtts.get(others_needed - 1).copied()
    }

    /// What this node's pings carry.
    pub fn report(&self, voters: &[u64]) -> PingReport {
        PingReport {
            from: self.self_id,
            quorum_rtt_us: self.quorum_rtt(voters).map(|d| d.as_micros() as u64),
            wall_clock_ns: wall_clock_ns(),
        }
    }

    /// What a ping's answer carries: this node's clock, no quorum RTT.
    pub fn clock_report(&self) -> PingReport {
        PingReport {
            from: self.self_id,
            quorum_rtt_us: None,
            wall_clock_ns: wall_clock_ns(),
        }
    }

    /// Keep the clock a peer's ping answer carried (its quorum RTT, which
    /// answers do not carry, stays as its own pings last said).
    pub fn receive_clock(&self, report: PingReport) {
        if report.from == self.self_id {
            return;
        }
        // The ping's one-way delay (milliseconds) is noise next to the
        // seconds of skew this is for.
        let offset = clock_offset_ns(report.wall_clock_ns);
        let mut inner = self.inner.lock().expect("peer latency lock poisoned");
        inner.clock_offsets.insert(report.from, (offset, Instant::now()));
    }

    /// Keep what a peer's ping said.
    pub fn receive(&self, report: PingReport) {
        if report.from == self.self_id {
            return;
        }
        self.receive_clock(report);
        let mut inner = self.inner.lock().expect("peer latency lock poisoned");
        match report.quorum_rtt_us {
            Some(us) => {
                inner
                    .reported
                    .insert(report.from, (Duration::from_micros(us), Instant::now()));
            }
            None => {
                inner.reported.remove(&report.from);
            }
        }
    }

    /// The quorum RTT `member` reported lately (this node's own for itself).
    pub fn member_quorum_rtt(&self, member: u64, voters: &[u64]) -> Option<Duration> {
        if member == self.self_id {
            return self.quorum_rtt(voters);
        }
        let inner = self.inner.lock().expect("peer latency lock poisoned");
        let (rtt, at) = inner.reported.get(&member)?;
        (at.elapsed() < REPORT_FRESH_FOR).then_some(*rtt)
    }
}

impl PeerLatency {
    /// Each peer's wall clock minus this node's, from pings received lately.
    pub fn clock_offsets(&self) -> Vec<(u64, Duration, bool)> {
        let inner = self.inner.lock().expect("peer latency lock poisoned");
        inner
            .clock_offsets
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < REPORT_FRESH_FOR)
            .map(|(id, (ns, _))| (*id, Duration::from_nanos(ns.unsigned_abs()), *ns >= 0))
            .collect()
    }

    /// Whether this node's clock is off: more than `tolerance` from the
    /// clocks of more than half of `others` (the other members), which
    /// themselves agree within `tolerance`. With three members, one peer
    /// disagreeing means that peer is off, both (agreeing with each other)
    /// means this node is; with two members neither can tell, and clocks
    /// spread every way mark no one.
    pub fn clock_is_off(&self, others: usize, tolerance: Duration) -> bool {
        let disagreeing: Vec<i128> = self
            .clock_offsets()
            .iter()
            .filter(|(_, offset, _)| *offset > tolerance)
            .map(|(_, offset, ahead)| {
                let ns = offset.as_nanos() as i128;
                if *ahead {
                    ns
                } else {
                    -ns
                }
            })
            .collect();
        let (Some(low), Some(high)) = (disagreeing.iter().min(), disagreeing.iter().max()) else {
            return false;
        };
        others >= 2 && disagreeing.len() * 2 > others && high - low <= tolerance.as_nanos() as i128
    }

    /// Whether `peer`'s clock is more than `tolerance` from this node's.
    pub fn clock_differs(&self, peer: u64, tolerance: Duration) -> bool {
        self.clock_offsets()
            .iter()
            .any(|(id, offset, _)| *id == peer && *offset > tolerance)
    }
}

/// A peer's clock minus this node's, in ns; any u64 from the wire fits.
fn clock_offset_ns(peer_wall_clock_ns: u64) -> i64 {
    let offset = i128::from(peer_wall_clock_ns) - i128::from(wall_clock_ns());
    offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn wall_clock_ns() -> u64 {
    crate::state_machine::wall_clock_ns()
}

fn median(samples: &VecDeque<Duration>) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort();
    Some(sorted[sorted.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// With three voters the quorum RTT is the nearest other voter's; the
    /// median ignores one outlier; nothing is claimed before a measurement.
    #[test]
    fn quorum_rtt_is_the_majority_completing_peer() {
        let paris = PeerLatency::new(10);
        let voters = [10, 20, 30];
        assert_eq!(paris.quorum_rtt(&voters), None);
        for rtt in [9, 9, 40, 9, 10] {
            paris.sample(20, ms(rtt)); // frankfurt
        }
        assert_eq!(paris.quorum_rtt(&voters), Some(ms(9)));
        for rtt in [4, 5, 4] {
            paris.sample(30, ms(rtt)); // lyon
        }
        assert_eq!(paris.rtt(30), Some(ms(4)));
        assert_eq!(paris.quorum_rtt(&voters), Some(ms(4)));
        // Five voters: this node needs two others, so the second nearest.
        paris.sample(40, ms(1));
        paris.sample(50, ms(20));
        assert_eq!(paris.quorum_rtt(&[10, 20, 30, 40, 50]), Some(ms(4)));
        // A single voter commits alone.
        assert_eq!(paris.quorum_rtt(&[10]), Some(Duration::ZERO));
        // Samples beyond SAMPLES_KEPT push the oldest out.
        for _ in 0..SAMPLES_KEPT {
            paris.sample(20, ms(2));
        }
        assert_eq!(paris.rtt(20), Some(ms(2)));
    }

    /// Reports from peers are kept per member and replaced; a report
    /// without a value withdraws the old one; a node's own id is ignored.
    #[test]
    fn reports_are_kept_per_member() {
        let lyon = PeerLatency::new(30);
        let voters = [10, 20, 30];
        let now = wall_clock_ns();
        lyon.receive(PingReport {
            from: 10,
            quorum_rtt_us: Some(4_400),
            wall_clock_ns: now,
        });
        lyon.receive(PingReport {
            from: 30,
            quorum_rtt_us: Some(1),
            wall_clock_ns: now,
        });
        assert_eq!(lyon.member_quorum_rtt(10, &voters), Some(Duration::from_micros(4_400)));
        assert_eq!(
            lyon.member_quorum_rtt(30, &voters),
            None,
            "own value is measured, not reported"
        );
        lyon.receive(PingReport {
            from: 10,
            quorum_rtt_us: None,
            wall_clock_ns: now,
        });
        assert_eq!(lyon.member_quorum_rtt(10, &voters), None);
        lyon.sample(10, ms(4));
        assert_eq!(lyon.report(&voters).quorum_rtt_us, Some(4_000));
        lyon.retain(&[30]);
        assert_eq!(lyon.rtt(10), None);
    }

    /// A node whose clock is minutes off both peers knows it is the one off;
    /// one peer off is that peer's problem; seconds of drift are tolerated.
    #[test]
    fn a_clock_off_from_most_peers_is_this_nodes() {
        let tolerance = Duration::from_secs(10);
        let now = wall_clock_ns();
        let ping = |from: u64, offset_s: i64| PingReport {
            from,
            quorum_rtt_us: None,
            wall_clock_ns: (now as i64 + offset_s * 1_000_000_000) as u64,
        };
        let skewed = PeerLatency::new(1);
        assert!(!skewed.clock_is_off(2, tolerance), "nothing heard yet");
        skewed.receive(ping(2, 586));
        assert!(!skewed.clock_is_off(2, tolerance), "one of two peers disagrees");
        skewed.receive(ping(3, 586));
        assert!(skewed.clock_is_off(2, tolerance));
        let offsets = skewed.clock_offsets();
        assert!(offsets.iter().all(|(_, d, ahead)| *ahead && d.as_secs() >= 585));

        let fine = PeerLatency::new(2);
        fine.receive(ping(1, -586));
        fine.receive(ping(3, 2));
        assert!(!fine.clock_is_off(2, tolerance));

        // Two members cannot tell whose clock is off; clocks spread every
        // way (0, +600 s, -600 s) mark no one; a wild value from the wire
        // does not overflow.
        let pair = PeerLatency::new(1);
        pair.receive(ping(2, 600));
        assert!(!pair.clock_is_off(1, tolerance));
        let spread = PeerLatency::new(1);
        spread.receive(ping(2, 600));
        spread.receive(ping(3, -600));
        assert!(!spread.clock_is_off(2, tolerance));
        assert!(spread.clock_differs(2, tolerance) && !spread.clock_differs(4, tolerance));
        spread.receive(PingReport {
            from: 4,
            quorum_rtt_us: None,
            wall_clock_ns: u64::MAX,
        });

        // A ping's answer tells the clock and leaves the quorum RTT alone.
        let restarted = PeerLatency::new(3);
        restarted.receive(PingReport {
            from: 1,
            quorum_rtt_us: Some(4_000),
            wall_clock_ns: now,
        });
        restarted.receive_clock(ping(1, -600));
        restarted.receive_clock(ping(2, -600));
        assert!(restarted.clock_is_off(2, tolerance));
        assert_eq!(
            restarted.member_quorum_rtt(1, &[1, 2, 3]),
            Some(Duration::from_micros(4_000))
        );
    }
}
