//! Connections served on lanes: threads of their own, each running a single-threaded
//! runtime, to which the listener hands its connections in turn.
//!
//! Why: on the shared work-stealing runtime a request that wakes one worker often wakes a
//! second one to look for work to steal, and a connection's request, handler and answer
//! may run on different threads. On a lane a connection, its handlers and their timers
//! live on one thread and wake no other. Measured on 2 cores (`load-tests/README.md`,
//! "2026-12-06, night"): a bare axum server spends about a quarter less CPU per request
//! at 32 connections this way. What the handlers share (the Kafka producer, the database
//! pool, metrics) is thread-safe and runtime-agnostic. Two things are not: a task a
//! handler spawns runs on its lane and ends with it, and `tokio::task::block_in_place`
//! (polars calls it) panics on a single-threaded runtime — so only ingestion, whose
//! handlers do neither, serves on lanes.
//!
//! Over TLS each lane completes the handshakes of the connections dealt to it, so the
//! encryption of a connection's requests and answers stays on its lane too.

use std::{io, net::SocketAddr, thread, time::Duration};

use axum::{
    Router,
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use futures::{StreamExt, stream::FuturesUnordered};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

use crate::tls::{Handshake, PeerAddr, ServerTls};

/// A connection accepted by the listener, not yet registered with any runtime.
type Accepted = (std::net::TcpStream, SocketAddr);

/// The connections handed to one lane, as axum's server takes them.
pub struct Lane {
    incoming: mpsc::UnboundedReceiver<Accepted>,
    local: SocketAddr,
}

/// Registers a connection with the current lane's runtime, whose thread alone polls it.
fn registered((stream, peer): Accepted) -> Option<(TcpStream, SocketAddr)> {
    match TcpStream::from_std(stream) {
        Ok(stream) => Some((stream, peer)),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "connection not registered; dropped");
            None
        }
    }
}

impl Listener for Lane {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.recv().await {
                Some(accepted) => {
                    if let Some(connection) = registered(accepted) {
                        return connection;
                    }
                }
                // The acceptor has stopped: only the graceful shutdown ends this server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, Lane>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, Lane>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The connections handed to one lane, each handed on to the server once its TLS
/// handshake is complete. Handshakes run concurrently: a slow client holds up nobody.
pub struct TlsLane {
    incoming: mpsc::UnboundedReceiver<Accepted>,
    /// The acceptor has stopped: only handshakes under way are left.
    closed: bool,
    local: SocketAddr,
    acceptor: TlsAcceptor,
    handshakes: FuturesUnordered<Handshake>,
}

impl Listener for TlsLane {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                next = self.incoming.recv(), if !self.closed => match next {
                    Some(accepted) => {
                        if let Some((stream, peer)) = registered(accepted) {
                            self.handshakes
                                .push(crate::tls::handshake(&self.acceptor, stream, peer));
                        }
                    }
                    None => self.closed = true,
                },
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    if let Some(connection) = done {
                        return connection;
                    }
                }
                // Only the graceful shutdown ends this server.
                else => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsLane>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsLane>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `router` on `lanes` threads until `cancel` fires, then lets every lane's
/// in-flight requests finish. Connections are dealt to the lanes in turn as accepted.
/// No lanes: served on the caller's runtime ([`crate::serve`]).
pub async fn serve_on_lanes(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    lanes: usize,
) -> io::Result<()> {
    if lanes == 0 {
        return crate::admin::serve(listener, router, cancel).await;
    }
    run_lanes(listener, router, cancel, lanes, None).await
}

/// [`serve_on_lanes`] over TLS: each lane completes its connections' handshakes; SIGHUP
/// reloads the certificate. No lanes: [`crate::tls::serve_tls`] on the caller's runtime.
pub async fn serve_tls_on_lanes(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    cancel: CancellationToken,
    lanes: usize,
) -> io::Result<()> {
    if lanes == 0 {
        return crate::tls::serve_tls(listener, tls, router, cancel).await;
    }
    let acceptor = tls.acceptor();
    // Reloads stop with the lanes, also when a lane failed and `cancel` never fires.
    let reloading = cancel.child_token();
    let serving = async {
        let served = run_lanes(listener, router, cancel, lanes, Some(acceptor)).await;
        reloading.cancel();
        served
    };
    let (served, ()) = tokio::join!(
        serving,
        crate::tls::reload_on_hangup(tls, reloading.clone())
    );
    served
}

/// Starts `lanes` threads, plain or completing TLS handshakes with `tls`, and deals them
/// the listener's connections until `cancel` fires.
async fn run_lanes(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    lanes: usize,
    tls: Option<TlsAcceptor>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    // A lane that fails stops the others and the acceptor, as a failed server would.
    let stop = cancel.child_token();
    let mut senders = Vec::with_capacity(lanes);
    let mut finished = Vec::with_capacity(lanes);
    for number in 0..lanes {
        let (sender, incoming) = mpsc::unbounded_channel();
        let (done, finish) = oneshot::channel();
        let (router, lane_stop, tls) = (router.clone(), stop.clone(), tls.clone());
        let spawned = thread::Builder::new()
            .name(format!("http-lane-{number}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        let stop = lane_stop.clone();
                        runtime.block_on(async move {
                            match tls {
                                None => {
                                    let lane = Lane { incoming, local };
                                    crate::admin::serve_on(lane, router, stop).await
                                }
                                Some(acceptor) => {
                                    let lane = TlsLane {
                                        incoming,
                                        closed: false,
                                        local,
                                        acceptor,
                                        handshakes: FuturesUnordered::new(),
                                    };
                                    crate::admin::serve_on(lane, router, stop).await
                                }
                            }
                        })
                    });
                lane_stop.cancel();
                let _ = done.send(served);
            });
        if let Err(e) = spawned {
            // The lanes already started end with nothing to serve.
            stop.cancel();
            return Err(e);
        }
        senders.push(sender);
        finished.push(finish);
    }
    accept(&listener, &senders, &stop).await;
    // Also when the acceptor stopped because a lane was gone (panicked): the others drain.
    stop.cancel();
    drop(senders);
    drop(listener);
    let mut outcome = Ok(());
    for finish in finished {
        let served = finish
            .await
            .unwrap_or_else(|_| Err(io::Error::other("an HTTP lane panicked")));
        if outcome.is_ok() {
            outcome = served;
        }
    }
    outcome
}

