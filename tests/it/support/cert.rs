//! A self-signed certificate for 127.0.0.1 and localhost, written as PEM files in a temporary
//! folder, for the tests that serve HTTPS.

use tokio_rustls::rustls::pki_types::CertificateDer;

pub struct Certificate {
    dir: tempfile::TempDir,
    /// The certificate, PEM.
    pub pem: String,
    /// The certificate, DER (for a client's root store).
    pub der: CertificateDer<'static>,
}

impl Certificate {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write cert.pem");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write key.pem");
        Certificate {
            dir,
            pem: cert.pem(),
            der: cert.der().clone(),
        }
    }

    /// The path of `cert.pem` or `key.pem`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
