//! The vault end to end: a real nats-server, the real `docket serve --vault-key`, signed requests from agents, users and a gateway.

mod common;

use std::time::Duration;

use common::*;
use docket_schemas::vault::{
    ApprovalNotice, Introspection, Op, Outcome, RECEIPT_WAIT_HEADER, REQUEST_VERSION, Reply,
    Request, Status, seal_request,
};
use docket_schemas::*;
use ed25519_dalek::SigningKey;
use serde_json::Value;

struct World {
    _dir: tempfile::TempDir,
    _nats: NatsServer,
    serve: Serve,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    vault: SigningKey,
    gateway: SigningKey,
    alice: SigningKey,
    /// Alice's step-up key, registered by the admin as "stepup:alice".
    alice_step_up: SigningKey,
    admin: SigningKey,
    bob: SigningKey,
    a1: SigningKey,
    a2: SigningKey,
    rt: tokio::runtime::Runtime,
    /// What `restart` needs to start `serve` again as it was.
    nats_url: String,
    roles: docket_testkit::workload::Roles,
    config: std::path::PathBuf,
}

fn key(n: u8) -> SigningKey {
    let mut seed = [n; 32];
    seed[0] = rand::random();
    SigningKey::from_bytes(&seed)
}

fn now() -> Timestamp {
    docket_ledger::clock::now().unwrap()
}

fn event(body: EventBody) -> Event {
    Event {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now(),
        body,
    }
}

impl World {
    fn new() -> World {
        World::with_vault_registered(true)
    }

    fn with_vault_registered(register_vault: bool) -> World {
        World::with_config(register_vault, "")
    }

    /// With `extra` appended to serve's config file.
    fn with_config(register_vault: bool, extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
        let roles = docket_testkit::workload::Roles::from_seed(rand::random());
        let (vault, gateway, alice, bob, a1, a2) = (key(1), key(2), key(3), key(4), key(5), key(6));
        let vault_file = dir.path().join("vault.key");
        docket_ledger::keyfile::write(&vault_file, &vault).unwrap();
        let config = dir.path().join("docket.toml");
        std::fs::write(
            &config,
            format!("vault_key = {:?}\n{extra}", vault_file.to_str().unwrap()),
        )
        .unwrap();
        let data = dir.path().join("ledger");
        let serve = Serve::start_with(
            &data,
            &nats.url(),
            &roles,
            &["--config", config.to_str().unwrap()],
        );
        let rt = runtime();
        let (client, js) = rt.block_on(async {
            let client = async_nats::connect(nats.url()).await.unwrap();
            (client.clone(), jetstream(&nats.url()).await)
        });
        let nats_url = nats.url();
        let w = World {
            _dir: dir,
            _nats: nats,
            serve,
            client,
            js,
            vault,
            gateway,
            alice,
            alice_step_up: key(7),
            admin: roles.admin.clone(),
            bob,
            a1,
            a2,
            rt,
            nats_url,
            roles: roles.clone(),
            config: config.clone(),
        };
        let reg = |k: &SigningKey, name: &str, kinds: Vec<Kind>| {
            let pk = k.verifying_key();
            event(EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: name.into(),
                kinds,
            }))
        };
        let mut setup = vec![
            seal_event(
                &reg(
                    &w.vault,
                    "vault",
                    vec![
                        Kind::AgentRegistered,
                        Kind::GrantCreated,
                        Kind::GrantRevoked,
                        Kind::ApprovalRequested,
                        Kind::ApprovalDecided,
                        Kind::TokenIssued,
                        Kind::TokenRevoked,
                        Kind::AgentSuspended,
                        Kind::RequestRefused,
                        Kind::ConnectionLinked,
                        Kind::ConnectionRefreshed,
                        Kind::ConnectionFailed,
                        Kind::ConnectionUnlinked,
                    ],
                ),
                &roles.admin,
            ),
            seal_event(
                &reg(&w.gateway, "gateway", vec![Kind::ApiCalled]),
                &roles.admin,
            ),
            seal_event(
                &reg(&w.alice, "user:alice", vec![Kind::ApprovalDecided]),
                &roles.admin,
            ),
            seal_event(
                &reg(&w.bob, "user:bob", vec![Kind::ApprovalDecided]),
                &roles.admin,
            ),
            seal_event(&reg(&w.alice_step_up, "stepup:alice", vec![]), &roles.admin),
        ];
        for (name, k) in [("a1", &w.a1), ("a2", &w.a2)] {
            let e = event(EventBody::AgentRegistered(AgentRegistered {
                agent: name.into(),
                user: "alice".into(),
                name: name.into(),
                public_key: encode_base64(k.verifying_key().as_bytes()),
            }));
            setup.push(seal_event(&e, &w.vault));
        }
        if !register_vault {
            setup.remove(0);
        }
        // Entries: the genesis policy, then the setup (without the vault's key, its two
        // agent registrations are quarantined).
        let n = 1 + setup.len() as u64;
        w.publish_raw(setup);
        w.wait_entries(if register_vault { n } else { n - 2 });
        w
    }

    /// Records a policy change signed by the admin key; returns the seq it is at.
    fn set_policy(&self, policy: PolicySet) -> u64 {
        let n = self.head();
        let e = event(EventBody::PolicySet(policy));
        self.publish_raw(vec![seal_event(&e, &self.admin)]);
        self.wait_entries(n + 1);
        n + 1
    }

    /// Stops `serve` cleanly and starts it again on the same data and config.
    fn restart(&mut self) {
        self.serve.stop();
        self.serve = Serve::start_with(
            &self.serve.data.clone(),
            &self.nats_url,
            &self.roles,
            &["--config", self.config.to_str().unwrap()],
        );
        let (client, js) = self.rt.block_on(async {
            let client = async_nats::connect(&self.nats_url).await.unwrap();
            (client.clone(), jetstream(&self.nats_url).await)
        });
        self.client = client;
        self.js = js;
        // Serving again once the vault answers.
        self.wait_for("the vault after a restart", || {
            self.rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(500),
                    self.client.request("docket.vault.introspect", "{}".into()),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            })
        });
    }

    fn head(&self) -> u64 {
        head(&self.serve.data).map_or(0, |h| h.0)
    }

    /// Waits for `what` to hold, polling what the ledger shows; fails with the server's log.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                self.serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn publish_raw(&self, envelopes: Vec<Vec<u8>>) {
        self.rt.block_on(async {
            for e in envelopes {
                self.js
                    .publish(common::subject_of(&e), e.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
    }

    fn wait_entries(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while head(&self.serve.data).map(|h| h.0).unwrap_or(0) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "ledger stuck below {n}: {}",
                self.serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn ask(&self, k: &SigningKey, op: Op) -> Reply {
        let subject = format!("docket.vault.{}", op.name());
        let req = Request {
            v: REQUEST_VERSION,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: now(),
            op,
        };
        self.send_to(&subject, seal_request(&req, k))
    }

    /// Sends to the introspection subject (answered outside the ledger's loop).
    fn send(&self, bytes: Vec<u8>) -> Reply {
        self.send_to("docket.vault.introspect", bytes)
    }

    /// Sends a sealed request; the reply must parse as the documented contract.
    fn send_to(&self, subject: &str, bytes: Vec<u8>) -> Reply {
        self.rt.block_on(async {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                self.client.request(subject.to_string(), bytes.into()),
            )
            .await
            .unwrap()
            .unwrap();
            serde_json::from_slice(&r.payload).unwrap()
        })
    }

    /// The rules of the findings so far, in seq order.
    fn rules(&self) -> Vec<String> {
        self.findings()
    }

    /// Seq of the entry recording an outcome.
    fn seq_of(&self, o: &Outcome) -> u64 {
        o.receipt.as_ref().expect("a receipt").seq
    }

    fn call_api(&self, token_id: &str, agent: &str) {
        let e = event(EventBody::ApiCalled(ApiCalled {
            token_id: token_id.into(),
            token_hash: None,
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            method: "GET".into(),
            operation: "/repos/acme/web".into(),
            scope: Some("repo:read".into()),
            status: 200,
            source: "10.0.0.9".into(),
            ..Default::default()
        }));
        self.publish_raw(vec![seal_event(&e, &self.gateway)]);
    }

    fn findings(&self) -> Vec<String> {
        let store = docket_ledger::store::Store::open_reader(&self.serve.data.join("db")).unwrap();
        store
            .findings()
            .unwrap()
            .iter()
            .map(|f| f.rule.as_str().to_string())
            .collect()
    }
}

fn grant(w: &World, agent: &str) -> String {
    let r = w.ask(
        &w.alice,
        Op::Grant {
            user: "alice".into(),
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            scopes: vec![
                "repo:read".into(),
                "repo:write".into(),
                "repo:delete".into(),
            ],
            expires_at: now().plus_seconds(3600),
            max_calls: Some(100),
            max_token_ttl_s: Some(600),
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
    let o = said(&r, Status::Granted);
    assert!(w.seq_of(&o) > 0);
    o.grant_id.expect("a grant id")
}

fn token(w: &World, k: &SigningKey, agent: &str, scope: &str, approval: Option<&str>) -> Reply {
    w.ask(k, token_op(agent, scope, approval))
}

/// A token request for `scope` on the tests' audience, carrying the tests' reply key.
fn token_op(agent: &str, scope: &str, approval: Option<&str>) -> Op {
    Op::Token {
        agent: agent.into(),
        audience: "https://api.github.com".into(),
        scopes: vec![scope.into()],
        action: format!("{scope} on acme/web"),
        approval_id: approval.map(String::from),
        ttl_s: None,
        reply_key: Some(reply_key().public()),
        authorization_details: vec![],
    }
}

/// a1's request for a `repo:read` token, dated `ts`, as it would be sealed and sent.
fn a1_read_request(ts: Timestamp) -> Request {
    Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts,
        op: token_op("a1", "repo:read", None),
    }
}

/// An issued token's (token id, secret).
#[track_caller]
fn issued(r: &Reply) -> (String, String) {
    let o = said(r, Status::Issued);
    let secret = o
        .open_token(&reply_key())
        .expect("a token sealed to the request's key");
    (o.token_id.expect("token id"), secret)
}

/// The one-time reply key the tests' token requests carry (fixed, so `issued` can open).
fn reply_key() -> docket_schemas::seal::ReplyKey {
    docket_schemas::seal::ReplyKey::from_bytes([42; 32])
}

/// A pending approval's id.
#[track_caller]
fn pending(r: &Reply) -> String {
    said(r, Status::Pending).approval_id.expect("approval id")
}

fn introspect(w: &World, t: &str) -> Introspection {
    match w.ask(&w.gateway, Op::Introspect { token: t.into() }) {
        Reply::Introspection(i) => i,
        other => panic!("expected an introspection: {other:?}"),
    }
}

fn approve(w: &World, k: &SigningKey, id: &str, decision: Decision, step_up: Option<i64>) -> Reply {
    w.ask(
        k,
        Op::Approve {
            approval_id: id.into(),
            decision,
            method: if step_up.is_some() {
                ApprovalMethod::StepUp
            } else {
                ApprovalMethod::Push
            },
            auth_time: step_up.map(|age| now().plus_seconds(-age)),
            reason: None,
            step_up: None,
        },
    )
}

/// A step-up assertion for approval `id`, signed by `k`, about a strong authentication `age_s` ago.
fn assertion(k: &SigningKey, id: &str, age_s: i64) -> StepUpAssertion {
    StepUpAssertion::seal(
        &StepUpClaim {
            v: 1,
            user: "alice".into(),
            approval_id: id.into(),
            auth_time: now().plus_seconds(-age_s),
        },
        k,
    )
}

/// Alice approves with a step-up assertion (its auth time is the decision's).
fn approve_proven(w: &World, id: &str, step_up: StepUpAssertion) -> Reply {
    w.ask(
        &w.alice,
        Op::Approve {
            approval_id: id.into(),
            decision: Decision::Approved,
            method: ApprovalMethod::StepUp,
            auth_time: None,
            reason: None,
            step_up: Some(step_up),
        },
    )
}

/// The outcome, which must have this status.
#[track_caller]
fn said(r: &Reply, status: Status) -> Outcome {
    match r {
        Reply::Outcome(o) if o.ok && o.status == Some(status) => o.clone(),
        other => panic!("expected {status:?}: {other:?}"),
    }
}

#[track_caller]
fn assert_refused(r: &Reply, why: &str) -> Outcome {
    match r {
        Reply::Outcome(o) if !o.ok => {
            let error = o.error.as_deref().unwrap_or_default();
            assert!(error.contains(why), "expected {why:?}: {error}");
            assert!(o.sealed_token.is_none() && o.grant_id.is_none(), "{o:?}");
            o.clone()
        }
        other => panic!("expected a refusal ({why}): {other:?}"),
    }
}

/// The chain's entries as JSON (`docket log`).
fn log(w: &World) -> Vec<Value> {
    stdout(&docket(&["log", "--data", w.serve.data.to_str().unwrap()]))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn kind_of(entry: &Value) -> &str {
    entry["event"]["kind"].as_str().unwrap_or_default()
}

#[test]
fn a_token_is_issued_introspected_used_and_revoked() {
    let w = World::new();
    grant(&w, "a1");
    let t = token(&w, &w.a1, "a1", "repo:read", None);
    let (token_id, secret) = issued(&t);
    let i = introspect(&w, &secret);
    assert_eq!(
        i,
        Introspection {
            active: true,
            scope: Some("repo:read".into()),
            client_id: Some("a1".into()),
            sub: Some("alice".into()),
            aud: Some("https://api.github.com".into()),
            exp: i.exp,
            iat: i.iat,
            jti: Some(token_id.clone()),
            reason: None,
            authorization_details: vec![],
        }
    );
    // The policy's longest token lifetime (300 s) caps the grant's 600 s.
    let (exp, iat) = (i.exp.unwrap(), i.iat.unwrap());
    assert!((299..=300).contains(&(exp - iat)), "{i:?}");
    // Inactive: RFC 7662's `active: false`, with Docket's reason (and, for a token the
    // vault knows, whose it is: the gateway's refusal names them in its record).
    assert_eq!(
        introspect(&w, "dkt_not_a_token"),
        Introspection {
            reason: Some("unknown token".into()),
            ..Introspection::default()
        }
    );
    let n = w.head();
    w.call_api(&token_id, "a1");
    w.wait_entries(n + 1);
    assert!(w.rules().is_empty(), "{:?}", w.rules());
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: Some(token_id.clone()),
            grant_id: None,
            agent: None,
            reason: "done".into(),
        },
    );
    said(&r, Status::Revoked);
    assert_eq!(
        introspect(&w, &secret),
        Introspection {
            jti: Some(token_id.clone()),
            client_id: Some("a1".into()),
            reason: Some("token revoked".into()),
            ..Introspection::default()
        }
    );
    let n = w.head();
    w.call_api(&token_id, "a1");
    w.wait_entries(n + 1);
    assert_eq!(w.rules(), vec!["call.revoked_token"]);

    // As of the token's receipt it was active; now it is revoked.
    let data = w.serve.data.to_str().unwrap();
    let at = w.seq_of(&said(&t, Status::Issued)).to_string();
    let status_of = |args: &[&str]| -> String {
        let out = stdout(&docket(
            &[
                &["state", "tokens", "--data", data, "--format", "json"],
                args,
            ]
            .concat(),
        ));
        let line = out
            .lines()
            .find(|l| l.contains(&token_id))
            .unwrap_or_default()
            .to_string();
        serde_json::from_str::<Value>(&line)
            .map(|v| v["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(status_of(&["--as-of", &at]), "active");
    assert_eq!(status_of(&[]), "revoked");
    let table = stdout(&docket(&["state", "grants", "--data", data]));
    assert!(table.starts_with("grant_id"), "{table}");
}

#[test]
fn an_approval_is_asked_of_its_user_who_is_notified_and_it_mints_one_token() {
    let w = World::new();
    grant(&w, "a1");
    let notes =
        w.rt.block_on(w.client.subscribe("docket.approvals.alice"))
            .unwrap();
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    let note: ApprovalNotice = w.rt.block_on(async {
        let mut notes = notes;
        let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut notes))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&m.payload).unwrap()
    });
    assert_eq!(note.approval_id, id);
    assert_eq!(note.binding_message, "repo:write on acme/web");
    assert_eq!(
        pending(&token(&w, &w.a1, "a1", "repo:write", Some(&id))),
        id
    );
    assert_refused(
        &approve(&w, &w.bob, &id, Decision::Approved, None),
        "bob may not do this",
    );
    said(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        Status::Approved,
    );
    issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id)));
    assert_refused(
        &token(&w, &w.a1, "a1", "repo:write", Some(&id)),
        "already used",
    );
    assert!(w.rules().is_empty(), "{:?}", w.rules());
}

