//! `docket bench gateway`: proxied calls per second and the latency the gateway adds against calling the upstream directly, with recording on; and the time from a revocation's append to the gateway's first refusal.
//!
//! Everything is real and in this process or on loopback: a nats-server, the ledger
//! with its vault, an upstream HTTP server (hyper, a fixed answer), and the gateway.
//! The direct run is the ceiling: the same load generator against the same upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use docket_ledger::config::Config;
use docket_ledger::gateway::{Audience, Route, Routes};
use docket_ledger::publisher::{Publisher, Sink};
use docket_ledger::transport::{Bus, NatsSettings, NatsSource, Source};
use docket_schemas::encode_base64;
use docket_schemas::vault::{Op, Status};
use docket_testkit::nats_server::NatsServer;
use docket_testkit::workload::{Workload, agent_key};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::bench::percentile;
use crate::measure::peak_rss_mib;

/// Bytes of the upstream's fixed answer.
const UPSTREAM_BODY_BYTES: usize = 512;

#[derive(Args)]
pub struct GatewayBenchArgs {
    /// Seconds each throughput run lasts (direct, then through the gateway).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections kept busy at once in the throughput runs.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Calls made one at a time for the added-latency figure (direct, then through the gateway).
    #[arg(long, default_value_t = 2_000)]
    serial_calls: usize,
}

