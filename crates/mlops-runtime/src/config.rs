//! Layered configuration: defaults < TOML file < environment.
//!
//! Environment variables use `MLOPS__SECTION__KEY` (double underscore between levels),
//! and each service may declare aliases for the standard names operators already use
//! (`KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL`, `DATABASE_URL`, ...). Type errors of
//! every layer are collected and reported together, with the field path and the source.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const ENV_PREFIX: &str = "MLOPS__";

/// Every problem found while loading configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", errors.join("\n  - "))]
pub struct ConfigError {
    pub errors: Vec<String>,
}

/// Loads `T` from `defaults`, an optional TOML `file`, then `env` (pairs of name and
/// value, normally `std::env::vars()`), applying `aliases` (`ENV_NAME` -> `section.key`).
/// `validate` adds the semantic checks of `T`; all errors are returned at once.
pub fn load_config<T>(
    defaults: T,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    aliases: &[(String, String)],
    validate: impl FnOnce(&T) -> Vec<String>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut errors = Vec::new();
    // Environment values of settings whose default is null (optional settings): their
    // type is unknown until `T` is deserialized.
    let mut untyped = Vec::new();
    let mut tree = serde_json::to_value(defaults).map_err(|e| ConfigError {
        errors: vec![format!("defaults: {e}")],
    })?;

    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Err(e) => errors.push(format!("{}: {e}", path.display())),
            Ok(text) => match toml::from_str::<Value>(&text) {
                Err(e) => errors.push(format!("{}: {e}", path.display())),
                Ok(layer) => merge(
                    &mut tree,
                    layer,
                    "",
                    &path.display().to_string(),
                    &mut errors,
                ),
            },
        }
    }

    let env: Vec<(String, String)> = env.into_iter().collect();
    for (name, raw) in &env {
        // `NAME_FILE` names a file holding the value of the alias `NAME` (a mounted
        // Kubernetes Secret, Docker's convention), so secrets need not sit in the
        // environment.
        let indirect = name
            .strip_suffix("_FILE")
            .filter(|base| aliases.iter().any(|(alias, _)| alias == base))
            .filter(|_| !aliases.iter().any(|(alias, _)| alias == name));
        let (name, raw) = match indirect {
            None => (name.clone(), raw.clone()),
            Some(base) if env.iter().any(|(n, _)| n == base) => {
                errors.push(format!("{name}: {base} is set too; set one of them"));
                continue;
            }
            Some(base) => match std::fs::read_to_string(raw) {
                Ok(text) => (
                    base.to_owned(),
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                ),
                Err(e) => {
                    errors.push(format!("{name}: cannot read {raw}: {e}"));
                    continue;
                }
            },
        };
        let dotted = if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            rest.split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".")
        } else if let Some((_, dotted)) = aliases.iter().find(|(alias, _)| *alias == name) {
            dotted.clone()
        } else {
            continue;
        };
        if set_path(&mut tree, &dotted, &raw, &name, &mut errors) {
            untyped.push(dotted);
        }
    }

    if !errors.is_empty() {
        return Err(ConfigError { errors });
    }
    let config: T =
        deserialize_typed(tree, &untyped).map_err(|e| ConfigError { errors: vec![e] })?;
    let errors = validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { errors })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Overlays `layer` on `base`, keeping the default's type where it has one.
fn merge(base: &mut Value, layer: Value, path: &str, source: &str, errors: &mut Vec<String>) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (key, value) in layer {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value, &child, source, errors),
                    None => errors.push(format!("{child}: unknown setting (from {source})")),
                }
            }
        }
        (base @ Value::Null, layer) => *base = layer,
        (base, layer) => {
            let compatible = std::mem::discriminant(base) == std::mem::discriminant(&layer);
            if compatible {
                *base = layer;
            } else {
                errors.push(format!(
                    "{path}: expected {}, got {} (from {source})",
                    kind(base),
                    kind(&layer)
                ));
            }
        }
    }
}

/// Deserializes `tree`; an environment value of an optional setting starts as text and
/// becomes a number or a boolean only where `T` declares one there. So a password of
/// `123456` stays text while a port given to an `Option<u16>` becomes a number.
fn deserialize_typed<T: DeserializeOwned>(
    mut tree: Value,
    untyped: &[String],
) -> Result<T, String> {
    // Each round types one more value; there are at most as many rounds as values.
    for _ in 0..=untyped.len() {
        let error = match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let path = error.path().to_string();
        let retyped = untyped.contains(&path) && retype(&mut tree, &path);
        if !retyped {
            return Err(format!("{path}: {}", error.inner()));
        }
    }
    Err("configuration does not deserialize".to_owned())
}

/// Turns the text at `dotted` into the number or boolean it spells; false when it spells
/// neither (or is not text).
fn retype(tree: &mut Value, dotted: &str) -> bool {
    let mut node = tree;
    for part in dotted.split('.') {
        match node.get_mut(part) {
            Some(child) => node = child,
            None => return false,
        }
    }
    let Value::String(text) = node else {
        return false;
    };
    let typed = serde_json::from_str::<serde_json::Number>(text)
        .map(Value::Number)
        .or_else(|_| text.parse::<bool>().map(Value::Bool));
    match typed {
        Ok(value) => {
            *node = value;
            true
        }
        Err(_) => false,
    }
}

