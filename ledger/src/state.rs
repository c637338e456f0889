//! The vault's state derived from the log, and the policy violations found while deriving it.
//!
//! Pure and deterministic: `apply` takes an entry's seq and event and returns
//! what it found. Time is the event's own `ts`; maps are ordered, so the state's
//! serialisation and digest never depend on hash-map iteration order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use docket_schemas::*;
use serde::{Deserialize, Serialize};

use crate::step_up::{StepUpKeyState, StepUpKeys, StepUpRefusal, follow_key_event, judge};

/// Findings kept per entry at most (an entry can break several rules).
pub const FINDINGS_PER_ENTRY_MAX: usize = 8;

/// Rule settings that are not in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Oldest step-up authentication accepted for a critical approval, in seconds before the decision.
    pub step_up_max_age_s: i64,
    /// How long an approval request waits for a human, in seconds.
    #[serde(default = "default_approval_ttl_s")]
    pub approval_ttl_s: i64,
}

fn default_approval_ttl_s() -> i64 {
    300
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            step_up_max_age_s: 300,
            approval_ttl_s: default_approval_ttl_s(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// A policy violation: which rule, how bad, in words, and the entries that prove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

macro_rules! rules {
    ($($variant:ident = $name:literal, $sev:ident;)*) => {
        /// The policy rules the fold checks.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Rule { $(#[serde(rename = $name)] $variant,)* }
        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];
            pub fn as_str(self) -> &'static str { match self { $(Rule::$variant => $name,)* } }
            pub fn severity(self) -> Severity { match self { $(Rule::$variant => Severity::$sev,)* } }
        }
    };
}

rules! {
    CallUnknownToken = "call.unknown_token", High;
    CallExpiredToken = "call.expired_token", High;
    CallRevokedToken = "call.revoked_token", Critical;
    CallScopeNotGranted = "call.scope_not_granted", High;
    CallWrongAgent = "call.wrong_agent", Critical;
    CallSuspendedAgent = "call.suspended_agent", Critical;
    CallOverBudget = "call.over_budget", Medium;
    TokenUnknownGrant = "token.unknown_grant", High;
    TokenScopeOutsideGrant = "token.scope_outside_grant", High;
    TokenAfterGrantEnded = "token.after_grant_ended", High;
    TokenWithoutApproval = "token.without_approval", Critical;
    TokenTtlOverGrant = "token.ttl_over_grant", Medium;
    ApprovalWrongDecider = "approval.wrong_decider", Critical;
    ApprovalStaleStepUp = "approval.stale_step_up", High;
    ApprovalStepUpUnproven = "approval.step_up_unproven", Critical;
    ApprovalUnknownRequest = "approval.unknown_request", Medium;
    ApprovalRedecided = "approval.redecided", High;
    IdReused = "object.id_reused", High;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub agent: String,
    pub user: String,
    pub name: String,
    pub public_key: String,
    pub registered_seq: u64,
    pub suspended_seq: Option<u64>,
    pub last_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Revoked,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantState {
    pub grant_id: String,
    pub user: String,
    pub agent: String,
    pub audience: String,
    pub scopes: BTreeSet<String>,
    pub expires_at: Timestamp,
    pub max_calls: Option<u64>,
    pub max_token_ttl_s: Option<u32>,
    /// Scopes that need approval, with their risk.
    pub approval: BTreeMap<String, Risk>,
    pub created_seq: u64,
    pub revoked_seq: Option<u64>,
    pub calls: u64,
    pub last_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalState {
    pub approval_id: String,
    pub grant_id: String,
    pub user: String,
    pub agent: String,
    pub audience: String,
    pub scopes: BTreeSet<String>,
    pub risk: Risk,
    pub binding_message: String,
    pub expires_at: Timestamp,
    pub requested_seq: u64,
    pub requested_at: Timestamp,
    pub decision: Option<Decision>,
    pub decided_by: Option<String>,
    pub method: Option<ApprovalMethod>,
    pub auth_time: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub decided_seq: Option<u64>,
    /// The step-up key whose assertion proved this decision's step-up (crate::step_up::judge).
    #[serde(default)]
    pub step_up_key: Option<String>,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    pub token_id: String,
    pub token_hash: String,
    pub grant_id: String,
    pub user: String,
    pub agent: String,
    pub audience: String,
    pub scopes: BTreeSet<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub approval_id: Option<String>,
    pub issued_seq: u64,
    pub revoked_seq: Option<u64>,
    pub uses: u64,
    pub last_seq: u64,
}

/// Revoked beats expired beats active, for anything with a revocation and an expiry.
fn lifetime_status(revoked_seq: Option<u64>, expires_at: Timestamp, at: Timestamp) -> Status {
    if revoked_seq.is_some() {
        Status::Revoked
    } else if at >= expires_at {
        Status::Expired
    } else {
        Status::Active
    }
}

impl GrantState {
    pub fn status(&self, at: Timestamp) -> Status {
        lifetime_status(self.revoked_seq, self.expires_at, at)
    }
}

impl TokenState {
    pub fn status(&self, at: Timestamp) -> Status {
        lifetime_status(self.revoked_seq, self.expires_at, at)
    }
}

impl ApprovalState {
    pub fn status(&self, at: Timestamp) -> ApprovalStatus {
        match self.decision {
            Some(Decision::Approved) => ApprovalStatus::Approved,
            Some(Decision::Denied) => ApprovalStatus::Denied,
            None if at >= self.expires_at => ApprovalStatus::Expired,
            None => ApprovalStatus::Pending,
        }
    }
}

/// A key of one object in the state: what changed, for persisting only the changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Agent(String),
    Grant(String),
    Approval(String),
    Token(String),
    StepUpKey(String),
}

impl ObjectKey {
    /// Storage key: a one-letter family, a slash, the id.
    pub fn encode(&self) -> Vec<u8> {
        let (p, id) = match self {
            ObjectKey::Agent(id) => ("a/", id),
            ObjectKey::Grant(id) => ("g/", id),
            ObjectKey::Approval(id) => ("p/", id),
            ObjectKey::Token(id) => ("t/", id),
            ObjectKey::StepUpKey(id) => ("k/", id),
        };
        [p.as_bytes(), id.as_bytes()].concat()
    }
}

/// Everything derived from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    // Hash maps for the fold's lookups; anything that leaves the fold in bulk (digest,
    // views) sorts by key first, so no output depends on hash order.
    pub agents: HashMap<String, AgentState>,
    pub grants: HashMap<String, GrantState>,
    pub approvals: HashMap<String, ApprovalState>,
    pub tokens: HashMap<String, TokenState>,
    /// Users' step-up keys, as the admin's key events registered them.
    #[serde(default)]
    pub step_up_keys: StepUpKeys,
    /// Seq of the last entry applied.
    pub seq: u64,
    /// `ts` of the last entry applied: the state's notion of "now".
    pub ts: Option<Timestamp>,
    #[serde(skip)]
    token_by_hash: HashMap<String, String>,
    /// Live tokens per grant and per agent, so a cascade touches only what it revokes.
    #[serde(skip)]
    live_by_grant: BTreeMap<String, BTreeSet<String>>,
    #[serde(skip)]
    live_by_agent: BTreeMap<String, BTreeSet<String>>,
    /// Grants per agent, so the vault finds an agent's grants without a scan.
    #[serde(skip)]
    grants_by_agent: HashMap<String, BTreeSet<String>>,
}

