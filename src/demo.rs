//! `docket demo`: the whole pipeline in one process on a synthetic workload, then verification.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use docket_ledger::config::Config;
use docket_ledger::publisher::{Publisher, Sink};
use docket_ledger::store::Store;
use docket_ledger::transport::{Bus, MemoryStream, NatsSettings, NatsSource, Source};
use docket_ledger::{export, verify};
use docket_schemas::{Timestamp, encode_base64};
use docket_testkit::nats_server::NatsServer;
use docket_testkit::workload::Workload;

#[derive(Args)]
pub struct DemoArgs {
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Run through a real NATS server at this URL ("auto" starts a local nats-server).
    #[arg(long)]
    nats: Option<String>,
    /// Where to keep the demo's ledger, to explore afterwards. A directory a previous demo
    /// made is replaced; any other non-empty directory is refused.
    #[arg(long, default_value = "docket-demo")]
    data: PathBuf,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Forged or malformed envelopes per thousand.
    #[arg(long, default_value_t = 5)]
    forged_per_mille: u64,
    /// Well-signed events of misbehaving agents per thousand (policy violations).
    #[arg(long, default_value_t = 3)]
    misbehaving_per_mille: u64,
    /// Only print the summary, even on a terminal (what scripts and CI see). On a terminal the
    /// demo otherwise opens `docket watch` over its live workload, with a request waiting for
    /// you, until you quit it (`q`); --seconds is then ignored.
    #[arg(long)]
    headless: bool,
}

