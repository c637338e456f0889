//! End to end through a real nats-server and the real `docket serve`: order, restarts, crashes, rejections.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use docket_ledger::publisher::{Publisher, Sink};
use docket_schemas::{EventId, Timestamp};
use docket_testkit::workload::{Published, Roles, Workload};

fn start_ts() -> Timestamp {
    Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap()
}

/// Publishes in order; returns the ids JetStream acknowledged, in publish order.
async fn publish(js: &async_nats::jetstream::Context, items: Vec<Published>) -> Vec<EventId> {
    let ids: Vec<Option<EventId>> = items.iter().map(|p| p.id).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut p = Publisher::new(Sink::Nats(js.clone()));
    let a = Arc::clone(&acked);
    let mut on_ack = move |i: u64, r: Result<docket_ledger::publisher::Acked, String>| {
        if r.is_ok() {
            a.lock().unwrap().push(i);
        }
    };
    for item in items {
        if p.send(item.subject, item.envelope, item.id, &mut on_ack)
            .await
            .is_err()
        {
            break;
        }
    }
    p.flush(&mut on_ack).await;
    let mut idx = acked.lock().unwrap().clone();
    idx.sort();
    idx.into_iter().filter_map(|i| ids[i as usize]).collect()
}

#[test]
fn ten_thousand_events_keep_each_publishers_order_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut a = Workload::new(1, start_ts(), 5, 20);
    let mut b = Workload::new(2, start_ts(), 5, 20);
    b.roles = Roles::from_seed(1);
    let mut serve = Serve::start(&data, &nats.url(), &a.roles);
    let rt = runtime();
    let (setup, first, second) = rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        let setup = publish(&js, a.setup()).await;
        let _ = b.setup();
        let items_a: Vec<Published> = (0..5_000).map(|_| a.next_envelope()).collect();
        let items_b: Vec<Published> = (0..5_000).map(|_| b.next_envelope()).collect();
        let js2 = jetstream(&nats.url()).await;
        let (x, y) = tokio::join!(publish(&js, items_a), publish(&js2, items_b));
        (setup, x, y)
    });
    assert_eq!((first.len(), second.len()), (5_000, 5_000));
    let total = (setup.len() + 10_000) as u64;
    assert_eq!(
        wait_for_entries(&mut serve, total, Duration::from_secs(120)),
        total,
        "{}",
        serve.log_text()
    );
    let chain = chain_ids(&data);
    assert_eq!(chain.len() as u64, total);
    let pos: HashMap<EventId, u64> = chain.iter().map(|(s, id)| (*id, *s)).collect();
    for list in [&setup, &first, &second] {
        let seqs: Vec<u64> = list.iter().map(|id| pos[id]).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a publisher's events are out of order in the chain"
        );
    }
    let (code, out) = verify(&data);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("intact: {} entries", GENESIS_ENTRIES + total)),
        "{out}"
    );
    let before = head(&data).unwrap();
    serve.stop();
    assert!(serve.log_text().contains("ledger stopped cleanly"));
    let _serve = Serve::start(&data, &nats.url(), &a.roles);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        head(&data).unwrap(),
        before,
        "head hash changed across restart"
    );
    assert_eq!(verify(&data).0, 0);
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(3, start_ts(), 5, 20);
    let roles = Roles::from_seed(3);
    let setup = w.setup();
    let items: Vec<Published> = (0..30_000).map(|_| w.next_envelope()).collect();
    let rt = runtime();
    let url = nats.url();
    // The deployment's keys are registered before the crashes start. (After a crash,
    // JetStream redelivers what the dead instance held after what it delivers next: an
    // event whose key registration is still pending redelivery is quarantined as
    // unknown_key. A known limit of ordering across crashes, not what this test is about.)
    let n_setup = setup.len() as u64;
    let mut acked_setup = rt.block_on(async { publish(&jetstream(&url).await, setup).await });
    let mut first = Serve::start(&data, &nats.url(), &roles);
    assert_eq!(
        wait_for_entries(&mut first, n_setup, Duration::from_secs(30)),
        n_setup
    );
    first.kill9();
    let publisher = rt.spawn(async move {
        let js = jetstream(&url).await;
        let mut acked = std::mem::take(&mut acked_setup);
        for chunk in items.chunks(250) {
            acked.extend(publish(&js, chunk.to_vec()).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });
    let mut rng = docket_testkit::workload::SplitMix64::new(99);
    let cycles = 24;
    for cycle in 0..cycles {
        let mut serve = Serve::start(&data, &nats.url(), &roles);
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        serve.kill9();
        let (code, out) = verify(&data);
        assert_eq!(
            code, 0,
            "cycle {cycle}: chain does not verify after SIGKILL: {out}"
        );
    }
    let acked = rt.block_on(publisher).unwrap();
    let mut serve = Serve::start(&data, &nats.url(), &roles);
    let want = acked.len() as u64;
    let got = wait_for_entries(&mut serve, want, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let chain = chain_ids(&data);
    let in_chain: HashSet<EventId> = chain.iter().map(|(_, id)| *id).collect();
    assert_eq!(in_chain.len(), chain.len(), "an event was appended twice");
    let missing = acked.iter().filter(|id| !in_chain.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} acknowledged events are missing (chain has {got}): {}",
        serve.log_text()
    );
    assert_eq!(
        chain.len(),
        acked.len(),
        "the chain holds events nobody had acknowledged"
    );
    assert_eq!(verify(&data).0, 0);
    // The projection written with each batch equals a replay from genesis, after all those crashes.
    let rebuilt = docket(&["state", "rebuild", "--data", data.to_str().unwrap()]);
    assert!(rebuilt.status.success(), "{}", stdout(&rebuilt));
    serve.stop();
}

#[test]
fn nats_server_restart_during_ingest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(4, start_ts(), 5, 20);
    let roles = Roles::from_seed(4);
    let mut serve = Serve::start(&data, &nats.url(), &roles);
    let rt = runtime();
    let url = nats.url();
    let setup = w.setup();
    let batches: Vec<Vec<Published>> = (0..3)
        .map(|_| (0..3_000).map(|_| w.next_envelope()).collect())
        .collect();
    let mut acked = rt.block_on(async { publish(&jetstream(&url).await, setup).await });
    let mut batches = batches.into_iter();
    acked.extend(
        rt.block_on(async { publish(&jetstream(&url).await, batches.next().unwrap()).await }),
    );
    // Restart while the ledger is still working through the first batch.
    nats.restart().unwrap();
    for batch in batches {
        acked.extend(rt.block_on(async { publish(&jetstream(&url).await, batch).await }));
    }
    let want = acked.len() as u64;
    assert_eq!(
        wait_for_entries(&mut serve, want, Duration::from_secs(120)),
        want
    );
    let in_chain: HashSet<EventId> = chain_ids(&data).into_iter().map(|(_, id)| id).collect();
    assert!(
        acked.iter().all(|id| in_chain.contains(id)),
        "an acknowledged event is missing after the NATS restart"
    );
    assert_eq!(verify(&data).0, 0);
}

