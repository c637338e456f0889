//! `docket gateway`: the recording reverse proxy in front of upstream APIs.
//!
//! Shell code: each request's route, token verdict and record are decided by
//! `docket_ledger::gateway` (pure); this file reads the request, asks the vault to
//! introspect the token (`docket.vault.introspect`, signed with the gateway's key),
//! forwards, and publishes the `api.called` record. The agent sees the upstream's
//! answer only once JetStream has acknowledged its record: no record, no answer. A
//! refusal is recorded too, and nothing is forwarded when the vault cannot be asked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use docket_ledger::gateway::{self, Caller, Refusal, Routes, Seen};
use docket_ledger::keyfile;
use docket_ledger::publisher::Sink;
use docket_schemas::limits::{METHOD_BYTES_MAX, OPERATION_BYTES_MAX};
use docket_schemas::vault::{ConnectionReply, Introspection, Op, Reply};
use docket_schemas::{EventBody, EventId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the listen backlog.
pub const GATEWAY_CONNECTIONS_MAX: usize = 1024;
/// Longest wait for the vault's introspection; past it the call is refused, not forwarded.
pub const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a user's upstream token: the vault may have to refresh it first
/// (three attempts of at most `connections::PROVIDER_TIMEOUT` each, 8.1 s in all), and
/// a NATS request gives up after 10 s whatever is asked.
pub const UPSTREAM_TOKEN_TIMEOUT: Duration = Duration::from_secs(9);
/// Longest wait for JetStream to acknowledge a record; past it the answer is withheld.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send its request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections kept per host.
pub const UPSTREAM_IDLE_PER_HOST: usize = 64;

#[derive(Args)]
pub struct GatewayArgs {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// NATS server URL: the vault answers introspections there, JetStream takes the records.
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: crate::NatsAuthArgs,
    /// The gateway's key file: the admin registered it for api.called.
    #[arg(long, env = "DOCKET_KEY")]
    key: PathBuf,
    /// The gateway's config (TOML): [[audience]] tables with prefix, upstream and [[audience.route]]s.
    #[arg(long)]
    config: PathBuf,
}

/// What every request handler shares.
pub struct Gateway {
    routes: Routes,
    key: ed25519_dalek::SigningKey,
    nats: async_nats::Client,
    sink: Sink,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    /// A gateway over `nats`, signing with `key`; checks at once that the vault answers it
    /// as a gateway, so a missing vault or an unregistered key fails at start, not at a call.
    pub async fn start(
        routes: Routes,
        key: ed25519_dalek::SigningKey,
        nats: async_nats::Client,
    ) -> Result<Arc<Gateway>> {
        let sink = Sink::Nats(async_nats::jetstream::new(nats.clone()));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(UPSTREAM_IDLE_PER_HOST)
            .build(connector);
        let gw = Arc::new(Gateway {
            routes,
            key,
            nats,
            sink,
            client,
        });
        if let Err(e) = introspect(&gw, "docket-gateway-start-check").await {
            bail!("{e}");
        }
        Ok(gw)
    }
}

/// Reads and checks a gateway config file.
pub fn load_routes(path: &std::path::Path) -> Result<Routes> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the gateway config {}", path.display()))?;
    let routes: Routes = toml::from_str(&text)
        .with_context(|| format!("{}: not a gateway config", path.display()))?;
    routes
        .check()
        .with_context(|| format!("{}: refused", path.display()))?;
    Ok(routes)
}

