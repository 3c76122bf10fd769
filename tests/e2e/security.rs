//! Tokens and scopes on every listener, rate limits, and TLS, with clients nobody here
//! wrote: reqwest, tonic's generated OTLP clients, tokio-postgres and psql.

use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::json;
use sha2::Digest;
use tonic_types::StatusExt;

use crate::now_ns;
use crate::support::daemon::{Daemon, http};
use crate::support::otlp::{hex_id, span, traces};
use crate::support::pg::runtime;

const INGEST: &str = "ingest-secret-0123456789";
const QUERY: &str = "query-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const WRONG: &str = "wrong-secret-0123456789";

/// A config file with one token per scope; the query token is given by its SHA-256 only.
fn tokens_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let query_sha = hex::encode(sha2::Sha256::digest(QUERY.as_bytes()));
    let path = dir.join("apiscope.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n\
             [[auth.tokens]]\nname = \"agent\"\ntoken = \"{INGEST}\"\nscopes = [\"ingest\"]\n\
             [[auth.tokens]]\nname = \"grafana\"\ntoken_sha256 = \"{query_sha}\"\nscopes = [\"query\"]\n\
             [[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nscopes = [\"admin\"]\n"
        ),
    )
    .unwrap();
    path
}

/// A trace export of `count` server spans from `service`, with unique ids.
pub(crate) fn spans_request(service: &str, first_id: u64, count: u64) -> ExportTraceServiceRequest {
    let now = now_ns() as u64;
    let spans = (0..count)
        .map(|i| Span {
            trace_id: (first_id + i + 1).to_be_bytes().repeat(2),
            span_id: (first_id + i + 1).to_be_bytes().to_vec(),
            name: "GET /secure".into(),
            kind: 2,
            start_time_unix_nano: now - 2_000_000,
            end_time_unix_nano: now,
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.into())),
            }),
            ..KeyValue::default()
        }],
        ..Resource::default()
    }
}

