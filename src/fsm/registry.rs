//! The peer registry: every known peer address with its record and lifetime statistics, folded
//! from the live connections' counters. Pure: fed events and snapshots with the time, it answers
//! with the store writes that bring the disk up to date.

use crate::fsm::peer::{CommandStats, PeerStats};
use crate::fsm::Direction;
use crate::fsm::PeerId;
use crate::store::records::{
    load_peers, load_stats, put_peer, put_stats, PeerRecord, PeerStatus, StoredStats,
};
use crate::store::{Batch, Store, StoreResult};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

/// Connection failures in a row after which a peer is considered dead.
pub const DEAD_AFTER_FAILURES: u32 = 3;

/// Known peers and their statistics.
#[derive(Default, Debug)]
pub struct Registry {
    peers: HashMap<SocketAddr, PeerRecord>,
    stats: HashMap<SocketAddr, StoredStats>,
    live: HashMap<PeerId, (SocketAddr, PeerStats)>,
    dirty: HashSet<SocketAddr>,
}

fn sub(a: &CommandStats, b: &CommandStats) -> CommandStats {
    CommandStats {
        msgs_in: a.msgs_in.saturating_sub(b.msgs_in),
        bytes_in: a.bytes_in.saturating_sub(b.bytes_in),
        msgs_out: a.msgs_out.saturating_sub(b.msgs_out),
        bytes_out: a.bytes_out.saturating_sub(b.bytes_out),
    }
}

fn add(into: &mut CommandStats, d: &CommandStats) {
    into.msgs_in += d.msgs_in;
    into.bytes_in += d.bytes_in;
    into.msgs_out += d.msgs_out;
    into.bytes_out += d.bytes_out;
}

impl Registry {
    /// Loads what the store holds.
    pub fn load(s: &dyn Store) -> StoreResult<Registry> {
        Ok(Registry {
            peers: load_peers(s)?.into_iter().collect(),
            stats: load_stats(s)?.into_iter().collect(),
            ..Default::default()
        })
    }

    /// Every known peer.
    pub fn peers(&self) -> impl Iterator<Item = (&SocketAddr, &PeerRecord)> {
        self.peers.iter()
    }

    /// Live connections whose counters are tracked.
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    #[cfg(test)]
    /// One peer's record.
    pub fn peer(&self, a: &SocketAddr) -> Option<&PeerRecord> {
        self.peers.get(a)
    }

    /// One address's lifetime statistics.
    pub fn stats(&self, a: &SocketAddr) -> Option<&StoredStats> {
        self.stats.get(a)
    }

    fn record(&mut self, a: SocketAddr, now: u64) -> &mut PeerRecord {
        self.dirty.insert(a);
        self.peers.entry(a).or_insert_with(|| PeerRecord {
            first_seen: now,
            ..Default::default()
        })
    }

    /// A handshake completed.
    pub fn connected(
        &mut self,
        id: PeerId,
        a: SocketAddr,
        services: u64,
        user_agent: &str,
        version: i32,
        now: u64,
    ) {
        let r = self.record(a, now);
        r.services = services;
        r.user_agent = user_agent.to_string();
        r.version = version;
        r.last_seen = now;
        r.last_success = now;
        r.failures = 0;
        if r.status != PeerStatus::Banned && r.status != PeerStatus::Penalised {
            r.status = PeerStatus::Alive;
        }
        self.stats.entry(a).or_default().totals.connections += 1;
        self.live.entry(id).or_insert((a, PeerStats::default()));
    }

    /// The latest counters of a live connection; the growth since the last call is added to the
    /// address's lifetime statistics.
    pub fn snapshot(
        &mut self,
        id: PeerId,
        a: SocketAddr,
        now_stats: &PeerStats,
        rtt: Option<Duration>,
    ) {
        let prev = self.live.remove(&id).map(|(_, s)| s).unwrap_or_default();
        let st = self.stats.entry(a).or_default();
        let mut changed = false;
        for (cmd, cur) in &now_stats.by_command {
            let before = prev
                .by_command
                .iter()
                .find(|(c, _)| c == cmd)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            let d = sub(cur, &before);
            if d != CommandStats::default() {
                changed = true;
                match st.by_command.iter_mut().find(|(c, _)| c == cmd) {
                    Some((_, s)) => add(s, &d),
                    None => st.by_command.push((*cmd, d)),
                }
            }
        }
        let new_errors = now_stats.errors.saturating_sub(prev.errors);
        if new_errors > 0 {
            st.totals.errors += new_errors;
            changed = true;
        }
        if let Some(r) = rtt {
            st.totals.rtt_us = r.as_micros() as u64;
            changed = true;
        }
        if changed {
            self.dirty.insert(a);
        }
        self.live.insert(id, (a, now_stats.clone()));
    }

