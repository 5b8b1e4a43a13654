//! Models, versions and transitions in the registry's database (`sqlx::Any`: SQLite by
//! default, PostgreSQL by URL). Every change is one transaction that takes the model's
//! next sequence numbers by `UPDATE ... RETURNING` (a row lock on PostgreSQL, the single
//! writer on SQLite), so concurrent writers never share a number; its transitions are the
//! outbox the publisher drains.

use std::collections::BTreeMap;

use mlops_events::ModelStage as Stage;
use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

use super::rules::{self, Current, Refusal, Step, parse_stage, stage_name};

#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("no model named {0:?}")]
    UnknownModel(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = ModelStoreError> = std::result::Result<T, E>;

/// Where a version came from, kept whole for the lineage endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LineageRecord {
    pub training_run_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub feature_view: Option<String>,
    pub feature_view_version: Option<i32>,
    pub schema_ids: Vec<i32>,
    pub code_version: Option<String>,
    /// The training requests the run answered.
    pub request_ids: Vec<String>,
    /// The events behind those requests (e.g. drift events).
    pub triggering_event_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    pub model: String,
    pub version: i64,
    #[serde(serialize_with = "stage_ser")]
    pub stage: Stage,
    pub canary_percent: Option<f64>,
    pub sha256: String,
    pub signature: String,
    pub artifact_uri: String,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: LineageRecord,
    pub created_at: i64,
}

fn stage_ser<S: serde::Serializer>(stage: &Stage, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(stage_name(*stage))
}

fn stage_opt_ser<S: serde::Serializer>(stage: &Option<Stage>, s: S) -> Result<S::Ok, S::Error> {
    match stage {
        Some(stage) => s.serialize_str(stage_name(*stage)),
        None => s.serialize_none(),
    }
}

/// One recorded transition; also the outbox entry of its lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionRow {
    pub model: String,
    pub sequence: i64,
    pub version: i64,
    #[serde(rename = "from", serialize_with = "stage_opt_ser")]
    pub from_stage: Option<Stage>,
    #[serde(rename = "to", serialize_with = "stage_ser")]
    pub to_stage: Stage,
    pub canary_percent: Option<f64>,
    pub reason: String,
    pub actor: String,
    pub event_id: String,
    pub triggering_event_id: Option<String>,
    pub trace_id: Option<String>,
    /// The span the transition was decided in (W3C), parent of its lifecycle event's.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Milliseconds since the epoch; the API shows it as RFC 3339.
    #[serde(skip)]
    pub at: i64,
    #[serde(skip)]
    pub published: bool,
}

/// Who asks for a change and why.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    pub reason: String,
    pub actor: String,
    pub triggering_event_id: Option<String>,
    pub trace_id: Option<String>,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new version, with this number.
    New(i64),
    /// The training run had registered this version already; nothing changed.
    Existing(i64),
}

impl Registered {
    pub fn version(self) -> i64 {
        match self {
            Self::New(v) | Self::Existing(v) => v,
        }
    }
}

/// A new version's stored artifact and what is known of it.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub sha256: String,
    pub signature: String,
    pub artifact_uri: String,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: LineageRecord,
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    pool: AnyPool,
}

