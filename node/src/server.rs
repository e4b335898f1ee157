//! The server process: a thin adapter around [`meshkv_core::Replica`].
//!
//! * **Commit loop** (one OS thread): takes every queued [`Op`] at once, stages it on
//!   the replica, persists the batch with one fsync ([`Storage::persist`]), commits it
//!   in memory, answers the waiting writers and hands the resulting pushes to the peer
//!   writers. Concurrent writers therefore share fsyncs (group commit), and nothing is
//!   visible to readers or peers before it is durable. A failed fsync stops the process
//!   (the only safe answer, as in etcd and PostgreSQL).
//! * **Peers**: one QUIC connection per pair of servers; the lower id dials, the higher
//!   accepts (a new connection from a peer replaces an old one). Per connection: one
//!   ordered uni stream each way for pushes and link announcements, bi streams for
//!   anti-entropy requests, and named background tasks (`push-writer`, `push-reader`,
//!   `peer-requests`, `anti-entropy`) whose counters show in [`Server::status`].
//!   A blocked peer (the master's `breakConnection`) is disconnected and refused until
//!   unblocked: no traffic at all flows between the two.
//! * **Clients** connect with client certificates from the same CA and send one bi
//!   stream per request.

use crate::frame::{self, FrameError};
use crate::net::{self, NetTuning};
use crate::pki::{self, Identity, Role, TlsMaterial};
use crate::storage::{Storage, StorageError, StorageStats};
use bytes::Bytes;
use meshkv_core::commit::{
    Committer, Output as CommitOutput, SyncPolicy, Ticket, MAX_JOBS_PER_BATCH,
};
use meshkv_core::proto::{self, ClientReq, ClientResp, PeerMsg, PeerReq, PeerResp};
use meshkv_core::schedule::{self, Action as SchedAction, Input as SchedInput, Schedule, Timing};
use meshkv_core::sync::{Event as SyncEvent, Step as SyncStep, SyncError, SyncRound};
use meshkv_core::{Limits, NodeId, Op, Outcome, ReadOutcome, Replica, Version, VersionVector};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, Notify};

mod register;
pub use register::LinOutcome;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// This server's id.
    pub id: NodeId,
    /// Where its sled store lives.
    pub data_dir: PathBuf,
    /// The QUIC listen address (port 0: the OS picks).
    pub listen: SocketAddr,
    /// Certificates.
    pub tls: TlsMaterial,
    /// sled cache size in bytes.
    pub cache_bytes: u64,
    /// Replica limits.
    pub limits: Limits,
    /// QUIC keep-alive and idle timeout.
    pub tuning: NetTuning,
    /// Period of anti-entropy per peer.
    pub sync_interval: Duration,
    /// Period of log and tombstone trimming.
    pub trim_interval: Duration,
    /// Largest key accepted from clients.
    pub max_key: usize,
    /// Largest value accepted from clients.
    pub max_value: usize,
    /// After a start, how long the server waits to complete a sync round with every
    /// peer it knows an address of before it serves client requests anyway.
    pub catchup_timeout: Duration,
    /// The peers known at start (from a config file): linked before readiness is
    /// first evaluated, so the server catches up with them before serving.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Free space the data directory's file system must keep: below it, writes are
    /// refused with `ERR_DISK_FULL` (so sled never runs out mid-batch) and reads go on.
    pub min_free_bytes: u64,
    /// How long a linearizable request may take before it is answered with
    /// `ERR_UNAVAILABLE` (it may still take effect later).
    pub linearizable_timeout: Duration,
    /// When other servers' writes are fsynced ([`meshkv_core::commit`]).
    pub replica_sync: SyncPolicy,
}

impl ServerOpts {
    /// Defaults for everything but identity, storage, address and certificates.
    pub fn new(id: NodeId, data_dir: PathBuf, listen: SocketAddr, tls: TlsMaterial) -> Self {
        ServerOpts {
            id,
            data_dir,
            listen,
            tls,
            cache_bytes: 64 << 20,
            limits: Limits::default(),
            tuning: NetTuning::default(),
            sync_interval: Duration::from_millis(500),
            trim_interval: Duration::from_secs(2),
            max_key: 1024,
            max_value: 1 << 20,
            catchup_timeout: Duration::from_secs(3),
            peers: Vec::new(),
            min_free_bytes: 64 << 20,
            linearizable_timeout: Duration::from_secs(2),
            replica_sync: SyncPolicy::default(),
        }
    }
}

/// Why a server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be used.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The commit loop is gone (the server is shutting down).
    #[error("server is shutting down")]
    Stopped,
    /// A write could not be made durable.
    #[error("write failed: {0}")]
    Write(String),
    /// A request was refused.
    #[error("{0}")]
    Invalid(String),
    /// The data directory's file system has less free space than the reserve: writes
    /// are refused (reads still served) until space returns.
    #[error("ERR_DISK_FULL: {0}")]
    DiskFull(String),
    /// A linearizable request found no majority of its key's acceptors in time (it
    /// may still take effect).
    #[error("ERR_UNAVAILABLE: {0}")]
    Unavailable(String),
}

