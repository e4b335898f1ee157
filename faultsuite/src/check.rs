//! The checker: chain breaks (the old/new chain of single-writer keys), stale reads,
//! and acknowledged writes lost after convergence. Pure functions over a history, so
//! they can be fed broken histories (see the tests below and `meshkv-test check`).
//!
//! Definitions (values written by the suite are unique per key):
//!
//! * **Chain break.** For a key written by one client, one write after another, every
//!   acknowledged PUT must return as its old value the value of the previous
//!   acknowledged PUT of that key (none for the first), or the value of a PUT issued
//!   in between that failed (a failed PUT may or may not have been applied). A PUT
//!   that was retried may also return its own value (an earlier attempt applied it).
//! * **Stale read.** A GET that returns a value v (or 404) although another PUT of the
//!   key, acknowledged before the GET started, began after v's PUT ended: the value
//!   was already overwritten in real time (for 404: any PUT acknowledged before the
//!   GET started). A value nobody wrote is counted too.
//! * **Lost write.** After convergence a key must hold the value of a PUT that no
//!   acknowledged PUT followed in real time (for a single writer: the last
//!   acknowledged one, or a later failed one). Anything else means an acknowledged
//!   write was lost (or, for concurrent writers, the store did not keep the later one).

use crate::history::{Op, OpKind};
use meshkv_core::linearizable::{self, Kind, Op as LinOp, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// A PUT whose old value does not continue the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The key.
    pub key: String,
    /// The PUT's place among the key's PUTs (0-based).
    pub index: usize,
    /// Its value.
    pub value: String,
    /// The old value it returned.
    pub got: Option<String>,
    /// The old values that would have continued the chain.
    pub expected: Vec<Option<String>>,
    /// When it started (µs).
    pub start_us: u64,
    /// The server that served it.
    pub server: usize,
}

/// A GET that returned an out-of-date value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stale {
    /// The key.
    pub key: String,
    /// What it returned.
    pub got: Option<String>,
    /// A value acknowledged before the read started that it should have seen at least.
    pub newer: Option<String>,
    /// When it started (µs).
    pub start_us: u64,
    /// The server that served it.
    pub server: usize,
}

/// A key whose converged value is not an acceptable last write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// The key.
    pub key: String,
    /// The converged value.
    pub got: Option<String>,
    /// Acceptable values.
    pub expected: Vec<Option<String>>,
}

fn puts_by_key(ops: &[Op]) -> BTreeMap<&str, Vec<&Op>> {
    let mut m: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind == OpKind::Put) {
        m.entry(op.key.as_str()).or_default().push(op);
    }
    for v in m.values_mut() {
        v.sort_by_key(|o| (o.start_us, o.end_us));
    }
    m
}

/// Keys whose PUTs all come from one client and never overlap in time: the keys the
/// chain check applies to.
pub fn single_writer_keys(ops: &[Op]) -> HashSet<String> {
    let mut out = HashSet::new();
    for (key, puts) in puts_by_key(ops) {
        let one_client = puts.windows(2).all(|w| w[0].client == w[1].client);
        let sequential = puts.windows(2).all(|w| w[0].end_us <= w[1].start_us);
        if one_client && sequential {
            out.insert(key.to_string());
        }
    }
    out
}

/// Chain breaks over the single-writer keys of a history.
pub fn chain_breaks(ops: &[Op]) -> Vec<Break> {
    let single = single_writer_keys(ops);
    let mut breaks = Vec::new();
    for (key, puts) in puts_by_key(ops) {
        if !single.contains(key) {
            continue;
        }
        let mut allowed: Vec<Option<String>> = vec![None];
        for (index, w) in puts.iter().enumerate() {
            if w.ok {
                let own = w.attempts > 1 && w.old.is_some() && w.old == w.value;
                if !allowed.contains(&w.old) && !own {
                    breaks.push(Break {
                        key: key.to_string(),
                        index,
                        value: w.value.clone().unwrap_or_default(),
                        got: w.old.clone(),
                        expected: allowed.clone(),
                        start_us: w.start_us,
                        server: w.server,
                    });
                }
                allowed = vec![w.value.clone()];
            } else {
                allowed.push(w.value.clone());
            }
        }
    }
    breaks
}

