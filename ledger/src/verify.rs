//! Offline verification: recompute the chain, signatures, authorizations and checkpoints.
//!
//! Reads the store as it is on disk and reports everything it finds (up to a
//! limit), not only the first problem. Uses the same admission rules as ingest,
//! replaying the key registry as it stood at each seq.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use docket_schemas::notice::EVENT_SUBJECT_PREFIX;
use docket_schemas::{Checkpoint, Envelope, Event, Kind};
use ed25519_dalek::VerifyingKey;
use rayon::prelude::*;
use serde::Serialize;

use crate::admission::{check_arrival, describe, verify_all};
use crate::chain::{Entry, GENESIS_PREV, hex};
use crate::merkle::{CompactRange, leaf_hash};
use crate::registry::{Registry, Signer};
use crate::state::VaultState;
use crate::store::{Store, StoreError};

/// Problems reported at most; verification goes on counting past it.
pub const PROBLEMS_MAX: usize = 100;
/// Entries whose signatures are checked together.
const VERIFY_WINDOW: usize = 8192;

/// One thing wrong with the ledger.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The seq it concerns, when it concerns one entry.
    pub seq: Option<u64>,
    pub what: String,
}

/// What verification found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub origin: String,
    pub entries: u64,
    pub head: String,
    pub checkpoints: u64,
    pub checkpoints_verified: u64,
    pub problems_total: u64,
    pub problems: Vec<Problem>,
    pub first_bad_seq: Option<u64>,
    /// Hex of the Merkle root the entries give.
    pub tree_root: String,
    /// Each demanded witness and the largest size it cosigned that the entries give.
    pub witnessed: Vec<Witnessed>,
    /// The size of the trusted checkpoint a `--since-checkpoint` verify started from.
    pub since_checkpoint: Option<u64>,
    pub elapsed_s: f64,
    pub events_per_s: f64,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems_total == 0
    }
}

/// A witness's cosignature that verify found and checked.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Witnessed {
    pub witness: String,
    pub size: u64,
}

/// Keys to trust instead of those recorded in the store (pin them from your own records).
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub admin: Option<VerifyingKey>,
    pub ledger: Option<VerifyingKey>,
    /// Witnesses (name, key) of which each must have cosigned a checkpoint of this chain.
    pub witnesses: Vec<(String, VerifyingKey)>,
}

struct Findings {
    total: u64,
    list: Vec<Problem>,
}

impl Findings {
    fn add(&mut self, seq: Option<u64>, what: String) {
        self.total += 1;
        if self.list.len() < PROBLEMS_MAX {
            self.list.push(Problem { seq, what });
        }
    }
}

struct Pending {
    seq: u64,
    envelope: Envelope,
    signers: Vec<Signer>,
}

/// One entry decoded off the critical path.
struct Decoded {
    seq: u64,
    /// (stored hash, stored previous hash), or why the record is unreadable.
    chain: Result<([u8; 32], [u8; 32]), String>,
    hash_ok: bool,
    event: Result<Arrived, String>,
}

/// A decoded entry's envelope and event, with where and when it arrived.
struct Arrived {
    envelope: Envelope,
    event: Event,
    subject: String,
    received_us: i64,
}

/// Subjects of the kinds that change the registry: the only entries of a trusted prefix
/// whose events are read again.
fn changes_registry(subject: &str) -> bool {
    [Kind::KeyRegistered, Kind::KeyRevoked, Kind::PolicySet]
        .iter()
        .any(|k| subject.strip_prefix(EVENT_SUBJECT_PREFIX) == Some(k.as_str()))
}

fn decode(seq: u64, record: &[u8], trusted_through: u64) -> Decoded {
    match Entry::decode(seq, record) {
        Ok(entry) if seq <= trusted_through && !changes_registry(entry.subject) => Decoded {
            seq,
            chain: Ok((entry.hash, entry.prev)),
            hash_ok: entry.compute_hash() == entry.hash,
            event: Err(String::new()),
        },
        Err(e) => Decoded {
            seq,
            chain: Err(e.to_string()),
            hash_ok: false,
            event: Err(String::new()),
        },
        Ok(entry) => {
            let event = Envelope::decode(entry.envelope)
                .map_err(|e| format!("envelope: {e}"))
                .and_then(|envelope| {
                    envelope
                        .event()
                        .map(|event| Arrived {
                            envelope,
                            event,
                            subject: entry.subject.to_string(),
                            received_us: entry.received_us,
                        })
                        .map_err(|e| format!("event: {e}"))
                });
            Decoded {
                seq,
                chain: Ok((entry.hash, entry.prev)),
                hash_ok: entry.compute_hash() == entry.hash,
                event,
            }
        }
    }
}