    /// A connection ended with these final counters.
    #[allow(clippy::too_many_arguments)]
    pub fn disconnected(
        &mut self,
        id: PeerId,
        a: SocketAddr,
        direction: Direction,
        handshaken: bool,
        stats: &PeerStats,
        rtt: Option<Duration>,
        now: u64,
    ) {
        if handshaken || self.live.contains_key(&id) {
            self.snapshot(id, a, stats, rtt);
        }
        self.live.remove(&id);
        if handshaken {
            self.record(a, now).last_seen = now;
        } else if direction == Direction::Outbound {
            self.failed(a, now);
        }
    }

    /// An outbound connection could not be made.
    pub fn failed(&mut self, a: SocketAddr, now: u64) {
        let r = self.record(a, now);
        r.failures += 1;
        if r.failures >= DEAD_AFTER_FAILURES && r.status != PeerStatus::Banned {
            r.status = PeerStatus::Dead;
        }
    }

    /// Sets the status of every known address matching `f` (penalised, banned...).
    pub fn set_status(&mut self, f: impl Fn(std::net::IpAddr) -> bool, st: PeerStatus) {
        let hits: Vec<SocketAddr> = self.peers.keys().filter(|a| f(a.ip())).copied().collect();
        for a in hits {
            if let Some(r) = self.peers.get_mut(&a) {
                r.status = st;
                self.dirty.insert(a);
            }
        }
    }

    /// The writes that bring the store up to date with what changed since the last call.
    pub fn take_batch(&mut self) -> Batch {
        let mut b = Batch::new();
        for a in self.dirty.drain() {
            if let Some(r) = self.peers.get(&a) {
                put_peer(&mut b, &a, r);
            }
            if let Some(s) = self.stats.get(&a) {
                put_stats(&mut b, &a, s);
            }
        }
        b
    }

    #[cfg(test)]
    /// Counters for one command of an address (lifetime).
    pub fn command_stats(&self, a: &SocketAddr, c: crate::wire::Command) -> CommandStats {
        self.stats
            .get(a)
            .and_then(|s| s.by_command.iter().find(|(k, _)| *k == c))
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::wire::Command;

    fn stats(ping_in: u64) -> PeerStats {
        let mut s = PeerStats::default();
        for _ in 0..ping_in {
            s.record_in(Command::new("ping").unwrap(), 32);
        }
        s
    }

    #[test]
    fn lifetime_stats_fold_deltas_across_connections() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ping = Command::new("ping").unwrap();
        let mut r = Registry::default();
        r.connected(PeerId(1), a, 1, "/x/", 70016, 100);
        r.snapshot(PeerId(1), a, &stats(3), None);
        r.snapshot(PeerId(1), a, &stats(5), Some(Duration::from_micros(70)));
        r.disconnected(
            PeerId(1),
            a,
            Direction::Outbound,
            true,
            &stats(6),
            None,
            200,
        );
        assert_eq!(r.command_stats(&a, ping).msgs_in, 6);
        r.connected(PeerId(2), a, 1, "/x/", 70016, 300);
        r.disconnected(
            PeerId(2),
            a,
            Direction::Outbound,
            true,
            &stats(4),
            None,
            400,
        );
        assert_eq!(r.command_stats(&a, ping).msgs_in, 10);
        assert_eq!(r.stats(&a).unwrap().totals.connections, 2);
        assert_eq!(r.stats(&a).unwrap().totals.rtt_us, 70);
        let p = r.peer(&a).unwrap();
        assert_eq!(
            (p.first_seen, p.last_seen, p.last_success, p.status),
            (100, 400, 300, PeerStatus::Alive)
        );
        // persisted and loaded back
        let s = MemoryStore::new();
        s.write(&r.take_batch()).unwrap();
        assert!(r.take_batch().is_empty());
        let back = Registry::load(&s).unwrap();
        assert_eq!(back.command_stats(&a, ping).msgs_in, 10);
        assert_eq!(back.peer(&a), r.peer(&a));
    }

    #[test]
    fn failures_make_a_peer_dead() {
        let a: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut r = Registry::default();
        for i in 0..DEAD_AFTER_FAILURES {
            r.disconnected(
                PeerId(i as u64),
                a,
                Direction::Outbound,
                false,
                &PeerStats::default(),
                None,
                10,
            );
        }
        assert_eq!(r.peer(&a).unwrap().status, PeerStatus::Dead);
        r.connected(PeerId(9), a, 0, "", 70016, 20);
        assert_eq!(r.peer(&a).unwrap().status, PeerStatus::Alive);
        assert_eq!(r.peer(&a).unwrap().failures, 0);
    }
}
