//! `lifeline-api`: the management API. Only wiring: telemetry, the configuration,
//! the listener on `LIFELINE_API_ADDR`, and the service until SIGINT or SIGTERM
//! (see `lifeline_api::run`).

use lifeline_api::{Config, run};
use lifeline_shared::{runtime, telemetry};

/// glibc's allocator took 13 % of ingest's and 22 % of the evaluator's CPU
/// under push load (perf); mimalloc serves these small, short-lived
/// allocations far more cheaply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _log = telemetry::init();
    let config = Config::from_env()?;
    let listener = runtime::listen(&config.addr, "LIFELINE_API_ADDR").await?;
    runtime::until_signal(|shutdown| run(config, listener, shutdown)).await
}
