//! Message framing: the 24-byte header (magic, command, length, checksum), BSV's extended header
//! for payloads of 4 GiB and more, the encoder, and a streaming decoder fed arbitrary chunks.
//!
//! The decoder checks the magic and the announced length against the limit *before* it buffers a
//! payload, then verifies the checksum. Payloads are split off the read buffer, never copied.

use super::hash::checksum;
use super::message::{commands, Message, PayloadError};
use super::types::Command;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Length of the standard header.
pub const HEADER_LEN: usize = 24;
/// Length of the extended header (standard header + 12-byte command + 8-byte length).
pub const EXT_HEADER_LEN: usize = 44;
/// The length field value that marks an extended message.
pub const EXT_LENGTH_MARK: u32 = 0xffff_ffff;
/// BSV's default limit for non-block payloads (`maxprotocolrecvpayloadlength`): 2 MiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 2 * 1024 * 1024;
/// Limit for the `protoconf` payload itself.
pub const MAX_PROTOCONF_PAYLOAD: u64 = 1024 * 1024;
/// Default limit for block payloads: 4 GiB (BSV peers send larger only as `extmsg`).
pub const DEFAULT_MAX_BLOCK_PAYLOAD: u64 = 4 * 1024 * 1024 * 1024;
/// The SV node's consensus limit on a transaction (1 GB); its relay policy default is 10 MB.
pub const DEFAULT_MAX_TX_PAYLOAD: u64 = 1_000_000_000;

/// A network magic: the first four bytes of every message, in wire order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Magic(pub [u8; 4]);

impl fmt::Display for Magic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::hash::encode_hex(&self.0))
    }
}

impl fmt::Debug for Magic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Magic({self})")
    }
}

impl std::str::FromStr for Magic {
    type Err = String;
    fn from_str(s: &str) -> Result<Magic, String> {
        let b = super::hash::decode_hex(s.strip_prefix("0x").unwrap_or(s))
            .filter(|b| b.len() == 4)
            .ok_or_else(|| format!("magic must be 8 hex digits, got {s:?}"))?;
        Ok(Magic(b.try_into().expect("length checked")))
    }
}

/// Size limits the decoder enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload for messages other than blocks and protoconf.
    pub max_payload: u64,
    /// Largest payload of `block`, `cmpctblock`, `blocktxn` and `hdrsen`.
    pub max_block_payload: u64,
    /// Largest payload of `tx` and `datareftx` (like blocks, not held to the protoconf limit).
    pub max_tx_payload: u64,
    /// Whether `extmsg` frames are accepted (peers of protocol 70016 and later).
    pub allow_extended: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_block_payload: DEFAULT_MAX_BLOCK_PAYLOAD,
            max_tx_payload: DEFAULT_MAX_TX_PAYLOAD,
            allow_extended: true,
        }
    }
}

impl Limits {
    /// The limit that applies to `command` (the SV node's exemptions from the protoconf limit:
    /// blocks and their parts by the block size, transactions by the transaction size).
    pub fn limit_for(&self, command: Command) -> u64 {
        match command {
            commands::BLOCK | commands::CMPCTBLOCK | commands::BLOCKTXN | commands::HDRSEN => {
                self.max_block_payload
            }
            commands::TX | commands::DATAREFTX => self.max_tx_payload,
            commands::PROTOCONF => MAX_PROTOCONF_PAYLOAD,
            _ => self.max_payload,
        }
    }
}

/// A framing failure. [`FrameError::is_fatal`] says whether the stream can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The magic is not the network's: a peer of another network, or a desynchronised stream.
    WrongMagic {
        offset: u64,
        expected: Magic,
        got: Magic,
    },
    /// The command field is not printable ASCII followed by NUL padding.
    BadCommand { offset: u64, raw: [u8; 12] },
    /// The announced payload is larger than the limit for its command.
    Oversize {
        offset: u64,
        command: Command,
        length: u64,
        limit: u64,
    },
    /// The payload does not match its checksum (the frame was skipped; the stream can go on).
    BadChecksum {
        offset: u64,
        command: Command,
        expected: [u8; 4],
        got: [u8; 4],
    },
    /// An `extmsg` header that is not well formed, or one not allowed on this stream.
    BadExtended { offset: u64, reason: &'static str },
    /// A fatal error happened earlier; the decoder accepts nothing more.
    Poisoned,
}