#[test]
fn nobody_else_decides_a_users_approval_or_steers_their_agent() {
    let w = World::new();
    grant(&w, "a1");
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    // Bob publishes alice's decision himself: refused at the door.
    let forged = event(EventBody::ApprovalDecided(ApprovalDecided {
        approval_id: id.clone(),
        user: "alice".into(),
        decision: Decision::Approved,
        method: ApprovalMethod::Push,
        auth_time: None,
        reason: None,
        step_up: None,
    }));
    let n = w.head();
    w.publish_raw(vec![seal_event(&forged, &w.bob)]);
    w.wait_for("bob's forgery to be quarantined", || {
        quarantine_codes(&w.serve.data).contains(&"unauthorized_kind".to_string())
    });
    assert_eq!(
        w.head(),
        n,
        "bob's approval on alice's behalf entered the chain"
    );
    assert_eq!(
        pending(&token(&w, &w.a1, "a1", "repo:write", Some(&id))),
        id
    );
    // Bob cannot grant alice's agent either.
    let steer = w.ask(
        &w.bob,
        Op::Grant {
            user: "bob".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec!["repo:write".into()],
            expires_at: now().plus_seconds(60),
            max_calls: None,
            max_token_ttl_s: None,
            approval: vec![],
        },
    );
    assert_refused(&steer, "belongs to alice");
}

#[test]
fn a_denied_approval_gives_no_token() {
    let w = World::new();
    grant(&w, "a1");
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    said(
        &approve(&w, &w.alice, &id, Decision::Denied, None),
        Status::Denied,
    );
    assert_refused(&token(&w, &w.a1, "a1", "repo:write", Some(&id)), "denied");
}

#[test]
fn an_approval_lifetime_set_on_the_chain_expires_approvals() {
    let w = World::new();
    grant(&w, "a1");
    // The policy on the chain, not a config file, gives approvals one second from here on.
    let set_at = w.set_policy(PolicySet {
        revision: 2,
        approval_ttl_s: 1,
        ..PolicySet::DEFAULTS
    });
    let r = token(&w, &w.a1, "a1", "repo:write", None);
    let o = said(&r, Status::Pending);
    let id = o.approval_id.clone().unwrap();
    let expires_at = o.expires_at.unwrap();
    assert!(w.seq_of(&o) > set_at);
    assert!(expires_at <= now().plus_seconds(1), "{o:?}");
    // Wait for the time the vault named, then past it nothing can use the approval.
    w.wait_for("the approval's expiry", || now() > expires_at);
    assert_refused(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        "expired",
    );
    assert_refused(&token(&w, &w.a1, "a1", "repo:write", Some(&id)), "expired");
    let shown = stdout(&docket(&[
        "policy",
        "show",
        "--data",
        w.serve.data.to_str().unwrap(),
    ]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["approval_ttl_s"], 1);
    assert_eq!(shown["set_seq"], set_at);
}

#[test]
fn a_critical_approval_needs_a_fresh_step_up_from_the_step_up_key() {
    let w = World::new();
    grant(&w, "a1");
    let id = pending(&token(&w, &w.a1, "a1", "repo:delete", None));
    let claimed = approve(&w, &w.alice, &id, Decision::Approved, Some(10));
    assert_refused(&claimed, "only the caller's claim");
    let push = approve(&w, &w.alice, &id, Decision::Approved, None);
    assert_refused(
        &push,
        "needs a step-up assertion signed by alice's step-up key",
    );
    let by_users_key = approve_proven(&w, &id, assertion(&w.alice, &id, 10));
    assert_refused(&by_users_key, "not signed by alice's step-up key");
    let for_another = approve_proven(&w, &id, assertion(&w.alice_step_up, "appr-other", 10));
    assert_refused(
        &for_another,
        "is for alice's approval appr-other, not alice's approval",
    );
    let stale = approve_proven(&w, &id, assertion(&w.alice_step_up, &id, 3_600));
    assert_refused(&stale, "is not within the 300 s before the decision");
    said(
        &approve_proven(&w, &id, assertion(&w.alice_step_up, &id, 10)),
        Status::Approved,
    );
    let decided: Vec<Value> = log(&w)
        .into_iter()
        .filter(|e| kind_of(e) == "approval.decided" && e["event"]["approval_id"] == id)
        .collect();
    assert_eq!(decided.len(), 1, "only the proven decision is recorded");
    assert!(decided[0]["event"]["step_up"].is_object(), "{}", decided[0]);
    issued(&token(&w, &w.a1, "a1", "repo:delete", Some(&id)));
    assert!(w.rules().is_empty(), "{:?}", w.rules());
}

#[test]
fn revoking_a_grant_ends_its_tokens() {
    let w = World::new();
    let grant_id = grant(&w, "a1");
    let (_, read) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    said(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        Status::Approved,
    );
    let (_, write) = issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id)));
    assert!(introspect(&w, &write).active);
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: None,
            grant_id: Some(grant_id),
            agent: None,
            reason: "project over".into(),
        },
    );
    said(&r, Status::Revoked);
    assert!(!introspect(&w, &read).active);
    assert!(!introspect(&w, &write).active);
    assert_refused(
        &token(&w, &w.a1, "a1", "repo:read", None),
        "no active grant",
    );
}

