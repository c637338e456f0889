//! `docket findings`: policy violations and recorded detections with their triage, and recording triage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use docket_ledger::keyfile;
use docket_ledger::store::Store;
use docket_query::arrow::array::{Array, AsArray, RecordBatch};
use docket_query::arrow::datatypes::DataType;
use docket_query::detect;
use docket_query::{AuditSession, SessionOptions};
use serde_json::{Value, json};

use crate::state_cmd::{Format, Row, checked, print_rows};

#[derive(Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct FindingsArgs {
    #[command(subcommand)]
    action: Option<FindingsAction>,
    /// The ledger's data directory.
    #[arg(long, env = "DOCKET_DATA")]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Show the stored policy findings without first checking them against a replay of the chain.
    #[arg(long)]
    unchecked: bool,
    /// Only findings still open: never triaged (or reopened) and not suppressed.
    #[arg(long)]
    open: bool,
    /// Only findings of this level or above (informational, low, medium, high, critical).
    #[arg(long)]
    level: Option<String>,
    /// Only findings about this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Instead of listing: run the rule sets recorded on the chain again over the whole log and
    /// compare with the detections recorded live (exit 1 on a difference). Needs every
    /// recorded rule version: the built-in ones and the files of --rules.
    #[arg(long)]
    check: bool,
    /// A directory of rule files for --check, beside the built-in rules. Repeat it to give
    /// several versions of one rule (an edited rule keeps its id: keep the old file in
    /// another directory).
    #[arg(long, value_name = "DIR")]
    rules: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum FindingsAction {
    /// Record an analyst's decision about one finding (a signed finding.triaged event).
    Triage(TriageArgs),
    /// Mark one rule's findings (about one agent, or all) as suppressed until a time (a signed
    /// finding.suppressed event); they are still recorded.
    Suppress(SuppressArgs),
}

