//! Typed records and their fixed byte layouts (little-endian, versioned by the schema), with the
//! typed reads and writes the engine uses on top of any [`Store`].

use super::{Batch, Store, StoreError, StoreResult, Table};
use crate::wire::{Command, Hash256};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Counters for one command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Messages received.
    pub msgs_in: u64,
    /// Bytes received (frames, headers included).
    pub bytes_in: u64,
    /// Messages sent.
    pub msgs_out: u64,
    /// Bytes sent (frames, headers included).
    pub bytes_out: u64,
}

/// What we think of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
#[repr(u8)]
pub enum PeerStatus {
    /// Never connected.
    #[default]
    Unknown = 0,
    /// Connected and behaving.
    Alive = 1,
    /// Unreachable.
    Dead = 2,
    /// Misbehaved, less preferred.
    Penalised = 3,
    /// Banned.
    Banned = 4,
}

impl PeerStatus {
    fn from_u8(v: u8) -> Option<PeerStatus> {
        Some(match v {
            0 => PeerStatus::Unknown,
            1 => PeerStatus::Alive,
            2 => PeerStatus::Dead,
            3 => PeerStatus::Penalised,
            4 => PeerStatus::Banned,
            _ => return None,
        })
    }
}

/// A known peer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerRecord {
    /// Service bits it advertised.
    pub services: u64,
    /// User agent it advertised.
    pub user_agent: String,
    /// Protocol version it advertised.
    pub version: i32,
    /// Unix time first seen.
    pub first_seen: u64,
    /// Unix time last seen (connected or heard of).
    pub last_seen: u64,
    /// Unix time of the last completed handshake.
    pub last_success: u64,
    /// Connection failures since the last success.
    pub failures: u32,
    /// Status.
    pub status: PeerStatus,
}

/// Per-peer totals that are not per command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerTotals {
    /// Malformed or unexpected messages.
    pub errors: u64,
    /// Last ping round trip in microseconds (0: none).
    pub rtt_us: u64,
    /// Connections made.
    pub connections: u64,
}

/// A ban on an IP or a subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRecord {
    /// Unix time it ends.
    pub until: u64,
    /// Unix time it was made.
    pub created: u64,
    /// Why.
    pub reason: String,
}

/// Encodes a socket address as a key: 16-byte IPv6 form, then the port big-endian.
pub fn addr_key(a: &SocketAddr) -> [u8; 18] {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut k = [0u8; 18];
    k[..16].copy_from_slice(&ip);
    k[16..].copy_from_slice(&a.port().to_be_bytes());
    k
}

/// Decodes [`addr_key`].
pub fn addr_from_key(k: &[u8]) -> Option<SocketAddr> {
    let k: &[u8; 18] = k.get(..18)?.try_into().ok()?;
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&k[..16]).ok()?);
    let ip = v6
        .to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6));
    Some(SocketAddr::new(ip, u16::from_be_bytes([k[16], k[17]])))
}

struct Cur<'a>(&'a [u8], &'static str);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt(format!("{} record too short", self.1)));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> StoreResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32(&mut self) -> StoreResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u8(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn string(&mut self) -> StoreResult<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("{} record: bad utf-8", self.1)))
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

impl PeerRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(48 + self.user_agent.len());
        b.put_u64_le(self.services);
        put_string(&mut b, &self.user_agent);
        b.put_i32_le(self.version);
        b.put_u64_le(self.first_seen);
        b.put_u64_le(self.last_seen);
        b.put_u64_le(self.last_success);
        b.put_u32_le(self.failures);
        b.put_u8(self.status as u8);
        b.freeze()
    }

    /// Reads stored bytes.
    pub fn decode(v: &[u8]) -> StoreResult<PeerRecord> {
        let mut c = Cur(v, "peer");
        let r = PeerRecord {
            services: c.u64()?,
            user_agent: c.string()?,
            version: c.u32()? as i32,
            first_seen: c.u64()?,
            last_seen: c.u64()?,
            last_success: c.u64()?,
            failures: c.u32()?,
            status: PeerStatus::from_u8(c.u8()?)
                .ok_or_else(|| StoreError::Corrupt("peer record: bad status".into()))?,
        };
        Ok(r)
    }
}

