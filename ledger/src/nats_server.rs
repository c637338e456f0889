//! A local `nats-server` with JetStream, started on a free loopback port in a directory of ours.
//!
//! For tests, benchmarks and `docket demo --nats auto`: the real server, really
//! started, stopped with SIGTERM so JetStream flushes, and killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports tried before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How long to wait for a started server to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error("cannot run nats-server (is it installed and on PATH?): {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not accept connections on port {port} within {START_TIMEOUT:?}")]
    NotReady { port: u16 },
    #[error("no free port: {0}")]
    Port(std::io::Error),
}

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store_dir: PathBuf,
}

impl NatsServer {
    /// Starts a server with JetStream storing in `store_dir`, on a free port.
    pub fn start(store_dir: &Path) -> Result<NatsServer, NatsServerError> {
        // A free port can be taken by someone else between our probe and the server's bind
        // (tests start servers in parallel): a server that exits right away gets a new port.
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(NatsServerError::Port)?
                .port();
            let mut s = NatsServer {
                child: None,
                port,
                store_dir: store_dir.to_path_buf(),
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(NatsServerError::NotReady { port: 0 }))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), NatsServerError> {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(NatsServerError::Spawn)?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                // Most likely the port was taken: what answers there is not ours.
                self.child = None;
                return Err(NatsServerError::NotReady { port: self.port });
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                if let Some(c) = self.child.as_mut()
                    && matches!(c.try_wait(), Ok(None))
                {
                    return Ok(());
                }
                self.child = None;
                return Err(NatsServerError::NotReady { port: self.port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NatsServerError::NotReady { port: self.port })
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
