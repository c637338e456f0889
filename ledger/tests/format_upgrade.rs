//! A store written before the Merkle tree (format 1: no tree nodes, checkpoints naming the
//! chain's head) is brought up to date when a ledger opens it, or refused when its
//! checkpoints do not match its chain.

use docket_ledger::admission::{ChainTip, Incoming, admit};
use docket_ledger::ingest::{CheckpointPolicy, Ledger};
use docket_ledger::registry::Registry;
use docket_ledger::store::{LedgerIdentity, Store, decode_record};
use docket_ledger::verify::{Trust, verify};
use docket_schemas::{Checkpoint, Timestamp, encode_base64};
use docket_testkit::workload::Workload;
use ed25519_dalek::SigningKey;

const ORIGIN: &str = "test.local/ledger";

/// Writes a format-1 store in `dir`: entries committed without tree nodes, checkpoints at
/// 10 and at the tip naming the head (the one at `lie_at` names another); returns the size.
fn format_1_store(dir: &std::path::Path, key: &SigningKey, lie_at: Option<u64>) -> u64 {
    let start = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
    let mut w = Workload::new(11, start, 3, 6);
    let mut published = w.setup();
    published.extend((0..40).map(|_| w.next_envelope()));
    let identity = LedgerIdentity {
        origin: ORIGIN.into(),
        admin_public_key: encode_base64(w.roles.admin.verifying_key().as_bytes()),
        ledger_public_key: encode_base64(key.verifying_key().as_bytes()),
    };
    let store = Store::open(dir, &identity).unwrap();
    let mut tip = ChainTip {
        seq: 0,
        head: [0; 32],
        registry: Registry::new(&w.roles.admin.verifying_key(), &key.verifying_key()),
        source_seq: 0,
    };
    let items: Vec<Incoming> = published
        .into_iter()
        .enumerate()
        .map(|(i, p)| Incoming {
            subject: p.subject,
            payload: p.envelope.into(),
            source_seq: i as u64 + 1,
        })
        .collect();
    let received = Timestamp::parse("2026-11-22T08:01:00.000000Z")
        .unwrap()
        .as_micros();
    for chunk in items.chunks(10) {
        let plan = admit(&mut tip, chunk, received, |ids| store.stored_payloads(ids)).unwrap();
        assert!(plan.tree_nodes.is_empty());
        store.commit(&plan, &tip, None).unwrap();
    }
    for size in [10, tip.seq] {
        let mut head = decode_record(size, &store.record(size).unwrap().unwrap())
            .unwrap()
            .hash;
        if lie_at == Some(size) {
            head[0] ^= 1;
        }
        let note = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: head,
        }
        .sign(ORIGIN, key);
        store.put_checkpoint(size, &note).unwrap();
    }
    drop(store);
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap();
    db.put_cf(db.cf_handle("meta").unwrap(), b"format", b"1")
        .unwrap();
    tip.seq
}

#[test]
fn a_format_1_store_gets_its_tree_and_its_checkpoints_signed_over_roots() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let size = format_1_store(dir.path(), &key, None);
    let ledger = Ledger::new(
        Store::open_primary(dir.path()).unwrap(),
        key.clone(),
        CheckpointPolicy::default(),
    )
    .unwrap();
    let store = ledger.store();
    assert_eq!(store.tree_size().unwrap(), size);
    let checkpoints = store.checkpoints().unwrap();
    assert_eq!(checkpoints.len(), 2);
    for (at, note) in checkpoints {
        let cp = Checkpoint::verify(&note, ORIGIN, &key.verifying_key()).unwrap();
        assert_eq!(cp.root, store.tree_root(at).unwrap(), "size {at}");
        let head = decode_record(at, &store.record(at).unwrap().unwrap())
            .unwrap()
            .hash;
        assert_ne!(cp.root, head, "still the head at {at}");
    }
    let report = verify(store, &Trust::default(), &mut |_, _| {}).unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.checkpoints_verified, 2);
}

#[test]
fn a_format_1_checkpoint_that_names_another_head_is_refused_not_re_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    format_1_store(dir.path(), &key, Some(10));
    let refused = Ledger::new(
        Store::open_primary(dir.path()).unwrap(),
        key,
        CheckpointPolicy::default(),
    );
    let why = refused
        .err()
        .expect("a lying checkpoint was re-signed")
        .to_string();
    assert!(
        why.contains("size 10 names a head the chain does not have"),
        "{why}"
    );
}
