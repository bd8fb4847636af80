//! Header-first sync, pure: which peer to ask for headers, when to ask again, when a peer stalled
//! or lied, and when we are caught up. No tree of its own, no clock, no randomness: the caller
//! owns the [`HeaderTree`], inserts what peers send, passes the tree (and `now`) in, and carries
//! out the returned [`SyncAction`]s.
//!
//! ## Policy
//!
//! - **One sync peer at a time**, with one `getheaders` in flight, and one more sent ahead
//!   while a full batch is being validated ([`HeaderSync::headers_arriving`]). The sync peer is the best
//!   candidate: a connected peer that claims a start height above our tip (and serves the chain:
//!   [`NODE_NETWORK`], or any peer with [`SyncConfig::headers_only`]), highest start height first,
//!   then the highest score, then the lowest id; peers that stalled before come after those that
//!   never did. A peer that announced a block we do not know (or sent headers that do not
//!   connect, or an unrequested full batch) is a candidate too, whatever its services.
//! - Every request is `getheaders` with the tree's [`locator`](HeaderTree::locator) and a zero
//!   stop hash. When the peer's previous full batch ended on a branch that is not (yet) our best
//!   chain, that batch's last hash goes first in the locator so the peer carries on from there
//!   instead of resending the same batch.
//! - A batch of [`HEADERS_BATCH`] (2,000) means "there is more": the same peer is asked again at
//!   once. A shorter batch means the peer has no more: the next candidate (a peer claiming to be
//!   higher than the new tip) is asked, and when there is none the sync is done
//!   ([`SyncAction::SyncDone`]).
//! - **Stalls**: no answer within [`SyncConfig::stall_timeout`] (checked by [`HeaderSync::tick`])
//!   makes another candidate the sync peer. The staller stays connected after its first stall
//!   (and is tried again when no one better is left); at [`SyncConfig::max_stalls`] stalls it is
//!   reported with [`SyncAction::Disconnect`] and never asked again.
//! - **Invalid headers** (proof of work not met, bits above the limit, a batch that does not
//!   chain): [`SyncAction::Misbehaved`] for the sender (the caller scores it), which is never
//!   asked again; if it was the sync peer another candidate carries on from the tree's tip (the
//!   headers before the bad one stayed in the tree).
//! - **Orphans** (a `headers` message whose first header's parent is unknown, typically a new
//!   block announced while we are behind): the sender is asked with a locator, at once when
//!   nothing is in flight, after the current sync round otherwise (from the sync peer itself,
//!   the request in flight covers it, and it is asked once more if that answer is short).
//!   [`SyncConfig::max_unconnecting`] of them in a row without a connecting batch in between is
//!   misbehaviour.
//!
//! ## Driving it
//!
//! ```text
//! handshake done          -> peer_connected(id, version.start_height, version.services, score, &tree, now)
//! connection gone         -> peer_disconnected(id, &tree, now)
//! `headers` received      -> headers_arriving(id, &headers, &tree, now)  // optional: pipelining
//!                            let r = tree.insert_many(&headers);   // store r's new records
//!                            headers_received(id, &headers, r.map(|_| ()), &tree, now)
//! `inv` of unknown block  -> header_announced(id, hash, &tree, now)
//! first header's parent unknown, checked before inserting (optional: an `Orphan` error at
//!   index 0 passed to headers_received does the same; call only one of the two)
//!                         -> orphan_received(id, &tree, now)
//! timer (next_deadline)   -> tick(now, &tree)
//! ```
//!
//! and for every returned action: `SendGetHeaders` → send [`Message::GetHeaders`] (see
//! [`SyncAction::to_message`]); `Misbehaved` → add the ban score; `Disconnect` → close the
//! connection (then call `peer_disconnected`); `SyncDone` → the header chain is caught up.

use super::bans::BanReason;
use crate::chain::{HeaderError, HeaderTree};
use crate::fsm::PeerId;
use crate::wire::block::BlockHeader;
use crate::wire::hash::Hash256;
use crate::wire::message::{Locator, Message, MAX_HEADERS};
use crate::wire::types::NODE_NETWORK;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Headers in a full `headers` message: a batch this long means the peer has more.
pub const HEADERS_BATCH: usize = MAX_HEADERS as usize;

/// Default time a sync peer has to answer `getheaders`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sync settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Time the sync peer has to answer a `getheaders` before another peer is asked.
    pub stall_timeout: Duration,
    /// Sync from any peer, not only those that announce [`NODE_NETWORK`] (headers are served by
    /// pruned and headers-only nodes too).
    pub headers_only: bool,
    /// Stalls after which the peer is reported for disconnection (at least 1).
    pub max_stalls: u32,
    /// `headers` messages in a row that do not connect after which the sender misbehaved
    /// (at least 1).
    pub max_unconnecting: u32,
    /// Wait for the answer to a request the peer may have nothing for (its known height is not
    /// above our tip: the batch before ended exactly at its tip). Some nodes (bcoin) send no
    /// empty `headers`; their silence past this (or the stall timeout, if shorter) ends their
    /// round without a stall.
    pub probe_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            headers_only: false,
            max_stalls: 2,
            max_unconnecting: 10,
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the sync asks for a disconnection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncDisconnect {
    /// The peer left `getheaders` unanswered past the stall timeout this many times.
    Stalled {
        /// Stalls so far.
        stalls: u32,
    },
}

impl fmt::Display for SyncDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncDisconnect::Stalled { stalls } => {
                write!(f, "header sync stalled ({stalls} getheaders unanswered)")
            }
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Send `getheaders` to `peer`.
    SendGetHeaders {
        /// To whom.
        peer: PeerId,
        /// Block locator, newest first, ending with genesis.
        locator: Vec<Hash256>,
        /// Stop hash (zero: as many as allowed).
        stop: Hash256,
    },
    /// The peer sent invalid headers: add ban score for `reason`.
    Misbehaved {
        /// Who.
        peer: PeerId,
        /// The ban-score reason.
        reason: BanReason,
        /// What was wrong, for logs.
        detail: String,
    },
    /// Close the connection to the peer.
    Disconnect {
        /// Who.
        peer: PeerId,
        /// Why.
        reason: SyncDisconnect,
    },
    /// The sync peer had no more headers and no connected peer is known to be higher: the header
    /// chain is caught up at `height` (reported at the end of each sync round, so again after a
    /// round started by an announcement).
    SyncDone {
        /// Our tip's height.
        height: u32,
    },
}

impl SyncAction {
    /// The `getheaders` message of a [`SyncAction::SendGetHeaders`] with our protocol
    /// `version`, and its recipient; `None` for the other actions.
    pub fn to_message(&self, version: u32) -> Option<(PeerId, Message)> {
        match self {
            SyncAction::SendGetHeaders {
                peer,
                locator,
                stop,
            } => Some((
                *peer,
                Message::GetHeaders(Locator {
                    version,
                    hashes: locator.clone(),
                    stop: *stop,
                }),
            )),
            _ => None,
        }
    }
}

/// Where the sync stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncProgress {
    /// Our tip's height.
    pub tip_height: u32,
    /// The highest height any peer claimed (start height) or implied (an announcement of a block
    /// above our tip), at least the tip's.
    pub best_known_height: u32,
    /// A `getheaders` is in flight.
    pub syncing: bool,
    /// The peer it went to.
    pub sync_peer: Option<PeerId>,
}

