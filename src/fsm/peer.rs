//! One connection's protocol state: the frame decoder, the handshake, keepalive, protoconf, and
//! counters. Fed received bytes and the time; answers with messages to send, messages to hand to
//! the workers, and a verdict when the connection must end. No sockets here.

use super::bans::BanReason;
use super::handshake::{Handshake, HandshakeAction, HandshakeState};
use super::ping::Keepalive;
use super::ratelimit::{RateLimiter, RateSettings};
use super::{Direction, DisconnectReason};
use crate::store::files::{BlockFileRef, BlockFiles};
use crate::wire::frame::{BodyStart, FrameDecoder, FrameError, Item, Limits, WireError};
use crate::wire::stream::{BlockStream, BlockSummary, StreamError};
use crate::wire::{
    AssociationId, Command, CreateStream, Magic, Message, Protoconf, StreamAck, VersionMessage,
};
use bytes::BytesMut;
use std::time::{Duration, Instant};

/// The payload limit assumed for a peer that sends no protoconf (the protoconf spec's default).
pub const LEGACY_MAX_PAYLOAD: u64 = 1024 * 1024;
/// First protocol version that understands `extmsg`.
pub const EXTMSG_VERSION: i32 = 70016;

/// Where a further stream of an association is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    /// We opened it: its `streamack` must come by then.
    AwaitAck(Instant),
    /// In use.
    Open,
}

/// Stream policies bsn knows (the SV node's two).
pub const KNOWN_STREAM_POLICIES: [&str; 2] = ["Default", "BlockPriority"];

/// How an association spreads messages over its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamPolicy {
    /// Everything on the first connection (GENERAL).
    #[default]
    Default,
    /// Blocks, headers (and their requests) and ping/pong on DATA1, the rest on GENERAL.
    BlockPriority,
}

impl StreamPolicy {
    /// The policy's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            StreamPolicy::Default => "Default",
            StreamPolicy::BlockPriority => "BlockPriority",
        }
    }

    /// A policy by its wire name.
    pub fn from_name(s: &str) -> Option<StreamPolicy> {
        match s {
            "Default" => Some(StreamPolicy::Default),
            "BlockPriority" => Some(StreamPolicy::BlockPriority),
            _ => None,
        }
    }

    /// Whether the policy sends `command` on DATA1 (the SV node's high-priority messages).
    pub fn on_data1(&self, command: Command) -> bool {
        use crate::wire::message::commands::*;
        const GETBLOCKTXN: Command = Command::from_static("getblocktxn");
        *self == StreamPolicy::BlockPriority
            && matches!(
                command,
                PING | PONG
                    | BLOCK
                    | CMPCTBLOCK
                    | BLOCKTXN
                    | GETBLOCKTXN
                    | HEADERS
                    | GETHEADERS
                    | HDRSEN
                    | GETHDRSEN
            )
    }
}

/// Settings shared by every connection of an engine.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Network magic.
    pub magic: Magic,
    /// Limits on what we receive.
    pub limits: Limits,
    /// Lowest protocol version accepted.
    pub min_version: i32,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Time a pong may take.
    pub ping_timeout: Duration,
    /// Malformed payloads tolerated before the peer is dropped.
    pub max_payload_errors: u32,
    /// The protoconf we send after the handshake (`None`: send none).
    pub protoconf: Option<Protoconf>,
    /// Rate limits on what the peer sends.
    pub rates: RateSettings,
    /// BSV multistreams on.
    pub multistreams: bool,
    /// Stream policies, most preferred first.
    pub stream_policies: Vec<String>,
    /// Where blocks of at least `block_file_threshold` bytes are written as they arrive
    /// (`None`: every block is received whole in memory).
    pub block_files: Option<BlockFiles>,
    /// Blocks this big or bigger go to `block_files`.
    pub block_file_threshold: u64,
}

/// What the connection wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerOutput {
    /// Send this message to the peer.
    Send(Message),
    /// The handshake completed.
    Connected(Box<VersionMessage>),
    /// A message for the workers (everything the connection does not consume itself).
    Deliver(Message),
    /// A round trip was measured.
    Rtt(Duration),
    /// A non-fatal error worth counting (bad checksum, malformed payload, unexpected message).
    Misbehaved(BanReason, String),
    /// An inbound connection asks, with its first message, to join an association as a stream.
    StreamRequest(CreateStream),
    /// The peer's protoconf agreed on a policy that needs a second stream: open it (DATA1).
    OpenStream(StreamPolicy),
    /// The stream we opened was accepted.
    StreamAcked(StreamAck),
    /// A block bigger than the file threshold arrived, checked, into a block file.
    BlockFile(BlockSummary, BlockFileRef),
}

impl Drop for Spool {
    fn drop(&mut self) {
        // a block that completed was renamed: then there is nothing left to remove
        self.files.abandon(self.id);
    }
}

/// A block arriving into a block file (removed if the connection ends before it is whole).
#[derive(Debug)]
struct Spool {
    files: BlockFiles,
    /// `None` once writing failed or the block broke a rule (the rest is read and dropped).
    file: Option<std::fs::File>,
    id: u64,
    stream: BlockStream,
    error: Option<StreamError>,
    io_error: Option<String>,
}

pub use crate::store::records::CommandStats;

/// Counters for one connection, per command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Per-command counters (few commands per peer, so a small vector).
    pub by_command: Vec<(Command, CommandStats)>,
    /// Malformed or unexpected messages received.
    pub errors: u64,
}

