//! The scheduler as it was before its indexes (its `tick` scanned every request, peer and height
//! in the window each time), kept for tests only: the differential test in `super::tests` checks
//! that the indexed scheduler gives the same actions as this one for the same calls.

use super::{DownloadAction, DownloadConfig};
use crate::chain::{HashIdMap, HeaderTree};
use crate::fsm::PeerId;
use crate::wire::hash::Hash256;
use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// One request in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    peer: PeerId,
    height: u32,
    sent: Instant,
}

/// A download peer.
#[derive(Clone, Debug)]
struct PeerState {
    /// Its best height: it is asked for nothing above.
    height: u32,
    /// Its score: higher is preferred on equal free slots.
    score: u32,
    /// Requests in flight.
    in_flight: usize,
    /// When it last delivered a block it was asked for (or answered `notfound`).
    last_progress: Option<Instant>,
    /// A request to it timed out and it has not answered since: no new requests.
    stalled: bool,
    /// It said it is too busy (`reject` TOOBUSY): no new requests before this.
    paused_until: Option<Instant>,
    /// Blocks it was asked for that no longer count as in flight (timed out, delivered by
    /// another peer, dropped by a reorg): delivering them is no fault. The height is kept while
    /// the block may still be used. Oldest first, bounded.
    late: VecDeque<(Hash256, Option<u32>)>,
    /// Blocks it answered `notfound` for, by height: not asked of it again.
    refused: BTreeMap<u32, Hash256>,
}

/// The parallel block download scheduler. See the [module documentation](self).
#[derive(Clone, Debug)]
pub(super) struct BlockDownload {
    config: DownloadConfig,
    /// The lowest height not yet handed on.
    next_ready: u32,
    /// Blocks received or stored at heights `>= next_ready`, waiting for the gap below to fill.
    received: BTreeMap<u32, Hash256>,
    /// Requests in flight by hash (each hash in flight with one peer at most).
    in_flight: HashIdMap<InFlight>,
    peers: BTreeMap<PeerId, PeerState>,
}

impl BlockDownload {
    /// A scheduler for which the blocks of heights `0..=stored_up_to` are already stored and
    /// processed (0 when only genesis is): downloading starts at `stored_up_to + 1`.
    pub fn new(config: DownloadConfig, stored_up_to: u32) -> BlockDownload {
        let config = DownloadConfig {
            window: config.window.max(1),
            max_in_flight_per_peer: config.max_in_flight_per_peer.max(1),
            block_timeout: config.block_timeout,
        };
        BlockDownload {
            config,
            next_ready: stored_up_to.saturating_add(1),
            received: BTreeMap::new(),
            in_flight: HashIdMap::default(),
            peers: BTreeMap::new(),
        }
    }

    /// A peer that serves blocks, with its best height and score (0-100, higher preferred).
    /// For a peer already known, updates its height and score.
    pub fn peer_connected(&mut self, id: PeerId, start_height: u32, score: u32) {
        let p = self.peers.entry(id).or_insert_with(|| PeerState {
            height: start_height,
            score,
            in_flight: 0,
            last_progress: None,
            stalled: false,
            paused_until: None,
            late: VecDeque::new(),
            refused: BTreeMap::new(),
        });
        p.height = start_height;
        p.score = score;
    }

