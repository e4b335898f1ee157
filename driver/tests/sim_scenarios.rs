//! Every `scenarios/NAME.txt` run through the master's parser against the simulated
//! cluster ([`SimMaster`]): its output must equal `scenarios/NAME.out`, the same file
//! the real-process run (`tests/scenarios.rs`) is held to. And the check can fail: a
//! simulated node without the session dependency check must fail some scenarios.

use meshkv_core::vopr::Mutation;
use meshkv_master::script::parse_line;
use meshkv_master::sim_master::SimMaster;
use std::path::PathBuf;

fn scenarios() -> Vec<(String, String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut out = Vec::new();
    for ent in std::fs::read_dir(&dir).expect("scenarios dir") {
        let path = ent.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "txt") {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let script = std::fs::read_to_string(&path).expect("script");
            let expected = std::fs::read(path.with_extension("out")).expect("expected output");
            out.push((name, script, expected));
        }
    }
    out.sort();
    assert!(out.len() >= 30, "found only {} scenarios", out.len());
    out
}

fn run(master: &mut SimMaster, script: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in script.lines() {
        if let Ok(Some(cmd)) = parse_line(line) {
            // Errors go to stderr in the real master: not part of the output.
            let _ = master.run(cmd, &mut out);
        }
    }
    out
}

#[test]
fn every_scenario_passes_against_the_simulator() {
    let mut failed = Vec::new();
    for (name, script, expected) in scenarios() {
        let got = run(&mut SimMaster::new(), &script);
        if got != expected {
            failed.push(format!(
                "{name}:\n--- expected\n{}--- got\n{}",
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_node_without_the_dependency_check_fails_the_session_scenarios() {
    let mut failed = Vec::new();
    for (name, script, expected) in scenarios() {
        let mut m = SimMaster::with_mutation(Mutation::SkipDependencyCheck);
        if run(&mut m, &script) != expected {
            failed.push(name);
        }
    }
    assert!(
        failed.iter().any(|n| n == "ryw_stale_replica"),
        "the planted bug went unnoticed by ryw_stale_replica (failed: {failed:?})"
    );
    assert!(
        failed.iter().any(|n| n.starts_with("mr_")),
        "the planted bug went unnoticed by the monotonic-read scenario (failed: {failed:?})"
    );
}

#[test]
fn the_trace_shows_each_message_and_sync_step() {
    let mut m = SimMaster::new();
    m.set_trace(true);
    let script = "joinServer 0\njoinServer 1\njoinClient 5 0\nput 5 k v\n\
                  breakConnection 0 1\nput 5 k w\ncreateConnection 0 1\nstabilize\n";
    run(&mut m, script);
    let trace = m.take_trace();
    let has = |s: &str| trace.iter().any(|t| t == s);
    assert!(has("deliver 0->1 push k"), "{trace:#?}");
    assert!(has("link 0-1 down"), "{trace:#?}");
    assert!(has("sync 1<-0 commit 1 ops"), "{trace:#?}");
    // The same script gives the same trace: runs are deterministic.
    let mut again = SimMaster::new();
    again.set_trace(true);
    run(&mut again, script);
    assert_eq!(again.take_trace(), trace);
}
