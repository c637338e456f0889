//! Sigma detection rules compiled to SQL over the `events` table.
//!
//! A rule whose `logsource` is `product: docket` with a `service` naming an
//! event kind (`api.called`, `token.issued`, ...) matches that kind's rows;
//! field names are the `events` columns (docs/DETECTION.md has the mapping).
//! Supported: selections as maps or lists of maps, value lists (OR), the
//! modifiers `contains`, `startswith`, `endswith`, `re`, `cidr` (IPv4), `all`,
//! `gt`, `gte`, `lt`, `lte`, `cased`, and conditions with `and`, `or`, `not`,
//! parentheses, `1 of X*`, `all of X*`, `1 of them`, `all of them`; and
//! correlation rules (`event_count`, `value_count`, `temporal`, with
//! `group-by` and `timespan`) over base rules in the same file. Matching is
//! case-insensitive as Sigma's is, except `re` and `cased`. Anything else is
//! refused with the construct named, never approximated.

use std::collections::BTreeMap;

use serde_yaml::Value;

/// The `events` columns a Sigma field may name.
pub const FIELDS: &[&str] = &[
    "seq",
    "kind",
    "event_id",
    "key_id",
    "agent",
    "user",
    "audience",
    "scopes",
    "grant_id",
    "token_id",
    "token_hash",
    "approval_id",
    "method",
    "operation",
    "status",
    "source",
    "decision",
    "risk",
    "reason",
    "actor",
    "subject_key_id",
    "max_calls",
];

/// Why a Sigma rule was not compiled, naming the construct.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Sigma: {what}")]
pub struct SigmaError {
    /// The top-level field the problem is under (for its line number).
    pub field: &'static str,
    pub what: String,
}

impl SigmaError {
    pub fn field(&self) -> &'static str {
        self.field
    }
}

fn err(field: &'static str, what: impl Into<String>) -> SigmaError {
    SigmaError {
        field,
        what: what.into(),
    }
}

/// Compiles a Sigma rule file to a Docket rule's SQL: one detection rule, or a correlation
/// rule with the base rules it names, all documents of the one file (`---` between them).
pub fn compile_file(documents: &[Value]) -> Result<String, SigmaError> {
    let correlations: Vec<&Value> = documents
        .iter()
        .filter(|d| d.get("correlation").is_some())
        .collect();
    match (correlations.as_slice(), documents) {
        ([], [one]) => compile(one),
        ([], _) => Err(err(
            "detection",
            "several detection rules in one file: a file holds one rule, or one correlation and its base rules",
        )),
        ([c], _) => correlation(c, documents),
        _ => Err(err(
            "correlation",
            "a file holds at most one correlation rule",
        )),
    }
}

/// Compiles one Sigma detection rule (a whole YAML document) to a Docket rule's SQL.
pub fn compile(rule: &Value) -> Result<String, SigmaError> {
    if rule.get("correlation").is_some() {
        return compile_file(std::slice::from_ref(rule));
    }
    let (service, expr) = matcher(rule)?;
    Ok(format!(
        "SELECT seq, agent, concat('{kind} matched: ', coalesce(operation, kind)) AS observed, \
         'a Sigma rule' AS baseline, make_array(seq) AS evidence FROM events \
         WHERE kind = {kind_lit} AND seq > ${{from_seq}} AND seq <= ${{to_seq}} AND ({expr})",
        kind = service.replace('\'', "''"),
        kind_lit = literal(&service),
    ))
}

/// A detection rule's event kind and its condition as a SQL boolean expression.
fn matcher(rule: &Value) -> Result<(String, String), SigmaError> {
    let service = logsource(rule)?;
    let detection = rule
        .get("detection")
        .and_then(Value::as_mapping)
        .ok_or_else(|| err("detection", "`detection` must be a map"))?;
    let mut selections = BTreeMap::new();
    let mut condition = None;
    for (k, v) in detection {
        let name = k
            .as_str()
            .ok_or_else(|| err("detection", "a detection key is not text"))?;
        match name {
            "condition" => condition = Some(condition_text(v)?),
            "timeframe" => {
                return Err(err(
                    "detection",
                    "`timeframe` (deprecated in Sigma) is not supported; use a correlation rule",
                ));
            }
            _ => {
                selections.insert(name.to_string(), selection(name, v)?);
            }
        }
    }
    let condition = condition.ok_or_else(|| err("detection", "`detection` has no `condition`"))?;
    let expr = Condition::new(&condition, &selections)?.parse()?;
    Ok((service, expr))
}

