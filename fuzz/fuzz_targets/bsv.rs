//! BSV's own payloads (`authch`, `authresp`, `gethdrsen`, `hdrsen`, `createstrm`, `streamack`,
//! `dsdetected`, `revokemid`, `datareftx`), with the round trip check; the first byte picks the
//! command. `dsdetected` and `revokemid` that decode are also put through their form checks.
#![no_main]
use bsn::wire::commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let command = match pick % 9 {
        0 => commands::AUTHCH,
        1 => commands::GETHDRSEN,
        2 => commands::HDRSEN,
        3 => commands::AUTHRESP,
        4 => commands::CREATESTRM,
        5 => commands::STREAMACK,
        6 => commands::DSDETECTED,
        7 => commands::REVOKEMID,
        _ => commands::DATAREFTX,
    };
    match bsn::wire::Message::decode(command, bytes::Bytes::copy_from_slice(rest)) {
        Ok(bsn::wire::Message::DsDetected(d)) => {
            let _ = d.check();
        }
        Ok(bsn::wire::Message::RevokeMid(m)) => {
            let _ = m.check();
        }
        _ => {}
    }
    bsn_fuzz::payload(command, rest)
});