pub async fn run(args: GatewayBenchArgs) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let server = NatsServer::start(&temp.path().join("nats"))?;
    let start = docket_ledger::clock::now()?;
    let mut workload = Workload::new(1, start, 1, 1);
    let admin = encode_base64(workload.roles.admin.verifying_key().as_bytes());
    let config = Config {
        checkpoint_every_entries: 1_000_000,
        ..Config::default()
    };
    let ledger = crate::open_ledger(&temp.path().join("ledger"), &config, &admin)?;
    let settings = NatsSettings {
        url: server.url(),
        consumer: "bench-gateway".into(),
        filter: docket_ledger::transport::STREAM_SUBJECTS.into(),
        auth: Default::default(),
    };
    let source = NatsSource::connect(&settings).await?;
    let client = source.client.clone();
    let mut ledger = crate::bench::with_vault_over_nats(ledger, &workload.roles.vault, &client)?;
    let (commits, _watcher) =
        crate::bench::watch_commits(client.subscribe("docket.appended").await?);
    let view = ledger
        .introspector()
        .context("the bench's ledger serves no vault")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bus = Bus::Nats(client.clone());
    let ledger_task = tokio::spawn(async move {
        ledger
            .run(Source::Nats(Box::new(source)), bus, async {
                let _ = stop_rx.await;
            })
            .await
    });

    // The workload's registrations (vault, gateway, agent-0 of user-0) and user-0's own key.
    let user = ed25519_dalek::SigningKey::from_bytes(blake3::hash(b"demo user-0").as_bytes());
    let mut setup = workload.setup();
    setup.push(crate::vault_scene::user_registration(&workload, &user)?);
    let mut publisher = Publisher::new(Sink::Nats(async_nats::jetstream::new(client.clone())));
    let mut failed = 0u64;
    let mut on_ack = |_: u64, r: Result<_, String>| failed += u64::from(r.is_err());
    for p in setup {
        publisher
            .send(p.subject, p.envelope, p.id, &mut on_ack)
            .await?;
    }
    publisher.flush(&mut on_ack).await;
    if failed > 0 {
        bail!("{failed} setup events were not stored");
    }
    let line = crate::vault_scene::VaultLine::Nats(client.clone());
    let now = docket_ledger::clock::now()?;
    // The registrations are appended in order; the grant is answered once they are.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let grant = Op::Grant {
            user: "user-0".into(),
            agent: "agent-0".into(),
            audience: "https://api.github.com".into(),
            scopes: vec!["repo:read".into()],
            expires_at: now.plus_seconds(3_600),
            // No budget: the runs make hundreds of thousands of calls.
            max_calls: None,
            max_token_ttl_s: Some(600),
            approval: vec![],
        };
        let g = crate::vault_scene::decide(&line, &user, grant).await?;
        if g.ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("the grant was refused: {:?}", g.error);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = crate::vault_scene::decide(
        &line,
        &agent_key(0),
        crate::vault_scene::token_op("repo:read", None),
    )
    .await?;
    let secret = t
        .open_token(&crate::vault_scene::reply_key())
        .map_err(|e| anyhow::anyhow!("the token: {e:?} ({:?})", t.error))?;

    linked_account(&temp, &workload, &client, view).await?;

    let upstream = upstream_server().await?;
    let routes = Routes {
        upstream_timeout_ms: docket_ledger::gateway::UPSTREAM_TIMEOUT_MS_DEFAULT,
        request_body_max: docket_ledger::gateway::REQUEST_BODY_MAX_DEFAULT,
        response_body_max: docket_ledger::gateway::RESPONSE_BODY_MAX_DEFAULT,
        audiences: vec![
            Audience {
                audience: "https://api.github.com".into(),
                prefix: "/github".into(),
                upstream: format!("http://{upstream}"),
                provider: None,
                routes: vec![Route {
                    method: "GET".into(),
                    path: "/repos/**".into(),
                    scope: "repo:read".into(),
                }],
                mcp: None,
            },
            Audience {
                audience: "https://api.github.com".into(),
                prefix: "/acme".into(),
                upstream: format!("http://{upstream}"),
                provider: Some(BENCH_PROVIDER.into()),
                routes: vec![Route {
                    method: "GET".into(),
                    path: "/repos/**".into(),
                    scope: "repo:read".into(),
                }],
                mcp: None,
            },
        ],
    };
    routes.check()?;
    let gw =
        crate::gateway_cmd::Gateway::start(routes, workload.roles.gateway.clone(), client.clone())
            .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?;
    let (gw_stop_tx, gw_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw_task = tokio::spawn(crate::gateway_cmd::serve(gw, listener, async {
        let _ = gw_stop_rx.await;
    }));
    let bearer = format!("Bearer {secret}");

    println!(
        "docket bench gateway: {} connections for {} s per run; {} one-at-a-time calls; upstream answers {UPSTREAM_BODY_BYTES} bytes",
        args.connections, args.seconds, args.serial_calls
    );
    let rss_before = peak_rss_mib();
    let direct = load(
        upstream,
        "/repos/acme/web",
        None,
        args.connections,
        args.seconds,
    )
    .await?;
    let proxied = load(
        gateway,
        "/github/repos/acme/web",
        Some(&bearer),
        args.connections,
        args.seconds,
    )
    .await?;
    let attached = load(
        gateway,
        "/acme/repos/acme/web",
        Some(&bearer),
        args.connections,
        args.seconds,
    )
    .await?;
    let line_for = |name: &str, r: &LoadFigures| {
        println!(
            "{name:<28} {:>8.0} calls/s, p50 {:>6.2} ms, p99 {:>6.2} ms ({} calls, {} not 200)",
            r.rate,
            percentile(&r.latencies_ms, 0.5),
            percentile(&r.latencies_ms, 0.99),
            r.latencies_ms.len(),
            r.not_ok
        )
    };
    line_for("direct to the upstream:", &direct);
    line_for("through the gateway:", &proxied);
    line_for("... with the user's token:", &attached);
    println!(
        "gateway / direct: {:.1} % of the upstream's rate on this machine (each call introspected by the vault and its record acknowledged by JetStream); with the user's upstream token fetched from the vault too: {:.1} %",
        100.0 * proxied.rate / direct.rate,
        100.0 * attached.rate / direct.rate
    );
    let serial_direct = serial(upstream, "/repos/acme/web", None, args.serial_calls).await?;
    let serial_proxied = serial(
        gateway,
        "/github/repos/acme/web",
        Some(&bearer),
        args.serial_calls,
    )
    .await?;
    let serial_attached = serial(
        gateway,
        "/acme/repos/acme/web",
        Some(&bearer),
        args.serial_calls,
    )
    .await?;
    println!(
        "one call at a time with the user's upstream token: p50 {:.2} ms, p99 {:.2} ms (added over direct: p50 {:.2} ms, p99 {:.2} ms)",
        percentile(&serial_attached, 0.5),
        percentile(&serial_attached, 0.99),
        percentile(&serial_attached, 0.5) - percentile(&serial_direct, 0.5),
        percentile(&serial_attached, 0.99) - percentile(&serial_direct, 0.99),
    );
    let added = |p: f64| percentile(&serial_proxied, p) - percentile(&serial_direct, p);
    println!(
        "one call at a time: direct p50 {:.2} ms, p99 {:.2} ms; gateway p50 {:.2} ms, p99 {:.2} ms; added p50 {:.2} ms, p99 {:.2} ms",
        percentile(&serial_direct, 0.5),
        percentile(&serial_direct, 0.99),
        percentile(&serial_proxied, 0.5),
        percentile(&serial_proxied, 0.99),
        added(0.5),
        added(0.99)
    );

    // The kill switch: a prober calls through the gateway without pause while the user
    // suspends the agent; the time from the suspension's append to the first refusal.
    let refused_at = Arc::new(std::sync::Mutex::new(Vec::<(i64, bool)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (refused_at, stop, bearer) =
            (Arc::clone(&refused_at), Arc::clone(&stop), bearer.clone());
        tokio::spawn(async move {
            let mut conn = connect(gateway).await?;
            while !stop.load(Ordering::Relaxed) {
                let (status, recorded) =
                    call(&mut conn, "/github/repos/acme/web", Some(&bearer)).await?;
                if status == 401
                    && let Ok(mut r) = refused_at.lock()
                {
                    r.push((docket_ledger::clock::now_us()?, recorded));
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked = crate::vault_scene::decide(
        &line,
        &user,
        Op::Revoke {
            token_id: None,
            grant_id: None,
            agent: Some("agent-0".into()),
            reason: "bench: kill switch".into(),
        },
    )
    .await?;
    if revoked.status != Some(Status::Suspended) {
        bail!("the suspension was refused: {:?}", revoked.error);
    }
    let seq = revoked
        .receipt
        .as_ref()
        .map(|r| r.seq)
        .context("the suspension's answer has no receipt")?;
    let appended_us = crate::bench::wait_for_seq(&commits, seq).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    prober.await??;
    let refusals = refused_at.lock().map(|r| r.clone()).unwrap_or_default();
    match refusals.first() {
        Some((first, _)) => println!(
            "kill switch: first refusal {:.2} ms after the suspension was appended; {} refused attempts in the next second, {} of them answered with their record acknowledged",
            (*first - appended_us) as f64 / 1000.0,
            refusals.len(),
            refusals.iter().filter(|(_, recorded)| *recorded).count()
        ),
        None => bail!("the gateway never refused the suspended agent"),
    }
    println!(
        "memory: peak resident {:.0} MiB (ledger, vault, gateway, upstream and load generator in one process; {:.0} MiB before the runs)",
        peak_rss_mib(),
        rss_before
    );
    let _ = gw_stop_tx.send(());
    let _ = gw_task.await;
    let _ = stop_tx.send(());
    ledger_task.await??;
    Ok(())
}

/// The provider the bench's user has linked.
const BENCH_PROVIDER: &str = "bench";

/// Leaves user-0's upstream account linked as `docket connect` would (its tokens in the
/// vault's store, `connection.linked` on the chain) and serves the connections in this
/// process. No provider is called: the access token has no expiry, so it is never refreshed.
async fn linked_account(
    temp: &tempfile::TempDir,
    workload: &Workload,
    client: &async_nats::Client,
    view: docket_ledger::desk::Introspector,
) -> Result<()> {
    use docket_ledger::config::{ConnectionsConfig, ProviderConfig};
    use docket_schemas::{ConnectionLinked, EventBody, KeyRegistered, Kind};
    let key_file = temp.path().join("connection.key");
    docket_ledger::connection_store::create_keys(&key_file)?;
    let secret_file = temp.path().join("client-secret");
    std::fs::write(&secret_file, "never sent: nothing is refreshed")?;
    let config = ConnectionsConfig {
        key_file: Some(key_file.clone()),
        refresh_margin_s: 60,
        providers: [(
            BENCH_PROVIDER.to_string(),
            ProviderConfig {
                authorize_url: "http://127.0.0.1:9/authorize".into(),
                token_url: "http://127.0.0.1:9/token".into(),
                revocation_url: None,
                client_id: "bench".into(),
                client_secret_env: None,
                client_secret_file: Some(secret_file),
                scopes: vec![],
                audiences: vec!["https://api.github.com".into()],
            },
        )]
        .into_iter()
        .collect(),
    };
    let data = temp.path().join("ledger");
    let store = docket_ledger::connection_store::ConnectionStore::open(&data, &key_file)?;
    let secrets = docket_ledger::connection::UpstreamSecrets {
        refresh_token: Some("bench-refresh-token".into()),
        access_token: "bench-access-token".into(),
        access_expires_at: None,
        scopes: vec![],
    };
    store.put("user-0", BENCH_PROVIDER, &secrets)?;
    let sink = Sink::Nats(async_nats::jetstream::new(client.clone()));
    let vault = &workload.roles.vault;
    // The workload registers the vault for what it decides; holding accounts needs more.
    let mut kinds = docket_testkit::workload::VAULT_KINDS.to_vec();
    kinds.extend([
        Kind::ConnectionLinked,
        Kind::ConnectionRefreshed,
        Kind::ConnectionFailed,
        Kind::ConnectionUnlinked,
    ]);
    let pk = vault.verifying_key();
    let now = docket_ledger::clock::now()?;
    let patience = Duration::from_secs(10);
    docket_ledger::publisher::publish_one(
        &sink,
        &workload.roles.admin,
        EventBody::KeyRegistered(KeyRegistered {
            key_id: docket_schemas::key_id(pk.as_bytes()),
            public_key: encode_base64(pk.as_bytes()),
            name: "vault".into(),
            kinds,
        }),
        now,
        patience,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    docket_ledger::publisher::publish_one(
        &sink,
        vault,
        EventBody::ConnectionLinked(ConnectionLinked {
            user: "user-0".into(),
            provider: BENCH_PROVIDER.into(),
            scopes: vec![],
            fingerprint: docket_ledger::connection::fingerprint(
                &docket_ledger::desk::token_hash_key(vault),
                "bench-refresh-token",
            ),
            access_expires_at: None,
        }),
        now,
        patience,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let conns =
        crate::connections::Connections::load(&config, &data, vault.clone(), view.clone(), sink)?
            .context("the bench's connections did not load")?;
    let deadline = Instant::now() + patience;
    while !view.view(|_, state, _| {
        state
            .connections
            .contains_key(&docket_ledger::state::connection_key(
                "user-0",
                BENCH_PROVIDER,
            ))
    }) {
        if Instant::now() > deadline {
            bail!("the bench's connection.linked was not applied");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = client.clone();
    tokio::spawn(async move { crate::connections::serve(conns, client).await });
    Ok(())
}

struct LoadFigures {
    rate: f64,
    latencies_ms: Vec<f64>,
    not_ok: u64,
}

type Conn = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// One GET on a kept connection; its status once the whole answer is read, and whether
/// the answer names its record (`Docket-Record`: JetStream acknowledged it).
async fn call(conn: &mut Conn, path: &str, bearer: Option<&str>) -> Result<(u16, bool)> {
    conn.ready().await?;
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "bench");
    if let Some(b) = bearer {
        req = req.header("authorization", b);
    }
    let resp = conn.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let recorded = resp.headers().contains_key("docket-record");
    resp.into_body().collect().await?;
    Ok((status, recorded))
}

/// `connections` connections each calling back to back for `seconds`.
async fn load(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    connections: usize,
    seconds: u64,
) -> Result<LoadFigures> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (path, bearer) = (path.to_string(), bearer.map(String::from));
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr).await?;
            let (mut lat, mut not_ok) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let t = Instant::now();
                let (status, _) = call(&mut conn, &path, bearer.as_deref()).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                not_ok += u64::from(status != 200);
            }
            Ok::<_, anyhow::Error>((lat, not_ok))
        }));
    }
    let (mut all, mut not_ok) = (Vec::new(), 0);
    for t in tasks {
        let (lat, n) = t.await??;
        all.extend(lat);
        not_ok += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(LoadFigures {
        rate: all.len() as f64 / elapsed,
        latencies_ms: all,
        not_ok,
    })
}

/// `n` calls one after another on one connection; their latencies in ms, sorted.
async fn serial(addr: SocketAddr, path: &str, bearer: Option<&str>, n: usize) -> Result<Vec<f64>> {
    let mut conn = connect(addr).await?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, _) = call(&mut conn, path, bearer).await?;
        if status != 200 {
            bail!("a serial call to {path} answered {status}");
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// The upstream: answers every request 200 with a fixed body.
async fn upstream_server() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(vec![b'x'; UPSTREAM_BODY_BYTES]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
