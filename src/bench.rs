//! `docket bench`: measured figures (events/s, latency percentiles, memory), printed, never asserted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::measure::{incoming, peak_rss_mib};
use anyhow::Result;
use clap::{Args, Subcommand};
use docket_ledger::admission::verify_all;
use docket_ledger::clock::now_us;
use docket_ledger::config::Config;
use docket_ledger::publisher::{Publisher, Sink};
use docket_ledger::store::Store;
use docket_ledger::transport::{Bus, NatsSettings, NatsSource, Source};
use docket_ledger::verify;
use docket_schemas::{Envelope, Timestamp, encode_base64};
use docket_testkit::nats_server::NatsServer;
use docket_testkit::workload::{Published, Workload};
use futures::StreamExt;

/// `(from_seq, to_seq, committed_us)` of each `docket.appended` notice seen.
pub type Commits = Arc<Mutex<Vec<(u64, u64, i64)>>>;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// End-to-end ingest through JetStream, publish-to-append latency, verify rate, raw ed25519 rates.
    Ingest(IngestArgs),
    /// The ledger alone, no NATS: decode, verify, chain (admission), then admission plus the synced write.
    Admit(AdmitArgs),
    /// The vault: replay rate, restart time, token issuance and introspection over NATS.
    Vault(VaultArgs),
    /// SQL: columnar copy build rate, three auditor queries, memory, and DuckDB on the same data.
    Sql(crate::bench_sql::SqlBenchArgs),
    /// Detection: ingest with every built-in rule running live against ingest without, and the
    /// time from an event's append to its finding's publication.
    Detect(crate::bench_detect::DetectBenchArgs),
    /// The terminal UI: frame time (update and draw) and memory while it is fed events at a rate.
    Watch(crate::bench_watch::WatchBenchArgs),
    /// The recording gateway: proxied calls/s and added latency against the upstream
    /// called directly, and the time from a suspension's append to the first refusal.
    Gateway(crate::bench_gateway::GatewayBenchArgs),
    /// Transparency: the Merkle tree's cost at ingest, proof rates, and full and incremental
    /// verify against the batch signature-verification ceiling.
    Transparency(crate::bench_transparency::TransparencyBenchArgs),
}

#[derive(Args)]
pub struct AdmitArgs {
    /// Envelopes to admit (decode, authorize, verify, chain) in memory.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
}