impl FrameError {
    /// Whether the stream is unusable after this error (everything but a bad checksum).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::BadChecksum { .. })
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::WrongMagic { offset, expected, got } => {
                write!(f, "wrong network magic {got} (expected {expected}) at offset {offset}")
            }
            FrameError::BadCommand { offset, raw } => {
                write!(f, "invalid command bytes {} at offset {offset}", super::hash::encode_hex(raw))
            }
            FrameError::Oversize { offset, command, length, limit } => {
                write!(f, "{command} payload of {length} bytes exceeds the limit of {limit} at offset {offset}")
            }
            FrameError::BadChecksum { offset, command, expected, got } => write!(
                f,
                "bad checksum for {command} at offset {offset}: header says {}, payload hashes to {}",
                super::hash::encode_hex(expected),
                super::hash::encode_hex(got)
            ),
            FrameError::BadExtended { offset, reason } => write!(f, "bad extended message at offset {offset}: {reason}"),
            FrameError::Poisoned => f.write_str("stream already failed"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A wire error: framing or payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The frame itself was bad.
    Frame(FrameError),
    /// The frame was fine, its payload did not decode (at `frame_offset` in the stream).
    Payload {
        frame_offset: u64,
        error: PayloadError,
    },
}

impl WireError {
    /// Whether the stream is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        match self {
            WireError::Frame(f) => f.is_fatal(),
            WireError::Payload { .. } => false,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Frame(e) => e.fmt(f),
            WireError::Payload {
                frame_offset,
                error,
            } => write!(f, "{error} (frame at offset {frame_offset})"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> Self {
        WireError::Frame(e)
    }
}

/// One whole frame: command and payload (a slice of the read buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The command (for an `extmsg`, the extended command it carries).
    pub command: Command,
    /// The payload.
    pub payload: Bytes,
    /// Whether it came in the extended format.
    pub extended: bool,
    /// Offset of the frame's first byte in the stream.
    pub offset: u64,
}

impl Frame {
    /// Decodes the payload into a [`Message`].
    pub fn message(&self) -> Result<Message, WireError> {
        Message::decode(self.command, self.payload.clone()).map_err(|error| WireError::Payload {
            frame_offset: self.offset,
            error,
        })
    }
}

/// Writes a standard 24-byte header for `payload`.
pub fn header(magic: Magic, command: Command, payload: &[u8]) -> [u8; HEADER_LEN] {
    let len = u32::try_from(payload.len()).unwrap_or(EXT_LENGTH_MARK);
    header_with_checksum(magic, command, len, checksum(payload))
}

/// A standard header for a payload of `len` bytes whose checksum is known (a block served from
/// its file, checksummed when it arrived).
pub fn header_with_checksum(
    magic: Magic,
    command: Command,
    len: u32,
    checksum: [u8; 4],
) -> [u8; HEADER_LEN] {
    assert!(
        len < EXT_LENGTH_MARK,
        "payloads of 4 GiB and more go in extended frames"
    );
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&magic.0);
    h[4..16].copy_from_slice(command.as_wire());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    h[20..24].copy_from_slice(&checksum);
    h
}

/// Writes a 44-byte extended (`extmsg`) header for a payload of `len` bytes.
pub fn extended_header(magic: Magic, command: Command, len: u64) -> [u8; EXT_HEADER_LEN] {
    let mut h = [0u8; EXT_HEADER_LEN];
    h[..4].copy_from_slice(&magic.0);
    h[4..16].copy_from_slice(commands::EXTMSG.as_wire());
    h[16..20].copy_from_slice(&EXT_LENGTH_MARK.to_le_bytes());
    // checksum (20..24) stays zero: extended messages are not checksummed
    h[24..36].copy_from_slice(command.as_wire());
    h[36..44].copy_from_slice(&len.to_le_bytes());
    h
}

/// Payloads at least this big are sent from their own buffer, not copied into a frame.
pub const ZERO_COPY_MIN: usize = 64 * 1024;

/// For a message whose payload is already a buffer of its own (a block or transaction as it
/// came, a stored block) and at least [`ZERO_COPY_MIN`] bytes: its frame header and that
/// buffer, so the frame goes out without copying the payload.
pub fn frame_parts(magic: Magic, msg: &Message) -> Option<(Bytes, Bytes)> {
    let payload = match msg {
        Message::Unknown { payload, .. } => payload,
        Message::Block(b) => b.raw(),
        Message::Tx(t) => t.raw(),
        _ => return None,
    };
    if payload.len() < ZERO_COPY_MIN {
        return None;
    }
    let payload = payload.clone();
    let h = if payload.len() as u64 >= EXT_LENGTH_MARK as u64 {
        Bytes::copy_from_slice(&extended_header(magic, msg.command(), payload.len() as u64))
    } else {
        Bytes::copy_from_slice(&header(magic, msg.command(), &payload))
    };
    Some((h, payload))
}

