//! SQL over the PostgreSQL wire protocol, so that psql, Grafana's PostgreSQL data source,
//! psycopg, JDBC and BI tools connect with no plugin.
//!
//! The protocol, the catalog queries clients send and the Arrow-to-PostgreSQL types come
//! from `datafusion-postgres` over the same session as the HTTP API. What this module adds:
//! authentication (SCRAM-SHA-256 with a configured password, or the daemon's tokens as
//! passwords through a [`Gate`]), TLS when configured (then required), a per-statement rate
//! check, a `run(listener, stop)` entry point that ends with the daemon, and (in `session`)
//! the read-only check on every statement and the rewrites some clients' SQL needs.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{
    SCRAM_ITERATIONS, ScramAuth, gen_salted_password, random_nonce,
};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::engine::Engine;
use crate::error::Error;

mod errors;
pub use errors::fatal_message;
mod guard;
mod session;

use session::Session;

/// The daemon's access rules as the PostgreSQL listener needs them.
pub trait Gate: Send + Sync {
    /// The caller a password names, if it is a token with the query scope; else why not.
    fn login(&self, password: &str, peer: SocketAddr) -> Result<String, String>;
    /// Admits one statement from `caller` (as `login` named it, or `address <ip>`), or
    /// says how long to wait.
    fn admit(&self, caller: &str) -> Result<(), Duration>;
}

/// The client metadata key holding the caller `Gate::login` named.
const CALLER: &str = "apiscope.caller";

/// Who may connect.
#[derive(Clone, Default)]
pub struct PgAuth {
    password: Option<String>,
    gate: Option<Arc<dyn Gate>>,
    tokens: bool,
}

impl Debug for PgAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<redacted>");
        f.debug_struct("PgAuth")
            .field("password", &password)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl PgAuth {
    /// Anyone who can reach the listener; meant for loopback addresses.
    pub fn open() -> Self {
        Self::default()
    }

    /// Clients must prove they know `password` (any user name) through SCRAM-SHA-256,
    /// which never sends the password itself over the wire.
    pub fn password(password: impl Into<String>) -> Self {
        Self {
            password: Some(password.into()),
            ..Self::default()
        }
    }

    /// Rate-checks every statement through `gate`; with `tokens`, a token with the query
    /// scope is also a password (sent in clear text, as SCRAM cannot check a secret the
    /// server holds only as a hash: use TLS off loopback).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>, tokens: bool) -> Self {
        self.gate = Some(gate);
        self.tokens = tokens;
        self
    }

    /// How clients log in, for `--check-config`.
    pub fn describe(&self) -> &'static str {
        match (self.tokens, self.password.is_some()) {
            (true, true) => "a token with the query scope, or pg_password (clear text)",
            (true, false) => "a token with the query scope as the password (clear text)",
            (false, true) => "pg_password (SCRAM-SHA-256)",
            (false, false) => "none",
        }
    }
}

/// How long a PostgreSQL client may take before it is disconnected.
#[derive(Debug, Clone, Copy)]
pub struct PgTimeouts {
    /// From connecting to the end of authentication (PostgreSQL's `authentication_timeout`).
    pub startup: Duration,
    /// Between statements, once logged in (PostgreSQL's `idle_session_timeout`); none when
    /// `None`.
    pub idle_session: Option<Duration>,
}

impl Default for PgTimeouts {
    fn default() -> Self {
        Self {
            startup: Duration::from_secs(10),
            idle_session: None,
        }
    }
}

