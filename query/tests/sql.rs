//! SQL over a real ledger in RocksDB: the documented examples checked against answers computed
//! from the log, segment pruning, the columnar copy's checks, refusals and limits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::physical_plan::{ExecutionPlan, collect};
use docket_ledger::admission::{BATCH_EVENTS_MAX, Incoming};
use docket_ledger::config::Config;
use docket_ledger::ingest::Ledger;
use docket_ledger::store::{LedgerIdentity, Store, decode_record};
use docket_query::segment::{self, columnar_dir};
use docket_query::tables::AsOf;
use docket_query::{AuditSession, QueryError, SessionOptions};
use docket_schemas::{Decision, Envelope, Event, EventBody, Timestamp, encode_base64};
use docket_testkit::workload::{Expect, Published, Roles, Workload};

const START: &str = "2026-01-01T00:00:00.000000Z";
/// Small segments, so a 20k-entry ledger has enough of them to prune.
const SEGMENT: u64 = 1_000;

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// Every entry's seq and decoded event, read back from the store.
    log: Vec<(u64, Event)>,
}

/// A ledger of `events` workload events (with misbehaviour) committed through the real path.
async fn ledger(events: usize) -> Fixture {
    ledger_with(events, |_, _| Vec::new()).await
}

/// The tokens [`ended_other_ways`] ends without revoking them.
struct Endings {
    /// Its grant is revoked, then it is used.
    grant_revoked: String,
    /// Its agent is suspended, then it is used.
    agent_suspended: String,
}

/// Events after the workload's: a live token used after its grant's revocation, and another
/// used after its agent's suspension. Neither token is revoked itself, so only a query that
/// follows grants and agents finds these calls.
fn ended_other_ways(
    w: &Workload,
    so_far: &[Published],
    endings: &mut Option<Endings>,
) -> Vec<Published> {
    let events: Vec<Event> = so_far
        .iter()
        .filter_map(|p| Envelope::decode(&p.envelope).ok()?.event().ok())
        .collect();
    let (mut revoked, mut grants_revoked, mut suspended) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for e in &events {
        match &e.body {
            EventBody::TokenRevoked(t) => {
                revoked.insert(t.token_id.clone());
            }
            EventBody::GrantRevoked(g) => {
                grants_revoked.insert(g.grant_id.clone());
            }
            EventBody::AgentSuspended(a) => {
                suspended.insert(a.agent.clone());
            }
            _ => {}
        }
    }
    let live: Vec<&docket_schemas::TokenIssued> = events
        .iter()
        .rev()
        .filter_map(|e| match &e.body {
            EventBody::TokenIssued(t)
                if !revoked.contains(&t.token_id)
                    && !grants_revoked.contains(&t.grant_id)
                    && !suspended.contains(&t.agent) =>
            {
                Some(t)
            }
            _ => None,
        })
        .collect();
    let first = live.first().copied().expect("a live token");
    let second = live
        .iter()
        .copied()
        .find(|t| t.agent != first.agent && t.grant_id != first.grant_id)
        .expect("a live token of another agent and grant");
    let mut ts = events.iter().map(|e| e.ts).max().expect("events");
    let mut serial = 0u8;
    let mut sign = |body: EventBody, key: &ed25519_dalek::SigningKey| {
        ts = ts.plus_seconds(1);
        serial += 1;
        let mut id = [0xee; 16];
        id[6] = 0x70;
        id[8] = 0x80;
        id[15] = serial;
        let event = Event {
            v: docket_schemas::SCHEMA_VERSION,
            id: docket_schemas::EventId(id),
            ts,
            body,
        };
        Published {
            subject: format!("docket.events.{}", event.kind()),
            envelope: docket_schemas::seal_event(&event, key),
            id: Some(event.id),
            expect: Expect::Append,
        }
    };
    let call = |t: &docket_schemas::TokenIssued| {
        EventBody::ApiCalled(docket_schemas::ApiCalled {
            token_id: t.token_id.clone(),
            token_hash: Some(t.token_hash.clone()),
            agent: t.agent.clone(),
            audience: t.audience.clone(),
            method: "GET".into(),
            operation: "/late".into(),
            scope: t.scopes.first().cloned(),
            status: 200,
            source: "10.9.9.9".into(),
            ..Default::default()
        })
    };
    let (vault, gateway) = (w.roles.vault.clone(), w.roles.gateway.clone());
    *endings = Some(Endings {
        grant_revoked: first.token_id.clone(),
        agent_suspended: second.token_id.clone(),
    });
    vec![
        sign(call(first), &gateway),
        sign(
            EventBody::GrantRevoked(docket_schemas::GrantRevoked {
                grant_id: first.grant_id.clone(),
                by: "user-0".into(),
                reason: "test: the grant ends".into(),
            }),
            &vault,
        ),
        sign(call(first), &gateway),
        sign(
            EventBody::AgentSuspended(docket_schemas::AgentSuspended {
                agent: second.agent.clone(),
                by: "security".into(),
                reason: "test: the agent is suspended".into(),
            }),
            &vault,
        ),
        sign(call(second), &gateway),
    ]
}

