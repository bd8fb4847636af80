//! A 100 MB block and a 50 MB transaction between engines over loopback, in the normal suite:
//! the block is downloaded, stored and served whole to a plain client (it is bigger than the
//! 64 MB send queue limit, which bounds what piles up, not one message), the transaction is
//! relayed.

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
    let (a, _aev) = start(config());
    let (b, bev) = start(config());
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
    wait_for(&bev, T, "b connects the 100 MB block", |e| match e {
        Event::BlockConnected { hash: x, .. } if *x == hash => Some(()),
        _ => None,
    });
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
    assert_eq!(b.block_txids(at).unwrap(), Some(txids));
    assert_eq!(b.block_size(HeaderRef::Height(9)).unwrap(), None);
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
    for e in [&a, &b] {
        assert_eq!(e.ban_score("127.0.0.1".parse().unwrap()), 0);
    }
    a.stop();
    b.stop();
}