/// Serves SQL over the PostgreSQL protocol on the connections `incoming` yields (each with
/// what holds its place under the listener's limit, dropped when the connection ends) until
/// `stop` completes; open connections are then closed (they only read, so nothing is lost).
/// With `tls`, clients must ask for TLS (`sslmode=require` or stricter); a plain startup
/// is refused.
pub async fn run<H: Send + 'static>(
    incoming: impl futures::Stream<Item = (TcpStream, SocketAddr, H)>,
    engine: Engine,
    auth: PgAuth,
    tls: Option<TlsAcceptor>,
    timeouts: PgTimeouts,
    stop: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    // Connections run on the caller's runtime and the statements' work on the query runtime
    // (see `guard`), as for HTTP: a heavy query never stalls another connection.
    let shared = Arc::new(Shared::new(engine, &auth, tls.is_some()));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    tokio::pin!(incoming);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = incoming.next() => accepted,
        };
        let Some((socket, peer, held)) = accepted else {
            break;
        };
        // Reap finished connections so the set does not grow with the daemon's uptime.
        while connections.try_join_next().is_some() {}
        let activity = Arc::new(Activity::new());
        let handlers = Arc::new(Handlers {
            shared: shared.clone(),
            activity: activity.clone(),
        });
        let tls = tls.clone();
        connections.spawn(async move {
            let _held = held;
            let served = pgwire::tokio::process_socket(socket, tls, handlers);
            match activity.watch(served, timeouts).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, %peer, "PostgreSQL connection ended"),
                Err(reason) => {
                    metrics::counter!("apiscope_connections_timed_out_total", "reason" => reason)
                        .increment(1);
                    tracing::debug!(%peer, reason, "PostgreSQL connection closed");
                }
            }
        });
    }
    connections.shutdown().await;
}

/// What one connection has been doing, for its time limits.
pub(crate) struct Activity {
    authenticated: AtomicBool,
    /// When the last statement started or finished.
    last: parking_lot::Mutex<tokio::time::Instant>,
    statements: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            authenticated: AtomicBool::new(false),
            last: parking_lot::Mutex::new(tokio::time::Instant::now()),
            statements: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        *self.last.lock() = tokio::time::Instant::now();
    }

    /// A statement starts; it counts as running until the returned value is dropped.
    pub(crate) fn statement(self: &Arc<Self>) -> Running {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Running(self.clone())
    }

    /// Runs `served` until it ends, or until the client took too long to log in or sat idle
    /// for too long; then the reason, as the metric's label.
    async fn watch<T>(
        &self,
        served: impl Future<Output = T>,
        timeouts: PgTimeouts,
    ) -> Result<T, &'static str> {
        tokio::pin!(served);
        let started = tokio::time::Instant::now();
        let mut deadline = started + timeouts.startup;
        loop {
            tokio::select! {
                done = &mut served => return Ok(done),
                () = tokio::time::sleep_until(deadline) => {}
            }
            if !self.authenticated.load(Ordering::Relaxed) {
                return Err("pg_startup");
            }
            let Some(idle) = timeouts.idle_session else {
                return Ok(served.await);
            };
            let last = *self.last.lock();
            if self.statements.load(Ordering::Relaxed) == 0
                && last + idle <= tokio::time::Instant::now()
            {
                return Err("pg_idle_session");
            }
            deadline = (last + idle).max(tokio::time::Instant::now() + Duration::from_millis(100));
        }
    }
}

/// A statement of a connection in progress.
pub(crate) struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.touch();
        self.0.statements.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's [`Activity`], as statements find it among the client's extensions.
struct ActivityOf(Arc<Activity>);

/// The running statement's marker for the connection `client` is, if it logged in here.
pub(crate) fn statement_of(client: &impl ClientInfo) -> Option<Running> {
    client
        .session_extensions()
        .get::<ActivityOf>()
        .map(|of| of.0.statement())
}

/// What every connection shares.
struct Shared {
    session: Arc<Session>,
    secret: Option<Arc<Secret>>,
    auth: PgAuth,
    tls_required: bool,
    connections: Arc<ConnectionManager>,
    pids: Arc<RandomPidSecretKeyGenerator>,
}

/// The pieces pgwire asks for once per connection.
struct Handlers {
    shared: Arc<Shared>,
    activity: Arc<Activity>,
}

