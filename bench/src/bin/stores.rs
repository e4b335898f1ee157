//! sled (what meshkv uses) against redb, on meshkv's own write pattern (issue 12, item
//! 5: "if sled is the obstacle, measure an alternative"). Not a storage trait yet: the
//! same records, written the way `node/src/storage.rs` writes them, into each store.
//!
//! * **bulk**: `--keys` entries in commits of `--bulk-batch` (an anti-entropy page):
//!   each commit holds the encoded entries, one log record (`dot → key`) per entry and
//!   the meta record, and is made durable before the next;
//! * **small**: `--small-commits` commits of `--small-batch` entries (group-committed
//!   puts), each durable;
//! * **disk**: bytes in the store's directory afterwards;
//! * **reopen**: open the store again and read and decode every entry (what a restart
//!   does before it serves).
//!
//! Durable means, for sled, what meshkv does: `flush()` then an fsync of sled's data
//! file; for redb, a committed write transaction (its default, `Durability::Immediate`).
//! Stores alternate over `--rounds` rounds; medians and redb/sled ratios are printed.

use anyhow::{Context, Result};
use clap::Parser;
use meshkv_core::{Dot, Entry, Version, VersionVector};
use meshkv_node::storage;
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../store_data.rs"]
mod store_data;
use store_data::{disk_usage, key, value};

#[derive(Parser, Debug)]
#[command(about = "sled vs redb on meshkv's write pattern")]
struct Args {
    /// Entries written in the bulk phase.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Entries per bulk commit.
    #[arg(long, default_value_t = 10_000)]
    bulk_batch: u64,
    /// Commits in the small phase.
    #[arg(long, default_value_t = 2_000)]
    small_commits: u64,
    /// Entries per small commit.
    #[arg(long, default_value_t = 8)]
    small_batch: u64,
    /// Value bytes per entry.
    #[arg(long, default_value_t = 100)]
    value_len: usize,
    /// Rounds (stores alternate within each).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// Key bytes (the footprint benchmark's default too).
const KEY_LEN: usize = 16;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

/// One commit's records, keyed as `meshkv_node::storage` keys them: (entry key, encoded
/// entry), (log key, key), the meta record.
struct Commit {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    log: Vec<(Vec<u8>, Vec<u8>)>,
    meta: Vec<u8>,
}

fn commit(first: u64, n: u64, value_len: usize) -> Result<Commit> {
    let mut entries = Vec::with_capacity(n as usize);
    let mut log = Vec::with_capacity(n as usize);
    let ctx = VersionVector::new();
    for i in first..first + n {
        let key = key(i, KEY_LEN);
        let dot = Dot::new(1, i + 1);
        let version = Version {
            ts: 1_800_000_000_000_000 + i,
            dot,
        };
        let entry = Entry::write(Some(value(i, value_len)), version, &ctx);
        let enc = bincode::serde::encode_to_vec(&entry, bincode::config::standard())?;
        log.push((storage::log_key(dot), key.clone()));
        entries.push((storage::entry_key(&key), enc));
    }
    Ok(Commit {
        entries,
        log,
        meta: (first + n).to_be_bytes().to_vec(),
    })
}

trait Store {
    fn write(&mut self, c: &Commit) -> Result<()>;
    /// Read and decode every entry; returns how many.
    fn scan(&self) -> Result<u64>;
}

struct Sled {
    db: sled::Db,
    file: std::fs::File,
}

impl Sled {
    fn open(dir: &Path) -> Result<Sled> {
        let db = sled::open(dir.join("db-sled"))?;
        let file = std::fs::File::open(dir.join("db-sled").join("db"))?;
        Ok(Sled { db, file })
    }
}

impl Store for Sled {
    fn write(&mut self, c: &Commit) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in c.entries.iter().chain(&c.log) {
            b.insert(k.as_slice(), v.as_slice());
        }
        b.insert(storage::KEY_META, c.meta.as_slice());
        self.db.apply_batch(b)?;
        self.db.flush()?;
        self.file.sync_all()?;
        Ok(())
    }

    fn scan(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.scan_prefix(storage::entry_key(b"")) {
            let (_, v) = item?;
            let (_e, _): (Entry, usize) =
                bincode::serde::decode_from_slice(&v, bincode::config::standard())?;
            n += 1;
        }
        Ok(n)
    }
}

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Result<Redb> {
        Ok(Redb {
            db: redb::Database::create(dir.join("db.redb"))?,
        })
    }
}

