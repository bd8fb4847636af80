//! Per-peer rate limits: token buckets for messages and bytes per second, and per command where
//! it matters (`addr`, `inv`, `getaddr`, `getheaders`...). Pure: time is passed in. `ping` and
//! `pong` count only against the byte rate.

use crate::wire::Command;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `cost` tokens; `Err(wait)` with the time until they would be there.
    pub fn take(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = cost.min(self.burst) - self.tokens;
        let secs = if self.rate > 0.0 {
            missing / self.rate
        } else {
            3600.0
        };
        Err(Duration::from_secs_f64(secs.clamp(0.001, 3600.0)))
    }
}

/// Rate-limit settings for every peer.
#[derive(Clone, Debug)]
pub struct RateSettings {
    /// Messages a second (all commands).
    pub msgs_per_sec: f64,
    /// Messages that may come at once.
    pub msg_burst: f64,
    /// Bytes a second (frames, all commands).
    pub bytes_per_sec: f64,
    /// Bytes that may come at once (at least the largest message accepted).
    pub byte_burst: f64,
    /// Per-command limits: command, messages a second, burst.
    pub per_command: Vec<(Command, f64, f64)>,
}

impl Default for RateSettings {
    /// Generous for honest BSV peers (transaction relay sends thousands of messages a second;
    /// blocks are large), tight for messages nobody needs often.
    fn default() -> RateSettings {
        RateSettings {
            msgs_per_sec: 10_000.0,
            msg_burst: 20_000.0,
            bytes_per_sec: 512.0 * 1024.0 * 1024.0,
            byte_burst: 8.0 * 1024.0 * 1024.0 * 1024.0,
            per_command: vec![
                (Command::from_static("addr"), 1.0, 20.0),
                (Command::from_static("getaddr"), 0.1, 3.0),
                (Command::from_static("inv"), 2_000.0, 5_000.0),
                // A header sync from us asks 2,000 headers a time: 500 a second is a million
                // headers a second, and the burst covers a whole mainnet chain (~900,000).
                (Command::from_static("getheaders"), 500.0, 1_000.0),
                // Each costs up to 500 store lookups; clients that sync with it (bcoin) send
                // one per 500 blocks.
                (Command::from_static("getblocks"), 50.0, 200.0),
            ],
        }
    }
}

/// The buckets of one peer.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    msgs: TokenBucket,
    bytes: TokenBucket,
    per_command: Vec<(Command, TokenBucket)>,
}

impl RateLimiter {
    /// Full buckets at `now`.
    pub fn new(s: &RateSettings, now: Instant) -> RateLimiter {
        RateLimiter {
            msgs: TokenBucket::new(s.msgs_per_sec, s.msg_burst, now),
            bytes: TokenBucket::new(s.bytes_per_sec, s.byte_burst, now),
            per_command: s
                .per_command
                .iter()
                .map(|(c, r, b)| (*c, TokenBucket::new(*r, *b, now)))
                .collect(),
        }
    }

    /// Accounts for one received frame; `Err(wait)` when a limit is exceeded (how long until
    /// the peer would be within it again).
    pub fn check(
        &mut self,
        now: Instant,
        command: Command,
        frame_len: usize,
    ) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        // Keepalive is exempt from the message rate: a client that pings, waits for the pong
        // and pings again (every latency tool) is served at full speed. What a peer that does
        // not read its pongs can pile up is bounded by the send queue instead: the shard stops
        // reading a peer whose queue passes `Config::read_pause_bytes`.
        use crate::wire::message::commands::{PING, PONG};
        if command != PING && command != PONG {
            if let Err(w) = self.msgs.take(now, 1.0) {
                wait = wait.max(w);
            }
        }
        if let Err(w) = self.bytes.take(now, frame_len as f64) {
            wait = wait.max(w);
        }
        if let Some((_, b)) = self.per_command.iter_mut().find(|(c, _)| *c == command) {
            if let Err(w) = b.take(now, 1.0) {
                wait = wait.max(w);
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            b.take(t0, 1.0).unwrap();
        }
        let w = b.take(t0, 1.0).unwrap_err();
        assert!(
            w >= Duration::from_millis(99) && w <= Duration::from_millis(101),
            "{w:?}"
        );
        assert!(b.take(t0 + Duration::from_millis(100), 1.0).is_ok());
        // never more than the burst saved up
        let later = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            b.take(later, 1.0).unwrap();
        }
        assert!(b.take(later, 1.0).is_err());
    }

    #[test]
    fn per_command_limits_apply_only_to_their_command() {
        let t0 = Instant::now();
        let s = RateSettings {
            per_command: vec![(Command::from_static("addr"), 1.0, 2.0)],
            ..RateSettings::default()
        };
        let mut l = RateLimiter::new(&s, t0);
        let addr = Command::from_static("addr");
        let tx = Command::from_static("tx");
        assert!(l.check(t0, addr, 100).is_ok());
        assert!(l.check(t0, addr, 100).is_ok());
        assert!(l.check(t0, addr, 100).is_err());
        for _ in 0..100 {
            assert!(l.check(t0, tx, 300).is_ok());
        }
        assert!(l.check(t0 + Duration::from_secs(1), addr, 100).is_ok());
    }

    #[test]
    fn pings_are_not_held_to_the_message_rate() {
        let t0 = Instant::now();
        let s = RateSettings {
            msgs_per_sec: 10.0,
            msg_burst: 10.0,
            ..RateSettings::default()
        };
        let mut l = RateLimiter::new(&s, t0);
        let ping = Command::from_static("ping");
        for _ in 0..100_000 {
            assert!(l.check(t0, ping, 32).is_ok());
        }
        let inv = Command::from_static("inv");
        for _ in 0..10 {
            assert!(l.check(t0, inv, 61).is_ok());
        }
        assert!(l.check(t0, inv, 61).is_err());
    }
}
