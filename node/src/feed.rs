//! The change feed behind `GET /watch`: every change this server applies to a client
//! key, numbered in the order it applied them.
//!
//! # The law
//! * The commit thread records a batch's changes right **after** the batch is committed
//!   to the replica, so a watcher never learns of a change it could not read.
//! * Numbers (`seq`) are per incarnation ([`Feed::rid`]): an event id is
//!   `<incarnation hex>:<seq>`. A watcher resuming from an id of another incarnation,
//!   or from a number the bounded buffer no longer reaches back to, gets a
//!   [`Since::Gap`]: it may have missed changes and must list again.
//! * A listing reads [`Feed::last`] *before* it reads the store, so watching from the
//!   id a listing returned misses nothing (a change may be seen twice: once in the
//!   listing and once in the feed; versions tell them apart).
//! * A change is a new winning version of a key, or the expiry of the current one
//!   ([`meshkv_core::replica::Staged::changes`]), recorded in the order the batch's
//!   operations made them: several writes to one key committed in one batch are
//!   several changes. A batch that merely merges contexts (same version) records
//!   nothing. Deletes and expiries are tombstones
//!   (`value: None`); an expiry keeps the version of the write that expired and is
//!   marked [`Change::expired`].

use meshkv_core::replica::is_reserved;
use meshkv_core::Version;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Changes kept at most.
pub const MAX_CHANGES: usize = 65_536;
/// Bytes of keys and values kept at most.
pub const MAX_BYTES: usize = 32 << 20;

