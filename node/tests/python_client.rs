//! The Python client (`clients/python`) against real `meshkv serve` processes: three
//! servers, then `python3 -m unittest discover -s clients/python/tests` with
//! `MESHKV_TEST_ENDPOINTS` naming them. Once more, with only the session tests, against
//! servers whose `[http] default_consistency` is `session`.
//!
//! Needs `python3` (CPython 3.8 or later, standard library only) on the `PATH`; the
//! test fails with a clear message when it is missing. Every server is killed by pid
//! when its cluster is dropped (the `Proc` guard).

mod support;

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use support::*;

/// The repository root (the Python tests run from there).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Fails unless `python3` runs.
fn check_python() -> Result<()> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; assert sys.version_info >= (3, 8), sys.version",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "python3 is too old for the Python client's tests (want 3.8 or later): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!(
            "python3 is not installed (or not on PATH: {e}): the Python client's tests \
             need CPython 3.8 or later (e.g. apt-get install python3)"
        ),
    }
}

/// Three servers with `http` as extra `[http]` lines, each ready with both links up.
async fn cluster(http: &str) -> Result<(Cluster, String)> {
    let cfg = NodeCfg {
        http: http.to_string(),
        ..Default::default()
    };
    let (cl, _) = meshed(&[cfg.clone(), cfg.clone(), cfg]).await?;
    let urls = (0..3)
        .map(|i| cl.ep(i).map(|e| e.url()))
        .collect::<Result<Vec<_>>>()?;
    Ok((cl, urls.join(",")))
}

/// Run the Python tests (`args` after `-m unittest discover ...`) against `endpoints`;
/// the combined output, or an error carrying it when they fail.
async fn unittest(endpoints: &str, default_level: &str, args: &[&str]) -> Result<String> {
    let root = repo_root();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "unittest",
        "discover",
        "-s",
        "clients/python/tests",
        "-v",
    ])
    .args(args)
    .current_dir(&root)
    .env("PYTHONPATH", root.join("clients/python"))
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .env("MESHKV_TEST_ENDPOINTS", endpoints)
    .env("MESHKV_TEST_DEFAULT_CONSISTENCY", default_level);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running python3 -m unittest")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(anyhow!(
            "the Python client's tests failed ({}):\n{text}",
            out.status
        ));
    }
    if !text.contains("\nOK") {
        bail!("the Python client's tests did not report OK:\n{text}");
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_tests_pass_against_a_cluster() -> Result<()> {
    check_python()?;
    let (_cluster, endpoints) = cluster("").await?;
    let out = unittest(&endpoints, "linearizable", &[]).await?;
    println!("{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_session_tests_pass_when_the_default_level_is_session() -> Result<()> {
    check_python()?;
    let (_cluster, endpoints) = cluster("default_consistency = \"session\"").await?;
    let out = unittest(&endpoints, "session", &["-k", "session"]).await?;
    println!("{out}");
    if !out.contains("ClusterTests") {
        bail!("no cluster test ran with -k session:\n{out}");
    }
    Ok(())
}
