//! The listeners: how many connections each may hold, how long a silent one may stay, and
//! how a connection over the limit is refused. A collector is shared infrastructure, so
//! nothing a client does on one port may take the descriptors, memory or threads that the
//! others and the write path need.
//!
//! - Each listener admits at most `max_connections` at once. One more is answered in its
//!   own protocol (HTTP 503 with `Retry-After`, gRPC UNAVAILABLE with a retry delay,
//!   PostgreSQL SQLSTATE 53300 "too many connections") and closed; refusals are answered a
//!   few at a time and within two seconds, past that the connection is just closed.
//! - A connection with no bytes moving either way for `idle_timeout`, and no request of its
//!   own in progress, is closed (HTTP keep-alive and gRPC connections).
//! - HTTP request headers must arrive within `http_header_timeout` (slow-header clients).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use collector::Throttle;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::access::Peer;

/// Refusals answered at once per listener; past that an extra connection is closed unanswered.
const REFUSALS_AT_ONCE: usize = 16;

/// How long answering one refusal may take.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener's clients speak, for answering a connection over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 or HTTP/2: 503 with `Retry-After`.
    Http,
    /// gRPC over HTTP/2: UNAVAILABLE with a retry delay.
    Grpc,
    /// The PostgreSQL protocol: SQLSTATE 53300.
    Postgres,
}

/// What a listener is, for its refusals, logs and metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Port {
    /// How logs name it: `OTLP/gRPC`.
    pub(crate) name: &'static str,
    /// The `listener` label of its metrics: `otlp_grpc`.
    pub(crate) label: &'static str,
    /// The setting that bounds its connections: `otlp_grpc_max_connections`.
    pub(crate) limit_key: &'static str,
    pub(crate) protocol: Protocol,
}

/// The four listeners.
pub(crate) const OTLP_GRPC: Port = Port {
    name: "OTLP/gRPC",
    label: "otlp_grpc",
    limit_key: "otlp_grpc_max_connections",
    protocol: Protocol::Grpc,
};
/// See [`OTLP_GRPC`].
pub(crate) const OTLP_HTTP: Port = Port {
    name: "OTLP/HTTP",
    label: "otlp_http",
    limit_key: "otlp_http_max_connections",
    protocol: Protocol::Http,
};
/// See [`OTLP_GRPC`].
pub(crate) const QUERY_HTTP: Port = Port {
    name: "query API",
    label: "http",
    limit_key: "http_max_connections",
    protocol: Protocol::Http,
};
/// See [`OTLP_GRPC`].
pub(crate) const POSTGRES: Port = Port {
    name: "PostgreSQL",
    label: "pg",
    limit_key: "pg_max_connections",
    protocol: Protocol::Postgres,
};

/// An executor's `/metrics` (`apiscope executor`).
pub(crate) const EXECUTOR_METRICS: Port = Port {
    name: "executor /metrics",
    label: "executor_metrics",
    limit_key: "--metrics-max-connections",
    protocol: Protocol::Http,
};

/// A bound TCP listener that admits at most `max_connections` at once.
pub(crate) struct Listener {
    tcp: TcpListener,
    port: Port,
    max_connections: usize,
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    /// Connections to answer in clear text; with TLS, a refusal is a close.
    answer_refusals: bool,
    idle_timeout: Option<Duration>,
    refusals_log: Arc<Mutex<Throttle>>,
    accept_errors_log: Throttle,
}

