//! The model registry: models and their immutable, signed versions (`store`), the stage
//! rules (`rules`), the REST API (`api`), the outbox that publishes every change to
//! `models.lifecycle` (`outbox`), and the monitor's canary verdicts acted on (`decisions`).

pub mod api;
pub mod decisions;
pub mod outbox;
pub mod rules;
pub mod store;
