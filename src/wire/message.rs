//! Every message of the protocol as BSV nodes speak it, with its payload encoding. Commands the
//! codec does not know are kept as raw bytes so embedders can run their own message types.

use super::block::{Block, BlockHeader};
use super::codec::{
    compact_size_len, put_compact_size, Decode, DecodeError, DecodeErrorKind, DecodeResult, Encode,
    Reader,
};
use super::hash::Hash256;
use super::tx::Transaction;
use super::types::{invalid, read_bool, Command, Inventory, NetAddr, TimedNetAddr};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Most addresses in one `addr` message.
pub const MAX_ADDR: u64 = 1_000;
/// Most entries in `inv`, `getdata` and `notfound` for a peer that sent no `protoconf`. Not
/// enforced when decoding: protoconf lifts it (bitcoin-sv-specs p2p/protoconf.md: 58,254 entries
/// in a 2 MiB payload), so the frame size limit and the bytes present bound the count.
pub const MAX_INV: u64 = 50_000;
/// Most headers in one `headers` message.
pub const MAX_HEADERS: u64 = 2_000;
/// Most hashes in a block locator that bsn accepts.
pub const MAX_LOCATOR: u64 = 500;
/// Longest user agent in `version`.
pub const MAX_USER_AGENT: u64 = 256;
/// Longest command name carried in `reject`.
pub const MAX_REJECT_COMMAND: u64 = 12;
/// Longest reason in `reject`.
pub const MAX_REJECT_REASON: u64 = 111;
/// Longest stream-policy list in `protoconf`.
pub const MAX_STREAM_POLICIES: u64 = 1_024;

/// The `version` message: the first thing each side sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMessage {
    /// Protocol version (BSV nodes send 70016).
    pub version: i32,
    /// Services of the sender.
    pub services: u64,
    /// Sender's clock, unix seconds.
    pub timestamp: i64,
    /// The address of the receiver as the sender sees it.
    pub receiver: NetAddr,
    /// The sender's own address.
    pub sender: NetAddr,
    /// Random nonce, to detect connections to self.
    pub nonce: u64,
    /// User agent, e.g. `/bsn:0.1.0/`.
    pub user_agent: String,
    /// Height of the sender's best chain.
    pub start_height: i32,
    /// BIP37 relay flag; absent in old versions.
    pub relay: Option<bool>,
    /// Fields after `relay` (BSV sends an association ID), kept as bytes. Empty unless `relay` is set.
    pub extra: Bytes,
}

impl VersionMessage {
    /// The association ID after `relay` (BSV multistreams): `Ok(None)` when absent or null (the
    /// peer has streams off or does not know them), an error when malformed.
    pub fn association_id(&self) -> Result<Option<crate::wire::bsv::AssociationId>, &'static str> {
        if self.extra.is_empty() {
            return Ok(None);
        }
        let mut r = Reader::new(self.extra.clone());
        let b = r
            .var_bytes("association ID bytes", crate::wire::bsv::MAX_ASSOCIATION_ID)
            .map_err(|_| "badly formatted association ID")?;
        crate::wire::bsv::AssociationId::from_bytes(&b)
    }

    /// Puts an association ID after `relay` (which it sets if unset), or a null one.
    pub fn set_association_id(&mut self, id: Option<crate::wire::bsv::AssociationId>) {
        let mut b = BytesMut::new();
        let raw = id.map(|i| i.to_bytes()).unwrap_or_default();
        super::codec::put_var_bytes(&mut b, &raw);
        self.relay.get_or_insert(true);
        self.extra = b.freeze();
    }
}

/// `getheaders` and `getblocks`: a block locator and a stop hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locator {
    /// Protocol version of the sender.
    pub version: u32,
    /// Known block hashes, newest first.
    pub hashes: Vec<Hash256>,
    /// Hash to stop at, or zero for "as many as allowed".
    pub stop: Hash256,
}

/// The `reject` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Command of the rejected message.
    pub message: String,
    /// Reject code (0x01 malformed, 0x10 invalid, 0x11 obsolete, 0x12 duplicate, 0x40 nonstandard,
    /// 0x41 dust, 0x42 insufficient fee, 0x43 checkpoint).
    pub code: u8,
    /// Human-readable reason.
    pub reason: String,
    /// Extra data, usually the 32-byte hash of the rejected block or transaction.
    pub data: Bytes,
}

