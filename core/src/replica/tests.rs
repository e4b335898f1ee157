use super::*;
use crate::sim::SimCluster;
use crate::Session;
use proptest::prelude::*;

fn put(r: &mut Replica, key: &[u8], value: &[u8], wall: u64) -> (Version, Vec<Relay>) {
    let mut st = r.stage(
        vec![Op::Put {
            key: key.to_vec(),
            value: Some(value.to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: None,
        }],
        wall,
    );
    let Outcome::Put { version, .. } = st.outcomes.remove(0) else {
        panic!("not a put")
    };
    (version, r.commit(st))
}

fn delete(r: &mut Replica, key: &[u8], wall: u64) -> Vec<Relay> {
    let mut st = r.stage(
        vec![Op::Put {
            key: key.to_vec(),
            value: None,
            seen_ts: 0,
            dep: None,
            ttl: None,
        }],
        wall,
    );
    st.outcomes.clear();
    r.commit(st)
}

#[test]
fn local_put_then_read_and_dep_rules() {
    let mut r = Replica::new(1, Limits::default());
    let (v, _) = put(&mut r, b"k", b"a", 100);
    assert_eq!(v.dot, Dot::new(1, 1));
    assert_eq!(
        r.read(b"k", Some(v.dot), 0, 100),
        ReadOutcome::Found {
            value: b"a".to_vec(),
            version: v
        }
    );
    // Dependency on a write this server has not seen: ERR_DEP, even for a missing key.
    assert_eq!(r.read(b"k", Some(Dot::new(2, 1)), 0, 100), ReadOutcome::Dep);
    assert_eq!(
        r.read(b"zz", Some(Dot::new(2, 1)), 0, 100),
        ReadOutcome::Dep
    );
    // No dependency and no value: ERR_KEY.
    assert_eq!(
        r.read(b"zz", None, 0, 100),
        ReadOutcome::Missing { version: None }
    );
}

#[test]
fn newer_concurrent_write_does_not_satisfy_a_dependency() {
    let mut c = SimCluster::new(&[0, 1], Limits::default());
    c.set_link(0, 1, false);
    let mut s5 = Session::new();
    let mut s6 = Session::new();
    c.put(0, b"k", b"old", &mut s5);
    c.put(1, b"k", b"new", &mut s6);
    assert_eq!(c.get(1, b"k", &mut s5), ReadOutcome::Dep);
    // Other clients are unaffected.
    assert!(matches!(c.get(1, b"k", &mut s6), ReadOutcome::Found { .. }));
    // A put resets the dependency.
    c.put(1, b"k", b"mine", &mut s5);
    assert!(
        matches!(c.get(1, b"k", &mut s5), ReadOutcome::Found { value, .. } if value == b"mine")
    );
    c.set_link(0, 1, true);
    c.settle();
    assert!(c.converged());
    // The later write wins everywhere.
    assert_eq!(c.nodes[&0].dump(), vec![(b"k".to_vec(), b"mine".to_vec())]);
}

#[test]
fn restore_never_reuses_a_dot_or_goes_back_in_time() {
    let mut r = Replica::new(3, Limits::default());
    let (v1, _) = put(&mut r, b"a", b"1", 1_000);
    let (v2, _) = put(&mut r, b"a", b"2", 1_000);
    let entries: Vec<(Vec<u8>, Entry)> = vec![(b"a".to_vec(), r.entry(b"a").unwrap().clone())];
    let log: Vec<(Dot, Vec<u8>)> = vec![(v1.dot, b"a".to_vec()), (v2.dot, b"a".to_vec())];
    let mut r2 = Replica::restore(3, 77, Limits::default(), r.meta(), entries, log, 10);
    // Wall clock went back: still later, and a dot of the new incarnation.
    let (v3, _) = put(&mut r2, b"b", b"3", 10);
    assert_eq!(v3.dot, Dot::new(77, 1));
    assert!(v3.ts > v2.ts);
    assert_eq!(r2.seen().get(3), 2, "the earlier life's watermark is kept");
    assert_eq!(r2.seen().get(77), 1);
    assert_eq!(r2.entry(b"a"), r.entry(b"a"));
}

#[test]
fn a_wiped_or_rolled_back_server_gets_its_writes_back_and_reuses_no_dot() {
    for wipe in [false, true] {
        let mut c = SimCluster::new(&[0, 1, 2], Limits::default());
        let mut s = Session::new();
        c.put(2, b"a", b"1", &mut s);
        c.settle();
        let backup = c.nodes[&2].clone();
        let mut old = Vec::new();
        for i in 0..5 {
            old.push(c.put(2, format!("k{i}").as_bytes(), b"v", &mut s).dot);
        }
        c.settle();
        c.restart(2, (!wipe).then_some(&backup), 1002);
        // New writes carry the new origin, so no dot of the earlier life is reused.
        let mut s2 = Session::new();
        let fresh = c.put(2, b"k0", b"new", &mut s2).dot;
        assert_eq!(fresh, Dot::new(1002, 1));
        assert!(!old.contains(&fresh));
        c.settle();
        assert!(c.converged(), "wipe={wipe}");
        for n in [0, 1, 2] {
            let dump = c.nodes[&n].dump();
            assert_eq!(dump.len(), 6, "wipe={wipe} node {n}: {dump:?}");
            assert!(dump.contains(&(b"k0".to_vec(), b"new".to_vec())));
            assert_eq!(
                c.nodes[&n].seen().get(2),
                6,
                "earlier life recovered on {n}"
            );
            assert_eq!(c.nodes[&n].seen().get(1002), 1);
        }
        // The first session still reads its own writes everywhere.
        for n in [0, 1, 2] {
            assert!(matches!(c.get(n, b"k3", &mut s), ReadOutcome::Found { .. }));
        }
    }
}

#[test]
fn a_fast_peer_does_not_drag_the_clock_and_later_writes_still_win() {
    let limits = Limits::default();
    let hour = 3_600_000_000u64;
    let wall = 10 * hour;
    let mut fast = Replica::new(1, limits.clone());
    let mut r = Replica::new(2, limits);
    let (vf, relays) = put(&mut fast, b"k", b"fast", wall + hour);
    let rel = relays.into_iter().next();
    let entry = fast.entry(b"k").unwrap().clone();
    let mut st = r.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry,
            dots: rel.map(|r| r.dots).unwrap_or_default(),
            from: Some(1),
            relay: true,
        }],
        wall,
    );
    st.outcomes.clear();
    r.commit(st);
    assert!(
        r.clock() <= wall + r.limits.max_clock_offset,
        "clock not dragged"
    );
    assert_eq!(r.clock_skew().ahead, 1);
    assert!(r.clock_skew().max_ahead_micros >= hour);
    assert_eq!(r.max_ts(), vf.ts);
    // Another key is stamped by the real clock...
    let (vo, _) = put(&mut r, b"other", b"x", wall + 1);
    assert!(vo.ts < wall + hour);
    // ...while a write to the key the fast server wrote still wins over it.
    let (vk, _) = put(&mut r, b"k", b"later", wall + 2);
    assert!(vk > vf);
    // A client token from the fast server is honoured, not refused, and a forged one
    // cannot push a write past what the cluster has issued plus one.
    assert!(matches!(
        r.read(b"k", Some(vf.dot), vf.ts, wall + 3),
        ReadOutcome::Found { .. }
    ));
    let mut st = r.stage(
        vec![Op::Put {
            key: b"z".to_vec(),
            value: Some(b"1".to_vec()),
            seen_ts: u64::MAX,
            dep: None,
            ttl: None,
        }],
        wall + 4,
    );
    let Outcome::Put { version, .. } = st.outcomes.remove(0) else {
        panic!("not a put")
    };
    // (+2: one past the bound, and one more to make a client write's timestamp even.)
    assert!(version.ts <= r.max_ts().max(wall + 4 + r.limits.max_clock_offset) + 2);
    assert!(
        r.clock() <= wall + 4 + r.limits.max_clock_offset + 2,
        "clock {} wall {wall} max_ts {} version {version:?}",
        r.clock(),
        r.max_ts()
    );
}