/// Sets one dotted path from an environment string, parsed to the default's type; true
/// when the default is null, so that the value is kept as text for now.
fn set_path(
    tree: &mut Value,
    dotted: &str,
    raw: &str,
    source: &str,
    errors: &mut Vec<String>,
) -> bool {
    let mut node = tree;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(map) = node else {
            errors.push(format!("{dotted}: not a table (from {source})"));
            return false;
        };
        if i + 1 == parts.len() {
            let Some(current) = map.get(*part) else {
                errors.push(format!("{dotted}: unknown setting (from {source})"));
                return false;
            };
            let untyped = current.is_null();
            match parse_like(current, raw) {
                Ok(value) => {
                    map.insert((*part).to_owned(), value);
                }
                Err(expected) => errors.push(format!(
                    "{dotted}: expected {expected}, got {raw:?} (from {source})"
                )),
            }
            return untyped;
        }
        node = match map.get_mut(*part) {
            Some(child) => child,
            None => {
                errors.push(format!("{dotted}: unknown setting (from {source})"));
                return false;
            }
        };
    }
    false
}

fn parse_like(current: &Value, raw: &str) -> Result<Value, &'static str> {
    match current {
        Value::Bool(_) => raw
            .parse::<bool>()
            .map(Value::Bool)
            .map_err(|_| "a boolean"),
        Value::Number(_) => serde_json::from_str::<serde_json::Number>(raw)
            .map(Value::Number)
            .map_err(|_| "a number"),
        Value::Array(_) | Value::Object(_) => {
            serde_json::from_str::<Value>(raw).map_err(|_| "JSON")
        }
        // Optional settings default to null: text until the declared type says otherwise
        // (see `deserialize_typed`).
        Value::Null => Ok(Value::String(raw.to_owned())),
        Value::String(_) => Ok(Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Http {
        host: String,
        port: u16,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Conf {
        http: Http,
        verbose: bool,
        token: Option<String>,
    }

    impl Default for Http {
        fn default() -> Self {
            Self {
                host: "127.0.0.1".into(),
                port: 8080,
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "verbose = true\n[http]\nhost = \"0.0.0.0\"\nport = 9000\n",
        )
        .unwrap();
        let aliases = vec![("SVC_PORT".to_owned(), "http.port".to_owned())];
        let conf: Conf = load_config(
            Conf::default(),
            Some(&file),
            env(&[
                ("SVC_PORT", "9100"),
                ("MLOPS__TOKEN", "abc"),
                ("OTHER", "x"),
            ]),
            &aliases,
            |_| vec![],
        )
        .unwrap();
        assert_eq!(conf.http.host, "0.0.0.0");
        assert_eq!(conf.http.port, 9100);
        assert!(conf.verbose);
        assert_eq!(conf.token.as_deref(), Some("abc"));
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let err = load_config(
            Conf::default(),
            None,
            env(&[
                ("MLOPS__HTTP__PORT", "eighty"),
                ("MLOPS__VERBOSE", "maybe"),
                ("MLOPS__NOPE", "1"),
            ]),
            &[],
            |_| vec![],
        )
        .unwrap_err();
        assert_eq!(err.errors.len(), 3, "{err}");
        assert!(err.errors.contains(
            &"http.port: expected a number, got \"eighty\" (from MLOPS__HTTP__PORT)".to_owned()
        ));
        assert!(err.errors.contains(
            &"verbose: expected a boolean, got \"maybe\" (from MLOPS__VERBOSE)".to_owned()
        ));
        assert!(
            err.errors
                .contains(&"nope: unknown setting (from MLOPS__NOPE)".to_owned())
        );
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Optional {
        password: Option<crate::Secret>,
        retries: Option<u32>,
        strict: Option<bool>,
    }

    #[test]
    fn optional_settings_take_the_type_they_declare() {
        let conf: Optional = load_config(
            Optional::default(),
            None,
            env(&[
                ("MLOPS__PASSWORD", "123456"),
                ("MLOPS__RETRIES", "7"),
                ("MLOPS__STRICT", "true"),
            ]),
            &[],
            |_| vec![],
        )
        .unwrap();
        assert_eq!(conf.password.as_ref().map(|p| p.expose()), Some("123456"));
        assert_eq!(conf.retries, Some(7));
        assert_eq!(conf.strict, Some(true));

        let err = load_config(
            Optional::default(),
            None,
            env(&[("MLOPS__RETRIES", "seven")]),
            &[],
            |_| vec![],
        )
        .unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert!(err.errors[0].starts_with("retries: "), "{err}");
    }

    #[test]
    fn a_secret_can_come_from_the_file_its_file_variable_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let aliases = vec![("DB_PASSWORD".to_owned(), "password".to_owned())];
        let path = file.display().to_string();
        let conf: Optional = load_config(
            Optional::default(),
            None,
            env(&[("DB_PASSWORD_FILE", &path)]),
            &aliases,
            |_| vec![],
        )
        .unwrap();
        assert_eq!(conf.password.as_ref().map(|p| p.expose()), Some("s3cr3t"));

        let err = load_config(
            Optional::default(),
            None,
            env(&[("DB_PASSWORD_FILE", &path), ("DB_PASSWORD", "x")]),
            &aliases,
            |_| vec![],
        )
        .unwrap_err();
        assert!(err.errors[0].contains("set one of them"), "{err}");
        let err = load_config(
            Optional::default(),
            None,
            env(&[("DB_PASSWORD_FILE", "/nonexistent/password")]),
            &aliases,
            |_| vec![],
        )
        .unwrap_err();
        assert!(
            err.errors[0].starts_with("DB_PASSWORD_FILE: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_come_from_validate() {
        let err = load_config(Conf::default(), None, env(&[]), &[], |c: &Conf| {
            vec![format!("http.port: {} is reserved", c.http.port)]
        })
        .unwrap_err();
        assert_eq!(err.errors, vec!["http.port: 8080 is reserved".to_owned()]);
    }
}
