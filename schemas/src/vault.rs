//! The vault's request and reply: what a user, an agent or a gateway sends on `docket.vault.<op>`, and what comes back.
//!
//! A request is a DSSE envelope (payloadType [`REQUEST_PAYLOAD_TYPE`]) over a
//! [`Request`], signed by the requester's key. The reply is a [`Reply`]: the
//! outcome of a grant, token, approve or revoke request, or an RFC 7662
//! introspection answer (docs/FORMAT.md, "Vault requests").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{ApprovalMethod, ApprovalRule, Decision, EventId, Risk};
use crate::step_up::StepUpAssertion;
use crate::time::Timestamp;

/// The DSSE `payloadType` of a vault request.
pub const REQUEST_PAYLOAD_TYPE: &str = "application/vnd.docket.request+json";
/// The only request version this build reads.
pub const REQUEST_VERSION: u32 = 1;
/// Subjects the vault listens on: `docket.vault.<op>`.
pub const SUBJECT_VAULT: &str = "docket.vault.>";
/// The subject the ledger answers signed read requests on (request/reply).
pub const SUBJECT_READ: &str = "docket.read";
/// Subjects the vault's connections answer on: `docket.connections.<op>` (`connect`,
/// `link`, `unlink`, `upstream`).
pub const SUBJECT_CONNECTIONS: &str = "docket.connections.>";
/// Most rows one read answers with.
pub const READ_ROWS_MAX: u32 = 5_000;

/// A vault request: header and operation. (serde cannot refuse unknown fields
/// through `flatten`; unknown request fields are ignored, unlike event fields.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    pub v: u32,
    /// UUIDv7 chosen by the requester; a request id is accepted once.
    pub id: EventId,
    pub ts: Timestamp,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A user (or the admin for them) grants an agent scopes on an audience.
    Grant {
        user: String,
        agent: String,
        audience: String,
        scopes: Vec<String>,
        expires_at: Timestamp,
        #[serde(default)]
        max_calls: Option<u64>,
        #[serde(default)]
        max_token_ttl_s: Option<u32>,
        #[serde(default)]
        approval: Vec<ApprovalRule>,
    },
    /// An agent asks for a token; `approval_id` polls a pending approval.
    Token {
        agent: String,
        audience: String,
        scopes: Vec<String>,
        /// What the agent is about to do, shown to the approver.
        action: String,
        #[serde(default)]
        approval_id: Option<String>,
        #[serde(default)]
        ttl_s: Option<u32>,
        /// Base64 of a one-time X25519 public key made for this request: an issued
        /// token's secret comes back sealed to it (docs/FORMAT.md section 10). Required
        /// for a token to be issued; without it the request is refused.
        #[serde(default)]
        reply_key: Option<String>,
        /// RFC 9396: the exact actions the token is for. The approver sees them, and the
        /// token is bound to them: a gateway passes nothing else with it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        authorization_details: Vec<crate::event::AuthorizationDetail>,
    },
    /// A user answers a pending approval request.
    Approve {
        approval_id: String,
        decision: Decision,
        method: ApprovalMethod,
        #[serde(default)]
        auth_time: Option<Timestamp>,
        #[serde(default)]
        reason: Option<String>,
        /// The evidence of a step-up: a claim signed by the user's step-up key
        /// (`stepup:<user>`). Needed for `method: step_up`, and so for critical approvals.
        #[serde(default)]
        step_up: Option<StepUpAssertion>,
    },
    /// A gateway asks whether a presented token is active (RFC 7662).
    Introspect { token: String },
    /// A read-only SQL question over the audit tables, answered on [`SUBJECT_READ`] (not by
    /// the vault) to the admin's key or an analyst's (a key registered for `finding.triaged`).
    Read {
        sql: String,
        /// Most rows wanted; the ledger caps it at [`READ_ROWS_MAX`].
        #[serde(default)]
        max_rows: Option<u32>,
    },
    /// A user starts linking an upstream account (answered on `docket.connections.connect`):
    /// the answer is the provider's authorization URL, with this PKCE challenge (S256) and
    /// `state`, redirecting to `redirect_uri` (a loopback address).
    Connect {
        /// The user linking: the request's key must be theirs.
        user: String,
        provider: String,
        redirect_uri: String,
        code_challenge: String,
        state: String,
    },
    /// A user hands over the authorization code the provider redirected with; the vault
    /// exchanges it with the PKCE verifier and its client secret, and keeps the tokens.
    Link {
        user: String,
        provider: String,
        code: String,
        code_verifier: String,
        redirect_uri: String,
    },
    /// A user (or the admin, naming `user`) removes a connection: the vault deletes its
    /// secrets and asks the provider to revoke the grant.
    Unlink {
        provider: String,
        #[serde(default)]
        user: Option<String>,
        reason: String,
    },
    /// A gateway asks for the upstream access token of the user an active Docket token acts
    /// for, sealed to `reply_key` (docs/FORMAT.md section 10).
    Upstream {
        token: String,
        provider: String,
        reply_key: String,
    },
    /// Revoke one token, a grant (and its tokens), or suspend an agent (and its tokens).
    Revoke {
        #[serde(default)]
        token_id: Option<String>,
        #[serde(default)]
        grant_id: Option<String>,
        #[serde(default)]
        agent: Option<String>,
        reason: String,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Grant { .. } => "grant",
            Op::Token { .. } => "token",
            Op::Approve { .. } => "approve",
            Op::Introspect { .. } => "introspect",
            Op::Read { .. } => "read",
            Op::Revoke { .. } => "revoke",
            Op::Connect { .. } => "connect",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Upstream { .. } => "upstream",
        }
    }
}

