//! Event kinds: what services tell the ledger, in OAuth vocabulary where it exists.
//!
//! An event is a flat JSON object: the header (`v`, `id`, `ts`, `kind`) and the
//! kind's fields. Unknown fields, unknown kinds and unknown versions are refused
//! with a reason that names them, so a producer learns exactly what to fix.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::*;
pub use crate::policy::PolicySet;
use crate::time::Timestamp;

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// A producer-assigned UUIDv7, the event's idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Parses the hyphenated lowercase or uppercase form; refuses other UUID versions.
    pub fn parse(text: &str) -> Result<EventId, String> {
        let b = text.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(format!("id {:?} is not a hyphenated UUID", truncate(text)));
        }
        let mut out = [0u8; 16];
        let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        // A hyphen anywhere else (one changed bit can make one) leaves an odd digit out.
        if hex.len() != 32 {
            return Err(format!("id {:?} is not a hyphenated UUID", truncate(text)));
        }
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("id {:?} has a non-hex digit", truncate(text))),
            }
        }
        if out[6] >> 4 != 7 || out[8] >> 6 != 0b10 {
            return Err(format!(
                "id {:?} is not a UUIDv7 (RFC 9562 version 7, variant 10)",
                truncate(text)
            ));
        }
        Ok(EventId(out))
    }

    /// A UUIDv7 for `unix_ms` whose other bits come from `bits`: an event derived from the log
    /// (a `finding.raised`) gets the same id each time it is derived, so the ledger keeps one.
    pub fn derived(unix_ms: u64, bits: [u8; 16]) -> EventId {
        let mut out = bits;
        out[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        out[6] = 0x70 | (out[6] & 0x0f);
        out[8] = 0x80 | (out[8] & 0x3f);
        EventId(out)
    }

    /// Milliseconds since the epoch that a UUIDv7 carries in its first 48 bits.
    pub fn unix_millis(&self) -> u64 {
        self.0[..6]
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EventId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "UUIDv7 (RFC 9562), hyphenated; the idempotency key",
            "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
        })
    }
}

macro_rules! kinds {
    ($($variant:ident = $name:literal,)*) => {
        /// The kind of an event, as spelled in its `kind` field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum Kind {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$variant => $name,)* }
            }

            pub fn parse(text: &str) -> Option<Kind> {
                match text { $($name => Some(Kind::$variant),)* _ => None }
            }
        }

        impl EventBody {
            pub fn kind(&self) -> Kind {
                match self { $(EventBody::$variant(_) => Kind::$variant,)* }
            }
        }
    };
}

kinds! {
    AgentRegistered = "agent.registered",
    KeyRegistered = "key.registered",
    KeyRevoked = "key.revoked",
    GrantCreated = "grant.created",
    GrantRevoked = "grant.revoked",
    ApprovalRequested = "approval.requested",
    ApprovalDecided = "approval.decided",
    TokenIssued = "token.issued",
    TokenRevoked = "token.revoked",
    ApiCalled = "api.called",
    AgentSuspended = "agent.suspended",
    RequestRefused = "request.refused",
    PolicySet = "policy.set",
    FindingTriaged = "finding.triaged",
    FindingSuppressed = "finding.suppressed",
    RulesSet = "rules.set",
    FindingRaised = "finding.raised",
    ConnectionLinked = "connection.linked",
    ConnectionRefreshed = "connection.refreshed",
    ConnectionFailed = "connection.failed",
    ConnectionUnlinked = "connection.unlinked",
}

const _: () = assert!(Kind::ALL.len() <= KINDS_PER_KEY_MAX);

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How risky an action is; decides whether a human must approve it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    High,
    /// Needs a step-up authentication of the approver, not only a tap.
    Critical,
}

/// An approver's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Denied,
}

/// How the approver was asked and authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMethod {
    /// A push notification answered on a device the user is signed in to.
    Push,
    /// A fresh authentication (passkey, MFA) just before answering; `auth_time` says when.
    StepUp,
}

/// Scopes of a grant that need a human's approval before a token is issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub scope: String,
    pub risk: Risk,
}

/// One RFC 9396 authorization detail: the exact action a token is bound to. A token
/// that carries any may be used only for a call one of them describes (docs/FORMAT.md,
/// "Bound to the exact action").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationDetail {
    /// `api_call` (an HTTP call through a gateway) or `mcp_tool` (an MCP tool call).
    #[serde(rename = "type")]
    pub kind: DetailType,
    /// `api_call`: the HTTP methods allowed (upper case). `mcp_tool`: `["tools/call"]`.
    pub actions: Vec<String>,
    /// The audiences it is for; empty means the token's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
    /// `api_call`: the operation (the path below the gateway's prefix, no query).
    /// `mcp_tool`: the tool's name.
    pub identifier: String,
    /// `api_call`: the call's `request_hash` (method, path and query, body), when the
    /// approval is for one exact request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// `mcp_tool`: the `arguments_hash` of the exact arguments approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_hash: Option<String>,
}

