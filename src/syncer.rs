//! Drives chain sync from the workers: the header-first [`HeaderSync`] and the parallel
//! [`BlockDownload`] decide, this module carries their decisions out (messages, scores,
//! disconnects), stores headers and blocks, and raises block events in chain order.
//!
//! Locks are always taken in the order chain, sync, download, blocks.

use crate::engine::{Event, PeerId, Shared};
use crate::fsm::download::{block_inventory, BlockDownload, DownloadAction};
use crate::fsm::sync::{HeaderSync, SyncAction};
use crate::store::records::put_block;
use crate::store::Batch;
use crate::wire::{Block, Hash256, InvType, Message};
use std::collections::HashMap;
use std::time::Instant;

/// Sync state kept by the engine.
pub(crate) struct SyncState {
    pub(crate) headers: HeaderSync,
    /// `None` in headers-only mode.
    pub(crate) blocks: Option<BlockDownload>,
    /// Blocks received, waiting for their turn in chain order.
    pub(crate) buffer: HashMap<Hash256, Block>,
}

pub(crate) fn ip_of(shared: &Shared, id: PeerId) -> Option<std::net::IpAddr> {
    shared
        .ready
        .lock()
        .expect("ready lock")
        .get(&id)
        .map(|(a, _)| a.ip())
}

fn sync_actions(shared: &Shared, actions: Vec<SyncAction>) {
    for a in actions {
        match a {
            SyncAction::SendGetHeaders { .. } => {
                if let Some((peer, m)) = a.to_message(crate::config::PROTOCOL_VERSION as u32) {
                    shared.send_to_peer(peer, m);
                }
            }
            SyncAction::Misbehaved {
                peer,
                reason,
                detail,
            } => {
                if let Some(ip) = ip_of(shared, peer) {
                    shared.misbehaving(ip, Some(peer), reason, &detail);
                }
            }
            SyncAction::Disconnect { peer, reason } => {
                log::info!("peer {peer}: {reason}");
                shared.disconnect_peer(peer);
            }
            SyncAction::SyncDone { height } => {
                log::info!("headers synced to height {height}");
                shared.emit(Event::HeadersSynced { height });
            }
        }
    }
}

/// Carries out download decisions; `Ready` blocks are stored and announced in chain order.
#[must_use = "announce the returned blocks once the locks are released"]
fn download_actions(
    shared: &Shared,
    st: &mut SyncState,
    actions: Vec<DownloadAction>,
) -> Vec<(u32, Hash256)> {
    let mut batch = Batch::new();
    let mut ready = Vec::new();
    for a in actions {
        match a {
            DownloadAction::Request { peer, hashes } => {
                shared.send_to_peer(peer, Message::GetData(block_inventory(&hashes)))
            }
            DownloadAction::Ready { height, hash } => {
                if let Some(b) = st.buffer.remove(&hash) {
                    put_block(&mut batch, &hash, b.raw().clone());
                }
                ready.push((height, hash));
            }
            DownloadAction::Stalled { peer, hash } => {
                log::info!("peer {peer} stalled on block {hash}: disconnecting");
                shared.disconnect_peer(peer);
            }
            DownloadAction::Unrequested { peer, hash } => {
                st.buffer.remove(&hash);
                if let Some(ip) = ip_of(shared, peer) {
                    shared.misbehaving(
                        ip,
                        Some(peer),
                        crate::fsm::bans::BanReason::UnrequestedData,
                        &format!("block {hash}"),
                    );
                }
            }
            DownloadAction::Unneeded { hash, .. } | DownloadAction::Discard { hash, .. } => {
                st.buffer.remove(&hash);
            }
        }
    }
    // Committed before the event and the announcement: the embedder reading the block and a
    // peer asking for it right after must find it in the store.
    if !batch.is_empty() {
        if let Err(e) = shared.writer.write(batch) {
            log::error!(
                "blocks {:?} could not be stored: {e}",
                ready.iter().map(|(h, _)| h).collect::<Vec<_>>()
            );
            return Vec::new();
        }
    }
    for (height, hash) in &ready {
        shared.emit(Event::BlockConnected {
            height: *height,
            hash: *hash,
        });
    }
    ready
}

