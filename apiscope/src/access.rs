//! Who may do what, and how often: bearer tokens with scopes, and rate limits per token (or
//! per client address while no token is configured).
//!
//! One `Access` serves every listener. The HTTP routers and the gRPC server ask it through
//! the layers below; the PostgreSQL listener through `query::pg::Gate`, where the token is
//! the password.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// What a token allows. `admin` implies the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    /// Sending telemetry: OTLP over gRPC and HTTP, request logs.
    Ingest,
    /// SQL over HTTP and the PostgreSQL protocol.
    Query,
    /// `/metrics`, and everything the other scopes allow.
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        }
    }
}

/// The `[auth]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfig {
    #[serde(default)]
    pub(crate) tokens: Vec<TokenConfig>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenConfig {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    scopes: Vec<Scope>,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Requests per second one caller may make, per kind of work; `None` is no limit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateLimits {
    pub(crate) ingest: Option<NonZeroU32>,
    pub(crate) query: Option<NonZeroU32>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `Authorization: Bearer` credentials (or no password).
    Missing,
    /// Credentials that match no configured token.
    Unknown,
    /// A known token without the scope this endpoint needs.
    Scope { token: String, needed: Scope },
    /// Over the caller's rate limit; retry after the duration.
    Limited {
        caller: String,
        retry_after: Duration,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Missing => {
                f.write_str("a token is required: send Authorization: Bearer <token>")
            }
            Denied::Unknown => f.write_str("the token is not valid"),
            Denied::Scope { token, needed } => write!(
                f,
                "token {token:?} lacks the {} scope this endpoint needs",
                needed.name()
            ),
            Denied::Limited {
                caller,
                retry_after,
            } => write!(
                f,
                "rate limit exceeded for {caller}: retry in {} ms",
                retry_after.as_millis().max(1)
            ),
        }
    }
}

impl Denied {
    /// A short label for logs and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing_token",
            Denied::Unknown => "invalid_token",
            Denied::Scope { .. } => "wrong_scope",
            Denied::Limited { .. } => "rate_limited",
        }
    }
}

/// A configured token, known by the SHA-256 of its secret.
#[derive(Debug)]
struct Token {
    name: String,
    scopes: Vec<Scope>,
}

impl Token {
    fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// The tokens and rate limiters in force.
pub(crate) struct Access {
    tokens: HashMap<[u8; 32], Token>,
    limits: RateLimits,
    ingest: Option<DefaultKeyedRateLimiter<String>>,
    query: Option<DefaultKeyedRateLimiter<String>>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.tokens.values().map(|t| t.name.as_str()).collect();
        f.debug_struct("Access")
            .field("tokens", &names)
            .field("ingest_limited", &self.ingest.is_some())
            .field("query_limited", &self.query.is_some())
            .finish()
    }
}

