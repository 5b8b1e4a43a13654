//! An artifact's fitted transforms compiled once into a plan over columns: each raw feature
//! (by its position in the artifact's transforms) writes the model input columns it makes
//! straight into a row of the input matrix. Serving's hot path — the same values and the
//! same refusals as [`ModelArtifact::inputs`] (a parity test holds the two together), without
//! its per-row map of named JSON values.

use std::borrow::Cow;

use serde_json::Value as Json;

use crate::{Encode, FittedState, ModelArtifact};

/// How one raw feature becomes model inputs.
#[derive(Debug, Clone)]
struct Step {
    /// Its position among the artifact's transforms (the row's raw values follow them).
    raw: usize,
    /// The value a missing one is replaced with.
    impute: Option<Json>,
    op: Op,
}

/// `None` columns: an output the model does not take, or one a later feature overwrites
/// (as [`ModelArtifact::inputs`] lets the last transform that names a column win).
#[derive(Debug, Clone)]
enum Op {
    /// The value itself: a number, or a boolean as 1 / 0.
    Pass(Option<usize>),
    Scale {
        column: Option<usize>,
        center: f64,
        spread: f64,
    },
    /// The category's index among the fitted ones; an unseen one gets the next.
    Ordinal {
        column: Option<usize>,
        categories: Vec<String>,
    },
    /// One 0/1 column per fitted category, then one for an unseen category.
    Onehot {
        columns: Vec<Option<usize>>,
        unknown: Option<usize>,
        categories: Vec<String>,
    },
}

/// Why a row cannot be scored: the first input column (in the model's order) at fault.
#[derive(Debug)]
struct Fault {
    column: usize,
    reason: Reason,
}

#[derive(Debug)]
enum Reason {
    Missing,
    NotANumber(Json),
}

/// The compiled transforms of one artifact.
#[derive(Debug, Clone)]
pub struct InputPlan {
    steps: Vec<Step>,
    /// The model's input names, for the reasons a row is refused.
    features: Vec<String>,
    /// Input columns no transform makes: every row misses them.
    unmade: Option<usize>,
}

impl InputPlan {
    pub fn of(artifact: &ModelArtifact) -> Self {
        let column = |name: &str| artifact.features.iter().position(|f| f == name);
        let mut steps: Vec<Step> = artifact
            .transforms
            .iter()
            .enumerate()
            .map(|(raw, (name, state))| Step {
                raw,
                impute: state.impute.as_ref().map(|i| i.value.clone()),
                op: op_of(name, state, &column),
            })
            .collect();
        // The last writer of a column wins; earlier ones leave it alone.
        let mut written = vec![false; artifact.features.len()];
        for step in steps.iter_mut().rev() {
            for slot in step.op.columns_mut().into_iter().rev() {
                if let Some(c) = *slot {
                    if written[c] {
                        *slot = None;
                    } else {
                        written[c] = true;
                    }
                }
            }
        }
        Self {
            steps,
            features: artifact.features.clone(),
            unmade: written.iter().position(|w| !w),
        }
    }

