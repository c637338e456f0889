//! The recording gateway's rules: which audience and scope a request needs, whether a token's introspection allows it, and the `api.called` record of what became of it.
//!
//! Pure: `docket gateway` (the HTTP edge in the binary) reads the request, asks the
//! vault to introspect the token and forwards; every decision it makes is one of
//! these functions, so the tests of the rules need no socket.

use std::collections::BTreeSet;

use docket_schemas::ApiCalled;
use docket_schemas::vault::Introspection;
use serde::Deserialize;

/// Who a record names when the gateway could not tell whose the token was (none, or unknown).
pub const UNVERIFIED: &str = "unverified";

/// Path segments a route pattern may have.
pub const ROUTE_SEGMENTS_MAX: usize = 64;
pub use docket_schemas::limits::TOOL_NAME_BYTES_MAX;

/// Longest wait for an upstream's answer, unless the config says otherwise.
pub const UPSTREAM_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Largest request body forwarded, unless the config says otherwise.
pub const REQUEST_BODY_MAX_DEFAULT: usize = 1 << 20;
/// Largest response body passed back, unless the config says otherwise.
pub const RESPONSE_BODY_MAX_DEFAULT: usize = 8 << 20;

/// What the gateway forwards: each audience's path prefix, upstream and routes, and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Longest wait for an upstream, headers and body, in milliseconds.
    #[serde(default = "upstream_timeout_ms_default")]
    pub upstream_timeout_ms: u64,
    #[serde(default = "request_body_max_default")]
    pub request_body_max: usize,
    #[serde(default = "response_body_max_default")]
    pub response_body_max: usize,
    #[serde(rename = "audience")]
    pub audiences: Vec<Audience>,
}

fn upstream_timeout_ms_default() -> u64 {
    UPSTREAM_TIMEOUT_MS_DEFAULT
}
fn request_body_max_default() -> usize {
    REQUEST_BODY_MAX_DEFAULT
}
fn response_body_max_default() -> usize {
    RESPONSE_BODY_MAX_DEFAULT
}

/// One upstream API, as tokens name it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// The audience tokens are issued for (`aud`), e.g. `https://api.github.com`.
    pub audience: String,
    /// The gateway's path prefix that selects this audience, e.g. `/github`.
    pub prefix: String,
    /// The upstream's base URL (`http://host:port` or with a base path); for an MCP
    /// server, its endpoint (`http://host:port/mcp`).
    pub upstream: String,
    /// The vault's provider (its `[connections.providers.NAME]`) whose user token the
    /// gateway attaches as `Authorization: Bearer`; none forwards no upstream credential.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    /// The upstream is an MCP server (Streamable HTTP): JSON-RPC messages are POSTed to
    /// the prefix itself and routed by tool, not by path.
    #[serde(default)]
    pub mcp: Option<Mcp>,
}

/// How an MCP server's messages are routed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    /// The scope every message other than a tool call needs (`initialize`, `tools/list`,
    /// notifications, responses to the server).
    pub session_scope: String,
    #[serde(rename = "tool")]
    pub tools: Vec<Tool>,
}

/// An MCP tool and the scope calling it needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub scope: String,
}

/// A method and path pattern, and the scope a call on it needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// An HTTP method in upper case, or `*` for any.
    pub method: String,
    /// Segments separated by `/`: a literal, `*` (one segment) or, last, `**` (the rest).
    pub path: String,
    pub scope: String,
}

/// A configuration the gateway cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesError {
    #[error("no [[audience]]: the gateway would forward nothing")]
    Empty,
    #[error("audience {audience:?}: {why}")]
    Audience { audience: String, why: String },
    #[error("audience {audience:?}, route {method} {path}: {why}")]
    Route {
        audience: String,
        method: String,
        path: String,
        why: String,
    },
}

