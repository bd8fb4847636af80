//! Transaction relay: `inv` of transactions answered with `getdata` (once per transaction, to
//! the first peer that announces it), the transaction handed to the embedder, and relayed on
//! only after the embedder accepts it (a rejection sends `reject` to the source and scores it).
//! Announcements are batched per peer and sent at each tick; a per-peer filter of known
//! transactions keeps anything from being sent twice or echoed back to its source.

use crate::fsm::PeerId;
use crate::wire::{Hash256, InvType, Inventory, Transaction};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

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
/// Rejected transactions remembered (so they are not fetched again), at most.
const MAX_REJECTED: usize = 50_000;
/// Other peers remembered per transaction in flight as having announced it, at most: when the
/// request fails (the peer leaves, answers `notfound` or lets it time out) the next is asked,
/// as the SV node asks each announcer in turn. Each peer announces a transaction once, so
/// without them a transaction whose one request failed would never arrive.
const MAX_ANNOUNCERS: usize = 8;
/// Time a peer has to deliver a transaction we asked for (the SV node asks the next announcer
/// a minute after the last); after that the next peer that announced it is asked, if any, and
/// else the next announcement of it is followed.
pub const TX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the embedder has to accept or reject a transaction it was handed; after that it is
/// forgotten (neither relayed nor held against its source).
pub const TX_DECISION_TIMEOUT: Duration = Duration::from_secs(600);

/// What the engine does with a transaction a peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPolicy {
    /// Hand it to the embedder (`Event::TxReceived`) and relay it only after
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
    /// The peer's `feefilter`: no announcement of a transaction paying less per 1000 bytes.
    fee_filter: u64,
}

/// Most satoshis there can be (a `feefilter` above it is ignored, as the SV node ignores it).
const MAX_MONEY: i64 = 21_000_000 * 100_000_000;

/// A transaction's fee rate in satoshis per 1000 bytes.
fn fee_rate(fee: u64, size: usize) -> u64 {
    (fee as u128 * 1000 / size.max(1) as u128).min(u64::MAX as u128) as u64
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
    /// Asked for, from whom, when.
    requested: HashMap<Hash256, (PeerId, Instant)>,
    /// `requested` in the order asked (entries may be gone or renewed since).
    requested_order: VecDeque<(Instant, Hash256)>,
    /// For requests in flight (keys are always in `requested`): the other peers that announced
    /// the transaction since, in order, at most [`MAX_ANNOUNCERS`].
    announcers: HashMap<Hash256, VecDeque<PeerId>>,
    /// Waiting for the embedder's decision, with their source and when they were handed over.
    pending: HashMap<Hash256, (PeerId, Transaction, Instant)>,
    /// `pending` in the order handed over.
    pending_order: VecDeque<(Instant, Hash256)>,
    accepted: HashMap<Hash256, Transaction>,
    accepted_order: VecDeque<Hash256>,
    rejected: HashSet<Hash256>,
    rejected_order: VecDeque<Hash256>,
    /// Some peer's queue may hold announcements (else [`TxRelay::flush`] looks at no peer).
    queued: bool,
}

/// What [`TxRelay::expire`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Requests no answer came for.
    pub requests: usize,
    /// Transactions the embedder did not decide on.
    pub undecided: usize,
    /// Of the requests no answer came for, those now asked of another peer that announced
    /// them (the caller sends the `getdata`s).
    pub asked_again: Vec<(PeerId, Hash256)>,
}

impl TxRelay {
    fn undecided(&self) -> usize {
        self.requested.len() + self.pending.len()
    }

    /// Asks `id` for `h` (the caller sends the getdata).
    fn request(&mut self, h: Hash256, id: PeerId, now: Instant) {
        self.requested.insert(h, (id, now));
        self.requested_order.push_back((now, h));
    }

    /// A request for `h` ended without the transaction (not answered in time, `notfound`, the
    /// peer gone): it is asked of the next peer that announced it and is still connected, if
    /// any (returned), else forgotten (the next announcement of it is followed).
    fn ask_next(&mut self, h: Hash256, now: Instant) -> Option<PeerId> {
        self.requested.remove(&h);
        let mut next = None;
        if let Some(q) = self.announcers.get_mut(&h) {
            while let Some(p) = q.pop_front() {
                if self.peers.contains_key(&p) {
                    next = Some(p);
                    break;
                }
            }
            if q.is_empty() {
                self.announcers.remove(&h);
            }
        }
        if let Some(p) = next {
            self.request(h, p, now);
        }
        next
    }

