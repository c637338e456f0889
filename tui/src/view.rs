//! How the model looks: `view` draws it into a frame and changes nothing, so a fixed model always
//! draws the same screen (what the snapshot tests rely on).
//!
//! Every screen fits 80x24; from `WIDE_MIN_COLS` columns on, lists gain columns and a side panel.

use docket_schemas::Timestamp;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use crate::model::{
    AgentDetail, ApprovalRow, CLOSE_REASONS, Connection, EventRow, FindingRow, HoldingKind, Input,
    Level, Model, Overlay, Risk, Screen, histogram,
};
use crate::update::{key_help, selected_result_seq};

/// From this width on, lists show more columns and a side panel.
pub const WIDE_MIN_COLS: u16 = 120;
/// Width of the side panel on a wide terminal.
const SIDE_PANEL_COLS: u16 = 56;
/// Height of the time histogram panel.
const HISTOGRAM_ROWS: u16 = 6;
/// Query result columns are never drawn wider than this.
const QUERY_CELL_COLS_MAX: u16 = 40;

/// Draws the whole UI for `model`.
pub fn view(model: &Model, frame: &mut Frame) {
    let area = frame.area();
    let banner = connection_banner(model);
    let bottom = bottom_line(model);
    let [header, banner_area, body, bottom_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(banner.is_some())),
        Constraint::Min(0),
        Constraint::Length(u16::from(bottom.is_some())),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(header_line(model, area.width), header);
    if let Some(banner) = banner {
        frame.render_widget(banner, banner_area);
    }
    match model.screen {
        Screen::Overview => overview(model, frame, body),
        Screen::Live => live(model, frame, body),
        Screen::Findings => findings(model, frame, body),
        Screen::Agents => agents(model, frame, body),
        Screen::Approvals => approvals(model, frame, body),
        Screen::Query => query(model, frame, body),
    }
    if let Some(bottom) = bottom {
        frame.render_widget(bottom, bottom_area);
    }
    frame.render_widget(footer_line(model), footer);
    if let Some(overlay) = &model.overlay {
        draw_overlay(model, overlay, frame, body);
    }
    if model.overlay.is_none() {
        match &model.input {
            Input::Command(text) => cursor_at(frame, bottom_area, 1 + text.chars().count()),
            Input::Filter => {
                let len = model.filter().map_or(0, |f| f.chars().count());
                cursor_at(frame, bottom_area, 1 + len);
            }
            Input::Normal => {}
        }
    }
}

fn cursor_at(frame: &mut Frame, area: Rect, column: usize) {
    let x = area.x + u16::try_from(column).unwrap_or(u16::MAX).min(area.width);
    frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
}

/// Width of a list (Live, Approvals) from which it also shows its wide columns.
const LIST_WIDE_MIN_COLS: u16 = 100;

/// `text` cut to `cols` characters, with `…` saying it was cut (a silently cut name reads as
/// another, real name).
fn fit(text: &str, cols: usize) -> String {
    if text.chars().count() <= cols {
        return text.to_string();
    }
    let mut out: String = text.chars().take(cols.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An audience without its scheme: `https://api.github.com` is `api.github.com` in a column.
fn host(audience: &str) -> &str {
    audience
        .strip_prefix("https://")
        .or_else(|| audience.strip_prefix("http://"))
        .unwrap_or(audience)
}

fn wide(area: Rect) -> bool {
    area.width >= WIDE_MIN_COLS
}

fn header_line(model: &Model, width: u16) -> Paragraph<'static> {
    let mut spans = vec![Span::styled(
        " docket ",
        Style::new().fg(Color::Black).bg(Color::Cyan),
    )];
    for screen in Screen::ALL {
        let mut name = screen.name().to_string();
        if width >= WIDE_MIN_COLS {
            let count = match screen {
                Screen::Findings => model
                    .findings
                    .findings
                    .iter()
                    .filter(|f| !f.is_closed())
                    .count(),
                Screen::Approvals => model.approvals.approvals.len(),
                _ => 0,
            };
            if count > 0 {
                name = format!("{name}({count})");
            }
        }
        if screen == model.screen {
            spans.push(Span::raw(" "));
            spans.push(Span::styled(
                format!("[{name}]"),
                Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED),
            ));
        } else {
            spans.push(Span::raw(format!(" {name}")));
        }
    }
    let (text, style) = match &model.connection {
        Connection::Connected => ("● connected", Style::new().fg(Color::Green)),
        Connection::Lost { .. } => ("✖ disconnected", Style::new().fg(Color::Red)),
        Connection::Reconnecting { .. } => ("… reconnecting", Style::new().fg(Color::Yellow)),
        Connection::Connecting { .. } => ("… connecting", Style::new().fg(Color::Yellow)),
    };
    let mut right = vec![Span::styled(text, style)];
    if model.readonly {
        right.insert(
            0,
            Span::styled("read-only ", Style::new().fg(Color::Yellow)),
        );
    }
    let used: usize = spans.iter().chain(&right).map(|s| s.width()).sum();
    let gap = usize::from(width).saturating_sub(used).max(1);
    spans.push(Span::raw(" ".repeat(gap)));
    spans.extend(right);
    Paragraph::new(Line::from(spans))
}