/// As [`ledger`], with the events `more` makes from the workload's appended after them.
async fn ledger_with(
    events: usize,
    more: impl FnOnce(&Workload, &[Published]) -> Vec<Published>,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("ledger");
    let roles = Roles::from_seed(1);
    let key = ledger_key();
    let identity = LedgerIdentity {
        origin: "sql.test".into(),
        admin_public_key: encode_base64(roles.admin.verifying_key().as_bytes()),
        ledger_public_key: encode_base64(key.verifying_key().as_bytes()),
    };
    let store = Store::open(&data.join("db"), &identity).expect("open store");
    let mut ledger =
        Ledger::new(store, key, Config::default().checkpoint_policy()).expect("ledger");
    let mut w = Workload::new(1, Timestamp::parse(START).expect("start"), 5, 12);
    w.misbehaving_per_mille = 20;
    let mut all = w.setup();
    while all.len() < events {
        all.push(w.next_envelope());
    }
    let extra = more(&w, &all);
    all.extend(extra);
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
    drop(ledger);
    let log = read_log(&data);
    assert_eq!(log.len(), all.len(), "every event was chained");
    Fixture {
        _dir: dir,
        data,
        log,
    }
}

fn read_log(data: &Path) -> Vec<(u64, Event)> {
    let store = Store::open_reader(&data.join("db")).expect("reader");
    store
        .records(1)
        .expect("records")
        .map(|r| {
            let (seq, record) = r.expect("record");
            let entry = decode_record(seq, &record).expect("entry");
            let event = Envelope::decode(entry.envelope)
                .expect("envelope")
                .event()
                .expect("event");
            (seq, event)
        })
        .collect()
}

/// The fixture ledger's checkpoint key, which also seals its segments.
fn ledger_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9; 32])
}

fn options() -> SessionOptions {
    SessionOptions {
        segment_entries: SEGMENT,
        sealer: Some(ledger_key()),
        ..SessionOptions::default()
    }
}

/// The named columns of a result, as text, row by row.
fn table(batches: &[RecordBatch], columns: &[&str]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        let idx: Vec<usize> = columns
            .iter()
            .map(|c| b.schema().index_of(c).expect("column in result"))
            .collect();
        for row in 0..b.num_rows() {
            out.push(
                idx.iter()
                    .map(|&i| array_value_to_string(b.column(i), row).expect("display"))
                    .collect(),
            );
        }
    }
    out
}

/// The SQL of each `<!-- example: NAME -->` block in docs/QUERIES.md.
fn documented_examples() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/QUERIES.md");
    let text = std::fs::read_to_string(&path).expect("docs/QUERIES.md");
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            assert_eq!(
                lines.next(),
                Some("```sql"),
                "example {name} opens a sql block"
            );
            let sql: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            out.insert(name.to_string(), sql.join("\n"));
        }
    }
    out
}

/// Parses a whole-second UTC time as written in the documented queries.
fn ts(s: &str) -> Timestamp {
    Timestamp::parse(&s.replace('Z', ".000000Z")).expect("time")
}

