//! Detection rules: files in Sigma's vocabulary with a SQL body, run over a window of seqs.
//!
//! A rule reports the entries in a window `(from_seq, to_seq]` that look
//! unusual against what came before them. Its SQL sees the audit tables of a
//! session (docs/QUERIES.md) and four numbers substituted as literals:
//! `${from_seq}`, `${to_seq}`, `${learning_us}` and `${lookback_us}`. Each row it
//! returns is one detection, keyed by the seq that triggered it. A rule that
//! looks only at entries up to its trigger gives the same detections whether
//! the log is run in one window or many (tested for every built-in rule), so
//! detections are a function of the log and the rule set. The format is in
//! docs/DETECTION.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use docket_schemas::limits::{EVIDENCE_PER_FINDING_MAX, RULE_TITLE_BYTES_MAX, TEXT_BYTES_MAX};
use docket_schemas::{
    Event, EventBody, EventId, FindingRaised, FindingSuppressed, FindingTriaged, Level,
    RuleVersion, RulesSet, SCHEMA_VERSION, Timestamp,
};
use serde::Deserialize;

use crate::QueryError;
use crate::session::AuditSession;
use crate::sigma;

/// Sigma's levels, lowest first.
pub const LEVELS: &[&str] = &["informational", "low", "medium", "high", "critical"];
/// Sigma's statuses.
pub const STATUSES: &[&str] = &[
    "stable",
    "test",
    "experimental",
    "deprecated",
    "unsupported",
];
/// Columns a rule's SQL must return, with what each holds.
pub const OUTPUT_COLUMNS: &[(&str, &str)] = &[
    ("seq", "the entry that triggered the detection"),
    ("agent", "the agent it is about"),
    ("observed", "what was seen, in words and numbers"),
    ("baseline", "what the agent's history shows instead"),
    ("evidence", "the seqs the detection rests on (a list)"),
];
/// How long a new agent is observed before rules below `high` may fire about it, unless told otherwise.
pub const LEARNING_DEFAULT_US: i64 = 86_400 * 1_000_000;
/// Rank of `high` in [`LEVELS`]: detections at or above it are raised during a learning period.
const HIGH_RANK: usize = 3;
/// The columns the engine adds to a rule's rows: its trigger's `ts`, user and audience.
const TRIGGER_TS: &str = "docket_trigger_ts";
const TRIGGER_USER: &str = "docket_trigger_user";
const TRIGGER_AUDIENCE: &str = "docket_trigger_audience";
/// What the engine joins to a rule's rows: its trigger entry (`t`, the window's entries, named
/// `docket_window`), and the user the agent was first registered for before it (an
/// `api.called` names no user).
const TRIGGER_JOIN: &str = "JOIN docket_window t ON t.seq = d.seq \
     LEFT JOIN (SELECT agent, first_value(\"user\" ORDER BY seq) AS \"user\", min(seq) AS registered_seq \
       FROM events WHERE kind = 'agent.registered' GROUP BY agent) u \
       ON u.agent = d.agent AND u.registered_seq < d.seq";
/// Most characters of a parser's message shown in a problem.
const PROBLEM_QUOTE_CHARS: usize = 160;
/// Largest rule file read.
pub const RULE_FILE_BYTES_MAX: u64 = 256 * 1024;
/// Most detections one rule may report in one window: past it the rule is reported as too noisy.
pub const DETECTIONS_PER_RULE_MAX: usize = 10_000;
/// The built-in rules, shipped in the binary (the files in `rules/`).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "unfamiliar_audience.yml",
        include_str!("../../rules/unfamiliar_audience.yml"),
    ),
    (
        "unfamiliar_operation.yml",
        include_str!("../../rules/unfamiliar_operation.yml"),
    ),
    (
        "new_source_address.yml",
        include_str!("../../rules/new_source_address.yml"),
    ),
    (
        "token_two_sources.yml",
        include_str!("../../rules/token_two_sources.yml"),
    ),
    (
        "probing_burst.yml",
        include_str!("../../rules/probing_burst.yml"),
    ),
    (
        "approval_fatigue.yml",
        include_str!("../../rules/approval_fatigue.yml"),
    ),
    (
        "call_rate_spike.yml",
        include_str!("../../rules/call_rate_spike.yml"),
    ),
    (
        "unusual_hour.yml",
        include_str!("../../rules/unusual_hour.yml"),
    ),
    (
        "token_burst.yml",
        include_str!("../../rules/token_burst.yml"),
    ),
    (
        "scope_escalation.yml",
        include_str!("../../rules/scope_escalation.yml"),
    ),
    (
        "denials_then_approval.yml",
        include_str!("../../rules/denials_then_approval.yml"),
    ),
    (
        "dormant_grant.yml",
        include_str!("../../rules/dormant_grant.yml"),
    ),
];

