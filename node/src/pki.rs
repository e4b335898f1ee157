//! The cluster's public-key infrastructure.
//!
//! # Trust model
//!
//! * **One CA per cluster.** Every cluster has its own self-signed certificate
//!   authority ([`Ca`]). It is the *only* trust anchor any meshkv process uses:
//!   the system trust store is never consulted, and a certificate signed by any
//!   other CA (including another meshkv cluster's CA) is refused.
//! * **Identity = SAN DNS name.** Each process holds one leaf certificate,
//!   issued by the cluster CA, whose subject-alternative-name DNS entry (and CN)
//!   is its [`Identity::dns_name`], e.g. `server-3.meshkv` or `client-7.meshkv`.
//!   After a handshake the authenticated peer identity is read from the leaf
//!   certificate the peer presented ([`peer_identity`]); nothing the peer says
//!   later on the wire can change it.
//! * **Both directions are authenticated** (mutual TLS, see [`crate::net`]):
//!   leaf certificates are valid for both `serverAuth` and `clientAuth`, so a
//!   server uses the same certificate to accept and to dial.
//! * **What is refused:** a peer without a certificate, a certificate chain not
//!   ending at the cluster CA, a certificate whose name does not parse as a
//!   meshkv identity, and (when dialing) a server whose name is not the one
//!   expected. Which *roles* may do what (e.g. whether a `client-N` may open a
//!   replication stream) is policy for the caller, not enforced here.
//!
//! Private keys are ECDSA P-256 and are written to disk with mode `0600`.
//! Certificates use rcgen's default validity (1975 to 4096): this CA is a
//! closed, per-cluster trust root, and rotation is done by re-issuing.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// DNS suffix of every meshkv identity name.
pub const DNS_SUFFIX: &str = "meshkv";

