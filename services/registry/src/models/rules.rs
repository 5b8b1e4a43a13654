//! The stage rules of model versions, as a pure function from the versions' current
//! stages and a requested change to the steps that carry it out, or the rule it breaks.
//! The store applies the steps in one transaction; nothing here touches the database.

use mlops_events::ModelStage as Stage;

/// A version's place now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Current {
    pub version: i64,
    pub stage: Stage,
    pub canary_percent: Option<f64>,
}

/// One stage change, recorded as one transition and one lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub version: i64,
    pub from: Option<Stage>,
    pub to: Stage,
    pub canary_percent: Option<f64>,
    /// Set on a change made as a consequence of the one asked for (why it happened).
    pub consequence: Option<String>,
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("model {model:?} has no version {version}")]
    UnknownVersion { model: String, version: i64 },
    /// A rule of the stages (HTTP 409); the text names the rule.
    #[error("{0}")]
    Rule(String),
    /// A value out of range (HTTP 422), naming the field.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Candidate => "candidate",
        Stage::Canary => "canary",
        Stage::Production => "production",
        Stage::Archived => "archived",
    }
}

pub fn parse_stage(text: &str) -> Option<Stage> {
    match text {
        "candidate" => Some(Stage::Candidate),
        "canary" => Some(Stage::Canary),
        "production" => Some(Stage::Production),
        "archived" => Some(Stage::Archived),
        _ => None,
    }
}

fn in_stage(versions: &[Current], stage: Stage) -> Option<&Current> {
    versions.iter().find(|v| v.stage == stage)
}

/// A canary's share of traffic: 0 makes it a shadow (it scores production's traffic
/// without answering), 100 would be a promotion.
fn check_percent(percent: Option<f64>) -> Result<f64, Refusal> {
    match percent {
        Some(p) if (0.0..100.0).contains(&p) => Ok(p),
        Some(p) => Err(Refusal::Invalid {
            field: "canary_percent",
            reason: format!("{p} is not in [0, 100): 0 is a shadow, 100 a promotion"),
        }),
        None => Err(Refusal::Invalid {
            field: "canary_percent",
            reason: "a canary needs its share of traffic".into(),
        }),
    }
}

/// The steps that move `version` of `model` to `to`.
///
/// - nothing returns to `candidate`;
/// - a canary shares traffic with a production version, one canary at a time, at a
///   percentage strictly between 0 and 100 (changing it widens or narrows the canary);
/// - promoting to production archives the version that was in production;
/// - a version already where it is asked to go is refused rather than silently accepted.
pub fn plan(
    model: &str,
    versions: &[Current],
    version: i64,
    to: Stage,
    canary_percent: Option<f64>,
) -> Result<Vec<Step>, Refusal> {
    let current = versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| Refusal::UnknownVersion {
            model: model.to_owned(),
            version,
        })?;
    if to != Stage::Canary && canary_percent.is_some() {
        return Err(Refusal::Invalid {
            field: "canary_percent",
            reason: format!(
                "only a move to canary takes a percentage, not to {}",
                stage_name(to)
            ),
        });
    }
    let rule = |text: String| Err(Refusal::Rule(text));
    let step = |to: Stage, canary_percent: Option<f64>| Step {
        version,
        from: Some(current.stage),
        to,
        canary_percent,
        consequence: None,
    };
    match to {
        Stage::Candidate => rule(format!(
            "version {version} is {}: nothing returns to candidate",
            stage_name(current.stage)
        )),
        Stage::Canary => {
            let percent = check_percent(canary_percent)?;
            match current.stage {
                Stage::Production => {
                    return rule(format!(
                        "version {version} is in production: a production version cannot become a canary (promote another version or roll back)"
                    ));
                }
                Stage::Canary if current.canary_percent == Some(percent) => {
                    return rule(format!(
                        "version {version} is already in canary at {percent}%"
                    ));
                }
                _ => {}
            }
            if in_stage(versions, Stage::Production).is_none() {
                return rule(format!(
                    "model {model:?} has no production version: a canary needs one to share traffic with"
                ));
            }
            if let Some(other) = in_stage(versions, Stage::Canary).filter(|c| c.version != version)
            {
                return rule(format!(
                    "version {} is already in canary: one canary at a time (promote or archive it first)",
                    other.version
                ));
            }
            Ok(vec![step(Stage::Canary, Some(percent))])
        }
        Stage::Production => {
            if current.stage == Stage::Production {
                return rule(format!("version {version} is already in production"));
            }
            let mut steps = vec![step(Stage::Production, None)];
            if let Some(old) = in_stage(versions, Stage::Production) {
                steps.push(Step {
                    version: old.version,
                    from: Some(Stage::Production),
                    to: Stage::Archived,
                    canary_percent: None,
                    consequence: Some(format!("replaced in production by version {version}")),
                });
            }
            Ok(steps)
        }
        Stage::Archived => {
            if current.stage == Stage::Archived {
                return rule(format!("version {version} is already archived"));
            }
            Ok(vec![step(Stage::Archived, None)])
        }
    }
}

