//! Publishing signed events: preparing JSON lines into envelopes, and sending them with acks awaited.
//!
//! JetStream acknowledges a publish once the stream holds it; a bounded window
//! of acks is kept in flight so a publisher neither stalls per message nor
//! buffers without limit.

use std::collections::VecDeque;

use async_nats::jetstream::{self, message::PublishMessage};
use docket_schemas::{Event, EventId, SCHEMA_VERSION, Timestamp, seal_event};
use ed25519_dalek::SigningKey;
use serde_json::Value;

use crate::transport::{EVENT_SUBJECT_PREFIX, MemoryStream, TransportError};

/// Publishes awaiting their ack at most.
pub const PUBLISH_WINDOW: usize = 1024;

/// Where a publisher sends envelopes.
#[derive(Clone)]
pub enum Sink {
    Nats(jetstream::Context),
    Memory(MemoryStream),
}

/// Why one input line was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("{0}")]
    Event(#[from] docket_schemas::EventError),
}

/// Turns one unsigned event (a JSON object) into a signed envelope, filling `v`, `id` and `ts` when absent.
pub fn prepare(
    line: &str,
    key: &SigningKey,
    now: Timestamp,
    fresh_id: EventId,
) -> Result<(String, Vec<u8>, EventId), PrepareError> {
    let mut obj: serde_json::Map<String, Value> =
        serde_json::from_str(line).map_err(|e| PrepareError::Json(e.to_string()))?;
    obj.entry("v").or_insert(Value::from(SCHEMA_VERSION));
    obj.entry("id")
        .or_insert_with(|| Value::String(fresh_id.to_string()));
    obj.entry("ts")
        .or_insert_with(|| Value::String(now.to_string()));
    // Validate with the ledger's own rules before anything leaves this machine.
    let bytes = serde_json::to_vec(&obj).map_err(|e| PrepareError::Json(e.to_string()))?;
    let event = Event::from_payload(&bytes)?;
    Ok((subject_for(&event), seal_event(&event, key), event.id))
}

/// The subject an event is published on: `docket.events.<kind>`.
pub fn subject_for(event: &Event) -> String {
    format!("{EVENT_SUBJECT_PREFIX}{}", event.kind())
}

/// Counts of one publishing run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PublishStats {
    pub published: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub failed: u64,
}

/// JetStream's acknowledgement of one message: where the stream holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The stream sequence JetStream stored the message at (the original's, for a duplicate).
    pub stream_seq: u64,
    /// JetStream recognised the message id within its duplicate window and stored nothing new.
    pub duplicate: bool,
}

/// Called once per message: its index and JetStream's acknowledgement, or why there was none.
pub type OnAck<'a> = dyn FnMut(u64, Result<Acked, String>) + Send + 'a;

enum InFlight {
    Nats(jetstream::context::PublishAckFuture),
    Memory(u64),
}

/// Sends envelopes in order; `on_ack(index, ack)` is called for each one, confirmed or failed.
pub struct Publisher {
    sink: Sink,
    window: VecDeque<(u64, InFlight)>,
    next_index: u64,
    pub stats: PublishStats,
}

impl Publisher {
    pub fn new(sink: Sink) -> Publisher {
        Publisher {
            sink,
            window: VecDeque::with_capacity(PUBLISH_WINDOW),
            next_index: 0,
            stats: PublishStats::default(),
        }
    }

    /// Publishes one envelope; returns its index. Waits when the ack window is full.
    pub async fn send(
        &mut self,
        subject: String,
        envelope: Vec<u8>,
        id: Option<EventId>,
        on_ack: &mut OnAck<'_>,
    ) -> Result<u64, TransportError> {
        while self.window.len() >= PUBLISH_WINDOW {
            self.settle_one(on_ack).await;
        }
        let index = self.next_index;
        self.next_index += 1;
        let in_flight = match &self.sink {
            Sink::Nats(js) => {
                let mut msg = PublishMessage::build().payload(envelope.into());
                if let Some(id) = id {
                    msg = msg.message_id(id.to_string());
                }
                match js.send_publish(subject, msg).await {
                    Ok(f) => InFlight::Nats(f),
                    Err(e) => {
                        self.stats.failed += 1;
                        on_ack(index, Err(e.to_string()));
                        return Ok(index);
                    }
                }
            }
            Sink::Memory(m) => InFlight::Memory(m.publish(subject, envelope.into()).await?),
        };
        self.stats.published += 1;
        self.window.push_back((index, in_flight));
        Ok(index)
    }

    async fn settle_one(&mut self, on_ack: &mut OnAck<'_>) {
        let Some((index, f)) = self.window.pop_front() else {
            return;
        };
        let result = match f {
            InFlight::Nats(f) => match f.await {
                Ok(ack) => {
                    if ack.duplicate {
                        self.stats.duplicates += 1;
                    }
                    Ok(Acked {
                        stream_seq: ack.sequence,
                        duplicate: ack.duplicate,
                    })
                }
                Err(e) => Err(e.to_string()),
            },
            InFlight::Memory(seq) => Ok(Acked {
                stream_seq: seq,
                duplicate: false,
            }),
        };
        match &result {
            Ok(_) => self.stats.acked += 1,
            Err(_) => self.stats.failed += 1,
        }
        on_ack(index, result);
    }

    /// Waits for every outstanding ack.
    pub async fn flush(&mut self, on_ack: &mut OnAck<'_>) {
        while !self.window.is_empty() {
            self.settle_one(on_ack).await;
        }
    }
}

/// Signs and publishes one event with `key`, waiting at most `patience` for JetStream to
/// hold it; its id, or why it is not held. The gateway's records and the vault's
/// connection events go through here. The event passes admission's checks first: one the
/// ledger would quarantine is not sent.
pub async fn publish_one(
    sink: &Sink,
    key: &SigningKey,
    body: docket_schemas::EventBody,
    now: Timestamp,
    patience: std::time::Duration,
) -> Result<EventId, String> {
    let event = Event {
        v: SCHEMA_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now,
        body,
    };
    event.validate().map_err(|e| e.to_string())?;
    let mut publisher = Publisher::new(sink.clone());
    let mut failed: Option<String> = None;
    let mut on_ack = |_: u64, r: Result<_, String>| {
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
    };
    let sent = tokio::time::timeout(patience, async {
        publisher
            .send(
                subject_for(&event),
                seal_event(&event, key),
                Some(event.id),
                &mut on_ack,
            )
            .await
            .map_err(|e| e.to_string())?;
        publisher.flush(&mut on_ack).await;
        Ok::<_, String>(())
    })
    .await;
    match sent {
        Err(_) => Err(format!(
            "JetStream did not acknowledge within {} s",
            patience.as_secs()
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => match failed {
            Some(e) => Err(e),
            None => Ok(event.id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_fills_header_and_validates() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let now = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
        let id = EventId::parse("01900000-0000-7000-8000-000000000009").unwrap();
        let line = r#"{"kind":"agent.suspended","agent":"a1","by":"sec","reason":"anomaly"}"#;
        let (subject, env, got) = prepare(line, &key, now, id).unwrap();
        assert_eq!(subject, "docket.events.agent.suspended");
        assert_eq!(got, id);
        let e = docket_schemas::Envelope::decode(&env).unwrap();
        assert!(e.verify(&key.verifying_key()));
        assert_eq!(e.event().unwrap().ts, now);
        let bad = r#"{"kind":"agent.suspended","agent":"a1","by":"sec"}"#;
        assert!(
            prepare(bad, &key, now, id)
                .unwrap_err()
                .to_string()
                .contains("missing field `reason`")
        );
    }
}
