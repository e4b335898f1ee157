//! Linearizable per-key registers: one CASPaxos register per key, with no leader.
//!
//! Plain clients (no session token) get linearizable GET, PUT, DELETE and conditional
//! PUT on a key. Each key is a single-decree Paxos register that is rewritten by every
//! operation (CASPaxos, Rystsov 2018): a proposer reads the register's current value
//! from a majority of the key's acceptors, applies the operation's change function to
//! it, and writes the result back to a majority.
//!
//! # Words
//! * **Ballot** — `(counter, node, rid)`, ordered lexicographically. `node` is the
//!   proposer's server id, `rid` its incarnation (random per process start, as for
//!   dots), `counter` grows with every attempt. Two attempts never share a ballot,
//!   including after a restart with a wiped disk, because `rid` differs; the counter
//!   only makes a retry outrank what it was rejected by.
//! * **Acceptor set** — the servers that vote on a key: [`acceptors`] picks an
//!   odd-sized set (all servers when their number is odd, all but one when it is even)
//!   by rendezvous hashing, so every key has a strict majority on one side of any
//!   split into two halves (with 4 servers: 3 acceptors, and a 2|2 split leaves one
//!   side with 2 of 3). Every server computes the same set from the same membership.
//! * **Acceptor state** ([`AcceptorState`]) — `promised`: the highest ballot it
//!   promised; `accepted`: the ballot of the value it holds; `entry`: that value, an
//!   [`Entry`] of the replicated store (`None`: never written). It is made durable
//!   (fsynced) **before** the acceptor answers; an acceptor that forgot a promise could
//!   let two values be chosen.
//!
//! # One operation ([`Proposer`])
//! 1. **Prepare** `b` to every acceptor. An acceptor with `promised ≤ b` promises `b`
//!    and answers its `(accepted, entry)`; otherwise it rejects with its promise.
//! 0. A read first **peeks**: a majority of acceptors report what they hold, without
//!    promising or writing anything. If they all hold the same accepted ballot, its
//!    value is chosen and no newer one is (a value chosen before the read began was
//!    accepted by a majority, which intersects this one), so the read returns it after
//!    one round trip and no fsync. Otherwise it runs the full round below.
//! 2. With promises from a majority the current value is the entry of the highest
//!    accepted ballot among them. If all of the majority report the *same* accepted
//!    ballot, that value is already chosen and a read returns it at once (one round
//!    trip); any value chosen later has a higher ballot, so nothing newer was missed.
//! 3. The change function runs on the current value: a read keeps it, a write makes a
//!    new entry (the adapter stamps it in the replicated store first, see below), a
//!    failed precondition keeps it and reports the current value.
//! 4. **Accept** `(b, entry)` to every acceptor. An acceptor with `promised ≤ b`
//!    stores it and answers; the operation is done when a majority accepted.
//!
//! A rejection (a competing proposer has a higher ballot) ends the attempt; the
//! adapter retries with a ballot above the one it saw, after a random back-off, until
//! its deadline, then answers `503`. An attempt that ends without an answer is
//! **indeterminate**: its accept may have reached some acceptors, and a later
//! operation may still adopt and so complete it.
//!
//! # One store
//! A write's new entry enters the replicated store like any write before its accept
//! goes out: the adapter first applies the register's current entry to its replica and
//! then stamps the new value there (`Op::Apply` + `Op::Put` in one batch), so the new
//! version is above the register's and the entry's causal context contains the
//! register's. Session readers, anti-entropy and convergence therefore see every
//! linearizable write. Linearizable operations read **only** the register: a session
//! write to the same key is visible to session readers and is replaced in the store by
//! the next linearizable write (as with Cassandra's lightweight transactions, do not mix
//! levels on one key's writes). A write whose accept failed is in its proposer's store
//! but not in the register, exactly like any indeterminate write.
//!
//! # Expiry
//! A write with a TTL stamps its entry with an expiry time ([`crate::entry`]). The
//! register honours it **through the register**, so that clocks cannot break
//! linearizability: an operation whose proposer finds the current value expired at
//! its own HLC time replaces it by the value's expiry tombstone (same version, same
//! history) before anything else — a read makes that an accept of its own, a write
//! builds on it (a conditional write then sees the key absent). From the moment that
//! accept is chosen every proposer reads the key as absent; before it, a proposer whose
//! clock is behind may still read the value, which is linearizable because the expiry
//! has not happened in the register yet. So a linearizable key expires at the first
//! operation on it at or after its expiry time, by the clock of the server running
//! that operation (clocks agree within the skew bound).
//!
//! # Laws (property-tested below and in the simulated schedules)
//! * An acceptor never accepts below its promise, and never lowers a promise.
//! * For one ballot at most one value is ever accepted by anyone (a ballot belongs to
//!   one attempt, which proposes one value).
//! * Once a value is chosen at ballot `b`, every value accepted at a higher ballot is
//!   that value or was derived from it by a change function (so histories are
//!   linearizable; the schedules below check it with [`crate::linearizable`]).