/// File name of the cluster CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Errors from creating, loading, or interpreting certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read, written, or have its permissions set.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text was malformed or did not contain the expected item.
    #[error("bad PEM in {what}: {detail}")]
    Pem {
        /// What was being parsed (a path or a description).
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A DER certificate could not be parsed as X.509.
    #[error("cannot parse X.509 certificate in {what}: {detail}")]
    X509 {
        /// What was being parsed (a path or a description).
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// rcgen failed to generate a key or to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate given as the CA is not a CA certificate, or cannot be reused for issuing.
    #[error("{what} is not a usable CA certificate: {detail}")]
    NotCa {
        /// What was being loaded.
        what: String,
        /// Why it is unusable.
        detail: String,
    },
    /// A private key does not belong to the certificate it was paired with.
    #[error("private key does not match the certificate in {what}")]
    KeyMismatch {
        /// What was being loaded.
        what: String,
    },
    /// Only one of `ca.pem` / `ca.key` exists, so the CA can neither be reused nor safely replaced.
    #[error("{} has only one of ca.pem / ca.key; refusing to overwrite a partial CA", dir.display())]
    PartialCa {
        /// The certificate directory.
        dir: PathBuf,
    },
    /// The peer did not present any certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The certificate carries no name of the form `server-N.meshkv` / `client-N.meshkv`.
    #[error("certificate carries no meshkv identity (expected SAN DNS name like server-3.meshkv)")]
    NoIdentity,
    /// The certificate names more than one distinct meshkv identity.
    #[error("certificate names several meshkv identities: {0} and {1}")]
    AmbiguousIdentity(Identity, Identity),
    /// The certificate is for a different identity than the one it was loaded for.
    #[error("certificate is for {found}, expected {expected}")]
    IdentityMismatch {
        /// The identity the caller asked for.
        expected: Identity,
        /// The identity in the certificate.
        found: Identity,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a process is a cluster server or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A replica in the server mesh.
    Server,
    /// A client of the cluster.
    Client,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// The name of one process in the cluster, e.g. `server-3` or `client-7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Server or client.
    pub role: Role,
    /// Number within the role.
    pub id: u64,
}

impl Identity {
    /// `server-<id>`.
    pub fn server(id: u64) -> Self {
        Identity {
            role: Role::Server,
            id,
        }
    }

    /// `client-<id>`.
    pub fn client(id: u64) -> Self {
        Identity {
            role: Role::Client,
            id,
        }
    }

    /// The DNS name carried in this identity's certificate, e.g. `server-3.meshkv`.
    pub fn dns_name(&self) -> String {
        format!("{self}.{DNS_SUFFIX}")
    }

    /// Parses `server-3`, `client-7`, or the DNS forms `server-3.meshkv` /
    /// `client-7.meshkv`. Only the canonical spelling is accepted (no sign, no
    /// leading zeros, lowercase), so parse and [`fmt::Display`] round-trip.
    pub fn parse(s: &str) -> Option<Self> {
        let base = match s.strip_suffix(DNS_SUFFIX) {
            Some(rest) => rest.strip_suffix('.')?,
            None => s,
        };
        let (prefix, num) = base.split_once('-')?;
        let role = match prefix {
            "server" => Role::Server,
            "client" => Role::Client,
            _ => return None,
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if num.len() > 1 && num.starts_with('0') {
            return None;
        }
        let id = num.parse().ok()?;
        Some(Identity { role, id })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.role.prefix(), self.id)
    }
}

/// A freshly issued leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster certificate authority: its key pair and self-signed certificate.
pub struct Ca {
    key: KeyPair,
    /// Parameters whose distinguished name / key-id method reproduce the CA
    /// certificate's subject exactly (so issued certs chain to it).
    params: CertificateParams,
    cert_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new CA for `cluster` (the name goes into the CA's subject).
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshkv");
        dn.push(DnType::CommonName, format!("meshkv CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            key,
            params,
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA from its certificate and private key (PEM). Checks that the
    /// certificate is a CA certificate and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        const WHAT: &str = "CA certificate";
        let der = first_cert(cert_pem, WHAT)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: "CA private key".into(),
            detail: e.to_string(),
        })?;
        let (_, x509) = X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::X509 {
            what: WHAT.into(),
            detail: e.to_string(),
        })?;
        if !x509.is_ca() {
            return Err(PkiError::NotCa {
                what: WHAT.into(),
                detail: "basicConstraints does not say CA".into(),
            });
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch { what: WHAT.into() });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rebuild_dn(&x509)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Issued certificates copy the issuer name from `params`; chain
        // building compares it byte-for-byte with the CA's subject, so make
        // sure the rebuilt name encodes identically.
        let probe = params.self_signed(&key)?;
        let (_, probe) =
            X509Certificate::from_der(probe.der().as_ref()).map_err(|e| PkiError::X509 {
                what: "re-encoded CA subject".into(),
                detail: e.to_string(),
            })?;
        if probe.subject().as_raw() != x509.subject().as_raw() {
            return Err(PkiError::NotCa {
                what: WHAT.into(),
                detail: "its subject name cannot be reproduced exactly".into(),
            });
        }
        Ok(Ca {
            key,
            params,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key (PKCS#8 PEM). Keep it secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf certificate for `who`: fresh P-256 key, CN and SAN DNS name
    /// = `who.dns_name()`, extended key usage serverAuth + clientAuth.
    pub fn issue(&self, who: Identity) -> Result<Issued, PkiError> {
        let name = who.dns_name();
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshkv");
        dn.push(DnType::CommonName, name.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `who` and bundles it with this CA as [`TlsMaterial`].
    pub fn material(&self, who: Identity) -> Result<TlsMaterial, PkiError> {
        let issued = self.issue(who)?;
        TlsMaterial::from_pem(self.cert_pem(), issued.cert_pem, issued.key_pem, who)
    }
}

/// Rebuilds an rcgen distinguished name from a parsed certificate subject,
/// keeping attribute order and string types.
fn rebuild_dn(x509: &X509Certificate<'_>) -> Result<DistinguishedName, PkiError> {
    use x509_parser::asn1_rs::Tag;
    let bad = |detail: &str| PkiError::NotCa {
        what: "CA certificate".into(),
        detail: format!("unsupported subject name: {detail}"),
    };
    let mut dn = DistinguishedName::new();
    for rdn in x509.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("multi-valued or empty RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| bad("attribute OID too large"))?
            .collect();
        let value = attr.attr_value();
        let text =
            std::str::from_utf8(value.data).map_err(|_| bad("attribute value is not text"))?;
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::PrintableString => DnValue::PrintableString(text.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into()?),
            Tag::T61String => DnValue::TeletexString(text.try_into()?),
            _ => return Err(bad("unsupported string type")),
        };
        dn.push(DnType::from_oid(&oid), dn_value);
    }
    Ok(dn)
}

/// Parses every certificate in `pem`; errors if there is none.
fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: what.into(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.into(),
            detail: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certs_from_pem(pem, what)?;
    Ok(certs.swap_remove(0))
}

/// The meshkv identity named in a DER certificate: its SAN DNS names if it has
/// a SAN extension, otherwise its CN.
pub fn identity_of_cert(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, x509) = X509Certificate::from_der(der).map_err(|e| PkiError::X509 {
        what: "certificate".into(),
        detail: e.to_string(),
    })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PkiError::X509 {
            what: "certificate".into(),
            detail: format!("subjectAltName: {e}"),
        })?;
    let names: Vec<&str> = match san {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(*n),
                _ => None,
            })
            .collect(),
        None => x509
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect(),
    };
    let mut found: Option<Identity> = None;
    for who in names.into_iter().filter_map(Identity::parse) {
        match found {
            None => found = Some(who),
            Some(prev) if prev != who => return Err(PkiError::AmbiguousIdentity(prev, who)),
            Some(_) => {}
        }
    }
    found.ok_or(PkiError::NoIdentity)
}

/// Everything one process needs for mutual TLS: the cluster CA certificate and
/// its own certificate and key, all PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate (the only trust anchor).
    pub ca_pem: String,
    /// Our leaf certificate (optionally followed by intermediates).
    pub cert_pem: String,
    /// Our private key.
    pub key_pem: String,
    /// Who we are; matches the name in `cert_pem`.
    pub me: Identity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the three PEM files and validates them as [`TlsMaterial::from_pem`] does.
    pub fn load(ca: &Path, cert: &Path, key: &Path, me: Identity) -> Result<Self, PkiError> {
        let ca_pem = fs::read_to_string(ca).map_err(io_err(ca))?;
        let cert_pem = fs::read_to_string(cert).map_err(io_err(cert))?;
        let key_pem = fs::read_to_string(key).map_err(io_err(key))?;
        Self::validate(
            &ca_pem,
            &cert_pem,
            &key_pem,
            me,
            &cert.display().to_string(),
        )?;
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            me,
        })
    }

    /// Bundles PEM text after checking that it parses, that the certificate
    /// names `me`, and that the key belongs to the certificate. (Whether the
    /// certificate really chains to the CA is checked by every TLS handshake.)
    pub fn from_pem(
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        me: Identity,
    ) -> Result<Self, PkiError> {
        Self::validate(&ca_pem, &cert_pem, &key_pem, me, "certificate")?;
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            me,
        })
    }

    fn validate(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        me: Identity,
        what: &str,
    ) -> Result<(), PkiError> {
        certs_from_pem(ca_pem, "CA certificate")?;
        let leaf = first_cert(cert_pem, what)?;
        let found = identity_of_cert(leaf.as_ref())?;
        if found != me {
            return Err(PkiError::IdentityMismatch {
                expected: me,
                found,
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: format!("private key for {what}"),
            detail: e.to_string(),
        })?;
        let (_, x509) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| PkiError::X509 {
            what: what.into(),
            detail: e.to_string(),
        })?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch { what: what.into() });
        }
        Ok(())
    }

    /// The CA certificate(s), DER.
    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        certs_from_pem(&self.ca_pem, "CA certificate")
    }

    /// Our certificate chain, DER, leaf first.
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        certs_from_pem(&self.cert_pem, "certificate")
    }

    /// Our private key, DER.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| PkiError::Pem {
            what: "private key".into(),
            detail: e.to_string(),
        })
    }
}