/// The kinds of authorization detail Docket binds tokens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DetailType {
    ApiCall,
    McpTool,
}

/// Checks a list of authorization details: the limits, and the fields each type uses.
pub fn authorization_details(details: &[AuthorizationDetail]) -> Result<(), EventError> {
    count(
        "authorization_details",
        details.len(),
        AUTHORIZATION_DETAILS_MAX,
    )?;
    let bad = |why: &str| EventError::Invalid {
        field: "authorization_details",
        why: why.to_string(),
    };
    for d in details {
        count("authorization_details[].actions", d.actions.len(), 16)?;
        count("authorization_details[].locations", d.locations.len(), 16)?;
        for l in &d.locations {
            identifier("authorization_details[].locations", l, OPERATION_BYTES_MAX)?;
        }
        match d.kind {
            DetailType::ApiCall => {
                if d.actions.is_empty()
                    || d.actions.iter().any(|a| {
                        a.is_empty() || a.len() > 16 || !a.bytes().all(|c| c.is_ascii_uppercase())
                    })
                {
                    return Err(bad(
                        "an api_call's actions are 1 to 16 HTTP methods in upper case",
                    ));
                }
                text(
                    "authorization_details[].identifier",
                    &d.identifier,
                    OPERATION_BYTES_MAX,
                )?;
                if d.identifier.is_empty() || d.arguments_hash.is_some() {
                    return Err(bad(
                        "an api_call names its operation and has no arguments_hash",
                    ));
                }
                if let Some(h) = &d.request_hash {
                    content_hash("authorization_details[].request_hash", h)?;
                }
            }
            DetailType::McpTool => {
                if d.actions != ["tools/call"] || d.request_hash.is_some() {
                    return Err(bad(
                        "an mcp_tool's actions are [\"tools/call\"] and it has no request_hash",
                    ));
                }
                identifier(
                    "authorization_details[].identifier",
                    &d.identifier,
                    TOOL_NAME_BYTES_MAX,
                )?;
                if let Some(h) = &d.arguments_hash {
                    content_hash("authorization_details[].arguments_hash", h)?;
                }
            }
        }
    }
    Ok(())
}

/// `agent.registered`: an AI agent (an OAuth client acting for users) exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistered {
    /// The agent's identifier (OAuth `client_id`).
    pub agent: String,
    /// The user who owns or operates the agent.
    pub user: String,
    /// A human-readable name.
    pub name: String,
    /// The agent's own ed25519 public key, base64 (32 bytes), for signed requests.
    pub public_key: String,
}

/// `key.registered`: a producer key may emit the listed kinds. Only the ledger's admin key may emit this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRegistered {
    /// The key id (see docs/FORMAT.md: lowercase hex SHA-256 of the public key).
    pub key_id: String,
    /// The ed25519 public key, base64 (32 bytes).
    pub public_key: String,
    /// The service that holds the key.
    pub name: String,
    /// The kinds this key may emit.
    pub kinds: Vec<Kind>,
}

/// `key.revoked`: a producer key may emit nothing from here on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRevoked {
    pub key_id: String,
    pub reason: String,
}

/// `grant.created`: a user lets an agent use scopes on an API, within limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantCreated {
    pub grant_id: String,
    /// The user granting access (OAuth `sub`).
    pub user: String,
    /// The agent receiving access (OAuth `act` / `client_id`).
    pub agent: String,
    /// The API the grant is for (OAuth `aud`), e.g. `https://api.github.com`.
    pub audience: String,
    pub scopes: Vec<String>,
    pub expires_at: Timestamp,
    /// Most API calls allowed under the grant, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    /// Longest lifetime of a token issued under the grant, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl_s: Option<u32>,
    /// Scopes that need a human's approval, and at which risk level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval: Vec<ApprovalRule>,
}

/// `grant.revoked`: the grant, and every token under it, ends now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRevoked {
    pub grant_id: String,
    /// Who revoked it.
    pub by: String,
    pub reason: String,
}

/// `approval.requested`: an agent asks a human to approve an action (OpenID CIBA's `auth_req_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequested {
    pub approval_id: String,
    pub grant_id: String,
    /// The user asked to approve.
    pub user: String,
    pub agent: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub risk: Risk,
    /// What the agent is about to do, shown to the approver (CIBA's `binding_message`).
    pub binding_message: String,
    pub expires_at: Timestamp,
    /// The exact actions asked for (RFC 9396); a token minted on this approval is bound to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<AuthorizationDetail>,
}

/// `approval.decided`: the human's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecided {
    pub approval_id: String,
    /// Who decided.
    pub user: String,
    pub decision: Decision,
    pub method: ApprovalMethod,
    /// When the approver last authenticated; required for `step_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The evidence of a step-up: a claim (user, approval, `auth_time`) signed by the
    /// user's step-up key, which the admin registered as `stepup:<user>`. Required for
    /// `step_up`; without it a step-up is only the caller's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<crate::step_up::StepUpAssertion>,
}

