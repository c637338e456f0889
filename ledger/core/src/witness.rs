//! A witness's judgement of a submitted checkpoint, with C2SP `tlog-witness` semantics:
//! the request body, and which checkpoints it may cosign.
//!
//! Pure: the caller holds the witness's latest cosigned checkpoint per log, persists the
//! accepted one atomically with the check, and only then signs.

use docket_schemas::checkpoint::{Checkpoint, CheckpointError};
use docket_schemas::keys::{decode_base64, encode_base64};
use ed25519_dalek::VerifyingKey;

use crate::merkle::{Hash, PROOF_HASHES_MAX, verify_consistency};

/// Longest add-checkpoint request accepted, in bytes.
pub const REQUEST_BYTES_MAX: usize = 32 * 1024;

/// An add-checkpoint request: the size the submitter believes the witness holds, a
/// consistency proof from it, and the new checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub note: String,
}

/// Why a witness does not cosign. Each maps to the HTTP status tlog-witness names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key: {0}")]
    BadSignature(CheckpointError),
    #[error(
        "old size {claimed} is not the size this witness holds ({known}): stale, or a rollback"
    )]
    StaleSize { claimed: u64, known: u64 },
    #[error("size {size} was already cosigned with another root: the log forked")]
    RootConflict { size: u64 },
    #[error(
        "the consistency proof from size {old} to {new} does not verify: the log forked or rewrote history"
    )]
    BadProof { old: u64, new: u64 },
}

impl Refusal {
    /// The HTTP status C2SP tlog-witness gives this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::BadSignature(_) => 403,
            Refusal::StaleSize { .. } | Refusal::RootConflict { .. } => 409,
            Refusal::BadProof { .. } => 422,
        }
    }
}

/// The latest checkpoint a witness cosigned for one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub size: u64,
    pub root: Hash,
}

impl AddCheckpoint {
    /// The request body: `old N`, one base64 hash per line, an empty line, the note.
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&encode_base64(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    pub fn parse(body: &str) -> Result<AddCheckpoint, Refusal> {
        let bad = |why: &str| Refusal::BadRequest(why.to_string());
        if body.len() > REQUEST_BYTES_MAX {
            return Err(bad("request is too long"));
        }
        let (head, note) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|s| *s == "0" || !s.starts_with('0'))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line is not `old <size>`"))?;
        let proof = lines
            .map(|l| {
                decode_base64(l)
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 32-byte hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() >= PROOF_HASHES_MAX {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(AddCheckpoint {
            old_size: old,
            proof,
            note: note.to_string(),
        })
    }
}

/// Decides whether a witness holding `held` for the log may cosign `req`; returns the
/// checkpoint to persist and cosign. `log_key` finds the log's key by origin.
pub fn judge<'k>(
    req: &AddCheckpoint,
    log_key: impl Fn(&str) -> Option<&'k VerifyingKey>,
    held: Option<&Held>,
) -> Result<Checkpoint, Refusal> {
    let stated =
        Checkpoint::parse_unverified(&req.note).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let key = log_key(&stated.origin).ok_or_else(|| Refusal::UnknownLog(stated.origin.clone()))?;
    let cp = Checkpoint::verify(&req.note, &stated.origin, key).map_err(Refusal::BadSignature)?;
    if req.old_size > cp.size {
        return Err(Refusal::BadRequest(format!(
            "old size {} is larger than the checkpoint's {}",
            req.old_size, cp.size
        )));
    }
    let known = held.map_or(0, |h| h.size);
    if req.old_size != known {
        return Err(Refusal::StaleSize {
            claimed: req.old_size,
            known,
        });
    }
    match held {
        None => {
            if !req.proof.is_empty() {
                return Err(Refusal::BadRequest(
                    "a proof from size 0 must be empty".into(),
                ));
            }
        }
        Some(h) if h.size == cp.size => {
            if h.root != cp.root {
                return Err(Refusal::RootConflict { size: cp.size });
            }
        }
        Some(h) => {
            if !verify_consistency(h.size, cp.size, &h.root, &cp.root, &req.proof) {
                return Err(Refusal::BadProof {
                    old: h.size,
                    new: cp.size,
                });
            }
        }
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{CompactRange, NodeId, consistency_proof, leaf_hash};
    use ed25519_dalek::SigningKey;
    use std::collections::HashMap;

    const ORIGIN: &str = "docket.test/ledger";

    struct Log {
        range: CompactRange,
        nodes: HashMap<NodeId, Hash>,
        key: SigningKey,
    }

    impl Log {
        fn new(seed: u8) -> Log {
            Log {
                range: CompactRange::default(),
                nodes: HashMap::new(),
                key: SigningKey::from_bytes(&[1; 32]),
            }
            .grow(seed, 0)
        }
        fn grow(mut self, seed: u8, n: u64) -> Log {
            for i in 0..n {
                let leaf = leaf_hash(&[seed ^ (i as u8); 32]);
                self.range.push(leaf, |id, h| {
                    self.nodes.insert(id, h);
                });
            }
            self
        }
        fn note(&self) -> String {
            Checkpoint {
                origin: ORIGIN.into(),
                size: self.range.size(),
                root: self.range.root(),
            }
            .sign(ORIGIN, &self.key)
        }
        fn request(&self, old: u64) -> AddCheckpoint {
            let mut lookup = |id: NodeId| self.nodes.get(&id).copied().ok_or(());
            AddCheckpoint {
                old_size: old,
                proof: consistency_proof(old, self.range.size(), &mut lookup).unwrap(),
                note: self.note(),
            }
        }
    }

    #[test]
    fn a_witness_cosigns_growth_and_refuses_staleness_forks_and_strangers() {
        let log = Log::new(0).grow(0, 10);
        let vk = log.key.verifying_key();
        let keys = |o: &str| (o == ORIGIN).then_some(&vk);
        let first = judge(&log.request(0), keys, None).unwrap();
        let held = Held {
            size: first.size,
            root: first.root,
        };
        let log = log.grow(0, 7);
        let req = log.request(10);
        assert_eq!(
            AddCheckpoint::parse(&req.encode()).as_ref(),
            Ok(&req),
            "the body round-trips"
        );
        assert_eq!(judge(&req, keys, Some(&held)).unwrap().size, 17);
        // Stale: the submitter thinks the witness holds less than it does.
        let stale = judge(&log.request(3), keys, Some(&held)).unwrap_err();
        assert_eq!(stale.status(), 409);
        // A fork: another history from the same key, same old size.
        let fork = Log::new(0).grow(0, 5).grow(9, 12);
        let err = judge(&fork.request(10), keys, Some(&held)).unwrap_err();
        assert_eq!(err, Refusal::BadProof { old: 10, new: 17 });
        assert_eq!(err.status(), 422);
        let same_size = Log::new(0).grow(3, 10);
        assert_eq!(
            judge(&same_size.request(10), keys, Some(&held)).unwrap_err(),
            Refusal::RootConflict { size: 10 }
        );
        let none = |_: &str| None;
        assert_eq!(judge(&req, none, Some(&held)).unwrap_err().status(), 404);
        let other = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let wrong = |_: &str| Some(&other);
        assert_eq!(judge(&req, wrong, Some(&held)).unwrap_err().status(), 403);
        assert_eq!(
            AddCheckpoint::parse("old 01\n\nx").unwrap_err().status(),
            400
        );
    }
}
