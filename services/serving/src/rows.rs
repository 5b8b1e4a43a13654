//! A request's rows as the model's raw features in order: one flat, row-major vector of
//! values, built straight from the protocol's tensors (their nested `data` flattened while
//! it is parsed) or from named features. Feature `f` of row `r` is the `f`-th of the
//! version's transforms — the order its [`mlops_ml::InputPlan`] reads.

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use serde_json::{Map, Value as Json};

/// Rows of raw values, `Json::Null` where a feature was not given.
#[derive(Debug, Default)]
pub struct Rows {
    rows: usize,
    width: usize,
    cells: Vec<Json>,
}

impl Rows {
    /// `cells` holds `rows` rows of `width` values each.
    pub fn new(rows: usize, width: usize, cells: Vec<Json>) -> Self {
        debug_assert_eq!(rows * width, cells.len());
        Self { rows, width, cells }
    }

    /// One row of the named `features` (in the order a version takes them).
    pub fn named<'a>(features: impl Iterator<Item = &'a str>, values: &Map<String, Json>) -> Self {
        let cells: Vec<Json> = features
            .map(|f| values.get(f).cloned().unwrap_or(Json::Null))
            .collect();
        Self::new(1, cells.len(), cells)
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row `r`'s values.
    pub fn row(&self, r: usize) -> &[Json] {
        &self.cells[r * self.width..(r + 1) * self.width]
    }
}

/// A tensor's `data`, flattened in row-major order as it is parsed: the protocol allows
/// both `[1, 2, 3, 4]` and `[[1, 2], [3, 4]]` for a shape `[2, 2]`.
#[derive(Debug, Default)]
pub struct Flat(pub Vec<Json>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut values = Vec::new();
        deserializer.deserialize_any(Flatten(&mut values))?;
        Ok(Self(values))
    }
}

/// Appends every scalar it meets to its vector, descending into arrays.
struct Flatten<'a>(&'a mut Vec<Json>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tensor data: values or nested arrays of values")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(Json::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(Json::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(Json::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As serde_json reads a number into a value: a non-finite one is null.
        self.0.push(Json::from(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push(Json::String(v.to_owned()));
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.push(Json::String(v));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(Json::Null);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.0.push(Json::Null);
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0
            .push(Json::deserialize(MapAccessDeserializer::new(map))?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn flatten_tree(data: &Json, out: &mut Vec<Json>) {
        match data {
            Json::Array(items) => items.iter().for_each(|i| flatten_tree(i, out)),
            other => out.push(other.clone()),
        }
    }

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            "[a-z]{0,4}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Parsed straight from the text, a tensor's data is what flattening its JSON tree
        /// gives: the same values in the same order.
        #[test]
        fn data_parsed_flat_equals_the_flattened_tree(data in json_value()) {
            let text = serde_json::to_string(&data).unwrap();
            let Flat(parsed) = serde_json::from_str(&text).unwrap();
            let mut expected = Vec::new();
            flatten_tree(&serde_json::from_str(&text).unwrap(), &mut expected);
            prop_assert_eq!(parsed, expected);
        }
    }

    #[test]
    fn named_features_missing_from_a_request_are_null() {
        let values: Map<String, Json> = serde_json::from_str(r#"{"b": 2, "z": 9}"#).unwrap();
        let rows = Rows::named(["a", "b"].into_iter(), &values);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows.row(0), &[Json::Null, Json::from(2)]);
    }
}
