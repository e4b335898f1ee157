use super::schedule::{self, Plant};
use super::*;
use crate::version::{Dot, Version, VersionVector};
use proptest::prelude::*;

fn b(counter: u64, node: NodeId) -> Ballot {
    Ballot {
        counter,
        node,
        rid: 7,
    }
}

fn entry(v: &str, ts: u64) -> Entry {
    Entry::write(
        Some(v.as_bytes().to_vec()),
        Version {
            ts,
            dot: Dot::new(1, ts),
        },
        &VersionVector::new(),
    )
}

fn val(v: &str, ts: u64) -> Value {
    Value {
        entry: entry(v, ts),
        recent: Vec::new(),
    }
}

fn prepare(ballot: Ballot) -> PaxosReq {
    PaxosReq::Prepare {
        key: b"k".to_vec(),
        ballot,
    }
}

fn accept(ballot: Ballot, e: Option<Value>) -> PaxosReq {
    PaxosReq::Accept {
        key: b"k".to_vec(),
        ballot,
        value: e,
    }
}

#[test]
fn acceptor_promises_and_rejects_lower_ballots() {
    let s = AcceptorState::default();
    let (next, resp) = accept_step(&s, &prepare(b(2, 1)));
    let s = next.expect("a promise changes the state");
    assert_eq!(s.promised, b(2, 1));
    assert!(matches!(resp, PaxosResp::Promise { accepted, .. } if accepted == Ballot::ZERO));
    // A lower prepare and a lower accept are rejected with the promise.
    for req in [prepare(b(1, 9)), accept(b(1, 9), None)] {
        let (next, resp) = accept_step(&s, &req);
        assert!(next.is_none());
        assert_eq!(
            resp,
            PaxosResp::Reject {
                ballot: b(1, 9),
                promised: b(2, 1)
            }
        );
    }
    // The same prepare again (a duplicate) is answered without a change.
    let (next, resp) = accept_step(&s, &prepare(b(2, 1)));
    assert!(next.is_none());
    assert!(matches!(resp, PaxosResp::Promise { .. }));
    // An accept at the promise is taken; a duplicate changes nothing.
    let (next, _) = accept_step(&s, &accept(b(2, 1), Some(val("a", 5))));
    let s = next.expect("accepted");
    assert_eq!(s.accepted, b(2, 1));
    let (next, resp) = accept_step(&s, &accept(b(2, 1), Some(val("a", 5))));
    assert!(next.is_none());
    assert_eq!(resp, PaxosResp::Accepted { ballot: b(2, 1) });
    // A later prepare reports what was accepted.
    let (_, resp) = accept_step(&s, &prepare(b(3, 2)));
    assert_eq!(
        resp,
        PaxosResp::Promise {
            ballot: b(3, 2),
            accepted: b(2, 1),
            value: Some(val("a", 5))
        }
    );
}

#[test]
fn the_broken_acceptor_accepts_below_its_promise() {
    let s = AcceptorState {
        promised: b(5, 1),
        ..Default::default()
    };
    let (next, resp) = accept_step_with(
        &s,
        &accept(b(1, 2), None),
        Some(AcceptorFault::IgnorePromise),
    );
    assert!(next.is_some());
    assert!(matches!(resp, PaxosResp::Accepted { .. }));
}

#[test]
fn acceptor_sets_are_odd_and_survive_any_even_split() {
    for n in 1..=7u64 {
        let servers: BTreeSet<NodeId> = (1..=n).collect();
        for k in 0..200 {
            let key = format!("key{k}").into_bytes();
            let set = acceptors(&key, &servers);
            assert_eq!(set.len() % 2, 1, "n={n}");
            assert_eq!(set, acceptors(&key, &servers), "deterministic");
            assert!(set.iter().all(|s| servers.contains(s)));
            if n == 4 {
                // Every 2|2 split leaves one side with a majority of the key's acceptors.
                for a in 1..=4u64 {
                    for c in (a + 1)..=4 {
                        let side = set.iter().filter(|s| **s == a || **s == c).count();
                        let other = set.len() - side;
                        assert!(side >= majority(set.len()) || other >= majority(set.len()));
                    }
                }
            }
        }
    }
    // Spread: with 4 servers every server is left out of some keys' sets.
    let servers: BTreeSet<NodeId> = (1..=4).collect();
    let mut left_out: BTreeSet<NodeId> = BTreeSet::new();
    for k in 0..100 {
        let set = acceptors(format!("k{k}").as_bytes(), &servers);
        left_out.extend(servers.iter().filter(|s| !set.contains(s)));
    }
    assert_eq!(left_out.len(), 4);
}