#[derive(Args)]
pub struct IngestArgs {
    /// Events for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events for the paced latency run.
    #[arg(long, default_value_t = 100_000)]
    latency_events: usize,
    /// NATS URL; by default a nats-server is started in a temporary directory.
    #[arg(long)]
    nats: Option<String>,
    /// Keep the ledger here instead of a temporary directory.
    #[arg(long)]
    data: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Admit(args) => admit_only(args),
        BenchCommand::Vault(args) => vault(args).await,
        BenchCommand::Sql(args) => crate::bench_sql::run(args).await,
        BenchCommand::Detect(args) => crate::bench_detect::run(args).await,
        BenchCommand::Watch(args) => crate::bench_watch::run(args),
        BenchCommand::Gateway(args) => crate::bench_gateway::run(args).await,
        BenchCommand::Transparency(args) => crate::bench_transparency::run(args).await,
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn signature_rates(sample: &[Published]) -> (f64, f64) {
    let envs: Vec<Envelope> = sample
        .iter()
        .filter_map(|p| Envelope::decode(&p.envelope).ok())
        .collect();
    let roles = docket_testkit::workload::Roles::from_seed(1);
    let keys = [
        roles.vault.verifying_key(),
        roles.gateway.verifying_key(),
        roles.approvals.verifying_key(),
        roles.admin.verifying_key(),
    ];
    let key_of = |e: &Envelope| {
        keys.iter()
            .find(|k| docket_schemas::key_id(k.as_bytes()) == e.key_id)
            .copied()
            .unwrap_or(keys[0])
    };
    let pairs: Vec<(Envelope, [docket_ledger::registry::Signer; 1])> = envs
        .into_iter()
        .map(|e| {
            let key = key_of(&e);
            let key_id = e.key_id.clone();
            (e, [docket_ledger::registry::Signer { key_id, key }])
        })
        .collect();
    let n_single = pairs.len().min(5_000);
    let t = Instant::now();
    let ok = pairs[..n_single]
        .iter()
        .filter(|(e, [s])| e.verify(&s.key))
        .count();
    let single = n_single as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let oks = verify_all(pairs.iter().map(|(e, s)| (e, s.as_slice())));
    let batch = pairs.len() as f64 / t.elapsed().as_secs_f64();
    assert_eq!(ok, n_single, "benchmark sample must verify");
    assert!(
        oks.iter().all(|o| *o == Some(0)),
        "benchmark sample must verify"
    );
    (single, batch)
}

/// A start time for `n` workload events that keeps every one in the past: the ledger
/// quarantines events dated further ahead of their receipt than the policy allows.
pub fn past_start(n: usize) -> Result<Timestamp> {
    let span_s = (n as u64 * docket_testkit::workload::STEP_US_MAX_DEFAULT / 1_000_000) as i64;
    Ok(docket_ledger::clock::now()?.plus_seconds(-span_s - 1))
}

pub(crate) fn workload(n: usize, seed: u64) -> Result<Vec<Published>> {
    let mut w = Workload::new(seed, past_start(n)?, 50, 200);
    let mut out = w.setup();
    out.extend((0..n).map(|_| w.next_envelope()));
    Ok(out)
}

/// Workload envelopes as the ledger receives them, numbered on from `*seq` as a stream would.
async fn ingest(args: IngestArgs) -> Result<()> {
    println!(
        "docket bench ingest: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let t = Instant::now();
    let throughput_set = workload(args.events, 1)?;
    let roles = docket_testkit::workload::Roles::from_seed(1);
    println!(
        "generated and signed {} events in {:.1}s",
        throughput_set.len(),
        t.elapsed().as_secs_f64()
    );

    let (single, batch) = signature_rates(&throughput_set[..throughput_set.len().min(100_000)]);
    println!(
        "ed25519 verify_strict, one core:        {single:>10.0} sig/s ({:.1} us each)",
        1e6 / single
    );
    println!("ed25519 batch verify, all cores:        {batch:>10.0} sig/s");

    let temp = tempfile::tempdir()?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().join("ledger"));
    let mut _server = None;
    let url = match &args.nats {
        Some(u) => u.clone(),
        None => {
            let s = NatsServer::start(&temp.path().join("nats"))?;
            let u = s.url();
            _server = Some(s);
            u
        }
    };
    let admin = encode_base64(roles.admin.verifying_key().as_bytes());
    let config = Config {
        checkpoint_every_entries: 100_000,
        ..Config::default()
    };
    let mut ledger = crate::open_ledger(&data, &config, &admin)?;
    let settings = NatsSettings {
        url: url.clone(),
        consumer: format!("bench-{}", std::process::id()),
        filter: docket_ledger::transport::STREAM_SUBJECTS.into(),
        auth: Default::default(),
    };
    let source = NatsSource::connect(&settings).await?;
    let client = source.client.clone();
    let appended_sub = client
        .subscribe(docket_ledger::transport::SUBJECT_APPENDED)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bus = Bus::Nats(client.clone());
    let ledger_task = tokio::spawn(async move {
        let r = ledger
            .run(Source::Nats(Box::new(source)), bus, async {
                let _ = stop_rx.await;
            })
            .await;
        (ledger, r)
    });

    let (commits, watcher) = watch_commits(appended_sub);
    let js = async_nats::jetstream::new(client.clone());
    let mut publisher = Publisher::new(Sink::Nats(js));
    let mut sent_us: Vec<i64> =
        Vec::with_capacity(throughput_set.len() + args.latency_events + 1_000);
    let mut fails = 0u64;

    // Throughput: publish as fast as JetStream acks.
    let total = throughput_set.len() as u64;
    let t0 = now_us()?;
    for p in throughput_set {
        sent_us.push(now_us()?);
        publisher
            .send(p.subject, p.envelope, p.id, &mut |_, r| {
                fails += u64::from(r.is_err())
            })
            .await?;
    }
    publisher
        .flush(&mut |_, r| fails += u64::from(r.is_err()))
        .await;
    let publish_done = now_us()?;
    let done_at = wait_for_seq(&commits, total).await?;
    let ingest_rate = total as f64 / ((done_at - t0) as f64 / 1e6);
    println!(
        "publish (JetStream acked), 1 publisher: {:>10.0} events/s",
        total as f64 / ((publish_done - t0) as f64 / 1e6)
    );
    println!(
        "end-to-end ingest (publish -> durable append): {ingest_rate:>10.0} events/s = {:.0}% of batch verify",
        100.0 * ingest_rate / batch
    );
    let lat_burst = latencies(&commits, &sent_us, 1, total);
    println!(
        "  publish-to-append under saturation: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat_burst, 0.5),
        percentile(&lat_burst, 0.99)
    );

    // Latency: the same pipeline paced at half the measured ingest rate.
    let rate = (ingest_rate / 2.0).max(1_000.0);
    let mut w = Workload::new(2, past_start(args.latency_events)?, 50, 200);
    w.roles = docket_testkit::workload::Roles::from_seed(1);
    let _ = w.setup(); // same keys, already registered; the agents list is what we need
    let paced: Vec<Published> = (0..args.latency_events)
        .map(|_| w.next_envelope())
        .collect();
    let first_seq = total + 1;
    let start = Instant::now();
    for (i, p) in paced.into_iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed())
            && wait > Duration::from_micros(500)
        {
            tokio::time::sleep(wait).await;
        }
        sent_us.push(now_us()?);
        publisher
            .send(p.subject, p.envelope, p.id, &mut |_, r| {
                fails += u64::from(r.is_err())
            })
            .await?;
    }
    publisher
        .flush(&mut |_, r| fails += u64::from(r.is_err()))
        .await;
    let last = total + args.latency_events as u64;
    wait_for_seq(&commits, last).await?;
    let lat = latencies(&commits, &sent_us, first_seq, last);
    if std::env::var_os("DOCKET_BENCH_DEBUG").is_some() {
        let c = commits.lock().map(|c| c.clone()).unwrap_or_default();
        let mut worst: Vec<(i64, u64, u64, u64)> = c
            .iter()
            .filter(|(a, _, _)| *a >= first_seq)
            .map(|&(a, b, t)| (t - sent_us[(a - 1) as usize], a, b, t as u64))
            .collect();
        worst.sort();
        println!(
            "worst batches: {:?}",
            &worst[worst.len().saturating_sub(5)..]
        );
        println!(
            "notices: {}, first paced seq {first_seq}, sent {}",
            c.len(),
            sent_us.len()
        );
        for &(a, b, t) in c.iter().filter(|(a, _, _)| *a >= first_seq).take(3) {
            println!(
                "batch {a}..{b} ({}) committed {:.1} ms after its first publish",
                b - a + 1,
                (t - sent_us[(a - 1) as usize]) as f64 / 1000.0
            );
        }
    }
    println!(
        "publish-to-append at {rate:.0} events/s (half the ingest rate): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );

    let _ = stop_tx.send(());
    let (ledger, r) = ledger_task.await?;
    r?;
    watcher.abort();
    let st = &ledger.stats;
    println!(
        "ledger: {} batches, mean {:.0} events per batch (one fsync each)",
        st.batches,
        st.appended as f64 / st.batches.max(1) as f64
    );
    println!(
        "  loop time: waiting {:.1}s, admission {:.1}s, synced write {:.1}s, acks {:.1}s",
        st.wait_us as f64 / 1e6,
        st.admit_us as f64 / 1e6,
        st.write_us as f64 / 1e6,
        st.ack_us as f64 / 1e6
    );
    drop(ledger);

    let store = Store::open_reader(&crate::db_dir(&data))?;
    let report = verify::verify(&store, &verify::Trust::default(), &mut |_, _| {})?;
    println!(
        "verify: {} entries in {:.2}s = {:.0} events/s = {:.0}% of batch verify (intact: {})",
        report.entries,
        report.elapsed_s,
        report.events_per_s,
        100.0 * report.events_per_s / batch,
        report.intact()
    );
    println!(
        "publish failures: {fails}; peak RSS of this process (publisher + ledger + verifier): {:.0} MiB",
        peak_rss_mib()
    );
    Ok(())
}

