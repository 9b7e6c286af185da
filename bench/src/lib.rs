//! Lifeline's benchmark harness (issue 5).
//!
//! `lifeline-bench` starts its own stack — the release binaries of the
//! services as child processes, under a prefix of its own, on free ports,
//! against the machine's NATS, Redis and RabbitMQ — drives it, prints what
//! it measured and writes it into `BENCHMARKS.md` with the command, the
//! date, the machine and the load it ran under. It removes what it created
//! in the brokers afterwards. `scripts/bench` builds the binaries and runs
//! it. The modes:
//!
//! * `push` — accepted pushes/s and latency over keep-alive connections, and
//!   proof that every accepted push reached the evaluator;
//! * `ceilings` — a trivial axum handler and raw JetStream publishing, the
//!   bounds ingest is measured against;
//! * `burst` — N monitors pushing within one second;
//! * `detection` — delay from deadline to alert job at 100k and 1M monitors;
//! * `memory` — Redis bytes per monitor and per beat, services' memory.
//!
//! Nothing here runs under `cargo test` but unit tests of the parts.

pub mod cli;
mod fixtures;
mod histogram;
mod http;
mod load;
mod machine;
mod modes;
mod report;
mod stack;
mod trivial;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use cli::{Cli, Command};
use lifeline_testkit::Brokers;
use stack::Env;

/// The repository root: the nearest directory above `from` holding
/// `bench/Cargo.toml`.
fn repo_root(from: &Path) -> Option<PathBuf> {
    from.ancestors()
        .find(|d| d.join("bench/Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// The command as typed: `BENCH_COMMAND` (set by scripts/bench), or this
/// process's arguments.
fn command_line() -> String {
    match std::env::var("BENCH_COMMAND") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            format!("lifeline-bench {}", args.join(" "))
                .trim()
                .to_owned()
        }
    }
}

/// Fails early, with a message, when a broker does not answer.
async fn check_brokers(b: &Brokers) -> anyhow::Result<()> {
    let redis = redis::Client::open(b.redis_url.as_str())?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        redis.get_multiplexed_async_connection(),
    )
    .await
    .context("Redis does not answer (scripts/brokers starts it)")??;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        async_nats::connect(b.nats_url.as_str()),
    )
    .await
    .context("NATS does not answer (scripts/brokers starts it)")??;
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        lapin::Connection::connect(&b.amqp_url, lapin::ConnectionProperties::default()),
    )
    .await
    .context("RabbitMQ does not answer (scripts/brokers starts it)")??
    .close(200, "bench check".into())
    .await?;
    Ok(())
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    let brokers = Brokers {
        nats_url: g.nats_url.clone(),
        redis_url: g.redis_url.clone(),
        amqp_url: g.amqp_url.clone(),
    };
    let command = cli.command.unwrap_or(Command::All);
    match command {
        Command::ServeTrivial { addr } => return trivial::serve(addr).await,
        Command::Clean => return stack::clean_all(&brokers).await,
        _ => {}
    }
    let exe = std::env::current_exe()?;
    let bin_dir = match g.bin_dir.clone() {
        Some(d) => d,
        None => exe
            .parent()
            .context("the binary has no directory")?
            .to_path_buf(),
    };
    for s in ["ingest", "evaluator", "api", "notifier"] {
        let p = bin_dir.join(format!("lifeline-{s}"));
        if !p.is_file() {
            bail!(
                "{} is missing: build with `cargo build --release --bins` (scripts/bench does), or pass --bin-dir",
                p.display()
            );
        }
    }
    let output = if g.no_write {
        None
    } else {
        match g.output.clone() {
            Some(p) => Some(p),
            None => Some(
                std::env::current_dir()
                    .ok()
                    .and_then(|d| repo_root(&d))
                    .or_else(|| repo_root(&exe))
                    .context("cannot find the repository root for BENCHMARKS.md: pass --output or --no-write")?
                    .join("BENCHMARKS.md"),
            ),
        }
    };
    check_brokers(&brokers).await?;
    let env = Env::new(&g, bin_dir, command_line(), output)?;
    let result = tokio::select! {
        r = modes::run(&env, &command) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The mode's processes are gone (dropped); now its broker objects.
    env.release_all().await;
    result
}
