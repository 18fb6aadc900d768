//! TLS material for tagbridge's listener: a throw-away CA and a server
//! certificate for localhost / 127.0.0.1, and clients that trust it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::paths::TempDir;

/// A CA and a server certificate for localhost / 127.0.0.1.
pub struct TestTls {
    pub ca_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestTls {
    pub fn new(dir: &TempDir) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tagbridge test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        TestTls {
            ca_pem: ca.pem(),
            cert_file: dir.write("tls.crt", cert.pem()),
            key_file: dir.write("tls.key", key.serialize_pem()),
        }
    }

    /// A reqwest client trusting the test CA (HTTP/1.1 and HTTP/2).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
            )
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// A rustls client config trusting the test CA, for raw-socket tests.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}
