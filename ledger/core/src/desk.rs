//! The vault's request desk: replay guard, recording budget, and turning a batch of requests into events to append and replies to send.
//!
//! Pure logic: the shell (`docket-ledger`'s ingest loop) hands a batch of raw
//! requests in with the clock reading and an [`Entropy`] source, appends the
//! events the desk returns in one durable commit, and only then sends the
//! replies `settle` gives it: a decision that was not appended is never
//! answered with a token (fail closed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use docket_schemas::vault::{ApprovalNotice, Outcome as Answer, Receipt, Reply};
use docket_schemas::*;
use ed25519_dalek::SigningKey;

use crate::admission::{Incoming, LOCAL_SEQ_BIT, Plan};
use crate::chain::hex;
use crate::registry::Registry;
use crate::state::VaultState;
use crate::vault::{
    Fresh, Op, Refusal, Request, SEEN_REQUESTS_MAX, SEEN_REQUESTS_PER_KEY_MAX, authenticate,
    decide, refused, refused_unverified,
};

/// Vault requests answered together in one commit at most.
pub const VAULT_BATCH_MAX: usize = 256;

/// What the edge supplies the desk: UUIDv7s and secret random bytes.
pub trait Entropy {
    /// A fresh UUIDv7 (RFC 9562), as bytes.
    fn uuid_v7(&mut self) -> [u8; 16];
    /// 32 bytes from a cryptographically secure generator.
    fn secret(&mut self) -> [u8; 32];
}

/// A request id the guard remembers: when it was seen (µs) and the key that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub id: EventId,
    pub seen_us: i64,
    pub key_id: String,
}

/// Request ids seen within the replay window, shared by the desk and the introspector.
///
/// The desk's sightings are stored with the decisions they led to (same commit) and
/// handed back on start, so a captured request cannot be replayed after a restart.
/// Each signing key holds at most `SEEN_REQUESTS_PER_KEY_MAX` ids, so no one client
/// can fill the guard for everyone.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashSet<EventId>,
    /// Oldest first.
    seen_order: VecDeque<SeenRequest>,
    per_key: HashMap<String, usize>,
    /// Requests dated before this were sent before this vault started and are refused:
    /// introspections are not stored, so their ids from before are not known.
    started: Timestamp,
}

impl ReplayGuard {
    /// A guard that starts at `started` remembering `stored` (oldest first).
    /// When this run started: requests dated before it are refused.
    pub fn started(&self) -> Timestamp {
        self.started
    }

    pub fn new(started: Timestamp, stored: Vec<SeenRequest>) -> ReplayGuard {
        let mut g = ReplayGuard {
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            per_key: HashMap::new(),
            started,
        };
        for r in stored {
            g.remember(r);
        }
        g
    }

    fn remember(&mut self, r: SeenRequest) {
        if self.seen.insert(r.id) {
            *self.per_key.entry(r.key_id.clone()).or_default() += 1;
            self.seen_order.push_back(r);
        }
    }

    /// Accepts a request id once within the replay window (twice the policy's skew, so an
    /// id cannot come back while its `ts` is still acceptable); returns what to store.
    pub fn sighting(
        &mut self,
        req: &Request,
        key_id: &str,
        now: Timestamp,
        window_s: u32,
    ) -> Result<SeenRequest, Refusal> {
        let window_us = i64::from(window_s) * 1_000_000;
        while let Some(r) = self.seen_order.front() {
            if r.seen_us >= now.as_micros() - 2 * window_us {
                break;
            }
            if let Some(r) = self.seen_order.pop_front() {
                self.seen.remove(&r.id);
                if let Some(n) = self.per_key.get_mut(&r.key_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_key.remove(&r.key_id);
                    }
                }
            }
        }
        if req.ts < self.started {
            return Err(Refusal::BeforeStart(req.ts, self.started));
        }
        if self.seen.contains(&req.id) {
            return Err(Refusal::Replayed(req.id.to_string()));
        }
        if self.per_key.get(key_id).copied().unwrap_or(0) >= SEEN_REQUESTS_PER_KEY_MAX {
            return Err(Refusal::TooManyPending(key_id.to_string()));
        }
        if self.seen.len() >= SEEN_REQUESTS_MAX {
            return Err(Refusal::Malformed(
                "too many requests in the replay window; try again".into(),
            ));
        }
        let r = SeenRequest {
            id: req.id,
            seen_us: now.as_micros(),
            key_id: key_id.to_string(),
        };
        self.remember(r.clone());
        Ok(r)
    }
}