/// Why an anti-entropy round stopped early (logged; the next round starts afresh).
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// The peer's answers broke the protocol.
    #[error(transparent)]
    Protocol(#[from] SyncError),
    /// The request could not be carried (link closed, timeout, bad frame).
    #[error(transparent)]
    Transport(#[from] FrameError),
    /// What was received could not be committed.
    #[error(transparent)]
    Commit(#[from] ServerError),
}

/// What the commit thread is handed.
enum CommitJob {
    /// Ops to commit together; the reply gets their outcomes once they are committed
    /// (durable, unless `relaxed`: other servers' writes, fsynced late).
    Ops {
        ops: Vec<Op>,
        reply: Option<oneshot::Sender<Result<Vec<Outcome>, ServerError>>>,
        relaxed: bool,
    },
    /// Nothing: wakes the commit thread (a deferred fsync is due, or it should stop).
    Wake,
    /// A message from a peer's push stream (kept in order with that peer's pushes).
    Peer { from: NodeId, msg: PeerMsg },
    /// A request for this server's acceptor: answered once its new state is durable.
    Paxos {
        req: meshkv_core::paxos::PaxosReq,
        reply: oneshot::Sender<Result<meshkv_core::paxos::PaxosResp, ServerError>>,
    },
}

/// Per-peer counters, shown in status.
#[derive(Default)]
struct PeerStats {
    pushes_sent: AtomicU64,
    pushes_dropped: AtomicU64,
    pushes_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    sync_rounds: AtomicU64,
    catchup_keys_received: AtomicU64,
    catchup_bytes_received: AtomicU64,
    catchup_keys_sent: AtomicU64,
    catchup_bytes_sent: AtomicU64,
    walks: AtomicU64,
    last_sync_ok_ms: AtomicU64,
    connects: AtomicU64,
}

/// Bytes of pushes and gifts queued for one peer's push stream at most: beyond it new
/// ones are dropped (pushes are counted in `pushes_dropped`), and anti-entropy brings them to the
/// peer later, so a slow or stuck peer costs bounded memory.
pub const PUSH_QUEUE_BYTES: u64 = 64 << 20;

/// The sending end of one connection's push stream, with the bytes it holds.
struct PushTx {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicU64>,
}

impl PushTx {
    fn new() -> (PushTx, PushRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        (
            PushTx {
                tx,
                queued: queued.clone(),
            },
            PushRx { rx, queued },
        )
    }

    /// Queue a frame. A push or gift (`droppable`) that would take the queue past
    /// [`PUSH_QUEUE_BYTES`] is dropped instead; control messages (`Hello`, `Links`)
    /// never are. False when not queued.
    fn send(&self, frame: Bytes, droppable: bool) -> bool {
        let n = frame.len() as u64;
        if droppable && self.queued.load(Relaxed).saturating_add(n) > PUSH_QUEUE_BYTES {
            return false;
        }
        self.queued.fetch_add(n, Relaxed);
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }
}

/// The receiving end, for the `push-writer` task.
struct PushRx {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicU64>,
}

impl PushRx {
    async fn recv(&mut self) -> Option<Bytes> {
        let f = self.rx.recv().await?;
        self.queued.fetch_sub(f.len() as u64, Relaxed);
        Some(f)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        let f = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(f.len() as u64, Relaxed);
        Some(f)
    }
}

#[derive(Default)]
struct PeerSlot {
    addr: Option<SocketAddr>,
    blocked: bool,
    conn: Option<(u64, quinn::Connection)>,
    tx: Option<PushTx>,
    stats: Arc<PeerStats>,
    changed: Arc<Notify>,
}

struct Shared {
    id: NodeId,
    /// This incarnation's origin id (the `origin` of the dots it hands out).
    rid: NodeId,
    /// Set once the server has caught up after its start (or the catch-up timeout
    /// passed); client requests wait for it (HTTP answers 503 until then).
    ready: std::sync::atomic::AtomicBool,
    /// Woken after every sync round and link change, to re-evaluate readiness.
    ready_changed: Notify,
    /// Peers that were not caught up with when the timeout made the server ready.
    ready_note: Mutex<Option<String>>,
    /// Incoming connections refused because another live process has the same id.
    duplicates_refused: AtomicU64,
    /// Set when a peer refused this process as a duplicate of a live server.
    refused_as_duplicate: Mutex<Option<String>>,
    /// Every background task (named, owned, stopped by [`Server::shutdown`]).
    workers: crate::workers::Workers,
    /// The commit thread, joined by [`Server::shutdown`].
    commit_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by [`Server::shutdown`]: the commit thread exits at its next wake-up.
    stopping: std::sync::atomic::AtomicBool,
    /// Servers removed from the cluster (member keys with a tombstone): refused.
    removed: Mutex<BTreeSet<NodeId>>,
    /// Whether the last batch found the disk below the free-space reserve.
    disk_full: std::sync::atomic::AtomicBool,
    opts: ServerOpts,
    replica: Mutex<Replica>,
    commit_tx: mpsc::Sender<CommitJob>,
    endpoint: quinn::Endpoint,
    peers: Mutex<HashMap<NodeId, PeerSlot>>,
    next_gen: AtomicU64,
    storage_stats: Mutex<StorageStats>,
    commits: tokio::sync::watch::Sender<u64>,
    /// When the commit thread's deferred fsync is due (wall µs), for `fsync-timer`.
    sync_due: tokio::sync::watch::Sender<Option<u64>>,
    started: Instant,
    client_puts: AtomicU64,
    client_gets: AtomicU64,
    /// Inputs of the `scheduler` task's [`Schedule`] (links, peers, ends of rounds,
    /// dials and trims). Sent while the `peers` lock is held where the input reports a
    /// change of a [`PeerSlot`], so the schedule sees those changes in their order.
    sched_tx: mpsc::UnboundedSender<SchedInput>,
    /// The counter of this incarnation's last ballot.
    ballots: AtomicU64,
    /// Linearizable operations completed, attempts retried, and answered unavailable.
    lin_ops: AtomicU64,
    lin_retries: AtomicU64,
    lin_unavailable: AtomicU64,
    /// Every change applied to a client key, for `GET /watch`.
    feed: crate::feed::Feed,
}

/// A running server.
#[derive(Clone)]
pub struct Server {
    sh: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug; the data behind it is still consistent
    // enough to keep answering (every mutation is a single assignment).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC application close code: "another live server already has your id".
const CLOSE_DUPLICATE: u32 = 7;

/// A fresh origin id for this incarnation: random, never 0.
fn fresh_rid() -> NodeId {
    loop {
        let r: u64 = rand::random();
        if r != 0 {
            return r;
        }
    }
}

impl Server {
    /// Open the store, bind the endpoint and start every background task.
    pub async fn start(opts: ServerOpts) -> Result<Server, ServerError> {
        let rid = fresh_rid();
        let (storage, replica) = Storage::open(
            &opts.data_dir,
            opts.id,
            rid,
            opts.cache_bytes,
            opts.limits.clone(),
        )?;
        tracing::info!(
            "server {}: incarnation {rid:016x} ({} keys in the store)",
            opts.id,
            replica.len()
        );
        let endpoint = net::server_endpoint(opts.listen, &opts.tls, &opts.tuning)?;
        let (commit_tx, commit_rx) = mpsc::channel(16_384);
        let (commits, _) = tokio::sync::watch::channel(0u64);
        let (sync_due, _) = tokio::sync::watch::channel(None);
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let sh = Arc::new(Shared {
            id: opts.id,
            rid,
            ready: std::sync::atomic::AtomicBool::new(false),
            ready_changed: Notify::new(),
            ready_note: Mutex::new(None),
            duplicates_refused: AtomicU64::new(0),
            refused_as_duplicate: Mutex::new(None),
            disk_full: std::sync::atomic::AtomicBool::new(false),
            removed: Mutex::new(BTreeSet::new()),
            workers: crate::workers::Workers::new(),
            commit_thread: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            opts: opts.clone(),
            storage_stats: Mutex::new(storage.stats()),
            replica: Mutex::new(replica),
            commit_tx,
            endpoint,
            peers: Mutex::new(HashMap::new()),
            next_gen: AtomicU64::new(1),
            commits,
            sync_due,
            started: Instant::now(),
            client_puts: AtomicU64::new(0),
            client_gets: AtomicU64::new(0),
            sched_tx,
            ballots: AtomicU64::new(0),
            lin_ops: AtomicU64::new(0),
            lin_retries: AtomicU64::new(0),
            lin_unavailable: AtomicU64::new(0),
            feed: crate::feed::Feed::new(rid),
        });
        {
            let sh2 = sh.clone();
            let rt = tokio::runtime::Handle::current();
            let t = std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    let _g = rt.enter();
                    commit_loop(sh2, storage, commit_rx)
                })
                .map_err(|e| ServerError::Write(format!("cannot start commit thread: {e}")))?;
            *lock(&sh.commit_thread) = Some(t);
        }
        sh.workers
            .spawn("accept", "server", sh.clone().accept_loop());
        sh.workers
            .spawn("fsync-timer", "commit thread", sh.clone().fsync_timer());
        sh.workers
            .spawn("expiry", "server", sh.clone().expiry_loop());
        for (id, addr) in &opts.peers {
            sh.set_peer(*id, Some(*addr));
        }
        // Membership changes made at runtime (persisted as member keys) override the
        // peers of the config file.
        let records = lock(&sh.replica).member_records();
        sh.apply_members(records);
        // Every peer known at the start has been told: now the schedule runs.
        let _ = sh.sched_tx.send(SchedInput::Start);
        sh.workers
            .spawn("scheduler", "server", sh.clone().scheduler(sched_rx));
        Ok(Server { sh })
    }

    /// The server's id.
    pub fn id(&self) -> NodeId {
        self.sh.id
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.sh.endpoint.local_addr().ok()
    }

    /// `id` is a member at `addr` and the link is allowed; dial it if we are the dialer.
    pub fn set_peer(&self, id: NodeId, addr: Option<SocketAddr>) {
        self.sh.set_peer(id, addr)
    }

    /// Record `id` as a member without connecting to it (it is down).
    pub fn add_member(&self, id: NodeId) {
        lock(&self.sh.replica).add_member(id);
    }

    /// Cut the link to `id` and refuse it until [`Server::set_peer`].
    pub fn block(&self, id: NodeId) {
        self.sh.block(id)
    }

    /// Wait until the link to `id` is up, at most `wait`. True when up.
    pub async fn wait_link(&self, id: NodeId, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = {
                let peers = lock(&self.sh.peers);
                match peers.get(&id) {
                    Some(p) if p.conn.is_some() => return true,
                    Some(p) => p.changed.clone(),
                    None => return false,
                }
            };
            let fut = notify.notified();
            // Re-check after registering interest so no wake-up is missed.
            if lock(&self.sh.peers)
                .get(&id)
                .is_some_and(|p| p.conn.is_some())
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, fut).await.is_err() {
                return false;
            }
        }
    }

    /// Write through this server (value `None` deletes); resolves once durable. With
    /// a session dependency `dep` the outcome is [`Outcome::Dep`] (nothing written)
    /// while this replica does not hold that write.
    pub async fn put(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        seen_ts: u64,
        dep: Option<meshkv_core::Dot>,
    ) -> Result<Outcome, ServerError> {
        self.put_expiring(key, value, seen_ts, dep, None).await
    }

    /// [`Server::put`] of a value that expires `ttl` after the write's timestamp (see
    /// [`meshkv_core::entry`]).
    pub async fn put_expiring(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        seen_ts: u64,
        dep: Option<meshkv_core::Dot>,
        ttl: Option<Duration>,
    ) -> Result<Outcome, ServerError> {
        self.check_key(&key)?;
        if let Some(v) = &value {
            if v.len() > self.sh.opts.max_value {
                return Err(ServerError::Invalid(format!(
                    "value of {} bytes exceeds the {}-byte limit",
                    v.len(),
                    self.sh.opts.max_value
                )));
            }
        }
        self.sh.client_puts.fetch_add(1, Relaxed);
        let mut out = self
            .sh
            .commit(vec![Op::Put {
                key,
                value,
                seen_ts,
                dep,
                ttl: ttl.map(micros),
            }])
            .await?;
        out.pop().ok_or(ServerError::Stopped)
    }

    /// Run a linearizable operation on `key` (see [`meshkv_core::paxos`]).
    pub async fn linearizable(
        &self,
        key: Vec<u8>,
        change: meshkv_core::paxos::Change,
    ) -> Result<LinOutcome, ServerError> {
        self.linearizable_expiring(key, change, None).await
    }

    /// [`Server::linearizable`] whose write expires `ttl` after its timestamp (see
    /// "Expiry" in [`meshkv_core::paxos`]).
    pub async fn linearizable_expiring(
        &self,
        key: Vec<u8>,
        change: meshkv_core::paxos::Change,
        ttl: Option<Duration>,
    ) -> Result<LinOutcome, ServerError> {
        self.check_key(&key)?;
        if let meshkv_core::paxos::Change::Write { value: Some(v), .. } = &change {
            if v.len() > self.sh.opts.max_value {
                return Err(ServerError::Invalid(format!(
                    "value of {} bytes exceeds the {}-byte limit",
                    v.len(),
                    self.sh.opts.max_value
                )));
            }
        }
        match &change {
            meshkv_core::paxos::Change::Read => self.sh.client_gets.fetch_add(1, Relaxed),
            _ => self.sh.client_puts.fetch_add(1, Relaxed),
        };
        self.sh.linearizable(key, change, ttl.map(micros)).await
    }

    /// The acceptor set of `key` (the servers that vote on its linearizable register).
    /// A consistent snapshot of the store (see [`crate::snapshot`]).
    pub fn snapshot(&self) -> (crate::snapshot::Header, crate::snapshot::Entries) {
        let (seen, entries) = lock(&self.sh.replica).snapshot();
        let taken_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let header = crate::snapshot::Header {
            node: self.sh.id,
            incarnation: self.sh.rid,
            taken_ms,
            seen,
            entries: entries.len() as u64,
        };
        (header, entries)
    }

    /// The change feed (`GET /watch`).
    pub fn feed(&self) -> &crate::feed::Feed {
        &self.sh.feed
    }

    /// Up to `limit` live client entries with keys in `[start, end)` (`end` `None`:
    /// unbounded), in byte order: `(key, value, version)`, one snapshot of the store.
    pub fn list(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>, Version)> {
        let r = lock(&self.sh.replica);
        let now = r.now(crate::clock::wall_micros());
        r.scan(start, end, limit, keys_only, now)
    }

    pub fn acceptors_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.sh.acceptor_set(key)
    }

    /// Read with the session check.
    pub fn get(
        &self,
        key: &[u8],
        dep: Option<meshkv_core::Dot>,
        seen_ts: u64,
    ) -> Result<ReadOutcome, ServerError> {
        self.check_key(key)?;
        self.sh.client_gets.fetch_add(1, Relaxed);
        let wall = crate::clock::wall_micros();
        Ok(lock(&self.sh.replica).read(key, dep, seen_ts, wall))
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ServerError> {
        if key.is_empty() {
            return Err(ServerError::Invalid("empty key".into()));
        }
        if meshkv_core::replica::is_reserved(key) {
            return Err(ServerError::Invalid(
                "keys starting with a zero byte and \"meshkv/\" are reserved".into(),
            ));
        }
        if key.len() > self.sh.opts.max_key {
            return Err(ServerError::Invalid(format!(
                "key of {} bytes exceeds the {}-byte limit",
                key.len(),
                self.sh.opts.max_key
            )));
        }
        Ok(())
    }

    /// Wait until a commit happens or `wait` passes.
    pub async fn wait_commit(&self, wait: Duration) {
        let mut rx = self.sh.commits.subscribe();
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }

    /// Digest root, number of keys, watermarks.
    pub fn digest(&self) -> (u64, usize, VersionVector) {
        let r = lock(&self.sh.replica);
        (r.root(), r.len(), r.seen().clone())
    }

    /// Every live `(key, value)` in key order.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let r = lock(&self.sh.replica);
        r.dump_at(r.now(crate::clock::wall_micros()))
    }

    /// Status of the server and its background tasks.
    pub fn status(&self) -> Status {
        self.sh.status()
    }

    /// The status of this server and of every peer it has a link to (asked over the
    /// link, at most `wait` each, all at once): what the dashboard shows. A peer
    /// without a link, or that did not answer, maps to why.
    pub async fn mesh_status(
        &self,
        wait: Duration,
    ) -> BTreeMap<NodeId, Result<serde_json::Value, String>> {
        let sh = &self.sh;
        let mut out = BTreeMap::new();
        out.insert(
            sh.id,
            serde_json::to_value(sh.status()).map_err(|e| e.to_string()),
        );
        let peers: Vec<(NodeId, Option<quinn::Connection>, Arc<PeerStats>)> = lock(&sh.peers)
            .iter()
            .filter(|(id, _)| **id != sh.id)
            .map(|(id, p)| {
                (
                    *id,
                    p.conn.as_ref().map(|(_, c)| c.clone()),
                    p.stats.clone(),
                )
            })
            .collect();
        let asks = peers.into_iter().map(|(id, conn, st)| async move {
            let Some(conn) = conn else {
                return (id, Err("no link".to_string()));
            };
            let r = tokio::time::timeout(wait, sh.ask(&conn, PeerReq::Status, &st)).await;
            let v = match r {
                Err(_) => Err(format!("no answer within {wait:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(PeerResp::Status(j))) => serde_json::from_str(&j).map_err(|e| e.to_string()),
                Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            };
            (id, v)
        });
        out.extend(futures_util::future::join_all(asks).await);
        out
    }

    /// Add server `id` at `addr` to the cluster (or change its address): a replicated,
    /// persisted member record; every server links to it once the record reaches it.
    pub async fn member_add(&self, id: NodeId, addr: SocketAddr) -> Result<(), ServerError> {
        self.member_write(id, Some(addr.to_string().into_bytes()))
            .await
    }

    /// Remove server `id` from the cluster: every server cuts and refuses it and stops
    /// keeping log records and tombstones for it.
    pub async fn member_remove(&self, id: NodeId) -> Result<(), ServerError> {
        if id == self.sh.id {
            return Err(ServerError::Invalid(
                "a server cannot remove itself: ask another member".into(),
            ));
        }
        self.member_write(id, None).await
    }

    async fn member_write(&self, id: NodeId, value: Option<Vec<u8>>) -> Result<(), ServerError> {
        let key = meshkv_core::replica::member_key(id);
        self.sh
            .commit(vec![Op::Put {
                key,
                value,
                seen_ts: 0,
                dep: None,
                ttl: None,
            }])
            .await
            .map(|_| ())
    }

    /// The membership as this server knows it: every server it links to or was told
    /// of, with its address, link state and whether it was removed.
    pub fn members(&self) -> Vec<MemberStatus> {
        let mut out: BTreeMap<NodeId, MemberStatus> = BTreeMap::new();
        out.insert(
            self.sh.id,
            MemberStatus {
                id: self.sh.id,
                addr: self.quic_addr().map(|a| a.to_string()),
                state: "self",
                link: "self",
            },
        );
        for (id, p) in lock(&self.sh.peers).iter() {
            out.insert(
                *id,
                MemberStatus {
                    id: *id,
                    addr: p.addr.map(|a| a.to_string()),
                    state: "member",
                    link: if p.blocked {
                        "blocked"
                    } else if p.conn.is_some() {
                        "up"
                    } else {
                        "down"
                    },
                },
            );
        }
        for id in lock(&self.sh.replica).members() {
            out.entry(id).or_insert(MemberStatus {
                id,
                addr: None,
                state: "member",
                link: "down",
            });
        }
        for id in lock(&self.sh.removed).iter() {
            out.insert(
                *id,
                MemberStatus {
                    id: *id,
                    addr: None,
                    state: "removed",
                    link: "refused",
                },
            );
        }
        out.into_values().collect()
    }

    /// Whether writes are refused because the disk is below the free-space reserve.
    pub fn is_disk_full(&self) -> bool {
        self.sh.below_reserve()
    }

    /// Whether the server has caught up after its start (or given up waiting) and
    /// serves client requests.
    pub fn is_ready(&self) -> bool {
        self.sh.ready.load(Relaxed)
    }

    /// Whether a sync round has completed, since this process started, with every
    /// peer whose address is known and whose link is not blocked.
    pub fn caught_up(&self) -> bool {
        self.sh.caught_up().is_empty()
    }

    /// Wait until [`Server::caught_up`] holds, at most `wait`; true when it does.
    pub async fn wait_caught_up(&self, wait: Duration) -> bool {
        self.wait_until(wait, || self.caught_up()).await
    }

    /// Wait until the server is ready, at most `wait`; true when it is.
    pub async fn wait_ready(&self, wait: Duration) -> bool {
        self.wait_until(wait, || self.is_ready()).await
    }

    /// Re-check `cond` after every readiness-relevant event, at most `wait`.
    async fn wait_until(&self, wait: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.sh.ready_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond();
            }
        }
    }

    /// Stop the server: close every connection, stop every background task and the
    /// commit thread (after the batch it is writing, if any), and wait for them.
    /// Returns whether everything stopped within 10 s.
    pub async fn shutdown(&self) -> bool {
        let sh = &self.sh;
        sh.workers.stop();
        sh.endpoint.close(0u32.into(), b"shutdown");
        sh.stopping.store(true, Relaxed);
        sh.feed.close();
        // Wake the commit thread (it exits on seeing `stopping`).
        let _ =
            tokio::time::timeout(Duration::from_secs(5), sh.commit_tx.send(CommitJob::Wake)).await;
        let thread = lock(&sh.commit_thread).take();
        let joined = match thread {
            Some(t) => tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await
            .is_ok(),
            None => true,
        };
        let tasks = sh.workers.join(Duration::from_secs(5)).await;
        joined && tasks
    }

    /// Background tasks by name and owner: how many run and how many ever started.
    pub fn workers(&self) -> Vec<crate::workers::WorkerStatus> {
        self.sh.workers.status()
    }

    /// Run `fut` as one of this server's tasks (named, owned, in `/status`, stopped by
    /// [`Server::shutdown`]); the HTTP listener's tasks are started this way.
    pub fn spawn_task<F>(&self, name: &str, owner: &str, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.sh.workers.spawn(name, owner, fut);
    }
}

