//! The durable store behind a replica: one sled database per server.
//!
//! The replica ([`meshkv_core::replica`]) is a pure state machine; this module is the
//! disk half of its *stage → persist → commit* loop. [`Storage::persist`] writes one
//! [`Staged`] batch atomically and returns only once it is durable (it survives a power
//! cut, not just a killed process); only then may the adapter call
//! [`Replica::commit`]. [`Storage::open`] rebuilds the replica with
//! [`Replica::restore`].
//!
//! # On-disk layout
//! The data directory holds a small identity file and a sled 0.34 database (sled's own
//! files: `conf`, `db`, the `blobs/` directory for items too large to sit in the log,
//! and `snap.*` snapshots):
//!
//! * `meshkv.id`: two text lines, `meshkv-1` (the format) and `node <id>` (the owning
//!   server). It is read *before* sled opens the directory, because opening a sled
//!   database writes to it (recovery, snapshots); so a foreign directory, a bare sled
//!   database or another server's store is refused without a single byte changed. It is
//!   written last on a first start (temporary file, fsync, rename, fsync of the
//!   directory), so its presence also means the first start completed.
//! * sled's default tree, with these keys:
//!
//! | key                                         | value                              |
//! |---------------------------------------------|------------------------------------|
//! | `m/format`                                  | `meshkv-1` (the format marker)     |
//! | `m/node`                                    | the owning server id, u64 big-endian |
//! | `m/meta`                                    | bincode([`Meta`]): counter, clock, watermarks, floor |
//! | `m/seq`                                     | the batch sequence number, u64 big-endian (absent = 0) |
//! | `k/` + key                                  | bincode([`Entry`]) of the key (tombstones too); records from before expiry existed have no `expires` and are read as [`meshkv_core::legacy::EntryV1`] |
//! | `l/` + origin (u64 BE) + counter (u64 BE)   | the key the log record `origin:counter` maps to |
//! | `p/` + key                                  | bincode([`AcceptorState`]) of the key's linearizable register (or the pre-expiry shape, likewise) |
//!
//! bincode is the standard configuration, through serde. `m/format` and `m/node` must
//! agree with `meshkv.id`. Nothing else is stored; any other key is reported as corrupt
//! rather than ignored.
//!
//! # Atomicity: why a restart never reuses a dot or goes back in time
//! Each persisted batch is **one** `sled::Batch` on the one tree: the entries, log
//! records, deletions *and* `m/meta`. sled applies a batch atomically, also across a
//! crash (recovery replays all of it or none of it). The counter and clock in `m/meta`
//! are therefore on disk exactly when the writes that used them are, and a replica
//! restored from the directory continues after the last dot and timestamp it ever
//! acknowledged.
//!
//! # Durability: what is fsynced
//! `sled::Db::flush` in 0.34.7 writes its log buffers with `pwrite` followed, on Linux,
//! by `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` (see `pagecache/iobuf.rs`).
//! That pushes the data pages to the device but neither flushes the device's write cache
//! nor commits file metadata (a grown file size, new files), so it survives `kill -9`
//! but not a machine crash. sled also writes blob files (`blobs/<lsn>`) and `conf`
//! without any sync. So after `flush` every batch goes through a [`Syncer`]; the real one
//! keeps its own open handles and, in this order:
//!
//! 1. `fsync`s every blob file in `blobs/` it has not synced at its current length (in
//!    practice: the ones written by this batch), then `blobs/` itself when its listing
//!    changed — blobs first, so a durable log never points at a lost blob;
//! 2. `fsync`s `db`, sled's single data file (log segments, batch manifests, the
//!    metadata page);
//! 3. `fsync`s the data directory when its listing (names and inode numbers, read with
//!    one `getdents`) differs from the listing at its last fsync: that makes snapshot
//!    renames and removals and the first creation of `conf`/`db`/`blobs` durable. An
//!    unchanged listing means no entry was created, removed or renamed over since the
//!    directory was last fsynced (a temporary created and removed in between needs no
//!    sync), so the fsync is skipped: on ext4 it cost ~150 µs per batch even with
//!    nothing to write (docs/performance.md).
//!
//! This is enough because `fsync` works on the inode, not the descriptor: calling it on
//! any open descriptor of a file writes back *all* dirty pages of that file (including
//! those sled wrote through its own descriptor) plus the metadata needed to read them,
//! and flushes the device cache. At open, `conf`, every existing blob, `blobs/`, `db` and
//! the data directory are fsynced once, and, when the data directory was just created,
//! its parent directory too.
//!
//! # Detecting a damaged store
//! sled checksums every record of its log, but when one does not check out it does not
//! fail: it silently treats the log as ending just before it, so a single flipped byte
//! can make a store come up with its last minutes (or hours) of writes missing. So
//! every batch carries a sequence number (`m/seq`, in the same atomic batch), and after
//! the batch is durable the number is also written, with the digest root the store has
//! after it ([`Staged::root`]) and a checksum, to a small file of our own, `meshkv.seq`
//! (32 bytes written in place; no fsync of its own: it may lag after a machine crash,
//! never lead, because it is written only after sled's fsync returned). At open, a
//! `m/seq` below `meshkv.seq` means sled lost committed batches, and the same batch with
//! records that do not add up to the recorded root means sled lost or changed records
//! inside it (a damaged page: seen with one flipped byte of `db`). Either way the store
//! is refused, naming `db` and what to do (move the directory aside and start on an
//! empty one: the server rejoins as a new incarnation and its peers give back every
//! write they hold). When the marker lags (a crash between the fsync and its write),
//! only the sequence check applies until the next batch. A
//! damaged `meshkv.seq`, an undecodable record and a panic inside sled while opening or
//! reading (a damaged or missing blob file) are refusals too, each one line. A store
//! restored from an older copy is not damaged: it comes up behind, under a fresh origin
//! ([`meshkv_core::version`]), and catches up.
//!
//! # Refusing foreign directories
//! A directory is never wiped or "repaired". [`Storage::open`] creates a store only in a
//! missing or empty directory (`lost+found` is ignored), and otherwise refuses, without
//! writing anything: a path that is not a directory; a non-empty directory holding
//! anything but `meshkv.id` (or `meshkv.id.tmp`), `conf`, `db`, `blobs` and `snap.*`;
//! one without a valid `meshkv.id` (a bare sled database, or a first start that was
//! interrupted: remove the directory by hand); one whose `meshkv.id` names another
//! server; one whose `conf` is not sled's. Once sled has opened the database, a missing
//! or different `m/format` record is refused too, and records that do not decode are
//! reported as [`StorageError::Corrupt`], naming the key.
//!
//! # Failures
//! After a failed flush or fsync the state of the files is unknown (a retried fsync can
//! report success for pages the kernel already dropped), so a failed `persist` poisons
//! the store: every later `persist` fails with [`StorageError::Failed`] and the process
//! should restart and recover from what is on disk.

