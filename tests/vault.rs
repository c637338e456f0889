//! The vault end to end: a real nats-server, the real `docket serve --vault-key`, signed requests from agents, users and a gateway.

mod common;

use std::time::Duration;

use common::*;
use docket_ledger::vault::{Op, Request, seal_request};
use docket_schemas::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

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
    bob: SigningKey,
    a1: SigningKey,
    a2: SigningKey,
    rt: tokio::runtime::Runtime,
}

fn key(n: u8) -> SigningKey {
    let mut seed = [n; 32];
    seed[0] = rand::random();
    SigningKey::from_bytes(&seed)
}

fn now() -> Timestamp {
    Timestamp::from_micros(docket_ledger::ingest::now_us()).unwrap()
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
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
        let roles = docket_ledger::workload::Roles::from_seed(rand::random());
        let (vault, gateway, alice, bob, a1, a2) = (key(1), key(2), key(3), key(4), key(5), key(6));
        let vault_file = dir.path().join("vault.key");
        docket_ledger::keyfile::write(&vault_file, &vault).unwrap();
        let config = dir.path().join("docket.toml");
        std::fs::write(
            &config,
            format!(
                "approval_ttl_s = 2\nvault_key = {:?}\n",
                vault_file.to_str().unwrap()
            ),
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
            bob,
            a1,
            a2,
            rt,
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
        let n = setup.len() as u64;
        w.publish_raw(setup);
        w.wait_entries(if register_vault { n } else { n - 2 });
        w
    }

    fn publish_raw(&self, envelopes: Vec<Vec<u8>>) {
        self.rt.block_on(async {
            for e in envelopes {
                self.js
                    .publish("docket.events.x", e.into())
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

    fn ask(&self, k: &SigningKey, op: Op) -> Value {
        let subject = format!("docket.vault.{}", op.name());
        let req = Request {
            v: 1,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: now(),
            op,
        };
        self.send_to(&subject, seal_request(&req, k))
    }

    /// Sends to the introspection subject (answered outside the ledger's loop).
    fn send(&self, bytes: Vec<u8>) -> Value {
        self.send_to("docket.vault.introspect", bytes)
    }

    fn send_to(&self, subject: &str, bytes: Vec<u8>) -> Value {
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
    assert_eq!(r["status"], "granted", "{r}");
    assert!(r["receipt"]["seq"].as_u64().unwrap() > 0);
    r["grant_id"].as_str().unwrap().to_string()
}

fn token(w: &World, k: &SigningKey, agent: &str, scope: &str, approval: Option<&str>) -> Value {
    w.ask(
        k,
        Op::Token {
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            scopes: vec![scope.into()],
            action: format!("{scope} on acme/web"),
            approval_id: approval.map(String::from),
            ttl_s: None,
        },
    )
}

fn introspect(w: &World, t: &str) -> Value {
    w.ask(&w.gateway, Op::Introspect { token: t.into() })
}

fn approve(w: &World, k: &SigningKey, id: &str, decision: Decision, step_up: Option<i64>) -> Value {
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
fn approve_proven(w: &World, id: &str, step_up: StepUpAssertion) -> Value {
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

#[track_caller]
fn assert_refused(r: &Value, why: &str) {
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap_or_default().contains(why),
        "expected {why:?}: {r}"
    );
}

#[test]
fn vault_flows_end_to_end() {
    let w = World::new();
    let mut secrets = Vec::new();
    let grant_id = grant(&w, "a1");

    // grant, token, introspect, call, revoke, introspect inactive, call flagged
    let t = token(&w, &w.a1, "a1", "repo:read", None);
    assert_eq!(t["status"], "issued", "{t}");
    let secret = t["token"].as_str().unwrap().to_string();
    secrets.push(secret.clone());
    let i = introspect(&w, &secret);
    assert_eq!(
        i,
        json!({"active": true, "scope": "repo:read", "client_id": "a1", "sub": "alice", "aud": "https://api.github.com",
        "exp": i["exp"], "iat": i["iat"], "jti": t["token_id"]})
    );
    assert_eq!(introspect(&w, "dkt_not_a_token"), json!({"active": false}));
    let n = head(&w.serve.data).unwrap().0;
    w.call_api(t["token_id"].as_str().unwrap(), "a1");
    w.wait_entries(n + 1);
    assert!(w.findings().is_empty(), "{:?}", w.findings());
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: t["token_id"].as_str().map(String::from),
            grant_id: None,
            agent: None,
            reason: "done".into(),
        },
    );
    assert_eq!(r["status"], "revoked", "{r}");
    assert_eq!(introspect(&w, &secret), json!({"active": false}));
    let n = head(&w.serve.data).unwrap().0;
    w.call_api(t["token_id"].as_str().unwrap(), "a1");
    w.wait_entries(n + 1);
    assert_eq!(w.findings(), vec!["call.revoked_token"]);

    // approval pending, approved, issued; the user is notified
    let notes =
        w.rt.block_on(w.client.subscribe("docket.approvals.alice"))
            .unwrap();
    let p = token(&w, &w.a1, "a1", "repo:write", None);
    assert_eq!(p["status"], "pending", "{p}");
    let id = p["approval_id"].as_str().unwrap().to_string();
    let note: Value = w.rt.block_on(async {
        let mut notes = notes;
        let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut notes))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&m.payload).unwrap()
    });
    assert_eq!(note["binding_message"], "repo:write on acme/web");
    assert_eq!(
        token(&w, &w.a1, "a1", "repo:write", Some(&id))["status"],
        "pending"
    );
    let wrong = approve(&w, &w.bob, &id, Decision::Approved, None);
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .contains("bob may not do this"),
        "{wrong}"
    );
    assert_eq!(
        approve(&w, &w.alice, &id, Decision::Approved, None)["status"],
        "approved"
    );
    let t2 = token(&w, &w.a1, "a1", "repo:write", Some(&id));
    assert_eq!(t2["status"], "issued", "{t2}");
    secrets.push(t2["token"].as_str().unwrap().to_string());
    let again = token(&w, &w.a1, "a1", "repo:write", Some(&id));
    assert!(
        again["error"].as_str().unwrap().contains("already used"),
        "{again}"
    );

    // bob cannot approve alice's request by publishing the event himself, nor grant alice's agents
    let p = token(&w, &w.a1, "a1", "repo:write", None);
    let id = p["approval_id"].as_str().unwrap().to_string();
    let forged = event(EventBody::ApprovalDecided(ApprovalDecided {
        approval_id: id.clone(),
        user: "alice".into(),
        decision: Decision::Approved,
        method: ApprovalMethod::Push,
        auth_time: None,
        reason: None,
        step_up: None,
    }));
    let n = head(&w.serve.data).unwrap().0;
    w.publish_raw(vec![seal_event(&forged, &w.bob)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        head(&w.serve.data).unwrap().0,
        n,
        "bob's approval on alice's behalf entered the chain"
    );
    assert!(quarantine_codes(&w.serve.data).contains(&"unauthorized_kind".to_string()));
    assert_eq!(
        token(&w, &w.a1, "a1", "repo:write", Some(&id))["status"],
        "pending"
    );
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
    assert!(
        steer["error"]
            .as_str()
            .unwrap()
            .contains("belongs to alice"),
        "{steer}"
    );
    assert_eq!(
        approve(&w, &w.alice, &id, Decision::Denied, None)["status"],
        "denied"
    );

    // denied
    let p = token(&w, &w.a1, "a1", "repo:write", None);
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        approve(&w, &w.alice, &id, Decision::Denied, None)["status"],
        "denied"
    );
    assert!(
        token(&w, &w.a1, "a1", "repo:write", Some(&id))["error"]
            .as_str()
            .unwrap()
            .contains("denied")
    );

    // expired request (the test config gives approvals two seconds)
    let p = token(&w, &w.a1, "a1", "repo:write", None);
    let id = p["approval_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        approve(&w, &w.alice, &id, Decision::Approved, None)["error"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert!(
        token(&w, &w.a1, "a1", "repo:write", Some(&id))["error"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // critical: the user's key alone cannot prove a step-up, only the step-up key's
    // assertion for this approval, fresh, can
    let p = token(&w, &w.a1, "a1", "repo:delete", None);
    let id = p["approval_id"].as_str().unwrap().to_string();
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
    let proven = approve_proven(&w, &id, assertion(&w.alice_step_up, &id, 10));
    assert_eq!(proven["status"], "approved", "{proven}");
    let decided = stdout(&docket(&["log", "--data", w.serve.data.to_str().unwrap()]))
        .lines()
        .filter(|l| l.contains("\"approval.decided\"") && l.contains(&id))
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(decided.len(), 1, "only the proven decision is recorded");
    assert!(decided[0].contains("\"step_up\""), "{}", decided[0]);
    let t3 = token(&w, &w.a1, "a1", "repo:delete", Some(&id));
    assert_eq!(t3["status"], "issued", "{t3}");
    secrets.push(t3["token"].as_str().unwrap().to_string());

    // grant revocation cascades to its tokens
    assert_eq!(introspect(&w, &secrets[1])["active"], true);
    let r = w.ask(
        &w.alice,
        Op::Revoke {
            token_id: None,
            grant_id: Some(grant_id),
            agent: None,
            reason: "project over".into(),
        },
    );
    assert_eq!(r["status"], "revoked");
    assert_eq!(introspect(&w, &secrets[1])["active"], false);
    assert_eq!(introspect(&w, &secrets[2])["active"], false);
    assert!(
        token(&w, &w.a1, "a1", "repo:read", None)["error"]
            .as_str()
            .unwrap()
            .contains("no active grant")
    );

    // agent suspension ends its tokens and its requests
    grant(&w, "a2");
    let t4 = token(&w, &w.a2, "a2", "repo:read", None);
    secrets.push(t4["token"].as_str().unwrap().to_string());
    assert_eq!(introspect(&w, &secrets[3])["active"], true);
    assert_eq!(
        w.ask(
            &w.alice,
            Op::Revoke {
                token_id: None,
                grant_id: None,
                agent: Some("a2".into()),
                reason: "odd".into()
            }
        )["status"],
        "suspended"
    );
    assert_eq!(introspect(&w, &secrets[3])["active"], false);
    assert!(
        token(&w, &w.a2, "a2", "repo:read", None)["error"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );

    // a token request signed by another agent's key, an unregistered key, a replay: refused and recorded
    let spoof = token(&w, &w.a1, "a2", "repo:read", None);
    assert!(
        spoof["error"]
            .as_str()
            .unwrap()
            .contains("a1 may not do this"),
        "{spoof}"
    );
    let stranger = token(&w, &key(9), "a1", "repo:read", None);
    assert_refused(&stranger, "(the caller's) is not registered");
    let req = Request {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now(),
        op: Op::Introspect {
            token: secrets[0].clone(),
        },
    };
    let bytes = seal_request(&req, &w.gateway);
    assert_eq!(w.send(bytes.clone())["active"], false);
    assert!(w.send(bytes)["error"].as_str().unwrap().contains("replay"));
    let refused = stdout(&docket(&["log", "--data", w.serve.data.to_str().unwrap()]))
        .lines()
        .filter(|l| l.contains("\"request.refused\""))
        .count();
    assert!(
        refused >= 10,
        "refusals are recorded in the chain ({refused})"
    );

    // point in time: as of the first token's receipt it was active; now it is revoked
    let data = w.serve.data.to_str().unwrap();
    let at = t["receipt"]["seq"].as_u64().unwrap().to_string();
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
            .find(|l| l.contains(t["token_id"].as_str().unwrap()))
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

    // state agrees with a replay; the chain verifies
    let o = docket(&["state", "rebuild", "--data", w.serve.data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(verify(&w.serve.data).0, 0);

    // no token secret anywhere: data directory, logs, exports
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
    assert_eq!(r["ok"], false, "{r}");
    assert_refused(&r, "did not record");
    assert_refused(
        &r,
        &format!(
            "key {} (the vault's) is not registered",
            key_id(w.vault.verifying_key().as_bytes())
        ),
    );
    assert!(
        r.get("grant_id").is_none() && r.get("receipt").is_none(),
        "{r}"
    );
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
        let n = head(&w.serve.data).unwrap().0;
        w.publish_raw(vec![seal_event(&e, &w.alice)]);
        w.wait_entries(n + 1);
    };
    let pending = |scope: &str| {
        let p = token(&w, &w.a1, "a1", scope, None);
        assert_eq!(p["status"], "pending", "{p}");
        p["approval_id"].as_str().unwrap().to_string()
    };
    let id = pending("repo:delete");
    publish(&id, None);
    assert_eq!(w.findings(), vec!["approval.step_up_unproven"]);
    assert_refused(
        &token(&w, &w.a1, "a1", "repo:delete", Some(&id)),
        "required authentication",
    );
    // Signed by her own key instead of her step-up key: flagged too.
    let id = pending("repo:delete");
    publish(&id, Some(assertion(&w.alice, &id, 10)));
    assert_eq!(
        w.findings(),
        vec!["approval.step_up_unproven", "approval.step_up_unproven"]
    );
    // With her step-up key's assertion: no finding, and the token is issued.
    let id = pending("repo:delete");
    publish(&id, Some(assertion(&w.alice_step_up, &id, 10)));
    assert_eq!(w.findings().len(), 2, "{:?}", w.findings());
    let t = token(&w, &w.a1, "a1", "repo:delete", Some(&id));
    assert_eq!(t["status"], "issued", "{t}");
    let o = docket(&["state", "rebuild", "--data", w.serve.data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(verify(&w.serve.data).0, 0);
}

#[test]
fn introspection_by_a_key_that_may_not_is_refused_and_recorded() {
    let w = World::new();
    grant(&w, "a1");
    let t = token(&w, &w.a1, "a1", "repo:read", None);
    let secret = t["token"].as_str().unwrap().to_string();
    // An agent and a user may not introspect: a refusal with a reason, not "inactive".
    for (k, who) in [(&w.a1, "a1"), (&w.alice, "alice")] {
        let r = w.ask(
            k,
            Op::Introspect {
                token: secret.clone(),
            },
        );
        assert_refused(&r, &format!("{who} may not do this: introspect tokens"));
        assert!(r.get("active").is_none(), "{r}");
        assert!(r["receipt"]["seq"].as_u64().is_some(), "recorded: {r}");
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
    let refusals: Vec<Value> = stdout(&docket(&["log", "--data", w.serve.data.to_str().unwrap()]))
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v.to_string().contains("request.refused")
                && v.to_string().contains("\"op\":\"introspect\"")
        })
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    // The gateway still gets its answer.
    assert_eq!(introspect(&w, &secret)["active"], true);
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
    let p = token(&w, &w.a1, "a1", "repo:delete", None);
    let id = p["approval_id"].as_str().unwrap().to_string();
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
    let t = token(&w, &w.a1, "a1", "repo:delete", Some(&id));
    assert_eq!(t["status"], "issued", "{t}");
}
