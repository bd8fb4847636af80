//! Discovery: the address book in the engine. Seeds (addresses or DNS names, resolved on this
//! module's own thread, never on an event loop) fill it; outbound peers are asked `getaddr` and
//! told our listening address; `addr` messages fill it and small fresh ones are relayed to two
//! other peers; inbound peers' `getaddr` is answered once per connection; and a target number of
//! outbound connections is kept by dialling from it. The book is saved with the peers.

use crate::engine::{PeerId, Shared};
use crate::fsm::addrbook::{canonical, XorShift64};
use crate::fsm::Direction;
use crate::wire::{Message, NetAddr, TimedNetAddr};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `addr` messages with at most this many entries are relayed.
const RELAY_MAX: usize = 10;
/// Peers an `addr` is relayed to.
const RELAY_FANOUT: usize = 2;
/// Addresses fresher than this (seconds) are relayed.
const RELAY_FRESH: u64 = 600;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Our own listening address, if it is worth advertising.
fn own_addr(shared: &Shared) -> Option<SocketAddr> {
    shared
        .local_addr
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

/// A handshake completed.
pub(crate) fn on_connected(
    shared: &Shared,
    id: PeerId,
    addr: SocketAddr,
    direction: Direction,
    services: u64,
) {
    shared
        .ready
        .lock()
        .expect("ready lock")
        .insert(id, (addr, direction));
    if direction != Direction::Outbound {
        return;
    }
    shared
        .dialing
        .lock()
        .expect("dialing lock")
        .remove(&canonical(addr));
    // An outbound peer listens where we reached it.
    shared
        .addrbook
        .lock()
        .expect("address book lock")
        .success(&addr, services, now());
    if shared.config.getaddr_on_connect {
        shared.send_to_peer(id, Message::GetAddr);
    }
    if let Some(me) = own_addr(shared) {
        let a = TimedNetAddr {
            time: now() as u32,
            addr: NetAddr::new(me, shared.config.services),
        };
        shared.send_to_peer(id, Message::Addr(vec![a]));
    }
}

/// A connection ended.
pub(crate) fn on_disconnected(
    shared: &Shared,
    id: PeerId,
    addr: SocketAddr,
    direction: Direction,
    handshaken: bool,
) {
    shared.ready.lock().expect("ready lock").remove(&id);
    shared
        .answered_getaddr
        .lock()
        .expect("getaddr lock")
        .remove(&id);
    if direction == Direction::Outbound {
        if handshaken {
            shared
                .dialing
                .lock()
                .expect("dialing lock")
                .remove(&canonical(addr));
        } else {
            on_connect_failed(shared, addr);
        }
    }
}

/// An outbound connection could not be started.
pub(crate) fn on_connect_failed(shared: &Shared, addr: SocketAddr) {
    shared
        .dialing
        .lock()
        .expect("dialing lock")
        .remove(&canonical(addr));
    shared
        .addrbook
        .lock()
        .expect("address book lock")
        .failure(&addr, now());
}

/// Handles `addr` and `getaddr`; returns any other message untouched.
pub(crate) fn on_message(shared: &Shared, id: PeerId, msg: Message) -> Option<Message> {
    match msg {
        Message::Addr(list) => {
            let source = shared
                .ready
                .lock()
                .expect("ready lock")
                .get(&id)
                .map(|(a, _)| a.ip());
            let source = source?;
            let t = now();
            // Only addresses new to our book are relayed: one seen before has been relayed
            // already, so an advertisement cannot circulate forever.
            let (added, new_ones) = {
                let mut book = shared.addrbook.lock().expect("address book lock");
                let new_ones: Vec<TimedNetAddr> = list
                    .iter()
                    .filter(|a| !book.contains(&a.addr.socket_addr()))
                    .copied()
                    .collect();
                (book.add(&list, source, t), new_ones)
            };
            log::debug!("peer {id}: addr with {} entries, {added} new", list.len());
            let fresh: Vec<TimedNetAddr> = new_ones
                .into_iter()
                .filter(|a| {
                    (a.time as u64) + RELAY_FRESH >= t
                        && shared
                            .addrbook
                            .lock()
                            .expect("address book lock")
                            .contains(&a.addr.socket_addr())
                })
                .collect();
            if !fresh.is_empty() && fresh.len() <= RELAY_MAX {
                let others: Vec<PeerId> = shared
                    .ready
                    .lock()
                    .expect("ready lock")
                    .keys()
                    .filter(|p| **p != id)
                    .copied()
                    .collect();
                if !others.is_empty() {
                    let mut rng = shared.rng.lock().expect("rng lock");
                    let start = (rng.next_u64() as usize) % others.len();
                    for p in others
                        .iter()
                        .cycle()
                        .skip(start)
                        .take(RELAY_FANOUT.min(others.len()))
                    {
                        shared.send_to_peer(*p, Message::Addr(fresh.clone()));
                    }
                }
            }
            None
        }
        Message::GetAddr => {
            let inbound = shared
                .ready
                .lock()
                .expect("ready lock")
                .get(&id)
                .is_some_and(|(_, d)| *d == Direction::Inbound);
            // Answered once per connection, and only to inbound peers (as Bitcoin nodes do, so
            // that a node cannot be fingerprinted through its outbound connections).
            if inbound
                && shared
                    .answered_getaddr
                    .lock()
                    .expect("getaddr lock")
                    .insert(id)
            {
                let sample = {
                    let mut rng = shared.rng.lock().expect("rng lock");
                    let mut r = || rng.next_u64();
                    shared
                        .addrbook
                        .lock()
                        .expect("address book lock")
                        .sample(1000, now(), &mut r)
                };
                if !sample.is_empty() {
                    shared.send_to_peer(id, Message::Addr(sample));
                }
            }
            None
        }
        other => Some(other),
    }
}

/// The discovery thread: resolves the seeds, then keeps the outbound target filled.
pub(crate) fn run(shared: Arc<Shared>, stop: Receiver<()>) {
    let t = now();
    let mut seeds = Vec::new();
    for s in &shared.config.seeds {
        let addrs = crate::config::resolve_addrs(s, shared.config.network.default_port)
            .unwrap_or_else(|e| {
                log::warn!("seed {s}: {e}");
                Vec::new()
            });
        for a in addrs {
            seeds.push(TimedNetAddr {
                time: t as u32,
                addr: NetAddr::new(a, 0),
            });
        }
    }
    if !seeds.is_empty() {
        let n = shared.addrbook.lock().expect("address book lock").add(
            &seeds,
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            t,
        );
        log::info!("seeds: {} addresses, {n} new", seeds.len());
    }
    let mut rng = XorShift64::new(crate::util::random_u64());
    let (dial_every, tx_every) = (
        shared.config.dial_interval,
        shared.config.tx_announce_interval,
    );
    let start = std::time::Instant::now();
    let (mut next_dial, mut next_tx) = (start + dial_every, start + tx_every);
    loop {
        let wake = next_dial.min(next_tx);
        match stop.recv_timeout(wake.saturating_duration_since(std::time::Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = std::time::Instant::now();
        if now >= next_tx {
            crate::txrelay::flush(&shared);
            next_tx = now + tx_every;
        }
        if now >= next_dial {
            fill_outbound(&shared, &mut rng);
            crate::syncer::tick(&shared);
            next_dial = now + dial_every;
        }
    }
}

fn fill_outbound(shared: &Shared, rng: &mut XorShift64) {
    let target = shared
        .config
        .target_outbound
        .min(shared.config.max_outbound);
    let me = own_addr(shared).map(canonical);
    for _ in 0..target {
        let busy = shared.outbound_count() + shared.dialing.lock().expect("dialing lock").len();
        if busy >= target {
            return;
        }
        let connected: Vec<SocketAddr> = shared
            .ready
            .lock()
            .expect("ready lock")
            .values()
            .map(|(a, _)| canonical(*a))
            .collect();
        let dialing = shared.dialing.lock().expect("dialing lock").clone();
        let t = now();
        let pick = {
            let exclude = |a: &SocketAddr| {
                Some(*a) == me
                    || connected.contains(a)
                    || dialing.contains(a)
                    || shared.is_banned(a.ip())
            };
            let mut r = || rng.next_u64();
            let mut book = shared.addrbook.lock().expect("address book lock");
            let pick = book.select(t, &mut r, &exclude);
            if let Some(a) = pick {
                book.attempt(&a, t);
            }
            pick
        };
        let Some(addr) = pick else { return };
        log::debug!("dialling {addr} from the address book");
        shared.dialing.lock().expect("dialing lock").insert(addr);
        shared.dial(addr, false);
    }
}

/// How long between two checks of the outbound target, by default.
pub const DEFAULT_DIAL_INTERVAL: Duration = Duration::from_millis(500);
