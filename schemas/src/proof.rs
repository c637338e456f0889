//! Proofs as documents: an entry's inclusion proof (also a receipt), a consistency proof,
//! and the NATS requests that ask a ledger for them (docs/FORMAT.md §11).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `format` of an inclusion proof.
pub const INCLUSION_FORMAT: &str = "docket.inclusion/v1";
/// `format` of a consistency proof.
pub const CONSISTENCY_FORMAT: &str = "docket.consistency/v1";
/// Subject of inclusion-proof requests (`ProofRequest::Inclusion`).
pub const SUBJECT_PROOF_INCLUSION: &str = "docket.proofs.inclusion";
/// Subject of consistency-proof requests (`ProofRequest::Consistency`).
pub const SUBJECT_PROOF_CONSISTENCY: &str = "docket.proofs.consistency";
/// Subject of requests for the newest checkpoint, with its cosignatures.
pub const SUBJECT_PROOF_CHECKPOINT: &str = "docket.proofs.checkpoint";
/// Longest a receipt request may ask to wait for a covering checkpoint, in milliseconds.
pub const RECEIPT_WAIT_MS_MAX: u64 = 30_000;

/// One chain entry in full, so a checker recomputes its hash (docs/FORMAT.md §2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvenEntry {
    /// Hex of the previous entry's hash.
    pub prev: String,
    pub received_us: i64,
    pub subject: String,
    /// Base64 of the exact envelope bytes.
    pub envelope: String,
}

/// That the entry with `seq` is leaf `seq - 1` of the tree the checkpoint signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// Always `docket.inclusion/v1`.
    pub format: String,
    pub origin: String,
    pub seq: u64,
    /// Size of the tree the proof is for; the checkpoint's size.
    pub tree_size: u64,
    /// Hex of the entry's chain hash, which is the leaf's data.
    pub entry_hash: String,
    /// The entry itself, when the asker may see it; without it only the hash is proven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<ProvenEntry>,
    /// Hex of the audit path, deepest sibling first (RFC 6962 PATH).
    pub hashes: Vec<String>,
    /// The C2SP checkpoint note of size `tree_size`, with any witness cosignatures.
    pub checkpoint: String,
}

/// That the tree of `old_size` entries is a prefix of the tree of `new_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// Always `docket.consistency/v1`.
    pub format: String,
    pub origin: String,
    pub old_size: u64,
    pub new_size: u64,
    /// Hex roots of the two trees.
    pub old_root: String,
    pub new_root: String,
    /// Hex of RFC 6962 PROOF(old_size, D[new_size]).
    pub hashes: Vec<String>,
    /// The ledger's checkpoint notes at the two sizes, where it signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_checkpoint: Option<String>,
}

/// A request on one of the `docket.proofs.*` subjects (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRequest {
    /// Inclusion: the entry to prove, by seq...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// ...or by its event id (a gateway answer's `docket-record` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Inclusion: wait up to this long for a checkpoint that covers `seq` (a receipt).
    #[serde(default)]
    pub wait_ms: u64,
    /// Consistency: the two sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
}

/// The answer on every `docket.proofs.*` subject: exactly one of the three.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<InclusionProof>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyProof>,
    /// `docket.proofs.checkpoint`: the newest checkpoint note, with cosignatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where witnesses announce each cosigned checkpoint (`WitnessCosigned`), for monitors.
pub const SUBJECT_WITNESS_COSIGNED: &str = "docket.witness.cosigned";

/// The subject a witness takes add-checkpoint requests on:
/// `docket.witness.<hex of its cosignature key id>.add-checkpoint`.
pub fn witness_subject(name: &str, public_key: &[u8; 32]) -> String {
    let id = crate::checkpoint::cosignature_key_id(name, public_key);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("docket.witness.{hex}.add-checkpoint")
}

/// A witness's answer to add-checkpoint, with the HTTP status C2SP tlog-witness names:
/// 200 (cosignature lines), 400, 403, 404, 409 (`size`: the size it holds), 422, 500.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WitnessReply {
    pub status: u16,
    /// On 200: note signature lines (`— name base64`), each ending in a newline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosignatures: Option<String>,
    /// On 409: the size of the checkpoint the witness holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Published by a witness on `docket.witness.cosigned` after each cosignature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WitnessCosigned {
    pub witness: String,
    /// Base64 of the witness's ed25519 public key.
    pub public_key: String,
    /// The checkpoint note with the witness's cosignature line appended.
    pub note: String,
}

/// `format` of an evidence bundle.
pub const EVIDENCE_FORMAT: &str = "docket.evidence/v1";

/// A witness's name and public key (base64), as a bundle lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WitnessPublicKey {
    pub name: String,
    pub public_key: String,
}

/// An answer to an auditor's query with everything needed to check it offline: the rows,
/// every entry they rest on with its inclusion proof, one checkpoint, and the public keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundle {
    /// Always `docket.evidence/v1`.
    pub format: String,
    pub origin: String,
    /// Base64 of the key that signs the ledger's checkpoints.
    pub ledger_public_key: String,
    /// Witnesses whose cosignatures the checkpoint carries and the checker should demand.
    pub witnesses: Vec<WitnessPublicKey>,
    /// The query, as asked.
    pub sql: String,
    pub columns: Vec<String>,
    /// Every cell as text, NULL as the empty string.
    pub rows: Vec<Vec<String>>,
    /// The checkpoint note every proof is against, with its cosignatures.
    pub checkpoint: String,
    /// One inclusion proof, with the entry, for each distinct seq in the rows, by seq.
    pub entries: Vec<InclusionProof>,
}
