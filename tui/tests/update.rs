//! Update tests: key sequences and shell messages in, the exact model changes and commands out.

mod common;

use common::{NOW_US, S, agent_detail, event, feed, fixed_model, keys, typed};
use docket_tui::model::{
    CloseReason, EVENTS_KEPT_MAX, Input, Overlay, QUERY_HISTORY_MAX, QueryResult, Screen,
    TriageStatus,
};
use docket_tui::view::time_left;
use docket_tui::{Command, Key, Model, Msg, update};

/// Moves the Agents cursor down to `name` (agents are listed in natural order).
fn select_agent(model: &mut Model, name: &str) {
    for _ in 0..model.agents.agents.len() {
        if model.selected_agent().map(|a| a.name.as_str()) == Some(name) {
            return;
        }
        keys(model, &[Key::Down]);
    }
    panic!("no agent {name} to select");
}

fn on(screen: &str) -> Model {
    let mut model = fixed_model(false);
    keys(&mut model, &[Key::Char(':')]);
    keys(&mut model, &typed(screen));
    keys(&mut model, &[Key::Enter]);
    model
}

#[test]
fn colon_and_a_prefix_switch_screens() {
    let mut model = fixed_model(false);
    assert_eq!(model.screen, Screen::Overview);
    let commands = keys(
        &mut model,
        &[Key::Char(':'), Key::Char('f'), Key::Char('i'), Key::Enter],
    );
    assert!(commands.is_empty());
    assert_eq!(model.screen, Screen::Findings);
    assert_eq!(model.input, Input::Normal);
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('a'), Key::Char('p'), Key::Enter],
    );
    assert_eq!(model.screen, Screen::Approvals);
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('a'), Key::Char('g'), Key::Enter],
    );
    assert_eq!(model.screen, Screen::Agents);
    // Esc walks back through the screens visited.
    keys(&mut model, &[Key::Esc]);
    assert_eq!(model.screen, Screen::Approvals);
    keys(&mut model, &[Key::Char(':')]);
    keys(&mut model, &typed("nonsense"));
    keys(&mut model, &[Key::Enter]);
    assert_eq!(model.screen, Screen::Approvals);
    assert!(model.status.as_ref().is_some_and(|s| s.is_error));
}

#[test]
fn approve_sends_a_decision_at_once() {
    let mut model = on("approvals");
    let commands = keys(&mut model, &[Key::Char('a')]);
    assert_eq!(
        commands,
        vec![Command::Decide {
            approval_id: "apr_0193f2".into(),
            approve: true
        }]
    );
    // The first request needs step-up, and the status line says so.
    assert!(
        model
            .status
            .as_ref()
            .is_some_and(|s| s.text.contains("step-up"))
    );
}

#[test]
fn deny_asks_first_and_esc_cancels() {
    let mut model = on("approvals");
    // The analyst's key is alice's here: her request is the one to deny.
    feed(&mut model, Msg::You(Some("alice".into())));
    // Hers is listed first now; the cursor stayed on bob's, one below.
    keys(&mut model, &[Key::Char('k')]);
    assert!(keys(&mut model, &[Key::Char('d')]).is_empty());
    let Some(Overlay::Confirm { message, .. }) = &model.overlay else {
        panic!("no confirm dialog: {:?}", model.overlay);
    };
    assert!(
        message.contains("apr_0193f7") && message.contains("refused"),
        "{message}"
    );
    assert!(keys(&mut model, &[Key::Esc]).is_empty());
    assert_eq!(model.overlay, None);
    keys(&mut model, &[Key::Char('d')]);
    assert_eq!(
        keys(&mut model, &[Key::Char('y')]),
        vec![Command::Decide {
            approval_id: "apr_0193f7".into(),
            approve: false
        }]
    );
}

#[test]
fn an_expired_approval_cannot_be_approved() {
    let mut model = on("approvals");
    feed(
        &mut model,
        Msg::Tick {
            now_us: NOW_US + 10 * 60 * S,
        },
    );
    assert!(keys(&mut model, &[Key::Char('a')]).is_empty());
    assert!(
        model
            .status
            .as_ref()
            .is_some_and(|s| s.text.contains("expired"))
    );
}