pub(crate) fn logs_request(service: &str, count: usize) -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: now_ns() as u64,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("hello".into())),
        }),
        ..LogRecord::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs {
                log_records: vec![record; count],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// An OTLP/JSON body of `count` spans from `service`.
fn json_spans(service: &str, first_id: u64, count: u64) -> Vec<u8> {
    let spans = (0..count)
        .map(|i| {
            let id = first_id + i + 1;
            span(
                &hex_id(id, 16),
                &hex_id(id, 8),
                "GET /secure",
                2,
                now_ns() - 2_000_000,
                1,
                json!([]),
            )
        })
        .collect();
    serde_json::to_vec(&traces(service, spans)).unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// One HTTP endpoint of the route scan.
struct Route {
    url: String,
    post: Option<(&'static str, Vec<u8>)>,
    scope_token: &'static str,
    wrong_scope: &'static str,
}

impl Route {
    fn call(&self, token: Option<&str>) -> reqwest::blocking::Response {
        let client = http();
        let mut request = match &self.post {
            Some((content_type, body)) => client
                .post(&self.url)
                .header("content-type", *content_type)
                .body(body.clone()),
            None => client.get(&self.url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap()
    }
}

#[test]
fn every_endpoint_refuses_without_the_right_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = tokens_config(dir.path(), "");
    let mut daemon = Daemon::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let otlp = daemon.otlp_http_endpoint();
    let query = daemon.query_url();
    let request_line = format!(
        "{{\"time\":{},\"method\":\"GET\",\"path\":\"/secure\",\"status\":200,\"duration_ms\":2,\"service\":\"logs\"}}\n",
        now_ns() / 1_000_000
    );
    let routes = [
        Route {
            url: format!("{otlp}/v1/traces"),
            post: Some(("application/json", json_spans("http", 0, 2))),
            scope_token: INGEST,
            wrong_scope: QUERY,
        },
        Route {
            url: format!("{otlp}/v1/logs"),
            post: Some((
                "application/x-protobuf",
                prost::Message::encode_to_vec(&logs_request("http", 1)),
            )),
            scope_token: INGEST,
            wrong_scope: QUERY,
        },
        Route {
            url: format!("{otlp}/api/v1/requests"),
            post: Some(("application/x-ndjson", request_line.into_bytes())),
            scope_token: INGEST,
            wrong_scope: QUERY,
        },
        Route {
            url: format!("{query}/api/v1/query"),
            post: Some(("application/sql", b"SELECT 1".to_vec())),
            scope_token: QUERY,
            wrong_scope: INGEST,
        },
        // The trace view's APIs (Jaeger, Tempo) take the query scope too.
        Route {
            url: format!("{query}/api/services"),
            post: None,
            scope_token: QUERY,
            wrong_scope: INGEST,
        },
        Route {
            url: format!("{query}/api/search?q=%7B%7D"),
            post: None,
            scope_token: QUERY,
            wrong_scope: INGEST,
        },
        Route {
            url: format!("{query}/metrics"),
            post: None,
            scope_token: ADMIN,
            wrong_scope: QUERY,
        },
    ];
    for route in &routes {
        for (token, expected) in [
            (None, 401),
            (Some(WRONG), 401),
            (Some(route.wrong_scope), 403),
        ] {
            let response = route.call(token);
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{} with {token:?}",
                route.url
            );
            if expected == 401 {
                let challenge = response.headers().get("www-authenticate").unwrap();
                assert!(challenge.to_str().unwrap().starts_with("Bearer"));
            }
            let problem: serde_json::Value = response.json().unwrap();
            assert!(problem["detail"].as_str().unwrap().len() > 10, "{problem}");
        }
        // The token of the route's scope passes, and so does admin.
        for token in [route.scope_token, ADMIN] {
            let response = route.call(Some(token));
            assert_eq!(
                response.status().as_u16(),
                200,
                "{} with its token",
                route.url
            );
        }
    }
    for base in [&otlp, &query] {
        for path in ["/healthz", "/readyz"] {
            let response = http().get(format!("{base}{path}")).send().unwrap();
            assert_eq!(
                response.status().as_u16(),
                200,
                "{base}{path} needs no token"
            );
        }
    }

    // gRPC: both services, by metadata.
    runtime().block_on(async {
        let endpoint = daemon.grpc_endpoint();
        let mut traces = TraceServiceClient::connect(endpoint.clone()).await.unwrap();
        let mut logs = LogsServiceClient::connect(endpoint).await.unwrap();
        for (token, code) in [
            (None, tonic::Code::Unauthenticated),
            (Some(WRONG), tonic::Code::Unauthenticated),
            (Some(QUERY), tonic::Code::PermissionDenied),
        ] {
            let refused = traces
                .export(with_token(spans_request("grpc", 100, 3), token))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), code, "traces with {token:?}");
            let refused = logs
                .export(with_token(logs_request("grpc", 1), token))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), code, "logs with {token:?}");
        }
        for (first, token) in [(200, INGEST), (300, ADMIN)] {
            traces
                .export(with_token(spans_request("grpc", first, 3), Some(token)))
                .await
                .unwrap();
            logs.export(with_token(logs_request("grpc", 1), Some(token)))
                .await
                .unwrap();
        }
    });

    // PostgreSQL: the token is the password.
    runtime().block_on(async {
        for password in [None, Some(WRONG), Some(INGEST)] {
            let refused = crate::support::pg::connect(&daemon, password).await;
            assert!(refused.is_err(), "logged in with {password:?}");
        }
        for password in [QUERY, ADMIN] {
            let client = crate::support::pg::connect(&daemon, Some(password)).await.unwrap();
            let rows = client.simple_query("SELECT 41 + 1").await.unwrap();
            assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42")));
        }
    });

    // Only what the right tokens sent was stored: two HTTP exports of 2 spans, two gRPC
    // exports of 3; a log record per accepted logs export; one request line per token.
    daemon.token = Some(QUERY.into());
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 10), 10);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM logs", 4), 4);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM requests", 2), 2);

    let log = daemon.stop().join("\n");
    assert!(log.contains("request refused"), "refusals are logged");
    for secret in [INGEST, QUERY, ADMIN, WRONG] {
        assert!(!log.contains(secret), "a token reached the log");
    }
}