/// A rule file as written: Sigma's metadata, and either Docket's SQL body or a Sigma detection.
///
/// Sigma fields Docket accepts but does not use (`modified`, `references`, `fields`, ...)
/// are read so that a Sigma file is not refused for holding them.
#[derive(Clone, Debug, Deserialize)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    title: String,
    id: String,
    status: Option<String>,
    level: String,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    falsepositives: Vec<String>,
    author: Option<String>,
    date: Option<String>,
    modified: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    docket: Option<DocketPart>,
    logsource: Option<serde_yaml::Value>,
    detection: Option<serde_yaml::Value>,
    correlation: Option<serde_yaml::Value>,
    name: Option<String>,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocketPart {
    sql: String,
    /// How long an agent is observed before this rule may fire for it.
    learning: Option<String>,
    /// How far back its baseline reaches.
    lookback: Option<String>,
}

/// A rule ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub level: String,
    pub status: String,
    pub description: String,
    pub tags: Vec<String>,
    pub falsepositives: Vec<String>,
    pub author: String,
    pub date: String,
    /// Where it came from: a file path, or `built-in:<name>`.
    pub origin: String,
    /// The SQL run for each window (placeholders not yet substituted).
    pub sql: String,
    pub learning_us: i64,
    pub lookback_us: i64,
    /// BLAKE3 of the file's bytes: which version of the rule ran.
    pub content_hash: String,
}

/// One thing a rule saw.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Detection {
    pub seq: u64,
    /// The trigger's own `ts`.
    pub ts: Timestamp,
    pub rule_id: String,
    pub title: String,
    pub level: String,
    pub agent: String,
    /// The trigger's user (for an API call, the user its agent was registered for), if any.
    pub user: Option<String>,
    /// The trigger's audience, if it has one.
    pub audience: Option<String>,
    pub observed: String,
    pub baseline: String,
    pub evidence: Vec<u64>,
    /// The `content_hash` of the rule that saw it.
    pub rule_hash: String,
}

/// A rule that could not be loaded or run, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleProblem {
    pub origin: String,
    /// 1-based line in the file, when the problem has one.
    pub line: Option<usize>,
    pub why: String,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.origin, self.why),
            None => write!(f, "{}: {}", self.origin, self.why),
        }
    }
}

/// Reads a duration as rules write it: a number and a unit (`s`, `m`, `h`, `d`), e.g. `30d`.
pub fn parse_duration_us(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(unit_at);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1_000_000)
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i + 1)
}

/// Parses one rule file; `origin` names it in problems.
pub fn parse_rule(origin: &str, text: &str) -> Result<Rule, RuleProblem> {
    let problem = |line: Option<usize>, why: String| RuleProblem {
        origin: origin.to_string(),
        line,
        why,
    };
    let not_a_rule = |e: serde_yaml::Error| {
        // The parser quotes what it read: cut short, so a file that is not a rule (a link to
        // some other file) is not printed whole.
        let why: String = e.to_string().chars().take(PROBLEM_QUOTE_CHARS).collect();
        problem(
            e.location().map(|l| l.line()),
            format!("not a rule file: {why}"),
        )
    };
    let docs = documents(text).map_err(not_a_rule)?;
    // One document is the rule; in a Sigma correlation file, the correlation document is.
    let file: RuleFile = match docs.iter().find(|d| d.get("correlation").is_some()) {
        Some(c) if docs.len() > 1 => RuleFile::deserialize(c.clone()).map_err(not_a_rule)?,
        _ => serde_yaml::from_str(text).map_err(not_a_rule)?,
    };
    let at = |field: &str| line_of(text, &format!("{field}:"));
    if uuid_parts(&file.id).is_none() {
        return Err(problem(at("id"), format!("id {:?} is not a UUID", file.id)));
    }
    if !LEVELS.contains(&file.level.as_str()) {
        return Err(problem(
            at("level"),
            format!("level {:?} is not one of {}", file.level, LEVELS.join(", ")),
        ));
    }
    let status = file.status.clone().unwrap_or_else(|| "experimental".into());
    if !STATUSES.contains(&status.as_str()) {
        return Err(problem(
            at("status"),
            format!("status {status:?} is not one of {}", STATUSES.join(", ")),
        ));
    }
    let duration = |field: &str, value: &Option<String>, default: i64| match value {
        None => Ok(default),
        Some(v) => parse_duration_us(v).ok_or_else(|| {
            problem(
                at(field),
                format!("{field} {v:?} is not a duration such as 30m, 24h or 7d"),
            )
        }),
    };
    let (sql, learning_us, lookback_us) = match (&file.docket, &file.detection, &file.correlation) {
        (Some(d), None, None) => (
            d.sql.clone(),
            duration("learning", &d.learning, 0)?,
            duration("lookback", &d.lookback, 30 * 86_400 * 1_000_000)?,
        ),
        (None, Some(_), _) | (None, None, Some(_)) => {
            let sql =
                sigma::compile_file(&docs).map_err(|e| problem(at(e.field()), e.to_string()))?;
            (sql, 0, 0)
        }
        (Some(_), _, _) => {
            return Err(problem(
                at("docket"),
                "a rule has either a `docket` SQL body or a Sigma `detection`, not both".into(),
            ));
        }
        (None, None, None) => {
            return Err(problem(
                None,
                "a rule needs a `docket` block with `sql`, or a Sigma `detection`".into(),
            ));
        }
    };
    Ok(Rule {
        id: file.id.to_ascii_lowercase(),
        title: file.title,
        level: file.level,
        status,
        description: file.description.unwrap_or_default(),
        tags: file.tags,
        falsepositives: file.falsepositives,
        author: file.author.unwrap_or_default(),
        date: file.date.unwrap_or_default(),
        origin: origin.to_string(),
        sql,
        learning_us,
        lookback_us,
        content_hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
    })
}

