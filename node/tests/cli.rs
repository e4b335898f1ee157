//! The command-line client through the built binary, against real `meshkv serve`
//! processes: output, exit codes, failover, session files, status, TLS.
//!
//! Like `tests/http.rs`: own temp dir, certificates and OS-picked ports per test,
//! traffic only to 127.0.0.1, every process killed by pid (the `Proc` guard).

use anyhow::{anyhow, bail, Result};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_meshkv");

/// A child process, killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshkv serve` processes from config files in a temp dir.
struct Cluster {
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    urls: Vec<String>,
}

/// `peers[i]`: the ids node `i` lists; `http`: extra `[http]` lines for every node.
fn cluster(peers: &[Vec<u64>], http: &str) -> Result<Cluster> {
    cluster_with(peers, http, &[])
}

/// Like [`cluster`], with `files` (name, contents) written to the dir first.
fn cluster_with(peers: &[Vec<u64>], http: &str, files: &[(&str, &str)]) -> Result<Cluster> {
    let dir = tempfile::tempdir()?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    let n = peers.len() as u64;
    support::write_certs(dir.path(), n)?;
    let ports = support::reserve_udp_ports(n)?;
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for (i, ps) in peers.iter().enumerate() {
        let text = support::server_config(i as u64, &ports, ps, http, "");
        let config = dir.path().join(format!("node{i}.toml"));
        std::fs::write(&config, text)?;
        let (child, line) =
            support::spawn_serve(&config, &dir.path().join(format!("node{i}.log")))?;
        procs.push(Proc(child));
        let url = support::http_url(&line).ok_or_else(|| anyhow!("node {i} printed {line:?}"))?;
        urls.push(url.to_string());
    }
    Ok(Cluster { dir, procs, urls })
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} stdout {:?} stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_with(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Result<Out> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("MESHKV_ENDPOINTS")
        .env_remove("MESHKV_TOKEN")
        .env("MESHKV_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    if let Some(input) = stdin {
        let mut si = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        si.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn run(args: &[&str]) -> Result<Out> {
    run_with(args, None, &[])
}

fn expect(out: Out, code: i32) -> Result<Out> {
    if out.code != code {
        bail!("want exit {code}, got {out:?}");
    }
    if code != 0 {
        let lines: Vec<&str> = out.stderr.trim_end().lines().collect();
        if lines.len() != 1 || !lines[0].starts_with("meshkv: ") {
            bail!("want one `meshkv: ` line on stderr, got {out:?}");
        }
    }
    Ok(out)
}

fn closed_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))
}

