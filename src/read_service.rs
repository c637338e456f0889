//! `docket.read`: signed, read-only SQL over the audit tables for clients away from the data directory (`docket watch --nats`).
//!
//! Shell code beside `serve`'s ingest loop. A request is the vault's signed
//! request envelope with `op: read`; its signature and signer are checked by
//! the vault's own checks ([`vault::authenticate_read`]). Only the admin's key
//! and analysts' keys (registered for `finding.triaged`) may read: the log
//! names every user, agent and grant, and a plain user's or a gateway's key is
//! not a licence to read all of it. Reads are answered one at a time from a
//! kept session over the durable store, under a time limit, capped in rows and
//! cut to NATS's payload limit (`truncated` says so). Agents' keys are never
//! resolved here, so an agent cannot read.

use std::path::PathBuf;
use std::time::Duration;

use docket_ledger::registry::Registry;
use docket_ledger::vault::{self, Requester};
use docket_query::render::text_cells;
use docket_query::session::{AuditSession, SessionCache, SessionOptions};
use docket_schemas::Kind;
use docket_schemas::vault::{Op, READ_ROWS_MAX, ReadReply, SUBJECT_READ};
use futures::StreamExt;

/// Longest one read may run.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory one read's operators may hold.
pub const READ_MEMORY_BYTES: usize = 256 * 1024 * 1024;
/// How far a request's `ts` may be from the ledger's clock: an old signed read is not replayed.
pub const READ_SKEW_MAX_US: i64 = 120 * 1_000_000;
/// The queue group of `serve`s answering reads, so one of them answers each.
pub const READ_QUEUE_GROUP: &str = "docket-read";

/// Starts the read service on a thread of its own, at the detector's lower priority: a heavy
/// read takes the CPU ingest leaves, never ingest's.
pub fn spawn(
    client: async_nats::Client,
    data: PathBuf,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("docket-read".into())
        .stack_size(crate::WORKER_STACK_BYTES)
        .spawn(move || {
            crate::detect_cmd::lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the read service could not start");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(serve(client, data)) {
                tracing::error!(error = %e, "reads stopped");
            }
        })
}

/// Answers reads until the subscription ends.
pub async fn serve(client: async_nats::Client, data: PathBuf) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(SUBJECT_READ, READ_QUEUE_GROUP.to_string())
        .await?;
    let max_payload = client.server_info().max_payload;
    let mut cache = SessionCache::default();
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let reply = answer(&data, &mut cache, &msg.payload).await;
        if !reply.ok {
            tracing::info!(error = ?reply.error, "a read was refused");
        }
        let bytes = encode_within(reply, max_payload)?;
        if let Err(e) = client.publish(reply_to, bytes.into()).await {
            tracing::warn!(error = %e, "replying to a read");
        }
    }
    Ok(())
}

fn refused(why: impl Into<String>) -> ReadReply {
    ReadReply {
        ok: false,
        error: Some(why.into()),
        ..ReadReply::default()
    }
}

/// Who may read, by the registry: the admin, or a key registered for `finding.triaged`.
/// Returns the reader's registered name.
pub fn reader_name(registry: &Registry, requester: &Requester, key_id: &str) -> Option<String> {
    if *requester == Requester::Admin {
        return Some("admin".to_string());
    }
    registry
        .active_key(key_id)
        .filter(|(k, _)| k.kinds.contains(&Kind::FindingTriaged))
        .map(|(k, _)| k.name.clone())
}

