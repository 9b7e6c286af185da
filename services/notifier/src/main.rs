//! `lifeline-notifier`: reads its configuration, binds the ops listener
//! (`LIFELINE_NOTIFIER_ADDR`, default `127.0.0.1:8083`) and runs until
//! SIGINT or SIGTERM.

use anyhow::Context as _;
use lifeline_notifier::{Config, run};
use lifeline_shared::{config, http::shutdown_on_signal, telemetry};
use tokio::net::TcpListener;

/// glibc's allocator took 13 % of ingest's and 22 % of the evaluator's CPU
/// under push load (perf); mimalloc serves these small, short-lived
/// allocations far more cheaply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _log = telemetry::init();
    let config = Config::from_env()?;
    let addr = config::string("LIFELINE_NOTIFIER_ADDR", "127.0.0.1:8083");
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on LIFELINE_NOTIFIER_ADDR {addr}"))?;
    run(config, listener, shutdown_on_signal()).await
}