/// BSV's `protoconf`: protocol limits the sender accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protoconf {
    /// Number of fields that follow (at least 1; 2 when stream policies are present).
    pub number_of_fields: u64,
    /// Largest payload (non-block messages) the sender accepts.
    pub max_recv_payload_length: u32,
    /// Comma-separated stream policies, present when `number_of_fields >= 2`.
    pub stream_policies: Option<String>,
    /// Fields this codec does not know (when `number_of_fields > 2`), kept as bytes.
    pub extra: Bytes,
}

impl Protoconf {
    /// The protoconf a BSV node sends: two fields, the limit and the stream policies.
    pub fn new(max_recv_payload_length: u32, stream_policies: &str) -> Protoconf {
        Protoconf {
            number_of_fields: 2,
            max_recv_payload_length,
            stream_policies: Some(stream_policies.to_string()),
            extra: Bytes::new(),
        }
    }
}

/// A protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `version`
    Version(VersionMessage),
    /// `verack`
    Verack,
    /// `ping` with a nonce
    Ping(u64),
    /// `pong` echoing the nonce
    Pong(u64),
    /// `addr`
    Addr(Vec<TimedNetAddr>),
    /// `getaddr`
    GetAddr,
    /// `inv`
    Inv(Vec<Inventory>),
    /// `getdata`
    GetData(Vec<Inventory>),
    /// `notfound`
    NotFound(Vec<Inventory>),
    /// `getheaders`
    GetHeaders(Locator),
    /// `getblocks`
    GetBlocks(Locator),
    /// `headers`
    Headers(Vec<BlockHeader>),
    /// `sendheaders`
    SendHeaders,
    /// `block`
    Block(Block),
    /// `tx`
    Tx(Transaction),
    /// `reject`
    Reject(Reject),
    /// `mempool`
    Mempool,
    /// `mempool` with the 8-byte age the SV node (1.2) may add: transactions no older than
    /// this many seconds
    MempoolAge(u64),
    /// `feefilter`: minimum fee rate in satoshis per 1000 bytes
    FeeFilter(i64),
    /// `sendcmpct` (BIP152; decoded, bsn does not use compact blocks)
    SendCmpct {
        /// Whether the sender wants high-bandwidth announcements.
        announce: bool,
        /// Compact block version.
        version: u64,
    },
    /// BSV `protoconf`
    Protoconf(Protoconf),
    /// BSV `authch`: an authentication challenge (needs no answer from a non-miner)
    AuthCh(crate::wire::bsv::AuthChallenge),
    /// BSV `gethdrsen`: `getheaders` answered with enriched headers
    GetHdrsEn(Locator),
    /// BSV `sendhdrsen`: announce new blocks with `hdrsen`
    SendHdrsEn,
    /// BSV `hdrsen`: enriched headers (at most 2,000)
    HdrsEn(Vec<crate::wire::bsv::EnrichedHeader>),
    /// BSV `authresp`: a miner's answer to `authch`
    AuthResp(crate::wire::bsv::AuthResponse),
    /// BSV `createstrm`: the first message of a connection joining an association
    CreateStream(crate::wire::bsv::CreateStream),
    /// BSV `streamack`: a `createstrm` accepted
    StreamAck(crate::wire::bsv::StreamAck),
    /// BSV `dsdetected`: a double spend across competing blocks
    DsDetected(crate::wire::bsv::DsDetected),
    /// BSV `revokemid`: a miner ID revocation
    RevokeMid(crate::wire::bsv::RevokeMid),
    /// BSV `datareftx`: a transaction with its merkle proof (answers inventory type 5)
    DataRefTx(crate::wire::bsv::DataRefTx),
    /// Any other command, payload untouched.
    Unknown {
        /// The command.
        command: Command,
        /// The payload.
        payload: Bytes,
    },
}

