//! Bans, pure: a list of banned IPs and CIDR subnets (IPv4 and IPv6) with expiry, a set of
//! subnets that are never banned, and ban scores by reason that decay over time and ban an
//! address when they reach the threshold. Time comes in as unix seconds.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address and a prefix length (a single IP is /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

fn mask_v4(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let m = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    Ipv4Addr::from(bits & m)
}

fn mask_v6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let m = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    };
    Ipv6Addr::from(bits & m)
}

/// Folds an IPv4-mapped IPv6 address to IPv4 so that both spellings match the same bans.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Subnet {
    /// A network; host bits below the prefix are cleared. `None` for a prefix too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Subnet> {
        let addr = canonical(addr);
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Subnet {
                addr: IpAddr::V4(mask_v4(a, prefix)),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => Some(Subnet {
                addr: IpAddr::V6(mask_v6(a, prefix)),
                prefix,
            }),
            _ => None,
        }
    }

    /// A single address.
    pub fn host(ip: IpAddr) -> Subnet {
        let ip = canonical(ip);
        let p = if ip.is_ipv4() { 32 } else { 128 };
        Subnet::new(ip, p).expect("full-length prefix is valid")
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(a, self.prefix) == n,
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(a, self.prefix) == n,
            _ => false,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    /// `1.2.3.4`, `1.2.3.0/24`, `fd00::/64`, `::1`.
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("not an IP address or subnet: {s:?}");
        match s.split_once('/') {
            Some((a, p)) => {
                let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
                let p: u8 = p.trim().parse().map_err(|_| bad())?;
                Subnet::new(a, p).ok_or_else(bad)
            }
            None => Ok(Subnet::host(s.trim().parse().map_err(|_| bad())?)),
        }
    }
}

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Unix time it ends.
    pub until: u64,
    /// Unix time it was made.
    pub created: u64,
    /// Why.
    pub reason: String,
}

/// Why a ban was not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanError {
    /// The subnet overlaps one that is never banned.
    NeverBanned(Subnet),
    /// The expiry is not in the future.
    AlreadyExpired,
}

impl fmt::Display for BanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanError::NeverBanned(s) => write!(f, "{s} is on the never-ban list"),
            BanError::AlreadyExpired => f.write_str("ban expiry is not in the future"),
        }
    }
}

impl std::error::Error for BanError {}

/// Banned IPs and subnets.
#[derive(Clone, Debug, Default)]
pub struct BanList {
    bans: HashMap<Subnet, Ban>,
    never: Vec<Subnet>,
    max_entries: usize,
}

impl BanList {
    /// An empty list holding at most `max_entries` bans; `never` lists networks never banned.
    pub fn new(max_entries: usize, never: Vec<Subnet>) -> BanList {
        BanList {
            bans: HashMap::new(),
            never,
            max_entries: max_entries.max(1),
        }
    }

    /// Bans `subnet` until `until`. When the list is full the ban ending soonest makes room.
    /// Returns the ban that was evicted to make room, if any.
    pub fn ban(
        &mut self,
        subnet: Subnet,
        until: u64,
        reason: &str,
        now: u64,
    ) -> Result<Option<Subnet>, BanError> {
        if until <= now {
            return Err(BanError::AlreadyExpired);
        }
        if let Some(n) = self
            .never
            .iter()
            .find(|n| n.contains(subnet.addr) || subnet.contains(n.addr))
        {
            return Err(BanError::NeverBanned(*n));
        }
        let mut evicted = None;
        if !self.bans.contains_key(&subnet) && self.bans.len() >= self.max_entries {
            let victim = *self
                .bans
                .iter()
                .min_by_key(|(s, b)| (b.until, **s))
                .map(|(s, _)| s)
                .expect("list is full, so not empty");
            self.bans.remove(&victim);
            evicted = Some(victim);
        }
        let created = self.bans.get(&subnet).map_or(now, |b| b.created);
        self.bans.insert(
            subnet,
            Ban {
                until,
                created,
                reason: reason.to_string(),
            },
        );
        Ok(evicted)
    }

    /// Restores a stored ban (no checks but the never-ban list and the size).
    pub fn restore(&mut self, subnet: Subnet, ban: Ban) {
        if self
            .never
            .iter()
            .any(|n| n.contains(subnet.addr) || subnet.contains(n.addr))
            || self.bans.len() >= self.max_entries
        {
            return;
        }
        self.bans.insert(subnet, ban);
    }

    /// Lifts a ban; false when there was none.
    pub fn unban(&mut self, subnet: &Subnet) -> bool {
        self.bans.remove(subnet).is_some()
    }

