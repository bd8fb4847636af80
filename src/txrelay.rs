//! Transaction relay: `inv` of transactions answered with `getdata` (once per transaction, to
//! the first peer that announces it), the transaction handed to the embedder, and relayed on
//! only after the embedder accepts it (a rejection sends `reject` to the source and scores it).
//! Announcements are batched per peer and sent at each tick; a per-peer filter of known
//! transactions keeps anything from being sent twice or echoed back to its source.

use crate::engine::{Event, PeerId, Shared};
use crate::fsm::bans::BanReason;
use crate::wire::{Hash256, InvType, Inventory, Message, Reject, Transaction};
use std::collections::{HashMap, HashSet, VecDeque};

/// Transactions kept for serving `getdata` after they were accepted.
const MAX_ACCEPTED: usize = 50_000;
/// Transactions remembered per peer as known to it.
const KNOWN_PER_PEER: usize = 20_000;
/// Transactions asked for or waiting for the embedder's decision, at most; past that, new
/// announcements are not fetched until some are decided (memory stays bounded whatever peers
/// send and however slow the embedder is).
const MAX_UNDECIDED: usize = 20_000;
/// Most entries in one `inv`.
const MAX_INV_BATCH: usize = 50_000;

/// What the engine does with a transaction a peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPolicy {
    /// Hand it to the embedder ([`Event::TxReceived`]) and relay it only after
    /// `Engine::accept_tx`.
    Embedder,
    /// Accept and relay every well-formed transaction (a pure relay node).
    AcceptAll,
}

#[derive(Default)]
struct PeerTx {
    known: HashSet<Hash256>,
    order: VecDeque<Hash256>,
    queue: Vec<Hash256>,
}

impl PeerTx {
    fn learn(&mut self, h: Hash256) -> bool {
        if !self.known.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > KNOWN_PER_PEER {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        true
    }
}

/// The engine's transaction relay state.
#[derive(Default)]
pub(crate) struct TxRelay {
    peers: HashMap<PeerId, PeerTx>,
    /// Asked for, from whom.
    requested: HashMap<Hash256, PeerId>,
    /// Waiting for the embedder's decision, with their source.
    pending: HashMap<Hash256, (PeerId, Transaction)>,
    accepted: HashMap<Hash256, Transaction>,
    accepted_order: VecDeque<Hash256>,
    rejected: HashSet<Hash256>,
}

impl TxRelay {
    fn seen(&self, h: &Hash256) -> bool {
        self.requested.contains_key(h)
            || self.pending.contains_key(h)
            || self.accepted.contains_key(h)
            || self.rejected.contains(h)
    }