/// One line of [`Server::members`].
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    /// Server id.
    pub id: NodeId,
    /// Its QUIC address, when known.
    pub addr: Option<String>,
    /// `self`, `member` or `removed`.
    pub state: &'static str,
    /// `self`, `up`, `down`, `blocked` or `refused`.
    pub link: &'static str,
}

/// The clock part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct ClockStatus {
    /// The hybrid logical clock (µs since the epoch).
    pub hlc_micros: u64,
    /// This machine's wall clock when the status was taken.
    pub wall_micros: u64,
    /// How far the HLC is ahead of the wall clock (ms); large after this machine's
    /// clock was set back, since the HLC never goes back.
    pub hlc_ahead_ms: i64,
    /// The highest timestamp stored or seen from a peer; far ahead of `wall_micros`
    /// means some server's clock is (or was) fast.
    pub max_seen_micros: u64,
    /// Timestamps from peers or clients further ahead than the offset bound (they did
    /// not move this clock).
    pub ahead_refused: u64,
    /// The largest such lead (ms).
    pub max_ahead_ms: u64,
    /// The offset bound (ms).
    pub max_offset_ms: u64,
}

/// A snapshot of a server's state for `status` and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Server id.
    pub node: NodeId,
    /// This incarnation's origin id (hex): the origin of the dots it hands out. A new
    /// one is drawn at every start; the watermarks of earlier ones show in `seen`.
    pub incarnation: String,
    /// Whether it serves clients (caught up after its start, or timed out waiting).
    pub ready: bool,
    /// Why it became ready without catching up with every peer, if it did.
    pub ready_note: Option<String>,
    /// The hybrid clock against the wall clock, and what the offset bound refused.
    pub clock: ClockStatus,
    /// Writes are refused: the disk is below the free-space reserve.
    pub disk_full: bool,
    /// Incoming connections refused as duplicates of a live server's id.
    pub duplicates_refused: u64,
    /// Background tasks by name and owner (running now, started in all).
    pub workers: Vec<crate::workers::WorkerStatus>,
    /// Set when a peer refused this process as a duplicate of a live server.
    pub refused_as_duplicate: Option<String>,
    /// QUIC address.
    pub quic: Option<String>,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Number of keys (tombstones included).
    pub keys: usize,
    /// Tombstones held.
    pub tombstones: usize,
    /// Digest root (hex).
    pub digest_root: String,
    /// Watermarks.
    pub seen: BTreeMap<NodeId, u64>,
    /// Log floor.
    pub floor: BTreeMap<NodeId, u64>,
    /// Log records held.
    pub log_records: usize,
    /// Client puts and gets served.
    pub client_puts: u64,
    /// Client gets served.
    pub client_gets: u64,
    /// Linearizable operations this server proposed: completed, attempts retried,
    /// answered unavailable.
    pub linearizable: LinearizableStatus,
    /// Storage counters.
    pub storage: StorageStats,
    /// Per peer.
    pub peers: Vec<PeerStatus>,
}

