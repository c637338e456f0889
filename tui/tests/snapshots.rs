//! Snapshot tests: every screen, overlay and connection state drawn from fixed models at 80x24
//! and 160x48, compared with the text files in `tests/snapshots/`. `DOCKET_BLESS=1` rewrites
//! them; otherwise a difference or a missing file fails, showing the differing lines.

mod common;

use std::path::PathBuf;

use common::{NOW_US, S, agent_detail, feed, fixed_model, keys, typed};
use docket_tui::model::{Connection, EntryDetail, QueryResult, Screen};
use docket_tui::{Key, Model, Msg, view};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

/// The buffer's text, one line per row, trailing spaces dropped.
fn render(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    if let Err(never) = terminal.draw(|frame| view(model, frame)) {
        match never {}
    }
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buffer[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn check(name: &str, model: &Model) {
    for (width, height) in SIZES {
        let actual = render(model, width, height);
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}-{width}x{height}.txt"));
        if std::env::var_os("DOCKET_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &actual).expect("write snapshot");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no snapshot {} ({e}); run with DOCKET_BLESS=1 to write it, then read it\n{actual}",
                path.display()
            )
        });
        if expected != actual {
            let mut report = String::new();
            let (e, a): (Vec<&str>, Vec<&str>) =
                (expected.lines().collect(), actual.lines().collect());
            for row in 0..e.len().max(a.len()) {
                let (el, al) = (e.get(row).copied(), a.get(row).copied());
                if el != al {
                    report.push_str(&format!(
                        "row {row}:\n  expected |{}\n  actual   |{}\n",
                        el.unwrap_or("<none>"),
                        al.unwrap_or("<none>")
                    ));
                }
            }
            panic!(
                "{} differs (DOCKET_BLESS=1 rewrites it):\n{report}",
                path.display()
            );
        }
    }
}

fn on(screen: Screen) -> Model {
    let mut model = fixed_model(false);
    keys(&mut model, &[Key::Char(':')]);
    keys(&mut model, &typed(screen.name()));
    keys(&mut model, &[Key::Enter]);
    assert_eq!(model.screen, screen);
    model
}

#[test]
fn overview() {
    check("overview", &on(Screen::Overview));
}

#[test]
fn overview_before_any_data() {
    check("overview-empty", &Model::new(false, NOW_US));
}

#[test]
fn overview_checkpoint_does_not_verify() {
    let mut model = on(Screen::Overview);
    let mut figures = common::overview();
    figures.checkpoint = Some(docket_tui::model::CheckpointFigure {
        seq: 1_024,
        verified: Some(false),
    });
    feed(&mut model, Msg::Overview(figures));
    check("overview-unverified", &model);
}

#[test]
fn live() {
    let mut model = on(Screen::Live);
    keys(&mut model, &[Key::Char('j'), Key::Char('j')]);
    check("live", &model);
}

#[test]
fn live_filtered_paused_with_histogram() {
    let mut model = on(Screen::Live);
    keys(&mut model, &[Key::Char('/')]);
    keys(&mut model, &typed("billing"));
    keys(
        &mut model,
        &[Key::Enter, Key::Char('p'), Key::Char('t'), Key::Char('-')],
    );
    feed(
        &mut model,
        Msg::Events(vec![common::event(
            2_000,
            0,
            "api.called",
            "billing-agent",
            "late",
        )]),
    );
    check("live-filtered-paused", &model);
}

#[test]
fn findings() {
    let mut model = on(Screen::Findings);
    keys(&mut model, &[Key::Char(' '), Key::Char(' ')]);
    check("findings", &model);
}

#[test]
fn finding_detail() {
    let mut model = on(Screen::Findings);
    keys(&mut model, &[Key::Enter, Key::Char('j')]);
    check("finding-detail", &model);
}

#[test]
fn close_reason_picker() {
    let mut model = on(Screen::Findings);
    keys(&mut model, &[Key::Char('c'), Key::Down]);
    check("findings-close-reason", &model);
}

#[test]
fn agents() {
    check("agents", &on(Screen::Agents));
}

#[test]
fn agent_opened() {
    let mut model = on(Screen::Agents);
    keys(&mut model, &[Key::Enter]);
    feed(&mut model, Msg::AgentDetail(agent_detail()));
    check("agent-detail", &model);
}

#[test]
fn revoke_confirm_dialog() {
    let mut model = on(Screen::Agents);
    keys(&mut model, &[Key::Enter]);
    feed(&mut model, Msg::AgentDetail(agent_detail()));
    keys(&mut model, &[Key::Char('r')]);
    check("agent-revoke-confirm", &model);
}

#[test]
fn approvals() {
    check("approvals", &on(Screen::Approvals));
}

