//! One outbound HTTP(S) client stack for Consul, Nomad and notifications.
//!
//! Consul and Nomad are usually reached over mTLS with a private CA, so the
//! client is built from files (CA bundle, client certificate and key) with
//! rustls and the ring provider passed explicitly: one crypto provider in
//! the whole process, never a process-wide default that a dependency could
//! have installed differently.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Files that configure the client side of TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// PEM bundle of CAs to trust instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mTLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// Why the client could not be built. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("client certificate and key must be given together")]
    HalfPair,
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a request got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// Connection refused, reset, TLS failure: the peer is unreachable.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No complete answer within the per-request timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The answer's body was larger than we are willing to hold.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
}

/// A complete response: status, headers and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The pooled HTTP/1.1 + HTTP/2 client used for every outbound call.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Largest response body any caller reads (Nomad job specs and allocation
/// lists are the big ones).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ClientBuildError {
    ClientBuildError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Read every certificate of a PEM file.
///
/// # Errors
///
/// The file is unreadable, holds no certificate or is not PEM.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Read the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// The file is unreadable or holds no private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientBuildError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    // SECURITY: the error names the file and the parser's complaint, never
    // any byte of the key.
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| file_err(path, format!("no private key: {e}")))
}

/// The only crypto provider in the process.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a rustls client configuration from files.
///
/// # Errors
///
/// A file is unreadable or malformed, or only one of cert/key is given.
pub fn client_tls_config(files: &ClientTlsFiles) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| file_err(ca, e))?;
            }
        }
        None => {
            // An unreadable system store only means https to a public CA
            // fails later with a clear TLS error; plain http still works.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    // ALPN is left empty: hyper-rustls sets it from the enabled protocols.
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ClientBuildError::HalfPair),
    };
    Ok(config)
}

impl HttpClient {
    /// Build a pooled client that speaks http and https.
    ///
    /// # Errors
    ///
    /// See [`client_tls_config`].
    pub fn new(files: &ClientTlsFiles) -> Result<Self, ClientBuildError> {
        let tls = client_tls_config(files)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(connector);
        Ok(Self { inner })
    }

    /// Send a request and read the whole answer within `timeout`.
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`] when the deadline passes first,
    /// [`RequestError::Unreachable`] for connection and protocol failures,
    /// [`RequestError::TooLarge`] for an oversized body.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        self.send_capped(req, timeout, MAX_RESPONSE_BYTES).await
    }

    /// [`HttpClient::send`], reading at most `cap` bytes of the body: a
    /// larger answer is refused before more is read.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::send`], with [`RequestError::TooLarge`] at `cap`.
    pub async fn send_capped(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        cap: usize,
    ) -> Result<Response, RequestError> {
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| RequestError::Unreachable(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, cap)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        RequestError::TooLarge(cap)
                    } else {
                        RequestError::Unreachable(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }
}

/// Flatten an error and its sources into one line (hyper's top-level
/// message alone is just "client error (Connect)").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
