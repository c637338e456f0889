//! The vault and the fold agree, both ways: what the vault emits raises no finding, and what it refuses the fold flags when an event from elsewhere does it.
//!
//! Random request sequences go through the real desk (authentication, replay guard,
//! decisions, sealing) and the real admission into the fold, under a random policy
//! recorded on the chain. For every refused token or approval request that was signed
//! by the party it names, the event the vault declined to emit is forced into a copy
//! of the state, and the fold must find a broken rule in it.

use bytes::Bytes;
use docket_core::admission::{ChainTip, Incoming, admit};
use docket_core::desk::{Desk, Entropy};
use docket_core::registry::Registry;
use docket_core::state::{Status, VaultState};
use docket_schemas::vault::{Op, Outcome, REQUEST_VERSION, Reply, Request, seal_request};
use docket_schemas::*;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

const AUDIENCE: &str = "https://api.github.com";
const SCOPES: [&str; 3] = ["repo:read", "repo:write", "repo:delete"];
const USERS: [&str; 2] = ["alice", "bob"];
/// Agents and their owners.
const AGENTS: [(&str, usize); 3] = [("a1", 0), ("a2", 0), ("a3", 1)];

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// UUIDv7s from a counter, secrets from the same counter: deterministic, and unique.
struct Counter(u64);

impl Entropy for Counter {
    fn uuid_v7(&mut self) -> [u8; 16] {
        self.0 += 1;
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&self.0.to_be_bytes());
        b[0] = 1;
        b[6] = 0x70;
        b[8] = 0x80;
        b
    }

    fn secret(&mut self) -> [u8; 32] {
        self.0 += 1;
        *blake3::hash(&self.0.to_be_bytes()).as_bytes()
    }
}

struct Sim {
    tip: ChainTip,
    state: VaultState,
    desk: Desk,
    now: Timestamp,
    entropy: Counter,
    admin: SigningKey,
    ledger: SigningKey,
    vault: SigningKey,
    gateway: SigningKey,
    users: [SigningKey; 2],
    step_ups: [SigningKey; 2],
    agents: [SigningKey; 3],
    /// Events the vault emitted, and forced events the fold flagged, for the report.
    emitted: usize,
    forced: usize,
}