/// The agent an event names, read straight from the event (independent of the query crate's mapping).
fn agent_of(e: &Event) -> Option<&str> {
    match &e.body {
        EventBody::AgentRegistered(x) => Some(&x.agent),
        EventBody::GrantCreated(x) => Some(&x.agent),
        EventBody::ApprovalRequested(x) => Some(&x.agent),
        EventBody::TokenIssued(x) => Some(&x.agent),
        EventBody::ApiCalled(x) => Some(&x.agent),
        EventBody::AgentSuspended(x) => Some(&x.agent),
        _ => None,
    }
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

/// Each documented question, answered by walking the log in Rust; `(columns compared, rows)`.
fn expected(
    name: &str,
    log: &[(u64, Event)],
    token: &str,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let calls: Vec<(u64, &docket_schemas::ApiCalled)> = log
        .iter()
        .filter_map(|(seq, e)| match &e.body {
            EventBody::ApiCalled(c) => Some((*seq, c)),
            _ => None,
        })
        .collect();
    let issued: Vec<(u64, &docket_schemas::TokenIssued)> = log
        .iter()
        .filter_map(|(seq, e)| match &e.body {
            EventBody::TokenIssued(t) => Some((*seq, t)),
            _ => None,
        })
        .collect();
    let grants: Vec<(u64, &docket_schemas::GrantCreated)> = log
        .iter()
        .filter_map(|(seq, e)| match &e.body {
            EventBody::GrantCreated(g) => Some((*seq, g)),
            _ => None,
        })
        .collect();
    let requested: Vec<(&Event, &docket_schemas::ApprovalRequested)> = log
        .iter()
        .filter_map(|(_, e)| match &e.body {
            EventBody::ApprovalRequested(a) => Some((e, a)),
            _ => None,
        })
        .collect();
    let decided: Vec<(&Event, &docket_schemas::ApprovalDecided)> = log
        .iter()
        .filter_map(|(_, e)| match &e.body {
            EventBody::ApprovalDecided(d) => Some((e, d)),
            _ => None,
        })
        .collect();
    match name {
        "agent_activity" => {
            let (from, to) = (ts("2026-01-01T00:00:05Z"), ts("2026-01-01T00:00:06Z"));
            let rows = log
                .iter()
                .filter(|(_, e)| agent_of(e) == Some("agent-3") && e.ts >= from && e.ts < to)
                .map(|(seq, e)| vec![s(seq), s(e.kind())])
                .collect();
            (vec!["seq", "kind"], rows)
        }
        "audience_access" => {
            let mut per: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, c) in &calls {
                if c.audience == "https://api.github.com" {
                    *per.entry(&c.agent).or_default() += 1;
                }
            }
            let mut rows: Vec<(&str, u64)> = per.into_iter().collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            (
                vec!["agent", "calls"],
                rows.iter().map(|(a, n)| vec![s(a), s(n)]).collect(),
            )
        }
        "token_blast_radius" => {
            let issue = issued
                .iter()
                .find(|(_, t)| t.token_id == token)
                .map(|(_, t)| *t)
                .expect("the documented token was issued");
            let hash = Some(issue.token_hash.clone());
            let rows = log
                .iter()
                .filter(|(_, e)| match &e.body {
                    EventBody::TokenIssued(t) => {
                        t.token_id == token || Some(&t.token_hash) == hash.as_ref()
                    }
                    EventBody::TokenRevoked(t) => t.token_id == token,
                    EventBody::ApiCalled(c) => {
                        c.token_id == token || c.token_hash.is_some() && c.token_hash == hash
                    }
                    // What ended it without naming it: its grant's revocation, its agent's suspension.
                    EventBody::GrantRevoked(g) => g.grant_id == issue.grant_id,
                    EventBody::AgentSuspended(a) => a.agent == issue.agent,
                    _ => false,
                })
                .map(|(seq, e)| vec![s(seq), s(e.kind())])
                .collect();
            (vec!["seq", "kind"], rows)
        }
        "calls_after_revocation" => {
            // Every entry that ends a token: its own revocation, its grant's, its agent's suspension.
            let mut ends: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
            for (seq, e) in log {
                let ended: Vec<&str> = match &e.body {
                    EventBody::TokenRevoked(t) => vec![t.token_id.as_str()],
                    EventBody::GrantRevoked(g) => issued
                        .iter()
                        .filter(|(_, t)| t.grant_id == g.grant_id)
                        .map(|(_, t)| t.token_id.as_str())
                        .collect(),
                    EventBody::AgentSuspended(a) => issued
                        .iter()
                        .filter(|(_, t)| t.agent == a.agent)
                        .map(|(_, t)| t.token_id.as_str())
                        .collect(),
                    _ => continue,
                };
                for token in ended {
                    ends.entry(token).or_default().push((*seq, s(e.kind())));
                }
            }
            let rows = calls
                .iter()
                .filter_map(|(seq, c)| {
                    let first = ends
                        .get(c.token_id.as_str())?
                        .iter()
                        .filter(|(end, _)| end < seq)
                        .min()?;
                    Some(vec![s(seq), s(&c.token_id), s(first.0), first.1.clone()])
                })
                .collect();
            (vec!["seq", "token_id", "ended_at_seq", "ended_by"], rows)
        }
        "grants_never_used" => {
            let called: BTreeSet<&str> = calls.iter().map(|(_, c)| c.token_id.as_str()).collect();
            let used: BTreeSet<&str> = issued
                .iter()
                .filter(|(_, t)| called.contains(t.token_id.as_str()))
                .map(|(_, t)| t.grant_id.as_str())
                .collect();
            let rows = grants
                .iter()
                .filter(|(_, g)| !used.contains(g.grant_id.as_str()))
                .map(|(seq, g)| vec![s(seq), s(&g.grant_id)])
                .collect();
            (vec!["seq", "grant_id"], rows)
        }
        "unused_scopes" => {
            let mut grant_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (_, t) in &issued {
                grant_of.entry(&t.token_id).or_default().push(&t.grant_id);
            }
            let mut used: BTreeSet<(&str, &str)> = BTreeSet::new();
            for (_, c) in &calls {
                for g in grant_of.get(c.token_id.as_str()).into_iter().flatten() {
                    if let Some(scope) = &c.scope {
                        used.insert((g, scope));
                    }
                }
            }
            let mut rows: Vec<Vec<String>> = grants
                .iter()
                .flat_map(|(_, g)| {
                    g.scopes
                        .iter()
                        .map(move |sc| (g.grant_id.as_str(), sc.as_str()))
                })
                .filter(|k| !used.contains(k))
                .map(|(g, sc)| vec![s(g), s(sc)])
                .collect();
            rows.sort();
            (vec!["grant_id", "unused_scope"], rows)
        }
        "approval_latency" => {
            let mut per: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for (qe, q) in &requested {
                for (de, d) in &decided {
                    if d.approval_id == q.approval_id {
                        let secs = (de.ts.as_micros() - qe.ts.as_micros()) as f64 / 1e6;
                        per.entry(&q.user).or_default().push(secs);
                    }
                }
            }
            let rows = per
                .iter()
                .map(|(u, l)| {
                    let mean = l.iter().sum::<f64>() / l.len() as f64;
                    let max = l.iter().copied().fold(f64::MIN, f64::max);
                    vec![s(u), s(l.len()), format!("{mean:.6}"), format!("{max:.6}")]
                })
                .collect();
            (vec!["user", "decisions", "mean_s", "max_s"], rows)
        }
        "top_agents" => {
            let mut per: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            for (_, c) in &calls {
                let e = per.entry(&c.agent).or_default();
                e.0 += 1;
                if c.status == 401 || c.status == 403 {
                    e.1 += 1;
                }
            }
            for (_, q) in &requested {
                for (_, d) in &decided {
                    if d.approval_id == q.approval_id
                        && d.decision == Decision::Denied
                        && let Some(e) = per.get_mut(q.agent.as_str())
                    {
                        e.2 += 1;
                    }
                }
            }
            let mut rows: Vec<(&str, (u64, u64, u64))> = per.into_iter().collect();
            rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
            rows.truncate(10);
            (
                vec!["agent", "calls", "denied_calls", "denied_approvals"],
                rows.iter()
                    .map(|(a, (c, d, p))| vec![s(a), s(c), s(d), s(p)])
                    .collect(),
            )
        }
        other => panic!("docs/QUERIES.md has an example {other:?} this test does not check"),
    }
}

