//! TLS on every listener (rustls with ring): one certificate chain and key from PEM
//! files, offered with ALPN `h2` and `http/1.1`. The pair is read again on SIGHUP and
//! whenever either file changes; new handshakes get the new pair, connections already
//! open keep theirs, and a pair that fails to load leaves the old one serving.

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the files are looked at for changes.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The acceptor all listeners share, and the pair it serves.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    pair: Arc<CurrentPair>,
}

#[derive(Debug)]
struct CurrentPair {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for CurrentPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads and checks the pair: errors name the file at fault.
fn load(files: &TlsFiles) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading the TLS certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "the TLS certificate {} is not valid PEM",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "the TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).with_context(|| {
        format!(
            "the TLS key {} is of an unsupported type",
            files.key.display()
        )
    })?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "the TLS key {} does not belong to the certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(pair)
}

impl Tls {
    pub fn new(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let stamps = (modified(&files.cert), modified(&files.key));
        let pair = Arc::new(CurrentPair {
            current: RwLock::new(Arc::new(load(&files)?)),
            files,
            stamps: Mutex::new(stamps),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(pair.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            pair,
        }))
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Loads the pair again; on failure the current one stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let files = &self.pair.files;
        let stamps = (modified(&files.cert), modified(&files.key));
        let pair = load(files)?;
        *self.pair.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        *self.pair.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    fn changed(&self) -> bool {
        let files = &self.pair.files;
        let now = (modified(&files.cert), modified(&files.key));
        *self.pair.stamps.lock().unwrap_or_else(|e| e.into_inner()) != now
    }

    /// Reloads on SIGHUP and when a file changes, until shutdown.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticks = tokio::time::interval(POLL);
        loop {
            let why = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                Some(()) = async { hangups.as_mut()?.recv().await } => "SIGHUP",
                _ = ticks.tick() => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert = %self.pair.files.cert.display(),
                    "TLS certificate reloaded ({why})"
                ),
                Err(e) => {
                    // Not again until the files change again.
                    let files = &self.pair.files;
                    *self.pair.stamps.lock().unwrap_or_else(|e| e.into_inner()) =
                        (modified(&files.cert), modified(&files.key));
                    tracing::warn!("TLS certificate not reloaded ({why}), the old one stays: {e:#}")
                }
            }
        }
    }
}
