//! The demo's vault scene: a user grants, an agent asks, a human approves, a gateway checks, a revocation lands.

use anyhow::{Context, Result};
use docket_ledger::transport::VaultCall;
use docket_schemas::vault::{
    Introspection, Op, Outcome, REQUEST_VERSION, Reply, Request, Status, seal_request,
};
use docket_schemas::*;
use docket_testkit::workload::{Expect, Published, Workload, agent_key};
use ed25519_dalek::SigningKey;

const GITHUB: &str = "https://api.github.com";

/// The admin registers the demo user's own key, so the user can sign grants and approvals.
pub fn user_registration(w: &Workload, user: &SigningKey) -> Result<Published> {
    let pk = user.verifying_key();
    let event = Event {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: docket_ledger::clock::now()?,
        body: EventBody::KeyRegistered(KeyRegistered {
            key_id: key_id(pk.as_bytes()),
            public_key: encode_base64(pk.as_bytes()),
            name: "user:user-0".into(),
            // The person watching the demo is also its analyst: they may triage its findings.
            kinds: vec![
                Kind::ApprovalDecided,
                Kind::FindingTriaged,
                Kind::FindingSuppressed,
            ],
        }),
    };
    Ok(Published {
        subject: "docket.events.key.registered".into(),
        envelope: seal_event(&event, &w.roles.admin),
        id: Some(event.id),
        expect: Expect::Append,
    })
}

/// How the scene reaches the vault: NATS request/reply when the demo runs over NATS,
/// the ledger's own inbox otherwise (the same decision path either way).
pub enum VaultLine {
    Nats(async_nats::Client),
    Inbox(tokio::sync::mpsc::Sender<VaultCall>),
}

async fn ask(line: &VaultLine, key: &SigningKey, op: Op) -> Result<Reply> {
    let subject = format!("docket.vault.{}", op.name());
    let request = Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: docket_ledger::clock::now()?,
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

/// An outcome (not an introspection), as the scene expects.
pub async fn decide(line: &VaultLine, key: &SigningKey, op: Op) -> Result<Outcome> {
    match ask(line, key, op).await? {
        Reply::Outcome(o) => Ok(o),
        Reply::Introspection(i) => {
            anyhow::bail!("expected an outcome, got an introspection: {i:?}")
        }
    }
}

/// An introspection, as a gateway gets.
async fn introspect(line: &VaultLine, key: &SigningKey, token: String) -> Result<Introspection> {
    match ask(line, key, Op::Introspect { token }).await? {
        Reply::Introspection(i) => Ok(i),
        Reply::Outcome(o) => anyhow::bail!("introspection refused: {:?}", o.error),
    }
}

/// The status in words, or the refusal.
fn said(o: &Outcome) -> String {
    match (&o.status, &o.error) {
        (Some(s), _) => serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| format!("{s:?}")),
        (None, Some(e)) => format!("refused ({e})"),
        (None, None) => "no status".into(),
    }
}

fn receipt(o: &Outcome) -> String {
    match &o.receipt {
        Some(r) => format!(" [ledger seq {}]", r.seq),
        None => String::new(),
    }
}

/// The scene's one-time reply key: the vault seals token secrets to it.
pub fn reply_key() -> docket_schemas::seal::ReplyKey {
    docket_schemas::seal::ReplyKey::from_bytes(*blake3::hash(b"docket demo reply key").as_bytes())
}

pub fn token_op(scope: &str, approval: Option<String>) -> Op {
    Op::Token {
        agent: "agent-0".into(),
        audience: GITHUB.into(),
        scopes: vec![scope.into()],
        action: format!("{scope}: open a pull request on acme/web"),
        approval_id: approval,
        ttl_s: Some(300),
        reply_key: Some(reply_key().public()),
        authorization_details: vec![],
    }
}

/// user-0 grants agent-0 repo:read, and repo:write with a human's approval, for an hour.
fn grant_op(now: Timestamp) -> Op {
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
    }
}

