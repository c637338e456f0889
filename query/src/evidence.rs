//! Evidence bundles: an auditor's answer with every entry it rests on, their inclusion
//! proofs and one checkpoint (`docket evidence`), and the offline check that the rows
//! follow from those entries and the entries are in the log (`docket check-evidence`).
//!
//! "Follow from" is checked by running the same SQL again over only the bundle's entries,
//! with the same row derivation (`EventRows`) and views as `docket sql`: a query over the
//! events table and its views whose rows each rest on their own entry reproduces exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::MemTable;
use docket_ledger::chain::{Entry, parse_hash};
use docket_ledger::proof::{ProofCheckError, check_inclusion};
use docket_ledger::proofs::{self, ProofsError};
use docket_ledger::store::Store;
use docket_schemas::checkpoint::{Checkpoint, CheckpointError};
use docket_schemas::keys::{decode_base64, decode_public_key, encode_base64};
use docket_schemas::proof::{EVIDENCE_FORMAT, EvidenceBundle, InclusionProof, WitnessPublicKey};
use ed25519_dalek::VerifyingKey;

use crate::QueryError;
use crate::render::{cast_batch, text_cells};
use crate::rows::{EVENTS_SCHEMA, EventRows};
use crate::session::{
    AuditSession, SessionOptions, VIEWS, bounded_context, plan_read_only, query_schema,
    read_only_statement,
};

/// Rows a bundle holds at most: each brings its entry and proof.
pub const EVIDENCE_ROWS_MAX: usize = 100_000;
/// Longest the re-run of a bundle's query may take.
pub const RERUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Memory the re-run's operators may hold (a bundle comes from someone else).
pub const RERUN_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Why a bundle was not made, or is refused.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(
        "the answer has no `seq` column: evidence needs each row's entry (add seq to the SELECT)"
    )]
    NoSeq,
    #[error("row {row}: seq {text:?} is not an entry number")]
    BadSeq { row: usize, text: String },
    #[error("the answer has more than {EVIDENCE_ROWS_MAX} rows; narrow the query")]
    TooManyRows,
    #[error("the ledger has signed no checkpoint yet; wait for one (checkpoint_every_s)")]
    NoCheckpoint,
    #[error(
        "entry {seq} is newer than the newest checkpoint ({size} entries); wait for the next one"
    )]
    NotCovered { seq: u64, size: u64 },
    #[error("not an evidence bundle (format {0:?}, expected {EVIDENCE_FORMAT})")]
    Format(String),
    #[error("the bundle names ledger key {0:?}, which is not a base64 ed25519 key")]
    BadKey(String),
    #[error(
        "the bundle is signed by key {found}, not the ledger key you trust ({trusted}): refused"
    )]
    UnknownKey { found: String, trusted: String },
    #[error("the bundle's checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("witness {name}: {why}")]
    Witness { name: String, why: String },
    #[error("entry {seq}: {source}")]
    Proof { seq: u64, source: ProofCheckError },
    #[error(
        "entry {seq}'s proof is against the tree of {proof} entries, not the bundle's checkpoint of {bundle}: a proof for another checkpoint"
    )]
    OtherCheckpoint { seq: u64, proof: u64, bundle: u64 },
    #[error("entry {seq} is proven by hash only; evidence needs the entry itself")]
    NoEntry { seq: u64 },
    #[error("entry {0} appears twice")]
    Duplicate(u64),
    #[error("row {row} rests on entry {seq}, which the bundle does not hold (removed?)")]
    MissingEntry { row: usize, seq: u64 },
    #[error("the rows do not follow from the entries: {0}")]
    RowsDiffer(String),
    #[error("the query cannot be answered from the bundle's entries alone: {0}")]
    NotDerivable(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Proofs(#[from] ProofsError),
    #[error(transparent)]
    Store(#[from] docket_ledger::store::StoreError),
}

/// What a check found: a bundle that passed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Checked {
    pub origin: String,
    pub rows: usize,
    pub entries: usize,
    pub checkpoint_size: u64,
    /// Witnesses whose cosignature on the checkpoint verified.
    pub witnesses: Vec<String>,
    /// Whether the ledger key was given by the checker (else the bundle's own was used).
    pub key_pinned: bool,
}

/// Runs `sql` on the ledger in `data` and bundles its rows with their entries and proofs
/// against the newest checkpoint; the bundle is checked before it is returned.
pub async fn make(
    data: &Path,
    sql: &str,
    witnesses: Vec<WitnessPublicKey>,
    options: SessionOptions,
) -> Result<EvidenceBundle, EvidenceError> {
    let mut session = AuditSession::open(data, options).await?;
    let (batches, more) = session.query_limited(sql, EVIDENCE_ROWS_MAX).await?;
    if more {
        return Err(EvidenceError::TooManyRows);
    }
    let (columns, rows) = text_cells(&batches)?;
    let seqs = row_seqs(&columns, &rows)?;
    let store = Store::open_reader(&data.join("db"))?;
    let (size, _) = store
        .last_checkpoint()?
        .ok_or(EvidenceError::NoCheckpoint)?;
    let checkpoint = store
        .cosigned_checkpoint(size)?
        .ok_or(EvidenceError::NoCheckpoint)?;
    let wanted: BTreeSet<u64> = seqs.iter().copied().collect();
    if let Some(seq) = wanted.iter().find(|s| **s > size) {
        return Err(EvidenceError::NotCovered { seq: *seq, size });
    }
    let entries = wanted
        .iter()
        .map(|seq| proofs::inclusion(&store, *seq, Some(size), true))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = store.identity()?;
    let bundle = EvidenceBundle {
        format: EVIDENCE_FORMAT.into(),
        origin: identity.origin,
        ledger_public_key: identity.ledger_public_key,
        witnesses,
        sql: sql.to_string(),
        columns,
        rows,
        checkpoint,
        entries,
    };
    check(&bundle, None, &[]).await?;
    Ok(bundle)
}

/// Each row's seq, from the `seq` column.
fn row_seqs(columns: &[String], rows: &[Vec<String>]) -> Result<Vec<u64>, EvidenceError> {
    let at = columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case("seq"))
        .ok_or(EvidenceError::NoSeq)?;
    rows.iter()
        .enumerate()
        .map(|(row, cells)| {
            let text = cells.get(at).map(String::as_str).unwrap_or("");
            text.parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| EvidenceError::BadSeq {
                    row: row + 1,
                    text: text.to_string(),
                })
        })
        .collect()
}