impl PeerStats {
    fn entry(&mut self, c: Command) -> &mut CommandStats {
        // unknown names share one entry: the vector stays as short as the list of commands
        let c = if crate::wire::commands::is_known(&c) {
            c
        } else {
            crate::wire::commands::OTHER
        };
        let i = match self.by_command.iter().position(|(k, _)| *k == c) {
            Some(i) => i,
            None => {
                self.by_command.push((c, CommandStats::default()));
                self.by_command.len() - 1
            }
        };
        &mut self.by_command[i].1
    }

    /// Counts a received frame.
    pub fn record_in(&mut self, c: Command, frame_bytes: usize) {
        let e = self.entry(c);
        e.msgs_in += 1;
        e.bytes_in += frame_bytes as u64;
    }

    /// Counts a sent frame.
    pub fn record_out(&mut self, c: Command, frame_bytes: usize) {
        let e = self.entry(c);
        e.msgs_out += 1;
        e.bytes_out += frame_bytes as u64;
    }

    /// Adds another connection's counters (a further stream's, to its peer's).
    pub fn absorb(&mut self, other: PeerStats) {
        for (c, s) in other.by_command {
            let e = self.entry(c);
            e.msgs_in += s.msgs_in;
            e.bytes_in += s.bytes_in;
            e.msgs_out += s.msgs_out;
            e.bytes_out += s.bytes_out;
        }
        self.errors += other.errors;
    }

    /// Totals over every command.
    pub fn totals(&self) -> CommandStats {
        self.by_command
            .iter()
            .fold(CommandStats::default(), |mut t, (_, s)| {
                t.msgs_in += s.msgs_in;
                t.bytes_in += s.bytes_in;
                t.msgs_out += s.msgs_out;
                t.bytes_out += s.bytes_out;
                t
            })
    }
}

/// Bad checksums tolerated within [`CHECKSUM_WINDOW`] before each further one costs a point
/// (the SV node's rule).
pub const CHECKSUM_FLOOD: u32 = 100;
/// The window for [`CHECKSUM_FLOOD`].
pub const CHECKSUM_WINDOW: Duration = Duration::from_millis(500);

/// The protocol state of one connection.
#[derive(Debug)]
pub struct PeerProtocol {
    direction: Direction,
    decoder: FrameDecoder,
    handshake: Option<Handshake>,
    keepalive: Keepalive,
    version: Option<Box<VersionMessage>>,
    their_max_payload: u64,
    got_protoconf: bool,
    payload_errors: u32,
    max_payload_errors: u32,
    protoconf: Option<Protoconf>,
    limiter: RateLimiter,
    throttled_until: Option<Instant>,
    last_violation: Option<Instant>,
    /// Start of the current bad-checksum window and the bad checksums in it.
    checksum_window: Option<(Instant, u32)>,
    /// Set for a further stream of an association (no handshake, no keepalive of its own: what
    /// it receives goes to the association's first connection).
    stream: Option<StreamState>,
    /// The association agreed in the handshake.
    association: Option<AssociationId>,
    /// Our stream policies, most preferred first.
    policies: Vec<String>,
    /// Where big blocks go, and the block arriving there now.
    block_files: Option<BlockFiles>,
    spool: Option<Spool>,
    /// Counters.
    pub stats: PeerStats,
}

impl PeerProtocol {
    /// A new connection at `now`; `ours` is the version message we send.
    pub fn new(
        direction: Direction,
        settings: &PeerSettings,
        ours: VersionMessage,
        now: Instant,
    ) -> PeerProtocol {
        // No extended messages before we know the peer's version.
        let limits = Limits {
            allow_extended: false,
            ..settings.limits
        };
        let mut handshake = Handshake::new(
            direction,
            ours,
            settings.min_version,
            now + settings.handshake_timeout,
        );
        if settings.multistreams {
            handshake = handshake.with_multistreams();
        }
        let mut decoder = FrameDecoder::with_limits(settings.magic, limits);
        if settings.block_files.is_some() {
            decoder.set_body_threshold(settings.block_file_threshold);
        }
        PeerProtocol {
            direction,
            decoder,
            handshake: Some(handshake),
            keepalive: Keepalive::new(now, settings.ping_interval, settings.ping_timeout),
            version: None,
            their_max_payload: LEGACY_MAX_PAYLOAD,
            got_protoconf: false,
            payload_errors: 0,
            max_payload_errors: settings.max_payload_errors,
            protoconf: settings.protoconf.clone(),
            limiter: RateLimiter::new(&settings.rates, now),
            throttled_until: None,
            last_violation: None,
            checksum_window: None,
            stream: None,
            association: None,
            policies: settings.stream_policies.clone(),
            block_files: settings.block_files.clone(),
            spool: None,
            stats: PeerStats::default(),
        }
    }

