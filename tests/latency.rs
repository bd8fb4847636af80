//! Latency clients are peers, not spammers: `bsn node` with its default settings serves a
//! client that pings, waits for the pong and pings again at full speed, 20,000 times, without
//! scoring it; a client that floods pings without reading its pongs is not read any more once
//! its answers pile up (its writes block), and the latency client is served all the while.

mod common;

use bsn::wire::frame::message_to_bytes;
use bsn::wire::Message;
use common::{ScriptPeer, TempDir, REGTEST};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// `bsn node` on a free loopback port, its log (stderr, `RUST_LOG=info`) collected.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
    _dir: TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = TempDir::new("latency");
        let mut child = Command::new(env!("CARGO_BIN_EXE_bsn"))
            .args(["node", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.0.join("data"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bsn node starts");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let (ltx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = ltx.send(l);
            }
        });
        let deadline = Instant::now() + T;
        let addr = loop {
            let l = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("bsn node prints where it listens");
            if let Some(rest) = l.split("listening on ").nth(1) {
                break rest.split(',').next().unwrap().parse().unwrap();
            }
        };
        Node {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping_pong(p: &mut ScriptPeer, nonce: u64) -> Duration {
    let t = Instant::now();
    p.send(&Message::Ping(nonce));
    p.expect(T, |m| *m == Message::Pong(nonce));
    t.elapsed()
}

#[test]
fn a_latency_client_is_served_at_full_speed_and_a_ping_flooder_is_not_read() {
    let node = Node::start();
    let mut client = ScriptPeer::connect(node.addr, REGTEST);
    client.handshake(1);
    let mut rtts: Vec<Duration> = (0..20_000u64)
        .map(|i| ping_pong(&mut client, 1_000_000 + i))
        .collect();
    rtts.sort();
    eprintln!(
        "20,000 pings to bsn node: p50 {:?}, p99 {:?}, max {:?}",
        rtts[10_000], rtts[19_800], rtts[19_999]
    );

    // A flooder: pings as fast as the socket takes them, never reading a pong.
    let mut f = ScriptPeer::connect(node.addr, REGTEST);
    f.handshake(2);
    f.stream.set_nonblocking(true).unwrap();
    let frame = message_to_bytes(REGTEST, &Message::Ping(7));
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 4096)
        .collect();
    let mut written = 0usize;
    let limit = 512usize << 20;
    let mut blocked_since: Option<Instant> = None;
    // Positive signal: the node stops reading it, so its writes block for good (a second with
    // not one byte taken), long before half a gigabyte of pings.
    while written < limit {
        // (a short write leaves the rest of a frame: the next write starts there)
        let at = written % burst.len();
        match f.stream.write(&burst[at..]) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(1) {
                    break;
                }
                // the latency client is served meanwhile
                ping_pong(&mut client, 9_000_000 + written as u64);
            }
            Err(e) => panic!(
                "flooder write: {e}; node log: {:#?}",
                node.log_lines()
                    .iter()
                    .filter(|l| !l.contains("ping"))
                    .collect::<Vec<_>>()
            ),
        }
    }
    assert!(
        written < limit,
        "the node kept reading a client that never reads ({written} bytes of pings taken)"
    );
    eprintln!("ping flooder blocked after {} MiB of pings", written >> 20);
    // the flooder is still connected, just not read; once it reads, it is served again
    f.stream.set_nonblocking(false).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut drained = 0usize;
    let deadline = Instant::now() + T;
    f.stream.set_read_timeout(Some(T)).unwrap();
    let want = (written / 2).min(4 << 20);
    while drained < want {
        assert!(
            Instant::now() < deadline,
            "the flooder got {drained} of {want} bytes of pongs"
        );
        match f.stream.read(&mut sink) {
            Ok(0) => panic!("the flooder was dropped instead of paused"),
            Ok(n) => drained += n,
            Err(e) => panic!("flooder read: {e}"),
        }
    }
    let log = node.log_lines();
    let scored: Vec<&String> = log.iter().filter(|l| l.contains("ban score")).collect();
    assert!(scored.is_empty(), "a ping client was scored: {scored:#?}");
}
