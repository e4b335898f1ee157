//! A client's session state: what it must never see older than.
//!
//! Per key, the dot of the version the client last wrote or read (its *dependency*),
//! plus the highest timestamp it has seen anywhere. Reads send the key's dependency
//! (the server answers `ERR_DEP` unless its context covers it); writes and reads send
//! the highest timestamp, so a write the client issues is stamped after everything it
//! has seen and wins last-writer-wins against it. That gives Read-Your-Writes (a put
//! replaces the dependency with the new write's dot) and Monotonic-Reads (a read
//! replaces it with the dot of the version read, which is never older than the
//! previous dependency, because the server covered it).

use crate::version::{Dot, Version};
use std::collections::BTreeMap;

/// The session of one client: per key, its token (the [`Version`] it last wrote or
/// read), and the highest timestamp it has seen. The one model of a session: the
/// master's clients, the CLI's session file and the fault suite's HTTP clients all
/// keep one of these; a token travels as the [`Version`]'s text form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    tokens: BTreeMap<Vec<u8>, Version>,
    max_ts: u64,
}

impl Session {
    /// A session with no dependencies.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dependency for `key`, if any: the dot of its token.
    pub fn dep(&self, key: &[u8]) -> Option<Dot> {
        self.tokens.get(key).map(|v| v.dot)
    }

    /// The token for `key`, if any.
    pub fn token(&self, key: &[u8]) -> Option<Version> {
        self.tokens.get(key).copied()
    }

    /// The highest timestamp this session has seen.
    pub fn seen_ts(&self) -> u64 {
        self.max_ts
    }

    /// The client wrote `key` at `version`: that is its new token.
    pub fn wrote(&mut self, key: &[u8], version: Version) {
        self.tokens.insert(key.to_vec(), version);
        self.max_ts = self.max_ts.max(version.ts);
    }

    /// The client read `version` of `key` (a value or a tombstone).
    pub fn read(&mut self, key: &[u8], version: Version) {
        self.wrote(key, version)
    }

    /// Every key's token, in key order.
    pub fn tokens(&self) -> impl Iterator<Item = (&[u8], Version)> {
        self.tokens.iter().map(|(k, v)| (k.as_slice(), *v))
    }

    /// Forget everything (a new client).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.max_ts = 0;
    }

    /// Number of keys with a token.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the session has no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}
