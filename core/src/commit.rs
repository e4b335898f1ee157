//! The write path of a node, as a state machine with no I/O: group commit, durability
//! before anything is visible, then replies and relays.
//!
//! The real server's commit thread and the simulator both run every write — a client's
//! put, a peer's push, a sync round's entries, trims, adopts — through a [`Committer`],
//! so the order of these steps is written once (with [`crate::sync::SyncRound`], the
//! anti-entropy round, it is the part of the node core that exists so far; timers,
//! readiness and link handling are still the server's). The caller owns the
//! [`Replica`], the disk and the network:
//!
//! ```text
//!   committer.submit(Some(ticket), ops)         queue a job (ops that commit together)
//!   loop { match committer.poll(replica, wall) {
//!       Some(Output::Persist { batch, fsync }) => { write batch atomically, and
//!                                         fsync if asked; committer.persisted(replica, batch) }
//!       Some(Output::Sync) => { fsync everything written; committer.synced() }
//!       Some(Output::Reply { ticket, outcomes }) => answer the job's submitter
//!       Some(Output::Push { targets, msg })      => send msg to each target
//!       Some(Output::Members(records))           => act on changed member records
//!       None => break } }
//!   wake at committer.poll_timeout() (the wall time a deferred fsync is due) and poll
//! ```
//!
//! # The rules
//! * **Group commit.** Every job queued while no batch is being persisted goes into the
//!   next batch (up to [`MAX_JOBS_PER_BATCH`]), staged in one [`Replica::stage`]: one
//!   fsync for all of them.
//! * **One batch at a time.** A new batch is staged only after the previous one was
//!   reported persisted (staging assumes the replica holds everything staged before).
//! * **Durable before acknowledged.** Nothing of a batch is committed to the replica —
//!   so nothing is read, acknowledged or relayed — before the driver reports it
//!   persisted. Then come member changes (acted on before anyone learns the write
//!   is done), the replies, in submission order, and the relays. A batch holding a
//!   *durable* job (every [`Committer::submit`]: a client's write, a member change, a
//!   register's chosen value) is fsynced before it is reported persisted.
//! * **Replica writes are fsynced late.** A batch made only of *relaxed* jobs —
//!   another server's writes arriving as pushes or through a sync round, and
//!   housekeeping that is simply done again if lost: trims and expiry sweeps
//!   ([`Committer::submit_relaxed`]) — is written atomically (entries, contexts,
//!   log records and watermarks together) but not fsynced; [`Output::Sync`] fsyncs
//!   every such batch within [`SyncPolicy::delay`] of the first, or once
//!   [`SyncPolicy::batches`] of them are waiting, and any fsynced batch covers them
//!   all (the store is one log, so an fsync makes everything written before it
//!   durable). A crash — of the process (`kill -9`: the store may still hold them
//!   in its own buffer) or of the machine — loses a suffix of them, never a batch in
//!   the middle and never part of one: the server comes back *behind* — a consistent state it had
//!   before — as a new incarnation, and anti-entropy brings back what it lacks from
//!   the servers that acknowledged those writes (each fsynced them before
//!   acknowledging). Sessions stay safe: a token that names a lost write makes this
//!   server answer "dependency not met" until it has caught up.

use crate::proto::PeerMsg;
use crate::replica::{member_record, Op, Outcome, Replica, Staged};
use crate::version::NodeId;
use std::collections::VecDeque;

/// Jobs staged together in one batch at most.
pub const MAX_JOBS_PER_BATCH: usize = 8192;

/// Identifies a job's submitter in its [`Output::Reply`].
pub type Ticket = u64;

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Write this batch atomically, fsync it when `fsync` says so, then hand it back
    /// with [`Committer::persisted`]. Only one is out at a time. (A batch with nothing
    /// to write may be persisted as a no-op; it still has to be handed back.)
    Persist {
        /// The batch.
        batch: Staged,
        /// Whether it (with everything written before it) must be durable before
        /// it is handed back.
        fsync: bool,
    },
    /// Fsync everything written so far, then call [`Committer::synced`]. Never out
    /// together with a [`Output::Persist`].
    Sync,
    /// A job's outcomes, one per op, in order.
    Reply {
        /// The job's ticket.
        ticket: Ticket,
        /// Its outcomes.
        outcomes: Vec<Outcome>,
    },
    /// Push `msg` to each of `targets`.
    Push {
        /// The peers.
        targets: Vec<NodeId>,
        /// The message (a [`PeerMsg::Push`]).
        msg: PeerMsg,
    },
    /// Member records changed in the last batch: `(id, address)`, `None` = removed.
    Members(Vec<(NodeId, Option<String>)>),
}

