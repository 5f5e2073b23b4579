//! TLS for the federation: rustls (through tonic) with the *ring* provider. The coordinator
//! serves a certificate and its key (PEM); a party trusts a CA certificate (PEM) and checks
//! the server's name against it.
//!
//! A federation of organisations rarely shares a PKI, so [`FederationTls::new`] (`cohort keys
//! tls`) makes one for it: a private CA, and a server certificate signed by it for the names
//! the parties dial (DNS names, or IP addresses). The parties get the CA certificate (not a
//! secret) and check its SHA-256 fingerprint out of band; the coordinator gets the server
//! certificate and its key. The CA's private key signs the server certificate once and is
//! dropped, never written: nobody, the operator included, can later mint another certificate
//! the parties would trust. Renewing the server certificate or adding a name means making a
//! new pair and handing out the new `ca.pem` (docs/network.md explains the trade).
//!
//! [`loopback`] makes the same pair in memory for `127.0.0.1`, so `cohort run --transport grpc`
//! pays the TLS cost a real federation pays without writing anything.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Identity};
pub use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::NetError;

/// How long the coordinator waits for a connection's TLS handshake to finish before it drops
/// the connection: a peer that opens a socket and never completes its hello holds nothing
/// longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest validity [`FederationTls::new`] gives, in days (ten years).
pub const MAX_DAYS: u32 = 3650;

/// The most names one server certificate is made for.
pub const MAX_NAMES: usize = 64;

/// How far before `now` a certificate's validity starts, so a party whose clock is a little
/// behind the coordinator's does not refuse a certificate made a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A name a server certificate is made for: what the parties put in the coordinator's URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerName {
    /// A DNS name (`coordinator.example.org`, `localhost`), lower case.
    Dns(String),
    /// An IP address (`127.0.0.1`, `::1`).
    Ip(IpAddr),
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => f.write_str(d),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl ServerName {
    /// Parses a host as a party would dial it: an IP address (an IPv6 one with or without
    /// brackets) or a DNS name.
    ///
    /// # Errors
    /// [`NetError::BadServerName`] for an empty name, a URL, a host with a port, a wildcard,
    /// the unspecified address (`0.0.0.0`, `::`) or anything that is not a valid DNS name.
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::BadServerName {
            name: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.trim().is_empty() {
            return Err(bad("the name is empty"));
        }
        if s.contains("://") {
            return Err(bad(
                "a URL: give the host alone (coordinator.example.org, 192.0.2.10)",
            ));
        }
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(bad(
                    "the unspecified address: a coordinator listening on it is dialled by a real \
                     address (127.0.0.1, 192.0.2.10); name that",
                ));
            }
            if ip.is_multicast() {
                return Err(bad("a multicast address"));
            }
            return Ok(Self::Ip(ip));
        }
        if s.contains(':') {
            return Err(bad(
                "a host with a port, or a malformed IPv6 address: give the host alone",
            ));
        }
        if s.contains('*') {
            return Err(bad("a wildcard: name each host the parties dial"));
        }
        let lower = s.to_ascii_lowercase();
        // A dotted name of digits alone is a malformed IPv4 address, not a host.
        if lower
            .trim_end_matches('.')
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("neither an IPv4 address nor a DNS name"));
        }
        if DnsName::try_from(lower.as_str()).is_err() {
            return Err(bad(
                "not a valid DNS name (letters, digits and hyphens in dot-separated labels of at \
                 most 63 characters) or IP address",
            ));
        }
        Ok(Self::Dns(lower))
    }

    fn san(&self) -> Result<SanType, NetError> {
        Ok(match self {
            Self::Ip(ip) => SanType::IpAddress(*ip),
            Self::Dns(d) => {
                SanType::DnsName(d.as_str().try_into().map_err(|e| NetError::BadServerName {
                    name: d.clone(),
                    reason: format!("{e}"),
                })?)
            }
        })
    }
}

