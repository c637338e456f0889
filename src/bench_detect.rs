//! `docket bench detect`: ingest with live detection against ingest without, and append-to-finding latency.
//!
//! Two ledgers, each as `serve` runs one (the ingest loop, the columnar
//! sealer, and in the second the detector with every built-in rule), each fed
//! the same workload through its own nats-server. The ratio of their ingest
//! rates is the cost of detection; the latency is from the `docket.appended`
//! notice covering a trigger's seq to the `docket.findings` notice about it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_ledger::clock::now_us;
use docket_ledger::config::{Config, DetectionConfig};
use docket_ledger::publisher::{Publisher, Sink};
use docket_ledger::store::Store;
use docket_ledger::transport::{Bus, NatsSettings, NatsSource, Source};
use docket_schemas::encode_base64;
use docket_schemas::notice::DetectionNotice;
use docket_testkit::nats_server::NatsServer;
use docket_testkit::workload::{Published, Roles, Workload};
use futures::StreamExt;

use crate::bench::{past_start, percentile, wait_for_seq, watch_commits};

#[derive(Args)]
pub struct DetectBenchArgs {
    /// Events published as fast as JetStream takes them (the ingest-rate comparison).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events then published at half the rate without detection (the latency figure).
    #[arg(long, default_value_t = 30_000)]
    paced_events: usize,
    /// The learning period recorded with the rules: `0s` lets every rule fire about every agent
    /// (the most findings, the most work); the default deployment's is `1d`.
    #[arg(long, default_value = "0s")]
    learning: String,
}

/// How long the detector may take to catch up once publishing stops.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(600);

struct RunFigures {
    ingest_rate: f64,
    findings: u64,
    latencies_ms: Vec<f64>,
    paced_latencies_ms: Vec<f64>,
    catch_up_s: f64,
    rss_mib: f64,
}

pub async fn run(args: DetectBenchArgs) -> Result<()> {
    let learning_us = docket_query::detect::parse_duration_us(&args.learning)
        .with_context(|| format!("--learning {:?} is not a duration", args.learning))?;
    println!(
        "docket bench detect: {} cores, {} events at full speed, {} paced, learning {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.events,
        args.paced_events,
        args.learning
    );
    let base = one_run(&args, None).await?;
    println!(
        "without detection: ingest {:.0} events/s (publish -> durable append, sealer running)",
        base.ingest_rate
    );
    let with = one_run(&args, Some((learning_us, base.ingest_rate / 2.0))).await?;
    println!(
        "with every built-in rule live: ingest {:.0} events/s = {:.0}% of the rate without detection",
        with.ingest_rate,
        100.0 * with.ingest_rate / base.ingest_rate
    );
    println!(
        "  findings published: {}; detector caught up {:.1} s after the last full-speed append",
        with.findings, with.catch_up_s
    );
    let show = |name: &str, l: &[f64]| {
        println!(
            "  append -> finding published, {name}: {} findings, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            l.last().copied().unwrap_or(f64::NAN)
        )
    };
    show("during full-speed ingest", &with.latencies_ms);
    show(
        &format!(
            "paced at {:.0} events/s, after catching up",
            base.ingest_rate / 2.0
        ),
        &with.paced_latencies_ms,
    );
    println!(
        "peak RSS of this process: {:.0} MiB without detection, {:.0} MiB after the run with it",
        base.rss_mib, with.rss_mib
    );
    Ok(())
}

