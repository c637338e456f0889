//! JSON-lines views of the ledger: `docket log` for people, `docket export` for independent verifiers.

use std::io::Write;

use docket_schemas::{Envelope, encode_base64};
use serde_json::{Value, json};

use crate::chain::{Entry, hex};
use crate::store::{Store, StoreError, decode_record};

/// Export format version (the `format` field of the header line).
pub const EXPORT_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// One entry for `docket log`: chain fields and the decoded event.
pub fn log_line(entry: &Entry<'_>) -> Value {
    let (key_id, event) = match Envelope::decode(entry.envelope) {
        Ok(env) => {
            let event = serde_json::from_slice::<Value>(&env.payload).unwrap_or(Value::Null);
            (Value::String(env.key_id), event)
        }
        Err(e) => (Value::Null, json!({"undecodable": e.to_string()})),
    };
    json!({
        "seq": entry.seq,
        "hash": hex(&entry.hash),
        "prev": hex(&entry.prev),
        "received": docket_schemas::Timestamp::from_micros(entry.received_us).map(|t| t.to_string()),
        "subject": entry.subject,
        "key_id": key_id,
        "event": event,
    })
}

/// Writes entries `from..` (at most `limit`) as JSON lines; returns how many.
pub fn write_log(
    store: &Store,
    from: u64,
    limit: u64,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    let mut n = 0;
    for item in store.records(from.max(1))? {
        if n >= limit {
            break;
        }
        let (seq, record) = item?;
        let entry = decode_record(seq, &record)?;
        serde_json::to_writer(&mut *out, &log_line(&entry)).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

/// Writes the whole ledger as JSON lines: a header, every entry with its raw envelope, every checkpoint.
pub fn write_export(store: &Store, out: &mut dyn Write) -> Result<u64, ExportError> {
    let id = store.identity()?;
    let (entries, head) = store.head()?;
    let registry = store.registry()?;
    let header = json!({
        "type": "ledger",
        "format": EXPORT_FORMAT,
        "origin": id.origin,
        "admin_public_key": id.admin_public_key,
        "ledger_public_key": id.ledger_public_key,
        "entries": entries,
        "head": hex(&head),
    });
    line(out, &header)?;
    for key in registry.iter().flat_map(|r| r.keys.values()) {
        line(
            out,
            &json!({"type": "key", "key_id": key.key_id, "public_key": key.public_key, "name": key.name,
            "kinds": key.kinds, "registered_seq": key.registered_seq, "revoked_seq": key.revoked_seq}),
        )?;
    }
    let mut n = 0;
    for item in store.records(1)? {
        let (seq, record) = item?;
        let e = decode_record(seq, &record)?;
        line(
            out,
            &json!({
                "type": "entry",
                "seq": e.seq,
                "hash": hex(&e.hash),
                "prev": hex(&e.prev),
                "received_us": e.received_us,
                "subject": e.subject,
                "envelope": encode_base64(e.envelope),
            }),
        )?;
        n += 1;
    }
    for (size, note) in store.checkpoints()? {
        // With any witness cosignatures kept for it appended, as `docket prove` shows it.
        let note = store.cosigned_checkpoint(size)?.unwrap_or(note);
        line(
            out,
            &json!({"type": "checkpoint", "size": size, "note": note}),
        )?;
    }
    out.flush()?;
    Ok(n)
}

fn line(out: &mut dyn Write, v: &Value) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, v).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    Ok(())
}
