//! The RocksDB store: entries, the event-id index, quarantine, checkpoints and metadata.
//!
//! The system of record. Every batch is one WriteBatch written with a synced WAL;
//! a failed write is returned, never retried, so the caller stops acknowledging.
//! Readers (verify, log, export) open the database as a RocksDB secondary, so they
//! work whether or not `serve` is running.

use std::path::{Path, PathBuf};

use docket_schemas::EventId;
use docket_schemas::fate::Fate;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, Direction,
    IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::admission::{ChainTip, Plan, Quarantined};
use crate::chain::{Entry, RecordError};
use crate::desk::SeenRequest;
use crate::merkle::{self, CompactRange, Hash, NodeId};
use crate::registry::Registry;
use crate::state::{Finding, ObjectKey, VaultState};

/// What a batch changed in the projection, serialised, written with the batch.
#[derive(Default)]
pub struct ProjectionDelta {
    /// (object key, JSON or `None` to delete).
    pub objects: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub findings: Vec<Finding>,
    /// Seq and time of the last entry the projection reflects.
    pub seq: u64,
    pub ts_us: i64,
    /// Vault request ids the desk accepted in this batch: stored with the decisions they
    /// led to, so a restarted vault still refuses their replay.
    pub requests_seen: Vec<SeenRequest>,
}

impl ProjectionDelta {
    /// Serialises the touched objects of `state` (call while holding the state, briefly).
    pub fn capture(
        state: &VaultState,
        touched: &std::collections::BTreeSet<ObjectKey>,
        findings: Vec<Finding>,
    ) -> Result<Self, StoreError> {
        // Serialising the changed objects is most of the projection's cost: use every core.
        let objects = {
            use rayon::prelude::*;
            let keys: Vec<&ObjectKey> = touched.iter().collect();
            keys.par_iter()
                .map(|k| Ok((k.encode(), state.object_json(k)?)))
                .collect::<Result<Vec<_>, serde_json::Error>>()
                .map_err(|source| StoreError::Encode {
                    what: "a state object",
                    source,
                })?
        };
        Ok(ProjectionDelta {
            objects,
            findings,
            seq: state.seq,
            ts_us: state.ts.map_or(0, |t| t.as_micros()),
            requests_seen: Vec::new(),
        })
    }
}

/// Column family: seq (u64 big-endian) -> entry record (see chain.rs).
pub const CF_ENTRIES: &str = "entries";
/// Column family: event id (16 bytes) -> seq (u64 big-endian). Permanent dedup index.
pub const CF_EVENT_IDS: &str = "event_ids";
/// Column family: transport sequence (u64 big-endian) -> quarantine record (JSON).
pub const CF_QUARANTINE: &str = "quarantine";
/// Column family: checkpoint size (u64 big-endian) -> signed note (UTF-8).
pub const CF_CHECKPOINTS: &str = "checkpoints";
/// Column family: name (ASCII) -> value. See docs/FORMAT.md for the names.
pub const CF_META: &str = "meta";
/// Column family: state object key (`a/`, `g/`, `p/`, `t/` + id) -> JSON. The projection.
pub const CF_STATE: &str = "state";
/// Column family: u64be(seq) || u8(index) -> finding (JSON).
pub const CF_FINDINGS: &str = "findings";
/// Column family: u64be(seen µs) || request id (16 bytes) -> signing key id (UTF-8).
/// The vault's replay memory; older than the replay window is pruned at start.
pub const CF_REQUESTS: &str = "requests";
/// Column family: u8(level) || u64be(index) -> SHA-256 hash of that complete Merkle subtree.
pub const CF_TREE: &str = "tree";
/// Column family: u64be(checkpoint size) || witness cosignature key id (4 bytes) -> the
/// witness's cosignature line (UTF-8, ending in a newline).
pub const CF_COSIGNATURES: &str = "cosignatures";

const ALL_CFS: [&str; 10] = [
    CF_ENTRIES,
    CF_EVENT_IDS,
    CF_QUARANTINE,
    CF_CHECKPOINTS,
    CF_META,
    CF_STATE,
    CF_FINDINGS,
    CF_REQUESTS,
    CF_TREE,
    CF_COSIGNATURES,
];