/// A correlation rule: `event_count`, `value_count` or `temporal` over its base rules, per
/// `group-by`, within `timespan`. It fires once, on the event that makes its condition true
/// (the count reaching the threshold, a new value reaching it, the last base rule matching).
fn correlation(rule: &Value, documents: &[Value]) -> Result<String, SigmaError> {
    let c = rule
        .get("correlation")
        .ok_or_else(|| err("correlation", "no `correlation`"))?;
    let kind = c
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("correlation", "a correlation needs a `type`"))?;
    let names: Vec<&str> = match c.get("rules") {
        Some(Value::Sequence(v)) => v.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => {
            return Err(err(
                "correlation",
                "a correlation needs `rules`: the base rules' names or ids",
            ));
        }
    };
    if names.is_empty() {
        return Err(err("correlation", "`rules` names no base rule"));
    }
    let group: Vec<String> = match c.get("group-by") {
        None => Vec::new(),
        Some(Value::Sequence(v)) => v
            .iter()
            .map(|f| {
                f.as_str()
                    .filter(|f| FIELDS.contains(f) && *f != "scopes")
                    .map(str::to_string)
                    .ok_or_else(|| {
                        err(
                            "correlation",
                            format!("group-by field {f:?} is not a column of events"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("correlation", "`group-by` must be a list of fields")),
    };
    let span_text = c
        .get("timespan")
        .and_then(Value::as_str)
        .ok_or_else(|| err("correlation", "a correlation needs a `timespan` such as 5m"))?;
    let span = crate::detect::parse_duration_us(span_text).ok_or_else(|| {
        err(
            "correlation",
            format!("timespan {span_text:?} is not a duration such as 30s, 5m, 1h or 1d"),
        )
    })?;
    if c.get("aliases").is_some() {
        return Err(err(
            "correlation",
            "correlation `aliases` are not supported",
        ));
    }
    if c.get("generate").and_then(Value::as_bool) == Some(true) {
        return Err(err(
            "correlation",
            "`generate: true` is not supported: base rules only feed the correlation",
        ));
    }
    let mut branches = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let base = documents
            .iter()
            .find(|d| {
                d.get("correlation").is_none()
                    && (d.get("name").and_then(Value::as_str) == Some(name)
                        || d.get("id").and_then(Value::as_str) == Some(name))
            })
            .ok_or_else(|| {
                err(
                    "correlation",
                    format!("base rule {name:?} is not in this file (by name or id)"),
                )
            })?;
        let (service, expr) = matcher(base)?;
        branches.push(format!(
            "SELECT seq, ts, {i} AS base, * EXCLUDE (seq, ts) FROM events WHERE kind = {} AND ({expr})",
            literal(&service)
        ));
    }
    let matched = branches.join(" UNION ALL ");
    let mut join = vec![
        "h.seq <= n.seq".to_string(),
        format!("CAST(h.ts AS BIGINT) >= CAST(n.ts AS BIGINT) - {span}"),
    ];
    join.extend(
        group
            .iter()
            .map(|g| format!("h.\"{g}\" IS NOT DISTINCT FROM n.\"{g}\"")),
    );
    let by = if group.is_empty() {
        String::new()
    } else {
        format!(" by {}", group.join(", "))
    };
    let condition = c.get("condition");
    let (observed, having) = match kind {
        "event_count" => {
            let n = threshold(condition)?;
            (
                format!("concat(count(h.seq), ' matching events within {span_text}{by}')"),
                format!("count(h.seq) = {n}"),
            )
        }
        "value_count" => {
            let n = threshold(condition)?;
            let field = condition
                .and_then(|c| c.get("field"))
                .and_then(Value::as_str)
                .filter(|f| FIELDS.contains(f) && *f != "scopes")
                .ok_or_else(|| {
                    err(
                        "correlation",
                        "value_count needs `condition.field`, a column of events",
                    )
                })?;
            (
                format!(
                    "concat(count(DISTINCT h.\"{field}\"), ' distinct {field} values within {span_text}{by}')"
                ),
                format!(
                    "count(DISTINCT h.\"{field}\") = {n} AND sum(CASE WHEN h.seq < n.seq AND h.\"{field}\" IS NOT DISTINCT FROM n.\"{field}\" THEN 1 ELSE 0 END) = 0"
                ),
            )
        }
        "temporal" => {
            if condition.is_some() {
                return Err(err(
                    "correlation",
                    "a temporal correlation takes no `condition`",
                ));
            }
            (
                format!(
                    "concat('all {} base rules matched within {span_text}{by}')",
                    names.len()
                ),
                format!(
                    "count(DISTINCT h.base) = {} AND sum(CASE WHEN h.seq < n.seq AND h.base = n.base THEN 1 ELSE 0 END) = 0",
                    names.len()
                ),
            )
        }
        other => {
            return Err(err(
                "correlation",
                format!(
                    "correlation type `{other}` is not supported (event_count, value_count, temporal are)"
                ),
            ));
        }
    };
    Ok(format!(
        "WITH m AS ({matched}) \
         SELECT n.seq, n.agent, {observed} AS observed, \
         'the correlation''s threshold' AS baseline, array_agg(h.seq) AS evidence \
         FROM m n JOIN m h ON {} \
         WHERE n.seq > ${{from_seq}} AND n.seq <= ${{to_seq}} \
         GROUP BY n.seq, n.agent, n.base, n.\"{}\" HAVING {having}",
        join.join(" AND "),
        // Grouping by the value field too lets HAVING compare with the trigger's own value.
        value_field(kind, condition).unwrap_or("seq"),
    ))
}

fn value_field<'v>(kind: &str, condition: Option<&'v Value>) -> Option<&'v str> {
    (kind == "value_count")
        .then(|| condition?.get("field")?.as_str())
        .flatten()
}

/// A correlation's threshold: the count at which it fires (`gte: N`, `gt: N`, `eq: N`).
fn threshold(condition: Option<&Value>) -> Result<u64, SigmaError> {
    let c = condition.ok_or_else(|| {
        err(
            "correlation",
            "a count correlation needs a `condition` such as gte: 10",
        )
    })?;
    let num = |k: &str| c.get(k).and_then(Value::as_u64);
    if let Some(op) = ["lt", "lte"].iter().find(|k| c.get(**k).is_some()) {
        return Err(err(
            "correlation",
            format!(
                "condition `{op}` is not supported: a correlation fires when a count rises to a threshold"
            ),
        ));
    }
    match (num("gte"), num("gt"), num("eq")) {
        (Some(n), None, None) | (None, None, Some(n)) if n > 0 => Ok(n),
        (None, Some(n), None) => Ok(n + 1),
        _ => Err(err(
            "correlation",
            "condition needs one of gte, gt or eq with a positive count",
        )),
    }
}

fn logsource(rule: &Value) -> Result<String, SigmaError> {
    let ls = rule
        .get("logsource")
        .ok_or_else(|| err("logsource", "a Sigma rule needs a `logsource`"))?;
    let product = ls.get("product").and_then(Value::as_str);
    if product != Some("docket") {
        return Err(err(
            "logsource",
            format!("logsource product {product:?} is not \"docket\""),
        ));
    }
    if let Some(c) = ls.get("category") {
        return Err(err(
            "logsource",
            format!("logsource category {c:?}: Docket's log sources are services (event kinds)"),
        ));
    }
    let service = ls
        .get("service")
        .and_then(Value::as_str)
        .ok_or_else(|| err("logsource", "logsource needs a `service`: an event kind"))?;
    if docket_schemas::Kind::parse(service).is_none() {
        let kinds: Vec<&str> = docket_schemas::Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        return Err(err(
            "logsource",
            format!(
                "logsource service {service:?} is not an event kind ({})",
                kinds.join(", ")
            ),
        ));
    }
    Ok(service.to_string())
}

fn condition_text(v: &Value) -> Result<String, SigmaError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Sequence(_) => Err(err(
            "detection",
            "a list of conditions is not supported; join them with `or`",
        )),
        _ => Err(err("detection", "`condition` must be text")),
    }
}