use meshkv_core::entry::Entry;
use meshkv_core::paxos::AcceptorState;
use meshkv_core::replica::{Limits, Meta, Replica, Staged};
use meshkv_core::version::{Dot, NodeId};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The format marker's key.
const KEY_FORMAT: &[u8] = b"m/format";
/// The format marker's value; changes when the layout changes.
const FORMAT: &[u8] = b"meshkv-1";
/// The owning server id's key.
const KEY_NODE: &[u8] = b"m/node";
/// The metadata's key.
pub const KEY_META: &[u8] = b"m/meta";
/// Prefix of entries.
const PREFIX_ENTRY: &[u8] = b"k/";
/// Prefix of log records.
const PREFIX_LOG: &[u8] = b"l/";
/// Prefix of the acceptor state of linearizable registers (see `meshkv_core::paxos`).
const PREFIX_PAXOS: &[u8] = b"p/";
/// The identity file, checked before sled opens the directory.
const ID_FILE: &str = "meshkv.id";
/// The identity file while it is being written.
const ID_TMP: &str = "meshkv.id.tmp";
/// The batch sequence number's key.
const KEY_SEQ: &[u8] = b"m/seq";
/// The committed-batch marker file (see "Detecting a damaged store").
const SEQ_FILE: &str = "meshkv.seq";
/// The marker file's magic.
const SEQ_MAGIC: &[u8; 8] = b"mkvseq02";
/// The first marker format: the sequence number only.
const SEQ_MAGIC_V1: &[u8; 8] = b"mkvseq01";

/// Counters of what the store has done since it was opened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StorageStats {
    /// Batches written.
    pub batches: u64,
    /// Calls of the syncer (each one fsyncs every file that needs it).
    pub fsyncs: u64,
    /// Key and value bytes handed to sled.
    pub bytes_written: u64,
    /// How long the last flush + sync took, in µs.
    pub last_sync_micros: u64,
    /// Batches written without an fsync of their own (other servers' writes, fsynced
    /// late: see [`meshkv_core::commit`]).
    pub deferred_batches: u64,
}

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store belongs to another server.
    #[error("data directory {} belongs to server {found}, not {expected}", dir.display())]
    WrongNode {
        /// The data directory.
        dir: PathBuf,
        /// The id recorded in the store.
        found: NodeId,
        /// The id this server was started with.
        expected: NodeId,
    },
    /// The directory holds something other than a meshkv store; it was left untouched.
    #[error("data directory {} is not a meshkv store ({reason}); refusing to use it", dir.display())]
    NotAStore {
        /// The data directory.
        dir: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// A stored record does not decode.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The record's key (non-printable bytes escaped).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// sled reported an error.
    #[error("database error ({context}): {source}")]
    Db {
        /// What was being done.
        context: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A file-system operation failed.
    #[error("io: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be encoded (a bug).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// The record.
        what: String,
        /// bincode's message.
        reason: String,
    },
    /// sled's log ends before the last batch known to be committed: it was damaged and
    /// sled dropped what followed the damage.
    #[error(
        "data directory {}: the sled log {}/db ends at batch {found} but batch {committed} \
         was committed: the file is damaged and sled dropped what followed; move the \
         directory aside and restart on an empty one to recover the writes from the peers",
        dir.display(), dir.display()
    )]
    Truncated {
        /// The data directory.
        dir: PathBuf,
        /// The sequence number sled has.
        found: u64,
        /// The sequence number `meshkv.seq` recorded as committed.
        committed: u64,
    },
    /// sled's records do not add up to the digest recorded with the last committed
    /// batch: records were lost or changed (sled dropped a damaged part of its log).
    #[error(
        "data directory {}: the records in {}/db do not add up to what batch {batch} \
         committed (digest {found:016x}, expected {expected:016x}): the file is damaged and \
         sled dropped records; move the directory aside and restart on an empty one to \
         recover from the peers",
        dir.display(), dir.display()
    )]
    Mismatch {
        /// The data directory.
        dir: PathBuf,
        /// The batch both sled and `meshkv.seq` hold.
        batch: u64,
        /// The digest root of what was read.
        found: u64,
        /// The digest root recorded in `meshkv.seq`.
        expected: u64,
    },
    /// sled panicked while opening or reading the store (a damaged or missing file).
    #[error(
        "data directory {}: sled failed reading it ({reason}); a file is damaged or missing; \
         move the directory aside and restart on an empty one to recover from the peers",
        dir.display()
    )]
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// sled's panic message.
        reason: String,
    },
    /// An earlier write or sync failed, so durability is unknown; restart to recover.
    #[error("storage failed earlier and refuses further writes (restart to recover): {0}")]
    Failed(String),
}

impl StorageError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    fn db(context: impl Into<String>, source: sled::Error) -> Self {
        StorageError::Db {
            context: context.into(),
            source,
        }
    }

    fn corrupt(key: &[u8], reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            key: show(key),
            reason: reason.into(),
        }
    }
}