impl VaultState {
    /// Rebuilds indexes after loading objects from storage.
    pub fn reindex(&mut self) {
        self.token_by_hash = self
            .tokens
            .values()
            .map(|t| (t.token_hash.clone(), t.token_id.clone()))
            .collect();
        self.live_by_grant.clear();
        self.live_by_agent.clear();
        self.grants_by_agent.clear();
        for g in self.grants.values() {
            self.grants_by_agent
                .entry(g.agent.clone())
                .or_default()
                .insert(g.grant_id.clone());
        }
        for t in self.tokens.values().filter(|t| t.revoked_seq.is_none()) {
            self.live_by_grant
                .entry(t.grant_id.clone())
                .or_default()
                .insert(t.token_id.clone());
            self.live_by_agent
                .entry(t.agent.clone())
                .or_default()
                .insert(t.token_id.clone());
        }
    }

    /// Marks tokens revoked at `seq` and drops them from the live indexes.
    fn revoke_tokens(&mut self, ids: BTreeSet<String>, seq: u64, cx: &mut Apply) {
        for id in ids {
            if let Some(t) = self.tokens.get_mut(&id)
                && t.revoked_seq.is_none()
            {
                t.revoked_seq = Some(seq);
                t.last_seq = seq;
                cx.touch(|| ObjectKey::Token(id.clone()));
                if let Some(set) = self.live_by_grant.get_mut(&t.grant_id) {
                    set.remove(&id);
                }
                if let Some(set) = self.live_by_agent.get_mut(&t.agent) {
                    set.remove(&id);
                }
            }
        }
    }

