//! bsn against a real full node (bcoin 1.0.2, see `tests/bcoin_support`), each a ratio against
//! the same measurement with a bsn node in bcoin's place, in the same run:
//!
//! 1. Header sync rate: a fresh bsn header client (`Config::headers_only`) syncing a chain of
//!    several thousand blocks mined by bcoin, from bcoin vs from a bsn header node serving the
//!    same chain (synced from that bcoin first). Timed from the handshake to `HeadersSynced` at
//!    the tip; the median of several fresh clients each.
//! 2. Ping round trip: a blocking client speaking the wire protocol with bsn's codec pings bcoin
//!    and a bsn engine, one ping at a time; p50 and p99.
//!
//! Run: `cargo bench --bench bcoin` (`-- --quick` for a shorter chain and fewer pings). Needs
//! npm (bcoin is installed once into `target/bcoin-cache`); without it the bench says SKIPPED.

#[path = "../tests/bcoin_support/mod.rs"]
mod bcoin_support;

#[path = "../src/util.rs"]
mod random;
use bcoin_support::{regtest_params, Bcoin, BCOIN_REGTEST_MAGIC};
use bsn::wire::frame::{encode_message, FrameDecoder};
use bsn::wire::{Message, NetAddr, VersionMessage};
use bsn::{Config, Engine, Event};
use bytes::{Bytes, BytesMut};
use random::random_u64;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for one sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn config(headers_only: bool) -> Config {
    let mut c = Config::with_params(regtest_params());
    c.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.shards = 1;
    c.pin_threads = false;
    c.target_outbound = 0;
    c.headers_only = headers_only;
    c
}

