//! An auditor's SQL session: the tables over one data directory, read-only, under limits.
//!
//! `events` is the sealed segments (Parquet, pruned by their statistics)
//! unioned with the unsealed tail (decoded at open, at most one segment's
//! worth once sealing keeps up). The file list is pinned at open, so a
//! segment sealed by a running `serve` meanwhile is neither missed nor counted
//! twice. The small tables are built only when a query names them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, col};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as Ast;
use docket_ledger::store::Store;
use ed25519_dalek::SigningKey;

use crate::QueryError;
use crate::detect;
use crate::render::{cast_batch, retype_strings};
use crate::rows::EVENTS_SCHEMA;
use crate::seal::{self, CheckedSeal, SealedFiles};
use crate::segment::{self, Segment};
use crate::tables::{self, AgentFirsts, AsOf, SMALL_TABLES};

/// Memory a query may hold in operators (sorts, joins, aggregates) unless told otherwise.
pub const MEMORY_LIMIT_BYTES_DEFAULT: usize = 512 * 1024 * 1024;
/// Longest a query may run unless told otherwise.
pub const QUERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);

/// The typed views, each a filter and projection of `events`; documented in docs/QUERIES.md.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "api_calls",
        "SELECT seq, ts, received, event_id, agent, audience, token_id, token_hash, method, operation, \
         scopes[1] AS scope, status, source, key_id, entry_hash, reason AS refused FROM events WHERE kind = 'api.called'",
    ),
    (
        "grants",
        "SELECT seq, ts, event_id, grant_id, \"user\", agent, audience, scopes, expires_at, max_calls, key_id \
         FROM events WHERE kind = 'grant.created'",
    ),
    (
        "approvals",
        "SELECT seq, ts, event_id, kind, approval_id, grant_id, \"user\", agent, audience, scopes, risk, \
         decision, method, reason, expires_at, key_id FROM events \
         WHERE kind IN ('approval.requested', 'approval.decided')",
    ),
    (
        "tokens",
        "SELECT seq, ts, event_id, token_id, token_hash, grant_id, \"user\", agent, audience, scopes, \
         expires_at, approval_id, key_id FROM events WHERE kind = 'token.issued'",
    ),
    (
        "revocations",
        // One branch per kind, so `target_type = 'token'` prunes the others before any column is read.
        "SELECT seq, ts, event_id, kind, 'token' AS target_type, token_id AS target, actor, reason, key_id \
         FROM events WHERE kind = 'token.revoked' \
         UNION ALL SELECT seq, ts, event_id, kind, 'grant', grant_id, actor, reason, key_id \
         FROM events WHERE kind = 'grant.revoked' \
         UNION ALL SELECT seq, ts, event_id, kind, 'agent', agent, actor, reason, key_id \
         FROM events WHERE kind = 'agent.suspended' \
         UNION ALL SELECT seq, ts, event_id, kind, 'key', subject_key_id, actor, reason, key_id \
         FROM events WHERE kind = 'key.revoked'",
    ),
    (
        "connections",
        // The events table keeps a connection's provider in `operation`, its fingerprint in
        // `token_hash` and a refresh's or failure's outcome in `decision`.
        "SELECT seq, ts, event_id, kind, \"user\", operation AS provider, scopes, \
         token_hash AS fingerprint, decision AS outcome, reason, actor, \
         expires_at AS access_expires_at, key_id FROM events \
         WHERE kind IN ('connection.linked', 'connection.refreshed', 'connection.failed', 'connection.unlinked')",
    ),
];

/// How a session is opened.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub memory_limit_bytes: usize,
    pub timeout: Duration,
    pub as_of: AsOf,
    /// Seal whole segments the columnar copy lacks before answering (skipped, with a warning, on a
    /// read-only directory or without `sealer`).
    pub seal: bool,
    /// The ledger's checkpoint key, to seal with; without it only segments sealed before are used.
    pub sealer: Option<SigningKey>,
    /// Threads a query runs on; 0 means one per core.
    pub partitions: usize,
    /// Entries per segment when sealing.
    pub segment_entries: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            memory_limit_bytes: MEMORY_LIMIT_BYTES_DEFAULT,
            timeout: QUERY_TIMEOUT_DEFAULT,
            as_of: AsOf::Now,
            seal: true,
            sealer: None,
            partitions: 0,
            segment_entries: segment::SEGMENT_ENTRIES,
        }
    }
}

