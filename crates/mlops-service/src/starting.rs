//! A service's start while its database does not answer yet.
//!
//! In production the database (PostgreSQL) can come up after the services: one
//! `docker compose up`, a node restart, a managed database's failover. A service that
//! exited then would be restarted with a growing back-off (Kubernetes waits up to five
//! minutes between restarts), and so come back long after its database. Instead it waits:
//! it tries again with a back-off, and meanwhile its port answers the probes — `/healthz`
//! live, `/readyz` 503 naming the database and the last error, any other path 503
//! `starting` with `Retry-After` — and it serves its API as soon as the database answers,
//! without a restart. What waiting will not change (a malformed URL, a migration edited
//! after it was applied, an SQLite file that cannot be opened) stops the start at once.

use std::{os::fd::AsFd, time::Duration};

use axum::{http::StatusCode, response::IntoResponse};
use mlops_runtime::{AdminState, ReadinessCheck};
use sqlx::AnyPool;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::{
    ApiError, CommonConfig,
    database::{self, Migration},
};

/// The first wait between two attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the probes' server may take to finish its last answers once the database is up.
const PROBES_DRAIN: Duration = Duration::from_secs(5);

/// The service's database (`common.database_url(service)`, `migrations` applied), waited
/// for as the module says while `listener` answers the probes. `None` when `cancel` fired
/// first.
pub async fn database(
    common: &CommonConfig,
    service: &'static str,
    listener: &TcpListener,
    migrations: &[Migration],
    cancel: &CancellationToken,
) -> anyhow::Result<Option<AnyPool>> {
    let url = common.database_url(service);
    // Reached first, so that the reason shows while waiting (see `database::reach`).
    let open = async || {
        database::reach(&url).await?;
        database::connect(&url, migrations).await
    };
    let first = match open().await {
        Ok(pool) => return Ok(Some(pool)),
        Err(e) if database::worth_waiting_for(&url, &e) => e,
        Err(e) => return Err(e.into()),
    };
    tracing::warn!(
        service,
        error = %first,
        "the database does not answer: trying again; until it does, /readyz says why and \
         the API answers 503"
    );
    let (waiting_for, last_error) = watch::channel(first.to_string());
    let probes_cancel = cancel.child_token();
    // Beside the attempts, in this task: nothing is left running once the start is over.
    let probes = async {
        let served = serve_probes(
            common.clone(),
            service,
            clone_listener(listener)?,
            last_error,
            probes_cancel.clone(),
        );
        tokio::pin!(served);
        tokio::select! {
            result = &mut served => result,
            // Probe answers are instant; a connection held open longer is not waited for.
            () = probes_cancel.cancelled() => tokio::time::timeout(PROBES_DRAIN, served)
                .await
                .unwrap_or(Ok(())),
        }
    };
    let attempts = async {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 1u32;
        let outcome = loop {
            let attempt = async {
                tokio::time::sleep(backoff).await;
                open().await
            };
            let result = tokio::select! {
                () = cancel.cancelled() => break Ok(None),
                result = attempt => result,
            };
            attempts += 1;
            match result {
                Ok(pool) => {
                    tracing::info!(service, attempts, "the database answers: serving");
                    break Ok(Some(pool));
                }
                Err(e) if database::worth_waiting_for(&url, &e) => {
                    tracing::warn!(service, attempts, error = %e, "the database does not answer yet");
                    waiting_for.send_replace(e.to_string());
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => break Err(e.into()),
            }
        };
        probes_cancel.cancel();
        outcome
    };
    let (outcome, probes) = tokio::join!(attempts, probes);
    if let Err(e) = probes {
        // Only the probes are lost: the start itself goes on.
        tracing::warn!(service, error = %e, "the probes' server stopped with an error");
    }
    outcome
}

/// A second handle on the same listening socket: the probes' server accepts on it while
/// the service starts, and the service's own server takes over on `listener` after it,
/// so no connection is refused in between.
fn clone_listener(listener: &TcpListener) -> anyhow::Result<TcpListener> {
    let fd = listener.as_fd().try_clone_to_owned()?;
    // Same open socket, so already non-blocking, as tokio requires.
    Ok(TcpListener::from_std(std::net::TcpListener::from(fd))?)
}

async fn serve_probes(
    common: CommonConfig,
    service: &'static str,
    listener: TcpListener,
    last_error: watch::Receiver<String>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ready_error = last_error.clone();
    let database = ReadinessCheck::new("database", move || {
        let error = ready_error.borrow().clone();
        async move { Err(format!("waiting for it: {error}")) }
    });
    let admin = AdminState::new(service, Default::default(), vec![database]);
    let router = admin.probes().fallback(move || {
        let error = last_error.borrow().clone();
        async move {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                format!(
                    "the {service} service is starting: its database does not answer yet \
                     ({error})"
                ),
            )
            .retry_after(MAX_BACKOFF.as_secs())
            .into_response()
        }
    });
    common.serve(listener, router, cancel).await
}
