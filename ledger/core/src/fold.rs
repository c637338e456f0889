//! The fold: applies one entry to the vault's state and records the rules it broke as findings.
//!
//! Pure and deterministic: `apply` takes an entry's seq and event and returns
//! what it found. Time is the event's own `ts`; the settings are the policy in
//! force before the entry (`VaultState::policy`, set by `policy.set`). The
//! rules themselves are in `policy.rs`, shared with the vault.

use std::collections::BTreeSet;

use docket_schemas::*;

use crate::policy::{
    Breach, call_breaches, judge_approval_request, judge_decision, judge_policy, judge_token,
};
use crate::state::*;
use crate::step_up::follow_key_event;

impl VaultState {
    /// Applies one entry, received by the ledger at `received_us`; returns the findings
    /// and the objects it changed.
    pub fn apply(
        &mut self,
        seq: u64,
        received_us: i64,
        event: &Event,
    ) -> (Vec<Finding>, Vec<ObjectKey>) {
        self.apply_inner(seq, received_us, event, true)
    }

    /// Applies one entry without reporting which objects changed (replays that persist nothing).
    pub fn replay(&mut self, seq: u64, received_us: i64, event: &Event) -> Vec<Finding> {
        self.apply_inner(seq, received_us, event, false).0
    }

    fn apply_inner(
        &mut self,
        seq: u64,
        received_us: i64,
        event: &Event,
        track: bool,
    ) -> (Vec<Finding>, Vec<ObjectKey>) {
        let mut cx = Apply {
            seq,
            ts: event.ts,
            findings: Vec::new(),
            touched: track.then(Vec::new),
        };
        self.seq = seq;
        // The state's clock follows the events' own times, but never runs backwards and
        // never passes the ledger's receipt: a producer's far-future date cannot expire
        // everything (admission bounds how far ahead `ts` may be; this bounds the clock).
        let claimed = if event.ts.as_micros() > received_us {
            Timestamp::from_micros(received_us).unwrap_or(event.ts)
        } else {
            event.ts
        };
        let now = self.ts.map_or(claimed, |t| t.max(claimed));
        self.ts = Some(now);
        self.retire_expired(now, &mut cx);
        match &event.body {
            EventBody::AgentRegistered(e) => self.register_agent(e, &mut cx),
            EventBody::AgentSuspended(e) => {
                if let Some(a) = self.agents.get_mut(&e.agent) {
                    a.suspended_seq.get_or_insert(seq);
                    a.last_seq = seq;
                    cx.touch(|| ObjectKey::Agent(e.agent.clone()));
                }
                let ids = self
                    .ix
                    .live_by_agent
                    .get(&e.agent)
                    .cloned()
                    .unwrap_or_default();
                self.revoke_tokens(ids, &mut cx);
            }
            EventBody::GrantCreated(e) if self.grants.contains_key(&e.grant_id) => {
                let first = self.grants[&e.grant_id].created_seq;
                cx.reused("grant", &e.grant_id, first, &e.agent);
            }
            EventBody::ApprovalRequested(e) if self.approvals.contains_key(&e.approval_id) => {
                let first = self.approvals[&e.approval_id].requested_seq;
                cx.reused("approval", &e.approval_id, first, &e.agent);
            }
            EventBody::TokenIssued(e) if self.tokens.contains_key(&e.token_id) => {
                let first = self.tokens[&e.token_id].issued_seq;
                cx.reused("token", &e.token_id, first, &e.agent);
            }
            EventBody::GrantCreated(e) => {
                self.ix
                    .grants_by_agent
                    .entry(e.agent.clone())
                    .or_default()
                    .insert(e.grant_id.clone());
                self.grants.insert(
                    e.grant_id.clone(),
                    GrantState {
                        grant_id: e.grant_id.clone(),
                        user: e.user.clone(),
                        agent: e.agent.clone(),
                        audience: e.audience.clone(),
                        scopes: e.scopes.iter().cloned().collect(),
                        expires_at: e.expires_at,
                        max_calls: e.max_calls,
                        max_token_ttl_s: e.max_token_ttl_s,
                        approval: e
                            .approval
                            .iter()
                            .map(|r| (r.scope.clone(), r.risk))
                            .collect(),
                        created_seq: seq,
                        revoked_seq: None,
                        calls: 0,
                        last_seq: seq,
                    },
                );
                cx.touch(|| ObjectKey::Grant(e.grant_id.clone()));
            }
            EventBody::GrantRevoked(e) => {
                if let Some(g) = self.grants.get_mut(&e.grant_id) {
                    g.revoked_seq.get_or_insert(seq);
                    g.last_seq = seq;
                    cx.touch(|| ObjectKey::Grant(e.grant_id.clone()));
                }
                let ids = self
                    .ix
                    .live_by_grant
                    .get(&e.grant_id)
                    .cloned()
                    .unwrap_or_default();
                self.revoke_tokens(ids, &mut cx);
            }
            EventBody::ApprovalRequested(e) => {
                let agent = Some(e.agent.clone());
                for b in judge_approval_request(self, e, event.ts) {
                    cx.breach(b, agent.clone());
                }
                self.approvals.insert(
                    e.approval_id.clone(),
                    ApprovalState {
                        approval_id: e.approval_id.clone(),
                        grant_id: e.grant_id.clone(),
                        user: e.user.clone(),
                        agent: e.agent.clone(),
                        audience: e.audience.clone(),
                        scopes: e.scopes.iter().cloned().collect(),
                        risk: e.risk,
                        binding_message: e.binding_message.clone(),
                        expires_at: e.expires_at,
                        requested_seq: seq,
                        requested_at: event.ts,
                        decision: None,
                        decided_by: None,
                        method: None,
                        auth_time: None,
                        decided_at: None,
                        decided_seq: None,
                        step_up_key: None,
                        authorization_details: e.authorization_details.clone(),
                        last_seq: seq,
                    },
                );
                cx.touch(|| ObjectKey::Approval(e.approval_id.clone()));
            }
            EventBody::ApprovalDecided(e) => self.decide(e, &mut cx),
            EventBody::TokenIssued(e) => self.issue(e, &mut cx),
            EventBody::TokenRevoked(e) => {
                self.revoke_tokens(BTreeSet::from([e.token_id.clone()]), &mut cx);
            }
            EventBody::ApiCalled(e) => self.call(e, &mut cx),
            EventBody::KeyRegistered(_) | EventBody::KeyRevoked(_) => {
                if let Some(id) = follow_key_event(&mut self.step_up_keys, seq, &event.body) {
                    cx.touch(|| ObjectKey::StepUpKey(id));
                }
            }
            EventBody::PolicySet(p) => match judge_policy(self, p) {
                Some(b) => cx.breach(b, None),
                None => {
                    self.policy = PolicyInForce {
                        policy: p.clone(),
                        set_seq: seq,
                    };
                    cx.touch(|| ObjectKey::Policy);
                }
            },
            EventBody::ConnectionLinked(_)
            | EventBody::ConnectionRefreshed(_)
            | EventBody::ConnectionFailed(_)
            | EventBody::ConnectionUnlinked(_) => self.follow_connection(&event.body, &mut cx),
            // Detection and triage are read by query/src/detect.rs; the vault's state does not change.
            EventBody::RequestRefused(_)
            | EventBody::FindingTriaged(_)
            | EventBody::FindingSuppressed(_)
            | EventBody::RulesSet(_)
            | EventBody::FindingRaised(_) => {}
        }
        cx.findings.truncate(FINDINGS_PER_ENTRY_MAX);
        let mut touched = cx.touched.unwrap_or_default();
        touched.sort();
        touched.dedup();
        (cx.findings, touched)
    }

