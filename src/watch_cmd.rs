//! `docket watch`: the shell around the terminal UI: reads the ledger beside a running `serve`, feeds the UI, and carries out what it asks (vault decisions, signed triage, SQL).
//!
//! The UI (`docket-tui`) is pure model, update and view on its own thread; this shell
//! is everything with I/O. It follows the store (new entries, read through a kept
//! reader and decoded once), refreshes the state, findings and approvals through the
//! query layer every second, watches the NATS connection, and turns each UI command
//! into a vault request signed with `--key` or a signed event whose fate it waits for.
//! Nothing it prints goes to the terminal while the UI owns it: outcomes go to the UI.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_ledger::keyfile;
use docket_ledger::registry::USER_KEY_PREFIX;
use docket_ledger::store::{Store, decode_record};
use docket_query::render::text_cells;
use docket_query::session::{AuditSession, SessionCache, SessionOptions};
use docket_schemas::checkpoint::Checkpoint;
use docket_schemas::envelope::Envelope;
use docket_schemas::vault::{Op, Reply};
use docket_schemas::{Level, Risk, StepUpAssertion, StepUpClaim};
use docket_tui::model::{
    AgentDetail, AgentRow, ApprovalRow, CheckpointFigure, Connection, EntryDetail, EventRow,
    FindingRow, Holding, HoldingKind, Model, OverviewFigures, QueryResult,
};
use docket_tui::update::{Command, Msg};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Messages waiting for the UI; a full queue makes the feeder wait, not drop.
const MSG_QUEUE_MAX: usize = 256;
/// Commands waiting for the shell.
const COMMAND_QUEUE_MAX: usize = 32;
/// How often the shell looks for new entries.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
/// How often state, findings, approvals and agents are asked again, at most.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// A refresh waits at least this many times as long as the last one took: on a large ledger,
/// where asking again is slow, the UI takes a bounded share of a core (a quarter), not all of it.
const REFRESH_SPACING: u32 = 4;
/// Newest entries read per look: a UI that fell behind a fast ledger shows the latest, and
/// says how many it skipped, rather than reading everything it missed.
const EVENTS_PER_LOOK_MAX: u64 = 2_000;
/// Rows of a query result handed to the UI.
const QUERY_ROWS_MAX: usize = 1_000;
/// Rows the shell reads for one of its own screens at most (each query also says its LIMIT).
const SHELL_ROWS_MAX: usize = 5_000;
/// Findings handed to the UI per refresh, newest first.
const FINDINGS_SHOWN_MAX: usize = 2_000;
/// Entries in an opened agent's timeline.
const TIMELINE_MAX: usize = 200;
/// How long a triage event may take to reach the chain before the UI is told it is pending.
const FATE_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct WatchArgs {
    /// The ledger's data directory, read directly on the ledger's machine. Without it the UI
    /// reads over NATS (`docket.read`, signed with --key: the admin's or an analyst's).
    #[arg(long, env = "DOCKET_DATA")]
    data: Option<PathBuf>,
    /// NATS server URL: decisions and triage go through it, and the header shows whether it is up.
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: crate::NatsAuthArgs,
    /// Your key file: a user's (approve, deny), an analyst's (triage) or the admin's (revoke,
    /// suspend). Without it the UI is read-only.
    #[arg(long, env = "DOCKET_KEY")]
    key: Option<PathBuf>,
    /// Your step-up key file ("stepup:<user>"): approving a critical request needs it.
    #[arg(long)]
    step_up_key: Option<PathBuf>,
    /// Who decides, as triage events record it (`by`).
    #[arg(long, env = "USER", default_value = "analyst")]
    by: String,
    /// Hide every action: watch only.
    #[arg(long)]
    readonly: bool,
}

impl WatchArgs {
    /// What `docket demo` opens on a terminal: its ledger, its NATS server, its user's key.
    pub fn for_demo(data: PathBuf, nats: String, key: PathBuf, by: &str) -> WatchArgs {
        WatchArgs {
            data: Some(data),
            nats,
            nats_auth: crate::NatsAuthArgs::default(),
            key: Some(key),
            step_up_key: None,
            by: by.to_string(),
            readonly: false,
        }
    }
}

fn now_us() -> i64 {
    docket_ledger::clock::now().map_or(0, |t| t.as_micros())
}

