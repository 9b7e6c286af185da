//! Lifeline's pure core: what every service agrees on, with no I/O and no
//! dependency beyond serde.
//!
//! * [`model`]: the wire contracts — beat events on NATS, alert and
//!   delivery jobs on RabbitMQ, the records kept in Redis — and the closed
//!   sets they use (statuses, reasons, events, channel kinds, delivery
//!   outcomes), each one enum used by every service;
//! * [`ids`]: the ids of monitors, channels, alerts and deliveries as
//!   types of their own, so one cannot be passed where another is meant;
//! * [`state`]: the monitor state machine, a pure function of (state,
//!   rules, input, time) → (new state, changes, alerts);
//! * [`names`]: every name created in NATS and RabbitMQ, as functions of
//!   the configured prefix, and the sharding of monitors.
//!
//! Everything that talks to a broker, Redis or the clock is in
//! `lifeline-shared` and the services. "Invariant N" in comments is the
//! N-th invariant of `docs/DESIGN.md`.

pub mod ids;
pub mod model;
pub mod names;
pub mod state;
