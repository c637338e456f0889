//! Detection rules over a real ledger: a calm fleet, one planted behaviour per built-in rule,
//! windows that agree with one run, Sigma rules, and broken rules that stop nothing else.

use std::path::PathBuf;

use docket_ledger::admission::{BATCH_EVENTS_MAX, Incoming};
use docket_ledger::config::Config;
use docket_ledger::ingest::Ledger;
use docket_ledger::store::{LedgerIdentity, Store};
use docket_query::detect::{self, Detection};
use docket_query::{AuditSession, SessionOptions};
use docket_schemas::{
    ApiCalled, ApprovalDecided, ApprovalMethod, ApprovalRequested, CloseReason, Decision, Event,
    EventBody, EventId, FindingSuppressed, FindingTriaged, GrantCreated, KeyRegistered, Kind, Risk,
    Timestamp, TokenIssued, TriageStatus, encode_base64,
};
use docket_testkit::workload::{Expect, Published, Roles, Workload};

const START: &str = "2026-03-02T00:00:00.000000Z";

struct Fleet {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// The seq each planted behaviour landed at, by the rule that must see it.
    planted: Vec<(&'static str, std::ops::RangeInclusive<u64>)>,
    /// Seqs of a new agent's calls: one from outside the network, one DELETE on an admin path.
    newcomer: Vec<u64>,
}

/// Builds events with increasing ids, signed by the given role.
struct Maker {
    serial: u64,
}

impl Maker {
    fn event(
        &mut self,
        ts: Timestamp,
        body: EventBody,
        key: &ed25519_dalek::SigningKey,
    ) -> Published {
        self.serial += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.serial.to_be_bytes());
        id[6] = 0x70 | (id[6] & 0x0f);
        id[8] = 0x80;
        id[15] = 1;
        let event = Event {
            v: docket_schemas::SCHEMA_VERSION,
            id: EventId(id),
            ts,
            body,
        };
        Published {
            subject: format!("docket.events.{}", event.kind()),
            envelope: docket_schemas::seal_event(&event, key),
            id: Some(event.id),
            expect: Expect::Append,
        }
    }
}

fn call(
    agent: &str,
    audience: &str,
    method: &str,
    op: &str,
    source: &str,
    status: u16,
) -> EventBody {
    EventBody::ApiCalled(ApiCalled {
        token_id: format!("tok-{agent}"),
        token_hash: None,
        agent: agent.into(),
        audience: audience.into(),
        method: method.into(),
        operation: op.into(),
        scope: Some("read".into()),
        status,
        source: source.into(),
        ..Default::default()
    })
}

fn token(agent: &str, n: &str, scopes: &[&str], ts: Timestamp) -> EventBody {
    EventBody::TokenIssued(TokenIssued {
        token_id: format!("tok-{agent}-{n}"),
        token_hash: blake3::hash(format!("{agent}{n}").as_bytes())
            .to_hex()
            .to_string(),
        grant_id: format!("grant-{agent}"),
        user: "user-2".into(),
        agent: agent.into(),
        audience: "github".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: ts.plus_seconds(3600),
        approval_id: None,
        authorization_details: vec![],
    })
}

fn approval_request(id: &str, user: &str, agent: &str, ts: Timestamp) -> EventBody {
    EventBody::ApprovalRequested(ApprovalRequested {
        approval_id: id.into(),
        grant_id: format!("grant-{agent}"),
        user: user.into(),
        agent: agent.into(),
        audience: "crm".into(),
        scopes: vec!["contacts:delete".into()],
        risk: Risk::High,
        binding_message: format!("{agent} wants contacts:delete on crm ({id})"),
        expires_at: ts.plus_seconds(3600),
        authorization_details: vec![],
    })
}

fn decision(id: &str, user: &str, decision: Decision) -> EventBody {
    EventBody::ApprovalDecided(ApprovalDecided {
        approval_id: id.into(),
        user: user.into(),
        decision,
        method: ApprovalMethod::Push,
        auth_time: None,
        reason: None,
        step_up: None,
    })
}