impl Routes {
    /// Refuses what would make a request's route ambiguous or a record invalid.
    pub fn check(&self) -> Result<(), RoutesError> {
        if self.audiences.is_empty() {
            return Err(RoutesError::Empty);
        }
        let mut prefixes = BTreeSet::new();
        for a in &self.audiences {
            let bad = |why: String| RoutesError::Audience {
                audience: a.audience.clone(),
                why,
            };
            docket_schemas::event::identifier(
                "audience",
                &a.audience,
                docket_schemas::limits::OPERATION_BYTES_MAX,
            )
            .map_err(|e| bad(e.to_string()))?;
            if !a.prefix.starts_with('/') || a.prefix.ends_with('/') || a.prefix.contains("//") {
                return Err(bad(format!(
                    "prefix {:?} must start with / and not end with one (e.g. /github)",
                    a.prefix
                )));
            }
            if !prefixes.insert(a.prefix.as_str()) {
                return Err(bad(format!("prefix {} is used twice", a.prefix)));
            }
            // TLS to upstreams is not built yet: say so rather than fail at the first call.
            if !a.upstream.starts_with("http://") || a.upstream.ends_with('/') {
                return Err(bad(format!(
                    "upstream {:?} must be an http:// URL without a trailing / (https upstreams \
                     are not supported yet: put a TLS-originating proxy on loopback)",
                    a.upstream
                )));
            }
            if let Some(p) = &a.provider {
                docket_schemas::event::identifier(
                    "provider",
                    p,
                    docket_schemas::limits::PROVIDER_BYTES_MAX,
                )
                .map_err(|e| bad(e.to_string()))?;
            }
            match &a.mcp {
                Some(_) if !a.routes.is_empty() => {
                    return Err(bad(
                        "an MCP audience is routed by [[audience.mcp.tool]], not [[audience.route]]"
                            .into(),
                    ));
                }
                Some(m) => {
                    docket_schemas::event::scope(&m.session_scope)
                        .map_err(|e| bad(format!("session_scope: {e}")))?;
                    let mut names = BTreeSet::new();
                    for t in &m.tools {
                        docket_schemas::event::identifier("tool", &t.name, TOOL_NAME_BYTES_MAX)
                            .map_err(|e| bad(e.to_string()))?;
                        docket_schemas::event::scope(&t.scope)
                            .map_err(|e| bad(format!("tool {}: {e}", t.name)))?;
                        if !names.insert(t.name.as_str()) {
                            return Err(bad(format!("tool {} is listed twice", t.name)));
                        }
                    }
                }
                None if a.routes.is_empty() => {
                    return Err(bad("no [[audience.route]]: nothing would pass".into()));
                }
                None => {}
            }
            for r in &a.routes {
                let bad = |why: String| RoutesError::Route {
                    audience: a.audience.clone(),
                    method: r.method.clone(),
                    path: r.path.clone(),
                    why,
                };
                if r.method != "*"
                    && (r.method.is_empty() || !r.method.bytes().all(|c| c.is_ascii_uppercase()))
                {
                    return Err(bad("method must be upper case (GET) or *".into()));
                }
                let segments = pattern_segments(&r.path).map_err(bad)?;
                if segments.len() > ROUTE_SEGMENTS_MAX {
                    return Err(bad(format!("more than {ROUTE_SEGMENTS_MAX} segments")));
                }
                docket_schemas::event::scope(&r.scope).map_err(|e| bad(e.to_string()))?;
            }
        }
        Ok(())
    }
}

fn pattern_segments(path: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with /".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if let Some(i) = segments.iter().position(|s| *s == "**")
        && i + 1 != segments.len()
    {
        return Err("** may only be the last segment".into());
    }
    Ok(segments)
}