/// Where a version that just passed training's gate goes: to production when the model
/// has none, otherwise to canary at `first_percent` (a canary it supersedes is archived).
pub fn deploy(versions: &[Current], version: i64, first_percent: f64) -> Vec<Step> {
    let production = in_stage(versions, Stage::Production).is_some();
    let mut steps = Vec::new();
    if production && let Some(old) = in_stage(versions, Stage::Canary) {
        steps.push(Step {
            version: old.version,
            from: Some(Stage::Canary),
            to: Stage::Archived,
            canary_percent: None,
            consequence: Some(format!("superseded in canary by version {version}")),
        });
    }
    steps.push(Step {
        version,
        from: Some(Stage::Candidate),
        to: if production {
            Stage::Canary
        } else {
            Stage::Production
        },
        canary_percent: production.then_some(first_percent),
        consequence: None,
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: i64, stage: Stage) -> Current {
        Current {
            version,
            stage,
            canary_percent: (stage == Stage::Canary).then_some(10.0),
        }
    }

    #[test]
    fn promotion_archives_the_old_production_version() {
        let versions = [at(1, Stage::Production), at(2, Stage::Canary)];
        let steps = plan("m", &versions, 2, Stage::Production, None).unwrap();
        assert_eq!(
            steps.iter().map(|s| (s.version, s.to)).collect::<Vec<_>>(),
            [(2, Stage::Production), (1, Stage::Archived)]
        );
        assert!(
            steps[1]
                .consequence
                .as_deref()
                .unwrap()
                .contains("version 2")
        );
    }

    #[test]
    fn illegal_moves_name_their_rule() {
        let versions = [
            at(1, Stage::Production),
            at(2, Stage::Canary),
            at(3, Stage::Candidate),
        ];
        let refused = |v, to, p| match plan("m", &versions, v, to, p) {
            Err(Refusal::Rule(text)) => text,
            other => panic!("{other:?}"),
        };
        assert!(refused(1, Stage::Candidate, None).contains("nothing returns to candidate"));
        assert!(refused(3, Stage::Canary, Some(5.0)).contains("one canary at a time"));
        assert!(refused(1, Stage::Canary, Some(5.0)).contains("cannot become a canary"));
        assert!(refused(1, Stage::Production, None).contains("already in production"));
        assert!(refused(2, Stage::Canary, Some(10.0)).contains("already in canary at 10%"));
        let lonely = [at(1, Stage::Candidate)];
        assert!(matches!(
            plan("m", &lonely, 1, Stage::Canary, Some(5.0)),
            Err(Refusal::Rule(text)) if text.contains("has no production version")
        ));
        assert!(matches!(
            plan("m", &versions, 2, Stage::Canary, Some(100.0)),
            Err(Refusal::Invalid {
                field: "canary_percent",
                ..
            })
        ));
        assert!(matches!(
            plan("m", &versions, 9, Stage::Archived, None),
            Err(Refusal::UnknownVersion { version: 9, .. })
        ));
        // Widening the canary is a move to canary at another percentage.
        assert_eq!(
            plan("m", &versions, 2, Stage::Canary, Some(50.0))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_new_version_goes_to_production_first_then_to_canary() {
        assert_eq!(
            deploy(&[at(1, Stage::Candidate)], 1, 10.0)[0].to,
            Stage::Production
        );
        let steps = deploy(
            &[
                at(1, Stage::Production),
                at(2, Stage::Canary),
                at(3, Stage::Candidate),
            ],
            3,
            10.0,
        );
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.version, s.to, s.canary_percent))
                .collect::<Vec<_>>(),
            [(2, Stage::Archived, None), (3, Stage::Canary, Some(10.0))]
        );
    }
}
