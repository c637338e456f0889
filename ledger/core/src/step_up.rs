//! Whether an approval's step-up is proven: the one judgement the vault makes before it records a decision and the state fold makes on every `approval.decided`.
//!
//! A step-up is proven by an assertion (docket_schemas::step_up) signed by a step-up
//! key that the admin registered for the approval's user (a producer key named
//! `stepup:<user>`), naming this approval and this user, with an `auth_time` no older
//! than `step_up_max_age_s` before the decision and not after it. What it proves: the
//! holder of the user's step-up key (an authenticator the user's own key cannot
//! stand in for) vouched for a strong authentication of the user for this approval.
//! What it does not prove: that a human was present, how the authenticator checked
//! them, or that the step-up key itself was not stolen.

use docket_schemas::*;

use crate::registry::STEP_UP_KEY_PREFIX;

use crate::state::{ApprovalState, StepUpKeyState, StepUpKeys};

/// Follows a key event: which step-up key (if any) it starts or ends. Mirrors the
/// registry (`Registry::apply`), whose refusals never reach the chain.
pub fn follow_key_event(keys: &mut StepUpKeys, seq: u64, body: &EventBody) -> Option<String> {
    match body {
        EventBody::KeyRegistered(e) => {
            match e
                .name
                .strip_prefix(STEP_UP_KEY_PREFIX)
                .filter(|u| !u.is_empty())
            {
                Some(user) => {
                    keys.insert(
                        e.key_id.clone(),
                        StepUpKeyState {
                            key_id: e.key_id.clone(),
                            user: user.to_string(),
                            public_key: e.public_key.clone(),
                            registered_seq: seq,
                            ended_seq: None,
                            last_seq: seq,
                        },
                    );
                }
                // Re-registered under another name: it is no longer a step-up key.
                None => end(keys.get_mut(&e.key_id)?, seq),
            }
            Some(e.key_id.clone())
        }
        EventBody::KeyRevoked(e) => {
            end(keys.get_mut(&e.key_id)?, seq);
            Some(e.key_id.clone())
        }
        _ => None,
    }
}

fn end(k: &mut StepUpKeyState, seq: u64) {
    if k.ended_seq.is_none() {
        k.ended_seq = Some(seq);
        k.last_seq = seq;
    }
}

/// Why a step-up is not proven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepUpRefusal {
    #[error(
        "a critical approval needs a step-up assertion signed by {user}'s step-up key (a key the admin registered as \"stepup:{user}\"); the user's own key cannot stand in for it"
    )]
    Missing { user: String },
    #[error(
        "method step_up without a step-up assertion is only the caller's claim; sign one with {user}'s step-up key (\"stepup:{user}\")"
    )]
    Unproven { user: String },
    #[error("step-up assertion is malformed: {0}")]
    Malformed(String),
    #[error(
        "step-up assertion is for {claimed_user}'s approval {claimed_approval}, not {user}'s approval {approval_id}"
    )]
    OtherApproval {
        claimed_user: String,
        claimed_approval: String,
        user: String,
        approval_id: String,
    },
    #[error("step-up assertion says auth_time {claimed}, the decision says {stated}")]
    AuthTimeMismatch { claimed: Timestamp, stated: String },
    #[error("{user} has no step-up key: the admin must register one as \"stepup:{user}\"")]
    NoStepUpKey { user: String },
    #[error(
        "step-up assertion is not signed by {user}'s step-up key (tried {tried}; the assertion's keyid is {hint})"
    )]
    BadSignature {
        user: String,
        tried: String,
        hint: String,
    },
    #[error("step-up at {auth_time} is not within the {max_age_s} s before the decision at {at}")]
    Stale {
        auth_time: Timestamp,
        at: Timestamp,
        max_age_s: i64,
    },
}

