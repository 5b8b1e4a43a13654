//! The Open Inference Protocol v2 REST API (KServe V2, Triton, MLServer), so unmodified OIP
//! clients work: health, model metadata and readiness, and inference with the protocol's
//! tensor JSON and its own error shape (`{"error": "..."}`).
//!
//! Inputs are raw feature values — the model applies its own fitted transforms, the very
//! ones that built its training set — either one tensor per feature (named after it, shape
//! `[rows]` or `[rows, 1]`) or one tensor of shape `[rows, features]` whose columns are the
//! features in the order the metadata lists. Outputs: `probability` and `label` (binary),
//! `probabilities` and `label` (multiclass), `prediction` (regression). While a version is
//! in canary, a request goes to it when the hash of its `id` (or its `entity_id`
//! parameter) falls within the canary's share: the same id always meets the same version.

use std::sync::Arc;

use axum::{
    Json as Body, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mlops_events::ServingRole;
use mlops_service::routes::{Api, Role, Route};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::{
    deployments::{Deployments, Loaded},
    predictions::{Answered, PredictionLogger},
    rows::{Flat, Rows},
};

/// What the handlers share.
pub struct Serving {
    /// The most rows one request may hold (`serving.max_rows_per_request`).
    pub max_rows: usize,
    pub deployments: Arc<Deployments>,
    pub logger: PredictionLogger,
    pub online: crate::predict::OnlineFeatures,
}

impl Serving {
    /// What `name` serves, or the protocol's 404.
    fn deployment(&self, name: &str) -> Result<crate::deployments::Deployment, OipError> {
        self.deployments.get(name).ok_or_else(|| not_found(name))
    }
}

/// Every route of the serving API (OIP and `:predict`) and the role it requires. The health endpoints
/// (`/v2/health/live`, `/v2/health/ready`) stay open, like `/healthz`.
pub const ROUTES: &[Route] = &[
    // An inference client reads a model's metadata and readiness before it asks.
    Route::new("GET", "/v2/models/{name}", Role::Inference),
    Route::new("GET", "/v2/models/{name}/ready", Role::Inference),
    Route::new(
        "GET",
        "/v2/models/{name}/versions/{version}",
        Role::Inference,
    ),
    Route::new("POST", "/v2/models/{name}/infer", Role::Inference),
    Route::new(
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        Role::Inference,
    ),
    // Served by the `{name}` route, which reads the verb.
    Route::new("POST", "/v1/models/{name}:predict", Role::Inference),
];

/// The routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<Serving>> {
    Api::new(ROUTES)
        .open("/v2/health/live", live)
        .open("/v2/health/ready", ready)
        .get("/v2/models/{name}", metadata)
        .get("/v2/models/{name}/ready", model_ready)
        .get("/v2/models/{name}/versions/{version}", version_metadata)
        .post("/v2/models/{name}/infer", infer)
        .post("/v2/models/{name}/versions/{version}/infer", infer_version)
        .post_verbs(
            "/v1/models/{name}",
            &["predict"],
            crate::predict::model_verb,
        )
}

pub fn router(serving: Arc<Serving>) -> Router {
    routes().into_router().with_state(serving)
}

/// The protocol's error: a status and `{"error": "..."}`.
pub struct OipError(StatusCode, String);

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        (self.0, Body(json!({ "error": self.1 }))).into_response()
    }
}

fn not_found(name: &str) -> OipError {
    OipError(
        StatusCode::NOT_FOUND,
        format!("model {name:?} is not served: it has no production or canary version"),
    )
}

async fn live() -> Body<Json> {
    Body(json!({"live": true}))
}

async fn ready(State(serving): State<Arc<Serving>>) -> Response {
    if serving.deployments.is_ready() {
        Body(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Body(json!({"ready": false, "error": "the served models are still being loaded from the registry"})),
        )
            .into_response()
    }
}