/// Stale reads (see the module documentation).
pub fn stale_reads(ops: &[Op]) -> Vec<Stale> {
    let puts = puts_by_key(ops);
    let mut out = Vec::new();
    for r in ops.iter().filter(|o| o.kind == OpKind::Get && o.ok) {
        let empty = Vec::new();
        let writes = puts.get(r.key.as_str()).unwrap_or(&empty);
        // Acknowledged PUTs finished before the read started.
        let done_before = writes.iter().filter(|w| w.ok && w.end_us < r.start_us);
        match &r.value {
            None => {
                if let Some(w) = done_before.max_by_key(|w| w.end_us) {
                    out.push(Stale {
                        key: r.key.clone(),
                        got: None,
                        newer: w.value.clone(),
                        start_us: r.start_us,
                        server: r.server,
                    });
                }
            }
            Some(v) => {
                let src = writes
                    .iter()
                    .find(|w| w.value.as_deref() == Some(v.as_str()));
                match src {
                    None => out.push(Stale {
                        key: r.key.clone(),
                        got: Some(v.clone()),
                        newer: None,
                        start_us: r.start_us,
                        server: r.server,
                    }),
                    Some(src) => {
                        if let Some(w) = done_before
                            .filter(|w| w.start_us > src.end_us)
                            .max_by_key(|w| w.end_us)
                        {
                            out.push(Stale {
                                key: r.key.clone(),
                                got: Some(v.clone()),
                                newer: w.value.clone(),
                                start_us: r.start_us,
                                server: r.server,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Acknowledged writes lost: `finals` holds each key's converged value.
pub fn lost_writes(ops: &[Op], finals: &[(String, Option<String>)]) -> Vec<Lost> {
    let puts = puts_by_key(ops);
    let mut out = Vec::new();
    for (key, got) in finals {
        let empty = Vec::new();
        let writes = puts.get(key.as_str()).unwrap_or(&empty);
        // A write is acceptable as the final value when no acknowledged write
        // started after it ended.
        let acceptable = |w: &Op| !writes.iter().any(|x| x.ok && x.start_us > w.end_us);
        let mut expected: Vec<Option<String>> = writes
            .iter()
            .filter(|w| acceptable(w))
            .map(|w| w.value.clone())
            .collect();
        if !writes.iter().any(|w| w.ok) {
            expected.push(None);
        }
        expected.dedup();
        if !expected.contains(got) {
            out.push(Lost {
                key: key.clone(),
                got: got.clone(),
                expected,
            });
        }
    }
    out
}

/// The linearizability verdict of a history (GETs and PUTs per key, judged by
/// [`meshkv_core::linearizable`]; a request no server answered is indeterminate: it
/// may have taken effect at any point after it began, or never).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Linearizability {
    /// Keys judged.
    pub keys: usize,
    /// Keys whose history is not linearizable.
    pub violations: Vec<String>,
    /// Keys the search gave up on (its state budget ran out).
    pub undecided: Vec<String>,
}

impl Linearizability {
    /// `yes`, `NO (k of n keys)` or `undecided (k of n keys)`, for tables.
    pub fn verdict(&self) -> String {
        if !self.violations.is_empty() {
            format!("NO ({} of {} keys)", self.violations.len(), self.keys)
        } else if !self.undecided.is_empty() {
            format!("undecided ({} of {} keys)", self.undecided.len(), self.keys)
        } else {
            "yes".into()
        }
    }
}

/// Judge `ops` for linearizability, key by key.
pub fn linearizability(ops: &[Op]) -> Linearizability {
    let bytes = |s: &Option<String>| s.as_ref().map(|v| v.as_bytes().to_vec());
    let mut history = Vec::with_capacity(ops.len());
    for o in ops {
        let (kind, ret) = match (o.kind, o.ok) {
            (OpKind::Get, true) => (
                Kind::Get {
                    value: if o.found { bytes(&o.value) } else { None },
                },
                Some(o.end_us),
            ),
            // A read nobody answered changes nothing.
            (OpKind::Get, false) => continue,
            (OpKind::Put, ok) => {
                // A request tried again elsewhere is two writes of one value: the
                // attempts that failed may have taken effect too (a timeout, a 503
                // "may still take effect"), so they count as one more write with no
                // answer.
                if !o.failed_at.is_empty() {
                    history.push((
                        o.key.clone().into_bytes(),
                        LinOp {
                            client: o.client as u64,
                            invoke: o.start_us,
                            ret: None,
                            kind: Kind::Put {
                                value: bytes(&o.value),
                                previous: None,
                            },
                        },
                    ));
                }
                (
                    Kind::Put {
                        value: bytes(&o.value),
                        previous: ok.then(|| bytes(&o.old)),
                    },
                    ok.then_some(o.end_us),
                )
            }
        };
        history.push((
            o.key.clone().into_bytes(),
            LinOp {
                client: o.client as u64,
                invoke: o.start_us,
                ret,
                kind,
            },
        ));
    }
    let mut out = Linearizability::default();
    for (key, verdict) in linearizable::check_keys(&history, linearizable::DEFAULT_BUDGET) {
        out.keys += 1;
        let key = String::from_utf8_lossy(&key).into_owned();
        match verdict {
            Verdict::Linearizable { .. } => {}
            Verdict::NotLinearizable { .. } => out.violations.push(key),
            Verdict::Unknown { .. } => out.undecided.push(key),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, old: Option<&str>, ok: bool, t: u64) -> Op {
        Op {
            client: 0,
            kind: OpKind::Put,
            key: key.into(),
            value: Some(value.into()),
            old: old.map(Into::into),
            found: true,
            ok,
            status: if ok { 200 } else { 0 },
            server: 0,
            target: 0,
            attempts: 1,
            failed_at: vec![],
            start_us: t,
            end_us: t + 5,
            error: None,
            version: None,
        }
    }

    fn get(key: &str, value: Option<&str>, t: u64) -> Op {
        Op {
            kind: OpKind::Get,
            value: value.map(Into::into),
            old: None,
            found: value.is_some(),
            ..put(key, "", None, true, t)
        }
    }

    fn good_chain() -> Vec<Op> {
        vec![
            put("k", "v0", None, true, 0),
            put("k", "v1", Some("v0"), true, 10),
            put("k", "v2", Some("v1"), true, 20),
            put("j", "w0", None, true, 5),
            put("j", "w1", Some("w0"), true, 15),
        ]
    }

    #[test]
    fn a_good_chain_has_no_break() {
        assert!(chain_breaks(&good_chain()).is_empty());
    }

    #[test]
    fn a_stale_old_value_is_a_break() {
        let mut h = good_chain();
        h[2].old = Some("v0".into()); // v2 did not see v1
        let b = chain_breaks(&h);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].key, "k");
        assert_eq!(b[0].index, 2);
        assert_eq!(b[0].got.as_deref(), Some("v0"));
        assert_eq!(b[0].expected, vec![Some("v1".to_string())]);
    }

    #[test]
    fn a_missing_first_old_and_a_phantom_are_breaks() {
        let mut h = good_chain();
        h[1].old = None; // v0 forgotten
        h[4].old = Some("nobody wrote this".into());
        assert_eq!(chain_breaks(&h).len(), 2);
    }

    #[test]
    fn a_failed_write_may_or_may_not_be_in_the_chain() {
        let h = vec![
            put("k", "v0", None, true, 0),
            put("k", "v1", None, false, 10),
            put("k", "v2", Some("v1"), true, 20), // v1 was applied after all
            put("k", "v3", None, false, 30),
            put("k", "v4", Some("v2"), true, 40), // v3 was not
        ];
        assert!(chain_breaks(&h).is_empty());
        let mut broken = h.clone();
        broken[4].old = Some("v0".into());
        assert_eq!(chain_breaks(&broken).len(), 1);
    }

    #[test]
    fn a_retried_write_may_see_itself() {
        let mut h = good_chain();
        h[2].old = Some("v2".into());
        assert_eq!(chain_breaks(&h).len(), 1, "not retried: a break");
        h[2].attempts = 2;
        assert!(chain_breaks(&h).is_empty());
    }

    #[test]
    fn keys_with_concurrent_writers_are_not_chain_checked() {
        let mut h = good_chain();
        h[1].client = 1;
        h[1].old = Some("garbage".into());
        assert!(!single_writer_keys(&h).contains("k"));
        assert!(single_writer_keys(&h).contains("j"));
        assert!(chain_breaks(&h).is_empty());
    }

    #[test]
    fn stale_reads_are_found() {
        let mut h = good_chain();
        h.push(get("k", Some("v2"), 30)); // fresh
        h.push(get("k", Some("v1"), 12)); // v2 not yet acknowledged: fine
        assert!(stale_reads(&h).is_empty());
        h.push(get("k", Some("v1"), 40)); // v2 acknowledged at 25: stale
        h.push(get("k", None, 40)); // 404 after writes: stale
        h.push(get("k", Some("zzz"), 40)); // never written
        h.push(get("new", None, 40)); // never written key: fine
        let s = stale_reads(&h);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].newer.as_deref(), Some("v2"));
    }

    #[test]
    fn lost_writes_are_found() {
        let h = good_chain();
        let ok = vec![
            ("k".to_string(), Some("v2".to_string())),
            ("j".to_string(), Some("w1".to_string())),
        ];
        assert!(lost_writes(&h, &ok).is_empty());
        let bad = vec![
            ("k".to_string(), Some("v1".to_string())),
            ("j".to_string(), None),
            ("never".to_string(), None),
        ];
        let l = lost_writes(&h, &bad);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0].expected, vec![Some("v2".to_string())]);
    }

    #[test]
    fn a_later_failed_write_may_be_final() {
        let mut h = good_chain();
        h.push(put("k", "v3", None, false, 30));
        let fin = vec![("k".to_string(), Some("v3".to_string()))];
        assert!(lost_writes(&h, &fin).is_empty());
        let fin = vec![("k".to_string(), Some("v2".to_string()))];
        assert!(lost_writes(&h, &fin).is_empty());
    }

    #[test]
    fn concurrent_writes_either_may_win_but_not_an_overtaken_one() {
        let mut a = put("k", "a", None, true, 0);
        a.end_us = 100;
        let mut b = put("k", "b", None, true, 50);
        b.client = 1;
        b.end_us = 60;
        let c = put("k", "c", None, true, 200);
        let h = vec![a.clone(), b.clone()];
        for v in ["a", "b"] {
            let fin = vec![("k".to_string(), Some(v.to_string()))];
            assert!(lost_writes(&h, &fin).is_empty());
        }
        let h = vec![a, b, c];
        let fin = vec![("k".to_string(), Some("a".to_string()))];
        assert_eq!(lost_writes(&h, &fin).len(), 1);
    }

    #[test]
    fn linearizability_passes_a_good_chain_and_flags_a_stale_read() {
        let h = good_chain();
        let l = linearizability(&h);
        assert_eq!((l.keys, l.verdict().as_str()), (2, "yes"));
        // A read after v2 was acknowledged that returns v1.
        let mut h = good_chain();
        h.push(get("k", Some("v1"), 40));
        let l = linearizability(&h);
        assert_eq!(l.violations, vec!["k".to_string()]);
        assert_eq!(l.verdict(), "NO (1 of 2 keys)");
        // Two writes that both saw the same old value (a lost update).
        let mut h = good_chain();
        h.push(put("j", "w2", Some("w1"), true, 30));
        h.push(put("j", "w3", Some("w1"), true, 40));
        assert_eq!(linearizability(&h).violations, vec!["j".to_string()]);
    }

    #[test]
    fn a_write_retried_elsewhere_may_return_its_own_value() {
        let mut h = good_chain();
        let mut p = put("k", "v3", Some("v3"), true, 30);
        p.failed_at = vec![1];
        p.attempts = 2;
        h.push(p);
        assert_eq!(linearizability(&h).verdict(), "yes");
        // Without the failed attempt the same answer is a violation.
        let mut h = good_chain();
        h.push(put("k", "v3", Some("v3"), true, 30));
        assert_eq!(linearizability(&h).violations, vec!["k".to_string()]);
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let mut h = good_chain();
        h.push(put("k", "v3", None, false, 30));
        h.push(get("k", Some("v3"), 100));
        assert_eq!(linearizability(&h).verdict(), "yes");
        let mut h = good_chain();
        h.push(put("k", "v3", None, false, 30));
        h.push(get("k", Some("v2"), 100));
        assert_eq!(linearizability(&h).verdict(), "yes");
    }
}