pub async fn run(a: GatewayArgs) -> Result<std::process::ExitCode> {
    let routes = load_routes(&a.config)?;
    let key = keyfile::read(&a.key)?;
    let nats = docket_ledger::transport::connect(&a.nats, &a.nats_auth.auth()).await?;
    let gw = Gateway::start(routes, key, nats).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    println!("gateway listening on http://{}", listener.local_addr()?);
    serve(gw, listener, crate::shutdown_signal()).await?;
    eprintln!("gateway: stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Serves connections on `listener` until `stop` resolves.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(GATEWAY_CONNECTIONS_MAX));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = Arc::clone(&slots).acquire_owned() => p.context("the connection slots closed")?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move {
                    // Its own task: an agent that hangs up cannot cancel a call half way,
                    // after the upstream acted and before its record was published.
                    let handled = tokio::spawn(async move { handle(&gw, req, peer).await });
                    Ok::<_, Infallible>(handled.await.unwrap_or_else(|e| {
                        plain(
                            500,
                            &format!("the gateway failed on this request: {e}"),
                            None,
                        )
                    }))
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    Ok(())
}

/// The vault's word on a token, or why it could not be had (the call is then not forwarded).
async fn introspect(gw: &Gateway, token: &str) -> Result<Introspection, String> {
    let asked = crate::vault_cmd::request_within(
        &gw.nats,
        &gw.key,
        Op::Introspect {
            token: token.to_string(),
        },
        INTROSPECTION_TIMEOUT,
    )
    .await
    .map_err(|e| format!("the vault could not check the token: {e:#}"))?;
    match asked {
        Reply::Introspection(i) => Ok(i),
        Reply::Outcome(o) => Err(format!(
            "the vault refused the gateway's introspection: {}",
            o.error.unwrap_or_default()
        )),
    }
}

fn answer(status: u16, headers: HeaderMap, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *r.headers_mut() = headers;
    r
}

/// The gateway's own answer: JSON naming the status and the reason.
fn plain(status: u16, why: &str, event: Option<EventId>) -> Response<Full<Bytes>> {
    let (headers, body) = own_answer(status, why, event);
    answer(status, headers, body)
}

fn own_answer(status: u16, why: &str, event: Option<EventId>) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == 401 {
        // RFC 6750: a Bearer challenge, so a client library knows what to do.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    if let Some(id) = event
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        headers.insert(RECORD_HEADER, v);
    }
    let mut body = serde_json::json!({"status": status, "error": why});
    // Only a refusal knows its record here; a forwarded call's is in the header alone.
    if let Some(id) = event {
        body["record"] = serde_json::Value::String(id.to_string());
    }
    (headers, Bytes::from(body.to_string()))
}

/// The header naming the event id of the call's record.
const RECORD_HEADER: HeaderName = HeaderName::from_static("docket-record");

/// Headers that belong to one connection (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers dropped before forwarding (beside `Authorization` and hop-by-hop ones).
const NOT_FORWARDED: [&str; 14] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-forwarded-proto",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-for",
    "forwarded",
];

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || named_by_connection.iter().any(|c| c == n)
            || name == header::CONTENT_LENGTH
            || name == header::HOST
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// Publishes a call's record and waits for JetStream to hold it.
async fn record(gw: &Gateway, call: docket_schemas::ApiCalled) -> Result<EventId, String> {
    let ts = docket_ledger::clock::now().map_err(|e| e.to_string())?;
    docket_ledger::publisher::publish_one(
        &gw.sink,
        &gw.key,
        EventBody::ApiCalled(call),
        ts,
        RECORD_TIMEOUT,
    )
    .await
}

