//! Parallel block download, pure: which blocks of the best chain to ask which peer for, when a
//! request has timed out, and in what order received blocks are handed on.
//!
//! [`BlockDownload`] does no I/O and reads no clock: the caller passes `now` and the
//! [`HeaderTree`] in, and gets [`DownloadAction`]s back. It keeps:
//!
//! - the height up to which blocks have been handed on (the start value given to
//!   [`BlockDownload::new`], then every [`DownloadAction::Ready`]) and the blocks received or
//!   already stored above it ([`BlockDownload::have`]);
//! - a moving window: only heights in `next_height() .. next_height() + window` are requested, so
//!   the blocks the caller holds waiting for a gap to fill are bounded by the window;
//! - the connected peers that serve blocks, with their best height and score, and at most
//!   `max_in_flight_per_peer` requests in flight each; requests go to the peer with the most free
//!   slots (ties: the higher score, then the lower [`PeerId`]), lowest heights first;
//! - a timeout per request, counted from when it was sent or from the peer's last answer,
//!   whichever is later (a peer steadily delivering big blocks is not stalling): when it passes,
//!   the peer is reported ([`DownloadAction::Stalled`]), gets no new requests until it answers
//!   again, and the block is asked of another peer.
//!
//! Blocks are handed on strictly in height order ([`DownloadAction::Ready`]), however they
//! arrive. A block nobody asked the peer for is reported ([`DownloadAction::Unrequested`]) and
//! not used. Nothing is random: the same calls give the same actions.

use crate::chain::{HashIdMap, HeaderTree};
use crate::fsm::PeerId;
use crate::wire::hash::Hash256;
use crate::wire::types::{InvType, Inventory};
use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[cfg(test)]
mod reference;

