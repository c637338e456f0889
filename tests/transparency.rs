//! Verifiable by outsiders: Merkle proofs against an independent RFC 6962 implementation,
//! checkpoints against an independent C2SP verifier, a real witness catching rollback,
//! truncation and a fork, and evidence bundles refusing every kind of doctoring.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use docket_ledger::chain::hex;
use docket_ledger::store::Store;
use docket_testkit::workload::{Published, Roles, Workload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "test.docket.local/ledger";
const WITNESS: &str = "witness.test/w1";
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transparency_ref.py");

/// Runs the independent reference (Python, written from RFC 6962/9162 and C2SP) on `input`.
fn reference(command: &str, input: &Value) -> (i32, Value, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(REFERENCE).arg(command);
    let out = run_with_input(&mut cmd, input.to_string().as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        value,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A real ledger of ~18,000 entries made by `docket demo`, shared by the tests here.
fn demo_ledger() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ledger");
        let o = docket(&["demo", "--seconds", "1", "--data", data.to_str().unwrap()]);
        assert!(o.status.success(), "demo failed: {}", stdout(&o));
        (dir, data)
    })
    .1
}

fn hashes_hex(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(|h| hex(h)).collect()
}

#[test]
fn proofs_from_the_store_agree_with_an_independent_rfc6962_implementation() {
    const ALL_UP_TO: u64 = 1024;
    const LARGEST: u64 = 5000;
    let store = Store::open_reader(&demo_ledger().join("db")).unwrap();
    assert!(
        store.tree_size().unwrap() >= LARGEST,
        "the demo ledger is too small"
    );
    let leaves: Vec<String> = (1..=LARGEST)
        .map(|seq| {
            let record = store.record(seq).unwrap().unwrap();
            hex(&docket_ledger::store::decode_record(seq, &record)
                .unwrap()
                .hash)
        })
        .collect();
    // Every size and index up to ALL_UP_TO, compared through a digest of every proof.
    let (mut inclusion, mut consistency) = (Sha256::new(), Sha256::new());
    for size in 1..=ALL_UP_TO {
        for index in 0..size {
            let p = store.inclusion_path(index, size).unwrap();
            inclusion.update(size.to_be_bytes());
            inclusion.update(index.to_be_bytes());
            inclusion.update((p.len() as u32).to_be_bytes());
            p.iter().for_each(|h| inclusion.update(h));
        }
        for old in 1..=size {
            let p = store.consistency_path(old, size).unwrap();
            consistency.update(old.to_be_bytes());
            consistency.update(size.to_be_bytes());
            consistency.update((p.len() as u32).to_be_bytes());
            p.iter().for_each(|h| consistency.update(h));
        }
    }
    // The edge cases up to LARGEST, proof by proof: size 1, powers of two either side, the last entry.
    let mut sizes: Vec<u64> = vec![1, 2, 3, 1000, 4095, 4097, LARGEST - 1, LARGEST];
    sizes.extend((1..13).flat_map(|k| [(1u64 << k) - 1, 1 << k, (1 << k) + 1]));
    sizes.retain(|s| *s <= LARGEST);
    sizes.sort();
    sizes.dedup();
    let mut pairs = Vec::new();
    let mut old_new = Vec::new();
    for &size in &sizes {
        for index in [0, 1, size / 2, size.saturating_sub(2), size - 1] {
            if index < size {
                pairs.push((index, size));
            }
        }
        for &old in &sizes {
            if old <= size {
                old_new.push((old, size));
            }
        }
    }
    let input = json!({
        "leaves": leaves,
        "roots": sizes,
        "inclusion": pairs,
        "consistency": old_new,
        "all_inclusion_up_to": ALL_UP_TO,
        "all_consistency_up_to": ALL_UP_TO,
    });
    let (code, out, err) = reference("proofs", &input);
    assert_eq!(code, 0, "the reference failed: {err}");
    assert_eq!(
        out["all_inclusion_digest"],
        json!(hex(inclusion.finalize().as_slice())),
        "inclusion proofs for every size and index up to {ALL_UP_TO} differ"
    );
    assert_eq!(
        out["all_consistency_digest"],
        json!(hex(consistency.finalize().as_slice())),
        "consistency proofs for every pair of sizes up to {ALL_UP_TO} differ"
    );
    for &size in &sizes {
        assert_eq!(
            out["roots"][size.to_string()],
            json!(hex(&store.tree_root(size).unwrap())),
            "root of size {size}"
        );
    }
    for (i, (index, size)) in pairs.iter().enumerate() {
        let ours = hashes_hex(&store.inclusion_path(*index, *size).unwrap());
        assert_eq!(
            out["inclusion"][i],
            json!(ours),
            "inclusion of {index} in {size}"
        );
    }
    for (i, (old, new)) in old_new.iter().enumerate() {
        let ours = hashes_hex(&store.consistency_path(*old, *new).unwrap());
        assert_eq!(
            out["consistency"][i],
            json!(ours),
            "consistency {old} -> {new}"
        );
    }
    // And the reference's verifier accepts what `docket prove` prints.
    let o = docket(&[
        "prove",
        "inclusion",
        "--data",
        demo_ledger().to_str().unwrap(),
        "--seq",
        "4097",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let p: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let size = p["tree_size"].as_u64().unwrap();
    let leaf = hex(&docket_ledger::merkle::leaf_hash(
        &docket_ledger::chain::parse_hash(p["entry_hash"].as_str().unwrap()).unwrap(),
    ));
    let (code, ok, err) = reference(
        "verify-inclusion",
        &json!({"leaf_hash": leaf, "index": 4096, "size": size, "proof": p["hashes"],
                "root": hex(&store.tree_root(size).unwrap())}),
    );
    assert_eq!((code, ok), (0, json!({"ok": true})), "{err}");
}

#[test]
fn check_proof_accepts_proofs_and_refuses_changed_ones_with_the_reason() {
    let data = demo_ledger();
    let dir = tempfile::tempdir().unwrap();
    let key = Store::open_reader(&data.join("db"))
        .unwrap()
        .identity()
        .unwrap()
        .ledger_public_key;
    let write = |name: &str, v: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let check = |path: &Path, extra: &[&str]| {
        let o = docket(
            &[
                &["check-proof", path.to_str().unwrap(), "--ledger-key", &key][..],
                extra,
            ]
            .concat(),
        );
        (o.status.code().unwrap_or(-1), stdout(&o))
    };
    let o = docket(&[
        "prove",
        "inclusion",
        "--data",
        data.to_str().unwrap(),
        "--seq",
        "77",
    ]);
    let good: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (code, out) = check(&write("good.json", &good), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("included: entry 77"), "{out}");

    let mut changed = good.clone();
    let env = changed["entry"]["envelope"]
        .as_str()
        .unwrap()
        .replacen('e', "f", 1);
    changed["entry"]["envelope"] = json!(env);
    let (code, out) = check(&write("changed.json", &changed), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("contents hash to"), "{out}");

    let mut moved = good.clone();
    moved["seq"] = json!(78);
    moved.as_object_mut().unwrap().remove("entry");
    let (code, out) = check(&write("moved.json", &moved), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not in this tree"), "{out}");

    let other_key = docket_schemas::encode_base64(
        ed25519_dalek::SigningKey::from_bytes(&[3; 32])
            .verifying_key()
            .as_bytes(),
    );
    let o = docket(&[
        "check-proof",
        dir.path().join("good.json").to_str().unwrap(),
        "--ledger-key",
        &other_key,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("no signature"), "{}", stdout(&o));

    let o = docket(&[
        "prove",
        "consistency",
        "--data",
        data.to_str().unwrap(),
        "--from",
        "1000",
        "--to",
        &good["tree_size"].to_string(),
    ]);
    let c: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (code, out) = check(&write("consistency.json", &c), &[]);
    assert_eq!(code, 0, "{out}");
    let mut forked = c.clone();
    forked["old_root"] = json!(hex(&[7u8; 32]));
    let (code, out) = check(&write("forked.json", &forked), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a prefix"), "{out}");
    // From size 0 only the empty tree's root is consistent; a made-up one is refused.
    let mut from_zero = c.clone();
    from_zero["old_size"] = json!(0);
    from_zero["hashes"] = json!([]);
    from_zero["old_root"] = json!(hex(&[0xab; 32]));
    from_zero.as_object_mut().unwrap().remove("old_checkpoint");
    let (code, out) = check(&write("zero.json", &from_zero), &[]);
    assert_eq!(code, 1, "{out}");
    // Without the new checkpoint nothing is signed: refused, not "consistent".
    let mut unsigned = c.clone();
    unsigned.as_object_mut().unwrap().remove("new_checkpoint");
    let (code, out) = check(&write("unsigned.json", &unsigned), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing in it is signed"), "{out}");
    // A repeated key means two things to two readers: not read at all.
    let text = good.to_string().replacen("{", "{\"seq\":99999,", 1);
    let dup = dir.path().join("dup.json");
    std::fs::write(&dup, text).unwrap();
    let (code, out) = check(&dup, &[]);
    assert_eq!(code, 2, "{out}");
}

/// A ledger with a witness, each a real process on a real NATS server.
struct Deployment {
    dir: PathBuf,
    roles: Roles,
    ledger_key: PathBuf,
    ledger_public: String,
    witness_key: PathBuf,
    witness_public: String,
}

impl Deployment {
    fn new(dir: &Path) -> Deployment {
        let key = |name: &str| {
            let path = dir.join(name);
            let o = docket(&["keys", "new", "--out", path.to_str().unwrap()]);
            assert!(o.status.success());
            let o = docket(&["keys", "show", path.to_str().unwrap(), "--public-key"]);
            (path, stdout(&o).trim().to_string())
        };
        let (ledger_key, ledger_public) = key("ledger.key");
        let (witness_key, witness_public) = key("witness.key");
        Deployment {
            dir: dir.to_path_buf(),
            roles: Roles::from_seed(1),
            ledger_key,
            ledger_public,
            witness_key,
            witness_public,
        }
    }

    fn config(&self, witnessed: bool) -> PathBuf {
        let path = self.dir.join(if witnessed {
            "witnessed.toml"
        } else {
            "alone.toml"
        });
        let mut text = format!(
            "ledger_key = {:?}\ncheckpoint_every_s = 1\n",
            self.ledger_key.to_str().unwrap()
        );
        if witnessed {
            text += &format!(
                "[[witnesses]]\nname = {WITNESS:?}\npublic_key = {:?}\n",
                self.witness_public
            );
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn serve(&self, data: &Path, nats: &NatsServer, witnessed: bool) -> Serve {
        let config = self.config(witnessed);
        Serve::start_with(
            data,
            &nats.url(),
            &self.roles,
            &["--config", config.to_str().unwrap()],
        )
    }

    fn witness(&self, nats: &NatsServer) -> Witness {
        let log = self
            .dir
            .join(format!("witness.{}.log", nats.url().len() + rand_suffix()));
        let child = Command::new(DOCKET)
            .args(["witness", "--data"])
            .arg(self.dir.join("witness-state"))
            .arg("--key")
            .arg(&self.witness_key)
            .args(["--name", WITNESS, "--nats", &nats.url()])
            .arg("--log")
            .arg(format!("{ORIGIN}={}", self.ledger_public))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Witness { child, log };
        w.wait_for("witness listening");
        w
    }

    fn witness_arg(&self) -> String {
        format!("{WITNESS}={}", self.witness_public)
    }
}

fn rand_suffix() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Witness {
    child: std::process::Child,
    log: PathBuf,
}

impl Witness {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "witness never said {what:?}: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(nats: &NatsServer, items: Vec<Published>) {
    runtime().block_on(async {
        let js = jetstream(&nats.url()).await;
        let mut p =
            docket_ledger::publisher::Publisher::new(docket_ledger::publisher::Sink::Nats(js));
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
    });
}

/// Waits until a checkpoint of exactly `size` entries carries the witness's cosignature;
/// returns the cosigned note.
fn cosigned_at(data: &Path, size: u64, serve: &Serve, witness: &Witness) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(store) = Store::open_reader(&data.join("db"))
            && let Ok(Some(note)) = store.cosigned_checkpoint(size)
            && note.contains(WITNESS)
        {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "no cosigned checkpoint of {size} (checkpoints {:?}, cosignatures {:?}): {}\nthe witness: {}",
            Store::open_reader(&data.join("db"))
                .and_then(|s| s.checkpoints())
                .map(|c| c.into_iter().map(|x| x.0).collect::<Vec<_>>()),
            Store::open_reader(&data.join("db")).and_then(|s| s.cosignatures()),
            serve.log_text(),
            witness.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs serve and expects it to refuse to start, returning what it said.
fn refused(d: &Deployment, data: &Path, nats: &NatsServer) -> String {
    let mut serve = d.serve(data, nats, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = serve.child.try_wait() {
            assert!(!status.success(), "serve started: {}", serve.log_text());
            return serve.log_text();
        }
        assert!(
            Instant::now() < deadline,
            "serve neither started nor refused: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_witness_catches_a_rollback_a_truncation_and_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path());
    let data = dir.path().join("ledger");
    let start = docket_schemas::Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
    let mut work = Workload::new(1, start, 3, 10);

    let nats = NatsServer::start(&dir.path().join("nats1")).unwrap();
    let witness = d.witness(&nats);
    let mut serve = d.serve(&data, &nats, true);
    wait_serving(&mut serve);
    let mut items = work.setup();
    // Chain sizes count the genesis policy beside the producers' entries.
    let first = items.len() as u64 + 40 + GENESIS_ENTRIES;
    items.extend((0..40).map(|_| work.next_envelope()));
    publish(&nats, items);
    let wait = |serve: &mut Serve, size: u64| {
        let want = size - GENESIS_ENTRIES;
        assert_eq!(wait_for_entries(serve, want, Duration::from_secs(60)), want);
    };
    wait(&mut serve, first);
    let early = cosigned_at(&data, first, &serve, &witness);
    serve.stop();
    let old_backup = dir.path().join("backup");
    copy_dir(&data, &old_backup);

    let mut serve = d.serve(&data, &nats, true);
    wait_serving(&mut serve);
    publish(&nats, (0..30).map(|_| work.next_envelope()).collect());
    let size = first + 30;
    wait(&mut serve, size);
    let note = cosigned_at(&data, size, &serve, &witness);
    serve.stop();
    drop(witness);
    let witnessed = dir.path().join("witnessed.note");
    std::fs::write(&witnessed, &note).unwrap();

    // The cosigned checkpoints pass an independent C2SP verifier; a changed one does not.
    let (code, out, err) = reference(
        "verify-checkpoint",
        &json!({"note": note, "origin": ORIGIN, "log_key": d.ledger_public,
                "witnesses": [{"name": WITNESS, "key": d.witness_public}]}),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["size"], json!(size));
    assert_eq!(out["cosigned_by"], json!([WITNESS]));
    let (code, _, _) = reference(
        "verify-checkpoint",
        &json!({"note": note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1),
                "origin": ORIGIN, "log_key": d.ledger_public}),
    );
    assert_eq!(
        code, 1,
        "a changed checkpoint passed the reference verifier"
    );

    // Offline: the live store verifies with the witness demanded, and from its checkpoint.
    let o = docket(&[
        "verify",
        "--data",
        data.to_str().unwrap(),
        "--witness",
        &d.witness_arg(),
        "--since-checkpoint",
        witnessed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!(
            "witness {WITNESS} cosigned the checkpoint of {size}"
        )),
        "{}",
        stdout(&o)
    );

    // Rollback: the old backup restored on a new machine (a fresh NATS, so no ack floor
    // stands in the way): the witness has cosigned more than it holds.
    let nats2 = NatsServer::start(&dir.path().join("nats2")).unwrap();
    let _w = d.witness(&nats2);
    let restored = dir.path().join("restored");
    copy_dir(&old_backup, &restored);
    let said = refused(&d, &restored, &nats2);
    assert!(
        said.contains(&format!(
            "cosigned a checkpoint of {size} entries but this store holds {first}"
        )),
        "{said}"
    );
    let o = docket(&[
        "verify",
        "--data",
        restored.to_str().unwrap(),
        "--since-checkpoint",
        witnessed.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("rolled back or truncated"),
        "{}",
        stdout(&o)
    );
    assert!(early.contains(WITNESS));

    // Truncation: the last entries deleted from a copy of the current store.
    let truncated = dir.path().join("truncated");
    copy_dir(&data, &truncated);
    {
        let names =
            rocksdb::DB::list_cf(&rocksdb::Options::default(), truncated.join("db")).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), truncated.join("db"), names)
            .unwrap();
        let cf = db.cf_handle("entries").unwrap();
        for seq in size - 5..=size {
            db.delete_cf(cf, seq.to_be_bytes()).unwrap();
        }
    }
    let o = docket(&[
        "verify",
        "--data",
        truncated.to_str().unwrap(),
        "--since-checkpoint",
        witnessed.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let said = refused(&d, &truncated, &nats2);
    assert!(said.contains("truncated"), "{said}");

    // A fork: the old backup continued with other events on another server, then shown to
    // the witness, which holds the first history.
    let nats3 = NatsServer::start(&dir.path().join("nats3")).unwrap();
    let forked = dir.path().join("forked");
    copy_dir(&old_backup, &forked);
    let mut other = Workload::new(2, start, 3, 10);
    other.roles = Roles::from_seed(1);
    let _ = other.setup();
    let mut alone = d.serve(&forked, &nats3, false);
    wait_serving(&mut alone);
    publish(&nats3, (0..60).map(|_| other.next_envelope()).collect());
    wait(&mut alone, first + 60);
    alone.stop();
    let _w3 = d.witness(&nats3);
    let said = refused(&d, &forked, &nats3);
    assert!(said.contains("two histories were signed"), "{said}");
    assert!(_w3.text().contains("does not verify"), "{}", _w3.text());
}

#[test]
fn the_witness_refuses_a_stale_size_and_a_bad_proof_with_distinct_answers() {
    use docket_ledger::witness::AddCheckpoint;
    use docket_schemas::checkpoint::Checkpoint;
    use docket_schemas::proof::{WitnessReply, witness_subject};
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path());
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let w = d.witness(&nats);
    let ledger = docket_ledger::keyfile::read(&d.ledger_key).unwrap();
    let witness_public = docket_ledger::keyfile::read(&d.witness_key)
        .unwrap()
        .verifying_key();
    let note = |size: u64, root: [u8; 32]| {
        Checkpoint {
            origin: ORIGIN.into(),
            size,
            root,
        }
        .sign(ORIGIN, &ledger)
    };
    let ask = |old: u64, proof: Vec<[u8; 32]>, note: String| -> WitnessReply {
        runtime().block_on(async {
            let client = async_nats::connect(nats.url()).await.unwrap();
            let body = AddCheckpoint {
                old_size: old,
                proof,
                note,
            }
            .encode();
            let msg = client
                .request(
                    witness_subject(WITNESS, witness_public.as_bytes()),
                    body.into_bytes().into(),
                )
                .await
                .unwrap();
            serde_json::from_slice(&msg.payload).unwrap()
        })
    };
    // A tree of two leaves, then of three, with a real consistency proof between them.
    let leaves: Vec<[u8; 32]> = (0..3u8)
        .map(|i| docket_ledger::merkle::leaf_hash(&[i; 32]))
        .collect();
    let node = docket_ledger::merkle::node_hash;
    let (two, three) = (
        node(&leaves[0], &leaves[1]),
        node(&node(&leaves[0], &leaves[1]), &leaves[2]),
    );
    let first = ask(0, vec![], note(2, two));
    assert_eq!(first.status, 200, "{first:?}");
    let line = first.cosignatures.unwrap();
    assert!(
        Checkpoint::verify_cosignature(
            &format!("{}{line}", note(2, two)),
            WITNESS,
            &witness_public
        )
        .is_ok()
    );
    // Persisted before the answer: the file holds the checkpoint.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("witness-state/logs"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);

    let stale = ask(1, vec![], note(3, three));
    assert_eq!((stale.status, stale.size), (409, Some(2)), "{stale:?}");
    let bad = ask(2, vec![[9; 32]], note(3, three));
    assert_eq!(bad.status, 422, "{bad:?}");
    let good = ask(2, vec![leaves[2]], note(3, three));
    assert_eq!(good.status, 200, "{good:?}");
    let forked_same_size = ask(3, vec![], note(3, [1; 32]));
    assert_eq!(
        (forked_same_size.status, forked_same_size.size),
        (409, Some(3))
    );
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let unsigned = Checkpoint {
        origin: ORIGIN.into(),
        size: 4,
        root: [2; 32],
    }
    .sign(ORIGIN, &stranger);
    assert_eq!(ask(3, vec![], unsigned).status, 403);
    let elsewhere = Checkpoint {
        origin: "other.example/log".into(),
        size: 4,
        root: [2; 32],
    }
    .sign("other.example/log", &ledger);
    assert_eq!(ask(0, vec![], elsewhere).status, 404);
    assert!(w.text().contains("does not verify"), "{}", w.text());
}

#[test]
fn evidence_bundles_check_offline_and_every_doctoring_is_refused_with_its_reason() {
    let data = demo_ledger();
    let dir = tempfile::tempdir().unwrap();
    let key = Store::open_reader(&data.join("db"))
        .unwrap()
        .identity()
        .unwrap()
        .ledger_public_key;
    let out = dir.path().join("bundle");
    let o = docket(&[
        "evidence",
        "--data",
        data.to_str().unwrap(),
        "--sql",
        "SELECT seq, agent, audience, method, operation, status FROM api_calls WHERE status >= 400 ORDER BY seq LIMIT 25",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(out.join("evidence.json")).unwrap()).unwrap();
    assert_eq!(bundle["rows"].as_array().unwrap().len(), 25);
    let check = |b: &Value, key: &str| {
        let path = dir.path().join(format!("b{}.json", rand_suffix()));
        std::fs::write(&path, b.to_string()).unwrap();
        let o = docket(&[
            "check-evidence",
            path.to_str().unwrap(),
            "--ledger-key",
            key,
        ]);
        (o.status.code().unwrap_or(-1), stdout(&o))
    };
    let (code, said) = check(&bundle, &key);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.starts_with("holds: 25 rows follow from 25 entries"),
        "{said}"
    );

    let mut changed = bundle.clone();
    changed["rows"][3][2] = json!("api.elsewhere.example");
    let (code, said) = check(&changed, &key);
    assert_eq!(code, 1);
    assert!(
        said.contains("rows do not follow from the entries"),
        "{said}"
    );

    let mut removed = bundle.clone();
    removed["entries"].as_array_mut().unwrap().remove(5);
    let (code, said) = check(&removed, &key);
    assert_eq!(code, 1);
    assert!(said.contains("which the bundle does not hold"), "{said}");

    // An entry's proof swapped for its proof against another (older) checkpoint.
    let seq = bundle["entries"][0]["seq"].as_u64().unwrap();
    let store = Store::open_reader(&data.join("db")).unwrap();
    let older = store.covering_checkpoint(seq).unwrap().unwrap().0;
    let newest = bundle["entries"][0]["tree_size"].as_u64().unwrap();
    assert!(older < newest, "the demo ledger needs two checkpoints");
    let o = docket(&[
        "prove",
        "inclusion",
        "--data",
        data.to_str().unwrap(),
        "--seq",
        &seq.to_string(),
        "--size",
        &older.to_string(),
    ]);
    let mut other = bundle.clone();
    other["entries"][0] = serde_json::from_str(&stdout(&o)).unwrap();
    let (code, said) = check(&other, &key);
    assert_eq!(code, 1);
    assert!(said.contains("a proof for another checkpoint"), "{said}");

    // Re-signed by someone else: refused against the pinned key, and as the bundle names it.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let forger_public = docket_schemas::encode_base64(forger.verifying_key().as_bytes());
    let cp = docket_schemas::Checkpoint::parse_unverified(bundle["checkpoint"].as_str().unwrap())
        .unwrap();
    let mut forged = bundle.clone();
    forged["checkpoint"] = json!(cp.sign(&cp.origin, &forger));
    forged["ledger_public_key"] = json!(forger_public);
    let (code, said) = check(&forged, &key);
    assert_eq!(code, 1);
    assert!(said.contains("not the ledger key you trust"), "{said}");
    let mut unknown = bundle.clone();
    unknown["checkpoint"] = json!(cp.sign(&cp.origin, &forger));
    let (code, said) = check(&unknown, &key);
    assert_eq!(code, 1);
    assert!(said.contains("no signature"), "{said}");

    // A query that is not a question about entries cannot be evidence.
    let o = docket(&[
        "evidence",
        "--data",
        data.to_str().unwrap(),
        "--sql",
        "SELECT created_seq AS seq, grant_id FROM grants_state",
        "--out",
        dir.path().join("state").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("derived state"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
