//! HTTPS for the standalone server (`--ssl --ssl-key FILE --ssl-cert FILE`).
//!
//! The certificate chain and private key are read from PEM files once at start-up; a file that
//! is missing or holds no usable key or certificate is a start-up error with the file's name.
//! The handshake runs in the connection's own task, with the server's header read timeout, so a
//! client that never completes it cannot hold more than its socket.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor for the server, from PEM files.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the certificate chain (`cert`, PEM) and its private key (`key`, PEM: PKCS#8, PKCS#1
    /// or SEC1). HTTP/2 and HTTP/1.1 are offered by ALPN.
    pub fn from_pem_files(cert: &Path, key: &Path) -> io::Result<Self> {
        let invalid = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| invalid("cannot read the certificate", cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("invalid certificate", cert, &e))?;
        if certs.is_empty() {
            return Err(invalid("no certificate in", cert, &"empty"));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| invalid("cannot read the private key", key, &e))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}
