//! The `tx` payload decoder (inputs, outputs, txid, BIP144 layout), with the round trip check.
#![no_main]
use bsn::wire::commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bsn_fuzz::payload(commands::TX, data));