/// Accepts until `stop`, dealing connections to the lanes in turn.
async fn accept(
    listener: &TcpListener,
    lanes: &[mpsc::UnboundedSender<Accepted>],
    stop: &CancellationToken,
) {
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: let them free up.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Taken off this runtime's reactor, to be registered with the lane's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "connection not handed to a lane; dropped");
                continue;
            }
        };
        if lanes[next].send((stream, peer)).is_err() {
            // The lane has stopped, so every lane is stopping.
            return;
        }
        next = (next + 1) % lanes.len();
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the server under test runs as a plain task
mod tests {
    use std::{collections::HashSet, sync::Arc};

    use axum::{extract::ConnectInfo, routing::get};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A router answering which thread served the request and the client's address.
    fn router() -> Router {
        Router::new().route(
            "/who",
            get(
                |ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>| async move {
                    format!(
                        "{} {peer}",
                        thread::current().name().unwrap_or("unnamed").to_owned()
                    )
                },
            ),
        )
    }

    /// One request on its own connection; the body of the answer.
    async fn ask(addr: SocketAddr) -> (String, SocketAddr) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap().to_owned();
        (body, local)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_dealt_to_every_lane_and_served_there() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_on_lanes(listener, router(), cancel.clone(), 3));

        let mut lanes = HashSet::new();
        for _ in 0..6 {
            let (body, client) = ask(addr).await;
            let (lane, peer) = body.split_once(' ').unwrap();
            // Handlers see the client's address, as on the shared runtime.
            assert_eq!(peer, client.to_string());
            assert!(lane.starts_with("http-lane-"), "served on {lane}");
            lanes.insert(lane.to_owned());
        }
        assert_eq!(lanes.len(), 3, "each lane took its turn: {lanes:?}");

        cancel.cancel();
        served.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once served"
        );
    }

    /// `GET /who` on `stream`, whatever carries it; the body of the answer.
    async fn ask_on<S>(mut stream: S) -> String
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        stream
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        // Until the server closes: a TLS client may see the close as an error.
        while let Ok(read @ 1..) = stream.read(&mut chunk).await {
            answer.extend_from_slice(&chunk[..read]);
        }
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer.split("\r\n\r\n").nth(1).unwrap().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_each_lane_completes_its_handshakes_and_serves_there() {
        let dir = tempfile::tempdir().unwrap();
        let issued = certificate(dir.path(), "server");
        let tls = ServerTls::load(
            &dir.path().join("server.pem"),
            &dir.path().join("server.key"),
            None,
        )
        .unwrap();
        let (addr, cancel, served) = serving_tls(tls, 2).await;
        let connector = trusting(&[issued]);

        // A client that connects and never says a word: its lane's other handshakes go on.
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut lanes = HashSet::new();
        for _ in 0..4 {
            let (stream, _) = handshake_with(&connector, addr).await;
            let client_addr = stream.get_ref().0.local_addr().unwrap();
            let body = ask_on(stream).await;
            let (lane, peer) = body.split_once(' ').unwrap();
            assert_eq!(peer, client_addr.to_string());
            assert!(lane.starts_with("http-lane-"), "served on {lane}");
            lanes.insert(lane.to_owned());
        }
        assert_eq!(lanes.len(), 2, "each lane took its turn: {lanes:?}");

        // Plain HTTP on a TLS port gets no answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("http-lane-"),
            "answered in plain HTTP"
        );

        drop(silent);
        cancel.cancel();
        served.await.unwrap().unwrap();
    }

    /// `router()` served over TLS on `lanes` (0: the caller's runtime) on a port of its own:
    /// its address, the token that stops it, and the server.
    async fn serving_tls(
        tls: ServerTls,
        lanes: usize,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_tls_on_lanes(
            listener,
            tls,
            router(),
            cancel.clone(),
            lanes,
        ));
        (addr, cancel, served)
    }

    /// A self-signed certificate for `localhost`, written to `dir` as `<name>.pem` and
    /// `<name>.key`; its DER.
    fn certificate(dir: &std::path::Path, name: &str) -> rustls_pki_types::CertificateDer<'static> {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), issued.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            issued.signing_key.serialize_pem(),
        )
        .unwrap();
        issued.cert.der().clone()
    }

    /// A TLS client trusting `certificates` alone.
    fn trusting(
        certificates: &[rustls_pki_types::CertificateDer<'static>],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate.clone()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(client))
    }

    /// A TLS connection to `addr`; the certificate the server presented.
    async fn handshake_with(
        connector: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
    ) -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        rustls_pki_types::CertificateDer<'static>,
    ) {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        (stream, presented)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_on_lanes_a_renewed_certificate_is_served_after_sighup() {
        renewed_certificate_served_after_sighup(2).await;
    }

    /// Every other service serves TLS on its shared runtime: the same reload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_on_the_shared_runtime_a_renewed_certificate_is_served_after_sighup() {
        renewed_certificate_served_after_sighup(0).await;
    }

    async fn renewed_certificate_served_after_sighup(lanes: usize) {
        // SIGHUP is handled from here on in this process: never its default, which ends it.
        let _handled =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = certificate(dir.path(), "first");
        let renewed = certificate(dir.path(), "renewed");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::copy(dir.path().join("first.pem"), &cert).unwrap();
        std::fs::copy(dir.path().join("first.key"), &key).unwrap();
        let tls = ServerTls::load(&cert, &key, None).unwrap();
        let (addr, cancel, served) = serving_tls(tls, lanes).await;

        let connector = trusting(&[first.clone(), renewed.clone()]);
        let (open, presented) = handshake_with(&connector, addr).await;
        assert!(presented == first, "the first certificate is served");

        // Renewed on disk, then SIGHUP: new handshakes get it.
        std::fs::copy(dir.path().join("renewed.pem"), &cert).unwrap();
        std::fs::copy(dir.path().join("renewed.key"), &key).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Again until seen: a signal sent before the server listens for it is not its.
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP)
                .unwrap();
            let (fresh, presented) = handshake_with(&connector, addr).await;
            if presented == renewed {
                let body = ask_on(fresh).await;
                assert_eq!(body.starts_with("http-lane-"), lanes > 0, "{body}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the renewed certificate was never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A connection made before the reload is served on as it was.
        let body = ask_on(open).await;
        assert_eq!(body.starts_with("http-lane-"), lanes > 0, "{body}");

        cancel.cancel();
        served.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_in_flight_at_shutdown_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (entered, mut entering) = mpsc::unbounded_channel::<()>();
        let release = Arc::new(tokio::sync::Notify::new());
        let router = Router::new().route(
            "/slow",
            get({
                let release = release.clone();
                move || async move {
                    entered.send(()).unwrap();
                    release.notified().await;
                    "done"
                }
            }),
        );
        let served = tokio::spawn(serve_on_lanes(listener, router, cancel.clone(), 2));

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        entering.recv().await.unwrap();
        cancel.cancel();
        release.notify_one();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        served.await.unwrap().unwrap();
    }
}