/// A private CA certificate and a server certificate signed by it, with the server's key, as
/// PEM. The CA's key is not kept (see the module's docs). `Debug` never shows the key.
pub struct FederationTls {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_pem: String,
    server_key_pem: String,
    names: Vec<ServerName>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for FederationTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationTls")
            .field("ca_sha256", &self.ca_fingerprint())
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Where [`FederationTls::write`] puts its files in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `ca.pem`: the CA certificate every party trusts (`--ca`).
    pub ca_cert: PathBuf,
    /// `server.pem`: the coordinator's certificate (`--tls-cert`).
    pub server_cert: PathBuf,
    /// `server.key`: its private key, mode 0600 (`--tls-key`).
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    fn all(&self) -> [&Path; 3] {
        [&self.ca_cert, &self.server_cert, &self.server_key]
    }

    /// Refuses, before anything is written, a directory that is a file or already holds one
    /// of the files (naming every one that exists).
    ///
    /// # Errors
    /// [`NetError::Exists`] naming the files, [`NetError::Io`] when `dir` is not a directory.
    pub fn check_new(&self, dir: &Path) -> Result<(), NetError> {
        if dir.as_os_str().is_empty() {
            return Err(NetError::Io {
                path: "the output directory".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is empty"),
            });
        }
        if dir.exists() && !dir.is_dir() {
            return Err(NetError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ),
            });
        }
        let taken: Vec<String> = self
            .all()
            .iter()
            .filter(|p| p.exists() || p.is_symlink())
            .map(|p| p.display().to_string())
            .collect();
        if !taken.is_empty() {
            return Err(NetError::Exists { paths: taken });
        }
        Ok(())
    }
}

