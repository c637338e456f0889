//! What the UI holds: the screen, the analyst's selections and inputs, and the data the shell fed
//! it, every buffer bounded by a named limit so memory stays flat however fast the ledger grows.

use std::collections::{BTreeSet, VecDeque};

pub use docket_schemas::{CloseReason, Level, Risk, TriageStatus};

use crate::update::Command;

/// Live events kept for scrolling back; older ones fall off the end.
pub const EVENTS_KEPT_MAX: usize = 10_000;
/// Findings kept; closed and low ones are dropped first.
pub const FINDINGS_KEPT_MAX: usize = 5_000;
/// Agents kept from the shell's last list.
pub const AGENTS_KEPT_MAX: usize = 5_000;
/// Pending approvals kept from the shell's last list.
pub const APPROVALS_KEPT_MAX: usize = 1_000;
/// Ingest-rate samples kept for the overview's chart (one per overview message).
pub const RATE_SAMPLES_MAX: usize = 600;
/// Queries remembered for up/down in the editor.
pub const QUERY_HISTORY_MAX: usize = 100;
/// Result rows kept from one query.
pub const QUERY_ROWS_MAX: usize = 5_000;
/// Result columns kept from one query.
pub const QUERY_COLUMNS_MAX: usize = 64;
/// Lines kept per section of an entry's detail.
pub const DETAIL_LINES_MAX: usize = 500;
/// Timeline events and holdings kept for one opened agent.
pub const TIMELINE_KEPT_MAX: usize = 1_000;
/// Evidence seqs kept per finding.
pub const EVIDENCE_SEQS_MAX: usize = 256;
/// Characters accepted in any text input (command line, filter, SQL editor).
pub const INPUT_CHARS_MAX: usize = 4_096;
/// Screens remembered for Esc to go back to.
pub const SCREEN_HISTORY_MAX: usize = 16;
/// Buckets drawn in a time histogram.
pub const HISTOGRAM_BUCKETS_MAX: usize = 240;
/// Bucket widths of the time histogram, finest first; `+` and `-` step through them.
pub const HISTOGRAM_BUCKET_US: [i64; 6] = [
    1_000_000,
    10_000_000,
    60_000_000,
    600_000_000,
    3_600_000_000,
    86_400_000_000,
];
/// How long a status message stays on the bottom line.
pub const STATUS_SHOWN_US: i64 = 8 * 1_000_000;
/// How long a suppression made from the UI lasts.
pub const SUPPRESS_FOR_US: i64 = 24 * 3_600 * 1_000_000;

const _: () = assert!(TIMELINE_KEPT_MAX <= EVENTS_KEPT_MAX);
const _: () = assert!(QUERY_HISTORY_MAX <= QUERY_ROWS_MAX);
const _: () = assert!(HISTOGRAM_BUCKETS_MAX > 0 && RATE_SAMPLES_MAX > 0);

/// The screens, in the order the header lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Screen {
    Overview,
    Live,
    Findings,
    Agents,
    Approvals,
    Query,
}

impl Screen {
    pub const ALL: [Screen; 6] = [
        Screen::Overview,
        Screen::Live,
        Screen::Findings,
        Screen::Agents,
        Screen::Approvals,
        Screen::Query,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Screen::Overview => "overview",
            Screen::Live => "live",
            Screen::Findings => "findings",
            Screen::Agents => "agents",
            Screen::Approvals => "approvals",
            Screen::Query => "query",
        }
    }

    /// The screen a typed name means: the first whose name starts with it, as k9s accepts
    /// `:dep` for deployments. Every screen name starts with a different letter, so one letter is
    /// enough and never ambiguous.
    pub fn from_prefix(text: &str) -> Option<Screen> {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() {
            return None;
        }
        Screen::ALL
            .into_iter()
            .find(|s| s.name().starts_with(&text))
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Screen::Overview => 0,
            Screen::Live => 1,
            Screen::Findings => 2,
            Screen::Agents => 3,
            Screen::Approvals => 4,
            Screen::Query => 5,
        }
    }
}

/// The link to NATS as the shell last reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connected,
    /// Lost at `since_us`; the shell retries by itself.
    Lost {
        since_us: i64,
        error: String,
    },
    /// Never connected yet: the first connection is being tried again.
    Connecting {
        since_us: i64,
        error: String,
        attempt: u32,
    },
    /// A retry is under way.
    Reconnecting {
        since_us: i64,
        error: String,
        attempt: u32,
    },
}