/// Something that makes written data durable. The real one fsyncs sled's files and
/// directory; tests use a recorder.
pub trait Syncer: Send {
    /// Make everything written so far durable.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// The durable store of one server.
pub struct Storage {
    dir: PathBuf,
    db: ClosingDb,
    syncer: Box<dyn Syncer>,
    /// The metadata as last persisted.
    meta: Meta,
    stats: StorageStats,
    /// Set when a write or sync failed (see the module docs).
    failed: Option<String>,
    /// The last batch sequence number persisted.
    seq: u64,
    /// The digest root of the store after that batch.
    root: u64,
    /// `meshkv.seq`, rewritten after every durable batch.
    seq_file: File,
    /// Batches were written since the last fsync.
    unsynced: bool,
    /// Tests only (`MESHKV_TEST_PLATTER`): after every fsync the store's files are
    /// copied here, so that a test can restart the server from exactly what was
    /// durable — a machine crash's disk.
    platter: Option<PathBuf>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Set while this thread opens a store: its panics are refusals, not reports.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the process's panic hook once so that [`QUIET_PANICS`] threads print nothing.
/// (Swapping the hook around each open would race with other threads doing the same
/// and could leave every later panic silent.)
fn quiet_panics_install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
}

/// A sled database that is closed when dropped.
///
/// sled 0.34 returns from dropping a `Db` before its background threads have let go of
/// the files: for a moment afterwards the directory is still locked and may still be
/// written. Dropping this waits until sled's lock on `db` is released, so a store that
/// was dropped can be reopened, copied or removed at once (bounded: after
/// [`CLOSE_WAIT`] it gives up waiting and says so in the log).
struct ClosingDb {
    db: Option<sled::Db>,
    /// The store's directory.
    lock_path: PathBuf,
}

/// How long dropping a store waits for sled to let go of its files.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ClosingDb {
    fn new(db: sled::Db, dir: &Path) -> ClosingDb {
        ClosingDb {
            db: Some(db),
            lock_path: dir.to_path_buf(),
        }
    }
}

impl std::ops::Deref for ClosingDb {
    type Target = sled::Db;
    fn deref(&self) -> &sled::Db {
        // Only `drop` takes it out.
        self.db.as_ref().expect("open until dropped")
    }
}

impl Drop for ClosingDb {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            close_sled(db, &self.lock_path);
        }
    }
}

/// Drop a sled database opened on `dir` and wait (at most [`CLOSE_WAIT`]) until
/// sled's background threads have let go of its files, which they do a moment after
/// the handle is gone.
pub fn close_sled(db: sled::Db, dir: &Path) {
    drop(db);
    let lock_path = dir.join("db");
    let Ok(file) = File::open(&lock_path) else {
        return;
    };
    // The blocking lock returns when sled's last handle on the file is closed; it runs
    // on a helper thread so a stuck sled cannot hang the caller forever.
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sled-close".into())
        .spawn(move || {
            let locked = file.lock();
            // Closing the file lets go of the lock before the caller goes on.
            drop(file);
            let _ = tx.send(locked);
        });
    if spawned.is_ok() && rx.recv_timeout(CLOSE_WAIT).is_err() {
        tracing::warn!(
            path = %lock_path.display(),
            "sled still holds the store {}s after it was closed",
            CLOSE_WAIT.as_secs()
        );
    }
}

/// What was found at the data directory path before sled was let near it.
enum DirState {
    /// Absent; created now.
    Created,
    /// An empty directory (or one holding only `lost+found`).
    Empty,
    /// Looks like a sled database.
    Sled,
}