    /// A further stream of an association: no handshake; `first` (our `createstrm`, for a
    /// stream we open) goes out at start, and its `streamack` must come within the handshake
    /// timeout. `buffered` is what was read before it became a stream.
    pub fn new_stream(
        direction: Direction,
        settings: &PeerSettings,
        peer_version: i32,
        now: Instant,
        buffered: &[u8],
    ) -> PeerProtocol {
        let a = crate::wire::NetAddr::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), 0);
        let placeholder = VersionMessage {
            version: 0,
            services: 0,
            timestamp: 0,
            receiver: a,
            sender: a,
            nonce: 0,
            user_agent: String::new(),
            start_height: 0,
            relay: None,
            extra: bytes::Bytes::new(),
        };
        let mut p = PeerProtocol::new(direction, settings, placeholder, now);
        p.handshake = None;
        let mut limits = p.decoder.limits();
        limits.allow_extended = peer_version >= EXTMSG_VERSION;
        p.decoder.set_limits(limits);
        p.stream = Some(match direction {
            Direction::Outbound => StreamState::AwaitAck(now + settings.handshake_timeout),
            Direction::Inbound => StreamState::Open,
        });
        p.decoder.buffer_mut().extend_from_slice(buffered);
        p
    }

    /// The association agreed in the handshake (both sides carry its ID).
    pub fn association(&self) -> Option<AssociationId> {
        self.association
    }

    /// Takes what the read buffer holds (a connection that becomes a stream elsewhere).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.decoder.buffer_mut().split()
    }

    /// A message that came on another stream of this connection's association: handled as if
    /// it came here.
    pub fn on_stream_message(
        &mut self,
        now: Instant,
        msg: Message,
        out: &mut Vec<PeerOutput>,
    ) -> Result<(), DisconnectReason> {
        if self.handshake.is_some() {
            return Ok(());
        }
        self.after_handshake(now, msg, out)
    }

    /// Inbound or outbound.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The peer's version once the handshake is complete.
    pub fn version(&self) -> Option<&VersionMessage> {
        self.version.as_deref()
    }

    /// Whether the handshake is complete.
    pub fn is_ready(&self) -> bool {
        self.version.is_some()
    }

    /// Largest non-block payload the peer accepts (from its protoconf, else the legacy default).
    pub fn their_max_payload(&self) -> u64 {
        self.their_max_payload
    }

    /// Whether the peer understands `extmsg`.
    pub fn accepts_extended(&self) -> bool {
        self.version
            .as_ref()
            .is_some_and(|v| v.version >= EXTMSG_VERSION)
    }

    /// Until when the peer is throttled for exceeding its rate limits (its socket is not read).
    pub fn throttled_until(&self) -> Option<Instant> {
        self.throttled_until
    }

    /// Whether received bytes wait in the read buffer.
    pub fn has_buffered(&self) -> bool {
        self.decoder.buffered() > 0
    }

    /// The last ping round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.keepalive.last_rtt()
    }

    /// The read buffer, for the socket to fill.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.decoder.buffer_mut()
    }

    /// Frees read-buffer memory when nothing is buffered (idle connections stay small).
    pub fn shrink(&mut self) {
        self.decoder.shrink_if_empty();
    }

    /// The connection is up.
    pub fn start(&mut self, out: &mut Vec<PeerOutput>) {
        if let Some(h) = self.handshake.as_mut() {
            for a in h.start() {
                if let HandshakeAction::Send(m) = a {
                    out.push(PeerOutput::Send(m));
                }
            }
        }
    }

    /// Whether a message fits what the peer accepts.
    pub fn check_send(&self, msg: &Message) -> Result<(), super::SendError> {
        let len = msg.payload_len() as u64;
        // Blocks, their parts and transactions are exempt from the peer's protoconf limit, as
        // the SV node exempts them (a stored block is served as its raw bytes under `block`).
        use crate::wire::message::commands;
        let exempt = matches!(
            msg.command(),
            commands::BLOCK
                | commands::CMPCTBLOCK
                | commands::BLOCKTXN
                | commands::HDRSEN
                | commands::TX
                | commands::DATAREFTX
        );
        let limit = self.their_max_payload.max(LEGACY_MAX_PAYLOAD);
        if !exempt && len > limit {
            return Err(super::SendError::TooLarge {
                command: msg.command().to_string(),
                len,
                limit,
            });
        }
        if len >= u32::MAX as u64 && !self.accepts_extended() {
            return Err(super::SendError::TooLarge {
                command: msg.command().to_string(),
                len,
                limit: u32::MAX as u64 - 1,
            });
        }
        Ok(())
    }

    /// Decodes whatever whole frames the read buffer holds and acts on them.
    pub fn on_data(
        &mut self,
        now: Instant,
        is_own_nonce: &dyn Fn(u64) -> bool,
        out: &mut Vec<PeerOutput>,
    ) -> Result<(), DisconnectReason> {
        if let Some(t) = self.throttled_until {
            if now < t {
                return Ok(());
            }
            self.throttled_until = None;
        }
        loop {
            if self.spool.is_some() {
                if !self.feed_spool(out)? {
                    return Ok(());
                }
                continue;
            }
            let frame = match self.decoder.next_item() {
                Ok(Some(Item::Frame(f))) => f,
                Ok(Some(Item::Body(start))) => {
                    self.start_spool(start)?;
                    continue;
                }
                Ok(None) => return Ok(()),
                Err(FrameError::WrongMagic { expected, got, .. }) => {
                    return Err(DisconnectReason::WrongNetwork { expected, got })
                }
                Err(e @ FrameError::BadChecksum { .. }) => {
                    self.bad_checksum(now, e, out);
                    continue;
                }
                Err(e) => return Err(DisconnectReason::BadFrame(e)),
            };
            let header = if frame.extended {
                crate::wire::frame::EXT_HEADER_LEN
            } else {
                crate::wire::frame::HEADER_LEN
            };
            self.stats
                .record_in(frame.command, header + frame.payload.len());
            if let Err(wait) = self
                .limiter
                .check(now, frame.command, header + frame.payload.len())
            {
                // Dropped; the rest waits in the buffer, and the socket is not read, until the
                // peer is within its limits again. Scored at most once a second.
                self.throttled_until = Some(now + wait);
                if self
                    .last_violation
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_violation = Some(now);
                    self.stats.errors += 1;
                    out.push(PeerOutput::Misbehaved(
                        BanReason::RateLimitExceeded,
                        format!("{} over the rate limit", frame.command),
                    ));
                }
                return Ok(());
            }
            let msg = match frame.message() {
                Ok(m) => m,
                Err(WireError::Payload { error, .. }) => {
                    if self.handshake.is_some() {
                        return Err(DisconnectReason::Malformed(error));
                    }
                    // As the SV node: more entries than `addr` or `headers` may hold is 20
                    // points, any other malformed payload 0 (bsn still drops a peer after
                    // `max_payload_errors` of them).
                    let too_many = matches!(error.error.kind, crate::wire::DecodeErrorKind::TooMany { count, max, .. } if count > max)
                        && matches!(
                            error.command,
                            crate::wire::message::commands::ADDR
                                | crate::wire::message::commands::HEADERS
                        );
                    // A `dsdetected` or `revokemid` that does not decode costs 10 (SV).
                    let notice = matches!(
                        error.command,
                        crate::wire::message::commands::DSDETECTED
                            | crate::wire::message::commands::REVOKEMID
                    );
                    let reason = if too_many {
                        BanReason::ProtocolViolation
                    } else if notice {
                        BanReason::InvalidNotice
                    } else {
                        BanReason::MalformedPayload
                    };
                    self.misbehaved(out, reason, error.to_string(), Some(error))?;
                    continue;
                }
                Err(WireError::Frame(e)) => return Err(DisconnectReason::BadFrame(e)),
            };
            if let Message::Block(b) = &msg {
                // checked here, with the other per-message hashing, before anything keeps it
                let mut m = crate::wire::stream::MerkleStream::new();
                for t in &b.txs {
                    m.push(t.txid());
                }
                let (root, mutated) = m.finish();
                let refused = if root != b.header.merkle_root {
                    Some(StreamError::BadMerkleRoot {
                        header: b.header.merkle_root,
                        computed: root,
                    })
                } else {
                    mutated.then_some(StreamError::Mutated)
                };
                if let Some(e) = refused {
                    self.misbehaved(
                        out,
                        BanReason::InvalidBlock,
                        format!("block {}: {e}", b.hash()),
                        None,
                    )?;
                    continue;
                }
            }
            self.on_message(now, msg, is_own_nonce, out)?;
        }
    }

    /// A frame with a bad checksum is dropped; as the SV node: nothing until more than 100
    /// within 500 ms, then 1 point each. Not counted towards `max_payload_errors`.
    fn bad_checksum(&mut self, now: Instant, e: FrameError, out: &mut Vec<PeerOutput>) {
        self.stats.errors += 1;
        let window = self
            .checksum_window
            .filter(|(t, _)| now.saturating_duration_since(*t) < CHECKSUM_WINDOW);
        let (start, n) = window.unwrap_or((now, 0));
        self.checksum_window = Some((start, n + 1));
        if n + 1 > CHECKSUM_FLOOD {
            out.push(PeerOutput::Misbehaved(
                BanReason::BadChecksum,
                e.to_string(),
            ));
        }
    }

    /// A block payload over the file threshold starts: it goes to a new block file as it
    /// arrives, checked on the way.
    fn start_spool(&mut self, start: BodyStart) -> Result<(), DisconnectReason> {
        let header = if start.checksum.is_some() {
            crate::wire::frame::HEADER_LEN
        } else {
            crate::wire::frame::EXT_HEADER_LEN
        };
        let total = header.saturating_add(usize::try_from(start.length).unwrap_or(usize::MAX));
        self.stats.record_in(start.command, total);
        let files = self
            .block_files
            .as_ref()
            .ok_or_else(|| DisconnectReason::Io("a block body without block files".into()))?;
        let (file, id) = files
            .create()
            .map_err(|e| DisconnectReason::Io(format!("cannot create a block file: {e}")))?;
        self.spool = Some(Spool {
            files: files.clone(),
            file: Some(file),
            id,
            // Not hashed for the frame checksum: the header's hash and the merkle root cover
            // every byte (the transaction count must be canonical), as the SV node relies on
            // for `extmsg`; one pass of hashing instead of two.
            stream: BlockStream::new(false),
            error: None,
            io_error: None,
        });
        Ok(())
    }

    /// Moves what arrived of a spooled block to its file; `false` when more must be read.
    fn feed_spool(&mut self, out: &mut Vec<PeerOutput>) -> Result<bool, DisconnectReason> {
        use std::io::Write;
        let sp = self.spool.as_mut().expect("a spool");
        while let Some(piece) = self.decoder.take_body() {
            if sp.error.is_none() && sp.io_error.is_none() {
                if let Err(e) = sp.stream.feed(&piece, &mut |_| {}) {
                    sp.error = Some(e);
                } else if let Some(f) = sp.file.as_mut() {
                    if let Err(e) = f.write_all(&piece) {
                        sp.io_error = Some(e.to_string());
                    }
                }
            }
        }
        if self.decoder.body_left() > 0 {
            return Ok(false);
        }
        // (dropping `sp` removes its file unless it was named below)
        let mut sp = self.spool.take().expect("a spool");
        drop(sp.file.take());
        if let Some(e) = sp.io_error.take() {
            return Err(DisconnectReason::Io(format!(
                "cannot write a block file: {e}"
            )));
        }
        let result = match sp.error.take() {
            Some(e) => Err(e),
            None => std::mem::replace(&mut sp.stream, BlockStream::new(false)).finish(),
        };
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                let reason = match e {
                    StreamError::BadMerkleRoot { .. } | StreamError::Mutated => {
                        BanReason::InvalidBlock
                    }
                    _ => BanReason::MalformedPayload,
                };
                self.misbehaved(out, reason, format!("block: {e}"), None)?;
                return Ok(true);
            }
        };
        if let Err(e) = sp.files.complete(sp.id, &summary.hash) {
            return Err(DisconnectReason::Io(format!(
                "cannot name a block file: {e}"
            )));
        }
        let r = BlockFileRef {
            id: sp.id,
            size: summary.size,
            tx_count: summary.tx_count,
            checksum: None,
        };
        out.push(PeerOutput::BlockFile(summary, r));
        Ok(true)
    }

    fn misbehaved(
        &mut self,
        out: &mut Vec<PeerOutput>,
        reason: BanReason,
        what: String,
        payload: Option<crate::wire::PayloadError>,
    ) -> Result<(), DisconnectReason> {
        self.stats.errors += 1;
        self.payload_errors += 1;
        out.push(PeerOutput::Misbehaved(reason, what.clone()));
        if self.payload_errors > self.max_payload_errors {
            return Err(match payload {
                Some(p) => DisconnectReason::Malformed(p),
                None => {
                    DisconnectReason::ProtocolViolation(format!("too many errors, last: {what}"))
                }
            });
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        now: Instant,
        msg: Message,
        is_own_nonce: &dyn Fn(u64) -> bool,
        out: &mut Vec<PeerOutput>,
    ) -> Result<(), DisconnectReason> {
        if let Some(h) = self.handshake.as_mut() {
            let actions = h.on_message(&msg, is_own_nonce)?;
            let done = h.state() == HandshakeState::Done;
            let association = h.association();
            for a in actions {
                match a {
                    HandshakeAction::Send(m) => out.push(PeerOutput::Send(m)),
                    HandshakeAction::Unexpected(what) => {
                        self.misbehaved(out, BanReason::UnexpectedMessage, what, None)?
                    }
                    HandshakeAction::CreateStream(c) => out.push(PeerOutput::StreamRequest(c)),
                    HandshakeAction::Done(v) => {
                        self.association = association;
                        let mut limits = self.decoder.limits();
                        limits.allow_extended = v.version >= EXTMSG_VERSION;
                        self.decoder.set_limits(limits);
                        self.version = Some(v.clone());
                        out.push(PeerOutput::Connected(v));
                        if let Some(p) = &self.protoconf {
                            out.push(PeerOutput::Send(Message::Protoconf(p.clone())));
                        }
                        self.keepalive.ping_now(now);
                    }
                }
            }
            if done {
                self.handshake = None;
            }
            return Ok(());
        }
        if self.stream.is_some() {
            return match msg {
                Message::StreamAck(a) if matches!(self.stream, Some(StreamState::AwaitAck(_))) => {
                    self.stream = Some(StreamState::Open);
                    out.push(PeerOutput::StreamAcked(a));
                    Ok(())
                }
                Message::Version(_)
                | Message::Verack
                | Message::CreateStream(_)
                | Message::StreamAck(_) => Err(DisconnectReason::StreamSetup(format!(
                    "{} on a stream",
                    msg.command()
                ))),
                other => {
                    out.push(PeerOutput::Deliver(other));
                    Ok(())
                }
            };
        }
        self.after_handshake(now, msg, out)
    }

    fn after_handshake(
        &mut self,
        now: Instant,
        msg: Message,
        out: &mut Vec<PeerOutput>,
    ) -> Result<(), DisconnectReason> {
        match msg {
            Message::Ping(n) => out.push(PeerOutput::Send(Message::Pong(n))),
            Message::Pong(n) => {
                if let Some(rtt) = self.keepalive.on_pong(now, n) {
                    out.push(PeerOutput::Rtt(rtt));
                }
            }
            Message::Protoconf(p) => {
                if self.got_protoconf {
                    return Err(DisconnectReason::ProtocolViolation(
                        "second protoconf".into(),
                    ));
                }
                self.got_protoconf = true;
                if (p.max_recv_payload_length as u64) < LEGACY_MAX_PAYLOAD {
                    return Err(DisconnectReason::ProtocolViolation(format!(
                        "protoconf max payload {} below the minimum {LEGACY_MAX_PAYLOAD}",
                        p.max_recv_payload_length
                    )));
                }
                self.their_max_payload = p.max_recv_payload_length as u64;
                // As the SV node: the side that dialled opens the streams the first policy
                // both sides have asks for.
                if self.direction == Direction::Outbound && self.association.is_some() {
                    let theirs: Vec<&str> = p
                        .stream_policies
                        .as_deref()
                        .unwrap_or("")
                        .split(',')
                        .map(str::trim)
                        .collect();
                    let agreed = self
                        .policies
                        .iter()
                        .find(|ours| theirs.contains(&ours.as_str()))
                        .and_then(|n| StreamPolicy::from_name(n));
                    if let Some(StreamPolicy::BlockPriority) = agreed {
                        out.push(PeerOutput::OpenStream(StreamPolicy::BlockPriority));
                    }
                }
            }
            Message::CreateStream(_) | Message::StreamAck(_) => {
                return Err(DisconnectReason::StreamSetup(format!(
                    "{} on an established connection",
                    msg.command()
                )));
            }
            Message::Version(_) | Message::Verack => {
                self.misbehaved(
                    out,
                    BanReason::UnexpectedMessage,
                    format!("{} after the handshake", msg.command()),
                    None,
                )?;
            }
            other => out.push(PeerOutput::Deliver(other)),
        }
        Ok(())
    }

    /// Advances time: handshake deadline, pings, pong deadline.
    pub fn tick(
        &mut self,
        now: Instant,
        nonce: impl FnOnce() -> u64,
        out: &mut Vec<PeerOutput>,
    ) -> Result<(), DisconnectReason> {
        if let Some(h) = &self.handshake {
            return h.tick(now);
        }
        match self.stream {
            Some(StreamState::AwaitAck(t)) if now >= t => {
                return Err(DisconnectReason::StreamSetup("no streamack in time".into()));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        if let Some(n) = self.keepalive.tick(now, nonce)? {
            out.push(PeerOutput::Send(Message::Ping(n)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::encode_message;
    use crate::wire::{Command, NetAddr};
    use bytes::Bytes;

    const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);

    fn settings() -> PeerSettings {
        PeerSettings {
            magic: MAGIC,
            limits: Limits::default(),
            min_version: 70001,
            handshake_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(120),
            ping_timeout: Duration::from_secs(1200),
            max_payload_errors: 2,
            protoconf: Some(Protoconf::new(2 * 1024 * 1024, "Default")),
            rates: crate::fsm::ratelimit::RateSettings::default(),
            multistreams: false,
            stream_policies: vec!["Default".into()],
            block_files: None,
            block_file_threshold: u64::MAX,
        }
    }

    fn version(nonce: u64) -> VersionMessage {
        let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 1);
        VersionMessage {
            version: 70016,
            services: 1,
            timestamp: 0,
            receiver: a,
            sender: a,
            nonce,
            user_agent: "/bsn:test/".into(),
            start_height: 0,
            relay: Some(true),
            extra: Bytes::new(),
        }
    }

    /// Moves every `Send` of `outs` into `to` as wire bytes; returns the rest.
    fn deliver(outs: Vec<PeerOutput>, to: &mut PeerProtocol) -> Vec<PeerOutput> {
        let mut rest = Vec::new();
        for o in outs {
            match o {
                PeerOutput::Send(m) => encode_message(to.read_buffer(), MAGIC, &m),
                other => rest.push(other),
            }
        }
        rest
    }

    fn pair(now: Instant) -> (PeerProtocol, PeerProtocol) {
        pair_with(now, settings())
    }

    fn pair_with(now: Instant, s: PeerSettings) -> (PeerProtocol, PeerProtocol) {
        let mut a = PeerProtocol::new(Direction::Outbound, &s, version(1), now);
        let mut b = PeerProtocol::new(Direction::Inbound, &s, version(2), now);
        let own = |n: u64| n == 1 || n == 2;
        let own_a = |n: u64| n == 1;
        let own_b = |n: u64| n == 2;
        let _ = own;
        let mut out = Vec::new();
        a.start(&mut out);
        for _ in 0..4 {
            let rest = deliver(std::mem::take(&mut out), &mut b);
            assert!(rest.iter().all(|o| !matches!(o, PeerOutput::Deliver(_))));
            b.on_data(now, &own_b, &mut out).unwrap();
            let _ = deliver(std::mem::take(&mut out), &mut a);
            a.on_data(now, &own_a, &mut out).unwrap();
        }
        (a, b)
    }

    #[test]
    fn handshake_protoconf_and_ping_without_sockets() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        assert!(a.is_ready() && b.is_ready());
        assert_eq!(a.version().unwrap().nonce, 2);
        assert_eq!(b.their_max_payload(), 2 * 1024 * 1024);
        assert_eq!(a.their_max_payload(), 2 * 1024 * 1024);
        assert!(a.accepts_extended());
        // ping measured right after the handshake
        let mut out = Vec::new();
        a.tick(t0, || 42, &mut out).unwrap();
        assert_eq!(out, vec![PeerOutput::Send(Message::Ping(42))]);
        deliver(std::mem::take(&mut out), &mut b);
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(out, vec![PeerOutput::Send(Message::Pong(42))]);
        deliver(std::mem::take(&mut out), &mut a);
        let later = t0 + Duration::from_millis(5);
        a.on_data(later, &|_| false, &mut out).unwrap();
        assert_eq!(out, vec![PeerOutput::Rtt(Duration::from_millis(5))]);
        // other messages go to the workers
        out.clear();
        encode_message(b.read_buffer(), MAGIC, &Message::GetAddr);
        b.on_data(later, &|_| false, &mut out).unwrap();
        assert_eq!(out, vec![PeerOutput::Deliver(Message::GetAddr)]);
        assert_eq!(b.stats.totals().msgs_in, 5); // version, verack, protoconf, ping, getaddr
    }

    /// A block of `n` coinbase-like transactions, its merkle root right or not.
    fn block(n: u32, right_root: bool) -> crate::wire::Block {
        let txs: Vec<_> = (0..n)
            .map(|i| {
                crate::wire::Transaction::build(
                    1,
                    &[(
                        crate::wire::OutPoint {
                            txid: crate::wire::Hash256::ZERO,
                            vout: i,
                        },
                        &[7u8; 40],
                        u32::MAX,
                    )],
                    &[(50, b"\x51")],
                    0,
                )
            })
            .collect();
        let root = crate::wire::merkle_root(txs.iter().map(|t| t.txid()).collect());
        let header = crate::wire::BlockHeader {
            version: 4,
            prev_hash: crate::wire::Hash256::ZERO,
            merkle_root: if right_root {
                root
            } else {
                crate::wire::Hash256::ZERO
            },
            time: 1,
            bits: 0x207fffff,
            nonce: 0,
        };
        crate::wire::Block::new(header, txs)
    }

    #[test]
    fn big_blocks_go_to_files_checked_on_the_way() {
        let t0 = Instant::now();
        let files = BlockFiles::temporary().unwrap();
        let mut s = settings();
        s.block_files = Some(files.clone());
        s.block_file_threshold = 500;
        s.max_payload_errors = 10;
        let (_a, mut b) = pair_with(t0, s);
        let listing = || std::fs::read_dir(files.dir()).unwrap().count();
        let mut out = Vec::new();
        // over the threshold, fed in 7-byte pieces: a file, and its summary
        let good = block(10, true);
        let mut wire = BytesMut::new();
        encode_message(&mut wire, MAGIC, &Message::Block(good.clone()));
        for piece in wire.chunks(7) {
            b.read_buffer().extend_from_slice(piece);
            b.on_data(t0, &|_| false, &mut out).unwrap();
        }
        let [PeerOutput::BlockFile(sum, r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((sum.hash, sum.tx_count), (good.hash(), 10));
        assert_eq!(r.size, good.raw().len() as u64);
        assert_eq!(r.checksum, None);
        let f = files.open_block(&good.hash(), r).unwrap();
        let mut back = vec![0u8; r.size as usize];
        crate::store::files::read_at(&f, 0, &mut back).unwrap();
        assert_eq!(&back[..], &good.raw()[..]);
        assert_eq!(listing(), 1);
        // a wrong merkle root: scored as an invalid block, no file left
        out.clear();
        let invalid = |b: &mut PeerProtocol, m: crate::wire::Block| {
            let mut out = Vec::new();
            encode_message(b.read_buffer(), MAGIC, &Message::Block(m));
            b.on_data(t0, &|_| false, &mut out).unwrap();
            assert!(
                matches!(
                    &out[..],
                    [PeerOutput::Misbehaved(BanReason::InvalidBlock, _)]
                ),
                "{out:?}"
            );
        };
        invalid(&mut b, block(10, false));
        assert_eq!(listing(), 1);
        // a non-canonical transaction count (the one byte the hashes do not cover): refused
        out.clear();
        let b11 = block(11, true);
        let mut payload = b11.raw()[..80].to_vec();
        payload.extend_from_slice(&[0xfd, 11, 0]);
        payload.extend_from_slice(&b11.raw()[81..]);
        let mut wire = BytesMut::new();
        encode_message(
            &mut wire,
            MAGIC,
            &Message::Unknown {
                command: crate::wire::message::commands::BLOCK,
                payload: bytes::Bytes::from(payload),
            },
        );
        b.read_buffer().extend_from_slice(&wire);
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert!(
            matches!(
                &out[..],
                [PeerOutput::Misbehaved(BanReason::MalformedPayload, _)]
            ),
            "{out:?}"
        );
        assert_eq!(listing(), 1);
        // a connection that ends in the middle of a block leaves no file behind
        let (_a2, mut b2) = {
            let mut s = settings();
            s.block_files = Some(files.clone());
            s.block_file_threshold = 500;
            pair_with(t0, s)
        };
        let mut wire = BytesMut::new();
        encode_message(&mut wire, MAGIC, &Message::Block(block(12, true)));
        b2.read_buffer().extend_from_slice(&wire[..wire.len() / 2]);
        b2.on_data(t0, &|_| false, &mut Vec::new()).unwrap();
        assert_eq!(listing(), 2, "the half block is being written");
        drop(b2);
        assert_eq!(listing(), 1);
        // under the threshold a block is decoded in memory, and its root is checked too
        invalid(&mut b, block(1, false));
        out.clear();
        let small = block(1, true);
        encode_message(b.read_buffer(), MAGIC, &Message::Block(small.clone()));
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(out, vec![PeerOutput::Deliver(Message::Block(small))]);
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let s = settings();
        // wrong magic
        let mut p = PeerProtocol::new(Direction::Inbound, &s, version(2), t0);
        encode_message(
            p.read_buffer(),
            Magic([0xe3, 0xe1, 0xf3, 0xe8]),
            &Message::Version(version(5)),
        );
        assert!(matches!(
            p.on_data(t0, &|_| false, &mut Vec::new()),
            Err(DisconnectReason::WrongNetwork { .. })
        ));
        // handshake timeout
        let mut p = PeerProtocol::new(Direction::Inbound, &s, version(2), t0);
        assert_eq!(
            p.tick(t0 + Duration::from_secs(61), || 0, &mut Vec::new()),
            Err(DisconnectReason::HandshakeTimeout)
        );
        // malformed payload after the handshake: tolerated up to the limit, then dropped
        let (_, mut b) = pair(t0);
        let mut out = Vec::new();
        for i in 0..3 {
            let frame = Message::Unknown {
                command: Command::new("ping").unwrap(),
                payload: Bytes::from_static(b"xx"),
            };
            encode_message(b.read_buffer(), MAGIC, &frame);
            let r = b.on_data(t0, &|_| false, &mut out);
            if i < 2 {
                r.unwrap();
            } else {
                assert!(matches!(r, Err(DisconnectReason::Malformed(_))));
            }
        }
        // second protoconf
        let (_, mut b) = pair(t0);
        encode_message(
            b.read_buffer(),
            MAGIC,
            &Message::Protoconf(Protoconf::new(2 << 20, "Default")),
        );
        assert!(matches!(
            b.on_data(t0, &|_| false, &mut out),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        // honour the peer's limit
        let (a, _) = pair(t0);
        let big = Message::Unknown {
            command: Command::new("big").unwrap(),
            payload: Bytes::from(vec![0u8; 3 << 20]),
        };
        assert!(a.check_send(&big).is_err());
        assert!(a.check_send(&Message::Ping(1)).is_ok());
    }

    fn scored(out: &[PeerOutput]) -> Vec<BanReason> {
        out.iter()
            .filter_map(|o| match o {
                PeerOutput::Misbehaved(r, _) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// The SV node's ban points, row by row as far as the connection sees them (README "Ban
    /// points"); the points per reason are checked in `bans`.
    #[test]
    fn misbehaviour_is_reported_as_the_sv_node_scores_it() {
        let t0 = Instant::now();
        let s = settings();
        // wrong magic and a malformed or oversize message header: dropped, banned at once
        let verdicts = [
            DisconnectReason::WrongNetwork {
                expected: MAGIC,
                got: MAGIC,
            },
            DisconnectReason::BadFrame(crate::wire::FrameError::Oversize {
                offset: 0,
                command: Command::new("inv").unwrap(),
                length: 1 << 30,
                limit: 1 << 21,
            }),
            DisconnectReason::BadFrame(crate::wire::FrameError::BadCommand {
                offset: 0,
                raw: [0xff; 12],
            }),
        ];
        for (v, r) in verdicts.iter().zip([
            BanReason::WrongNetwork,
            BanReason::OversizeMessage,
            BanReason::MalformedHeader,
        ]) {
            assert_eq!(v.ban_reason(), Some(r));
            assert_eq!(r.default_points(), 100);
        }
        // a message before version: ignored, 1 point, the handshake goes on
        let mut p = PeerProtocol::new(Direction::Inbound, &s, version(2), t0);
        let mut out = Vec::new();
        encode_message(p.read_buffer(), MAGIC, &Message::Ping(1));
        p.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(scored(&out), [BanReason::UnexpectedMessage]);
        encode_message(p.read_buffer(), MAGIC, &Message::Version(version(5)));
        out.clear();
        p.on_data(t0, &|_| false, &mut out).unwrap();
        assert!(scored(&out).is_empty() && !out.is_empty(), "{out:?}");
        // a second version after the handshake: 1 point
        let (_, mut b) = pair(t0);
        out.clear();
        encode_message(b.read_buffer(), MAGIC, &Message::Version(version(9)));
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(scored(&out), [BanReason::UnexpectedMessage]);
        // a malformed payload: 0 points; addr with more than 1,000 entries: 20
        let (_, mut b) = pair(t0);
        out.clear();
        let short_ping = Message::Unknown {
            command: Command::new("ping").unwrap(),
            payload: Bytes::from_static(b"xx"),
        };
        encode_message(b.read_buffer(), MAGIC, &short_ping);
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(scored(&out), [BanReason::MalformedPayload]);
        out.clear();
        let mut addr = vec![0xfd, 0xe9, 0x03]; // 1,001 entries
        addr.extend(std::iter::repeat_n(0u8, 1001 * 30));
        let big_addr = Message::Unknown {
            command: Command::new("addr").unwrap(),
            payload: Bytes::from(addr),
        };
        encode_message(b.read_buffer(), MAGIC, &big_addr);
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert_eq!(scored(&out), [BanReason::ProtocolViolation]);
        // bad checksums: dropped and free up to 100 within 500 ms, then 1 point each
        let (_, mut b) = pair(t0);
        out.clear();
        let mut frame = crate::wire::frame::message_to_bytes(MAGIC, &Message::Ping(5)).to_vec();
        frame[20] ^= 0xff;
        for _ in 0..100 {
            b.read_buffer().extend_from_slice(&frame);
        }
        b.on_data(t0, &|_| false, &mut out).unwrap();
        assert!(scored(&out).is_empty(), "{out:?}");
        b.read_buffer().extend_from_slice(&frame);
        b.on_data(t0 + Duration::from_millis(100), &|_| false, &mut out)
            .unwrap();
        assert_eq!(scored(&out), [BanReason::BadChecksum]);
        // a new window starts clean
        out.clear();
        b.read_buffer().extend_from_slice(&frame);
        b.on_data(t0 + Duration::from_secs(1), &|_| false, &mut out)
            .unwrap();
        assert!(scored(&out).is_empty());
        assert!(b.is_ready(), "bad checksums do not end the connection");
    }
}
