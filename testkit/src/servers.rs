//! Private brokers for failure tests: a `nats-server`, `redis-server` or
//! `rabbitmq-server` of a test's own, on free ports, with its data in a
//! temp dir of its own, which the test may kill (SIGKILL) and restart on
//! the same ports and data without disturbing any other test. Each is
//! killed, and its directory removed, when dropped.

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use crate::{Proc, TempDir, free_port, wait_for, wait_port};

/// Which broker a [`PrivateServer`] runs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// nats-server with JetStream and a file store.
    Nats,
    /// redis-server with an append-only file, fsynced on every write.
    Redis,
    /// redis-server that keeps nothing on disk (`--save "" --appendonly
    /// no`, as many development machines run it).
    VolatileRedis,
}

/// A private nats-server or redis-server on a free port with a data
/// directory of its own.
pub struct PrivateServer {
    /// Its port.
    pub port: u16,
    kind: Kind,
    // Declared before `dir`: the process dies before its data is removed.
    proc: Option<Proc>,
    dir: TempDir,
}

impl PrivateServer {
    /// A nats-server with JetStream.
    pub async fn nats() -> Self {
        Self::start(Kind::Nats).await
    }

    /// A redis-server with an append-only file.
    pub async fn redis() -> Self {
        Self::start(Kind::Redis).await
    }

    /// A redis-server that keeps nothing on disk: a restart loses
    /// everything.
    pub async fn redis_volatile() -> Self {
        Self::start(Kind::VolatileRedis).await
    }

    async fn start(kind: Kind) -> Self {
        let mut s = Self {
            port: free_port(),
            kind,
            proc: None,
            dir: TempDir::new(&format!("{kind:?}").to_lowercase()),
        };
        s.restart().await;
        s
    }

    /// Its URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis | Kind::VolatileRedis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// (Re)starts it on the same port and data directory, and waits until
    /// the port accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let (program, args): (&str, Vec<&str>) = match self.kind {
            Kind::Nats => (
                "nats-server",
                vec!["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir],
            ),
            Kind::Redis => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ],
            ),
            Kind::VolatileRedis => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir,
                    "--appendonly",
                    "no",
                    "--save",
                    "",
                ],
            ),
        };
        self.proc = Some(Proc::spawn(
            program,
            Path::new(program),
            &args,
            &HashMap::new(),
        ));
        wait_port(self.port, Duration::from_secs(20)).await;
    }
}

/// A private RabbitMQ node on free ports, with its own data directory
/// (owned by the `rabbitmq` user, as `rabbitmq-server` drops to it).
pub struct PrivateRabbit {
    /// Its AMQP port.
    pub port: u16,
    dist_port: u16,
    node: String,
    proc: Option<Proc>,
    dir: TempDir,
}

impl PrivateRabbit {
    /// Starts it (about 10 s).
    pub async fn start() -> Self {
        let dir = TempDir::new("rabbit");
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", &dir.path().to_string_lossy()])
            .status();
        let _ = Command::new("chmod")
            .args(["755", &dir.path().to_string_lossy()])
            .status();
        let mut r = Self {
            port: free_port(),
            dist_port: free_port(),
            node: format!("lifeline-{}@localhost", lifeline_shared::token::new_id()),
            proc: None,
            dir,
        };
        r.restart().await;
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the node (SIGKILL to the Erlang VM).
    pub fn kill(&mut self) {
        let pid_file = self.dir.path().join("pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            let _ = std::fs::remove_file(&pid_file);
        }
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// (Re)starts it on the same ports and data directory, and waits until
    /// it accepts AMQP logins.
    pub async fn restart(&mut self) {
        self.kill();
        let d = self.dir.path().to_string_lossy().into_owned();
        let env: HashMap<String, String> = [
            ("HOME", d.clone()),
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{d}/log")),
            ("RABBITMQ_FEATURE_FLAGS_FILE", format!("{d}/ff")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/plugins")),
            ("RABBITMQ_PID_FILE", format!("{d}/pid")),
            ("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                format!("{d}/advanced.config"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.proc = Some(Proc::spawn(
            "rabbitmq",
            Path::new("rabbitmq-server"),
            &[],
            &env,
        ));
        wait_port(self.port, Duration::from_secs(90)).await;
        // The port opens before the broker accepts logins: wait for a real connection.
        let url = self.url();
        wait_for(
            Duration::from_secs(60),
            "rabbitmq accepting connections",
            || {
                let url = url.clone();
                async move {
                    let c =
                        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                            .await
                            .ok()?;
                    let _ = c.close(200, "ready".into()).await;
                    Some(())
                }
            },
        )
        .await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}