/// What a reader that opens session after session (`serve`'s detector) keeps between them: the
/// store reader, caught up at each open, and the tail entries already decoded (as queried).
/// Entries never change once appended, so only those after `next` are read from the chain; a
/// new sealed segment moves `first` and the tail starts over from it.
#[derive(Default)]
pub struct SessionCache {
    store: Option<Arc<Store>>,
    first: u64,
    next: u64,
    batches: Vec<RecordBatch>,
    firsts: AgentFirsts,
}

impl SessionCache {
    /// The kept store reader, caught up with the chain first (opened on first use).
    pub fn store(&mut self, data: &Path) -> Result<Arc<Store>, QueryError> {
        match &self.store {
            Some(s) => {
                s.catch_up()?;
                Ok(Arc::clone(s))
            }
            None => {
                let s = Arc::new(Store::open_reader(&data.join("db"))?);
                self.store = Some(Arc::clone(&s));
                Ok(s)
            }
        }
    }

    /// The durable head, through the kept reader (caught up first).
    pub fn head(&mut self, data: &Path) -> Result<u64, QueryError> {
        Ok(self.store(data)?.head()?.0)
    }

    fn extend(
        &mut self,
        store: &Store,
        first: u64,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        if self.first != first || self.next < first {
            self.first = first;
            self.next = first;
            self.batches.clear();
        }
        for b in segment::tail(store, self.next)? {
            if let Some(last) = b
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .and_then(|seqs| (!seqs.is_empty()).then(|| seqs.value(seqs.len() - 1)))
            {
                self.next = last + 1;
            }
            self.batches.push(cast_batch(&b, schema)?);
        }
        Ok(self.batches.clone())
    }
}

/// What the session saw when it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    pub segments: usize,
    pub sealed_through: u64,
    pub tail_rows: u64,
    pub head: u64,
    /// Why sealing was skipped, when it was and whole segments were left to decode.
    pub seal_skipped: Option<String>,
    /// First seq of a segment on disk that has no seal and was decoded from the chain instead.
    pub unsealed_from: Option<u64>,
}

pub struct AuditSession {
    ctx: SessionContext,
    store: Arc<Store>,
    options: SessionOptions,
    loaded: BTreeSet<&'static str>,
    coverage: Coverage,
    /// What a person should know about an answer (e.g. `--as-of` past the head), not yet taken.
    notes: Vec<String>,
    /// Agents' first entries through the head, when a cache kept them (else built when named).
    firsts: Option<AgentFirsts>,
}

/// The schema a table is queried with: strings as views, as DataFusion reads Parquet.
pub(crate) fn query_schema(schema: &Schema) -> SchemaRef {
    retype_strings(schema, &DataType::Utf8, &DataType::Utf8View)
}

impl AuditSession {
    /// Opens the ledger in `data` (read-only, beside a running `serve` if there is one).
    pub async fn open(data: &Path, options: SessionOptions) -> Result<AuditSession, QueryError> {
        Self::open_with_progress(data, options, &|_| {}).await
    }

