//! Stateful input for one node core: arbitrary bytes become a sequence of messages from several
//! scripted peers (pings, inventories, requests, chains of headers that may or may not link and
//! meet their target, addresses, transactions, blocks, BSV notices, unknown commands), with
//! virtual time passing and peers reconnecting, all through [`bsn::sim::SimNet`] so every message
//! crosses real framing. After each step the core's maps are checked against their bounds.
//!
//! Shared (by path) by the fuzz target `core` and the proptest in `tests/core_ops.rs`.

use bsn::sim::SimNet;
use bsn::wire::{
    BlockHeader, Hash256, InvType, Inventory, Locator, Message, NetAddr, OutPoint, TimedNetAddr,
    Transaction,
};
use bsn::{Config, Network, TxPolicy};
use std::time::Duration;

/// Scripted peers sending to the node at a time.
pub const PEERS: usize = 3;
/// Scripted peers in all (one that was dropped or banned is replaced by a new one, from a new
/// address).
pub const MAX_SCRIPTS: usize = 32;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (self.u32() as u64) << 32 | self.u32() as u64
    }
    fn small(&mut self, max: usize) -> usize {
        self.u8() as usize % (max + 1)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the harness has made so far: hashes to refer back to, the headers it built.
struct Pool {
    hashes: Vec<Hash256>,
    tips: Vec<BlockHeader>,
    headers_sent: usize,
}

impl Pool {
    fn hash(&mut self, b: &mut Bytes) -> Hash256 {
        let i = b.u8() as usize;
        if i < 200 && !self.hashes.is_empty() {
            self.hashes[i % self.hashes.len()]
        } else {
            let h = Hash256::sha256d(&b.u64().to_le_bytes());
            self.remember(h);
            h
        }
    }
    fn remember(&mut self, h: Hash256) {
        if self.hashes.len() < 256 {
            self.hashes.push(h);
        } else {
            let i = (h.0[0] as usize) % self.hashes.len();
            self.hashes[i] = h;
        }
    }
}

fn tx(b: &mut Bytes, pool: &mut Pool) -> Transaction {
    let prev = pool.hash(b);
    let t = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: prev,
                vout: b.u8() as u32,
            },
            b"\x51",
            u32::MAX,
        )],
        &[(b.u32() as i64 % 100_000, b"\x51")],
        0,
    );
    pool.remember(t.txid());
    t
}

fn headers(b: &mut Bytes, pool: &mut Pool) -> Vec<BlockHeader> {
    let n = b.small(40);
    let mode = b.u8();
    let mut prev = match pool.tips.len() {
        0 => Network::Regtest.params().genesis,
        k => pool.tips[b.u8() as usize % k],
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: if mode.is_multiple_of(17) && i == 0 {
                pool.hash(b) // may not link
            } else {
                prev.hash()
            },
            merkle_root: Hash256::sha256d(&b.u64().to_le_bytes()),
            time: prev.time.wrapping_add(1 + b.small(3) as u32),
            bits: if mode.is_multiple_of(13) {
                b.u32()
            } else {
                0x207fffff
            },
            nonce: 0,
        };
        // mostly real proof of work (cheap on regtest); sometimes whatever the nonce gives
        if !mode.is_multiple_of(11) {
            while !h.meets_own_target() && h.nonce < 64 {
                h.nonce += 1;
            }
        }
        prev = h;
        out.push(h);
    }
    pool.headers_sent += out.len();
    // only a chain made to every rule is one to build on
    let clean = !mode.is_multiple_of(11) && !mode.is_multiple_of(13) && !mode.is_multiple_of(17);
    if let Some(last) = out.last().filter(|_| clean) {
        pool.remember(last.hash());
        if pool.tips.len() < 16 {
            pool.tips.push(*last);
        } else {
            let i = b.u8() as usize % pool.tips.len();
            pool.tips[i] = *last;
        }
    }
    out
}

fn inventory(b: &mut Bytes, pool: &mut Pool) -> Vec<Inventory> {
    (0..b.small(30))
        .map(|_| Inventory {
            kind: match b.u8() % 6 {
                0 | 1 => InvType::TX,
                2 | 3 => InvType::BLOCK,
                4 => InvType::ERROR,
                _ => InvType(b.u32()),
            },
            hash: pool.hash(b),
        })
        .collect()
}

