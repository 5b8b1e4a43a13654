//! Datasets: what a producer declares (schema, keys, rules, region) and what the service
//! keeps loaded to validate events fast.

use std::collections::BTreeMap;

use apache_avro::Schema;
use mlops_schema::json::{FieldError, JsonToAvro};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The body of `POST /v1/datasets`. Field names are the public contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: String,
    /// Avro record schema of the dataset's events, as JSON.
    pub schema: Json,
    /// Entity key field: the Kafka record key.
    pub key: String,
    /// Event-time field.
    pub event_time: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Field whose value identifies an event for idempotent retries.
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Retention of the raw topic in milliseconds (`retention.ms`); broker default if unset.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    /// Residency region; events are accepted only by an instance of that region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub rules: BTreeMap<String, Rule>,
}

fn default_partitions() -> i32 {
    3
}

/// Validation rules of one field, beyond its Avro type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The field must be present and not null, even if the schema allows null.
    #[serde(default)]
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The value must be one of these.
    pub allowed: Option<Vec<Json>>,
    /// A string value must match this regular expression (anchored at both ends).
    pub regex: Option<String>,
}

/// A dataset ready to validate events.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub spec: DatasetSpec,
    pub schema_id: u32,
    pub version: i64,
    pub converter: JsonToAvro,
    rules: Vec<(String, Rule, Option<regex::Regex>)>,
    /// `raw.<name>`, named once rather than on every request.
    topic: String,
}

impl Dataset {
    /// A dataset from a declaration, checked here.
    pub fn new(spec: DatasetSpec, schema_id: u32, version: i64) -> Result<Self, Vec<FieldError>> {
        let schema = check_spec(&spec)?;
        Ok(Self::from_checked(spec, schema, schema_id, version))
    }

