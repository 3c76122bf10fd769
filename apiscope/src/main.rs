//! The apiscope binary: parses configuration, wires the collector to the query engine, and
//! owns start-up and shutdown.

mod access;
mod ceiling;
mod client;
mod cluster;
mod config;
mod fds;
mod health;
mod import;
mod listen;
mod loadgen;
mod metrics;
mod serve;
mod shutdown;
mod sql;
mod tls;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Ingest allocates many small strings per span on several threads; mimalloc spends less CPU
// on them than the system allocator and returns freed memory sooner.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    // mimalloc's own API (linked in by `mimalloc`); `option` is a `mi_option_t`.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc.h (the same in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps memory a flush freed for 3 s before giving it back to the OS (mimalloc's default
/// is 1 s), unless `MIMALLOC_PURGE_DELAY` says otherwise. Flushes come every second or two
/// under load, and each one faulted its freed pages back in, zeroed: on 3M spans ingested at
/// full speed the daemon used about 15% less CPU, for 20-40 MB more peak memory.
fn keep_freed_memory_between_flushes() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 3000) };
    }
}

/// Turns transparent huge pages off for the daemon, unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asks for them on the memory it reserves; buffers and flushes allocate
/// and free hundreds of MiB, and each huge page touched is zeroed whole, 2 MiB at a time
/// (`clear_page_erms` took 7-9% of the daemon's CPU at full speed). Without them, 2M spans
/// ingested at full speed, six runs alternating with and without: peak memory 787-834 MiB
/// instead of 844-886 every time; CPU 15.2-16.0 s instead of 15.8-16.4 in the three quieter
/// runs, within the machine's noise in the others.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a process-wide flag; no memory is passed. On failure (an old kernel), the
        // daemon runs as before.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// apiscope: how your APIs behave, from the telemetry your services already send.
#[derive(Debug, Parser)]
#[command(name = "apiscope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive OTLP traces and logs, store them as Parquet and answer SQL.
    Serve(Box<config::ServeArgs>),
    /// Run one SQL query against a running daemon (or a data directory) and print a table.
    Sql(sql::SqlArgs),
    /// Print one trace as a waterfall: by id, or a recent (or the slowest) call of an endpoint.
    Trace(trace::TraceArgs),
    /// Send a simulated fleet's API traces over OTLP, and report acknowledgements.
    Loadgen(loadgen::LoadgenArgs),
    /// Import access logs (nginx, Envoy, NDJSON) into a running daemon's `requests` table.
    Import(import::ImportArgs),
    /// Run the cluster's scheduler (Apache DataFusion Ballista), which front-ends started
    /// with `--cluster` send queries to.
    Scheduler(cluster::SchedulerArgs),
    /// Run one of the cluster's executors, which take work from the scheduler.
    Executor(cluster::ExecutorArgs),
}

fn main() -> ExitCode {
    keep_freed_memory_between_flushes();
    no_transparent_huge_pages();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config_of = |cli: &Cli| match &cli.command {
        Command::Serve(args) => args.config.clone(),
        _ => None,
    };
    let cli = match config::parse::<Cli>(argv, Some("serve"), config_of) {
        Ok(cli) => cli,
        Err(config::ParseError::Clap(error)) => error.exit(),
        Err(config::ParseError::File(error)) => {
            say_error(&error);
            return ExitCode::FAILURE;
        }
    };
    // `serve` reads its log format from its settings (flags, environment or file), so it
    // resolves them before logging starts; the other commands read the environment.
    let (command, log_format) = match cli.command {
        Command::Serve(args) => {
            let check_only = args.check_config;
            let settings = match args.resolve() {
                Ok(settings) => settings,
                Err(error) => {
                    say_error(&error);
                    return ExitCode::FAILURE;
                }
            };
            if check_only {
                let checked = serve::Guards::new(&settings)
                    .and_then(|guards| print(&format!("{}\n", settings.summary(guards.summary()))));
                return match checked {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        say_error(&error);
                        ExitCode::FAILURE
                    }
                };
            }
            let format = settings.log_format;
            (Resolved::Serve(Box::new(settings)), format)
        }
        other => (
            Resolved::Other(Box::new(other)),
            config::LogFormat::from_env(),
        ),
    };
    init_logging(log_format);
    // One TLS implementation for the listeners and the client commands.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say_error(&format!("cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Resolved::Serve(settings) => serve::run(*settings).await,
            Resolved::Other(other) => match *other {
                Command::Sql(args) => sql::run(args).await,
                Command::Trace(args) => trace::run(args).await,
                Command::Loadgen(args) => loadgen::run(args).await,
                Command::Import(args) => import::run(args).await,
                Command::Scheduler(args) => cluster::scheduler(args).await,
                Command::Executor(args) => cluster::executor(args).await,
                Command::Serve(_) => Ok(()),
            },
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            say_error(&error);
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output. A reader that stopped reading (`apiscope sql ... | head`)
/// is not an error; a full disk behind a redirection is.
pub(crate) fn print(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io(error)),
        _ => Ok(()),
    }
}

/// The last word of a command that failed, on stderr if anyone still reads it: `eprintln!`
/// would panic on a closed stderr and turn a clean failure into exit code 101.
fn say_error(error: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {error}");
}

/// A command ready to run.
enum Resolved {
    Serve(Box<config::Settings>),
    Other(Box<Command>),
}

/// Logs go to stderr, filtered by `APISCOPE_LOG` (`info` by default), as text or JSON lines.
fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APISCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr closed by whoever started the daemon) is
    // dropped: by default the subscriber reports it with `eprintln!`, which panics on the same
    // closed stderr, and a panic on the shutdown path would stop the last flush.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Errors that end a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} for the {what} listener: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Query(#[from] query::Error),
    #[error(transparent)]
    Collector(#[from] collector::Error),
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Client(String),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
