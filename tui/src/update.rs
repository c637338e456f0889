//! How the UI changes: `update` folds one message into the model and returns what the shell
//! must do. No I/O and no clock: time arrives in `Msg::Tick`, so every key is testable.

use crate::model::{AGENTS_KEPT_MAX, APPROVALS_KEPT_MAX, AgentRow};
use crate::model::{
    AgentDetail, ApprovalRow, CLOSE_REASONS, CloseReason, Connection, Cursor, DETAIL_LINES_MAX,
    EVENTS_KEPT_MAX, EVIDENCE_SEQS_MAX, EntryDetail, EventRow, FINDINGS_KEPT_MAX, FindingRow,
    HISTOGRAM_BUCKET_US, HoldingKind, INPUT_CHARS_MAX, Input, Model, Overlay, OverviewFigures,
    QUERY_COLUMNS_MAX, QUERY_HISTORY_MAX, QUERY_ROWS_MAX, QueryResult, RATE_SAMPLES_MAX,
    SCREEN_HISTORY_MAX, STATUS_SHOWN_US, SUPPRESS_FOR_US, Screen, Status, TIMELINE_KEPT_MAX,
    TriageStatus,
};

/// A key press, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// A letter with Ctrl held.
    Ctrl(char),
    Enter,
    Esc,
    Backspace,
    Tab,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
}

/// Everything that can happen to the UI.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    Key(Key),
    /// The clock, read by the runner.
    Tick {
        now_us: i64,
    },
    Resize {
        width: u16,
        height: u16,
    },
    /// New ledger entries, in any order (the model keeps them newest first by seq).
    Events(Vec<EventRow>),
    /// New or changed findings, matched by `finding_id`.
    Findings(Vec<FindingRow>),
    /// The full agent list; replaces the previous one.
    Agents(Vec<AgentRow>),
    /// The answer to `Command::OpenAgent`.
    AgentDetail(AgentDetail),
    /// The full list of pending approvals; replaces the previous one.
    Approvals(Vec<ApprovalRow>),
    Overview(OverviewFigures),
    QueryResult(QueryResult),
    QueryFailed(String),
    /// The answer to `Command::OpenEntry`.
    EntryDetail(EntryDetail),
    EntryFailed {
        seq: u64,
        error: String,
    },
    Connection(Connection),
    /// Who the analyst's key decides for (see `Model::you`).
    You(Option<String>),
    /// Text pasted into the terminal (bracketed paste): one insertion, never a run of keys.
    Paste(String),
    /// What became of a command: `action` is `Command::describe`, `outcome` what the ledger
    /// said (e.g. the seq it appended at) or why it failed.
    ActionOutcome {
        action: String,
        outcome: Result<String, String>,
    },
}

/// What the shell must do for the UI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sign and publish an approval decision.
    Decide {
        approval_id: String,
        approve: bool,
    },
    /// Sign and publish one `finding.triaged` per id.
    Triage {
        finding_ids: Vec<String>,
        status: TriageStatus,
        reason: Option<CloseReason>,
    },
    /// Sign and publish a `finding.suppressed` lasting until `until_us`.
    Suppress {
        rule_id: String,
        agent: Option<String>,
        until_us: i64,
    },
    RevokeToken {
        token_id: String,
    },
    RevokeGrant {
        grant_id: String,
    },
    SuspendAgent {
        agent: String,
    },
    RunQuery {
        sql: String,
    },
    /// Fetch an entry's detail and answer with `Msg::EntryDetail` (or `EntryFailed`).
    OpenEntry {
        seq: u64,
    },
    /// Fetch an agent's holdings and timeline and answer with `Msg::AgentDetail`.
    OpenAgent {
        agent: String,
    },
    Quit,
}

impl Command {
    /// A short description for the status line and `Msg::ActionOutcome`.
    pub fn describe(&self) -> String {
        match self {
            Command::Decide {
                approval_id,
                approve,
            } => format!(
                "{} {approval_id}",
                if *approve { "approve" } else { "deny" }
            ),
            Command::Triage {
                finding_ids,
                status,
                reason,
            } => {
                let reason = reason.map(|r| format!(" ({})", r.as_str()));
                format!(
                    "{} {} finding(s){}",
                    status.as_str(),
                    finding_ids.len(),
                    reason.unwrap_or_default()
                )
            }
            Command::Suppress { rule_id, agent, .. } => match agent {
                Some(a) => format!("suppress {rule_id} for {a}"),
                None => format!("suppress {rule_id}"),
            },
            Command::RevokeToken { token_id } => format!("revoke token {token_id}"),
            Command::RevokeGrant { grant_id } => format!("revoke grant {grant_id}"),
            Command::SuspendAgent { agent } => format!("suspend agent {agent}"),
            Command::RunQuery { .. } => "query".to_string(),
            Command::OpenEntry { seq } => format!("open entry {seq}"),
            Command::OpenAgent { agent } => format!("open agent {agent}"),
            Command::Quit => "quit".to_string(),
        }
    }

    /// Whether it changes the ledger, and so is refused in read-only mode.
    pub fn is_action(&self) -> bool {
        matches!(
            self,
            Command::Decide { .. }
                | Command::Triage { .. }
                | Command::Suppress { .. }
                | Command::RevokeToken { .. }
                | Command::RevokeGrant { .. }
                | Command::SuspendAgent { .. }
        )
    }
}

