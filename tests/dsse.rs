//! Publishing with a standard DSSE library: securesystemslib (Python) signs, nats-py publishes, the real `docket serve` admits, `docket verify` and the independent verifier agree.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use docket_schemas::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

fn seed_hex(k: &SigningKey) -> String {
    k.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn registration(k: &SigningKey, name: &str, kinds: Vec<Kind>) -> Vec<u8> {
    let pk = k.verifying_key();
    let event = Event {
        v: 1,
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        ts: docket_ledger::clock::now().unwrap(),
        body: EventBody::KeyRegistered(KeyRegistered {
            key_id: key_id(pk.as_bytes()),
            public_key: encode_base64(pk.as_bytes()),
            name: name.into(),
            kinds,
        }),
    };
    event.to_payload()
}

/// Runs tests/dsse_publish.py on a job; returns its output lines as JSON. Fails (never
/// skips) when Python or its packages are missing.
fn publish_with_securesystemslib(job: &Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dsse_publish.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/dsse_publish.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn envelopes_from_securesystemslib_are_admitted_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let roles = docket_testkit::workload::Roles::from_seed(rand::random());
    let data = dir.path().join("ledger");
    let mut serve = Serve::start(&data, &nats.url(), &roles);
    let (gateway, alice, bob, rogue) = (
        SigningKey::from_bytes(&rand::random()),
        SigningKey::from_bytes(&rand::random()),
        SigningKey::from_bytes(&rand::random()),
        SigningKey::from_bytes(&rand::random()),
    );

    // The admin registers the keys by their Docket key ids, with Docket's own signer.
    let rt = runtime();
    rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        for (k, name, kinds) in [
            (&gateway, "gateway", vec![Kind::ApiCalled]),
            (&alice, "user:alice", vec![Kind::ApprovalDecided]),
            (&bob, "user:bob", vec![Kind::ApprovalDecided]),
        ] {
            let envelope = seal(&registration(k, name, kinds), &roles.admin);
            js.publish("docket.events.key.registered", envelope.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    assert_eq!(wait_for_entries(&mut serve, 3, Duration::from_secs(20)), 3);

    let call = json!({"kind": "api.called", "token_id": "tok-1", "agent": "agent-7",
        "audience": "https://api.github.com", "method": "GET", "operation": "/repos/acme/web",
        "status": 200, "source": "10.0.0.7"});
    let decided = |user: &str| {
        json!({"kind": "approval.decided", "approval_id": "appr-1", "user": user,
            "decision": "approved", "method": "push"})
    };
    let job = json!({"nats": nats.url(), "events": [
        // securesystemslib's default keyid: an alias of the gateway's registered key.
        {"seed": seed_hex(&gateway), "keyid": null, "event": call},
        // A keyid of the producer's own choosing: the event's author (user:alice) is tried.
        {"seed": seed_hex(&alice), "keyid": "alice's phone", "event": decided("alice")},
        // Alice's key, speaking for bob under a made-up keyid: bob's keys are tried, and fail.
        {"seed": seed_hex(&alice), "keyid": "bob's phone", "event": decided("bob")},
        // A key nobody registered: its default keyid names no key, and api.called names no author.
        {"seed": seed_hex(&rogue), "keyid": null, "event": call},
    ]});
    let published = publish_with_securesystemslib(&job);
    assert_eq!(published.len(), 4, "{published:?}");
    assert_eq!(
        published[0]["keyid"],
        securesystemslib_key_id(gateway.verifying_key().as_bytes()),
        "Docket derives securesystemslib's default keyid as the library does"
    );
    assert_ne!(
        published[0]["keyid"],
        key_id(gateway.verifying_key().as_bytes())
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while quarantine_codes(&data).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(wait_for_entries(&mut serve, 5, Duration::from_secs(20)), 5);
    let ids: Vec<String> = chain_ids(&data)
        .iter()
        .map(|(_, id)| id.to_string())
        .collect();
    for p in &published[..2] {
        assert!(
            ids.contains(&p["id"].as_str().unwrap().to_string()),
            "{p} was not appended: {ids:?}, quarantine {:?}",
            quarantine_codes(&data)
        );
    }
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(
        quarantine_codes(&data),
        vec!["bad_signature", "unknown_key"],
        "{}",
        serve.log_text()
    );
    serve.stop();

    let (code, out) = verify(&data);
    assert_eq!(code, 0, "{out}");
    let export = dir.path().join("export.jsonl");
    let o = docket(&[
        "export",
        "--data",
        data.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_export.py");
    let run = |file: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = run(&export);
    assert!(
        ok.status.success(),
        "{}{}",
        stdout(&ok),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout(&ok).starts_with("intact:"), "{}", stdout(&ok));
    // The independent verifier resolves keyids itself: give alice's decision to bob and it
    // must find that no key of bob's made the signature.
    let text = std::fs::read_to_string(&export).unwrap();
    let tampered: String = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if v["type"] != "entry" || v["seq"] != GENESIS_ENTRIES + 5 {
                return format!("{l}\n");
            }
            let env: Value =
                serde_json::from_slice(&decode_base64(v["envelope"].as_str().unwrap()).unwrap())
                    .unwrap();
            let payload = decode_base64(env["payload"].as_str().unwrap()).unwrap();
            let payload = String::from_utf8(payload)
                .unwrap()
                .replace("\"user\": \"alice\"", "\"user\": \"bob\"");
            assert!(payload.contains("\"bob\""), "{payload}");
            let mut env = env;
            env["payload"] = json!(encode_base64(payload.as_bytes()));
            let mut v = v;
            v["envelope"] = json!(encode_base64(env.to_string().as_bytes()));
            format!("{v}\n")
        })
        .collect();
    let bad = dir.path().join("tampered.jsonl");
    std::fs::write(&bad, tampered).unwrap();
    let no = run(&bad);
    assert!(!no.status.success(), "{}", stdout(&no));
    assert!(
        stdout(&no).contains("not made by the keys of user:bob"),
        "{}{}",
        stdout(&no),
        String::from_utf8_lossy(&no.stderr)
    );
}