    /// As [`Self::open`], telling `progress` how many entries sealing has covered, if it seals any.
    pub async fn open_with_progress(
        data: &Path,
        options: SessionOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<AuditSession, QueryError> {
        Self::open_inner(data, options, progress, None).await
    }

    /// As [`Self::open`], decoding only the tail entries `cache` does not hold yet (a reader that
    /// opens a session again and again, as `serve`'s detector does, decodes each entry once).
    pub async fn open_cached(
        data: &Path,
        options: SessionOptions,
        cache: &mut SessionCache,
    ) -> Result<AuditSession, QueryError> {
        Self::open_inner(data, options, &|_| {}, Some(cache)).await
    }

    async fn open_inner(
        data: &Path,
        options: SessionOptions,
        progress: &(dyn Fn(u64) + Sync),
        mut cache: Option<&mut SessionCache>,
    ) -> Result<AuditSession, QueryError> {
        let store = match cache.as_deref_mut() {
            Some(c) => c.store(data)?,
            None => Arc::new(Store::open_reader(&data.join("db"))?),
        };
        let dir = segment::columnar_dir(data);
        let ledger_key = seal::ledger_key(&store, options.sealer.as_ref())?;
        let mut seal_skipped = None;
        let mut no_key = false;
        match (&options.sealer, options.seal) {
            (_, false) => {}
            (None, true) => no_key = true,
            (Some(key), true) => {
                match segment::seal(&store, &dir, options.segment_entries, key, progress) {
                    Ok(_) => {}
                    Err(e @ QueryError::SegmentMismatch { .. }) => return Err(e),
                    // Sealing only saves decoding: a read-only or full disk must not stop a question.
                    Err(e) => seal_skipped = Some(e.to_string()),
                }
            }
        }
        // The head first: segments a running `serve` seals after this snapshot are left to the tail.
        let (head, _) = store.head()?;
        // A seq past the head is refused now, not when a state table is first named.
        options.as_of.until().within(head)?;
        let segments = segment::usable(&segment::list(&dir)?, head);
        if let Some(p) = segment::check_stamps(&store, &segments).into_iter().next() {
            return Err(QueryError::SegmentMismatch {
                path: p.path,
                why: p.why,
            });
        }
        let run = segment::sealed_run(&segments, &ledger_key).map_err(|p| {
            QueryError::SegmentMismatch {
                path: p.path,
                why: p.why,
            }
        })?;
        let sealed_through = run.segments.last().map_or(0, |(s, _)| s.last_seq);
        let schema = query_schema(&EVENTS_SCHEMA);
        let tail = match cache.as_deref_mut() {
            None => segment::tail(&store, sealed_through + 1)?
                .iter()
                .map(|b| cast_batch(b, &schema))
                .collect::<Result<Vec<_>, _>>()?,
            Some(c) => c.extend(&store, sealed_through + 1, &schema)?,
        };
        let partitions = match options.partitions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let ctx = bounded_context(partitions, options.memory_limit_bytes)?;
        let tail_rows = tail.iter().map(|b| b.num_rows() as u64).sum();
        if no_key && tail_rows >= options.segment_entries {
            seal_skipped = Some("no ledger key to seal with".to_string());
        }
        // As many partitions as threads, so the tail, too, is scanned on every core;
        // each partition is a run of consecutive seqs, hence the declared order.
        let half = tail.len().div_ceil(partitions).max(1);
        let parts: Vec<Vec<RecordBatch>> = tail.chunks(half).map(<[_]>::to_vec).collect();
        let parts = if parts.is_empty() {
            vec![vec![]]
        } else {
            parts
        };
        let tail_table = MemTable::try_new(schema.clone(), parts)?
            .with_sort_order(vec![vec![col("seq").sort(true, false)]]);
        ctx.register_table("tail_events", Arc::new(tail_table))?;
        let (sealed, files) = sealed_table(&run.segments, &schema)?;
        ctx.register_object_store(seal::store_url().as_ref(), Arc::new(files));
        ctx.register_table("sealed_events", sealed)?;
        ctx.sql(
            "CREATE VIEW events AS SELECT * FROM sealed_events UNION ALL SELECT * FROM tail_events",
        )
        .await?;
        for (name, sql) in VIEWS {
            ctx.sql(&format!("CREATE VIEW {name} AS {sql}")).await?;
        }
        let firsts = match cache {
            None => None,
            Some(c) => {
                c.firsts.advance(&ctx, head).await?;
                Some(c.firsts.clone())
            }
        };
        Ok(AuditSession {
            firsts,
            ctx,
            store,
            options,
            loaded: BTreeSet::new(),
            notes: Vec::new(),
            coverage: Coverage {
                segments: run.segments.len(),
                unsealed_from: run.unsealed_from,
                sealed_through,
                tail_rows,
                head,
                seal_skipped,
            },
        })
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// Notes about the answers given since the last call, for a person (standard error).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Every table and view a query may name.
    pub fn table_names() -> Vec<&'static str> {
        let mut names = vec!["events"];
        names.extend(VIEWS.iter().map(|(n, _)| *n));
        names.extend(SMALL_TABLES);
        names
    }

    /// Plans one read-only statement; refuses anything that would change something.
    pub async fn plan(&mut self, sql: &str) -> Result<DataFrame, QueryError> {
        let statement = read_only_statement(&self.ctx, sql)?;
        let state = self.ctx.state();
        let names: Vec<String> = state
            .resolve_table_references(&statement)?
            .iter()
            .map(|r| r.table().to_string())
            .collect();
        self.load_small_tables(&names).await?;
        plan_read_only(&self.ctx, statement).await
    }

    /// Runs one statement and collects its rows, within the time limit.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let timeout = self.options.timeout;
        let df = self.plan(sql).await?;
        tokio::time::timeout(timeout, df.collect())
            .await
            .map_err(|_| QueryError::Timeout(timeout))?
            .map_err(QueryError::from)
    }