fn admit_only(args: AdmitArgs) -> Result<()> {
    use docket_ledger::admission::{BATCH_EVENTS_MAX, ChainTip, Incoming, admit};
    use docket_ledger::registry::Registry;
    let items: Vec<Incoming> = incoming(workload(args.events, 1)?, &mut 0);
    let t = Instant::now();
    let envs: Vec<Envelope> = items
        .iter()
        .filter_map(|i| Envelope::decode(&i.payload).ok())
        .collect();
    let env_us = t.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
    let t = Instant::now();
    let events = envs.iter().filter(|e| e.event().is_ok()).count();
    let event_us = t.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
    let t = Instant::now();
    let pae: usize = envs.iter().map(|e| e.signed_bytes().len()).sum();
    let pae_us = t.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
    // The plain-JSON gate (no repeated key, bounded nesting) runs inside both decodes.
    let t = Instant::now();
    let plain = items
        .iter()
        .zip(&envs)
        .filter(|(i, e)| {
            docket_schemas::strict_json::check(&i.payload).is_ok()
                && docket_schemas::strict_json::check(&e.payload).is_ok()
        })
        .count();
    let plain_us = t.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
    println!(
        "one core, per event: envelope decode {env_us:.2} us, event decode+validate {event_us:.2} us, PAE {pae_us:.2} us ({events} events, {pae} bytes); \
         of the two decodes, the plain-JSON check of envelope and payload {plain_us:.2} us ({:.0}%, {plain} plain)",
        100.0 * plain_us / (env_us + event_us)
    );
    let admin = docket_testkit::workload::Roles::from_seed(1)
        .admin
        .verifying_key();
    let fresh = || ChainTip {
        seq: 0,
        head: [0; 32],
        registry: Registry::new(
            &admin,
            &ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
        ),
        source_seq: 0,
    };
    let mut tip = fresh();
    let t = Instant::now();
    for batch in items.chunks(BATCH_EVENTS_MAX) {
        let plan = admit(&mut tip, batch, now_us()?, |ids| {
            Ok::<_, ()>(vec![None; ids.len()])
        });
        assert!(plan.is_ok_and(|p| p.quarantined.is_empty()));
    }
    let rate = items.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "admission only (decode, authorize, batch verify, chain), batches of {BATCH_EVENTS_MAX}: {rate:.0} events/s"
    );
    let temp = tempfile::tempdir()?;
    let config = Config::default();
    let ledger = crate::open_ledger(temp.path(), &config, &encode_base64(admin.as_bytes()))?;
    let store = ledger.store();
    let mut tip = fresh();
    let t = Instant::now();
    for batch in items.chunks(BATCH_EVENTS_MAX) {
        let plan = admit(&mut tip, batch, now_us()?, |ids| store.stored_payloads(ids))?;
        store.commit(&plan, &tip, None)?;
    }
    let rate = items.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "admission + dedup lookup + synced RocksDB write:                  {rate:.0} events/s"
    );
    Ok(())
}

