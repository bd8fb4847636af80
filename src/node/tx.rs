//! Transaction relay in the core: the pure [`crate::fsm::txrelay::TxRelay`] decides, this
//! carries its decisions out (getdata, tx, notfound, reject, scores, events).

use super::NodeCore;
use crate::event::Event;
use crate::fsm::bans::BanReason;
use crate::fsm::PeerId;
use crate::wire::{Hash256, Message, Reject, Transaction};
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
                self.txs.on_notfound(id, &items);
                Some(Message::NotFound(items))
            }
            other => Some(other),
        }
    }

    /// Sends every peer's queued announcements; forgets expired requests and undecided ones.
    pub(super) fn tx_flush(&mut self, now: Instant) {
        let (x, batches) = self.txs.flush(now);
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
