//! The policy's rules: each rule is one function, called by the vault before it decides and by the fold on every entry.
//!
//! A rule returns the [`Breach`]es an event would commit against the state as it
//! stands before it. The vault refuses a request whose event would commit one;
//! the fold records each as a finding when an event from elsewhere commits it.
//! So whatever the vault refuses, the fold flags, and whatever the vault emits
//! raises no finding (tested both ways in `tests/policy_agreement.rs`). The
//! settings come from the log (`policy.set`, see `state::PolicyInForce`).

use std::collections::BTreeSet;

use docket_schemas::*;

use crate::state::{ApprovalState, GrantState, Rule, Status, TokenState, VaultState};
use crate::step_up::{StepUpRefusal, judge as judge_step_up};

/// The settings the rules read: the `policy.set` in force.
pub type Policy = PolicySet;

/// One rule broken: which, in words, and the entries that show it (besides the entry itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breach {
    pub rule: Rule,
    pub why: String,
    pub evidence: Vec<u64>,
}

fn breach(rule: Rule, why: String, evidence: Vec<u64>) -> Breach {
    Breach {
        rule,
        why,
        evidence,
    }
}

/// The entry that set the policy in force, as evidence; none while the defaults stand unrecorded.
fn policy_entry(state: &VaultState) -> Option<u64> {
    Some(state.policy.set_seq).filter(|s| *s > 0)
}

/// When an approval requested at `at` expires.
pub fn approval_expires_at(policy: &Policy, at: Timestamp) -> Timestamp {
    at.plus_seconds(i64::from(policy.approval_ttl_s))
}

/// The longest a token issued at `at` under `grant` may live, and which limit binds.
fn token_caps(policy: &Policy, grant: &GrantState, at: Timestamp) -> (Timestamp, Timestamp) {
    let by_grant = grant.max_token_ttl_s.map_or(grant.expires_at, |s| {
        at.plus_seconds(i64::from(s)).min(grant.expires_at)
    });
    let by_policy = at.plus_seconds(i64::from(policy.token_ttl_max_s));
    (by_grant, by_policy)
}

/// The expiry the vault gives a token issued at `at`: the lifetime asked for (or the
/// policy's longest), within every limit `judge_token` checks.
pub fn token_expires_at(
    policy: &Policy,
    grant: &GrantState,
    at: Timestamp,
    asked_ttl_s: Option<u32>,
) -> Timestamp {
    let (by_grant, by_policy) = token_caps(policy, grant, at);
    let asked = at.plus_seconds(i64::from(asked_ttl_s.unwrap_or(policy.token_ttl_max_s)));
    asked.min(by_grant).min(by_policy)
}

/// Whether an approval the log records may stand behind a token: approved, by the
/// grant's user, before it expired, and (when critical) with a step-up the fold found
/// proven by the user's step-up key. `Err` says what is missing.
pub fn approval_is_sound(a: &ApprovalState) -> Result<(), &'static str> {
    if a.decision != Some(Decision::Approved) {
        return Err("it was not approved");
    }
    if a.decided_by.as_deref() != Some(a.user.as_str()) {
        return Err("it was not decided by the grant's user");
    }
    if a.decided_at.is_none_or(|t| t >= a.expires_at) {
        return Err("it was decided after it expired");
    }
    if a.risk == Risk::Critical && a.step_up_key.is_none() {
        return Err("it is critical and no step-up was proven");
    }
    Ok(())
}