use crate::entry::Entry;
use crate::version::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A proposer's ballot; see the module docs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Grows with every attempt.
    pub counter: u64,
    /// The proposer's server id.
    pub node: NodeId,
    /// The proposer's incarnation.
    pub rid: NodeId,
}

impl Ballot {
    /// The ballot below every real one (nothing promised or accepted).
    pub const ZERO: Ballot = Ballot {
        counter: 0,
        node: 0,
        rid: 0,
    };

    /// The smallest ballot of proposer `(node, rid)` above `other` and above `own`.
    pub fn next(node: NodeId, rid: NodeId, own: u64, other: Ballot) -> Ballot {
        Ballot {
            counter: own.max(other.counter) + 1,
            node,
            rid,
        }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{:x}", self.counter, self.node, self.rid)
    }
}

/// How many earlier values a register value remembers ([`Value::recent`]).
pub const RECENT: usize = 32;

/// A register value: the store entry of the write that made it, and the versions of
/// the values before it (the tail of the register's history, which a retried write
/// uses to learn whether its earlier attempt took effect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The write's entry (a tombstone for a delete).
    pub entry: Entry,
    /// The versions of the [`RECENT`] values before it, oldest first. Shorter only
    /// when it holds the register's whole history.
    pub recent: Vec<crate::version::Version>,
}

impl Value {
    /// The value that replaces `before` with `entry`.
    pub fn after(before: Option<&Value>, entry: Entry) -> Value {
        let recent = match before {
            None => Vec::new(),
            Some(b) => {
                let mut r = b.recent.clone();
                r.push(b.entry.version);
                let cut = r.len().saturating_sub(RECENT);
                r.drain(..cut);
                r
            }
        };
        Value { entry, recent }
    }

    /// The register's history as far as this value knows it, this value last.
    fn chain(&self) -> Vec<crate::version::Version> {
        let mut c = self.recent.clone();
        c.push(self.entry.version);
        c
    }

    /// Whether [`Value::chain`] starts at the register's first value.
    fn whole(&self) -> bool {
        self.recent.len() < RECENT
    }
}

/// What one acceptor holds for one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorState {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// The ballot `value` was accepted at.
    pub accepted: Ballot,
    /// The register's value as this acceptor knows it (`None`: never written).
    pub value: Option<Value>,
}

/// A proposer's message to an acceptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaxosReq {
    /// A read's first try: what the acceptor holds, without a promise (nothing is
    /// written, so nothing is fsynced).
    Peek {
        /// The key.
        key: Vec<u8>,
        /// The attempt's ballot (only to match the answer).
        ballot: Ballot,
    },
    /// Phase 1.
    Prepare {
        /// The key.
        key: Vec<u8>,
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Phase 2.
    Accept {
        /// The key.
        key: Vec<u8>,
        /// The proposer's ballot.
        ballot: Ballot,
        /// The new value.
        value: Option<Value>,
    },
}

impl PaxosReq {
    /// The key the request is about.
    pub fn key(&self) -> &[u8] {
        match self {
            PaxosReq::Peek { key, .. }
            | PaxosReq::Prepare { key, .. }
            | PaxosReq::Accept { key, .. } => key,
        }
    }
}

/// An acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaxosResp {
    /// Answer to a peek: what the acceptor holds.
    Peeked {
        /// The attempt's ballot.
        ballot: Ballot,
        /// The ballot of `value`.
        accepted: Ballot,
        /// The value held.
        value: Option<Value>,
    },
    /// Phase 1 granted: what the acceptor holds.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The ballot of `value`.
        accepted: Ballot,
        /// The value held.
        value: Option<Value>,
    },
    /// Phase 2 granted.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
    },
    /// Refused: the acceptor promised a higher ballot.
    Reject {
        /// The ballot of the refused request.
        ballot: Ballot,
        /// The acceptor's promise.
        promised: Ballot,
    },
}