    /// A connection follows its events: linked (again) starts it afresh; a refresh or a
    /// failure changes a connection that exists; a refused grant breaks it; unlinking ends it.
    fn follow_connection(&mut self, body: &EventBody, cx: &mut Apply) {
        let seq = cx.seq;
        let (user, provider) = match body {
            EventBody::ConnectionLinked(e) => (&e.user, &e.provider),
            EventBody::ConnectionRefreshed(e) => (&e.user, &e.provider),
            EventBody::ConnectionFailed(e) => (&e.user, &e.provider),
            EventBody::ConnectionUnlinked(e) => (&e.user, &e.provider),
            _ => return,
        };
        let key = connection_key(user, provider);
        if let EventBody::ConnectionLinked(e) = body {
            self.connections.insert(
                key.clone(),
                ConnectionState {
                    user: e.user.clone(),
                    provider: e.provider.clone(),
                    status: ConnectionStatus::Linked,
                    scopes: e.scopes.clone(),
                    fingerprint: e.fingerprint.clone(),
                    access_expires_at: e.access_expires_at,
                    linked_seq: seq,
                    refreshes: 0,
                    failure: None,
                    last_seq: seq,
                },
            );
            cx.touch(|| ObjectKey::Connection(key));
            return;
        }
        let Some(c) = self.connections.get_mut(&key) else {
            return;
        };
        match body {
            EventBody::ConnectionRefreshed(e) => {
                c.fingerprint = e.fingerprint.clone();
                c.access_expires_at = e.access_expires_at;
                c.refreshes += 1;
                c.failure = None;
            }
            EventBody::ConnectionFailed(e) => {
                if e.broken {
                    c.status = ConnectionStatus::Broken;
                }
                c.failure = Some(e.reason.clone());
            }
            EventBody::ConnectionUnlinked(_) => c.status = ConnectionStatus::Unlinked,
            _ => {}
        }
        c.last_seq = seq;
        cx.touch(|| ObjectKey::Connection(key));
    }

