//! The command line: one subcommand per mode, each with its sizes and
//! durations; unset ones take the full run's defaults, or the `--quick`
//! smoke run's.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use lifeline_testkit::brokers::{AMQP_URL, NATS_URL, REDIS_URL};

/// Benchmarks a Lifeline stack it starts itself (release binaries, the
/// machine's NATS, Redis and RabbitMQ) and records the numbers in
/// BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "lifeline-bench", version)]
pub struct Cli {
    /// What to measure (default: all).
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub global: Global,
}

/// Options of every mode.
#[derive(Clone, Debug, Args)]
pub struct Global {
    /// A short smoke run: small sizes and durations. Its numbers show the
    /// tool works; they are no measurement.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Print the results only; do not update BENCHMARKS.md.
    #[arg(long, global = true)]
    pub no_write: bool,
    /// The file to update (default: BENCHMARKS.md at the repository root).
    #[arg(long, global = true)]
    pub output: Option<PathBuf>,
    /// Where lifeline-ingest, lifeline-evaluator, … are (default: beside
    /// this binary, i.e. target/release).
    #[arg(long, global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Ingest replicas (the load is spread over them by connection).
    #[arg(long, global = true, default_value_t = 1)]
    pub ingest: usize,
    /// Evaluator replicas.
    #[arg(long, global = true, default_value_t = 1)]
    pub evaluators: usize,
    /// RUST_LOG of the services (their default is info).
    #[arg(long, global = true, default_value = "info")]
    pub service_log: String,
    /// Runtime threads of each service (`TOKIO_WORKER_THREADS`; their own
    /// default is one per core). On two cores shared by every service and
    /// this tool, one each is fastest (measured: 28.5k–29.2k pushes/s
    /// against 26.8k–28.1k with two).
    #[arg(long, global = true, default_value_t = 1)]
    pub worker_threads: usize,
    #[arg(long, global = true, default_value = NATS_URL)]
    pub nats_url: String,
    #[arg(long, global = true, default_value = REDIS_URL)]
    pub redis_url: String,
    #[arg(long, global = true, default_value = AMQP_URL)]
    pub amqp_url: String,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accepted pushes/s and latency over keep-alive connections; checks
    /// that every accepted push reached the evaluator.
    Push(PushArgs),
    /// A trivial axum handler and raw JetStream publishing, as ceilings for
    /// ingest (runs a push measurement too, unless part of `all`).
    Ceilings(CeilingArgs),
    /// Every monitor pushes once within one second: time until all are
    /// accepted and until all are applied.
    Burst(BurstArgs),
    /// Deadlines spread over a window: delay from each deadline to its
    /// alert job on RabbitMQ.
    Detection(DetectionArgs),
    /// Redis bytes per monitor and per stored beat; resident memory of each
    /// service under push load.
    Memory(MemoryArgs),
    /// Evaluator capacity: a backlog of accepted pushes, drained by 1, 2, …
    /// evaluator replicas started after it was written.
    Drain(DrainArgs),
    /// Every mode, one after the other, with its defaults.
    All,
    /// Removes whatever an interrupted run left in the brokers (every
    /// `bench-*` prefix).
    Clean,
    /// The trivial handler of `ceilings`, as its own process.
    #[command(hide = true)]
    ServeTrivial {
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn pick<T>(set: Option<T>, quick: bool, quick_default: T, full_default: T) -> T {
    set.unwrap_or(if quick { quick_default } else { full_default })
}

/// `push` options.
#[derive(Clone, Debug, Default, Args)]
pub struct PushArgs {
    /// Monitors pushed in turn [10000; quick 1000].
    #[arg(long)]
    pub monitors: Option<usize>,
    /// Concurrent keep-alive connections [64; quick 16].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds of load [60; quick 5].
    #[arg(long)]
    pub duration: Option<u64>,
    /// LIFELINE_PUSH_RATE for ingest (e.g. `off`; default: ingest's own).
    #[arg(long)]
    pub push_rate: Option<String>,
}

/// Resolved `push` options.
#[derive(Clone, Debug)]
pub(crate) struct PushOpts {
    pub(crate) monitors: usize,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) push_rate: Option<String>,
}

impl PushArgs {
    pub(crate) fn resolve(&self, quick: bool) -> PushOpts {
        PushOpts {
            monitors: pick(self.monitors, quick, 1000, 10_000).max(1),
            connections: pick(self.connections, quick, 16, 64).max(1),
            duration: Duration::from_secs(pick(self.duration, quick, 5, 60).max(1)),
            push_rate: self.push_rate.clone(),
        }
    }
}

/// `ceilings` options.
#[derive(Clone, Debug, Default, Args)]
pub struct CeilingArgs {
    /// Connections for the trivial handler and the push run [64; quick 16].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds of load on the trivial handler (and of the push run, when
    /// `ceilings` runs alone) [20; quick 3].
    #[arg(long)]
    pub duration: Option<u64>,
    /// JetStream publish acks kept in flight, one measurement each
    /// [64,256,1024,4096; quick 64,1024].
    #[arg(long, value_delimiter = ',')]
    pub inflight: Option<Vec<usize>>,
    /// Seconds of JetStream publishing per in-flight level [10; quick 2].
    #[arg(long)]
    pub js_duration: Option<u64>,
    /// Monitors of the push run, when `ceilings` runs alone [10000; quick 1000].
    #[arg(long)]
    pub monitors: Option<usize>,
}

#[derive(Clone, Debug)]
pub(crate) struct CeilingOpts {
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) inflight: Vec<usize>,
    pub(crate) js_duration: Duration,
    pub(crate) monitors: usize,
}

