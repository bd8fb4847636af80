//! Stateful: arbitrary sequences of messages from several peers into one node core, through
//! the simulator (real framing, virtual time). Never a panic; the core's maps within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/core_ops.rs"]
mod core_ops;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = core_ops::run(data) {
        panic!("{e}");
    }
});