/// One selection, as a SQL boolean expression.
fn selection(name: &str, v: &Value) -> Result<String, SigmaError> {
    match v {
        Value::Mapping(m) => map_selection(m),
        Value::Sequence(items) if items.iter().all(Value::is_mapping) => {
            let parts = items
                .iter()
                .filter_map(Value::as_mapping)
                .map(map_selection)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("({})", parts.join(" OR ")))
        }
        _ => Err(err(
            "detection",
            format!(
                "selection `{name}`: keyword searches (values without a field) are not supported"
            ),
        )),
    }
}

fn map_selection(m: &serde_yaml::Mapping) -> Result<String, SigmaError> {
    let mut parts = Vec::new();
    for (k, v) in m {
        let key = k
            .as_str()
            .ok_or_else(|| err("detection", "a field name is not text"))?;
        parts.push(field_match(key, v)?);
    }
    if parts.is_empty() {
        return Err(err("detection", "an empty selection matches nothing"));
    }
    Ok(format!("({})", parts.join(" AND ")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
    Re,
    Cidr,
    Gt,
    Gte,
    Lt,
    Lte,
}

fn field_match(key: &str, v: &Value) -> Result<String, SigmaError> {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or_default();
    if !FIELDS.contains(&field) {
        return Err(err(
            "detection",
            format!("field `{field}` is not a column of events (docs/DETECTION.md lists them)"),
        ));
    }
    let (mut op, mut all, mut cased) = (Op::Equals, false, false);
    for m in parts {
        let next = match m {
            "contains" => Op::Contains,
            "startswith" => Op::StartsWith,
            "endswith" => Op::EndsWith,
            "re" => Op::Re,
            "cidr" => Op::Cidr,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "all" => {
                all = true;
                continue;
            }
            "cased" => {
                cased = true;
                continue;
            }
            other => {
                return Err(err(
                    "detection",
                    format!("modifier `{other}` (on `{field}`) is not supported"),
                ));
            }
        };
        if op != Op::Equals {
            return Err(err(
                "detection",
                format!("`{key}`: two matching modifiers on one field"),
            ));
        }
        op = next;
    }
    let values: Vec<&Value> = match v {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    };
    if values.is_empty() {
        return Err(err(
            "detection",
            format!("`{key}`: an empty list matches nothing"),
        ));
    }
    let column = if field == "scopes" {
        // A list column: match against its elements joined, as Sigma matches a multi-valued field.
        "array_to_string(scopes, ' ')".to_string()
    } else {
        format!("\"{field}\"")
    };
    let tests = values
        .iter()
        .map(|v| value_match(&column, key, op, cased, v))
        .collect::<Result<Vec<_>, _>>()?;
    let join = if all { " AND " } else { " OR " };
    Ok(format!("({})", tests.join(join)))
}

fn value_match(
    column: &str,
    key: &str,
    op: Op,
    cased: bool,
    v: &Value,
) -> Result<String, SigmaError> {
    let text = match v {
        Value::Null => return Ok(format!("{column} IS NULL")),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => {
            return Err(err(
                "detection",
                format!("`{key}`: a value must be text, a number or null"),
            ));
        }
    };
    let as_text = format!("CAST({column} AS VARCHAR)");
    Ok(match op {
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let n: f64 = text
                .parse()
                .map_err(|_| err("detection", format!("`{key}`: {text:?} is not a number")))?;
            let sym = match op {
                Op::Gt => ">",
                Op::Gte => ">=",
                Op::Lt => "<",
                _ => "<=",
            };
            format!("TRY_CAST({column} AS DOUBLE) {sym} {n}")
        }
        Op::Re => format!("regexp_like({as_text}, {})", literal(&text)),
        Op::Cidr => cidr(&as_text, key, &text)?,
        Op::Equals if matches!(v, Value::Number(_)) => {
            format!("TRY_CAST({column} AS DOUBLE) = {text}")
        }
        Op::Equals | Op::Contains | Op::StartsWith | Op::EndsWith => {
            let pattern = like_pattern(&text);
            let pattern = match op {
                Op::Contains => format!("%{pattern}%"),
                Op::StartsWith => format!("{pattern}%"),
                Op::EndsWith => format!("%{pattern}"),
                _ => pattern,
            };
            let like = if cased { "LIKE" } else { "ILIKE" };
            format!("{as_text} {like} {}", literal(&pattern))
        }
    })
}

/// Sigma's wildcards (`*`, `?`, `\` escaping them) as a LIKE pattern with `\` as its escape.
fn like_pattern(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => {
                let next = chars.next().unwrap_or('\\');
                out.push_str(&escape_like(next));
            }
            '*' => out.push('%'),
            '?' => out.push('_'),
            c => out.push_str(&escape_like(c)),
        }
    }
    out
}

