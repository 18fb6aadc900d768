//! The webhook listener's certificate, reloadable without a restart.
//!
//! Certificates on Nomad are short-lived and re-rendered by templates, so
//! the served pair is swapped atomically on SIGHUP and when the files
//! change. A new pair that does not load (half-written, key not matching)
//! keeps the old one serving and says why, rather than taking the listener
//! down.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::clients::http::{crypto_provider, load_certs, load_key, ClientBuildError};
use crate::config::TlsFiles;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] ClientBuildError),
    #[error("{0}: the private key does not match the certificate or is unsupported: {1}")]
    Key(String, String),
}

/// The served certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    not_after: AtomicI64,
    stamp: std::sync::Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    cert: Option<(SystemTime, u64)>,
    key: Option<(SystemTime, u64)>,
}

fn stamp_of(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FileStamp {
    fn read(files: &TlsFiles) -> Self {
        FileStamp {
            cert: stamp_of(&files.cert_file),
            key: stamp_of(&files.key_file),
        }
    }
}

fn load_pair(files: &TlsFiles) -> Result<(CertifiedKey, i64), TlsError> {
    let chain = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let provider = crypto_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(files.key_file.display().to_string(), e.to_string()))?;
    let not_after = crate::x509::not_after_unix(&chain[0]).unwrap_or(0);
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| TlsError::Key(files.key_file.display().to_string(), e.to_string()))?;
    Ok((ck, not_after))
}

impl CertStore {
    /// Load the pair for the first time.
    ///
    /// # Errors
    ///
    /// Unreadable or malformed files, or a key that does not match.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = FileStamp::read(files);
        let (ck, not_after) = load_pair(files)?;
        Ok(Arc::new(CertStore {
            files: files.clone(),
            current: ArcSwap::from_pointee(ck),
            not_after: AtomicI64::new(not_after),
            stamp: std::sync::Mutex::new(Some(stamp)),
        }))
    }

    /// Load the files again; on failure the old pair keeps serving.
    ///
    /// # Errors
    ///
    /// Why the new pair was refused (the caller logs it).
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = FileStamp::read(&self.files);
        if let Ok(mut s) = self.stamp.lock() {
            *s = Some(stamp);
        }
        let (ck, not_after) = load_pair(&self.files)?;
        self.current.store(Arc::new(ck));
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the files changed since the last load attempt.
    pub fn changed_on_disk(&self) -> bool {
        let now = FileStamp::read(&self.files);
        self.stamp
            .lock()
            .map(|s| s.as_ref() != Some(&now))
            .unwrap_or(true)
    }

    /// notAfter of the served certificate (unix seconds; 0 if unknown).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// A rustls server configuration serving this store, offering HTTP/2
    /// and HTTP/1.1.
    ///
    /// # Errors
    ///
    /// rustls refuses the protocol versions (never with the ring provider).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Poll the files every `every` and reload when they change, until
    /// `cancel`. Polling (not inotify) survives the symlink swaps that
    /// Kubernetes and Nomad templates do.
    pub async fn watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if self.changed_on_disk() {
                match self.reload() {
                    Ok(()) => tracing::info!(
                        not_after = self.not_after(),
                        "TLS certificate reloaded after a file change"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but the new pair was refused; still serving the previous certificate")
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
