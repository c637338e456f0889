//! Replaying the chain into the vault state: catching up at start, point-in-time views, and rebuild checks.

use std::collections::BTreeSet;

use docket_schemas::{Envelope, HumanTimeError, Kind, Timestamp};
use serde::Serialize;

use crate::admission::{ChainTip, Plan};
use crate::chain::hex;
use crate::registry::Registry;
use crate::state::{Finding, ObjectKey, VaultState};
use crate::store::{ProjectionDelta, Store, StoreError, decode_record};

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    End,
    /// After this seq.
    Seq(u64),
    /// After the last entry whose event time is at or before this.
    Time(Timestamp),
}

/// Why a point in time cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    #[error("--as-of {text:?} is neither a seq (digits) nor a time: {source}")]
    Unreadable {
        text: String,
        source: HumanTimeError,
    },
    #[error(
        "--as-of {seq} is beyond the head of the chain (seq {head}): give a seq from 0 to {head}, or no --as-of for now"
    )]
    PastHead { seq: u64, head: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Until {
    /// Parses `--as-of`: a seq (digits) or a time as people write it ([`Timestamp::parse_human`]).
    pub fn parse(text: &str) -> Result<Until, PointError> {
        match text.trim().parse::<u64>() {
            Ok(seq) => Ok(Until::Seq(seq)),
            Err(_) => Timestamp::parse_human(text)
                .map(Until::Time)
                .map_err(|source| PointError::Unreadable {
                    text: text.into(),
                    source,
                }),
        }
    }

    /// Refuses a seq beyond `head`: showing the head's state for it would answer another question.
    pub fn within(self, head: u64) -> Result<Until, PointError> {
        match self {
            Until::Seq(seq) if seq > head => Err(PointError::PastHead { seq, head }),
            other => Ok(other),
        }
    }
}

/// The state at a point, and where the chain ended when it was read.
pub struct PointState {
    pub state: VaultState,
    /// The time statuses are judged at: the time asked for, or the last applied entry's.
    pub at: Timestamp,
    /// A time was asked for at or after every entry's event time, so the state is the head's.
    pub time_past_head: bool,
}

impl PointState {
    /// What to tell a person when the time asked for lies past the last entry.
    pub fn note(&self) -> Option<String> {
        self.time_past_head.then(|| {
            format!(
                "note: no entry's time is after {}: the state shown is as of the head, seq {} (statuses judged at that time)",
                self.at, self.state.seq
            )
        })
    }
}

/// The state at `until` (the stored projection for `End`, a replay from genesis otherwise).
/// A seq beyond the head is refused; a time past every entry is flagged ([`PointState::note`]).
pub fn state_at(store: &Store, until: Until) -> Result<PointState, PointError> {
    let until = until.within(store.head()?.0)?;
    let state = match until {
        Until::End => store.load_state()?,
        _ => {
            let mut s = VaultState::default();
            replay(store, &mut s, until)?;
            s
        }
    };
    let (at, time_past_head) = match until {
        // The replay stopped either at an entry later than `t` or because the chain ended there.
        Until::Time(t) => (t, store.records(state.seq + 1)?.next().is_none()),
        _ => (state.ts.unwrap_or(Timestamp::UNIX_EPOCH), false),
    };
    Ok(PointState {
        state,
        at,
        time_past_head,
    })
}

/// Replays entries `from..` into `state`, stopping as `until` says; returns the findings.
pub fn replay(
    store: &Store,
    state: &mut VaultState,
    until: Until,
) -> Result<Vec<Finding>, StoreError> {
    replay_with(store, state, until, None)
}

/// `replay`, also applying the admin events to `registry` when given (deriving it from
/// the chain rather than trusting the stored copy).
pub fn replay_with(
    store: &Store,
    state: &mut VaultState,
    until: Until,
    mut registry: Option<&mut Registry>,
) -> Result<Vec<Finding>, StoreError> {
    let mut findings = Vec::new();
    for item in store.records(state.seq + 1)? {
        let (seq, record) = item?;
        if let Until::Seq(last) = until
            && seq > last
        {
            break;
        }
        let entry = decode_record(seq, &record)?;
        let event = Envelope::decode(entry.envelope)
            .map_err(|e| e.to_string())
            .and_then(|env| env.event().map_err(|e| e.to_string()))
            .map_err(|why| StoreError::Undecodable { seq, why })?;
        if let Until::Time(t) = until
            && event.ts > t
        {
            break;
        }
        if let Some(r) = registry.as_deref_mut()
            && matches!(
                event.kind(),
                Kind::KeyRegistered | Kind::KeyRevoked | Kind::PolicySet
            )
        {
            // What admission refused never reached the chain, and what it admitted applied;
            // a refusal here means the chain holds what it should not (verify says which).
            let _ = r.apply(seq, &event.body);
        }
        findings.extend(state.replay(seq, entry.received_us, &event));
    }
    Ok(findings)
}

/// Brings a stored projection up to the chain's tip (after an upgrade, or a projection deleted by hand).
pub fn catch_up(store: &Store, state: &mut VaultState, tip: &ChainTip) -> Result<(), StoreError> {
    if state.seq >= tip.seq {
        return Ok(());
    }
    let before = state.clone();
    let findings = replay(store, state, Until::End)?;
    let touched = changed_objects(&before, state);
    let delta = ProjectionDelta::capture(state, &touched, findings)?;
    store.commit(&Plan::default(), tip, Some(&delta))
}

fn changed_objects(a: &VaultState, b: &VaultState) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    macro_rules! diff {
        ($field:ident, $variant:ident) => {
            for (k, v) in &b.$field {
                if a.$field.get(k) != Some(v) {
                    out.insert(ObjectKey::$variant(k.clone()));
                }
            }
        };
    }
    diff!(agents, Agent);
    diff!(grants, Grant);
    diff!(approvals, Approval);
    diff!(tokens, Token);
    diff!(step_up_keys, StepUpKey);
    diff!(connections, Connection);
    if a.policy != b.policy {
        out.insert(ObjectKey::Policy);
    }
    out
}