/// `token.issued`: a short-lived, scoped token exists. Only its hash is recorded, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIssued {
    /// The token's id (JWT `jti`).
    pub token_id: String,
    /// Keyed hash of the token secret, 64 lowercase hex digits.
    pub token_hash: String,
    pub grant_id: String,
    pub user: String,
    pub agent: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub expires_at: Timestamp,
    /// The approval that allowed this token, when one was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The exact actions the token may be used for (RFC 9396); none: anything its scopes allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<AuthorizationDetail>,
}

/// `token.revoked`: the token is no longer valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoked {
    pub token_id: String,
    pub by: String,
    pub reason: String,
}

/// `api.called`: a gateway saw an agent call an API with a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiCalled {
    pub token_id: String,
    /// Hash of the presented token, as in `token.issued`, so a leaked token's use is traceable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    pub agent: String,
    pub audience: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Operation name or request path.
    pub operation: String,
    /// The scope the call needed, as the gateway judged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// HTTP status code returned.
    pub status: u16,
    /// The caller's network address.
    pub source: String,
    /// Milliseconds from the gateway's receipt of the request to the upstream's answer
    /// (or to the gateway's refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Bytes of the request's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    /// Bytes of the answer's body passed back to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    /// Hex BLAKE3 of `METHOD SP path-and-query LF body` as the gateway received them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// Why the gateway refused the call without forwarding it; absent when it forwarded.
    /// A refused record names `unverified` as token and agent when the token was unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The MCP tool a `tools/call` named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Hex BLAKE3 of the tool call's `arguments` (compact JSON, keys sorted); the
    /// arguments themselves are never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_hash: Option<String>,
}

/// `agent.suspended`: the agent may do nothing further; every token it holds ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSuspended {
    pub agent: String,
    pub by: String,
    pub reason: String,
}

/// `request.refused`: the vault refused a request; recorded so that attempts are audited too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRefused {
    /// The request's own id (a UUIDv7 chosen by the requester).
    pub request_id: String,
    /// Who asked, as the vault verified it: an agent, a user, a gateway, the admin; or
    /// `unverified` when the signature was not checked or did not verify.
    pub requester: String,
    /// The key id an unverified request named: a claim, not an identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_key_id: Option<String>,
    /// The operation asked for (`grant`, `token`, `approve`, `revoke`, `introspect`).
    pub op: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Where an analyst has taken a detection.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TriageStatus {
    Acknowledged,
    Escalated,
    Closed,
    /// Open again after a close.
    Reopened,
}

impl TriageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TriageStatus::Acknowledged => "acknowledged",
            TriageStatus::Escalated => "escalated",
            TriageStatus::Closed => "closed",
            TriageStatus::Reopened => "reopened",
        }
    }
}

/// Why a detection was closed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    FalsePositive,
    Benign,
    Resolved,
    Duplicate,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::FalsePositive => "false_positive",
            CloseReason::Benign => "benign",
            CloseReason::Resolved => "resolved",
            CloseReason::Duplicate => "duplicate",
        }
    }
}

/// `finding.triaged`: an analyst's decision about a detection, on the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingTriaged {
    /// The detection: `<rule id>@<seq of its trigger>` (docs/DETECTION.md).
    pub finding: String,
    pub status: TriageStatus,
    /// Why it was closed; given exactly when `status` is `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<CloseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who decided.
    pub by: String,
}

/// `finding.suppressed`: detections of one rule (about one agent, or any) triggered after this
/// entry and before `until` are marked suppressed; they are still reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingSuppressed {
    pub rule_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub until: Timestamp,
    pub reason: String,
    pub by: String,
}

/// How bad a detection rule says what it saw is (Sigma's `level`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub const ALL: &'static [Level] = &[
        Level::Informational,
        Level::Low,
        Level::Medium,
        Level::High,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Informational => "informational",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.iter().copied().find(|l| l.as_str() == text)
    }
}

/// One rule of a `rules.set`: which rule, which version of its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleVersion {
    /// The rule's `id` (a UUID, as in Sigma).
    pub id: String,
    pub title: String,
    pub level: Level,
    /// BLAKE3 of the rule file's bytes, 64 lowercase hex digits.
    pub content_hash: String,
}

/// `rules.set`: the detection rules in force for every entry after this one, and how long a
/// new agent is observed before rules below `high` may raise findings about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesSet {
    pub rules: Vec<RuleVersion>,
    /// The learning period, in seconds, counted from an agent's first entry.
    pub learning_s: u64,
}

/// `finding.raised`: what a detection rule in force saw at one entry (docs/DETECTION.md).
/// The event's `ts` is the trigger's, and its id is derived from `rule_hash` and `seq`, so
/// running the rule again publishes the same event and the ledger keeps one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingRaised {
    /// `<rule id>@<seq>`: how triage names it.
    pub finding: String,
    pub rule_id: String,
    /// The `content_hash` of the rule version that ran, as in the `rules.set` in force.
    pub rule_hash: String,
    pub title: String,
    pub level: Level,
    /// The entry that triggered it.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// What was seen, in words and numbers.
    pub observed: String,
    /// What the agent's history says is usual, in words and numbers.
    pub baseline: String,
    /// Seqs of the entries that show it, `seq` among them, ascending.
    pub evidence: Vec<u64>,
}