impl BanRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u64_le(self.until);
        b.put_u64_le(self.created);
        put_string(&mut b, &self.reason);
        b.freeze()
    }

    /// Reads stored bytes.
    pub fn decode(v: &[u8]) -> StoreResult<BanRecord> {
        let mut c = Cur(v, "ban");
        Ok(BanRecord {
            until: c.u64()?,
            created: c.u64()?,
            reason: c.string()?,
        })
    }
}

fn stats_key(a: &SocketAddr, c: Option<Command>) -> Vec<u8> {
    let mut k = addr_key(a).to_vec();
    k.extend_from_slice(c.as_ref().map(|c| &c.as_wire()[..]).unwrap_or(&[0u8; 12]));
    k
}

fn encode_counts(s: &CommandStats) -> Bytes {
    let mut b = BytesMut::with_capacity(32);
    b.put_u64_le(s.msgs_in);
    b.put_u64_le(s.bytes_in);
    b.put_u64_le(s.msgs_out);
    b.put_u64_le(s.bytes_out);
    b.freeze()
}

fn decode_counts(v: &[u8]) -> StoreResult<CommandStats> {
    let mut c = Cur(v, "stats");
    Ok(CommandStats {
        msgs_in: c.u64()?,
        bytes_in: c.u64()?,
        msgs_out: c.u64()?,
        bytes_out: c.u64()?,
    })
}

/// Stored statistics of one peer address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredStats {
    /// Totals not per command.
    pub totals: PeerTotals,
    /// Per command.
    pub by_command: Vec<(Command, CommandStats)>,
}

/// Adds a peer record write to `b`.
pub fn put_peer(b: &mut Batch, a: &SocketAddr, r: &PeerRecord) {
    b.put(Table::Peers, addr_key(a).to_vec(), r.encode());
}

/// Adds the writes of one address's statistics to `b`.
pub fn put_stats(b: &mut Batch, a: &SocketAddr, s: &StoredStats) {
    let mut t = BytesMut::with_capacity(24);
    t.put_u64_le(s.totals.errors);
    t.put_u64_le(s.totals.rtt_us);
    t.put_u64_le(s.totals.connections);
    b.put(Table::PeerStats, stats_key(a, None), t.freeze());
    for (c, st) in &s.by_command {
        b.put(Table::PeerStats, stats_key(a, Some(*c)), encode_counts(st));
    }
}