#[test]
fn revoke_asks_first_says_what_ends_and_esc_sends_nothing() {
    let mut model = on("agents");
    select_agent(&mut model, "support-bot");
    assert_eq!(
        keys(&mut model, &[Key::Enter]),
        vec![Command::OpenAgent {
            agent: "support-bot".into()
        }]
    );
    feed(&mut model, Msg::AgentDetail(agent_detail()));
    assert!(keys(&mut model, &[Key::Char('r')]).is_empty());
    let Some(Overlay::Confirm { message, command }) = model.overlay.clone() else {
        panic!("no confirm dialog: {:?}", model.overlay);
    };
    assert_eq!(
        message,
        "Revoke token tok_7f3a9c21 of agent support-bot (crm.example): its calls will be refused \
         from now on"
    );
    assert_eq!(
        command,
        Command::RevokeToken {
            token_id: "tok_7f3a9c21".into()
        }
    );
    // Other keys leave the dialog up and send nothing.
    assert!(keys(&mut model, &[Key::Char('a'), Key::Enter, Key::Char('j')]).is_empty());
    assert!(matches!(model.overlay, Some(Overlay::Confirm { .. })));
    assert!(keys(&mut model, &[Key::Esc]).is_empty());
    assert_eq!(model.overlay, None);
    // The grant, confirmed.
    let commands = keys(
        &mut model,
        &[Key::Char('j'), Key::Char('r'), Key::Char('y')],
    );
    assert_eq!(
        commands,
        vec![Command::RevokeGrant {
            grant_id: "grant_51e0".into()
        }]
    );
}

#[test]
fn suspend_asks_first() {
    let mut model = on("agents");
    select_agent(&mut model, "support-bot");
    assert!(keys(&mut model, &[Key::Char('S')]).is_empty());
    assert!(
        matches!(&model.overlay, Some(Overlay::Confirm { message, .. }) if message.starts_with("Suspend agent support-bot"))
    );
    assert_eq!(
        keys(&mut model, &[Key::Char('y')]),
        vec![Command::SuspendAgent {
            agent: "support-bot".into()
        }]
    );
}

#[test]
fn readonly_refuses_every_action_with_no_command() {
    let action_keys: &[(&str, &[Key])] = &[
        ("approvals", &[Key::Char('a')]),
        ("approvals", &[Key::Char('d'), Key::Char('y')]),
        ("findings", &[Key::Char('a')]),
        ("findings", &[Key::Char('e')]),
        ("findings", &[Key::Char('c'), Key::Enter]),
        ("findings", &[Key::Char('s'), Key::Char('y')]),
        (
            "findings",
            &[Key::Char(' '), Key::Char(' '), Key::Char('a')],
        ),
        ("agents", &[Key::Char('S'), Key::Char('y')]),
        ("agents", &[Key::Enter, Key::Char('r'), Key::Char('y')]),
    ];
    for (screen, sequence) in action_keys {
        let mut model = fixed_model(true);
        keys(&mut model, &[Key::Char(':')]);
        keys(&mut model, &typed(screen));
        keys(&mut model, &[Key::Enter]);
        if model.screen == Screen::Agents {
            select_agent(&mut model, "support-bot");
            feed(&mut model, Msg::AgentDetail(agent_detail()));
        }
        let mut commands = Vec::new();
        for key in sequence.iter() {
            commands.extend(update(&mut model, Msg::Key(*key)));
            if *key == Key::Enter && model.screen == Screen::Agents {
                feed(&mut model, Msg::AgentDetail(agent_detail()));
            }
        }
        commands.retain(|c| !matches!(c, Command::OpenAgent { .. }));
        assert!(
            commands.is_empty(),
            "{screen} {sequence:?} gave {commands:?}"
        );
        let status = model.status.as_ref().map(|s| s.text.as_str()).unwrap_or("");
        assert!(
            status.starts_with("read-only"),
            "{screen} {sequence:?}: status {status:?}"
        );
        assert!(
            !matches!(
                model.overlay,
                Some(Overlay::Confirm { .. } | Overlay::CloseReason { .. })
            ),
            "{screen} {sequence:?} left {:?}",
            model.overlay
        );
    }
}

#[test]
fn readonly_help_lists_no_action() {
    let writable = docket_tui::update::key_help(Screen::Findings, false);
    let readonly = docket_tui::update::key_help(Screen::Findings, true);
    assert!(writable.iter().any(|k| k.what == "acknowledge"));
    assert!(readonly.iter().all(|k| !k.action));
    assert!(readonly.len() < writable.len());
}

