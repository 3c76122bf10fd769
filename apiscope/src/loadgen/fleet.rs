//! The simulated fleet: services with endpoints, calling clients, dependencies, failures,
//! timeouts and retries, under current and older semantic conventions. Deterministic for
//! a seed: the same seed gives the same requests in the same order.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// A small, fast, seedable generator (splitmix64); not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// An index drawn with the given weights.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut draw = (self.next_u64() % u64::from(total)) as u32;
        for (index, weight) in weights.iter().enumerate() {
            if draw < *weight {
                return index;
            }
            draw -= weight;
        }
        weights.len() - 1
    }

    /// A latency around `median_ms` with a long right tail (log-normal, sigma 0.5).
    fn latency_ms(&mut self, median_ms: f64) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        median_ms * (0.5 * normal).exp()
    }
}

/// Which attribute names a service's instrumentation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conventions {
    /// `http.request.method`, `http.route`, `http.response.status_code`, `db.system.name`...
    Current,
    /// `http.method`, `http.target`, `http.status_code`, `net.peer.name`, `db.system`...
    Older,
}

struct Endpoint {
    method: &'static str,
    route: &'static str,
    median_ms: f64,
    error_rate: f64,
    dependencies: &'static [&'static str],
}

struct Service {
    name: &'static str,
    version: &'static str,
    conventions: Conventions,
    endpoints: &'static [Endpoint],
}

const fn endpoint(
    method: &'static str,
    route: &'static str,
    median_ms: f64,
    error_rate: f64,
    dependencies: &'static [&'static str],
) -> Endpoint {
    Endpoint {
        method,
        route,
        median_ms,
        error_rate,
        dependencies,
    }
}

/// Dependencies are written `postgresql/<db>`, `redis`, `kafka/<topic>` or `http/<service>`.
static SERVICES: &[Service] = &[
    Service {
        name: "checkout",
        version: "2.14.0",
        conventions: Conventions::Current,
        endpoints: &[
            endpoint(
                "POST",
                "/v2/orders",
                120.0,
                0.02,
                &["postgresql/orders", "http/payments", "kafka/order-events"],
            ),
            endpoint(
                "GET",
                "/v2/orders/{id}",
                25.0,
                0.005,
                &["postgresql/orders"],
            ),
            endpoint("GET", "/v1/orders/{id}", 35.0, 0.01, &["postgresql/orders"]),
            endpoint("GET", "/v2/carts/{id}", 12.0, 0.002, &["redis"]),
        ],
    },
    Service {
        name: "catalog",
        version: "5.2.1",
        conventions: Conventions::Current,
        endpoints: &[
            endpoint(
                "GET",
                "/v2/products",
                45.0,
                0.003,
                &["postgresql/catalog", "redis"],
            ),
            endpoint("GET", "/v2/products/{id}", 15.0, 0.002, &["redis"]),
            endpoint("GET", "/v2/search", 80.0, 0.01, &["http/search-index"]),
        ],
    },
    Service {
        name: "payments",
        version: "1.9.3",
        conventions: Conventions::Older,
        endpoints: &[
            endpoint(
                "POST",
                "/v1/payments",
                200.0,
                0.03,
                &["postgresql/ledger", "http/card-gateway"],
            ),
            endpoint(
                "GET",
                "/v1/payments/{id}",
                30.0,
                0.005,
                &["postgresql/ledger"],
            ),
        ],
    },
    Service {
        name: "accounts",
        version: "3.0.0",
        conventions: Conventions::Older,
        endpoints: &[
            endpoint(
                "POST",
                "/v1/sessions",
                60.0,
                0.01,
                &["postgresql/accounts", "redis"],
            ),
            endpoint(
                "GET",
                "/v1/users/{id}",
                20.0,
                0.004,
                &["postgresql/accounts"],
            ),
            endpoint(
                "GET",
                "/v2/users/{id}",
                18.0,
                0.004,
                &["postgresql/accounts"],
            ),
        ],
    },
];

/// Calling clients, with their share of the traffic.
static CLIENTS: &[(&str, u32, &str)] = &[
    ("web", 40, "Mozilla/5.0 (X11; Linux x86_64) Firefox/146.0"),
    ("ios", 20, "shop-ios/8.3.1 CFNetwork/1568"),
    ("android", 20, "okhttp/4.12.0"),
    (
        "partner-acme",
        10,
        "acme-integration/2.1 python-requests/2.32",
    ),
    ("partner-globex", 5, "globex-sync/0.9 Java/21"),
    ("batch-jobs", 5, "curl/8.11.0"),
];

/// A request that failed and that its client will send again.
#[derive(Clone, Copy)]
struct Retry {
    service: usize,
    endpoint: usize,
    client: usize,
    attempt: i64,
}

/// Produces OTLP exports of the fleet's traffic.
pub(crate) struct Generator {
    rng: Rng,
    next_id: u64,
    retries: Vec<Retry>,
}

