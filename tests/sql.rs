//! `docket sql`, `docket columnar` and the Parquet export, end to end: a real nats-server, the real
//! `docket serve` sealing segments as it ingests, and the real binary answering beside it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use docket_ledger::workload::{Expect, Published, Workload};
use docket_schemas::{Envelope, Timestamp};

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
                .filter(|e| e.file_name().to_string_lossy().starts_with("events-"))
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
    assert_eq!(rows[0]["kind"], "key.registered");

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
    let mut child = Command::new(DOCKET)
        .args(["sql", "--data"])
        .arg(&data)
        .args(["--format", "csv"])
        .env("DOCKET_SEGMENT_ENTRIES", SEGMENT)
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS total\nFROM events\n;\nDELETE FROM events;\n\\d\nSELECT 41 + 1 AS answer;\n\\q\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert!(out.contains(&format!("total\n{n}\n")), "{out}");
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
    assert_eq!(stdout(&o), format!("({n}, {n}, {n})\n{calls}\nTrue\n"));
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
    assert_eq!(stdout(&o), format!("n\n{n}\n"));
    assert!(
        !fresh.join("columnar").exists(),
        "--no-seal wrote the columnar copy"
    );
}