/// The result of `docket state rebuild`.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    pub entries: u64,
    pub stored_digest: String,
    pub replayed_digest: String,
    pub equal: bool,
    /// The earliest seq at which an object of the two states differs.
    pub first_divergent_seq: Option<u64>,
    pub differing_objects: Vec<String>,
    /// Findings stored beside the state, and found again by the replay.
    pub findings_stored: u64,
    pub findings_replayed: u64,
    /// Findings on one side only (stored but not found again, or found but not stored).
    pub differing_findings: Vec<String>,
    /// Whether the stored registry (who may sign what) is the one the chain derives.
    pub registry_equal: bool,
    pub events_per_s: f64,
}

impl RebuildReport {
    /// Whether everything stored beside the chain is what the chain derives.
    pub fn agrees(&self) -> bool {
        self.equal && self.differing_findings.is_empty() && self.registry_equal
    }

    /// What disagrees, in one line (an error message's body).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.equal {
            parts.push(format!(
                "state objects differ ({}{})",
                self.differing_objects.join(", "),
                self.first_divergent_seq
                    .map(|s| format!("; first at seq {s}"))
                    .unwrap_or_default()
            ));
        }
        if !self.differing_findings.is_empty() {
            parts.push(format!(
                "findings differ ({} stored, {} replayed: {})",
                self.findings_stored,
                self.findings_replayed,
                self.differing_findings.join("; ")
            ));
        }
        if !self.registry_equal {
            parts.push("the stored key registry is not the chain's".into());
        }
        parts.join("; ")
    }
}

/// What a finding is, for comparing stored and replayed findings.
fn finding_line(f: &Finding) -> String {
    format!("seq {} {}: {}", f.seq, f.rule.as_str(), f.message)
}