/// The linearizable counters in [`Status`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinearizableStatus {
    /// Operations completed.
    pub ops: u64,
    /// Attempts retried (a competing ballot, a lost message).
    pub retries: u64,
    /// Operations answered `ERR_UNAVAILABLE`.
    pub unavailable: u64,
}

/// One peer in [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// Peer id.
    pub id: NodeId,
    /// Its address as we know it.
    pub addr: Option<String>,
    /// `up`, `down` or `blocked`.
    pub link: &'static str,
    /// Its current incarnation (hex), once it said so.
    pub incarnation: Option<String>,
    /// Its watermarks as last reported.
    pub seen: Option<BTreeMap<NodeId, u64>>,
    /// How far its watermarks lag ours (writes), when known.
    pub lag: Option<u64>,
    /// Pushes sent to it.
    pub pushes_sent: u64,
    /// Pushes not queued because its queue was full ([`PUSH_QUEUE_BYTES`]); anti-entropy
    /// delivers them.
    pub pushes_dropped: u64,
    /// Pushes received from it.
    pub pushes_received: u64,
    /// Bytes sent to it on all streams.
    pub bytes_sent: u64,
    /// Bytes received from it on all streams.
    pub bytes_received: u64,
    /// Anti-entropy rounds completed with it.
    pub sync_rounds: u64,
    /// Tree walks run against it.
    pub walks: u64,
    /// Keys received through catch-up (sync answers and walks).
    pub catchup_keys_received: u64,
    /// Bytes received through catch-up.
    pub catchup_bytes_received: u64,
    /// Keys sent through catch-up.
    pub catchup_keys_sent: u64,
    /// Bytes sent through catch-up.
    pub catchup_bytes_sent: u64,
    /// Unix ms of the last successful anti-entropy round (0: never).
    pub last_sync_ok_ms: u64,
    /// Connections established.
    pub connects: u64,
}

fn vv_map(v: &VersionVector) -> BTreeMap<NodeId, u64> {
    v.iter().collect()
}

