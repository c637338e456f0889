//! The NATS deployment of docs/NATS.md, really run: docs/nats/docket.conf with TLS, users and
//! per-identity permissions, the ledger and producers connecting as themselves, and the
//! attempts each identity must not be able to make.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use docket_schemas::*;
use docket_testkit::workload::Roles;

/// Makes a CA and a server certificate for 127.0.0.1 with openssl, as docs/NATS.md does.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=docket test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
}

struct Deployment {
    dir: tempfile::TempDir,
    nats: NatsServer,
    passwords: Vec<(String, String)>,
    agent_seed: String,
}

impl Deployment {
    fn start() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let agent = nkeys::KeyPair::new_user();
        let pw = |who: &str| {
            (
                who.to_string(),
                format!("pw-{who}-{}", rand::random::<u64>()),
            )
        };
        let passwords = vec![
            pw("ledger"),
            pw("admin"),
            pw("gateway"),
            pw("alice"),
            pw("witness"),
        ];
        let mut env: Vec<(String, String)> = passwords
            .iter()
            .map(|(who, p)| {
                (
                    format!("DOCKET_NATS_{}_PASSWORD", who.to_uppercase()),
                    p.clone(),
                )
            })
            .collect();
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        env.push(("DOCKET_NATS_SERVER_CERT".into(), path("server.pem")));
        env.push(("DOCKET_NATS_SERVER_KEY".into(), path("server-key.pem")));
        env.push(("DOCKET_NATS_AGENT_NKEY".into(), agent.public_key()));
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/nats/docket.conf");
        let nats =
            NatsServer::start_configured(&dir.path().join("nats"), Some(&config), &env).unwrap();
        Deployment {
            agent_seed: agent.seed().unwrap(),
            dir,
            nats,
            passwords,
        }
    }

    fn password(&self, who: &str) -> &str {
        &self.passwords.iter().find(|(w, _)| w == who).unwrap().1
    }

    /// The environment `docket` reads to connect as `who`.
    fn env_for(&self, who: &str) -> Vec<(String, String)> {
        vec![
            ("DOCKET_NATS_USER".into(), who.into()),
            ("DOCKET_NATS_PASSWORD".into(), self.password(who).into()),
            (
                "DOCKET_NATS_CA".into(),
                self.dir.path().join("ca.pem").to_str().unwrap().into(),
            ),
            ("DOCKET_NATS_INBOX_PREFIX".into(), format!("_INBOX.{who}")),
        ]
    }

    async fn client_as(&self, who: &str) -> Result<async_nats::Client, String> {
        docket_ledger::transport::connect(
            &self.nats.tls_url(),
            &docket_ledger::transport::NatsAuth {
                user: Some(who.into()),
                password: Some(self.password(who).into()),
                ca: Some(self.dir.path().join("ca.pem")),
                inbox_prefix: Some(format!("_INBOX.{who}")),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// `docket publish` of one unsigned event, as the NATS identity `who`, signed with `key`.
fn publish_as(
    d: &Deployment,
    who: &str,
    key: &Path,
    event: &serde_json::Value,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docket"));
    cmd.args([
        "publish",
        "--nats",
        &d.nats.tls_url(),
        "--wait",
        "10",
        "--key",
    ])
    .arg(key)
    .args(["-"])
    .envs(d.env_for(who));
    run_with_input(&mut cmd, format!("{event}\n").as_bytes())
}

#[test]
fn each_identity_does_only_its_own_part_over_tls() {
    let d = Deployment::start();
    let roles = Roles::from_seed(31);
    let data = d.dir.path().join("ledger");
    let env: Vec<(String, String)> = d.env_for("ledger");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut serve = Serve::start_env(&data, &d.nats.tls_url(), &roles, &[], &env_refs);
    wait_serving(&mut serve);
    let keys = d.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (admin_key, gateway_key) = (keys.join("admin.key"), keys.join("gateway.key"));
    docket_ledger::keyfile::write(&admin_key, &roles.admin).unwrap();
    docket_ledger::keyfile::write(&gateway_key, &roles.gateway).unwrap();
    let pk = roles.gateway.verifying_key();
    let registration = serde_json::json!({"kind": "key.registered",
        "key_id": key_id(pk.as_bytes()), "public_key": encode_base64(pk.as_bytes()),
        "name": "gateway", "kinds": ["api.called"]});
    let call = serde_json::json!({"kind": "api.called", "token_id": "t1", "agent": "a1",
        "audience": "https://api.github.com", "method": "GET", "operation": "/user",
        "status": 200, "source": "10.0.0.1"});

    // The admin registers the gateway; the gateway records a call: both appended.
    let o = publish_as(&d, "admin", &admin_key, &registration);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = publish_as(&d, "gateway", &gateway_key, &call);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(wait_for_entries(&mut serve, 2, Duration::from_secs(20)), 2);

    // The gateway may not publish another kind, even one its key could sign.
    let o = publish_as(&d, "gateway", &gateway_key, &registration);
    assert!(!o.status.success(), "{}", stdout(&o));

    let rt = runtime();
    rt.block_on(async {
        let gateway = d.client_as("gateway").await.unwrap();
        let admin = d.client_as("admin").await.unwrap();
        // Nor read anyone else's replies: the admin's publish acknowledgement reaches the
        // admin's own inbox subscription (the control) and none of the gateway's.
        let mut own = admin.subscribe("_INBOX.admin.>").await.unwrap();
        let mut snoops = Vec::new();
        for subject in ["_INBOX.>", "_INBOX.admin.>", "docket.events.>"] {
            snoops.push(gateway.subscribe(subject).await.unwrap());
        }
        gateway.flush().await.unwrap();
        let js = async_nats::jetstream::new(admin.clone());
        let other = roles.rogue.verifying_key();
        let e = Event {
            v: SCHEMA_VERSION,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: docket_ledger::clock::now().unwrap(),
            body: EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(other.as_bytes()),
                public_key: encode_base64(other.as_bytes()),
                name: "rogue".into(),
                kinds: vec![Kind::ApiCalled],
            }),
        };
        js.publish(
            "docket.events.key.registered",
            seal_event(&e, &roles.admin).into(),
        )
        .await
        .unwrap()
        .await
        .expect("the admin publishes its kinds");
        let seen =
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut own)).await;
        assert!(
            matches!(seen, Ok(Some(_))),
            "the control saw no acknowledgement"
        );
        for mut sub in snoops {
            let leaked =
                tokio::time::timeout(Duration::from_secs(1), futures::StreamExt::next(&mut sub))
                    .await;
            assert!(
                leaked.is_err(),
                "the gateway read a message meant for others"
            );
        }
        // ...nor consume, delete or purge the stream.
        let js = async_nats::jetstream::new(gateway.clone());
        assert!(js.get_stream("DOCKET_EVENTS").await.is_err());
        assert!(js.delete_stream("DOCKET_EVENTS").await.is_err());
        // Without credentials, or without TLS, nobody connects.
        let anonymous = docket_ledger::transport::connect(
            &d.nats.tls_url(),
            &docket_ledger::transport::NatsAuth {
                ca: Some(d.dir.path().join("ca.pem")),
                ..Default::default()
            },
        )
        .await;
        assert!(anonymous.is_err());
        let plain = docket_ledger::transport::connect(
            &d.nats.url(),
            &docket_ledger::transport::NatsAuth {
                user: Some("gateway".into()),
                password: Some(d.password("gateway").into()),
                ..Default::default()
            },
        )
        .await;
        assert!(plain.is_err(), "a plaintext connection was accepted");
        // A reply prefix nobody could listen on is refused before anything is sent.
        let wildcard = docket_ledger::transport::connect(
            &d.nats.tls_url(),
            &docket_ledger::transport::NatsAuth {
                inbox_prefix: Some(">".into()),
                ..Default::default()
            },
        )
        .await;
        assert!(
            wildcard.is_err_and(|e| e.to_string().contains("inbox prefix")),
            "a wildcard inbox prefix was accepted"
        );
        // The agent connects by nkey, and may ask the vault only for tokens.
        let seed = d.dir.path().join("agent.nk");
        std::fs::write(&seed, &d.agent_seed).unwrap();
        let agent = docket_ledger::transport::connect(
            &d.nats.tls_url(),
            &docket_ledger::transport::NatsAuth {
                nkey: Some(seed),
                ca: Some(d.dir.path().join("ca.pem")),
                inbox_prefix: Some("_INBOX.agent".into()),
                ..Default::default()
            },
        )
        .await
        .expect("the agent's nkey");
        assert!(
            agent
                .publish("docket.events.api.called", "x".into())
                .await
                .is_ok()
        );
        agent.flush().await.unwrap();
    });
    // The agent's publish on an events subject was refused by the server: nothing new.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(head(&data).unwrap().0, GENESIS_ENTRIES + 3);
    assert!(
        quarantine_codes(&data).is_empty(),
        "{:?}",
        quarantine_codes(&data)
    );
    serve.stop();
    assert_eq!(verify(&data).0, 0);
}