/// The raw features a version takes, in order, with the protocol's datatypes.
fn inputs_of(loaded: &Loaded) -> Vec<Json> {
    loaded
        .artifact
        .transforms
        .iter()
        .map(|(name, state)| {
            let datatype = if state.encode.is_some() {
                "BYTES"
            } else {
                "FP64"
            };
            json!({"name": name, "datatype": datatype, "shape": [-1]})
        })
        .collect()
}

fn outputs_of(loaded: &Loaded) -> Vec<Json> {
    match loaded.artifact.task.as_str() {
        "multiclass_classification" => vec![
            json!({"name": "probabilities", "datatype": "FP64", "shape": [-1, loaded.artifact.classes.len()]}),
            json!({"name": "label", "datatype": "BYTES", "shape": [-1]}),
        ],
        "regression" => vec![json!({"name": "prediction", "datatype": "FP64", "shape": [-1]})],
        _ => vec![
            json!({"name": "probability", "datatype": "FP64", "shape": [-1]}),
            json!({"name": "label", "datatype": "INT64", "shape": [-1]}),
        ],
    }
}

fn describe(name: &str, versions: &[String], loaded: &Loaded) -> Json {
    json!({
        "name": name,
        "versions": versions,
        "platform": format!("mlops-{}", loaded.artifact.algorithm),
        "inputs": inputs_of(loaded),
        "outputs": outputs_of(loaded),
    })
}

async fn metadata(
    State(serving): State<Arc<Serving>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, OipError> {
    let deployment = serving.deployment(&name)?;
    let versions: Vec<String> = deployment
        .serving()
        .map(|l| l.version.to_string())
        .collect();
    let shown = deployment
        .serving()
        .next()
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    Ok(Body(describe(&name, &versions, &shown)))
}

async fn model_ready(
    State(serving): State<Arc<Serving>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, OipError> {
    let deployment = serving.deployment(&name)?;
    if deployment.serving().next().is_none() {
        return Err(not_found(&name));
    }
    Ok(Body(json!({"name": name, "ready": true})))
}

fn version_number(text: &str) -> Result<i64, OipError> {
    text.parse().map_err(|_| {
        OipError(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a version number"),
        )
    })
}

async fn version_metadata(
    State(serving): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Body<Json>, OipError> {
    let number = version_number(&version)?;
    let loaded = serving
        .deployments
        .get(&name)
        .and_then(|d| d.version(number))
        .ok_or_else(|| {
            OipError(
                StatusCode::NOT_FOUND,
                format!("version {version} of {name:?} is not served"),
            )
        })?;
    Ok(Body(describe(&name, &[version], &loaded)))
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Tensor>,
    #[serde(default)]
    parameters: Option<Json>,
}

#[derive(Debug, Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<i64>,
    #[allow(dead_code)]
    datatype: String,
    /// Flattened while parsed: no tree of JSON values per request.
    data: Flat,
}

fn bad(message: impl Into<String>) -> OipError {
    OipError(StatusCode::BAD_REQUEST, message.into())
}

/// The raw values of every row, in the order of `features` (the version's transforms).
fn rows_of(request: &InferRequest, features: &[&str]) -> Result<Rows, OipError> {
    let tensors = &request.inputs;
    if tensors.is_empty() {
        return Err(bad("the request has no inputs"));
    }
    // One tensor holding every feature as columns.
    if let [tensor] = tensors.as_slice()
        && !features.contains(&tensor.name.as_str())
        && tensor.shape.len() == 2
    {
        let values = &tensor.data.0;
        let columns = features.len();
        if usize::try_from(tensor.shape[1]).ok() != Some(columns) {
            return Err(bad(format!(
                "input {:?}: shape {:?} should be [rows, {columns}] (columns: {})",
                tensor.name,
                tensor.shape,
                features.join(", ")
            )));
        }
        let cells = usize::try_from(tensor.shape[0])
            .ok()
            .and_then(|rows| rows.checked_mul(columns));
        if cells != Some(values.len()) {
            return Err(bad(format!(
                "input {:?}: {} values do not fill shape {:?}",
                tensor.name,
                values.len(),
                tensor.shape
            )));
        }
        // Row-major with the columns in the metadata's order: already the rows' layout.
        let rows = values.len() / columns.max(1);
        return Ok(Rows::new(rows, columns, values[..rows * columns].to_vec()));
    }
    // One tensor per feature.
    let mut rows: Option<usize> = None;
    for tensor in tensors {
        let values = &tensor.data.0;
        if !features.contains(&tensor.name.as_str()) {
            return Err(bad(format!(
                "unknown input {:?}: the model takes {} (or one [rows, {}] tensor of them)",
                tensor.name,
                features.join(", "),
                features.len()
            )));
        }
        // Checked: a client's shape may be anything, its product beyond any integer.
        let declared = tensor
            .shape
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?));
        if declared != Some(values.len()) {
            return Err(bad(format!(
                "input {:?}: {} values do not fill shape {:?}",
                tensor.name,
                values.len(),
                tensor.shape
            )));
        }
        match rows {
            Some(n) if n != values.len() => {
                return Err(bad(format!(
                    "input {:?} has {} rows, the others {n}",
                    tensor.name,
                    values.len()
                )));
            }
            _ => rows = Some(values.len()),
        }
    }
    let rows = rows.unwrap_or(0);
    // Each feature's tensor (the first of its name), or none: then its values are missing.
    let sources: Vec<Option<&[Json]>> = features
        .iter()
        .map(|f| {
            tensors
                .iter()
                .find(|t| t.name == *f)
                .map(|t| t.data.0.as_slice())
        })
        .collect();
    let mut cells = Vec::with_capacity(rows * features.len());
    for r in 0..rows {
        cells.extend(
            sources
                .iter()
                .map(|source| source.map_or(Json::Null, |values| values[r].clone())),
        );
    }
    Ok(Rows::new(rows, features.len(), cells))
}