#[test]
fn three_marked_findings_acknowledged_in_one_command() {
    let mut model = on("findings");
    keys(
        &mut model,
        &[
            Key::Char(' '),
            Key::Char(' '),
            Key::Char('j'),
            Key::Char(' '),
        ],
    );
    assert_eq!(model.findings.marked.len(), 3);
    let commands = keys(&mut model, &[Key::Char('a')]);
    assert_eq!(
        commands,
        vec![Command::Triage {
            finding_ids: vec![
                "bulk_export@1031".into(),
                "scope_creep@1025".into(),
                "new_audience@1012".into(),
            ],
            status: TriageStatus::Acknowledged,
            reason: None,
        }]
    );
    assert!(
        model.findings.marked.is_empty(),
        "marks are spent by the action"
    );
}

#[test]
fn space_twice_on_one_row_unmarks_it() {
    let mut model = on("findings");
    keys(
        &mut model,
        &[Key::Char(' '), Key::Char('k'), Key::Char(' ')],
    );
    assert!(model.findings.marked.is_empty());
}

#[test]
fn close_asks_for_a_reason() {
    let mut model = on("findings");
    assert!(keys(&mut model, &[Key::Char('c')]).is_empty());
    assert!(matches!(model.overlay, Some(Overlay::CloseReason { .. })));
    assert!(keys(&mut model, &[Key::Down]).is_empty());
    assert_eq!(
        keys(&mut model, &[Key::Enter]),
        vec![Command::Triage {
            finding_ids: vec!["bulk_export@1031".into()],
            status: TriageStatus::Closed,
            reason: Some(CloseReason::Benign),
        }]
    );
    // A digit picks directly; Esc abandons with nothing sent.
    assert!(keys(&mut model, &[Key::Char('c'), Key::Esc]).is_empty());
    assert_eq!(
        keys(&mut model, &[Key::Char('c'), Key::Char('4')]),
        vec![Command::Triage {
            finding_ids: vec!["bulk_export@1031".into()],
            status: TriageStatus::Closed,
            reason: Some(CloseReason::Duplicate),
        }]
    );
}

#[test]
fn escalate_and_suppress() {
    let mut model = on("findings");
    assert_eq!(
        keys(&mut model, &[Key::Char('e')]),
        vec![Command::Triage {
            finding_ids: vec!["bulk_export@1031".into()],
            status: TriageStatus::Escalated,
            reason: None,
        }]
    );
    assert!(keys(&mut model, &[Key::Char('s')]).is_empty());
    assert_eq!(
        keys(&mut model, &[Key::Char('y')]),
        vec![Command::Suppress {
            rule_id: "bulk_export".into(),
            agent: Some("support-bot".into()),
            until_us: NOW_US + 24 * 3_600 * S,
        }]
    );
}

#[test]
fn evidence_opens_its_entry() {
    let mut model = on("findings");
    keys(&mut model, &[Key::Enter, Key::Char('j')]);
    assert!(model.findings.detail_open);
    assert_eq!(
        keys(&mut model, &[Key::Enter]),
        vec![Command::OpenEntry { seq: 1_030 }]
    );
    assert!(matches!(
        model.overlay,
        Some(Overlay::Entry {
            seq: 1_030,
            detail: None,
            ..
        })
    ));
    keys(&mut model, &[Key::Esc]);
    assert_eq!(model.overlay, None);
    keys(&mut model, &[Key::Esc]);
    assert!(!model.findings.detail_open);
}

#[test]
fn q_in_the_query_editor_types_a_q() {
    let mut model = on("query");
    assert!(model.query.editing);
    assert!(keys(&mut model, &typed("select q from t")).is_empty());
    assert_eq!(model.query.input, "select q from t");
    // Outside the editor, q quits.
    keys(&mut model, &[Key::Esc]);
    assert_eq!(keys(&mut model, &[Key::Char('q')]), vec![Command::Quit]);
}

