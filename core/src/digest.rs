//! The digest tree: a fixed two-level Merkle-style summary of a store.
//!
//! Each key falls into one of [`BUCKETS`] buckets by the top 16 bits of a stable hash
//! of the key. A bucket's digest is the XOR of [`Entry::digest`](crate::Entry::digest)
//! over its keys; a group's digest is the XOR of its [`BUCKETS_PER_GROUP`] buckets; the
//! root is the XOR of the [`GROUPS`] groups. XOR makes every level incremental: an
//! apply changes one bucket, one group and the root in O(1), and the tree is rebuilt
//! from storage at start-up by folding in every entry.
//!
//! Two servers hold identical stores exactly when their roots agree (up to 64-bit
//! collisions). When they differ, the sync walk compares the 256 group digests, then the
//! 256 bucket digests of each differing group, then the keys of each differing bucket,
//! and transfers only the differing entries — so the bytes moved grow with the size of
//! the difference, not with the size of the store.

use xxhash_rust::xxh3::xxh3_64;

/// Number of groups (first level).
pub const GROUPS: usize = 256;
/// Buckets per group (second level).
pub const BUCKETS_PER_GROUP: usize = 256;
/// Total number of buckets.
pub const BUCKETS: usize = GROUPS * BUCKETS_PER_GROUP;

/// The bucket a key belongs to.
pub fn bucket_of(key: &[u8]) -> u16 {
    (xxh3_64(key) >> 48) as u16
}

/// The group a bucket belongs to.
pub fn group_of(bucket: u16) -> u8 {
    (bucket >> 8) as u8
}

/// The incrementally maintained two-level digest.
#[derive(Clone, Debug)]
pub struct DigestTree {
    buckets: Vec<u64>,
    groups: Vec<u64>,
    root: u64,
}

impl Default for DigestTree {
    fn default() -> Self {
        DigestTree {
            buckets: vec![0; BUCKETS],
            groups: vec![0; GROUPS],
            root: 0,
        }
    }
}

impl DigestTree {
    /// An empty tree (the digest of an empty store is 0 everywhere).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the leaf digest of `key` from `old` to `new` (0 for absent).
    pub fn update(&mut self, key: &[u8], old: u64, new: u64) {
        let delta = old ^ new;
        if delta == 0 {
            return;
        }
        let b = bucket_of(key);
        self.buckets[b as usize] ^= delta;
        self.groups[group_of(b) as usize] ^= delta;
        self.root ^= delta;
    }

    /// The root digest.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// All group digests.
    pub fn groups(&self) -> &[u64] {
        &self.groups
    }

    /// The bucket digests of one group.
    pub fn group_buckets(&self, group: u8) -> &[u64] {
        let start = group as usize * BUCKETS_PER_GROUP;
        &self.buckets[start..start + BUCKETS_PER_GROUP]
    }

    /// The digest of one bucket.
    pub fn bucket(&self, bucket: u16) -> u64 {
        self.buckets[bucket as usize]
    }
}

/// Indices where two equally long digest lists differ.
pub fn differing(a: &[u64], b: &[u64]) -> Vec<usize> {
    a.iter()
        .zip(b.iter())
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_incremental_and_order_independent() {
        let mut a = DigestTree::new();
        let mut b = DigestTree::new();
        a.update(b"x", 0, 11);
        a.update(b"y", 0, 22);
        a.update(b"x", 11, 33);
        b.update(b"y", 0, 22);
        b.update(b"x", 0, 33);
        assert_eq!(a.root(), b.root());
        assert_eq!(a.groups(), b.groups());
        a.update(b"y", 22, 0);
        assert_ne!(a.root(), b.root());
        let g = differing(a.groups(), b.groups());
        assert_eq!(g, vec![group_of(bucket_of(b"y")) as usize]);
        let bk = differing(a.group_buckets(g[0] as u8), b.group_buckets(g[0] as u8));
        assert_eq!(bk.len(), 1);
        assert_eq!(
            g[0] * BUCKETS_PER_GROUP + bk[0],
            bucket_of(b"y") as usize,
            "the walk lands on the bucket of the changed key"
        );
    }
}