#[test]
fn chain_relays_writes_to_the_far_end() {
    let mut c = SimCluster::new(&[0, 1, 2], Limits::default());
    c.set_link(0, 2, false);
    let mut s = Session::new();
    c.put(0, b"k", b"v", &mut s);
    c.deliver_all();
    assert!(matches!(c.get(2, b"k", &mut s), ReadOutcome::Found { .. }));
    assert_eq!(
        c.nodes[&2].seen().get(0),
        1,
        "watermark advances through the relay"
    );
}

#[test]
fn a_pushed_write_is_relayed_and_a_pulled_one_is_not() {
    let mut a = Replica::new(0, Limits::default());
    let (_, _) = put(&mut a, b"k", b"v", 100);
    let wall = 200;
    // B is linked to A and C.
    let linked = || {
        let mut b = Replica::new(1, Limits::default());
        b.set_connected(0, true);
        b.set_connected(2, true);
        b
    };
    // Pushed by A: B relays it to C (not back to A).
    let mut b = linked();
    let entry = a.entry(b"k").cloned().expect("A holds k");
    let st = b.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry,
            dots: vec![Dot::new(0, 1)],
            from: Some(0),
            relay: true,
        }],
        wall,
    );
    let relays = b.commit(st);
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].targets, vec![2]);
    // Pulled from A in a round: stored and logged, but not relayed; C pulls it from
    // B's log at its own round.
    let mut b = linked();
    let resp = a.answer_sync(1, &b.sync_request());
    let ops: Vec<Op> = resp.items.into_iter().map(|i| i.into_op(0)).collect();
    assert_eq!(ops.len(), 1);
    let st = b.stage(ops, wall);
    assert!(b.commit(st).is_empty(), "a pulled entry is not relayed");
    assert!(b.entry(b"k").is_some());
    assert_eq!(b.seen().get(0), 1);
    let c = Replica::new(2, Limits::default());
    let resp = b.answer_sync(2, &c.sync_request());
    assert_eq!(resp.items.len(), 1, "C gets it from B's log");
}