/// One ledger entry as the Live screen lists it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EventRow {
    pub seq: u64,
    pub ts_us: i64,
    pub kind: String,
    pub agent: String,
    pub user: String,
    pub audience: String,
    /// One line saying what happened, written by the shell.
    pub summary: String,
    pub signer_key_id: String,
}

impl EventRow {
    /// Whether a Live filter (already lower-cased) matches: agent, user, audience or kind.
    pub fn matches(&self, filter_lower: &str) -> bool {
        filter_lower.is_empty()
            || [&self.agent, &self.user, &self.audience, &self.kind]
                .iter()
                .any(|f| f.to_lowercase().contains(filter_lower))
    }
}

/// One detection or policy finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindingRow {
    /// `<rule id>@<seq>`, the name triage uses.
    pub finding_id: String,
    pub rule_id: String,
    pub title: String,
    pub level: Level,
    pub agent: String,
    pub user: String,
    pub audience: String,
    /// Why the rule fired, in words.
    pub explanation: String,
    pub observed: String,
    pub baseline: String,
    pub evidence_seqs: Vec<u64>,
    /// None while nobody has triaged it.
    pub status: Option<TriageStatus>,
    pub suppressed: bool,
    pub seq: u64,
    pub ts_us: i64,
}

impl FindingRow {
    pub fn is_closed(&self) -> bool {
        self.status == Some(TriageStatus::Closed)
    }

    /// Open as the overview and `docket findings --open` count it: not triaged yet, or
    /// reopened; neither suppressed nor acknowledged, escalated or closed.
    pub fn is_open(&self) -> bool {
        !self.suppressed && matches!(self.status, None | Some(TriageStatus::Reopened))
    }

    /// Whether a Findings filter (lower-cased) matches: agent, rule, title or level.
    pub fn matches(&self, filter_lower: &str) -> bool {
        filter_lower.is_empty()
            || [&self.agent, &self.rule_id, &self.title, self.level.as_str()]
                .iter()
                .any(|f| f.to_lowercase().contains(filter_lower))
    }

    pub fn status_name(&self) -> &'static str {
        match (self.suppressed, self.status) {
            (true, _) => "suppressed",
            (false, None) => "open",
            (false, Some(s)) => s.as_str(),
        }
    }
}

/// One agent's figures.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AgentRow {
    pub name: String,
    pub calls: u64,
    pub grants: u64,
    pub live_tokens: u64,
    pub open_findings: u64,
    pub suspended: bool,
}

/// What an agent holds that can be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldingKind {
    Token,
    Grant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub kind: HoldingKind,
    pub id: String,
    pub audience: String,
    pub scopes: Vec<String>,
    /// Tokens expire; grants may not.
    pub expires_at_us: Option<i64>,
}

/// An opened agent: what it holds and what it did, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AgentDetail {
    pub agent: String,
    pub holdings: Vec<Holding>,
    pub timeline: Vec<EventRow>,
}

/// A request waiting for a human.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub agent: String,
    pub user: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub risk: Risk,
    /// What the user sees on their device; the approver must compare it.
    pub binding_message: String,
    pub expires_at_us: i64,
    pub step_up_required: bool,
}

impl ApprovalRow {
    /// Whether `you` may decide it: only the user asked can (the vault refuses anyone else).
    pub fn is_for(&self, you: Option<&str>) -> bool {
        you == Some(self.user.as_str())
    }

    pub fn matches(&self, filter_lower: &str) -> bool {
        filter_lower.is_empty()
            || [&self.agent, &self.user, &self.audience, &self.approval_id]
                .iter()
                .any(|f| f.to_lowercase().contains(filter_lower))
    }
}

/// The overview's figures as the shell last computed them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OverviewFigures {
    pub ingest_events_per_s: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub checkpoint: Option<CheckpointFigure>,
    pub agents: u64,
    pub active_grants: u64,
    pub live_tokens: u64,
    pub pending_approvals: u64,
    /// Open findings per level, as many as there are levels (missing ones count 0).
    pub open_findings: Vec<(Level, u64)>,
    pub rejected_events: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFigure {
    pub seq: u64,
    /// Whether its signature verified and it matches the chain; `None` when the UI cannot
    /// check (over NATS it has no copy of the chain to match).
    pub verified: Option<bool>,
}

/// What the shell shows about one entry, already formatted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EntryDetail {
    pub seq: u64,
    pub entry: Vec<String>,
    pub envelope: Vec<String>,
    pub signer: Vec<String>,
}

/// A query's answer, as text.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueryResult {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The answer had more rows than the shell fetched (it stops reading past its limit).
    pub more: bool,
}

