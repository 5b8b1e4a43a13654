//! What every service process shares: layered configuration, secrets that never print,
//! supervised tasks with graceful shutdown, a bounded pool for CPU-heavy work, and the admin router (`/healthz`, `/readyz`,
//! `/metrics`).

pub mod admin;
pub mod config;
pub mod cpu;
pub mod lanes;
mod secret;
pub mod series;
pub mod supervisor;
pub mod tasks;
pub mod tls;

pub use admin::{AdminState, ReadinessCheck, serve};
pub use config::{ConfigError, load_config};
pub use secret::Secret;
pub use supervisor::{JobReporter, JobState, JobStatus, Supervisor};
pub use tasks::{TaskSet, shutdown_signal};
