//! The vault's state derived from the log: its objects, their indexes and lookups, and its digest.
//!
//! Data only: the fold that changes it entry by entry is `fold.rs`, the rules
//! it judges by are `policy.rs`. Maps are serialised sorted, so the state's
//! bytes and digest never depend on hash-map iteration order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use docket_schemas::*;
use serde::{Deserialize, Serialize};

pub use docket_schemas::notice::{Finding, Rule, Severity};

/// Findings kept per entry at most (an entry can break several rules).
pub const FINDINGS_PER_ENTRY_MAX: usize = 8;

/// A step-up key as the log registered it: a producer key named `stepup:<user>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUpKeyState {
    pub key_id: String,
    pub user: String,
    /// base64 of the 32-byte public key.
    pub public_key: String,
    pub registered_seq: u64,
    /// Seq of its `key.revoked`, or of a re-registration under a name that is not `stepup:<user>`.
    pub ended_seq: Option<u64>,
    pub last_seq: u64,
}

/// The step-up keys known to the state, by key id.
pub type StepUpKeys = HashMap<String, StepUpKeyState>;

/// The policy in force and the entry that set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInForce {
    #[serde(flatten)]
    pub policy: PolicySet,
    /// Seq of the `policy.set` that set it; 0 for the documented defaults before any.
    pub set_seq: u64,
}

impl PolicyInForce {
    /// Whether `next` may follow this policy: it carries the next revision, or it is the
    /// documented defaults recorded as the first policy. The fold and the registry both
    /// apply a `policy.set` only when this says so.
    pub fn admits(&self, next: &PolicySet) -> bool {
        (self.set_seq == 0 && *next == PolicySet::DEFAULTS)
            || self.policy.revision.checked_add(1) == Some(next.revision)
    }
}

impl Default for PolicyInForce {
    fn default() -> Self {
        PolicyInForce {
            policy: PolicySet::DEFAULTS,
            set_seq: 0,
        }
    }
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
    /// The exact actions asked for (RFC 9396); a token on this approval must carry them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<AuthorizationDetail>,
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
    /// The exact actions the token is bound to (RFC 9396); empty: unbound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<AuthorizationDetail>,
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

/// Where a user's connection to a provider stands, as its `connection.*` events say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Linked,
    /// The provider refused the grant (`invalid_grant`): the user must link again.
    Broken,
    Unlinked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    pub user: String,
    pub provider: String,
    pub status: ConnectionStatus,
    pub scopes: Vec<String>,
    /// Fingerprint of the refresh token the vault holds.
    pub fingerprint: String,
    pub access_expires_at: Option<Timestamp>,
    pub linked_seq: u64,
    pub refreshes: u64,
    /// Why the last refresh failed, until one succeeds.
    pub failure: Option<String>,
    pub last_seq: u64,
}

/// The state's key of a connection: user and provider (a space is in no identifier).
pub fn connection_key(user: &str, provider: &str) -> String {
    format!("{user} {provider}")
}

/// A key of one object in the state: what changed, for persisting only the changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Agent(String),
    Grant(String),
    Approval(String),
    Token(String),
    StepUpKey(String),
    /// A connection, by [`connection_key`].
    Connection(String),
    /// The policy in force (one object).
    Policy,
}

