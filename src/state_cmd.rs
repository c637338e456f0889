//! `docket state`: the derived state as tables or JSON, now or as of a seq or time.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use docket_ledger::projection::{Until, rebuild_check, state_at};
use docket_ledger::state::VaultState;
use docket_ledger::store::Store;
use docket_schemas::Timestamp;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum StateCommand {
    /// Replay from genesis and check that the stored projection, findings and key registry
    /// are what the chain derives (exit 1 when not).
    Rebuild {
        #[command(flatten)]
        data: crate::DataArgs,
        /// Replace them with what the chain derives (the ledger must not be serving).
        #[arg(long)]
        repair: bool,
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
    /// Show the state as it was after this seq, or at this time (RFC 3339 UTC, e.g. 2026-11-22T08:00:00Z).
    #[arg(long)]
    as_of: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Show the stored state without first checking it against a replay of the chain
    /// (faster on a large ledger; an edited store would then be shown as it is).
    #[arg(long)]
    unchecked: bool,
}

/// Refuses to show what is stored beside the chain when it is not what the chain derives
/// (SECURITY.md, row 3): an auditor reading offline must not be shown an edited store.
pub fn checked(store: &Store) -> Result<()> {
    let report = rebuild_check(store)?;
    if !report.agrees() {
        anyhow::bail!(
            "the stored state is not what the chain derives: {}. It was edited or damaged: \
             `docket verify` reports it, `docket state rebuild --repair` (with serve stopped) \
             replaces it; --as-of shows a replay",
            report.summary()
        );
    }
    Ok(())
}

pub fn run(cmd: StateCommand) -> Result<std::process::ExitCode> {
    let (args, kind) = match cmd {
        StateCommand::Rebuild { data, repair } => return rebuild(&data, repair),
        StateCommand::Grants(a) => (a, View::Grants),
        StateCommand::Tokens(a) => (a, View::Tokens),
        StateCommand::Approvals(a) => (a, View::Approvals),
        StateCommand::Agents(a) => (a, View::Agents),
    };
    let store = Store::open_reader(&crate::db_dir(&args.data.data))?;
    let until = match args.as_of.as_deref() {
        None => Until::End,
        Some(text) => Until::parse(text)?,
    };
    // The head's state is the stored projection; a point in the past is a replay already.
    if until == Until::End && !args.unchecked {
        checked(&store)?;
    }
    let point = state_at(&store, until)?;
    if let Some(note) = point.note() {
        eprintln!("{note}");
    }
    print_rows(&rows(&point.state, kind, point.at), args.format);
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
enum View {
    Grants,
    Tokens,
    Approvals,
    Agents,
}

/// Values in the order they happened, by the seq `seq` reads: the state is held in hash maps.
fn in_order<'a, T: 'a>(values: impl Iterator<Item = &'a T>, seq: impl Fn(&T) -> u64) -> Vec<&'a T> {
    let mut v: Vec<&T> = values.collect();
    v.sort_by_key(|t| seq(t));
    v
}

/// One row: its columns in the order a table shows them. Each view names its columns here,
/// so the table and the JSON carry the same fields and no view borrows another's layout.
pub type Row = Vec<(&'static str, Value)>;

fn rows(state: &VaultState, view: View, at: Timestamp) -> Vec<Row> {
    let scopes =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
    match view {
        View::Grants => in_order(state.grants.values(), |g| g.created_seq)
            .iter()
            .map(|g| {
                vec![
                    ("grant_id", json!(g.grant_id)),
                    ("user", json!(g.user)),
                    ("agent", json!(g.agent)),
                    ("audience", json!(g.audience)),
                    ("scopes", json!(scopes(&g.scopes))),
                    ("status", json!(g.status(at))),
                    ("expires_at", json!(g.expires_at.to_string())),
                    ("calls", json!(g.calls)),
                    ("max_calls", json!(g.max_calls)),
                    ("created_seq", json!(g.created_seq)),
                ]
            })
            .collect(),
        View::Tokens => in_order(state.tokens.values(), |t| t.issued_seq)
            .iter()
            .map(|t| {
                vec![
                    ("token_id", json!(t.token_id)),
                    ("agent", json!(t.agent)),
                    ("user", json!(t.user)),
                    ("audience", json!(t.audience)),
                    ("scopes", json!(scopes(&t.scopes))),
                    ("status", json!(t.status(at))),
                    ("expires_at", json!(t.expires_at.to_string())),
                    ("uses", json!(t.uses)),
                    ("grant_id", json!(t.grant_id)),
                    ("issued_seq", json!(t.issued_seq)),
                    ("token_hash", json!(t.token_hash)),
                ]
            })
            .collect(),
        View::Approvals => {
            in_order(state.approvals.values(), |a| a.requested_seq)
                .iter()
                .map(|a| {
                    vec![
                        ("approval_id", json!(a.approval_id)),
                        ("user", json!(a.user)),
                        ("agent", json!(a.agent)),
                        ("scopes", json!(scopes(&a.scopes))),
                        ("risk", json!(a.risk)),
                        ("status", json!(a.status(at))),
                        ("decided_by", json!(a.decided_by)),
                        ("method", json!(a.method)),
                        ("grant_id", json!(a.grant_id)),
                        ("requested_seq", json!(a.requested_seq)),
                        // Last: the one free-text column, shown whole.
                        ("binding_message", json!(a.binding_message)),
                    ]
                })
                .collect()
        }
        View::Agents => in_order(state.agents.values(), |a| a.registered_seq)
            .iter()
            .map(|a| {
                vec![
                    ("agent", json!(a.agent)),
                    ("user", json!(a.user)),
                    ("name", json!(a.name)),
                    ("registered_seq", json!(a.registered_seq)),
                    ("suspended_seq", json!(a.suspended_seq)),
                ]
            })
            .collect(),
    }
}

/// Widest a table cell is shown, except the last column's, which is printed whole.
const CELL_WIDTH_MAX: usize = 72;

/// A cell as text: lists (a finding's evidence) as comma-separated values, absent as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The rows as an aligned table: a header, then one line per row. Cells wider than
/// [`CELL_WIDTH_MAX`] are cut with `…`, except in the last column, which is never cut.
fn table(rows: &[Row]) -> Vec<String> {
    let Some(first) = rows.first() else {
        return vec!["(none)".into()];
    };
    let header: Vec<String> = first.iter().map(|(c, _)| c.to_string()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|(_, v)| cell(v)).collect())
        .collect();
    let last = header.len() - 1;
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .chain(std::iter::once(&header))
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
                .min(CELL_WIDTH_MAX)
        })
        .collect();
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == last {
                out.push_str(c);
                break;
            }
            let n = c.chars().count();
            let shown: String = if n > widths[i] {
                c.chars().take(widths[i] - 1).chain(['…']).collect()
            } else {
                c.clone()
            };
            out.push_str(&format!("{shown:<w$}  ", w = widths[i]));
        }
        out
    };
    std::iter::once(&header)
        .chain(&cells)
        .map(|r| line(r))
        .collect()
}