/// The plain statement of a lost connection, or None while connected.
fn connection_banner(model: &Model) -> Option<Paragraph<'static>> {
    let text = match &model.connection {
        Connection::Connected => return None,
        Connection::Lost { since_us, error } => format!(
            " connection lost {} ago: {error}; retrying",
            duration(model.now_us.saturating_sub(*since_us))
        ),
        Connection::Reconnecting {
            since_us,
            error,
            attempt,
        } => format!(
            " reconnecting (attempt {attempt}); connection lost {} ago: {error}",
            duration(model.now_us.saturating_sub(*since_us))
        ),
        Connection::Connecting {
            since_us,
            error,
            attempt,
        } => format!(
            " not connected to NATS yet (attempt {attempt}, {}): {error}; retrying. \
             The screens still follow the store; decisions and triage wait for NATS",
            duration(model.now_us.saturating_sub(*since_us))
        ),
    };
    Some(
        Paragraph::new(text).style(
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        ),
    )
}

/// The command line, the filter being typed, or the last status message.
fn bottom_line(model: &Model) -> Option<Paragraph<'static>> {
    match &model.input {
        Input::Command(text) => return Some(Paragraph::new(format!(":{text}"))),
        Input::Filter => {
            let filter = model.filter().unwrap_or_default();
            return Some(Paragraph::new(format!("/{filter}")));
        }
        Input::Normal => {}
    }
    let status = model.status.as_ref()?;
    let style = if status.is_error {
        Style::new().fg(Color::Red)
    } else {
        Style::new().fg(Color::Green)
    };
    Some(Paragraph::new(status.text.clone()).style(style))
}

fn footer_line(model: &Model) -> Paragraph<'static> {
    // In the SQL editor `?` and `:` are text: they are not offered as keys there.
    let mut keys: Vec<(&str, &str)> = if model.screen == Screen::Query && model.query.editing {
        Vec::new()
    } else {
        vec![("?", "help"), (":", "screen")]
    };
    let actions: &[(&str, &str)] = match model.screen {
        Screen::Overview => &[],
        Screen::Live => &[
            ("/", "filter"),
            ("p", "pause"),
            ("⏎", "open"),
            ("t", "histogram"),
        ],
        Screen::Findings if model.findings.detail_open => &[
            ("↑↓", "evidence"),
            ("⏎", "open entry"),
            ("a", "ack"),
            ("c", "close"),
            ("esc", "back"),
        ],
        Screen::Findings => &[
            ("/", "filter"),
            ("space", "mark"),
            ("a", "ack"),
            ("c", "close"),
            ("e", "escalate"),
            ("s", "suppress"),
        ],
        Screen::Agents if model.agents.open.is_some() => {
            &[("r", "revoke"), ("S", "suspend"), ("esc", "back")]
        }
        Screen::Agents => &[("/", "filter"), ("⏎", "open"), ("S", "suspend")],
        Screen::Approvals => &[("/", "filter"), ("a", "approve"), ("d", "deny")],
        Screen::Query if model.query.editing => &[
            ("⏎", "run"),
            ("↑↓", "history"),
            ("\\d", "tables"),
            ("esc", "leave editor (then ? help)"),
        ],
        Screen::Query => &[("i", "edit"), ("⏎", "open seq"), ("esc", "back")],
    };
    let action_keys = ["a", "c", "e", "s", "d", "r", "S"];
    keys.extend(
        actions
            .iter()
            .filter(|(k, _)| !(model.readonly && action_keys.contains(k)))
            .copied(),
    );
    if !(model.screen == Screen::Query && model.query.editing) {
        keys.push(("q", "quit"));
    }
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(
            format!(" {key}"),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::raw(format!(" {what} ")));
    }
    Paragraph::new(Line::from(spans)).style(Style::new().bg(Color::DarkGray))
}

fn titled(title: String) -> Block<'static> {
    Block::bordered().title(Span::styled(
        title,
        Style::new().add_modifier(Modifier::BOLD),
    ))
}

/// Splits off a right-hand side panel on wide terminals.
fn with_side_panel(area: Rect) -> (Rect, Option<Rect>) {
    if !wide(area) {
        return (area, None);
    }
    let [main, side] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(SIDE_PANEL_COLS)]).areas(area);
    (main, Some(side))
}

/// Splits off the histogram panel when it is shown.
fn with_histogram(model: &Model, area: Rect) -> (Rect, Option<Rect>) {
    if !model.histogram.shown || area.height < HISTOGRAM_ROWS + 5 {
        return (area, None);
    }
    let [main, bottom] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(HISTOGRAM_ROWS)]).areas(area);
    (main, Some(bottom))
}

fn draw_histogram(model: &Model, frame: &mut Frame, area: Rect) {
    let bucket_us = model.histogram.bucket_us();
    let buckets = usize::from(area.width.saturating_sub(2));
    let counts = histogram(
        &model.view_timestamps_us(),
        model.now_us,
        bucket_us,
        buckets,
    );
    let peak = counts.iter().copied().max().unwrap_or(0);
    let span_us = bucket_us.saturating_mul(counts.len() as i64);
    let title = format!(
        " per {} over the last {}, peak {peak} (+/- zoom) ",
        duration(bucket_us),
        duration(span_us)
    );
    frame.render_widget(
        Sparkline::default()
            .block(titled(title))
            .data(&counts)
            .style(Style::new().fg(Color::Cyan)),
        area,
    );
}

/// A window of `len` rows, `height` high, that keeps `selected` in view: (first row, row of the
/// selection within the window). Building only visible rows keeps a frame cheap with thousands
/// of rows kept.
fn window(selected: usize, len: usize, height: usize) -> (usize, usize) {
    let height = height.max(1);
    let selected = selected.min(len.saturating_sub(1));
    let first = selected.saturating_sub(height - 1);
    (first, selected - first)
}

