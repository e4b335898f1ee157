//! One anti-entropy round against one peer, as a state machine with no I/O.
//!
//! The real server and the simulator both run a round through [`SyncRound`], so the
//! order of the protocol's steps is written once. The caller owns the transport, the
//! commit path and the [`Replica`]; the round only says what to do next:
//!
//! ```text
//!   round.next(replica, Event::Start)        -> Step::Ask(PeerReq::Sync(..))
//!   round.next(replica, Event::Answer(resp)) -> Step::Commit { ops, .. }   (persist, commit)
//!   round.next(replica, Event::Committed)    -> Step::Ask(..) | Step::Push(..) | Step::Done
//!   round.next(replica, Event::Pushed)       -> ...
//! ```
//!
//! # The round
//! 1. **Fast path.** Ask the peer for the writes past our watermarks (`PeerReq::Sync`,
//!    answered from its log by [`Replica::answer_sync`]); commit them. A partial answer
//!    (`more`) asks again (at most [`MAX_SYNC_PAGES`] pages per round). When the peer's
//!    log cannot serve us (it was trimmed past our watermark: `fallback`), or we both
//!    promise the same writes but the digest roots differ, go on with the walk
//!    ([`Replica::sync_next`]).
//! 2. **Tree walk.** Compare the 256 group digests; ask the bucket digests of the
//!    differing groups (32 groups per request); ask the keys and leaf digests of the
//!    differing buckets (1,024 buckets per request); for each such chunk fetch the keys
//!    the peer holds differently (2,048 per request) and commit them, then commit
//!    [`Op::Forget`] for what the peer provably deleted and collected, then push the
//!    peer what it lacks or holds differently (gifts travel as ordinary pushes, so a gift
//!    lost with a broken link is found again by a later round).
//! 3. **Adopt.** Commit [`Op::Adopt`] of the peer's watermarks as they were when the walk
//!    began: everything the peer held then is now here, so our watermarks may cover it.
//!
//! A round holds no lock across steps: between two steps the replica may change (client
//! writes, pushes, other rounds). Every decision is re-derived from the replica at the
//! step that makes it, so the round stays correct; the adopt in step 3 is safe because
//! an entry fetched in step 2 can only have been replaced by a newer one since.

use crate::digest;
use crate::proto::{PeerMsg, PeerReq, PeerResp};
use crate::replica::{Op, Replica, SyncNext, SyncResp};
use crate::version::{NodeId, VersionVector};
use std::collections::{BTreeSet, VecDeque};

/// Pages of the fast path asked in one round before it gives up until the next.
pub const MAX_SYNC_PAGES: usize = 100_000;
/// Groups per bucket request.
pub const GROUPS_PER_ASK: usize = 32;
/// Buckets per keys request.
pub const BUCKETS_PER_ASK: usize = 1024;
/// Keys per fetch request.
pub const KEYS_PER_FETCH: usize = 2048;

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Send this request to the peer and feed its answer back as [`Event::Answer`].
    Ask(PeerReq),
    /// Persist and commit these ops (as one batch), then feed [`Event::Committed`].
    /// `received` counts the entries in them that came from the peer.
    Commit {
        /// The ops.
        ops: Vec<Op>,
        /// Entries received from the peer among them.
        received: usize,
    },
    /// Push these messages to the peer (walk gifts), then feed [`Event::Pushed`].
    Push(Vec<PeerMsg>),
    /// The round is over.
    Done,
}

/// What happened since the last step.
#[derive(Debug)]
pub enum Event {
    /// Begin the round.
    Start,
    /// The peer answered the last [`Step::Ask`].
    Answer(PeerResp),
    /// The ops of the last [`Step::Commit`] are committed.
    Committed,
    /// The messages of the last [`Step::Push`] were handed to the link.
    Pushed,
}