    /// Who `h` was asked of.
    fn requested_from(&self, h: &Hash256) -> Option<PeerId> {
        self.requested.get(h).map(|&(id, _)| id)
    }

    /// `h` arrived from `id` and waits for the embedder.
    fn hold(&mut self, tx: Transaction, id: PeerId, now: Instant) {
        let h = tx.txid();
        self.pending.insert(h, (id, tx, now));
        self.pending_order.push_back((now, h));
    }

    fn remember_rejected(&mut self, h: Hash256) {
        if self.rejected.insert(h) {
            self.rejected_order.push_back(h);
            if self.rejected_order.len() > MAX_REJECTED {
                if let Some(old) = self.rejected_order.pop_front() {
                    self.rejected.remove(&old);
                }
            }
        }
    }

    /// Forgets requests older than [`TX_REQUEST_TIMEOUT`] and undecided transactions older
    /// than [`TX_DECISION_TIMEOUT`]. Cost: the entries that expire (and stale order entries).
    pub(crate) fn expire(&mut self, now: Instant) -> Expired {
        let mut out = Expired::default();
        while let Some(&(at, h)) = self.requested_order.front() {
            if now.saturating_duration_since(at) < TX_REQUEST_TIMEOUT {
                break;
            }
            self.requested_order.pop_front();
            if self.requested.get(&h).is_some_and(|&(_, t)| t == at) {
                out.requests += 1;
                if let Some(p) = self.ask_next(h, now) {
                    out.asked_again.push((p, h));
                }
            }
        }
        while let Some(&(at, h)) = self.pending_order.front() {
            if now.saturating_duration_since(at) < TX_DECISION_TIMEOUT {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&h).is_some_and(|&(_, _, t)| t == at) {
                self.pending.remove(&h);
                out.undecided += 1;
            }
        }
        // Order entries of requests answered long ago must not pile up either.
        if self.requested_order.len() > 2 * MAX_UNDECIDED + self.requested.len() {
            let live = &self.requested;
            self.requested_order
                .retain(|(at, h)| live.get(h).is_some_and(|&(_, t)| t == *at));
        }
        if self.pending_order.len() > 2 * MAX_UNDECIDED + self.pending.len() {
            let live = &self.pending;
            self.pending_order
                .retain(|(at, h)| live.get(h).is_some_and(|&(_, _, t)| t == *at));
        }
        out
    }

    fn seen(&self, h: &Hash256) -> bool {
        self.requested.contains_key(h)
            || self.pending.contains_key(h)
            || self.accepted.contains_key(h)
            || self.rejected.contains(h)
    }

    /// Relays `tx` to every peer but its source; with its `fee` known, not to peers whose
    /// `feefilter` asks for more (an unknown fee is announced to all: bsn does not hold the
    /// outputs a fee is computed from; the embedder tells it).
    fn accept(&mut self, tx: Transaction, source: Option<PeerId>, fee: Option<u64>) {
        let h = tx.txid();
        let rate = fee.map(|f| fee_rate(f, tx.raw().len()));
        if self.accepted.insert(h, tx).is_none() {
            self.accepted_order.push_back(h);
            if self.accepted_order.len() > MAX_ACCEPTED {
                if let Some(old) = self.accepted_order.pop_front() {
                    self.accepted.remove(&old);
                }
            }
        }
        for (id, p) in self.peers.iter_mut() {
            if rate.is_some_and(|r| r < p.fee_filter) {
                continue;
            }
            if Some(*id) != source && p.learn(h) {
                p.queue.push(h);
                self.queued = true;
            }
        }
    }

    /// A peer's `feefilter` (satoshis per 1000 bytes); out of range, ignored.
    pub(crate) fn set_fee_filter(&mut self, id: PeerId, rate: i64) {
        if !(0..=MAX_MONEY).contains(&rate) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.fee_filter = rate as u64;
        }
    }
}

impl TxRelay {
    /// A peer completed its handshake: it gets a known-transaction filter and a queue.
    pub(crate) fn peer_connected(&mut self, id: PeerId) {
        self.peers.insert(id, PeerTx::default());
    }