#[test]
fn fast_path_moves_only_the_missed_writes() {
    let mut c = SimCluster::new(&[0, 1, 2], Limits::default());
    let mut s = Session::new();
    for i in 0..2_000u32 {
        c.put(0, format!("k{i}").as_bytes(), b"v", &mut s);
    }
    c.deliver_all();
    c.set_link(2, 0, false);
    c.set_link(2, 1, false);
    for i in 0..50u32 {
        c.put(1, format!("k{i}").as_bytes(), b"w", &mut s);
    }
    c.deliver_all();
    c.set_link(2, 1, true);
    c.synced_items = 0;
    c.anti_entropy(2, 1);
    assert_eq!(c.synced_items, 50, "exactly the changed entries are sent");
    c.set_link(2, 0, true);
    c.settle();
    assert!(c.converged());
}

#[test]
fn trimmed_log_falls_back_to_the_tree_walk() {
    let limits = Limits {
        max_log: 10,
        ..Limits::default()
    };
    let mut c = SimCluster::new(&[0, 1], limits);
    c.set_link(0, 1, false);
    let mut s = Session::new();
    for i in 0..100u32 {
        c.put(0, format!("k{i}").as_bytes(), b"v", &mut s);
    }
    c.trim_all();
    assert!(
        c.nodes[&0].log_len() <= 10,
        "log bounded while a member is away"
    );
    assert!(c.nodes[&0].floor().get(0) >= 90);
    c.set_link(0, 1, true);
    c.anti_entropy(1, 0);
    assert!(c.converged());
    assert_eq!(c.nodes[&1].seen().get(0), 100);
    // Now every member holds everything: the logs may be emptied.
    c.anti_entropy(0, 1);
    c.trim_all();
    assert_eq!(c.nodes[&0].log_len(), 0);
    assert_eq!(c.nodes[&1].log_len(), 0);
}