/// Drive one proposer against in-memory acceptors with no faults.
fn run_op(states: &mut [AcceptorState], change: Change, ballot: Ballot, ts: u64) -> Next {
    let set: Vec<NodeId> = (1..=states.len() as NodeId).collect();
    let mut p = Proposer::new(b"k".to_vec(), change, ballot, set);
    let mut next = p.start();
    loop {
        match next {
            Next::Send(reqs) => {
                let mut out = Next::Wait;
                for (to, req) in reqs {
                    let s = &mut states[to as usize - 1];
                    let (n, resp) = accept_step(s, &req);
                    if let Some(n) = n {
                        *s = n;
                    }
                    let r = p.on_response(to, resp);
                    if !matches!(r, Next::Wait) {
                        out = r;
                    }
                }
                next = out;
            }
            Next::Stamp { current } => {
                let value = p.write_value().flatten();
                let ctx = current.map(|e| e.ctx).unwrap_or_default();
                let v = Version {
                    ts,
                    dot: Dot::new(1, ts),
                };
                next = p.propose(Entry::write(value, v, &ctx));
            }
            other => return other,
        }
    }
}

#[test]
fn reads_writes_and_preconditions() {
    let mut st = vec![AcceptorState::default(); 3];
    // A read of a fresh register is one round trip: nothing accepted anywhere.
    match run_op(&mut st, Change::Read, b(1, 1), 1) {
        Next::Done { current, .. } => assert_eq!(current, None),
        other => panic!("{other:?}"),
    }
    assert!(st.iter().all(|s| s.accepted == Ballot::ZERO));
    let w = |v: &str, cond| Change::Write {
        value: Some(v.as_bytes().to_vec()),
        cond,
    };
    let Next::Done {
        previous, current, ..
    } = run_op(&mut st, w("a", Cond::Absent), b(2, 1), 10)
    else {
        panic!()
    };
    assert_eq!(previous, None);
    let a = current.expect("written");
    // A second create fails its precondition and reports the current value.
    match run_op(&mut st, w("b", Cond::Absent), b(3, 2), 11) {
        Next::Done {
            applied, current, ..
        } => {
            assert!(!applied);
            assert_eq!(current.as_ref(), Some(&a));
        }
        other => panic!("{other:?}"),
    }
    // If-Match on the current version succeeds, on an old one fails.
    let Next::Done {
        applied, current, ..
    } = run_op(&mut st, w("c", Cond::Version(a.version)), b(4, 3), 12)
    else {
        panic!()
    };
    assert!(applied);
    let c = current.expect("written");
    assert!(c.version > a.version);
    let Next::Done { applied, .. } = run_op(&mut st, w("d", Cond::Version(a.version)), b(5, 1), 13)
    else {
        panic!()
    };
    assert!(!applied);
    // After a full round everyone holds c, so a read is one round trip.
    match run_op(&mut st, Change::Read, b(6, 2), 14) {
        Next::Done { current, .. } => assert_eq!(current, Some(c)),
        other => panic!("{other:?}"),
    }
    // ...and it peeked: no acceptor promised anything new.
    assert!(st.iter().all(|s| s.promised == b(5, 1)));
    // A write with a stale ballot is told to retry above the promise.
    match run_op(&mut st, w("e", Cond::Always), b(1, 3), 15) {
        Next::Retry { above } => assert_eq!(above, b(5, 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_partially_accepted_value_is_completed_by_the_next_read() {
    // Acceptor 1 accepted "x" at ballot 2 (the proposer died); 2 and 3 hold nothing.
    let x = val("x", 3);
    let mut st = vec![AcceptorState::default(); 3];
    st[0] = AcceptorState {
        promised: b(2, 1),
        accepted: b(2, 1),
        value: Some(x.clone()),
    };
    // A read whose majority includes acceptor 1 adopts and completes x.
    let set = vec![1, 2, 3];
    let mut p = Proposer::new(b"k".to_vec(), Change::Read, b(3, 2), set);
    // Its peeks disagree (1 holds x, 2 nothing): a full round follows.
    let Next::Send(peeks) = p.start() else {
        panic!()
    };
    assert!(matches!(peeks[0].1, PaxosReq::Peek { .. }));
    let peek = |s: &AcceptorState| accept_step(s, &peeks[0].1).1;
    assert_eq!(p.on_response(1, peek(&st[0])), Next::Wait);
    let Next::Send(prepares) = p.on_response(2, peek(&st[1])) else {
        panic!("disagreeing peeks must lead to a full round")
    };
    assert!(prepares
        .iter()
        .all(|(_, r)| matches!(r, PaxosReq::Prepare { .. })));
    let promise = |s: &mut AcceptorState| {
        let (n, r) = accept_step(s, &prepare(b(3, 2)));
        if let Some(n) = n {
            *s = n;
        }
        r
    };
    assert_eq!(p.on_response(1, promise(&mut st[0])), Next::Wait);
    match p.on_response(2, promise(&mut st[1])) {
        Next::Send(reqs) => {
            assert!(reqs.iter().all(
                |(_, r)| matches!(r, PaxosReq::Accept { value, .. } if value.as_ref() == Some(&x))
            ))
        }
        other => panic!("a read of an unchosen value must write it back: {other:?}"),
    }
}

/// The schedule of seed 0 before retries carried their proposals: a write's accept
/// reached one acceptor and lost; the retry must not write the value again.
#[test]
fn a_retried_write_finishes_its_own_earlier_proposal() {
    let mut st = vec![AcceptorState::default(); 3];
    let w = Change::Write {
        value: Some(b"v".to_vec()),
        cond: Cond::Always,
    };
    let mut p = Proposer::new(b"k".to_vec(), w, b(1, 1), vec![1, 2, 3]);
    let step = |s: &mut AcceptorState, req: &PaxosReq| {
        let (n, r) = accept_step(s, req);
        if let Some(n) = n {
            *s = n;
        }
        r
    };
    let Next::Send(reqs) = p.start() else {
        panic!()
    };
    let _ = p.on_response(1, step(&mut st[0], &reqs[0].1));
    let Next::Stamp { current: None } = p.on_response(2, step(&mut st[1], &reqs[1].1)) else {
        panic!()
    };
    let e = entry("v", 10);
    let Next::Send(accepts) = p.propose(e.clone()) else {
        panic!()
    };
    // Only acceptor 1 takes it; a competing prepare at ballot 5 reaches 2 and 3.
    assert!(matches!(
        step(&mut st[0], &accepts[0].1),
        PaxosResp::Accepted { .. }
    ));
    let _ = step(&mut st[1], &prepare(b(5, 2)));
    let _ = step(&mut st[2], &prepare(b(5, 2)));
    match p.on_response(2, step(&mut st[1], &accepts[1].1)) {
        Next::Retry { above } => assert_eq!(above, b(5, 2)),
        other => panic!("{other:?}"),
    }
    // The retry's majority includes acceptor 1, which holds our value: finish it,
    // reporting the value it replaced (none), not our own value.
    let mut r = p.retry(b(6, 1));
    let Next::Send(reqs) = r.start() else {
        panic!()
    };
    let _ = r.on_response(1, step(&mut st[0], &reqs[0].1));
    let Next::Send(accepts) = r.on_response(2, step(&mut st[1], &reqs[1].1)) else {
        panic!("expected the accept of our earlier value")
    };
    assert!(accepts
        .iter()
        .all(|(_, q)| matches!(q, PaxosReq::Accept { value: Some(v), .. } if v.entry == e)));
    let _ = r.on_response(1, step(&mut st[0], &accepts[0].1));
    match r.on_response(2, step(&mut st[1], &accepts[1].1)) {
        Next::Done {
            previous, current, ..
        } => {
            assert_eq!(previous, None);
            assert_eq!(current, Some(e));
        }
        other => panic!("{other:?}"),
    }
}

/// A retry that finds its basis beyond the history a value carries cannot tell whether
/// its earlier proposal is in it: indeterminate, never a second write.
#[test]
fn a_retry_that_cannot_tell_is_indeterminate() {
    let w = Change::Write {
        value: Some(b"v".to_vec()),
        cond: Cond::Always,
    };
    let mut p = Proposer::new(b"k".to_vec(), w, b(1, 1), vec![1, 2, 3]);
    let promise = |ballot, accepted, value| PaxosResp::Promise {
        ballot,
        accepted,
        value,
    };
    let _ = p.start();
    let _ = p.on_response(1, promise(b(1, 1), Ballot::ZERO, None));
    let _ = p.on_response(2, promise(b(1, 1), Ballot::ZERO, None));
    let _ = p.propose(entry("v", 10));
    let _ = p.on_response(
        1,
        PaxosResp::Reject {
            ballot: b(1, 1),
            promised: b(9, 2),
        },
    );
    let mut r = p.retry(b(10, 1));
    let _ = r.start();
    // Nine writes by others since: our basis (the empty register) is out of reach.
    let mut two_past: Option<Value> = None;
    for i in 0..(RECENT as u64 + 1) {
        two_past = Some(Value::after(
            two_past.as_ref(),
            entry(&format!("z{i}"), 20 + i),
        ));
    }
    let two_past = two_past.expect("built");
    let _ = r.on_response(2, promise(b(10, 1), b(9, 2), Some(two_past.clone())));
    assert_eq!(
        r.on_response(3, promise(b(10, 1), b(9, 2), Some(two_past))),
        Next::Indeterminate
    );
}

#[test]
fn answers_from_strangers_and_old_ballots_are_ignored() {
    let mut p = Proposer::new(b"k".to_vec(), Change::Read, b(2, 1), vec![1, 2, 3]);
    let _ = p.start();
    let promise = |ballot| PaxosResp::Peeked {
        ballot,
        accepted: Ballot::ZERO,
        value: None,
    };
    assert_eq!(p.on_response(9, promise(b(2, 1))), Next::Wait);
    assert_eq!(p.on_response(1, promise(b(1, 1))), Next::Wait);
    assert_eq!(p.on_response(1, promise(b(2, 1))), Next::Wait);
    // A duplicate of the same promise does not count twice.
    assert_eq!(p.on_response(1, promise(b(2, 1))), Next::Wait);
    assert!(matches!(
        p.on_response(2, promise(b(2, 1))),
        Next::Done { .. }
    ));
}

proptest! {
    /// Acceptor laws over any sequence of requests: the promise never goes down, the
    /// accepted ballot never exceeds the promise, and nothing below the promise at the
    /// time is ever accepted.
    #[test]
    fn acceptor_laws(reqs in proptest::collection::vec((any::<bool>(), 0u64..6, 1u64..4, 0u8..3), 1..40)) {
        let mut s = AcceptorState::default();
        for (is_prepare, c, node, v) in reqs {
            let ballot = b(c, node);
            let req = if is_prepare {
                prepare(ballot)
            } else {
                accept(ballot, Some(val(&format!("v{v}"), c)))
            };
            let before = s.clone();
            let (next, resp) = accept_step(&s, &req);
            if let Some(n) = next {
                s = n;
            }
            prop_assert!(s.promised >= before.promised);
            prop_assert!(s.accepted <= s.promised);
            if let PaxosResp::Accepted { ballot } = resp {
                prop_assert!(ballot >= before.promised);
            }
            if let PaxosResp::Reject { ballot, promised } = resp {
                prop_assert!(ballot < promised);
                prop_assert_eq!(&s, &before);
            }
        }
    }
}

#[test]
fn seeded_schedules_are_linearizable() {
    let mut faults = schedule::Faults::default();
    let mut completed = 0;
    for seed in 0..300 {
        let r = schedule::run(schedule::Config::for_seed(seed));
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?} ({:?})",
            r.violations,
            r.config
        );
        completed += r.completed;
        faults.acceptor_crash += r.faults.acceptor_crash;
        faults.loss += r.faults.loss;
        faults.duplicate += r.faults.duplicate;
        faults.partition += r.faults.partition;
        faults.abandoned += r.faults.abandoned;
    }
    assert!(completed > 1000, "{completed}");
    assert!(faults.acceptor_crash > 0 && faults.loss > 0 && faults.duplicate > 0);
    assert!(faults.partition > 0 && faults.abandoned > 0);
}

#[test]
fn a_broken_acceptor_is_caught() {
    for plant in Plant::ALL {
        let caught = (0..3000).find(|seed| {
            let mut c = schedule::Config::for_seed(*seed);
            c.plant = Some(plant);
            !schedule::run(c).violations.is_empty()
        });
        assert!(
            caught.is_some(),
            "{} not caught in 3000 seeds",
            plant.name()
        );
    }
}

/// An expired value is never read straight from the register: the proposer that finds
/// it expired makes its expiry tombstone the register's value first (an accept), so a
/// proposer whose clock is behind cannot read the value once anyone read it gone.
#[test]
fn an_expired_value_is_replaced_by_its_tombstone_through_an_accept() {
    let set = vec![1, 2, 3];
    let mut held = val("x", 10);
    held.entry = held.entry.expiring(Some(50));
    let peeked = |ballot| PaxosResp::Peeked {
        ballot,
        accepted: b(1, 1),
        value: Some(held.clone()),
    };
    // Before the expiry time: the unanimous peek answers the value at once.
    let mut early = Proposer::new(b"k".to_vec(), Change::Read, b(2, 1), set.clone());
    early.set_now(49);
    let _ = early.start();
    let _ = early.on_response(1, peeked(b(2, 1)));
    assert!(matches!(
        early.on_response(2, peeked(b(2, 1))),
        Next::Done {
            current: Some(Entry { value: Some(_), .. }),
            ..
        }
    ));
    // At it: no shortcut; the full round accepts the tombstone, then answers absent.
    let mut late = Proposer::new(b"k".to_vec(), Change::Read, b(2, 1), set.clone());
    late.set_now(50);
    let _ = late.start();
    let _ = late.on_response(1, peeked(b(2, 1)));
    assert!(matches!(
        late.on_response(2, peeked(b(2, 1))),
        Next::Send(_)
    ));
    let promise = PaxosResp::Promise {
        ballot: b(2, 1),
        accepted: b(1, 1),
        value: Some(held.clone()),
    };
    let _ = late.on_response(1, promise.clone());
    let Next::Send(reqs) = late.on_response(2, promise) else {
        panic!("expected the accepts");
    };
    let gone = Value {
        entry: held.entry.expired(),
        recent: held.recent.clone(),
    };
    assert!(reqs
        .iter()
        .all(|(_, r)| *r == accept(b(2, 1), Some(gone.clone()))));
    let _ = late.on_response(1, PaxosResp::Accepted { ballot: b(2, 1) });
    match late.on_response(2, PaxosResp::Accepted { ballot: b(2, 1) }) {
        Next::Done { current, .. } => {
            let e = current.expect("the tombstone");
            assert_eq!((e.value, e.version), (None, held.entry.version));
        }
        other => panic!("expected done, got {other:?}"),
    }
    // A conditional write finds the key absent.
    let w = Change::Write {
        value: Some(b"y".to_vec()),
        cond: Cond::Absent,
    };
    let mut p = Proposer::new(b"k".to_vec(), w, b(3, 1), set);
    p.set_now(60);
    let _ = p.start();
    let promise = PaxosResp::Promise {
        ballot: b(3, 1),
        accepted: b(1, 1),
        value: Some(held.clone()),
    };
    let _ = p.on_response(1, promise.clone());
    match p.on_response(2, promise) {
        Next::Stamp { current } => assert_eq!(current, Some(held.entry.expired())),
        other => panic!("expected a stamp, got {other:?}"),
    }
}
