//! The streaming block check (`wire::stream::BlockStream`) against the whole-block decoder:
//! fed in chunks of any size, it never panics; when the whole block decodes, the stream reads
//! the same transactions (the same ids) and fails, if at all, only on the merkle root (random
//! input rarely has the right one) or a non-canonical transaction count; when both accept a
//! block they agree on its hash, size and checksum.
#![no_main]
use bsn::wire::stream::{BlockStream, StreamError};
use bsn::wire::{Block, Decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, payload)) = data.split_first() else {
        return;
    };
    let chunk = chunk as usize + 1;
    let mut s = BlockStream::new(true);
    let mut ids = Vec::new();
    let streamed = payload
        .chunks(chunk)
        .try_for_each(|c| s.feed(c, &mut |id| ids.push(id)))
        .and_then(|()| s.finish());
    let Ok(b) = Block::decode_all(bytes::Bytes::copy_from_slice(payload)) else {
        return;
    };
    match streamed {
        Ok(sum) => {
            assert_eq!(sum.hash, b.hash());
            assert_eq!(sum.size, payload.len() as u64);
            assert_eq!(sum.tx_count, b.txs.len() as u64);
            assert_eq!(sum.checksum, Some(bsn::wire::hash::checksum(payload)));
        }
        Err(StreamError::BadMerkleRoot { .. } | StreamError::Mutated) => {}
        Err(StreamError::Malformed {
            what: "non-canonical transaction count",
            ..
        }) => return,
        Err(e) => panic!("the whole block decodes, the stream says {e}"),
    }
    assert_eq!(ids, b.txs.iter().map(|t| t.txid()).collect::<Vec<_>>());
});
