//! The small tables: derived state (now or as of a point), findings, rejections and checkpoints.
//!
//! Each is built in memory from what the store already keeps, only when a
//! query names it. Rows go through JSON on their way to Arrow: these tables
//! are thousands of rows, not millions, and one schema per table stays readable.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use docket_ledger::projection::{self, PointState, Until};
use docket_ledger::state::VaultState;
use docket_ledger::store::Store;
use docket_schemas::Timestamp;
use serde_json::{Value, json};

use crate::QueryError;
use crate::detect::{Detection, Triage, TriageLog};

/// The tables this module builds, by name.
pub const SMALL_TABLES: &[&str] = &[
    "grants_state",
    "tokens_state",
    "approvals_state",
    "agents",
    "findings",
    "rejections",
    "checkpoints",
    "agent_first",
];

/// Which state the `*_state` and `agents` tables show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    Now,
    Seq(u64),
    Time(Timestamp),
}

impl AsOf {
    /// Parses a seq (digits) or a time as people write it (see [`Until::parse`]).
    pub fn parse(text: &str) -> Result<AsOf, QueryError> {
        match Until::parse(text)? {
            Until::Seq(seq) => Ok(AsOf::Seq(seq)),
            Until::Time(t) => Ok(AsOf::Time(t)),
            Until::End => Ok(AsOf::Now),
        }
    }

    pub fn until(self) -> Until {
        match self {
            AsOf::Now => Until::End,
            AsOf::Seq(seq) => Until::Seq(seq),
            AsOf::Time(t) => Until::Time(t),
        }
    }
}

enum Col {
    Text,
    Int,
    Time,
    Texts,
    Ints,
}

fn schema(cols: &[(&str, Col, bool)]) -> SchemaRef {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(name, col, nullable)| {
            let t = match col {
                Col::Text => DataType::Utf8,
                Col::Int => DataType::UInt64,
                Col::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                Col::Texts => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                Col::Ints => DataType::List(Arc::new(Field::new("item", DataType::UInt64, true))),
            };
            Field::new(*name, t, *nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

use Col::*;

static GRANTS_STATE: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("grant_id", Text, false),
        ("user", Text, false),
        ("agent", Text, false),
        ("audience", Text, false),
        ("scopes", Texts, false),
        ("status", Text, false),
        ("expires_at", Time, false),
        ("max_calls", Int, true),
        ("max_token_ttl_s", Int, true),
        ("approval_scopes", Texts, false),
        ("calls", Int, false),
        ("created_seq", Int, false),
        ("revoked_seq", Int, true),
        ("last_seq", Int, false),
    ])
});

static TOKENS_STATE: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("token_id", Text, false),
        ("token_hash", Text, false),
        ("grant_id", Text, false),
        ("user", Text, false),
        ("agent", Text, false),
        ("audience", Text, false),
        ("scopes", Texts, false),
        ("status", Text, false),
        ("issued_at", Time, false),
        ("expires_at", Time, false),
        ("approval_id", Text, true),
        ("uses", Int, false),
        ("issued_seq", Int, false),
        ("revoked_seq", Int, true),
        ("last_seq", Int, false),
    ])
});

static APPROVALS_STATE: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("approval_id", Text, false),
        ("grant_id", Text, false),
        ("user", Text, false),
        ("agent", Text, false),
        ("audience", Text, false),
        ("scopes", Texts, false),
        ("risk", Text, false),
        ("status", Text, false),
        ("binding_message", Text, false),
        ("requested_at", Time, false),
        ("expires_at", Time, false),
        ("decided_by", Text, true),
        ("method", Text, true),
        ("decided_at", Time, true),
        ("requested_seq", Int, false),
        ("decided_seq", Int, true),
    ])
});

static AGENT_FIRST: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("agent", Text, false),
        ("first_seq", Int, false),
        ("first_ts", Time, false),
    ])
});

static AGENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("agent", Text, false),
        ("user", Text, false),
        ("name", Text, false),
        ("public_key", Text, false),
        ("status", Text, false),
        ("registered_seq", Int, false),
        ("suspended_seq", Int, true),
        ("last_seq", Int, false),
    ])
});

static FINDINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("seq", Int, false),
        ("ts", Time, false),
        ("rule", Text, false),
        ("severity", Text, false),
        ("message", Text, false),
        ("evidence", Ints, false),
        ("agent", Text, true),
        ("finding", Text, false),
        ("source", Text, false),
        ("title", Text, true),
        ("user", Text, true),
        ("audience", Text, true),
        ("observed", Text, true),
        ("baseline", Text, true),
        ("recorded_seq", Int, true),
        ("triage", Text, false),
        ("triage_reason", Text, true),
        ("triaged_seq", Int, true),
        ("suppressed_seq", Int, true),
    ])
});

static REJECTIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("source_seq", Int, false),
        ("received", Time, true),
        ("subject", Text, false),
        ("code", Text, false),
        ("reason", Text, false),
        ("raw_base64", Text, false),
    ])
});

static CHECKPOINTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("tree_size", Int, false),
        ("origin", Text, false),
        ("root", Text, false),
        ("note", Text, false),
    ])
});

fn batch(schema: &SchemaRef, rows: &[Value]) -> Result<RecordBatch, QueryError> {
    let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn list(s: &BTreeSet<String>) -> Vec<&str> {
    s.iter().map(String::as_str).collect()
}

/// The vault state now (the stored projection) or replayed up to a point, and the time statuses are judged at.
pub fn state_at(store: &Store, as_of: AsOf) -> Result<PointState, QueryError> {
    Ok(projection::state_at(store, as_of.until())?)
}

/// `(name, schema, batch)` of the four state tables, sorted by the seq that created each row.
pub fn state_tables(
    state: &VaultState,
    at: Timestamp,
) -> Result<Vec<(&'static str, RecordBatch)>, QueryError> {
    let mut grants: Vec<_> = state.grants.values().collect();
    grants.sort_by_key(|g| g.created_seq);
    let grants: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({"grant_id": g.grant_id, "user": g.user, "agent": g.agent, "audience": g.audience,
            "scopes": list(&g.scopes), "status": g.status(at), "expires_at": g.expires_at.to_string(),
            "max_calls": g.max_calls, "max_token_ttl_s": g.max_token_ttl_s,
            "approval_scopes": g.approval.keys().collect::<Vec<_>>(), "calls": g.calls,
            "created_seq": g.created_seq, "revoked_seq": g.revoked_seq, "last_seq": g.last_seq})
        })
        .collect();
    let mut tokens: Vec<_> = state.tokens.values().collect();
    tokens.sort_by_key(|t| t.issued_seq);
    let tokens: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({"token_id": t.token_id, "token_hash": t.token_hash, "grant_id": t.grant_id, "user": t.user,
            "agent": t.agent, "audience": t.audience, "scopes": list(&t.scopes), "status": t.status(at),
            "issued_at": t.issued_at.to_string(), "expires_at": t.expires_at.to_string(), "approval_id": t.approval_id,
            "uses": t.uses, "issued_seq": t.issued_seq, "revoked_seq": t.revoked_seq, "last_seq": t.last_seq})
        })
        .collect();
    let mut approvals: Vec<_> = state.approvals.values().collect();
    approvals.sort_by_key(|a| a.requested_seq);
    let approvals: Vec<Value> = approvals
        .iter()
        .map(|a| {
            json!({"approval_id": a.approval_id, "grant_id": a.grant_id, "user": a.user, "agent": a.agent,
            "audience": a.audience, "scopes": list(&a.scopes), "risk": a.risk,
            "status": a.status(at), "binding_message": a.binding_message,
            "requested_at": a.requested_at.to_string(), "expires_at": a.expires_at.to_string(),
            "decided_by": a.decided_by, "method": a.method,
            "decided_at": a.decided_at.map(|t| t.to_string()), "requested_seq": a.requested_seq,
            "decided_seq": a.decided_seq})
        })
        .collect();
    let mut agents: Vec<_> = state.agents.values().collect();
    agents.sort_by_key(|a| a.registered_seq);
    let agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            json!({"agent": a.agent, "user": a.user, "name": a.name, "public_key": a.public_key,
            "status": if a.suspended_seq.is_some() { "suspended" } else { "active" },
            "registered_seq": a.registered_seq, "suspended_seq": a.suspended_seq, "last_seq": a.last_seq})
        })
        .collect();
    Ok(vec![
        ("grants_state", batch(&GRANTS_STATE, &grants)?),
        ("tokens_state", batch(&TOKENS_STATE, &tokens)?),
        ("approvals_state", batch(&APPROVALS_STATE, &approvals)?),
        ("agents", batch(&AGENTS, &agents)?),
    ])
}

/// Every finding: the policy violations the fold found and the detections recorded on the
/// chain, each with where triage has taken it, in the order of the entry that triggered it.
pub fn findings(
    store: &Store,
    detections: &[(u64, Detection)],
    triage: &TriageLog,
) -> Result<RecordBatch, QueryError> {
    let mut rows: Vec<(u64, Value)> = Vec::new();
    for f in store.findings()? {
        let id = format!("{}@{}", f.rule.as_str(), f.seq);
        let agent = f.agent.clone().unwrap_or_default();
        let t = triage.state_of(&id, f.rule.as_str(), &agent, f.ts, f.seq);
        let mut row = json!({"seq": f.seq, "ts": f.ts.to_string(), "rule": f.rule.as_str(),
            "severity": f.severity, "message": f.message, "evidence": f.evidence, "agent": f.agent,
            "finding": id, "source": "policy"});
        triage_columns(&mut row, &t);
        rows.push((f.seq, row));
    }
    for (recorded_seq, d) in detections {
        let t = triage.state_of(&d.id(), &d.rule_id, &d.agent, d.ts, *recorded_seq);
        let agent = (!d.agent.is_empty()).then_some(&d.agent);
        let message = format!("{}: {} (baseline: {})", d.title, d.observed, d.baseline);
        let mut row = json!({"seq": d.seq, "ts": d.ts.to_string(), "rule": d.rule_id,
            "severity": d.level, "message": message, "evidence": d.evidence, "agent": agent,
            "finding": d.id(), "source": "detection", "title": d.title, "user": d.user,
            "audience": d.audience, "observed": d.observed, "baseline": d.baseline,
            "recorded_seq": recorded_seq});
        triage_columns(&mut row, &t);
        rows.push((d.seq, row));
    }
    rows.sort_by_key(|(seq, _)| *seq);
    let rows: Vec<Value> = rows.into_iter().map(|(_, r)| r).collect();
    batch(&FINDINGS, &rows)
}