impl Storage {
    /// Open (creating if absent) the store in `dir` for server `id`, with a sled page
    /// cache of `cache_bytes`. Refuses (never wipes) a directory that is not a meshkv
    /// store or belongs to another server. Returns the storage and the replica restored
    /// from it.
    pub fn open(
        dir: &Path,
        id: NodeId,
        rid: NodeId,
        cache_bytes: u64,
        limits: Limits,
    ) -> Result<(Storage, Replica), StorageError> {
        // sled panics on some damage (a missing or damaged blob file): that is a
        // refusal like any other, not a crash. The panic report of this thread is held
        // back while it opens; other threads' reports are not touched.
        quiet_panics_install();
        QUIET_PANICS.with(|q| q.set(true));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(dir, id, rid, cache_bytes, limits)
        }));
        QUIET_PANICS.with(|q| q.set(false));
        match opened {
            Ok(r) => r,
            Err(p) => {
                let reason = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(StorageError::Damaged {
                    dir: dir.to_path_buf(),
                    reason: reason.lines().next().unwrap_or("").to_string(),
                })
            }
        }
    }

    fn open_inner(
        dir: &Path,
        id: NodeId,
        rid: NodeId,
        cache_bytes: u64,
        limits: Limits,
    ) -> Result<(Storage, Replica), StorageError> {
        let state = inspect_dir(dir, id)?;
        let committed = read_seq_file(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map(|db| ClosingDb::new(db, dir))
            .map_err(|e| match e {
                sled::Error::Io(source) => StorageError::io(
                    format!("opening sled database in {}", dir.display()),
                    source,
                ),
                other => StorageError::NotAStore {
                    dir: dir.to_path_buf(),
                    reason: format!("sled cannot open it: {other}"),
                },
            })?;
        let fresh = match state {
            DirState::Created | DirState::Empty => true,
            DirState::Sled => false,
        };
        if fresh {
            // A brand-new database: mark it as ours in one atomic batch.
            let mut batch = sled::Batch::default();
            batch.insert(KEY_FORMAT, FORMAT);
            batch.insert(KEY_NODE, &id.to_be_bytes()[..]);
            batch.insert(KEY_META, encode(&Meta::default(), "meta")?);
            db.apply_batch(batch)
                .map_err(|e| StorageError::db("writing the format marker", e))?;
            db.flush()
                .map_err(|e| StorageError::db("flushing the format marker", e))?;
        } else {
            check_records(&db, dir, id)?;
        }
        let seq = read_seq(&db)?;
        if let Some(committed) = committed.filter(|c| c.seq > seq) {
            return Err(StorageError::Truncated {
                dir: dir.to_path_buf(),
                found: seq,
                committed: committed.seq,
            });
        }
        let seq_path = dir.join(SEQ_FILE);
        let seq_file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&seq_path)
            .map_err(|e| StorageError::io(format!("opening {}", seq_path.display()), e))?;
        let syncer = FsSyncer::new(dir)?;
        if fresh {
            // The first start is complete (and the directory ours) once this exists.
            write_id_file(dir, id)?;
        }
        if matches!(state, DirState::Created) {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_path(parent)
                    .map_err(|e| StorageError::io(format!("fsync {}", parent.display()), e))?;
            }
        }
        let (meta, entries, log) = load(&db)?;
        let wall = crate::clock::wall_micros();
        let replica = Replica::restore(id, rid, limits, meta.clone(), entries, log, wall);
        if let Some(Marker {
            seq: batch,
            root: Some(expected),
        }) = committed.filter(|c| c.seq == seq)
        {
            if replica.root() != expected {
                return Err(StorageError::Mismatch {
                    dir: dir.to_path_buf(),
                    batch,
                    found: replica.root(),
                    expected,
                });
            }
        }
        let root = replica.root();
        let mut storage = Storage {
            dir: dir.to_path_buf(),
            db,
            syncer: Box::new(syncer),
            meta,
            stats: StorageStats::default(),
            failed: None,
            seq,
            root,
            seq_file,
            unsynced: false,
            platter: std::env::var_os("MESHKV_TEST_PLATTER").map(PathBuf::from),
        };
        storage.write_seq_file();
        storage.copy_to_platter();
        Ok((storage, replica))
    }

    /// Record the last durable batch in `meshkv.seq` (see the module docs). Best
    /// effort: a failure only weakens the damage check.
    fn write_seq_file(&mut self) {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 32];
        buf[..8].copy_from_slice(SEQ_MAGIC);
        buf[8..16].copy_from_slice(&self.seq.to_le_bytes());
        buf[16..24].copy_from_slice(&self.root.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&buf[..24]);
        buf[24..].copy_from_slice(&sum.to_le_bytes());
        if let Err(e) = self.seq_file.write_all_at(&buf, 0) {
            tracing::warn!("cannot write {}/{SEQ_FILE}: {e}", self.dir.display());
        }
    }

    /// Replace the syncer (tests).
    pub fn with_syncer(mut self, s: Box<dyn Syncer>) -> Self {
        self.syncer = s;
        self
    }

    /// Write one staged batch atomically; with `fsync`, make it (and everything
    /// written before it) durable, returning only once it is. Without, it is only
    /// handed to sled, which may keep it in its own buffer until the next
    /// [`Storage::sync`]: a crash of the process or the machine before then loses a
    /// suffix of such batches, never part of one (sled's log ends at the first
    /// incomplete record). A batch with nothing to write and unchanged metadata does
    /// nothing. After an error the store refuses further writes (see the module docs).
    pub fn persist(&mut self, st: &Staged, fsync: bool) -> Result<(), StorageError> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if st.is_empty() && st.meta == self.meta {
            return if fsync { self.sync() } else { Ok(()) };
        }
        let result = self.write(st, fsync);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Make every batch written so far durable (the deferred fsync); nothing to do
    /// when every batch was fsynced.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if !self.unsynced {
            return Ok(());
        }
        let result = self.flush_and_sync();
        match &result {
            Ok(()) => self.write_seq_file(),
            Err(e) => self.failed = Some(e.to_string()),
        }
        result
    }

    fn write(&mut self, st: &Staged, fsync: bool) -> Result<(), StorageError> {
        // Same order as `Replica::commit`, so disk and memory agree: writes, then
        // removes; log removes, then new log records. (A sled batch keeps the last
        // operation per key.)
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        for (key, entry) in &st.writes {
            let k = entry_key(key);
            let v = encode(entry, "entry")?;
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
        }
        for key in &st.removes {
            let k = entry_key(key);
            bytes += k.len() as u64;
            batch.remove(k);
        }
        for dot in &st.log_removes {
            let k = log_key(*dot);
            bytes += k.len() as u64;
            batch.remove(k);
        }
        for (dot, key) in &st.log {
            let k = log_key(*dot);
            bytes += (k.len() + key.len()) as u64;
            batch.insert(k, key.as_slice());
        }
        let meta = encode(&st.meta, "meta")?;
        bytes += (KEY_META.len() + meta.len()) as u64;
        batch.insert(KEY_META, meta);
        let seq = self.seq + 1;
        batch.insert(KEY_SEQ, &seq.to_be_bytes()[..]);

        if fsync {
            self.apply_durably(batch, bytes)?;
        } else {
            self.apply(batch, bytes)?;
            self.stats.deferred_batches += 1;
            self.unsynced = true;
        }
        self.meta = st.meta.clone();
        self.seq = seq;
        self.root = st.root;
        if fsync {
            // Only after an fsync: the marker may lag the store, never lead it.
            self.write_seq_file();
        }
        Ok(())
    }

    /// Apply `batch` atomically, without waiting for it to reach the disk.
    fn apply(&mut self, batch: sled::Batch, bytes: u64) -> Result<(), StorageError> {
        self.db
            .apply_batch(batch)
            .map_err(|e| StorageError::db("applying a batch", e))?;
        self.stats.batches += 1;
        self.stats.bytes_written += bytes;
        Ok(())
    }

    /// Apply `batch` atomically and fsync it.
    fn apply_durably(&mut self, batch: sled::Batch, bytes: u64) -> Result<(), StorageError> {
        self.apply(batch, bytes)?;
        self.flush_and_sync()
    }

    /// Flush sled's buffers and fsync its files.
    fn flush_and_sync(&mut self) -> Result<(), StorageError> {
        self.unsynced = false;
        let started = Instant::now();
        self.db
            .flush()
            .map_err(|e| StorageError::db("flushing a batch", e))?;
        self.syncer.sync().map_err(|e| {
            StorageError::io(format!("fsync of the store in {}", self.dir.display()), e)
        })?;
        self.stats.fsyncs += 1;
        self.stats.last_sync_micros = started.elapsed().as_micros() as u64;
        self.copy_to_platter();
        Ok(())
    }

    /// With `MESHKV_TEST_PLATTER` (tests): copy the store's files as they are right
    /// after an fsync (the commit thread is the only writer, and it is here) to the
    /// platter directory, replacing the last copy.
    fn copy_to_platter(&self) {
        let Some(p) = &self.platter else {
            return;
        };
        let tmp = p.with_extension("tmp");
        let copied = (|| -> std::io::Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            copy_tree(&self.dir, &tmp)?;
            if p.exists() {
                std::fs::remove_dir_all(p)?;
            }
            std::fs::rename(&tmp, p)
        })();
        if let Err(e) = copied {
            tracing::warn!("cannot copy the store to {}: {e}", p.display());
        }
    }

    /// The acceptor state of `key`'s register (default: nothing promised).
    pub fn acceptor(&self, key: &[u8]) -> Result<AcceptorState, StorageError> {
        let k = prefixed(PREFIX_PAXOS, key);
        match self
            .db
            .get(&k)
            .map_err(|e| StorageError::db("reading acceptor state", e))?
        {
            Some(v) => decode_acceptor(&k, &v),
            None => Ok(AcceptorState::default()),
        }
    }

    /// Make new acceptor states durable (one atomic batch, one fsync) before their
    /// answers go out. Counts as a batch in `meshkv.seq`, so a lost one is detected.
    pub fn persist_acceptors(
        &mut self,
        states: &[(Vec<u8>, AcceptorState)],
    ) -> Result<(), StorageError> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if states.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        for (key, state) in states {
            let k = prefixed(PREFIX_PAXOS, key);
            let v = encode(state, "acceptor state")?;
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
        }
        let seq = self.seq + 1;
        batch.insert(KEY_SEQ, &seq.to_be_bytes()[..]);
        let result = self.apply_durably(batch, bytes);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
            return result;
        }
        self.seq = seq;
        self.write_seq_file();
        Ok(())
    }

    /// What the store has done since it was opened.
    pub fn stats(&self) -> StorageStats {
        self.stats.clone()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Copy directory `from` (files and subdirectories) into directory `to`, created if
/// missing (the platter copy here; tests copy stores with it too).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

/// Classify the path before sled may create or touch anything in it; an existing
/// store must be ours (format and owner in the identity file) before sled opens it,
/// because opening a sled database writes to it.
fn inspect_dir(dir: &Path, id: NodeId) -> Result<DirState, StorageError> {
    let not_a_store = |reason: String| StorageError::NotAStore {
        dir: dir.to_path_buf(),
        reason,
    };
    let md = match std::fs::metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
            return Ok(DirState::Created);
        }
        Err(e) => return Err(StorageError::io(format!("stat {}", dir.display()), e)),
    };
    if !md.is_dir() {
        return Err(not_a_store("not a directory".into()));
    }
    let listing = std::fs::read_dir(dir)
        .map_err(|e| StorageError::io(format!("listing {}", dir.display()), e))?;
    let mut names = Vec::new();
    for ent in listing {
        let ent = ent.map_err(|e| StorageError::io(format!("listing {}", dir.display()), e))?;
        let name = ent.file_name();
        if name != "lost+found" {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(DirState::Empty);
    }
    names.sort();
    for name in &names {
        let s = name.to_string_lossy();
        let known = s == ID_FILE
            || s == ID_TMP
            || s == SEQ_FILE
            || s == "conf"
            || s == "db"
            || s == "blobs"
            || s.starts_with("snap.");
        if !known {
            return Err(not_a_store(format!(
                "it is not empty and `{s}` is not part of a meshkv store"
            )));
        }
    }
    for required in ["conf", "db", ID_FILE] {
        let p = dir.join(required);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not_a_store(format!("`{required}` is not a regular file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = if required == ID_FILE {
                    format!(
                        "it has no `{ID_FILE}` identity file (format marker and owner); if an \
                         earlier first start was interrupted, remove the directory"
                    )
                } else {
                    format!("it has no sled `{required}` file")
                };
                return Err(not_a_store(reason));
            }
            Err(e) => return Err(StorageError::io(format!("stat {}", p.display()), e)),
        }
    }
    let found = read_id_file(dir)?;
    if found != id {
        return Err(StorageError::WrongNode {
            dir: dir.to_path_buf(),
            found,
            expected: id,
        });
    }
    let conf_path = dir.join("conf");
    let conf = std::fs::read(&conf_path)
        .map_err(|e| StorageError::io(format!("reading {}", conf_path.display()), e))?;
    if !conf.starts_with(b"segment_size: ") {
        return Err(not_a_store("`conf` is not a sled configuration".into()));
    }
    Ok(DirState::Sled)
}