    fn register_agent(&mut self, e: &AgentRegistered, cx: &mut Apply) {
        let seq = cx.seq;
        let a = self
            .agents
            .entry(e.agent.clone())
            .or_insert_with(|| AgentState {
                agent: e.agent.clone(),
                user: e.user.clone(),
                name: e.name.clone(),
                public_key: e.public_key.clone(),
                registered_seq: seq,
                suspended_seq: None,
                last_seq: seq,
            });
        if a.user != e.user {
            // The owner decides who may grant the agent: a re-registration may rotate
            // the key or rename, never hand the agent to someone else.
            let first = a.registered_seq;
            let message = format!(
                "agent {} was registered again for {}; it stays {}'s",
                e.agent, e.user, a.user
            );
            cx.find(Rule::IdReused, message, vec![first], Some(e.agent.clone()));
            return;
        }
        if let Some(old) = agent_key_id(&a.public_key)
            && let Some(set) = self.ix.agents_by_key.get_mut(&old)
        {
            set.remove(&e.agent);
            if set.is_empty() {
                self.ix.agents_by_key.remove(&old);
            }
        }
        a.name.clone_from(&e.name);
        a.public_key.clone_from(&e.public_key);
        a.last_seq = seq;
        if let Some(k) = agent_key_id(&e.public_key) {
            self.ix
                .agents_by_key
                .entry(k)
                .or_default()
                .insert(e.agent.clone());
        }
        cx.touch(|| ObjectKey::Agent(e.agent.clone()));
    }

    /// Drops tokens that expired by `now` from the live indexes (they stay in `tokens`).
    fn retire_expired(&mut self, now: Timestamp, _cx: &mut Apply) {
        // Peek without cloning: this runs for every entry.
        while self
            .ix
            .live_by_expiry
            .first()
            .is_some_and(|(at, _)| *at <= now)
        {
            let Some((_, id)) = self.ix.live_by_expiry.pop_first() else {
                break;
            };
            if let Some(t) = self.tokens.get(&id) {
                self.ix.drop_lookups(t);
            }
        }
    }

    /// Marks live tokens revoked at this entry and drops them from the live indexes.
    fn revoke_tokens(&mut self, ids: BTreeSet<String>, cx: &mut Apply) {
        for id in ids {
            if let Some(t) = self.tokens.get_mut(&id)
                && t.revoked_seq.is_none()
            {
                t.revoked_seq = Some(cx.seq);
                t.last_seq = cx.seq;
                cx.touch(|| ObjectKey::Token(id.clone()));
                self.ix.remove_live(t);
            }
        }
    }

    fn decide(&mut self, e: &ApprovalDecided, cx: &mut Apply) {
        let verdict = judge_decision(self, e, cx.ts);
        let agent = self.approvals.get(&e.approval_id).map(|a| a.agent.clone());
        for b in verdict.breaches {
            cx.breach(b, agent.clone());
        }
        if !verdict.recorded {
            return;
        }
        let Some(a) = self.approvals.get_mut(&e.approval_id) else {
            return;
        };
        a.decision = Some(e.decision);
        a.decided_by = Some(e.user.clone());
        a.method = Some(e.method);
        a.auth_time = e.auth_time;
        a.step_up_key = verdict.step_up_key;
        a.decided_at = Some(cx.ts);
        a.decided_seq = Some(cx.seq);
        a.last_seq = cx.seq;
        cx.touch(|| ObjectKey::Approval(e.approval_id.clone()));
    }

    fn issue(&mut self, e: &TokenIssued, cx: &mut Apply) {
        for b in judge_token(self, e, cx.ts) {
            cx.breach(b, Some(e.agent.clone()));
        }
        let t = TokenState {
            token_id: e.token_id.clone(),
            token_hash: e.token_hash.clone(),
            grant_id: e.grant_id.clone(),
            user: e.user.clone(),
            agent: e.agent.clone(),
            audience: e.audience.clone(),
            scopes: e.scopes.iter().cloned().collect(),
            issued_at: cx.ts,
            expires_at: e.expires_at,
            approval_id: e.approval_id.clone(),
            authorization_details: e.authorization_details.clone(),
            issued_seq: cx.seq,
            revoked_seq: None,
            uses: 0,
            last_seq: cx.seq,
        };
        if let Some(a) = &e.approval_id {
            self.ix
                .token_by_approval
                .entry(a.clone())
                .or_insert_with(|| e.token_id.clone());
        }
        self.ix.add_issued(&t);
        if t.expires_at > cx.ts {
            self.ix.add_live(&t);
        }
        self.tokens.insert(e.token_id.clone(), t);
        cx.touch(|| ObjectKey::Token(e.token_id.clone()));
    }

