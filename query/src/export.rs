//! `docket export --format parquet`: every table as one Parquet file, readable by DuckDB, pandas and Spark as is.

use std::fs::File;
use std::io::BufWriter;
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
        let tmp = out.join(format!(".{table}.parquet.tmp"));
        // Segments and tail are each declared sorted by seq, so this is a merge, not a sort.
        let order = match table {
            "events" | "api_calls" | "grants" | "approvals" | "tokens" | "revocations"
            | "findings" => " ORDER BY seq",
            _ => "",
        };
        let stream = session
            .stream(&format!("SELECT * FROM {table}{order}"))
            .await?;
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let rows = tokio::time::timeout(
            session.timeout(),
            render::write(stream, Format::Parquet, BufWriter::new(file)),
        )
        .await
        .map_err(|_| QueryError::Timeout(session.timeout()))??;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        done.push(Exported { table, path, rows });
    }
    Ok(done)
}