/// Paths of the CA certificate, `who`'s certificate and `who`'s key inside a
/// certificate directory: `(dir/ca.pem, dir/<who>.pem, dir/<who>.key)`.
pub fn cert_paths(dir: &Path, who: Identity) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(CA_CERT_FILE),
        dir.join(format!("{who}.pem")),
        dir.join(format!("{who}.key")),
    )
}

/// Writes `contents` to `path` via a temporary file and a rename, with the given mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // The umask may have narrowed `mode`; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `ca.pem`, `ca.key`, and for each identity `<name>.pem` / `<name>.key`
/// (e.g. `server-0.pem`) into `dir` (created if missing). Key files get mode
/// 0600, certificates 0644. Reuses an existing `ca.pem`/`ca.key` in `dir` if
/// both are present (so adding a node later keeps the cluster's CA); fails
/// with [`PkiError::PartialCa`] if only one of them is. Leaf certificates are
/// always re-issued.
pub fn write_cluster_certs(dir: &Path, who: &[Identity]) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let ca = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let cert = fs::read_to_string(&ca_cert).map_err(io_err(&ca_cert))?;
            let key = fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?;
            Ca::from_pem(&cert, &key)?
        }
        (false, false) => {
            let ca = Ca::generate(DNS_SUFFIX)?;
            // Key first: a crash in between leaves a detectable partial CA
            // rather than a certificate nobody can issue under.
            write_file(&ca_key, &ca.key_pem(), 0o600)?;
            write_file(&ca_cert, &ca.cert_pem(), 0o644)?;
            ca
        }
        _ => {
            return Err(PkiError::PartialCa {
                dir: dir.to_path_buf(),
            })
        }
    };
    for &w in who {
        let issued = ca.issue(w)?;
        let (_, cert, key) = cert_paths(dir, w);
        write_file(&key, &issued.key_pem, 0o600)?;
        write_file(&cert, &issued.cert_pem, 0o644)?;
    }
    Ok(())
}