impl Sim {
    fn new(policy: PolicySet) -> Sim {
        let now = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
        let (admin, ledger, vault) = (key(1), key(2), key(3));
        let mut sim = Sim {
            tip: ChainTip {
                seq: 0,
                head: [0; 32],
                registry: Registry::new(&admin.verifying_key(), &ledger.verifying_key()),
                source_seq: 0,
            },
            state: VaultState::default(),
            desk: Desk::new(vault.clone(), now.plus_seconds(-1), vec![]),
            now,
            entropy: Counter(0),
            gateway: key(4),
            users: [key(5), key(6)],
            step_ups: [key(7), key(8)],
            agents: [key(9), key(10), key(11)],
            admin,
            ledger,
            vault,
            emitted: 0,
            forced: 0,
        };
        sim.publish(
            &sim.ledger.clone(),
            EventBody::PolicySet(PolicySet::DEFAULTS),
        );
        let admin = sim.admin.clone();
        let reg = |k: &SigningKey, name: &str, kinds: Vec<Kind>| {
            let pk = k.verifying_key();
            EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: name.into(),
                kinds,
            })
        };
        let vault_kinds = vec![
            Kind::AgentRegistered,
            Kind::GrantCreated,
            Kind::GrantRevoked,
            Kind::ApprovalRequested,
            Kind::ApprovalDecided,
            Kind::TokenIssued,
            Kind::TokenRevoked,
            Kind::AgentSuspended,
            Kind::RequestRefused,
        ];
        let mut setup = vec![
            reg(&sim.vault, "vault", vault_kinds),
            reg(&sim.gateway, "gateway", vec![Kind::ApiCalled]),
        ];
        for (i, u) in USERS.iter().enumerate() {
            setup.push(reg(
                &sim.users[i],
                &format!("user:{u}"),
                vec![Kind::ApprovalDecided],
            ));
            setup.push(reg(&sim.step_ups[i], &format!("stepup:{u}"), vec![]));
        }
        if policy != PolicySet::DEFAULTS {
            setup.push(EventBody::PolicySet(policy));
        }
        for body in setup {
            sim.publish(&admin, body);
        }
        let vault = sim.vault.clone();
        for (i, (agent, owner)) in AGENTS.iter().enumerate() {
            let pk = sim.agents[i].verifying_key();
            sim.publish(
                &vault,
                EventBody::AgentRegistered(AgentRegistered {
                    agent: (*agent).into(),
                    user: USERS[*owner].into(),
                    name: (*agent).into(),
                    public_key: encode_base64(pk.as_bytes()),
                }),
            );
        }
        sim
    }

    /// Admits sealed envelopes and folds what is appended; returns the findings.
    fn commit(&mut self, items: Vec<Incoming>) -> (docket_core::admission::Plan, Vec<String>) {
        let plan = admit(&mut self.tip, &items, self.now.as_micros(), |ids| {
            Ok::<_, ()>(vec![None; ids.len()])
        })
        .unwrap();
        assert!(
            plan.quarantined.is_empty(),
            "quarantined: {:?}",
            plan.quarantined
        );
        let mut found = Vec::new();
        for e in &plan.appends {
            let (f, _) = self.state.apply(e.seq, e.received_us, &e.event);
            found.extend(
                f.into_iter()
                    .map(|f| format!("{}: {}", f.rule.as_str(), f.message)),
            );
        }
        (plan, found)
    }

    /// Publishes an event from elsewhere (setup, gateway calls).
    fn publish(&mut self, k: &SigningKey, body: EventBody) -> Vec<String> {
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId(self.entropy.uuid_v7()),
            ts: self.now,
            body,
        };
        let item = Incoming {
            subject: format!("docket.events.{}", event.kind()),
            payload: seal_event(&event, k).into(),
            source_seq: self.tip.source_seq + 1,
        };
        self.commit(vec![item]).1
    }

    /// Sends a request through the desk; checks the vault's events raise no finding and,
    /// for a refusal, that the fold would flag the event it declined to emit.
    fn request(&mut self, k: &SigningKey, op: Op) -> Reply {
        let request = Request {
            v: REQUEST_VERSION,
            id: EventId(self.entropy.uuid_v7()),
            ts: self.now,
            op: op.clone(),
        };
        let sealed = Bytes::from(seal_request(&request, k));
        let before = self.state.clone();
        let mut handled = self.desk.handle(
            &[sealed],
            &self.state,
            &self.tip.registry,
            self.now,
            &mut self.entropy,
        );
        let h = handled.remove(0);
        let items = h.items.clone();
        let (plan, found) = self.commit(items);
        self.emitted += plan.appends.len();
        assert!(
            found.is_empty(),
            "the vault emitted an event the fold flags, for {op:?}: {found:?}"
        );
        let reply = self.desk.settle(h, &plan);
        if let Reply::Outcome(o) = &reply
            && !o.ok
            && let Some(forced) = self.declined(&before, k, &op)
        {
            let mut copy = before.clone();
            let at = Event {
                v: SCHEMA_VERSION,
                id: EventId(self.entropy.uuid_v7()),
                ts: self.now,
                body: forced.clone(),
            };
            let (flagged, _) = copy.apply(before.seq + 1, at.ts.as_micros(), &at);
            assert!(
                !flagged.is_empty(),
                "the vault refused ({:?}) but the fold flags nothing in {forced:?}",
                o.error
            );
            self.forced += 1;
        }
        reply
    }

    /// The event a refused request, signed by the party it names, would have appended;
    /// `None` when the refusal is about who asked rather than what.
    fn declined(&mut self, state: &VaultState, k: &SigningKey, op: &Op) -> Option<EventBody> {
        match op {
            Op::Token {
                agent,
                audience,
                scopes,
                approval_id,
                ttl_s,
                ..
            } => {
                let i = AGENTS.iter().position(|(a, _)| a == agent)?;
                if self.agents[i] != *k {
                    return None;
                }
                let wanted: Vec<&String> = scopes.iter().collect();
                let mut grants: Vec<_> = state.grants_of(agent).collect();
                grants.sort_by_key(|g| g.created_seq);
                let covering = grants.iter().find(|g| {
                    g.audience == *audience && wanted.iter().all(|s| g.scopes.contains(*s))
                });
                let grant = covering.or(grants.first());
                let policy = &state.policy.policy;
                Some(EventBody::TokenIssued(TokenIssued {
                    token_id: format!("tok-forced-{}", self.entropy.0),
                    token_hash: "cd".repeat(32),
                    grant_id: grant.map_or("grant-none".into(), |g| g.grant_id.clone()),
                    user: grant.map_or(USERS[AGENTS[i].1].into(), |g| g.user.clone()),
                    agent: agent.clone(),
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                    expires_at: match grant {
                        Some(g) => {
                            docket_core::policy::token_expires_at(policy, g, self.now, *ttl_s)
                        }
                        None => self.now.plus_seconds(1),
                    },
                    approval_id: approval_id.clone(),
                    authorization_details: vec![],
                }))
            }
            Op::Approve {
                approval_id,
                decision,
                method,
                auth_time,
                reason,
                step_up,
            } => {
                let u = self.users.iter().position(|u| u == k)?;
                Some(EventBody::ApprovalDecided(ApprovalDecided {
                    approval_id: approval_id.clone(),
                    user: USERS[u].into(),
                    decision: *decision,
                    method: *method,
                    auth_time: auth_time.or_else(|| {
                        step_up
                            .as_ref()
                            .and_then(|s| s.decode().ok())
                            .map(|d| d.claim.auth_time)
                    }),
                    reason: reason.clone(),
                    step_up: step_up.clone(),
                }))
            }
            _ => None,
        }
    }

    fn approvals(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state.approvals.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// One step of a random session.
#[derive(Clone, Debug)]
struct Step {
    what: u8,
    who: u8,
    pick: u8,
    scope: u8,
    flag: u8,
    advance_s: u16,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..6,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0u16..200,
    )
        .prop_map(|(what, who, pick, scope, flag, advance_s)| Step {
            what,
            who,
            pick,
            scope,
            flag,
            advance_s,
        })
}