    /// The ban covering `ip`, if one is in force at `now`.
    pub fn banned(&self, ip: IpAddr, now: u64) -> Option<(Subnet, &Ban)> {
        if self.never.iter().any(|n| n.contains(ip)) {
            return None;
        }
        self.bans
            .iter()
            .find(|(s, b)| b.until > now && s.contains(ip))
            .map(|(s, b)| (*s, b))
    }

    /// Removes expired bans and returns them.
    pub fn expire(&mut self, now: u64) -> Vec<Subnet> {
        let gone: Vec<Subnet> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in &gone {
            self.bans.remove(s);
        }
        gone
    }

    /// Every ban, sorted by subnet.
    pub fn list(&self) -> Vec<(Subnet, Ban)> {
        let mut v: Vec<_> = self.bans.iter().map(|(s, b)| (*s, b.clone())).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// Removes every ban; returns them.
    pub fn clear(&mut self) -> Vec<Subnet> {
        self.bans.drain().map(|(s, _)| s).collect()
    }

    /// Number of bans.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    #[cfg(test)]
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }
}

/// Why a peer's ban score went up. The default points follow the Bitcoin SV node v1.2.2
/// (`net_processing.cpp`); the README's scoring table sets them side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BanReason {
    /// An invalid block (SV: mostly 100).
    InvalidBlock,
    /// An invalid subtree (Teranode).
    InvalidSubtree,
    /// A broken protocol rule: `addr` over 1,000 or `headers` over 2,000 entries, headers that
    /// do not connect, a second or too small `protoconf` (SV: 20).
    ProtocolViolation,
    /// Flooding (bsn's own).
    Spam,
    /// More than 100 frames with a wrong checksum within 500 ms: 1 point each past that (SV:
    /// the same; bad checksums below it are dropped and cost nothing).
    BadChecksum,
    /// A frame announcing more than the limit for its command (SV: banned at once).
    OversizeMessage,
    /// A header whose proof of work does not meet its bits (SV: high-hash, 50).
    InvalidHeaderPow,
    /// A block we never asked for.
    UnrequestedData,
    /// A rate limit exceeded (bsn's own flood defence).
    RateLimitExceeded,
    /// A transaction the embedder rejected; the embedder gives the points (`reject_tx`), as the
    /// SV node scores what its validation says (0 for policy, 10 or 100 for consensus).
    InvalidTransaction,
    /// A header that breaks a consensus rule besides proof of work: a checkpoint contradicted, a
    /// fork below a checkpoint, bits above the network's limit (SV: 100).
    InvalidHeader,
    /// Another network's magic (SV: banned at once).
    WrongNetwork,
    /// A message header that is not well formed (bad command bytes, a bad `extmsg` header; SV:
    /// banned at once).
    MalformedHeader,
    /// A payload that does not decode (SV: a `reject`, 0 points; bsn drops the peer after
    /// `max_payload_errors` of them).
    MalformedPayload,
    /// A message before `version`/`verack`, a second `version` (SV: 1).
    UnexpectedMessage,
    /// A header whose time is not above the median of the last eleven (SV: 0).
    HeaderTime,
    /// A transaction nobody asked for: wallets push them (SV: 0).
    UnrequestedTransaction,
    /// A `dsdetected` or `revokemid` that does not decode or fails its form checks (SV: 10).
    InvalidNotice,
    /// A `createstrm` from another IP than the association's (SV: banned at once).
    StreamFromOtherAddress,
    /// A header whose version is below the BIP34/66/65 floor at its height (SV: 0).
    ObsoleteVersion,
}