/// Every YAML document of a file (`---` between them).
fn documents(text: &str) -> Result<Vec<serde_yaml::Value>, serde_yaml::Error> {
    serde_yaml::Deserializer::from_str(text)
        .map(serde_yaml::Value::deserialize)
        .collect()
}

/// The five groups of a UUID's hex digits, if `text` is one.
fn uuid_parts(text: &str) -> Option<()> {
    let lens = [8, 4, 4, 4, 12];
    let parts: Vec<&str> = text.split('-').collect();
    (parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit())))
    .then_some(())
}

/// The rule set: the built-in rules, then every `*.yml`/`*.yaml` in `dir` (sorted by name), and
/// what could not be loaded. Two rules with one id: the later is a problem, the first stays.
pub fn load(dir: Option<&Path>, built_in: bool) -> (Vec<Rule>, Vec<RuleProblem>) {
    let mut texts: Vec<(String, Result<String, String>)> = Vec::new();
    if built_in {
        for (name, text) in BUILT_IN {
            texts.push((format!("built-in:{name}"), Ok((*text).to_string())));
        }
    }
    let mut problems = Vec::new();
    if let Some(dir) = dir {
        match rule_files(dir) {
            Ok(files) => {
                for path in files {
                    texts.push((path.display().to_string(), read_rule_file(&path)));
                }
            }
            Err(why) => problems.push(RuleProblem {
                origin: dir.display().to_string(),
                line: None,
                why,
            }),
        }
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (origin, text) in texts {
        let parsed = text
            .map_err(|why| RuleProblem {
                origin: origin.clone(),
                line: None,
                why,
            })
            .and_then(|t| parse_rule(&origin, &t));
        match parsed {
            Ok(rule) => match rules.iter().find(|r| r.id == rule.id) {
                Some(first) => problems.push(RuleProblem {
                    origin,
                    line: None,
                    why: format!("id {} is already the id of {}", rule.id, first.origin),
                }),
                None => rules.push(rule),
            },
            Err(p) => problems.push(p),
        }
    }
    (rules, problems)
}

fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read the rules directory: {e}"))?;
    let mut out = Vec::new();
    for item in read {
        let path = item.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read_rule_file(path: &Path) -> Result<String, String> {
    // Looked at before opening, the link itself: a FIFO would block, a device never end, and
    // a link could name any file the process can read and quote it in a problem.
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        return Err("a symbolic link: rules are read only from regular files".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > RULE_FILE_BYTES_MAX {
        return Err(format!(
            "{} bytes, more than the {RULE_FILE_BYTES_MAX} a rule file may be",
            meta.len()
        ));
    }
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, RULE_FILE_BYTES_MAX + 1),
        &mut text,
    )
    .map_err(|e| e.to_string())?;
    if text.len() as u64 > RULE_FILE_BYTES_MAX {
        return Err(format!(
            "more than the {RULE_FILE_BYTES_MAX} bytes a rule file may be"
        ));
    }
    Ok(text)
}

impl Rule {
    /// The SQL for one window, numbers substituted. Below `high`, a detection about an agent
    /// whose first entry is less than `fleet_learning_us` older than the trigger is dropped: a
    /// new agent builds its baseline and raises only high and critical detections meanwhile.
    pub fn sql_for(&self, from_seq: u64, to_seq: u64, fleet_learning_us: i64) -> String {
        let body = self
            .sql
            .replace("${from_seq}", &from_seq.to_string())
            .replace("${to_seq}", &to_seq.to_string())
            .replace("${learning_us}", &self.learning_us.to_string())
            .replace("${lookback_us}", &self.lookback_us.to_string());
        // Whatever the body does, only triggers inside the window are reported, once each.
        // The window's entries alone are joined for the trigger's columns, not all of `events`.
        let window = format!(
            "docket_window AS (SELECT seq, ts, \"user\", audience FROM events \
             WHERE seq > {from_seq} AND seq <= {to_seq})"
        );
        let select = format!(
            "WITH {window} SELECT d.*, t.ts AS {TRIGGER_TS}, COALESCE(t.\"user\", u.\"user\") AS {TRIGGER_USER}, \
             t.audience AS {TRIGGER_AUDIENCE} FROM ({body}) AS d {TRIGGER_JOIN}"
        );
        if self.level_rank() >= HIGH_RANK || fleet_learning_us <= 0 {
            return format!(
                "{select} WHERE d.seq > {from_seq} AND d.seq <= {to_seq} ORDER BY d.seq"
            );
        }
        // An agent's first entry is its least seq, which no later append can change (a least
        // `ts` could, with a late arrival dated earlier), so the period is the same live and in replay.
        format!(
            "{select} \
             JOIN agent_first a ON a.agent = d.agent \
             WHERE d.seq > {from_seq} AND d.seq <= {to_seq} \
               AND CAST(t.ts AS BIGINT) - CAST(a.first_ts AS BIGINT) >= {fleet_learning_us} \
             ORDER BY d.seq"
        )
    }

    fn level_rank(&self) -> usize {
        LEVELS.iter().position(|l| *l == self.level).unwrap_or(0)
    }

    fn problem(&self, why: String) -> RuleProblem {
        RuleProblem {
            origin: self.origin.clone(),
            line: None,
            why,
        }
    }

    /// Runs the rule over `(from_seq, to_seq]`.
    pub async fn run(
        &self,
        session: &mut AuditSession,
        from_seq: u64,
        to_seq: u64,
        fleet_learning_us: i64,
    ) -> Result<Vec<Detection>, RuleProblem> {
        let batches = session
            .query(&self.sql_for(from_seq, to_seq, fleet_learning_us))
            .await;
        self.detections(batches)
    }

    /// The detections in a run's rows, or why there are none.
    fn detections(
        &self,
        batches: Result<Vec<RecordBatch>, QueryError>,
    ) -> Result<Vec<Detection>, RuleProblem> {
        let batches = batches.map_err(|e| {
            let hint = if matches!(&e, QueryError::DataFusion(d) if d.to_string().contains("Resources exhausted"))
            {
                " (the rule needs more memory than a query may hold: run it over fewer entries at once, `docket detect --window`)"
            } else {
                ""
            };
            self.problem(format!("{e}{hint}"))
        })?;
        let mut out = Vec::new();
        for b in &batches {
            self.read_rows(b, &mut out)
                .map_err(|why| self.problem(why))?;
            if out.len() > DETECTIONS_PER_RULE_MAX {
                return Err(self.problem(format!(
                    "more than {DETECTIONS_PER_RULE_MAX} detections in one window: too noisy to report"
                )));
            }
        }
        Ok(out)
    }

    fn read_rows(&self, b: &RecordBatch, out: &mut Vec<Detection>) -> Result<(), String> {
        let column = |name: &str| {
            b.column_by_name(name).ok_or_else(|| {
                format!(
                    "its SQL returns no `{name}` column (it must return {})",
                    OUTPUT_COLUMNS
                        .iter()
                        .map(|(c, _)| *c)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        let seq = column("seq")?;
        let seq = seq
            .as_primitive_opt::<UInt64Type>()
            .ok_or("its `seq` column is not an unsigned integer")?;
        let text = |name: &str| -> Result<Vec<String>, String> {
            let col = column(name)?;
            let col = datafusion::arrow::compute::cast(col, &DataType::Utf8)
                .map_err(|e| format!("`{name}`: {e}"))?;
            let col = col.as_string::<i32>();
            Ok((0..col.len())
                .map(|i| {
                    if col.is_null(i) {
                        String::new()
                    } else {
                        col.value(i).to_string()
                    }
                })
                .collect())
        };
        let (agent, observed, baseline) = (text("agent")?, text("observed")?, text("baseline")?);
        let (user, audience) = (text(TRIGGER_USER)?, text(TRIGGER_AUDIENCE)?);
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        let ts = column(TRIGGER_TS)?;
        let ts = datafusion::arrow::compute::cast(ts, &DataType::Int64)
            .map_err(|e| format!("trigger time: {e}"))?;
        let ts = ts
            .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()
            .ok_or("trigger time is not a timestamp")?;
        let evidence = column("evidence")?;
        let evidence = evidence
            .as_list_opt::<i32>()
            .ok_or("its `evidence` column is not a list of seqs")?;
        for i in 0..b.num_rows() {
            if seq.is_null(i) {
                return Err("its `seq` column holds a null".into());
            }
            let list = evidence.value(i);
            let list = datafusion::arrow::compute::cast(&list, &DataType::UInt64)
                .map_err(|e| format!("`evidence`: {e}"))?;
            let list = list
                .as_primitive_opt::<UInt64Type>()
                .ok_or("its `evidence` column is not a list of seqs")?;
            let mut seqs: BTreeSet<u64> = list.iter().flatten().collect();
            seqs.insert(seq.value(i));
            let at = Timestamp::from_micros(ts.value(i))
                .ok_or_else(|| format!("trigger time of seq {} is out of range", seq.value(i)))?;
            out.push(Detection {
                seq: seq.value(i),
                ts: at,
                rule_id: self.id.clone(),
                title: self.title.clone(),
                level: self.level.clone(),
                agent: agent[i].clone(),
                user: some(&user[i]),
                audience: some(&audience[i]),
                observed: observed[i].clone(),
                baseline: baseline[i].clone(),
                evidence: seqs.into_iter().collect(),
                rule_hash: self.content_hash.clone(),
            });
        }
        Ok(())
    }
}

impl Detection {
    /// How triage events name it: `<rule id>@<seq>`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.rule_id, self.seq)
    }

    /// The `finding.raised` event that records it. Its `ts` is the trigger's and its id is
    /// derived from the rule version and the seq, so deriving it again gives the same event.
    /// Texts are cut to their limit and evidence keeps the trigger and the earliest others.
    pub fn to_event(&self) -> Result<Event, String> {
        let level = Level::parse(&self.level)
            .ok_or_else(|| format!("level {:?} is not a Sigma level", self.level))?;
        let mut evidence = self.evidence.clone();
        if evidence.len() > EVIDENCE_PER_FINDING_MAX {
            evidence.retain(|s| *s != self.seq);
            evidence.truncate(EVIDENCE_PER_FINDING_MAX - 1);
            evidence.push(self.seq);
            evidence.sort_unstable();
        }
        let body = FindingRaised {
            finding: self.id(),
            rule_id: self.rule_id.clone(),
            rule_hash: self.rule_hash.clone(),
            title: cut(&self.title, TEXT_BYTES_MAX),
            level,
            seq: self.seq,
            agent: (!self.agent.is_empty()).then(|| self.agent.clone()),
            user: self.user.clone(),
            audience: self.audience.clone(),
            observed: cut(&self.observed, TEXT_BYTES_MAX),
            baseline: cut(&self.baseline, TEXT_BYTES_MAX),
            evidence,
        };
        let digest = blake3::hash(
            format!("docket finding.raised\n{}\n{}", self.rule_hash, self.seq).as_bytes(),
        );
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&digest.as_bytes()[..16]);
        let ms = u64::try_from(self.ts.as_micros() / 1000)
            .map_err(|_| format!("trigger time {} is before 1970", self.ts))?;
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId::derived(ms, bits),
            ts: self.ts,
            body: EventBody::FindingRaised(body),
        };
        event
            .validate()
            .map_err(|e| format!("{}: {e}", self.id()))?;
        Ok(event)
    }
}

impl Detection {
    /// A detection as a `finding.raised` recorded it, the event's `ts` being the trigger's.
    pub fn from_record(ts: Timestamp, f: &FindingRaised) -> Detection {
        Detection {
            seq: f.seq,
            ts,
            rule_id: f.rule_id.clone(),
            title: f.title.clone(),
            level: f.level.as_str().to_string(),
            agent: f.agent.clone().unwrap_or_default(),
            user: f.user.clone(),
            audience: f.audience.clone(),
            observed: f.observed.clone(),
            baseline: f.baseline.clone(),
            evidence: f.evidence.clone(),
            rule_hash: f.rule_hash.clone(),
        }
    }
}

/// The detections recorded on the chain up to `to_seq` (`finding.raised`), each with the seq of
/// its record, in record order.
pub async fn recorded(
    session: &AuditSession,
    to_seq: u64,
) -> Result<Vec<(u64, Detection)>, QueryError> {
    Ok(read_events(session, &["finding.raised"], 0, to_seq)
        .await?
        .into_iter()
        .filter_map(|(seq, e)| match &e.body {
            EventBody::FindingRaised(f) => Some((seq, Detection::from_record(e.ts, f))),
            _ => None,
        })
        .collect())
}

/// `text` cut at a character boundary to at most `max` bytes.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Rule {
    /// How a `rules.set` names this version of the rule.
    pub fn version(&self) -> Result<RuleVersion, String> {
        Ok(RuleVersion {
            id: self.id.clone(),
            title: cut(&self.title, RULE_TITLE_BYTES_MAX),
            level: Level::parse(&self.level)
                .ok_or_else(|| format!("level {:?} is not a Sigma level", self.level))?,
            content_hash: self.content_hash.clone(),
        })
    }
}

/// The `rules.set` that puts `rules` in force with a learning period of `learning_us`.
pub fn rules_set(rules: &[Rule], learning_us: i64) -> Result<RulesSet, String> {
    let learning_s = u64::try_from(learning_us / 1_000_000)
        .map_err(|_| "a learning period is not negative".to_string())?;
    Ok(RulesSet {
        rules: rules.iter().map(Rule::version).collect::<Result<_, _>>()?,
        learning_s,
    })
}

/// Every event of `kinds` in `(from_seq, to_seq]`, decoded, in seq order.
/// Reads `events` directly (no small table is needed), so building the `findings` table can call it.
pub async fn read_events(
    session: &AuditSession,
    kinds: &[&str],
    from_seq: u64,
    to_seq: u64,
) -> Result<Vec<(u64, Event)>, QueryError> {
    let kinds: Vec<String> = kinds.iter().map(|k| format!("'{k}'")).collect();
    let sql = format!(
        "SELECT seq, payload FROM events WHERE kind IN ({}) \
         AND seq > {from_seq} AND seq <= {to_seq} ORDER BY seq",
        kinds.join(", ")
    );
    let timeout = session.timeout();
    let batches = tokio::time::timeout(timeout, async {
        session.context().sql(&sql).await?.collect().await
    })
    .await
    .map_err(|_| QueryError::Timeout(timeout))??;
    let mut out = Vec::new();
    for b in &batches {
        let seqs = datafusion::arrow::compute::cast(b.column(0), &DataType::UInt64)?;
        let seqs = seqs.as_primitive::<UInt64Type>();
        let payloads = datafusion::arrow::compute::cast(b.column(1), &DataType::Utf8)?;
        let payloads = payloads.as_string::<i32>();
        for i in 0..b.num_rows() {
            let seq = seqs.value(i);
            let event = Event::from_payload(payloads.value(i).as_bytes()).map_err(|e| {
                QueryError::Undecodable {
                    seq,
                    why: e.to_string(),
                }
            })?;
            out.push((seq, event));
        }
    }
    Ok(out)
}

/// Every `rules.set` up to `to_seq`, in seq order.
pub async fn rule_sets(
    session: &AuditSession,
    to_seq: u64,
) -> Result<Vec<(u64, RulesSet)>, QueryError> {
    Ok(read_events(session, &["rules.set"], 0, to_seq)
        .await?
        .into_iter()
        .filter_map(|(seq, e)| match e.body {
            EventBody::RulesSet(r) => Some((seq, r)),
            _ => None,
        })
        .collect())
}

/// What running the recorded rule sets over a stretch of the log gave.
#[derive(Debug, Default)]
pub struct RecordedRun {
    pub detections: Vec<Detection>,
    pub problems: Vec<RuleProblem>,
    /// Rule versions in force that were not among the rules given, each with the stretch of
    /// seqs it was not run over.
    pub missing: Vec<(RuleVersion, u64, u64)>,
}

/// Runs over `(from_seq, to_seq]` the rules in force at each trigger, from `sets` (the log's
/// `rules.set` entries in seq order): a set recorded at seq R governs the entries after R up
/// to the next set. Before the first set no rule is in force. Serve's detector and a
/// replay (`docket findings --check`) both call this, so they cannot disagree on which rule
/// judged which entry.
pub async fn run_recorded(
    available: &[Rule],
    sets: &[(u64, RulesSet)],
    session: &mut AuditSession,
    from_seq: u64,
    to_seq: u64,
) -> RecordedRun {
    let mut cuts = vec![from_seq];
    cuts.extend(
        sets.iter()
            .map(|(s, _)| *s)
            .filter(|s| *s > from_seq && *s < to_seq),
    );
    cuts.push(to_seq);
    let mut out = RecordedRun::default();
    for piece in cuts.windows(2) {
        let (a, b) = (piece[0], piece[1]);
        if a >= b {
            continue;
        }
        let Some((_, set)) = sets.iter().rev().find(|(s, _)| *s <= a) else {
            continue;
        };
        let mut rules = Vec::new();
        for v in &set.rules {
            match available
                .iter()
                .find(|r| r.id == v.id && r.content_hash == v.content_hash)
            {
                Some(r) => rules.push(r.clone()),
                None => out.missing.push((v.clone(), a, b)),
            }
        }
        let learning_us = i64::try_from(set.learning_s)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000);
        let (found, problems) = run_all(&rules, session, a, b, learning_us).await;
        out.detections.extend(found);
        out.problems.extend(problems);
    }
    out.detections.sort();
    out
}

