//! The command line with the real binary: keys, serve, publish (and its verdicts), log, verify;
//! start-up and error messages a new user meets; and a full disk, where acknowledgement stops,
//! the process says why, and nothing acknowledged is lost.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn key_line(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .to_string()
}

fn publish(url: &str, key: &std::path::Path, lines: &str) -> std::process::Output {
    publish_args(url, key, &[], lines)
}

#[test]
fn readme_walkthrough_keys_serve_publish_log_verify() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let (admin_key, gw_key) = (dir.path().join("admin.key"), dir.path().join("gateway.key"));
    let admin = stdout(&docket(&[
        "keys",
        "new",
        "--out",
        admin_key.to_str().unwrap(),
    ]));
    let gw = stdout(&docket(&["keys", "new", "--out", gw_key.to_str().unwrap()]));
    let again = docket(&["keys", "new", "--out", admin_key.to_str().unwrap()]);
    assert!(!again.status.success(), "overwrote a key file");
    let data = dir.path().join("ledger");
    let mut serve = Command::new(DOCKET)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--nats",
            &nats.url(),
            "--admin-key",
            &key_line(&admin, "public_key"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let register = format!(
        r#"{{"kind":"key.registered","key_id":"{}","public_key":"{}","name":"gateway","kinds":["api.called"]}}"#,
        key_line(&gw, "key_id"),
        key_line(&gw, "public_key")
    );
    let o = publish(&nats.url(), &admin_key, &register);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let call = r#"{"kind":"api.called","token_id":"tok-1","agent":"agent-7","audience":"https://api.github.com","method":"GET","operation":"/repos/acme/web","status":200,"source":"10.0.0.7"}"#;
    let o = publish(&nats.url(), &gw_key, &format!("{call}\n{call}\n"));
    assert!(
        stdout(&o).contains("published 2: JetStream stored 2"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("not accepted by it"),
        "the summary must say what stored means: {}",
        stdout(&o)
    );
    let bad = publish(
        &nats.url(),
        &gw_key,
        r#"{"kind":"api.called","agent":"agent-7"}"#,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("line 1: invalid api.called fields: missing field"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // serve's detector records its rule set (rules.set) as it starts, so that entry may
    // land anywhere among these: the calls are found by kind, the chain checked whole.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let log = stdout(&docket(&[
            "log",
            "--data",
            data.to_str().unwrap(),
            "--from",
            "2",
        ]));
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls = lines
            .iter()
            .filter(|l| l["event"]["kind"] == "api.called")
            .count();
        if calls >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for pair in lines.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["hash"]);
    }
    let calls: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"]["kind"] == "api.called")
        .collect();
    assert_eq!(calls.len(), 2, "{lines:?}");
    assert_eq!(calls[0]["event"]["operation"], "/repos/acme/web");
    assert_eq!(calls[0]["key_id"], key_line(&gw, "key_id").as_str());
    let others: Vec<&serde_json::Value> = lines
        .iter()
        .map(|l| &l["event"]["kind"])
        .filter(|k| *k != "api.called")
        .collect();
    assert!(
        others
            .iter()
            .all(|k| *k == "key.registered" || *k == "rules.set"),
        "{others:?}"
    );
    let (code, out) = verify(&data);
    assert_eq!(code, 0, "{out}");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().to_string())
        .status();
    assert!(
        serve.wait().unwrap().success(),
        "serve did not stop cleanly on SIGTERM"
    );
    assert_eq!(verify(&data).0, 0);
    let missing = docket(&[
        "verify",
        "--data",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no ledger here"));
}

/// A full disk stops acknowledgement with a reason; moved to a bigger disk, the ledger takes everything.
#[test]
fn full_disk_stops_acknowledgement_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&small)
        .status();
    // Mounting needs root, as CI has: a test that cannot set up a full disk must not pass.
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "cannot mount a tmpfs to fill (run the tests as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let mut w = docket_testkit::workload::Workload::new(
        8,
        docket_schemas::Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
        5,
        20,
    );
    let roles = docket_testkit::workload::Roles::from_seed(8);
    let data = small.join("ledger");
    let mut serve = Serve::start(&data, &nats.url(), &roles);
    let mut items = w.setup();
    items.extend((0..40_000).map(|_| w.next_envelope()));
    let rt = runtime();
    let acked = rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        let mut p =
            docket_ledger::publisher::Publisher::new(docket_ledger::publisher::Sink::Nats(js));
        let mut n = 0u64;
        for i in items {
            p.send(i.subject, i.envelope, i.id, &mut |_, r| {
                n += u64::from(r.is_ok())
            })
            .await
            .unwrap();
        }
        p.flush(&mut |_, r| n += u64::from(r.is_ok())).await;
        n
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(s)) = serve.child.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running on a full disk"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = serve.log_text();
    assert!(
        log.contains("write failed, acknowledgement stopped"),
        "{log}"
    );
    assert!(
        log.contains("No space left") || log.contains("no space"),
        "{log}"
    );
    let held = head(&data).unwrap().0;
    assert!(
        held < GENESIS_ENTRIES + acked,
        "the disk was not full after all ({held} entries for {acked} acked)"
    );
    // Move the ledger to a bigger disk: everything JetStream acknowledged arrives, once.
    let big = dir.path().join("big");
    copy_dir(&data, &big);
    let mut serve = Serve::start(&big, &nats.url(), &roles);
    assert_eq!(
        wait_for_entries(&mut serve, acked, Duration::from_secs(120)),
        acked
    );
    let ids = chain_ids(&big);
    assert_eq!(ids.len() as u64, acked);
    assert_eq!(
        ids.iter()
            .map(|(_, id)| *id)
            .collect::<std::collections::HashSet<_>>()
            .len() as u64,
        acked
    );
    assert_eq!(verify(&big).0, 0);
}

