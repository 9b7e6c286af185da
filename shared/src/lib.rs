//! What more than one Lifeline service needs, and nothing service-specific:
//! the wire contracts (beat events on NATS, alert jobs on RabbitMQ), the
//! monitor state machine ([`state`]) and the loop that runs it on stored
//! monitors ([`engine`]), the Redis store (the only code that speaks
//! Redis), configuration from `LIFELINE_*` variables, broker connection
//! helpers, the reconnect back-off, the supervisor every service runs its
//! tasks under ([`runtime`]), and telemetry set-up.
//!
//! Every name a service creates in NATS, Redis or RabbitMQ derives from
//! [`names::Names`] (Redis keys through the store's own [`store::Keys`]), so
//! a configurable prefix isolates deployments and tests.
//!
//! "Invariant N" in comments across the workspace is the N-th invariant of
//! `docs/DESIGN.md`.

// The pure core, under the paths every service has used: the wire
// contracts, ids, names and the state machine live in `lifeline-core`.
pub use lifeline_core::{ids, model, names, state};

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod engine;
pub mod http;
pub mod metric;
pub mod nats;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod token;