/// Vault requests per signing key in the current second, against the policy's budget.
#[derive(Debug, Default)]
pub struct KeyBudgets {
    second: i64,
    used: HashMap<String, u32>,
}

/// Whether a request fits its key's budget this second.
#[derive(Debug, PartialEq, Eq)]
pub enum Spent {
    Within,
    /// The first request over the budget this second: refused and recorded.
    FirstOver,
    /// Later ones: refused, not recorded (the first already is).
    Over,
}

impl KeyBudgets {
    pub fn take(&mut self, key_id: &str, now: Timestamp, per_s: u32) -> Spent {
        let second = now.as_micros().div_euclid(1_000_000);
        if second != self.second {
            // Only this second's counts matter: the map never outgrows one second's keys.
            self.second = second;
            self.used.clear();
        }
        let n = self.used.entry(key_id.to_string()).or_default();
        *n = n.saturating_add(1);
        match (*n).cmp(&per_s.saturating_add(1)) {
            std::cmp::Ordering::Less => Spent::Within,
            std::cmp::Ordering::Equal => Spent::FirstOver,
            std::cmp::Ordering::Greater => Spent::Over,
        }
    }
}

/// A token bucket refilled every second.
#[derive(Debug)]
pub struct RateBudget {
    left: u32,
    second: i64,
}

impl RateBudget {
    pub fn new() -> RateBudget {
        RateBudget {
            left: 0,
            second: i64::MIN,
        }
    }

    /// Takes one unit if this second (at `per_s` a second) has one left.
    pub fn take(&mut self, now: Timestamp, per_s: u32) -> bool {
        let second = now.as_micros().div_euclid(1_000_000);
        if second != self.second {
            self.second = second;
            self.left = per_s;
        }
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }
}

impl Default for RateBudget {
    fn default() -> Self {
        RateBudget::new()
    }
}

/// One request's handling: the reply, and the events (sealed) that must be appended first.
#[derive(Debug)]
pub struct Handled {
    pub reply: Reply,
    pub ids: Vec<EventId>,
    pub items: Vec<Incoming>,
    pub notify: Option<(String, ApprovalNotice)>,
    /// The request's sighting, to store in the same commit as its events.
    pub seen: Option<SeenRequest>,
}

/// The vault's keys and its memory of requests.
pub struct Desk {
    key: SigningKey,
    hash_key: [u8; 32],
    guard: Arc<Mutex<ReplayGuard>>,
    unauthenticated: RateBudget,
    budgets: KeyBudgets,
    local_seq: u64,
}

/// The keyed-hash key for token secrets, derived from the vault's key so one secret file holds both.
pub fn token_hash_key(key: &SigningKey) -> [u8; 32] {
    blake3::derive_key("docket vault token hash v1", key.as_bytes())
}

impl Desk {
    /// A desk started at `started`, remembering the request ids stored by earlier runs.
    pub fn new(key: SigningKey, started: Timestamp, seen: Vec<SeenRequest>) -> Desk {
        Desk {
            hash_key: token_hash_key(&key),
            key,
            guard: Arc::new(Mutex::new(ReplayGuard::new(started, seen))),
            unauthenticated: RateBudget::new(),
            budgets: KeyBudgets::default(),
            // Local entries take transport sequences with the top bit set, unique per start.
            local_seq: LOCAL_SEQ_BIT | ((started.as_micros().unsigned_abs()) << 12),
        }
    }