/// What the sync knows of one peer.
#[derive(Clone, Debug)]
struct SyncPeer {
    /// Claimed start height, raised by announcements.
    height: u32,
    services: u64,
    score: u32,
    /// Requests it left unanswered past the timeout.
    stalls: u32,
    /// It sent invalid headers: never asked again.
    bad: bool,
    /// It answered with a short batch: nothing more to get from its start height.
    exhausted: bool,
    /// It has something we lack (announcement, orphan, unrequested full batch) and has not been
    /// asked since; with the announced hash when there was one.
    pending: bool,
    pending_hash: Option<Hash256>,
    /// `headers` messages in a row that did not connect.
    unconnecting: u32,
    /// The last hash of the last full batch it sent (to spot the same batch sent twice).
    last_full_end: Option<Hash256>,
    /// The last hash of its last full batch: where to carry on.
    continue_from: Option<Hash256>,
}

/// The `getheaders` in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    peer: PeerId,
    sent: Instant,
    /// Sent to a peer not known to be above our tip (see [`SyncConfig::probe_timeout`]).
    probe: bool,
    /// Sent ahead, continuing from the end of a full batch that was still being validated
    /// (see [`HeaderSync::headers_arriving`]): that batch's last hash.
    after: Option<Hash256>,
}

/// The header-first sync decision maker (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct HeaderSync {
    config: SyncConfig,
    /// Ordered so every choice is deterministic.
    peers: BTreeMap<PeerId, SyncPeer>,
    in_flight: Option<InFlight>,
    best_known: u32,
    /// The tip height at which [`HeaderSync::tick`] last found nothing in flight and no
    /// candidate, none of whose candidacy hangs on which headers the tree holds: while no other
    /// call changes anything, a tick at that height finds the same without looking.
    idle_at: Option<u32>,
}

impl HeaderSync {
    /// A sync with no peers.
    pub fn new(config: SyncConfig) -> HeaderSync {
        HeaderSync {
            config,
            peers: BTreeMap::new(),
            in_flight: None,
            best_known: 0,
            idle_at: None,
        }
    }

    /// The peer the `getheaders` in flight went to.
    pub fn sync_peer(&self) -> Option<PeerId> {
        self.in_flight.map(|f| f.peer)
    }

