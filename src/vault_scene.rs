//! The demo's vault scene: a user grants, an agent asks, a human approves, a gateway checks, a revocation lands.

use anyhow::Result;
use docket_ledger::ingest::{VaultCall, now_us};
use docket_ledger::vault::{Op, Request, seal_request};
use docket_ledger::workload::{Expect, Published, Workload, agent_key};
use docket_schemas::*;
use ed25519_dalek::SigningKey;
use serde_json::Value;

const GITHUB: &str = "https://api.github.com";

/// The admin registers the demo user's own key, so the user can sign grants and approvals.
pub fn user_registration(w: &Workload, user: &SigningKey) -> Published {
    let pk = user.verifying_key();
    let event = Event {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: Timestamp::from_micros(now_us()).unwrap_or(Timestamp::UNIX_EPOCH),
        body: EventBody::KeyRegistered(KeyRegistered {
            key_id: key_id(pk.as_bytes()),
            public_key: encode_base64(pk.as_bytes()),
            name: "user:user-0".into(),
            kinds: vec![Kind::ApprovalDecided],
        }),
    };
    Published {
        subject: "docket.events.key.registered".into(),
        envelope: seal_event(&event, &w.roles.admin),
        id: Some(event.id),
        expect: Expect::Append,
    }
}

/// How the scene reaches the vault: NATS request/reply when the demo runs over NATS,
/// the ledger's own inbox otherwise (the same decision path either way).
pub enum VaultLine {
    Nats(async_nats::Client),
    Inbox(tokio::sync::mpsc::Sender<VaultCall>),
}

async fn ask(line: &VaultLine, key: &SigningKey, op: Op) -> Result<Value> {
    let subject = format!("docket.vault.{}", op.name());
    let request = Request {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: Timestamp::from_micros(now_us()).unwrap_or(Timestamp::UNIX_EPOCH),
        op,
    };
    let bytes = seal_request(&request, key);
    match line {
        VaultLine::Nats(client) => {
            // The vault subscribes in its own task: give it a moment to be there.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match client.request(subject.clone(), bytes.clone().into()).await {
                    Ok(reply) => return Ok(serde_json::from_slice(&reply.payload)?),
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        VaultLine::Inbox(tx) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tx.send(VaultCall {
                request: bytes.into(),
                reply,
            })
            .await?;
            Ok(answer.await?)
        }
    }
}

fn receipt(v: &Value) -> String {
    match v["receipt"]["seq"].as_u64() {
        Some(seq) => format!(" [ledger seq {seq}]"),
        None => String::new(),
    }
}

fn token_op(scope: &str, approval: Option<String>) -> Op {
    Op::Token {
        agent: "agent-0".into(),
        audience: GITHUB.into(),
        scopes: vec![scope.into()],
        action: format!("{scope}: open a pull request on acme/web"),
        approval_id: approval,
        ttl_s: Some(300),
    }
}

/// Plays the scene through the vault's real decision path (the NATS request/reply hop aside).
pub async fn play(tx: &VaultLine, w: &Workload, user: &SigningKey) -> Result<()> {
    println!("vault scene:");
    let agent = agent_key(0);
    let now = Timestamp::from_micros(now_us()).unwrap_or(Timestamp::UNIX_EPOCH);
    let g = ask(
        tx,
        user,
        Op::Grant {
            user: "user-0".into(),
            agent: "agent-0".into(),
            audience: GITHUB.into(),
            scopes: vec!["repo:read".into(), "repo:write".into()],
            expires_at: now.plus_seconds(3_600),
            max_calls: Some(1_000),
            max_token_ttl_s: Some(600),
            approval: vec![ApprovalRule {
                scope: "repo:write".into(),
                risk: Risk::High,
            }],
        },
    )
    .await?;
    println!(
        "  user-0 grants agent-0 repo:read and repo:write (approval needed) on {GITHUB}: {}{}",
        g["status"],
        receipt(&g)
    );
    let t = ask(tx, &agent, token_op("repo:read", None)).await?;
    let secret = t["token"].as_str().unwrap_or_default().to_string();
    println!(
        "  agent-0 asks for repo:read: {} {} (secret {}…, shown once, only its hash is kept){}",
        t["status"],
        t["token_id"],
        secret.chars().take(12).collect::<String>(),
        receipt(&t)
    );
    let i = ask(
        tx,
        &w.roles.gateway,
        Op::Introspect {
            token: secret.clone(),
        },
    )
    .await?;
    println!(
        "  gateway introspects it: active={} scope={}",
        i["active"], i["scope"]
    );
    let p = ask(tx, &agent, token_op("repo:write", None)).await?;
    let approval = p["approval_id"].as_str().map(String::from);
    println!(
        "  agent-0 asks for repo:write: {} (approval {}){}",
        p["status"],
        p["approval_id"],
        receipt(&p)
    );
    let a = ask(
        tx,
        user,
        Op::Approve {
            approval_id: approval.clone().unwrap_or_default(),
            decision: Decision::Approved,
            method: ApprovalMethod::Push,
            auth_time: None,
            reason: None,
            step_up: None,
        },
    )
    .await?;
    println!(
        "  user-0 approves on their phone: {}{}",
        a["status"],
        receipt(&a)
    );
    let t2 = ask(tx, &agent, token_op("repo:write", approval)).await?;
    let secret2 = t2["token"].as_str().unwrap_or_default().to_string();
    println!(
        "  agent-0 polls: {} {}{}",
        t2["status"],
        t2["token_id"],
        receipt(&t2)
    );
    let spoof = ask(tx, &agent_key(1), token_op("repo:read", None)).await?;
    println!(
        "  agent-1 asks as agent-0: refused ({}), and the refusal is recorded{}",
        spoof["error"].as_str().unwrap_or_default(),
        receipt(&spoof)
    );
    let r = ask(
        tx,
        user,
        Op::Revoke {
            token_id: None,
            grant_id: g["grant_id"].as_str().map(String::from),
            agent: None,
            reason: "task done".into(),
        },
    )
    .await?;
    println!("  user-0 revokes the grant: {}{}", r["status"], receipt(&r));
    let i2 = ask(tx, &w.roles.gateway, Op::Introspect { token: secret2 }).await?;
    println!(
        "  gateway introspects the repo:write token: active={}",
        i2["active"]
    );
    anyhow::ensure!(
        i["active"] == true && i2["active"] == false && t2["status"] == "issued",
        "the vault scene did not go as scripted"
    );
    Ok(())
}
