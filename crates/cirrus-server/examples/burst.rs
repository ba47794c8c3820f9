//! `burst URL [--calls N] [--timeout SECS]`: fires N calls (default 10,000) at one URL
//! at the same moment, each on its own connection, and prints how they ended: statuses
//! (with how many carried `Retry-After`, and the first error body of each), connection
//! errors, and latencies.
//!
//! The load generator of `scripts/bench-burst`. It runs as its own process so that the
//! server's CPU time and peak memory are the server's alone. Every call is spawned and
//! parked first, then all are released together; each latency is measured from that
//! release, so it includes waiting in the kernel's accept queue and for this process's
//! own two cores, which is what a caller in a burst sees.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{CONNECTION, HOST, RETRY_AFTER};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Descriptors this process needs besides its sockets (stdio, the runtime's own).
const SPARE_FDS: u64 = 64;
/// How much of an error answer's body is shown.
const ERROR_CHARS: usize = 200;

struct Args {
    url: Uri,
    calls: usize,
    timeout: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let usage = "usage: burst URL [--calls N] [--timeout SECS]";
    let mut url = None;
    let mut calls = 10_000;
    let mut timeout = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value; {usage}"))
        };
        match arg.as_str() {
            "--calls" => calls = value("--calls")?.parse().context("--calls")?,
            "--timeout" => {
                timeout = Duration::from_secs(value("--timeout")?.parse().context("--timeout")?)
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg}; {usage}"),
            _ if url.is_none() => {
                url = Some(arg.parse::<Uri>().with_context(|| format!("URL {arg}"))?)
            }
            _ => bail!("one URL only; {usage}"),
        }
    }
    let url = url.context(usage)?;
    if url.scheme_str() != Some("http") || url.authority().is_none() {
        bail!("{url}: an http:// URL with a host is needed");
    }
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    Ok(Args {
        url,
        calls,
        timeout,
    })
}

/// Raises the soft open-file limit to the hard one; fails when even that is too low for
/// one socket per call.
fn raise_fd_limit(calls: usize) -> anyhow::Result<()> {
    let limit = getrlimit(Resource::Nofile);
    let needed = calls as u64 + SPARE_FDS;
    if limit.current.is_some_and(|current| current >= needed) || limit.current.is_none() {
        return Ok(());
    }
    if limit.maximum.is_some_and(|maximum| maximum < needed) {
        bail!(
            "{calls} calls need {needed} open files; the hard limit is {}",
            limit.maximum.unwrap_or_default()
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .context("raising the open-file limit")
}

/// How one call ended.
enum Outcome {
    Answered {
        status: u16,
        retry_after: bool,
        /// The start of the body of an answer other than 2xx (why it was refused).
        error: Option<String>,
    },
    /// The connection could not be made or broke, or the answer did not come in time.
    Failed(String),
}

struct Call {
    outcome: Outcome,
    /// From the release to the connection being open (`None` when it never was).
    connected: Option<Duration>,
    /// From the release to the whole answer (or the failure).
    done: Duration,
}

async fn call(addr: SocketAddr, url: &Uri, released: Instant) -> (Outcome, Option<Duration>) {
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => return (Outcome::Failed(format!("connect: {}", e.kind())), None),
    };
    let connected = Some(released.elapsed());
    let answer = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, url.authority().unwrap().as_str())
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(RETRY_AFTER);
        let body = response.into_body().collect().await?.to_bytes();
        let error = (!(200..300).contains(&status)).then(|| {
            String::from_utf8_lossy(&body)
                .chars()
                .take(ERROR_CHARS)
                .collect()
        });
        Ok::<_, hyper::Error>(Outcome::Answered {
            status,
            retry_after,
            error,
        })
    };
    match answer.await {
        Ok(outcome) => (outcome, connected),
        Err(e) => (Outcome::Failed(kind_of(&e)), connected),
    }
}

/// A short, countable description of a broken exchange.
fn kind_of(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "connection closed before the answer".into()
    } else if let Some(io) =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        format!("request: {}", io.kind())
    } else {
        format!("request: {e}")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn line(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        println!("{label:<28} none");
        return;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<28} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   (n={})",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
        samples.len()
    );
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    raise_fd_limit(args.calls)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(burst(args))
}

async fn burst(args: Args) -> anyhow::Result<()> {
    let authority = args.url.authority().unwrap().as_str().to_owned();
    let addr = tokio::net::lookup_host(&authority)
        .await?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let (release, released) = watch::channel(None::<Instant>);
    let mut calls = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let mut released = released.clone();
        let url = args.url.clone();
        let timeout = args.timeout;
        calls.push(tokio::spawn(async move {
            let start = released.wait_for(Option::is_some).await.unwrap().unwrap();
            let (outcome, connected) =
                match tokio::time::timeout(timeout, call(addr, &url, start)).await {
                    Ok(ended) => ended,
                    Err(_) => (
                        Outcome::Failed(format!("no answer within {timeout:?}")),
                        None,
                    ),
                };
            Call {
                outcome,
                connected,
                done: start.elapsed(),
            }
        }));
    }
    // Every task is parked on the channel by now or will see the value when first polled.
    let start = Instant::now();
    release.send(Some(start)).unwrap();
    let mut ended = Vec::with_capacity(calls.len());
    for call in calls {
        ended.push(call.await?);
    }
    let wall = start.elapsed();

    // Per status: how many, how many with Retry-After, the first error body.
    let mut statuses: BTreeMap<u16, (usize, usize, Option<String>)> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let (mut succeeded, mut answered, mut connected) = (Vec::new(), Vec::new(), Vec::new());
    for call in &ended {
        connected.extend(call.connected);
        match &call.outcome {
            Outcome::Answered {
                status,
                retry_after,
                error,
            } => {
                let entry = statuses.entry(*status).or_default();
                entry.0 += 1;
                entry.1 += usize::from(*retry_after);
                if entry.2.is_none() {
                    entry.2.clone_from(error);
                }
                answered.push(call.done);
                if (200..300).contains(status) {
                    succeeded.push(call.done);
                }
            }
            Outcome::Failed(kind) => *failures.entry(kind.clone()).or_default() += 1,
        }
    }
    println!(
        "calls                        {} at once, each on its own connection",
        ended.len()
    );
    println!("succeeded (2xx)              {}", succeeded.len());
    println!(
        "errors                       {}",
        ended.len() - succeeded.len()
    );
    for (status, (count, retry_after, error)) in &statuses {
        println!("  status {status}                 {count} ({retry_after} with Retry-After)");
        if let Some(error) = error {
            println!("    first: {}", error.trim_end());
        }
    }
    for (kind, count) in &failures {
        println!("  {kind:<26} {count}");
    }
    line("latency, successes", succeeded);
    line("latency, all answers", answered);
    line("connected after", connected);
    println!("wall time                    {:.2} s", wall.as_secs_f64());
    Ok(())
}