/// Test-only acceptor faults, to show that the schedules catch a broken acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptorFault {
    /// Accept below the promise (forgets that it promised).
    IgnorePromise,
}

/// An acceptor's step: the new state to make durable before answering (`None`: no
/// change), and the answer.
pub fn accept_step(state: &AcceptorState, req: &PaxosReq) -> (Option<AcceptorState>, PaxosResp) {
    accept_step_with(state, req, None)
}

/// [`accept_step`] with an optional planted fault (tests only).
pub fn accept_step_with(
    state: &AcceptorState,
    req: &PaxosReq,
    fault: Option<AcceptorFault>,
) -> (Option<AcceptorState>, PaxosResp) {
    match req {
        PaxosReq::Peek { ballot, .. } => (
            None,
            PaxosResp::Peeked {
                ballot: *ballot,
                accepted: state.accepted,
                value: state.value.clone(),
            },
        ),
        PaxosReq::Prepare { ballot, .. } => {
            if *ballot < state.promised {
                return (
                    None,
                    PaxosResp::Reject {
                        ballot: *ballot,
                        promised: state.promised,
                    },
                );
            }
            let resp = PaxosResp::Promise {
                ballot: *ballot,
                accepted: state.accepted,
                value: state.value.clone(),
            };
            if *ballot == state.promised {
                return (None, resp);
            }
            let next = AcceptorState {
                promised: *ballot,
                ..state.clone()
            };
            (Some(next), resp)
        }
        PaxosReq::Accept { ballot, value, .. } => {
            let ignore = fault == Some(AcceptorFault::IgnorePromise);
            if *ballot < state.promised && !ignore {
                return (
                    None,
                    PaxosResp::Reject {
                        ballot: *ballot,
                        promised: state.promised,
                    },
                );
            }
            let resp = PaxosResp::Accepted { ballot: *ballot };
            if state.accepted == *ballot && state.value == *value {
                return (None, resp);
            }
            let next = AcceptorState {
                promised: state.promised.max(*ballot),
                accepted: *ballot,
                value: value.clone(),
            };
            (Some(next), resp)
        }
    }
}

/// The acceptor set of `key` among `servers`: an odd number of them, picked by
/// rendezvous hashing (highest `hash(server, key)` first), returned sorted.
pub fn acceptors(key: &[u8], servers: &BTreeSet<NodeId>) -> Vec<NodeId> {
    let n = servers.len();
    let size = if n % 2 == 1 { n } else { n.saturating_sub(1) };
    let mut ranked: Vec<(u64, NodeId)> = servers
        .iter()
        .map(|s| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&s.to_be_bytes());
            h.update(key);
            (h.digest(), *s)
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let mut picked: Vec<NodeId> = ranked.into_iter().take(size).map(|(_, s)| s).collect();
    picked.sort_unstable();
    picked
}

/// How many acceptors of `n` make a majority.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// What an operation does to the register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Read the value.
    Read,
    /// Write a value (`None` deletes) if the condition holds.
    Write {
        /// The new value.
        value: Option<Vec<u8>>,
        /// The precondition.
        cond: Cond,
    },
}

/// A write's precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    /// None.
    Always,
    /// The current value's version is this one (`If-Match`).
    Version(crate::version::Version),
    /// There is no current value (absent or deleted; `If-None-Match: *`).
    Absent,
}

impl Cond {
    /// Whether the register's current value `cur` satisfies the condition.
    pub fn holds(&self, cur: Option<&Entry>) -> bool {
        let live = cur.filter(|e| e.value.is_some());
        match self {
            Cond::Always => true,
            Cond::Version(v) => live.is_some_and(|e| e.version == *v),
            Cond::Absent => live.is_none(),
        }
    }
}

