//! Named limits of the wire contract: anything over one is rejected with a reason.
//!
//! The limits are part of the format (docs/FORMAT.md lists them), so a producer
//! in any language can check its input before publishing.

/// Largest envelope accepted, in bytes of JSON as published.
pub const ENVELOPE_BYTES_MAX: usize = 64 * 1024;
/// Largest decoded payload (the event JSON), in bytes.
pub const PAYLOAD_BYTES_MAX: usize = 48 * 1024;
/// Signatures per envelope: exactly one producer signs each event.
pub const SIGNATURES_PER_ENVELOPE_MAX: usize = 1;
/// Keys one envelope's signature is checked against, at most. DSSE's `keyid` is an
/// unauthenticated hint: when it names no registered key (a DSSE library wrote its own
/// kind of key id), the keys the event names as its author are tried, newest first, up
/// to this many, so a forged envelope costs a bounded number of signature checks.
pub const SIGNATURE_CHECKS_PER_ENVELOPE_MAX: usize = 2;
/// Largest step-up assertion payload (the signed claim JSON), in bytes.
pub const STEP_UP_PAYLOAD_BYTES_MAX: usize = 1024;
/// Length of a DSSE `keyid`, in bytes.
pub const KEY_ID_BYTES_MAX: usize = 128;
/// Length of an identifier field (user, agent, audience, grant id, ...), in bytes.
pub const ID_BYTES_MAX: usize = 128;
/// Length of a free-text field (reason, name), in bytes.
pub const TEXT_BYTES_MAX: usize = 1024;
/// Length of a binding message shown to an approver, in bytes.
pub const BINDING_MESSAGE_BYTES_MAX: usize = 256;
/// Length of an API operation or path, in bytes.
pub const OPERATION_BYTES_MAX: usize = 2048;
/// Bytes of an MCP tool's name in `api.called` (the MCP spec allows 1-128 characters).
pub const TOOL_NAME_BYTES_MAX: usize = 128;
/// Authorization details (RFC 9396) one approval or token may carry.
pub const AUTHORIZATION_DETAILS_MAX: usize = 8;
/// Bytes of a provider's name in `connection.*` events and the vault's config.
pub const PROVIDER_BYTES_MAX: usize = 64;
/// Bytes of a provider's token answer the vault reads (access and refresh tokens, scopes).
pub const PROVIDER_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Bytes of one upstream secret (an access or refresh token) the vault keeps.
pub const UPSTREAM_SECRET_BYTES_MAX: usize = 8 * 1024;
/// Length of one scope, in bytes.
pub const SCOPE_BYTES_MAX: usize = 128;
/// Scopes named by one event.
pub const SCOPES_PER_EVENT_MAX: usize = 64;
/// Kinds a producer key may be allowed to emit (there are only this many kinds).
pub const KINDS_PER_KEY_MAX: usize = 32;
/// Approval rules attached to one grant.
pub const APPROVAL_RULES_PER_GRANT_MAX: usize = 64;
/// Length of an HTTP method, in bytes.
pub const METHOD_BYTES_MAX: usize = 16;

/// Rules one `rules.set` may list.
pub const RULES_PER_SET_MAX: usize = 100;
/// Bytes of a rule's title in a `rules.set` (a longer title is cut there).
pub const RULE_TITLE_BYTES_MAX: usize = 160;
/// Evidence seqs one `finding.raised` may carry (a detection with more keeps its first ones).
pub const EVIDENCE_PER_FINDING_MAX: usize = 64;
const _: () = assert!(PAYLOAD_BYTES_MAX < ENVELOPE_BYTES_MAX);
// A rule entry: id, title, level, hash and JSON punctuation.
const _: () =
    assert!(RULES_PER_SET_MAX * (ID_BYTES_MAX + RULE_TITLE_BYTES_MAX + 128) < PAYLOAD_BYTES_MAX);
const _: () = assert!(SIGNATURE_CHECKS_PER_ENVELOPE_MAX >= 1);
const _: () = assert!(STEP_UP_PAYLOAD_BYTES_MAX < PAYLOAD_BYTES_MAX);
const _: () = assert!(SCOPES_PER_EVENT_MAX * SCOPE_BYTES_MAX < PAYLOAD_BYTES_MAX);
