//! Serving what the store holds: `getheaders` (up to 2,000 best-chain headers after the
//! locator), `getblocks` (an `inv` of up to 500 block hashes), and `getdata` (blocks from the
//! store, `notfound` for the rest). Runs on the workers, never on a shard loop; answers go out
//! through the peer's shard.

use crate::engine::{PeerId, Shared};
use crate::store::records::with_block;
use crate::wire::message::MAX_HEADERS;
use crate::wire::{Block, Decode, InvType, Inventory, Message};
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
            let headers = shared
                .chain
                .lock()
                .expect("chain lock")
                .tree()
                .headers_after(&l.hashes, &l.stop, MAX_GETBLOCKS);
            if !headers.is_empty() {
                let inv = headers
                    .iter()
                    .map(|h| Inventory {
                        kind: InvType::BLOCK,
                        hash: h.hash(),
                    })
                    .collect();
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
                match raw.map(Block::decode_all) {
                    Some(Ok(b)) => shared.send_to_peer(id, Message::Block(b)),
                    Some(Err(e)) => {
                        log::error!("stored block {} does not decode: {e}", inv.hash);
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
