//! Admission: which received envelopes enter the chain, which are duplicates, which are quarantined and why.
//!
//! Deterministic: the clock reading, the registry and the dedup answers are
//! passed in. Decoding and signature checks run across all cores (rayon);
//! authorization, dedup and chaining run in stream order, so the result is the
//! same as checking one envelope at a time.

use std::collections::HashMap;

use bytes::Bytes;
use docket_schemas::notice::{EVENT_SUBJECT_PREFIX, QUARANTINE_SAMPLE_BYTES};
use docket_schemas::{
    Envelope, EnvelopeError, Event, EventError, EventId, Kind, PolicySet, Timestamp,
};
use rayon::prelude::*;

use crate::chain::{Entry, SUBJECT_BYTES_MAX, entry_hash};
use crate::merkle::{CompactRange, Hash, NodeId, leaf_hash};
use crate::registry::{AuthError, Registry, RegistryError, Signer};

/// Envelopes taken into one batch at most (one WriteBatch, one fsync, one ack).
pub const BATCH_EVENTS_MAX: usize = 4096;
/// Bytes of envelopes taken into one batch at most: a batch of large envelopes stops
/// early, so memory follows this bound, not the count's.
pub const BATCH_BYTES_MAX: usize = 8 << 20;
/// Transport sequences with this bit set are the ledger's own (vault) entries, not JetStream's.
pub const LOCAL_SEQ_BIT: u64 = 1 << 63;

/// Signatures per batch-verification call; a failing chunk is re-checked one by one.
pub const VERIFY_CHUNK: usize = 128;

/// One envelope as it arrived.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub subject: String,
    pub payload: Bytes,
    /// The transport's sequence number (JetStream stream sequence); keys quarantine records.
    pub source_seq: u64,
}

impl Incoming {
    /// An event the ledger's side signs itself (the genesis policy, the vault's decisions,
    /// a policy recorded offline), under a local transport sequence (`LOCAL_SEQ_BIT` set).
    pub fn sealed(event: &Event, key: &ed25519_dalek::SigningKey, source_seq: u64) -> Incoming {
        Incoming {
            subject: format!(
                "{}{}",
                docket_schemas::notice::EVENT_SUBJECT_PREFIX,
                event.kind()
            ),
            payload: docket_schemas::seal_event(event, key).into(),
            source_seq,
        }
    }
}

/// Why an envelope was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("{0}")]
    Event(#[from] EventError),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("signature does not verify against {0}")]
    BadSignature(String),
    #[error("admin event refused: {0}")]
    Registry(#[from] RegistryError),
    #[error("subject is over {SUBJECT_BYTES_MAX} bytes")]
    Subject,
    #[error("event id {0} is already on the chain with different content; the first stands")]
    IdConflict(EventId),
    #[error(
        "arrived on subject {subject:?}, but a {kind} event belongs on {EVENT_SUBJECT_PREFIX}{kind}"
    )]
    SubjectMismatch { subject: String, kind: Kind },
    #[error(
        "dated {ts}, more than {max_s} s ahead of its receipt at {received} (the policy's event_ts_ahead_max_s)"
    )]
    TsAhead {
        ts: Timestamp,
        /// The receipt time, as text (a clock reading out of the timestamp range shows as µs).
        received: String,
        max_s: u32,
    },
}

impl Rejection {
    /// A stable machine-readable code for the reason.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Envelope(
                EnvelopeError::Oversize { .. } | EnvelopeError::PayloadOversize { .. },
            ) => "oversize",
            Rejection::Envelope(EnvelopeError::SignatureCount(0)) => "unsigned",
            Rejection::Envelope(EnvelopeError::SignatureNotCanonical) => "bad_signature",
            Rejection::Envelope(_) => "malformed_envelope",
            Rejection::Event(EventError::UnsupportedVersion(_)) => "unsupported_version",
            Rejection::Event(EventError::UnknownKind(_)) => "unknown_kind",
            Rejection::Event(EventError::OverLimit { .. }) => "oversize",
            Rejection::Event(_) => "invalid_event",
            Rejection::Auth(AuthError::UnknownKey(_)) => "unknown_key",
            Rejection::Auth(AuthError::RevokedKey { .. }) => "revoked_key",
            Rejection::Auth(_) => "unauthorized_kind",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::Registry(_) => "refused_admin_event",
            Rejection::Subject => "oversize",
            Rejection::SubjectMismatch { .. } => "subject_mismatch",
            Rejection::IdConflict(_) => "id_conflict",
            Rejection::TsAhead { .. } => "ts_ahead",
        }
    }
}