    /// Runs one statement and keeps at most `max_rows` rows of its answer, within the time
    /// limit: the rest is never collected (the stream is dropped, which stops the query), so a
    /// question with a huge answer costs what the kept rows cost. Returns whether rows were left.
    pub async fn query_limited(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<(Vec<RecordBatch>, bool), QueryError> {
        use futures::StreamExt;
        let timeout = self.options.timeout;
        let mut stream = self.stream(sql).await?;
        let drain = async {
            let mut kept = Vec::new();
            let mut rows = 0usize;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let room = max_rows - rows;
                if batch.num_rows() > room {
                    kept.push(batch.slice(0, room));
                    return Ok((kept, true));
                }
                rows += batch.num_rows();
                kept.push(batch);
                if rows == max_rows {
                    // Whether more would come is only known by asking for it.
                    let more = match stream.next().await {
                        Some(b) => b?.num_rows() > 0,
                        None => false,
                    };
                    return Ok((kept, more));
                }
            }
            Ok((kept, false))
        };
        tokio::time::timeout(timeout, drain)
            .await
            .map_err(|_| QueryError::Timeout(timeout))?
    }

    /// Runs one statement as a stream; the caller applies [`Self::timeout`] to draining it.
    pub async fn stream(&mut self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        let df = self.plan(sql).await?;
        Ok(df.execute_stream().await?)
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The memory limit of a query's operators, in bytes.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.options.memory_limit_bytes as u64
    }

    async fn load_small_tables(&mut self, names: &[String]) -> Result<(), QueryError> {
        let wanted: Vec<&'static str> = SMALL_TABLES
            .iter()
            .copied()
            .filter(|t| names.iter().any(|n| n == t) && !self.loaded.contains(t))
            .collect();
        let mut built: Vec<(&'static str, RecordBatch)> = Vec::new();
        if wanted
            .iter()
            .any(|t| t.ends_with("_state") || *t == "agents")
        {
            let point = tables::state_at(&self.store, self.options.as_of)?;
            self.notes.extend(point.note());
            built.extend(tables::state_tables(&point.state, point.at)?);
        }
        for t in &wanted {
            match *t {
                "findings" => {
                    let head = self.coverage.head;
                    let detections = detect::recorded(self, head).await?;
                    let triage = detect::TriageLog::read(self, head).await?;
                    built.push((t, tables::findings(&self.store, &detections, &triage)?));
                }
                "rejections" => built.push((t, tables::rejections(&self.store)?)),
                "checkpoints" => built.push((t, tables::checkpoints(&self.store)?)),
                "agent_first" => {
                    let firsts = match &self.firsts {
                        Some(f) => f.clone(),
                        None => {
                            let mut f = AgentFirsts::default();
                            f.advance(&self.ctx, self.coverage.head).await?;
                            f
                        }
                    };
                    built.push((t, firsts.table()?));
                }
                _ => {}
            }
        }
        for (name, batch) in built {
            if self.loaded.insert(name) {
                let schema = query_schema(&batch.schema());
                let batch = cast_batch(&batch, &schema)?;
                self.ctx.register_table(
                    name,
                    Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
                )?;
            }
        }
        Ok(())
    }
}

/// The sealed segments as one Parquet table, its file list pinned, declared sorted by seq, with
/// the store that checks every byte read from them against their seals.
fn sealed_table(
    segments: &[(Segment, Arc<CheckedSeal>)],
    schema: &SchemaRef,
) -> Result<(Arc<dyn datafusion::catalog::TableProvider>, SealedFiles), QueryError> {
    let mut urls = Vec::with_capacity(segments.len());
    let mut files = HashMap::with_capacity(segments.len());
    for (s, seal) in segments {
        let url = file_url(&s.path)?;
        files.insert(url.prefix().clone(), (s.path.clone(), Arc::clone(seal)));
        urls.push(url);
    }
    let files = SealedFiles::new(files);
    if segments.is_empty() {
        return Ok((
            Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?),
            files,
        ));
    }
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_file_sort_order(vec![vec![col("seq").sort(true, false)]]);
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema.clone());
    Ok((Arc::new(ListingTable::try_new(config)?), files))
}

