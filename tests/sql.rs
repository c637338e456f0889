//! `docket sql`, `docket columnar` and the Parquet export, end to end: a real nats-server, the real
//! `docket serve` sealing segments as it ingests, and the real binary answering beside it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use docket_schemas::{Envelope, Timestamp};
use docket_testkit::workload::{Expect, Published, Workload};

const SEGMENT: &str = "500";

fn sql(data: &Path, args: &[&str]) -> Output {
    Command::new(DOCKET)
        .args(["sql", "--data"])
        .arg(data)
        .args(args)
        .env("DOCKET_SEGMENT_ENTRIES", SEGMENT)
        .output()
        .expect("run docket sql")
}

fn kinds_in_chain(data: &Path) -> BTreeMap<String, u64> {
    let store = docket_ledger::store::Store::open_reader(&data.join("db")).unwrap();
    let mut out = BTreeMap::new();
    for r in store.records(1).unwrap() {
        let (seq, record) = r.unwrap();
        let entry = docket_ledger::store::decode_record(seq, &record).unwrap();
        let event = Envelope::decode(entry.envelope).unwrap().event().unwrap();
        *out.entry(event.kind().to_string()).or_default() += 1;
    }
    out
}

fn segments(data: &Path) -> usize {
    std::fs::read_dir(data.join("columnar"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("events-") && name.ends_with(".parquet")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sql_answers_beside_a_running_serve_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(
        1,
        Timestamp::parse("2026-01-01T00:00:00.000000Z").unwrap(),
        4,
        10,
    );
    let mut serve = Serve::start_env(
        &data,
        &nats.url(),
        &w.roles,
        &[],
        &[("DOCKET_SEGMENT_ENTRIES", SEGMENT)],
    );
    w.forged_per_mille = 10;
    let mut items: Vec<Published> = w.setup();
    items.extend((0..3_200).map(|_| w.next_envelope()));
    let mut forged: BTreeMap<String, u64> = BTreeMap::new();
    for p in &items {
        if let Expect::Quarantine(code) = p.expect {
            *forged.entry(code.to_string()).or_default() += 1;
        }
    }
    assert!(!forged.is_empty());
    let n = items.len() as u64 - forged.values().sum::<u64>();
    let rt = runtime();
    rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        let mut p =
            docket_ledger::publisher::Publisher::new(docket_ledger::publisher::Sink::Nats(js));
        let mut ignore = |_: u64, _: Result<docket_ledger::publisher::Acked, String>| {};
        for it in items {
            p.send(it.subject, it.envelope, it.id, &mut ignore)
                .await
                .unwrap();
        }
        p.flush(&mut ignore).await;
    });
    assert_eq!(wait_for_entries(&mut serve, n, Duration::from_secs(60)), n);
    // serve seals whole segments as it goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&data) < (n / 500) as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(segments(&data), (n / 500) as usize, "{}", serve.log_text());

    // While serve runs: CSV, checked against the chain itself.
    let o = sql(
        &data,
        &[
            "--format",
            "csv",
            "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = stdout(&o);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("kind,n"));
    let got: BTreeMap<String, u64> = lines
        .map(|l| {
            let (k, v) = l.split_once(',').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(got, kinds_in_chain(&data));

    // The quarantine, as a table: each forgery with the reason it was refused.
    let o = sql(
        &data,
        &[
            "--format",
            "csv",
            "SELECT code, count(*) AS n FROM rejections GROUP BY code ORDER BY code",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: BTreeMap<String, u64> = stdout(&o)
        .lines()
        .skip(1)
        .map(|l| {
            let (k, v) = l.split_once(',').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(got, forged);

    // JSON: one object per line.
    let o = sql(
        &data,
        &[
            "--format",
            "json",
            "SELECT seq, kind FROM events WHERE seq <= 3 ORDER BY seq",
        ],
    );
    assert!(o.status.success());
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["seq"], 1);
    assert_eq!(
        rows[0]["kind"], "policy.set",
        "a new ledger records its policy first"
    );
    assert_eq!(rows[1]["kind"], "key.registered");

    // Table (the default), and Parquet to a file.
    let o = sql(&data, &["SELECT count(*) AS n FROM api_calls"]);
    assert!(o.status.success());
    let calls = kinds_in_chain(&data)["api.called"];
    assert!(stdout(&o).contains(&format!("| {calls}")), "{}", stdout(&o));
    let out = dir.path().join("calls.parquet");
    let o = sql(
        &data,
        &[
            "--format",
            "parquet",
            "--out",
            out.to_str().unwrap(),
            "SELECT * FROM api_calls",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = std::fs::File::open(&out).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    assert_eq!(reader.metadata().file_metadata().num_rows() as u64, calls);

    // Refusals and bad SQL: status 1, a clear message, nothing changed.
    let o = sql(&data, &["DROP VIEW api_calls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("docket sql is read-only"));
    let o = sql(&data, &["SELECT FROM WHERE"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: "));
    let o = sql(&data, &["--format", "parquet", "SELECT 1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));

    // The shell: multi-line input, a refusal that does not end the session, \d, \q.
    let o = shell(
        &data,
        dir.path(),
        "SELECT count(*) AS total\nFROM events\n;\nDELETE FROM events;\n\\d\nSELECT 41 + 1 AS answer;\n\\q\n",
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!("total\n{}\n", GENESIS_ENTRIES + n)),
        "{out}"
    );
    assert!(out.contains("answer\n42\n"), "{out}");
    assert!(
        out.contains("api_calls") && out.contains("grants_state"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"));

    // Every segment equals the chain, row by row, while serve still runs.
    let o = docket(&["columnar", "check", "--data", data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("columnar copy OK"));

    // The Parquet export, read by DuckDB as it is.
    let export = dir.path().join("export");
    let o = docket(&[
        "export",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "parquet",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for table in [
        "events",
        "api_calls",
        "grants",
        "approvals",
        "tokens",
        "revocations",
        "grants_state",
        "tokens_state",
        "approvals_state",
        "agents",
        "findings",
        "rejections",
        "checkpoints",
    ] {
        assert!(
            export.join(format!("{table}.parquet")).exists(),
            "{table}.parquet"
        );
    }
    let script = format!(
        "import duckdb\nc = duckdb.connect()\nd = '{}'\nprint(c.execute(f\"SELECT count(*), count(DISTINCT seq), max(seq) FROM '{{d}}/events.parquet'\").fetchone())\n\
         print(c.execute(f\"SELECT count(*) FROM '{{d}}/api_calls.parquet' WHERE status >= 0\").fetchone()[0])\n\
         print(c.execute(f\"SELECT len(scopes) FROM '{{d}}/grants.parquet' LIMIT 1\").fetchone()[0] > 0)",
        export.display()
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "DuckDB could not read the export: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let entries = GENESIS_ENTRIES + n;
    assert_eq!(
        stdout(&o),
        format!("({entries}, {entries}, {entries})\n{calls}\nTrue\n")
    );
    serve.stop();

    // --no-seal writes nothing and still answers every entry once (on a copy of the stopped ledger).
    let fresh = dir.path().join("fresh-copy");
    copy_dir(&data, &fresh);
    std::fs::remove_dir_all(fresh.join("columnar")).unwrap();
    let o = sql(
        &fresh,
        &[
            "--no-seal",
            "--format",
            "csv",
            "SELECT count(DISTINCT seq) AS n FROM events",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), format!("n\n{entries}\n"));
    assert!(
        !fresh.join("columnar").exists(),
        "--no-seal wrote the columnar copy"
    );

    // A segment edited in place (an agent's name changed, same length): `docket sql` refuses it.
    let edited = dir.path().join("edited-copy");
    copy_dir(&data, &edited);
    let victim = std::fs::read_dir(edited.join("columnar"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w.starts_with(b"agent-") && w[6].is_ascii_digit())
        .expect("an agent name in the segment");
    bytes[at + 6] = if bytes[at + 6] == b'1' { b'2' } else { b'1' };
    std::fs::write(&victim, &bytes).unwrap();
    let o = sql(
        &edited,
        &[
            "--format",
            "csv",
            "SELECT agent, count(*) FROM events GROUP BY agent",
        ],
    );
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("changed after the ledger sealed it"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A ledger of workload events (with misbehaviour) committed in process, no NATS needed:
/// the data directory and every entry's event.
fn small_ledger(dir: &Path, events: usize) -> (std::path::PathBuf, Vec<docket_schemas::Event>) {
    use docket_ledger::admission::{BATCH_EVENTS_MAX, Incoming};
    let data = dir.join("ledger");
    let mut w = Workload::new(
        1,
        Timestamp::parse("2026-01-01T00:00:00.000000Z").unwrap(),
        5,
        12,
    );
    w.misbehaving_per_mille = 20;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let identity = docket_ledger::store::LedgerIdentity {
        origin: "cli.test".into(),
        admin_public_key: docket_schemas::encode_base64(w.roles.admin.verifying_key().as_bytes()),
        ledger_public_key: docket_schemas::encode_base64(key.verifying_key().as_bytes()),
    };
    let store = docket_ledger::store::Store::open(&data.join("db"), &identity).unwrap();
    // Where `serve` keeps it by default, so that `docket sql` can seal segments.
    docket_ledger::keyfile::write(&data.join("ledger.key"), &key).unwrap();
    let mut items = w.setup();
    while items.len() < events {
        items.push(w.next_envelope());
    }
    runtime().block_on(async {
        let policy = docket_ledger::config::Config::default().checkpoint_policy();
        let mut ledger = docket_ledger::ingest::Ledger::new(store, key, policy).unwrap();
        for (i, chunk) in items.chunks(BATCH_EVENTS_MAX).enumerate() {
            let batch = chunk
                .iter()
                .enumerate()
                .map(|(j, p)| Incoming {
                    subject: p.subject.clone(),
                    payload: p.envelope.clone().into(),
                    source_seq: (i * BATCH_EVENTS_MAX + j + 1) as u64,
                })
                .collect();
            ledger.commit(batch).await.unwrap();
        }
    });
    let events = items
        .iter()
        .map(|p| Envelope::decode(&p.envelope).unwrap().event().unwrap())
        .collect();
    (data, events)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `docket sql` as a shell reading `input` from a pipe.
fn shell(data: &Path, home: &Path, input: &str) -> Output {
    run_with_input(
        Command::new(DOCKET)
            .args(["sql", "--data"])
            .arg(data)
            .args(["--format", "csv"])
            .env("DOCKET_SEGMENT_ENTRIES", SEGMENT)
            .env("HOME", home),
        input.as_bytes(),
    )
}

#[test]
fn a_new_users_first_hour_with_state_findings_times_csv_and_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (data, events) = small_ledger(dir.path(), 3_000);
    let d = data.to_str().unwrap();
    let head = events.len();
    let store = docket_ledger::store::Store::open_reader(&data.join("db")).unwrap();
    let state = store.load_state().unwrap();
    let findings = store.findings().unwrap();
    drop(store);

    // Each state view shows its own id column first, and approvals their binding message, whole.
    let o = docket(&["state", "tokens", "--data", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("token_id "), "{out}");
    for t in state.tokens.keys() {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{t} "))),
            "{t} in {out}"
        );
    }
    let o = docket(&["state", "approvals", "--data", d]);
    let out = stdout(&o);
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("approval_id "), "{header}");
    assert!(header.ends_with("binding_message"), "{header}");
    assert!(!state.approvals.is_empty());
    for a in state.approvals.values() {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&a.approval_id) && l.ends_with(&a.binding_message)),
            "{} {:?} in {out}",
            a.approval_id,
            a.binding_message
        );
    }
    let out = stdout(&docket(&["state", "grants", "--data", d]));
    assert!(out.starts_with("grant_id "), "{out}");
    let out = stdout(&docket(&["state", "agents", "--data", d]));
    assert!(out.starts_with("agent "), "{out}");

    // Findings: the message whole in a table (some are longer than a cell), evidence a list in JSON.
    assert!(
        findings.iter().any(|f| f.message.chars().count() > 72),
        "the workload has long finding messages"
    );
    // Listed by trigger seq, then by id (rule name) among findings of one entry.
    let mut findings = findings;
    findings.sort_by(|a, b| (a.seq, a.rule.as_str()).cmp(&(b.seq, b.rule.as_str())));
    let out = stdout(&docket(&["findings", "--data", d]));
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), findings.len());
    for (l, f) in lines.iter().zip(&findings) {
        assert!(l.ends_with(&f.message), "{l:?} cuts {:?}", f.message);
    }
    let out = stdout(&docket(&["findings", "--data", d, "--format", "json"]));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), findings.len());
    for (r, f) in rows.iter().zip(&findings) {
        assert_eq!(r["evidence"], serde_json::json!(f.evidence), "{r}");
        assert!(!f.evidence.is_empty());
    }

    // Times as people write them: whole seconds, `Z` or `+00:00`, in state and in SQL.
    let cut = Timestamp::parse("2026-01-01T00:00:01.000000Z").unwrap();
    let first_after = events
        .iter()
        .position(|e| e.ts > cut)
        .expect("the ledger runs past the cut");
    let tokens_then = events[..first_after]
        .iter()
        .filter(|e| matches!(e.body, docket_schemas::EventBody::TokenIssued(_)))
        .count();
    assert!(tokens_then > 0 && tokens_then < state.tokens.len());
    for at in [
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:01+00:00",
        "2026-01-01T00:00:01.000Z",
    ] {
        let o = docket(&[
            "state", "tokens", "--data", d, "--as-of", at, "--format", "json",
        ]);
        assert!(o.status.success(), "{at}: {}", stderr(&o));
        assert_eq!(stdout(&o).lines().count(), tokens_then, "{at}");
        assert_eq!(stderr(&o), "", "{at}: no note before the head");
        let o = sql(
            &data,
            &[
                "--as-of",
                at,
                "--format",
                "csv",
                "SELECT count(*) AS n FROM tokens_state",
            ],
        );
        assert!(o.status.success(), "{at}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("n\n{tokens_then}\n"), "{at}");
    }
    // A spelling that is refused says what is accepted.
    for bad in ["2026-01-01T00:00:01+01:00", "2026-01-01", "yesterday"] {
        for o in [
            docket(&["state", "tokens", "--data", d, "--as-of", bad]),
            sql(&data, &["--as-of", bad, "SELECT 1"]),
        ] {
            assert!(!o.status.success(), "{bad} was accepted");
            let e = stderr(&o);
            assert!(
                e.contains("neither a seq (digits) nor a time")
                    && e.contains("e.g. 2026-12-01T06:25:15Z"),
                "{bad}: {e}"
            );
        }
    }
    // Past the head: a seq is refused, a time is answered with a note naming the head.
    let beyond = (head + 1).to_string();
    for o in [
        docket(&["state", "grants", "--data", d, "--as-of", &beyond]),
        sql(
            &data,
            &["--as-of", &beyond, "SELECT count(*) FROM grants_state"],
        ),
    ] {
        assert!(!o.status.success(), "{}", stdout(&o));
        assert!(
            stderr(&o).contains(&format!(
                "--as-of {beyond} is beyond the head of the chain (seq {head})"
            )),
            "{}",
            stderr(&o)
        );
    }
    let o = docket(&["state", "grants", "--data", d, "--as-of", &head.to_string()]);
    assert!(
        o.status.success(),
        "the head itself is a point: {}",
        stderr(&o)
    );
    let later = "2027-01-01T00:00:00Z";
    let note = format!("the state shown is as of the head, seq {head}");
    let o = docket(&["state", "grants", "--data", d, "--as-of", later]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    let o = sql(
        &data,
        &["--as-of", later, "SELECT count(*) AS n FROM grants_state"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("| {} ", state.grants.len())),
        "{}",
        stdout(&o)
    );
    // --step-up-at reads the same spellings (refused ones before any connection is tried).
    let key = dir.path().join("user.key");
    assert!(
        docket(&["keys", "new", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let approve = |at: &str| {
        docket(&[
            "approve",
            "--nats",
            "nats://127.0.0.1:1",
            "--key",
            key.to_str().unwrap(),
            "--approval-id",
            "appr-1",
            "--user",
            "alice",
            "--step-up-key",
            key.to_str().unwrap(),
            "--step-up-at",
            at,
        ])
    };
    let o = approve("2026-12-01T06:25:15+02:00");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--step-up-at") && stderr(&o).contains("only UTC"),
        "{}",
        stderr(&o)
    );
    let o = approve("2026-12-01T06:25:15Z");
    assert!(!o.status.success(), "nothing listens on port 1");
    assert!(!stderr(&o).contains("--step-up-at"), "{}", stderr(&o));

    // CSV renders list columns as JSON arrays.
    let o = sql(
        &data,
        &[
            "--format",
            "csv",
            "SELECT seq, scopes FROM grants ORDER BY seq LIMIT 3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let grants: Vec<&docket_schemas::GrantCreated> = events
        .iter()
        .filter_map(|e| match &e.body {
            docket_schemas::EventBody::GrantCreated(g) => Some(g),
            _ => None,
        })
        .collect();
    let mut reader = stdout(&o);
    let header = reader.lines().next().unwrap().to_string();
    assert_eq!(header, "seq,scopes");
    reader = reader.split_off(header.len() + 1);
    let cells: Vec<serde_json::Value> = reader
        .lines()
        .map(|l| {
            // The JSON text is one quoted CSV field: `1,"[""a"",""b""]"`.
            let (_, cell) = l.split_once(',').unwrap();
            let unquoted = cell
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(cell)
                .replace("\"\"", "\"");
            serde_json::from_str(&unquoted).unwrap()
        })
        .collect();
    let want: Vec<serde_json::Value> = grants
        .iter()
        .take(3)
        .map(|g| serde_json::json!(g.scopes))
        .collect();
    assert_eq!(cells, want);
    // Findings' evidence (a list of integers) and every events column, to a file.
    let out = dir.path().join("all.csv");
    let o = sql(
        &data,
        &[
            "--format",
            "csv",
            "--out",
            out.to_str().unwrap(),
            "SELECT f.evidence, e.* FROM findings f JOIN events e ON e.seq = f.seq ORDER BY f.seq",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), findings.len() + 1);
    for f in &findings {
        let list = format!(
            "[{}]",
            f.evidence
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        // CSV quotes a field only when it holds its delimiter.
        let list = if list.contains(',') {
            format!("\"{list}\"")
        } else {
            list
        };
        let cell = format!("{list},{},", f.seq);
        assert!(
            text.lines().any(|l| l.starts_with(&cell)),
            "{cell} in {text}"
        );
    }
    // A query that fails part way leaves the file as it was, and nothing beside it.
    std::fs::write(&out, "previous answer\n").unwrap();
    let o = sql(
        &data,
        &[
            "--format",
            "csv",
            "--out",
            out.to_str().unwrap(),
            // Division by zero at seq 700, when the rows before it may already be written.
            "SELECT seq, 1 / (CAST(seq AS BIGINT) - 700) AS n FROM events",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous answer\n");
    let beside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("all.csv") && n != "all.csv")
        .collect();
    assert!(beside.is_empty(), "left behind: {beside:?}");

    // The shell, piped: a last query without `;` runs at the end; a failure makes the exit status 1.
    let o = shell(
        &data,
        dir.path(),
        "SELECT 1 AS a;\nSELECT no_such_column FROM events;\nSELECT 2\n  AS b",
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "a\n1\nb\n2\n");
    assert!(stderr(&o).contains("no_such_column"), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 query failed"), "{}", stderr(&o));
    let o = shell(&data, dir.path(), "SELECT 1 AS a;\n\\d\nSELECT 2 AS b;\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("a\n1\nevents\n"), "{}", stdout(&o));
    // `\q` on a continuation line quits; the unfinished query is not run, and says so.
    let o = shell(&data, dir.path(), "SELECT 3 AS c\n\\q\nSELECT 4 AS d;\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("not run (no `;` before \\q): SELECT 3 AS c"),
        "{}",
        stderr(&o)
    );
    // `\d` inside a query lists the tables and the query goes on.
    let o = shell(&data, dir.path(), "SELECT 5\n\\d\nAS e;\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).ends_with("checkpoints\nagent_first\ne\n5\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn detect_and_rules_check_name_each_problem_and_run_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_ledger(dir.path(), 2_000);
    let d = data.to_str().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("deletes.yml"),
        "title: Any delete\nid: 9a9c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f6\nlevel: low\n\
         logsource:\n  product: docket\n  service: api.called\n\
         detection:\n  sel:\n    method: DELETE\n  condition: sel\n",
    )
    .unwrap();
    std::fs::write(
        rules.join("broken.yml"),
        "title: broken\nid: 9a9c3a6f-1b2d-4c5e-8f90-a1b2c3d4e5f7\nlevel: severe\ndocket:\n  sql: SELECT 1\n",
    )
    .unwrap();
    let r = rules.to_str().unwrap();
    let o = docket(&["rules", "check", "--data", d, "--rules", r]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("broken.yml:3: level \"severe\""), "{err}");
    let built_in = docket_query::detect::BUILT_IN.len();
    assert!(
        stdout(&o).contains(&format!(
            "{} of {} rules load and plan",
            built_in + 1,
            built_in + 2
        )),
        "{}",
        stdout(&o)
    );

    // The workload's agents are all new (its events span less than a day): with the default
    // learning period the low rule raises nothing about them, without one it sees every DELETE.
    let args = [
        "detect",
        "--data",
        d,
        "--rules",
        r,
        "--no-built-in",
        "--json",
    ];
    let o = docket(&args);
    assert_eq!(stdout(&o), "", "nothing below high while agents learn");
    let o = docket(&[&args[..], &["--learning", "0s"]].concat());
    // The broken rule did not load: said, and the exit code says so too.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.yml:3"), "{}", stderr(&o));
    let store = docket_ledger::store::Store::open_reader(&data.join("db")).unwrap();
    let mut deletes = Vec::new();
    for item in store.records(1).unwrap() {
        let (seq, record) = item.unwrap();
        let entry = docket_ledger::store::decode_record(seq, &record).unwrap();
        let event = Envelope::decode(entry.envelope).unwrap().event().unwrap();
        if let docket_schemas::EventBody::ApiCalled(c) = &event.body
            && c.method == "DELETE"
        {
            deletes.push(seq);
        }
    }
    let seen: Vec<u64> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(!deletes.is_empty(), "the workload deletes something");
    assert_eq!(seen, deletes);
}
