//! The append loop: take a batch, admit it, write it durably, then acknowledge it.
//!
//! Order per batch is fixed: admission, one synced WriteBatch, ack, notices,
//! checkpoint. A failed write ends the loop with an error: nothing after it is
//! acknowledged, so nothing acknowledged can be lost.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use docket_schemas::Checkpoint;
use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::admission::{BATCH_EVENTS_MAX, ChainTip, Plan, admit};
use crate::chain::hex;
use crate::state::{Finding, Policy, VaultState};
use crate::store::{LedgerIdentity, ProjectionDelta, Store, StoreError};
use crate::transport::{
    ACK_QUEUE_MAX, Bus, SUBJECT_APPENDED, SUBJECT_CHECKPOINTS, SUBJECT_FINDINGS, SUBJECT_REJECTED,
    Source, TransportError,
};

/// Batches read ahead of the append loop at most.
pub const FETCH_QUEUE_MAX: usize = 2;

/// When to sign a checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    /// After this many new entries...
    pub every_entries: u64,
    /// ...or after this long with any new entry.
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_entries: 10_000,
            every: Duration::from_secs(10),
        }
    }
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("write failed, acknowledgement stopped: {0}")]
    Store(#[from] StoreError),
    #[error("transport failed: {0}")]
    Transport(#[from] TransportError),
    #[error("admission task failed: {0}")]
    Task(String),
}

/// Counters since the loop started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestStats {
    pub batches: u64,
    pub appended: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub checkpoints: u64,
    pub findings: u64,
    /// Where the loop's time went, in microseconds: waiting for input, admission, the synced write, acks.
    pub wait_us: u64,
    pub admit_us: u64,
    pub write_us: u64,
    pub ack_us: u64,
}

/// The `docket.appended` notice.
#[derive(Serialize)]
struct Appended<'a> {
    origin: &'a str,
    from_seq: u64,
    to_seq: u64,
    head: String,
    committed_us: i64,
}

/// A running ledger: the store, its tip, and the key that signs checkpoints.
pub struct Ledger {
    store: Arc<Store>,
    tip: ChainTip,
    identity: LedgerIdentity,
    key: SigningKey,
    policy: CheckpointPolicy,
    checkpointed: (u64, Instant),
    /// The projection, shared with readers (the vault's introspection) behind a lock held only to apply.
    state: Arc<RwLock<VaultState>>,
    rules: Policy,
    /// Findings of the last committed batch, to publish.
    last_findings: Vec<Finding>,
    vault: Option<VaultDesk>,
    /// The registry as of the last commit, for the introspector.
    registry_shared: Arc<RwLock<crate::registry::Registry>>,
    pub stats: IngestStats,
}

