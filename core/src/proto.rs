//! Wire messages between meshkv processes, and their framing.
//!
//! Every message travels as a frame: a 4-byte big-endian length, then the message in
//! bincode (standard configuration). Frames larger than [`MAX_FRAME`] and bodies that do
//! not decode are rejected with a [`ProtoError`]; nothing from the network is trusted.
//!
//! Streams over one server↔server QUIC connection:
//! * one **uni stream per direction** carries [`PeerMsg`]s in order: eager pushes and
//!   link announcements;
//! * **bi streams**, one per exchange, carry a [`PeerReq`] and its [`PeerResp`]
//!   (anti-entropy, tree walk, the linearizable registers' prepare and accept);
//!
//! A client↔server connection carries one bi stream per request: [`ClientReq`] then
//! [`ClientResp`].

use crate::entry::Entry;
use crate::paxos::{PaxosReq, PaxosResp};
use crate::replica::{SyncItem, SyncReq, SyncResp};
use crate::version::{Dot, NodeId, Version};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest accepted frame body.
pub const MAX_FRAME: usize = 64 << 20;

/// Messages on the ordered per-peer stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// The servers the sender is directly connected to now.
    Links(Vec<NodeId>),
    /// A changed entry, with the write dots that changed it.
    Push {
        /// The key.
        key: Vec<u8>,
        /// The sender's committed entry.
        entry: Entry,
        /// Write dots that produced the change.
        dots: Vec<Dot>,
    },
    /// The first message on a new connection: the origin id of the sender's current
    /// incarnation (so a write is not relayed back to its origin).
    Hello {
        /// The sender's incarnation.
        rid: NodeId,
    },
}

/// Requests on a server↔server bi stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReq {
    /// Link confirmation: the dialer asks before it counts the link as up; only a peer
    /// that has installed the connection (is not blocking us) answers.
    Ping,
    /// Fast-path anti-entropy.
    Sync(SyncReq),
    /// Tree walk: all group digests.
    Groups,
    /// Tree walk: bucket digests of these groups.
    Buckets(Vec<u8>),
    /// Tree walk: `(key, digest)` of these buckets.
    Keys(Vec<u16>),
    /// Tree walk: the entries of these keys.
    Fetch(Vec<Vec<u8>>),
    /// A linearizable register's prepare or accept, for this server's acceptor.
    Paxos(PaxosReq),
    /// The peer's status document (JSON), for the dashboard's view of the mesh.
    Status,
}

/// Answers on a server↔server bi stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResp {
    /// Answer to [`PeerReq::Ping`].
    Pong,
    /// Answer to [`PeerReq::Sync`].
    Sync(SyncResp),
    /// Answer to [`PeerReq::Groups`].
    Groups(Vec<u64>),
    /// Answer to [`PeerReq::Buckets`].
    Buckets(Vec<(u8, Vec<u64>)>),
    /// Answer to [`PeerReq::Keys`].
    Keys(Vec<(Vec<u8>, u64)>),
    /// Answer to [`PeerReq::Fetch`].
    Fetch(Vec<SyncItem>),
    /// Answer to [`PeerReq::Paxos`] (given only once the acceptor state is durable).
    Paxos(PaxosResp),
    /// Answer to [`PeerReq::Status`]: the status document as JSON text.
    Status(String),
    /// The request could not be served.
    Error(String),
}

/// A client's request to a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReq {
    /// Write (`None` deletes); returns the previous value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value, `None` to delete.
        value: Option<Vec<u8>>,
        /// Highest timestamp the client has seen.
        seen_ts: u64,
    },
    /// Read with the session check.
    Get {
        /// The key.
        key: Vec<u8>,
        /// The client's dependency for the key.
        dep: Option<Dot>,
        /// Highest timestamp the client has seen.
        seen_ts: u64,
    },
}

/// A server's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResp {
    /// The write is durable at `version`; `previous` is the value it replaced.
    Put {
        /// The new version.
        version: Version,
        /// The value the server held before.
        previous: Option<Vec<u8>>,
    },
    /// The value and its version.
    Found {
        /// The value.
        value: Vec<u8>,
        /// Its version.
        version: Version,
    },
    /// No value (absent, or deleted at `version`).
    Missing {
        /// The tombstone version, if deleted.
        version: Option<Version>,
    },
    /// The server has not seen the client's dependency.
    Dep,
    /// The request was refused.
    Error(String),
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encode a message as a frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Encoding our own in-memory types into a Vec cannot fail except on size overflow,
    // which the limit turns into an error we surface as an empty frame body.
    if bincode::serde::encode_into_std_write(msg, &mut out, config()).is_err() {
        out.truncate(4);
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Check a frame's length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ProtoError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge(n));
    }
    Ok(n)
}

/// Decode a frame body (without the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let m = ClientReq::Get {
            key: b"k".to_vec(),
            dep: Some(Dot::new(3, 4)),
            seen_ts: 99,
        };
        let f = encode(&m);
        let n = frame_len([f[0], f[1], f[2], f[3]]).unwrap();
        assert_eq!(n, f.len() - 4);
        assert_eq!(decode::<ClientReq>(&f[4..]).unwrap(), m);
    }

    #[test]
    fn oversized_prefix_rejected() {
        assert!(matches!(
            frame_len([0xff, 0xff, 0xff, 0xff]),
            Err(ProtoError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<ClientReq>(&body);
            let _ = decode::<PeerMsg>(&body);
            let _ = decode::<PeerReq>(&body);
            let _ = decode::<PeerResp>(&body);
        }
    }
}
