//! The vault's decisions: who may ask for what, and which events each answer appends.
//!
//! Pure: the state, the registry, the clock reading, fresh ids and token secrets
//! are passed in; the answer is a reply plus the events to append before it is
//! sent. Requests are DSSE envelopes signed by the requesting party. Every rule
//! a decision keeps is a function in `policy.rs`, the same the fold judges by.

use docket_schemas::vault::{
    ApprovalNotice, Introspection, Outcome as Answer, Reply, Status as Said,
};
use docket_schemas::*;
use ed25519_dalek::VerifyingKey;

pub use docket_schemas::vault::{Op, REQUEST_PAYLOAD_TYPE, REQUEST_VERSION, Request, seal_request};

use crate::policy::{approval_expires_at, judge_decision, judge_token, token_expires_at};
use crate::registry::Registry;
use crate::state::{ApprovalStatus, Status, VaultState};

/// Request ids remembered for replay detection (older ones fall outside the window anyway).
pub const SEEN_REQUESTS_MAX: usize = 1_000_000;
/// Of those, the most one signing key may hold, so no one client can fill the guard
/// and have everyone else refused.
pub const SEEN_REQUESTS_PER_KEY_MAX: usize = SEEN_REQUESTS_MAX / 8;
pub use crate::registry::USER_KEY_PREFIX;

/// Who signed a request, as the log knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requester {
    Admin,
    User(String),
    Agent(String),
    /// A producer key allowed to emit `api.called` (a gateway).
    Gateway(String),
    /// Any other registered producer key (an analyst's), by its name: known only to
    /// [`authenticate_read`], never to the vault, whose every operation it may not make.
    Reader(String),
}

impl Requester {
    pub fn name(&self) -> String {
        match self {
            Requester::Admin => "admin".into(),
            Requester::User(u)
            | Requester::Agent(u)
            | Requester::Gateway(u)
            | Requester::Reader(u) => u.clone(),
        }
    }

    /// Whose key this is, for messages that name a key id.
    pub fn owner(&self) -> String {
        match self {
            Requester::Admin => "the admin's".into(),
            Requester::User(u) => format!("user {u}'s"),
            Requester::Agent(a) => format!("agent {a}'s"),
            Requester::Gateway(g) => format!("gateway {g}'s"),
            Requester::Reader(r) => format!("{r}'s"),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("signature does not verify for key {0} (the caller's, {1} key)")]
    BadSignature(String, String),
    #[error(
        "key {0} (the caller's) is not registered: it is no agent's, no user's (a key named user:<name>), no gateway's and not the admin's"
    )]
    UnknownSigner(String),
    #[error(
        "key {key_id} (the caller's) is registered as {name:?}, which may not make vault requests: only users' keys (user:<name>), gateways' keys (allowed api.called), agents' keys and the admin's may"
    )]
    NotARequester { key_id: String, name: String },
    #[error("key {key_id} (the caller's, {name:?}) was revoked at seq {seq}")]
    RevokedSigner {
        key_id: String,
        name: String,
        seq: u64,
    },
    #[error(
        "key {key_id} (the caller's) is registered for more than one agent ({agents}); none of them may use it"
    )]
    SharedAgentKey { key_id: String, agents: String },
    #[error("request id {0} was already used (replay)")]
    Replayed(String),
    #[error("request time {0} is outside the {1}-second window")]
    Stale(Timestamp, u32),
    #[error(
        "request time {0} is before this vault started ({1}): requests from before a restart are refused; send a new one"
    )]
    BeforeStart(Timestamp, Timestamp),
    #[error("{0} may not do this: {1}")]
    Forbidden(String, String),
    #[error("no active grant lets {agent} use {scopes:?} on {audience}")]
    NoGrant {
        agent: String,
        audience: String,
        scopes: Vec<String>,
    },
    #[error("approval {0} was denied")]
    Denied(String),
    #[error("approval {0} expired before a decision")]
    Expired(String),
    #[error("approval {0}: {1}")]
    BadApproval(String, String),
    #[error("{0} is suspended")]
    Suspended(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("refused: it would break rule {0} ({1})")]
    Breaks(&'static str, String),
    #[error(
        "key {0} (the caller's) made more than {1} vault requests this second (the policy's vault_requests_per_key_per_s); try again"
    )]
    RateLimited(String, u32),
    #[error(
        "key {0} (the caller's) holds {SEEN_REQUESTS_PER_KEY_MAX} request ids in the replay window; try again later"
    )]
    TooManyPending(String),
}

