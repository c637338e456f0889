//! Proof documents made from the store (inclusion, consistency, receipts), and the
//! `docket.proofs.*` request/reply service that hands them to live clients.
//!
//! Proofs are computed from the stored Merkle nodes; whoever receives one checks it with
//! `docket_core::proof`, never trusting this side. Over NATS an inclusion proof carries
//! the entry's hash but not the entry: the hashes reveal nothing, the entry would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use docket_schemas::proof::{
    CONSISTENCY_FORMAT, ConsistencyProof, INCLUSION_FORMAT, InclusionProof, ProofReply,
    ProofRequest, ProvenEntry, RECEIPT_WAIT_MS_MAX, SUBJECT_PROOF_CHECKPOINT,
    SUBJECT_PROOF_CONSISTENCY, SUBJECT_PROOF_INCLUSION,
};
use futures::StreamExt;

use crate::chain::hex;
use crate::store::{Store, StoreError, decode_record};

/// Requests answered at once, at most; more wait in NATS's queue.
pub const PROOF_REQUESTS_INFLIGHT_MAX: usize = 64;
/// How often a receipt request that waits looks for its checkpoint.
const RECEIPT_POLL: Duration = Duration::from_millis(25);

/// Why a proof was not made.
#[derive(Debug, thiserror::Error)]
pub enum ProofsError {
    #[error("there is no entry {seq} (the chain has {size})")]
    NoEntry { seq: u64, size: u64 },
    #[error(
        "no checkpoint covers entry {seq} yet (the newest signs {newest} entries); ask again, or wait for one"
    )]
    NotYetCovered { seq: u64, newest: u64 },
    #[error(
        "no checkpoint was signed at size {0}; give the size of one (`docket sql \"SELECT tree_size FROM checkpoints\"` lists them)"
    )]
    NoCheckpointAt(u64),
    #[error("the request is malformed: {0}")]
    Request(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The inclusion proof of entry `seq` against the checkpoint of `tree_size` (the smallest
/// checkpoint that covers it when `None`), with the entry itself when `with_entry`.
pub fn inclusion(
    store: &Store,
    seq: u64,
    tree_size: Option<u64>,
    with_entry: bool,
) -> Result<InclusionProof, ProofsError> {
    let (size, _) = store.head()?;
    if seq == 0 || seq > size {
        return Err(ProofsError::NoEntry { seq, size });
    }
    let (tree_size, checkpoint) = match tree_size {
        Some(t) => (
            t,
            store
                .cosigned_checkpoint(t)?
                .ok_or(ProofsError::NoCheckpointAt(t))?,
        ),
        None => store
            .covering_checkpoint(seq)?
            .ok_or_else(|| ProofsError::NotYetCovered {
                seq,
                newest: store.last_checkpoint().ok().flatten().map_or(0, |(s, _)| s),
            })?,
    };
    if seq > tree_size {
        return Err(ProofsError::Request(format!(
            "entry {seq} is not in the tree of {tree_size}"
        )));
    }
    let record = store
        .record(seq)?
        .ok_or(ProofsError::NoEntry { seq, size })?;
    let entry = decode_record(seq, &record)?;
    let hashes = store.inclusion_path(seq - 1, tree_size)?;
    Ok(InclusionProof {
        format: INCLUSION_FORMAT.into(),
        origin: store.identity()?.origin,
        seq,
        tree_size,
        entry_hash: hex(&entry.hash),
        entry: with_entry.then(|| ProvenEntry {
            prev: hex(&entry.prev),
            received_us: entry.received_us,
            subject: entry.subject.to_string(),
            envelope: docket_schemas::encode_base64(entry.envelope),
        }),
        hashes: hashes.iter().map(|h| hex(h)).collect(),
        checkpoint,
    })
}

/// The consistency proof between the trees of `old` and `new` entries, with the
/// checkpoints signed at those sizes, if any.
pub fn consistency(store: &Store, old: u64, new: u64) -> Result<ConsistencyProof, ProofsError> {
    let (size, _) = store.head()?;
    if old > new || new > size {
        return Err(ProofsError::Request(format!(
            "sizes must satisfy old <= new <= {size} (the chain's size); got {old} and {new}"
        )));
    }
    // The new root must be one the ledger signed, or the proof shows nothing about it.
    let new_checkpoint = store
        .cosigned_checkpoint(new)?
        .ok_or(ProofsError::NoCheckpointAt(new))?;
    Ok(ConsistencyProof {
        format: CONSISTENCY_FORMAT.into(),
        origin: store.identity()?.origin,
        old_size: old,
        new_size: new,
        old_root: hex(&store.tree_root(old)?),
        new_root: hex(&store.tree_root(new)?),
        hashes: store
            .consistency_path(old, new)?
            .iter()
            .map(|h| hex(h))
            .collect(),
        old_checkpoint: store.cosigned_checkpoint(old)?,
        new_checkpoint: Some(new_checkpoint),
    })
}

/// Waits up to `wait` for a checkpoint that covers `seq`, asking the ledger for one.
pub async fn receipt(
    store: &Store,
    seq: u64,
    wait: Duration,
    want_checkpoint: &AtomicBool,
) -> Result<InclusionProof, ProofsError> {
    let deadline = Instant::now() + wait.min(Duration::from_millis(RECEIPT_WAIT_MS_MAX));
    loop {
        match inclusion(store, seq, None, false) {
            Err(ProofsError::NotYetCovered { .. }) if Instant::now() < deadline => {
                want_checkpoint.store(true, Ordering::Relaxed);
                tokio::time::sleep(RECEIPT_POLL).await;
                store.catch_up()?;
            }
            other => return other,
        }
    }
}

/// Answers `docket.proofs.*` until the subscriptions end.
pub async fn serve_proof_requests(
    client: async_nats::Client,
    store: Arc<Store>,
    want_checkpoint: Arc<AtomicBool>,
) -> Result<(), async_nats::SubscribeError> {
    let subs = futures::stream::select_all([
        client.subscribe(SUBJECT_PROOF_INCLUSION).await?,
        client.subscribe(SUBJECT_PROOF_CONSISTENCY).await?,
        client.subscribe(SUBJECT_PROOF_CHECKPOINT).await?,
    ]);
    subs.for_each_concurrent(PROOF_REQUESTS_INFLIGHT_MAX, |msg| {
        let (client, store, want) = (
            client.clone(),
            Arc::clone(&store),
            Arc::clone(&want_checkpoint),
        );
        async move {
            let Some(reply_to) = msg.reply.clone() else {
                return;
            };
            let reply = match answer(&store, &msg.subject, &msg.payload, &want).await {
                Ok(r) => r,
                Err(e) => ProofReply {
                    inclusion: None,
                    consistency: None,
                    checkpoint: None,
                    error: Some(e.to_string()),
                },
            };
            match serde_json::to_vec(&reply) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(reply_to, bytes.into()).await {
                        tracing::warn!(error = %e, "replying to a proof request");
                    }
                }
                Err(e) => tracing::error!(error = %e, "a proof reply did not serialise"),
            }
        }
    })
    .await;
    Ok(())
}