fn triage_columns(row: &mut Value, t: &Triage) {
    let status = if t.suppressed_by.is_some() && t.is_open_status() {
        "suppressed"
    } else {
        t.status.as_str()
    };
    row["triage"] = json!(status);
    row["triage_reason"] = json!(t.reason);
    row["triaged_seq"] = json!(t.decided_seq);
    row["suppressed_seq"] = json!(t.suppressed_by);
}

/// The quarantine: every envelope refused at the door, with its reason.
pub fn rejections(store: &Store) -> Result<RecordBatch, QueryError> {
    let rows: Vec<Value> = store
        .quarantine()?
        .into_iter()
        .map(|q| {
            // A receipt time outside the representable range is shown as it is not: as null.
            let received = Timestamp::from_micros(q.received_us).map(|t| t.to_string());
            json!({"source_seq": q.source_seq, "received": received, "subject": q.subject,
            "code": q.code, "reason": q.reason, "raw_base64": q.raw})
        })
        .collect();
    batch(&REJECTIONS, &rows)
}

/// Signed checkpoints: tree size, origin, root hash and the whole signed note.
pub fn checkpoints(store: &Store) -> Result<RecordBatch, QueryError> {
    let rows: Vec<Value> = store
        .checkpoints()?
        .into_iter()
        .map(|(size, note)| {
            let mut lines = note.lines();
            let origin = lines.next().unwrap_or_default().to_string();
            let _size = lines.next();
            let root = lines.next().unwrap_or_default().to_string();
            json!({"tree_size": size, "origin": origin, "root": root, "note": note})
        })
        .collect();
    batch(&CHECKPOINTS, &rows)
}

/// Each agent's first entry (its least seq) and that entry's `ts`, over the entries read so far.
/// An agent's first entry never changes once appended, so the table grows by folding in only
/// the entries after `through`: `serve`'s detector keeps one across windows (its learning
/// period starts there), a plain session builds one from seq 0, and both call [`Self::advance`].
#[derive(Clone, Debug, Default)]
pub struct AgentFirsts {
    firsts: std::collections::BTreeMap<String, (u64, i64)>,
    through: u64,
}

impl AgentFirsts {
    /// Folds in the entries `(through, to_seq]` of `events` in `ctx`.
    pub async fn advance(
        &mut self,
        ctx: &datafusion::prelude::SessionContext,
        to_seq: u64,
    ) -> Result<(), QueryError> {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::{Int64Type, UInt64Type};
        if to_seq <= self.through {
            return Ok(());
        }
        let from = self.through;
        let sql = format!(
            "SELECT e.agent, e.seq, CAST(e.ts AS BIGINT) AS t FROM events e \
             JOIN (SELECT agent, min(seq) AS seq FROM events \
                   WHERE seq > {from} AND seq <= {to_seq} AND agent IS NOT NULL GROUP BY agent) m \
               ON m.seq = e.seq \
             WHERE e.seq > {from} AND e.seq <= {to_seq}"
        );
        for b in ctx.sql(&sql).await?.collect().await? {
            let agents = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let agents = agents.as_string::<i32>();
            let seqs = b.column(1).as_primitive::<UInt64Type>();
            let ts = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                if agents.is_null(i) || seqs.is_null(i) || ts.is_null(i) {
                    continue;
                }
                self.firsts
                    .entry(agents.value(i).to_string())
                    .or_insert((seqs.value(i), ts.value(i)));
            }
        }
        self.through = to_seq;
        Ok(())
    }

    /// The `agent_first` table.
    pub fn table(&self) -> Result<RecordBatch, QueryError> {
        let rows: Vec<Value> = self
            .firsts
            .iter()
            .map(|(agent, (seq, t))| {
                let ts = Timestamp::from_micros(*t).map(|t| t.to_string());
                json!({"agent": agent, "first_seq": seq, "first_ts": ts})
            })
            .collect();
        batch(&AGENT_FIRST, &rows)
    }
}