impl Listener {
    pub(crate) fn new(
        tcp: TcpListener,
        port: Port,
        max_connections: usize,
        idle_timeout: Option<Duration>,
        tls: bool,
    ) -> Self {
        let max_connections = max_connections.max(1);
        metrics::gauge!("apiscope_connections_open", "listener" => port.label).set(0.0);
        metrics::gauge!("apiscope_connections_max", "listener" => port.label)
            .set(max_connections as f64);
        metrics::counter!("apiscope_connections_refused_total", "listener" => port.label)
            .absolute(0);
        Self {
            tcp,
            port,
            max_connections,
            open: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            answer_refusals: !tls,
            idle_timeout,
            refusals_log: Arc::new(Mutex::new(Throttle::new())),
            accept_errors_log: Throttle::new(),
        }
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection within the limit; those over it are refused on the way.
    pub(crate) async fn accept(&mut self) -> Connection {
        loop {
            let (mut socket, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    if let Some(unlogged) = self.accept_errors_log.admit(std::time::Instant::now())
                    {
                        tracing::warn!(%error, listener = self.port.name, errors_not_logged = unlogged, "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            no_delay(&mut socket);
            let Ok(permit) = self.open.clone().try_acquire_owned() else {
                self.refuse(socket, peer);
                continue;
            };
            metrics::gauge!("apiscope_connections_open", "listener" => self.port.label)
                .increment(1.0);
            let held = Held {
                _permit: permit,
                label: self.port.label,
            };
            return Connection {
                stream: Tracked {
                    inner: socket,
                    _held: held,
                    idle: self.idle_timeout.map(Idle::new),
                },
                peer,
            };
        }
    }

    fn refuse(&self, socket: TcpStream, peer: SocketAddr) {
        let port = self.port;
        metrics::counter!("apiscope_connections_refused_total", "listener" => port.label)
            .increment(1);
        let unlogged = self
            .refusals_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(std::time::Instant::now());
        if let Some(unlogged) = unlogged {
            tracing::warn!(
                listener = port.name,
                %peer,
                max_connections = self.max_connections,
                refusals_not_logged = unlogged,
                "connection refused: the listener holds as many connections as {} allows",
                port.limit_key
            );
        }
        if !self.answer_refusals {
            return;
        }
        let Ok(answering) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        let message = format!(
            "too many connections to apiscope's {} listener ({} = {}); retry shortly",
            port.name, port.limit_key, self.max_connections
        );
        tokio::spawn(async move {
            let _answering = answering;
            let answered = tokio::time::timeout(REFUSAL_DEADLINE, answer(port, socket, message));
            if let Ok(Err(error)) = answered.await {
                tracing::debug!(%error, %peer, "refusal not delivered");
            }
        });
    }
}

/// Says why a connection over the limit is closed, in the listener's protocol.
async fn answer(port: Port, mut socket: TcpStream, message: String) -> io::Result<()> {
    match port.protocol {
        Protocol::Postgres => refuse_postgres(&mut socket, &message).await,
        Protocol::Http | Protocol::Grpc => {
            let protocol = port.protocol;
            let service = hyper::service::service_fn(move |_request| {
                let message = message.clone();
                async move { Ok::<_, Infallible>(refusal(protocol, message)) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().keep_alive(false);
            builder
                .serve_connection(TokioIo::new(socket), service)
                .await
                .map_err(io::Error::other)
        }
    }
}

/// The answer to every request on a connection over the limit.
fn refusal(protocol: Protocol, message: String) -> Response {
    if protocol == Protocol::Grpc {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
        let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
            tonic::Code::Unavailable,
            message,
            details,
        );
        return status.into_http::<axum::body::Body>();
    }
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "too many connections",
        "status": 503,
        "detail": message,
    });
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What PostgreSQL answers when `max_connections` are in use: the start-up packet is read
/// (after declining TLS or GSS encryption, as a server without them does), then a FATAL
/// error "too many connections" (SQLSTATE 53300).
async fn refuse_postgres(socket: &mut TcpStream, message: &str) -> io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    let mut length = read_packet_head(socket).await?;
    if length.1 == SSL_REQUEST || length.1 == GSSENC_REQUEST {
        socket.write_all(b"N").await?;
        length = read_packet_head(socket).await?;
    }
    // The rest of the start-up packet (user, database, options); PostgreSQL caps it at 10000.
    let rest = (length.0 as u64).saturating_sub(8).min(10_000);
    tokio::io::copy(&mut (&mut *socket).take(rest), &mut tokio::io::sink()).await?;
    let refusal = query::Error::TooManyConnections(message.to_owned());
    socket
        .write_all(&query::pg::fatal_message(&refusal))
        .await?;
    socket.shutdown().await
}

async fn read_packet_head(socket: &mut TcpStream) -> io::Result<(u32, u32)> {
    let mut head = [0u8; 8];
    socket.read_exact(&mut head).await?;
    let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    Ok((length, code))
}

/// An admitted connection.
pub(crate) struct Connection {
    pub(crate) stream: Tracked<TcpStream>,
    pub(crate) peer: SocketAddr,
}

impl Connection {
    /// The requests this connection has in progress, which keep it from counting as idle.
    fn requests(&self) -> Arc<AtomicUsize> {
        self.stream
            .idle
            .as_ref()
            .map(|idle| idle.requests.clone())
            .unwrap_or_default()
    }
}

/// A connection's place under its listener's limit, given back when the connection closes.
struct Held {
    _permit: OwnedSemaphorePermit,
    label: &'static str,
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("apiscope_connections_open", "listener" => self.label).decrement(1.0);
    }
}

/// A connection's stream, which holds its place under the limit and ends with an error once
/// idle for longer than the idle timeout.
pub(crate) struct Tracked<S> {
    inner: S,
    _held: Held,
    idle: Option<Idle>,
}

impl Tracked<TcpStream> {
    /// The socket, for a protocol library that takes a `TcpStream`; the returned guard keeps
    /// the connection's place until it is dropped. No idle timeout applies then.
    pub(crate) fn into_parts(self) -> (TcpStream, impl Send + 'static) {
        (self.inner, self._held)
    }
}

struct Idle {
    after: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    /// Requests in progress on the connection (HTTP); a connection with one is not idle.
    requests: Arc<AtomicUsize>,
}

impl Idle {
    fn new(after: Duration) -> Self {
        let last = Instant::now();
        Self {
            after,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + after)),
            requests: Arc::default(),
        }
    }

    /// Called when the stream has nothing to read: an error once it has been idle too long.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.requests.load(Ordering::Relaxed) > 0 {
            return Poll::Pending;
        }
        let deadline = self.last + self.after;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        metrics::counter!("apiscope_connections_timed_out_total", "reason" => "idle").increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection idle for longer than idle_timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some(idle) = &mut self.idle
                    && buf.filled().len() > before
                {
                    idle.last = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match &mut self.idle {
                Some(idle) => idle.check(cx),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if let (Ok(n), Some(idle)) = (&written, &mut self.idle)
            && *n > 0
        {
            idle.last = Instant::now();
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Tracked<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The gRPC listener's connections, as tonic takes them.
pub(crate) fn incoming(
    listener: Listener,
) -> impl futures::Stream<Item = io::Result<Tracked<TcpStream>>> {
    futures::stream::unfold(listener, |mut listener| async move {
        let connection = listener.accept().await;
        Some((Ok(connection.stream), listener))
    })
}

/// Serves `app` over HTTP/1.1 and HTTP/2 on `listener` until `stop`, then lets the requests
/// in progress finish. With `tls`, each connection's handshake runs in its own task.
pub(crate) async fn serve_http(
    mut listener: Listener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let name = listener.port.name;
    loop {
        let connection = tokio::select! {
            () = stop.cancelled() => break,
            connection = listener.accept() => connection,
        };
        let requests = connection.requests();
        let peer = connection.peer;
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(Peer(peer)));
            let in_progress = InProgress::enter(&requests);
            let mut app = app.clone();
            async move {
                let response = tower_service::Service::call(&mut app, request).await;
                drop(in_progress);
                response
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match tls {
                None => Either::Left(connection.stream),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection.stream));
                    match handshake.await {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("apiscope_connections_timed_out_total", "reason" => "tls_handshake").increment(1);
                            return;
                        }
                    }
                }
            };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let served = watcher.watch(connection).await;
            if let Err(error) = served {
                let header_timeout = error
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout);
                if header_timeout {
                    metrics::counter!("apiscope_connections_timed_out_total", "reason" => "http_header").increment(1);
                }
                tracing::debug!(%peer, server = name, %error, "connection ended");
            }
        });
    }
    graceful.shutdown().await;
}

/// One request in progress on a connection, for as long as it lives.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn enter(requests: &Arc<AtomicUsize>) -> Self {
        requests.fetch_add(1, Ordering::Relaxed);
        Self(requests.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Turns Nagle's algorithm off for an accepted connection. With it on, a reply written in
/// two pieces (gRPC's data, then its trailers) holds the second until the client acknowledges
/// the first, which Linux delays by 40 ms: a tenth of OTLP/gRPC exports at 100k spans/s were
/// acknowledged 40 ms late.
fn no_delay(socket: &mut TcpStream) {
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "cannot turn off Nagle's algorithm on a connection");
    }
}

#[cfg(test)]
mod tests;