impl Access {
    /// Checks the configured tokens: each has a name, exactly one of `token` and
    /// `token_sha256`, at least one scope, and no two share a secret or a name.
    pub(crate) fn new(config: &AuthConfig, limits: RateLimits) -> Result<Self> {
        let mut tokens = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for entry in &config.tokens {
            let name = entry.name.trim();
            let bad = |what: &str| Error::Config(format!("[[auth.tokens]] {name:?}: {what}"));
            if name.is_empty() {
                return Err(Error::Config(
                    "[[auth.tokens]]: a token needs a name".into(),
                ));
            }
            if entry.scopes.is_empty() {
                return Err(bad("give at least one scope (ingest, query, admin)"));
            }
            let digest = match (&entry.token, &entry.token_sha256) {
                (Some(secret), None) if secret.len() >= 16 => digest(secret),
                (Some(_), None) => return Err(bad("the token must be at least 16 characters")),
                (None, Some(hex_digest)) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                        bad("token_sha256 must be 64 hexadecimal digits (sha256sum of the token)")
                    })?;
                    digest
                }
                _ => return Err(bad("give exactly one of token and token_sha256")),
            };
            if !names.insert(name.to_owned()) {
                return Err(bad("two tokens have this name"));
            }
            let token = Token {
                name: name.to_owned(),
                scopes: entry.scopes.clone(),
            };
            if tokens.insert(digest, token).is_some() {
                return Err(bad("its secret is also another token's"));
            }
        }
        let limiter = |rate: Option<NonZeroU32>| {
            rate.map(|r| DefaultKeyedRateLimiter::keyed(Quota::per_second(r)))
        };
        Ok(Self {
            tokens,
            limits,
            ingest: limiter(limits.ingest),
            query: limiter(limits.query),
        })
    }

    /// Whether tokens are required.
    pub(crate) fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// What `--check-config` shows: token names and scopes, and the rate limits.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .tokens
            .values()
            .map(|t| {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.name()).collect();
                format!("{} ({})", t.name, scopes.join(", "))
            })
            .collect();
        tokens.sort();
        let rate = |limit: Option<NonZeroU32>| match limit {
            Some(limit) => format!("{limit} requests/s per caller"),
            None => "none".to_owned(),
        };
        vec![
            format!(
                "auth tokens = {}",
                if tokens.is_empty() {
                    "none (no authentication)".to_owned()
                } else {
                    tokens.join("; ")
                }
            ),
            format!("ingest_rate_limit = {}", rate(self.limits.ingest)),
            format!("query_rate_limit = {}", rate(self.limits.query)),
        ]
    }

    /// The name of the token whose secret is `secret`, if it allows `scope`.
    pub(crate) fn authenticate(
        &self,
        secret: Option<&str>,
        scope: Scope,
    ) -> Result<String, Denied> {
        let secret = secret.filter(|s| !s.is_empty()).ok_or(Denied::Missing)?;
        let token = self.tokens.get(&digest(secret)).ok_or(Denied::Unknown)?;
        if token.allows(scope) {
            Ok(token.name.clone())
        } else {
            Err(Denied::Scope {
                token: token.name.clone(),
                needed: scope,
            })
        }
    }

    /// Admits one request for `scope` from a caller sending `bearer` from `peer`: the token
    /// is checked when tokens are configured, then the caller's rate (by token name, or by
    /// address while auth is off).
    pub(crate) fn admit(
        &self,
        bearer: Option<&str>,
        peer: Option<IpAddr>,
        scope: Scope,
    ) -> Result<(), Denied> {
        let token = match self.enabled() {
            true => Some(self.authenticate(bearer, scope)?),
            false => None,
        };
        if self.limiter(scope).is_none() {
            return Ok(());
        }
        let caller = match (token, peer) {
            (Some(name), _) => format!("token {name}"),
            (None, Some(ip)) => format!("address {ip}"),
            (None, None) => "address unknown".to_owned(),
        };
        self.rate(&caller, scope)
    }

    /// The limiter of `scope`'s kind of work, if it has one.
    fn limiter(&self, scope: Scope) -> Option<&DefaultKeyedRateLimiter<String>> {
        match scope {
            Scope::Ingest => self.ingest.as_ref(),
            Scope::Query => self.query.as_ref(),
            Scope::Admin => None,
        }
    }

    /// Counts one request of `caller` against the limit for `scope`'s kind of work.
    pub(crate) fn rate(&self, caller: &str, scope: Scope) -> Result<(), Denied> {
        let Some(limiter) = self.limiter(scope) else {
            return Ok(());
        };
        let key = caller.to_owned();
        limiter
            .check_key(&key)
            .map_err(|not_until| Denied::Limited {
                caller: key,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Forgets callers whose limit has fully recovered, so the limiters do not grow with
    /// the number of addresses ever seen.
    pub(crate) fn forget_idle(&self) {
        for limiter in [&self.ingest, &self.query].into_iter().flatten() {
            limiter.retain_recent();
        }
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (kind, token) = value.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Logs one refused request with its reason, never the credentials.
pub(crate) fn log_refusal(listener: &str, peer: Option<SocketAddr>, target: &str, denied: &Denied) {
    metrics::counter!(
        "apiscope_refused_requests_total",
        "listener" => listener.to_owned(),
        "reason" => denied.reason()
    )
    .increment(1);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::warn!(
        listener,
        %peer,
        target,
        reason = denied.reason(),
        detail = %denied,
        "request refused"
    );
}

/// The address of an HTTP client, from whichever listener (plain or TLS) accepted it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Axum middleware: admits the request for `scope` or answers 401, 403 or 429.
pub(crate) async fn http_guard(
    State((access, scope, listener)): State<(Arc<Access>, Scope, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|info| info.0.0);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match access.admit(bearer(authorization), peer.map(|p| p.ip()), scope) {
        Ok(_) => next.run(request).await,
        Err(denied) => {
            log_refusal(listener, peer, request.uri().path(), &denied);
            http_refusal(&denied)
        }
    }
}

/// 401 (with `WWW-Authenticate`), 403, or 429 with `Retry-After`, as a problem document.
fn http_refusal(denied: &Denied) -> Response {
    let (status, title) = match denied {
        Denied::Missing | Denied::Unknown => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Denied::Scope { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        Denied::Limited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
    };
    let mut response = query::http::problem_document(status, title, &denied.to_string());
    let headers = response.headers_mut();
    match denied {
        Denied::Missing | Denied::Unknown => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"apiscope\""),
            );
        }
        Denied::Limited { retry_after, .. } => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_seconds(*retry_after)),
            );
        }
        Denied::Scope { .. } => {}
    }
    response
}

/// Whole seconds for `Retry-After`, rounded up so that a client waiting that long is
/// admitted.
fn retry_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The gRPC check: a tonic interceptor admitting every call for `ingest`.
#[derive(Clone)]
pub(crate) struct GrpcGuard(pub(crate) Arc<Access>);

