//! A real cluster for the fault suite's own tests: `meshkv serve` processes started
//! from the release binary (`target/release/meshkv`, built by `make build`), with
//! certificates from `meshkv certs init`, configs in a temporary directory,
//! OS-picked ports on 127.0.0.1. Every process is killed by its pid and reaped on
//! drop.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where cargo put this package's binaries (and the workspace's other artefacts).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshkv-test"))
        .parent()
        .expect("the meshkv-test binary has a parent dir")
        .to_path_buf()
}

/// A child process, killed (by pid) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running cluster.
pub struct Cluster {
    /// The servers (dropped, so killed, before the directory goes).
    procs: Vec<Proc>,
    /// Each server's HTTP address, `127.0.0.1:PORT`, in id order.
    pub http: Vec<String>,
    /// Certificates, configs, data directories and logs.
    pub dir: tempfile::TempDir,
}

fn config(id: usize, quic_ports: &[u16]) -> String {
    let mut text = format!(
        "id = {id}\ndata_dir = \"data{id}\"\nquic_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:0\"\n\n[certs]\ndir = \"certs\"\n\n",
        quic_ports[id]
    );
    for (peer, port) in quic_ports.iter().enumerate() {
        text.push_str(&format!(
            "[[peers]]\nid = {peer}\naddr = \"127.0.0.1:{port}\"\n\n"
        ));
    }
    text
}

/// `n` distinct free UDP ports on 127.0.0.1 (all held until all are known).
fn udp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

impl Cluster {
    /// Start `n` servers of `meshkv` and wait for each one's "serving" line.
    pub fn start(meshkv: &Path, n: usize) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let out = Command::new(meshkv)
            .args(["certs", "init", "--dir"])
            .arg(dir.path().join("certs"))
            .args(["--servers", &ids.join(",")])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", meshkv.display()))?;
        if !out.status.success() {
            return Err(format!(
                "meshkv certs init: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let ports = udp_ports(n).map_err(|e| e.to_string())?;
        let mut c = Cluster {
            procs: Vec::new(),
            http: Vec::new(),
            dir,
        };
        for id in 0..n {
            let cfg = c.dir.path().join(format!("node{id}.toml"));
            std::fs::write(&cfg, config(id, &ports)).map_err(|e| e.to_string())?;
            let log = c.dir.path().join(format!("node{id}.log"));
            let (proc, line) = spawn(meshkv, &cfg, &log)?;
            c.procs.push(proc);
            let http = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
                .map(|u| u.trim_start_matches("http://").trim_end_matches('/'))
                .ok_or_else(|| format!("node {id} printed {line:?}"))?;
            c.http.push(http.to_string());
        }
        Ok(c)
    }

    /// The log of server `id`.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }
}

/// `meshkv serve --config CFG` (stderr to `log`), and its first stdout line
/// (`meshkv serve: node N quic=… http=…`), within 30 s.
fn spawn(meshkv: &Path, cfg: &Path, log: &Path) -> Result<(Proc, String), String> {
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new(meshkv)
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("MESHKV_LOG", "warn")
        .spawn()
        .map_err(|e| format!("{}: {e}", meshkv.display()))?;
    let stdout = child.stdout.take();
    let proc = Proc(child);
    let Some(stdout) = stdout else {
        return Err("no stdout".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if !line.is_empty() => Ok((proc, line)),
        _ => Err(format!(
            "{} did not start; log: {}",
            cfg.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        )),
    }
}
