//! The ledger's side of witnessing: submit each checkpoint to the witnesses the config
//! names (C2SP tlog-witness add-checkpoint over NATS), keep their cosignatures, and stop
//! the ledger when a witness holds a checkpoint this store cannot extend.
//!
//! A witness that answers 409 with a size above this store's, or 422, has seen a history
//! this store does not continue: a restored old backup, a truncation, or a fork. The
//! ledger refuses to serve rather than sign a second, inconsistent history.

use std::sync::Arc;
use std::time::Duration;

use docket_core::witness::AddCheckpoint;
use docket_schemas::checkpoint::{Checkpoint, cosignature_key_id};
use docket_schemas::proof::{WitnessReply, witness_subject};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;

use crate::store::{Store, StoreError};
use crate::transport::SUBJECT_CHECKPOINTS;

/// Longest the ledger waits for one witness's answer.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest cosignature line kept (a name, and base64 of 76 bytes, is far shorter).
pub const COSIGNATURE_LINE_BYTES_MAX: usize = 512;

/// A witness the ledger submits to: its name in cosignatures and its key.
#[derive(Clone, Debug)]
pub struct WitnessKey {
    pub name: String,
    pub key: VerifyingKey,
}

/// What came of submitting one checkpoint to one witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cosigned; the line is stored.
    Cosigned,
    /// The witness already holds a newer checkpoint of this store.
    Superseded,
    /// The witness holds a larger checkpoint than this store has entries.
    Behind {
        witness: String,
        held: u64,
        ours: u64,
    },
    /// The witness holds a checkpoint this history does not extend.
    Forked { witness: String, why: String },
    /// Not answered; rollback protection waits for the witness.
    Unreachable { witness: String, why: String },
    /// Refused for a reason that is not the log's history (a configuration mismatch).
    Refused { witness: String, why: String },
}

impl Outcome {
    /// Whether the ledger must stop serving.
    pub fn is_alarm(&self) -> bool {
        matches!(self, Outcome::Behind { .. } | Outcome::Forked { .. })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Cosigned => write!(f, "cosigned"),
            Outcome::Superseded => write!(f, "already holds a newer checkpoint of this store"),
            Outcome::Behind {
                witness,
                held,
                ours,
            } => write!(
                f,
                "witness {witness} has cosigned a checkpoint of {held} entries but this store holds {ours}: \
                 it was rolled back, truncated or restored from an old backup. Refusing to serve; \
                 restore the newest data, or investigate"
            ),
            Outcome::Forked { witness, why } => write!(
                f,
                "witness {witness} holds a checkpoint this history does not extend ({why}): \
                 two histories were signed under this ledger's key. Refusing to serve"
            ),
            Outcome::Unreachable { witness, why } => {
                write!(f, "witness {witness} did not answer: {why}")
            }
            Outcome::Refused { witness, why } => write!(f, "witness {witness} refused: {why}"),
        }
    }
}