/// Announces the newest of `ready` if it is the tip. Call with no lock held.
fn announce(shared: &Shared, ready: Vec<(u32, Hash256)>) {
    if let Some((height, hash)) = ready.last() {
        announce_if_tip(shared, *height, *hash);
    }
}

/// Most block hashes remembered per peer as already known to it.
const KNOWN_PER_PEER: usize = 4096;
/// Most headers room is made for ahead of a sync (~1M headers: ~170 MB of tree, untouched until
/// used), whatever height peers claim.
const MAX_RESERVE: usize = 1 << 20;

/// What we know of a peer for relay: whether it wants headers announcements, and which blocks
/// it already has (never announced back to it).
#[derive(Default)]
pub(crate) struct RelayPeer {
    sendheaders: bool,
    known: std::collections::VecDeque<Hash256>,
    /// `known` as a set (a linear search of 4,096 hashes for each of a batch's last 16 headers
    /// cost a sixth of a header sync's worker time).
    known_set: std::collections::HashSet<Hash256>,
    /// The last block of a `getblocks` answer cut at its limit (Bitcoin's `hashContinue`):
    /// when the peer asks for it, [`crate::serve`] announces our tip so it asks for more.
    pub(crate) continuation: Option<Hash256>,
}

impl RelayPeer {
    fn knows(&self, h: &Hash256) -> bool {
        self.known_set.contains(h)
    }
    fn learn(&mut self, h: Hash256) {
        if self.known_set.insert(h) {
            if self.known.len() >= KNOWN_PER_PEER {
                if let Some(old) = self.known.pop_front() {
                    self.known_set.remove(&old);
                }
            }
            self.known.push_back(h);
        }
    }
}

fn learn(shared: &Shared, id: PeerId, h: Hash256) {
    shared
        .relay
        .lock()
        .expect("relay lock")
        .entry(id)
        .or_default()
        .learn(h);
}

/// Announces a block that became our tip to every peer that does not know it: a `headers` to
/// peers that asked for them with `sendheaders`, an `inv` to the others.
fn announce_if_tip(shared: &Shared, height: u32, hash: Hash256) {
    let header = {
        let chain = shared.chain.lock().expect("chain lock");
        if chain.tree().height() != height {
            return; // still catching up: only the newest block is news
        }
        match chain.tree().get(&hash) {
            Some(e) => e.header,
            None => return,
        }
    };
    let mut relay = shared.relay.lock().expect("relay lock");
    for (id, r) in relay.iter_mut() {
        if r.knows(&hash) {
            continue;
        }
        r.learn(hash);
        let m = if r.sendheaders {
            Message::Headers(vec![header])
        } else {
            Message::Inv(vec![crate::wire::Inventory {
                kind: InvType::BLOCK,
                hash,
            }])
        };
        shared.send_to_peer(*id, m);
    }
}

/// A block handed in by the embedder (mined or received elsewhere): header into the chain,
/// block into the store, then announced like any new tip.
pub(crate) fn submit_block(shared: &Shared, block: Block) -> Result<u32, String> {
    let hash = block.hash();
    if block.compute_merkle_root() != block.header.merkle_root {
        return Err(format!(
            "block {hash}: merkle root does not match its transactions"
        ));
    }
    let mut chain = shared.chain.lock().expect("chain lock");
    let mut batch = Batch::new();
    let u = chain.insert_headers(&[block.header], &mut batch);
    if let Some((_, e)) = u.error {
        return Err(format!("block {hash}: {e}"));
    }
    let height = chain
        .tree()
        .get(&hash)
        .map(|e| e.height)
        .ok_or("header not in the tree")?;
    put_block(&mut batch, &hash, block.raw().clone());
    shared.writer.write(batch).map_err(|e| e.to_string())?;
    if u.new_tip != u.old_tip {
        shared.set_start_height(u.new_tip.height);
    }
    let mut st = shared.sync.lock().expect("sync lock");
    let mut d = Vec::new();
    if let Some(dl) = st.blocks.as_mut() {
        if let Some(r) = &u.reorg {
            d.extend(dl.reorg(r.fork_point.height));
        }
        dl.have(height, hash);
        d.extend(dl.tick(Instant::now(), chain.tree()));
    }
    drop(chain);
    let ann = download_actions(shared, &mut st, d);
    drop(st);
    announce(shared, ann);
    Ok(height)
}

