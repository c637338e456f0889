//! A deterministic synthetic workload: users, agents, grants, approvals, tokens, API calls, revocations, and a few forgeries.
//!
//! Used by `docket demo`, the benchmarks and the tests. Same seed, same bytes:
//! time advances from a given start and ids come from a seeded generator.

use docket_schemas::*;
use ed25519_dalek::SigningKey;

/// The producers of a deployment and their keys, derived from a seed.
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

struct Grant {
    id: String,
    user: usize,
    agent: usize,
    audience: usize,
    scopes: Vec<String>,
    live: bool,
}

struct Token {
    id: String,
    hash: String,
    grant: usize,
    live: bool,
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
    serial: u64,
    /// Forgeries per thousand envelopes (0 for a clean workload).
    pub forged_per_mille: u64,
}

/// Live grants and tokens kept at most, so memory stays flat on long runs.
const LIVE_GRANTS_MAX: usize = 4096;
const LIVE_TOKENS_MAX: usize = 16_384;

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
            serial: 0,
            forged_per_mille: 0,
        }
    }

    fn ts(&mut self) -> Timestamp {
        self.now_us += 1 + self.rng.below(2_000) as i64;
        Timestamp::from_micros(self.now_us).unwrap_or(Timestamp::UNIX_EPOCH)
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

    /// The admin's key registrations and every agent: publish these first.
    pub fn setup(&mut self) -> Vec<Published> {
        let mut out = Vec::new();
        let regs = [
            (
                "vault",
                self.roles.vault.clone(),
                vec![
                    Kind::AgentRegistered,
                    Kind::GrantCreated,
                    Kind::GrantRevoked,
                    Kind::ApprovalRequested,
                    Kind::TokenIssued,
                    Kind::TokenRevoked,
                    Kind::AgentSuspended,
                ],
            ),
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
        for a in 0..self.agents {
            let agent_key =
                SigningKey::from_bytes(blake3::hash(format!("agent-{a}").as_bytes()).as_bytes());
            let e = self.event(EventBody::AgentRegistered(AgentRegistered {
                agent: format!("agent-{a}"),
                user: format!("user-{}", a % self.users),
                name: format!("assistant {a}"),
                public_key: encode_base64(agent_key.verifying_key().as_bytes()),
            }));
            out.push(self.sealed(&e, &self.roles.vault, Expect::Append));
        }
        out
    }

    /// The next envelope of the story.
    pub fn next_envelope(&mut self) -> Published {
        if self.forged_per_mille > 0 && self.rng.chance(self.forged_per_mille) {
            return self.forgery();
        }
        let roll = self.rng.below(1000);
        let live_tokens = self.tokens.iter().filter(|t| t.live).count();
        if self.grants.is_empty() || roll < 30 {
            self.grant()
        } else if live_tokens == 0 || roll < 110 {
            self.token()
        } else if roll < 130 {
            self.approval()
        } else if roll < 150 {
            self.revoke_token()
        } else if roll < 154 {
            self.revoke_grant()
        } else {
            self.api_call()
        }
    }

    fn grant(&mut self) -> Published {
        let (user, agent, audience) = (
            self.rng.below(self.users as u64) as usize,
            self.rng.below(self.agents as u64) as usize,
            self.rng.below(AUDIENCES.len() as u64) as usize,
        );
        let all = AUDIENCES[audience].1;
        let n = 1 + self.rng.below(all.len() as u64) as usize;
        let scopes: Vec<String> = all[..n].iter().map(|s| s.to_string()).collect();
        let id = format!("grant-{}", self.serial + 1);
        let approval = scopes
            .iter()
            .filter(|s| s.contains("write") || s.contains("delete") || s.contains("admin"))
            .map(|s| ApprovalRule {
                scope: s.clone(),
                risk: if s.contains("delete") || s.contains("admin") {
                    Risk::Critical
                } else {
                    Risk::High
                },
            })
            .collect();
        let expires_at = Timestamp::from_micros(self.now_us)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .plus_seconds(86_400);
        let e = self.event(EventBody::GrantCreated(GrantCreated {
            grant_id: id.clone(),
            user: format!("user-{user}"),
            agent: format!("agent-{agent}"),
            audience: AUDIENCES[audience].0.into(),
            scopes: scopes.clone(),
            expires_at,
            max_calls: Some(10_000),
            max_token_ttl_s: Some(900),
            approval,
        }));
        if self.grants.len() >= LIVE_GRANTS_MAX {
            self.grants.remove(0);
            self.tokens.retain(|t| t.grant > 0);
            self.tokens.iter_mut().for_each(|t| t.grant -= 1);
        }
        self.grants.push(Grant {
            id,
            user,
            agent,
            audience,
            scopes,
            live: true,
        });
        self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
    }

    fn pick_grant(&mut self) -> usize {
        let start = self.rng.below(self.grants.len() as u64) as usize;
        (0..self.grants.len())
            .map(|i| (start + i) % self.grants.len())
            .find(|&i| self.grants[i].live)
            .unwrap_or(start)
    }

    fn token(&mut self) -> Published {
        let g = self.pick_grant();
        let secret = self.rng.next_u64().to_be_bytes();
        let hash = blake3::keyed_hash(&[7; 32], &secret).to_hex().to_string();
        let id = format!("tok-{}", self.serial + 1);
        let grant = &self.grants[g];
        let body = EventBody::TokenIssued(TokenIssued {
            token_id: id.clone(),
            token_hash: hash.clone(),
            grant_id: grant.id.clone(),
            user: format!("user-{}", grant.user),
            agent: format!("agent-{}", grant.agent),
            audience: AUDIENCES[grant.audience].0.into(),
            scopes: grant
                .scopes
                .iter()
                .filter(|s| s.contains("read"))
                .cloned()
                .collect(),
            expires_at: Timestamp::from_micros(self.now_us)
                .unwrap_or(Timestamp::UNIX_EPOCH)
                .plus_seconds(300),
            approval_id: None,
        });
        let e = self.event(body);
        if self.tokens.len() >= LIVE_TOKENS_MAX {
            self.tokens.remove(0);
        }
        self.tokens.push(Token {
            id,
            hash,
            grant: g,
            live: true,
        });
        self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
    }

    fn approval(&mut self) -> Published {
        let g = self.pick_grant();
        let grant = &self.grants[g];
        let (user, agent, audience, scopes, gid) = (
            grant.user,
            grant.agent,
            grant.audience,
            grant.scopes.clone(),
            grant.id.clone(),
        );
        let approval_id = format!("appr-{}", self.serial + 1);
        // Requests and decisions come in pairs; the decision is the next envelope's story.
        if self.rng.chance(500) {
            let e = self.event(EventBody::ApprovalRequested(ApprovalRequested {
                approval_id,
                grant_id: gid,
                user: format!("user-{user}"),
                agent: format!("agent-{agent}"),
                audience: AUDIENCES[audience].0.into(),
                scopes,
                risk: Risk::High,
                binding_message: format!("agent-{agent} wants to act on {}", AUDIENCES[audience].0),
                expires_at: Timestamp::from_micros(self.now_us)
                    .unwrap_or(Timestamp::UNIX_EPOCH)
                    .plus_seconds(300),
            }));
            self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
        } else {
            let step_up = self.rng.chance(300);
            let auth_time = step_up.then(|| {
                Timestamp::from_micros(self.now_us - 30_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
            });
            let decision = if self.rng.chance(850) {
                Decision::Approved
            } else {
                Decision::Denied
            };
            let e = self.event(EventBody::ApprovalDecided(ApprovalDecided {
                approval_id,
                user: format!("user-{user}"),
                decision,
                method: if step_up {
                    ApprovalMethod::StepUp
                } else {
                    ApprovalMethod::Push
                },
                auth_time,
                reason: None,
            }));
            self.sealed(&e, &self.roles.approvals.clone(), Expect::Append)
        }
    }

    fn revoke_token(&mut self) -> Published {
        let Some(t) = self.tokens.iter().position(|t| t.live) else {
            return self.token();
        };
        self.tokens[t].live = false;
        let e = self.event(EventBody::TokenRevoked(TokenRevoked {
            token_id: self.tokens[t].id.clone(),
            by: "user-0".into(),
            reason: "task finished".into(),
        }));
        self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
    }

    fn revoke_grant(&mut self) -> Published {
        let g = self.pick_grant();
        self.grants[g].live = false;
        self.tokens
            .iter_mut()
            .filter(|t| t.grant == g)
            .for_each(|t| t.live = false);
        let e = self.event(EventBody::GrantRevoked(GrantRevoked {
            grant_id: self.grants[g].id.clone(),
            by: format!("user-{}", self.grants[g].user),
            reason: "no longer needed".into(),
        }));
        self.sealed(&e, &self.roles.vault.clone(), Expect::Append)
    }

    fn api_call(&mut self) -> Published {
        let live: Vec<usize> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.live)
            .map(|(i, _)| i)
            .collect();
        let t = live[self.rng.below(live.len() as u64) as usize];
        let grant = &self.grants[self.tokens[t].grant.min(self.grants.len() - 1)];
        let (method, op) = OPERATIONS[self.rng.below(OPERATIONS.len() as u64) as usize];
        let status = [200, 200, 200, 201, 204, 403, 404, 429, 500][self.rng.below(9) as usize];
        let body = EventBody::ApiCalled(ApiCalled {
            token_id: self.tokens[t].id.clone(),
            token_hash: Some(self.tokens[t].hash.clone()),
            agent: format!("agent-{}", grant.agent),
            audience: AUDIENCES[grant.audience].0.into(),
            method: method.into(),
            operation: op.into(),
            scope: grant.scopes.first().cloned(),
            status,
            source: format!("10.0.{}.{}", grant.agent % 256, 1 + self.rng.below(250)),
        });
        let e = self.event(body);
        self.sealed(&e, &self.roles.gateway.clone(), Expect::Append)
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
                let mut big = seal(&env.payload, &self.roles.gateway);
                big.extend(std::iter::repeat_n(b' ', limits::ENVELOPE_BYTES_MAX));
                Published {
                    expect: Expect::Quarantine("oversize"),
                    envelope: big,
                    ..call
                }
            }
        }
    }
}
