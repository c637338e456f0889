//! `docket connect`, `docket disconnect` and `docket vault`: a user links an upstream account (OAuth 2.0 with PKCE and a loopback redirect), unlinks it; the operator makes and rotates the key connections are wrapped with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use docket_ledger::connection;
use docket_ledger::connection_store::{ConnectionStore, create_keys};
use docket_ledger::keyfile;
use docket_schemas::vault::{ConnectionReply, Op};
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::RngCore;

/// How long `docket connect` waits for the browser's redirect by default.
const REDIRECT_WAIT_DEFAULT_S: u64 = 300;
/// Longest wait for a connections answer (a link waits on the provider and the ledger).
const CONNECTIONS_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    client: crate::vault_cmd::Client,
    /// The user linking (your key must be `user:<this user>`).
    #[arg(long)]
    user: String,
    /// The provider, as the vault's config names it ([connections.providers.NAME]).
    #[arg(long)]
    provider: String,
    /// Where to listen for the provider's redirect: a loopback address (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How long to wait for the browser to come back, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = REDIRECT_WAIT_DEFAULT_S)]
    wait: u64,
}

#[derive(Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    client: crate::vault_cmd::Client,
    /// The provider, as the vault's config names it.
    #[arg(long)]
    provider: String,
    /// Whose connection (the admin must name the user; a user may only name themselves).
    #[arg(long)]
    user: Option<String>,
    /// Why; recorded with the unlink.
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Make the key file users' upstream tokens are wrapped with (keep it outside the data directory).
    NewKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every stored connection under a new key, then drop the old key from the key
    /// file. Safe while `serve` runs: both take the store's lock.
    RotateKey {
        /// The ledger's data directory (its `connections/` holds the wrapped tokens).
        #[arg(long, env = "DOCKET_DATA")]
        data: PathBuf,
        /// The connection key file (`[connections] key_file`).
        #[arg(long)]
        key_file: PathBuf,
    },
}

