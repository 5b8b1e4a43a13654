//! The admin endpoints every service exposes on its HTTP port:
//! `GET /healthz` (the process is alive), `GET /readyz` (its dependencies answer) and
//! `GET /metrics` (Prometheus / OpenMetrics text).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::series::SeriesCache;
use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Routes of the admin router itself.
const ADMIN_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long one readiness probe may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency probed by `/readyz` (broker, schema registry, database...).
#[derive(Clone)]
pub struct ReadinessCheck {
    name: String,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadinessCheck {
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

type Labels = Vec<(String, String)>;

/// Shared state of the admin endpoints and the HTTP metrics middleware.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    checks: Vec<ReadinessCheck>,
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    http_duration: Family<Labels, Histogram>,
    /// Each route's latency and request series, by method and status.
    http_series: SeriesCache<(axum::http::Method, u16), (Histogram, Counter)>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// `registry` holds the service's own metrics; HTTP and build metrics are added here.
    pub fn new(
        service: impl Into<String>,
        mut registry: Registry,
        checks: Vec<ReadinessCheck>,
    ) -> Self {
        let service = service.into();
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("service".to_owned(), service.clone()),
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ])
            .set(1);
        registry.register(
            "mlops_build_info",
            "Build of the running service",
            build_info,
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "mlops_http_requests",
            "HTTP requests served, by method, route and status",
            http_requests.clone(),
        );
        let http_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "mlops_http_request_duration_seconds",
            "HTTP request latency, by method and route",
            http_duration.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                service,
                checks,
                registry,
                http_requests,
                http_duration,
                http_series: Default::default(),
            }),
        }
    }

    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Runs every readiness probe concurrently.
    pub async fn readiness(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results = futures::future::join_all(
            self.inner
                .checks
                .iter()
                .map(|check| async move { (check.name.clone(), check.run().await) }),
        )
        .await;
        let ready = results.iter().all(|(_, r)| r.is_ok());
        let checks = results
            .into_iter()
            .map(|(name, result)| {
                let value = match result {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e,
                };
                (name, serde_json::Value::String(value))
            })
            .collect();
        (ready, checks)
    }

    /// Admin routes, to be merged into the service's own router.
    pub fn router(&self) -> Router {
        self.probes()
            .route("/metrics", get(metrics).with_state(self.clone()))
    }

    /// `/healthz` and `/readyz` alone: what answers while a service is still starting.
    pub fn probes(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn healthz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "service": state.inner.service}))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let (ready, checks) = state.readiness().await;
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(json!({"status": word, "service": state.inner.service, "checks": checks})),
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &state.inner.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

impl AdminState {
    /// Answers `request` with `handle`, counted (requests, latency by route template) and,
    /// outside the probes, in a server span continuing the caller's `traceparent`. Called
    /// by the layer of the service's own around its handlers (`mlops_service`'s `Gate`).
    pub async fn observe<F, Fut>(&self, request: Request, handle: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        // Label by route template, never by raw path: paths carry ids and would explode
        // cardinality.
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = request.method().clone();
        let started = std::time::Instant::now();
        // Probes and scrapes arrive every few seconds: counted, but not traced.
        let response = if ADMIN_ROUTES.contains(&route) {
            handle(request).await
        } else {
            let span = tracing::info_span!(
                "http request",
                otel.name = %format!("{method} {route}"),
                otel.kind = "server",
                http.request.method = %method,
                http.route = %route,
                http.response.status_code = tracing::field::Empty,
            );
            if !span.is_disabled() {
                let _ = span.set_parent(mlops_telemetry::extract_http_context(request.headers()));
            }
            let response = handle(request).instrument(span.clone()).await;
            span.record("http.response.status_code", response.status().as_u16());
            response
        };
        self.observe_http(
            route,
            &method,
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    }
}

impl AdminState {
    /// Counts one answered request and its latency.
    fn observe_http(&self, route: &str, method: &axum::http::Method, status: u16, took: Duration) {
        let labels = |extra: Option<u16>| {
            let mut labels = vec![
                ("method".to_owned(), method.as_str().to_owned()),
                ("route".to_owned(), route.to_owned()),
            ];
            labels.extend(extra.map(|s| ("status".to_owned(), s.to_string())));
            labels
        };
        let (duration, requests) =
            self.inner
                .http_series
                .get(route, (method.clone(), status), || {
                    (
                        self.inner
                            .http_duration
                            .get_or_create(&labels(None))
                            .clone(),
                        self.inner
                            .http_requests
                            .get_or_create(&labels(Some(status)))
                            .clone(),
                    )
                });
        duration.observe(took.as_secs_f64());
        requests.inc();
    }
}

/// Serves `router` until `cancel` fires, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_on(listener, router, cancel).await
}

/// [`serve`] on any listener whose connections know their client's address.
pub(crate) async fn serve_on<L>(
    listener: L,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    crate::tls::PeerAddr:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    // Handlers and the audit trail see the client's address.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<crate::tls::PeerAddr>(),
    )
    .with_graceful_shutdown(cancel.cancelled_owned())
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_json(router: Router, uri: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_the_failing_dependency() {
        let state = AdminState::new(
            "test",
            Registry::default(),
            vec![
                ReadinessCheck::new("broker", || async { Ok(()) }),
                ReadinessCheck::new("database", || async {
                    Err("connection refused".to_owned())
                }),
            ],
        );
        // Counted as the services' one layer counts: `observe` around the handlers.
        let router =
            state.router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                |State(state): State<AdminState>,
                 request: Request,
                 next: axum::middleware::Next| async move {
                    state.observe(request, |request| next.run(request)).await
                },
            ));
        let (status, body) = get_json(router.clone(), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"service":"test","status":"ok"}"#);

        let (status, body) = get_json(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"]["broker"], "ok");
        assert_eq!(body["checks"]["database"], "connection refused");

        let (status, body) = get_json(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"mlops_build_info{service="test""#),
            "{body}"
        );
        assert!(
            body.contains(
                r#"mlops_http_requests_total{method="GET",route="/readyz",status="503"} 1"#
            ),
            "{body}"
        );
    }
}
