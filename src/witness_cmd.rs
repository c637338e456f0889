//! `docket witness`: a process apart from the ledger that cosigns a log's checkpoint only
//! when it extends the last one it cosigned (C2SP tlog-witness `add-checkpoint`, over NATS).
//!
//! Requests are handled one at a time, so checking the old size and persisting the new
//! checkpoint are one step; the checkpoint is on disk (fsynced) before the cosignature
//! leaves. The rule itself is `docket_core::witness::judge`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_ledger::keyfile;
use docket_ledger::witness::{AddCheckpoint, Held, Refusal, judge};
use docket_schemas::checkpoint::Checkpoint;
use docket_schemas::proof::{
    SUBJECT_WITNESS_COSIGNED, WitnessCosigned, WitnessReply, witness_subject,
};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;

#[derive(Args)]
pub struct WitnessArgs {
    /// Directory for the witness's state: the latest checkpoint it cosigned for each log.
    #[arg(long)]
    pub data: PathBuf,
    /// The witness's own key file (`docket keys new --out witness.key`).
    #[arg(long)]
    pub key: PathBuf,
    /// The witness's name in its cosignatures, e.g. `witness.example/w1`.
    #[arg(long)]
    pub name: String,
    /// A log to follow, as ORIGIN=LEDGER_PUBLIC_KEY (base64); repeat for more logs.
    #[arg(long = "log", required = true, value_name = "ORIGIN=KEY")]
    pub logs: Vec<String>,
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    #[command(flatten)]
    pub nats_auth: crate::NatsAuthArgs,
}

/// The witness's memory: each followed log's key and the checkpoint it last cosigned.
struct Witness {
    dir: PathBuf,
    name: String,
    key: ed25519_dalek::SigningKey,
    logs: BTreeMap<String, VerifyingKey>,
    held: BTreeMap<String, Held>,
}

pub async fn run(args: WitnessArgs) -> Result<std::process::ExitCode> {
    let key = keyfile::read(&args.key)?;
    let mut logs = BTreeMap::new();
    for spec in &args.logs {
        let (origin, b64) = spec
            .split_once('=')
            .with_context(|| format!("--log {spec:?} is not ORIGIN=LEDGER_PUBLIC_KEY"))?;
        let bytes = docket_schemas::decode_public_key(b64).with_context(|| {
            format!("--log {origin}: the ledger key is not a base64 ed25519 key")
        })?;
        logs.insert(origin.to_string(), VerifyingKey::from_bytes(&bytes)?);
    }
    std::fs::create_dir_all(args.data.join("logs"))
        .with_context(|| format!("creating {}", args.data.display()))?;
    let mut witness = Witness {
        dir: args.data.clone(),
        name: args.name.clone(),
        key,
        held: BTreeMap::new(),
        logs,
    };
    witness.load()?;
    let client = docket_ledger::transport::connect(&args.nats, &args.nats_auth.auth()).await?;
    let subject = witness_subject(&args.name, witness.key.verifying_key().as_bytes());
    let mut sub = client.subscribe(subject.clone()).await?;
    tracing::info!(%subject, logs = witness.logs.len(), "witness listening");
    let mut shutdown = std::pin::pin!(crate::shutdown_signal());
    loop {
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => break,
            },
        };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let reply = match std::str::from_utf8(&msg.payload) {
            Err(_) => refusal(&Refusal::BadRequest("the request is not UTF-8".into())),
            Ok(body) => match witness.add_checkpoint(body) {
                Ok((line, cosigned)) => {
                    let notice = WitnessCosigned {
                        witness: witness.name.clone(),
                        public_key: docket_schemas::encode_base64(
                            witness.key.verifying_key().as_bytes(),
                        ),
                        note: cosigned,
                    };
                    if let Ok(bytes) = serde_json::to_vec(&notice)
                        && let Err(e) = client.publish(SUBJECT_WITNESS_COSIGNED, bytes.into()).await
                    {
                        tracing::warn!(error = %e, "publishing a cosignature");
                    }
                    WitnessReply {
                        status: 200,
                        cosignatures: Some(line),
                        size: None,
                        error: None,
                    }
                }
                Err(WitnessError::Refused(r)) => {
                    match r.status() {
                        // Evidence of a misbehaving log, kept in the witness's own log.
                        409 | 422 => tracing::error!(refusal = %r, "refused a checkpoint"),
                        _ => tracing::warn!(refusal = %r, "refused a checkpoint"),
                    }
                    refusal(&r)
                }
                Err(WitnessError::Persist(e)) => {
                    tracing::error!(error = %e, "could not persist a checkpoint; not cosigning");
                    WitnessReply {
                        status: 500,
                        cosignatures: None,
                        size: None,
                        error: Some(format!("the witness could not persist: {e}")),
                    }
                }
            },
        };
        let bytes = serde_json::to_vec(&reply)?;
        if let Err(e) = client.publish(reply_to, bytes.into()).await {
            tracing::warn!(error = %e, "replying to add-checkpoint");
        }
    }
    client.flush().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn refusal(r: &Refusal) -> WitnessReply {
    WitnessReply {
        status: r.status(),
        cosignatures: None,
        size: match r {
            Refusal::StaleSize { known, .. } => Some(*known),
            Refusal::RootConflict { size } => Some(*size),
            _ => None,
        },
        error: Some(r.to_string()),
    }
}