    /// The grants given to `agent`.
    pub fn grants_of<'a>(&'a self, agent: &str) -> impl Iterator<Item = &'a GrantState> + 'a {
        self.grants_by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.grants.get(id))
    }

    pub fn token_by_hash(&self, hash: &str) -> Option<&TokenState> {
        self.token_by_hash
            .get(hash)
            .and_then(|id| self.tokens.get(id))
    }

    /// Applies one entry; returns the findings and the objects it changed.
    pub fn apply(
        &mut self,
        seq: u64,
        event: &Event,
        policy: &Policy,
    ) -> (Vec<Finding>, Vec<ObjectKey>) {
        self.apply_inner(seq, event, policy, true)
    }

    /// Applies one entry without reporting which objects changed (replays that persist nothing).
    pub fn replay(&mut self, seq: u64, event: &Event, policy: &Policy) -> Vec<Finding> {
        self.apply_inner(seq, event, policy, false).0
    }

    fn apply_inner(
        &mut self,
        seq: u64,
        event: &Event,
        policy: &Policy,
        track: bool,
    ) -> (Vec<Finding>, Vec<ObjectKey>) {
        let mut cx = Apply {
            seq,
            ts: event.ts,
            findings: Vec::new(),
            touched: track.then(Vec::new),
        };
        self.seq = seq;
        self.ts = Some(self.ts.map_or(event.ts, |t| t.max(event.ts)));
        match &event.body {
            EventBody::AgentRegistered(e) => {
                let a = self
                    .agents
                    .entry(e.agent.clone())
                    .or_insert_with(|| AgentState {
                        agent: e.agent.clone(),
                        user: e.user.clone(),
                        name: e.name.clone(),
                        public_key: e.public_key.clone(),
                        registered_seq: seq,
                        suspended_seq: None,
                        last_seq: seq,
                    });
                if a.user != e.user {
                    // The owner decides who may grant the agent: a re-registration may rotate
                    // the key or rename, never hand the agent to someone else.
                    let first = a.registered_seq;
                    cx.find(
                        Rule::IdReused,
                        format!(
                            "agent {} was registered again for {}; it stays {}'s",
                            e.agent, e.user, a.user
                        ),
                        vec![first],
                        Some(e.agent.clone()),
                    );
                } else {
                    a.name.clone_from(&e.name);
                    a.public_key.clone_from(&e.public_key);
                    a.last_seq = seq;
                    cx.touch(|| ObjectKey::Agent(e.agent.clone()));
                }
            }
            EventBody::AgentSuspended(e) => {
                if let Some(a) = self.agents.get_mut(&e.agent) {
                    a.suspended_seq.get_or_insert(seq);
                    a.last_seq = seq;
                    cx.touch(|| ObjectKey::Agent(e.agent.clone()));
                }
                let ids = self.live_by_agent.remove(&e.agent).unwrap_or_default();
                self.revoke_tokens(ids, seq, &mut cx);
            }
            EventBody::GrantCreated(e) if self.grants.contains_key(&e.grant_id) => {
                let first = self.grants[&e.grant_id].created_seq;
                cx.reused("grant", &e.grant_id, first, &e.agent);
            }
            EventBody::ApprovalRequested(e) if self.approvals.contains_key(&e.approval_id) => {
                let first = self.approvals[&e.approval_id].requested_seq;
                cx.reused("approval", &e.approval_id, first, &e.agent);
            }
            EventBody::TokenIssued(e) if self.tokens.contains_key(&e.token_id) => {
                let first = self.tokens[&e.token_id].issued_seq;
                cx.reused("token", &e.token_id, first, &e.agent);
            }
            EventBody::GrantCreated(e) => {
                self.grants_by_agent
                    .entry(e.agent.clone())
                    .or_default()
                    .insert(e.grant_id.clone());
                self.grants.insert(
                    e.grant_id.clone(),
                    GrantState {
                        grant_id: e.grant_id.clone(),
                        user: e.user.clone(),
                        agent: e.agent.clone(),
                        audience: e.audience.clone(),
                        scopes: e.scopes.iter().cloned().collect(),
                        expires_at: e.expires_at,
                        max_calls: e.max_calls,
                        max_token_ttl_s: e.max_token_ttl_s,
                        approval: e
                            .approval
                            .iter()
                            .map(|r| (r.scope.clone(), r.risk))
                            .collect(),
                        created_seq: seq,
                        revoked_seq: None,
                        calls: 0,
                        last_seq: seq,
                    },
                );
                cx.touch(|| ObjectKey::Grant(e.grant_id.clone()));
            }
            EventBody::GrantRevoked(e) => {
                if let Some(g) = self.grants.get_mut(&e.grant_id) {
                    g.revoked_seq.get_or_insert(seq);
                    g.last_seq = seq;
                    cx.touch(|| ObjectKey::Grant(e.grant_id.clone()));
                }
                let ids = self.live_by_grant.remove(&e.grant_id).unwrap_or_default();
                self.revoke_tokens(ids, seq, &mut cx);
            }
            EventBody::ApprovalRequested(e) => {
                self.approvals.insert(
                    e.approval_id.clone(),
                    ApprovalState {
                        approval_id: e.approval_id.clone(),
                        grant_id: e.grant_id.clone(),
                        user: e.user.clone(),
                        agent: e.agent.clone(),
                        audience: e.audience.clone(),
                        scopes: e.scopes.iter().cloned().collect(),
                        risk: e.risk,
                        binding_message: e.binding_message.clone(),
                        expires_at: e.expires_at,
                        requested_seq: seq,
                        requested_at: event.ts,
                        decision: None,
                        decided_by: None,
                        method: None,
                        auth_time: None,
                        decided_at: None,
                        decided_seq: None,
                        step_up_key: None,
                        last_seq: seq,
                    },
                );
                cx.touch(|| ObjectKey::Approval(e.approval_id.clone()));
            }
            EventBody::ApprovalDecided(e) => self.decide(e, policy, &mut cx),
            EventBody::TokenIssued(e) => self.issue(e, &mut cx),
            EventBody::TokenRevoked(e) => {
                self.revoke_tokens(BTreeSet::from([e.token_id.clone()]), seq, &mut cx);
            }
            EventBody::ApiCalled(e) => self.call(e, &mut cx),
            EventBody::KeyRegistered(_) | EventBody::KeyRevoked(_) => {
                if let Some(id) = follow_key_event(&mut self.step_up_keys, seq, &event.body) {
                    cx.touch(|| ObjectKey::StepUpKey(id));
                }
            }
            EventBody::RequestRefused(_) => {}
        }
        cx.findings.truncate(FINDINGS_PER_ENTRY_MAX);
        let mut touched = cx.touched.unwrap_or_default();
        touched.sort();
        touched.dedup();
        (cx.findings, touched)
    }

    fn decide(&mut self, e: &ApprovalDecided, policy: &Policy, cx: &mut Apply) {
        let Some(a) = self.approvals.get_mut(&e.approval_id) else {
            return cx.find(
                Rule::ApprovalUnknownRequest,
                format!(
                    "{} decided approval {} that was never requested",
                    e.user, e.approval_id
                ),
                vec![],
                None,
            );
        };
        if let Some(first) = a.decided_seq {
            // The first decision stands: a later one must not turn a denial into an approval.
            return cx.find(
                Rule::ApprovalRedecided,
                format!(
                    "approval {} was decided again by {} after its decision at seq {first}",
                    a.approval_id, e.user
                ),
                vec![a.requested_seq, first],
                Some(a.agent.clone()),
            );
        }
        let evidence = vec![a.requested_seq];
        if e.user != a.user {
            cx.find(
                Rule::ApprovalWrongDecider,
                format!(
                    "approval {} for {}'s grant was decided by {}",
                    a.approval_id, a.user, e.user
                ),
                evidence.clone(),
                Some(a.agent.clone()),
            );
        }
        // The same judgement the vault makes before it records a decision.
        let step_up = match judge(e, a, cx.ts, &self.step_up_keys, policy) {
            Ok(key) => key,
            Err(why) => {
                let rule = match why {
                    StepUpRefusal::Stale { .. } => Rule::ApprovalStaleStepUp,
                    _ => Rule::ApprovalStepUpUnproven,
                };
                cx.find(
                    rule,
                    format!("approval {} by {}: {why}", a.approval_id, e.user),
                    evidence,
                    Some(a.agent.clone()),
                );
                None
            }
        };
        a.decision = Some(e.decision);
        a.decided_by = Some(e.user.clone());
        a.method = Some(e.method);
        a.auth_time = e.auth_time;
        a.step_up_key = step_up;
        a.decided_at = Some(cx.ts);
        a.decided_seq = Some(cx.seq);
        a.last_seq = cx.seq;
        cx.touch(|| ObjectKey::Approval(e.approval_id.clone()));
    }

    fn issue(&mut self, e: &TokenIssued, cx: &mut Apply) {
        let scopes: BTreeSet<String> = e.scopes.iter().cloned().collect();
        match self.grants.get(&e.grant_id) {
            None => cx.find(
                Rule::TokenUnknownGrant,
                format!(
                    "token {} was issued under unknown grant {}",
                    e.token_id, e.grant_id
                ),
                vec![],
                Some(e.agent.clone()),
            ),
            Some(g) => {
                let ev = vec![g.created_seq];
                let outside: Vec<&String> = scopes.difference(&g.scopes).collect();
                if !outside.is_empty() || g.agent != e.agent || g.audience != e.audience {
                    cx.find(
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
                        ev.clone(),
                        Some(e.agent.clone()),
                    );
                }
                if g.status(cx.ts) != Status::Active {
                    let mut ev = ev.clone();
                    ev.extend(g.revoked_seq);
                    cx.find(
                        Rule::TokenAfterGrantEnded,
                        format!(
                            "token {} was issued after grant {} ended",
                            e.token_id, g.grant_id
                        ),
                        ev,
                        Some(e.agent.clone()),
                    );
                }
                let ttl_cap = g.max_token_ttl_s.map(|s| cx.ts.plus_seconds(i64::from(s)));
                if e.expires_at > g.expires_at || ttl_cap.is_some_and(|cap| e.expires_at > cap) {
                    cx.find(
                        Rule::TokenTtlOverGrant,
                        format!(
                            "token {} expires {} , beyond what grant {} allows",
                            e.token_id, e.expires_at, g.grant_id
                        ),
                        ev.clone(),
                        Some(e.agent.clone()),
                    );
                }
                let needs: Vec<&String> = scopes
                    .iter()
                    .filter(|s| g.approval.contains_key(*s))
                    .collect();
                if !needs.is_empty() {
                    let approval = e.approval_id.as_ref().and_then(|id| self.approvals.get(id));
                    let ok = approval.is_some_and(|a| {
                        a.grant_id == g.grant_id
                            && a.decision == Some(Decision::Approved)
                            && needs.iter().all(|s| a.scopes.contains(*s))
                    });
                    if !ok {
                        let mut ev = ev.clone();
                        ev.extend(approval.map(|a| a.requested_seq));
                        cx.find(Rule::TokenWithoutApproval, format!("token {} carries {:?}, which need approval, without an approved request", e.token_id, needs), ev, Some(e.agent.clone()));
                    }
                }
            }
        }
        self.tokens.insert(
            e.token_id.clone(),
            TokenState {
                token_id: e.token_id.clone(),
                token_hash: e.token_hash.clone(),
                grant_id: e.grant_id.clone(),
                user: e.user.clone(),
                agent: e.agent.clone(),
                audience: e.audience.clone(),
                scopes,
                issued_at: cx.ts,
                expires_at: e.expires_at,
                approval_id: e.approval_id.clone(),
                issued_seq: cx.seq,
                revoked_seq: None,
                uses: 0,
                last_seq: cx.seq,
            },
        );
        self.token_by_hash
            .insert(e.token_hash.clone(), e.token_id.clone());
        self.live_by_grant
            .entry(e.grant_id.clone())
            .or_default()
            .insert(e.token_id.clone());
        self.live_by_agent
            .entry(e.agent.clone())
            .or_default()
            .insert(e.token_id.clone());
        cx.touch(|| ObjectKey::Token(e.token_id.clone()));
    }

    fn call(&mut self, e: &ApiCalled, cx: &mut Apply) {
        let suspended = self.agents.get(&e.agent).and_then(|a| a.suspended_seq);
        if let Some(s) = suspended {
            cx.find(
                Rule::CallSuspendedAgent,
                format!(
                    "{} called {} {} after being suspended",
                    e.agent, e.method, e.operation
                ),
                vec![s],
                Some(e.agent.clone()),
            );
        }
        let Some(t) = self.tokens.get_mut(&e.token_id) else {
            return cx.find(
                Rule::CallUnknownToken,
                format!(
                    "{} called {} {} with unknown token {}",
                    e.agent, e.method, e.operation, e.token_id
                ),
                vec![],
                Some(e.agent.clone()),
            );
        };
        t.uses += 1;
        t.last_seq = cx.seq;
        cx.touch(|| ObjectKey::Token(t.token_id.clone()));
        let ev = [t.issued_seq];
        if let Some(r) = t.revoked_seq {
            cx.find(
                Rule::CallRevokedToken,
                format!("{} used token {} after its revocation", e.agent, t.token_id),
                vec![t.issued_seq, r],
                Some(e.agent.clone()),
            );
        } else if cx.ts >= t.expires_at {
            cx.find(
                Rule::CallExpiredToken,
                format!(
                    "{} used token {} after it expired at {}",
                    e.agent, t.token_id, t.expires_at
                ),
                ev.to_vec(),
                Some(e.agent.clone()),
            );
        }
        if e.agent != t.agent {
            cx.find(
                Rule::CallWrongAgent,
                format!(
                    "{} used token {} that was issued to {}",
                    e.agent, t.token_id, t.agent
                ),
                ev.to_vec(),
                Some(e.agent.clone()),
            );
        }
        if let Some(scope) = &e.scope
            && !t.scopes.contains(scope)
        {
            cx.find(
                Rule::CallScopeNotGranted,
                format!(
                    "{} called {} {} needing {scope}, which token {} does not carry",
                    e.agent, e.method, e.operation, t.token_id
                ),
                ev.to_vec(),
                Some(e.agent.clone()),
            );
        }
        if let Some(g) = self.grants.get_mut(&t.grant_id) {
            g.calls += 1;
            g.last_seq = cx.seq;
            cx.touch(|| ObjectKey::Grant(g.grant_id.clone()));
            if let Some(max) = g.max_calls
                && g.calls > max
            {
                cx.find(
                    Rule::CallOverBudget,
                    format!(
                        "grant {} is at call {} of a budget of {max}",
                        g.grant_id, g.calls
                    ),
                    vec![g.created_seq],
                    Some(e.agent.clone()),
                );
            }
        }
    }

    /// A digest of the whole state: blake3 over its canonical JSON (every map sorted by key).
    pub fn digest(&self) -> [u8; 32] {
        #[derive(Serialize)]
        struct Sorted<'a> {
            agents: BTreeMap<&'a String, &'a AgentState>,
            grants: BTreeMap<&'a String, &'a GrantState>,
            approvals: BTreeMap<&'a String, &'a ApprovalState>,
            tokens: BTreeMap<&'a String, &'a TokenState>,
            step_up_keys: BTreeMap<&'a String, &'a StepUpKeyState>,
            seq: u64,
            ts: Option<Timestamp>,
        }
        let sorted = Sorted {
            agents: self.agents.iter().collect(),
            grants: self.grants.iter().collect(),
            approvals: self.approvals.iter().collect(),
            tokens: self.tokens.iter().collect(),
            step_up_keys: self.step_up_keys.iter().collect(),
            seq: self.seq,
            ts: self.ts,
        };
        let mut h = blake3::Hasher::new();
        h.update(b"docket/state/v1\n");
        h.update(&serde_json::to_vec(&sorted).unwrap_or_default());
        *h.finalize().as_bytes()
    }

    /// The object stored under `key`, as JSON, or `None` when absent.
    pub fn object_json(&self, key: &ObjectKey) -> Option<Vec<u8>> {
        let v = match key {
            ObjectKey::Agent(id) => self.agents.get(id).map(serde_json::to_vec),
            ObjectKey::Grant(id) => self.grants.get(id).map(serde_json::to_vec),
            ObjectKey::Approval(id) => self.approvals.get(id).map(serde_json::to_vec),
            ObjectKey::Token(id) => self.tokens.get(id).map(serde_json::to_vec),
            ObjectKey::StepUpKey(id) => self.step_up_keys.get(id).map(serde_json::to_vec),
        };
        v.and_then(Result::ok)
    }
}