struct Job {
    ticket: Option<Ticket>,
    ops: Vec<Op>,
    /// Must be fsynced before it is acknowledged (see the module docs).
    durable: bool,
}

/// When written but unsynced (relaxed) batches are fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPolicy {
    /// At most this long (µs of the node's clock) after the first of them was
    /// written; 0 fsyncs every batch before it is reported persisted.
    pub delay: u64,
    /// Or as soon as this many are waiting (the next batch is fsynced).
    pub batches: usize,
}

impl SyncPolicy {
    /// Every batch fsynced before it is visible.
    pub const STRICT: SyncPolicy = SyncPolicy {
        delay: 0,
        batches: 1,
    };

    /// Relaxed batches fsynced within `ms` milliseconds or `batches` batches (at
    /// least 1); `ms == 0` is [`SyncPolicy::STRICT`].
    pub fn after_millis(ms: u64, batches: usize) -> SyncPolicy {
        match ms {
            0 => SyncPolicy::STRICT,
            ms => SyncPolicy {
                delay: ms.saturating_mul(1000),
                batches: batches.max(1),
            },
        }
    }
}

impl Default for SyncPolicy {
    /// Replica writes fsynced within 50 ms, or after 64 batches.
    fn default() -> Self {
        SyncPolicy {
            delay: 50_000,
            batches: 64,
        }
    }
}

/// The batch out for persisting.
struct InFlight {
    /// Its jobs: (ticket, number of ops).
    jobs: Vec<(Option<Ticket>, usize)>,
    fsync: bool,
    /// The node's clock when it was staged.
    staged: u64,
}

/// The write path's state (see the module docs).
#[derive(Default)]
pub struct Committer {
    queue: VecDeque<Job>,
    in_flight: Option<InFlight>,
    outputs: VecDeque<Output>,
    policy: SyncPolicy,
    /// Batches written but not fsynced: (clock when the first was staged, how many).
    unsynced: Option<(u64, usize)>,
    /// An [`Output::Sync`] is out.
    syncing: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight.as_ref().map(|j| j.jobs.len()))
            .field("outputs", &self.outputs.len())
            .field("unsynced", &self.unsynced)
            .field("syncing", &self.syncing)
            .finish()
    }
}

impl Committer {
    /// An idle write path with the default [`SyncPolicy`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An idle write path that fsyncs relaxed batches as `policy` says.
    pub fn with_policy(policy: SyncPolicy) -> Self {
        Committer {
            policy,
            ..Self::default()
        }
    }

    /// Queue a durable job: `ops` commit together, fsynced before anything of them is
    /// visible; a ticket asks for an [`Output::Reply`].
    pub fn submit(&mut self, ticket: Option<Ticket>, ops: Vec<Op>) {
        self.queue.push_back(Job {
            ticket,
            ops,
            durable: true,
        });
    }

    /// Queue a relaxed job: other servers' writes (a sync round's entries), a trim or
    /// an expiry sweep, which may be fsynced late (see the module docs).
    pub fn submit_relaxed(&mut self, ticket: Option<Ticket>, ops: Vec<Op>) {
        self.queue.push_back(Job {
            ticket,
            ops,
            durable: false,
        });
    }