/// The authenticated identity of the remote end of a quinn connection, read
/// from the leaf certificate it presented during the handshake (SAN DNS name,
/// or CN if the certificate has no SAN). The chain itself was already verified
/// against the cluster CA by the TLS layer.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, PkiError> {
    let any = conn.peer_identity().ok_or(PkiError::NoPeerCertificate)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| PkiError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(PkiError::NoPeerCertificate)?;
    identity_of_cert(leaf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_display_and_parse() {
        assert_eq!(Identity::server(3).to_string(), "server-3");
        assert_eq!(Identity::client(7).dns_name(), "client-7.meshkv");
        for w in [Identity::server(0), Identity::client(u64::MAX)] {
            assert_eq!(Identity::parse(&w.to_string()), Some(w));
            assert_eq!(Identity::parse(&w.dns_name()), Some(w));
        }
        for bad in [
            "",
            "server",
            "server-",
            "server-+3",
            "server-03",
            "server-3.",
            "server-3meshkv",
            "server-3.other",
            "Server-3",
            "peer-3",
            "server-3-4",
            "server-18446744073709551616",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn issue_and_reload_ca() -> Result<(), PkiError> {
        let ca = Ca::generate("test")?;
        let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem())?;
        let issued = again.issue(Identity::server(3))?;
        let der = first_cert(&issued.cert_pem, "leaf")?;
        assert_eq!(identity_of_cert(der.as_ref())?, Identity::server(3));
        let other = Ca::generate("other")?;
        assert!(matches!(
            Ca::from_pem(&ca.cert_pem(), &other.key_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
        assert!(matches!(
            Ca::from_pem(&issued.cert_pem, &issued.key_pem),
            Err(PkiError::NotCa { .. })
        ));
        assert!(matches!(
            TlsMaterial::from_pem(
                ca.cert_pem(),
                issued.cert_pem.clone(),
                issued.key_pem.clone(),
                Identity::client(3)
            ),
            Err(PkiError::IdentityMismatch { .. })
        ));
        Ok(())
    }
}
