//! What the engine measures, as plain data: [`Engine::metrics`](crate::Engine::metrics) gathers a
//! [`Metrics`] snapshot from the shards, the node core and the store writer, each of which owns
//! its counters (no shared registry, no lock); the admin listener renders it for Prometheus.

use crate::fsm::peer::CommandStats;
use crate::fsm::Direction;
use crate::store::records::PeerStatus;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (seconds) for round trips: 100 µs to 10 s.
pub const PING_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds (seconds) for store commits: 10 µs to 10 s.
pub const COMMIT_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A histogram over fixed bucket bounds: how many observations fell at or under each bound
/// (and above the last), their sum and count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative): one per bound, then one above the last.
    pub counts: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.counts[bucket(self.bounds, s)] += 1;
        self.sum += s;
        self.count += 1;
    }

    /// Adds another histogram over the same bounds.
    pub fn merge(&mut self, other: &Histogram) {
        if other.bounds != self.bounds {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

fn bucket(bounds: &[f64], s: f64) -> usize {
    bounds.iter().position(|b| s <= *b).unwrap_or(bounds.len())
}

/// A histogram several threads record into and anyone reads, with atomics (for the store
/// writer's commits: the writer records, the engine reads).
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let i = bucket(self.bounds, d.as_secs_f64());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// What one shard (network thread) reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMetrics {
    /// The shard's index.
    pub shard: usize,
    /// Connections it owns (streams included).
    pub connections: usize,
    /// Bytes waiting in its connections' send queues.
    pub send_queue_bytes: u64,
    /// Reports waiting for room in the core's channel (while any wait, it reads no socket).
    pub backlog: usize,
    /// Commands waiting in its channel.
    pub commands_queued: usize,
    /// Ping round trips it measured.
    pub ping: Histogram,
}

/// The node core's counters (monotonic over the engine's run) and gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreMetrics {
    /// Messages and bytes per command (unknown names under `other`), every connection of this
    /// run: finished ones in full, live ones as of their last report (every second while busy).
    pub traffic: BTreeMap<String, CommandStats>,
    /// Connections ended, by reason ([`DisconnectReason::kind`](crate::DisconnectReason::kind)).
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Of them, connections that ended before their handshake completed.
    pub handshake_failures: BTreeMap<&'static str, u64>,
    /// Ban score events (points given), by reason ([`BanReason::name`](crate::BanReason::name)).
    pub ban_score_events: BTreeMap<String, u64>,
    /// Bans made (by score or by the operator).
    pub bans: u64,
    /// Bans in force.
    pub bans_active: usize,
    /// Headers added to the tree.
    pub headers_synced: u64,
    /// Blocks stored and connected.
    pub blocks_synced: u64,
    /// Connections that completed their handshake.
    pub handshakes: u64,
    /// Height of the best header.
    pub header_height: u32,
    /// Height up to which blocks are stored (`None` in headers-only mode).
    pub block_height: Option<u32>,
    /// Live connections by direction, handshake complete or not, and status.
    pub peers: BTreeMap<(Direction, bool, PeerStatus), usize>,
    /// Peer reports waiting in the core's channel.
    pub input_queue: usize,
    /// API calls waiting in the core's channel.
    pub call_queue: usize,
    /// Events waiting for the embedder (the channel and the core's overflow).
    pub event_queue: usize,
}

/// Everything the engine measures, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The node core's.
    pub core: CoreMetrics,
    /// Each shard's.
    pub shards: Vec<ShardMetrics>,
    /// Store commits: how long each took.
    pub store_commit: Histogram,
    /// Batches waiting for the store writer.
    pub store_queue: usize,
    /// Batches the store failed to commit.
    pub store_failures: u64,
}

impl Metrics {
    /// Every shard's ping histogram in one.
    pub fn ping(&self) -> Histogram {
        let mut h = Histogram::new(PING_BUCKETS);
        for s in &self.shards {
            h.merge(&s.ping);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::new(PING_BUCKETS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[3], 1); // at the bound 0.001
        assert_eq!(h.counts[PING_BUCKETS.len()], 1);
        assert_eq!(h.count, 3);
        let a = AtomicHistogram::new(PING_BUCKETS);
        a.observe(Duration::from_micros(50));
        a.observe(Duration::from_millis(1));
        a.observe(Duration::from_secs(60));
        let s = a.snapshot();
        assert_eq!(s.counts, h.counts);
        assert!((s.sum - h.sum).abs() < 1e-6);
        let mut m = Histogram::new(PING_BUCKETS);
        m.merge(&h);
        m.merge(&s);
        assert_eq!(m.count, 6);
    }
}