/// One line of the help: the key, what it does, and whether it changes the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHelp {
    pub keys: &'static str,
    pub what: &'static str,
    pub action: bool,
}

const fn nav(keys: &'static str, what: &'static str) -> KeyHelp {
    KeyHelp {
        keys,
        what,
        action: false,
    }
}

const fn act(keys: &'static str, what: &'static str) -> KeyHelp {
    KeyHelp {
        keys,
        what,
        action: true,
    }
}

const GLOBAL_KEYS: &[KeyHelp] = &[
    nav(
        ":name",
        "switch screen (:li, :fi, :ag, :ap, :qu, :ov); :q quits",
    ),
    nav("j/k ↑/↓", "move"),
    nav("g/G PgUp/PgDn", "top, bottom, page"),
    nav("Enter", "open"),
    nav("Esc", "back"),
    nav("?", "this help"),
    nav("q", "quit"),
];

/// The keys of `screen`, actions left out when read-only.
pub fn key_help(screen: Screen, readonly: bool) -> Vec<KeyHelp> {
    let own: &[KeyHelp] = match screen {
        Screen::Overview => &[],
        Screen::Live => &[
            nav("/", "filter by agent, user, audience, kind"),
            nav("p", "pause / resume"),
            nav("t", "time histogram; +/- zoom"),
        ],
        Screen::Findings => &[
            nav("/", "filter by agent, rule, level"),
            nav("space", "mark / unmark"),
            nav("t", "time histogram; +/- zoom"),
            act("a", "acknowledge"),
            act("c", "close with a reason"),
            act("e", "escalate"),
            act("s", "suppress the rule for the agent (24 h)"),
        ],
        Screen::Agents => &[
            nav("/", "filter by name"),
            nav("t", "timeline histogram; +/- zoom"),
            act("S", "suspend the agent"),
            act("r", "revoke the selected token or grant"),
        ],
        Screen::Approvals => &[
            nav("/", "filter by agent, user, audience"),
            act("a", "approve"),
            act("d", "deny"),
        ],
        Screen::Query => &[
            nav("Enter", "run the query (in the editor)"),
            nav("↑/↓", "history (in the editor)"),
            nav("Esc / i", "leave / re-enter the editor"),
            nav("Enter", "open the row's seq (outside the editor)"),
        ],
    };
    own.iter()
        .chain(GLOBAL_KEYS)
        .filter(|k| !(readonly && k.action))
        .copied()
        .collect()
}

/// Fold one message into the model; return what the shell must do, in order.
pub fn update(model: &mut Model, msg: Msg) -> Vec<Command> {
    match msg {
        Msg::Key(key) => on_key(model, key),
        Msg::Tick { now_us } => {
            model.now_us = now_us;
            if model
                .status
                .as_ref()
                .is_some_and(|s| now_us.saturating_sub(s.at_us) > STATUS_SHOWN_US)
            {
                model.status = None;
            }
            Vec::new()
        }
        Msg::Resize { width, height } => {
            model.width = width;
            model.height = height;
            Vec::new()
        }
        Msg::Events(events) => {
            add_events(model, events);
            Vec::new()
        }
        Msg::Findings(findings) => {
            add_findings(model, findings);
            Vec::new()
        }
        Msg::Agents(agents) => {
            set_agents(model, agents);
            Vec::new()
        }
        Msg::AgentDetail(detail) => {
            set_agent_detail(model, detail);
            Vec::new()
        }
        Msg::Approvals(approvals) => {
            set_approvals(model, approvals);
            Vec::new()
        }
        Msg::Overview(figures) => {
            let history = &mut model.overview.rate_history;
            history.push_back(figures.ingest_events_per_s);
            while history.len() > RATE_SAMPLES_MAX {
                history.pop_front();
            }
            model.overview.figures = figures;
            model.overview.received = true;
            Vec::new()
        }
        Msg::QueryResult(result) => {
            set_query_result(model, result);
            Vec::new()
        }
        Msg::QueryFailed(error) => {
            model.query.running = false;
            model.query.result = None;
            model.query.error = Some(error);
            // Back into the editor, so the mistake can be fixed rather than retyped.
            if model.query.input.is_empty()
                && let Some(sql) = model.query.history.front()
            {
                model.query.input = sql.clone();
            }
            Vec::new()
        }
        Msg::EntryDetail(detail) => {
            if let Some(Overlay::Entry {
                seq,
                detail: slot,
                error,
                ..
            }) = &mut model.overlay
                && *seq == detail.seq
            {
                *slot = Some(bounded_detail(detail));
                *error = None;
            }
            Vec::new()
        }
        Msg::EntryFailed { seq, error } => {
            if let Some(Overlay::Entry {
                seq: open,
                error: slot,
                ..
            }) = &mut model.overlay
                && *open == seq
            {
                *slot = Some(error);
            }
            Vec::new()
        }
        Msg::Connection(connection) => {
            model.connection = connection;
            Vec::new()
        }
        Msg::You(you) => {
            model.you = you;
            // The same list, sorted again: yours first.
            let approvals = model.approvals.approvals.clone();
            set_approvals(model, approvals);
            Vec::new()
        }
        Msg::Paste(text) => {
            on_paste(model, &text);
            Vec::new()
        }
        Msg::ActionOutcome { action, outcome } => {
            model.status = Some(match outcome {
                Ok(said) => Status {
                    text: format!("{action}: {said}"),
                    is_error: false,
                    at_us: model.now_us,
                },
                Err(why) => Status {
                    text: format!("{action} failed: {why}"),
                    is_error: true,
                    at_us: model.now_us,
                },
            });
            Vec::new()
        }
    }
}