/// The ledger as the vault too, answering `docket.vault.>` over `client` (as `serve --vault-key`).
pub fn with_vault_over_nats(
    ledger: docket_ledger::ingest::Ledger,
    vault_key: &ed25519_dalek::SigningKey,
    client: &async_nats::Client,
) -> Result<docket_ledger::ingest::Ledger> {
    let (tx, rx) = tokio::sync::mpsc::channel(docket_ledger::transport::VAULT_INFLIGHT_MAX);
    let ledger = ledger.with_vault(
        docket_ledger::desk::Desk::new(vault_key.clone(), docket_ledger::clock::now()?, vec![]),
        rx,
    );
    let (client, introspector) = (client.clone(), ledger.introspector());
    tokio::spawn(async move {
        docket_ledger::transport::serve_vault_requests(client, tx, introspector, None).await
    });
    Ok(ledger)
}

/// Commit times per seq, from the ledger's own `docket.appended` notices.
pub fn watch_commits(
    mut appended: async_nats::Subscriber,
) -> (Commits, tokio::task::JoinHandle<()>) {
    let commits: Commits = Arc::default();
    let into = Arc::clone(&commits);
    let watcher = tokio::spawn(async move {
        while let Some(m) = appended.next().await {
            if let Ok(v) = serde_json::from_slice::<docket_schemas::notice::Appended>(&m.payload)
                && let Ok(mut c) = into.lock()
            {
                c.push((v.from_seq, v.to_seq, v.committed_us));
            }
        }
    });
    (commits, watcher)
}

