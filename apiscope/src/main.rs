//! The apiscope binary: parses configuration, wires the collector to the query engine, and
//! owns start-up and shutdown.

mod config;
mod import;
mod loadgen;
mod serve;
mod sql;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Send a simulated fleet's API traces over OTLP, and report acknowledgements.
    Loadgen(loadgen::LoadgenArgs),
    /// Import access logs (nginx, Envoy, NDJSON) into a running daemon's `requests` table.
    Import(import::ImportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("APISCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Sql(args) => sql::run(args).await,
            Command::Loadgen(args) => loadgen::run(args).await,
            Command::Import(args) => import::run(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Errors that end a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
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