fn add_events(model: &mut Model, mut events: Vec<EventRow>) {
    events.sort_by_key(|e| e.seq);
    let live = &mut model.live;
    let filter = live.filter.to_lowercase();
    let mut shown_new = 0usize;
    for event in events {
        if live.events.front().is_some_and(|f| f.seq >= event.seq) {
            // A late or repeated entry: the stream is newest first and replays must not
            // duplicate rows, so only strictly newer seqs are added at the front.
            continue;
        }
        if live.paused {
            live.missed_while_paused += 1;
        } else if event.matches(&filter) {
            shown_new += 1;
        }
        live.events.push_front(event);
    }
    live.events.truncate(EVENTS_KEPT_MAX);
    // Scrolled back: keep the same row under the cursor rather than sliding away from it.
    if live.cursor.selected > 0 {
        live.cursor.selected += shown_new;
    }
    let shown = model.live_rows().count();
    clamp(&mut model.live.cursor, shown);
}

fn add_findings(model: &mut Model, findings: Vec<FindingRow>) {
    let selected_id = model
        .selected_finding()
        .map(|f| f.finding_id.clone())
        .unwrap_or_default();
    let state_findings = &mut model.findings.findings;
    for mut finding in findings {
        finding.evidence_seqs.truncate(EVIDENCE_SEQS_MAX);
        match state_findings
            .iter_mut()
            .find(|f| f.finding_id == finding.finding_id)
        {
            Some(slot) => *slot = finding,
            None => state_findings.push(finding),
        }
    }
    // Open before closed, worst first, newest first: the order the analyst works in, and the
    // order in which the bound drops the least useful rows.
    state_findings.sort_by(|a, b| {
        (
            a.is_closed(),
            std::cmp::Reverse(a.level),
            std::cmp::Reverse(a.seq),
        )
            .cmp(&(
                b.is_closed(),
                std::cmp::Reverse(b.level),
                std::cmp::Reverse(b.seq),
            ))
    });
    state_findings.truncate(FINDINGS_KEPT_MAX);
    let ids: std::collections::BTreeSet<&String> =
        state_findings.iter().map(|f| &f.finding_id).collect();
    model.findings.marked.retain(|id| ids.contains(id));
    let position = model
        .finding_rows()
        .position(|f| f.finding_id == selected_id);
    reselect(&mut model.findings.cursor, position);
    let shown = model.finding_rows().count();
    clamp(&mut model.findings.cursor, shown);
}

fn set_agents(model: &mut Model, mut agents: Vec<AgentRow>) {
    let selected = model.selected_agent().map(|a| a.name.clone());
    agents.sort_by(|a, b| natural_order(&a.name, &b.name));
    agents.truncate(AGENTS_KEPT_MAX);
    model.agents.agents = agents;
    let position = selected.and_then(|name| model.agent_rows().position(|a| a.name == name));
    reselect(&mut model.agents.cursor, position);
    let shown = model.agent_rows().count();
    clamp(&mut model.agents.cursor, shown);
}