#[test]
fn q_in_a_filter_types_a_q() {
    let mut model = on("live");
    assert!(keys(&mut model, &[Key::Char('/'), Key::Char('q')]).is_empty());
    assert_eq!(model.live.filter, "q");
    assert!(keys(&mut model, &[Key::Esc]).is_empty());
    assert_eq!(model.live.filter, "");
    assert_eq!(keys(&mut model, &[Key::Char('q')]), vec![Command::Quit]);
}

#[test]
fn query_runs_keeps_history_and_opens_a_seq() {
    let mut model = on("query");
    keys(&mut model, &typed("SELECT 1"));
    assert_eq!(
        keys(&mut model, &[Key::Enter]),
        vec![Command::RunQuery {
            sql: "SELECT 1".into()
        }]
    );
    model.query.input.clear();
    keys(&mut model, &typed("SELECT seq FROM events"));
    keys(&mut model, &[Key::Enter]);
    keys(&mut model, &[Key::Ctrl('u'), Key::Up]);
    assert_eq!(model.query.input, "SELECT seq FROM events");
    keys(&mut model, &[Key::Up]);
    assert_eq!(model.query.input, "SELECT 1");
    keys(&mut model, &[Key::Down, Key::Down]);
    assert_eq!(model.query.input, "");
    feed(
        &mut model,
        Msg::QueryResult(QueryResult {
            header: vec!["kind".into(), "SEQ".into()],
            rows: vec![vec!["a".into(), "7".into()], vec!["b".into(), "9".into()]],
            more: false,
        }),
    );
    keys(&mut model, &[Key::Esc, Key::Char('j')]);
    assert_eq!(
        keys(&mut model, &[Key::Enter]),
        vec![Command::OpenEntry { seq: 9 }]
    );
}

#[test]
fn a_failed_query_comes_back_to_the_editor() {
    let mut model = on("query");
    keys(&mut model, &typed("SELEC 1"));
    keys(&mut model, &[Key::Enter]);
    assert_eq!(model.query.input, "");
    feed(&mut model, Msg::QueryFailed("parse error".into()));
    assert_eq!(model.query.input, "SELEC 1");
    assert_eq!(model.query.error.as_deref(), Some("parse error"));
}

#[test]
fn colon_q_quits_and_colon_qu_opens_the_query_screen() {
    let mut model = fixed_model(false);
    assert_eq!(
        keys(&mut model, &[Key::Char(':'), Key::Char('q'), Key::Enter]),
        vec![Command::Quit]
    );
    keys(
        &mut model,
        &[Key::Char(':'), Key::Char('q'), Key::Char('u'), Key::Enter],
    );
    assert_eq!(model.screen, Screen::Query);
}

#[test]
fn query_history_is_bounded() {
    let mut model = on("query");
    for i in 0..QUERY_HISTORY_MAX + 30 {
        model.query.input = format!("SELECT {i}");
        keys(&mut model, &[Key::Enter]);
    }
    assert_eq!(model.query.history.len(), QUERY_HISTORY_MAX);
    assert_eq!(
        model.query.history.front().map(String::as_str),
        Some("SELECT 129")
    );
}

#[test]
fn the_event_buffer_never_exceeds_its_limit() {
    let mut model = Model::new(false, NOW_US);
    let mut seq = 0u64;
    for _ in 0..50 {
        let batch: Vec<_> = (0..1_000)
            .map(|_| {
                seq += 1;
                event(seq, 0, "api.called", "a", "x")
            })
            .collect();
        feed(&mut model, Msg::Events(batch));
        assert!(model.live.events.len() <= EVENTS_KEPT_MAX);
    }
    assert_eq!(model.live.events.len(), EVENTS_KEPT_MAX);
    assert_eq!(model.live.events.front().map(|e| e.seq), Some(50_000));
    assert_eq!(
        model.live.events.back().map(|e| e.seq),
        Some(50_000 - EVENTS_KEPT_MAX as u64 + 1)
    );
}

#[test]
fn replayed_events_are_not_duplicated() {
    let mut model = Model::new(false, NOW_US);
    let batch: Vec<_> = (1..=5)
        .map(|s| event(s, 0, "api.called", "a", "x"))
        .collect();
    feed(&mut model, Msg::Events(batch.clone()));
    feed(&mut model, Msg::Events(batch));
    assert_eq!(model.live.events.len(), 5);
}

