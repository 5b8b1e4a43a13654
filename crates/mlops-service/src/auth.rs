//! Who may call what: the platform's roles, principals authenticated by bearer tokens
//! (static API keys for service accounts, kept hashed at rest), and the decision a route
//! table's role implies — one function the HTTP layer calls for every request, rather than
//! a check in each handler.
//!
//! A token travels as `Authorization: Bearer <token>`, or as HTTP basic auth with the user
//! `token` and the token as password (what Confluent's clients speak to a Schema Registry).

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use axum::{
    Router,
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use mlops_events::AuditOutcome;

use crate::{
    ApiError,
    audit::{AuditEntry, Auditor},
    routes::{OPEN, Role, Route, RouteIndex},
};

/// The roles a principal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformRole {
    /// Publishes events and labels to (its) datasets.
    Producer,
    /// Declares datasets, feature views and model specs; starts training runs.
    DataScientist,
    /// Moves model versions between stages and rolls them back.
    Approver,
    /// Reads everything operational.
    Sre,
    /// Everything.
    Admin,
}

impl PlatformRole {
    /// Whether this role grants what a route requiring `role` does.
    pub fn grants(self, role: Role) -> bool {
        match (self, role) {
            (Self::Admin, _) => true,
            // Applications publish events and ask for predictions.
            (Self::Producer, r) => matches!(r, Role::Producer | Role::Inference),
            (Self::DataScientist, r) => {
                matches!(r, Role::Reader | Role::Inference | Role::Operator)
            }
            (Self::Approver, r) => matches!(r, Role::Reader | Role::Inference | Role::Approver),
            (Self::Sre, r) => matches!(r, Role::Reader | Role::Inference),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Who it is (a service account's name, a token's subject).
    pub subject: String,
    pub roles: BTreeSet<PlatformRole>,
    /// The datasets a producer may publish to; every dataset when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<BTreeSet<String>>,
}

impl Principal {
    /// Whether it may call a route requiring `role`, on `dataset` when the route names one.
    pub fn may(&self, role: Role, dataset: Option<&str>) -> Result<(), String> {
        if !self.roles.iter().any(|r| r.grants(role)) {
            return Err(format!(
                "{} holds {:?}, and this endpoint needs the {role:?} role",
                self.subject, self.roles
            ));
        }
        let admin = self.roles.contains(&PlatformRole::Admin);
        if let (Some(dataset), Some(allowed), false) = (dataset, &self.datasets, admin)
            && role == Role::Producer
            && !allowed.contains(dataset)
        {
            return Err(format!(
                "{} may publish to {allowed:?} only, not to dataset {dataset:?}",
                self.subject
            ));
        }
        Ok(())
    }
}

/// One stored API key: its SHA-256 (never the key itself) and whom it authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub sha256: String,
    #[serde(flatten)]
    pub principal: Principal,
}

/// The API keys a service accepts, looked up by their hash.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    /// By the SHA-256 of the token; the principal shared, not copied, into every request
    /// the key authenticates.
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = StoredKey>) -> Self {
        Self {
            by_hash: keys
                .into_iter()
                // A hash that is not 64 hex digits matches no token: left out.
                .filter_map(|k| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(k.sha256.trim(), &mut hash).ok()?;
                    Some((hash, Arc::new(k.principal)))
                })
                .collect(),
        }
    }

    /// Reads a JSON array of [`StoredKey`] (the file `mlops up` writes, or a mounted
    /// secret).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let keys: Vec<StoredKey> =
            serde_json::from_str(text).map_err(|e| format!("not a list of API keys: {e}"))?;
        Ok(Self::new(keys))
    }

    /// A new random token for `principal`, and what to store for it.
    pub fn issue(principal: Principal) -> (String, StoredKey) {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = format!("mlops_{}", hex::encode(bytes));
        let stored = StoredKey {
            sha256: digest(&token),
            principal,
        };
        (token, stored)
    }

    pub fn authenticate(&self, token: &str) -> Option<&Arc<Principal>> {
        self.by_hash
            .get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
    }
}

