//! Stopping leaves nothing behind: every thread joined, every socket and poller closed. Alone in
//! its own test binary so that no other test's threads or sockets blur the counts.

mod common;

use bsn::wire::Message;
use bsn::Event;
use common::*;
use std::time::Duration;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn stop_leaves_no_thread_and_no_file_descriptor() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("SKIPPED: no /proc on this system, cannot count threads and descriptors");
        return;
    }
    let (t0, f0) = (threads(), fds());
    for round in 0..3 {
        let dir = TempDir::new("stop");
        let mut c = config();
        c.data_dir = Some(dir.0.clone());
        let (a, aev) = start(c);
        let (b, bev) = start(config());
        b.connect(a.local_addr().unwrap()).unwrap();
        let mut p = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
        p.handshake(42 + round);
        wait_for(&bev, Duration::from_secs(10), "b connected", |e| {
            matches!(e, Event::PeerConnected(_)).then_some(())
        });
        for _ in 0..2 {
            wait_for(&aev, Duration::from_secs(10), "a connected", |e| {
                matches!(e, Event::PeerConnected(_)).then_some(())
            });
        }
        assert!(threads() > t0);
        a.broadcast(Message::GetAddr).unwrap();
        a.stop();
        drop(b); // drop stops too
        drop(p);
        drop(aev);
        drop(bev);
    }
    assert_eq!(threads(), t0, "threads left behind");
    assert_eq!(fds(), f0, "file descriptors left behind");
}
