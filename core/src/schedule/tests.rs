use super::*;
use proptest::prelude::*;

const MS: u64 = 1_000;

fn drain(s: &mut Schedule) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// Node 1 with peers 2 and 3 (it dials both), started at 0.
fn node1() -> Schedule {
    let mut s = Schedule::new(1, Timing::default(), 0);
    for id in [2, 3] {
        s.handle(
            0,
            Input::Peer {
                id,
                addr: true,
                blocked: false,
            },
        );
    }
    s
}

#[test]
fn nothing_is_due_before_start_then_the_lower_id_dials() {
    let mut s = node1();
    s.handle(
        0,
        Input::Peer {
            id: 0,
            addr: true,
            blocked: false,
        },
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), None);
    s.handle(0, Input::Start);
    // Node 0 dials us; we dial 2 and 3.
    assert_eq!(drain(&mut s), vec![Action::Dial(2), Action::Dial(3)]);
    // One attempt at a time per peer.
    s.handle(5 * MS, Input::Tick);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn failed_dials_back_off_from_20_to_500_ms_and_a_refusal_waits_5_s() {
    let mut s = node1();
    s.handle(0, Input::Start);
    drain(&mut s);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        s.handle(
            now,
            Input::DialEnded {
                id: 2,
                linked: false,
                refused: false,
            },
        );
        s.handle(
            now,
            Input::DialEnded {
                id: 3,
                linked: true,
                refused: false,
            },
        );
        s.handle(now, Input::LinkUp(3));
        drain(&mut s);
        let next = s.poll_timeout().expect("a redial is due");
        // Before the back-off ends, nothing.
        s.handle(next - 1, Input::Tick);
        assert!(!drain(&mut s).contains(&Action::Dial(2)));
        s.handle(next, Input::Tick);
        assert!(drain(&mut s).contains(&Action::Dial(2)));
        waits.push((next - now) / MS);
        now = next;
    }
    assert_eq!(waits, vec![20, 40, 80, 160, 320, 500, 500]);
    s.handle(
        now,
        Input::DialEnded {
            id: 2,
            linked: false,
            refused: true,
        },
    );
    s.handle(now + 4_999 * MS, Input::Tick);
    assert!(!drain(&mut s).contains(&Action::Dial(2)));
    s.handle(now + 5_000 * MS, Input::Tick);
    assert!(drain(&mut s).contains(&Action::Dial(2)));
}

#[test]
fn a_link_that_goes_down_is_dialed_again_at_once_with_a_fresh_back_off() {
    let mut s = node1();
    s.handle(0, Input::Start);
    drain(&mut s);
    s.handle(
        MS,
        Input::DialEnded {
            id: 2,
            linked: false,
            refused: false,
        },
    );
    s.handle(21 * MS, Input::Tick);
    assert_eq!(drain(&mut s), vec![Action::Dial(2)]);
    s.handle(22 * MS, Input::LinkUp(2));
    s.handle(
        22 * MS,
        Input::DialEnded {
            id: 2,
            linked: true,
            refused: false,
        },
    );
    drain(&mut s);
    s.handle(30 * MS, Input::LinkDown(2));
    assert!(drain(&mut s).contains(&Action::Dial(2)));
    s.handle(
        31 * MS,
        Input::DialEnded {
            id: 2,
            linked: false,
            refused: false,
        },
    );
    assert_eq!(
        s.poll_timeout(),
        Some(51 * MS),
        "back-off restarts at 20 ms"
    );
}

#[test]
fn rounds_start_on_link_up_then_every_interval_one_at_a_time() {
    let mut s = node1();
    s.handle(0, Input::Start);
    drain(&mut s);
    s.handle(MS, Input::LinkUp(2));
    s.handle(MS, Input::LinkUp(3));
    assert_eq!(drain(&mut s), vec![Action::Round(2)], "one round at a time");
    s.handle(10 * MS, Input::RoundDone { id: 2, ok: true });
    assert_eq!(
        drain(&mut s),
        vec![Action::Round(3)],
        "the other due peer next"
    );
    s.handle(20 * MS, Input::RoundDone { id: 3, ok: true });
    assert_eq!(drain(&mut s), vec![Action::Ready { missing: vec![] }]);
    // Counted from each round's start.
    assert_eq!(s.poll_timeout(), Some(501 * MS));
    s.handle(501 * MS, Input::Tick);
    assert_eq!(drain(&mut s), vec![Action::Round(2)]);
    // A round that overran is followed at once by the waiting peer.
    s.handle(2_000 * MS, Input::RoundDone { id: 2, ok: false });
    assert_eq!(drain(&mut s), vec![Action::Round(3), Action::Trim]);
    // No rounds over a link that is down.
    s.handle(2_001 * MS, Input::LinkDown(2));
    s.handle(2_002 * MS, Input::RoundDone { id: 3, ok: true });
    let acts = drain(&mut s);
    assert!(!acts.contains(&Action::Round(2)), "{acts:?}");
    assert_eq!(s.rounds_with(3), 2);
    assert_eq!(s.rounds_with(2), 1, "a failed round does not count");
}