fn file_url(path: &Path) -> Result<ListingTableUrl, QueryError> {
    let abs: PathBuf = std::path::absolute(path).map_err(|e| QueryError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    // Not `parse`: it would read `*`, `?` or `[` in a directory name as a glob.
    let url = url::Url::from_file_path(&abs).map_err(|()| QueryError::BadSegment {
        path: abs.clone(),
        why: "not an absolute path".into(),
    })?;
    Ok(ListingTableUrl::try_new(url, None)?)
}

/// Refuses every statement that is not a question.
/// A DataFusion context with Docket's settings: bounded memory, no spilling to disk.
pub(crate) fn bounded_context(
    partitions: usize,
    memory_limit_bytes: usize,
) -> Result<SessionContext, QueryError> {
    // DATAFUSION_* environment variables tune the engine; the settings below always win.
    let config = SessionConfig::from_env()?
        .with_target_partitions(partitions)
        .with_information_schema(true)
        // Row-level filter pushdown was measured slower on the 10M benchmark (every query, 10-30%):
        // statistics pruning does the selective work, vectorised filters the rest.
        .set_bool("datafusion.execution.parquet.pushdown_filters", false);
    // No spilling: a query must not write outside the ledger; past the limit it fails and says so.
    let runtime = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .with_memory_limit(memory_limit_bytes, 1.0)
        .build_arc()?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Plans a statement `refuse_writes` passed, refusing any plan that defines or changes
/// anything: every SQL Docket runs (the auditor's, a rule's, a bundle's) comes through here.
pub(crate) async fn plan_read_only(
    ctx: &SessionContext,
    statement: Statement,
) -> Result<DataFrame, QueryError> {
    let plan = ctx.state().statement_to_plan(statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// Parses one statement and refuses writes; the caller plans it with `plan_read_only`.
pub(crate) fn read_only_statement(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Statement, QueryError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect)?;
    refuse_writes(&statement)?;
    Ok(statement)
}

fn refuse_writes(statement: &Statement) -> Result<(), QueryError> {
    let what = match statement {
        Statement::Statement(s) => match s.as_ref() {
            Ast::Explain { statement, .. } => {
                return refuse_writes(&Statement::Statement(statement.clone()));
            }
            Ast::Query(_)
            | Ast::ExplainTable { .. }
            | Ast::ShowTables { .. }
            | Ast::ShowColumns { .. } => return Ok(()),
            other => {
                let text = other.to_string();
                let words: Vec<&str> = text.split_whitespace().take(2).collect();
                words.join(" ").to_uppercase()
            }
        },
        Statement::Explain(e) => return refuse_writes(&e.statement),
        Statement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".into(),
        Statement::CopyTo(_) => "COPY ... TO".into(),
        Statement::Reset(_) => "RESET".into(),
    };
    Err(QueryError::ReadOnly(what))
}