/// A step-up counts if it happened at most `step_up_max_age_s` before `at` and not after it.
pub fn is_fresh(auth_time: Timestamp, at: Timestamp, rules: &PolicySet) -> bool {
    let age_us = at.as_micros() - auth_time.as_micros();
    (0..=i64::from(rules.step_up_max_age_s) * 1_000_000).contains(&age_us)
}

/// Judges the step-up of a decision on approval `a` made at `at`: `Ok(Some(key id))` when
/// an assertion proves it, `Ok(None)` when none is needed or claimed, or why not.
///
/// A denial needs no authentication and is not judged. An approval must prove its step-up
/// when it claims one (`method: step_up`) or carries an assertion, and always when the
/// approval is critical.
pub fn judge(
    e: &ApprovalDecided,
    a: &ApprovalState,
    at: Timestamp,
    keys: &StepUpKeys,
    rules: &PolicySet,
) -> Result<Option<String>, StepUpRefusal> {
    if e.decision == Decision::Denied {
        return Ok(None);
    }
    let user = &a.user;
    let Some(assertion) = &e.step_up else {
        return if e.method == ApprovalMethod::StepUp {
            Err(StepUpRefusal::Unproven { user: user.clone() })
        } else if a.risk == Risk::Critical {
            Err(StepUpRefusal::Missing { user: user.clone() })
        } else {
            Ok(None)
        };
    };
    if e.method != ApprovalMethod::StepUp {
        return Err(StepUpRefusal::Malformed(
            "an assertion goes only with method step_up".into(),
        ));
    }
    let d = assertion
        .decode()
        .map_err(|why| StepUpRefusal::Malformed(why.to_string()))?;
    if d.claim.user != *user || d.claim.approval_id != a.approval_id {
        return Err(StepUpRefusal::OtherApproval {
            claimed_user: d.claim.user,
            claimed_approval: d.claim.approval_id,
            user: user.clone(),
            approval_id: a.approval_id.clone(),
        });
    }
    if e.auth_time != Some(d.claim.auth_time) {
        return Err(StepUpRefusal::AuthTimeMismatch {
            claimed: d.claim.auth_time,
            stated: e
                .auth_time
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
        });
    }
    let tried = candidates(keys, user, &d.key_id);
    if tried.is_empty() {
        return Err(StepUpRefusal::NoStepUpKey { user: user.clone() });
    }
    let signer = tried.iter().find(|k| {
        decode_public_key(&k.public_key)
            .ok()
            .and_then(|pk| check_producer_key(&pk).ok())
            .is_some_and(|vk| d.verify(&vk))
    });
    let Some(signer) = signer else {
        return Err(StepUpRefusal::BadSignature {
            user: user.clone(),
            tried: tried
                .iter()
                .map(|k| k.key_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            hint: d.key_id,
        });
    };
    if !is_fresh(d.claim.auth_time, at, rules) {
        return Err(StepUpRefusal::Stale {
            auth_time: d.claim.auth_time,
            at,
            max_age_s: i64::from(rules.step_up_max_age_s),
        });
    }
    Ok(Some(signer.key_id.clone()))
}

/// The user's active step-up keys an assertion is checked against, the same way an
/// envelope's keyid is resolved: the one its keyid names (Docket key id or
/// securesystemslib key id), else the newest, at most `SIGNATURE_CHECKS_PER_ENVELOPE_MAX`.
fn candidates<'a>(keys: &'a StepUpKeys, user: &str, hint: &str) -> Vec<&'a StepUpKeyState> {
    let mine: Vec<&StepUpKeyState> = keys
        .values()
        .filter(|k| k.user == user && k.ended_seq.is_none())
        .collect();
    let named = mine.iter().copied().find(|k| {
        k.key_id == hint
            || decode_public_key(&k.public_key).is_ok_and(|pk| securesystemslib_key_id(&pk) == hint)
    });
    if let Some(k) = named {
        return vec![k];
    }
    crate::registry::newest_first(mine, |k| (k.registered_seq, &k.key_id))
}
