//! `docket detect` and `docket rules`: run detection rules over a ledger, check rule files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use docket_query::detect::{self, Detection, Rule, Triage};
use docket_query::{AuditSession, SessionOptions};

#[derive(Args)]
pub struct DetectArgs {
    /// The ledger's data directory.
    #[arg(long, env = "DOCKET_DATA")]
    data: PathBuf,
    /// A directory of rule files (`*.yml`: Docket SQL rules or Sigma rules) run beside the built-in ones.
    #[arg(long, env = "DOCKET_RULES")]
    rules: Option<PathBuf>,
    /// Run only the rules of --rules, not the built-in ones.
    #[arg(long)]
    no_built_in: bool,
    /// Report only what came after this seq (the rules still look back at everything before it).
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    /// Print one JSON object per detection instead of a table. The exit code is 1 when a rule
    /// did not load or did not run (the others' detections are still printed).
    #[arg(long)]
    json: bool,
    /// Show only detections of this level or above (informational, low, medium, high, critical).
    #[arg(long)]
    level: Option<String>,
    /// Show only detections about this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Show only open detections: never triaged (or reopened) and not suppressed.
    #[arg(long)]
    open: bool,
    /// How long a new agent is observed before rules below `high` may fire about it (`0s` for never).
    #[arg(long, default_value = "1d")]
    learning: String,
    /// Seqs per run of the rules: each run's triggers are this many entries (their history is
    /// everything before), which bounds a run's memory. The detections do not depend on it.
    #[arg(long, default_value_t = DETECT_WINDOW_ENTRIES)]
    window: u64,
}

/// Entries per run of the rules by default: one columnar segment's worth.
const DETECT_WINDOW_ENTRIES: u64 = 65_536;

#[derive(Subcommand)]
pub enum RulesCommand {
    /// List the rules that would run, with their id, level and content hash.
    List(RulesArgs),
    /// Parse every rule and plan its SQL against a ledger: each problem with its file and line.
    Check(RulesCheckArgs),
}

#[derive(Args)]
pub struct RulesArgs {
    #[arg(long, env = "DOCKET_RULES")]
    rules: Option<PathBuf>,
    #[arg(long)]
    no_built_in: bool,
}

#[derive(Args)]
pub struct RulesCheckArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// The ledger whose tables the rules are planned against.
    #[arg(long, env = "DOCKET_DATA")]
    data: PathBuf,
}

fn load(
    rules: Option<&std::path::Path>,
    no_built_in: bool,
) -> (Vec<Rule>, Vec<detect::RuleProblem>) {
    let (rules, problems) = detect::load(rules, !no_built_in);
    for p in &problems {
        eprintln!("rule not loaded: {p}");
    }
    (rules, problems)
}

async fn open(data: &std::path::Path) -> Result<AuditSession> {
    // Detection reads; it never writes the columnar copy.
    let options = SessionOptions {
        seal: false,
        ..SessionOptions::default()
    };
    Ok(AuditSession::open(data, options).await?)
}