#[test]
fn approvals_readonly() {
    let mut model = fixed_model(true);
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('a'), Key::Char('p'), Key::Enter],
    );
    keys(&mut model, &[Key::Char('a')]);
    check("approvals-readonly", &model);
}

#[test]
fn query_with_result() {
    let mut model = on(Screen::Query);
    keys(
        &mut model,
        &typed("SELECT seq, kind, agent FROM events ORDER BY seq DESC LIMIT 3"),
    );
    keys(&mut model, &[Key::Enter]);
    feed(
        &mut model,
        Msg::QueryResult(QueryResult {
            header: vec!["seq".into(), "kind".into(), "agent".into()],
            rows: vec![
                vec!["1040".into(), "api.called".into(), "support-bot".into()],
                vec!["1039".into(), "token.issued".into(), "billing-agent".into()],
                vec!["1038".into(), "grant.created".into(), "research-7".into()],
            ],
            more: false,
        }),
    );
    keys(&mut model, &typed("SELECT count(*) FROM findings"));
    keys(&mut model, &[Key::Enter]);
    feed(
        &mut model,
        Msg::QueryResult(QueryResult {
            header: vec!["seq".into(), "kind".into(), "agent".into()],
            rows: vec![
                vec!["1040".into(), "api.called".into(), "support-bot".into()],
                vec!["1039".into(), "token.issued".into(), "billing-agent".into()],
                vec!["1038".into(), "grant.created".into(), "research-7".into()],
            ],
            more: true,
        }),
    );
    keys(&mut model, &[Key::Esc, Key::Char('j')]);
    check("query", &model);
}

#[test]
fn query_error() {
    let mut model = on(Screen::Query);
    keys(&mut model, &typed("SELEC 1"));
    keys(&mut model, &[Key::Enter]);
    feed(&mut model, Msg::QueryFailed("SQL error: ParserError(\"Expected: an SQL statement, found: SELEC at Line: 1, Column: 1\")".into()));
    check("query-error", &model);
}

#[test]
fn help_overlay() {
    let mut model = on(Screen::Findings);
    keys(&mut model, &[Key::Char('?')]);
    check("help-findings", &model);
}

#[test]
fn help_overlay_readonly() {
    let mut model = fixed_model(true);
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('f'), Key::Enter, Key::Char('?')],
    );
    check("help-findings-readonly", &model);
}

#[test]
fn lost_connection_header() {
    let mut model = on(Screen::Live);
    feed(
        &mut model,
        Msg::Connection(Connection::Lost {
            since_us: NOW_US - 12 * S,
            error: "nats: connection refused (127.0.0.1:4222)".into(),
        }),
    );
    check("connection-lost", &model);
}

#[test]
fn reconnecting_header() {
    let mut model = on(Screen::Overview);
    feed(
        &mut model,
        Msg::Connection(Connection::Reconnecting {
            since_us: NOW_US - 95 * S,
            error: "nats: timed out".into(),
            attempt: 4,
        }),
    );
    check("connection-reconnecting", &model);
}

#[test]
fn never_connected_header() {
    let mut model = on(Screen::Overview);
    feed(
        &mut model,
        Msg::Connection(Connection::Connecting {
            since_us: NOW_US - 12 * S,
            error: "nats: connection refused".into(),
            attempt: 3,
        }),
    );
    check("connection-connecting", &model);
}

#[test]
fn entry_detail() {
    let mut model = on(Screen::Live);
    let commands = keys(&mut model, &[Key::Enter]);
    assert_eq!(
        commands,
        vec![docket_tui::Command::OpenEntry { seq: 1_040 }]
    );
    feed(
        &mut model,
        Msg::EntryDetail(EntryDetail {
            seq: 1_040,
            entry: vec![
                "seq        1040".into(),
                "received   2026-12-02T15:00:00.000000Z".into(),
                "subject    docket.events.api.called".into(),
                "prev hash  9a1f…c3".into(),
                "hash       b3f1c9a07d2e44e1a9c0f5d6e7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6".into(),
            ],
            envelope: vec![
                "payloadType  application/vnd.docket.event+json".into(),
                "payload      {\"kind\":\"api.called\",\"agent\":\"support-bot\",\"method\":\"GET\",…}".into(),
                "signatures   1".into(),
            ],
            signer: vec![
                "keyid   ed25519:4f0c2a91".into(),
                "name    gateway-eu-1".into(),
                "may emit api.called, request.refused".into(),
                "signature verified".into(),
            ],
        }),
    );
    check("entry-detail", &model);
}

#[test]
fn command_line_being_typed() {
    let mut model = on(Screen::Overview);
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('a'), Key::Char('p')],
    );
    check("command-line", &model);
}