fn escape_like(c: char) -> String {
    match c {
        '%' | '_' | '\\' => format!("\\{c}"),
        c => c.to_string(),
    }
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An IPv4 network as a range test on the address's number (addresses that are not IPv4 never match).
fn cidr(column: &str, key: &str, text: &str) -> Result<String, SigmaError> {
    let bad = || {
        err(
            "detection",
            format!("`{key}`: {text:?} is not an IPv4 network (IPv6 networks are not supported)"),
        )
    };
    let (addr, bits) = text.split_once('/').ok_or_else(bad)?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if bits > 32 {
        return Err(bad());
    }
    let mask: u64 = if bits == 0 {
        0
    } else {
        (u64::from(u32::MAX) << (32 - bits)) & u64::from(u32::MAX)
    };
    let lo = u64::from(u32::from(addr)) & mask;
    let hi = lo | (!mask & u64::from(u32::MAX));
    let octet = |i: u32| format!("TRY_CAST(split_part({column}, '.', {i}) AS BIGINT)");
    Ok(format!(
        "(regexp_like({column}, '^[0-9]{{1,3}}(\\.[0-9]{{1,3}}){{3}}$') AND \
         ({} * 16777216 + {} * 65536 + {} * 256 + {}) BETWEEN {lo} AND {hi})",
        octet(1),
        octet(2),
        octet(3),
        octet(4)
    ))
}

/// A recursive-descent reader of Sigma conditions: `or` < `and` < `not` < atoms.
struct Condition<'a> {
    tokens: Vec<String>,
    at: usize,
    selections: &'a BTreeMap<String, String>,
}

