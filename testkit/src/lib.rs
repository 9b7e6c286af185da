//! Lifeline's test kit: the plumbing every test and the benchmark share,
//! written once.
//!
//! * [`brokers`]: where NATS, Redis and RabbitMQ are ([`Brokers`]);
//! * [`scope`]: a fresh name prefix per test ([`Scope`]) and the removal of
//!   everything a prefix created in the brokers ([`cleanup`]);
//! * [`wait`]: polling a condition with a deadline ([`wait_for`], [`poll`]),
//!   never a bare sleep;
//! * [`net`]: free ports, listeners on port 0, waiting for a port to open;
//! * [`process`]: child processes killed on drop, with their log file
//!   ([`Proc`], [`Service`]), and the workspace's built binaries;
//! * [`servers`]: private `nats-server`, `redis-server` and
//!   `rabbitmq-server` instances on free ports, each in a temp dir of its
//!   own ([`PrivateServer`], [`PrivateRabbit`]);
//! * [`tempdir`]: a temporary directory removed on drop ([`TempDir`]);
//! * [`lifecycle`]: a service's own `run` started and cancelled in-process
//!   ([`lifecycle::starts_then_drains`]);
//! * [`receiver`]: a real HTTP server recording what it is sent, the target
//!   of webhook and Slack channels ([`Receiver`]).
//!
//! It depends on the shared crate and the broker clients but on no service,
//! so that every service can take it as a dev-dependency.

pub mod brokers;
pub mod lifecycle;
pub mod net;
pub mod process;
pub mod receiver;
pub mod scope;
pub mod servers;
pub mod tempdir;
pub mod wait;

pub use brokers::Brokers;
pub use net::{free_port, listener, wait_port};
pub use process::{Proc, Service, binary};
pub use receiver::{Hit, Receiver, Reply};
pub use scope::{Scope, cleanup, cleanup_all, cleanup_blocking, unique_prefix};
pub use servers::{PrivateRabbit, PrivateServer};
pub use tempdir::TempDir;
pub use wait::{poll, wait_for};
