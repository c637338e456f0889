//! `docket report`: one self-contained HTML page (inline SVG charts, no script, nothing fetched) over a time range.
//!
//! Every figure comes from the audit tables of one session, so the page says
//! what SQL over the same range says. Every text taken from the log is
//! escaped, and the page's content security policy allows no script and no
//! request at all: a hostile agent name or operation cannot run in the
//! browser of the person reading the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use docket_schemas::Timestamp;

use crate::QueryError;
use crate::detect::LEVELS;
use crate::session::AuditSession;

/// Time buckets of the calls chart.
pub const CALL_BUCKETS: i64 = 48;
/// Agents drawn one by one in the calls chart; the rest are summed as "others".
pub const CHART_AGENTS_MAX: usize = 8;
/// Rows of the ranked lists (rules, agents, users).
pub const RANKED_ROWS_MAX: usize = 15;
/// Open findings shown with their evidence.
pub const OPEN_FINDINGS_MAX: usize = 50;
/// Evidence entries shown per finding.
pub const EVIDENCE_ROWS_MAX: usize = 20;

const PALETTE: &[&str] = &[
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f",
];

/// What the report shows, read from the tables.
#[derive(Debug, Default)]
pub struct Report {
    pub origin: String,
    pub head: u64,
    /// The range asked for (`None`: open).
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// First and last `ts` of the calls in range, in µs.
    pub span_us: Option<(i64, i64)>,
    pub bucket_us: i64,
    pub calls_total: i64,
    /// agent -> calls per bucket.
    pub calls: BTreeMap<String, Vec<i64>>,
    /// (level, count) of findings in range.
    pub by_level: Vec<(String, i64)>,
    /// (rule, level, count).
    pub by_rule: Vec<(String, String, i64)>,
    /// (user, approved, denied).
    pub approvals: Vec<(String, i64, i64)>,
    /// (agent, findings, open).
    pub agents: Vec<(String, i64, i64)>,
    pub open: Vec<OpenFinding>,
    pub open_total: i64,
}

#[derive(Debug, Default)]
pub struct OpenFinding {
    pub finding: String,
    pub seq: u64,
    pub ts: String,
    pub severity: String,
    pub source: String,
    pub agent: String,
    pub message: String,
    /// (seq, ts, kind, agent, audience, what) of each evidence entry shown.
    pub evidence: Vec<[String; 6]>,
}

/// The `WHERE` condition on `ts` for a range.
fn range_filter(from: Option<Timestamp>, to: Option<Timestamp>) -> String {
    let mut parts = vec!["TRUE".to_string()];
    if let Some(f) = from {
        parts.push(format!("CAST(ts AS BIGINT) >= {}", f.as_micros()));
    }
    if let Some(t) = to {
        parts.push(format!("CAST(ts AS BIGINT) < {}", t.as_micros()));
    }
    parts.join(" AND ")
}

/// Each row of a query's answer as text cells (null as empty).
async fn rows(session: &mut AuditSession, sql: &str) -> Result<Vec<Vec<String>>, QueryError> {
    let batches = session.query(sql).await?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(text_rows(b)?);
    }
    Ok(out)
}

fn text_rows(b: &RecordBatch) -> Result<Vec<Vec<String>>, QueryError> {
    let cols = b
        .columns()
        .iter()
        .map(|c| datafusion::arrow::compute::cast(c, &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..b.num_rows())
        .map(|r| {
            cols.iter()
                .map(|c| {
                    if c.is_null(r) {
                        String::new()
                    } else {
                        c.as_string::<i32>().value(r).to_string()
                    }
                })
                .collect()
        })
        .collect())
}

fn int(text: &str) -> Result<i64, QueryError> {
    text.parse()
        .map_err(|e| QueryError::Report(format!("{text:?} is not a count: {e}")))
}

