//! Serving what the store holds: `getheaders` (up to 2,000 best-chain headers after the
//! locator), `getblocks` (an `inv` of up to 500 hashes of best-chain blocks we hold), and
//! `getdata` (blocks from the store, `notfound` for the rest). Runs on the workers, never on a
//! shard loop; answers go out through the peer's shard.
//!
//! `getblocks` is how bcoin (and other clients without headers-first sync) download: an answer
//! cut at 500 remembers its last block, and when the peer asks for that block it is followed by
//! an `inv` of our tip, which the peer does not know and so answers with the next `getblocks`
//! (Bitcoin's `hashContinue`). Without it such a peer stops after 500 blocks.

use crate::engine::{PeerId, Shared};
use crate::store::records::{has_block, with_block};
use crate::wire::message::MAX_HEADERS;
use crate::wire::{Hash256, InvType, Inventory, Message};
use bytes::Bytes;

/// Most hashes answered to one `getblocks`.
pub const MAX_GETBLOCKS: usize = 500;

/// Handles the requests it serves; returns any other message untouched.
pub(crate) fn on_message(shared: &Shared, id: PeerId, msg: Message) -> Option<Message> {
    match msg {
        Message::GetHeaders(l) => {
            let headers = shared
                .chain
                .lock()
                .expect("chain lock")
                .tree()
                .headers_after(&l.hashes, &l.stop, MAX_HEADERS as usize);
            shared.send_to_peer(id, Message::Headers(headers));
            None
        }
        Message::GetBlocks(l) => {
            // a header client holds no blocks
            if shared.config.headers_only {
                return None;
            }
            let hashes: Vec<Hash256> = {
                let chain = shared.chain.lock().expect("chain lock");
                let tree = chain.tree();
                // an empty locator means "from genesis", as in Bitcoin
                let genesis: Vec<Hash256> = tree.hash_at(0).into_iter().collect();
                let locator = if l.hashes.is_empty() {
                    &genesis
                } else {
                    &l.hashes
                };
                tree.headers_after(locator, &l.stop, MAX_GETBLOCKS)
                    .iter()
                    .map(|h| h.hash())
                    .collect()
            };
            // only blocks we hold (headers may be ahead of the blocks while they download)
            let store = shared.writer.store().clone();
            let inv: Vec<Inventory> = hashes
                .into_iter()
                .take_while(|h| has_block(store.as_ref(), h).unwrap_or(false))
                .map(|hash| Inventory {
                    kind: InvType::BLOCK,
                    hash,
                })
                .collect();
            let continuation = inv
                .last()
                .filter(|_| inv.len() == MAX_GETBLOCKS)
                .map(|i| i.hash);
            set_continuation(shared, id, continuation);
            if !inv.is_empty() {
                shared.send_to_peer(id, Message::Inv(inv));
            }
            None
        }
        Message::GetData(items) => {
            let store = shared.writer.store().clone();
            let mut missing = Vec::new();
            for inv in items {
                // BTC peers may ask for the witness form; BSV blocks have none, so the plain
                // serialization is the answer to both.
                let is_block = inv.kind == InvType::BLOCK || inv.kind == InvType::WITNESS_BLOCK;
                let raw = if is_block {
                    with_block(store.as_ref(), &inv.hash, |v| v.map(Bytes::copy_from_slice))
                        .ok()
                        .flatten()
                } else {
                    None
                };
                match raw.map(|r| served_block(r, &inv.hash)) {
                    Some(Ok(payload)) => {
                        shared.send_to_peer(
                            id,
                            Message::Unknown {
                                command: crate::wire::message::commands::BLOCK,
                                payload,
                            },
                        );
                        // the end of a getblocks batch: our tip makes the peer ask for more
                        if take_continuation(shared, id, &inv.hash) {
                            if let Some(tip) = served_tip(shared, &inv.hash) {
                                shared.send_to_peer(
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
                shared.send_to_peer(id, Message::NotFound(missing));
            }
            None
        }
        other => Some(other),
    }
}

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

/// Remembers (or with `None` forgets) the block whose request makes us announce our tip to `id`.
fn set_continuation(shared: &Shared, id: PeerId, hash: Option<Hash256>) {
    // Entries live from the peer's handshake to its disconnection, which frame its messages.
    if let Some(p) = shared.relay.lock().expect("relay lock").get_mut(&id) {
        p.continuation = hash;
    }
}

/// Whether `hash` is `id`'s continuation block; if so it is forgotten (answered once).
fn take_continuation(shared: &Shared, id: PeerId, hash: &Hash256) -> bool {
    let mut relay = shared.relay.lock().expect("relay lock");
    match relay.get_mut(&id) {
        Some(p) if p.continuation.as_ref() == Some(hash) => {
            p.continuation = None;
            true
        }
        _ => false,
    }
}

/// The highest best-chain block we hold above `from` (a best-chain block we hold), if any.
/// Blocks are stored in height order, so a binary search between `from` and the header tip
/// finds it in a few store reads.
fn served_tip(shared: &Shared, from: &Hash256) -> Option<Hash256> {
    let store = shared.writer.store().clone();
    let chain = shared.chain.lock().expect("chain lock");
    let tree = chain.tree();
    let (mut lo, mut hi) = (
        tree.get(from).filter(|e| e.in_best_chain)?.height,
        tree.height(),
    );
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let held = tree
            .hash_at(mid)
            .is_some_and(|h| has_block(store.as_ref(), &h).unwrap_or(false));
        if held {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    tree.hash_at(lo).filter(|tip| tip != from)
}