impl Shared {
    fn new(engine: Engine, auth: &PgAuth, tls_required: bool) -> Self {
        Self {
            session: Arc::new(Session::new(&engine, auth.gate.clone())),
            secret: auth.password.as_deref().map(|p| Arc::new(Secret::new(p))),
            auth: auth.clone(),
            tls_required,
            connections: Arc::new(ConnectionManager::new()),
            pids: Arc::default(),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.shared.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.shared.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // SCRAM keeps its exchange's state in the handler: one per connection.
        let how = match (&self.shared.auth.gate, &self.shared.secret) {
            (Some(gate), _) if self.shared.auth.tokens => How::Token(TokenLogin {
                gate: gate.clone(),
                password: self.shared.auth.password.clone(),
                connections: self.shared.connections.clone(),
                pids: self.shared.pids.clone(),
            }),
            (_, None) => How::Open(Open(self.shared.connections.clone())),
            (_, Some(secret)) => {
                let mut scram = ScramAuth::new(secret.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                How::Scram(Box::new(
                    SASLAuthStartupHandler::new(
                        Arc::new(DefaultServerParameterProvider::default()),
                    )
                    .with_scram(scram)
                    .with_connection_manager(self.shared.connections.clone()),
                ))
            }
        };
        Arc::new(Startup {
            how,
            tls_required: self.shared.tls_required,
            activity: self.activity.clone(),
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.shared.connections.clone()))
    }
}

/// A connection's authentication, after the TLS check.
struct Startup {
    how: How,
    tls_required: bool,
    activity: Arc<Activity>,
}

enum How {
    Open(Open),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
    Token(TokenLogin),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.tls_required
            && !client.is_secure()
            && matches!(message, PgWireFrontendMessage::Startup(_))
        {
            tracing::warn!(peer = %client.socket_addr(), reason = "tls_required", "PostgreSQL login refused: the client did not ask for TLS");
            return Err(errors::fatal(&Error::Refused(
                "this server requires TLS: connect with sslmode=require (or verify-full)".into(),
            )));
        }
        match &self.how {
            How::Open(open) => open.on_startup(client, message).await?,
            How::Scram(scram) => scram.on_startup(client, message).await?,
            How::Token(token) => token.on_startup(client, message).await?,
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && !self.activity.authenticated.swap(true, Ordering::Relaxed)
        {
            self.activity.touch();
            let activity = self.activity.clone();
            client
                .session_extensions()
                .get_or_insert_with(move || ActivityOf(activity));
        }
        Ok(())
    }
}

/// Clear-text password authentication where the password is a token with the query scope
/// (or the configured `pg_password`).
struct TokenLogin {
    gate: Arc<dyn Gate>,
    password: Option<String>,
    connections: Arc<ConnectionManager>,
    pids: Arc<RandomPidSecretKeyGenerator>,
}

impl TokenLogin {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?.password;
                let caller = match &self.password {
                    Some(configured) if *configured == password => Ok("pg_password".to_owned()),
                    _ => self.gate.login(&password, client.socket_addr()),
                };
                let caller =
                    caller.map_err(|reason| errors::fatal(&Error::Unauthenticated(reason)))?;
                client.metadata_mut().insert(CALLER.to_owned(), caller);
                let (pid, secret_key) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, secret_key.clone());
                // Registered for cancel requests, as the library's own handlers do.
                let (handle, guard) = self.connections.register(pid, secret_key);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                finish_authentication(client, &DefaultServerParameterProvider::default()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The caller to rate-check a client's statements as.
pub(crate) fn caller_of(client: &impl ClientInfo) -> String {
    client
        .metadata()
        .get(CALLER)
        .cloned()
        .unwrap_or_else(|| format!("address {}", client.socket_addr().ip()))
}

/// No authentication.
struct Open(Arc<ConnectionManager>);

impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.0.clone())
    }
}

/// The password as SCRAM needs it, salted and hashed once at start.
#[derive(Debug)]
struct Secret {
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

impl Secret {
    fn new(password: &str) -> Self {
        let salt = random_nonce().into_bytes();
        let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Self {
            salt,
            salted_password,
        }
    }
}

#[async_trait]
impl AuthSource for Secret {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(
            Some(self.salt.clone()),
            self.salted_password.clone(),
        ))
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        match error {
            PgWireError::InvalidPassword(user) => {
                tracing::warn!(peer = %client.socket_addr(), %user, "PostgreSQL login refused: wrong password");
            }
            other => {
                tracing::debug!(peer = %client.socket_addr(), error = %other, "PostgreSQL error")
            }
        }
    }
}