/// Whether a path means the same to the gateway and to any upstream: no `.` or `..`
/// segment, no empty segment but a trailing one, and none of the characters or escapes
/// (`%2F`, `%5C`, `%2E`, `%00`, `%25`, `;`, `\\`) that servers decode or normalise
/// differently. A route approves the path the upstream will act on, or nothing.
pub fn path_is_plain(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%00", "%25", ";", "\\"]
        .iter()
        .any(|bad| lower.contains(bad))
    {
        return false;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
}

fn matches(pattern: &str, path: &str) -> bool {
    let Ok(pattern) = pattern_segments(pattern) else {
        return false;
    };
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut path = rest.split('/');
    for p in pattern {
        if p == "**" {
            return true;
        }
        match path.next() {
            Some(s) if p == "*" && !s.is_empty() => {}
            Some(s) if p == s => {}
            _ => return false,
        }
    }
    path.next().is_none()
}

/// Why the gateway answered without forwarding; each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no audience is served under {0}: the gateway's config lists its prefixes")]
    NoAudience(String),
    #[error(
        "no route allows {method} {path} on {audience}: the gateway forwards only what its config lists"
    )]
    NoRoute {
        audience: String,
        method: String,
        path: String,
    },
    #[error("no token: send Authorization: Bearer <a Docket token for {0}>")]
    NoToken(String),
    #[error("the token is not active: {0}")]
    Inactive(String),
    #[error("the token is for {held}, not {wanted}")]
    WrongAudience { held: String, wanted: String },
    #[error("the token does not carry scope {needed} (it carries: {held})")]
    MissingScope { needed: String, held: String },
    #[error("the request body is over {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request's path and query are over {0} bytes")]
    PathTooLong(usize),
    #[error("{0}")]
    McpMalformed(String),
    #[error("the {header} header says {said:?} but the message says {body:?}")]
    McpHeaderMismatch {
        header: &'static str,
        said: String,
        body: String,
    },
    #[error("no tool {tool:?} is allowed on {audience}: the gateway's config lists its tools")]
    NoTool { audience: String, tool: String },
    #[error("MCP messages are POSTed to {0}; GET streams are not proxied")]
    McpNotPost(String),
    #[error(
        "the path {0} could mean another to the upstream (a . or .. segment, an empty one, or an encoded separator): send it plain"
    )]
    AmbiguousPath(String),
    /// The vault holds no working upstream token for the token's user (none linked, broken,
    /// or the provider refused): the user must link the account (again).
    #[error("no upstream credential: {0}")]
    NoConnection(String),
    /// The token is bound to approved actions (RFC 9396) and this call is none of them.
    #[error("not an approved action: {0}")]
    NotApproved(String),
    /// The provider could not refresh the user's token now: worth trying again later.
    #[error("the upstream credential could not be refreshed: {0}")]
    ConnectionUnavailable(String),
}

impl Refusal {
    /// The HTTP status the agent gets.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoAudience(_) => 404,
            Refusal::NoToken(_) | Refusal::Inactive(_) => 401,
            Refusal::NoRoute { .. }
            | Refusal::WrongAudience { .. }
            | Refusal::MissingScope { .. }
            | Refusal::NoTool { .. }
            | Refusal::NoConnection(_)
            | Refusal::NotApproved(_) => 403,
            Refusal::ConnectionUnavailable(_) => 503,
            Refusal::BodyTooLarge(_) => 413,
            Refusal::PathTooLong(_) => 414,
            Refusal::McpMalformed(_)
            | Refusal::McpHeaderMismatch { .. }
            | Refusal::AmbiguousPath(_) => 400,
            Refusal::McpNotPost(_) => 405,
        }
    }
}

/// The audience and route a request falls under, and its path below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected<'a> {
    pub audience: &'a Audience,
    pub scope: &'a str,
    /// The path to ask the upstream for (below the audience's prefix), without the query.
    pub path: String,
}

/// The audience whose prefix the path is under (`None` when there is none).
pub fn audience_for<'a>(routes: &'a Routes, path: &str) -> Option<(&'a Audience, String)> {
    routes.audiences.iter().find_map(|a| {
        let rest = path.strip_prefix(a.prefix.as_str())?;
        match rest {
            "" => Some((a, "/".to_string())),
            r if r.starts_with('/') => Some((a, r.to_string())),
            _ => None,
        }
    })
}

