//! `lifeline-api`: reads its configuration, binds `LIFELINE_API_ADDR`
//! (default `127.0.0.1:8081`) and serves the management API until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;

use lifeline_api::{Config, run};
use lifeline_shared::{config, http::shutdown_on_signal, telemetry};

/// glibc's allocator took 13 % of ingest's and 22 % of the evaluator's CPU
/// under push load (perf); mimalloc serves these small, short-lived
/// allocations far more cheaply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _log = telemetry::init();
    let config = Config::from_env()?;
    let addr: SocketAddr = config::parse("LIFELINE_API_ADDR", ([127, 0, 0, 1], 8081).into())?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    run(config, listener, shutdown_on_signal()).await
}
