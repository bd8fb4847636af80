//! The version handshake: version then verack in both directions, within a deadline.
//!
//! Outbound, we speak first; inbound, we wait for the peer's version, then answer with ours and a
//! verack. The peer's version is checked for network-level sanity: not ourselves (nonce), not
//! below the minimum protocol version. Anything but version/verack before the peer's version is a
//! protocol violation; other messages between version and verack are ignored, as BSV nodes do.

use super::{Direction, DisconnectReason};
use crate::wire::{AssociationId, CreateStream, Message, VersionMessage};
use std::time::Instant;

/// What the handshake wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeAction {
    /// Send this message.
    Send(Message),
    /// The handshake is complete; the peer's version is attached.
    Done(Box<VersionMessage>),
    /// The peer sent something out of order (a message before `version`, a second `version`):
    /// ignored and scored 1 point, as the SV node does.
    Unexpected(String),
    /// An inbound connection's first message is `createstrm`: it asks to join an association
    /// as a further stream instead of being a peer of its own.
    CreateStream(CreateStream),
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeState {
    /// Waiting for the peer's version.
    AwaitVersion,
    /// Got the peer's version, waiting for its verack.
    AwaitVerack,
    /// Complete.
    Done,
}

/// The handshake state machine for one connection.
#[derive(Debug)]
pub struct Handshake {
    direction: Direction,
    ours: VersionMessage,
    min_version: i32,
    deadline: Instant,
    state: HandshakeState,
    sent_version: bool,
    theirs: Option<VersionMessage>,
    multistreams: bool,
    association: Option<AssociationId>,
}

impl Handshake {
    /// A handshake that must finish by `deadline`. `ours` is the version we send.
    pub fn new(
        direction: Direction,
        ours: VersionMessage,
        min_version: i32,
        deadline: Instant,
    ) -> Handshake {
        Handshake {
            direction,
            ours,
            min_version,
            deadline,
            state: HandshakeState::AwaitVersion,
            sent_version: false,
            theirs: None,
            multistreams: false,
            association: None,
        }
    }

    /// With BSV multistreams: an outbound handshake's version carries our association ID
    /// (put in `ours` by the caller) and the peer must echo it; an inbound one echoes the
    /// peer's.
    pub fn with_multistreams(mut self) -> Handshake {
        self.multistreams = true;
        self
    }

    /// The association both sides agreed on, once the peer's version is in.
    pub fn association(&self) -> Option<AssociationId> {
        self.association
    }

    /// Where it is.
    pub fn state(&self) -> HandshakeState {
        self.state
    }

    /// Called once the connection is up: outbound connections send their version first.
    pub fn start(&mut self) -> Vec<HandshakeAction> {
        if self.direction == Direction::Outbound && !self.sent_version {
            self.sent_version = true;
            return vec![HandshakeAction::Send(Message::Version(self.ours.clone()))];
        }
        Vec::new()
    }