#[test]
fn tombstones_are_dropped_only_when_everyone_holds_them_and_never_resurrect() {
    let mut c = SimCluster::new(&[0, 1, 2], Limits::default());
    let mut s = Session::new();
    c.put(0, b"k", b"v", &mut s);
    c.deliver_all();
    let stale = c.nodes[&2].entry(b"k").unwrap().clone();
    let relays = delete(c.nodes.get_mut(&0).unwrap(), b"k", 5_000_000);
    assert_eq!(relays.len(), 1);
    // Node 2 is cut off before it hears of the delete.
    c.set_link(0, 2, false);
    c.set_link(1, 2, false);
    c.settle();
    c.trim_all();
    assert!(
        c.nodes[&0].entry(b"k").is_some(),
        "2 has not acknowledged: keep it"
    );
    c.set_link(0, 2, true);
    c.set_link(1, 2, true);
    c.settle();
    c.trim_all();
    c.settle();
    for id in [0, 1, 2] {
        assert!(c.nodes[&id].entry(b"k").is_none(), "dropped on {id}");
    }
    // A client whose dependency is the (dropped) delete is satisfied, not ERR_DEP.
    let mut s2 = Session::new();
    let del_version = Version {
        ts: 5_000_000,
        dot: Dot::new(0, 2),
    };
    s2.wrote(b"k", del_version);
    assert_eq!(
        c.get(1, b"k", &mut s2),
        ReadOutcome::Missing { version: None }
    );
    // A stale echo of the old value does not bring the key back.
    let mut st = c.nodes.get_mut(&1).unwrap().stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry: stale,
            dots: vec![],
            from: Some(2),
            relay: true,
        }],
        6_000_000,
    );
    assert_eq!(st.outcomes.remove(0), Outcome::Applied { changed: false });
}

#[test]
fn a_put_after_a_trim_in_the_same_batch_is_not_lost() {
    let mut r = Replica::new(0, Limits::default());
    let mut st = r.stage(
        vec![Op::Put {
            key: b"k".to_vec(),
            value: None,
            seen_ts: 0,
            dep: None,
            ttl: None,
        }],
        10,
    );
    r.commit(std::mem::take(&mut st));
    // No other member: the tombstone may be dropped, but a put follows in the batch.
    let st = r.stage(
        vec![
            Op::Trim,
            Op::Put {
                key: b"k".to_vec(),
                value: Some(b"back".to_vec()),
                seen_ts: 0,
                dep: None,
                ttl: None,
            },
        ],
        20,
    );
    assert!(st.removes.is_empty());
    r.commit(st);
    assert!(
        matches!(r.read(b"k", None, 0, 1_000), ReadOutcome::Found { value, .. } if value == b"back")
    );
}