#[test]
fn get_put_del_output_and_exit_codes() -> Result<()> {
    let cl = cluster(&[vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]], "")?;
    let session: PathBuf = cl.dir.path().join("session.json");
    let s = path_str(&session)?;
    let eps = cl.urls.join(",");
    let e = eps.as_str();
    let first = cl.urls[0].as_str();

    let o = expect(
        run(&["put", "--endpoints", e, "--session", s, "k", "v1"])?,
        0,
    )?;
    assert_eq!(o.stdout, "");
    let o = expect(
        run(&["put", "--endpoints", e, "--session", s, "--prev", "k", "v2"])?,
        0,
    )?;
    assert_eq!(o.stdout, "v1\n");
    let o = expect(run(&["get", "--endpoints", e, "--session", s, "k"])?, 0)?;
    assert_eq!(o.stdout, "v2\n");
    let o = expect(
        run(&["get", "--endpoints", e, "--session", s, "--raw", "k"])?,
        0,
    )?;
    assert_eq!(o.stdout, "v2");

    // The value from stdin, bytes as they are.
    let o = expect(
        run_with(
            &["put", "--endpoints", first, "--session", s, "k"],
            Some(b"line one\nline two\n"),
            &[],
        )?,
        0,
    )?;
    assert_eq!(o.stdout, "");
    let o = expect(run(&["get", "--endpoints", first, "--raw", "k"])?, 0)?;
    assert_eq!(o.stdout, "line one\nline two\n");

    // Keys are any bytes; they travel percent-encoded.
    expect(
        run(&["put", "--endpoints", first, "a key/with %and ü", "x"])?,
        0,
    )?;
    let o = expect(run(&["get", "--endpoints", first, "a key/with %and ü"])?, 0)?;
    assert_eq!(o.stdout, "x\n");

    // Not found: exit 1, nothing on stdout.
    let o = expect(run(&["get", "--endpoints", e, "missing"])?, 1)?;
    assert_eq!(o.stdout, "");
    assert!(o.stderr.contains("not found"), "{o:?}");

    // Delete, then not found; --prev shows what was deleted.
    let o = expect(
        run(&["del", "--endpoints", e, "--session", s, "--prev", "k"])?,
        0,
    )?;
    assert_eq!(o.stdout, "line one\nline two\n\n");
    expect(run(&["get", "--endpoints", e, "--session", s, "k"])?, 1)?;
    expect(run(&["del", "--endpoints", e, "never-there"])?, 0)?;

    // Refused by the server: exit 5 with the status and reason.
    let big = vec![b'x'; (1 << 20) + 1];
    let o = expect(
        run_with(&["put", "--endpoints", first, "big"], Some(&big), &[])?,
        5,
    )?;
    assert!(o.stderr.contains("413"), "{o:?}");

    // The environment supplies endpoints.
    let o = expect(
        run_with(
            &["get", "a key/with %and ü"],
            None,
            &[("MESHKV_ENDPOINTS", first)],
        )?,
        0,
    )?;
    assert_eq!(o.stdout, "x\n");

    // Usage errors: exit 2.
    assert_eq!(run(&["get"])?.code, 2);
    expect(run(&["get", "--endpoints", "ftp://127.0.0.1:1", "k"])?, 2)?;
    expect(run(&["get", "--endpoints", "https://127.0.0.1:1", "k"])?, 2)?;

    // A session file that is not one: exit 6, and it is left alone.
    std::fs::write(&session, "{ not json")?;
    expect(run(&["get", "--endpoints", e, "--session", s, "k"])?, 6)?;
    assert_eq!(std::fs::read_to_string(&session)?, "{ not json");
    drop(cl.procs);
    Ok(())
}

#[test]
fn endpoints_fail_over_and_unreachable_is_exit_4() -> Result<()> {
    let cl = cluster(&[vec![]], "")?;
    let dead = format!("http://127.0.0.1:{}", closed_port()?);
    let both = format!("{dead},{}", cl.urls[0]);
    expect(run(&["put", "--endpoints", &both, "k", "v"])?, 0)?;
    let o = expect(run(&["get", "--endpoints", &both, "k"])?, 0)?;
    assert_eq!(o.stdout, "v\n");
    let o = expect(
        run(&["get", "--endpoints", &dead, "--timeout-ms", "2000", "k"])?,
        4,
    )?;
    assert!(o.stderr.contains("unreachable"), "{o:?}");
    let o = expect(run(&["put", "--endpoints", &dead, "k", "v"])?, 4)?;
    assert!(o.stderr.contains(&dead), "{o:?}");
    Ok(())
}