/// Checks a bundle offline: the checkpoint is signed by the trusted ledger key (the
/// bundle's own when none is given) and cosigned by every witness listed or demanded;
/// every entry is proven in that checkpoint's tree; and the query re-run over only the
/// bundle's entries gives exactly the bundle's rows.
pub async fn check(
    bundle: &EvidenceBundle,
    trusted: Option<&VerifyingKey>,
    demanded: &[(String, VerifyingKey)],
) -> Result<Checked, EvidenceError> {
    if bundle.format != EVIDENCE_FORMAT {
        return Err(EvidenceError::Format(bundle.format.clone()));
    }
    if bundle.rows.len() > EVIDENCE_ROWS_MAX || bundle.entries.len() > EVIDENCE_ROWS_MAX {
        return Err(EvidenceError::TooManyRows);
    }
    let stated = decode_public_key(&bundle.ledger_public_key)
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| EvidenceError::BadKey(bundle.ledger_public_key.clone()))?;
    if let Some(t) = trusted
        && *t != stated
    {
        return Err(EvidenceError::UnknownKey {
            found: bundle.ledger_public_key.clone(),
            trusted: encode_base64(t.as_bytes()),
        });
    }
    let cp = Checkpoint::verify(&bundle.checkpoint, &bundle.origin, &stated)
        .map_err(EvidenceError::Checkpoint)?;
    let mut witnesses = Vec::new();
    let listed = bundle.witnesses.iter().map(|w| {
        decode_public_key(&w.public_key)
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .map(|k| (w.name.clone(), k))
            .ok_or_else(|| EvidenceError::Witness {
                name: w.name.clone(),
                why: "its public key is not a base64 ed25519 key".into(),
            })
    });
    let listed = listed.collect::<Result<Vec<_>, _>>()?;
    for (name, key) in listed.iter().chain(demanded) {
        Checkpoint::verify_cosignature(&bundle.checkpoint, name, key).map_err(|e| {
            EvidenceError::Witness {
                name: name.clone(),
                why: e.to_string(),
            }
        })?;
        witnesses.push(name.clone());
    }
    let mut by_seq = BTreeMap::new();
    for p in &bundle.entries {
        if p.tree_size != cp.size || p.checkpoint.split("\n\n").next() != Some(cp.body().trim_end())
        {
            return Err(EvidenceError::OtherCheckpoint {
                seq: p.seq,
                proof: p.tree_size,
                bundle: cp.size,
            });
        }
        check_inclusion(p, &bundle.origin, &stated)
            .map_err(|source| EvidenceError::Proof { seq: p.seq, source })?;
        if p.entry.is_none() {
            return Err(EvidenceError::NoEntry { seq: p.seq });
        }
        if by_seq.insert(p.seq, p).is_some() {
            return Err(EvidenceError::Duplicate(p.seq));
        }
    }
    for (row, seq) in row_seqs(&bundle.columns, &bundle.rows)?
        .into_iter()
        .enumerate()
    {
        if !by_seq.contains_key(&seq) {
            return Err(EvidenceError::MissingEntry { row: row + 1, seq });
        }
    }
    let (columns, rows) = rerun(by_seq.values().copied(), &bundle.sql).await?;
    if columns != bundle.columns {
        return Err(EvidenceError::RowsDiffer(format!(
            "the query gives columns {columns:?}, the bundle has {:?}",
            bundle.columns
        )));
    }
    let (mut ours, mut theirs) = (rows, bundle.rows.clone());
    ours.sort();
    theirs.sort();
    if ours != theirs {
        let why = match ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            _ if ours.len() != theirs.len() => format!(
                "the query over the entries gives {} rows, the bundle has {}",
                ours.len(),
                theirs.len()
            ),
            Some(i) => format!(
                "a row differs: the entries give {:?}, the bundle says {:?}",
                ours[i], theirs[i]
            ),
            None => "the rows differ".into(),
        };
        return Err(EvidenceError::RowsDiffer(why));
    }
    Ok(Checked {
        origin: bundle.origin.clone(),
        rows: bundle.rows.len(),
        entries: bundle.entries.len(),
        checkpoint_size: cp.size,
        witnesses,
        key_pinned: trusted.is_some(),
    })
}