/// A handshake completed.
pub(crate) fn on_connected(
    shared: &Shared,
    id: PeerId,
    start_height: i32,
    services: u64,
    score: u32,
) {
    shared
        .relay
        .lock()
        .expect("relay lock")
        .insert(id, RelayPeer::default());
    shared.send_to_peer(id, Message::SendHeaders);
    let now = Instant::now();
    let chain = shared.chain.lock().expect("chain lock");
    let mut st = shared.sync.lock().expect("sync lock");
    let a = st
        .headers
        .peer_connected(id, start_height, services, score, chain.tree(), now);
    if services & crate::wire::types::NODE_NETWORK != 0 {
        if let Some(d) = st.blocks.as_mut() {
            d.peer_connected(id, start_height.max(0) as u32, score);
        }
    }
    drop(st);
    drop(chain);
    sync_actions(shared, a);
}

/// A connection ended.
pub(crate) fn on_disconnected(shared: &Shared, id: PeerId) {
    shared.relay.lock().expect("relay lock").remove(&id);
    let now = Instant::now();
    let chain = shared.chain.lock().expect("chain lock");
    let mut st = shared.sync.lock().expect("sync lock");
    let a = st.headers.peer_disconnected(id, chain.tree(), now);
    let d = st
        .blocks
        .as_mut()
        .map(|d| d.peer_disconnected(id, now))
        .unwrap_or_default();
    let ann = download_actions(shared, &mut st, d);
    drop(st);
    drop(chain);
    announce(shared, ann);
    sync_actions(shared, a);
}

/// Timers.
pub(crate) fn tick(shared: &Shared) {
    let now = Instant::now();
    let chain = shared.chain.lock().expect("chain lock");
    let mut st = shared.sync.lock().expect("sync lock");
    let a = st.headers.tick(now, chain.tree());
    let d = st
        .blocks
        .as_mut()
        .map(|d| d.tick(now, chain.tree()))
        .unwrap_or_default();
    let ann = download_actions(shared, &mut st, d);
    drop(st);
    drop(chain);
    announce(shared, ann);
    sync_actions(shared, a);
}