/// What the proposer needs next from its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these requests (one per acceptor; the local one included).
    Send(Vec<(NodeId, PaxosReq)>),
    /// A majority promised: the write must be stamped in the store on top of
    /// `current` (apply `current`, then put the value), and the resulting entry handed
    /// to [`Proposer::propose`].
    Stamp {
        /// The register's current value.
        current: Option<Entry>,
    },
    /// Done: the operation took effect (or, for a failed precondition, read) at the
    /// register; `previous` is the value before it and `current` the value after.
    Done {
        /// The value before the operation.
        previous: Option<Entry>,
        /// The value after it.
        current: Option<Entry>,
        /// False when a write's precondition failed (nothing was written).
        applied: bool,
    },
    /// An acceptor promised a higher ballot: retry above it ([`Proposer::retry`]).
    Retry {
        /// The highest promise seen.
        above: Ballot,
    },
    /// A competing write intervened after one of this operation's accepts went out,
    /// and the register's history does not tell whether that accept took effect: the
    /// operation is indeterminate and must not be retried.
    Indeterminate,
    /// Nothing to do until more answers arrive.
    Wait,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Peek,
    Prepare,
    Stamping,
    Accept,
    Finished,
}

/// One attempt of one operation on one key, as a state machine; see the module docs.
///
/// # Retries
/// A write's accept may reach some acceptors and still lose; a later round can adopt
/// it, so a retry must never write the value a second time (another client could have
/// seen it in between). Attempts of one operation therefore carry the values they
/// proposed (`own`, each with the value it replaced, its basis), and a new attempt's
/// prepare decides from the register's current value `c` and the history tail `c`
/// carries ([`Value::recent`]). A proposal `E` on basis `P` can only ever enter the
/// history right after `P` (it loses for good once anything else follows `P` at a
/// higher ballot), so, with `E`/`P` the last proposal:
/// 1. `E` is in the tail, right after `P`: the write took effect; finish `c` (accept
///    it at the new ballot) and report `P` as the previous value.
/// 2. `c` is `P`: nothing was written since; propose `E` again (same version).
/// 3. `P` is in the tail and no proposal of ours is: competing writes followed `P`;
///    write afresh on top of `c` (or, if the precondition no longer holds, accept `c`
///    and report it) — a value chosen at the new ballot buries every older proposal.
/// 4. Anything else (an older proposal in the tail, or `P` out of its reach):
///    [`Next::Indeterminate`].
///
/// Without any accept sent, a retry is a fresh start.
#[derive(Clone, Debug)]
pub struct Proposer {
    key: Vec<u8>,
    change: Change,
    ballot: Ballot,
    acceptors: Vec<NodeId>,
    phase: Phase,
    promises: BTreeMap<NodeId, (Ballot, Option<Value>)>,
    accepts: BTreeSet<NodeId>,
    /// Values this operation proposed (earlier attempts included), each with the value
    /// it replaced.
    own: Vec<(Value, Option<Value>)>,
    previous: Option<Value>,
    proposed: Option<Value>,
    applied: bool,
    /// The proposer's own store entry for the key (see "One store").
    local: Option<Entry>,
    /// The proposer's HLC time (µs), against which expiry times are read (see
    /// "Expiry"); 0 (nothing has expired) until [`Proposer::set_now`].
    now: u64,
}

fn version_of(v: &Option<Value>) -> Option<crate::version::Version> {
    v.as_ref().map(|v| v.entry.version)
}

impl Proposer {
    /// A first attempt with `ballot` among `acceptors`.
    pub fn new(key: Vec<u8>, change: Change, ballot: Ballot, acceptors: Vec<NodeId>) -> Self {
        // A read first peeks: when a majority holds the same accepted value, that
        // value is chosen and nothing newer is, so the read needs no promise (and no
        // acceptor writes anything).
        let phase = if change == Change::Read {
            Phase::Peek
        } else {
            Phase::Prepare
        };
        Proposer {
            key,
            change,
            ballot,
            acceptors,
            phase,
            promises: BTreeMap::new(),
            accepts: BTreeSet::new(),
            own: Vec::new(),
            previous: None,
            proposed: None,
            applied: true,
            local: None,
            now: 0,
        }
    }

    /// The proposer's HLC time, read when the attempt starts (see "Expiry").
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Whether `register`'s value has expired at the proposer's time.
    fn expired(&self, register: &Option<Value>) -> bool {
        register
            .as_ref()
            .is_some_and(|v| v.entry.expired_at(self.now))
    }

    /// The proposer's store entry for the key, read when the attempt starts: a newer
    /// write in it (a session write) is absorbed into the register.
    pub fn set_local(&mut self, entry: Option<Entry>) {
        self.local = entry;
    }