impl BanReason {
    /// Default points for the reason, as the SV node gives them (bsn's own reasons: as noted).
    pub fn default_points(&self) -> u32 {
        match self {
            BanReason::InvalidBlock => 100,
            BanReason::InvalidSubtree => 10,
            BanReason::ProtocolViolation => 20,
            BanReason::Spam => 50,
            BanReason::BadChecksum => 1,
            BanReason::OversizeMessage => 100,
            BanReason::InvalidHeaderPow => 50,
            BanReason::UnrequestedData => 10,
            BanReason::RateLimitExceeded => 50,
            BanReason::InvalidTransaction => 10,
            BanReason::InvalidHeader => 100,
            BanReason::WrongNetwork => 100,
            BanReason::MalformedHeader => 100,
            BanReason::MalformedPayload => 0,
            BanReason::UnexpectedMessage => 1,
            BanReason::HeaderTime => 0,
            BanReason::UnrequestedTransaction => 0,
            BanReason::InvalidNotice => 10,
            BanReason::StreamFromOtherAddress => 100,
            BanReason::ObsoleteVersion => 0,
        }
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            BanReason::InvalidBlock => "invalid block",
            BanReason::InvalidSubtree => "invalid subtree",
            BanReason::ProtocolViolation => "protocol violation",
            BanReason::Spam => "spam",
            BanReason::BadChecksum => "bad checksums",
            BanReason::OversizeMessage => "oversize message",
            BanReason::InvalidHeaderPow => "invalid header proof of work",
            BanReason::UnrequestedData => "unrequested data",
            BanReason::RateLimitExceeded => "rate limit exceeded",
            BanReason::InvalidTransaction => "invalid transaction",
            BanReason::InvalidHeader => "invalid header",
            BanReason::WrongNetwork => "wrong network",
            BanReason::MalformedHeader => "malformed message header",
            BanReason::MalformedPayload => "malformed payload",
            BanReason::UnexpectedMessage => "unexpected message",
            BanReason::HeaderTime => "header time",
            BanReason::UnrequestedTransaction => "unrequested transaction",
            BanReason::InvalidNotice => "invalid dsdetected or revokemid",
            BanReason::StreamFromOtherAddress => "stream from another address",
            BanReason::ObsoleteVersion => "obsolete header version",
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ban-score settings.
#[derive(Clone, Debug)]
pub struct ScoreSettings {
    /// Score at which the address is banned.
    pub threshold: u32,
    /// Points taken off per `decay_interval`: bsn's improvement; 0 gives the SV node's rule
    /// (a score never decays).
    pub decay_amount: u32,
    /// Seconds per decay step.
    pub decay_interval: u64,
    /// Points per reason (overrides the defaults).
    pub points: HashMap<BanReason, u32>,
}

impl Default for ScoreSettings {
    fn default() -> ScoreSettings {
        ScoreSettings {
            threshold: 100,
            decay_amount: 1,
            decay_interval: 60,
            points: HashMap::new(),
        }
    }
}

/// Ban scores per IP address, decaying over time.
#[derive(Clone, Debug, Default)]
pub struct BanScores {
    settings: ScoreSettings,
    scores: HashMap<IpAddr, (u32, u64)>,
}

/// What adding points did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreChange {
    /// Score after.
    pub score: u32,
    /// Points added.
    pub added: u32,
    /// The threshold was reached: ban the address (its score is reset).
    pub ban: bool,
}

impl BanScores {
    /// Scores with these settings.
    pub fn new(settings: ScoreSettings) -> BanScores {
        BanScores {
            settings,
            scores: HashMap::new(),
        }
    }

    fn decayed(&self, score: u32, since: u64, now: u64) -> (u32, u64) {
        let iv = self.settings.decay_interval.max(1);
        let steps = now.saturating_sub(since) / iv;
        let dec = (steps.min(u32::MAX as u64) as u32).saturating_mul(self.settings.decay_amount);
        (score.saturating_sub(dec), since + steps * iv)
    }

    /// The current score of `ip`.
    pub fn score(&self, ip: IpAddr, now: u64) -> u32 {
        self.scores
            .get(&canonical(ip))
            .map_or(0, |&(s, t)| self.decayed(s, t, now).0)
    }

    /// The points `reason` is worth (the settings' override, else the default).
    pub fn points(&self, reason: BanReason) -> u32 {
        self.settings
            .points
            .get(&reason)
            .copied()
            .unwrap_or_else(|| reason.default_points())
    }

    /// Adds the points of `reason` to `ip`.
    #[cfg(test)]
    pub fn add(&mut self, ip: IpAddr, reason: BanReason, now: u64) -> ScoreChange {
        let points = self.points(reason);
        self.add_points(ip, points, now)
    }

    /// Adds `added` points to `ip` (0 changes nothing).
    pub fn add_points(&mut self, ip: IpAddr, added: u32, now: u64) -> ScoreChange {
        let ip = canonical(ip);
        let (cur, since) = self
            .scores
            .get(&ip)
            .map_or((0, now), |&(s, t)| self.decayed(s, t, now));
        let score = cur.saturating_add(added);
        let ban = score >= self.settings.threshold;
        if ban {
            self.scores.remove(&ip);
        } else {
            self.scores
                .insert(ip, (score, if cur == 0 { now } else { since }));
        }
        ScoreChange { score, added, ban }
    }