/// Where a detection stands, from the triage events on the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triage {
    /// `open`, or the status of the last `finding.triaged` about it.
    pub status: String,
    pub reason: Option<String>,
    pub by: Option<String>,
    /// The seq of the decision that set the status.
    pub decided_seq: Option<u64>,
    /// The seq of a `finding.suppressed` that covers it.
    pub suppressed_by: Option<u64>,
}

impl Triage {
    /// Open (never triaged, or reopened) and not suppressed.
    pub fn is_open(&self) -> bool {
        self.is_open_status() && self.suppressed_by.is_none()
    }

    /// Never triaged, or reopened (whether or not a suppression covers it).
    pub fn is_open_status(&self) -> bool {
        self.status == "open" || self.status == "reopened"
    }
}

/// The triage and suppression events of a log, read from its `events` table.
#[derive(Clone, Debug, Default)]
pub struct TriageLog {
    /// Every decision per finding id, in seq order.
    decisions: BTreeMap<String, Vec<(u64, FindingTriaged)>>,
    suppressions: Vec<(u64, FindingSuppressed)>,
}

impl TriageLog {
    /// Reads every `finding.triaged` and `finding.suppressed` up to `to_seq`, in seq order.
    pub async fn read(session: &AuditSession, to_seq: u64) -> Result<TriageLog, QueryError> {
        let mut log = TriageLog::default();
        let events = read_events(
            session,
            &["finding.triaged", "finding.suppressed"],
            0,
            to_seq,
        )
        .await?;
        for (seq, event) in events {
            match event.body {
                EventBody::FindingTriaged(t) => {
                    log.decisions
                        .entry(t.finding.clone())
                        .or_default()
                        .push((seq, t));
                }
                EventBody::FindingSuppressed(s) => log.suppressions.push((seq, s)),
                _ => {}
            }
        }
        Ok(log)
    }