    /// Feeds a message received before the handshake completed. `is_own_nonce` tells whether a
    /// nonce belongs to one of our own outbound connections (self-connection check).
    pub fn on_message(
        &mut self,
        msg: &Message,
        is_own_nonce: impl Fn(u64) -> bool,
    ) -> Result<Vec<HandshakeAction>, DisconnectReason> {
        let mut out = Vec::new();
        match (self.state, msg) {
            (HandshakeState::AwaitVersion, Message::Version(v)) => {
                if is_own_nonce(v.nonce) && v.nonce != 0 {
                    return Err(DisconnectReason::SelfConnection);
                }
                if v.version < self.min_version {
                    return Err(DisconnectReason::ObsoleteVersion {
                        version: v.version,
                        min: self.min_version,
                    });
                }
                if self.multistreams {
                    self.associate(v)?;
                }
                self.theirs = Some(v.clone());
                self.state = HandshakeState::AwaitVerack;
                if !self.sent_version {
                    self.sent_version = true;
                    out.push(HandshakeAction::Send(Message::Version(self.ours.clone())));
                }
                out.push(HandshakeAction::Send(Message::Verack));
            }
            (HandshakeState::AwaitVersion, Message::CreateStream(c))
                if self.direction == Direction::Inbound && !self.sent_version =>
            {
                out.push(HandshakeAction::CreateStream(c.clone()));
            }
            (_, Message::CreateStream(_) | Message::StreamAck(_)) => {
                // the SV node: "Invalid createstream scenario", disconnected, not scored
                return Err(DisconnectReason::StreamSetup(format!(
                    "{} on an established connection",
                    msg.command()
                )));
            }
            (HandshakeState::AwaitVersion, other) => {
                out.push(HandshakeAction::Unexpected(format!(
                    "{} before version",
                    other.command()
                )));
            }
            (HandshakeState::AwaitVerack, Message::Version(_)) => {
                out.push(HandshakeAction::Unexpected("duplicate version".into()));
            }
            (HandshakeState::AwaitVerack, Message::Verack) => {
                self.state = HandshakeState::Done;
                let v = self
                    .theirs
                    .clone()
                    .expect("version received before AwaitVerack");
                out.push(HandshakeAction::Done(Box::new(v)));
            }
            (HandshakeState::AwaitVerack, _) => {} // ignored until verack, as BSV nodes do
            (HandshakeState::Done, _) => {}
        }
        Ok(out)
    }