/// Three agents with steady habits for three days (agent-c works 00:00-18:00 UTC only; each
/// agent gets one token a day), then (when `plant`) one behaviour per built-in rule.
async fn fleet(plant: bool) -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("ledger");
    let roles = Roles::from_seed(3);
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let identity = LedgerIdentity {
        origin: "detect.test".into(),
        admin_public_key: encode_base64(roles.admin.verifying_key().as_bytes()),
        ledger_public_key: encode_base64(key.verifying_key().as_bytes()),
    };
    let store = Store::open(&data.join("db"), &identity).expect("store");
    let mut ledger =
        Ledger::new(store, key, Config::default().checkpoint_policy()).expect("ledger");
    let start = Timestamp::parse(START).expect("start");
    let mut w = Workload::new(3, start, 3, 3);
    let mut all = w.setup();
    let (gw, vault, approver) = (
        w.roles.gateway.clone(),
        w.roles.vault.clone(),
        w.roles.approvals.clone(),
    );
    let mut m = Maker { serial: 0 };
    // agent-d holds a grant it used once, on the first day.
    all.push(m.event(
        start,
        EventBody::GrantCreated(GrantCreated {
            grant_id: "grant-dormant".into(),
            user: "user-2".into(),
            agent: "agent-d".into(),
            audience: "crm".into(),
            scopes: vec!["contacts:read".into()],
            expires_at: start.plus_seconds(30 * 86_400),
            max_calls: None,
            max_token_ttl_s: None,
            approval: Vec::new(),
        }),
        &vault,
    ));
    let dormant = |m: &mut Maker, ts: Timestamp, n: &str| {
        let mut t = token("agent-d", n, &["contacts:read"], ts);
        if let EventBody::TokenIssued(k) = &mut t {
            k.grant_id = "grant-dormant".into();
            k.audience = "crm".into();
        }
        m.event(ts, t, &vault)
    };
    all.push(dormant(&mut m, start.plus_seconds(200), "0"));
    let dormant_call = |token_id: &str| {
        let mut c = call("agent-d", "crm", "GET", "/contacts", "10.1.0.4", 200);
        if let EventBody::ApiCalled(a) = &mut c {
            a.token_id = token_id.into();
        }
        c
    };
    all.push(m.event(start.plus_seconds(300), dormant_call("tok-agent-d-0"), &gw));
    // Every ten minutes each agent makes its usual call; agent-a alternates two hosts and two operations.
    let mut t = start;
    for i in 0..(3 * 144) {
        let (src_a, op_a) = if i % 2 == 0 {
            ("10.1.0.1", "/repos")
        } else {
            ("10.1.0.11", "/issues")
        };
        all.push(m.event(t, call("agent-a", "github", "GET", op_a, src_a, 200), &gw));
        all.push(m.event(
            t.plus_seconds(1),
            call(
                "agent-b",
                "slack",
                "POST",
                "/chat.postMessage",
                "10.1.0.2",
                200,
            ),
            &gw,
        ));
        if i % 144 < 108 {
            all.push(m.event(
                t.plus_seconds(2),
                call("agent-c", "crm", "GET", "/contacts", "10.1.0.3", 200),
                &gw,
            ));
        }
        if i % 144 == 6 {
            let day = (i / 144).to_string();
            for (agent, scope) in [
                ("agent-a", "repo:read"),
                ("agent-b", "chat:write"),
                ("agent-c", "contacts:read"),
            ] {
                all.push(m.event(t.plus_seconds(3), token(agent, &day, &[scope], t), &vault));
            }
        }
        t = t.plus_seconds(600);
    }
    let mut planted = Vec::new();
    let mut newcomer = Vec::new();
    if plant {
        let at = |all: &mut Vec<Published>,
                  planted: &mut Vec<(&'static str, std::ops::RangeInclusive<u64>)>,
                  name: &'static str| {
            planted.push((name, all.len() as u64..=all.len() as u64));
        };
        // Positions count from 1 in `all`; seqs are fixed up below.
        let t = t.plus_seconds(120);
        all.push(m.event(
            t,
            call("agent-a", "slack", "GET", "/chat.history", "10.1.0.1", 200),
            &gw,
        ));
        at(
            &mut all,
            &mut planted,
            "Agent calls an audience it has never called",
        );
        all.push(m.event(
            t.plus_seconds(30),
            call(
                "agent-b",
                "slack",
                "DELETE",
                "/admin.users",
                "10.1.0.2",
                200,
            ),
            &gw,
        ));
        at(
            &mut all,
            &mut planted,
            "Agent performs an operation it has never performed",
        );
        all.push(m.event(
            t.plus_seconds(60),
            call("agent-c", "crm", "GET", "/contacts", "203.0.113.9", 200),
            &gw,
        ));
        at(
            &mut all,
            &mut planted,
            "Agent calls from a source address it has never used",
        );
        all.push(m.event(
            t.plus_seconds(90),
            call("agent-a", "github", "GET", "/repos", "10.1.0.1", 200),
            &gw,
        ));
        all.push(m.event(
            t.plus_seconds(110),
            call("agent-a", "github", "GET", "/issues", "10.1.0.11", 200),
            &gw,
        ));
        at(
            &mut all,
            &mut planted,
            "One token used from two source addresses at once",
        );
        for k in 0..12 {
            all.push(m.event(
                t.plus_seconds(150 + k * 5),
                call(
                    "agent-b",
                    "slack",
                    "POST",
                    "/chat.postMessage",
                    "10.1.0.2",
                    403,
                ),
                &gw,
            ));
            if k == 9 {
                at(
                    &mut all,
                    &mut planted,
                    "Burst of refused or missing-resource answers (probing)",
                );
            }
        }
        for k in 0..6 {
            all.push(m.event(
                t.plus_seconds(240 + k * 30),
                approval_request(&format!("appr-fatigue-{k}"), "user-1", "agent-c", t),
                &vault,
            ));
            if k == 4 {
                at(
                    &mut all,
                    &mut planted,
                    "Approval fatigue - many approval requests to one user",
                );
            }
        }
        for k in 0..5 {
            all.push(m.event(
                t.plus_seconds(420 + k * 20),
                token("agent-b", &format!("burst-{k}"), &["chat:write"], t),
                &vault,
            ));
        }
        at(
            &mut all,
            &mut planted,
            "Tokens issued to one agent in a burst",
        );
        all.push(m.event(
            t.plus_seconds(540),
            token("agent-a", "wide", &["repo:read", "admin:org"], t),
            &vault,
        ));
        at(
            &mut all,
            &mut planted,
            "Token for a scope beyond the agent's history (escalation)",
        );
        for k in 0..4 {
            let id = format!("appr-worn-{k}");
            let when = t.plus_seconds(600 + k * 60);
            all.push(m.event(
                when,
                approval_request(&id, "user-2", "agent-a", when),
                &vault,
            ));
            let d = if k < 3 {
                Decision::Denied
            } else {
                Decision::Approved
            };
            all.push(m.event(when.plus_seconds(10), decision(&id, "user-2", d), &approver));
        }
        at(
            &mut all,
            &mut planted,
            "A run of denials followed by an approval",
        );
        // Sixty calls in ten minutes from agent-a: the spike fires once, somewhere in the run.
        let first = all.len() as u64 + 1;
        for k in 0..60 {
            all.push(m.event(
                t.plus_seconds(900 + k * 10),
                call("agent-a", "github", "GET", "/repos", "10.1.0.1", 200),
                &gw,
            ));
        }
        planted.push((
            "Agent calls far above its own hourly rate",
            first..=all.len() as u64,
        ));
        // agent-d's grant, unused for three days, takes ten calls in ten minutes.
        all.push(dormant(&mut m, t.plus_seconds(1200), "1"));
        for k in 0..10 {
            all.push(m.event(
                t.plus_seconds(1210 + k * 30),
                dormant_call("tok-agent-d-1"),
                &gw,
            ));
        }
        at(
            &mut all,
            &mut planted,
            "A dormant grant suddenly used heavily",
        );
        // A new agent, still learning: only high detections may be raised about it.
        all.push(m.event(
            t.plus_seconds(1500),
            call("agent-n", "crm", "GET", "/contacts", "198.51.100.1", 200),
            &gw,
        ));
        newcomer.push(all.len() as u64);
        all.push(m.event(
            t.plus_seconds(1510),
            call(
                "agent-n",
                "crm",
                "DELETE",
                "/admin/contacts",
                "198.51.100.1",
                200,
            ),
            &gw,
        ));
        newcomer.push(all.len() as u64);
        // agent-c, which works 00:00-18:00, calls at 20:00.
        all.push(m.event(
            t.plus_seconds(20 * 3600),
            call("agent-c", "crm", "GET", "/contacts", "10.1.0.3", 200),
            &gw,
        ));
        at(
            &mut all,
            &mut planted,
            "Agent active at an hour it has never been active",
        );
    }
    commit(&mut ledger, &all, 1).await;
    let head = ledger.tip().seq;
    drop(ledger);
    // Every published event was appended after the genesis entries: position n is seq head - len + n.
    let offset = head - all.len() as u64;
    let planted = planted
        .into_iter()
        .map(|(n, r)| (n, r.start() + offset..=r.end() + offset))
        .collect();
    let newcomer = newcomer.into_iter().map(|p| p + offset).collect();
    Fleet {
        _dir: dir,
        data,
        planted,
        newcomer,
    }
}

