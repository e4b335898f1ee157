//! The replica: one server's replication state, as a pure state machine.
//!
//! No I/O happens here. The adapter (the `node` crate) feeds it operations and events
//! and carries out what it returns: records to persist, entries to push to peers,
//! answers to sync requests.
//!
//! # Writing: stage → persist → commit
//! All mutations go through one *commit loop* in the adapter, which takes every queued
//! [`Op`] at once (group commit) and calls [`Replica::stage`]. Staging assigns dots and
//! timestamps to local puts, merges incoming entries, and returns a [`Staged`] batch:
//! the final entry of every changed key, new log records, and the metadata (write
//! counter, clock, watermarks) that must be on disk *before* any of it is visible. The
//! adapter writes the batch atomically and fsyncs; only then does it call
//! [`Replica::commit`], which installs the batch in memory (reads see only committed,
//! durable state) and returns the pushes to send. Dots and timestamps are never handed
//! out before the batch that carries the new counter and clock is durable, so a restart
//! never reuses a dot or goes back in time.
//!
//! # Reads and the session check
//! A client remembers, per key, the dot of the version it last wrote or read. A read
//! carrying such a dependency is answered `Dep` (`ERR_DEP`) unless this server's
//! context for the key covers the dot (or its watermark does: then the write is held
//! here, or was a delete whose tombstone has been dropped) — even if the server holds
//! a newer concurrent write, and even if it lacks the key. Only then is a missing
//! value `Missing` (`ERR_KEY`). See [`Replica::read`].
//!
//! # The write log and watermarks
//! Every write dot this server has incorporated is recorded in the log `dot → key`.
//! `seen[o]` is the **watermark** for origin `o`: every write of `o` with a counter up to
//! `seen[o]` is held here. It advances only contiguously (a dot `seen[o] + 1` arriving,
//! or one already logged), so a watermark is a promise, and it is what peers exchange
//! in sync requests.
//!
//! # Propagation
//! * **Eager push.** After commit, every changed key is pushed to connected peers, over
//!   one ordered stream per peer. A server relays what it learned from others too (so
//!   chains converge), except to the peer it came from and to peers that told us they
//!   are directly connected to the write's origin (they get it first-hand).
//!   What an anti-entropy round pulled is **not** relayed ([`Op::Apply`]'s `relay`):
//!   every server runs its own rounds with every peer it links to, so after a heal each
//!   pulls what it lacks once, instead of also receiving it from each peer that pulled
//!   it first (relaying round entries made a 5-server heal move 3.5× the bytes). A
//!   server two hops from the writes pulls them from the middle one's log at its next
//!   round with it (within the sync interval).
//! * **Anti-entropy, fast path.** Periodically and on (re)connect a server sends its
//!   watermarks ([`SyncReq`]); the peer answers with the current entry of every key its
//!   log maps from dots above those watermarks, in bounded batches ([`SyncResp`]).
//!   This moves O(missed writes) bytes.
//! * **Anti-entropy, tree walk.** When the peer's log no longer reaches back far enough
//!   (`fallback`: it was trimmed below our watermark), or watermarks agree but digests
//!   do not, the requester walks the [digest tree](crate::digest) and pulls only the
//!   differing entries, pushing back the ones the peer lacks. After a complete walk it
//!   adopts the peer's watermarks; the range it adopted is not in its own log, so it
//!   raises its `floor` there (it can no longer serve that range as a log suffix).
//!
//! # When a log entry or tombstone may be dropped
//! * A log record `o:c` is dropped once every known member has reported `seen[o] ≥ c`
//!   (every server is known to hold it). A member that never reported, or is down,
//!   blocks this — up to [`Limits::max_log`] records; past that the oldest records are
//!   dropped anyway and `floor` rises, and a server that comes back from below the floor
//!   catches up by the tree walk instead of the log suffix.
//! * A tombstone is dropped once every known member's watermark covers its whole
//!   context (every server holds the delete or something newer). An incoming entry for
//!   an absent key whose whole context is already covered by our watermarks is a stale
//!   echo of such a dropped key and is ignored, so nothing is resurrected.

use crate::digest::{bucket_of, DigestTree};

/// Prefix of the reserved keys that hold the cluster's membership: `MEMBER_PREFIX` +
/// the decimal server id, whose value is the server's QUIC address (`host:port`) while
/// it is a member and a tombstone once it was removed. They replicate, converge and
/// persist like any key, so a membership change made on one server reaches every
/// server (and survives restarts); clients cannot read or write them, and
/// [`Replica::dump`] leaves them out.
pub const MEMBER_PREFIX: &[u8] = b"\0meshkv/member/";

/// The member key of server `id`.
pub fn member_key(id: NodeId) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(id.to_string().as_bytes());
    k
}

/// The server id a member key names, if `key` is one.
pub fn member_of(key: &[u8]) -> Option<NodeId> {
    std::str::from_utf8(key.strip_prefix(MEMBER_PREFIX)?)
        .ok()?
        .parse()
        .ok()
}

/// The member record an entry of a member key holds: `(id, Some(address))` for a
/// member, `(id, None)` for a removed server; `None` for any other key.
pub fn member_record(key: &[u8], entry: &Entry) -> Option<(NodeId, Option<String>)> {
    let id = member_of(key)?;
    let addr = entry
        .value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Some((id, addr))
}

/// Whether `version` is a linearizable register's stamp ([`Op::Stamp`]: odd
/// timestamp) rather than a client's session write (even).
pub fn is_stamp(version: &Version) -> bool {
    version.ts & 1 == 1
}