/// The rules a `token.issued` at `at` keeps: checked by the vault before it mints one
/// and by the fold on every one.
pub fn judge_token(state: &VaultState, e: &TokenIssued, at: Timestamp) -> Vec<Breach> {
    let mut out = Vec::new();
    let Some(g) = state.grants.get(&e.grant_id) else {
        out.push(breach(
            Rule::TokenUnknownGrant,
            format!("token {} is under unknown grant {}", e.token_id, e.grant_id),
            vec![],
        ));
        return out;
    };
    let ev = || vec![g.created_seq];
    let scopes: BTreeSet<&String> = e.scopes.iter().collect();
    if scopes.iter().any(|s| !g.scopes.contains(*s))
        || g.agent != e.agent
        || g.audience != e.audience
    {
        out.push(breach(
            Rule::TokenScopeOutsideGrant,
            format!(
                "token {} for {} on {} with {:?} exceeds grant {} ({} on {} with {:?})",
                e.token_id,
                e.agent,
                e.audience,
                e.scopes,
                g.grant_id,
                g.agent,
                g.audience,
                g.scopes
            ),
            ev(),
        ));
    }
    if g.status(at) != Status::Active {
        let mut ev = ev();
        ev.extend(g.revoked_seq);
        out.push(breach(
            Rule::TokenAfterGrantEnded,
            format!(
                "token {} comes after grant {} ended",
                e.token_id, g.grant_id
            ),
            ev,
        ));
    }
    if let Some(a) = state.agents.get(&e.agent)
        && let Some(s) = a.suspended_seq
    {
        out.push(breach(
            Rule::TokenSuspendedAgent,
            format!("token {} is for suspended agent {}", e.token_id, e.agent),
            vec![s],
        ));
    }
    if let Some(max) = g.max_calls
        && g.calls >= max
    {
        out.push(breach(
            Rule::TokenBudgetSpent,
            format!(
                "token {} is under grant {}, whose budget of {max} calls is spent",
                e.token_id, g.grant_id
            ),
            ev(),
        ));
    }
    let (by_grant, by_policy) = token_caps(&state.policy.policy, g, at);
    if e.expires_at > by_grant {
        out.push(breach(
            Rule::TokenTtlOverGrant,
            format!(
                "token {} expires {}, beyond what grant {} allows ({by_grant})",
                e.token_id, e.expires_at, g.grant_id
            ),
            ev(),
        ));
    }
    if e.expires_at > by_policy {
        let mut ev = ev();
        ev.extend(policy_entry(state));
        out.push(breach(
            Rule::TokenTtlOverPolicy,
            format!(
                "token {} expires {}, beyond the policy's longest token lifetime of {} s ({by_policy})",
                e.token_id, e.expires_at, state.policy.policy.token_ttl_max_s
            ),
            ev,
        ));
    }
    let needs: Vec<&String> = scopes
        .iter()
        .copied()
        .filter(|s| g.approval.contains_key(*s))
        .collect();
    if let Some(id) = &e.approval_id
        && let Some(first) = state.token_on_approval(id)
    {
        out.push(breach(
            Rule::TokenApprovalReused,
            format!(
                "approval {id} was already used for token {}; token {} is a second on it",
                first.token_id, e.token_id
            ),
            vec![first.issued_seq],
        ));
    }
    if let Some(a) = e
        .approval_id
        .as_ref()
        .and_then(|id| state.approvals.get(id))
        && a.authorization_details != e.authorization_details
    {
        out.push(breach(
            Rule::TokenNotAsApproved,
            format!(
                "token {} on approval {} is not bound to the actions that approval was asked for",
                e.token_id, a.approval_id
            ),
            vec![a.requested_seq],
        ));
    }
    if !needs.is_empty() {
        let approval = e
            .approval_id
            .as_ref()
            .and_then(|id| state.approvals.get(id));
        let why = match approval {
            None => Err("no approval request"),
            Some(a) if a.grant_id != g.grant_id || !needs.iter().all(|s| a.scopes.contains(*s)) => {
                Err("the approval does not cover them")
            }
            Some(a) => approval_is_sound(a),
        };
        if let Err(why) = why {
            let mut ev = ev();
            ev.extend(approval.map(|a| a.requested_seq));
            ev.extend(approval.and_then(|a| a.decided_seq));
            out.push(breach(
                Rule::TokenWithoutApproval,
                format!(
                    "token {} carries {:?}, which need approval, without a sound approval: {why}",
                    e.token_id, needs
                ),
                ev,
            ));
        }
    }
    out
}

/// The rules an `approval.requested` at `at` keeps.
pub fn judge_approval_request(
    state: &VaultState,
    e: &ApprovalRequested,
    at: Timestamp,
) -> Vec<Breach> {
    let longest = approval_expires_at(&state.policy.policy, at);
    if e.expires_at > longest {
        let ev = policy_entry(state).into_iter().collect();
        return vec![breach(
            Rule::ApprovalTtlOverPolicy,
            format!(
                "approval {} waits until {}, beyond the policy's approval lifetime of {} s ({longest})",
                e.approval_id, e.expires_at, state.policy.policy.approval_ttl_s
            ),
            ev,
        )];
    }
    vec![]
}

/// What judging an `approval.decided` found: the breaches, and whether the decision is
/// recorded at all (a decision on an unknown or already decided approval is not).
pub struct DecisionVerdict {
    pub breaches: Vec<Breach>,
    pub recorded: bool,
    /// The step-up key that proved the decision's step-up, when one did.
    pub step_up_key: Option<String>,
}

