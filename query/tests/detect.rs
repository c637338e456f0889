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
    ApiCalled, ApprovalRequested, Event, EventBody, EventId, Risk, Timestamp, encode_base64,
};
use docket_testkit::workload::{Expect, Published, Roles, Workload};

const START: &str = "2026-03-02T00:00:00.000000Z";

struct Fleet {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// The seq each planted behaviour landed at, by the rule that must see it.
    planted: Vec<(&'static str, u64)>,
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
    })
}

/// Three agents with steady habits for three days, then (when `plant`) one behaviour per built-in rule.
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
    let (gw, vault) = (w.roles.gateway.clone(), w.roles.vault.clone());
    let mut m = Maker { serial: 0 };
    // Every ten minutes each agent makes its usual call; agent-a alternates two hosts and two operations.
    let ten_min = 600;
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
        all.push(m.event(
            t.plus_seconds(2),
            call("agent-c", "crm", "GET", "/contacts", "10.1.0.3", 200),
            &gw,
        ));
        t = t.plus_seconds(ten_min);
    }
    let mut planted = Vec::new();
    if plant {
        let mut at = |all: &mut Vec<Published>, name: &'static str| {
            planted.push((name, (all.len()) as u64));
        };
        // Seqs are positions + 1 (genesis entries come first); fixed up below.
        let t = t.plus_seconds(120);
        all.push(m.event(
            t,
            call("agent-a", "slack", "GET", "/chat.history", "10.1.0.1", 200),
            &gw,
        ));
        at(&mut all, "Agent calls an audience it has never called");
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
            "Agent performs an operation it has never performed",
        );
        all.push(m.event(
            t.plus_seconds(60),
            call("agent-c", "crm", "GET", "/contacts", "203.0.113.9", 200),
            &gw,
        ));
        at(
            &mut all,
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
        at(&mut all, "One token used from two source addresses at once");
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
                    "Burst of refused or missing-resource answers (probing)",
                );
            }
        }
        for k in 0..6 {
            let body = EventBody::ApprovalRequested(ApprovalRequested {
                approval_id: format!("appr-fatigue-{k}"),
                grant_id: "grant-c".into(),
                user: "user-1".into(),
                agent: "agent-c".into(),
                audience: "crm".into(),
                scopes: vec!["contacts:delete".into()],
                risk: Risk::High,
                binding_message: format!("agent-c wants contacts:delete on crm ({k})"),
                expires_at: t.plus_seconds(3600),
            });
            all.push(m.event(t.plus_seconds(240 + k * 30), body, &vault));
            if k == 4 {
                at(
                    &mut all,
                    "Approval fatigue - many approval requests to one user",
                );
            }
        }
    }
    for (i, chunk) in all.chunks(BATCH_EVENTS_MAX).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| Incoming {
                subject: p.subject.clone(),
                payload: p.envelope.clone().into(),
                source_seq: (i * BATCH_EVENTS_MAX + j + 1) as u64,
            })
            .collect();
        ledger.commit(items).await.expect("commit");
    }
    let head = ledger.tip().seq;
    drop(ledger);
    // Every published event was appended after the genesis entries: position n is seq head - len + n.
    let offset = head - all.len() as u64;
    let planted = planted
        .into_iter()
        .map(|(n, pos)| (n, pos + offset))
        .collect();
    Fleet {
        _dir: dir,
        data,
        planted,
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
        let (found, problems) = detect::run_all(&rules, &mut s, from, to).await;
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
    let seen: Vec<(&str, u64)> = found.iter().map(|d| (d.title.as_str(), d.seq)).collect();
    let mut want = f.planted.clone();
    want.sort_by_key(|(_, seq)| *seq);
    assert_eq!(seen, want, "{found:#?}");
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
    let first = f.planted.first().map(|(_, s)| *s).expect("planted");
    for windows in [
        vec![first - 1, first + 1, first + 7, first + 20],
        (1..(first + 40)).step_by(97).collect::<Vec<_>>(),
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
        rules_dir.path().join("bad_sql.yml"),
        "title: bad sql\nid: 0e7c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f9\nlevel: low\ndocket:\n  sql: SELECT seq FROM no_such_table\n",
    )
    .expect("write");
    let (rules, problems) = detect::load(Some(rules_dir.path()), false);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].origin.ends_with("broken.yml"),
        "{}",
        problems[0]
    );
    assert_eq!(problems[0].line, Some(3), "{}", problems[0]);
    assert_eq!(rules.len(), 3);
    let mut s = session(&f).await;
    let planned = detect::check_all(&rules, &mut s).await;
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert!(planned[0].origin.ends_with("bad_sql.yml"), "{}", planned[0]);
    assert!(planned[0].why.contains("no_such_table"), "{}", planned[0]);
    let head = s.coverage().head;
    let (found, failed) = detect::run_all(&rules, &mut s, 0, head).await;
    assert_eq!(failed.len(), 1, "the bad SQL fails alone: {failed:?}");
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
            .map(|(_, s)| *s)
            .expect(name)
    };
    assert_eq!(by("Deleting"), vec![planted("Agent performs")]);
    assert_eq!(by("Calls from outside"), vec![planted("Agent calls from")]);
}
