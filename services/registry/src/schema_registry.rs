//! The Confluent-compatible Schema Registry REST API, so that Confluent's clients (Java,
//! Python, Go), the platform's own client and `curl` users work against it unchanged.
//! Paths, bodies, error codes and the `application/vnd.schemaregistry.v1+json` content
//! type follow Confluent's API reference.

use std::{collections::HashMap, sync::Arc};

use apache_avro::Schema;
use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use mlops_service::routes::{Api, Role, Route};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    compatibility::{self, Level},
    store::{Store, SubjectVersion},
};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Every Schema Registry route and the role it requires: reading and checking schemas is
/// a reader's, changing subjects and their compatibility an operator's.
pub const ROUTES: &[Route] = &[
    Route::new("GET", "/", Role::Reader),
    Route::new("GET", "/schemas/types", Role::Reader),
    Route::new("GET", "/subjects", Role::Reader),
    Route::new("POST", "/subjects/{subject}", Role::Reader),
    Route::new("DELETE", "/subjects/{subject}", Role::Operator).audited("schema.delete_subject"),
    Route::new("GET", "/subjects/{subject}/versions", Role::Reader),
    Route::new("POST", "/subjects/{subject}/versions", Role::Operator).audited("schema.register"),
    Route::new(
        "GET",
        "/subjects/{subject}/versions/{version}",
        Role::Reader,
    ),
    Route::new(
        "DELETE",
        "/subjects/{subject}/versions/{version}",
        Role::Operator,
    )
    .audited("schema.delete_version"),
    Route::new(
        "GET",
        "/subjects/{subject}/versions/{version}/schema",
        Role::Reader,
    ),
    Route::new(
        "GET",
        "/subjects/{subject}/versions/{version}/referencedby",
        Role::Reader,
    ),
    Route::new("GET", "/schemas/ids/{id}", Role::Reader),
    Route::new("GET", "/schemas/ids/{id}/schema", Role::Reader),
    Route::new("GET", "/schemas/ids/{id}/versions", Role::Reader),
    Route::new(
        "POST",
        "/compatibility/subjects/{subject}/versions",
        Role::Reader,
    ),
    Route::new(
        "POST",
        "/compatibility/subjects/{subject}/versions/{version}",
        Role::Reader,
    ),
    Route::new("GET", "/config", Role::Reader),
    Route::new("PUT", "/config", Role::Operator).audited("schema.config"),
    Route::new("GET", "/config/{subject}", Role::Reader),
    Route::new("PUT", "/config/{subject}", Role::Operator).audited("schema.config"),
    Route::new("DELETE", "/config/{subject}", Role::Operator).audited("schema.config_delete"),
];

/// The Schema Registry routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<Store>> {
    Api::new(ROUTES)
        .get("/", root)
        .get("/schemas/types", schema_types)
        .get("/subjects", list_subjects)
        .post("/subjects/{subject}", lookup)
        .delete("/subjects/{subject}", delete_subject)
        .get("/subjects/{subject}/versions", list_versions)
        .post("/subjects/{subject}/versions", register)
        .get("/subjects/{subject}/versions/{version}", get_version)
        .delete("/subjects/{subject}/versions/{version}", delete_version)
        .get(
            "/subjects/{subject}/versions/{version}/schema",
            get_version_schema,
        )
        .get(
            "/subjects/{subject}/versions/{version}/referencedby",
            referenced_by,
        )
        .get("/schemas/ids/{id}", get_schema_by_id)
        .get("/schemas/ids/{id}/schema", get_raw_schema_by_id)
        .get("/schemas/ids/{id}/versions", get_schema_usages)
        .post("/compatibility/subjects/{subject}/versions", check_all)
        .post(
            "/compatibility/subjects/{subject}/versions/{version}",
            check_version,
        )
        .get("/config", get_global_config)
        .put("/config", put_global_config)
        .get("/config/{subject}", get_subject_config)
        .put("/config/{subject}", put_subject_config)
        .delete("/config/{subject}", delete_subject_config)
}

/// The Schema Registry routes, sharing the registry's port with its other APIs.
pub fn router(store: Arc<Store>) -> Router {
    routes().into_router().with_state(store)
}

