//! Engine benchmarks, each a ratio against a baseline measured in the same run:
//!
//! 1. Ping round trip: a blocking client pinging a bsn engine (the pong comes from the shard's
//!    event loop) vs the same client against a raw blocking TCP echo of the same bytes; p50, p99.
//! 2. Embedder round trip through two engines: A's embedder sends, B's embedder echoes, A's
//!    embedder receives (every hop: API, shard, socket, shard, worker, event channel).
//! 3. Handshakes per second with 1,000 and 10,000 clients (clients in a child process, so each
//!    side has its own descriptor limit) vs a raw server that answers the same bytes.
//! 4. Memory per idle peer: resident memory of this process holding 10,000 handshaken peers.
//!
//! Run: `cargo bench --bench engine` (add `-- --quick` for fewer samples).

use bsn::wire::frame::{encode_message, FrameDecoder};
use bsn::wire::{Command, Magic, Message, NetAddr, VersionMessage};
use bsn::{Config, Engine, Event, Network};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);

fn frame(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_message(&mut b, MAGIC, m);
    b.to_vec()
}

fn version(nonce: u64) -> Message {
    let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 0);
    Message::Version(VersionMessage {
        version: 70016,
        services: 0,
        timestamp: 0,
        receiver: a,
        sender: a,
        nonce,
        user_agent: "/bench/".into(),
        start_height: 0,
        relay: Some(false),
        extra: Bytes::new(),
    })
}

fn config(shards: usize) -> Config {
    let mut c = Config::new(Network::Regtest);
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.shards = shards;
    c.pin_threads = false;
    c.max_inbound = 20_000;
    c.event_capacity = 1 << 20;
    // The benchmark clients ping and handshake as fast as they can: far above what the default
    // rate limits let one peer do (100 pings a second), which would throttle them.
    c.rate_limits.msgs_per_sec = 1e9;
    c.rate_limits.msg_burst = 1e9;
    for (_, rate, burst) in c.rate_limits.per_command.iter_mut() {
        *rate = 1e9;
        *burst = 1e9;
    }
    c
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

struct Lat {
    p50: f64,
    p99: f64,
}

fn summarize(name: &str, mut v: Vec<u64>) -> Lat {
    let l = Lat {
        p50: pct(&mut v, 0.50) as f64 / 1000.0,
        p99: pct(&mut v, 0.99) as f64 / 1000.0,
    };
    println!(
        "{name:<44} p50 {:>8.1} us   p99 {:>8.1} us   ({} samples)",
        l.p50,
        l.p99,
        v.len()
    );
    l
}

/// A client that handshakes and then pings `n` times, timing each round trip.
fn ping_client(addr: SocketAddr, n: usize, handshake: bool) -> Vec<u64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut dec = FrameDecoder::new(MAGIC);
    let mut buf = vec![0u8; 65536];
    fn next(s: &mut TcpStream, dec: &mut FrameDecoder) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = dec.next_message().unwrap() {
                return m;
            }
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed");
            dec.push(&buf[..k]);
        }
    }
    if handshake {
        s.write_all(&frame(&version(7))).unwrap();
        loop {
            if next(&mut s, &mut dec) == Message::Verack {
                break;
            }
        }
        s.write_all(&frame(&Message::Verack)).unwrap();
        // let the engine's own first ping and protoconf pass
        std::thread::sleep(Duration::from_millis(50));
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            dec.push(&buf[..k]);
        }
        while dec.next_message().unwrap().is_some() {}
        s.set_read_timeout(None).unwrap();
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let f = frame(&Message::Ping(i));
        let t = Instant::now();
        s.write_all(&f).unwrap();
        loop {
            if let Message::Pong(x) = next(&mut s, &mut dec) {
                if x == i {
                    break;
                }
            }
        }
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

/// A raw echo server: every byte read is written back.
fn raw_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 4096];
        // the echo turns a ping frame into itself; the client waits for a "pong" — so swap the
        // command in place (same bytes, same length, same checksum: the payload is unchanged)
        loop {
            let k = match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(k) => k,
            };
            for w in b[..k]
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == b"ping")
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
            {
                b[w + 1] = b'o';
            }
            if s.write_all(&b[..k]).is_err() {
                return;
            }
        }
    });
    addr
}

fn bench_ping(n: usize) {
    println!("\n== ping round trip ({n} in a row, one connection)");
    let raw = summarize("raw TCP echo (baseline)", ping_client(raw_echo(), n, false));
    let e = Engine::start(config(1)).unwrap();
    let eng = summarize(
        "bsn engine answering ping",
        ping_client(e.local_addr().unwrap(), n, true),
    );
    e.stop();
    println!(
        "ratio engine/raw p50 {:.2}x (target <= 1.5x); engine p99/p50 {:.2}x (target <= 2x)",
        eng.p50 / raw.p50,
        eng.p99 / eng.p50
    );
}