/// Command names.
pub mod commands {
    use super::Command;
    pub const VERSION: Command = Command::from_static("version");
    pub const VERACK: Command = Command::from_static("verack");
    pub const PING: Command = Command::from_static("ping");
    pub const PONG: Command = Command::from_static("pong");
    pub const ADDR: Command = Command::from_static("addr");
    pub const GETADDR: Command = Command::from_static("getaddr");
    pub const INV: Command = Command::from_static("inv");
    pub const GETDATA: Command = Command::from_static("getdata");
    pub const NOTFOUND: Command = Command::from_static("notfound");
    pub const GETHEADERS: Command = Command::from_static("getheaders");
    pub const GETBLOCKS: Command = Command::from_static("getblocks");
    pub const HEADERS: Command = Command::from_static("headers");
    pub const SENDHEADERS: Command = Command::from_static("sendheaders");
    pub const BLOCK: Command = Command::from_static("block");
    pub const TX: Command = Command::from_static("tx");
    pub const REJECT: Command = Command::from_static("reject");
    pub const MEMPOOL: Command = Command::from_static("mempool");
    pub const FEEFILTER: Command = Command::from_static("feefilter");
    pub const SENDCMPCT: Command = Command::from_static("sendcmpct");
    pub const CMPCTBLOCK: Command = Command::from_static("cmpctblock");
    pub const PROTOCONF: Command = Command::from_static("protoconf");
    pub const EXTMSG: Command = Command::from_static("extmsg");
    pub const BLOCKTXN: Command = Command::from_static("blocktxn");
    pub const HDRSEN: Command = Command::from_static("hdrsen");
    pub const DATAREFTX: Command = Command::from_static("datareftx");
    pub const AUTHCH: Command = Command::from_static("authch");
    pub const GETHDRSEN: Command = Command::from_static("gethdrsen");
    pub const SENDHDRSEN: Command = Command::from_static("sendhdrsen");
    pub const AUTHRESP: Command = Command::from_static("authresp");
    pub const CREATESTRM: Command = Command::from_static("createstrm");
    pub const STREAMACK: Command = Command::from_static("streamack");
    pub const DSDETECTED: Command = Command::from_static("dsdetected");
    pub const REVOKEMID: Command = Command::from_static("revokemid");
    /// Where counters put every command not listed here (a peer can send any name: counting
    /// each apart would let it grow them without bound).
    pub const OTHER: Command = Command::from_static("other");

    /// Every command the engine knows.
    pub const ALL: [Command; 33] = [
        VERSION,
        VERACK,
        PING,
        PONG,
        ADDR,
        GETADDR,
        INV,
        GETDATA,
        NOTFOUND,
        GETHEADERS,
        GETBLOCKS,
        HEADERS,
        SENDHEADERS,
        BLOCK,
        TX,
        REJECT,
        MEMPOOL,
        FEEFILTER,
        SENDCMPCT,
        CMPCTBLOCK,
        PROTOCONF,
        EXTMSG,
        BLOCKTXN,
        HDRSEN,
        DATAREFTX,
        AUTHCH,
        GETHDRSEN,
        SENDHDRSEN,
        AUTHRESP,
        CREATESTRM,
        STREAMACK,
        DSDETECTED,
        REVOKEMID,
    ];

    /// Whether the engine knows `c` (it is one of [`ALL`]).
    pub fn is_known(c: &Command) -> bool {
        ALL.contains(c)
    }
}

/// A payload that did not decode: which command, at which offset, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadError {
    /// The message's command.
    pub command: Command,
    /// Offset in the payload and what went wrong.
    pub error: DecodeError,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed payload of command {} at offset {}: {}",
            self.command, self.error.offset, self.error.kind
        )
    }
}

impl std::error::Error for PayloadError {}

fn put_list<T: Encode>(buf: &mut BytesMut, items: &[T]) {
    put_compact_size(buf, items.len() as u64);
    for i in items {
        i.encode(buf);
    }
}

fn list_len<T: Encode>(items: &[T]) -> usize {
    compact_size_len(items.len() as u64) + items.iter().map(Encode::encoded_len).sum::<usize>()
}

fn read_list<T: Decode>(
    r: &mut Reader,
    what: &'static str,
    max: u64,
    item_len: usize,
) -> DecodeResult<Vec<T>> {
    let n = r.count(what, max, item_len)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(T::decode(r)?);
    }
    Ok(v)
}

fn put_str(buf: &mut BytesMut, s: &str) {
    put_compact_size(buf, s.len() as u64);
    buf.put_slice(s.as_bytes());
}