/// An error in Confluent's shape: `{"error_code": 40401, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl SrError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    fn version_not_found(version: i64) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }

    fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }

    fn invalid_schema(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {reason}"),
        )
    }

    fn invalid_version(text: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{text}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    fn invalid_compatibility(text: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level '{text}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
            ),
        )
    }

    fn bad_request(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("Bad request: {reason}"),
        )
    }

    fn backend(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "schema registry store failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        )
    }
}

impl From<crate::store::StoreError> for SrError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::backend(e)
    }
}

impl IntoResponse for SrError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

type ApiResult = Result<Response, SrError>;

/// Body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// A parsed, validated schema in its canonical text, which decides identity: the same
/// schema with other whitespace or key order gets the same id.
struct CanonicalSchema {
    text: String,
    hash: String,
    parsed: Schema,
}

fn parse_request(body: &Bytes) -> Result<CanonicalSchema, SrError> {
    let request: SchemaRequest =
        serde_json::from_slice(body).map_err(|e| SrError::bad_request(format!("body: {e}")))?;
    if let Some(kind) = request.schema_type.as_deref()
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(SrError::invalid_schema(format!(
            "schemaType {kind} is not supported; this registry stores AVRO"
        )));
    }
    if !request.references.is_empty() {
        return Err(SrError::invalid_schema(
            "schema references are not supported",
        ));
    }
    canonicalize(&request.schema)
}

fn canonicalize(text: &str) -> Result<CanonicalSchema, SrError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| SrError::invalid_schema(format!("not JSON: {e}")))?;
    let parsed = Schema::parse(&json).map_err(SrError::invalid_schema)?;
    let text = sorted(&json).to_string();
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(CanonicalSchema { text, hash, parsed })
}

/// The same JSON with object keys in lexical order, at every depth.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn parse_stored(text: &str) -> Result<Schema, SrError> {
    Schema::parse_str(text).map_err(SrError::backend)
}

/// `latest`/`-1` or a positive version number.
enum VersionRef {
    Latest,
    Number(i64),
}

fn parse_version(text: &str) -> Result<VersionRef, SrError> {
    match text {
        "latest" | "-1" => Ok(VersionRef::Latest),
        _ => match text.parse::<i64>() {
            Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(VersionRef::Number(n)),
            _ => Err(SrError::invalid_version(text)),
        },
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn effective_level(store: &Store, subject: &str) -> Result<Level, SrError> {
    let configured = match store.compatibility(Some(subject)).await? {
        Some(level) => Some(level),
        None => store.compatibility(None).await?,
    };
    Ok(configured
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or_default())
}

/// Finds one version of a subject, with Confluent's distinction between an unknown
/// subject (40401) and an unknown version (40402).
async fn find_version(
    store: &Store,
    subject: &str,
    version: &str,
    deleted: bool,
) -> Result<SubjectVersion, SrError> {
    let wanted = parse_version(version)?;
    let versions = store.versions(subject, deleted).await?;
    if versions.is_empty() {
        return Err(SrError::subject_not_found(subject));
    }
    match wanted {
        VersionRef::Latest => versions
            .into_iter()
            .rev()
            .find(|v| !v.deleted)
            .ok_or_else(|| SrError::subject_not_found(subject)),
        VersionRef::Number(n) => versions
            .into_iter()
            .find(|v| v.version == n)
            .ok_or_else(|| SrError::version_not_found(n)),
    }
}

fn version_body(v: &SubjectVersion) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

async fn root() -> Response {
    ok(json!({}))
}

async fn schema_types() -> Response {
    ok(json!(["AVRO"]))
}

async fn list_subjects(
    State(store): State<Arc<Store>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    Ok(ok(json!(store.subjects(flag(&query, "deleted")).await?)))
}

async fn list_versions(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let versions = store.versions(&subject, flag(&query, "deleted")).await?;
    if versions.is_empty() {
        return Err(SrError::subject_not_found(&subject));
    }
    Ok(ok(json!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>()
    )))
}

async fn register(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let candidate = parse_request(&body)?;
    let level = effective_level(&store, &subject).await?;
    let outcome = store
        .register(&subject, &candidate.hash, "AVRO", &candidate.text, |live| {
            let existing = live
                .iter()
                .map(|v| parse_stored(&v.schema).map(|s| (v.version, s)))
                .collect::<Result<Vec<_>, _>>()?;
            let problems = compatibility::check(level, &candidate.parsed, &existing);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(SrError::new(
                    StatusCode::CONFLICT,
                    409,
                    format!(
                        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                        problems.join(", ")
                    ),
                ))
            }
        })
        .await??;
    let (id, created) = outcome;
    if created {
        tracing::info!(subject, id, "schema registered");
    }
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let candidate = parse_request(&body)?;
    let versions = store.versions(&subject, flag(&query, "deleted")).await?;
    if versions.is_empty() {
        return Err(SrError::subject_not_found(&subject));
    }
    let found = versions
        .iter()
        .rev()
        .find(|v| canonicalize(&v.schema).is_ok_and(|c| c.hash == candidate.hash))
        .ok_or_else(SrError::schema_not_found)?;
    Ok(ok(version_body(found)))
}