/// Default [`DownloadConfig::window`].
pub const DEFAULT_WINDOW: u32 = 1024;
/// Default [`DownloadConfig::max_in_flight_per_peer`].
pub const DEFAULT_MAX_IN_FLIGHT_PER_PEER: usize = 16;
/// Default [`DownloadConfig::block_timeout`].
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits of a [`BlockDownload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Heights requested at most this far above the lowest block not yet handed on (at least 1).
    pub window: u32,
    /// Requests in flight per peer (at least 1).
    pub max_in_flight_per_peer: usize,
    /// A request not answered this long after it was sent, or after the peer's last answer if
    /// later, is given up on and asked of another peer.
    pub block_timeout: Duration,
}

impl Default for DownloadConfig {
    fn default() -> DownloadConfig {
        DownloadConfig {
            window: DEFAULT_WINDOW,
            max_in_flight_per_peer: DEFAULT_MAX_IN_FLIGHT_PER_PEER,
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
        }
    }
}

/// What the caller must do, or what it should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownloadAction {
    /// Send `peer` one `getdata` for these blocks (see [`block_inventory`]), lowest height first.
    Request {
        /// The peer to ask.
        peer: PeerId,
        /// The blocks, at most the free slots of the peer.
        hashes: Vec<Hash256>,
    },
    /// The block at `height` is the next one in chain order: process (connect, validate) it now.
    /// Its bytes came with [`BlockDownload::block_received`] or are in the caller's store
    /// ([`BlockDownload::have`]). Ready events come in strictly increasing height order.
    Ready {
        /// Its height on the best chain.
        height: u32,
        /// Its hash.
        hash: Hash256,
    },
    /// `peer` did not deliver `hash` in time: the request was given up and the block will be
    /// asked of another peer. Score the peer (or disconnect it); it gets no new requests until it
    /// answers again.
    Stalled {
        /// The slow peer.
        peer: PeerId,
        /// The block it did not deliver.
        hash: Hash256,
    },
    /// `peer` sent a block it was not asked for (or is not a known download peer): the block was
    /// not used; drop it and score the peer.
    Unrequested {
        /// The peer.
        peer: PeerId,
        /// The block.
        hash: Hash256,
    },
    /// `peer` sent a block it was asked for but that is no longer needed (it came from another
    /// peer first, or left the best chain): drop it, no fault of the peer.
    Unneeded {
        /// The peer.
        peer: PeerId,
        /// The block.
        hash: Hash256,
    },
    /// A received block that was waiting for a gap to fill left the best chain (a reorg): it
    /// will not be Ready, the caller may drop its bytes.
    Discard {
        /// The height it had.
        height: u32,
        /// Its hash.
        hash: Hash256,
    },
}

/// The inventory of a `getdata` for blocks: one entry of type [`InvType::BLOCK`] per hash.
pub fn block_inventory(hashes: &[Hash256]) -> Vec<Inventory> {
    hashes
        .iter()
        .map(|&hash| Inventory {
            kind: InvType::BLOCK,
            hash,
        })
        .collect()
}

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
pub struct BlockDownload {
    config: DownloadConfig,
    /// The lowest height not yet handed on.
    next_ready: u32,
    /// Blocks received or stored at heights `>= next_ready`, waiting for the gap below to fill.
    received: BTreeMap<u32, Hash256>,
    /// Requests in flight by hash (each hash in flight with one peer at most).
    in_flight: HashIdMap<InFlight>,
    peers: BTreeMap<PeerId, PeerState>,
    // The indexes below make a tick with nothing to do cost O(1) (the simulator ticks every node
    // ten times a virtual second) and spare a tick during a download the scans of every request
    // and every height of the window. Each only ever errs on the side of looking again.
    /// The tip of the best chain against which everything above the handed-on height was last
    /// found on the best chain, with nothing in flight below it; `None` after any change that
    /// could make that untrue (a new entry, the handed-on height moving).
    checked_tip: Option<Hash256>,
    /// Every height from `next_ready` up to here (excluded) is received or has its block in
    /// flight: the search for heights to request starts here. Lowered whenever a height may have
    /// lost its block or request.
    scan_from: u32,
    /// No request in flight times out before this (`None`: none can); lowered whenever a
    /// deadline may have come nearer.
    expiry_floor: Option<Instant>,
    /// No peer refused a height below this (`u32::MAX`: none refused anything).
    refused_floor: u32,
    /// No request in flight or given up (a peer's late entry with its height) is for a height
    /// above this: with nothing received either, nothing can be off the best chain.
    asked_top: u32,
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
            checked_tip: None,
            scan_from: 0,
            expiry_floor: None,
            refused_floor: u32::MAX,
            asked_top: 0,
        }
    }

    #[cfg(test)]
    /// The configuration (with the minimums applied).
    pub fn config(&self) -> &DownloadConfig {
        &self.config
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
    /// headers up to there). The peer now claims a chain through every height up to there:
    /// what it answered `notfound` for at those heights (it may not have had the block yet) is
    /// forgotten, and may be asked of it again.
    pub fn raise_peer_height(&mut self, id: PeerId, height: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.height = p.height.max(height);
            if p.refused
                .first_key_value()
                .is_some_and(|(&h, _)| h <= height)
            {
                p.refused = match height.checked_add(1) {
                    Some(above) => p.refused.split_off(&above),
                    None => BTreeMap::new(),
                };
            }
        }
    }

    #[cfg(test)]
    /// The peer's best height changed (it announced blocks, or its chain reorganised).
    pub fn set_peer_height(&mut self, id: PeerId, height: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.height = height;
        }
    }

    #[cfg(test)]
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
        self.checked_tip = None;
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
        if let Some(&(lowest, _)) = taken.first() {
            self.uncovered(lowest);
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
        self.checked_tip = None;
        self.cancel(&hash);
    }

    /// Advances time against the best chain `chain`: drops what left the best chain
    /// ([`DownloadAction::Discard`]), hands on what is in order ([`DownloadAction::Ready`]),
    /// gives up timed-out requests ([`DownloadAction::Stalled`]) and fills the free slots of the
    /// peers within the window ([`DownloadAction::Request`]), in that order.
    ///
    /// With nothing in flight, nothing new on the best chain and nothing to request it costs
    /// O(1).
    pub fn tick(&mut self, now: Instant, chain: &HeaderTree) -> Vec<DownloadAction> {
        let mut out = Vec::new();
        self.check_chain(chain, &mut out);
        self.drain_ready(&mut out);
        self.expire(now, &mut out);
        let next = self.next_ready;
        if self.refused_floor < next {
            let mut floor = u32::MAX;
            for p in self.peers.values_mut() {
                if p.refused.first_key_value().is_some_and(|(&h, _)| h < next) {
                    p.refused = p.refused.split_off(&next);
                }
                if let Some((&h, _)) = p.refused.first_key_value() {
                    floor = floor.min(h);
                }
            }
            self.refused_floor = floor;
        }

        let top = next
            .saturating_add(self.config.window - 1)
            .min(chain.height());
        if next <= top && self.has_free_slot() {
            self.request_missing(now, chain, top, &mut out);
        }
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
                self.may_expire_from(now);
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
        self.may_expire_from(now);
        self.received.insert(height, hash);
        self.checked_tip = None;
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
                self.refused_floor = self.refused_floor.min(h);
                self.uncovered(h);
                self.may_expire_from(now);
                self.assign(now, [(h, hash)], &mut out);
            }
            _ => {
                if let Some(pos) = p.late.iter().position(|(x, _)| *x == hash) {
                    if let Some((_, Some(h))) = p.late.remove(pos) {
                        p.refused.insert(h, hash);
                        self.refused_floor = self.refused_floor.min(h);
                    }
                    self.may_expire_from(now);
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.last_progress = Some(now);
                        p.stalled = false;
                    }
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

    #[cfg(test)]
    /// The lowest height not yet handed on (the bottom of the window).
    pub fn next_height(&self) -> u32 {
        self.next_ready
    }

    /// The highest height handed on (or stored at the start): every block up to it is done.
    pub fn ready_height(&self) -> u32 {
        self.next_ready - 1
    }

    #[cfg(test)]
    /// Whether every block of `chain` has been handed on.
    pub fn is_complete(&self, chain: &HeaderTree) -> bool {
        self.ready_height() >= chain.height()
    }

    /// Requests in flight, all peers.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    #[cfg(test)]
    /// Requests in flight to `peer`, `None` for an unknown peer.
    pub fn peer_in_flight(&self, peer: PeerId) -> Option<usize> {
        self.peers.get(&peer).map(|p| p.in_flight)
    }

    #[cfg(test)]
    /// Whether `peer` is stalled (a request timed out and it has not answered since).
    pub fn is_stalled(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.stalled)
    }

    #[cfg(test)]
    /// Whether a request for `hash` is in flight, and to whom.
    pub fn in_flight_to(&self, hash: &Hash256) -> Option<PeerId> {
        self.in_flight.get(hash).map(|e| e.peer)
    }

    #[cfg(test)]
    /// Blocks received (or stored) above a gap, waiting to be handed on.
    pub fn buffered_len(&self) -> usize {
        self.received.len()
    }

    #[cfg(test)]
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

    #[cfg(test)]
    /// Download peers known.
    pub fn peers_len(&self) -> usize {
        self.peers.len()
    }

    #[cfg(test)]
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
            self.uncovered(e.height);
            if let Some(p) = self.peers.get_mut(&e.peer) {
                p.in_flight -= 1;
                Self::push_late(p, cap, *hash, Some(e.height));
                self.checked_tip = None;
            }
        }
    }

    /// Height `h` may have lost its request (or its received block): the search for heights to
    /// request starts no higher.
    fn uncovered(&mut self, h: u32) {
        self.scan_from = self.scan_from.min(h);
    }

    /// A request sent, or a peer's answer, at `now`: a request may time out from `now` plus the
    /// timeout on (an answer moves its peer's deadlines, nearer too if `now` is earlier than
    /// its last answer).
    fn may_expire_from(&mut self, now: Instant) {
        if let Some(t) = now.checked_add(self.config.block_timeout) {
            self.expiry_floor = Some(self.expiry_floor.map_or(t, |f| f.min(t)));
        }
    }

    fn has_free_slot(&self) -> bool {
        let max = self.config.max_in_flight_per_peer;
        self.peers.values().any(|p| !p.stalled && p.in_flight < max)
    }

    /// Hands on the received blocks that are next in order.
    fn drain_ready(&mut self, out: &mut Vec<DownloadAction>) {
        // (an emptied map keeps its root node: not touched when there is nothing)
        if self.received.is_empty() {
            return;
        }
        while let Some(hash) = self.received.remove(&self.next_ready) {
            out.push(DownloadAction::Ready {
                height: self.next_ready,
                hash,
            });
            self.next_ready += 1;
            self.checked_tip = None;
        }
    }

    /// Drops whatever above the handed-on height is no longer on the best chain. Nothing to do
    /// when there is nothing above it, or when it was all found on this same best chain (same
    /// tip) and nothing came since.
    fn check_chain(&mut self, chain: &HeaderTree, out: &mut Vec<DownloadAction>) {
        if self.received.is_empty() && self.in_flight.is_empty() && self.asked_top < self.next_ready
        {
            debug_assert!(self.all_on(chain), "nothing to check, yet something off");
            return;
        }
        let tip = chain.tip_point().hash;
        if self.checked_tip == Some(tip) {
            debug_assert!(self.all_on(chain), "checked, yet something off");
            return;
        }
        self.check_chain_all(chain, out);
        self.checked_tip = Some(tip);
    }

    /// Whether a full check would find nothing to do (for debug assertions).
    fn all_on(&self, chain: &HeaderTree) -> bool {
        let next = self.next_ready;
        let on = |h: u32, hash: &Hash256| h < next || chain.hash_at(h) == Some(*hash);
        self.received.iter().all(|(&h, hash)| on(h, hash))
            && self
                .in_flight
                .iter()
                .all(|(hash, e)| e.height >= next && on(e.height, hash))
            && self
                .peers
                .values()
                .all(|p| p.late.iter().all(|(hash, h)| h.is_none_or(|h| on(h, hash))))
    }

    fn check_chain_all(&mut self, chain: &HeaderTree, out: &mut Vec<DownloadAction>) {
        let next = self.next_ready;
        let off = |h: u32, hash: &Hash256| h >= next && chain.hash_at(h) != Some(*hash);
        let mut first_off = self
            .received
            .iter()
            .find(|(&h, hash)| off(h, hash))
            .map(|(&h, _)| h);
        let mut note = |h: u32| first_off = Some(first_off.map_or(h, |f: u32| f.min(h)));
        let mut stale = Vec::new();
        // (what follows only drops entries or their heights: the highest seen stays a bound)
        let mut asked_top = 0;
        for (hash, e) in &self.in_flight {
            asked_top = asked_top.max(e.height);
            if e.height < next {
                stale.push(*hash);
            } else if off(e.height, hash) {
                note(e.height);
            }
        }
        for p in self.peers.values() {
            for (hash, h) in &p.late {
                if let Some(h) = *h {
                    asked_top = asked_top.max(h);
                    if off(h, hash) {
                        note(h);
                    }
                }
            }
        }
        // In flight below the handed-on height: another block was stored at that height.
        self.asked_top = asked_top;
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
        self.uncovered(above);
        self.checked_tip = None;
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

    /// Gives up the requests past their deadline (none before `expiry_floor`).
    fn expire(&mut self, now: Instant, out: &mut Vec<DownloadAction>) {
        if self.in_flight.is_empty() {
            self.expiry_floor = None;
        }
        if self.expiry_floor.is_none_or(|f| now < f) {
            debug_assert!(
                self.in_flight.values().all(|e| now < self.deadline(e)),
                "a request timed out before the floor"
            );
            return;
        }
        let mut expired: Vec<(PeerId, u32, Hash256)> = Vec::new();
        let mut floor: Option<Instant> = None;
        for (h, e) in &self.in_flight {
            let d = self.deadline(e);
            if now >= d {
                expired.push((e.peer, e.height, *h));
            } else {
                floor = Some(floor.map_or(d, |f| f.min(d)));
            }
        }
        self.expiry_floor = floor;
        if expired.is_empty() {
            return;
        }
        expired.sort_unstable();
        self.checked_tip = None;
        if let Some(lowest) = expired.iter().map(|&(_, h, _)| h).min() {
            self.uncovered(lowest);
        }
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
        let mut batches: BTreeMap<PeerId, Vec<Hash256>> = BTreeMap::new();
        for (height, hash) in wanted {
            if self.assign_one(now, height, hash, &mut batches).is_none() {
                break;
            }
        }
        Self::requests(batches, out);
    }

    /// Asks for the heights of the window that are neither received nor in flight, from the
    /// lowest up to `top`, as [`BlockDownload::assign`] does; the search starts at `scan_from`
    /// (everything below is received or in flight) and leaves it at the lowest height still
    /// wanted.
    fn request_missing(
        &mut self,
        now: Instant,
        chain: &HeaderTree,
        top: u32,
        out: &mut Vec<DownloadAction>,
    ) {
        let mut batches: BTreeMap<PeerId, Vec<Hash256>> = BTreeMap::new();
        let mut wanted_from = None;
        debug_assert!(
            (self.next_ready..self.scan_from.min(top.saturating_add(1))).all(|h| {
                self.received.contains_key(&h)
                    || chain
                        .hash_at(h)
                        .is_some_and(|hash| self.in_flight.contains_key(&hash))
            }),
            "a height below the search start is wanted"
        );
        // No free peer has a height above this (`None`: no peer is free): nothing higher can be
        // asked for, as peers only fill up along the way.
        let mut free_top = self.free_top(now);
        for height in self.scan_from.max(self.next_ready)..=top {
            if self.received.contains_key(&height) {
                continue;
            }
            let Some(hash) = chain.hash_at(height) else {
                continue;
            };
            if self.in_flight.contains_key(&hash) {
                continue;
            }
            if free_top.is_none_or(|t| height > t) {
                wanted_from.get_or_insert(height);
                break;
            }
            match self.assign_one(now, height, hash, &mut batches) {
                Some(true) => free_top = self.free_top(now),
                Some(false) => {
                    wanted_from.get_or_insert(height);
                }
                None => {
                    wanted_from.get_or_insert(height);
                    break;
                }
            }
        }
        self.scan_from = wanted_from.unwrap_or(top.saturating_add(1));
        Self::requests(batches, out);
    }

    /// Asks the best free peer for the block `hash` at `height` (see [`BlockDownload::assign`]),
    /// into `batches`: whether one was found, `None` when no peer has a free slot at all.
    fn assign_one(
        &mut self,
        now: Instant,
        height: u32,
        hash: Hash256,
        batches: &mut BTreeMap<PeerId, Vec<Hash256>>,
    ) -> Option<bool> {
        let max = self.config.max_in_flight_per_peer;
        let free = |p: &PeerState| Self::is_free(p, max, now);
        if !self.peers.values().any(free) {
            return None;
        }
        let best = self
            .peers
            .iter_mut()
            .filter(|(_, p)| free(p) && p.height >= height && p.refused.get(&height) != Some(&hash))
            .max_by_key(|(id, p)| (max - p.in_flight, p.score, Reverse(**id)));
        let Some((&peer, p)) = best else {
            return Some(false);
        };
        p.in_flight += 1;
        self.asked_top = self.asked_top.max(height);
        self.in_flight.insert(
            hash,
            InFlight {
                peer,
                height,
                sent: now,
            },
        );
        self.checked_tip = None;
        self.may_expire_from(now);
        batches.entry(peer).or_default().push(hash);
        Some(true)
    }

    /// Whether `p` may be asked for more now.
    fn is_free(p: &PeerState, max: usize, now: Instant) -> bool {
        !p.stalled && p.in_flight < max && p.paused_until.is_none_or(|t| t <= now)
    }

    /// The highest height a peer that may be asked for more has (`None`: none may).
    fn free_top(&self, now: Instant) -> Option<u32> {
        let max = self.config.max_in_flight_per_peer;
        let mut top = None;
        for p in self.peers.values() {
            if Self::is_free(p, max, now) {
                top = Some(top.map_or(p.height, |t: u32| t.max(p.height)));
            }
        }
        top
    }

    /// One Request per peer, peers in id order.
    fn requests(batches: BTreeMap<PeerId, Vec<Hash256>>, out: &mut Vec<DownloadAction>) {
        for (peer, hashes) in batches {
            out.push(DownloadAction::Request { peer, hashes });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Entry;
    use crate::network::Network;
    use crate::wire::block::BlockHeader;
    use std::collections::{HashMap, HashSet};

    fn mine(prev: &Entry, salt: u32) -> BlockHeader {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
            time: prev.header.time + 600,
            bits: 0x207fffff,
            nonce: 0,
        };
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        h
    }

    /// Extends `from` by `n` regtest headers (real proof of work); returns their hashes.
    fn extend(t: &mut HeaderTree, from: Hash256, n: usize, salt: u32) -> Vec<Hash256> {
        let mut cur = *t.get(&from).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let h = mine(&cur, salt.wrapping_mul(100_000).wrapping_add(i as u32));
            let ins = t.insert(h).unwrap();
            cur = *t.get(&ins.hash).unwrap();
            out.push(ins.hash);
        }
        out
    }

    /// A regtest tree of `n` headers above genesis and the best chain by height.
    fn chain(n: usize) -> (HeaderTree, Vec<Hash256>) {
        let mut t = HeaderTree::new(&Network::Regtest.params());
        let g = t.genesis_hash();
        let mut hashes = vec![g];
        hashes.extend(extend(&mut t, g, n, 1));
        assert_eq!(t.height() as usize, n);
        (t, hashes)
    }

    fn cfg(window: u32, max: usize, timeout_ms: u64) -> DownloadConfig {
        DownloadConfig {
            window,
            max_in_flight_per_peer: max,
            block_timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);
    const C: PeerId = PeerId(3);

    fn req(peer: PeerId, hashes: &[Hash256], heights: &[usize]) -> DownloadAction {
        DownloadAction::Request {
            peer,
            hashes: heights.iter().map(|&h| hashes[h]).collect(),
        }
    }

    fn ready(hashes: &[Hash256], heights: impl IntoIterator<Item = usize>) -> Vec<DownloadAction> {
        heights
            .into_iter()
            .map(|h| DownloadAction::Ready {
                height: h as u32,
                hash: hashes[h],
            })
            .collect()
    }

    #[test]
    fn defaults_and_inventory() {
        let c = DownloadConfig::default();
        assert_eq!(c.window, 1024);
        assert_eq!(c.max_in_flight_per_peer, 16);
        assert_eq!(c.block_timeout, Duration::from_secs(60));
        let h = Hash256::sha256d(b"x");
        assert_eq!(
            block_inventory(&[h]),
            vec![Inventory {
                kind: InvType::BLOCK,
                hash: h
            }]
        );
        let d = BlockDownload::new(cfg(0, 0, 1), 0);
        assert_eq!(d.config().window, 1);
        assert_eq!(d.config().max_in_flight_per_peer, 1);
        assert_eq!((d.next_height(), d.ready_height()), (1, 0));
    }

    /// Three peers at different speeds, one delivering its batches backwards: every block is
    /// requested exactly once, never more than 16 in flight per peer, never outside the window,
    /// and the blocks come out Ready in height order.
    #[test]
    fn three_peers_download_5000_blocks() {
        const N: usize = 5000;
        let (tree, hashes) = chain(N);
        let height_of: HashMap<Hash256, usize> =
            hashes.iter().enumerate().map(|(h, x)| (*x, h)).collect();
        let mut d = BlockDownload::new(DownloadConfig::default(), 0);
        for (i, id) in [A, B, C].into_iter().enumerate() {
            d.peer_connected(id, N as u32, 50 + i as u32);
        }
        let t0 = Instant::now();
        let mut now = t0;
        let mut queues: BTreeMap<PeerId, VecDeque<Hash256>> = BTreeMap::new();
        let mut requested = HashSet::new();
        let mut per_peer: BTreeMap<PeerId, usize> = BTreeMap::new();
        let mut readied = 0usize;
        let mut max_buffered = 0;
        let mut handle =
            |d: &BlockDownload,
             actions: Vec<DownloadAction>,
             queues: &mut BTreeMap<PeerId, VecDeque<Hash256>>| {
                for a in actions {
                    match a {
                        DownloadAction::Request { peer, hashes: hs } => {
                            assert!(!hs.is_empty() && hs.len() <= 16);
                            for h in &hs {
                                assert!(requested.insert(*h), "requested twice");
                                let height = height_of[h];
                                assert!(height >= d.next_height() as usize);
                                assert!(height < d.next_height() as usize + 1024, "outside window");
                            }
                            *per_peer.entry(peer).or_default() += hs.len();
                            let q = queues.entry(peer).or_default();
                            q.extend(hs);
                            assert!(q.len() <= 16);
                            assert_eq!(d.peer_in_flight(peer), Some(q.len()));
                        }
                        DownloadAction::Ready { height, hash } => {
                            readied += 1;
                            assert_eq!(height as usize, readied, "Ready out of order");
                            assert_eq!(hash, hashes[readied]);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            };
        let mut steps = 0;
        while !d.is_complete(&tree) {
            steps += 1;
            assert!(steps < 10_000, "no progress");
            let a = d.tick(now, &tree);
            handle(&d, a, &mut queues);
            assert!(d.in_flight_len() <= 48);
            // A delivers 1 block a step, B 3, C 5 from the back of its queue.
            for (peer, rate) in [(A, 1), (B, 3), (C, 5)] {
                for _ in 0..rate {
                    let q = queues.entry(peer).or_default();
                    let next = if peer == C {
                        q.pop_back()
                    } else {
                        q.pop_front()
                    };
                    let Some(h) = next else { break };
                    let a = d.block_received(peer, h, now);
                    handle(&d, a, &mut queues);
                }
            }
            max_buffered = max_buffered.max(d.buffered_len());
            now += ms(10);
        }
        assert_eq!(readied, N);
        assert_eq!(requested.len(), N);
        assert_eq!(d.in_flight_len(), 0);
        assert_eq!(d.buffered_len(), 0);
        assert!(max_buffered <= 1024);
        // Spread by speed: the fastest peer served most, every peer served some.
        assert!(per_peer[&C] > per_peer[&B] && per_peer[&B] > per_peer[&A]);
        assert!(per_peer[&A] > 0);
        assert_eq!(d.next_deadline(), None);
        assert!(d.tick(now, &tree).is_empty());
    }

    #[test]
    fn out_of_order_arrival_is_ready_in_height_order() {
        let (tree, hashes) = chain(20);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 16, 1000), 0);
        d.peer_connected(A, 20, 50);
        let a = d.tick(t0, &tree);
        assert_eq!(a, vec![req(A, &hashes, &(1..=16).collect::<Vec<_>>())]);
        for h in (2..=16).rev() {
            assert!(d.block_received(A, hashes[h], t0).is_empty());
        }
        assert_eq!(d.buffered_len(), 15);
        assert_eq!(d.ready_height(), 0);
        assert_eq!(d.block_received(A, hashes[1], t0), ready(&hashes, 1..=16));
        assert_eq!((d.ready_height(), d.buffered_len()), (16, 0));
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[17, 18, 19, 20])]);
    }

    #[test]
    fn stalled_peer_is_reported_and_its_blocks_asked_elsewhere() {
        let (tree, hashes) = chain(20);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 100), 0);
        d.peer_connected(A, 20, 50);
        d.peer_connected(B, 20, 50);
        // Equal peers alternate: A (lower id) first.
        assert_eq!(
            d.tick(t0, &tree),
            vec![
                req(A, &hashes, &[1, 3, 5, 7]),
                req(B, &hashes, &[2, 4, 6, 8])
            ]
        );
        assert_eq!(d.next_deadline(), Some(t0 + ms(100)));
        for h in [2, 4, 6, 8] {
            assert!(d.block_received(B, hashes[h], t0 + ms(10)).is_empty());
        }
        assert_eq!(
            d.tick(t0 + ms(20), &tree),
            vec![req(B, &hashes, &[9, 10, 11, 12])]
        );
        assert!(d.tick(t0 + ms(99), &tree).is_empty());
        // A's requests time out; B is full, so nothing is re-requested yet.
        let a = d.tick(t0 + ms(100), &tree);
        assert_eq!(
            a,
            [1, 3, 5, 7]
                .iter()
                .map(|&h| DownloadAction::Stalled {
                    peer: A,
                    hash: hashes[h]
                })
                .collect::<Vec<_>>()
        );
        assert!(d.is_stalled(A));
        assert_eq!(d.peer_in_flight(A), Some(0));
        for h in &hashes[9..=12] {
            assert!(d.block_received(B, *h, t0 + ms(110)).is_empty());
        }
        // The stalled peer gets nothing new; its blocks go to B, lowest first.
        assert_eq!(
            d.tick(t0 + ms(120), &tree),
            vec![req(B, &hashes, &[1, 3, 5, 7])]
        );
        assert_eq!(
            d.block_received(B, hashes[1], t0 + ms(130)),
            ready(&hashes, 1..=2)
        );
        // A wakes up and delivers one of its old blocks first: used, and B is let off it.
        assert_eq!(
            d.block_received(A, hashes[3], t0 + ms(140)),
            ready(&hashes, 3..=4)
        );
        assert!(!d.is_stalled(A));
        assert_eq!(d.peer_in_flight(B), Some(2));
        assert_eq!(
            d.block_received(B, hashes[3], t0 + ms(150)),
            vec![DownloadAction::Unneeded {
                peer: B,
                hash: hashes[3]
            }]
        );
        // A is served again.
        assert_eq!(
            d.tick(t0 + ms(150), &tree),
            vec![
                req(A, &hashes, &[13, 14, 15, 17]),
                req(B, &hashes, &[16, 18])
            ]
        );
    }

    #[test]
    fn progress_pushes_the_deadline() {
        let (tree, hashes) = chain(10);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 3, 100), 0);
        d.peer_connected(A, 10, 50);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1, 2, 3])]);
        assert_eq!(
            d.block_received(A, hashes[1], t0 + ms(50)),
            ready(&hashes, [1])
        );
        assert_eq!(d.next_deadline(), Some(t0 + ms(150)));
        // The new request counts from when it was sent.
        assert_eq!(d.tick(t0 + ms(60), &tree), vec![req(A, &hashes, &[4])]);
        assert!(d.tick(t0 + ms(149), &tree).is_empty());
        let a = d.tick(t0 + ms(150), &tree);
        assert_eq!(
            a,
            vec![
                DownloadAction::Stalled {
                    peer: A,
                    hash: hashes[2]
                },
                DownloadAction::Stalled {
                    peer: A,
                    hash: hashes[3]
                }
            ]
        );
        assert_eq!(d.next_deadline(), Some(t0 + ms(160)));
    }

    #[test]
    fn disconnect_returns_in_flight_requests() {
        let (tree, hashes) = chain(20);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 1000), 0);
        d.peer_connected(A, 20, 50);
        d.peer_connected(B, 20, 50);
        assert_eq!(
            d.tick(t0, &tree),
            vec![
                req(A, &hashes, &[1, 3, 5, 7]),
                req(B, &hashes, &[2, 4, 6, 8])
            ]
        );
        for h in [2, 4] {
            assert!(d.block_received(B, hashes[h], t0).is_empty());
        }
        // B has two free slots: the lowest two of A's go there at once.
        assert_eq!(
            d.peer_disconnected(A, t0 + ms(5)),
            vec![req(B, &hashes, &[1, 3])]
        );
        assert_eq!(d.peer_in_flight(A), None);
        assert_eq!(d.peers_len(), 1);
        assert_eq!(d.in_flight_len(), 4);
        assert!(d.peer_disconnected(A, t0 + ms(5)).is_empty());
        // A late block from the gone peer is not used.
        assert_eq!(
            d.block_received(A, hashes[5], t0 + ms(6)),
            vec![DownloadAction::Unrequested {
                peer: A,
                hash: hashes[5]
            }]
        );
        assert_eq!(
            d.block_received(B, hashes[1], t0 + ms(7)),
            ready(&hashes, 1..=2)
        );
        assert_eq!(
            d.block_received(B, hashes[3], t0 + ms(7)),
            ready(&hashes, 3..=4)
        );
        // The rest of A's blocks on the next tick.
        assert_eq!(d.tick(t0 + ms(8), &tree), vec![req(B, &hashes, &[5, 7])]);
    }

    #[test]
    fn unrequested_blocks_are_reported() {
        let (tree, hashes) = chain(5);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 1, 1000), 0);
        d.peer_connected(A, 5, 50);
        d.peer_connected(B, 0, 50); // has nothing to serve
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1])]);
        let unreq = |peer, h| vec![DownloadAction::Unrequested { peer, hash: h }];
        // Asked of A, sent by B.
        assert_eq!(d.block_received(B, hashes[1], t0), unreq(B, hashes[1]));
        // Never asked of anyone.
        assert_eq!(d.block_received(A, hashes[2], t0), unreq(A, hashes[2]));
        let junk = Hash256::sha256d(b"junk");
        assert_eq!(d.block_received(A, junk, t0), unreq(A, junk));
        // Unknown peer.
        assert_eq!(d.block_received(C, hashes[1], t0), unreq(C, hashes[1]));
        assert_eq!(d.in_flight_to(&hashes[1]), Some(A));
        assert_eq!(d.block_received(A, hashes[1], t0), ready(&hashes, [1]));
        // Sent twice.
        assert_eq!(d.block_received(A, hashes[1], t0), unreq(A, hashes[1]));
    }

    #[test]
    fn window_is_respected() {
        let (tree, hashes) = chain(30);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(8, 100, 1000), 0);
        d.peer_connected(A, 30, 50);
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[1, 2, 3, 4, 5, 6, 7, 8])]
        );
        for h in &hashes[2..=8] {
            assert!(d.block_received(A, *h, t0).is_empty());
        }
        // Height 1 holds the window: nothing above 8 is asked for.
        assert!(d.tick(t0, &tree).is_empty());
        assert_eq!(d.buffered_len(), 7);
        assert_eq!(d.block_received(A, hashes[1], t0), ready(&hashes, 1..=8));
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[9, 10, 11, 12, 13, 14, 15, 16])]
        );
        assert_eq!(d.block_received(A, hashes[9], t0), ready(&hashes, [9]));
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[17])]);
    }

    #[test]
    fn peers_get_only_heights_they_have_and_score_breaks_ties() {
        let (tree, hashes) = chain(10);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 3, 1000), 0);
        d.peer_connected(A, 2, 50);
        d.peer_connected(B, 10, 80);
        // B first (higher score), then A (more free slots) while it has the height.
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[2]), req(B, &hashes, &[1, 3, 4])]
        );
        d.set_peer_height(A, 10);
        d.set_peer_score(A, 90);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[5, 6])]);
    }

    #[test]
    fn have_and_start_height() {
        let (tree, hashes) = chain(30);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 1000), 10);
        assert_eq!(d.next_height(), 11);
        d.peer_connected(A, 30, 50);
        d.have(12, hashes[12]);
        d.have(13, hashes[13]);
        d.have(5, hashes[5]); // already done: ignored
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[11, 14, 15, 16])]);
        // Stored meanwhile: the request is given up, a late delivery is not a fault.
        d.have(15, hashes[15]);
        assert_eq!(d.peer_in_flight(A), Some(3));
        assert_eq!(
            d.block_received(A, hashes[15], t0),
            vec![DownloadAction::Unneeded {
                peer: A,
                hash: hashes[15]
            }]
        );
        assert_eq!(d.block_received(A, hashes[11], t0), ready(&hashes, 11..=13));
        assert_eq!(d.block_received(A, hashes[14], t0), ready(&hashes, 14..=15));
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[17, 18, 19])]);
    }

    #[test]
    fn a_refusal_is_forgotten_once_the_peer_announces_past_it() {
        let (tree, hashes) = chain(4);
        let t0 = Instant::now();
        // a window of one block: only height 1 is asked for
        let mut d = BlockDownload::new(cfg(1, 1, 1000), 0);
        d.peer_connected(A, 4, 50);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1])]);
        // A has not got block 1 yet: nobody else to ask.
        assert!(d.not_found(A, hashes[1], t0).is_empty());
        assert!(d.tick(t0, &tree).is_empty());
        // A announcing up to 0 (below the refusal) changes nothing.
        d.raise_peer_height(A, 0);
        assert!(d.tick(t0, &tree).is_empty());
        // A announces a chain through height 1: it is asked again.
        d.raise_peer_height(A, 2);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1])]);
    }

    #[test]
    fn have_makes_a_ready_at_tick() {
        let (tree, hashes) = chain(5);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 1000), 0);
        d.have(1, hashes[1]);
        d.have(2, hashes[2]);
        assert_eq!(d.tick(t0, &tree), ready(&hashes, 1..=2));
    }

    #[test]
    fn not_found_asks_another_peer() {
        let (tree, hashes) = chain(10);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 2, 1000), 0);
        d.peer_connected(A, 10, 50);
        d.peer_connected(B, 10, 50);
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[1, 3]), req(B, &hashes, &[2, 4])]
        );
        // B is full: nobody else to ask now.
        assert!(d.not_found(A, hashes[1], t0).is_empty());
        assert!(d.not_found(A, hashes[1], t0).is_empty());
        assert!(d.block_received(B, hashes[2], t0).is_empty());
        // A is not asked for 1 again; B is.
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[5]), req(B, &hashes, &[1])]
        );
        assert!(d.block_received(B, hashes[4], t0).is_empty());
        assert_eq!(d.not_found(A, hashes[3], t0), vec![req(B, &hashes, &[3])]);
    }

    /// Builds 20 headers, then a heavier branch forking at `fork`; returns the tree and both
    /// branches by height (shared up to `fork`).
    fn forked(fork: usize, len_b: usize) -> (HeaderTree, Vec<Hash256>, Vec<Hash256>) {
        let (mut tree, a) = chain(20);
        let mut b = a[..=fork].to_vec();
        b.extend(extend(&mut tree, a[fork], len_b, 7));
        (tree, a, b)
    }

    #[test]
    fn reorg_drops_state_above_the_fork() {
        let (tree_a, a) = chain(20);
        let (tree_b, _, b) = forked(4, 20);
        assert_eq!(tree_b.hash_at(24), Some(b[24]));
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 8, 1000), 0);
        d.peer_connected(A, 20, 50);
        assert_eq!(
            d.tick(t0, &tree_a),
            vec![req(A, &a, &[1, 2, 3, 4, 5, 6, 7, 8])]
        );
        for h in [1, 2, 3] {
            assert_eq!(d.block_received(A, a[h], t0), ready(&a, [h]));
        }
        assert!(d.block_received(A, a[5], t0).is_empty());
        assert!(d.block_received(A, a[6], t0).is_empty());
        // The best chain now forks after height 4.
        assert_eq!(
            d.reorg(4),
            vec![
                DownloadAction::Discard {
                    height: 5,
                    hash: a[5]
                },
                DownloadAction::Discard {
                    height: 6,
                    hash: a[6]
                }
            ]
        );
        assert_eq!(d.peer_in_flight(A), Some(1)); // height 4, shared by both branches
        assert_eq!(d.in_flight_to(&a[7]), None);
        assert_eq!(d.next_height(), 4);
        d.set_peer_height(A, 24);
        assert_eq!(
            d.tick(t0, &tree_b),
            vec![req(A, &b, &[5, 6, 7, 8, 9, 10, 11])]
        );
        // The old branch's block arrives late: not a fault, not used.
        assert_eq!(
            d.block_received(A, a[7], t0),
            vec![DownloadAction::Unneeded {
                peer: A,
                hash: a[7]
            }]
        );
        assert_eq!(d.block_received(A, b[5], t0), Vec::new());
        assert_eq!(d.block_received(A, a[4], t0), ready(&b, 4..=5));
    }

    #[test]
    fn reorg_below_the_handed_on_height_rewinds() {
        let (tree_a, a) = chain(20);
        let (tree_b, _, b) = forked(2, 30);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 1000), 0);
        d.peer_connected(A, 20, 50);
        assert_eq!(d.tick(t0, &tree_a), vec![req(A, &a, &[1, 2, 3, 4])]);
        for h in 1..=4 {
            assert_eq!(d.block_received(A, a[h], t0), ready(&a, [h]));
        }
        assert!(d.reorg(2).is_empty());
        assert_eq!((d.next_height(), d.ready_height()), (3, 2));
        d.set_peer_height(A, 32);
        assert_eq!(d.tick(t0, &tree_b), vec![req(A, &b, &[3, 4, 5, 6])]);
        assert_eq!(d.block_received(A, b[3], t0), ready(&b, [3]));
    }

    #[test]
    fn tick_drops_what_left_the_best_chain_unannounced() {
        let (tree_a, a) = chain(20);
        let (tree_b, _, b) = forked(4, 20);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 8, 1000), 0);
        d.peer_connected(A, 30, 50);
        assert_eq!(
            d.tick(t0, &tree_a),
            vec![req(A, &a, &[1, 2, 3, 4, 5, 6, 7, 8])]
        );
        assert!(d.block_received(A, a[6], t0).is_empty());
        let out = d.tick(t0, &tree_b);
        assert_eq!(
            out,
            vec![
                DownloadAction::Discard {
                    height: 6,
                    hash: a[6]
                },
                req(A, &b, &[5, 6, 7, 8])
            ]
        );
        assert_eq!(d.block_received(A, a[1], t0), ready(&b, [1]));
    }

    #[test]
    fn a_too_busy_peer_is_left_alone_for_a_while_and_its_blocks_asked_elsewhere() {
        let (tree, hashes) = chain(20);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 4, 60_000), 0);
        d.peer_connected(A, 20, 60);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1, 2, 3, 4])]);
        d.peer_connected(B, 20, 50);
        // A says it is too busy: its four go to B at once
        let until = t0 + ms(5_000);
        assert_eq!(
            d.too_busy(A, t0, until),
            vec![req(B, &hashes, &[1, 2, 3, 4])]
        );
        assert_eq!(d.peer_in_flight(A), Some(0));
        // nothing new for A before `until`
        assert_eq!(d.tick(t0 + ms(1_000), &tree), vec![]);
        // delivering what it was asked before is no fault
        let late = d.block_received(A, hashes[1], t0 + ms(1_500));
        assert!(
            !late
                .iter()
                .any(|a| matches!(a, DownloadAction::Unrequested { .. })),
            "{late:?}"
        );
        // then it is asked again
        let after = d.tick(until, &tree);
        assert!(
            after
                .iter()
                .any(|a| matches!(a, DownloadAction::Request { peer, .. } if *peer == A)),
            "{after:?}"
        );
    }

    #[test]
    fn an_answer_stamped_earlier_brings_deadlines_nearer() {
        let (tree, hashes) = chain(10);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(1024, 3, 100), 0);
        d.peer_connected(A, 10, 50);
        assert_eq!(d.tick(t0, &tree), vec![req(A, &hashes, &[1, 2, 3])]);
        assert_eq!(
            d.block_received(A, hashes[1], t0 + ms(50)),
            ready(&hashes, [1])
        );
        // (A is full again: 4 goes to it, sent at 100)
        assert_eq!(d.tick(t0 + ms(100), &tree), vec![req(A, &hashes, &[4])]);
        assert_eq!(d.next_deadline(), Some(t0 + ms(150)));
        // The caller's clock stepped back: 3 now times out at 120, before the 150 seen so far.
        assert_eq!(
            d.block_received(A, hashes[2], t0 + ms(20)),
            ready(&hashes, [2])
        );
        assert_eq!(d.next_deadline(), Some(t0 + ms(120)));
        assert_eq!(
            d.tick(t0 + ms(130), &tree),
            vec![DownloadAction::Stalled {
                peer: A,
                hash: hashes[3]
            }]
        );
    }

    #[test]
    fn an_idle_tick_finds_every_index_settled() {
        let (tree, hashes) = chain(6);
        let t0 = Instant::now();
        let mut d = BlockDownload::new(cfg(4, 2, 100), 0);
        d.peer_connected(A, 6, 50);
        d.peer_connected(B, 3, 50);
        assert_eq!(
            d.tick(t0, &tree),
            vec![req(A, &hashes, &[1, 3]), req(B, &hashes, &[2])]
        );
        // 4 is wanted, A is full and B does not have it: the search starts there next time
        assert_eq!(d.scan_from, 4);
        assert_eq!(d.expiry_floor, Some(t0 + ms(100)));
        assert!(d.not_found(B, hashes[2], t0 + ms(10)).is_empty());
        assert_eq!((d.scan_from, d.refused_floor), (2, 2));
        for h in [1, 3] {
            d.block_received(A, hashes[h], t0 + ms(20));
        }
        assert_eq!(d.tick(t0 + ms(20), &tree), vec![req(A, &hashes, &[2, 4])]);
        assert_eq!(d.scan_from, 5);
        for h in [2, 4] {
            d.block_received(A, hashes[h], t0 + ms(30));
        }
        assert_eq!(d.tick(t0 + ms(30), &tree), vec![req(A, &hashes, &[5, 6])]);
        for h in [5, 6] {
            d.block_received(A, hashes[h], t0 + ms(40));
        }
        assert!(d.tick(t0 + ms(200), &tree).is_empty());
        assert_eq!(d.ready_height(), 6);
        // all settled: the next tick has nothing to look at, not even the chain's tip
        assert!(d.asked_top < d.next_height() && d.received.is_empty());
        assert_eq!(d.expiry_floor, None);
        assert_eq!(d.refused_floor, u32::MAX);
        assert!(d.tick(t0 + ms(300), &tree).is_empty());
        // a new block on the chain is asked for
        let (tree7, hashes7) = chain(7);
        d.raise_peer_height(A, 7);
        assert_eq!(d.tick(t0 + ms(400), &tree7), vec![req(A, &hashes7, &[7])]);
        assert_eq!((d.checked_tip, d.asked_top, d.scan_from), (None, 7, 8));
        // while it is in flight, the chain is checked once, then not again until its tip moves
        assert!(d.tick(t0 + ms(410), &tree7).is_empty());
        assert_eq!(d.checked_tip, Some(tree7.tip_point().hash));
        assert!(d.tick(t0 + ms(420), &tree7).is_empty());
        let (tree8, hashes8) = chain(8);
        d.raise_peer_height(A, 8);
        assert_eq!(d.tick(t0 + ms(430), &tree8), vec![req(A, &hashes8, &[8])]);
        assert_eq!(
            d.block_received(A, hashes8[7], t0 + ms(440)),
            ready(&hashes8, [7])
        );
        assert_eq!(
            d.block_received(A, hashes8[8], t0 + ms(440)),
            ready(&hashes8, [8])
        );
    }

    /// One call of the differential test.
    #[derive(Clone, Debug)]
    enum Op {
        Connect(u64, u32, u32),
        Disconnect(u64),
        Raise(u64, u32),
        SetHeight(u64, u32),
        SetScore(u64, u32),
        /// Against tree `.0`, `.1` ms later.
        Tick(usize, u64),
        /// A block from a peer: one it was asked for (`.2`) or any known one, `.1` picks it.
        Receive(u64, usize, bool),
        NotFound(u64, usize, bool),
        TooBusy(u64, u64),
        /// The block at height `.0` of tree `.1`.
        Have(u32, usize),
        Reorg(u32),
        Wait(u64),
        /// The caller's clock goes back (never before the start).
        Back(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let peer = 1u64..5;
        prop_oneof![
            1 => (peer.clone(), 0u32..40, 0u32..100).prop_map(|(p, h, s)| Op::Connect(p, h, s)),
            1 => peer.clone().prop_map(Op::Disconnect),
            1 => (peer.clone(), 0u32..40).prop_map(|(p, h)| Op::Raise(p, h)),
            1 => (peer.clone(), 0u32..40).prop_map(|(p, h)| Op::SetHeight(p, h)),
            1 => (peer.clone(), 0u32..100).prop_map(|(p, s)| Op::SetScore(p, s)),
            6 => (0usize..3, 0u64..120).prop_map(|(t, d)| Op::Tick(t, d)),
            8 => (peer.clone(), any::<usize>(), any::<bool>())
                .prop_map(|(p, i, a)| Op::Receive(p, i, a)),
            2 => (peer.clone(), any::<usize>(), any::<bool>())
                .prop_map(|(p, i, a)| Op::NotFound(p, i, a)),
            1 => (peer, 0u64..300).prop_map(|(p, d)| Op::TooBusy(p, d)),
            1 => (0u32..40, 0usize..3).prop_map(|(h, t)| Op::Have(h, t)),
            1 => (0u32..36).prop_map(Op::Reorg),
            1 => (0u64..200).prop_map(Op::Wait),
            1 => (0u64..200).prop_map(Op::Back),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The scheduler with its indexes does exactly what the plain one (`reference`, which
        /// scans every request, peer and height on each tick) does, call for call: the same
        /// actions in the same order and the same state seen from outside.
        #[test]
        fn same_actions_as_the_reference(
            window in 1u32..12,
            max in 1usize..5,
            timeout in 50u64..400,
            start in 0u32..4,
            ops in proptest::collection::vec(op(), 1..250),
        ) {
            // three best chains: a short one, its extension, and a heavier fork off it
            let (short, _) = chain(12);
            let (long, main) = chain(30);
            let (mut forked, _) = chain(30);
            let side = extend(&mut forked, main[8], 26, 7);
            let trees = [short, long, forked];
            let mut known: Vec<Hash256> = main.clone();
            known.extend(&side);
            known.push(Hash256::sha256d(b"unknown"));
            let config = cfg(window, max, timeout);
            let mut d = BlockDownload::new(config.clone(), start);
            let mut r = reference::BlockDownload::new(config, start);
            let t0 = Instant::now();
            let mut now = t0;
            // what each peer was asked for, to deliver it (or not) later
            let mut asked: BTreeMap<PeerId, Vec<Hash256>> = BTreeMap::new();
            let pick = |peer: PeerId, i: usize, asked_of: bool, asked: &BTreeMap<PeerId, Vec<Hash256>>| {
                match asked.get(&peer).filter(|v| asked_of && !v.is_empty()) {
                    Some(v) => v[i % v.len()],
                    None => known[i % known.len()],
                }
            };
            for (step, op) in ops.into_iter().enumerate() {
                let (a, b) = match op {
                    Op::Connect(p, h, s) => {
                        d.peer_connected(PeerId(p), h, s);
                        r.peer_connected(PeerId(p), h, s);
                        (vec![], vec![])
                    }
                    Op::Disconnect(p) => {
                        (d.peer_disconnected(PeerId(p), now), r.peer_disconnected(PeerId(p), now))
                    }
                    Op::Raise(p, h) => {
                        d.raise_peer_height(PeerId(p), h);
                        r.raise_peer_height(PeerId(p), h);
                        (vec![], vec![])
                    }
                    Op::SetHeight(p, h) => {
                        d.set_peer_height(PeerId(p), h);
                        r.set_peer_height(PeerId(p), h);
                        (vec![], vec![])
                    }
                    Op::SetScore(p, s) => {
                        d.set_peer_score(PeerId(p), s);
                        r.set_peer_score(PeerId(p), s);
                        (vec![], vec![])
                    }
                    Op::Tick(t, dt) => {
                        now += ms(dt);
                        (d.tick(now, &trees[t]), r.tick(now, &trees[t]))
                    }
                    Op::Receive(p, i, a) => {
                        let h = pick(PeerId(p), i, a, &asked);
                        (d.block_received(PeerId(p), h, now), r.block_received(PeerId(p), h, now))
                    }
                    Op::NotFound(p, i, a) => {
                        let h = pick(PeerId(p), i, a, &asked);
                        (d.not_found(PeerId(p), h, now), r.not_found(PeerId(p), h, now))
                    }
                    Op::TooBusy(p, dt) => {
                        let until = now + ms(dt);
                        (d.too_busy(PeerId(p), now, until), r.too_busy(PeerId(p), now, until))
                    }
                    Op::Have(h, t) => {
                        if let Some(hash) = trees[t].hash_at(h) {
                            d.have(h, hash);
                            r.have(h, hash);
                        }
                        (vec![], vec![])
                    }
                    Op::Reorg(f) => (d.reorg(f), r.reorg(f)),
                    Op::Wait(dt) => {
                        now += ms(dt);
                        (vec![], vec![])
                    }
                    Op::Back(dt) => {
                        now = now.checked_sub(ms(dt)).map_or(t0, |t| t.max(t0));
                        (vec![], vec![])
                    }
                };
                proptest::prop_assert_eq!(&a, &b, "step {}", step);
                for x in &a {
                    if let DownloadAction::Request { peer, hashes } = x {
                        asked.entry(*peer).or_default().extend(hashes);
                    }
                }
                proptest::prop_assert_eq!(d.state(), r.state());
                proptest::prop_assert_eq!(d.next_height(), r.next_height());
                proptest::prop_assert_eq!(d.ready_height(), r.ready_height());
                proptest::prop_assert_eq!(d.in_flight_len(), r.in_flight_len());
                proptest::prop_assert_eq!(d.buffered_len(), r.buffered_len());
                proptest::prop_assert_eq!(d.peers_len(), r.peers_len());
                proptest::prop_assert_eq!(d.next_deadline(), r.next_deadline());
                for p in 1..5 {
                    let p = PeerId(p);
                    proptest::prop_assert_eq!(d.peer_in_flight(p), r.peer_in_flight(p));
                    proptest::prop_assert_eq!(d.is_stalled(p), r.is_stalled(p));
                }
                for h in &known {
                    proptest::prop_assert_eq!(d.in_flight_to(h), r.in_flight_to(h));
                }
            }
        }
    }
}
