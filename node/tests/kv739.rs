//! libkv739 (the CS739 C API, `kv739/`) through a C program against real `meshkv
//! serve` processes: the cdylib is built (unless `MESHKV_SKIP_NODE_BUILD` is set),
//! copied as `lib739kv.so` (the name the course harnesses link), its symbols checked
//! with `nm -D`, and `kv739/tests/c/kv739_test.c` compiled with `cc -Wall -Werror`
//! and run in each of its roles: the old/new chain through three servers (at the
//! default level and at `MESHKV_CONSISTENCY=session`), a writer and a reader at once
//! through different servers, the empty-string terminator, and failover after a
//! server is killed. Every run must exit 0, print only `ok` lines on stdout and
//! nothing on stderr (the library is silent without `KV739_DEBUG`).
//!
//! Own temp dirs, OS-picked ports, traffic only to 127.0.0.1; every process is
//! killed by pid on drop (the `Proc` guard).

mod support;

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::*;

/// How long one run of the C program may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Puts of the writer (and values the reader waits for).
const WRITES: &str = "200";
/// The symbols the library must export.
const SYMBOLS: [&str; 6] = [
    "kv739_init",
    "kv739_fail",
    "kv739_recover",
    "kv739_get",
    "kv739_put",
    "kv739_shutdown",
];

/// `target/<profile>`, where cargo put the `meshkv` binary (and the cdylib).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshkv"))
        .parent()
        .expect("the meshkv binary has a parent dir")
        .to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

#[path = "../../tests-shared/cargo_build.rs"]
mod cargo_build;