async fn answer(
    store: &Store,
    subject: &str,
    payload: &[u8],
    want: &AtomicBool,
) -> Result<ProofReply, ProofsError> {
    let req: ProofRequest = if payload.is_empty() {
        ProofRequest {
            seq: None,
            event_id: None,
            wait_ms: 0,
            old_size: None,
            new_size: None,
        }
    } else {
        serde_json::from_slice(payload).map_err(|e| ProofsError::Request(e.to_string()))?
    };
    let mut reply = ProofReply {
        inclusion: None,
        consistency: None,
        checkpoint: None,
        error: None,
    };
    match subject {
        SUBJECT_PROOF_INCLUSION => {
            // One deadline for the whole request: finding the entry and its checkpoint.
            let deadline =
                Instant::now() + Duration::from_millis(req.wait_ms.min(RECEIPT_WAIT_MS_MAX));
            let seq = match (req.seq, &req.event_id) {
                (Some(seq), None) => seq,
                (None, Some(id)) => {
                    let id = docket_schemas::EventId::parse(id)
                        .map_err(|e| ProofsError::Request(format!("event_id: {e}")))?;
                    // A gateway's record may still be on its way to the chain.
                    loop {
                        store.catch_up()?;
                        match store.seq_of(&id)? {
                            Some(seq) => break seq,
                            None if Instant::now() < deadline => {
                                tokio::time::sleep(RECEIPT_POLL).await
                            }
                            None => {
                                return Err(ProofsError::Request(format!(
                                    "no entry holds event {id} (yet)"
                                )));
                            }
                        }
                    }
                }
                _ => {
                    return Err(ProofsError::Request(
                        "give exactly one of `seq` and `event_id`".into(),
                    ));
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            reply.inclusion = Some(receipt(store, seq, left, want).await?);
        }
        SUBJECT_PROOF_CONSISTENCY => {
            let (Some(old), Some(new)) = (req.old_size, req.new_size) else {
                return Err(ProofsError::Request(
                    "`old_size` and `new_size` are required".into(),
                ));
            };
            store.catch_up()?;
            reply.consistency = Some(consistency(store, old, new)?);
        }
        _ => {
            store.catch_up()?;
            let newest = store.last_checkpoint()?.map(|(s, _)| s);
            reply.checkpoint = match newest {
                Some(size) => store.cosigned_checkpoint(size)?,
                None => None,
            };
        }
    }
    Ok(reply)
}
