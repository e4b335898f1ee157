//! QUIC endpoints with mutual TLS for the meshkv mesh.
//!
//! # Trust model
//!
//! * **One CA per cluster.** The only trust anchor is the cluster CA in
//!   [`TlsMaterial::ca_pem`]; system roots are never loaded. Both directions
//!   are authenticated: a server requires every connecting peer to present a
//!   certificate chaining to the CA, and a dialer verifies the server's
//!   certificate chains to the CA *and* carries the expected name.
//! * **Identity = SAN DNS name** of the leaf certificate (`server-3.meshkv`,
//!   `client-7.meshkv`); read it with [`crate::pki::peer_identity`].
//! * **Refused:** peers without a certificate, certificates from any other CA
//!   (e.g. another cluster's), servers whose name is not the expected one,
//!   peers not speaking ALPN [`ALPN`], and anything but TLS 1.3 (QUIC requires
//!   it). Which role may do what is the caller's policy: the accepting side
//!   learns *who* the peer is, not whether it is allowed.
//!
//! All TLS uses an explicit *ring* [`rustls::crypto::CryptoProvider`]; nothing
//! is installed process-wide.
//!
//! A subtlety of mutual TLS 1.3: the client finishes its handshake *before*
//! the server has checked the client's certificate. A client whose
//! certificate the server rejects therefore sees [`connect`] succeed and only
//! fails on first use of the connection (opening/using a stream, or
//! [`quinn::Connection::closed`]). The server side never yields such a
//! connection from its handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::pki::{peer_identity, Identity, PkiError, TlsMaterial};

/// The one ALPN protocol meshkv speaks.
pub const ALPN: &[u8] = b"meshkv/2";

/// Application close code used when a dialed peer turns out to be the wrong identity.
pub const CLOSE_WRONG_PEER: u32 = 0x4d01;

/// Transport timing knobs shared by every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetTuning {
    /// Interval between QUIC keep-alive packets on an otherwise idle connection.
    pub keep_alive: Duration,
    /// A connection with no traffic at all for this long is dead.
    pub idle_timeout: Duration,
}

impl Default for NetTuning {
    fn default() -> Self {
        NetTuning {
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(1500),
        }
    }
}

/// Errors from building endpoints and dialing peers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TLS material could not be parsed.
    #[error("TLS material: {0}")]
    Material(#[source] PkiError),
    /// rustls refused the configuration (bad CA certificate, key not matching certificate, ...).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    NoInitialCipherSuite(#[from] NoInitialCipherSuite),
    /// A [`NetTuning`] value is out of range for QUIC.
    #[error("invalid network tuning: {0}")]
    Tuning(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP endpoint on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// quinn refused to start the connection attempt (e.g. invalid server name, endpoint closed).
    #[error("cannot dial {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC/TLS handshake failed (certificate refused, peer unreachable or closed, ...).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} timed out after {after:?}")]
    Timeout {
        /// The peer address.
        addr: SocketAddr,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer's certificate could not be interpreted as a meshkv identity.
    #[error("peer {addr} has no usable identity: {source}")]
    PeerIdentity {
        /// The peer address.
        addr: SocketAddr,
        /// Why its identity could not be read.
        #[source]
        source: PkiError,
    },
    /// The peer authenticated as someone other than the one dialed.
    #[error("dialed {expected} at {addr} but the peer is {found}")]
    WrongPeer {
        /// The peer address.
        addr: SocketAddr,
        /// Whom we meant to reach.
        expected: Identity,
        /// Who answered.
        found: Identity,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &TlsMaterial) -> Result<RootCertStore, NetError> {
    let mut roots = RootCertStore::empty();
    for ca in tls.ca_certs().map_err(NetError::Material)? {
        roots.add(ca)?;
    }
    Ok(roots)
}

fn transport(tuning: &NetTuning) -> Result<Arc<quinn::TransportConfig>, NetError> {
    let idle = quinn::IdleTimeout::try_from(tuning.idle_timeout)
        .map_err(|e| NetError::Tuning(format!("idle_timeout {:?}: {e}", tuning.idle_timeout)))?;
    let mut t = quinn::TransportConfig::default();
    // A cluster sits on one LAN (or loopback): quinn's default initial RTT of 333 ms
    // would make a lost first Initial (a peer that was not listening yet) cost about a
    // second before the retry.
    t.initial_rtt(Duration::from_millis(20));
    t.keep_alive_interval(Some(tuning.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    Ok(Arc::new(t))
}

fn server_config(
    tls: &TlsMaterial,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(tls)?), provider.clone())
            .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            tls.cert_chain().map_err(NetError::Material)?,
            tls.private_key().map_err(NetError::Material)?,
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(cfg)?));
    server.transport_config(transport);
    Ok(server)
}

fn client_config(
    tls: &TlsMaterial,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, NetError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(
            tls.cert_chain().map_err(NetError::Material)?,
            tls.private_key().map_err(NetError::Material)?,
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg)?));
    client.transport_config(transport);
    Ok(client)
}