/// Events published per pacing step; the demo pauses between steps so output stays readable.
const DEMO_EVENTS_PER_SECOND: u64 = 20_000;
/// The rate while someone watches: a fleet at work a person can follow, for as long as they
/// watch, without the ledger growing by a million entries a minute.
const WATCHED_EVENTS_PER_SECOND: u64 = 1_000;
/// How often the demo's waiting agent asks again about its approval (CIBA's poll interval).
const AGENT_POLL_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(args: DemoArgs) -> Result<()> {
    use std::io::IsTerminal;
    let watched =
        !args.headless && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // The UI reaches the vault and the ledger over NATS: someone watching gets a real server.
    let nats = match (&args.nats, watched) {
        (None, true) => Some("auto".to_string()),
        (n, _) => n.clone(),
    };
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let data = prepare_data_dir(&args.data)?;
    let start = docket_ledger::clock::now()?;
    let mut workload = Workload::new(args.seed, start, 8, 24);
    workload.forged_per_mille = args.forged_per_mille;
    workload.misbehaving_per_mille = args.misbehaving_per_mille;
    if watched {
        // One address per agent: with the generator's spread of addresses the two-sources rule
        // would fire on nearly every call and bury what a person should see.
        workload.sources_per_agent = 1;
        // agent-0 waits for the person watching; the workload must not suspend it meanwhile.
        workload.spared_agent = Some(0);
    }
    let admin = encode_base64(workload.roles.admin.verifying_key().as_bytes());
    let config = Config {
        origin: "demo.docket.local/ledger".into(),
        checkpoint_every_entries: 5_000,
        ..Config::default()
    };
    let ledger = crate::open_ledger(&data, &config, &admin)?;

    let mut _server = None;
    let mut nats_url = None;
    let (source, bus, sink, transport) = match nats.as_deref() {
        None => {
            let stream = MemoryStream::default();
            let (tx, _) = tokio::sync::broadcast::channel(1024);
            (
                Source::Memory(stream.clone()),
                Bus::Memory(tx),
                Sink::Memory(stream),
                "in-process transport".to_string(),
            )
        }
        Some(url) => {
            let url = if url == "auto" {
                let server = NatsServer::start(&temp.path().join("nats"))?;
                let u = server.url();
                _server = Some(server);
                u
            } else {
                url.to_string()
            };
            let settings = NatsSettings {
                url: url.clone(),
                consumer: format!("docket-demo-{}", std::process::id()),
                filter: docket_ledger::transport::STREAM_SUBJECTS.into(),
                auth: Default::default(),
            };
            nats_url = Some(url.clone());
            let source = NatsSource::connect(&settings)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let client = source.client.clone();
            let js = async_nats::jetstream::new(client.clone());
            (
                Source::Nats(Box::new(source)),
                Bus::Nats(client),
                Sink::Nats(js),
                format!("NATS JetStream at {url}"),
            )
        }
    };
    let memory = match &sink {
        Sink::Memory(m) => Some(m.clone()),
        Sink::Nats(_) => None,
    };

    let how_long = if watched {
        "until you quit docket watch (q),".to_string()
    } else {
        format!("{} seconds of", args.seconds)
    };
    println!(
        "docket demo: {how_long} agents, grants, approvals, tokens and API calls over {transport}"
    );
    println!("ledger data: {}", data.display());
    let (vault_tx, vault_rx) = tokio::sync::mpsc::channel(64);
    let mut ledger = ledger.with_vault(
        docket_ledger::desk::Desk::new(
            workload.roles.vault.clone(),
            docket_ledger::clock::now()?,
            vec![],
        ),
        vault_rx,
    );
    let live_state = ledger.state();
    let line = match &bus {
        docket_ledger::transport::Bus::Nats(client) => {
            let (server, calls, introspector) =
                (client.clone(), vault_tx.clone(), ledger.introspector());
            tokio::spawn(async move {
                docket_ledger::transport::serve_vault_requests(server, calls, introspector, None)
                    .await
            });
            crate::vault_scene::VaultLine::Nats(client.clone())
        }
        docket_ledger::transport::Bus::Memory(_) => {
            crate::vault_scene::VaultLine::Inbox(vault_tx.clone())
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ledger_task = tokio::spawn(async move {
        let result = ledger
            .run(source, bus, async {
                let _ = stop_rx.await;
            })
            .await;
        (ledger, result)
    });

    let mut publisher = Publisher::new(sink);
    let mut failures = 0u64;
    let mut on_ack = |_: u64, r: Result<docket_ledger::publisher::Acked, String>| {
        if r.is_err() {
            failures += 1;
        }
    };
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let user_key = ed25519_dalek::SigningKey::from_bytes(blake3::hash(b"demo user-0").as_bytes());
    let mut setup = workload.setup();
    setup.push(crate::vault_scene::user_registration(&workload, &user_key)?);
    for p in setup {
        publisher
            .send(p.subject, p.envelope, p.id, &mut on_ack)
            .await?;
    }
    publisher.flush(&mut on_ack).await;
    match &memory {
        Some(m) => m.wait_acked(publisher.stats.published).await?,
        None => tokio::time::sleep(Duration::from_millis(500)).await,
    }
    crate::vault_scene::play(&line, &workload, &user_key).await?;
    let watching = match (&nats_url, &line, watched) {
        (Some(url), crate::vault_scene::VaultLine::Nats(client), true) => Some(
            watch(&data, &config, url, client, &user_key)
                .await
                .context("opening docket watch over the demo")?,
        ),
        _ => None,
    };
    let rate = if watching.is_some() {
        WATCHED_EVENTS_PER_SECOND
    } else {
        DEMO_EVENTS_PER_SECOND
    };
    let started = Instant::now();
    let mut next_report = Duration::from_secs(1);
    let mut sent = 0u64;
    let going = |started: Instant| match &watching {
        Some(w) => !w.ui.is_finished(),
        None => started.elapsed() < Duration::from_secs(args.seconds),
    };
    while going(started) {
        let p = workload.next_envelope();
        if let docket_testkit::workload::Expect::Quarantine(code) = p.expect {
            *expected.entry(code.to_string()).or_default() += 1;
        }
        publisher
            .send(p.subject, p.envelope, p.id, &mut on_ack)
            .await?;
        sent += 1;
        if sent.is_multiple_of(200) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if watching.is_none() && started.elapsed() >= next_report {
            println!("  {:>2}s  published {sent}", next_report.as_secs());
            next_report += Duration::from_secs(1);
        }
    }
    publisher.flush(&mut on_ack).await;
    let watched_outcome = match watching {
        None => None,
        Some(w) => Some(w.finish().await),
    };
    if let Some(m) = &memory {
        m.wait_acked(publisher.stats.published).await?;
    } else {
        // JetStream has them all; wait until the ledger has drained its consumer.
        let mut last = u64::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seq = live_state.read().map(|s| s.seq).unwrap_or(0);
            if seq == last {
                break;
            }
            last = seq;
        }
    }
    let _ = stop_tx.send(());
    let (ledger, result) = ledger_task.await.context("ledger task")?;
    result?;
    let stats = ledger.stats.clone();
    let elapsed = started.elapsed().as_secs_f64();
    drop(ledger);

    println!();
    println!(
        "published {} envelopes ({} forged or malformed on purpose), {failures} publish failures",
        publisher.stats.published,
        expected.values().sum::<u64>()
    );
    println!(
        "appended {} entries, quarantined {}, duplicates {}, {} checkpoints, {:.0} events/s",
        stats.appended,
        stats.quarantined,
        stats.duplicates,
        stats.checkpoints,
        stats.appended as f64 / elapsed
    );

    let store = Store::open_reader(&crate::db_dir(&data))?;
    let by_code: BTreeMap<String, u64> = store.quarantine_counts()?;
    println!("quarantine by reason (expected from the workload in brackets):");
    for code in by_code
        .keys()
        .chain(expected.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        println!(
            "  {code:<20} {:>5}  [{}]",
            by_code.get(code).unwrap_or(&0),
            expected.get(code).unwrap_or(&0)
        );
    }
    println!("last entries:");
    let (size, _) = store.head()?;
    let mut out = Vec::new();
    export::write_log(&store, size.saturating_sub(2), 3, &mut out)?;
    for line in String::from_utf8_lossy(&out).lines() {
        println!("  {}", line.chars().take(220).collect::<String>());
    }
    let findings = store.findings()?;
    let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
    for f in &findings {
        *by_rule.entry(f.rule.as_str().to_string()).or_default() += 1;
    }
    println!(
        "policy findings ({} events from misbehaving agents were generated):",
        workload.misbehaved
    );
    for (rule, n) in &by_rule {
        println!("  {rule:<28} {n:>5}");
    }
    if let Some(f) = findings.last() {
        println!("  latest: seq {} [{:?}] {}", f.seq, f.severity, f.message);
    }
    let state = store.load_state()?;
    let at = state.ts.unwrap_or(Timestamp::UNIX_EPOCH);
    let active = |s: docket_ledger::state::Status| s == docket_ledger::state::Status::Active;
    println!(
        "vault state: {} agents, {} grants ({} active), {} tokens ({} active), {} approvals",
        state.agents.len(),
        state.grants.len(),
        state
            .grants
            .values()
            .filter(|g| active(g.status(at)))
            .count(),
        state.tokens.len(),
        state
            .tokens
            .values()
            .filter(|t| active(t.status(at)))
            .count(),
        state.approvals.len()
    );
    let rebuilt = docket_ledger::projection::rebuild_check(&store)?;
    println!(
        "state rebuild from genesis: {} ({:.0} events/s)",
        if rebuilt.equal {
            "matches the stored projection"
        } else {
            "DIVERGES"
        },
        rebuilt.events_per_s
    );
    let flagged: std::collections::BTreeSet<u64> = findings.iter().map(|f| f.seq).collect();
    let report = verify::verify(&store, &verify::Trust::default(), &mut |_, _| {})?;
    if report.intact() {
        println!(
            "verify: intact, {} entries, head {}, {}/{} checkpoints verified, {:.0} events/s",
            report.entries,
            report.head,
            report.checkpoints_verified,
            report.checkpoints,
            report.events_per_s
        );
    } else {
        println!("verify: NOT INTACT: {:?}", report.problems);
        anyhow::bail!("the demo's own ledger failed verification");
    }
    let question = "SELECT agent, count(*) AS calls, sum(CASE WHEN status = 403 THEN 1 ELSE 0 END) AS denied \
                    FROM api_calls GROUP BY agent ORDER BY calls DESC, agent LIMIT 5";
    let docket = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "docket".into());
    let shown = data.display();
    println!("an auditor asks, in SQL: {docket} sql --data {shown} \"{question}\"");
    let mut session =
        docket_query::AuditSession::open(&data, docket_query::SessionOptions::default()).await?;
    let stream = session.stream(question).await?;
    docket_query::render::write(
        stream,
        docket_query::render::Format::Table,
        std::io::stdout(),
    )
    .await?;
    println!();
    println!(
        "The demo's ledger is kept in {shown}; explore it (the same commands work on any ledger):"
    );
    for (what, args) in [
        ("verify it offline", "verify"),
        ("the policy findings", "findings"),
        ("grants as derived from the log", "state grants"),
        ("tokens (ids and hashes, never secrets)", "state tokens"),
        ("the refused envelopes and why", "quarantine"),
        ("an SQL shell (\\d lists tables)", "sql"),
    ] {
        println!("  {what:<40} {docket} {args} --data {shown}");
    }
    if let Some(outcome) = watched_outcome {
        outcome.context("docket watch")?;
    }
    if by_code != expected {
        anyhow::bail!("quarantine reasons differ from what the workload forged");
    }
    if flagged.len() as u64 != workload.misbehaved || !rebuilt.equal {
        anyhow::bail!("findings or state do not match the workload");
    }
    Ok(())
}

