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

use std::{io, net::SocketAddr, thread, time::Duration};

use axum::{
    Router,
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use crate::tls::PeerAddr;

/// A connection accepted by the listener, not yet registered with any runtime.
type Accepted = (std::net::TcpStream, SocketAddr);

/// The connections handed to one lane, as axum's server takes them.
pub struct Lane {
    incoming: mpsc::UnboundedReceiver<Accepted>,
    local: SocketAddr,
}

impl Listener for Lane {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.recv().await {
                // Registered with this lane's runtime, whose thread alone polls it.
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => return (stream, peer),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "connection not registered; dropped")
                    }
                },
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
    let local = listener.local_addr()?;
    // A lane that fails stops the others and the acceptor, as a failed server would.
    let stop = cancel.child_token();
    let mut senders = Vec::with_capacity(lanes);
    let mut finished = Vec::with_capacity(lanes);
    for number in 0..lanes {
        let (sender, incoming) = mpsc::unbounded_channel();
        let (done, finish) = oneshot::channel();
        let (router, lane_stop) = (router.clone(), stop.clone());
        let spawned = thread::Builder::new()
            .name(format!("http-lane-{number}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(crate::admin::serve_on(
                            Lane { incoming, local },
                            router,
                            lane_stop.clone(),
                        ))
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
