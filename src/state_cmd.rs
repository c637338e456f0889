//! `docket state` and `docket findings`: the derived state as tables or JSON, now or as of a seq or time.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use docket_ledger::projection::{Until, rebuild_check, state_at};
use docket_ledger::state::{Policy, VaultState};
use docket_ledger::store::Store;
use docket_schemas::Timestamp;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum StateCommand {
    /// Replay from genesis and check the result equals the stored projection.
    Rebuild {
        #[command(flatten)]
        data: crate::DataArgs,
    },
    /// Grants: user, agent, audience, scopes, expiry, budget, status.
    Grants(ViewArgs),
    /// Tokens (by id and hash, never the secret): grant, agent, scopes, expiry, status, uses.
    Tokens(ViewArgs),
    /// Approval requests: pending, approved, denied or expired, and who decided how.
    Approvals(ViewArgs),
    /// Agents: owner, registration, suspension.
    Agents(ViewArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct ViewArgs {
    #[command(flatten)]
    data: crate::DataArgs,
    /// Show the state as it was after this seq, or at this time (RFC 3339, e.g. 2026-11-22T08:00:00.000000Z).
    #[arg(long)]
    as_of: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub struct FindingsArgs {
    #[command(flatten)]
    data: crate::DataArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(cmd: StateCommand) -> Result<std::process::ExitCode> {
    let (args, kind) = match cmd {
        StateCommand::Rebuild { data } => return rebuild(&data),
        StateCommand::Grants(a) => (a, "grants"),
        StateCommand::Tokens(a) => (a, "tokens"),
        StateCommand::Approvals(a) => (a, "approvals"),
        StateCommand::Agents(a) => (a, "agents"),
    };
    let store = Store::open_reader(&crate::db_dir(&args.data.data))?;
    let until = match args.as_of.as_deref() {
        None => Until::End,
        Some(text) => {
            Until::parse(text).context("--as-of is neither a seq nor an RFC 3339 time")?
        }
    };
    let (state, at) = state_at(&store, until)?;
    let rows = rows(&state, kind, at);
    print_rows(&rows, args.format);
    Ok(std::process::ExitCode::SUCCESS)
}

fn rows(state: &VaultState, kind: &str, at: Timestamp) -> Vec<Value> {
    let scopes =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
    let (order, mut rows): (&str, Vec<Value>) = match kind {
        "grants" => ("created_seq", state
            .grants
            .values()
            .map(|g| json!({"grant_id": g.grant_id, "user": g.user, "agent": g.agent, "audience": g.audience,
                "scopes": scopes(&g.scopes), "expires_at": g.expires_at.to_string(), "calls": g.calls,
                "max_calls": g.max_calls, "status": g.status(at), "created_seq": g.created_seq}))
            .collect()),
        "tokens" => ("issued_seq", state
            .tokens
            .values()
            .map(|t| json!({"token_id": t.token_id, "token_hash": t.token_hash, "grant_id": t.grant_id, "agent": t.agent,
                "audience": t.audience, "scopes": scopes(&t.scopes), "expires_at": t.expires_at.to_string(),
                "status": t.status(at), "uses": t.uses, "issued_seq": t.issued_seq}))
            .collect()),
        "approvals" => ("requested_seq", state
            .approvals
            .values()
            .map(|a| json!({"approval_id": a.approval_id, "grant_id": a.grant_id, "user": a.user, "agent": a.agent,
                "scopes": scopes(&a.scopes), "risk": a.risk, "status": a.status(at), "decided_by": a.decided_by,
                "method": a.method, "binding_message": a.binding_message, "requested_seq": a.requested_seq}))
            .collect()),
        _ => ("registered_seq", state
            .agents
            .values()
            .map(|a| json!({"agent": a.agent, "user": a.user, "name": a.name, "registered_seq": a.registered_seq,
                "suspended_seq": a.suspended_seq}))
            .collect()),
    };
    // The state is held in hash maps: list in the order things happened.
    rows.sort_by_key(|r| r[order].as_u64());
    rows
}

/// Column order for tables, by each view's first column; JSON objects carry no order.
const COLUMN_ORDER: &[&[&str]] = &[
    &[
        "grant_id",
        "user",
        "agent",
        "audience",
        "scopes",
        "status",
        "expires_at",
        "calls",
        "max_calls",
        "created_seq",
    ],
    &[
        "token_id",
        "agent",
        "audience",
        "scopes",
        "status",
        "expires_at",
        "uses",
        "grant_id",
        "issued_seq",
        "token_hash",
    ],
    &[
        "approval_id",
        "user",
        "agent",
        "scopes",
        "risk",
        "status",
        "decided_by",
        "method",
        "grant_id",
        "binding_message",
    ],
    &[
        "seq", "ts", "severity", "rule", "agent", "message", "evidence",
    ],
    &["agent", "user", "name", "registered_seq", "suspended_seq"],
];

/// Prints JSON objects as JSON lines or as an aligned table.
pub fn print_rows(rows: &[Value], format: Format) {
    match format {
        Format::Json => {
            let mut out = std::io::stdout().lock();
            for r in rows {
                // A closed pipe (`| head`) ends the listing quietly.
                if writeln!(out, "{r}").is_err() {
                    return;
                }
            }
        }
        Format::Table => {
            let Some(first) = rows.first().and_then(Value::as_object) else {
                println!("(none)");
                return;
            };
            let cols: Vec<&str> = match COLUMN_ORDER.iter().find(|c| first.contains_key(c[0])) {
                Some(order) => order
                    .iter()
                    .copied()
                    .filter(|c| first.contains_key(*c))
                    .collect(),
                None => first.keys().map(String::as_str).collect(),
            };
            let cell = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string().trim_matches('"').to_string(),
            };
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    table
                        .iter()
                        .map(|row| row[i].chars().count())
                        .max()
                        .unwrap_or(0)
                        .max(c.len())
                        .min(72)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{:<w$}", c.chars().take(*w).collect::<String>(), w = *w))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            let mut out = std::io::stdout().lock();
            if writeln!(
                out,
                "{}",
                line(cols.iter().map(|c| c.to_string()).collect())
            )
            .is_err()
            {
                return;
            }
            for row in table {
                if writeln!(out, "{}", line(row)).is_err() {
                    return;
                }
            }
        }
    }
}

fn rebuild(data: &crate::DataArgs) -> Result<std::process::ExitCode> {
    let store = Store::open_reader(&crate::db_dir(&data.data))?;
    let report = rebuild_check(&store, &Policy::default())?;
    if report.equal {
        println!(
            "state matches: {} entries replayed from genesis at {:.0} events/s, digest {}",
            report.entries, report.events_per_s, report.replayed_digest
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "STATE DIVERGES from the chain: stored digest {} != replayed {}",
        report.stored_digest, report.replayed_digest
    );
    if let Some(seq) = report.first_divergent_seq {
        println!("first divergent seq: {seq}");
    }
    for o in &report.differing_objects {
        println!("  differs: {o}");
    }
    Ok(std::process::ExitCode::from(1))
}

pub fn findings(args: FindingsArgs) -> Result<std::process::ExitCode> {
    let store = Store::open_reader(&crate::db_dir(&args.data.data))?;
    let rows: Vec<Value> = store
        .findings()?
        .into_iter()
        .map(|f| json!({"seq": f.seq, "ts": f.ts.to_string(), "severity": f.severity, "rule": f.rule, "agent": f.agent,
            "message": f.message, "evidence": f.evidence.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")}))
        .collect();
    print_rows(&rows, args.format);
    Ok(std::process::ExitCode::SUCCESS)
}