#[test]
fn a_caller_over_its_rate_is_refused_retryably_and_one_under_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = tokens_config(dir.path(), "ingest_rate_limit = 1\nquery_rate_limit = 1");
    let mut daemon = Daemon::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let url = format!("{}/v1/traces", daemon.otlp_http_endpoint());

    // Ten exports at once from the agent: one passes the 1/s limit, the rest are 429 with a
    // Retry-After the client can wait out.
    let answers: Vec<(u16, Option<u64>)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..10)
            .map(|n| {
                let url = url.clone();
                scope.spawn(move || {
                    let response = http()
                        .post(url)
                        .bearer_auth(INGEST)
                        .header("content-type", "application/json")
                        .body(json_spans("burst", n * 10, 2))
                        .send()
                        .unwrap();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                    (response.status().as_u16(), retry)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let accepted = answers.iter().filter(|(status, _)| *status == 200).count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .collect();
    assert!(accepted >= 1, "{answers:?}");
    assert!(limited.len() >= 5, "{answers:?}");
    assert_eq!(accepted + limited.len(), 10, "{answers:?}");
    assert!(
        limited.iter().all(|(_, retry)| *retry >= Some(1)),
        "{answers:?}"
    );

    // Waiting as told is enough.
    std::thread::sleep(Duration::from_secs(1));
    let retried = http()
        .post(&url)
        .bearer_auth(INGEST)
        .header("content-type", "application/json")
        .body(json_spans("burst", 1000, 2))
        .send()
        .unwrap();
    assert_eq!(retried.status().as_u16(), 200);

    // Another caller at its own pace, under the limit, is never refused: limits are per
    // token.
    for n in 0..3 {
        let response = http()
            .post(&url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(json_spans("steady", 2000 + n * 10, 2))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "steady export {n}");
        // Counted from the answer, which the daemon gave after admitting the export: the
        // next one reaches it at least this long after, however late this one arrived.
        std::thread::sleep(Duration::from_millis(1100));
    }

    // gRPC over the limit: RESOURCE_EXHAUSTED with RetryInfo.
    runtime().block_on(async {
        let client = TraceServiceClient::connect(daemon.grpc_endpoint())
            .await
            .unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..5 {
            let mut client = client.clone();
            calls.spawn(async move {
                client
                    .export(with_token(
                        spans_request("grpc", 5000 + n * 10, 1),
                        Some(INGEST),
                    ))
                    .await
            });
        }
        let answers = calls.join_all().await;
        let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(!refused.is_empty(), "no gRPC call was limited");
        for status in refused {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            let retry = status.get_details_retry_info().expect("RetryInfo");
            assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
        }
    });

    // Queries over PostgreSQL: over the limit, SQLSTATE 53400; the session stays usable.
    std::thread::sleep(Duration::from_secs(1));
    runtime().block_on(async {
        let client = crate::support::pg::connect(&daemon, Some(QUERY))
            .await
            .unwrap();
        let mut limited = 0;
        for _ in 0..4 {
            if let Err(error) = client.simple_query("SELECT 1").await {
                assert_eq!(error.code().map(|c| c.code()), Some("53400"), "{error}");
                limited += 1;
            }
        }
        assert!(limited >= 2, "{limited} of 4 queries limited");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        client.simple_query("SELECT 1").await.unwrap();
    });

    // Everything acknowledged is stored, nothing refused is.
    let expected = 2 * (accepted as i64 + 1 + 3);
    daemon.token = Some(ADMIN.into());
    std::thread::sleep(Duration::from_secs(1));
    let stored =
        daemon.count("SELECT count(*) FROM spans WHERE service_name IN ('burst', 'steady')");
    assert_eq!(stored, expected);
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as
/// PEM files in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [std::path::PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "apiscope test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client.example".into()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

#[test]
fn tls_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key, client_cert, client_key] = certificates(dir.path());
    let arg = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let daemon = Daemon::start_with(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &arg(&cert),
            "--tls-key",
            &arg(&key),
            "--tls-client-ca",
            &arg(&ca),
        ],
    );
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.to_owned();
    let ca_pem = std::fs::read(&ca).unwrap();
    let _ = http(); // installs the TLS implementation
    let trusting = reqwest::blocking::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca_pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let https_query = format!("https://localhost:{}", port(&daemon.http_addr));
    let https_otlp = format!("https://localhost:{}", port(&daemon.otlp_http_addr));

    // HTTPS with the CA: both HTTP listeners answer, and ingest works.
    let sent = trusting
        .post(format!("{https_otlp}/v1/traces"))
        .header("content-type", "application/json")
        .body(json_spans("tls-http", 0, 4))
        .send()
        .unwrap();
    assert_eq!(sent.status().as_u16(), 200);
    // Without the CA, or in plain text, no answer.
    let untrusting = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{https_query}/healthz"))
            .send()
            .is_err()
    );
    assert!(
        http()
            .get(format!("http://{}/healthz", daemon.http_addr))
            .send()
            .is_err()
    );
    assert!(
        http()
            .get(format!("http://{}/healthz", daemon.otlp_http_addr))
            .send()
            .is_err()
    );

    // gRPC: a client with the CA and a certificate signed by it is served; without a
    // client certificate, or in plain text, it is not.
    runtime().block_on(async {
        let grpc = format!("https://localhost:{}", port(&daemon.grpc_addr));
        let ca_cert = tonic::transport::Certificate::from_pem(&ca_pem);
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&client_cert).unwrap(),
            std::fs::read(&client_key).unwrap(),
        );
        let with_identity = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(ca_cert.clone())
            .identity(identity);
        let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
            .unwrap()
            .tls_config(with_identity)
            .unwrap()
            .connect()
            .await
            .unwrap();
        TraceServiceClient::new(channel)
            .export(spans_request("tls-grpc", 0, 3))
            .await
            .unwrap();

        let anonymous = tonic::transport::ClientTlsConfig::new().ca_certificate(ca_cert);
        let channel = tonic::transport::Endpoint::from_shared(grpc)
            .unwrap()
            .tls_config(anonymous)
            .unwrap()
            .connect()
            .await;
        let refused = match channel {
            Err(_) => true,
            Ok(channel) => TraceServiceClient::new(channel)
                .export(spans_request("tls-grpc", 100, 3))
                .await
                .is_err(),
        };
        assert!(refused, "a gRPC client without a certificate was served");
        let plain = TraceServiceClient::connect(daemon.grpc_endpoint()).await;
        let refused = match plain {
            Err(_) => true,
            Ok(mut client) => client
                .export(spans_request("tls-grpc", 200, 3))
                .await
                .is_err(),
        };
        assert!(refused, "a plain-text gRPC client was served");
    });

    // psql verifying the server's certificate is served; without TLS it is refused.
    let psql = |sslmode: &str| {
        std::process::Command::new("psql")
            .arg(format!(
                "host=localhost port={} user=oncall dbname=apiscope sslmode={sslmode} \
                 sslrootcert={} connect_timeout=10",
                port(&daemon.pg_addr),
                ca.display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM spans"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    let verified = psql("verify-full");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let plain = psql("disable");
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("requires TLS"));

    // The CLI, trusting the CA: what both transports sent is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = std::process::Command::new(crate::support::daemon::binary())
            .args(["sql", "--url", &https_query, "--ca-cert", &arg(&ca)])
            .arg("SELECT count(*) AS n FROM spans WHERE service_name LIKE 'tls-%'")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if stdout.contains("| 7 ") || Instant::now() > deadline {
            assert!(stdout.contains("| 7 "), "{stdout}");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