#[test]
fn session_file_gives_read_your_writes_and_err_dep_across_commands() -> Result<()> {
    // 0 and 1 replicate to each other; 2 is isolated.
    let cl = cluster(&[vec![0, 1], vec![0, 1], vec![]], "")?;
    let session = cl.dir.path().join("s.json");
    let s = path_str(&session)?;
    let (u0, u1, u2) = (
        cl.urls[0].as_str(),
        cl.urls[1].as_str(),
        cl.urls[2].as_str(),
    );

    expect(
        run(&["put", "--endpoints", u0, "--session", s, "k", "mine"])?,
        0,
    )?;
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&session)?)?;
    let token = saved["keys"]["k"]
        .as_str()
        .ok_or_else(|| anyhow!("no token for k in {saved}"))?
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    // Read-Your-Writes on another server, in another process.
    let o = expect(run(&["get", "--endpoints", u1, "--session", s, "k"])?, 0)?;
    assert_eq!(o.stdout, "mine\n");

    // The isolated server cannot serve this session: ERR_DEP, exit 3, after the wait.
    let t = Instant::now();
    let o = expect(
        run(&[
            "get",
            "--endpoints",
            u2,
            "--session",
            s,
            "--wait-ms",
            "300",
            "k",
        ])?,
        3,
    )?;
    assert!(o.stderr.contains("ERR_DEP"), "{o:?}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A write there is refused as well, and nothing is written.
    expect(
        run(&[
            "put",
            "--endpoints",
            u2,
            "--session",
            s,
            "--wait-ms",
            "0",
            "k",
            "stale",
        ])?,
        3,
    )?;
    // Without the session the isolated server just has nothing.
    expect(run(&["get", "--endpoints", u2, "k"])?, 1)?;
    // With failover the next endpoint serves the session.
    let both = format!("{u2},{u1}");
    let o = expect(
        run(&[
            "get",
            "--endpoints",
            &both,
            "--session",
            s,
            "--wait-ms",
            "0",
            "k",
        ])?,
        0,
    )?;
    assert_eq!(o.stdout, "mine\n");

    // A delete is remembered too; once the tombstone is dropped (every server holds
    // it), the session still reads "not found", not ERR_DEP.
    expect(run(&["del", "--endpoints", u0, "--session", s, "k"])?, 0)?;
    expect(run(&["get", "--endpoints", u1, "--session", s, "k"])?, 1)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Healthy (0) or digests still differing for a moment (8).
        let o = run(&["status", "--endpoints", &format!("{u0},{u1}"), "-o", "json"])?;
        assert!(matches!(o.code, 0 | 8), "{o:?}");
        let left: u64 = o
            .stdout
            .lines()
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter_map(|e| e["status"]["tombstones"].as_u64())
            .sum();
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("tombstones never dropped: {o:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = expect(
        run(&[
            "get",
            "--endpoints",
            u1,
            "--session",
            s,
            "--wait-ms",
            "0",
            "k",
        ])?,
        1,
    )?;
    assert!(o.stderr.contains("not found"), "{o:?}");
    Ok(())
}

