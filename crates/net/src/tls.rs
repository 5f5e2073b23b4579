//! TLS for the federation: rustls (through tonic) with the *ring* provider. The coordinator
//! serves a certificate and its key (PEM); a party trusts a CA certificate (PEM) and checks
//! the server's name against it. `cohort keys tls` makes a private CA and a server
//! certificate for a federation without a PKI.

use std::path::Path;

use tonic::transport::{Certificate, Identity};
pub use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::NetError;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, NetError> {
    let b = std::fs::read(path).map_err(|source| NetError::Io {
        path: format!("{} ({what})", path.display()),
        source,
    })?;
    if !String::from_utf8_lossy(&b).contains("-----BEGIN ") {
        return Err(NetError::Protocol(format!(
            "{}: not a PEM file ({what})",
            path.display()
        )));
    }
    Ok(b)
}

/// The coordinator's TLS: the certificate chain `cert` and its private key `key`, both PEM.
///
/// # Errors
/// A file that cannot be read or is not PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, NetError> {
    let cert = read(cert, "the server certificate")?;
    let key = read(key, "the server's private key")?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// A party's TLS: trust the CA certificate `ca` (PEM), and expect the server to be `domain`
/// (the name its certificate was made for; by default the host of the coordinator's URL).
///
/// # Errors
/// A file that cannot be read or is not PEM.
pub fn client_config(ca: &Path, domain: &str) -> Result<ClientTlsConfig, NetError> {
    let ca = read(ca, "the CA certificate")?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain))
}
