//! HTTPS for every service's API, with rustls: a certificate chain and key from PEM files
//! (read again on SIGHUP, so a renewed certificate is served without dropping a
//! connection), and client certificates required and checked against a CA when mutual TLS
//! is configured.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

/// A client has this long to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the client of a connection, plain or TLS, for handlers and the audit
/// trail (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The cryptography every TLS endpoint of the platform uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} does not go with its key: {e}", cert.display()))?;
    Ok(Arc::new(certified))
}

/// The certificate served, swapped in place by [`ServerTls::reload`].
#[derive(Debug)]
struct Reloadable {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A service's TLS settings, loaded.
#[derive(Clone, Debug)]
pub struct ServerTls {
    certificate: Arc<Reloadable>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Serves `cert` (a PEM chain) with `key`; with `client_ca`, every client must present
    /// a certificate it signed (mutual TLS).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        let certificate = Arc::new(Reloadable {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(certified_key(cert, key)?),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            certificate,
            config: Arc::new(config),
        })
    }

    /// What completes the server's side of handshakes with this configuration.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// Reads the certificate and key files again; new handshakes get them, connections
    /// already open keep theirs. A broken file leaves the current certificate in place.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.certificate.cert, &self.certificate.key)?;
        *self
            .certificate
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// A TLS handshake under way: the connection and its peer, or nothing if it failed.
pub(crate) type Handshake = BoxFuture<'static, Option<(TlsStream<TcpStream>, SocketAddr)>>;

/// The server's side of `stream`'s handshake, within [`HANDSHAKE_TIMEOUT`].
pub(crate) fn handshake(acceptor: &TlsAcceptor, stream: TcpStream, peer: SocketAddr) -> Handshake {
    let acceptor = acceptor.clone();
    Box::pin(async move {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some((tls, peer)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    })
}

/// Accepts TCP connections and completes their TLS handshakes concurrently, so that a
/// slow or silent client holds up nobody else.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: FuturesUnordered<Handshake>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: &ServerTls) -> Self {
        Self {
            tcp,
            acceptor: tls.acceptor(),
            handshakes: FuturesUnordered::new(),
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.handshakes.push(handshake(&self.acceptor, stream, peer));
                    }
                    // Out of file descriptors and the like: let them free up.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    if let Some(connection) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `router` over TLS until `cancel` fires; SIGHUP reloads the certificate.
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let served = axum::serve(
        TlsListener::new(listener, &tls),
        router.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(cancel.clone().cancelled_owned());
    let (served, ()) = tokio::join!(served.into_future(), reload_on_hangup(tls, cancel));
    served
}

/// Until `cancel` fires: on every SIGHUP, `tls`'s certificate and key are read again.
pub(crate) async fn reload_on_hangup(tls: ServerTls, cancel: CancellationToken) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = hangups.recv() => match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the current one stays"),
            },
        }
    }
}