impl Ledger {
    pub fn new(
        store: Store,
        key: SigningKey,
        policy: CheckpointPolicy,
    ) -> Result<Ledger, StoreError> {
        let identity = store.identity()?;
        let admin = docket_schemas::decode_public_key(&identity.admin_public_key)
            .ok()
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| StoreError::CorruptMeta {
                path: store.path().into(),
                key: "admin_public_key".into(),
            })?;
        let tip = store.tip(|| crate::registry::Registry::new(&admin))?;
        let last_cp = store.checkpoints()?.last().map(|(s, _)| *s).unwrap_or(0);
        let rules = Policy::default();
        let mut state = store.load_state()?;
        crate::projection::catch_up(&store, &mut state, &rules, &tip)?;
        let registry_shared = Arc::new(RwLock::new(tip.registry.clone()));
        Ok(Ledger {
            store: Arc::new(store),
            registry_shared,
            tip,
            identity,
            key,
            policy,
            checkpointed: (last_cp, Instant::now()),
            state: Arc::new(RwLock::new(state)),
            rules,
            last_findings: Vec::new(),
            vault: None,
            stats: IngestStats::default(),
        })
    }

    pub fn tip(&self) -> &ChainTip {
        &self.tip
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for readers that outlive a borrow of the ledger (the fate responder).
    pub fn shared_store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Serves vault requests from `desk` in this ledger's loop, so each decision is appended before it is answered.
    /// Replaces the default policy settings (step-up age, approval lifetime).
    pub fn with_rules(mut self, rules: Policy) -> Ledger {
        self.rules = rules;
        self
    }

    pub fn with_vault(mut self, desk: VaultDesk) -> Ledger {
        self.vault = Some(desk);
        self
    }

    /// Answers a batch of vault requests: decide each, append every decision in one
    /// durable commit, then reply with receipts. A decision that could not be
    /// appended is answered with an error and never with a token (fail closed).
    async fn serve_vault(&mut self, calls: Vec<VaultCall>, bus: &Bus) -> Result<(), IngestError> {
        use crate::vault::{Fresh, authenticate, decide};
        use serde_json::json;
        let now = docket_schemas::Timestamp::from_micros(now_us())
            .unwrap_or(docket_schemas::Timestamp::UNIX_EPOCH);
        type Answer = (
            VaultCall,
            serde_json::Value,
            Vec<docket_schemas::EventId>,
            Option<(String, serde_json::Value)>,
        );
        let mut answers: Vec<Answer> = Vec::new();
        let mut items = Vec::new();
        let mut local_seqs = std::collections::HashMap::new();
        let vault_key_id = self
            .vault
            .as_ref()
            .map(|d| docket_schemas::key_id(d.key.verifying_key().as_bytes()))
            .unwrap_or_default();
        {
            let Some(desk) = self.vault.as_mut() else {
                return Ok(());
            };
            let hash_key = desk.hash_key;
            let state = self.state.read().map_err(|_| StoreError::Poisoned)?;
            // Signature checks are the cost of a request: do them on every core.
            let checked: Vec<_> = {
                use rayon::prelude::*;
                let registry = &self.tip.registry;
                let state: &VaultState = &state;
                calls
                    .par_iter()
                    .map(|c| authenticate(&c.request, registry, state))
                    .collect()
            };
            let mut used_approvals = std::collections::HashSet::new();
            for (call, checked) in calls.into_iter().zip(checked) {
                let mut secret = [0u8; 32];
                if matches!(&checked, Ok(a) if matches!(a.request.op, crate::vault::Op::Token { .. }))
                {
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
                }
                let id = uuid::Uuid::now_v7();
                let fresh = Fresh {
                    now,
                    id: id.simple().to_string(),
                    token_secret: format!("dkt_{}", crate::chain::hex(&secret)),
                    hash_key: &hash_key,
                };
                let outcome = match checked {
                    Err(e) if e.0.is_none() => {
                        let why = e.2;
                        let _ = call
                            .reply
                            .send(json!({"ok": false, "error": why.to_string()}));
                        continue;
                    }
                    Err(e) => {
                        let (req, key_id, why) = *e;
                        let recorded = desk.unauthenticated_budget.take(now);
                        match req {
                            // Unauthenticated refusals are recorded up to a rate, so that a flood
                            // of junk cannot grow the chain or starve ingestion.
                            Some(req) if recorded => {
                                crate::vault::refused(&req, &key_id, &why, None, vec![])
                            }
                            _ => {
                                let _ = call
                                    .reply
                                    .send(json!({"ok": false, "error": why.to_string()}));
                                continue;
                            }
                        }
                    }
                    Ok(auth) => match desk.sighting(&auth.request, now) {
                        Err(why) => crate::vault::refused(
                            &auth.request,
                            &auth.requester.name(),
                            &why,
                            None,
                            vec![],
                        ),
                        Ok(()) => {
                            let mut outcome = decide(&state, &auth, &self.rules, &fresh);
                            // Decisions in one batch see the same snapshot: an approval may
                            // mint one token, so a second use within the batch is refused here.
                            for body in &outcome.events {
                                if let docket_schemas::EventBody::TokenIssued(t) = body
                                    && let Some(a) = &t.approval_id
                                    && !used_approvals.insert(a.clone())
                                {
                                    let why = crate::vault::Refusal::BadApproval(
                                        a.clone(),
                                        "was already used for a token".into(),
                                    );
                                    outcome = crate::vault::refused(
                                        &auth.request,
                                        &auth.requester.name(),
                                        &why,
                                        None,
                                        vec![],
                                    );
                                    break;
                                }
                            }
                            outcome
                        }
                    },
                };
                if outcome.events.is_empty() {
                    // Nothing to record (introspection, a poll still pending): answer now.
                    let _ = call.reply.send(outcome.reply);
                    continue;
                }
                let mut ids = Vec::new();
                for body in outcome.events {
                    let event = docket_schemas::Event {
                        v: docket_schemas::SCHEMA_VERSION,
                        id: docket_schemas::EventId(*uuid::Uuid::now_v7().as_bytes()),
                        ts: now,
                        body,
                    };
                    ids.push(event.id);
                    let source_seq = desk.next_local_seq();
                    local_seqs.insert(event.id, source_seq);
                    items.push(crate::admission::Incoming {
                        subject: format!(
                            "{}{}",
                            crate::transport::EVENT_SUBJECT_PREFIX,
                            event.kind()
                        ),
                        payload: docket_schemas::seal_event(&event, &desk.key).into(),
                        source_seq,
                    });
                }
                answers.push((call, outcome.reply, ids, outcome.notify));
            }
        }
        let plan = if items.is_empty() {
            crate::admission::Plan::default()
        } else {
            self.commit(items).await?
        };
        for (call, mut reply, ids, notify) in answers {
            let receipts: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| {
                    plan.appends
                        .iter()
                        .find(|e| e.event_id == *id)
                        .map(|e| json!({"seq": e.seq, "hash": hex(&e.hash)}))
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            if receipts.len() != ids.len() {
                let refusal = plan
                    .quarantined
                    .iter()
                    .find(|q| q.source_seq == local_seqs.get(&ids[0]).copied().unwrap_or(0));
                // The vault signed this event, so any key the refusal names is the vault's own.
                let why = match refusal {
                    Some(q) if q.code == "unknown_key" => format!(
                        "key {vault_key_id} (the vault's) is not registered: the admin must register it for the vault's kinds"
                    ),
                    Some(q) => {
                        format!("{} (signed with key {vault_key_id}, the vault's)", q.reason)
                    }
                    None => "not appended".into(),
                };
                reply = json!({"ok": false, "error": format!("the ledger did not record this decision: {why}; nothing was issued")});
            } else if !receipts.is_empty() {
                reply["receipt"] = receipts.last().cloned().unwrap_or_default();
                if let Some((subject, payload)) = notify {
                    bus.publish_owned(subject, serde_json::to_vec(&payload).unwrap_or_default())
                        .await;
                }
            }
            let _ = call.reply.send(reply);
        }
        self.announce(bus, &plan).await;
        Ok(())
    }

    /// An introspector sharing this ledger's state, registry and replay guard (with a vault).
    pub fn introspector(&self) -> Option<Introspector> {
        let desk = self.vault.as_ref()?;
        Some(Introspector {
            state: Arc::clone(&self.state),
            registry: Arc::clone(&self.registry_shared),
            guard: Arc::clone(&desk.guard),
            hash_key: desk.hash_key,
            rules: self.rules.clone(),
        })
    }

    /// The live projection; hold its read lock briefly.
    pub fn state(&self) -> Arc<RwLock<VaultState>> {
        Arc::clone(&self.state)
    }

    /// Runs until `shutdown` resolves or an error stops acknowledgement.
    pub async fn run(
        &mut self,
        mut source: Source,
        bus: Bus,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), IngestError> {
        tokio::pin!(shutdown);
        // Acks leave the append loop's critical path; the queue is bounded, so a slow
        // server slows the loop instead of letting unacked batches pile up.
        let (ack_tx, mut ack_rx) =
            tokio::sync::mpsc::channel::<crate::transport::AckToken>(ACK_QUEUE_MAX);
        let acker = tokio::spawn(async move {
            while let Some(token) = ack_rx.recv().await {
                if let Err(e) = token.send().await {
                    // Durable already: a redelivery is recognised by event id and acked then.
                    tracing::warn!(error = %e, "ack failed; the batch will be redelivered and deduplicated");
                }
            }
        });
        // The source is read by its own task: a select! below must never cancel a read
        // half-way (messages taken but not yet returned would wait out JetStream's ack
        // timeout), and reading the next batch overlaps with committing this one.
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel(FETCH_QUEUE_MAX);
        let fetcher = tokio::spawn(async move {
            loop {
                let delivery = source.next(BATCH_EVENTS_MAX).await;
                let failed = delivery.is_err();
                if batch_tx.send(delivery).await.is_err() || failed {
                    break;
                }
            }
        });
        let mut tick = tokio::time::interval(self.policy.every.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut calls = self.vault.as_mut().and_then(|v| v.calls.take());
        loop {
            tokio::select! {
                // Not biased: vault requests and deliveries take turns when both are ready.
                _ = &mut shutdown => break,
                call = next_call(&mut calls) => {
                    let Some(call) = call else {
                        calls = None;
                        continue;
                    };
                    let mut batch = vec![call];
                    while batch.len() < VAULT_BATCH_MAX {
                        match calls.as_mut().map(|c| c.try_recv()) {
                            Some(Ok(c)) => batch.push(c),
                            _ => break,
                        }
                    }
                    self.serve_vault(batch, &bus).await?;
                }
                _ = tick.tick() => self.checkpoint_if_due(&bus, false).await?,
                delivery = timed(batch_rx.recv(), &mut self.stats.wait_us) => {
                    let delivery = match delivery {
                        Some(Ok(d)) => d,
                        None | Some(Err(TransportError::Closed)) => break,
                        Some(Err(e)) => return Err(e.into()),
                    };
                    if delivery.items.is_empty() {
                        continue;
                    }
                    let plan = self.commit(delivery.items).await?;
                    if timed(ack_tx.send(delivery.ack), &mut self.stats.ack_us).await.is_err() {
                        return Err(IngestError::Task("ack task ended".into()));
                    }
                    self.announce(&bus, &plan).await;
                    self.checkpoint_if_due(&bus, false).await?;
                }
            }
        }
        fetcher.abort();
        drop(ack_tx);
        let _ = acker.await;
        self.checkpoint_if_due(&bus, true).await?;
        // A clean stop leaves no WAL to replay, so the next start is quick.
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        Ok(())
    }

    /// Admits and durably writes one batch; returns the plan that was written.
    pub async fn commit(
        &mut self,
        items: Vec<crate::admission::Incoming>,
    ) -> Result<Plan, IngestError> {
        let store = Arc::clone(&self.store);
        let mut tip = self.tip.clone();
        let received_us = now_us();
        let (state, rules) = (Arc::clone(&self.state), self.rules.clone());
        let (tip, plan, findings, admit_us, write_us) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let t = Instant::now();
                let plan = admit(&mut tip, &items, received_us, |ids| store.contains_ids(ids))?;
                let delta = {
                    // A poisoned lock means a panic mid-apply: the projection can't be trusted, stop.
                    let mut st = state.write().map_err(|_| StoreError::Poisoned)?;
                    let mut findings = Vec::new();
                    let mut touched = std::collections::BTreeSet::new();
                    for e in &plan.appends {
                        let (f, t) = st.apply(e.seq, &e.event, &rules);
                        findings.extend(f);
                        touched.extend(t);
                    }
                    ProjectionDelta::capture(&st, &touched, findings)
                };
                let admit_us = t.elapsed().as_micros() as u64;
                store.commit(&plan, &tip, Some(&delta))?;
                Ok((
                    tip,
                    plan,
                    delta.findings,
                    admit_us,
                    t.elapsed().as_micros() as u64 - admit_us,
                ))
            })
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        self.stats.findings += findings.len() as u64;
        self.last_findings = findings;
        self.stats.admit_us += admit_us;
        self.stats.write_us += write_us;
        if plan.registry_changed
            && let Ok(mut shared) = self.registry_shared.write()
        {
            *shared = tip.registry.clone();
        }
        self.tip = tip;
        self.stats.batches += 1;
        self.stats.appended += plan.appends.len() as u64;
        self.stats.quarantined += plan.quarantined.len() as u64;
        self.stats.duplicates += plan.duplicates as u64;
        for q in &plan.quarantined {
            tracing::warn!(source_seq = q.source_seq, code = q.code, reason = %q.reason, "quarantined");
        }
        Ok(plan)
    }

    async fn announce(&self, bus: &Bus, plan: &Plan) {
        if let (Some(first), Some(last)) = (plan.appends.first(), plan.appends.last()) {
            let notice = Appended {
                origin: &self.identity.origin,
                from_seq: first.seq,
                to_seq: last.seq,
                head: hex(&last.hash),
                committed_us: now_us(),
            };
            bus.publish(
                SUBJECT_APPENDED,
                serde_json::to_vec(&notice).unwrap_or_default(),
            )
            .await;
        }
        for q in &plan.quarantined {
            bus.publish(SUBJECT_REJECTED, serde_json::to_vec(q).unwrap_or_default())
                .await;
        }
        for f in &self.last_findings {
            bus.publish(SUBJECT_FINDINGS, serde_json::to_vec(f).unwrap_or_default())
                .await;
        }
    }

    /// Signs, stores and publishes a checkpoint if the policy (or `force`) says so and the chain grew.
    pub async fn checkpoint_if_due(&mut self, bus: &Bus, force: bool) -> Result<(), IngestError> {
        let (size, at) = self.checkpointed;
        let grown = self.tip.seq - size;
        let due =
            grown >= self.policy.every_entries || (grown > 0 && at.elapsed() >= self.policy.every);
        if grown == 0 || !(due || force) {
            return Ok(());
        }
        let note = Checkpoint {
            origin: self.identity.origin.clone(),
            size: self.tip.seq,
            head: self.tip.head,
        }
        .sign(&self.identity.origin, &self.key);
        let store = Arc::clone(&self.store);
        let (seq, text) = (self.tip.seq, note.clone());
        tokio::task::spawn_blocking(move || store.put_checkpoint(seq, &text))
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        self.checkpointed = (self.tip.seq, Instant::now());
        self.stats.checkpoints += 1;
        bus.publish(SUBJECT_CHECKPOINTS, note.into_bytes()).await;
        Ok(())
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>, total_us: &mut u64) -> T {
    let t = Instant::now();
    let out = f.await;
    *total_us += t.elapsed().as_micros() as u64;
    out
}

async fn next_call(
    calls: &mut Option<tokio::sync::mpsc::Receiver<VaultCall>>,
) -> Option<VaultCall> {
    match calls {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Vault requests answered together in one commit at most.
pub const VAULT_BATCH_MAX: usize = 256;
/// Request ids remembered for replay detection.
const SEEN_MAX: usize = crate::vault::SEEN_REQUESTS_MAX;

/// One vault request from the network, and where its answer goes.
pub struct VaultCall {
    pub request: bytes::Bytes,
    pub reply: tokio::sync::oneshot::Sender<serde_json::Value>,
}

/// The vault's keys and its inbox.
pub struct VaultDesk {
    key: SigningKey,
    hash_key: [u8; 32],
    calls: Option<tokio::sync::mpsc::Receiver<VaultCall>>,
    guard: Arc<std::sync::Mutex<ReplayGuard>>,
    unauthenticated_budget: RateBudget,
    local_seq: u64,
}

/// Request ids seen within the replay window, shared by the ledger's loop and the introspector.
pub struct ReplayGuard {
    seen: std::collections::HashSet<docket_schemas::EventId>,
    /// Oldest first, with the time each was seen.
    seen_order: std::collections::VecDeque<(docket_schemas::EventId, i64)>,
    /// Requests dated before this were sent before this vault started: their ids were not
    /// remembered, so they are refused rather than risk a replay.
    started: docket_schemas::Timestamp,
}

impl ReplayGuard {
    /// Accepts a request id once within the replay window.
    fn sighting(
        &mut self,
        req: &crate::vault::Request,
        now: docket_schemas::Timestamp,
    ) -> Result<(), crate::vault::Refusal> {
        use crate::vault::{REQUEST_SKEW_MAX_S, Refusal};
        let window_us = REQUEST_SKEW_MAX_S * 1_000_000;
        while let Some((id, ts)) = self.seen_order.front().copied() {
            if ts >= now.as_micros() - 2 * window_us {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
        if req.ts < self.started {
            return Err(Refusal::Stale(req.ts));
        }
        if self.seen.contains(&req.id) {
            return Err(Refusal::Replayed(req.id.to_string()));
        }
        if self.seen.len() >= SEEN_MAX {
            return Err(Refusal::Malformed(
                "too many requests in the replay window; try again".into(),
            ));
        }
        self.seen.insert(req.id);
        self.seen_order.push_back((req.id, now.as_micros()));
        Ok(())
    }
}

impl VaultDesk {
    /// The token-hash key is derived from the vault's key, so one secret file holds both.
    pub fn new(key: SigningKey, calls: tokio::sync::mpsc::Receiver<VaultCall>) -> VaultDesk {
        let hash_key = blake3::derive_key("docket vault token hash v1", key.as_bytes());
        let started = docket_schemas::Timestamp::from_micros(now_us())
            .unwrap_or(docket_schemas::Timestamp::UNIX_EPOCH);
        VaultDesk {
            key,
            hash_key,
            calls: Some(calls),
            guard: Arc::new(std::sync::Mutex::new(ReplayGuard {
                seen: Default::default(),
                seen_order: Default::default(),
                started,
            })),
            unauthenticated_budget: RateBudget::new(UNAUTHENTICATED_RECORDED_PER_S),
            // Local entries take transport sequences with the top bit set, unique per start.
            local_seq: crate::admission::LOCAL_SEQ_BIT | ((started.as_micros() as u64) << 12),
        }
    }

    fn next_local_seq(&mut self) -> u64 {
        self.local_seq += 1;
        self.local_seq
    }

    fn sighting(
        &mut self,
        req: &crate::vault::Request,
        now: docket_schemas::Timestamp,
    ) -> Result<(), crate::vault::Refusal> {
        match self.guard.lock() {
            Ok(mut g) => g.sighting(req, now),
            Err(_) => Err(crate::vault::Refusal::Malformed(
                "replay guard unavailable".into(),
            )),
        }
    }
}

/// Answers introspections outside the ledger's loop, from the live projection: they append
/// nothing, so they need not wait behind commits. Anything else goes to the loop.
#[derive(Clone)]
pub struct Introspector {
    state: Arc<RwLock<VaultState>>,
    registry: Arc<RwLock<crate::registry::Registry>>,
    guard: Arc<std::sync::Mutex<ReplayGuard>>,
    hash_key: [u8; 32],
    rules: Policy,
}

impl Introspector {
    /// The answer to an introspection, or `None` when the request must go to the ledger's
    /// loop (another operation, or a refusal that has to be recorded).
    pub fn answer(&self, request: &[u8]) -> Option<serde_json::Value> {
        use crate::vault::{Fresh, Op, authenticate, decide};
        let now = docket_schemas::Timestamp::from_micros(now_us())
            .unwrap_or(docket_schemas::Timestamp::UNIX_EPOCH);
        let registry = self.registry.read().ok()?;
        let state = self.state.read().ok()?;
        let auth = authenticate(request, &registry, &state).ok()?;
        if !matches!(auth.request.op, Op::Introspect { .. }) {
            return None;
        }
        let fresh = Fresh {
            now,
            id: String::new(),
            token_secret: String::new(),
            hash_key: &self.hash_key,
        };
        let outcome = decide(&state, &auth, &self.rules, &fresh);
        if !outcome.events.is_empty() {
            return None;
        }
        self.guard.lock().ok()?.sighting(&auth.request, now).ok()?;
        Some(outcome.reply)
    }
}

/// Refusals of unauthenticated requests recorded per second at most.
const UNAUTHENTICATED_RECORDED_PER_S: u32 = 50;

/// A token bucket refilled every second.
struct RateBudget {
    per_s: u32,
    left: u32,
    second: i64,
}

impl RateBudget {
    fn new(per_s: u32) -> RateBudget {
        RateBudget {
            per_s,
            left: per_s,
            second: 0,
        }
    }

    fn take(&mut self, now: docket_schemas::Timestamp) -> bool {
        let second = now.as_micros() / 1_000_000;
        if second != self.second {
            self.second = second;
            self.left = self.per_s;
        }
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }
}

/// Wall-clock microseconds since the epoch: read here, at the edge, and passed into the core.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