/// Where and when an event arrived, checked by admission and by `verify` alike: its
/// subject names its kind (so a subscriber filtering by subject sees every event of
/// that kind), and its `ts` is at most the policy's `event_ts_ahead_max_s` ahead of
/// the ledger's receipt (so one far-future date cannot make the state's clock jump).
pub fn check_arrival(
    subject: &str,
    received_us: i64,
    event: &Event,
    policy: &PolicySet,
) -> Result<(), Rejection> {
    let kind = event.kind();
    if subject.strip_prefix(EVENT_SUBJECT_PREFIX) != Some(kind.as_str()) {
        return Err(Rejection::SubjectMismatch {
            subject: subject.chars().take(SUBJECT_BYTES_MAX).collect(),
            kind,
        });
    }
    let ahead_us = event.ts.as_micros().saturating_sub(received_us);
    if ahead_us > i64::from(policy.event_ts_ahead_max_s) * 1_000_000 {
        return Err(Rejection::TsAhead {
            ts: event.ts,
            received: Timestamp::from_micros(received_us)
                .map_or_else(|| format!("{received_us} µs"), |t| t.to_string()),
            max_s: policy.event_ts_ahead_max_s,
        });
    }
    Ok(())
}

/// An envelope that will be appended.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub seq: u64,
    pub hash: [u8; 32],
    pub prev: [u8; 32],
    pub received_us: i64,
    pub subject: String,
    pub envelope: Bytes,
    pub event_id: EventId,
    pub kind: Kind,
    /// The Docket key id of the key whose signature verified (the envelope's `keyid` is a hint).
    pub key_id: String,
    /// The decoded event, for the state fold.
    pub event: Event,
}

impl NewEntry {
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            seq: self.seq,
            hash: self.hash,
            prev: self.prev,
            received_us: self.received_us,
            subject: &self.subject,
            envelope: &self.envelope,
        }
    }
}

/// An envelope kept out of the chain, with everything needed to investigate it (the
/// store's quarantine record and the `docket.rejected` notice).
pub use docket_schemas::notice::Quarantined;

/// The chain's tip and the registry: all admission needs to continue the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTip {
    /// Seq of the last entry; 0 when empty.
    pub seq: u64,
    pub head: [u8; 32],
    pub registry: Registry,
    /// Highest transport sequence committed (redeliveries can arrive below it).
    pub source_seq: u64,
}

/// What to do with a batch.
#[derive(Debug, Default)]
pub struct Plan {
    pub appends: Vec<NewEntry>,
    pub quarantined: Vec<Quarantined>,
    pub duplicates: usize,
    pub registry_changed: bool,
    /// Merkle tree nodes the appends complete (leaves included), written with them.
    pub tree_nodes: Vec<(NodeId, Hash)>,
}

impl Plan {
    /// Appends this plan's entries to `tree` as leaves, keeping the nodes they complete
    /// to be written in the same batch. Ingest and the store's backfill both grow the tree here.
    pub fn grow_tree(&mut self, tree: &mut CompactRange) {
        for e in &self.appends {
            tree.push(leaf_hash(&e.hash), |id, h| self.tree_nodes.push((id, h)));
        }
    }
}

struct Decoded {
    envelope: Envelope,
    event: Event,
}

/// Where an event id is already taken: by an entry on the chain (its payload), or by an
/// envelope appended earlier in this batch (its index).
enum Taken {
    Chain(Vec<u8>),
    Batch(usize),
}

type Known = HashMap<EventId, Taken>;

