//! CLI clients of the vault: grant, token, approve, revoke, introspect; each request signed with the caller's key.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_ledger::keyfile;
use docket_schemas::vault::{Op, REQUEST_VERSION, Reply, Request, Status, seal_request};
use docket_schemas::{
    ApprovalMethod, ApprovalRule, Decision, EventId, Risk, StepUpAssertion, StepUpClaim, Timestamp,
};
use serde_json::Value;

#[derive(Args)]
pub struct Client {
    /// NATS server URL (the vault answers on docket.vault.> and docket.connections.>).
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats: String,
    #[command(flatten)]
    pub(crate) nats_auth: crate::NatsAuthArgs,
    /// Your key file: a user's, an agent's, a gateway's or the admin's.
    #[arg(long, env = "DOCKET_KEY")]
    pub(crate) key: PathBuf,
    /// Print only this field of the answer (e.g. grant_id, approval_id, token), for scripts;
    /// the exit status still says whether the vault agreed.
    #[arg(long, value_name = "NAME")]
    field: Option<String>,
    /// Wait up to this many milliseconds for the decision's receipt: its inclusion proof
    /// under a signed checkpoint, in `receipt.proof` (check it with `docket check-proof`).
    #[arg(long, value_name = "MS")]
    pub(crate) receipt_wait_ms: Option<u64>,
}

#[derive(Args)]
pub struct GrantArgs {
    #[command(flatten)]
    client: Client,
    /// The user granting access (your key must be `user:<this user>`, or the admin's).
    #[arg(long)]
    user: String,
    /// The agent receiving the grant (it must be registered and owned by the user).
    #[arg(long)]
    agent: String,
    /// The API the grant is for (an OAuth audience, e.g. https://api.github.com).
    #[arg(long)]
    audience: String,
    /// A scope to grant (repeat).
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// Lifetime of the grant, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    expires_in: i64,
    /// Most API calls the agent may make under this grant, in all (no budget when absent).
    #[arg(long, value_name = "CALLS")]
    max_calls: Option<u64>,
    /// Longest lifetime of a token issued under this grant, in seconds (the policy's longest when absent).
    #[arg(long, value_name = "SECONDS")]
    max_token_ttl: Option<u32>,
    /// A scope that needs approval, as SCOPE=low|high|critical (repeat).
    #[arg(long = "approval")]
    approvals: Vec<String>,
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    client: Client,
    /// The agent asking (your key must be this agent's registered key).
    #[arg(long)]
    agent: String,
    /// The API the token is for.
    #[arg(long)]
    audience: String,
    /// A scope the token should carry (repeat); each must be in the grant.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// What you are about to do; shown to the approver.
    #[arg(long)]
    action: String,
    /// Poll this pending approval.
    #[arg(long)]
    approval_id: Option<String>,
    /// Keep polling while the approval is pending, up to this many seconds (CIBA poll mode).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,
    /// The token's lifetime, in seconds (at most the grant's and the policy's longest).
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u32>,
    /// Bind the token to these exact actions (RFC 9396): a JSON array of
    /// `{"type":"api_call","actions":["POST"],"identifier":"/repos/acme/web/issues","request_hash":"..."}`
    /// or `{"type":"mcp_tool","actions":["tools/call"],"identifier":"create_issue","arguments_hash":"..."}`.
    /// The approver sees them; the gateway passes nothing else with the token.
    #[arg(long, value_name = "JSON")]
    authorization_details: Option<String>,
}

#[derive(Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    client: Client,
    /// The pending request to decide (`approval_id` in the agent's pending answer, or `docket state approvals`).
    #[arg(long)]
    approval_id: String,
    /// Deny instead of approving.
    #[arg(long)]
    deny: bool,
    /// Your step-up key file (the admin registered it as "stepup:<user>"): signs an
    /// assertion that you authenticated strongly for this approval, which critical
    /// approvals need. Your own key alone cannot prove a step-up.
    #[arg(long, requires = "user")]
    step_up_key: Option<PathBuf>,
    /// Whose approval this is (the step-up assertion names the user).
    #[arg(long)]
    user: Option<String>,
    /// When you authenticated strongly (passkey, MFA), RFC 3339 UTC (e.g. 2026-12-01T06:25:15Z); default now. Needs --step-up-key.
    #[arg(long, requires = "step_up_key")]
    step_up_at: Option<String>,
    /// Why you decided so; recorded with the decision.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    client: Client,
    /// Revoke this token (its id, as in `docket state tokens`).
    #[arg(long)]
    token_id: Option<String>,
    /// Revoke this grant; every token issued under it ends too.
    #[arg(long)]
    grant_id: Option<String>,
    /// Suspend this agent (every token it holds ends).
    #[arg(long)]
    agent: Option<String>,
    /// Why; recorded with the revocation (required: an auditor will ask).
    #[arg(long)]
    reason: String,
}

