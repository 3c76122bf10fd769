//! `apiscope loadgen`: sends the simulated fleet's traces over OTLP (HTTP protobuf or
//! gRPC) at a target rate, or as fast as they are acknowledged, over several connections;
//! reports what was sent, acknowledged and refused, and the acknowledgement latency.

mod fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::task::JoinSet;

use crate::{Error, Result};
use fleet::Generator;

/// Flags of `apiscope loadgen`.
#[derive(Debug, Args)]
pub(crate) struct LoadgenArgs {
    /// Where to send: the OTLP/HTTP base URL, or the gRPC endpoint with --protocol grpc
    /// [default: http://127.0.0.1:4318, or http://127.0.0.1:4317 for gRPC].
    #[arg(long, env = "APISCOPE_LOADGEN_ENDPOINT")]
    endpoint: Option<String>,
    /// `http` (OTLP/HTTP protobuf) or `grpc`.
    #[arg(long, default_value = "http", value_parser = ["http", "grpc"])]
    protocol: String,
    /// Target spans per second over all connections; 0 sends as fast as acknowledged.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send (`90s`, `10m`); 0s sends until Ctrl-C or SIGTERM.
    #[arg(long, default_value = "0s", value_parser = crate::config::parse_duration)]
    duration: Duration,
    /// Stop after about this many spans; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    spans: u64,
    /// Concurrent connections, each with its own share of the rate.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Spans per export request (whole requests: a server span and its client spans).
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Seed of the simulated traffic; the same seed sends the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Spans start this long before they are sent (`2h`: traffic of an hour already
    /// closed, which compaction merges to the end at once); 0s for now.
    #[arg(long, default_value = "0s", value_parser = crate::config::parse_duration)]
    ago: Duration,
    #[command(flatten)]
    client: crate::client::ClientArgs,
}

/// Counts shared by the senders.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

enum Sender {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
}

/// How the receiver answered one export.
enum Answer {
    /// Accepted, with the number of spans it rejected as invalid.
    Accepted(u64),
    /// Overloaded or shutting down: retryable.
    Refused,
    Failed(String),
}

impl Sender {
    async fn send(&mut self, request: ExportTraceServiceRequest) -> Answer {
        match self {
            Sender::Http { client, url } => {
                let sent = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(error) => return Answer::Failed(error.to_string()),
                };
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                match status {
                    200 => match ExportTraceServiceResponse::decode(body) {
                        Ok(answer) => Answer::Accepted(rejected(&answer)),
                        Err(error) => Answer::Failed(format!("undecodable answer: {error}")),
                    },
                    429 | 503 => Answer::Refused,
                    other => {
                        Answer::Failed(format!("HTTP {other}: {}", String::from_utf8_lossy(&body)))
                    }
                }
            }
            Sender::Grpc {
                client,
                authorization,
            } => {
                let mut request = tonic::Request::new(request);
                if let Some(value) = authorization {
                    request
                        .metadata_mut()
                        .insert("authorization", value.clone());
                }
                match client.export(request).await {
                    Ok(answer) => Answer::Accepted(rejected(answer.get_ref())),
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        Answer::Refused
                    }
                    Err(status) => {
                        Answer::Failed(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
        }
    }
}

fn rejected(answer: &ExportTraceServiceResponse) -> u64 {
    answer
        .partial_success
        .as_ref()
        .map_or(0, |partial| partial.rejected_spans.max(0) as u64)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

pub(crate) async fn run(args: LoadgenArgs) -> Result<()> {
    if args.connections == 0 || args.batch == 0 {
        return Err(Error::Config(
            "--connections and --batch must be at least 1".into(),
        ));
    }
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| match args.protocol.as_str() {
            "grpc" => "http://127.0.0.1:4317".into(),
            _ => "http://127.0.0.1:4318".into(),
        });
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    tracing::info!(
        %endpoint,
        protocol = %args.protocol,
        rate = args.rate,
        connections = args.connections,
        batch = args.batch,
        seed = args.seed,
        "sending"
    );

    let mut senders = JoinSet::new();
    for index in 0..args.connections {
        let sender = match args.protocol.as_str() {
            "grpc" => {
                let mut channel = tonic::transport::Endpoint::new(endpoint.clone())
                    .map_err(|error| Error::Config(format!("endpoint {endpoint}: {error}")))?;
                if endpoint.starts_with("https://") {
                    channel = channel
                        .tls_config(args.client.grpc_tls()?)
                        .map_err(|error| Error::Config(format!("TLS: {error}")))?;
                }
                let authorization =
                    match args.client.authorization()? {
                        Some(value) => {
                            Some(value.to_str().unwrap_or_default().parse().map_err(|_| {
                                Error::Config("--token must be printable ASCII".into())
                            })?)
                        }
                        None => None,
                    };
                Sender::Grpc {
                    client: TraceServiceClient::new(channel.connect_lazy()),
                    authorization,
                }
            }
            _ => Sender::Http {
                client: args.client.http(Duration::from_secs(30))?,
                url: format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            },
        };
        // One generator per connection, seeded from the run's seed: deterministic traffic.
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(index);
        let generator = Generator::new(seed, now_ns());
        let counts = counts.clone();
        senders.spawn(send_loop(
            sender,
            generator,
            counts,
            pacing(&args),
            args.batch,
            args.ago,
        ));
    }

    let limit = args.spans;
    let deadline = (!args.duration.is_zero()).then(|| started + args.duration);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    loop {
        tokio::select! {
            _ = report.tick() => progress(&counts, started),
            () = crate::shutdown::signal() => break,
            () = until(deadline) => break,
            () = until_spans(&counts, limit) => break,
        }
    }
    counts.stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(done) = senders.join_next().await {
        if let Ok(mut own) = done {
            latencies.append(&mut own);
        }
    }
    crate::print(&summary(
        &counts,
        started.elapsed(),
        &mut latencies,
        args.batch,
    ))
}

/// The gap between two exports of one connection, or none for "as fast as acknowledged".
fn pacing(args: &LoadgenArgs) -> Option<Duration> {
    (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    })
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn until_spans(counts: &Counts, limit: u64) {
    if limit == 0 {
        return std::future::pending().await;
    }
    while counts.sent.load(Ordering::Relaxed) < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends exports until told to stop; returns the acknowledgement latencies (µs).
async fn send_loop(
    mut sender: Sender,
    mut generator: Generator,
    counts: Arc<Counts>,
    pacing: Option<Duration>,
    batch: u64,
    ago: Duration,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut ticks = pacing.map(|every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut last_failure = None;
    while !counts.stop.load(Ordering::Relaxed) {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let at = now_ns().saturating_sub(ago.as_nanos() as u64);
        let export = generator.export(batch, at);
        let spans = export.spans;
        counts.sent.fetch_add(spans, Ordering::Relaxed);
        let began = Instant::now();
        let answer = sender.send(export.request).await;
        latencies.push(began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        match answer {
            Answer::Accepted(rejected) => {
                counts
                    .acknowledged
                    .fetch_add(spans - rejected.min(spans), Ordering::Relaxed);
                counts.rejected.fetch_add(rejected, Ordering::Relaxed);
            }
            Answer::Refused => {
                counts.refused.fetch_add(spans, Ordering::Relaxed);
            }
            Answer::Failed(reason) => {
                counts.failed.fetch_add(spans, Ordering::Relaxed);
                if last_failure.as_ref() != Some(&reason) {
                    tracing::warn!(%reason, "export failed");
                    last_failure = Some(reason);
                }
                // Not up yet, or gone: do not spin.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    latencies
}

fn progress(counts: &Counts, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let acknowledged = counts.acknowledged.load(Ordering::Relaxed);
    tracing::info!(
        sent = counts.sent.load(Ordering::Relaxed),
        acknowledged,
        refused = counts.refused.load(Ordering::Relaxed),
        failed = counts.failed.load(Ordering::Relaxed),
        acknowledged_per_s = (acknowledged as f64 / seconds).round(),
        "progress"
    );
}

fn summary(counts: &Counts, elapsed: Duration, latencies: &mut [u32], batch: u64) -> String {
    use std::fmt::Write;
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut text = format!("{:<22} {:>12.1}s\n", "elapsed", seconds);
    let mut line = |name: &str, value: &AtomicU64| {
        let value = value.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "{name:<22} {value:>12} {:>12.1}/s",
            value as f64 / seconds
        );
    };
    line("spans sent", &counts.sent);
    line("acknowledged", &counts.acknowledged);
    line("refused (retryable)", &counts.refused);
    line("rejected (invalid)", &counts.rejected);
    line("failed", &counts.failed);
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        f64::from(latencies[rank - 1]) / 1000.0
    };
    let _ = writeln!(
        text,
        "{:<22} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} exports of about {batch} spans)",
        "acknowledgement",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        latencies.len()
    );
    text
}
