//! `docket sql` (one query, or an interactive shell), `docket columnar` and the Parquet export.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use docket_ledger::keyfile::{self, KeyFileError};
use docket_query::render::{self, Format};
use docket_query::segment::{self, columnar_dir};
use docket_query::tables::AsOf;
use docket_query::{AuditSession, QueryError, SessionOptions};
use ed25519_dalek::SigningKey;

#[derive(Args)]
pub struct SqlArgs {
    /// The ledger's data directory.
    #[arg(long, env = "DOCKET_DATA")]
    data: PathBuf,
    /// One query to run; without it, an interactive shell starts.
    query: Option<String>,
    /// table, csv, json (one object per line) or parquet (needs --out).
    #[arg(long, default_value = "table")]
    format: String,
    /// Write the result here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Show grants_state, tokens_state, approvals_state and agents as of this seq or time (RFC 3339 UTC, e.g. 2026-11-22T08:00:00Z).
    #[arg(long)]
    as_of: Option<String>,
    /// Memory a query's operators may hold, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_limit_mib: usize,
    /// Longest a query may run, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Print how long the query took and what the session covered, to standard error.
    #[arg(long)]
    timing: bool,
    /// Write nothing, not even missing segments: decode unsealed entries in memory instead.
    #[arg(long)]
    no_seal: bool,
    /// The ledger's checkpoint key file, to seal missing segments with (default DIR/ledger.key
    /// when readable). Without it, segments sealed before are used and the rest is decoded.
    #[arg(long, env = "DOCKET_LEDGER_KEY_FILE", value_name = "FILE")]
    ledger_key: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ColumnarCommand {
    /// Seal every whole segment the columnar copy lacks.
    Seal(ColumnarArgs),
    /// Re-derive every segment from the chain and compare, row by row.
    Check(ColumnarArgs),
    /// Remove the columnar copy and derive it again from the chain.
    Rebuild(ColumnarArgs),
}

#[derive(Args)]
pub struct ColumnarArgs {
    #[arg(long, env = "DOCKET_DATA")]
    data: PathBuf,
    /// The ledger's checkpoint key file, which seals segments (default DIR/ledger.key).
    #[arg(long, env = "DOCKET_LEDGER_KEY_FILE", value_name = "FILE")]
    ledger_key: Option<PathBuf>,
}

/// The key segments are sealed with: the file given (which must be readable), else
/// `DIR/ledger.key` if this user can read it, else none (a reader without the key).
pub fn sealing_key(data: &Path, given: Option<&Path>) -> Result<Option<SigningKey>> {
    match given {
        Some(path) => {
            Ok(Some(keyfile::read(path).with_context(|| {
                format!("--ledger-key {}", path.display())
            })?))
        }
        None => match keyfile::read(&data.join(LEDGER_KEY_FILE)) {
            Ok(key) => Ok(Some(key)),
            // A reader without the key (kept elsewhere, or not this user's to read) seals nothing.
            Err(KeyFileError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// The checkpoint key's file name inside a data directory, when it is kept there.
pub const LEDGER_KEY_FILE: &str = "ledger.key";

/// Entries per sealed segment: `DOCKET_SEGMENT_ENTRIES` (for tests and tiny ledgers) or the default.
pub fn segment_entries() -> u64 {
    std::env::var("DOCKET_SEGMENT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(segment::SEGMENT_ENTRIES)
}

fn options(args: &SqlArgs) -> Result<SessionOptions> {
    Ok(SessionOptions {
        memory_limit_bytes: args.memory_limit_mib.max(16) * 1024 * 1024,
        timeout: Duration::from_secs(args.timeout_s.max(1)),
        as_of: match &args.as_of {
            Some(text) => AsOf::parse(text)?,
            None => AsOf::Now,
        },
        segment_entries: segment_entries(),
        seal: !args.no_seal,
        sealer: if args.no_seal {
            None
        } else {
            sealing_key(&args.data, args.ledger_key.as_deref())?
        },
        ..SessionOptions::default()
    })
}

pub async fn sql(args: SqlArgs) -> Result<ExitCode> {
    let format = Format::parse(&args.format).with_context(|| {
        format!(
            "--format {:?}: expected table, csv, json or parquet",
            args.format
        )
    })?;
    if format == Format::Parquet && args.out.is_none() {
        bail!("--format parquet writes a file: give it with --out FILE");
    }
    let opened = Instant::now();
    // A first open of a large unsealed ledger seals for a while: say so on a terminal.
    let shown = std::sync::atomic::AtomicBool::new(false);
    let progress = |n: u64| {
        if std::io::stderr().is_terminal() {
            shown.store(true, std::sync::atomic::Ordering::Relaxed);
            eprint!("\rsealing the columnar copy: {n} entries");
        }
    };
    let opening = AuditSession::open_with_progress(&args.data, options(&args)?, &progress).await;
    if shown.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!();
    }
    let mut session = opening?;
    let cov = session.coverage().clone();
    if let Some(why) = &cov.seal_skipped {
        eprintln!(
            "warning: could not extend the columnar copy ({why}; give the checkpoint key file with \
             --ledger-key); {} entries are decoded in memory",
            cov.tail_rows
        );
    }
    if let Some(seq) = cov.unsealed_from {
        eprintln!(
            "note: the segment from seq {seq} has no seal from the ledger key, so it and later \
             entries were decoded from the chain"
        );
    }
    if args.timing {
        eprintln!(
            "opened in {:.0} ms: {} segments through seq {}, {} tail entries, head {}",
            opened.elapsed().as_secs_f64() * 1e3,
            cov.segments,
            cov.sealed_through,
            cov.tail_rows,
            cov.head
        );
    }
    match &args.query {
        Some(q) => {
            let ok = run_one(&mut session, q, format, args.out.as_deref(), args.timing).await;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        None => shell(&mut session, format).await,
    }
}

/// Runs one query and prints its result or its error; false when it failed.
async fn run_one(
    session: &mut AuditSession,
    query: &str,
    format: Format,
    out: Option<&Path>,
    timing: bool,
) -> bool {
    let started = Instant::now();
    let _watch = crate::query_guard::Watch::arm(session.timeout(), session.memory_limit_bytes());
    let result = async {
        let stream = session.stream(query).await?;
        let timeout = session.timeout();
        let write = async {
            match out {
                Some(path) => render::write_file(stream, format, path).await,
                None => {
                    let out = std::io::BufWriter::new(std::io::stdout());
                    if std::io::stdout().is_terminal() {
                        render::write(stream, format, crate::terminal_text::Shown::new(out)).await
                    } else {
                        render::write(stream, format, out).await
                    }
                }
            }
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| QueryError::Timeout(timeout))?
    }
    .await;
    for note in session.take_notes() {
        eprintln!("{note}");
    }
    match result {
        Ok(rows) => {
            if timing {
                eprintln!(
                    "{rows} rows in {:.1} ms; peak RSS {:.0} MiB",
                    started.elapsed().as_secs_f64() * 1e3,
                    crate::measure::peak_rss_mib()
                );
            }
            if let Some(path) = out {
                eprintln!("wrote {rows} rows to {}", path.display());
            }
            true
        }
        Err(e) if render::is_closed_pipe(&e) => true,
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

const SHELL_HELP: &str = "End a query with `;` (it may span lines). \\d lists the tables, \\d NAME shows a table's columns, \\q quits.";

/// What the shell does next.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Run(String),
    Tables,
    Describe(String),
    Help,
    /// `\q`; carries a query begun but not ended with `;`, which is not run.
    Quit(Option<String>),
}

/// Splits the shell's input into queries and backslash commands.
///
/// A line starting with `\` is a command wherever it comes, also inside an unfinished
/// query (which it leaves as it was): SQL has no statement that starts so.
#[derive(Default)]
struct ShellInput {
    buffer: String,
}

impl ShellInput {
    fn continuing(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// One line of input; what to do now, if anything.
    fn line(&mut self, line: &str) -> Option<Action> {
        let trimmed = line.trim();
        if let Some(command) = trimmed.strip_prefix('\\') {
            return Some(match command.split_once(char::is_whitespace) {
                None if command == "q" => Action::Quit(self.take()),
                None if command == "d" => Action::Tables,
                Some(("d", table)) if !table.trim().is_empty() => {
                    Action::Describe(table.trim().to_string())
                }
                _ => Action::Help,
            });
        }
        if trimmed.is_empty() && self.buffer.is_empty() {
            return None;
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        if trimmed.ends_with(';') {
            return self.take().map(Action::Run);
        }
        None
    }

    /// The end of the input: a last query without its `;` is run all the same.
    fn end(&mut self) -> Option<Action> {
        self.take().map(Action::Run)
    }

    /// The buffered query without its final `;`, if it holds one.
    fn take(&mut self) -> Option<String> {
        let query = std::mem::take(&mut self.buffer);
        let query = query.trim().trim_end_matches(';').trim_end();
        (!query.is_empty()).then(|| query.to_string())
    }
}

/// One read from the shell's input.
enum Read {
    Line(String),
    /// Ctrl-C at a terminal.
    Interrupted,
    End,
}

/// Where the shell's lines come from: the line editor at a terminal; piped input is read as
/// it is, without prompts (which the editor writes to standard output on some terminals)
/// and without adding a script's queries to the person's history.
enum Lines {
    Editor {
        editor: Box<rustyline::DefaultEditor>,
        history: PathBuf,
    },
    Piped(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Lines {
    fn open(interactive: bool) -> Result<Lines> {
        if !interactive {
            use std::io::BufRead;
            return Ok(Lines::Piped(std::io::stdin().lock().lines()));
        }
        let mut editor = Box::new(rustyline::DefaultEditor::new()?);
        let history = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".docket_sql_history");
        // A missing or unreadable history only means starting without one.
        let _ = editor.load_history(&history);
        Ok(Lines::Editor { editor, history })
    }

    fn read(&mut self, prompt: &str) -> Result<Read> {
        use rustyline::error::ReadlineError;
        match self {
            Lines::Editor { editor, .. } => match editor.readline(prompt) {
                Ok(line) => Ok(Read::Line(line)),
                Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(ReadlineError::Eof) => Ok(Read::End),
                Err(e) => Err(e.into()),
            },
            Lines::Piped(lines) => match lines.next() {
                Some(line) => Ok(Read::Line(line.context("reading standard input")?)),
                None => Ok(Read::End),
            },
        }
    }

    fn remember(&mut self, query: &str) {
        if let Lines::Editor { editor, .. } = self {
            let _ = editor.add_history_entry(format!("{query};"));
        }
    }

    fn close(&mut self) {
        if let Lines::Editor { editor, history } = self {
            // Losing the history is not worth failing a session that answered.
            let _ = editor.save_history(history);
        }
    }
}

async fn shell(session: &mut AuditSession, format: Format) -> Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let mut lines = Lines::open(interactive)?;
    if interactive {
        eprintln!("docket sql: read-only SQL over the ledger. {SHELL_HELP}");
    }
    let mut input = ShellInput::default();
    let mut failed = 0usize;
    loop {
        let prompt = if input.continuing() {
            "   ...> "
        } else {
            "docket> "
        };
        let action = match lines.read(prompt)? {
            Read::Line(line) => input.line(&line),
            Read::Interrupted => {
                // Ctrl-C drops the query being typed, as in psql.
                let _ = input.take();
                None
            }
            // Run what is left; the next read meets the end again, with nothing left.
            Read::End => match input.end() {
                Some(last) => Some(last),
                None => break,
            },
        };
        let Some(action) = action else { continue };
        let ok = match action {
            Action::Run(query) => {
                lines.remember(&query);
                run_one(session, &query, format, None, false).await
            }
            Action::Tables => {
                println!("{}", AuditSession::table_names().join("\n"));
                true
            }
            Action::Describe(table) => {
                run_one(session, &format!("DESCRIBE {table}"), format, None, false).await
            }
            Action::Help => {
                eprintln!("{SHELL_HELP}");
                true
            }
            Action::Quit(unfinished) => {
                if let Some(q) = unfinished {
                    eprintln!("not run (no `;` before \\q): {q}");
                }
                break;
            }
        };
        failed += usize::from(!ok);
    }
    lines.close();
    // Piped input is a script: its caller must learn that a query failed. At a terminal, the
    // person saw each error as it came.
    if failed > 0 && !interactive {
        eprintln!(
            "{failed} quer{} failed",
            if failed == 1 { "y" } else { "ies" }
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn columnar(cmd: ColumnarCommand) -> Result<ExitCode> {
    let (args, rebuild) = match cmd {
        ColumnarCommand::Check(a) => return columnar_check(&a),
        ColumnarCommand::Seal(a) => (a, false),
        ColumnarCommand::Rebuild(a) => (a, true),
    };
    let store = docket_ledger::store::Store::open_reader(&crate::db_dir(&args.data))?;
    let dir = columnar_dir(&args.data);
    let Some(key) = sealing_key(&args.data, args.ledger_key.as_deref())? else {
        bail!(
            "sealing needs the ledger's checkpoint key: {} is not readable here; give the key file \
             with --ledger-key FILE",
            args.data.join(LEDGER_KEY_FILE).display()
        );
    };
    let started = Instant::now();
    let progress = |n: u64| {
        if std::io::stderr().is_terminal() {
            eprint!("\r{n} entries sealed");
        }
    };
    let report = if rebuild {
        segment::rebuild(&store, &dir, segment_entries(), &key, &progress)?
    } else {
        segment::seal(&store, &dir, segment_entries(), &key, &progress)?
    };
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sealed {} segments ({} entries) in {secs:.1}s ({:.0} entries/s); sealed through seq {}",
        report.sealed,
        report.entries,
        report.entries as f64 / secs.max(1e-9),
        report.sealed_through
    );
    Ok(ExitCode::SUCCESS)
}

/// `docket columnar check`: every segment against the chain, row by row and byte by byte.
fn columnar_check(args: &ColumnarArgs) -> Result<ExitCode> {
    let store = docket_ledger::store::Store::open_reader(&crate::db_dir(&args.data))?;
    let dir = columnar_dir(&args.data);
    let started = Instant::now();
    let problems = segment::check(&store, &dir)?;
    let segments = segment::list(&dir)?;
    if problems.is_empty() {
        println!(
            "columnar copy OK: {} segments through seq {} equal the chain, row by row ({:.1}s)",
            segments.len(),
            segments.last().map_or(0, |s| s.last_seq),
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        println!(
            "MISMATCH {} (from seq {}): {}",
            p.path.display(),
            p.first_seq,
            p.why
        );
    }
    println!(
        "{} of {} segments disagree with the chain; `docket columnar rebuild --data {}` derives them again",
        problems.len(),
        segments.len(),
        args.data.display()
    );
    Ok(ExitCode::FAILURE)
}

/// How often `serve` looks for whole segments to seal.
const SEAL_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the columnar copy sealed while `serve` runs, from a read-only view of the store.
///
/// A failure here never touches ingest: the chain is the system of record, and
/// `docket sql` seals (or decodes) whatever is missing on its own.
pub fn spawn_sealer(
    data: PathBuf,
    key: SigningKey,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
        let mut store = None;
        let mut warned = false;
        while !stopped() {
            let mut step = || -> Result<()> {
                if store.is_none() {
                    store = Some(docket_ledger::store::Store::open_reader(&crate::db_dir(
                        &data,
                    ))?);
                }
                if let Some(s) = &store {
                    s.catch_up()?;
                    let report =
                        segment::seal(s, &columnar_dir(&data), segment_entries(), &key, &|_| {})?;
                    if report.sealed > 0 {
                        tracing::info!(
                            segments = report.sealed,
                            through = report.sealed_through,
                            "columnar copy sealed"
                        );
                    }
                }
                Ok(())
            };
            match step() {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "cannot seal the columnar copy; SQL will decode the unsealed entries");
                    warned = true;
                }
                Err(_) => {}
            }
            let until = Instant::now() + SEAL_INTERVAL;
            while !stopped() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// `docket export --format parquet --out DIR`.
pub async fn export_parquet(data: &Path, out: &Path) -> Result<()> {
    let options = SessionOptions {
        segment_entries: segment_entries(),
        sealer: sealing_key(data, None)?,
        timeout: Duration::from_secs(24 * 3600),
        ..SessionOptions::default()
    };
    let mut session = AuditSession::open(data, options).await?;
    let done = docket_query::export::export_parquet(&mut session, out).await?;
    for e in &done {
        eprintln!("{:>12} rows  {}", e.rows, e.path.display());
    }
    let _ = std::io::stderr().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Action> {
        let mut input = ShellInput::default();
        let mut out: Vec<Action> = lines.iter().filter_map(|l| input.line(l)).collect();
        out.extend(input.end());
        out
    }

    #[test]
    fn queries_end_at_a_semicolon_or_at_the_end_of_input() {
        assert_eq!(
            feed(&["SELECT 1", "  + 1 AS two;", "", "SELECT 3"]),
            vec![
                Action::Run("SELECT 1\n  + 1 AS two".into()),
                Action::Run("SELECT 3".into())
            ]
        );
        assert_eq!(feed(&["", "   "]), vec![]);
    }

    #[test]
    fn backslash_commands_work_on_any_line() {
        assert_eq!(
            feed(&["SELECT 1", "\\d", "\\d  events ", "AS x;"]),
            vec![
                Action::Tables,
                Action::Describe("events".into()),
                Action::Run("SELECT 1\nAS x".into())
            ]
        );
        assert_eq!(
            feed(&["SELECT 1", "\\q", "SELECT 2;"]),
            vec![
                Action::Quit(Some("SELECT 1".into())),
                Action::Run("SELECT 2".into())
            ],
            "the shell stops reading at Quit; the unfinished query goes with it"
        );
        assert_eq!(feed(&["\\q"]), vec![Action::Quit(None)]);
        assert_eq!(feed(&["\\x"]), vec![Action::Help]);
    }
}
