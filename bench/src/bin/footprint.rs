//! Footprint benchmark: disk, memory and restart time of one server holding a large
//! store.
//!
//! Builds a snapshot of `--keys` keys (`--key-len` bytes each, `--value-len`-byte
//! values) in memory with [`meshkv_node::snapshot::encode`], writes it to a temporary
//! file, turns it into a data directory with `meshkv snapshot restore`, and then starts
//! one `meshkv serve` (no peers) on that directory `--starts` times. For each start it
//! measures the time from spawning the process to its `meshkv serve: ... http=` line on
//! stdout and to `GET /health/ready` answering 200, the resident memory (`VmRSS`, and
//! `VmHWM`) once ready and again `--settle-ms` later, and checks a few random keys over
//! HTTP. The data directory's size (allocated blocks and apparent bytes) is taken after
//! the restore and after the last stop. Every figure is also given against the payload,
//! `keys × (key_len + value_len)`, and the targets are checked: RSS ≤ 3×
//! payload, disk ≤ 2× payload, ready ≤ 1 s after a restart.
//!
//! Processes are stopped by pid (SIGTERM, then SIGKILL after `--stop-timeout`); the
//! run directory is temporary and removed unless `--keep`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use humansize::{format_size, BINARY};
use meshkv_node::meshkv_core::{Dot, Entry, Version, VersionVector};
use meshkv_node::snapshot::{self, Header};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "../store_data.rs"]
mod store_data;
use store_data::{disk_usage, key, value, DiskUsage};

#[derive(Parser, Debug)]
#[command(about = "meshkv footprint: disk, RSS and restart-to-ready time of one server")]
struct Args {
    /// Keys in the store.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Key length in bytes (keys are `k` followed by a zero-padded number).
    #[arg(long, default_value_t = 16)]
    key_len: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 100)]
    value_len: usize,
    /// Where `meshkv` is.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Server starts on the restored directory (the first is the start right after the
    /// restore; every later one is a restart after a clean stop).
    #[arg(long, default_value_t = 3)]
    starts: usize,
    /// Random keys read back over HTTP after each start.
    #[arg(long, default_value_t = 20)]
    check_keys: usize,
    /// RSS is read again this long after ready (ms).
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Give up waiting for ready after this long (s).
    #[arg(long, default_value_t = 300)]
    ready_timeout: u64,
    /// SIGKILL a server that has not exited this long after SIGTERM (s).
    #[arg(long, default_value_t = 60)]
    stop_timeout: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run directory (default: a temporary one, removed at the end).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Keep the run directory.
    #[arg(long)]
    keep: bool,
}

// Target ratios from the issue.
const RSS_TARGET: f64 = 3.0;
const DISK_TARGET: f64 = 2.0;
const READY_TARGET_S: f64 = 1.0;

fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let rest = rest.trim_start_matches(':').trim();
            let n = rest.split_whitespace().next().unwrap_or("0");
            return Ok(n.parse::<u64>()?);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// A minimal HTTP/1.1 GET on a fresh connection: (status, body).
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status"))?
        .parse()?;
    let raw = &buf[end + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = raw[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| anyhow!("bad chunk"))?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&raw[at..at + nl])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(
                raw.get(at..at + size)
                    .ok_or_else(|| anyhow!("short chunk"))?,
            );
            at += size + 2;
        }
        out
    } else {
        raw.to_vec()
    };
    Ok((status, body))
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[derive(Serialize, Clone)]
struct StartFigures {
    /// 1 = first start after the restore; 2.. = restarts after a clean stop.
    start: usize,
    to_serving_line_s: f64,
    to_ready_s: f64,
    rss_at_ready: u64,
    rss_settled: u64,
    hwm: u64,
    keys_checked: usize,
    stop_s: f64,
}

struct Running {
    child: Child,
    stdout_rx: mpsc::Receiver<(Instant, String)>,
}

fn spawn_server(meshkv: &Path, config: &Path, dir: &Path, n: usize) -> Result<(Running, Instant)> {
    let log = std::fs::File::create(dir.join(format!("serve{n}.log")))?;
    let t0 = Instant::now();
    let mut child = Command::new(meshkv)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("MESHKV_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawn {}", meshkv.display()))?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    Ok((
        Running {
            child,
            stdout_rx: rx,
        },
        t0,
    ))
}