/// `connection.linked`: the vault now holds a user's upstream OAuth grant for a provider
/// (the refresh token and access token, encrypted outside the chain). Never a secret here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLinked {
    pub user: String,
    /// The provider's name in the vault's config (`github`, `slack`).
    pub provider: String,
    /// The scopes the provider granted, as its token endpoint named them.
    pub scopes: Vec<String>,
    /// Keyed BLAKE3 of the refresh token (docs/FORMAT.md): tells grants apart, reveals nothing.
    pub fingerprint: String,
    /// When the access token obtained with it expires, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<Timestamp>,
}

/// `connection.refreshed`: the vault obtained a new access token with the refresh token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRefreshed {
    pub user: String,
    pub provider: String,
    /// Fingerprint of the refresh token held after the refresh.
    pub fingerprint: String,
    /// The provider rotated the refresh token (the old one is discarded).
    pub rotated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<Timestamp>,
}

/// `connection.failed`: a refresh did not work. `broken` means the provider refused the
/// grant itself (`invalid_grant`: revoked upstream, expired): the user must link again.
/// Otherwise the provider could not be reached or answered badly, and the vault tries again
/// on the next call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionFailed {
    pub user: String,
    pub provider: String,
    pub broken: bool,
    pub reason: String,
}

/// `connection.unlinked`: the vault deleted the user's secrets for the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionUnlinked {
    pub user: String,
    pub provider: String,
    /// Who asked: the user, or the admin.
    pub by: String,
    pub reason: String,
}

/// The kind-specific part of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum EventBody {
    #[serde(rename = "agent.registered")]
    AgentRegistered(AgentRegistered),
    #[serde(rename = "key.registered")]
    KeyRegistered(KeyRegistered),
    #[serde(rename = "key.revoked")]
    KeyRevoked(KeyRevoked),
    #[serde(rename = "grant.created")]
    GrantCreated(GrantCreated),
    #[serde(rename = "grant.revoked")]
    GrantRevoked(GrantRevoked),
    #[serde(rename = "approval.requested")]
    ApprovalRequested(ApprovalRequested),
    #[serde(rename = "approval.decided")]
    ApprovalDecided(ApprovalDecided),
    #[serde(rename = "token.issued")]
    TokenIssued(TokenIssued),
    #[serde(rename = "token.revoked")]
    TokenRevoked(TokenRevoked),
    #[serde(rename = "api.called")]
    ApiCalled(ApiCalled),
    #[serde(rename = "agent.suspended")]
    AgentSuspended(AgentSuspended),
    #[serde(rename = "request.refused")]
    RequestRefused(RequestRefused),
    #[serde(rename = "policy.set")]
    PolicySet(PolicySet),
    #[serde(rename = "finding.triaged")]
    FindingTriaged(FindingTriaged),
    #[serde(rename = "finding.suppressed")]
    FindingSuppressed(FindingSuppressed),
    #[serde(rename = "rules.set")]
    RulesSet(RulesSet),
    #[serde(rename = "finding.raised")]
    FindingRaised(FindingRaised),
    #[serde(rename = "connection.linked")]
    ConnectionLinked(ConnectionLinked),
    #[serde(rename = "connection.refreshed")]
    ConnectionRefreshed(ConnectionRefreshed),
    #[serde(rename = "connection.failed")]
    ConnectionFailed(ConnectionFailed),
    #[serde(rename = "connection.unlinked")]
    ConnectionUnlinked(ConnectionUnlinked),
}

/// One event: the header and its kind's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub v: u32,
    pub id: EventId,
    pub ts: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
}