#[derive(Args)]
struct Signer {
    /// The analyst's key file (registered by the admin for finding.triaged and finding.suppressed).
    #[arg(long, env = "DOCKET_KEY")]
    key: PathBuf,
    /// Who decides, as recorded in the event's `by` (what the analyst says; the entry's
    /// `key_id` is the key that signed it).
    #[arg(long)]
    by: String,
    /// Free text kept with the decision.
    #[arg(long)]
    note: Option<String>,
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: crate::NatsAuthArgs,
    /// Seconds to wait for the ledger to append the decision.
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

#[derive(Args)]
struct TriageArgs {
    /// The finding, as `docket findings` names it: `<rule>@<seq>`.
    id: String,
    /// acknowledged, escalated, closed or reopened.
    #[arg(long)]
    status: String,
    /// Why it was closed (with --status closed): false_positive, benign, resolved or duplicate.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    signer: Signer,
}

#[derive(Args)]
struct SuppressArgs {
    /// The rule whose findings are suppressed (its id, or a policy rule's name).
    #[arg(long)]
    rule: String,
    /// Only findings about this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Findings triggered up to this time are suppressed (RFC 3339 UTC).
    #[arg(long)]
    until: String,
    /// Why.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    signer: Signer,
}

pub async fn run(args: FindingsArgs) -> Result<ExitCode> {
    match args.action {
        Some(FindingsAction::Triage(t)) => {
            let mut event = json!({"kind": "finding.triaged", "finding": t.id, "status": t.status,
                "by": t.signer.by});
            if let Some(r) = t.reason {
                event["reason"] = json!(r);
            }
            if let Some(n) = &t.signer.note {
                event["note"] = json!(n);
            }
            record(&t.signer, event).await
        }
        Some(FindingsAction::Suppress(s)) => {
            let until = docket_schemas::Timestamp::parse_human(&s.until)?;
            let mut event = json!({"kind": "finding.suppressed", "rule_id": s.rule,
                "until": until.to_string(), "reason": s.reason, "by": s.signer.by});
            if let Some(a) = s.agent {
                event["agent"] = json!(a);
            }
            record(&s.signer, event).await
        }
        None => list(args).await,
    }
}

async fn record(signer: &Signer, event: Value) -> Result<ExitCode> {
    let key = keyfile::read(&signer.key)?;
    let line = event.to_string();
    crate::publish_lines(
        &signer.nats,
        &signer.nats_auth,
        Some(signer.wait),
        &key,
        std::iter::once(Ok(line)),
    )
    .await
}

/// The levels at or above `floor`, as SQL string literals.
fn levels_from(floor: &str) -> Result<String> {
    let Some(i) = detect::LEVELS.iter().position(|l| *l == floor) else {
        bail!(
            "--level {floor:?}: expected one of {}",
            detect::LEVELS.join(", ")
        );
    };
    Ok(detect::LEVELS[i..]
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn list(args: FindingsArgs) -> Result<ExitCode> {
    let Some(data) = args.data.as_deref() else {
        bail!("--data DIR (or DOCKET_DATA) names the ledger whose findings to list");
    };
    let store = Store::open_reader(&crate::db_dir(data))?;
    if !args.unchecked {
        checked(&store)?;
    }
    drop(store);
    let options = SessionOptions {
        seal: false,
        ..SessionOptions::default()
    };
    let mut session = AuditSession::open(data, options).await?;
    let mut wheres = Vec::new();
    if args.open {
        wheres.push("triage IN ('open', 'reopened')".to_string());
    }
    if let Some(l) = &args.level {
        wheres.push(format!("severity IN ({})", levels_from(l)?));
    }
    if let Some(a) = &args.agent {
        wheres.push(format!("agent = '{}'", a.replace('\'', "''")));
    }
    let filter = if wheres.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wheres.join(" AND "))
    };
    let batches = session
        .query(&format!(
            "SELECT finding, seq, ts, severity, source, agent, triage, triage_reason, evidence, message \
             FROM findings {filter} ORDER BY seq, finding"
        ))
        .await?;
    if !args.check {
        print_rows(&to_rows(&batches)?, args.format);
        return Ok(ExitCode::SUCCESS);
    }
    let (mut rules, mut problems) = detect::load(None, true);
    for dir in &args.rules {
        let (r, p) = detect::load(Some(dir), false);
        rules.extend(r);
        problems.extend(p);
    }
    for p in &problems {
        eprintln!("rule not loaded: {p}");
    }
    let head = session.coverage().head;
    let sets = detect::rule_sets(&session, head).await?;
    let recorded: Vec<_> = detect::recorded(&session, head)
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let replay = detect::run_recorded(&rules, &sets, &mut session, 0, head).await;
    let mut fine = true;
    for (v, from, to) in &replay.missing {
        fine = false;
        eprintln!(
            "cannot check ({from}, {to}]: rule {} ({}) version {} is not among the rule files given",
            v.id, v.title, v.content_hash
        );
    }
    for p in &replay.problems {
        fine = false;
        eprintln!("rule failed: {p}");
    }
    let key = |d: &detect::Detection| {
        (
            d.id(),
            d.rule_hash.clone(),
            d.observed.clone(),
            d.baseline.clone(),
            d.evidence.clone(),
        )
    };
    let live: std::collections::BTreeSet<_> = recorded.iter().map(key).collect();
    let again: std::collections::BTreeSet<_> = replay.detections.iter().map(key).collect();
    for d in live.difference(&again) {
        fine = false;
        eprintln!("recorded but not found again: {} ({} vs {})", d.0, d.2, d.3);
    }
    for d in again.difference(&live) {
        fine = false;
        eprintln!(
            "found again but never recorded: {} ({} vs {})",
            d.0, d.2, d.3
        );
    }
    eprintln!(
        "{}: {} detections recorded under {} rule sets, {} found again",
        if fine { "check passed" } else { "CHECK FAILED" },
        live.len(),
        sets.len(),
        again.len()
    );
    Ok(if fine {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The listing's rows as the `state` printer takes them.
fn to_rows(batches: &[RecordBatch]) -> Result<Vec<Row>> {
    let names: [&'static str; 10] = [
        "finding",
        "seq",
        "ts",
        "severity",
        "source",
        "agent",
        "triage",
        "triage_reason",
        "evidence",
        "message",
    ];
    let mut rows = Vec::new();
    for b in batches {
        let mut cols = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let c = b.column(i);
            let c = if *name == "evidence" {
                docket_query::arrow::compute::cast(
                    c,
                    &DataType::List(std::sync::Arc::new(
                        docket_query::arrow::datatypes::Field::new("item", DataType::UInt64, true),
                    )),
                )?
            } else {
                docket_query::arrow::compute::cast(c, &DataType::Utf8)?
            };
            cols.push(c);
        }
        for r in 0..b.num_rows() {
            let mut row: Row = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let c = &cols[i];
                let v = if c.is_null(r) {
                    Value::Null
                } else if *name == "evidence" {
                    let list = c.as_list::<i32>().value(r);
                    let seqs = list.as_primitive::<docket_query::arrow::datatypes::UInt64Type>();
                    json!(seqs.iter().flatten().collect::<Vec<u64>>())
                } else if *name == "seq" {
                    json!(c.as_string::<i32>().value(r).parse::<u64>()?)
                } else {
                    json!(c.as_string::<i32>().value(r))
                };
                row.push((name, v));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}
