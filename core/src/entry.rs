//! The replicated value of one key, and its merge.
//!
//! An [`Entry`] is the last-writer-wins winner among all writes to a key that a server
//! has incorporated (`value` + `version`; `value == None` is a delete tombstone),
//! together with the key's **causal context** `ctx`: the version vector of every write
//! to this key that has been merged in, winners and losers alike.
//!
//! Invariant: `ctx.covers(version.dot)`, and for every dot `d` covered by `ctx` the
//! write `d` is ≤ `version` in LWW order. (It holds for a single write; merge keeps it
//! because one origin's writes to a key are ordered the same by counter and timestamp.)
//! So a server whose context for a key covers a dot holds that write or a later one —
//! which is exactly what the session check (`ERR_DEP`) asks.
//!
//! # Merge laws
//! [`Entry::merge`] is a join in a semilattice: **commutative**, **associative** and
//! **idempotent** (proptested below), so replicas may exchange entries in any order,
//! any number of times, and converge to the same state. The context only grows.

use crate::version::{Dot, Version, VersionVector};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// The state of one key at one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The winning value; `None` is a tombstone (the key was deleted).
    pub value: Option<Vec<u8>>,
    /// The winning write.
    pub version: Version,
    /// Every write to this key merged in so far.
    pub ctx: VersionVector,
}

impl Entry {
    /// The entry made by one write that supersedes everything in `seen` (the context of
    /// what the writing server held for the key).
    pub fn write(value: Option<Vec<u8>>, version: Version, seen: &VersionVector) -> Self {
        let mut ctx = seen.clone();
        ctx.raise(version.dot.origin, version.dot.counter);
        Entry {
            value,
            version,
            ctx,
        }
    }

    /// Merge `other` into `self` (LWW winner, pointwise-max context). Returns whether
    /// `self` changed.
    pub fn merge(&mut self, other: &Entry) -> bool {
        let mut changed = false;
        if other.version > self.version {
            self.version = other.version;
            self.value = other.value.clone();
            changed = true;
        }
        changed |= self.ctx.join(&other.ctx);
        changed
    }

    /// The merge of two entries, as a value.
    pub fn joined(mut self, other: &Entry) -> Entry {
        self.merge(other);
        self
    }

    /// Whether this entry has incorporated the write `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.ctx.covers(dot)
    }

    /// Whether merging `other` would change nothing.
    pub fn subsumes(&self, other: &Entry) -> bool {
        other.version <= self.version && other.ctx.le(&self.ctx)
    }

    /// A stable 64-bit hash of `(key, entry)`, the leaf of the digest tree. Equal on two
    /// servers exactly when key, value, version and context are equal (up to hash
    /// collisions).
    pub fn digest(&self, key: &[u8]) -> u64 {
        let mut h = Xxh3::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        match &self.value {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v);
            }
            None => h.update(&[0]),
        }
        h.update(&self.version.ts.to_le_bytes());
        h.update(&self.version.dot.origin.to_le_bytes());
        h.update(&self.version.dot.counter.to_le_bytes());
        for (o, c) in self.ctx.iter() {
            h.update(&o.to_le_bytes());
            h.update(&c.to_le_bytes());
        }
        // Never 0, so a present key always changes its bucket.
        h.digest().max(1)
    }

    /// Approximate encoded size in bytes (for batching and byte accounting).
    pub fn approx_size(&self) -> usize {
        self.value.as_ref().map_or(0, |v| v.len()) + 32 + 16 * self.ctx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NodeId;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        // Small universes so that collisions (equal versions, shared origins) happen.
        (
            0u64..4,
            1u64..4,
            proptest::collection::vec((0u64..4, 0u64..6), 0..4),
        )
            .prop_map(|(origin, counter, extra)| {
                // Same dot must mean same write: derive the value and ts from the dot
                // (one origin's timestamps grow with its counter).
                let dot = Dot::new(origin as NodeId, counter);
                let version = Version {
                    ts: (origin * 7 + counter * 3) % 11 + counter * 20,
                    dot,
                };
                let mut seen: VersionVector = extra.into_iter().collect();
                // Keep the invariant: context dots of an origin are ≤ in LWW order.
                for (o, c) in seen.clone().iter() {
                    if o == origin && c > counter {
                        seen.set(o, counter);
                    }
                }
                Entry::write(
                    Some(format!("{origin}.{counter}").into_bytes()),
                    version,
                    &seen,
                )
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_entry(), b in arb_entry()) {
            prop_assert_eq!(a.clone().joined(&b), b.clone().joined(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_entry(), b in arb_entry(), c in arb_entry()) {
            prop_assert_eq!(a.clone().joined(&b).joined(&c), a.clone().joined(&b.clone().joined(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_entry(), b in arb_entry()) {
            let ab = a.clone().joined(&b);
            prop_assert_eq!(ab.clone().joined(&b), ab.clone());
            prop_assert_eq!(a.clone().joined(&a), a.clone());
        }

        #[test]
        fn context_only_grows_and_covers_both(a in arb_entry(), b in arb_entry()) {
            let ab = a.clone().joined(&b);
            prop_assert!(a.ctx.le(&ab.ctx));
            prop_assert!(b.ctx.le(&ab.ctx));
            prop_assert!(ab.covers(a.version.dot) && ab.covers(b.version.dot));
            prop_assert!(ab.subsumes(&a) && ab.subsumes(&b));
            prop_assert_eq!(ab.digest(b"k") == a.digest(b"k"), ab == a);
        }

        #[test]
        fn causally_later_write_always_wins(a in arb_entry(), b in arb_entry(), bump in 1u64..5) {
            // A write made by a server holding `a` (so its clock moved past a's timestamp
            // and its context includes a's) beats a, and beats anything a already beat.
            let later = Version { ts: a.version.ts + bump, dot: Dot::new(9, 1) };
            let w = Entry::write(Some(b"new".to_vec()), later, &a.ctx);
            let merged = b.clone().joined(&a).joined(&w);
            prop_assert!(merged.version >= w.version);
            let merged2 = w.clone().joined(&a);
            prop_assert_eq!(merged2.value, Some(b"new".to_vec()));
        }
    }

    #[test]
    fn tombstone_hashes_differ_from_values() {
        let v = Version {
            ts: 1,
            dot: Dot::new(1, 1),
        };
        let a = Entry::write(Some(vec![]), v, &VersionVector::new());
        let b = Entry::write(None, v, &VersionVector::new());
        assert_ne!(a.digest(b"k"), b.digest(b"k"));
        assert_ne!(a.digest(b"k"), a.digest(b"j"));
    }
}
