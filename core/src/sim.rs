//! An in-memory cluster of [`Replica`]s for testing the rules on many schedules.
//!
//! Messages sit in per-link FIFO queues (like the ordered QUIC push stream) and are
//! delivered when the test says so; a broken link drops what was queued on it (like a
//! closed connection). Anti-entropy and the tree walk run the same [`SyncRound`] and
//! [`answer`] the real servers run. Every write goes through a [`Committer`], the
//! server's write path, and each node has a simulated disk with the committer's fsync
//! rules ([`Disk`]): a crash keeps what was fsynced and loses a suffix (none, some or
//! all) of the batches written since ([`SimCluster::disk`]).

use crate::commit::{Committer, Output as CommitOutput};
use crate::entry::Entry;
use crate::proto::PeerMsg;
use crate::replica::{Meta, Op, Outcome, ReadOutcome, Replica};
use crate::session::Session;
use crate::sync::{answer, describe, Event, Step, SyncRound};
use crate::version::{Dot, NodeId, Version};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A simulated cluster.
pub struct SimCluster {
    /// The replicas.
    pub nodes: BTreeMap<NodeId, Replica>,
    up: BTreeSet<(NodeId, NodeId)>,
    queues: BTreeMap<(NodeId, NodeId), VecDeque<PeerMsg>>,
    wall: u64,
    /// Per-node clock offsets (µs) added to the simulated wall clock.
    skew: BTreeMap<NodeId, i64>,
    /// Entries moved by anti-entropy (fast path and walk), for efficiency checks.
    pub synced_items: usize,
    /// The message trace, when asked for ([`SimCluster::set_trace`]).
    trace: Option<Vec<String>>,
    /// Each node's write path.
    committers: BTreeMap<NodeId, Committer>,
    /// The disks holding writes not yet fsynced (a node without one has fsynced
    /// everything it wrote).
    disks: BTreeMap<NodeId, Disk>,
    /// A planted driver bug: batches the committer asks to fsync are not (the kernel
    /// writes them back later), so writes are acknowledged before they are durable.
    pub skip_fsync: bool,
}

/// A node's disk while some written batches are not fsynced.
#[derive(Clone, Debug)]
pub struct Disk {
    /// What the disk holds for sure: the state at the last fsync.
    pub synced: Stored,
    /// The state after each batch written since, oldest first. A machine crash keeps
    /// the synced state plus a prefix of these (the store is one log: a torn or
    /// missing record ends it).
    pub unsynced: Vec<Stored>,
}

/// What a store on disk holds of a replica (what the real server loads at a start).
#[derive(Clone, Debug)]
pub struct Stored {
    meta: Meta,
    store: BTreeMap<Vec<u8>, Entry>,
    log: BTreeMap<Dot, Vec<u8>>,
}

impl Stored {
    /// What `r` would leave on disk.
    pub fn of(r: &Replica) -> Self {
        Stored {
            meta: r.meta(),
            store: r.store.clone(),
            log: r.log.clone(),
        }
    }

    /// The replica a server like `like` loads from it.
    pub fn open(&self, like: &Replica) -> Replica {
        Replica::restore(
            like.id(),
            like.rid(),
            like.limits.clone(),
            self.meta.clone(),
            self.store.clone(),
            self.log.clone(),
            self.meta.hlc,
        )
    }
}

/// Unsynced batches a simulated disk keeps apart; beyond that the kernel writes the
/// oldest back on its own (as it does with dirty pages).
const WRITEBACK_AFTER: usize = 64;

fn msg_name(m: &PeerMsg) -> String {
    match m {
        PeerMsg::Push { key, .. } => format!("push {}", String::from_utf8_lossy(key)),
        PeerMsg::Links(l) => format!("links {l:?}"),
        PeerMsg::Hello { rid } => format!("hello {rid:x}"),
    }
}

/// An unordered pair of ids (a link).
pub fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