/// Appends a whole frame for `msg` to `buf`: header then payload, encoded in place. Payloads of
/// 4 GiB and more get the extended header.
pub fn encode_message(buf: &mut BytesMut, magic: Magic, msg: &Message) {
    let len = msg.payload_len();
    if len as u64 >= EXT_LENGTH_MARK as u64 {
        return encode_extended_message(buf, magic, msg);
    }
    buf.reserve(HEADER_LEN + len);
    let start = buf.len();
    buf.put_slice(&[0u8; HEADER_LEN]);
    msg.encode_payload(buf);
    debug_assert_eq!(
        buf.len() - start - HEADER_LEN,
        len,
        "payload_len agrees with encode_payload"
    );
    let sum = checksum(&buf[start + HEADER_LEN..]);
    let h = &mut buf[start..start + HEADER_LEN];
    h[..4].copy_from_slice(&magic.0);
    h[4..16].copy_from_slice(msg.command().as_wire());
    h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
    h[20..24].copy_from_slice(&sum);
}

/// Appends `msg` in the extended format whatever its size (for peers of protocol 70016+).
pub fn encode_extended_message(buf: &mut BytesMut, magic: Magic, msg: &Message) {
    let len = msg.payload_len();
    buf.reserve(EXT_HEADER_LEN + len);
    buf.put_slice(&extended_header(magic, msg.command(), len as u64));
    msg.encode_payload(buf);
}

/// The frame for `msg` in a fresh buffer.
pub fn message_to_bytes(magic: Magic, msg: &Message) -> Bytes {
    let mut b = BytesMut::new();
    encode_message(&mut b, magic, msg);
    b.freeze()
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    command: Command,
    length: usize,
    checksum: Option<[u8; 4]>,
    offset: u64,
}

/// Streaming frame decoder: feed it bytes in any chunking, take whole frames out.
///
/// Read sockets straight into [`FrameDecoder::buffer_mut`] (no intermediate copy), or use
/// [`FrameDecoder::push`]. Then call [`FrameDecoder::next_frame`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    magic: Magic,
    limits: Limits,
    buf: BytesMut,
    pending: Option<Pending>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    poisoned: bool,
    /// Block payloads at least this big are handed out in pieces ([`FrameDecoder::next_item`]).
    body_threshold: u64,
    /// Bytes of such a payload still to hand out.
    body_left: u64,
}

/// The start of a payload handed out in pieces: take them with [`FrameDecoder::take_body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyStart {
    /// The command.
    pub command: Command,
    /// The payload's length.
    pub length: u64,
    /// The checksum to check it against (none for an `extmsg`).
    pub checksum: Option<[u8; 4]>,
    /// Offset of the frame's first byte in the stream.
    pub offset: u64,
}

/// What [`FrameDecoder::next_item`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole frame.
    Frame(Frame),
    /// A block payload over the body threshold starts: its bytes come from
    /// [`FrameDecoder::take_body`].
    Body(BodyStart),
}

impl FrameDecoder {
    /// A decoder for `magic` with default limits.
    pub fn new(magic: Magic) -> FrameDecoder {
        FrameDecoder::with_limits(magic, Limits::default())
    }

    /// A decoder for `magic` with `limits`.
    pub fn with_limits(magic: Magic, limits: Limits) -> FrameDecoder {
        FrameDecoder {
            magic,
            limits,
            buf: BytesMut::new(),
            pending: None,
            offset: 0,
            poisoned: false,
            body_threshold: u64::MAX,
            body_left: 0,
        }
    }

    /// Hands out `block` payloads of at least `threshold` bytes in pieces instead of whole
    /// (`u64::MAX`: never).
    pub fn set_body_threshold(&mut self, threshold: u64) {
        self.body_threshold = threshold;
    }

    /// Bytes of a payload in pieces still to come.
    pub fn body_left(&self) -> u64 {
        self.body_left
    }