impl FederationTls {
    /// A new private CA and a server certificate for `names`, both valid from `now` (less
    /// [`CLOCK_SKEW`]) for `days` days. Keys are ECDSA P-256 from the operating system's random
    /// source.
    ///
    /// # Errors
    /// [`NetError::BadServerName`] for a name [`ServerName::parse`] refuses, no names or more
    /// than [`MAX_NAMES`]; [`NetError::Tls`] for `days` outside `1..=MAX_DAYS` or a failure of
    /// the certificate generator.
    pub fn new(names: &[String], days: u32, now: SystemTime) -> Result<Self, NetError> {
        if names.is_empty() {
            return Err(NetError::BadServerName {
                name: String::new(),
                reason: "no name given: a server certificate is made for the names the parties \
                         dial"
                    .into(),
            });
        }
        if names.len() > MAX_NAMES {
            return Err(NetError::BadServerName {
                name: names[MAX_NAMES].clone(),
                reason: format!("more than {MAX_NAMES} names"),
            });
        }
        let mut parsed: Vec<ServerName> = Vec::with_capacity(names.len());
        for n in names {
            let n = ServerName::parse(n)?;
            if !parsed.contains(&n) {
                parsed.push(n);
            }
        }
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(NetError::Tls {
                what: "the validity".into(),
                reason: format!("{days} days; must be 1 to {MAX_DAYS}"),
            });
        }
        let failed = |what: &str| {
            let what = what.to_owned();
            move |e: rcgen::Error| NetError::Tls {
                what,
                reason: e.to_string(),
            }
        };
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| NetError::Tls {
                what: "the clock".into(),
                reason: "the time is before 1970".into(),
            })?;
        let start = unix.saturating_sub(CLOCK_SKEW);
        let valid = Duration::from_secs(u64::from(days) * 86_400);
        let not_before = SystemTime::UNIX_EPOCH + start;
        let not_after = now + valid;
        let at = |d: Duration| {
            i64::try_from(d.as_secs())
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| NetError::Tls {
                    what: "the clock".into(),
                    reason: format!("{} s after 1970 is out of range", d.as_secs()),
                })
        };
        let (from, until) = (at(start)?, at(unix + valid)?);

        // The CA: its name carries a random tag, so two federations' CAs never share a subject
        // and a party trusting the wrong one is told "unknown issuer".
        let tag = crate::os_random()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::OrganizationName, "cohort");
        ca.distinguished_name.push(
            DnType::CommonName,
            format!(
                "cohort federation CA {} ({})",
                hex::encode(&tag[..4]),
                parsed[0]
            ),
        );
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = from;
        ca.not_after = until;
        let ca_key = KeyPair::generate().map_err(failed("the CA's key"))?;
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(failed("the CA certificate"))?;

        let mut server = CertificateParams::default();
        server.distinguished_name = DistinguishedName::new();
        server
            .distinguished_name
            .push(DnType::OrganizationName, "cohort");
        server
            .distinguished_name
            .push(DnType::CommonName, parsed[0].to_string());
        server.subject_alt_names = parsed
            .iter()
            .map(ServerName::san)
            .collect::<Result<_, _>>()?;
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        server.not_before = from;
        server.not_after = until;
        let server_key = KeyPair::generate().map_err(failed("the server's key"))?;
        let issuer = Issuer::new(ca, ca_key);
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(failed("the server certificate"))?;
        // The CA's key goes out of scope here, unwritten.
        drop(issuer);

        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            names: parsed,
            not_before,
            not_after,
        })
    }

    /// The CA certificate, PEM: what every party trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate, PEM.
    pub fn server_pem(&self) -> &str {
        &self.server_pem
    }

    /// The names the server certificate is made for, duplicates removed, in the order given.
    pub fn names(&self) -> &[ServerName] {
        &self.names
    }

    /// When the certificates become valid ([`CLOCK_SKEW`] before the `now` they were made at).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the certificates expire.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The SHA-256 fingerprint of the CA certificate (its DER), as OpenSSL prints it
    /// (`openssl x509 -in ca.pem -noout -fingerprint -sha256`): upper-case hex pairs joined by
    /// colons. Parties compare it with the one the operator tells them out of band.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// Writes the CA certificate, the server certificate and the server's key (mode 0600,
    /// created with that mode) into `dir`, creating `dir` if needed. Refuses, before writing
    /// anything, a directory that already holds any of them; if a write fails, removes what it
    /// wrote.
    ///
    /// # Errors
    /// As [`TlsFiles::check_new`]; [`NetError::Io`] for a failed write.
    pub fn write(&self, dir: &Path) -> Result<TlsFiles, NetError> {
        let files = TlsFiles::in_dir(dir);
        files.check_new(dir)?;
        std::fs::create_dir_all(dir).map_err(|source| NetError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut written: Vec<&Path> = Vec::new();
        let result = (|| {
            for (path, body, mode) in [
                (&files.ca_cert, &self.ca_pem, 0o644),
                (&files.server_cert, &self.server_pem, 0o644),
                (&files.server_key, &self.server_key_pem, 0o600),
            ] {
                write_new(path, body.as_bytes(), mode)?;
                written.push(path);
            }
            Ok(())
        })();
        if let Err(e) = result {
            for p in written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        tracing::info!(dir = %dir.display(), ca_sha256 = %self.ca_fingerprint(), "TLS files written");
        Ok(files)
    }

    /// The coordinator's TLS from these certificates (in memory).
    ///
    /// # Errors
    /// Not for certificates this type made; the same checks as [`server_config`].
    pub fn server_config(&self) -> Result<ServerTlsConfig, NetError> {
        server_tls(
            self.server_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
            "the server certificate",
            "the server's key",
        )
    }

    /// A party's TLS trusting this CA and expecting the server to be `domain`.
    ///
    /// # Errors
    /// Not for a CA this type made; the same checks as [`client_config`].
    pub fn client_config(&self, domain: &str) -> Result<ClientTlsConfig, NetError> {
        client_tls(self.ca_pem.as_bytes(), "the CA certificate", domain)
    }
}

/// `t` as an RFC 3339 UTC time to the second (`2027-01-31T09:05:00Z`).
pub fn utc(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("{secs} s after 1970"),
    }
}