    pub fn key_id(&self) -> String {
        key_id(self.key.verifying_key().as_bytes())
    }

    /// An introspector sharing this desk's replay guard and hash key.
    pub fn introspector(
        &self,
        state: Arc<RwLock<VaultState>>,
        registry: Arc<RwLock<Registry>>,
    ) -> Introspector {
        Introspector {
            state,
            registry,
            guard: Arc::clone(&self.guard),
            hash_key: self.hash_key,
        }
    }

    fn next_local_seq(&mut self) -> u64 {
        self.local_seq += 1;
        self.local_seq
    }

    /// Decides a batch of requests against one snapshot of the state and registry.
    /// Signature checks (the cost of a request) run on every core.
    pub fn handle(
        &mut self,
        requests: &[Bytes],
        state: &VaultState,
        registry: &Registry,
        now: Timestamp,
        entropy: &mut dyn Entropy,
    ) -> Vec<Handled> {
        use rayon::prelude::*;
        let policy = state.policy.policy.clone();
        let checked: Vec<_> = requests
            .par_iter()
            .map(|r| authenticate(r, registry, state))
            .collect();
        // Decisions in one batch see the same snapshot: an approval may mint one token, so a
        // second use within the batch is refused here (the fold would flag it).
        let mut used_approvals = HashSet::new();
        let mut out = Vec::with_capacity(requests.len());
        for checked in checked {
            let mut sighted = None;
            let outcome = match checked {
                Err(e) => {
                    let (req, key_id, why) = *e;
                    // Unauthenticated refusals are recorded up to a rate, so that a flood of
                    // junk cannot grow the chain or starve ingestion.
                    match req {
                        Some(req)
                            if self
                                .unauthenticated
                                .take(now, policy.unauthenticated_recorded_per_s) =>
                        {
                            refused_unverified(&req, &key_id, &why)
                        }
                        _ => {
                            out.push(answer_only(Answer::refused(why.to_string())));
                            continue;
                        }
                    }
                }
                Ok(auth) => {
                    let budget =
                        self.budgets
                            .take(&auth.key_id, now, policy.vault_requests_per_key_per_s);
                    let over = || {
                        Refusal::RateLimited(
                            auth.key_id.clone(),
                            policy.vault_requests_per_key_per_s,
                        )
                    };
                    let seen = match budget {
                        Spent::Within => lock(&self.guard).sighting(
                            &auth.request,
                            &auth.key_id,
                            now,
                            policy.request_skew_max_s,
                        ),
                        Spent::FirstOver => Err(over()),
                        Spent::Over => {
                            out.push(answer_only(Answer::refused(over().to_string())));
                            continue;
                        }
                    };
                    match seen {
                        Err(why) => {
                            refused(&auth.request, &auth.requester.name(), &why, None, vec![])
                        }
                        Ok(sighting) => {
                            sighted = Some(sighting);
                            let (secret, seal_ephemeral) = match auth.request.op {
                                Op::Token { .. } => (entropy.secret(), entropy.secret()),
                                _ => ([0; 32], [0; 32]),
                            };
                            let fresh = Fresh {
                                now,
                                id: hex(&entropy.uuid_v7()),
                                token_secret: format!("dkt_{}", hex(&secret)),
                                seal_ephemeral,
                                hash_key: &self.hash_key,
                            };
                            let outcome = decide(state, &auth, &fresh);
                            let reused = outcome.events.iter().find_map(|b| match b {
                                EventBody::TokenIssued(t) => t
                                    .approval_id
                                    .clone()
                                    .filter(|a| !used_approvals.insert(a.clone())),
                                _ => None,
                            });
                            match reused {
                                Some(a) => refused(
                                    &auth.request,
                                    &auth.requester.name(),
                                    &Refusal::BadApproval(a, "was already used for a token".into()),
                                    None,
                                    vec![],
                                ),
                                None => outcome,
                            }
                        }
                    }
                }
            };
            let mut handled = Handled {
                reply: outcome.reply,
                ids: Vec::new(),
                items: Vec::new(),
                notify: outcome.notify,
                seen: sighted.take(),
            };
            for body in outcome.events {
                let event = Event {
                    v: SCHEMA_VERSION,
                    id: EventId(entropy.uuid_v7()),
                    ts: now,
                    body,
                };
                handled.ids.push(event.id);
                let source_seq = self.next_local_seq();
                handled
                    .items
                    .push(Incoming::sealed(&event, &self.key, source_seq));
            }
            out.push(handled);
        }
        out
    }