/// Who a token stands for: an API key of the platform's, or a JWT of the configured
/// identity provider.
#[derive(Debug)]
pub struct Authenticator {
    keys: ApiKeys,
    jwt: Option<crate::jwt::JwtVerifier>,
}

impl Authenticator {
    pub fn new(keys: ApiKeys, jwt: Option<crate::jwt::JwtVerifier>) -> Self {
        Self { keys, jwt }
    }

    /// Who `token` stands for: 401 when no one, 503 when the identity provider's keys
    /// cannot be read yet to tell.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, ApiError> {
        if let Some(principal) = self.keys.authenticate(token) {
            return Ok(principal.clone());
        }
        let unauthenticated =
            |reason: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", reason);
        match &self.jwt {
            Some(jwt) if token.split('.').count() == 3 => match jwt.verify(token).await {
                Ok(principal) => Ok(Arc::new(principal)),
                Err(crate::jwt::Unverified::Refused(reason)) => Err(unauthenticated(reason)),
                Err(unavailable @ crate::jwt::Unverified::ProviderUnavailable(_)) => {
                    Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "identity_provider_unavailable",
                        unavailable.to_string(),
                    )
                    .retry_after(crate::jwt::RETRY_UNREACHABLE.as_secs()))
                }
            },
            _ => Err(unauthenticated(
                "the token is not one this platform issued (or it was revoked)".to_owned(),
            )),
        }
    }

    /// The principal behind a request's credentials, and what `role` (on `dataset`)
    /// allows it: 401 without valid credentials, 403 with the wrong ones — each with its
    /// reason.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        role: Role,
        dataset: Option<&str>,
    ) -> Result<Arc<Principal>, ApiError> {
        let token = presented_token(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send a token: `Authorization: Bearer <token>` (or basic auth `token:<token>`)",
            )
        })?;
        let principal = self.authenticate(&token).await?;
        principal
            .may(role, dataset)
            .map_err(|reason| ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason))?;
        Ok(principal)
    }
}

/// The authorisation layer of one service: who its keys authenticate (nobody is asked
/// when auth is disabled), its route tables, and its audit trail. Fails closed: a request
/// the tables do not declare never reaches a handler.
#[derive(Debug, Clone)]
pub struct Gate {
    auth: Option<Arc<Authenticator>>,
    routes: RouteIndex,
    protect_metrics: bool,
    audit: Option<Auditor>,
    telemetry: Option<mlops_runtime::admin::AdminState>,
}

impl Gate {
    /// Checks credentials with `auth`; `None` lets everyone through (auth disabled).
    pub fn new(auth: Option<Authenticator>, tables: &[&'static [Route]]) -> Self {
        Self {
            auth: auth.map(Arc::new),
            routes: RouteIndex::new(tables),
            protect_metrics: false,
            audit: None,
            telemetry: None,
        }
    }

    /// Counts and traces every request (`AdminState::observe`) in the same layer, around
    /// the checks: refusals are counted too.
    pub fn telemetry(mut self, admin: mlops_runtime::admin::AdminState) -> Self {
        self.telemetry = Some(admin);
        self
    }

    /// `/metrics` then requires a reader's token.
    pub fn protect_metrics(mut self, protect: bool) -> Self {
        self.protect_metrics = protect;
        self
    }

    /// Records refused attempts on mutating routes, and the outcome of every route the
    /// tables mark as changing state.
    pub fn audit(mut self, auditor: Option<Auditor>) -> Self {
        self.audit = auditor;
        self
    }

    /// Wraps a service's router: every route of the tables requires its role (and a
    /// producer's dataset scope on the route's `{name}`); the open probes pass; anything
    /// else is answered 404 or 405 here, so a route missing from the tables is never
    /// served unguarded.
    pub fn protect(&self, router: Router) -> Router {
        // One layer, not one per concern: each layer boxes its future and clones the
        // route's service on every request.
        router.layer(middleware::from_fn_with_state(self.clone(), check))
    }

    /// The route a request calls, or the answer it gets without reaching a handler
    /// (`Ok(None)`: an open probe).
    fn route(
        &self,
        method: &str,
        path: &str,
        matched: Option<&str>,
    ) -> Result<Option<Route>, ApiError> {
        if path == "/metrics" && self.protect_metrics {
            return Ok(Some(Route::new("GET", "/metrics", Role::Reader)));
        }
        if OPEN.contains(&path) {
            return Ok(None);
        }
        match self.routes.find(method, path, matched) {
            Some(route) => Ok(Some(*route)),
            None if self.routes.path_known(path) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not served on {path}"),
            )),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {method} {path}"),
            )),
        }
    }
}