    /// Where `d` stands: the last decision about it, and whether a suppression covers it
    /// (same rule, same agent or any, triggered no later than `until`).
    pub fn state(&self, d: &Detection) -> Triage {
        self.state_of(&d.id(), &d.rule_id, &d.agent, d.ts, d.seq)
    }

    /// Where the finding `id` of `rule_id` about `agent`, triggered at `ts`, stands, counting
    /// only decisions recorded after `known_seq` (the entry that made the finding known: its
    /// trigger, or its `finding.raised`): a decision about a finding that did not exist yet
    /// decides nothing.
    pub fn state_of(
        &self,
        id: &str,
        rule_id: &str,
        agent: &str,
        ts: Timestamp,
        known_seq: u64,
    ) -> Triage {
        let decided = self
            .decisions
            .get(id)
            .and_then(|all| all.iter().rev().find(|(seq, _)| *seq > known_seq));
        Triage {
            status: decided
                .map_or("open", |(_, t)| t.status.as_str())
                .to_string(),
            reason: decided.and_then(|(_, t)| t.reason.map(|r| r.as_str().to_string())),
            by: decided.map(|(_, t)| t.by.clone()),
            decided_seq: decided.map(|(seq, _)| *seq),
            suppressed_by: self
                .suppressions
                .iter()
                .find(|(_, s)| {
                    s.rule_id.eq_ignore_ascii_case(rule_id)
                        && s.agent.as_ref().is_none_or(|a| a == agent)
                        && ts <= s.until
                })
                .map(|(seq, _)| *seq),
        }
    }
}