/// Verifies the whole ledger; `progress(done, total)` is called as entries are checked.
pub fn verify(
    store: &Store,
    trust: &Trust,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, StoreError> {
    verify_from(store, trust, None, progress)
}

/// Verifies what came after a checkpoint the verifier already trusts (`note`, signed by
/// the ledger's key and cosigned by every witness in `trust`): entries up to it are only
/// hashed, which must give its root (so nothing in it was rewritten) and rebuild the key
/// registry; entries after it get every check a full verify makes but the state comparison.
pub fn verify_since(
    store: &Store,
    trust: &Trust,
    note: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, StoreError> {
    verify_from(store, trust, Some(note), progress)
}

fn verify_from(
    store: &Store,
    trust: &Trust,
    since: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, StoreError> {
    let started = Instant::now();
    let identity = store.identity()?;
    let mut found = Findings {
        total: 0,
        list: Vec::new(),
    };
    let stored_key = |b64: &str| {
        docket_schemas::decode_public_key(b64)
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
    };
    let admin = trust
        .admin
        .or_else(|| stored_key(&identity.admin_public_key));
    let ledger_key = trust
        .ledger
        .or_else(|| stored_key(&identity.ledger_public_key));
    let (Some(admin), Some(ledger_key)) = (admin, ledger_key) else {
        found.add(
            None,
            "the ledger's recorded admin or checkpoint key is not a valid ed25519 key".into(),
        );
        return Ok(finish(
            &identity.origin,
            0,
            GENESIS_PREV,
            0,
            0,
            found,
            started,
        ));
    };
    let tip = store.tip(|| Registry::new(&admin, &ledger_key))?;
    let total = tip.seq;
    // The trusted checkpoint: (size, root); entries through `size` are only hashed.
    let trusted = match since {
        None => None,
        Some(note) => {
            let cp = match Checkpoint::verify(note, &identity.origin, &ledger_key) {
                Ok(cp) if cp.origin == identity.origin => cp,
                Ok(cp) => {
                    found.add(
                        None,
                        format!(
                            "the trusted checkpoint is of {:?}, not this ledger",
                            cp.origin
                        ),
                    );
                    return Ok(finish(
                        &identity.origin,
                        0,
                        GENESIS_PREV,
                        0,
                        0,
                        found,
                        started,
                    ));
                }
                Err(e) => {
                    found.add(None, format!("the trusted checkpoint: {e}"));
                    return Ok(finish(
                        &identity.origin,
                        0,
                        GENESIS_PREV,
                        0,
                        0,
                        found,
                        started,
                    ));
                }
            };
            for (name, key) in &trust.witnesses {
                if let Err(e) = Checkpoint::verify_cosignature(note, name, key) {
                    found.add(None, format!("the trusted checkpoint: {e}"));
                }
            }
            if cp.size > tip.seq {
                found.add(
                    Some(tip.seq + 1),
                    format!(
                        "the trusted checkpoint covers {} entries but the chain has {}: rolled back or truncated",
                        cp.size, tip.seq
                    ),
                );
                return Ok(finish(
                    &identity.origin,
                    tip.seq,
                    tip.head,
                    0,
                    0,
                    found,
                    started,
                ));
            }
            // The consistency proof from the trusted tree to the stored tip, checked at the end
            // against the root the entries give.
            let proof = store.consistency_path(cp.size, tip.seq);
            Some((cp.size, cp.root, proof))
        }
    };
    let trusted_through = trusted.as_ref().map_or(0, |t| t.0);

    let checkpoints = store.checkpoints()?;
    let mut expected_roots = BTreeMap::new();
    let mut checkpoints_verified = 0;
    for (size, note) in &checkpoints {
        match Checkpoint::verify(note, &identity.origin, &ledger_key) {
            Ok(cp) if cp.size == *size && cp.origin == identity.origin => {
                expected_roots.insert(*size, cp.root);
            }
            Ok(cp) => found.add(
                None,
                format!(
                    "checkpoint stored at size {size} says size {} of {:?}",
                    cp.size, cp.origin
                ),
            ),
            Err(e) => found.add(None, format!("checkpoint at size {size}: {e}")),
        }
    }

    let mut registry = Registry::new(&admin, &ledger_key);
    // The state and findings the chain derives, folded on this same pass (one decode of
    // each entry), to compare with what is stored beside the chain at the end.
    let mut fold_us = 0u128;
    let stored = store.load_state()?;
    let stored_seq = stored.seq;
    let mut derived = VaultState::default();
    let mut derived_at_stored = (stored_seq == 0).then(VaultState::default);
    let mut derived_findings = Vec::new();
    let mut ids = HashSet::new();
    let mut pending: Vec<Pending> = Vec::new();
    let (mut expected_seq, mut prev, mut last_seq) = (1u64, GENESIS_PREV, 0u64);
    // The Merkle tree recomputed from the entries' own hashes, never from stored nodes.
    let mut tree = CompactRange::default();
    let mut window: Vec<(u64, Vec<u8>)> = Vec::with_capacity(VERIFY_WINDOW);
    let mut records = store.records(1)?;
    loop {
        window.clear();
        for item in records.by_ref().take(VERIFY_WINDOW) {
            match item {
                Ok(r) => window.push(r),
                Err(e) => found.add(None, format!("store read failed: {e}")),
            }
        }
        if window.is_empty() {
            break;
        }
        // Decoding and hashing are independent per entry: do them on every core.
        let decoded: Vec<Decoded> = window
            .par_iter()
            .map(|(seq, record)| decode(*seq, record, trusted_through))
            .collect();
        for d in decoded {
            let seq = d.seq;
            if seq != expected_seq {
                if seq > expected_seq {
                    found.add(
                        Some(expected_seq),
                        format!("entries {expected_seq}..{} are missing", seq - 1),
                    );
                } else {
                    found.add(Some(seq), format!("entry {seq} appears out of order"));
                }
            }
            expected_seq = seq + 1;
            last_seq = seq;
            let (hash, link) = match d.chain {
                Ok(c) => c,
                Err(e) => {
                    found.add(Some(seq), format!("record unreadable: {e}"));
                    prev = [0xff; 32];
                    tree.push(leaf_hash(&prev), |_, _| {});
                    continue;
                }
            };
            if !d.hash_ok {
                found.add(
                    Some(seq),
                    "entry hash does not match its contents (altered, or moved from another seq)"
                        .into(),
                );
            }
            if link != prev {
                found.add(
                    Some(seq),
                    format!(
                        "previous-hash link broken: entry {seq} does not follow entry {}",
                        seq - 1
                    ),
                );
            }
            prev = hash;
            tree.push(leaf_hash(&hash), |_, _| {});
            if let Some(want) = expected_roots.get(&seq) {
                if *want == tree.root() {
                    checkpoints_verified += 1;
                } else {
                    found.add(
                        Some(seq),
                        format!(
                            "signed checkpoint at size {seq} names a Merkle root the entries do not give"
                        ),
                    );
                }
            }
            if let Some((size, root, _)) = &trusted
                && seq == *size
                && tree.root() != *root
            {
                found.add(
                    Some(seq),
                    "the entries up to the trusted checkpoint do not give its root: history was rewritten".into(),
                );
            }
            if seq <= trusted_through {
                // Trusted: only the registry is rebuilt, from entries whose hashes the root vouches for.
                if let Ok(arrived) = d.event {
                    check_event(
                        seq,
                        arrived,
                        &mut registry,
                        &mut ids,
                        &mut pending,
                        &mut found,
                    );
                }
                continue;
            }
            if trusted.is_none()
                && found.total == 0
                && let Ok(arrived) = &d.event
            {
                let t = Instant::now();
                derived_findings.extend(derived.replay(seq, arrived.received_us, &arrived.event));
                if seq == stored_seq {
                    derived_at_stored = Some(derived.clone());
                }
                fold_us += t.elapsed().as_micros();
            }
            match d.event {
                Ok(arrived) => check_event(
                    seq,
                    arrived,
                    &mut registry,
                    &mut ids,
                    &mut pending,
                    &mut found,
                ),
                Err(e) => found.add(Some(seq), e),
            }
        }
        settle(&mut pending, &mut found);
        progress(last_seq, total);
    }
    settle(&mut pending, &mut found);
    progress(last_seq, total);
    if last_seq != tip.seq || prev != tip.head {
        found.add(
            Some(last_seq.min(tip.seq) + 1),
            format!(
                "chain ends at seq {last_seq} but the ledger's tip records seq {} with head {}",
                tip.seq,
                hex(&tip.head)
            ),
        );
    }
    if let Some((size, root, proof)) = &trusted {
        let verified = proof.as_ref().is_ok_and(|p| {
            crate::merkle::verify_consistency(*size, last_seq, root, &tree.root(), p)
        });
        if !verified {
            found.add(
                None,
                format!(
                    "no consistency proof from the trusted checkpoint ({size}) to the chain's {last_seq} entries verifies"
                ),
            );
        }
    }
    // What is stored beside the chain (projection, findings, registry) must be what the
    // chain derives; an edit there would otherwise be served, and reported by nobody. On a
    // chain that is itself wrong, the derivation means nothing: those problems come first.
    // A verify from a trusted checkpoint has not folded the prefix, so it cannot compare.
    let derived = match (found.total, &derived_at_stored) {
        _ if trusted.is_some() => None,
        (0, Some(at_stored)) => Some(crate::projection::compare(
            store,
            &stored,
            at_stored,
            &derived_findings,
            &registry,
            fold_us as f64 / 1e6,
        )?),
        // The stored projection names a seq the chain lacks: compare by a replay of its own.
        (0, None) => Some(crate::projection::rebuild_check(store)?),
        _ => None,
    };
    if let Some(derived) = derived.filter(|d| !d.agrees()) {
        found.add(
            derived.first_divergent_seq,
            format!(
                "stored beside the chain but not what it derives: {}",
                derived.summary()
            ),
        );
    }
    // Proofs are made from stored nodes: they must be the tree the entries give.
    match store.tree_size() {
        Ok(size) if size == last_seq && found.total == 0 => match store.tree_root(size) {
            Ok(root) if root == tree.root() => {}
            Ok(_) => found.add(
                None,
                "the stored Merkle nodes disagree with the entries: proofs made from them would fail"
                    .into(),
            ),
            Err(e) => found.add(None, format!("the stored Merkle tree: {e}")),
        },
        Ok(size) if found.total == 0 => found.add(
            None,
            format!("the stored Merkle tree has {size} leaves, the chain {last_seq} entries"),
        ),
        Ok(_) => {}
        Err(e) => found.add(None, format!("the stored Merkle tree: {e}")),
    }
    let witnessed = witnessed(
        store,
        trust,
        &identity.origin,
        &expected_roots,
        last_seq,
        &mut found,
    )?;
    for size in expected_roots.keys().filter(|s| **s > last_seq) {
        found.add(
            Some(*size),
            format!(
                "a signed checkpoint covers {size} entries but the chain has {last_seq} (truncated)"
            ),
        );
    }
    let mut report = finish(
        &identity.origin,
        last_seq,
        prev,
        checkpoints.len() as u64,
        checkpoints_verified,
        found,
        started,
    );
    report.tree_root = hex(&tree.root());
    report.witnessed = witnessed;
    report.since_checkpoint = trusted.map(|t| t.0);
    Ok(report)
}

/// For each witness the verifier trusts: the largest checkpoint it cosigned whose root the
/// entries give. A witness that cosigned none is a problem: it was demanded.
fn witnessed(
    store: &Store,
    trust: &Trust,
    origin: &str,
    roots: &BTreeMap<u64, [u8; 32]>,
    last_seq: u64,
    found: &mut Findings,
) -> Result<Vec<Witnessed>, StoreError> {
    if trust.witnesses.is_empty() {
        return Ok(Vec::new());
    }
    let sizes: std::collections::BTreeSet<u64> =
        store.cosignatures()?.into_iter().map(|(s, _)| s).collect();
    let mut out = Vec::new();
    for (name, key) in &trust.witnesses {
        let mut best = None;
        for size in sizes.iter().rev() {
            let Some(note) = store.cosigned_checkpoint(*size)? else {
                continue;
            };
            if Checkpoint::verify_cosignature(&note, name, key).is_err() {
                continue;
            }
            if *size > last_seq {
                found.add(
                    Some(*size),
                    format!(
                        "witness {name} cosigned size {size}, but the chain has {last_seq} entries: rolled back or truncated"
                    ),
                );
                continue;
            }
            if let Ok(cp) = Checkpoint::parse_unverified(&note)
                && roots.get(size) == Some(&cp.root)
                && cp.origin == origin
            {
                best = Some(*size);
                break;
            }
        }
        match best {
            Some(size) => out.push(Witnessed {
                witness: name.clone(),
                size,
            }),
            None => found.add(
                None,
                format!("no checkpoint of this chain is cosigned by witness {name}"),
            ),
        }
    }
    Ok(out)
}

fn check_event(
    seq: u64,
    arrived: Arrived,
    registry: &mut Registry,
    ids: &mut HashSet<[u8; 16]>,
    pending: &mut Vec<Pending>,
    found: &mut Findings,
) {
    let Arrived {
        envelope,
        event,
        subject,
        received_us,
    } = arrived;
    if !ids.insert(event.id.0) {
        found.add(
            Some(seq),
            format!("event id {} appears twice in the chain", event.id),
        );
    }
    if let Err(e) = check_arrival(&subject, received_us, &event, &registry.policy.policy) {
        // Admission would have quarantined it: it changes nothing, as admission left it.
        return found.add(Some(seq), format!("should have been quarantined: {e}"));
    }
    // The same resolution of the envelope's keyid hint, and the same check, as admission.
    let signers = match registry.signers(&envelope.key_id, &event.body) {
        Ok(s) => s,
        Err(e) => return found.add(Some(seq), format!("not authorized at this seq: {e}")),
    };
    // Events that change the registry are applied in order, as admission does.
    if matches!(
        event.kind(),
        Kind::KeyRegistered | Kind::KeyRevoked | Kind::PolicySet
    ) {
        settle(pending, found);
        if verify_all(std::iter::once((&envelope, signers.as_slice())))
            .pop()
            .flatten()
            .is_none()
        {
            return found.add(
                Some(seq),
                format!("signature does not verify against {}", describe(&signers)),
            );
        }
        if let Err(e) = registry.apply(seq, &event.body) {
            found.add(
                Some(seq),
                format!("admin event should have been refused: {e}"),
            );
        }
        return;
    }
    pending.push(Pending {
        seq,
        envelope,
        signers,
    });
}

fn settle(pending: &mut Vec<Pending>, found: &mut Findings) {
    let ok = verify_all(pending.iter().map(|p| (&p.envelope, p.signers.as_slice())));
    for (p, ok) in pending.drain(..).zip(ok) {
        if ok.is_none() {
            found.add(
                Some(p.seq),
                format!("signature does not verify against {}", describe(&p.signers)),
            );
        }
    }
}

fn finish(
    origin: &str,
    entries: u64,
    head: [u8; 32],
    checkpoints: u64,
    verified: u64,
    mut found: Findings,
    started: Instant,
) -> Report {
    found.list.sort_by_key(|p| p.seq.unwrap_or(0));
    let elapsed = started.elapsed().as_secs_f64();
    Report {
        origin: origin.to_string(),
        entries,
        head: hex(&head),
        checkpoints,
        checkpoints_verified: verified,
        problems_total: found.total,
        first_bad_seq: found.list.iter().filter_map(|p| p.seq).min(),
        tree_root: String::new(),
        witnessed: Vec::new(),
        since_checkpoint: None,
        problems: found.list,
        elapsed_s: elapsed,
        events_per_s: if elapsed > 0.0 {
            entries as f64 / elapsed
        } else {
            0.0
        },
    }
}