/// A message on the status line: an action's outcome, or why a key did nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub is_error: bool,
    /// When it was set (the last tick's reading); it clears `STATUS_SHOWN_US` later.
    pub at_us: i64,
}

/// What the bottom line is typing into, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Normal,
    /// After `:`: a screen name.
    Command(String),
    /// After `/`: the current screen's filter, applied as it is typed.
    Filter,
}

/// A window over everything else; keys go to it first.
#[derive(Clone, Debug, PartialEq)]
pub enum Overlay {
    Help,
    /// A destructive action waiting for `y`; says exactly what will end.
    Confirm {
        message: String,
        command: Command,
    },
    /// Why the findings are being closed.
    CloseReason {
        finding_ids: Vec<String>,
        selected: usize,
    },
    /// An entry's detail; `detail` is None until the shell answers.
    Entry {
        seq: u64,
        detail: Option<EntryDetail>,
        error: Option<String>,
        scroll: usize,
    },
}

pub const CLOSE_REASONS: [CloseReason; 4] = [
    CloseReason::FalsePositive,
    CloseReason::Benign,
    CloseReason::Resolved,
    CloseReason::Duplicate,
];

/// A list's cursor. The view derives scrolling from it, so the model needs no terminal size
/// to stay consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cursor {
    pub selected: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LiveState {
    pub events: VecDeque<EventRow>,
    pub cursor: Cursor,
    pub filter: String,
    pub paused: bool,
    /// While paused, the newest seq shown; later events are kept but hidden.
    pub paused_at_seq: Option<u64>,
    /// Events that arrived while paused (shown as a count).
    pub missed_while_paused: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FindingsState {
    pub findings: Vec<FindingRow>,
    pub cursor: Cursor,
    pub filter: String,
    pub marked: BTreeSet<String>,
    /// The detail of the selected finding fills the body (at any width).
    pub detail_open: bool,
    /// Which evidence seq Enter opens in the detail.
    pub evidence_cursor: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AgentsState {
    pub agents: Vec<AgentRow>,
    pub cursor: Cursor,
    pub filter: String,
    /// The opened agent, once the shell answered `OpenAgent`.
    pub detail: Option<AgentDetail>,
    /// Which agent is open (or being opened).
    pub open: Option<String>,
    pub holding_cursor: Cursor,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApprovalsState {
    pub approvals: Vec<ApprovalRow>,
    pub cursor: Cursor,
    pub filter: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryState {
    pub input: String,
    /// Typing goes to the editor; Esc leaves it so `q`, `:` and the arrows act on the screen.
    pub editing: bool,
    pub history: VecDeque<String>,
    /// Where up/down is in the history (0 is the latest), None while on the fresh input.
    pub history_pos: Option<usize>,
    pub result: Option<QueryResult>,
    /// Rows the shell sent beyond `QUERY_ROWS_MAX`.
    pub rows_dropped: usize,
    pub error: Option<String>,
    pub running: bool,
    pub cursor: Cursor,
}

impl Default for QueryState {
    fn default() -> Self {
        QueryState {
            input: String::new(),
            editing: true,
            history: VecDeque::new(),
            history_pos: None,
            result: None,
            rows_dropped: 0,
            error: None,
            running: false,
            cursor: Cursor::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OverviewState {
    pub figures: OverviewFigures,
    /// Events per second, oldest first.
    pub rate_history: VecDeque<u64>,
    /// Whether any figures arrived yet.
    pub received: bool,
}

/// The time histogram under a list: shown or not, and its bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HistogramState {
    pub shown: bool,
    /// Index into `HISTOGRAM_BUCKET_US`.
    pub zoom: usize,
}

impl HistogramState {
    pub fn bucket_us(self) -> i64 {
        HISTOGRAM_BUCKET_US[self.zoom.min(HISTOGRAM_BUCKET_US.len() - 1)]
    }
}

/// Everything the UI knows. Change it only through `update`, which keeps the bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub screen: Screen,
    pub screen_history: Vec<Screen>,
    pub readonly: bool,
    /// The user the analyst's key decides for, as the ledger registered it; `None` when the key
    /// is not a user's (or there is no key, or the shell has not looked yet).
    pub you: Option<String>,
    pub connection: Connection,
    /// The clock reading of the last tick; every "ago" and "left" is measured from it.
    pub now_us: i64,
    pub width: u16,
    pub height: u16,
    pub input: Input,
    pub overlay: Option<Overlay>,
    pub status: Option<Status>,
    pub histogram: HistogramState,
    pub overview: OverviewState,
    pub live: LiveState,
    pub findings: FindingsState,
    pub agents: AgentsState,
    pub approvals: ApprovalsState,
    pub query: QueryState,
}

impl Model {
    /// A model with no data yet, on the Overview, connected, at `now_us`.
    pub fn new(readonly: bool, now_us: i64) -> Model {
        Model {
            screen: Screen::Overview,
            screen_history: Vec::new(),
            readonly,
            you: None,
            connection: Connection::Connected,
            now_us,
            width: 80,
            height: 24,
            input: Input::Normal,
            overlay: None,
            status: None,
            histogram: HistogramState::default(),
            overview: OverviewState::default(),
            live: LiveState::default(),
            findings: FindingsState::default(),
            agents: AgentsState::default(),
            approvals: ApprovalsState::default(),
            query: QueryState::default(),
        }
    }

    /// The Live rows on screen, newest first: filtered, and frozen while paused.
    pub fn live_rows(&self) -> impl Iterator<Item = &EventRow> {
        let filter = self.live.filter.to_lowercase();
        let until = self.live.paused_at_seq;
        self.live
            .events
            .iter()
            .filter(move |e| until.is_none_or(|u| e.seq <= u) && e.matches(&filter))
    }

    pub fn finding_rows(&self) -> impl Iterator<Item = &FindingRow> {
        let filter = self.findings.filter.to_lowercase();
        self.findings
            .findings
            .iter()
            .filter(move |f| f.matches(&filter))
    }

    pub fn agent_rows(&self) -> impl Iterator<Item = &AgentRow> {
        let filter = self.agents.filter.to_lowercase();
        self.agents
            .agents
            .iter()
            .filter(move |a| filter.is_empty() || a.name.to_lowercase().contains(&filter))
    }

    pub fn approval_rows(&self) -> impl Iterator<Item = &ApprovalRow> {
        let filter = self.approvals.filter.to_lowercase();
        self.approvals
            .approvals
            .iter()
            .filter(move |a| a.matches(&filter))
    }

    pub fn selected_event(&self) -> Option<&EventRow> {
        self.live_rows().nth(self.live.cursor.selected)
    }

    pub fn selected_finding(&self) -> Option<&FindingRow> {
        self.finding_rows().nth(self.findings.cursor.selected)
    }

    pub fn selected_agent(&self) -> Option<&AgentRow> {
        self.agent_rows().nth(self.agents.cursor.selected)
    }

    pub fn selected_approval(&self) -> Option<&ApprovalRow> {
        self.approval_rows().nth(self.approvals.cursor.selected)
    }

    /// The filter of the current screen, if it has one.
    pub fn filter(&self) -> Option<&str> {
        match self.screen {
            Screen::Live => Some(&self.live.filter),
            Screen::Findings => Some(&self.findings.filter),
            Screen::Agents => Some(&self.agents.filter),
            Screen::Approvals => Some(&self.approvals.filter),
            Screen::Overview | Screen::Query => None,
        }
    }

    /// Timestamps of what the current screen lists, for the histogram.
    pub fn view_timestamps_us(&self) -> Vec<i64> {
        match self.screen {
            Screen::Live => self.live_rows().map(|e| e.ts_us).collect(),
            Screen::Findings => self.finding_rows().map(|f| f.ts_us).collect(),
            Screen::Agents => self
                .agents
                .detail
                .as_ref()
                .map(|d| d.timeline.iter().map(|e| e.ts_us).collect())
                .unwrap_or_default(),
            Screen::Overview | Screen::Approvals | Screen::Query => Vec::new(),
        }
    }
}

/// Counts per bucket of `bucket_us`, ending at the bucket holding `now_us`, oldest first; at
/// most `buckets` (and `HISTOGRAM_BUCKETS_MAX`) buckets, so drawing cost is bounded.
pub fn histogram(timestamps_us: &[i64], now_us: i64, bucket_us: i64, buckets: usize) -> Vec<u64> {
    let buckets = buckets.clamp(1, HISTOGRAM_BUCKETS_MAX);
    let bucket_us = bucket_us.max(1);
    let last = now_us.div_euclid(bucket_us);
    let first = last - (buckets as i64 - 1);
    let mut counts = vec![0u64; buckets];
    for ts in timestamps_us {
        let b = ts.div_euclid(bucket_us);
        if (first..=last).contains(&b) {
            let i = (b - first) as usize;
            counts[i] += 1;
        }
    }
    counts
}
