//! Compatibility levels and the Avro schema-resolution check behind them.

use apache_avro::{Schema, schema_compatibility::SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// Confluent's compatibility levels. BACKWARD is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// The same direction, checked against every version given.
    pub fn as_transitive(self) -> Self {
        match self {
            Level::Backward => Level::BackwardTransitive,
            Level::Forward => Level::ForwardTransitive,
            Level::Full => Level::FullTransitive,
            other => other,
        }
    }

    /// Whether every earlier version is checked, or only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

/// Checks `candidate` against `existing` (oldest first) under `level`, returning one
/// message per violation; empty means compatible.
///
/// BACKWARD: the new schema can read data written with the old one.
/// FORWARD: the old schema can read data written with the new one. FULL: both.
pub fn check(level: Level, candidate: &Schema, existing: &[(i64, Schema)]) -> Vec<String> {
    let against: &[(i64, Schema)] = if level.is_transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut problems = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Err(e) = SchemaCompatibility::can_read(old, candidate)
        {
            problems.push(format!(
                "{{errorType:'READER_INCOMPATIBLE', description:'the new schema cannot read data written with version {version}: {e}', level:'{}'}}",
                level.as_str()
            ));
        }
        if level.forward()
            && let Err(e) = SchemaCompatibility::can_read(candidate, old)
        {
            problems.push(format!(
                "{{errorType:'WRITER_INCOMPATIBLE', description:'version {version} cannot read data written with the new schema: {e}', level:'{}'}}",
                level.as_str()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn levels_follow_avro_resolution_rules() {
        let v1 = schema(r#"{"name":"a","type":"int"}"#);
        let added_no_default = schema(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        let added_default =
            schema(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#);
        let removed = schema(r#"{"name":"b","type":"string","default":"x"}"#);
        let old = [(1, v1.clone())];

        // A field added without a default cannot be filled when reading old data.
        assert!(!check(Level::Backward, &added_no_default, &old).is_empty());
        assert!(check(Level::Forward, &added_no_default, &old).is_empty());
        assert!(check(Level::Backward, &added_default, &old).is_empty());
        assert!(check(Level::Full, &added_default, &old).is_empty());
        // Removing a field the old reader needs (no default there) breaks FORWARD.
        assert!(!check(Level::Forward, &removed, &old).is_empty());
        assert!(check(Level::None, &removed, &old).is_empty());
    }

    #[test]
    fn transitive_levels_check_every_version() {
        let v1 = schema(r#"{"name":"a","type":"int"}"#);
        let v2 = schema(
            r#"{"name":"a","type":"int","default":0},{"name":"b","type":"string","default":"x"}"#,
        );
        // v3 drops `a`, which v2 can default but v1 cannot: FORWARD vs FORWARD_TRANSITIVE.
        let v3 = schema(r#"{"name":"b","type":"string","default":"x"}"#);
        let history = [(1, v1), (2, v2)];
        assert!(check(Level::Forward, &v3, &history).is_empty());
        assert!(!check(Level::ForwardTransitive, &v3, &history).is_empty());
    }

    #[test]
    fn level_names_parse_case_insensitively() {
        assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
        assert_eq!(Level::parse("BACKWARD"), Some(Level::Backward));
        assert_eq!(Level::parse("SIDEWAYS"), None);
    }
}