impl Report {
    /// Reads the figures for `[from, to)` from `session`.
    pub async fn build(
        session: &mut AuditSession,
        origin: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Report, QueryError> {
        let range = range_filter(from, to);
        let mut r = Report {
            origin: origin.to_string(),
            head: session.coverage().head,
            from,
            to,
            ..Report::default()
        };
        let span = session
            .query(&format!(
                "SELECT min(CAST(ts AS BIGINT)), max(CAST(ts AS BIGINT)), count(*) FROM api_calls WHERE {range}"
            ))
            .await?;
        if let Some(b) = span.first().filter(|b| b.num_rows() == 1) {
            let lo = b.column(0).as_primitive::<Int64Type>();
            let hi = b.column(1).as_primitive::<Int64Type>();
            r.calls_total = b.column(2).as_primitive::<Int64Type>().value(0);
            if !lo.is_null(0) && !hi.is_null(0) {
                r.span_us = Some((lo.value(0), hi.value(0)));
            }
        }
        if let Some((lo, hi)) = r.span_us {
            r.bucket_us = ((hi - lo) / CALL_BUCKETS).max(1) + 1;
            let top = rows(
                session,
                &format!(
                    "SELECT agent FROM api_calls WHERE {range} GROUP BY agent ORDER BY count(*) DESC, agent LIMIT {CHART_AGENTS_MAX}"
                ),
            )
            .await?;
            let top: Vec<String> = top.into_iter().map(|mut r| r.swap_remove(0)).collect();
            let counted = rows(
                session,
                &format!(
                    "SELECT agent, (CAST(ts AS BIGINT) - {lo}) / {} AS bucket, count(*) FROM api_calls \
                     WHERE {range} GROUP BY 1, 2",
                    r.bucket_us
                ),
            )
            .await?;
            for row in counted {
                let name = if top.contains(&row[0]) {
                    row[0].clone()
                } else {
                    "others".to_string()
                };
                let bucket = int(&row[1])?.clamp(0, CALL_BUCKETS - 1) as usize;
                let line = r
                    .calls
                    .entry(name)
                    .or_insert_with(|| vec![0; CALL_BUCKETS as usize]);
                line[bucket] += int(&row[2])?;
            }
        }
        for row in rows(
            session,
            &format!("SELECT severity, count(*) FROM findings WHERE {range} GROUP BY 1"),
        )
        .await?
        {
            r.by_level.push((row[0].clone(), int(&row[1])?));
        }
        r.by_level.sort_by_key(|(l, _)| {
            std::cmp::Reverse(LEVELS.iter().position(|x| x == l).unwrap_or(0))
        });
        for row in rows(
            session,
            &format!(
                "SELECT COALESCE(title, rule), severity, count(*) FROM findings WHERE {range} \
                 GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT {RANKED_ROWS_MAX}"
            ),
        )
        .await?
        {
            r.by_rule
                .push((row[0].clone(), row[1].clone(), int(&row[2])?));
        }
        for row in rows(
            session,
            &format!(
                "SELECT \"user\", sum(CASE WHEN decision = 'approved' THEN 1 ELSE 0 END), \
                 sum(CASE WHEN decision = 'denied' THEN 1 ELSE 0 END) FROM approvals \
                 WHERE kind = 'approval.decided' AND {range} GROUP BY 1 ORDER BY 2 + 3 DESC, 1 \
                 LIMIT {RANKED_ROWS_MAX}"
            ),
        )
        .await?
        {
            r.approvals
                .push((row[0].clone(), int(&row[1])?, int(&row[2])?));
        }
        let open = "triage IN ('open', 'reopened')";
        for row in rows(
            session,
            &format!(
                "SELECT agent, count(*), sum(CASE WHEN {open} THEN 1 ELSE 0 END) FROM findings \
                 WHERE agent IS NOT NULL AND {range} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {RANKED_ROWS_MAX}"
            ),
        )
        .await?
        {
            r.agents.push((row[0].clone(), int(&row[1])?, int(&row[2])?));
        }
        let total = rows(
            session,
            &format!("SELECT count(*) FROM findings WHERE {open} AND {range}"),
        )
        .await?;
        r.open_total = total.first().map_or(Ok(0), |row| int(&row[0]))?;
        let listed = rows(
            session,
            &format!(
                "SELECT finding, seq, ts, severity, source, agent, message, evidence FROM findings \
                 WHERE {open} AND {range} ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 \
                 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END, seq LIMIT {OPEN_FINDINGS_MAX}"
            ),
        )
        .await?;
        for row in listed {
            let seqs: Vec<u64> = row[7]
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .take(EVIDENCE_ROWS_MAX)
                .collect();
            let evidence = if seqs.is_empty() {
                Vec::new()
            } else {
                let list: Vec<String> = seqs.iter().map(u64::to_string).collect();
                rows(
                    session,
                    &format!(
                        "SELECT seq, ts, kind, agent, audience, \
                         COALESCE(method || ' ' || operation || ' -> ' || CAST(status AS VARCHAR), decision, reason, '') \
                         FROM events WHERE seq IN ({}) ORDER BY seq",
                        list.join(", ")
                    ),
                )
                .await?
                .into_iter()
                .map(|e| {
                    let mut it = e.into_iter();
                    std::array::from_fn(|_| it.next().unwrap_or_default())
                })
                .collect()
            };
            r.open.push(OpenFinding {
                finding: row[0].clone(),
                seq: row[1]
                    .parse()
                    .map_err(|e| QueryError::Report(format!("seq {:?}: {e}", row[1])))?,
                ts: row[2].clone(),
                severity: row[3].clone(),
                source: row[4].clone(),
                agent: row[5].clone(),
                message: row[6].clone(),
                evidence,
            });
        }
        Ok(r)
    }

    /// The page: one HTML document, styles and charts inline.
    pub fn to_html(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let range = format!(
            "{} to {}",
            self.from
                .map_or("the first entry".into(), |t| t.to_string()),
            self.to.map_or("the head".into(), |t| t.to_string())
        );
        let _ = write!(
            h,
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>Docket report: {origin}</title><style>{STYLE}</style></head><body>\
             <h1>Docket report</h1><p class=\"meta\">Ledger <b>{origin}</b>, entries up to seq <b id=\"head\">{head}</b>; \
             {range}. Every figure is an SQL answer over the same tables (<code>docket sql</code>).</p>",
            origin = esc(&self.origin),
            head = self.head,
            range = esc(&range),
        );
        let _ = write!(
            h,
            "<section id=\"calls\"><h2>API calls over time</h2><p><b id=\"calls-total\">{}</b> calls",
            self.calls_total
        );
        if let Some((lo, hi)) = self.span_us {
            let _ = write!(
                h,
                " from {} to {}",
                esc(&time_text(lo)),
                esc(&time_text(hi))
            );
        }
        h.push_str("</p>");
        h.push_str(&self.calls_chart());
        h.push_str("</section>");

        let levels: Vec<(String, i64, String)> = self
            .by_level
            .iter()
            .map(|(l, n)| (l.clone(), *n, level_colour(l).to_string()))
            .collect();
        h.push_str("<section id=\"levels\"><h2>Findings by level</h2>");
        h.push_str(&bars(&levels));
        h.push_str("</section><section id=\"rules\"><h2>Findings by rule</h2>");
        let rules: Vec<(String, i64, String)> = self
            .by_rule
            .iter()
            .map(|(r, l, n)| (format!("{r} ({l})"), *n, level_colour(l).to_string()))
            .collect();
        h.push_str(&bars(&rules));
        h.push_str("</section><section id=\"approvals\"><h2>Approvals and denials per user</h2>");
        let mut pairs = Vec::new();
        for (u, a, d) in &self.approvals {
            pairs.push((format!("{u} approved"), *a, "#59a14f".to_string()));
            pairs.push((format!("{u} denied"), *d, "#e15759".to_string()));
        }
        h.push_str(&bars(&pairs));
        h.push_str("</section><section id=\"agents\"><h2>Agents with the most findings</h2>");
        let agents: Vec<(String, i64, String)> = self
            .agents
            .iter()
            .map(|(a, n, open)| (format!("{a} ({open} open)"), *n, "#4e79a7".to_string()))
            .collect();
        h.push_str(&bars(&agents));
        let _ = write!(
            h,
            "</section><section id=\"open\"><h2>Open findings and their evidence</h2>\
             <p><b id=\"open-total\">{}</b> open",
            self.open_total
        );
        if self.open_total as usize > self.open.len() {
            let _ = write!(
                h,
                "; the {} most severe are shown (<code>docket findings --open</code> lists all)",
                self.open.len()
            );
        }
        h.push_str("</p>");
        for f in &self.open {
            let _ = write!(
                h,
                "<article class=\"finding\" data-finding=\"{id}\"><h3><span class=\"level\" style=\"background:{c}\">{sev}</span> \
                 {msg}</h3><p class=\"meta\">{id} &middot; seq {seq} &middot; {ts} &middot; {src} &middot; agent {agent}</p>\
                 <table><tr><th>seq</th><th>ts</th><th>kind</th><th>agent</th><th>audience</th><th>what</th></tr>",
                id = esc(&f.finding),
                c = level_colour(&f.severity),
                sev = esc(&f.severity),
                msg = esc(&f.message),
                seq = f.seq,
                ts = esc(&f.ts),
                src = esc(&f.source),
                agent = esc(&f.agent),
            );
            for e in &f.evidence {
                h.push_str("<tr>");
                for cell in e {
                    let _ = write!(h, "<td>{}</td>", esc(cell));
                }
                h.push_str("</tr>");
            }
            h.push_str("</table></article>");
        }
        h.push_str("</section></body></html>\n");
        h
    }

    fn calls_chart(&self) -> String {
        let (w, ht, left, bottom) = (900.0, 260.0, 50.0, 30.0);
        let max = self
            .calls
            .values()
            .flat_map(|v| v.iter().copied())
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let n = CALL_BUCKETS as f64;
        let mut s = format!(
            "<svg class=\"chart\" viewBox=\"0 0 {w} {ht}\" width=\"{w}\" height=\"{ht}\" role=\"img\" \
             aria-label=\"calls per agent over time\"><line x1=\"{left}\" y1=\"{y0}\" x2=\"{w}\" y2=\"{y0}\" stroke=\"#999\"/>\
             <text x=\"4\" y=\"14\" class=\"axis\">{max}</text><text x=\"4\" y=\"{y0}\" class=\"axis\">0</text>",
            y0 = ht - bottom,
            max = max as i64
        );
        let mut legend = String::from("<p class=\"legend\">");
        for (i, (agent, counts)) in self.calls.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let points: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(b, c)| {
                    let x = left + (w - left) * (b as f64 + 0.5) / n;
                    let y = (ht - bottom) - (ht - bottom - 10.0) * (*c as f64) / max;
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                s,
                "<polyline class=\"series\" data-agent=\"{a}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" "),
                a = esc(agent)
            );
            let _ = write!(
                legend,
                "<span><i style=\"background:{colour}\"></i>{} ({})</span> ",
                esc(agent),
                counts.iter().sum::<i64>()
            );
        }
        s.push_str("</svg>");
        legend.push_str("</p>");
        if self.calls.is_empty() {
            return "<p class=\"empty\">No calls in this range.</p>".into();
        }
        s + &legend
    }
}