/// `openssl x509 -fingerprint -sha256` of a DER certificate.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates `path` (which must not exist) with `mode` and writes `body`.
fn write_new(path: &Path, body: &[u8], mode: u32) -> Result<(), NetError> {
    use std::io::Write;
    let io = |source| NetError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.sync_all().map_err(io)
}

/// A new CA and server certificate for `127.0.0.1`, valid for a day from `now`, in memory:
/// the coordinator's TLS and a party's TLS trusting that CA (`cohort run --transport grpc`).
///
/// # Errors
/// The operating system has no random source, or the clock is before 1970.
pub fn loopback(now: SystemTime) -> Result<(ServerTlsConfig, ClientTlsConfig), NetError> {
    let made = FederationTls::new(&["127.0.0.1".to_owned()], 1, now)?;
    Ok((made.server_config()?, made.client_config("127.0.0.1")?))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, NetError> {
    let b = std::fs::read(path).map_err(|source| NetError::Io {
        path: format!("{} ({what})", path.display()),
        source,
    })?;
    if !String::from_utf8_lossy(&b).contains("-----BEGIN ") {
        return Err(NetError::Tls {
            what: format!("{} ({what})", path.display()),
            reason: "not a PEM file".into(),
        });
    }
    Ok(b)
}

/// The coordinator's TLS: the certificate chain `cert` and its private key `key`, both PEM.
/// The key must match the certificate and, on Unix, be readable by its owner only.
///
/// # Errors
/// A file that cannot be read, is not PEM, holds no certificate or no key, a key that group or
/// others can read, or a key that is not the certificate's.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, NetError> {
    let cert_what = format!("{} (the server certificate)", cert.display());
    let key_what = format!("{} (the server's private key)", key.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(key)
            && m.permissions().mode() & 0o077 != 0
        {
            return Err(NetError::Tls {
                what: key_what,
                reason: format!(
                    "mode {:o}: group or others can read the private key (chmod 600 {})",
                    m.permissions().mode() & 0o777,
                    key.display()
                ),
            });
        }
    }
    let c = read(cert, "the server certificate")?;
    let k = read(key, "the server's private key")?;
    server_tls(&c, &k, &cert_what, &key_what)
}

