//! Fixed models for the snapshot and update tests: built by feeding `update` the messages a
//! shell would send, so the fixtures also exercise the message handling.
#![allow(dead_code)]

use docket_tui::model::{
    AgentDetail, AgentRow, ApprovalRow, CheckpointFigure, EventRow, FindingRow, Holding,
    HoldingKind, Level, Model, OverviewFigures, Risk,
};
use docket_tui::{Command, Key, Msg, update};

/// 2026-12-02T15:00:00Z: every fixture's "now".
pub const NOW_US: i64 = 1_796_223_600_000_000;
pub const S: i64 = 1_000_000;

pub fn event(seq: u64, ago_s: i64, kind: &str, agent: &str, summary: &str) -> EventRow {
    EventRow {
        seq,
        ts_us: NOW_US - ago_s * S,
        kind: kind.to_string(),
        agent: agent.to_string(),
        user: if agent.starts_with("billing") {
            "bob"
        } else {
            "alice"
        }
        .to_string(),
        audience: if kind.starts_with("api") {
            "crm.example"
        } else {
            "vault"
        }
        .to_string(),
        summary: summary.to_string(),
        signer_key_id: format!("ed25519:{:08x}", seq * 2_654_435_761 % 0xffff_ffff),
    }
}

pub fn events() -> Vec<EventRow> {
    let agents = ["support-bot", "billing-agent", "research-7", "ops-runner"];
    let kinds = [
        ("api.called", "GET /customers/4411 → 200"),
        ("token.issued", "token for crm.read, 15 min"),
        ("api.called", "POST /refunds → 201"),
        ("approval.requested", "refund over limit: asks alice"),
        ("request.refused", "scope crm.write not granted"),
        ("grant.created", "crm.read by alice"),
        ("finding.raised", "off-hours bulk export"),
    ];
    (1..=40u64)
        .map(|seq| {
            let (kind, summary) = kinds[(seq as usize * 5) % kinds.len()];
            let agent = agents[(seq as usize * 3) % agents.len()];
            event(seq + 1_000, (41 - seq as i64) * 7, kind, agent, summary)
        })
        .collect()
}

pub fn finding(id: u64, level: Level, rule: &str, agent: &str, title: &str) -> FindingRow {
    FindingRow {
        finding_id: format!("{rule}@{id}"),
        rule_id: rule.to_string(),
        title: title.to_string(),
        level,
        agent: agent.to_string(),
        user: "alice".to_string(),
        audience: "crm.example".to_string(),
        explanation: format!(
            "{agent} read far more customer records in ten minutes than it ever has, outside \
             the hours it usually works."
        ),
        observed: "2,140 reads in 10 min at 03:12".to_string(),
        baseline: "p99 of 30 days: 85 reads in 10 min, 08:00-19:00".to_string(),
        evidence_seqs: vec![id - 2, id - 1, id],
        status: None,
        suppressed: false,
        seq: id,
        ts_us: NOW_US - (2_000 - id as i64) * 60 * S,
    }
}

pub fn findings() -> Vec<FindingRow> {
    let mut acked = finding(
        1_020,
        Level::Medium,
        "token_reuse",
        "ops-runner",
        "Token used from two hosts",
    );
    acked.status = Some(docket_tui::model::TriageStatus::Acknowledged);
    vec![
        finding(
            1_031,
            Level::Critical,
            "bulk_export",
            "support-bot",
            "Bulk export outside working hours",
        ),
        finding(
            1_025,
            Level::High,
            "scope_creep",
            "research-7",
            "Asked for write scopes it never used",
        ),
        acked,
        finding(
            1_012,
            Level::Low,
            "new_audience",
            "billing-agent",
            "First call to a new audience",
        ),
        finding(
            1_009,
            Level::Informational,
            "burst",
            "support-bot",
            "Short burst of calls",
        ),
    ]
}

pub fn agents() -> Vec<AgentRow> {
    vec![
        AgentRow {
            name: "support-bot".into(),
            calls: 18_230,
            grants: 2,
            live_tokens: 3,
            open_findings: 2,
            suspended: false,
        },
        AgentRow {
            name: "billing-agent".into(),
            calls: 4_411,
            grants: 1,
            live_tokens: 1,
            open_findings: 1,
            suspended: false,
        },
        AgentRow {
            name: "research-7".into(),
            calls: 932,
            grants: 3,
            live_tokens: 0,
            open_findings: 1,
            suspended: false,
        },
        AgentRow {
            name: "ops-runner".into(),
            calls: 77,
            grants: 1,
            live_tokens: 0,
            open_findings: 0,
            suspended: true,
        },
    ]
}