struct Apply {
    seq: u64,
    ts: Timestamp,
    findings: Vec<Finding>,
    /// Changed objects, when the caller persists them; `None` on replays, which skip the clones.
    touched: Option<Vec<ObjectKey>>,
}

impl Apply {
    /// An id that names an existing object was used to create another: the first one stands.
    fn reused(&mut self, what: &str, id: &str, first_seq: u64, agent: &str) {
        let message =
            format!("{what} id {id} was used again; the first one (seq {first_seq}) stands");
        self.find(
            Rule::IdReused,
            message,
            vec![first_seq],
            Some(agent.to_string()),
        );
    }

    fn touch(&mut self, key: impl FnOnce() -> ObjectKey) {
        if let Some(t) = &mut self.touched {
            t.push(key());
        }
    }

    fn find(&mut self, rule: Rule, message: String, mut evidence: Vec<u64>, agent: Option<String>) {
        evidence.push(self.seq);
        evidence.sort_unstable();
        evidence.dedup();
        self.findings.push(Finding {
            seq: self.seq,
            ts: self.ts,
            rule,
            severity: rule.severity(),
            message,
            evidence,
            agent,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;
    use proptest::prelude::*;

    /// A crafted log: events applied in order, each a second after the previous.
    struct Log {
        state: VaultState,
        seq: u64,
        ts: Timestamp,
        findings: Vec<Finding>,
    }

    impl Log {
        fn new() -> Log {
            let mut log = Log {
                state: VaultState::default(),
                seq: 0,
                ts: Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
                findings: vec![],
            };
            log.add(EventBody::AgentRegistered(AgentRegistered {
                agent: "a1".into(),
                user: "alice".into(),
                name: "bot".into(),
                public_key: "x".into(),
            }));
            log.add(grant(
                "g1",
                vec!["repo:read", "repo:write", "repo:delete"],
                vec![("repo:write", Risk::High), ("repo:delete", Risk::Critical)],
            ));
            log.add(token("t1", "g1", "a1", vec!["repo:read"], 300, None));
            let pk = step_up_key().verifying_key();
            log.add(EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: "stepup:alice".into(),
                kinds: vec![],
            }));
            log
        }
        fn add(&mut self, body: EventBody) -> Vec<Finding> {
            self.seq += 1;
            self.ts = self.ts.plus_seconds(1);
            let e = Event {
                v: 1,
                id: EventId([0; 16]),
                ts: self.ts,
                body,
            };
            let (f, _) = self.state.apply(self.seq, &e, &Policy::default());
            self.findings.extend(f.clone());
            f
        }
        fn rules(f: &[Finding]) -> Vec<Rule> {
            f.iter().map(|f| f.rule).collect()
        }
    }

    fn grant(id: &str, scopes: Vec<&str>, approval: Vec<(&str, Risk)>) -> EventBody {
        EventBody::GrantCreated(GrantCreated {
            grant_id: id.into(),
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            expires_at: Timestamp::parse("2026-11-23T08:00:00.000000Z").unwrap(),
            max_calls: Some(3),
            max_token_ttl_s: Some(600),
            approval: approval
                .into_iter()
                .map(|(s, r)| ApprovalRule {
                    scope: s.into(),
                    risk: r,
                })
                .collect(),
        })
    }

    fn token(
        id: &str,
        grant: &str,
        agent: &str,
        scopes: Vec<&str>,
        ttl_s: i64,
        approval: Option<&str>,
    ) -> EventBody {
        EventBody::TokenIssued(TokenIssued {
            token_id: id.into(),
            token_hash: "0".repeat(64),
            grant_id: grant.into(),
            user: "alice".into(),
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            // Relative to the crafted log's clock: issued at 08:00:0N, within a minute.
            expires_at: Timestamp::parse("2026-11-22T08:00:00.000000Z")
                .unwrap()
                .plus_seconds(ttl_s),
            approval_id: approval.map(String::from),
        })
    }

    fn call(token: &str, agent: &str, scope: &str) -> EventBody {
        EventBody::ApiCalled(ApiCalled {
            token_id: token.into(),
            token_hash: None,
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            method: "GET".into(),
            operation: "/repos/acme/web".into(),
            scope: Some(scope.into()),
            status: 200,
            source: "10.0.0.1".into(),
        })
    }

    fn requested(id: &str, scope: &str, risk: Risk) -> EventBody {
        EventBody::ApprovalRequested(ApprovalRequested {
            approval_id: id.into(),
            grant_id: "g1".into(),
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec![scope.into()],
            risk,
            binding_message: "delete a repo".into(),
            expires_at: Timestamp::parse("2026-11-22T09:00:00.000000Z").unwrap(),
        })
    }

    /// Alice's step-up key, registered by `Log::new`.
    fn step_up_key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
    }