    fn accept(&mut self, tx: Transaction, source: Option<PeerId>) {
        let h = tx.txid();
        if self.accepted.insert(h, tx).is_none() {
            self.accepted_order.push_back(h);
            if self.accepted_order.len() > MAX_ACCEPTED {
                if let Some(old) = self.accepted_order.pop_front() {
                    self.accepted.remove(&old);
                }
            }
        }
        for (id, p) in self.peers.iter_mut() {
            if Some(*id) != source && p.learn(h) {
                p.queue.push(h);
            }
        }
    }
}

pub(crate) fn on_connected(shared: &Shared, id: PeerId) {
    shared
        .txs
        .lock()
        .expect("tx relay lock")
        .peers
        .insert(id, PeerTx::default());
}

pub(crate) fn on_disconnected(shared: &Shared, id: PeerId) {
    let mut r = shared.txs.lock().expect("tx relay lock");
    r.peers.remove(&id);
    r.requested.retain(|_, p| *p != id);
}

/// Sends every peer's queued announcements (called at each tick).
pub(crate) fn flush(shared: &Shared) {
    let mut out = Vec::new();
    {
        let mut r = shared.txs.lock().expect("tx relay lock");
        for (id, p) in r.peers.iter_mut() {
            if !p.queue.is_empty() {
                let q = std::mem::take(&mut p.queue);
                for chunk in q.chunks(MAX_INV_BATCH) {
                    out.push((
                        *id,
                        chunk
                            .iter()
                            .map(|h| Inventory {
                                kind: InvType::TX,
                                hash: *h,
                            })
                            .collect::<Vec<_>>(),
                    ));
                }
            }
        }
    }
    for (id, inv) in out {
        shared.send_to_peer(id, Message::Inv(inv));
    }
}

/// The embedder accepted a transaction it was handed: it is relayed.
pub(crate) fn accept(shared: &Shared, txid: &Hash256) -> bool {
    let mut r = shared.txs.lock().expect("tx relay lock");
    match r.pending.remove(txid) {
        Some((src, tx)) => {
            r.accept(tx, Some(src));
            true
        }
        None => false,
    }
}

/// The embedder rejected it: `reject` to its source, which is scored.
pub(crate) fn reject(shared: &Shared, txid: &Hash256, reason: &str) -> bool {
    let src = {
        let mut r = shared.txs.lock().expect("tx relay lock");
        let Some((src, _)) = r.pending.remove(txid) else {
            return false;
        };
        r.rejected.insert(*txid);
        src
    };
    let reason: String = reason.chars().take(100).collect();
    shared.send_to_peer(
        src,
        Message::Reject(Reject {
            message: "tx".into(),
            code: 0x10,
            reason: reason.clone(),
            data: bytes::Bytes::copy_from_slice(&txid.0),
        }),
    );
    if let Some(ip) = shared
        .ready
        .lock()
        .expect("ready lock")
        .get(&src)
        .map(|(a, _)| a.ip())
    {
        shared.misbehaving(
            ip,
            Some(src),
            BanReason::InvalidTransaction,
            &format!("tx {txid}: {reason}"),
        );
    }
    true
}

/// A transaction from the embedder: accepted and relayed to every peer.
pub(crate) fn submit(shared: &Shared, tx: Transaction) {
    shared.txs.lock().expect("tx relay lock").accept(tx, None);
}

/// Handles tx announcements, transactions and tx getdata; returns other messages untouched.
pub(crate) fn on_message(shared: &Shared, id: PeerId, msg: Message) -> Option<Message> {
    match msg {
        Message::Inv(items) => {
            let mut want = Vec::new();
            let mut rest = Vec::new();
            {
                let mut r = shared.txs.lock().expect("tx relay lock");
                for i in items {
                    if i.kind != InvType::TX {
                        rest.push(i);
                        continue;
                    }
                    if let Some(p) = r.peers.get_mut(&id) {
                        p.learn(i.hash);
                    }
                    if !r.seen(&i.hash) && r.requested.len() + r.pending.len() < MAX_UNDECIDED {
                        r.requested.insert(i.hash, id);
                        want.push(i);
                    }
                }
            }
            if !want.is_empty() {
                shared.send_to_peer(id, Message::GetData(want));
            }
            (!rest.is_empty()).then_some(Message::Inv(rest))
        }
        Message::Tx(tx) => {
            let h = tx.txid();
            let mut r = shared.txs.lock().expect("tx relay lock");
            if r.requested.get(&h) != Some(&id) {
                drop(r);
                if let Some(ip) = shared
                    .ready
                    .lock()
                    .expect("ready lock")
                    .get(&id)
                    .map(|(a, _)| a.ip())
                {
                    shared.misbehaving(
                        ip,
                        Some(id),
                        BanReason::UnrequestedData,
                        &format!("tx {h}"),
                    );
                }
                return None;
            }
            r.requested.remove(&h);
            if let Some(p) = r.peers.get_mut(&id) {
                p.learn(h);
            }
            match shared.config.tx_policy {
                TxPolicy::AcceptAll => r.accept(tx.clone(), Some(id)),
                TxPolicy::Embedder => {
                    r.pending.insert(h, (id, tx.clone()));
                }
            }
            drop(r);
            shared.emit(Event::TxReceived { peer: id, tx });
            None
        }
        Message::GetData(items) => {
            let mut rest = Vec::new();
            let mut found = Vec::new();
            let mut missing = Vec::new();
            {
                let r = shared.txs.lock().expect("tx relay lock");
                for i in items {
                    if i.kind != InvType::TX {
                        rest.push(i);
                    } else if let Some(tx) = r.accepted.get(&i.hash) {
                        found.push(tx.clone());
                    } else {
                        missing.push(i);
                    }
                }
            }
            for tx in found {
                shared.send_to_peer(id, Message::Tx(tx));
            }
            if !missing.is_empty() {
                shared.send_to_peer(id, Message::NotFound(missing));
            }
            (!rest.is_empty()).then_some(Message::GetData(rest))
        }
        other => Some(other),
    }
}