/// Whether `key` is reserved (not for clients).
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(b"\0meshkv/")
}
use crate::entry::Entry;
use crate::version::{Dot, NodeId, Version, VersionVector};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Tunables of the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum number of log records kept when some member is not known to hold them.
    pub max_log: usize,
    /// Approximate byte budget of one sync response.
    pub sync_batch_bytes: usize,
    /// The largest offset, in µs, by which a timestamp from a peer or a client may be
    /// ahead of this server's wall clock and still move its clock (see [`crate::hlc`]).
    pub max_clock_offset: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_log: 4_000_000,
            sync_batch_bytes: 1 << 20,
            max_clock_offset: 500_000,
        }
    }
}

/// Durable per-server metadata, written with every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The last write counter handed out by this server.
    pub counter: u64,
    /// The highest clock value handed out or seen.
    pub hlc: u64,
    /// Watermarks: every write of origin `o` up to `seen[o]` is held here.
    pub seen: VersionVector,
    /// Log records up to `floor[o]` were dropped (or never held).
    pub floor: VersionVector,
    /// Every other server known to be a member: log records and tombstones are kept
    /// until each of them is known to hold them, across restarts too.
    pub members: BTreeSet<NodeId>,
    /// The highest timestamp of an entry this server dropped (a collected tombstone,
    /// a forgotten key): a write to a key with no entry is stamped above it, so it
    /// still follows a delete whose tombstone is gone (see `stage_put`).
    pub gc_ts: u64,
}

/// A mutation for the commit loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A client write (value `None` deletes). `seen_ts` is the highest timestamp the
    /// client has seen, so the write is stamped after everything it depends on.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value, or `None` for a delete.
        value: Option<Vec<u8>>,
        /// The highest timestamp the client has seen.
        seen_ts: u64,
        /// The session's dependency for the key (the last write of it the session
        /// wrote or read): the write is refused with [`Outcome::Dep`] unless this
        /// replica holds that write or a later one, so a write never overwrites (nor
        /// reports as previous) something older than what the session saw.
        dep: Option<Dot>,
        /// Time to live in µs: the write expires at its timestamp plus this.
        ttl: Option<u64>,
    },
    /// A linearizable write, stamped before its register's accept goes out (see
    /// [`crate::paxos`]): merge the register's `current` value, then write on top of
    /// it. Its timestamp is odd (a client write's is even), so that every server can
    /// tell a register's stamp from a session write; see [`is_stamp`].
    Stamp {
        /// The key.
        key: Vec<u8>,
        /// The new value, or `None` for a delete.
        value: Option<Vec<u8>>,
        /// The register's current value.
        current: Option<Entry>,
        /// Time to live in µs, as for [`Op::Put`].
        ttl: Option<u64>,
    },
    /// Turn the key's entry into its expiry tombstone ([`Entry::expired`]) if its
    /// expiry time has come by this server's clock. Every server does this on its own
    /// (no dot, no timestamp, nothing relayed); see [`crate::entry`].
    Expire {
        /// The key.
        key: Vec<u8>,
    },
    /// An entry from a peer (push, sync answer or tree walk).
    Apply {
        /// The key.
        key: Vec<u8>,
        /// The peer's entry for it.
        entry: Entry,
        /// The log dots the peer attached (write dots that map to this key).
        dots: Vec<Dot>,
        /// The peer it came from (not relayed back there).
        from: Option<NodeId>,
        /// Relay a change it makes to the other peers: yes for a push, no for what an
        /// anti-entropy round pulled (every server pulls for itself; see
        /// "Propagation" in the module docs).
        relay: bool,
    },
    /// After a complete tree walk against a peer: adopt its watermarks.
    Adopt {
        /// The peer's watermarks at the start of the walk.
        seen: VersionVector,
    },
    /// Drop log records and tombstones every member is known to hold.
    Trim,
    /// After a tree walk: drop `key` if its whole context is covered by `covered_by`
    /// (the peer's watermarks) — the peer has incorporated every write that made this
    /// entry and no longer holds the key, so it was deleted and the tombstone collected
    /// (this server kept it only through a rolled-back disk).
    Forget {
        /// The key.
        key: Vec<u8>,
        /// The peer's watermarks at the start of the walk.
        covered_by: VersionVector,
    },
}

/// What became of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A put was stamped with `version`; `previous` is the entry it superseded.
    Put {
        /// The new write's version.
        version: Version,
        /// What the server held for the key before.
        previous: Option<Entry>,
    },
    /// An apply; `changed` when it altered the store.
    Applied {
        /// Whether the store changed.
        changed: bool,
    },
    /// Watermarks adopted / trim done.
    Done,
    /// A put refused: this replica does not hold the session's dependency yet.
    Dep,
}

/// One change of a key's winning state within a batch (what watchers are told).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its new value; `None`: deleted or expired.
    pub value: Option<Vec<u8>>,
    /// The winning write.
    pub version: Version,
    /// The change is the expiry of the write `version`.
    pub expired: bool,
}

/// Per changed key: the dots that changed it and where they came from (`None`: here).
type RelaySource = (Vec<Dot>, BTreeSet<Option<NodeId>>);

/// A batch ready to be persisted; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Staged {
    /// The final entry of each key changed in this batch.
    pub writes: BTreeMap<Vec<u8>, Entry>,
    /// Every change of a key's winning state, in the order the batch's ops made them:
    /// a new winning version, or the expiry of the current one (a merge that only
    /// grows a context is no change). Several writes to one key in one batch are
    /// several changes, though only the last is in `writes`.
    pub changes: Vec<Change>,
    /// Keys to delete from the store (dropped tombstones).
    pub removes: Vec<Vec<u8>>,
    /// New log records.
    pub log: Vec<(Dot, Vec<u8>)>,
    /// Log records to drop.
    pub log_removes: Vec<Dot>,
    /// Metadata after this batch.
    pub meta: Meta,
    /// One outcome per op, in order.
    pub outcomes: Vec<Outcome>,
    /// The digest root of the store once this batch is committed: what the store on
    /// disk must add up to after it (the storage records it to detect lost records).
    pub root: u64,
    relay: BTreeMap<Vec<u8>, RelaySource>,
    log_index: HashSet<Dot>,
}