async fn check(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    match &gate.telemetry {
        Some(admin) => {
            admin
                .observe(request, |request| pass(&gate, request, next))
                .await
        }
        None => pass(&gate, request, next).await,
    }
}

/// The checks themselves: the route's role, the audit trail, the framework's refusals
/// worded as the platform's errors.
async fn pass(gate: &Gate, mut request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>();
    let route = match gate.route(
        request.method().as_str(),
        request.uri().path(),
        matched.map(MatchedPath::as_str),
    ) {
        Err(answer) => return answer.into_response(),
        Ok(None) => return json_errors(next.run(request).await).await,
        Ok(Some(route)) => route,
    };
    let principal = match &gate.auth {
        None => None,
        Some(auth) => {
            let path = request.uri().path();
            let dataset = (route.role == Role::Producer)
                .then(|| route.parameter(path, "name"))
                .flatten();
            match auth.authorize(request.headers(), route.role, dataset).await {
                Ok(principal) => Some(principal),
                Err(denied) => {
                    if request.method() != axum::http::Method::GET
                        && let Some(auditor) = &gate.audit
                    {
                        let entry = denial(
                            auth,
                            presented_token(request.headers()).map(Cow::into_owned),
                            request.uri().path(),
                            source_ip(&request),
                            &route,
                            &denied,
                        )
                        .await;
                        // The refusal does not wait for its record.
                        auditor.submit(entry);
                    }
                    return denied.into_response();
                }
            }
        }
    };
    // What the audit record of a state change needs once the request is handed on; other
    // routes (every data-plane call) copy nothing.
    let audited = match (&gate.audit, route.audit) {
        (Some(auditor), Some(action)) => Some(Audited {
            auditor: auditor.clone(),
            action,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            source_ip: source_ip(&request),
            principal: principal.clone(),
        }),
        _ => None,
    };
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    let response = json_errors(next.run(request).await).await;
    match audited {
        Some(audited) => audited.record(response).await,
        None => response,
    }
}

/// The client's address, as the audit trail names it.
fn source_ip(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ConnectInfo<mlops_runtime::tls::PeerAddr>>()
        .map(|c| c.0.0.ip().to_string())
}

/// The audit record of a refused attempt: who tried (when the token names anyone), what,
/// and why it was refused.
async fn denial(
    auth: &Authenticator,
    token: Option<String>,
    path: &str,
    source_ip: Option<String>,
    route: &Route,
    denied: &ApiError,
) -> AuditEntry {
    let actor = match token {
        Some(token) => auth.authenticate(&token).await.ok(),
        None => None,
    }
    .map_or_else(|| "unauthenticated".to_owned(), |p| p.subject.clone());
    AuditEntry {
        actor,
        role: None,
        action: action_of(route),
        resource: resource_of(path),
        outcome: AuditOutcome::Denied,
        reason: Some(denied.reason()),
        source_ip,
    }
}

/// A request to a route that changes state, whose outcome the audit trail records.
struct Audited {
    auditor: Auditor,
    action: &'static str,
    method: axum::http::Method,
    path: String,
    source_ip: Option<String>,
    principal: Option<Arc<Principal>>,
}

