//! The `events` table's columns, and how chain entries become its rows.
//!
//! Pure: entries in, Arrow record batches out. The columnar copy on disk and
//! the unsealed tail are both made here, so they cannot disagree about a row.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Int32Builder, ListBuilder, RecordBatch, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef, TimeUnit};
use docket_ledger::chain::{Entry, hex};
use docket_schemas::{ApprovalMethod, Decision, Envelope, EventBody, Risk};

use crate::QueryError;

/// The `events` schema, column by column, as written to segments and documented in docs/QUERIES.md.
pub static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    // Agent and audience stay plain text: as dictionaries, grouping by them was measured slower.
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let time = |name: &str, nullable| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            nullable,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("entry_hash", DataType::Utf8, false),
        time("ts", false),
        time("received", false),
        // A dictionary: twelve values, and filtering on kind is in nearly every query.
        Field::new(
            "kind",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("key_id", DataType::Utf8, false),
        text("user"),
        text("agent"),
        text("audience"),
        Field::new(
            "scopes",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        text("grant_id"),
        text("token_id"),
        text("token_hash"),
        text("approval_id"),
        text("method"),
        text("operation"),
        Field::new("status", DataType::Int32, true),
        text("source"),
        text("risk"),
        text("decision"),
        text("reason"),
        text("actor"),
        time("expires_at", true),
        Field::new("max_calls", DataType::UInt64, true),
        text("subject_key_id"),
        Field::new("payload", DataType::Utf8, false),
    ]))
});

/// Column builders for `events`, one row per entry, in seq order.
pub struct EventRows {
    seq: UInt64Builder,
    entry_hash: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    received: TimestampMicrosecondBuilder,
    kind: StringDictionaryBuilder<Int8Type>,
    event_id: StringBuilder,
    key_id: StringBuilder,
    user: StringBuilder,
    agent: StringBuilder,
    audience: StringBuilder,
    scopes: ListBuilder<StringBuilder>,
    grant_id: StringBuilder,
    token_id: StringBuilder,
    token_hash: StringBuilder,
    approval_id: StringBuilder,
    method: StringBuilder,
    operation: StringBuilder,
    status: Int32Builder,
    source: StringBuilder,
    risk: StringBuilder,
    decision: StringBuilder,
    reason: StringBuilder,
    actor: StringBuilder,
    expires_at: TimestampMicrosecondBuilder,
    max_calls: UInt64Builder,
    subject_key_id: StringBuilder,
    payload: StringBuilder,
    rows: usize,
    last: Option<(u64, [u8; 32])>,
}

/// The optional columns of one row; `None` is SQL NULL.
#[derive(Default)]
struct Fields<'a> {
    user: Option<&'a str>,
    agent: Option<&'a str>,
    audience: Option<&'a str>,
    scopes: Option<Vec<&'a str>>,
    grant_id: Option<&'a str>,
    token_id: Option<&'a str>,
    token_hash: Option<&'a str>,
    approval_id: Option<&'a str>,
    method: Option<&'a str>,
    operation: Option<&'a str>,
    status: Option<i32>,
    source: Option<&'a str>,
    risk: Option<&'a str>,
    decision: Option<&'a str>,
    reason: Option<&'a str>,
    actor: Option<&'a str>,
    expires_at: Option<i64>,
    max_calls: Option<u64>,
    subject_key_id: Option<&'a str>,
}