fn stop_server(r: &mut Running, timeout: Duration) -> Result<f64> {
    let pid = r.child.id();
    let t = Instant::now();
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        eprintln!("footprint: kill -TERM {pid} failed (already gone?)");
    }
    loop {
        if r.child.try_wait()?.is_some() {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > timeout {
            eprintln!("footprint: server {pid} did not stop within {timeout:?}: SIGKILL");
            let _ = r.child.kill();
            let _ = r.child.wait();
            return Ok(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Serialize)]
struct Report {
    keys: u64,
    key_len: usize,
    value_len: usize,
    payload_bytes: u64,
    snapshot_file_bytes: u64,
    build_snapshot_s: f64,
    restore_s: f64,
    /// Largest VmHWM of `meshkv snapshot restore` seen while it ran (sampled).
    restore_peak_rss: u64,
    disk_after_restore: DiskUsage,
    disk_after_stop: DiskUsage,
    disk_by_top_level_after_stop: BTreeMap<String, u64>,
    starts: Vec<StartFigures>,
    rss_ratio: f64,
    disk_ratio_allocated: f64,
    disk_ratio_apparent: f64,
    worst_restart_to_ready_s: f64,
    rss_target_met: bool,
    disk_target_met: bool,
    ready_target_met: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let total = Instant::now();
    let meshkv = std::fs::canonicalize(args.bin_dir.join("meshkv"))
        .with_context(|| format!("no meshkv in {} (build it first)", args.bin_dir.display()))?;
    if args.keys == 0 {
        bail!("--keys must be positive");
    }
    if args.key_len < 2 || (args.keys - 1).to_string().len() > args.key_len - 1 {
        bail!(
            "--key-len {} is too short for {} keys",
            args.key_len,
            args.keys
        );
    }
    let mut tmp = None;
    let run_dir = match &args.run_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshkv-footprint-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            tmp = Some(t);
            p
        }
    };
    eprintln!("footprint: run directory {}", run_dir.display());
    let result = run(&args, &meshkv, &run_dir);
    if args.keep {
        eprintln!("footprint: kept {}", run_dir.display());
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else if args.run_dir.is_some() {
        let _ = std::fs::remove_dir_all(run_dir.join("data"));
        let _ = std::fs::remove_file(run_dir.join("store.snap"));
    }
    eprintln!("footprint: total {:.1} s", total.elapsed().as_secs_f64());
    result
}

fn run(args: &Args, meshkv: &Path, run_dir: &Path) -> Result<()> {
    let n = args.keys;
    let payload = n * (args.key_len + args.value_len) as u64;

    // 1. The snapshot, in memory, then in a file.
    let t = Instant::now();
    let origin: u64 = 0x00F0_07F1_0000_0001;
    let base_ts = meshkv_node::meshkv_core::hlc::wall_micros().saturating_sub(n + 10_000_000);
    let empty = VersionVector::new();
    let mut entries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let c = i + 1;
        let e = Entry::write(
            Some(value(i, args.value_len)),
            Version {
                ts: base_ts + c,
                dot: Dot::new(origin, c),
            },
            &empty,
        );
        entries.push((key(i, args.key_len), e));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen = VersionVector::new();
    seen.raise(origin, n);
    let header = Header {
        node: 0,
        incarnation: origin,
        taken_ms: base_ts / 1000,
        seen,
        entries: n,
    };
    let bytes = snapshot::encode(&header, &entries).map_err(|e| anyhow!("encode: {e}"))?;
    drop(entries);
    let snap = run_dir.join("store.snap");
    std::fs::write(&snap, &bytes)?;
    let snapshot_file_bytes = bytes.len() as u64;
    drop(bytes);
    let build_snapshot_s = t.elapsed().as_secs_f64();
    eprintln!(
        "footprint: snapshot of {n} keys, {} ({build_snapshot_s:.1} s)",
        format_size(snapshot_file_bytes, BINARY)
    );

    // 2. Restore it into a data directory.
    let data = run_dir.join("data");
    let t = Instant::now();
    let child = Command::new(meshkv)
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&data)
        .args(["--id", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The restore's peak memory: sampled while it runs (VmHWM is gone once it exits).
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        loop {
            if let Ok(kb) = proc_status_kb(pid, "VmHWM") {
                peak = peak.max(kb * 1024);
            }
            if done_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                return peak;
            }
        }
    });
    let out = child.wait_with_output()?;
    let restore_s = t.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let restore_peak_rss = sampler.join().unwrap_or(0);
    if !out.status.success() {
        bail!(
            "meshkv snapshot restore failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "footprint: {} ({restore_s:.1} s, peak RSS at least {})",
        String::from_utf8_lossy(&out.stdout).trim(),
        format_size(restore_peak_rss, BINARY)
    );
    std::fs::remove_file(&snap)?;
    let disk_after_restore = disk_usage(&data, &mut BTreeMap::new(), None)?;

    // 3. Certificates and a one-server config.
    let out = Command::new(meshkv)
        .args(["certs", "init", "--dir"])
        .arg(run_dir.join("certs"))
        .args(["--servers", "0"])
        .output()?;
    if !out.status.success() {
        bail!(
            "meshkv certs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_tcp_port()?;
    let http: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = run_dir.join("node0.toml");
    std::fs::write(
        &config,
        format!(
            "id = 0\ndata_dir = \"data\"\nquic_listen = \"127.0.0.1:0\"\nhttp_listen = \"{http}\"\n[certs]\ndir = \"certs\"\n"
        ),
    )?;

    // 4. Starts.
    let mut starts = Vec::new();
    for s in 1..=args.starts {
        let (mut r, t0) = spawn_server(meshkv, &config, run_dir, s)?;
        let res = measure_start(args, &mut r, t0, http, s);
        let stop_s = stop_server(&mut r, Duration::from_secs(args.stop_timeout))?;
        let mut f = res.with_context(|| {
            let log =
                std::fs::read_to_string(run_dir.join(format!("serve{s}.log"))).unwrap_or_default();
            format!("start {s}; server log:\n{log}")
        })?;
        f.stop_s = stop_s;
        eprintln!(
            "footprint: start {s}: serving line {:.3} s, ready {:.3} s, RSS {} (settled {}, peak {}), {} keys checked, stop {:.2} s",
            f.to_serving_line_s,
            f.to_ready_s,
            format_size(f.rss_at_ready, BINARY),
            format_size(f.rss_settled, BINARY),
            format_size(f.hwm, BINARY),
            f.keys_checked,
            f.stop_s
        );
        starts.push(f);
    }
    let mut by_top = BTreeMap::new();
    let disk_after_stop = disk_usage(&data, &mut by_top, None)?;

    // 5. Figures.
    let ratio = |x: u64| x as f64 / payload as f64;
    let rss_max = starts
        .iter()
        .map(|f| f.rss_settled.max(f.rss_at_ready))
        .max()
        .unwrap_or(0);
    let disk_alloc = disk_after_restore.allocated.max(disk_after_stop.allocated);
    let disk_app = disk_after_restore.apparent.max(disk_after_stop.apparent);
    let restarts: Vec<&StartFigures> = starts.iter().filter(|f| f.start > 1).collect();
    let worst_restart = restarts.iter().map(|f| f.to_ready_s).fold(0.0f64, f64::max);
    let report = Report {
        keys: n,
        key_len: args.key_len,
        value_len: args.value_len,
        payload_bytes: payload,
        snapshot_file_bytes,
        build_snapshot_s,
        restore_s,
        restore_peak_rss,
        disk_after_restore,
        disk_after_stop,
        disk_by_top_level_after_stop: by_top.clone(),
        starts: starts.clone(),
        rss_ratio: ratio(rss_max),
        disk_ratio_allocated: ratio(disk_alloc),
        disk_ratio_apparent: ratio(disk_app),
        worst_restart_to_ready_s: worst_restart,
        rss_target_met: ratio(rss_max) <= RSS_TARGET,
        disk_target_met: ratio(disk_alloc) <= DISK_TARGET,
        ready_target_met: !restarts.is_empty() && worst_restart <= READY_TARGET_S,
    };

    let sz = |b: u64| format!("{} ({b} B)", format_size(b, BINARY));
    let met = |m: bool| if m { "met" } else { "NOT met" }.to_string();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["measure", "value", "× payload", "target", "verdict"]);
    t.add_row(vec![
        format!("payload ({n} × ({} + {}) B)", args.key_len, args.value_len),
        sz(payload),
        "1.00".into(),
        String::new(),
        String::new(),
    ]);
    t.add_row(vec![
        "snapshot file".into(),
        sz(snapshot_file_bytes),
        format!("{:.2}", ratio(snapshot_file_bytes)),
        String::new(),
        String::new(),
    ]);
    t.add_row(vec![
        format!("snapshot restore: {restore_s:.1} s, peak VmRSS ≥"),
        sz(restore_peak_rss),
        format!("{:.2}", ratio(restore_peak_rss)),
        String::new(),
        String::new(),
    ]);
    for (what, u) in [
        ("after restore", disk_after_restore),
        ("after last stop", disk_after_stop),
    ] {
        t.add_row(vec![
            format!("disk {what}, allocated ({} files)", u.files),
            sz(u.allocated),
            format!("{:.2}", ratio(u.allocated)),
            format!("≤ {DISK_TARGET}×"),
            met(ratio(u.allocated) <= DISK_TARGET),
        ]);
        t.add_row(vec![
            format!("disk {what}, apparent"),
            sz(u.apparent),
            format!("{:.2}", ratio(u.apparent)),
            format!("≤ {DISK_TARGET}×"),
            met(ratio(u.apparent) <= DISK_TARGET),
        ]);
    }
    for f in &starts {
        let label = if f.start == 1 {
            "start 1 (after restore)".to_string()
        } else {
            format!("start {} (restart)", f.start)
        };
        t.add_row(vec![
            format!("{label}: VmRSS at ready"),
            sz(f.rss_at_ready),
            format!("{:.2}", ratio(f.rss_at_ready)),
            format!("≤ {RSS_TARGET}×"),
            met(ratio(f.rss_at_ready) <= RSS_TARGET),
        ]);
        t.add_row(vec![
            format!("{label}: VmRSS +{} ms (VmHWM)", args.settle_ms),
            format!("{} ({})", sz(f.rss_settled), format_size(f.hwm, BINARY)),
            format!("{:.2} ({:.2})", ratio(f.rss_settled), ratio(f.hwm)),
            format!("≤ {RSS_TARGET}×"),
            met(ratio(f.rss_settled) <= RSS_TARGET),
        ]);
        t.add_row(vec![
            format!("{label}: spawn → serving line / → ready"),
            format!("{:.3} s / {:.3} s", f.to_serving_line_s, f.to_ready_s),
            String::new(),
            format!("≤ {READY_TARGET_S} s"),
            if f.start == 1 {
                format!("({})", met(f.to_ready_s <= READY_TARGET_S))
            } else {
                met(f.to_ready_s <= READY_TARGET_S)
            },
        ]);
    }
    println!("{t}");
    println!(
        "targets: RSS ≤ {RSS_TARGET}× payload: {} ({:.2}×) | disk ≤ {DISK_TARGET}× payload: {} ({:.2}× allocated, {:.2}× apparent) | ready ≤ {READY_TARGET_S} s after restart: {} (worst {:.3} s)",
        met(report.rss_target_met),
        report.rss_ratio,
        met(report.disk_target_met),
        report.disk_ratio_allocated,
        report.disk_ratio_apparent,
        met(report.ready_target_met),
        worst_restart
    );
    let parts: Vec<String> = by_top
        .iter()
        .map(|(k, v)| format!("{k}={}", format_size(*v, BINARY)))
        .collect();
    println!(
        "data directory after stop, allocated per top-level entry: {}",
        parts.join(", ")
    );
    if let Some(p) = &args.json {
        if let Some(d) = p.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d)?;
            }
        }
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("footprint: wrote {}", p.display());
    }
    let checked: usize = starts.iter().map(|f| f.keys_checked).sum();
    if checked != args.check_keys * starts.len() {
        bail!(
            "only {checked} of {} key checks passed",
            args.check_keys * starts.len()
        );
    }
    Ok(())
}

