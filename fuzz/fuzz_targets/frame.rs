//! The streaming frame decoder, fed the input in chunks whose sizes come from the input, with
//! small limits (layout in `bsn_fuzz::frame_stream`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bsn_fuzz::frame_stream(data));
