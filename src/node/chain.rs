//! Chain work in the core: the header-first [`crate::fsm::sync::HeaderSync`] and the parallel
//! [`crate::fsm::download::BlockDownload`] decide, this carries their decisions out; headers are
//! stored as they validate, blocks are written in chain order and raised as `BlockConnected`
//! once committed; a new tip is announced (headers to peers that sent `sendheaders`, inv to the
//! others, never to a peer known to have it); `getheaders`, `getblocks` and `getdata` are
//! served from the header tree and the store.
//!
//! `getblocks` is how bcoin (and other clients without headers-first sync) download: an answer
//! cut at 500 remembers its last block, and when the peer asks for that block it is followed by
//! an `inv` of our tip, which the peer does not know and so answers with the next `getblocks`
//! (Bitcoin's `hashContinue`). Without it such a peer stops after 500 blocks.

use super::{NodeCore, Output, PendingCommit};
use crate::event::Event;
use crate::fsm::bans::BanReason;
use crate::fsm::download::{block_inventory, DownloadAction};
use crate::fsm::sync::{SyncAction, SyncProgress};
use crate::fsm::PeerId;
use crate::store::records::{has_block, put_block, put_block_file, with_block, StoredBlock};
use crate::store::Batch;
use crate::wire::message::MAX_HEADERS;
use crate::wire::{Block, BlockHeader, Hash256, InvType, Inventory, Message};
use bytes::Bytes;
use std::time::Instant;

/// Most hashes answered to one `getblocks`.
pub const MAX_GETBLOCKS: usize = 500;
/// `reject` code of a peer too busy to serve blocks (the SV node's `REJECT_TOOBUSY`).
const REJECT_TOOBUSY: u8 = 0x44;
/// How long a peer that said it is too busy is not asked for blocks (the SV node's
/// `TOOBUSY_RETRY_DELAY`).
const TOOBUSY_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
/// Most bytes of an `hdrsen` answer (the smallest `protoconf` limit a peer may have), unless
/// its one header needs more.
const MAX_HDRSEN_BYTES: usize = 1 << 20;
/// Most peers whose headers are pre-synced at once (each holds a bit per header).
const MAX_PRESYNC_PEERS: usize = 16;
/// Most headers room is made for ahead of a sync (~1M headers: ~170 MB of tree, untouched until
/// used), whatever height peers claim.
const MAX_RESERVE: usize = 1 << 20;

/// A block the core holds on its way to the store: its bytes, or its block file.
#[derive(Clone, Debug)]
pub(crate) enum Held {
    /// In memory.
    Bytes(Bytes),
    /// In a block file (see [`crate::store::files`]).
    File(crate::store::files::BlockFileRef),
}

/// Which header: by best-chain height or by hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRef {
    /// The best chain's header at this height.
    Height(u32),
    /// The header with this hash, on any branch.
    Hash(Hash256),
}

impl NodeCore {
    fn now_u32(&self, now: Instant) -> u32 {
        self.unix(now).min(u64::from(u32::MAX)) as u32
    }

    fn sync_actions(&mut self, actions: Vec<SyncAction>, now: Instant) {
        for a in actions {
            match a {
                SyncAction::SendGetHeaders { .. } => {
                    if let Some((peer, m)) = a.to_message(crate::config::PROTOCOL_VERSION as u32) {
                        self.send(peer, m);
                    }
                }
                SyncAction::Misbehaved {
                    peer,
                    reason,
                    detail,
                } => {
                    if let Some(ip) = self.ip_of(peer) {
                        self.misbehaving(ip, Some(peer), reason, &detail, now);
                    }
                }
                SyncAction::Disconnect { peer, reason } => {
                    log::info!("peer {peer}: {reason}");
                    self.out.push_back(Output::Disconnect(
                        peer,
                        crate::fsm::DisconnectReason::Stalled(reason.to_string()),
                    ));
                }
                SyncAction::SyncDone { height } => {
                    log::info!("headers synced to height {height}");
                    self.progress.synced_once = true;
                    self.emit(Event::HeadersSynced { height });
                }
            }
        }
    }

