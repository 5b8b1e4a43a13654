//! `POST /v1/models/{name}:predict`: the platform's own prediction call, with named raw
//! features or just an entity id. For an entity id the features are the entity's latest
//! row in the online store, fetched from the feature service's lookup API with a tight
//! timeout — one source of truth for online features, rather than a second copy of the
//! view's state kept here. Either way the raw values go through the version's own fitted
//! transforms, and the answer shows the input vector the model saw.

use mlops_telemetry::Traced;
use std::{sync::Arc, time::Duration};

use axum::{
    Json as Body,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
};
use mlops_events::ServingRole;
use mlops_service::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::{
    deployments::Loaded,
    oip::{Ids, Serving, answer, log, log_failure, route_by},
    rows::Rows,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    /// Raw feature values by name.
    #[serde(default)]
    features: Option<Map<String, Json>>,
    /// The entity the prediction is about; its online features are used when `features`
    /// is absent, and it keys canary routing.
    #[serde(default)]
    entity_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

/// Where online features come from, and how long a lookup may take.
#[derive(Debug, Clone)]
pub struct OnlineFeatures {
    pub http: reqwest::Client,
    pub feature_url: String,
    pub timeout: Duration,
}

impl OnlineFeatures {
    async fn latest(
        &self,
        view: &str,
        entity: &str,
    ) -> Result<(Map<String, Json>, Json), ApiError> {
        let url = format!(
            "{}/v1/feature-views/{view}/entities/{entity}",
            self.feature_url
        );
        let response = self
            .http
            .get(&url)
            .traced()
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "features_unavailable",
                    format!("the online store did not answer in {:?}: {e}", self.timeout),
                )
            })?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "entity_not_found",
                format!("feature view {view:?} has no features for entity {entity:?}"),
            ));
        }
        let body: Json = response
            .error_for_status()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "features_unavailable",
                    e.to_string(),
                )
            })?
            .json()
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "features_unavailable",
                    e.to_string(),
                )
            })?;
        let features = body["features"].as_object().cloned().unwrap_or_default();
        Ok((features, body["event_time"].clone()))
    }
}

/// `POST /v1/models/{name}:predict` (the only verb on a model here).
pub async fn model_verb(
    State(serving): State<Arc<Serving>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Body<Json>, ApiError> {
    let started = std::time::Instant::now();
    let Some(model) = name.strip_suffix(":predict") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_verb",
            format!("POST /v1/models/{name}: the model verbs are :predict"),
        ));
    };
    let request: PredictRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("expected {{\"features\": {{...}}}} or {{\"entity_id\": ...}}: {e}"),
        )
    })?;
    let key = request
        .entity_id
        .as_deref()
        .or(request.request_id.as_deref());
    let (loaded, role) = route_by(&serving.deployments, model, key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_served",
            format!("model {model:?} has no production or canary version"),
        )
    })?;
    let ids: Ids = (
        request
            .request_id
            .clone()
            .unwrap_or_else(mlops_events::new_id),
        request.entity_id.clone(),
    );
    match predict_with(&serving, model, &request, (&loaded, role), &ids, started).await {
        // As over OIP: a canary that fails where production answers is logged against the
        // canary, and production answers.
        Err(failure) if role == ServingRole::Canary => {
            let Some(production) = serving.deployments.get(model).and_then(|d| d.production) else {
                return Err(failure);
            };
            let answered = predict_with(
                &serving,
                model,
                &request,
                (&production, ServingRole::Production),
                &ids,
                started,
            )
            .await?;
            log_failure(
                &serving,
                model,
                &ids,
                (&loaded, role),
                &failure.reason(),
                started,
            );
            Ok(answered)
        }
        answered => answered,
    }
}

/// Scores `request` with `loaded` (its features fetched from the online store when only an
/// entity is named), logs the answer and shows it with the input vector the model saw.
async fn predict_with(
    serving: &Serving,
    model: &str,
    request: &PredictRequest,
    (loaded, role): (&Arc<Loaded>, ServingRole),
    ids: &Ids,
    started: std::time::Instant,
) -> Result<Body<Json>, ApiError> {
    let (features, feature_time) = match (&request.features, &request.entity_id) {
        (Some(features), _) => (features.clone(), Json::Null),
        (None, Some(entity)) => serving.online.latest(&loaded.artifact.view, entity).await?,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "give `features` (raw values by name) or an `entity_id`",
            ));
        }
    };
    let rows = Rows::named(
        loaded.artifact.transforms.iter().map(|(n, _)| n.as_str()),
        &features,
    );
    let (outputs, answers, inputs) = answer(loaded, &rows).map_err(|reason| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_features", reason)
    })?;
    log(
        serving,
        model,
        ids,
        (loaded, role),
        (&rows, &inputs),
        answers,
        started,
    );
    if role == ServingRole::Production {
        crate::oip::shadow(serving, model, ids, &rows, started);
    }
    // One row: a value per output, or the row's vector for a [1, n] output.
    let prediction: Map<String, Json> = outputs
        .iter()
        .map(|o| {
            let data = json!(o.data);
            let value = match data.as_array() {
                Some(values) if o.shape.len() == 1 => values.first().cloned().unwrap_or(Json::Null),
                _ => data,
            };
            (o.name.to_owned(), value)
        })
        .collect();
    let vector: Map<String, Json> = loaded
        .artifact
        .features
        .iter()
        .zip(inputs.row(0).iter())
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    Ok(Body(json!({
        "model": model,
        "version": loaded.version,
        "role": role.as_str(),
        "request_id": ids.0,
        "entity_id": request.entity_id,
        "prediction": prediction,
        "inputs": vector,
        "feature_time": feature_time,
    })))
}
