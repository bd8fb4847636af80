//! Discovery in the core: the address book is filled by seeds (resolved by the driver, never
//! here) and `addr` messages; outbound peers are asked `getaddr` and told our listening address;
//! small fresh `addr`s new to us are queued for two other peers and go out in one `addr` per peer
//! every `Config::addr_relay_interval` or so (as Bitcoin nodes trickle them: relayed one message
//! each at once, a burst of news made honest neighbours pass the `addr` rate limit and ban each
//! other); inbound peers' `getaddr` is
//! answered once per connection; a target number of outbound connections is kept by dialling
//! from the book.

use super::NodeCore;
use crate::fsm::addrbook::{canonical, AddrInfo};
use crate::fsm::{Direction, PeerId};
use crate::wire::{Message, NetAddr, TimedNetAddr};
use std::net::SocketAddr;
use std::time::Instant;

/// `addr` messages with at most this many entries are relayed.
const RELAY_MAX: usize = 10;
/// Peers an `addr` is relayed to.
const RELAY_FANOUT: usize = 2;
/// Addresses fresher than this (seconds) are relayed.
const RELAY_FRESH: u64 = 600;
/// Addresses queued for one peer, at most (one `addr` message's worth; later news is dropped
/// until the queue goes out).
const RELAY_QUEUE: usize = 1000;

impl NodeCore {
    /// Our own listening address, if it is worth advertising.
    fn own_addr(&self) -> Option<SocketAddr> {
        self.local_addr
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
    }

    /// Seeds resolved by the driver join the address book.
    pub(crate) fn add_seeds(&mut self, addrs: &[SocketAddr], now: Instant) {
        let t = self.unix(now);
        let seeds: Vec<TimedNetAddr> = addrs
            .iter()
            .map(|a| TimedNetAddr {
                time: t as u32,
                addr: NetAddr::new(*a, 0),
            })
            .collect();
        if seeds.is_empty() {
            return;
        }
        let n = self
            .book
            .add(&seeds, std::net::Ipv4Addr::UNSPECIFIED.into(), t);
        log::info!("seeds: {} addresses, {n} new", seeds.len());
    }

