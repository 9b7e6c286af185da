//! Child processes: the Lifeline binaries (and brokers, and helpers) run as
//! real processes that a test may kill with SIGKILL. Every child is killed
//! when its handle is dropped, so a failing test leaves none behind; its
//! stdout and stderr go to a log file, read back for diagnostics.
//!
//! Tests' logs go to `target/test-logs/`; the benchmark names its own.

use std::{
    collections::HashMap,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The workspace's `target/` directory (`CARGO_TARGET_DIR` if set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the kit lives in the workspace")
        .to_path_buf()
}

/// Path of a Lifeline binary (`lifeline-ingest`, …), the workspace's
/// binaries built (debug) on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bins"])
            .current_dir(workspace_dir())
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the service binaries failed");
    });
    target_dir().join("debug").join(name)
}

/// A fresh log file in `target/test-logs/`: `<label>-<pid>-<n>.log`.
fn test_log(label: &str) -> PathBuf {
    static SEQ: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut s = SEQ.lock().expect("seq lock");
        *s += 1;
        *s
    };
    let dir = target_dir().join("test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!("{label}-{}-{n}.log", std::process::id()))
}

/// A child process, killed on drop, its output in a log file.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` and extra `env`, stdout and stderr to
    /// the file `log` (created or truncated).
    pub fn start(
        label: &str,
        program: &Path,
        args: &[&str],
        env: &HashMap<String, String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            label: label.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// [`Proc::start`] for a test: logs to `target/test-logs/`, panics if
    /// the process cannot be started.
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[&str],
        env: &HashMap<String, String>,
    ) -> Self {
        Self::start(label, program, args, env, test_log(label)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The process id (0 once it was killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting up to `limit` for a clean exit; SIGKILL after that.
    /// Whether it exited successfully.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How it ended, if it has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A service process and the port it serves HTTP (or ops HTTP) on.
#[derive(Debug)]
pub struct Service {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Service {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An error, with the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.proc.exited() {
            bail!(
                "{} (port {}) exited ({status}); its log {}:\n{}",
                self.proc.label(),
                self.port,
                self.proc.log_path().display(),
                self.proc.log_tail(20)
            );
        }
        Ok(())
    }

    /// Waits until `GET <path>` (e.g. `/readyz`) answers 2xx, for at most
    /// `limit`; an error, with the end of its log, if it exits or the time
    /// runs out.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        path: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let url = format!("{}{path}", self.url());
        loop {
            self.check_alive()?;
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} on port {} not ready after {limit:?}; its log:\n{}",
                    self.proc.label(),
                    self.port,
                    self.proc.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait_for;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_process_logs_to_its_file_and_is_killed_on_drop() {
        let mut p = Proc::spawn(
            "kit-sh",
            Path::new("sh"),
            &["-c", "echo started; exec sleep 30"],
            &HashMap::new(),
        );
        let pid = p.pid();
        assert!(p.running());
        wait_for(LIMIT, "its log line", || async {
            p.log().contains("started").then_some(())
        })
        .await;
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "still running"
        );
    }

    #[tokio::test]
    async fn a_service_that_exited_says_so_with_its_log() {
        let mut s = Service {
            proc: Proc::spawn(
                "kit-exit",
                Path::new("sh"),
                &["-c", "echo bad config; exit 3"],
                &HashMap::new(),
            ),
            port: 1,
        };
        let err = wait_for(LIMIT, "the process to exit", || {
            let err = s.check_alive().err().map(|e| e.to_string());
            async move { err }
        })
        .await;
        assert!(err.contains("kit-exit (port 1) exited"), "{err}");
        assert!(err.contains("bad config"), "{err}");
    }
}
