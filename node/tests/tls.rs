//! Mutual-TLS QUIC over 127.0.0.1: who may connect, and what each side learns.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use meshkv_node::net::{client_endpoint, connect, server_endpoint, NetError, NetTuning};
use meshkv_node::pki::{
    cert_paths, peer_identity, write_cluster_certs, Ca, Identity, PkiError, TlsMaterial,
};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for any single network step in these tests.
const STEP: Duration = Duration::from_secs(5);
/// Upper bound for a whole test.
const TEST: Duration = Duration::from_secs(20);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Accepts one connection, reports the client's identity, and echoes one bi
/// stream back with an `echo:` prefix.
fn spawn_echo_server(ep: quinn::Endpoint) -> JoinHandle<Result<Identity>> {
    tokio::spawn(async move {
        let incoming = timeout(STEP, ep.accept())
            .await
            .context("accept timed out")?
            .ok_or_else(|| anyhow!("endpoint closed"))?;
        let conn = timeout(STEP, incoming)
            .await
            .context("server handshake timed out")??;
        let who = peer_identity(&conn)?;
        let (mut send, mut recv) = timeout(STEP, conn.accept_bi())
            .await
            .context("accept_bi timed out")??;
        let data = timeout(STEP, recv.read_to_end(1 << 16))
            .await
            .context("server read timed out")??;
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&data);
        send.write_all(&reply).await?;
        send.finish()?;
        // Wait for the client to close so the reply is not cut off.
        let _ = timeout(STEP, conn.closed()).await;
        Ok(who)
    })
}

/// Opens a bi stream, sends `msg`, and reads the whole reply.
async fn round_trip(conn: &quinn::Connection, msg: &[u8]) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(msg).await?;
    send.finish()?;
    Ok(recv.read_to_end(1 << 16).await?)
}