impl Staged {
    /// True when nothing needs to be written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.removes.is_empty()
            && self.log.is_empty()
            && self.log_removes.is_empty()
    }
}

/// An entry to push to some peers after a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// The key.
    pub key: Vec<u8>,
    /// Its committed entry.
    pub entry: Entry,
    /// Write dots that changed it in this batch.
    pub dots: Vec<Dot>,
    /// The peers to push it to.
    pub targets: Vec<NodeId>,
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The value and its version.
    Found {
        /// The value.
        value: Vec<u8>,
        /// Its version (the client's new dependency).
        version: Version,
    },
    /// No value (never written, or deleted at `version`).
    Missing {
        /// The tombstone's version, when the key was deleted.
        version: Option<Version>,
    },
    /// This server has not incorporated the client's dependency (`ERR_DEP`).
    Dep,
}

/// A sync request: "here is what I hold".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReq {
    /// The requester's watermarks.
    pub seen: VersionVector,
    /// The requester's digest root.
    pub root: u64,
}

/// One key in a sync answer or a tree-walk fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncItem {
    /// The key.
    pub key: Vec<u8>,
    /// The responder's current entry.
    pub entry: Entry,
    /// The log dots above the requester's watermarks that map to this key.
    pub dots: Vec<Dot>,
}

impl SyncItem {
    /// The op that merges this item, received from peer `from`.
    pub fn into_op(self, from: NodeId) -> Op {
        Op::Apply {
            key: self.key,
            entry: self.entry,
            dots: self.dots,
            from: Some(from),
            relay: false,
        }
    }
}

/// A sync answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResp {
    /// Entries the requester is missing.
    pub items: Vec<SyncItem>,
    /// The batch budget ran out: ask again.
    pub more: bool,
    /// Some of what the requester misses is below our log floor: walk the tree.
    pub fallback: bool,
    /// The responder's watermarks when answering.
    pub seen: VersionVector,
    /// The responder's digest root when answering.
    pub root: u64,
}

/// What to do after applying a sync answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncNext {
    /// In step with the peer (or it will catch up with us): nothing more now.
    Done,
    /// The answer was partial: ask again at once.
    Again,
    /// The log cannot close the gap: walk the digest tree.
    Walk,
}

/// What we know about another server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    /// Whether we hold a live connection to it.
    pub connected: bool,
    /// The servers it told us it is directly connected to.
    pub links: BTreeSet<NodeId>,
    /// Its watermarks as last reported.
    pub seen: Option<VersionVector>,
    /// The origin id of its current incarnation, once it said so.
    pub rid: Option<NodeId>,
}

/// What the clock bound has refused (see [`crate::hlc`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClockSkew {
    /// Timestamps from peers or clients that were further ahead of the wall clock than
    /// [`Limits::max_clock_offset`] and so did not move this server's clock.
    pub ahead: u64,
    /// The largest such lead seen, in µs.
    pub max_ahead_micros: u64,
}

/// One server's replicated state.
#[derive(Clone, Debug)]
pub struct Replica {
    id: NodeId,
    rid: NodeId,
    max_ts: u64,
    skew: ClockSkew,
    pub(crate) store: BTreeMap<Vec<u8>, Entry>,
    digest: DigestTree,
    hlc: crate::hlc::Hlc,
    counter: u64,
    seen: VersionVector,
    floor: VersionVector,
    /// See [`Meta::gc_ts`].
    gc_ts: u64,
    pub(crate) log: BTreeMap<Dot, Vec<u8>>,
    peers: BTreeMap<NodeId, PeerView>,
    tombstones: BTreeSet<Vec<u8>>,
    /// Live entries with an expiry time, by that time.
    expiring: BTreeSet<(u64, Vec<u8>)>,
    pub(crate) limits: Limits,
}

/// The session check, for reads and writes alike: whether a replica whose entry for
/// the key is `entry` and whose watermarks are `seen` holds the write `dep` (or a
/// later one of the key). The key's context covers what was merged into it; the
/// watermark covers the rest: every write up to it is held here or superseded —
/// including a delete whose tombstone has since been dropped with its key.
fn satisfies(entry: Option<&Entry>, seen: &VersionVector, dep: Option<Dot>) -> bool {
    match dep {
        None => true,
        Some(d) => entry.is_some_and(|e| e.covers(d)) || seen.covers(d),
    }
}

impl Replica {
    /// A new, empty replica for server `id`.
    pub fn new(id: NodeId, limits: Limits) -> Self {
        Replica {
            id,
            rid: id,
            max_ts: 0,
            skew: ClockSkew::default(),
            store: BTreeMap::new(),
            digest: DigestTree::new(),
            hlc: crate::hlc::Hlc::new(0),
            counter: 0,
            seen: VersionVector::new(),
            floor: VersionVector::new(),
            gc_ts: 0,
            log: BTreeMap::new(),
            peers: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            expiring: BTreeSet::new(),
            limits,
        }
    }