/// Which version answers: the canary for the share of ids its percentage covers.
fn route(
    deployments: &Deployments,
    name: &str,
    request: &InferRequest,
) -> Result<(Arc<Loaded>, ServingRole), OipError> {
    let key = entity_of(request).or_else(|| request.id.clone());
    route_by(deployments, name, key.as_deref()).ok_or_else(|| not_found(name))
}

fn entity_of(request: &InferRequest) -> Option<String> {
    request
        .parameters
        .as_ref()
        .and_then(|p| p["entity_id"].as_str().map(str::to_owned))
}

/// The version that answers for `key` (an entity or request id): the canary when the key's
/// stable bucket falls within its share, production otherwise.
pub fn route_by(
    deployments: &Deployments,
    name: &str,
    key: Option<&str>,
) -> Option<(Arc<Loaded>, ServingRole)> {
    let deployment = deployments.get(name)?;
    if let Some((canary, percent)) = &deployment.canary {
        let in_canary = key.is_some_and(|key| bucket(key) < percent * 100.0);
        if in_canary || deployment.production.is_none() {
            return Some((canary.clone(), ServingRole::Canary));
        }
    }
    deployment.production.map(|p| (p, ServingRole::Production))
}

/// A stable bucket in [0, 10000) for `key`.
fn bucket(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    (u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) % 10_000) as f64
}

/// A request's ids: its own (made up when it has none) and its entity's.
pub type Ids = (String, Option<String>);

fn ids_of(request: &InferRequest) -> Ids {
    (
        request.id.clone().unwrap_or_else(mlops_events::new_id),
        entity_of(request),
    )
}

fn score(
    serving: &Serving,
    name: &str,
    request: &InferRequest,
    (loaded, role): (&Arc<Loaded>, ServingRole),
    ids: &Ids,
    started: std::time::Instant,
) -> Result<InferResponse, OipError> {
    let features: Vec<&str> = loaded
        .artifact
        .transforms
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let rows = rows_of(request, &features)?;
    if rows.len() > serving.max_rows {
        return Err(OipError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} rows in one request; at most {} (serving.max_rows_per_request)",
                rows.len(),
                serving.max_rows
            ),
        ));
    }
    let (outputs, answers, inputs) = answer(loaded, &rows).map_err(bad)?;
    log(
        serving,
        name,
        ids,
        (loaded, role),
        (&rows, &inputs),
        answers,
        started,
    );
    if role == ServingRole::Production {
        shadow(serving, name, ids, &rows, started);
    }
    Ok(InferResponse {
        model_name: name.to_owned(),
        model_version: loaded.version.to_string(),
        id: request.id.clone(),
        parameters: Parameters { role },
        outputs,
    })
}