    /// A dataset from a declaration `check_spec` already accepted, with its parsed schema.
    pub fn from_checked(spec: DatasetSpec, schema: Schema, schema_id: u32, version: i64) -> Self {
        let rules = spec
            .rules
            .iter()
            .map(|(field, rule)| {
                let regex = rule
                    .regex
                    .as_deref()
                    .map(anchored)
                    .transpose()
                    .ok()
                    .flatten();
                (field.clone(), rule.clone(), regex)
            })
            .collect();
        Self {
            topic: mlops_events::topics::raw(&spec.name),
            spec,
            schema_id,
            version,
            converter: JsonToAvro::new(schema),
            rules,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Rule violations of a record that already matched the schema.
    pub fn check_rules(&self, record: &Json) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (field, rule, regex) in &self.rules {
            let value = record.get(field).filter(|v| !v.is_null());
            let mut fail = |reason: String| {
                errors.push(FieldError {
                    field: field.clone(),
                    reason,
                })
            };
            let Some(value) = value else {
                if rule.required {
                    fail("required by the dataset's rules".to_owned());
                }
                continue;
            };
            if let Some(n) = value.as_f64() {
                if let Some(min) = rule.min.filter(|min| n < *min) {
                    fail(format!("{n} is below the minimum {min}"));
                }
                if let Some(max) = rule.max.filter(|max| n > *max) {
                    fail(format!("{n} is above the maximum {max}"));
                }
            }
            if let Some(allowed) = &rule.allowed
                && !allowed.contains(value)
            {
                fail(format!(
                    "{value} is not one of the allowed values {}",
                    Json::from(allowed.clone())
                ));
            }
            if let (Some(regex), Some(text)) = (regex, value.as_str())
                && !regex.is_match(text)
            {
                fail(format!(
                    "{text:?} does not match {:?}",
                    rule.regex.as_deref().unwrap_or_default()
                ));
            }
        }
        errors
    }

    /// The entity key of a valid record, as the Kafka key.
    pub fn key_of(&self, record: &Json) -> Option<String> {
        scalar_text(record.get(&self.spec.key)?)
    }

    /// The event id of a record, when the dataset names an event-id field.
    pub fn event_id_of(&self, record: &Json) -> Option<String> {
        scalar_text(record.get(self.spec.event_id.as_deref()?)?)
    }
}

fn scalar_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Checks a dataset declaration and returns its parsed schema, or every problem at once.
pub fn check_spec(spec: &DatasetSpec) -> Result<Schema, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, reason: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            reason,
        })
    };
    if let Err(reason) = mlops_events::topics::check_dataset_name(&spec.name) {
        fail("name", reason);
    }
    if !(1..=1000).contains(&spec.partitions) {
        fail(
            "partitions",
            format!("{} is not between 1 and 1000", spec.partitions),
        );
    }
    if spec.retention_ms.is_some_and(|r| r < 1 && r != -1) {
        fail(
            "retention_ms",
            "must be positive, or -1 for unlimited".to_owned(),
        );
    }
    let schema = match Schema::parse(&spec.schema) {
        Ok(schema @ Schema::Record(_)) => Some(schema),
        Ok(_) => {
            fail("schema", "must be an Avro record schema".to_owned());
            None
        }
        Err(e) => {
            fail("schema", format!("invalid Avro schema: {e}"));
            None
        }
    };
    if let Some(Schema::Record(record)) = &schema {
        let field_type = |name: &str| {
            record
                .fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| &f.schema)
        };
        match field_type(&spec.key) {
            Some(Schema::String | Schema::Int | Schema::Long | Schema::Uuid(_)) => {}
            Some(_) => fail(
                "key",
                format!("field {:?} must be a string, int or long", spec.key),
            ),
            None => fail("key", format!("field {:?} is not in the schema", spec.key)),
        }
        match field_type(&spec.event_time) {
            Some(
                Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros | Schema::String,
            ) => {}
            Some(_) => fail(
                "event_time",
                format!(
                    "field {:?} must be a timestamp, long or string",
                    spec.event_time
                ),
            ),
            None => fail(
                "event_time",
                format!("field {:?} is not in the schema", spec.event_time),
            ),
        }
        if let Some(id) = &spec.event_id
            && field_type(id).is_none()
        {
            fail("event_id", format!("field {id:?} is not in the schema"));
        }
        for label in &spec.labels {
            if field_type(label).is_none() {
                fail("labels", format!("field {label:?} is not in the schema"));
            }
        }
        for (field, rule) in &spec.rules {
            let path = format!("rules.{field}");
            if field_type(field).is_none() {
                fail(&path, format!("field {field:?} is not in the schema"));
            }
            if let Some(pattern) = &rule.regex
                && let Err(e) = anchored(pattern)
            {
                fail(&path, format!("regex does not compile: {e}"));
            }
            if let (Some(min), Some(max)) = (rule.min, rule.max)
                && min > max
            {
                fail(&path, format!("min {min} is above max {max}"));
            }
        }
    }
    match schema {
        Some(schema) if errors.is_empty() => Ok(schema),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> DatasetSpec {
        serde_json::from_value(json!({
            "name": "payments",
            "schema": {"type": "record", "name": "Payment", "fields": [
                {"name": "txn_id", "type": "string"},
                {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "currency", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "note", "type": ["null", "string"], "default": null}
            ]},
            "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
            "rules": {"amount": {"min": 0, "max": 10000}, "currency": {"allowed": ["AED", "EUR"], "regex": "[A-Z]{3}"},
                      "note": {"required": true}}
        }))
        .unwrap()
    }

    #[test]
    fn a_declaration_with_mistakes_lists_them_all() {
        let mut bad = spec();
        bad.name = "Payments!".into();
        bad.key = "nope".into();
        bad.event_time = "amount".into();
        bad.partitions = 0;
        bad.rules.insert("ghost".into(), Rule::default());
        bad.rules.get_mut("currency").unwrap().regex = Some("[".into());
        let errors = check_spec(&bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "partitions",
                "key",
                "event_time",
                "rules.currency",
                "rules.ghost"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn rules_apply_after_the_schema() {
        let dataset = Dataset::new(spec(), 1, 1).unwrap();
        let ok = json!({"txn_id": "t1", "customer_id": "c1", "amount": 5.0, "currency": "AED", "ts": 1, "note": "x"});
        assert!(dataset.check_rules(&ok).is_empty());
        assert_eq!(dataset.key_of(&ok).as_deref(), Some("c1"));
        assert_eq!(dataset.event_id_of(&ok).as_deref(), Some("t1"));
        let bad = json!({"txn_id": "t1", "customer_id": "c1", "amount": -1, "currency": "usd", "ts": 1, "note": null});
        let errors: Vec<(String, String)> = dataset
            .check_rules(&bad)
            .into_iter()
            .map(|e| (e.field, e.reason))
            .collect();
        assert_eq!(
            errors,
            [
                ("amount".to_owned(), "-1 is below the minimum 0".to_owned()),
                (
                    "currency".to_owned(),
                    "\"usd\" is not one of the allowed values [\"AED\",\"EUR\"]".to_owned()
                ),
                (
                    "currency".to_owned(),
                    "\"usd\" does not match \"[A-Z]{3}\"".to_owned()
                ),
                (
                    "note".to_owned(),
                    "required by the dataset's rules".to_owned()
                ),
            ]
        );
    }
}