    /// A decision; a step-up one carries an assertion from alice's step-up key.
    fn decided(
        id: &str,
        user: &str,
        method: ApprovalMethod,
        auth_age_s: Option<i64>,
        log: &Log,
    ) -> EventBody {
        let auth_time = auth_age_s.map(|a| log.ts.plus_seconds(1 - a));
        EventBody::ApprovalDecided(ApprovalDecided {
            approval_id: id.into(),
            user: user.into(),
            decision: Decision::Approved,
            method,
            auth_time,
            reason: None,
            step_up: auth_time
                .filter(|_| method == ApprovalMethod::StepUp)
                .map(|auth_time| {
                    StepUpAssertion::seal(
                        &StepUpClaim {
                            v: 1,
                            user: "alice".into(),
                            approval_id: id.into(),
                            auth_time,
                        },
                        &step_up_key(),
                    )
                }),
        })
    }

    /// The same decision with its assertion replaced.
    fn with_step_up(mut d: EventBody, step_up: Option<StepUpAssertion>) -> EventBody {
        if let EventBody::ApprovalDecided(e) = &mut d {
            e.step_up = step_up;
        }
        d
    }

    #[test]
    fn a_clean_flow_has_no_findings() {
        let mut log = Log::new();
        assert!(log.add(call("t1", "a1", "repo:read")).is_empty());
        assert!(
            log.add(requested("p1", "repo:write", Risk::High))
                .is_empty()
        );
        let d = decided("p1", "alice", ApprovalMethod::Push, None, &log);
        assert!(log.add(d).is_empty());
        assert!(
            log.add(token("t2", "g1", "a1", vec!["repo:write"], 300, Some("p1")))
                .is_empty()
        );
        assert!(
            log.add(requested("p2", "repo:delete", Risk::Critical))
                .is_empty()
        );
        let d = decided("p2", "alice", ApprovalMethod::StepUp, Some(60), &log);
        assert!(log.add(d).is_empty());
        assert_eq!(
            log.state.approvals["p2"].step_up_key,
            Some(key_id(step_up_key().verifying_key().as_bytes()))
        );
        assert!(
            log.add(token(
                "t3",
                "g1",
                "a1",
                vec!["repo:delete"],
                300,
                Some("p2")
            ))
            .is_empty()
        );
        assert!(log.findings.is_empty(), "{:?}", log.findings);
        assert_eq!(log.state.tokens["t1"].uses, 1);
    }