    /// The reply to send once `plan` (the commit of every handled request's events) is
    /// durable: with the receipt of its last entry, or an error saying why it was not
    /// recorded, and then never with a token.
    pub fn settle(&self, handled: Handled, plan: &Plan) -> Reply {
        if handled.ids.is_empty() {
            return handled.reply;
        }
        let receipts: Option<Vec<Receipt>> = handled
            .ids
            .iter()
            .map(|id| {
                plan.appends
                    .iter()
                    .find(|e| e.event_id == *id)
                    .map(|e| Receipt {
                        seq: e.seq,
                        hash: hex(&e.hash),
                        proof: None,
                    })
            })
            .collect();
        match (receipts, handled.reply) {
            (Some(mut r), Reply::Outcome(mut answer)) => {
                answer.receipt = r.pop();
                Reply::Outcome(answer)
            }
            (Some(_), reply) => reply,
            (None, _) => {
                let first = handled.items.first().map(|i| i.source_seq);
                let refusal = plan
                    .quarantined
                    .iter()
                    .find(|q| Some(q.source_seq) == first);
                // The vault signed this event, so any key the refusal names is the vault's own.
                let vault = self.key_id();
                let why = match refusal {
                    Some(q) if q.code == "unknown_key" => format!(
                        "key {vault} (the vault's) is not registered: the admin must register it for the vault's kinds"
                    ),
                    Some(q) => format!("{} (signed with key {vault}, the vault's)", q.reason),
                    None => "not appended".into(),
                };
                Reply::Outcome(Answer::refused(format!(
                    "the ledger did not record this decision: {why}; nothing was issued"
                )))
            }
        }
    }
}

fn answer_only(answer: Answer) -> Handled {
    Handled {
        reply: Reply::Outcome(answer),
        ids: Vec::new(),
        items: Vec::new(),
        notify: None,
        seen: None,
    }
}

/// A poisoned lock means a panic while it was held (mid-apply, say): the process stops
/// rather than act on state it cannot trust.
fn poisoned<G, R>(_: G) -> R {
    panic!("a lock was poisoned by an earlier panic; stopping rather than use its state")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(poisoned)
}

/// Reads behind an `RwLock`, stopping on a poisoned one.
pub fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(poisoned)
}

/// Writes behind an `RwLock`, stopping on a poisoned one.
pub fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(poisoned)
}

/// Answers introspections outside the ledger's loop, from the live projection: they append
/// nothing, so they need not wait behind commits. Anything else goes to the loop.
#[derive(Clone)]
pub struct Introspector {
    state: Arc<RwLock<VaultState>>,
    registry: Arc<RwLock<Registry>>,
    guard: Arc<Mutex<ReplayGuard>>,
    hash_key: [u8; 32],
}

impl Introspector {
    /// Runs `f` over the live registry and state with the vault's token-hash key (read locks
    /// held for `f` only): for the connections, which authenticate and judge like the vault.
    pub fn view<T>(&self, f: impl FnOnce(&Registry, &VaultState, &[u8; 32]) -> T) -> T {
        let registry = read(&self.registry);
        let state = read(&self.state);
        f(&registry, &state, &self.hash_key)
    }

