//! JSON Schema files for the envelope and each event kind, generated from the Rust types.
//!
//! Services in other languages validate against these; `schemas/json/` holds the
//! checked-in copies and a test fails when they drift from the types.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::envelope::{EnvelopeWire, PAYLOAD_TYPE};
use crate::event::*;
use crate::limits::*;

/// (file name, pretty JSON) for every schema file.
pub fn files() -> Vec<(String, String)> {
    let mut out = vec![
        ("envelope.schema.json".to_string(), envelope()),
        (
            "fate.request.schema.json".to_string(),
            contract::<crate::fate::FateRequest>("fate.request"),
        ),
        (
            "fate.reply.schema.json".to_string(),
            contract::<crate::fate::FateReply>("fate.reply"),
        ),
    ];
    let contracts = [
        (
            "vault.request",
            contract::<crate::vault::Request>("vault.request"),
        ),
        (
            "vault.reply",
            contract::<crate::vault::Reply>("vault.reply"),
        ),
        (
            "read.reply",
            contract::<crate::vault::ReadReply>("read.reply"),
        ),
        (
            "connections.reply",
            contract::<crate::vault::ConnectionReply>("connections.reply"),
        ),
        (
            "approvals.notice",
            contract::<crate::vault::ApprovalNotice>("approvals.notice"),
        ),
        (
            "appended.notice",
            contract::<crate::notice::Appended>("appended.notice"),
        ),
        (
            "rejected.notice",
            contract::<crate::notice::Quarantined>("rejected.notice"),
        ),
        (
            "findings.notice",
            contract::<crate::notice::Finding>("findings.notice"),
        ),
        (
            "detection.notice",
            contract::<crate::notice::DetectionNotice>("detection.notice"),
        ),
        (
            "inclusion.proof",
            contract::<crate::proof::InclusionProof>("inclusion.proof"),
        ),
        (
            "consistency.proof",
            contract::<crate::proof::ConsistencyProof>("consistency.proof"),
        ),
        (
            "proof.request",
            contract::<crate::proof::ProofRequest>("proof.request"),
        ),
        (
            "proof.reply",
            contract::<crate::proof::ProofReply>("proof.reply"),
        ),
        (
            "witness.reply",
            contract::<crate::proof::WitnessReply>("witness.reply"),
        ),
        (
            "witness.cosigned",
            contract::<crate::proof::WitnessCosigned>("witness.cosigned"),
        ),
        (
            "evidence.bundle",
            contract::<crate::proof::EvidenceBundle>("evidence.bundle"),
        ),
    ];
    for (name, text) in contracts {
        out.push((format!("{name}.schema.json"), text));
    }
    for &kind in Kind::ALL {
        out.push((format!("{}.schema.json", kind.as_str()), kind_schema(kind)));
    }
    out
}

fn root<T: JsonSchema>() -> Schema {
    SchemaGenerator::default().into_root_schema_for::<T>()
}

fn pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// A message that is not an event (a request or reply on the bus), with its `$id`.
fn contract<T: JsonSchema>(name: &str) -> String {
    let mut schema = root::<T>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            json!(format!("https://docket.dev/schemas/{name}.schema.json")),
        );
    }
    pretty(&schema)
}

fn envelope() -> String {
    let mut schema = root::<EnvelopeWire<'static>>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            json!("https://docket.dev/schemas/envelope.schema.json"),
        );
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("payloadType".into(), json!({"const": PAYLOAD_TYPE}));
            if let Some(sigs) = props.get_mut("signatures").and_then(Value::as_object_mut) {
                sigs.insert("minItems".into(), json!(SIGNATURES_PER_ENVELOPE_MAX));
                sigs.insert("maxItems".into(), json!(SIGNATURES_PER_ENVELOPE_MAX));
            }
        }
        obj.insert("maxBytes".into(), json!(ENVELOPE_BYTES_MAX));
    }
    pretty(&schema)
}

fn kind_schema(kind: Kind) -> String {
    let mut schema = match kind {
        Kind::AgentRegistered => root::<AgentRegistered>(),
        Kind::KeyRegistered => root::<KeyRegistered>(),
        Kind::KeyRevoked => root::<KeyRevoked>(),
        Kind::GrantCreated => root::<GrantCreated>(),
        Kind::GrantRevoked => root::<GrantRevoked>(),
        Kind::ApprovalRequested => root::<ApprovalRequested>(),
        Kind::ApprovalDecided => root::<ApprovalDecided>(),
        Kind::TokenIssued => root::<TokenIssued>(),
        Kind::TokenRevoked => root::<TokenRevoked>(),
        Kind::ApiCalled => root::<ApiCalled>(),
        Kind::AgentSuspended => root::<AgentSuspended>(),
        Kind::RequestRefused => root::<RequestRefused>(),
        Kind::PolicySet => root::<PolicySet>(),
        Kind::FindingTriaged => root::<FindingTriaged>(),
        Kind::FindingSuppressed => root::<FindingSuppressed>(),
        Kind::RulesSet => root::<RulesSet>(),
        Kind::FindingRaised => root::<FindingRaised>(),
        Kind::ConnectionLinked => root::<ConnectionLinked>(),
        Kind::ConnectionRefreshed => root::<ConnectionRefreshed>(),
        Kind::ConnectionFailed => root::<ConnectionFailed>(),
        Kind::ConnectionUnlinked => root::<ConnectionUnlinked>(),
    }
    .to_value();
    let mut generator = SchemaGenerator::default();
    let header = [
        ("v", json!({"const": SCHEMA_VERSION})),
        ("id", EventId::json_schema(&mut generator).to_value()),
        (
            "ts",
            crate::time::Timestamp::json_schema(&mut generator).to_value(),
        ),
        ("kind", json!({"const": kind.as_str()})),
    ];
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            json!(format!(
                "https://docket.dev/schemas/{}.schema.json",
                kind.as_str()
            )),
        );
        obj.insert("title".into(), json!(kind.as_str()));
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            let rest = std::mem::take(props);
            for (name, s) in header.iter().cloned() {
                props.insert(name.into(), s);
            }
            props.extend(rest);
        }
        let required = obj.entry("required").or_insert_with(|| json!([]));
        if let Some(list) = required.as_array_mut() {
            let mut all: Vec<Value> = header.iter().map(|(n, _)| json!(n)).collect();
            all.append(list);
            *list = all;
        }
    }
    pretty(&schema)
}