async fn session(f: &Fleet) -> AuditSession {
    AuditSession::open(
        &f.data,
        SessionOptions {
            seal: false,
            ..SessionOptions::default()
        },
    )
    .await
    .expect("session")
}

async fn detect_all(f: &Fleet, windows: &[u64]) -> Vec<Detection> {
    let (rules, problems) = detect::load(None, true);
    assert_eq!(problems, vec![]);
    let mut s = session(f).await;
    let head = s.coverage().head;
    let mut out = Vec::new();
    let mut from = 0;
    for to in windows.iter().copied().chain([head]) {
        let (found, problems) =
            detect::run_all(&rules, &mut s, from, to, detect::LEARNING_DEFAULT_US).await;
        assert_eq!(problems, vec![], "rules failed");
        out.extend(found);
        from = to;
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_built_in_rule_sees_its_planted_behaviour_and_nothing_in_a_calm_fleet() {
    let calm = fleet(false).await;
    assert_eq!(
        detect_all(&calm, &[]).await,
        vec![],
        "a calm fleet raises nothing"
    );

    let f = fleet(true).await;
    let found = detect_all(&f, &[]).await;
    let seen: Vec<&str> = found.iter().map(|d| d.title.as_str()).collect();
    let mut want = f.planted.clone();
    want.sort_by_key(|(_, r)| *r.start());
    let want_titles: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    assert_eq!(seen, want_titles, "{found:#?}");
    for (d, (_, range)) in found.iter().zip(&want) {
        assert!(range.contains(&d.seq), "{d:?} outside {range:?}");
    }
    assert_eq!(
        want.len(),
        detect::BUILT_IN.len(),
        "one behaviour per built-in rule"
    );
    for d in &found {
        assert!(d.evidence.contains(&d.seq), "{d:?}");
        assert!(!d.observed.is_empty() && !d.baseline.is_empty(), "{d:?}");
    }
    let probing = found
        .iter()
        .find(|d| d.title.starts_with("Burst"))
        .expect("probing");
    assert_eq!(
        probing.evidence.len(),
        10,
        "the ten refused calls: {probing:?}"
    );
    assert!(
        probing.observed.starts_with("10 calls answered"),
        "{}",
        probing.observed
    );
    let two = found
        .iter()
        .find(|d| d.title.starts_with("One token"))
        .expect("two sources");
    assert_eq!(two.evidence, vec![two.seq - 1, two.seq], "{two:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_in_windows_gives_what_one_run_gives() {
    let f = fleet(true).await;
    let whole = detect_all(&f, &[]).await;
    assert!(!whole.is_empty());
    let first = f
        .planted
        .iter()
        .map(|(_, r)| *r.start())
        .min()
        .expect("planted");
    // A boundary just before every detection, so each rule must add what came before its
    // window to what is inside it to reach the same answer.
    let mut inside: Vec<u64> = whole
        .iter()
        .map(|d| d.seq.saturating_sub(2))
        .filter(|s| *s > 0)
        .collect();
    inside.sort_unstable();
    inside.dedup();
    for windows in [
        vec![first - 1, first + 1, first + 7, first + 20],
        (1..(first + 40)).step_by(97).collect::<Vec<_>>(),
        inside,
    ] {
        assert_eq!(detect_all(&f, &windows).await, whole, "windows {windows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigma_rules_run_and_a_broken_rule_stops_nothing_else() {
    let f = fleet(true).await;
    let rules_dir = tempfile::tempdir().expect("rules");
    std::fs::write(
        rules_dir.path().join("admin_delete.yml"),
        "title: Deleting through an admin operation\n\
         id: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f6\n\
         status: test\n\
         level: high\n\
         logsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    method: delete\n    operation|startswith: /admin\n  \
         filter:\n    source|cidr: 192.168.0.0/16\n  condition: sel and not filter\n",
    )
    .expect("write");
    std::fs::write(
        rules_dir.path().join("outside.yml"),
        "title: Calls from outside the fleet's network\n\
         id: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f7\n\
         level: medium\n\
         logsource:\n  product: docket\n  service: api.called\n\
         detection:\n  inside:\n    source|cidr: 10.0.0.0/8\n  condition: not inside\n",
    )
    .expect("write");
    std::fs::write(
        rules_dir.path().join("broken.yml"),
        "title: broken\nid: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f8\nlevel: severe\ndocket:\n  sql: SELECT 1\n",
    )
    .expect("write");
    std::fs::write(
        rules_dir.path().join("few_columns.yml"),
        "title: few columns\nid: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5fa\nlevel: low\ndocket:\n  sql: SELECT seq, agent FROM api_calls\n",
    )
    .expect("write");
    std::fs::write(
        rules_dir.path().join("bad_sql.yml"),
        "title: bad sql\nid: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f9\nlevel: low\ndocket:\n  sql: SELECT seq FROM no_such_table\n",
    )
    .expect("write");
    // Correlations: each names base rules in its own file, and fires once, on the event that
    // makes it true.
    let correlation = |file: &str, id: &str, title: &str, body: &str, bases: &str| {
        std::fs::write(
            rules_dir.path().join(file),
            format!("title: {title}\nid: {id}\nlevel: high\ncorrelation:\n{body}---\n{bases}"),
        )
        .expect("write");
    };
    correlation(
        "corr_count.yml",
        "1e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e501",
        "Ten refusals in five minutes",
        "  type: event_count\n  rules: [refused]\n  group-by: [agent]\n  timespan: 5m\n  condition:\n    gte: 10\n",
        "title: refused\nname: refused\nlogsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    status: 403\n  condition: sel\n",
    );
    correlation(
        "corr_values.yml",
        "1e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e502",
        "Two sources for one token within a minute",
        "  type: value_count\n  rules: [calls]\n  group-by: [token_id]\n  timespan: 1m\n  condition:\n    field: source\n    gte: 2\n",
        "title: calls\nname: calls\nlogsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    agent|startswith: agent-\n  condition: sel\n",
    );
    correlation(
        "corr_temporal.yml",
        "1e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e503",
        "Admin token and repository calls within half an hour",
        "  type: temporal\n  rules: [admin_token, repo_call]\n  group-by: [agent]\n  timespan: 30m\n",
        "title: admin token\nname: admin_token\nlogsource:\n  product: docket\n  service: token.issued\n\
         detection:\n  sel:\n    scopes|contains: admin\n  condition: sel\n---\n\
         title: repo call\nname: repo_call\nlogsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    operation: /repos\n  condition: sel\n",
    );
    // A FIFO named like a rule would block whoever opens it: refused without opening.
    let fifo = rules_dir.path().join("pipe.yml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let (rules, problems) = detect::load(Some(rules_dir.path()), false);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[1].origin.ends_with("pipe.yml"), "{}", problems[1]);
    assert!(
        problems[1].why.contains("not a regular file"),
        "{}",
        problems[1]
    );
    assert!(
        problems[0].origin.ends_with("broken.yml"),
        "{}",
        problems[0]
    );
    assert_eq!(problems[0].line, Some(3), "{}", problems[0]);
    assert_eq!(rules.len(), 7);
    let mut s = session(&f).await;
    let planned = detect::check_all(&rules, &mut s).await;
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert!(planned[0].origin.ends_with("bad_sql.yml"), "{}", planned[0]);
    assert!(planned[0].why.contains("no_such_table"), "{}", planned[0]);
    assert!(
        planned[1].origin.ends_with("few_columns.yml"),
        "{}",
        planned[1]
    );
    assert!(
        planned[1]
            .why
            .contains("no observed, baseline, evidence column"),
        "{}",
        planned[1]
    );
    let head = s.coverage().head;
    let (found, failed) =
        detect::run_all(&rules, &mut s, 0, head, detect::LEARNING_DEFAULT_US).await;
    assert_eq!(failed.len(), 2, "the bad rules fail alone: {failed:?}");
    let by = |title: &str| -> Vec<u64> {
        found
            .iter()
            .filter(|d| d.title.starts_with(title))
            .map(|d| d.seq)
            .collect()
    };
    let planted = |name: &str| {
        f.planted
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .map(|(_, r)| *r.start())
            .expect(name)
    };
    assert_eq!(by("Ten refusals"), vec![planted("Burst of refused")]);
    assert_eq!(by("Two sources"), vec![planted("One token used")]);
    assert_eq!(by("Admin token"), vec![planted("Token for a scope")]);
    // The newcomer's DELETE is high and raised while it learns; its call from outside the
    // network is medium and is not.
    assert_eq!(
        by("Deleting"),
        vec![planted("Agent performs"), f.newcomer[1]]
    );
    assert_eq!(by("Calls from outside"), vec![planted("Agent calls from")]);
    let (all_found, _) = detect::run_all(&rules, &mut s, 0, head, 0).await;
    let outside: Vec<u64> = all_found
        .iter()
        .filter(|d| d.title.starts_with("Calls from outside"))
        .map(|d| d.seq)
        .collect();
    assert_eq!(
        outside,
        vec![planted("Agent calls from"), f.newcomer[0], f.newcomer[1]],
        "without a learning period the newcomer is reported"
    );
}

/// Commits `events` in batches as ingest would, their stream seqs counting from `first_source_seq`.
async fn commit(ledger: &mut Ledger, events: &[Published], first_source_seq: u64) {
    for (i, chunk) in events.chunks(BATCH_EVENTS_MAX).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| Incoming {
                subject: p.subject.clone(),
                payload: p.envelope.clone().into(),
                source_seq: first_source_seq + (i * BATCH_EVENTS_MAX + j) as u64,
            })
            .collect();
        ledger.commit(items).await.expect("commit");
    }
}

/// Appends `events` to the fleet's ledger, as a restarted ledger would.
async fn append(f: &Fleet, events: Vec<Published>) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let store = Store::open_reader(&f.data.join("db")).expect("reader");
    let identity = store.identity().expect("identity");
    drop(store);
    let store = Store::open(&f.data.join("db"), &identity).expect("store");
    let mut ledger =
        Ledger::new(store, key, Config::default().checkpoint_policy()).expect("ledger");
    let first = ledger.store().last_source_seq().expect("source seq") + 1;
    let head = ledger.tip().seq;
    commit(&mut ledger, &events, first).await;
    assert_eq!(
        ledger.tip().seq,
        head + events.len() as u64,
        "every triage event appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_and_suppression_on_the_record_mark_detections_and_change_nothing_else() {
    let f = fleet(true).await;
    let before = detect_all(&f, &[]).await;
    let find = |title: &str| {
        before
            .iter()
            .find(|d| d.title.starts_with(title))
            .cloned()
            .expect(title)
    };
    let (audience, probing, hour) = (
        find("Agent calls an audience"),
        find("Burst of refused"),
        find("Agent active at an hour"),
    );
    // An analyst's key, registered by the admin for the two triage kinds only.
    let roles = Roles::from_seed(3);
    let analyst = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
    let pk = analyst.verifying_key();
    let mut m = Maker { serial: 1 << 40 };
    let at = hour.ts.plus_seconds(60);
    let triaged = |finding: String, status: TriageStatus, reason: Option<CloseReason>| {
        EventBody::FindingTriaged(FindingTriaged {
            finding,
            status,
            reason,
            note: Some("looked at it".into()),
            by: "analyst-1".into(),
        })
    };
    append(
        &f,
        vec![
            m.event(
                at,
                EventBody::KeyRegistered(KeyRegistered {
                    key_id: docket_schemas::key_id(pk.as_bytes()),
                    public_key: encode_base64(pk.as_bytes()),
                    name: "analyst".into(),
                    kinds: vec![Kind::FindingTriaged, Kind::FindingSuppressed],
                }),
                &roles.admin,
            ),
            m.event(
                at.plus_seconds(1),
                triaged(audience.id(), TriageStatus::Acknowledged, None),
                &analyst,
            ),
            m.event(
                at.plus_seconds(2),
                triaged(
                    audience.id(),
                    TriageStatus::Closed,
                    Some(CloseReason::FalsePositive),
                ),
                &analyst,
            ),
            m.event(
                at.plus_seconds(3),
                triaged(probing.id(), TriageStatus::Escalated, None),
                &analyst,
            ),
            m.event(
                at.plus_seconds(4),
                EventBody::FindingSuppressed(FindingSuppressed {
                    rule_id: hour.rule_id.clone(),
                    agent: Some(hour.agent.clone()),
                    until: at.plus_seconds(86_400),
                    reason: "agent-c moved to a night shift".into(),
                    by: "analyst-1".into(),
                }),
                &analyst,
            ),
        ],
    )
    .await;
    let after = detect_all(&f, &[]).await;
    assert_eq!(after, before, "triage changes no detection");
    let mut s = session(&f).await;
    let head = s.coverage().head;
    let log = detect::TriageLog::read(&s, head).await.expect("triage");
    let state = |d: &Detection| log.state(d);
    let a = state(&audience);
    assert_eq!(
        (a.status.as_str(), a.reason.as_deref(), a.by.as_deref()),
        ("closed", Some("false_positive"), Some("analyst-1"))
    );
    assert!(!a.is_open());
    // A decision recorded before its finding was known (as a finding.raised after them all
    // would be) decides nothing: an analyst cannot close tomorrow's detection today.
    let early = log.state_of(
        &audience.id(),
        &audience.rule_id,
        &audience.agent,
        audience.ts,
        head,
    );
    assert_eq!((early.status.as_str(), early.decided_seq), ("open", None));
    assert_eq!(state(&probing).status, "escalated");
    let h = state(&hour);
    assert_eq!(h.status, "open");
    assert!(h.suppressed_by.is_some() && !h.is_open(), "{h:?}");
    let open: Vec<&str> = after
        .iter()
        .filter(|d| state(d).is_open())
        .map(|d| d.title.as_str())
        .collect();
    assert_eq!(open.len(), after.len() - 3, "{open:?}");
    // The decisions are rows of the audit tables too.
    let rows = s
        .query("SELECT decision, reason, actor FROM events WHERE kind = 'finding.triaged' ORDER BY seq")
        .await
        .expect("query");
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 3);
    // A close without a reason is not an event.
    let bad = triaged(audience.id(), TriageStatus::Closed, None);
    assert!(bad.validate().is_err(), "closed needs a reason");
}
