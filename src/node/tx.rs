//! Transaction relay in the core: the pure [`crate::fsm::txrelay::TxRelay`] decides, this
//! carries its decisions out (getdata, tx, notfound, reject, scores, events).

use super::NodeCore;
use crate::event::Event;
use crate::fsm::bans::BanReason;
use crate::fsm::PeerId;
use crate::wire::{Hash256, InvType, Inventory, Message, Reject, Transaction};
use std::time::Instant;

impl NodeCore {
    /// Handles tx announcements, transactions, tx getdata and notfound; returns other messages
    /// (and the non-tx part of inv/getdata/notfound) untouched.
    pub(super) fn tx_message(&mut self, id: PeerId, msg: Message, now: Instant) -> Option<Message> {
        match msg {
            Message::Inv(items) => {
                let (want, rest) = self.txs.on_inv(id, items, now);
                if !want.is_empty() {
                    self.send(id, Message::GetData(want));
                }
                (!rest.is_empty()).then_some(Message::Inv(rest))
            }
            Message::Tx(tx) => {
                let policy = self.config.tx_policy;
                if !self.txs.on_tx(id, &tx, policy, now) {
                    if let Some(ip) = self.ip_of(id) {
                        let detail = format!("tx {}", tx.txid());
                        let reason = BanReason::UnrequestedTransaction;
                        self.misbehaving(ip, Some(id), reason, &detail, now);
                    }
                    return None;
                }
                self.emit(Event::TxReceived { peer: id, tx });
                None
            }
            Message::GetData(items) => {
                let (found, missing, rest) = self.txs.on_getdata(items);
                for tx in found {
                    self.send(id, Message::Tx(tx));
                }
                if !missing.is_empty() {
                    self.send(id, Message::NotFound(missing));
                }
                (!rest.is_empty()).then_some(Message::GetData(rest))
            }
            Message::NotFound(items) => {
                let again = self.txs.on_notfound(id, &items, now);
                self.ask_again(again);
                Some(Message::NotFound(items))
            }
            other => Some(other),
        }
    }

    /// Sends the `getdata`s of transactions asked of another peer after a request failed
    /// (`(peer, txid)` pairs, grouped by peer in the order given).
    pub(super) fn ask_again(&mut self, again: Vec<(PeerId, Hash256)>) {
        let mut by_peer: Vec<(PeerId, Vec<Inventory>)> = Vec::new();
        for (p, hash) in again {
            let item = Inventory {
                kind: InvType::TX,
                hash,
            };
            match by_peer.iter_mut().find(|(q, _)| *q == p) {
                Some((_, items)) => items.push(item),
                None => by_peer.push((p, vec![item])),
            }
        }
        for (p, items) in by_peer {
            self.send(p, Message::GetData(items));
        }
    }

    /// Sends every peer's queued announcements; forgets expired requests and undecided ones
    /// (asking another peer that announced them where there is one).
    pub(super) fn tx_flush(&mut self, now: Instant) {
        let (mut x, batches) = self.txs.flush(now);
        let again = std::mem::take(&mut x.asked_again);
        self.ask_again(again);
        if x.requests + x.undecided > 0 {
            log::debug!(
                "tx relay: {} requests unanswered, {} transactions undecided, forgotten",
                x.requests,
                x.undecided
            );
        }
        for (id, inv) in batches {
            self.send(id, Message::Inv(inv));
        }
    }

    /// The embedder accepted a transaction it was handed: it is relayed (with its fee known,
    /// only to peers whose `feefilter` it meets).
    pub(crate) fn accept_tx(&mut self, txid: &Hash256, fee: Option<u64>) -> bool {
        self.txs.accept_pending(txid, fee)
    }

    /// The embedder rejected it: `reject` to its source, which is scored `score` points (what
    /// the embedder's validation says: 0 for policy).
    pub(crate) fn reject_tx(
        &mut self,
        txid: &Hash256,
        reason: &str,
        score: u32,
        now: Instant,
    ) -> bool {
        let Some(src) = self.txs.reject_pending(txid) else {
            return false;
        };
        let reason: String = reason.chars().take(100).collect();
        if self.peers.contains_key(&src) {
            self.send(
                src,
                Message::Reject(Reject {
                    message: "tx".into(),
                    code: 0x10,
                    reason: reason.clone(),
                    data: bytes::Bytes::copy_from_slice(&txid.0),
                }),
            );
        }
        if let Some(ip) = self.ip_of(src) {
            let detail = format!("tx {txid}: {reason}");
            let why = BanReason::InvalidTransaction;
            self.misbehaving_points(ip, Some(src), why, score, &detail, now);
        }
        true
    }

    /// A transaction from the embedder: relayed to every peer at the next announcement (with
    /// its fee known, only to peers whose `feefilter` it meets).
    pub(crate) fn submit_tx(&mut self, tx: Transaction, fee: Option<u64>) {
        self.txs.submit(tx, fee);
    }
}
