//! Test support: engine configs for loopback, event waiting with deadlines, and a scripted peer
//! that speaks the wire protocol over a plain blocking socket.
#![allow(dead_code)]

use bsn::wire::frame::{encode_message, FrameDecoder};
use bsn::wire::{Magic, Message, NetAddr, VersionMessage};
use bsn::{Config, Engine, Event, Network};
use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub mod ffi;
#[path = "../../src/util.rs"]
mod random;
pub use random::random_u64;

pub const REGTEST: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);

/// A loopback config with fast timers and no pinning (tests share the machine).
pub fn config() -> Config {
    Config::builder(Network::Regtest)
        .listen("127.0.0.1:0")
        .shards(2)
        .pin_threads(false)
        .tick(Duration::from_millis(20))
        .build()
        .map(|mut c| {
            // no automatic dialling from the address book unless a test asks for it
            c.target_outbound = 0;
            c
        })
        .expect("test config is valid")
}

pub fn start(c: Config) -> (Engine, Receiver<Event>) {
    let e = Engine::start(c).expect("engine starts");
    let ev = e.events();
    (e, ev)
}

/// Waits up to `timeout` for an event matching `f`; panics with what was seen otherwise.
pub fn wait_for<T>(
    ev: &Receiver<Event>,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ev.recv_timeout(left) {
            Ok(e) => {
                if let Some(t) = f(&e) {
                    return t;
                }
                if seen.len() < 20 {
                    seen.push(format!("{e:?}").chars().take(200).collect::<String>());
                }
            }
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}; saw: {seen:#?}"),
        }
    }
}

pub fn version_msg(version: i32, nonce: u64) -> VersionMessage {
    let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 0);
    VersionMessage {
        version,
        services: 0,
        timestamp: 0,
        receiver: a,
        sender: a,
        nonce,
        user_agent: "/script:0.1/".into(),
        start_height: 0,
        relay: Some(false),
        extra: Bytes::new(),
    }
}

/// A peer driven by the test: a blocking socket and the bsn codec.
pub struct ScriptPeer {
    pub stream: TcpStream,
    pub magic: Magic,
    dec: FrameDecoder,
}

impl ScriptPeer {
    pub fn connect(addr: SocketAddr, magic: Magic) -> ScriptPeer {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_nodelay(true).unwrap();
        ScriptPeer {
            stream,
            magic,
            dec: FrameDecoder::new(magic),
        }
    }

    /// Speaks over a connection accepted by the test (the test plays the listening side).
    pub fn from_stream(stream: TcpStream, magic: Magic) -> ScriptPeer {
        stream.set_nodelay(true).unwrap();
        ScriptPeer {
            stream,
            magic,
            dec: FrameDecoder::new(magic),
        }
    }

    /// Connects from a chosen loopback source address (e.g. 127.0.3.7), to test per-IP rules.
    pub fn connect_from(
        src: std::net::IpAddr,
        addr: SocketAddr,
        magic: Magic,
    ) -> std::io::Result<ScriptPeer> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.bind(&SocketAddr::new(src, 0).into())?;
        sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        Ok(ScriptPeer {
            stream,
            magic,
            dec: FrameDecoder::new(magic),
        })
    }

    pub fn send(&mut self, m: &Message) {
        let mut b = BytesMut::new();
        encode_message(&mut b, self.magic, m);
        self.stream.write_all(&b).expect("write");
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// The next message, or `None` on close / timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        loop {
            match self.dec.next_message() {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("script peer got a bad frame: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.push(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Waits for a message matching `f`, skipping others.
    pub fn expect(&mut self, timeout: Duration, mut f: impl FnMut(&Message) -> bool) -> Message {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(m) if f(&m) => return m,
                Some(_) => continue,
                None => panic!("script peer: expected message not received"),
            }
        }
    }

    /// True when the engine closed the connection within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Version, verack both ways, as an outbound peer.
    pub fn handshake(&mut self, nonce: u64) -> VersionMessage {
        self.send(&Message::Version(version_msg(70016, nonce)));
        let v = match self.expect(Duration::from_secs(5), |m| matches!(m, Message::Version(_))) {
            Message::Version(v) => v,
            _ => unreachable!(),
        };
        self.expect(Duration::from_secs(5), |m| matches!(m, Message::Verack));
        self.send(&Message::Verack);
        v
    }
}

/// A unique temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "bsn-test-{tag}-{}-{}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real-data directory: `$BSN_TEST_DATA`, else `../shared/data` beside the crate. When it is
/// absent, says so loudly on stderr (the harness shows it even when output is captured) and
/// returns `None`: the calling test then skips.
pub fn data_dir(test: &str) -> Option<std::path::PathBuf> {
    use std::io::Write as _;
    let (dir, shown) = match std::env::var_os("BSN_TEST_DATA") {
        Some(d) => (
            std::path::PathBuf::from(&d),
            format!("$BSN_TEST_DATA={}", d.to_string_lossy()),
        ),
        None => (
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
            "../shared/data".to_string(),
        ),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: real-data test {test}: {shown} not found (set BSN_TEST_DATA)"
    );
    None
}

/// A regtest chain of `n` coinbase-only blocks on genesis, with real proof of work.
pub fn regtest_blocks(n: usize) -> Vec<bsn::wire::Block> {
    let mut prev = bsn::Network::Regtest.params().genesis;
    let mut out = Vec::new();
    for i in 0..n as u32 {
        let b = next_block(&prev, i);
        prev = b.header;
        out.push(b);
    }
    out
}

/// A coinbase-only regtest block on `prev` (its coinbase script holds `tag`), with real proof of
/// work.
pub fn next_block(prev: &bsn::wire::BlockHeader, tag: u32) -> bsn::wire::Block {
    let cb = bsn::wire::Transaction::build(
        1,
        &[(
            bsn::wire::OutPoint {
                txid: bsn::wire::Hash256::ZERO,
                vout: u32::MAX,
            },
            &tag.to_le_bytes(),
            u32::MAX,
        )],
        &[(50, b"\x51")],
        0,
    );
    let mut h = bsn::wire::BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: cb.txid(),
        time: prev.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    bsn::wire::Block::new(h, vec![cb])
}

/// A header on `prev` with `bits` (its merkle root made from `tag`), with real proof of work:
/// chains of cheap and dear headers for the fork and pre-sync tests.
pub fn header_on(prev: &bsn::wire::BlockHeader, bits: u32, tag: u64) -> bsn::wire::BlockHeader {
    let mut h = bsn::wire::BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: bsn::wire::Hash256::sha256d(&tag.to_le_bytes()),
        time: prev.time + 1,
        bits,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// A transaction spending output `n` of a made-up parent (distinct for every `n`).
pub fn sample_tx(n: u32) -> bsn::wire::Transaction {
    bsn::wire::Transaction::build(
        1,
        &[(
            bsn::wire::OutPoint {
                txid: bsn::wire::Hash256::sha256d(&n.to_le_bytes()),
                vout: n,
            },
            b"\x51",
            u32::MAX,
        )],
        &[(1000, b"\x51")],
        0,
    )
}

/// Writes blocks as a block file (records of disk magic, length, block).
pub fn write_blk(path: &std::path::Path, magic: Magic, blocks: &[&[u8]]) {
    let mut f = Vec::new();
    for b in blocks {
        f.extend_from_slice(&magic.0);
        f.extend_from_slice(&(b.len() as u32).to_le_bytes());
        f.extend_from_slice(b);
    }
    std::fs::write(path, f).unwrap();
}