#[test]
fn a_filter_narrows_live_rows() {
    let mut model = on("live");
    let all = model.live_rows().count();
    keys(&mut model, &[Key::Char('/')]);
    keys(&mut model, &typed("BILLING"));
    keys(&mut model, &[Key::Enter]);
    let shown: Vec<_> = model.live_rows().collect();
    assert!(!shown.is_empty() && shown.len() < all);
    assert!(
        shown
            .iter()
            .all(|e| e.agent == "billing-agent" || e.user == "bob")
    );
    // Kind matches too.
    model.live.filter = "refused".into();
    assert!(model.live_rows().all(|e| e.kind == "request.refused"));
    assert!(model.live_rows().count() > 0);
}

#[test]
fn paused_live_hides_new_events_until_resumed() {
    let mut model = on("live");
    keys(&mut model, &[Key::Char('p')]);
    let before: Vec<u64> = model.live_rows().map(|e| e.seq).collect();
    feed(
        &mut model,
        Msg::Events(vec![event(5_000, 0, "api.called", "a", "x")]),
    );
    assert_eq!(model.live_rows().map(|e| e.seq).collect::<Vec<_>>(), before);
    assert_eq!(model.live.missed_while_paused, 1);
    keys(&mut model, &[Key::Char('p')]);
    assert_eq!(model.live_rows().next().map(|e| e.seq), Some(5_000));
}

#[test]
fn scrolled_back_the_cursor_stays_on_its_row() {
    let mut model = on("live");
    keys(&mut model, &[Key::Char('j'), Key::Char('j')]);
    let seq = model.selected_event().map(|e| e.seq);
    feed(
        &mut model,
        Msg::Events(vec![event(5_000, 0, "api.called", "a", "x")]),
    );
    assert_eq!(model.selected_event().map(|e| e.seq), seq);
}

#[test]
fn time_left_counts_down_with_ticks() {
    let mut model = on("approvals");
    let expires = model
        .selected_approval()
        .map(|a| a.expires_at_us)
        .unwrap_or_default();
    assert_eq!(time_left(expires, model.now_us), "4 min 12 s");
    feed(
        &mut model,
        Msg::Tick {
            now_us: NOW_US + 60 * S,
        },
    );
    assert_eq!(time_left(expires, model.now_us), "3 min 12 s");
    feed(
        &mut model,
        Msg::Tick {
            now_us: NOW_US + 4 * 60 * S + 11 * S,
        },
    );
    assert_eq!(time_left(expires, model.now_us), "1 s");
    feed(
        &mut model,
        Msg::Tick {
            now_us: NOW_US + 5 * 60 * S,
        },
    );
    assert_eq!(time_left(expires, model.now_us), "expired");
}

#[test]
fn help_opens_and_closes() {
    let mut model = on("live");
    keys(&mut model, &[Key::Char('?')]);
    assert_eq!(model.overlay, Some(Overlay::Help));
    // q closes the help rather than quitting.
    assert!(keys(&mut model, &[Key::Char('q')]).is_empty());
    assert_eq!(model.overlay, None);
}

#[test]
fn histogram_zooms_within_its_levels() {
    let mut model = on("live");
    keys(&mut model, &[Key::Char('t')]);
    assert!(model.histogram.shown);
    keys(&mut model, &[Key::Char('+')]);
    assert_eq!(model.histogram.zoom, 0);
    for _ in 0..20 {
        keys(&mut model, &[Key::Char('-')]);
    }
    assert_eq!(model.histogram.bucket_us(), 86_400 * S);
    let ts = [
        NOW_US,
        NOW_US - S,
        NOW_US - 2 * S,
        NOW_US - 25 * S,
        NOW_US - 100 * S,
    ];
    let counts = docket_tui::model::histogram(&ts, NOW_US, 10 * S, 3);
    assert_eq!(
        counts,
        vec![0, 2, 1],
        "the two oldest fall outside the 3 buckets"
    );
}

#[test]
fn findings_update_in_place_and_stay_ordered() {
    let mut model = on("findings");
    let mut closed = common::findings().remove(0);
    closed.status = Some(TriageStatus::Closed);
    feed(&mut model, Msg::Findings(vec![closed]));
    assert_eq!(model.findings.findings.len(), 5);
    assert_eq!(
        model
            .findings
            .findings
            .last()
            .map(|f| f.finding_id.as_str()),
        Some("bulk_export@1031"),
        "closed findings sort last"
    );
}