/// The protocol's inference answer, serialized as it is (no tree of JSON values).
#[derive(Debug, Serialize)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    parameters: Parameters,
    outputs: Vec<Output>,
}

#[derive(Debug, Serialize)]
struct Parameters {
    role: ServingRole,
}

/// One output tensor.
#[derive(Debug, Serialize)]
pub struct Output {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: OutputData,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    Numbers(Vec<f64>),
    Integers(Vec<i64>),
    Texts(Vec<String>),
}

/// Each row's answer for the log: (score, label).
pub type Answers = Vec<(f64, Option<String>)>;

/// The protocol's output tensors for `rows` of raw values, each row's (score, label) for
/// the log, and the model inputs the rows became (through the version's compiled fitted
/// transforms).
pub fn answer(loaded: &Loaded, rows: &Rows) -> Result<(Vec<Output>, Answers, Array2<f64>), String> {
    let mut inputs = Array2::<f64>::zeros((rows.len(), loaded.plan.width()));
    for (r, mut row) in inputs.rows_mut().into_iter().enumerate() {
        let out = row
            .as_slice_mut()
            .ok_or("the input matrix is not in standard layout")?;
        loaded
            .plan
            .fill(rows.row(r), out)
            .map_err(|e| format!("row {r}: {e}"))?;
    }
    let n = rows.len();
    let mut logged: Answers = Vec::with_capacity(n);
    let outputs = match loaded.artifact.task.as_str() {
        "multiclass_classification" => {
            let classes = &loaded.artifact.classes;
            let probabilities = loaded.model.probabilities(inputs.view(), classes.len());
            let likely = mlops_ml::model::most_likely(&probabilities);
            let labels: Vec<String> = likely
                .iter()
                .map(|&c| classes.get(c).cloned().unwrap_or_default())
                .collect();
            for (r, (&c, label)) in likely.iter().zip(&labels).enumerate() {
                logged.push((probabilities[[r, c]], Some(label.clone())));
            }
            vec![
                Output {
                    name: "probabilities",
                    datatype: "FP64",
                    shape: vec![n, probabilities.ncols()],
                    data: OutputData::Numbers(probabilities.iter().copied().collect()),
                },
                Output {
                    name: "label",
                    datatype: "BYTES",
                    shape: vec![n],
                    data: OutputData::Texts(labels),
                },
            ]
        }
        "regression" => {
            let predictions = loaded.model.scores(inputs.view());
            logged.extend(predictions.iter().map(|p| (*p, None)));
            vec![Output {
                name: "prediction",
                datatype: "FP64",
                shape: vec![n],
                data: OutputData::Numbers(predictions),
            }]
        }
        _ => {
            let probabilities = loaded.model.scores(inputs.view());
            let labels: Vec<i64> = probabilities.iter().map(|p| i64::from(*p >= 0.5)).collect();
            logged.extend(
                probabilities
                    .iter()
                    .zip(&labels)
                    .map(|(p, l)| (*p, Some(l.to_string()))),
            );
            vec![
                Output {
                    name: "probability",
                    datatype: "FP64",
                    shape: vec![n],
                    data: OutputData::Numbers(probabilities),
                },
                Output {
                    name: "label",
                    datatype: "INT64",
                    shape: vec![n],
                    data: OutputData::Integers(labels),
                },
            ]
        }
    };
    Ok((outputs, logged, inputs))
}

/// A canary at 0 % is a shadow: it scores what production answered, for the log only.
pub fn shadow(serving: &Serving, name: &str, ids: &Ids, rows: &Rows, started: std::time::Instant) {
    let Some((candidate, percent)) = serving.deployments.get(name).and_then(|d| d.canary) else {
        return;
    };
    if percent > 0.0 {
        return;
    }
    match answer(&candidate, rows) {
        Ok((_, answers, inputs)) => log(
            serving,
            name,
            ids,
            (&candidate, ServingRole::Shadow),
            (rows, &inputs),
            answers,
            started,
        ),
        Err(reason) => log_failure(
            serving,
            name,
            ids,
            (&candidate, ServingRole::Shadow),
            &reason,
            started,
        ),
    }
}