    /// The next attempt of the same operation, with a higher `ballot`.
    pub fn retry(&self, ballot: Ballot) -> Proposer {
        let mut p = Proposer::new(
            self.key.clone(),
            self.change.clone(),
            ballot,
            self.acceptors.clone(),
        );
        p.own = self.own.clone();
        p.now = self.now;
        p
    }

    /// This attempt's ballot.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The operation.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// The acceptors this attempt asks.
    pub fn acceptor_set(&self) -> &[NodeId] {
        &self.acceptors
    }

    /// Whether any attempt of this operation sent an accept carrying a new value (an
    /// unanswered operation is then indeterminate).
    pub fn proposed_a_write(&self) -> bool {
        !self.own.is_empty()
    }

    /// The first requests: peeks for a read's first attempt, prepares otherwise.
    pub fn start(&self) -> Next {
        let key = &self.key;
        let ballot = self.ballot;
        let peek = self.phase == Phase::Peek;
        Next::Send(
            self.acceptors
                .iter()
                .map(|a| {
                    let req = if peek {
                        PaxosReq::Peek {
                            key: key.clone(),
                            ballot,
                        }
                    } else {
                        PaxosReq::Prepare {
                            key: key.clone(),
                            ballot,
                        }
                    };
                    (*a, req)
                })
                .collect(),
        )
    }

    /// Whether the proposer's store holds a session write newer than `register`
    /// (which the read must then absorb through a full round).
    fn local_is_newer(&self, register: &Option<Value>) -> bool {
        self.local.as_ref().is_some_and(|l| {
            !crate::replica::is_stamp(&l.version)
                && version_of(register).is_none_or(|r| l.version > r)
        })
    }

    fn quorum(&self) -> usize {
        majority(self.acceptors.len())
    }

    /// An acceptor's answer. Answers from outside the acceptor set, for other ballots or
    /// phases, and duplicates are ignored.
    pub fn on_response(&mut self, from: NodeId, resp: PaxosResp) -> Next {
        if !self.acceptors.contains(&from) || self.phase == Phase::Finished {
            return Next::Wait;
        }
        match resp {
            PaxosResp::Reject { ballot, promised } if ballot == self.ballot => {
                if promised > self.ballot {
                    self.phase = Phase::Finished;
                    return Next::Retry { above: promised };
                }
                Next::Wait
            }
            PaxosResp::Peeked {
                ballot,
                accepted,
                value,
            } if ballot == self.ballot && self.phase == Phase::Peek => {
                self.promises.insert(from, (accepted, value));
                if self.promises.len() < self.quorum() {
                    return Next::Wait;
                }
                let first = self.promises.values().next().cloned();
                let unanimous = self.promises.values().all(|p| Some(p) == first.as_ref());
                let value = first.and_then(|p| p.1);
                if unanimous && !self.local_is_newer(&value) && !self.expired(&value) {
                    self.phase = Phase::Finished;
                    let entry = value.map(|v| v.entry);
                    return Next::Done {
                        previous: entry.clone(),
                        current: entry,
                        applied: true,
                    };
                }
                // Not settled: a full round.
                self.promises.clear();
                self.phase = Phase::Prepare;
                self.start()
            }
            PaxosResp::Promise {
                ballot,
                accepted,
                value,
            } if ballot == self.ballot && self.phase == Phase::Prepare => {
                self.promises.insert(from, (accepted, value));
                if self.promises.len() < self.quorum() {
                    return Next::Wait;
                }
                self.decide()
            }
            PaxosResp::Accepted { ballot }
                if ballot == self.ballot && self.phase == Phase::Accept =>
            {
                self.accepts.insert(from);
                if self.accepts.len() < self.quorum() {
                    return Next::Wait;
                }
                self.phase = Phase::Finished;
                Next::Done {
                    previous: self.previous.clone().map(|v| v.entry),
                    current: self.proposed.clone().map(|v| v.entry),
                    applied: self.applied,
                }
            }
            _ => Next::Wait,
        }
    }

