//! The columnar copy of the chain: sealed Parquet segments of a bounded number of entries.
//!
//! A segment is derived from the chain and only from it: the next segment
//! holds the `N` entries after the last sealed one, so two writers (a running
//! `serve` and a `docket sql`) with the same `N` that seal the same segment
//! write the same rows, and the atomic rename lets either win. Each file is
//! stamped with its seq range and the entry hash at its end, and sealed by
//! the ledger key (`seal.rs`); opening checks the stamps against the chain and
//! the seals' signatures, reading checks the bytes, `check` re-derives every row.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use docket_ledger::chain::hex;
use docket_ledger::store::{Store, decode_record};
use ed25519_dalek::{SigningKey, VerifyingKey};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::QueryError;
use crate::rows::{EVENTS_SCHEMA, EventRows};
use crate::seal::{CheckedSeal, SegmentSeal, seal_path};

/// Entries per sealed segment by default: the unit of pruning, and the most the unsealed tail holds once sealing keeps up.
pub const SEGMENT_ENTRIES: u64 = 65_536;
/// Fewest entries a segment may be given (small segments only make sense in tests).
pub const SEGMENT_ENTRIES_MIN: u64 = 16;
/// Most rows per Parquet row group: a whole default segment. Smaller groups (16,384) were
/// measured 15-20% slower on full scans; pages and their index still prune inside a group.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Rows per in-memory batch of the unsealed tail.
pub const TAIL_BATCH_ROWS: usize = 8_192;
/// Segments being built at once: each holds its raw records and its columns in memory.
pub const SEAL_WORKERS_MAX: usize = 4;
/// The columnar copy's directory inside a data directory.
pub const COLUMNAR_DIR: &str = "columnar";
/// Version of the segment layout written in each file's metadata.
pub const SEGMENT_FORMAT: &str = "1";

const KEY_FORMAT: &str = "docket.segment.format";
const KEY_FIRST: &str = "docket.segment.first_seq";
const KEY_LAST: &str = "docket.segment.last_seq";
const KEY_LAST_HASH: &str = "docket.segment.last_entry_hash";

/// A sealed segment on disk, as its stamp describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_entry_hash: String,
    pub rows: u64,
}

/// What sealing did.
#[derive(Clone, Debug, Default)]
pub struct SealReport {
    pub sealed: usize,
    pub entries: u64,
    /// Seq of the last entry in a sealed segment after sealing.
    pub sealed_through: u64,
}

/// One disagreement between the columnar copy and the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentProblem {
    pub path: PathBuf,
    pub first_seq: u64,
    pub why: String,
}

pub fn columnar_dir(data: &Path) -> PathBuf {
    data.join(COLUMNAR_DIR)
}

fn file_name(first: u64, last: u64) -> String {
    format!("events-{first:020}-{last:020}.parquet")
}

fn io(path: &Path, source: std::io::Error) -> QueryError {
    QueryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The segments in `dir`, ordered by first seq. Files that are not segments are ignored; a damaged one is an error.
pub fn list(dir: &Path) -> Result<Vec<Segment>, QueryError> {
    let mut out = segment_files(dir)?
        .iter()
        .map(|p| read_stamp(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Where two files start at one seq (a stale one, or one put there), the one with a seal
    // comes first, so that an unsealed file cannot push a sealed segment out of the run.
    out.sort_by_cached_key(|s| {
        (
            s.first_seq,
            !crate::seal::seal_path(&s.path).is_file(),
            s.last_seq,
        )
    });
    Ok(out)
}

/// Segment files by name alone (a damaged footer must not stop their removal); none if `dir` is absent.
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, QueryError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    };
    let mut out = Vec::new();
    for item in read {
        let path = item.map_err(|e| io(dir, e))?.path();
        // Only names sealing writes, and only regular files: a FIFO or a device would block or never end.
        let is_segment = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_segment_name)
            && std::fs::metadata(&path).is_ok_and(|m| m.is_file());
        if is_segment {
            out.push(path);
        }
    }
    Ok(out)
}

