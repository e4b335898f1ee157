//! Dots, versions and version vectors.
//!
//! * A **dot** `(origin, counter)` names one write uniquely. `origin` is not a server id
//!   but the id of one *incarnation* of a server (its `rid`): a random 64-bit number
//!   drawn each time a server process starts, and `counter` counts that incarnation's
//!   writes from 1. A server's data directory is never trusted to hold the newest state
//!   of its own writes — it may have been wiped, restored from a backup, or cut short by
//!   sled at a damaged record — so a restarted server never continues an old counter:
//!   it leaves the dots of its earlier lives to whoever holds them (its peers send them
//!   back by anti-entropy) and names its new writes under a fresh origin. Within one
//!   incarnation the counter is persisted with the batch that uses it, so no two
//!   writes ever carry the same dot. The cost: each restart adds one origin to the
//!   watermark vectors (16 bytes each).
//! * A **version** is a dot plus the write's hybrid-logical-clock timestamp. Versions are
//!   totally ordered by `(ts, origin, counter)`; that order is the last-writer-wins order.
//!   One origin stamps its writes with strictly increasing timestamps, so for one origin
//!   the counter order and the timestamp order agree.
//! * A **version vector** maps an origin to the highest counter of that origin that has
//!   been incorporated. Used per key (the key's *causal context*) it means "every write
//!   of this origin to this key up to that counter has been merged in"; used per server
//!   (the *watermark*) it means "every write of this origin up to that counter, to any
//!   key, is held here".

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A server id. Server and client ids share one namespace of non-negative integers.
pub type NodeId = u64;

/// The unique name of one write: the origin server and its write counter (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dot {
    /// The incarnation of the server that accepted the write (its `rid`).
    pub origin: NodeId,
    /// That incarnation's write counter at the write, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// A dot.
    pub fn new(origin: NodeId, counter: u64) -> Self {
        Dot { origin, counter }
    }
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.origin, self.counter)
    }
}

/// A write's identity and position in the last-writer-wins order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock timestamp in microseconds since the Unix epoch.
    pub ts: u64,
    /// The write's dot.
    pub dot: Dot,
}

impl Version {
    /// The LWW sort key: later timestamp wins, a tie goes to the higher origin id.
    fn key(&self) -> (u64, NodeId, u64) {
        (self.ts, self.dot.origin, self.dot.counter)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The text form of a [`Version`] — the session token clients carry between requests:
/// `<ts>.<origin>.<counter>`, three decimal `u64`s. The HTTP headers, the CLI's session
/// file and the fault suite all read and write exactly this.
impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.ts, self.dot.origin, self.dot.counter)
    }
}

/// Why a token is not a [`Version`]. Each message is one line naming the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseVersionError {
    /// A part is missing.
    #[error("version {token:?} lacks the {part} (want <ts>.<origin>.<counter>)")]
    Missing {
        /// The token as given.
        token: String,
        /// Which part.
        part: &'static str,
    },
    /// A part is not a decimal number.
    #[error("version {token:?}: {part} is not a decimal number (want <ts>.<origin>.<counter>)")]
    NotDecimal {
        /// The token as given.
        token: String,
        /// Which part.
        part: &'static str,
    },
    /// A part does not fit in 64 bits.
    #[error("version {token:?}: {part} out of range")]
    OutOfRange {
        /// The token as given.
        token: String,
        /// Which part.
        part: &'static str,
    },
    /// More than three parts.
    #[error("version {token:?} has too many parts (want <ts>.<origin>.<counter>)")]
    TooManyParts {
        /// The token as given.
        token: String,
    },
}

impl std::str::FromStr for Version {
    type Err = ParseVersionError;

    /// Parse `<ts>.<origin>.<counter>` (surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Version, ParseVersionError> {
        let token = || s.to_string();
        let mut it = s.trim().split('.');
        let mut next = |part: &'static str| -> Result<u64, ParseVersionError> {
            let p = it.next().ok_or_else(|| ParseVersionError::Missing {
                token: token(),
                part,
            })?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError::NotDecimal {
                    token: token(),
                    part,
                });
            }
            p.parse::<u64>().map_err(|_| ParseVersionError::OutOfRange {
                token: token(),
                part,
            })
        };
        let ts = next("timestamp")?;
        let origin = next("origin")?;
        let counter = next("counter")?;
        if it.next().is_some() {
            return Err(ParseVersionError::TooManyParts { token: token() });
        }
        Ok(Version {
            ts,
            dot: Dot { origin, counter },
        })
    }
}

/// Origin → highest incorporated counter. Absent origins count as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `origin` (0 when absent).
    pub fn get(&self, origin: NodeId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Raise the entry for `origin` to at least `counter`.
    pub fn raise(&mut self, origin: NodeId, counter: u64) {
        if counter == 0 {
            return;
        }
        let e = self.0.entry(origin).or_insert(0);
        if *e < counter {
            *e = counter;
        }
    }

    /// Set the entry for `origin` exactly (used for watermarks that are recomputed).
    pub fn set(&mut self, origin: NodeId, counter: u64) {
        if counter == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, counter);
        }
    }

    /// Whether the write `dot` has been incorporated.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.origin) >= dot.counter
    }

    /// Pointwise maximum with `other`. Returns whether anything grew.
    pub fn join(&mut self, other: &VersionVector) -> bool {
        let mut grew = false;
        for (&o, &c) in &other.0 {
            let e = self.0.entry(o).or_insert(0);
            if *e < c {
                *e = c;
                grew = true;
            }
        }
        grew
    }

    /// Whether every entry of `self` is ≤ the same entry of `other`.
    pub fn le(&self, other: &VersionVector) -> bool {
        self.0.iter().all(|(&o, &c)| other.get(o) >= c)
    }

    /// Iterate `(origin, counter)` in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(&o, &c)| (o, c))
    }

    /// Number of origins with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no origin has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (o, c) in iter {
            v.raise(o, c);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lww_order_is_timestamp_then_origin() {
        let a = Version {
            ts: 10,
            dot: Dot::new(1, 5),
        };
        let b = Version {
            ts: 10,
            dot: Dot::new(2, 1),
        };
        let c = Version {
            ts: 11,
            dot: Dot::new(0, 1),
        };
        assert!(a < b, "tie on ts goes to the higher server id");
        assert!(b < c, "later timestamp wins");
    }

    #[test]
    fn vector_join_and_cover() {
        let mut a: VersionVector = [(1, 3), (2, 1)].into_iter().collect();
        let b: VersionVector = [(2, 4), (3, 1)].into_iter().collect();
        assert!(a.join(&b));
        assert!(!a.join(&b));
        assert_eq!(a.get(1), 3);
        assert_eq!(a.get(2), 4);
        assert!(a.covers(Dot::new(3, 1)));
        assert!(!a.covers(Dot::new(3, 2)));
        assert!(b.le(&a));
        assert!(!a.le(&b));
        assert!(a.covers(Dot::new(9, 0)), "counter 0 is never a real write");
    }
}
