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
//! # Expiry
//! A write may carry an expiry time `expires` (an HLC time in µs: the write's own
//! timestamp plus its TTL), fixed when the write is stamped and replicated with it, so
//! every server knows the same instant. From that instant on every server reads the
//! entry as absent ([`Entry::live_at`]), and each server, on its own, replaces the
//! value by a tombstone **of the same version** ([`Entry::expired`]) — as Cassandra
//! turns an expired cell into a tombstone with the cell's timestamp. No new write (no
//! dot, no timestamp) is made, so an expiry can never overwrite a later write of the
//! key, nor be overwritten by an earlier one: the expiry belongs to one version, and
//! any newer write of the key (with its own TTL or none) simply supersedes it.
//!
//! # Merge laws
//! [`Entry::merge`] is a join in a semilattice: **commutative**, **associative** and
//! **idempotent** (proptested below), so replicas may exchange entries in any order,
//! any number of times, and converge to the same state. The context only grows. The
//! order it joins in is `(version, expired)`: for one version the only two states are
//! the written value and its expiry tombstone, and the tombstone wins.

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
    /// When the winning write expires (an HLC time in µs), if it was written with a
    /// TTL; see the module docs.
    pub expires: Option<u64>,
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
            expires: None,
        }
    }

    /// The same entry, expiring at HLC time `at` (µs); `None` never expires.
    pub fn expiring(mut self, at: Option<u64>) -> Self {
        self.expires = at;
        self
    }

    /// Whether the entry holds a value that has not expired at HLC time `now`.
    pub fn live_at(&self, now: u64) -> bool {
        self.value.is_some() && self.expires.is_none_or(|e| now < e)
    }

    /// Whether the entry holds a value whose expiry time `now` has reached (it is read
    /// as absent and is due to become [`Entry::expired`]).
    pub fn expired_at(&self, now: u64) -> bool {
        self.value.is_some() && self.expires.is_some_and(|e| now >= e)
    }

    /// The expiry tombstone of this entry: no value, same version, context and expiry.
    pub fn expired(&self) -> Entry {
        Entry {
            value: None,
            version: self.version,
            ctx: self.ctx.clone(),
            expires: self.expires,
        }
    }

    /// The entry as read at HLC time `now`: itself, or its expiry tombstone once it
    /// has expired.
    pub fn at(self, now: u64) -> Entry {
        if self.expired_at(now) {
            self.expired()
        } else {
            self
        }
    }

    /// Merge `other` into `self` (LWW winner, pointwise-max context). Returns whether
    /// `self` changed.
    pub fn merge(&mut self, other: &Entry) -> bool {
        let mut changed = false;
        if other.version > self.version {
            self.version = other.version;
            self.value = other.value.clone();
            self.expires = other.expires;
            changed = true;
        } else if other.version == self.version && other.value.is_none() && self.value.is_some() {
            // The same write, expired there: the expiry tombstone wins.
            self.value = None;
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
        (other.version < self.version
            || (other.version == self.version && (other.value.is_some() || self.value.is_none())))
            && other.ctx.le(&self.ctx)
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
        // Hashed only when set, so that entries without expiry hash as they always did
        // (a store's recorded digest root stays valid across the upgrade).
        if let Some(e) = self.expires {
            h.update(b"expires");
            h.update(&e.to_le_bytes());
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
            any::<bool>(),
        )
            .prop_map(|(origin, counter, extra, gone)| {
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
                // The expiry is the write's too: some writes have a TTL, and such a
                // write may be seen before or after it expired.
                let expires = (counter % 2 == 1).then_some(version.ts + 5);
                let e = Entry::write(
                    Some(format!("{origin}.{counter}").into_bytes()),
                    version,
                    &seen,
                )
                .expiring(expires);
                if gone && expires.is_some() {
                    e.expired()
                } else {
                    e
                }
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
    fn expiry_is_read_at_its_instant_and_its_tombstone_wins() {
        let v = Version {
            ts: 100,
            dot: Dot::new(1, 1),
        };
        let e = Entry::write(Some(b"x".to_vec()), v, &VersionVector::new()).expiring(Some(150));
        assert!(e.live_at(149) && !e.expired_at(149));
        assert!(!e.live_at(150) && e.expired_at(150));
        assert_eq!(e.clone().at(149), e);
        let gone = e.clone().at(150);
        assert_eq!((gone.value.as_ref(), gone.version), (None, v));
        // Either way round, the expiry tombstone wins; a later write wins over both.
        assert_eq!(e.clone().joined(&gone), gone);
        assert_eq!(gone.clone().joined(&e), gone);
        let later = Version {
            ts: 120,
            dot: Dot::new(2, 1),
        };
        let w = Entry::write(Some(b"y".to_vec()), later, &e.ctx);
        assert_eq!(gone.clone().joined(&w).value, Some(b"y".to_vec()));
        assert_eq!(gone.joined(&w).expires, None);
        // A digest sees the expiry only when there is one.
        let plain = Entry::write(Some(b"x".to_vec()), v, &VersionVector::new());
        assert_ne!(plain.digest(b"k"), e.digest(b"k"));
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