/// Floats are compared to six places; everything else as text.
fn same(a: &[Vec<String>], b: &[Vec<String>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| match (p.parse::<f64>(), q.parse::<f64>()) {
                        (Ok(p), Ok(q)) if p.fract() != 0.0 || q.fract() != 0.0 => {
                            (p - q).abs() < 1e-6
                        }
                        _ => p == q,
                    })
        })
}

/// The token the documented blast-radius example names.
fn documented_token(sql: &str) -> String {
    sql.split("token_id = '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the example names a token")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_examples_match_answers_computed_from_the_log() {
    let mut endings = None;
    let f = ledger_with(20_500, |w, so_far| {
        ended_other_ways(w, so_far, &mut endings)
    })
    .await;
    let endings = endings.expect("the fixture ended two tokens");
    let mut session = AuditSession::open(&f.data, options()).await.expect("open");
    assert!(
        session.coverage().segments >= 19,
        "the ledger is mostly sealed"
    );
    assert!(session.coverage().tail_rows > 0, "and has an unsealed tail");
    let examples = documented_examples();
    assert_eq!(examples.len(), 8, "eight documented questions");
    for (name, sql) in &examples {
        let token = if name == "token_blast_radius" {
            documented_token(sql)
        } else {
            String::new()
        };
        let batches = session
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("example {name} failed: {e}"));
        if name == "token_blast_radius" {
            assert_eq!(
                token, endings.grant_revoked,
                "the documented token is the one whose grant the fixture revoked"
            );
        }
        let (columns, want) = expected(name, &f.log, &token);
        let got = table(&batches, &columns);
        if name == "calls_after_revocation" {
            // The calls a query joining only token revocations misses are there, each once.
            for (tok, by) in [
                (&endings.grant_revoked, "grant.revoked"),
                (&endings.agent_suspended, "agent.suspended"),
            ] {
                let late: Vec<_> = got.iter().filter(|r| &r[1] == tok).collect();
                assert_eq!(late.len(), 1, "{tok}: {late:?}");
                assert_eq!(late[0][3], by, "{tok}: {late:?}");
            }
        }
        assert!(
            !want.is_empty(),
            "example {name} has an answer on the test ledger"
        );
        assert!(
            same(&got, &want),
            "example {name}: SQL gave {} rows, the log {}; first SQL rows {:?}, first log rows {:?}",
            got.len(),
            want.len(),
            &got[..got.len().min(3)],
            &want[..want.len().min(3)]
        );
    }
}

/// Sums a pruning metric's (pruned, matched) over the plan tree.
fn pruning(plan: &Arc<dyn ExecutionPlan>, name: &str) -> (usize, usize) {
    let mut total = (0, 0);
    if let Some(m) = plan.metrics() {
        for metric in m.iter() {
            if let datafusion::physical_plan::metrics::MetricValue::PruningMetrics {
                name: n,
                pruning_metrics,
            } = metric.value()
                && n == name
            {
                total.0 += pruning_metrics.pruned();
                total.1 += pruning_metrics.matched();
            }
        }
    }
    for child in plan.children() {
        let (p, m) = pruning(child, name);
        total.0 += p;
        total.1 += m;
    }
    total
}