/// One ledger fed the workload; with `detect = Some((learning_us, paced_rate))` the detector runs.
async fn one_run(args: &DetectBenchArgs, detect: Option<(i64, f64)>) -> Result<RunFigures> {
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("ledger");
    let server = NatsServer::start(&temp.path().join("nats"))?;
    let roles = Roles::from_seed(1);
    let admin = encode_base64(roles.admin.verifying_key().as_bytes());
    let config = Config {
        checkpoint_every_entries: 100_000,
        ..Config::default()
    };
    let mut ledger = crate::open_ledger(&data, &config, &admin)?;
    let settings = NatsSettings {
        url: server.url(),
        consumer: "bench-detect".into(),
        filter: docket_ledger::transport::STREAM_SUBJECTS.into(),
        auth: Default::default(),
    };
    let source = NatsSource::connect(&settings).await?;
    let client = source.client.clone();
    let appended = client
        .subscribe(docket_ledger::transport::SUBJECT_APPENDED)
        .await?;
    let mut findings_sub = client
        .subscribe(docket_schemas::notice::SUBJECT_FINDINGS)
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
    let (commits, watcher) = watch_commits(appended);
    let heard: Arc<Mutex<Vec<(u64, i64, String)>>> = Arc::default();
    let heard_w = Arc::clone(&heard);
    let listener = tokio::spawn(async move {
        while let Some(m) = findings_sub.next().await {
            if let (Ok(n), Ok(at)) = (
                serde_json::from_slice::<DetectionNotice>(&m.payload),
                now_us(),
            ) && let Ok(mut h) = heard_w.lock()
            {
                h.push((n.detection.seq, at, n.detection.title));
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let key = docket_ledger::keyfile::read(&data.join(crate::sql_cmd::LEDGER_KEY_FILE))?;
    let sealer = crate::sql_cmd::spawn_sealer(data.clone(), key.clone(), Arc::clone(&stop));
    let js = async_nats::jetstream::new(client.clone());
    let mut publisher = Publisher::new(Sink::Nats(js));
    let mut fails = 0u64;
    let mut w = Workload::new(1, past_start(args.events + args.paced_events)?, 50, 200);
    // Each agent on one host, as deployed agents are; the workload's default of many
    // addresses per agent would make every call a new-address detection.
    w.sources_per_agent = 1;
    let (last, f) = send_all(&mut publisher, w.setup(), None).await?;
    fails += f;
    let reader = Store::open_reader(&crate::db_dir(&data))?;
    wait_applied(&reader, last).await?;
    let live = match detect {
        Some((learning_us, _)) => {
            let (task, stats) = crate::detect_cmd::spawn_live(
                &data,
                &DetectionConfig::default(),
                learning_us,
                key,
                &client,
                Arc::clone(&stop),
            );
            // The workload starts once the rule set is on the chain.
            let deadline = Instant::now() + Duration::from_secs(60);
            while stats.lock().map(|s| s.rules_from).unwrap_or(0) == 0 {
                if Instant::now() > deadline || task.is_finished() {
                    bail!("the detector did not record its rule set");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some((task, stats))
        }
        None => None,
    };
    let items: Vec<Published> = (0..args.events).map(|_| w.next_envelope()).collect();
    let t0 = now_us()?;
    let (last, f) = send_all(&mut publisher, items, None).await?;
    fails += f;
    let done_at = wait_applied(&reader, last).await?;
    let ingest_rate = args.events as f64 / ((done_at - t0) as f64 / 1e6);
    let mut paced_from = u64::MAX;
    let mut catch_up_s = 0.0;
    if let (Some((_, stats)), Some((_, rate))) = (&live, detect) {
        catch_up_s = (caught_up(&reader, stats).await? - done_at) as f64 / 1e6;
        // Latency is measured once the detector has caught up: steady state, not backlog.
        paced_from = reader.head()?.0;
        let paced: Vec<Published> = (0..args.paced_events).map(|_| w.next_envelope()).collect();
        let (last, f) = send_all(&mut publisher, paced, Some(rate)).await?;
        fails += f;
        wait_applied(&reader, last).await?;
        caught_up(&reader, stats).await?;
    }
    wait_for_seq(&commits, reader.head()?.0).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let findings = match live {
        Some((task, stats)) => {
            let _ = task.await;
            stats.lock().map(|s| s.findings).unwrap_or(0)
        }
        None => 0,
    };
    let _ = sealer.join();
    let _ = stop_tx.send(());
    let (_, r) = ledger_task.await?;
    r?;
    watcher.abort();
    listener.abort();
    if fails > 0 {
        bail!("{fails} events were not published");
    }
    let c = commits.lock().map(|c| c.clone()).unwrap_or_default();
    let commit_of = |seq: u64| {
        c.iter()
            .find(|(a, b, _)| *a <= seq && seq <= *b)
            .map(|x| x.2)
    };
    let (mut during, mut paced) = (Vec::new(), Vec::new());
    let heard = heard.lock().map(|h| h.clone()).unwrap_or_default();
    let mut by_rule: std::collections::BTreeMap<&str, u64> = Default::default();
    for (_, _, title) in &heard {
        *by_rule.entry(title).or_default() += 1;
    }
    let mut by_rule: Vec<_> = by_rule.into_iter().collect();
    by_rule.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for &(seq, at, _) in heard.iter() {
        if let Some(t) = commit_of(seq) {
            let ms = (at - t) as f64 / 1000.0;
            if seq > paced_from {
                paced.push(ms);
            } else {
                during.push(ms);
            }
        }
    }
    if detect.is_some() {
        let top: Vec<String> = by_rule.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        println!("  findings by rule: {}", top.join("; "));
    }
    during.sort_by(f64::total_cmp);
    paced.sort_by(f64::total_cmp);
    Ok(RunFigures {
        ingest_rate,
        findings,
        latencies_ms: during,
        paced_latencies_ms: paced,
        catch_up_s,
        rss_mib: crate::measure::peak_rss_mib(),
    })
}

/// Waits until the detector's watermark is at the head and the head stays; returns when, in µs.
async fn caught_up(reader: &Store, stats: &Mutex<docket_query::live::LiveStats>) -> Result<i64> {
    let deadline = Instant::now() + CATCH_UP_PATIENCE;
    loop {
        reader.catch_up()?;
        let head = reader.head()?.0;
        let mark = stats.lock().map(|s| s.watermark).unwrap_or(0);
        if mark >= head {
            let at = now_us()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            reader.catch_up()?;
            if reader.head()?.0 == head {
                return Ok(at);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the detector did not catch up within {} s",
                CATCH_UP_PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes in order, at `rate` events/s when given; returns the last stream seq and the failures.
async fn send_all(
    publisher: &mut Publisher,
    items: Vec<Published>,
    rate: Option<f64>,
) -> Result<(u64, u64)> {
    let (mut last, mut fails) = (0u64, 0u64);
    let mut on_ack = |_: u64, r: Result<docket_ledger::publisher::Acked, String>| match r {
        Ok(a) => last = last.max(a.stream_seq),
        Err(_) => fails += 1,
    };
    let start = Instant::now();
    for (i, p) in items.into_iter().enumerate() {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed())
                && wait > Duration::from_micros(500)
            {
                tokio::time::sleep(wait).await;
            }
        }
        publisher
            .send(p.subject, p.envelope, p.id, &mut on_ack)
            .await?;
    }
    publisher.flush(&mut on_ack).await;
    Ok((last, fails))
}

/// Waits until the ledger has applied stream seq `seq`; returns when, in µs.
async fn wait_applied(reader: &Store, seq: u64) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        reader.catch_up()?;
        if reader.last_source_seq()? >= seq {
            return Ok(now_us()?);
        }
        if Instant::now() > deadline {
            bail!("the ledger did not apply stream seq {seq} within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
