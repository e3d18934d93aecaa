//! The HTTP client for what the server asks of others (the auth callback) and for
//! `redisse publish --server`: `hyper-util`'s pooled client over `http://`, and with the `tls`
//! feature `https://` too, verified against the system's root certificates (`hyper-rustls`,
//! with the same `ring` provider as the server's TLS, passed explicitly so that no process-wide
//! provider has to be installed).

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

/// A client for `http://` and (feature `tls`) `https://` URLs.
pub(crate) type HttpClient = Client<Connector, Full<Bytes>>;

/// Builds the client. Without readable system root certificates, `https://` requests fail
/// with a certificate error (and `http://` ones work).
pub(crate) fn client() -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    #[cfg(feature = "tls")]
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    #[cfg(not(feature = "tls"))]
    let connector = http;
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(feature = "tls")]
fn tls_config() -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        tracing::warn!(
            errors = found.errors.len(),
            "no system root certificate found: https:// requests will fail"
        );
    }
    roots.add_parsable_certificates(found.certs);
    let config = ClientConfig::builder_with_provider(ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Whether this build can reach `url` (an `https://` URL needs the `tls` feature).
pub(crate) fn supports(url: &str) -> bool {
    url.starts_with("http://") || (cfg!(feature = "tls") && url.starts_with("https://"))
}