/// Why a round stopped early. The caller drops the round; the next one starts afresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The peer answered something other than what was asked.
    #[error("unexpected answer to {asked}: {got}")]
    Unexpected {
        /// The request.
        asked: &'static str,
        /// A short description of the answer.
        got: String,
    },
    /// The answer had the right kind but the wrong shape.
    #[error("malformed answer to {0}")]
    Malformed(&'static str),
    /// The peer could not serve the request.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The event does not fit the step the round is waiting on (a driver bug).
    #[error("event {got} while waiting for {waiting}")]
    OutOfStep {
        /// What the round waits for.
        waiting: &'static str,
        /// The event it got.
        got: &'static str,
    },
}

/// The walk's progress.
#[derive(Debug, Default)]
struct Walk {
    /// The peer's watermarks when the walk began (adopted at the end).
    peer_seen: VersionVector,
    /// Differing groups not asked yet, in chunks.
    groups: VecDeque<Vec<u8>>,
    /// Differing buckets found so far.
    buckets: Vec<u16>,
    /// Differing buckets whose keys were not asked yet, in chunks.
    key_chunks: VecDeque<Vec<u16>>,
    /// Keys of the current chunk still to fetch, in chunks.
    fetches: VecDeque<Vec<Vec<u8>>>,
    /// Keys of the current chunk we hold and the peer lacks or holds differently.
    give: Vec<Vec<u8>>,
    /// Of those, the ones the peer lacks.
    lacks: BTreeSet<Vec<u8>>,
    /// Gifts waiting for the forget ops to commit.
    gifts: Vec<PeerMsg>,
}

/// What the round waits for.
#[derive(Debug)]
enum Wait {
    Start,
    Sync,
    SyncCommit(SyncResp),
    Groups,
    Buckets(Vec<u8>),
    Keys(Vec<u16>),
    Fetch,
    FetchCommit,
    ForgetCommit,
    Pushed,
    AdoptCommit,
    Finished,
}

impl Wait {
    fn name(&self) -> &'static str {
        match self {
            Wait::Start => "start",
            Wait::Sync => "sync answer",
            Wait::SyncCommit(_) => "commit of synced entries",
            Wait::Groups => "groups answer",
            Wait::Buckets(_) => "buckets answer",
            Wait::Keys(_) => "keys answer",
            Wait::Fetch => "fetch answer",
            Wait::FetchCommit => "commit of fetched entries",
            Wait::ForgetCommit => "commit of forgotten keys",
            Wait::Pushed => "push of gifts",
            Wait::AdoptCommit => "commit of adopted watermarks",
            Wait::Finished => "nothing (finished)",
        }
    }
}

fn event_name(ev: &Event) -> &'static str {
    match ev {
        Event::Start => "start",
        Event::Answer(_) => "answer",
        Event::Committed => "committed",
        Event::Pushed => "pushed",
    }
}

/// A one-line description of an answer (errors and traces).
pub fn describe(resp: &PeerResp) -> String {
    match resp {
        PeerResp::Pong => "pong".into(),
        PeerResp::Sync(s) => format!(
            "sync {} items{}{}",
            s.items.len(),
            if s.more { " more" } else { "" },
            if s.fallback { " fallback" } else { "" }
        ),
        PeerResp::Groups(_) => "groups".into(),
        PeerResp::Buckets(b) => format!("buckets of {} groups", b.len()),
        PeerResp::Keys(k) => format!("{} keys", k.len()),
        PeerResp::Fetch(i) => format!("{} entries", i.len()),
        PeerResp::Paxos(_) => "register answer".into(),
        PeerResp::Status(_) => "status".into(),
        PeerResp::Error(e) => format!("error {e}"),
    }
}

/// One anti-entropy round pulling from `peer` (see the module docs).
#[derive(Debug)]
pub struct SyncRound {
    peer: NodeId,
    wait: Wait,
    pages: usize,
    walk: Option<Walk>,
}

impl SyncRound {
    /// A round against `peer`; feed it [`Event::Start`] first.
    pub fn new(peer: NodeId) -> Self {
        SyncRound {
            peer,
            wait: Wait::Start,
            pages: 0,
            walk: None,
        }
    }

    /// Whether this round went on to the tree walk.
    pub fn walked(&self) -> bool {
        self.walk.is_some()
    }