/// Prints rows as JSON lines or as an aligned table.
pub fn print_rows(rows: &[Row], format: Format) {
    let mut out = std::io::stdout().lock();
    let lines: Vec<String> = match format {
        Format::Json => rows
            .iter()
            .map(|r| {
                Value::Object(r.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
                    .to_string()
            })
            .collect(),
        Format::Table => table(rows),
    };
    for l in lines {
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
}

fn rebuild(data: &crate::DataArgs, repair: bool) -> Result<std::process::ExitCode> {
    let db = crate::db_dir(&data.data);
    if repair {
        let store = docket_ledger::store::Store::open_primary(&db)?;
        let entries = docket_ledger::projection::repair(&store)?;
        println!(
            "replaced the projection, findings and key registry with what {entries} entries derive"
        );
    }
    let store = Store::open_reader(&db)?;
    let report = rebuild_check(&store)?;
    if report.agrees() {
        println!(
            "state matches: {} entries replayed from genesis at {:.0} events/s, digest {}; \
             {} findings and the key registry match too",
            report.entries, report.events_per_s, report.replayed_digest, report.findings_replayed
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if !report.equal {
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
    }
    if !report.differing_findings.is_empty() {
        println!(
            "FINDINGS DIVERGE from the chain: {} stored, {} replayed",
            report.findings_stored, report.findings_replayed
        );
        for f in &report.differing_findings {
            println!("  {f}");
        }
    }
    if !report.registry_equal {
        println!("KEY REGISTRY DIVERGES from the chain: the stored copy says other keys may sign");
    }
    println!(
        "`docket state rebuild --data DIR --repair` replaces them with what the chain derives"
    );
    Ok(std::process::ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_cuts_wide_cells_but_never_the_last_column() {
        let long = "x".repeat(CELL_WIDTH_MAX + 30);
        let rows: Vec<Row> = vec![
            vec![
                ("id", json!("a")),
                ("wide", json!(long)),
                ("msg", json!(long)),
            ],
            vec![
                ("id", json!("bb")),
                ("wide", json!(null)),
                ("msg", json!([9, 11, 12])),
            ],
        ];
        let t = table(&rows);
        assert!(t[0].starts_with("id  wide"), "{}", t[0]);
        assert!(t[1].ends_with(&long), "the last column is whole: {}", t[1]);
        let cut: String = "x".repeat(CELL_WIDTH_MAX - 1) + "…";
        assert!(t[1].contains(&format!("{cut}  ")), "{}", t[1]);
        assert!(t[2].starts_with("bb  -"), "{}", t[2]);
        assert!(t[2].ends_with("9,11,12"), "{}", t[2]);
        assert_eq!(table(&[]), vec!["(none)".to_string()]);
    }
}