/// Why a payload is not an acceptable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("payload is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("missing header field `{0}`")]
    MissingHeader(&'static str),
    #[error("unsupported schema version {0} (this ledger reads version {SCHEMA_VERSION})")]
    UnsupportedVersion(String),
    #[error("bad header field `{field}`: {why}")]
    BadHeader { field: &'static str, why: String },
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("invalid {kind} fields: {why}")]
    BadFields { kind: &'static str, why: String },
    #[error("field `{field}` is over its limit: {len} > {max}")]
    OverLimit {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

impl Event {
    /// Decodes and validates an event from the exact payload bytes of an envelope.
    pub fn from_payload(payload: &[u8]) -> Result<Event, EventError> {
        crate::strict_json::check(payload).map_err(|e| EventError::NotAnObject(e.to_string()))?;
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|e| EventError::NotAnObject(e.to_string()))?;
        // Version first: a future version's fields must not be judged by this one's rules.
        let v = map.remove("v").ok_or(EventError::MissingHeader("v"))?;
        if v.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
            return Err(EventError::UnsupportedVersion(truncate(&v.to_string())));
        }
        let id = match map.remove("id") {
            Some(serde_json::Value::String(s)) => {
                EventId::parse(&s).map_err(|why| EventError::BadHeader { field: "id", why })?
            }
            Some(_) => {
                return Err(EventError::BadHeader {
                    field: "id",
                    why: "not a string".into(),
                });
            }
            None => return Err(EventError::MissingHeader("id")),
        };
        let ts = match map.remove("ts") {
            Some(serde_json::Value::String(s)) => {
                Timestamp::parse(&s).map_err(|e| EventError::BadHeader {
                    field: "ts",
                    why: e.to_string(),
                })?
            }
            Some(_) => {
                return Err(EventError::BadHeader {
                    field: "ts",
                    why: "not a string".into(),
                });
            }
            None => return Err(EventError::MissingHeader("ts")),
        };
        let kind = match map.get("kind") {
            Some(serde_json::Value::String(s)) => {
                Kind::parse(s).ok_or_else(|| EventError::UnknownKind(truncate(s)))?
            }
            Some(_) => {
                return Err(EventError::BadHeader {
                    field: "kind",
                    why: "not a string".into(),
                });
            }
            None => return Err(EventError::MissingHeader("kind")),
        };
        let body: EventBody =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
                EventError::BadFields {
                    kind: kind.as_str(),
                    why: e.to_string(),
                }
            })?;
        let event = Event {
            v: SCHEMA_VERSION,
            id,
            ts,
            body,
        };
        event.validate()?;
        Ok(event)
    }

    /// The payload bytes a producer signs: compact JSON, header first.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Checks the named limits and the formats serde cannot express.
    pub fn validate(&self) -> Result<(), EventError> {
        self.body.validate()
    }
}

