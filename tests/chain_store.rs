//! Headers and blocks in the LMDB store: batches written, the tree reloaded after reopening,
//! reorgs reflected in the height index, and the real early mainnet chain stored bit for bit.

mod common;

use bsn::store::chain::{stored_hash_at, stored_tip, ChainDb};
use bsn::store::lmdb::{LmdbOptions, LmdbStore};
use bsn::store::records::{put_block, with_block};
use bsn::store::{Batch, Store};
use bsn::wire::{Block, BlockHeader, Decode, Hash256};
use bsn::Network;
use common::{data_dir, TempDir};

/// A regtest header on `prev` with real proof of work.
fn mine(prev: &BlockHeader, salt: u32) -> BlockHeader {
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
        time: prev.time + 600,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

fn chain_from(start: &BlockHeader, n: usize, salt: u32) -> Vec<BlockHeader> {
    let mut v: Vec<BlockHeader> = Vec::with_capacity(n);
    for i in 0..n {
        let prev = v.last().copied().unwrap_or(*start);
        v.push(mine(
            &prev,
            salt.wrapping_mul(1_000_003).wrapping_add(i as u32),
        ));
    }
    v
}

fn check_heights(s: &dyn Store, db: &ChainDb) {
    let (tip, height, _) = db.tree().tip();
    assert_eq!(stored_tip(s).unwrap(), Some(tip));
    for h in 0..=height {
        assert_eq!(
            stored_hash_at(s, h).unwrap(),
            db.tree().hash_at(h),
            "height {h}"
        );
    }
    assert_eq!(stored_hash_at(s, height + 1).unwrap(), None);
}

#[test]
fn headers_survive_reopen_and_reorgs_rewrite_the_height_index() {
    let params = Network::Regtest.params();
    let dir = TempDir::new("chain-store");
    let main = chain_from(&params.genesis, 3000, 1);
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let mut db = ChainDb::new(&params);
        for part in main.chunks(2000) {
            let mut b = Batch::new();
            let u = db.insert_headers(part, &mut b);
            assert!(u.error.is_none() && u.reorg.is_none());
            s.write(&b).unwrap();
        }
        check_heights(&s, &db);
    }
    let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
    let mut db = ChainDb::load(&s, &params).unwrap();
    assert_eq!(db.tree().height(), 3000);
    assert_eq!(db.tree().tip().0, main[2999].hash());
    // a fork from height 2500 that ends longer: one reorg, fork point 2500
    let fork = chain_from(&main[2499], 600, 2);
    let mut b = Batch::new();
    let u = db.insert_headers(&fork, &mut b);
    s.write(&b).unwrap();
    let r = u.reorg.expect("the longer fork reorganizes");
    assert_eq!(r.fork_point.height, 2500);
    assert_eq!(r.fork_point.hash, main[2499].hash());
    assert_eq!(r.disconnected.len(), 500);
    assert_eq!(r.disconnected[0], main[2999].hash());
    assert_eq!(r.connected.len(), 600);
    assert_eq!(u.new_tip.height, 3100);
    check_heights(&s, &db);
    // then the old branch grows past it again: back, and the index shrinks/grows to match
    let more = chain_from(&main[2999], 150, 3);
    let mut b = Batch::new();
    let u = db.insert_headers(&more, &mut b);
    s.write(&b).unwrap();
    assert_eq!(u.reorg.unwrap().fork_point.height, 2500);
    check_heights(&s, &db);
    drop(db);
    drop(s);
    let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
    let db = ChainDb::load(&s, &params).unwrap();
    assert_eq!(db.tree().tip().0, more[149].hash());
    assert_eq!(db.tree().len(), 1 + 3000 + 600 + 150);
    check_heights(&s, &db);
    // a bad header mid-batch: the ones before it are stored, the error names its index
    let mut bad = chain_from(&more[149], 5, 4);
    bad[3].nonce = bad[3].nonce.wrapping_add(1);
    while bad[3].meets_own_target() {
        bad[3].nonce = bad[3].nonce.wrapping_add(1);
    }
    let mut db = db;
    let mut b = Batch::new();
    let u = db.insert_headers(&bad, &mut b);
    assert_eq!(u.error.as_ref().map(|e| e.0), Some(3));
    assert_eq!(u.added.len(), 3);
    s.write(&b).unwrap();
    check_heights(&s, &db);
}

fn blk_records(data: &[u8]) -> Vec<bytes::Bytes> {
    let data = bytes::Bytes::copy_from_slice(data);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        assert_eq!(&data[pos..pos + 4], &[0xf9, 0xbe, 0xb4, 0xd9]);
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        out.push(data.slice(pos + 8..pos + 8 + len));
        pos += 8 + len;
    }
    out
}

#[test]
fn real_early_mainnet_blocks_stored_bit_for_bit() {
    let Some(d) = data_dir("store: real early mainnet blocks") else {
        return;
    };
    let raw = std::fs::read(d.join("btcd/blocks1-256.dat")).unwrap();
    let blocks = blk_records(&raw);
    assert_eq!(blocks.len(), 255);
    let params = Network::Mainnet.params();
    let dir = TempDir::new("chain-real");
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let mut db = ChainDb::new(&params);
        let mut b = Batch::new();
        let headers: Vec<BlockHeader> = blocks
            .iter()
            .map(|r| Block::decode_all(r.clone()).unwrap().header)
            .collect();
        let u = db.insert_headers(&headers, &mut b);
        assert!(u.error.is_none());
        for r in &blocks {
            put_block(
                &mut b,
                &BlockHeader::from_array(r[..80].try_into().unwrap()).hash(),
                r.clone(),
            );
        }
        s.write(&b).unwrap();
    }
    let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
    let db = ChainDb::load(&s, &params).unwrap();
    assert_eq!(db.tree().height(), 255);
    assert_eq!(stored_hash_at(&s, 0).unwrap(), Some(params.genesis_hash()));
    for (i, r) in blocks.iter().enumerate() {
        let hash = BlockHeader::from_array(r[..80].try_into().unwrap()).hash();
        assert_eq!(db.tree().hash_at(i as u32 + 1), Some(hash));
        assert_eq!(stored_hash_at(&s, i as u32 + 1).unwrap(), Some(hash));
        assert!(
            with_block(&s, &hash, |v| v == Some(&r[..])).unwrap(),
            "block {} differs",
            i + 1
        );
    }
    assert_eq!(
        db.tree().hash_at(1).unwrap().to_string(),
        "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
    );
}