/// `events-<20 digits>-<20 digits>.parquet`, exactly.
fn is_segment_name(name: &str) -> bool {
    let Some(seqs) = name
        .strip_prefix("events-")
        .and_then(|n| n.strip_suffix(".parquet"))
    else {
        return false;
    };
    seqs.len() == 41
        && seqs.bytes().enumerate().all(|(i, b)| {
            if i == 20 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Reads a segment's stamp from its Parquet footer.
pub fn read_stamp(path: &Path) -> Result<Segment, QueryError> {
    let bad = |why: String| QueryError::BadSegment {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(|e| io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(e.to_string()))?;
    let meta = reader.metadata().file_metadata();
    let kv = meta.key_value_metadata().cloned().unwrap_or_default();
    let get = |key: &str| {
        kv.iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.clone())
            .ok_or_else(|| bad(format!("no `{key}` in its metadata")))
    };
    let format = get(KEY_FORMAT)?;
    if format != SEGMENT_FORMAT {
        return Err(bad(format!(
            "segment format {format:?} is not {SEGMENT_FORMAT:?}"
        )));
    }
    let num = |key: &str| -> Result<u64, QueryError> {
        get(key)?
            .parse()
            .map_err(|_| bad(format!("`{key}` is not a number")))
    };
    Ok(Segment {
        path: path.to_path_buf(),
        first_seq: num(KEY_FIRST)?,
        last_seq: num(KEY_LAST)?,
        last_entry_hash: get(KEY_LAST_HASH)?,
        rows: u64::try_from(meta.num_rows()).unwrap_or(0),
    })
}

/// The segments a reader may use: the contiguous run from seq 1 that ends at or before `head`.
///
/// A segment after a gap (a crash between two renames, a file removed by hand)
/// is left out until the gap is sealed again; one past `head` was sealed after
/// this reader's snapshot of the chain. Files overlapping the run are stale.
pub fn usable(segments: &[Segment], head: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut next = 1u64;
    for s in segments {
        if s.first_seq < next {
            continue;
        }
        if s.first_seq > next || s.last_seq > head {
            break;
        }
        out.push(s.clone());
        next = s.last_seq.saturating_add(1);
    }
    out
}

/// Checks each segment's stamp against the chain: contiguous from seq 1, whole, ending on the chain's own hash.
///
/// Cheap (one read per segment), so every session does it; [`check`] re-derives the rows.
pub fn check_stamps(store: &Store, segments: &[Segment]) -> Vec<SegmentProblem> {
    let mut problems = Vec::new();
    let mut next = 1u64;
    for s in segments {
        let mut why = Vec::new();
        if s.first_seq != next {
            why.push(format!(
                "starts at seq {} where seq {next} was expected",
                s.first_seq
            ));
        }
        let expected_rows = s
            .last_seq
            .checked_sub(s.first_seq)
            .and_then(|d| d.checked_add(1));
        if expected_rows != Some(s.rows) {
            why.push(format!(
                "holds {} rows for seqs {}..={}",
                s.rows, s.first_seq, s.last_seq
            ));
        }
        match store.record(s.last_seq) {
            Ok(Some(record)) => match decode_record(s.last_seq, &record) {
                Ok(entry) if hex(&entry.hash) == s.last_entry_hash => {}
                Ok(entry) => why.push(format!(
                    "ends on entry hash {} but the chain's entry {} is {}",
                    s.last_entry_hash,
                    s.last_seq,
                    hex(&entry.hash)
                )),
                Err(e) => why.push(format!(
                    "the chain's entry {} is unreadable: {e}",
                    s.last_seq
                )),
            },
            Ok(None) => why.push(format!(
                "ends at seq {} beyond the chain's head",
                s.last_seq
            )),
            Err(e) => why.push(format!("reading the chain: {e}")),
        }
        if !why.is_empty() {
            problems.push(SegmentProblem {
                path: s.path.clone(),
                first_seq: s.first_seq,
                why: why.join("; "),
            });
        }
        next = s.last_seq.saturating_add(1);
    }
    problems
}

/// The run of segments a reader may trust: each with a seal the ledger key signed, up to the first without one.
pub struct SealedRun {
    pub segments: Vec<(Segment, Arc<CheckedSeal>)>,
    /// First seq of the first segment that has no seal (its entries are decoded from the chain).
    pub unsealed_from: Option<u64>,
}

/// Checks the seals of `segments` (already checked against the chain) with the ledger key.
///
/// A missing seal ends the run (a crash between the two renames, or a copy
/// from before seals); a seal that does not verify, or a file whose size
/// differs from it, is a problem: someone changed the columnar copy.
pub fn sealed_run(segments: &[Segment], key: &VerifyingKey) -> Result<SealedRun, SegmentProblem> {
    let mut run = SealedRun {
        segments: Vec::with_capacity(segments.len()),
        unsealed_from: None,
    };
    for s in segments {
        let problem = |why: String| SegmentProblem {
            path: s.path.clone(),
            first_seq: s.first_seq,
            why,
        };
        let seal = match SegmentSeal::read(&s.path).map_err(problem)? {
            Some(seal) => seal,
            None => {
                run.unsealed_from = Some(s.first_seq);
                break;
            }
        };
        let checked = seal
            .check(s.first_seq, s.last_seq, &s.last_entry_hash, key)
            .map_err(problem)?;
        let len = std::fs::metadata(&s.path)
            .map_err(|e| problem(e.to_string()))?
            .len();
        if len != seal.file_bytes {
            return Err(problem(format!(
                "it is {len} bytes but was sealed at {}: changed after the ledger sealed it",
                seal.file_bytes
            )));
        }
        run.segments.push((s.clone(), Arc::new(checked)));
    }
    Ok(run)
}

/// Re-derives every segment's rows from the chain and compares them with the file: catches any edited row.
///
/// Also compares each file's bytes with a fresh encoding of those rows, so
/// edited statistics or metadata (which steer pruning) are caught too, and
/// reports files left unused after a gap.
pub fn check(store: &Store, dir: &Path) -> Result<Vec<SegmentProblem>, QueryError> {
    let (head, _) = store.head()?;
    let all = list(dir)?;
    let segments = usable(&all, head);
    let key = crate::seal::ledger_key(store, None)?;
    let mut problems = check_stamps(store, &segments);
    let next = segments.last().map_or(1, |s| s.last_seq + 1);
    if let Some(after) = all
        .iter()
        .find(|s| s.first_seq > next && s.last_seq <= head)
    {
        problems.push(SegmentProblem {
            path: after.path.clone(),
            first_seq: after.first_seq,
            why: format!(
                "no segment starts at seq {next}, so this and later segments are unused until sealing fills the gap"
            ),
        });
    }
    for s in &segments {
        if problems.iter().any(|p| p.path == s.path) {
            continue;
        }
        let expected = derive(store, s.first_seq, s.last_seq)?;
        let why = match read_segment(&s.path) {
            Err(QueryError::BadSegment { why, .. }) => Some(why),
            Err(e) => return Err(e),
            Ok(found) => first_difference(&expected, &found).or_else(|| {
                let fresh = encode(&expected, s.first_seq, s.last_seq, &s.last_entry_hash).ok()?;
                let bytes = std::fs::read(&s.path).ok()?;
                (fresh != bytes).then(|| {
                    "its rows match the chain but its bytes differ from a fresh encoding of them \
                     (statistics or metadata edited, or written by another version of docket)"
                        .to_string()
                })
            }),
        }
        // Rows and bytes equal to the chain's: what is left to be wrong is the seal itself.
        .or_else(|| seal_problem(s, &key));
        if let Some(why) = why {
            problems.push(SegmentProblem {
                path: s.path.clone(),
                first_seq: s.first_seq,
                why,
            });
        }
    }
    problems.sort_by_key(|p| p.first_seq);
    Ok(problems)
}

/// What is wrong with a segment's seal, read whole: missing, not the ledger key's, or not these bytes.
fn seal_problem(s: &Segment, key: &VerifyingKey) -> Option<String> {
    let seal = match SegmentSeal::read(&s.path) {
        Err(why) => return Some(why),
        Ok(None) => {
            return Some(
                "it has no seal, so SQL decodes its entries from the chain instead \
                 (`docket columnar seal` seals it with the ledger key)"
                    .into(),
            );
        }
        Ok(Some(seal)) => seal,
    };
    seal.check(s.first_seq, s.last_seq, &s.last_entry_hash, key)
        .and_then(|checked| checked.check_file(&s.path))
        .err()
}

fn first_difference(expected: &RecordBatch, found: &RecordBatch) -> Option<String> {
    if expected.num_rows() != found.num_rows() {
        return Some(format!(
            "holds {} rows, the chain has {}",
            found.num_rows(),
            expected.num_rows()
        ));
    }
    if found.schema().fields() != expected.schema().fields() {
        return Some("its columns are not the events columns".into());
    }
    for (i, field) in expected.schema().fields().iter().enumerate() {
        let (e, f) = (expected.column(i), found.column(i));
        if e == f {
            continue;
        }
        let row = (0..e.len())
            .find(|&r| e.slice(r, 1) != f.slice(r, 1))
            .unwrap_or(0);
        return Some(format!(
            "column `{}` differs from the chain at row {row}",
            field.name()
        ));
    }
    None
}

/// Reads a whole segment back as one batch.
pub fn read_segment(path: &Path) -> Result<RecordBatch, QueryError> {
    let bad = |why: String| QueryError::BadSegment {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(|e| io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    // By name and type, as DataFusion reads them: swapped column names must not pass.
    let found: Vec<(&String, &datafusion::arrow::datatypes::DataType)> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name(), f.data_type()))
        .collect();
    let expected: Vec<(&String, &datafusion::arrow::datatypes::DataType)> = EVENTS_SCHEMA
        .fields()
        .iter()
        .map(|f| (f.name(), f.data_type()))
        .collect();
    if found != expected {
        return Err(bad("its columns are not the events columns".into()));
    }
    let reader = builder.build().map_err(|e| bad(e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    concat_batches(&EVENTS_SCHEMA, &batches).map_err(|e| bad(e.to_string()))
}

/// Decodes entries `first..=last` from the chain into one batch.
pub fn derive(store: &Store, first: u64, last: u64) -> Result<RecordBatch, QueryError> {
    let mut rows = EventRows::with_capacity((last.saturating_sub(first) + 1) as usize);
    for item in store.records(first)? {
        let (seq, record) = item?;
        if seq > last {
            break;
        }
        rows.push(&decode_record(seq, &record)?)?;
    }
    rows.finish()
}

/// Decodes entries from `first` to the head into batches of [`TAIL_BATCH_ROWS`]: the unsealed tail.
pub fn tail(store: &Store, first: u64) -> Result<Vec<RecordBatch>, QueryError> {
    let mut batches = Vec::new();
    let mut rows = EventRows::with_capacity(TAIL_BATCH_ROWS);
    for item in store.records(first)? {
        let (seq, record) = item?;
        rows.push(&decode_record(seq, &record)?)?;
        if rows.len() >= TAIL_BATCH_ROWS {
            batches.push(rows.finish()?);
        }
    }
    if !rows.is_empty() {
        batches.push(rows.finish()?);
    }
    Ok(batches)
}

/// Seals every whole segment the chain has and the directory lacks, on all cores.
///
/// Starts after the last segment whose stamp agrees with the chain; segments
/// that disagree must be removed first (see [`rebuild`]).
pub fn seal(
    store: &Store,
    dir: &Path,
    segment_entries: u64,
    key: &SigningKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SealReport, QueryError> {
    let n = segment_entries.max(SEGMENT_ENTRIES_MIN);
    let verifying = crate::seal::ledger_key(store, Some(key))?;
    let (head, _) = store.head()?;
    let segments = usable(&list(dir)?, head);
    if let Some(p) = check_stamps(store, &segments).first() {
        return Err(QueryError::SegmentMismatch {
            path: p.path.clone(),
            why: p.why.clone(),
        });
    }
    // Segments after the first unsealed one are written again, seals and all.
    let run = sealed_run(&segments, &verifying).map_err(|p| QueryError::SegmentMismatch {
        path: p.path,
        why: p.why,
    })?;
    let sealed_through = run.segments.last().map_or(0, |(s, _)| s.last_seq);
    let whole = sealed_through + (head.saturating_sub(sealed_through)) / n * n;
    let mut report = SealReport {
        sealed_through,
        ..SealReport::default()
    };
    if whole <= sealed_through {
        return Ok(report);
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SEAL_WORKERS_MAX);
    // Reading is sequential; decoding and encoding are spread over the workers.
    let (tx, rx) = mpsc::sync_channel::<Vec<(u64, Vec<u8>)>>(workers);
    let rx = Arc::new(Mutex::new(rx));
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<usize, QueryError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = Arc::clone(&rx);
                let done = &done;
                scope.spawn(move || -> Result<usize, QueryError> {
                    let mut n = 0;
                    loop {
                        let chunk = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return Ok(n),
                        };
                        let Ok(chunk) = chunk else { return Ok(n) };
                        write_segment(dir, &chunk, key)?;
                        n += 1;
                        let total = done
                            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed)
                            + chunk.len() as u64;
                        progress(total);
                    }
                })
            })
            .collect();
        // Only the workers hold the receiver now: if they all stop, sending fails instead of blocking.
        drop(rx);
        let read = (|| -> Result<(), QueryError> {
            let mut chunk = Vec::with_capacity(n as usize);
            for item in store.records(sealed_through + 1)? {
                let (seq, record) = item?;
                if seq > whole {
                    break;
                }
                chunk.push((seq, record));
                if chunk.len() as u64 == n {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(n as usize));
                    if tx.send(full).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let mut out: Vec<Result<usize, QueryError>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(QueryError::WorkerPanicked)))
            .collect();
        out.push(read.map(|_| 0));
        out
    });
    for r in results {
        report.sealed += r?;
    }
    report.entries = report.sealed as u64 * n;
    report.sealed_through = sealed_through + report.entries;
    sync_dir(dir)?;
    Ok(report)
}

/// Writes one segment and then its seal, each to a temporary name, synced, then renamed into place.
///
/// The seal goes last: a crash between the two leaves a segment without a
/// seal, which readers skip and the next sealing writes again.
fn write_segment(
    dir: &Path,
    records: &[(u64, Vec<u8>)],
    key: &SigningKey,
) -> Result<(), QueryError> {
    let mut rows = EventRows::with_capacity(records.len());
    for (seq, record) in records {
        rows.push(&decode_record(*seq, record)?)?;
    }
    let (first, (last, hash)) = match (records.first(), rows.last()) {
        (Some((first, _)), Some(last)) => (*first, last),
        _ => return Ok(()),
    };
    let batch = rows.finish()?;
    let last_hash = hex(&hash);
    let bytes = encode(&batch, first, last, &last_hash)?;
    let path = dir.join(file_name(first, last));
    let seal = SegmentSeal::make(&bytes, first, last, &last_hash, key);
    let seal_bytes = serde_json::to_vec_pretty(&seal).map_err(|e| QueryError::BadSegment {
        path: seal_path(&path),
        why: e.to_string(),
    })?;
    write_atomically(&path, &bytes)?;
    write_atomically(&seal_path(&path), &seal_bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), QueryError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// A segment's exact bytes: the same rows and stamp always encode the same way.
fn encode(
    batch: &RecordBatch,
    first: u64,
    last: u64,
    last_hash: &str,
) -> Result<Vec<u8>, QueryError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(KEY_FORMAT.into(), SEGMENT_FORMAT.to_string()),
            KeyValue::new(KEY_FIRST.into(), first.to_string()),
            KeyValue::new(KEY_LAST.into(), last.to_string()),
            KeyValue::new(KEY_LAST_HASH.into(), last_hash.to_string()),
        ]))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), EVENTS_SCHEMA.clone(), Some(props))?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

fn sync_dir(dir: &Path) -> Result<(), QueryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Removes every segment and seals again from the chain.
pub fn rebuild(
    store: &Store,
    dir: &Path,
    segment_entries: u64,
    key: &SigningKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SealReport, QueryError> {
    // Refuse a wrong key before anything is removed.
    crate::seal::ledger_key(store, Some(key))?;
    remove_segments(dir)?;
    seal(store, dir, segment_entries, key, progress)
}

fn remove_segments(dir: &Path) -> Result<usize, QueryError> {
    let files = segment_files(dir)?;
    for path in &files {
        std::fs::remove_file(path).map_err(|e| io(path, e))?;
        match std::fs::remove_file(seal_path(path)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&seal_path(path), e)),
        }
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_sealing_writes_are_segments() {
        assert!(is_segment_name(&file_name(1, 65_536)));
        for name in [
            "events-1-2.parquet",
            "events-00000000000000000001-0000000000000000000a.parquet",
            "events-00000000000000000001-00000000000000065536.parquet.tmp",
            "events-new\nline.parquet",
            "x-00000000000000000001-00000000000000065536.parquet",
        ] {
            assert!(!is_segment_name(name), "{name:?}");
        }
    }
}