    /// Carries out download decisions: requests go out, stalled peers are dropped, and `Ready`
    /// blocks are written in one batch whose commit raises them.
    fn download_actions(&mut self, actions: Vec<DownloadAction>, now: Instant) {
        if actions.is_empty() {
            return;
        }
        let mut batch = Batch::new();
        let mut pending = PendingCommit::default();
        for a in actions {
            match a {
                DownloadAction::Request { peer, hashes } => {
                    self.send(peer, Message::GetData(block_inventory(&hashes)))
                }
                DownloadAction::Ready { height, hash } => {
                    if let Some(b) = self.buffer.remove(&hash) {
                        match &b {
                            Held::Bytes(raw) => put_block(&mut batch, &hash, raw.clone()),
                            Held::File(r) => put_block_file(&mut batch, &hash, r),
                        }
                        self.unconfirmed.insert(hash, b);
                        pending.held.push(hash);
                    } else {
                        // (else it was stored already: imported, submitted, or held before)
                        debug_assert!(self.has_block(&hash), "block {hash} ready but not held");
                    }
                    pending.connected.push((height, hash));
                }
                DownloadAction::Stalled { peer, hash } => {
                    log::info!("peer {peer} stalled on block {hash}: disconnecting");
                    self.out.push_back(Output::Disconnect(
                        peer,
                        crate::fsm::DisconnectReason::Stalled(format!("no block {hash} in time")),
                    ));
                }
                // (the copy that came is dropped where it came in, `block_arrived`: a copy held
                // from an earlier, requested delivery stays for its Ready)
                DownloadAction::Unrequested { peer, hash } => {
                    if let Some(ip) = self.ip_of(peer) {
                        let detail = format!("block {hash}");
                        self.misbehaving(ip, Some(peer), BanReason::UnrequestedData, &detail, now);
                    }
                }
                DownloadAction::Unneeded { .. } => {}
                DownloadAction::Discard { hash, .. } => {
                    self.drop_held(&hash);
                }
            }
        }
        if !pending.connected.is_empty() {
            // The commit comes before the event and the announcement: the embedder reading the
            // block and a peer asking for it right after must find it in the store.
            self.write_acked(batch, pending);
        }
    }

    /// A block from a peer, in memory or in a block file: kept for the store when the download
    /// asked for it, else dropped (and its sender scored when nobody asked for it).
    fn block_arrived(&mut self, id: PeerId, hash: Hash256, held: Held, now: Instant) {
        self.learn(id, hash);
        let for_embedder = self.embedder_blocks.remove(&hash).is_some();
        let Some(dl) = self.blocks.as_mut() else {
            return self.discard_held(hash, held);
        };
        let mut d = dl.block_received(id, hash, now);
        // Not kept when the scheduler did not ask for it (or has it already).
        let rejected = d.iter().any(|a| {
            matches!(a, DownloadAction::Unrequested { hash: h, .. } | DownloadAction::Unneeded { hash: h, .. } if *h == hash)
        });
        if for_embedder {
            d.retain(|a| !matches!(a, DownloadAction::Unrequested { .. }));
        }
        if rejected {
            self.discard_held(hash, held);
        } else if let Some(old) = self.buffer.insert(hash, held) {
            self.discard_held(hash, old);
        }
        if let Some(dl) = self.blocks.as_mut() {
            d.extend(dl.tick(now, self.chain.tree()));
        }
        self.download_actions(d, now);
    }

    /// A block over the file threshold arrived in a block file.
    pub(super) fn block_file_arrived(
        &mut self,
        id: PeerId,
        summary: crate::wire::stream::BlockSummary,
        file: crate::store::files::BlockFileRef,
        now: Instant,
    ) {
        let hash = summary.hash;
        if self.embedder_blocks.contains_key(&hash) {
            // the embedder gets a name of its own for the file (whatever becomes of ours)
            self.out.push_back(Output::EmbedderBlockFile {
                peer: id,
                summary,
                file,
            });
        }
        self.block_arrived(id, hash, Held::File(file), now);
    }

    /// A held block is dropped: its file too.
    fn drop_held(&mut self, hash: &Hash256) {
        if let Some(h) = self.buffer.remove(hash) {
            self.discard_held(*hash, h);
        }
    }

    fn discard_held(&mut self, hash: Hash256, held: Held) {
        if let Held::File(r) = held {
            self.out.push_back(Output::RemoveBlockFile(hash, r.id));
        }
    }

    /// Announces a block that became our tip to every peer that does not know it: a `headers`
    /// to peers that asked for them with `sendheaders`, an `inv` to the others.
    pub(super) fn announce_if_tip(&mut self, height: u32, hash: Hash256) {
        let tree = self.chain.tree();
        if tree.height() != height {
            return; // still catching up: only the newest block is news
        }
        let Some(header) = tree.get(&hash).map(|e| e.header) else {
            return;
        };
        let mut sends = Vec::new();
        for (id, p) in self.peers.iter_mut().filter(|(_, p)| p.ready) {
            if p.known.contains(&hash) {
                continue;
            }
            p.known.learn(hash);
            let m = if p.sendheaders {
                Message::Headers(vec![header])
            } else {
                Message::Inv(vec![Inventory {
                    kind: InvType::BLOCK,
                    hash,
                }])
            };
            sends.push((*id, m));
        }
        for (id, m) in sends {
            self.send(id, m);
        }
    }