pub fn vault(cmd: VaultCommand) -> Result<std::process::ExitCode> {
    match cmd {
        VaultCommand::NewKey { out } => {
            create_keys(&out)?;
            println!("wrote {} (key version 1)", out.display());
        }
        VaultCommand::RotateKey { data, key_file } => {
            let store = ConnectionStore::open(&data, &key_file)?;
            let r = store.rotate()?;
            println!(
                "{}",
                serde_json::json!({
                    "from_version": r.from_version,
                    "to_version": r.to_version,
                    "rewrapped": r.rewrapped,
                })
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn ask(
    nats: &async_nats::Client,
    key: &ed25519_dalek::SigningKey,
    op: Op,
) -> Result<ConnectionReply> {
    let subject = format!("{}{}", crate::connections::SUBJECT_PREFIX, op.name());
    crate::vault_cmd::ask(
        nats,
        key,
        subject,
        op,
        CONNECTIONS_ANSWER_TIMEOUT,
        "a connections reply",
    )
    .await
}

fn finish(reply: &ConnectionReply) -> Result<std::process::ExitCode> {
    println!("{}", serde_json::to_string(reply)?);
    if reply.ok {
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        eprintln!(
            "refused: {}",
            reply.error.as_deref().unwrap_or("(no reason given)")
        );
        Ok(std::process::ExitCode::from(1))
    }
}

pub async fn disconnect(a: DisconnectArgs) -> Result<std::process::ExitCode> {
    let key = keyfile::read(&a.client.key)?;
    let nats =
        docket_ledger::transport::connect(&a.client.nats, &a.client.nats_auth.auth()).await?;
    let reply = ask(
        &nats,
        &key,
        Op::Unlink {
            provider: a.provider,
            user: a.user,
            reason: a.reason,
        },
    )
    .await?;
    finish(&reply)
}

/// The value of `name` in a query string, percent-decoded; `None` when absent or undecodable.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What the provider's redirect brought: the code, or the error it named.
type Redirected = Result<String, String>;

fn page(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "<!doctype html><meta charset=utf-8><title>Docket</title><p>{text}</p>\n"
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Serves the loopback redirect until one arrives with our `state`.
async fn await_redirect(listener: tokio::net::TcpListener, state: String) -> Result<Redirected> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Redirected>(1);
    let state = Arc::new(state);
    loop {
        let (stream, _) = tokio::select! {
            got = rx.recv() => return got.context("the redirect listener stopped"),
            accepted = listener.accept() => accepted.context("accepting the browser's redirect")?,
        };
        let (tx, state) = (tx.clone(), Arc::clone(&state));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let (tx, state) = (tx.clone(), Arc::clone(&state));
                    async move {
                        let query = req.uri().query().unwrap_or("");
                        if req.uri().path() != "/callback" {
                            return Ok::<_, std::convert::Infallible>(page(
                                StatusCode::NOT_FOUND,
                                "Not the redirect.",
                            ));
                        }
                        // Someone else's redirect (or a forged one) is not ours to use.
                        if query_value(query, "state").as_deref() != Some(state.as_str()) {
                            return Ok(page(
                                StatusCode::BAD_REQUEST,
                                "The state does not match this link attempt; it was not used.",
                            ));
                        }
                        let got = match (query_value(query, "code"), query_value(query, "error")) {
                            (_, Some(e)) => Err(match query_value(query, "error_description") {
                                Some(d) => format!("{e}: {d}"),
                                None => e,
                            }),
                            (Some(code), None) => Ok(code),
                            (None, None) => {
                                Err("the redirect carried neither code nor error".into())
                            }
                        };
                        let text = match &got {
                            Ok(_) => {
                                "Authorization received. Return to your terminal; Docket is finishing the link."
                            }
                            Err(_) => "The provider refused. Your terminal says why.",
                        };
                        let _ = tx.try_send(got);
                        Ok(page(StatusCode::OK, text))
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn connect(a: ConnectArgs) -> Result<std::process::ExitCode> {
    if !a.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the redirect listener must be on a loopback address",
            a.listen
        );
    }
    let key = keyfile::read(&a.client.key)?;
    let nats =
        docket_ledger::transport::connect(&a.client.nats, &a.client.nats_auth.auth()).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {} for the redirect", a.listen))?;
    let bound = listener.local_addr()?;
    let host = match bound {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    let redirect_uri = format!("http://{host}:{}/callback", bound.port());
    let mut random = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let verifier: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut random = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let state: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let started = ask(
        &nats,
        &key,
        Op::Connect {
            user: a.user.clone(),
            provider: a.provider.clone(),
            redirect_uri: redirect_uri.clone(),
            code_challenge: connection::pkce_challenge(&verifier),
            state: state.clone(),
        },
    )
    .await?;
    let Some(url) = started.authorize_url.as_deref().filter(|_| started.ok) else {
        return finish(&started);
    };
    eprintln!(
        "Open this address in your browser to link {} for {}:",
        a.provider, a.user
    );
    println!("{url}");
    eprintln!(
        "Waiting up to {} s for the provider to send you back to {redirect_uri} ...",
        a.wait
    );
    let redirected =
        tokio::time::timeout(Duration::from_secs(a.wait), await_redirect(listener, state))
            .await
            .with_context(|| format!("no redirect came back within {} s", a.wait))??;
    let code = match redirected {
        Ok(code) => code,
        // The provider's words, shown, never obeyed by the terminal.
        Err(e) => bail!(
            "{} refused the link: {}",
            a.provider,
            crate::terminal_text::escaped(&e)
        ),
    };
    let linked = ask(
        &nats,
        &key,
        Op::Link {
            user: a.user,
            provider: a.provider,
            code,
            code_verifier: verifier,
            redirect_uri,
        },
    )
    .await?;
    finish(&linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_exact() {
        let q = "code=a%2Fb+c&state=xyz&codes=no";
        assert_eq!(query_value(q, "code").as_deref(), Some("a/b c"));
        assert_eq!(query_value(q, "state").as_deref(), Some("xyz"));
        assert_eq!(query_value(q, "cod"), None);
        assert_eq!(query_value("code=%zz", "code"), None);
        assert_eq!(query_value("code=%e2%82", "code"), None);
    }
}