/// Names compared as people read them: runs of digits by their value, so `agent-2` comes
/// before `agent-10`; equal values fall back to the text (`agent-02` after `agent-2`).
pub fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut digits = None;
        for (i, c) in s.char_indices() {
            let d = c.is_ascii_digit();
            if digits.is_some_and(|was| was != d) {
                out.push((digits == Some(true), &s[start..i]));
                start = i;
            }
            digits = Some(d);
        }
        if start < s.len() {
            out.push((digits == Some(true), &s[start..]));
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let order = match (x, y) {
            ((true, x), (true, y)) => {
                let (tx, ty) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                // By value; at equal values, fewer leading zeros first.
                tx.len()
                    .cmp(&ty.len())
                    .then_with(|| tx.cmp(ty))
                    .then_with(|| x.len().cmp(&y.len()))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != std::cmp::Ordering::Equal {
            return order;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

fn set_agent_detail(model: &mut Model, mut detail: AgentDetail) {
    if model.agents.open.as_deref() != Some(detail.agent.as_str()) {
        return; // An answer for an agent the analyst has since left.
    }
    detail.holdings.truncate(TIMELINE_KEPT_MAX);
    detail.timeline.truncate(TIMELINE_KEPT_MAX);
    let holdings = detail.holdings.len();
    model.agents.detail = Some(detail);
    clamp(&mut model.agents.holding_cursor, holdings);
}

fn set_approvals(model: &mut Model, mut approvals: Vec<ApprovalRow>) {
    let selected = model.selected_approval().map(|a| a.approval_id.clone());
    // Yours first, each group soonest to expire first: what you can act on is at the top.
    let you = model.you.clone();
    approvals.sort_by_key(|a| (!a.is_for(you.as_deref()), a.expires_at_us));
    approvals.truncate(APPROVALS_KEPT_MAX);
    model.approvals.approvals = approvals;
    let position = selected.and_then(|id| model.approval_rows().position(|a| a.approval_id == id));
    reselect(&mut model.approvals.cursor, position);
    let shown = model.approval_rows().count();
    clamp(&mut model.approvals.cursor, shown);
}

fn set_query_result(model: &mut Model, mut result: QueryResult) {
    let query = &mut model.query;
    query.running = false;
    query.error = None;
    query.rows_dropped = result.rows.len().saturating_sub(QUERY_ROWS_MAX);
    result.rows.truncate(QUERY_ROWS_MAX);
    result.header.truncate(QUERY_COLUMNS_MAX);
    for row in &mut result.rows {
        row.truncate(QUERY_COLUMNS_MAX);
    }
    query.cursor = Cursor::default();
    query.result = Some(result);
}

fn bounded_detail(mut detail: EntryDetail) -> EntryDetail {
    detail.entry.truncate(DETAIL_LINES_MAX);
    detail.envelope.truncate(DETAIL_LINES_MAX);
    detail.signer.truncate(DETAIL_LINES_MAX);
    detail
}

fn reselect(cursor: &mut Cursor, position: Option<usize>) {
    if let Some(p) = position {
        cursor.selected = p;
    }
}

fn clamp(cursor: &mut Cursor, len: usize) {
    cursor.selected = cursor.selected.min(len.saturating_sub(1));
}

fn on_key(model: &mut Model, key: Key) -> Vec<Command> {
    if key == Key::Ctrl('c') {
        return vec![Command::Quit];
    }
    if model.overlay.is_some() {
        return on_overlay_key(model, key);
    }
    match model.input.clone() {
        Input::Command(text) => return on_command_key(model, text, key),
        Input::Filter => {
            on_filter_key(model, key);
            return Vec::new();
        }
        Input::Normal => {}
    }
    if model.screen == Screen::Query && model.query.editing {
        return on_editor_key(model, key);
    }
    match key {
        Key::Char('q') => return vec![Command::Quit],
        Key::Char(':') => {
            model.input = Input::Command(String::new());
            return Vec::new();
        }
        Key::Char('?') => {
            model.overlay = Some(Overlay::Help);
            return Vec::new();
        }
        Key::Char('/') if model.filter().is_some() => {
            model.input = Input::Filter;
            return Vec::new();
        }
        Key::Char('t') if histogram_applies(model.screen) => {
            model.histogram.shown = !model.histogram.shown;
            return Vec::new();
        }
        Key::Char('+') if model.histogram.shown => {
            model.histogram.zoom = model.histogram.zoom.saturating_sub(1);
            return Vec::new();
        }
        Key::Char('-') if model.histogram.shown => {
            model.histogram.zoom = (model.histogram.zoom + 1).min(HISTOGRAM_BUCKET_US.len() - 1);
            return Vec::new();
        }
        Key::Tab => {
            let next = Screen::ALL[(model.screen.index() + 1) % Screen::ALL.len()];
            switch_screen(model, next);
            return Vec::new();
        }
        _ => {}
    }
    let commands = match model.screen {
        Screen::Overview => Vec::new(),
        Screen::Live => on_live_key(model, key),
        Screen::Findings => on_findings_key(model, key),
        Screen::Agents => on_agents_key(model, key),
        Screen::Approvals => on_approvals_key(model, key),
        Screen::Query => on_query_key(model, key),
    };
    guard_readonly(model, commands)
}

fn histogram_applies(screen: Screen) -> bool {
    matches!(screen, Screen::Live | Screen::Findings | Screen::Agents)
}

/// The one place read-only is enforced for commands: whatever a key asked for, no ledger action
/// leaves the model.
fn guard_readonly(model: &mut Model, commands: Vec<Command>) -> Vec<Command> {
    if !model.readonly {
        return commands;
    }
    let (refused, allowed): (Vec<Command>, Vec<Command>) =
        commands.into_iter().partition(Command::is_action);
    if let Some(first) = refused.first() {
        refuse_readonly(model, &first.describe());
    }
    allowed
}

fn refuse_readonly(model: &mut Model, what: &str) {
    model.overlay = None;
    model.status = Some(Status {
        text: format!("read-only (--readonly, or no --key): {what} is not allowed"),
        is_error: true,
        at_us: model.now_us,
    });
}

fn switch_screen(model: &mut Model, screen: Screen) {
    if screen == model.screen {
        return;
    }
    model.screen_history.push(model.screen);
    if model.screen_history.len() > SCREEN_HISTORY_MAX {
        model.screen_history.remove(0);
    }
    model.screen = screen;
    if screen == Screen::Query {
        model.query.editing = true;
    }
}

fn go_back(model: &mut Model) {
    if let Some(previous) = model.screen_history.pop() {
        model.screen = previous;
    }
}

fn on_command_key(model: &mut Model, mut text: String, key: Key) -> Vec<Command> {
    match key {
        Key::Esc => model.input = Input::Normal,
        Key::Enter => {
            model.input = Input::Normal;
            let word = text.trim();
            if matches!(word, "q" | "quit" | "q!") {
                return vec![Command::Quit];
            }
            match Screen::from_prefix(word) {
                Some(screen) => switch_screen(model, screen),
                None => {
                    model.status = Some(Status {
                        text: format!(
                            "no screen named {word:?}: overview, live, findings, agents, approvals, query"
                        ),
                        is_error: true,
                        at_us: model.now_us,
                    })
                }
            }
        }
        Key::Backspace => {
            if text.pop().is_none() {
                model.input = Input::Normal;
            } else {
                model.input = Input::Command(text);
            }
        }
        Key::Char(c) => {
            if text.chars().count() < INPUT_CHARS_MAX {
                text.push(c);
            }
            model.input = Input::Command(text);
        }
        _ => {}
    }
    Vec::new()
}

fn on_filter_key(model: &mut Model, key: Key) {
    let Some(filter) = filter_mut(model) else {
        model.input = Input::Normal;
        return;
    };
    match key {
        // Enter keeps the filter; Esc drops it, as in less and k9s.
        Key::Enter => model.input = Input::Normal,
        Key::Esc => {
            filter.clear();
            model.input = Input::Normal;
        }
        Key::Backspace => {
            filter.pop();
        }
        Key::Ctrl('u') => filter.clear(),
        // Past the limit a key is dropped: an input is a line, not a buffer to fill.
        Key::Char(c) if filter.chars().count() < INPUT_CHARS_MAX => filter.push(c),
        _ => {}
    }
    // The list just changed under the cursor: start at its top.
    match model.screen {
        Screen::Live => model.live.cursor = Cursor::default(),
        Screen::Findings => model.findings.cursor = Cursor::default(),
        Screen::Agents => model.agents.cursor = Cursor::default(),
        Screen::Approvals => model.approvals.cursor = Cursor::default(),
        Screen::Overview | Screen::Query => {}
    }
}

/// A paste goes whole into the input that has the keyboard, as one line (newlines and tabs
/// become spaces, other control characters are dropped), up to the input's limit; outside an
/// input it is refused rather than read as a run of keys (a `q` in it would quit).
fn on_paste(model: &mut Model, text: &str) {
    let clean = |into: &mut String| {
        for c in text.chars() {
            if into.chars().count() >= INPUT_CHARS_MAX {
                break;
            }
            match c {
                '\n' | '\r' | '\t' => into.push(' '),
                c if c.is_control() => {}
                c => into.push(c),
            }
        }
    };
    if model.overlay.is_some() {
        return;
    }
    match &mut model.input {
        Input::Command(line) => return clean(line),
        Input::Filter => {
            if let Some(filter) = filter_mut(model) {
                clean(filter);
            }
            return;
        }
        Input::Normal => {}
    }
    if model.screen == Screen::Query && model.query.editing {
        clean(&mut model.query.input);
        return;
    }
    model.status = Some(Status {
        text: "a paste goes into an input: / to filter, or the Query screen's editor".to_string(),
        is_error: true,
        at_us: model.now_us,
    });
}

fn filter_mut(model: &mut Model) -> Option<&mut String> {
    match model.screen {
        Screen::Live => Some(&mut model.live.filter),
        Screen::Findings => Some(&mut model.findings.filter),
        Screen::Agents => Some(&mut model.agents.filter),
        Screen::Approvals => Some(&mut model.approvals.filter),
        Screen::Overview | Screen::Query => None,
    }
}

fn on_overlay_key(model: &mut Model, key: Key) -> Vec<Command> {
    let Some(overlay) = model.overlay.take() else {
        return Vec::new();
    };
    match overlay {
        Overlay::Help => {
            if !matches!(key, Key::Esc | Key::Char('?') | Key::Char('q') | Key::Enter) {
                model.overlay = Some(Overlay::Help);
            }
            Vec::new()
        }
        Overlay::Confirm { message, command } => match key {
            Key::Char('y') | Key::Char('Y') => {
                model.status = Some(Status {
                    text: format!("sent: {}", command.describe()),
                    is_error: false,
                    at_us: model.now_us,
                });
                guard_readonly(model, vec![command])
            }
            Key::Esc | Key::Char('n') | Key::Char('N') | Key::Char('q') => {
                model.status = Some(Status {
                    text: format!("cancelled: {}", command.describe()),
                    is_error: false,
                    at_us: model.now_us,
                });
                Vec::new()
            }
            _ => {
                model.overlay = Some(Overlay::Confirm { message, command });
                Vec::new()
            }
        },
        Overlay::CloseReason {
            finding_ids,
            mut selected,
        } => {
            let count = CLOSE_REASONS.len();
            let picked = match key {
                Key::Esc | Key::Char('q') => return Vec::new(),
                Key::Up | Key::Char('k') => {
                    selected = (selected + count - 1) % count;
                    None
                }
                Key::Down | Key::Char('j') => {
                    selected = (selected + 1) % count;
                    None
                }
                Key::Enter => CLOSE_REASONS.get(selected).copied(),
                Key::Char(c @ '1'..='4') => CLOSE_REASONS.get(c as usize - '1' as usize).copied(),
                _ => None,
            };
            match picked {
                Some(reason) => {
                    model.findings.marked.clear();
                    guard_readonly(
                        model,
                        vec![Command::Triage {
                            finding_ids,
                            status: TriageStatus::Closed,
                            reason: Some(reason),
                        }],
                    )
                }
                None => {
                    model.overlay = Some(Overlay::CloseReason {
                        finding_ids,
                        selected,
                    });
                    Vec::new()
                }
            }
        }
        Overlay::Entry {
            seq,
            detail,
            error,
            mut scroll,
        } => {
            match key {
                Key::Esc | Key::Char('q') | Key::Backspace => return Vec::new(),
                Key::Down | Key::Char('j') => scroll += 1,
                Key::Up | Key::Char('k') => scroll = scroll.saturating_sub(1),
                Key::PageDown | Key::Char(' ') => scroll += page(model),
                Key::PageUp => scroll = scroll.saturating_sub(page(model)),
                Key::Char('g') | Key::Home => scroll = 0,
                _ => {}
            }
            let lines = detail
                .as_ref()
                .map(|d| d.entry.len() + d.envelope.len() + d.signer.len() + 6)
                .unwrap_or(0);
            scroll = scroll.min(lines);
            model.overlay = Some(Overlay::Entry {
                seq,
                detail,
                error,
                scroll,
            });
            Vec::new()
        }
    }
}

/// Rows a page key moves: the body's height less the chrome around it.
fn page(model: &Model) -> usize {
    usize::from(model.height.saturating_sub(8)).max(1)
}

/// Moves a cursor for the navigation keys; false when the key is not one of them.
fn navigate(cursor: &mut Cursor, len: usize, key: Key, page: usize) -> bool {
    let last = len.saturating_sub(1);
    cursor.selected = match key {
        Key::Down | Key::Char('j') => (cursor.selected + 1).min(last),
        Key::Up | Key::Char('k') => cursor.selected.saturating_sub(1),
        Key::Char('g') | Key::Home => 0,
        Key::Char('G') | Key::End => last,
        Key::PageDown | Key::Ctrl('d') => (cursor.selected + page).min(last),
        Key::PageUp | Key::Ctrl('u') => cursor.selected.saturating_sub(page),
        _ => return false,
    };
    true
}

fn on_live_key(model: &mut Model, key: Key) -> Vec<Command> {
    let len = model.live_rows().count();
    let page = page(model);
    if navigate(&mut model.live.cursor, len, key, page) {
        return Vec::new();
    }
    match key {
        Key::Char('p') | Key::Char(' ') => {
            let live = &mut model.live;
            live.paused = !live.paused;
            if live.paused {
                live.paused_at_seq = live.events.front().map(|e| e.seq);
                live.missed_while_paused = 0;
            } else {
                // Resuming jumps back to the newest, where a live view belongs.
                live.paused_at_seq = None;
                live.missed_while_paused = 0;
                live.cursor = Cursor::default();
            }
            Vec::new()
        }
        Key::Enter => open_entry(model, model.selected_event().map(|e| e.seq)),
        Key::Esc => {
            if !model.live.filter.is_empty() {
                model.live.filter.clear();
            } else {
                go_back(model);
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn open_entry(model: &mut Model, seq: Option<u64>) -> Vec<Command> {
    let Some(seq) = seq else {
        return Vec::new();
    };
    model.overlay = Some(Overlay::Entry {
        seq,
        detail: None,
        error: None,
        scroll: 0,
    });
    vec![Command::OpenEntry { seq }]
}

/// The findings an action applies to: the marked ones, or else the selected one.
fn finding_targets(model: &Model) -> Vec<&FindingRow> {
    if model.findings.marked.is_empty() {
        model.selected_finding().into_iter().collect()
    } else {
        model
            .findings
            .findings
            .iter()
            .filter(|f| model.findings.marked.contains(&f.finding_id))
            .collect()
    }
}

fn on_findings_key(model: &mut Model, key: Key) -> Vec<Command> {
    if model.findings.detail_open {
        if let Some(commands) = on_finding_detail_key(model, key) {
            return commands;
        }
    } else {
        let len = model.finding_rows().count();
        let page = page(model);
        if navigate(&mut model.findings.cursor, len, key, page) {
            return Vec::new();
        }
    }
    let ids: Vec<String> = finding_targets(model)
        .iter()
        .map(|f| f.finding_id.clone())
        .collect();
    let triage = |status| Command::Triage {
        finding_ids: ids.clone(),
        status,
        reason: None,
    };
    match key {
        Key::Char(' ') => {
            if let Some(id) = model.selected_finding().map(|f| f.finding_id.clone())
                && !model.findings.marked.remove(&id)
            {
                model.findings.marked.insert(id);
            }
            let len = model.finding_rows().count();
            navigate(&mut model.findings.cursor, len, Key::Down, 1);
            Vec::new()
        }
        Key::Enter => {
            model.findings.detail_open = model.selected_finding().is_some();
            model.findings.evidence_cursor = 0;
            Vec::new()
        }
        Key::Esc => {
            if !model.findings.marked.is_empty() {
                model.findings.marked.clear();
            } else if !model.findings.filter.is_empty() {
                model.findings.filter.clear();
            } else {
                go_back(model);
            }
            Vec::new()
        }
        _ if ids.is_empty() => Vec::new(),
        Key::Char('a') => {
            let command = triage(TriageStatus::Acknowledged);
            model.findings.marked.clear();
            vec![command]
        }
        Key::Char('e') => {
            let command = triage(TriageStatus::Escalated);
            model.findings.marked.clear();
            vec![command]
        }
        Key::Char('c') => {
            if model.readonly {
                refuse_readonly(model, "close");
                return Vec::new();
            }
            model.overlay = Some(Overlay::CloseReason {
                finding_ids: ids,
                selected: 0,
            });
            Vec::new()
        }
        Key::Char('s') => suppress(model),
        _ => Vec::new(),
    }
}

/// Keys of an opened finding; None passes the key on to the list's actions.
fn on_finding_detail_key(model: &mut Model, key: Key) -> Option<Vec<Command>> {
    let evidence = model
        .selected_finding()
        .map(|f| f.evidence_seqs.clone())
        .unwrap_or_default();
    let cursor = &mut model.findings.evidence_cursor;
    match key {
        Key::Esc => {
            model.findings.detail_open = false;
            Some(Vec::new())
        }
        Key::Down | Key::Char('j') => {
            *cursor = (*cursor + 1).min(evidence.len().saturating_sub(1));
            Some(Vec::new())
        }
        Key::Up | Key::Char('k') => {
            *cursor = cursor.saturating_sub(1);
            Some(Vec::new())
        }
        Key::Enter => {
            let seq = evidence.get(*cursor).copied();
            Some(open_entry(model, seq))
        }
        _ => None,
    }
}

fn suppress(model: &mut Model) -> Vec<Command> {
    let mut pairs: Vec<(String, String)> = finding_targets(model)
        .iter()
        .map(|f| (f.rule_id.clone(), f.agent.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    let until_us = model.now_us.saturating_add(SUPPRESS_FOR_US);
    let Some((rule_id, agent)) = pairs.first().cloned() else {
        return Vec::new();
    };
    if pairs.len() > 1 {
        model.status = Some(Status {
            text: "suppress applies to one rule and agent at a time: mark only one pair"
                .to_string(),
            is_error: true,
            at_us: model.now_us,
        });
        return Vec::new();
    }
    let agent = (!agent.is_empty()).then_some(agent);
    let whose = agent
        .as_deref()
        .map(|a| format!(" for agent {a}"))
        .unwrap_or_default();
    let command = Command::Suppress {
        rule_id: rule_id.clone(),
        agent,
        until_us,
    };
    confirm(
        model,
        format!(
            "Suppress rule {rule_id}{whose} for 24 h: its new detections will be marked suppressed \
             (still recorded)"
        ),
        command,
    )
}

/// Destructive actions wait for `y`; read-only refuses them before asking.
fn confirm(model: &mut Model, message: String, command: Command) -> Vec<Command> {
    if model.readonly {
        refuse_readonly(model, &command.describe());
        return Vec::new();
    }
    model.overlay = Some(Overlay::Confirm { message, command });
    Vec::new()
}

fn on_agents_key(model: &mut Model, key: Key) -> Vec<Command> {
    if model.agents.open.is_some() {
        return on_agent_detail_key(model, key);
    }
    let len = model.agent_rows().count();
    let page = page(model);
    if navigate(&mut model.agents.cursor, len, key, page) {
        return Vec::new();
    }
    let Some(agent) = model.selected_agent().map(|a| a.name.clone()) else {
        if key == Key::Esc {
            go_back(model);
        }
        return Vec::new();
    };
    match key {
        Key::Enter => {
            model.agents.open = Some(agent.clone());
            model.agents.detail = None;
            model.agents.holding_cursor = Cursor::default();
            vec![Command::OpenAgent { agent }]
        }
        Key::Char('S') => suspend(model, agent),
        Key::Char('r') => {
            model.status = Some(Status {
                text: format!("open {agent} (Enter) to pick the token or grant to revoke"),
                is_error: false,
                at_us: model.now_us,
            });
            Vec::new()
        }
        Key::Esc => {
            if !model.agents.filter.is_empty() {
                model.agents.filter.clear();
            } else {
                go_back(model);
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn suspend(model: &mut Model, agent: String) -> Vec<Command> {
    confirm(
        model,
        format!(
            "Suspend agent {agent}: its live tokens stop working and its new requests will be \
             refused until it is reinstated"
        ),
        Command::SuspendAgent { agent },
    )
}

fn on_agent_detail_key(model: &mut Model, key: Key) -> Vec<Command> {
    let Some(agent) = model.agents.open.clone() else {
        return Vec::new();
    };
    let holdings = model
        .agents
        .detail
        .as_ref()
        .map(|d| d.holdings.clone())
        .unwrap_or_default();
    let page = page(model);
    if navigate(&mut model.agents.holding_cursor, holdings.len(), key, page) {
        return Vec::new();
    }
    match key {
        Key::Esc => {
            model.agents.open = None;
            model.agents.detail = None;
            Vec::new()
        }
        Key::Char('S') => suspend(model, agent),
        Key::Char('r') => {
            let Some(h) = holdings.get(model.agents.holding_cursor.selected) else {
                model.status = Some(Status {
                    text: format!("{agent} holds no token or grant"),
                    is_error: false,
                    at_us: model.now_us,
                });
                return Vec::new();
            };
            let (message, command) = match h.kind {
                HoldingKind::Token => (
                    format!(
                        "Revoke token {} of agent {agent} ({}): its calls will be refused from now on",
                        h.id, h.audience
                    ),
                    Command::RevokeToken {
                        token_id: h.id.clone(),
                    },
                ),
                HoldingKind::Grant => (
                    format!(
                        "Revoke grant {} of agent {agent} ({}): no token will be issued under it \
                         again, and the tokens it issued stop working",
                        h.id, h.audience
                    ),
                    Command::RevokeGrant {
                        grant_id: h.id.clone(),
                    },
                ),
            };
            confirm(model, message, command)
        }
        _ => Vec::new(),
    }
}

fn on_approvals_key(model: &mut Model, key: Key) -> Vec<Command> {
    let len = model.approval_rows().count();
    let page = page(model);
    if navigate(&mut model.approvals.cursor, len, key, page) {
        return Vec::new();
    }
    if key == Key::Esc {
        if !model.approvals.filter.is_empty() {
            model.approvals.filter.clear();
        } else {
            go_back(model);
        }
        return Vec::new();
    }
    let Some(a) = model.selected_approval().cloned() else {
        return Vec::new();
    };
    if matches!(key, Key::Char('a') | Key::Char('d'))
        && !model.readonly
        && let Some(you) = model.you.as_deref()
        && !a.is_for(Some(you))
    {
        model.status = Some(Status {
            text: format!(
                "{} is {}'s to decide; your key is {you}'s",
                a.approval_id, a.user
            ),
            is_error: true,
            at_us: model.now_us,
        });
        return Vec::new();
    }
    match key {
        Key::Char('a') => {
            if a.expires_at_us <= model.now_us {
                model.status = Some(Status {
                    text: format!(
                        "{} has expired; it can no longer be approved",
                        a.approval_id
                    ),
                    is_error: true,
                    at_us: model.now_us,
                });
                return Vec::new();
            }
            if a.step_up_required && !model.readonly {
                model.status = Some(Status {
                    text: format!(
                        "{} needs step-up: the approval is sent with your step-up proof",
                        a.approval_id
                    ),
                    is_error: false,
                    at_us: model.now_us,
                });
            }
            vec![Command::Decide {
                approval_id: a.approval_id,
                approve: true,
            }]
        }
        Key::Char('d') => confirm(
            model,
            format!(
                "Deny {} for agent {} (user {}, {}): its waiting token request will be refused",
                a.approval_id, a.agent, a.user, a.audience
            ),
            Command::Decide {
                approval_id: a.approval_id,
                approve: false,
            },
        ),
        _ => Vec::new(),
    }
}

fn on_editor_key(model: &mut Model, key: Key) -> Vec<Command> {
    let query = &mut model.query;
    match key {
        Key::Esc => {
            query.editing = false;
            query.history_pos = None;
        }
        Key::Enter => {
            let sql = query.input.trim().to_string();
            if sql.is_empty() {
                return Vec::new();
            }
            if query.history.front() != Some(&sql) {
                query.history.push_front(sql.clone());
                query.history.truncate(QUERY_HISTORY_MAX);
            }
            query.history_pos = None;
            // A fresh editor for the next query; the one just run is a ↑ away.
            query.input.clear();
            query.running = true;
            query.error = None;
            return vec![Command::RunQuery { sql }];
        }
        Key::Up => {
            let next = query.history_pos.map_or(0, |p| p + 1);
            if let Some(sql) = query.history.get(next) {
                query.input = sql.clone();
                query.history_pos = Some(next);
            }
        }
        Key::Down => match query.history_pos {
            Some(0) | None => {
                query.history_pos = None;
                query.input.clear();
            }
            Some(p) => {
                query.history_pos = Some(p - 1);
                if let Some(sql) = query.history.get(p - 1) {
                    query.input = sql.clone();
                }
            }
        },
        Key::Backspace => {
            query.input.pop();
        }
        Key::Ctrl('u') => query.input.clear(),
        Key::Char(c) if query.input.chars().count() < INPUT_CHARS_MAX => query.input.push(c),
        _ => {}
    }
    Vec::new()
}

fn on_query_key(model: &mut Model, key: Key) -> Vec<Command> {
    let len = model.query.result.as_ref().map_or(0, |r| r.rows.len());
    let page = page(model);
    if navigate(&mut model.query.cursor, len, key, page) {
        return Vec::new();
    }
    match key {
        Key::Char('i') | Key::Char('e') => {
            model.query.editing = true;
            Vec::new()
        }
        Key::Esc => {
            go_back(model);
            Vec::new()
        }
        Key::Enter => {
            let seq = selected_result_seq(model);
            if seq.is_none() {
                model.status = Some(Status {
                    text: "this row has no seq column to open".to_string(),
                    is_error: false,
                    at_us: model.now_us,
                });
            }
            open_entry(model, seq)
        }
        _ => Vec::new(),
    }
}

/// The `seq` of the selected result row, when the result has a `seq` column holding a number.
pub fn selected_result_seq(model: &Model) -> Option<u64> {
    let result = model.query.result.as_ref()?;
    let column = result
        .header
        .iter()
        .position(|h| h.eq_ignore_ascii_case("seq"))?;
    let row = result.rows.get(model.query.cursor.selected)?;
    row.get(column)?.trim().parse().ok()
}