impl ObjectKey {
    /// Storage key: a one-letter family, a slash, the id.
    pub fn encode(&self) -> Vec<u8> {
        let (p, id) = match self {
            ObjectKey::Agent(id) => ("a/", id.as_str()),
            ObjectKey::Grant(id) => ("g/", id.as_str()),
            ObjectKey::Approval(id) => ("p/", id.as_str()),
            ObjectKey::Token(id) => ("t/", id.as_str()),
            ObjectKey::StepUpKey(id) => ("k/", id.as_str()),
            ObjectKey::Connection(id) => ("c/", id.as_str()),
            ObjectKey::Policy => ("y/", "policy"),
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
    /// Users' upstream connections, by [`connection_key`].
    #[serde(default)]
    pub connections: HashMap<String, ConnectionState>,
    /// The policy as of the last entry applied: it judges the next one.
    #[serde(default)]
    pub policy: PolicyInForce,
    /// Seq of the last entry applied.
    pub seq: u64,
    /// `ts` of the last entry applied: the state's notion of "now".
    pub ts: Option<Timestamp>,
    #[serde(skip)]
    pub(crate) ix: Indexes,
}

/// Lookups kept beside the objects, rebuilt by `reindex` and never stored. Live means
/// neither revoked nor expired as of the state's `ts`: the live indexes shrink as tokens end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Indexes {
    /// Live tokens by keyed hash (introspection).
    pub token_by_hash: HashMap<String, String>,
    /// Every token by keyed hash, the first issued with it, ended or not: so an
    /// introspection can say whose an ended token was and why it ended.
    pub any_token_by_hash: HashMap<String, String>,
    /// Live tokens per grant and per agent, so a cascade touches only what it revokes.
    pub live_by_grant: BTreeMap<String, BTreeSet<String>>,
    pub live_by_agent: BTreeMap<String, BTreeSet<String>>,
    /// Live tokens by expiry, so the fold retires them as time passes.
    pub live_by_expiry: BTreeSet<(Timestamp, String)>,
    /// The token issued on each approval (the first, when an event from elsewhere issued more).
    pub token_by_approval: HashMap<String, String>,
    /// Grants per agent, so the vault finds an agent's grants without a scan.
    pub grants_by_agent: HashMap<String, BTreeSet<String>>,
    /// Agents by the Docket key id of their key (more than one is a shared key, refused).
    pub agents_by_key: HashMap<String, BTreeSet<String>>,
}

/// The Docket key id of an agent's base64 public key, when it decodes.
pub fn agent_key_id(public_key: &str) -> Option<String> {
    decode_public_key(public_key).ok().map(|pk| key_id(&pk))
}

impl VaultState {
    /// Rebuilds indexes after loading objects from storage.
    pub fn reindex(&mut self) {
        let mut ix = Indexes::default();
        for g in self.grants.values() {
            ix.grants_by_agent
                .entry(g.agent.clone())
                .or_default()
                .insert(g.grant_id.clone());
        }
        for a in self.agents.values() {
            if let Some(k) = agent_key_id(&a.public_key) {
                ix.agents_by_key
                    .entry(k)
                    .or_default()
                    .insert(a.agent.clone());
            }
        }
        let mut by_approval: Vec<(&String, u64, &String)> = Vec::new();
        for t in self.tokens.values() {
            if let Some(a) = &t.approval_id {
                by_approval.push((a, t.issued_seq, &t.token_id));
            }
        }
        // The first token on an approval is the one the index keeps, as the fold does.
        by_approval.sort();
        for (a, _, t) in by_approval {
            ix.token_by_approval
                .entry(a.clone())
                .or_insert_with(|| t.clone());
        }
        let mut by_issue: Vec<&TokenState> = self.tokens.values().collect();
        by_issue.sort_by_key(|t| (t.issued_seq, &t.token_id));
        for t in by_issue {
            ix.add_issued(t);
        }
        self.ix = ix;
        let at = self.ts;
        for t in self.tokens.values() {
            if t.revoked_seq.is_none() && at.is_none_or(|at| t.expires_at > at) {
                self.ix.add_live(t);
            }
        }
    }