/// Records a refusal and answers it; the refusal stands whether or not the record was stored.
async fn refuse(
    gw: &Gateway,
    seen: &Seen,
    caller: Option<&Caller>,
    refusal: &Refusal,
    started: Instant,
) -> Response<Full<Bytes>> {
    let why = refusal.to_string();
    let call = gateway::record(
        seen,
        caller,
        refusal.status(),
        elapsed_ms(started),
        0,
        Some(why.clone()),
    );
    match record(gw, call).await {
        Ok(id) => plain(refusal.status(), &why, Some(id)),
        Err(e) => {
            tracing::error!(error = %e, "a refusal's record was not stored");
            plain(
                refusal.status(),
                &format!("{why} (and its record was not stored: {e})"),
                None,
            )
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The request's path and query, cut to what a record may hold (ASCII: a URI's characters).
fn operation_text(path: &str) -> String {
    let mut s: String = path
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    s.truncate(OPERATION_BYTES_MAX);
    s
}

async fn handle(gw: &Gateway, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let Some((audience, below)) = gateway::audience_for(&gw.routes, &path) else {
        // Nothing to attribute it to: not recorded, like any request for a page that is not there.
        return plain(404, &Refusal::NoAudience(path).to_string(), None);
    };
    let upstream_base = audience.upstream.clone();
    let audience_name = audience.audience.clone();
    let target = format!("{below}{query}");
    let mut seen = Seen {
        audience: audience_name.clone(),
        method: method.clone(),
        operation: operation_text(&below),
        scope: None,
        source: peer.ip().to_string(),
        request_bytes: 0,
        request_hash: gateway::request_hash(&method, &target, b""),
        tool: None,
        arguments_hash: None,
    };
    if target.len() > OPERATION_BYTES_MAX {
        return refuse(
            gw,
            &seen,
            None,
            &Refusal::PathTooLong(OPERATION_BYTES_MAX),
            started,
        )
        .await;
    }
    if method.len() > METHOD_BYTES_MAX || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        // A record's method is upper-case letters; nothing else is routed.
        return plain(405, &format!("method {method:?} is not routed"), None);
    }
    let token = bearer(req.headers());
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, gw.routes.request_body_max).collect(),
    )
    .await;
    let Ok(read) = read else {
        return plain(
            408,
            &format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
            None,
        );
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let refusal = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Refusal::BodyTooLarge(gw.routes.request_body_max)
            } else {
                return plain(
                    400,
                    &format!("the request body could not be read: {e}"),
                    None,
                );
            };
            return refuse(gw, &seen, None, &refusal, started).await;
        }
    };
    seen.request_bytes = body.len() as u64;
    seen.request_hash = gateway::request_hash(&method, &target, &body);
    let routed = match &audience.mcp {
        None => gateway::select(&gw.routes, &method, &path).map(|s| s.scope.to_string()),
        Some(_) => mcp_route(audience, &method, &below, &parts.headers, &body, &mut seen),
    };
    let scope = match routed {
        Ok(scope) => scope,
        Err(r) => return refuse(gw, &seen, None, &r, started).await,
    };
    // An MCP server's endpoint is its URL itself; an API's paths go below its base.
    let upstream_target = match &audience.mcp {
        Some(_) => query.clone(),
        None => target.clone(),
    };
    seen.scope = Some(scope.clone());
    let Some(token) = token else {
        return refuse(gw, &seen, None, &Refusal::NoToken(audience_name), started).await;
    };
    let intro = match introspect(gw, &token).await {
        Ok(i) => i,
        // The ledger cannot be asked, so it could not record either: refuse, forward nothing.
        Err(e) => return plain(503, &format!("{e}; nothing was forwarded"), None),
    };
    let now_s = match docket_ledger::clock::now() {
        Ok(t) => t.as_micros() / 1_000_000,
        Err(e) => return plain(503, &format!("the gateway's clock: {e}"), None),
    };
    let (caller, verdict) = gateway::judge(&intro, &audience_name, &scope, now_s);
    if let Err(r) = verdict {
        return refuse(gw, &seen, caller.as_ref(), &r, started).await;
    }
    // A token bound to approved actions (RFC 9396) passes only those: the fold's own test.
    let shape = seen.shape();
    if let Err(why) = docket_ledger::authorization::permits(
        &intro.authorization_details,
        intro.aud.as_deref().unwrap_or_default(),
        &shape,
    ) {
        return refuse(
            gw,
            &seen,
            caller.as_ref(),
            &Refusal::NotApproved(why),
            started,
        )
        .await;
    }
    // The user's upstream token, from the vault: the agent never holds it.
    let upstream_token = match &audience.provider {
        None => None,
        Some(provider) => match upstream_token(gw, &token, provider).await {
            Ok(t) => Some(t),
            Err(r) => return refuse(gw, &seen, caller.as_ref(), &r, started).await,
        },
    };
    let (status, headers, reply_body) = forward(
        gw,
        &upstream_base,
        &upstream_target,
        &parts,
        body,
        peer,
        upstream_token,
    )
    .await;
    let call = gateway::record(
        &seen,
        caller.as_ref(),
        status,
        elapsed_ms(started),
        reply_body.len() as u64,
        None,
    );
    match record(gw, call).await {
        Ok(id) => {
            let mut headers = headers;
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                headers.insert(RECORD_HEADER, v);
            }
            answer(status, headers, reply_body)
        }
        Err(e) => {
            tracing::error!(error = %e, "a call's record was not stored; its answer is withheld");
            plain(
                503,
                &format!("the call's record was not stored ({e}); its answer is withheld"),
                None,
            )
        }
    }
}

