//! mTLS on the TCP gRPC listener, for when Envoy and the router do not share a pod
//! (`serve --listen ADDR --tls-cert F --tls-key F --tls-client-ca F`).
//!
//! The router serves TLS 1.2 and 1.3 with rustls (the `ring` provider, named explicitly so no
//! process-wide default is needed) and *requires* a client certificate signed by a CA of the
//! client-CA bundle: a peer without one never gets to send a gRPC frame. tonic's own
//! `ServerTlsConfig` builds its rustls config once and keeps it; here the config in force lives in
//! an [`ArcSwap`] and every new connection is handshaken with the config in force when it was
//! accepted, so certificates rotate without a restart:
//! - the three files are re-read every poll period and on SIGHUP, and compared by content (a
//!   Kubernetes Secret volume swaps a symlink, `cp` rewrites a file in place: both are seen); a
//!   change counts once two reads in a row agree, so a set read halfway through a rotation is
//!   not taken;
//! - a changed set that builds is swapped in; one that does not (a half-written rotation, a key
//!   that does not match its certificate, a missing file) is logged and counted once, and the
//!   certificates in force stay;
//! - connections already open keep the session they were accepted with.
//!
//! Each handshake runs in a task of its own under a deadline, so a peer that connects and sends
//! nothing holds up nobody; tonic gets finished TLS streams through `serve_with_incoming`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::reload::{Wakeups, off_the_workers};
use crate::telemetry::Metrics;

/// A handshake not finished after this long is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many handshakes run at once; a connection beyond them is closed at once, so a
/// flood of silent connections costs bounded memory.
const MAX_HANDSHAKES: usize = 256;

/// Where the listener's identity and the client CAs are: PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain the router presents (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CAs whose client certificates are accepted (one or more; several during a CA rotation).
    pub client_ca: PathBuf,
}

/// Why the certificate files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} and {}: {reason}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The files' contents, as last read.
#[derive(PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

impl TlsFiles {
    fn read(&self) -> Result<Snapshot, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Snapshot {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: read(&self.client_ca)?,
        })
    }

    fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
        TlsError::Invalid {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// A server config that presents `cert` and requires a client certificate from `client_ca`.
    fn build(&self, files: &Snapshot) -> Result<ServerConfig, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Self::invalid(&self.cert, format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(Self::invalid(&self.cert, "no PEM CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_slice(&files.key)
            .map_err(|e| Self::invalid(&self.key, format!("no PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files.client_ca) {
            let ca = ca.map_err(|e| {
                Self::invalid(&self.client_ca, format!("not PEM certificates: {e}"))
            })?;
            roots.add(ca).map_err(|e| {
                Self::invalid(&self.client_ca, format!("not a usable CA certificate: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(Self::invalid(&self.client_ca, "no PEM CERTIFICATE block"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| Self::invalid(&self.client_ca, e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Self::invalid(&self.cert, e.to_string()))?
            .with_client_cert_verifier(verifier)
            // Checks that the key belongs to the certificate: a half-rotated pair is refused here
            // rather than failing every handshake.
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Pair {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason: e.to_string(),
            })?;
        // gRPC is HTTP/2; tonic's and Envoy's clients insist on negotiating it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// What the last look at the files found: their contents, or why they could not be read.
#[derive(PartialEq, Eq)]
enum Seen {
    Files(Snapshot),
    Unreadable(String),
}

/// The TLS config in force for new connections, rebuilt when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    seen: Mutex<Seen>,
    metrics: Arc<Metrics>,
}

impl ServerTls {
    /// Loads the files; an unusable set is an error (the router does not start without TLS).
    pub fn load(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let snapshot = files.read()?;
        let config = files.build(&snapshot)?;
        metrics.tls_loaded(true);
        Ok(Arc::new(ServerTls {
            files,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(Seen::Files(snapshot)),
            metrics,
        }))
    }

    /// The config a connection accepted now is handshaken with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files. `Ok(true)`: they changed and the new set is in force; `Ok(false)`:
    /// nothing changed since the last look; `Err`: they changed into something unusable (reported
    /// once per change), and the config in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = match self.files.read() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                let unreadable = Seen::Unreadable(e.to_string());
                if *seen == unreadable {
                    return Ok(false);
                }
                *seen = unreadable;
                self.metrics.tls_loaded(false);
                return Err(e);
            }
        };
        if matches!(&*seen, Seen::Files(last) if *last == snapshot) {
            return Ok(false);
        }
        // The three files are read one after the other: a rotation landing between two reads
        // would give a certificate from one version and a key (or CAs) from another. A second
        // read that differs means a rotation is under way; the next look sees it finished.
        if self.files.read().ok().as_ref() != Some(&snapshot) {
            return Ok(false);
        }
        let built = self.files.build(&snapshot);
        *seen = Seen::Files(snapshot);
        match built {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.metrics.tls_loaded(true);
                Ok(true)
            }
            Err(e) => {
                self.metrics.tls_loaded(false);
                Err(e)
            }
        }
    }

    /// Reloads on SIGHUP and every `poll` (`None`: SIGHUP only), logging the outcome. Runs until
    /// the process ends.
    pub async fn watch(self: Arc<Self>, poll: Option<Duration>) {
        let mut wakeups = Wakeups::new("the TLS certificates", poll);
        loop {
            wakeups.next().await;
            // File reads and a rustls config build: off the workers that serve connections.
            let tls = Arc::clone(&self);
            match off_the_workers(move || tls.reload()).await {
                Ok(true) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificates reloaded: new connections use them"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!("TLS certificates rejected, keeping the ones in force: {e}")
                }
            }
        }
    }
}

/// Accepts TCP connections on `listener` and yields them once their TLS handshake (with the
/// config in force at accept time) has succeeded. Accepting stops, and the listening socket
/// closes, as soon as the consumer drops the stream (tonic does on shutdown).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accepting a TLS connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tls.metrics.tls_handshake("shed");
                tracing::debug!(%peer, "too many TLS handshakes at once: connection closed");
                continue;
            };
            // Nagle's algorithm against Envoy's delayed ACKs would hold each small reply ~40 ms.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("TCP_NODELAY not set: {e}");
            }
            let acceptor = TlsAcceptor::from(tls.current());
            let metrics = Arc::clone(&tls.metrics);
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        metrics.tls_handshake("ok");
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // Connected and left without a word: a TCP port check or a scanner.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        metrics.tls_handshake("closed");
                        tracing::debug!(%peer, "TLS connection closed before a handshake: {e}");
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake("failed");
                        tracing::warn!(%peer, "TLS handshake refused: {e}");
                    }
                    Err(_) => {
                        metrics.tls_handshake("timeout");
                        tracing::info!(%peer, "TLS handshake not finished in {HANDSHAKE_TIMEOUT:?}: dropped");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