    fn learn(&mut self, id: PeerId, h: Hash256) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.known.learn(h);
        }
    }

    pub(super) fn sync_connected(
        &mut self,
        id: PeerId,
        start_height: i32,
        services: u64,
        score: u32,
        now: Instant,
    ) {
        self.send(id, Message::SendHeaders);
        let a = self
            .sync
            .peer_connected(id, start_height, services, score, self.chain.tree(), now);
        if services & crate::wire::types::NODE_NETWORK != 0 {
            if let Some(d) = self.blocks.as_mut() {
                d.peer_connected(id, start_height.max(0) as u32, score);
            }
        }
        self.sync_actions(a, now);
    }

    pub(super) fn sync_disconnected(&mut self, id: PeerId, now: Instant) {
        let a = self.sync.peer_disconnected(id, self.chain.tree(), now);
        let d = self
            .blocks
            .as_mut()
            .map(|d| d.peer_disconnected(id, now))
            .unwrap_or_default();
        self.download_actions(d, now);
        self.sync_actions(a, now);
    }

    pub(super) fn sync_tick(&mut self, now: Instant) {
        let a = self.sync.tick(now, self.chain.tree());
        let d = match self.blocks.as_mut() {
            Some(d) => d.tick(now, self.chain.tree()),
            None => Vec::new(),
        };
        self.download_actions(d, now);
        self.sync_actions(a, now);
    }

    /// Header sync progress, and the height up to which blocks are stored without a gap
    /// (`None` in headers-only mode).
    pub(crate) fn sync_progress(&self) -> (SyncProgress, Option<u32>) {
        let blocks = self.blocks.as_ref().map(|d| d.ready_height());
        (self.sync.progress(self.chain.tree()), blocks)
    }

    /// A header of the best chain by height, or any known header by hash, with its height.
    pub(crate) fn header(&self, at: HeaderRef) -> Option<(BlockHeader, u32)> {
        let tree = self.chain.tree();
        let hash = match at {
            HeaderRef::Height(h) => tree.hash_at(h)?,
            HeaderRef::Hash(h) => h,
        };
        tree.get(&hash).map(|e| (e.header, e.height))
    }

    /// Headers into the tree (the valid prefix of `headers` is kept), their records written.
    fn insert_headers(
        &mut self,
        headers: &[BlockHeader],
        now: Instant,
    ) -> crate::store::chain::ChainUpdate {
        let mut batch = Batch::new();
        let t = self.now_u32(now);
        let u = self.chain.insert_headers_at(headers, &mut batch, t);
        self.tally.headers += u.added.len() as u64;
        self.write(batch);
        if u.new_tip != u.old_tip {
            self.set_height(u.new_tip.height);
        }
        u
    }

    /// Handles headers, block announcements, blocks and notfound; returns other messages (and
    /// inv/notfound, which the embedder may want too).
    pub(super) fn sync_message(
        &mut self,
        id: PeerId,
        msg: Message,
        now: Instant,
    ) -> Option<Message> {
        match msg {
            Message::Headers(headers) => {
                for h in headers.iter().rev().take(16) {
                    self.learn(id, h.hash());
                }
                // A full batch from the sync peer: the next one is asked for before this one is
                // validated, so the peer serves while we work; and the tree makes room for what
                // the peers claim is left, within reason.
                // (not while headers are pre-synced: a batch may not be stored)
                let ahead = if self.below_minimum_work() {
                    None
                } else {
                    self.sync
                        .headers_arriving(id, &headers, self.chain.tree(), now)
                };
                if let Some(a) = ahead {
                    let known = self.sync.progress(self.chain.tree()).best_known_height;
                    let left = known.saturating_sub(self.chain.tree().height()) as usize;
                    self.sync_actions(vec![a], now);
                    self.chain.reserve(left.min(MAX_RESERVE));
                    // The request must leave before the validation: the batch waits for the
                    // driver to carry the outputs out (see `NodeCore::poll_timeout`).
                    self.deferred = Some((id, headers));
                    return None;
                }
                self.validate_headers(id, headers, now);
                None
            }
            Message::SendHeaders => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.sendheaders = true;
                }
                None
            }
            Message::Inv(ref items) => {
                let mut unknown = Vec::new();
                for i in items.iter().filter(|i| i.kind == InvType::BLOCK) {
                    self.learn(id, i.hash);
                    if !self.chain.tree().contains(&i.hash) {
                        unknown.push(i.hash);
                    }
                }
                for h in unknown {
                    let a = self.sync.header_announced(id, h, self.chain.tree(), now);
                    self.sync_actions(a, now);
                }
                Some(msg)
            }
            Message::Block(b) => {
                let hash = b.hash();
                if self.embedder_blocks.contains_key(&hash) {
                    self.emit(Event::Message {
                        peer: id,
                        message: Message::Block(b.clone()),
                    });
                }
                self.block_arrived(id, hash, Held::Bytes(b.raw().clone()), now);
                None
            }
            Message::Reject(ref r) if r.code == REJECT_TOOBUSY => {
                // the SV node's "too busy": no block requests to it for a while, and what it
                // was asked for goes elsewhere (the embedder sees the reject too)
                let until = now + TOOBUSY_RETRY_DELAY;
                if let Some(dl) = self.blocks.as_mut() {
                    let d = dl.too_busy(id, now, until);
                    self.download_actions(d, now);
                }
                Some(msg)
            }
            Message::NotFound(ref items) => {
                let mut d = Vec::new();
                for i in items.iter().filter(|i| i.kind == InvType::BLOCK) {
                    if self
                        .embedder_blocks
                        .get(&i.hash)
                        .is_some_and(|(p, _)| *p == id)
                    {
                        self.embedder_blocks.remove(&i.hash);
                    }
                    if let Some(dl) = self.blocks.as_mut() {
                        d.extend(dl.not_found(id, i.hash, now));
                    }
                }
                self.download_actions(d, now);
                Some(msg)
            }
            other => Some(other),
        }
    }

    /// Validates and stores a batch of headers from `id` and acts on the outcome.
    pub(super) fn validate_headers(&mut self, id: PeerId, headers: Vec<BlockHeader>, now: Instant) {
        if self.below_minimum_work() && !self.presync_headers(id, &headers, now) {
            return;
        }
        if let Some(refused) = self.over_fork_budget(id, &headers) {
            if let crate::chain::HeaderError::ForkBudgetFull { headers: n, .. } = refused {
                // not stored, but offered: a peer that keeps offering cheap forks reaches its
                // own budget and is scored
                if let Some(p) = self.peers.get_mut(&id) {
                    p.fork_headers += n;
                }
            }
            let a =
                self.sync
                    .headers_received(id, &headers, Err((0, refused)), self.chain.tree(), now);
            self.sync_actions(a, now);
            return;
        }
        let forks_before = self.fork_headers();
        let u = self.insert_headers(&headers, now);
        if !self.presync.is_empty() && !self.below_minimum_work() {
            log::info!("the header chain reached the minimum chain work: pre-sync over");
            self.presync.clear();
        }
        let grown = self.fork_headers().saturating_sub(forks_before);
        if let Some(p) = self.peers.get_mut(&id) {
            p.fork_headers += grown;
        }
        let outcome = match &u.error {
            Some((i, e)) => Err((*i, e.clone())),
            None => Ok(()),
        };
        let a = self
            .sync
            .headers_received(id, &headers, outcome, self.chain.tree(), now);
        // The sender has at least the last header it sent: it may be asked for blocks up to
        // there (its start height from the handshake is out of date by now).
        let sender_height = headers
            .last()
            .and_then(|h| self.chain.tree().get(&h.hash()))
            .map(|e| e.height);
        if let Some(r) = &u.reorg {
            self.emit(Event::Reorg(Box::new(r.clone())));
        }
        let mut d = match &u.reorg {
            Some(r) => self.download_reorg(r.fork_point.height),
            None => Vec::new(),
        };
        if let Some(dl) = self.blocks.as_mut() {
            if let Some(h) = sender_height {
                dl.raise_peer_height(id, h);
            }
            d.extend(dl.tick(now, self.chain.tree()));
        }
        self.download_actions(d, now);
        self.sync_actions(a, now);
    }

    /// Whether our best chain has less than the network's minimum chain work (headers are then
    /// pre-synced before they are stored).
    pub(super) fn below_minimum_work(&self) -> bool {
        self.chain.tree().tip().2 < self.config.network.consensus.minimum_chain_work
    }

    /// A batch while we are below the minimum chain work: counted in the sender's pre-sync
    /// (see [`crate::fsm::presync`]) unless it shows enough work itself or is a download again
    /// of a shown chain. Returns whether the batch goes on to the tree.
    fn presync_headers(&mut self, id: PeerId, headers: &[BlockHeader], now: Instant) -> bool {
        use crate::fsm::presync::{Presync, PresyncRules, Step};
        let Some(first) = headers.first() else {
            return true;
        };
        let consensus = &self.config.network.consensus;
        let rules = PresyncRules {
            minimum_work: consensus.minimum_chain_work,
            anchor: consensus.anchor,
            pow_limit: self.config.network.pow_limit,
        };
        let tree = self.chain.tree();
        let full = headers.len() >= crate::fsm::sync::HEADERS_BATCH;
        let counting = self
            .presync
            .get(&id)
            .is_some_and(|p| p.is_counting() && p.last() == first.prev_hash);
        let result = if counting {
            let p = self.presync.get_mut(&id).expect("checked");
            p.count_batch(headers, full, &rules)
        } else if let Some(parent) = tree.get(&first.prev_hash) {
            if let Some(p) = self
                .presync
                .get_mut(&id)
                .filter(|p| p.continues(&first.prev_hash))
            {
                // a shown chain downloaded again: stored only if it is the one counted
                if let Err(e) = p.recheck(headers) {
                    self.presync.remove(&id);
                    return self.presync_failed(id, headers, e, now);
                }
                return true;
            }
            let mut work = parent.work;
            for h in headers {
                work = work.saturating_add(&h.work());
            }
            let anchored = rules
                .anchor
                .is_some_and(|a| headers.iter().any(|h| h.hash() == a));
            if work >= rules.minimum_work || anchored {
                return true; // shows enough by itself
            }
            if !self.presync.contains_key(&id) && self.presync.len() >= MAX_PRESYNC_PEERS {
                log::debug!("peer {id}: headers not counted, {MAX_PRESYNC_PEERS} peers pre-sync");
                let a = self.sync.presync_batch(id, None, self.chain.tree(), now);
                self.sync_actions(a, now);
                return false;
            }
            let salt = self.rng.next_u64();
            let mut p = Presync::new(first.prev_hash, parent.work, salt);
            let r = p.count_batch(headers, full, &rules);
            self.presync.insert(id, p);
            r
        } else {
            return true; // an orphan: the tree says so, and the sync asks for what is missing
        };
        match result {
            Err(e) => {
                self.presync.remove(&id);
                self.presync_failed(id, headers, e, now)
            }
            Ok(step) => {
                let next = match step {
                    Step::More(h) => Some(Some(h)),
                    Step::Shown => {
                        let count = self.presync.get(&id).map_or(0, |p| p.count());
                        log::info!(
                            "peer {id}: its headers show the minimum chain work after {count} \
                             headers; downloading them again to store them"
                        );
                        Some(None)
                    }
                    Step::Short => {
                        let count = self.presync.remove(&id).map_or(0, |p| p.count());
                        log::info!(
                            "peer {id}: its {count} headers end below the minimum chain work; \
                             none stored"
                        );
                        None
                    }
                };
                let a = self.sync.presync_batch(id, next, self.chain.tree(), now);
                self.sync_actions(a, now);
                false
            }
        }
    }

    /// A pre-sync that failed: the sender is scored as for the header at fault (or for a
    /// protocol violation: a chain that is not the one it showed, or no end to a cheap one).
    fn presync_failed(
        &mut self,
        id: PeerId,
        headers: &[BlockHeader],
        e: crate::fsm::presync::PresyncError,
        now: Instant,
    ) -> bool {
        use crate::fsm::presync::PresyncError;
        let (index, error) = match e {
            PresyncError::Header(i, e) => (i, e),
            PresyncError::TooLong | PresyncError::Mismatch(_) => {
                let i = match e {
                    PresyncError::Mismatch(i) => i,
                    _ => 0,
                };
                log::info!("peer {id}: {e}");
                (
                    i,
                    crate::chain::HeaderError::NotShown {
                        hash: headers[i.min(headers.len() - 1)].hash(),
                        why: e.to_string(),
                    },
                )
            }
        };
        let a =
            self.sync
                .headers_received(id, headers, Err((index, error)), self.chain.tree(), now);
        self.sync_actions(a, now);
        false
    }

    /// Headers in the tree off the best chain (forks).
    pub(super) fn fork_headers(&self) -> usize {
        let tree = self.chain.tree();
        tree.len() - (tree.height() as usize + 1)
    }

    /// A batch that would not make a new best chain, from a peer past its fork budget (or with
    /// the total used up), is refused before it is stored: the cost of a cheap fork stays
    /// bounded whatever its length. A batch that makes a new best chain is always taken, and
    /// headers the tree holds already count for nothing (a block announced again). Past its
    /// own budget the peer is scored ([`HeaderError::LowWorkFork`]); within it, with the total
    /// used up by others, it is not ([`HeaderError::ForkBudgetFull`]).
    ///
    /// [`HeaderError::LowWorkFork`]: crate::chain::HeaderError::LowWorkFork
    /// [`HeaderError::ForkBudgetFull`]: crate::chain::HeaderError::ForkBudgetFull
    fn over_fork_budget(
        &self,
        id: PeerId,
        headers: &[BlockHeader],
    ) -> Option<crate::chain::HeaderError> {
        let first = headers.first()?;
        let tree = self.chain.tree();
        let added = self.peers.get(&id).map_or(0, |p| p.fork_headers);
        let over = |n: usize| {
            (
                added + n > self.config.max_fork_headers_per_peer,
                self.fork_headers() + n > self.config.max_fork_headers,
            )
        };
        if over(headers.len()) == (false, false) {
            return None;
        }
        // (only now: hashing every header of every batch would cost the sync)
        let new = headers
            .iter()
            .filter(|h| tree.get(&h.hash()).is_none())
            .count();
        let (per_peer, total) = over(new);
        if new == 0 || (!per_peer && !total) {
            return None;
        }
        let first_hash = first.hash();
        let refused = if per_peer {
            crate::chain::HeaderError::LowWorkFork {
                hash: first_hash,
                added,
            }
        } else {
            crate::chain::HeaderError::ForkBudgetFull {
                hash: first_hash,
                headers: new,
            }
        };
        let Some(parent) = tree.get(&first.prev_hash) else {
            // past its budget, a peer that goes on with headers we did not store goes on with
            // its fork: scored each time (an honest peer's next batch connects)
            return per_peer.then_some(refused);
        };
        let mut work = parent.work;
        for h in headers {
            work = work.saturating_add(&h.work());
        }
        if work > tree.tip().2 {
            return None;
        }
        Some(refused)
    }

    /// After the best chain switched branches at `fork_height`: the blocks of the new branch
    /// we hold already, from the fork up as far as they are held, for the download to take as
    /// done ([`crate::fsm::download::BlockDownload::have`]). They were stored while their
    /// branch was not the best (a block we were handed that lost a race at equal work, then
    /// won it when the next block came on it; a branch we had and left): asked of peers
    /// instead, a block only we hold would be waited for for ever (a miner's own block behind
    /// a withheld header: the next block on it never connected).
    fn held_above(&self, fork_height: u32) -> Vec<(u32, Hash256)> {
        let tree = self.chain.tree();
        (fork_height.saturating_add(1)..=tree.height())
            .map_while(|h| tree.hash_at(h).map(|hash| (h, hash)))
            .take_while(|(_, hash)| self.has_block(hash))
            .collect()
    }

    /// The best chain switched branches at `fork_height`: the download drops what left it and
    /// takes the new branch's blocks we hold as done ([`Self::held_above`]). Nothing for a
    /// header client.
    fn download_reorg(&mut self, fork_height: u32) -> Vec<DownloadAction> {
        if self.blocks.is_none() {
            return Vec::new();
        }
        let held = self.held_above(fork_height);
        let Some(dl) = self.blocks.as_mut() else {
            return Vec::new();
        };
        let d = dl.reorg(fork_height);
        for (height, hash) in held {
            dl.have(height, hash);
        }
        d
    }

    /// Whether we hold a block (committed, or written and waiting for its commit).
    fn has_block(&self, h: &Hash256) -> bool {
        self.unconfirmed.contains_key(h)
            || self
                .read_ok(has_block(self.store.as_ref(), h), "has block")
                .unwrap_or(false)
    }

    /// A block's bytes (or its file), from memory while its commit is pending, else from the
    /// store.
    fn block_bytes(&self, h: &Hash256) -> Option<Held> {
        if let Some(b) = self.unconfirmed.get(h) {
            return Some(b.clone());
        }
        self.read_ok(
            with_block(self.store.as_ref(), h, |v| {
                v.map(|v| match StoredBlock::parse(v) {
                    StoredBlock::Inline(raw) => Held::Bytes(Bytes::copy_from_slice(raw)),
                    StoredBlock::File(r) => Held::File(r),
                })
            }),
            "block",
        )
        .flatten()
    }

    /// The headers after a locator that we serve: as the SV node answers from its active chain
    /// (blocks it holds), a node that stores blocks serves headers only as far as its blocks
    /// reach, so that nobody asks it for a block it cannot give yet; a header client serves
    /// every header.
    fn served_headers(&self, locator: &[Hash256], stop: &Hash256) -> Vec<BlockHeader> {
        let tree = self.chain.tree();
        let mut headers = tree.headers_after(locator, stop, MAX_HEADERS as usize);
        if let Some(ready) = self.blocks.as_ref().map(|d| d.ready_height()) {
            // below the download's ready height every block is held; above it (imported or
            // submitted blocks not yet counted) the store says
            let held = headers
                .iter()
                .take_while(|h| {
                    tree.get(&h.hash()).is_some_and(|e| e.height <= ready)
                        || self.has_block(&h.hash())
                })
                .count();
            headers.truncate(held);
        }
        headers
    }

    /// Serves what `id` asked for with `getdata`, in order, until a window of bytes (the
    /// read-pause mark, at most half the send queue limit) waits to go out; then the shard is asked to say when they have, and serving goes on from
    /// there (as the SV node stops serving while a peer's send buffer is full). So a peer that
    /// asks for many big blocks at once is served at the pace it reads, never dropped for it,
    /// and its queue holds at most a window and one block.
    pub(super) fn serve_more(&mut self, id: PeerId) {
        let mut missing = Vec::new();
        let window = self
            .config
            .read_pause_bytes
            .min(self.config.max_send_queue / 2);
        loop {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            if p.serve_waiting {
                break;
            }
            if p.served >= window && !p.serve_queue.is_empty() {
                p.serve_waiting = true;
                self.out.push_back(super::Output::NotifyDrained(id));
                break;
            }
            let Some(inv) = p.serve_queue.pop_front() else {
                break;
            };
            // BTC peers may ask for the witness form; BSV blocks have none, so the plain
            // serialization is the answer to both.
            let is_block = inv.kind == InvType::BLOCK || inv.kind == InvType::WITNESS_BLOCK;
            let raw = if is_block {
                self.block_bytes(&inv.hash)
            } else {
                None
            };
            let served = match raw {
                Some(Held::Bytes(r)) => Some(served_block(r, &inv.hash).map(Some)),
                Some(Held::File(r)) => {
                    // sent from its file by the shard, a piece at a time
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.served += r.size as usize;
                    }
                    self.out
                        .push_back(super::Output::SendBlockFile(id, inv.hash, r));
                    Some(Ok(None))
                }
                None => None,
            };
            match served {
                Some(Ok(payload)) => {
                    if let Some(payload) = payload {
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.served += payload.len();
                        }
                        self.send(
                            id,
                            Message::Unknown {
                                command: crate::wire::message::commands::BLOCK,
                                payload,
                            },
                        );
                    }
                    // the end of a getblocks batch: our tip makes the peer ask for more
                    let cont = self
                        .peers
                        .get_mut(&id)
                        .filter(|p| p.continuation == Some(inv.hash))
                        .map(|p| p.continuation.take())
                        .is_some();
                    if cont {
                        if let Some(tip) = self.served_tip(&inv.hash) {
                            self.send(
                                id,
                                Message::Inv(vec![Inventory {
                                    kind: InvType::BLOCK,
                                    hash: tip,
                                }]),
                            );
                        }
                    }
                }
                Some(Err(e)) => {
                    log::error!("stored block {}: {e}", inv.hash);
                    missing.push(inv);
                }
                None => missing.push(inv),
            }
        }
        if !missing.is_empty() {
            self.send(id, Message::NotFound(missing));
        }
    }

    /// Serves `getheaders`, `getblocks` and block `getdata`; returns any other message.
    pub(super) fn serve_message(&mut self, id: PeerId, msg: Message) -> Option<Message> {
        match msg {
            Message::GetHeaders(l) => {
                let headers = self.served_headers(&l.hashes, &l.stop);
                self.send(id, Message::Headers(headers));
                None
            }
            Message::GetHdrsEn(l) => {
                let headers = self.served_headers(&l.hashes, &l.stop);
                let tip = self.chain.tree().tip().0;
                let mut out = Vec::new();
                let mut size = 3;
                for h in headers {
                    let e = self.enriched(h, h.hash() == tip);
                    size += e.len();
                    // within the smallest limit a peer may have (1 MiB), but never empty
                    if !out.is_empty() && size > MAX_HDRSEN_BYTES {
                        break;
                    }
                    out.push(e);
                }
                self.send(id, Message::HdrsEn(out));
                None
            }
            Message::SendHdrsEn => {
                // permitted, not required: new blocks are announced as `sendheaders` asked
                None
            }
            Message::GetBlocks(l) => {
                // a header client holds no blocks
                if self.config.headers_only {
                    return None;
                }
                let tree = self.chain.tree();
                // an empty locator means "from genesis", as in Bitcoin
                let genesis: Vec<Hash256> = tree.hash_at(0).into_iter().collect();
                let locator = if l.hashes.is_empty() {
                    &genesis
                } else {
                    &l.hashes
                };
                let hashes: Vec<Hash256> = tree
                    .headers_after(locator, &l.stop, MAX_GETBLOCKS)
                    .iter()
                    .map(|h| h.hash())
                    .collect();
                // only blocks we hold (headers may be ahead of the blocks while they download)
                let inv: Vec<Inventory> = hashes
                    .into_iter()
                    .take_while(|h| self.has_block(h))
                    .map(|hash| Inventory {
                        kind: InvType::BLOCK,
                        hash,
                    })
                    .collect();
                let continuation = inv
                    .last()
                    .filter(|_| inv.len() == MAX_GETBLOCKS)
                    .map(|i| i.hash);
                if let Some(p) = self.peers.get_mut(&id) {
                    p.continuation = continuation;
                }
                if !inv.is_empty() {
                    self.send(id, Message::Inv(inv));
                }
                None
            }
            Message::GetData(items) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    // bounded by what one getdata can hold: a peer sends the next only after
                    // reading what it asked for (or its socket is no longer read)
                    let room = MAX_SERVE_QUEUE.saturating_sub(p.serve_queue.len());
                    if items.len() > room {
                        log::info!(
                            "peer {id}: {} block requests beyond the queue dropped",
                            items.len() - room
                        );
                    }
                    p.serve_queue.extend(items.into_iter().take(room));
                }
                self.serve_more(id);
                None
            }
            other => Some(other),
        }
    }

    /// `header` with its transaction count, coinbase and the coinbase's merkle proof when we
    /// hold the block (else the header alone, as the SV node answers for blocks it lacks).
    fn enriched(&self, header: BlockHeader, no_more: bool) -> crate::wire::EnrichedHeader {
        let hash = header.hash();
        let held = self.block_bytes(&hash);
        if let Some(Held::File(r)) = held {
            // a block in a file is not read by the core: its count without the coinbase
            return crate::wire::EnrichedHeader {
                header,
                tx_count: r.tx_count,
                no_more,
                coinbase: None,
                miner_info: None,
            };
        }
        let block = match held {
            Some(Held::Bytes(raw)) => <Block as crate::wire::Decode>::decode_all(raw).ok(),
            _ => None,
        };
        let (tx_count, coinbase) = match block {
            Some(b) if !b.txs.is_empty() => {
                let txids: Vec<Hash256> = b.txs.iter().map(|t| t.txid()).collect();
                let proof = crate::wire::MerkleProof::for_index(&txids, 0, hash);
                let tx = b.txs[0].clone();
                (
                    b.txs.len() as u64,
                    Some(crate::wire::ProvenTx { tx, proof }),
                )
            }
            _ => (0, None),
        };
        crate::wire::EnrichedHeader {
            header,
            tx_count,
            no_more,
            coinbase,
            miner_info: None,
        }
    }

    /// The highest best-chain block we hold above `from` (a best-chain block we hold), if any.
    /// Blocks are stored in height order, so a binary search between `from` and the header tip
    /// finds it in a few store reads.
    fn served_tip(&self, from: &Hash256) -> Option<Hash256> {
        let tree = self.chain.tree();
        let (mut lo, mut hi) = (
            tree.get(from).filter(|e| e.in_best_chain)?.height,
            tree.height(),
        );
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let held = tree.hash_at(mid).is_some_and(|h| self.has_block(&h));
            if held {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        tree.hash_at(lo).filter(|tip| tip != from)
    }

    /// A block handed in by the embedder (mined or received elsewhere): header into the chain,
    /// block written; once committed the download learns it is stored and it is announced like
    /// any new tip. Returns its height.
    pub(crate) fn submit_block(&mut self, block: Block, now: Instant) -> Result<u32, String> {
        let hash = block.hash();
        if block.compute_merkle_root() != block.header.merkle_root {
            return Err(format!(
                "block {hash}: merkle root does not match its transactions"
            ));
        }
        self.submit_held(block.header, Held::Bytes(block.raw().clone()), now)
    }

    /// A block the embedder handed in as a file, checked and moved into the block files.
    pub(crate) fn submit_block_file(
        &mut self,
        header: BlockHeader,
        file: crate::store::files::BlockFileRef,
        now: Instant,
    ) -> Result<u32, String> {
        let r = self.submit_held(header, Held::File(file), now);
        if r.is_err() {
            self.out
                .push_back(super::Output::RemoveBlockFile(header.hash(), file.id));
        }
        r
    }

    fn submit_held(
        &mut self,
        header: BlockHeader,
        held: Held,
        now: Instant,
    ) -> Result<u32, String> {
        let hash = header.hash();
        let mut batch = Batch::new();
        let t = self.now_u32(now);
        let u = self.chain.insert_headers_at(&[header], &mut batch, t);
        if let Some((_, e)) = u.error {
            return Err(format!("block {hash}: {e}"));
        }
        let height = self
            .chain
            .tree()
            .get(&hash)
            .map(|e| e.height)
            .ok_or("header not in the tree")?;
        if u.new_tip != u.old_tip {
            self.set_height(u.new_tip.height);
        }
        let d = match &u.reorg {
            Some(r) => self.download_reorg(r.fork_point.height),
            None => Vec::new(),
        };
        self.download_actions(d, now);
        match &held {
            Held::Bytes(raw) => put_block(&mut batch, &hash, raw.clone()),
            Held::File(r) => put_block_file(&mut batch, &hash, r),
        }
        self.unconfirmed.insert(hash, held);
        self.write_acked(
            batch,
            PendingCommit {
                held: vec![hash],
                submitted: Some((height, hash)),
                ..Default::default()
            },
        );
        Ok(height)
    }

    /// A submitted block is committed: the download counts it as stored, which may make it (and
    /// blocks after it) ready.
    pub(super) fn submitted_committed(&mut self, height: u32, hash: Hash256, now: Instant) {
        let mut d = Vec::new();
        if let Some(dl) = self.blocks.as_mut() {
            dl.have(height, hash);
            d.extend(dl.tick(now, self.chain.tree()));
        }
        self.download_actions(d, now);
        if self.blocks.is_none() {
            self.announce_if_tip(height, hash);
        }
    }

    /// Imports decoded blocks (a block file): headers into the chain, blocks written with an
    /// acknowledgement. Returns the blocks accepted, the new tip height, and the error of the
    /// first refused block.
    pub(crate) fn import_blocks(
        &mut self,
        blocks: &[Block],
        now: Instant,
    ) -> (usize, u32, Option<(usize, String)>) {
        let headers: Vec<BlockHeader> = blocks.iter().map(|b| b.header).collect();
        let mut batch = Batch::new();
        let t = self.now_u32(now);
        let update = self.chain.insert_headers_at(&headers, &mut batch, t);
        let stored = match &update.error {
            Some((i, _)) => *i,
            None => blocks.len(),
        };
        let mut held = Vec::new();
        for b in &blocks[..stored] {
            let h = b.hash();
            put_block(&mut batch, &h, b.raw().clone());
            self.unconfirmed.insert(h, Held::Bytes(b.raw().clone()));
            held.push(h);
        }
        self.write_acked(
            batch,
            PendingCommit {
                held,
                ..Default::default()
            },
        );
        if let Some(dl) = self.blocks.as_mut() {
            for (i, b) in blocks[..stored].iter().enumerate() {
                dl.have(update.old_tip.height + 1 + i as u32, b.hash());
            }
        }
        let height = update.new_tip.height;
        self.set_height(height);
        if self.blocks.is_none() && stored > 0 {
            // header-only: the headers are the news (a full node announces the blocks as they
            // connect)
            self.announce_if_tip(height, update.new_tip.hash);
        }
        (
            stored,
            height,
            update.error.map(|(i, e)| (i, e.to_string())),
        )
    }
}

/// Block requests of one peer waiting to be served, at most (a full 2 MiB `getdata`).
const MAX_SERVE_QUEUE: usize = 58_254;

/// A stored block's bytes, to be sent as they are: every stored block was decoded and checked
/// when it was stored, so it is not parsed again (that cost as much as the rest of serving a
/// 1 MB block); only its header is checked to be the block asked for.
fn served_block(raw: Bytes, hash: &Hash256) -> Result<Bytes, String> {
    let header = raw
        .get(..crate::wire::block::HEADER_LEN)
        .ok_or_else(|| format!("{} bytes, shorter than a header", raw.len()))?;
    let h = Hash256::sha256d(header);
    if h != *hash {
        return Err(format!("stored under another hash ({h})"));
    }
    Ok(raw)
}
