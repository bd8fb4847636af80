//! The Bitcoin wire codec as BSV nodes speak it: framing (with BSV's `extmsg`), primitives, and
//! every message. Pure code: no sockets, no threads, no clocks. Decoding slices the buffer it is
//! given (`bytes::Bytes`) and never copies a payload.

pub mod block;
pub mod bsv;
pub mod codec;
pub mod frame;
pub mod hash;
pub mod message;
pub mod stream;
pub mod tx;
pub mod types;
pub mod u256;

pub use block::{merkle_root, Block, BlockHeader};
pub use bsv::{
    stream_type, AssociationId, AuthChallenge, AuthResponse, CreateStream, DataRefTx, DsBlock,
    DsDetected, EnrichedHeader, MerkleProof, ProofNode, ProvenTx, RevokeMid, StreamAck,
};
pub use codec::{Decode, DecodeError, DecodeErrorKind, Encode, Reader};
pub use frame::{encode_message, Frame, FrameDecoder, FrameError, Limits, Magic, WireError};
pub use hash::Hash256;
pub use message::{commands, Locator, Message, PayloadError, Protoconf, Reject, VersionMessage};
pub use tx::{OutPoint, Transaction, TxIn, TxOut};
pub use types::{Command, InvType, Inventory, NetAddr, TimedNetAddr};
pub use u256::U256;