#[test]
fn ready_waits_for_every_addressed_unblocked_peer_or_the_timeout() {
    let mut s = node1();
    s.handle(
        0,
        Input::Peer {
            id: 4,
            addr: false,
            blocked: false,
        },
    );
    s.handle(
        0,
        Input::Peer {
            id: 5,
            addr: true,
            blocked: true,
        },
    );
    s.handle(0, Input::Start);
    drain(&mut s);
    s.handle(MS, Input::LinkUp(2));
    s.handle(2 * MS, Input::RoundDone { id: 2, ok: true });
    assert!(!s.is_ready());
    s.handle(2_999 * MS, Input::Tick);
    assert!(!drain(&mut s)
        .iter()
        .any(|a| matches!(a, Action::Ready { .. })));
    s.handle(3_000 * MS, Input::Tick);
    let acts = drain(&mut s);
    assert!(
        acts.contains(&Action::Ready { missing: vec![3] }),
        "{acts:?}"
    );
    assert!(s.is_ready());
    s.handle(9_000 * MS, Input::Tick);
    assert!(
        !drain(&mut s)
            .iter()
            .any(|a| matches!(a, Action::Ready { .. })),
        "ready once"
    );
}

#[test]
fn a_lone_node_is_ready_at_start_and_trims_every_interval() {
    let mut s = Schedule::new(7, Timing::default(), 100);
    s.handle(100, Input::Start);
    assert_eq!(drain(&mut s), vec![Action::Ready { missing: vec![] }]);
    assert_eq!(s.poll_timeout(), Some(100 + 2_000 * MS));
    s.handle(100 + 2_000 * MS, Input::Tick);
    assert_eq!(drain(&mut s), vec![Action::Trim]);
    assert_eq!(s.poll_timeout(), None, "never two trims at once");
    s.handle(100 + 2_500 * MS, Input::Trimmed);
    assert_eq!(s.poll_timeout(), Some(100 + 4_000 * MS));
}

fn input() -> impl Strategy<Value = Input> {
    let id = 0u64..5;
    prop_oneof![
        Just(Input::Tick),
        (id.clone(), any::<bool>(), any::<bool>()).prop_map(|(id, addr, blocked)| Input::Peer {
            id,
            addr,
            blocked
        }),
        id.clone().prop_map(Input::LinkUp),
        id.clone().prop_map(Input::LinkDown),
        (id.clone(), any::<bool>(), any::<bool>()).prop_map(|(id, linked, refused)| {
            Input::DialEnded {
                id,
                linked,
                refused,
            }
        }),
        (id, any::<bool>()).prop_map(|(id, ok)| Input::RoundDone { id, ok }),
        Just(Input::Trimmed),
    ]
}

proptest! {
    /// Whatever the inputs: the next timeout is always in the future (everything due
    /// was handed out), at most one round and one trim are out at a time, a peer is
    /// only dialed by the lower id and never while an attempt is out, and `Ready` comes
    /// at most once.
    #[test]
    fn the_schedule_keeps_its_rules(
        steps in proptest::collection::vec((0u64..300_000, input()), 1..200)
    ) {
        let mut s = Schedule::new(2, Timing::default(), 0);
        s.handle(0, Input::Start);
        let mut now = 0;
        let mut round_out: Option<NodeId> = None;
        let mut trim_out = false;
        let mut dialing = std::collections::BTreeSet::new();
        let mut readies = 0;
        for (dt, inp) in steps {
            now += dt;
            // Only report the ends of what is out, as a driver would.
            let inp = match inp {
                Input::RoundDone { ok, .. } => match round_out.take() {
                    Some(id) => Input::RoundDone { id, ok },
                    None => Input::Tick,
                },
                Input::Trimmed if !trim_out => Input::Tick,
                Input::DialEnded { id, linked, refused } if dialing.contains(&id) => {
                    dialing.remove(&id);
                    Input::DialEnded { id, linked, refused }
                }
                Input::DialEnded { .. } => Input::Tick,
                other => other,
            };
            if inp == Input::Trimmed {
                trim_out = false;
            }
            s.handle(now, inp);
            while let Some(a) = s.poll_action() {
                match a {
                    Action::Dial(id) => {
                        prop_assert!(id > 2, "dialed {id}");
                        prop_assert!(dialing.insert(id), "two dials of {id} at once");
                    }
                    Action::Round(id) => {
                        prop_assert!(round_out.is_none(), "two rounds at once");
                        prop_assert!(s.is_linked(id));
                        round_out = Some(id);
                    }
                    Action::Trim => {
                        prop_assert!(!trim_out, "two trims at once");
                        trim_out = true;
                    }
                    Action::Ready { .. } => readies += 1,
                }
            }
            if let Some(t) = s.poll_timeout() {
                prop_assert!(t > now, "timeout {t} not after now {now}");
            }
        }
        prop_assert!(readies <= 1);
        prop_assert!(now < 3_000_000 || s.is_ready(), "not ready after the catch-up timeout");
    }
}