/// Handles headers, block announcements, blocks and notfound; returns other messages (and
/// inv/notfound, which the embedder may want too).
pub(crate) fn on_message(shared: &Shared, id: PeerId, msg: Message) -> Option<Message> {
    let now = Instant::now();
    match msg {
        Message::Headers(headers) => {
            for h in headers.iter().rev().take(16) {
                learn(shared, id, h.hash());
            }
            let mut chain = shared.chain.lock().expect("chain lock");
            // A full batch from the sync peer: the next one is asked for before this one is
            // validated, so the peer serves while we work; and the tree makes room for what the
            // peers claim is left, within reason (a start height is the peer's word; a no-op
            // when there is room already).
            let (ahead, left) = {
                let mut st = shared.sync.lock().expect("sync lock");
                let tree = chain.tree();
                let ahead = st.headers.headers_arriving(id, &headers, tree, now);
                let known = st.headers.progress(tree).best_known_height;
                (ahead, known.saturating_sub(tree.height()) as usize)
            };
            if let Some(a) = ahead {
                sync_actions(shared, vec![a]);
                chain.reserve(left.min(MAX_RESERVE));
            }
            let mut batch = Batch::new();
            let u = chain.insert_headers(&headers, &mut batch);
            if !batch.is_empty() {
                shared.writer.submit(batch);
            }
            let outcome = match &u.error {
                Some((i, e)) => Err((*i, e.clone())),
                None => Ok(()),
            };
            if u.new_tip != u.old_tip {
                shared.set_start_height(u.new_tip.height);
            }
            let mut st = shared.sync.lock().expect("sync lock");
            let a = st
                .headers
                .headers_received(id, &headers, outcome, chain.tree(), now);
            let mut d = Vec::new();
            // The sender has at least the last header it sent: it may be asked for blocks up
            // to there (its start height from the handshake is out of date by now).
            let sender_height = headers
                .last()
                .and_then(|h| chain.tree().get(&h.hash()))
                .map(|e| e.height);
            if let Some(dl) = st.blocks.as_mut() {
                if let Some(h) = sender_height {
                    dl.raise_peer_height(id, h);
                }
                if let Some(r) = &u.reorg {
                    d.extend(dl.reorg(r.fork_point.height));
                    shared.emit(Event::Reorg(Box::new(r.clone())));
                }
                d.extend(dl.tick(now, chain.tree()));
            }
            let ann = download_actions(shared, &mut st, d);
            drop(st);
            drop(chain);
            announce(shared, ann);
            sync_actions(shared, a);
            None
        }
        Message::SendHeaders => {
            shared
                .relay
                .lock()
                .expect("relay lock")
                .entry(id)
                .or_default()
                .sendheaders = true;
            None
        }
        Message::Inv(ref items) => {
            for i in items.iter().filter(|i| i.kind == InvType::BLOCK) {
                learn(shared, id, i.hash);
            }
            let unknown: Vec<Hash256> = {
                let chain = shared.chain.lock().expect("chain lock");
                items
                    .iter()
                    .filter(|i| i.kind == InvType::BLOCK && !chain.tree().contains(&i.hash))
                    .map(|i| i.hash)
                    .collect()
            };
            for h in unknown {
                let chain = shared.chain.lock().expect("chain lock");
                let mut st = shared.sync.lock().expect("sync lock");
                let a = st.headers.header_announced(id, h, chain.tree(), now);
                drop(st);
                drop(chain);
                sync_actions(shared, a);
            }
            Some(msg)
        }
        Message::Block(b) => {
            let hash = b.hash();
            learn(shared, id, hash);
            let for_embedder = shared
                .embedder_blocks
                .lock()
                .expect("embedder requests lock")
                .remove(&hash);
            if for_embedder {
                shared.emit(Event::Message {
                    peer: id,
                    message: Message::Block(b.clone()),
                });
            }
            let chain = shared.chain.lock().expect("chain lock");
            let mut st = shared.sync.lock().expect("sync lock");
            let dl = st.blocks.as_mut()?;
            let mut d = dl.block_received(id, hash, now);
            // Not kept when the scheduler did not ask for it (or has it already).
            let rejected = d.iter().any(|a| {
                matches!(a, DownloadAction::Unrequested { hash: h, .. } | DownloadAction::Unneeded { hash: h, .. } if *h == hash)
            });
            if for_embedder {
                d.retain(|a| !matches!(a, DownloadAction::Unrequested { .. }));
            }
            if !rejected {
                st.buffer.insert(hash, b);
            }
            let mut all = d;
            if let Some(dl) = st.blocks.as_mut() {
                all.extend(dl.tick(now, chain.tree()));
            }
            let ann = download_actions(shared, &mut st, all);
            drop(st);
            drop(chain);
            announce(shared, ann);
            None
        }
        Message::NotFound(ref items) => {
            let mut st = shared.sync.lock().expect("sync lock");
            let mut d = Vec::new();
            if let Some(dl) = st.blocks.as_mut() {
                for i in items.iter().filter(|i| i.kind == InvType::BLOCK) {
                    d.extend(dl.not_found(id, i.hash, now));
                }
            }
            let ann = download_actions(shared, &mut st, d);
            drop(st);
            announce(shared, ann);
            Some(msg)
        }
        other => Some(other),
    }
}

/// The highest height from 1 up whose block is stored without a gap.
pub(crate) fn stored_up_to(
    shared_chain: &crate::store::chain::ChainDb,
    store: &dyn crate::store::Store,
) -> u32 {
    let tree = shared_chain.tree();
    let mut h = 0;
    while let Some(hash) = tree.hash_at(h + 1) {
        if !crate::store::records::has_block(store, &hash).unwrap_or(false) {
            break;
        }
        h += 1;
    }
    h
}