fn bench_embedder_echo(n: usize) {
    println!("\n== embedder round trip through two engines ({n} in a row)");
    let a = Engine::start(config(1)).unwrap();
    let b = Engine::start(config(1)).unwrap();
    let (aev, bev) = (a.events(), b.events());
    a.connect(b.local_addr().unwrap()).unwrap();
    let wait_conn = |ev: &crossbeam_channel::Receiver<Event>| loop {
        if let Event::PeerConnected(p) = ev.recv().unwrap() {
            return p.id;
        }
    };
    let id_a = wait_conn(&aev);
    let id_b = wait_conn(&bev);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let b2 = std::sync::Arc::new(b);
    let b3 = b2.clone();
    let echo = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(Event::Message { message, .. }) = bev.recv_timeout(Duration::from_millis(50))
            {
                let _ = b3.send_nowait(id_b, message);
            }
        }
    });
    let cmd = Command::new("echo").unwrap();
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let m = Message::Unknown {
            command: cmd,
            payload: Bytes::copy_from_slice(&i.to_le_bytes()),
        };
        let t = Instant::now();
        a.send_nowait(id_a, m).unwrap();
        loop {
            if let Event::Message {
                message: Message::Unknown { payload, .. },
                ..
            } = aev.recv().unwrap()
            {
                if payload[..] == i.to_le_bytes() {
                    break;
                }
            }
        }
        v.push(t.elapsed().as_nanos() as u64);
    }
    summarize("A embedder -> B embedder -> A embedder", v);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    a.stop();
}

/// Child process: open `n` connections, handshake them all (pipelined), report the time, then
/// hold them until stdin closes.
fn child_clients(addr: SocketAddr, n: usize) {
    let t = Instant::now();
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    for (i, s) in socks.iter_mut().enumerate() {
        s.write_all(&frame(&version(1_000_000 + i as u64))).unwrap();
    }
    let verack = frame(&Message::Verack);
    let mut buf = vec![0u8; 4096];
    for s in socks.iter_mut() {
        let mut dec = FrameDecoder::new(MAGIC);
        'wait: loop {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "server closed a connection");
            dec.push(&buf[..k]);
            while let Some(m) = dec.next_message().unwrap() {
                if m == Message::Verack {
                    break 'wait;
                }
            }
        }
        s.write_all(&verack).unwrap();
    }
    println!("{}", t.elapsed().as_nanos());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn spawn_clients(addr: SocketAddr, n: usize) -> (std::process::Child, Duration) {
    let mut child = Proc::new(std::env::current_exe().unwrap())
        .env("BSN_BENCH_CLIENTS", format!("{addr} {n}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut s = String::new();
    let mut b = [0u8; 64];
    while !s.ends_with('\n') {
        let k = out.read(&mut b).unwrap();
        assert!(k > 0, "client process failed");
        s.push_str(std::str::from_utf8(&b[..k]).unwrap());
    }
    (child, Duration::from_nanos(s.trim().parse().unwrap()))
}

/// Baseline server: answers each connection with a canned version+verack. The sockets are held
/// until the returned sender is dropped, then released.
fn raw_handshake_server() -> (SocketAddr, crossbeam_channel::Sender<()>) {
    // Same listen backlog as the engine's listeners (std's default of 128 would make clients
    // wait for SYN retransmits and flatter the engine).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(4096).unwrap();
    sock.set_nonblocking(true).unwrap();
    let l: TcpListener = sock.into();
    let addr = l.local_addr().unwrap();
    let mut canned = frame(&version(1));
    canned.extend(frame(&Message::Verack));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::spawn(move || {
        // Answers at once, without waiting for the client's version: the cheapest possible
        // server that still puts the same bytes on the wire.
        let mut held = Vec::new();
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.set_nodelay(true);
                    let _ = s.write_all(&canned);
                    held.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                        done_rx.recv_timeout(Duration::from_micros(200))
                    {
                        return; // sockets and listener dropped here
                    }
                }
                Err(e) => panic!("raw server accept: {e}"),
            }
        }
    });
    (addr, done_tx)
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

fn bench_handshakes(n: usize) {
    println!("\n== {n} clients handshaking at once");
    let (raw_addr, raw_done) = raw_handshake_server();
    let (mut c, raw) = spawn_clients(raw_addr, n);
    drop(c.stdin.take());
    let _ = c.wait();
    drop(raw_done);
    let e = Engine::start(config(2)).unwrap();
    let ev = e.events();
    let before = rss_bytes();
    let (mut c, eng) = spawn_clients(e.local_addr().unwrap(), n);
    let mut seen = 0;
    while seen < n {
        if let Ok(Event::PeerConnected(_)) = ev.recv_timeout(Duration::from_secs(30)) {
            seen += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while ev.try_recv().is_ok() {}
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "raw server (baseline)   {:>10.0} handshakes/s",
        n as f64 / raw.as_secs_f64()
    );
    println!(
        "bsn engine, 2 shards    {:>10.0} handshakes/s",
        n as f64 / eng.as_secs_f64()
    );
    println!(
        "ratio engine/raw {:.2}x",
        raw.as_secs_f64() / eng.as_secs_f64()
    );
    println!(
        "memory: {:.1} KiB per idle peer ({} peers, RSS {} -> {} MiB; target < 16 KiB)",
        per / 1024.0,
        n,
        before >> 20,
        after >> 20
    );
    assert_eq!(e.peers().len(), n);
    drop(c.stdin.take());
    let _ = c.wait();
    e.stop();
}

fn main() {
    if let Ok(spec) = std::env::var("BSN_BENCH_CLIENTS") {
        let (a, n) = spec.split_once(' ').unwrap();
        return child_clients(a.parse().unwrap(), n.parse().unwrap());
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick" || a == "--test");
    // Optional section names (ping, echo, handshakes) pick what to run; none runs everything.
    let picked: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|s| s.as_str())
        .collect();
    let run = |name: &str| picked.is_empty() || picked.contains(&name);
    let n = if quick { 2_000 } else { 20_000 };
    if run("ping") {
        bench_ping(n);
    }
    if run("echo") {
        bench_embedder_echo(n / 2);
    }
    if run("handshakes") {
        bench_handshakes(1_000);
        bench_handshakes(if quick { 2_000 } else { 10_000 });
    }
}