/// One applied change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its number in this incarnation.
    pub seq: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None`: deleted.
    pub value: Option<Vec<u8>>,
    /// The winning write.
    pub version: Version,
    /// The change is the expiry of the write `version` (its TTL ran out).
    pub expired: bool,
}

/// What [`Feed::since`] found.
#[derive(Debug)]
pub enum Since {
    /// Changes after the asked number matching the prefix (possibly none), and the
    /// number the next call should start after.
    Changes(Vec<Arc<Change>>, u64),
    /// The asked number is older than the oldest kept change (or from the future):
    /// changes may have been missed. Carries the current last number.
    Gap(u64),
}

#[derive(Default)]
struct Inner {
    buf: VecDeque<Arc<Change>>,
    bytes: usize,
    /// The number of the last change recorded (0: none yet).
    last: u64,
}

/// The change feed of one server incarnation.
pub struct Feed {
    rid: u64,
    inner: Mutex<Inner>,
    tx: tokio::sync::watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
}

fn size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + 64
}

impl Feed {
    /// An empty feed for incarnation `rid`.
    pub fn new(rid: u64) -> Feed {
        let (tx, _) = tokio::sync::watch::channel(0);
        Feed {
            rid,
            inner: Mutex::new(Inner::default()),
            tx,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The incarnation its numbers belong to.
    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// The number of the last change recorded.
    pub fn last(&self) -> u64 {
        self.lock().last
    }

    /// The event id of change number `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{:x}:{seq}", self.rid)
    }

    /// The number in event id `id`, when it is one of this incarnation's; `Err` when
    /// it is malformed, `Ok(None)` when it names another incarnation.
    pub fn parse_id(&self, id: &str) -> Result<Option<u64>, String> {
        let (rid, seq) = id
            .split_once(':')
            .ok_or_else(|| format!("event id {id:?}: want <incarnation hex>:<number>"))?;
        let rid = u64::from_str_radix(rid, 16)
            .map_err(|_| format!("event id {id:?}: incarnation is not hex"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|_| format!("event id {id:?}: number is not decimal"))?;
        Ok((rid == self.rid).then_some(seq))
    }

    /// Record applied changes `(key, value, version, expired)` (client keys only), in
    /// order, and wake the watchers.
    pub fn record(
        &self,
        changes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>, Version, bool)>,
    ) {
        let mut g = self.lock();
        let before = g.last;
        for (key, value, version, expired) in changes {
            if is_reserved(&key) {
                continue;
            }
            g.last += 1;
            g.bytes += size(&key, &value);
            let seq = g.last;
            g.buf.push_back(Arc::new(Change {
                seq,
                key,
                value,
                version,
                expired,
            }));
            while g.buf.len() > MAX_CHANGES || (g.bytes > MAX_BYTES && g.buf.len() > 1) {
                if let Some(c) = g.buf.pop_front() {
                    g.bytes -= size(&c.key, &c.value);
                }
            }
        }
        let last = g.last;
        drop(g);
        if last != before {
            self.tx.send_replace(last);
        }
    }

    /// Up to `max` changes numbered after `after` whose key starts with `prefix`.
    pub fn since(&self, after: u64, prefix: &[u8], max: usize) -> Since {
        let g = self.lock();
        if after > g.last {
            return Since::Gap(g.last);
        }
        let oldest = g.buf.front().map_or(g.last + 1, |c| c.seq);
        if after + 1 < oldest {
            return Since::Gap(g.last);
        }
        let skip = (after + 1 - oldest) as usize;
        let mut out = Vec::new();
        let mut upto = after;
        for c in g.buf.iter().skip(skip) {
            if out.len() >= max {
                break;
            }
            upto = c.seq;
            if c.key.starts_with(prefix) {
                out.push(c.clone());
            }
        }
        Since::Changes(out, upto)
    }

    /// Close the feed (the server stops): every watcher is woken and ends.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.tx.send_modify(|_| {});
    }

    /// Whether [`Feed::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A receiver woken whenever changes are recorded (or the feed closes).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshkv_core::Dot;

    fn v(n: u64) -> Version {
        Version {
            ts: n * 2,
            dot: Dot::new(1, n),
        }
    }

    fn seqs(s: Since) -> (Vec<u64>, u64) {
        match s {
            Since::Changes(c, upto) => (c.iter().map(|c| c.seq).collect(), upto),
            Since::Gap(l) => panic!("gap at {l}"),
        }
    }

    #[test]
    fn replays_in_order_filtered_by_prefix() {
        let f = Feed::new(7);
        f.record([
            (b"a/1".to_vec(), Some(b"x".to_vec()), v(1), false),
            (b"b/1".to_vec(), Some(b"y".to_vec()), v(2), false),
            (b"\0meshkv/member/1".to_vec(), None, v(3), false),
            (b"a/2".to_vec(), None, v(4), false),
        ]);
        assert_eq!(f.last(), 3, "reserved keys are not changes");
        assert_eq!(seqs(f.since(0, b"a/", 100)), (vec![1, 3], 3));
        assert_eq!(seqs(f.since(1, b"", 100)), (vec![2, 3], 3));
        assert_eq!(seqs(f.since(0, b"", 2)), (vec![1, 2], 2));
        assert_eq!(seqs(f.since(3, b"", 100)), (vec![], 3));
        assert!(matches!(f.since(4, b"", 100), Since::Gap(3)));
    }

    #[test]
    fn a_trimmed_past_is_a_gap() {
        let f = Feed::new(1);
        f.record((0..MAX_CHANGES as u64 + 10).map(|i| (b"k".to_vec(), None, v(i), false)));
        assert!(matches!(f.since(0, b"", 1), Since::Gap(_)));
        assert!(matches!(f.since(9, b"", 1), Since::Gap(_)));
        assert_eq!(seqs(f.since(10, b"", 1)).0, vec![11]);
    }

    #[test]
    fn ids_name_their_incarnation() {
        let f = Feed::new(0xab);
        assert_eq!(f.id(5), "ab:5");
        assert_eq!(f.parse_id("ab:5"), Ok(Some(5)));
        assert_eq!(f.parse_id("ac:5"), Ok(None));
        for bad in ["", "ab", "zz:1", "ab:x", "ab:-1"] {
            assert!(f.parse_id(bad).is_err(), "{bad:?}");
        }
    }
}