/// The identity file's contents for server `id`.
fn id_file_contents(id: NodeId) -> String {
    format!("{}\nnode {id}\n", show(FORMAT))
}

/// The owner recorded in the identity file; any other format is refused.
fn read_id_file(dir: &Path) -> Result<NodeId, StorageError> {
    let path = dir.join(ID_FILE);
    let bad = |reason: String| StorageError::NotAStore {
        dir: dir.to_path_buf(),
        reason: format!("`{ID_FILE}`: {reason}"),
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?
        .len();
    if len > 256 {
        return Err(bad(format!("{len} bytes, too long for an identity file")));
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text".into()))?;
    let mut lines = text.lines();
    let format = lines.next().unwrap_or("");
    if format.as_bytes() != FORMAT {
        return Err(bad(format!(
            "format is \"{}\", expected \"{}\"",
            format.escape_debug(),
            show(FORMAT)
        )));
    }
    let node = lines.next().unwrap_or("");
    let id = node
        .strip_prefix("node ")
        .and_then(|n| n.parse::<NodeId>().ok())
        .ok_or_else(|| bad(format!("bad node line \"{}\"", node.escape_debug())))?;
    if lines.next().is_some() {
        return Err(bad("unexpected extra lines".into()));
    }
    Ok(id)
}

/// Write the identity file atomically and durably (temporary file, fsync, rename,
/// fsync of the directory).
fn write_id_file(dir: &Path, id: NodeId) -> Result<(), StorageError> {
    let tmp = dir.join(ID_TMP);
    let path = dir.join(ID_FILE);
    let io = |what: &str, p: &Path, e| StorageError::io(format!("{what} {}", p.display()), e);
    {
        let mut f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(id_file_contents(id).as_bytes())
            .map_err(|e| io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming to", &path, e))?;
    fsync_path(dir).map_err(|e| io("fsync", dir, e))
}

/// What `meshkv.seq` records of the last durable batch.
#[derive(Clone, Copy, Debug)]
struct Marker {
    /// Its sequence number.
    seq: u64,
    /// The digest root of the store after it (absent in the first format).
    root: Option<u64>,
}

/// The committed batch recorded in `meshkv.seq`; `None` when there is none yet.
fn read_seq_file(dir: &Path) -> Result<Option<Marker>, StorageError> {
    let path = dir.join(SEQ_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
    };
    if bytes.is_empty() {
        // Created, then the process died before the first write.
        return Ok(None);
    }
    let word = |i: usize| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(n)
    };
    let sum_ok = |len: usize| {
        bytes.len() == len
            && bytes[len - 8..] == xxhash_rust::xxh3::xxh3_64(&bytes[..len - 8]).to_le_bytes()
    };
    if sum_ok(32) && &bytes[..8] == SEQ_MAGIC {
        return Ok(Some(Marker {
            seq: word(8),
            root: Some(word(16)),
        }));
    }
    if sum_ok(24) && &bytes[..8] == SEQ_MAGIC_V1 {
        return Ok(Some(Marker {
            seq: word(8),
            root: None,
        }));
    }
    Err(StorageError::Corrupt {
        key: path.display().to_string(),
        reason: "the committed-batch marker is damaged (bad length, magic or checksum); \
                 move the directory aside and restart on an empty one to recover from \
                 the peers"
            .into(),
    })
}

/// The batch sequence number sled holds (0 for a store written before it existed).
fn read_seq(db: &sled::Db) -> Result<u64, StorageError> {
    match db
        .get(KEY_SEQ)
        .map_err(|e| StorageError::db("reading the batch sequence", e))?
    {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                StorageError::corrupt(KEY_SEQ, format!("{} bytes, expected 8", v.len()))
            })?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

/// Check that the records inside sled agree with the identity file.
fn check_records(db: &sled::Db, dir: &Path, id: NodeId) -> Result<(), StorageError> {
    let marker = db
        .get(KEY_FORMAT)
        .map_err(|e| StorageError::db("reading the format marker", e))?;
    match marker {
        Some(m) if m.as_ref() == FORMAT => {}
        Some(m) => {
            return Err(StorageError::NotAStore {
                dir: dir.to_path_buf(),
                reason: format!(
                    "format record is \"{}\", expected \"{}\"",
                    show(&m),
                    show(FORMAT)
                ),
            })
        }
        None => {
            return Err(StorageError::NotAStore {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the sled database has no meshkv format record ({} records)",
                    db.len()
                ),
            })
        }
    }
    let node = db
        .get(KEY_NODE)
        .map_err(|e| StorageError::db("reading the node id", e))?
        .ok_or_else(|| StorageError::corrupt(KEY_NODE, "missing"))?;
    let bytes: [u8; 8] = node.as_ref().try_into().map_err(|_| {
        StorageError::corrupt(KEY_NODE, format!("{} bytes, expected 8", node.len()))
    })?;
    let found = NodeId::from_be_bytes(bytes);
    if found != id {
        return Err(StorageError::corrupt(
            KEY_NODE,
            format!("names server {found} but `{ID_FILE}` names server {id}"),
        ));
    }
    Ok(())
}

type Loaded = (Meta, Vec<(Vec<u8>, Entry)>, Vec<(Dot, Vec<u8>)>);

/// Read the metadata, every entry and every log record.
fn load(db: &sled::Db) -> Result<Loaded, StorageError> {
    let mut meta = None;
    let mut entries = Vec::new();
    let mut log = Vec::new();
    for item in db.iter() {
        let (k, v) = item.map_err(|e| StorageError::db("reading the store", e))?;
        if let Some(key) = k.strip_prefix(PREFIX_ENTRY) {
            entries.push((key.to_vec(), decode_entry(&k, &v)?));
        } else if let Some(rest) = k.strip_prefix(PREFIX_LOG) {
            log.push((parse_dot(&k, rest)?, v.to_vec()));
        } else if k.starts_with(PREFIX_PAXOS) {
            // Read on demand; checked here so that a damaged record refuses the store.
            decode_acceptor(&k, &v)?;
        } else if k.as_ref() == KEY_META {
            meta = Some(decode_meta(&k, &v)?);
        } else if k.as_ref() != KEY_FORMAT && k.as_ref() != KEY_NODE && k.as_ref() != KEY_SEQ {
            return Err(StorageError::corrupt(&k, "unexpected record"));
        }
    }
    let meta = meta.ok_or_else(|| StorageError::corrupt(KEY_META, "missing"))?;
    Ok((meta, entries, log))
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// The sled key of `key`'s entry record.
pub fn entry_key(key: &[u8]) -> Vec<u8> {
    prefixed(PREFIX_ENTRY, key)
}

/// The sled key of the log record of `dot` (its value is the key the write wrote).
pub fn log_key(dot: Dot) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX_LOG.len() + 16);
    k.extend_from_slice(PREFIX_LOG);
    k.extend_from_slice(&dot.origin.to_be_bytes());
    k.extend_from_slice(&dot.counter.to_be_bytes());
    k
}

/// The dot of a log record; `rest` is `key` without the prefix.
fn parse_dot(key: &[u8], rest: &[u8]) -> Result<Dot, StorageError> {
    if rest.len() != 16 {
        return Err(StorageError::corrupt(
            key,
            format!(
                "log key holds {} bytes after the prefix, expected 16",
                rest.len()
            ),
        ));
    }
    let mut o = [0u8; 8];
    let mut c = [0u8; 8];
    o.copy_from_slice(&rest[..8]);
    c.copy_from_slice(&rest[8..]);
    Ok(Dot::new(u64::from_be_bytes(o), u64::from_be_bytes(c)))
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StorageError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| {
        StorageError::Encode {
            what: what.into(),
            reason: e.to_string(),
        }
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard())
            .map_err(|e| StorageError::corrupt(key, e.to_string()))?;
    if used != bytes.len() {
        return Err(StorageError::corrupt(
            key,
            format!("{} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// An entry record, in the current shape or one an earlier release wrote
/// ([`meshkv_core::legacy`]).
pub fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry, StorageError> {
    decode::<Entry>(key, bytes).or_else(|e| {
        decode::<meshkv_core::legacy::EntryV1>(key, bytes)
            .map(Entry::from)
            .map_err(|_| e)
    })
}

/// The meta record, in the current shape or an earlier one.
fn decode_meta(key: &[u8], bytes: &[u8]) -> Result<Meta, StorageError> {
    decode::<Meta>(key, bytes).or_else(|e| {
        decode::<meshkv_core::legacy::MetaV1>(key, bytes)
            .map(Meta::from)
            .map_err(|_| e)
    })
}

/// An acceptor record, in the current shape or an earlier one.
fn decode_acceptor(key: &[u8], bytes: &[u8]) -> Result<AcceptorState, StorageError> {
    decode::<AcceptorState>(key, bytes).or_else(|e| {
        decode::<meshkv_core::legacy::AcceptorStateV1>(key, bytes)
            .map(AcceptorState::from)
            .map_err(|_| e)
    })
}

/// A key for messages: printable ASCII as is, other bytes escaped.
fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn fsync_path(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// The real syncer: fsyncs sled's files and directories (see the module docs).
struct FsSyncer {
    dir: File,
    dir_path: PathBuf,
    /// The data directory's entries (name, inode) when it was last fsynced.
    synced_listing: Vec<(OsString, u64)>,
    db: File,
    blobs_path: PathBuf,
    blobs: File,
    /// Blob file name → length it had when it was last fsynced.
    synced_blobs: HashMap<OsString, u64>,
}

impl FsSyncer {
    /// Open handles on sled's files and fsync everything once.
    fn new(dir: &Path) -> Result<Self, StorageError> {
        let open = |p: PathBuf| {
            File::open(&p).map_err(|e| StorageError::io(format!("opening {}", p.display()), e))
        };
        let blobs_path = dir.join("blobs");
        let mut s = FsSyncer {
            dir: open(dir.to_path_buf())?,
            dir_path: dir.to_path_buf(),
            synced_listing: Vec::new(),
            db: open(dir.join("db"))?,
            blobs: open(blobs_path.clone())?,
            blobs_path,
            synced_blobs: HashMap::new(),
        };
        let conf = dir.join("conf");
        fsync_path(&conf).map_err(|e| StorageError::io(format!("fsync {}", conf.display()), e))?;
        s.sync()
            .map_err(|e| StorageError::io(format!("fsync of the store in {}", dir.display()), e))?;
        // `sync` only fsyncs `blobs/` when its listing changed; at open do it anyway.
        s.blobs
            .sync_all()
            .map_err(|e| StorageError::io(format!("fsync {}", s.blobs_path.display()), e))?;
        Ok(s)
    }

    /// fsync blob files not yet synced at their current length; returns whether the
    /// directory listing changed.
    fn sync_blobs(&mut self) -> std::io::Result<bool> {
        let mut present = HashMap::with_capacity(self.synced_blobs.len());
        let mut changed = false;
        for ent in std::fs::read_dir(&self.blobs_path)? {
            let ent = ent?;
            let name = ent.file_name();
            let file = match File::open(ent.path()) {
                Ok(f) => f,
                // Removed by sled's blob collection since the listing: nothing to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            match self.synced_blobs.get(&name) {
                Some(l) if *l == len => {}
                Some(_) => file.sync_all()?,
                None => {
                    file.sync_all()?;
                    changed = true;
                }
            }
            present.insert(name, len);
        }
        changed |= present.len() != self.synced_blobs.len()
            || self.synced_blobs.keys().any(|k| !present.contains_key(k));
        self.synced_blobs = present;
        Ok(changed)
    }
}

impl Syncer for FsSyncer {
    fn sync(&mut self) -> std::io::Result<()> {
        if self.sync_blobs()? {
            self.blobs.sync_all()?;
        }
        self.db.sync_all()?;
        let listing = self.listing()?;
        if listing != self.synced_listing {
            self.dir.sync_all()?;
            self.synced_listing = listing;
        }
        Ok(())
    }
}

impl FsSyncer {
    /// The data directory's entries as (name, inode), sorted; read before the fsync
    /// that covers them, so a change made after the listing is seen next time.
    fn listing(&self) -> std::io::Result<Vec<(OsString, u64)>> {
        use std::os::unix::fs::DirEntryExt;
        let mut v = Vec::with_capacity(self.synced_listing.len().max(8));
        for ent in std::fs::read_dir(&self.dir_path)? {
            let ent = ent?;
            v.push((ent.file_name(), ent.ino()));
        }
        v.sort_unstable();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshkv_core::version::Version;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn log_keys_round_trip_and_sort_by_origin_then_counter() {
        let a = log_key(Dot::new(1, 255));
        let b = log_key(Dot::new(1, 256));
        let c = log_key(Dot::new(2, 1));
        assert!(a < b && b < c);
        assert_eq!(parse_dot(&b, &b[2..]).unwrap(), Dot::new(1, 256));
        assert!(matches!(
            parse_dot(b"l/x", b"x"),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn fresh_store_layout() {
        let t = tmp();
        let dir = t.path().join("data");
        let (s, r) = Storage::open(&dir, 4, 1000 + 4, 1 << 20, Limits::default()).unwrap();
        assert_eq!(r.id(), 4);
        assert_eq!(r.meta(), Meta::default());
        assert_eq!(s.db.get(KEY_FORMAT).unwrap().unwrap().as_ref(), FORMAT);
        assert_eq!(
            s.db.get(KEY_NODE).unwrap().unwrap().as_ref(),
            &4u64.to_be_bytes()
        );
        drop(s);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["blobs", "conf", "db", "meshkv.id", "meshkv.seq"]);
        assert_eq!(
            std::fs::read_to_string(dir.join(ID_FILE)).unwrap(),
            "meshkv-1\nnode 4\n"
        );
        // Reopening is accepted.
        Storage::open(&dir, 4, 1000 + 4, 1 << 20, Limits::default()).unwrap();
    }

    fn corrupt_with(key: &[u8], value: &[u8]) -> StorageError {
        let t = tmp();
        let dir = t.path().join("data");
        drop(Storage::open(&dir, 1, 1000 + 1, 1 << 20, Limits::default()).unwrap());
        {
            let db = sled::open(&dir).unwrap();
            db.insert(key, value).unwrap();
            db.flush().unwrap();
            close_sled(db, &dir);
        }
        Storage::open(&dir, 1, 1000 + 1, 1 << 20, Limits::default()).unwrap_err()
    }

    #[test]
    fn undecodable_records_are_corrupt_and_named() {
        let e = corrupt_with(b"k/apple", b"\xff\xff\xff");
        assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("k/apple"), "{e}");

        let e = corrupt_with(b"l/\x01", b"k");
        assert!(e.to_string().contains("l/\\x01"), "{e}");

        let e = corrupt_with(KEY_META, b"");
        assert!(e.to_string().contains("m/meta"), "{e}");

        let e = corrupt_with(KEY_NODE, b"123");
        assert!(e.to_string().contains("m/node"), "{e}");

        let e = corrupt_with(b"zzz", b"");
        assert!(e.to_string().contains("unexpected record"), "{e}");

        // Trailing bytes after a valid entry.
        let entry = Entry::write(
            Some(b"v".to_vec()),
            Version {
                ts: 1,
                dot: Dot::new(1, 1),
            },
            &Default::default(),
        );
        let mut bytes = encode(&entry, "entry").unwrap();
        bytes.push(0);
        let e = corrupt_with(b"k/a", &bytes);
        assert!(e.to_string().contains("trailing"), "{e}");
    }

    #[test]
    fn wrong_marker_is_refused() {
        let e = corrupt_with(KEY_FORMAT, b"meshkv-0");
        assert!(matches!(e, StorageError::NotAStore { .. }), "{e}");
        assert!(e.to_string().contains("meshkv-0"), "{e}");
    }

    #[test]
    fn real_syncer_fsyncs_new_blobs_once() {
        let t = tmp();
        let dir = t.path().join("data");
        let (s, _) = Storage::open(&dir, 1, 1000 + 1, 1 << 20, Limits::default()).unwrap();
        drop(s);
        let blob = dir.join("blobs").join("12345");
        std::fs::write(&blob, b"blob").unwrap();
        let mut syncer = FsSyncer::new(&dir).unwrap();
        assert_eq!(syncer.synced_blobs.get(blob.file_name().unwrap()), Some(&4));
        assert!(!syncer.sync_blobs().unwrap(), "nothing new");
        std::fs::write(dir.join("blobs").join("777"), b"x").unwrap();
        assert!(syncer.sync_blobs().unwrap(), "a new blob");
        std::fs::remove_file(&blob).unwrap();
        assert!(syncer.sync_blobs().unwrap(), "a blob went away");
        assert_eq!(syncer.synced_blobs.len(), 1);
        syncer.sync().unwrap();
    }

    #[test]
    fn real_syncer_tracks_the_directory_listing() {
        let t = tmp();
        let dir = t.path().join("data");
        let (s, _) = Storage::open(&dir, 1, 1000 + 1, 1 << 20, Limits::default()).unwrap();
        drop(s);
        let mut syncer = FsSyncer::new(&dir).unwrap();
        let at_open = syncer.synced_listing.clone();
        assert!(at_open.iter().any(|(n, _)| n == "db"), "{at_open:?}");
        syncer.sync().unwrap();
        assert_eq!(syncer.synced_listing, at_open, "nothing changed");
        // A snapshot-like rename over an existing name changes the inode: seen.
        let snap = dir.join("snap.0001");
        std::fs::write(&snap, b"a").unwrap();
        syncer.sync().unwrap();
        let with_snap = syncer.synced_listing.clone();
        assert_eq!(with_snap.len(), at_open.len() + 1);
        let tmp_snap = dir.join("snap.0001.generating");
        std::fs::write(&tmp_snap, b"b").unwrap();
        std::fs::rename(&tmp_snap, &snap).unwrap();
        syncer.sync().unwrap();
        assert_eq!(syncer.synced_listing.len(), with_snap.len());
        assert_ne!(syncer.synced_listing, with_snap, "rename over is a change");
        std::fs::remove_file(&snap).unwrap();
        syncer.sync().unwrap();
        assert_eq!(syncer.synced_listing, at_open);
    }

    #[test]
    fn failed_sync_poisons_the_store() {
        struct Failing;
        impl Syncer for Failing {
            fn sync(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let t = tmp();
        let (s, mut r) = Storage::open(t.path(), 1, 1001, 1 << 20, Limits::default()).unwrap();
        let mut s = s.with_syncer(Box::new(Failing));
        let put = |k: &str| meshkv_core::replica::Op::Put {
            key: k.into(),
            value: Some(b"v".to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: None,
        };
        let st = r.stage(vec![put("a")], 10);
        let e = s.persist(&st, true).unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        let st = r.stage(vec![put("b")], 10);
        let e = s.persist(&st, true).unwrap_err();
        assert!(matches!(e, StorageError::Failed(_)), "{e}");
    }
}