    /// The grants given to `agent`.
    pub fn grants_of<'a>(&'a self, agent: &str) -> impl Iterator<Item = &'a GrantState> + 'a {
        self.ix
            .grants_by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.grants.get(id))
    }

    /// A live token by its keyed hash.
    pub fn token_by_hash(&self, hash: &str) -> Option<&TokenState> {
        self.ix
            .token_by_hash
            .get(hash)
            .and_then(|id| self.tokens.get(id))
    }

    /// A token by its keyed hash, live or ended (the live one first).
    pub fn any_token_by_hash(&self, hash: &str) -> Option<&TokenState> {
        self.token_by_hash(hash).or_else(|| {
            self.ix
                .any_token_by_hash
                .get(hash)
                .and_then(|id| self.tokens.get(id))
        })
    }

    /// The token issued on an approval, if any.
    pub fn token_on_approval(&self, approval_id: &str) -> Option<&TokenState> {
        self.ix
            .token_by_approval
            .get(approval_id)
            .and_then(|id| self.tokens.get(id))
    }

    /// The agents registered with the key whose Docket key id is `key_id`, sorted.
    pub fn agents_with_key(&self, key_id: &str) -> Vec<&AgentState> {
        self.ix
            .agents_by_key
            .get(key_id)
            .into_iter()
            .flatten()
            .filter_map(|a| self.agents.get(a))
            .collect()
    }

    /// Live tokens, for tests that check the indexes shrink.
    pub fn live_tokens(&self) -> usize {
        self.ix.live_by_expiry.len()
    }

    /// A digest of the whole state: blake3 over its canonical JSON (every map sorted by key).
    pub fn digest(&self) -> Result<[u8; 32], serde_json::Error> {
        #[derive(Serialize)]
        struct Sorted<'a> {
            agents: BTreeMap<&'a String, &'a AgentState>,
            grants: BTreeMap<&'a String, &'a GrantState>,
            approvals: BTreeMap<&'a String, &'a ApprovalState>,
            tokens: BTreeMap<&'a String, &'a TokenState>,
            step_up_keys: BTreeMap<&'a String, &'a StepUpKeyState>,
            // Absent while empty, so a ledger without connections keeps its digest.
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            connections: BTreeMap<&'a String, &'a ConnectionState>,
            policy: &'a PolicyInForce,
            seq: u64,
            ts: Option<Timestamp>,
        }
        let sorted = Sorted {
            agents: self.agents.iter().collect(),
            grants: self.grants.iter().collect(),
            approvals: self.approvals.iter().collect(),
            tokens: self.tokens.iter().collect(),
            step_up_keys: self.step_up_keys.iter().collect(),
            connections: self.connections.iter().collect(),
            policy: &self.policy,
            seq: self.seq,
            ts: self.ts,
        };
        let mut h = blake3::Hasher::new();
        h.update(b"docket/state/v2\n");
        serde_json::to_writer(&mut h, &sorted)?;
        Ok(*h.finalize().as_bytes())
    }

    /// The object stored under `key`, as JSON; `None` when absent. A value that does not
    /// serialise is an error, never empty bytes: the caller is writing it durably.
    pub fn object_json(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, serde_json::Error> {
        let v = match key {
            ObjectKey::Agent(id) => self.agents.get(id).map(serde_json::to_vec),
            ObjectKey::Grant(id) => self.grants.get(id).map(serde_json::to_vec),
            ObjectKey::Approval(id) => self.approvals.get(id).map(serde_json::to_vec),
            ObjectKey::Token(id) => self.tokens.get(id).map(serde_json::to_vec),
            ObjectKey::StepUpKey(id) => self.step_up_keys.get(id).map(serde_json::to_vec),
            ObjectKey::Connection(id) => self.connections.get(id).map(serde_json::to_vec),
            ObjectKey::Policy => Some(serde_json::to_vec(&self.policy)),
        };
        v.transpose()
    }
}

impl Indexes {
    /// Notes a token as issued (in issue order): the first token with a hash keeps it.
    pub fn add_issued(&mut self, t: &TokenState) {
        self.any_token_by_hash
            .entry(t.token_hash.clone())
            .or_insert_with(|| t.token_id.clone());
    }

    pub fn add_live(&mut self, t: &TokenState) {
        self.token_by_hash
            .insert(t.token_hash.clone(), t.token_id.clone());
        self.live_by_grant
            .entry(t.grant_id.clone())
            .or_default()
            .insert(t.token_id.clone());
        self.live_by_agent
            .entry(t.agent.clone())
            .or_default()
            .insert(t.token_id.clone());
        self.live_by_expiry
            .insert((t.expires_at, t.token_id.clone()));
    }

    /// Drops a token from every live index (revoked or expired).
    pub fn remove_live(&mut self, t: &TokenState) {
        self.live_by_expiry
            .remove(&(t.expires_at, t.token_id.clone()));
        self.drop_lookups(t);
    }

    /// Drops a token from the live lookups, not from the expiry index (the fold pops it from
    /// there itself when it expires).
    pub fn drop_lookups(&mut self, t: &TokenState) {
        if self.token_by_hash.get(&t.token_hash) == Some(&t.token_id) {
            self.token_by_hash.remove(&t.token_hash);
        }
        for (map, key) in [
            (&mut self.live_by_grant, &t.grant_id),
            (&mut self.live_by_agent, &t.agent),
        ] {
            if let Some(set) = map.get_mut(key) {
                set.remove(&t.token_id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
    }
}
