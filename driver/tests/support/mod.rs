//! Shared helpers for the master's integration tests: run the real `master` binary
//! on a script with a fresh `--run-dir`, with a timeout, and check that every child
//! process it recorded in `RUN_DIR/pids` is gone afterwards.
//!
//! Environment knobs (all optional):
//! - `MESHKV_SCENARIO=substr`: only run scenarios whose name contains `substr`.
//! - `MESHKV_SCENARIO_JOBS=N`: how many scenarios run at once (default 4).
//! - `MESHKV_SCENARIO_TIMEOUT_SECS=N`: per-scenario timeout (default 60).
//! - `MESHKV_KEEP_RUN_DIRS=1`: keep every run dir (failed runs always keep theirs).
//! - `MESHKV_SKIP_NODE_BUILD=1`: do not `cargo build` the server/client binary first.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The `master` binary built by Cargo for this test run.
pub const MASTER: &str = env!("CARGO_BIN_EXE_master");

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("driver/ has a parent")
        .to_path_buf()
}

/// The `scenarios/` directory at the repository root.
pub fn scenarios_dir() -> PathBuf {
    repo_root().join("scenarios")
}

/// One scenario: `NAME.txt` (the script) and `NAME.out` (the exact expected stdout).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub script: PathBuf,
    pub expected: PathBuf,
}

