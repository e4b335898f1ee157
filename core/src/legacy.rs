//! Record shapes written by earlier releases, read (never written) so that a data
//! directory or snapshot made before a field existed keeps working.
//!
//! bincode is not self-describing: a struct with a new field cannot decode an old
//! record. So a reader first decodes the current shape and, only when that fails,
//! decodes the old shape below and converts it. The two never overlap: an old record
//! is one field short of the current shape (so decoding it as the current one ends
//! early), and a current record is longer than the old shape (which the readers
//! refuse as trailing bytes).
//!
//! | shape | written by | differs in |
//! |-------|------------|------------|
//! | [`EntryV1`], [`ValueV1`], [`AcceptorStateV1`] | meshkv before expiry | no [`Entry::expires`] |
//! | [`MetaV1`] | meshkv before the dropped-entry timestamp | no [`Meta::gc_ts`] |

use crate::entry::Entry;
use crate::paxos::{AcceptorState, Ballot, Value};
use crate::replica::Meta;
use crate::version::{NodeId, Version, VersionVector};
use serde::Deserialize;
use std::collections::BTreeSet;

/// A [`Meta`] without `gc_ts` (read as 0: what that release did).
#[derive(Deserialize)]
pub struct MetaV1 {
    counter: u64,
    hlc: u64,
    seen: VersionVector,
    floor: VersionVector,
    members: BTreeSet<NodeId>,
}

impl From<MetaV1> for Meta {
    fn from(m: MetaV1) -> Meta {
        Meta {
            counter: m.counter,
            hlc: m.hlc,
            seen: m.seen,
            floor: m.floor,
            members: m.members,
            gc_ts: 0,
        }
    }
}

/// An [`Entry`] without `expires`.
#[derive(Deserialize)]
pub struct EntryV1 {
    value: Option<Vec<u8>>,
    version: Version,
    ctx: VersionVector,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Entry {
        Entry {
            value: e.value,
            version: e.version,
            ctx: e.ctx,
            expires: None,
        }
    }
}

/// A register [`Value`] holding an [`EntryV1`].
#[derive(Deserialize)]
pub struct ValueV1 {
    entry: EntryV1,
    recent: Vec<Version>,
}

impl From<ValueV1> for Value {
    fn from(v: ValueV1) -> Value {
        Value {
            entry: v.entry.into(),
            recent: v.recent,
        }
    }
}

/// An [`AcceptorState`] holding a [`ValueV1`].
#[derive(Deserialize)]
pub struct AcceptorStateV1 {
    promised: Ballot,
    accepted: Ballot,
    value: Option<ValueV1>,
}

impl From<AcceptorStateV1> for AcceptorState {
    fn from(s: AcceptorStateV1) -> AcceptorState {
        AcceptorState {
            promised: s.promised,
            accepted: s.accepted,
            value: s.value.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Dot;
    use serde::Serialize;

    /// The old shape, as the old release wrote it.
    #[derive(Serialize)]
    struct Old<'a> {
        value: &'a Option<Vec<u8>>,
        version: Version,
        ctx: &'a VersionVector,
    }

    fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
        let cfg = bincode::config::standard();
        match bincode::serde::decode_from_slice::<T, _>(b, cfg) {
            Ok((v, used)) if used == b.len() => Some(v),
            _ => None,
        }
    }

    #[test]
    fn old_entries_decode_only_as_old_and_new_only_as_new() {
        let cfg = bincode::config::standard();
        let version = Version {
            ts: 42,
            dot: Dot::new(3, 4),
        };
        let ctx: VersionVector = [(3, 4), (5, 1)].into_iter().collect();
        for value in [Some(b"v".to_vec()), None] {
            let old = bincode::serde::encode_to_vec(
                Old {
                    value: &value,
                    version,
                    ctx: &ctx,
                },
                cfg,
            )
            .expect("encodes");
            assert!(decode::<Entry>(&old).is_none());
            let e: Entry = decode::<EntryV1>(&old).expect("old shape").into();
            assert_eq!(e, Entry::write(value.clone(), version, &ctx));
            for expires in [None, Some(99)] {
                let new = bincode::serde::encode_to_vec(e.clone().expiring(expires), cfg)
                    .expect("encodes");
                assert!(decode::<EntryV1>(&new).is_none());
                assert_eq!(decode::<Entry>(&new), Some(e.clone().expiring(expires)));
            }
        }
    }

    /// The meta record as the release before `gc_ts` wrote it.
    #[derive(Serialize)]
    struct OldMeta<'a> {
        counter: u64,
        hlc: u64,
        seen: &'a VersionVector,
        floor: &'a VersionVector,
        members: &'a BTreeSet<NodeId>,
    }

    #[test]
    fn an_old_meta_decodes_only_as_old_and_a_new_one_only_as_new() {
        let cfg = bincode::config::standard();
        let seen: VersionVector = [(1, 7), (2, 3)].into_iter().collect();
        let floor: VersionVector = [(1, 5)].into_iter().collect();
        let members: BTreeSet<NodeId> = [1, 2].into_iter().collect();
        let old = bincode::serde::encode_to_vec(
            OldMeta {
                counter: 9,
                hlc: 1_000,
                seen: &seen,
                floor: &floor,
                members: &members,
            },
            cfg,
        )
        .expect("encodes");
        assert!(decode::<Meta>(&old).is_none());
        let m: Meta = decode::<MetaV1>(&old).expect("old shape").into();
        let want = Meta {
            counter: 9,
            hlc: 1_000,
            seen,
            floor,
            members,
            gc_ts: 0,
        };
        assert_eq!(m, want);
        let new = Meta { gc_ts: 77, ..want };
        let bytes = bincode::serde::encode_to_vec(&new, cfg).expect("encodes");
        assert!(decode::<MetaV1>(&bytes).is_none());
        assert_eq!(decode::<Meta>(&bytes), Some(new));
    }
}