/// Build the cdylib into the target dir of this test (unless
/// `MESHKV_SKIP_NODE_BUILD` is set), once, and return its path.
fn build_lib() -> Result<PathBuf> {
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DONE.get_or_init(|| build_lib_once().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_lib_once() -> Result<PathBuf> {
    let dir = bin_dir();
    if std::env::var_os("MESHKV_SKIP_NODE_BUILD").is_none() {
        cargo_build::cargo_build(&repo_root(), &dir, "kv739", &[]).map_err(|e| anyhow!(e))?;
    }
    let lib = dir.join("libkv739.so");
    if !lib.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p kv739` \
             (MESHKV_SKIP_NODE_BUILD is set, so this test does not)",
            lib.display()
        );
    }
    Ok(lib)
}

/// The library as `lib739kv.so` and the C program, compiled, in `work`.
fn prepare(work: &Path) -> Result<PathBuf> {
    let lib = build_lib()?;
    let so = work.join("lib739kv.so");
    std::fs::copy(&lib, &so).with_context(|| format!("copying {}", lib.display()))?;
    match Command::new("nm")
        .arg("-D")
        .arg("--defined-only")
        .arg(&so)
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("nm not found: the exported-symbol check is skipped");
        }
        Err(e) => bail!("running nm: {e}"),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            for sym in SYMBOLS {
                let found = text.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() == 3 && f[1] == "T" && f[2] == sym
                });
                if !found {
                    bail!("nm -D does not list {sym} as a text symbol:\n{text}");
                }
            }
        }
    }
    let exe = work.join("kv739_test");
    let out = Command::new("cc")
        .current_dir(repo_root())
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .args(["kv739/tests/c/kv739_test.c", "-I", "kv739/include"])
        .arg(format!("-L{}", work.display()))
        .arg("-l739kv")
        .arg(format!("-Wl,-rpath,{}", work.display()))
        .output()
        .context("running cc (a C compiler is needed for this test)")?;
    if !out.status.success() {
        bail!(
            "cc failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(exe)
}

/// A run of the C program in progress; killed on drop.
struct Run {
    label: String,
    proc: Proc,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Start `exe args` with only the given library variables set.
fn spawn(exe: &Path, work: &Path, label: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
    let stdout = work.join(format!("{label}.out"));
    let stderr = work.join(format!("{label}.err"));
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&stdout)?))
        .stderr(Stdio::from(std::fs::File::create(&stderr)?));
    for var in [
        "MESHKV_CONSISTENCY",
        "MESHKV_TOKEN",
        "KV739_DEBUG",
        "KV739_TIMEOUT_MS",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().with_context(|| format!("starting {label}"))?;
    Ok(Run {
        label: label.to_string(),
        proc: Proc { child },
        stdout,
        stderr,
    })
}

impl Run {
    /// Wait for the exit (bounded), then check it: status 0, only `ok` lines on
    /// stdout (at least one), nothing on stderr. Returns stdout.
    fn check(mut self) -> Result<String> {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(s) = self.proc.child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let show = || format!("--- stdout:\n{out}--- stderr:\n{err}---");
        let Some(status) = status else {
            bail!(
                "{}: still running after {RUN_TIMEOUT:?}, killed\n{}",
                self.label,
                show()
            );
        };
        if !status.success() {
            bail!("{}: {status}\n{}", self.label, show());
        }
        if out.lines().any(|l| l.starts_with("FAIL")) {
            bail!("{}: a check failed\n{}", self.label, show());
        }
        if out.lines().any(|l| !l.starts_with("ok ")) {
            bail!(
                "{}: stdout has lines that are not checks (the library must not print)\n{}",
                self.label,
                show()
            );
        }
        if out.lines().count() == 0 {
            bail!("{}: no check ran\n{}", self.label, show());
        }
        if !err.is_empty() {
            bail!(
                "{}: stderr is not empty (the library must be silent without KV739_DEBUG)\n{}",
                self.label,
                show()
            );
        }
        println!("{}: {} checks ok", self.label, out.lines().count());
        Ok(out)
    }
}

fn run(
    exe: &Path,
    work: &Path,
    label: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String> {
    spawn(exe, work, label, args, env)?.check()
}

/// Start `cfgs.len()` servers and wait until each is ready with every link up; their
/// HTTP addresses as `host:port`.
fn start(cl: &mut Cluster) -> Result<Vec<String>> {
    cl.start_all()?;
    let rt = tokio::runtime::Runtime::new()?;
    let c = plain();
    let n = cl.nodes.len();
    rt.block_on(async {
        for i in 0..n {
            cl.wait_links(i, n - 1, &c).await?;
        }
        anyhow::Ok(())
    })?;
    (0..n)
        .map(|i| cl.ep(i).map(|ep| format!("{}:{}", ep.host, ep.port)))
        .collect()
}

#[test]
fn the_c_api_works_against_three_servers() -> Result<()> {
    let work = tempfile::tempdir()?;
    let w = work.path();
    let exe = prepare(w)?;
    let mut cl = Cluster::new(&vec![NodeCfg::default(); 3])?;
    let s = start(&mut cl)?;
    let (s0, s1, s2) = (s[0].as_str(), s[1].as_str(), s[2].as_str());

    // The server lists end at an empty string, followed by an entry never to be used.
    run(
        &exe,
        w,
        "chain-default",
        &["chain", "lin", s0, s1, s2, "", "127.0.0.1:1"],
        &[],
    )?;
    run(
        &exe,
        w,
        "chain-session",
        &["chain", "sess", s1, s2, s0, "", "127.0.0.1:1"],
        &[("MESHKV_CONSISTENCY", "session")],
    )?;

    for (label, level) in [("default", None), ("session", Some("session"))] {
        let env: Vec<(&str, &str)> = level
            .map(|l| ("MESHKV_CONSISTENCY", l))
            .into_iter()
            .collect();
        let name = format!("wr-{label}");
        let writer = spawn(
            &exe,
            w,
            &format!("writer-{label}"),
            &["writer", &name, WRITES, s0, s1, s2],
            &env,
        )?;
        let reader = spawn(
            &exe,
            w,
            &format!("reader-{label}"),
            &["reader", &name, WRITES, s1, s2, s0],
            &env,
        )?;
        let r = reader.check();
        writer.check()?;
        r?;
    }

    run(
        &exe,
        w,
        "empty-terminator",
        &["empty-terminator", s0, s1],
        &[],
    )?;

    // Kill server 0 (by pid, through its guard); the others must carry on.
    let mut p = cl.nodes[0]
        .proc
        .take()
        .ok_or_else(|| anyhow!("server 0 has no process"))?;
    p.child.kill()?;
    p.child.wait()?;
    cl.nodes[0].http = None;
    run(&exe, w, "failover", &["failover", s0, s1, s2], &[])?;
    Ok(())
}

/// Servers whose default level is the session level: with no `MESHKV_CONSISTENCY`,
/// the library must notice the level the answers echo and send its session tokens,
/// so the chain holds without any retry. Skipped (with a message) against servers
/// that do not echo `X-Meshkv-Consistency`.
#[test]
fn the_library_follows_a_session_default_level() -> Result<()> {
    let work = tempfile::tempdir()?;
    let w = work.path();
    let exe = prepare(w)?;
    let cfg = NodeCfg {
        http: "default_consistency = \"session\"".into(),
        ..Default::default()
    };
    let mut cl = Cluster::new(&vec![cfg; 3])?;
    let s = start(&mut cl)?;
    let rt = tokio::runtime::Runtime::new()?;
    let echoed = rt.block_on(async {
        let r = put(&plain(), &cl.ep(0)?, b"probe", b"x", &[]).await?;
        anyhow::Ok(r.header("x-meshkv-consistency").map(str::to_string))
    })?;
    match echoed.as_deref() {
        Some("session") => {}
        None => {
            println!("skipped: the servers do not echo X-Meshkv-Consistency");
            return Ok(());
        }
        Some(other) => bail!("a session-default server echoed level {other:?}"),
    }
    run(
        &exe,
        w,
        "chain-session-default",
        &["chain", "auto", &s[0], &s[1], &s[2]],
        &[],
    )?;
    Ok(())
}
