//! A real server (QUIC + sled) in this process, and hostile or careless clients.

use meshkv_core::proto::{self, ClientReq, ClientResp};
use meshkv_node::client::{Client, ClientError, GetReply};
use meshkv_node::net::{self, NetTuning};
use meshkv_node::pki::{Ca, Identity};
use meshkv_node::server::{Server, ServerOpts};
use std::time::Duration;

async fn start(ca: &Ca, dir: &std::path::Path) -> Server {
    let tls = ca.material(Identity::server(1)).expect("server cert");
    let opts = ServerOpts::new(1, dir.join("data"), "127.0.0.1:0".parse().unwrap(), tls);
    Server::start(opts).await.expect("server starts")
}

#[tokio::test]
async fn garbage_and_oversized_requests_get_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = start(&ca, dir.path()).await;
    let addr = server.quic_addr().unwrap();
    let tls = ca.material(Identity::client(9)).unwrap();
    let ep =
        net::client_endpoint("127.0.0.1:0".parse().unwrap(), &tls, &NetTuning::default()).unwrap();
    let conn = net::connect(&ep, addr, Identity::server(1), Duration::from_secs(5))
        .await
        .unwrap();

    // A frame whose body is garbage: an error answer, not a crash.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
        .await
        .unwrap();
    send.finish().unwrap();
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; proto::frame_len(prefix).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    assert!(
        matches!(proto::decode::<ClientResp>(&body).unwrap(), ClientResp::Error(e) if e.contains("malformed"))
    );

    // A length prefix beyond the limit.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    send.finish().unwrap();
    recv.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; proto::frame_len(prefix).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    assert!(
        matches!(proto::decode::<ClientResp>(&body).unwrap(), ClientResp::Error(e) if e.contains("limit"))
    );

    // Oversized key and value: one-line refusals, nothing written.
    let mut c = Client::new(&tls, &NetTuning::default()).unwrap();
    c.link(1, addr);
    let big_key = vec![b'k'; 2000];
    match c.put(&big_key, Some(b"v")).await {
        Err(ClientError::Refused(1, e)) => assert!(e.contains("key of 2000 bytes"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let big_value = vec![b'v'; (1 << 20) + 1];
    assert!(matches!(
        c.put(b"k", Some(&big_value)).await,
        Err(ClientError::Refused(1, _))
    ));
    assert_eq!(c.get(b"k").await.unwrap(), GetReply::NotFound);
    assert_eq!(server.digest().1, 0, "nothing was written");

    // And it still serves.
    c.put(b"k", Some(b"v")).await.unwrap();
    assert!(matches!(c.get(b"k").await.unwrap(), GetReply::Value(v, _) if v == b"v"));
    let raw: ClientResp = {
        let (r, _, _) = meshkv_node::frame::request(
            &conn,
            &ClientReq::Get {
                key: b"k".to_vec(),
                dep: Some(meshkv_core::Dot::new(77, 1)),
                seen_ts: 0,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        r
    };
    assert_eq!(raw, ClientResp::Dep, "an unknown dependency is ERR_DEP");
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = start(&ca, dir.path()).await;
    let foreign = Ca::generate("intruder").unwrap();
    let tls = foreign.material(Identity::client(9)).unwrap();
    let mut c = Client::new(&tls, &NetTuning::default()).unwrap();
    c.set_timeouts(Duration::from_secs(2), Duration::from_secs(2));
    c.link(1, server.quic_addr().unwrap());
    assert!(matches!(
        c.put(b"k", Some(b"v")).await,
        Err(ClientError::Unreachable(_))
    ));
    assert_eq!(
        c.get(b"k").await.unwrap(),
        GetReply::Dep,
        "no reachable server: ERR_DEP"
    );
    assert_eq!(server.digest().1, 0);
}