fn version_row(row: &AnyRow) -> Result<VersionRow> {
    let stage: String = row.try_get("stage")?;
    let metrics: String = row.try_get("metrics")?;
    let lineage: String = row.try_get("lineage")?;
    Ok(VersionRow {
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        stage: parse_stage(&stage).ok_or_else(|| ModelStoreError::Corrupt(stage.clone()))?,
        canary_percent: row.try_get("canary_percent")?,
        sha256: row.try_get("sha256")?,
        signature: row.try_get("signature")?,
        artifact_uri: row.try_get("artifact_uri")?,
        metrics: serde_json::from_str(&metrics)
            .map_err(|e| ModelStoreError::Corrupt(format!("metrics: {e}")))?,
        lineage: serde_json::from_str(&lineage)
            .map_err(|e| ModelStoreError::Corrupt(format!("lineage: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn transition_row(row: &AnyRow) -> Result<TransitionRow> {
    let from: Option<String> = row.try_get("from_stage")?;
    let to: String = row.try_get("to_stage")?;
    let published: i64 = row.try_get("published")?;
    Ok(TransitionRow {
        model: row.try_get("model")?,
        sequence: row.try_get("sequence")?,
        version: row.try_get("version")?,
        from_stage: from.as_deref().and_then(parse_stage),
        to_stage: parse_stage(&to).ok_or_else(|| ModelStoreError::Corrupt(to.clone()))?,
        canary_percent: row.try_get("canary_percent")?,
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        event_id: row.try_get("event_id")?,
        triggering_event_id: row.try_get("triggering_event_id")?,
        trace_id: row.try_get("trace_id")?,
        traceparent: row.try_get("traceparent")?,
        at: row.try_get("at")?,
        published: published != 0,
    })
}

const VERSION_COLUMNS: &str = "model, version, stage, canary_percent, sha256, signature, \
     artifact_uri, metrics, lineage, created_at";
const TRANSITION_COLUMNS: &str = "model, sequence, version, from_stage, to_stage, \
     canary_percent, reason, actor, event_id, triggering_event_id, trace_id, at, published, traceparent";

impl ModelStore {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Names of every model, sorted.
    pub async fn models(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM models ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Every version of `model`, oldest first (`UnknownModel` when there is no such model).
    /// `(model, stage, version)` of every version in production or canary.
    pub async fn serving_versions(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT model, stage, version FROM model_versions \
             WHERE stage IN ('production', 'canary') ORDER BY model, stage",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn versions(&self, model: &str) -> Result<Vec<VersionRow>> {
        let exists = sqlx::query("SELECT 1 FROM models WHERE name = $1")
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(ModelStoreError::UnknownModel(model.to_owned()));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 ORDER BY version"
        )))
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_row).collect()
    }

    pub async fn version(&self, model: &str, version: i64) -> Result<VersionRow> {
        self.versions(model)
            .await?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                Refusal::UnknownVersion {
                    model: model.to_owned(),
                    version,
                }
                .into()
            })
    }

    /// Every transition of `model`, oldest first.
    pub async fn history(&self, model: &str) -> Result<Vec<TransitionRow>> {
        self.versions(model).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSITION_COLUMNS} FROM model_transitions WHERE model = $1 ORDER BY sequence"
        )))
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(transition_row).collect()
    }

    /// The outbox of `model`: the last sequence number committed and the last one the
    /// broker acknowledged (events are published in order, so every one before it was).
    pub async fn outbox(&self, model: &str) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(sequence), 0), \
             COALESCE(MAX(CASE WHEN published = 1 THEN sequence ELSE 0 END), 0) \
             FROM model_transitions WHERE model = $1",
        )
        .bind(model)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Transitions committed but not yet acknowledged by the broker, oldest first per model.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<TransitionRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSITION_COLUMNS} FROM model_transitions WHERE published = 0 \
             ORDER BY model, sequence LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(transition_row).collect()
    }

    pub async fn mark_published(&self, model: &str, sequence: i64) -> Result<()> {
        sqlx::query(
            "UPDATE model_transitions SET published = 1 WHERE model = $1 AND sequence = $2",
        )
        .bind(model)
        .bind(sequence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a change caused by `event_id` was already recorded (decisions seen twice).
    pub async fn caused_by(&self, event_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM model_transitions WHERE triggering_event_id = $1")
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Registers a new version of `model` (created on first use) as a candidate and, when
    /// `deploy`, moves it on by [`rules::deploy`]. A registration from a training run that
    /// already registered a version of `model` changes nothing and names that version
    /// (`Registered::Existing`): a run retried after its answer was lost registers once.
    pub async fn register(
        &self,
        model: &str,
        new: NewVersion,
        deploy: Option<f64>,
        cause: &Cause,
    ) -> Result<Registered> {
        let now = mlops_events::now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO models (name, last_version, last_sequence, created_at) \
             VALUES ($1, 0, 0, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(model)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // After the model's row is written (locked until the commit), so two registrations
        // of one run wait for each other and the second sees the first's version.
        sqlx::query("UPDATE models SET last_version = last_version WHERE name = $1")
            .bind(model)
            .execute(&mut *tx)
            .await?;
        if let Some(run) = &new.lineage.training_run_id {
            let existing = sqlx::query(
                "SELECT version FROM model_versions WHERE model = $1 AND training_run_id = $2",
            )
            .bind(model)
            .bind(run)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                tx.rollback().await?;
                return Ok(Registered::Existing(row.try_get(0)?));
            }
        }
        let version: i64 = sqlx::query(
            "UPDATE models SET last_version = last_version + 1 WHERE name = $1 RETURNING last_version",
        )
        .bind(model)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO model_versions ({VERSION_COLUMNS}, training_run_id) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(model)
        .bind(version)
        .bind(stage_name(Stage::Candidate))
        .bind(&new.sha256)
        .bind(&new.signature)
        .bind(&new.artifact_uri)
        .bind(serde_json::to_string(&new.metrics).unwrap_or_default())
        .bind(serde_json::to_string(&new.lineage).unwrap_or_default())
        .bind(now)
        .bind(new.lineage.training_run_id.as_deref())
        .execute(&mut *tx)
        .await?;
        let registered = Step {
            version,
            from: None,
            to: Stage::Candidate,
            canary_percent: None,
            consequence: None,
        };
        let mut steps = vec![registered];
        if let Some(first_percent) = deploy {
            let current = Self::current(&mut tx, model).await?;
            steps.extend(rules::deploy(&current, version, first_percent));
        }
        Self::apply(&mut tx, model, &steps, cause, now).await?;
        tx.commit().await?;
        Ok(Registered::New(version))
    }

    /// Moves `version` to `to` by the rules; returns the transitions recorded.
    pub async fn transition(
        &self,
        model: &str,
        version: i64,
        to: Stage,
        canary_percent: Option<f64>,
        cause: &Cause,
    ) -> Result<Vec<TransitionRow>> {
        let now = mlops_events::now_millis();
        let mut tx = self.pool.begin().await?;
        let current = Self::current(&mut tx, model).await?;
        let steps = rules::plan(model, &current, version, to, canary_percent)?;
        let rows = Self::apply(&mut tx, model, &steps, cause, now).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Restores the version that was in production before the current one.
    pub async fn rollback(&self, model: &str, cause: &Cause) -> Result<Vec<TransitionRow>> {
        let now = mlops_events::now_millis();
        let mut tx = self.pool.begin().await?;
        let current = Self::current(&mut tx, model).await?;
        let production = current
            .iter()
            .find(|v| v.stage == Stage::Production)
            .map(|v| v.version)
            .ok_or_else(|| {
                Refusal::Rule(format!(
                    "model {model:?} has no production version to roll back"
                ))
            })?;
        let previous: Option<i64> = sqlx::query(
            "SELECT version FROM model_transitions \
             WHERE model = $1 AND to_stage = 'production' AND version <> $2 \
             ORDER BY sequence DESC LIMIT 1",
        )
        .bind(model)
        .bind(production)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let previous = previous.ok_or_else(|| {
            Refusal::Rule(format!(
                "model {model:?} had no production version before version {production}: nothing to roll back to"
            ))
        })?;
        let steps = rules::plan(model, &current, previous, Stage::Production, None)?;
        let rows = Self::apply(&mut tx, model, &steps, cause, now).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn current(tx: &mut Transaction<'_, Any>, model: &str) -> Result<Vec<Current>> {
        let rows = sqlx::query(
            "SELECT version, stage, canary_percent FROM model_versions WHERE model = $1 ORDER BY version",
        )
        .bind(model)
        .fetch_all(&mut **tx)
        .await?;
        if rows.is_empty() {
            return Err(ModelStoreError::UnknownModel(model.to_owned()));
        }
        rows.iter()
            .map(|r| {
                let stage: String = r.try_get(1)?;
                Ok(Current {
                    version: r.try_get(0)?,
                    stage: parse_stage(&stage).ok_or(ModelStoreError::Corrupt(stage))?,
                    canary_percent: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Records `steps` (stages, transitions, sequence numbers) inside `tx`.
    async fn apply(
        tx: &mut Transaction<'_, Any>,
        model: &str,
        steps: &[Step],
        cause: &Cause,
        now: i64,
    ) -> Result<Vec<TransitionRow>> {
        // The span deciding this (an API request, a canary verdict being applied): kept
        // when it belongs to the flow the cause names, so the lifecycle event continues it.
        let mlops_telemetry::FlowHere {
            trace_id,
            traceparent,
        } = mlops_telemetry::flow_here(cause.trace_id.as_deref());
        let mut rows = Vec::new();
        for step in steps {
            let sequence: i64 = sqlx::query(
                "UPDATE models SET last_sequence = last_sequence + 1 WHERE name = $1 RETURNING last_sequence",
            )
            .bind(model)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            // A percentage is bound as a number and a flag, never as a typed NULL: sqlx's
            // Any driver sends a NULL double as float4, which PostgreSQL then expects of
            // every later value of the cached statement.
            sqlx::query(
                "UPDATE model_versions SET stage = $1, \
                 canary_percent = CASE WHEN $5 = 1 THEN $2 ELSE NULL END \
                 WHERE model = $3 AND version = $4",
            )
            .bind(stage_name(step.to))
            .bind(step.canary_percent.unwrap_or_default())
            .bind(model)
            .bind(step.version)
            .bind(i64::from(step.canary_percent.is_some()))
            .execute(&mut **tx)
            .await?;
            let row = TransitionRow {
                model: model.to_owned(),
                sequence,
                version: step.version,
                from_stage: step.from,
                to_stage: step.to,
                canary_percent: step.canary_percent,
                reason: match &step.consequence {
                    Some(why) => format!("{why} ({})", cause.reason),
                    None => cause.reason.clone(),
                },
                actor: cause.actor.clone(),
                event_id: mlops_events::new_id(),
                triggering_event_id: cause.triggering_event_id.clone(),
                trace_id: trace_id.clone(),
                traceparent: traceparent.clone(),
                at: now,
                published: false,
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO model_transitions ({TRANSITION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, CASE WHEN $13 = 1 THEN $6 ELSE NULL END, \
                 $7, $8, $9, $10, $11, $12, 0, $14)"
            )))
            .bind(&row.model)
            .bind(row.sequence)
            .bind(row.version)
            .bind(row.from_stage.map(stage_name))
            .bind(stage_name(row.to_stage))
            .bind(row.canary_percent.unwrap_or_default())
            .bind(&row.reason)
            .bind(&row.actor)
            .bind(&row.event_id)
            .bind(&row.triggering_event_id)
            .bind(&row.trace_id)
            .bind(row.at)
            .bind(i64::from(row.canary_percent.is_some()))
            .bind(&row.traceparent)
            .execute(&mut **tx)
            .await?;
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Which version was in production and which in canary (with its share) at `at`, by
/// replaying `history` up to and including that instant.
pub fn state_at(history: &[TransitionRow], at: i64) -> (Option<i64>, Option<(i64, f64)>) {
    let mut stages: BTreeMap<i64, (Stage, Option<f64>)> = BTreeMap::new();
    for t in history.iter().filter(|t| t.at <= at) {
        stages.insert(t.version, (t.to_stage, t.canary_percent));
    }
    let production = stages
        .iter()
        .find(|(_, (s, _))| *s == Stage::Production)
        .map(|(v, _)| *v);
    let canary = stages
        .iter()
        .find(|(_, (s, _))| *s == Stage::Canary)
        .map(|(v, (_, p))| (*v, p.unwrap_or_default()));
    (production, canary)
}
