//! The address book, pure: addresses heard of (`addr`) and dialed, for peer discovery. Two
//! bounded tables as in Bitcoin Core: "new" (heard of, never connected) and "tried" (a handshake
//! completed). It picks addresses to dial (random, tried and new alike, with a retry backoff),
//! answers `getaddr` with a random sample of fresh ones, forgets the ones that keep failing and
//! persists itself incrementally. No I/O, no clock, no global randomness: time comes in as unix
//! seconds and randomness from the caller (see [`XorShift64`]), so every run is reproducible.

use crate::store::records::{addr_from_key, addr_key};
use crate::store::{Batch, Store, StoreError, StoreResult, Table};
use crate::wire::{NetAddr, TimedNetAddr};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Seconds in a day.
pub const DAY: u64 = 24 * 60 * 60;
/// A gossiped timestamp further than this in the future is not believed.
pub const MAX_FUTURE: u64 = 10 * 60;
/// Timestamps at or below this (1973) are not believed either.
pub const BOGUS_TIME: u64 = 100_000_000;
/// Age given to an address whose timestamp is not believed.
pub const UNBELIEVED_AGE: u64 = 5 * DAY;
/// Addresses not seen for longer than this are not taken in nor handed out.
pub const HORIZON: u64 = 30 * DAY;
/// Failures (since the last success) after which an address is failing: a "new" one is dropped
/// when it also has had no success for [`FAIL_WINDOW`]; it is not handed out in samples.
pub const NEW_RETRIES: u32 = 3;
/// See [`NEW_RETRIES`].
pub const FAIL_WINDOW: u64 = 7 * DAY;
/// Failures (since the last success) after which a "tried" address goes back to "new".
pub const MAX_TRIED_FAILURES: u32 = 10;
/// First retry delay after an attempt; it doubles per attempt since the last success.
pub const BACKOFF_BASE: u64 = 60;
/// Longest retry delay.
pub const BACKOFF_MAX: u64 = 60 * 60;
/// Most addresses in one sample (one `addr` message holds at most 1000).
pub const MAX_SAMPLE: usize = 1000;
/// Random probes `select` makes before it scans.
const PROBES: usize = 64;
/// Bytes of an encoded [`AddrInfo`].
pub const ENCODED_LEN: usize = 4 * 8 + 4 + 4 + 1 + 16;

/// A small seeded pseudo-random generator (xorshift64) for callers without one:
/// `let mut r = XorShift64::new(seed); book.select(now, &mut || r.next_u64(), &|_| false)`.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from a seed (any value, 0 included).
    pub fn new(seed: u64) -> XorShift64 {
        // splitmix64 of the seed, so that close seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift64(if z == 0 { 1 } else { z })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Address-book settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrBookSettings {
    /// Most addresses in the "new" table (at least 1).
    pub max_new: usize,
    /// Most addresses in the "tried" table (at least 1).
    pub max_tried: usize,
    /// Take loopback, private and other non-public addresses (tests, regtest). Off, only
    /// publicly routable addresses are kept.
    pub allow_local: bool,
}

impl Default for AddrBookSettings {
    fn default() -> AddrBookSettings {
        AddrBookSettings {
            max_new: 4096,
            max_tried: 1024,
            allow_local: false,
        }
    }
}

/// What the book knows of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    /// Service bits (gossiped ones are OR-ed together; a handshake sets them).
    pub services: u64,
    /// Unix time last seen (gossip timestamp, or a handshake).
    pub last_seen: u64,
    /// Unix time of the last dial attempt or failure (0: never).
    pub last_attempt: u64,
    /// Unix time of the last completed handshake (0: never).
    pub last_success: u64,
    /// Dial attempts since the last success (drives the retry backoff).
    pub attempts: u32,
    /// Failures since the last success.
    pub failures: u32,
    /// In the "tried" table (a handshake completed), else in "new".
    pub tried: bool,
    /// The IP of the peer that told us of it (the address itself after a direct success).
    pub source: IpAddr,
}