/// Hands `msg` to the UI, waiting while its queue is full; false once the UI is gone.
async fn send(tx: &SyncSender<Msg>, mut msg: Msg) -> bool {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(m)) => {
                msg = m;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

pub async fn run(args: WatchArgs) -> Result<std::process::ExitCode> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "docket watch needs a terminal; for scripts use `docket findings`, `docket state` or `docket sql`"
        );
    }
    if let Some(data) = &args.data
        && !data.join("db").exists()
    {
        bail!(
            "{}: no ledger here (run `docket serve --data {}` first)",
            data.display(),
            data.display()
        );
    }
    let key = match &args.key {
        Some(p) => Some(keyfile::read(p).with_context(|| format!("--key {}", p.display()))?),
        None => None,
    };
    let place = match (&args.data, &key) {
        (Some(data), _) => Place::Local(data.clone()),
        (None, Some(key)) => Place::Remote(key.clone()),
        (None, None) => bail!(
            "without --data the UI reads over NATS, and reads are signed: give --key (the admin's \
             or an analyst's, registered for finding.triaged; add --readonly to only watch), or \
             --data DIR on the ledger's machine"
        ),
    };
    let step_up = match &args.step_up_key {
        Some(p) => {
            Some(keyfile::read(p).with_context(|| format!("--step-up-key {}", p.display()))?)
        }
        None => None,
    };
    let readonly = args.readonly || key.is_none();
    let (msg_tx, msg_rx) = std::sync::mpsc::sync_channel(MSG_QUEUE_MAX);
    let (cmd_tx, cmd_rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE_MAX);
    let model = Model::new(readonly, now_us());
    // Registered before the terminal is taken over: a signal then ends the UI the way `q`
    // does, so the terminal is given back, rather than killing the process in raw mode.
    let signalled = quit_on_signal(msg_tx.clone())?;
    let ui = tokio::task::spawn_blocking(move || {
        docket_tui::terminal::run(model, msg_rx, cmd_tx, now_us)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (nats_tx, nats_rx) = watch::channel(None);
    let key_id = key
        .as_ref()
        .map(|k| docket_schemas::keys::key_id(&k.verifying_key().to_bytes()));
    let reader = |nats: &watch::Receiver<Option<async_nats::Client>>| match &place {
        Place::Local(data) => Reader::Local {
            data: data.clone(),
            cache: SessionCache::default(),
        },
        Place::Remote(key) => Reader::Remote {
            nats: nats.clone(),
            key: key.clone(),
        },
    };
    let follower = tokio::spawn(follow(
        reader(&nats_rx),
        key_id,
        msg_tx.clone(),
        Arc::clone(&stop),
    ));
    let connector = tokio::spawn(connect(
        args.nats.clone(),
        args.nats_auth.auth(),
        nats_tx,
        msg_tx.clone(),
        Arc::clone(&stop),
    ));
    let (atx, mut arx) = tokio::sync::mpsc::channel::<Command>(COMMAND_QUEUE_MAX);
    let bridge = tokio::task::spawn_blocking(move || {
        while let Ok(c) = cmd_rx.recv() {
            if atx.blocking_send(c).is_err() {
                break;
            }
        }
    });
    let mut actor_reader = reader(&nats_rx);
    let actor = Actor {
        key,
        step_up,
        by: args.by.clone(),
        nats: nats_rx,
        ui: msg_tx,
    };
    let commands = tokio::spawn(async move {
        while let Some(c) = arx.recv().await {
            actor.carry_out(c, &mut actor_reader).await;
        }
    });
    let outcome = ui.await;
    let signal = if signalled.is_finished() {
        Some(signalled.await)
    } else {
        signalled.abort();
        None
    };
    stop.store(true, Ordering::Relaxed);
    commands.abort();
    follower.abort();
    connector.abort();
    let _ = bridge.await;
    match outcome {
        Ok(Ok(frames)) => {
            if let (Some(p50), Some(p99)) = (frames.p50_us(), frames.p99_us()) {
                tracing::info!(
                    frames = frames.frames(),
                    p50_us = p50,
                    p99_us = p99,
                    "frame times"
                );
            }
            Ok(match signal {
                // As a shell reports a process a signal ended: 128 plus its number.
                Some(Ok(n)) => std::process::ExitCode::from(128u8.saturating_add(n)),
                _ => std::process::ExitCode::SUCCESS,
            })
        }
        Ok(Err(e)) => Err(e).context("the terminal UI stopped"),
        Err(e) => bail!("the terminal UI panicked: {e}"),
    }
}

/// Waits for SIGINT, SIGTERM, SIGHUP or SIGQUIT and asks the UI to quit (as Ctrl-C would);
/// resolves to the signal's number.
fn quit_on_signal(ui: SyncSender<Msg>) -> Result<tokio::task::JoinHandle<u8>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    Ok(tokio::spawn(async move {
        let n = tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
            _ = quit.recv() => 3,
        };
        send(&ui, Msg::Key(docket_tui::Key::Ctrl('c'))).await;
        n
    }))
}