#[derive(Args)]
pub struct IntrospectArgs {
    #[command(flatten)]
    client: Client,
    /// The token presented to the gateway.
    #[arg(long)]
    token: String,
}

fn now() -> Result<Timestamp> {
    Ok(docket_ledger::clock::now()?)
}

async fn call(client: &Client, op: Op) -> Result<Reply> {
    let key = keyfile::read(&client.key)?;
    let nats = docket_ledger::transport::connect(&client.nats, &client.nats_auth.auth()).await?;
    let Some(wait) = client.receipt_wait_ms else {
        return request(&nats, &key, op).await;
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        docket_schemas::vault::RECEIPT_WAIT_HEADER,
        wait.to_string().as_str(),
    );
    let subject = format!("docket.vault.{}", op.name());
    let patience = VAULT_ANSWER_TIMEOUT + Duration::from_millis(wait);
    ask_with(&nats, &key, subject, op, patience, "a vault reply", headers).await
}

/// Signs `op` with `key` and asks the vault over `nats`; its answer, or why there is none.
pub async fn request(
    nats: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    op: Op,
) -> Result<Reply> {
    request_within(nats, key, op, VAULT_ANSWER_TIMEOUT).await
}

/// How long a command waits for the vault's answer.
pub const VAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// [`request`], waiting at most `patience` for the answer.
pub async fn request_within(
    nats: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    op: Op,
    patience: Duration,
) -> Result<Reply> {
    let subject = format!("docket.vault.{}", op.name());
    ask(nats, key, subject, op, patience, "a vault reply").await
}

/// Signs `op` with `key`, sends it on `subject`, and reads the answer as `T` (`what` names
/// it in errors): the client side of every signed request to `serve`.
pub async fn ask<T: serde::de::DeserializeOwned>(
    nats: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    subject: String,
    op: Op,
    patience: Duration,
    what: &str,
) -> Result<T> {
    ask_with(
        nats,
        key,
        subject,
        op,
        patience,
        what,
        async_nats::HeaderMap::new(),
    )
    .await
}