/// The commit thread: a driver of the core's write path ([`Committer`]). It gathers
/// the queued jobs, stages them as one batch, makes the batch durable (the fsync), and
/// carries out what the committer then says: member changes, replies, pushes.
fn commit_loop(sh: Arc<Shared>, mut storage: Storage, mut rx: mpsc::Receiver<CommitJob>) {
    type Reply = oneshot::Sender<Result<Vec<Outcome>, ServerError>>;
    let mut n = 0u64;
    let mut ahead_logged = 0u64;
    let mut committer = Committer::with_policy(sh.opts.replica_sync);
    // Test-only (`MESHKV_TEST_MUTATION=ack-before-fsync`): every write is relaxed, so
    // clients are answered before their writes are durable (a deliberately broken
    // server, to show the power-cut test catches it).
    let ack_before_fsync =
        std::env::var("MESHKV_TEST_MUTATION").is_ok_and(|m| m == "ack-before-fsync");
    if ack_before_fsync {
        tracing::warn!("MESHKV_TEST_MUTATION=ack-before-fsync: writes are acknowledged before they are durable (a deliberately broken server for tests)");
    }
    let mut waiting: HashMap<Ticket, Reply> = HashMap::new();
    let mut next_ticket: Ticket = 0;
    while let Some(first) = rx.blocking_recv() {
        if sh.stopping.load(Relaxed) {
            break;
        }
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // Below the free-space reserve nothing is staged: writers get ERR_DISK_FULL,
        // pushes are dropped (anti-entropy brings them back once space returns), and
        // reads go on. Checked before every batch, so the server recovers by itself.
        let full = sh.disk_full();
        let mut acceptor_jobs = Vec::new();
        let mut woken = false;
        for job in jobs {
            match (job, &full) {
                (CommitJob::Ops { reply, .. }, Some(why)) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(ServerError::DiskFull(why.clone())));
                    }
                }
                (
                    CommitJob::Ops {
                        ops,
                        reply,
                        relaxed,
                    },
                    None,
                ) => {
                    let ticket = reply.map(|r| {
                        next_ticket += 1;
                        waiting.insert(next_ticket, r);
                        next_ticket
                    });
                    if relaxed || ack_before_fsync {
                        committer.submit_relaxed(ticket, ops);
                    } else {
                        committer.submit(ticket, ops);
                    }
                }
                (CommitJob::Wake, _) => woken = true,
                (
                    CommitJob::Peer {
                        msg: PeerMsg::Push { .. },
                        ..
                    },
                    Some(_),
                ) => {}
                (CommitJob::Peer { from, msg }, _) => {
                    committer.peer_message(&mut lock(&sh.replica), from, msg)
                }
                // Acceptor records are tiny: they may use the top of the reserve, so
                // that linearizable reads go on while writes are refused.
                (CommitJob::Paxos { reply, .. }, Some(why)) if !sh.acceptor_room() => {
                    let _ = reply.send(Err(ServerError::DiskFull(why.clone())));
                }
                (CommitJob::Paxos { req, reply }, _) => acceptor_jobs.push((req, reply)),
            }
        }
        if !acceptor_jobs.is_empty() {
            if let Err(e) = register::answer_acceptors(&mut storage, acceptor_jobs) {
                tracing::error!("cannot make acceptor state durable, stopping: {e}");
                eprintln!("meshkv server {}: fatal storage error: {e}", sh.id);
                std::process::exit(70);
            }
            *lock(&sh.storage_stats) = storage.stats();
        }
        loop {
            let out = committer.poll(&mut lock(&sh.replica), crate::clock::wall_micros());
            match out {
                None => break,
                Some(CommitOutput::Sync) => {
                    if let Err(e) = storage.sync() {
                        tracing::error!("cannot make written batches durable, stopping: {e}");
                        eprintln!("meshkv server {}: fatal storage error: {e}", sh.id);
                        std::process::exit(70);
                    }
                    *lock(&sh.storage_stats) = storage.stats();
                    committer.synced();
                }
                Some(CommitOutput::Persist { mut batch, fsync }) => {
                    let skew = lock(&sh.replica).clock_skew();
                    // One line per burst of far-ahead timestamps (powers of two).
                    if skew.ahead > ahead_logged && skew.ahead >= ahead_logged.saturating_mul(2) {
                        tracing::warn!(
                            "server {}: {} timestamp(s) from peers or clients were more than {} ms ahead of this clock (max lead {} ms) and did not move it: is a clock fast?",
                            sh.id,
                            skew.ahead,
                            sh.opts.limits.max_clock_offset / 1000,
                            skew.max_ahead_micros / 1000
                        );
                        ahead_logged = skew.ahead;
                    }
                    // Persist is a no-op for a batch that changes nothing.
                    if let Err(e) = storage.persist(&batch, fsync) {
                        tracing::error!("cannot make a batch durable, stopping: {e}");
                        eprintln!("meshkv server {}: fatal storage error: {e}", sh.id);
                        std::process::exit(70);
                    }
                    *lock(&sh.storage_stats) = storage.stats();
                    let mut replica = lock(&sh.replica);
                    // What the batch changes, in order, for the watchers: recorded
                    // once it is committed.
                    let changes: Vec<_> = std::mem::take(&mut batch.changes)
                        .into_iter()
                        .map(|c| (c.key, c.value, c.version, c.expired))
                        .collect();
                    committer.persisted(&mut replica, batch);
                    drop(replica);
                    sh.feed.record(changes);
                    n += 1;
                }
                Some(CommitOutput::Members(records)) => sh.apply_members(records),
                Some(CommitOutput::Reply { ticket, outcomes }) => {
                    if let Some(r) = waiting.remove(&ticket) {
                        let _ = r.send(Ok(outcomes));
                    }
                }
                Some(CommitOutput::Push { targets, msg }) => sh.push_to(&targets, &msg),
            }
        }
        sh.commits.send_replace(n);
        let due = committer.poll_timeout();
        // The timer hears of every change, and of every wake-up it caused.
        sh.sync_due
            .send_if_modified(|d| std::mem::replace(d, due) != due || woken);
    }
    // Stopping: what was written becomes durable before the store closes.
    if let Err(e) = storage.sync() {
        tracing::warn!("server {}: final fsync failed: {e}", sh.id);
    }
}

