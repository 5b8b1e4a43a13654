//! JSON to Avro, strictly, with an error per offending field that names its path and says
//! what was expected and what arrived: `amount: expected double, got string "12a"`.
//!
//! JSON is what producers send over HTTP; the record must leave as Avro that every
//! Confluent deserializer reads. Unknown fields are refused rather than dropped, missing
//! fields take their schema default or are reported, and logical types accept the forms
//! producers actually send (RFC 3339 strings for timestamps, `YYYY-MM-DD` for dates).

use std::collections::HashMap;

use apache_avro::{
    Schema,
    schema::{Name, UnionSchema},
    types::Value,
};
use serde_json::Value as Json;

mod encode;

/// One problem with one field of a JSON record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Path of the field: `amount`, `address.city`, `items[2].sku`; empty for the root.
    pub field: String,
    pub reason: String,
}

/// Converts JSON documents to Avro values of one schema.
#[derive(Debug, Clone)]
pub struct JsonToAvro {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl JsonToAvro {
    pub fn new(schema: Schema) -> Self {
        let mut names = HashMap::new();
        collect_names(&schema, &mut names);
        Self { schema, names }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The Avro value of `json`, or every field error found.
    pub fn convert(&self, json: &Json) -> Result<Value, Vec<FieldError>> {
        let mut errors = Vec::new();
        let value = self.value(&self.schema, json, "", &mut errors);
        match value {
            Some(value) if errors.is_empty() => Ok(value),
            _ => Err(errors),
        }
    }

    fn value(
        &self,
        schema: &Schema,
        json: &Json,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Value> {
        let mut fail = |expected: &str| {
            errors.push(FieldError {
                field: path.to_owned(),
                reason: format!("expected {expected}, got {}", describe(json)),
            });
            None
        };
        match schema {
            Schema::Null => json
                .is_null()
                .then_some(Value::Null)
                .or_else(|| fail("null")),
            Schema::Boolean => json
                .as_bool()
                .map(Value::Boolean)
                .or_else(|| fail("boolean")),
            Schema::Int => int(json).map(Value::Int).or_else(|| fail("int")),
            Schema::Long => json.as_i64().map(Value::Long).or_else(|| fail("long")),
            Schema::Float => json
                .as_f64()
                .map(|f| Value::Float(f as f32))
                .or_else(|| fail("float")),
            Schema::Double => json.as_f64().map(Value::Double).or_else(|| fail("double")),
            Schema::String => json
                .as_str()
                .map(|s| Value::String(s.to_owned()))
                .or_else(|| fail("string")),
            Schema::Bytes => latin1(json)
                .map(Value::Bytes)
                .or_else(|| fail("bytes (a string of code points 0-255)")),
            Schema::Uuid(_) => json
                .as_str()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .map(Value::Uuid)
                .or_else(|| fail("uuid")),
            Schema::Date => date(json)
                .map(Value::Date)
                .or_else(|| fail("date (days since epoch or YYYY-MM-DD)")),
            Schema::TimeMillis => int(json)
                .map(Value::TimeMillis)
                .or_else(|| fail("time-millis")),
            Schema::TimeMicros => json
                .as_i64()
                .map(Value::TimeMicros)
                .or_else(|| fail("time-micros")),
            Schema::TimestampMillis => timestamp(json, 1_000)
                .map(Value::TimestampMillis)
                .or_else(|| fail("timestamp-millis (epoch milliseconds or RFC 3339)")),
            Schema::TimestampMicros => timestamp(json, 1_000_000)
                .map(Value::TimestampMicros)
                .or_else(|| fail("timestamp-micros (epoch microseconds or RFC 3339)")),
            Schema::TimestampNanos => timestamp(json, 1_000_000_000)
                .map(Value::TimestampNanos)
                .or_else(|| fail("timestamp-nanos (epoch nanoseconds or RFC 3339)")),
            Schema::LocalTimestampMillis => timestamp(json, 1_000)
                .map(Value::LocalTimestampMillis)
                .or_else(|| fail("local-timestamp-millis")),
            Schema::LocalTimestampMicros => timestamp(json, 1_000_000)
                .map(Value::LocalTimestampMicros)
                .or_else(|| fail("local-timestamp-micros")),
            Schema::LocalTimestampNanos => timestamp(json, 1_000_000_000)
                .map(Value::LocalTimestampNanos)
                .or_else(|| fail("local-timestamp-nanos")),
            Schema::Enum(e) => match json
                .as_str()
                .and_then(|s| e.symbols.iter().position(|x| x == s))
            {
                Some(index) => Some(Value::Enum(index as u32, e.symbols[index].clone())),
                None => fail(&format!("one of {:?}", e.symbols)),
            },
            Schema::Fixed(f) => match latin1(json) {
                Some(bytes) if bytes.len() == f.size => Some(Value::Fixed(f.size, bytes)),
                _ => fail(&format!("fixed of {} bytes", f.size)),
            },
            Schema::Array(array) => {
                let Some(items) = json.as_array() else {
                    return fail("array");
                };
                let values: Vec<Option<Value>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.value(&array.items, item, &format!("{path}[{i}]"), errors)
                    })
                    .collect();
                values
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array)
            }
            Schema::Map(map) => {
                let Some(entries) = json.as_object() else {
                    return fail("object (map)");
                };
                let values: Vec<Option<(String, Value)>> = entries
                    .iter()
                    .map(|(k, v)| {
                        self.value(&map.types, v, &join(path, k), errors)
                            .map(|v| (k.clone(), v))
                    })
                    .collect();
                values
                    .into_iter()
                    .collect::<Option<HashMap<_, _>>>()
                    .map(Value::Map)
            }
            Schema::Union(union) => self.union(union, json, path, errors),
            Schema::Record(record) => {
                let Some(object) = json.as_object() else {
                    return fail("object");
                };
                let mut fields = Vec::with_capacity(record.fields.len());
                let mut complete = true;
                for field in &record.fields {
                    let field_path = join(path, &field.name);
                    let value = match (object.get(&field.name), &field.default) {
                        (Some(given), _) => self.value(&field.schema, given, &field_path, errors),
                        (None, Some(default)) => {
                            self.default(&field.schema, default, &field_path, errors)
                        }
                        (None, None) => {
                            errors.push(FieldError {
                                field: field_path,
                                reason: "required field is missing".to_owned(),
                            });
                            None
                        }
                    };
                    match value {
                        Some(value) => fields.push((field.name.clone(), value)),
                        None => complete = false,
                    }
                }
                for key in object.keys() {
                    if !record.lookup.contains_key(key) {
                        errors.push(FieldError {
                            field: join(path, key),
                            reason: format!(
                                "unknown field, not in schema {}",
                                record.name.fullname(None)
                            ),
                        });
                        complete = false;
                    }
                }
                complete.then_some(Value::Record(fields))
            }
            Schema::Ref { name } => match self.names.get(name) {
                Some(named) => self.value(named, json, path, errors),
                None => fail(&format!(
                    "a value of the undefined type {}",
                    name.fullname(None)
                )),
            },
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Duration(_) => {
                fail("a type that JSON ingestion does not support (decimal, duration)")
            }
        }
    }

