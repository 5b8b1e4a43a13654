//! Feature view specs: what users write (TOML files or JSON over the API), checked with
//! every problem reported at once, each naming the field at fault.

pub use mlops_ml::transforms::{Encode, FittedTransforms, Impute, Scale};
use std::collections::HashSet;

use mlops_schema::json::FieldError;
use serde::{Deserialize, Serialize};

/// A feature view as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureViewSpec {
    /// View name: lowercase letters, digits and `_`; its topic is `features.<name>`.
    pub name: String,
    /// Source dataset; its events are read from `raw.<source>`.
    pub source: String,
    /// Field of the source events that identifies the entity.
    pub entity_key: String,
    /// Field of the source events holding the event time (epoch milliseconds).
    pub event_time: String,
    /// How far behind the newest event time of its partition (Kafka Streams' "stream
    /// time"; an entity's events share a partition) an event may arrive and still update
    /// its windows, e.g. `"10m"`. Later events are dead-lettered with reason `late`.
    #[serde(default = "zero_duration")]
    pub allowed_lateness: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Row-level features: a source column or an expression, cast and filled.
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// Windowed aggregations per entity by event time.
    #[serde(default)]
    pub aggregations: Vec<AggregationSpec>,
}

fn zero_duration() -> String {
    "0s".to_owned()
}

/// One row-level feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    /// Source column; defaults to the feature's name when `expr` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// SQL expression over source columns, e.g. `"amount * 100 / (balance + 1)"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast: Option<ValueType>,
    /// Constant written in place of a missing value, as the stream computes the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impute: Option<Impute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<Encode>,
}

impl FeatureSpec {
    pub fn fitted(&self) -> FittedTransforms {
        FittedTransforms {
            impute: self.impute,
            scale: self.scale,
            encode: self.encode,
        }
    }
}

impl AggregationSpec {
    pub fn fitted(&self) -> FittedTransforms {
        FittedTransforms {
            impute: self.impute,
            scale: self.scale,
            encode: self.encode,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Long,
    Double,
    String,
    Boolean,
}

/// One windowed aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationSpec {
    pub name: String,
    /// Column aggregated; not needed for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub function: AggFunction,
    /// Window length, e.g. `"1h"`, `"15m"`, `"7d"`.
    pub window: String,
    #[serde(default)]
    pub kind: WindowKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impute: Option<Impute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<Encode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggFunction {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    Std,
}

/// `sliding`: the window ending at each event, `(t - window, t]`.
/// `tumbling`: the fixed window `[k·window, (k+1)·window)` holding the event, up to the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    #[default]
    Sliding,
    Tumbling,
}

/// Columns every feature row carries besides its features.
pub const RESERVED: [&str; 6] = mlops_events::FEATURE_ROW_METADATA;

impl FeatureViewSpec {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, Vec<FieldError>> {
        toml::from_str(text).map_err(|e| {
            vec![FieldError {
                field: String::new(),
                reason: format!("not a valid feature view: {}", e.message()),
            }]
        })
    }

    /// Millisecond value of `allowed_lateness`.
    pub fn lateness_ms(&self) -> i64 {
        parse_duration(&self.allowed_lateness).unwrap_or(0)
    }