async fn run_plan(
    session: &mut AuditSession,
    sql: &str,
) -> (Vec<RecordBatch>, Arc<dyn ExecutionPlan>) {
    let df = session.plan(sql).await.expect("plan");
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.expect("physical plan");
    let batches = collect(plan.clone(), task).await.expect("run");
    (batches, plan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_seq_and_time_ranges_read_only_the_segments_that_overlap() {
    let f = ledger(20_000).await;
    // One partition: DataFusion then opens each file as one range, so ranges count segments.
    let one = SessionOptions {
        partitions: 1,
        ..options()
    };
    let mut session = AuditSession::open(&f.data, one).await.expect("open");
    let segments = session.coverage().segments;
    assert!(segments >= 19);

    let (batches, plan) = run_plan(
        &mut session,
        "SELECT count(*) AS n FROM events WHERE seq BETWEEN 5500 AND 5600",
    )
    .await;
    assert_eq!(table(&batches, &["n"]), vec![vec!["101".to_string()]]);
    let (pruned, matched) = pruning(&plan, "files_ranges_pruned_statistics");
    assert_eq!(
        (pruned, matched),
        (segments - 1, 1),
        "a 101-entry seq range inside one segment opens only that segment"
    );

    // A time range: the segments whose ts statistics overlap it, and no others.
    let (from, to) = ("2026-01-01T00:00:03Z", "2026-01-01T00:00:04Z");
    let sql = format!("SELECT count(*) AS n FROM events WHERE ts >= '{from}' AND ts < '{to}'");
    let (batches, plan) = run_plan(&mut session, &sql).await;
    let want = f
        .log
        .iter()
        .filter(|(_, e)| e.ts >= ts(from) && e.ts < ts(to))
        .count();
    assert_eq!(table(&batches, &["n"]), vec![vec![want.to_string()]]);
    let overlapping = segment::list(&columnar_dir(&f.data))
        .expect("segments")
        .iter()
        .filter(|s| {
            let in_seg = |(seq, _): &&(u64, Event)| *seq >= s.first_seq && *seq <= s.last_seq;
            let times: Vec<Timestamp> = f.log.iter().filter(in_seg).map(|(_, e)| e.ts).collect();
            let (lo, hi) = (times.iter().min().copied(), times.iter().max().copied());
            lo.is_some_and(|lo| lo < ts(to)) && hi.is_some_and(|hi| hi >= ts(from))
        })
        .count();
    let (pruned, matched) = pruning(&plan, "files_ranges_pruned_statistics");
    assert!(
        overlapping < segments / 2,
        "the hour is a narrow slice of the ledger"
    );
    assert_eq!((pruned, matched), (segments - overlapping, overlapping));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_columnar_copy_stays_equal_to_the_chain_and_a_disagreeing_segment_is_caught() {
    let f = ledger(5_000).await;
    let dir = columnar_dir(&f.data);
    let all = vec![vec![s(5000), s(5000), s(1), s(5000)]];
    {
        let mut session = AuditSession::open(&f.data, options()).await.expect("open");
        assert_eq!(session.coverage().segments, 5);
        assert_eq!(
            count(&mut session).await,
            all,
            "sealed + tail hold each entry once"
        );
    }
    let store = Store::open_reader(&f.data.join("db")).expect("reader");
    assert_eq!(segment::check(&store, &dir).expect("check"), vec![]);

    // Restart: a new session reads the same segments, seals nothing new, answers the same.
    let before: Vec<_> = segment::list(&dir).expect("list");
    let mut session = AuditSession::open(&f.data, options())
        .await
        .expect("reopen");
    assert_eq!(count(&mut session).await, all);
    assert_eq!(segment::list(&dir).expect("list"), before);
    drop(session);

    // An edited row in a segment whose stamp is intact: caught by `check`, naming the column.
    let victim = before[2].clone();
    let mut batch = segment::read_segment(&victim.path).expect("read");
    let agent = batch.schema().index_of("agent").expect("agent column");
    let mut columns = batch.columns().to_vec();
    let edited: datafusion::arrow::array::StringArray = (0..batch.num_rows())
        .map(|i| {
            let v = array_value_to_string(&columns[agent], i)
                .ok()
                .filter(|v| !v.is_empty());
            if i == 7 {
                Some("agent-innocent".to_string())
            } else {
                v
            }
        })
        .collect();
    columns[agent] = Arc::new(edited);
    batch = RecordBatch::try_new(batch.schema(), columns).expect("batch");
    rewrite_keeping_stamp(&victim.path, &batch);
    let problems = segment::check(&store, &dir).expect("check");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].first_seq, victim.first_seq);
    assert!(problems[0].why.contains("`agent`"), "{}", problems[0].why);
    // ... and by every session, from its seal, before any row is served.
    let err = AuditSession::open(
        &f.data,
        SessionOptions {
            seal: false,
            ..options()
        },
    )
    .await
    .err()
    .expect("an edited segment is refused");
    assert!(
        err.to_string()
            .contains("changed after the ledger sealed it"),
        "{err}"
    );

    // A segment from another chain (its stamp's hash disagrees): every session refuses to answer.
    segment::rebuild(&store, &dir, SEGMENT, &ledger_key(), &|_| {}).expect("rebuild");
    assert_eq!(segment::check(&store, &dir).expect("check"), vec![]);
    let other = ledger(3_000).await;
    let other_store = Store::open_reader(&other.data.join("db")).expect("reader");
    let foreign_dir = columnar_dir(&other.data);
    segment::seal(&other_store, &foreign_dir, SEGMENT, &ledger_key(), &|_| {}).expect("seal other");
    let foreign = segment::list(&foreign_dir).expect("list")[1].clone();
    std::fs::copy(
        &foreign.path,
        dir.join(foreign.path.file_name().expect("name")),
    )
    .expect("copy");
    let err = AuditSession::open(
        &f.data,
        SessionOptions {
            seal: false,
            ..options()
        },
    )
    .await
    .err()
    .expect("a foreign segment is refused");
    assert!(matches!(err, QueryError::SegmentMismatch { .. }), "{err}");
    assert!(err.to_string().contains("docket columnar rebuild"), "{err}");

    // The same rows re-encoded with other statistics: only the byte comparison can tell.
    segment::rebuild(&store, &dir, SEGMENT, &ledger_key(), &|_| {}).expect("rebuild");
    let victim = segment::list(&dir).expect("list")[3].clone();
    let rows = segment::read_segment(&victim.path).expect("read");
    rewrite_keeping_stamp(&victim.path, &rows);
    let problems = segment::check(&store, &dir).expect("check");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].why.contains("bytes differ"),
        "{}",
        problems[0].why
    );

    // A missing segment (a gap): `check` reports it, a session still answers every entry once
    // (the rest is decoded as tail), and sealing fills the gap.
    segment::rebuild(&store, &dir, SEGMENT, &ledger_key(), &|_| {}).expect("rebuild");
    let removed = segment::list(&dir).expect("list")[1].clone();
    std::fs::remove_file(&removed.path).expect("remove");
    let problems = segment::check(&store, &dir).expect("check");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].why.contains("no segment starts at seq 1001"),
        "{}",
        problems[0].why
    );
    let mut session = AuditSession::open(
        &f.data,
        SessionOptions {
            seal: false,
            ..options()
        },
    )
    .await
    .expect("open with a gap");
    assert_eq!(session.coverage().segments, 1);
    assert_eq!(count(&mut session).await, all);
    drop(session);
    let mut session = AuditSession::open(&f.data, options()).await.expect("open");
    assert_eq!(session.coverage().segments, 5);
    assert!(removed.path.exists(), "sealing filled the gap");
    assert_eq!(count(&mut session).await, all);
    assert_eq!(segment::check(&store, &dir).expect("check"), vec![]);
}