impl Audited {
    /// Submits the record of `response` (its status, its reason when refused, what a
    /// creation created) and answers it unchanged.
    async fn record(self, response: Response) -> Response {
        let Self {
            auditor,
            action,
            method,
            path,
            source_ip,
            principal,
        } = self;
        let status = response.status();
        let (response, answer) = read_json(response).await;
        let reason = if status.is_success() {
            None
        } else {
            error_reason(answer.as_ref()).or_else(|| Some(format!("answered {status}")))
        };
        let created = answer.as_ref().and_then(|a| created_id(a, &path));
        let resource = match (status.is_success(), created) {
            // A creation names what it created in its answer.
            (true, Some(id))
                if method == axum::http::Method::POST && !path.ends_with(&format!("/{id}")) =>
            {
                format!("{}/{id}", resource_of(&path))
            }
            _ => resource_of(&path),
        };
        let entry = AuditEntry {
            actor: principal
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |p| p.subject.clone()),
            role: principal.as_ref().map(|p| {
                p.roles
                    .iter()
                    .map(|r| format!("{r:?}").to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            action: action.to_owned(),
            resource,
            outcome: if status.is_success() {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failed
            },
            reason,
            source_ip,
        };
        auditor.submit(entry);
        response
    }
}

/// Every refusal is JSON naming the problem: the framework's own rejections (a body that
/// is not JSON, a path parameter of the wrong type, a missing header) come as plain text,
/// and become the platform's error shape with that text as the message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("refused")
                .to_ascii_lowercase()
        });
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ if status.is_server_error() => "internal_error",
        _ => "refused",
    };
    let mut answer = ApiError::new(status, code, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// The audited action of a route: its table's name for it, or its method and path.
fn action_of(route: &Route) -> String {
    route
        .audit
        .map_or_else(|| format!("{} {}", route.method, route.path), str::to_owned)
}

/// What a request acts on: its path without the API version (`models/churn/versions/3`).
fn resource_of(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_start_matches("v1/")
        .trim_start_matches("v2/")
        .to_owned()
}

/// A response's JSON body (answers of known size up to 1 MiB), and the response rebuilt.
async fn read_json(response: Response) -> (Response, Option<serde_json::Value>) {
    use axum::body::HttpBody;
    const LIMIT: u64 = 1024 * 1024;
    // A body of unknown or larger size passes untouched: reading it past the limit would
    // lose it.
    if response
        .body()
        .size_hint()
        .upper()
        .is_none_or(|n| n > LIMIT)
    {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, LIMIT as usize).await {
        Ok(bytes) => {
            let json = serde_json::from_slice(&bytes).ok();
            (
                Response::from_parts(parts, axum::body::Body::from(bytes)),
                json,
            )
        }
        Err(_) => (Response::from_parts(parts, axum::body::Body::empty()), None),
    }
}

/// The reason in an error body: the platform's, Confluent's or the inference protocol's
/// error shape.
fn error_reason(answer: Option<&serde_json::Value>) -> Option<String> {
    let answer = answer?;
    [
        answer.pointer("/error/message"),
        answer.get("message"),
        answer.get("error"),
    ]
    .into_iter()
    .flatten()
    .find_map(|m| m.as_str().map(str::to_owned))
}

/// What a creation's answer names it by: a new `version` of something, or the `name` or
/// `id` of a new thing.
fn created_id(answer: &serde_json::Value, path: &str) -> Option<String> {
    let keys: &[&str] = if path.ends_with("/versions") {
        &["version"]
    } else {
        &["name", "id"]
    };
    keys.iter()
        .filter_map(|key| answer.get(key))
        .find_map(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token a request presents: bearer, or basic auth with the user `token`.
pub fn presented_token(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then_some(Cow::Borrowed(rest));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = decode_base64(rest)?;
        let (user, password) = decoded.split_once(':')?;
        return (user == "token" && !password.is_empty()).then(|| Cow::Owned(password.to_owned()));
    }
    None
}

/// Standard base64 (with or without padding) to text.
fn decode_base64(text: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn principal(subject: &str, roles: &[PlatformRole], datasets: Option<&[&str]>) -> Principal {
        Principal {
            subject: subject.to_owned(),
            roles: roles.iter().copied().collect(),
            datasets: datasets.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[test]
    fn every_role_against_every_route_class() {
        use PlatformRole::*;
        let allowed = |role: PlatformRole| {
            Role::ALL
                .into_iter()
                .filter(|r| role.grants(*r))
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Producer), [Role::Inference, Role::Producer]);
        assert_eq!(
            allowed(DataScientist),
            [Role::Reader, Role::Inference, Role::Operator]
        );
        assert_eq!(
            allowed(Approver),
            [Role::Reader, Role::Inference, Role::Approver]
        );
        assert_eq!(allowed(Sre), [Role::Reader, Role::Inference]);
        assert_eq!(allowed(Admin), Role::ALL);
    }

    #[tokio::test]
    async fn keys_are_stored_hashed_and_answer_401_or_403_with_a_reason() {
        let (producer_token, producer) = ApiKeys::issue(principal(
            "payments-gateway",
            &[PlatformRole::Producer],
            Some(&["payments"]),
        ));
        let (admin_token, admin) = ApiKeys::issue(principal("admin", &[PlatformRole::Admin], None));
        assert!(!producer.sha256.contains(&producer_token[6..]));
        let stored = serde_json::to_string(&[producer, admin]).unwrap();
        assert!(!stored.contains(&producer_token) && !stored.contains(&admin_token));
        let keys = Authenticator::new(ApiKeys::from_json(&stored).unwrap(), None);

        let status = async |headers: &HeaderMap, role, dataset| {
            keys.authorize(headers, role, dataset)
                .await
                .map(|p| p.subject.clone())
                .map_err(|e| e.status)
        };
        assert_eq!(
            status(&HeaderMap::new(), Role::Reader, None).await,
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&bearer("mlops_forged"), Role::Reader, None).await,
            Err(StatusCode::UNAUTHORIZED)
        );
        let producer = bearer(&producer_token);
        assert_eq!(
            status(&producer, Role::Producer, Some("payments")).await,
            Ok("payments-gateway".to_owned())
        );
        assert_eq!(
            status(&producer, Role::Producer, Some("refunds")).await,
            Err(StatusCode::FORBIDDEN),
            "a producer token for one dataset cannot publish to another"
        );
        assert_eq!(
            status(&producer, Role::Operator, None).await,
            Err(StatusCode::FORBIDDEN)
        );
        let admin = bearer(&admin_token);
        assert_eq!(
            status(&admin, Role::Producer, Some("refunds")).await,
            Ok("admin".to_owned())
        );
        let reason = keys
            .authorize(&producer, Role::Approver, None)
            .await
            .unwrap_err()
            .reason();
        assert!(reason.contains("Approver"), "{reason}");
    }

    #[tokio::test]
    async fn the_gate_reads_the_route_table_and_leaves_health_open() {
        use axum::{body::Body, routing::get};
        use tower::ServiceExt;
        static TABLE: &[Route] = &[
            Route::new("POST", "/v1/datasets/{name}/events", Role::Producer),
            Route::new("GET", "/v1/datasets/{name}", Role::Reader),
        ];
        let (token, stored) = ApiKeys::issue(principal(
            "gateway",
            &[PlatformRole::Producer],
            Some(&["payments"]),
        ));
        let router = Router::new()
            .route(
                "/v1/datasets/{name}/events",
                axum::routing::post(|| async { "ok" }),
            )
            .route("/v1/datasets/{name}", get(|| async { "ok" }))
            .route("/v1/undeclared", get(|| async { "ok" }))
            .route("/healthz", get(|| async { "ok" }));
        let router = Gate::new(
            Some(Authenticator::new(ApiKeys::new([stored]), None)),
            &[TABLE],
        )
        .protect(router);
        let call = |method: &str, path: &str, token: Option<&str>| {
            let mut request = Request::builder().method(method).uri(path);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            router.clone().oneshot(request.body(Body::empty()).unwrap())
        };
        let status = |r: Result<Response, std::convert::Infallible>| r.unwrap().status();
        assert_eq!(status(call("GET", "/healthz", None).await), StatusCode::OK);
        assert_eq!(
            status(call("POST", "/v1/datasets/payments/events", None).await),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(call("POST", "/v1/datasets/payments/events", Some(&token)).await),
            StatusCode::OK
        );
        assert_eq!(
            status(call("POST", "/v1/datasets/refunds/events", Some(&token)).await),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(call("GET", "/v1/datasets/payments", Some(&token)).await),
            StatusCode::FORBIDDEN,
            "a producer does not read"
        );
        assert_eq!(
            status(call("DELETE", "/v1/datasets/payments", Some(&token)).await),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(call("GET", "/v1/undeclared", Some(&token)).await),
            StatusCode::NOT_FOUND,
            "what the table does not declare is not served"
        );
    }

    /// Telemetry, checks and error wording are one layer: a refusal is counted like an
    /// answer, under its route template, and a framework rejection still speaks JSON.
    #[tokio::test]
    async fn one_layer_counts_refusals_and_words_rejections_as_json() {
        use axum::{body::Body, routing::post};
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        static TABLE: &[Route] = &[Route::new("POST", "/v1/items/{name}", Role::Producer)];
        let (token, stored) = ApiKeys::issue(principal("p", &[PlatformRole::Producer], None));
        let admin = mlops_runtime::admin::AdminState::new(
            "test",
            prometheus_client::registry::Registry::default(),
            Vec::new(),
        );
        // A JSON body extractor: its rejection of a non-JSON body is axum's plain text.
        let router = Router::new().route(
            "/v1/items/{name}",
            post(|axum::Json(_): axum::Json<serde_json::Value>| async { "ok" }),
        );
        let router = Gate::new(
            Some(Authenticator::new(ApiKeys::new([stored]), None)),
            &[TABLE],
        )
        .telemetry(admin.clone())
        .protect(router.merge(admin.router()));
        let call = |token: Option<&str>, body: &'static str| {
            let mut request =
                Request::post("/v1/items/a").header("content-type", "application/json");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            router
                .clone()
                .oneshot(request.body(Body::from(body)).unwrap())
        };
        let read = |response: Response| async move {
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        assert_eq!(
            read(call(None, "{}").await.unwrap()).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            read(call(Some(&token), "{}").await.unwrap()).await.0,
            StatusCode::OK
        );
        let (status, body) = read(call(Some(&token), "{not json").await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
        assert_eq!(answer["error"]["code"], "bad_request", "{body}");

        let metrics = router
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (_, page) = read(metrics).await;
        for status in [401, 200, 400] {
            let line = format!(
                r#"mlops_http_requests_total{{method="POST",route="/v1/items/{{name}}",status="{status}"}} 1"#
            );
            assert!(page.contains(&line), "{line} missing from\n{page}");
        }
    }

    #[test]
    fn basic_auth_carries_a_token_as_confluent_clients_send_it() {
        let mut headers = HeaderMap::new();
        // base64("token:mlops_abc")
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dG9rZW46bWxvcHNfYWJj"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("mlops_abc"));
        // base64("someone:mlops_abc"): only the user `token` carries a token.
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c29tZW9uZTptbG9wc19hYmM="),
        );
        assert_eq!(presented_token(&headers), None);
        assert_eq!(
            presented_token(&bearer("mlops_x")).as_deref(),
            Some("mlops_x")
        );
    }

    /// Standard base64, as HTTP clients encode basic auth.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    proptest::proptest! {
        /// Any Authorization header: a token or none, never a panic.
        #[test]
        fn any_authorization_header_is_read_safely(value in "\\PC{0,80}") {
            if let Ok(value) = HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(header::AUTHORIZATION, value);
                let _ = presented_token(&headers);
            }
        }

        /// Basic auth with the user `token` carries any token a client sends.
        #[test]
        fn basic_auth_carries_any_token(token in "[!-~]{1,64}") {
            let mut headers = HeaderMap::new();
            let value = format!("Basic {}", base64(format!("token:{token}").as_bytes()));
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            let presented = presented_token(&headers);
            proptest::prop_assert_eq!(presented.as_deref(), Some(token.as_str()));
        }
    }
}
