//! `docket bench watch`: the terminal UI's frame time and memory while it is fed a fast ledger's events.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use docket_tui::model::{ApprovalRow, EventRow, FindingRow, Level, OverviewFigures, Risk};
use docket_tui::ratatui::Terminal;
use docket_tui::ratatui::backend::TestBackend;
use docket_tui::{FrameStats, Key, Model, Msg, update, view};

#[derive(Args)]
pub struct WatchBenchArgs {
    /// How long to feed and draw.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Ledger events per second fed to the UI, as the shell would hand them over.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Terminal size, columns.
    #[arg(long, default_value_t = 160)]
    width: u16,
    /// Terminal size, rows.
    #[arg(long, default_value_t = 48)]
    height: u16,
}

/// Frames a second the runner aims at when there is something new to show.
const FRAMES_PER_S: u64 = 30;
/// Screens visited in turn, so every one is drawn under the feed.
const SCREENS: &[&str] = &[
    "overview",
    "live",
    "findings",
    "agents",
    "approvals",
    "query",
];
/// How long each screen is shown before the next.
const SCREEN_DWELL: Duration = Duration::from_secs(5);
const KINDS: &[&str] = &[
    "api.called",
    "api.called",
    "api.called",
    "token.issued",
    "approval.requested",
    "grant.created",
];

fn event(seq: u64, now_us: i64) -> EventRow {
    let kind = KINDS[(seq % KINDS.len() as u64) as usize];
    EventRow {
        seq,
        ts_us: now_us,
        kind: kind.to_string(),
        agent: format!("agent-{}", seq % 24),
        user: format!("user-{}", seq % 8),
        audience: "https://api.github.com".into(),
        summary: format!(
            "GET /repos/acme/web/issues/{seq} → 200 from 10.0.0.{}",
            seq % 250
        ),
        signer_key_id: "7295694dff53d2e12be05c1836bfcc25205de8f6f71da816a5973d4d9a1f2afa".into(),
    }
}

fn finding(n: u64, now_us: i64) -> FindingRow {
    FindingRow {
        finding_id: format!("5d0f7a52-6c1e-4d8e-9a51-0c2b8f3e1a05@{n}"),
        rule_id: "5d0f7a52-6c1e-4d8e-9a51-0c2b8f3e1a05".into(),
        title: "Burst of refused or missing-resource answers (probing)".into(),
        level: Level::High,
        agent: format!("agent-{}", n % 24),
        user: format!("user-{}", n % 8),
        audience: "https://api.github.com".into(),
        explanation: "10 calls answered 401/403/404 within 5 minutes".into(),
        observed: "10 calls answered 401/403/404 within 5 minutes".into(),
        baseline: "fewer than 10 in any such window before".into(),
        evidence_seqs: (n.saturating_sub(9)..=n).collect(),
        status: None,
        suppressed: false,
        seq: n,
        ts_us: now_us,
    }
}

fn rss_mib() -> f64 {
    crate::query_guard::rss_bytes().map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

pub fn run(args: WatchBenchArgs) -> Result<()> {
    let mut terminal = Terminal::new(TestBackend::new(args.width, args.height))?;
    let start_us = docket_ledger::clock::now()?.as_micros();
    let mut model = Model::new(false, start_us);
    let _ = update(
        &mut model,
        Msg::Resize {
            width: args.width,
            height: args.height,
        },
    );
    let per_frame = (args.rate / FRAMES_PER_S).max(1);
    let frame = Duration::from_micros(1_000_000 / FRAMES_PER_S);
    let mut stats = FrameStats::default();
    let mut seq = 0u64;
    let mut findings = 0u64;
    let mut samples = Vec::new();
    let rss_start = rss_mib();
    let started = Instant::now();
    let mut screen = 0usize;
    let mut next_screen = SCREEN_DWELL;
    let mut next_second = Duration::from_secs(1);
    println!(
        "docket bench watch: {} events/s fed to the UI for {} s, drawn at up to {FRAMES_PER_S} frames/s on {}x{}",
        args.rate, args.seconds, args.width, args.height
    );
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let due = started + frame * (stats.frames() as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now_us = start_us + started.elapsed().as_micros() as i64;
        // Building the messages is the shell's work; the frame is what the UI thread does.
        let batch: Vec<EventRow> = (0..per_frame)
            .map(|_| {
                seq += 1;
                event(seq, now_us)
            })
            .collect();
        let mut msgs = vec![Msg::Tick { now_us }, Msg::Events(batch)];
        if started.elapsed() >= next_second {
            next_second += Duration::from_secs(1);
            findings += 5;
            msgs.push(Msg::Findings(
                (findings - 4..=findings)
                    .map(|n| finding(n, now_us))
                    .collect(),
            ));
            msgs.push(Msg::Overview(OverviewFigures {
                ingest_events_per_s: args.rate,
                head_seq: seq,
                head_hash: "b3f1c9a07d2e44e1a9c0f5d6e7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6"
                    .into(),
                agents: 24,
                active_grants: 700,
                live_tokens: 1_000,
                pending_approvals: 3,
                open_findings: Level::ALL.iter().rev().map(|l| (*l, findings)).collect(),
                rejected_events: seq / 200,
                ..OverviewFigures::default()
            }));
            msgs.push(Msg::Approvals(
                (0..3)
                    .map(|i| ApprovalRow {
                        approval_id: format!("appr-{i}"),
                        agent: format!("agent-{i}"),
                        user: "user-0".into(),
                        audience: "https://api.github.com".into(),
                        scopes: vec!["repo:write".into()],
                        risk: Risk::High,
                        binding_message: "repo:write: open a pull request on acme/web".into(),
                        expires_at_us: now_us + 300_000_000,
                        step_up_required: false,
                    })
                    .collect(),
            ));
            samples.push(rss_mib());
        }
        if started.elapsed() >= next_screen {
            next_screen += SCREEN_DWELL;
            screen = (screen + 1) % SCREENS.len();
            msgs.push(Msg::Key(Key::Char(':')));
            msgs.extend(SCREENS[screen].chars().map(|c| Msg::Key(Key::Char(c))));
            msgs.push(Msg::Key(Key::Enter));
        }
        let t = Instant::now();
        for m in msgs {
            let _ = update(&mut model, m);
        }
        terminal.draw(|f| view(&model, f))?;
        stats.record(t.elapsed());
    }
    let ms = |us: Option<u64>| us.map_or(f64::NAN, |u| u as f64 / 1000.0);
    println!(
        "frames: {}, update + draw per frame: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events each)",
        stats.frames(),
        ms(stats.p50_us()),
        ms(stats.p99_us()),
        stats.max_us() as f64 / 1000.0,
        per_frame
    );
    println!(
        "events fed: {seq}; events the model keeps: {}",
        model.live.events.len()
    );
    let tenth = samples.len() / 10;
    let early = samples.get(tenth).copied().unwrap_or(f64::NAN);
    let end = samples.last().copied().unwrap_or(f64::NAN);
    println!(
        "resident memory: {rss_start:.0} MiB at start, {early:.0} MiB after a tenth of the run, \
         {end:.0} MiB at the end; peak {:.0} MiB",
        crate::measure::peak_rss_mib()
    );
    Ok(())
}
