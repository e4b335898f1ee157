//! End-to-end scenarios: every `scenarios/NAME.txt` is fed to the real `master`
//! binary on stdin and its stdout must equal `scenarios/NAME.out` byte for byte.
//! After the master exits, none of the processes it recorded in `RUN_DIR/pids`
//! may still be running.

mod support;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use meshkv_master::script::{parse_line, Command};
use support::Scenario;

/// The scenario that deliberately contains malformed commands.
const MALFORMED: &str = "malformed_commands";
/// The scenario that deliberately names ids that do not exist.
const UNKNOWN_IDS: &str = "unknown_ids";

fn timeout() -> Duration {
    Duration::from_secs(support::env_num("MESHKV_SCENARIO_TIMEOUT_SECS", 60))
}

/// Runs one scenario; `Err` holds a full, readable failure report.
fn check(s: &Scenario) -> Result<Duration, String> {
    let expected = fs::read(&s.expected)
        .map_err(|e| format!("{}: cannot read {}: {e}", s.name, s.expected.display()))?;
    let mut run = support::run_master(&s.script, timeout());
    let mut problems = Vec::new();
    match run.status {
        None => problems.push(format!("timed out after {:?} (master killed)", run.elapsed)),
        Some(st) if !st.success() => problems.push(format!("master exited with {st}")),
        Some(_) => {}
    }
    if run.stdout != expected {
        problems.push(format!(
            "stdout differs from {} (- expected, + actual):\n{}",
            s.expected.display(),
            support::line_diff(
                &String::from_utf8_lossy(&expected),
                &String::from_utf8_lossy(&run.stdout)
            )
        ));
    }
    let starts_processes = fs::read_to_string(&s.script)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            matches!(
                parse_line(l),
                Ok(Some(
                    Command::JoinServer { .. } | Command::JoinClient { .. }
                ))
            )
        });
    if starts_processes && run.recorded_pids.is_empty() && run.status.is_some() {
        problems.push(format!(
            "the master recorded no child pids in {}/pids, so leaked processes cannot be checked",
            run.run_dir.display()
        ));
    }
    if !run.leftover_pids.is_empty() {
        problems.push(format!(
            "child processes still running after the master exited: {:?} (of recorded {:?}); killed them",
            run.leftover_pids, run.recorded_pids
        ));
    }
    if problems.is_empty() {
        return Ok(run.elapsed);
    }
    let dir = run.keep();
    let mut report = format!(
        "=== scenario {} FAILED ({:?}; run dir kept at {}) ===\n",
        s.name,
        run.elapsed,
        dir.display()
    );
    for p in problems {
        let _ = writeln!(report, "* {p}");
    }
    let _ = writeln!(
        report,
        "--- master stderr (last 60 lines) ---\n{}",
        support::tail(&run.stderr_str(), 60)
    );
    let logs = support::logs_tail(&dir, 30);
    if !logs.is_empty() {
        let _ = write!(report, "{logs}");
    }
    Err(report)
}