/// The rules an `approval.decided` at `at` keeps: checked by the vault before it records a
/// decision and by the fold on every one.
pub fn judge_decision(state: &VaultState, e: &ApprovalDecided, at: Timestamp) -> DecisionVerdict {
    let Some(a) = state.approvals.get(&e.approval_id) else {
        return DecisionVerdict {
            breaches: vec![breach(
                Rule::ApprovalUnknownRequest,
                format!(
                    "{} decided approval {} that was never requested",
                    e.user, e.approval_id
                ),
                vec![],
            )],
            recorded: false,
            step_up_key: None,
        };
    };
    if e.user != a.user {
        // Only the request's user decides it: a decision by anyone else is a finding and
        // nothing more, so it cannot take "the first decision stands" from the user (a veto).
        return DecisionVerdict {
            breaches: vec![breach(
                Rule::ApprovalWrongDecider,
                format!(
                    "approval {} for {}'s grant was decided by {}; not counted",
                    a.approval_id, a.user, e.user
                ),
                vec![a.requested_seq],
            )],
            recorded: false,
            step_up_key: None,
        };
    }
    if let Some(first) = a.decided_seq {
        // The first decision stands: a later one must not turn a denial into an approval.
        return DecisionVerdict {
            breaches: vec![breach(
                Rule::ApprovalRedecided,
                format!(
                    "approval {} was decided again by {} after its decision at seq {first}",
                    a.approval_id, e.user
                ),
                vec![a.requested_seq, first],
            )],
            recorded: false,
            step_up_key: None,
        };
    }
    let mut breaches = Vec::new();
    let ev = vec![a.requested_seq];
    if at >= a.expires_at {
        breaches.push(breach(
            Rule::ApprovalDecidedLate,
            format!(
                "approval {} was decided at {at}, after it expired at {}",
                a.approval_id, a.expires_at
            ),
            ev.clone(),
        ));
    }
    let step_up_key = match judge_step_up(e, a, at, &state.step_up_keys, &state.policy.policy) {
        Ok(key) => key,
        Err(why) => {
            let rule = match why {
                StepUpRefusal::Stale { .. } => Rule::ApprovalStaleStepUp,
                _ => Rule::ApprovalStepUpUnproven,
            };
            breaches.push(breach(
                rule,
                format!("approval {} by {}: {why}", a.approval_id, e.user),
                ev,
            ));
            None
        }
    };
    DecisionVerdict {
        breaches,
        recorded: true,
        step_up_key,
    }
}

/// The rules an `api.called` at `at` keeps, judged before the call is counted.
pub fn judge_call(state: &VaultState, e: &ApiCalled, at: Timestamp) -> Vec<Breach> {
    let token = state.tokens.get(&e.token_id);
    let grant = token.and_then(|t| state.grants.get(&t.grant_id));
    let suspended = state.agents.get(&e.agent).and_then(|a| a.suspended_seq);
    call_breaches(e, at, suspended, token, grant)
}

/// `judge_call` on objects already looked up: the fold, which updates the token and the
/// grant right after, looks each up once.
pub fn call_breaches(
    e: &ApiCalled,
    at: Timestamp,
    suspended: Option<u64>,
    token: Option<&TokenState>,
    grant: Option<&GrantState>,
) -> Vec<Breach> {
    let mut out = Vec::new();
    if let Some(s) = suspended {
        out.push(breach(
            Rule::CallSuspendedAgent,
            format!(
                "{} called {} {} after being suspended",
                e.agent, e.method, e.operation
            ),
            vec![s],
        ));
    }
    let Some(t) = token else {
        out.push(breach(
            Rule::CallUnknownToken,
            format!(
                "{} called {} {} with unknown token {}",
                e.agent, e.method, e.operation, e.token_id
            ),
            vec![],
        ));
        return out;
    };
    // Evidence is built only for a breach: most calls break nothing.
    let ev = || vec![t.issued_seq];
    if let Some(r) = t.revoked_seq {
        out.push(breach(
            Rule::CallRevokedToken,
            format!("{} used token {} after its revocation", e.agent, t.token_id),
            vec![t.issued_seq, r],
        ));
    } else if at >= t.expires_at {
        out.push(breach(
            Rule::CallExpiredToken,
            format!(
                "{} used token {} after it expired at {}",
                e.agent, t.token_id, t.expires_at
            ),
            ev(),
        ));
    }
    if e.agent != t.agent {
        out.push(breach(
            Rule::CallWrongAgent,
            format!(
                "{} used token {} that was issued to {}",
                e.agent, t.token_id, t.agent
            ),
            ev(),
        ));
    }
    if let Some(scope) = &e.scope
        && !t.scopes.contains(scope)
    {
        out.push(breach(
            Rule::CallScopeNotGranted,
            format!(
                "{} called {} {} needing {scope}, which token {} does not carry",
                e.agent, e.method, e.operation, t.token_id
            ),
            ev(),
        ));
    }
    let shape = crate::authorization::CallShape {
        audience: &e.audience,
        method: &e.method,
        operation: &e.operation,
        request_hash: e.request_hash.as_deref(),
        tool: e.tool.as_deref(),
        arguments_hash: e.arguments_hash.as_deref(),
    };
    if let Err(why) = crate::authorization::permits(&t.authorization_details, &t.audience, &shape) {
        out.push(breach(
            Rule::CallOutsideAuthorization,
            format!(
                "{} used token {} outside its approved actions: {why}",
                e.agent, t.token_id
            ),
            ev(),
        ));
    }
    if let Some(g) = grant
        && let Some(max) = g.max_calls
        && g.calls >= max
    {
        out.push(breach(
            Rule::CallOverBudget,
            format!(
                "grant {} is at call {} of a budget of {max}",
                g.grant_id,
                g.calls + 1
            ),
            vec![g.created_seq],
        ));
    }
    out
}