    /// A majority promised: find the current value and run the change function.
    fn decide(&mut self) -> Next {
        let mut best: Option<&(Ballot, Option<Value>)> = None;
        for p in self.promises.values() {
            if best.is_none_or(|b| p.0 > b.0) {
                best = Some(p);
            }
        }
        let (top, register) = best.cloned().unwrap_or((Ballot::ZERO, None));
        let chosen = self.promises.values().all(|(b, _)| *b == top);
        // A newer session write in this server's store joins the register's history
        // here, on top of its current value. Stamps (odd timestamps) are never
        // absorbed: a stamp whose accept lost must not take effect behind its
        // proposer's back (the rules below decide its fate).
        let mut current = register.clone();
        let mut absorbed = false;
        if let Some(l) = &self.local {
            let session_write = !crate::replica::is_stamp(&l.version);
            if session_write && version_of(&register).is_none_or(|r| l.version > r) {
                current = Some(Value::after(register.as_ref(), l.clone()));
                absorbed = true;
            }
        }
        // An expired value is replaced by its expiry tombstone (same version, same
        // history) through an accept, like an absorbed write: see "Expiry".
        if self.expired(&current) {
            if let Some(c) = current.as_mut() {
                c.entry = c.entry.expired();
            }
            absorbed = true;
        }
        let mut own_pending = false;
        if let Some((mine, basis_value)) = self.own.last().cloned() {
            let basis = version_of(&basis_value);
            let chain = current.as_ref().map(|c| c.chain()).unwrap_or_default();
            let whole = current.as_ref().is_none_or(|c| c.whole());
            let pos = |v: crate::version::Version| chain.iter().position(|c| *c == v);
            let after_basis = |i: usize| match basis {
                Some(b) => i > 0 && chain[i - 1] == b,
                None => i == 0 && whole,
            };
            match pos(mine.entry.version) {
                Some(i) if after_basis(i) => {
                    // 1. The last proposal took effect on its basis: finish it.
                    self.previous = basis_value;
                    self.applied = true;
                    let next = self.accept(current);
                    self.proposed = Some(mine);
                    return next;
                }
                Some(_) => {
                    self.phase = Phase::Finished;
                    return Next::Indeterminate;
                }
                None => {}
            }
            let older_seen = self.own.iter().any(|(v, _)| pos(v.entry.version).is_some());
            if older_seen {
                self.phase = Phase::Finished;
                return Next::Indeterminate;
            }
            if version_of(&current) == basis {
                // 2. Nothing was written since: the same value again.
                self.previous = basis_value;
                self.applied = true;
                return self.accept(Some(mine));
            }
            let basis_seen = match basis {
                Some(b) => pos(b).is_some(),
                None => whole,
            };
            if !basis_seen {
                // 4. Our write may be in the history beyond what we can see.
                self.phase = Phase::Finished;
                return Next::Indeterminate;
            }
            // 3. Competing writes followed our basis: start afresh on top of them.
            own_pending = true;
        }
        self.previous = current.clone();
        match &self.change {
            Change::Write { cond, .. } if cond.holds(current.as_ref().map(|v| &v.entry)) => {
                self.phase = Phase::Stamping;
                let entry = current.as_ref().map(|v| v.entry.clone());
                self.previous = current;
                Next::Stamp { current: entry }
            }
            change => {
                self.applied = matches!(change, Change::Read);
                // With an earlier proposal around, only a value accepted at this
                // ballot buries it: no shortcut.
                if chosen && !absorbed && !own_pending {
                    self.phase = Phase::Finished;
                    let entry = current.map(|v| v.entry);
                    return Next::Done {
                        previous: entry.clone(),
                        current: entry,
                        applied: self.applied,
                    };
                }
                self.accept(current)
            }
        }
    }

    /// Phase 2 with `value`.
    fn accept(&mut self, value: Option<Value>) -> Next {
        self.phase = Phase::Accept;
        self.proposed = value.clone();
        Next::Send(
            self.acceptors
                .iter()
                .map(|a| {
                    (
                        *a,
                        PaxosReq::Accept {
                            key: self.key.clone(),
                            ballot: self.ballot,
                            value: value.clone(),
                        },
                    )
                })
                .collect(),
        )
    }

    /// After [`Next::Stamp`]: the stamped entry; phase 2.
    pub fn propose(&mut self, entry: Entry) -> Next {
        if self.phase != Phase::Stamping {
            return Next::Wait;
        }
        let value = Value::after(self.previous.as_ref(), entry);
        self.own.push((value.clone(), self.previous.clone()));
        self.accept(Some(value))
    }

    /// The value of the write this attempt makes (for the adapter's stamp).
    pub fn write_value(&self) -> Option<Option<Vec<u8>>> {
        match &self.change {
            Change::Write { value, .. } => Some(value.clone()),
            Change::Read => None,
        }
    }
}

pub mod schedule;

#[cfg(test)]
mod tests;
