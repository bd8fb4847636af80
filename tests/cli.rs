//! `bsn decode` end to end: the real binary on generated files (always) and on the real mainnet
//! files in ../shared/data (skipped loudly when absent).

mod common;
use bsn::wire::frame::{encode_message, Magic};
use bsn::wire::tx::{OutPoint, Transaction};
use bsn::wire::{Block, BlockHeader, Hash256, Message};
use bytes::BytesMut;
use common::{data_dir, TempDir};
use std::process::Command;

fn bsn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bsn"))
}

fn sample_block() -> Block {
    let op = OutPoint {
        txid: Hash256([1; 32]),
        vout: 0,
    };
    let coinbase = Transaction::build(
        1,
        &[(op, b"\x01\x02", u32::MAX)],
        &[(50_0000_0000, b"\x51")],
        0,
    );
    let mut header = BlockHeader {
        version: 1,
        prev_hash: Hash256::ZERO,
        merkle_root: coinbase.txid(),
        time: 1_700_000_000,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !header.meets_own_target() {
        header.nonce += 1;
    }
    Block::new(header, vec![coinbase])
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bsn().args(args).output().expect("bsn runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decodes_generated_block_tx_and_frames() {
    let dir = TempDir::new("gen");
    let block = sample_block();
    let bp = dir.0.join("block.raw");
    std::fs::write(&bp, block.raw()).unwrap();
    let (ok, out, err) = run(&["decode", bp.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&block.hash().to_string()), "{out}");
    assert!(out.contains("merkle root matches"), "{out}");

    let tp = dir.0.join("tx.raw");
    std::fs::write(&tp, block.txs[0].raw()).unwrap();
    let (ok, out, _) = run(&["decode", tp.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains(&block.txs[0].txid().to_string()), "{out}");

    let magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);
    let mut buf = BytesMut::new();
    encode_message(&mut buf, magic, &Message::Ping(7));
    encode_message(&mut buf, magic, &Message::Block(block.clone()));
    let fp = dir.0.join("frames.bin");
    std::fs::write(&fp, &buf).unwrap();
    let (ok, out, err) = run(&["decode", fp.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("ping") && out.contains("2 frames"), "{out}");
}

#[test]
fn malformed_input_is_one_line_with_offset() {
    let dir = TempDir::new("bad");
    let block = sample_block();
    let p = dir.0.join("cut.raw");
    // a block cut short inside its coinbase transaction
    std::fs::write(&p, &block.raw()[..block.raw().len() - 3]).unwrap();
    let (ok, out, err) = run(&["decode", "--format", "block", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("at byte"), "{err}");

    let magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);
    let mut buf = BytesMut::new();
    encode_message(&mut buf, magic, &Message::Ping(7));
    let at = buf.len();
    encode_message(&mut buf, magic, &Message::Pong(7));
    buf[at + 24] ^= 1; // break the pong's checksum
    let p = dir.0.join("frames.bin");
    std::fs::write(&p, &buf).unwrap();
    let (ok, _, err) = run(&["decode", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad checksum for pong") && err.contains(&format!("offset {at}")),
        "{err}"
    );

    let (ok, _, err) = run(&["decode", "/nonexistent/file"]);
    assert!(!ok && err.contains("cannot read"), "{err}");

    // a block cut at a multiple of 80 bytes is not taken for a file of headers: the format is
    // guessed from the content, and the error says what was assumed and why
    let big = {
        let mut b = sample_block();
        let tx = Transaction::build(
            1,
            &[(
                OutPoint {
                    txid: Hash256([2; 32]),
                    vout: 0,
                },
                &[0x51; 300],
                0,
            )],
            &[(1, b"\x51")],
            0,
        );
        b = Block::new(b.header, vec![b.txs[0].clone(), tx]);
        b
    };
    let p = dir.0.join("cut80.raw");
    std::fs::write(&p, &big.raw()[..240]).unwrap();
    let (ok, _, err) = run(&["decode", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("malformed block"), "{err}");
    assert!(
        err.contains("read as a block (guessed: 240 bytes are a multiple of 80"),
        "{err}"
    );
    // real linked headers are still read as headers
    let mut headers = sample_block().header.to_array().to_vec();
    let mut next = sample_block().header;
    next.prev_hash = sample_block().header.hash();
    headers.extend_from_slice(&next.to_array());
    let p = dir.0.join("two.hdr");
    std::fs::write(&p, &headers).unwrap();
    let (_, out, err) = run(&["decode", p.to_str().unwrap()]);
    assert!(
        out.contains("header") && !err.contains("malformed block"),
        "{out}{err}"
    );
}

#[test]
fn decodes_real_mainnet_files() {
    let Some(d) = data_dir("cli: decode real mainnet files") else {
        return;
    };
    let p = d.join("bitcoin-core-bench/block413567.raw");
    let (ok, out, err) = run(&["decode", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("0000000000000000025aff8be8a55df8f89c77296db6198f272d6577325d4069"));
    assert!(out.contains("txs         1557"), "{out}");
    let p = d.join("btcd/blocks1-256.dat");
    let (ok, out, err) = run(&["decode", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("255 blocks, 254 of 254 link"), "{out}");
}

#[test]
fn node_refuses_a_port_out_of_range_and_a_data_dir_in_use_with_clear_errors() {
    let dir = TempDir::new("cli-node");
    let run = |args: &[&str]| {
        let out = bsn()
            .arg("node")
            .args(args)
            .arg("--data-dir")
            .arg(&dir.0)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--listen", "127.0.0.1:99999"]);
    assert!(!ok);
    assert!(err.contains("port 99999 is out of range"), "{err}");
    // a data dir in use: an engine of this process holds it
    let mut c = common::config();
    c.data_dir = Some(dir.0.clone());
    let (e, _ev) = common::start(c);
    let (ok, err) = run(&["--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("in use by another running bsn"), "{err}");
    e.stop();
}

/// Runs `bsn ARGS` with its stdout into a pipe whose reader takes one line and closes it (as
/// `| head -1` does); returns whether it exited 0 and its stderr.
fn first_line_then_closed(args: &[&str]) -> (String, bool, String) {
    first_line_then_closed_and(args, || {})
}

/// As [`first_line_then_closed`], with `after` run once the reader is gone (to make the program
/// write again).
fn first_line_then_closed_and(args: &[&str], after: impl FnOnce()) -> (String, bool, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = bsn()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    after();
    // the reader is gone: the next write fails with a broken pipe
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("bsn {args:?} did not end after its stdout closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (line, status.success(), err)
}

#[test]
fn a_closed_stdout_ends_node_and_decode_quietly() {
    // decode of a file of many frames, more than one pipe buffer of text
    let dir = TempDir::new("cli-pipe");
    let mut frames = BytesMut::new();
    for i in 0..5_000u64 {
        encode_message(
            &mut frames,
            Magic([0xe3, 0xe1, 0xf3, 0xe8]),
            &Message::Ping(i),
        );
    }
    let f = dir.0.join("pings.bin");
    std::fs::write(&f, &frames).unwrap();
    let (line, ok, err) = first_line_then_closed(&["decode", "--all", f.to_str().unwrap()]);
    assert!(!line.is_empty());
    assert!(ok, "decode exit: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // a node prints its start line, then a line per connection and disconnection: its stdout
    // closes after the first; once the node has connected to this test's engine, the engine
    // stops, and the node's next line (the disconnection, if the reader took the connection's
    // line with the first) ends it
    let data = dir.0.join("node");
    let (peer, pev) = common::start(common::config());
    let peer_addr = peer.local_addr().unwrap().to_string();
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--no-pin",
        "--data-dir",
        data.to_str().unwrap(),
        "--connect",
        &peer_addr,
    ];
    let (line, ok, err) = first_line_then_closed_and(&args, || {
        common::wait_for(&pev, std::time::Duration::from_secs(30), "the node", |e| {
            matches!(e, bsn::Event::PeerConnected(_)).then_some(())
        });
        peer.stop();
    });
    assert!(line.starts_with("bsn node:"), "{line}");
    assert!(ok, "node exit: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_import_file_is_named_before_the_node_listens() {
    let dir = TempDir::new("cli-import");
    let bad = dir.0.join("blk-bad.dat");
    std::fs::write(&bad, b"not a block file at all, just text").unwrap();
    // a port that is free now: the node would listen on it if it started
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let out = bsn()
        .args(["node", "--no-pin", "--listen", &listen, "--data-dir"])
        .arg(dir.0.join("node"))
        .arg("--import")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        err.contains("error: import") && err.contains("blk-bad.dat"),
        "{err}"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        !dir.0.join("node").exists(),
        "nothing started, no data dir made"
    );
    let missing = dir.0.join("missing.dat");
    let out = bsn()
        .args(["node", "--no-pin", "--listen", &listen, "--data-dir"])
        .arg(dir.0.join("node"))
        .arg("--import")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.dat"), "{err}");
}

/// `bsn node --admin 127.0.0.1:0 --admin-token T` serves the API (its address on the start
/// line); the client commands reach it, the token guards bans; with nothing listening, the
/// client says where it looked.
#[test]
fn node_admin_flag_serves_the_client_commands() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = TempDir::new("cli-admin");
    let mut child = bsn()
        .args(["node", "--listen", "127.0.0.1:0", "--no-pin", "--data-dir"])
        .arg(dir.0.join("data"))
        .args(["--admin", "127.0.0.1:0", "--admin-token", "tok"])
        .env_remove("BSN_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _node = Kill(child);
    let admin = line
        .split("admin http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no admin address on the start line: {line}"))
        .trim()
        .to_string();
    let client = |args: &[&str], token: Option<&str>| {
        let mut c = bsn();
        c.args(args)
            .args(["--admin", &admin])
            .env_remove("BSN_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("BSN_ADMIN_TOKEN", t);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = client(&["status"], None);
    assert!(ok, "{err}");
    assert!(out.contains("network    regtest"), "{out}");
    assert!(
        out.contains("ready      no: no peer has completed its handshake"),
        "{out}"
    );
    let (ok, _, err) = client(&["ban", "192.0.2.1"], None);
    assert!(!ok && err.contains("admin token"), "{err}");
    let (ok, out, err) = client(&["ban", "192.0.2.1", "--for", "1h"], Some("tok"));
    assert!(ok, "{err}");
    assert!(out.starts_with("banned 192.0.2.1/32 until "), "{out}");
    let (ok, out, err) = client(&["bans", "--json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["subnet"], "192.0.2.1/32");
    let (ok, out, err) = client(&["unban", "--all"], Some("tok"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "lifted 1 bans");
    let (ok, out, _) = client(&["peers"], None);
    assert!(ok);
    assert_eq!(out.trim(), "no peers");

    // nothing there: the client says where it looked
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = free.local_addr().unwrap().to_string();
    drop(free);
    let out = bsn().args(["peers", "--admin", &nowhere]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot reach the node's admin listener at {nowhere}"
        )),
        "{err}"
    );
}

/// `bsn node --outbound-bind IP`: its connections leave from that address (the peer sees it
/// there); an address with a port is a usage error.
#[test]
fn node_outbound_bind_sets_the_source_address() {
    let dir = TempDir::new("cli-bind");
    let (peer, pev) = common::start(common::config());
    let peer_addr = peer.local_addr().unwrap().to_string();
    let mut child = bsn()
        .args([
            "node",
            "--no-pin",
            "--no-listen",
            "--outbound-bind",
            "127.0.0.5",
        ])
        .arg("--data-dir")
        .arg(dir.0.join("node"))
        .args(["--connect", &peer_addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let from = common::wait_for(
        &pev,
        std::time::Duration::from_secs(30),
        "the node's connection",
        |e| match e {
            bsn::Event::PeerConnected(p) => Some(p.addr),
            _ => None,
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    peer.stop();
    assert_eq!(from.ip().to_string(), "127.0.0.5", "{from}");
    let out = bsn()
        .args(["node", "--outbound-bind", "127.0.0.5:8333"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--outbound-bind"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