/// What a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Granted,
    /// Waiting for a human: poll with the same `approval_id`.
    Pending,
    Issued,
    Approved,
    Denied,
    Revoked,
    Suspended,
}

/// Where the decision was recorded: the entry that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    pub seq: u64,
    /// Lowercase hex of the entry hash.
    pub hash: String,
    /// The entry's inclusion proof under a signed checkpoint, when the request asked for it
    /// with the `Docket-Receipt-Wait-Ms` header and a checkpoint covered it in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Box<crate::proof::InclusionProof>>,
}

/// NATS header on a vault request asking for the decision's inclusion proof, waiting up
/// to this many milliseconds for a checkpoint that covers it.
pub const RECEIPT_WAIT_HEADER: &str = "Docket-Receipt-Wait-Ms";

/// The answer to a grant, token, approve or revoke request. `ok: false` carries `error`;
/// `ok: true` carries `status` and the fields that status names (docs/FORMAT.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Outcome {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The issued token's secret, sealed to the request's `reply_key`: only the requester
    /// can open it; never recorded (the log keeps a keyed hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_token: Option<crate::seal::SealedSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Space-separated scopes of an issued token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// When an issued token or a pending approval expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The entry recording the decision, when one was appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

impl Outcome {
    /// The token secret of an `issued` answer, opened with the request's reply key.
    pub fn open_token(
        &self,
        key: &crate::seal::ReplyKey,
    ) -> Result<String, crate::seal::SealError> {
        let sealed = self
            .sealed_token
            .as_ref()
            .ok_or(crate::seal::SealError::Open)?;
        String::from_utf8(key.open(sealed)?).map_err(|_| crate::seal::SealError::Open)
    }

    pub fn refused(error: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            error: Some(error.into()),
            ..Outcome::default()
        }
    }

    pub fn done(status: Status) -> Outcome {
        Outcome {
            ok: true,
            status: Some(status),
            ..Outcome::default()
        }
    }
}

/// An RFC 7662 introspection answer. Inactive, it carries `reason` and, when the vault
/// knows the token, its `jti` and `client_id` (answers go to gateways and the admin only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The agent the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issue time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Docket's extension, on inactive answers only: why the token is not active
    /// (`unknown token`, `token expired`, `token revoked`, `grant revoked`,
    /// `grant expired`, `no such grant`, `agent suspended`, `the grant's call budget is
    /// spent`), for the gateway's refusal and its record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 9396 section 9.2: the actions an active token is bound to; absent when unbound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<crate::event::AuthorizationDetail>,
}

/// Any reply on `docket.vault.<op>`: an outcome, or (for `introspect` by a gateway) an introspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Reply {
    Introspection(Introspection),
    Outcome(Outcome),
}

/// Pushed on `docket.approvals.<user>` when an approval request waits for that user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalNotice {
    pub approval_id: String,
    pub agent: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub risk: Risk,
    pub binding_message: String,
    pub expires_at: Timestamp,
    /// The exact actions asked for, when the agent named them (RFC 9396).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<crate::event::AuthorizationDetail>,
}

/// Subject prefix of approval notices: `docket.approvals.<user>`.
pub const SUBJECT_APPROVALS_PREFIX: &str = "docket.approvals.";

/// Seals a request for the vault: the client side of the protocol (a DSSE envelope
/// over the request's JSON, signed by the requester's key).
pub fn seal_request(request: &Request, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    // Ids, times, strings and enums only: serialising to a Vec cannot fail.
    let payload = serde_json::to_vec(request).unwrap_or_default();
    crate::envelope::seal_as(REQUEST_PAYLOAD_TYPE, &payload, key)
}

/// The answer to a read: the result as text cells (NULL as empty), or why there is none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReadReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The registered name of the key that signed the request (`user:alice`, `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Vec<Vec<String>>,
    /// More rows matched than were sent (the row cap, or the reply's size limit).
    #[serde(default)]
    pub truncated: bool,
}

/// The answer on `docket.connections.<op>`. `ok: false` carries `error`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `connect`: where the user's browser goes to approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// `link`: the scopes the provider granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// `link`: the refresh token's fingerprint, as recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `upstream`: the access token, sealed to the request's `reply_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_token: Option<crate::seal::SealedSecret>,
    /// `upstream`: when the access token expires, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// `link` and `unlink`: the id of the event recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// On a refusal: trying again later may work (the provider could not be reached).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl ConnectionReply {
    pub fn refused(error: impl Into<String>) -> ConnectionReply {
        ConnectionReply {
            ok: false,
            error: Some(error.into()),
            ..ConnectionReply::default()
        }
    }
}
