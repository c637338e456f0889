//! End to end: `serve` runs detection live, records its rule set and findings on the chain,
//! publishes them on `docket.findings`, and a replay of the log gives the same findings.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use docket_ledger::publisher::{Publisher, Sink};
use docket_query::arrow::array::AsArray;
use docket_query::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use docket_query::detect::{self, Detection};
use docket_query::{AuditSession, SessionOptions};
use docket_schemas::Timestamp;
use docket_schemas::notice::DetectionNotice;
use docket_testkit::workload::{Published, Roles, Workload};
use futures::StreamExt;

const DELETES_ID: &str = "9a9c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f6";

fn deletes_rule(level: &str) -> String {
    format!(
        "title: Any delete\nid: {DELETES_ID}\nlevel: {level}\n\
         logsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    method: DELETE\n  condition: sel\n"
    )
}

async fn publish(url: &str, items: Vec<Published>) {
    let js = jetstream(url).await;
    let mut p = Publisher::new(Sink::Nats(js));
    let mut failed = 0;
    let mut on_ack = |_: u64, r: Result<docket_ledger::publisher::Acked, String>| {
        if r.is_err() {
            failed += 1;
        }
    };
    for item in items {
        p.send(item.subject, item.envelope, item.id, &mut on_ack)
            .await
            .unwrap();
    }
    p.flush(&mut on_ack).await;
    assert_eq!(failed, 0);
}