    /// The model's number of inputs: the width of a row.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Writes the inputs of the row whose raw values are `raw` (in the artifact's transforms
    /// order; `Json::Null` for a missing one) into `out`, or says which input the row cannot
    /// make and why.
    pub fn fill(&self, raw: &[Json], out: &mut [f64]) -> Result<(), String> {
        let mut fault: Option<Fault> = self.unmade.map(|column| Fault {
            column,
            reason: Reason::Missing,
        });
        let mut refuse = |column: usize, reason: Reason| {
            if fault.as_ref().is_none_or(|f| column < f.column) {
                fault = Some(Fault { column, reason });
            }
        };
        for step in &self.steps {
            let given = raw.get(step.raw).unwrap_or(&Json::Null);
            let value = match (&step.impute, given) {
                (Some(impute), Json::Null) => impute,
                _ => given,
            };
            match &step.op {
                Op::Pass(None)
                | Op::Scale { column: None, .. }
                | Op::Ordinal { column: None, .. } => {}
                Op::Pass(Some(c)) => match value {
                    Json::Number(n) => match n.as_f64() {
                        Some(x) => out[*c] = x,
                        None => refuse(*c, Reason::NotANumber(value.clone())),
                    },
                    Json::Bool(b) => out[*c] = f64::from(u8::from(*b)),
                    Json::Null => refuse(*c, Reason::Missing),
                    other => refuse(*c, Reason::NotANumber(other.clone())),
                },
                Op::Scale {
                    column: Some(c),
                    center,
                    spread,
                } => match crate::transforms::as_f64(value).map(|x| (x - center) / spread) {
                    Some(x) if x.is_finite() => out[*c] = x,
                    _ => refuse(*c, Reason::Missing),
                },
                Op::Ordinal {
                    column: Some(c),
                    categories,
                } => {
                    let text = text_of(value);
                    let code = text
                        .and_then(|t| categories.iter().position(|k| *k == *t))
                        .unwrap_or(categories.len());
                    out[*c] = code as f64;
                }
                Op::Onehot {
                    columns,
                    unknown,
                    categories,
                } => {
                    let text = text_of(value);
                    let is = |k: &String| text.as_deref() == Some(k.as_str());
                    for (category, column) in categories.iter().zip(columns) {
                        if let Some(c) = column {
                            out[*c] = f64::from(u8::from(is(category)));
                        }
                    }
                    if let Some(c) = unknown {
                        out[*c] = f64::from(u8::from(!categories.iter().any(is)));
                    }
                }
            }
        }
        match fault {
            None => Ok(()),
            Some(Fault { column, reason }) => {
                let feature = &self.features[column];
                Err(match reason {
                    Reason::Missing => format!(
                        "{feature} has no value: the feature is missing and has no imputation"
                    ),
                    Reason::NotANumber(value) => format!("{feature}: {value} is not a number"),
                })
            }
        }
    }
}

impl Op {
    fn columns_mut(&mut self) -> Vec<&mut Option<usize>> {
        match self {
            Op::Pass(column) | Op::Scale { column, .. } | Op::Ordinal { column, .. } => {
                vec![column]
            }
            Op::Onehot {
                columns, unknown, ..
            } => columns.iter_mut().chain(std::iter::once(unknown)).collect(),
        }
    }
}

fn op_of(name: &str, state: &FittedState, column: &impl Fn(&str) -> Option<usize>) -> Op {
    if let Some(scale) = &state.scale {
        return Op::Scale {
            column: column(name),
            center: scale.center,
            spread: scale.spread,
        };
    }
    match &state.encode {
        None => Op::Pass(column(name)),
        Some(encode) => match encode.kind {
            Encode::Ordinal => Op::Ordinal {
                column: column(name),
                categories: encode.categories.clone(),
            },
            Encode::Onehot => Op::Onehot {
                columns: encode
                    .categories
                    .iter()
                    .map(|c| column(&crate::transforms::onehot_name(name, c)))
                    .collect(),
                unknown: column(&crate::transforms::onehot_name(name, "unknown")),
                categories: encode.categories.clone(),
            },
        },
    }
}

