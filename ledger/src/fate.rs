//! Answers `docket.fate` requests: what became of published events, read from the durable store.
//!
//! Shell code: a NATS responder around `Store::fate`. It reads only what is
//! committed, so `appended` and `quarantined` are final; everything else is
//! `pending`. Requests are bounded in size (`FATE_QUERIES_MAX`) and in number
//! in flight (`FATE_INFLIGHT_MAX`), and never touch the ingest loop.

use std::sync::Arc;

use docket_schemas::fate::{FATE_QUERIES_MAX, FATE_VERSION, FateReply, FateRequest, SUBJECT_FATE};
use futures::StreamExt;

use crate::store::{Store, StoreError};
use crate::transport::TransportError;

/// Fate requests being answered at once; more wait for a slot.
pub const FATE_INFLIGHT_MAX: usize = 8;

/// The reply to one raw request: the fates, or the request's refusal.
pub fn answer(store: &Store, origin: &str, request: &[u8]) -> Result<FateReply, StoreError> {
    let refuse = |why: String| FateReply {
        v: FATE_VERSION,
        origin: origin.to_string(),
        processed_stream_seq: 0,
        fates: Vec::new(),
        error: Some(why),
    };
    let request: FateRequest = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => return Ok(refuse(format!("malformed fate request: {e}"))),
    };
    if request.v != FATE_VERSION {
        return Ok(refuse(format!(
            "fate request version {} is not supported (expected {FATE_VERSION})",
            request.v
        )));
    }
    if request.events.len() > FATE_QUERIES_MAX {
        return Ok(refuse(format!(
            "a fate request asks about at most {FATE_QUERIES_MAX} events, this one {}",
            request.events.len()
        )));
    }
    // Read the processed floor first: anything decided by then is already visible below.
    let processed_stream_seq = store.last_source_seq()?;
    let fates = request
        .events
        .iter()
        .map(|q| store.fate(&q.id, q.stream_seq))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FateReply {
        v: FATE_VERSION,
        origin: origin.to_string(),
        processed_stream_seq,
        fates,
        error: None,
    })
}

/// Serves `docket.fate` until the connection closes.
pub async fn serve_fate_requests(
    client: async_nats::Client,
    store: Arc<Store>,
    origin: String,
) -> Result<(), TransportError> {
    let mut sub = client
        .subscribe(SUBJECT_FATE)
        .await
        .map_err(|e| TransportError::Nats(e.to_string()))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(FATE_INFLIGHT_MAX));
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (client, store, origin) = (client.clone(), Arc::clone(&store), origin.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let answered =
                tokio::task::spawn_blocking(move || answer(&store, &origin, &msg.payload)).await;
            let reply = match answered {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    // A store error is the ledger's problem, not the asker's: say so, and log it.
                    tracing::error!(error = %e, "answering a fate request");
                    FateReply {
                        v: FATE_VERSION,
                        origin: String::new(),
                        processed_stream_seq: 0,
                        fates: Vec::new(),
                        error: Some(format!("the ledger could not read its store: {e}")),
                    }
                }
                Err(_) => return,
            };
            match serde_json::to_vec(&reply) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(reply_to, bytes.into()).await {
                        tracing::warn!(error = %e, "replying to a fate request");
                    }
                }
                Err(e) => tracing::error!(error = %e, "serialising a fate reply"),
            }
        });
    }
    Ok(())
}
