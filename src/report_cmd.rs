//! `docket report`: the HTML report of a time range, written to one file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use docket_ledger::store::Store;
use docket_query::report::Report;
use docket_query::{AuditSession, SessionOptions};
use docket_schemas::Timestamp;

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    data: crate::DataArgs,
    /// Start of the range (RFC 3339 UTC, e.g. 2026-12-01T00:00:00Z); default: the first entry.
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive; default: the head.
    #[arg(long)]
    to: Option<String>,
    /// Where to write the page (one self-contained HTML file).
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: ReportArgs) -> Result<()> {
    let time = |flag: &str, text: &Option<String>| -> Result<Option<Timestamp>> {
        text.as_deref()
            .map(|t| Timestamp::parse_human(t).with_context(|| format!("--{flag} {t:?}")))
            .transpose()
    };
    let (from, to) = (time("from", &args.from)?, time("to", &args.to)?);
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        anyhow::bail!("--from {f} is not before --to {t}: the range is empty");
    }
    let data = &args.data.data;
    let origin = Store::open_reader(&crate::db_dir(data))?.identity()?.origin;
    let options = SessionOptions {
        seal: false,
        ..SessionOptions::default()
    };
    let mut session = AuditSession::open(data, options).await?;
    let report = Report::build(&mut session, &origin, from, to).await?;
    let page = report.to_html();
    std::fs::write(&args.out, &page).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} KiB): {} calls, {} open findings, entries up to seq {}",
        args.out.display(),
        page.len() / 1024,
        report.calls_total,
        report.open_total,
        report.head
    );
    Ok(())
}
