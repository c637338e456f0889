//! `docket bench sql`: the columnar copy's build rate, three auditor queries, and DuckDB on the same data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_ledger::admission::BATCH_EVENTS_MAX;
use docket_ledger::config::Config;
use docket_query::segment::{self, columnar_dir};
use docket_query::session::VIEWS;
use docket_query::{AuditSession, SessionOptions};
use docket_schemas::{Timestamp, encode_base64};
use docket_testkit::workload::{Published, Workload};

#[derive(Args)]
pub struct SqlBenchArgs {
    /// Events in the synthetic ledger.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Days of workload time the events span.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Keep (or reuse) the ledger here; by default a temporary directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Timed runs of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip DuckDB (it is installed with pip when missing).
    #[arg(long)]
    no_duckdb: bool,
}

/// Workload time starts here, so the benchmark's "one day" is the same day on every run.
const START: &str = "2026-01-01T00:00:00.000000Z";

/// The benchmark's day; its agent is the one with the most calls that day.
const DAY: (&str, &str) = ("2026-01-11T00:00:00Z", "2026-01-12T00:00:00Z");

/// The three benchmark queries, in SQL both engines read.
fn queries(agent: &str) -> Vec<(&'static str, String)> {
    let (from, to) = DAY;
    vec![
        (
            "selective: one agent, one day",
            format!(
                "SELECT seq, ts, audience, method, operation, status FROM api_calls \
                 WHERE agent = '{agent}' AND ts >= '{from}' AND ts < '{to}' ORDER BY seq"
            ),
        ),
        (
            "aggregate: calls per agent and audience",
            "SELECT agent, audience, count(*) AS calls, sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS failed \
             FROM api_calls GROUP BY agent, audience ORDER BY calls DESC, agent, audience"
                .into(),
        ),
        (
            "join: calls after their token's revocation",
            "SELECT c.token_id, count(*) AS calls_after, min(c.seq) AS first_seq FROM revocations r \
             JOIN api_calls c ON c.token_id = r.target AND c.seq > r.seq \
             WHERE r.target_type = 'token' GROUP BY c.token_id ORDER BY calls_after DESC, c.token_id"
                .into(),
        ),
    ]
}