/// Every stored peer.
pub fn load_peers(s: &dyn Store) -> StoreResult<Vec<(SocketAddr, PeerRecord)>> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        Table::Peers,
        &[],
        &mut |k, v| match (addr_from_key(k), PeerRecord::decode(v)) {
            (Some(a), Ok(r)) => {
                out.push((a, r));
                true
            }
            (_, Err(e)) => {
                err = Some(e);
                false
            }
            (None, _) => {
                err = Some(StoreError::Corrupt("peer key".into()));
                false
            }
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// Every stored statistic, by address.
pub fn load_stats(s: &dyn Store) -> StoreResult<Vec<(SocketAddr, StoredStats)>> {
    let mut out: Vec<(SocketAddr, StoredStats)> = Vec::new();
    let mut err = None;
    s.scan(Table::PeerStats, &[], &mut |k, v| {
        let (Some(a), Some(cmd)) = (addr_from_key(k), k.get(18..30)) else {
            err = Some(StoreError::Corrupt("stats key".into()));
            return false;
        };
        if out.last().is_none_or(|(last, _)| *last != a) {
            out.push((a, StoredStats::default()));
        }
        let entry = &mut out.last_mut().expect("pushed above").1;
        let r = if cmd == [0u8; 12] {
            let mut c = Cur(v, "stats totals");
            (|| -> StoreResult<()> {
                entry.totals = PeerTotals {
                    errors: c.u64()?,
                    rtt_us: c.u64()?,
                    connections: c.u64()?,
                };
                Ok(())
            })()
        } else {
            match Command::from_wire(cmd.try_into().expect("12 bytes")) {
                Some(c) => decode_counts(v).map(|st| entry.by_command.push((c, st))),
                None => Err(StoreError::Corrupt("stats command".into())),
            }
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    err.map_or(Ok(out), Err)
}

/// Encodes a ban key: the 16-byte network address (IPv4 mapped) and the prefix length over the
/// 128-bit form.
pub fn ban_key(net: &IpAddr, prefix: u8) -> [u8; 17] {
    let (ip, p) = match net {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), prefix.min(32) + 96),
        IpAddr::V6(v6) => (v6.octets(), prefix.min(128)),
    };
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(&ip);
    k[16] = p;
    k
}

/// Decodes [`ban_key`] back to the address and its own prefix length.
pub fn ban_from_key(k: &[u8]) -> Option<(IpAddr, u8)> {
    let ip: [u8; 16] = k.get(..16)?.try_into().ok()?;
    let p = *k.get(16)?;
    let v6 = Ipv6Addr::from(ip);
    match v6.to_ipv4_mapped() {
        Some(v4) if p >= 96 => Some((IpAddr::V4(v4), p - 96)),
        _ => Some((IpAddr::V6(v6), p)),
    }
}

/// Every stored ban.
pub fn load_bans(s: &dyn Store) -> StoreResult<Vec<((IpAddr, u8), BanRecord)>> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        Table::Bans,
        &[],
        &mut |k, v| match (ban_from_key(k), BanRecord::decode(v)) {
            (Some(n), Ok(r)) => {
                out.push((n, r));
                true
            }
            (_, Err(e)) => {
                err = Some(e);
                false
            }
            (None, _) => {
                err = Some(StoreError::Corrupt("ban key".into()));
                false
            }
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// Adds a block write.
pub fn put_block(b: &mut Batch, hash: &Hash256, raw: Bytes) {
    b.put(Table::Blocks, hash.0.to_vec(), raw);
}

/// Adds a block kept in a file of its own (see [`super::files`]): the table holds where.
pub fn put_block_file(b: &mut Batch, hash: &Hash256, r: &super::files::BlockFileRef) {
    b.put(Table::Blocks, hash.0.to_vec(), r.encode());
}

/// A stored block: its bytes in the table, or the file that holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredBlock<'a> {
    /// The raw block.
    Inline(&'a [u8]),
    /// In a block file.
    File(super::files::BlockFileRef),
}

impl<'a> StoredBlock<'a> {
    /// What a `blocks` table value holds.
    pub fn parse(v: &'a [u8]) -> StoredBlock<'a> {
        match super::files::BlockFileRef::decode(v) {
            Some(r) => StoredBlock::File(r),
            None => StoredBlock::Inline(v),
        }
    }
}

/// Reads a block in place (zero-copy in LMDB): `f` sees the raw bytes while the read lasts.
pub fn with_block<R>(
    s: &dyn Store,
    hash: &Hash256,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> StoreResult<R> {
    let mut f = Some(f);
    let mut out = None;
    s.with_value(Table::Blocks, &hash.0, &mut |v| {
        out = f.take().map(|f| f(v))
    })?;
    Ok(out.expect("with_value calls back exactly once"))
}

/// Whether a block is stored.
pub fn has_block(s: &dyn Store, hash: &Hash256) -> StoreResult<bool> {
    with_block(s, hash, |v| v.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for a in ["127.0.0.1:18444", "[::1]:8333", "10.1.2.3:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(addr_from_key(&addr_key(&a)), Some(a));
        }
        let n: IpAddr = "127.0.1.0".parse().unwrap();
        assert_eq!(ban_from_key(&ban_key(&n, 24)), Some((n, 24)));
        let n: IpAddr = "fd00::".parse().unwrap();
        assert_eq!(ban_from_key(&ban_key(&n, 64)), Some((n, 64)));
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let r = PeerRecord {
            services: 9,
            user_agent: "/x/".into(),
            version: 70015,
            first_seen: 1,
            last_seen: 2,
            last_success: 3,
            failures: 4,
            status: PeerStatus::Alive,
        };
        assert_eq!(PeerRecord::decode(&r.encode()).unwrap(), r);
        assert!(PeerRecord::decode(&r.encode()[..10]).is_err());
        let b = BanRecord {
            until: 5,
            created: 4,
            reason: "spam".into(),
        };
        assert_eq!(BanRecord::decode(&b.encode()).unwrap(), b);
    }
}
