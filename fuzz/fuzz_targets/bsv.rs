//! BSV's own payloads (`authch`, `gethdrsen`, `hdrsen`), with the round trip check; the first
//! byte picks the command.
#![no_main]
use bsn::wire::commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let command = match pick % 3 {
        0 => commands::AUTHCH,
        1 => commands::GETHDRSEN,
        _ => commands::HDRSEN,
    };
    bsn_fuzz::payload(command, rest)
});
