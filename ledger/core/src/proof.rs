//! Checking proof documents offline: an inclusion proof (or receipt) and a consistency
//! proof, against a checkpoint signed by the ledger's key.
//!
//! Pure, and the one place the rule lives: `check-proof`, `check-evidence`, receipts and
//! `verify --since-checkpoint` all call these.

use docket_schemas::checkpoint::{Checkpoint, CheckpointError};
use docket_schemas::keys::decode_base64;
use docket_schemas::proof::{
    CONSISTENCY_FORMAT, ConsistencyProof, INCLUSION_FORMAT, InclusionProof, ProvenEntry,
};
use ed25519_dalek::VerifyingKey;

use crate::chain::{entry_hash, hex, parse_hash};
use crate::merkle::{Hash, PROOF_HASHES_MAX, leaf_hash, verify_consistency, verify_inclusion};

/// Why a proof document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofCheckError {
    #[error("not a {want} document (format {found:?})")]
    Format { want: &'static str, found: String },
    #[error("the proof is for origin {found:?}, not {want:?}")]
    Origin { want: String, found: String },
    // Not a `source`: the message already says it, and chains printed whole would repeat it.
    #[error("the checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error(
        "the proof carries no checkpoint of its new size: nothing in it is signed by the ledger"
    )]
    Unsigned,
    #[error(
        "the proof is for a tree of {proof} entries but its checkpoint signs {checkpoint}: a proof for another checkpoint"
    )]
    OtherCheckpoint { proof: u64, checkpoint: u64 },
    #[error("seq {seq} is not in a tree of {size} entries")]
    OutOfRange { seq: u64, size: u64 },
    #[error("{0} is not a 64-digit hex hash")]
    BadHash(String),
    #[error("the entry's envelope is not base64")]
    BadEnvelope,
    #[error("the entry's contents hash to {computed}, not the proof's {stated}")]
    EntryChanged { stated: String, computed: String },
    #[error(
        "the audit path does not lead to the checkpoint's root: entry {seq} is not in this tree"
    )]
    NotIncluded { seq: u64 },
    #[error("the roots do not match the checkpoints: {0}")]
    RootMismatch(&'static str),
    #[error("tree {old} is not a prefix of tree {new}: the consistency proof does not verify")]
    Inconsistent { old: u64, new: u64 },
}

/// The chain hash of a proven entry with `seq`, recomputed from its contents.
pub fn proven_entry_hash(seq: u64, e: &ProvenEntry) -> Result<Hash, ProofCheckError> {
    let prev = hash_of(&e.prev)?;
    let envelope = decode_base64(&e.envelope).ok_or(ProofCheckError::BadEnvelope)?;
    Ok(entry_hash(seq, &prev, e.received_us, &e.subject, &envelope))
}

/// Checks an inclusion proof (or receipt): the checkpoint is signed by `ledger_key` for
/// `origin`, its size is the proof's, the entry (if present) hashes to the stated hash,
/// and the audit path leads from that leaf to the checkpoint's root.
pub fn check_inclusion(
    p: &InclusionProof,
    origin: &str,
    ledger_key: &VerifyingKey,
) -> Result<Checkpoint, ProofCheckError> {
    if p.format != INCLUSION_FORMAT {
        return Err(ProofCheckError::Format {
            want: INCLUSION_FORMAT,
            found: p.format.clone(),
        });
    }
    same_origin(origin, &p.origin)?;
    let cp = Checkpoint::verify(&p.checkpoint, origin, ledger_key)
        .map_err(ProofCheckError::Checkpoint)?;
    same_origin(origin, &cp.origin)?;
    if cp.size != p.tree_size {
        return Err(ProofCheckError::OtherCheckpoint {
            proof: p.tree_size,
            checkpoint: cp.size,
        });
    }
    if p.seq == 0 || p.seq > cp.size {
        return Err(ProofCheckError::OutOfRange {
            seq: p.seq,
            size: cp.size,
        });
    }
    let stated = hash_of(&p.entry_hash)?;
    if let Some(e) = &p.entry {
        let computed = proven_entry_hash(p.seq, e)?;
        if computed != stated {
            return Err(ProofCheckError::EntryChanged {
                stated: p.entry_hash.clone(),
                computed: hex(&computed),
            });
        }
    }
    let path = hashes_of(&p.hashes)?;
    if !verify_inclusion(p.seq - 1, cp.size, &leaf_hash(&stated), &path, &cp.root) {
        return Err(ProofCheckError::NotIncluded { seq: p.seq });
    }
    Ok(cp)
}

/// Checks a consistency proof: the path verifies between the stated roots, and every
/// checkpoint it carries is signed by `ledger_key` and names the same root.
pub fn check_consistency(
    p: &ConsistencyProof,
    origin: &str,
    ledger_key: &VerifyingKey,
) -> Result<(), ProofCheckError> {
    if p.format != CONSISTENCY_FORMAT {
        return Err(ProofCheckError::Format {
            want: CONSISTENCY_FORMAT,
            found: p.format.clone(),
        });
    }
    same_origin(origin, &p.origin)?;
    if p.new_checkpoint.is_none() {
        return Err(ProofCheckError::Unsigned);
    }
    let (old_root, new_root) = (hash_of(&p.old_root)?, hash_of(&p.new_root)?);
    for (note, size, root, which) in [
        (&p.old_checkpoint, p.old_size, old_root, "old"),
        (&p.new_checkpoint, p.new_size, new_root, "new"),
    ] {
        if let Some(note) = note {
            let cp = Checkpoint::verify(note, origin, ledger_key)
                .map_err(ProofCheckError::Checkpoint)?;
            same_origin(origin, &cp.origin)?;
            if cp.size != size {
                return Err(ProofCheckError::OtherCheckpoint {
                    proof: size,
                    checkpoint: cp.size,
                });
            }
            if cp.root != root {
                return Err(ProofCheckError::RootMismatch(if which == "old" {
                    "the old checkpoint names another root"
                } else {
                    "the new checkpoint names another root"
                }));
            }
        }
    }
    let path = hashes_of(&p.hashes)?;
    if !verify_consistency(p.old_size, p.new_size, &old_root, &new_root, &path) {
        return Err(ProofCheckError::Inconsistent {
            old: p.old_size,
            new: p.new_size,
        });
    }
    Ok(())
}

fn same_origin(want: &str, found: &str) -> Result<(), ProofCheckError> {
    if want == found {
        Ok(())
    } else {
        Err(ProofCheckError::Origin {
            want: want.to_string(),
            found: found.to_string(),
        })
    }
}

/// A hash as documents write it: 64 lowercase hex digits, nothing else.
fn hash_of(text: &str) -> Result<Hash, ProofCheckError> {
    let lowercase = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    parse_hash(text)
        .filter(|_| lowercase)
        .ok_or_else(|| ProofCheckError::BadHash(text.chars().take(80).collect()))
}

fn hashes_of(texts: &[String]) -> Result<Vec<Hash>, ProofCheckError> {
    if texts.len() > PROOF_HASHES_MAX {
        return Err(ProofCheckError::BadHash(format!(
            "a path of {} hashes",
            texts.len()
        )));
    }
    texts.iter().map(|t| hash_of(t)).collect()
}