/// The connected components of `ids` under `linked` (symmetric), each sorted, in the
/// order of their smallest id.
pub fn connected_components(
    ids: &[NodeId],
    linked: impl Fn(NodeId, NodeId) -> bool,
) -> Vec<Vec<NodeId>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for &start in ids {
        if !seen.insert(start) {
            continue;
        }
        let mut comp = vec![start];
        let mut i = 0;
        while i < comp.len() {
            let x = comp[i];
            for &y in ids {
                if y != x && linked(x, y) && seen.insert(y) {
                    comp.push(y);
                }
            }
            i += 1;
        }
        comp.sort();
        out.push(comp);
    }
    out
}

impl SimCluster {
    /// A fully connected cluster of `ids`.
    pub fn new(ids: &[NodeId], limits: Limits) -> Self {
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let mut r = Replica::new(id, limits.clone());
            for &o in ids {
                r.add_member(o);
                r.set_peer_rid(o, o);
            }
            nodes.insert(id, r);
        }
        let mut c = SimCluster {
            nodes,
            up: BTreeSet::new(),
            queues: BTreeMap::new(),
            wall: 1_000_000,
            skew: BTreeMap::new(),
            synced_items: 0,
            trace: None,
            committers: BTreeMap::new(),
            disks: BTreeMap::new(),
            skip_fsync: false,
        };
        for &a in ids {
            for &b in ids {
                if a < b {
                    c.set_link(a, b, true);
                }
            }
        }
        c
    }

    /// Record every message and sync step from now on (or stop recording).
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on.then(Vec::new);
    }

    /// The trace recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(line());
        }
    }

    /// Add server `id`, a member from now on for everyone, linked to every node in
    /// `links`. Its incarnation is `rid`.
    pub fn add_node(&mut self, id: NodeId, rid: NodeId, links: &[NodeId]) {
        let limits = match self.nodes.values().next() {
            Some(r) => r.limits.clone(),
            None => Limits::default(),
        };
        let mut r = Replica::with_rid(id, rid, limits);
        r.add_member(id);
        for (&o, other) in self.nodes.iter_mut() {
            r.add_member(o);
            r.set_peer_rid(o, other.rid());
            other.add_member(id);
            other.set_peer_rid(id, rid);
        }
        self.nodes.insert(id, r);
        self.note(|| format!("node {id} added (incarnation {rid:x})"));
        for &o in links {
            self.set_link(id, o, true);
        }
    }

    /// Bring a link up or down (down drops whatever was queued on it).
    pub fn set_link(&mut self, a: NodeId, b: NodeId, up: bool) {
        if a == b {
            return;
        }
        self.note(|| format!("link {a}-{b} {}", if up { "up" } else { "down" }));
        if up {
            self.up.insert(pair(a, b));
        } else {
            self.up.remove(&pair(a, b));
            self.queues.remove(&(a, b));
            self.queues.remove(&(b, a));
        }
        if let Some(r) = self.nodes.get_mut(&a) {
            r.set_connected(b, up);
        }
        if let Some(r) = self.nodes.get_mut(&b) {
            r.set_connected(a, up);
        }
        // Link announcements arrive at once in the simulation.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &x in &ids {
            let links: BTreeSet<NodeId> = self.nodes[&x].connected().into_iter().collect();
            for &y in &ids {
                if self.is_up(x, y) {
                    if let Some(r) = self.nodes.get_mut(&y) {
                        r.set_peer_links(x, links.clone());
                    }
                }
            }
        }
    }

    /// Whether the link between `a` and `b` is up.
    pub fn is_up(&self, a: NodeId, b: NodeId) -> bool {
        self.up.contains(&pair(a, b))
    }

    /// Node `id`'s wall clock.
    fn wall_of(&self, id: NodeId) -> u64 {
        let off = self.skew.get(&id).copied().unwrap_or(0);
        (self.wall as i64).saturating_add(off).max(0) as u64
    }

    /// Shift node `id`'s clock by `micros` (negative: slow) from now on.
    pub fn set_skew(&mut self, id: NodeId, micros: i64) {
        self.skew.insert(id, micros);
    }

    /// The simulated wall clock (µs), before any node's skew.
    pub fn wall(&self) -> u64 {
        self.wall
    }

    /// Let `micros` of simulated time pass; every node whose deferred fsync falls due
    /// does it.
    pub fn advance(&mut self, micros: u64) {
        self.wall += micros;
        let due: Vec<NodeId> = self
            .committers
            .iter()
            .filter(|(id, c)| c.poll_timeout().is_some_and(|t| t <= self.wall_of(**id)))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.drive(id);
        }
    }

    /// Node `id`'s disk while it holds writes not yet fsynced (`None`: everything it
    /// wrote is durable, so its disk is its state).
    pub fn disk(&self, id: NodeId) -> Option<&Disk> {
        self.disks.get(&id)
    }

    fn committer(&mut self, id: NodeId) -> &mut Committer {
        self.committers.entry(id).or_default()
    }

    /// Crash node `id` and start it again as incarnation `rid`, from `disk` (what its
    /// data directory holds: its state at the crash, an older copy) or from nothing (a
    /// wiped disk). Its links stay as they were; what was queued to or from it is lost.
    pub fn restart(&mut self, id: NodeId, disk: Option<&Replica>, rid: NodeId) {
        let Some(old) = self.nodes.get(&id) else {
            return;
        };
        let limits = old.limits.clone();
        let members = old.members();
        let wall = self.wall_of(id);
        let mut r = match disk {
            Some(d) => Replica::restore(
                id,
                rid,
                limits,
                d.meta(),
                d.store.clone(),
                d.log.clone(),
                wall,
            ),
            None => Replica::with_rid(id, rid, limits),
        };
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &o in &ids {
            if o != id {
                r.add_member(o);
                let peer_rid = self.nodes[&o].rid();
                r.set_peer_rid(o, peer_rid);
                r.set_connected(o, self.is_up(id, o));
            }
        }
        for m in members {
            r.add_member(m);
        }
        self.queues.retain(|(a, b), _| *a != id && *b != id);
        self.committers.remove(&id);
        // What it starts from is on its disk.
        self.disks.remove(&id);
        self.nodes.insert(id, r);
        self.note(|| format!("node {id} restarted as incarnation {rid:x}"));
        for &o in &ids {
            if let Some(n) = self.nodes.get_mut(&o) {
                if o != id {
                    n.set_peer_rid(id, rid);
                }
            }
        }
    }

    /// The `n`-th non-empty queue (mod their number), if any.
    fn busy_queue(&self, n: usize) -> Option<(NodeId, NodeId)> {
        let busy: Vec<(NodeId, NodeId)> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        (!busy.is_empty()).then(|| busy[n % busy.len()])
    }

    /// Drop the head of the `n`-th non-empty queue (a lost message). False if none.
    pub fn drop_one(&mut self, n: usize) -> bool {
        let Some(k) = self.busy_queue(n) else {
            return false;
        };
        self.queues
            .get_mut(&k)
            .and_then(|q| q.pop_front())
            .is_some()
    }

    /// Duplicate the head of the `n`-th non-empty queue (delivered twice later).
    pub fn duplicate_one(&mut self, n: usize) -> bool {
        let Some(k) = self.busy_queue(n) else {
            return false;
        };
        if let Some(q) = self.queues.get_mut(&k) {
            if let Some(m) = q.front().cloned() {
                q.push_back(m);
                return true;
            }
        }
        false
    }

    /// Commit `ops` at node `at` as one job through its [`Committer`] (the server's
    /// write path); returns their outcomes.
    fn run(&mut self, at: NodeId, ops: Vec<Op>) -> Vec<Outcome> {
        self.committer(at).submit(Some(0), ops);
        self.drive(at)
    }

    /// Like [`SimCluster::run`], for jobs that may be fsynced late: other servers'
    /// writes (a sync round's entries), trims and expiry sweeps.
    fn run_relaxed(&mut self, at: NodeId, ops: Vec<Op>) -> Vec<Outcome> {
        self.committer(at).submit_relaxed(Some(0), ops);
        self.drive(at)
    }

    /// Carry out what node `at`'s write path asks for until it is idle, keeping its
    /// [`Disk`] as the committer's fsync rules make it. Returns the last reply.
    fn drive(&mut self, at: NodeId) -> Vec<Outcome> {
        self.wall += 2;
        let wall = self.wall_of(at);
        self.committer(at);
        let (Some(r), Some(c)) = (self.nodes.get_mut(&at), self.committers.get_mut(&at)) else {
            return Vec::new();
        };
        let mut outcomes = Vec::new();
        let mut pushes = Vec::new();
        while let Some(out) = c.poll(r, wall) {
            match out {
                CommitOutput::Sync => {
                    self.disks.remove(&at);
                    c.synced();
                }
                CommitOutput::Persist { batch, fsync } => {
                    let root = batch.root;
                    if fsync && !self.skip_fsync {
                        c.persisted(r, batch);
                        self.disks.remove(&at);
                    } else {
                        let disk = self.disks.entry(at).or_insert_with(|| Disk {
                            synced: Stored::of(r),
                            unsynced: Vec::new(),
                        });
                        c.persisted(r, batch);
                        disk.unsynced.push(Stored::of(r));
                        if disk.unsynced.len() > WRITEBACK_AFTER {
                            disk.synced = disk.unsynced.remove(0);
                        }
                    }
                    // What the storage records for its damage check must be the
                    // committed state.
                    assert_eq!(
                        r.root(),
                        root,
                        "Staged::root disagrees with the committed digest"
                    );
                }
                CommitOutput::Reply { outcomes: o, .. } => outcomes = o,
                CommitOutput::Push { targets, msg } => pushes.push((targets, msg)),
                CommitOutput::Members(_) => {}
            }
        }
        for (targets, msg) in pushes {
            for t in targets {
                if self.up.contains(&pair(at, t)) {
                    self.queues
                        .entry((at, t))
                        .or_default()
                        .push_back(msg.clone());
                }
            }
        }
        outcomes
    }

    /// A client put through server `at`.
    pub fn put(&mut self, at: NodeId, key: &[u8], value: &[u8], s: &mut Session) -> Version {
        self.write(at, key, Some(value.to_vec()), None, s)
    }

    /// A client put through server `at` of a value that expires `ttl` µs after the
    /// write's timestamp.
    pub fn put_expiring(
        &mut self,
        at: NodeId,
        key: &[u8],
        value: &[u8],
        ttl: u64,
        s: &mut Session,
    ) -> Version {
        self.write(at, key, Some(value.to_vec()), Some(ttl), s)
    }

    /// A client delete through server `at`.
    pub fn delete(&mut self, at: NodeId, key: &[u8], s: &mut Session) -> Version {
        self.write(at, key, None, None, s)
    }

    /// Node `id`'s expiry sweep, as its `expiry` task runs it: every live value whose
    /// expiry time its clock has reached becomes its expiry tombstone. Returns the keys.
    pub fn expire(&mut self, id: NodeId) -> Vec<Vec<u8>> {
        let Some(r) = self.nodes.get(&id) else {
            return Vec::new();
        };
        let keys = r.expired_keys(r.now(self.wall_of(id)), usize::MAX);
        if !keys.is_empty() {
            let ops = keys.iter().map(|k| Op::Expire { key: k.clone() }).collect();
            self.run_relaxed(id, ops);
        }
        keys
    }

    /// The HLC time of node `id` now.
    pub fn now_of(&self, id: NodeId) -> u64 {
        self.nodes.get(&id).map_or(0, |r| r.now(self.wall_of(id)))
    }

    /// A client write (`None` deletes) through server `at`, updating the session.
    fn write(
        &mut self,
        at: NodeId,
        key: &[u8],
        value: Option<Vec<u8>>,
        ttl: Option<u64>,
        s: &mut Session,
    ) -> Version {
        let out = self.run(
            at,
            vec![Op::Put {
                key: key.to_vec(),
                value,
                seen_ts: s.seen_ts(),
                dep: None,
                ttl,
            }],
        );
        match out.first() {
            Some(Outcome::Put { version, .. }) => {
                s.wrote(key, *version);
                *version
            }
            other => panic!("write produced {other:?}"),
        }
    }

    /// Trim logs and tombstones on one node.
    pub fn trim(&mut self, id: NodeId) {
        self.run_relaxed(id, vec![Op::Trim]);
    }

    /// A client get through server `at`, updating the session like the client does.
    pub fn get(&mut self, at: NodeId, key: &[u8], s: &mut Session) -> ReadOutcome {
        let dep = s.dep(key);
        let seen = s.seen_ts();
        let wall = self.wall_of(at);
        let Some(r) = self.nodes.get_mut(&at) else {
            return ReadOutcome::Dep;
        };
        let out = r.read(key, dep, seen, wall);
        match &out {
            ReadOutcome::Found { version, .. } => s.read(key, *version),
            ReadOutcome::Missing {
                version: Some(version),
            } => s.read(key, *version),
            _ => {}
        }
        out
    }

    /// Number of queued messages.
    pub fn in_flight(&self) -> usize {
        self.queues.values().map(|q| q.len()).sum()
    }

    /// Deliver the head of the `n`-th non-empty queue (mod their number). False if none.
    pub fn deliver_one(&mut self, n: usize) -> bool {
        let Some((from, to)) = self.busy_queue(n) else {
            return false;
        };
        let Some(msg) = self.queues.get_mut(&(from, to)).and_then(|q| q.pop_front()) else {
            return false;
        };
        self.note(|| format!("deliver {from}->{to} {}", msg_name(&msg)));
        if let Some(r) = self.nodes.get_mut(&to) {
            self.committers
                .entry(to)
                .or_default()
                .peer_message(r, from, msg);
            self.drive(to);
        }
        true
    }

    /// Deliver everything queued (and everything that causes).
    pub fn deliver_all(&mut self) {
        while self.deliver_one(0) {}
    }

    /// Drop everything queued (lost pushes).
    pub fn drop_all(&mut self) {
        self.queues.clear();
    }

    /// One anti-entropy round: `a` pulls from `b` (fast path, then walk if needed),
    /// through the same [`SyncRound`] the real server runs. Every step happens at once
    /// (nothing else interleaves); the walk's gifts are queued on the link as pushes.
    pub fn anti_entropy(&mut self, a: NodeId, b: NodeId) {
        if !self.is_up(a, b) {
            return;
        }
        let mut round = SyncRound::new(b);
        let mut ev = Event::Start;
        loop {
            let Some(ra) = self.nodes.get_mut(&a) else {
                return;
            };
            match round.next(ra, ev) {
                Ok(Step::Ask(req)) => {
                    let Some(rb) = self.nodes.get_mut(&b) else {
                        return;
                    };
                    let resp = answer(rb, a, req);
                    self.note(|| format!("sync {a}<-{b} answer {}", describe(&resp)));
                    ev = Event::Answer(resp);
                }
                Ok(Step::Commit { ops, received }) => {
                    self.synced_items += received;
                    self.note(|| format!("sync {a}<-{b} commit {} ops", ops.len()));
                    self.run_relaxed(a, ops);
                    ev = Event::Committed;
                }
                Ok(Step::Push(msgs)) => {
                    self.synced_items += msgs.len();
                    self.note(|| format!("sync {a}<-{b} gives {} entries", msgs.len()));
                    self.queues.entry((a, b)).or_default().extend(msgs);
                    ev = Event::Pushed;
                }
                Ok(Step::Done) => return,
                Err(e) => panic!("sync round {a} <- {b}: {e}"),
            }
        }
    }

    /// Trim logs and tombstones everywhere.
    pub fn trim_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.run_relaxed(id, vec![Op::Trim]);
        }
    }

    /// Connected components over up links.
    pub fn components(&self) -> Vec<Vec<NodeId>> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        connected_components(&ids, |x, y| self.is_up(x, y))
    }

    /// Deliver everything and run anti-entropy until nothing changes.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            self.deliver_all();
            let before: Vec<u64> = self.nodes.values().map(|r| r.root()).collect();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &a in &ids {
                for &b in &ids {
                    if a != b {
                        self.anti_entropy(a, b);
                    }
                }
            }
            self.deliver_all();
            let after: Vec<u64> = self.nodes.values().map(|r| r.root()).collect();
            if before == after && self.in_flight() == 0 {
                return;
            }
        }
    }

    /// Whether every component holds identical stores.
    pub fn converged(&self) -> bool {
        self.components().iter().all(|c| {
            let r0 = self.nodes[&c[0]].root();
            let d0 = self.nodes[&c[0]].dump();
            c.iter()
                .all(|id| self.nodes[id].root() == r0 && self.nodes[id].dump() == d0)
        })
    }
}
