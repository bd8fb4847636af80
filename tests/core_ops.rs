//! Arbitrary sequences of messages from several peers into one node core (through the simulator,
//! so through real framing): never a panic, and the core's maps stay within their bounds. The
//! same harness runs under cargo-fuzz as the `core` target.

#[path = "support/core_ops.rs"]
mod core_ops;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_peer_sessions_keep_the_core_bounded(data in proptest::collection::vec(any::<u8>(), 0..4000)) {
        if let Err(e) = core_ops::run(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A long session of headers and junk from every peer at once (a fixed input, so it always
/// runs the same).
#[test]
fn a_long_fixed_session_stays_bounded() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..60_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let s = core_ops::run(&data).unwrap();
    // the session did reach the node: messages went out, chains were taken, events raised
    assert!(s.sent > 300, "{s:?}");
    assert!(s.headers > 10, "{s:?}");
    assert!(s.events > 10, "{s:?}");
}