/// Runs every rule over `(from_seq, to_seq]`: the detections in seq order, and the rules that
/// failed. Rules are planned one after another (planning builds the small tables a rule names)
/// and run at once, each within the session's time limit and all within its memory limit.
pub async fn run_all(
    rules: &[Rule],
    session: &mut AuditSession,
    from_seq: u64,
    to_seq: u64,
    fleet_learning_us: i64,
) -> (Vec<Detection>, Vec<RuleProblem>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let timeout = session.timeout();
    let mut running = Vec::with_capacity(rules.len());
    for rule in rules {
        match session
            .plan(&rule.sql_for(from_seq, to_seq, fleet_learning_us))
            .await
        {
            Err(e) => problems.push(rule.problem(e.to_string())),
            Ok(df) => {
                let owned = rule.clone();
                running.push((
                    rule,
                    tokio::spawn(async move {
                        let rule = owned;
                        let started = std::time::Instant::now();
                        let batches = match tokio::time::timeout(timeout, df.collect()).await {
                            Err(_) => Err(QueryError::Timeout(timeout)),
                            Ok(r) => r.map_err(QueryError::from),
                        };
                        tracing::debug!(rule = %rule.origin, from_seq, to_seq,
                        ms = started.elapsed().as_millis() as u64, "rule ran");
                        rule.detections(batches)
                    }),
                ));
            }
        }
    }
    for (rule, task) in running {
        match task.await {
            Ok(Ok(d)) => found.extend(d),
            Ok(Err(p)) => problems.push(p),
            Err(e) => problems.push(rule.problem(format!("the run stopped: {e}"))),
        }
    }
    found.sort();
    (found, problems)
}

