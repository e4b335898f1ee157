//! What the HTTP and CLI tests share: certificates, ports and config files for a
//! cluster of `meshkv serve` processes in a temporary directory.

use meshkv_node::pki::{self, Identity};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Certificates for servers `0..n` and client 100 in `dir/certs`.
pub fn write_certs(dir: &Path, n: u64) -> anyhow::Result<()> {
    let mut who: Vec<Identity> = (0..n).map(Identity::server).collect();
    who.push(Identity::client(100));
    pki::write_cluster_certs(&dir.join("certs"), &who)?;
    Ok(())
}

/// `n` distinct free UDP ports on 127.0.0.1 (every socket is held until all ports are
/// known, then released for the servers to bind).
pub fn reserve_udp_ports(n: u64) -> std::io::Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// The config of server `id` listening on `ports[id]`, listing `peers`, with extra
/// lines for its `[http]` and `[limits]` tables.
pub fn server_config(id: u64, ports: &[u16], peers: &[u64], http: &str, limits: &str) -> String {
    let mut text = format!(
        "id = {id}\ndata_dir = \"data{id}\"\nquic_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:0\"\n\n[certs]\ndir = \"certs\"\n\n",
        ports[id as usize]
    );
    for &p in peers {
        text.push_str(&format!(
            "[[peers]]\nid = {p}\naddr = \"127.0.0.1:{}\"\n\n",
            ports[p as usize]
        ));
    }
    text.push_str(&format!("[http]\n{http}\n\n[limits]\n{limits}\n"));
    text
}

/// Start `meshkv serve --config CONFIG` (stderr to `log`) and wait for the line it prints
/// once it serves (`meshkv serve: node N quic=… http=…`). On failure the process is
/// killed and reaped before the error is returned.
pub fn spawn_serve(config: &Path, log: &Path) -> anyhow::Result<(Child, String)> {
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("MESHKV_LOG", "warn")
        .spawn()?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("no stdout");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("{} did not start; log: {text}", config.display())
        }
    }
}

/// The `http=` address in a `meshkv serve` ready line.
pub fn http_url(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
}
