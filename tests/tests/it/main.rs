//! The cross-service test binary: every flow runs the real services against
//! the real brokers, each test under its own name prefix.
//!
//! * `pipeline`: the four services in-process, end to end;
//! * `failures`: the services as real processes, killed and restarted, with
//!   private broker instances restarted under them;
//! * `fuzz`: random and malformed requests against ingest and the API;
//! * `limits`: the push rate limit across ingest replicas;
//! * `ops`: what operators see: metrics, the warning about a Redis that
//!   keeps nothing;
//! * `scripts`: `scripts/up` and `scripts/down` as a user runs them.

mod alerts;
mod failures;
mod fuzz;
mod limits;
mod ops;
mod pipeline;
mod scripts;