/// Spans of one export.
pub(crate) struct Export {
    pub(crate) request: ExportTraceServiceRequest,
    pub(crate) spans: u64,
}

impl Generator {
    /// The traffic of `seed`; `run` (the start time, say) goes into the trace and span ids
    /// only, so that two runs with one seed send the same traffic under different ids.
    pub(crate) fn new(seed: u64, run: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            next_id: run.rotate_left(17) ^ seed.wrapping_mul(0x1000_0000),
            retries: Vec::new(),
        }
    }

    /// About `spans` spans (whole requests: a server span and its client spans), starting
    /// just before `now_ns`.
    pub(crate) fn export(&mut self, spans: u64, now_ns: u64) -> Export {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
        let mut count = 0;
        while count < spans {
            let (service, made) = self.request(now_ns);
            count += made.len() as u64;
            by_service[service].extend(made);
        }
        let resource_spans = by_service
            .into_iter()
            .enumerate()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(index, spans)| resource_spans(&SERVICES[index], spans))
            .collect();
        Export {
            request: ExportTraceServiceRequest { resource_spans },
            spans: count,
        }
    }

    /// A fresh id; it does not draw from `rng`, so ids never change the traffic.
    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        let mut mixer = Rng::new(self.next_id);
        mixer.next_u64()
    }

    /// One request: which service served it, and its spans.
    fn request(&mut self, now_ns: u64) -> (usize, Vec<Span>) {
        let retry = if !self.retries.is_empty() && self.rng.chance(0.5) {
            self.retries.pop()
        } else {
            None
        };
        let (service_index, endpoint_index, client_index, attempt) = match retry {
            Some(r) => (r.service, r.endpoint, r.client, r.attempt),
            None => {
                let service = self.rng.below(SERVICES.len());
                let endpoint = self.rng.below(SERVICES[service].endpoints.len());
                let weights: Vec<u32> = CLIENTS.iter().map(|c| c.1).collect();
                (service, endpoint, self.rng.weighted(&weights), 0)
            }
        };
        let service = &SERVICES[service_index];
        let endpoint = &service.endpoints[endpoint_index];
        let (client, _, user_agent) = CLIENTS[client_index];

        let timed_out = self.rng.chance(endpoint.error_rate / 4.0);
        let status: i64 = if timed_out {
            504
        } else if self.rng.chance(endpoint.error_rate) {
            if self.rng.chance(0.7) { 500 } else { 503 }
        } else if self.rng.chance(0.02) {
            404
        } else if client.starts_with("partner") && self.rng.chance(0.01) {
            429
        } else {
            200
        };
        let mut duration_ms = self.rng.latency_ms(endpoint.median_ms);
        if timed_out {
            duration_ms = 5_000.0;
        }
        if status >= 500 && attempt < 2 {
            self.retries.push(Retry {
                service: service_index,
                endpoint: endpoint_index,
                client: client_index,
                attempt: attempt + 1,
            });
        }

        let trace_id = [self.id().to_be_bytes(), self.id().to_be_bytes()].concat();
        let server_id = self.id().to_be_bytes().to_vec();
        let duration_ns = (duration_ms * 1e6) as u64;
        let start = now_ns.saturating_sub(duration_ns);
        let id = self.rng.below(90_000) + 10_000;
        let path = endpoint.route.replace("{id}", &id.to_string());
        let old = service.conventions == Conventions::Older;
        let mut attributes = vec![
            text(
                if old {
                    "http.method"
                } else {
                    "http.request.method"
                },
                endpoint.method,
            ),
            text("http.route", endpoint.route),
            text(if old { "http.target" } else { "url.path" }, &path),
            text(if old { "http.scheme" } else { "url.scheme" }, "https"),
            int(
                if old {
                    "http.status_code"
                } else {
                    "http.response.status_code"
                },
                status,
            ),
            text(
                if old {
                    "net.host.name"
                } else {
                    "server.address"
                },
                &format!("{}.internal", service.name),
            ),
            text(
                if old {
                    "http.client_ip"
                } else {
                    "client.address"
                },
                &format!("10.20.{}.{}", client_index, id % 250),
            ),
            text(
                if old {
                    "http.user_agent"
                } else {
                    "user_agent.original"
                },
                user_agent,
            ),
            text("client.id", client),
        ];
        if attempt > 0 {
            attributes.push(int("http.request.resend_count", attempt));
        }
        if status >= 500 {
            let error = if timed_out { "timeout" } else { "500" };
            attributes.push(text("error.type", error));
        }
        let mut spans = vec![Span {
            trace_id: trace_id.clone(),
            span_id: server_id.clone(),
            name: format!("{} {}", endpoint.method, endpoint.route),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration_ns,
            attributes,
            status: (status >= 500).then(|| Status {
                code: StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Span::default()
        }];
        // Dependencies run one after the other inside the request.
        let mut offset = duration_ns / 20;
        let share = duration_ns / (2 * endpoint.dependencies.len() as u64 + 1);
        for dependency in endpoint.dependencies {
            let call_ns = ((share as f64) * (0.5 + self.rng.unit())) as u64;
            let failed = status >= 500 && !timed_out && self.rng.chance(0.5);
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: self.id().to_be_bytes().to_vec(),
                parent_span_id: server_id.clone(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: start + offset,
                end_time_unix_nano: start + offset + call_ns,
                status: failed.then(|| Status {
                    code: StatusCode::Error as i32,
                    message: format!("{dependency} failed"),
                }),
                ..dependency_span(dependency, old)
            });
            offset += call_ns;
        }
        (service_index, spans)
    }
}