    #[test]
    fn each_violation_gives_exactly_its_finding() {
        use Rule::*;
        type Case = (Rule, Box<dyn Fn(&mut Log) -> Vec<Finding>>);
        let cases: Vec<Case> = vec![
            (
                CallUnknownToken,
                Box::new(|l| l.add(call("nope", "a1", "repo:read"))),
            ),
            (
                CallExpiredToken,
                Box::new(|l| {
                    l.add(token("t9", "g1", "a1", vec!["repo:read"], 5, None));
                    l.add(EventBody::AgentRegistered(AgentRegistered {
                        agent: "a9".into(),
                        user: "u".into(),
                        name: "n".into(),
                        public_key: "k".into(),
                    }));
                    l.add(EventBody::AgentRegistered(AgentRegistered {
                        agent: "a8".into(),
                        user: "u".into(),
                        name: "n".into(),
                        public_key: "k".into(),
                    }));
                    l.add(call("t9", "a1", "repo:read"))
                }),
            ),
            (
                CallRevokedToken,
                Box::new(|l| {
                    l.add(EventBody::TokenRevoked(TokenRevoked {
                        token_id: "t1".into(),
                        by: "alice".into(),
                        reason: "done".into(),
                    }));
                    l.add(call("t1", "a1", "repo:read"))
                }),
            ),
            (
                CallScopeNotGranted,
                Box::new(|l| l.add(call("t1", "a1", "repo:write"))),
            ),
            (
                CallWrongAgent,
                Box::new(|l| l.add(call("t1", "a2", "repo:read"))),
            ),
            (
                CallSuspendedAgent,
                Box::new(|l| {
                    // Suspension revokes the agent's tokens, so its call also uses a revoked token;
                    // the test keeps only the suspension finding and checks the other below.
                    l.add(EventBody::AgentSuspended(AgentSuspended {
                        agent: "a1".into(),
                        by: "sec".into(),
                        reason: "r".into(),
                    }));
                    let f = l.add(call("t1", "a1", "repo:read"));
                    assert_eq!(Log::rules(&f), vec![CallSuspendedAgent, CallRevokedToken]);
                    l.findings.retain(|f| f.rule == CallSuspendedAgent);
                    f.into_iter()
                        .filter(|f| f.rule == CallSuspendedAgent)
                        .collect()
                }),
            ),
            (
                CallOverBudget,
                Box::new(|l| {
                    for _ in 0..3 {
                        assert!(l.add(call("t1", "a1", "repo:read")).is_empty());
                    }
                    l.add(call("t1", "a1", "repo:read"))
                }),
            ),
            (
                TokenUnknownGrant,
                Box::new(|l| l.add(token("t5", "g-none", "a1", vec!["repo:read"], 60, None))),
            ),
            (
                TokenScopeOutsideGrant,
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["admin:org"], 60, None))),
            ),
            (
                TokenAfterGrantEnded,
                Box::new(|l| {
                    l.add(EventBody::GrantRevoked(GrantRevoked {
                        grant_id: "g1".into(),
                        by: "alice".into(),
                        reason: "r".into(),
                    }));
                    l.add(token("t5", "g1", "a1", vec!["repo:read"], 60, None))
                }),
            ),
            (
                TokenWithoutApproval,
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["repo:write"], 60, None))),
            ),
            (
                TokenTtlOverGrant,
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["repo:read"], 3_600, None))),
            ),
            (
                ApprovalWrongDecider,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    let d = decided("p1", "mallory", ApprovalMethod::Push, None, l);
                    l.add(d)
                }),
            ),
            (
                ApprovalStaleStepUp,
                Box::new(|l| {
                    l.add(requested("p1", "repo:delete", Risk::Critical));
                    let d = decided("p1", "alice", ApprovalMethod::StepUp, Some(3_600), l);
                    l.add(d)
                }),
            ),
            (
                ApprovalStepUpUnproven,
                Box::new(|l| {
                    l.add(requested("p1", "repo:delete", Risk::Critical));
                    l.add(requested("p2", "repo:delete", Risk::Critical));
                    let unproven = |l: &mut Log, d: EventBody| {
                        let f = l.add(d);
                        assert_eq!(Log::rules(&f), vec![ApprovalStepUpUnproven], "{f:?}");
                        assert_eq!(l.state.approvals["p1"].step_up_key, None);
                        // Judged once: the first decision stands, so undo it for the next try.
                        l.state.approvals.get_mut("p1").unwrap().decided_seq = None;
                        l.findings.clear();
                    };
                    // A claimed step-up time, signed only by the user's own key.
                    let claimed = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    unproven(l, with_step_up(claimed, None));
                    // No step-up at all on a critical approval.
                    let push = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    unproven(l, push);
                    // An assertion from alice's step-up key, but for another approval.
                    let other = decided("p2", "alice", ApprovalMethod::StepUp, Some(10), l);
                    let EventBody::ApprovalDecided(other) = other else {
                        unreachable!()
                    };
                    let mut d = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    if let EventBody::ApprovalDecided(e) = &mut d {
                        e.auth_time = other.auth_time;
                        e.step_up = other.step_up;
                    }
                    unproven(l, d);
                    // An assertion signed by another key.
                    let forged = StepUpAssertion::seal(
                        &StepUpClaim {
                            v: 1,
                            user: "alice".into(),
                            approval_id: "p1".into(),
                            auth_time: l.ts.plus_seconds(-9),
                        },
                        &ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
                    );
                    let d = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    l.add(with_step_up(d, Some(forged)))
                }),
            ),
            (
                ApprovalRedecided,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    let mut deny = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    if let EventBody::ApprovalDecided(d) = &mut deny {
                        d.decision = Decision::Denied;
                    }
                    assert!(l.add(deny).is_empty());
                    let d = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    let f = l.add(d);
                    assert_eq!(
                        l.state.approvals["p1"].decision,
                        Some(Decision::Denied),
                        "the first decision stands"
                    );
                    f
                }),
            ),
            (
                IdReused,
                Box::new(|l| l.add(token("t1", "g1", "a1", vec!["repo:read"], 300, None))),
            ),
            (
                ApprovalUnknownRequest,
                Box::new(|l| {
                    let d = decided("p-none", "alice", ApprovalMethod::Push, None, l);
                    l.add(d)
                }),
            ),
        ];
        assert_eq!(cases.len(), Rule::ALL.len(), "every rule has a case");
        for (rule, case) in cases {
            let mut log = Log::new();
            let found = case(&mut log);
            assert_eq!(Log::rules(&found), vec![rule], "{rule:?}: {found:?}");
            assert_eq!(
                log.findings.len(),
                1,
                "{rule:?}: only the violating entry is flagged: {:?}",
                log.findings
            );
            assert!(found[0].evidence.contains(&log.seq));
        }
    }

    fn workload_events(seed: u64, n: usize, misbehaving: u64) -> (Vec<Event>, u64) {
        let mut w = Workload::new(
            seed,
            Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
            6,
            12,
        );
        w.misbehaving_per_mille = misbehaving;
        let mut out: Vec<Event> = w
            .setup()
            .iter()
            .map(|p| {
                docket_schemas::Envelope::decode(&p.envelope)
                    .unwrap()
                    .event()
                    .unwrap()
            })
            .collect();
        out.extend((0..n).map(|_| {
            docket_schemas::Envelope::decode(&w.next_envelope().envelope)
                .unwrap()
                .event()
                .unwrap()
        }));
        (out, w.misbehaved)
    }

    #[test]
    fn the_clean_workload_breaks_no_rule_and_misbehaviour_is_found() {
        let (events, _) = workload_events(11, 30_000, 0);
        let mut state = VaultState::default();
        let findings: Vec<Finding> = events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| state.apply(i as u64 + 1, e, &Policy::default()).0)
            .collect();
        assert!(
            findings.is_empty(),
            "{} findings, first: {:?}",
            findings.len(),
            findings.first()
        );
        let (events, misbehaved) = workload_events(11, 30_000, 20);
        let mut state = VaultState::default();
        let flagged: BTreeSet<u64> = events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| state.apply(i as u64 + 1, e, &Policy::default()).0)
            .map(|f| f.seq)
            .collect();
        assert!(misbehaved > 100);
        assert_eq!(
            flagged.len() as u64,
            misbehaved,
            "every misbehaving event, and nothing else, is flagged"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Applying incrementally, with the state saved and reloaded at random points, equals one replay.
        #[test]
        fn incremental_with_reloads_equals_replay(seed in any::<u64>(), cuts in proptest::collection::vec(0usize..3_000, 0..6)) {
            let (events, _) = workload_events(seed, 3_000, 30);
            let mut whole = VaultState::default();
            for (i, e) in events.iter().enumerate() {
                whole.apply(i as u64 + 1, e, &Policy::default());
            }
            let mut parts = VaultState::default();
            for (i, e) in events.iter().enumerate() {
                if cuts.contains(&i) {
                    let json = serde_json::to_vec(&parts).unwrap();
                    parts = serde_json::from_slice(&json).unwrap();
                    parts.reindex();
                }
                parts.apply(i as u64 + 1, e, &Policy::default());
            }
            prop_assert_eq!(parts.digest(), whole.digest());
        }
    }
}