    /// A peer left: its filter and queue go, and so do requests made of it: each is asked of
    /// the next peer that announced it (returned, by peer and hash, for the caller's
    /// `getdata`s), else forgotten until it is announced again.
    pub(crate) fn peer_disconnected(&mut self, id: PeerId, now: Instant) -> Vec<(PeerId, Hash256)> {
        self.peers.remove(&id);
        let mut lost: Vec<Hash256> = self
            .requested
            .iter()
            .filter(|(_, (p, _))| *p == id)
            .map(|(h, _)| *h)
            .collect();
        lost.sort_unstable(); // (the map's order is not the same from run to run)
        let mut again: Vec<(PeerId, Hash256)> = lost
            .into_iter()
            .filter_map(|h| self.ask_next(h, now).map(|p| (p, h)))
            .collect();
        again.sort_unstable();
        again
    }

    /// Entries held in every map (for the leak tests: peers, requests, undecided, accepted,
    /// rejected).
    pub(crate) fn entries(&self) -> [usize; 5] {
        [
            self.peers.len(),
            self.requested.len(),
            self.pending.len(),
            self.accepted.len(),
            self.rejected.len(),
        ]
    }

    /// Takes every peer's queued announcements (as `inv` batches) and forgets expired requests
    /// and undecided transactions. Called every announce interval.
    pub(crate) fn flush(&mut self, now: Instant) -> (Expired, Vec<(PeerId, Vec<Inventory>)>) {
        let x = self.expire(now);
        let mut out = Vec::new();
        debug_assert!(self
            .announcers
            .keys()
            .all(|h| self.requested.contains_key(h)));
        if !std::mem::take(&mut self.queued) {
            debug_assert!(self.peers.values().all(|p| p.queue.is_empty()));
            return (x, out);
        }
        for (id, p) in self.peers.iter_mut() {
            if p.queue.is_empty() {
                continue;
            }
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
                        .collect(),
                ));
            }
        }
        // Deterministic order (the map's is not): by peer.
        out.sort_by_key(|(id, _)| *id);
        (x, out)
    }

    /// The embedder accepted a transaction it was handed: it is relayed.
    pub(crate) fn accept_pending(&mut self, txid: &Hash256, fee: Option<u64>) -> bool {
        match self.pending.remove(txid) {
            Some((src, tx, _)) => {
                self.accept(tx, Some(src), fee);
                true
            }
            None => false,
        }
    }

    /// The embedder rejected it: its source, to be told and scored.
    pub(crate) fn reject_pending(&mut self, txid: &Hash256) -> Option<PeerId> {
        let (src, _, _) = self.pending.remove(txid)?;
        self.remember_rejected(*txid);
        Some(src)
    }

    /// A transaction from the embedder: accepted and relayed to every peer.
    pub(crate) fn submit(&mut self, tx: Transaction, fee: Option<u64>) {
        self.accept(tx, None, fee);
    }

    /// Transaction announcements from `id`: the ones to ask it for (not seen before, within the
    /// undecided limit); inventory of other kinds is returned untouched.
    pub(crate) fn on_inv(
        &mut self,
        id: PeerId,
        items: Vec<Inventory>,
        now: Instant,
    ) -> (Vec<Inventory>, Vec<Inventory>) {
        let mut want = Vec::new();
        let mut rest = Vec::new();
        for i in items {
            if i.kind != InvType::TX {
                rest.push(i);
                continue;
            }
            if let Some(p) = self.peers.get_mut(&id) {
                p.learn(i.hash);
            }
            if !self.seen(&i.hash) && self.undecided() < MAX_UNDECIDED {
                self.request(i.hash, id, now);
                want.push(i);
            } else if self.requested_from(&i.hash).is_some_and(|p| p != id) {
                // in flight with another peer: this one is asked if that request fails
                let q = self.announcers.entry(i.hash).or_default();
                if q.len() < MAX_ANNOUNCERS && !q.contains(&id) {
                    q.push_back(id);
                }
            }
        }
        (want, rest)
    }

    /// A transaction from `id`: false when it was not asked of `id` (unrequested), else it is
    /// accepted (`AcceptAll`) or held for the embedder.
    pub(crate) fn on_tx(
        &mut self,
        id: PeerId,
        tx: &Transaction,
        policy: TxPolicy,
        now: Instant,
    ) -> bool {
        let h = tx.txid();
        if self.requested_from(&h) != Some(id) {
            return false;
        }
        self.requested.remove(&h);
        self.announcers.remove(&h);
        if let Some(p) = self.peers.get_mut(&id) {
            p.learn(h);
        }
        match policy {
            TxPolicy::AcceptAll => self.accept(tx.clone(), Some(id), None),
            TxPolicy::Embedder => self.hold(tx.clone(), id, now),
        }
        true
    }

    /// A `getdata`: the accepted transactions asked for, the transaction entries we do not
    /// have, and the entries of other kinds.
    pub(crate) fn on_getdata(
        &self,
        items: Vec<Inventory>,
    ) -> (Vec<Transaction>, Vec<Inventory>, Vec<Inventory>) {
        let (mut found, mut missing, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for i in items {
            if i.kind != InvType::TX {
                rest.push(i);
            } else if let Some(tx) = self.accepted.get(&i.hash) {
                found.push(tx.clone());
            } else {
                missing.push(i);
            }
        }
        (found, missing, rest)
    }

    /// `id` does not have what we asked of it: each is asked of the next peer that announced
    /// it (returned, for the caller's `getdata`s), else forgotten until announced again.
    pub(crate) fn on_notfound(
        &mut self,
        id: PeerId,
        items: &[Inventory],
        now: Instant,
    ) -> Vec<(PeerId, Hash256)> {
        let mut again = Vec::new();
        for i in items.iter().filter(|i| i.kind == InvType::TX) {
            if self.requested_from(&i.hash) == Some(id) {
                if let Some(p) = self.ask_next(i.hash, now) {
                    again.push((p, i.hash));
                }
            }
        }
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Decode;

    fn tx(n: u8) -> Transaction {
        // version 1, one input (prev n:0, empty script), one output (0 sat, empty script)
        let mut raw = vec![1, 0, 0, 0, 1];
        raw.extend_from_slice(&[n; 32]);
        raw.extend_from_slice(&[0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1]);
        raw.extend_from_slice(&[0; 8]);
        raw.extend_from_slice(&[0, 0, 0, 0, 0]);
        Transaction::decode_all(bytes::Bytes::from(raw)).unwrap()
    }

    #[test]
    fn requests_and_undecided_transactions_expire() {
        let mut r = TxRelay::default();
        let t0 = Instant::now();
        let (a, b) = (tx(1), tx(2));
        r.request(a.txid(), PeerId(1), t0);
        r.request(b.txid(), PeerId(2), t0 + Duration::from_secs(30));
        assert_eq!(r.expire(t0 + Duration::from_secs(59)), Expired::default());
        // The first request times out; the second is answered and waits for the embedder.
        r.requested.remove(&b.txid());
        r.hold(b.clone(), PeerId(2), t0 + Duration::from_secs(31));
        let x = r.expire(t0 + Duration::from_secs(60));
        assert_eq!(
            x,
            Expired {
                requests: 1,
                undecided: 0,
                asked_again: vec![]
            }
        );
        assert!(!r.seen(&a.txid()), "asked again at the next announcement");
        assert!(r.seen(&b.txid()));
        // A renewed request is not expired by the old order entry.
        r.request(a.txid(), PeerId(3), t0 + Duration::from_secs(61));
        assert_eq!(r.expire(t0 + Duration::from_secs(90)), Expired::default());
        assert_eq!(r.requested_from(&a.txid()), Some(PeerId(3)));
        // Ten minutes on, the embedder never decided on b: forgotten.
        let x = r.expire(t0 + Duration::from_secs(31) + TX_DECISION_TIMEOUT);
        assert_eq!(
            x,
            Expired {
                requests: 1,
                undecided: 1,
                asked_again: vec![]
            }
        );
        assert_eq!(r.undecided(), 0);
        assert!(r.requested_order.is_empty() && r.pending_order.is_empty());
    }

    fn inv(t: &Transaction) -> Vec<Inventory> {
        vec![Inventory {
            kind: InvType::TX,
            hash: t.txid(),
        }]
    }

    #[test]
    fn a_failed_request_is_asked_of_the_next_announcer() {
        let mut r = TxRelay::default();
        let t0 = Instant::now();
        let (a, b, c, d) = (PeerId(1), PeerId(2), PeerId(3), PeerId(4));
        for p in [a, b, c, d] {
            r.peer_connected(p);
        }
        let (t1, t2, t3) = (tx(1), tx(2), tx(3));
        // a announces all three first and is asked; b, c and d announce them later
        assert_eq!(
            r.on_inv(a, [inv(&t1), inv(&t2), inv(&t3)].concat(), t0)
                .0
                .len(),
            3
        );
        for p in [b, c, b, d] {
            let (want, _) = r.on_inv(p, [inv(&t1), inv(&t2), inv(&t3)].concat(), t0);
            assert!(want.is_empty(), "asked of a already");
        }
        // t1: a answers notfound: b is asked (announced first after a), once
        let again = r.on_notfound(a, &inv(&t1), t0);
        assert_eq!(again, vec![(b, t1.txid())]);
        // t2 and t3: a leaves; b is asked for both
        let again = r.peer_disconnected(a, t0);
        let mut want = vec![(b, t2.txid()), (b, t3.txid())];
        want.sort_unstable();
        assert_eq!(again, want);
        // b delivers t2: done with it; t3 from b times out and c is asked; c leaves, then d is
        r.on_tx(b, &t2, TxPolicy::AcceptAll, t0);
        let x = r.expire(t0 + TX_REQUEST_TIMEOUT);
        let mut want = vec![(c, t1.txid()), (c, t3.txid())];
        want.sort_unstable();
        let mut got = x.asked_again.clone();
        got.sort_unstable();
        assert_eq!((x.requests, got), (2, want));
        r.peer_disconnected(c, t0 + TX_REQUEST_TIMEOUT);
        assert_eq!(r.requested_from(&t3.txid()), Some(d));
        // d lets them time out: nobody is left, they are forgotten until announced again
        let x = r.expire(t0 + 2 * TX_REQUEST_TIMEOUT);
        assert_eq!((x.requests, x.asked_again), (2, vec![]));
        assert!(r.requested.is_empty() && r.announcers.is_empty());
        assert_eq!(
            r.on_inv(b, inv(&t3), t0 + 2 * TX_REQUEST_TIMEOUT).0.len(),
            1
        );
    }

    #[test]
    fn announcers_are_bounded_per_transaction() {
        let mut r = TxRelay::default();
        let t0 = Instant::now();
        let t = tx(9);
        for p in 0..100 {
            r.peer_connected(PeerId(p));
            r.on_inv(PeerId(p), inv(&t), t0);
        }
        assert_eq!(r.requested_from(&t.txid()), Some(PeerId(0)));
        assert_eq!(r.announcers[&t.txid()].len(), MAX_ANNOUNCERS);
    }

    #[test]
    fn rejected_memory_is_bounded() {
        let mut r = TxRelay::default();
        for i in 0..(MAX_REJECTED as u32 + 10) {
            r.remember_rejected(Hash256::sha256d(&i.to_le_bytes()));
        }
        assert_eq!(r.rejected.len(), MAX_REJECTED);
        assert!(!r.seen(&Hash256::sha256d(&0u32.to_le_bytes())));
        assert!(r.seen(&Hash256::sha256d(&(MAX_REJECTED as u32 + 9).to_le_bytes())));
    }

    #[test]
    fn a_flush_with_nothing_queued_looks_at_no_peer() {
        let mut r = TxRelay::default();
        let t0 = Instant::now();
        for id in 1..=3 {
            r.peer_connected(PeerId(id));
        }
        assert!(!r.queued);
        assert!(r.flush(t0).1.is_empty());
        // announced to all but its source, in peer order, once
        let t = tx(7);
        r.accept(t.clone(), Some(PeerId(2)), None);
        assert!(r.queued);
        let inv = vec![Inventory {
            kind: InvType::TX,
            hash: t.txid(),
        }];
        assert_eq!(
            r.flush(t0).1,
            vec![(PeerId(1), inv.clone()), (PeerId(3), inv.clone())]
        );
        assert!(!r.queued);
        assert!(r.flush(t0).1.is_empty());
        // accepted again from nowhere: only the source had not been told
        r.accept(t.clone(), None, None);
        assert_eq!(r.flush(t0).1, vec![(PeerId(2), inv)]);
        // now known to every peer: nothing queued, nothing flagged
        r.accept(t, None, None);
        assert!(!r.queued);
        assert!(r.flush(t0).1.is_empty());
    }
}
