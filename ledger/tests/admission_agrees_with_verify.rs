//! Admission and `verify` reach the same verdict on every envelope: what admission refuses, verify flags when it is forced into a chain.

use std::collections::BTreeSet;

use docket_ledger::admission::{ChainTip, Incoming, NewEntry, Plan, admit};
use docket_ledger::chain::Entry;
use docket_ledger::registry::Registry;
use docket_ledger::store::{LedgerIdentity, Store};
use docket_ledger::verify::{Trust, verify};
use docket_schemas::{Envelope, EventId, Timestamp, encode_base64};
use docket_testkit::workload::{SplitMix64, Workload};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// A random batch: a deployment's setup, then well-formed, misbehaving, forged and
/// unauthorized envelopes, with some repeated (duplicates).
fn batch(seed: u64, n: usize) -> (Workload, Vec<Vec<u8>>) {
    let start = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
    let mut w = Workload::new(seed, start, 3, 6);
    w.forged_per_mille = 150;
    w.misbehaving_per_mille = 100;
    let mut out: Vec<Vec<u8>> = w.setup().into_iter().map(|p| p.envelope).collect();
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    for _ in 0..n {
        let p = if rng.chance(100) {
            w.forgery()
        } else {
            w.next_envelope()
        };
        out.push(p.envelope);
        if rng.chance(50) {
            let i = rng.below(out.len() as u64) as usize;
            out.push(out[i].clone());
        }
    }
    (w, out)
}

fn identity(w: &Workload) -> LedgerIdentity {
    LedgerIdentity {
        origin: "test.local/ledger".into(),
        admin_public_key: encode_base64(w.roles.admin.verifying_key().as_bytes()),
        ledger_public_key: encode_base64(ledger_key().verifying_key().as_bytes()),
    }
}

/// When the ledger received every envelope: a minute after the workload starts, so no
/// event is dated too far ahead.
fn received_us() -> i64 {
    Timestamp::parse("2026-11-22T08:01:00.000000Z")
        .unwrap()
        .as_micros()
}

/// The subject an envelope arrives on: its kind's, except for about one in 17 envelopes
/// (a wrong subject), chosen by content so a repeated envelope arrives the same way.
fn subject(envelope: &[u8]) -> String {
    let kind = Envelope::decode(envelope)
        .ok()
        .and_then(|e| e.event().ok())
        .map(|e| e.kind().to_string());
    match kind {
        Some(kind) if blake3::hash(envelope).as_bytes()[0] % 17 != 5 => {
            format!("docket.events.{kind}")
        }
        _ => "docket.events.x".into(),
    }
}

fn incoming(envelopes: &[Vec<u8>]) -> Vec<Incoming> {
    envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| Incoming {
            subject: subject(e),
            payload: e.clone().into(),
            source_seq: i as u64 + 1,
        })
        .collect()
}

/// Indexes of the envelopes admission appends, through the real store.
fn admitted(w: &Workload, envelopes: &[Vec<u8>]) -> BTreeSet<usize> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), &identity(w)).unwrap();
    let mut tip = ChainTip {
        seq: 0,
        head: [0; 32],
        registry: Registry::new(
            &w.roles.admin.verifying_key(),
            &ledger_key().verifying_key(),
        ),
        source_seq: 0,
    };
    let items = incoming(envelopes);
    let mut appended = BTreeSet::new();
    // Small batches, so duplicates land both within a batch and across batches.
    for chunk in items.chunks(7) {
        let plan = admit(&mut tip, chunk, received_us(), |ids| {
            store.stored_payloads(ids)
        })
        .unwrap();
        store.commit(&plan, &tip, None).unwrap();
        appended.extend(plan.appends.iter().map(|e| {
            let source = chunk
                .iter()
                .find(|i| i.payload == e.envelope)
                .map(|i| i.source_seq)
                .unwrap();
            source as usize - 1
        }));
    }
    appended
}

/// Indexes of the envelopes `verify` flags when every one is forced into the chain.
fn flagged(w: &Workload, envelopes: &[Vec<u8>]) -> BTreeSet<usize> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), &identity(w)).unwrap();
    let mut plan = Plan::default();
    let mut prev = [0u8; 32];
    let placeholder = Envelope::decode(&envelopes[0]).unwrap().event().unwrap();
    for (i, e) in envelopes.iter().enumerate() {
        let seq = i as u64 + 1;
        let subject = subject(e);
        let entry = Entry {
            seq,
            hash: [0; 32],
            prev,
            received_us: received_us(),
            subject: &subject,
            envelope: e,
        };
        let hash = entry.compute_hash();
        let event = Envelope::decode(e).ok().and_then(|env| env.event().ok());
        plan.appends.push(NewEntry {
            seq,
            hash,
            prev,
            received_us: received_us(),
            subject: subject.clone(),
            envelope: e.clone().into(),
            // An undecodable envelope still needs a unique id in the index.
            event_id: event
                .as_ref()
                .map_or(EventId((seq as u128 | 1 << 127).to_be_bytes()), |ev| ev.id),
            kind: event.as_ref().map_or(placeholder.kind(), |ev| ev.kind()),
            key_id: String::new(),
            event: event.unwrap_or_else(|| placeholder.clone()),
        });
        prev = hash;
    }
    let tip = ChainTip {
        seq: envelopes.len() as u64,
        head: prev,
        registry: Registry::new(
            &w.roles.admin.verifying_key(),
            &ledger_key().verifying_key(),
        ),
        source_seq: envelopes.len() as u64,
    };
    store.commit(&plan, &tip, None).unwrap();
    let report = verify(&store, &Trust::default(), &mut |_, _| {}).unwrap();
    assert!(
        report.problems_total as usize == report.problems.len(),
        "more problems than the report lists: raise PROBLEMS_MAX for this test"
    );
    report
        .problems
        .iter()
        .map(|p| p.seq.expect("every problem names its entry") as usize - 1)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn admission_appends_exactly_what_verify_accepts(seed in any::<u64>(), n in 20usize..60) {
        let (w, envelopes) = batch(seed, n);
        let appended = admitted(&w, &envelopes);
        let flagged = flagged(&w, &envelopes);
        let all: BTreeSet<usize> = (0..envelopes.len()).collect();
        let refused: BTreeSet<usize> = all.difference(&appended).copied().collect();
        // Something of each verdict, or the property says little.
        prop_assert!(!appended.is_empty() && !refused.is_empty());
        prop_assert_eq!(refused, flagged);
    }
}