/// A decoded, authenticated request.
pub struct Authenticated {
    pub request: Request,
    pub requester: Requester,
    pub key_id: String,
}

/// A refused authentication: the request when it parsed, the key id it named, and why.
pub type Unauthenticated = (Option<Request>, String, Refusal);

/// Checks form and signature and finds who signed; nothing about permissions yet.
pub fn authenticate(
    bytes: &[u8],
    registry: &Registry,
    state: &VaultState,
) -> Result<Authenticated, Box<Unauthenticated>> {
    authenticate_inner(bytes, registry, state, false).map_err(Box::new)
}

/// The same checks for a read (`docket.read`): a registered producer key that is no user's
/// and no gateway's is known too, as [`Requester::Reader`]; agents' keys are not resolved.
/// Who may read is the caller's decision.
pub fn authenticate_read(
    bytes: &[u8],
    registry: &Registry,
) -> Result<Authenticated, Box<Unauthenticated>> {
    authenticate_inner(bytes, registry, &VaultState::default(), true).map_err(Box::new)
}

#[allow(clippy::result_large_err)] // boxed once, by `authenticate`
fn authenticate_inner(
    bytes: &[u8],
    registry: &Registry,
    state: &VaultState,
    readers: bool,
) -> Result<Authenticated, Unauthenticated> {
    let malformed = |key_id: &str, why: String| (None, key_id.to_string(), Refusal::Malformed(why));
    docket_schemas::strict_json::check(bytes).map_err(|e| malformed("", e.to_string()))?;
    let wire: EnvelopeWire<'_> =
        serde_json::from_slice(bytes).map_err(|e| malformed("", e.to_string()))?;
    if wire.payload_type != REQUEST_PAYLOAD_TYPE || wire.signatures.len() != 1 {
        return Err(malformed(
            "",
            format!("expected one signature and payloadType {REQUEST_PAYLOAD_TYPE}"),
        ));
    }
    let payload = decode_base64(&wire.payload)
        .ok_or_else(|| malformed("", "payload is not base64".into()))?;
    let key_id = wire.signatures[0].keyid.clone();
    docket_schemas::strict_json::check(&payload).map_err(|e| malformed(&key_id, e.to_string()))?;
    let request: Request =
        serde_json::from_slice(&payload).map_err(|e| malformed(&key_id, e.to_string()))?;
    if request.v != REQUEST_VERSION {
        return Err((
            Some(request),
            key_id,
            Refusal::Malformed("unsupported version".into()),
        ));
    }
    let (requester, key) = match signer(&key_id, registry, state, readers) {
        Ok(s) => s,
        Err(why) => return Err((Some(request), key_id, why)),
    };
    let sig = decode_base64(&wire.signatures[0].sig)
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
    let Some(sig) = sig else {
        return Err((
            Some(request),
            key_id,
            Refusal::Malformed("signature is not base64 of 64 bytes".into()),
        ));
    };
    if key
        .verify_strict(&pae(REQUEST_PAYLOAD_TYPE, &payload), &sig)
        .is_err()
    {
        let owner = requester.owner();
        return Err((
            Some(request),
            key_id.clone(),
            Refusal::BadSignature(key_id, owner),
        ));
    }
    Ok(Authenticated {
        request,
        requester,
        key_id,
    })
}

