//! BSV's notices: `dsdetected` (a double spend across competing blocks) and `revokemid` (a miner
//! ID revocation). Each is checked for form as the SV node checks it before acting (an invalid
//! one costs its sender 10 points), relayed once to every other peer, and handed to the
//! embedder as [`Event::Message`], which holds what needs the chain or the miner ID database
//! (the SV node's fork-height check, its signature checks). A bounded memory of the last 1,000
//! notices, as the SV node keeps, stops echoes.

use super::NodeCore;
use crate::event::Event;
use crate::fsm::bans::BanReason;
use crate::fsm::PeerId;
use crate::wire::{Hash256, Message};
use bytes::BytesMut;
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// Notices remembered (the SV node's cache size).
const SEEN_NOTICES: usize = 1_000;

/// The notices seen lately, by a hash that does not depend on the order of their parts.
#[derive(Default)]
pub(super) struct SeenNotices {
    set: HashSet<Hash256>,
    order: VecDeque<Hash256>,
}

impl SeenNotices {
    /// Whether `h` is new (it is remembered from now on).
    fn insert(&mut self, h: Hash256) -> bool {
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > SEEN_NOTICES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

/// A `dsdetected`'s identity: the hash of its version and of its blocks' hashes sorted (the SV
/// node's sort hash: the same blocks in another order are the same notice).
fn notice_hash(msg: &Message) -> Hash256 {
    let mut b = BytesMut::new();
    match msg {
        Message::DsDetected(d) => {
            let mut parts: Vec<[u8; 32]> = d
                .blocks
                .iter()
                .map(|blk| {
                    let one = crate::wire::DsDetected {
                        version: d.version,
                        blocks: vec![blk.clone()],
                    };
                    Hash256::sha256d(&Message::DsDetected(one).payload()).0
                })
                .collect();
            parts.sort();
            b.extend_from_slice(b"dsdetected");
            b.extend_from_slice(&d.version.to_le_bytes());
            for p in parts {
                b.extend_from_slice(&p);
            }
        }
        other => {
            b.extend_from_slice(other.command().as_str().as_bytes());
            b.extend_from_slice(&other.payload());
        }
    }
    Hash256::sha256d(&b)
}

impl NodeCore {
    /// Handles `dsdetected`, `revokemid` and `feefilter`; returns other messages untouched.
    pub(super) fn bsv_message(
        &mut self,
        id: PeerId,
        msg: Message,
        now: Instant,
    ) -> Option<Message> {
        let checked = match &msg {
            Message::DsDetected(d) => d.check(),
            Message::RevokeMid(m) => m.check(),
            Message::FeeFilter(rate) => {
                self.txs.set_fee_filter(id, *rate);
                return None;
            }
            _ => return Some(msg),
        };
        if !self.notices.insert(notice_hash(&msg)) {
            log::debug!("peer {id}: {} seen before, ignored", msg.command());
            return None;
        }
        if let Err(why) = checked {
            if let Some(ip) = self.ip_of(id) {
                self.misbehaving(ip, Some(id), BanReason::InvalidNotice, why, now);
            }
            return None;
        }
        let others: Vec<PeerId> = self
            .ready_peers()
            .map(|(p, _)| *p)
            .filter(|p| *p != id)
            .collect();
        for p in others {
            self.send(p, msg.clone());
        }
        self.emit(Event::Message {
            peer: id,
            message: msg,
        });
        None
    }
}
