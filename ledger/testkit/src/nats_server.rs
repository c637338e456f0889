//! A local `nats-server` with JetStream, on a port it picks itself, storing in a directory of ours.
//!
//! For tests, benchmarks and `docket demo --nats auto`: the real server, really
//! started, stopped with SIGTERM so JetStream flushes, and killed on drop. The
//! server chooses its own port (`-p -1`) and reports it in a ports file, so
//! servers started in parallel can never race for one.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a started server to report its port and accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error("cannot run nats-server (is it installed and on PATH?): {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not become ready within {START_TIMEOUT:?} (store {0})")]
    NotReady(PathBuf),
}

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    /// 0 until the first start has reported its port.
    pub port: u16,
    pub store_dir: PathBuf,
    /// A configuration file (users, permissions, TLS), when started with one.
    pub config: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server with JetStream storing in `store_dir`, on a port of its choosing.
    pub fn start(store_dir: &Path) -> Result<NatsServer, NatsServerError> {
        NatsServer::start_configured(store_dir, None, &[])
    }

    /// Starts a server as `start` does, reading `config` (nats-server's own format) too:
    /// the command line's JetStream, address, port and store settings win over the file's.
    /// `env` is what `$NAME` values in the file resolve to.
    pub fn start_configured(
        store_dir: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<NatsServer, NatsServerError> {
        let mut s = NatsServer {
            child: None,
            port: 0,
            store_dir: store_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            env: env.to_vec(),
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL with the `tls://` scheme, for a server configured with TLS.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), NatsServerError> {
        let ports_dir = self.store_dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).map_err(NatsServerError::Spawn)?;
        // A restart keeps the port clients already know.
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new("nats-server");
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(&self.store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(NatsServerError::Spawn)?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(port) = reported_port(&ports_dir)
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                self.port = port;
                return Ok(());
            }
            if self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NatsServerError::NotReady(self.store_dir.clone()))
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes its files) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same port and store.
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop();
        self.spawn()
    }
}

/// The client port in the `<name>_<pid>.ports` file nats-server writes: `{"nats":["nats://host:port"]}`.
fn reported_port(dir: &Path) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    ports["nats"]
        .as_array()?
        .first()?
        .as_str()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