    #[cfg(test)]
    /// When [`HeaderSync::tick`] next has something to do (the in-flight request's stall time).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.map(|f| f.sent + self.timeout_of(&f))
    }

    fn timeout_of(&self, f: &InFlight) -> Duration {
        if f.probe {
            self.config.stall_timeout.min(self.config.probe_timeout)
        } else {
            self.config.stall_timeout
        }
    }

    /// Where the sync stands against `tree`.
    pub fn progress(&self, tree: &HeaderTree) -> SyncProgress {
        let tip_height = tree.height();
        SyncProgress {
            tip_height,
            best_known_height: self.best_known.max(tip_height),
            syncing: self.in_flight.is_some(),
            sync_peer: self.sync_peer(),
        }
    }

    /// A peer finished its handshake, claiming `start_height` with `services`; `score` (0-100,
    /// see [`crate::fsm::scoring`]) breaks ties between equally high peers. Starts a sync when
    /// nothing is in flight and the peer (or another) is a candidate.
    pub fn peer_connected(
        &mut self,
        id: PeerId,
        start_height: i32,
        services: u64,
        score: u32,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        let height = start_height.max(0) as u32;
        self.best_known = self.best_known.max(height);
        let p = self.peers.entry(id).or_insert(SyncPeer {
            height,
            services,
            score,
            stalls: 0,
            bad: false,
            exhausted: false,
            pending: false,
            pending_hash: None,
            unconnecting: 0,
            last_full_end: None,
            continue_from: None,
        });
        p.height = p.height.max(height);
        p.services = services;
        p.score = score;
        let mut out = Vec::new();
        self.maybe_start(tree, now, &mut out);
        out
    }

    #[cfg(test)]
    /// The peer's score changed (used only to break ties).
    pub fn set_score(&mut self, id: PeerId, score: u32) {
        self.idle_at = None;
        if let Some(p) = self.peers.get_mut(&id) {
            p.score = score;
        }
    }

    /// The connection is gone. If it was the sync peer, another candidate is asked.
    pub fn peer_disconnected(
        &mut self,
        id: PeerId,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        self.peers.remove(&id);
        if self.sync_peer() == Some(id) {
            self.in_flight = None;
        }
        let mut out = Vec::new();
        self.maybe_start(tree, now, &mut out);
        out
    }

    /// A `headers` message from `id`, before it is inserted into the tree. When it is a full
    /// batch from the sync peer, the next request goes out now, continuing from the batch's last
    /// header, so the peer serves the next batch while this one is validated and stored (one
    /// request ahead; [`HeaderSync::headers_received`] then does not ask again). If the batch
    /// turns out invalid, the peer is reported as usual and the answer to the early request,
    /// which no longer connects, is not followed.
    pub fn headers_arriving(
        &mut self,
        id: PeerId,
        headers: &[BlockHeader],
        tree: &HeaderTree,
        now: Instant,
    ) -> Option<SyncAction> {
        self.idle_at = None;
        let f = self.in_flight?;
        if f.peer != id || headers.len() < HEADERS_BATCH {
            return None;
        }
        let end = headers.last()?.hash();
        let p = self.peers.get(&id)?;
        if p.bad || f.after == Some(end) || p.last_full_end == Some(end) {
            return None;
        }
        let reach = tree.height().saturating_add(headers.len() as u32);
        let mut locator = tree.locator();
        locator.insert(0, end);
        self.in_flight = Some(InFlight {
            peer: id,
            sent: now,
            probe: p.height <= reach,
            after: Some(end),
        });
        Some(SyncAction::SendGetHeaders {
            peer: id,
            locator,
            stop: Hash256::ZERO,
        })
    }

    /// A `headers` message from `id`, already passed to [`HeaderTree::insert_many`], whose result
    /// (without the batch details) is `outcome`.
    ///
    /// From the sync peer: a full batch is followed by another request to it, a short one ends
    /// its round (next candidate, or [`SyncAction::SyncDone`]). An invalid header reports the
    /// sender and, if it was the sync peer, moves the sync to another peer. An `Orphan` error at
    /// index 0 is handled as [`HeaderSync::orphan_received`]. A full batch from another peer
    /// makes it a candidate (it has more).
    pub fn headers_received(
        &mut self,
        id: PeerId,
        headers: &[BlockHeader],
        outcome: Result<(), (usize, HeaderError)>,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        let mut out = Vec::new();
        let from_sync_peer = self.sync_peer() == Some(id);
        if let Err((index, error)) = outcome {
            let (reason, detail) = match &error {
                HeaderError::Orphan { .. } if index == 0 => {
                    return self.orphan_received(id, tree, now);
                }
                HeaderError::LowWorkFork { .. } | HeaderError::NotShown { .. } => (
                    BanReason::ProtocolViolation,
                    format!("{error}"),
                ),
                HeaderError::Orphan { .. } => (
                    BanReason::ProtocolViolation,
                    format!(
                        "headers do not chain: header {index} of {} does not follow the one before ({error})",
                        headers.len()
                    ),
                ),
                HeaderError::BadProofOfWork { .. } => (
                    BanReason::InvalidHeaderPow,
                    format!("header {index} of {}: {error}", headers.len()),
                ),
                // as the SV node: wrong difficulty bits and checkpoint mismatches 100, header
                // times 0 (the round still ends)
                HeaderError::BitsAboveLimit { .. }
                | HeaderError::BadDifficultyBits { .. }
                | HeaderError::WorkOverflow { .. }
                | HeaderError::CheckpointMismatch { .. }
                | HeaderError::ForkBeforeCheckpoint { .. } => (
                    BanReason::InvalidHeader,
                    format!("header {index} of {}: {error}", headers.len()),
                ),
                HeaderError::ObsoleteVersion { .. } => (
                    BanReason::ObsoleteVersion,
                    format!("header {index} of {}: {error}", headers.len()),
                ),
                HeaderError::TimeTooOld { .. } => (
                    BanReason::HeaderTime,
                    format!("header {index} of {}: {error}", headers.len()),
                ),
                // Maybe our clock is behind: not misbehaviour, but nothing more from this peer
                // until it announces something new (the header may be valid by then). Or
                // others used up the fork budget: not this peer's doing.
                HeaderError::TimeTooNew { .. } | HeaderError::ForkBudgetFull { .. } => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.pending = false;
                    }
                    self.round_over(id, from_sync_peer, tree, now, &mut out);
                    return out;
                }
            };
            self.misbehaved(id, reason, detail, tree, now, &mut out);
            return out;
        }

        let full = headers.len() >= HEADERS_BATCH;
        let end = headers.last().map(BlockHeader::hash);
        let Some(p) = self.peers.get_mut(&id) else {
            return out;
        };
        if !headers.is_empty() {
            p.unconnecting = 0;
        }
        if full {
            if from_sync_peer && p.last_full_end == end {
                // The same batch again: the answer to a request repeated after a stall, while
                // the request that followed the first copy is still in flight.
                // Asking again would keep two requests in flight for the rest of the sync.
                return out;
            }
            p.last_full_end = end;
            p.continue_from = end;
        }
        if from_sync_peer {
            if full
                && self
                    .in_flight
                    .is_some_and(|f| f.after.is_some() && f.after == end)
            {
                // asked already, by headers_arriving
                return out;
            }
            self.in_flight = None;
            if full {
                out.push(self.request(id, tree, now));
            } else {
                self.round_over(id, true, tree, now, &mut out);
            }
        } else if full {
            // A late answer to a request that timed out, or unrequested: the peer has more.
            if let Some(p) = self.peers.get_mut(&id) {
                if !p.bad {
                    p.pending = true;
                    p.pending_hash = None;
                }
            }
            self.maybe_start(tree, now, &mut out);
        }
        out
    }

    /// A batch from `id` that went to its header pre-sync ([`crate::fsm::presync`]) instead of
    /// the tree. `next`: `Some(Some(h))` asks the peer for the headers after `h` (still
    /// counting), `Some(None)` asks it again from the tree's tip (its chain is shown: download
    /// it again), `None` ends its round (it had no more).
    pub fn presync_batch(
        &mut self,
        id: PeerId,
        next: Option<Option<Hash256>>,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        let mut out = Vec::new();
        let from_sync_peer = self.sync_peer() == Some(id);
        let Some(p) = self.peers.get_mut(&id) else {
            return out;
        };
        p.unconnecting = 0;
        p.continue_from = None;
        p.last_full_end = None;
        if !from_sync_peer && self.in_flight.is_some() {
            // another peer syncs: this one's turn comes after it (its count is kept)
            p.pending = true;
            return out;
        }
        self.in_flight = None;
        match next {
            Some(after) => {
                let mut a = self.request(id, tree, now);
                if let (Some(h), SyncAction::SendGetHeaders { locator, .. }) = (after, &mut a) {
                    locator.insert(0, h);
                }
                out.push(a);
            }
            None => self.round_over(id, from_sync_peer, tree, now, &mut out),
        }
        out
    }

    /// A block we do not know was announced by `id` (`inv` or a `headers` announcement of
    /// `hash`): the peer is asked for headers, at once when nothing is in flight, after the
    /// current round otherwise. Known hashes are ignored.
    pub fn header_announced(
        &mut self,
        id: PeerId,
        hash: Hash256,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        let mut out = Vec::new();
        if tree.contains(&hash) {
            return out;
        }
        let above_tip = tree.height().saturating_add(1);
        let Some(p) = self.peers.get_mut(&id) else {
            return out;
        };
        if p.bad {
            return out;
        }
        p.pending = true;
        p.pending_hash = Some(hash);
        p.height = p.height.max(above_tip);
        self.best_known = self.best_known.max(above_tip);
        self.maybe_start(tree, now, &mut out);
        out
    }

    /// A `headers` message from `id` whose first header's parent is unknown (not inserted, or
    /// refused by the tree as an orphan): ask the peer for the headers in between with a
    /// locator, at once if nothing is in flight, after the current round otherwise (when `id` is
    /// the sync peer, its request in flight covers it). [`SyncConfig::max_unconnecting`] in a
    /// row is misbehaviour.
    pub fn orphan_received(
        &mut self,
        id: PeerId,
        tree: &HeaderTree,
        now: Instant,
    ) -> Vec<SyncAction> {
        self.idle_at = None;
        let mut out = Vec::new();
        let max = self.config.max_unconnecting.max(1);
        let above_tip = tree.height().saturating_add(1);
        let Some(p) = self.peers.get_mut(&id) else {
            return out;
        };
        if p.bad {
            return out;
        }
        p.unconnecting += 1;
        if p.unconnecting >= max {
            let n = p.unconnecting;
            p.unconnecting = 0;
            let detail = format!("{n} headers messages in a row did not connect to our chain");
            self.misbehaved(
                id,
                BanReason::ProtocolViolation,
                detail,
                tree,
                now,
                &mut out,
            );
            return out;
        }
        // Asked at once when nothing is in flight. When the sync peer itself sent it, the
        // request in flight covers it (a second one would double every batch from then on);
        // if the answer is short, the peer is asked once more.
        p.pending = true;
        p.pending_hash = None;
        p.height = p.height.max(above_tip);
        self.best_known = self.best_known.max(above_tip);
        self.maybe_start(tree, now, &mut out);
        out
    }

    /// Advances time: a sync peer that did not answer within the stall timeout is replaced
    /// (and reported for disconnection at its [`SyncConfig::max_stalls`]th stall); when nothing
    /// is in flight, a candidate is asked.
    pub fn tick(&mut self, now: Instant, tree: &HeaderTree) -> Vec<SyncAction> {
        let mut out = Vec::new();
        if let Some(f) = self.in_flight {
            // (a request in flight was made since the idle tick: never remembered with one)
            self.idle_at = None;
            if f.probe && now.saturating_duration_since(f.sent) >= self.timeout_of(&f) {
                // Nothing more from it (it does not say so with an empty `headers`): its round
                // ends as if it had.
                self.round_over(f.peer, true, tree, now, &mut out);
                return out;
            }
            if now.saturating_duration_since(f.sent) >= self.config.stall_timeout {
                self.in_flight = None;
                if let Some(p) = self.peers.get_mut(&f.peer) {
                    p.stalls += 1;
                    if p.stalls >= self.config.max_stalls.max(1) {
                        out.push(SyncAction::Disconnect {
                            peer: f.peer,
                            reason: SyncDisconnect::Stalled { stalls: p.stalls },
                        });
                    }
                }
            }
        }
        if self.in_flight.is_some() {
            return out;
        }
        let tip = tree.height();
        if self.idle_at == Some(tip) {
            debug_assert_eq!(
                self.best_candidate(tree),
                None,
                "an idle tick remembered wrongly"
            );
            return out;
        }
        let started = self.maybe_start(tree, now, &mut out);
        self.idle_at = (!started && !self.hangs_on_tree_contents()).then_some(tip);
        out
    }

    /// Whether some usable peer's candidacy depends on whether the tree holds a header (the one
    /// it announced).
    fn hangs_on_tree_contents(&self) -> bool {
        self.peers
            .values()
            .any(|p| self.usable(p) && p.pending && p.pending_hash.is_some())
    }

    /// `id` has nothing more for us now: its round ends. If it was the sync peer, the next
    /// candidate is asked, or the sync is done when there is none.
    fn round_over(
        &mut self,
        id: PeerId,
        was_sync_peer: bool,
        tree: &HeaderTree,
        now: Instant,
        out: &mut Vec<SyncAction>,
    ) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.exhausted = true;
            p.continue_from = None;
        }
        if was_sync_peer {
            self.in_flight = None;
            if !self.maybe_start(tree, now, out) {
                out.push(SyncAction::SyncDone {
                    height: tree.height(),
                });
            }
        }
    }

    /// Reports `id`, never asks it again, and moves the sync elsewhere if it was the sync peer.
    fn misbehaved(
        &mut self,
        id: PeerId,
        reason: BanReason,
        detail: String,
        tree: &HeaderTree,
        now: Instant,
        out: &mut Vec<SyncAction>,
    ) {
        out.push(SyncAction::Misbehaved {
            peer: id,
            reason,
            detail,
        });
        if let Some(p) = self.peers.get_mut(&id) {
            p.bad = true;
            p.pending = false;
            p.continue_from = None;
        }
        if self.sync_peer() == Some(id) {
            self.in_flight = None;
        }
        self.maybe_start(tree, now, out);
    }

    fn usable(&self, p: &SyncPeer) -> bool {
        !p.bad && p.stalls < self.config.max_stalls.max(1)
    }

    /// Whether `p` may be the next sync peer with our tip at `tip`.
    fn is_candidate(&self, p: &SyncPeer, tree: &HeaderTree, tip: u32) -> bool {
        if !self.usable(p) {
            return false;
        }
        let has_pending = p.pending && p.pending_hash.is_none_or(|h| !tree.contains(&h));
        let serves = self.config.headers_only || p.services & NODE_NETWORK != 0;
        has_pending || (serves && !p.exhausted && p.height > tip)
    }

    /// The best candidate: never stalled first, then highest, then best scored, then lowest id.
    fn best_candidate(&self, tree: &HeaderTree) -> Option<PeerId> {
        let tip = tree.height();
        self.peers
            .iter()
            .filter(|(_, p)| self.is_candidate(p, tree, tip))
            .max_by_key(|(id, p)| (p.stalls == 0, p.height, p.score, Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Asks the best candidate when nothing is in flight; whether a request went out.
    fn maybe_start(&mut self, tree: &HeaderTree, now: Instant, out: &mut Vec<SyncAction>) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        match self.best_candidate(tree) {
            Some(id) => {
                out.push(self.request(id, tree, now));
                true
            }
            None => false,
        }
    }

    /// A `getheaders` to `id` (which becomes the sync peer) from our tip, or from the end of
    /// its last full batch when that is on a side branch.
    fn request(&mut self, id: PeerId, tree: &HeaderTree, now: Instant) -> SyncAction {
        let mut locator = tree.locator();
        let mut probe = false;
        if let Some(p) = self.peers.get_mut(&id) {
            probe = !p.pending && p.height <= tree.height();
            p.pending = false;
            p.pending_hash = None;
            if let Some(last) = p.continue_from.take() {
                if tree.get(&last).is_some_and(|e| !e.in_best_chain) {
                    locator.insert(0, last);
                }
            }
        }
        self.in_flight = Some(InFlight {
            peer: id,
            sent: now,
            probe,
            after: None,
        });
        SyncAction::SendGetHeaders {
            peer: id,
            locator,
            stop: Hash256::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> SyncConfig {
        SyncConfig {
            stall_timeout: 50 * MS,
            ..SyncConfig::default()
        }
    }

    fn mine(prev: &BlockHeader, salt: u32) -> BlockHeader {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
            time: prev.time + 600,
            bits: 0x207fffff,
            nonce: 0,
        };
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        h
    }

    /// `n` headers on top of `from`.
    fn chain(from: &BlockHeader, n: usize, salt: u32) -> Vec<BlockHeader> {
        let mut out: Vec<BlockHeader> = Vec::with_capacity(n);
        for i in 0..n {
            let prev = out.last().unwrap_or(from);
            out.push(mine(
                prev,
                salt.wrapping_mul(100_000).wrapping_add(i as u32),
            ));
        }
        out
    }

    fn regtest() -> HeaderTree {
        HeaderTree::new(&Network::Regtest.params())
    }

    fn genesis() -> BlockHeader {
        Network::Regtest.params().genesis
    }

    /// A peer's view: a tree holding `headers`.
    fn remote(headers: &[BlockHeader]) -> HeaderTree {
        let mut t = regtest();
        t.insert_many(headers).unwrap();
        t
    }

    /// What a peer answers to a `getheaders`.
    fn answer(remote: &HeaderTree, a: &SyncAction) -> Vec<BlockHeader> {
        match a {
            SyncAction::SendGetHeaders { locator, stop, .. } => {
                remote.headers_after(locator, stop, HEADERS_BATCH)
            }
            other => panic!("not a getheaders: {other:?}"),
        }
    }

    /// Inserts `headers` as the engine does and tells the sync.
    fn deliver(
        s: &mut HeaderSync,
        tree: &mut HeaderTree,
        peer: PeerId,
        headers: &[BlockHeader],
        now: Instant,
    ) -> Vec<SyncAction> {
        let outcome = tree.insert_many(headers).map(|_| ());
        s.headers_received(peer, headers, outcome, tree, now)
    }

    fn get_headers_to(a: &[SyncAction]) -> Vec<PeerId> {
        a.iter()
            .filter_map(|a| match a {
                SyncAction::SendGetHeaders { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    fn only_request(a: &[SyncAction], peer: PeerId) -> &SyncAction {
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(get_headers_to(a), vec![peer], "{a:?}");
        &a[0]
    }

    fn locator_of(a: &SyncAction) -> &[Hash256] {
        match a {
            SyncAction::SendGetHeaders { locator, stop, .. } => {
                assert_eq!(*stop, Hash256::ZERO);
                locator
            }
            other => panic!("not a getheaders: {other:?}"),
        }
    }

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);
    const C: PeerId = PeerId(3);
    const D: PeerId = PeerId(4);
    const E: PeerId = PeerId(5);

    #[test]
    fn syncs_5000_headers_in_batches_of_2000() {
        let hs = chain(&genesis(), 5000, 1);
        let peer = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        assert_eq!(
            s.progress(&tree),
            SyncProgress {
                tip_height: 0,
                best_known_height: 0,
                syncing: false,
                sync_peer: None
            }
        );

        let a = s.peer_connected(A, 5000, NODE_NETWORK, 50, &tree, t0);
        let req = only_request(&a, A).clone();
        assert_eq!(locator_of(&req), &[tree.genesis_hash()]);
        assert_eq!(
            s.progress(&tree),
            SyncProgress {
                tip_height: 0,
                best_known_height: 5000,
                syncing: true,
                sync_peer: Some(A)
            }
        );
        assert_eq!(s.next_deadline(), Some(t0 + 50 * MS));

        let mut req = req;
        let mut now = t0;
        for (batch, tip) in [(2000, 2000), (2000, 4000)] {
            now += 10 * MS;
            let got = answer(&peer, &req);
            assert_eq!(got.len(), batch);
            let a = deliver(&mut s, &mut tree, A, &got, now);
            assert_eq!(tree.height(), tip);
            // Full batch: ask the same peer again at once, from the new tip.
            req = only_request(&a, A).clone();
            assert_eq!(locator_of(&req)[0], tree.tip_point().hash);
            assert_eq!(*locator_of(&req).last().unwrap(), tree.genesis_hash());
            assert_eq!(s.next_deadline(), Some(now + 50 * MS));
            // Not stalled: the clock restarted with the new request.
            assert!(s.tick(now + 40 * MS, &tree).is_empty());
        }
        now += 10 * MS;
        let got = answer(&peer, &req);
        assert_eq!(got.len(), 1000);
        let a = deliver(&mut s, &mut tree, A, &got, now);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 5000 }]);
        assert_eq!(tree.tip_point().hash, hs[4999].hash());
        assert_eq!(
            s.progress(&tree),
            SyncProgress {
                tip_height: 5000,
                best_known_height: 5000,
                syncing: false,
                sync_peer: None
            }
        );
        assert_eq!(s.next_deadline(), None);
        // Idle: nothing to do, however late.
        assert!(s.tick(now + Duration::from_secs(3600), &tree).is_empty());
    }

    #[test]
    fn to_message_builds_getheaders() {
        let tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let a = s.peer_connected(A, 10, NODE_NETWORK, 50, &tree, Instant::now());
        let (peer, m) = a[0].to_message(70016).unwrap();
        assert_eq!(peer, A);
        assert_eq!(
            m,
            Message::GetHeaders(Locator {
                version: 70016,
                hashes: vec![tree.genesis_hash()],
                stop: Hash256::ZERO
            })
        );
        assert_eq!(SyncAction::SyncDone { height: 1 }.to_message(1), None);
    }

    #[test]
    fn picks_the_highest_serving_peer() {
        let tree = remote(&chain(&genesis(), 10, 2));
        let t0 = Instant::now();
        let mut s = HeaderSync::new(cfg());
        // At or below our tip (10): not a candidate.
        assert!(s
            .peer_connected(A, 10, NODE_NETWORK, 90, &tree, t0)
            .is_empty());
        assert!(s
            .peer_connected(B, -1, NODE_NETWORK, 90, &tree, t0)
            .is_empty());
        // No NODE_NETWORK: not a candidate without headers_only.
        assert!(s.peer_connected(C, 1000, 0, 90, &tree, t0).is_empty());
        assert_eq!(s.progress(&tree).best_known_height, 1000);

        // Several candidates at once (a fresh sync after a restart): the choice among all.
        let mut s = HeaderSync::new(cfg());
        // hold the start back
        s.in_flight = Some(InFlight {
            peer: E,
            sent: t0,
            probe: false,
            after: None,
        });
        for (id, h, score) in [(A, 100, 10), (B, 300, 10), (C, 300, 90), (D, 200, 99)] {
            assert!(s
                .peer_connected(id, h, NODE_NETWORK, score, &tree, t0)
                .is_empty());
        }
        s.peer_connected(E, 1000, 0, 99, &tree, t0);
        // Highest start height wins; the tie at 300 goes to the higher score.
        assert_eq!(s.best_candidate(&tree), Some(C));
        s.set_score(B, 95);
        assert_eq!(s.best_candidate(&tree), Some(B));
        // Equal height and score: the lower id, deterministically.
        s.set_score(C, 95);
        assert_eq!(s.best_candidate(&tree), Some(B));
        // The sync peer leaves: the best candidate takes over.
        let a = s.peer_disconnected(E, &tree, t0);
        only_request(&a, B);

        // With headers_only, the peer without NODE_NETWORK counts.
        let mut s = HeaderSync::new(SyncConfig {
            headers_only: true,
            ..cfg()
        });
        s.in_flight = Some(InFlight {
            peer: PeerId(99),
            sent: t0,
            probe: false,
            after: None,
        });
        for (id, h, services) in [(A, 100, NODE_NETWORK), (B, 1000, 0), (C, 300, NODE_NETWORK)] {
            s.peer_connected(id, h, services, 50, &tree, t0);
        }
        assert_eq!(s.best_candidate(&tree), Some(B));
    }

    #[test]
    fn a_stalled_sync_peer_is_replaced_and_dropped_on_its_second_stall() {
        let hs = chain(&genesis(), 3000, 3);
        let long = remote(&hs);
        let short = remote(&hs[..2500]);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        // A claims the most: it is asked first, then never answers.
        let a = s.peer_connected(A, 3000, NODE_NETWORK, 50, &tree, t0);
        only_request(&a, A);
        assert!(s
            .peer_connected(B, 2500, NODE_NETWORK, 50, &tree, t0)
            .is_empty());
        assert!(s.tick(t0 + 49 * MS, &tree).is_empty());
        // Stalled once: B takes over, A stays connected.
        let a = s.tick(t0 + 50 * MS, &tree);
        let req = only_request(&a, B).clone();
        assert_eq!(s.progress(&tree).sync_peer, Some(B));

        let mut now = t0 + 60 * MS;
        let a = deliver(&mut s, &mut tree, B, &answer(&short, &req), now);
        let req = only_request(&a, B).clone();
        now += 10 * MS;
        let a = deliver(&mut s, &mut tree, B, &answer(&short, &req), now);
        assert_eq!(tree.height(), 2500);
        // B has no more, A claims more: A is tried again (it is the only one left).
        let req = only_request(&a, A).clone();
        assert_eq!(locator_of(&req)[0], hs[2499].hash());
        // A stalls a second time: reported, and no one is left to ask.
        let a = s.tick(now + 50 * MS, &tree);
        assert_eq!(
            a,
            vec![SyncAction::Disconnect {
                peer: A,
                reason: SyncDisconnect::Stalled { stalls: 2 }
            }]
        );
        assert!(!s.progress(&tree).syncing);
        assert!(s.tick(now + 500 * MS, &tree).is_empty());
        // The engine closes A; a new peer finishes the sync.
        assert!(s.peer_disconnected(A, &tree, now).is_empty());
        let a = s.peer_connected(C, 3000, NODE_NETWORK, 50, &tree, now);
        let req = only_request(&a, C).clone();
        let a = deliver(&mut s, &mut tree, C, &answer(&long, &req), now);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 3000 }]);
        assert_eq!(s.progress(&tree).best_known_height, 3000);
    }

    #[test]
    fn a_lone_staller_is_asked_again_then_dropped() {
        let tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        only_request(&s.peer_connected(A, 10, NODE_NETWORK, 50, &tree, t0), A);
        let a = s.tick(t0 + 50 * MS, &tree);
        only_request(&a, A);
        assert_eq!(s.next_deadline(), Some(t0 + 100 * MS));
        let a = s.tick(t0 + 100 * MS, &tree);
        assert_eq!(
            a,
            vec![SyncAction::Disconnect {
                peer: A,
                reason: SyncDisconnect::Stalled { stalls: 2 }
            }]
        );
        assert_eq!(
            SyncDisconnect::Stalled { stalls: 2 }.to_string(),
            "header sync stalled (2 getheaders unanswered)"
        );
    }

    #[test]
    fn a_late_full_answer_is_followed_up() {
        let hs = chain(&genesis(), 4100, 4);
        let peer = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        let req = only_request(&s.peer_connected(A, 4100, NODE_NETWORK, 50, &tree, t0), A).clone();
        // A stalls once, no one else: asked again.
        only_request(&s.tick(t0 + 50 * MS, &tree), A);
        // The first request's answer arrives: a full batch from the sync peer, carry on.
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 60 * MS);
        let req = only_request(&a, A).clone();
        assert_eq!(locator_of(&req)[0], hs[1999].hash());
        // The answer to the repeated request is the same batch: no third request, or two would
        // stay in flight for the rest of the sync.
        assert!(deliver(&mut s, &mut tree, A, &hs[..2000], t0 + 61 * MS).is_empty());
        assert_eq!(s.next_deadline(), Some(t0 + 110 * MS));
        // An orphan (a new block announced) from the sync peer: covered by the request in
        // flight, nothing more is sent.
        let far = chain(&hs[4099], 1, 40);
        assert!(deliver(&mut s, &mut tree, A, &far, t0 + 61 * MS).is_empty());
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 62 * MS);
        let req = only_request(&a, A).clone();
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 63 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 4100 }]);
    }

    #[test]
    fn an_invalid_header_mid_batch_scores_the_sender_and_sync_goes_on_elsewhere() {
        let hs = chain(&genesis(), 3000, 5);
        let honest = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        only_request(&s.peer_connected(A, 3000, NODE_NETWORK, 80, &tree, t0), A);
        s.peer_connected(B, 3000, NODE_NETWORK, 20, &tree, t0);
        // A's batch: 1,000 good headers, then one whose proof of work fails.
        let mut bad = hs[..2000].to_vec();
        while bad[1000].meets_own_target() {
            bad[1000].nonce += 1;
        }
        let a = deliver(&mut s, &mut tree, A, &bad, t0 + 10 * MS);
        assert_eq!(tree.height(), 1000, "the headers before the bad one stay");
        assert_eq!(a.len(), 2, "{a:?}");
        match &a[0] {
            SyncAction::Misbehaved {
                peer,
                reason,
                detail,
            } => {
                assert_eq!((*peer, *reason), (A, BanReason::InvalidHeaderPow));
                assert!(detail.contains("header 1000 of 2000"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // B carries on from the tree's tip.
        let req = a[1].clone();
        assert_eq!(get_headers_to(&a[1..]), vec![B]);
        assert_eq!(locator_of(&req)[0], hs[999].hash());
        let a = deliver(&mut s, &mut tree, B, &answer(&honest, &req), t0 + 20 * MS);
        let req = only_request(&a, B).clone();
        let a = deliver(&mut s, &mut tree, B, &answer(&honest, &req), t0 + 30 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 3000 }]);
        // A is never asked again, even when it announces.
        let x = mine(&hs[2999], 77);
        assert!(s.header_announced(A, x.hash(), &tree, t0).is_empty());
    }

    /// `deliver`, with the early request of a pipelined sync first.
    fn deliver_ahead(
        s: &mut HeaderSync,
        tree: &mut HeaderTree,
        peer: PeerId,
        headers: &[BlockHeader],
        now: Instant,
    ) -> (Option<SyncAction>, Vec<SyncAction>) {
        let ahead = s.headers_arriving(peer, headers, tree, now);
        (ahead, deliver(s, tree, peer, headers, now))
    }

    #[test]
    fn full_batches_are_followed_by_a_request_sent_before_they_are_validated() {
        let hs = chain(&genesis(), 5000, 13);
        let peer = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        let req = only_request(&s.peer_connected(A, 5000, NODE_NETWORK, 50, &tree, t0), A).clone();
        let b1 = answer(&peer, &req);
        let (ahead, after) = deliver_ahead(&mut s, &mut tree, A, &b1, t0 + MS);
        let req = ahead.expect("asked ahead");
        assert_eq!(get_headers_to(std::slice::from_ref(&req)), vec![A]);
        assert_eq!(
            locator_of(&req)[0],
            hs[1999].hash(),
            "continues from the batch's end"
        );
        assert!(after.is_empty(), "not asked twice: {after:?}");
        assert_eq!(s.next_deadline(), Some(t0 + MS + 50 * MS));
        let b2 = answer(&peer, &req);
        assert_eq!(b2[0], hs[2000]);
        let (ahead, after) = deliver_ahead(&mut s, &mut tree, A, &b2, t0 + 2 * MS);
        let req = ahead.expect("asked ahead");
        assert!(after.is_empty());
        // The same batch again (a repeated request's answer): no second early request.
        assert_eq!(s.headers_arriving(A, &b2, &tree, t0 + 3 * MS), None);
        let b3 = answer(&peer, &req);
        assert_eq!(b3.len(), 1000);
        let (ahead, after) = deliver_ahead(&mut s, &mut tree, A, &b3, t0 + 4 * MS);
        assert_eq!(ahead, None, "a short batch is the last");
        assert_eq!(after, vec![SyncAction::SyncDone { height: 5000 }]);
        assert_eq!(tree.height(), 5000);
    }

    #[test]
    fn an_invalid_batch_asked_ahead_is_not_followed() {
        let hs = chain(&genesis(), 5000, 14);
        let honest = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        only_request(&s.peer_connected(A, 5000, NODE_NETWORK, 80, &tree, t0), A);
        s.peer_connected(B, 5000, NODE_NETWORK, 20, &tree, t0);
        let mut bad = hs[..2000].to_vec();
        while bad[1500].meets_own_target() {
            bad[1500].nonce += 1;
        }
        let (ahead, after) = deliver_ahead(&mut s, &mut tree, A, &bad, t0 + MS);
        assert!(ahead.is_some(), "asked ahead before the batch was checked");
        assert!(
            matches!(after[0], SyncAction::Misbehaved { peer: A, .. }),
            "{after:?}"
        );
        let req = after[1].clone();
        assert_eq!(get_headers_to(&after[1..]), vec![B]);
        // A's answer to the early request arrives: A is no longer asked anything.
        let late = hs[2000..4000].to_vec();
        let (ahead, after) = deliver_ahead(&mut s, &mut tree, A, &late, t0 + 2 * MS);
        assert_eq!(ahead, None);
        assert!(after.is_empty(), "{after:?}");
        // B carries the sync to the end, pipelined.
        let mut req = req;
        let mut n = 0;
        loop {
            let batch = answer(&honest, &req);
            let (ahead, after) = deliver_ahead(&mut s, &mut tree, B, &batch, t0 + 3 * MS);
            n += 1;
            match ahead {
                Some(r) => {
                    assert!(after.is_empty());
                    req = r;
                }
                None => {
                    assert_eq!(after, vec![SyncAction::SyncDone { height: 5000 }]);
                    break;
                }
            }
            assert!(n < 10);
        }
        assert_eq!(tree.tip().0, hs[4999].hash());
    }

    #[test]
    fn a_silent_peer_whose_chain_ends_on_a_full_batch_is_done_not_stalled() {
        // The peer's chain is exactly two batches; it answers the third request with nothing
        // at all (bcoin does this), not an empty `headers`.
        let hs = chain(&genesis(), 4000, 12);
        let peer = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(SyncConfig {
            stall_timeout: 30 * 1000 * MS,
            probe_timeout: 100 * MS,
            ..cfg()
        });
        let t0 = Instant::now();
        let req = only_request(&s.peer_connected(A, 4000, NODE_NETWORK, 50, &tree, t0), A).clone();
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + MS);
        let req = only_request(&a, A).clone();
        assert_eq!(
            s.next_deadline(),
            Some(t0 + MS + 30 * 1000 * MS),
            "A is above our tip"
        );
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 2 * MS);
        only_request(&a, A);
        assert_eq!(
            s.next_deadline(),
            Some(t0 + 102 * MS),
            "a probe: A is not above our tip"
        );
        assert!(s.tick(t0 + 101 * MS, &tree).is_empty());
        let a = s.tick(t0 + 102 * MS, &tree);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 4000 }]);
        assert_eq!(s.next_deadline(), None);
        // No stall was counted: when A announces a new block, it is the sync peer again.
        let x = mine(&hs[3999], 5);
        only_request(&s.header_announced(A, x.hash(), &tree, t0 + 200 * MS), A);
        assert_eq!(s.next_deadline(), Some(t0 + 200 * MS + 30 * 1000 * MS));
    }

    #[test]
    fn timestamp_rules_score_the_past_and_forgive_the_future() {
        let hs = chain(&genesis(), 30, 9);
        let t0 = Instant::now();
        // A header at or below its parent's median time past: InvalidHeader, B takes over.
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        only_request(&s.peer_connected(A, 30, NODE_NETWORK, 80, &tree, t0), A);
        s.peer_connected(B, 30, NODE_NETWORK, 20, &tree, t0);
        let mut bad = hs.clone();
        bad[20].time = bad[14].time;
        while !bad[20].meets_own_target() {
            bad[20].nonce += 1;
        }
        let a = deliver(&mut s, &mut tree, A, &bad, t0 + MS);
        assert_eq!(tree.height(), 20);
        match &a[0] {
            SyncAction::Misbehaved {
                peer,
                reason,
                detail,
            } => {
                assert_eq!((*peer, *reason), (A, BanReason::HeaderTime));
                assert!(detail.contains("median time past"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(get_headers_to(&a[1..]), vec![B]);

        // A header too far ahead of our clock: not scored, the round with A ends.
        let mut tree = regtest();
        tree.set_clock(hs[10].time);
        let mut s = HeaderSync::new(cfg());
        only_request(&s.peer_connected(A, 30, NODE_NETWORK, 80, &tree, t0), A);
        let a = deliver(&mut s, &mut tree, A, &hs, t0 + MS);
        assert_eq!(tree.height(), 23, "height 11 + two hours (12 x 600 s)");
        assert_eq!(a, vec![SyncAction::SyncDone { height: 23 }]);
        // When A announces a new block later, it is asked again.
        tree.set_clock(hs[29].time);
        let x = mine(&hs[29], 5);
        only_request(&s.header_announced(A, x.hash(), &tree, t0 + 2 * MS), A);
    }

    #[test]
    fn bits_above_limit_is_invalid_and_broken_chains_are_protocol_violations() {
        let hs = chain(&genesis(), 10, 6);
        let t0 = Instant::now();

        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        only_request(&s.peer_connected(A, 10, NODE_NETWORK, 50, &tree, t0), A);
        let mut bad = hs.clone();
        bad[3].bits = 0x2100ffff;
        while !bad[3].meets_own_target() {
            bad[3].nonce += 1;
        }
        let a = deliver(&mut s, &mut tree, A, &bad, t0);
        assert!(matches!(
            &a[..],
            [SyncAction::Misbehaved {
                peer: A,
                reason: BanReason::InvalidHeader,
                ..
            }]
        ));
        assert_eq!(tree.height(), 3);
        assert!(!s.progress(&tree).syncing);

        // Header 5 does not follow header 4.
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        only_request(&s.peer_connected(A, 10, NODE_NETWORK, 50, &tree, t0), A);
        let mut gap = hs[..5].to_vec();
        gap.extend_from_slice(&hs[6..]);
        let a = deliver(&mut s, &mut tree, A, &gap, t0);
        match &a[..] {
            [SyncAction::Misbehaved {
                peer: A,
                reason: BanReason::ProtocolViolation,
                detail,
            }] => assert!(detail.contains("do not chain"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn orphans_are_answered_with_a_locator() {
        let hs = chain(&genesis(), 30, 7);
        let peer = remote(&hs);
        let mut tree = remote(&hs[..20]);
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        // A connected when we were level with it.
        assert!(s
            .peer_connected(A, 20, NODE_NETWORK, 50, &tree, t0)
            .is_empty());
        // It announces the newest header alone: its parent is unknown.
        let a = deliver(&mut s, &mut tree, A, &hs[29..], t0);
        let req = only_request(&a, A).clone();
        assert_eq!(locator_of(&req), &tree.locator()[..]);
        assert_eq!(s.progress(&tree).best_known_height, 21);
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 30 }]);

        // The same through orphan_received, while another peer is syncing us: asked after.
        let mut tree = remote(&hs[..20]);
        let mut s = HeaderSync::new(cfg());
        let a = s.peer_connected(B, 25, NODE_NETWORK, 50, &tree, t0);
        let req = only_request(&a, B).clone();
        s.peer_connected(A, 20, NODE_NETWORK, 50, &tree, t0);
        assert!(s.orphan_received(A, &tree, t0).is_empty());
        assert!(s.tick(t0, &tree).is_empty());
        let short = remote(&hs[..25]);
        let a = deliver(&mut s, &mut tree, B, &answer(&short, &req), t0 + MS);
        let req = only_request(&a, A).clone();
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 2 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 30 }]);
    }

    #[test]
    fn too_many_unconnecting_headers_is_misbehaviour() {
        let hs = chain(&genesis(), 5, 8);
        let tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        s.peer_connected(A, 0, NODE_NETWORK, 50, &tree, t0);
        for i in 1..10 {
            let a = s.orphan_received(A, &tree, t0);
            if i == 1 {
                only_request(&a, A);
            } else {
                // The request in flight covers the later ones.
                assert!(a.is_empty(), "{a:?}");
            }
            assert_eq!(s.peers[&A].unconnecting, i);
        }
        let a = s.orphan_received(A, &tree, t0);
        assert!(matches!(
            &a[..],
            [SyncAction::Misbehaved {
                peer: A,
                reason: BanReason::ProtocolViolation,
                ..
            }]
        ));
        assert!(!s.progress(&tree).syncing);

        // A connecting batch resets the count.
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        s.peer_connected(B, 0, NODE_NETWORK, 50, &tree, t0);
        for _ in 0..9 {
            s.orphan_received(B, &tree, t0);
        }
        // The answer connects (and B, which sent orphans meanwhile, is asked once more).
        let a = deliver(&mut s, &mut tree, B, &hs, t0);
        only_request(&a, B);
        assert_eq!(s.peers[&B].unconnecting, 0);
        assert!(s.orphan_received(B, &tree, t0).is_empty());
        assert_eq!(s.peers[&B].unconnecting, 1);
    }

    #[test]
    fn sync_done_only_when_no_peer_is_higher() {
        let hs = chain(&genesis(), 2500, 9);
        let low = remote(&hs[..1500]);
        let high = remote(&hs);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        let req = only_request(&s.peer_connected(A, 1500, NODE_NETWORK, 99, &tree, t0), A).clone();
        // B connects during A's round: it claims more, but A's request stays in flight.
        assert!(s
            .peer_connected(B, 2500, NODE_NETWORK, 1, &tree, t0)
            .is_empty());
        assert_eq!(s.sync_peer(), Some(A));
        // A answers short: not done, B claims more.
        let a = deliver(&mut s, &mut tree, A, &answer(&low, &req), t0 + MS);
        let req = only_request(&a, B).clone();
        assert_eq!(locator_of(&req)[0], hs[1499].hash());
        let a = deliver(&mut s, &mut tree, B, &answer(&high, &req), t0 + 2 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 2500 }]);
        // A peer claiming more than it has answers short: it is not asked again.
        let a = s.peer_connected(C, 9999, NODE_NETWORK, 50, &tree, t0);
        let req = only_request(&a, C).clone();
        let a = deliver(&mut s, &mut tree, C, &answer(&high, &req), t0 + 3 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 2500 }]);
        assert!(s.tick(t0 + Duration::from_secs(60), &tree).is_empty());
        assert_eq!(
            s.progress(&tree),
            SyncProgress {
                tip_height: 2500,
                best_known_height: 9999,
                syncing: false,
                sync_peer: None
            }
        );
    }

    #[test]
    fn an_idle_tick_is_remembered_only_while_nothing_it_depends_on_changes() {
        let hs = chain(&genesis(), 12, 10);
        let (t9, t10, tall) = (remote(&hs[..9]), remote(&hs[..10]), remote(&hs));
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        // A claims no more than the tall tree: nothing to do, remembered at 12
        assert!(s
            .peer_connected(A, 10, NODE_NETWORK, 50, &tall, t0)
            .is_empty());
        assert!(s.tick(t0, &tall).is_empty());
        assert_eq!(s.idle_at, Some(12));
        assert!(s.tick(t0 + MS, &tall).is_empty());
        // below A's height it is a candidate again
        only_request(&s.tick(t0 + 2 * MS, &t9), A);
        assert_eq!(s.idle_at, None);
        // B announces the header at 11 while A's request is in flight
        assert!(s
            .peer_connected(B, 10, NODE_NETWORK, 40, &t10, t0)
            .is_empty());
        assert!(s.header_announced(B, hs[10].hash(), &t10, t0).is_empty());
        // A stalls; with the announced header in the tree, B has nothing to give
        let a = s.tick(t0 + 60 * MS, &tall);
        assert!(get_headers_to(&a).is_empty(), "{a:?}");
        // but whether it does hangs on the tree's headers, not only its height: not remembered
        assert_eq!(s.idle_at, None);
        let side = chain(&hs[9], 2, 99);
        let mut headers = hs[..10].to_vec();
        headers.extend(&side);
        let other = remote(&headers);
        assert_eq!(other.height(), 12);
        only_request(&s.tick(t0 + 61 * MS, &other), B);
    }

    #[test]
    fn announcements_start_a_round() {
        let hs = chain(&genesis(), 12, 10);
        let peer = remote(&hs);
        let mut tree = remote(&hs[..10]);
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        assert!(s
            .peer_connected(A, 10, NODE_NETWORK, 50, &tree, t0)
            .is_empty());
        assert!(s
            .peer_connected(B, 10, NODE_NETWORK, 50, &tree, t0)
            .is_empty());
        // Known: nothing to ask.
        assert!(s.header_announced(A, hs[9].hash(), &tree, t0).is_empty());
        assert!(s
            .header_announced(PeerId(77), hs[11].hash(), &tree, t0)
            .is_empty());
        // Unknown: ask the announcer; a second announcer waits for the round.
        let req = only_request(&s.header_announced(A, hs[11].hash(), &tree, t0), A).clone();
        assert!(s.header_announced(B, hs[11].hash(), &tree, t0).is_empty());
        assert_eq!(s.progress(&tree).best_known_height, 11);
        // A's answer brings the block B announced: B is not asked, the round is done.
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 12 }]);

        // An announcement by the sync peer while its request is in flight, which the answer
        // does not cover: it is asked once more.
        let more = chain(&hs[11], 1, 11);
        let mut peer2 = remote(&hs);
        let req = only_request(&s.header_announced(B, more[0].hash(), &tree, t0), B).clone();
        let stale = answer(&peer2, &req); // nothing yet
        peer2.insert_many(&more).unwrap();
        let newer = chain(&more[0], 1, 12);
        peer2.insert_many(&newer).unwrap();
        assert!(s.header_announced(B, newer[0].hash(), &tree, t0).is_empty());
        let a = deliver(&mut s, &mut tree, B, &stale, t0 + 2 * MS);
        let req = only_request(&a, B).clone();
        let a = deliver(&mut s, &mut tree, B, &answer(&peer2, &req), t0 + 3 * MS);
        assert_eq!(a, vec![SyncAction::SyncDone { height: 14 }]);
    }

    #[test]
    fn a_full_batch_on_a_side_branch_is_followed_from_its_end() {
        // We hold branch X to 2,500; the peer's branch Y forks at 500 and reaches 4,000. Its
        // first batch (from the locator's fork point, below 500, 2,000 headers) has less work
        // than X: our tip does not move, so the next locator must start at the batch's end or
        // the peer would resend the same batch forever.
        let base = chain(&genesis(), 500, 12);
        let x = chain(&base[499], 2000, 13);
        let y = chain(&base[499], 3500, 14);
        let mut mine_ = base.clone();
        mine_.extend_from_slice(&x);
        let mut theirs = base.clone();
        theirs.extend_from_slice(&y);
        let peer = remote(&theirs);
        let mut tree = remote(&mine_);
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        let req = only_request(&s.peer_connected(A, 4000, NODE_NETWORK, 50, &tree, t0), A).clone();
        let got = answer(&peer, &req);
        assert_eq!(got.len(), 2000);
        assert!(y.contains(got.last().unwrap()));
        let a = deliver(&mut s, &mut tree, A, &got, t0 + MS);
        assert_eq!(tree.tip_point().hash, x[1999].hash(), "less work: X stays");
        let req = only_request(&a, A).clone();
        assert_eq!(locator_of(&req)[0], got.last().unwrap().hash());
        assert_eq!(&locator_of(&req)[1..], &tree.locator()[..]);
        let a = deliver(&mut s, &mut tree, A, &answer(&peer, &req), t0 + 2 * MS);
        assert_eq!(tree.tip_point().hash, y[3499].hash());
        assert_eq!(a, vec![SyncAction::SyncDone { height: 4000 }]);
    }

    #[test]
    fn unknown_peers_and_disconnects_are_harmless() {
        let hs = chain(&genesis(), 3, 15);
        let mut tree = regtest();
        let mut s = HeaderSync::new(cfg());
        let t0 = Instant::now();
        assert!(deliver(&mut s, &mut tree, A, &hs, t0).is_empty());
        assert!(s.orphan_received(A, &tree, t0).is_empty());
        assert!(s.peer_disconnected(A, &tree, t0).is_empty());
        // An unknown peer's invalid header is still reported.
        let mut bad = chain(&hs[2], 1, 16);
        while bad[0].meets_own_target() {
            bad[0].nonce += 1;
        }
        let a = deliver(&mut s, &mut tree, B, &bad, t0);
        assert!(matches!(
            &a[..],
            [SyncAction::Misbehaved {
                peer: B,
                reason: BanReason::InvalidHeaderPow,
                ..
            }]
        ));
    }
}