    /// Checks everything that can be checked without the source schema.
    pub fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut error = |field: String, reason: String| errors.push(FieldError { field, reason });
        if !is_identifier(&self.name) {
            error("name".into(), identifier_reason(&self.name));
        }
        if let Err(reason) = mlops_events::topics::check_dataset_name(&self.source) {
            error("source".into(), format!("not a dataset name: {reason}"));
        }
        for (field, value) in [
            ("entity_key", &self.entity_key),
            ("event_time", &self.event_time),
        ] {
            if value.is_empty() {
                error(
                    field.into(),
                    "must name a field of the source dataset".into(),
                );
            }
        }
        if let Err(reason) = parse_duration(&self.allowed_lateness) {
            error("allowed_lateness".into(), reason);
        }
        if self.features.is_empty() && self.aggregations.is_empty() {
            error(
                "features".into(),
                "a view needs at least one feature or aggregation".into(),
            );
        }
        let mut names = HashSet::new();
        let mut check_name = |path: String, name: &str, error: &mut dyn FnMut(String, String)| {
            if !is_identifier(name) {
                error(path, identifier_reason(name));
            } else if RESERVED.contains(&name) {
                error(
                    path,
                    format!("{name:?} is reserved for the row's own columns"),
                );
            } else if !names.insert(name.to_owned()) {
                error(path, format!("{name:?} is declared twice"));
            }
        };
        for (i, feature) in self.features.iter().enumerate() {
            let path = |field: &str| format!("features[{i}].{field}");
            check_name(path("name"), &feature.name, &mut error);
            if feature.column.is_some() && feature.expr.is_some() {
                error(path("expr"), "give either column or expr, not both".into());
            }
            if let Some(expr) = &feature.expr
                && let Err(e) = polars::sql::sql_expr(expr)
            {
                error(path("expr"), format!("not a valid expression: {e}"));
            }
            if let Some(fill) = &feature.fill
                && !(fill.is_number() || fill.is_string() || fill.is_boolean())
            {
                error(
                    path("fill"),
                    format!("expected a number, string or boolean, got {fill}"),
                );
            }
            check_fitted(&feature.fitted(), &|f| path(f), &mut error);
        }
        for (i, aggregation) in self.aggregations.iter().enumerate() {
            let path = |field: &str| format!("aggregations[{i}].{field}");
            check_name(path("name"), &aggregation.name, &mut error);
            if aggregation.column.is_none() && aggregation.function != AggFunction::Count {
                error(
                    path("column"),
                    format!("{:?} needs a column to aggregate", aggregation.function),
                );
            }
            match parse_duration(&aggregation.window) {
                Ok(0) => error(path("window"), "must be longer than zero".into()),
                Ok(_) => {}
                Err(reason) => error(path("window"), reason),
            }
            if aggregation.encode.is_some() {
                error(
                    path("encode"),
                    "aggregations are numbers; encode a feature instead".into(),
                );
            }
            check_fitted(&aggregation.fitted(), &|f| path(f), &mut error);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The longest window, which bounds how much history the stream keeps per entity.
    pub fn max_window_ms(&self) -> i64 {
        self.aggregations
            .iter()
            .filter_map(|a| parse_duration(&a.window).ok())
            .max()
            .unwrap_or(0)
    }

    /// Source columns the view reads, in first-use order.
    pub fn source_columns(&self) -> Vec<String> {
        let mut columns = vec![self.entity_key.clone(), self.event_time.clone()];
        let mut push = |c: &str| {
            if !columns.iter().any(|x| x == c) {
                columns.push(c.to_owned());
            }
        };
        for feature in &self.features {
            match (&feature.expr, &feature.column) {
                (Some(expr), _) => {
                    if let Ok(expr) = polars::sql::sql_expr(expr) {
                        for name in polars_plan::utils::expr_to_leaf_column_names(&expr) {
                            push(&name);
                        }
                    }
                }
                (None, Some(column)) => push(column),
                (None, None) => push(&feature.name),
            }
        }
        for aggregation in &self.aggregations {
            if let Some(column) = &aggregation.column {
                push(column);
            }
        }
        columns
    }
}

fn check_fitted(
    fitted: &FittedTransforms,
    path: &dyn Fn(&str) -> String,
    error: &mut dyn FnMut(String, String),
) {
    if fitted.encode.is_some() && fitted.scale.is_some() {
        error(
            path("scale"),
            "an encoded category cannot also be scaled".into(),
        );
    }
    if fitted.encode.is_some() && matches!(fitted.impute, Some(Impute::Mean | Impute::Median)) {
        error(
            path("impute"),
            "a category is imputed with \"mode\", not a mean or median".into(),
        );
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 100
}

fn identifier_reason(name: &str) -> String {
    format!("expected lowercase letters, digits and '_', starting with a letter, got {name:?}")
}

/// Durations in specs: `"90s"`, `"15m"`, `"1h30m"`, `"7d"`, `"250ms"`, in milliseconds.
pub use mlops_service::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let spec = FeatureViewSpec::from_toml(
            r#"
            name = "Bad Name"
            source = "payments"
            entity_key = "customer"
            event_time = "ts"
            allowed_lateness = "soon"
            [[features]]
            name = "amount"
            expr = "amount +"
            [[aggregations]]
            name = "amount"
            function = "sum"
            window = "0s"
            "#,
        )
        .unwrap();
        let errors = spec.check().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "allowed_lateness",
                "features[0].expr",
                "aggregations[0].name",
                "aggregations[0].column",
                "aggregations[0].window"
            ],
            "{errors:?}"
        );
        assert!(errors[3].reason.contains("declared twice"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let errors = FeatureViewSpec::from_toml(
            "name = \"v\"\nsource = \"s\"\nentity_key = \"k\"\nevent_time = \"t\"\nwindow = \"1h\"\n",
        )
        .unwrap_err();
        assert!(
            errors[0].reason.contains("unknown field `window`"),
            "{errors:?}"
        );
    }

    proptest::proptest! {
        /// Any text posted as a feature view: a spec, or errors with reasons.
        #[test]
        fn any_text_is_a_view_or_an_explained_refusal(text in "\\PC{0,200}") {
            if let Err(errors) = FeatureViewSpec::from_toml(&text) {
                proptest::prop_assert!(errors.iter().all(|e| !e.reason.is_empty()));
            }
        }

        /// Any TOML of the right keys with values of any type: parsed and validated, or
        /// refused naming the field.
        #[test]
        fn any_values_are_validated_field_by_field(
            name in "\\PC{0,12}", window in "\\PC{0,8}", key in "[a-z_]{0,8}", agg in "[a-z]{0,8}",
        ) {
            let text = format!(
                "name = {name:?}\nsource = \"payments\"\nentity_key = {key:?}\n\
                 [[features]]\nname = \"f\"\nfield = \"amount\"\naggregation = {agg:?}\nwindow = {window:?}\n"
            );
            match FeatureViewSpec::from_toml(&text) {
                Ok(spec) => {
                    if let Err(errors) = spec.check() {
                        proptest::prop_assert!(errors.iter().all(|e| !e.reason.is_empty() && !e.field.is_empty()));
                    }
                }
                Err(errors) => proptest::prop_assert!(errors.iter().all(|e| !e.reason.is_empty())),
            }
        }
    }
}
