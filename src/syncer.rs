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

fn ip_of(shared: &Shared, id: PeerId) -> Option<std::net::IpAddr> {
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
fn download_actions(shared: &Shared, st: &mut SyncState, actions: Vec<DownloadAction>) {
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
    if !batch.is_empty() {
        shared.writer.submit(batch);
    }
    for (height, hash) in ready {
        shared.emit(Event::BlockConnected { height, hash });
    }
}

/// A handshake completed.
pub(crate) fn on_connected(
    shared: &Shared,
    id: PeerId,
    start_height: i32,
    services: u64,
    score: u32,
) {
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
    let now = Instant::now();
    let chain = shared.chain.lock().expect("chain lock");
    let mut st = shared.sync.lock().expect("sync lock");
    let a = st.headers.peer_disconnected(id, chain.tree(), now);
    let d = st
        .blocks
        .as_mut()
        .map(|d| d.peer_disconnected(id, now))
        .unwrap_or_default();
    download_actions(shared, &mut st, d);
    drop(st);
    drop(chain);
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
    download_actions(shared, &mut st, d);
    drop(st);
    drop(chain);
    sync_actions(shared, a);
}

/// Handles headers, block announcements, blocks and notfound; returns other messages (and
/// inv/notfound, which the embedder may want too).
pub(crate) fn on_message(shared: &Shared, id: PeerId, msg: Message) -> Option<Message> {
    let now = Instant::now();
    match msg {
        Message::Headers(headers) => {
            let mut chain = shared.chain.lock().expect("chain lock");
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
            if let Some(dl) = st.blocks.as_mut() {
                if let Some(r) = &u.reorg {
                    d.extend(dl.reorg(r.fork_point.height));
                    shared.emit(Event::Reorg(Box::new(r.clone())));
                }
                d.extend(dl.tick(now, chain.tree()));
            }
            download_actions(shared, &mut st, d);
            drop(st);
            drop(chain);
            sync_actions(shared, a);
            None
        }
        Message::Inv(ref items) => {
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
            download_actions(shared, &mut st, all);
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
            download_actions(shared, &mut st, d);
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