/// Plays the scene through the vault's real decision path (the NATS request/reply hop aside).
pub async fn play(tx: &VaultLine, w: &Workload, user: &SigningKey) -> Result<()> {
    println!("vault scene:");
    let agent = agent_key(0);
    let now = docket_ledger::clock::now()?;
    let g = decide(tx, user, grant_op(now)).await?;
    println!(
        "  user-0 grants agent-0 repo:read and repo:write (approval needed) on {GITHUB}: {}{}",
        said(&g),
        receipt(&g)
    );
    let t = decide(tx, &agent, token_op("repo:read", None)).await?;
    let secret = t
        .open_token(&reply_key())
        .context("no token for repo:read")?;
    println!(
        "  agent-0 asks for repo:read: {} {} (secret {}…, shown once, only its hash is kept){}",
        said(&t),
        t.token_id.as_deref().unwrap_or("-"),
        secret.chars().take(12).collect::<String>(),
        receipt(&t)
    );
    let i = introspect(tx, &w.roles.gateway, secret.clone()).await?;
    println!(
        "  gateway introspects it: active={} scope={}",
        i.active,
        i.scope.as_deref().unwrap_or("-")
    );
    let p = decide(tx, &agent, token_op("repo:write", None)).await?;
    let approval = p
        .approval_id
        .clone()
        .context("no approval request for repo:write")?;
    println!(
        "  agent-0 asks for repo:write: {} (approval {approval}){}",
        said(&p),
        receipt(&p)
    );
    let a = decide(
        tx,
        user,
        Op::Approve {
            approval_id: approval.clone(),
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
        said(&a),
        receipt(&a)
    );
    let t2 = decide(tx, &agent, token_op("repo:write", Some(approval))).await?;
    println!(
        "  agent-0 polls: {} {}{}",
        said(&t2),
        t2.token_id.as_deref().unwrap_or("-"),
        receipt(&t2)
    );
    let secret2 = t2
        .open_token(&reply_key())
        .context("no token for repo:write after approval")?;
    let spoof = decide(tx, &agent_key(1), token_op("repo:read", None)).await?;
    println!(
        "  agent-1 asks as agent-0: {}, and the refusal is recorded{}",
        said(&spoof),
        receipt(&spoof)
    );
    let r = decide(
        tx,
        user,
        Op::Revoke {
            token_id: None,
            grant_id: g.grant_id.clone(),
            agent: None,
            reason: "task done".into(),
        },
    )
    .await?;
    println!("  user-0 revokes the grant: {}{}", said(&r), receipt(&r));
    let i2 = introspect(tx, &w.roles.gateway, secret2).await?;
    println!(
        "  gateway introspects the repo:write token: active={}",
        i2.active
    );
    anyhow::ensure!(
        i.active && !i2.active && t2.status == Some(Status::Issued) && !spoof.ok,
        "the vault scene did not go as scripted"
    );
    Ok(())
}

/// Leaves a request waiting for the demo's user: a new grant whose `repo:write` needs approval,
/// and agent-0 asking for it. Returns the approval id; the agent keeps polling it ([`poll`]).
pub async fn leave_waiting(tx: &VaultLine, user: &SigningKey) -> Result<String> {
    let now = docket_ledger::clock::now()?;
    let g = decide(tx, user, grant_op(now)).await?;
    anyhow::ensure!(g.ok, "the demo's grant was refused: {:?}", g.error);
    let p = decide(tx, &agent_key(0), token_op("repo:write", None)).await?;
    p.approval_id
        .context("agent-0's request for repo:write did not wait for an approval")
}

/// agent-0 asks again about `approval` (CIBA's poll): Ok(true) once the token is issued,
/// Ok(false) while it waits; a denial or expiry is an error that says so.
pub async fn poll(tx: &VaultLine, approval: &str) -> Result<bool> {
    let o = decide(
        tx,
        &agent_key(0),
        token_op("repo:write", Some(approval.to_string())),
    )
    .await?;
    match o.status {
        Some(Status::Issued) => Ok(true),
        Some(Status::Pending) => Ok(false),
        _ => anyhow::bail!("agent-0's request ended: {}", said(&o)),
    }
}