/// The value as polars casts it to text (none for a missing value), without copying a
/// string.
fn text_of(value: &Json) -> Option<Cow<'_, str>> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::{EncodeState, ImputeState, ScaleState};

    fn value() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            (-1e6f64..1e6).prop_map(Json::from),
            (-5i64..5).prop_map(Json::from),
            prop_oneof![Just("EUR"), Just("USD"), Just(" 2.5"), Just("x"), Just("1")]
                .prop_map(Json::from),
            Just(json!([1, 2])),
        ]
    }

    fn state() -> impl Strategy<Value = FittedState> {
        let impute = prop_oneof![
            Just(None),
            value().prop_map(|value| Some(ImputeState {
                strategy: crate::Impute::Mode,
                value
            })),
        ];
        let scale = prop_oneof![
            Just(None),
            (-10f64..10.0, prop_oneof![Just(0.0), 0.5f64..3.0]).prop_map(|(center, spread)| {
                Some(ScaleState {
                    kind: crate::Scale::Zscore,
                    center,
                    spread,
                })
            }),
        ];
        let categories = prop::collection::vec(
            prop_oneof![
                Just("EUR"),
                Just("USD"),
                Just("1"),
                Just("true"),
                Just("unknown")
            ]
            .prop_map(String::from),
            0..3,
        );
        let encode = prop_oneof![
            Just(None),
            (
                prop_oneof![Just(Encode::Onehot), Just(Encode::Ordinal)],
                categories
            )
                .prop_map(|(kind, categories)| Some(EncodeState { kind, categories })),
        ];
        (impute, scale, encode).prop_map(|(impute, scale, encode)| FittedState {
            impute,
            scale,
            encode,
        })
    }

    /// An artifact whose inputs are what its transforms make, perhaps shuffled, with one
    /// dropped or one no transform makes.
    fn artifact() -> impl Strategy<Value = ModelArtifact> {
        (
            prop::collection::vec(state(), 1..4),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(states, drop_one, add_unmade, seed)| {
                // Names may repeat an encoded output (`a__EUR` beside `a` one-hot).
                let names = ["a", "b", "a__EUR", "c"];
                let transforms: Vec<(String, FittedState)> = states
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (names[i].to_owned(), s))
                    .collect();
                let mut features: Vec<String> = Vec::new();
                for (name, state) in &transforms {
                    for (made, _) in crate::apply_row(name, state, &Json::Null) {
                        if !features.contains(&made) {
                            features.push(made);
                        }
                    }
                }
                if drop_one && features.len() > 1 {
                    features.remove((seed % features.len() as u64) as usize);
                }
                if add_unmade {
                    features.push("never_made".to_owned());
                }
                let turn = (seed % features.len() as u64) as usize;
                features.rotate_left(turn);
                ModelArtifact {
                    model_name: "m".to_owned(),
                    algorithm: "logistic_regression".to_owned(),
                    model: Json::Null,
                    task: String::new(),
                    classes: Vec::new(),
                    features,
                    transforms,
                    view: "v".to_owned(),
                    view_version: 1,
                    snapshot_id: "s".to_owned(),
                    metrics: Default::default(),
                    created_at: 0,
                }
            })
    }

    proptest! {
        /// The plan makes the very inputs — or the very refusal — that the artifact's own
        /// row-by-row transforms make, whatever the transforms and the values.
        #[test]
        fn the_plan_makes_what_the_artifact_makes(
            artifact in artifact(),
            raw in prop::collection::vec(value(), 4),
        ) {
            let raw = &raw[..artifact.transforms.len()];
            let expected = artifact.inputs(|name| {
                artifact
                    .transforms
                    .iter()
                    .position(|(n, _)| n == name)
                    .map(|i| raw[i].clone())
            });
            let plan = InputPlan::of(&artifact);
            let mut out = vec![f64::NAN; plan.width()];
            let made = plan.fill(raw, &mut out).map(|()| out);
            match (expected, made) {
                (Ok(expected), Ok(made)) => {
                    prop_assert_eq!(expected.len(), made.len());
                    for (e, m) in expected.iter().zip(&made) {
                        prop_assert_eq!(e.to_bits(), m.to_bits(), "{:?} vs {:?}", expected, made);
                    }
                }
                (Err(expected), Err(refused)) => prop_assert_eq!(expected, refused),
                (expected, made) => prop_assert!(false, "{expected:?} vs {made:?}"),
            }
        }
    }

    #[test]
    fn a_row_becomes_its_scaled_and_encoded_inputs() {
        let artifact = ModelArtifact {
            model_name: "m".to_owned(),
            algorithm: "logistic_regression".to_owned(),
            model: Json::Null,
            task: String::new(),
            classes: Vec::new(),
            features: vec![
                "currency__USD".to_owned(),
                "amount".to_owned(),
                "currency__EUR".to_owned(),
                "currency__unknown".to_owned(),
            ],
            transforms: vec![
                (
                    "amount".to_owned(),
                    FittedState {
                        impute: Some(ImputeState {
                            strategy: crate::Impute::Mean,
                            value: json!(10.0),
                        }),
                        scale: Some(ScaleState {
                            kind: crate::Scale::Zscore,
                            center: 10.0,
                            spread: 4.0,
                        }),
                        encode: None,
                    },
                ),
                (
                    "currency".to_owned(),
                    FittedState {
                        impute: None,
                        scale: None,
                        encode: Some(EncodeState {
                            kind: Encode::Onehot,
                            categories: vec!["EUR".to_owned(), "USD".to_owned()],
                        }),
                    },
                ),
            ],
            view: "v".to_owned(),
            view_version: 1,
            snapshot_id: "s".to_owned(),
            metrics: Default::default(),
            created_at: 0,
        };
        let plan = InputPlan::of(&artifact);
        let mut out = [0.0; 4];
        plan.fill(&[json!(18), json!("USD")], &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 0.0, 0.0]);
        plan.fill(&[Json::Null, json!("GBP")], &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(
            plan.fill(&[json!("lots"), json!("EUR")], &mut out)
                .unwrap_err(),
            "amount has no value: the feature is missing and has no imputation"
        );
    }
}