#[derive(Clone, Debug)]
enum Step {
    Put { client: usize, server: u64, key: u8 },
    Get { client: usize, server: u64, key: u8 },
    Link { a: u64, b: u64, up: bool },
    Deliver(usize),
    DropAll,
    Sync { a: u64, b: u64 },
    Trim,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, 0u64..4, 0u8..5).prop_map(|(client, server, key)| Step::Put { client, server, key }),
        4 => (0usize..3, 0u64..4, 0u8..5).prop_map(|(client, server, key)| Step::Get { client, server, key }),
        2 => (0u64..4, 0u64..4, any::<bool>()).prop_map(|(a, b, up)| Step::Link { a, b, up }),
        4 => (0usize..8).prop_map(Step::Deliver),
        1 => Just(Step::DropAll),
        2 => (0u64..4, 0u64..4).prop_map(|(a, b)| Step::Sync { a, b }),
        1 => Just(Step::Trim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random schedules of puts, gets, partitions, reorderings, lost pushes,
    /// anti-entropy and trimming: session guarantees hold at every read, dots are never
    /// reused, and once every link heals the stores converge.
    #[test]
    fn random_schedules_keep_sessions_and_converge(steps in proptest::collection::vec(step(), 1..120)) {
        let mut c = SimCluster::new(&[0, 1, 2, 3], Limits { max_log: 6, ..Limits::default() });
        let mut sessions = vec![Session::new(); 3];
        // Per client per key: the version it last wrote or read.
        let mut last: Vec<BTreeMap<u8, Version>> = vec![BTreeMap::new(); 3];
        let mut dots: BTreeMap<Dot, (u8, u32)> = BTreeMap::new();
        let mut versions: BTreeMap<u8, Vec<Version>> = BTreeMap::new();
        let mut n = 0u32;
        for s in steps {
            match s {
                Step::Put { client, server, key } => {
                    n += 1;
                    let v = c.put(server, &[key], &n.to_be_bytes(), &mut sessions[client]);
                    prop_assert!(dots.insert(v.dot, (key, n)).is_none(), "dot {} reused", v.dot);
                    versions.entry(key).or_default().push(v);
                    if let Some(prev) = last[client].get(&key) {
                        prop_assert!(v > *prev, "a causally later write must win");
                    }
                    last[client].insert(key, v);
                }
                Step::Get { client, server, key } => {
                    match c.get(server, &[key], &mut sessions[client]) {
                        ReadOutcome::Found { version, .. } => {
                            if let Some(prev) = last[client].get(&key) {
                                prop_assert!(version >= *prev, "read older than session dependency");
                            }
                            last[client].insert(key, version);
                        }
                        ReadOutcome::Missing { .. } => {
                            prop_assert!(!last[client].contains_key(&key), "ERR_KEY despite a dependency");
                        }
                        ReadOutcome::Dep => {
                            prop_assert!(last[client].contains_key(&key), "ERR_DEP without a dependency");
                        }
                    }
                }
                Step::Link { a, b, up } => c.set_link(a, b, up),
                Step::Deliver(i) => { c.deliver_one(i); }
                Step::DropAll => c.drop_all(),
                Step::Sync { a, b } => c.anti_entropy(a, b),
                Step::Trim => c.trim_all(),
            }
        }
        c.settle();
        prop_assert!(c.converged(), "components did not converge");
        for a in 0..4 { for b in 0..4 { if a < b { c.set_link(a, b, true); } } }
        c.settle();
        prop_assert!(c.converged(), "full mesh did not converge");
        // Every key holds the LWW maximum of all writes to it, on every server.
        for id in 0..4u64 {
            for (k, v) in c.nodes[&id].dump() {
                let e = c.nodes[&id].entry(&k).unwrap();
                prop_assert_eq!(Some(e.version), versions.get(&k[0]).and_then(|vs| vs.iter().max().copied()));
                prop_assert_eq!(&v, &dots[&e.version.dot].1.to_be_bytes().to_vec());
            }
        }
        c.trim_all();
        c.settle();
        prop_assert!(c.converged());
    }
}

/// The write-side session check: a put whose dependency this replica lacks is refused
/// and writes nothing; once the dependency arrives the same put goes through, after it.
#[test]
fn a_put_behind_its_dependency_is_refused_and_writes_nothing() {
    let mut a = Replica::new(1, Limits::default());
    let mut b = Replica::new(2, Limits::default());
    let (v, _) = put(&mut a, b"k", b"from-a", 100);
    let attempt = |r: &mut Replica| {
        let st = r.stage(
            vec![Op::Put {
                key: b"k".to_vec(),
                value: Some(b"from-b".to_vec()),
                seen_ts: v.ts,
                dep: Some(v.dot),
                ttl: None,
            }],
            50,
        );
        let out = st.outcomes[0].clone();
        let empty = st.is_empty();
        r.commit(st);
        (out, empty)
    };
    let (out, empty) = attempt(&mut b);
    assert_eq!(out, Outcome::Dep);
    assert!(empty, "a refused put stages nothing");
    assert_eq!(b.counter, 0, "no dot handed out");
    assert_eq!(
        b.read(b"k", None, 0, 50),
        ReadOutcome::Missing { version: None }
    );
    // The dependency arrives; the put now supersedes it.
    let entry = a.entry(b"k").cloned().unwrap();
    let st = b.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry,
            dots: vec![v.dot],
            from: Some(1),
            relay: true,
        }],
        60,
    );
    b.commit(st);
    let (out, _) = attempt(&mut b);
    let Outcome::Put { version, previous } = out else {
        panic!("{out:?}")
    };
    assert!(version.ts > v.ts);
    assert_eq!(previous.map(|p| p.version), Some(v));
}

