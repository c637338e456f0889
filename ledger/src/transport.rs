//! Where envelopes come from and where notices go: NATS JetStream, or an in-process stand-in.
//!
//! The ingest loop is the same code for both; the in-process transport exists so
//! `docket demo` runs the whole pipeline with no external service. Both are
//! bounded: a source never holds more than its pull window unacknowledged.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, broadcast};

use docket_schemas::vault::Reply;

use crate::admission::Incoming;

/// The JetStream stream every ledger reads from.
pub const STREAM_NAME: &str = "DOCKET_EVENTS";
/// Subjects the stream captures.
pub const STREAM_SUBJECTS: &str = "docket.events.>";
pub use docket_schemas::notice::{
    EVENT_SUBJECT_PREFIX, SUBJECT_APPENDED, SUBJECT_CHECKPOINTS, SUBJECT_FINDINGS, SUBJECT_REJECTED,
};
pub use docket_schemas::vault::SUBJECT_VAULT;
/// Messages the ledger may hold unacknowledged (its pull window).
pub const ACK_PENDING_MAX: usize = 20_000;
/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Longest a batch waits for more messages after its first one.
pub const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Batches whose acks may be queued behind the append loop.
pub const ACK_QUEUE_MAX: usize = 8;
/// Messages the in-process stream buffers before a publisher waits.
pub const MEMORY_STREAM_CAPACITY: usize = 65_536;
/// JetStream's duplicate window; the ledger's own index is the permanent one.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

const _: () = assert!(crate::admission::BATCH_EVENTS_MAX <= ACK_PENDING_MAX);

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(
        "cannot reach NATS at {url} ({why}); is nats-server running there? (`nats-server -js` starts one)"
    )]
    Connect { url: String, why: String },
    #[error("NATS JetStream: {0}; is JetStream enabled on the server? (`nats-server -js`)")]
    JetStream(String),
    #[error("transport closed")]
    Closed,
    #[error("NATS client settings: {0}")]
    Settings(String),
}

fn nats_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Nats(e.to_string())
}

/// What to acknowledge once a batch is durable.
pub enum AckToken {
    Nats(Vec<jetstream::message::Acker>),
    Memory(MemoryStream, u64),
}

impl AckToken {
    /// Acknowledges everything in the batch; call only once the batch is durable.
    pub async fn send(self) -> Result<(), TransportError> {
        match self {
            // Explicit acks, in order; the last one waits for the server's confirmation, which
            // (one connection, processed in order) confirms the ones before it too.
            AckToken::Nats(mut ackers) => {
                let last = ackers.pop();
                for a in ackers {
                    a.ack().await.map_err(nats_err)?;
                }
                match last {
                    Some(a) => a.double_ack().await.map_err(nats_err),
                    None => Ok(()),
                }
            }
            AckToken::Memory(stream, seq) => {
                stream.ack_through(seq);
                Ok(())
            }
        }
    }
}

/// A batch taken from a source.
pub struct Delivery {
    pub items: Vec<Incoming>,
    pub ack: AckToken,
}

/// A source of envelopes.
pub enum Source {
    Nats(Box<NatsSource>),
    Memory(MemoryStream),
}

impl Source {
    /// Waits for at least one envelope, then takes whatever else is ready, up to `max`.
    pub async fn next(&mut self, max: usize) -> Result<Delivery, TransportError> {
        match self {
            Source::Nats(s) => s.next(max).await,
            Source::Memory(s) => s.next(max).await,
        }
    }
}

/// A durable pull consumer on the events stream.
pub struct NatsSource {
    consumer: jetstream::consumer::PullConsumer,
    messages: Option<pull::Stream>,
    pub client: async_nats::Client,
}

/// Settings for the JetStream side of a ledger.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub url: String,
    /// Durable consumer name; one per ledger instance.
    pub consumer: String,
    /// Subject filter within `docket.events.>` this instance consumes.
    pub filter: String,
    pub auth: NatsAuth,
}

