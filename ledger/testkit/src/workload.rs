//! A deterministic synthetic workload: users, agents, grants, approvals, tokens, API calls, revocations, and a few forgeries.
//!
//! Used by `docket demo`, the benchmarks and the tests. Same seed, same bytes:
//! time advances from a given start and ids come from a seeded generator.

use docket_schemas::*;
use ed25519_dalek::SigningKey;

/// The producers of a deployment and their keys, derived from a seed.
#[derive(Clone)]
pub struct Roles {
    pub admin: SigningKey,
    pub vault: SigningKey,
    pub gateway: SigningKey,
    pub approvals: SigningKey,
    /// A key nobody registered.
    pub rogue: SigningKey,
}

impl Roles {
    pub fn from_seed(seed: u64) -> Roles {
        let key = |n: u8| {
            let mut b = *blake3::hash(&[&seed.to_be_bytes()[..], &[n]].concat()).as_bytes();
            b[0] ^= n;
            SigningKey::from_bytes(&b)
        };
        Roles {
            admin: key(1),
            vault: key(2),
            gateway: key(3),
            approvals: key(4),
            rogue: key(5),
        }
    }
}

/// What the ledger should do with a published envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Append,
    /// Quarantined with this reason code.
    Quarantine(&'static str),
}

/// One envelope ready to publish.
#[derive(Clone, Debug)]
pub struct Published {
    pub subject: String,
    pub envelope: Vec<u8>,
    /// The event id, when the envelope carries a decodable event.
    pub id: Option<EventId>,
    pub expect: Expect,
}

/// Small, fast, seedable generator (SplitMix64); no cryptographic use.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const AUDIENCES: &[(&str, &[&str])] = &[
    (
        "https://api.github.com",
        &[
            "repo:read",
            "repo:write",
            "issues:read",
            "issues:write",
            "admin:org",
        ],
    ),
    (
        "https://slack.com/api",
        &["channels:read", "chat:write", "users:read"],
    ),
    (
        "https://crm.example.com/api",
        &[
            "contacts:read",
            "contacts:write",
            "deals:read",
            "deals:delete",
        ],
    ),
];
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/repos/acme/web/issues"),
    ("POST", "/repos/acme/web/issues"),
    ("GET", "/repos/acme/web/pulls"),
    ("POST", "/chat.postMessage"),
    ("GET", "/conversations.list"),
    ("GET", "/contacts"),
    ("PATCH", "/deals/42"),
    ("DELETE", "/deals/17"),
];

#[derive(Clone)]
struct Grant {
    id: String,
    user: usize,
    agent: usize,
    audience: usize,
    scopes: Vec<String>,
    /// Scopes that need approval, with their risk.
    needs: Vec<(String, Risk)>,
    live: bool,
}

struct Token {
    id: String,
    hash: String,
    grant_id: String,
    agent: usize,
    audience: usize,
    scopes: Vec<String>,
    expires_us: i64,
    live: bool,
}

struct Approval {
    id: String,
    grant: Grant,
    scopes: Vec<String>,
    risk: Risk,
}

/// The generator's state.
pub struct Workload {
    pub roles: Roles,
    rng: SplitMix64,
    now_us: i64,
    users: usize,
    agents: usize,
    grants: Vec<Grant>,
    tokens: Vec<Token>,
    pending: std::collections::VecDeque<Approval>,
    approved: std::collections::VecDeque<Approval>,
    suspended: std::collections::BTreeSet<usize>,
    revoked_token: Option<(String, usize)>,
    serial: u64,
    /// Forged or malformed envelopes per thousand (quarantined by the ledger).
    pub forged_per_mille: u64,
    /// Well-signed events of misbehaving agents and services per thousand (policy findings).
    pub misbehaving_per_mille: u64,
    /// How many misbehaving events were generated.
    pub misbehaved: u64,
    /// Workload time between two events is uniform in `1..=step_us_max` microseconds.
    pub step_us_max: u64,
    /// Source addresses each agent calls from (uniformly); 1 is an agent on one host.
    pub sources_per_agent: u64,
    /// An agent the workload never suspends when it has others: the demo's own agent, which a
    /// person is asked to approve a request for while the workload runs.
    pub spared_agent: Option<usize>,
}

