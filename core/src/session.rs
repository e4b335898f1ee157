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
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The dependencies of one client session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    deps: BTreeMap<Vec<u8>, Dot>,
    max_ts: u64,
}

impl Session {
    /// A session with no dependencies.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dependency for `key`, if any.
    pub fn dep(&self, key: &[u8]) -> Option<Dot> {
        self.deps.get(key).copied()
    }

    /// The highest timestamp this session has seen.
    pub fn seen_ts(&self) -> u64 {
        self.max_ts
    }

    /// The client wrote `key` at `version`: that is its new dependency.
    pub fn wrote(&mut self, key: &[u8], version: Version) {
        self.deps.insert(key.to_vec(), version.dot);
        self.max_ts = self.max_ts.max(version.ts);
    }

    /// The client read `version` of `key` (a value or a tombstone).
    pub fn read(&mut self, key: &[u8], version: Version) {
        self.wrote(key, version)
    }

    /// Number of keys with a dependency.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// True when the session has no dependency.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_replaces_dependency_and_raises_seen() {
        let mut s = Session::new();
        s.wrote(
            b"k",
            Version {
                ts: 5,
                dot: Dot::new(1, 1),
            },
        );
        s.read(
            b"k",
            Version {
                ts: 9,
                dot: Dot::new(2, 4),
            },
        );
        assert_eq!(s.dep(b"k"), Some(Dot::new(2, 4)));
        assert_eq!(s.seen_ts(), 9);
        assert_eq!(s.dep(b"j"), None);
    }
}
