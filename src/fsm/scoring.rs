//! Peer scoring: turns what is known about a peer into a status (unknown, alive, dead,
//! penalised, banned) and a score from 0 to 100 used to prefer good peers (for sync) and to pick
//! whom to evict when inbound slots are full. Pure; the inputs are plain numbers.
//!
//! The score starts at 50 and moves with evidence:
//! - latency: up to +25 for a fast ping (25 at 0 ms, 0 at 1 s and above);
//! - reliability: up to +15 for completed connections (3 each, at most 5 counted), -5 per
//!   failure in a row (at most -25);
//! - usefulness: up to +10 for traffic that carried data (1 per 100 messages received that
//!   were not pings, at most 10);
//! - misbehaviour: minus the current ban score (which decays), and -2 per protocol error
//!   (at most -30).
//!
//! The status: banned if a ban covers the address; penalised if it has a ban score or recent
//! errors; dead after 3 failed connections in a row; alive once a handshake succeeded; unknown
//! otherwise.

use crate::store::records::PeerStatus;

/// What the scoring looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreInputs {
    /// Last ping round trip in microseconds (0: none measured).
    pub rtt_us: u64,
    /// Handshakes completed (over the address's lifetime).
    pub connections: u64,
    /// Connection failures since the last success.
    pub failures: u32,
    /// Messages received other than ping/pong.
    pub useful_msgs: u64,
    /// Malformed or unexpected messages.
    pub errors: u64,
    /// Current (decayed) ban score.
    pub ban_score: u32,
    /// A ban covers the address now.
    pub banned: bool,
}

/// Failures in a row after which a peer is dead.
pub const DEAD_AFTER: u32 = 3;

/// The score, 0 (worst) to 100 (best).
pub fn score(i: &ScoreInputs) -> u32 {
    if i.banned {
        return 0;
    }
    let mut s: i64 = 50;
    if i.rtt_us > 0 {
        s += 25 - (i.rtt_us.min(1_000_000) * 25 / 1_000_000) as i64;
    }
    s += 3 * i.connections.min(5) as i64;
    s -= 5 * i.failures.min(5) as i64;
    s += (i.useful_msgs / 100).min(10) as i64;
    s -= i.ban_score as i64;
    s -= 2 * i.errors.min(15) as i64;
    s.clamp(0, 100) as u32
}

/// The status.
pub fn status(i: &ScoreInputs) -> PeerStatus {
    if i.banned {
        PeerStatus::Banned
    } else if i.ban_score > 0 {
        PeerStatus::Penalised
    } else if i.failures >= DEAD_AFTER {
        PeerStatus::Dead
    } else if i.connections > 0 {
        PeerStatus::Alive
    } else {
        PeerStatus::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_moves_the_score_and_status() {
        let none = ScoreInputs::default();
        assert_eq!((score(&none), status(&none)), (50, PeerStatus::Unknown));
        let good = ScoreInputs {
            rtt_us: 2_000,
            connections: 4,
            useful_msgs: 5_000,
            ..none
        };
        let slow = ScoreInputs {
            rtt_us: 900_000,
            connections: 4,
            useful_msgs: 5_000,
            ..none
        };
        assert!(score(&good) > score(&slow));
        assert_eq!(status(&good), PeerStatus::Alive);
        let naughty = ScoreInputs {
            ban_score: 40,
            errors: 3,
            ..good
        };
        assert!(score(&naughty) < score(&good));
        assert_eq!(status(&naughty), PeerStatus::Penalised);
        let dead = ScoreInputs {
            failures: 3,
            ..none
        };
        assert_eq!(status(&dead), PeerStatus::Dead);
        assert!(score(&dead) < score(&none));
        let banned = ScoreInputs {
            banned: true,
            ..good
        };
        assert_eq!((score(&banned), status(&banned)), (0, PeerStatus::Banned));
        assert!(
            score(&ScoreInputs {
                ban_score: 500,
                errors: 99,
                failures: 9,
                ..none
            }) == 0
        );
        assert!(
            score(&ScoreInputs {
                rtt_us: 1,
                connections: 99,
                useful_msgs: 1 << 40,
                ..none
            }) <= 100
        );
    }
}
