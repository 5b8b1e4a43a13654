//! The audit trail made queryable: every record of `audit.log` (all services write there,
//! each on its own partition) is kept in the registry's database, and
//! `GET /v1/audit?resource=...` answers from it. `GET /v1/audit/verify` checks the chains
//! on the topic itself, which stays the record of truth.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json as Body, Router,
    extract::{Query, State},
    http::StatusCode,
};
use mlops_events::{AuditOutcome, AuditRecord};
use mlops_kafka::{Handler, HandlerError, KafkaConfig, Record};
use mlops_schema::AvroCodec;
use mlops_service::{
    ApiError,
    routes::{Api, Role, Route},
};
use serde_json::{Value as Json, json};
use sqlx::{AnyPool, Row};

/// The consumer group that copies `audit.log` into the database.
pub const GROUP: &str = "registry-audit";

pub const ROUTES: &[Route] = &[
    Route::new("GET", "/v1/audit", Role::Reader),
    Route::new("GET", "/v1/audit/verify", Role::Reader),
];

#[derive(Clone)]
pub struct AuditLog {
    pub pool: AnyPool,
    pub codec: Arc<AvroCodec>,
    pub kafka: KafkaConfig,
}

impl Handler for AuditLog {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let audit: AuditRecord = self.codec.decode(payload).await?;
        sqlx::query(
            "INSERT INTO audit_records (audit_id, log_partition, log_offset, actor, role, \
             action, resource, outcome, reason, source_ip, trace_id, occurred_at, prev_hash, \
             hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (audit_id) DO NOTHING",
        )
        .bind(&audit.audit_id)
        .bind(i64::from(record.partition))
        .bind(record.offset)
        .bind(&audit.actor)
        .bind(&audit.role)
        .bind(&audit.action)
        .bind(&audit.resource)
        .bind(outcome_name(audit.outcome))
        .bind(&audit.reason)
        .bind(&audit.source_ip)
        .bind(&audit.trace_id)
        .bind(audit.occurred_at)
        .bind(&audit.prev_hash)
        .bind(&audit.hash)
        .execute(&self.pool)
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
        Ok(())
    }
}

fn outcome_name(outcome: AuditOutcome) -> &'static str {
    match outcome {
        AuditOutcome::Success => "success",
        AuditOutcome::Denied => "denied",
        AuditOutcome::Failed => "failed",
    }
}

pub fn routes() -> Api<Arc<AuditLog>> {
    Api::new(ROUTES)
        .get("/v1/audit", query)
        .get("/v1/audit/verify", verify)
}

pub fn router(log: Arc<AuditLog>) -> Router {
    routes().into_router().with_state(log)
}

fn invalid(field: &str, reason: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        format!("{field}: {reason}"),
    )
}

/// `GET /v1/audit?resource=models/churn&actor=&action=&outcome=&since=&limit=`: newest
/// first; `resource` matches itself and everything under it.
async fn query(
    State(log): State<Arc<AuditLog>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Body<Json>, ApiError> {
    const KNOWN: [&str; 6] = ["resource", "actor", "action", "outcome", "since", "limit"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!("unknown parameter (known: {})", KNOWN.join(", ")),
        ));
    }
    let limit = match params.get("limit") {
        None => 100,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "limit",
                    format!("{text:?} is not a number from 1 to 1000"),
                ));
            }
        },
    };
    let since = match params.get("since") {
        None => 0,
        Some(text) => text.parse::<i64>().map_err(|_| {
            invalid(
                "since",
                format!("{text:?} is not a time in milliseconds since the epoch"),
            )
        })?,
    };
    if let Some(outcome) = params.get("outcome")
        && !["success", "denied", "failed"].contains(&outcome.as_str())
    {
        return Err(invalid(
            "outcome",
            format!("{outcome:?} is not one of success, denied, failed"),
        ));
    }
    let mut sql = String::from(
        "SELECT audit_id, log_partition, log_offset, actor, role, action, resource, outcome, \
         reason, source_ip, trace_id, occurred_at, prev_hash, hash FROM audit_records \
         WHERE occurred_at >= $1",
    );
    let mut binds: Vec<String> = Vec::new();
    if let Some(resource) = params.get("resource") {
        binds.push(resource.trim_matches('/').to_owned());
        let n = binds.len() + 1;
        binds.push(format!("{}/%", resource.trim_matches('/')));
        sql.push_str(&format!(
            " AND (resource = ${n} OR resource LIKE ${})",
            n + 1
        ));
    }
    for field in ["actor", "action", "outcome"] {
        if let Some(value) = params.get(field) {
            binds.push(value.clone());
            sql.push_str(&format!(" AND {field} = ${}", binds.len() + 1));
        }
    }
    sql.push_str(&format!(
        " ORDER BY occurred_at DESC, log_offset DESC LIMIT {limit}"
    ));
    // Safe: the text holds fixed column names, placeholders and a validated number; every
    // value a caller gave is bound.
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since);
    for value in &binds {
        statement = statement.bind(value);
    }
    let rows = statement
        .fetch_all(&log.pool)
        .await
        .map_err(|e| mlops_service::database::answer(&e, "audit_error"))?;
    let records: Vec<Json> = rows
        .iter()
        .map(|row| {
            json!({
                "audit_id": row.get::<String, _>(0),
                "partition": row.get::<i64, _>(1),
                "offset": row.get::<i64, _>(2),
                "actor": row.get::<String, _>(3),
                "role": row.get::<Option<String>, _>(4),
                "action": row.get::<String, _>(5),
                "resource": row.get::<String, _>(6),
                "outcome": row.get::<String, _>(7),
                "reason": row.get::<Option<String>, _>(8),
                "source_ip": row.get::<Option<String>, _>(9),
                "trace_id": row.get::<Option<String>, _>(10),
                "occurred_at": row.get::<i64, _>(11),
                "prev_hash": row.get::<Option<String>, _>(12),
                "hash": row.get::<String, _>(13),
            })
        })
        .collect();
    Ok(Body(json!({ "records": records })))
}

/// `GET /v1/audit/verify`: every partition's chain, read from `audit.log` itself.
async fn verify(State(log): State<Arc<AuditLog>>) -> Result<Body<Json>, ApiError> {
    let reports = mlops_service::audit::verify_log(&log.kafka, &log.codec)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", e))?;
    let intact = reports.iter().all(|r| r.broken.is_none());
    Ok(Body(json!({ "intact": intact, "partitions": reports })))
}