impl Shared {
    /// Peers with a known address and an allowed link that no sync round has completed
    /// with since this process started.
    fn caught_up(&self) -> Vec<NodeId> {
        lock(&self.peers)
            .iter()
            .filter(|(_, p)| {
                schedule::waits_for(
                    p.addr.is_some(),
                    p.blocked,
                    p.stats.sync_rounds.load(Relaxed),
                )
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Monotonic microseconds since this process started: the schedule's `now`.
    fn mono_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The `scheduler` task: drives the core's [`Schedule`] (dialing, anti-entropy
    /// rounds, trims, readiness) and carries out its actions, each as a task of its own
    /// that reports its end back as an input.
    async fn scheduler(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<SchedInput>) {
        let timing = Timing {
            sync_interval: micros(self.opts.sync_interval),
            trim_interval: micros(self.opts.trim_interval),
            catchup_timeout: micros(self.opts.catchup_timeout),
            ..Timing::default()
        };
        let mut sched = Schedule::new(self.id, timing, 0);
        loop {
            while let Some(action) = sched.poll_action() {
                self.carry_out(action);
            }
            let input = match sched.poll_timeout() {
                Some(at) => {
                    let wait = Duration::from_micros(at.saturating_sub(self.mono_micros()));
                    tokio::select! {
                        input = rx.recv() => input,
                        _ = tokio::time::sleep(wait) => Some(SchedInput::Tick),
                    }
                }
                None => rx.recv().await,
            };
            let Some(input) = input else { return };
            sched.handle(self.mono_micros(), input);
        }
    }

    fn carry_out(self: &Arc<Self>, action: SchedAction) {
        let sh = self.clone();
        match action {
            SchedAction::Dial(id) => {
                self.workers
                    .spawn("dial", format!("peer {id}"), async move {
                        let (linked, refused) = sh.dial_once(id).await;
                        let _ = sh.sched_tx.send(SchedInput::DialEnded {
                            id,
                            linked,
                            refused,
                        });
                    });
            }
            SchedAction::Round(id) => {
                self.workers
                    .spawn("sync-round", format!("peer {id}"), async move {
                        let ok = sh.anti_entropy(id).await;
                        let _ = sh.sched_tx.send(SchedInput::RoundDone { id, ok });
                    });
            }
            SchedAction::Trim => {
                self.workers.spawn("trim", "scheduler", async move {
                    // Relaxed: a trim lost in a machine crash is simply done again.
                    // Below the disk reserve nothing is trimmed; the next one retries.
                    let _ = sh.commit_relaxed(vec![Op::Trim]).await;
                    let _ = sh.sched_tx.send(SchedInput::Trimmed);
                });
            }
            SchedAction::Ready { missing } => {
                if !missing.is_empty() {
                    let note = format!(
                        "serving after the {} ms catch-up timeout without a sync round with server(s) {missing:?}",
                        self.opts.catchup_timeout.as_millis()
                    );
                    tracing::warn!("server {}: {note}", self.id);
                    *lock(&self.ready_note) = Some(note);
                }
                self.ready.store(true, Relaxed);
                self.ready_changed.notify_waiters();
                tracing::info!("server {}: ready", self.id);
            }
        }
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, ServerError> {
        self.commit_as(ops, false).await
    }

    /// Commit ops that need not be durable when they are done — other servers'
    /// writes (a sync round's), trims, expiries — fsynced late ([`meshkv_core::commit`]).
    async fn commit_relaxed(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, ServerError> {
        self.commit_as(ops, true).await
    }

    async fn commit_as(&self, ops: Vec<Op>, relaxed: bool) -> Result<Vec<Outcome>, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.commit_tx
            .send(CommitJob::Ops {
                ops,
                reply: Some(tx),
                relaxed,
            })
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// The `fsync-timer` task: wakes the commit thread when its deferred fsync of
    /// other servers' writes is due (the commit thread only wakes for jobs).
    async fn fsync_timer(self: Arc<Self>) {
        let mut due = self.sync_due.subscribe();
        loop {
            let at = *due.borrow_and_update();
            match at {
                None => {
                    if due.changed().await.is_err() {
                        return;
                    }
                }
                Some(at) => {
                    // At most one delay: if the clock went back, the commit thread
                    // sees it when woken and fsyncs at once.
                    let wait = at
                        .saturating_sub(crate::clock::wall_micros())
                        .min(self.opts.replica_sync.delay);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_micros(wait)) => {
                            if self.commit_tx.send(CommitJob::Wake).await.is_err() {
                                return;
                            }
                            // Wait for the commit thread to take it up.
                            if due.changed().await.is_err() {
                                return;
                            }
                        }
                        changed = due.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// Carry out membership records (from member keys): link to added servers, cut
    /// and refuse removed ones, and stop waiting for them before trimming.
    fn apply_members(self: &Arc<Self>, records: Vec<(NodeId, Option<String>)>) {
        for (id, addr) in records {
            if id == self.id {
                if addr.is_none() {
                    tracing::error!(
                        "server {}: this server was removed from the cluster; its peers refuse it",
                        self.id
                    );
                }
                continue;
            }
            match addr.map(|a| a.parse::<SocketAddr>()) {
                Some(Ok(a)) => {
                    let was_removed = lock(&self.removed).remove(&id);
                    let known = lock(&self.peers).get(&id).and_then(|p| p.addr);
                    if was_removed || known != Some(a) {
                        tracing::info!("server {}: member {id} at {a}", self.id);
                        self.set_peer(id, Some(a));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("server {}: member {id}: bad address: {e}", self.id)
                }
                None => {
                    if lock(&self.removed).insert(id) {
                        tracing::info!("server {}: server {id} removed from the cluster", self.id);
                        self.block(id);
                        lock(&self.peers).remove(&id);
                        lock(&self.replica).remove_member(id);
                        self.ready_changed.notify_waiters();
                    }
                }
            }
        }
    }

    /// Whether there is room for acceptor records: more than a quarter of the reserve.
    fn acceptor_room(&self) -> bool {
        crate::storage::free_bytes(&self.opts.data_dir)
            .is_ok_and(|free| free >= self.opts.min_free_bytes / 4)
    }

    /// Whether the data directory's file system is below the free-space reserve now.
    fn below_reserve(&self) -> bool {
        crate::storage::free_bytes(&self.opts.data_dir)
            .is_ok_and(|free| free < self.opts.min_free_bytes)
    }

    /// `Some(reason)` while the data directory's free space is below the reserve; logs
    /// each change between full and not full once.
    fn disk_full(&self) -> Option<String> {
        let reserve = self.opts.min_free_bytes;
        let full = match crate::storage::free_bytes(&self.opts.data_dir) {
            Ok(free) if free < reserve => Some(format!(
                "{} has {free} bytes free, below the {reserve}-byte reserve; writes are refused until space returns",
                self.opts.data_dir.display()
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("server {}: cannot read free space: {e}", self.id);
                None
            }
        };
        let was = self.disk_full.swap(full.is_some(), Relaxed);
        match (&full, was) {
            (Some(why), false) => tracing::error!("server {}: disk full: {why}", self.id),
            (None, true) => tracing::warn!("server {}: disk space is back; writes resume", self.id),
            _ => {}
        }
        full
    }

    /// Hand a peer's message to the commit thread (the core's write path).
    async fn peer_message(&self, from: NodeId, msg: PeerMsg) -> Result<(), ServerError> {
        self.commit_tx
            .send(CommitJob::Peer { from, msg })
            .await
            .map_err(|_| ServerError::Stopped)
    }

    /// Queue `msg` (a push) on the push stream of each of `targets` that is connected;
    /// encoded once.
    fn push_to(&self, targets: &[NodeId], msg: &PeerMsg) {
        let frame = Bytes::from(proto::encode(msg));
        let peers = lock(&self.peers);
        for p in targets.iter().filter_map(|t| peers.get(t)) {
            if let Some(tx) = &p.tx {
                if tx.send(frame.clone(), true) {
                    p.stats.pushes_sent.fetch_add(1, Relaxed);
                } else {
                    p.stats.pushes_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn send_to(&self, id: NodeId, msg: &PeerMsg) -> bool {
        let frame = Bytes::from(proto::encode(msg));
        let peers = lock(&self.peers);
        peers
            .get(&id)
            .and_then(|p| p.tx.as_ref())
            .is_some_and(|tx| tx.send(frame, true))
    }

    fn broadcast_links(&self) {
        let links = lock(&self.replica).connected();
        let frame = Bytes::from(proto::encode(&PeerMsg::Links(links)));
        for p in lock(&self.peers).values() {
            if let Some(tx) = &p.tx {
                tx.send(frame.clone(), false);
            }
        }
    }

    fn set_peer(self: &Arc<Self>, id: NodeId, addr: Option<SocketAddr>) {
        if id == self.id {
            return;
        }
        lock(&self.replica).add_member(id);
        let stale = {
            let mut peers = lock(&self.peers);
            let p = peers.entry(id).or_default();
            // A new address means a new incarnation of the peer: a connection to the
            // old one is dead even if the idle timeout has not noticed yet.
            let stale = match (addr, &p.conn) {
                (Some(a), Some((_, c))) if c.remote_address() != a => {
                    p.tx = None;
                    let _ = self.sched_tx.send(SchedInput::LinkDown(id));
                    p.conn.take()
                }
                _ => None,
            };
            if addr.is_some() {
                p.addr = addr;
            }
            p.blocked = false;
            p.changed.notify_waiters();
            let _ = self.sched_tx.send(SchedInput::Peer {
                id,
                addr: p.addr.is_some(),
                blocked: false,
            });
            stale
        };
        if let Some((_, c)) = stale {
            c.close(3u32.into(), b"peer restarted");
            lock(&self.replica).set_connected(id, false);
        }
        self.ready_changed.notify_waiters();
    }

    fn block(self: &Arc<Self>, id: NodeId) {
        let conn = {
            let mut peers = lock(&self.peers);
            let p = peers.entry(id).or_default();
            p.blocked = true;
            p.tx = None;
            p.changed.notify_waiters();
            let _ = self.sched_tx.send(SchedInput::Peer {
                id,
                addr: p.addr.is_some(),
                blocked: true,
            });
            if p.conn.is_some() {
                let _ = self.sched_tx.send(SchedInput::LinkDown(id));
            }
            p.conn.take()
        };
        if let Some((_, c)) = conn {
            c.close(1u32.into(), b"blocked");
        }
        lock(&self.replica).set_connected(id, false);
        self.broadcast_links();
        self.ready_changed.notify_waiters();
    }

    /// One attempt to link to peer `id` (the schedule's [`SchedAction::Dial`]): dial,
    /// confirm with a ping, install. Returns (linked, refused as a duplicate id).
    async fn dial_once(self: &Arc<Self>, id: NodeId) -> (bool, bool) {
        let addr = {
            let peers = lock(&self.peers);
            match peers.get(&id) {
                Some(p) if !p.blocked && p.conn.is_none() => p.addr,
                _ => None,
            }
        };
        let Some(addr) = addr else {
            return (false, false);
        };
        let c = match net::connect(
            &self.endpoint,
            addr,
            Identity::server(id),
            Duration::from_secs(2),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("dial server {id} at {addr}: {e}");
                return (false, false);
            }
        };
        // Count the link as up only once the peer has installed it too: it answers
        // requests only on installed connections.
        match frame::request::<_, PeerResp>(&c, &PeerReq::Ping, Duration::from_secs(2)).await {
            Ok((PeerResp::Pong, _, _)) => (self.install(id, c), false),
            other => {
                let mut refused = false;
                if let Some(quinn::ConnectionError::ApplicationClosed(ac)) = c.close_reason() {
                    if ac.error_code == CLOSE_DUPLICATE.into() {
                        let why = String::from_utf8_lossy(&ac.reason).to_string();
                        tracing::error!(
                            "server {}: server {id} refused this process: {why}",
                            self.id
                        );
                        *lock(&self.refused_as_duplicate) =
                            Some(format!("server {id} refused this process: {why}"));
                        refused = true;
                    }
                }
                tracing::debug!("server {}: link to {id} not confirmed: {other:?}", self.id);
                c.close(5u32.into(), b"not confirmed");
                (false, refused)
            }
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let sh = self.clone();
            self.workers
                .spawn("handshake", "incoming connection", async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::info!("server {}: incoming handshake failed: {e}", sh.id);
                            return;
                        }
                    };
                    match pki::peer_identity(&conn) {
                        Ok(Identity {
                            role: Role::Server,
                            id,
                        }) if id != sh.id => {
                            if !sh.refuse_duplicate(id, &conn).await {
                                sh.install(id, conn);
                            }
                        }
                        Ok(Identity {
                            role: Role::Client, ..
                        }) => sh.serve_client(conn).await,
                        Ok(who) => conn.close(2u32.into(), format!("unexpected {who}").as_bytes()),
                        Err(e) => conn.close(2u32.into(), e.to_string().as_bytes()),
                    }
                });
        }
    }

    /// A connection from server `id` while we hold a live one from it at another
    /// address: if the old one still answers a ping (within 500 ms), two processes run
    /// with the same id; the newcomer is refused with [`CLOSE_DUPLICATE`] and a clear
    /// reason, and the server it duplicates keeps its link. A newcomer at the address
    /// we were told for `id` (its new incarnation) is never refused.
    async fn refuse_duplicate(&self, id: NodeId, conn: &quinn::Connection) -> bool {
        let new_addr = conn.remote_address();
        let (old, told) = {
            let peers = lock(&self.peers);
            let Some(p) = peers.get(&id) else {
                return false;
            };
            (p.conn.as_ref().map(|c| c.1.clone()), p.addr)
        };
        let Some(old) = old else { return false };
        let old_addr = old.remote_address();
        if old_addr == new_addr || told == Some(new_addr) {
            return false;
        }
        let alive = matches!(
            frame::request::<_, PeerResp>(&old, &PeerReq::Ping, Duration::from_millis(500)).await,
            Ok((PeerResp::Pong, _, _))
        );
        if !alive {
            return false;
        }
        self.duplicates_refused.fetch_add(1, Relaxed);
        let why = format!(
            "duplicate server id {id}: server {id} is already connected from {old_addr}; \
             refusing the process at {new_addr}"
        );
        tracing::error!("server {}: {why}", self.id);
        conn.close(CLOSE_DUPLICATE.into(), why.as_bytes());
        true
    }

    /// Install `conn` as the link to peer `id` (unless the peer is removed or blocked:
    /// then it is closed and `false` returned), and start its tasks.
    fn install(self: &Arc<Self>, id: NodeId, conn: quinn::Connection) -> bool {
        let gen = self.next_gen.fetch_add(1, Relaxed);
        let (tx, rx) = PushTx::new();
        let (old, stats) = {
            let mut peers = lock(&self.peers);
            if lock(&self.removed).contains(&id) {
                drop(peers);
                tracing::debug!("server {}: refusing removed server {id}", self.id);
                conn.close(1u32.into(), b"removed from the cluster");
                return false;
            }
            let p = peers.entry(id).or_default();
            if p.blocked {
                drop(peers);
                tracing::debug!("server {}: refusing blocked server {id}", self.id);
                conn.close(1u32.into(), b"blocked");
                return false;
            }
            let old = p.conn.replace((gen, conn.clone()));
            let _ = self.sched_tx.send(SchedInput::LinkUp(id));
            p.tx = Some(tx);
            p.stats.connects.fetch_add(1, Relaxed);
            p.changed.notify_waiters();
            (old, p.stats.clone())
        };
        if let Some((_, c)) = old {
            c.close(3u32.into(), b"replaced");
        }
        {
            let mut r = lock(&self.replica);
            r.add_member(id);
            r.set_connected(id, true);
        }
        tracing::info!("server {}: link to server {id} up", self.id);
        let hello = Bytes::from(proto::encode(&PeerMsg::Hello { rid: self.rid }));
        if let Some(tx) = lock(&self.peers).get(&id).and_then(|p| p.tx.as_ref()) {
            tx.send(hello, false);
        }
        let owner = format!("peer {id}");
        let w = &self.workers;
        w.spawn(
            "push-writer",
            owner.clone(),
            push_writer(conn.clone(), rx, stats.clone()),
        );
        w.spawn(
            "push-reader",
            owner.clone(),
            self.clone().push_reader(conn.clone(), id, stats.clone()),
        );
        w.spawn(
            "peer-requests",
            owner.clone(),
            self.clone().peer_requests(conn.clone(), id, stats),
        );
        let sh = self.clone();
        w.spawn("link-watch", owner, async move {
            let why = conn.closed().await;
            let mine = {
                let mut peers = lock(&sh.peers);
                match peers.get_mut(&id) {
                    Some(p) if p.conn.as_ref().is_some_and(|c| c.0 == gen) => {
                        p.conn = None;
                        p.tx = None;
                        let _ = sh.sched_tx.send(SchedInput::LinkDown(id));
                        p.changed.notify_waiters();
                        true
                    }
                    _ => false,
                }
            };
            if mine {
                tracing::info!("server {}: link to server {id} down: {why}", sh.id);
                lock(&sh.replica).set_connected(id, false);
                sh.broadcast_links();
            }
        });
        self.broadcast_links();
        true
    }

    async fn push_reader(self: Arc<Self>, conn: quinn::Connection, id: NodeId, st: Arc<PeerStats>) {
        while let Ok(mut recv) = conn.accept_uni().await {
            loop {
                match frame::read_frame::<PeerMsg>(&mut recv).await {
                    Ok(Some((msg, n))) => {
                        st.bytes_received.fetch_add(n as u64, Relaxed);
                        if matches!(msg, PeerMsg::Push { .. }) {
                            st.pushes_received.fetch_add(1, Relaxed);
                        }
                        if self.peer_message(id, msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("server {}: bad push stream from {id}: {e}", self.id);
                        conn.close(4u32.into(), b"bad frame");
                        return;
                    }
                }
            }
        }
    }

    async fn peer_requests(
        self: Arc<Self>,
        conn: quinn::Connection,
        id: NodeId,
        st: Arc<PeerStats>,
    ) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let sh = self.clone();
            let st = st.clone();
            self.workers
                .spawn("peer-request", format!("peer {id}"), async move {
                    let req = match frame::read_frame::<PeerReq>(&mut recv).await {
                        Ok(Some((r, n))) => {
                            st.bytes_received.fetch_add(n as u64, Relaxed);
                            r
                        }
                        Ok(None) => return,
                        Err(e) => {
                            let _ = frame::write_frame(&mut send, &PeerResp::Error(e.to_string()))
                                .await;
                            let _ = send.finish();
                            return;
                        }
                    };
                    let resp = match req {
                        PeerReq::Paxos(r) => match sh.accept_local(r).await {
                            Ok(r) => PeerResp::Paxos(r),
                            Err(e) => PeerResp::Error(e.to_string()),
                        },
                        PeerReq::Status => match serde_json::to_string(&sh.status()) {
                            Ok(j) => PeerResp::Status(j),
                            Err(e) => PeerResp::Error(e.to_string()),
                        },
                        req => sh.answer(id, req, &st),
                    };
                    if let Ok(n) = frame::write_frame(&mut send, &resp).await {
                        st.bytes_sent.fetch_add(n as u64, Relaxed);
                        if matches!(resp, PeerResp::Sync(_) | PeerResp::Fetch(_)) {
                            st.catchup_bytes_sent.fetch_add(n as u64, Relaxed);
                        }
                    }
                    let _ = send.finish();
                });
        }
    }

    fn answer(&self, id: NodeId, req: PeerReq, st: &PeerStats) -> PeerResp {
        let resp = meshkv_core::sync::answer(&mut lock(&self.replica), id, req);
        let sent = match &resp {
            PeerResp::Sync(r) => r.items.len(),
            PeerResp::Fetch(items) => items.len(),
            _ => 0,
        };
        st.catchup_keys_sent.fetch_add(sent as u64, Relaxed);
        resp
    }

    async fn ask(
        &self,
        conn: &quinn::Connection,
        req: PeerReq,
        st: &PeerStats,
    ) -> Result<PeerResp, FrameError> {
        let (resp, sent, got): (PeerResp, usize, usize) =
            frame::request(conn, &req, REQUEST_TIMEOUT).await?;
        st.bytes_sent.fetch_add(sent as u64, Relaxed);
        st.bytes_received.fetch_add(got as u64, Relaxed);
        if matches!(resp, PeerResp::Sync(_) | PeerResp::Fetch(_)) {
            st.catchup_bytes_received.fetch_add(got as u64, Relaxed);
        }
        Ok(resp)
    }

    /// One anti-entropy round with peer `id` over its current link (the schedule's
    /// [`SchedAction::Round`]; the schedule runs one at a time). Whether it completed.
    async fn anti_entropy(&self, id: NodeId) -> bool {
        let link = lock(&self.peers)
            .get(&id)
            .and_then(|p| p.conn.as_ref().map(|c| (c.1.clone(), p.stats.clone())));
        let Some((conn, st)) = link else {
            return false;
        };
        match self.sync_round(&conn, id, &st).await {
            Ok(()) => {
                st.sync_rounds.fetch_add(1, Relaxed);
                st.last_sync_ok_ms.store(now_ms(), Relaxed);
                self.ready_changed.notify_waiters();
                true
            }
            Err(e) => {
                tracing::debug!("server {}: sync with {id}: {e}", self.id);
                false
            }
        }
    }

    /// One anti-entropy round against `id`, driving the core's [`SyncRound`]: asks go
    /// out as requests on `conn`, commits through the commit thread, gifts on the push
    /// stream.
    async fn sync_round(
        &self,
        conn: &quinn::Connection,
        id: NodeId,
        st: &PeerStats,
    ) -> Result<(), RoundError> {
        let mut round = SyncRound::new(id);
        let mut ev = SyncEvent::Start;
        let started = Instant::now();
        let mut got = 0;
        loop {
            let step = round.next(&mut lock(&self.replica), ev)?;
            ev = match step {
                SyncStep::Ask(req) => SyncEvent::Answer(self.ask(conn, req, st).await?),
                SyncStep::Commit { ops, received } => {
                    st.catchup_keys_received.fetch_add(received as u64, Relaxed);
                    got += received;
                    self.commit_relaxed(ops).await?;
                    SyncEvent::Committed
                }
                SyncStep::Push(msgs) => {
                    for msg in &msgs {
                        if self.send_to(id, msg) {
                            st.catchup_keys_sent.fetch_add(1, Relaxed);
                        }
                    }
                    SyncEvent::Pushed
                }
                SyncStep::Done => break,
            };
        }
        if round.walked() {
            st.walks.fetch_add(1, Relaxed);
        }
        tracing::debug!(
            "server {}: round with {id}: {got} entries received in {:?}{}",
            self.id,
            started.elapsed(),
            if round.walked() { " (walked)" } else { "" }
        );
        Ok(())
    }

    /// Turn every value whose expiry time has come into its expiry tombstone (see
    /// [`meshkv_core::entry`]): reads hide an expired value from its expiry time on;
    /// this makes the tombstone (and the watch event) follow within moments.
    async fn expiry_loop(self: Arc<Self>) {
        let mut commits = self.commits.subscribe();
        loop {
            let (due, wait) = {
                let r = lock(&self.replica);
                let now = r.now(crate::clock::wall_micros());
                let wait = r.next_expiry().map(|at| at.saturating_sub(now));
                (r.expired_keys(now, 1024), wait)
            };
            let wait = wait.map_or(Duration::from_secs(1), |us| {
                Duration::from_micros(us.max(10_000)).min(Duration::from_secs(1))
            });
            if !due.is_empty() {
                let ops = due.into_iter().map(|key| Op::Expire { key }).collect();
                // Relaxed: an expiry lost in a machine crash is swept again.
                let done = self.commit_relaxed(ops).await;
                // Our own commit is no news: wait for the next one.
                commits.borrow_and_update();
                match done {
                    Ok(out) if out.contains(&Outcome::Applied { changed: true }) => continue,
                    // Nothing was due after all (the clock read differently): wait.
                    Ok(_) => {}
                    // Below the disk reserve nothing is written, expiries neither (reads
                    // hide the values anyway): try again in a second.
                    Err(ServerError::DiskFull(_)) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(_) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = commits.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn serve_client(self: Arc<Self>, conn: quinn::Connection) {
        let server = Server { sh: self.clone() };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let server = server.clone();
            self.workers
                .spawn("client-request", "client connection", async move {
                    let resp = match frame::read_frame::<ClientReq>(&mut recv).await {
                        Ok(Some((req, _))) => server.handle_client(req).await,
                        Ok(None) => return,
                        Err(e) => ClientResp::Error(e.to_string()),
                    };
                    let _ = frame::write_frame(&mut send, &resp).await;
                    let _ = send.finish();
                });
        }
    }

    fn status(&self) -> Status {
        let wall = crate::clock::wall_micros();
        let (keys, tombstones, root, seen, floor, log_records, peer_views, clock) = {
            let r = lock(&self.replica);
            let skew = r.clock_skew();
            let clock = ClockStatus {
                hlc_micros: r.clock(),
                wall_micros: wall,
                hlc_ahead_ms: (r.clock() as i64 - wall as i64) / 1000,
                max_seen_micros: r.max_ts(),
                ahead_refused: skew.ahead,
                max_ahead_ms: skew.max_ahead_micros / 1000,
                max_offset_ms: self.opts.limits.max_clock_offset / 1000,
            };
            (
                r.len(),
                r.tombstones(),
                r.root(),
                r.seen().clone(),
                r.floor().clone(),
                r.log_len(),
                r.peers().clone(),
                clock,
            )
        };
        let peers = lock(&self.peers);
        let mut ids: BTreeSet<NodeId> = peers.keys().copied().collect();
        ids.extend(peer_views.keys().copied());
        let peers = ids
            .into_iter()
            .map(|id| {
                let slot = peers.get(&id);
                let view = peer_views.get(&id);
                let st = slot.map(|s| s.stats.clone()).unwrap_or_default();
                let their_seen = view.and_then(|v| v.seen.clone());
                let lag = their_seen.as_ref().map(|t| {
                    seen.iter()
                        .map(|(o, c)| c.saturating_sub(t.get(o)))
                        .sum::<u64>()
                });
                PeerStatus {
                    id,
                    addr: slot.and_then(|s| s.addr.map(|a| a.to_string())),
                    link: match slot {
                        Some(s) if s.blocked => "blocked",
                        Some(s) if s.conn.is_some() => "up",
                        _ => "down",
                    },
                    incarnation: view.and_then(|v| v.rid).map(|r| format!("{r:016x}")),
                    seen: their_seen.as_ref().map(vv_map),
                    lag,
                    pushes_sent: st.pushes_sent.load(Relaxed),
                    pushes_dropped: st.pushes_dropped.load(Relaxed),
                    pushes_received: st.pushes_received.load(Relaxed),
                    bytes_sent: st.bytes_sent.load(Relaxed),
                    bytes_received: st.bytes_received.load(Relaxed),
                    sync_rounds: st.sync_rounds.load(Relaxed),
                    walks: st.walks.load(Relaxed),
                    catchup_keys_received: st.catchup_keys_received.load(Relaxed),
                    catchup_bytes_received: st.catchup_bytes_received.load(Relaxed),
                    catchup_keys_sent: st.catchup_keys_sent.load(Relaxed),
                    catchup_bytes_sent: st.catchup_bytes_sent.load(Relaxed),
                    last_sync_ok_ms: st.last_sync_ok_ms.load(Relaxed),
                    connects: st.connects.load(Relaxed),
                }
            })
            .collect();
        Status {
            node: self.id,
            incarnation: format!("{:016x}", self.rid),
            ready: self.ready.load(Relaxed),
            ready_note: lock(&self.ready_note).clone(),
            clock,
            disk_full: self.below_reserve(),
            duplicates_refused: self.duplicates_refused.load(Relaxed),
            workers: self.workers.status(),
            refused_as_duplicate: lock(&self.refused_as_duplicate).clone(),
            quic: self.endpoint.local_addr().ok().map(|a| a.to_string()),
            uptime_s: self.started.elapsed().as_secs_f64(),
            keys,
            tombstones,
            digest_root: format!("{root:016x}"),
            seen: vv_map(&seen),
            floor: vv_map(&floor),
            log_records,
            client_puts: self.client_puts.load(Relaxed),
            client_gets: self.client_gets.load(Relaxed),
            linearizable: LinearizableStatus {
                ops: self.lin_ops.load(Relaxed),
                retries: self.lin_retries.load(Relaxed),
                unavailable: self.lin_unavailable.load(Relaxed),
            },
            storage: lock(&self.storage_stats).clone(),
            peers,
        }
    }
}

async fn push_writer(conn: quinn::Connection, mut rx: PushRx, st: Arc<PeerStats>) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        // Coalesce whatever else is queued into one write.
        while buf.len() < (256 << 10) {
            match rx.try_recv() {
                Some(f) => buf.extend_from_slice(&f),
                None => break,
            }
        }
        if frame::write_raw(&mut send, &buf).await.is_err() {
            return;
        }
        st.bytes_sent.fetch_add(buf.len() as u64, Relaxed);
    }
    let _ = send.finish();
}

impl Server {
    /// Answer one client request.
    pub async fn handle_client(&self, req: ClientReq) -> ClientResp {
        // The master's clients have no "not ready" answer: they wait for the catch-up.
        if !self.is_ready() {
            self.wait_ready(self.sh.opts.catchup_timeout + Duration::from_secs(1))
                .await;
        }
        match req {
            ClientReq::Put {
                key,
                value,
                seen_ts,
            } => match self.put(key, value, seen_ts, None).await {
                Ok(Outcome::Put { version, previous }) => ClientResp::Put {
                    version,
                    previous: previous.and_then(|p| p.value),
                },
                Ok(other) => ClientResp::Error(format!("unexpected outcome {other:?}")),
                Err(e) => ClientResp::Error(e.to_string()),
            },
            ClientReq::Get { key, dep, seen_ts } => match self.get(&key, dep, seen_ts) {
                Ok(ReadOutcome::Found { value, version }) => ClientResp::Found { value, version },
                Ok(ReadOutcome::Missing { version }) => ClientResp::Missing { version },
                Ok(ReadOutcome::Dep) => ClientResp::Dep,
                Err(e) => ClientResp::Error(e.to_string()),
            },
        }
    }
}

/// A duration in whole µs (saturating).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_push_queue_drops_pushes_but_never_control_messages() {
        let (tx, mut rx) = PushTx::new();
        let quarter = Bytes::from(vec![0u8; (PUSH_QUEUE_BYTES / 4) as usize]);
        for _ in 0..4 {
            assert!(tx.send(quarter.clone(), true));
        }
        assert!(
            !tx.send(Bytes::from_static(b"x"), true),
            "a push past the bound is dropped"
        );
        assert!(
            tx.send(Bytes::from_static(b"hello"), false),
            "a control message is queued however full the queue is"
        );
        let first = rx.recv().await.expect("a queued frame");
        assert_eq!(first.len(), quarter.len());
        assert!(
            tx.send(Bytes::from_static(b"x"), true),
            "what the writer took frees room"
        );
        assert_eq!(
            rx.queued.load(Relaxed),
            3 * quarter.len() as u64 + 6,
            "the queue counts exactly the bytes it holds"
        );
    }
}