fn policy() -> impl Strategy<Value = PolicySet> {
    (1u32..600, 1u32..400, 30u32..900).prop_map(|(step_up, approval, ttl)| PolicySet {
        revision: 2,
        step_up_max_age_s: step_up,
        approval_ttl_s: approval,
        token_ttl_max_s: ttl,
        ..PolicySet::DEFAULTS
    })
}

fn play(sim: &mut Sim, s: &Step) {
    sim.now = sim.now.plus_seconds(i64::from(s.advance_s));
    let scope = SCOPES[s.scope as usize % 3].to_string();
    match s.what {
        0 => {
            let (agent, owner) = AGENTS[s.pick as usize % 3];
            let u = if s.flag.is_multiple_of(5) {
                1 - owner
            } else {
                owner
            };
            let scopes = SCOPES[..1 + s.scope as usize % 3]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let k = sim.users[u].clone();
            sim.request(
                &k,
                Op::Grant {
                    user: USERS[u].into(),
                    agent: agent.into(),
                    audience: AUDIENCE.into(),
                    scopes,
                    expires_at: sim.now.plus_seconds(60 + i64::from(s.who) * 4),
                    max_calls: (s.flag.is_multiple_of(3)).then_some(u64::from(s.flag % 4)),
                    max_token_ttl_s: (s.flag.is_multiple_of(2)).then_some(u32::from(s.who) * 3),
                    approval: vec![
                        ApprovalRule {
                            scope: "repo:write".into(),
                            risk: Risk::High,
                        },
                        ApprovalRule {
                            scope: "repo:delete".into(),
                            risk: Risk::Critical,
                        },
                    ],
                },
            );
        }
        1 | 2 => {
            let (agent, _) = AGENTS[s.pick as usize % 3];
            let signer = if s.flag.is_multiple_of(7) {
                s.who as usize % 3
            } else {
                s.pick as usize % 3
            };
            let approvals = sim.approvals();
            let approval_id = (s.what == 2 && !approvals.is_empty())
                .then(|| approvals[s.who as usize % approvals.len()].clone());
            let k = sim.agents[signer].clone();
            sim.request(
                &k,
                Op::Token {
                    agent: agent.into(),
                    audience: AUDIENCE.into(),
                    scopes: vec![scope],
                    action: "test".into(),
                    approval_id,
                    ttl_s: (s.flag.is_multiple_of(2)).then_some(u32::from(s.advance_s) * 5),
                    reply_key: Some(reply_key().public()),
                    authorization_details: vec![],
                },
            );
        }
        3 => {
            let approvals = sim.approvals();
            let id = if approvals.is_empty() || s.flag.is_multiple_of(11) {
                "appr-unknown".to_string()
            } else {
                approvals[s.pick as usize % approvals.len()].clone()
            };
            let u = s.who as usize % 2;
            let decision = if s.flag.is_multiple_of(4) {
                Decision::Denied
            } else {
                Decision::Approved
            };
            let (method, step_up) = match s.flag % 3 {
                0 => (ApprovalMethod::Push, None),
                n => {
                    // A step-up by the user's step-up key or (n == 2, sometimes) their own key.
                    let signer = if n == 2 && s.scope.is_multiple_of(2) {
                        &sim.users[u]
                    } else {
                        &sim.step_ups[u]
                    };
                    let claim = StepUpClaim {
                        v: 1,
                        user: USERS[u].into(),
                        approval_id: id.clone(),
                        auth_time: sim.now.plus_seconds(-i64::from(s.scope) * 3),
                    };
                    (
                        ApprovalMethod::StepUp,
                        Some(StepUpAssertion::seal(&claim, signer)),
                    )
                }
            };
            let k = sim.users[u].clone();
            sim.request(
                &k,
                Op::Approve {
                    approval_id: id,
                    decision,
                    method,
                    auth_time: None,
                    reason: None,
                    step_up,
                },
            );
        }
        4 => {
            // A gateway call with a live token, as the agent it was issued to: wears budgets.
            let mut live: Vec<_> = sim
                .state
                .tokens
                .values()
                .filter(|t| t.status(sim.now) == Status::Active)
                .map(|t| (t.token_id.clone(), t.agent.clone()))
                .collect();
            live.sort();
            if let Some((token_id, agent)) = live.get(s.pick as usize % live.len().max(1)).cloned()
            {
                let gateway = sim.gateway.clone();
                sim.publish(
                    &gateway,
                    EventBody::ApiCalled(ApiCalled {
                        token_id,
                        token_hash: None,
                        agent,
                        audience: AUDIENCE.into(),
                        method: "GET".into(),
                        operation: "/".into(),
                        scope: None,
                        status: 200,
                        source: "test".into(),
                        ..Default::default()
                    }),
                );
            }
        }
        _ => {
            let u = s.who as usize % 2;
            let (token_id, grant_id, agent) = match s.flag % 3 {
                0 => {
                    let mut ids: Vec<_> = sim.state.tokens.keys().cloned().collect();
                    ids.sort();
                    (
                        ids.get(s.pick as usize % ids.len().max(1)).cloned(),
                        None,
                        None,
                    )
                }
                1 => {
                    let mut ids: Vec<_> = sim.state.grants.keys().cloned().collect();
                    ids.sort();
                    (
                        None,
                        ids.get(s.pick as usize % ids.len().max(1)).cloned(),
                        None,
                    )
                }
                // Suspensions are rare: they end most of a session.
                _ if s.pick.is_multiple_of(8) => {
                    (None, None, Some(AGENTS[s.pick as usize % 3].0.to_string()))
                }
                _ => return,
            };
            if token_id.is_none() && grant_id.is_none() && agent.is_none() {
                return;
            }
            let k = sim.users[u].clone();
            sim.request(
                &k,
                Op::Revoke {
                    token_id,
                    grant_id,
                    agent,
                    reason: "test".into(),
                },
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_vault_and_the_fold_agree_both_ways(policy in policy(), steps in proptest::collection::vec(step(), 1..80)) {
        let mut sim = Sim::new(policy);
        for s in &steps {
            play(&mut sim, s);
        }
    }
}

/// The property above is only as good as its reach: over a fixed set of seeds, the
/// sessions must both issue tokens and force refused events into the fold.
#[test]
fn random_sessions_reach_issuance_and_refusals() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let (mut emitted, mut forced, mut tokens) = (0, 0, 0);
    for _ in 0..24 {
        let policy = policy().new_tree(&mut runner).unwrap().current();
        let steps = proptest::collection::vec(step(), 60..80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut sim = Sim::new(policy);
        for s in &steps {
            play(&mut sim, s);
        }
        emitted += sim.emitted;
        forced += sim.forced;
        tokens += sim.state.tokens.len();
    }
    assert!(emitted > 200, "the vault emitted only {emitted} events");
    assert!(
        forced > 50,
        "only {forced} refusals were forced into the fold"
    );
    assert!(tokens > 20, "only {tokens} tokens were issued");
}

#[test]
fn a_token_on_an_approval_decided_late_and_a_second_token_on_one_approval_are_flagged() {
    let mut sim = Sim::new(PolicySet::DEFAULTS);
    let (alice, a1) = (sim.users[0].clone(), sim.agents[0].clone());
    let grant = sim.request(
        &alice,
        Op::Grant {
            user: "alice".into(),
            agent: "a1".into(),
            audience: AUDIENCE.into(),
            scopes: vec!["repo:write".into()],
            expires_at: sim.now.plus_seconds(3_600),
            max_calls: None,
            max_token_ttl_s: None,
            approval: vec![ApprovalRule {
                scope: "repo:write".into(),
                risk: Risk::High,
            }],
        },
    );
    let ok = |r: &Reply| match r {
        Reply::Outcome(o) if o.ok => o.clone(),
        other => panic!("{other:?}"),
    };
    let grant_id = ok(&grant).grant_id.unwrap();
    let ask = |sim: &mut Sim| -> Outcome {
        let r = sim.request(
            &a1,
            Op::Token {
                agent: "a1".into(),
                audience: AUDIENCE.into(),
                scopes: vec!["repo:write".into()],
                action: "push".into(),
                approval_id: None,
                ttl_s: None,
                reply_key: Some(reply_key().public()),
                authorization_details: vec![],
            },
        );
        ok(&r)
    };
    let late = ask(&mut sim).approval_id.unwrap();
    // Alice's own key publishes her approval after the approval expired: recorded, flagged.
    sim.now = sim.now.plus_seconds(301);
    let alice_key = alice.clone();
    let found = sim.publish(
        &alice_key,
        EventBody::ApprovalDecided(ApprovalDecided {
            approval_id: late.clone(),
            user: "alice".into(),
            decision: Decision::Approved,
            method: ApprovalMethod::Push,
            auth_time: None,
            reason: None,
            step_up: None,
        }),
    );
    assert!(
        found.iter().any(|f| f.starts_with("approval.decided_late")),
        "{found:?}"
    );
    let vault = sim.vault.clone();
    let mint = |sim: &mut Sim, id: &str, approval: &str| {
        sim.publish(
            &vault,
            EventBody::TokenIssued(TokenIssued {
                token_id: id.into(),
                token_hash: "ef".repeat(32),
                grant_id: grant_id.clone(),
                user: "alice".into(),
                agent: "a1".into(),
                audience: AUDIENCE.into(),
                scopes: vec!["repo:write".into()],
                expires_at: sim.now.plus_seconds(60),
                approval_id: Some(approval.into()),
                authorization_details: vec![],
            }),
        )
    };
    let found = mint(&mut sim, "tok-late", &late);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("token.without_approval")
                && f.contains("decided after it expired")),
        "{found:?}"
    );
    // A sound approval, used by the vault once and then again from elsewhere.
    let id = ask(&mut sim).approval_id.unwrap();
    let decided = sim.request(
        &alice,
        Op::Approve {
            approval_id: id.clone(),
            decision: Decision::Approved,
            method: ApprovalMethod::Push,
            auth_time: None,
            reason: None,
            step_up: None,
        },
    );
    ok(&decided);
    let first = sim.request(
        &a1,
        Op::Token {
            agent: "a1".into(),
            audience: AUDIENCE.into(),
            scopes: vec!["repo:write".into()],
            action: "push".into(),
            approval_id: Some(id.clone()),
            ttl_s: None,
            reply_key: Some(reply_key().public()),
            authorization_details: vec![],
        },
    );
    assert!(ok(&first).open_token(&reply_key()).is_ok());
    let found = mint(&mut sim, "tok-second", &id);
    assert_eq!(
        found
            .iter()
            .filter(|f| f.starts_with("token.approval_reused"))
            .count(),
        1,
        "{found:?}"
    );
    assert_eq!(
        sim.state
            .token_on_approval(&id)
            .map(|t| t.token_id.as_str()),
        ok(&first).token_id.as_deref()
    );
}

/// The one-time reply key these sessions' token requests carry.
fn reply_key() -> docket_schemas::seal::ReplyKey {
    docket_schemas::seal::ReplyKey::from_bytes([42; 32])
}