/// Replays from genesis and compares with what is stored beside the chain: the
/// projection, the findings and the key registry.
pub fn rebuild_check(store: &Store) -> Result<RebuildReport, StoreError> {
    let stored = store.load_state()?;
    let started = std::time::Instant::now();
    let mut replayed = VaultState::default();
    let mut registry = store.genesis_registry()?;
    let mut found = replay_with(
        store,
        &mut replayed,
        Until::Seq(stored.seq),
        Some(&mut registry),
    )?;
    // Findings past the projection's seq (none, unless it lags the chain) are the chain's too.
    if stored.seq < store.head()?.0 {
        let mut rest = replayed.clone();
        found.extend(replay_with(
            store,
            &mut rest,
            Until::End,
            Some(&mut registry),
        )?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    compare(store, &stored, &replayed, &found, &registry, elapsed)
}

/// Compares what is stored beside the chain with a replay of the chain: `replayed` as of
/// the stored projection's seq, `found` the findings of every entry, `registry` after the
/// last entry. `verify` calls it with the replay it makes on its own pass.
pub fn compare(
    store: &Store,
    stored: &VaultState,
    replayed: &VaultState,
    found: &[Finding],
    registry: &Registry,
    elapsed: f64,
) -> Result<RebuildReport, StoreError> {
    let mut stored_findings: Vec<String> = store.findings()?.iter().map(finding_line).collect();
    let mut replayed_findings: Vec<String> = found.iter().map(finding_line).collect();
    stored_findings.sort();
    replayed_findings.sort();
    let differing_findings: Vec<String> = {
        let (a, b): (BTreeSet<&String>, BTreeSet<&String>) = (
            stored_findings.iter().collect(),
            replayed_findings.iter().collect(),
        );
        let missing = b.difference(&a).map(|l| format!("not stored: {l}"));
        let extra = a.difference(&b).map(|l| format!("not the chain's: {l}"));
        let mut d: Vec<String> = missing.chain(extra).take(20).collect();
        if d.is_empty() && stored_findings.len() != replayed_findings.len() {
            d.push("a finding is stored twice".into());
        }
        d
    };
    let registry_equal = match store.registry()? {
        Some(r) => registry_matches(&r, registry),
        None => stored.seq == 0,
    };
    let digest = |s: &VaultState| {
        s.digest().map_err(|source| StoreError::Encode {
            what: "the state (for its digest)",
            source,
        })
    };
    let (a, b) = (digest(stored)?, digest(replayed)?);
    let mut differing = Vec::new();
    let mut first: Option<u64> = None;
    let mut note = |key: String, seqs: [Option<u64>; 2]| {
        let seq = seqs.iter().flatten().min().copied();
        first = match (first, seq) {
            (Some(f), Some(s)) => Some(f.min(s)),
            (f, s) => f.or(s),
        };
        differing.push(key);
    };
    macro_rules! diff {
        ($field:ident, $prefix:literal) => {
            let keys: BTreeSet<&String> =
                stored.$field.keys().chain(replayed.$field.keys()).collect();
            for k in keys {
                let (x, y) = (stored.$field.get(k), replayed.$field.get(k));
                if x != y {
                    note(
                        format!(concat!($prefix, "{}"), k),
                        [x.map(|o| o.last_seq), y.map(|o| o.last_seq)],
                    );
                }
            }
        };
    }
    diff!(agents, "agent ");
    diff!(grants, "grant ");
    diff!(approvals, "approval ");
    diff!(tokens, "token ");
    diff!(step_up_keys, "step-up key ");
    if stored.policy != replayed.policy {
        note(
            "policy".into(),
            [Some(stored.policy.set_seq), Some(replayed.policy.set_seq)],
        );
    }
    differing.truncate(20);
    Ok(RebuildReport {
        entries: replayed.seq,
        stored_digest: hex(&a),
        replayed_digest: hex(&b),
        equal: a == b,
        first_divergent_seq: if a == b {
            None
        } else {
            first.or(Some(stored.seq.min(replayed.seq) + 1))
        },
        differing_objects: differing,
        findings_stored: stored_findings.len() as u64,
        findings_replayed: replayed_findings.len() as u64,
        differing_findings,
        registry_equal,
        events_per_s: if elapsed > 0.0 {
            replayed.seq as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// Whether a stored registry says what the derived one says (who may sign what).
fn registry_matches(stored: &Registry, derived: &Registry) -> bool {
    stored.admin_key_id == derived.admin_key_id
        && stored.ledger_key_id == derived.ledger_key_id
        && stored.keys == derived.keys
        && stored.policy_recorded == derived.policy_recorded
        && stored.policy == derived.policy
}

/// Replaces everything stored beside the chain (projection, findings, registry) with what
/// a replay from genesis derives; returns the entries replayed. The store must be the
/// primary (no `serve` running).
pub fn repair(store: &Store) -> Result<u64, StoreError> {
    let mut state = VaultState::default();
    let mut registry = store.genesis_registry()?;
    let findings = replay_with(store, &mut state, Until::End, Some(&mut registry))?;
    let mut tip = store.tip(|| registry.clone())?;
    tip.registry = registry;
    let all = changed_objects(&VaultState::default(), &state);
    let delta = ProjectionDelta::capture(&state, &all, findings)?;
    store.replace_derived(&tip, &delta)?;
    Ok(state.seq)
}