/// Live grants and tokens kept at most, so memory stays flat on long runs.
const LIVE_GRANTS_MAX: usize = 4096;
const LIVE_TOKENS_MAX: usize = 16_384;
/// Default for [`Workload::step_us_max`]: about a thousand events per second of workload time.
pub const STEP_US_MAX_DEFAULT: u64 = 2_000;

/// What the workload registers the vault's key for: everything it decides.
pub const VAULT_KINDS: &[Kind] = &[
    Kind::AgentRegistered,
    Kind::GrantCreated,
    Kind::GrantRevoked,
    Kind::ApprovalRequested,
    Kind::TokenIssued,
    Kind::TokenRevoked,
    Kind::AgentSuspended,
    Kind::RequestRefused,
    Kind::ApprovalDecided,
];
/// Lifetime of the tokens the workload issues, in seconds of workload time.
const TOKEN_TTL_S: i64 = 300;

/// The key of the workload's agent number `a` (derived from its name, so anyone can sign as it in demos).
pub fn agent_key(a: usize) -> SigningKey {
    SigningKey::from_bytes(blake3::hash(agent_name(a).as_bytes()).as_bytes())
}

/// The step-up key of the workload's user number `u` (derived from its name, like agents' keys).
pub fn step_up_key(u: usize) -> SigningKey {
    SigningKey::from_bytes(blake3::hash(format!("stepup:{}", user_name(u)).as_bytes()).as_bytes())
}

fn agent_name(a: usize) -> String {
    format!("agent-{a}")
}

fn user_name(u: usize) -> String {
    format!("user-{u}")
}

impl Workload {
    pub fn new(seed: u64, start: Timestamp, users: usize, agents: usize) -> Workload {
        Workload {
            roles: Roles::from_seed(seed),
            rng: SplitMix64::new(seed ^ 0xd0c6e7),
            now_us: start.as_micros(),
            users: users.max(1),
            agents: agents.max(1),
            grants: Vec::new(),
            tokens: Vec::new(),
            pending: Default::default(),
            approved: Default::default(),
            suspended: Default::default(),
            revoked_token: None,
            serial: 0,
            forged_per_mille: 0,
            misbehaving_per_mille: 0,
            misbehaved: 0,
            step_us_max: STEP_US_MAX_DEFAULT,
            sources_per_agent: 250,
            spared_agent: None,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.now_us).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn ts(&mut self) -> Timestamp {
        self.now_us += 1 + self.rng.below(self.step_us_max.max(1)) as i64;
        self.now()
    }

    fn id(&mut self) -> EventId {
        self.serial += 1;
        let ms = (self.now_us / 1000) as u64;
        let r = self.rng.next_u64();
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6] = 0x70 | ((self.serial >> 8) & 0x0f) as u8;
        b[7] = self.serial as u8;
        b[8..].copy_from_slice(&r.to_be_bytes());
        b[8] = 0x80 | (b[8] & 0x3f);
        EventId(b)
    }

    fn event(&mut self, body: EventBody) -> Event {
        let ts = self.ts();
        Event {
            v: SCHEMA_VERSION,
            id: self.id(),
            ts,
            body,
        }
    }

    fn sealed(&self, event: &Event, key: &SigningKey, expect: Expect) -> Published {
        Published {
            subject: format!("docket.events.{}", event.kind()),
            envelope: seal_event(event, key),
            id: Some(event.id),
            expect,
        }
    }

    fn by_vault(&mut self, body: EventBody) -> Published {
        let e = self.event(body);
        self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
    }