/// Name and attributes of a client span calling `dependency`.
fn dependency_span(dependency: &str, old: bool) -> Span {
    let (kind, target) = dependency.split_once('/').unwrap_or((dependency, ""));
    let (name, attributes) = match kind {
        "postgresql" => (
            format!("SELECT {target}"),
            vec![
                text(
                    if old { "db.system" } else { "db.system.name" },
                    "postgresql",
                ),
                text(if old { "db.name" } else { "db.namespace" }, target),
                text(
                    if old {
                        "db.operation"
                    } else {
                        "db.operation.name"
                    },
                    "SELECT",
                ),
                text(
                    if old {
                        "net.peer.name"
                    } else {
                        "server.address"
                    },
                    "db.internal",
                ),
                int(if old { "net.peer.port" } else { "server.port" }, 5432),
            ],
        ),
        "redis" => (
            "GET".to_owned(),
            vec![
                text(if old { "db.system" } else { "db.system.name" }, "redis"),
                text(
                    if old {
                        "net.peer.name"
                    } else {
                        "server.address"
                    },
                    "cache.internal",
                ),
                int(if old { "net.peer.port" } else { "server.port" }, 6379),
            ],
        ),
        "kafka" => (
            format!("publish {target}"),
            vec![
                text("messaging.system", "kafka"),
                text("messaging.destination.name", target),
                text("messaging.operation.type", "publish"),
            ],
        ),
        _ => (
            "POST".to_owned(),
            vec![
                text("peer.service", target),
                text(
                    if old {
                        "http.method"
                    } else {
                        "http.request.method"
                    },
                    "POST",
                ),
                text(
                    if old { "http.url" } else { "url.full" },
                    &format!("https://{target}.internal/v1/call"),
                ),
                int(
                    if old {
                        "http.status_code"
                    } else {
                        "http.response.status_code"
                    },
                    200,
                ),
            ],
        ),
    };
    Span {
        name,
        attributes,
        ..Span::default()
    }
}

fn resource_spans(service: &Service, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                text("service.name", service.name),
                text("service.version", service.version),
                text("deployment.environment.name", "demo"),
                text("host.name", &format!("{}-7f9c", service.name)),
                text("telemetry.sdk.name", "apiscope-loadgen"),
                text("telemetry.sdk.language", "rust"),
            ],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "apiscope.loadgen".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..InstrumentationScope::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let a = Generator::new(7, 1).export(500, 1_000_000_000_000);
        let b = Generator::new(7, 1).export(500, 1_000_000_000_000);
        let c = Generator::new(8, 1).export(500, 1_000_000_000_000);
        assert_eq!(a.request, b.request);
        assert_ne!(a.request, c.request);
        assert!(a.spans >= 500);
        // Another run of the same seed: the same traffic under other ids.
        let mut d = Generator::new(7, 2).export(500, 1_000_000_000_000).request;
        assert_ne!(a.request, d);
        let mut a = a.request;
        for request in [&mut a, &mut d] {
            for resource in &mut request.resource_spans {
                for scope in &mut resource.scope_spans {
                    for span in &mut scope.spans {
                        span.trace_id.clear();
                        span.span_id.clear();
                        span.parent_span_id.clear();
                    }
                }
            }
        }
        assert_eq!(a, d);
    }

    #[test]
    fn spans_are_of_realistic_size_and_mix() {
        let export = Generator::new(1, 1).export(20_000, 1_000_000_000_000);
        let bytes = export.request.encoded_len() as u64;
        let per_span = bytes / export.spans;
        assert!((150..=500).contains(&per_span), "{per_span} bytes per span");
        let spans: Vec<&Span> = export
            .request
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter()))
            .collect();
        let servers = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .count();
        let failed = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32 && s.status.is_some())
            .count();
        let retried = spans
            .iter()
            .filter(|s| {
                s.attributes
                    .iter()
                    .any(|a| a.key == "http.request.resend_count")
            })
            .count();
        assert!(servers > 0 && servers < spans.len());
        // Every span is named, clients after what they call.
        assert!(spans.iter().all(|s| !s.name.is_empty()));
        assert!(spans.iter().any(|s| s.name.starts_with("SELECT ")));
        assert!(
            failed > 0 && failed * 10 < servers,
            "{failed} of {servers} failed"
        );
        assert!(
            retried > 0 && retried <= failed,
            "{retried} retries, {failed} failures"
        );
    }
}