    /// Rebuild a replica from persisted state (at start-up), as a new incarnation whose
    /// writes carry the origin `rid` (see [`crate::version`]): a store is never trusted
    /// to be the newest copy of itself (it may be a restored backup, or sled may have
    /// dropped a damaged suffix), so the dots of earlier lives are left to the peers and
    /// this life starts a fresh counter under a fresh origin. `wall` is the wall clock
    /// in µs: entries' timestamps move the clock only up to `wall` plus the offset bound,
    /// the clock's own persisted value (what this server handed out) in full.
    pub fn restore(
        id: NodeId,
        rid: NodeId,
        limits: Limits,
        meta: Meta,
        entries: impl IntoIterator<Item = (Vec<u8>, Entry)>,
        log: impl IntoIterator<Item = (Dot, Vec<u8>)>,
        wall: u64,
    ) -> Self {
        let mut r = Replica::new(id, limits);
        r.rid = rid;
        for (k, e) in entries {
            r.digest.update(&k, 0, e.digest(&k));
            r.observe_bounded(e.version.ts, wall, false);
            if e.value.is_none() {
                r.tombstones.insert(k.clone());
            }
            if let (Some(_), Some(at)) = (&e.value, e.expires) {
                r.expiring.insert((at, k.clone()));
            }
            r.store.insert(k, e);
        }
        r.log = log.into_iter().collect();
        r.hlc.observe(meta.hlc);
        r.gc_ts = meta.gc_ts;
        r.seen = meta.seen;
        r.floor = meta.floor;
        for m in meta.members {
            r.add_member(m);
        }
        // Extend the persisted watermarks over logged dots (the log may hold dots that
        // arrived out of order).
        let origins: BTreeSet<NodeId> = r.log.keys().map(|d| d.origin).collect();
        for o in origins {
            let mut s = r.seen.get(o);
            while r.log.contains_key(&Dot::new(o, s + 1)) {
                s += 1;
            }
            r.seen.raise(o, s);
        }
        r
    }

    /// A new, empty replica for server `id` whose writes carry the origin `rid`.
    pub fn with_rid(id: NodeId, rid: NodeId, limits: Limits) -> Self {
        let mut r = Replica::new(id, limits);
        r.rid = rid;
        r
    }

    /// The origin id of this incarnation: the `origin` of the dots it hands out.
    pub fn rid(&self) -> NodeId {
        self.rid
    }

    /// The highest timestamp of any version this server has stored or been shown by a
    /// peer (unbounded: what the cluster has actually issued).
    pub fn max_ts(&self) -> u64 {
        self.max_ts
    }

    /// The clock-bound counters.
    pub fn clock_skew(&self) -> ClockSkew {
        self.skew
    }

    /// The hybrid clock's current value.
    pub fn clock(&self) -> u64 {
        self.hlc.last()
    }

    /// The HLC time now, given the wall clock `wall` (µs), without ticking: what expiry
    /// times are compared with.
    pub fn now(&self, wall: u64) -> u64 {
        self.hlc.last().max(wall)
    }

