//! Test helpers: a real nats-server, the real `docket` binary, and readers of the real store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use docket_ledger::store::Store;
use docket_schemas::{Envelope, encode_base64};
use docket_testkit::workload::Roles;

#[allow(unused_imports)]
pub use docket_testkit::nats_server::NatsServer;

pub const DOCKET: &str = env!("CARGO_BIN_EXE_docket");

/// Entries a new ledger holds before any producer's: its genesis policy at seq 1.
pub const GENESIS_ENTRIES: u64 = 1;

pub fn docket(args: &[&str]) -> Output {
    Command::new(DOCKET)
        .args(args)
        .output()
        .expect("run docket")
}

/// Runs a command with `input` on its standard input; returns what it printed and its status.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A `docket serve` child process whose log goes to a file.
pub struct Serve {
    pub child: Child,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Serve {
    pub fn start(data: &Path, nats_url: &str, roles: &Roles) -> Serve {
        Serve::start_with(data, nats_url, roles, &[])
    }

    pub fn start_with(data: &Path, nats_url: &str, roles: &Roles, extra: &[&str]) -> Serve {
        Serve::start_env(data, nats_url, roles, extra, &[])
    }

    /// Started without detection, whose `rules.set` and findings would add entries the
    /// tests do not publish (tests of detection use [`Serve::start_detecting`]).
    pub fn start_env(
        data: &Path,
        nats_url: &str,
        roles: &Roles,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        Serve::start_detecting(
            data,
            nats_url,
            roles,
            &[extra, &["--no-detect"]].concat(),
            env,
        )
    }

    pub fn start_detecting(
        data: &Path,
        nats_url: &str,
        roles: &Roles,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        let log = data.with_extension(format!(
            "log.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(DOCKET)
            .args(["serve", "--data"])
            .arg(data)
            .args([
                "--nats",
                nats_url,
                "--admin-key",
                &encode_base64(roles.admin.verifying_key().as_bytes()),
            ])
            .args(["--origin", "test.docket.local/ledger"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn docket serve");
        Serve {
            child,
            data: data.to_path_buf(),
            log,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "serve exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("serve did not stop on SIGTERM");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seq and head of a ledger, read through a secondary (works while serve runs).
pub fn head(data: &Path) -> Option<(u64, [u8; 32])> {
    Store::open_reader(&data.join("db")).ok()?.head().ok()
}

/// Waits until the ledger holds at least `n` producers' entries (after its genesis
/// policy); returns how many it holds. Fails at once if `serve` exited.
pub fn wait_for_entries(serve: &mut Serve, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = head(&serve.data)
            .map(|h| h.0)
            .unwrap_or(0)
            .saturating_sub(GENESIS_ENTRIES);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!(
                "serve exited with {status} at {n} entries: {}",
                serve.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (seq, event id) of every producer's entry in the chain (the genesis policy aside).
pub fn chain_ids(data: &Path) -> Vec<(u64, docket_schemas::EventId)> {
    chain_events(data)
        .into_iter()
        .map(|(seq, e)| (seq, e.id))
        .collect()
}

/// (seq, event) of every producer's entry in the chain (the genesis policy aside).
pub fn chain_events(data: &Path) -> Vec<(u64, docket_schemas::Event)> {
    let store = Store::open_reader(&data.join("db")).expect("open ledger");
    let mut out = Vec::new();
    for item in store.records(GENESIS_ENTRIES + 1).unwrap() {
        let (seq, record) = item.unwrap();
        let entry = docket_ledger::store::decode_record(seq, &record).unwrap();
        out.push((
            seq,
            Envelope::decode(entry.envelope).unwrap().event().unwrap(),
        ));
    }
    out
}

/// Quarantine reason codes, in transport order.
pub fn quarantine_codes(data: &Path) -> Vec<String> {
    let Ok(store) = Store::open_reader(&data.join("db")) else {
        return Vec::new();
    };
    store
        .quarantine()
        .unwrap()
        .iter()
        .map(|q| q.code.clone())
        .collect()
}

/// Runs `docket verify`; returns (exit code, stdout).
pub fn verify(data: &Path) -> (i32, String) {
    let o = docket(&["verify", "--data", data.to_str().unwrap()]);
    (
        o.status.code().unwrap_or(-1),
        stdout(&o) + &String::from_utf8_lossy(&o.stderr),
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    docket_ledger::transport::ensure_stream(&js)
        .await
        .expect("stream");
    js
}

/// Copies a directory tree (a stopped ledger), for tampering with a copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The subject an envelope belongs on: its event's kind's (`docket.events.<kind>`), or
/// `docket.events.unknown` when it does not decode (it is quarantined either way).
pub fn subject_of(envelope: &[u8]) -> String {
    let kind = docket_schemas::Envelope::decode(envelope)
        .ok()
        .and_then(|e| e.event().ok())
        .map_or_else(|| "unknown".to_string(), |e| e.kind().to_string());
    format!("docket.events.{kind}")
}

/// Waits until `serve` says it is serving; fails with its log if it exits or takes long.
pub fn wait_serving(serve: &mut Serve) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serve.log_text().contains("ledger serving") {
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "{}",
            serve.log_text()
        );
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A terminal the test owns: a tmux server on its own socket, one pane, killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(dir: &std::path::Path, command: &str) -> Tmux {
        let socket = dir.join("tmux.sock").to_str().unwrap().to_string();
        let ok = std::process::Command::new("tmux")
            .args([
                "-S",
                &socket,
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "36",
                command,
            ])
            .status()
            .expect("tmux is installed by scripts/setup.sh");
        assert!(ok.success(), "tmux did not start");
        Tmux { socket }
    }

    pub fn screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-S", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the pane printed, scrollback included.
    pub fn history(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-S", &self.socket, "capture-pane", "-p", "-J", "-S", "-"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-S", self.socket.as_str(), "send-keys"];
        args.extend(keys);
        assert!(
            std::process::Command::new("tmux")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }

    pub fn alternate_screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args([
                "-S",
                &self.socket,
                "display-message",
                "-p",
                "#{alternate_on}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the screen shows `text`; fails with what it shows instead.
    pub fn wait_for(&self, text: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "the terminal never showed {text:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-S", &self.socket, "kill-server"])
            .status();
    }
}