/// What an MCP message is, for its route and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpMessage {
    /// The JSON-RPC method (`tools/call`, `initialize`, ...), or `response` for a
    /// client's answer to the server.
    pub method: String,
    /// The tool, for `tools/call`.
    pub tool: Option<String>,
    /// [`arguments_hash`] of a tool call's `arguments`.
    pub arguments_hash: Option<String>,
}

/// Hex BLAKE3 of a tool call's `arguments` as compact JSON with object keys sorted
/// (absent arguments are `{}`): the record keeps this, never the arguments.
pub fn arguments_hash(arguments: &serde_json::Value) -> String {
    // serde_json's Map is ordered by key (no preserve_order feature), so this is canonical.
    blake3::hash(arguments.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// A routing header's value as MCP encodes it: verbatim, or `=?base64?<payload>?=` for a
/// value that is not plain ASCII. `None` for a malformed or non-canonical encoding, which
/// then matches nothing.
pub fn mcp_header_value(raw: &str) -> Option<String> {
    let Some(payload) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(raw.to_string());
    };
    let bytes = docket_schemas::decode_base64(payload)?;
    // Canonical only, as the MCP SDKs emit: one spelling per value.
    if docket_schemas::encode_base64(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Reads an MCP message (one JSON-RPC object, POSTed) and the `Mcp-Method` and
/// `Mcp-Name` headers a client sent; they must agree with the body, since a gateway
/// that routed on headers alone could be told one tool and made to call another.
pub fn read_mcp(
    body: &[u8],
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
) -> Result<McpMessage, Refusal> {
    let bad = |why: &str| Refusal::McpMalformed(format!("not an MCP message: {why}"));
    // A repeated key, or a key that differs from a routed one only in case, could be read
    // one way here and another way by the server (parsers disagree on both).
    docket_schemas::strict_json::check(body).map_err(|e| bad(&e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let look_alike = |o: &serde_json::Map<String, serde_json::Value>, keys: &[&str]| {
        o.keys()
            .find(|k| {
                keys.iter()
                    .any(|want| k.eq_ignore_ascii_case(want) && k.as_str() != *want)
            })
            .cloned()
    };
    if let Some(o) = value.as_object() {
        let nested = o.get("params").and_then(|p| p.as_object());
        if let Some(k) = look_alike(o, &["jsonrpc", "method", "params", "id"])
            .or_else(|| nested.and_then(|p| look_alike(p, &["name", "arguments"])))
        {
            return Err(bad(&format!(
                "the key {k:?} differs from a routed key only in case"
            )));
        }
    }
    let obj = match &value {
        serde_json::Value::Object(o) => o,
        serde_json::Value::Array(_) => return Err(bad("JSON-RPC batches are not routed")),
        _ => return Err(bad("not a JSON-RPC object")),
    };
    if obj.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
        return Err(bad("jsonrpc is not \"2.0\""));
    }
    let method = match obj.get("method") {
        Some(serde_json::Value::String(m)) => m.clone(),
        Some(_) => return Err(bad("method is not a string")),
        None if obj.contains_key("result") || obj.contains_key("error") => "response".into(),
        None => return Err(bad("no method")),
    };
    if let Some(said) = mcp_method
        && said != method
    {
        return Err(Refusal::McpHeaderMismatch {
            header: "Mcp-Method",
            said: said.into(),
            body: method,
        });
    }
    if method != "tools/call" {
        return Ok(McpMessage {
            method,
            tool: None,
            arguments_hash: None,
        });
    }
    let params = obj.get("params").and_then(|p| p.as_object());
    let Some(tool) = params.and_then(|p| p.get("name")).and_then(|n| n.as_str()) else {
        return Err(bad("tools/call without params.name"));
    };
    if let Some(said) = mcp_name
        && said != tool
    {
        return Err(Refusal::McpHeaderMismatch {
            header: "Mcp-Name",
            said: said.into(),
            body: tool.into(),
        });
    }
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let arguments = params.and_then(|p| p.get("arguments")).unwrap_or(&empty);
    Ok(McpMessage {
        method,
        tool: Some(tool.to_string()),
        arguments_hash: Some(arguments_hash(arguments)),
    })
}

/// The scope an MCP message needs on `audience` (which must be an MCP audience).
pub fn mcp_scope<'a>(audience: &'a Audience, message: &McpMessage) -> Result<&'a str, Refusal> {
    let Some(mcp) = &audience.mcp else {
        return Err(Refusal::McpMalformed(format!(
            "{} is not an MCP audience",
            audience.audience
        )));
    };
    match &message.tool {
        None => Ok(&mcp.session_scope),
        Some(tool) => mcp
            .tools
            .iter()
            .find(|t| &t.name == tool)
            .map(|t| t.scope.as_str())
            .ok_or_else(|| Refusal::NoTool {
                audience: audience.audience.clone(),
                tool: tool.clone(),
            }),
    }
}

/// The route a request takes, first match in the config's order.
pub fn select<'a>(routes: &'a Routes, method: &str, path: &str) -> Result<Selected<'a>, Refusal> {
    let (audience, rest) =
        audience_for(routes, path).ok_or_else(|| Refusal::NoAudience(path.to_string()))?;
    if !path_is_plain(&rest) {
        return Err(Refusal::AmbiguousPath(rest));
    }
    let route = audience
        .routes
        .iter()
        .find(|r| (r.method == "*" || r.method == method) && matches(&r.path, &rest))
        .ok_or_else(|| Refusal::NoRoute {
            audience: audience.audience.clone(),
            method: method.to_string(),
            path: rest.clone(),
        })?;
    Ok(Selected {
        audience,
        scope: &route.scope,
        path: rest,
    })
}