/// Horizontal bars, one per `(label, value, colour)`.
fn bars(items: &[(String, i64, String)]) -> String {
    if items.is_empty() {
        return "<p class=\"empty\">None in this range.</p>".into();
    }
    let max = items.iter().map(|(_, n, _)| *n).max().unwrap_or(1).max(1) as f64;
    let (w, row, label) = (900.0, 22.0, 340.0);
    let ht = row * items.len() as f64 + 4.0;
    let mut s = format!(
        "<svg class=\"bars\" viewBox=\"0 0 {w} {ht}\" width=\"{w}\" height=\"{ht}\" role=\"img\">"
    );
    for (i, (name, n, colour)) in items.iter().enumerate() {
        let y = i as f64 * row + 2.0;
        let len = ((w - label - 60.0) * (*n as f64) / max).max(1.0);
        let _ = write!(
            s,
            "<g class=\"bar\"><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{bh}\" fill=\"{colour}\"/>\
             <text x=\"{vx:.1}\" y=\"{ty:.1}\" class=\"value\">{n}</text></g>",
            tx = label - 6.0,
            ty = y + 15.0,
            bh = row - 6.0,
            vx = label + len + 4.0,
            name = esc(name),
        );
    }
    s.push_str("</svg>");
    s
}

fn level_colour(level: &str) -> &'static str {
    match level {
        "critical" => "#8b0000",
        "high" => "#e15759",
        "medium" => "#f28e2b",
        "low" => "#edc948",
        _ => "#9c9c9c",
    }
}

