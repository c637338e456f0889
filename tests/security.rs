//! Attacks on a live ledger (SECURITY.md): an insider editing the store, messages built to
//! exhaust memory or to be read two ways, and SQL that would run away. Each test performs
//! the attack against a real nats-server, `docket serve` and RocksDB.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use docket_schemas::*;
use docket_testkit::workload::{Published, Workload};
use serde_json::Value;

fn start_ts() -> Timestamp {
    Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap()
}

/// A ledger with a workload in it (findings among them), stopped cleanly.
struct Stopped {
    _dir: tempfile::TempDir,
    nats: NatsServer,
    data: std::path::PathBuf,
    workload: Workload,
}

fn ledger_with_findings() -> Stopped {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(21, start_ts(), 4, 10);
    w.misbehaving_per_mille = 40;
    let mut serve = Serve::start(&data, &nats.url(), &w.roles);
    let mut items: Vec<Published> = w.setup();
    items.extend((0..3_000).map(|_| w.next_envelope()));
    let n = items.len() as u64;
    runtime().block_on(async {
        let js = jetstream(&nats.url()).await;
        for p in items {
            js.publish(p.subject, p.envelope.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    assert_eq!(
        wait_for_entries(&mut serve, n, Duration::from_secs(60)),
        n,
        "{}",
        serve.log_text()
    );
    serve.stop();
    Stopped {
        _dir: dir,
        nats,
        data,
        workload: w,
    }
}

/// Opens the ledger's RocksDB as an insider would, with every column family.
fn raw_db(data: &Path) -> rocksdb::DB {
    let path = data.join("db");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap()
}

/// Starts `serve` and waits for it to exit; returns its log. Fails if it keeps running.
fn serve_refuses(s: &Stopped) -> String {
    refused(Serve::start(&s.data, &s.nats.url(), &s.workload.roles))
}

/// Waits for a started `serve` to exit with an error; returns its log.
fn refused(mut serve: Serve) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = serve.child.try_wait() {
            assert!(!status.success(), "serve started: {}", serve.log_text());
            return serve.log_text();
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn repair(data: &Path) {
    let o = docket(&[
        "state",
        "rebuild",
        "--data",
        data.to_str().unwrap(),
        "--repair",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(verify(data).0, 0);
}

#[test]
fn an_insider_editing_state_findings_or_registry_is_caught_at_start_and_by_verify() {
    let s = ledger_with_findings();
    assert_eq!(verify(&s.data).0, 0);

    // 1. Revive a revoked token in the stored projection.
    {
        let db = raw_db(&s.data);
        let cf = db.cf_handle("state").unwrap();
        let revoked = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|r| r.unwrap())
            .find_map(|(k, v)| {
                let t: Value = serde_json::from_slice(&v).ok()?;
                (k.starts_with(b"t/") && !t["revoked_seq"].is_null()).then_some((k, t))
            })
            .expect("the workload revokes tokens");
        let (k, mut t) = revoked;
        t["revoked_seq"] = Value::Null;
        db.put_cf(cf, k, serde_json::to_vec(&t).unwrap()).unwrap();
    }
    let log = serve_refuses(&s);
    assert!(log.contains("disagrees with it"), "{log}");
    assert!(log.contains("state objects differ"), "{log}");
    // Offline readers refuse to show it too (unless told not to check).
    let data = s.data.to_str().unwrap();
    let o = docket(&["state", "tokens", "--data", data]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not what the chain derives"), "{err}");
    assert!(docket(&["findings", "--data", data]).status.code() != Some(0));
    assert!(
        docket(&["state", "tokens", "--data", data, "--unchecked"])
            .status
            .success()
    );
    let (code, out) = verify(&s.data);
    assert_ne!(code, 0, "verify called an edited projection intact: {out}");
    assert!(out.contains("not what it derives"), "{out}");
    repair(&s.data);

    // 2. Delete a finding.
    {
        let db = raw_db(&s.data);
        let cf = db.cf_handle("findings").unwrap();
        let (k, _) = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .next()
            .expect("the workload misbehaves")
            .unwrap();
        db.delete_cf(cf, k).unwrap();
    }
    let log = serve_refuses(&s);
    assert!(log.contains("findings differ"), "{log}");
    assert_ne!(verify(&s.data).0, 0);
    repair(&s.data);

    // 3. Let a key emit more than the chain says, in the stored registry.
    {
        let db = raw_db(&s.data);
        let cf = db.cf_handle("meta").unwrap();
        let mut reg: Value =
            serde_json::from_slice(&db.get_cf(cf, b"registry").unwrap().unwrap()).unwrap();
        let keys = reg["keys"].as_object_mut().unwrap();
        let first = keys.values_mut().next().unwrap();
        first["kinds"] = serde_json::json!(["api.called", "token.issued", "grant.created"]);
        db.put_cf(cf, b"registry", serde_json::to_vec(&reg).unwrap())
            .unwrap();
    }
    let log = serve_refuses(&s);
    assert!(log.contains("registry"), "{log}");
    assert_ne!(verify(&s.data).0, 0);
    repair(&s.data);

    // Repaired, it serves again.
    let mut serve = Serve::start(&s.data, &s.nats.url(), &s.workload.roles);
    wait_serving(&mut serve);
    serve.stop();
}

#[test]
fn messages_built_to_exhaust_memory_or_be_read_two_ways_are_kept_small_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(22, start_ts(), 2, 3);
    let mut serve = Serve::start(&data, &nats.url(), &w.roles);
    let setup = w.setup();
    let n = setup.len() as u64;
    // A gateway's call, and another with the same event id and other content, both
    // validly signed by the gateway.
    let call = |operation: &str| Event {
        v: SCHEMA_VERSION,
        id: EventId::parse("01900000-0000-7000-8000-00000000c0de").unwrap(),
        ts: start_ts(),
        body: EventBody::ApiCalled(ApiCalled {
            token_id: "t-unknown".into(),
            token_hash: None,
            agent: "agent-0".into(),
            audience: "https://api.github.com".into(),
            method: "GET".into(),
            operation: operation.into(),
            scope: None,
            status: 200,
            source: "10.0.0.1".into(),
            ..Default::default()
        }),
    };
    let good = seal_event(&call("/first"), &w.roles.gateway);
    let conflict = seal_event(&call("/second"), &w.roles.gateway);
    let rt = runtime();
    let (oversize_refused, junk_len) = rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        for p in setup {
            js.publish(p.subject, p.envelope.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        js.publish("docket.events.api.called", good.into())
            .await
            .unwrap()
            .await
            .unwrap();
        // Above the envelope limit: JetStream itself refuses it (max message size).
        let big = vec![b'x'; 200_000];
        let oversize_refused = match js.publish("docket.events.api.called", big.into()).await {
            Err(_) => true,
            Ok(ack) => ack.await.is_err(),
        };
        // Just under it, and junk: quarantined, and only a sample kept.
        let junk = vec![b'{'; 60_000];
        let junk_len = junk.len();
        js.publish("docket.events.api.called", junk.into())
            .await
            .unwrap()
            .await
            .unwrap();
        js.publish("docket.events.api.called", conflict.into())
            .await
            .unwrap()
            .await
            .unwrap();
        (oversize_refused, junk_len)
    });
    assert!(
        oversize_refused,
        "JetStream took a message over the envelope limit"
    );
    assert_eq!(
        wait_for_entries(&mut serve, n + 1, Duration::from_secs(30)),
        n + 1
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let store = docket_ledger::store::Store::open_reader(&data.join("db")).unwrap();
        let q = store.quarantine().unwrap();
        if q.len() >= 2 || Instant::now() > deadline {
            break q;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let junk = records
        .iter()
        .find(|q| q.raw_bytes == junk_len as u64)
        .expect("junk kept");
    assert_eq!(junk.code, "malformed_envelope");
    assert_eq!(
        decode_base64(&junk.raw).unwrap().len(),
        1024,
        "a sample, not all of it"
    );
    assert_eq!(
        junk.raw_blake3,
        blake3::hash(&vec![b'{'; 60_000]).to_hex().to_string()
    );
    assert!(
        records.iter().any(|q| q.code == "id_conflict"),
        "{records:?}"
    );
    let o = docket(&["quarantine", "--data", data.to_str().unwrap(), "--counts"]);
    let counts = stdout(&o);
    assert!(
        counts.contains("\"code\":\"id_conflict\",\"count\":1"),
        "{counts}"
    );
    assert_eq!(verify(&data).0, 0);
}

/// Runs `docket sql` on `data` with `args`; returns (success, stderr, seconds taken).
fn sql(data: &Path, args: &[&str]) -> (bool, String, f64) {
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_docket"))
        .args(["sql", "--data", data.to_str().unwrap(), "--no-seal"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn sql_time_and_memory_limits_hold_for_every_query() {
    let s = ledger_with_findings();
    // CPU without end: the limit stops it, the process does not spin on.
    let (ok, err, took) = sql(
        &s.data,
        &[
            "--timeout-s",
            "2",
            "SELECT count(*) FROM range(100000000) a CROSS JOIN range(100000000) b",
        ],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("time limit") || err.contains("2-second limit"),
        "{err}"
    );
    assert!(took < 20.0, "ran {took:.1} s past a 2 s limit: {err}");
    // Memory outside the engine's accounting (a scalar function's output).
    let (ok, err, _) = sql(
        &s.data,
        &[
            "--memory-limit-mib",
            "64",
            "SELECT length(repeat('x', 1000000000))",
        ],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("memory limit"), "{err}");
    // An ordinary query still runs under the same limits.
    let (ok, err, _) = sql(
        &s.data,
        &[
            "--memory-limit-mib",
            "64",
            "--timeout-s",
            "5",
            "SELECT count(*) FROM events",
        ],
    );
    assert!(ok, "{err}");
}

#[test]
fn the_checkpoint_key_can_live_outside_the_data_directory_and_must_stay_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("ledger.key");
    let roles = docket_testkit::workload::Roles::from_seed(23);
    let with_key = |path: &Path| {
        Serve::start_with(
            &data,
            &nats.url(),
            &roles,
            &["--ledger-key", path.to_str().unwrap()],
        )
    };
    let mut serve = with_key(&key);
    wait_serving(&mut serve);
    serve.stop();
    assert!(key.exists() && !data.join("ledger.key").exists());
    assert_eq!(verify(&data).0, 0);
    // Another key, or none, is refused: the ledger keeps the key it was created with.
    let log = refused(with_key(&keys.join("missing.key")));
    assert!(log.contains("checkpoint key file is missing"), "{log}");
    let other = keys.join("other.key");
    docket_ledger::keyfile::write(&other, &ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
        .unwrap();
    let log = refused(with_key(&other));
    assert!(log.contains("checkpoint key is"), "{log}");
    let mut serve = with_key(&key);
    wait_serving(&mut serve);
    serve.stop();
}