fn publish_args(
    url: &str,
    key: &std::path::Path,
    extra: &[&str],
    lines: &str,
) -> std::process::Output {
    run_with_input(
        Command::new(DOCKET)
            .args(["publish", "--nats", url, "--key"])
            .arg(key)
            .args(extra),
        lines.as_bytes(),
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `publish --wait` reports the ledger's verdict on each event, not JetStream's ack.
#[test]
fn publish_wait_reports_appended_duplicate_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let roles = docket_testkit::workload::Roles::from_seed(31);
    let data = dir.path().join("ledger");
    let _serve = Serve::start(&data, &nats.url(), &roles);
    let admin_key = dir.path().join("admin.key");
    docket_ledger::keyfile::write(&admin_key, &roles.admin).unwrap();
    let gw_key = dir.path().join("gateway.key");
    assert!(
        docket(&["keys", "new", "--out", gw_key.to_str().unwrap()])
            .status
            .success()
    );
    let reg = docket(&[
        "keys",
        "registration",
        gw_key.to_str().unwrap(),
        "--name",
        "gateway",
        "--kind",
        "api.called",
    ]);
    assert!(reg.status.success(), "{}", stderr(&reg));
    let o = publish_args(&nats.url(), &admin_key, &["--wait", "30"], &stdout(&reg));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("key.registered"), "{}", stdout(&o));
    assert!(stdout(&o).contains("appended at seq 2"), "{}", stdout(&o));

    let call = r#"{"id":"01900000-0000-7000-8000-0000000000a1","kind":"api.called","token_id":"tok-1","agent":"agent-7","audience":"https://api.github.com","method":"GET","operation":"/x","status":200,"source":"10.0.0.7"}"#;
    let o = publish_args(&nats.url(), &gw_key, &["--wait", "30"], call);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("appended at seq 3"), "{}", stdout(&o));
    // The same event again: JetStream knows the id, the ledger holds it once.
    let o = publish_args(&nats.url(), &gw_key, &["--wait", "30"], call);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("duplicate: already in the chain at seq 3"),
        "{}",
        stdout(&o)
    );
    // A kind the gateway may not emit: JetStream stores it, the ledger quarantines it.
    let suspend =
        r#"{"kind":"agent.suspended","agent":"agent-7","by":"gateway","reason":"testing"}"#;
    let plain = publish_args(&nats.url(), &gw_key, &[], suspend);
    assert!(
        plain.status.success(),
        "without --wait only JetStream's ack counts"
    );
    let o = publish_args(&nats.url(), &gw_key, &["--wait", "30"], suspend);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("QUARANTINED unauthorized"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("quarantined 1"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("did not reach the chain"),
        "{}",
        stderr(&o)
    );
}

