//! Keepalive: a ping with a fresh nonce every interval; the pong must echo it within the timeout
//! or the peer is dropped. Round-trip times are recorded. Nonces come in from the caller, so the
//! machine stays deterministic.

use super::DisconnectReason;
use std::time::{Duration, Instant};

/// Keepalive state of one connection.
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    outstanding: Option<(u64, Instant)>,
    last_rtt: Option<Duration>,
    min_rtt: Option<Duration>,
    pings_sent: u64,
}

impl Keepalive {
    /// Starts at `now`: the first ping goes out one `interval` later... or at once with
    /// `ping_now`.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Keepalive {
        Keepalive {
            interval,
            timeout,
            next_ping: now + interval,
            outstanding: None,
            last_rtt: None,
            min_rtt: None,
            pings_sent: 0,
        }
    }

    /// Makes the next `tick` send a ping (e.g. right after the handshake, to measure latency).
    pub fn ping_now(&mut self, now: Instant) {
        self.next_ping = now;
    }

    /// Advances time. Returns `Ok(Some(nonce))` when a ping must be sent (with the nonce drawn from
    /// `nonce`), or the verdict when the pong is late.
    pub fn tick(
        &mut self,
        now: Instant,
        nonce: impl FnOnce() -> u64,
    ) -> Result<Option<u64>, DisconnectReason> {
        if let Some((_, sent)) = self.outstanding {
            if now.saturating_duration_since(sent) >= self.timeout {
                return Err(DisconnectReason::PingTimeout);
            }
            return Ok(None);
        }
        if now >= self.next_ping {
            let n = nonce();
            self.outstanding = Some((n, now));
            self.pings_sent += 1;
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// A pong arrived. Returns the round-trip time when it answers the outstanding ping; other
    /// pongs (stale or unsolicited) are ignored.
    pub fn on_pong(&mut self, now: Instant, nonce: u64) -> Option<Duration> {
        match self.outstanding {
            Some((n, sent)) if n == nonce => {
                let rtt = now.saturating_duration_since(sent);
                self.outstanding = None;
                self.next_ping = sent + self.interval;
                self.last_rtt = Some(rtt);
                self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                Some(rtt)
            }
            _ => None,
        }
    }

    /// The last measured round trip.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_and_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = Keepalive::new(t0, 10 * s, 3 * s);
        assert_eq!(k.tick(t0 + 5 * s, || 7), Ok(None));
        assert_eq!(k.tick(t0 + 10 * s, || 7), Ok(Some(7)));
        assert_eq!(k.tick(t0 + 11 * s, || 8), Ok(None)); // one outstanding at a time
        assert_eq!(k.on_pong(t0 + 11 * s, 99), None); // wrong nonce ignored
        assert_eq!(k.on_pong(t0 + 11 * s, 7), Some(s));
        assert_eq!(k.last_rtt(), Some(s));
        assert_eq!(k.tick(t0 + 15 * s, || 8), Ok(None));
        assert_eq!(k.tick(t0 + 20 * s, || 8), Ok(Some(8)));
        assert_eq!(k.tick(t0 + 22 * s, || 9), Ok(None));
        assert_eq!(
            k.tick(t0 + 23 * s, || 9),
            Err(DisconnectReason::PingTimeout)
        );
    }

    #[test]
    fn ping_now_sends_at_once() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0, Duration::from_secs(120), Duration::from_secs(1200));
        k.ping_now(t0);
        assert_eq!(k.tick(t0, || 5), Ok(Some(5)));
    }
}