/// Queues what `loaded` answered for the log (one `PredictionLog` per row, written off the
/// request path): the rows' logged columns, taken from the raw values and the model inputs.
pub fn log(
    serving: &Serving,
    name: &str,
    ids: &Ids,
    answering: (&Arc<Loaded>, ServingRole),
    (rows, inputs): (&Rows, &Array2<f64>),
    answers: Answers,
    started: std::time::Instant,
) {
    let columns = &answering.0.log_columns;
    let mut values = Vec::with_capacity(rows.len() * columns.width());
    for r in 0..rows.len() {
        columns.values(rows.row(r), inputs, r, &mut values);
    }
    queue(
        serving,
        name,
        ids,
        answering,
        (values, answers, None),
        started,
    );
}

/// Logs that `loaded` could not answer a request that production answered: one record
/// with the reason, counted against the version by the canary analysis.
pub fn log_failure(
    serving: &Serving,
    name: &str,
    ids: &Ids,
    answering: (&Arc<Loaded>, ServingRole),
    reason: &str,
    started: std::time::Instant,
) {
    let outcome = (Vec::new(), Vec::new(), Some(reason.to_owned()));
    queue(serving, name, ids, answering, outcome, started);
}

/// What a request's log records carry: (logged values, answers, why it failed).
type Outcome = (Vec<f64>, Answers, Option<String>);

fn queue(
    serving: &Serving,
    name: &str,
    (id, entity): &Ids,
    (loaded, role): (&Arc<Loaded>, ServingRole),
    (values, answers, error): Outcome,
    started: std::time::Instant,
) {
    serving.logger.log(Answered {
        model: name.to_owned(),
        loaded: loaded.clone(),
        role,
        request_id: id.clone(),
        entity_id: entity.clone(),
        values,
        answers,
        latency_us: started.elapsed().as_micros() as i64,
        predicted_at: mlops_events::now_millis(),
        // The request's span: the record's consumer continues the trace that asked for it.
        traceparent: mlops_telemetry::current_traceparent(),
        error,
    });
}

fn parse(body: &[u8]) -> Result<InferRequest, OipError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("not an inference request: {e}")))
}

/// Bodies above this size are parsed and scored on the CPU pool: thousands of rows must not
/// hold the thread that serves other connections; below it, the hop would cost more.
const CPU_POOL_ABOVE_BYTES: usize = 256 * 1024;

/// Runs `work` on the body here, or on the CPU pool for a large body.
async fn in_place_or_pooled<T, F>(
    serving: Arc<Serving>,
    body: Bytes,
    work: F,
) -> Result<Body<T>, OipError>
where
    T: Send + 'static,
    F: FnOnce(&Serving, &[u8]) -> Result<T, OipError> + Send + 'static,
{
    if body.len() > CPU_POOL_ABOVE_BYTES {
        mlops_runtime::cpu::run(move || work(&serving, &body))
            .await
            .map(Body)
    } else {
        work(&serving, &body).map(Body)
    }
}