    /// The answer to an introspection at `now`, or `None` when the request must go to the
    /// ledger's loop (another operation, or a refusal that has to be recorded).
    pub fn answer(&self, request: &[u8], now: Timestamp) -> Option<Reply> {
        let registry = read(&self.registry);
        let state = read(&self.state);
        let auth = authenticate(request, &registry, &state).ok()?;
        if !matches!(auth.request.op, Op::Introspect { .. }) {
            return None;
        }
        let fresh = Fresh {
            now,
            id: String::new(),
            token_secret: String::new(),
            seal_ephemeral: [0; 32],
            hash_key: &self.hash_key,
        };
        let outcome = decide(&state, &auth, &fresh);
        if !outcome.events.is_empty() {
            return None;
        }
        // Introspections change nothing and answer nothing their request did not hold (the
        // token itself), so their ids are not remembered: a replay within the skew window
        // learns nothing new, and a gateway's rate is not capped by the replay memory. The
        // guard's start time still refuses requests older than this run.
        if auth.request.ts < lock(&self.guard).started() {
            return None;
        }
        Some(outcome.reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docket_schemas::vault::{Op, REQUEST_VERSION, Status, seal_request};

    fn at(s: i64) -> Timestamp {
        Timestamp::parse("2026-11-22T08:00:00.000000Z")
            .unwrap()
            .plus_seconds(s)
    }

    fn request(n: u8, ts: Timestamp) -> Request {
        let mut id = [n; 16];
        id[6] = 0x70;
        id[8] = 0x80;
        Request {
            v: REQUEST_VERSION,
            id: EventId(id),
            ts,
            op: Op::Introspect { token: "t".into() },
        }
    }

    struct Counter(u64);
    impl Entropy for Counter {
        fn uuid_v7(&mut self) -> [u8; 16] {
            self.0 += 1;
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&self.0.to_be_bytes());
            b[6] = 0x70;
            b[8] = 0x80;
            b
        }
        fn secret(&mut self) -> [u8; 32] {
            [self.0 as u8; 32]
        }
    }

    #[test]
    fn a_request_id_is_accepted_once_and_only_after_the_vault_started() {
        let mut g = ReplayGuard::new(at(0), vec![]);
        assert_eq!(
            g.sighting(&request(1, at(-1)), "k", at(0), 300),
            Err(Refusal::BeforeStart(at(-1), at(0)))
        );
        assert!(g.sighting(&request(1, at(1)), "k", at(1), 300).is_ok());
        assert!(matches!(
            g.sighting(&request(1, at(1)), "k", at(2), 300),
            Err(Refusal::Replayed(_))
        ));
        // Forgotten only after twice the window, when its time is stale anyway.
        assert!(g.sighting(&request(1, at(1)), "k", at(500), 300).is_err());
        assert!(g.sighting(&request(1, at(1)), "k", at(700), 300).is_ok());
    }

    #[test]
    fn a_restarted_guard_remembers_what_was_stored_before() {
        // The attack: a request dated into the future (within the skew window) is
        // captured, the vault restarts, the request is sent again.
        let mut before = ReplayGuard::new(at(0), vec![]);
        let future = request(1, at(250));
        let stored = before.sighting(&future, "k", at(10), 300).unwrap();
        let mut after = ReplayGuard::new(at(20), vec![stored]);
        assert!(matches!(
            after.sighting(&future, "k", at(30), 300),
            Err(Refusal::Replayed(_))
        ));
    }

    #[test]
    fn one_key_cannot_fill_the_guard_for_everyone() {
        let mut g = ReplayGuard::new(at(0), vec![]);
        let id = |n: usize| {
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&(n as u64).to_be_bytes());
            b[6] = 0x70;
            b[8] = 0x80;
            EventId(b)
        };
        for n in 0..SEEN_REQUESTS_PER_KEY_MAX {
            g.remember(SeenRequest {
                id: id(n),
                seen_us: at(1).as_micros(),
                key_id: "flood".into(),
            });
        }
        let mut next = request(9, at(1));
        next.id = id(SEEN_REQUESTS_PER_KEY_MAX + 1);
        assert!(matches!(
            g.sighting(&next, "flood", at(1), 300),
            Err(Refusal::TooManyPending(_))
        ));
        assert!(
            g.sighting(&request(9, at(1)), "someone-else", at(1), 300)
                .is_ok()
        );
    }