fn draw_table(
    frame: &mut Frame,
    area: Rect,
    block: Block<'static>,
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
    rows: Vec<Row<'static>>,
    selected: Option<usize>,
) {
    let header =
        Row::new(header).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›");
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// Rows a bordered table with a header shows in `area`.
fn table_rows(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

fn overview(model: &Model, frame: &mut Frame, area: Rect) {
    let (area, side) = with_side_panel(area);
    let chart_rows = if area.height >= 36 {
        area.height / 2
    } else {
        area.height.saturating_sub(13).max(3)
    };
    let [chart, figures] =
        Layout::vertical([Constraint::Length(chart_rows), Constraint::Min(0)]).areas(area);
    let f = &model.overview.figures;
    let history: Vec<u64> = model.overview.rate_history.iter().copied().collect();
    let peak = history.iter().copied().max().unwrap_or(0);
    let shown = usize::from(chart.width.saturating_sub(2)).min(history.len());
    let recent = &history[history.len() - shown..];
    let title = if model.overview.received {
        format!(
            " Ingest: {} events/s now, peak {peak} ",
            f.ingest_events_per_s
        )
    } else {
        " Ingest: waiting for the first figures ".to_string()
    };
    frame.render_widget(
        Sparkline::default()
            .block(titled(title))
            .data(recent)
            .style(Style::new().fg(Color::Green)),
        chart,
    );
    let (chain, fleet, levels) = if wide(area) {
        let [chain, fleet, levels] = Layout::horizontal([
            Constraint::Percentage(50),
            Constraint::Percentage(25),
            Constraint::Percentage(25),
        ])
        .areas(figures);
        (chain, fleet, levels)
    } else {
        // The head hash is 64 characters: the chain gets a full-width row so it is never cut.
        let [chain, rest] =
            Layout::vertical([Constraint::Length(6), Constraint::Min(0)]).areas(figures);
        let [fleet, levels] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(rest);
        (chain, fleet, levels)
    };
    let checkpoint = match &f.checkpoint {
        None => Line::from("checkpoint  none yet"),
        Some(c) if c.verified == Some(true) => Line::from(vec![
            Span::raw(format!("checkpoint  {} ", c.seq)),
            Span::styled("✔ verified", Style::new().fg(Color::Green)),
        ]),
        Some(c) if c.verified.is_none() => Line::from(vec![
            Span::raw(format!("checkpoint  {} ", c.seq)),
            Span::styled(
                "not checked here (docket verify)",
                Style::new().fg(Color::DarkGray),
            ),
        ]),
        Some(c) => Line::from(vec![
            Span::raw(format!("checkpoint  {} ", c.seq)),
            Span::styled(
                "✖ DOES NOT VERIFY",
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
        ]),
    };
    let rejected_style = if f.rejected_events > 0 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    let chain_text = vec![
        Line::from(format!("head        {}", f.head_seq)),
        Line::from(format!("hash        {}", f.head_hash)),
        checkpoint,
        Line::from(Span::styled(
            format!("rejected    {}", f.rejected_events),
            rejected_style,
        )),
    ];
    frame.render_widget(
        Paragraph::new(chain_text).block(titled(" Chain ".to_string())),
        chain,
    );
    let pending_style = if f.pending_approvals > 0 {
        Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let mut fleet_text = vec![
        Line::from(format!("agents        {}", f.agents)),
        Line::from(format!("grants        {}", f.active_grants)),
        Line::from(format!("live tokens   {}", f.live_tokens)),
        Line::from(Span::styled(
            format!("approvals     {} pending", f.pending_approvals),
            pending_style,
        )),
    ];
    // Said here too, not only in the side panel, which a small terminal has no room for.
    if model.you.is_some() {
        let yours = model
            .approvals
            .approvals
            .iter()
            .filter(|a| a.is_for(model.you.as_deref()))
            .count();
        let style = if yours > 0 {
            Style::new()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        fleet_text.push(Line::from(Span::styled(
            format!("for you       {yours} (:ap)"),
            style,
        )));
    }
    frame.render_widget(
        Paragraph::new(fleet_text).block(titled(" Fleet ".to_string())),
        fleet,
    );
    let mut level_lines = Vec::new();
    for level in Level::ALL.iter().rev() {
        let count = f
            .open_findings
            .iter()
            .filter(|(l, _)| l == level)
            .map(|(_, c)| *c)
            .sum::<u64>();
        let style = if count > 0 {
            level_style(*level)
        } else {
            Style::new()
        };
        level_lines.push(Line::from(Span::styled(
            format!("{:<14}{count}", level.as_str()),
            style,
        )));
    }
    frame.render_widget(
        Paragraph::new(level_lines).block(titled(" Open findings ".to_string())),
        levels,
    );
    if let Some(side) = side {
        let [pending, latest] =
            Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(side);
        let lines: Vec<Line> = model
            .approvals
            .approvals
            .iter()
            .filter(|a| model.you.is_none() || a.is_for(model.you.as_deref()))
            .map(|a| {
                Line::from(format!(
                    "{} {} → {} ({})",
                    time_left(a.expires_at_us, model.now_us),
                    a.agent,
                    a.audience,
                    a.user
                ))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(titled(if model.you.is_some() {
                " Waiting for you ".to_string()
            } else {
                " Waiting for a decision ".to_string()
            })),
            pending,
        );
        let lines: Vec<Line> = model
            .findings
            .findings
            .iter()
            .filter(|f| !f.is_closed())
            .map(|f| {
                Line::from(vec![
                    Span::styled(format!("{:<5}", level_name(f.level)), level_style(f.level)),
                    Span::raw(format!("{} {}", f.agent, f.title)),
                ])
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(titled(" Latest findings ".to_string())),
            latest,
        );
    }
}

fn live(model: &Model, frame: &mut Frame, area: Rect) {
    let (area, histogram_area) = with_histogram(model, area);
    let (area, side) = with_side_panel(area);
    let rows: Vec<&EventRow> = model.live_rows().collect();
    let mut title = format!(" Live: {} events", rows.len());
    if !model.live.filter.is_empty() {
        title.push_str(&format!(" matching /{}", model.live.filter));
    }
    if model.live.paused {
        title.push_str(&format!(
            " · PAUSED (+{} new, p resumes)",
            model.live.missed_while_paused
        ));
    }
    title.push(' ');
    let (first, selected) = window(model.live.cursor.selected, rows.len(), table_rows(area));
    // The user and audience columns only where the list itself, beside the side panel, has the
    // room: squeezed, every column is cut and none can be read.
    let is_wide = area.width >= LIST_WIDE_MIN_COLS;
    let shown: Vec<&&EventRow> = rows.iter().skip(first).take(table_rows(area)).collect();
    // A seq is never cut: its column is as wide as the largest one on screen.
    let seq_cols = shown
        .iter()
        .map(|e| e.seq.to_string().len())
        .max()
        .unwrap_or(3)
        .max(3);
    let (agent_cols, user_cols, audience_cols) = (14, 10, 18);
    let table_rows_built: Vec<Row> = shown
        .iter()
        .map(|e| {
            let mut cells = vec![
                Cell::from(e.seq.to_string()),
                Cell::from(clock(e.ts_us)),
                Cell::from(e.kind.clone()),
                Cell::from(fit(&e.agent, agent_cols)),
            ];
            if is_wide {
                cells.push(Cell::from(fit(&e.user, user_cols)));
                cells.push(Cell::from(fit(host(&e.audience), audience_cols)));
            }
            cells.push(Cell::from(e.summary.clone()));
            Row::new(cells).style(kind_style(&e.kind))
        })
        .collect();
    let seq_width = Constraint::Length(u16::try_from(seq_cols).unwrap_or(u16::MAX));
    let (header, widths) = if is_wide {
        (
            vec!["seq", "time", "kind", "agent", "user", "audience", "what"],
            vec![
                seq_width,
                Constraint::Length(8),
                Constraint::Length(18),
                Constraint::Length(agent_cols as u16),
                Constraint::Length(user_cols as u16),
                Constraint::Length(audience_cols as u16),
                Constraint::Min(10),
            ],
        )
    } else {
        (
            vec!["seq", "time", "kind", "agent", "what"],
            vec![
                seq_width,
                Constraint::Length(8),
                Constraint::Length(18),
                Constraint::Length(agent_cols as u16),
                Constraint::Min(10),
            ],
        )
    };
    let selected = (!rows.is_empty()).then_some(selected);
    draw_table(
        frame,
        area,
        titled(title),
        header,
        widths,
        table_rows_built,
        selected,
    );
    if let Some(side) = side {
        let lines = match model.selected_event() {
            Some(e) => vec![
                Line::from(format!("seq       {}", e.seq)),
                Line::from(format!("time      {}", full_time(e.ts_us))),
                Line::from(Span::styled(
                    format!("kind      {}", e.kind),
                    kind_style(&e.kind),
                )),
                Line::from(format!("agent     {}", e.agent)),
                Line::from(format!("user      {}", e.user)),
                Line::from(format!("audience  {}", e.audience)),
                Line::from(format!("signer    {}", e.signer_key_id)),
                Line::from(""),
                Line::from(e.summary.clone()),
                Line::from(""),
                Line::from(Span::styled(
                    "Enter: entry, envelope and signer",
                    Style::new().fg(Color::DarkGray),
                )),
            ],
            None => vec![Line::from("no event selected")],
        };
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(titled(" Event ".to_string())),
            side,
        );
    }
    if let Some(h) = histogram_area {
        draw_histogram(model, frame, h);
    }
}

fn findings(model: &Model, frame: &mut Frame, area: Rect) {
    let (area, histogram_area) = with_histogram(model, area);
    let (list_area, side) = with_side_panel(area);
    if model.findings.detail_open && side.is_none() {
        finding_detail(model, frame, area);
    } else {
        findings_table(model, frame, list_area, side.is_some());
        if let Some(side) = side {
            finding_detail(model, frame, side);
        }
    }
    if let Some(h) = histogram_area {
        draw_histogram(model, frame, h);
    }
}

fn findings_table(model: &Model, frame: &mut Frame, area: Rect, is_wide: bool) {
    let rows: Vec<&FindingRow> = model.finding_rows().collect();
    let open = rows.iter().filter(|f| f.is_open()).count();
    let mut title = format!(" Findings: {open} open of {}", rows.len());
    if !model.findings.marked.is_empty() {
        title.push_str(&format!(", {} marked", model.findings.marked.len()));
    }
    if !model.findings.filter.is_empty() {
        title.push_str(&format!(" matching /{}", model.findings.filter));
    }
    title.push(' ');
    let (first, selected) = window(model.findings.cursor.selected, rows.len(), table_rows(area));
    let built: Vec<Row> = rows
        .iter()
        .skip(first)
        .take(table_rows(area))
        .map(|f| {
            let mark = if model.findings.marked.contains(&f.finding_id) {
                "●"
            } else {
                " "
            };
            let mut cells = vec![
                Cell::from(mark),
                Cell::from(Span::styled(level_name(f.level), level_style(f.level))),
                Cell::from(f.status_name()),
                Cell::from(f.agent.clone()),
            ];
            // The rule's id (a UUID for a detection) says nothing at a glance; its title does,
            // and the detail names the rule. With room, when and where it was raised.
            if is_wide {
                cells.push(Cell::from(f.seq.to_string()));
                cells.push(Cell::from(clock(f.ts_us)));
            }
            cells.push(Cell::from(f.title.clone()));
            let style = if f.is_closed() {
                Style::new().fg(Color::DarkGray)
            } else {
                Style::new()
            };
            Row::new(cells).style(style)
        })
        .collect();
    let (header, widths) = if is_wide {
        (
            vec!["", "lvl", "status", "agent", "seq", "time", "title"],
            vec![
                Constraint::Length(1),
                Constraint::Length(4),
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
    } else {
        (
            vec!["", "lvl", "status", "agent", "title"],
            vec![
                Constraint::Length(1),
                Constraint::Length(4),
                Constraint::Length(12),
                Constraint::Length(13),
                Constraint::Min(10),
            ],
        )
    };
    let selected = (!rows.is_empty()).then_some(selected);
    draw_table(frame, area, titled(title), header, widths, built, selected);
}

fn finding_detail(model: &Model, frame: &mut Frame, area: Rect) {
    let Some(f) = model.selected_finding() else {
        frame.render_widget(
            Paragraph::new("no finding selected").block(titled(" Finding ".to_string())),
            area,
        );
        return;
    };
    let dim = Style::new().fg(Color::DarkGray);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(f.level.as_str().to_uppercase(), level_style(f.level)),
            Span::raw(format!("  {}", f.title)),
        ]),
        Line::from(Span::styled(
            format!("{} · {} · seq {}", f.rule_id, f.status_name(), f.seq),
            dim,
        )),
    ];
    // A policy finding names no baseline, and some name no user or audience: a label with
    // nothing after it reads as missing data, so only what the finding has is shown.
    let who: Vec<String> = [
        ("agent", &f.agent),
        ("user", &f.user),
        ("audience", &f.audience),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k} {v}"))
    .collect();
    if !who.is_empty() {
        lines.push(Line::from(who.join("  ")));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(f.explanation.clone()));
    lines.push(Line::from(""));
    for (label, value) in [("observed  ", &f.observed), ("baseline  ", &f.baseline)] {
        if !value.is_empty() {
            lines.push(Line::from(vec![
                Span::styled(label, Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(value.clone()),
            ]));
        }
    }
    if !f.observed.is_empty() || !f.baseline.is_empty() {
        lines.push(Line::from(""));
    }
    let mut evidence = vec![Span::styled(
        "evidence  ",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for (i, seq) in f.evidence_seqs.iter().enumerate() {
        let style = if model.findings.detail_open && i == model.findings.evidence_cursor {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().fg(Color::Cyan)
        };
        evidence.push(Span::styled(format!("#{seq}"), style));
        evidence.push(Span::raw(" "));
    }
    lines.push(Line::from(evidence));
    let hint = if model.findings.detail_open {
        "←↑↓ choose evidence, Enter opens it, Esc back"
    } else {
        "Enter: choose evidence to open"
    };
    lines.push(Line::from(Span::styled(hint, dim)));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(titled(format!(" Finding {} ", f.finding_id))),
        area,
    );
}

fn agents(model: &Model, frame: &mut Frame, area: Rect) {
    let (area, histogram_area) = with_histogram(model, area);
    let (list_area, side) = with_side_panel(area);
    match (&model.agents.open, side) {
        (Some(name), None) => agent_detail(model, name, frame, area),
        (open, side) => {
            agents_table(model, frame, list_area, side.is_some());
            if let Some(side) = side {
                match open {
                    Some(name) => agent_detail(model, name, frame, side),
                    None => frame.render_widget(
                        Paragraph::new(
                            "Enter opens the selected agent: its tokens and grants, and its \
                             timeline.",
                        )
                        .wrap(Wrap { trim: false })
                        .block(titled(" Agent ".to_string())),
                        side,
                    ),
                }
            }
        }
    }
    if let Some(h) = histogram_area {
        draw_histogram(model, frame, h);
    }
}

fn agents_table(model: &Model, frame: &mut Frame, area: Rect, is_wide: bool) {
    let rows: Vec<_> = model.agent_rows().collect();
    let mut title = format!(" Agents: {}", rows.len());
    if !model.agents.filter.is_empty() {
        title.push_str(&format!(" matching /{}", model.agents.filter));
    }
    title.push(' ');
    let (first, selected) = window(model.agents.cursor.selected, rows.len(), table_rows(area));
    let built: Vec<Row> = rows
        .iter()
        .skip(first)
        .take(table_rows(area))
        .map(|a| {
            let state = if a.suspended { "suspended" } else { "active" };
            let style = if a.suspended {
                Style::new().fg(Color::Magenta)
            } else if a.open_findings > 0 {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new(vec![
                a.name.clone(),
                a.calls.to_string(),
                a.grants.to_string(),
                a.live_tokens.to_string(),
                a.open_findings.to_string(),
                state.to_string(),
            ])
            .style(style)
        })
        .collect();
    let name_cols = if is_wide { 28 } else { 20 };
    let widths = vec![
        Constraint::Length(name_cols),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(9),
    ];
    let header = vec!["agent", "calls", "grants", "tokens", "findings", "state"];
    let selected = (!rows.is_empty()).then_some(selected);
    draw_table(frame, area, titled(title), header, widths, built, selected);
}

fn agent_detail(model: &Model, name: &str, frame: &mut Frame, area: Rect) {
    let Some(detail) = &model.agents.detail else {
        frame.render_widget(
            Paragraph::new(format!("loading {name}…")).block(titled(format!(" Agent {name} "))),
            area,
        );
        return;
    };
    let holdings_rows = u16::try_from(detail.holdings.len()).unwrap_or(u16::MAX);
    let [holdings, timeline] = Layout::vertical([
        Constraint::Length(holdings_rows.clamp(1, 8) + 3),
        Constraint::Min(0),
    ])
    .areas(area);
    agent_holdings(model, detail, frame, holdings);
    let lines: Vec<Line> = detail
        .timeline
        .iter()
        .take(usize::from(timeline.height.saturating_sub(2)))
        .map(|e| {
            Line::from(vec![
                Span::raw(format!("{} {:>6} ", clock(e.ts_us), e.seq)),
                Span::styled(format!("{:<18} ", e.kind), kind_style(&e.kind)),
                Span::raw(e.summary.clone()),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(titled(format!(" {name}: timeline, newest first "))),
        timeline,
    );
}

fn agent_holdings(model: &Model, detail: &AgentDetail, frame: &mut Frame, area: Rect) {
    let (first, selected) = window(
        model.agents.holding_cursor.selected,
        detail.holdings.len(),
        table_rows(area),
    );
    let built: Vec<Row> = detail
        .holdings
        .iter()
        .skip(first)
        .take(table_rows(area))
        .map(|h| {
            let kind = match h.kind {
                HoldingKind::Token => "token",
                HoldingKind::Grant => "grant",
            };
            let expires = h
                .expires_at_us
                .map(|t| time_left(t, model.now_us))
                .unwrap_or_else(|| "-".to_string());
            Row::new(vec![
                kind.to_string(),
                h.id.clone(),
                h.audience.clone(),
                expires,
                h.scopes.join(" "),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(5),
        Constraint::Length(16),
        Constraint::Length(14),
        Constraint::Length(12),
        Constraint::Min(6),
    ];
    let selected = (!detail.holdings.is_empty()).then_some(selected);
    let hint = if model.readonly {
        ""
    } else {
        " (r revokes, S suspends)"
    };
    draw_table(
        frame,
        area,
        titled(format!(" {} holds{hint} ", detail.agent)),
        vec!["kind", "id", "audience", "expires", "scopes"],
        widths,
        built,
        selected,
    );
}

fn approvals(model: &Model, frame: &mut Frame, area: Rect) {
    let (list_area, side) = with_side_panel(area);
    let rows: Vec<&ApprovalRow> = model.approval_rows().collect();
    let (list_area, detail_area) = match side {
        Some(side) => (list_area, side),
        None => {
            let list_rows = u16::try_from(rows.len()).unwrap_or(u16::MAX).clamp(1, 5) + 3;
            let [list, detail] =
                Layout::vertical([Constraint::Length(list_rows), Constraint::Min(0)])
                    .areas(list_area);
            (list, detail)
        }
    };
    // Wide columns only where the list itself has the room: squeezed, names are cut.
    let is_wide = list_area.width >= LIST_WIDE_MIN_COLS;
    let (first, selected) = window(
        model.approvals.cursor.selected,
        rows.len(),
        table_rows(list_area),
    );
    let built: Vec<Row> = rows
        .iter()
        .skip(first)
        .take(table_rows(list_area))
        .map(|a| {
            let yours = a.is_for(model.you.as_deref());
            let who = if yours {
                Span::styled(
                    "you",
                    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
                )
            } else {
                Span::raw(a.user.clone())
            };
            let mut cells = vec![
                Cell::from(time_left(a.expires_at_us, model.now_us)),
                Cell::from(Span::styled(risk_name(a.risk), risk_style(a.risk))),
                Cell::from(who),
                Cell::from(fit(&a.agent, 14)),
                Cell::from(host(&a.audience).to_string()),
            ];
            if is_wide {
                cells.push(Cell::from(a.scopes.join(" ")));
            }
            cells.push(Cell::from(if a.step_up_required { "step-up" } else { "" }));
            // Another user's request is shown for the picture, dimmed: only they can decide it.
            let row = Row::new(cells);
            if model.you.is_some() && !yours {
                row.style(Style::new().fg(Color::DarkGray))
            } else {
                row
            }
        })
        .collect();
    let (header, widths) = if is_wide {
        (
            vec!["left", "risk", "for", "agent", "audience", "scopes", ""],
            vec![
                Constraint::Length(11),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(14),
                Constraint::Length(17),
                Constraint::Min(10),
                Constraint::Length(7),
            ],
        )
    } else {
        (
            vec!["left", "risk", "for", "agent", "audience", ""],
            vec![
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(14),
                Constraint::Min(10),
                Constraint::Length(7),
            ],
        )
    };
    let selected = (!rows.is_empty()).then_some(selected);
    let yours = rows
        .iter()
        .filter(|a| a.is_for(model.you.as_deref()))
        .count();
    let mut title = match &model.you {
        Some(_) => format!(" Approvals: {yours} for you, {} pending", rows.len()),
        None => format!(" Approvals: {} pending", rows.len()),
    };
    if !model.approvals.filter.is_empty() {
        title.push_str(&format!(" matching /{}", model.approvals.filter));
    }
    title.push(' ');
    draw_table(
        frame,
        list_area,
        titled(title),
        header,
        widths,
        built,
        selected,
    );
    approval_detail(model, frame, detail_area);
}

fn approval_detail(model: &Model, frame: &mut Frame, area: Rect) {
    let Some(a) = model.selected_approval() else {
        frame.render_widget(
            Paragraph::new("Nothing is waiting for a decision.")
                .block(titled(" Request ".to_string())),
            area,
        );
        return;
    };
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let left = a.expires_at_us.saturating_sub(model.now_us);
    let left_style = if left <= 0 {
        Style::new().fg(Color::DarkGray)
    } else if left < 60_000_000 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Yellow)
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled("binding message  ", bold),
            Span::styled(
                format!("“{}”", a.binding_message),
                Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            ),
        ]),
        Line::from(vec![
            Span::styled("time left        ", bold),
            Span::styled(time_left(a.expires_at_us, model.now_us), left_style),
        ]),
        Line::from(format!(
            "agent {}  user {}  audience {}",
            a.agent, a.user, a.audience
        )),
        Line::from(format!("scopes  {}", a.scopes.join(" "))),
        Line::from(vec![
            Span::raw("risk    "),
            Span::styled(risk_name(a.risk), risk_style(a.risk)),
        ]),
    ];
    if a.step_up_required {
        lines.push(Line::from(Span::styled(
            "needs step-up: the user's step-up key must prove the approval",
            Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        )));
    }
    match model.you.as_deref() {
        _ if model.readonly => {}
        Some(you) if !a.is_for(Some(you)) => lines.push(Line::from(Span::styled(
            format!("{} decides this one; your key is {you}'s", a.user),
            Style::new().fg(Color::DarkGray),
        ))),
        _ => lines.push(Line::from(Span::styled(
            "a approves · d denies (asks first)",
            Style::new().fg(Color::DarkGray),
        ))),
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(titled(format!(" {} ", a.approval_id))),
        area,
    );
}

fn query(model: &Model, frame: &mut Frame, area: Rect) {
    let (area, side) = with_side_panel(area);
    let q = &model.query;
    let [editor, result] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(0)]).areas(area);
    let editor_title = if q.editing {
        " SQL: Enter runs · ↑↓ history · Esc leaves the editor "
    } else {
        " SQL: i edits "
    };
    let editor_style = if q.editing {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    // Show the end of a long query: that is where typing happens.
    let inner_cols = usize::from(editor.width.saturating_sub(2));
    let chars = q.input.chars().count();
    let shown: String = q
        .input
        .chars()
        .skip(chars.saturating_sub(inner_cols.saturating_sub(1)))
        .collect();
    frame.render_widget(
        Paragraph::new(shown.clone()).block(
            Block::bordered()
                .title(editor_title)
                .border_style(editor_style),
        ),
        editor,
    );
    if q.editing && model.overlay.is_none() && model.input == Input::Normal {
        cursor_at(
            frame,
            Rect::new(
                editor.x + 1,
                editor.y + 1,
                editor.width.saturating_sub(2),
                1,
            ),
            shown.chars().count(),
        );
    }
    query_result(model, frame, result);
    if let Some(side) = side {
        let lines: Vec<Line> = q
            .history
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                let style = if q.history_pos == Some(i) {
                    Style::new().add_modifier(Modifier::REVERSED)
                } else {
                    Style::new()
                };
                Line::from(Span::styled(sql.clone(), style))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(titled(" History (↑↓) ".to_string())),
            side,
        );
    }
}

fn query_result(model: &Model, frame: &mut Frame, area: Rect) {
    let q = &model.query;
    if let Some(error) = &q.error {
        frame.render_widget(
            Paragraph::new(error.clone())
                .style(Style::new().fg(Color::Red))
                .wrap(Wrap { trim: false })
                .block(titled(" Error ".to_string())),
            area,
        );
        return;
    }
    let Some(result) = &q.result else {
        let text = if q.running {
            "running…"
        } else {
            "Type SQL and press Enter, e.g. SELECT seq, kind, agent FROM events ORDER BY seq DESC LIMIT 20"
        };
        frame.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: false })
                .block(titled(" Result ".to_string())),
            area,
        );
        return;
    };
    let visible = table_rows(area);
    let (first, selected) = window(q.cursor.selected, result.rows.len(), visible);
    let rows = &result.rows[first..(first + visible).min(result.rows.len())];
    let widths: Vec<Constraint> = (0..result.header.len())
        .map(|c| {
            let cols = std::iter::once(&result.header[c])
                .chain(rows.iter().filter_map(|r| r.get(c)))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(1);
            Constraint::Length(
                u16::try_from(cols)
                    .unwrap_or(u16::MAX)
                    .min(QUERY_CELL_COLS_MAX),
            )
        })
        .collect();
    let header = Row::new(result.header.clone())
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let built: Vec<Row> = rows.iter().map(|r| Row::new(r.clone())).collect();
    let mut title = format!(" Result: {} rows", result.rows.len());
    if q.rows_dropped > 0 {
        title.push_str(&format!(" (+{} not kept)", q.rows_dropped));
    } else if result.more {
        title.push_str(" (the first ones; add LIMIT or narrow the query)");
    }
    if selected_result_seq(model).is_some() && !q.editing {
        title.push_str(" · Enter opens the seq");
    }
    title.push(' ');
    let table = Table::new(built, widths)
        .header(header)
        .block(titled(title))
        .column_spacing(2)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›");
    let selected = (!result.rows.is_empty() && !q.editing).then_some(selected);
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

fn draw_overlay(model: &Model, overlay: &Overlay, frame: &mut Frame, body: Rect) {
    match overlay {
        Overlay::Help => {
            let keys = key_help(model.screen, model.readonly);
            let mut lines: Vec<Line> = keys
                .iter()
                .map(|k| {
                    Line::from(vec![
                        Span::styled(
                            format!(" {:<14}", k.keys),
                            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(k.what),
                    ])
                })
                .collect();
            if model.readonly {
                lines.push(Line::from(Span::styled(
                    " read-only: actions are hidden",
                    Style::new().fg(Color::Yellow),
                )));
            }
            let height = u16::try_from(lines.len())
                .unwrap_or(u16::MAX)
                .saturating_add(2);
            let area = centered(body, 70, height);
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(lines).block(titled(format!(
                    " Keys: {} (Esc closes) ",
                    model.screen.name()
                ))),
                area,
            );
        }
        Overlay::Confirm { message, .. } => {
            let area = centered(body, 64, 8);
            frame.render_widget(Clear, area);
            let text = Text::from(vec![
                Line::from(message.clone()),
                Line::from(""),
                Line::from(vec![
                    Span::styled(" y ", Style::new().fg(Color::Black).bg(Color::Red)),
                    Span::raw(" do it    "),
                    Span::styled(" n / Esc ", Style::new().add_modifier(Modifier::REVERSED)),
                    Span::raw(" cancel"),
                ]),
            ]);
            frame.render_widget(
                Paragraph::new(text).wrap(Wrap { trim: false }).block(
                    titled(" Confirm ".to_string()).border_style(Style::new().fg(Color::Red)),
                ),
                area,
            );
        }
        Overlay::CloseReason {
            finding_ids,
            selected,
        } => {
            let area = centered(body, 48, 8);
            frame.render_widget(Clear, area);
            let lines: Vec<Line> = CLOSE_REASONS
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let style = if i == *selected {
                        Style::new().add_modifier(Modifier::REVERSED)
                    } else {
                        Style::new()
                    };
                    Line::from(Span::styled(format!(" {} {}", i + 1, r.as_str()), style))
                })
                .collect();
            frame.render_widget(
                Paragraph::new(lines).block(titled(format!(
                    " Close {} finding(s): why? ",
                    finding_ids.len()
                ))),
                area,
            );
        }
        Overlay::Entry {
            seq,
            detail,
            error,
            scroll,
        } => {
            let area = body;
            frame.render_widget(Clear, area);
            let bold = Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
            let lines: Vec<Line> = match (detail, error) {
                (_, Some(error)) => vec![Line::from(Span::styled(
                    format!("could not open entry {seq}: {error}"),
                    Style::new().fg(Color::Red),
                ))],
                (None, None) => vec![Line::from(format!("loading entry {seq}…"))],
                (Some(d), None) => {
                    let mut lines = Vec::new();
                    for (title, section) in [
                        ("Entry", &d.entry),
                        ("Envelope", &d.envelope),
                        ("Signer", &d.signer),
                    ] {
                        lines.push(Line::from(Span::styled(title, bold)));
                        lines.extend(section.iter().map(|l| Line::from(l.clone())));
                        lines.push(Line::from(""));
                    }
                    lines
                }
            };
            let scroll = u16::try_from(*scroll).unwrap_or(u16::MAX);
            frame.render_widget(
                Paragraph::new(lines)
                    .scroll((scroll, 0))
                    .block(titled(format!(" Entry {seq} (↑↓ scroll, Esc closes) "))),
                area,
            );
        }
    }
}

/// Four letters, so the level column stays narrow.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "crit",
        Level::High => "high",
        Level::Medium => "med",
        Level::Low => "low",
        Level::Informational => "info",
    }
}

fn level_style(level: Level) -> Style {
    match level {
        Level::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Level::High => Style::new().fg(Color::Red),
        Level::Medium => Style::new().fg(Color::Yellow),
        Level::Low => Style::new().fg(Color::Blue),
        Level::Informational => Style::new().fg(Color::DarkGray),
    }
}

fn risk_name(risk: Risk) -> &'static str {
    match risk {
        Risk::Low => "low",
        Risk::High => "high",
        Risk::Critical => "critical",
    }
}

fn risk_style(risk: Risk) -> Style {
    match risk {
        Risk::Low => Style::new(),
        Risk::High => Style::new().fg(Color::Yellow),
        Risk::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Colour by the kind's family, so a glance at the stream tells calls from grants from refusals.
fn kind_style(kind: &str) -> Style {
    let family = kind.split('.').next().unwrap_or(kind);
    match (family, kind) {
        (_, "request.refused") | ("finding", _) => Style::new().fg(Color::Red),
        (_, "agent.suspended") | (_, "token.revoked") | (_, "grant.revoked") => {
            Style::new().fg(Color::Magenta)
        }
        ("approval", _) => Style::new().fg(Color::Yellow),
        ("token", _) => Style::new().fg(Color::Green),
        ("grant", _) => Style::new().fg(Color::Cyan),
        ("key" | "policy" | "rules" | "agent", _) => Style::new().fg(Color::Blue),
        _ => Style::new(),
    }
}

/// `HH:MM:SS` in UTC.
pub fn clock(ts_us: i64) -> String {
    let secs = ts_us.div_euclid(1_000_000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

fn full_time(ts_us: i64) -> String {
    Timestamp::from_micros(ts_us)
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("{ts_us} µs"))
}

/// A span of time the way people say it: `12 s`, `4 min 12 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(us: i64) -> String {
    let s = us.max(0) / 1_000_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min {} s", s / 60, s % 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// `4 min 12 s` left, or `expired`.
pub fn time_left(expires_at_us: i64, now_us: i64) -> String {
    let left = expires_at_us.saturating_sub(now_us);
    if left <= 0 {
        "expired".to_string()
    } else {
        duration(left)
    }
}