/// Waits until serve's detector has its rule set on the record and runs.
fn wait_detecting(serve: &mut Serve) {
    wait_serving(serve);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.log_text().contains("detection running") {
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "{}",
            serve.log_text()
        );
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the detector's watermark has reached the head and stayed there.
fn wait_detected(serve: &mut Serve, data: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settled = 0;
    loop {
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "{}",
            serve.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "detection did not catch up: {}",
            serve.log_text()
        );
        let head = head(data).map_or(0, |(s, _)| s);
        let mark: u64 = std::fs::read_to_string(data.join("detect.watermark"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        settled = if head > 0 && mark == head {
            settled + 1
        } else {
            0
        };
        if settled >= 4 {
            return head;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn open(rt: &tokio::runtime::Runtime, data: &Path) -> AuditSession {
    let options = SessionOptions {
        seal: false,
        ..Default::default()
    };
    rt.block_on(AuditSession::open(data, options)).unwrap()
}

/// The detections recorded on the chain, without the seqs of their records.
fn recorded_at(rt: &tokio::runtime::Runtime, session: &AuditSession, head: u64) -> Vec<Detection> {
    rt.block_on(detect::recorded(session, head))
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

fn key(d: &Detection) -> (String, String, String, String, Vec<u64>) {
    (
        d.id(),
        d.rule_hash.clone(),
        d.observed.clone(),
        d.baseline.clone(),
        d.evidence.clone(),
    )
}

#[test]
fn serve_detects_live_records_its_rules_and_a_replay_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let nats = docket_testkit::nats_server::NatsServer::start(&dir.path().join("nats")).unwrap();
    let url = nats.url();
    let data = dir.path().join("ledger");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("deletes.yml"), deletes_rule("low")).unwrap();
    std::fs::write(
        rules.join("broken.yml"),
        "title: broken\nid: 9a9c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f7\nlevel: severe\ndocket:\n  sql: SELECT 1\n",
    )
    .unwrap();
    let mut w = Workload::new(
        7,
        Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
        5,
        12,
    );
    w.misbehaving_per_mille = 20;
    let roles = Roles::from_seed(7);
    let rt = runtime();
    let client = rt.block_on(async_nats::connect(&url)).unwrap();
    let mut notices = rt.block_on(client.subscribe("docket.findings")).unwrap();
    let r = rules.to_str().unwrap();
    let args = ["--rules", r, "--learning", "0s"];
    let mut serve = Serve::start_detecting(&data, &url, &roles, &args, &[]);
    wait_detecting(&mut serve);
    let mut items = w.setup();
    items.extend((0..3_000).map(|_| w.next_envelope()));
    rt.block_on(publish(&url, items));
    let head1 = wait_detected(&mut serve, &data);

    // A rule that does not load is named with its file and line; the others run.
    assert!(
        serve.log_text().contains("broken.yml:3"),
        "{}",
        serve.log_text()
    );
    let session = open(&rt, &data);
    let sets = rt.block_on(detect::rule_sets(&session, head1)).unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let (set1_seq, set1) = &sets[0];
    assert_eq!(set1.rules.len(), detect::BUILT_IN.len() + 1);
    assert_eq!(set1.learning_s, 0);
    assert!(set1.rules.iter().any(|v| v.id == DELETES_ID));

    // What was recorded live is what a replay of the log with the recorded rule set gives.
    let (loaded, _) = detect::load(Some(&rules), true);
    let recorded: Vec<Detection> = recorded_at(&rt, &session, head1);
    let mut session = session;
    let replay = rt.block_on(detect::run_recorded(&loaded, &sets, &mut session, 0, head1));
    assert!(replay.problems.is_empty(), "{:?}", replay.problems);
    assert!(replay.missing.is_empty());
    let live: Vec<_> = recorded.iter().map(key).collect();
    let again: Vec<_> = replay.detections.iter().map(key).collect();
    assert_eq!(live, again);
    // Every DELETE after the rule set was found by the Sigma rule, and nothing before it.
    let deletes = rt
        .block_on(session.query(&format!(
            "SELECT seq FROM api_calls WHERE method = 'DELETE' AND seq > {set1_seq} ORDER BY seq"
        )))
        .unwrap();
    let deletes: Vec<u64> = deletes
        .iter()
        .flat_map(|b| {
            let c = docket_query::arrow::compute::cast(b.column(0), &DataType::UInt64).unwrap();
            c.as_primitive::<UInt64Type>().values().to_vec()
        })
        .collect();
    assert!(!deletes.is_empty());
    let found: Vec<u64> = recorded
        .iter()
        .filter(|d| d.rule_id == DELETES_ID)
        .map(|d| d.seq)
        .collect();
    assert_eq!(found, deletes);
    assert!(
        recorded.iter().any(|d| d.rule_id != DELETES_ID),
        "no built-in rule fired"
    );

    // Each recorded finding was published on docket.findings.
    let mut heard = BTreeSet::new();
    rt.block_on(async {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), notices.next()).await {
            if let Ok(n) = serde_json::from_slice::<DetectionNotice>(&m.payload) {
                heard.insert(n.detection.finding);
            }
        }
    });
    let ids: BTreeSet<String> = recorded.iter().map(Detection::id).collect();
    assert_eq!(heard, ids);

    // The findings table shows them beside the policy violations.
    let rows = rt
        .block_on(
            session.query(
                "SELECT count(*) FROM findings WHERE source = 'detection' AND triage = 'open'",
            ),
        )
        .unwrap();
    let n = rows[0].column(0).as_primitive::<Int64Type>().value(0);
    assert_eq!(n as usize, recorded.len());
    drop(session);

    // An analyst closes one finding through the CLI; the listing and the check follow.
    let d = data.to_str().unwrap();
    let admin_key = dir.path().join("admin.key");
    docket_ledger::keyfile::write(&admin_key, &roles.admin).unwrap();
    let analyst = dir.path().join("analyst.key");
    assert!(
        docket(&["keys", "new", "--out", analyst.to_str().unwrap()])
            .status
            .success()
    );
    let o = docket(&[
        "keys",
        "registration",
        analyst.to_str().unwrap(),
        "--name",
        "analyst-1",
        "--kind",
        "finding.triaged",
        "--kind",
        "finding.suppressed",
    ]);
    let o = run_with_input(
        std::process::Command::new(DOCKET).args([
            "publish",
            "--nats",
            &url,
            "--key",
            admin_key.to_str().unwrap(),
            "--wait",
            "10",
        ]),
        &o.stdout,
    );
    assert!(o.status.success(), "{}", stdout(&o));
    let closed = recorded
        .iter()
        .find(|d| d.rule_id == DELETES_ID)
        .unwrap()
        .id();
    let o = docket(&[
        "findings",
        "triage",
        &closed,
        "--status",
        "closed",
        "--reason",
        "false_positive",
        "--by",
        "analyst-1",
        "--note",
        "a planned cleanup",
        "--key",
        analyst.to_str().unwrap(),
        "--nats",
        &url,
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("appended at seq"), "{}", stdout(&o));
    let o = docket(&[
        "findings",
        "triage",
        &closed,
        "--status",
        "closed",
        "--by",
        "analyst-1",
        "--key",
        analyst.to_str().unwrap(),
        "--nats",
        &url,
    ]);
    assert!(!o.status.success(), "a close needs a reason");
    assert!(stderr(&o).contains("reason"), "{}", stderr(&o));
    let o = docket(&["findings", "--data", d, "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = listed
        .iter()
        .find(|r| r["finding"] == closed.as_str())
        .unwrap();
    assert_eq!(row["triage"], "closed");
    assert_eq!(row["triage_reason"], "false_positive");
    assert_eq!(
        listed.iter().filter(|r| r["source"] == "detection").count(),
        recorded.len()
    );
    let o = docket(&[
        "findings",
        "--data",
        d,
        "--open",
        "--format",
        "json",
        "--agent",
        row["agent"].as_str().unwrap(),
    ]);
    assert!(
        !stdout(&o).contains(&closed),
        "a closed finding is not open"
    );
    assert!(stdout(&o).lines().count() > 0);
    let o = docket(&["findings", "--data", d, "--check", "--rules", r]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("check passed"), "{}", stderr(&o));

    // The report, rendered by a real browser, shows what SQL says.
    let page = dir.path().join("report.html");
    let o = docket(&["report", "--data", d, "--out", page.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dom = chromium(
        dir.path(),
        &["--dump-dom", &format!("file://{}", page.display())],
    );
    let count = |sql: &str| {
        let mut session = open(&rt, &data);
        let b = rt.block_on(session.query(sql)).unwrap();
        b[0].column(0).as_primitive::<Int64Type>().value(0)
    };
    let calls = count("SELECT count(*) FROM api_calls");
    let open_findings = count("SELECT count(*) FROM findings WHERE triage IN ('open', 'reopened')");
    assert!(
        dom.contains(&format!("<b id=\"calls-total\">{calls}</b>")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<b id=\"open-total\">{open_findings}</b>")),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<article class=\"finding\"").count(),
        (open_findings as usize).min(docket_query::report::OPEN_FINDINGS_MAX)
    );
    assert!(
        !dom.contains(&format!("data-finding=\"{closed}\"")),
        "a closed finding is not listed as open"
    );
    assert!(dom.matches("<polyline").count() >= 2, "a line per agent");
    assert!(
        dom.contains("Any delete (low)"),
        "the Sigma rule's findings are charted"
    );
    assert!(!dom.contains("<script"));
    let shot = dir.path().join("report.png");
    chromium(
        dir.path(),
        &[
            "--window-size=1000,2000",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", page.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );

    // A changed rule is a new rule set, in force from its own seq.
    serve.stop();
    std::fs::write(rules.join("deletes.yml"), deletes_rule("medium")).unwrap();
    let mut serve = Serve::start_detecting(&data, &url, &roles, &args, &[]);
    wait_detecting(&mut serve);
    rt.block_on(publish(
        &url,
        (0..1_500).map(|_| w.next_envelope()).collect(),
    ));
    let head2 = wait_detected(&mut serve, &data);
    let mut session = open(&rt, &data);
    let sets = rt.block_on(detect::rule_sets(&session, head2)).unwrap();
    assert_eq!(sets.len(), 2);
    let set2_seq = sets[1].0;
    let hash_of = |set: &docket_schemas::RulesSet| {
        set.rules
            .iter()
            .find(|v| v.id == DELETES_ID)
            .unwrap()
            .content_hash
            .clone()
    };
    let (old, new) = (hash_of(&sets[0].1), hash_of(&sets[1].1));
    assert_ne!(old, new);
    let recorded: Vec<Detection> = recorded_at(&rt, &session, head2);
    for d in recorded.iter().filter(|d| d.rule_id == DELETES_ID) {
        let want = if d.seq > set2_seq { &new } else { &old };
        assert_eq!(&d.rule_hash, want, "{}", d.id());
    }
    let later = rt
        .block_on(session.query(&format!(
            "SELECT count(*) FROM api_calls WHERE method = 'DELETE' AND seq > {set2_seq}"
        )))
        .unwrap();
    let later = later[0].column(0).as_primitive::<Int64Type>().value(0);
    assert!(later > 0, "set2 at {set2_seq}, head {head2}");
    assert_eq!(
        recorded
            .iter()
            .filter(|d| d.rule_id == DELETES_ID && d.seq > set2_seq)
            .count(),
        later as usize,
        "{}",
        serve.log_text()
    );
    // The CLI's check needs both versions of the edited rule, each in its own directory.
    let old_dir = dir.path().join("rules-before");
    std::fs::create_dir(&old_dir).unwrap();
    std::fs::write(old_dir.join("deletes.yml"), deletes_rule("low")).unwrap();
    let o = docket(&["findings", "--data", d, "--check", "--rules", r]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not among the rule files given"),
        "{}",
        stderr(&o)
    );
    let o = docket(&[
        "findings",
        "--data",
        d,
        "--check",
        "--rules",
        r,
        "--rules",
        old_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A replay with both versions of the rule file reproduces the whole record.
    let mut available = loaded.clone();
    available.extend(detect::load(Some(&rules), false).0);
    let replay = rt.block_on(detect::run_recorded(
        &available,
        &sets,
        &mut session,
        0,
        head2,
    ));
    assert_eq!(
        recorded.iter().map(key).collect::<Vec<_>>(),
        replay.detections.iter().map(key).collect::<Vec<_>>()
    );
    drop(session);

    // The same rules again: no new rule set.
    serve.stop();
    let mut serve = Serve::start_detecting(&data, &url, &roles, &args, &[]);
    wait_detecting(&mut serve);
    rt.block_on(publish(&url, (0..200).map(|_| w.next_envelope()).collect()));
    let head3 = wait_detected(&mut serve, &data);
    let session = open(&rt, &data);
    assert_eq!(
        rt.block_on(detect::rule_sets(&session, head3))
            .unwrap()
            .len(),
        2
    );
    serve.stop();
    assert_eq!(verify(&data).0, 0);
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs headless Chromium (Debian's `chromium`, installed by scripts/setup.sh) and returns what it printed.
fn chromium(dir: &Path, args: &[&str]) -> String {
    let profile = dir.join("chromium-profile");
    let o = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium is installed (scripts/setup.sh)");
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