/// What to do with a validly signed envelope whose id may be taken.
enum Seen {
    New,
    Duplicate,
    Conflict,
}

fn seen(known: &Known, decoded: &[Result<Decoded, Rejection>], d: &Decoded) -> Seen {
    let payload = |i: usize| {
        decoded[i]
            .as_ref()
            .ok()
            .map(|d| d.envelope.payload.as_slice())
    };
    match known.get(&d.event.id) {
        None => Seen::New,
        Some(Taken::Chain(p)) if *p == d.envelope.payload => Seen::Duplicate,
        Some(Taken::Batch(i)) if payload(*i) == Some(d.envelope.payload.as_slice()) => {
            Seen::Duplicate
        }
        Some(_) => Seen::Conflict,
    }
}

/// Decides the fate of each envelope of a batch, in order, and advances `tip`.
///
/// `already_appended` answers, for each event id, the payload of the entry on the chain
/// that holds it, if any: the same id again is a duplicate when the payload is the
/// same (a redelivery) and an `id_conflict` when it is not.
pub fn admit<E>(
    tip: &mut ChainTip,
    batch: &[Incoming],
    received_us: i64,
    already_appended: impl FnOnce(&[EventId]) -> Result<Vec<Option<Vec<u8>>>, E>,
) -> Result<Plan, E> {
    let decoded: Vec<Result<Decoded, Rejection>> = batch.par_iter().map(decode).collect();
    let ids: Vec<EventId> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok().map(|d| d.event.id))
        .collect();
    let known_list = already_appended(&ids)?;
    let mut known: Known = ids
        .iter()
        .zip(known_list)
        .filter_map(|(id, payload)| Some((*id, Taken::Chain(payload?))))
        .collect();

    let mut plan = Plan::default();
    tip.source_seq = batch
        .iter()
        .map(|i| i.source_seq)
        .filter(|s| s & LOCAL_SEQ_BIT == 0)
        .fold(tip.source_seq, u64::max);
    let mut pending: Vec<(usize, Vec<Signer>)> = Vec::new();
    let reject = |plan: &mut Plan, i: usize, why: Rejection| {
        plan.quarantined.push(Quarantined {
            source_seq: batch[i].source_seq,
            received_us,
            subject: batch[i].subject.chars().take(SUBJECT_BYTES_MAX).collect(),
            code: why.code().to_string(),
            reason: why.to_string(),
            raw: docket_schemas::encode_base64(
                &batch[i].payload[..batch[i].payload.len().min(QUARANTINE_SAMPLE_BYTES)],
            ),
            raw_bytes: batch[i].payload.len() as u64,
            raw_blake3: blake3::hash(&batch[i].payload).to_hex().to_string(),
        });
    };

    for (i, d) in decoded.iter().enumerate() {
        let d = match d {
            Ok(d) => d,
            Err(why) => {
                reject(&mut plan, i, why.clone());
                continue;
            }
        };
        let kind = d.event.kind();
        let policy = &tip.registry.policy.policy;
        if let Err(why) = check_arrival(&batch[i].subject, received_us, &d.event, policy) {
            reject(&mut plan, i, why);
            continue;
        }
        let signers = match tip.registry.signers(&d.envelope.key_id, &d.event.body) {
            Ok(s) => s,
            Err(why) => {
                reject(&mut plan, i, why.into());
                continue;
            }
        };
        // Events that change the registry (keys, and the one genesis policy the ledger key
        // may sign) are applied in order; the rest are verified together.
        if !matches!(
            kind,
            Kind::KeyRegistered | Kind::KeyRevoked | Kind::PolicySet
        ) {
            pending.push((i, signers));
            continue;
        }
        // An admin event changes who may sign what next: settle everything before it first.
        settle(
            tip,
            batch,
            &decoded,
            &mut pending,
            &mut known,
            received_us,
            &mut plan,
            &reject,
        );
        let Some(signer) = verify_all(std::iter::once((&d.envelope, signers.as_slice())))
            .pop()
            .flatten()
            .map(|at| signers[at].key_id.clone())
        else {
            reject(&mut plan, i, Rejection::BadSignature(describe(&signers)));
            continue;
        };
        match seen(&known, &decoded, d) {
            Seen::New => {}
            Seen::Duplicate => {
                plan.duplicates += 1;
                continue;
            }
            Seen::Conflict => {
                reject(&mut plan, i, Rejection::IdConflict(d.event.id));
                continue;
            }
        }
        let mut next = tip.registry.clone();
        if let Err(why) = next.apply(tip.seq + 1, &d.event.body) {
            reject(&mut plan, i, why.into());
            continue;
        }
        tip.registry = next;
        plan.registry_changed = true;
        append(
            tip,
            (i, &batch[i]),
            d,
            signer,
            received_us,
            &mut known,
            &mut plan,
        );
    }
    settle(
        tip,
        batch,
        &decoded,
        &mut pending,
        &mut known,
        received_us,
        &mut plan,
        &reject,
    );
    Ok(plan)
}

