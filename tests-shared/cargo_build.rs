//! Building a workspace package from inside a test (shared by the test crates of
//! several packages through `#[path]`): the test's binary directory tells the target
//! directory and the profile.

use std::path::Path;
use std::process::Command;

/// Run `cargo build -p PACKAGE [EXTRA...]` into the target directory and profile of
/// the test binary living in `bin_dir` (`target/<profile>`), from `repo_root`.
pub fn cargo_build(
    repo_root: &Path,
    bin_dir: &Path,
    package: &str,
    extra: &[&str],
) -> Result<(), String> {
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root)
        .args(["build", "-p", package, "--profile", &profile])
        .args(extra);
    // Cargo sets per-package variables for the test process; passed on, they make
    // build scripts (ring's) rerun and the builds keep invalidating each other.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        ) || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
        {
            cmd.env_remove(key);
        }
    }
    // target/<profile> -> target (no cross-compilation triple in the path).
    if let Some(target_dir) = bin_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "`cargo build -p {package} {}` ({profile}) failed: {s}",
            extra.join(" ")
        )),
        Err(e) => Err(format!("could not run cargo to build {package}: {e}")),
    }
}