/// An endpoint on `bind` that both accepts and dials.
///
/// Accepting requires a client certificate chaining to the cluster CA (the CA
/// is the only root); dialing trusts only the CA and presents our own
/// certificate. ALPN [`ALPN`] on both sides; keep-alive and idle timeout from
/// `tuning`; up to 1024 concurrent bidirectional and 64 unidirectional
/// streams per connection. Must be called inside a tokio runtime.
pub fn server_endpoint(
    bind: SocketAddr,
    tls: &TlsMaterial,
    tuning: &NetTuning,
) -> Result<quinn::Endpoint, NetError> {
    let transport = transport(tuning)?;
    let server = server_config(tls, transport.clone())?;
    let client = client_config(tls, transport)?;
    let mut ep = quinn::Endpoint::server(server, bind)
        .map_err(|source| NetError::Bind { addr: bind, source })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// A dial-only endpoint on `bind` (use port 0, and an address of the same
/// family as the peers) that presents our certificate and trusts only the
/// cluster CA. Must be called inside a tokio runtime.
pub fn client_endpoint(
    bind: SocketAddr,
    tls: &TlsMaterial,
    tuning: &NetTuning,
) -> Result<quinn::Endpoint, NetError> {
    let client = client_config(tls, transport(tuning)?)?;
    let mut ep =
        quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Dials `addr` expecting the peer to be `expected`, giving up after `timeout`.
///
/// The TLS layer checks that the server's certificate chains to the cluster CA
/// and is valid for `expected.dns_name()`; afterwards the peer's identity is
/// read back with [`peer_identity`] and compared with `expected` (a mismatch
/// closes the connection with [`CLOSE_WRONG_PEER`]).
///
/// **This only proves the handshake completed from our side.** With mutual
/// TLS 1.3 the server verifies *our* certificate after we consider the
/// handshake done, so if the server refuses us this still returns `Ok`, and
/// the refusal shows up as an error on first use of the connection (e.g.
/// `open_bi` + write + read, or [`quinn::Connection::closed`]).
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    expected: Identity,
    timeout: Duration,
) -> Result<quinn::Connection, NetError> {
    let connecting = ep
        .connect(addr, &expected.dns_name())
        .map_err(|source| NetError::Connect { addr, source })?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(source)) => return Err(NetError::Handshake { addr, source }),
        // Dropping the `Connecting` abandons the attempt.
        Err(_) => {
            return Err(NetError::Timeout {
                addr,
                after: timeout,
            })
        }
    };
    let found = match peer_identity(&conn) {
        Ok(found) => found,
        Err(source) => {
            conn.close(quinn::VarInt::from_u32(CLOSE_WRONG_PEER), b"no identity");
            return Err(NetError::PeerIdentity { addr, source });
        }
    };
    if found != expected {
        conn.close(quinn::VarInt::from_u32(CLOSE_WRONG_PEER), b"wrong peer");
        return Err(NetError::WrongPeer {
            addr,
            expected,
            found,
        });
    }
    Ok(conn)
}