    /// The next piece of a payload in pieces (what is buffered of it), `None` when nothing is.
    pub fn take_body(&mut self) -> Option<Bytes> {
        let n = usize::try_from(self.body_left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        if n == 0 {
            return None;
        }
        self.body_left -= n as u64;
        self.offset += n as u64;
        Some(self.buf.split_to(n).freeze())
    }

    /// The next whole frame or payload start, `Ok(None)` when more bytes are needed (or a
    /// payload in pieces is still being taken).
    pub fn next_item(&mut self) -> Result<Option<Item>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.body_left > 0 {
            return Ok(None);
        }
        if self.pending.is_none() {
            match self.read_header()? {
                Some(p)
                    if p.command == commands::BLOCK && p.length as u64 >= self.body_threshold =>
                {
                    self.body_left = p.length as u64;
                    return Ok(Some(Item::Body(BodyStart {
                        command: p.command,
                        length: p.length as u64,
                        checksum: p.checksum,
                        offset: p.offset,
                    })));
                }
                Some(p) => self.pending = Some(p),
                None => return Ok(None),
            }
        }
        self.next_frame().map(|f| f.map(Item::Frame))
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits (e.g. after the handshake shows the peer's protocol version).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The read buffer, to read a socket into directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Offset in the stream of the next byte to be decoded.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Whether the decoder is waiting in the middle of a frame.
    pub fn in_frame(&self) -> bool {
        self.pending.is_some() || !self.buf.is_empty()
    }

    /// Releases the buffer's memory when it holds nothing (for idle connections).
    pub fn shrink_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    fn fail(&mut self, e: FrameError) -> Result<Option<Frame>, FrameError> {
        self.poisoned = true;
        self.buf = BytesMut::new();
        Err(e)
    }

    fn advance(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset += n as u64;
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.body_left > 0 {
            return Ok(None);
        }
        let p = match self.pending {
            Some(p) => p,
            None => match self.read_header()? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        if self.buf.len() < p.length {
            // Ask for room for the rest of this frame, but never more than 1 MiB ahead: the
            // memory follows what the peer actually sends, not what it announced.
            let want = (p.length - self.buf.len()).min(1 << 20);
            self.buf.reserve(want);
            self.pending = Some(p);
            return Ok(None);
        }
        self.pending = None;
        let payload = self.buf.split_to(p.length).freeze();
        self.offset += p.length as u64;
        if let Some(expected) = p.checksum {
            let got = checksum(&payload);
            if got != expected {
                return Err(FrameError::BadChecksum {
                    offset: p.offset,
                    command: p.command,
                    expected,
                    got,
                });
            }
        }
        Ok(Some(Frame {
            command: p.command,
            payload,
            extended: p.checksum.is_none(),
            offset: p.offset,
        }))
    }

    fn read_header(&mut self) -> Result<Option<Pending>, FrameError> {
        let offset = self.offset;
        // Check the magic as soon as its bytes arrive, so a foreign peer is refused early.
        let have = self.buf.len().min(4);
        if self.buf[..have] != self.magic.0[..have] {
            let mut got = [0u8; 4];
            got[..have].copy_from_slice(&self.buf[..have]);
            let e = FrameError::WrongMagic {
                offset,
                expected: self.magic,
                got: Magic(got),
            };
            return self.fail(e).map(|_| None);
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let raw: [u8; 12] = self.buf[4..16].try_into().expect("12 bytes");
        let Some(command) = Command::from_wire(raw) else {
            return self
                .fail(FrameError::BadCommand { offset, raw })
                .map(|_| None);
        };
        let length = u32::from_le_bytes(self.buf[16..20].try_into().expect("4 bytes"));
        let sum: [u8; 4] = self.buf[20..24].try_into().expect("4 bytes");
        if command == commands::EXTMSG {
            if !self.limits.allow_extended {
                return self
                    .fail(FrameError::BadExtended {
                        offset,
                        reason: "extended messages not allowed",
                    })
                    .map(|_| None);
            }
            if length != EXT_LENGTH_MARK {
                return self
                    .fail(FrameError::BadExtended {
                        offset,
                        reason: "length field is not 0xffffffff",
                    })
                    .map(|_| None);
            }
            if self.buf.len() < EXT_HEADER_LEN {
                return Ok(None);
            }
            let raw: [u8; 12] = self.buf[24..36].try_into().expect("12 bytes");
            let Some(inner) = Command::from_wire(raw).filter(|c| *c != commands::EXTMSG) else {
                return self
                    .fail(FrameError::BadCommand {
                        offset: offset + 24,
                        raw,
                    })
                    .map(|_| None);
            };
            let length = u64::from_le_bytes(self.buf[36..44].try_into().expect("8 bytes"));
            return self.accept_header(offset, inner, length, None, EXT_HEADER_LEN);
        }
        self.accept_header(offset, command, length as u64, Some(sum), HEADER_LEN)
    }

    fn accept_header(
        &mut self,
        offset: u64,
        command: Command,
        length: u64,
        checksum: Option<[u8; 4]>,
        header_len: usize,
    ) -> Result<Option<Pending>, FrameError> {
        let limit = self.limits.limit_for(command);
        if length > limit || length > usize::MAX as u64 {
            return self
                .fail(FrameError::Oversize {
                    offset,
                    command,
                    length,
                    limit,
                })
                .map(|_| None);
        }
        self.advance(header_len);
        Ok(Some(Pending {
            command,
            length: length as usize,
            checksum,
            offset,
        }))
    }

    /// The next whole message, decoded. A payload error or a bad checksum consumes the frame and
    /// leaves the stream usable; framing errors are fatal (see [`WireError::is_fatal`]).
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        match self.next_frame()? {
            Some(f) => f.message().map(Some),
            None => Ok(None),
        }
    }
}
