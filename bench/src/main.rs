//! `lifeline-bench`: parses the command line and runs it.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lifeline_bench::run(lifeline_bench::cli::Cli::parse()).await
}
