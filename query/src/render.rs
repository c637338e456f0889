//! Query results written out: an aligned table for people, CSV, JSON lines or Parquet for programs.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
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
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            while let Some(batch) = stream.next().await {
                let batch = cast_batch(&batch?, &schema)?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            if rows == 0 {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
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
