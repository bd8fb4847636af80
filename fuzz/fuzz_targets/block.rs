//! The `block` payload decoder (and every transaction in it), with the round trip check.
#![no_main]
use bsn::wire::commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bsn_fuzz::payload(commands::BLOCK, data));