fn measure_start(
    args: &Args,
    r: &mut Running,
    t0: Instant,
    http: SocketAddr,
    s: usize,
) -> Result<StartFigures> {
    let pid = r.child.id();
    let deadline = t0 + Duration::from_secs(args.ready_timeout);
    let mut serving: Option<f64> = None;
    let ready;
    loop {
        while let Ok((at, line)) = r.stdout_rx.try_recv() {
            if serving.is_none() && line.starts_with("meshkv serve:") && line.contains("http=") {
                serving = Some(at.duration_since(t0).as_secs_f64());
            }
        }
        if let Some(st) = r.child.try_wait()? {
            bail!("meshkv serve exited early: {st}");
        }
        if let Ok((200, _)) = http_get(http, "/health/ready", Duration::from_secs(2)) {
            ready = t0.elapsed().as_secs_f64();
            break;
        }
        if Instant::now() > deadline {
            bail!("not ready within {} s", args.ready_timeout);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss_at_ready = proc_status_kb(pid, "VmRSS")? * 1024;
    let serving = match serving {
        Some(v) => v,
        None => {
            let (at, line) = r
                .stdout_rx
                .recv_timeout(Duration::from_secs(10))
                .context("no serving line on stdout")?;
            if !line.contains("http=") {
                bail!("unexpected stdout line: {line}");
            }
            at.duration_since(t0).as_secs_f64()
        }
    };
    // Sanity check: random keys read back with the right value.
    let mut ok = 0;
    for _ in 0..args.check_keys {
        let i = rand::random::<u64>() % args.keys;
        let k = String::from_utf8(key(i, args.key_len))?;
        let (st, body) = http_get(
            http,
            &format!("/kv/{k}?consistency=session"),
            Duration::from_secs(10),
        )?;
        if st != 200 {
            eprintln!(
                "footprint: start {s}: GET {k}: status {st}: {}",
                String::from_utf8_lossy(&body)
            );
            continue;
        }
        if body != value(i, args.value_len) {
            eprintln!(
                "footprint: start {s}: GET {k}: wrong value {:?}",
                String::from_utf8_lossy(&body)
            );
            continue;
        }
        ok += 1;
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let rss_settled = proc_status_kb(pid, "VmRSS")? * 1024;
    let hwm = proc_status_kb(pid, "VmHWM")? * 1024;
    Ok(StartFigures {
        start: s,
        to_serving_line_s: serving,
        to_ready_s: ready,
        rss_at_ready,
        rss_settled,
        hwm,
        keys_checked: ok,
        stop_s: 0.0,
    })
}
