//! Lineup's core: the model, validation, placement, the services, and the traits a
//! backend implements. No AWS SDK and no SQLite here.
//!
//! # Layout
//! - `model.rs`, `id.rs`, `validate.rs`: records, identifiers, input checks.
//! - `placement.rs`: the pure ranking of workers for an eval; `plan.rs`: the pure
//!   planner (a batch and a pool snapshot in, placements and typed reasons out).
//! - `admission.rs`, `health.rs`: `max_running`, health levels, coefficients, checks.
//! - `backend.rs`: the `Store` and `Queues` traits.
//! - `service/`: gateway operations, the scheduler pass, the releaser pass.
//! - `events.rs`: the bounded, indexed history of state changes behind `GET /v1/events`.
//! - `metered.rs`: `Store`/`Queues` decorators counting each operation.
//! - `metrics.rs`: the figures reported (names, labels, buckets) through the `metrics` facade.
//! - `auth.rs`: admin and worker tokens. `config.rs`: `LINEUP_*` settings. `clock.rs`.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod faults;
pub mod health;
pub mod id;
pub mod metered;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod service;
pub mod validate;

pub use auth::Principal;
pub use backend::{Claim, Completion, Heartbeat, Queues, Received, Store};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Settings;
pub use error::{Error, Result};
pub use id::{AllocId, EvalId, PipelineId, PoolId, WorkerId};
pub use model::*;
pub use service::Lineup;