impl<'a> Condition<'a> {
    fn new(text: &str, selections: &'a BTreeMap<String, String>) -> Result<Self, SigmaError> {
        let mut tokens = Vec::new();
        let mut word = String::new();
        for c in text.chars() {
            if c == '(' || c == ')' || c.is_whitespace() {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                if !c.is_whitespace() {
                    tokens.push(c.to_string());
                }
            } else if c == '|' {
                return Err(err(
                    "detection",
                    "aggregations in the condition (`| count() ...`) are not supported; use a correlation rule",
                ));
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
        Ok(Condition {
            tokens,
            at: 0,
            selections,
        })
    }

    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn parse(mut self) -> Result<String, SigmaError> {
        let e = self.or()?;
        match self.peek() {
            None => Ok(e),
            Some(t) => Err(err("detection", format!("condition: unexpected `{t}`"))),
        }
    }

    fn or(&mut self) -> Result<String, SigmaError> {
        let mut e = self.and()?;
        while self.peek() == Some("or") {
            self.next();
            e = format!("({e} OR {})", self.and()?);
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<String, SigmaError> {
        let mut e = self.not()?;
        while self.peek() == Some("and") {
            self.next();
            e = format!("({e} AND {})", self.not()?);
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<String, SigmaError> {
        if self.peek() == Some("not") {
            self.next();
            return Ok(format!("(NOT coalesce({}, false))", self.not()?));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<String, SigmaError> {
        let t = self.next().ok_or_else(|| {
            err(
                "detection",
                "condition: it ends where a selection was expected",
            )
        })?;
        match t.as_str() {
            "(" => {
                let e = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(e),
                    _ => Err(err("detection", "condition: a `(` is not closed")),
                }
            }
            "1" | "all" => {
                if self.next().as_deref() != Some("of") {
                    return Err(err(
                        "detection",
                        format!("condition: `{t}` must be followed by `of`"),
                    ));
                }
                let pattern = self
                    .next()
                    .ok_or_else(|| err("detection", "condition: `of` needs a pattern or `them`"))?;
                let names: Vec<&String> = self
                    .selections
                    .keys()
                    .filter(|n| {
                        pattern == "them"
                            || match pattern.strip_suffix('*') {
                                Some(prefix) => n.starts_with(prefix),
                                None => **n == pattern,
                            }
                    })
                    .filter(|n| pattern != "them" || !n.starts_with('_'))
                    .collect();
                if names.is_empty() {
                    return Err(err(
                        "detection",
                        format!("condition: `{t} of {pattern}` names no selection"),
                    ));
                }
                let join = if t == "1" { " OR " } else { " AND " };
                let parts: Vec<String> = names
                    .iter()
                    .map(|n| self.selections[n.as_str()].clone())
                    .collect();
                Ok(format!("({})", parts.join(join)))
            }
            other if other.chars().all(|c| c.is_ascii_digit()) => Err(err(
                "detection",
                format!("condition: `{other} of` is not supported (only `1 of` and `all of`)"),
            )),
            name => self.selections.get(name).cloned().ok_or_else(|| {
                err(
                    "detection",
                    format!("condition: no selection named `{name}`"),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(detection: &str) -> Value {
        let text = format!(
            "title: t\nlogsource:\n  product: docket\n  service: api.called\ndetection:\n{detection}"
        );
        serde_yaml::from_str(&text).expect("yaml")
    }

    #[test]
    fn selections_modifiers_and_conditions_compile() {
        let sql = compile(&rule(
            "  sel:\n    audience|startswith: 'git'\n    status: [401, 403]\n  admin:\n    operation|contains|all: ['/admin', 'delete']\n  filter:\n    source|cidr: 10.0.0.0/8\n  condition: (sel or admin) and not filter\n",
        ))
        .expect("compiles");
        assert!(sql.contains("ILIKE 'git%'"), "{sql}");
        assert!(sql.contains("= 401 OR"), "{sql}");
        assert!(sql.contains("ILIKE '%/admin%' AND"), "{sql}");
        assert!(sql.contains("BETWEEN 167772160 AND 184549375"), "{sql}");
        assert!(sql.contains("NOT coalesce"), "{sql}");
    }

    #[test]
    fn what_is_not_supported_is_refused_by_name() {
        for (detection, named) in [
            (
                "  sel:\n    agent|base64: x\n  condition: sel\n",
                "modifier `base64`",
            ),
            (
                "  sel:\n    nosuch: x\n  condition: sel\n",
                "field `nosuch`",
            ),
            ("  sel:\n    - evil\n  condition: sel\n", "keyword searches"),
            (
                "  sel:\n    agent: x\n  condition: sel | count() > 5\n",
                "aggregations",
            ),
            ("  sel:\n    agent: x\n  condition: 2 of sel*\n", "`2 of`"),
            (
                "  sel:\n    source|cidr: 'fe80::/10'\n  condition: sel\n",
                "IPv6",
            ),
            (
                "  sel:\n    agent: x\n  condition: other\n",
                "no selection named `other`",
            ),
        ] {
            let e = compile(&rule(detection)).expect_err(detection);
            assert!(e.to_string().contains(named), "{e} should name {named}");
        }
        let corr: Value =
            serde_yaml::from_str("title: c\ncorrelation:\n  type: event_count\n").expect("yaml");
        assert!(
            compile(&corr)
                .expect_err("correlation")
                .to_string()
                .contains("correlation")
        );
    }

    #[test]
    fn wildcards_become_like_patterns_with_escapes() {
        assert_eq!(like_pattern("a*b?c"), "a%b_c");
        assert_eq!(like_pattern("100%_x"), "100\\%\\_x");
        assert_eq!(like_pattern("lit\\*"), "lit*");
    }
}
