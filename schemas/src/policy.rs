//! The policy: every setting that changes a vault decision or a finding, as recorded by `policy.set`.
//!
//! A ledger's policy is on its chain, never in a config file: the fold, the
//! vault, `state rebuild`, `--as-of` and the SQL state tables all judge each
//! entry by the last `policy.set` before it (docs/FORMAT.md, section "Policy").
//! Before any `policy.set`, [`PolicySet::DEFAULTS`] is in force; a fresh ledger
//! records exactly those defaults as its first entry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest duration any policy setting may name, in seconds (30 days).
pub const POLICY_SECONDS_MAX: u32 = 30 * 24 * 3600;
/// Highest recording rate a policy may set, per second.
pub const POLICY_RATE_MAX: u32 = 100_000;

/// `policy.set`: from the next entry on, decisions and findings follow these settings.
///
/// Only the admin key may emit it, except the ledger's first entry: the ledger's own
/// key records [`PolicySet::DEFAULTS`] there, and nothing else, ever.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// The policy's revision: the defaults are revision 1; each later `policy.set` must
    /// carry the next one (in force plus one), or it is not applied (finding
    /// `policy.revision_not_next`), so no revision can jump out of reach.
    #[schemars(range(min = 1))]
    pub revision: u64,
    /// Oldest step-up authentication accepted for a critical approval, in seconds before its decision.
    #[schemars(range(min = 1, max = 2_592_000))]
    pub step_up_max_age_s: u32,
    /// How long an approval request waits for a human, in seconds.
    #[schemars(range(min = 1, max = 2_592_000))]
    pub approval_ttl_s: u32,
    /// Longest lifetime of a token, in seconds; also the lifetime given when none is asked.
    #[schemars(range(min = 1, max = 2_592_000))]
    pub token_ttl_max_s: u32,
    /// How far a vault request's `ts` may be from the vault's clock, in seconds (the replay window).
    #[schemars(range(min = 1, max = 2_592_000))]
    pub request_skew_max_s: u32,
    /// Refusals of requests from unknown or invalid signers recorded per second at most;
    /// beyond it they are answered but not appended.
    #[schemars(range(min = 1, max = 100_000))]
    pub unauthenticated_recorded_per_s: u32,
    /// How far an event's `ts` may be ahead of the ledger's receipt time, in seconds;
    /// an event dated further ahead is quarantined (`ts_ahead`). Absent on chains
    /// recorded before it existed, where the default applies.
    #[serde(default = "defaults::event_ts_ahead_max_s")]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub event_ts_ahead_max_s: u32,
    /// Vault requests (grant, token, approve, revoke) answered per signing key per
    /// second; beyond it they are refused, and the first refusal of each second is
    /// recorded. Absent on older chains, where the default applies.
    #[serde(default = "defaults::vault_requests_per_key_per_s")]
    #[schemars(range(min = 1, max = 100_000))]
    pub vault_requests_per_key_per_s: u32,
}

/// Defaults of settings added after the first format, for `policy.set`s that predate them.
mod defaults {
    pub fn event_ts_ahead_max_s() -> u32 {
        super::PolicySet::DEFAULTS.event_ts_ahead_max_s
    }
    pub fn vault_requests_per_key_per_s() -> u32 {
        super::PolicySet::DEFAULTS.vault_requests_per_key_per_s
    }
}

impl PolicySet {
    /// The documented defaults (docs/FORMAT.md), in force until the first `policy.set`.
    pub const DEFAULTS: PolicySet = PolicySet {
        revision: 1,
        step_up_max_age_s: 300,
        approval_ttl_s: 300,
        token_ttl_max_s: 300,
        request_skew_max_s: 300,
        unauthenticated_recorded_per_s: 50,
        event_ts_ahead_max_s: 300,
        vault_requests_per_key_per_s: 100,
    };

    /// The settings as `(field name, value, largest allowed)`, in declaration order (for
    /// checks, messages and diffs).
    pub fn settings(&self) -> [(&'static str, u32, u32); 7] {
        [
            (
                "step_up_max_age_s",
                self.step_up_max_age_s,
                POLICY_SECONDS_MAX,
            ),
            ("approval_ttl_s", self.approval_ttl_s, POLICY_SECONDS_MAX),
            ("token_ttl_max_s", self.token_ttl_max_s, POLICY_SECONDS_MAX),
            (
                "request_skew_max_s",
                self.request_skew_max_s,
                POLICY_SECONDS_MAX,
            ),
            (
                "unauthenticated_recorded_per_s",
                self.unauthenticated_recorded_per_s,
                POLICY_RATE_MAX,
            ),
            (
                "event_ts_ahead_max_s",
                self.event_ts_ahead_max_s,
                POLICY_SECONDS_MAX,
            ),
            (
                "vault_requests_per_key_per_s",
                self.vault_requests_per_key_per_s,
                POLICY_RATE_MAX,
            ),
        ]
    }

    /// Whether two policies decide alike (the revision aside).
    pub fn same_settings(&self, other: &PolicySet) -> bool {
        self.settings() == other.settings()
    }

    /// Checks every setting against its range; the reason names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.revision == 0 {
            return Err(("revision", "must be at least 1".into()));
        }
        for (name, value, max) in self.settings() {
            if value == 0 || value > max {
                return Err((name, format!("{value} is outside 1..={max}")));
            }
        }
        Ok(())
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        PolicySet::DEFAULTS
    }
}

const _: () = assert!(POLICY_SECONDS_MAX == 2_592_000 && POLICY_RATE_MAX == 100_000);