pub async fn run(args: SqlBenchArgs) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().join("ledger"));
    println!(
        "docket bench sql: {} events over {} days in {}",
        args.events,
        args.days,
        data.display()
    );
    build_ledger(&data, &args).await?;

    // The columnar copy, derived from scratch.
    let store = docket_ledger::store::Store::open_reader(&crate::db_dir(&data))?;
    let t = Instant::now();
    let key = docket_ledger::keyfile::read(&data.join(crate::sql_cmd::LEDGER_KEY_FILE))?;
    let report = segment::rebuild(
        &store,
        &columnar_dir(&data),
        segment::SEGMENT_ENTRIES,
        &key,
        &|_| {},
    )?;
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = segment::list(&columnar_dir(&data))?
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "columnar copy: {} segments, {} entries in {secs:.1}s ({:.0} entries/s), {:.0} MiB on disk",
        report.sealed,
        report.entries,
        report.entries as f64 / secs,
        bytes as f64 / 1048576.0
    );
    drop(store);

    // Queries in one warm session, as an auditor at the shell sees them.
    let t = Instant::now();
    let mut session = AuditSession::open(&data, SessionOptions::default()).await?;
    let cov = session.coverage().clone();
    println!(
        "session opened in {:.0} ms ({} segments, {} tail entries decoded)",
        t.elapsed().as_secs_f64() * 1e3,
        cov.segments,
        cov.tail_rows
    );
    let (from, to) = DAY;
    let busiest = session
        .query(&format!(
            "SELECT agent FROM api_calls WHERE ts >= '{from}' AND ts < '{to}' \
             GROUP BY agent ORDER BY count(*) DESC, agent LIMIT 1"
        ))
        .await?;
    let agent = busiest
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| docket_query::arrow::util::display::array_value_to_string(b.column(0), 0))
        .transpose()?
        .unwrap_or_else(|| "agent-0".into());
    println!("selective query: {agent} (the busiest agent on {from})");
    let ours = time_queries(&mut session, &agent, args.runs).await?;
    // The cost of checking every byte read against the segments' seals: the same queries in the
    // same session, its reads switched to the plain file system (a benchmark-only swap).
    session.context().register_object_store(
        docket_query::seal::store_url().as_ref(),
        std::sync::Arc::new(docket_query::LocalFileSystem::new()),
    );
    println!("the same queries with reads not checked against the seals:");
    let unchecked = time_queries(&mut session, &agent, args.runs).await?;
    for ((name, checked, _), (_, plain, _)) in ours.iter().zip(&unchecked) {
        println!(
            "  {name:<45} checked {checked:>8.1} ms, unchecked {plain:>8.1} ms: seals cost {:+.1}%",
            (checked / plain - 1.0) * 100.0
        );
    }
    drop(session);

    // Each query as a fresh `docket sql` process: open + query, and its peak memory
    // (as the process reads it itself: a forked child's rusage also counts this process's pages).
    let exe = std::env::current_exe()?;
    let mut peak = 0f64;
    for (name, sql) in queries(&agent) {
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(["sql", "--timing", "--data"])
            .arg(&data)
            .args(["--format", "csv", &sql])
            .output()?;
        if !out.status.success() {
            bail!(
                "docket sql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rss = stderr
            .split("peak RSS ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        peak = peak.max(rss);
        println!(
            "  one-shot `docket sql` ({name}): {:.0} ms wall, peak RSS {rss:.0} MiB",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    println!("peak RSS of the largest `docket sql` process: {peak:.0} MiB");

    // Parquet export, then DuckDB over it.
    let export = data.join("export");
    let t = Instant::now();
    crate::sql_cmd::export_parquet(&data, &export).await?;
    println!("export --format parquet: {:.1}s", t.elapsed().as_secs_f64());
    if args.no_duckdb {
        return Ok(());
    }
    let duck = duckdb(&export, &agent, args.runs)?;
    println!("DuckDB over the exported events.parquet (same views, same queries):");
    for ((name, med, rows), (dname, dmed, drows)) in ours.iter().zip(duck.iter()) {
        println!(
            "  {name:<45} docket {med:>8.1} ms, DuckDB {dmed:>8.1} ms: ratio {:.2}x{}",
            med / dmed,
            if *rows == *drows && name == dname {
                String::new()
            } else {
                format!(" (ROW COUNTS DIFFER: {rows} vs {drows})")
            }
        );
    }
    Ok(())
}

/// Runs each benchmark query `runs` times in `session`: its name, median milliseconds and row count.
async fn time_queries(
    session: &mut AuditSession,
    agent: &str,
    runs: usize,
) -> Result<Vec<(&'static str, f64, usize)>> {
    let mut out = Vec::new();
    for (name, sql) in queries(agent) {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let batches = session.query(&sql).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        let med = median(&mut times);
        println!(
            "  {name:<45} {med:>9.1} ms median of {} (min {:.1}), {rows} rows",
            times.len(),
            times.first().copied().unwrap_or(f64::NAN)
        );
        out.push((name, med, rows));
    }
    Ok(out)
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Builds the ledger through the real commit path unless `data` already holds enough entries.
async fn build_ledger(data: &Path, args: &SqlBenchArgs) -> Result<()> {
    let roles = docket_testkit::workload::Roles::from_seed(1);
    let admin = encode_base64(roles.admin.verifying_key().as_bytes());
    let config = Config {
        checkpoint_every_entries: 1_000_000,
        ..Config::default()
    };
    let mut ledger = crate::open_ledger(data, &config, &admin)?;
    if ledger.tip().seq >= args.events as u64 {
        println!(
            "reusing the {} entries already in the ledger",
            ledger.tip().seq
        );
        return Ok(());
    }
    if ledger.tip().seq > 0 {
        bail!(
            "{} holds {} entries, fewer than --events; use another directory",
            data.display(),
            ledger.tip().seq
        );
    }
    let start = Timestamp::parse(START).context("benchmark start time")?;
    let step_us_max = (2 * args.days * 86_400_000_000 / args.events.max(1) as u64).max(1);
    let n = args.events;
    // Generation and signing on one thread, admission and the synced writes on the others.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Published>>(8);
    let generator = std::thread::spawn(move || {
        let mut w = Workload::new(1, start, 50, 200);
        w.step_us_max = step_us_max;
        w.misbehaving_per_mille = 1;
        let setup = w.setup();
        let mut left = n.saturating_sub(setup.len());
        if tx.blocking_send(setup).is_err() {
            return;
        }
        while left > 0 {
            let k = left.min(BATCH_EVENTS_MAX);
            left -= k;
            if tx
                .blocking_send((0..k).map(|_| w.next_envelope()).collect())
                .is_err()
            {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut seq = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = rx.recv().await {
        let items = crate::measure::incoming(chunk, &mut seq);
        ledger.commit(items).await?;
        if seq - reported >= 1_000_000 {
            reported = seq;
            eprintln!(
                "  {seq} events committed ({:.0}/s)",
                seq as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let _ = generator.join();
    ledger.store().flush()?;
    println!(
        "built {} entries in {:.1}s ({:.0} events/s: workload generated and signed on one thread, committed through admission + projection + synced writes)",
        ledger.tip().seq,
        t.elapsed().as_secs_f64(),
        ledger.tip().seq as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the same queries in DuckDB (Python) over the export; `(name, median ms, rows)`.
fn duckdb(export: &Path, agent: &str, runs: usize) -> Result<Vec<(&'static str, f64, usize)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_duckdb.py");
    let spec = serde_json::json!({
        "events": export.join("events.parquet"),
        "views": VIEWS.iter().map(|(n, s)| serde_json::json!({"name": n, "sql": s})).collect::<Vec<_>>(),
        "queries": queries(agent).iter().map(|(n, s)| serde_json::json!({"name": n, "sql": s})).collect::<Vec<_>>(),
        "runs": runs,
    });
    let out = Command::new("python3")
        .arg(&script)
        .arg(spec.to_string())
        .output()
        .context("running python3 tools/bench_duckdb.py")?;
    if !out.status.success() {
        bail!(
            "DuckDB benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names = queries(agent);
    Ok(names
        .iter()
        .map(|(name, _)| {
            let r = &v[*name];
            (
                *name,
                r["median_ms"].as_f64().unwrap_or(f64::NAN),
                r["rows"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect())
}
