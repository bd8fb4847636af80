//! What the core counts for operators: the counters behind the metrics, and sync progress
//! (rates, an estimate of the time left, the progress line in the log).

use super::NodeCore;
use crate::fsm::peer::{CommandStats, PeerStats};
use crate::metrics::CoreMetrics;
use crate::wire::{Command, Hash256};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often progress is sampled, and the most often the progress line is logged.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: rates are over the last minute.
const SAMPLES: usize = 7;

/// Counters over the core's run.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Traffic of connections that ended.
    retired: BTreeMap<Command, CommandStats>,
    pub(super) disconnects: BTreeMap<&'static str, u64>,
    pub(super) handshake_failures: BTreeMap<&'static str, u64>,
    pub(super) ban_score_events: BTreeMap<String, u64>,
    pub(super) bans: u64,
    pub(super) headers: u64,
    pub(super) blocks: u64,
    pub(super) handshakes: u64,
}

impl Tally {
    /// A connection ended with these counters.
    pub(super) fn retire(&mut self, stats: &PeerStats) {
        add_traffic(&mut self.retired, stats);
    }
}

fn add_traffic(to: &mut BTreeMap<Command, CommandStats>, stats: &PeerStats) {
    for (c, s) in &stats.by_command {
        let e = to.entry(*c).or_default();
        e.msgs_in += s.msgs_in;
        e.bytes_in += s.bytes_in;
        e.msgs_out += s.msgs_out;
        e.bytes_out += s.bytes_out;
    }
}

/// Where the chain stands and how fast it moves.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainStatus {
    /// The best header's hash.
    pub tip_hash: Hash256,
    /// Its height.
    pub header_height: u32,
    /// Height up to which blocks are stored without a gap (`None` in headers-only mode).
    pub block_height: Option<u32>,
    /// The highest height a peer claimed or implied (at least ours).
    pub best_known_height: u32,
    /// A header request is in flight.
    pub syncing: bool,
    /// The peer it went to.
    pub sync_peer: Option<crate::PeerId>,
    /// Headers added per second over the last minute.
    pub headers_per_sec: f64,
    /// Blocks stored per second over the last minute.
    pub blocks_per_sec: f64,
    /// Seconds left at those rates (`None` when done or not moving).
    pub eta_secs: Option<u64>,
    /// In the initial header sync: our headers are behind what peers claim and have not caught
    /// up once since the start.
    pub initial_sync: bool,
}

/// Progress samples.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// (when, headers, blocks) counted so far.
    samples: VecDeque<(Instant, u64, u64)>,
    next_sample: Option<Instant>,
    /// Headers caught up with the peers' once.
    pub(super) synced_once: bool,
}

impl NodeCore {
    /// The core's counters and gauges.
    pub(crate) fn metrics(&self, now: Instant) -> CoreMetrics {
        let t = &self.tally;
        let mut traffic = t.retired.clone();
        for p in self.peers.values() {
            add_traffic(&mut traffic, &p.last_stats);
        }
        let mut peers = BTreeMap::new();
        for p in self.peers.values() {
            let inputs = self.with_bans(p.addr.ip(), p.inputs, now);
            let status = crate::fsm::scoring::status(&inputs);
            *peers.entry((p.direction, p.ready, status)).or_insert(0) += 1;
        }
        let (progress, blocks) = self.sync_progress();
        CoreMetrics {
            traffic: traffic
                .into_iter()
                .map(|(c, s)| (c.to_string(), s))
                .collect(),
            disconnects: t.disconnects.clone(),
            handshake_failures: t.handshake_failures.clone(),
            ban_score_events: t.ban_score_events.clone(),
            bans: t.bans,
            bans_active: self.bans.len(),
            headers_synced: t.headers,
            blocks_synced: t.blocks,
            handshakes: t.handshakes,
            header_height: progress.tip_height,
            block_height: blocks,
            peers,
            input_queue: 0,
            call_queue: 0,
            event_queue: 0,
        }
    }

    /// Where the chain stands, with rates over the last minute.
    pub(crate) fn chain_status(&self, now: Instant) -> ChainStatus {
        let (p, blocks) = self.sync_progress();
        let (hash, _) = self.best_header();
        let (hps, bps) = self.rates(now);
        let headers_left = p.best_known_height.saturating_sub(p.tip_height);
        let target = p.best_known_height.max(p.tip_height);
        let blocks_left = blocks.map_or(0, |b| target.saturating_sub(b));
        let eta =
            |left: u32, rate: f64| (left > 0 && rate > 0.0).then(|| (left as f64 / rate) as u64);
        let eta_secs = match (eta(headers_left, hps), eta(blocks_left, bps)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        ChainStatus {
            tip_hash: hash,
            header_height: p.tip_height,
            block_height: blocks,
            best_known_height: p.best_known_height.max(p.tip_height),
            syncing: p.syncing,
            sync_peer: p.sync_peer,
            headers_per_sec: hps,
            blocks_per_sec: bps,
            eta_secs,
            initial_sync: !self.progress.synced_once && headers_left > 0,
        }
    }

    fn rates(&self, now: Instant) -> (f64, f64) {
        let Some(&(t0, h0, b0)) = self.progress.samples.front() else {
            return (0.0, 0.0);
        };
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        if dt < 1.0 {
            return (0.0, 0.0);
        }
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        (per(self.tally.headers, h0), per(self.tally.blocks, b0))
    }

    /// Samples progress, and logs a progress line while the chain is behind (at most every
    /// [`PROGRESS_EVERY`]).
    pub(super) fn progress_tick(&mut self, now: Instant) {
        if self.progress.next_sample.is_some_and(|t| now < t) {
            return;
        }
        self.progress.next_sample = Some(now + PROGRESS_EVERY);
        let s = self.chain_status(now);
        let behind = s.header_height < s.best_known_height
            || s.block_height.is_some_and(|b| b < s.header_height);
        let had_samples = !self.progress.samples.is_empty();
        if self.progress.samples.len() >= SAMPLES {
            self.progress.samples.pop_front();
        }
        self.progress
            .samples
            .push_back((now, self.tally.headers, self.tally.blocks));
        if behind && had_samples {
            log::info!("{}", progress_line(&s));
        }
    }
}

/// The progress line: `sync: headers 1234/5678 (512/s), blocks 1200 (35/s), 2m 10s left`.
pub(super) fn progress_line(s: &ChainStatus) -> String {
    let mut line = format!(
        "sync: headers {}/{} ({:.0}/s)",
        s.header_height, s.best_known_height, s.headers_per_sec
    );
    if let Some(b) = s.block_height {
        line.push_str(&format!(
            ", blocks {b}/{} ({:.1}/s)",
            s.header_height, s.blocks_per_sec
        ));
    }
    match s.eta_secs {
        Some(e) => line.push_str(&format!(
            ", {} left",
            humantime::format_duration(Duration::from_secs(e))
        )),
        None => line.push_str(", time left unknown"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line() {
        let s = ChainStatus {
            tip_hash: Hash256::default(),
            header_height: 1000,
            block_height: Some(400),
            best_known_height: 5000,
            syncing: true,
            sync_peer: None,
            headers_per_sec: 400.0,
            blocks_per_sec: 12.5,
            eta_secs: Some(370),
            initial_sync: true,
        };
        assert_eq!(
            progress_line(&s),
            "sync: headers 1000/5000 (400/s), blocks 400/1000 (12.5/s), 6m 10s left"
        );
    }
}