impl NatsSource {
    /// Connects, ensures the file-backed stream and the durable consumer exist.
    pub async fn connect(settings: &NatsSettings) -> Result<NatsSource, TransportError> {
        // No retry on the first connect: a wrong URL should fail now, loudly, not hang at INFO.
        // Once connected, the client reconnects by itself when the server restarts.
        NatsSource::on(connect(&settings.url, &settings.auth).await?, settings).await
    }

    /// Ensures the stream and the durable consumer exist on an open connection.
    pub async fn on(
        client: async_nats::Client,
        settings: &NatsSettings,
    ) -> Result<NatsSource, TransportError> {
        let js = jetstream::new(client.clone());
        let stream = ensure_stream(&js).await?;
        let consumer = stream
            .get_or_create_consumer(
                &settings.consumer,
                pull::Config {
                    durable_name: Some(settings.consumer.clone()),
                    filter_subject: settings.filter.clone(),
                    // Not ack-all: acking a later message would also ack earlier ones that
                    // JetStream handed to a pull request of a crashed instance, losing them.
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: ACK_PENDING_MAX as i64,
                    // A work queue delivers everything to its one consumer.
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                TransportError::Nats(format!(
                    "cannot take the stream's messages as consumer {:?}: {e} (the stream is a work \
                     queue with one consumer: is another ledger, under another consumer name, already \
                     taking them from this server?)",
                    settings.consumer
                ))
            })?;
        Ok(NatsSource {
            consumer,
            messages: None,
            client,
        })
    }

    /// The consumer's acknowledged floor (stream sequence), as the server has it.
    pub async fn ack_floor(&mut self) -> Result<u64, TransportError> {
        Ok(self
            .consumer
            .info()
            .await
            .map_err(nats_err)?
            .ack_floor
            .stream_sequence)
    }

    async fn next(&mut self, max: usize) -> Result<Delivery, TransportError> {
        let mut items = Vec::new();
        let mut ackers = Vec::new();
        let mut deadline = None;
        let mut bytes = 0usize;
        loop {
            if self.messages.is_none() {
                let m = self
                    .consumer
                    .stream()
                    .max_messages_per_batch(crate::admission::BATCH_EVENTS_MAX)
                    .max_bytes_per_batch(crate::admission::BATCH_BYTES_MAX)
                    .heartbeat(Duration::from_secs(2))
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await
                    .map_err(nats_err)?;
                self.messages = Some(m);
            }
            let Some(messages) = self.messages.as_mut() else {
                continue;
            };
            // Block for the first message; then gather more for at most BATCH_LINGER, so
            // one fsync and one round of acks serve many messages under load.
            let next = match deadline {
                None => messages.next().await,
                Some(d) => match tokio::time::timeout_at(d, messages.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
            };
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_LINGER);
            match next {
                Some(Ok(msg)) => {
                    let source_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let (m, acker) = msg.split();
                    bytes += m.payload.len() + m.subject.len();
                    items.push(Incoming {
                        subject: m.subject.to_string(),
                        payload: m.payload,
                        source_seq,
                    });
                    ackers.push(acker);
                    if items.len() >= max || bytes >= crate::admission::BATCH_BYTES_MAX {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "JetStream pull interrupted; resubscribing");
                    self.messages = None;
                    if !items.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    self.messages = None;
                    if !items.is_empty() {
                        break;
                    }
                }
            }
        }
        Ok(Delivery {
            items,
            ack: AckToken::Nats(ackers),
        })
    }
}