    /// Drops scores that have decayed to zero.
    pub fn prune(&mut self, now: u64) {
        let iv = self.settings.decay_interval.max(1);
        let amount = self.settings.decay_amount as u64;
        self.scores
            .retain(|_, (s, t)| (*s as u64) > now.saturating_sub(*t) / iv * amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_contain_what_they_should() {
        let s: Subnet = "127.0.1.77/24".parse().unwrap();
        assert_eq!(s.to_string(), "127.0.1.0/24");
        assert!(s.contains(ip("127.0.1.200")));
        assert!(s.contains(ip("::ffff:127.0.1.9")));
        assert!(!s.contains(ip("127.0.2.1")));
        let v6: Subnet = "fd00:1:2:3::/64".parse().unwrap();
        assert!(v6.contains(ip("fd00:1:2:3:ffff::1")));
        assert!(!v6.contains(ip("fd00:1:2:4::1")));
        assert!(!v6.contains(ip("127.0.0.1")));
        assert!("1.2.3.4/33".parse::<Subnet>().is_err());
        assert!("nonsense".parse::<Subnet>().is_err());
        assert_eq!(
            "::ffff:1.2.3.4".parse::<Subnet>().unwrap(),
            "1.2.3.4".parse::<Subnet>().unwrap()
        );
    }

    #[test]
    fn bans_expire_evict_and_respect_the_never_list() {
        let mut l = BanList::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(matches!(
            l.ban("10.1.2.3".parse().unwrap(), 100, "x", 0),
            Err(BanError::NeverBanned(_))
        ));
        assert!(matches!(
            l.ban("0.0.0.0/0".parse().unwrap(), 100, "x", 0),
            Err(BanError::NeverBanned(_))
        ));
        assert_eq!(
            l.ban("1.2.3.4".parse().unwrap(), 0, "x", 5),
            Err(BanError::AlreadyExpired)
        );
        l.ban("1.2.3.0/24".parse().unwrap(), 100, "a", 0).unwrap();
        l.ban("5.6.7.8".parse().unwrap(), 50, "b", 0).unwrap();
        assert!(l.banned(ip("1.2.3.99"), 10).is_some());
        assert!(l.banned(ip("1.2.4.1"), 10).is_none());
        // full: the ban ending soonest makes room
        assert_eq!(
            l.ban("9.9.9.9".parse().unwrap(), 200, "c", 0).unwrap(),
            Some("5.6.7.8".parse().unwrap())
        );
        assert_eq!(l.len(), 2);
        assert!(
            l.banned(ip("1.2.3.4"), 100).is_none(),
            "expired at its end time"
        );
        assert_eq!(l.expire(150), vec!["1.2.3.0/24".parse::<Subnet>().unwrap()]);
        assert!(l.unban(&"9.9.9.9".parse().unwrap()));
        assert!(l.is_empty());
    }

    #[test]
    fn scores_add_decay_and_ban_at_the_threshold() {
        let mut s = BanScores::new(ScoreSettings {
            threshold: 100,
            decay_amount: 5,
            decay_interval: 10,
            points: HashMap::new(),
        });
        let a = ip("127.0.0.5");
        assert_eq!(
            s.add(a, BanReason::Spam, 0),
            ScoreChange {
                score: 50,
                added: 50,
                ban: false
            }
        );
        assert_eq!(s.score(a, 9), 50);
        assert_eq!(s.score(a, 10), 45);
        assert_eq!(s.score(a, 100), 0);
        assert_eq!(s.add(a, BanReason::ProtocolViolation, 30).score, 55);
        for _ in 0..2 {
            s.add(a, BanReason::ProtocolViolation, 30);
        }
        let c = s.add(a, BanReason::ProtocolViolation, 30);
        assert!(c.ban && c.score >= 100);
        assert_eq!(s.score(a, 30), 0, "reset after the ban");
        s.add(ip("127.0.0.6"), BanReason::ProtocolViolation, 0);
        s.prune(1000);
        assert_eq!(s.score(ip("127.0.0.6"), 1000), 0);
    }

    /// The SV node's points (README "Ban points"), row by row.
    #[test]
    fn default_points_are_the_sv_nodes() {
        for (reason, sv_points) in [
            (BanReason::WrongNetwork, 100),
            (BanReason::OversizeMessage, 100),
            (BanReason::MalformedHeader, 100),
            (BanReason::BadChecksum, 1),
            (BanReason::MalformedPayload, 0),
            (BanReason::UnexpectedMessage, 1),
            (BanReason::ProtocolViolation, 20),
            (BanReason::InvalidHeaderPow, 50),
            (BanReason::InvalidHeader, 100),
            (BanReason::HeaderTime, 0),
            (BanReason::UnrequestedTransaction, 0),
            (BanReason::InvalidBlock, 100),
            (BanReason::InvalidNotice, 10),
            (BanReason::StreamFromOtherAddress, 100),
            (BanReason::ObsoleteVersion, 0),
        ] {
            assert_eq!(reason.default_points(), sv_points, "{reason}");
        }
        // no decay gives the SV node's rule: a score stays
        let mut s = BanScores::new(ScoreSettings {
            decay_amount: 0,
            ..ScoreSettings::default()
        });
        let a = ip("127.0.0.7");
        s.add(a, BanReason::ProtocolViolation, 0);
        assert_eq!(s.score(a, 1_000_000), 20);
        assert!(s.add(a, BanReason::WrongNetwork, 5).ban);
    }
}
