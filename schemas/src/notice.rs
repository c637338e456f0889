//! What the ledger announces on NATS after each commit, and the quarantine record it keeps.
//!
//! `docket.appended` carries [`Appended`], `docket.rejected` a [`Quarantined`]
//! record (the same JSON the store keeps), `docket.findings` one [`Finding`] per
//! message, and `docket.checkpoints` a signed checkpoint note (`checkpoint.rs`).
//! Notices are hints for watchers: the chain is the record (docs/FORMAT.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Subject prefix of producers' events: `docket.events.<kind>`.
pub const EVENT_SUBJECT_PREFIX: &str = "docket.events.";
/// Subject of [`Quarantined`] notices.
pub const SUBJECT_REJECTED: &str = "docket.rejected";
/// Subject of [`Appended`] notices.
pub const SUBJECT_APPENDED: &str = "docket.appended";
/// Subject of signed checkpoint notes.
pub const SUBJECT_CHECKPOINTS: &str = "docket.checkpoints";
/// Subject of [`Finding`] notices.
pub const SUBJECT_FINDINGS: &str = "docket.findings";

/// `docket.appended`: entries `from_seq..=to_seq` are durable; `head` is the entry hash at `to_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Appended {
    pub origin: String,
    pub from_seq: u64,
    pub to_seq: u64,
    /// Lowercase hex of the entry hash at `to_seq`.
    pub head: String,
    /// Microseconds since the Unix epoch when the batch was committed.
    pub committed_us: i64,
}

/// An envelope kept out of the chain (`docket.rejected`, and the store's quarantine).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quarantined {
    /// The transport sequence it arrived with (the JetStream stream sequence).
    pub source_seq: u64,
    /// Microseconds since the Unix epoch when it was received.
    pub received_us: i64,
    pub subject: String,
    /// A stable reason code (docs/FORMAT.md, "Quarantine codes").
    pub code: String,
    /// The reason in words.
    pub reason: String,
    /// Standard base64 of the message as received: all of it when it is at most
    /// `QUARANTINE_SAMPLE_BYTES` long, else its first `QUARANTINE_SAMPLE_BYTES` bytes.
    pub raw: String,
    /// Length of the whole message, in bytes.
    #[serde(default)]
    pub raw_bytes: u64,
    /// Hex of BLAKE3 over the whole message, so a sample can be matched to the original.
    #[serde(default)]
    pub raw_blake3: String,
}

/// Bytes of a refused message kept in its quarantine record, at most.
pub const QUARANTINE_SAMPLE_BYTES: usize = 1024;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// A policy violation (`docket.findings`, the SQL `findings` table): which rule, how bad,
/// in words, and the entries that prove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// The entry that broke the rule.
    pub seq: u64,
    pub ts: Timestamp,
    pub rule: Rule,
    pub severity: Severity,
    pub message: String,
    /// Seqs of the entries that together show the violation (including `seq`).
    pub evidence: Vec<u64>,
    pub agent: Option<String>,
}

/// A detection (`docket.findings`, beside the policy findings): `serve`'s detector publishes one
/// once JetStream holds its `finding.raised` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectionNotice {
    /// The `finding.raised` event's id (the chain's entry for it has this `event_id`).
    pub event_id: String,
    /// The trigger's `ts`.
    pub ts: Timestamp,
    pub detection: crate::event::FindingRaised,
}

macro_rules! rules {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $sev:ident;)*) => {
        /// The rules the fold checks on every entry: the one list (docs/FORMAT.md, "Rules").
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum Rule { $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)* }
        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];
            pub fn as_str(self) -> &'static str { match self { $(Rule::$variant => $name,)* } }
            pub fn severity(self) -> Severity { match self { $(Rule::$variant => Severity::$sev,)* } }
            /// What the rule catches, in one sentence.
            pub fn meaning(self) -> &'static str { match self { $(Rule::$variant => concat!($($doc),*).trim_ascii(),)* } }
        }
    };
}

rules! {
    /// An API call presented a token the log never issued.
    CallUnknownToken = "call.unknown_token", High;
    /// An API call used a token after it expired.
    CallExpiredToken = "call.expired_token", High;
    /// An API call used a token after it was revoked.
    CallRevokedToken = "call.revoked_token", Critical;
    /// An API call needed a scope its token does not carry.
    CallScopeNotGranted = "call.scope_not_granted", High;
    /// An agent used a token issued to another agent.
    CallWrongAgent = "call.wrong_agent", Critical;
    /// A suspended agent made an API call.
    CallSuspendedAgent = "call.suspended_agent", Critical;
    /// An API call went beyond its grant's call budget.
    CallOverBudget = "call.over_budget", Medium;
    /// An API call with a token bound to approved actions (RFC 9396 authorization details) did something else.
    CallOutsideAuthorization = "call.outside_authorization", Critical;
    /// A token was issued under a grant the log does not know.
    TokenUnknownGrant = "token.unknown_grant", High;
    /// A token carries scopes, an agent or an audience its grant does not give.
    TokenScopeOutsideGrant = "token.scope_outside_grant", High;
    /// A token was issued after its grant expired or was revoked.
    TokenAfterGrantEnded = "token.after_grant_ended", High;
    /// A token needing approval was issued without a sound approval (approved by the grant's user, in time, with a step-up when critical).
    TokenWithoutApproval = "token.without_approval", Critical;
    /// A second token was issued on one approval.
    TokenApprovalReused = "token.approval_reused", Critical;
    /// A token issued on an approval is not bound to the exact actions that approval was asked for.
    TokenNotAsApproved = "token.not_as_approved", Critical;
    /// A token outlives its grant or the grant's token lifetime.
    TokenTtlOverGrant = "token.ttl_over_grant", Medium;
    /// A token outlives the policy's longest token lifetime.
    TokenTtlOverPolicy = "token.ttl_over_policy", Medium;
    /// A token was issued to a suspended agent.
    TokenSuspendedAgent = "token.suspended_agent", Critical;
    /// A token was issued under a grant whose call budget was spent.
    TokenBudgetSpent = "token.budget_spent", Medium;
    /// An approval was decided by someone other than the grant's user; the decision does not count.
    ApprovalWrongDecider = "approval.wrong_decider", Critical;
    /// A critical approval's step-up was older than the policy allows.
    ApprovalStaleStepUp = "approval.stale_step_up", High;
    /// A critical approval's step-up was missing or not proven by the user's step-up key.
    ApprovalStepUpUnproven = "approval.step_up_unproven", Critical;
    /// An approval was decided that was never requested.
    ApprovalUnknownRequest = "approval.unknown_request", Medium;
    /// An approval was decided again after its first decision.
    ApprovalRedecided = "approval.redecided", High;
    /// An approval was decided after it expired.
    ApprovalDecidedLate = "approval.decided_late", High;
    /// An approval request waits longer than the policy's approval lifetime.
    ApprovalTtlOverPolicy = "approval.ttl_over_policy", Medium;
    /// An id that names an existing object was used to create another.
    IdReused = "object.id_reused", High;
    /// A `policy.set` did not carry the next revision (the one in force plus one); it was not applied.
    PolicyRevisionNotNext = "policy.revision_not_next", Medium;
}