impl AddrInfo {
    /// The stored bytes: services, last_seen, last_attempt, last_success (u64 LE), attempts,
    /// failures (u32 LE), tried (u8), source (16-byte IPv6 form, IPv4-mapped).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(ENCODED_LEN);
        b.put_u64_le(self.services);
        b.put_u64_le(self.last_seen);
        b.put_u64_le(self.last_attempt);
        b.put_u64_le(self.last_success);
        b.put_u32_le(self.attempts);
        b.put_u32_le(self.failures);
        b.put_u8(self.tried as u8);
        b.put_slice(&ip16(self.source));
        b.freeze()
    }

    /// Reads stored bytes (trailing bytes, from a later layout, are ignored).
    pub fn decode(v: &[u8]) -> StoreResult<AddrInfo> {
        if v.len() < ENCODED_LEN {
            return Err(StoreError::Corrupt(format!(
                "address record is {} bytes, not {ENCODED_LEN}",
                v.len()
            )));
        }
        let u64_at = |o: usize| u64::from_le_bytes(v[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(v[o..o + 4].try_into().expect("4 bytes"));
        let tried = match v[40] {
            0 => false,
            1 => true,
            t => {
                return Err(StoreError::Corrupt(format!(
                    "address record: tried flag {t}"
                )))
            }
        };
        let src: [u8; 16] = v[41..57].try_into().expect("16 bytes");
        Ok(AddrInfo {
            services: u64_at(0),
            last_seen: u64_at(8),
            last_attempt: u64_at(16),
            last_success: u64_at(24),
            attempts: u32_at(32),
            failures: u32_at(36),
            tried,
            source: canonical_ip(IpAddr::V6(Ipv6Addr::from(src))),
        })
    }

    /// Unix time from which the address book may pick it again: the last attempt plus
    /// 60 s * 2^(attempts-1), at most an hour; 0 when not attempted since the last success.
    pub fn retry_at(&self) -> u64 {
        if self.attempts == 0 {
            return 0;
        }
        let delay = (BACKOFF_BASE << (self.attempts - 1).min(16)).min(BACKOFF_MAX);
        self.last_attempt.saturating_add(delay)
    }

    /// Whether it has failed `NEW_RETRIES` (3) times or more since its last success.
    pub fn is_failing(&self) -> bool {
        self.failures >= NEW_RETRIES
    }
}

/// What a failure did to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// The address is not in the book.
    Unknown,
    /// Counted; it stays where it was.
    Kept,
    /// A "tried" address failed too often and went back to "new".
    Demoted,
    /// The address was dropped from the book.
    Dropped,
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The book's form of an address: IPv4-mapped IPv6 folded to IPv4, no flow info or scope id.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

/// Addresses no one can dial, refused whatever the settings: port 0, unspecified, multicast,
/// broadcast.
fn undialable(a: &SocketAddr) -> bool {
    a.port() == 0
        || match a.ip() {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        }
}

/// Whether an IP is publicly routable: not "this network" (0/8), loopback, private (10/8,
/// 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), link-local (169.254/16, fe80::/10),
/// site-local (fec0::/10), documentation (192.0.2/24, 198.51.100/24, 203.0.113/24,
/// 2001:db8::/32), benchmarking (198.18/15), reserved (240/4), multicast or broadcast.
pub fn is_routable(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let in_net = |net: [u8; 4], prefix: u32| {
                let m = u32::MAX << (32 - prefix);
                u32::from(v4) & m == u32::from(Ipv4Addr::from(net)) & m
            };
            !(o[0] == 0
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_documentation()
                || v4.is_multicast()
                || v4.is_broadcast()
                || in_net([100, 64, 0, 0], 10)
                || in_net([198, 18, 0, 0], 15)
                || in_net([240, 0, 0, 0], 4))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || s[0] & 0xfe00 == 0xfc00
                || s[0] & 0xffc0 == 0xfe80
                || s[0] & 0xffc0 == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Eviction rank, lowest worst: failing first (more failures, up to [`NEW_RETRIES`], worse),
/// then the longest unseen.
type Rank = (u32, u64);

fn rank(i: &AddrInfo) -> Rank {
    (NEW_RETRIES - i.failures.min(NEW_RETRIES), i.last_seen)
}

/// One table: the addresses in a vector (uniform random picks) and by rank (eviction).
#[derive(Clone, Debug, Default)]
struct Tbl {
    list: Vec<SocketAddr>,
    order: BTreeSet<(Rank, SocketAddr)>,
}

#[derive(Clone, Debug)]
struct Slot {
    info: AddrInfo,
    /// Index in its table's `list`.
    pos: usize,
}

/// The address book. See the module documentation.
#[derive(Clone, Debug)]
pub struct AddrBook {
    settings: AddrBookSettings,
    map: HashMap<SocketAddr, Slot>,
    new: Tbl,
    tried: Tbl,
    /// Changed since the last [`AddrBook::take_dirty_batch`] (all in `map`).
    dirty: BTreeSet<SocketAddr>,
    /// Removed since then (none in `map`), bounded by `removed_cap`.
    removed: BTreeSet<SocketAddr>,
}

impl AddrBook {
    /// An empty book.
    pub fn new(settings: AddrBookSettings) -> AddrBook {
        let settings = AddrBookSettings {
            max_new: settings.max_new.max(1),
            max_tried: settings.max_tried.max(1),
            ..settings
        };
        AddrBook {
            settings,
            map: HashMap::new(),
            new: Tbl::default(),
            tried: Tbl::default(),
            dirty: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// A book restored from stored entries (as [`load_entries`] reads them), within the caps:
    /// entries refused by the settings or over the caps are queued for deletion by the next
    /// [`AddrBook::take_dirty_batch`]; the others are not dirty.
    pub fn load(
        settings: AddrBookSettings,
        entries: impl IntoIterator<Item = (SocketAddr, AddrInfo)>,
    ) -> AddrBook {
        let mut b = AddrBook::new(settings);
        for (stored, info) in entries {
            // the store key of an address is its canonical form's: no two rows differ only so
            let a = canonical(stored);
            if b.map.contains_key(&a) {
                continue;
            }
            if !b.acceptable(&a) {
                b.mark_removed(a);
                continue;
            }
            let was_removed = b.removed.contains(&a);
            if !b.place(a, info) {
                b.mark_removed(a);
            } else if !was_removed {
                // as stored: not dirty (an entry it displaced from "tried" is)
                b.dirty.remove(&a);
            }
        }
        b
    }

    /// Whether the book would keep `a`: dialable, and publicly routable unless `allow_local`.
    pub fn acceptable(&self, a: &SocketAddr) -> bool {
        !undialable(a) && (self.settings.allow_local || is_routable(a.ip()))
    }

    #[cfg(test)]
    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[cfg(test)]
    /// Number of addresses in "new".
    pub fn len_new(&self) -> usize {
        self.new.list.len()
    }

    #[cfg(test)]
    /// Number of addresses in "tried".
    pub fn len_tried(&self) -> usize {
        self.tried.list.len()
    }

    #[cfg(test)]
    /// What the book knows of `a`.
    pub fn get(&self, a: &SocketAddr) -> Option<&AddrInfo> {
        self.map.get(&canonical(*a)).map(|s| &s.info)
    }

    /// Whether `a` is in the book.
    pub fn contains(&self, a: &SocketAddr) -> bool {
        self.map.contains_key(&canonical(*a))
    }

    /// Every address: "new" then "tried", in table order (deterministic).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &AddrInfo)> + '_ {
        self.new
            .list
            .iter()
            .chain(self.tried.list.iter())
            .map(move |a| (*a, &self.map[a].info))
    }

    /// Takes in gossiped addresses (an `addr` message) heard from `source`; returns how many
    /// were new. Unbelievable timestamps (more than 10 minutes ahead, or before 1973) count as
    /// 5 days old; addresses older than 30 days and ones the settings refuse are ignored. Known
    /// ones get the newer timestamp and the union of the service bits. When "new" is full the
    /// worst entry there (failing, then longest unseen) makes room, unless the newcomer is no
    /// better.
    pub fn add(&mut self, addrs: &[TimedNetAddr], source: IpAddr, now: u64) -> usize {
        let source = canonical_ip(source);
        let mut added = 0;
        for ta in addrs {
            let a = canonical(ta.addr.socket_addr());
            if !self.acceptable(&a) {
                continue;
            }
            let mut t = u64::from(ta.time);
            if t <= BOGUS_TIME || t > now.saturating_add(MAX_FUTURE) {
                t = now.saturating_sub(UNBELIEVED_AGE);
            }
            let t = t.min(now);
            if now - t > HORIZON {
                continue;
            }
            let services = ta.addr.services;
            if self.map.contains_key(&a) {
                self.modify(&a, |i| {
                    i.last_seen = i.last_seen.max(t);
                    i.services |= services;
                });
                continue;
            }
            let info = AddrInfo {
                services,
                last_seen: t,
                last_attempt: 0,
                last_success: 0,
                attempts: 0,
                failures: 0,
                tried: false,
                source,
            };
            if self.place(a, info) {
                added += 1;
            }
        }
        added
    }

    /// Records a dial attempt of `a` (call it when dialing what [`AddrBook::select`] gave).
    /// False when `a` is not in the book.
    pub fn attempt(&mut self, a: &SocketAddr, now: u64) -> bool {
        let a = canonical(*a);
        self.modify(&a, |i| {
            i.last_attempt = now;
            i.attempts = i.attempts.saturating_add(1);
        })
    }

    /// Records a completed handshake with `a` that counts at once: [`AddrBook::handshake`],
    /// then [`AddrBook::stable`] (its backoff and failures reset). True when `a` is in the book
    /// after.
    #[cfg(test)]
    pub fn success(&mut self, a: &SocketAddr, services: u64, now: u64) -> bool {
        self.handshake(a, services, now) && self.stable(a)
    }

    /// Records a completed handshake with `a` (an outbound connection: an inbound peer's port
    /// is not its listening port) and the services it announced: the address goes to "tried"
    /// (added if unknown, unless the settings refuse it). Its retry backoff and failures are
    /// kept: a peer that drops us right after the handshake must not be retried at once, so
    /// they start over only when the connection has stayed up ([`AddrBook::stable`]). When
    /// "tried" is full its worst entry goes back to "new". True when `a` is in the book after.
    pub fn handshake(&mut self, a: &SocketAddr, services: u64, now: u64) -> bool {
        let a = canonical(*a);
        if !self.acceptable(&a) {
            return false;
        }
        let update = |i: &mut AddrInfo| {
            i.services = services;
            i.last_seen = i.last_seen.max(now);
            i.last_success = now;
        };
        match self.map.get(&a).map(|s| s.info.tried) {
            Some(true) => self.modify(&a, update),
            Some(false) => {
                let mut info = self.unlink(&a).expect("present");
                update(&mut info);
                info.tried = true;
                self.place(a, info)
            }
            None => {
                let mut info = AddrInfo {
                    services,
                    last_seen: now,
                    last_attempt: now,
                    last_success: now,
                    attempts: 0,
                    failures: 0,
                    tried: true,
                    source: a.ip(),
                };
                update(&mut info);
                self.place(a, info)
            }
        }
    }

    /// Records that a connection to `a` stayed up long enough to count as a success: its retry
    /// backoff and failures start over. False when `a` is not in the book.
    pub fn stable(&mut self, a: &SocketAddr) -> bool {
        let a = canonical(*a);
        self.modify(&a, |i| {
            i.attempts = 0;
            i.failures = 0;
        })
    }

    /// Records a failed dial or handshake with `a` (it counts as an attempt too if none was
    /// recorded). A "new" address with [`NEW_RETRIES`] failures and no success for
    /// [`FAIL_WINDOW`] is dropped; a "tried" one goes back to "new" after
    /// [`MAX_TRIED_FAILURES`].
    pub fn failure(&mut self, a: &SocketAddr, now: u64) -> FailureOutcome {
        let a = canonical(*a);
        let Some(was_tried) = self.map.get(&a).map(|s| s.info.tried) else {
            return FailureOutcome::Unknown;
        };
        self.modify(&a, |i| {
            i.failures = i.failures.saturating_add(1);
            i.attempts = i.attempts.max(1);
            i.last_attempt = i.last_attempt.max(now);
        });
        let info = self.map[&a].info;
        if was_tried {
            if info.failures < MAX_TRIED_FAILURES {
                return FailureOutcome::Kept;
            }
            let mut info = self.unlink(&a).expect("present");
            info.tried = false;
            if self.place(a, info) {
                FailureOutcome::Demoted
            } else {
                self.mark_removed(a);
                FailureOutcome::Dropped
            }
        } else if info.failures >= NEW_RETRIES
            && (info.last_success == 0 || now.saturating_sub(info.last_success) > FAIL_WINDOW)
        {
            self.unlink(&a);
            self.mark_removed(a);
            FailureOutcome::Dropped
        } else {
            FailureOutcome::Kept
        }
    }

    #[cfg(test)]
    /// Forgets `a`; returns what was known.
    pub fn remove(&mut self, a: &SocketAddr) -> Option<AddrInfo> {
        let a = canonical(*a);
        let info = self.unlink(&a)?;
        self.mark_removed(a);
        Some(info)
    }

    /// An address to dial: from "tried" or "new" with even odds when both have some, uniformly
    /// within the table, skipping the ones `exclude` names (connected, being dialed, banned:
    /// the caller decides; it sees the book's canonical form, IPv4 as IPv4) and the ones in
    /// their retry backoff ([`AddrInfo::retry_at`]). At most 64 random probes, then a scan of
    /// both tables from a random point. Call [`AddrBook::attempt`] when dialing it: until then
    /// the same address can come again.
    pub fn select(
        &mut self,
        now: u64,
        rng: &mut impl FnMut() -> u64,
        exclude: &dyn Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let ok = |a: &SocketAddr| now >= self.map[a].info.retry_at() && !exclude(a);
        let (nn, nt) = (self.new.list.len(), self.tried.list.len());
        if nn + nt == 0 {
            return None;
        }
        let coin = |rng: &mut dyn FnMut() -> u64| match (nn, nt) {
            (0, _) => true,
            (_, 0) => false,
            _ => rng() & 1 == 1,
        };
        for _ in 0..PROBES {
            let list = if coin(rng) {
                &self.tried.list
            } else {
                &self.new.list
            };
            let a = &list[(rng() % list.len() as u64) as usize];
            if ok(a) {
                return Some(*a);
            }
        }
        let lists = if coin(rng) {
            [&self.tried.list, &self.new.list]
        } else {
            [&self.new.list, &self.tried.list]
        };
        for list in lists {
            if list.is_empty() {
                continue;
            }
            let start = (rng() % list.len() as u64) as usize;
            let (tail, head) = list.split_at(start);
            if let Some(a) = head.iter().chain(tail).find(|a| ok(a)) {
                return Some(*a);
            }
        }
        None
    }

    /// Addresses for a `getaddr` answer: at most min(n, 1000), a uniform random choice of the
    /// ones seen in the last 30 days and not failing, with their last-seen time and services.
    pub fn sample(
        &mut self,
        n: usize,
        now: u64,
        rng: &mut impl FnMut() -> u64,
    ) -> Vec<TimedNetAddr> {
        let mut pool: Vec<SocketAddr> = self
            .iter()
            .filter(|(_, i)| now.saturating_sub(i.last_seen) <= HORIZON && !i.is_failing())
            .map(|(a, _)| a)
            .collect();
        let k = n.min(MAX_SAMPLE).min(pool.len());
        for j in 0..k {
            let r = j + (rng() % (pool.len() - j) as u64) as usize;
            pool.swap(j, r);
        }
        pool[..k]
            .iter()
            .map(|a| {
                let i = &self.map[a].info;
                TimedNetAddr {
                    time: i.last_seen.min(u64::from(u32::MAX)) as u32,
                    addr: NetAddr::new(*a, i.services),
                }
            })
            .collect()
    }

    #[cfg(test)]
    /// Adds a put of every entry to `batch` (a full save; the dirty set is left alone).
    pub fn put_all(&self, batch: &mut Batch) {
        for (a, info) in self.iter() {
            batch.put(Table::Addresses, addr_key(&a).to_vec(), info.encode());
        }
    }

    /// Adds the writes since the last call to `batch`: a put of each entry added or changed,
    /// a delete of each removed; returns how many. Deletes past a bound (twice the caps plus
    /// 1024 between two calls) are not remembered: those rows come back at the next load, which
    /// keeps the caps.
    pub fn take_dirty_batch(&mut self, batch: &mut Batch) -> usize {
        let n = self.dirty.len() + self.removed.len();
        for a in std::mem::take(&mut self.dirty) {
            match self.map.get(&a) {
                Some(s) => batch.put(Table::Addresses, addr_key(&a).to_vec(), s.info.encode()),
                None => batch.delete(Table::Addresses, addr_key(&a).to_vec()),
            }
        }
        for a in std::mem::take(&mut self.removed) {
            batch.delete(Table::Addresses, addr_key(&a).to_vec());
        }
        n
    }

    #[cfg(test)]
    /// Number of changes waiting for [`AddrBook::take_dirty_batch`].
    pub fn dirty_len(&self) -> usize {
        self.dirty.len() + self.removed.len()
    }

    // ---- internals: every unlink is followed by a link (place) or a mark_removed ----

    fn removed_cap(&self) -> usize {
        2 * (self.settings.max_new + self.settings.max_tried) + 1024
    }

    fn mark_dirty(&mut self, a: SocketAddr) {
        self.removed.remove(&a);
        self.dirty.insert(a);
    }

    fn mark_removed(&mut self, a: SocketAddr) {
        self.dirty.remove(&a);
        if self.removed.len() < self.removed_cap() {
            self.removed.insert(a);
        }
    }

    fn link(&mut self, a: SocketAddr, info: AddrInfo) {
        let t = if info.tried {
            &mut self.tried
        } else {
            &mut self.new
        };
        let pos = t.list.len();
        t.list.push(a);
        t.order.insert((rank(&info), a));
        self.map.insert(a, Slot { info, pos });
        self.mark_dirty(a);
    }

    fn unlink(&mut self, a: &SocketAddr) -> Option<AddrInfo> {
        let slot = self.map.remove(a)?;
        let t = if slot.info.tried {
            &mut self.tried
        } else {
            &mut self.new
        };
        t.order.remove(&(rank(&slot.info), *a));
        t.list.swap_remove(slot.pos);
        if let Some(moved) = t.list.get(slot.pos) {
            self.map.get_mut(moved).expect("listed").pos = slot.pos;
        }
        Some(slot.info)
    }

    /// Changes an entry in place (not its table); false when absent.
    fn modify(&mut self, a: &SocketAddr, f: impl FnOnce(&mut AddrInfo)) -> bool {
        let Some(slot) = self.map.get_mut(a) else {
            return false;
        };
        let before = slot.info;
        f(&mut slot.info);
        debug_assert_eq!(before.tried, slot.info.tried);
        if slot.info == before {
            return true;
        }
        let (old, new) = (rank(&before), rank(&slot.info));
        if old != new {
            let t = if before.tried {
                &mut self.tried
            } else {
                &mut self.new
            };
            t.order.remove(&(old, *a));
            t.order.insert((new, *a));
        }
        self.mark_dirty(*a);
        true
    }

    /// Puts an absent entry in its table, making room: a full "tried" sends its worst entry to
    /// "new"; a full "new" drops its worst unless the newcomer is no better (then refused:
    /// false). The caller marks a refused entry removed if it was in the book.
    fn place(&mut self, a: SocketAddr, info: AddrInfo) -> bool {
        if info.tried {
            if self.tried.list.len() >= self.settings.max_tried {
                let &(_, worst) = self.tried.order.first().expect("full, so not empty");
                let mut w = self.unlink(&worst).expect("indexed");
                w.tried = false;
                if !self.place(worst, w) {
                    self.mark_removed(worst);
                }
            }
        } else if self.new.list.len() >= self.settings.max_new {
            let &(worst_rank, worst) = self.new.order.first().expect("full, so not empty");
            if rank(&info) <= worst_rank {
                return false;
            }
            self.unlink(&worst);
            self.mark_removed(worst);
        }
        self.link(a, info);
        true
    }

    #[cfg(test)]
    fn check(&self) {
        assert!(self.new.list.len() <= self.settings.max_new);
        assert!(self.tried.list.len() <= self.settings.max_tried);
        assert_eq!(self.map.len(), self.new.list.len() + self.tried.list.len());
        for (t, tried) in [(&self.new, false), (&self.tried, true)] {
            assert_eq!(t.list.len(), t.order.len());
            for (pos, a) in t.list.iter().enumerate() {
                let s = &self.map[a];
                assert_eq!(s.pos, pos);
                assert_eq!(s.info.tried, tried);
                assert!(t.order.contains(&(rank(&s.info), *a)));
                assert!(self.acceptable(a));
                assert_eq!(canonical(*a), *a);
            }
        }
        assert!(self.dirty.iter().all(|a| self.map.contains_key(a)));
        assert!(self.removed.iter().all(|a| !self.map.contains_key(a)));
        assert!(self.removed.len() <= self.removed_cap());
    }
}

/// Every stored address entry. Rows that do not decode are skipped (logged): a damaged address
/// book must not stop the node; [`AddrBook::load`] takes the rest.
pub fn load_entries(s: &dyn Store) -> StoreResult<Vec<(SocketAddr, AddrInfo)>> {
    let mut out = Vec::new();
    let mut bad = 0usize;
    s.scan(Table::Addresses, &[], &mut |k, v| {
        match (addr_from_key(k), AddrInfo::decode(v)) {
            (Some(a), Ok(i)) if k.len() == 18 => out.push((a, i)),
            _ => bad += 1,
        }
        true
    })?;
    if bad > 0 {
        log::warn!("address book: skipped {bad} undecodable stored entries");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::Op;
    use crate::wire::types::NODE_NETWORK;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NOW: u64 = 1_700_000_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ta(a: SocketAddr, time: u64, services: u64) -> TimedNetAddr {
        TimedNetAddr {
            time: time as u32,
            addr: NetAddr::new(a, services),
        }
    }

    fn local() -> AddrBookSettings {
        AddrBookSettings {
            allow_local: true,
            ..AddrBookSettings::default()
        }
    }

    fn src() -> IpAddr {
        "9.9.9.9".parse().unwrap()
    }

    /// A public IPv4 address from an index.
    fn public(i: u32) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0500_0000 + i)), 8333)
    }

    /// The store rows of a book after a full save.
    fn rows(b: &AddrBook) -> BTreeMap<Vec<u8>, Bytes> {
        let mut batch = Batch::new();
        b.put_all(&mut batch);
        let mut m = BTreeMap::new();
        for op in batch.ops {
            match op {
                Op::Put(Table::Addresses, k, v) => {
                    m.insert(k.to_vec(), v);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        m
    }

    fn apply(m: &mut BTreeMap<Vec<u8>, Bytes>, batch: Batch) {
        for op in batch.ops {
            match op {
                Op::Put(Table::Addresses, k, v) => {
                    m.insert(k.to_vec(), v);
                }
                Op::Delete(Table::Addresses, k) => {
                    m.remove(&k[..]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn caps_hold_under_100000_inserts() {
        let mut b = AddrBook::new(AddrBookSettings::default());
        let mut r = XorShift64::new(7);
        let mut total = 0;
        for round in 0..100 {
            let now = NOW + round * 60;
            let batch: Vec<TimedNetAddr> = (0..1000)
                .map(|_| {
                    let x = r.next_u64();
                    let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x as u32)), 8333);
                    ta(a, now - (x >> 40) % (40 * DAY), NODE_NETWORK)
                })
                .collect();
            total += b.add(&batch, src(), now);
            for a in batch.iter().take(60) {
                b.success(&a.addr.socket_addr(), NODE_NETWORK, now);
            }
            assert!(b.len_new() <= 4096 && b.len_tried() <= 1024);
        }
        b.check();
        assert!(
            total > 4096,
            "evictions made room for fresher ones: {total}"
        );
        assert_eq!(b.len_new(), 4096);
        assert_eq!(b.len_tried(), 1024);
        // dirty bookkeeping stays bounded too
        assert!(b.dirty_len() <= b.len() + b.removed_cap());
    }

    #[test]
    fn local_addresses_are_refused_unless_allowed() {
        let locals = [
            "127.0.0.1:8333",
            "10.1.2.3:8333",
            "172.16.5.4:8333",
            "172.31.255.255:8333",
            "192.168.1.1:8333",
            "169.254.1.1:8333",
            "192.0.2.1:8333",
            "198.51.100.7:8333",
            "203.0.113.9:8333",
            "100.64.0.1:8333",
            "[::1]:8333",
            "[fd00::1]:8333",
            "[fe80::1]:8333",
            "[2001:db8::1]:8333",
            "[::ffff:127.0.0.1]:8333",
        ];
        let never = [
            "0.0.0.0:8333",
            "[::]:8333",
            "224.0.0.1:8333",
            "255.255.255.255:8333",
            "[ff02::1]:8333",
            "1.2.3.4:0",
        ];
        let public = ["1.2.3.4:8333", "172.32.0.1:8333", "[2a01:4f8::1]:8333"];
        let msg = |l: &[&str]| -> Vec<TimedNetAddr> {
            l.iter().map(|s| ta(sa(s), NOW, NODE_NETWORK)).collect()
        };
        let mut strict = AddrBook::new(AddrBookSettings::default());
        assert_eq!(strict.add(&msg(&locals), src(), NOW), 0);
        assert_eq!(strict.add(&msg(&never), src(), NOW), 0);
        assert_eq!(strict.add(&msg(&public), src(), NOW), 3);
        assert!(!strict.success(&sa("127.0.0.1:8333"), NODE_NETWORK, NOW));
        assert!(!strict.contains(&sa("127.0.0.1:8333")));

        let mut open = AddrBook::new(local());
        // the mapped loopback is the same as 127.0.0.1
        assert_eq!(open.add(&msg(&locals), src(), NOW), locals.len() - 1);
        assert_eq!(open.add(&msg(&never), src(), NOW), 0);
        assert_eq!(open.add(&msg(&public), src(), NOW), 3);
        assert!(open.contains(&sa("[::ffff:127.0.0.1]:8333")));
        assert!(open.success(&sa("127.0.0.1:8333"), NODE_NETWORK, NOW));
        open.check();
    }

    #[test]
    fn timestamps_are_clamped_and_stale_ones_ignored() {
        let mut b = AddrBook::new(local());
        let (fut, zero, old, ok, near) = (
            sa("1.0.0.1:1"),
            sa("1.0.0.2:1"),
            sa("1.0.0.3:1"),
            sa("1.0.0.4:1"),
            sa("1.0.0.5:1"),
        );
        let n = b.add(
            &[
                ta(fut, NOW + 3600, 1),
                ta(zero, 0, 1),
                ta(old, NOW - 31 * DAY, 1),
                ta(ok, NOW - 29 * DAY, 1),
                ta(near, NOW + 300, 1),
            ],
            src(),
            NOW,
        );
        assert_eq!(n, 4);
        assert_eq!(b.get(&fut).unwrap().last_seen, NOW - UNBELIEVED_AGE);
        assert_eq!(b.get(&zero).unwrap().last_seen, NOW - UNBELIEVED_AGE);
        assert!(b.get(&old).is_none());
        assert_eq!(b.get(&ok).unwrap().last_seen, NOW - 29 * DAY);
        assert_eq!(b.get(&near).unwrap().last_seen, NOW, "never in the future");
        assert_eq!(b.get(&ok).unwrap().source, src());
        // known: newer time taken, older ignored, services united; not counted as new
        assert_eq!(b.add(&[ta(ok, NOW - DAY, 4)], src(), NOW), 0);
        assert_eq!(b.get(&ok).unwrap().last_seen, NOW - DAY);
        assert_eq!(b.get(&ok).unwrap().services, 5);
        b.add(&[ta(ok, NOW - 2 * DAY, 0)], src(), NOW);
        assert_eq!(b.get(&ok).unwrap().last_seen, NOW - DAY);
        b.check();
    }

    #[test]
    fn select_respects_exclude_and_backoff() {
        let mut b = AddrBook::new(local());
        let mut r = XorShift64::new(1);
        let mut rng = || r.next_u64();
        let addrs = [sa("1.0.0.1:1"), sa("1.0.0.2:1"), sa("1.0.0.3:1")];
        let msg: Vec<_> = addrs.iter().map(|a| ta(*a, NOW, 1)).collect();
        assert_eq!(b.select(NOW, &mut rng, &|_| false), None, "empty book");
        b.add(&msg, src(), NOW);
        let only = addrs[2];
        for _ in 0..50 {
            assert_eq!(b.select(NOW, &mut rng, &|a| *a != only), Some(only));
        }
        assert_eq!(b.select(NOW, &mut rng, &|_| true), None);
        // backoff: 60 s, 120 s, 240 s ... at most an hour
        let ex = |a: &SocketAddr| *a != only;
        let mut t = NOW;
        for k in 0..10u32 {
            assert!(b.attempt(&only, t));
            let delay = (60u64 << k).min(3600);
            assert_eq!(b.select(t + delay - 1, &mut rng, &ex), None, "attempt {k}");
            assert_eq!(b.select(t + delay, &mut rng, &ex), Some(only));
            t += delay;
        }
        // a handshake alone keeps the backoff (the peer may drop us at once); a connection that
        // stayed up resets it, as does a success
        b.attempt(&only, t);
        assert_eq!(b.select(t, &mut rng, &ex), None);
        assert!(b.handshake(&only, 1, t));
        assert!(b.get(&only).unwrap().tried);
        assert_eq!(b.select(t, &mut rng, &ex), None);
        assert!(b.stable(&only));
        assert_eq!(b.get(&only).unwrap().attempts, 0);
        assert_eq!(b.select(t, &mut rng, &ex), Some(only));
        b.attempt(&only, t);
        assert_eq!(b.select(t, &mut rng, &ex), None);
        b.success(&only, 1, t);
        assert_eq!(b.get(&only).unwrap().attempts, 0);
        assert_eq!(b.select(t, &mut rng, &ex), Some(only));
        // a failure without an attempt still backs off
        let other = addrs[0];
        b.failure(&other, t);
        assert_eq!(b.select(t + 59, &mut rng, &|a| *a != other), None);
        assert_eq!(b.select(t + 60, &mut rng, &|a| *a != other), Some(other));
    }

    #[test]
    fn select_prefers_variety() {
        let mut b = AddrBook::new(local());
        let mut r = XorShift64::new(2);
        let mut rng = || r.next_u64();
        let msg: Vec<_> = (0..100).map(|i| ta(public(i), NOW, 1)).collect();
        b.add(&msg, src(), NOW);
        for i in 0..50 {
            b.success(&public(i), 1, NOW);
        }
        assert_eq!((b.len_new(), b.len_tried()), (50, 50));
        let mut tried = 0;
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            let a = b.select(NOW, &mut rng, &|_| false).unwrap();
            tried += b.get(&a).unwrap().tried as usize;
            seen.insert(a);
        }
        assert!((400..=600).contains(&tried), "tried picked {tried} of 1000");
        assert!(seen.len() > 90, "{} distinct", seen.len());
        // dialing what it gives, without success, walks through every address before repeating
        let mut dialed = BTreeSet::new();
        for _ in 0..100 {
            let a = b.select(NOW, &mut rng, &|_| false).unwrap();
            assert!(dialed.insert(a), "{a} again");
            b.attempt(&a, NOW);
        }
        assert_eq!(b.select(NOW + 59, &mut rng, &|_| false), None);
    }

    #[test]
    fn success_moves_to_tried_and_a_full_tried_demotes_its_worst() {
        let mut b = AddrBook::new(AddrBookSettings {
            max_new: 10,
            max_tried: 2,
            allow_local: true,
        });
        let msg: Vec<_> = (0..3)
            .map(|i| ta(public(i), NOW - 100 + i as u64, 1))
            .collect();
        b.add(&msg, src(), NOW);
        assert!(b.success(&public(0), NODE_NETWORK | 4, NOW));
        let i = *b.get(&public(0)).unwrap();
        assert!(i.tried);
        assert_eq!(
            (i.services, i.last_seen, i.last_success),
            (NODE_NETWORK | 4, NOW, NOW)
        );
        assert_eq!((b.len_new(), b.len_tried()), (2, 1));
        b.success(&public(1), 1, NOW + 1);
        b.success(&public(2), 1, NOW + 2);
        // public(0) was seen longest ago: back to new
        assert_eq!((b.len_new(), b.len_tried()), (1, 2));
        assert!(!b.get(&public(0)).unwrap().tried);
        // an unknown address that answers is learned straight into tried
        assert!(b.success(&public(7), 1, NOW + 3));
        assert!(b.get(&public(7)).unwrap().tried);
        assert_eq!(b.get(&public(7)).unwrap().source, public(7).ip());
        assert_eq!((b.len_new(), b.len_tried()), (2, 2));
        b.check();
    }

    #[test]
    fn failures_drop_and_demote() {
        let mut b = AddrBook::new(local());
        let (a, c) = (public(1), public(2));
        b.add(&[ta(a, NOW, 1), ta(c, NOW, 1)], src(), NOW);
        assert_eq!(b.failure(&public(9), NOW), FailureOutcome::Unknown);
        assert_eq!(b.failure(&a, NOW), FailureOutcome::Kept);
        assert_eq!(b.failure(&a, NOW), FailureOutcome::Kept);
        assert_eq!(b.failure(&a, NOW), FailureOutcome::Dropped);
        assert!(!b.contains(&a));
        // tried: back to new after 10 failures, then dropped when no success for 7 days
        b.success(&c, 1, NOW);
        for k in 1..MAX_TRIED_FAILURES {
            assert_eq!(b.failure(&c, NOW + k as u64), FailureOutcome::Kept);
        }
        assert_eq!(b.failure(&c, NOW + 10), FailureOutcome::Demoted);
        assert!(!b.get(&c).unwrap().tried);
        assert_eq!(
            b.failure(&c, NOW + DAY),
            FailureOutcome::Kept,
            "success 1 day ago"
        );
        assert_eq!(b.failure(&c, NOW + 8 * DAY), FailureOutcome::Dropped);
        assert!(b.is_empty());
        // a success in between resets the count
        b.add(&[ta(a, NOW, 1)], src(), NOW);
        b.failure(&a, NOW);
        b.failure(&a, NOW);
        b.success(&a, 1, NOW);
        assert_eq!(b.get(&a).unwrap().failures, 0);
        assert_eq!(b.remove(&a).map(|i| i.tried), Some(true));
        assert_eq!(b.remove(&a), None);
        b.check();
    }

    #[test]
    fn a_full_new_table_keeps_the_better_entries() {
        let mut b = AddrBook::new(AddrBookSettings {
            max_new: 3,
            max_tried: 1,
            allow_local: false,
        });
        let msg: Vec<_> = (0..3).map(|i| ta(public(i), NOW - DAY, 1)).collect();
        assert_eq!(b.add(&msg, src(), NOW), 3);
        // older or as old: refused
        assert_eq!(b.add(&[ta(public(3), NOW - 2 * DAY, 1)], src(), NOW), 0);
        assert_eq!(b.add(&[ta(public(3), NOW - DAY, 1)], src(), NOW), 0);
        // a failing one makes room first, then the longest unseen
        b.failure(&public(1), NOW);
        assert_eq!(b.add(&[ta(public(3), NOW - 2 * DAY, 1)], src(), NOW), 1);
        assert!(!b.contains(&public(1)));
        assert_eq!(b.add(&[ta(public(4), NOW, 1)], src(), NOW), 1);
        assert!(!b.contains(&public(3)));
        assert_eq!(b.len_new(), 3);
        b.check();
    }

    #[test]
    fn samples_are_bounded_fresh_and_random() {
        let mut b = AddrBook::new(AddrBookSettings {
            max_new: 5000,
            max_tried: 100,
            allow_local: false,
        });
        let mut r = XorShift64::new(3);
        let mut rng = || r.next_u64();
        let msg: Vec<_> = (0..1500)
            .map(|i| ta(public(i), NOW - 20 * DAY, NODE_NETWORK))
            .collect();
        b.add(&msg, src(), NOW);
        assert!(b.sample(0, NOW, &mut rng).is_empty());
        assert_eq!(b.sample(10, NOW, &mut rng).len(), 10);
        assert_eq!(b.sample(5000, NOW, &mut rng).len(), 1000);
        let s = b.sample(1000, NOW, &mut rng);
        let distinct: BTreeSet<_> = s.iter().map(|t| t.addr.socket_addr()).collect();
        assert_eq!(distinct.len(), 1000);
        assert!(s
            .iter()
            .all(|t| t.time as u64 == NOW - 20 * DAY && t.addr.services == NODE_NETWORK));
        let other = b.sample(1000, NOW, &mut rng);
        assert_ne!(s, other, "random");
        // 11 days on, all are older than 30 days but the ones seen since
        let later = NOW + 11 * DAY;
        b.add(&[ta(public(5), later - 60, 1)], src(), later);
        b.success(&public(6), 1, later);
        b.failure(&public(6), later);
        let s = b.sample(100, later, &mut rng);
        let got: BTreeSet<_> = s.iter().map(|t| t.addr.socket_addr()).collect();
        assert_eq!(got, [public(5), public(6)].into_iter().collect());
        // failing ones are not handed out
        for _ in 0..3 {
            b.failure(&public(6), later);
        }
        assert!(b.contains(&public(6)));
        assert_eq!(b.sample(100, later, &mut rng).len(), 1);
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let i = AddrInfo {
            services: 0x0102_0304_0506_0708,
            last_seen: NOW,
            last_attempt: NOW - 1,
            last_success: NOW - 2,
            attempts: 7,
            failures: 3,
            tried: true,
            source: "9.8.7.6".parse().unwrap(),
        };
        let e = i.encode();
        assert_eq!(e.len(), ENCODED_LEN);
        assert_eq!(&e[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(
            &e[41..],
            &"::ffff:9.8.7.6".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(AddrInfo::decode(&e).unwrap(), i);
        let v6 = AddrInfo {
            source: "2a01::5".parse().unwrap(),
            tried: false,
            ..i
        };
        assert_eq!(AddrInfo::decode(&v6.encode()).unwrap(), v6);
        assert!(AddrInfo::decode(&e[..56]).is_err());
        let mut bad = e.to_vec();
        bad[40] = 2;
        assert!(AddrInfo::decode(&bad).is_err());
        bad[40] = 1;
        bad.push(0);
        assert_eq!(AddrInfo::decode(&bad).unwrap(), i, "trailing bytes ignored");
    }

    #[test]
    fn load_of_put_all_restores_the_book() {
        let mut b = AddrBook::new(local());
        let mut r = XorShift64::new(4);
        let msg: Vec<_> = (0..300)
            .map(|i| ta(public(i), NOW - r.next_u64() % DAY, r.next_u64()))
            .collect();
        b.add(&msg, src(), NOW);
        b.add(&[ta(sa("[2a01::1]:8333"), NOW, 1)], src(), NOW);
        for i in 0..40 {
            b.success(&public(i * 3), 1, NOW);
            b.attempt(&public(i * 3 + 1), NOW);
            b.failure(&public(i * 3 + 2), NOW);
        }
        let store = MemoryStore::new();
        let mut batch = Batch::new();
        b.put_all(&mut batch);
        store.write(&batch).unwrap();
        let l = AddrBook::load(local(), load_entries(&store).unwrap());
        l.check();
        assert_eq!(l.dirty_len(), 0);
        assert_eq!((l.len_new(), l.len_tried()), (b.len_new(), b.len_tried()));
        let mut x: Vec<_> = b.iter().map(|(a, i)| (a, *i)).collect();
        let mut y: Vec<_> = l.iter().map(|(a, i)| (a, *i)).collect();
        x.sort_by_key(|e| e.0);
        y.sort_by_key(|e| e.0);
        assert_eq!(x, y);
        // tighter caps or stricter settings: the rest is queued for deletion
        let small = AddrBookSettings {
            max_new: 100,
            max_tried: 10,
            allow_local: false,
        };
        let mut s = AddrBook::load(small, load_entries(&store).unwrap());
        s.check();
        assert_eq!((s.len_new(), s.len_tried()), (100, 10));
        let mut batch = Batch::new();
        s.take_dirty_batch(&mut batch);
        store.write(&batch).unwrap();
        let again = load_entries(&store).unwrap();
        assert_eq!(again.len(), s.len());
        // a corrupt row is skipped
        let mut batch = Batch::new();
        batch.put(
            Table::Addresses,
            addr_key(&public(999)).to_vec(),
            vec![1u8, 2],
        );
        store.write(&batch).unwrap();
        assert_eq!(load_entries(&store).unwrap().len(), s.len());
    }

    #[test]
    fn dirty_batches_track_changes_and_removals() {
        let mut b = AddrBook::new(local());
        let mut m = BTreeMap::new();
        let mut batch = Batch::new();
        assert_eq!(b.take_dirty_batch(&mut batch), 0);
        b.add(&[ta(public(1), NOW, 1), ta(public(2), NOW, 1)], src(), NOW);
        assert_eq!(b.take_dirty_batch(&mut batch), 2);
        apply(&mut m, std::mem::take(&mut batch));
        assert_eq!(m, rows(&b));
        // unchanged gossip is not a change
        b.add(&[ta(public(1), NOW - 5, 1)], src(), NOW);
        assert_eq!(b.dirty_len(), 0);
        b.attempt(&public(1), NOW);
        b.remove(&public(2));
        b.add(&[ta(public(3), NOW, 1)], src(), NOW);
        b.remove(&public(3));
        assert_eq!(b.take_dirty_batch(&mut batch), 3);
        apply(&mut m, batch);
        assert_eq!(m, rows(&b));
        assert_eq!(m.len(), 1);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Add(Vec<(u8, u32, u64)>, u8),
        Attempt(u8),
        Success(u8, u64),
        Failure(u8),
        Remove(u8),
        Select(u64, u8),
        Sample(u16, u64),
        Advance(u64),
        Persist,
        Reload,
    }

    fn universe(i: u8) -> SocketAddr {
        match i % 4 {
            0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(5, 0, 0, i)), 8333),
            1 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 8333),
            2 => SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2a01, 0, 0, 0, 0, 0, 0, i as u16)),
                8333,
            ),
            _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(5, 0, 0, i)), i as u16 % 3),
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        let idx = 0u8..48;
        prop_oneof![
            3 => (
                proptest::collection::vec((0u8..48, any::<u32>(), any::<u64>()), 0..12),
                any::<u8>()
            )
                .prop_map(|(v, s)| Step::Add(v, s)),
            2 => idx.clone().prop_map(Step::Attempt),
            2 => (idx.clone(), any::<u64>()).prop_map(|(i, s)| Step::Success(i, s)),
            2 => idx.clone().prop_map(Step::Failure),
            1 => idx.prop_map(Step::Remove),
            2 => (any::<u64>(), any::<u8>()).prop_map(|(s, x)| Step::Select(s, x)),
            1 => (0u16..2000, any::<u64>()).prop_map(|(n, s)| Step::Sample(n, s)),
            2 => (0u64..10 * DAY).prop_map(Step::Advance),
            1 => Just(Step::Persist),
            1 => Just(Step::Reload),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_operations_keep_the_caps_and_the_invariants(
            max_new in 1usize..8,
            max_tried in 1usize..5,
            allow_local in any::<bool>(),
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let settings = AddrBookSettings { max_new, max_tried, allow_local };
            let mut b = AddrBook::new(settings.clone());
            let mut now = NOW;
            let mut stored: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Add(v, from) => {
                        let msg: Vec<_> = v
                            .iter()
                            .map(|&(i, dt, sv)| {
                                // timestamps around now, in the future, and garbage
                                let t = match dt % 4 {
                                    0 => u64::from(dt),
                                    _ => now - 40 * DAY + u64::from(dt) % (41 * DAY),
                                };
                                ta(universe(i), t, sv)
                            })
                            .collect();
                        let before = b.len();
                        let n = b.add(&msg, universe(from % 48).ip(), now);
                        prop_assert!(n <= msg.len());
                        prop_assert!(b.len() <= before + n);
                    }
                    Step::Attempt(i) => {
                        b.attempt(&universe(i), now);
                    }
                    Step::Success(i, sv) => {
                        let a = universe(i);
                        let ok = b.success(&a, sv, now);
                        prop_assert_eq!(ok, b.acceptable(&a));
                        if b.acceptable(&a) {
                            prop_assert!(b.get(&a).unwrap().tried);
                        }
                    }
                    Step::Failure(i) => {
                        b.failure(&universe(i), now);
                    }
                    Step::Remove(i) => {
                        b.remove(&universe(i));
                        prop_assert!(!b.contains(&universe(i)));
                    }
                    Step::Select(seed, x) => {
                        let mut r = XorShift64::new(seed);
                        let ex = universe(x % 48);
                        if let Some(a) = b.select(now, &mut || r.next_u64(), &|a| *a == ex) {
                            prop_assert!(a != ex);
                            prop_assert!(b.get(&a).unwrap().retry_at() <= now);
                        }
                    }
                    Step::Sample(n, seed) => {
                        let mut r = XorShift64::new(seed);
                        let s = b.sample(n as usize, now, &mut || r.next_u64());
                        prop_assert!(s.len() <= (n as usize).min(MAX_SAMPLE).min(b.len()));
                        for t in s {
                            let i = b.get(&t.addr.socket_addr()).unwrap();
                            prop_assert!(now - i.last_seen <= HORIZON && !i.is_failing());
                        }
                    }
                    Step::Advance(dt) => now += dt,
                    Step::Persist => {
                        let mut batch = Batch::new();
                        b.take_dirty_batch(&mut batch);
                        apply(&mut stored, batch);
                        prop_assert_eq!(&stored, &rows(&b));
                    }
                    Step::Reload => {
                        let mut batch = Batch::new();
                        b.take_dirty_batch(&mut batch);
                        apply(&mut stored, batch);
                        let entries = stored.iter().map(|(k, v)| {
                            (addr_from_key(k).unwrap(), AddrInfo::decode(v).unwrap())
                        });
                        let l = AddrBook::load(settings.clone(), entries);
                        l.check();
                        prop_assert_eq!(rows(&l), rows(&b));
                        b = l;
                    }
                }
                b.check();
                prop_assert!(b.len_new() <= max_new && b.len_tried() <= max_tried);
            }
        }
    }
}
