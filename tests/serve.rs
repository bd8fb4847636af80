//! An engine imports a block file and serves it: getheaders, getblocks, getdata, notfound.

mod common;

use bsn::wire::{BlockHeader, Hash256, InvType, Inventory, Locator, Message};
use bsn::{Config, Network};
use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn serve_and_check(c: Config, file: &Path, raws: &[Vec<u8>]) {
    let magic = c.network.magic;
    let genesis = c.network.genesis_hash();
    let (a, _aev) = start(c);
    let (n, height) = a.import_block_file(file).unwrap();
    assert_eq!((n, height as usize), (raws.len(), raws.len()));
    assert_eq!(a.best_header().1 as usize, raws.len());
    let hashes: Vec<Hash256> = raws
        .iter()
        .map(|r| BlockHeader::from_array(r[..80].try_into().unwrap()).hash())
        .collect();
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), magic);
    let v = p.handshake(77);
    assert_eq!(
        v.start_height as usize,
        raws.len(),
        "the imported height is announced"
    );
    // getheaders from genesis: every header, in order, linking
    p.send(&Message::GetHeaders(Locator {
        version: 70016,
        hashes: vec![genesis],
        stop: Hash256::ZERO,
    }));
    let headers = match p.expect(T, |m| matches!(m, Message::Headers(_))) {
        Message::Headers(h) => h,
        _ => unreachable!(),
    };
    assert_eq!(headers.iter().map(|h| h.hash()).collect::<Vec<_>>(), hashes);
    // from the middle, with a stop hash
    let mid = raws.len() / 2;
    p.send(&Message::GetHeaders(Locator {
        version: 70016,
        hashes: vec![hashes[mid - 1]],
        stop: hashes[mid + 1],
    }));
    match p.expect(T, |m| matches!(m, Message::Headers(_))) {
        Message::Headers(h) => assert_eq!(
            h.iter().map(|h| h.hash()).collect::<Vec<_>>(),
            hashes[mid..=mid + 1].to_vec()
        ),
        _ => unreachable!(),
    }
    // getblocks: an inv of the hashes after the locator
    p.send(&Message::GetBlocks(Locator {
        version: 70016,
        hashes: vec![genesis],
        stop: Hash256::ZERO,
    }));
    match p.expect(T, |m| matches!(m, Message::Inv(_))) {
        Message::Inv(inv) => {
            assert_eq!(inv.len(), raws.len().min(500));
            assert!(inv
                .iter()
                .zip(&hashes)
                .all(|(i, h)| i.kind == InvType::BLOCK && i.hash == *h));
        }
        _ => unreachable!(),
    }
    // getdata: blocks bit for bit, and notfound for the unknown
    let ask = [0, mid, raws.len() - 1];
    let mut items: Vec<Inventory> = ask
        .iter()
        .map(|&i| Inventory {
            kind: InvType::BLOCK,
            hash: hashes[i],
        })
        .collect();
    let unknown = Inventory {
        kind: InvType::BLOCK,
        hash: Hash256([0x42; 32]),
    };
    items.push(unknown);
    p.send(&Message::GetData(items));
    for &i in &ask {
        match p.expect(T, |m| matches!(m, Message::Block(_))) {
            Message::Block(b) => assert_eq!(&b.raw()[..], &raws[i][..], "block {i}"),
            _ => unreachable!(),
        }
    }
    assert_eq!(
        p.expect(T, |m| matches!(m, Message::NotFound(_))),
        Message::NotFound(vec![unknown])
    );
    a.stop();
}

#[test]
fn imports_a_regtest_block_file_and_serves_it() {
    let blocks = regtest_blocks(300);
    let dir = TempDir::new("serve-regtest");
    let file = dir.0.join("blk00000.dat");
    let raws: Vec<Vec<u8>> = blocks.iter().map(|b| b.raw().to_vec()).collect();
    let slices: Vec<&[u8]> = raws.iter().map(|r| &r[..]).collect();
    write_blk(&file, Network::Regtest.params().disk_magic, &slices);
    let mut c = config();
    c.data_dir = Some(dir.0.join("data"));
    serve_and_check(c, &file, &raws);
    // a file of another network is refused with the offset
    let (a, _ev) = start(config());
    let other = dir.0.join("mainnet.dat");
    write_blk(&other, Network::Mainnet.params().disk_magic, &slices[..1]);
    let e = a.import_block_file(&other).unwrap_err().to_string();
    assert!(e.contains("disk magic") && e.contains("at byte 0"), "{e}");
    a.stop();
}

#[test]
fn imports_the_real_early_mainnet_blocks_and_serves_them() {
    let Some(d) = data_dir("serve: real early mainnet blocks") else {
        return;
    };
    let file = d.join("btcd/blocks1-256.dat");
    let data = std::fs::read(&file).unwrap();
    let mut raws = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        raws.push(data[pos + 8..pos + 8 + len].to_vec());
        pos += 8 + len;
    }
    let mut c = config();
    c.network = Network::Mainnet.params();
    let dir = TempDir::new("serve-mainnet");
    c.data_dir = Some(dir.0.clone());
    serve_and_check(c, &file, &raws);
}
