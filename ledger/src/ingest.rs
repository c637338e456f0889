//! The append loop: take a batch, admit it, write it durably, then acknowledge it.
//!
//! Order per batch is fixed: admission, one synced WriteBatch, ack, notices,
//! checkpoint. A failed write ends the loop with an error: nothing after it is
//! acknowledged, so nothing acknowledged can be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use docket_schemas::notice::Appended;
use docket_schemas::{Checkpoint, Event, EventBody, EventId, PolicySet, SCHEMA_VERSION};
use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::admission::{BATCH_EVENTS_MAX, ChainTip, Incoming, Plan, admit};
use crate::chain::hex;
use crate::clock::{ClockError, now, now_us};
use crate::desk::{Desk, Entropy, Introspector, SeenRequest, VAULT_BATCH_MAX, read, write};
use crate::merkle::{CompactRange, leaf_hash};
use crate::registry::Registry;
use crate::state::{Finding, PolicyInForce, VaultState};
use crate::store::{
    FORMAT_HEAD_CHECKPOINTS, LedgerIdentity, ProjectionDelta, Store, StoreError, decode_record,
};
use crate::transport::{
    ACK_QUEUE_MAX, Bus, SUBJECT_APPENDED, SUBJECT_CHECKPOINTS, SUBJECT_FINDINGS, SUBJECT_REJECTED,
    Source, TransportError, VaultCall,
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
    #[error(transparent)]
    Clock(#[from] ClockError),
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

/// A running ledger: the store, its tip, and the key that signs checkpoints.
pub struct Ledger {
    store: Arc<Store>,
    tip: ChainTip,
    identity: LedgerIdentity,
    key: SigningKey,
    policy: CheckpointPolicy,
    checkpointed: (u64, Instant),
    /// The Merkle tree's border at the tip: the next checkpoint's root.
    tree: CompactRange,
    /// Set by a reader who waits for a checkpoint (a receipt): sign at the next tick.
    checkpoint_wanted: Arc<AtomicBool>,
    /// Set when a witness says this history is not the one it saw: sign nothing more.
    checkpoints_halted: Arc<AtomicBool>,
    /// The projection, shared with readers (the vault's introspection) behind a lock held only to apply.
    state: Arc<RwLock<VaultState>>,
    /// Findings of the last committed batch, to publish.
    last_findings: Vec<Finding>,
    /// The vault's desk and its inbox, when this ledger serves vault requests.
    vault: Option<(Desk, Option<tokio::sync::mpsc::Receiver<VaultCall>>)>,
    /// The registry as of the last commit, for the introspector.
    registry_shared: Arc<RwLock<Registry>>,
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
        let tip = store.tip(|| Registry::new(&admin, &key.verifying_key()))?;
        let tree = prepare_tree(&store, &tip, &key, &identity.origin)?;
        let last_cp = store.last_checkpoint()?.map_or(0, |(s, _)| s);
        // Nothing stored beside the chain is trusted until the chain agrees with it: a
        // projection, findings or registry edited on disk would otherwise be served.
        let check = crate::projection::rebuild_check(&store)?;
        if !check.agrees() {
            return Err(StoreError::Diverges {
                path: store.path().into(),
                what: check.summary(),
            });
        }
        let mut state = store.load_state()?;
        crate::projection::catch_up(&store, &mut state, &tip)?;
        let registry_shared = Arc::new(RwLock::new(tip.registry.clone()));
        Ok(Ledger {
            store: Arc::new(store),
            registry_shared,
            tip,
            identity,
            key,
            policy,
            checkpointed: (last_cp, Instant::now()),
            tree,
            checkpoint_wanted: Arc::default(),
            checkpoints_halted: Arc::default(),
            state: Arc::new(RwLock::new(state)),
            last_findings: Vec::new(),
            vault: None,
            stats: IngestStats::default(),
        })
    }

    /// A flag that stops all checkpoint signing, for when a witness raises an alarm.
    pub fn checkpoints_halted(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.checkpoints_halted)
    }

    /// A flag that asks for a checkpoint at the next tick, for readers waiting on one.
    pub fn checkpoint_wanted(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.checkpoint_wanted)
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

    /// Serves vault requests from `calls` in this ledger's loop, decided by `desk`, so each
    /// decision is appended before it is answered.
    pub fn with_vault(
        mut self,
        desk: Desk,
        calls: tokio::sync::mpsc::Receiver<VaultCall>,
    ) -> Ledger {
        self.vault = Some((desk, Some(calls)));
        self
    }

    /// The policy in force at the tip, as the chain records it.
    pub fn policy(&self) -> PolicyInForce {
        read(&self.state).policy.clone()
    }

    /// On an empty chain, records the documented default policy as the first entry, signed
    /// by the ledger's key: every ledger's policy is on its chain from seq 1. Returns what
    /// was appended (nothing on a chain that has entries).
    pub async fn record_genesis_policy(&mut self) -> Result<Plan, IngestError> {
        if self.tip.seq > 0 {
            return Ok(Plan::default());
        }
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId(*uuid::Uuid::now_v7().as_bytes()),
            ts: now()?,
            body: EventBody::PolicySet(PolicySet::DEFAULTS),
        };
        let item = Incoming::sealed(&event, &self.key, crate::admission::LOCAL_SEQ_BIT | 1);
        let plan = self.commit(vec![item]).await?;
        if let Some(q) = plan.quarantined.first() {
            return Err(IngestError::Task(format!(
                "the genesis policy was not admitted: {}",
                q.reason
            )));
        }
        Ok(plan)
    }

    /// Answers a batch of vault requests: decide each, append every decision in one
    /// durable commit, then reply with receipts. A decision that could not be
    /// appended is answered with an error and never with a token (fail closed).
    async fn serve_vault(&mut self, calls: Vec<VaultCall>, bus: &Bus) -> Result<(), IngestError> {
        let now = now()?;
        let requests: Vec<bytes::Bytes> = calls.iter().map(|c| c.request.clone()).collect();
        let handled = {
            let Some((desk, _)) = self.vault.as_mut() else {
                return Ok(());
            };
            let state = read(&self.state);
            desk.handle(&requests, &state, &self.tip.registry, now, &mut OsEntropy)
        };
        let items: Vec<Incoming> = handled
            .iter()
            .flat_map(|h| h.items.iter().cloned())
            .collect();
        let seen: Vec<SeenRequest> = handled.iter().filter_map(|h| h.seen.clone()).collect();
        let plan = if items.is_empty() && seen.is_empty() {
            Plan::default()
        } else {
            self.commit_with_requests(items, seen).await?
        };
        let Some((desk, _)) = self.vault.as_ref() else {
            return Ok(());
        };
        for (call, h) in calls.into_iter().zip(handled) {
            let notify = h.notify.clone();
            let reply = desk.settle(h, &plan);
            let recorded =
                matches!(&reply, docket_schemas::vault::Reply::Outcome(o) if o.receipt.is_some());
            if let (true, Some((subject, notice))) = (recorded, notify) {
                bus.publish_notice(subject, &notice).await;
            }
            // The caller may have gone; the decision is recorded either way.
            let _ = call.reply.send(reply);
        }
        self.announce(bus, &plan).await;
        Ok(())
    }

    /// An introspector sharing this ledger's state, registry and replay guard (with a vault).
    pub fn introspector(&self) -> Option<Introspector> {
        let (desk, _) = self.vault.as_ref()?;
        Some(desk.introspector(Arc::clone(&self.state), Arc::clone(&self.registry_shared)))
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
        let genesis = self.record_genesis_policy().await?;
        self.announce(&bus, &genesis).await;
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
        let mut calls = self.vault.as_mut().and_then(|v| v.1.take());
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
        self.commit_with_requests(items, Vec::new()).await
    }

    /// `commit`, storing the vault request ids the desk accepted in the same write.
    async fn commit_with_requests(
        &mut self,
        items: Vec<crate::admission::Incoming>,
        requests_seen: Vec<SeenRequest>,
    ) -> Result<Plan, IngestError> {
        let store = Arc::clone(&self.store);
        let mut tip = self.tip.clone();
        let mut tree = self.tree.clone();
        let received_us = now_us()?;
        let state = Arc::clone(&self.state);
        let (tip, tree, plan, findings, admit_us, write_us) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let t = Instant::now();
                let mut plan = admit(&mut tip, &items, received_us, |ids| {
                    store.stored_payloads(ids)
                })?;
                plan.grow_tree(&mut tree);
                let delta = {
                    let mut st = write(&state);
                    let mut findings = Vec::new();
                    let mut touched = std::collections::BTreeSet::new();
                    for e in &plan.appends {
                        let (f, t) = st.apply(e.seq, e.received_us, &e.event);
                        findings.extend(f);
                        touched.extend(t);
                    }
                    let mut delta = ProjectionDelta::capture(&st, &touched, findings)?;
                    delta.requests_seen = requests_seen;
                    delta
                };
                let admit_us = t.elapsed().as_micros() as u64;
                store.commit(&plan, &tip, Some(&delta))?;
                Ok((
                    tip,
                    tree,
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
        if plan.registry_changed {
            *write(&self.registry_shared) = tip.registry.clone();
        }
        self.tip = tip;
        self.tree = tree;
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
            let committed_us = match now_us() {
                Ok(t) => t,
                Err(e) => return tracing::error!(error = %e, "no appended notice"),
            };
            let notice = Appended {
                origin: self.identity.origin.clone(),
                from_seq: first.seq,
                to_seq: last.seq,
                head: hex(&last.hash),
                committed_us,
            };
            bus.publish_notice(SUBJECT_APPENDED, &notice).await;
        }
        for q in &plan.quarantined {
            bus.publish_notice(SUBJECT_REJECTED, q).await;
        }
        for f in &self.last_findings {
            bus.publish_notice(SUBJECT_FINDINGS, f).await;
        }
    }

    /// Signs, stores and publishes a checkpoint if the policy (or `force`) says so and the chain grew.
    pub async fn checkpoint_if_due(&mut self, bus: &Bus, force: bool) -> Result<(), IngestError> {
        if self.checkpoints_halted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (size, at) = self.checkpointed;
        let grown = self.tip.seq - size;
        let wanted = self.checkpoint_wanted.swap(false, Ordering::Relaxed);
        let due = grown >= self.policy.every_entries
            || (grown > 0 && at.elapsed() >= self.policy.every)
            || wanted;
        if grown == 0 || !(due || force) {
            return Ok(());
        }
        if self.tree.size() != self.tip.seq {
            return Err(IngestError::Store(StoreError::Tree {
                path: self.store.path().into(),
                what: format!(
                    "has {} leaves but the chain {} entries; no checkpoint signed",
                    self.tree.size(),
                    self.tip.seq
                ),
            }));
        }
        let note = Checkpoint {
            origin: self.identity.origin.clone(),
            size: self.tip.seq,
            root: self.tree.root(),
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

/// Entries whose tree nodes a backfill writes per batch.
const BACKFILL_BATCH: usize = 65_536;

/// Brings the Merkle tree up to the chain (a store from before the tree, or written by a
/// tool that skipped it), re-signs format-1 checkpoints (which named the head) over the
/// tree, and refuses a store whose newest checkpoint the tree contradicts: signing
/// another would put two inconsistent statements under the ledger's key.
fn prepare_tree(
    store: &Store,
    tip: &ChainTip,
    key: &SigningKey,
    origin: &str,
) -> Result<CompactRange, StoreError> {
    let tree_error = |what: String| StoreError::Tree {
        path: store.path().into(),
        what,
    };
    // The tip names the last entry; a chain cut short below it is not extended or signed.
    if tip.seq > 0 {
        let last = store.record(tip.seq)?;
        let hash = last
            .as_deref()
            .map(|r| decode_record(tip.seq, r).map(|e| e.hash))
            .transpose()?;
        if hash != Some(tip.head) {
            return Err(tree_error(format!(
                "cannot be trusted: the tip names entry {}, which is missing or changed (the chain was truncated or edited)",
                tip.seq
            )));
        }
    }
    let size = store.tree_size()?;
    if size > tip.seq {
        return Err(tree_error(format!(
            "has {size} leaves but the chain only {} entries: the chain was truncated",
            tip.seq
        )));
    }
    let mut tree = store.compact_range(size)?;
    let mut nodes = Vec::new();
    for item in store.records(size + 1)? {
        let (seq, record) = item?;
        if seq > tip.seq {
            break;
        }
        if seq != tree.size() + 1 {
            return Err(tree_error(format!(
                "cannot be built: entry {} is missing",
                tree.size() + 1
            )));
        }
        let entry = decode_record(seq, &record)?;
        tree.push(leaf_hash(&entry.hash), |id, h| nodes.push((id, h)));
        if nodes.len() >= BACKFILL_BATCH {
            store.put_tree(&nodes, tree.size())?;
            nodes.clear();
        }
    }
    if tree.size() != tip.seq {
        return Err(tree_error(format!(
            "reaches {} but the chain's tip is {}",
            tree.size(),
            tip.seq
        )));
    }
    if tree.size() != size {
        store.put_tree(&nodes, tree.size())?;
        tracing::info!(
            from = size,
            to = tree.size(),
            "Merkle tree built for entries written before it"
        );
    }
    let public = key.verifying_key();
    if store.format()? == FORMAT_HEAD_CHECKPOINTS {
        let mut notes = Vec::new();
        for (size, note) in store.checkpoints()? {
            let old = Checkpoint::verify(&note, origin, &public)
                .map_err(|e| tree_error(format!("upgrade: checkpoint {size}: {e}")))?;
            let head = store
                .record(size)?
                .map(|r| decode_record(size, &r).map(|e| e.hash))
                .transpose()?;
            if head != Some(old.root) {
                return Err(tree_error(format!(
                    "upgrade: the format-1 checkpoint at size {size} names a head the chain does not have"
                )));
            }
            let cp = Checkpoint {
                origin: origin.to_string(),
                size,
                root: store.tree_root(size)?,
            };
            notes.push((size, cp.sign(origin, key)));
        }
        store.upgrade_checkpoints(&notes)?;
        tracing::info!(
            checkpoints = notes.len(),
            "format-1 checkpoints re-signed over the Merkle tree"
        );
    }
    if let Some((size, note)) = store.last_checkpoint()? {
        let cp = Checkpoint::verify(&note, origin, &public).map_err(|e| {
            tree_error(format!(
                "'s newest checkpoint ({size}) does not verify: {e}"
            ))
        })?;
        if size > tip.seq {
            return Err(tree_error(format!(
                "is behind its own checkpoint: size {size} was signed, the chain has {} entries (rolled back or truncated)",
                tip.seq
            )));
        }
        if cp.root != store.tree_root(size)? {
            return Err(tree_error(format!(
                "disagrees with the checkpoint signed at size {size}; the ledger will not sign a checkpoint inconsistent with it"
            )));
        }
        // Past the newest checkpoint nothing signed vouches for the stored nodes: grow the
        // checkpoint's own border with leaves from the entries and compare, so the next
        // checkpoint signs the root the entries give, not one an edit left behind.
        let mut from_entries = store.compact_range(size)?;
        for item in store.records(size + 1)? {
            let (seq, record) = item?;
            if seq > tip.seq {
                break;
            }
            let entry = decode_record(seq, &record)?;
            from_entries.push(leaf_hash(&entry.hash), |_, _| {});
        }
        if from_entries != tree {
            return Err(tree_error(format!(
                "after the checkpoint of {size} entries is not the tree the entries give (edited?)"
            )));
        }
    }
    Ok(tree)
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

/// UUIDv7s from the clock and secrets from the operating system's generator.
struct OsEntropy;

impl Entropy for OsEntropy {
    fn uuid_v7(&mut self) -> [u8; 16] {
        *uuid::Uuid::now_v7().as_bytes()
    }

    fn secret(&mut self) -> [u8; 32] {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        secret
    }
}