fn decode(incoming: &Incoming) -> Result<Decoded, Rejection> {
    if incoming.subject.len() > SUBJECT_BYTES_MAX {
        return Err(Rejection::Subject);
    }
    let envelope = Envelope::decode(&incoming.payload)?;
    let event = envelope.event()?;
    Ok(Decoded { envelope, event })
}

#[allow(clippy::too_many_arguments)]
fn settle(
    tip: &mut ChainTip,
    batch: &[Incoming],
    decoded: &[Result<Decoded, Rejection>],
    pending: &mut Vec<(usize, Vec<Signer>)>,
    known: &mut Known,
    received_us: i64,
    plan: &mut Plan,
    reject: &impl Fn(&mut Plan, usize, Rejection),
) {
    // Only decoded envelopes are ever pending, so the two lists stay aligned.
    pending.retain(|(i, _)| decoded[*i].is_ok());
    let valid = verify_all(pending.iter().filter_map(|(i, s)| {
        decoded[*i]
            .as_ref()
            .ok()
            .map(|d| (&d.envelope, s.as_slice()))
    }));
    for ((i, signers), ok) in pending.drain(..).zip(valid) {
        let Ok(d) = &decoded[i] else { continue };
        let Some(at) = ok else {
            reject(plan, i, Rejection::BadSignature(describe(&signers)));
            continue;
        };
        match seen(known, decoded, d) {
            Seen::Duplicate => plan.duplicates += 1,
            Seen::Conflict => reject(plan, i, Rejection::IdConflict(d.event.id)),
            Seen::New => {
                let signer = signers[at].key_id.clone();
                append(tip, (i, &batch[i]), d, signer, received_us, known, plan);
            }
        }
    }
}

fn append(
    tip: &mut ChainTip,
    (index, incoming): (usize, &Incoming),
    d: &Decoded,
    signer: String,
    received_us: i64,
    known: &mut Known,
    plan: &mut Plan,
) {
    let seq = tip.seq + 1;
    let hash = entry_hash(
        seq,
        &tip.head,
        received_us,
        &incoming.subject,
        &incoming.payload,
    );
    plan.appends.push(NewEntry {
        seq,
        hash,
        prev: tip.head,
        received_us,
        subject: incoming.subject.clone(),
        envelope: incoming.payload.clone(),
        event_id: d.event.id,
        kind: d.event.kind(),
        key_id: signer,
        event: d.event.clone(),
    });
    known.insert(d.event.id, Taken::Batch(index));
    tip.seq = seq;
    tip.head = hash;
}

