//! Docket's SQL: a columnar copy of the ledger, DataFusion tables over it, Parquet export.
//!
//! RocksDB stays the system of record. This crate keeps a derived, checkable
//! copy of the chain as sealed Parquet segments (`segment`), turns entries into
//! rows (`rows`) and derived state into tables (`tables`), and runs auditors'
//! read-only SQL over them under a memory limit and a timeout (`session`).

pub mod detect;
pub mod evidence;
pub mod export;
pub mod live;
pub mod render;
pub mod report;
pub mod rows;
pub mod seal;
pub mod segment;
pub mod session;
pub mod sigma;
pub mod tables;

use std::path::PathBuf;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use docket_ledger::store::StoreError;

pub use datafusion::arrow;
/// The plain local file store, for a benchmark that compares checked and unchecked reads.
pub use datafusion::object_store::local::LocalFileSystem;
pub use session::{AuditSession, SessionCache, SessionOptions};

/// Everything that can go wrong answering a question.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entry {seq} of the chain cannot be decoded: {why}")]
    Undecodable { seq: u64, why: String },
    #[error("{path} is not a readable segment: {why}")]
    BadSegment { path: PathBuf, why: String },
    #[error(
        "the columnar copy disagrees with the chain: {path}: {why} (run `docket columnar rebuild` to derive it again)"
    )]
    SegmentMismatch { path: PathBuf, why: String },
    #[error(
        "docket sql is read-only: {0} is refused; ask with SELECT, WITH, EXPLAIN, SHOW TABLES, SHOW COLUMNS or DESCRIBE"
    )]
    ReadOnly(String),
    #[error("the query ran past its {0:?} time limit and was stopped")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    DataFusion(Box<DataFusionError>),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    AsOf(#[from] docket_ledger::projection::PointError),
    #[error("ledger key: {0}")]
    LedgerKey(String),
    #[error("a segment worker panicked")]
    WorkerPanicked,
    #[error("report: {0}")]
    Report(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::DataFusion(Box::new(e))
    }
}
