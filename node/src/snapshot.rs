//! Snapshots: one server's whole store in a file, and a data directory built from one.
//!
//! # The file
//! ```text
//! "MESHKVSNAP\x01\n"                      12 bytes: magic and format version
//! u64 LE n, then n bytes                  the header (bincode): server id, incarnation,
//!                                         time taken, watermarks, entry count
//! per entry: u32 LE n, then n bytes       (key, entry) in bincode, in key order
//! u64 LE                                  xxh3-64 of every byte before it
//! ```
//!
//! # The laws
//! * **Consistent.** A snapshot is taken under the replica's lock in one step: its
//!   entries are exactly the store at one commit, and its watermarks (`seen`) are
//!   those of that same store, so every write the watermarks cover is in the entries
//!   (or was overwritten by one that is). Tombstones and member records are included;
//!   the write log and the acceptor state of the linearizable registers are not.
//! * **Checked.** A restore reads the whole file and refuses it, writing nothing, when
//!   the magic, a length, an encoding or the checksum is wrong.
//! * **No dot reused.** A restored directory holds entries, contexts and watermarks
//!   only: no write of its own. The server started on it draws a fresh incarnation (as
//!   at every start), so its new writes carry dots no earlier write had. Its peers see
//!   it as a server that was behind: anti-entropy brings it what came after the
//!   snapshot, and brings the peers anything only the snapshot held.
//! * **Registers.** The restored server's acceptors start empty, like a wiped disk:
//!   restore at most a minority of the servers from snapshots at once (see the
//!   operations guide).

use crate::storage::{Storage, StorageError};
use meshkv_core::{Entry, Limits, NodeId, Op, VersionVector};
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 12] = b"MESHKVSNAP\x01\n";

/// What went wrong with a snapshot (one line each).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file is not a snapshot, or is damaged.
    #[error("not a valid snapshot: {0}")]
    Damaged(String),
    /// The target data directory is not empty.
    #[error("data directory {0} is not empty: restore into a new directory")]
    NotEmpty(String),
    /// The store could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// A snapshot's entries: `(key, entry)` in key order.
pub type Entries = Vec<(Vec<u8>, Entry)>;

/// The header of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The server it was taken from.
    pub node: NodeId,
    /// That server's incarnation then.
    pub incarnation: NodeId,
    /// Unix time it was taken, in ms.
    pub taken_ms: u64,
    /// The store's watermarks then.
    pub seen: VersionVector,
    /// Number of entries.
    pub entries: u64,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SnapshotError> {
    bincode::serde::encode_to_vec(v, config())
        .map_err(|e| SnapshotError::Io(format!("cannot encode: {e}")))
}

/// Encode a snapshot.
pub fn encode(header: &Header, entries: &[(Vec<u8>, Entry)]) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(64 + entries.len() * 64);
    out.extend_from_slice(MAGIC);
    let h = enc(header)?;
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for e in entries {
        let b = enc(e)?;
        let n =
            u32::try_from(b.len()).map_err(|_| SnapshotError::Io("an entry over 4 GiB".into()))?;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&b);
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Decode and check a snapshot.
pub fn decode(bytes: &[u8]) -> Result<(Header, Entries), SnapshotError> {
    let bad = |why: &str| SnapshotError::Damaged(why.to_string());
    if bytes.len() < MAGIC.len() + 16 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("no snapshot header (wrong magic or version)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().map_err(|_| bad("short checksum"))?);
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(bad("checksum mismatch (the file is damaged or truncated)"));
    }
    let mut at = MAGIC.len();
    let mut take = |n: usize| -> Result<&[u8], SnapshotError> {
        let s = body
            .get(at..at.saturating_add(n))
            .ok_or_else(|| bad("truncated record"))?;
        at += n;
        Ok(s)
    };
    let hlen = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad("length"))?);
    let hlen = usize::try_from(hlen).map_err(|_| bad("header length"))?;
    let header: Header = bincode::serde::decode_from_slice(take(hlen)?, config())
        .map_err(|e| SnapshotError::Damaged(format!("header: {e}")))?
        .0;
    let mut entries = Vec::with_capacity(header.entries.min(1 << 20) as usize);
    for i in 0..header.entries {
        let n = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("length"))?);
        let rec = record(take(n as usize)?)
            .map_err(|e| SnapshotError::Damaged(format!("entry {i}: {e}")))?;
        entries.push(rec);
    }
    if at != body.len() {
        return Err(bad("bytes after the last entry"));
    }
    Ok((header, entries))
}