pub const META_FORMAT: &[u8] = b"format";
pub const META_ORIGIN: &[u8] = b"origin";
pub const META_ADMIN_KEY: &[u8] = b"admin_public_key";
pub const META_LEDGER_KEY: &[u8] = b"ledger_public_key";
pub const META_TIP: &[u8] = b"tip";
pub const META_REGISTRY: &[u8] = b"registry";
pub const META_SOURCE_SEQ: &[u8] = b"source_seq";
/// u64be(seq) || i64be(ts micros) of the last entry the projection reflects.
pub const META_STATE_AT: &[u8] = b"state_at";
/// u64be: quarantine records stored (they stop at `QUARANTINE_RECORDS_MAX`).
pub const META_QUARANTINE_STORED: &[u8] = b"quarantine_stored";
/// Prefix of `quarantine_count/<code>` -> u64be: refusals with that code, stored or not.
pub const META_QUARANTINE_COUNT_PREFIX: &[u8] = b"quarantine_count/";
/// Quarantine records kept at most; past it, refusals are counted by code but not stored.
pub const QUARANTINE_RECORDS_MAX: u64 = 100_000;
/// u64be: leaves in the Merkle tree; equals the tip's seq once `serve` has opened the store.
pub const META_TREE_SIZE: &[u8] = b"tree_size";
/// Format 2 added the Merkle tree; format 1 checkpoints named the chain head instead of its root.
const FORMAT_VERSION: &[u8] = b"2";
/// The format whose checkpoints name the chain head; `Ledger::new` upgrades it.
pub const FORMAT_HEAD_CHECKPOINTS: &[u8] = b"1";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is in use by another process (a running `docket serve`?); stop it, or pass another --data"
    )]
    Locked { path: PathBuf },
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("{path} holds a ledger for origin {found:?}, not {expected:?}")]
    OriginMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path} was created with admin key {found}, the config names {expected}")]
    AdminMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "{path}: this ledger's checkpoint key is {found}, but the key given is {expected}; \
         give the ledger's own key file with --ledger-key (or ledger_key in the config)"
    )]
    LedgerKeyMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: no ledger here (missing or not initialised by `docket serve`)")]
    NotALedger { path: PathBuf },
    #[error("{path}: metadata {key:?} is corrupt")]
    CorruptMeta { path: PathBuf, key: String },
    #[error("entry {seq}: {source}")]
    Record { seq: u64, source: RecordError },
    #[error("{what} did not serialise, so nothing of this batch was written: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("entry {seq} does not decode: {why}")]
    Undecodable { seq: u64, why: String },
    #[error(
        "{path}: what is stored beside the chain disagrees with it: {what}. It was edited or \
         damaged; `docket state rebuild --data DIR --repair` replaces it with what the chain derives"
    )]
    Diverges { path: PathBuf, what: String },
    #[error("{path}: the Merkle tree {what}")]
    Tree { path: PathBuf, what: String },
    #[error("{0}")]
    Proof(String),
}

/// Static facts about a ledger, fixed when it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerIdentity {
    pub origin: String,
    /// base64 of the admin public key.
    pub admin_public_key: String,
    /// base64 of the key that signs checkpoints.
    pub ledger_public_key: String,
}

pub struct Store {
    db: DB,
    path: PathBuf,
    sync: WriteOptions,
    /// A reader's private RocksDB secondary directory, removed on drop.
    secondary: Option<PathBuf>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(dir) = &self.secondary {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Stop at the first corrupt WAL record: everything before it was acknowledged and is trusted.
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts.set_paranoid_checks(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_max_open_files(512);
    opts
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS
        .iter()
        .map(|name| {
            let mut o = options();
            if *name == CF_EVENT_IDS {
                // Nearly every dedup lookup misses: a bloom filter answers those without I/O.
                let mut t = BlockBasedOptions::default();
                t.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&t);
            }
            ColumnFamilyDescriptor::new(*name, o)
        })
        .collect()
}

impl Store {
    /// Opens (creating if needed) the primary store for `serve`, checking it belongs to this ledger.
    pub fn open(path: &Path, identity: &LedgerIdentity) -> Result<Store, StoreError> {
        let store = Store::open_writable(path)?;
        match store.identity_opt()? {
            None => {
                let mut b = WriteBatch::default();
                let meta = store.cf(CF_META)?;
                b.put_cf(meta, META_FORMAT, FORMAT_VERSION);
                b.put_cf(meta, META_ORIGIN, &identity.origin);
                b.put_cf(meta, META_ADMIN_KEY, &identity.admin_public_key);
                b.put_cf(meta, META_LEDGER_KEY, &identity.ledger_public_key);
                store
                    .db
                    .write_opt(b, &store.sync)
                    .map_err(|e| rocks(path, e))?;
            }
            Some(found) => {
                if found.origin != identity.origin {
                    return Err(StoreError::OriginMismatch {
                        path: path.into(),
                        found: found.origin,
                        expected: identity.origin.clone(),
                    });
                }
                if found.admin_public_key != identity.admin_public_key {
                    return Err(StoreError::AdminMismatch {
                        path: path.into(),
                        found: found.admin_public_key,
                        expected: identity.admin_public_key.clone(),
                    });
                }
                if found.ledger_public_key != identity.ledger_public_key {
                    return Err(StoreError::LedgerKeyMismatch {
                        path: path.into(),
                        found: found.ledger_public_key,
                        expected: identity.ledger_public_key.clone(),
                    });
                }
            }
        }
        Ok(store)
    }