/// Whose token it is, as the vault's introspection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub agent: String,
}

/// Whether an introspection at `now_s` (Unix seconds) lets a call on `audience` needing
/// `scope` through. The agent and token are named when the vault knew them, even refused.
pub fn judge(
    intro: &Introspection,
    audience: &str,
    scope: &str,
    now_s: i64,
) -> (Option<Caller>, Result<(), Refusal>) {
    let caller = match (&intro.jti, &intro.client_id) {
        (Some(t), Some(a)) => Some(Caller {
            token_id: t.clone(),
            agent: a.clone(),
        }),
        _ => None,
    };
    if !intro.active {
        let why = intro
            .reason
            .clone()
            .unwrap_or_else(|| "unknown token".into());
        return (caller, Err(Refusal::Inactive(why)));
    }
    if intro.exp.is_some_and(|exp| exp <= now_s) {
        return (caller, Err(Refusal::Inactive("token expired".into())));
    }
    let held = intro.aud.clone().unwrap_or_default();
    if held != audience {
        return (
            caller,
            Err(Refusal::WrongAudience {
                held,
                wanted: audience.to_string(),
            }),
        );
    }
    let scopes = intro.scope.as_deref().unwrap_or("");
    if !scopes.split(' ').any(|s| s == scope) {
        return (
            caller,
            Err(Refusal::MissingScope {
                needed: scope.to_string(),
                held: scopes.to_string(),
            }),
        );
    }
    (caller, Ok(()))
}

/// The hash a record carries of what was asked: hex BLAKE3 of
/// `METHOD SP path-and-query LF body`, so a caller holding the request can show it is this one.
pub fn request_hash(method: &str, target: &str, body: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(target.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().to_hex().to_string()
}

/// What the gateway saw of one request, for its record.
#[derive(Debug, Clone)]
pub struct Seen {
    pub audience: String,
    pub method: String,
    /// The path below the audience's prefix (the operation).
    pub operation: String,
    pub scope: Option<String>,
    pub source: String,
    pub request_bytes: u64,
    pub request_hash: String,
    /// An MCP tool call's tool and arguments' hash.
    pub tool: Option<String>,
    pub arguments_hash: Option<String>,
}

impl Seen {
    /// The call as its record will show it: what a token's authorization details are
    /// checked against, by the gateway now and by the fold once it is recorded.
    pub fn shape(&self) -> crate::authorization::CallShape<'_> {
        crate::authorization::CallShape {
            audience: &self.audience,
            method: &self.method,
            operation: &self.operation,
            request_hash: Some(&self.request_hash),
            tool: self.tool.as_deref(),
            arguments_hash: self.arguments_hash.as_deref(),
        }
    }
}

