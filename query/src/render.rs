//! Query results written out: an aligned table for people, CSV, JSON lines or Parquet for programs.
//!
//! A file is written whole or not at all ([`write_file`]): beside its destination, then renamed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::QueryError;

/// Rows an aligned table shows; the rest are counted, and the machine formats carry them all.
pub const TABLE_ROWS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    /// One JSON object per line.
    Json,
    Parquet,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "table" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// The same columns with every top-level `from` string type changed to `to`.
pub fn retype_strings(schema: &Schema, from: &DataType, to: &DataType) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t == from => f.as_ref().clone().with_data_type(to.clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The same columns with plain strings instead of string views, for readers that predate views.
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    retype_strings(schema, &DataType::Utf8View, &DataType::Utf8)
}

/// `batch` with each column cast to the type `schema` gives it.
pub fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, QueryError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Whether an error only means the reader went away (`| head`): not worth a message.
pub fn is_closed_pipe(e: &QueryError) -> bool {
    match e {
        QueryError::Io { source, .. } => source.kind() == std::io::ErrorKind::BrokenPipe,
        QueryError::Arrow(datafusion::arrow::error::ArrowError::IoError(_, source)) => {
            source.kind() == std::io::ErrorKind::BrokenPipe
        }
        _ => false,
    }
}

/// The columns a CSV file gets: nested types (lists such as `scopes`, structs, maps) become text.
fn csv_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_nested() => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `batch` for CSV: each nested value as its JSON text (`["repo:read","repo:write"]`), NULL as an
/// empty cell. JSON, because a CSV cell holds one value and every CSV reader's user can parse it.
fn csv_batch(batch: &RecordBatch, csv: &SchemaRef) -> Result<RecordBatch, QueryError> {
    let columns = batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .map(|(c, f)| {
            if f.data_type().is_nested() {
                json_text(f, c)
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(csv.clone(), columns)?)
}

/// Each value of `array` as compact JSON text.
fn json_text(field: &FieldRef, array: &ArrayRef) -> Result<ArrayRef, QueryError> {
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(field, array.as_ref(), &options)?;
    let mut out = StringBuilder::with_capacity(array.len(), array.len() * 32);
    let mut buf = Vec::new();
    for i in 0..array.len() {
        if encoder.is_null(i) {
            out.append_null();
            continue;
        }
        buf.clear();
        encoder.encode(i, &mut buf);
        let text = std::str::from_utf8(&buf).map_err(|e| {
            QueryError::Arrow(datafusion::arrow::error::ArrowError::JsonError(format!(
                "column {}: {e}",
                field.name()
            )))
        })?;
        out.append_value(text);
    }
    Ok(Arc::new(out.finish()))
}

/// A file being written beside its destination; removed unless [`Aside::persist`] renamed it over it.
struct Aside {
    tmp: PathBuf,
    done: bool,
}

impl Aside {
    fn create(path: &Path) -> Result<(Aside, std::fs::File), QueryError> {
        let name = path.file_name().ok_or_else(|| QueryError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        // In the same directory, so the rename is atomic; hidden, and named by the process.
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = std::fs::File::create(&tmp).map_err(|source| QueryError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok((Aside { tmp, done: false }, file))
    }

    fn persist(mut self, path: &Path) -> Result<(), QueryError> {
        let io = |p: &Path, source| QueryError::Io {
            path: p.to_path_buf(),
            source,
        };
        std::fs::File::open(&self.tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, path).map_err(|e| io(path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the error that brought us here is the one to report.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Drains `stream` into the file `path` in `format`, whole or not at all: it is written beside
/// `path` and renamed over it only once complete, so a failed (or cancelled) query leaves
/// neither a partial file nor a changed one.
pub async fn write_file(
    stream: SendableRecordBatchStream,
    format: Format,
    path: &Path,
) -> Result<u64, QueryError> {
    let (aside, file) = Aside::create(path)?;
    let rows = write(stream, format, std::io::BufWriter::new(file)).await?;
    aside.persist(path)?;
    Ok(rows)
}

fn out_err(source: std::io::Error) -> QueryError {
    QueryError::Io {
        path: "<output>".into(),
        source,
    }
}

/// Drains `stream` into `out` in `format`; returns the number of rows.
pub async fn write<W: Write + Send>(
    mut stream: SendableRecordBatchStream,
    format: Format,
    out: W,
) -> Result<u64, QueryError> {
    let schema = plain_schema(&stream.schema());
    let mut rows = 0u64;
    match format {
        Format::Table => {
            let mut out = out;
            let mut shown: Vec<RecordBatch> = Vec::new();
            let mut kept = 0usize;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                if kept < TABLE_ROWS_MAX {
                    let take = batch.num_rows().min(TABLE_ROWS_MAX - kept);
                    kept += take;
                    shown.push(batch.slice(0, take));
                }
            }
            if shown.is_empty() {
                shown.push(RecordBatch::new_empty(stream.schema()));
            }
            writeln!(out, "{}", pretty_format_batches(&shown)?).map_err(out_err)?;
            if rows as usize > kept {
                writeln!(
                    out,
                    "{rows} rows; the first {kept} are shown (--format csv, json or parquet writes them all)"
                )
                .map_err(out_err)?;
            } else {
                writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).map_err(out_err)?;
            }
            out.flush().map_err(out_err)?;
        }
        Format::Csv => {
            let csv = csv_schema(&schema);
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            while let Some(batch) = stream.next().await {
                let batch = csv_batch(&cast_batch(&batch?, &schema)?, &csv)?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            if rows == 0 {
                w.write(&RecordBatch::new_empty(csv))?;
            }
            w.into_inner().flush().map_err(out_err)?;
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(out);
            while let Some(batch) = stream.next().await {
                let batch = cast_batch(&batch?, &schema)?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
            w.into_inner().flush().map_err(out_err)?;
        }
        Format::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
            while let Some(batch) = stream.next().await {
                let batch = cast_batch(&batch?, &schema)?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.into_inner()?.flush().map_err(out_err)?;
        }
    }
    Ok(rows)
}

/// The column names and every cell as text (NULL as empty), one row per row: what a remote
/// client (`docket.read`) and the terminal UI show.
pub fn text_cells(batches: &[RecordBatch]) -> Result<(Vec<String>, Vec<Vec<String>>), QueryError> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let columns = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    Ok((columns, rows))
}