pub async fn wait_for_seq(commits: &Commits, seq: u64) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(t) = commits
            .lock()
            .ok()
            .and_then(|c| c.iter().find(|(_, b, _)| *b >= seq).map(|x| x.2))
        {
            return Ok(t);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the ledger did not reach seq {seq} within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Latencies in ms for seqs `from..=to`, assuming seq n was the n-th envelope published (no rejects).
fn latencies(commits: &Commits, sent_us: &[i64], from: u64, to: u64) -> Vec<f64> {
    let c = commits.lock().map(|c| c.clone()).unwrap_or_default();
    let mut out: Vec<f64> = c
        .iter()
        .flat_map(|&(a, b, t)| (a.max(from)..=b.min(to)).map(move |s| (s, t)))
        .filter_map(|(s, t)| {
            sent_us
                .get((s - 1) as usize)
                .map(|&p| (t - p) as f64 / 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

#[derive(Args)]
pub struct VaultArgs {
    /// Entries in the ledger used for replay and restart figures.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Introspection requests in the throughput run.
    #[arg(long, default_value_t = 40_000)]
    introspections: usize,
    /// Token requests in the issuance run.
    #[arg(long, default_value_t = 5_000)]
    tokens: usize,
    /// Requests kept in flight by the load generator.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

pub async fn vault(args: VaultArgs) -> Result<()> {
    use docket_ledger::state::VaultState;
    use docket_schemas::vault::{Op, Reply, Request, seal_request};
    println!("docket bench vault: {} entries", args.entries);
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("ledger");
    let roles = docket_testkit::workload::Roles::from_seed(1);
    let admin = encode_base64(roles.admin.verifying_key().as_bytes());
    let config = Config {
        checkpoint_every_entries: 1_000_000,
        ..Config::default()
    };

    // Build the ledger through the real commit path (admission, projection, synced writes).
    let t = Instant::now();
    let published = workload(args.entries, 1)?;
    let gen_s = t.elapsed().as_secs_f64();
    let events: Vec<docket_schemas::Event> = published
        .iter()
        .filter_map(|p| {
            Envelope::decode(&p.envelope)
                .ok()
                .and_then(|e| e.event().ok())
        })
        .collect();
    let mut ledger = crate::open_ledger(&data, &config, &admin)?;
    let t = Instant::now();
    let mut seq = 0u64;
    for chunk in published.chunks(docket_ledger::admission::BATCH_EVENTS_MAX) {
        let items = incoming(chunk.iter().cloned(), &mut seq);
        ledger.commit(items).await?;
    }
    let build_s = t.elapsed().as_secs_f64();
    println!(
        "built {} entries in {build_s:.1}s ({:.0} events/s through admission + projection + synced writes; workload generated and signed in {gen_s:.1}s)",
        ledger.tip().seq,
        ledger.tip().seq as f64 / build_s
    );
    drop(published);

    // Replay: the fold alone on one core, then decode + fold from the store.
    let t = Instant::now();
    let mut state = VaultState::default();
    for (i, e) in events.iter().enumerate() {
        state.replay(i as u64 + 1, e.ts.as_micros(), e);
    }
    let fold_rate = events.len() as f64 / t.elapsed().as_secs_f64();
    println!("replay, fold only (events already decoded), one core: {fold_rate:>10.0} events/s");
    drop(events);
    let report = docket_ledger::projection::rebuild_check(ledger.store())?;
    println!(
        "replay from the store (read, decode, fold), one core:  {:>10.0} events/s (matches stored projection: {})",
        report.events_per_s, report.equal
    );
    println!(
        "state: {} agents, {} grants, {} tokens, {} approvals",
        state.agents.len(),
        state.grants.len(),
        state.tokens.len(),
        state.approvals.len()
    );
    drop(state);
    ledger.store().flush()?;
    drop(ledger);

    // Restart: open the store, load the tip, registry and projection.
    let t = Instant::now();
    let ledger = crate::open_ledger(&data, &config, &admin)?;
    let restart_s = t.elapsed().as_secs_f64();
    // Its parts, again one by one: loading the stored projection, and checking that the
    // projection, findings and registry are what the chain derives (SECURITY.md, row 3).
    let t = Instant::now();
    let loaded = ledger.store().load_state()?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let agrees = docket_ledger::projection::rebuild_check(ledger.store())?.agrees();
    let check_s = t.elapsed().as_secs_f64();
    println!(
        "restart with {} entries after a clean stop: {restart_s:.2}s; of it, loading the stored projection ({} tokens) {load_s:.2}s and checking it, the findings and the registry against a replay of the chain {check_s:.2}s ({:.0}% of the restart; agrees: {agrees})",
        ledger.tip().seq,
        loaded.tokens.len(),
        100.0 * check_s / restart_s
    );
    drop(loaded);

    // The vault over a real NATS server.
    let server = NatsServer::start(&temp.path().join("nats"))?;
    let settings = NatsSettings {
        url: server.url(),
        consumer: "bench-vault".into(),
        filter: docket_ledger::transport::STREAM_SUBJECTS.into(),
        auth: Default::default(),
    };
    let source = NatsSource::connect(&settings).await?;
    let client = source.client.clone();
    // One agent asks for thousands of tokens: lift its per-key budget on the chain, as an
    // admin would (the default is 100 requests a second per key).
    let mut ledger = ledger;
    let policy = ledger.policy().policy;
    let lifted = docket_schemas::Event {
        v: docket_schemas::SCHEMA_VERSION,
        id: docket_schemas::EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: docket_ledger::clock::now()?,
        body: docket_schemas::EventBody::PolicySet(docket_schemas::PolicySet {
            revision: policy.revision + 1,
            vault_requests_per_key_per_s: docket_schemas::policy::POLICY_RATE_MAX,
            ..policy
        }),
    };
    ledger
        .commit(vec![docket_ledger::admission::Incoming::sealed(
            &lifted,
            &roles.admin,
            docket_ledger::admission::LOCAL_SEQ_BIT | 7,
        )])
        .await?;
    let mut ledger = with_vault_over_nats(ledger, &roles.vault, &client)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bus = Bus::Nats(client.clone());
    let ledger_task = tokio::spawn(async move {
        let r = ledger
            .run(Source::Nats(Box::new(source)), bus, async {
                let _ = stop_rx.await;
            })
            .await;
        (ledger, r)
    });
    let agent_key = ed25519_dalek::SigningKey::from_bytes(blake3::hash(b"agent-0").as_bytes());
    let now = docket_ledger::clock::now;
    let request = |op: Op| -> Result<Request> {
        Ok(Request {
            v: docket_schemas::vault::REQUEST_VERSION,
            id: docket_schemas::EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: now()?,
            op,
        })
    };
    let grant = request(Op::Grant {
        user: "user-0".into(),
        agent: "agent-0".into(),
        audience: "https://bench.example".into(),
        scopes: vec!["bench:read".into()],
        expires_at: now()?.plus_seconds(3_600),
        max_calls: None,
        max_token_ttl_s: Some(900),
        approval: vec![],
    })?;
    // The vault's subscription starts in its own task: wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        match client
            .request(
                "docket.vault.grant",
                seal_request(&grant, &roles.admin).into(),
            )
            .await
        {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    let reply: Reply = serde_json::from_slice(&reply.payload)?;
    anyhow::ensure!(
        matches!(&reply, Reply::Outcome(o) if o.ok),
        "grant refused: {reply:?}"
    );

    let reply_key = docket_schemas::seal::ReplyKey::from_bytes(rand::random());
    let token_reqs: Vec<Vec<u8>> = (0..args.tokens)
        .map(|_| -> Result<Vec<u8>> {
            Ok(seal_request(
                &request(Op::Token {
                    agent: "agent-0".into(),
                    audience: "https://bench.example".into(),
                    scopes: vec!["bench:read".into()],
                    action: "bench".into(),
                    approval_id: None,
                    ttl_s: Some(900),
                    reply_key: Some(reply_key.public()),
                    authorization_details: vec![],
                })?,
                &agent_key,
            ))
        })
        .collect::<Result<_>>()?;
    let (replies, rate, lat) =
        load(&client, "docket.vault.token", token_reqs, args.in_flight).await?;
    let secrets: Vec<String> = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Outcome(o) => o.open_token(&reply_key).ok(),
            Reply::Introspection(_) => None,
        })
        .collect();
    println!(
        "token issuance over NATS, {} in flight: {rate:>8.0} tokens/s (each appended durably before the reply), p50 {:.1} ms, p99 {:.1} ms ({} issued)",
        args.in_flight,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        secrets.len()
    );
    anyhow::ensure!(!secrets.is_empty(), "no token was issued");
    let intro_reqs: Vec<Vec<u8>> = (0..args.introspections)
        .map(|i| -> Result<Vec<u8>> {
            Ok(seal_request(
                &request(Op::Introspect {
                    token: secrets[i % secrets.len()].clone(),
                })?,
                &roles.gateway,
            ))
        })
        .collect::<Result<_>>()?;
    let (replies, rate, lat) = load(
        &client,
        "docket.vault.introspect",
        intro_reqs,
        args.in_flight,
    )
    .await?;
    let active = replies
        .iter()
        .filter(|r| matches!(r, Reply::Introspection(i) if i.active))
        .count();
    println!(
        "introspection over NATS, {} in flight: {rate:>8.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({active} of {} active)",
        args.in_flight,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        replies.len()
    );
    let _ = stop_tx.send(());
    let (_, r) = ledger_task.await?;
    r?;
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
    Ok(())
}

/// Sends pre-signed requests keeping `in_flight` outstanding; returns replies, requests/s and latencies (ms).
async fn load(
    client: &async_nats::Client,
    subject: &'static str,
    reqs: Vec<Vec<u8>>,
    in_flight: usize,
) -> Result<(Vec<docket_schemas::vault::Reply>, f64, Vec<f64>)> {
    let n = reqs.len();
    let started = Instant::now();
    let results = futures::stream::iter(reqs.into_iter().map(|r| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            let reply = client.request(subject, r.into()).await;
            (reply, t.elapsed().as_secs_f64() * 1000.0)
        }
    }))
    .buffer_unordered(in_flight)
    .collect::<Vec<_>>()
    .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for (reply, ms) in results {
        lat.push(ms);
        replies.push(serde_json::from_slice(&reply?.payload)?);
    }
    lat.sort_by(f64::total_cmp);
    Ok((replies, rate, lat))
}