    fn call(&mut self, e: &ApiCalled, cx: &mut Apply) {
        // A call the gateway refused never reached the API: nothing to judge, nothing used.
        if e.refused.is_some() {
            return;
        }
        // The most frequent entry: each object is looked up once, judged, then updated.
        let suspended = self.agents.get(&e.agent).and_then(|a| a.suspended_seq);
        let token = self.tokens.get_mut(&e.token_id);
        let grant = match &token {
            Some(t) => self.grants.get_mut(&t.grant_id),
            None => None,
        };
        for b in call_breaches(e, cx.ts, suspended, token.as_deref(), grant.as_deref()) {
            cx.breach(b, Some(e.agent.clone()));
        }
        let Some(t) = token else {
            return;
        };
        t.uses += 1;
        t.last_seq = cx.seq;
        cx.touch(|| ObjectKey::Token(t.token_id.clone()));
        if let Some(g) = grant {
            g.calls += 1;
            g.last_seq = cx.seq;
            cx.touch(|| ObjectKey::Grant(g.grant_id.clone()));
        }
    }
}

struct Apply {
    seq: u64,
    ts: Timestamp,
    findings: Vec<Finding>,
    /// Changed objects, when the caller persists them; `None` on replays, which skip the clones.
    touched: Option<Vec<ObjectKey>>,
}

impl Apply {
    /// An id that names an existing object was used to create another: the first one stands.
    fn reused(&mut self, what: &str, id: &str, first_seq: u64, agent: &str) {
        let message =
            format!("{what} id {id} was used again; the first one (seq {first_seq}) stands");
        self.find(
            Rule::IdReused,
            message,
            vec![first_seq],
            Some(agent.to_string()),
        );
    }

    fn touch(&mut self, key: impl FnOnce() -> ObjectKey) {
        if let Some(t) = &mut self.touched {
            t.push(key());
        }
    }

    fn breach(&mut self, b: Breach, agent: Option<String>) {
        self.find(b.rule, b.why, b.evidence, agent);
    }

