//! The control channel between the master and its children.
//!
//! Each child (server or client process) reads JSON lines from stdin and answers on
//! stdout: `{"seq":N,"req":{...}}` → `{"seq":N,"resp":{...}}`. The first line a child
//! prints is `{"seq":0,"resp":{"ready":{...}}}` once it serves. A child exits when its
//! stdin reaches EOF, so children never outlive the master.

use crate::version::{NodeId, VersionVector};
use serde::{Deserialize, Serialize};

/// A request from the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReq {
    /// Server: `id` is a member at `addr` and the link to it is allowed; answer once
    /// the link is up or `wait_ms` passed.
    Peer {
        /// The peer server.
        id: NodeId,
        /// Its QUIC address.
        addr: String,
        /// How long to wait for the link.
        wait_ms: u64,
    },
    /// Server: `id` is a cluster member that is down now (no address): keep what it
    /// has not acknowledged.
    Member {
        /// The member server.
        id: NodeId,
    },
    /// Server: cut the link to `id` and refuse it until a `Peer` for it.
    Block {
        /// The peer server.
        id: NodeId,
    },
    /// Server: answer once a sync round has completed with every peer it was told of
    /// (so it serves nothing stale), or `wait_ms` passed.
    CaughtUp {
        /// How long to wait.
        wait_ms: u64,
    },
    /// Server: digest root and counts (for `stabilize`).
    Digest,
    /// Server: every live key and value (for `printStore`).
    Dump,
    /// Server: status as JSON text.
    Status,
    /// Client: use server `server` at `addr`, as the most recent link.
    Link {
        /// The server.
        server: NodeId,
        /// Its QUIC address.
        addr: String,
    },
    /// Client: a server's address changed (it rejoined); keep the link's place.
    Readdress {
        /// The server.
        server: NodeId,
        /// Its new QUIC address.
        addr: String,
    },
    /// Client: forget the link to `server`.
    Unlink {
        /// The server.
        server: NodeId,
    },
    /// Client: `server` was killed; skip it until it is readdressed.
    Down {
        /// The server.
        server: NodeId,
    },
    /// Client: write through the current server.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Client: read through the current server.
    Get {
        /// The key.
        key: String,
    },
}

/// The result of a client `Get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GetResult {
    /// The value (lossy UTF-8).
    Value(String),
    /// `ERR_KEY`.
    NotFound,
    /// `ERR_DEP`.
    Dep,
}

/// An answer from a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResp {
    /// The child serves. Servers give their QUIC (and HTTP) address.
    Ready {
        /// QUIC address (servers).
        quic: Option<String>,
        /// HTTP address (servers, when enabled).
        http: Option<String>,
    },
    /// Done.
    Ok,
    /// Answer to `Digest`.
    Digest {
        /// Digest root.
        root: u64,
        /// Number of keys.
        keys: usize,
        /// Watermarks.
        seen: VersionVector,
    },
    /// Answer to `Dump`.
    Dump {
        /// Live `(key, value)` pairs in key order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Answer to `Status` (JSON text).
    Status(String),
    /// Answer to `Get`.
    Got(GetResult),
    /// The request failed; one line.
    Error(String),
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlIn {
    /// Sequence number, echoed in the answer.
    pub seq: u64,
    /// The request.
    pub req: ControlReq,
}

/// An answer line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlOut {
    /// The request's sequence number (0 for `Ready`).
    pub seq: u64,
    /// The answer.
    pub resp: ControlResp,
}