    /// Opens an existing ledger's store for writing, as its identity stands (for offline
    /// maintenance while no `serve` holds it).
    pub fn open_primary(path: &Path) -> Result<Store, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::NotALedger { path: path.into() });
        }
        let store = Store::open_writable(path)?;
        store.identity()?;
        Ok(store)
    }

    fn open_writable(path: &Path) -> Result<Store, StoreError> {
        let db = DB::open_cf_descriptors(&options(), path, cf_descriptors()).map_err(|e| {
            // RocksDB reports a held LOCK file as an I/O error; name the likely cause instead.
            if e.kind() == rocksdb::ErrorKind::IOError && e.to_string().contains("LOCK") {
                StoreError::Locked { path: path.into() }
            } else {
                rocks(path, e)
            }
        })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(Store {
            db,
            path: path.to_path_buf(),
            sync,
            secondary: None,
        })
    }

    /// Opens an existing store read-only, as a RocksDB secondary that catches up with a running `serve`.
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::NotALedger { path: path.into() });
        }
        let secondary =
            std::env::temp_dir().join(format!("docket-reader-{}-{}", std::process::id(), unique()));
        let mut opts = options();
        opts.create_if_missing(false);
        opts.set_max_open_files(-1);
        let db = DB::open_cf_descriptors_as_secondary(&opts, path, &secondary, cf_descriptors())
            .map_err(|e| rocks(path, e))?;
        db.try_catch_up_with_primary().map_err(|e| rocks(path, e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            sync: WriteOptions::default(),
            secondary: Some(secondary),
        };
        store.identity()?;
        Ok(store)
    }

    /// A reader's view catches up with the primary's latest writes.
    pub fn catch_up(&self) -> Result<(), StoreError> {
        if self.secondary.is_none() {
            // The primary sees its own writes already.
            return Ok(());
        }
        self.db
            .try_catch_up_with_primary()
            .map_err(|e| rocks(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        // Every column family is created at open, so a missing one means a foreign database.
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::NotALedger {
                path: self.path.clone(),
            })
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_META)?, key)
            .map_err(|e| rocks(&self.path, e))
    }

    /// A u64 kept in meta; 0 when absent.
    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.meta(key)? {
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| self.corrupt(key))?,
            )),
            None => Ok(0),
        }
    }

    /// Quarantined messages by reason code, counted since this store began counting
    /// (the records themselves stop at `QUARANTINE_RECORDS_MAX`; the counts do not).
    pub fn quarantine_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        let mode = IteratorMode::From(META_QUARANTINE_COUNT_PREFIX, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META)?, mode) {
            let (k, v) = item.map_err(|e| rocks(&self.path, e))?;
            let Some(code) = k.strip_prefix(META_QUARANTINE_COUNT_PREFIX) else {
                break;
            };
            let n = u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt(META_QUARANTINE_COUNT_PREFIX))?,
            );
            out.insert(String::from_utf8_lossy(code).into_owned(), n);
        }
        Ok(out)
    }

    fn meta_text(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        self.meta(key)?
            .map(|v| String::from_utf8(v).map_err(|_| self.corrupt(key)))
            .transpose()
    }

    fn corrupt(&self, key: &[u8]) -> StoreError {
        StoreError::CorruptMeta {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into(),
        }
    }

    fn identity_opt(&self) -> Result<Option<LedgerIdentity>, StoreError> {
        let Some(origin) = self.meta_text(META_ORIGIN)? else {
            return Ok(None);
        };
        Ok(Some(LedgerIdentity {
            origin,
            admin_public_key: self
                .meta_text(META_ADMIN_KEY)?
                .ok_or_else(|| self.corrupt(META_ADMIN_KEY))?,
            ledger_public_key: self
                .meta_text(META_LEDGER_KEY)?
                .ok_or_else(|| self.corrupt(META_LEDGER_KEY))?,
        }))
    }

    pub fn identity(&self) -> Result<LedgerIdentity, StoreError> {
        self.identity_opt()?.ok_or_else(|| StoreError::NotALedger {
            path: self.path.clone(),
        })
    }

    /// Seq and head hash of the last committed entry; (0, zeros) when empty.
    pub fn head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        match self.meta(META_TIP)? {
            Some(v) if v.len() == 40 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[..8]);
                let mut head = [0u8; 32];
                head.copy_from_slice(&v[8..]);
                Ok((u64::from_be_bytes(seq), head))
            }
            Some(_) => Err(self.corrupt(META_TIP)),
            None => Ok((0, crate::chain::GENESIS_PREV)),
        }
    }

    /// The key registry as of the last committed entry, if any admin event was committed.
    pub fn registry(&self) -> Result<Option<Registry>, StoreError> {
        match self.meta(META_REGISTRY)? {
            Some(v) => serde_json::from_slice::<Registry>(&v)
                .ok()
                .and_then(|r| r.restore().ok())
                .map(Some)
                .ok_or_else(|| self.corrupt(META_REGISTRY)),
            None => Ok(None),
        }
    }

    /// The registry before any entry: the ledger's recorded admin and checkpoint keys.
    pub fn genesis_registry(&self) -> Result<Registry, StoreError> {
        let id = self.identity()?;
        Ok(Registry::new(
            &self.recorded_key("admin_public_key", &id.admin_public_key)?,
            &self.recorded_key("ledger_public_key", &id.ledger_public_key)?,
        ))
    }

    /// The ledger's recorded checkpoint key (which also seals the columnar copy).
    pub fn ledger_key(&self) -> Result<ed25519_dalek::VerifyingKey, StoreError> {
        let id = self.identity()?;
        self.recorded_key("ledger_public_key", &id.ledger_public_key)
    }

    fn recorded_key(
        &self,
        field: &str,
        b64: &str,
    ) -> Result<ed25519_dalek::VerifyingKey, StoreError> {
        docket_schemas::decode_public_key(b64)
            .ok()
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| StoreError::CorruptMeta {
                path: self.path.clone(),
                key: field.into(),
            })
    }

    /// The chain tip as last committed; an empty chain with a fresh registry when new.
    pub fn tip(&self, fresh: impl FnOnce() -> Registry) -> Result<ChainTip, StoreError> {
        let (seq, head) = self.head()?;
        let registry = self.registry()?.unwrap_or_else(fresh);
        Ok(ChainTip {
            seq,
            head,
            registry,
            source_seq: self.last_source_seq()?,
        })
    }

    /// The highest transport sequence committed (0 if none).
    pub fn last_source_seq(&self) -> Result<u64, StoreError> {
        match self.meta(META_SOURCE_SEQ)? {
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| self.corrupt(META_SOURCE_SEQ))?,
            )),
            None => Ok(0),
        }
    }

    /// For each id, the event payload of the entry that holds it, if any (admission tells
    /// a redelivery from a different event reusing the id). Only taken ids cost a read.
    pub fn stored_payloads(&self, ids: &[EventId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.cf(CF_EVENT_IDS)?;
        let seqs: Vec<Option<Vec<u8>>> = self
            .db
            .batched_multi_get_cf(cf, ids.iter().map(|id| &id.0), false)
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| rocks(&self.path, e))
            })
            .collect::<Result<_, _>>()?;
        seqs.into_iter()
            .map(|v| {
                let Some(v) = v else { return Ok(None) };
                let seq = u64::from_be_bytes(
                    v.get(..8)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| self.corrupt(b"event id -> seq"))?,
                );
                let record = self
                    .record(seq)?
                    .ok_or_else(|| self.corrupt(b"event id -> entry"))?;
                let entry = decode_record(seq, &record)?;
                let envelope = docket_schemas::Envelope::decode(entry.envelope).map_err(|e| {
                    StoreError::Undecodable {
                        seq,
                        why: e.to_string(),
                    }
                })?;
                Ok(Some(envelope.payload))
            })
            .collect()
    }

    /// Writes a planned batch atomically and durably: entries, ids, quarantine, tip, registry,
    /// and the projection's changed objects and findings, so state and chain never disagree.
    pub fn commit(
        &self,
        plan: &Plan,
        tip: &ChainTip,
        projection: Option<&ProjectionDelta>,
    ) -> Result<(), StoreError> {
        self.write_batch(plan, tip, projection, false)
    }

    /// Replaces the whole projection and every finding with `projection`, and the stored
    /// registry with `tip`'s, in one durable write (`docket state rebuild --repair`).
    pub fn replace_derived(
        &self,
        tip: &ChainTip,
        projection: &ProjectionDelta,
    ) -> Result<(), StoreError> {
        let plan = Plan {
            registry_changed: true,
            ..Plan::default()
        };
        self.write_batch(&plan, tip, Some(projection), true)
    }

    fn write_batch(
        &self,
        plan: &Plan,
        tip: &ChainTip,
        projection: Option<&ProjectionDelta>,
        replace_derived: bool,
    ) -> Result<(), StoreError> {
        let (entries, ids, quarantine, meta) = (
            self.cf(CF_ENTRIES)?,
            self.cf(CF_EVENT_IDS)?,
            self.cf(CF_QUARANTINE)?,
            self.cf(CF_META)?,
        );
        let mut b = WriteBatch::default();
        if replace_derived {
            for name in [CF_STATE, CF_FINDINGS] {
                let cf = self.cf(name)?;
                for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, _) = item.map_err(|e| rocks(&self.path, e))?;
                    b.delete_cf(cf, k);
                }
            }
        }
        for e in &plan.appends {
            b.put_cf(entries, e.seq.to_be_bytes(), e.entry().encode());
            b.put_cf(ids, e.event_id.0, e.seq.to_be_bytes());
        }
        if !plan.tree_nodes.is_empty() {
            let tree = self.cf(CF_TREE)?;
            for (id, hash) in &plan.tree_nodes {
                b.put_cf(tree, node_key(*id), hash);
            }
            b.put_cf(meta, META_TREE_SIZE, tip.seq.to_be_bytes());
        }
        if !plan.quarantined.is_empty() {
            // Every refusal is counted by reason; records (each a sample of the message,
            // never all of it) are kept up to a bound, so a flood cannot fill the disk.
            let mut stored = self.meta_u64(META_QUARANTINE_STORED)?;
            let mut counts = std::collections::BTreeMap::<&str, u64>::new();
            for q in &plan.quarantined {
                *counts.entry(q.code.as_str()).or_default() += 1;
                if stored < QUARANTINE_RECORDS_MAX {
                    b.put_cf(
                        quarantine,
                        q.source_seq.to_be_bytes(),
                        encode("a quarantine record", q)?,
                    );
                    stored += 1;
                }
            }
            b.put_cf(meta, META_QUARANTINE_STORED, stored.to_be_bytes());
            for (code, n) in counts {
                let key = [META_QUARANTINE_COUNT_PREFIX, code.as_bytes()].concat();
                let total = self.meta_u64(&key)?.saturating_add(n);
                b.put_cf(meta, key, total.to_be_bytes());
            }
        }
        let mut t = tip.seq.to_be_bytes().to_vec();
        t.extend_from_slice(&tip.head);
        b.put_cf(meta, META_TIP, t);
        if plan.registry_changed {
            b.put_cf(meta, META_REGISTRY, encode("the registry", &tip.registry)?);
        }
        b.put_cf(meta, META_SOURCE_SEQ, tip.source_seq.to_be_bytes());
        if let Some(p) = projection {
            let (state_cf, findings_cf) = (self.cf(CF_STATE)?, self.cf(CF_FINDINGS)?);
            for (key, json) in &p.objects {
                match json {
                    Some(json) => b.put_cf(state_cf, key, json),
                    None => b.delete_cf(state_cf, key),
                }
            }
            let mut index = std::collections::BTreeMap::<u64, u8>::new();
            for f in &p.findings {
                let i = index.entry(f.seq).or_default();
                let mut k = f.seq.to_be_bytes().to_vec();
                k.push(*i);
                *i = i.saturating_add(1);
                b.put_cf(findings_cf, k, encode("a finding", f)?);
            }
            let requests = self.cf(CF_REQUESTS)?;
            for r in &p.requests_seen {
                b.put_cf(requests, request_key(r.seen_us, &r.id), r.key_id.as_bytes());
            }
            let mut at = p.seq.to_be_bytes().to_vec();
            at.extend_from_slice(&p.ts_us.to_be_bytes());
            b.put_cf(meta, META_STATE_AT, at);
        }
        self.db
            .write_opt(b, &self.sync)
            .map_err(|e| rocks(&self.path, e))
    }

    /// The vault request ids stored as seen at or after `since_us`, oldest first; those
    /// before it are deleted (outside every replay window, they only take room).
    pub fn remembered_requests(&self, since_us: i64) -> Result<Vec<SeenRequest>, StoreError> {
        let cf = self.cf(CF_REQUESTS)?;
        let from = request_key(since_us, &EventId([0; 16]));
        self.db
            .delete_range_cf(cf, &request_key(0, &EventId([0; 16]))[..], &from[..])
            .map_err(|e| rocks(&self.path, e))?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(cf, mode) {
            let (k, v) = item.map_err(|e| rocks(&self.path, e))?;
            let (Some(seen_us), Some(id), Ok(key_id)) = (
                k.get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .and_then(|b| i64::try_from(u64::from_be_bytes(b)).ok()),
                k.get(8..24).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                String::from_utf8(v.into_vec()),
            ) else {
                return Err(self.corrupt(CF_REQUESTS.as_bytes()));
            };
            out.push(SeenRequest {
                id: EventId(id),
                seen_us,
                key_id,
            });
        }
        Ok(out)
    }

    /// Loads the stored projection (objects, seq and time); an empty state when none was stored.
    pub fn load_state(&self) -> Result<VaultState, StoreError> {
        let mut state = VaultState::default();
        for r in self.db.iterator_cf(self.cf(CF_STATE)?, IteratorMode::Start) {
            let (k, v) = r.map_err(|e| rocks(&self.path, e))?;
            let bad = || self.corrupt(&k);
            let id = std::str::from_utf8(&k[2.min(k.len())..])
                .map_err(|_| bad())?
                .to_string();
            match k.get(..2) {
                Some(b"a/") => drop(
                    state
                        .agents
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"g/") => drop(
                    state
                        .grants
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"p/") => drop(
                    state
                        .approvals
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"t/") => drop(
                    state
                        .tokens
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"k/") => drop(
                    state
                        .step_up_keys
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"c/") => drop(
                    state
                        .connections
                        .insert(id, serde_json::from_slice(&v).map_err(|_| bad())?),
                ),
                Some(b"y/") => state.policy = serde_json::from_slice(&v).map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        if let Some(v) = self.meta(META_STATE_AT)? {
            let (seq, ts) = v
                .split_at_checked(8)
                .ok_or_else(|| self.corrupt(META_STATE_AT))?;
            state.seq =
                u64::from_be_bytes(seq.try_into().map_err(|_| self.corrupt(META_STATE_AT))?);
            let ts = i64::from_be_bytes(ts.try_into().map_err(|_| self.corrupt(META_STATE_AT))?);
            state.ts = docket_schemas::Timestamp::from_micros(ts).filter(|_| state.seq > 0);
        }
        state.reindex();
        Ok(state)
    }

    /// Every stored finding, in seq order.
    pub fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        self.scan(CF_FINDINGS, |_, v| serde_json::from_slice(v).ok())
    }

    /// Flushes memtables to SST files, so the next open has no WAL to replay.
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in ALL_CFS {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(|e| rocks(&self.path, e))?;
        }
        Ok(())
    }

    pub fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_CHECKPOINTS)?,
            size.to_be_bytes(),
            note.as_bytes(),
        );
        self.db
            .write_opt(b, &self.sync)
            .map_err(|e| rocks(&self.path, e))
    }

    /// Leaves in the stored Merkle tree (0 for a store written before it existed).
    pub fn tree_size(&self) -> Result<u64, StoreError> {
        self.meta_u64(META_TREE_SIZE)
    }

    /// One stored complete-subtree hash; missing is an error (the tree is written with the chain).
    pub fn tree_node(&self, id: NodeId) -> Result<Hash, StoreError> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_TREE)?, node_key(id))
            .map_err(|e| rocks(&self.path, e))?;
        v.as_deref()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| StoreError::Tree {
                path: self.path.clone(),
                what: format!("lacks node (level {}, index {})", id.level, id.index),
            })
    }

    /// The tree's border at `size`, read from stored nodes.
    pub fn compact_range(&self, size: u64) -> Result<CompactRange, StoreError> {
        let border = CompactRange::border_ids(size)
            .into_iter()
            .map(|id| self.tree_node(id))
            .collect::<Result<Vec<_>, _>>()?;
        CompactRange::from_border(size, border).map_err(|e| self.proof_error(e))
    }

    /// The root of the tree over the first `size` entries.
    pub fn tree_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.within_tree(size)?;
        merkle::subtree_root(0, size, &mut |id| self.tree_node(id))
    }

    /// RFC 6962 audit path of leaf `index` in the tree of `size`.
    pub fn inclusion_path(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.within_tree(size)?;
        merkle::inclusion_proof(index, size, &mut |id| self.tree_node(id))
            .map_err(|e| self.proof_error(e))
    }

    /// RFC 6962 consistency proof from the tree of `old` to the tree of `new`.
    pub fn consistency_path(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.within_tree(new)?;
        merkle::consistency_proof(old, new, &mut |id| self.tree_node(id))
            .map_err(|e| self.proof_error(e))
    }

    fn within_tree(&self, size: u64) -> Result<(), StoreError> {
        let have = self.tree_size()?;
        if size > have {
            return Err(StoreError::Proof(format!(
                "the tree has {have} entries, fewer than {size}"
            )));
        }
        Ok(())
    }

    fn proof_error(&self, e: merkle::ProofError<StoreError>) -> StoreError {
        match e {
            merkle::ProofError::Source(e) => e,
            other => StoreError::Proof(other.to_string()),
        }
    }

    /// Writes tree nodes computed outside ingest (a store older than the tree), in one durable write.
    pub fn put_tree(&self, nodes: &[(NodeId, Hash)], size: u64) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        let tree = self.cf(CF_TREE)?;
        for (id, hash) in nodes {
            b.put_cf(tree, node_key(*id), hash);
        }
        b.put_cf(self.cf(CF_META)?, META_TREE_SIZE, size.to_be_bytes());
        self.db
            .write_opt(b, &self.sync)
            .map_err(|e| rocks(&self.path, e))
    }

    /// The store's format version (`b"1"` before the Merkle tree).
    pub fn format(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.meta(META_FORMAT)?.unwrap_or_default())
    }

    /// Replaces format-1 checkpoints (which named the head) with `notes`, and marks format 2.
    pub fn upgrade_checkpoints(&self, notes: &[(u64, String)]) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        let cf = self.cf(CF_CHECKPOINTS)?;
        for (size, note) in notes {
            b.put_cf(cf, size.to_be_bytes(), note.as_bytes());
        }
        b.put_cf(self.cf(CF_META)?, META_FORMAT, FORMAT_VERSION);
        self.db
            .write_opt(b, &self.sync)
            .map_err(|e| rocks(&self.path, e))
    }

    /// Keeps a witness's cosignature line for the checkpoint of `size`.
    pub fn put_cosignature(
        &self,
        size: u64,
        key_id: [u8; 4],
        line: &str,
    ) -> Result<(), StoreError> {
        let mut key = size.to_be_bytes().to_vec();
        key.extend_from_slice(&key_id);
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_COSIGNATURES)?, key, line.as_bytes());
        self.db
            .write_opt(b, &self.sync)
            .map_err(|e| rocks(&self.path, e))
    }

    /// The checkpoint note of `size` with every witness cosignature kept for it appended.
    pub fn cosigned_checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        let Some(mut note) = self
            .db
            .get_cf(self.cf(CF_CHECKPOINTS)?, size.to_be_bytes())
            .map_err(|e| rocks(&self.path, e))?
            .and_then(|v| String::from_utf8(v).ok())
        else {
            return Ok(None);
        };
        let prefix = size.to_be_bytes();
        let cf = self.cf(CF_COSIGNATURES)?;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| rocks(&self.path, e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let line = String::from_utf8(v.into_vec())
                .map_err(|_| self.corrupt(CF_COSIGNATURES.as_bytes()))?;
            note.push_str(&line);
        }
        Ok(Some(note))
    }

    /// Sizes that have at least one witness cosignature, with the lines, oldest first.
    pub fn cosignatures(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.scan(CF_COSIGNATURES, |k, v| {
            Some((
                u64::from_be_bytes(k.get(..8)?.try_into().ok()?),
                String::from_utf8(v.to_vec()).ok()?,
            ))
        })
    }

    /// The smallest checkpoint that covers `seq` (size >= seq), with its cosignatures.
    pub fn covering_checkpoint(&self, seq: u64) -> Result<Option<(u64, String)>, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let from = seq.to_be_bytes();
        let Some(item) = self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
            .next()
        else {
            return Ok(None);
        };
        let (k, _) = item.map_err(|e| rocks(&self.path, e))?;
        let size = u64::from_be_bytes(
            k.as_ref()
                .try_into()
                .map_err(|_| self.corrupt(CF_CHECKPOINTS.as_bytes()))?,
        );
        Ok(self.cosigned_checkpoint(size)?.map(|n| (size, n)))
    }

    /// Raw records from `from` on, in seq order, with the seq their key says.
    pub fn records(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_, StoreError> {
        let start = from.to_be_bytes();
        let it = self.db.iterator_cf(
            self.cf(CF_ENTRIES)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let path = self.path.clone();
        Ok(it.map(move |r| {
            let (k, v) = r.map_err(|e| rocks(&path, e))?;
            let key: [u8; 8] = k.as_ref().try_into().map_err(|_| StoreError::CorruptMeta {
                path: path.clone(),
                key: format!("entries key {}", crate::chain::hex(&k)),
            })?;
            Ok((u64::from_be_bytes(key), v.into_vec()))
        }))
    }

    /// Reads one entry's record and decodes it.
    pub fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_ENTRIES)?, seq.to_be_bytes())
            .map_err(|e| rocks(&self.path, e))
    }

    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.scan(CF_CHECKPOINTS, |k, v| {
            Some((
                u64::from_be_bytes(k.try_into().ok()?),
                String::from_utf8(v.to_vec()).ok()?,
            ))
        })
    }

    /// The newest checkpoint (size, signed note), reading only it.
    pub fn last_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(|e| rocks(&self.path, e))?;
                let bad = || self.corrupt(CF_CHECKPOINTS.as_bytes());
                let size = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| bad())?);
                let note = String::from_utf8(v.to_vec()).map_err(|_| bad())?;
                Ok(Some((size, note)))
            }
        }
    }

    pub fn quarantine(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.scan(CF_QUARANTINE, |_, v| serde_json::from_slice(v).ok())
    }

    /// What became of the message JetStream stored at `stream_seq` carrying event `id`:
    /// quarantined (that exact message was refused), appended (an entry holds the id), or pending.
    pub fn fate(&self, id: &EventId, stream_seq: u64) -> Result<Fate, StoreError> {
        let quarantined = self
            .db
            .get_cf(self.cf(CF_QUARANTINE)?, stream_seq.to_be_bytes())
            .map_err(|e| rocks(&self.path, e))?;
        if let Some(record) = quarantined {
            let q: serde_json::Value = serde_json::from_slice(&record)
                .map_err(|_| self.corrupt(CF_QUARANTINE.as_bytes()))?;
            let text = |field: &str| {
                q[field]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.corrupt(CF_QUARANTINE.as_bytes()))
            };
            return Ok(Fate::Quarantined {
                code: text("code")?,
                reason: text("reason")?,
            });
        }
        let Some(seq) = self.seq_of(id)? else {
            return Ok(Fate::Pending);
        };
        let record = self
            .record(seq)?
            .ok_or_else(|| self.corrupt(CF_ENTRIES.as_bytes()))?;
        let entry = decode_record(seq, &record)?;
        Ok(Fate::Appended {
            seq,
            hash: crate::chain::hex(&entry.hash),
        })
    }

    /// Seq of the entry holding `id`, if any.
    pub fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(CF_EVENT_IDS)?, id.0)
            .map_err(|e| rocks(&self.path, e))?;
        Ok(v.and_then(|v| v.as_slice().try_into().ok())
            .map(u64::from_be_bytes))
    }

    fn scan<T>(
        &self,
        cf: &str,
        f: impl Fn(&[u8], &[u8]) -> Option<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for r in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (k, v) = r.map_err(|e| rocks(&self.path, e))?;
            out.push(f(&k, &v).ok_or_else(|| self.corrupt(cf.as_bytes()))?);
        }
        Ok(out)
    }
}