fn str_len(s: &str) -> usize {
    compact_size_len(s.len() as u64) + s.len()
}

impl Locator {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.version);
        put_compact_size(buf, self.hashes.len() as u64);
        for h in &self.hashes {
            buf.put_slice(&h.0);
        }
        buf.put_slice(&self.stop.0);
    }
    fn len(&self) -> usize {
        4 + compact_size_len(self.hashes.len() as u64) + 32 * self.hashes.len() + 32
    }
    fn decode(r: &mut Reader) -> DecodeResult<Locator> {
        let version = r.u32_le()?;
        let n = r.count("locator hashes", MAX_LOCATOR, 32)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            hashes.push(Hash256(r.array()?));
        }
        Ok(Locator {
            version,
            hashes,
            stop: Hash256(r.array()?),
        })
    }
}

impl Message {
    /// The command this message is sent under.
    pub fn command(&self) -> Command {
        use commands::*;
        match self {
            Message::Version(_) => VERSION,
            Message::Verack => VERACK,
            Message::Ping(_) => PING,
            Message::Pong(_) => PONG,
            Message::Addr(_) => ADDR,
            Message::GetAddr => GETADDR,
            Message::Inv(_) => INV,
            Message::GetData(_) => GETDATA,
            Message::NotFound(_) => NOTFOUND,
            Message::GetHeaders(_) => GETHEADERS,
            Message::GetBlocks(_) => GETBLOCKS,
            Message::Headers(_) => HEADERS,
            Message::SendHeaders => SENDHEADERS,
            Message::Block(_) => BLOCK,
            Message::Tx(_) => TX,
            Message::Reject(_) => REJECT,
            Message::Mempool | Message::MempoolAge(_) => MEMPOOL,
            Message::FeeFilter(_) => FEEFILTER,
            Message::SendCmpct { .. } => SENDCMPCT,
            Message::Protoconf(_) => PROTOCONF,
            Message::AuthCh(_) => AUTHCH,
            Message::GetHdrsEn(_) => GETHDRSEN,
            Message::SendHdrsEn => SENDHDRSEN,
            Message::HdrsEn(_) => HDRSEN,
            Message::AuthResp(_) => AUTHRESP,
            Message::CreateStream(_) => CREATESTRM,
            Message::StreamAck(_) => STREAMACK,
            Message::DsDetected(_) => DSDETECTED,
            Message::RevokeMid(_) => REVOKEMID,
            Message::DataRefTx(_) => DATAREFTX,
            Message::Unknown { command, .. } => *command,
        }
    }

    /// Appends the payload (no header) to `buf`.
    pub fn encode_payload(&self, buf: &mut BytesMut) {
        match self {
            Message::Version(v) => {
                buf.put_i32_le(v.version);
                buf.put_u64_le(v.services);
                buf.put_i64_le(v.timestamp);
                v.receiver.encode(buf);
                v.sender.encode(buf);
                buf.put_u64_le(v.nonce);
                put_str(buf, &v.user_agent);
                buf.put_i32_le(v.start_height);
                if let Some(relay) = v.relay {
                    buf.put_u8(relay as u8);
                    buf.put_slice(&v.extra);
                }
            }
            Message::Verack
            | Message::GetAddr
            | Message::SendHeaders
            | Message::Mempool
            | Message::SendHdrsEn => {}
            Message::AuthCh(a) => a.encode(buf),
            Message::AuthResp(a) => a.encode(buf),
            Message::CreateStream(c) => c.encode(buf),
            Message::StreamAck(a) => a.encode(buf),
            Message::DsDetected(d) => d.encode(buf),
            Message::RevokeMid(m) => m.encode(buf),
            Message::DataRefTx(d) => d.encode(buf),
            Message::GetHdrsEn(l) => l.encode(buf),
            Message::HdrsEn(h) => {
                put_compact_size(buf, h.len() as u64);
                for e in h {
                    e.encode(buf);
                }
            }
            Message::Ping(n) | Message::Pong(n) | Message::MempoolAge(n) => buf.put_u64_le(*n),
            Message::Addr(a) => put_list(buf, a),
            Message::Inv(i) | Message::GetData(i) | Message::NotFound(i) => put_list(buf, i),
            Message::GetHeaders(l) | Message::GetBlocks(l) => l.encode(buf),
            Message::Headers(h) => {
                put_compact_size(buf, h.len() as u64);
                for hdr in h {
                    hdr.encode(buf);
                    buf.put_u8(0);
                }
            }
            Message::Block(b) => b.encode(buf),
            Message::Tx(t) => t.encode(buf),
            Message::Reject(r) => {
                put_str(buf, &r.message);
                buf.put_u8(r.code);
                put_str(buf, &r.reason);
                buf.put_slice(&r.data);
            }
            Message::FeeFilter(f) => buf.put_i64_le(*f),
            Message::SendCmpct { announce, version } => {
                buf.put_u8(*announce as u8);
                buf.put_u64_le(*version);
            }
            Message::Protoconf(p) => {
                put_compact_size(buf, p.number_of_fields);
                buf.put_u32_le(p.max_recv_payload_length);
                if let Some(s) = &p.stream_policies {
                    put_str(buf, s);
                }
                buf.put_slice(&p.extra);
            }
            Message::Unknown { payload, .. } => buf.put_slice(payload),
        }
    }