/// How long a first connection attempt may take before it is reported as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a client proves who it is to NATS and protects the connection. Empty: no
/// authentication and plain TCP (a server on loopback for one user).
#[derive(Clone, Debug, Default)]
pub struct NatsAuth {
    /// A `.creds` file (a user JWT and its nkey seed), for servers with decentralised auth.
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`), for servers that list users by nkey.
    pub nkey: Option<PathBuf>,
    /// User name and password, for servers that list users so.
    pub user: Option<String>,
    pub password: Option<String>,
    /// The CA certificate (PEM) that signed the server's: connect with TLS and check it.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients (mTLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The prefix of this client's reply subjects (default `_INBOX`): with per-identity
    /// permissions, each identity may subscribe only to its own prefix, so nobody reads
    /// another's replies.
    pub inbox_prefix: Option<String>,
}

impl NatsAuth {
    async fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut o = match &self.creds {
            Some(path) => async_nats::ConnectOptions::new()
                .credentials_file(path)
                .await
                .map_err(|e| format!("credentials file {}: {e}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("nkey seed file {}: {e}", path.display()))?;
            o = o.nkey(seed.trim().to_string());
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err("give both a NATS user and a password, or neither".into()),
        }
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => o = o.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => return Err("give both a client certificate and its key, or neither".into()),
        }
        if let Some(prefix) = &self.inbox_prefix {
            // Replies go to `<prefix>.<id>`: a wildcard, an empty token or a space there
            // would send them where nobody listens (the vault would still issue a token).
            let plain = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !prefix.split('.').all(plain) {
                return Err(format!(
                    "inbox prefix {prefix:?}: give dot-separated tokens of letters, digits, _ and - \
                     (for example _INBOX.gateway)"
                ));
            }
            o = o.custom_inbox_prefix(prefix);
        }
        Ok(o.connection_timeout(CONNECT_TIMEOUT))
    }
}

/// Connects to a NATS server once, with an error that names the URL and what to check.
pub async fn connect(url: &str, auth: &NatsAuth) -> Result<async_nats::Client, TransportError> {
    // A settings mistake is the caller's, not an unreachable server: no retry, no hint.
    let options = auth.options().await.map_err(TransportError::Settings)?;
    options
        .connect(url)
        .await
        .map_err(|e| TransportError::Connect {
            url: url.to_string(),
            why: root_cause(&e),
        })
}

/// Connects to NATS, retrying an unreachable server until `patience` has passed; says so
/// once, out loud, so a wait is never silent (a server started a moment earlier may not
/// listen yet). Any other failure, or the last unreachable one, is returned.
pub async fn connect_within(
    url: &str,
    auth: &NatsAuth,
    patience: Duration,
) -> Result<async_nats::Client, TransportError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut warned = false;
    loop {
        match connect(url, auth).await {
            Err(e @ TransportError::Connect { .. }) if tokio::time::Instant::now() < deadline => {
                if !warned {
                    tracing::warn!("{e}; retrying for up to {} s", patience.as_secs());
                    warned = true;
                }
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// The pause between attempts to reach a NATS server that is not listening yet.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The innermost cause of an error: NATS errors wrap an I/O error and repeat its text.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// The most the events stream holds, in bytes: the backlog the ledger has not taken yet
/// (a work queue: what the ledger acknowledged is removed). When it is full, JetStream
/// refuses new publishes (discard new) rather than drop what it already acknowledged.
pub const STREAM_BYTES_MAX: i64 = 8 << 30;

/// The events stream's configuration: file storage, so JetStream survives a restart; a
/// work queue, so it holds only what the ledger has not yet taken; no message above the
/// envelope limit (JetStream refuses it at publish, before it costs the ledger anything);
/// at most `STREAM_BYTES_MAX` queued, new publishes refused beyond; no deleting or purging
/// messages through the API. docs/FORMAT.md, "The events stream", explains each choice.
pub fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_string(),
        subjects: vec![STREAM_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        retention: stream::RetentionPolicy::WorkQueue,
        max_message_size: docket_schemas::limits::ENVELOPE_BYTES_MAX as i32,
        max_bytes: STREAM_BYTES_MAX,
        discard: stream::DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Creates the events stream if absent. A stream made by an older Docket (no limits, kept
/// forever) is used as it is, with a warning that says how to replace it.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<stream::Stream, TransportError> {
    let wanted = stream_config();
    let stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| TransportError::JetStream(e.to_string()))?;
    let have = &stream.cached_info().config;
    if have.retention != wanted.retention || have.max_message_size != wanted.max_message_size {
        tracing::warn!(
            "stream {STREAM_NAME} was created without Docket's limits (retention {:?}, max message size {}); \
             once the ledger has taken everything, delete it (`nats stream rm {STREAM_NAME}`) and restart \
             to have it made with them",
            have.retention,
            have.max_message_size
        );
    }
    Ok(stream)
}

/// An in-process stand-in for the JetStream stream and its consumer.
#[derive(Clone, Default)]
pub struct MemoryStream {
    inner: Arc<Mutex<MemoryInner>>,
    arrived: Arc<Notify>,
    acked: Arc<Notify>,
}

#[derive(Default)]
struct MemoryInner {
    queue: VecDeque<Incoming>,
    next_seq: u64,
    acked_through: u64,
    closed: bool,
}

impl MemoryStream {
    /// Appends a message, waiting while the stream holds its capacity unacknowledged; returns its sequence.
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<u64, TransportError> {
        loop {
            let wait = self.acked.notified();
            {
                let mut inner = self.inner.lock().map_err(|_| TransportError::Closed)?;
                if inner.closed {
                    return Err(TransportError::Closed);
                }
                if inner.next_seq - inner.acked_through < MEMORY_STREAM_CAPACITY as u64 {
                    inner.next_seq += 1;
                    let source_seq = inner.next_seq;
                    inner.queue.push_back(Incoming {
                        subject,
                        payload,
                        source_seq,
                    });
                    self.arrived.notify_one();
                    return Ok(source_seq);
                }
            }
            wait.await;
        }
    }

    /// Waits until everything up to `seq` is acknowledged (durable in the ledger).
    pub async fn wait_acked(&self, seq: u64) -> Result<(), TransportError> {
        loop {
            let wait = self.acked.notified();
            {
                let inner = self.inner.lock().map_err(|_| TransportError::Closed)?;
                if inner.acked_through >= seq {
                    return Ok(());
                }
                if inner.closed {
                    return Err(TransportError::Closed);
                }
            }
            wait.await;
        }
    }

    pub fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.closed = true;
        }
        self.arrived.notify_one();
        self.acked.notify_waiters();
    }

    async fn next(&mut self, max: usize) -> Result<Delivery, TransportError> {
        loop {
            let wait = self.arrived.notified();
            {
                let mut inner = self.inner.lock().map_err(|_| TransportError::Closed)?;
                if !inner.queue.is_empty() {
                    let n = inner.queue.len().min(max);
                    let items: Vec<Incoming> = inner.queue.drain(..n).collect();
                    let last = items.last().map(|i| i.source_seq).unwrap_or(0);
                    return Ok(Delivery {
                        items,
                        ack: AckToken::Memory(self.clone(), last),
                    });
                }
                if inner.closed {
                    return Err(TransportError::Closed);
                }
            }
            wait.await;
        }
    }

    fn ack_through(&self, seq: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.acked_through = inner.acked_through.max(seq);
        }
        self.acked.notify_waiters();
    }
}

/// Where notices (appended, rejected, checkpoints) are published.
#[derive(Clone)]
pub enum Bus {
    Nats(async_nats::Client),
    Memory(broadcast::Sender<(String, Bytes)>),
}

impl Bus {
    /// Fire-and-forget: notices are for live watchers; the store is the record.
    pub async fn publish(&self, subject: impl Into<String>, payload: Vec<u8>) {
        let subject = subject.into();
        match self {
            Bus::Nats(c) => {
                if let Err(e) = c.publish(subject.clone(), payload.into()).await {
                    tracing::warn!(subject, error = %e, "notice not published");
                }
            }
            Bus::Memory(tx) => {
                // No receiver is no watcher: nothing to tell.
                let _ = tx.send((subject, payload.into()));
            }
        }
    }

    /// Publishes a typed notice (docket_schemas::notice) as JSON.
    pub async fn publish_notice<T: serde::Serialize>(
        &self,
        subject: impl Into<String>,
        notice: &T,
    ) {
        let subject = subject.into();
        match serde_json::to_vec(notice) {
            Ok(bytes) => self.publish(subject, bytes).await,
            Err(e) => {
                tracing::error!(subject, error = %e, "notice did not serialise; not published")
            }
        }
    }
}

/// One vault request from the network, and where its answer goes.
pub struct VaultCall {
    pub request: Bytes,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// Vault requests awaiting an answer at most; more wait for a slot (backpressure, not loss).
pub const VAULT_INFLIGHT_MAX: usize = 4096;

/// Receives vault requests over NATS request/reply and hands them to the ledger's loop;
/// introspections are answered by the introspector when one is given.
/// What a vault answer's receipt is made from: the store's tree, and the flag that asks
/// the ledger for a checkpoint sooner.
#[derive(Clone)]
pub struct Receipts {
    pub store: Arc<crate::store::Store>,
    pub wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a request asked (`Docket-Receipt-Wait-Ms`) to wait for its receipt, if it did.
fn receipt_wait(msg: &async_nats::Message) -> Option<Duration> {
    let ms = msg
        .headers
        .as_ref()?
        .get(docket_schemas::vault::RECEIPT_WAIT_HEADER)?
        .as_str()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(
        ms.min(docket_schemas::proof::RECEIPT_WAIT_MS_MAX),
    ))
}

/// Adds the inclusion proof to an answer's receipt once a checkpoint covers it; an answer
/// whose checkpoint does not come in time goes out with the seq and hash alone.
async fn with_proof(answer: Reply, wait: Duration, receipts: &Receipts) -> Reply {
    let Reply::Outcome(mut outcome) = answer else {
        return answer;
    };
    if let Some(r) = outcome.receipt.as_mut() {
        match crate::proofs::receipt(&receipts.store, r.seq, wait, &receipts.wanted).await {
            Ok(p) => r.proof = Some(Box::new(p)),
            Err(e) => tracing::info!(seq = r.seq, error = %e, "an answer went without its proof"),
        }
    }
    Reply::Outcome(outcome)
}

pub async fn serve_vault_requests(
    client: async_nats::Client,
    calls: tokio::sync::mpsc::Sender<VaultCall>,
    introspector: Option<crate::desk::Introspector>,
    receipts: Option<Receipts>,
) -> Result<(), TransportError> {
    let mut sub = client
        .queue_subscribe(SUBJECT_VAULT, "docket-vault".into())
        .await
        .map_err(nats_err)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(VAULT_INFLIGHT_MAX));
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let client = client.clone();
        match introspector
            .clone()
            .filter(|_| msg.subject.ends_with(".introspect"))
        {
            Some(intro) => {
                // Answered here, on any core, without waiting for the loop; what must be
                // recorded (a refusal, a replay) still goes to the loop.
                let calls = calls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let payload = msg.payload.clone();
                    let answer = match tokio::task::spawn_blocking(move || {
                        // A clock that cannot be read sends the request to the loop,
                        // which stops on it loudly.
                        intro.answer(&payload, crate::clock::now().ok()?)
                    })
                    .await
                    {
                        Ok(Some(answer)) => Some(answer),
                        _ => match to_loop(&calls, msg.payload).await {
                            Some(pending) => pending.await.ok(),
                            None => None,
                        },
                    };
                    if let Some(answer) = answer {
                        respond(&client, reply_to, &answer).await;
                    }
                });
            }
            None => {
                // Handed over here, in arrival order; answered when the loop has decided.
                let wait = receipt_wait(&msg).zip(receipts.clone());
                let Some(pending) = to_loop(&calls, msg.payload).await else {
                    break;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Ok(answer) = pending.await {
                        let answer = match &wait {
                            Some((wait, receipts)) => with_proof(answer, *wait, receipts).await,
                            None => answer,
                        };
                        respond(&client, reply_to, &answer).await;
                    }
                });
            }
        }
    }
    Ok(())
}

/// Queues a request for the ledger's loop; `None` once the loop has stopped.
async fn to_loop(
    calls: &tokio::sync::mpsc::Sender<VaultCall>,
    request: Bytes,
) -> Option<tokio::sync::oneshot::Receiver<Reply>> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    calls.send(VaultCall { request, reply }).await.ok()?;
    Some(answer)
}

async fn respond(client: &async_nats::Client, reply_to: async_nats::Subject, answer: &Reply) {
    match serde_json::to_vec(answer) {
        Ok(bytes) => {
            if let Err(e) = client.publish(reply_to, bytes.into()).await {
                tracing::warn!(error = %e, "vault reply not sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "vault reply did not serialise; not sent"),
    }
}