/// JSON for a value written in a durable batch: failing is an error that stops the
/// commit, never empty bytes.
fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

/// Decodes a record fetched from the store.
/// The key of a remembered request: its time first, so old ones prune as one range.
fn node_key(id: NodeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = id.level;
    k[1..].copy_from_slice(&id.index.to_be_bytes());
    k
}

fn request_key(seen_us: i64, id: &EventId) -> Vec<u8> {
    let mut k = (seen_us.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(&id.0);
    k
}

pub fn decode_record(seq: u64, record: &[u8]) -> Result<Entry<'_>, StoreError> {
    Entry::decode(seq, record).map_err(|source| StoreError::Record { seq, source })
}

fn rocks(path: &Path, source: rocksdb::Error) -> StoreError {
    StoreError::Rocks {
        path: path.to_path_buf(),
        source,
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PolicyInForce;
    use docket_schemas::PolicySet;

    fn store(dir: &Path) -> Store {
        let identity = LedgerIdentity {
            origin: "test.local/ledger".into(),
            admin_public_key: docket_schemas::encode_base64(&[1; 32]),
            ledger_public_key: docket_schemas::encode_base64(&[2; 32]),
        };
        Store::open(&dir.join("db"), &identity).unwrap()
    }

    #[test]
    fn the_last_checkpoint_is_the_largest_and_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.last_checkpoint().unwrap(), None);
        for size in [9u64, 300, 41] {
            s.put_checkpoint(size, &format!("note {size}")).unwrap();
        }
        assert_eq!(s.last_checkpoint().unwrap(), Some((300, "note 300".into())));
    }

    #[test]
    fn the_policy_in_force_is_stored_with_the_projection_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut state = VaultState::default();
        state.policy = PolicyInForce {
            policy: PolicySet {
                revision: 3,
                approval_ttl_s: 42,
                ..PolicySet::DEFAULTS
            },
            set_seq: 7,
        };
        state.seq = 7;
        state.ts = docket_schemas::Timestamp::parse("2026-11-22T08:00:00.000000Z").ok();
        let touched = std::collections::BTreeSet::from([ObjectKey::Policy]);
        let delta = ProjectionDelta::capture(&state, &touched, vec![]).unwrap();
        let tip = s.tip(|| {
            let k = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
            Registry::new(&k, &k)
        });
        s.commit(&Plan::default(), &tip.unwrap(), Some(&delta))
            .unwrap();
        let loaded = s.load_state().unwrap();
        assert_eq!(loaded.policy, state.policy);
        assert_eq!(loaded.digest().unwrap(), state.digest().unwrap());
    }
}