/// Why a checkpoint was not cosigned: the rule said no, or the witness could not persist it.
enum WitnessError {
    Refused(Refusal),
    Persist(std::io::Error),
}

impl Witness {
    fn file(&self, origin: &str) -> PathBuf {
        let digest = blake3::hash(origin.as_bytes());
        self.dir
            .join("logs")
            .join(format!("{}.checkpoint", &digest.to_hex()[..32]))
    }

    /// Reads every followed log's last cosigned checkpoint, checking each again.
    fn load(&mut self) -> Result<()> {
        for (origin, key) in &self.logs {
            let path = self.file(origin);
            let note = match std::fs::read_to_string(&path) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let cp = Checkpoint::verify(&note, origin, key).with_context(|| {
                format!(
                    "{} does not hold a checkpoint of {origin} signed by its key",
                    path.display()
                )
            })?;
            if cp.origin != *origin {
                bail!("{} holds a checkpoint of {:?}", path.display(), cp.origin);
            }
            self.held.insert(
                origin.clone(),
                Held {
                    size: cp.size,
                    root: cp.root,
                },
            );
        }
        Ok(())
    }

    /// Judges, persists, then cosigns: returns the cosignature line and the cosigned note.
    fn add_checkpoint(&mut self, body: &str) -> Result<(String, String), WitnessError> {
        let req = AddCheckpoint::parse(body).map_err(WitnessError::Refused)?;
        let origin = Checkpoint::parse_unverified(&req.note)
            .map(|c| c.origin)
            .map_err(|e| WitnessError::Refused(Refusal::BadRequest(e.to_string())))?;
        let cp = judge(&req, |o| self.logs.get(o), self.held.get(&origin))
            .map_err(WitnessError::Refused)?;
        if self.held.get(&origin).map(|h| h.size) != Some(cp.size) {
            persist(&self.file(&origin), req.note.as_bytes()).map_err(WitnessError::Persist)?;
            self.held.insert(
                origin,
                Held {
                    size: cp.size,
                    root: cp.root,
                },
            );
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| WitnessError::Persist(std::io::Error::other(e)))?
            .as_secs();
        let line = Checkpoint::cosign_note(&req.note, &self.name, &self.key, now)
            .map_err(|e| WitnessError::Refused(Refusal::BadRequest(e.to_string())))?;
        let cosigned = format!("{}{line}", req.note);
        Ok((line, cosigned))
    }
}

/// Writes a file so that a crash leaves the old one or the new one, never a torn one.
fn persist(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("checkpoint"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