/// Runs `sql` over an events table made of only these (already proven) entries.
async fn rerun<'a>(
    entries: impl Iterator<Item = &'a InclusionProof>,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<String>>), EvidenceError> {
    let mut rows = EventRows::with_capacity(0);
    for p in entries {
        let Some(e) = &p.entry else {
            return Err(EvidenceError::NoEntry { seq: p.seq });
        };
        let bad = |why: &str| EvidenceError::Proof {
            seq: p.seq,
            source: ProofCheckError::BadHash(why.to_string()),
        };
        let envelope = decode_base64(&e.envelope).ok_or_else(|| bad("envelope"))?;
        let entry = Entry {
            seq: p.seq,
            hash: parse_hash(&p.entry_hash).ok_or_else(|| bad("entry_hash"))?,
            prev: parse_hash(&e.prev).ok_or_else(|| bad("prev"))?,
            received_us: e.received_us,
            subject: &e.subject,
            envelope: &envelope,
        };
        rows.push(&entry)?;
    }
    let schema = query_schema(&EVENTS_SCHEMA);
    let batch = cast_batch(&rows.finish()?, &schema)?;
    let ctx = bounded_context(1, RERUN_MEMORY_BYTES)?;
    let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(QueryError::from)?;
    ctx.register_table("events", Arc::new(table))
        .map_err(QueryError::from)?;
    for (name, view) in VIEWS {
        ctx.sql(&format!("CREATE VIEW {name} AS {view}"))
            .await
            .map_err(QueryError::from)?;
    }
    let statement = read_only_statement(&ctx, sql)?;
    let known: BTreeSet<&str> = std::iter::once("events")
        .chain(VIEWS.iter().map(|(n, _)| *n))
        .collect();
    let names = ctx
        .state()
        .resolve_table_references(&statement)
        .map_err(QueryError::from)?;
    if let Some(other) = names.iter().find(|r| !known.contains(r.table())) {
        return Err(EvidenceError::NotDerivable(format!(
            "it reads {}, which is derived state, not entries; evidence covers `events` and its views ({})",
            other.table(),
            known.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let df = plan_read_only(&ctx, statement).await?;
    let batches = tokio::time::timeout(RERUN_TIMEOUT, df.collect())
        .await
        .map_err(|_| QueryError::Timeout(RERUN_TIMEOUT))?
        .map_err(QueryError::from)?;
    Ok(text_cells(&batches)?)
}