/// One `(key, entry)` record, whole, in the current shape or the one snapshots had
/// before expiry existed ([`meshkv_core::legacy`]).
fn record(b: &[u8]) -> Result<(Vec<u8>, Entry), String> {
    fn whole<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        match bincode::serde::decode_from_slice::<T, _>(b, config()) {
            Ok((v, used)) if used == b.len() => Ok(v),
            Ok((_, used)) => Err(format!("{} trailing bytes", b.len() - used)),
            Err(e) => Err(e.to_string()),
        }
    }
    whole::<(Vec<u8>, Entry)>(b).or_else(|e| {
        whole::<(Vec<u8>, meshkv_core::legacy::EntryV1)>(b)
            .map(|(k, v)| (k, v.into()))
            .map_err(|_| e)
    })
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The snapshot's header.
    pub header: Header,
    /// Entries written.
    pub entries: usize,
}

/// Entries per batch of a restore.
const RESTORE_BATCH: usize = 16_384;

/// Build data directory `dir` for server `id` from snapshot `bytes`: the entries and
/// watermarks, durably, and nothing else. `dir` must not exist or be empty. The
/// entries go in batches of [`RESTORE_BATCH`], the watermarks last: a restore cut
/// short leaves a store that is merely behind (a server started on it catches up from
/// its peers, as from an older copy), never one claiming what it lacks.
pub fn restore(bytes: &[u8], dir: &Path, id: NodeId) -> Result<Restored, SnapshotError> {
    let (header, entries) = decode(bytes)?;
    if let Ok(mut d) = std::fs::read_dir(dir) {
        if d.next().is_some() {
            return Err(SnapshotError::NotEmpty(dir.display().to_string()));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| SnapshotError::Io(format!("cannot create {}: {e}", dir.display())))?;
    // Any incarnation will do: the restore makes no write of its own.
    let rid = loop {
        let r: u64 = rand::random();
        if r != 0 {
            break r;
        }
    };
    let (mut storage, mut replica) = Storage::open(dir, id, rid, 64 << 20, Limits::default())?;
    let n = entries.len();
    // In batches of bounded size (one batch of a million entries would hold them all
    // several times over in memory), the entries first, then the watermarks: adopted
    // first, they would make every entry look like a stale echo of a dropped key.
    let mut rest = entries.into_iter();
    loop {
        let ops: Vec<Op> = rest
            .by_ref()
            .take(RESTORE_BATCH)
            .map(|(key, entry)| Op::Apply {
                key,
                entry,
                dots: Vec::new(),
                from: None,
                relay: true,
            })
            .collect();
        if ops.is_empty() {
            break;
        }
        let staged = replica.stage(ops, crate::clock::wall_micros());
        storage.persist(&staged, true)?;
        replica.commit(staged);
    }
    let staged = replica.stage(
        vec![Op::Adopt {
            seen: header.seen.clone(),
        }],
        crate::clock::wall_micros(),
    );
    storage.persist(&staged, true)?;
    replica.commit(staged);
    drop(storage);
    Ok(Restored { header, entries: n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshkv_core::{Dot, Version};

    fn sample() -> (Header, Vec<(Vec<u8>, Entry)>) {
        let mut seen = VersionVector::default();
        seen.raise(7, 2);
        let e = |v: Option<&[u8]>, c: u64| {
            Entry::write(
                v.map(<[u8]>::to_vec),
                Version {
                    ts: 10 * c,
                    dot: Dot::new(7, c),
                },
                &VersionVector::default(),
            )
        };
        let entries = vec![
            (b"a".to_vec(), e(Some(b"1"), 1)),
            (b"b".to_vec(), e(None, 2)),
        ];
        let h = Header {
            node: 3,
            incarnation: 7,
            taken_ms: 1,
            seen,
            entries: 2,
        };
        (h, entries)
    }

    #[test]
    fn round_trips() {
        let (h, entries) = sample();
        let bytes = encode(&h, &entries).expect("encode");
        let (h2, e2) = decode(&bytes).expect("decode");
        assert_eq!((h2, e2), (h, entries));
    }

    #[test]
    fn every_damage_is_refused() {
        let (h, entries) = sample();
        let bytes = encode(&h, &entries).expect("encode");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flipped byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n} accepted");
        }
    }

    #[test]
    fn restores_into_an_empty_directory_only() {
        let (h, entries) = sample();
        let bytes = encode(&h, &entries).expect("encode");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("data");
        let r = restore(&bytes, &d, 3).expect("restore");
        assert_eq!(r.entries, 2);
        assert!(matches!(
            restore(&bytes, &d, 3),
            Err(SnapshotError::NotEmpty(_))
        ));
    }
}
