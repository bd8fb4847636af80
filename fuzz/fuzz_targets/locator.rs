//! The block locator payload decoders (`getheaders`, `getblocks`), with the round trip check. The first byte picks the command, the rest is the payload.
#![no_main]
use bsn::wire::commands::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((command, payload)) = bsn_fuzz::pick(data, &[GETHEADERS, GETBLOCKS]) {
        bsn_fuzz::payload(command, payload);
    }
});