/// Submits the checkpoint note of `size` to `w`, proving consistency from whatever size
/// the witness says it holds; stores the cosignature it returns.
pub async fn submit(
    client: &async_nats::Client,
    store: &Store,
    w: &WitnessKey,
    size: u64,
    note: &str,
) -> Result<Outcome, StoreError> {
    let subject = witness_subject(&w.name, w.key.as_bytes());
    // "Behind" is judged against what this store holds, not the note's size: a note of
    // ours older than the newest must not read as a rollback.
    let (ours, _) = store.head()?;
    let mut old = 0u64;
    // At most two rounds: the first may only learn the size the witness holds.
    for _ in 0..2 {
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            store.consistency_path(old, size)?
        };
        let body = AddCheckpoint {
            old_size: old,
            proof,
            note: note.to_string(),
        }
        .encode();
        let asked = tokio::time::timeout(
            WITNESS_TIMEOUT,
            client.request(subject.clone(), body.into_bytes().into()),
        )
        .await;
        let msg = match asked {
            Err(_) => return Ok(unreachable(w, "timed out".into())),
            Ok(Err(e)) => return Ok(unreachable(w, e.to_string())),
            Ok(Ok(m)) => m,
        };
        let reply: WitnessReply = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => return Ok(unreachable(w, format!("unreadable answer: {e}"))),
        };
        let why = reply.error.clone().unwrap_or_default();
        match (reply.status, reply.size) {
            (200, _) => {
                let lines = reply.cosignatures.unwrap_or_default();
                // Only a line that verifies on its own, of a sane length, is kept: a stored
                // line is appended to every proof against this checkpoint.
                let id = cosignature_key_id(&w.name, w.key.as_bytes());
                let prefix = format!("\u{2014} {} ", w.name);
                let good = lines.lines().find(|l| {
                    l.starts_with(&prefix)
                        && l.len() <= COSIGNATURE_LINE_BYTES_MAX
                        && Checkpoint::verify_cosignature(&format!("{note}{l}\n"), &w.name, &w.key)
                            .is_ok()
                });
                let Some(line) = good else {
                    return Ok(Outcome::Refused {
                        witness: w.name.clone(),
                        why: "its cosignature does not verify with the configured key".into(),
                    });
                };
                store.put_cosignature(size, id, &format!("{line}\n"))?;
                return Ok(Outcome::Cosigned);
            }
            (409, Some(held)) if held > ours => {
                return Ok(Outcome::Behind {
                    witness: w.name.clone(),
                    held,
                    ours,
                });
            }
            // The witness holds a newer checkpoint of ours than this note: nothing is wrong.
            (409, Some(held)) if held > size => return Ok(Outcome::Superseded),
            // The right old size and still a conflict: the same size with another root.
            (409, Some(held)) if held == old => {
                return Ok(Outcome::Forked {
                    witness: w.name.clone(),
                    why,
                });
            }
            (409, Some(held)) => old = held,
            (422, _) => {
                return Ok(Outcome::Forked {
                    witness: w.name.clone(),
                    why,
                });
            }
            (status, _) => {
                return Ok(Outcome::Refused {
                    witness: w.name.clone(),
                    why: format!("{status}: {why}"),
                });
            }
        }
    }
    Ok(Outcome::Refused {
        witness: w.name.clone(),
        why: "its held size kept changing".into(),
    })
}

fn unreachable(w: &WitnessKey, why: String) -> Outcome {
    Outcome::Unreachable {
        witness: w.name.clone(),
        why,
    }
}

/// Submits the store's newest checkpoint to every witness; returns the first alarm.
pub async fn check_all(
    client: &async_nats::Client,
    store: &Store,
    witnesses: &[WitnessKey],
) -> Result<Option<Outcome>, StoreError> {
    let Some((size, note)) = store.last_checkpoint()? else {
        return Ok(None);
    };
    for w in witnesses {
        let outcome = submit(client, store, w, size, &note).await?;
        match &outcome {
            Outcome::Cosigned => tracing::info!(witness = %w.name, size, "checkpoint cosigned"),
            o if o.is_alarm() => return Ok(Some(outcome)),
            o => tracing::warn!(witness = %w.name, size, "{o}"),
        }
    }
    Ok(None)
}

/// Submits every checkpoint the ledger publishes; sends the first alarm on `alarm` and stops.
pub async fn follow(
    client: async_nats::Client,
    store: Arc<Store>,
    witnesses: Vec<WitnessKey>,
    alarm: tokio::sync::oneshot::Sender<Outcome>,
) -> Result<(), async_nats::SubscribeError> {
    let origin = match store.identity() {
        Ok(i) => i.origin,
        Err(e) => {
            tracing::error!(error = %e, "witnessing cannot start");
            return Ok(());
        }
    };
    let mut notes = client.subscribe(SUBJECT_CHECKPOINTS).await?;
    while let Some(msg) = notes.next().await {
        let Ok(note) = std::str::from_utf8(&msg.payload) else {
            continue;
        };
        // Another ledger on the same server publishes its own checkpoints here.
        let Ok(cp) = Checkpoint::parse_unverified(note) else {
            continue;
        };
        if cp.origin != origin {
            continue;
        }
        // The notice only says a checkpoint was signed; what is submitted is the store's own
        // newest note, so a replayed or forged notice submits nothing of anyone else's.
        let (size, note) = match store.last_checkpoint() {
            Ok(Some(newest)) => newest,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading the newest checkpoint");
                continue;
            }
        };
        for w in &witnesses {
            match submit(&client, &store, w, size, &note).await {
                Ok(Outcome::Cosigned) => {
                    tracing::info!(witness = %w.name, size, "checkpoint cosigned")
                }
                Ok(Outcome::Superseded) => {}
                Ok(o) if o.is_alarm() => {
                    tracing::error!("{o}");
                    let _ = alarm.send(o);
                    return Ok(());
                }
                Ok(o) => tracing::warn!(witness = %w.name, size, "{o}"),
                Err(e) => tracing::error!(witness = %w.name, error = %e, "submitting a checkpoint"),
            }
        }
    }
    Ok(())
}