pub async fn detect(args: DetectArgs) -> Result<ExitCode> {
    let floor = match &args.level {
        None => 0,
        Some(l) => detect::LEVELS.iter().position(|x| x == l).ok_or_else(|| {
            anyhow::anyhow!(
                "--level {l:?}: expected one of {}",
                detect::LEVELS.join(", ")
            )
        })?,
    };
    let learning_us = detect::parse_duration_us(&args.learning).ok_or_else(|| {
        anyhow::anyhow!(
            "--learning {:?}: expected a duration such as 12h or 7d",
            args.learning
        )
    })?;
    let (rules, not_loaded) = load(args.rules.as_deref(), args.no_built_in);
    let mut session = open(&args.data).await?;
    let head = session.coverage().head;
    let mut found = Vec::new();
    let mut failed: Vec<detect::RuleProblem> = Vec::new();
    let mut from = args.after_seq;
    while from < head {
        let to = head.min(from.saturating_add(args.window.max(1)));
        // A rule that failed once is not run again: its problem is reported once.
        let live: Vec<Rule> = rules
            .iter()
            .filter(|r| !failed.iter().any(|p| p.origin == r.origin))
            .cloned()
            .collect();
        let (mut f, p) = detect::run_all(&live, &mut session, from, to, learning_us).await;
        found.append(&mut f);
        failed.extend(p);
        from = to;
    }
    for p in &failed {
        eprintln!("rule failed: {p}");
    }
    let triage = detect::TriageLog::read(&session, head).await?;
    let mut found: Vec<(Detection, Triage)> = found
        .into_iter()
        .filter(|d| {
            detect::LEVELS
                .iter()
                .position(|x| *x == d.level)
                .unwrap_or(0)
                >= floor
                && args.agent.as_ref().is_none_or(|a| *a == d.agent)
        })
        .map(|d| {
            let t = triage.state(&d);
            (d, t)
        })
        .collect();
    if args.open {
        found.retain(|(_, t)| t.is_open());
    }
    if args.json {
        for (d, t) in &found {
            println!("{}", serde_json::to_string(&detection_json(d, t))?);
        }
    } else {
        print_table(&found);
    }
    eprintln!(
        "{} detections from {} rules over seqs {}..={head}{}",
        found.len(),
        rules.len() - failed.len(),
        args.after_seq + 1,
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} rules failed", failed.len())
        }
    );
    // The detections of the rules that ran are printed either way; a script must still be
    // able to tell that some rules did not run.
    Ok(if failed.is_empty() && not_loaded.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn detection_json(d: &Detection, t: &Triage) -> serde_json::Value {
    serde_json::json!({
        "id": d.id(),
        "seq": d.seq,
        "ts": d.ts.to_string(),
        "status": t.status,
        "reason": t.reason,
        "triaged_by": t.by,
        "suppressed_by_seq": t.suppressed_by,
        "rule_id": d.rule_id,
        "title": d.title,
        "level": d.level,
        "agent": d.agent,
        "observed": d.observed,
        "baseline": d.baseline,
        "evidence": d.evidence,
    })
}

fn print_table(found: &[(Detection, Triage)]) {
    println!(
        "{:>8}  {:<13}  {:<12}  {:<24}  detection",
        "seq", "level", "agent", "status"
    );
    for (d, t) in found {
        let mut status = t.status.clone();
        if let Some(r) = &t.reason {
            status = format!("{status}: {r}");
        }
        if t.suppressed_by.is_some() {
            status = format!("{status} (suppressed)");
        }
        println!(
            "{:>8}  {:<13}  {:<12}  {:<24}  {}: {} (baseline: {}; evidence {:?}; id {})",
            d.seq,
            d.level,
            d.agent,
            status,
            d.title,
            d.observed,
            d.baseline,
            d.evidence,
            d.id()
        );
    }
}

pub async fn rules(cmd: RulesCommand) -> Result<ExitCode> {
    match cmd {
        RulesCommand::List(a) => {
            let (rules, problems) = load(a.rules.as_deref(), a.no_built_in);
            for r in &rules {
                println!(
                    "{}  {:<13}  {}  {}  ({})",
                    r.id,
                    r.level,
                    &r.content_hash[..16],
                    r.title,
                    r.origin
                );
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCommand::Check(a) => {
            let (rules, mut problems) = load(a.rules.rules.as_deref(), a.rules.no_built_in);
            let total = rules.len() + problems.len();
            let mut session = open(&a.data).await?;
            let planned = detect::check_all(&rules, &mut session).await;
            for p in &planned {
                eprintln!("rule does not plan: {p}");
            }
            problems.extend(planned);
            println!("{} of {total} rules load and plan", total - problems.len());
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Worker threads of the detector's runtime: one per core of the machines Docket is measured on;
/// their lower priority, not their number, is what keeps ingest first.
const DETECT_THREADS: usize = 2;
/// How much lower than ingest the detector's threads run (a `nice` increment).
#[cfg(target_os = "linux")]
const DETECT_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (on Linux `setpriority` with id 0 applies
/// to the calling thread only); elsewhere it does nothing rather than renice the whole process.
/// The detector's threads and the read service's run so: ingest comes first.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its arguments; a failure leaves the priority as it was.
        let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, DETECT_NICE) } != 0;
        if failed {
            tracing::debug!(
                "a background thread runs at the ingest's priority: setpriority refused"
            );
        }
    }
}

/// Starts `serve`'s detector: loads the rules (a rule that does not load is reported with its
/// file and line, the others run) and runs them live until `stop` is set.
pub fn spawn_live(
    data: &std::path::Path,
    config: &docket_ledger::config::DetectionConfig,
    learning_us: i64,
    key: ed25519_dalek::SigningKey,
    client: &async_nats::Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<docket_query::live::LiveStats>>,
) {
    let (rules, problems) = detect::load(config.rules_dir.as_deref(), config.built_in);
    for p in &problems {
        tracing::error!(problem = %p, "a detection rule did not load; the others run");
    }
    let detector = docket_query::live::LiveDetector {
        data: data.to_path_buf(),
        rules,
        learning_us,
        key,
        sink: docket_ledger::publisher::Sink::Nats(async_nats::jetstream::new(client.clone())),
        bus: docket_ledger::transport::Bus::Nats(client.clone()),
        window: docket_query::live::DETECT_WINDOW_MAX,
        session: SessionOptions::default(),
    };
    let stats = std::sync::Arc::new(std::sync::Mutex::new(
        docket_query::live::LiveStats::default(),
    ));
    let shared = std::sync::Arc::clone(&stats);
    // The detector gets its own runtime on threads of lower priority: a window's SQL is
    // CPU-bound for hundreds of milliseconds, and on the ingest runtime it would hold workers
    // that acknowledge events. Ingest comes first; detection takes the CPU left over and
    // catches up when ingest slows (its findings are a function of the log, not of when it runs).
    let thread = std::thread::Builder::new()
        .name("docket-detect".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(DETECT_THREADS)
                .thread_stack_size(crate::WORKER_STACK_BYTES)
                .thread_name("docket-detect-worker")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "detection cannot start its runtime; the ledger goes on without it");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(detector.run(stop, shared)) {
                tracing::error!(error = %e, "detection stopped; the ledger goes on without it");
            }
        });
    let task = tokio::task::spawn_blocking(move || match thread {
        Ok(t) => {
            if t.join().is_err() {
                tracing::error!("detection panicked; the ledger goes on without it");
            }
        }
        Err(e) => tracing::error!(error = %e, "detection cannot start its thread"),
    });
    (task, stats)
}