/// Every `scenarios/*.txt`, sorted by name, filtered by `MESHKV_SCENARIO` if set.
pub fn scenarios() -> Vec<Scenario> {
    let filter = std::env::var("MESHKV_SCENARIO").ok();
    let mut all: Vec<Scenario> = fs::read_dir(scenarios_dir())
        .expect("read scenarios/")
        .filter_map(|e| {
            let path = e.expect("scenarios/ entry").path();
            if path.extension()? != "txt" {
                return None;
            }
            let name = path.file_stem()?.to_str()?.to_owned();
            Some(Scenario {
                expected: path.with_extension("out"),
                script: path,
                name,
            })
        })
        .filter(|s| match filter.as_deref() {
            Some(f) => s.name.contains(f),
            None => true,
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// An integer from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The directory holding the built binaries (`target/<profile>`).
fn bin_dir() -> PathBuf {
    Path::new(MASTER)
        .parent()
        .expect("master binary has a parent dir")
        .to_path_buf()
}

/// `cargo test -p meshkv-master` builds only this package's binaries, but the
#[path = "../../../tests-shared/cargo_build.rs"]
mod cargo_build;

/// master starts servers and clients from the `meshkv` binary of `meshkv-node`.
/// Build it (a no-op when fresh) into the same target directory, once.
pub fn ensure_node_binary() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        if std::env::var_os("MESHKV_SKIP_NODE_BUILD").is_some() {
            return Ok(());
        }
        cargo_build::cargo_build(
            &repo_root(),
            &bin_dir(),
            "meshkv-node",
            &["--bin", "meshkv"],
        )
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// What one run of the master produced.
#[derive(Debug)]
pub struct Run {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the run timed out and the master was killed.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub run_dir: PathBuf,
    /// Pids from `RUN_DIR/pids` still running (not zombies) after the master exited.
    pub leftover_pids: Vec<i32>,
    /// Every pid listed in `RUN_DIR/pids`.
    pub recorded_pids: Vec<i32>,
    /// Keeps the run dir alive until the `Run` is dropped (unless kept).
    _guard: Option<tempfile::TempDir>,
}

impl Run {
    /// Keeps the run dir on disk after this `Run` is dropped; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(dir) = self._guard.take() {
            let _ = dir.keep();
        }
        self.run_dir.clone()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `master --run-dir <fresh dir>` with stdin = `script`, killing it after `timeout`.
pub fn run_master(script: &Path, timeout: Duration) -> Run {
    let guard = tempfile::Builder::new()
        .prefix("meshkv-scenario-")
        .tempdir()
        .expect("create run dir");
    let run_dir = guard.path().to_path_buf();
    let stdin = fs::File::open(script).unwrap_or_else(|e| panic!("open {}: {e}", script.display()));
    let start = Instant::now();
    let mut child = Command::new(MASTER)
        .arg("--run-dir")
        .arg(&run_dir)
        .current_dir(repo_root())
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {MASTER}: {e}"));
    // Every process the master starts begins after this; used against pid reuse.
    let master_pid = i32::try_from(child.id()).expect("pid fits i32");
    let since = start_ticks(master_pid);
    let out_reader = Drain::start(child.stdout.take().expect("stdout piped"));
    let err_reader = Drain::start(child.stderr.take().expect("stderr piped"));

    let status = loop {
        match child.try_wait().expect("wait for master") {
            Some(status) => break Some(status),
            None if start.elapsed() >= timeout => {
                // Kill the master by its pid (Child::kill sends SIGKILL to that pid only).
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    };
    let elapsed = start.elapsed();

    // Children must be gone once the master has exited. Allow a short grace period
    // for the kernel to finish tearing them down (or, after a timeout, for them to
    // notice the master is gone), then report and kill what is left.
    let recorded_pids = read_pids(&run_dir);
    let grace = if status.is_some() { 1500 } else { 3000 };
    let deadline = Instant::now() + Duration::from_millis(grace);
    let mut leftover_pids: Vec<i32>;
    loop {
        leftover_pids = recorded_pids
            .iter()
            .copied()
            .filter(|&p| is_running(p) && is_ours(p, since))
            .collect();
        if leftover_pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    for &pid in &leftover_pids {
        if is_running(pid) && is_ours(pid, since) {
            // SAFETY: kill(2) on one positive pid the master recorded, checked above to
            // be a live process started after the master (not a reused pid).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    // A process we do not know about may still hold the pipes open: do not wait forever.
    let reader_deadline = Instant::now() + Duration::from_secs(5);
    let stdout = out_reader.finish(reader_deadline);
    let stderr = err_reader.finish(reader_deadline);

    let keep_all = std::env::var_os("MESHKV_KEEP_RUN_DIRS").is_some();
    let mut run = Run {
        stdout,
        stderr,
        status,
        elapsed,
        run_dir,
        leftover_pids,
        recorded_pids,
        _guard: Some(guard),
    };
    if keep_all {
        run.keep();
    }
    run
}

/// Reads a pipe to the end on a thread, so neither pipe can fill up and block the master.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    fn start(mut r: impl Read + Send + 'static) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => shared.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Drain { buf, done }
    }

    /// Everything read until EOF, or until `deadline` if the pipe is still open then
    /// (the reader thread is left behind; it ends when the last writer goes away).
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let complete = self.done.recv_timeout(wait).is_ok();
        let mut out = std::mem::take(&mut *self.buf.lock().unwrap());
        if !complete {
            out.extend_from_slice(b"\n[harness: pipe still open 5 s after the master exited]\n");
        }
        out
    }
}

/// The pids recorded by the master, one per line (blank or malformed lines ignored).
pub fn read_pids(run_dir: &Path) -> Vec<i32> {
    let Ok(text) = fs::read_to_string(run_dir.join("pids")) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = text
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The fields of `/proc/PID/stat` after the parenthesised command name
/// (index 0 is the state, field 3 in proc(5); field N is at index N - 3).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let i = stat.rfind(')')?;
    Some(
        stat[i + 1..]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// When `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// True when `pid` exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        return match stat_fields(pid) {
            Some(f) => !matches!(f.first().map(String::as_str), Some("Z" | "X")),
            None => false,
        };
    }
    // No /proc: kill(pid, 0) fails with ESRCH once the process is gone.
    // SAFETY: signal 0 only checks for existence; it sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
}

/// Guards against pid reuse: a recorded pid is one of ours when that process started
/// no earlier than the master (unknown start times count as ours).
fn is_ours(pid: i32, master_start: Option<u64>) -> bool {
    match (master_start, start_ticks(pid)) {
        (Some(master), Some(started)) => started >= master,
        _ => true,
    }
}

/// The last `n` lines of every file under `RUN_DIR/logs` (recursively), for failure reports.
pub fn logs_tail(run_dir: &Path, n: usize) -> String {
    let mut files = Vec::new();
    collect_files(&run_dir.join("logs"), &mut files);
    files.sort();
    let mut out = String::new();
    for f in files {
        let Ok(bytes) = fs::read(&f) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        let _ = writeln!(
            out,
            "--- {} (last {} of {} lines) ---",
            f.display(),
            lines.len() - from,
            lines.len()
        );
        for l in &lines[from..] {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A line diff of `expected` against `actual` (`-` expected only, `+` actual only),
/// with a note when the two differ only in the final newline.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.split_inclusive('\n').collect();
    let b: Vec<&str> = actual.split_inclusive('\n').collect();
    // Longest common subsequence table (scenario outputs are small).
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let show = |l: &str| {
        let body = l.strip_suffix('\n').unwrap_or(l);
        let nl = if l.ends_with('\n') {
            ""
        } else {
            "  \u{240a}missing newline"
        };
        format!("{body:?}{nl}")
    };
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", show(a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", show(b[j]));
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", show(a[i]));
            i += 1;
        }
    }
    out
}