    /// A union takes the first branch the JSON fits; null goes to the null branch.
    fn union(
        &self,
        union: &UnionSchema,
        json: &Json,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Value> {
        let variants = union.variants();
        for (index, variant) in variants.iter().enumerate() {
            if json.is_null() != matches!(variant, Schema::Null) {
                continue;
            }
            let mut attempt = Vec::new();
            if let Some(value) = self.value(variant, json, path, &mut attempt)
                && attempt.is_empty()
            {
                return Some(Value::Union(index as u32, Box::new(value)));
            }
        }
        let kinds: Vec<String> = variants.iter().map(kind_name).collect();
        errors.push(FieldError {
            field: path.to_owned(),
            reason: format!(
                "expected one of [{}], got {}",
                kinds.join(", "),
                describe(json)
            ),
        });
        None
    }

    /// A field default from the schema: for a union, it belongs to the first branch.
    fn default(
        &self,
        schema: &Schema,
        default: &Json,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Value> {
        match schema {
            Schema::Union(union) => {
                let first = union.variants().first()?;
                self.value(first, default, path, errors)
                    .map(|v| Value::Union(0, Box::new(v)))
            }
            other => self.value(other, default, path, errors),
        }
    }
}

fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(record) => {
            names.insert(record.name.clone(), schema.clone());
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn int(json: &Json) -> Option<i32> {
    json.as_i64().and_then(|n| i32::try_from(n).ok())
}

/// Avro's JSON encoding of bytes: one character per byte, code points 0-255.
fn latin1(json: &Json) -> Option<Vec<u8>> {
    json.as_str()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

fn date(json: &Json) -> Option<i32> {
    if let Some(days) = int(json) {
        return Some(days);
    }
    let day = chrono::NaiveDate::parse_from_str(json.as_str()?, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((day - epoch).num_days()).ok()
}

/// Epoch milliseconds from an integer or an RFC 3339 string, as event times are read.
pub fn timestamp_millis(json: &Json) -> Option<i64> {
    timestamp(json, 1000)
}

/// Epoch units as an integer, or an RFC 3339 string converted to `per_second` units.
fn timestamp(json: &Json, per_second: i64) -> Option<i64> {
    if let Some(n) = json.as_i64() {
        return Some(n);
    }
    let at = chrono::DateTime::parse_from_rfc3339(json.as_str()?).ok()?;
    let seconds = at.timestamp().checked_mul(per_second)?;
    let fraction = i64::from(at.timestamp_subsec_nanos()) / (1_000_000_000 / per_second);
    seconds.checked_add(fraction)
}

fn kind_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        Schema::Ref { name } => name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// `string "12a"`, `number 3`, `boolean true`, `null`, `array`, `object`.
fn describe(json: &Json) -> String {
    match json {
        Json::Null => "null".to_owned(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() > 40 => {
            format!("string {:?}...", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("string {s:?}"),
        Json::Array(_) => "array".to_owned(),
        Json::Object(_) => "object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn converter() -> JsonToAvro {
        JsonToAvro::new(
            Schema::parse_str(
                r#"{"type":"record","name":"Payment","namespace":"shop","fields":[
                    {"name":"customer_id","type":"string"},
                    {"name":"amount","type":"double"},
                    {"name":"count","type":"int","default":1},
                    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
                    {"name":"country","type":["null","string"],"default":null},
                    {"name":"channel","type":{"type":"enum","name":"Channel","symbols":["web","pos"]}},
                    {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
                    {"name":"address","type":["null",{"type":"record","name":"Address","fields":[
                        {"name":"city","type":"string"}]}],"default":null}
                ]}"#,
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_valid_record_becomes_avro_with_defaults_and_logical_types() {
        let c = converter();
        let value = c
            .convert(&json!({
                "customer_id": "c-1", "amount": 12, "ts": "2026-11-26T10:00:00.250Z",
                "channel": "pos", "address": {"city": "Dubai"}
            }))
            .unwrap();
        let Value::Record(fields) = &value else {
            panic!("record")
        };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get("amount"), Value::Double(12.0));
        assert_eq!(get("count"), Value::Int(1));
        // Python: datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=utc).timestamp() * 1000
        assert_eq!(get("ts"), Value::TimestampMillis(1_795_687_200_250));
        assert_eq!(get("country"), Value::Union(0, Box::new(Value::Null)));
        assert_eq!(get("channel"), Value::Enum(1, "pos".into()));
        assert_eq!(
            get("address"),
            Value::Union(
                1,
                Box::new(Value::Record(vec![(
                    "city".into(),
                    Value::String("Dubai".into())
                )]))
            )
        );
        // The value encodes under its schema: it is valid Avro, not just a lookalike.
        assert!(value.validate(c.schema()));
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let errors = converter()
            .convert(&json!({
                "amount": "12a", "ts": 1, "channel": "mail", "count": 3_000_000_000_i64,
                "tags": ["ok", 7], "address": {"town": "x"}, "extra": true
            }))
            .unwrap_err();
        let by_field: HashMap<&str, &str> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(by_field["customer_id"], "required field is missing");
        assert_eq!(by_field["amount"], "expected double, got string \"12a\"");
        assert_eq!(
            by_field["channel"],
            "expected one of [\"web\", \"pos\"], got string \"mail\""
        );
        assert_eq!(by_field["count"], "expected int, got number 3000000000");
        assert_eq!(by_field["tags[1]"], "expected string, got number 7");
        assert_eq!(
            by_field["address"],
            "expected one of [null, shop.Address], got object"
        );
        assert_eq!(
            by_field["extra"],
            "unknown field, not in schema shop.Payment"
        );
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn non_objects_and_bytes_are_checked() {
        let errors = converter().convert(&json!([1, 2])).unwrap_err();
        assert_eq!(
            errors,
            vec![FieldError {
                field: String::new(),
                reason: "expected object, got array".into()
            }]
        );
        let bytes = JsonToAvro::new(Schema::Bytes);
        assert_eq!(
            bytes.convert(&json!("\u{00ff}a")).unwrap(),
            Value::Bytes(vec![255, 97])
        );
        assert!(bytes.convert(&json!("\u{0100}")).is_err());
    }

    /// Any JSON document, of any shape.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
            "\\PC{0,12}".prop_map(Json::from),
            prop_oneof![
                Just("web"),
                Just("pos"),
                Just("2026-11-26T10:00:00Z"),
                Just("c-1")
            ]
            .prop_map(Json::from),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("customer_id".to_owned()),
                        Just("amount".to_owned()),
                        Just("ts".to_owned()),
                        Just("channel".to_owned()),
                        Just("tags".to_owned()),
                        Just("address".to_owned()),
                        Just("city".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The Avro value of a datum `encode_into` wrote.
    fn decoded(converter: &JsonToAvro, body: &[u8]) -> Value {
        apache_avro::reader::datum::GenericDatumReader::builder(converter.schema())
            .build()
            .and_then(|reader| reader.read_value(&mut &body[..]))
            .expect("what encode_into writes decodes")
    }

    /// Documents close to the test schema: every field a valid value (or left out), some
    /// of them then spoiled — a wrong type, an unknown key, a required field dropped.
    fn nearly_valid() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let ts = prop_oneof![
            any::<i64>().prop_map(Json::from),
            Just(json!("2026-11-26T10:00:00.250+04:00")),
            Just(json!("yesterday")),
        ];
        let address = prop_oneof![
            Just(Json::Null),
            "\\PC{0,8}".prop_map(|city| json!({"city": city})),
            Just(json!({"town": "x"})),
        ];
        (
            "\\PC{0,8}",
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            proptest::option::of(any::<i64>()),
            ts,
            proptest::option::of(prop_oneof![
                Just(Json::Null),
                "[a-z]{0,3}".prop_map(Json::from)
            ]),
            prop_oneof![Just("web"), Just("pos"), Just("mail")],
            proptest::option::of(proptest::collection::vec("\\PC{0,4}", 0..4)),
            proptest::option::of(address),
            0..6u8,
        )
            .prop_map(
                |(id, amount, count, ts, country, channel, tags, address, spoil)| {
                    let mut doc =
                        json!({"customer_id": id, "amount": amount, "ts": ts, "channel": channel});
                    let object = doc.as_object_mut().unwrap();
                    if let Some(count) = count {
                        object.insert("count".into(), json!(count));
                    }
                    if let Some(country) = country {
                        object.insert("country".into(), country);
                    }
                    if let Some(tags) = tags {
                        object.insert("tags".into(), json!(tags));
                    }
                    if let Some(address) = address {
                        object.insert("address".into(), address);
                    }
                    match spoil {
                        0 => drop(object.remove("customer_id")),
                        1 => drop(object.insert("extra".into(), json!(true))),
                        2 => drop(object.insert("amount".into(), json!("12a"))),
                        _ => {}
                    }
                    doc
                },
            )
    }

    #[test]
    fn types_the_fast_path_leaves_are_written_by_the_value_path() {
        let converter = JsonToAvro::new(
            Schema::parse_str(
                r#"{"type":"record","name":"R","fields":[
                    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
                    {"name":"n","type":"long"}]}"#,
            )
            .unwrap(),
        );
        let doc = json!({"id": "67e55044-10b1-426f-9247-bb680e5fe0c8", "n": -3});
        let mut out = vec![0xAA];
        converter.encode_into(&doc, &mut out).unwrap();
        assert_eq!(out[0], 0xAA, "appended after what was there");
        assert_eq!(
            decoded(&converter, &out[1..]),
            converter.convert(&doc).unwrap()
        );

        let errors = converter
            .encode_into(&json!({"id": "no", "n": 1}), &mut out)
            .unwrap_err();
        assert_eq!(errors[0].field, "id");
        assert_eq!(
            out.len(),
            1 + 36 + 1 + 1,
            "nothing appended for a refused record"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Both paths agree on every document: the bytes written decode to the value
        /// `convert` builds, and a refusal carries `convert`'s errors, nothing written.
        #[test]
        fn encoding_agrees_with_conversion(json in proptest::prop_oneof![nearly_valid(), any_json()]) {
            let converter = converter();
            let mut out = vec![7];
            match (converter.encode_into(&json, &mut out), converter.convert(&json)) {
                (Ok(()), Ok(value)) => {
                    proptest::prop_assert_eq!(decoded(&converter, &out[1..]), value)
                }
                (Err(errors), Err(expected)) => {
                    proptest::prop_assert_eq!(errors, expected);
                    proptest::prop_assert_eq!(out, vec![7]);
                }
                (encoded, converted) => proptest::prop_assert!(
                    false, "{json}: encode_into {encoded:?}, convert {converted:?}"
                ),
            }
        }

        /// Whatever a producer sends, conversion answers: a value the schema accepts, or
        /// errors that each name a field of the document (or the root) and say why.
        #[test]
        fn any_document_converts_or_names_its_faults(json in any_json()) {
            let converter = converter();
            match converter.convert(&json) {
                Ok(value) => proptest::prop_assert!(value.validate(converter.schema())),
                Err(errors) => {
                    proptest::prop_assert!(!errors.is_empty());
                    for error in errors {
                        proptest::prop_assert!(!error.reason.is_empty());
                        let root = error.field.split(['.', '[']).next().unwrap_or_default();
                        proptest::prop_assert!(
                            root.is_empty() || json.get(root).is_some()
                                || ["customer_id", "amount", "ts", "channel"].contains(&root),
                            "{} names no field of {}", error.field, json
                        );
                    }
                }
            }
        }
    }
}