#[test]
fn suspending_an_agent_ends_its_tokens_and_its_requests() {
    let w = World::new();
    grant(&w, "a2");
    let (_, secret) = issued(&token(&w, &w.a2, "a2", "repo:read", None));
    assert!(introspect(&w, &secret).active);
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: None,
            grant_id: None,
            agent: Some("a2".into()),
            reason: "odd".into(),
        },
    );
    said(&r, Status::Suspended);
    assert!(!introspect(&w, &secret).active);
    assert_refused(&token(&w, &w.a2, "a2", "repo:read", None), "suspended");
}

#[test]
fn spoofed_unknown_and_replayed_requests_are_refused_and_recorded() {
    let w = World::new();
    grant(&w, "a1");
    let (_, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let before = log(&w)
        .iter()
        .filter(|e| kind_of(e) == "request.refused")
        .count();
    let spoof = assert_refused(
        &token(&w, &w.a1, "a2", "repo:read", None),
        "a1 may not do this",
    );
    assert!(spoof.receipt.is_some(), "recorded: {spoof:?}");
    let stranger = assert_refused(
        &token(&w, &key(9), "a1", "repo:read", None),
        "(the caller's) is not registered",
    );
    assert!(stranger.receipt.is_some(), "recorded: {stranger:?}");
    let req = Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now(),
        op: Op::Introspect { token: secret },
    };
    // An introspection is answered again when replayed within the skew window: it changes
    // nothing and tells nothing the request did not hold, so its id is not remembered
    // (a gateway's rate is not capped by the replay memory).
    let bytes = seal_request(&req, &w.gateway);
    assert!(matches!(w.send(bytes.clone()), Reply::Introspection(i) if i.active));
    assert!(matches!(w.send(bytes), Reply::Introspection(i) if i.active));
    // Any other request is accepted once.
    let grant_req = Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now(),
        op: Op::Revoke {
            token_id: None,
            grant_id: Some("no-such-grant".into()),
            agent: None,
            reason: "replay test".into(),
        },
    };
    let bytes = seal_request(&grant_req, &w.alice);
    w.send_to("docket.vault.revoke", bytes.clone());
    assert_refused(&w.send_to("docket.vault.revoke", bytes), "replay");
    let after = log(&w)
        .iter()
        .filter(|e| kind_of(e) == "request.refused")
        .count();
    assert_eq!(after - before, 4, "each refusal is one entry");
}

#[test]
fn no_token_secret_is_stored_and_the_state_replays_to_the_same() {
    let w = World::new();
    let mut secrets = Vec::new();
    grant(&w, "a1");
    secrets.push(issued(&token(&w, &w.a1, "a1", "repo:read", None)).1);
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    said(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        Status::Approved,
    );
    secrets.push(issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id))).1);
    // State agrees with a replay; the chain verifies.
    let o = docket(&["state", "rebuild", "--data", w.serve.data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(verify(&w.serve.data).0, 0);
    let export = w.serve.data.with_extension("export.jsonl");
    assert!(
        docket(&[
            "export",
            "--data",
            w.serve.data.to_str().unwrap(),
            "--out",
            export.to_str().unwrap()
        ])
        .status
        .success()
    );
    let mut files = vec![export, w.serve.log.clone()];
    let mut stack = vec![w.serve.data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path())
            } else {
                files.push(e.path())
            }
        }
    }
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for s in &secrets {
            let hex_part = s.trim_start_matches("dkt_");
            assert!(
                !bytes
                    .windows(hex_part.len())
                    .any(|w| w == hex_part.as_bytes()),
                "a token secret is in {}",
                f.display()
            );
        }
    }
}

#[test]
fn no_token_when_the_ledger_cannot_record_the_decision() {
    // The vault's key was never registered by the admin: its events are refused by the ledger.
    let w = World::with_vault_registered(false);
    let r = w.ask(
        &w.alice,
        Op::Grant {
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec!["repo:read".into()],
            expires_at: now().plus_seconds(60),
            max_calls: None,
            max_token_ttl_s: None,
            approval: vec![],
        },
    );
    assert_refused(&r, "did not record");
    let o = assert_refused(
        &r,
        &format!(
            "key {} (the vault's) is not registered",
            key_id(w.vault.verifying_key().as_bytes())
        ),
    );
    assert!(o.receipt.is_none(), "{o:?}");
}

