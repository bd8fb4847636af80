//! The admin listener under load: an honest peer's ping round trip while 200 concurrent HTTP
//! clients hammer `/metrics` and `/peers`, as a ratio to the same peer's round trip with the
//! listener idle, in one run. Phases alternate (idle, loaded, idle, loaded...) so a drift of
//! the machine does not land on one side.
//!
//! A third phase sends the same 200 clients to a decoy HTTP server in the same process that
//! answers a body of the same size without calling the engine: it loads the machine as the
//! hammering does (HTTP, threads, CPU), so loaded vs decoy is what the admin's engine calls
//! themselves cost the peer (a busy machine also wakes faster than an idle one, which can make
//! the loaded run look better than the idle one).
//!
//! Run: `cargo bench --bench admin` (`-- --quick` for fewer samples). The target (issue 16): the
//! loaded p50 within 1.2x of the idle p50.

use bsn::admin::AdminServer;
use bsn::wire::frame::{encode_message, FrameDecoder};
use bsn::wire::{Magic, Message, NetAddr, VersionMessage};
use bsn::{Config, Engine, Network};
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);
const CLIENTS: usize = 200;
/// Idle peers, so that `/peers` has something to list.
const IDLE_PEERS: usize = 20;

struct Peer {
    s: TcpStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr, nonce: u64) -> Peer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut p = Peer {
            s,
            dec: FrameDecoder::new(MAGIC),
            buf: vec![0; 64 << 10],
        };
        let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 0);
        p.send(&Message::Version(VersionMessage {
            version: 70016,
            services: 0,
            timestamp: 0,
            receiver: a,
            sender: a,
            nonce,
            user_agent: "/bench/".into(),
            start_height: 0,
            relay: Some(false),
            extra: Default::default(),
        }));
        p.until(|m| matches!(m, Message::Verack));
        p.send(&Message::Verack);
        p
    }

    fn send(&mut self, m: &Message) {
        let mut b = BytesMut::new();
        encode_message(&mut b, MAGIC, m);
        self.s.write_all(&b).unwrap();
    }

    fn until(&mut self, mut f: impl FnMut(&Message) -> bool) {
        loop {
            while let Some(m) = self.dec.next_message().unwrap() {
                if f(&m) {
                    return;
                }
            }
            let n = self.s.read(&mut self.buf).unwrap();
            assert!(n > 0, "the engine closed the connection");
            self.dec.push(&self.buf[..n]);
        }
    }

    /// One ping's round trip.
    fn ping(&mut self, n: u64) -> Duration {
        let t = Instant::now();
        self.send(&Message::Ping(n));
        self.until(|m| matches!(m, Message::Pong(x) if *x == n));
        t.elapsed()
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, phase) = if quick {
        (2, Duration::from_secs(1))
    } else {
        (4, Duration::from_secs(3))
    };
    let mut c = Config::builder(Network::Regtest)
        .listen("127.0.0.1:0")
        .pin_threads(false)
        .build()
        .unwrap();
    c.target_outbound = 0;
    let engine = Arc::new(Engine::start(c).unwrap());
    let p2p = engine.local_addr().unwrap();
    let admin = AdminServer::start(engine.clone(), "127.0.0.1:0".parse().unwrap(), None).unwrap();
    let base = format!("http://{}", admin.local_addr());
    let _idle: Vec<Peer> = (0..IDLE_PEERS)
        .map(|i| Peer::connect(p2p, 1000 + i as u64))
        .collect();
    let mut honest = Peer::connect(p2p, 1);
    for n in 0..500 {
        honest.ping(n); // warm up
    }

    // the decoy: answers as big as the admin's, from a fixed buffer
    let size = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
        .len();
    let decoy = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let decoy_base = format!("http://{}", decoy.server_addr().to_ip().unwrap());
    let decoy_threads: Vec<_> = (0..2)
        .map(|_| {
            let d = decoy.clone();
            let body = vec![b'x'; size];
            std::thread::spawn(move || {
                while let Ok(r) = d.recv() {
                    let _ = r.respond(tiny_http::Response::from_data(body.clone()));
                }
            })
        })
        .collect();

    // the hammer: 200 clients, each with its own keep-alive connection, request after request
    // (mode 0: wait, 1: the admin listener, 2: the decoy)
    let load = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (load, stop, served, failed, base, decoy_base) = (
                load.clone(),
                stop.clone(),
                served.clone(),
                failed.clone(),
                base.clone(),
                decoy_base.clone(),
            );
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(60))
                        .max_idle_connections_per_host(1)
                        .build();
                    let paths = ["/metrics", "/peers"];
                    let mut k = i;
                    while !stop.load(Ordering::Relaxed) {
                        let target = match load.load(Ordering::Relaxed) {
                            1 => &base,
                            2 => &decoy_base,
                            _ => {
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        };
                        k += 1;
                        let ok = agent
                            .get(&format!("{target}{}", paths[k % 2]))
                            .call()
                            .ok()
                            .and_then(|r| r.into_string().ok())
                            .is_some();
                        if ok {
                            served.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        })
        .collect();

    let mut idle_rtts = Vec::new();
    let mut loaded_rtts = Vec::new();
    let mut decoy_rtts = Vec::new();
    let mut loaded_time = Duration::ZERO;
    let mut loaded_served = 0;
    let mut n = 1_000u64;
    for _ in 0..rounds {
        for mode in [0u8, 1, 2] {
            let loaded = mode == 1;
            load.store(mode, Ordering::SeqCst);
            if mode != 0 {
                // every client has started its first request
                let want = served.load(Ordering::Relaxed) + CLIENTS as u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while served.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else {
                std::thread::sleep(Duration::from_millis(200)); // the last requests drain
            }
            let t = Instant::now();
            let before = served.load(Ordering::Relaxed);
            let out = match mode {
                0 => &mut idle_rtts,
                1 => &mut loaded_rtts,
                _ => &mut decoy_rtts,
            };
            while t.elapsed() < phase {
                n += 1;
                out.push(honest.ping(n));
            }
            if loaded {
                loaded_time += t.elapsed();
                loaded_served += served.load(Ordering::Relaxed) - before;
            }
        }
    }
    load.store(0, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    for _ in &decoy_threads {
        decoy.unblock();
    }
    for t in decoy_threads {
        let _ = t.join();
    }

    let (i50, l50) = (pct(&mut idle_rtts, 0.5), pct(&mut loaded_rtts, 0.5));
    let (i99, l99) = (pct(&mut idle_rtts, 0.99), pct(&mut loaded_rtts, 0.99));
    let (d50, d99) = (pct(&mut decoy_rtts, 0.5), pct(&mut decoy_rtts, 0.99));
    println!(
        "admin under {CLIENTS} clients hammering /metrics and /peers ({IDLE_PEERS} idle peers, \
         {} idle, {} loaded and {} decoy pings, in {rounds} rounds of {phase:?} each):",
        idle_rtts.len(),
        loaded_rtts.len(),
        decoy_rtts.len()
    );
    println!(
        "  honest ping p50: idle {i50:?}, loaded {l50:?} ({:.2}x idle), decoy {d50:?} \
         (loaded {:.2}x decoy)",
        ratio(l50, i50),
        ratio(l50, d50)
    );
    println!(
        "  honest ping p99: idle {i99:?}, loaded {l99:?} ({:.2}x idle), decoy {d99:?} \
         (loaded {:.2}x decoy)",
        ratio(l99, i99),
        ratio(l99, d99)
    );
    println!(
        "  admin requests answered while loaded: {loaded_served} ({:.0}/s), failed {}",
        loaded_served as f64 / loaded_time.as_secs_f64().max(1e-9),
        failed.load(Ordering::Relaxed)
    );
    admin.stop();
    drop(honest);
    if let Ok(e) = Arc::try_unwrap(engine) {
        e.stop();
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}
