//! What the footprint and store benchmarks share (`#[path]`-included by both): the keys
//! and values they generate, and the disk usage of a data directory.

use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The key of number `i`, `len` bytes (`len` ≥ the digits of `i` plus one).
pub fn key(i: u64, len: usize) -> Vec<u8> {
    format!("k{i:0w$}", w = len.saturating_sub(1)).into_bytes()
}

/// A deterministic, poorly compressible value for key number `i`.
pub fn value(i: u64, len: usize) -> Vec<u8> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for b in z.to_le_bytes() {
            if out.len() < len {
                // Printable, so a failed check prints readably.
                out.push(b'!' + (b % 94));
            }
        }
    }
    out
}

/// Bytes under a directory.
#[derive(Serialize, Clone, Copy, Default)]
pub struct DiskUsage {
    /// Sum of st_blocks × 512 (what `du` reports).
    pub allocated: u64,
    /// Sum of file lengths (`du --apparent-size`).
    pub apparent: u64,
    /// Files counted.
    pub files: u64,
}

/// The usage of `dir`, adding each top-level entry's allocated bytes to `by_top`
/// (`top`: the top-level entry `dir` is under, `None` for the data directory itself).
pub fn disk_usage(
    dir: &Path,
    by_top: &mut BTreeMap<String, u64>,
    top: Option<&str>,
) -> Result<DiskUsage> {
    let mut u = DiskUsage::default();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let md = std::fs::symlink_metadata(e.path())?;
        let name = e.file_name().to_string_lossy().into_owned();
        let t = top.map(str::to_string).unwrap_or_else(|| name.clone());
        if md.is_dir() {
            let s = disk_usage(&e.path(), by_top, Some(&t))?;
            u.allocated += s.allocated + md.blocks() * 512;
            u.apparent += s.apparent;
            u.files += s.files;
            *by_top.entry(t).or_default() += md.blocks() * 512;
        } else {
            u.allocated += md.blocks() * 512;
            u.apparent += md.len();
            u.files += 1;
            *by_top.entry(t).or_default() += md.blocks() * 512;
        }
    }
    Ok(u)
}