/// The rule a `policy.set` keeps: the next revision, the one in force plus one (recording
/// the defaults themselves, before any other policy, is the one exception). A revision
/// that could jump ahead would let one typo freeze the policy for good.
pub fn judge_policy(state: &VaultState, p: &PolicySet) -> Option<Breach> {
    let now = &state.policy;
    (!now.admits(p)).then(|| {
        breach(
            Rule::PolicyRevisionNotNext,
            format!(
                "policy revision {} is not the next after revision {} in force; not applied",
                p.revision, now.policy.revision
            ),
            policy_entry(state).into_iter().collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn at(s: i64) -> Timestamp {
        Timestamp::parse("2026-11-22T08:00:00.000000Z")
            .unwrap()
            .plus_seconds(s)
    }

    fn grant(max_token_ttl_s: Option<u32>, expires_in: i64) -> GrantState {
        GrantState {
            grant_id: "g".into(),
            user: "u".into(),
            agent: "a".into(),
            audience: "x".into(),
            scopes: ["s".to_string()].into(),
            expires_at: at(expires_in),
            max_calls: None,
            max_token_ttl_s,
            approval: BTreeMap::new(),
            created_seq: 1,
            revoked_seq: None,
            calls: 0,
            last_seq: 1,
        }
    }

    #[test]
    fn a_tokens_lifetime_is_the_least_of_what_was_asked_the_grant_and_the_policy() {
        let p = PolicySet::DEFAULTS;
        assert_eq!(
            token_expires_at(&p, &grant(None, 3_600), at(0), None),
            at(300)
        );
        assert_eq!(
            token_expires_at(&p, &grant(None, 3_600), at(0), Some(60)),
            at(60)
        );
        assert_eq!(
            token_expires_at(&p, &grant(Some(30), 3_600), at(0), Some(60)),
            at(30)
        );
        assert_eq!(
            token_expires_at(&p, &grant(None, 100), at(0), None),
            at(100)
        );
        let longer = PolicySet {
            token_ttl_max_s: 900,
            ..p
        };
        assert_eq!(
            token_expires_at(&longer, &grant(None, 3_600), at(0), None),
            at(900)
        );
    }

    #[test]
    fn an_approval_is_sound_only_approved_by_its_user_in_time_and_proven_when_critical() {
        let mut a = ApprovalState {
            approval_id: "p".into(),
            grant_id: "g".into(),
            user: "alice".into(),
            agent: "a".into(),
            audience: "x".into(),
            scopes: ["s".to_string()].into(),
            risk: Risk::High,
            binding_message: String::new(),
            expires_at: at(300),
            requested_seq: 1,
            requested_at: at(0),
            decision: Some(Decision::Approved),
            decided_by: Some("alice".into()),
            method: Some(ApprovalMethod::Push),
            auth_time: None,
            decided_at: Some(at(10)),
            decided_seq: Some(2),
            step_up_key: None,
            last_seq: 2,
            authorization_details: vec![],
        };
        assert_eq!(approval_is_sound(&a), Ok(()));
        a.decided_at = Some(at(300));
        assert_eq!(
            approval_is_sound(&a),
            Err("it was decided after it expired")
        );
        a.decided_at = Some(at(10));
        a.decided_by = Some("bob".into());
        assert!(approval_is_sound(&a).is_err());
        a.decided_by = Some("alice".into());
        a.risk = Risk::Critical;
        assert!(approval_is_sound(&a).is_err());
        a.step_up_key = Some("k".into());
        assert_eq!(approval_is_sound(&a), Ok(()));
        a.decision = Some(Decision::Denied);
        assert_eq!(approval_is_sound(&a), Err("it was not approved"));
    }

    #[test]
    fn a_policy_must_raise_the_revision_except_to_record_the_defaults() {
        let mut state = VaultState::default();
        assert_eq!(judge_policy(&state, &PolicySet::DEFAULTS), None);
        let same = PolicySet {
            approval_ttl_s: 10,
            ..PolicySet::DEFAULTS
        };
        assert_eq!(
            judge_policy(&state, &same).map(|b| b.rule),
            Some(Rule::PolicyRevisionNotNext)
        );
        state.policy.set_seq = 1;
        assert!(judge_policy(&state, &PolicySet::DEFAULTS).is_some());
        let next = PolicySet {
            revision: 2,
            ..same
        };
        assert_eq!(judge_policy(&state, &next), None);
    }
}