fn risk_name(r: Risk) -> &'static str {
    match r {
        Risk::Low => "low",
        Risk::High => "high",
        Risk::Critical => "critical",
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn fields(body: &EventBody) -> Fields<'_> {
    match body {
        EventBody::AgentRegistered(e) => Fields {
            user: Some(&e.user),
            agent: Some(&e.agent),
            ..Fields::default()
        },
        EventBody::KeyRegistered(e) => Fields {
            subject_key_id: Some(&e.key_id),
            ..Fields::default()
        },
        EventBody::KeyRevoked(e) => Fields {
            subject_key_id: Some(&e.key_id),
            reason: Some(&e.reason),
            ..Fields::default()
        },
        EventBody::GrantCreated(e) => Fields {
            grant_id: Some(&e.grant_id),
            user: Some(&e.user),
            agent: Some(&e.agent),
            audience: Some(&e.audience),
            scopes: Some(strs(&e.scopes)),
            expires_at: Some(e.expires_at.as_micros()),
            max_calls: e.max_calls,
            ..Fields::default()
        },
        EventBody::GrantRevoked(e) => Fields {
            grant_id: Some(&e.grant_id),
            actor: Some(&e.by),
            reason: Some(&e.reason),
            ..Fields::default()
        },
        EventBody::ApprovalRequested(e) => Fields {
            approval_id: Some(&e.approval_id),
            grant_id: Some(&e.grant_id),
            user: Some(&e.user),
            agent: Some(&e.agent),
            audience: Some(&e.audience),
            scopes: Some(strs(&e.scopes)),
            risk: Some(risk_name(e.risk)),
            expires_at: Some(e.expires_at.as_micros()),
            ..Fields::default()
        },
        EventBody::ApprovalDecided(e) => Fields {
            approval_id: Some(&e.approval_id),
            user: Some(&e.user),
            actor: Some(&e.user),
            decision: Some(match e.decision {
                Decision::Approved => "approved",
                Decision::Denied => "denied",
            }),
            method: Some(match e.method {
                ApprovalMethod::Push => "push",
                ApprovalMethod::StepUp => "step_up",
            }),
            reason: e.reason.as_deref(),
            ..Fields::default()
        },
        EventBody::TokenIssued(e) => Fields {
            token_id: Some(&e.token_id),
            token_hash: Some(&e.token_hash),
            grant_id: Some(&e.grant_id),
            user: Some(&e.user),
            agent: Some(&e.agent),
            audience: Some(&e.audience),
            scopes: Some(strs(&e.scopes)),
            expires_at: Some(e.expires_at.as_micros()),
            approval_id: e.approval_id.as_deref(),
            ..Fields::default()
        },
        EventBody::TokenRevoked(e) => Fields {
            token_id: Some(&e.token_id),
            actor: Some(&e.by),
            reason: Some(&e.reason),
            ..Fields::default()
        },
        EventBody::ApiCalled(e) => Fields {
            token_id: Some(&e.token_id),
            token_hash: e.token_hash.as_deref(),
            agent: Some(&e.agent),
            audience: Some(&e.audience),
            method: Some(&e.method),
            operation: Some(&e.operation),
            scopes: Some(e.scope.as_deref().into_iter().collect()),
            status: Some(i32::from(e.status)),
            source: Some(&e.source),
            reason: e.refused.as_deref(),
            ..Fields::default()
        },
        // Its settings are in the row's JSON payload; no column of their own.
        EventBody::PolicySet(_) => Fields::default(),
        // The detection it is about (`finding`) and the note are in the payload.
        EventBody::FindingTriaged(e) => Fields {
            decision: Some(e.status.as_str()),
            reason: e.reason.map(|r| r.as_str()),
            actor: Some(&e.by),
            ..Fields::default()
        },
        // The rule id is in the payload.
        EventBody::FindingSuppressed(e) => Fields {
            agent: e.agent.as_deref(),
            reason: Some(&e.reason),
            actor: Some(&e.by),
            expires_at: Some(e.until.as_micros()),
            ..Fields::default()
        },
        // The rule list is in the payload.
        EventBody::RulesSet(_) => Fields::default(),
        // The rule, level, observed and baseline are in the payload and the `findings` table.
        EventBody::FindingRaised(e) => Fields {
            agent: e.agent.as_deref(),
            user: e.user.as_deref(),
            audience: e.audience.as_deref(),
            ..Fields::default()
        },
        EventBody::AgentSuspended(e) => Fields {
            agent: Some(&e.agent),
            actor: Some(&e.by),
            reason: Some(&e.reason),
            ..Fields::default()
        },
        EventBody::RequestRefused(e) => Fields {
            actor: Some(&e.requester),
            operation: Some(&e.op),
            reason: Some(&e.reason),
            audience: e.audience.as_deref(),
            scopes: (!e.scopes.is_empty()).then(|| strs(&e.scopes)),
            ..Fields::default()
        },
        // A connection's provider is in `operation`, its fingerprint in `token_hash`
        // (docs/QUERIES.md).
        EventBody::ConnectionLinked(e) => Fields {
            user: Some(&e.user),
            operation: Some(&e.provider),
            scopes: Some(strs(&e.scopes)),
            token_hash: Some(&e.fingerprint),
            expires_at: e.access_expires_at.map(|t| t.as_micros()),
            ..Fields::default()
        },
        EventBody::ConnectionRefreshed(e) => Fields {
            user: Some(&e.user),
            operation: Some(&e.provider),
            token_hash: Some(&e.fingerprint),
            decision: Some(if e.rotated { "rotated" } else { "kept" }),
            expires_at: e.access_expires_at.map(|t| t.as_micros()),
            ..Fields::default()
        },
        EventBody::ConnectionFailed(e) => Fields {
            user: Some(&e.user),
            operation: Some(&e.provider),
            decision: Some(if e.broken { "broken" } else { "transient" }),
            reason: Some(&e.reason),
            ..Fields::default()
        },
        EventBody::ConnectionUnlinked(e) => Fields {
            user: Some(&e.user),
            operation: Some(&e.provider),
            actor: Some(&e.by),
            reason: Some(&e.reason),
            ..Fields::default()
        },
    }
}