fn time_text(us: i64) -> String {
    Timestamp::from_micros(us).map_or_else(|| format!("{us} µs"), |t| t.to_string())
}

/// Text made inert in HTML, in an element or an attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:960px;color:#222}\
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:16px 0 2px}\
.meta{color:#666}.legend span{margin-right:12px;white-space:nowrap}.legend i{display:inline-block;width:10px;\
height:10px;margin-right:4px}.axis,.value{font-size:11px;fill:#666}svg text{font-size:12px}\
table{border-collapse:collapse;width:100%;font-size:12px}td,th{border-bottom:1px solid #eee;padding:2px 6px;\
text-align:left}.level{color:#fff;border-radius:3px;padding:0 6px;font-size:12px}.empty{color:#888}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_log_cannot_become_markup() {
        let hostile = "<script>alert('x')</script>\"><img src=x onerror=1>&";
        let e = esc(hostile);
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
        assert!(e.starts_with("&lt;script&gt;"));
        let r = Report {
            origin: hostile.into(),
            calls: [(hostile.to_string(), vec![1; CALL_BUCKETS as usize])].into(),
            by_rule: vec![(hostile.into(), "high".into(), 3)],
            open: vec![OpenFinding {
                finding: hostile.into(),
                message: hostile.into(),
                evidence: vec![std::array::from_fn(|_| hostile.to_string())],
                ..OpenFinding::default()
            }],
            ..Report::default()
        };
        let page = r.to_html();
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("default-src 'none'"));
    }
}