#[test]
fn status_prints_every_endpoint() -> Result<()> {
    let cl = cluster(&[vec![0, 1], vec![0, 1]], "")?;
    let eps = cl.urls.join(",");
    // Wait for the link so the summary is stable.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // 8 (not healthy) until the link is up.
        let o = run(&["status", "--endpoints", &eps])?;
        assert!(matches!(o.code, 0 | 8), "{o:?}");
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{o:?}");
        assert!(
            lines[0].contains("node=0") && lines[1].contains("node=1"),
            "{o:?}"
        );
        if lines.iter().all(|l| l.contains("peers_up=1/1")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("links never up: {o:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = expect(run(&["status", "--endpoints", &eps, "-o", "json"])?, 0)?;
    let v: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(v.len(), 2, "{o:?}");
    assert_eq!(v[1]["status"]["node"], 1);
    assert!(v[0]["status"]["digest_root"].is_string());
    let o = expect(run(&["status", "--endpoints", &eps, "-o", "table"])?, 0)?;
    assert!(
        o.stdout.contains("digest") && o.stdout.contains("1/1"),
        "{o:?}"
    );
    let o = expect(run(&["status", "--endpoints", &eps, "--check"])?, 0)?;
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    // A closed stdout is not an error.
    let sh = format!("{BIN} status --endpoints {eps} -o json | head -c 1");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .output()?;
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let with_dead = format!("{eps},http://127.0.0.1:{}", closed_port()?);
    let o = run(&["status", "--endpoints", &with_dead])?;
    assert_eq!(o.code, 4, "{o:?}");
    assert_eq!(o.stdout.lines().count(), 3, "{o:?}");
    assert!(o.stdout.contains("unreachable"), "{o:?}");
    let o = run(&["status", "--endpoints", &with_dead, "--check"])?;
    assert_eq!(o.code, 4, "{o:?}");
    assert!(
        o.stdout.is_empty() && o.stderr.contains("unreachable"),
        "{o:?}"
    );
    Ok(())
}

#[test]
fn status_exits_8_with_a_peer_down_and_check_says_which() -> Result<()> {
    // Three servers; 2 is killed: 0 and 1 answer, their links to 2 go down.
    let mut cl = cluster(&[vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]], "")?;
    drop(cl.procs.remove(2));
    let eps = cl.urls[..2].join(",");
    let deadline = Instant::now() + Duration::from_secs(20);
    let o = loop {
        let o = run(&["status", "--endpoints", &eps, "--check"])?;
        if o.stderr.matches("link to server 2 is down").count() == 2 || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(o.code, 8, "{o:?}");
    assert_eq!(
        o.stderr.matches("link to server 2 is down").count(),
        2,
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "{o:?}");
    let o = run(&["status", "--endpoints", &eps])?;
    assert_eq!((o.code, o.stdout.lines().count()), (8, 2), "{o:?}");
    // get -o json, put -o json: parsed.
    let u0 = cl.urls[0].clone();
    let o = expect(
        run(&[
            "put",
            "--endpoints",
            &u0,
            "-o",
            "json",
            "--consistency",
            "session",
            "a/b",
            "v 1",
        ])?,
        0,
    )?;
    let put: serde_json::Value = serde_json::from_str(o.stdout.trim())?;
    assert_eq!(
        (&put["key"], &put["previous"]),
        (&"a%2Fb".into(), &serde_json::Value::Null)
    );
    let o = expect(
        run(&[
            "get",
            "--endpoints",
            &u0,
            "-o",
            "json",
            "--consistency",
            "session",
            "a/b",
        ])?,
        0,
    )?;
    let got: serde_json::Value = serde_json::from_str(o.stdout.trim())?;
    assert_eq!(got["value"], "v%201");
    assert_eq!(got["version"], put["version"]);
    let o = expect(run(&["ls", "--endpoints", &u0, "-o", "table"])?, 0)?;
    assert!(
        o.stdout.contains("a/b") && o.stdout.contains("v 1"),
        "{o:?}"
    );
    let o = expect(
        run(&["member", "list", "--endpoints", &u0, "-o", "json"])?,
        0,
    )?;
    let members: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(members.len(), 3, "{o:?}");
    cl.procs.clear();
    Ok(())
}

#[test]
fn https_with_client_certificate_and_token() -> Result<()> {
    let cl = cluster_with(
        &[vec![]],
        "tls = true\nclient_auth = \"cert\"\nbearer_token_file = \"token\"",
        &[("token", "t0ken\n"), ("bad-token", "nope\n")],
    )?;
    let url = cl.urls[0].as_str();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let d = cl.dir.path();
    let certs = d.join("certs");
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("client-100.pem"),
        certs.join("client-100.key"),
    );
    let (ca, cert, key, token, bad) = (
        path_str(&ca)?,
        path_str(&cert)?,
        path_str(&key)?,
        path_str(&d.join("token"))?.to_string(),
        path_str(&d.join("bad-token"))?.to_string(),
    );
    let tls = [
        "--endpoints",
        url,
        "--cacert",
        ca,
        "--client-cert",
        cert,
        "--client-key",
        key,
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        tls.iter()
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let go = |args: Vec<String>, env: &[(&str, &str)]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with(&a, None, env)
    };

    let mut put = vec!["put".to_string()];
    put.extend(with(&["--token-file", &token, "k", "secret value"]));
    expect(go(put, &[])?, 0)?;
    let mut get = vec!["get".to_string()];
    get.extend(with(&["--token-file", &token, "k"]));
    assert_eq!(expect(go(get, &[])?, 0)?.stdout, "secret value\n");
    // The token from the environment.
    let mut get = vec!["get".to_string()];
    get.extend(with(&["k"]));
    assert_eq!(
        expect(go(get, &[("MESHKV_TOKEN", "t0ken")])?, 0)?.stdout,
        "secret value\n"
    );
    // No token, or a wrong one: refused, exit 5.
    let mut get = vec!["get".to_string()];
    get.extend(with(&["k"]));
    let o = expect(go(get, &[])?, 5)?;
    assert!(o.stderr.contains("401"), "{o:?}");
    let mut get = vec!["get".to_string()];
    get.extend(with(&["--token-file", &bad, "k"]));
    expect(go(get, &[])?, 5)?;
    // No client certificate: the TLS layer refuses, exit 4.
    let o = expect(
        run_with(
            &[
                "get",
                "--endpoints",
                url,
                "--cacert",
                ca,
                "--token-file",
                &token,
                "k",
            ],
            None,
            &[],
        )?,
        4,
    )?;
    assert!(o.stderr.contains("unreachable"), "{o:?}");
    // Status over TLS.
    let mut st = vec!["status".to_string()];
    st.extend(with(&["--token-file", &token]));
    let o = expect(go(st, &[])?, 0)?;
    assert!(o.stdout.contains("node=0"), "{o:?}");
    Ok(())
}

#[test]
fn compare_and_set_from_the_command_line() -> Result<()> {
    let cl = cluster(&[vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]], "")?;
    let session: PathBuf = cl.dir.path().join("cas-session.json");
    let s = path_str(&session)?;
    let eps = cl.urls.join(",");
    let e = eps.as_str();
    // Create only if absent: the second create fails with exit 7.
    expect(
        run(&[
            "put",
            "--endpoints",
            e,
            "--session",
            s,
            "--if-absent",
            "lock",
            "a",
        ])?,
        0,
    )?;
    let o = expect(
        run(&["put", "--endpoints", e, "--if-absent", "lock", "b"])?,
        7,
    )?;
    assert!(o.stderr.contains("ERR_PRECONDITION"), "{o:?}");
    // If-Match the version the session file recorded; a stale version fails.
    let v = meshkv_node::cli::SessionFile::load(&session)
        .map_err(|e| anyhow!(e))?
        .token(b"lock")
        .ok_or_else(|| anyhow!("no token for lock"))?
        .to_string();
    expect(
        run(&["put", "--endpoints", e, "--if-version", &v, "lock", "c"])?,
        0,
    )?;
    let o = expect(
        run(&["del", "--endpoints", e, "--if-version", &v, "lock"])?,
        7,
    )?;
    assert!(o.stderr.contains("at version"), "{o:?}");
    let o = expect(run(&["get", "--endpoints", e, "lock"])?, 0)?;
    assert_eq!(o.stdout, "c\n");
    // A malformed version is a usage error; both conditions at once too.
    expect(
        run(&["put", "--endpoints", e, "--if-version", "nope", "lock", "d"])?,
        2,
    )?;
    // (clap's usage errors take several lines: only the exit code is checked.)
    let both = [
        "put",
        "--endpoints",
        e,
        "--if-version",
        &v,
        "--if-absent",
        "lock",
        "d",
    ];
    assert_eq!(run(&both)?.code, 2);
    // The level can be named; an unknown one is a usage error.
    let o = expect(
        run(&["get", "--endpoints", e, "--consistency", "session", "lock"])?,
        0,
    )?;
    assert_eq!(o.stdout, "c\n");
    let o = run(&["get", "--endpoints", e, "--consistency", "strong", "lock"])?;
    assert_eq!(o.code, 2, "{o:?}");
    Ok(())
}