/// A TTL write reads as present before its expiry time and absent from it on, on the
/// writer and on a replica alike; each turns it into a tombstone of the same version
/// on its own (nothing relayed, no dot), the expiry index follows, a write made before
/// the expiry with no TTL is never expired, and a restored replica keeps the expiry.
#[test]
fn a_ttl_write_expires_everywhere_at_its_time_without_a_new_write() {
    let mut a = Replica::with_rid(1, 11, Limits::default());
    let mut b = Replica::with_rid(2, 22, Limits::default());
    let mut st = a.stage(
        vec![Op::Put {
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: Some(1_000),
        }],
        10_000,
    );
    let Outcome::Put { version, .. } = st.outcomes.remove(0) else {
        panic!("not a put")
    };
    let at = version.ts + 1_000;
    a.commit(st);
    let entry = a.entry(b"k").cloned().expect("written");
    assert_eq!(entry.expires, Some(at));
    let st = b.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry,
            dots: vec![version.dot],
            from: Some(1),
            relay: true,
        }],
        10_000,
    );
    b.commit(st);
    for r in [&mut a, &mut b] {
        assert_eq!(r.next_expiry(), Some(at));
        assert!(matches!(
            r.read(b"k", None, 0, at - 1),
            ReadOutcome::Found { .. }
        ));
        assert_eq!(r.scan(b"", None, 10, false, at - 1).len(), 1);
        assert_eq!(
            r.read(b"k", Some(version.dot), 0, at),
            ReadOutcome::Missing {
                version: Some(version)
            }
        );
        assert!(r.scan(b"", None, 10, false, at).is_empty());
        assert!(r.dump_at(at).is_empty());
        // Not due yet: nothing happens.
        assert!(r.expired_keys(at - 1, 10).is_empty());
        let st = r.stage(vec![Op::Expire { key: b"k".to_vec() }], at - 1);
        assert!(st.is_empty());
        // Due: a tombstone of the same version, no log record, nothing relayed.
        assert_eq!(r.expired_keys(at, 10), vec![b"k".to_vec()]);
        let counter = r.meta().counter;
        let st = r.stage(vec![Op::Expire { key: b"k".to_vec() }], at);
        assert!(st.log.is_empty() && st.meta.counter == counter);
        assert!(r.commit(st).is_empty());
        let e = r.entry(b"k").expect("tombstone");
        assert_eq!((e.value.as_ref(), e.version), (None, version));
        assert_eq!(r.next_expiry(), None);
    }
    assert_eq!(a.root(), b.root(), "both expired it the same way");
    // A write without a TTL replaces the expiring one: it never expires.
    let (v2, _) = put(&mut a, b"j", b"1", 20_000);
    let mut st = a.stage(
        vec![Op::Put {
            key: b"j".to_vec(),
            value: Some(b"2".to_vec()),
            seen_ts: v2.ts,
            dep: None,
            ttl: Some(5),
        }],
        20_001,
    );
    let Outcome::Put { previous, .. } = st.outcomes.remove(0) else {
        panic!("not a put")
    };
    assert_eq!(previous.and_then(|p| p.value), Some(b"1".to_vec()));
    a.commit(st);
    let (_, _) = put(&mut a, b"j", b"3", 20_002);
    assert_eq!(a.next_expiry(), None);
    assert!(matches!(
        a.read(b"j", None, 0, 99_000_000),
        ReadOutcome::Found { .. }
    ));
    // Restored from its entries, a replica knows the expiry times again.
    let mut c = Replica::with_rid(3, 33, Limits::default());
    let mut st = c.stage(
        vec![Op::Put {
            key: b"t".to_vec(),
            value: Some(b"v".to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: Some(7),
        }],
        50,
    );
    let _ = st.outcomes.remove(0);
    c.commit(st);
    let entries: Vec<_> = c.snapshot().1;
    let restored = Replica::restore(3, 34, Limits::default(), c.meta(), entries, Vec::new(), 50);
    assert_eq!(restored.next_expiry(), c.next_expiry());
    assert!(restored.next_expiry().is_some());
}