/// A fresh header client syncs from `from`: the time from its handshake to `HeadersSynced` at
/// `height`.
fn header_sync(from: SocketAddr, height: u32) -> Duration {
    let mut c = config(true);
    c.listen = None;
    let e = Engine::start(c).expect("engine starts");
    let ev = e.events();
    e.connect(from).expect("dial");
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut start = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ev.recv_timeout(left) {
            Ok(Event::PeerConnected(_)) => start = Some(Instant::now()),
            Ok(Event::HeadersSynced { height: h }) if h >= height => {
                let t = start.expect("synced after the handshake").elapsed();
                assert_eq!(e.best_header().unwrap().1, height);
                e.stop();
                return t;
            }
            Ok(Event::PeerDisconnected { reason, .. }) => panic!("sync peer dropped: {reason}"),
            Ok(_) => {}
            Err(_) => panic!(
                "no header sync to {height} from {from} in {SYNC_TIMEOUT:?}; at {}",
                e.best_header().unwrap().1
            ),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn frame(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_message(&mut b, BCOIN_REGTEST_MAGIC, m);
    b.to_vec()
}

/// A blocking wire-protocol client: handshakes, then pings `n` times one at a time (after
/// `warmup` unmeasured pings); returns each round trip in nanoseconds. The peer's own pings are
/// answered.
fn ping_client(addr: SocketAddr, warmup: usize, n: usize) -> Vec<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut dec = FrameDecoder::new(BCOIN_REGTEST_MAGIC);
    /// The next message; `None` after 200 ms without one.
    fn next(s: &mut TcpStream, dec: &mut FrameDecoder) -> Option<Message> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = dec.next_message().expect("a good frame") {
                return Some(m);
            }
            match s.read(&mut buf) {
                Ok(0) => panic!("the peer closed the connection"),
                Ok(k) => dec.push(&buf[..k]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    let a = NetAddr::new("127.0.0.1:1".parse().expect("addr"), 0);
    let version = Message::Version(VersionMessage {
        version: 70015,
        services: 0,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        receiver: a,
        sender: a,
        nonce: random_u64(),
        user_agent: "/bsn-bench-pinger/".into(),
        start_height: 0,
        relay: Some(false),
        extra: Bytes::new(),
    });
    s.write_all(&frame(&version)).expect("send version");
    let t = Instant::now();
    while next(&mut s, &mut dec) != Some(Message::Verack) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no verack from {addr}"
        );
    }
    s.write_all(&frame(&Message::Verack)).expect("send verack");
    let mut out = Vec::with_capacity(n);
    for i in 0..(warmup + n) as u64 {
        let nonce = 0x5eed_0000_0000 + i;
        let t = Instant::now();
        s.write_all(&frame(&Message::Ping(nonce)))
            .expect("send ping");
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no pong for ping {i} from {addr}"
            );
            match next(&mut s, &mut dec) {
                Some(Message::Pong(x)) if x == nonce => break,
                Some(Message::Ping(x)) => s.write_all(&frame(&Message::Pong(x))).expect("pong"),
                _ => {}
            }
        }
        if i as usize >= warmup {
            out.push(t.elapsed().as_nanos() as u64);
        }
    }
    out
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick" || a == "--test");
    // Not a multiple of 2,000: bcoin sends nothing (not even an empty `headers`) for a
    // getheaders it has no headers for, so after a full last batch bsn waits out its sync stall
    // timeout (30 s) and then never reports HeadersSynced; this height measures the transfer.
    let (height, runs, pings) = if quick {
        (2_500u32, 3, 1_000)
    } else {
        (4_500u32, 5, 5_000)
    };
    let Some(bcoin) = Bcoin::start() else {
        return; // the support printed the loud SKIPPED line
    };
    let t = Instant::now();
    bcoin.mine(height as usize);
    assert_eq!(bcoin.height(), height as i64);
    println!(
        "bcoin mined {height} blocks in {:.1?} (pid {}, {})",
        t.elapsed(),
        bcoin.pid(),
        bcoin.p2p_addr()
    );

    // A bsn header node serving the same chain, synced from bcoin. The pinger below sends pings
    // as fast as round trips allow, past bsn's flood limit of 100 pings a second (bcoin has
    // none): this node lifts that limit.
    let mut sc = config(true);
    sc.rate_limits
        .per_command
        .retain(|(c, _, _)| c.as_str() != "ping");
    let server = Engine::start(sc).expect("server starts");
    let server_ev = server.events();
    server.connect(bcoin.p2p_addr()).expect("dial bcoin");
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while server.best_header().unwrap().1 < height {
        assert!(Instant::now() < deadline, "the bsn server did not sync");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        server.best_header().unwrap().0.to_string(),
        bcoin.best_hash(),
        "the same tip"
    );
    let bsn_addr = server.local_addr().expect("listening");

    // 1. header sync, alternating sources
    let (mut from_bcoin, mut from_bsn) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        from_bcoin.push(header_sync(bcoin.p2p_addr(), height));
        from_bsn.push(header_sync(bsn_addr, height));
        while server_ev.try_recv().is_ok() {}
    }
    let rate = |d: Duration| height as f64 / d.as_secs_f64();
    let (b, s) = (median(from_bcoin.clone()), median(from_bsn.clone()));
    println!("header sync, {height} headers, fresh bsn header client, median of {runs}:");
    println!(
        "  from bcoin {:>10.0} headers/s  ({b:.1?}; runs {from_bcoin:.1?})",
        rate(b)
    );
    println!(
        "  from bsn   {:>10.0} headers/s  ({s:.1?}; runs {from_bsn:.1?})",
        rate(s)
    );
    println!(
        "  ratio: bsn serves headers {:.1}x as fast as bcoin",
        rate(s) / rate(b)
    );

    // 2. ping round trips, bcoin then bsn
    let mut to_bcoin = ping_client(bcoin.p2p_addr(), 200, pings);
    let mut to_bsn = ping_client(bsn_addr, 200, pings);
    let (b50, b99) = (pct(&mut to_bcoin, 0.50), pct(&mut to_bcoin, 0.99));
    let (s50, s99) = (pct(&mut to_bsn, 0.50), pct(&mut to_bsn, 0.99));
    println!("ping round trip, raw client on bsn's codec, {pings} pings one at a time:");
    println!("  to bcoin   p50 {b50:>8.1} us   p99 {b99:>8.1} us");
    println!("  to bsn     p50 {s50:>8.1} us   p99 {s99:>8.1} us");
    println!(
        "  ratio bcoin/bsn: p50 {:.1}x, p99 {:.1}x (bsn answers that much sooner)",
        b50 / s50,
        b99 / s99
    );
    server.stop();
}