    /// The earliest expiry time of a live entry, if any (when the next [`Op::Expire`]
    /// is due).
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiring.first().map(|(at, _)| *at)
    }

    /// Up to `limit` keys whose live entry has expired at HLC time `now` (for
    /// [`Op::Expire`]).
    pub fn expired_keys(&self, now: u64, limit: usize) -> Vec<Vec<u8>> {
        self.expiring
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// A client's "highest timestamp seen", capped at what the cluster has issued (a
    /// forged token cannot go beyond it) and observed within the offset bound; returns
    /// the capped value.
    fn observe_client(&mut self, seen_ts: u64, wall: u64) -> u64 {
        let cap = self
            .max_ts
            .max(wall.saturating_add(self.limits.max_clock_offset));
        let seen_ts = seen_ts.min(cap);
        self.observe_bounded(seen_ts, wall, true);
        seen_ts
    }

    /// Let a timestamp from elsewhere move the clock, but never further than the offset
    /// bound ahead of the wall clock; `count` records a refused lead.
    fn observe_bounded(&mut self, ts: u64, wall: u64, count: bool) {
        self.max_ts = self.max_ts.max(ts);
        let bound = wall.saturating_add(self.limits.max_clock_offset);
        if ts > bound {
            if count {
                self.skew.ahead += 1;
                self.skew.max_ahead_micros = self.skew.max_ahead_micros.max(ts - wall);
            }
            self.hlc.observe(bound);
        } else {
            self.hlc.observe(ts);
        }
    }

    /// This server's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current metadata (what would be persisted now).
    pub fn meta(&self) -> Meta {
        Meta {
            counter: self.counter,
            hlc: self.hlc.last(),
            seen: self.seen.clone(),
            floor: self.floor.clone(),
            members: self.peers.keys().copied().collect(),
            gc_ts: self.gc_ts,
        }
    }

    /// Stage a batch of ops (see the module docs). `wall` is the wall clock in µs.
    pub fn stage(&mut self, ops: Vec<Op>, wall: u64) -> Staged {
        let mut st = Staged {
            meta: self.meta(),
            ..Default::default()
        };
        for op in ops {
            let outcome = match op {
                Op::Put {
                    key,
                    value,
                    seen_ts,
                    dep,
                    ttl,
                } => {
                    if satisfies(self.current(&st, &key), &st.meta.seen, dep) {
                        self.stage_put(&mut st, key, (value, ttl), seen_ts, wall, false)
                    } else {
                        Outcome::Dep
                    }
                }
                Op::Stamp {
                    key,
                    value,
                    current,
                    ttl,
                } => {
                    let seen_ts = current.as_ref().map_or(0, |e| e.version.ts);
                    if let Some(e) = current {
                        self.stage_apply(&mut st, key.clone(), e, Vec::new(), (None, true), wall);
                    }
                    self.stage_put(&mut st, key, (value, ttl), seen_ts, wall, true)
                }
                Op::Expire { key } => {
                    let now = self.now(wall);
                    match self.current(&st, &key) {
                        Some(e) if e.expired_at(now) => {
                            let gone = e.expired();
                            st.changes.push(Change {
                                key: key.clone(),
                                value: None,
                                version: gone.version,
                                expired: true,
                            });
                            st.removes.retain(|k| *k != key);
                            st.writes.insert(key, gone);
                            Outcome::Applied { changed: true }
                        }
                        _ => Outcome::Applied { changed: false },
                    }
                }
                Op::Apply {
                    key,
                    entry,
                    dots,
                    from,
                    relay,
                } => self.stage_apply(&mut st, key, entry, dots, (from, relay), wall),
                Op::Adopt { seen } => {
                    for (o, c) in seen.iter() {
                        if o != self.rid && c > st.meta.seen.get(o) {
                            st.meta.seen.set(o, c);
                            st.meta.floor.raise(o, c);
                            self.extend(&mut st, o);
                        }
                    }
                    Outcome::Done
                }
                Op::Trim => {
                    self.stage_trim(&mut st);
                    Outcome::Done
                }
                Op::Forget { key, covered_by } => {
                    if self
                        .current(&st, &key)
                        .is_some_and(|e| e.ctx.le(&covered_by))
                    {
                        st.writes.remove(&key);
                        st.relay.remove(&key);
                        if !st.removes.contains(&key) {
                            st.removes.push(key);
                        }
                    }
                    Outcome::Done
                }
            };
            st.outcomes.push(outcome);
        }
        st.meta.counter = self.counter;
        st.meta.hlc = self.hlc.last();
        let dropped = st
            .removes
            .iter()
            .filter_map(|k| self.store.get(k))
            .map(|e| e.version.ts)
            .max();
        st.meta.gc_ts = self.gc_ts.max(dropped.unwrap_or(0));
        st.root = self.root_after(&st);
        st
    }

    /// The digest root once `st` is committed, computed as [`Replica::commit`] applies
    /// it: the writes, then the removes.
    fn root_after(&self, st: &Staged) -> u64 {
        let mut root = self.digest.root();
        for (key, entry) in &st.writes {
            let old = self.store.get(key).map_or(0, |e| e.digest(key));
            root ^= old ^ entry.digest(key);
        }
        for key in &st.removes {
            let now = match st.writes.get(key) {
                Some(e) => Some(e),
                None => self.store.get(key),
            };
            root ^= now.map_or(0, |e| e.digest(key));
        }
        root
    }

    fn current<'a>(&'a self, st: &'a Staged, key: &[u8]) -> Option<&'a Entry> {
        st.writes.get(key).or_else(|| self.store.get(key))
    }

    fn stage_put(
        &mut self,
        st: &mut Staged,
        key: Vec<u8>,
        (value, ttl): (Option<Vec<u8>>, Option<u64>),
        seen_ts: u64,
        wall: u64,
        stamp: bool,
    ) -> Outcome {
        let previous = self.current(st, &key).cloned();
        let seen_ts = self.observe_client(seen_ts, wall);
        // This write follows everything the client saw and the key's current version,
        // even when those are further ahead than the clock may move. With no current
        // version the key may have had a delete whose tombstone was collected: the
        // write follows every entry this server ever dropped, or it could be stamped
        // below that delete (by a clock behind the others by more than the offset
        // bound, which cannot move it that far) and lose to it where the tombstone is
        // still held, or win where it is not.
        let floor = previous
            .as_ref()
            .map_or(self.gc_ts, |p| p.version.ts)
            .max(seen_ts);
        let tick = self.hlc.tick(wall);
        let ts = tick.max(floor.saturating_add(1));
        // Odd for a register's stamp, even for a client write (see `Op::Stamp`).
        let parity = if stamp { ts | 1 } else { ts + (ts & 1) };
        if ts == tick {
            self.hlc.observe(parity);
        }
        let ts = parity;
        self.max_ts = self.max_ts.max(ts);
        self.counter += 1;
        let dot = Dot::new(self.rid, self.counter);
        let version = Version { ts, dot };
        let ctx = previous.as_ref().map(|p| p.ctx.clone()).unwrap_or_default();
        let entry = Entry::write(value, version, &ctx).expiring(ttl.map(|t| ts.saturating_add(t)));
        // What the write replaced, as of its own timestamp (an expired value is gone).
        let previous = previous.map(|p| p.at(ts));
        st.changes.push(Change {
            key: key.clone(),
            value: entry.value.clone(),
            version,
            expired: false,
        });
        st.removes.retain(|k| *k != key);
        st.writes.insert(key.clone(), entry);
        st.log.push((dot, key.clone()));
        st.log_index.insert(dot);
        st.meta.seen.set(self.rid, self.counter);
        let r = st.relay.entry(key).or_default();
        r.0.push(dot);
        r.1.insert(None);
        Outcome::Put { version, previous }
    }

    fn stage_apply(
        &mut self,
        st: &mut Staged,
        key: Vec<u8>,
        entry: Entry,
        dots: Vec<Dot>,
        (from, relay): (Option<NodeId>, bool),
        wall: u64,
    ) -> Outcome {
        self.observe_bounded(entry.version.ts, wall, true);
        let changed = match self.current(st, &key) {
            Some(cur) if cur.subsumes(&entry) => false,
            Some(cur) => {
                let merged = cur.clone().joined(&entry);
                if merged.version != cur.version || merged.value.is_none() != cur.value.is_none() {
                    st.changes.push(Change {
                        key: key.clone(),
                        value: merged.value.clone(),
                        version: merged.version,
                        expired: merged.value.is_none() && merged.expires.is_some(),
                    });
                }
                st.removes.retain(|k| *k != key);
                st.writes.insert(key.clone(), merged);
                true
            }
            None => {
                if entry.ctx.le(&st.meta.seen) {
                    // A stale echo of a key whose tombstone we already dropped.
                    false
                } else {
                    st.changes.push(Change {
                        key: key.clone(),
                        value: entry.value.clone(),
                        version: entry.version,
                        expired: entry.value.is_none() && entry.expires.is_some(),
                    });
                    st.writes.insert(key.clone(), entry);
                    true
                }
            }
        };
        let mut new_dots = Vec::new();
        for d in dots {
            if d.counter == 0
                || st.meta.seen.covers(d)
                || self.log.contains_key(&d)
                || st.log_index.contains(&d)
            {
                continue;
            }
            st.log.push((d, key.clone()));
            st.log_index.insert(d);
            new_dots.push(d);
        }
        for d in &new_dots {
            self.extend(st, d.origin);
        }
        if changed && relay {
            let r = st.relay.entry(key).or_default();
            r.0.extend(new_dots);
            r.1.insert(from);
        }
        Outcome::Applied { changed }
    }

    /// Advance the staged watermark of `origin` over contiguously logged dots.
    fn extend(&self, st: &mut Staged, origin: NodeId) {
        let mut s = st.meta.seen.get(origin);
        loop {
            let next = Dot::new(origin, s + 1);
            if self.log.contains_key(&next) || st.log_index.contains(&next) {
                s += 1;
            } else {
                break;
            }
        }
        st.meta.seen.raise(origin, s);
    }

    fn stage_trim(&mut self, st: &mut Staged) {
        // What every member is known to hold.
        let mut safe = st.meta.seen.clone();
        for (id, p) in &self.peers {
            if *id == self.id {
                continue;
            }
            let theirs = p.seen.clone().unwrap_or_default();
            let origins: Vec<(NodeId, u64)> = safe.iter().collect();
            for (o, c) in origins {
                safe.set(o, c.min(theirs.get(o)));
            }
        }
        let mut removed: Vec<Dot> = Vec::new();
        for (o, c) in safe.iter() {
            removed.extend(
                self.log
                    .range(Dot::new(o, 0)..=Dot::new(o, c))
                    .map(|(d, _)| *d),
            );
        }
        // Bound the log even when a member is away for long.
        let keep = self.log.len().saturating_sub(removed.len());
        if keep > self.limits.max_log {
            let removed_set: HashSet<Dot> = removed.iter().copied().collect();
            let mut excess = keep - self.limits.max_log;
            // Oldest first within each origin, origins with the most records first.
            let mut per_origin: BTreeMap<NodeId, Vec<Dot>> = BTreeMap::new();
            for d in self.log.keys() {
                if !removed_set.contains(d) {
                    per_origin.entry(d.origin).or_default().push(*d);
                }
            }
            while excess > 0 {
                let Some((&o, _)) = per_origin.iter().max_by_key(|(_, v)| v.len()) else {
                    break;
                };
                let v = per_origin
                    .get_mut(&o)
                    .map(std::mem::take)
                    .unwrap_or_default();
                let n = excess.min(v.len() / 2 + 1).min(v.len());
                removed.extend(v[..n].iter().copied());
                excess -= n;
                per_origin.insert(o, v[n..].to_vec());
            }
        }
        for d in &removed {
            st.meta.floor.raise(d.origin, d.counter);
        }
        st.log_removes.extend(removed);
        // Tombstones every member holds (or has superseded).
        let members_seen: Vec<VersionVector> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, p)| p.seen.clone().unwrap_or_default())
            .collect();
        for k in &self.tombstones {
            let Some(e) = self.store.get(k) else {
                continue;
            };
            if e.value.is_none()
                && e.ctx.le(&st.meta.seen)
                && members_seen.iter().all(|s| e.ctx.le(s))
                && !st.writes.contains_key(k)
            {
                st.removes.push(k.clone());
            }
        }
    }

    /// Install a persisted batch; returns the pushes to send.
    pub fn commit(&mut self, st: Staged) -> Vec<Relay> {
        let expected_root = st.root;
        for (key, entry) in st.writes {
            let old = self.store.get(&key);
            if let Some((Some(_), Some(at))) = old.map(|o| (&o.value, o.expires)) {
                self.expiring.remove(&(at, key.clone()));
            }
            if let (Some(_), Some(at)) = (&entry.value, entry.expires) {
                self.expiring.insert((at, key.clone()));
            }
            let old = old.map_or(0, |e| e.digest(&key));
            self.digest.update(&key, old, entry.digest(&key));
            if entry.value.is_none() {
                self.tombstones.insert(key.clone());
            } else {
                self.tombstones.remove(&key);
            }
            self.store.insert(key, entry);
        }
        for key in st.removes {
            self.tombstones.remove(&key);
            if let Some(e) = self.store.remove(&key) {
                if let (Some(_), Some(at)) = (&e.value, e.expires) {
                    self.expiring.remove(&(at, key.clone()));
                }
                self.digest.update(&key, e.digest(&key), 0);
            }
        }
        debug_assert_eq!(self.digest.root(), expected_root, "Staged::root");
        for d in st.log_removes {
            self.log.remove(&d);
        }
        for (d, k) in st.log {
            self.log.insert(d, k);
        }
        self.seen = st.meta.seen;
        self.floor = st.meta.floor;
        self.gc_ts = st.meta.gc_ts;
        let connected: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for (key, (dots, from)) in st.relay {
            let Some(entry) = self.store.get(&key) else {
                continue;
            };
            let targets: Vec<NodeId> = connected
                .iter()
                .copied()
                .filter(|t| !from.contains(&Some(*t)))
                .filter(|t| {
                    // A write is relayed to every connected peer but the one it came
                    // from and its origin. (Link announcements are not trusted to skip
                    // a peer: a freshly cut link looks up until the idle timeout.)
                    let rid = self.peers.get(t).and_then(|p| p.rid);
                    from.contains(&None)
                        || dots.is_empty()
                        || dots.iter().any(|d| Some(d.origin) != rid)
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            out.push(Relay {
                key,
                entry: entry.clone(),
                dots,
                targets,
            });
        }
        out
    }

    /// Answer a read with the session check (see the module docs). `dep` is the dot of
    /// the version the client last wrote or read for this key.
    /// `seen_ts` (the highest timestamp the client has seen) moves the clock within the
    /// offset bound of `wall`.
    pub fn read(&mut self, key: &[u8], dep: Option<Dot>, seen_ts: u64, wall: u64) -> ReadOutcome {
        self.observe_client(seen_ts, wall);
        let now = self.now(wall);
        let e = self.store.get(key);
        if !satisfies(e, &self.seen, dep) {
            return ReadOutcome::Dep;
        }
        match e {
            Some(e) if e.live_at(now) => ReadOutcome::Found {
                value: e.value.clone().unwrap_or_default(),
                version: e.version,
            },
            Some(e) => ReadOutcome::Missing {
                version: Some(e.version),
            },
            None => ReadOutcome::Missing { version: None },
        }
    }

    /// The committed entry of a key.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.store.get(key)
    }

    /// Live `(key, value)` pairs in key-byte order (tombstones, expired values and
    /// reserved keys left out), at the clock's last value.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.dump_at(self.hlc.last())
    }

    /// [`Replica::dump`] at HLC time `now`.
    pub fn dump_at(&self, now: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store
            .iter()
            .filter(|(k, e)| !is_reserved(k) && e.live_at(now))
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// Up to `limit` live client entries with keys in `[start, end)` (`end` `None`:
    /// unbounded), in key-byte order, as `(key, value, version)`; with `keys_only` the
    /// values are left out (`None`). Tombstones, values expired at HLC time `now` and
    /// reserved keys are skipped.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
        now: u64,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>, Version)> {
        use std::ops::Bound;
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.store
            .range::<[u8], _>((Bound::Included(start), hi))
            .filter(|(k, e)| !is_reserved(k) && e.live_at(now))
            .filter_map(|(k, e)| {
                let v = e.value.as_ref()?;
                Some((k.clone(), (!keys_only).then(|| v.clone()), e.version))
            })
            .take(limit)
            .collect()
    }

    /// Every entry held (tombstones and reserved keys included), in key order, with
    /// the watermarks of this same store: a consistent snapshot.
    pub fn snapshot(&self) -> (VersionVector, Vec<(Vec<u8>, Entry)>) {
        let entries = self
            .store
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        (self.seen().clone(), entries)
    }

    /// Number of keys held, tombstones included.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Number of log records held.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The digest tree.
    pub fn digest(&self) -> &DigestTree {
        &self.digest
    }

    /// The digest root.
    pub fn root(&self) -> u64 {
        self.digest.root()
    }

    /// This server's watermarks.
    pub fn seen(&self) -> &VersionVector {
        &self.seen
    }

    /// This server's log floor.
    pub fn floor(&self) -> &VersionVector {
        &self.floor
    }

    // ----- membership and links -----

    /// Record `id` as a cluster member (its acknowledgement is needed before trimming).
    pub fn add_member(&mut self, id: NodeId) {
        if id != self.id {
            self.peers.entry(id).or_default();
        }
    }

    /// Forget member `id` (it was removed from the cluster): trimming no longer waits
    /// for it, and its watermarks are no longer kept.
    pub fn remove_member(&mut self, id: NodeId) {
        self.peers.remove(&id);
    }

    /// The membership recorded in the member keys: `(id, Some(addr))` for members,
    /// `(id, None)` for removed servers.
    pub fn member_records(&self) -> Vec<(NodeId, Option<String>)> {
        let start = MEMBER_PREFIX.to_vec();
        self.store
            .range(start..)
            .take_while(|(k, _)| k.starts_with(MEMBER_PREFIX))
            .filter_map(|(k, e)| member_record(k, e))
            .collect()
    }

    /// Known members other than this server.
    pub fn members(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// A connection to `id` came up or went down.
    pub fn set_connected(&mut self, id: NodeId, up: bool) {
        if id == self.id {
            return;
        }
        let p = self.peers.entry(id).or_default();
        p.connected = up;
        if !up {
            p.links.clear();
        }
    }

    /// Servers we are connected to.
    pub fn connected(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A peer told us the origin id of its current incarnation. A new incarnation may
    /// hold less than the old one reported (a wiped or restored disk, a lost unsynced
    /// suffix), so its watermarks are forgotten until it reports again: trimming waits
    /// for them (or a tombstone could be collected that the new incarnation never saw,
    /// and a write it makes meanwhile would outlive the delete).
    pub fn set_peer_rid(&mut self, id: NodeId, rid: NodeId) {
        if id != self.id {
            let p = self.peers.entry(id).or_default();
            if p.rid.is_some_and(|old| old != rid) {
                p.seen = None;
            }
            p.rid = Some(rid);
        }
    }

    /// A peer told us which servers it is directly connected to.
    pub fn set_peer_links(&mut self, id: NodeId, links: BTreeSet<NodeId>) {
        if id != self.id {
            self.peers.entry(id).or_default().links = links;
        }
    }

    /// A peer reported its watermarks (in a sync request or answer).
    pub fn note_peer_seen(&mut self, id: NodeId, seen: &VersionVector) {
        if id == self.id {
            return;
        }
        let p = self.peers.entry(id).or_default();
        match &mut p.seen {
            Some(s) => {
                s.join(seen);
            }
            None => p.seen = Some(seen.clone()),
        }
    }

    /// What we know of each peer.
    pub fn peers(&self) -> &BTreeMap<NodeId, PeerView> {
        &self.peers
    }

    // ----- anti-entropy -----

    /// The request to send a peer.
    pub fn sync_request(&self) -> SyncReq {
        SyncReq {
            seen: self.seen.clone(),
            root: self.root(),
        }
    }

    /// Answer a peer's sync request from the log (see the module docs).
    pub fn answer_sync(&mut self, from: NodeId, req: &SyncReq) -> SyncResp {
        self.note_peer_seen(from, &req.seen);
        let mut items: BTreeMap<&[u8], Vec<Dot>> = BTreeMap::new();
        let mut budget = self.limits.sync_batch_bytes as isize;
        let mut more = false;
        let mut fallback = false;
        'origins: for (o, hi) in self.seen.iter() {
            let lo = req.seen.get(o);
            if lo >= hi {
                continue;
            }
            if lo < self.floor.get(o) {
                fallback = true;
                continue;
            }
            for (d, key) in self.log.range(Dot::new(o, lo + 1)..=Dot::new(o, hi)) {
                if budget <= 0 {
                    more = true;
                    break 'origins;
                }
                let slot = items.entry(key.as_slice()).or_default();
                if slot.is_empty() {
                    budget -= self
                        .store
                        .get(key)
                        .map_or(0, |e| e.approx_size() + key.len())
                        as isize;
                }
                slot.push(*d);
            }
        }
        // A record whose key is gone (a delete whose tombstone was collected while the
        // record stayed, for a member that since went back to a restored disk) cannot
        // be served as a suffix: its dot would never reach the requester, whose
        // watermark would stop below it for good. Send it to the tree walk instead,
        // which forgets what the requester kept of the key and adopts our watermarks.
        let mut collected = false;
        let items = items
            .into_iter()
            .filter_map(|(k, dots)| match self.store.get(k) {
                Some(e) => Some(SyncItem {
                    key: k.to_vec(),
                    entry: e.clone(),
                    dots,
                }),
                None => {
                    collected = true;
                    None
                }
            })
            .collect();
        SyncResp {
            items,
            more,
            fallback: fallback || collected,
            seen: self.seen.clone(),
            root: self.root(),
        }
    }

    /// Turn a sync answer into ops for the commit loop.
    pub fn sync_ops(&mut self, from: NodeId, resp: &SyncResp) -> Vec<Op> {
        self.note_peer_seen(from, &resp.seen);
        resp.items
            .iter()
            .map(|it| it.clone().into_op(from))
            .collect()
    }

    /// After the ops of a sync answer are committed: what next.
    pub fn sync_next(&self, resp: &SyncResp) -> SyncNext {
        if resp.more {
            SyncNext::Again
        } else if resp.fallback || (resp.seen == self.seen && resp.root != self.root()) {
            // Either the log cannot serve us, or we both promise exactly the same
            // writes yet the stores differ: only the tree walk can settle it. (A peer
            // that is merely behind us catches up through its own sync requests.)
            SyncNext::Walk
        } else {
            SyncNext::Done
        }
    }

    // ----- tree walk -----

    /// Digests of the given groups' buckets.
    pub fn group_buckets(&self, groups: &[u8]) -> Vec<(u8, Vec<u64>)> {
        groups
            .iter()
            .map(|g| (*g, self.digest.group_buckets(*g).to_vec()))
            .collect()
    }

    /// `(key, leaf digest)` of every key in the given buckets.
    pub fn bucket_keys(&self, buckets: &[u16]) -> Vec<(Vec<u8>, u64)> {
        let want: HashSet<u16> = buckets.iter().copied().collect();
        self.store
            .iter()
            .filter(|(k, _)| want.contains(&bucket_of(k)))
            .map(|(k, e)| (k.clone(), e.digest(k)))
            .collect()
    }

    /// Compare the peer's keys of some buckets with ours: keys to fetch from the peer,
    /// and keys to give it (it lacks them or holds a different entry).
    pub fn walk_diff(
        &self,
        buckets: &[u16],
        theirs: &[(Vec<u8>, u64)],
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mine: BTreeMap<Vec<u8>, u64> = self.bucket_keys(buckets).into_iter().collect();
        let theirs_map: BTreeMap<&[u8], u64> =
            theirs.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
        let mut fetch = Vec::new();
        let mut give = Vec::new();
        for (k, h) in &theirs_map {
            if mine.get(*k) != Some(h) {
                fetch.push(k.to_vec());
            }
        }
        for (k, h) in &mine {
            if theirs_map.get(k.as_slice()) != Some(h) {
                give.push(k.clone());
            }
        }
        (fetch, give)
    }

    /// After a walk against a peer whose watermarks were `peer_seen`: of the keys this
    /// server holds and the peer lacks or holds differently (`give`), the entries to
    /// push to the peer, and [`Op::Forget`]s for the ones the peer has provably deleted
    /// and collected (their whole context is covered by `peer_seen`, yet the peer lacks
    /// them): pushing those would only be ignored as stale echoes, and keeping them
    /// would resurrect a deleted key here for good.
    pub fn walk_gifts(
        &self,
        give: &[Vec<u8>],
        peer_lacks: &BTreeSet<Vec<u8>>,
        peer_seen: &VersionVector,
    ) -> (Vec<SyncItem>, Vec<Op>) {
        let mut gifts = Vec::new();
        let mut forget = Vec::new();
        for it in self.entries(give) {
            if peer_lacks.contains(&it.key) && it.entry.ctx.le(peer_seen) {
                forget.push(Op::Forget {
                    key: it.key,
                    covered_by: peer_seen.clone(),
                });
            } else {
                gifts.push(it);
            }
        }
        (gifts, forget)
    }

    /// Our entries for `keys` (absent keys skipped).
    pub fn entries(&self, keys: &[Vec<u8>]) -> Vec<SyncItem> {
        keys.iter()
            .filter_map(|k| {
                self.store.get(k).map(|e| SyncItem {
                    key: k.clone(),
                    entry: e.clone(),
                    dots: Vec::new(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