async fn get_version(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let found = find_version(&store, &subject, &version, flag(&query, "deleted")).await?;
    Ok(ok(version_body(&found)))
}

async fn get_version_schema(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = find_version(&store, &subject, &version, false).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn referenced_by(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    find_version(&store, &subject, &version, false).await?;
    // References are not supported, so nothing can refer to a version.
    Ok(ok(json!([])))
}

fn parse_id(text: &str) -> Result<i64, SrError> {
    text.parse::<i64>().map_err(|_| SrError::schema_not_found())
}

async fn get_schema_by_id(State(store): State<Arc<Store>>, Path(id): Path<String>) -> ApiResult {
    let (_, schema) = store
        .schema_by_id(parse_id(&id)?)
        .await?
        .ok_or_else(SrError::schema_not_found)?;
    Ok(ok(json!({"schema": schema})))
}

async fn get_raw_schema_by_id(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
) -> ApiResult {
    let (_, schema) = store
        .schema_by_id(parse_id(&id)?)
        .await?
        .ok_or_else(SrError::schema_not_found)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response())
}

async fn get_schema_usages(State(store): State<Arc<Store>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    store
        .schema_by_id(id)
        .await?
        .ok_or_else(SrError::schema_not_found)?;
    let usages: Vec<Value> = store
        .usages(id)
        .await?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(usages)))
}

async fn delete_subject(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let permanent = flag(&query, "permanent");
    let all = store.versions(&subject, true).await?;
    if all.is_empty() {
        return Err(SrError::subject_not_found(&subject));
    }
    let live: Vec<i64> = all
        .iter()
        .filter(|v| !v.deleted)
        .map(|v| v.version)
        .collect();
    if permanent {
        if !live.is_empty() {
            return Err(SrError::new(
                StatusCode::NOT_FOUND,
                40405,
                format!(
                    "Subject '{subject}' was not deleted first before being permanently deleted"
                ),
            ));
        }
        let versions: Vec<i64> = all.iter().map(|v| v.version).collect();
        store.delete_versions(&subject, &versions, true).await?;
        return Ok(ok(json!(versions)));
    }
    if live.is_empty() {
        return Err(SrError::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            ),
        ));
    }
    store.delete_versions(&subject, &live, false).await?;
    Ok(ok(json!(live)))
}

async fn delete_version(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let permanent = flag(&query, "permanent");
    let found = find_version(&store, &subject, &version, true).await?;
    match (permanent, found.deleted) {
        (false, true) => Err(SrError::new(
            StatusCode::NOT_FOUND,
            40406,
            format!(
                "Subject '{subject}' Version {} was soft deleted. Set permanent=true to delete permanently",
                found.version
            ),
        )),
        (true, false) => Err(SrError::new(
            StatusCode::NOT_FOUND,
            40407,
            format!(
                "Subject '{subject}' Version {} was not deleted first before being permanently deleted",
                found.version
            ),
        )),
        _ => {
            store
                .delete_versions(&subject, &[found.version], permanent)
                .await?;
            Ok(ok(json!(found.version)))
        }
    }
}