/// Keeps a NATS connection for the commands and tells the UI whether it is up; a lost
/// connection is retried by the client itself, and a first connection until it succeeds.
async fn connect(
    url: String,
    auth: docket_ledger::transport::NatsAuth,
    out: watch::Sender<Option<async_nats::Client>>,
    ui: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let mut attempt = 0u32;
    let since = now_us();
    let client = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match docket_ledger::transport::connect(&url, &auth).await {
            Ok(c) => break c,
            Err(e) => {
                attempt += 1;
                let msg = Msg::Connection(Connection::Connecting {
                    since_us: since,
                    error: e.to_string(),
                    attempt,
                });
                if !send(&ui, msg).await {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    if !send(&ui, Msg::Connection(Connection::Connected)).await {
        return;
    }
    let _ = out.send(Some(client.clone()));
    let mut up = true;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let now_up = client.connection_state() == async_nats::connection::State::Connected;
        if now_up == up {
            continue;
        }
        up = now_up;
        let msg = if up {
            Msg::Connection(Connection::Connected)
        } else {
            Msg::Connection(Connection::Lost {
                since_us: now_us(),
                error: format!("NATS at {url} does not answer; the client retries by itself"),
            })
        };
        if !send(&ui, msg).await {
            return;
        }
    }
}

/// Follows the store: new entries every look, the rest every refresh.
async fn follow(
    mut reader: Reader,
    key_id: Option<String>,
    ui: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let mut shown: Option<u64> = None;
    let mut last_refresh: Option<Instant> = None;
    let mut refresh_every = REFRESH_INTERVAL;
    let mut rate_from: Option<(Instant, u64)> = None;
    let mut rate = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let outcome = look(&mut reader, &mut shown, &ui).await;
        if let Err(e) = outcome {
            let msg = Msg::ActionOutcome {
                action: "reading the ledger".into(),
                outcome: Err(format!("{e:#}")),
            };
            if !send(&ui, msg).await {
                return;
            }
            reader.start_over();
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= refresh_every) {
            let head = shown.unwrap_or(0);
            let now = Instant::now();
            if let Some((t, seq)) = rate_from {
                let secs = now.duration_since(t).as_secs_f64();
                if secs > 0.0 {
                    rate = (head.saturating_sub(seq) as f64 / secs).round() as u64;
                }
            }
            rate_from = Some((now, head));
            last_refresh = Some(now);
            let refreshed = refresh(&mut reader, rate, key_id.as_deref()).await;
            refresh_every = REFRESH_INTERVAL.max(now.elapsed() * REFRESH_SPACING);
            match refreshed {
                Ok(msgs) => {
                    for m in msgs {
                        if !send(&ui, m).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let msg = Msg::ActionOutcome {
                        action: "refreshing".into(),
                        outcome: Err(format!("{e:#}")),
                    };
                    if !send(&ui, msg).await {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

async fn session(data: &std::path::Path, cache: &mut SessionCache) -> Result<AuditSession> {
    let options = SessionOptions {
        seal: false,
        ..SessionOptions::default()
    };
    Ok(AuditSession::open_cached(data, options, cache).await?)
}

/// Sends the entries appended since the last look.
async fn look(reader: &mut Reader, shown: &mut Option<u64>, ui: &SyncSender<Msg>) -> Result<()> {
    let head = reader.head().await?;
    let from = match *shown {
        Some(s) if s >= head => return Ok(()),
        Some(s) => s.max(head.saturating_sub(EVENTS_PER_LOOK_MAX)),
        None => head.saturating_sub(EVENTS_PER_LOOK_MAX / 10),
    };
    let rows = event_rows(reader, &format!("seq > {from} AND seq <= {head}"), None).await?;
    *shown = Some(head);
    send(ui, Msg::Events(rows)).await;
    Ok(())
}

const EVENT_COLUMNS: &str = "seq, CAST(ts AS BIGINT) AS t, kind, agent, \"user\", audience, key_id, method, \
     operation, status, source, decision, risk, reason, token_id, grant_id, approval_id, actor";

async fn event_rows(
    reader: &mut Reader,
    filter: &str,
    newest: Option<usize>,
) -> Result<Vec<EventRow>> {
    let sql = match newest {
        None => format!("SELECT {EVENT_COLUMNS} FROM events WHERE {filter} ORDER BY seq"),
        Some(n) => {
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE {filter} ORDER BY seq DESC LIMIT {n}")
        }
    };
    let rows = reader.rows(&sql).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let get = |i: usize| r.get(i).cloned().unwrap_or_default();
        let Ok(seq) = get(0).parse::<u64>() else {
            continue;
        };
        let kind = get(2);
        out.push(EventRow {
            seq,
            ts_us: get(1).parse().unwrap_or(0),
            summary: summary(&kind, &r),
            kind,
            agent: get(3),
            user: get(4),
            audience: get(5),
            signer_key_id: get(6),
        });
    }
    Ok(out)
}

/// One line about an entry, from the columns of [`EVENT_COLUMNS`].
fn summary(kind: &str, r: &[String]) -> String {
    let get = |i: usize| r.get(i).map_or("", String::as_str);
    match kind {
        "api.called" => format!("{} {} → {} from {}", get(7), get(8), get(9), get(10)),
        "approval.requested" => format!("asks {} ({} risk) {}", get(4), get(12), get(16)),
        "approval.decided" => format!("{} by {} {}", get(11), get(4), get(16)),
        "token.issued" => format!("token {} under {}", get(14), get(15)),
        "grant.created" => format!("grant {} to {}", get(15), get(3)),
        "grant.revoked" | "token.revoked" | "agent.suspended" | "key.revoked" => {
            format!("by {}: {}", get(17), get(13))
        }
        "request.refused" => format!("{} refused: {}", get(8), get(13)),
        "finding.triaged" => format!("{} by {}", get(11), get(17)),
        _ => String::new(),
    }
}

/// A list cell as text (`[a, b]`) back into its items.
fn items(cell: &str) -> Vec<String> {
    let inner = cell.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

async fn refresh(reader: &mut Reader, rate: u64, key_id: Option<&str>) -> Result<Vec<Msg>> {
    let counts = reader
        .rows(
            "SELECT (SELECT count(*) FROM agents) AS agents, \
                    (SELECT count(*) FROM grants_state WHERE status = 'active') AS grants, \
                    (SELECT count(*) FROM tokens_state WHERE status = 'active') AS tokens, \
                    (SELECT count(*) FROM approvals_state WHERE status = 'pending') AS pending, \
                    (SELECT count(*) FROM rejections) AS rejected",
        )
        .await?;
    let n = |i: usize| {
        counts
            .first()
            .and_then(|r| r.get(i))
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let chain = reader.chain(key_id).await?;
    let findings = reader
        .rows(&format!(
            "SELECT finding, rule, COALESCE(title, rule) AS title, severity, COALESCE(agent, '') AS agent, \
             COALESCE(\"user\", '') AS who, COALESCE(audience, '') AS audience, message, \
             COALESCE(observed, '') AS observed, COALESCE(baseline, '') AS baseline, evidence, triage, seq, \
             CAST(ts AS BIGINT) AS ts_us \
             FROM findings ORDER BY seq DESC LIMIT {FINDINGS_SHOWN_MAX}"
        ))
        .await?;
    let mut by_level: Vec<(Level, u64)> = Level::ALL.iter().rev().map(|l| (*l, 0)).collect();
    let mut finding_rows = Vec::with_capacity(findings.len());
    for r in &findings {
        let Some(level) = Level::parse(&r[3]) else {
            continue;
        };
        let triage = r[11].as_str();
        let status = match triage {
            "open" | "suppressed" => None,
            other => serde_json::from_value(json!(other)).ok(),
        };
        if (triage == "open" || triage == "reopened")
            && let Some(c) = by_level.iter_mut().find(|(l, _)| *l == level)
        {
            c.1 += 1;
        }
        finding_rows.push(FindingRow {
            finding_id: r[0].clone(),
            rule_id: r[1].clone(),
            title: r[2].clone(),
            level,
            agent: r[4].clone(),
            user: r[5].clone(),
            audience: r[6].clone(),
            explanation: r[7].clone(),
            observed: r[8].clone(),
            baseline: r[9].clone(),
            evidence_seqs: items(&r[10])
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            status,
            suppressed: triage == "suppressed",
            seq: r[12].parse().unwrap_or(0),
            ts_us: r[13].parse().unwrap_or(0),
        });
    }
    let approvals = reader
        .rows(
            "SELECT approval_id, agent, \"user\", audience, scopes, risk, binding_message, \
             CAST(expires_at AS BIGINT) AS expires_us FROM approvals_state WHERE status = 'pending' \
             ORDER BY expires_at",
        )
        .await?;
    let approval_rows = approvals
        .iter()
        .filter_map(|r| {
            let risk: Risk = serde_json::from_value(json!(r[5])).ok()?;
            Some(ApprovalRow {
                approval_id: r[0].clone(),
                agent: r[1].clone(),
                user: r[2].clone(),
                audience: r[3].clone(),
                scopes: items(&r[4]),
                step_up_required: risk == Risk::Critical,
                risk,
                binding_message: r[6].clone(),
                expires_at_us: r[7].parse().unwrap_or(0),
            })
        })
        .collect();
    let agents = reader
        .rows(
            "SELECT a.agent, a.status, COALESCE(g.calls, 0) AS calls, COALESCE(g.active, 0) AS grants, \
                    COALESCE(t.live, 0) AS live, COALESCE(f.open, 0) AS open \
             FROM agents a \
             LEFT JOIN (SELECT agent, sum(calls) AS calls, \
                        sum(CASE WHEN status = 'active' THEN 1 ELSE 0 END) AS active \
                        FROM grants_state GROUP BY agent) g ON g.agent = a.agent \
             LEFT JOIN (SELECT agent, count(*) AS live FROM tokens_state WHERE status = 'active' \
                        GROUP BY agent) t ON t.agent = a.agent \
             LEFT JOIN (SELECT agent, count(*) AS open FROM findings \
                        WHERE triage IN ('open', 'reopened') GROUP BY agent) f ON f.agent = a.agent \
             ORDER BY a.agent",
        )
        .await?;
    let agent_rows = agents
        .iter()
        .map(|r| AgentRow {
            name: r[0].clone(),
            suspended: r[1] == "suspended",
            calls: r[2].parse().unwrap_or(0),
            grants: r[3].parse().unwrap_or(0),
            live_tokens: r[4].parse().unwrap_or(0),
            open_findings: r[5].parse().unwrap_or(0),
        })
        .collect();
    let overview = OverviewFigures {
        ingest_events_per_s: rate,
        head_seq: chain.head,
        head_hash: chain.hash,
        checkpoint: chain.checkpoint,
        agents: n(0),
        active_grants: n(1),
        live_tokens: n(2),
        pending_approvals: n(3),
        open_findings: by_level,
        rejected_events: n(4),
    };
    Ok(vec![
        Msg::You(chain.you),
        Msg::Overview(overview),
        Msg::Findings(finding_rows),
        Msg::Approvals(approval_rows),
        Msg::Agents(agent_rows),
    ])
}

/// Whether the ledger's key signed `note` and its root is the stored tree's at `size`.
fn checkpoint_holds(store: &Store, size: u64, note: &str) -> bool {
    let (Ok(identity), Ok(key)) = (store.identity(), store.ledger_key()) else {
        return false;
    };
    let Ok(c) = Checkpoint::verify(note, &identity.origin, &key) else {
        return false;
    };
    if c.size != size {
        return false;
    }
    store.tree_root(size).is_ok_and(|root| root == c.root)
}

/// Carries out the UI's commands.
struct Actor {
    key: Option<SigningKey>,
    step_up: Option<SigningKey>,
    by: String,
    nats: watch::Receiver<Option<async_nats::Client>>,
    ui: SyncSender<Msg>,
}

impl Actor {
    async fn carry_out(&self, c: Command, reader: &mut Reader) {
        let action = c.describe();
        let msg = match c {
            Command::Quit => return,
            Command::RunQuery { sql } => match query(reader, &sql).await {
                Ok(r) => Msg::QueryResult(r),
                Err(e) => Msg::QueryFailed(format!("{e:#}")),
            },
            Command::OpenEntry { seq } => match reader.entry(seq).await {
                Ok(d) => Msg::EntryDetail(d),
                Err(e) => Msg::EntryFailed {
                    seq,
                    error: format!("{e:#}"),
                },
            },
            Command::OpenAgent { agent } => match agent_detail(reader, &agent).await {
                Ok(d) => Msg::AgentDetail(d),
                Err(e) => Msg::ActionOutcome {
                    action,
                    outcome: Err(format!("{e:#}")),
                },
            },
            other => Msg::ActionOutcome {
                action,
                outcome: self.act(other, reader).await.map_err(|e| format!("{e:#}")),
            },
        };
        send(&self.ui, msg).await;
    }

    fn nats(&self) -> Result<async_nats::Client> {
        self.nats
            .borrow()
            .clone()
            .context("not connected to NATS yet: the header says why")
    }

    fn key(&self) -> Result<&SigningKey> {
        self.key.as_ref().context("no --key: this UI is read-only")
    }

    async fn act(&self, c: Command, reader: &mut Reader) -> Result<String> {
        let reason = format!("from docket watch by {}", self.by);
        match c {
            Command::Decide {
                approval_id,
                approve,
            } => {
                let step_up = match (&self.step_up, approve) {
                    (Some(k), true) => Some(step_up_assertion(reader, &approval_id, k).await?),
                    _ => None,
                };
                let op = crate::vault_cmd::decide_op(approval_id, approve, step_up, Some(reason));
                self.vault(op).await
            }
            Command::RevokeToken { token_id } => {
                self.vault(Op::Revoke {
                    token_id: Some(token_id),
                    grant_id: None,
                    agent: None,
                    reason,
                })
                .await
            }
            Command::RevokeGrant { grant_id } => {
                self.vault(Op::Revoke {
                    token_id: None,
                    grant_id: Some(grant_id),
                    agent: None,
                    reason,
                })
                .await
            }
            Command::SuspendAgent { agent } => {
                self.vault(Op::Revoke {
                    token_id: None,
                    grant_id: None,
                    agent: Some(agent),
                    reason,
                })
                .await
            }
            Command::Triage {
                finding_ids,
                status,
                reason: why,
            } => {
                let events = finding_ids
                    .iter()
                    .map(|id| {
                        let mut e = json!({"kind": "finding.triaged", "finding": id,
                            "status": status.as_str(), "by": self.by});
                        if let Some(r) = why {
                            e["reason"] = json!(r.as_str());
                        }
                        e
                    })
                    .collect();
                self.record(events, reader).await
            }
            Command::Suppress {
                rule_id,
                agent,
                until_us,
            } => {
                let until = docket_schemas::Timestamp::from_micros(until_us)
                    .context("the suppression's end is not a time")?;
                let mut e = json!({"kind": "finding.suppressed", "rule_id": rule_id,
                    "until": until.to_string(), "reason": reason, "by": self.by});
                if let Some(a) = agent {
                    e["agent"] = json!(a);
                }
                self.record(vec![e], reader).await
            }
            Command::Quit
            | Command::RunQuery { .. }
            | Command::OpenEntry { .. }
            | Command::OpenAgent { .. } => Ok(String::new()),
        }
    }

    async fn vault(&self, op: Op) -> Result<String> {
        let reply = crate::vault_cmd::request(&self.nats()?, self.key()?, op).await?;
        match reply {
            Reply::Outcome(o) if o.ok => Ok(match o.status {
                Some(s) => format!("the vault agreed ({})", serde_json::to_value(s)?),
                None => "the vault agreed".to_string(),
            }),
            Reply::Outcome(o) => bail!(
                "the vault refused: {}",
                o.error.unwrap_or_else(|| "no reason given".into())
            ),
            Reply::Introspection(_) => bail!("the vault answered with an introspection"),
        }
    }

    /// Signs and publishes `events`, then waits to see each on the chain. The store beside the
    /// UI says so, whoever runs the ledger (`serve`, or the demo's in-process one).
    async fn record(&self, events: Vec<Value>, reader: &mut Reader) -> Result<String> {
        use docket_ledger::publisher::{Publisher, Sink, prepare};
        let client = self.nats()?;
        let key = self.key()?;
        let mut publisher = Publisher::new(Sink::Nats(async_nats::jetstream::new(client)));
        let mut ids = Vec::with_capacity(events.len());
        let mut failed: Option<String> = None;
        let mut report = |_: u64, r: Result<_, String>| {
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        };
        for e in &events {
            let id = docket_schemas::EventId(*uuid::Uuid::now_v7().as_bytes());
            let (subject, envelope, id) =
                prepare(&e.to_string(), key, docket_ledger::clock::now()?, id)?;
            publisher
                .send(subject, envelope, Some(id), &mut report)
                .await?;
            ids.push(id);
        }
        publisher.flush(&mut report).await;
        if let Some(e) = failed {
            bail!("JetStream did not take it: {e}");
        }
        let until = Instant::now() + FATE_PATIENCE;
        let mut seqs = Vec::with_capacity(ids.len());
        for id in &ids {
            loop {
                if let Some(seq) = reader.seq_of(id).await? {
                    seqs.push(seq);
                    break;
                }
                if Instant::now() >= until {
                    bail!(
                        "not on the chain after {} s: the ledger may be behind, or it quarantined \
                         the event (`docket quarantine --data DIR` says why)",
                        FATE_PATIENCE.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(match seqs.as_slice() {
            [one] => format!("recorded at seq {one}"),
            many => format!("recorded {} decisions, seqs {many:?}", many.len()),
        })
    }
}

/// Where the UI reads: a data directory, or the ledger over NATS.
enum Place {
    Local(PathBuf),
    Remote(SigningKey),
}

/// How the UI reads the ledger: the store in a data directory beside a running `serve` (the
/// demo's, too), or `docket.read` over NATS, each read signed with the analyst's key. Both
/// answer the same SQL; only the chain's head, its checkpoint and an entry's raw record differ.
enum Reader {
    Local {
        data: PathBuf,
        cache: SessionCache,
    },
    Remote {
        nats: watch::Receiver<Option<async_nats::Client>>,
        key: SigningKey,
    },
}

/// The chain as the overview shows it.
struct ChainFigures {
    head: u64,
    hash: String,
    checkpoint: Option<CheckpointFigure>,
    /// The user the analyst's key decides for.
    you: Option<String>,
}

impl Reader {
    /// Forgets what was kept, after an error, so the next read starts clean.
    fn start_over(&mut self) {
        if let Reader::Local { cache, .. } = self {
            *cache = SessionCache::default();
        }
    }

    /// A query's column names and at most `max_rows` rows as text, and whether there were
    /// more. Cells are made safe to draw (`safe_cell`) whatever reads them.
    async fn table(&mut self, sql: &str, max_rows: usize) -> Result<Table> {
        let (columns, rows, more) = match self {
            Reader::Local { data, cache } => {
                let mut s = session(data, cache).await?;
                let (batches, more) = s.query_limited(sql, max_rows).await?;
                let (columns, rows) = text_cells(&batches)?;
                (columns, rows, more)
            }
            Reader::Remote { nats, key } => {
                let reply = ask_remote(nats, key, sql, max_rows).await?;
                (reply.columns, reply.rows, reply.truncated)
            }
        };
        Ok(Table {
            columns: columns.iter().map(|c| safe_cell(c)).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| safe_cell(c)).collect())
                .collect(),
            more,
        })
    }

    /// The rows of one of the shell's own queries (each names its own LIMIT).
    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        Ok(self.table(sql, SHELL_ROWS_MAX).await?.rows)
    }

    async fn head(&mut self) -> Result<u64> {
        match self {
            Reader::Local { data, cache } => Ok(cache.head(data)?),
            Reader::Remote { .. } => {
                let rows = self
                    .rows("SELECT COALESCE(max(seq), 0) FROM events")
                    .await?;
                cell(&rows, 0, 0)
                    .parse()
                    .context("the ledger's head is not a number")
            }
        }
    }

    async fn chain(&mut self, key_id: Option<&str>) -> Result<ChainFigures> {
        match self {
            Reader::Local { data, cache } => {
                let store = cache.store(data)?;
                let (head, hash) = store.head()?;
                // Whose requests the key may decide: a user's key is registered as `user:<name>`.
                let you = match (key_id, store.registry()?) {
                    (Some(id), Some(registry)) => registry.active_key(id).and_then(|(k, _)| {
                        k.name.strip_prefix(USER_KEY_PREFIX).map(str::to_string)
                    }),
                    _ => None,
                };
                let checkpoint = store
                    .last_checkpoint()?
                    .map(|(size, note)| CheckpointFigure {
                        seq: size,
                        verified: Some(checkpoint_holds(&store, size, &note)),
                    });
                Ok(ChainFigures {
                    head,
                    hash: docket_ledger::chain::hex(&hash),
                    checkpoint,
                    you,
                })
            }
            Reader::Remote { nats, key } => {
                let reply = ask_remote(
                    nats,
                    key,
                    "SELECT seq, entry_hash FROM events ORDER BY seq DESC LIMIT 1",
                    1,
                )
                .await?;
                let you = reply
                    .signer
                    .as_deref()
                    .and_then(|n| n.strip_prefix(USER_KEY_PREFIX))
                    .map(str::to_string);
                let checkpoint = self
                    .rows("SELECT max(tree_size) FROM checkpoints")
                    .await?
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|c| c.parse().ok())
                    // Over NATS there is no chain here to check it against: `docket verify` does.
                    .map(|seq| CheckpointFigure {
                        seq,
                        verified: None,
                    });
                Ok(ChainFigures {
                    head: cell(&reply.rows, 0, 0).parse().unwrap_or(0),
                    hash: cell(&reply.rows, 0, 1).to_string(),
                    checkpoint,
                    you,
                })
            }
        }
    }

    async fn entry(&mut self, seq: u64) -> Result<EntryDetail> {
        match self {
            Reader::Local { data, cache } => entry_from_store(&*cache.store(data)?, seq),
            Reader::Remote { .. } => {
                let rows = self
                    .rows(&format!(
                        "SELECT seq, entry_hash, CAST(received AS VARCHAR), kind, key_id, payload \
                         FROM events WHERE seq = {seq}"
                    ))
                    .await?;
                let r = rows
                    .first()
                    .with_context(|| format!("no entry {seq} on the ledger"))?;
                let get = |i: usize| r.get(i).map_or("", String::as_str);
                let payload: Value = serde_json::from_str(get(5))?;
                Ok(EntryDetail {
                    seq,
                    entry: vec![
                        format!("seq       {}", get(0)),
                        format!("hash      {}", get(1)),
                        format!("received  {}", get(2)),
                        format!("kind      {}", get(3)),
                    ],
                    envelope: serde_json::to_string_pretty(&payload)?
                        .lines()
                        .map(str::to_string)
                        .collect(),
                    signer: vec![
                        format!("key id    {}", get(4)),
                        "key       (its registration: `docket watch --data` on the ledger's machine)"
                            .to_string(),
                    ],
                })
            }
        }
    }

    /// The seq an event was appended at, once it is on the chain.
    async fn seq_of(&mut self, id: &docket_schemas::EventId) -> Result<Option<u64>> {
        match self {
            Reader::Local { data, cache } => {
                let store = cache.store(data)?;
                Ok(store.seq_of(id)?)
            }
            Reader::Remote { .. } => {
                let rows = self
                    .rows(&format!("SELECT seq FROM events WHERE event_id = '{id}'"))
                    .await?;
                Ok(rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|c| c.parse().ok()))
            }
        }
    }
}

/// One cell of a text result, or "" when there is none.
fn cell(rows: &[Vec<String>], row: usize, column: usize) -> &str {
    rows.get(row)
        .and_then(|r| r.get(column))
        .map_or("", String::as_str)
}

/// A read over NATS; a refusal is an error saying why.
async fn ask_remote(
    nats: &watch::Receiver<Option<async_nats::Client>>,
    key: &SigningKey,
    sql: &str,
    max_rows: usize,
) -> Result<docket_schemas::vault::ReadReply> {
    let client = nats
        .borrow()
        .clone()
        .context("not connected to NATS yet: the header says why")?;
    let max_rows = u32::try_from(max_rows).unwrap_or(u32::MAX);
    let reply = crate::read_service::ask(&client, key, sql, Some(max_rows)).await?;
    if !reply.ok {
        bail!(
            "the ledger refused the read: {}",
            reply.error.unwrap_or_else(|| "no reason given".into())
        );
    }
    Ok(reply)
}

async fn query(reader: &mut Reader, sql: &str) -> Result<QueryResult> {
    // `\d` lists the tables, as in `docket sql`'s shell.
    let sql = if sql.trim() == "\\d" {
        "SHOW TABLES"
    } else {
        sql
    };
    let t = reader.table(sql, QUERY_ROWS_MAX).await?;
    Ok(QueryResult {
        header: t.columns,
        rows: t.rows,
        more: t.more,
    })
}

/// A text result.
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    more: bool,
}

/// A cell as it may be drawn: whatever a producer or a query put in it, control and invisible
/// characters are shown escaped, never handed to the terminal.
fn safe_cell(text: &str) -> String {
    crate::terminal_text::escaped(text)
}

/// An entry as the store holds it: its chain fields, its signed event, and who signed it.
fn entry_from_store(store: &Store, seq: u64) -> Result<EntryDetail> {
    let head = store.head()?.0;
    let record = store
        .record(seq)?
        .with_context(|| format!("no entry {seq} (the head is {head})"))?;
    let e = decode_record(seq, &record)?;
    let envelope = Envelope::decode(e.envelope)?;
    let payload: Value = serde_json::from_slice(&envelope.payload)?;
    let registered = store.registry()?.map(|r| {
        if r.admin_key_id == envelope.key_id {
            "the admin's key".to_string()
        } else if r.ledger_key_id == envelope.key_id {
            "the ledger's own key".to_string()
        } else {
            match r.keys.get(&envelope.key_id) {
                Some(k) => format!(
                    "{} (registered at seq {}{})",
                    k.name,
                    k.registered_seq,
                    k.revoked_seq
                        .map_or(String::new(), |s| format!(", revoked at seq {s}"))
                ),
                None => "not in the registry now".to_string(),
            }
        }
    });
    Ok(EntryDetail {
        seq,
        entry: vec![
            format!("seq       {}", e.seq),
            format!("hash      {}", docket_ledger::chain::hex(&e.hash)),
            format!("prev      {}", docket_ledger::chain::hex(&e.prev)),
            format!(
                "received  {}",
                docket_schemas::Timestamp::from_micros(e.received_us)
                    .map_or_else(|| e.received_us.to_string(), |t| t.to_string())
            ),
            format!("subject   {}", e.subject),
        ],
        envelope: serde_json::to_string_pretty(&payload)?
            .lines()
            .map(str::to_string)
            .collect(),
        signer: vec![
            format!("key id    {}", envelope.key_id),
            format!(
                "key       {}",
                registered.unwrap_or_else(|| "no registry in this store".into())
            ),
        ],
    })
}

async fn agent_detail(reader: &mut Reader, agent: &str) -> Result<AgentDetail> {
    let quoted = agent.replace('\'', "''");
    let held = reader
        .rows(&format!(
            "SELECT 'grant' AS held, grant_id AS id, audience, scopes, CAST(expires_at AS BIGINT) AS expires_us \
             FROM grants_state \
             WHERE agent = '{quoted}' AND status = 'active' \
             UNION ALL SELECT 'token', token_id, audience, scopes, CAST(expires_at AS BIGINT) \
             FROM tokens_state WHERE agent = '{quoted}' AND status = 'active'"
        ))
        .await?;
    let holdings = held
        .iter()
        .map(|r| Holding {
            kind: if r[0] == "token" {
                HoldingKind::Token
            } else {
                HoldingKind::Grant
            },
            id: r[1].clone(),
            audience: r[2].clone(),
            scopes: items(&r[3]),
            expires_at_us: r[4].parse().ok(),
        })
        .collect();
    let mut timeline =
        event_rows(reader, &format!("agent = '{quoted}'"), Some(TIMELINE_MAX)).await?;
    timeline.sort_by_key(|e| std::cmp::Reverse(e.seq));
    Ok(AgentDetail {
        agent: agent.to_string(),
        holdings,
        timeline,
    })
}

async fn step_up_assertion(
    reader: &mut Reader,
    approval_id: &str,
    step_up: &SigningKey,
) -> Result<StepUpAssertion> {
    let quoted = approval_id.replace('\'', "''");
    let rows = reader
        .rows(&format!(
            "SELECT \"user\" FROM approvals_state WHERE approval_id = '{quoted}'"
        ))
        .await?;
    let user = rows
        .first()
        .and_then(|r| r.first())
        .cloned()
        .with_context(|| format!("no approval {approval_id}"))?;
    let claim = StepUpClaim {
        v: 1,
        user,
        approval_id: approval_id.to_string(),
        auth_time: docket_ledger::clock::now()?,
    };
    Ok(StepUpAssertion::seal(&claim, step_up))
}
