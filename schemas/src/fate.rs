//! The `docket.fate` request and reply: a publisher asks the ledger what became of its events.
//!
//! JetStream's publish ack means the stream stored a message, not that the
//! ledger accepted it: the ledger may still quarantine it (bad signature, an
//! unauthorized key, a malformed event). A publisher that needs the verdict
//! asks the ledger with the event ids and the stream sequences JetStream gave
//! it; the ledger answers from its durable store only, so an answer of
//! `appended` or `quarantined` is final.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::EventId;

/// The NATS subject the ledger answers fate requests on (request/reply).
pub const SUBJECT_FATE: &str = "docket.fate";
/// Events one fate request may ask about; a longer request is refused, not truncated.
pub const FATE_QUERIES_MAX: usize = 1024;
/// The version of the fate request and reply.
pub const FATE_VERSION: u32 = 1;

/// A question about a batch of published events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FateRequest {
    /// Always 1.
    pub v: u32,
    /// At most `FATE_QUERIES_MAX` events.
    pub events: Vec<FateQuery>,
}

/// One published event: its id and the stream sequence JetStream acknowledged it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FateQuery {
    pub id: EventId,
    pub stream_seq: u64,
}

/// The ledger's answer, one fate per query in the request's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FateReply {
    /// Always 1.
    pub v: u32,
    /// The chain's origin (which ledger answered).
    pub origin: String,
    /// The highest stream sequence the ledger has durably processed.
    pub processed_stream_seq: u64,
    /// Empty when `error` is set.
    pub fates: Vec<Fate>,
    /// Why the request itself was refused (malformed, too long); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// An entry with this event id is in the chain (this message, or an earlier one with the same id).
    Appended {
        seq: u64,
        /// The entry's hash, hex.
        hash: String,
    },
    /// The message at this stream sequence was refused; it is in the quarantine with its reason.
    Quarantined { code: String, reason: String },
    /// The ledger holds neither: it has not processed the message yet (or it is another ledger's subject).
    Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_are_tagged_objects() {
        let f = Fate::Quarantined {
            code: "bad_signature".into(),
            reason: "signature does not verify".into(),
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"fate":"quarantined","code":"bad_signature","reason":"signature does not verify"}"#
        );
        assert_eq!(
            serde_json::to_string(&Fate::Pending).unwrap(),
            r#"{"fate":"pending"}"#
        );
        let req: Result<FateRequest, _> = serde_json::from_str(r#"{"v":1,"events":[],"extra":1}"#);
        assert!(req.is_err(), "unknown fields are refused");
    }
}