/// [`ask`] with NATS headers on the request (unsigned: they may only ask for more, such
/// as a receipt's proof, never change what is decided).
pub async fn ask_with<T: serde::de::DeserializeOwned>(
    nats: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    subject: String,
    op: Op,
    patience: Duration,
    what: &str,
    headers: async_nats::HeaderMap,
) -> Result<T> {
    let request = Request {
        v: REQUEST_VERSION,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: now()?,
        op,
    };
    let reply = tokio::time::timeout(
        patience,
        nats.request_with_headers(subject, headers, seal_request(&request, key).into()),
    )
    .await
    .with_context(|| {
        format!(
            "the vault did not answer within {} ms",
            patience.as_millis()
        )
    })?
    .context(
        "no answer from the vault: is `docket serve --vault-key` running, and may this NATS \
         identity read its own replies (--nats-inbox-prefix)?",
    )?;
    serde_json::from_slice(&reply.payload).with_context(|| {
        format!(
            "the answer is not {what} (docs/FORMAT.md, \"Vault requests\"): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

fn finish(client: &Client, reply: &Reply) -> Result<std::process::ExitCode> {
    finish_value(client, reply, serde_json::to_value(reply)?)
}

/// `finish`, printing `shown` (the reply as the user should see it) for `reply`.
fn finish_value(client: &Client, reply: &Reply, shown: Value) -> Result<std::process::ExitCode> {
    let refused = matches!(reply, Reply::Outcome(o) if !o.ok);
    // --field names a field of the reply as documented; the typed reply is printed as JSON.
    let reply = shown;
    match &client.field {
        // A refusal has no such field; show the vault's reason instead of an empty line.
        Some(name) if !refused => match reply.get(name.as_str()).unwrap_or(&Value::Null) {
            Value::Null => bail!(
                "the vault's answer has no field {name:?}: {}",
                serde_json::to_string(&reply)?
            ),
            Value::String(text) => println!("{text}"),
            other => println!("{other}"),
        },
        Some(_) => eprintln!("{}", serde_json::to_string_pretty(&reply)?),
        None => println!("{}", serde_json::to_string_pretty(&reply)?),
    }
    Ok(if refused {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

pub async fn grant(a: GrantArgs) -> Result<std::process::ExitCode> {
    let approval = a
        .approvals
        .iter()
        .map(|s| {
            let (scope, risk) = s
                .split_once('=')
                .context("--approval takes SCOPE=low|high|critical")?;
            let risk = match risk {
                "low" => Risk::Low,
                "high" => Risk::High,
                "critical" => Risk::Critical,
                other => bail!("unknown risk {other:?}"),
            };
            Ok(ApprovalRule {
                scope: scope.into(),
                risk,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let op = Op::Grant {
        user: a.user,
        agent: a.agent,
        audience: a.audience,
        scopes: a.scopes,
        expires_at: now()?.plus_seconds(a.expires_in),
        max_calls: a.max_calls,
        max_token_ttl_s: a.max_token_ttl,
        approval,
    };
    finish(&a.client, &call(&a.client, op).await?)
}

pub async fn token(a: TokenArgs) -> Result<std::process::ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let mut approval_id = a.approval_id.clone();
    let details: Vec<docket_schemas::AuthorizationDetail> = match &a.authorization_details {
        Some(json) => serde_json::from_str(json).context(
            "--authorization-details: not a JSON array of authorization details (docs/FORMAT.md, \
             \"Bound to the exact action\")",
        )?,
        None => Vec::new(),
    };
    loop {
        // A one-time key per request: the vault seals the token's secret to it.
        let reply_key = docket_schemas::seal::ReplyKey::from_bytes(rand::random());
        let op = Op::Token {
            agent: a.agent.clone(),
            audience: a.audience.clone(),
            scopes: a.scopes.clone(),
            action: a.action.clone(),
            approval_id: approval_id.clone(),
            ttl_s: a.ttl,
            reply_key: Some(reply_key.public()),
            authorization_details: details.clone(),
        };
        let reply = call(&a.client, op).await?;
        let pending = match &reply {
            Reply::Outcome(o) if o.status == Some(Status::Pending) => o.approval_id.clone(),
            _ => None,
        };
        if pending.is_none() || Instant::now() >= deadline {
            if let Some(id) = &pending {
                eprintln!(
                    "pending: a human must decide approval {id} (`docket approve --approval-id {id}` \
                     with the user's key); then ask again with --approval-id {id}, or use --wait SECONDS"
                );
            }
            return finish_value(&a.client, &reply, opened(&reply, &reply_key)?);
        }
        approval_id = pending;
        eprintln!(
            "pending approval {}; polling",
            approval_id.as_deref().unwrap_or("?")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn approve(a: ApproveArgs) -> Result<std::process::ExitCode> {
    let step_up = match (&a.step_up_key, &a.user) {
        (Some(path), Some(user)) => {
            let key = keyfile::read(path).context("--step-up-key")?;
            let auth_time = match a.step_up_at.as_deref() {
                Some(t) => Timestamp::parse_human(t).context("--step-up-at")?,
                None => now()?,
            };
            let claim = StepUpClaim {
                v: 1,
                user: user.clone(),
                approval_id: a.approval_id.clone(),
                auth_time,
            };
            Some(StepUpAssertion::seal(&claim, &key))
        }
        _ => None,
    };
    let op = decide_op(a.approval_id, !a.deny, step_up, a.reason);
    finish(&a.client, &call(&a.client, op).await?)
}

/// A user's decision on a pending request: a step-up assertion, when there is one, makes it a
/// step-up decision dated at the strong authentication's time.
pub fn decide_op(
    approval_id: String,
    approve: bool,
    step_up: Option<StepUpAssertion>,
    reason: Option<String>,
) -> Op {
    let auth_time = step_up
        .as_ref()
        .and_then(|s| s.decode().ok())
        .map(|d| d.claim.auth_time);
    Op::Approve {
        approval_id,
        decision: if approve {
            Decision::Approved
        } else {
            Decision::Denied
        },
        method: if auth_time.is_some() {
            ApprovalMethod::StepUp
        } else {
            ApprovalMethod::Push
        },
        auth_time,
        reason,
        step_up,
    }
}

pub async fn revoke(a: RevokeArgs) -> Result<std::process::ExitCode> {
    let op = Op::Revoke {
        token_id: a.token_id,
        grant_id: a.grant_id,
        agent: a.agent,
        reason: a.reason,
    };
    finish(&a.client, &call(&a.client, op).await?)
}

pub async fn introspect(a: IntrospectArgs) -> Result<std::process::ExitCode> {
    finish(
        &a.client,
        &call(&a.client, Op::Introspect { token: a.token }).await?,
    )
}

/// The reply as the agent sees it: an issued token's secret opened with the request's
/// one-time key and shown as `token` (what crossed the bus was `sealed_token`).
fn opened(reply: &Reply, key: &docket_schemas::seal::ReplyKey) -> Result<Value> {
    let mut shown = serde_json::to_value(reply)?;
    if let (Reply::Outcome(o), Some(map)) = (reply, shown.as_object_mut())
        && o.sealed_token.is_some()
    {
        let secret = o
            .open_token(key)
            .context("the vault's sealed token does not open with this request's key")?;
        map.remove("sealed_token");
        map.insert("token".into(), Value::String(secret));
    }
    Ok(shown)
}
