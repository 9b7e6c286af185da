//! The benchmarks, one module each, and what their reports share: the
//! command, the date, the machine and the load it was under.

mod burst;
mod ceilings;
mod detection;
mod drain;
mod memory;
mod push;

use crate::{
    cli::Command,
    machine::{self, CpuUsage, Machine},
    report::{self, Section},
    stack::Env,
};

/// Runs the mode(s) of `command`, reporting each as it finishes.
pub(crate) async fn run(env: &Env, command: &Command) -> anyhow::Result<()> {
    let quick = env.quick;
    match command {
        Command::Push(a) => {
            let (section, _) = push::run(env, &a.resolve(quick)).await?;
            emit(env, &section)?;
        }
        Command::Ceilings(a) => emit(env, &ceilings::run(env, &a.resolve(quick), None).await?)?,
        Command::Burst(a) => emit(env, &burst::run(env, &a.resolve(quick)).await?)?,
        Command::Detection(a) => emit(env, &detection::run(env, &a.resolve(quick)).await?)?,
        Command::Memory(a) => emit(env, &memory::run(env, &a.resolve(quick)).await?)?,
        Command::Drain(a) => emit(env, &drain::run(env, &a.resolve(quick)).await?)?,
        Command::All => {
            let (section, push_run) =
                push::run(env, &crate::cli::PushArgs::default().resolve(quick)).await?;
            emit(env, &section)?;
            let c = crate::cli::CeilingArgs::default().resolve(quick);
            emit(env, &ceilings::run(env, &c, Some(&push_run)).await?)?;
            let b = crate::cli::BurstArgs::default().resolve(quick);
            emit(env, &burst::run(env, &b).await?)?;
            let d = crate::cli::DetectionArgs::default().resolve(quick);
            emit(env, &detection::run(env, &d).await?)?;
            let m = crate::cli::MemoryArgs::default().resolve(quick);
            emit(env, &memory::run(env, &m).await?)?;
            let d = crate::cli::DrainArgs::default().resolve(quick);
            emit(env, &drain::run(env, &d).await?)?;
        }
        Command::Clean | Command::ServeTrivial { .. } => unreachable!("handled before"),
    }
    Ok(())
}

/// Prints a section and writes it into BENCHMARKS.md.
fn emit(env: &Env, section: &Section) -> anyhow::Result<()> {
    println!("\n{}", section.markdown());
    if let Some(path) = &env.output {
        report::write_section(path, section)?;
        eprintln!(
            "bench: wrote section `{}` of {}",
            section.key,
            path.display()
        );
    }
    Ok(())
}

/// When a measurement began and how loaded the machine was then.
pub(crate) struct Record {
    date: String,
    load_before: (f64, f64, f64),
}

impl Record {
    pub(crate) fn begin() -> Self {
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            load_before: machine::loadavg(),
        }
    }

    /// The lines every section starts with: command, date, machine, load.
    pub(crate) fn header(&self, env: &Env, cpu: Option<&CpuUsage>) -> String {
        let (l1, l5, _) = self.load_before;
        let mut out = format!(
            "* Command: `{}`{}\n* Date: {}\n* Code: {}\n* Machine: {}\n* Load: load average {l1:.2} (1 min), {l5:.2} (5 min) before the run, counting this tool's own earlier runs",
            env.command,
            if env.quick {
                " — **quick smoke run: small sizes, short durations; not a measurement**"
            } else {
                ""
            },
            self.date,
            env.code,
            Machine::read().describe(),
        );
        if let Some(cpu) = cpu {
            let cores = cpu.cores.max(1) as f64;
            let verdict = if cpu.others > 20.0 {
                format!(
                    "; **other processes used {:.0} % of one core during the measurement: the machine was not idle**",
                    cpu.others
                )
            } else {
                format!(
                    "; other processes used {:.0} % of one core during the measurement (of {:.0} %)",
                    cpu.others,
                    cores * 100.0
                )
            };
            out.push_str(&verdict);
        }
        out.push('\n');
        out
    }
}

/// `met` or `**not met**`.
pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// The CPU groups watched during a load: this process, the services, the
/// brokers.
pub(crate) fn cpu_groups(stack: Option<&crate::stack::Stack>) -> Vec<(String, Vec<u32>)> {
    let mut groups = vec![("lifeline-bench".to_owned(), vec![std::process::id()])];
    if let Some(s) = stack {
        groups.extend(s.pid_groups());
    }
    groups.extend(machine::broker_pids());
    groups
}