    /// Exact length of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Version(v) => {
                4 + 8
                    + 8
                    + 26
                    + 26
                    + 8
                    + str_len(&v.user_agent)
                    + 4
                    + v.relay.map_or(0, |_| 1 + v.extra.len())
            }
            Message::Verack
            | Message::GetAddr
            | Message::SendHeaders
            | Message::Mempool
            | Message::SendHdrsEn => 0,
            Message::AuthCh(a) => a.len(),
            Message::AuthResp(a) => a.len(),
            Message::CreateStream(c) => c.len(),
            Message::StreamAck(a) => a.len(),
            Message::DsDetected(d) => d.len(),
            Message::RevokeMid(m) => m.len(),
            Message::DataRefTx(d) => d.len(),
            Message::GetHdrsEn(l) => l.len(),
            Message::HdrsEn(h) => {
                compact_size_len(h.len() as u64) + h.iter().map(|e| e.len()).sum::<usize>()
            }
            Message::Ping(_)
            | Message::Pong(_)
            | Message::FeeFilter(_)
            | Message::MempoolAge(_) => 8,
            Message::Addr(a) => list_len(a),
            Message::Inv(i) | Message::GetData(i) | Message::NotFound(i) => list_len(i),
            Message::GetHeaders(l) | Message::GetBlocks(l) => l.len(),
            Message::Headers(h) => compact_size_len(h.len() as u64) + 81 * h.len(),
            Message::Block(b) => b.encoded_len(),
            Message::Tx(t) => t.encoded_len(),
            Message::Reject(r) => str_len(&r.message) + 1 + str_len(&r.reason) + r.data.len(),
            Message::SendCmpct { .. } => 9,
            Message::Protoconf(p) => {
                compact_size_len(p.number_of_fields)
                    + 4
                    + p.stream_policies.as_deref().map_or(0, str_len)
                    + p.extra.len()
            }
            Message::Unknown { payload, .. } => payload.len(),
        }
    }

    /// The payload in a fresh buffer.
    pub fn payload(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.payload_len());
        self.encode_payload(&mut b);
        b.freeze()
    }

    /// Decodes the payload of `command`. Byte slices in the result share `payload`'s memory.
    /// Bytes after a known message are ignored, as the SV node ignores them (fields a newer
    /// version added); the message's `payload_len` says how many were read.
    pub fn decode(command: Command, payload: Bytes) -> Result<Message, PayloadError> {
        let mut r = Reader::new(payload);
        Message::decode_from(command, &mut r).map_err(|error| PayloadError { command, error })
    }

    fn decode_from(command: Command, r: &mut Reader) -> DecodeResult<Message> {
        use commands::*;
        let m = match command {
            VERSION => Message::Version(decode_version(r)?),
            VERACK => Message::Verack,
            PING => Message::Ping(r.u64_le()?),
            PONG => Message::Pong(r.u64_le()?),
            ADDR => Message::Addr(read_list(r, "addresses", MAX_ADDR, 30)?),
            GETADDR => Message::GetAddr,
            INV => Message::Inv(read_list(r, "inventory", u64::MAX, 36)?),
            GETDATA => Message::GetData(read_list(r, "inventory", u64::MAX, 36)?),
            NOTFOUND => Message::NotFound(read_list(r, "inventory", u64::MAX, 36)?),
            GETHEADERS => Message::GetHeaders(Locator::decode(r)?),
            GETBLOCKS => Message::GetBlocks(Locator::decode(r)?),
            HEADERS => {
                let n = r.count("headers", MAX_HEADERS, 81)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(BlockHeader::decode(r)?);
                    let at = r.offset();
                    if r.compact_size()? != 0 {
                        return Err(invalid(r, at, "transaction count in headers (must be 0)"));
                    }
                }
                Message::Headers(v)
            }
            SENDHEADERS => Message::SendHeaders,
            AUTHCH => Message::AuthCh(crate::wire::bsv::AuthChallenge::decode(r)?),
            AUTHRESP => Message::AuthResp(crate::wire::bsv::AuthResponse::decode(r)?),
            CREATESTRM => Message::CreateStream(crate::wire::bsv::CreateStream::decode(r)?),
            STREAMACK => Message::StreamAck(crate::wire::bsv::StreamAck::decode(r)?),
            DSDETECTED => Message::DsDetected(crate::wire::bsv::DsDetected::decode(r)?),
            REVOKEMID => Message::RevokeMid(crate::wire::bsv::RevokeMid::decode(r)?),
            DATAREFTX => Message::DataRefTx(crate::wire::bsv::DataRefTx::decode(r)?),
            GETHDRSEN => Message::GetHdrsEn(Locator::decode(r)?),
            SENDHDRSEN => Message::SendHdrsEn,
            HDRSEN => {
                // an enriched header is at least 80 + 1 + 1 + 1 + 1 bytes
                let n = r.count("enriched headers", MAX_HEADERS, 84)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(crate::wire::bsv::EnrichedHeader::decode(r)?);
                }
                Message::HdrsEn(v)
            }
            BLOCK => Message::Block(Block::decode(r)?),
            TX => Message::Tx(Transaction::decode(r)?),
            REJECT => Message::Reject(Reject {
                message: r.var_str("reject command bytes", MAX_REJECT_COMMAND)?,
                code: r.u8()?,
                reason: r.var_str("reject reason bytes", MAX_REJECT_REASON)?,
                data: r.take_rest(),
            }),
            MEMPOOL if r.remaining() >= 8 => Message::MempoolAge(r.u64_le()?),
            MEMPOOL => Message::Mempool,
            FEEFILTER => Message::FeeFilter(r.i64_le()?),
            SENDCMPCT => Message::SendCmpct {
                announce: read_bool(r)?,
                version: r.u64_le()?,
            },
            PROTOCONF => {
                let at = r.offset();
                let number_of_fields = r.compact_size()?;
                if number_of_fields == 0 {
                    return Err(invalid(r, at, "protoconf number of fields (0)"));
                }
                let max_recv_payload_length = r.u32_le()?;
                let stream_policies = if number_of_fields >= 2 {
                    Some(r.var_str("stream policy bytes", MAX_STREAM_POLICIES)?)
                } else {
                    None
                };
                Message::Protoconf(Protoconf {
                    number_of_fields,
                    max_recv_payload_length,
                    stream_policies,
                    extra: r.take_rest(),
                })
            }
            EXTMSG => return Err(r.err(DecodeErrorKind::Invalid("extmsg as a payload command"))),
            _ => Message::Unknown {
                command,
                payload: r.take_rest(),
            },
        };
        Ok(m)
    }
}

fn decode_version(r: &mut Reader) -> DecodeResult<VersionMessage> {
    let version = r.i32_le()?;
    let services = r.u64_le()?;
    let timestamp = r.i64_le()?;
    let receiver = NetAddr::decode(r)?;
    let sender = NetAddr::decode(r)?;
    let nonce = r.u64_le()?;
    let user_agent = r.var_str("user agent bytes", MAX_USER_AGENT)?;
    let start_height = r.i32_le()?;
    let relay = if r.remaining() > 0 {
        Some(read_bool(r)?)
    } else {
        None
    };
    let extra = r.take_rest();
    Ok(VersionMessage {
        version,
        services,
        timestamp,
        receiver,
        sender,
        nonce,
        user_agent,
        start_height,
        relay,
        extra,
    })
}