fn message(b: &mut Bytes, pool: &mut Pool) -> Message {
    match b.u8() % 16 {
        0 => Message::Ping(b.u64()),
        1 => Message::Inv(inventory(b, pool)),
        2 => Message::GetData(inventory(b, pool)),
        3 | 4 => Message::Headers(headers(b, pool)),
        5 => Message::Addr(
            (0..b.small(20))
                .map(|_| TimedNetAddr {
                    time: 1_700_000_000u32.wrapping_add(b.u32() % 100_000),
                    addr: NetAddr::new(
                        std::net::SocketAddr::from((b.u32().to_be_bytes(), 8333)),
                        1,
                    ),
                })
                .collect(),
        ),
        6 => Message::GetHeaders(Locator {
            version: 70016,
            hashes: (0..b.small(5)).map(|_| pool.hash(b)).collect(),
            stop: Hash256::ZERO,
        }),
        7 => Message::Tx(tx(b, pool)),
        8 => {
            // (a block's chain was not sent as headers: its tips are not tips to build on)
            // (a block on a tip the node may know, its merkle root mostly right)
            let prev = match pool.tips.len() {
                0 => Network::Regtest.params().genesis,
                k => pool.tips[b.u8() as usize % k],
            };
            let txs: Vec<Transaction> = (0..1 + b.small(3)).map(|_| tx(b, pool)).collect();
            let ids: Vec<Hash256> = txs.iter().map(|t| t.txid()).collect();
            let mut header = BlockHeader {
                version: 4,
                prev_hash: prev.hash(),
                merkle_root: if b.u8().is_multiple_of(9) {
                    pool.hash(b)
                } else {
                    bsn::wire::merkle_root(ids)
                },
                time: prev.time.wrapping_add(1),
                bits: 0x207fffff,
                nonce: 0,
            };
            while !header.meets_own_target() && header.nonce < 64 {
                header.nonce += 1;
            }
            pool.headers_sent += 1;
            Message::Block(bsn::wire::Block::new(header, txs))
        }
        9 => Message::NotFound(inventory(b, pool)),
        10 => Message::GetAddr,
        11 => Message::SendHeaders,
        12 => Message::Mempool,
        13 => Message::GetBlocks(Locator {
            version: 70016,
            hashes: (0..b.small(5)).map(|_| pool.hash(b)).collect(),
            stop: Hash256::ZERO,
        }),
        14 => Message::Pong(b.u64()),
        _ => Message::Unknown {
            command: bsn::wire::Command::new(["zzz", "alert", "filterload", "other"][b.small(3)])
                .expect("a valid name"),
            payload: vec![b.u8(); b.small(200)].into(),
        },
    }
}

fn config() -> Config {
    let mut c = Config::new(Network::Regtest);
    c.tx_policy = TxPolicy::AcceptAll;
    c.target_outbound = 0;
    c
}

/// Checks the node's maps against their bounds; `Err` says which broke.
fn check(net: &mut SimNet, node: usize, pool: &Pool) -> Result<(), String> {
    let c = net.counts(node);
    let cfg = config();
    let fail = |what: &str| Err(format!("{what}: {c:?}"));
    if c.peers > MAX_SCRIPTS {
        return fail("more peers than scripts");
    }
    if c.headers > 1 + pool.headers_sent {
        return fail("more headers than were sent");
    }
    if c.fork_headers > cfg.max_fork_headers {
        return fail("fork headers past the budget");
    }
    if c.presync_peers > 16 {
        return fail("pre-sync peers past their limit");
    }
    if c.embedder_blocks != 0 {
        return fail("embedder blocks without an embedder request");
    }
    if c.block_buffer > 1024 || c.blocks_in_flight > 1024 {
        return fail("block download maps past their bounds");
    }
    if c.tx[1] > 50_000 || c.tx[2] > 20_000 || c.tx[3] > 50_000 || c.tx[4] > 50_000 {
        return fail("transaction relay maps past their bounds");
    }
    if c.notices > 1000 {
        return fail("notices past their bound");
    }
    if c.registry_live > c.peers {
        return fail("registry entries of connections that are gone");
    }
    Ok(())
}

/// What a session did.
#[derive(Debug, Default)]
pub struct Session {
    /// Messages the scripts sent on ready connections.
    pub sent: usize,
    /// Headers the node holds at the end (genesis included).
    pub headers: usize,
    /// Events the node raised.
    pub events: usize,
}

/// Runs the bytes as a session against one node; `Err` when a bound broke. A panic anywhere is
/// a failure too (the fuzzer and the proptest both catch it).
pub fn run(data: &[u8]) -> Result<Session, String> {
    let mut b = Bytes(data);
    let seed = b.u64();
    let mut net = SimNet::new(seed);
    let node = net.add_node(config());
    let mut scripts: Vec<usize> = (0..PEERS).map(|_| net.add_script(config())).collect();
    let mut made = PEERS;
    for s in &scripts {
        net.connect(*s, node);
    }
    if !net.run_until(Duration::from_secs(5), |n| n.ready_peers(node) == PEERS) {
        return Err("the scripted peers did not complete their handshakes".into());
    }
    let mut sent = 0;
    let mut pool = Pool {
        hashes: Vec::new(),
        tips: Vec::new(),
        headers_sent: 0,
    };
    let mut steps = 0;
    while !b.done() && steps < 400 {
        steps += 1;
        let op = b.u8();
        let slot = op as usize % PEERS;
        let who = scripts[slot];
        let kind = op / PEERS as u8 % 8;
        if kind == 0 {
            // time passes: timers, stalls, pings, expiries
            let ms = 1 + b.u32() as u64 % 120_000;
            net.run_until(Duration::from_millis(ms), |_| false);
        } else if net.ready_peers(who) == 0 {
            // a peer that was dropped (or banned) comes back from a new address
            if made < MAX_SCRIPTS {
                let fresh = net.add_script(config());
                made += 1;
                scripts[slot] = fresh;
                net.connect(fresh, node);
            }
        } else {
            // (only messages that go out are made: a chain's tips are then the node's to know)
            let burst = 1 + b.small(3);
            for _ in 0..burst {
                if net.ready_peers(who) == 0 {
                    break;
                }
                let m = message(&mut b, &mut pool);
                sent += 1;
                net.script_send(who, m);
                net.run_until(Duration::from_millis(20), |_| false);
            }
        }
        net.run_until(Duration::from_millis(50), |_| false);
        check(&mut net, node, &pool)?;
    }
    net.run_until(Duration::from_secs(5), |_| false);
    check(&mut net, node, &pool)?;
    Ok(Session {
        sent,
        headers: net.counts(node).headers,
        events: net.events(node).len(),
    })
}
