//! A 100 MB block and a 50 MB transaction between engines over loopback, in the normal suite:
//! the block is downloaded into a block file (it is over the 32 MiB file threshold), stored as a
//! reference to it, served from it to a plain client and to the embedder, read back after a
//! restart; the transaction is relayed. A big block that breaks its merkle root is refused on its
//! way in and leaves no file.

mod common;
use bsn::wire::{BlockHeader, Hash256, InvType, Inventory, Message, OutPoint, Transaction};
use bsn::{Event, HeaderRef};
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// A transaction of about `size` bytes (an `OP_RETURN` output).
fn big_tx(spends: Hash256, size: usize) -> Transaction {
    let script = vec![0x6a; size];
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: spends,
                vout: 0,
            },
            b"",
            u32::MAX,
        )],
        &[(0, &script)],
        0,
    )
}

#[test]
fn a_100_mb_block_and_a_50_mb_transaction_travel_and_are_served() {
    let dir = TempDir::new("big");
    let (a, _aev) = start(config());
    let mut bc = config();
    bc.data_dir = Some(dir.0.clone());
    let (b, bev) = start(bc.clone());
    b.connect(a.local_addr().unwrap()).unwrap();
    wait_for(&bev, T, "b connected", |e| match e {
        Event::PeerConnected(_) => Some(()),
        _ => None,
    });
    // the block: a coinbase and a 100 MB transaction
    let genesis = a.header(HeaderRef::Height(0)).unwrap().0;
    let cb = next_block(&genesis, 77).txs[0].clone();
    let tx = big_tx(cb.txid(), 100_000_000);
    let mut h = BlockHeader {
        version: 4,
        prev_hash: genesis.hash(),
        merkle_root: bsn::wire::merkle_root(vec![cb.txid(), tx.txid()]),
        time: genesis.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    let txids = vec![cb.txid(), tx.txid()];
    let block = bsn::wire::Block::new(h, vec![cb, tx]);
    let (hash, size) = (block.hash(), block.raw().len());
    let raw = block.raw().clone();
    assert!(size > 100_000_000);
    a.submit_block(block).unwrap();
    // the event says what the block is without the block: header, count, size
    let (header, tx_count, got_size) =
        wait_for(&bev, T, "b connects the 100 MB block", |e| match e {
            Event::BlockConnected {
                hash: x,
                header,
                tx_count,
                size,
                ..
            } if *x == hash => Some((*header, *tx_count, *size)),
            _ => None,
        });
    assert_eq!((header, tx_count, got_size), (h, 2, size as u64));
    // read in pieces, never whole: its size, 8 MB at a time, its transaction ids
    let at = HeaderRef::Hash(hash);
    assert_eq!(b.block_size(at).unwrap(), Some(size as u64));
    let mut piece = vec![0u8; 8 << 20];
    let mut offset = 0;
    loop {
        let n = b
            .read_block(at, offset as u64, &mut piece)
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        assert_eq!(&piece[..n], &raw[offset..offset + n], "at {offset}");
        offset += n;
    }
    assert_eq!(offset, size);
    assert_eq!(b.block_txids(at).unwrap(), Some(txids.clone()));
    assert_eq!(b.block_tx_count(at).unwrap(), Some(2));
    assert_eq!(b.block_size(HeaderRef::Height(9)).unwrap(), None);
    // it is in a file of its own in the data dir, never whole in b's memory
    let files = block_files(&dir.0, &hash);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), size as u64);
    // b serves it whole to a plain client
    let mut c = ScriptPeer::connect(b.local_addr().unwrap(), REGTEST);
    c.handshake(88);
    c.send(&Message::GetData(vec![Inventory {
        kind: InvType::BLOCK,
        hash,
    }]));
    match c.expect(T, |m| matches!(m, Message::Block(_))) {
        Message::Block(got) => {
            assert_eq!((got.hash(), got.raw().len()), (hash, size));
        }
        _ => unreachable!(),
    }
    // a 50 MB transaction from a reaches b's embedder
    let tx = big_tx(Hash256::sha256d(b"fifty"), 50_000_000);
    let txid = tx.txid();
    a.submit_tx(tx).unwrap();
    let got = wait_for(&bev, T, "b handed the 50 MB transaction", |e| match e {
        Event::TxReceived { tx, .. } if tx.txid() == txid => Some(tx.raw().len()),
        _ => None,
    });
    assert!(got > 50_000_000);
    // the embedder asks for it itself: it gets a file of its own
    let pa = b.peers()[0].id;
    b.send(
        pa,
        Message::GetData(vec![Inventory {
            kind: InvType::BLOCK,
            hash,
        }]),
    )
    .unwrap();
    let path = wait_for(&bev, T, "the embedder's block file", |e| match e {
        Event::BlockFile {
            hash: x,
            path,
            size: s,
            tx_count: 2,
            ..
        } if *x == hash && *s == size as u64 => Some(path.clone()),
        _ => None,
    });
    let mine = std::fs::read(&path).unwrap();
    assert!(mine == raw[..], "the embedder's file holds the block");
    std::fs::remove_file(&path).unwrap();
    for e in [&a, &b] {
        assert_eq!(e.ban_score("127.0.0.1".parse().unwrap()), 0);
    }
    a.stop();
    b.stop();
    // after a restart the block is read from its file as before; a file no stored block
    // names (a crash before a commit) is removed
    let stray = dir
        .0
        .join("blocks")
        .join(format!("{hash}-00000000000000aa.blk"));
    std::fs::write(&stray, b"left by a crash").unwrap();
    let (b, _bev) = start(bc);
    assert!(!stray.exists());
    assert_eq!(b.block_size(at).unwrap(), Some(size as u64));
    assert_eq!(b.block_txids(at).unwrap(), Some(txids));
    let got = b.block(at).unwrap().unwrap();
    assert_eq!(got.raw()[..], raw[..]);
    assert_eq!(block_files(&dir.0, &hash).len(), 1);
    b.stop();
}

/// The block files of `hash` in a data dir.
fn block_files(dir: &std::path::Path, hash: &Hash256) -> Vec<std::path::PathBuf> {
    let prefix = format!("{hash}-");
    std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".blk")
        })
        .collect()
}

#[test]
fn a_big_block_with_a_wrong_merkle_root_is_refused_on_its_way_in() {
    let dir = TempDir::new("bigbad");
    let mut c = config();
    c.data_dir = Some(dir.0.clone());
    let (e, ev) = start(c);
    let genesis = e.header(HeaderRef::Height(0)).unwrap().0;
    let cb = next_block(&genesis, 5).txs[0].clone();
    let tx = big_tx(cb.txid(), 40_000_000);
    let mut h = BlockHeader {
        version: 4,
        prev_hash: genesis.hash(),
        merkle_root: Hash256::sha256d(b"not the root"),
        time: genesis.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    let block = bsn::wire::Block::new(h, vec![cb, tx]);
    let mut p = ScriptPeer::connect(e.local_addr().unwrap(), REGTEST);
    p.handshake(90);
    p.send(&Message::Block(block));
    let reason = wait_for(&ev, T, "the sender scored", |e| match e {
        Event::BanScore { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, bsn::BanReason::InvalidBlock);
    assert!(p.closed_within(T), "banned, so dropped");
    // the file it was written to is gone (removed before the score was given)
    let left: Vec<_> = std::fs::read_dir(dir.0.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    e.stop();
}