impl tonic::service::Interceptor for GrpcGuard {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let peer = request.remote_addr();
        match self
            .0
            .admit(bearer(authorization), peer.map(|p| p.ip()), Scope::Ingest)
        {
            Ok(_) => Ok(request),
            Err(denied) => {
                log_refusal("OTLP/gRPC", peer, "export", &denied);
                Err(grpc_refusal(&denied))
            }
        }
    }
}

fn grpc_refusal(denied: &Denied) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match denied {
        Denied::Missing | Denied::Unknown => tonic::Status::unauthenticated(denied.to_string()),
        Denied::Scope { .. } => tonic::Status::permission_denied(denied.to_string()),
        Denied::Limited { retry_after, .. } => tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            denied.to_string(),
            ErrorDetails::with_retry_info(Some(*retry_after)),
        ),
    }
}

/// The PostgreSQL listener's view: a token with the query scope as the password (or
/// `pg_password`, when one is set), and the query rate limit per statement.
pub(crate) struct PgGate {
    pub(crate) access: Arc<Access>,
}

impl query::pg::Gate for PgGate {
    fn login(&self, password: &str, peer: SocketAddr) -> Result<String, String> {
        match self.access.authenticate(Some(password), Scope::Query) {
            Ok(name) => Ok(format!("token {name}")),
            Err(denied) => {
                log_refusal("PostgreSQL", Some(peer), "login", &denied);
                Err(denied.to_string())
            }
        }
    }

    fn admit(&self, caller: &str) -> Result<(), Duration> {
        self.access
            .rate(caller, Scope::Query)
            .map_err(|denied| match denied {
                Denied::Limited { retry_after, .. } => retry_after,
                _ => Duration::ZERO,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> AuthConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn scopes_are_checked_and_admin_implies_the_others() {
        let sha = hex::encode(Sha256::digest(b"ingest-secret-0123456789"));
        let access = Access::new(
            &config(&format!(
                r#"
                [[tokens]]
                name = "agent"
                token_sha256 = "{sha}"
                scopes = ["ingest"]
                [[tokens]]
                name = "ops"
                token = "admin-secret-0123456789"
                scopes = ["admin"]
                "#
            )),
            RateLimits::default(),
        )
        .unwrap();
        assert_eq!(
            access.authenticate(Some("ingest-secret-0123456789"), Scope::Ingest),
            Ok("agent".into())
        );
        assert_eq!(
            access.authenticate(Some("ingest-secret-0123456789"), Scope::Query),
            Err(Denied::Scope {
                token: "agent".into(),
                needed: Scope::Query
            })
        );
        for scope in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert!(
                access
                    .authenticate(Some("admin-secret-0123456789"), scope)
                    .is_ok()
            );
        }
        assert_eq!(
            access.authenticate(Some("guess"), Scope::Ingest),
            Err(Denied::Unknown)
        );
        assert_eq!(
            access.authenticate(None, Scope::Ingest),
            Err(Denied::Missing)
        );
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
    }

    #[test]
    fn bad_token_entries_are_refused_by_name() {
        for (entry, expected) in [
            ("name = \"a\"\nscopes = [\"query\"]", "exactly one of token"),
            (
                "name = \"a\"\ntoken = \"short\"\nscopes = [\"query\"]",
                "at least 16",
            ),
            (
                "name = \"a\"\ntoken_sha256 = \"xyz\"\nscopes = [\"query\"]",
                "64 hexadecimal",
            ),
            (
                "name = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = []",
                "at least one scope",
            ),
        ] {
            let error = Access::new(
                &config(&format!("[[tokens]]\n{entry}")),
                RateLimits::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains(expected), "{entry}: {error}");
        }
        let twice = "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"query\"]\n\
                     [[tokens]]\nname = \"b\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"ingest\"]";
        assert!(Access::new(&config(twice), RateLimits::default()).is_err());
        let unknown_scope =
            "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"root\"]";
        assert!(toml::from_str::<AuthConfig>(unknown_scope).is_err());
    }

    #[test]
    fn a_caller_over_its_rate_waits_and_others_do_not() {
        let limits = RateLimits {
            ingest: NonZeroU32::new(2),
            query: None,
        };
        let access = Access::new(&AuthConfig::default(), limits).unwrap();
        let a = Some(IpAddr::from([127, 0, 0, 2]));
        let b = Some(IpAddr::from([127, 0, 0, 3]));
        assert!(access.admit(None, a, Scope::Ingest).is_ok());
        assert!(access.admit(None, a, Scope::Ingest).is_ok());
        match access.admit(None, a, Scope::Ingest) {
            Err(Denied::Limited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(access.admit(None, b, Scope::Ingest).is_ok());
        for _ in 0..10 {
            assert!(access.admit(None, a, Scope::Query).is_ok());
        }
        assert_eq!(retry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_seconds(Duration::from_secs(2)), 2);
    }
}