    /// Every address in the address book, with what is known of it.
    pub(crate) fn addresses(&self) -> Vec<(SocketAddr, AddrInfo)> {
        let mut v: Vec<_> = self.book.iter().map(|(a, i)| (a, *i)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    pub(super) fn addr_connected(
        &mut self,
        id: PeerId,
        addr: SocketAddr,
        direction: Direction,
        services: u64,
        now: Instant,
    ) {
        if direction != Direction::Outbound {
            return;
        }
        let t = self.unix(now);
        self.dialing.remove(&canonical(addr));
        // An outbound peer listens where we reached it. Its retry backoff starts over only
        // once the connection has stayed up (`addr_stable`): one that drops us right after the
        // handshake must not be dialled again at once.
        self.book.handshake(&addr, services, t);
        if self.config.getaddr_on_connect {
            self.send(id, Message::GetAddr);
        }
        if let Some(me) = self.own_addr() {
            let a = TimedNetAddr {
                time: t as u32,
                addr: NetAddr::new(me, self.config.services),
            };
            self.send(id, Message::Addr(vec![a]));
        }
    }

    /// An outbound connection stayed up long enough: its address's retry backoff starts over.
    pub(super) fn addr_stable(&mut self, addr: SocketAddr) {
        self.book.stable(&addr);
    }

    /// An outbound connection ended: one that was not `stable` (it ended before or soon after
    /// its handshake) counts as a failed attempt, so the address is retried with backoff.
    pub(super) fn addr_disconnected(
        &mut self,
        addr: SocketAddr,
        direction: Direction,
        handshaken: bool,
        stable: bool,
        now: Instant,
    ) {
        if direction != Direction::Outbound {
            return;
        }
        if stable {
            debug_assert!(handshaken);
            self.dialing.remove(&canonical(addr));
        } else {
            self.addr_dial_failed(addr, now);
        }
    }

    pub(super) fn addr_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.dialing.remove(&canonical(addr));
        let t = self.unix(now);
        self.book.failure(&addr, t);
    }

    /// Handles `addr` (into the book, relayed, then passed on to the embedder) and `getaddr`;
    /// returns any other message untouched.
    pub(super) fn addr_message(
        &mut self,
        id: PeerId,
        msg: Message,
        now: Instant,
    ) -> Option<Message> {
        match msg {
            Message::Addr(list) => {
                let source = self.ip_of(id)?;
                let t = self.unix(now);
                // Only addresses new to our book are relayed: one seen before has been relayed
                // already, so an advertisement cannot circulate forever.
                let new_ones: Vec<TimedNetAddr> = list
                    .iter()
                    .filter(|a| !self.book.contains(&a.addr.socket_addr()))
                    .copied()
                    .collect();
                let added = self.book.add(&list, source, t);
                log::debug!("peer {id}: addr with {} entries, {added} new", list.len());
                let fresh: Vec<TimedNetAddr> = new_ones
                    .into_iter()
                    .filter(|a| {
                        (a.time as u64) + RELAY_FRESH >= t
                            && self.book.contains(&a.addr.socket_addr())
                    })
                    .collect();
                if !fresh.is_empty() && fresh.len() <= RELAY_MAX {
                    let others: Vec<PeerId> = self
                        .ready_peers()
                        .map(|(p, _)| *p)
                        .filter(|p| *p != id)
                        .collect();
                    if !others.is_empty() {
                        let start = (self.rng.next_u64() as usize) % others.len();
                        for p in others
                            .iter()
                            .cycle()
                            .skip(start)
                            .take(RELAY_FANOUT.min(others.len()))
                        {
                            if let Some(peer) = self.peers.get_mut(p) {
                                for a in &fresh {
                                    if peer.addr_queue.len() < RELAY_QUEUE
                                        && !peer.addr_queue.iter().any(|q| q.addr == a.addr)
                                    {
                                        peer.addr_queue.push(*a);
                                    }
                                }
                                if !peer.addr_queue.is_empty() {
                                    let t = peer.next_addr_send;
                                    self.next_addr_relay =
                                        Some(self.next_addr_relay.map_or(t, |n| n.min(t)));
                                }
                            }
                        }
                    }
                }
                // the embedder sees it too (an answer to its own `getaddr`, or news)
                Some(Message::Addr(list))
            }
            Message::GetAddr => {
                // Answered once per connection, and only to inbound peers (as Bitcoin nodes
                // do, so that a node cannot be fingerprinted through its outbound connections).
                let first = match self.peers.get_mut(&id) {
                    Some(p) if p.direction == Direction::Inbound => {
                        !std::mem::replace(&mut p.getaddr_answered, true)
                    }
                    _ => false,
                };
                if first {
                    let t = self.unix(now);
                    let rng = &mut self.rng;
                    let mut r = || rng.next_u64();
                    let sample = self.book.sample(1000, t, &mut r);
                    if !sample.is_empty() {
                        self.send(id, Message::Addr(sample));
                    }
                }
                None
            }
            other => Some(other),
        }
    }

    /// Sends each ready peer its queued relayed addresses, in one `addr`, when its turn has come
    /// (every `Config::addr_relay_interval`, from half to one and a half of it at random).
    pub(super) fn flush_addr_relay(&mut self, now: Instant) {
        if self.next_addr_relay.is_none_or(|t| now < t) {
            debug_assert!(self
                .peers
                .values()
                .all(|p| p.addr_queue.is_empty() || now < p.next_addr_send));
            return;
        }
        let base = self.config.addr_relay_interval;
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready && !p.addr_queue.is_empty() && p.next_addr_send <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let jitter = base.mul_f64(0.5 + (self.rng.next_u64() % 1000) as f64 / 1000.0);
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let list = std::mem::take(&mut p.addr_queue);
            p.next_addr_send = now + jitter;
            self.send(id, Message::Addr(list));
        }
        self.next_addr_relay = self
            .peers
            .values()
            .filter(|p| !p.addr_queue.is_empty())
            .map(|p| p.next_addr_send)
            .min();
    }

    /// Keeps the outbound target filled from the address book.
    pub(super) fn fill_outbound(&mut self, now: Instant) {
        let target = self.config.target_outbound.min(self.config.max_outbound);
        // (dials in flight hold their outbound slot already)
        if self.outbound >= target {
            return;
        }
        let me = self.own_addr().map(canonical);
        let t = self.unix(now);
        // dials only add peers when their sockets report back, so this holds for the loop
        let connected: std::collections::HashSet<SocketAddr> =
            self.peers.values().map(|p| canonical(p.addr)).collect();
        while self.outbound < target {
            let pick = {
                let (bans, dialing, statics) = (&self.bans, &self.dialing, &self.statics);
                // static peers are dialled on their own schedule (`redial_statics`)
                let exclude = |a: &SocketAddr| {
                    Some(*a) == me
                        || connected.contains(a)
                        || dialing.contains(a)
                        || statics.keys().any(|s| canonical(*s) == *a)
                        || bans.banned(a.ip(), t).is_some()
                };
                let rng = &mut self.rng;
                let mut r = || rng.next_u64();
                let pick = self.book.select(t, &mut r, &exclude);
                if let Some(a) = pick {
                    self.book.attempt(&a, t);
                }
                pick
            };
            let Some(addr) = pick else { return };
            log::debug!("dialling {addr} from the address book");
            if !self.dial(addr, now) {
                return;
            }
            self.dialing.insert(addr);
        }
    }
}