/// The `api.called` record of a request: forwarded (`status` is the upstream's, or the
/// gateway's own when the upstream failed) or refused before forwarding (`refused` says why).
pub fn record(
    seen: &Seen,
    caller: Option<&Caller>,
    status: u16,
    latency_ms: u64,
    response_bytes: u64,
    refused: Option<String>,
) -> ApiCalled {
    let (token_id, agent) = match caller {
        Some(c) => (c.token_id.clone(), c.agent.clone()),
        None => (UNVERIFIED.to_string(), UNVERIFIED.to_string()),
    };
    // The reason quotes what the client sent: only what a record's text may hold.
    let refused = refused.map(|r| {
        let mut clean: String = r
            .chars()
            .filter(|c| !docket_schemas::event::is_hidden(*c))
            .collect();
        let mut end = clean.len().min(docket_schemas::limits::TEXT_BYTES_MAX);
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean
    });
    ApiCalled {
        token_id,
        token_hash: None,
        agent,
        audience: seen.audience.clone(),
        method: seen.method.clone(),
        operation: seen.operation.clone(),
        scope: seen.scope.clone(),
        status,
        source: seen.source.clone(),
        latency_ms: Some(latency_ms),
        request_bytes: Some(seen.request_bytes),
        response_bytes: Some(response_bytes),
        request_hash: Some(seen.request_hash.clone()),
        refused,
        tool: seen.tool.clone(),
        arguments_hash: seen.arguments_hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        toml_like(vec![
            ("GET", "/repos/*/*", "repo:read"),
            ("POST", "/repos/*/*/issues", "issues:write"),
            ("*", "/public/**", "public"),
        ])
    }

    fn toml_like(rs: Vec<(&str, &str, &str)>) -> Routes {
        Routes {
            upstream_timeout_ms: UPSTREAM_TIMEOUT_MS_DEFAULT,
            request_body_max: REQUEST_BODY_MAX_DEFAULT,
            response_body_max: RESPONSE_BODY_MAX_DEFAULT,
            audiences: vec![Audience {
                audience: "https://api.github.com".into(),
                prefix: "/github".into(),
                upstream: "http://127.0.0.1:9".into(),
                provider: None,
                routes: rs
                    .into_iter()
                    .map(|(m, p, s)| Route {
                        method: m.into(),
                        path: p.into(),
                        scope: s.into(),
                    })
                    .collect(),
                mcp: None,
            }],
        }
    }

    fn intro(active: bool, scope: &str) -> Introspection {
        Introspection {
            active,
            scope: Some(scope.into()),
            client_id: Some("agent-7".into()),
            sub: Some("alice".into()),
            aud: Some("https://api.github.com".into()),
            exp: Some(2_000),
            iat: Some(1_000),
            jti: Some("tok-1".into()),
            reason: (!active).then(|| "agent suspended".to_string()),
            authorization_details: vec![],
        }
    }

    #[test]
    fn routes_select_by_prefix_method_and_pattern() {
        let r = routes();
        r.check().unwrap();
        let s = select(&r, "GET", "/github/repos/acme/web").unwrap();
        assert_eq!((s.scope, s.path.as_str()), ("repo:read", "/repos/acme/web"));
        assert_eq!(
            select(&r, "POST", "/github/repos/acme/web/issues")
                .unwrap()
                .scope,
            "issues:write"
        );
        assert_eq!(
            select(&r, "DELETE", "/github/public/a/b/c").unwrap().scope,
            "public"
        );
        // One segment per *, none empty, nothing left over.
        for (m, p) in [
            ("GET", "/github/repos/acme"),
            ("GET", "/github/repos/acme/web/extra"),
            ("DELETE", "/github/repos/acme/web"),
        ] {
            assert_eq!(select(&r, m, p).unwrap_err().status(), 403, "{m} {p}");
        }
        // Paths an upstream could read as another are refused, never matched.
        for p in [
            "/github/repos/../admin",
            "/github/public/../../internal",
            "/github/repos/acme/web%2Fcollaborators",
            "/github/repos/acme/%2e%2e",
            "/github/repos/acme/web;x",
            "/github/public/a//b",
        ] {
            assert_eq!(
                select(&r, "GET", p).unwrap_err(),
                Refusal::AmbiguousPath(p.trim_start_matches("/github").to_string()),
                "{p}"
            );
        }
        assert!(path_is_plain("/repos/acme/web/"));
        // A prefix is a whole segment: /githubx is not under /github.
        assert_eq!(
            select(&r, "GET", "/githubx/repos/a/b")
                .unwrap_err()
                .status(),
            404
        );
    }

    #[test]
    fn a_config_that_would_mislead_is_refused() {
        let mut r = routes();
        r.audiences[0].routes[0].path = "/a/**/b".into();
        assert!(
            r.check()
                .unwrap_err()
                .to_string()
                .contains("** may only be the last")
        );
        let mut r = routes();
        r.audiences[0].prefix = "/github/".into();
        assert!(r.check().is_err());
        let mut r = routes();
        r.audiences.push(r.audiences[0].clone());
        assert!(r.check().unwrap_err().to_string().contains("used twice"));
        let mut r = routes();
        r.audiences[0].routes[0].method = "get".into();
        assert!(r.check().is_err());
        let mut r = routes();
        r.audiences[0].routes[0].scope = "repo read".into();
        assert!(r.check().is_err());
        let mut r = routes();
        r.audiences.clear();
        assert_eq!(r.check(), Err(RoutesError::Empty));
    }

    #[test]
    fn judge_needs_an_active_token_for_this_audience_with_the_scope() {
        let ok = intro(true, "repo:read issues:write");
        let (caller, verdict) = judge(&ok, "https://api.github.com", "repo:read", 1_500);
        assert_eq!(verdict, Ok(()));
        assert_eq!(caller.unwrap().agent, "agent-7");
        let (_, v) = judge(&ok, "https://api.github.com", "repo:admin", 1_500);
        assert_eq!(v.unwrap_err().status(), 403);
        let (_, v) = judge(&ok, "https://slack.com/api", "repo:read", 1_500);
        assert!(matches!(v, Err(Refusal::WrongAudience { .. })));
        let (_, v) = judge(&ok, "https://api.github.com", "repo:read", 2_000);
        assert_eq!(v, Err(Refusal::Inactive("token expired".into())));
        let (caller, v) = judge(
            &intro(false, ""),
            "https://api.github.com",
            "repo:read",
            1_500,
        );
        assert_eq!(v, Err(Refusal::Inactive("agent suspended".into())));
        assert_eq!(caller.unwrap().token_id, "tok-1");
        let (caller, v) = judge(
            &Introspection::default(),
            "https://api.github.com",
            "repo:read",
            1_500,
        );
        assert_eq!((caller, v.unwrap_err().status()), (None, 401));
    }

    #[test]
    fn records_are_valid_events_forwarded_or_refused() {
        let seen = Seen {
            audience: "https://api.github.com".into(),
            method: "GET".into(),
            operation: "/repos/acme/web".into(),
            scope: Some("repo:read".into()),
            source: "127.0.0.1".into(),
            request_bytes: 0,
            request_hash: request_hash("GET", "/repos/acme/web", b""),
            tool: None,
            arguments_hash: None,
        };
        let forwarded = record(
            &seen,
            Some(&Caller {
                token_id: "tok-1".into(),
                agent: "agent-7".into(),
            }),
            200,
            3,
            120,
            None,
        );
        let refused = record(&seen, None, 401, 0, 0, Some("unknown token".into()));
        // A reason quoting a hostile client is cut to what a record may hold.
        let hostile = record(
            &seen,
            None,
            403,
            0,
            0,
            Some(format!("no tool \u{202e}{}", "x".repeat(5000))),
        );
        assert!(hostile.refused.as_ref().unwrap().len() <= docket_schemas::limits::TEXT_BYTES_MAX);
        for body in [forwarded, refused, hostile] {
            docket_schemas::EventBody::ApiCalled(body)
                .validate()
                .unwrap();
        }
        assert_ne!(
            request_hash("GET", "/a", b"x"),
            request_hash("GET", "/a", b"y")
        );
    }

    #[test]
    fn mcp_messages_route_by_tool_and_headers_must_agree_with_the_body() {
        let audience = Audience {
            audience: "https://mcp.example.com".into(),
            prefix: "/tools".into(),
            upstream: "http://127.0.0.1:9/mcp".into(),
            provider: None,
            routes: vec![],
            mcp: Some(Mcp {
                session_scope: "mcp:session".into(),
                tools: vec![Tool {
                    name: "create_issue".into(),
                    scope: "issues:write".into(),
                }],
            }),
        };
        let call = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_issue","arguments":{"title":"t","body":"b"}}}"#;
        let m = read_mcp(call, Some("tools/call"), Some("create_issue")).unwrap();
        assert_eq!(m.tool.as_deref(), Some("create_issue"));
        assert_eq!(mcp_scope(&audience, &m), Ok("issues:write"));
        // Key order does not change the hash; a value does.
        let reordered = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{"body":"b","title":"t"},"name":"create_issue"}}"#;
        let changed = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_issue","arguments":{"title":"t","body":"c"}}}"#;
        let hash = |b: &[u8]| read_mcp(b, None, None).unwrap().arguments_hash;
        assert_eq!(hash(call), hash(reordered));
        assert_ne!(hash(call), hash(changed));
        // The headers may not say another tool than the body calls.
        let e = read_mcp(call, Some("tools/call"), Some("read_issue")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("Mcp-Name"), "{e}");
        assert_eq!(
            read_mcp(call, Some("tools/list"), None)
                .unwrap_err()
                .status(),
            400
        );
        // Another tool, a batch, something else: refused, each saying why.
        let other =
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_repo"}}"#;
        let m = read_mcp(other, None, None).unwrap();
        assert_eq!(mcp_scope(&audience, &m).unwrap_err().status(), 403);
        assert_eq!(read_mcp(b"[{}]", None, None).unwrap_err().status(), 400);
        assert_eq!(read_mcp(b"{", None, None).unwrap_err().status(), 400);
        // Repeated keys and case look-alikes: a Go server would read another tool.
        let twice = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"create_issue","name":"delete_repo"}}"#;
        let cased = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"create_issue","Name":"delete_repo"}}"#;
        for body in [&twice[..], &cased[..]] {
            assert_eq!(read_mcp(body, None, None).unwrap_err().status(), 400);
        }
        // Session messages need the session scope.
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        let m = read_mcp(init, None, None).unwrap();
        assert_eq!(
            (m.method.as_str(), mcp_scope(&audience, &m)),
            ("initialize", Ok("mcp:session"))
        );
        let answer = br#"{"jsonrpc":"2.0","id":9,"result":{}}"#;
        assert_eq!(read_mcp(answer, None, None).unwrap().method, "response");
        // Routing headers may be base64-encoded (canonical only).
        assert_eq!(
            mcp_header_value("create_issue").as_deref(),
            Some("create_issue")
        );
        let encoded = format!(
            "=?base64?{}?=",
            docket_schemas::encode_base64(b"cr\xc3\xa9er")
        );
        assert_eq!(mcp_header_value(&encoded).as_deref(), Some("cr\u{e9}er"));
        assert_eq!(mcp_header_value("=?base64?!!?="), None);
    }
}