    /// Raises a peer's best height to `height` if it is higher (the peer announced or sent
    /// headers up to there).
    pub fn raise_peer_height(&mut self, id: PeerId, height: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.height = p.height.max(height);
            p.refused.retain(|&h, _| h > height);
        }
    }

    /// The peer's best height changed (it announced blocks, or its chain reorganised).
    pub fn set_peer_height(&mut self, id: PeerId, height: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.height = height;
        }
    }

    /// The peer's score changed.
    pub fn set_peer_score(&mut self, id: PeerId, score: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.score = score;
        }
    }

    /// The peer answered a request with `reject` TOOBUSY (0x44): as the SV node does, it gets no
    /// requests until `until`, and what it was asked for is asked of other peers at once (as far
    /// as they have free slots; delivering it later is no fault). Returns those requests.
    pub fn too_busy(&mut self, id: PeerId, now: Instant, until: Instant) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        let cap = self.late_cap();
        let Some(p) = self.peers.get_mut(&id) else {
            return out;
        };
        p.paused_until = Some(until);
        let released = self.take_in_flight_of(id);
        if let Some(p) = self.peers.get_mut(&id) {
            p.in_flight = 0;
            for (height, hash) in &released {
                Self::push_late(p, cap, *hash, Some(*height));
            }
        }
        self.assign(now, released, &mut out);
        out
    }

    /// Removes `id`'s requests in flight; returns them by ascending height.
    fn take_in_flight_of(&mut self, id: PeerId) -> Vec<(u32, Hash256)> {
        let mut taken: Vec<(u32, Hash256)> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.peer == id)
            .map(|(h, e)| (e.height, *h))
            .collect();
        taken.sort_unstable();
        for (_, hash) in &taken {
            self.in_flight.remove(hash);
        }
        taken
    }

    /// The peer is gone: its requests in flight are asked of other peers at once, as far as they
    /// have free slots (the rest on a later [`BlockDownload::tick`]). Returns those requests.
    pub fn peer_disconnected(&mut self, id: PeerId, now: Instant) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        if self.peers.remove(&id).is_none() {
            return out;
        }
        let released = self.take_in_flight_of(id);
        self.assign(now, released, &mut out);
        out
    }

    /// The caller already has the block `hash` at best-chain `height` (stored by an earlier run,
    /// or received outside this scheduler): it is not requested, and is made Ready in its turn.
    /// A request in flight for it is given up. Heights already handed on are ignored. Unlike
    /// downloaded blocks, these may lie above the window (they cost the caller no memory).
    pub fn have(&mut self, height: u32, hash: Hash256) {
        if height < self.next_ready {
            return;
        }
        self.received.insert(height, hash);
        self.cancel(&hash);
    }

    /// Advances time against the best chain `chain`: drops what left the best chain
    /// ([`DownloadAction::Discard`]), hands on what is in order ([`DownloadAction::Ready`]),
    /// gives up timed-out requests ([`DownloadAction::Stalled`]) and fills the free slots of the
    /// peers within the window ([`DownloadAction::Request`]), in that order.
    pub fn tick(&mut self, now: Instant, chain: &HeaderTree) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        self.check_chain(chain, &mut out);
        self.drain_ready(&mut out);
        self.expire(now, &mut out);
        let next = self.next_ready;
        for p in self.peers.values_mut() {
            if p.refused.first_key_value().is_some_and(|(&h, _)| h < next) {
                p.refused = p.refused.split_off(&next);
            }
        }

        let top = next
            .saturating_add(self.config.window - 1)
            .min(chain.height());
        let received = &self.received;
        let in_flight = &self.in_flight;
        let wanted: Vec<(u32, Hash256)> = if next > top || !self.has_free_slot() {
            Vec::new()
        } else {
            (next..=top)
                .filter(|h| !received.contains_key(h))
                .filter_map(|h| chain.hash_at(h).map(|hash| (h, hash)))
                .filter(|(_, hash)| !in_flight.contains_key(hash))
                .collect()
        };
        self.assign(now, wanted, &mut out);
        out
    }

    /// `peer` sent the block `hash`. Returns the blocks now in order ([`DownloadAction::Ready`],
    /// this one included when the gap below it is filled), or why the block is not used
    /// ([`DownloadAction::Unrequested`], [`DownloadAction::Unneeded`]). With neither, the block
    /// waits: the caller keeps it until its Ready (or its [`DownloadAction::Discard`]).
    ///
    /// The freed slot is filled on the next [`BlockDownload::tick`] (call it after a batch of
    /// received blocks).
    pub fn block_received(
        &mut self,
        peer: PeerId,
        hash: Hash256,
        now: Instant,
    ) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        let Some(p) = self.peers.get_mut(&peer) else {
            out.push(DownloadAction::Unrequested { peer, hash });
            return out;
        };
        let height = match self.in_flight.get(&hash) {
            Some(e) if e.peer == peer => {
                let h = e.height;
                self.in_flight.remove(&hash);
                p.in_flight -= 1;
                h
            }
            _ => {
                let Some(pos) = p.late.iter().position(|(x, _)| *x == hash) else {
                    out.push(DownloadAction::Unrequested { peer, hash });
                    return out;
                };
                let (_, h) = p.late.remove(pos).expect("position found");
                p.last_progress = Some(now);
                p.stalled = false;
                match h {
                    Some(h) if h >= self.next_ready && !self.received.contains_key(&h) => {
                        // First to arrive: another peer asked later is let off.
                        self.cancel(&hash);
                        h
                    }
                    _ => {
                        out.push(DownloadAction::Unneeded { peer, hash });
                        return out;
                    }
                }
            }
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_progress = Some(now);
            p.stalled = false;
        }
        self.received.insert(height, hash);
        self.drain_ready(&mut out);
        out
    }

    /// `peer` answered `notfound` for `hash`: the block is not asked of it again and is asked of
    /// another peer at once if one has a free slot (otherwise on a later tick). Returns that
    /// request. A `notfound` for something not asked of the peer is ignored.
    pub fn not_found(&mut self, peer: PeerId, hash: Hash256, now: Instant) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        let Some(p) = self.peers.get_mut(&peer) else {
            return out;
        };
        match self.in_flight.get(&hash) {
            Some(e) if e.peer == peer => {
                let h = e.height;
                self.in_flight.remove(&hash);
                p.in_flight -= 1;
                p.refused.insert(h, hash);
                p.last_progress = Some(now);
                p.stalled = false;
                self.assign(now, [(h, hash)], &mut out);
            }
            _ => {
                if let Some(pos) = p.late.iter().position(|(x, _)| *x == hash) {
                    if let Some((_, Some(h))) = p.late.remove(pos) {
                        p.refused.insert(h, hash);
                    }
                    p.last_progress = Some(now);
                    p.stalled = false;
                }
            }
        }
        out
    }

    /// The best chain reorganised: everything above `fork_height` (the last height both branches
    /// share) is dropped: requests in flight (a late delivery is [`DownloadAction::Unneeded`])
    /// and received blocks not yet handed on ([`DownloadAction::Discard`], returned). When blocks
    /// above the fork were already handed on, downloading starts again at `fork_height + 1` (the
    /// caller disconnects those blocks itself, and may tell [`BlockDownload::have`] about blocks
    /// of the new branch it already stores).
    ///
    /// [`BlockDownload::tick`] also drops by itself whatever it finds off the best chain above
    /// the handed-on height, but only this call can rewind below it.
    pub fn reorg(&mut self, fork_height: u32) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        self.drop_above(fork_height, &mut out);
        out
    }

    /// The lowest height not yet handed on (the bottom of the window).
    pub fn next_height(&self) -> u32 {
        self.next_ready
    }

    /// The highest height handed on (or stored at the start): every block up to it is done.
    pub fn ready_height(&self) -> u32 {
        self.next_ready - 1
    }

    /// Requests in flight, all peers.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests in flight to `peer`, `None` for an unknown peer.
    pub fn peer_in_flight(&self, peer: PeerId) -> Option<usize> {
        self.peers.get(&peer).map(|p| p.in_flight)
    }

    /// Whether `peer` is stalled (a request timed out and it has not answered since).
    pub fn is_stalled(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.stalled)
    }

    /// Whether a request for `hash` is in flight, and to whom.
    pub fn in_flight_to(&self, hash: &Hash256) -> Option<PeerId> {
        self.in_flight.get(hash).map(|e| e.peer)
    }

    /// Blocks received (or stored) above a gap, waiting to be handed on.
    pub fn buffered_len(&self) -> usize {
        self.received.len()
    }

    /// Everything the scheduler knows, in a form two schedulers can be compared by.
    pub fn state(&self) -> String {
        let mut in_flight: Vec<_> = self
            .in_flight
            .iter()
            .map(|(h, e)| (e.height, *h, e.peer, e.sent))
            .collect();
        in_flight.sort_unstable();
        format!(
            "{} {:?} {:?} {:?}",
            self.next_ready, self.received, in_flight, self.peers
        )
    }

    /// Download peers known.
    pub fn peers_len(&self) -> usize {
        self.peers.len()
    }

    /// The earliest time a request times out: when the next [`BlockDownload::tick`] has a stall
    /// to report. `None` with nothing in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().map(|e| self.deadline(e)).min()
    }

    fn deadline(&self, e: &InFlight) -> Instant {
        let progress = self
            .peers
            .get(&e.peer)
            .and_then(|p| p.last_progress)
            .map_or(e.sent, |t| t.max(e.sent));
        progress + self.config.block_timeout
    }

    /// How many late entries a peer keeps.
    fn late_cap(&self) -> usize {
        self.config.max_in_flight_per_peer.saturating_mul(4).max(64)
    }

    fn push_late(p: &mut PeerState, cap: usize, hash: Hash256, height: Option<u32>) {
        if let Some(e) = p.late.iter_mut().find(|(x, _)| *x == hash) {
            e.1 = height;
            return;
        }
        if p.late.len() >= cap {
            p.late.pop_front();
        }
        p.late.push_back((hash, height));
    }

    /// Gives up the request for `hash`, if any: it stays acceptable from that peer while needed.
    fn cancel(&mut self, hash: &Hash256) {
        let cap = self.late_cap();
        if let Some(e) = self.in_flight.remove(hash) {
            if let Some(p) = self.peers.get_mut(&e.peer) {
                p.in_flight -= 1;
                Self::push_late(p, cap, *hash, Some(e.height));
            }
        }
    }

    fn has_free_slot(&self) -> bool {
        let max = self.config.max_in_flight_per_peer;
        self.peers.values().any(|p| !p.stalled && p.in_flight < max)
    }

    /// Hands on the received blocks that are next in order.
    fn drain_ready(&mut self, out: &mut Vec<DownloadAction>) {
        while let Some(hash) = self.received.remove(&self.next_ready) {
            out.push(DownloadAction::Ready {
                height: self.next_ready,
                hash,
            });
            self.next_ready += 1;
        }
    }

    /// Drops whatever above the handed-on height is no longer on the best chain.
    fn check_chain(&mut self, chain: &HeaderTree, out: &mut Vec<DownloadAction>) {
        let next = self.next_ready;
        let off = |h: u32, hash: &Hash256| h >= next && chain.hash_at(h) != Some(*hash);
        let mut first_off = self
            .received
            .iter()
            .find(|(&h, hash)| off(h, hash))
            .map(|(&h, _)| h);
        let mut note = |h: u32| first_off = Some(first_off.map_or(h, |f: u32| f.min(h)));
        let mut stale = Vec::new();
        for (hash, e) in &self.in_flight {
            if e.height < next {
                stale.push(*hash);
            } else if off(e.height, hash) {
                note(e.height);
            }
        }
        for p in self.peers.values() {
            for (hash, h) in &p.late {
                if let Some(h) = *h {
                    if off(h, hash) {
                        note(h);
                    }
                }
            }
        }
        // In flight below the handed-on height: another block was stored at that height.
        stale.sort_unstable();
        for hash in &stale {
            self.cancel(hash);
        }
        if let Some(h) = first_off {
            self.drop_above(h - 1, out);
        }
    }

    fn drop_above(&mut self, fork_height: u32, out: &mut Vec<DownloadAction>) {
        let above = fork_height.saturating_add(1);
        let mut dropped: Vec<(u32, Hash256, PeerId)> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.height > fork_height)
            .map(|(h, e)| (e.height, *h, e.peer))
            .collect();
        dropped.sort_unstable();
        let cap = self.late_cap();
        for (_, hash, peer) in dropped {
            self.in_flight.remove(&hash);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.in_flight -= 1;
                Self::push_late(p, cap, hash, None);
            }
        }
        for (height, hash) in self.received.split_off(&above) {
            out.push(DownloadAction::Discard { height, hash });
        }
        for p in self.peers.values_mut() {
            for e in p.late.iter_mut() {
                if e.1.is_some_and(|h| h > fork_height) {
                    e.1 = None;
                }
            }
            p.refused.split_off(&above);
        }
        self.next_ready = self.next_ready.min(above);
    }

    /// Gives up the requests past their deadline.
    fn expire(&mut self, now: Instant, out: &mut Vec<DownloadAction>) {
        let mut expired: Vec<(PeerId, u32, Hash256)> = self
            .in_flight
            .iter()
            .filter(|(_, e)| now >= self.deadline(e))
            .map(|(h, e)| (e.peer, e.height, *h))
            .collect();
        expired.sort_unstable();
        let cap = self.late_cap();
        for (peer, height, hash) in expired {
            self.in_flight.remove(&hash);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.in_flight -= 1;
                p.stalled = true;
                Self::push_late(p, cap, hash, Some(height));
            }
            out.push(DownloadAction::Stalled { peer, hash });
        }
    }

    /// Asks for `wanted` (ascending heights, none in flight): each to the peer with the most
    /// free slots that has the height, is not stalled and did not refuse it (ties: higher score,
    /// then lower id). One Request per peer, peers in id order.
    fn assign(
        &mut self,
        now: Instant,
        wanted: impl IntoIterator<Item = (u32, Hash256)>,
        out: &mut Vec<DownloadAction>,
    ) {
        let max = self.config.max_in_flight_per_peer;
        let mut batches: BTreeMap<PeerId, Vec<Hash256>> = BTreeMap::new();
        for (height, hash) in wanted {
            let free = |p: &PeerState| {
                !p.stalled && p.in_flight < max && p.paused_until.is_none_or(|t| t <= now)
            };
            if !self.peers.values().any(free) {
                break;
            }
            let best = self
                .peers
                .iter_mut()
                .filter(|(_, p)| {
                    free(p) && p.height >= height && p.refused.get(&height) != Some(&hash)
                })
                .max_by_key(|(id, p)| (max - p.in_flight, p.score, Reverse(**id)));
            let Some((&peer, p)) = best else {
                continue;
            };
            p.in_flight += 1;
            self.in_flight.insert(
                hash,
                InFlight {
                    peer,
                    height,
                    sent: now,
                },
            );
            batches.entry(peer).or_default().push(hash);
        }
        for (peer, hashes) in batches {
            out.push(DownloadAction::Request { peer, hashes });
        }
    }
}