#[test]
fn scenarios_match_expected_output() {
    support::ensure_node_binary();
    let all = support::scenarios();
    assert!(!all.is_empty(), "no scenarios selected");
    let jobs = support::env_num("MESHKV_SCENARIO_JOBS", 4).max(1) as usize;
    let queue = Arc::new(Mutex::new(all.iter().cloned().collect::<VecDeque<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..jobs.min(all.len()))
        .map(|_| {
            let queue = Arc::clone(&queue);
            let results = Arc::clone(&results);
            thread::spawn(move || loop {
                let Some(s) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let r = std::panic::catch_unwind(|| check(&s))
                    .unwrap_or_else(|_| Err(format!("=== scenario {} PANICKED ===", s.name)));
                match &r {
                    Ok(t) => eprintln!("scenario {} ok ({t:?})", s.name),
                    Err(_) => eprintln!("scenario {} FAILED", s.name),
                }
                results.lock().unwrap().push((s.name.clone(), r));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("scenario worker");
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    if !failures.is_empty() {
        let names: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| n.as_str())
            .collect();
        let reports: Vec<&str> = failures.iter().map(|s| s.as_str()).collect();
        panic!(
            "{} of {} scenarios failed: {}\n\n{}",
            failures.len(),
            results.len(),
            names.join(", "),
            reports.join("\n")
        );
    }
}

/// Bad commands are reported on stderr, naming the command, and never on stdout.
#[test]
fn malformed_commands_are_reported_on_stderr() {
    support::ensure_node_binary();
    let script = support::scenarios_dir().join(format!("{MALFORMED}.txt"));
    let run = support::run_master(&script, timeout());
    assert!(run.status.is_some(), "master timed out");
    let stderr = run.stderr_str();
    let stdout = run.stdout_str();
    assert!(!stderr.trim().is_empty(), "nothing on stderr");
    for bad in ["frobnicate", "JOINSERVER"] {
        assert!(
            stderr.contains(bad),
            "stderr does not mention `{bad}`:\n{stderr}"
        );
        assert!(!stdout.contains(bad), "stdout mentions `{bad}`:\n{stdout}");
    }
    let expected = fs::read_to_string(script.with_extension("out")).unwrap();
    assert_eq!(stdout, expected, "stdout must hold only the later gets");
    assert!(run.leftover_pids.is_empty(), "{:?}", run.leftover_pids);
}

/// The unknown-id scenario also reports each bad id on stderr.
#[test]
fn unknown_ids_are_reported_on_stderr() {
    support::ensure_node_binary();
    let script = support::scenarios_dir().join(format!("{UNKNOWN_IDS}.txt"));
    let run = support::run_master(&script, timeout());
    assert!(run.status.is_some(), "master timed out");
    let stderr = run.stderr_str();
    assert!(
        stderr.contains("42"),
        "stderr does not mention the unknown id 42:\n{stderr}"
    );
    let expected = fs::read_to_string(script.with_extension("out")).unwrap();
    assert_eq!(run.stdout_str(), expected);
}

/// Static checks on the scenario files themselves (no master needed).
#[test]
fn scenario_files_are_well_formed() {
    let all = support::scenarios();
    if std::env::var_os("MESHKV_SCENARIO").is_none() {
        assert!(all.len() >= 28, "only {} scenarios", all.len());
    }
    let mut problems = Vec::new();
    for s in &all {
        let text = match fs::read_to_string(&s.script) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", s.name));
                continue;
            }
        };
        let out = match fs::read_to_string(&s.expected) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: missing or unreadable .out: {e}", s.name));
                continue;
            }
        };
        if !text.starts_with('#') {
            problems.push(format!("{}: first line is not a `#` comment", s.name));
        }
        if !out.is_empty() && !out.ends_with('\n') {
            problems.push(format!("{}: .out does not end with a newline", s.name));
        }
        let mut printing = 0;
        let mut gets = 0;
        let mut malformed = 0;
        for (n, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(Some(Command::Get { .. })) => {
                    printing += 1;
                    gets += 1;
                }
                Ok(Some(Command::PrintStore { .. })) => printing += 1,
                Ok(_) => {}
                Err(_) if s.name == MALFORMED => malformed += 1,
                Err(e) => problems.push(format!("{}:{}: {e}", s.name, n + 1)),
            }
        }
        if s.name == MALFORMED && malformed == 0 {
            problems.push(format!("{}: has no malformed line", s.name));
        }
        if printing == 0 && !out.is_empty() {
            problems.push(format!(
                "{}: no get/printStore but a non-empty .out",
                s.name
            ));
        }
        // Each get prints exactly one line; printStore prints any number.
        if printing == gets && s.name != UNKNOWN_IDS && out.lines().count() != gets {
            problems.push(format!(
                "{}: {} gets but {} expected lines",
                s.name,
                gets,
                out.lines().count()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
