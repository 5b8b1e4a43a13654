//! The floor under the ingestion benchmark: the same HTTP contract as the ingestion API
//! (`POST /v1/datasets` to declare, `POST /v1/datasets/{name}/events` answered with one
//! accepted event) served by axum and hyper alone. Each event's JSON is parsed, then the
//! answer waits on a timer for as long as the broker's acknowledgement takes the platform
//! (`--ack-ms`), so connections are kept busy the same way, but nothing is validated,
//! encoded, produced or authorised. What this server spends per request is what any axum
//! service spends on this machine before doing anything: `floor.sh` drives it with
//! `ingest-load` on the shared runtime and on lanes (`mlops_runtime::lanes`).

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "A bare axum server with the ingestion API's shape, for the cost floor")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:39199")]
    listen: String,
    /// Threads with single-threaded runtimes serving the connections; 0 serves them on
    /// a shared work-stealing runtime (one worker per core), as the platform's services
    /// other than ingestion do.
    #[arg(long, default_value_t = 0)]
    lanes: usize,
    /// How long each answer waits, standing in for the broker's acknowledgement.
    #[arg(long, default_value_t = 6.5)]
    ack_ms: f64,
}

async fn events(
    State(ack): State<Arc<Duration>>,
    body: Bytes,
) -> Result<Json<Value>, (StatusCode, String)> {
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    tokio::time::sleep(*ack).await;
    drop(event);
    Ok(Json(json!({
        "accepted": 1, "duplicates": 0, "rejected": 0,
        "results": [{"index": 0, "offset": 0, "partition": 0, "status": "accepted"}],
    })))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ack = Arc::new(Duration::from_secs_f64(args.ack_ms / 1000.0));
    let router = Router::new()
        .route("/v1/datasets", post(|| async { StatusCode::CREATED }))
        .route("/v1/datasets/{name}/events", post(events))
        .with_state(ack);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            let served = mlops_runtime::lanes::serve_on_lanes(listener, router, cancel, args.lanes);
            tokio::select! {
                served = served => served?,
                () = mlops_runtime::shutdown_signal() => stop.cancel(),
            }
            Ok(())
        })
}