/// A missing NATS server fails fast and clearly, and leaves nothing on disk.
#[test]
fn serve_without_nats_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let started = Instant::now();
    // Port 1 on loopback: nothing listens there.
    let o = docket(&[
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--nats",
        "nats://127.0.0.1:1",
        "--admin-key",
        &docket_schemas::encode_base64(
            docket_testkit::workload::Roles::from_seed(1)
                .admin
                .verifying_key()
                .as_bytes(),
        ),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("nats-server -js"), "{err}");
    assert!(
        err.contains("retrying for up to"),
        "the retry is said out loud: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !data.exists(),
        "serve created {} before reaching NATS",
        data.display()
    );
    // A client says it once, not "refused: refused".
    let key = dir.path().join("k.key");
    assert!(
        docket(&["keys", "new", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let o = publish_args("nats://127.0.0.1:1", &key, &[], "{}");
    let err = stderr(&o);
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
}

/// A restart needs no admin key; a second serve on the same directory says why it cannot start.
#[test]
fn serve_restarts_without_admin_key_and_refuses_a_second_instance() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let roles = docket_testkit::workload::Roles::from_seed(32);
    let data = dir.path().join("ledger");
    let mut first = Serve::start(&data, &nats.url(), &roles);
    let deadline = Instant::now() + Duration::from_secs(20);
    while head(&data).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = docket(&[
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--nats",
        &nats.url(),
    ]);
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(err.contains("is in use by another process"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "said once: {err}");
    first.stop();
    // No --admin-key: the ledger recorded it.
    let mut restarted = Command::new(DOCKET)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--nats",
            &nats.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        restarted.try_wait().unwrap().is_none(),
        "serve without --admin-key exited on a restart"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &restarted.id().to_string()])
        .status();
    assert!(restarted.wait().unwrap().success());
    // A new directory without an admin key says what to pass.
    let o = docket(&[
        "serve",
        "--data",
        dir.path().join("new").to_str().unwrap(),
        "--nats",
        &nats.url(),
    ]);
    assert!(stderr(&o).contains("--admin-key"), "{}", stderr(&o));
}

/// Key files show their public half for scripts; help and client output read cleanly.
#[test]
fn keys_show_and_quiet_clients() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let made = stdout(&docket(&["keys", "new", "--out", key.to_str().unwrap()]));
    let shown = stdout(&docket(&["keys", "show", key.to_str().unwrap()]));
    assert_eq!(made, shown);
    let pk = stdout(&docket(&[
        "keys",
        "show",
        key.to_str().unwrap(),
        "--public-key",
    ]));
    assert_eq!(pk.trim(), key_line(&made, "public_key"));
    let id = stdout(&docket(&[
        "keys",
        "show",
        key.to_str().unwrap(),
        "--key-id",
    ]));
    assert_eq!(id.trim(), key_line(&made, "key_id"));
    assert!(!shown.contains("secret"));
    let bad = docket(&[
        "keys",
        "registration",
        key.to_str().unwrap(),
        "--name",
        "x",
        "--kind",
        "api.caled",
    ]);
    assert!(
        stderr(&bad).contains("unknown event kind \"api.caled\""),
        "{}",
        stderr(&bad)
    );
    assert!(
        stderr(&bad).contains("api.called"),
        "the error lists the kinds"
    );
    let help = stdout(&docket(&["log", "--help"]));
    assert!(!help.contains("18446744073709551615"), "{help}");
    let help = stdout(&docket(&["grant", "--help"]));
    assert!(help.contains("Most API calls"), "{help}");
    assert!(help.contains("<SECONDS>"), "{help}");

    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let o = publish_args(
        &nats.url(),
        &key,
        &[],
        r#"{"kind":"agent.suspended","agent":"a","by":"b","reason":"c"}"#,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("connected successfully"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_refuses_a_config_policy_the_chain_lacks_until_the_admin_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let roles = docket_testkit::workload::Roles::from_seed(21);
    let data = dir.path().join("ledger");
    let config = dir.path().join("docket.toml");
    std::fs::write(&config, "[policy]\napproval_ttl_s = 120\n").unwrap();
    let admin_file = dir.path().join("admin.key");
    docket_ledger::keyfile::write(&admin_file, &roles.admin).unwrap();
    let data_s = data.to_str().unwrap();
    let config_s = config.to_str().unwrap();

    // A new ledger's policy is the documented defaults; the config wants another.
    let mut serve = Serve::start_with(&data, &nats.url(), &roles, &["--config", config_s]);
    let status = serve.child.wait().unwrap();
    let log = serve.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("approval_ttl_s 300 -> 120"), "{log}");
    assert!(
        log.contains(&format!(
            "docket policy set --data {data_s} --config {config_s} --key ADMIN.key"
        )),
        "{log}"
    );

    // Only the admin's key records it.
    let rogue_file = dir.path().join("rogue.key");
    docket_ledger::keyfile::write(&rogue_file, &roles.rogue).unwrap();
    let set = |key: &str| {
        docket(&[
            "policy", "set", "--data", data_s, "--config", config_s, "--key", key,
        ])
    };
    let o = set(rogue_file.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not this ledger's admin key"));
    let o = set(admin_file.to_str().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The defaults at seq 1 (the ledger's key), the admin's change at seq 2.
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&docket(&["policy", "show", "--data", data_s]))).unwrap();
    assert_eq!(shown["approval_ttl_s"], 120);
    assert_eq!(shown["revision"], 2);
    assert_eq!(shown["set_seq"], 2);
    let before: serde_json::Value = serde_json::from_str(&stdout(&docket(&[
        "policy", "show", "--data", data_s, "--as-of", "1",
    ])))
    .unwrap();
    assert_eq!(before["approval_ttl_s"], 300);
    assert_eq!(before["set_seq"], 1);
    // Asked again, there is nothing to record.
    let o = set(admin_file.to_str().unwrap());
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already has these settings"));

    // Now serve starts with that config, and the chain verifies.
    let mut serve = Serve::start_with(&data, &nats.url(), &roles, &["--config", config_s]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serve.log_text().contains("ledger serving") && Instant::now() < deadline {
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    serve.stop();
    assert_eq!(verify(&data).0, 0);
    assert_eq!(head(&data).unwrap().0, 2);
}

#[test]
fn a_policy_revision_can_only_step_by_one_so_none_can_freeze_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let roles = docket_testkit::workload::Roles::from_seed(22);
    let data = dir.path().join("ledger");
    let mut serve = Serve::start(&data, &nats.url(), &roles);
    let admin_file = dir.path().join("admin.key");
    docket_ledger::keyfile::write(&admin_file, &roles.admin).unwrap();
    let publish = |revision: u64| {
        let line = format!(
            r#"{{"kind":"policy.set","revision":{revision},"step_up_max_age_s":300,"approval_ttl_s":60,"token_ttl_max_s":300,"request_skew_max_s":300,"unauthenticated_recorded_per_s":50}}"#
        );
        let o = run_with_input(
            Command::new(DOCKET).args([
                "publish",
                "--nats",
                &nats.url(),
                "--key",
                admin_file.to_str().unwrap(),
                "--wait",
                "30",
            ]),
            line.as_bytes(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // The largest revision is recorded but not applied; the next one still is.
    publish(u64::MAX);
    publish(2);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&docket(&[
        "policy",
        "show",
        "--data",
        data.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(shown["revision"], 2);
    assert_eq!(shown["approval_ttl_s"], 60);
    let findings = stdout(&docket(&["findings", "--data", data.to_str().unwrap()]));
    assert!(findings.contains("policy.revision_not_next"), "{findings}");
    serve.stop();
    // A config setting out of range is refused by name before anything else.
    let config = dir.path().join("docket.toml");
    std::fs::write(&config, "[policy]\napproval_ttl_s = 0\n").unwrap();
    let mut bad = Serve::start_with(
        &data,
        &nats.url(),
        &roles,
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(bad.child.wait().unwrap().code(), Some(2));
    assert!(
        bad.log_text()
            .contains("[policy] approval_ttl_s: 0 is outside 1..=2592000"),
        "{}",
        bad.log_text()
    );
}