/// Several writes to one key in one batch are several changes, in order (watchers see
/// each); a merge that only grows a context is none; an incoming newer write is one.
#[test]
fn a_batch_lists_every_change_in_order() {
    let mut r = Replica::with_rid(1, 11, Limits::default());
    let ops = ["a", "b", "c"]
        .iter()
        .map(|v| Op::Put {
            key: b"k".to_vec(),
            value: Some(v.as_bytes().to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: None,
        })
        .chain([Op::Put {
            key: b"k".to_vec(),
            value: None,
            seen_ts: 0,
            dep: None,
            ttl: None,
        }])
        .collect();
    let st = r.stage(ops, 100);
    let seen: Vec<Option<&[u8]>> = st.changes.iter().map(|c| c.value.as_deref()).collect();
    assert_eq!(seen, [Some(&b"a"[..]), Some(b"b"), Some(b"c"), None]);
    assert!(st.changes.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(st.writes.len(), 1);
    r.commit(st);
    let cur = r.entry(b"k").cloned().expect("tombstone");
    // The same entry again, with a larger context: no change.
    let mut echo = cur.clone();
    echo.ctx.raise(99, 1);
    let st = r.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry: echo,
            dots: vec![],
            from: Some(2),
            relay: true,
        }],
        200,
    );
    assert!(st.changes.is_empty() && !st.writes.is_empty());
    r.commit(st);
    // A newer write from a peer: one change.
    let newer = Entry::write(
        Some(b"z".to_vec()),
        Version {
            ts: cur.version.ts + 10,
            dot: Dot::new(22, 1),
        },
        &cur.ctx,
    );
    let st = r.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry: newer,
            dots: vec![Dot::new(22, 1)],
            from: Some(2),
            relay: true,
        }],
        300,
    );
    assert_eq!(st.changes.len(), 1);
    assert_eq!(st.changes[0].value.as_deref(), Some(&b"z"[..]));
}

#[test]
fn a_logged_key_that_is_gone_sends_the_requester_to_the_walk() {
    // A record whose key is no longer held (its tombstone was collected while the
    // record stayed) cannot be served as a suffix: the requester would never get
    // its dot and never raise its watermark past it.
    let meta = |gc_ts| Meta {
        counter: 2,
        hlc: 10,
        seen: [(0, 2)].into_iter().collect(),
        floor: VersionVector::new(),
        members: [1].into_iter().collect(),
        gc_ts,
    };
    let a = Entry::write(
        Some(b"1".to_vec()),
        Version {
            ts: 5,
            dot: Dot::new(0, 1),
        },
        &VersionVector::new(),
    );
    let ask = SyncReq {
        seen: VersionVector::new(),
        root: 0,
    };
    let log = vec![
        (Dot::new(0, 1), b"a".to_vec()),
        (Dot::new(0, 2), b"k".to_vec()),
    ];
    let mut r = Replica::restore(
        0,
        0,
        Limits::default(),
        meta(0),
        [(b"a".to_vec(), a.clone())],
        log,
        100,
    );
    let resp = r.answer_sync(1, &ask);
    assert!(
        resp.fallback,
        "the gone key's record must send the requester to the walk"
    );
    assert_eq!(resp.items.len(), 1);
    // With every logged key held, the log serves the suffix.
    let log = vec![(Dot::new(0, 1), b"a".to_vec())];
    let mut meta1 = meta(0);
    meta1.seen = [(0, 1)].into_iter().collect();
    let mut r = Replica::restore(
        0,
        0,
        Limits::default(),
        meta1,
        [(b"a".to_vec(), a)],
        log,
        100,
    );
    assert!(!r.answer_sync(1, &ask).fallback);
}

