//! `serve`'s detector: the rule set put on the record, then every rule run on what is new since its watermark.
//!
//! At start the detector compares the rules it was given with the last
//! `rules.set` on the chain and, when they differ, publishes a new one (signed
//! with the ledger's key) and waits to see it appended: from that seq on, these
//! rules are in force. Then, every tick, it opens a session on what the ledger
//! has made durable, runs [`detect::run_recorded`] over the entries after its
//! watermark (the same function a replay calls), publishes each detection as a
//! `finding.raised` event, and once JetStream holds it, a [`DetectionNotice`] on
//! `docket.findings`. The watermark (a seq, in `DIR/detect.watermark`) moves
//! only after every finding of a window is held; a restart that lost it runs
//! windows again, and the derived event ids make the ledger keep one of each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use docket_ledger::publisher::{Publisher, Sink, subject_for};
use docket_ledger::transport::Bus;
use docket_schemas::notice::{DetectionNotice, SUBJECT_FINDINGS};
use docket_schemas::{Event, EventBody, EventId, SCHEMA_VERSION, seal_event};
use ed25519_dalek::SigningKey;

use crate::QueryError;
use crate::detect::{self, Rule};
use crate::session::{AuditSession, SessionCache, SessionOptions};

/// How often the detector looks for new entries when it has none.
pub const DETECT_INTERVAL: Duration = Duration::from_millis(250);
/// Least time from one window's start to the next's. A window's cost is mostly its rules'
/// look at history, whatever its size, so running back to back would take CPU from ingest
/// for little; a window every 750 ms keeps an append-to-finding time near a second.
pub const WINDOW_PERIOD_MIN: Duration = Duration::from_millis(750);
/// Most entries one tick examines; a detector behind catches up a window at a time.
pub const DETECT_WINDOW_MAX: u64 = 65_536;
/// How long the detector waits to see its `rules.set` appended before it gives up.
pub const RULE_SET_PATIENCE: Duration = Duration::from_secs(30);
/// The watermark file in a data directory.
pub const WATERMARK_FILE: &str = "detect.watermark";

/// What the detector has done, for logs and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct LiveStats {
    pub watermark: u64,
    pub windows: u64,
    pub findings: u64,
    /// The seq of the `rules.set` these rules are in force from.
    pub rules_from: u64,
}

pub struct LiveDetector {
    pub data: PathBuf,
    pub rules: Vec<Rule>,
    pub learning_us: i64,
    /// The ledger's key: signs `rules.set` and `finding.raised`.
    pub key: SigningKey,
    pub sink: Sink,
    pub bus: Bus,
    pub window: u64,
    /// Session settings (memory, threads) for each tick.
    pub session: SessionOptions,
}