    #[test]
    fn a_keys_requests_beyond_its_budget_are_refused_and_the_first_recorded() {
        let mut b = KeyBudgets::default();
        let spent: Vec<Spent> = (0..5).map(|_| b.take("k", at(0), 3)).collect();
        assert_eq!(
            spent,
            vec![
                Spent::Within,
                Spent::Within,
                Spent::Within,
                Spent::FirstOver,
                Spent::Over
            ]
        );
        assert_eq!(b.take("other", at(0), 3), Spent::Within);
        assert_eq!(
            b.take("k", at(1), 3),
            Spent::Within,
            "a new second, a new budget"
        );
    }

    #[test]
    fn the_budget_allows_its_rate_each_second() {
        let mut b = RateBudget::new();
        let taken = (0..5).filter(|_| b.take(at(0), 3)).count();
        assert_eq!(taken, 3);
        assert!(b.take(at(1), 3));
    }

    #[test]
    fn unauthenticated_refusals_are_answered_and_recorded_within_the_policys_rate() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let ledger = SigningKey::from_bytes(&[2; 32]);
        let registry = Registry::new(&admin.verifying_key(), &ledger.verifying_key());
        let state = VaultState::default();
        let mut desk = Desk::new(SigningKey::from_bytes(&[3; 32]), at(0), vec![]);
        let stranger = SigningKey::from_bytes(&[4; 32]);
        let per_s = state.policy.policy.unauthenticated_recorded_per_s as usize;
        let requests: Vec<Bytes> = (0..per_s + 5)
            .map(|i| Bytes::from(seal_request(&request(i as u8, at(1)), &stranger)))
            .collect();
        let handled = desk.handle(&requests, &state, &registry, at(1), &mut Counter(0));
        assert_eq!(handled.len(), requests.len());
        let recorded = handled.iter().filter(|h| !h.items.is_empty()).count();
        assert_eq!(recorded, per_s);
        for h in &handled {
            match &h.reply {
                Reply::Outcome(o) => assert!(
                    !o.ok
                        && o.error
                            .as_deref()
                            .is_some_and(|e| e.contains("not registered")),
                    "{o:?}"
                ),
                other => panic!("{other:?}"),
            }
        }
        // Junk that does not even parse is answered, never recorded.
        let junk = desk.handle(
            &[Bytes::from_static(b"{")],
            &state,
            &registry,
            at(1),
            &mut Counter(9),
        );
        assert!(junk[0].items.is_empty());
    }

    #[test]
    fn a_decision_the_ledger_did_not_append_is_answered_with_an_error_and_no_token() {
        let desk = Desk::new(SigningKey::from_bytes(&[3; 32]), at(0), vec![]);
        let handled = Handled {
            reply: Reply::Outcome(Answer {
                sealed_token: Some(docket_schemas::seal::SealedSecret {
                    alg: docket_schemas::seal::SEAL_ALG.into(),
                    epk: String::new(),
                    ct: String::new(),
                }),
                ..Answer::done(Status::Issued)
            }),
            ids: vec![EventId([7; 16])],
            items: vec![Incoming {
                subject: "docket.events.token.issued".into(),
                payload: Bytes::new(),
                source_seq: LOCAL_SEQ_BIT | 1,
            }],
            notify: None,
            seen: None,
        };
        match desk.settle(handled, &Plan::default()) {
            Reply::Outcome(o) => {
                assert!(!o.ok && o.sealed_token.is_none(), "{o:?}");
                assert!(o.error.unwrap().contains("did not record"));
            }
            other => panic!("{other:?}"),
        }
    }
}