#[test]
fn trimming_raises_the_floor_so_a_member_that_went_back_walks() {
    let mut c = SimCluster::new(&[0, 1], Limits::default());
    let mut s = Session::new();
    for k in [b"a", b"b", b"c"] {
        c.put(0, k, b"v", &mut s);
    }
    c.deliver_all();
    // 0 learns that 1 holds everything, then trims its log.
    c.anti_entropy(1, 0);
    c.trim(0);
    assert_eq!(c.nodes[&0].log_len(), 0);
    assert_eq!(
        c.nodes[&0].floor().get(0),
        3,
        "the trimmed range is below the floor"
    );
    // A member that went back (a restored disk) asks from below: the walk, not a
    // suffix with holes.
    let ask = SyncReq {
        seen: VersionVector::new(),
        root: 0,
    };
    let r0 = c.nodes.get_mut(&0).unwrap();
    assert!(r0.answer_sync(1, &ask).fallback);
}

#[test]
fn a_new_incarnation_of_a_peer_must_report_again_before_tombstones_go() {
    let mut r = Replica::new(0, Limits::default());
    r.add_member(1);
    r.set_peer_rid(1, 100);
    put(&mut r, b"k", b"v", 1_000);
    delete(&mut r, b"k", 2_000);
    let all = r.seen().clone();
    r.note_peer_seen(1, &all);
    // Server 1 restarts (a wiped or restored disk): what it reported may be gone.
    r.set_peer_rid(1, 200);
    assert_eq!(r.peers()[&1].seen, None);
    let st = r.stage(vec![Op::Trim], 3_000);
    r.commit(st);
    assert!(
        r.entry(b"k").is_some(),
        "kept until the new incarnation reports"
    );
    // The same incarnation saying hello again changes nothing.
    r.note_peer_seen(1, &all);
    r.set_peer_rid(1, 200);
    let st = r.stage(vec![Op::Trim], 4_000);
    r.commit(st);
    assert!(r.entry(b"k").is_none(), "collected once it reported");
}

#[test]
fn a_write_to_a_collected_key_is_stamped_after_the_delete_across_restarts() {
    let hour = 3_600_000_000u64;
    let wall = 10 * hour;
    let mut r = Replica::new(0, Limits::default());
    r.add_member(1);
    // A delete from a server an hour ahead (beyond the offset bound: it does not move
    // our clock), then collected: every member holds it.
    let del = Version {
        ts: wall + hour,
        dot: Dot::new(1, 1),
    };
    let mut st = r.stage(
        vec![Op::Apply {
            key: b"k".to_vec(),
            entry: Entry::write(None, del, &VersionVector::new()),
            dots: vec![del.dot],
            from: Some(1),
            relay: true,
        }],
        wall,
    );
    st.outcomes.clear();
    r.commit(st);
    let all = r.seen().clone();
    r.note_peer_seen(1, &all);
    let st = r.stage(vec![Op::Trim], wall + 1);
    r.commit(st);
    assert!(r.entry(b"k").is_none(), "collected");
    assert!(r.clock() < del.ts, "the clock was not dragged");
    // A new write to the key still follows the delete...
    let (v, _) = put(&mut r, b"k", b"again", wall + 2);
    assert!(v > del, "{v:?} must follow {del:?}");
    // ...also after a restart, when the tombstone is not there to say so.
    let (_, entries) = r.snapshot();
    let log: Vec<(Dot, Vec<u8>)> = Vec::new();
    let mut r2 = Replica::restore(0, 7, Limits::default(), r.meta(), entries, log, wall + 3);
    let (v2, _) = put(&mut r2, b"other", b"x", wall + 4);
    assert!(v2 > del, "{v2:?} must follow {del:?}");
}