async fn compatibility_reply(
    store: &Store,
    subject: &str,
    version: Option<&str>,
    body: &Bytes,
    verbose: bool,
) -> ApiResult {
    let candidate = parse_request(body)?;
    let level = effective_level(store, subject).await?;
    let live = store.versions(subject, false).await?;
    if live.is_empty() {
        return Err(SrError::subject_not_found(subject));
    }
    // A named version (or `latest`) is compared on its own; without one, the level
    // decides: every version when transitive, the latest otherwise.
    let chosen: Vec<&SubjectVersion> = match version.map(parse_version).transpose()? {
        Some(VersionRef::Number(n)) => vec![
            live.iter()
                .find(|v| v.version == n)
                .ok_or_else(|| SrError::version_not_found(n))?,
        ],
        None if level.is_transitive() => live.iter().collect(),
        Some(VersionRef::Latest) | None => live.last().into_iter().collect(),
    };
    let existing = chosen
        .iter()
        .map(|v| parse_stored(&v.schema).map(|s| (v.version, s)))
        .collect::<Result<Vec<_>, _>>()?;
    // `existing` is already the chosen set: check against all of it.
    let problems = compatibility::check(level.as_transitive(), &candidate.parsed, &existing);
    let mut body = json!({"is_compatible": problems.is_empty()});
    if verbose {
        body["messages"] = json!(problems);
    }
    Ok(ok(body))
}

async fn check_version(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    compatibility_reply(
        &store,
        &subject,
        Some(&version),
        &body,
        flag(&query, "verbose"),
    )
    .await
}

async fn check_all(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    compatibility_reply(&store, &subject, None, &body, flag(&query, "verbose")).await
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

fn parse_config(body: &Bytes) -> Result<Level, SrError> {
    let request: ConfigRequest =
        serde_json::from_slice(body).map_err(|e| SrError::bad_request(format!("body: {e}")))?;
    Level::parse(&request.compatibility)
        .ok_or_else(|| SrError::invalid_compatibility(&request.compatibility))
}

async fn get_global_config(State(store): State<Arc<Store>>) -> ApiResult {
    let level = store
        .compatibility(None)
        .await?
        .unwrap_or_else(|| Level::default().as_str().to_owned());
    Ok(ok(json!({"compatibilityLevel": level})))
}

async fn put_global_config(State(store): State<Arc<Store>>, body: Bytes) -> ApiResult {
    let level = parse_config(&body)?;
    store.set_compatibility(None, level.as_str()).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn get_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    match store.compatibility(Some(&subject)).await? {
        Some(level) => Ok(ok(json!({"compatibilityLevel": level}))),
        None if flag(&query, "defaultToGlobal") => get_global_config(State(store)).await,
        None => Err(SrError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = parse_config(&body)?;
    store
        .set_compatibility(Some(&subject), level.as_str())
        .await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
) -> ApiResult {
    let previous = store.compatibility(Some(&subject)).await?;
    match previous {
        Some(level) => {
            store.clear_compatibility(&subject).await?;
            Ok(ok(json!({"compatibilityLevel": level})))
        }
        None => Err(SrError::subject_not_found(&subject)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_ignores_whitespace_and_key_order() {
        let a =
            canonicalize(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#)
                .unwrap();
        let b = canonicalize(
            "{ \"name\" : \"R\",\n  \"fields\": [ {\"type\": \"int\", \"name\": \"a\"} ],\n \"type\": \"record\" }",
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.text, b.text);
        let c =
            canonicalize(r#"{"type":"record","name":"R","fields":[{"name":"b","type":"int"}]}"#)
                .unwrap();
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn invalid_schemas_and_versions_get_confluent_codes() {
        assert_eq!(
            canonicalize("{\"type\":\"recrd\"}").err().unwrap().code,
            42201
        );
        assert_eq!(canonicalize("not json").err().unwrap().code, 42201);
        assert!(matches!(parse_version("latest"), Ok(VersionRef::Latest)));
        assert!(matches!(parse_version("3"), Ok(VersionRef::Number(3))));
        assert_eq!(parse_version("0").err().unwrap().code, 42202);
        assert_eq!(parse_version("abc").err().unwrap().code, 42202);
    }
}