#[test]
fn step_ups_published_from_elsewhere_are_judged_by_the_fold() {
    let w = World::new();
    grant(&w, "a1");
    // Alice's own key publishes her decision on a critical approval, claiming a step-up
    // time: the chain records what she said, the fold flags it, the vault issues nothing.
    let publish = |id: &str, step_up: Option<StepUpAssertion>| {
        let auth_time = step_up
            .as_ref()
            .map(|s| s.decode().unwrap().claim.auth_time)
            .unwrap_or_else(|| now().plus_seconds(-10));
        let e = event(EventBody::ApprovalDecided(ApprovalDecided {
            approval_id: id.into(),
            user: "alice".into(),
            decision: Decision::Approved,
            method: ApprovalMethod::StepUp,
            auth_time: Some(auth_time),
            reason: None,
            step_up,
        }));
        let n = w.head();
        w.publish_raw(vec![seal_event(&e, &w.alice)]);
        w.wait_entries(n + 1);
    };
    let ask = |scope: &str| pending(&token(&w, &w.a1, "a1", scope, None));
    let id = ask("repo:delete");
    publish(&id, None);
    assert_eq!(w.rules(), vec!["approval.step_up_unproven"]);
    assert_refused(
        &token(&w, &w.a1, "a1", "repo:delete", Some(&id)),
        "no step-up was proven",
    );
    // Signed by her own key instead of her step-up key: flagged too.
    let id = ask("repo:delete");
    publish(&id, Some(assertion(&w.alice, &id, 10)));
    assert_eq!(
        w.rules(),
        vec!["approval.step_up_unproven", "approval.step_up_unproven"]
    );
    // With her step-up key's assertion: no finding, and the token is issued.
    let id = ask("repo:delete");
    publish(&id, Some(assertion(&w.alice_step_up, &id, 10)));
    assert_eq!(w.rules().len(), 2, "{:?}", w.rules());
    issued(&token(&w, &w.a1, "a1", "repo:delete", Some(&id)));
    let o = docket(&["state", "rebuild", "--data", w.serve.data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(verify(&w.serve.data).0, 0);
}

#[test]
fn tokens_minted_elsewhere_against_the_rules_are_flagged_from_the_policy_in_force() {
    let w = World::new();
    let grant_id = grant(&w, "a1");
    let minted = |token_id: &str, ttl_s: i64, approval: Option<&str>, scope: &str| {
        let e = event(EventBody::TokenIssued(TokenIssued {
            token_id: token_id.into(),
            token_hash: "ab".repeat(32),
            grant_id: grant_id.clone(),
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec![scope.into()],
            expires_at: now().plus_seconds(ttl_s),
            approval_id: approval.map(String::from),
            authorization_details: vec![],
        }));
        let n = w.head();
        // Signed by the vault's own key, as a compromised or buggy vault would.
        w.publish_raw(vec![seal_event(&e, &w.vault)]);
        w.wait_entries(n + 1);
        n + 1
    };
    // 250 s is within the default policy's 300 s.
    minted("tok-x1", 250, None, "repo:read");
    assert!(w.rules().is_empty(), "{:?}", w.rules());
    // From the entry after a policy.set with a 200 s longest lifetime, the same is flagged.
    w.set_policy(PolicySet {
        revision: 2,
        token_ttl_max_s: 200,
        ..PolicySet::DEFAULTS
    });
    let flagged = minted("tok-x2", 250, None, "repo:read");
    assert_eq!(w.rules(), vec!["token.ttl_over_policy"]);
    // An approval decided after it expired cannot stand behind a token, and one approval
    // mints one token: the two drift cases the vault refuses and the fold must flag.
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    said(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        Status::Approved,
    );
    issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id)));
    minted("tok-x3", 100, Some(&id), "repo:write");
    assert_eq!(
        w.rules(),
        vec!["token.ttl_over_policy", "token.approval_reused"]
    );
    let findings = stdout(&docket(&[
        "findings",
        "--data",
        w.serve.data.to_str().unwrap(),
        "--format",
        "json",
    ]));
    assert!(
        findings.contains(&format!("\"seq\":{flagged}")),
        "{findings}"
    );
    // The replay from genesis reads the same policy from the chain and agrees.
    let o = docket(&["state", "rebuild", "--data", w.serve.data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn introspection_by_a_key_that_may_not_is_refused_and_recorded() {
    let w = World::new();
    grant(&w, "a1");
    let (_, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    // An agent and a user may not introspect: a refusal with a reason, not "inactive".
    for (k, who) in [(&w.a1, "a1"), (&w.alice, "alice")] {
        let r = w.ask(
            k,
            Op::Introspect {
                token: secret.clone(),
            },
        );
        let o = assert_refused(&r, &format!("{who} may not do this: introspect tokens"));
        assert!(o.receipt.is_some(), "recorded: {o:?}");
    }
    // A registered key that is no requester's is told so, by name.
    let r = w.ask(
        &w.vault,
        Op::Introspect {
            token: secret.clone(),
        },
    );
    assert_refused(
        &r,
        "(the caller's) is registered as \"vault\", which may not make vault requests",
    );
    let refusals: Vec<Value> = log(&w)
        .into_iter()
        .filter(|e| kind_of(e) == "request.refused" && e["event"]["op"] == "introspect")
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    // The gateway still gets its answer.
    assert!(introspect(&w, &secret).active);
}

#[test]
fn docket_approve_signs_a_step_up_with_the_step_up_key() {
    let w = World::new();
    grant(&w, "a1");
    let dir = tempfile::tempdir().unwrap();
    let (alice_file, step_up_file) = (dir.path().join("alice.key"), dir.path().join("stepup.key"));
    docket_ledger::keyfile::write(&alice_file, &w.alice).unwrap();
    docket_ledger::keyfile::write(&step_up_file, &w.alice_step_up).unwrap();
    let nats = w._nats.url();
    let approve_cli = |id: &str, extra: &[&str]| {
        let base = [
            "approve",
            "--nats",
            &nats,
            "--key",
            alice_file.to_str().unwrap(),
            "--approval-id",
            id,
        ];
        docket(&[&base[..], extra].concat())
    };
    let id = pending(&token(&w, &w.a1, "a1", "repo:delete", None));
    // The user's key alone, even with a claimed time, cannot approve a critical action.
    let o = approve_cli(&id, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("needs a step-up assertion"),
        "{}",
        stdout(&o)
    );
    let o = approve_cli(&id, &["--step-up-at", "2026-01-01T00:00:00.000000Z"]);
    assert_eq!(o.status.code(), Some(2), "--step-up-at needs --step-up-key");
    // With the step-up key, the assertion is signed for this approval, now.
    let o = approve_cli(
        &id,
        &[
            "--user",
            "alice",
            "--step-up-key",
            step_up_file.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("\"approved\""), "{}", stdout(&o));
    issued(&token(&w, &w.a1, "a1", "repo:delete", Some(&id)));
}

// Attacks from the security review (SECURITY.md): each performs the attack.

#[test]
fn a_request_captured_before_a_restart_is_refused_after_it() {
    let mut w = World::new();
    grant(&w, "a1");
    // A request dated into the future, within the skew window, captured on the wire.
    let bytes = seal_request(&a1_read_request(now().plus_seconds(200)), &w.a1);
    issued(&w.send_to("docket.vault.token", bytes.clone()));
    w.restart();
    assert_refused(&w.send_to("docket.vault.token", bytes), "replay");
}

#[test]
fn another_users_decision_does_not_veto_the_users_own() {
    let w = World::new();
    grant(&w, "a1");
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    // Bob, with his own registered user key, decides alice's approval first.
    let n = w.head();
    let veto = event(EventBody::ApprovalDecided(ApprovalDecided {
        approval_id: id.clone(),
        user: "bob".into(),
        decision: Decision::Denied,
        method: ApprovalMethod::Push,
        auth_time: None,
        reason: Some("veto".into()),
        step_up: None,
    }));
    w.publish_raw(vec![seal_event(&veto, &w.bob)]);
    w.wait_entries(n + 1);
    assert!(w.rules().contains(&"approval.wrong_decider".to_string()));
    // Alice's own decision still counts, and the token is issued.
    said(
        &approve(&w, &w.alice, &id, Decision::Approved, None),
        Status::Approved,
    );
    issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id)));
}

#[test]
fn an_event_dated_far_ahead_is_quarantined_and_expires_nothing() {
    let w = World::new();
    grant(&w, "a1");
    let (token_id, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let mut far = event(EventBody::ApiCalled(ApiCalled {
        token_id: token_id.clone(),
        token_hash: None,
        agent: "a1".into(),
        audience: "https://api.github.com".into(),
        method: "GET".into(),
        operation: "/repos/acme/web".into(),
        scope: Some("repo:read".into()),
        status: 200,
        source: "10.0.0.9".into(),
        ..Default::default()
    }));
    far.ts = Timestamp::parse("9999-01-01T00:00:00.000000Z").unwrap();
    w.publish_raw(vec![seal_event(&far, &w.gateway)]);
    w.wait_for("the far-future event's quarantine", || {
        quarantine_codes(&w.serve.data).contains(&"ts_ahead".to_string())
    });
    // The token is still live, and the state's clock did not jump.
    assert!(introspect(&w, &secret).active);
    let n = w.head();
    w.call_api(&token_id, "a1");
    w.wait_entries(n + 1);
    let o = docket(&[
        "state",
        "tokens",
        "--data",
        w.serve.data.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(stdout(&o).contains("\"active\""), "{}", stdout(&o));
}

#[test]
fn one_key_flooding_the_vault_is_refused_past_its_budget_and_recorded_once_a_second() {
    let w = World::new();
    grant(&w, "a1");
    w.set_policy(PolicySet {
        revision: 2,
        vault_requests_per_key_per_s: 5,
        ..PolicySet::DEFAULTS
    });
    let before = log(&w).len();
    // 40 requests at once, from one agent's key.
    let replies: Vec<Reply> = w.rt.block_on(async {
        let asks = (0..40).map(|_| {
            let bytes = seal_request(&a1_read_request(now()), &w.a1);
            let client = w.client.clone();
            async move {
                let r = client
                    .request("docket.vault.token", bytes.into())
                    .await
                    .unwrap();
                serde_json::from_slice::<Reply>(&r.payload).unwrap()
            }
        });
        futures::future::join_all(asks).await
    });
    let limited = replies
        .iter()
        .filter(|r| matches!(r, Reply::Outcome(o) if o.error.as_deref().is_some_and(|e| e.contains("vault_requests_per_key_per_s"))))
        .count();
    let served = replies
        .iter()
        .filter(|r| matches!(r, Reply::Outcome(o) if o.ok))
        .count();
    assert!(limited > 0, "{replies:?}");
    assert!((5..40).contains(&served), "{served} served");
    // Recorded: at most one refusal per second of flood, not one per request.
    std::thread::sleep(Duration::from_millis(500));
    let recorded = log(&w)[before..]
        .iter()
        .filter(|e| kind_of(e) == "request.refused")
        .count();
    assert!(
        recorded >= 1 && recorded < limited,
        "{recorded} recorded of {limited}"
    );
}

#[test]
fn a_token_for_no_scope_is_refused_with_the_formats_reason() {
    let w = World::new();
    grant(&w, "a1");
    let r = w.ask(
        &w.a1,
        Op::Token {
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec![],
            action: "nothing".into(),
            approval_id: None,
            ttl_s: None,
            reply_key: Some(reply_key().public()),
            authorization_details: vec![],
        },
    );
    assert_refused(&r, "name at least one scope");
}

#[test]
fn an_unverified_request_records_the_key_it_named_as_a_claim() {
    let w = World::new();
    let stranger = key(9);
    let r = token(&w, &stranger, "a1", "repo:read", None);
    let o = assert_refused(&r, "not registered");
    assert!(o.receipt.is_some());
    let refused = log(&w)
        .into_iter()
        .rfind(|e| kind_of(e) == "request.refused")
        .unwrap();
    assert_eq!(refused["event"]["requester"], "unverified");
    assert_eq!(
        refused["event"]["claimed_key_id"],
        key_id(stranger.verifying_key().as_bytes()).as_str()
    );
}

#[test]
fn a_listener_on_every_subject_never_sees_a_token_secret() {
    let w = World::new();
    grant(&w, "a1");
    // The attacker: a client subscribed to everything, replies included.
    let (mut all, listener) = w.rt.block_on(async {
        let c = async_nats::connect(w.nats_url.clone()).await.unwrap();
        let sub = c.subscribe(">").await.unwrap();
        c.flush().await.unwrap();
        (sub, c)
    });
    let (_, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let seen: Vec<Vec<u8>> = w.rt.block_on(async {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(
            Duration::from_millis(500),
            futures::StreamExt::next(&mut all),
        )
        .await
        {
            out.push(m.payload.to_vec());
        }
        out
    });
    drop(listener);
    assert!(
        seen.iter()
            .any(|p| String::from_utf8_lossy(p).contains("sealed_token")),
        "the listener missed the reply, so it proves nothing"
    );
    let hex_part = secret.trim_start_matches("dkt_");
    assert!(
        !seen
            .iter()
            .any(|p| String::from_utf8_lossy(p).contains(hex_part)),
        "the token secret crossed the bus in clear"
    );
    // A token request without a reply key gets no token.
    let r = w.ask(
        &w.a1,
        Op::Token {
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec!["repo:read".into()],
            action: "read".into(),
            approval_id: None,
            ttl_s: None,
            reply_key: None,
            authorization_details: vec![],
        },
    );
    assert_refused(&r, "must carry reply_key");
}

#[test]
fn an_approval_made_in_docket_watch_reaches_the_ledger_and_the_waiting_agent_gets_its_token() {
    let w = World::new();
    grant(&w, "a1");
    let id = pending(&token(&w, &w.a1, "a1", "repo:write", None));
    let dir = w._dir.path();
    let alice_file = dir.join("alice.key");
    docket_ledger::keyfile::write(&alice_file, &w.alice).unwrap();
    let exit_file = dir.join("watch.exit");
    let command = format!(
        "{} watch --data {} --nats {} --key {} --by alice; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_docket"),
        w.serve.data.display(),
        w.nats_url,
        alice_file.display(),
        exit_file.display()
    );
    let term = common::Tmux::start(dir, &command);
    term.wait_for("connected");
    term.wait_for("approvals(1)");
    assert_eq!(
        term.alternate_screen(),
        "1",
        "the UI runs on the alternate screen"
    );
    term.keys(&[":ap", "Enter"]);
    term.wait_for("repo:write on acme/web");
    // The key is found registered as the asked user's: the request is marked as theirs.
    term.wait_for("1 for you");
    // Nothing is decided until the key is pressed.
    assert!(
        !log(&w).iter().any(|e| kind_of(e) == "approval.decided"),
        "a decision before anyone pressed a key"
    );
    term.keys(&["a"]);
    w.wait_for("the approval made in the UI", || {
        log(&w).iter().any(|e| {
            kind_of(e) == "approval.decided"
                && e["event"]["approval_id"] == id.as_str()
                && e["event"]["decision"] == "approved"
        })
    });
    // The agent that was waiting on the approval now gets its token, once.
    issued(&token(&w, &w.a1, "a1", "repo:write", Some(&id)));
    term.wait_for("[approvals]");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while term.screen().contains("[approvals(1)]") {
        assert!(
            std::time::Instant::now() < until,
            "the decided request is still shown as pending:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    term.keys(&["q"]);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !exit_file.exists() {
        assert!(
            std::time::Instant::now() < until,
            "docket watch did not quit on q; the terminal shows:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "0");
    assert_eq!(
        term.alternate_screen(),
        "0",
        "quitting gives the terminal back: {}",
        term.screen()
    );
}

#[test]
fn docket_watch_over_nats_alone_reads_through_docket_read_and_a_plain_users_key_may_not() {
    let w = World::new();
    grant(&w, "a1");
    pending(&token(&w, &w.a1, "a1", "repo:write", None));
    let dir = w._dir.path();
    let watch = |who: &str, key: &SigningKey| {
        let file = dir.join(format!("{who}.key"));
        docket_ledger::keyfile::write(&file, key).unwrap();
        // No --data: everything the UI shows comes over NATS.
        let command = format!(
            "{} watch --nats {} --key {} --readonly; sleep 60",
            env!("CARGO_BIN_EXE_docket"),
            w.nats_url,
            file.display(),
        );
        common::Tmux::start(dir, &command)
    };
    let term = watch("admin", &w.admin);
    term.wait_for("connected");
    term.wait_for("approvals(1)");
    // The checkpoint is not claimed verified: there is no chain here to check it against.
    term.wait_for("agents        2");
    term.keys(&[":li", "Enter"]);
    term.wait_for("approval.requested");
    term.keys(&[":qu", "Enter"]);
    // One grant, counted by the ledger: 9001 appears only when the answer came back.
    term.keys(&["SELECT count(*) + 9000 AS n FROM grants", "Enter"]);
    term.wait_for("9001");
    // A write is refused by the ledger, and the refusal reaches the analyst.
    term.keys(&["i", "DROP TABLE events", "Enter"]);
    term.wait_for("refused the read");
    term.keys(&["Esc", "q"]);
    // Alice's key decides her own requests, but is not a licence to read the whole log.
    let alice = watch("alice", &w.alice);
    alice.wait_for("connected");
    alice.wait_for("may not read the ledger");
}

#[test]
fn a_signal_ends_docket_watch_with_the_terminal_given_back() {
    let w = World::new();
    let dir = w._dir.path();
    for (signal, name) in [(libc::SIGTERM, "term"), (libc::SIGHUP, "hup")] {
        // A terminal (a tmux server) of its own for each signal.
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join(format!("watch-{name}.pid"));
        let exit_file = dir.join(format!("watch-{name}.exit"));
        // The inner shell becomes docket watch (exec), after writing its pid.
        let command = format!(
            "sh -c 'echo $$ > {}; exec {} watch --data {} --nats {} --readonly'; echo $? > {}; sleep 60",
            pid_file.display(),
            env!("CARGO_BIN_EXE_docket"),
            w.serve.data.display(),
            w.nats_url,
            exit_file.display()
        );
        let term = common::Tmux::start(&dir, &command);
        term.wait_for("connected");
        assert_eq!(term.alternate_screen(), "1");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill only sends a signal to the process the test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !exit_file.exists() {
            assert!(
                std::time::Instant::now() < until,
                "docket watch did not end on signal {signal}:\n{}",
                term.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            std::fs::read_to_string(&exit_file).unwrap().trim(),
            (128 + signal).to_string(),
            "the exit status says which signal ended it"
        );
        assert_eq!(
            term.alternate_screen(),
            "0",
            "the terminal is given back after signal {signal}: {}",
            term.screen()
        );
    }
}

#[test]
fn reads_on_docket_read_answer_the_admin_and_analysts_fresh_bounded_and_read_only_and_refuse_everyone_else()
 {
    use docket_schemas::vault::{READ_ROWS_MAX, ReadReply};
    let w = World::new();
    grant(&w, "a1");
    let read = |k: &SigningKey, sql: &str, max_rows: Option<u32>, ts: Timestamp| -> ReadReply {
        let req = Request {
            v: REQUEST_VERSION,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts,
            op: Op::Read {
                sql: sql.to_string(),
                max_rows,
            },
        };
        w.rt.block_on(async {
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                w.client
                    .request("docket.read", seal_request(&req, k).into()),
            )
            .await
            .unwrap()
            .unwrap();
            serde_json::from_slice(&r.payload).unwrap()
        })
    };
    // An analyst: a producer key allowed triage events, neither a user's nor a gateway's.
    let analyst = key(42);
    let pk = analyst.verifying_key();
    let registration = event(EventBody::KeyRegistered(KeyRegistered {
        key_id: key_id(pk.as_bytes()),
        public_key: encode_base64(pk.as_bytes()),
        name: "analyst-1".into(),
        kinds: vec![Kind::FindingTriaged, Kind::FindingSuppressed],
    }));
    let before = w.head();
    w.publish_raw(vec![seal_event(&registration, &w.admin)]);
    w.wait_for("the analyst's registration", || w.head() > before);
    let r = read(&analyst, "SELECT count(*) FROM events", None, now());
    assert!(r.ok, "an analyst reads: {r:?}");
    assert_eq!(r.signer.as_deref(), Some("analyst-1"));
    // Reading is all an analyst's key does with requests: the vault still refuses it.
    assert_refused(
        &w.ask(&analyst, token_op("a1", "repo:read", None)),
        "may not make vault requests",
    );
    let head = w.head();
    let r = read(
        &w.admin,
        "SELECT kind, count(*) AS n FROM events WHERE kind = 'grant.created' GROUP BY kind",
        None,
        now(),
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(r.signer.as_deref(), Some("admin"));
    assert_eq!(r.columns, vec!["kind", "n"]);
    assert_eq!(r.rows, vec![vec!["grant.created".to_string(), "1".into()]]);
    assert!(!r.truncated);
    // Rows past the asked number, and past the cap, are not sent, and the reply says so.
    let r = read(&w.admin, "SELECT value FROM range(100000)", Some(10), now());
    assert!(r.ok && r.truncated && r.rows.len() == 10, "{r:?}");
    let r = read(
        &w.admin,
        "SELECT value FROM range(100000)",
        Some(u32::MAX),
        now(),
    );
    assert!(r.ok && r.truncated, "{:?}", r.error);
    assert_eq!(r.rows.len(), READ_ROWS_MAX as usize);
    let refused = |r: ReadReply, why: &str| {
        assert!(!r.ok, "a read that should be refused was answered: {r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains(why), "expected {why:?} in {error:?}");
        assert!(r.rows.is_empty());
    };
    refused(read(&w.admin, "DROP TABLE events", None, now()), "DROP");
    refused(
        read(&w.admin, "SELECT 1", None, now().plus_seconds(-600)),
        "check the clocks",
    );
    for (who, k) in [("alice", &w.alice), ("the gateway", &w.gateway)] {
        let r = read(k, "SELECT count(*) FROM events", None, now());
        assert!(!r.ok, "{who} read the ledger");
        refused(r, "may not read the ledger");
    }
    // An agent's key and a stranger's are not even resolved.
    refused(read(&w.a1, "SELECT 1", None, now()), "");
    refused(read(&key(99), "SELECT 1", None, now()), "");
    // A vault operation sent here is not carried out, and a read sent to the vault is refused.
    let bytes = seal_request(
        &Request {
            v: REQUEST_VERSION,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: now(),
            op: token_op("a1", "repo:read", None),
        },
        &w.a1,
    );
    let r: ReadReply = w.rt.block_on(async {
        let r = w.client.request("docket.read", bytes.into()).await.unwrap();
        serde_json::from_slice(&r.payload).unwrap()
    });
    assert!(!r.ok);
    assert_eq!(head, w.head(), "reads append nothing");
    assert_refused(
        &w.ask(
            &w.admin,
            Op::Read {
                sql: "SELECT 1".into(),
                max_rows: None,
            },
        ),
        "answered on docket.read",
    );
}

// ---- docket gateway: the recording reverse proxy in front of a real upstream ----

/// A Python server of the tests (`tests/<script>`) on the free loopback port it prints.
struct PythonServer {
    child: std::process::Child,
    port: u16,
}

/// The upstream API (tests/upstream_api.py).
type Upstream = PythonServer;
/// A real MCP server (tests/mcp_server.py, the official Python SDK).
type McpServer = PythonServer;

impl PythonServer {
    fn run(script: &str) -> PythonServer {
        PythonServer::run_with(script, &[])
    }

    fn run_with(script: &str, args: &[&str]) -> PythonServer {
        use std::io::BufRead;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(script);
        let mut child = std::process::Command::new("python3")
            .arg(path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the test's server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} did not print its port (is its package installed? scripts/setup.sh installs it): {line:?}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{script} did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PythonServer { child, port }
    }

    /// The upstream API.
    fn upstream() -> Upstream {
        PythonServer::run("upstream_api.py")
    }

    /// The MCP server.
    fn mcp() -> McpServer {
        PythonServer::run("mcp_server.py")
    }

    /// How many requests the upstream API has served.
    fn hits(&self) -> u64 {
        let (status, _, body) = http(self.port, "GET", "/__hits", &[], b"");
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()["hits"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `docket gateway` process, listening where it said.
struct Gateway {
    child: std::process::Child,
    port: u16,
}

impl Gateway {
    fn start(w: &World, upstream: &Upstream) -> Gateway {
        Gateway::start_with(w, upstream, None)
    }

    /// With an MCP audience at /mcp in front of `mcp`'s port.
    fn start_with(w: &World, upstream: &Upstream, mcp: Option<u16>) -> Gateway {
        let dir = w._dir.path();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                r#"upstream_timeout_ms = 1000
request_body_max = 1024

[[audience]]
audience = "https://api.github.com"
prefix = "/github"
upstream = "http://127.0.0.1:{}"

[[audience.route]]
method = "GET"
path = "/repos/*/*"
scope = "repo:read"

[[audience.route]]
method = "POST"
path = "/repos/*/*/issues"
scope = "repo:write"

[[audience.route]]
method = "*"
path = "/slow/**"
scope = "repo:read"

[[audience.route]]
method = "GET"
path = "/drop"
scope = "repo:read"
{}"#,
                upstream.port,
                mcp.map(|port| format!(
                    r#"
[[audience]]
audience = "https://mcp.example.com"
prefix = "/mcp"
upstream = "http://127.0.0.1:{port}/mcp"

[audience.mcp]
session_scope = "mcp:session"

[[audience.mcp.tool]]
name = "create_issue"
scope = "issues:write"
"#
                ))
                .unwrap_or_default()
            ),
        )
        .unwrap();
        Gateway::spawn(w, &config)
    }

    /// A gateway with the config file `config`, signing with the world's gateway key.
    fn spawn(w: &World, config: &std::path::Path) -> Gateway {
        use std::io::BufRead;
        let key_file = w._dir.path().join("gateway.key");
        if !key_file.exists() {
            docket_ledger::keyfile::write(&key_file, &w.gateway).unwrap();
        }
        let mut child = std::process::Command::new(DOCKET)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--nats",
                &w.nats_url,
                "--key",
                key_file.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gateway did not say where it listens: {line:?}"));
        Gateway { child, port }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange over a fresh connection: (status, headers lower-cased, body).
fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // The server may answer (413) before reading all of a large body; that is not a failure.
    let _ = s.write_all(req.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `api.called` record a gateway answer names in its `docket-record` header.
fn record_of(w: &World, headers: &[(String, String)]) -> ApiCalled {
    let id = header(headers, "docket-record").expect("the answer names its record");
    let mut found = None;
    w.wait_for("the call's record on the chain", || {
        found = chain_events(&w.serve.data)
            .into_iter()
            .find(|(_, e)| e.id.to_string() == id);
        found.is_some()
    });
    match found.map(|(_, e)| e.body) {
        Some(EventBody::ApiCalled(c)) => c,
        other => panic!("not an api.called: {other:?}"),
    }
}

#[test]
fn the_gateway_forwards_what_the_token_allows_records_each_call_before_answering_and_refuses_the_rest()
 {
    let w = World::new();
    let upstream = PythonServer::upstream();
    let gw = Gateway::start(&w, &upstream);
    grant(&w, "a1");
    let (token_id, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];

    // Allowed: forwarded without the Docket token, answered once its record is held.
    let (status, headers, body) = http(gw.port, "GET", "/github/repos/acme/web?page=2", &auth, b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["path"], "/repos/acme/web?page=2");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the upstream saw the agent's Docket token: {seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    let call = record_of(&w, &headers);
    assert_eq!(
        (call.agent.as_str(), call.token_id.as_str(), call.status),
        ("a1", token_id.as_str(), 200)
    );
    assert_eq!(call.scope.as_deref(), Some("repo:read"));
    assert_eq!(call.operation, "/repos/acme/web");
    assert_eq!(call.refused, None);
    assert_eq!(call.response_bytes, Some(body.len() as u64));
    assert_eq!(
        call.request_hash.as_deref(),
        Some(docket_ledger::gateway::request_hash("GET", "/repos/acme/web?page=2", b"").as_str())
    );
    assert_eq!(upstream.hits(), 1);

    // Refused before forwarding, each with its reason, each on the record.
    let bogus = [("Authorization", "Bearer dkt_not_a_token")];
    let big = vec![b'x'; 2048];
    // (method, path, headers, body, status, the reason says, the record's agent)
    type Refused<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [u8],
        u16,
        &'a str,
        &'a str,
    );
    let refusals: Vec<Refused> = vec![
        (
            "POST",
            "/github/repos/acme/web/issues",
            &auth,
            b"{}",
            403,
            "does not carry scope repo:write",
            "a1",
        ),
        (
            "GET",
            "/github/repos/acme/web",
            &[],
            b"",
            401,
            "no token",
            "unverified",
        ),
        (
            "GET",
            "/github/repos/acme/web",
            &bogus,
            b"",
            401,
            "unknown token",
            "unverified",
        ),
        (
            "DELETE",
            "/github/repos/acme/web",
            &auth,
            b"",
            403,
            "no route allows DELETE",
            "unverified",
        ),
        (
            "POST",
            "/github/repos/acme/web/issues",
            &auth,
            &big,
            413,
            "over 1024 bytes",
            "unverified",
        ),
    ];
    for (method, path, headers, body, want, why, agent) in refusals {
        let (status, h, answer) = http(gw.port, method, path, headers, body);
        let text = String::from_utf8_lossy(&answer).to_string();
        assert_eq!(status, want, "{method} {path}: {text}");
        assert!(text.contains(why), "{method} {path}: {text}");
        let call = record_of(&w, &h);
        assert_eq!(call.status, want);
        assert!(
            call.refused.as_deref().is_some_and(|r| r.contains(why)),
            "{call:?}"
        );
        assert_eq!(call.agent, agent, "{method} {path}");
    }
    let (status, _, _) = http(gw.port, "GET", "/elsewhere/x", &auth, b"");
    assert_eq!(status, 404, "a path under no audience");
    assert_eq!(upstream.hits(), 1, "nothing refused reached the upstream");

    // A slow upstream and one that hangs up: the gateway's own 504 and 502, recorded.
    let (status, h, _) = http(gw.port, "GET", "/github/slow/down", &auth, b"");
    assert_eq!(status, 504);
    assert_eq!(record_of(&w, &h).status, 504);
    let (status, h, _) = http(gw.port, "GET", "/github/drop", &auth, b"");
    assert_eq!(status, 502);
    assert_eq!(record_of(&w, &h).status, 502);

    // Calls the gateway refused are attempts, not uses: no policy finding, no budget spent.
    assert!(w.rules().is_empty(), "{:?}", w.rules());

    // The kill switch: the agent is suspended, its next call is refused and recorded.
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: None,
            grant_id: None,
            agent: Some("a1".into()),
            reason: "kill switch".into(),
        },
    );
    said(&r, Status::Suspended);
    let (status, h, answer) = http(gw.port, "GET", "/github/repos/acme/web", &auth, b"");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&answer));
    assert!(header(&h, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    let call = record_of(&w, &h);
    assert_eq!(
        call.refused.as_deref(),
        Some("the token is not active: agent suspended")
    );
    assert_eq!(
        (call.agent.as_str(), call.token_id.as_str()),
        ("a1", token_id.as_str())
    );
    assert_eq!(upstream.hits(), 3);
    assert_eq!(verify(&w.serve.data).0, 0);
}

#[test]
fn the_gateway_forwards_nothing_when_the_ledger_cannot_be_asked() {
    let mut w = World::new();
    let upstream = PythonServer::upstream();
    let gw = Gateway::start(&w, &upstream);
    grant(&w, "a1");
    let (_, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        http(gw.port, "GET", "/github/repos/acme/web", &auth, b"").0,
        200
    );
    w.serve.stop();
    let (status, _, answer) = http(gw.port, "GET", "/github/repos/acme/web", &auth, b"");
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("nothing was forwarded"), "{text}");
    assert_eq!(upstream.hits(), 1);
}

/// A 2026-07-28 MCP `tools/call` body (per-request protocol fields in `_meta`).
fn tools_call(tool: &str, arguments: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    }))
    .unwrap()
}

#[test]
fn the_gateway_routes_mcp_tool_calls_by_tool_records_the_tool_and_a_hash_of_its_arguments_never_the_arguments()
 {
    let w = World::new();
    let upstream = PythonServer::upstream();
    let mcp = PythonServer::mcp();
    let gw = Gateway::start_with(&w, &upstream, Some(mcp.port));
    let r = w.ask(
        &w.alice,
        Op::Grant {
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://mcp.example.com".into(),
            scopes: vec!["mcp:session".into(), "issues:write".into()],
            expires_at: now().plus_seconds(3600),
            max_calls: None,
            max_token_ttl_s: None,
            approval: vec![],
        },
    );
    said(&r, Status::Granted);
    let (_, secret) = issued(&w.ask(
        &w.a1,
        Op::Token {
            agent: "a1".into(),
            audience: "https://mcp.example.com".into(),
            scopes: vec!["mcp:session".into(), "issues:write".into()],
            action: "file an issue".into(),
            approval_id: None,
            ttl_s: None,
            reply_key: Some(reply_key().public()),
            authorization_details: vec![],
        },
    ));
    let bearer = format!("Bearer {secret}");
    let headers = |tool: &'static str| {
        vec![
            ("Authorization", bearer.clone()),
            ("Content-Type", "application/json".to_string()),
            ("Accept", "application/json, text/event-stream".to_string()),
            ("MCP-Protocol-Version", "2026-07-28".to_string()),
            ("Mcp-Method", "tools/call".to_string()),
            ("Mcp-Name", tool.to_string()),
        ]
    };
    let post = |hs: &[(&str, String)], body: &[u8]| {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(gw.port, "POST", "/mcp", &hs, body)
    };
    let canary = "docket-canary-argument-7f3a";
    let arguments = serde_json::json!({"title": "flaky test", "body": canary});

    // Allowed: the real server answers, the record names the tool and hashes the arguments.
    let (status, h, body) = post(
        &headers("create_issue"),
        &tools_call("create_issue", &arguments),
    );
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("created issue 'flaky test'"), "{text}");
    let call = record_of(&w, &h);
    assert_eq!(call.tool.as_deref(), Some("create_issue"));
    assert_eq!(call.operation, "tools/call create_issue");
    assert_eq!(call.scope.as_deref(), Some("issues:write"));
    assert_eq!(
        call.arguments_hash.as_deref(),
        Some(docket_ledger::gateway::arguments_hash(&arguments).as_str())
    );
    let recorded = serde_json::to_string(&call).unwrap();
    assert!(
        !recorded.contains(canary),
        "an argument was recorded: {recorded}"
    );

    // A tool the config does not list, headers that disagree with the body, a GET.
    let (status, h, body) = post(
        &headers("delete_repo"),
        &tools_call("delete_repo", &serde_json::json!({"name": "acme/web"})),
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let call = record_of(&w, &h);
    assert_eq!(
        (call.tool.as_deref(), call.status),
        (Some("delete_repo"), 403)
    );
    assert!(
        call.refused
            .as_deref()
            .is_some_and(|r| r.contains("no tool \"delete_repo\""))
    );
    let (status, h, body) = post(
        &headers("create_issue"),
        &tools_call("delete_repo", &serde_json::json!({})),
    );
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Mcp-Name header says"), "{text}");
    assert!(record_of(&w, &h).refused.is_some());
    let mut twice = headers("create_issue");
    twice.push(("Mcp-Name", "delete_repo".to_string()));
    let (status, _, body) = post(&twice, &tools_call("create_issue", &arguments));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = http(
        gw.port,
        "GET",
        "/mcp",
        &[("Authorization", bearer.as_str())],
        b"",
    );
    assert_eq!(status, 405);
    // Nothing anywhere on the ledger holds the arguments.
    let export = docket(&["log", "--data", w.serve.data.to_str().unwrap()]);
    assert!(export.status.success());
    assert!(!String::from_utf8_lossy(&export.stdout).contains(canary));
}

// ---- connections: a user's upstream account, held by the vault, attached by the gateway ----

/// A real OAuth 2.0 server (tests/oauth_server.py, Authlib) whose tokens carry `canary`.
fn oauth_server(canary: &str, expires_in_s: u32) -> PythonServer {
    PythonServer::run_with(
        "oauth_server.py",
        &[
            "--client-id",
            "docket-vault",
            "--client-secret",
            "client-secret-of-the-vault",
            "--user",
            "octo",
            "--canary",
            canary,
            "--expires-in",
            &expires_in_s.to_string(),
        ],
    )
}

/// Splits `http://127.0.0.1:PORT/rest` into the port and the rest.
fn loopback_target(url: &str) -> (u16, String) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .expect("a loopback URL");
    let (port, target) = rest.split_at(rest.find('/').unwrap());
    (port.parse().unwrap(), target.to_string())
}

/// Runs `docket connect` as `user` with `key`, playing the browser: opens the address it
/// prints, follows the provider's redirect to its loopback listener. Its exit and output.
fn connect_as(w: &World, key: &SigningKey, user: &str) -> (bool, String, String) {
    use std::io::{BufRead, Read};
    let key_file = w._dir.path().join(format!("{user}-connect.key"));
    let _ = std::fs::remove_file(&key_file);
    docket_ledger::keyfile::write(&key_file, key).unwrap();
    let mut child = std::process::Command::new(DOCKET)
        .args(["connect", "--nats", &w.nats_url, "--key"])
        .arg(&key_file)
        .args(["--user", user, "--provider", "acme", "--wait", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    out.read_line(&mut url).unwrap();
    if url.starts_with("http://") {
        let (port, target) = loopback_target(url.trim());
        let (status, headers, _) = http(port, "GET", &target, &[], b"");
        assert_eq!(status, 302, "the provider redirects the browser back");
        let location = header(&headers, "location")
            .expect("a redirect")
            .to_string();
        let (port, target) = loopback_target(&location);
        let (status, _, page) = http(port, "GET", &target, &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&page));
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let ok = child.wait().unwrap().success();
    (ok, format!("{url}{rest}"), err)
}

/// The provider's record of what it saw (tests/oauth_server.py `/__seen`).
fn provider_seen(p: &PythonServer) -> Value {
    let (status, _, body) = http(p.port, "GET", "/__seen", &[], b"");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

fn provider_hook(p: &PythonServer, target: &str) {
    let (status, _, body) = http(p.port, "POST", target, &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// The `connection.*` events on the chain, as (kind, event JSON).
fn connection_events(w: &World) -> Vec<(String, Value)> {
    log(w)
        .into_iter()
        .filter(|e| kind_of(e).starts_with("connection."))
        .map(|e| (kind_of(&e).to_string(), e["event"].clone()))
        .collect()
}

#[test]
fn a_users_upstream_account_is_linked_refreshed_rotated_rekeyed_broken_and_unlinked_and_no_upstream_secret_leaks()
 {
    const EXPIRES_IN_S: u32 = 3;
    let canary = format!("DKTCANARY{:08x}", rand::random::<u32>());
    let oauth = oauth_server(&canary, EXPIRES_IN_S);
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("connection.key");
    let made = docket(&["vault", "new-key", "--out", key_file.to_str().unwrap()]);
    assert!(made.status.success(), "{made:?}");
    let client_secret = secrets.path().join("client-secret");
    std::fs::write(&client_secret, "client-secret-of-the-vault\n").unwrap();
    let base = format!("http://127.0.0.1:{}", oauth.port);
    let w = World::with_config(
        true,
        &format!(
            r#"
[connections]
key_file = {key_file:?}
refresh_margin_s = 1

[connections.providers.acme]
authorize_url = "{base}/authorize"
token_url = "{base}/token"
revocation_url = "{base}/revoke"
client_id = "docket-vault"
client_secret_file = {client_secret:?}
scopes = ["repo"]
audiences = ["https://api.github.com"]
"#
        ),
    );
    let config = w._dir.path().join("gateway-acme.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[audience]]
audience = "https://api.github.com"
prefix = "/acme"
upstream = "{base}"
provider = "acme"

[[audience.route]]
method = "GET"
path = "/api/**"
scope = "repo:read"
"#
        ),
    )
    .unwrap();
    let gw = Gateway::spawn(&w, &config);
    grant(&w, "a1");
    let (_, secret) = issued(&token(&w, &w.a1, "a1", "repo:read", None));
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    let call = || http(gw.port, "GET", "/acme/api/user/repos", &auth, b"");

    // Before linking: refused, nothing forwarded.
    let (status, _, body) = call();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("alice has no connection to acme"));
    assert_eq!(provider_seen(&oauth)["stats"]["api_calls"], 0);

    // Bob's key cannot link for alice; alice links with PKCE over a loopback redirect.
    let (ok, out, err) = connect_as(&w, &w.bob, "alice");
    assert!(
        !ok && format!("{out}{err}").contains("this key is user bob's, not alice's"),
        "{out}{err}"
    );
    let (ok, out, err) = connect_as(&w, &w.alice, "alice");
    assert!(
        ok,
        "docket connect failed: {out}\n{err}\n{}",
        w.serve.log_text()
    );
    let linked: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(linked["scopes"], serde_json::json!(["repo"]));
    assert_eq!(provider_seen(&oauth)["stats"]["code_exchanges"], 1);

    // A call carries alice's upstream access token (never the agent's), and is recorded.
    let (status, headers, body) = call();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["user"], "octo");
    let first_token = answer["token_index"].as_u64().unwrap();
    assert_eq!(record_of(&w, &headers).status, 200);

    // The access token expires: the vault refreshes, the provider rotates the refresh token.
    std::thread::sleep(Duration::from_secs(u64::from(EXPIRES_IN_S)));
    let (status, _, body) = call();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        answer["token_index"].as_u64().unwrap() > first_token,
        "a fresh token: {answer}"
    );
    let seen = provider_seen(&oauth);
    assert!(seen["stats"]["refreshes"].as_u64().unwrap() >= 1);
    assert_eq!(
        seen["tokens"][first_token as usize]["revoked"], true,
        "the rotated-out refresh token is spent at the provider"
    );
    let events = connection_events(&w);
    let refreshed = events
        .iter()
        .find(|(k, _)| k == "connection.refreshed")
        .expect("a connection.refreshed event");
    assert_eq!(refreshed.1["rotated"], true);
    assert_ne!(refreshed.1["fingerprint"], events[0].1["fingerprint"]);

    // The key is rotated while serve runs: every file re-wrapped, the old key gone, calls go on.
    let rotated = docket(&[
        "vault",
        "rotate-key",
        "--data",
        w.serve.data.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(rotated.status.success(), "{rotated:?}");
    let r: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(
        (r["to_version"].as_u64(), r["rewrapped"].as_u64()),
        (Some(2), Some(1))
    );
    let keys: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert_eq!(keys["keys"].as_object().unwrap().len(), 1, "{keys}");
    std::thread::sleep(Duration::from_secs(u64::from(EXPIRES_IN_S)));
    let (status, _, body) = call();
    assert_eq!(
        status,
        200,
        "after the rotation: {}\nprovider: {}\nserve: {}",
        String::from_utf8_lossy(&body),
        provider_seen(&oauth),
        w.serve.log_text()
    );

    // The provider is down when a refresh is due: bounded retries, a clear 503, on the record.
    provider_hook(&oauth, "/__outage?on=1");
    std::thread::sleep(Duration::from_secs(u64::from(EXPIRES_IN_S)));
    let (status, _, body) = call();
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("failed 3 refresh attempts"), "{text}");
    assert!(
        provider_seen(&oauth)["stats"]["outage_refusals"]
            .as_u64()
            .unwrap()
            >= 3
    );
    w.wait_for("connection.failed (transient)", || {
        connection_events(&w)
            .iter()
            .any(|(k, e)| k == "connection.failed" && e["broken"] == false)
    });
    provider_hook(&oauth, "/__outage?on=0");
    // For a few seconds the vault does not ask again: each call is not another 3 attempts.
    let asked = provider_seen(&oauth)["stats"]["outage_refusals"].clone();
    let (status, _, body) = call();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("a moment ago"));
    assert_eq!(provider_seen(&oauth)["stats"]["outage_refusals"], asked);
    std::thread::sleep(Duration::from_secs(5));
    let (status, _, body) = call();
    assert_eq!(
        status,
        200,
        "after the outage: {}",
        String::from_utf8_lossy(&body)
    );

    // Alice revokes the app at the provider: the next refresh gets invalid_grant, the
    // connection is broken on the record, and calls are refused until she links again.
    provider_hook(&oauth, "/__revoke_user?user=octo");
    std::thread::sleep(Duration::from_secs(u64::from(EXPIRES_IN_S)));
    let (status, _, body) = call();
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("invalid_grant") && text.contains("link"),
        "{text}"
    );
    assert!(
        connection_events(&w)
            .iter()
            .any(|(k, e)| k == "connection.failed" && e["broken"] == true)
    );
    let (status, _, body) = call();
    assert!(
        String::from_utf8_lossy(&body).contains("is broken"),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    let (ok, out, err) = connect_as(&w, &w.alice, "alice");
    assert!(ok, "{out}{err}");
    assert_eq!(call().0, 200, "linked again");

    // Unlinked: the vault deletes the tokens and revokes them at the provider.
    let revocations = provider_seen(&oauth)["stats"]["revocations"]
        .as_u64()
        .unwrap();
    let key = w._dir.path().join("alice-connect.key");
    let out = docket(&[
        "disconnect",
        "--nats",
        &w.nats_url,
        "--key",
        key.to_str().unwrap(),
        "--provider",
        "acme",
        "--reason",
        "done with it",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        provider_seen(&oauth)["stats"]["revocations"]
            .as_u64()
            .unwrap(),
        revocations + 1
    );
    let (status, _, body) = call();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let files: Vec<_> = std::fs::read_dir(w.serve.data.join("connections"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(files.is_empty(), "the unlinked tokens are deleted");
    let kinds: Vec<String> = connection_events(&w).into_iter().map(|(k, _)| k).collect();
    for k in [
        "connection.linked",
        "connection.refreshed",
        "connection.failed",
        "connection.unlinked",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }

    // The canary: the provider issued tokens carrying it, and none reached the ledger's
    // files, its export, its log, SQL, or the gateway's answers.
    assert!(provider_seen(&oauth)["tokens"].as_array().unwrap().len() >= 4);
    assert_no_canary(&w, &canary);
}

/// No file under the ledger's data directory, no export, no `docket log` line, no SQL
/// answer and no server log holds `canary`.
fn assert_no_canary(w: &World, canary: &str) {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(w._dir.path(), &mut files);
    assert!(files.len() > 5, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|x| x == canary.as_bytes()),
            "{} holds an upstream secret",
            f.display()
        );
    }
    let data = w.serve.data.to_str().unwrap();
    let exported = w._dir.path().join("export.jsonl");
    let export = docket(&[
        "export",
        "--data",
        data,
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{export:?}");
    let exported = std::fs::read_to_string(&exported).unwrap();
    assert!(exported.contains("connection.linked") || exported.contains("Y29ubmVjdGlvbi5saW5rZW"));
    assert!(
        !exported.contains(canary),
        "the export holds an upstream secret"
    );
    let log_out = docket(&["log", "--data", data]);
    let sql = docket(&["sql", "--data", data, "SELECT * FROM events"]);
    let state = docket(&["sql", "--data", data, "SELECT * FROM connections"]);
    for (what, out) in [
        ("log", &log_out),
        ("sql", &sql),
        ("sql connections", &state),
    ] {
        assert!(out.status.success(), "{what}: {out:?}");
        assert!(!out.stdout.is_empty(), "{what} printed nothing");
        let text = format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr));
        assert!(
            !text.contains(canary),
            "docket {what} shows an upstream secret"
        );
        assert!(
            text.contains("connection.linked"),
            "{what} shows the connection events"
        );
    }
    assert!(
        !w.serve.log_text().contains(canary),
        "serve's log holds an upstream secret"
    );
}

// ---- RFC 9396: a token bound to the exact action its user approved ----

#[test]
fn a_token_bound_to_an_approved_action_passes_that_action_only_and_the_fold_flags_any_other() {
    let w = World::new();
    let upstream = PythonServer::upstream();
    let gw = Gateway::start(&w, &upstream);
    let grant_id = grant(&w, "a1");
    let body = br#"{"title":"fix the build"}"#;
    let path = "/repos/acme/web/issues";
    let details = vec![AuthorizationDetail {
        kind: DetailType::ApiCall,
        actions: vec!["POST".into()],
        locations: vec![],
        identifier: path.into(),
        request_hash: Some(docket_ledger::gateway::request_hash("POST", path, body)),
        arguments_hash: None,
    }];
    let ask = |approval: Option<&str>, details: &[AuthorizationDetail]| {
        let mut op = token_op("a1", "repo:write", approval);
        if let Op::Token {
            authorization_details,
            ..
        } = &mut op
        {
            *authorization_details = details.to_vec();
        }
        w.ask(&w.a1, op)
    };

    // The approval request carries the exact action: that is what alice approves.
    let approval = pending(&ask(None, &details));
    let requested = log(&w)
        .into_iter()
        .find(|e| kind_of(e) == "approval.requested")
        .expect("the approval request");
    assert_eq!(
        requested["event"]["authorization_details"][0]["identifier"],
        path
    );
    said(
        &approve(&w, &w.alice, &approval, Decision::Approved, None),
        Status::Approved,
    );
    // The agent cannot swap the action after the approval.
    assert_refused(&ask(Some(&approval), &[]), "other authorization_details");
    let (token_id, secret) = issued(&ask(Some(&approval), &details));
    assert_eq!(introspect(&w, &secret).authorization_details, details);

    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    let target = format!("/github{path}");
    let (status, headers, reply) = http(gw.port, "POST", &target, &auth, body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(record_of(&w, &headers).refused, None);
    let hits = upstream.hits();

    // The same token for another body, or another repository: refused and recorded.
    for (target, body) in [
        (target.as_str(), &br#"{"title":"delete everything"}"#[..]),
        ("/github/repos/acme/api/issues", &body[..]),
    ] {
        let (status, headers, reply) = http(gw.port, "POST", target, &auth, body);
        let text = String::from_utf8_lossy(&reply).to_string();
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("not an approved action"), "{text}");
        let call = record_of(&w, &headers);
        assert!(
            call.refused
                .unwrap()
                .contains("bound to POST /repos/acme/web/issues")
        );
    }
    assert_eq!(upstream.hits(), hits, "nothing else reached the upstream");
    assert!(
        !w.rules().iter().any(|r| r.starts_with("call.")),
        "{:?}",
        w.rules()
    );

    // A call recorded elsewhere with the bound token, doing something else, is flagged;
    // so is a token minted on the approval without its binding.
    let n = w.head();
    let other = event(EventBody::ApiCalled(ApiCalled {
        token_id: token_id.clone(),
        token_hash: None,
        agent: "a1".into(),
        audience: "https://api.github.com".into(),
        method: "POST".into(),
        operation: "/repos/acme/api/issues".into(),
        scope: Some("repo:write".into()),
        status: 201,
        source: "10.0.0.9".into(),
        ..Default::default()
    }));
    let unbound = event(EventBody::TokenIssued(TokenIssued {
        token_id: "tok-unbound".into(),
        token_hash: "ab".repeat(32),
        grant_id,
        user: "alice".into(),
        agent: "a1".into(),
        audience: "https://api.github.com".into(),
        scopes: vec!["repo:write".into()],
        expires_at: now().plus_seconds(60),
        approval_id: Some(approval.clone()),
        authorization_details: vec![],
    }));
    w.publish_raw(vec![
        seal_event(&other, &w.gateway),
        seal_event(&unbound, &w.vault),
    ]);
    w.wait_entries(n + 2);
    let rules = w.rules();
    assert!(
        rules.iter().any(|r| r == "call.outside_authorization"),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r == "token.not_as_approved"),
        "{rules:?}"
    );
}

#[test]
fn a_decision_and_a_call_record_carry_receipts_that_check_offline() {
    let w = World::new();
    let grant_op = Op::Grant {
        user: "alice".into(),
        agent: "a1".into(),
        audience: "https://api.github.com".into(),
        scopes: vec!["repo:read".into()],
        expires_at: now().plus_seconds(3600),
        max_calls: None,
        max_token_ttl_s: None,
        approval: vec![],
    };
    let req = Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now(),
        op: grant_op,
    };
    // Asked with the header: the answer waits for a checkpoint and carries the proof.
    let started = std::time::Instant::now();
    let reply: Reply = w.rt.block_on(async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RECEIPT_WAIT_HEADER, "15000");
        let r = w
            .client
            .request_with_headers(
                "docket.vault.grant",
                headers,
                seal_request(&req, &w.alice).into(),
            )
            .await
            .unwrap();
        serde_json::from_slice(&r.payload).unwrap()
    });
    let waited = started.elapsed();
    let o = said(&reply, Status::Granted);
    let receipt = o.receipt.expect("a receipt");
    let proof = receipt.proof.expect("the receipt's proof");
    assert_eq!(proof.seq, receipt.seq);
    assert!(
        waited < Duration::from_secs(5),
        "the ledger was asked for a checkpoint, yet the answer took {waited:?}"
    );
    let key = docket_ledger::store::Store::open_reader(&w.serve.data.join("db"))
        .unwrap()
        .identity()
        .unwrap()
        .ledger_public_key;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receipt.json");
    std::fs::write(&file, serde_json::to_vec(&proof).unwrap()).unwrap();
    let o = docket(&["check-proof", file.to_str().unwrap(), "--ledger-key", &key]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("included: entry {}", receipt.seq)),
        "{}",
        stdout(&o)
    );
    // Over NATS the entry itself is left out: only its hash is proven.
    assert!(proof.entry.is_none());

    // A gateway's record, named by its event id, gets its receipt the same way.
    let e = event(EventBody::ApiCalled(ApiCalled {
        token_id: "tok-x".into(),
        token_hash: None,
        agent: "a1".into(),
        audience: "https://api.github.com".into(),
        method: "GET".into(),
        operation: "/repos/acme/web".into(),
        scope: Some("repo:read".into()),
        status: 200,
        source: "10.0.0.9".into(),
        ..Default::default()
    }));
    w.publish_raw(vec![seal_event(&e, &w.gateway)]);
    let o = docket(&[
        "receipt",
        "--event",
        &e.id.to_string(),
        "--nats",
        &w.nats_url,
        "--wait-ms",
        "15000",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&file, stdout(&o)).unwrap();
    let o = docket(&["check-proof", file.to_str().unwrap(), "--ledger-key", &key]);
    assert!(o.status.success(), "{}", stdout(&o));
    // An id the ledger never saw is refused, not waited on forever.
    let o = docket(&[
        "receipt",
        "--event",
        &EventId(*uuid::Uuid::now_v7().as_bytes()).to_string(),
        "--nats",
        &w.nats_url,
        "--wait-ms",
        "200",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no entry holds event"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