/// The keys a signature was checked against, for a refusal's reason.
pub fn describe(signers: &[Signer]) -> String {
    match signers {
        [one] => format!("key {}", one.key_id),
        many => format!(
            "any of the {} keys tried ({})",
            many.len(),
            many.iter()
                .map(|s| s.key_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Which candidate key made each envelope's signature (its index), or `None`: the one
/// check that admission and `verify` share.
///
/// Signatures are verified in parallel, in batches where that pays, against each
/// envelope's first candidate, with strict semantics: keys were checked for weakness at
/// registration and each `R` when decoded, and any batch that fails is re-verified one
/// signature at a time to find the culprits. An envelope that fails against its first
/// candidate is tried against the others, one at a time; there are at most
/// `SIGNATURE_CHECKS_PER_ENVELOPE_MAX` (the registry never resolves more).
pub fn verify_all<'a>(
    items: impl Iterator<Item = (&'a Envelope, &'a [Signer])>,
) -> Vec<Option<usize>> {
    let items: Vec<(&Envelope, &[Signer])> = items.collect();
    let first: Vec<(&Envelope, &ed25519_dalek::VerifyingKey)> = items
        .iter()
        .filter_map(|(e, s)| s.first().map(|s| (*e, &s.key)))
        .collect();
    let mut first_ok = verify_first(&first).into_iter();
    let first_ok: Vec<Option<bool>> = items
        .iter()
        .map(|(_, s)| (!s.is_empty()).then(|| first_ok.next().unwrap_or(false)))
        .collect();
    items
        .par_iter()
        .zip(first_ok.par_iter())
        .map(|((e, signers), first)| match first {
            None => None,
            Some(true) => Some(0),
            Some(false) => {
                let message = e.signed_bytes();
                signers
                    .iter()
                    .take(docket_schemas::limits::SIGNATURE_CHECKS_PER_ENVELOPE_MAX)
                    .enumerate()
                    .skip(1)
                    .find(|(_, s)| s.key.verify_strict(&message, &e.signature).is_ok())
                    .map(|(at, _)| at)
            }
        })
        .collect()
}

/// Verifies each envelope against one key, in parallel and in batches.
fn verify_first(items: &[(&Envelope, &ed25519_dalek::VerifyingKey)]) -> Vec<bool> {
    // Spread even small batches over every core; cap chunks where batching stops paying.
    let chunk = items
        .len()
        .div_ceil(rayon::current_num_threads())
        .clamp(8, VERIFY_CHUNK);
    items
        .par_chunks(chunk)
        .flat_map_iter(verify_chunk)
        .collect()
}

fn verify_chunk(chunk: &[(&Envelope, &ed25519_dalek::VerifyingKey)]) -> Vec<bool> {
    let messages: Vec<Vec<u8>> = chunk.iter().map(|(e, _)| e.signed_bytes()).collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let sigs: Vec<_> = chunk.iter().map(|(e, _)| e.signature).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = chunk.iter().map(|(_, k)| **k).collect();
    if chunk.len() > 1 && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
        return vec![true; chunk.len()];
    }
    chunk
        .iter()
        .zip(&messages)
        .map(|((e, k), m)| k.verify_strict(m, &e.signature).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use docket_schemas::{EventBody, KeyRegistered, PolicySet, SCHEMA_VERSION, Timestamp};
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    struct Chain {
        tip: ChainTip,
        n: u8,
    }

    impl Chain {
        fn new() -> Chain {
            Chain {
                tip: ChainTip {
                    seq: 0,
                    head: [0; 32],
                    registry: Registry::new(&key(1).verifying_key(), &key(2).verifying_key()),
                    source_seq: 0,
                },
                n: 0,
            }
        }

        fn envelope(&mut self, body: EventBody, signer: &SigningKey) -> Incoming {
            self.n += 1;
            let mut id = [self.n; 16];
            id[6] = 0x70;
            id[8] = 0x80;
            let event = Event {
                v: SCHEMA_VERSION,
                id: EventId(id),
                ts: Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
                body,
            };
            Incoming {
                subject: format!("docket.events.{}", event.kind()),
                payload: docket_schemas::seal_event(&event, signer).into(),
                source_seq: u64::from(self.n),
            }
        }

        /// Admits a batch; returns the quarantine codes, in order.
        fn admit(&mut self, batch: &[Incoming]) -> (usize, Vec<String>) {
            let received = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
            let plan = admit(&mut self.tip, batch, received.as_micros(), |ids| {
                Ok::<_, ()>(vec![None; ids.len()])
            })
            .unwrap();
            let codes = plan.quarantined.iter().map(|q| q.code.clone()).collect();
            (plan.appends.len(), codes)
        }
    }

    fn registration(k: &SigningKey) -> EventBody {
        let pk = k.verifying_key();
        EventBody::KeyRegistered(KeyRegistered {
            key_id: docket_schemas::key_id(pk.as_bytes()),
            public_key: docket_schemas::encode_base64(pk.as_bytes()),
            name: "gateway".into(),
            kinds: vec![Kind::KeyRevoked],
        })
    }

    #[test]
    fn the_ledger_key_signs_the_default_policy_once_and_nothing_else() {
        let mut c = Chain::new();
        let ledger = key(2);
        let other = PolicySet {
            revision: 2,
            ..PolicySet::DEFAULTS
        };
        let batch = [
            c.envelope(EventBody::PolicySet(other.clone()), &ledger),
            c.envelope(EventBody::PolicySet(PolicySet::DEFAULTS), &ledger),
            c.envelope(EventBody::PolicySet(PolicySet::DEFAULTS), &ledger),
            c.envelope(registration(&key(3)), &ledger),
        ];
        assert_eq!(
            c.admit(&batch),
            (
                1,
                vec![
                    "unauthorized_kind".into(),
                    "unauthorized_kind".into(),
                    "unauthorized_kind".into()
                ]
            )
        );
        // The admin may set a policy; nobody else may.
        let batch = [
            c.envelope(EventBody::PolicySet(other.clone()), &key(1)),
            c.envelope(EventBody::PolicySet(other), &key(3)),
        ];
        assert_eq!(c.admit(&batch), (1, vec!["unknown_key".into()]));
    }

    #[test]
    fn duplicates_forgeries_and_admin_only_kinds_are_kept_out() {
        let mut c = Chain::new();
        let reg = c.envelope(registration(&key(3)), &key(1));
        let forged = {
            let mut e = c.envelope(registration(&key(4)), &key(1));
            // Same envelope, signature from another key under the admin's keyid.
            let other = c.envelope(registration(&key(4)), &key(5));
            let mut wire: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
            let theirs: serde_json::Value = serde_json::from_slice(&other.payload).unwrap();
            wire["signatures"][0]["sig"] = theirs["signatures"][0]["sig"].clone();
            e.payload = serde_json::to_vec(&wire).unwrap().into();
            e
        };
        // A producer key may not emit an admin-only kind, whatever its registration says.
        let not_admin = c.envelope(registration(&key(6)), &key(3));
        let mut dup = reg.clone();
        dup.source_seq = 99;
        let (appended, codes) = c.admit(&[reg, dup, forged, not_admin]);
        assert_eq!(appended, 1);
        assert_eq!(codes, vec!["bad_signature", "unauthorized_kind"]);
        assert_eq!(c.tip.seq, 1);
        assert!(c.tip.registry.keys.len() == 1);
    }

    /// An envelope sealed with a given id, date and subject (the harness picks the rest).
    fn sealed_as(
        id: u8,
        ts: &str,
        body: EventBody,
        signer: &SigningKey,
        subject: Option<&str>,
    ) -> Incoming {
        let mut raw = [id; 16];
        raw[6] = 0x70;
        raw[8] = 0x80;
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId(raw),
            ts: Timestamp::parse(ts).unwrap(),
            body,
        };
        Incoming {
            subject: subject
                .map_or_else(|| format!("docket.events.{}", event.kind()), String::from),
            payload: docket_schemas::seal_event(&event, signer).into(),
            source_seq: u64::from(id),
        }
    }

    #[test]
    fn an_id_reused_with_other_content_is_quarantined_not_dropped() {
        let mut c = Chain::new();
        let t = "2026-11-22T08:00:00.000000Z";
        let first = sealed_as(200, t, registration(&key(3)), &key(1), None);
        let same = first.clone();
        let other = sealed_as(200, t, registration(&key(4)), &key(1), None);
        // Within one batch, and against the chain in a later one.
        assert_eq!(
            c.admit(&[first, same.clone(), other.clone()]),
            (1, vec!["id_conflict".into()])
        );
        let mut c2 = Chain::new();
        assert_eq!(c2.admit(std::slice::from_ref(&same)), (1, vec![]));
        let stored = docket_schemas::Envelope::decode(&same.payload)
            .unwrap()
            .payload;
        let plan = admit(
            &mut c2.tip,
            &[same, other],
            Timestamp::parse(t).unwrap().as_micros(),
            |ids| Ok::<_, ()>(ids.iter().map(|_| Some(stored.clone())).collect()),
        )
        .unwrap();
        assert_eq!(
            plan.duplicates, 1,
            "the identical redelivery is a duplicate"
        );
        let codes: Vec<&str> = plan.quarantined.iter().map(|q| q.code.as_str()).collect();
        assert_eq!(codes, vec!["id_conflict"]);
    }

    #[test]
    fn the_subject_must_name_the_kind_and_ts_may_not_run_far_ahead() {
        let mut c = Chain::new();
        // The harness receives at 08:00:00; the policy allows 300 s ahead.
        let ok = sealed_as(
            201,
            "2026-11-22T08:05:00.000000Z",
            registration(&key(3)),
            &key(1),
            None,
        );
        let ahead = sealed_as(
            202,
            "2026-11-22T08:05:00.000001Z",
            registration(&key(4)),
            &key(1),
            None,
        );
        let far = sealed_as(
            203,
            "9999-01-01T00:00:00.000000Z",
            registration(&key(5)),
            &key(1),
            None,
        );
        let astray = sealed_as(
            204,
            "2026-11-22T08:00:00.000000Z",
            registration(&key(6)),
            &key(1),
            Some("docket.events.api.called"),
        );
        let (appended, codes) = c.admit(&[ok, ahead, far, astray]);
        assert_eq!(appended, 1);
        assert_eq!(codes, vec!["ts_ahead", "ts_ahead", "subject_mismatch"]);
        // The bound is the policy's: a wider one recorded by the admin applies from the next entry.
        let wider = PolicySet {
            revision: 2,
            event_ts_ahead_max_s: 3_600,
            ..PolicySet::DEFAULTS
        };
        let later = sealed_as(
            206,
            "2026-11-22T08:30:00.000000Z",
            registration(&key(7)),
            &key(1),
            None,
        );
        let set = sealed_as(
            205,
            "2026-11-22T08:00:00.000000Z",
            EventBody::PolicySet(PolicySet {
                revision: 1,
                ..PolicySet::DEFAULTS
            }),
            &key(1),
            None,
        );
        let set2 = sealed_as(
            207,
            "2026-11-22T08:00:00.000000Z",
            EventBody::PolicySet(wider),
            &key(1),
            None,
        );
        assert_eq!(c.admit(&[set, set2, later]), (3, vec![]));
    }

    #[test]
    fn envelopes_that_are_not_plain_json_are_refused() {
        let mut c = Chain::new();
        let good = c.envelope(registration(&key(3)), &key(1));
        let text = std::str::from_utf8(&good.payload).unwrap();
        let with = |extra: &str| Incoming {
            payload: format!("{}{extra}}}", &text[..text.len() - 1])
                .into_bytes()
                .into(),
            ..good.clone()
        };
        let deep = with(&format!(
            ",\"x\":{}{}",
            "[".repeat(30_000),
            "]".repeat(30_000)
        ));
        let repeated = with(",\"payloadType\":\"application/vnd.docket.event+json\"");
        let mut bad_utf8 = with(",\"x\":\"..\"");
        let mut bytes = bad_utf8.payload.to_vec();
        let n = bytes.len();
        bytes[n - 3] = 0xff;
        bad_utf8.payload = bytes.into();
        let plain = with(",\"x\":{\"note\":[1,2]}");
        let (appended, codes) = c.admit(&[deep, repeated, bad_utf8, plain]);
        assert_eq!(
            appended, 1,
            "unknown fields that are plain JSON are allowed"
        );
        assert_eq!(codes, vec!["malformed_envelope"; 3]);
    }
}