impl EventBody {
    /// Checks the named limits and the formats serde cannot express (admission, and the
    /// vault before it emits anything).
    pub fn validate(&self) -> Result<(), EventError> {
        use EventBody as B;
        match self {
            B::AgentRegistered(e) => {
                id("agent", &e.agent)?;
                id("user", &e.user)?;
                text("name", &e.name, TEXT_BYTES_MAX)?;
                public_key("public_key", &e.public_key)?;
            }
            B::KeyRegistered(e) => {
                text("key_id", &e.key_id, KEY_ID_BYTES_MAX)?;
                let pk = public_key("public_key", &e.public_key)?;
                if crate::keys::key_id(&pk) != e.key_id {
                    return Err(EventError::Invalid {
                        field: "key_id",
                        why: "is not the key id of `public_key`".into(),
                    });
                }
                text("name", &e.name, TEXT_BYTES_MAX)?;
                // An empty list is a key that may emit nothing: a step-up key signs only step-up assertions.
                count("kinds", e.kinds.len(), KINDS_PER_KEY_MAX)?;
            }
            B::KeyRevoked(e) => {
                text("key_id", &e.key_id, KEY_ID_BYTES_MAX)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
            B::GrantCreated(e) => {
                id("grant_id", &e.grant_id)?;
                id("user", &e.user)?;
                id("agent", &e.agent)?;
                identifier("audience", &e.audience, OPERATION_BYTES_MAX)?;
                scopes(&e.scopes)?;
                count("approval", e.approval.len(), APPROVAL_RULES_PER_GRANT_MAX)?;
                for rule in &e.approval {
                    scope(&rule.scope)?;
                }
            }
            B::GrantRevoked(e) => {
                id("grant_id", &e.grant_id)?;
                id("by", &e.by)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
            B::ApprovalRequested(e) => {
                id("approval_id", &e.approval_id)?;
                id("grant_id", &e.grant_id)?;
                id("user", &e.user)?;
                id("agent", &e.agent)?;
                identifier("audience", &e.audience, OPERATION_BYTES_MAX)?;
                scopes(&e.scopes)?;
                text(
                    "binding_message",
                    &e.binding_message,
                    BINDING_MESSAGE_BYTES_MAX,
                )?;
                authorization_details(&e.authorization_details)?;
            }
            B::ApprovalDecided(e) => {
                id("approval_id", &e.approval_id)?;
                id("user", &e.user)?;
                if e.method == ApprovalMethod::StepUp && e.auth_time.is_none() {
                    return Err(EventError::Invalid {
                        field: "auth_time",
                        why: "required when method is step_up".into(),
                    });
                }
                if let Some(a) = &e.step_up {
                    if e.method != ApprovalMethod::StepUp {
                        return Err(EventError::Invalid {
                            field: "step_up",
                            why: "only with method step_up".into(),
                        });
                    }
                    // Form and limits here; who signed it and whether it fits is the ledger's
                    // judgement (it needs the registry), made by the vault and the state fold.
                    a.decode().map_err(|why| EventError::Invalid {
                        field: "step_up",
                        why: why.to_string(),
                    })?;
                }
                if let Some(r) = &e.reason {
                    text("reason", r, TEXT_BYTES_MAX)?;
                }
            }
            B::TokenIssued(e) => {
                id("token_id", &e.token_id)?;
                token_hash("token_hash", &e.token_hash)?;
                id("grant_id", &e.grant_id)?;
                id("user", &e.user)?;
                id("agent", &e.agent)?;
                identifier("audience", &e.audience, OPERATION_BYTES_MAX)?;
                scopes(&e.scopes)?;
                if let Some(a) = &e.approval_id {
                    id("approval_id", a)?;
                }
                authorization_details(&e.authorization_details)?;
            }
            B::TokenRevoked(e) => {
                id("token_id", &e.token_id)?;
                id("by", &e.by)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
            B::ApiCalled(e) => {
                id("token_id", &e.token_id)?;
                if let Some(h) = &e.token_hash {
                    token_hash("token_hash", h)?;
                }
                id("agent", &e.agent)?;
                identifier("audience", &e.audience, OPERATION_BYTES_MAX)?;
                if e.method.is_empty()
                    || e.method.len() > METHOD_BYTES_MAX
                    || !e.method.bytes().all(|c| c.is_ascii_uppercase())
                {
                    return Err(EventError::Invalid {
                        field: "method",
                        why: format!("must be 1-{METHOD_BYTES_MAX} upper-case ASCII letters"),
                    });
                }
                text("operation", &e.operation, OPERATION_BYTES_MAX)?;
                if let Some(s) = &e.scope {
                    scope(s)?;
                }
                if !(100..=599).contains(&e.status) {
                    return Err(EventError::Invalid {
                        field: "status",
                        why: "not an HTTP status (100-599)".into(),
                    });
                }
                text("source", &e.source, ID_BYTES_MAX)?;
                if let Some(h) = &e.request_hash {
                    content_hash("request_hash", h)?;
                }
                if let Some(r) = &e.refused {
                    text("refused", r, TEXT_BYTES_MAX)?;
                }
                if let Some(t) = &e.tool {
                    identifier("tool", t, TOOL_NAME_BYTES_MAX)?;
                }
                if let Some(h) = &e.arguments_hash {
                    content_hash("arguments_hash", h)?;
                }
            }
            B::AgentSuspended(e) => {
                id("agent", &e.agent)?;
                id("by", &e.by)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
            B::RequestRefused(e) => {
                id("request_id", &e.request_id)?;
                text("requester", &e.requester, KEY_ID_BYTES_MAX)?;
                if let Some(k) = &e.claimed_key_id {
                    text("claimed_key_id", k, KEY_ID_BYTES_MAX)?;
                }
                id("op", &e.op)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
                if let Some(a) = &e.audience {
                    identifier("audience", a, OPERATION_BYTES_MAX)?;
                }
                // What was asked for, which may be nothing (a refusal of an empty request).
                count("scopes", e.scopes.len(), SCOPES_PER_EVENT_MAX)?;
                e.scopes.iter().try_for_each(|s| scope(s))?;
            }
            B::PolicySet(p) => {
                p.check()
                    .map_err(|(field, why)| EventError::Invalid { field, why })?;
            }
            B::FindingTriaged(e) => {
                id("finding", &e.finding)?;
                id("by", &e.by)?;
                if let Some(n) = &e.note {
                    text("note", n, TEXT_BYTES_MAX)?;
                }
                if (e.status == TriageStatus::Closed) != e.reason.is_some() {
                    return Err(EventError::Invalid {
                        field: "reason",
                        why: "a reason is given exactly when the status is closed".into(),
                    });
                }
            }
            B::FindingSuppressed(e) => {
                id("rule_id", &e.rule_id)?;
                if let Some(a) = &e.agent {
                    id("agent", a)?;
                }
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
                id("by", &e.by)?;
            }
            B::RulesSet(e) => {
                count("rules", e.rules.len(), RULES_PER_SET_MAX)?;
                let mut ids = std::collections::BTreeSet::new();
                for r in &e.rules {
                    id("rules[].id", &r.id)?;
                    text("rules[].title", &r.title, RULE_TITLE_BYTES_MAX)?;
                    content_hash("rules[].content_hash", &r.content_hash)?;
                    if !ids.insert(r.id.as_str()) {
                        return Err(EventError::Invalid {
                            field: "rules",
                            why: format!("rule {:?} is listed twice", truncate(&r.id)),
                        });
                    }
                }
            }
            B::FindingRaised(e) => {
                id("finding", &e.finding)?;
                id("rule_id", &e.rule_id)?;
                content_hash("rule_hash", &e.rule_hash)?;
                text("title", &e.title, TEXT_BYTES_MAX)?;
                if e.finding != format!("{}@{}", e.rule_id, e.seq) {
                    return Err(EventError::Invalid {
                        field: "finding",
                        why: "not `<rule_id>@<seq>`".into(),
                    });
                }
                for (field, v) in [("agent", &e.agent), ("user", &e.user)] {
                    if let Some(v) = v {
                        id(field, v)?;
                    }
                }
                if let Some(a) = &e.audience {
                    identifier("audience", a, OPERATION_BYTES_MAX)?;
                }
                text("observed", &e.observed, TEXT_BYTES_MAX)?;
                text("baseline", &e.baseline, TEXT_BYTES_MAX)?;
                count("evidence", e.evidence.len(), EVIDENCE_PER_FINDING_MAX)?;
                if !e.evidence.windows(2).all(|w| w[0] < w[1]) || !e.evidence.contains(&e.seq) {
                    return Err(EventError::Invalid {
                        field: "evidence",
                        why: "seqs must ascend without repeats and include `seq`".into(),
                    });
                }
            }
            B::ConnectionLinked(e) => {
                connection(&e.user, &e.provider)?;
                count("scopes", e.scopes.len(), SCOPES_PER_EVENT_MAX)?;
                e.scopes.iter().try_for_each(|s| scope(s))?;
                token_hash("fingerprint", &e.fingerprint)?;
            }
            B::ConnectionRefreshed(e) => {
                connection(&e.user, &e.provider)?;
                token_hash("fingerprint", &e.fingerprint)?;
            }
            B::ConnectionFailed(e) => {
                connection(&e.user, &e.provider)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
            B::ConnectionUnlinked(e) => {
                connection(&e.user, &e.provider)?;
                id("by", &e.by)?;
                text("reason", &e.reason, TEXT_BYTES_MAX)?;
            }
        }
        Ok(())
    }
}

/// The user and provider every `connection.*` event names.
fn connection(user: &str, provider: &str) -> Result<(), EventError> {
    id("user", user)?;
    identifier("provider", provider, PROVIDER_BYTES_MAX)
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), EventError> {
    if value.len() > max {
        return Err(EventError::OverLimit {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some(c) = value.chars().find(|c| is_hidden(*c)) {
        return Err(EventError::Invalid {
            field,
            why: format!(
                "contains U+{:04X}, a control, format or separator character",
                c as u32
            ),
        });
    }
    Ok(())
}

/// Characters free text may not hold: controls, and the invisible ones that make a
/// text read differently from what it is (bidirectional controls, zero-width
/// characters, line and paragraph separators, the byte-order mark).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Characters an identifier, audience or scope may hold: those RFC 3986 allows in a
/// URI (ASCII letters and digits, `-._~:/?#[]@!$&'()*+,;=` and `%`). ASCII only, so no
/// identifier can look like another (`agent-7` in Cyrillic) or hide a character.
pub fn is_id_char(c: char) -> bool {
    // One match (a table lookup), not a search: it runs for every byte of every identifier.
    matches!(c,
        'a'..='z' | 'A'..='Z' | '0'..='9'
        | '-' | '.' | '_' | '~' | ':' | '/' | '?' | '#' | '[' | ']' | '@' | '!' | '$' | '&'
        | '\'' | '(' | ')' | '*' | '+' | ',' | ';' | '=' | '%')
}

/// An identifier-like field: non-empty, at most `max` bytes, only [`is_id_char`]s.
pub fn identifier(field: &'static str, value: &str, max: usize) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::Invalid {
            field,
            why: "empty".into(),
        });
    }
    text(field, value, max)?;
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(EventError::Invalid {
            field,
            why: format!(
                "{:?} is not allowed: identifiers hold only ASCII letters, digits and -._~:/?#[]@!$&'()*+,;=%",
                c
            ),
        });
    }
    Ok(())
}

fn id(field: &'static str, value: &str) -> Result<(), EventError> {
    identifier(field, value, ID_BYTES_MAX)
}

/// 64 lowercase hex digits: a BLAKE3 or SHA-256 digest.
fn content_hash(field: &'static str, value: &str) -> Result<(), EventError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Ok(());
    }
    Err(EventError::Invalid {
        field,
        why: "not 64 lowercase hex digits".into(),
    })
}

fn count(field: &'static str, len: usize, max: usize) -> Result<(), EventError> {
    if len > max {
        return Err(EventError::OverLimit { field, len, max });
    }
    Ok(())
}

/// One scope: an identifier of at most `SCOPE_BYTES_MAX` bytes.
pub fn scope(value: &str) -> Result<(), EventError> {
    identifier("scopes", value, SCOPE_BYTES_MAX)
}

/// A list of scopes: at least one (a grant, approval or token for nothing is a mistake).
fn scopes(values: &[String]) -> Result<(), EventError> {
    if values.is_empty() {
        return Err(EventError::Invalid {
            field: "scopes",
            why: "empty: name at least one scope".into(),
        });
    }
    count("scopes", values.len(), SCOPES_PER_EVENT_MAX)?;
    values.iter().try_for_each(|s| scope(s))
}

fn token_hash(field: &'static str, value: &str) -> Result<(), EventError> {
    if value.len() != 64
        || !value
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(EventError::Invalid {
            field,
            why: "must be 64 lowercase hex digits".into(),
        });
    }
    Ok(())
}

fn public_key(field: &'static str, value: &str) -> Result<[u8; 32], EventError> {
    crate::keys::decode_public_key(value).map_err(|e| EventError::Invalid {
        field,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            v: 1,
            id: EventId::parse("01900000-0000-7000-8000-000000000001").unwrap(),
            ts: Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
            body: EventBody::ApiCalled(ApiCalled {
                token_id: "tok-1".into(),
                token_hash: None,
                agent: "agent-1".into(),
                audience: "https://api.github.com".into(),
                method: "GET".into(),
                operation: "/repos/acme/web/issues".into(),
                scope: Some("issues:read".into()),
                status: 200,
                source: "10.0.0.7".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn payload_round_trips_with_header_first() {
        let e = sample();
        let bytes = e.to_payload();
        assert!(bytes.starts_with(br#"{"v":1,"id":"01900000-0000-7000-8000-000000000001","ts":"#));
        assert_eq!(Event::from_payload(&bytes).unwrap(), e);
    }

    fn reject(json: &str) -> String {
        Event::from_payload(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reasons_are_precise() {
        let base = String::from_utf8(sample().to_payload()).unwrap();
        assert!(
            reject(&base.replace(r#""v":1"#, r#""v":2"#)).contains("unsupported schema version 2")
        );
        assert!(
            reject(&base.replace(r#""status":200"#, r#""status":200,"extra":1"#))
                .contains("unknown field `extra`")
        );
        assert!(
            reject(&base.replace("api.called", "api.poked")).contains("unknown kind \"api.poked\"")
        );
        assert!(reject(&base.replace("7000-8000", "4000-8000")).contains("not a UUIDv7"));
        assert!(reject(&base.replace(r#""method":"GET""#, r#""method":"get""#)).contains("method"));
        assert!(reject(&base.replace(r#","status":200"#, "")).contains("missing field `status`"));
        assert!(reject("[1]").contains("not a JSON object"));
        let long = "x".repeat(ID_BYTES_MAX + 1);
        assert!(reject(&base.replace("agent-1", &long)).contains("over its limit"));
    }

    #[test]
    fn an_id_with_a_hyphen_out_of_place_is_refused_not_a_panic() {
        // Found by tests/verify.rs's bit flips: a fifth hyphen left an odd hex digit.
        for bad in [
            "01900000-0000-7000-8000-00000000000-",
            "01900000-0000-7000-8000-0000-0000000",
            "0190000--0000-7000-8000-000000000001",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
        assert!(EventId::parse("01900000-0000-7000-8000-000000000001").is_ok());
    }

    #[test]
    fn a_payload_means_one_thing_to_every_parser() {
        let base = String::from_utf8(sample().to_payload()).unwrap();
        // Two `agent`s: one parser would keep the first, another the last.
        let twice = base.replace(
            r#""agent":"agent-1""#,
            r#""agent":"agent-1","agent":"agent-2""#,
        );
        assert!(reject(&twice).contains("duplicate key \"agent\""));
        // Even a repeated header.
        let ts_twice = base.replacen(r#""ts":"#, r#""ts":"2026-11-22T08:00:00.000000Z","ts":"#, 1);
        assert!(reject(&ts_twice).contains("duplicate key"));
    }

    #[test]
    fn identifiers_hold_only_uri_characters_and_text_hides_nothing() {
        let base = String::from_utf8(sample().to_payload()).unwrap();
        // Cyrillic "а" in place of the Latin one: looks the same, is another agent.
        let lookalike = base.replace("agent-1", "\u{0430}gent-1");
        assert!(reject(&lookalike).contains("identifiers hold only ASCII"));
        for hidden in [
            "\u{202E}",
            "\u{200B}",
            "\u{2028}",
            "\u{FEFF}",
            " ",
            "\u{00AD}",
            "\u{E0041}",
            "\u{3164}",
            "\u{FE0F}",
            "\u{180E}",
        ] {
            let bad = base.replace("agent-1", &format!("agent{hidden}-1"));
            assert!(reject(&bad).contains("`agent`"), "{hidden:?}");
        }
        // Free text may be any language, but not hide characters.
        let op = |s: &str| base.replace("/repos/acme/web/issues", s);
        Event::from_payload(op("/wiki/Ελλάδα").as_bytes()).unwrap();
        assert!(reject(&op("/a\u{202E}b")).contains("U+202E"));
        assert!(reject(&op("/a\u{E0041}b")).contains("U+E0041"));
        // Scopes too, and a list of none.
        assert!(reject(&base.replace("issues:read", "issues read")).contains("scopes"));
        let grant = r#"{"v":1,"id":"01900000-0000-7000-8000-000000000002","ts":"2026-11-22T08:00:00.000000Z","kind":"grant.created","grant_id":"g","user":"u","agent":"a","audience":"x","scopes":[],"expires_at":"2026-11-23T08:00:00.000000Z"}"#;
        assert!(
            reject(grant).contains("empty: name at least one scope"),
            "{}",
            reject(grant)
        );
    }
}