    /// Batches written but not yet fsynced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.map_or(0, |(_, n)| n)
    }

    /// The node's clock (µs) at which a deferred fsync is due, if one is waiting:
    /// the driver calls [`Committer::poll`] then (and at the latest after
    /// [`SyncPolicy::delay`] of its own time, in case its clock went back).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.unsynced
            .map(|(since, _)| since.saturating_add(self.policy.delay))
    }

    /// The fsync of the last [`Output::Sync`] is done.
    pub fn synced(&mut self) {
        if self.syncing {
            self.syncing = false;
            self.unsynced = None;
        }
    }

    /// A message from peer `from` on its push stream: a push becomes a job; link
    /// announcements and incarnations go to the replica at once.
    pub fn peer_message(&mut self, r: &mut Replica, from: NodeId, msg: PeerMsg) {
        match msg {
            PeerMsg::Push { key, entry, dots } => self.submit_relaxed(
                None,
                vec![Op::Apply {
                    key,
                    entry,
                    dots,
                    from: Some(from),
                    relay: true,
                }],
            ),
            PeerMsg::Links(l) => r.set_peer_links(from, l.into_iter().collect()),
            PeerMsg::Hello { rid } => r.set_peer_rid(from, rid),
        }
    }

    /// The next thing to do, if any; `wall` is the node's clock (µs) for staging.
    pub fn poll(&mut self, r: &mut Replica, wall: u64) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if self.in_flight.is_some() || self.syncing {
            return None;
        }
        // Due, or the clock went back past the first unsynced batch (then the
        // deadline says nothing: fsync now rather than wait for the clock).
        let due = self.unsynced.is_some_and(|(since, _)| {
            wall >= since.saturating_add(self.policy.delay) || wall < since
        });
        if due {
            self.syncing = true;
            return Some(Output::Sync);
        }
        if self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(MAX_JOBS_PER_BATCH);
        let mut jobs = Vec::with_capacity(n);
        let mut ops = Vec::new();
        let mut fsync = self.policy.delay == 0 || self.unsynced() + 1 >= self.policy.batches;
        for mut job in self.queue.drain(..n) {
            jobs.push((job.ticket, job.ops.len()));
            ops.append(&mut job.ops);
            fsync |= job.durable;
        }
        self.in_flight = Some(InFlight {
            jobs,
            fsync,
            staged: wall,
        });
        Some(Output::Persist {
            batch: r.stage(ops, wall),
            fsync,
        })
    }

    /// The batch of the last [`Output::Persist`] is written (and fsynced if it was
    /// asked to be): commit it; its member
    /// changes, replies and pushes follow, in that order, from [`Committer::poll`].
    pub fn persisted(&mut self, r: &mut Replica, mut batch: Staged) {
        let Some(InFlight {
            jobs,
            fsync,
            staged,
        }) = self.in_flight.take()
        else {
            // Not ours to commit: a driver bug, and committing it could break the
            // one-batch-at-a-time rule. Dropped.
            return;
        };
        self.unsynced = if fsync {
            None
        } else {
            let (since, n) = self.unsynced.unwrap_or((staged, 0));
            Some((since, n + 1))
        };
        let outcomes = std::mem::take(&mut batch.outcomes);
        let members: Vec<(NodeId, Option<String>)> = batch
            .writes
            .iter()
            .filter_map(|(k, e)| member_record(k, e))
            .collect();
        let relays = r.commit(batch);
        if !members.is_empty() {
            self.outputs.push_back(Output::Members(members));
        }
        let mut it = outcomes.into_iter();
        for (ticket, n) in jobs {
            let mine: Vec<Outcome> = it.by_ref().take(n).collect();
            if let Some(ticket) = ticket {
                self.outputs.push_back(Output::Reply {
                    ticket,
                    outcomes: mine,
                });
            }
        }
        for rel in relays {
            if rel.targets.is_empty() {
                continue;
            }
            self.outputs.push_back(Output::Push {
                targets: rel.targets,
                msg: PeerMsg::Push {
                    key: rel.key,
                    entry: rel.entry,
                    dots: rel.dots,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value: Some(b"v".to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: None,
        }
    }

    #[test]
    fn jobs_batch_together_and_nothing_is_visible_before_persisted() {
        let mut r = Replica::new(1, Limits::default());
        r.add_member(2);
        r.set_connected(2, true);
        let mut c = Committer::new();
        c.submit(Some(10), vec![put("a")]);
        c.submit(Some(11), vec![put("b"), put("c")]);
        let Some(Output::Persist { batch, fsync }) = c.poll(&mut r, 100) else {
            panic!("expected a batch")
        };
        assert_eq!(batch.writes.len(), 3, "both jobs in one batch");
        assert!(
            fsync,
            "client writes are fsynced before they are acknowledged"
        );
        // Out for persisting: no second batch, nothing visible, nothing replied.
        c.submit(Some(12), vec![put("d")]);
        assert!(c.poll(&mut r, 100).is_none());
        assert!(r.entry(b"a").is_none());
        c.persisted(&mut r, batch);
        assert!(r.entry(b"a").is_some());
        let mut replies = Vec::new();
        let mut pushes = 0;
        let mut next_batch = None;
        while let Some(o) = c.poll(&mut r, 100) {
            match o {
                Output::Reply { ticket, outcomes } => replies.push((ticket, outcomes.len())),
                Output::Push { targets, .. } => {
                    assert_eq!(targets, vec![2]);
                    pushes += 1;
                }
                Output::Persist { batch: b, .. } => {
                    next_batch = Some(b);
                    break;
                }
                Output::Members(_) => panic!("no member records written"),
                Output::Sync => panic!("nothing unsynced"),
            }
        }
        assert_eq!(replies, vec![(10, 1), (11, 2)], "replies first, in order");
        assert_eq!(pushes, 3);
        let b = next_batch.expect("the queued job is staged next");
        assert!(b.writes.contains_key(b"d".as_slice()));
    }

    fn push_from(from: NodeId, key: &str, wall: u64) -> PeerMsg {
        let mut o = Replica::new(from, Limits::default());
        let mut c = Committer::with_policy(SyncPolicy::STRICT);
        c.submit(None, vec![put(key)]);
        let Some(Output::Persist { batch, .. }) = c.poll(&mut o, wall) else {
            panic!("expected a batch")
        };
        let e = batch.writes[key.as_bytes()].clone();
        PeerMsg::Push {
            key: key.as_bytes().to_vec(),
            entry: e,
            dots: Vec::new(),
        }
    }

    /// Drive until idle; returns (batches with their fsync flag, syncs asked for).
    fn drain(c: &mut Committer, r: &mut Replica, wall: u64) -> (Vec<bool>, usize) {
        let (mut batches, mut syncs) = (Vec::new(), 0);
        while let Some(o) = c.poll(r, wall) {
            match o {
                Output::Persist { batch, fsync } => {
                    batches.push(fsync);
                    c.persisted(r, batch);
                }
                Output::Sync => {
                    syncs += 1;
                    c.synced();
                }
                _ => {}
            }
        }
        (batches, syncs)
    }

    #[test]
    fn pushed_writes_are_fsynced_late_and_client_writes_at_once() {
        let policy = SyncPolicy {
            delay: 1_000,
            batches: 3,
        };
        let mut r = Replica::new(1, Limits::default());
        let mut c = Committer::with_policy(policy);
        // A push: written, visible, not fsynced; an fsync is due 1 ms later.
        c.peer_message(&mut r, 2, push_from(2, "a", 100));
        assert_eq!(drain(&mut c, &mut r, 100), (vec![false], 0));
        assert!(r.entry(b"a").is_some(), "visible once written");
        assert_eq!((c.unsynced(), c.poll_timeout()), (1, Some(1_100)));
        // Before the deadline nothing; at it, one Sync, and nothing is left waiting.
        assert_eq!(drain(&mut c, &mut r, 1_099), (vec![], 0));
        assert_eq!(drain(&mut c, &mut r, 1_100), (vec![], 1));
        assert_eq!((c.unsynced(), c.poll_timeout()), (0, None));
        // A client write is fsynced, and its fsync covers the pushes before it.
        c.peer_message(&mut r, 2, push_from(2, "b", 2_000));
        drain(&mut c, &mut r, 2_000);
        assert_eq!(c.unsynced(), 1);
        c.submit(Some(1), vec![put("c")]);
        assert_eq!(drain(&mut c, &mut r, 2_001), (vec![true], 0));
        assert_eq!(c.poll_timeout(), None);
        // The third waiting batch is fsynced however young the first is.
        for (i, k) in ["d", "e", "f"].iter().enumerate() {
            c.peer_message(&mut r, 2, push_from(2, k, 3_000));
            let (b, _) = drain(&mut c, &mut r, 3_000 + i as u64);
            assert_eq!(b, vec![i == 2], "batch {i}");
        }
        assert_eq!(c.unsynced(), 0);
        // A clock that went back past the first unsynced batch: fsync at once.
        c.peer_message(&mut r, 2, push_from(2, "back", 3_500));
        assert_eq!(drain(&mut c, &mut r, 3_500), (vec![false], 0));
        assert_eq!(drain(&mut c, &mut r, 3_400), (vec![], 1));
        // A sync round's entries are relaxed too; with the strict policy nothing is.
        c.submit_relaxed(Some(2), vec![put("g")]);
        assert_eq!(drain(&mut c, &mut r, 4_000).0, vec![false]);
        let mut strict = Committer::with_policy(SyncPolicy::STRICT);
        strict.peer_message(&mut r, 2, push_from(2, "h", 5_000));
        assert_eq!(drain(&mut strict, &mut r, 5_000), (vec![true], 0));
    }
}