async fn infer(
    State(serving): State<Arc<Serving>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Body<InferResponse>, OipError> {
    in_place_or_pooled(serving, body, move |serving, body| {
        infer_now(serving, &name, body)
    })
    .await
}

fn infer_now(serving: &Serving, name: &str, body: &[u8]) -> Result<InferResponse, OipError> {
    let started = std::time::Instant::now();
    let request = parse(body)?;
    let ids = ids_of(&request);
    let (loaded, role) = route(&serving.deployments, name, &request)?;
    match score(serving, name, &request, (&loaded, role), &ids, started) {
        // A canary that fails where production answers must not cost the caller: production
        // answers, and the failure is logged against the canary, whose analysis counts it.
        Err(failure) if role == ServingRole::Canary => {
            let Some(production) = serving.deployments.get(name).and_then(|d| d.production) else {
                return Err(failure);
            };
            let answered = score(
                serving,
                name,
                &request,
                (&production, ServingRole::Production),
                &ids,
                started,
            )?;
            log_failure(serving, name, &ids, (&loaded, role), &failure.1, started);
            Ok(answered)
        }
        answered => answered,
    }
}

async fn infer_version(
    State(serving): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Body<InferResponse>, OipError> {
    in_place_or_pooled(serving, body, move |serving, body| {
        infer_version_now(serving, &name, &version, body)
    })
    .await
}

fn infer_version_now(
    serving: &Serving,
    name: &str,
    version: &str,
    body: &[u8],
) -> Result<InferResponse, OipError> {
    let started = std::time::Instant::now();
    let request = parse(body)?;
    let number = version_number(version)?;
    let deployment = serving.deployment(name)?;
    let role = if deployment
        .production
        .as_ref()
        .is_some_and(|p| p.version == number)
    {
        ServingRole::Production
    } else {
        ServingRole::Canary
    };
    let loaded = deployment.version(number).ok_or_else(|| {
        OipError(
            StatusCode::NOT_FOUND,
            format!("version {version} of {name:?} is not served"),
        )
    })?;
    let ids = ids_of(&request);
    score(serving, name, &request, (&loaded, role), &ids, started)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<f64>()
                .prop_map(|x| serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)),
            any::<i64>().prop_map(Json::from),
            "[a-z]{0,4}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Json::Array)
        })
    }

    fn tensor() -> impl Strategy<Value = Json> {
        (
            prop_oneof![Just("amount".to_owned()), Just("count".to_owned()), "[a-z]{1,6}"],
            prop::collection::vec(
                prop_oneof![
                    -2i64..6,
                    Just(i64::MAX),
                    Just(i64::MIN),
                    Just(1i64 << 40)
                ],
                0..4,
            ),
            json_value(),
        )
            .prop_map(|(name, shape, data)| {
                serde_json::json!({"name": name, "shape": shape, "datatype": "FP64", "data": data})
            })
    }

    proptest! {
        /// Any tensors a client sends: never a panic (no shape overflows), and either rows
        /// that all hold the model's features or a 400 naming what is wrong.
        #[test]
        fn any_tensors_become_rows_or_a_reasoned_400(
            inputs in prop::collection::vec(tensor(), 0..4),
        ) {
            let body = serde_json::json!({"inputs": inputs});
            let request: InferRequest = serde_json::from_value(body).unwrap();
            let features = ["amount", "count"];
            match rows_of(&request, &features) {
                Ok(rows) => {
                    for r in 0..rows.len() {
                        prop_assert_eq!(rows.row(r).len(), features.len());
                    }
                }
                Err(OipError(status, message)) => {
                    prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                    prop_assert!(!message.is_empty());
                }
            }
        }

        /// Any bytes as a request body: parsed, or refused as not an inference request.
        #[test]
        fn any_body_is_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(OipError(status, message)) = parse(&Bytes::from(body)) {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                prop_assert!(message.starts_with("not an inference request"));
            }
        }
    }

    #[test]
    fn a_shape_beyond_any_integer_is_refused_not_overflowed() {
        let request: InferRequest = serde_json::from_value(serde_json::json!({"inputs": [
            {"name": "amount", "shape": [i64::MAX, 4], "datatype": "FP64", "data": [1.0]}
        ]}))
        .unwrap();
        let refused = rows_of(&request, &["amount"]).unwrap_err();
        assert_eq!(refused.0, StatusCode::BAD_REQUEST);
        assert!(refused.1.contains("do not fill shape"), "{}", refused.1);
        let request: InferRequest = serde_json::from_value(serde_json::json!({"inputs": [
            {"name": "x", "shape": [i64::MAX, 1], "datatype": "FP64", "data": [1.0]}
        ]}))
        .unwrap();
        assert_eq!(
            rows_of(&request, &["amount"]).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }
}
