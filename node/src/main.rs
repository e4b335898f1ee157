//! `meshkv`: the server and client processes, certificate tooling, the standalone
//! server (`serve`, see [`meshkv_node::config`]) and the HTTP command-line client
//! (`get`, `put`, `del`, `status`, see [`meshkv_node::cli`] for exit codes).

use clap::{Parser, Subcommand};
use meshkv_node::cli::{self, ClientArgs};
use meshkv_node::client::Client;
use meshkv_node::meshkv_core::commit::SyncPolicy;
use meshkv_node::net::NetTuning;
use meshkv_node::pki::{self, Identity, TlsMaterial};
use meshkv_node::server::{Server, ServerOpts};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "meshkv",
    version,
    about = "A replicated key-value store over a QUIC mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a server driven by the master over stdin/stdout (exits when stdin closes).
    Server {
        /// Server id.
        #[arg(long)]
        id: u64,
        /// Data directory (sled).
        #[arg(long)]
        data: PathBuf,
        /// Directory with ca.pem and server-ID.pem/.key.
        #[arg(long)]
        certs: PathBuf,
        /// QUIC listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// HTTP listen address (plain HTTP, no token: keep it on loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        http: SocketAddr,
        /// Other servers' writes are fsynced within this many ms (0: every batch
        /// before it is visible); the environment variable reaches servers the master
        /// starts.
        #[arg(long, env = "MESHKV_REPLICA_FSYNC_MS", default_value_t = SyncPolicy::default().delay / 1000)]
        replica_fsync_ms: u64,
    },
    /// Run a standalone server from a TOML config file (stops on SIGINT/SIGTERM).
    Serve {
        /// The config file (see docs/http.md and examples/cluster/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Read KEY over HTTP and print its value (exit 1: not found, 3: ERR_DEP, 4: unreachable).
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the value exactly, without a trailing newline.
        #[arg(long)]
        raw: bool,
        /// The key (any bytes).
        key: OsString,
    },
    /// Write KEY = VALUE over HTTP (VALUE omitted: read it from stdin).
    Put {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the previous value, if there was one.
        #[arg(long)]
        prev: bool,
        /// Write only if the key's current version is VERSION (from a read's or a
        /// write's X-Meshkv-Version); otherwise exit 7 (ERR_PRECONDITION).
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_version: Option<String>,
        /// Write only if the key has no value; otherwise exit 7 (ERR_PRECONDITION).
        #[arg(long)]
        if_absent: bool,
        /// The value expires SECONDS after the write, on every server at once
        /// (the key reads as absent from then on; watchers see an `expire`).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=meshkv_node::http::MAX_TTL_SECS))]
        ttl: Option<u64>,
        /// The key.
        key: OsString,
        /// The value (default: stdin). A value starting with '-' goes after `--`.
        value: Option<OsString>,
    },
    /// Delete KEY over HTTP (a replicated tombstone).
    Del {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the previous value, if there was one.
        #[arg(long)]
        prev: bool,
        /// Delete only if the key's current version is VERSION; otherwise exit 7.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<String>,
        /// The key.
        key: OsString,
    },
    /// List the live keys under PREFIX (every key without one), in byte order.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        /// Print `KEY<TAB>VALUE` lines (text output).
        #[arg(long)]
        values: bool,
        /// The key prefix (any bytes).
        prefix: Option<OsString>,
    },
    /// Print every change to keys under PREFIX as it happens (until interrupted).
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        /// Resume after this event id (printed with -o json).
        #[arg(long)]
        after: Option<String>,
        /// The key prefix (any bytes).
        prefix: Option<OsString>,
    },
    /// Save a server's whole store to a file, or build a data directory from one.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Show the status of every endpoint (exit 4 when one is unreachable).
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Print nothing but what is wrong (unreachable endpoints, servers not ready,
        /// links not up, digests that differ), one line each on stderr.
        #[arg(long)]
        check: bool,
    },
    /// Change or list the cluster's membership (one endpoint is enough: the change is
    /// replicated to every server).
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// Run a client driven by the master over stdin/stdout (exits when stdin closes).
    Client {
        /// Client id.
        #[arg(long)]
        id: u64,
        /// Directory with ca.pem and client-ID.pem/.key.
        #[arg(long)]
        certs: PathBuf,
    },
    /// Certificate tooling.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Stream a consistent, checksummed snapshot from the first endpoint that answers.
    Save {
        #[command(flatten)]
        client: ClientArgs,
        /// Where to write it.
        file: PathBuf,
    },
    /// Build a new data directory for server ID from a snapshot (the directory must
    /// not exist or be empty); start the server on it to rejoin.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The id of the server that will run on it.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add server ID, reachable at ADDR (its QUIC ip:port), or change its address.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u64,
        /// Its QUIC address.
        addr: String,
    },
    /// Remove server ID: every server cuts and refuses it, and stops keeping history
    /// for it. Remove only a server that is gone for good or was stabilized first.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u64,
    },
    /// List the members as the first reachable endpoint knows them
    /// (id, state, link, address; tab-separated).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create (or reuse) the cluster CA in DIR and issue server and client certificates.
    Init {
        /// Output directory (never commit it).
        #[arg(long, default_value = "certs/out")]
        dir: PathBuf,
        /// Server ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        servers: Vec<u64>,
        /// Client ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<u64>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn material(dir: &std::path::Path, who: Identity) -> Result<TlsMaterial, String> {
    let (ca, cert, key) = pki::cert_paths(dir, who);
    TlsMaterial::load(&ca, &cert, &key, who).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<u8, String> {
    match cli.cmd {
        Cmd::Server {
            id,
            data,
            certs,
            listen,
            http,
            replica_fsync_ms,
        } => {
            let tls = material(&certs, Identity::server(id))?;
            let mut opts = ServerOpts::new(id, data, listen, tls);
            opts.replica_sync =
                SyncPolicy::after_millis(replica_fsync_ms, SyncPolicy::default().batches);
            let server = Server::start(opts).await.map_err(|e| e.to_string())?;
            let web = match meshkv_node::http::start(
                server.clone(),
                meshkv_node::http::HttpOpts::plain(http),
            )
            .await
            {
                Ok(w) => w,
                Err(e) => {
                    server.shutdown().await;
                    return Err(e.to_string());
                }
            };
            meshkv_node::control::run_server(server, Some(web.addr())).await;
            web.stop();
            Ok(0)
        }
        Cmd::Serve { config } => meshkv_node::config::serve(&config).await.map(|()| 0),
        Cmd::Get { client, raw, key } => Ok(cli::get(&client, &cli::arg_bytes(&key), raw).await),
        Cmd::Put {
            client,
            prev,
            if_version,
            if_absent,
            ttl,
            key,
            value,
        } => {
            let cond = match (if_version, if_absent) {
                (Some(v), _) => cli::WriteCond::Version(v),
                (None, true) => cli::WriteCond::Absent,
                (None, false) => cli::WriteCond::Always,
            };
            let value = match value {
                Some(v) => cli::arg_bytes(&v),
                None => match cli::stdin_value() {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("meshkv: {e}");
                        return Ok(cli::exit::LOCAL);
                    }
                },
            };
            Ok(cli::write(&client, &cli::arg_bytes(&key), Some(value), prev, cond, ttl).await)
        }
        Cmd::Del {
            client,
            prev,
            if_version,
            key,
        } => {
            let cond = if_version.map_or(cli::WriteCond::Always, cli::WriteCond::Version);
            Ok(cli::write(&client, &cli::arg_bytes(&key), None, prev, cond, None).await)
        }
        Cmd::Ls {
            client,
            values,
            prefix,
        } => {
            let prefix = prefix.as_deref().map(cli::arg_bytes).unwrap_or_default();
            Ok(cli::ls(&client, &prefix, values).await)
        }
        Cmd::Watch {
            client,
            after,
            prefix,
        } => {
            let prefix = prefix.as_deref().map(cli::arg_bytes).unwrap_or_default();
            Ok(cli::watch(&client, &prefix, after).await)
        }
        Cmd::Snapshot { cmd } => Ok(match cmd {
            SnapshotCmd::Save { client, file } => cli::snapshot_save(&client, &file).await,
            SnapshotCmd::Restore { file, data_dir, id } => {
                cli::snapshot_restore(&file, &data_dir, id)
            }
        }),
        Cmd::Status { client, check } => Ok(cli::status(&client, check).await),
        Cmd::Member { cmd } => {
            let (client, op) = match cmd {
                MemberCmd::Add { client, id, addr } => (client, cli::MemberOp::Add(id, addr)),
                MemberCmd::Remove { client, id } => (client, cli::MemberOp::Remove(id)),
                MemberCmd::List { client } => (client, cli::MemberOp::List),
            };
            Ok(cli::member(&client, op).await)
        }
        Cmd::Client { id, certs } => {
            let tls = material(&certs, Identity::client(id))?;
            let client = Client::new(&tls, &NetTuning::default()).map_err(|e| e.to_string())?;
            meshkv_node::control::run_client(client).await;
            Ok(0)
        }
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    dir,
                    servers,
                    clients,
                },
        } => {
            let mut who: Vec<Identity> = servers.into_iter().map(Identity::server).collect();
            who.extend(clients.into_iter().map(Identity::client));
            pki::write_cluster_certs(&dir, &who).map_err(|e| e.to_string())?;
            eprintln!(
                "wrote the CA and {} certificates to {}",
                who.len(),
                dir.display()
            );
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshkv: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(run(cli));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("meshkv: {e}");
            ExitCode::from(1)
        }
    }
}
