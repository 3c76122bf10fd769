//! SQL over the PostgreSQL wire protocol, so that psql, Grafana's PostgreSQL data source,
//! psycopg, JDBC and BI tools connect with no plugin.
//!
//! The protocol, the catalog queries clients send and the Arrow-to-PostgreSQL types come
//! from `datafusion-postgres` over the same session as the HTTP API. What this module adds:
//! SCRAM-SHA-256 authentication when a password is configured, a `run(listener, stop)`
//! entry point that ends with the daemon, and (in `session`) the read-only check on every
//! statement and the rewrites some clients' SQL needs.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

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
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::engine::Engine;

mod session;

use session::Session;

/// Who may connect.
#[derive(Clone, Default)]
pub struct PgAuth {
    password: Option<String>,
}

impl Debug for PgAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<redacted>");
        f.debug_struct("PgAuth")
            .field("password", &password)
            .finish()
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
        }
    }

    /// Whether a password is required.
    pub fn is_required(&self) -> bool {
        self.password.is_some()
    }
}

/// Serves SQL over the PostgreSQL protocol on `listener` until `stop` completes; open
/// connections are then closed (they only read, so nothing is lost).
pub async fn run(
    listener: TcpListener,
    engine: Engine,
    auth: PgAuth,
    stop: impl Future<Output = ()>,
) {
    let handlers = Arc::new(Handlers::new(engine, &auth));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set does not grow with the daemon's uptime.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((socket, peer)) => {
                let handlers = handlers.clone();
                connections.spawn(async move {
                    if let Err(error) = pgwire::tokio::process_socket(socket, None, handlers).await
                    {
                        tracing::debug!(%error, %peer, "PostgreSQL connection ended");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!(%error, "cannot accept a PostgreSQL connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    connections.shutdown().await;
}

/// The pieces pgwire asks for once per connection.
struct Handlers {
    session: Arc<Session>,
    secret: Option<Arc<Secret>>,
    connections: Arc<ConnectionManager>,
}

impl Handlers {
    fn new(engine: Engine, auth: &PgAuth) -> Self {
        Self {
            session: Arc::new(Session::new(&engine)),
            secret: auth.password.as_deref().map(|p| Arc::new(Secret::new(p))),
            connections: Arc::new(ConnectionManager::new()),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // SCRAM keeps its exchange's state in the handler: one per connection.
        let startup = match &self.secret {
            None => Startup::Open(Open(self.connections.clone())),
            Some(secret) => {
                let mut scram = ScramAuth::new(secret.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                Startup::Scram(Box::new(
                    SASLAuthStartupHandler::new(
                        Arc::new(DefaultServerParameterProvider::default()),
                    )
                    .with_scram(scram)
                    .with_connection_manager(self.connections.clone()),
                ))
            }
        };
        Arc::new(startup)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }
}

enum Startup {
    Open(Open),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
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
        match self {
            Startup::Open(open) => open.on_startup(client, message).await,
            Startup::Scram(scram) => scram.on_startup(client, message).await,
        }
    }
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
