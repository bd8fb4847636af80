//! Static peers that take the TCP connection and then drop it at once (an SV node does this to an
//! address it has banned; others drop us right after the handshake) are re-dialled with a
//! growing backoff over real loopback sockets, not at a fixed interval.

mod common;

use bsn::wire::Message;
use bsn::Event;
use common::*;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The engine's first re-dial delay.
const BASE: Duration = Duration::from_millis(50);
/// Connections accepted per test: five gaps, the last one `BASE * 16`.
const ACCEPTS: usize = 6;
/// All of them must come within this.
const DEADLINE: Duration = Duration::from_secs(30);
/// Time a handshake step may take.
const T: Duration = Duration::from_secs(10);

/// Starts an engine whose static peer is `listener`, accepts `ACCEPTS` of its connections and
/// hands each to `on_accept` (which ends it); the instants of the accepts and the events seen.
fn accept_times(
    listener: TcpListener,
    mut on_accept: impl FnMut(TcpStream),
) -> (Vec<Instant>, Vec<Event>) {
    let _ = env_logger::builder().is_test(true).try_init();
    listener.set_nonblocking(true).unwrap();
    let mut c = config();
    c.connect = vec![listener.local_addr().unwrap()];
    c.redial_base = BASE;
    c.redial_max = Duration::from_secs(5);
    let (engine, ev) = start(c);
    let deadline = Instant::now() + DEADLINE;
    let mut times = Vec::new();
    let mut events = Vec::new();
    while times.len() < ACCEPTS {
        assert!(
            Instant::now() < deadline,
            "only {} connections in {DEADLINE:?}; events {events:#?}",
            times.len()
        );
        events.extend(ev.try_iter());
        match listener.accept() {
            Ok((s, _)) => {
                // taken before the connection ends: the engine's backoff starts after that
                times.push(Instant::now());
                s.set_nonblocking(false).unwrap();
                on_accept(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    engine.stop();
    events.extend(ev.try_iter());
    (times, events)
}

/// Gap k (from 0) between two dials is at least 0.9 * BASE * 2^k: the backoff doubles. Only
/// lower bounds: a loaded machine makes gaps longer, never shorter.
fn assert_gaps_grow(times: &[Instant]) {
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, g) in gaps.iter().enumerate() {
        let want = BASE.mul_f64(0.9 * f64::from(1u32 << k));
        assert!(
            *g >= want,
            "gap {k} between dials is {g:?}, want at least {want:?} (a doubling backoff); \
             gaps {gaps:?}"
        );
    }
}

#[test]
fn a_static_peer_that_resets_every_connection_on_accept_is_redialled_with_growing_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (times, events) = accept_times(listener, |s| {
        // a reset (RST), not a close: as a peer that refuses us outright
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    assert!(
        !events.iter().any(|e| matches!(e, Event::PeerConnected(_))),
        "no handshake was made: {events:#?}"
    );
    assert_gaps_grow(&times);
}

#[test]
fn a_static_peer_that_drops_every_connection_after_the_handshake_is_redialled_with_growing_backoff()
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (times, events) = accept_times(listener, |s| {
        let mut p = ScriptPeer::from_stream(s, REGTEST);
        p.expect(T, |m| matches!(m, Message::Version(_)));
        p.send(&Message::Version(version_msg(70016, random_u64())));
        p.send(&Message::Verack);
        p.expect(T, |m| matches!(m, Message::Verack));
        // the engine asks for addresses once its core has the peer ready: then drop it
        p.expect(T, |m| matches!(m, Message::GetAddr));
        drop(p);
    });
    let connected = events
        .iter()
        .filter(|e| matches!(e, Event::PeerConnected(_)))
        .count();
    assert!(
        connected >= ACCEPTS - 1,
        "{connected} handshakes of {ACCEPTS}: {events:#?}"
    );
    assert_gaps_grow(&times);
}