impl Store for Redb {
    fn write(&mut self, c: &Commit) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ENTRIES)?;
            for (k, v) in &c.entries {
                t.insert(k.as_slice(), v.as_slice())?;
            }
            let mut t = txn.open_table(LOG)?;
            for (k, v) in &c.log {
                t.insert(k.as_slice(), v.as_slice())?;
            }
            let mut t = txn.open_table(META)?;
            t.insert(storage::KEY_META, c.meta.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn scan(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut n = 0;
        for item in t.iter()? {
            let (_, v) = item?;
            let (_e, _): (Entry, usize) =
                bincode::serde::decode_from_slice(v.value(), bincode::config::standard())?;
            n += 1;
        }
        Ok(n)
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    bulk: Duration,
    small: Duration,
    disk: u64,
    reopen: Duration,
}

fn run(name: &str, a: &Args) -> Result<Figures> {
    let tmp = tempfile::tempdir()?;
    let open = |dir: &Path| -> Result<Box<dyn Store>> {
        Ok(match name {
            "sled" => Box::new(Sled::open(dir)?),
            _ => Box::new(Redb::open(dir)?),
        })
    };
    let mut f = Figures::default();
    {
        let mut s = open(tmp.path())?;
        let mut first = 0;
        let t = Instant::now();
        while first < a.keys {
            let n = a.bulk_batch.min(a.keys - first);
            let c = commit(first, n, a.value_len)?;
            s.write(&c)?;
            first += n;
        }
        f.bulk = t.elapsed();
        let commits: Vec<Commit> = (0..a.small_commits)
            .map(|i| commit(a.keys + i * a.small_batch, a.small_batch, a.value_len))
            .collect::<Result<_>>()?;
        let t = Instant::now();
        for c in &commits {
            s.write(c)?;
        }
        f.small = t.elapsed();
    }
    f.disk = disk_usage(tmp.path(), &mut BTreeMap::new(), None)?.apparent;
    let t = Instant::now();
    let s = open(tmp.path())?;
    let n = s.scan()?;
    f.reopen = t.elapsed();
    let want = a.keys + a.small_commits * a.small_batch;
    anyhow::ensure!(n == want, "{name}: read back {n} entries, wrote {want}");
    eprintln!(
        "{name}: bulk {:.2?}, small {:.2?}, disk {:.1} MiB, reopen+scan {:.2?}",
        f.bulk,
        f.small,
        f.disk as f64 / (1 << 20) as f64,
        f.reopen
    );
    Ok(f)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut sled_f = Vec::new();
    let mut redb_f = Vec::new();
    for r in 0..a.rounds {
        let order: [&str; 2] = if r % 2 == 0 {
            ["sled", "redb"]
        } else {
            ["redb", "sled"]
        };
        for name in order {
            let f = run(name, &a).with_context(|| format!("{name}, round {}", r + 1))?;
            if name == "sled" {
                sled_f.push(f);
            } else {
                redb_f.push(f);
            }
        }
    }
    let payload =
        (a.keys + a.small_commits * a.small_batch) as f64 * (KEY_LEN + a.value_len) as f64;
    let med = |v: &[Figures], g: fn(&Figures) -> f64| median(v.iter().map(g).collect());
    type Row = (&'static str, fn(&Figures) -> f64);
    let rows: [Row; 4] = [
        ("bulk: entries/s", |f| 1.0 / f.bulk.as_secs_f64()),
        ("small: durable commits/s", |f| 1.0 / f.small.as_secs_f64()),
        ("disk: x payload", |f| f.disk as f64),
        ("reopen + read every entry: s", |f| f.reopen.as_secs_f64()),
    ];
    let scale = [a.keys as f64, a.small_commits as f64, 1.0 / payload, 1.0];
    println!(
        "stores: {} keys of {} B in commits of {}, then {} commits of {}; {} round(s), medians",
        a.keys, a.value_len, a.bulk_batch, a.small_commits, a.small_batch, a.rounds
    );
    println!(
        "{:<32} {:>12} {:>12} {:>10}",
        "measure", "sled", "redb", "redb/sled"
    );
    for ((label, g), k) in rows.iter().zip(scale) {
        let (s, r) = (med(&sled_f, *g) * k, med(&redb_f, *g) * k);
        println!("{label:<32} {s:>12.2} {r:>12.2} {:>9.2}x", r / s);
    }
    Ok(())
}