    fn find(&mut self, rule: Rule, message: String, mut evidence: Vec<u64>, agent: Option<String>) {
        evidence.push(self.seq);
        evidence.sort_unstable();
        evidence.dedup();
        self.findings.push(Finding {
            seq: self.seq,
            ts: self.ts,
            rule,
            severity: rule.severity(),
            message,
            evidence,
            agent,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docket_testkit::workload::Workload;
    use proptest::prelude::*;

    /// A crafted log: events applied in order, each a second after the previous.
    struct Log {
        state: VaultState,
        seq: u64,
        ts: Timestamp,
        findings: Vec<Finding>,
    }

    impl Log {
        fn new() -> Log {
            let mut log = Log {
                state: VaultState::default(),
                seq: 0,
                ts: Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
                findings: vec![],
            };
            log.add(EventBody::AgentRegistered(AgentRegistered {
                agent: "a1".into(),
                user: "alice".into(),
                name: "bot".into(),
                public_key: "x".into(),
            }));
            log.add(grant(
                "g1",
                vec!["repo:read", "repo:write", "repo:delete"],
                vec![("repo:write", Risk::High), ("repo:delete", Risk::Critical)],
            ));
            log.add(token("t1", "g1", "a1", vec!["repo:read"], 300, None));
            let pk = step_up_key().verifying_key();
            log.add(EventBody::KeyRegistered(KeyRegistered {
                key_id: key_id(pk.as_bytes()),
                public_key: encode_base64(pk.as_bytes()),
                name: "stepup:alice".into(),
                kinds: vec![],
            }));
            log
        }
        fn add(&mut self, body: EventBody) -> Vec<Finding> {
            self.seq += 1;
            self.ts = self.ts.plus_seconds(1);
            let e = Event {
                v: 1,
                id: EventId([0; 16]),
                ts: self.ts,
                body,
            };
            let (f, _) = self.state.apply(self.seq, e.ts.as_micros(), &e);
            self.findings.extend(f.clone());
            f
        }
        fn rules(f: &[Finding]) -> Vec<Rule> {
            f.iter().map(|f| f.rule).collect()
        }
    }

    fn grant(id: &str, scopes: Vec<&str>, approval: Vec<(&str, Risk)>) -> EventBody {
        EventBody::GrantCreated(GrantCreated {
            grant_id: id.into(),
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            expires_at: Timestamp::parse("2026-11-23T08:00:00.000000Z").unwrap(),
            max_calls: Some(3),
            max_token_ttl_s: Some(600),
            approval: approval
                .into_iter()
                .map(|(s, r)| ApprovalRule {
                    scope: s.into(),
                    risk: r,
                })
                .collect(),
        })
    }

    fn token(
        id: &str,
        grant: &str,
        agent: &str,
        scopes: Vec<&str>,
        ttl_s: i64,
        approval: Option<&str>,
    ) -> EventBody {
        EventBody::TokenIssued(TokenIssued {
            token_id: id.into(),
            token_hash: "0".repeat(64),
            grant_id: grant.into(),
            user: "alice".into(),
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            // Relative to the crafted log's clock: issued at 08:00:0N, within a minute.
            expires_at: Timestamp::parse("2026-11-22T08:00:00.000000Z")
                .unwrap()
                .plus_seconds(ttl_s),
            approval_id: approval.map(String::from),
            authorization_details: vec![],
        })
    }

    /// An RFC 9396 detail: GET of exactly `operation`.
    fn bound_to(operation: &str) -> AuthorizationDetail {
        AuthorizationDetail {
            kind: DetailType::ApiCall,
            actions: vec!["GET".into()],
            locations: vec![],
            identifier: operation.into(),
            request_hash: None,
            arguments_hash: None,
        }
    }

    fn call(token: &str, agent: &str, scope: &str) -> EventBody {
        EventBody::ApiCalled(ApiCalled {
            token_id: token.into(),
            token_hash: None,
            agent: agent.into(),
            audience: "https://api.github.com".into(),
            method: "GET".into(),
            operation: "/repos/acme/web".into(),
            scope: Some(scope.into()),
            status: 200,
            source: "10.0.0.1".into(),
            ..ApiCalled::default()
        })
    }

    fn requested(id: &str, scope: &str, risk: Risk) -> EventBody {
        EventBody::ApprovalRequested(ApprovalRequested {
            approval_id: id.into(),
            grant_id: "g1".into(),
            user: "alice".into(),
            agent: "a1".into(),
            audience: "https://api.github.com".into(),
            scopes: vec![scope.into()],
            risk,
            binding_message: "delete a repo".into(),
            // Within the default policy's 300 s of the crafted log's clock (08:00:0N).
            expires_at: Timestamp::parse("2026-11-22T08:04:00.000000Z").unwrap(),
            authorization_details: vec![],
        })
    }

    /// Alice's step-up key, registered by `Log::new`.
    fn step_up_key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
    }

    /// A decision; a step-up one carries an assertion from alice's step-up key.
    fn decided(
        id: &str,
        user: &str,
        method: ApprovalMethod,
        auth_age_s: Option<i64>,
        log: &Log,
    ) -> EventBody {
        let auth_time = auth_age_s.map(|a| log.ts.plus_seconds(1 - a));
        EventBody::ApprovalDecided(ApprovalDecided {
            approval_id: id.into(),
            user: user.into(),
            decision: Decision::Approved,
            method,
            auth_time,
            reason: None,
            step_up: auth_time
                .filter(|_| method == ApprovalMethod::StepUp)
                .map(|auth_time| {
                    StepUpAssertion::seal(
                        &StepUpClaim {
                            v: 1,
                            user: "alice".into(),
                            approval_id: id.into(),
                            auth_time,
                        },
                        &step_up_key(),
                    )
                }),
        })
    }

    /// The same decision with its assertion replaced.
    fn with_step_up(mut d: EventBody, step_up: Option<StepUpAssertion>) -> EventBody {
        if let EventBody::ApprovalDecided(e) = &mut d {
            e.step_up = step_up;
        }
        d
    }

    #[test]
    fn a_clean_flow_has_no_findings() {
        let mut log = Log::new();
        assert!(log.add(call("t1", "a1", "repo:read")).is_empty());
        assert!(
            log.add(requested("p1", "repo:write", Risk::High))
                .is_empty()
        );
        let d = decided("p1", "alice", ApprovalMethod::Push, None, &log);
        assert!(log.add(d).is_empty());
        assert!(
            log.add(token("t2", "g1", "a1", vec!["repo:write"], 300, Some("p1")))
                .is_empty()
        );
        assert!(
            log.add(requested("p2", "repo:delete", Risk::Critical))
                .is_empty()
        );
        let d = decided("p2", "alice", ApprovalMethod::StepUp, Some(60), &log);
        assert!(log.add(d).is_empty());
        assert_eq!(
            log.state.approvals["p2"].step_up_key,
            Some(key_id(step_up_key().verifying_key().as_bytes()))
        );
        assert!(
            log.add(token(
                "t3",
                "g1",
                "a1",
                vec!["repo:delete"],
                300,
                Some("p2")
            ))
            .is_empty()
        );
        assert!(log.findings.is_empty(), "{:?}", log.findings);
        assert_eq!(log.state.tokens["t1"].uses, 1);
    }

    #[test]
    fn each_violation_gives_exactly_its_finding() {
        use Rule::*;
        type Case = (Rule, Box<dyn Fn(&mut Log) -> Vec<Finding>>);
        let cases: Vec<Case> = vec![
            (
                CallUnknownToken,
                Box::new(|l| l.add(call("nope", "a1", "repo:read"))),
            ),
            (
                CallExpiredToken,
                Box::new(|l| {
                    l.add(token("t9", "g1", "a1", vec!["repo:read"], 5, None));
                    l.add(EventBody::AgentRegistered(AgentRegistered {
                        agent: "a9".into(),
                        user: "u".into(),
                        name: "n".into(),
                        public_key: "k".into(),
                    }));
                    l.add(EventBody::AgentRegistered(AgentRegistered {
                        agent: "a8".into(),
                        user: "u".into(),
                        name: "n".into(),
                        public_key: "k".into(),
                    }));
                    l.add(call("t9", "a1", "repo:read"))
                }),
            ),
            (
                CallRevokedToken,
                Box::new(|l| {
                    l.add(EventBody::TokenRevoked(TokenRevoked {
                        token_id: "t1".into(),
                        by: "alice".into(),
                        reason: "done".into(),
                    }));
                    l.add(call("t1", "a1", "repo:read"))
                }),
            ),
            (
                CallScopeNotGranted,
                Box::new(|l| l.add(call("t1", "a1", "repo:write"))),
            ),
            (
                CallWrongAgent,
                Box::new(|l| l.add(call("t1", "a2", "repo:read"))),
            ),
            (
                CallSuspendedAgent,
                Box::new(|l| {
                    // Suspension revokes the agent's tokens, so its call also uses a revoked token;
                    // the test keeps only the suspension finding and checks the other below.
                    l.add(EventBody::AgentSuspended(AgentSuspended {
                        agent: "a1".into(),
                        by: "sec".into(),
                        reason: "r".into(),
                    }));
                    let f = l.add(call("t1", "a1", "repo:read"));
                    assert_eq!(Log::rules(&f), vec![CallSuspendedAgent, CallRevokedToken]);
                    l.findings.retain(|f| f.rule == CallSuspendedAgent);
                    f.into_iter()
                        .filter(|f| f.rule == CallSuspendedAgent)
                        .collect()
                }),
            ),
            (
                CallOverBudget,
                Box::new(|l| {
                    for _ in 0..3 {
                        assert!(l.add(call("t1", "a1", "repo:read")).is_empty());
                    }
                    l.add(call("t1", "a1", "repo:read"))
                }),
            ),
            (
                TokenUnknownGrant,
                Box::new(|l| l.add(token("t5", "g-none", "a1", vec!["repo:read"], 60, None))),
            ),
            (
                TokenScopeOutsideGrant,
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["admin:org"], 60, None))),
            ),
            (
                TokenAfterGrantEnded,
                Box::new(|l| {
                    l.add(EventBody::GrantRevoked(GrantRevoked {
                        grant_id: "g1".into(),
                        by: "alice".into(),
                        reason: "r".into(),
                    }));
                    l.add(token("t5", "g1", "a1", vec!["repo:read"], 60, None))
                }),
            ),
            (
                TokenWithoutApproval,
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["repo:write"], 60, None))),
            ),
            (
                TokenTtlOverGrant,
                Box::new(|l| {
                    // A policy that allows an hour, so only the grant's 600 s is broken.
                    l.add(EventBody::PolicySet(PolicySet {
                        revision: 2,
                        token_ttl_max_s: 7_200,
                        ..PolicySet::DEFAULTS
                    }));
                    l.add(token("t5", "g1", "a1", vec!["repo:read"], 3_600, None))
                }),
            ),
            (
                ApprovalWrongDecider,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    let d = decided("p1", "mallory", ApprovalMethod::Push, None, l);
                    l.add(d)
                }),
            ),
            (
                ApprovalStaleStepUp,
                Box::new(|l| {
                    l.add(requested("p1", "repo:delete", Risk::Critical));
                    let d = decided("p1", "alice", ApprovalMethod::StepUp, Some(3_600), l);
                    l.add(d)
                }),
            ),
            (
                ApprovalStepUpUnproven,
                Box::new(|l| {
                    l.add(requested("p1", "repo:delete", Risk::Critical));
                    l.add(requested("p2", "repo:delete", Risk::Critical));
                    let unproven = |l: &mut Log, d: EventBody| {
                        let f = l.add(d);
                        assert_eq!(Log::rules(&f), vec![ApprovalStepUpUnproven], "{f:?}");
                        assert_eq!(l.state.approvals["p1"].step_up_key, None);
                        // Judged once: the first decision stands, so undo it for the next try.
                        l.state.approvals.get_mut("p1").unwrap().decided_seq = None;
                        l.findings.clear();
                    };
                    // A claimed step-up time, signed only by the user's own key.
                    let claimed = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    unproven(l, with_step_up(claimed, None));
                    // No step-up at all on a critical approval.
                    let push = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    unproven(l, push);
                    // An assertion from alice's step-up key, but for another approval.
                    let other = decided("p2", "alice", ApprovalMethod::StepUp, Some(10), l);
                    let EventBody::ApprovalDecided(other) = other else {
                        unreachable!()
                    };
                    let mut d = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    if let EventBody::ApprovalDecided(e) = &mut d {
                        e.auth_time = other.auth_time;
                        e.step_up = other.step_up;
                    }
                    unproven(l, d);
                    // An assertion signed by another key.
                    let forged = StepUpAssertion::seal(
                        &StepUpClaim {
                            v: 1,
                            user: "alice".into(),
                            approval_id: "p1".into(),
                            auth_time: l.ts.plus_seconds(-9),
                        },
                        &ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
                    );
                    let d = decided("p1", "alice", ApprovalMethod::StepUp, Some(10), l);
                    l.add(with_step_up(d, Some(forged)))
                }),
            ),
            (
                ApprovalRedecided,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    let mut deny = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    if let EventBody::ApprovalDecided(d) = &mut deny {
                        d.decision = Decision::Denied;
                    }
                    assert!(l.add(deny).is_empty());
                    let d = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    let f = l.add(d);
                    assert_eq!(
                        l.state.approvals["p1"].decision,
                        Some(Decision::Denied),
                        "the first decision stands"
                    );
                    f
                }),
            ),
            (
                IdReused,
                Box::new(|l| l.add(token("t1", "g1", "a1", vec!["repo:read"], 300, None))),
            ),
            (
                ApprovalUnknownRequest,
                Box::new(|l| {
                    let d = decided("p-none", "alice", ApprovalMethod::Push, None, l);
                    l.add(d)
                }),
            ),
            (
                TokenApprovalReused,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    let d = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    assert!(l.add(d).is_empty());
                    let first = token("t5", "g1", "a1", vec!["repo:write"], 60, Some("p1"));
                    assert!(l.add(first).is_empty());
                    l.add(token("t6", "g1", "a1", vec!["repo:write"], 60, Some("p1")))
                }),
            ),
            (
                TokenNotAsApproved,
                Box::new(|l| {
                    let mut r = requested("p1", "repo:write", Risk::High);
                    if let EventBody::ApprovalRequested(e) = &mut r {
                        e.authorization_details = vec![bound_to("/repos/acme/web")];
                    }
                    l.add(r);
                    let d = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    assert!(l.add(d).is_empty());
                    // Minted on the approval, but unbound: free to do anything its scope allows.
                    l.add(token("t5", "g1", "a1", vec!["repo:write"], 60, Some("p1")))
                }),
            ),
            (
                CallOutsideAuthorization,
                Box::new(|l| {
                    let mut t = token("t5", "g1", "a1", vec!["repo:read"], 60, None);
                    if let EventBody::TokenIssued(e) = &mut t {
                        e.authorization_details = vec![bound_to("/repos/acme/api")];
                    }
                    assert!(l.add(t).is_empty());
                    let mut allowed = call("t5", "a1", "repo:read");
                    if let EventBody::ApiCalled(c) = &mut allowed {
                        c.operation = "/repos/acme/api".into();
                    }
                    assert!(
                        l.add(allowed).is_empty(),
                        "the approved call is no violation"
                    );
                    l.add(call("t5", "a1", "repo:read"))
                }),
            ),
            (
                TokenTtlOverPolicy,
                // Within the grant's 600 s, beyond the policy's 300 s.
                Box::new(|l| l.add(token("t5", "g1", "a1", vec!["repo:read"], 400, None))),
            ),
            (
                TokenSuspendedAgent,
                Box::new(|l| {
                    l.add(EventBody::AgentSuspended(AgentSuspended {
                        agent: "a1".into(),
                        by: "sec".into(),
                        reason: "r".into(),
                    }));
                    l.add(token("t5", "g1", "a1", vec!["repo:read"], 60, None))
                }),
            ),
            (
                TokenBudgetSpent,
                Box::new(|l| {
                    for _ in 0..3 {
                        assert!(l.add(call("t1", "a1", "repo:read")).is_empty());
                    }
                    l.add(token("t5", "g1", "a1", vec!["repo:read"], 60, None))
                }),
            ),
            (
                ApprovalDecidedLate,
                Box::new(|l| {
                    l.add(requested("p1", "repo:write", Risk::High));
                    l.ts = l.ts.plus_seconds(600);
                    let d = decided("p1", "alice", ApprovalMethod::Push, None, l);
                    l.add(d)
                }),
            ),
            (
                ApprovalTtlOverPolicy,
                Box::new(|l| {
                    let mut r = requested("p1", "repo:write", Risk::High);
                    if let EventBody::ApprovalRequested(e) = &mut r {
                        e.expires_at = Timestamp::parse("2026-11-22T09:00:00.000000Z").unwrap();
                    }
                    l.add(r)
                }),
            ),
            (
                PolicyRevisionNotNext,
                Box::new(|l| {
                    l.add(EventBody::PolicySet(PolicySet {
                        revision: 1,
                        approval_ttl_s: 100,
                        ..PolicySet::DEFAULTS
                    }))
                }),
            ),
        ];
        assert_eq!(cases.len(), Rule::ALL.len(), "every rule has a case");
        for (rule, case) in cases {
            let mut log = Log::new();
            let found = case(&mut log);
            assert_eq!(Log::rules(&found), vec![rule], "{rule:?}: {found:?}");
            assert_eq!(
                log.findings.len(),
                1,
                "{rule:?}: only the violating entry is flagged: {:?}",
                log.findings
            );
            assert!(found[0].evidence.contains(&log.seq));
        }
    }

    fn workload_events(seed: u64, n: usize, misbehaving: u64) -> (Vec<Event>, u64) {
        let mut w = Workload::new(
            seed,
            Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap(),
            6,
            12,
        );
        w.misbehaving_per_mille = misbehaving;
        let mut out: Vec<Event> = w
            .setup()
            .iter()
            .map(|p| {
                docket_schemas::Envelope::decode(&p.envelope)
                    .unwrap()
                    .event()
                    .unwrap()
            })
            .collect();
        out.extend((0..n).map(|_| {
            docket_schemas::Envelope::decode(&w.next_envelope().envelope)
                .unwrap()
                .event()
                .unwrap()
        }));
        (out, w.misbehaved)
    }

    #[test]
    fn another_users_decision_cannot_veto_the_users_own() {
        // The attack: bob decides alice's approval first ("the first decision stands").
        let mut l = Log::new();
        l.add(requested("p1", "repo:write", Risk::High));
        let veto = decided("p1", "bob", ApprovalMethod::Push, None, &l);
        let f = l.add(veto);
        assert_eq!(Log::rules(&f), vec![Rule::ApprovalWrongDecider]);
        assert_eq!(
            l.state.approvals["p1"].decided_seq, None,
            "bob's does not count"
        );
        let own = decided("p1", "alice", ApprovalMethod::Push, None, &l);
        assert!(l.add(own).is_empty());
        let a = &l.state.approvals["p1"];
        assert_eq!(a.decided_by.as_deref(), Some("alice"));
        assert_eq!(a.status(l.ts), ApprovalStatus::Approved);
        // A token on alice's approval is sound.
        let t = token("t9", "g1", "a1", vec!["repo:write"], 60, Some("p1"));
        assert!(l.add(t).is_empty());
    }

    #[test]
    fn a_far_future_date_cannot_push_the_state_clock_past_the_receipt() {
        let mut state = VaultState::default();
        let at = Timestamp::parse("2026-11-22T08:00:00.000000Z").unwrap();
        let event = |ts: Timestamp, body: EventBody| Event {
            v: SCHEMA_VERSION,
            id: EventId([7; 16]),
            ts,
            body,
        };
        let far = Timestamp::parse("9999-01-01T00:00:00.000000Z").unwrap();
        let received = at.as_micros();
        state.apply(
            1,
            received,
            &event(
                far,
                EventBody::AgentSuspended(AgentSuspended {
                    agent: "nobody".into(),
                    by: "x".into(),
                    reason: "r".into(),
                }),
            ),
        );
        assert_eq!(state.ts, Some(at), "clamped to the receipt time");
        // And it never runs backwards.
        let earlier = at.plus_seconds(-60);
        state.apply(
            2,
            earlier.as_micros(),
            &event(
                earlier,
                EventBody::AgentSuspended(AgentSuspended {
                    agent: "nobody".into(),
                    by: "x".into(),
                    reason: "r".into(),
                }),
            ),
        );
        assert_eq!(state.ts, Some(at));
    }

    #[test]
    fn the_clean_workload_breaks_no_rule_and_misbehaviour_is_found() {
        let (events, _) = workload_events(11, 30_000, 0);
        let mut state = VaultState::default();
        let findings: Vec<Finding> = events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| state.apply(i as u64 + 1, e.ts.as_micros(), e).0)
            .collect();
        assert!(
            findings.is_empty(),
            "{} findings, first: {:?}",
            findings.len(),
            findings.first()
        );
        let (events, misbehaved) = workload_events(11, 30_000, 20);
        let mut state = VaultState::default();
        let flagged: BTreeSet<u64> = events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| state.apply(i as u64 + 1, e.ts.as_micros(), e).0)
            .map(|f| f.seq)
            .collect();
        assert!(misbehaved > 100);
        assert_eq!(
            flagged.len() as u64,
            misbehaved,
            "every misbehaving event, and nothing else, is flagged"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Applying incrementally, with the state saved and reloaded at random points, equals one replay.
        #[test]
        fn incremental_with_reloads_equals_replay(seed in any::<u64>(), cuts in proptest::collection::vec(0usize..3_000, 0..6)) {
            let (events, _) = workload_events(seed, 3_000, 30);
            let mut whole = VaultState::default();
            for (i, e) in events.iter().enumerate() {
                whole.apply(i as u64 + 1, e.ts.as_micros(), e);
            }
            let mut parts = VaultState::default();
            for (i, e) in events.iter().enumerate() {
                if cuts.contains(&i) {
                    let json = serde_json::to_vec(&parts).unwrap();
                    parts = serde_json::from_slice(&json).unwrap();
                    parts.reindex();
                }
                parts.apply(i as u64 + 1, e.ts.as_micros(), e);
            }
            prop_assert_eq!(parts.digest().unwrap(), whole.digest().unwrap());
        }
    }
}