/// The reply to one raw request.
pub async fn answer(data: &std::path::Path, cache: &mut SessionCache, bytes: &[u8]) -> ReadReply {
    let store = match cache.store(data) {
        Ok(s) => s,
        Err(e) => {
            *cache = SessionCache::default();
            return refused(format!("the ledger could not read its store: {e}"));
        }
    };
    let registry = match store.registry() {
        Ok(Some(r)) => r,
        Ok(None) => match store.genesis_registry() {
            Ok(r) => r,
            Err(e) => return refused(format!("the ledger could not read its registry: {e}")),
        },
        Err(e) => return refused(format!("the ledger could not read its registry: {e}")),
    };
    let auth = match vault::authenticate_read(bytes, &registry) {
        Ok(a) => a,
        Err(e) => return refused(e.2.to_string()),
    };
    let Some(name) = reader_name(&registry, &auth.requester, &auth.key_id) else {
        return refused(format!(
            "{} may not read the ledger: reading over NATS needs the admin's key or an analyst's \
             (a key registered for finding.triaged)",
            auth.requester.name()
        ));
    };
    let now = match docket_ledger::clock::now() {
        Ok(t) => t,
        Err(e) => return refused(format!("the ledger's clock: {e}")),
    };
    if (now.as_micros() - auth.request.ts.as_micros()).abs() > READ_SKEW_MAX_US {
        return refused(format!(
            "the request's time {} is more than {} s from the ledger's {now}: check the clocks",
            auth.request.ts,
            READ_SKEW_MAX_US / 1_000_000
        ));
    }
    let Op::Read { sql, max_rows } = &auth.request.op else {
        return refused(format!(
            "only reads are answered on {SUBJECT_READ}; {} goes to docket.vault.{}",
            auth.request.op.name(),
            auth.request.op.name()
        ));
    };
    let options = SessionOptions {
        seal: false,
        timeout: READ_TIMEOUT,
        memory_limit_bytes: READ_MEMORY_BYTES,
        ..SessionOptions::default()
    };
    let cap = max_rows.unwrap_or(READ_ROWS_MAX).min(READ_ROWS_MAX) as usize;
    let result = async {
        let mut session = AuditSession::open_cached(data, options, cache).await?;
        let (batches, more) = session.query_limited(sql, cap).await?;
        text_cells(&batches).map(|(columns, rows)| (columns, rows, more))
    }
    .await;
    let (columns, rows, truncated) = match result {
        Ok(r) => r,
        Err(e) => {
            return ReadReply {
                signer: Some(name),
                ..refused(e.to_string())
            };
        }
    };
    ReadReply {
        ok: true,
        error: None,
        signer: Some(name),
        columns,
        rows,
        truncated,
    }
}

/// The reply as JSON no larger than `max_payload`: rows are dropped from the end, and
/// `truncated` set, until it fits.
pub fn encode_within(mut reply: ReadReply, max_payload: usize) -> anyhow::Result<Vec<u8>> {
    loop {
        let bytes = serde_json::to_vec(&reply)?;
        if bytes.len() <= max_payload {
            return Ok(bytes);
        }
        if reply.rows.is_empty() {
            // The columns alone are over the limit: say so rather than send nothing.
            return Ok(serde_json::to_vec(&refused(format!(
                "the answer does not fit in NATS's {max_payload}-byte message limit"
            )))?);
        }
        // Scale to the size wanted, at least halving, so a huge answer takes a few rounds.
        let keep = (reply.rows.len() * max_payload / bytes.len()).min(reply.rows.len() / 2);
        reply.rows.truncate(keep);
        reply.truncated = true;
    }
}

/// How long a client waits for a read's answer: the ledger's own limit, and some.
pub const READ_PATIENCE: Duration = Duration::from_secs(15);

/// Asks the ledger a read over NATS, signed with `key`: the client half of this service.
pub async fn ask(
    client: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    sql: &str,
    max_rows: Option<u32>,
) -> anyhow::Result<ReadReply> {
    use anyhow::Context;
    use docket_schemas::vault::{REQUEST_VERSION, Request, seal_request};
    let request = Request {
        v: REQUEST_VERSION,
        id: docket_schemas::EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: docket_ledger::clock::now()?,
        op: Op::Read {
            sql: sql.to_string(),
            max_rows,
        },
    };
    let reply = tokio::time::timeout(
        READ_PATIENCE,
        client.request(SUBJECT_READ, seal_request(&request, key).into()),
    )
    .await
    .with_context(|| {
        format!(
            "the ledger did not answer within {} s",
            READ_PATIENCE.as_secs()
        )
    })?
    .context(
        "no answer on docket.read: is a `docket serve` of this version running on this NATS?",
    )?;
    serde_json::from_slice(&reply.payload).with_context(|| {
        format!(
            "the answer is not a read reply (docs/FORMAT.md, \"Reads\"): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}