async fn count(session: &mut AuditSession) -> Vec<Vec<String>> {
    let sql = "SELECT count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM events";
    table(
        &session.query(sql).await.expect("count"),
        &["n", "d", "lo", "hi"],
    )
}

/// Writes `batch` over a segment with the original footer metadata, as a careful forger would.
/// Rows in a segment edited in place (same length, stamp untouched), a seal forged with
/// another key, and a seal removed: SQL answers only what the chain holds, or refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_only_from_segments_the_ledger_key_sealed() {
    let f = ledger(5_000).await;
    let dir = columnar_dir(&f.data);
    let by_agent = "SELECT agent, count(*) AS n FROM events GROUP BY agent ORDER BY agent";
    let truth = {
        let mut session = AuditSession::open(&f.data, options()).await.expect("open");
        assert_eq!(session.coverage().segments, 5);
        table(
            &session.query(by_agent).await.expect("query"),
            &["agent", "n"],
        )
    };
    let victim = segment::list(&dir).expect("list")[2].clone();
    let original = std::fs::read(&victim.path).expect("read");

    // Each agent name in the file (data pages and statistics alike) becomes another agent's:
    // the same length, so the stamp and the size still match.
    let mut edited = original.clone();
    let mut changed = 0;
    for i in 0..edited.len().saturating_sub(7) {
        if &edited[i..i + 6] == b"agent-" && edited[i + 6].is_ascii_digit() {
            edited[i + 6] = if edited[i + 6] == b'1' { b'2' } else { b'1' };
            changed += 1;
        }
    }
    assert!(changed > 0, "the segment holds agent names in plain bytes");
    std::fs::write(&victim.path, &edited).expect("edit");
    let without_sealing = || SessionOptions {
        seal: false,
        ..options()
    };
    let mut session = AuditSession::open(&f.data, without_sealing())
        .await
        .expect("the stamp and the seal's signature still hold at open");
    let err = session
        .query(by_agent)
        .await
        .expect_err("the edited bytes are refused when read");
    assert!(
        err.to_string()
            .contains("were changed after the ledger sealed it"),
        "{err}"
    );
    drop(session);

    // The attacker seals the edited file with a key of their own: refused at open.
    let stolen = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let forged = docket_query::seal::SegmentSeal::make(
        &edited,
        victim.first_seq,
        victim.last_seq,
        &victim.last_entry_hash,
        &stolen,
    );
    let seal_file = docket_query::seal::seal_path(&victim.path);
    std::fs::write(&seal_file, serde_json::to_vec(&forged).expect("json")).expect("forge");
    let err = AuditSession::open(&f.data, without_sealing())
        .await
        .err()
        .expect("a seal by another key is refused");
    assert!(matches!(err, QueryError::SegmentMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("not signed by the ledger key"),
        "{err}"
    );
    // Nor can a reader holding another key seal over it.
    let err = AuditSession::open(
        &f.data,
        SessionOptions {
            sealer: Some(stolen),
            ..options()
        },
    )
    .await
    .err()
    .expect("a sealing key that is not the ledger's is refused");
    assert!(matches!(err, QueryError::LedgerKey(_)), "{err}");

    // The seal removed: the segment and those after it are decoded from the chain, so the
    // answer is the chain's, and sealing with the ledger key writes the segment again.
    std::fs::remove_file(&seal_file).expect("remove seal");
    let mut session = AuditSession::open(&f.data, without_sealing())
        .await
        .expect("open without the seal");
    assert_eq!(session.coverage().segments, 2);
    assert_eq!(session.coverage().unsealed_from, Some(victim.first_seq));
    assert_eq!(
        table(
            &session.query(by_agent).await.expect("query"),
            &["agent", "n"]
        ),
        truth
    );
    drop(session);
    let session = AuditSession::open(&f.data, options())
        .await
        .expect("reseal");
    assert_eq!(session.coverage().segments, 5);
    assert_eq!(std::fs::read(&victim.path).expect("read"), original);
    let store = Store::open_reader(&f.data.join("db")).expect("reader");
    assert_eq!(segment::check(&store, &dir).expect("check"), vec![]);

    // An unsealed file stamped over the first two segments, whatever order the directory
    // lists it in, does not push the sealed segments out of the run.
    let segments = segment::list(&dir).expect("list");
    let (one, two) = (segments[0].clone(), segments[1].clone());
    let both = datafusion::arrow::compute::concat_batches(
        &segment::read_segment(&one.path).expect("read").schema(),
        &[
            segment::read_segment(&one.path).expect("read"),
            segment::read_segment(&two.path).expect("read"),
        ],
    )
    .expect("concat");
    let wide = dir.join(format!("events-{:020}-{:020}.parquet", 1, two.last_seq));
    std::fs::copy(&two.path, &wide).expect("copy");
    rewrite_keeping_stamp(&wide, &both);
    let listed = segment::list(&dir).expect("list");
    assert_eq!(listed[0].path, one.path, "the sealed segment comes first");
    let session = AuditSession::open(&f.data, without_sealing())
        .await
        .expect("open beside the wide file");
    assert_eq!(session.coverage().segments, 5);
    drop(session);
    std::fs::remove_file(&wide).expect("remove");

    // A seal that is a FIFO (opening it would block) or a device is refused, not read.
    let third = docket_query::seal::seal_path(&segments[3].path);
    std::fs::remove_file(&third).expect("remove seal");
    let made = std::process::Command::new("mkfifo")
        .arg(&third)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let err = AuditSession::open(&f.data, without_sealing())
        .await
        .err()
        .expect("a FIFO seal is refused");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

fn rewrite_keeping_stamp(path: &Path, batch: &RecordBatch) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let kv = SerializedFileReader::new(std::fs::File::open(path).expect("open"))
        .expect("reader")
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(kv)
        .build();
    let file = std::fs::File::create(path).expect("create");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_and_bad_queries_get_clear_errors() {
    let f = ledger(2_000).await;
    let mut session = AuditSession::open(&f.data, options()).await.expect("open");
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "CREATE VIEW v AS SELECT * FROM events",
        "INSERT INTO events SELECT * FROM events",
        "DELETE FROM events WHERE seq = 1",
        "UPDATE events SET agent = 'x'",
        "DROP VIEW api_calls",
        "COPY (SELECT * FROM events) TO '/tmp/docket-stolen.csv'",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "SET datafusion.execution.target_partitions = 1",
        "EXPLAIN INSERT INTO events SELECT * FROM events",
    ] {
        let err = session
            .query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(matches!(err, QueryError::ReadOnly(_)), "{sql}: {err}");
        assert!(
            err.to_string().starts_with("docket sql is read-only: "),
            "{err}"
        );
    }
    assert!(!Path::new("/tmp/docket-stolen.csv").exists());
    // The session still answers after every refusal.
    let n = table(
        &session
            .query("SELECT count(*) AS n FROM events")
            .await
            .expect("count"),
        &["n"],
    );
    assert_eq!(n, vec![vec!["2000".to_string()]]);

    let err = session
        .query("SELEC * FROM events")
        .await
        .expect_err("syntax error");
    assert!(err.to_string().contains("SELEC"), "{err}");
    let err = session
        .query("SELECT * FROM no_such_table")
        .await
        .expect_err("unknown table");
    assert!(err.to_string().contains("no_such_table"), "{err}");
    let err = session
        .query("SELECT nope FROM events")
        .await
        .expect_err("unknown column");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = session
        .query("SELECT 1; SELECT 2")
        .await
        .expect_err("two statements");
    assert!(err.to_string().contains("single SQL statement"), "{err}");

    // Limits: a tiny memory budget and a tiny time budget stop a query with their own message.
    let mut tight = AuditSession::open(
        &f.data,
        SessionOptions {
            memory_limit_bytes: 64 * 1024,
            ..options()
        },
    )
    .await
    .expect("open");
    let err = tight
        .query("SELECT payload FROM events ORDER BY payload DESC")
        .await
        .expect_err("over the memory limit");
    assert!(err.to_string().contains("Resources exhausted"), "{err}");
    let mut hurried = AuditSession::open(
        &f.data,
        SessionOptions {
            timeout: std::time::Duration::from_millis(1),
            ..options()
        },
    )
    .await
    .expect("open");
    let err = hurried
        .query("SELECT count(*) FROM events a JOIN events b ON a.kind = b.kind")
        .await
        .expect_err("past the time limit");
    assert!(matches!(err, QueryError::Timeout(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tables_show_now_and_any_earlier_point() {
    let f = ledger(6_000).await;
    let store = Store::open_reader(&f.data.join("db")).expect("reader");
    let now = store.load_state().expect("state");
    let mut session = AuditSession::open(&f.data, options()).await.expect("open");
    let counts = "SELECT (SELECT count(*) FROM grants_state) AS g, (SELECT count(*) FROM tokens_state) AS t, \
                  (SELECT count(*) FROM approvals_state) AS a, (SELECT count(*) FROM agents) AS n";
    let got = table(
        &session.query(counts).await.expect("counts"),
        &["g", "t", "a", "n"],
    );
    assert_eq!(
        got,
        vec![vec![
            s(now.grants.len()),
            s(now.tokens.len()),
            s(now.approvals.len()),
            s(now.agents.len())
        ]]
    );
    // Uses per token agree with counting the calls in the log.
    let sql = "SELECT token_id, uses FROM tokens_state WHERE uses > 0 ORDER BY token_id";
    let got = table(
        &session.query(sql).await.expect("uses"),
        &["token_id", "uses"],
    );
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for (_, e) in &f.log {
        if let EventBody::ApiCalled(c) = &e.body
            && now.tokens.contains_key(&c.token_id)
        {
            *per.entry(c.token_id.clone()).or_default() += 1;
        }
    }
    let want: Vec<Vec<String>> = per.iter().map(|(t, n)| vec![t.clone(), s(n)]).collect();
    assert_eq!(got, want);

    // As of seq 3000: only what existed then.
    let mut past = AuditSession::open(
        &f.data,
        SessionOptions {
            as_of: AsOf::Seq(3000),
            ..options()
        },
    )
    .await
    .expect("open");
    let grants_then = f.log[..3000]
        .iter()
        .filter_map(|(_, e)| match &e.body {
            EventBody::GrantCreated(g) => Some(g.grant_id.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>();
    let got = table(
        &past
            .query("SELECT grant_id FROM grants_state ORDER BY grant_id")
            .await
            .expect("past"),
        &["grant_id"],
    );
    let want: Vec<Vec<String>> = grants_then.iter().map(|g| vec![g.clone()]).collect();
    assert_eq!(got, want);
    assert!(want.len() < now.grants.len());

    // As of a time: the entries before the first whose event time is after it.
    let cut = f.log[4000].1.ts;
    let mut then = AuditSession::open(
        &f.data,
        SessionOptions {
            as_of: AsOf::Time(cut),
            ..options()
        },
    )
    .await
    .expect("open");
    let first_after = f
        .log
        .iter()
        .position(|(_, e)| e.ts > cut)
        .unwrap_or(f.log.len());
    let tokens_then = f.log[..first_after]
        .iter()
        .filter(|(_, e)| matches!(e.body, EventBody::TokenIssued(_)))
        .count();
    let got = table(
        &then
            .query("SELECT count(*) AS n FROM tokens_state")
            .await
            .expect("then"),
        &["n"],
    );
    assert_eq!(got, vec![vec![s(tokens_then)]]);

    // The ledger's own records.
    let findings = store.findings().expect("findings");
    let got = table(
        &session
            .query("SELECT count(*) AS n FROM findings")
            .await
            .expect("findings"),
        &["n"],
    );
    assert_eq!(got, vec![vec![s(findings.len())]]);
    assert!(
        !findings.is_empty(),
        "the misbehaving workload produced findings"
    );
    let got = table(
        &session
            .query("SELECT tree_size FROM checkpoints ORDER BY tree_size")
            .await
            .expect("checkpoints"),
        &["tree_size"],
    );
    let want: Vec<Vec<String>> = store
        .checkpoints()
        .expect("cps")
        .iter()
        .map(|(n, _)| vec![s(n)])
        .collect();
    assert_eq!(got, want);
}