/// Why the detector stopped.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Rules(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("{path}: {source}")]
    Watermark {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LiveDetector {
    fn open_options(&self) -> SessionOptions {
        SessionOptions {
            seal: false,
            ..self.session.clone()
        }
    }

    async fn open(&self) -> Result<AuditSession, QueryError> {
        AuditSession::open(&self.data, self.open_options()).await
    }

    /// Puts these rules in force on the chain unless the last `rules.set` already says so;
    /// returns the seq of the set in force.
    pub async fn record_rule_set(&self, stop: &AtomicBool) -> Result<u64, LiveError> {
        let wanted = detect::rules_set(&self.rules, self.learning_us).map_err(LiveError::Rules)?;
        let session = self.open().await?;
        let head = session.coverage().head;
        let sets = detect::rule_sets(&session, head).await?;
        if let Some((seq, set)) = sets.last()
            && *set == wanted
        {
            return Ok(*seq);
        }
        let prev = sets.last().map_or(0, |(s, _)| *s);
        let now = docket_ledger::clock::now().map_err(|e| LiveError::Rules(e.to_string()))?;
        let body = serde_json::to_vec(&wanted).map_err(|e| LiveError::Rules(e.to_string()))?;
        let mut bits = [0u8; 16];
        bits.copy_from_slice(
            &blake3::hash(&[&body[..], &prev.to_be_bytes()].concat()).as_bytes()[..16],
        );
        let ms = u64::try_from(now.as_micros() / 1000)
            .map_err(|_| LiveError::Rules("clock before 1970".into()))?;
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId::derived(ms, bits),
            ts: now,
            body: EventBody::RulesSet(wanted.clone()),
        };
        self.publish(&[event]).await?;
        let until = Instant::now() + RULE_SET_PATIENCE;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(DETECT_INTERVAL).await;
            let session = self.open().await?;
            let now_head = session.coverage().head;
            if let Some((seq, set)) = detect::rule_sets(&session, now_head).await?.last()
                && *seq > head
                && *set == wanted
            {
                return Ok(*seq);
            }
        }
        Err(LiveError::Rules(format!(
            "the rules.set was published but not appended within {} s: is the ledger's key the one this \
             ledger was created with, and is the ledger consuming?",
            RULE_SET_PATIENCE.as_secs()
        )))
    }

    /// Publishes events in order and waits until JetStream holds every one.
    async fn publish(&self, events: &[Event]) -> Result<(), LiveError> {
        let mut publisher = Publisher::new(self.sink.clone());
        let mut failed: Option<String> = None;
        let mut on_ack = |_: u64, r: Result<_, String>| {
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        };
        for e in events {
            publisher
                .send(
                    subject_for(e),
                    seal_event(e, &self.key),
                    Some(e.id),
                    &mut on_ack,
                )
                .await
                .map_err(|e| LiveError::Publish(e.to_string()))?;
        }
        publisher.flush(&mut on_ack).await;
        match failed {
            Some(e) => Err(LiveError::Publish(e)),
            None => Ok(()),
        }
    }

    /// Drops the rules whose SQL does not plan, saying which and why; the others run.
    pub async fn check_rules(&mut self) -> Result<(), LiveError> {
        let mut session = self.open().await?;
        let problems = detect::check_all(&self.rules, &mut session).await;
        for p in &problems {
            tracing::error!(problem = %p, "a detection rule does not plan; the others run");
        }
        self.rules
            .retain(|r| !problems.iter().any(|p| p.origin == r.origin));
        Ok(())
    }

    /// Runs until `stop` is set: the rule set on the record, then a window per tick.
    pub async fn run(
        mut self,
        stop: Arc<AtomicBool>,
        stats: Arc<std::sync::Mutex<LiveStats>>,
    ) -> Result<(), LiveError> {
        self.check_rules().await?;
        let rules_from = self.record_rule_set(&stop).await?;
        let path = self.data.join(WATERMARK_FILE);
        let mut watermark = read_watermark(&path)?;
        set_stats(&stats, |s| {
            s.rules_from = rules_from;
            s.watermark = watermark;
        });
        tracing::info!(
            rules = self.rules.len(),
            rules_from,
            watermark,
            "detection running"
        );
        let mut warned_missing = std::collections::BTreeSet::new();
        let mut cache = SessionCache::default();
        while !stop.load(Ordering::Relaxed) {
            let head = match cache.head(&self.data) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "detection cannot read the head");
                    cache = SessionCache::default();
                    tokio::time::sleep(DETECT_INTERVAL).await;
                    continue;
                }
            };
            if head <= watermark {
                tokio::time::sleep(DETECT_INTERVAL).await;
                continue;
            }
            let started = Instant::now();
            match self.tick(&mut cache, watermark, &mut warned_missing).await {
                Ok((to, found)) => {
                    watermark = to;
                    write_watermark(&path, watermark)?;
                    set_stats(&stats, |s| {
                        s.watermark = watermark;
                        s.windows += 1;
                        s.findings += found;
                    });
                    if let Some(rest) = WINDOW_PERIOD_MIN.checked_sub(started.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, watermark, "detection window failed; retrying");
                    tokio::time::sleep(DETECT_INTERVAL).await;
                }
            }
        }
        Ok(())
    }

    /// One window after `watermark`: returns where it ended and how many findings it published.
    async fn tick(
        &self,
        cache: &mut SessionCache,
        watermark: u64,
        warned_missing: &mut std::collections::BTreeSet<(String, String)>,
    ) -> Result<(u64, u64), LiveError> {
        let started = Instant::now();
        let session = AuditSession::open_cached(&self.data, self.open_options(), cache).await?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            tail = session.coverage().tail_rows,
            "detection session open"
        );
        let head = session.coverage().head;
        let to = head.min(watermark.saturating_add(self.window.max(1)));
        let sets = detect::rule_sets(&session, to).await?;
        let mut session = session;
        let run = detect::run_recorded(&self.rules, &sets, &mut session, watermark, to).await;
        for p in &run.problems {
            tracing::warn!(problem = %p, "a detection rule failed on a window");
        }
        for (v, _, _) in &run.missing {
            if warned_missing.insert((v.id.clone(), v.content_hash.clone())) {
                tracing::warn!(rule = %v.id, hash = %v.content_hash,
                    "a rule version in force on the chain is not among the loaded rules; not run");
            }
        }
        let mut events = Vec::with_capacity(run.detections.len());
        for d in &run.detections {
            match d.to_event() {
                Ok(e) => events.push(e),
                Err(why) => {
                    tracing::warn!(finding = %d.id(), why, "a detection cannot be recorded")
                }
            }
        }
        let ran = started.elapsed();
        self.publish(&events).await?;
        tracing::debug!(
            from = watermark,
            to,
            ran_ms = ran.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            findings = events.len(),
            "detection window"
        );
        for e in &events {
            if let EventBody::FindingRaised(f) = &e.body {
                let notice = DetectionNotice {
                    event_id: e.id.to_string(),
                    ts: e.ts,
                    detection: f.clone(),
                };
                self.bus.publish_notice(SUBJECT_FINDINGS, &notice).await;
            }
        }
        Ok((to, events.len() as u64))
    }
}

fn set_stats(stats: &std::sync::Mutex<LiveStats>, f: impl FnOnce(&mut LiveStats)) {
    if let Ok(mut s) = stats.lock() {
        f(&mut s);
    }
}

/// The watermark, or 0 when there is none yet.
pub fn read_watermark(path: &Path) -> Result<u64, LiveError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|e| LiveError::Watermark {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(LiveError::Watermark {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_watermark(path: &Path, seq: u64) -> Result<(), LiveError> {
    let tmp = path.with_extension("tmp");
    let err = |source| LiveError::Watermark {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, format!("{seq}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