/// What runs beside the workload while someone watches: the UI, the detector, the waiting agent.
struct Watching {
    ui: tokio::task::JoinHandle<Result<std::process::ExitCode>>,
    detector: tokio::task::JoinHandle<()>,
    agent: tokio::task::JoinHandle<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watching {
    /// Waits for the UI to end (the person quit), then stops the rest.
    async fn finish(self) -> Result<()> {
        let ui = self.ui.await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.agent.abort();
        let _ = self.detector.await;
        ui.context("docket watch stopped")?.map(|_| ())
    }
}

/// Starts what a person watching the demo sees: live detection, a request from agent-0 waiting
/// for the demo's user (whose key is written beside the ledger, for the UI to sign with), and
/// `docket watch` itself.
async fn watch(
    data: &std::path::Path,
    config: &Config,
    url: &str,
    client: &async_nats::Client,
    user: &ed25519_dalek::SigningKey,
) -> Result<Watching> {
    let line = crate::vault_scene::VaultLine::Nats(client.clone());
    let approval = crate::vault_scene::leave_waiting(&line, user).await?;
    let key_file = data.join("user-0.key");
    docket_ledger::keyfile::write(&key_file, user)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ledger_key = docket_ledger::keyfile::read(&crate::ledger_key_path(data, config))?;
    let learning_us = docket_query::detect::parse_duration_us(&config.detection.learning)
        .context("the default learning period")?;
    let (detector, _) = crate::detect_cmd::spawn_live(
        data,
        &config.detection,
        learning_us,
        ledger_key,
        client,
        std::sync::Arc::clone(&stop),
    );
    let agent = tokio::spawn(async move {
        // Like a real agent, it asks again until it has its token or hears why not.
        loop {
            tokio::time::sleep(AGENT_POLL_INTERVAL).await;
            match crate::vault_scene::poll(&line, &approval).await {
                Ok(false) => {}
                Ok(true) | Err(_) => return,
            }
        }
    });
    let ui = tokio::spawn(crate::watch_cmd::run(
        crate::watch_cmd::WatchArgs::for_demo(
            data.to_path_buf(),
            url.to_string(),
            key_file,
            "user-0",
        ),
    ));
    Ok(Watching {
        ui,
        detector,
        agent,
        stop,
    })
}

/// A file that marks a directory as made by `docket demo`, so a later demo may replace it.
const DEMO_MARKER: &str = ".docket-demo";

/// Makes `dir` ready for a fresh demo ledger and returns its absolute path. Only a directory
/// that a demo made (it holds the marker) is ever deleted.
fn prepare_data_dir(dir: &std::path::Path) -> Result<PathBuf> {
    let non_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty {
        if !dir.join(DEMO_MARKER).exists() {
            anyhow::bail!(
                "{} exists and was not made by `docket demo`; pass --data with a new directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the previous demo's {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(DEMO_MARKER),
        b"made by docket demo; a later demo replaces it\n",
    )
    .with_context(|| format!("writing {}", dir.join(DEMO_MARKER).display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}