/// An MCP message's scope; notes its method, tool and arguments' hash in `seen`.
fn mcp_route(
    audience: &gateway::Audience,
    method: &str,
    below: &str,
    headers: &HeaderMap,
    body: &[u8],
    seen: &mut Seen,
) -> Result<String, Refusal> {
    if method != "POST" {
        return Err(Refusal::McpNotPost(audience.prefix.clone()));
    }
    if below != "/" {
        return Err(Refusal::NoRoute {
            audience: audience.audience.clone(),
            method: method.to_string(),
            path: below.to_string(),
        });
    }
    let mut said = [None, None];
    for (i, name) in ["mcp-method", "mcp-name"].into_iter().enumerate() {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            continue;
        };
        // Two routing headers could tell the gateway one thing and the server another.
        if values.next().is_some() {
            return Err(Refusal::McpMalformed(format!(
                "the {name} header appears more than once"
            )));
        }
        // An undecodable value matches nothing the body says.
        said[i] = Some(
            first
                .to_str()
                .ok()
                .and_then(gateway::mcp_header_value)
                .unwrap_or_else(|| "(undecodable)".to_string()),
        );
    }
    let message = gateway::read_mcp(body, said[0].as_deref(), said[1].as_deref())?;
    // What the client sent is shown as text that a record may hold; a tool name that
    // is no identifier is in the operation only (and no configured tool has it).
    seen.operation = operation_text(&match &message.tool {
        Some(tool) => format!("{} {tool}", message.method),
        None => message.method.clone(),
    });
    seen.tool = message.tool.clone().filter(|t| {
        docket_schemas::event::identifier("tool", t, gateway::TOOL_NAME_BYTES_MAX).is_ok()
    });
    seen.arguments_hash = message.arguments_hash.clone();
    gateway::mcp_scope(audience, &message).map(str::to_string)
}

/// The access token the vault holds for the token's user at `provider`, or why there is none.
async fn upstream_token(gw: &Gateway, token: &str, provider: &str) -> Result<String, Refusal> {
    let reply_key = docket_schemas::seal::ReplyKey::from_bytes(rand::random());
    let asked: Result<ConnectionReply> = crate::vault_cmd::ask(
        &gw.nats,
        &gw.key,
        format!("{}upstream", crate::connections::SUBJECT_PREFIX),
        Op::Upstream {
            token: token.to_string(),
            provider: provider.to_string(),
            reply_key: reply_key.public(),
        },
        UPSTREAM_TOKEN_TIMEOUT,
        "a connections reply",
    )
    .await;
    let reply = asked.map_err(|e| {
        Refusal::ConnectionUnavailable(format!("the vault could not be asked: {e:#}"))
    })?;
    match (&reply.sealed_token, reply.ok) {
        (Some(sealed), true) => reply_key
            .open(sealed)
            .ok()
            .and_then(|t| String::from_utf8(t).ok())
            .ok_or_else(|| {
                Refusal::ConnectionUnavailable("the vault's sealed token did not open".into())
            }),
        _ => {
            let why = reply.error.unwrap_or_else(|| "no reason given".into());
            Err(if reply.transient {
                Refusal::ConnectionUnavailable(why)
            } else {
                Refusal::NoConnection(why)
            })
        }
    }
}

/// Forwards to the upstream (with the user's upstream token, when the audience has a
/// provider); its status, headers and body, or the gateway's own 502/504.
async fn forward(
    gw: &Gateway,
    base: &str,
    target: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
    upstream_token: Option<String>,
) -> (u16, HeaderMap, Bytes) {
    let failed = |status: u16, why: String| {
        let (headers, body) = own_answer(status, &why, None);
        (status, headers, body)
    };
    let uri = format!("{base}{target}");
    let mut builder = Request::builder().method(parts.method.clone()).uri(&uri);
    let mut headers = end_to_end(&parts.headers);
    // The agent's Docket token is for the gateway; the upstream never sees it.
    headers.remove(header::AUTHORIZATION);
    // Headers some servers obey to change the method or path the gateway authorized
    // and recorded, and client-set forwarding claims: never passed on.
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(t) = upstream_token {
        match HeaderValue::from_str(&format!("Bearer {t}")) {
            Ok(mut v) => {
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
            Err(_) => return failed(502, "the upstream token cannot be sent in a header".into()),
        }
    }
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let request = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return failed(502, format!("the upstream request: {e}")),
    };
    let limit = Duration::from_millis(gw.routes.upstream_timeout_ms);
    let max = gw.routes.response_body_max;
    let outcome = tokio::time::timeout(limit, async {
        let response = gw
            .client
            .request(request)
            .await
            .map_err(|e| (502, format!("the upstream did not answer: {e}")))?;
        let (p, b) = response.into_parts();
        let body = Limited::new(b, max)
            .collect()
            .await
            .map_err(|e| {
                (
                    502,
                    format!("the upstream's answer could not be read (over {max} bytes?): {e}"),
                )
            })?
            .to_bytes();
        Ok::<_, (u16, String)>((p.status.as_u16(), end_to_end(&p.headers), body))
    })
    .await;
    match outcome {
        Ok(Ok(r)) => r,
        Ok(Err((status, why))) => failed(status, why),
        Err(_) => failed(
            504,
            format!(
                "the upstream did not answer within {} ms",
                limit.as_millis()
            ),
        ),
    }
}