#[test]
fn action_outcomes_reach_the_status_line() {
    let mut model = on("approvals");
    feed(
        &mut model,
        Msg::ActionOutcome {
            action: "approve apr_0193f2".into(),
            outcome: Ok("appended at seq 1041".into()),
        },
    );
    assert_eq!(
        model.status.as_ref().map(|s| s.text.as_str()),
        Some("approve apr_0193f2: appended at seq 1041")
    );
    feed(
        &mut model,
        Msg::ActionOutcome {
            action: "deny apr_0193f7".into(),
            outcome: Err("no signing key (--key)".into()),
        },
    );
    assert!(
        model
            .status
            .as_ref()
            .is_some_and(|s| s.is_error && s.text.contains("--key"))
    );
    feed(
        &mut model,
        Msg::Tick {
            now_us: NOW_US + 9 * S,
        },
    );
    assert_eq!(model.status, None, "a status clears after a while");
}

#[test]
fn ctrl_c_quits_even_while_typing() {
    let mut model = on("query");
    assert_eq!(keys(&mut model, &[Key::Ctrl('c')]), vec![Command::Quit]);
}

#[test]
fn your_requests_come_first_and_another_users_is_refused_before_sending() {
    let mut model = on("approvals");
    let order: Vec<&str> = model
        .approval_rows()
        .map(|a| a.approval_id.as_str())
        .collect();
    // bob's (expiring in 4 min) before alice's (45 s): yours first, then the soonest.
    assert_eq!(order, vec!["apr_0193f2", "apr_0193f7"]);
    keys(&mut model, &[Key::Down]);
    assert_eq!(keys(&mut model, &[Key::Char('a')]), vec![]);
    assert_eq!(keys(&mut model, &[Key::Char('d')]), vec![]);
    assert_eq!(
        model.overlay, None,
        "no confirmation for a request that is not yours"
    );
    let status = model.status.clone().expect("a status");
    assert!(status.is_error);
    assert_eq!(
        status.text,
        "apr_0193f7 is alice's to decide; your key is bob's"
    );
    // Known to be alice's key now: the same key press sends her decision.
    feed(&mut model, Msg::You(Some("alice".into())));
    assert_eq!(
        model.selected_approval().map(|a| a.approval_id.as_str()),
        Some("apr_0193f7"),
        "the cursor stays on the request it was on"
    );
    assert_eq!(
        keys(&mut model, &[Key::Char('a')]),
        vec![Command::Decide {
            approval_id: "apr_0193f7".into(),
            approve: true
        }]
    );
}

#[test]
fn a_paste_is_one_insertion_into_the_input_and_never_keys() {
    let mut model = on("live");
    // Outside an input, a paste with a q in it neither quits nor types.
    assert_eq!(update(&mut model, Msg::Paste("quit".into())), vec![]);
    assert_eq!(model.screen, Screen::Live);
    assert!(model.status.as_ref().is_some_and(|s| s.is_error));
    keys(&mut model, &[Key::Char('/')]);
    assert_eq!(update(&mut model, Msg::Paste("agent-\t7\n".into())), vec![]);
    assert_eq!(model.live.filter, "agent- 7 ");
    let mut model = on("query");
    let long = "x".repeat(6_000);
    assert_eq!(update(&mut model, Msg::Paste(long)), vec![]);
    assert_eq!(
        model.query.input.chars().count(),
        docket_tui::model::INPUT_CHARS_MAX
    );
    assert!(model.query.editing);
}

#[test]
fn agents_are_listed_in_the_order_people_count() {
    use docket_tui::model::AgentRow;
    let mut model = fixed_model(false);
    let names = ["agent-10", "agent-2", "agent-1", "billing", "agent-02"];
    let rows = names
        .iter()
        .map(|n| AgentRow {
            name: n.to_string(),
            suspended: false,
            calls: 0,
            grants: 0,
            live_tokens: 0,
            open_findings: 0,
        })
        .collect();
    feed(&mut model, Msg::Agents(rows));
    let listed: Vec<&str> = model.agent_rows().map(|a| a.name.as_str()).collect();
    assert_eq!(
        listed,
        vec!["agent-1", "agent-2", "agent-02", "agent-10", "billing"]
    );
}