#[test]
fn bad_envelopes_are_quarantined_with_their_reason_and_the_chain_is_untouched() {
    use docket_schemas::*;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let data = dir.path().join("ledger");
    let mut w = Workload::new(5, start_ts(), 2, 3);
    let roles = Roles::from_seed(5);
    let _serve = Serve::start(&data, &nats.url(), &roles);
    let setup = w.setup();
    let n_setup = setup.len() as u64;
    let good = w.next_envelope();
    let event = Envelope::decode(&good.envelope).unwrap().event().unwrap();
    let forged = {
        let env = Envelope::decode(&good.envelope).unwrap();
        let wire = EnvelopeWire {
            payload: encode_base64(
                &Event {
                    ts: Timestamp::from_micros(event.ts.as_micros() + 1).unwrap(),
                    ..event.clone()
                }
                .to_payload(),
            )
            .into(),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![envelope::EnvelopeSignature {
                keyid: env.key_id.clone(),
                sig: encode_base64(&env.signature.to_bytes()),
            }],
        };
        serde_json::to_vec(&wire).unwrap()
    };
    let unauthorized = Event {
        body: EventBody::AgentSuspended(AgentSuspended {
            agent: "agent-1".into(),
            by: "gw".into(),
            reason: "x".into(),
        }),
        ..event.clone()
    };
    let wrong_v = String::from_utf8(event.to_payload())
        .unwrap()
        .replacen("\"v\":1", "\"v\":2", 1);
    let mut oversize = seal_event(&event, &roles.gateway);
    oversize.extend(std::iter::repeat_n(b' ', limits::ENVELOPE_BYTES_MAX));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_signature", forged),
        ("unknown_key", seal_event(&event, &roles.rogue)),
        (
            "unauthorized_kind",
            seal_event(&unauthorized, &roles.gateway),
        ),
        ("malformed_envelope", b"{\"payload\":".to_vec()),
        (
            "unsupported_version",
            seal(wrong_v.as_bytes(), &roles.gateway),
        ),
        (
            "unsigned",
            format!(
                r#"{{"payload":"{}","payloadType":"{PAYLOAD_TYPE}","signatures":[]}}"#,
                encode_base64(&event.to_payload())
            )
            .into_bytes(),
        ),
    ];
    let rt = runtime();
    rt.block_on(async {
        let js = jetstream(&nats.url()).await;
        publish(&js, setup).await;
        let items = cases
            .iter()
            .map(|(_, bytes)| Published {
                subject: subject_of(bytes),
                envelope: bytes.clone(),
                id: None,
                expect: docket_testkit::workload::Expect::Append,
            })
            .collect();
        publish(&js, items).await;
        // Over the envelope limit, JetStream itself refuses it (the stream's max message
        // size): it never reaches the ledger, nor costs it memory.
        let refused = match js
            .publish("docket.events.api.called", oversize.into())
            .await
        {
            Err(_) => true,
            Ok(ack) => ack.await.is_err(),
        };
        assert!(refused, "JetStream stored an envelope over the limit");
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while quarantine_codes(&data).len() < cases.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let codes = quarantine_codes(&data);
    let expected: Vec<String> = cases.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(codes, expected);
    assert_eq!(
        head(&data).unwrap().0,
        GENESIS_ENTRIES + n_setup,
        "a bad envelope entered the chain"
    );
    let out = stdout(&docket(&["quarantine", "--data", data.to_str().unwrap()]));
    assert!(out.contains("is not registered"), "{out}");
    assert!(out.contains("unsupported schema version 2"), "{out}");
    assert_eq!(verify(&data).0, 0);
}