pub fn agent_detail() -> AgentDetail {
    AgentDetail {
        agent: "support-bot".into(),
        holdings: vec![
            Holding {
                kind: HoldingKind::Token,
                id: "tok_7f3a9c21".into(),
                audience: "crm.example".into(),
                scopes: vec!["crm.read".into()],
                expires_at_us: Some(NOW_US + 9 * 60 * S),
            },
            Holding {
                kind: HoldingKind::Grant,
                id: "grant_51e0".into(),
                audience: "crm.example".into(),
                scopes: vec!["crm.read".into(), "crm.export".into()],
                expires_at_us: None,
            },
        ],
        timeline: events()
            .into_iter()
            .rev()
            .filter(|e| e.agent == "support-bot")
            .collect(),
    }
}

pub fn approvals() -> Vec<ApprovalRow> {
    vec![
        ApprovalRow {
            approval_id: "apr_0193f2".into(),
            agent: "billing-agent".into(),
            user: "bob".into(),
            audience: "payments.example".into(),
            scopes: vec!["refunds.create".into(), "refunds.approve".into()],
            risk: Risk::Critical,
            binding_message: "Refund 4,200 EUR to ACME GmbH (order 88213)".into(),
            expires_at_us: NOW_US + 4 * 60 * S + 12 * S,
            step_up_required: true,
        },
        ApprovalRow {
            approval_id: "apr_0193f7".into(),
            agent: "support-bot".into(),
            user: "alice".into(),
            audience: "crm.example".into(),
            scopes: vec!["crm.export".into()],
            risk: Risk::High,
            binding_message: "Export 120 customer records to support ticket 5521".into(),
            expires_at_us: NOW_US + 45 * S,
            step_up_required: false,
        },
    ]
}

pub fn overview() -> OverviewFigures {
    OverviewFigures {
        ingest_events_per_s: 4_210,
        head_seq: 1_040,
        head_hash: "b3f1c9a07d2e44e1a9c0f5d6e7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6".into(),
        checkpoint: Some(CheckpointFigure {
            seq: 1_024,
            verified: Some(true),
        }),
        agents: 4,
        active_grants: 7,
        live_tokens: 4,
        pending_approvals: 2,
        open_findings: vec![
            (Level::Critical, 1),
            (Level::High, 1),
            (Level::Medium, 1),
            (Level::Low, 1),
            (Level::Informational, 1),
        ],
        rejected_events: 3,
    }
}

/// A model with every screen's data, as a shell would have fed it.
pub fn fixed_model(readonly: bool) -> Model {
    let mut model = Model::new(readonly, NOW_US);
    // The analyst's key is bob's: bob's request is theirs to decide, alice's is not.
    feed(&mut model, Msg::You(Some("bob".into())));
    feed(&mut model, Msg::Events(events()));
    feed(&mut model, Msg::Findings(findings()));
    feed(&mut model, Msg::Agents(agents()));
    feed(&mut model, Msg::Approvals(approvals()));
    // A rising then settling rate, so the chart has a shape.
    for i in 0..120u64 {
        let mut f = overview();
        f.ingest_events_per_s =
            1_000 + (i * 97 % 23) * 150 + if (40..60).contains(&i) { 2_500 } else { 0 };
        feed(&mut model, Msg::Overview(f));
    }
    feed(&mut model, Msg::Overview(overview()));
    model
}

/// Applies a message that must produce no command.
pub fn feed(model: &mut Model, msg: Msg) {
    let commands = update(model, msg.clone());
    assert!(commands.is_empty(), "{msg:?} gave {commands:?}");
}

/// Types keys; returns every command they produced, in order.
pub fn keys(model: &mut Model, keys: &[Key]) -> Vec<Command> {
    keys.iter()
        .flat_map(|k| update(model, Msg::Key(*k)))
        .collect()
}

/// The keys of a typed string.
pub fn typed(text: &str) -> Vec<Key> {
    text.chars().map(Key::Char).collect()
}