#[tokio::test]
async fn same_ca_round_trip_and_identities() -> Result<()> {
    timeout(TEST, async {
        let ca = Ca::generate("t1")?;
        let tuning = NetTuning::default();
        let server = server_endpoint(localhost(), &ca.material(Identity::server(3))?, &tuning)?;
        let addr = server.local_addr()?;
        let served = spawn_echo_server(server.clone());

        let client = client_endpoint(localhost(), &ca.material(Identity::client(7))?, &tuning)?;
        let conn = connect(&client, addr, Identity::server(3), STEP).await?;
        assert_eq!(peer_identity(&conn)?, Identity::server(3));
        let reply = timeout(STEP, round_trip(&conn, b"hello")).await??;
        assert_eq!(reply, b"echo:hello");
        conn.close(0u32.into(), b"done");

        let seen = served.await??;
        assert_eq!(seen, Identity::client(7));
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn server_endpoint_dials_another_server() -> Result<()> {
    timeout(TEST, async {
        let ca = Ca::generate("t1b")?;
        let tuning = NetTuning::default();
        let s3 = server_endpoint(localhost(), &ca.material(Identity::server(3))?, &tuning)?;
        let s4 = server_endpoint(localhost(), &ca.material(Identity::server(4))?, &tuning)?;
        let served = spawn_echo_server(s3.clone());

        let conn = connect(&s4, s3.local_addr()?, Identity::server(3), STEP).await?;
        let reply = timeout(STEP, round_trip(&conn, b"ping")).await??;
        assert_eq!(reply, b"echo:ping");
        conn.close(0u32.into(), b"done");

        assert_eq!(served.await??, Identity::server(4));
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn client_from_other_ca_is_refused() -> Result<()> {
    timeout(TEST, async {
        let ca = Ca::generate("real")?;
        let rogue_ca = Ca::generate("rogue")?;
        let tuning = NetTuning::default();
        let server = server_endpoint(localhost(), &ca.material(Identity::server(3))?, &tuning)?;
        let addr = server.local_addr()?;

        // The server's handshake must fail: it never gets a usable connection.
        let server_side = tokio::spawn(async move {
            let incoming = timeout(STEP, server.accept())
                .await
                .context("accept timed out")?
                .ok_or_else(|| anyhow!("endpoint closed"))?;
            match timeout(STEP, incoming).await {
                Err(_) => Ok("server handshake timed out".to_string()),
                Ok(Err(e)) => Ok(e.to_string()),
                Ok(Ok(conn)) => bail!(
                    "server accepted a rogue client as {:?}",
                    peer_identity(&conn)
                ),
            }
        });

        // The rogue trusts the real CA (so it accepts the server) but presents
        // a certificate signed by another CA.
        let issued = rogue_ca.issue(Identity::client(7))?;
        let rogue = TlsMaterial {
            ca_pem: ca.cert_pem(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            me: Identity::client(7),
        };
        let client = client_endpoint(localhost(), &rogue, &tuning)?;
        // With TLS 1.3 the client may finish its side of the handshake before
        // the server rejects it; then the first use of the connection fails.
        match connect(&client, addr, Identity::server(3), STEP).await {
            Err(e) => eprintln!("refused at connect: {e}"),
            Ok(conn) => {
                let used = timeout(STEP, round_trip(&conn, b"let me in"))
                    .await
                    .context("first stream use neither failed nor succeeded")?;
                match used {
                    Ok(reply) => bail!("rogue client got a reply: {reply:?}"),
                    Err(e) => eprintln!("refused on first use: {e}"),
                }
            }
        }

        let why = server_side.await??;
        eprintln!("server side: {why}");
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn dialing_wrong_identity_fails() -> Result<()> {
    timeout(TEST, async {
        let ca = Ca::generate("t3")?;
        let tuning = NetTuning::default();
        let server = server_endpoint(localhost(), &ca.material(Identity::server(3))?, &tuning)?;
        let addr = server.local_addr()?;
        // Keep accepting so each handshake attempt gets an answer.
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let _ = timeout(STEP, incoming).await;
                });
            }
        });

        let client = client_endpoint(localhost(), &ca.material(Identity::client(7))?, &tuning)?;
        for wrong in [Identity::server(4), Identity::client(3)] {
            match connect(&client, addr, wrong, STEP).await {
                Ok(conn) => bail!(
                    "dialing {wrong} reached {:?}",
                    peer_identity(&conn).map(|w| w.to_string())
                ),
                Err(e @ (NetError::Handshake { .. } | NetError::WrongPeer { .. })) => {
                    eprintln!("dialing {wrong}: {e}")
                }
                Err(other) => bail!("dialing {wrong}: unexpected error {other}"),
            }
        }
        // The right name still works from the same endpoint.
        let conn = connect(&client, addr, Identity::server(3), STEP).await?;
        conn.close(0u32.into(), b"done");
        acceptor.abort();
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn cluster_certs_on_disk() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let who = [
        Identity::server(0),
        Identity::server(1),
        Identity::client(0),
    ];
    write_cluster_certs(&certs, &who)?;

    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)
            .with_context(|| p.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    assert_eq!(mode(&certs.join("ca.key"))?, 0o600);
    let mut loaded = Vec::new();
    for w in who {
        let (ca, cert, key) = cert_paths(&certs, w);
        assert_eq!(ca, certs.join("ca.pem"));
        assert_eq!(cert, certs.join(format!("{w}.pem")));
        assert_eq!(mode(&key)?, 0o600, "{}", key.display());
        loaded.push(TlsMaterial::load(&ca, &cert, &key, w)?);
    }
    // Loading a certificate under the wrong identity is refused.
    let (ca, cert, key) = cert_paths(&certs, Identity::server(0));
    assert!(matches!(
        TlsMaterial::load(&ca, &cert, &key, Identity::server(1)),
        Err(PkiError::IdentityMismatch { .. })
    ));

    // A second run reuses the CA: old and new certificates interoperate.
    let ca_before = std::fs::read_to_string(certs.join("ca.pem"))?;
    write_cluster_certs(&certs, &[Identity::server(2)])?;
    assert_eq!(std::fs::read_to_string(certs.join("ca.pem"))?, ca_before);
    let (ca, cert, key) = cert_paths(&certs, Identity::server(2));
    let s2 = TlsMaterial::load(&ca, &cert, &key, Identity::server(2))?;

    timeout(TEST, async {
        let tuning = NetTuning::default();
        let server = server_endpoint(localhost(), &s2, &tuning)?;
        let served = spawn_echo_server(server.clone());
        let client = client_endpoint(localhost(), &loaded[2], &tuning)?;
        let conn = connect(&client, server.local_addr()?, Identity::server(2), STEP).await?;
        assert_eq!(timeout(STEP, round_trip(&conn, b"x")).await??, b"echo:x");
        conn.close(0u32.into(), b"done");
        assert_eq!(served.await??, Identity::client(0));
        Ok::<_, anyhow::Error>(())
    })
    .await??;

    // Half a CA is not silently replaced.
    std::fs::remove_file(certs.join("ca.key"))?;
    assert!(matches!(
        write_cluster_certs(&certs, &who),
        Err(PkiError::PartialCa { .. })
    ));
    Ok(())
}