impl CeilingArgs {
    pub(crate) fn resolve(&self, quick: bool) -> CeilingOpts {
        CeilingOpts {
            connections: pick(self.connections, quick, 16, 64).max(1),
            duration: Duration::from_secs(pick(self.duration, quick, 3, 20).max(1)),
            inflight: pick(
                self.inflight.clone(),
                quick,
                vec![64, 1024],
                vec![64, 256, 1024, 4096],
            ),
            js_duration: Duration::from_secs(pick(self.js_duration, quick, 2, 10).max(1)),
            monitors: pick(self.monitors, quick, 1000, 10_000).max(1),
        }
    }
}

/// `burst` options.
#[derive(Clone, Debug, Default, Args)]
pub struct BurstArgs {
    /// Monitors, each pushing once [100000; quick 10000].
    #[arg(long)]
    pub monitors: Option<usize>,
    /// Keep-alive connections the pushes share [64; quick 16].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Milliseconds over which the pushes arrive [1000].
    #[arg(long)]
    pub spread_ms: Option<u64>,
    /// LIFELINE_PUSH_RATE for ingest (e.g. `off`; default: ingest's own).
    #[arg(long)]
    pub push_rate: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct BurstOpts {
    pub(crate) monitors: usize,
    pub(crate) connections: usize,
    pub(crate) spread: Duration,
    pub(crate) push_rate: Option<String>,
}

impl BurstArgs {
    pub(crate) fn resolve(&self, quick: bool) -> BurstOpts {
        BurstOpts {
            monitors: pick(self.monitors, quick, 10_000, 100_000).max(1),
            connections: pick(self.connections, quick, 16, 64).max(1),
            spread: Duration::from_millis(self.spread_ms.unwrap_or(1000)),
            push_rate: self.push_rate.clone(),
        }
    }
}

/// `detection` options.
#[derive(Clone, Debug, Default, Args)]
pub struct DetectionArgs {
    /// Monitor counts, one run each [100000,1000000; quick 10000].
    #[arg(long, value_delimiter = ',')]
    pub monitors: Option<Vec<usize>>,
    /// Seconds over which the deadlines are spread [60; quick 5].
    #[arg(long)]
    pub window: Option<u64>,
    /// Seconds between writing the last deadline and the first one
    /// (default: estimated from the time taken to create the monitors).
    #[arg(long)]
    pub lead: Option<u64>,
    /// Seconds to wait for missing alerts after the last deadline [120; quick 10].
    #[arg(long)]
    pub grace: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct DetectionOpts {
    pub(crate) monitors: Vec<usize>,
    pub(crate) window: Duration,
    pub(crate) lead: Option<Duration>,
    pub(crate) grace: Duration,
}

impl DetectionArgs {
    pub(crate) fn resolve(&self, quick: bool) -> DetectionOpts {
        DetectionOpts {
            monitors: pick(
                self.monitors.clone(),
                quick,
                vec![10_000],
                vec![100_000, 1_000_000],
            ),
            window: Duration::from_secs(pick(self.window, quick, 5, 60).max(1)),
            lead: self.lead.map(Duration::from_secs),
            grace: Duration::from_secs(pick(self.grace, quick, 10, 120)),
        }
    }
}

/// `memory` options.
#[derive(Clone, Debug, Default, Args)]
pub struct MemoryArgs {
    /// Monitors written [100000; quick 2000].
    #[arg(long)]
    pub monitors: Option<usize>,
    /// Monitors whose keys are measured one by one [1000; quick 200].
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seconds of push load while the services' memory is sampled [20; quick 3].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Connections of that load [64; quick 16].
    #[arg(long)]
    pub connections: Option<usize>,
}

#[derive(Clone, Debug)]
pub(crate) struct MemoryOpts {
    pub(crate) monitors: usize,
    pub(crate) sample: usize,
    pub(crate) duration: Duration,
    pub(crate) connections: usize,
}

impl MemoryArgs {
    pub(crate) fn resolve(&self, quick: bool) -> MemoryOpts {
        let monitors = pick(self.monitors, quick, 2000, 100_000).max(1);
        MemoryOpts {
            monitors,
            sample: pick(self.sample, quick, 200, 1000).clamp(1, monitors),
            duration: Duration::from_secs(pick(self.duration, quick, 3, 20).max(1)),
            connections: pick(self.connections, quick, 16, 64).max(1),
        }
    }
}

/// `drain` options.
#[derive(Clone, Debug, Default, Args)]
pub struct DrainArgs {
    /// Evaluator replicas, one measurement each [1,2; quick 1,2].
    #[arg(long, value_delimiter = ',')]
    pub replicas: Option<Vec<usize>>,
    /// Monitors pushed in turn [10000; quick 1000].
    #[arg(long)]
    pub monitors: Option<usize>,
    /// Seconds of push load that write the backlog [10; quick 2].
    #[arg(long)]
    pub fill: Option<u64>,
    /// Connections of that load [64; quick 16].
    #[arg(long)]
    pub connections: Option<usize>,
}

#[derive(Clone, Debug)]
pub(crate) struct DrainOpts {
    pub(crate) replicas: Vec<usize>,
    pub(crate) monitors: usize,
    pub(crate) fill: Duration,
    pub(crate) connections: usize,
}

impl DrainArgs {
    pub(crate) fn resolve(&self, quick: bool) -> DrainOpts {
        DrainOpts {
            replicas: pick(self.replicas.clone(), quick, vec![1, 2], vec![1, 2])
                .into_iter()
                .map(|n| n.max(1))
                .collect(),
            monitors: pick(self.monitors, quick, 1000, 10_000).max(1),
            fill: Duration::from_secs(pick(self.fill, quick, 2, 10).max(1)),
            connections: pick(self.connections, quick, 16, 64).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_and_explicit_values() {
        let cli =
            Cli::try_parse_from(["lifeline-bench", "push", "--quick", "--duration", "7"]).unwrap();
        let Some(Command::Push(p)) = cli.command else {
            panic!("push")
        };
        let o = p.resolve(cli.global.quick);
        assert_eq!((o.monitors, o.duration), (1000, Duration::from_secs(7)));
        let cli =
            Cli::try_parse_from(["lifeline-bench", "detection", "--monitors", "5,6"]).unwrap();
        let Some(Command::Detection(d)) = cli.command else {
            panic!("detection")
        };
        assert_eq!(d.resolve(false).monitors, vec![5, 6]);
        assert!(
            Cli::try_parse_from(["lifeline-bench"])
                .unwrap()
                .command
                .is_none()
        );
    }
}