    /// The next step, given what happened since the last one.
    pub fn next(&mut self, r: &mut Replica, ev: Event) -> Result<Step, SyncError> {
        let wait = std::mem::replace(&mut self.wait, Wait::Finished);
        if let Event::Answer(PeerResp::Error(e)) = ev {
            return Err(SyncError::Refused(e));
        }
        match (wait, ev) {
            (Wait::Start, Event::Start) => Ok(self.ask_sync(r)),
            (Wait::Sync, Event::Answer(PeerResp::Sync(resp))) => {
                let ops = r.sync_ops(self.peer, &resp);
                if ops.is_empty() {
                    return Ok(self.after_sync(r, resp));
                }
                let received = ops.len();
                self.wait = Wait::SyncCommit(resp);
                Ok(Step::Commit { ops, received })
            }
            (Wait::SyncCommit(resp), Event::Committed) => Ok(self.after_sync(r, resp)),
            (Wait::Groups, Event::Answer(PeerResp::Groups(theirs))) => {
                if theirs.len() != digest::GROUPS {
                    return Err(SyncError::Malformed("groups"));
                }
                let differing: Vec<u8> = digest::differing(r.digest().groups(), &theirs)
                    .into_iter()
                    .map(|g| g as u8)
                    .collect();
                let w = self.walk_mut();
                w.groups = differing
                    .chunks(GROUPS_PER_ASK)
                    .map(|c| c.to_vec())
                    .collect();
                Ok(self.next_buckets())
            }
            (Wait::Buckets(asked), Event::Answer(PeerResp::Buckets(theirs))) => {
                let mine = r.group_buckets(&asked);
                if theirs.len() != mine.len() {
                    return Err(SyncError::Malformed("buckets"));
                }
                let mut found = Vec::new();
                for ((g, a), (g2, b)) in mine.iter().zip(theirs.iter()) {
                    if g != g2 || b.len() != digest::BUCKETS_PER_GROUP {
                        return Err(SyncError::Malformed("buckets"));
                    }
                    for i in digest::differing(a, b) {
                        found.push(((*g as u16) << 8) | i as u16);
                    }
                }
                self.walk_mut().buckets.extend(found);
                Ok(self.next_buckets())
            }
            (Wait::Keys(chunk), Event::Answer(PeerResp::Keys(theirs))) => {
                let their_keys: BTreeSet<&[u8]> =
                    theirs.iter().map(|(k, _)| k.as_slice()).collect();
                let (fetch, give) = r.walk_diff(&chunk, &theirs);
                let lacks = give
                    .iter()
                    .filter(|k| !their_keys.contains(k.as_slice()))
                    .cloned()
                    .collect();
                let w = self.walk_mut();
                w.fetches = fetch.chunks(KEYS_PER_FETCH).map(|c| c.to_vec()).collect();
                w.give = give;
                w.lacks = lacks;
                Ok(self.next_fetch(r))
            }
            (Wait::Fetch, Event::Answer(PeerResp::Fetch(items))) => {
                let peer = self.peer;
                let ops: Vec<Op> = items.into_iter().map(|it| it.into_op(peer)).collect();
                let received = ops.len();
                self.wait = Wait::FetchCommit;
                Ok(Step::Commit { ops, received })
            }
            (Wait::FetchCommit, Event::Committed) => Ok(self.next_fetch(r)),
            (Wait::ForgetCommit, Event::Committed) => Ok(self.push_gifts()),
            (Wait::Pushed, Event::Pushed) => Ok(self.next_keys()),
            (Wait::AdoptCommit, Event::Committed) => Ok(Step::Done),
            (wait, Event::Answer(resp)) => Err(SyncError::Unexpected {
                asked: wait.name(),
                got: describe(&resp),
            }),
            (wait, ev) => Err(SyncError::OutOfStep {
                waiting: wait.name(),
                got: event_name(&ev),
            }),
        }
    }

    fn walk_mut(&mut self) -> &mut Walk {
        self.walk.get_or_insert_with(Walk::default)
    }