/// Who holds the key a request's `keyid` names, and the key; or why nobody may use it.
fn signer(
    hint: &str,
    registry: &Registry,
    state: &VaultState,
    readers: bool,
) -> Result<(Requester, VerifyingKey), Refusal> {
    // The same keyid resolution as events: a Docket key id or a securesystemslib key id.
    if let Some(key_id) = registry.named_key(hint) {
        if key_id == registry.admin_key_id {
            let admin = registry
                .admin_key()
                .ok_or_else(|| Refusal::UnknownSigner(hint.into()))?;
            return Ok((Requester::Admin, admin));
        }
        if let Some(k) = registry.keys.get(key_id)
            && let Some(seq) = k.revoked_seq
        {
            return Err(Refusal::RevokedSigner {
                key_id: key_id.into(),
                name: k.name.clone(),
                seq,
            });
        }
        if let Some((k, vk)) = registry.active_key(key_id) {
            if let Some(user) = k.name.strip_prefix(USER_KEY_PREFIX) {
                return Ok((Requester::User(user.to_string()), vk));
            }
            if k.kinds.contains(&Kind::ApiCalled)
                && !k.name.starts_with(crate::registry::STEP_UP_KEY_PREFIX)
            {
                return Ok((Requester::Gateway(k.name.clone()), vk));
            }
            if readers {
                return Ok((Requester::Reader(k.name.clone()), vk));
            }
            return Err(Refusal::NotARequester {
                key_id: key_id.into(),
                name: k.name.clone(),
            });
        }
    }
    // Exactly one agent may hold a key: if two registrations claim it, neither speaks with it.
    let holders = state.agents_with_key(hint);
    match holders.as_slice() {
        [] => Err(Refusal::UnknownSigner(hint.into())),
        [agent] => {
            let key = decode_public_key(&agent.public_key)
                .ok()
                .and_then(|pk| check_producer_key(&pk).ok())
                .ok_or_else(|| Refusal::UnknownSigner(hint.into()))?;
            Ok((Requester::Agent(agent.agent.clone()), key))
        }
        many => Err(Refusal::SharedAgentKey {
            key_id: hint.into(),
            agents: many
                .iter()
                .map(|a| a.agent.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What the vault answers, and the events that must be durable before it does.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub events: Vec<EventBody>,
    /// An approval request to announce to its user (`docket.approvals.<user>`) once committed.
    pub notify: Option<(String, ApprovalNotice)>,
}

impl Outcome {
    fn answer(reply: Answer, events: Vec<EventBody>) -> Outcome {
        Outcome {
            reply: Reply::Outcome(reply),
            events,
            notify: None,
        }
    }
}

/// Values the edge supplies: the clock, fresh ids, a fresh token secret and the hash key.
pub struct Fresh<'a> {
    pub now: Timestamp,
    pub id: String,
    pub token_secret: String,
    /// The vault's one-time X25519 secret that seals `token_secret` to the requester.
    pub seal_ephemeral: [u8; 32],
    pub hash_key: &'a [u8; 32],
}

/// The keyed hash stored for a token secret: hex of keyed BLAKE3.
pub fn token_hash(hash_key: &[u8; 32], secret: &str) -> String {
    blake3::keyed_hash(hash_key, secret.as_bytes())
        .to_hex()
        .to_string()
}

/// A refusal: its reply, and the `request.refused` event that records it.
pub fn refused(
    req: &Request,
    who: &str,
    why: &Refusal,
    audience: Option<String>,
    scopes: Vec<String>,
) -> Outcome {
    Outcome {
        reply: Reply::Outcome(Answer::refused(why.to_string())),
        // Everything here may come from the requester: cut and clean it so the refusal
        // itself always passes validation and is recorded.
        events: vec![EventBody::RequestRefused(RequestRefused {
            request_id: req.id.to_string(),
            requester: clean(who, limits::KEY_ID_BYTES_MAX),
            claimed_key_id: None,
            op: req.op.name().into(),
            reason: clean(&why.to_string(), limits::TEXT_BYTES_MAX),
            // What the event format would refuse is left out, never recorded half-valid.
            audience: audience.filter(|a| {
                docket_schemas::identifier("audience", a, limits::OPERATION_BYTES_MAX).is_ok()
            }),
            scopes: scopes
                .into_iter()
                .filter(|s| docket_schemas::scope(s).is_ok())
                .take(limits::SCOPES_PER_EVENT_MAX)
                .collect(),
        })],
        notify: None,
    }
}

/// The `requester` of a refusal whose signer was not verified.
pub const UNVERIFIED_REQUESTER: &str = "unverified";

/// A refusal of a request whose signature was not verified: the key id it named is
/// recorded as a claim (`claimed_key_id`), never as who asked.
pub fn refused_unverified(req: &Request, claimed_key_id: &str, why: &Refusal) -> Outcome {
    let mut out = refused(req, UNVERIFIED_REQUESTER, why, None, vec![]);
    for e in &mut out.events {
        if let EventBody::RequestRefused(r) = e {
            r.claimed_key_id =
                Some(clean(claimed_key_id, limits::KEY_ID_BYTES_MAX)).filter(|k| !k.is_empty());
        }
    }
    out
}

/// Text cut to at most `max` bytes on a character boundary, hidden characters replaced.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text
        .chars()
        .map(|c| if docket_schemas::is_hidden(c) { '?' } else { c })
    {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Decides an authenticated request. Introspection appends nothing; everything else appends at least one event.
pub fn decide(state: &VaultState, auth: &Authenticated, fresh: &Fresh<'_>) -> Outcome {
    let out = decide_unchecked(state, auth, fresh);
    // The vault never emits what admission would quarantine: a request whose fields
    // cannot make a valid event (an empty scope list, an identifier with a space) is
    // refused with the format's own reason, by the same check admission makes.
    match out.events.iter().find_map(|e| e.validate().err()) {
        Some(why) => refused(
            &auth.request,
            &auth.requester.name(),
            &Refusal::Malformed(why.to_string()),
            None,
            vec![],
        ),
        None => out,
    }
}

fn decide_unchecked(state: &VaultState, auth: &Authenticated, fresh: &Fresh<'_>) -> Outcome {
    let req = &auth.request;
    let who = auth.requester.name();
    let window_s = state.policy.policy.request_skew_max_s;
    let skew = (fresh.now.as_micros() - req.ts.as_micros()).abs();
    if skew > i64::from(window_s) * 1_000_000 {
        return refused(req, &who, &Refusal::Stale(req.ts, window_s), None, vec![]);
    }
    match &req.op {
        Op::Introspect { token } => introspect(state, req, &auth.requester, token, fresh),
        Op::Read { .. } => refused(
            req,
            &who,
            &Refusal::Malformed(format!(
                "a read is answered on {}, not by the vault",
                docket_schemas::vault::SUBJECT_READ
            )),
            None,
            vec![],
        ),
        Op::Connect { .. } | Op::Link { .. } | Op::Unlink { .. } | Op::Upstream { .. } => refused(
            req,
            &who,
            &Refusal::Malformed(format!(
                "{} is answered on docket.connections.{}, not by the vault",
                req.op.name(),
                req.op.name()
            )),
            None,
            vec![],
        ),
        Op::Grant {
            user,
            agent,
            audience,
            scopes,
            expires_at,
            max_calls,
            max_token_ttl_s,
            approval,
        } => {
            let allowed = match &auth.requester {
                Requester::Admin => true,
                Requester::User(u) => u == user,
                _ => false,
            };
            if !allowed {
                return refused(
                    req,
                    &who,
                    &Refusal::Forbidden(who.clone(), format!("grant on behalf of {user}")),
                    Some(audience.clone()),
                    scopes.clone(),
                );
            }
            match state.agents.get(agent) {
                None => {
                    return refused(
                        req,
                        &who,
                        &Refusal::NotFound(format!("agent {agent}")),
                        Some(audience.clone()),
                        scopes.clone(),
                    );
                }
                Some(a) if a.suspended_seq.is_some() => {
                    return refused(
                        req,
                        &who,
                        &Refusal::Suspended(agent.clone()),
                        Some(audience.clone()),
                        scopes.clone(),
                    );
                }
                Some(a) if matches!(&auth.requester, Requester::User(u) if *u != a.user) => {
                    // A user grants only their own agents; otherwise they could steer another's agent.
                    return refused(
                        req,
                        &who,
                        &Refusal::Forbidden(
                            who.clone(),
                            format!("grant to {agent}, which belongs to {}", a.user),
                        ),
                        Some(audience.clone()),
                        scopes.clone(),
                    );
                }
                Some(_) => {}
            }
            let grant_id = format!("grant-{}", fresh.id);
            Outcome::answer(
                Answer {
                    grant_id: Some(grant_id.clone()),
                    ..Answer::done(Said::Granted)
                },
                vec![EventBody::GrantCreated(GrantCreated {
                    grant_id,
                    user: user.clone(),
                    agent: agent.clone(),
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                    expires_at: *expires_at,
                    max_calls: *max_calls,
                    max_token_ttl_s: *max_token_ttl_s,
                    approval: approval.clone(),
                })],
            )
        }
        Op::Token {
            agent,
            audience,
            scopes,
            action,
            approval_id,
            ttl_s,
            reply_key,
            authorization_details,
        } => token(
            state,
            req,
            &auth.requester,
            (
                agent,
                audience,
                scopes,
                action,
                approval_id.as_deref(),
                *ttl_s,
                reply_key.as_deref(),
                authorization_details,
            ),
            fresh,
        ),
        Op::Approve {
            approval_id,
            decision,
            method,
            auth_time,
            reason,
            step_up,
        } => {
            let Some(a) = state.approvals.get(approval_id) else {
                return refused(
                    req,
                    &who,
                    &Refusal::NotFound(format!("approval {approval_id}")),
                    None,
                    vec![],
                );
            };
            if auth.requester != Requester::User(a.user.clone()) {
                return refused(
                    req,
                    &who,
                    &Refusal::Forbidden(who.clone(), format!("decide {}'s approval", a.user)),
                    Some(a.audience.clone()),
                    a.scopes.iter().cloned().collect(),
                );
            }
            match a.status(fresh.now) {
                ApprovalStatus::Pending => {}
                ApprovalStatus::Expired => {
                    return refused(
                        req,
                        &who,
                        &Refusal::Expired(approval_id.clone()),
                        None,
                        vec![],
                    );
                }
                _ => {
                    return refused(
                        req,
                        &who,
                        &Refusal::BadApproval(approval_id.clone(), "already decided".into()),
                        None,
                        vec![],
                    );
                }
            }
            let decided = ApprovalDecided {
                approval_id: approval_id.clone(),
                user: a.user.clone(),
                decision: *decision,
                method: *method,
                // The assertion's time, when only it gives one; a different stated time is refused below.
                auth_time: auth_time.or_else(|| {
                    step_up
                        .as_ref()
                        .and_then(|s| s.decode().ok())
                        .map(|d| d.claim.auth_time)
                }),
                reason: reason.clone(),
                step_up: step_up.clone(),
            };
            // The same judgement the fold makes on every `approval.decided`.
            if let Some(b) = judge_decision(state, &decided, fresh.now).breaches.first() {
                return refused(
                    req,
                    &who,
                    &Refusal::BadApproval(approval_id.clone(), b.why.clone()),
                    Some(a.audience.clone()),
                    a.scopes.iter().cloned().collect(),
                );
            }
            let said = match decision {
                Decision::Approved => Said::Approved,
                Decision::Denied => Said::Denied,
            };
            Outcome::answer(
                Answer {
                    approval_id: Some(approval_id.clone()),
                    ..Answer::done(said)
                },
                vec![EventBody::ApprovalDecided(decided)],
            )
        }
        Op::Revoke {
            token_id,
            grant_id,
            agent,
            reason,
        } => revoke(
            state,
            req,
            &auth.requester,
            (token_id.as_deref(), grant_id.as_deref(), agent.as_deref()),
            reason,
        ),
    }
}

fn introspect(
    state: &VaultState,
    req: &Request,
    requester: &Requester,
    token: &str,
    fresh: &Fresh<'_>,
) -> Outcome {
    let inactive = |why: &str, known: Option<&crate::state::TokenState>| Outcome {
        reply: Reply::Introspection(Introspection {
            jti: known.map(|t| t.token_id.clone()),
            client_id: known.map(|t| t.agent.clone()),
            reason: Some(why.to_string()),
            ..Introspection::default()
        }),
        events: vec![],
        notify: None,
    };
    if !matches!(requester, Requester::Gateway(_) | Requester::Admin) {
        // Not `{"active": false}`: the caller would take a refusal for an answer about the token.
        let who = requester.name();
        return refused(
            req,
            &who,
            &Refusal::Forbidden(
                who.clone(),
                "introspect tokens: only a gateway (a key the admin allowed api.called) or the admin may".into(),
            ),
            None,
            vec![],
        );
    }
    let t = match token_standing(state, fresh.hash_key, token, fresh.now) {
        Ok(t) => t,
        Err((why, known)) => return inactive(why, known),
    };
    Outcome {
        reply: Reply::Introspection(Introspection {
            active: true,
            scope: Some(t.scopes.iter().cloned().collect::<Vec<_>>().join(" ")),
            client_id: Some(t.agent.clone()),
            sub: Some(t.user.clone()),
            aud: Some(t.audience.clone()),
            exp: Some(t.expires_at.as_micros() / 1_000_000),
            iat: Some(t.issued_at.as_micros() / 1_000_000),
            jti: Some(t.token_id.clone()),
            reason: None,
            authorization_details: t.authorization_details.clone(),
        }),
        events: vec![],
        notify: None,
    }
}

/// Whether a token may be used at `now`: its state, or why not (with the token when the
/// vault knows it). Introspection and the connections' `upstream` both ask this.
pub fn token_standing<'s>(
    state: &'s VaultState,
    hash_key: &[u8; 32],
    token: &str,
    now: Timestamp,
) -> Result<&'s crate::state::TokenState, (&'static str, Option<&'s crate::state::TokenState>)> {
    let Some(t) = state.any_token_by_hash(&token_hash(hash_key, token)) else {
        return Err(("unknown token", None));
    };
    let agent_ok = state
        .agents
        .get(&t.agent)
        .is_some_and(|a| a.suspended_seq.is_none());
    let grant = state.grants.get(&t.grant_id);
    let spent = grant.is_some_and(|g| g.max_calls.is_some_and(|m| g.calls >= m));
    let why = match (t.status(now), agent_ok, grant.map(|g| g.status(now))) {
        (_, false, _) => Some("agent suspended"),
        _ if spent => Some("the grant's call budget is spent"),
        (Status::Revoked, _, _) => Some("token revoked"),
        (Status::Expired, _, _) => Some("token expired"),
        (_, _, Some(Status::Revoked)) => Some("grant revoked"),
        (_, _, Some(Status::Expired)) => Some("grant expired"),
        (_, _, None) => Some("no such grant"),
        (Status::Active, true, Some(Status::Active)) => None,
    };
    match why {
        Some(why) => Err((why, Some(t))),
        None => Ok(t),
    }
}

/// Whose upstream token a gateway may have for a presented Docket token: the token must be
/// active, for an audience `provider_audiences` lists, and the user's connection to the
/// provider linked. Returns the user; refusals say why, `transient` never (that is the
/// provider's, found later).
pub fn upstream_holder(
    state: &VaultState,
    hash_key: &[u8; 32],
    token: &str,
    provider: &str,
    provider_audiences: &[String],
    now: Timestamp,
) -> Result<String, String> {
    let t = token_standing(state, hash_key, token, now)
        .map_err(|(why, _)| format!("the token is not active: {why}"))?;
    if !provider_audiences.contains(&t.audience) {
        return Err(format!(
            "provider {provider} does not serve audience {} (the vault's config lists its audiences)",
            t.audience
        ));
    }
    use crate::state::ConnectionStatus as C;
    match state
        .connections
        .get(&crate::state::connection_key(&t.user, provider))
    {
        Some(c) if c.status == C::Linked => Ok(t.user.clone()),
        Some(c) if c.status == C::Broken => Err(format!(
            "{}'s connection to {provider} is broken ({}): the user must link it again",
            t.user,
            c.failure
                .as_deref()
                .unwrap_or("the provider refused the grant")
        )),
        _ => Err(format!(
            "{} has no connection to {provider}: the user links one with `docket connect`",
            t.user
        )),
    }
}

type TokenAsk<'a> = (
    &'a String,
    &'a String,
    &'a Vec<String>,
    &'a String,
    Option<&'a str>,
    Option<u32>,
    Option<&'a str>,
    &'a [AuthorizationDetail],
);

fn token(
    state: &VaultState,
    req: &Request,
    requester: &Requester,
    ask: TokenAsk<'_>,
    fresh: &Fresh<'_>,
) -> Outcome {
    let (agent, audience, scopes, action, approval_id, ttl_s, reply_key, details) = ask;
    let who = requester.name();
    let policy = &state.policy.policy;
    let refuse = |why: Refusal| refused(req, &who, &why, Some(audience.clone()), scopes.clone());
    // A secret is only ever sent sealed: no usable reply key, no token (and no approval
    // request, which would end in a token nobody could receive).
    let reply_key = match reply_key.map(|k| (k, docket_schemas::seal::check_reply_key(k))) {
        Some((k, Ok(()))) => k,
        Some((_, Err(why))) => return refuse(Refusal::Malformed(why.to_string())),
        None => {
            return refuse(Refusal::Malformed(
                "a token request must carry reply_key, a one-time X25519 public key (base64): \
                 token secrets are sent only sealed to it"
                    .into(),
            ));
        }
    };
    if *requester != Requester::Agent(agent.clone()) {
        return refuse(Refusal::Forbidden(
            who.clone(),
            format!("ask for a token as {agent}"),
        ));
    }
    if let Err(why) = docket_schemas::event::authorization_details(details) {
        return refuse(Refusal::Malformed(why.to_string()));
    }
    if details
        .iter()
        .any(|d| !d.locations.is_empty() && d.locations != [audience.clone()])
    {
        return refuse(Refusal::Malformed(format!(
            "authorization_details: locations name another audience than the token's ({audience})"
        )));
    }
    if state
        .agents
        .get(agent)
        .is_some_and(|a| a.suspended_seq.is_some())
    {
        return refuse(Refusal::Suspended(agent.clone()));
    }
    let wanted: std::collections::BTreeSet<&String> = scopes.iter().collect();
    // Of several grants that fit, the oldest decides (a fixed choice, whatever the map order).
    let grant = state
        .grants_of(agent)
        .filter(|g| {
            g.agent == *agent
                && g.audience == *audience
                && g.status(fresh.now) == Status::Active
                && wanted.iter().all(|s| g.scopes.contains(*s))
        })
        .min_by_key(|g| g.created_seq);
    let Some(grant) = grant else {
        return refuse(Refusal::NoGrant {
            agent: agent.clone(),
            audience: audience.clone(),
            scopes: scopes.clone(),
        });
    };
    let risk = scopes
        .iter()
        .filter_map(|s| grant.approval.get(s))
        .max()
        .copied();
    let mut approval_used = None;
    if let Some(risk) = risk {
        match approval_id.and_then(|id| state.approvals.get(id)) {
            None => {
                let approval_id = format!("appr-{}", fresh.id);
                let expires_at = approval_expires_at(policy, fresh.now);
                let binding_message: String = action
                    .chars()
                    .take(limits::BINDING_MESSAGE_BYTES_MAX / 4)
                    .collect();
                let notice = ApprovalNotice {
                    approval_id: approval_id.clone(),
                    agent: agent.clone(),
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                    risk,
                    binding_message: binding_message.clone(),
                    expires_at,
                    authorization_details: details.to_vec(),
                };
                return Outcome {
                    reply: Reply::Outcome(Answer {
                        approval_id: Some(approval_id.clone()),
                        expires_at: Some(expires_at),
                        ..Answer::done(Said::Pending)
                    }),
                    events: vec![EventBody::ApprovalRequested(ApprovalRequested {
                        approval_id,
                        grant_id: grant.grant_id.clone(),
                        user: grant.user.clone(),
                        agent: agent.clone(),
                        audience: audience.clone(),
                        scopes: scopes.clone(),
                        risk,
                        binding_message,
                        expires_at,
                        authorization_details: details.to_vec(),
                    })],
                    notify: Some((
                        format!("{}{}", vault::SUBJECT_APPROVALS_PREFIX, grant.user),
                        notice,
                    )),
                };
            }
            Some(a) => {
                if a.agent != *agent
                    || a.grant_id != grant.grant_id
                    || !wanted.iter().all(|s| a.scopes.contains(*s))
                {
                    return refuse(Refusal::BadApproval(
                        a.approval_id.clone(),
                        "does not cover this request".into(),
                    ));
                }
                // The approver saw these actions: a token for others needs its own approval.
                if a.authorization_details != details {
                    return refuse(Refusal::BadApproval(
                        a.approval_id.clone(),
                        "was asked for other authorization_details than this request's".into(),
                    ));
                }
                match a.status(fresh.now) {
                    // Whether the approval is sound (by the grant's user, in time, with a proven
                    // step-up when critical) is `judge_token`'s to say, below.
                    ApprovalStatus::Approved => approval_used = Some(a.approval_id.clone()),
                    ApprovalStatus::Pending => {
                        return Outcome::answer(
                            Answer {
                                approval_id: Some(a.approval_id.clone()),
                                ..Answer::done(Said::Pending)
                            },
                            vec![],
                        );
                    }
                    ApprovalStatus::Denied => {
                        return refuse(Refusal::Denied(a.approval_id.clone()));
                    }
                    ApprovalStatus::Expired => {
                        return refuse(Refusal::Expired(a.approval_id.clone()));
                    }
                }
            }
        }
    }
    let expires_at = token_expires_at(policy, grant, fresh.now, ttl_s);
    let issued = TokenIssued {
        token_id: format!("tok-{}", fresh.id),
        token_hash: token_hash(fresh.hash_key, &fresh.token_secret),
        grant_id: grant.grant_id.clone(),
        user: grant.user.clone(),
        agent: agent.clone(),
        audience: audience.clone(),
        scopes: scopes.clone(),
        expires_at,
        approval_id: approval_used,
        authorization_details: details.to_vec(),
    };
    // The rules the fold will judge this token by: refuse rather than mint a finding.
    if let Some(b) = judge_token(state, &issued, fresh.now).first() {
        return refuse(Refusal::Breaks(b.rule.as_str(), b.why.clone()));
    }
    // Sealed to the requester's one-time key: whoever reads the reply on the bus sees
    // ciphertext. The key was checked before anything was decided.
    let sealed = match docket_schemas::seal::seal_secret(
        fresh.token_secret.as_bytes(),
        reply_key,
        fresh.seal_ephemeral,
    ) {
        Ok(sealed) => sealed,
        Err(why) => return refuse(Refusal::Malformed(why.to_string())),
    };
    Outcome::answer(
        Answer {
            sealed_token: Some(sealed),
            token_id: Some(issued.token_id.clone()),
            expires_at: Some(expires_at),
            scope: Some(scopes.join(" ")),
            ..Answer::done(Said::Issued)
        },
        vec![EventBody::TokenIssued(issued)],
    )
}

fn revoke(
    state: &VaultState,
    req: &Request,
    requester: &Requester,
    what: (Option<&str>, Option<&str>, Option<&str>),
    reason: &str,
) -> Outcome {
    let who = requester.name();
    let (by, reason) = (who.clone(), reason.to_string());
    // What is named, who owns it (user, agent), the event that ends it, and the answer.
    let (verb, name, owner, body, status) = match what {
        (Some(id), None, None) => (
            "revoke",
            format!("token {id}"),
            state
                .tokens
                .get(id)
                .map(|t| (t.user.as_str(), t.agent.as_str())),
            EventBody::TokenRevoked(TokenRevoked {
                token_id: id.into(),
                by,
                reason,
            }),
            Said::Revoked,
        ),
        (None, Some(id), None) => (
            "revoke",
            format!("grant {id}"),
            state.grants.get(id).map(|g| (g.user.as_str(), "")),
            EventBody::GrantRevoked(GrantRevoked {
                grant_id: id.into(),
                by,
                reason,
            }),
            Said::Revoked,
        ),
        (None, None, Some(id)) => (
            "suspend",
            format!("agent {id}"),
            state.agents.get(id).map(|a| (a.user.as_str(), "")),
            EventBody::AgentSuspended(AgentSuspended {
                agent: id.into(),
                by,
                reason,
            }),
            Said::Suspended,
        ),
        _ => {
            let why = Refusal::Malformed("name exactly one of token_id, grant_id, agent".into());
            return refused(req, &who, &why, None, vec![]);
        }
    };
    let allowed = |user: &str, agent: &str| match requester {
        Requester::Admin => true,
        Requester::User(u) => u == user,
        Requester::Agent(a) => a == agent,
        Requester::Gateway(_) | Requester::Reader(_) => false,
    };
    match owner {
        None => refused(req, &who, &Refusal::NotFound(name), None, vec![]),
        Some((user, agent)) if !allowed(user, agent) => refused(
            req,
            &who,
            &Refusal::Forbidden(who.clone(), format!("{verb} {name}")),
            None,
            vec![],
        ),
        Some(_) => Outcome::answer(Answer::done(status), vec![body]),
    }
}