    /// The admin's key registrations and every agent: publish these first.
    pub fn setup(&mut self) -> Vec<Published> {
        let mut out = Vec::new();
        let regs = [
            ("vault", self.roles.vault.clone(), VAULT_KINDS.to_vec()),
            ("gateway", self.roles.gateway.clone(), vec![Kind::ApiCalled]),
            (
                "approvals",
                self.roles.approvals.clone(),
                vec![Kind::ApprovalDecided],
            ),
        ];
        for (name, key, kinds) in regs {
            let pk = key.verifying_key();
            let e = self.event(EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: name.into(),
                kinds,
            }));
            out.push(self.sealed(&e, &self.roles.admin, Expect::Append));
        }
        for user in 0..self.users {
            out.push(self.step_up_registration(user));
        }
        for a in 0..self.agents {
            let agent_key = agent_key(a);
            out.push(self.by_vault(EventBody::AgentRegistered(AgentRegistered {
                agent: agent_name(a),
                user: user_name(a % self.users),
                name: format!("assistant {a}"),
                public_key: encode_base64(agent_key.verifying_key().as_bytes()),
            })));
        }
        out
    }

    /// The admin registers a user's step-up key (which may emit nothing). Built without the
    /// story's generator or serial, so the story (which documented examples are checked
    /// against) is the same as before step-up keys existed.
    fn step_up_registration(&mut self, user: usize) -> Published {
        let pk = step_up_key(user).verifying_key();
        self.now_us += 1;
        let mut b = [0u8; 16];
        // A peek at the generator (a copy advances, not it) tells workloads of other seeds apart.
        let salt = self.rng.clone().next_u64();
        b.copy_from_slice(
            &blake3::hash(format!("stepup:{user}:{salt}").as_bytes()).as_bytes()[..16],
        );
        b[..6].copy_from_slice(&((self.now_us / 1000) as u64).to_be_bytes()[2..]);
        b[6] = 0x70 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        let e = Event {
            v: SCHEMA_VERSION,
            id: EventId(b),
            ts: self.now(),
            body: EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: format!("stepup:{}", user_name(user)),
                kinds: vec![],
            }),
        };
        self.sealed(&e, &self.roles.admin, Expect::Append)
    }

    /// The next envelope of the story.
    pub fn next_envelope(&mut self) -> Published {
        if self.forged_per_mille > 0 && self.rng.chance(self.forged_per_mille) {
            return self.forgery();
        }
        if self.misbehaving_per_mille > 0 && self.rng.chance(self.misbehaving_per_mille) {
            self.misbehaved += 1;
            return self.misbehave();
        }
        let now = self.now_us;
        self.tokens.retain(|t| t.expires_us > now);
        let roll = self.rng.below(1000);
        if self.live_grant().is_none() || roll < 25 {
            self.grant()
        } else if roll < 80 {
            self.token()
        } else if roll < 95 {
            self.request_approval()
        } else if roll < 110 && !self.pending.is_empty() {
            self.decide()
        } else if roll < 125 && !self.approved.is_empty() {
            self.approved_token()
        } else if roll < 140 {
            self.revoke_token()
        } else if roll < 143 {
            self.revoke_grant()
        } else if roll < 144 && self.suspended.len() < self.agents / 4 {
            self.suspend()
        } else {
            self.api_call()
        }
    }

    fn live_grant(&mut self) -> Option<usize> {
        if self.grants.is_empty() {
            return None;
        }
        let start = self.rng.below(self.grants.len() as u64) as usize;
        (0..self.grants.len())
            .map(|i| (start + i) % self.grants.len())
            .find(|&i| self.grants[i].live && !self.suspended.contains(&self.grants[i].agent))
    }

    fn grant(&mut self) -> Published {
        let user = self.rng.below(self.users as u64) as usize;
        let mut agent = self.rng.below(self.agents as u64) as usize;
        while self.suspended.contains(&agent) {
            agent = (agent + 1) % self.agents;
        }
        let audience = self.rng.below(AUDIENCES.len() as u64) as usize;
        let all = AUDIENCES[audience].1;
        let n = 1 + self.rng.below(all.len() as u64) as usize;
        let scopes: Vec<String> = all[..n].iter().map(|s| s.to_string()).collect();
        let needs: Vec<(String, Risk)> = scopes
            .iter()
            .filter(|s| !s.ends_with(":read"))
            .map(|s| {
                (
                    s.clone(),
                    if s.contains("delete") || s.contains("admin") {
                        Risk::Critical
                    } else {
                        Risk::High
                    },
                )
            })
            .collect();
        let id = format!("grant-{}", self.serial + 1);
        let body = EventBody::GrantCreated(GrantCreated {
            grant_id: id.clone(),
            user: user_name(user),
            agent: agent_name(agent),
            audience: AUDIENCES[audience].0.into(),
            scopes: scopes.clone(),
            expires_at: self.now().plus_seconds(30 * 86_400),
            max_calls: Some(10_000_000),
            max_token_ttl_s: Some(900),
            approval: needs
                .iter()
                .map(|(s, r)| ApprovalRule {
                    scope: s.clone(),
                    risk: *r,
                })
                .collect(),
        });
        if self.grants.len() >= LIVE_GRANTS_MAX {
            self.grants.remove(0);
        }
        self.grants.push(Grant {
            id,
            user,
            agent,
            audience,
            scopes,
            needs,
            live: true,
        });
        self.by_vault(body)
    }

    fn issue(
        &mut self,
        grant: &Grant,
        scopes: Vec<String>,
        approval_id: Option<String>,
    ) -> Published {
        let secret = self.rng.next_u64().to_be_bytes();
        let hash = blake3::keyed_hash(&[7; 32], &secret).to_hex().to_string();
        let id = format!("tok-{}", self.serial + 1);
        let expires_us = self.now_us + TOKEN_TTL_S * 1_000_000;
        let body = EventBody::TokenIssued(TokenIssued {
            token_id: id.clone(),
            token_hash: hash.clone(),
            grant_id: grant.id.clone(),
            user: user_name(grant.user),
            agent: agent_name(grant.agent),
            audience: AUDIENCES[grant.audience].0.into(),
            scopes: scopes.clone(),
            expires_at: self.now().plus_seconds(TOKEN_TTL_S),
            approval_id,
            authorization_details: vec![],
        });
        if self.tokens.len() >= LIVE_TOKENS_MAX {
            self.tokens.remove(0);
        }
        self.tokens.push(Token {
            id,
            hash,
            grant_id: grant.id.clone(),
            agent: grant.agent,
            audience: grant.audience,
            scopes,
            expires_us,
            live: true,
        });
        self.by_vault(body)
    }

    /// A token for the grant's scopes that need no approval; an approval request when all do.
    fn token(&mut self) -> Published {
        let Some(g) = self.live_grant() else {
            return self.grant();
        };
        let grant = self.grants[g].clone();
        let free: Vec<String> = grant
            .scopes
            .iter()
            .filter(|s| !grant.needs.iter().any(|(n, _)| n == *s))
            .cloned()
            .collect();
        if free.is_empty() {
            return self.request_approval();
        }
        self.issue(&grant, free, None)
    }

    fn request_approval(&mut self) -> Published {
        let Some(g) = self.live_grant() else {
            return self.grant();
        };
        let grant = self.grants[g].clone();
        if grant.needs.is_empty() {
            return self.token();
        }
        let (scope, risk) = grant.needs[self.rng.below(grant.needs.len() as u64) as usize].clone();
        let id = format!("appr-{}", self.serial + 1);
        let body = EventBody::ApprovalRequested(ApprovalRequested {
            approval_id: id.clone(),
            grant_id: grant.id.clone(),
            user: user_name(grant.user),
            agent: agent_name(grant.agent),
            audience: AUDIENCES[grant.audience].0.into(),
            scopes: vec![scope.clone()],
            risk,
            binding_message: format!(
                "{} wants {scope} on {}",
                agent_name(grant.agent),
                AUDIENCES[grant.audience].0
            ),
            expires_at: self.now().plus_seconds(300),
            authorization_details: vec![],
        });
        self.pending.push_back(Approval {
            id,
            grant,
            scopes: vec![scope],
            risk,
        });
        self.by_vault(body)
    }

    fn decide(&mut self) -> Published {
        let Some(a) = self.pending.pop_front() else {
            return self.api_call();
        };
        let user = a.grant.user;
        let approve = self.rng.chance(850);
        let step_up = a.risk == Risk::Critical || self.rng.chance(200);
        let auth_time = step_up.then(|| {
            Timestamp::from_micros(self.now_us - 30_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
        });
        let body = EventBody::ApprovalDecided(ApprovalDecided {
            approval_id: a.id.clone(),
            user: user_name(a.grant.user),
            decision: if approve {
                Decision::Approved
            } else {
                Decision::Denied
            },
            method: if step_up {
                ApprovalMethod::StepUp
            } else {
                ApprovalMethod::Push
            },
            auth_time,
            reason: None,
            step_up: auth_time.map(|auth_time| {
                StepUpAssertion::seal(
                    &StepUpClaim {
                        v: 1,
                        user: user_name(user),
                        approval_id: a.id.clone(),
                        auth_time,
                    },
                    &step_up_key(user),
                )
            }),
        });
        if approve {
            self.approved.push_back(a);
        }
        let e = self.event(body);
        self.sealed(&e, &self.roles.approvals.clone(), Expect::Append)
    }

    fn approved_token(&mut self) -> Published {
        let Some(a) = self.approved.pop_front() else {
            return self.api_call();
        };
        let live = self.grants.iter().any(|g| g.id == a.grant.id && g.live)
            && !self.suspended.contains(&a.grant.agent);
        if !live {
            return self.api_call();
        }
        self.issue(&a.grant.clone(), a.scopes.clone(), Some(a.id))
    }

    fn revoke_token(&mut self) -> Published {
        let Some(t) = self.tokens.iter().position(|t| t.live) else {
            return self.token();
        };
        self.tokens[t].live = false;
        self.revoked_token = Some((self.tokens[t].id.clone(), self.tokens[t].agent));
        self.by_vault(EventBody::TokenRevoked(TokenRevoked {
            token_id: self.tokens[t].id.clone(),
            by: "user-0".into(),
            reason: "task finished".into(),
        }))
    }

    fn revoke_grant(&mut self) -> Published {
        let Some(g) = self.live_grant() else {
            return self.grant();
        };
        self.grants[g].live = false;
        let id = self.grants[g].id.clone();
        self.tokens
            .iter_mut()
            .filter(|t| t.grant_id == id)
            .for_each(|t| t.live = false);
        self.pending.retain(|a| a.grant.id != id);
        self.approved.retain(|a| a.grant.id != id);
        self.by_vault(EventBody::GrantRevoked(GrantRevoked {
            grant_id: id,
            by: user_name(self.grants[g].user),
            reason: "no longer needed".into(),
        }))
    }

    fn suspend(&mut self) -> Published {
        let mut agent = self.rng.below(self.agents as u64) as usize;
        if self.spared_agent == Some(agent) {
            agent = (agent + 1) % self.agents;
        }
        self.suspended.insert(agent);
        self.tokens
            .iter_mut()
            .filter(|t| t.agent == agent)
            .for_each(|t| t.live = false);
        self.pending.retain(|a| a.grant.agent != agent);
        self.approved.retain(|a| a.grant.agent != agent);
        self.by_vault(EventBody::AgentSuspended(AgentSuspended {
            agent: agent_name(agent),
            by: "security".into(),
            reason: "unusual behaviour".into(),
        }))
    }

    fn call(
        &mut self,
        token: (String, String),
        agent: usize,
        audience: usize,
        scope: String,
    ) -> Published {
        let (method, op) = OPERATIONS[self.rng.below(OPERATIONS.len() as u64) as usize];
        let status = [200, 200, 200, 201, 204, 403, 404, 429, 500][self.rng.below(9) as usize];
        let body = EventBody::ApiCalled(ApiCalled {
            token_id: token.0,
            token_hash: Some(token.1),
            agent: agent_name(agent),
            audience: AUDIENCES[audience].0.into(),
            method: method.into(),
            operation: op.into(),
            scope: Some(scope),
            status,
            source: format!(
                "10.0.{}.{}",
                agent % 256,
                1 + self.rng.below(self.sources_per_agent.clamp(1, 250))
            ),
            ..Default::default()
        });
        let e = self.event(body);
        self.sealed(&e, &self.roles.gateway.clone(), Expect::Append)
    }

    fn live_token(&mut self) -> Option<usize> {
        let now = self.now_us;
        let live: Vec<usize> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.live && t.expires_us > now + 60_000_000)
            .map(|(i, _)| i)
            .collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len() as u64) as usize])
    }

    fn api_call(&mut self) -> Published {
        let Some(t) = self.live_token() else {
            return self.token();
        };
        let t = &self.tokens[t];
        let scope = t.scopes[self.rng.below(t.scopes.len() as u64) as usize].clone();
        let (token, agent, audience) = ((t.id.clone(), t.hash.clone()), t.agent, t.audience);
        self.call(token, agent, audience, scope)
    }

    /// Well-signed events that break a policy rule: what the findings are for.
    fn misbehave(&mut self) -> Published {
        let Some(t) = self.live_token() else {
            return self.token();
        };
        let (id, hash, agent, audience) = {
            let t = &self.tokens[t];
            (t.id.clone(), t.hash.clone(), t.agent, t.audience)
        };
        match self.rng.below(5) {
            0 => match self.revoked_token.clone() {
                Some((rid, ragent)) => self.call(
                    (rid, hash),
                    ragent,
                    audience,
                    AUDIENCES[audience].1[0].into(),
                ),
                None => self.call(
                    ("tok-unknown".into(), hash),
                    agent,
                    audience,
                    AUDIENCES[audience].1[0].into(),
                ),
            },
            1 => self.call(
                (id, hash),
                (agent + 1) % self.agents,
                audience,
                AUDIENCES[audience].1[0].into(),
            ),
            2 => self.call((id, hash), agent, audience, "admin:everything".into()),
            3 => self.call(
                ("tok-unknown".into(), hash),
                agent,
                audience,
                AUDIENCES[audience].1[0].into(),
            ),
            _ => {
                // A token for scopes that need approval, without one.
                let Some(g) = self.live_grant() else {
                    return self.grant();
                };
                let grant = self.grants[g].clone();
                match grant.needs.first() {
                    Some((scope, _)) => self.issue(&grant, vec![scope.clone()], None),
                    None => self.call(
                        ("tok-unknown".into(), hash),
                        agent,
                        audience,
                        AUDIENCES[audience].1[0].into(),
                    ),
                }
            }
        }
    }

    /// One of the ways a bad envelope arrives, with the reason code the ledger must give.
    pub fn forgery(&mut self) -> Published {
        let call = self.api_call();
        let Some(env) = Envelope::decode(&call.envelope).ok() else {
            return call;
        };
        match self.rng.below(6) {
            0 => {
                // A valid-looking signature over different bytes.
                let mut payload = env.payload.clone();
                if let Some(b) = payload.iter_mut().rev().find(|b| b.is_ascii_digit()) {
                    *b = if *b == b'9' { b'1' } else { *b + 1 };
                }
                let wire = EnvelopeWire {
                    payload: encode_base64(&payload).into(),
                    payload_type: PAYLOAD_TYPE.into(),
                    signatures: vec![envelope::EnvelopeSignature {
                        keyid: env.key_id.clone(),
                        sig: encode_base64(&env.signature.to_bytes()),
                    }],
                };
                let forged = serde_json::to_vec(&wire).unwrap_or_default();
                Published {
                    expect: Expect::Quarantine("bad_signature"),
                    envelope: forged,
                    ..call
                }
            }
            1 => Published {
                expect: Expect::Quarantine("unknown_key"),
                envelope: seal(&env.payload, &self.roles.rogue),
                ..call
            },
            2 => {
                let e = self.event(EventBody::TokenRevoked(TokenRevoked {
                    token_id: "tok-x".into(),
                    by: "gateway".into(),
                    reason: "overreach".into(),
                }));
                Published {
                    expect: Expect::Quarantine("unauthorized_kind"),
                    ..self.sealed(&e, &self.roles.gateway.clone(), Expect::Append)
                }
            }
            3 => Published {
                expect: Expect::Quarantine("malformed_envelope"),
                envelope: b"{\"payload\": not json".to_vec(),
                id: None,
                ..call
            },
            4 => {
                let text = String::from_utf8_lossy(&env.payload).replacen("\"v\":1", "\"v\":2", 1);
                Published {
                    expect: Expect::Quarantine("unsupported_version"),
                    envelope: seal(text.as_bytes(), &self.roles.gateway),
                    ..call
                }
            }
            _ => {
                // A field over its limit, in an envelope small enough for the stream to
                // carry (one over the envelope limit is refused by JetStream at publish).
                let long = format!(
                    "\"operation\":\"{}",
                    "x".repeat(limits::OPERATION_BYTES_MAX + 1)
                );
                let text =
                    String::from_utf8_lossy(&env.payload).replacen("\"operation\":\"", &long, 1);
                Published {
                    expect: Expect::Quarantine("oversize"),
                    envelope: seal(text.as_bytes(), &self.roles.gateway),
                    ..call
                }
            }
        }
    }
}