    /// The association ID in the peer's version, as the SV node reads it: an outbound side
    /// needs its own echoed (a mismatch ends the connection, no echo means one stream); an
    /// inbound side takes the peer's and echoes it in its own version.
    fn associate(&mut self, v: &VersionMessage) -> Result<(), DisconnectReason> {
        let theirs = v.association_id().map_err(|e| {
            DisconnectReason::StreamSetup(format!("badly formatted association ID: {e}"))
        })?;
        match self.direction {
            Direction::Outbound => {
                let ours = self.ours.association_id().ok().flatten();
                match (ours, theirs) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(DisconnectReason::StreamSetup(
                            "mismatched association IDs".into(),
                        ))
                    }
                    (Some(a), Some(_)) => self.association = Some(a),
                    _ => self.association = None,
                }
            }
            Direction::Inbound => {
                self.association = theirs;
                if theirs.is_some() {
                    self.ours.set_association_id(theirs);
                }
            }
        }
        Ok(())
    }

    /// Checks the deadline.
    pub fn tick(&self, now: Instant) -> Result<(), DisconnectReason> {
        if self.state != HandshakeState::Done && now >= self.deadline {
            return Err(DisconnectReason::HandshakeTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::NetAddr;
    use bytes::Bytes;
    use std::time::Duration;

    fn version(nonce: u64, v: i32) -> VersionMessage {
        let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 0);
        VersionMessage {
            version: v,
            services: 0,
            timestamp: 0,
            receiver: a,
            sender: a,
            nonce,
            user_agent: "/t/".into(),
            start_height: 0,
            relay: Some(true),
            extra: Bytes::new(),
        }
    }

    fn sends(a: &[HandshakeAction]) -> Vec<String> {
        a.iter()
            .map(|x| match x {
                HandshakeAction::Send(m) => m.command().to_string(),
                HandshakeAction::Done(_) => "done".into(),
                HandshakeAction::Unexpected(w) => format!("unexpected: {w}"),
                HandshakeAction::CreateStream(_) => "createstrm".into(),
            })
            .collect()
    }

    #[test]
    fn outbound_and_inbound_complete() {
        let t0 = Instant::now();
        let mut out = Handshake::new(
            Direction::Outbound,
            version(1, 70016),
            70001,
            t0 + Duration::from_secs(60),
        );
        let mut inb = Handshake::new(
            Direction::Inbound,
            version(2, 70016),
            70001,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(sends(&out.start()), ["version"]);
        assert!(inb.start().is_empty());
        let a = inb
            .on_message(&Message::Version(version(1, 70016)), |n| n == 2)
            .unwrap();
        assert_eq!(sends(&a), ["version", "verack"]);
        let b = out
            .on_message(&Message::Version(version(2, 70016)), |n| n == 1)
            .unwrap();
        assert_eq!(sends(&b), ["verack"]);
        assert_eq!(
            sends(&out.on_message(&Message::Verack, |_| false).unwrap()),
            ["done"]
        );
        assert_eq!(
            sends(&inb.on_message(&Message::Verack, |_| false).unwrap()),
            ["done"]
        );
        assert_eq!(out.state(), HandshakeState::Done);
        assert!(out.tick(t0 + Duration::from_secs(100)).is_ok());
    }

    #[test]
    fn association_ids_are_echoed_and_checked() {
        use crate::wire::AssociationId;
        let t0 = Instant::now();
        let dl = t0 + Duration::from_secs(60);
        let id = AssociationId([1; 16]);
        let with = |id: Option<AssociationId>, nonce| {
            let mut v = version(nonce, 70016);
            v.set_association_id(id);
            v
        };
        // inbound: the peer's ID comes back in our version
        let mut inb =
            Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl).with_multistreams();
        let a = inb
            .on_message(&Message::Version(with(Some(id), 1)), |_| false)
            .unwrap();
        let HandshakeAction::Send(Message::Version(ours)) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(ours.association_id(), Ok(Some(id)));
        assert_eq!(inb.association(), Some(id));
        // outbound: an echo of ours makes the association, none makes one stream, another
        // ID ends the connection
        let out = || {
            Handshake::new(Direction::Outbound, with(Some(id), 2), 70001, dl).with_multistreams()
        };
        let mut h = out();
        h.on_message(&Message::Version(with(Some(id), 1)), |_| false)
            .unwrap();
        assert_eq!(h.association(), Some(id));
        let mut h = out();
        h.on_message(&Message::Version(version(1, 70016)), |_| false)
            .unwrap();
        assert_eq!(h.association(), None);
        let mut h = out();
        let other = Some(AssociationId([2; 16]));
        assert!(matches!(
            h.on_message(&Message::Version(with(other, 1)), |_| false),
            Err(DisconnectReason::StreamSetup(_))
        ));
        // a first message `createstrm` asks to join an association
        let mut h =
            Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl).with_multistreams();
        let c = crate::wire::CreateStream {
            association_id: id.to_bytes(),
            stream_type: 2,
            policy: "BlockPriority".into(),
        };
        assert_eq!(
            sends(
                &h.on_message(&Message::CreateStream(c.clone()), |_| false)
                    .unwrap()
            ),
            ["createstrm"]
        );
        // ... but not after version
        let mut h = out();
        h.start();
        assert!(h.on_message(&Message::CreateStream(c), |_| false).is_err());
    }

    #[test]
    fn refusals() {
        let t0 = Instant::now();
        let dl = t0 + Duration::from_secs(5);
        let mut h = Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl);
        assert_eq!(
            h.on_message(&Message::Version(version(9, 70016)), |n| n == 9),
            Err(DisconnectReason::SelfConnection)
        );
        let mut h = Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl);
        assert_eq!(
            h.on_message(&Message::Version(version(9, 209)), |_| false),
            Err(DisconnectReason::ObsoleteVersion {
                version: 209,
                min: 70001
            })
        );
        // out of order: ignored and reported (1 point, as the SV node), not fatal
        let mut h = Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl);
        assert!(matches!(
            h.on_message(&Message::Ping(1), |_| false).unwrap()[..],
            [HandshakeAction::Unexpected(_)]
        ));
        assert_eq!(h.state(), HandshakeState::AwaitVersion);
        let mut h = Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl);
        h.on_message(&Message::Version(version(9, 70016)), |_| false)
            .unwrap();
        assert!(h
            .on_message(&Message::Ping(1), |_| false)
            .unwrap()
            .is_empty());
        assert!(matches!(
            h.on_message(&Message::Version(version(9, 70016)), |_| false)
                .unwrap()[..],
            [HandshakeAction::Unexpected(_)]
        ));
        let h = Handshake::new(Direction::Inbound, version(2, 70016), 70001, dl);
        assert!(h.tick(t0).is_ok());
        assert_eq!(h.tick(dl), Err(DisconnectReason::HandshakeTimeout));
    }
}