/// Plans every rule without running it: a rule whose SQL does not plan is a problem now, not at its first window.
pub async fn check_all(rules: &[Rule], session: &mut AuditSession) -> Vec<RuleProblem> {
    let mut problems = Vec::new();
    for rule in rules {
        let problem = |why: String| RuleProblem {
            origin: rule.origin.clone(),
            line: None,
            why,
        };
        match session.plan(&rule.sql_for(0, 0, LEARNING_DEFAULT_US)).await {
            Err(e) => problems.push(problem(format!("its SQL does not plan: {e}"))),
            Ok(df) => {
                let missing: Vec<&str> = OUTPUT_COLUMNS
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|c| df.schema().field_with_unqualified_name(c).is_err())
                    .collect();
                if !missing.is_empty() {
                    problems.push(problem(format!(
                        "its SQL returns no {} column (it must return {})",
                        missing.join(", "),
                        OUTPUT_COLUMNS
                            .iter()
                            .map(|(c, _)| *c)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_rule_parses() {
        let (rules, problems) = load(None, true);
        assert_eq!(problems, vec![]);
        assert_eq!(rules.len(), BUILT_IN.len());
    }

    #[test]
    fn a_broken_rule_is_named_with_its_line() {
        let text = "title: x\nid: 7d5f9f0e-0000-4000-8000-000000000001\nlevel: loud\ndocket:\n  sql: SELECT 1\n";
        let p = parse_rule("r.yml", text).expect_err("bad level");
        assert_eq!(p.line, Some(3));
        assert!(p.why.contains("level \"loud\""), "{}", p.why);
        let p = parse_rule("r.yml", "title: x\nid: nope\nlevel: low\n").expect_err("bad id");
        assert_eq!(p.line, Some(2));
        let p = parse_rule("r.yml", "title: [x\n").expect_err("bad yaml");
        assert!(p.line.is_some(), "{p}");
        let text = "title: x\nid: 7d5f9f0e-0000-4000-8000-000000000001\nlevel: low\ndocket:\n  sql: SELECT 1\n  learning: 3 weeks\n";
        let p = parse_rule("r.yml", text).expect_err("bad duration");
        assert_eq!(p.line, Some(6));
    }

    #[test]
    fn a_file_that_is_not_a_rule_is_not_printed_whole() {
        let secret = format!("root:x:0:0:{}", "s".repeat(2_000));
        let p = parse_rule("passwd", &secret).expect_err("not a rule");
        assert!(p.why.len() < 300, "{}", p.why);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration_us("30m"), Some(1_800_000_000));
        assert_eq!(parse_duration_us("7d"), Some(604_800_000_000));
        assert_eq!(parse_duration_us("7"), None);
        assert_eq!(parse_duration_us("d"), None);
        assert_eq!(parse_duration_us("99999999999999999d"), None);
    }
}