fn server_tls(
    cert: &[u8],
    key: &[u8],
    cert_what: &str,
    key_what: &str,
) -> Result<ServerTlsConfig, NetError> {
    let bad = |what: &str, reason: String| NetError::Tls {
        what: what.to_owned(),
        reason,
    };
    let chain = certificates(cert).map_err(|r| bad(cert_what, r))?;
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        bad(
            key_what,
            format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    // Build the rustls configuration tonic will build, to refuse a mismatched or unusable
    // pair now, naming the files, rather than at the first connection.
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("TLS", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| {
        bad(
            key_what,
            format!("cannot serve it with the certificate {cert_what}: {e}"),
        )
    })?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The certificates in a PEM file, each checked to parse; refuses a file with a private key
/// in it (a certificate file is handed out; a key in it would leak).
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if PrivateKeyDer::from_pem_slice(pem).is_ok() {
        return Err(
            "holds a private key: a certificate file is handed out, a key is not; give \
                    the certificate (.pem), keep the key"
                .into(),
        );
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a malformed PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in the file".into());
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(c.clone())
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

/// A party's TLS: trust the CA certificate `ca` (PEM), and expect the server to be `domain`
/// (the name its certificate was made for; by default the host of the coordinator's URL, an
/// IPv6 address with or without its brackets).
///
/// # Errors
/// A file that cannot be read, is not PEM, holds no certificate that parses, or holds a
/// private key.
pub fn client_config(ca: &Path, domain: &str) -> Result<ClientTlsConfig, NetError> {
    let b = read(ca, "the CA certificate")?;
    client_tls(
        &b,
        &format!("{} (the CA certificate)", ca.display()),
        domain,
    )
}

fn client_tls(ca: &[u8], what: &str, domain: &str) -> Result<ClientTlsConfig, NetError> {
    certificates(ca).map_err(|reason| NetError::Tls {
        what: what.to_owned(),
        reason,
    })?;
    let domain = ServerName::parse(domain)?.to_string();
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// Refuses a URL whose scheme does not match the TLS setting before any dialling: `https://`
/// with a CA to trust, `http://` only without (tonic would otherwise dial an `http://` URL in
/// plain text even with a CA set).
///
/// # Errors
/// [`NetError::Tls`] naming the URL and what to change.
pub fn check_dial(url: &str, tls: bool) -> Result<(), NetError> {
    let lower = url.to_ascii_lowercase();
    let reason = if tls && lower.starts_with("http://") {
        "plain text (http://) with a CA to trust: dial https:// for TLS, or drop --ca and start \
         both sides with --insecure"
    } else if !tls && lower.starts_with("https://") {
        "https:// needs the CA certificate to trust (--ca FILE), or dial http:// if the \
         coordinator was started with --insecure"
    } else if !lower.starts_with("http://") && !lower.starts_with("https://") {
        "not an http:// or https:// URL"
    } else {
        return Ok(());
    };
    Err(NetError::Tls {
        what: format!("the coordinator URL {url}"),
        reason: reason.to_owned(),
    })
}

/// Whether the server behind the `http://` URL `url` answers a TLS hello in TLS (a handshake
/// or an alert record), within three seconds.
pub(crate) async fn speaks_tls(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let Some(hello) = client_hello() else {
        return false;
    };
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        s.write_all(&hello).await.ok()?;
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.ok()?;
        // A TLS record: content type handshake (22) or alert (21), then version major 3.
        Some(matches!(head, [21 | 22, 3]))
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The bytes of a TLS ClientHello (what rustls sends first).
fn client_hello() -> Option<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("cohort.invalid").ok()?;
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    let mut out = Vec::new();
    c.write_tls(&mut out).ok()?;
    Some(out)
}

/// The error for a party that dialled `url` in plain text while the coordinator serves TLS.
pub(crate) fn plain_to_tls(url: &str, party: &impl fmt::Display) -> NetError {
    NetError::Tls {
        what: party.to_string(),
        reason: format!(
            "the coordinator at {url} serves TLS and this party dialled it in plain text: dial \
             {} with the CA certificate to trust (--ca FILE)",
            url.replacen("http://", "https://", 1)
        ),
    }
}

/// When a connection failed because the TLS handshake refused the coordinator's certificate
/// (or the two sides do not speak the same thing: TLS against plain text), what to tell the
/// operator. Dialling again cannot mend these, so a party stops on them.
pub(crate) fn handshake_refusal(
    url: &str,
    e: &(dyn std::error::Error + 'static),
) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(r) = candidate.downcast_ref::<rustls::Error>() {
                return Some(explain(url, r));
            }
        }
        cur = err.source();
    }
    None
}

fn explain(url: &str, e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    let refused = "the coordinator's certificate was refused";
    let (what, hint) = match e {
        E::InvalidCertificate(C::UnknownIssuer) => (
            refused,
            "it is not signed by the CA this party trusts (--ca): check that CA's SHA-256 \
             fingerprint with the coordinator's operator",
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => (
            refused,
            "it is not made for the host this party dials: dial a name it was made for (`openssl \
             x509 -in server.pem -noout -ext subjectAltName` lists them) or make one for this \
             host with `cohort keys tls --name HOST`",
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => (
            refused,
            "it has expired: the operator makes a new one with `cohort keys tls`",
        ),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => (
            refused,
            "it is not valid yet: is this machine's clock right?",
        ),
        E::InvalidCertificate(_) => (refused, "it cannot be trusted"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => (
            "the handshake failed",
            "the coordinator does not speak TLS here: is it started with --insecure (then dial \
             http://), or is this the wrong port?",
        ),
        _ => ("the handshake failed", "see the error"),
    };
    format!("TLS with {url}: {what} ({e}): {hint}")
}
