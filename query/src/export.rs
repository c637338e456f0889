//! `docket export --format parquet`: every table as one Parquet file, readable by DuckDB, pandas and Spark as is.

use std::path::{Path, PathBuf};

use crate::render::{self, Format};
use crate::{AuditSession, QueryError};

/// One exported table.
#[derive(Clone, Debug)]
pub struct Exported {
    pub table: &'static str,
    pub path: PathBuf,
    pub rows: u64,
}

/// Writes `<table>.parquet` for every table and view into `out`; each file is written aside and renamed when whole.
pub async fn export_parquet(
    session: &mut AuditSession,
    out: &Path,
) -> Result<Vec<Exported>, QueryError> {
    let io = |path: &Path, source| QueryError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut done = Vec::new();
    for table in AuditSession::table_names() {
        let path = out.join(format!("{table}.parquet"));
        // Segments and tail are each declared sorted by seq, so this is a merge, not a sort.
        let order = match table {
            "events" | "api_calls" | "grants" | "approvals" | "tokens" | "revocations"
            | "findings" => " ORDER BY seq",
            _ => "",
        };
        let stream = session
            .stream(&format!("SELECT * FROM {table}{order}"))
            .await?;
        let rows = tokio::time::timeout(
            session.timeout(),
            render::write_file(stream, Format::Parquet, &path),
        )
        .await
        .map_err(|_| QueryError::Timeout(session.timeout()))??;
        done.push(Exported { table, path, rows });
    }
    Ok(done)
}