    fn ask_sync(&mut self, r: &Replica) -> Step {
        if self.pages >= MAX_SYNC_PAGES {
            return Step::Done;
        }
        self.pages += 1;
        self.wait = Wait::Sync;
        Step::Ask(PeerReq::Sync(r.sync_request()))
    }

    /// The ops of a sync answer are in: another page, the walk, or done.
    fn after_sync(&mut self, r: &Replica, resp: SyncResp) -> Step {
        match r.sync_next(&resp) {
            SyncNext::Done => Step::Done,
            SyncNext::Again => self.ask_sync(r),
            SyncNext::Walk => {
                self.walk = Some(Walk {
                    peer_seen: resp.seen,
                    ..Walk::default()
                });
                self.wait = Wait::Groups;
                Step::Ask(PeerReq::Groups)
            }
        }
    }

    fn next_buckets(&mut self) -> Step {
        let w = self.walk_mut();
        if let Some(chunk) = w.groups.pop_front() {
            self.wait = Wait::Buckets(chunk.clone());
            return Step::Ask(PeerReq::Buckets(chunk));
        }
        w.key_chunks = std::mem::take(&mut w.buckets)
            .chunks(BUCKETS_PER_ASK)
            .map(|c| c.to_vec())
            .collect();
        self.next_keys()
    }

    fn next_keys(&mut self) -> Step {
        let w = self.walk_mut();
        if let Some(chunk) = w.key_chunks.pop_front() {
            self.wait = Wait::Keys(chunk.clone());
            return Step::Ask(PeerReq::Keys(chunk));
        }
        let seen = w.peer_seen.clone();
        self.wait = Wait::AdoptCommit;
        Step::Commit {
            ops: vec![Op::Adopt { seen }],
            received: 0,
        }
    }

    /// Fetch the next chunk of the current keys chunk; once all are in, settle what the
    /// peer lacks: forget what it deleted and collected, push the rest.
    fn next_fetch(&mut self, r: &Replica) -> Step {
        let w = self.walk_mut();
        if let Some(keys) = w.fetches.pop_front() {
            self.wait = Wait::Fetch;
            return Step::Ask(PeerReq::Fetch(keys));
        }
        let (gifts, forget) = r.walk_gifts(&w.give, &w.lacks, &w.peer_seen);
        w.give.clear();
        w.lacks.clear();
        w.gifts = gifts
            .into_iter()
            .map(|it| PeerMsg::Push {
                key: it.key,
                entry: it.entry,
                dots: Vec::new(),
            })
            .collect();
        if forget.is_empty() {
            return self.push_gifts();
        }
        self.wait = Wait::ForgetCommit;
        Step::Commit {
            ops: forget,
            received: 0,
        }
    }

    fn push_gifts(&mut self) -> Step {
        let gifts = std::mem::take(&mut self.walk_mut().gifts);
        if gifts.is_empty() {
            return self.next_keys();
        }
        self.wait = Wait::Pushed;
        Step::Push(gifts)
    }
}

/// Answer a peer's request from the replica: the one place requests are served.
pub fn answer(r: &mut Replica, from: NodeId, req: PeerReq) -> PeerResp {
    match req {
        PeerReq::Ping => PeerResp::Pong,
        PeerReq::Sync(q) => PeerResp::Sync(r.answer_sync(from, &q)),
        PeerReq::Groups => PeerResp::Groups(r.digest().groups().to_vec()),
        PeerReq::Buckets(g) => PeerResp::Buckets(r.group_buckets(&g)),
        PeerReq::Keys(b) => PeerResp::Keys(r.bucket_keys(&b)),
        PeerReq::Fetch(keys) => PeerResp::Fetch(r.entries(&keys)),
        // The acceptor's answer needs durable state: the adapter answers these itself.
        PeerReq::Paxos(_) => PeerResp::Error("register requests are not anti-entropy".into()),
        PeerReq::Status => PeerResp::Error("the status is the server's, not the replica's".into()),
    }
}