impl Default for EventRows {
    fn default() -> Self {
        EventRows::with_capacity(0)
    }
}

impl EventRows {
    pub fn with_capacity(rows: usize) -> EventRows {
        let s = || StringBuilder::with_capacity(rows, rows * 8);
        EventRows {
            seq: UInt64Builder::with_capacity(rows),
            entry_hash: StringBuilder::with_capacity(rows, rows * 64),
            ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            received: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            kind: StringDictionaryBuilder::new(),
            event_id: StringBuilder::with_capacity(rows, rows * 36),
            key_id: StringBuilder::with_capacity(rows, rows * 64),
            user: s(),
            agent: s(),
            audience: s(),
            scopes: ListBuilder::new(StringBuilder::new()),
            grant_id: s(),
            token_id: s(),
            token_hash: s(),
            approval_id: s(),
            method: s(),
            operation: s(),
            status: Int32Builder::with_capacity(rows),
            source: s(),
            risk: s(),
            decision: s(),
            reason: s(),
            actor: s(),
            expires_at: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            max_calls: UInt64Builder::with_capacity(rows),
            subject_key_id: s(),
            payload: StringBuilder::with_capacity(rows, rows * 300),
            rows: 0,
            last: None,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Seq and entry hash of the last row pushed.
    pub fn last(&self) -> Option<(u64, [u8; 32])> {
        self.last
    }

    /// Appends one entry. Entries of the chain were admitted, so a decode failure means a damaged store.
    pub fn push(&mut self, entry: &Entry<'_>) -> Result<(), QueryError> {
        let undecodable = |why: String| QueryError::Undecodable {
            seq: entry.seq,
            why,
        };
        let envelope = Envelope::decode(entry.envelope).map_err(|e| undecodable(e.to_string()))?;
        let event = envelope.event().map_err(|e| undecodable(e.to_string()))?;
        let payload = std::str::from_utf8(&envelope.payload)
            .map_err(|_| undecodable("payload is not UTF-8".into()))?;
        let f = fields(&event.body);
        self.seq.append_value(entry.seq);
        self.entry_hash.append_value(hex(&entry.hash));
        self.ts.append_value(event.ts.as_micros());
        self.received.append_value(entry.received_us);
        self.kind.append(event.kind().as_str())?;
        self.event_id.append_value(event.id.to_string());
        self.key_id.append_value(&envelope.key_id);
        self.user.append_option(f.user);
        self.agent.append_option(f.agent);
        self.audience.append_option(f.audience);
        match f.scopes {
            Some(list) => {
                for s in list {
                    self.scopes.values().append_value(s);
                }
                self.scopes.append(true);
            }
            None => self.scopes.append(false),
        }
        self.grant_id.append_option(f.grant_id);
        self.token_id.append_option(f.token_id);
        self.token_hash.append_option(f.token_hash);
        self.approval_id.append_option(f.approval_id);
        self.method.append_option(f.method);
        self.operation.append_option(f.operation);
        self.status.append_option(f.status);
        self.source.append_option(f.source);
        self.risk.append_option(f.risk);
        self.decision.append_option(f.decision);
        self.reason.append_option(f.reason);
        self.actor.append_option(f.actor);
        self.expires_at.append_option(f.expires_at);
        self.max_calls.append_option(f.max_calls);
        self.subject_key_id.append_option(f.subject_key_id);
        self.payload.append_value(payload);
        self.rows += 1;
        self.last = Some((entry.seq, entry.hash));
        Ok(())
    }

    /// The rows pushed so far as one batch; the builders start again empty.
    pub fn finish(&mut self) -> Result<RecordBatch, QueryError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.entry_hash.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.received.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.key_id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.agent.finish()),
            Arc::new(self.audience.finish()),
            Arc::new(self.scopes.finish()),
            Arc::new(self.grant_id.finish()),
            Arc::new(self.token_id.finish()),
            Arc::new(self.token_hash.finish()),
            Arc::new(self.approval_id.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.operation.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.risk.finish()),
            Arc::new(self.decision.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.actor.finish()),
            Arc::new(self.expires_at.finish()),
            Arc::new(self.max_calls.finish()),
            Arc::new(self.subject_key_id.finish()),
            Arc::new(self.payload.finish()),
        ];
        self.rows = 0;
        self.last = None;
        Ok(RecordBatch::try_new(EVENTS_SCHEMA.clone(), columns)?)
    }
}
