//! Small wire types shared by several messages: commands, network addresses, inventory vectors.

use super::codec::{Decode, DecodeErrorKind, DecodeResult, Encode, Reader};
use super::hash::Hash256;
use bytes::{BufMut, BytesMut};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// A message command: up to 12 printable ASCII bytes, NUL-padded on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Command([u8; 12]);

impl Command {
    /// Builds a command from a name of 1 to 12 printable ASCII characters.
    pub fn new(name: &str) -> Option<Command> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 12 || !b.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return None;
        }
        let mut a = [0u8; 12];
        a[..b.len()].copy_from_slice(b);
        Some(Command(a))
    }

    /// Like [`Command::new`] for names known at compile time.
    pub const fn from_static(name: &'static str) -> Command {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 12,
            "command names are 1 to 12 bytes"
        );
        let mut a = [0u8; 12];
        let mut i = 0;
        while i < b.len() {
            a[i] = b[i];
            i += 1;
        }
        Command(a)
    }

    /// Validates the 12 bytes of a header: printable ASCII, then only NUL padding.
    pub fn from_wire(raw: [u8; 12]) -> Option<Command> {
        let len = raw.iter().position(|&c| c == 0).unwrap_or(12);
        if len == 0
            || raw[len..].iter().any(|&c| c != 0)
            || !raw[..len].iter().all(|c| (0x21..=0x7e).contains(c))
        {
            return None;
        }
        Some(Command(raw))
    }

    /// The 12 bytes as they go on the wire.
    pub fn as_wire(&self) -> &[u8; 12] {
        &self.0
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&c| c == 0).unwrap_or(12);
        std::str::from_utf8(&self.0[..len]).expect("validated printable ASCII")
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({:?})", self.as_str())
    }
}

/// Service bit: the peer serves the full chain.
pub const NODE_NETWORK: u64 = 1;
/// Service bit: the peer serves a limited recent window of blocks (BIP159).
pub const NODE_NETWORK_LIMITED: u64 = 1 << 10;

/// A network address without a timestamp (as in `version`): services, IPv6 (or IPv4-mapped), port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetAddr {
    /// Service bits.
    pub services: u64,
    /// Address in IPv6 form; IPv4 addresses are IPv4-mapped.
    pub ip: [u8; 16],
    /// Port (big-endian on the wire).
    pub port: u16,
}

impl NetAddr {
    /// From a socket address and service bits.
    pub fn new(addr: SocketAddr, services: u64) -> NetAddr {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        NetAddr {
            services,
            ip,
            port: addr.port(),
        }
    }

    /// The socket address (IPv4-mapped addresses come back as IPv4).
    pub fn socket_addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, self.port)
    }
}

impl Encode for NetAddr {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.services);
        buf.put_slice(&self.ip);
        buf.put_u16(self.port);
    }
    fn encoded_len(&self) -> usize {
        26
    }
}

impl Decode for NetAddr {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        Ok(NetAddr {
            services: r.u64_le()?,
            ip: r.array()?,
            port: r.u16_be()?,
        })
    }
}

/// A network address with the time it was last seen (as in `addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimedNetAddr {
    /// Unix time last seen.
    pub time: u32,
    /// The address.
    pub addr: NetAddr,
}

impl Encode for TimedNetAddr {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.time);
        self.addr.encode(buf);
    }
    fn encoded_len(&self) -> usize {
        30
    }
}

impl Decode for TimedNetAddr {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        Ok(TimedNetAddr {
            time: r.u32_le()?,
            addr: NetAddr::decode(r)?,
        })
    }
}

/// The type of an inventory entry. Unknown values are kept, not refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvType(pub u32);

impl InvType {
    /// Error / ignore.
    pub const ERROR: InvType = InvType(0);
    /// A transaction.
    pub const TX: InvType = InvType(1);
    /// A block.
    pub const BLOCK: InvType = InvType(2);
    /// A merkle block (BIP37).
    pub const FILTERED_BLOCK: InvType = InvType(3);
    /// A compact block (BIP152).
    pub const CMPCT_BLOCK: InvType = InvType(4);
    /// A data-reference transaction (BSV miner ID: answered with `datareftx`).
    pub const DATAREF_TX: InvType = InvType(5);
    /// A transaction with witness (BTC peers only).
    pub const WITNESS_TX: InvType = InvType(0x4000_0001);
    /// A block with witness (BTC peers only).
    pub const WITNESS_BLOCK: InvType = InvType(0x4000_0002);

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match *self {
            InvType::ERROR => "error",
            InvType::TX => "tx",
            InvType::BLOCK => "block",
            InvType::FILTERED_BLOCK => "filtered_block",
            InvType::CMPCT_BLOCK => "cmpct_block",
            InvType::DATAREF_TX => "dataref_tx",
            InvType::WITNESS_TX => "witness_tx",
            InvType::WITNESS_BLOCK => "witness_block",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for InvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// One inventory vector: a type and a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inventory {
    /// What the hash names.
    pub kind: InvType,
    /// The hash.
    pub hash: Hash256,
}

impl Encode for Inventory {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.kind.0);
        buf.put_slice(&self.hash.0);
    }
    fn encoded_len(&self) -> usize {
        36
    }
}

impl Decode for Inventory {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        Ok(Inventory {
            kind: InvType(r.u32_le()?),
            hash: Hash256(r.array()?),
        })
    }
}

/// A decoded `bool` byte: any non-zero value is true, as in the reference node.
pub(crate) fn read_bool(r: &mut Reader) -> DecodeResult<bool> {
    Ok(r.u8()? != 0)
}

/// Refuses a value the protocol does not allow, at the offset where it started.
pub(crate) fn invalid(r: &Reader, at: usize, what: &'static str) -> super::codec::DecodeError {
    r.err_at(at, DecodeErrorKind::Invalid(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_validation() {
        assert_eq!(Command::new("version").unwrap().as_str(), "version");
        assert!(Command::new("").is_none());
        assert!(Command::new("thirteen-char").is_none());
        assert!(Command::new("a b").is_none());
        let mut raw = *Command::new("ping").unwrap().as_wire();
        assert!(Command::from_wire(raw).is_some());
        raw[6] = b'x'; // non-NUL after NUL padding
        assert!(Command::from_wire(raw).is_none());
        assert!(Command::from_wire([0; 12]).is_none());
    }

    #[test]
    fn netaddr_v4_mapped() {
        let a: SocketAddr = "127.0.0.1:18444".parse().unwrap();
        let n = NetAddr::new(a, NODE_NETWORK);
        assert_eq!(n.socket_addr(), a);
        let b = n.to_bytes();
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(&b[24..], &[0x48, 0x0c]);
    }
}
