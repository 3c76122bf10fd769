//! `apiscope import`: existing access logs into the `requests` table of a running daemon.
//!
//! Lines are parsed here (see `formats`) and sent in batches to `POST /api/v1/requests`, so
//! they are logged and acknowledged like any request log. Each row carries the file it came
//! from (a fingerprint of its first line, which rotation and appends keep) and its line
//! number. Before sending, the importer asks the daemon for the last line it holds of that
//! file and starts after it: importing a file twice, or again after it grew or after an
//! interrupted import, stores each line once. Batches go one at a time, so what the daemon
//! holds of a file is always a prefix of it.

mod formats;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use clap::Args;
use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

pub(crate) use formats::Format;

use crate::{Error, Result};

/// Flags of `apiscope import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Access log files; names ending in `.gz` are read through gzip.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The files' format.
    #[arg(long, value_enum)]
    format: Format,
    /// The daemon's OTLP/HTTP base URL, where request logs are sent.
    #[arg(
        long,
        env = "APISCOPE_OTLP_HTTP_URL",
        default_value = "http://127.0.0.1:4318"
    )]
    otlp_http_url: String,
    /// The daemon's query API, asked which lines it already holds.
    #[arg(long, env = "APISCOPE_URL", default_value = "http://127.0.0.1:7171")]
    url: String,
    /// `service_name` for lines that do not name a service.
    #[arg(long)]
    service: Option<String>,
    /// Lines per request to the daemon.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    #[command(flatten)]
    client: crate::client::ClientArgs,
}

/// Bad lines reported one by one in the summary, per file.
const SHOWN_PROBLEMS: usize = 10;

/// What happened to one file.
#[derive(Debug, Default)]
struct FileReport {
    lines: u64,
    imported: u64,
    already: u64,
    bad: u64,
    problems: Vec<String>,
}

impl FileReport {
    fn bad_line(&mut self, line: u64, problem: &str) {
        self.bad += 1;
        if self.problems.len() < SHOWN_PROBLEMS {
            self.problems.push(format!("line {line}: {problem}"));
        }
    }
}

pub(crate) async fn run(args: ImportArgs) -> Result<()> {
    if args.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    let client = args.client.http(Duration::from_secs(120))?;
    let total_bytes: u64 = args
        .files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let progress = ProgressBar::new(total_bytes);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .map_err(|error| Error::Client(error.to_string()))?,
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut imported = 0;
    for file in &args.files {
        let report = import_file(&args, &client, file, &progress, started, imported).await?;
        imported += report.imported;
        reports.push((file, report));
    }
    progress.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let mut bad = 0;
    let mut text = String::new();
    for (file, report) in &reports {
        let _ = writeln!(
            text,
            "{}: {} lines, {} imported, {} already imported, {} bad",
            file.display(),
            report.lines,
            report.imported,
            report.already,
            report.bad
        );
        for problem in &report.problems {
            let _ = writeln!(text, "  {problem}");
        }
        if report.bad > report.problems.len() as u64 {
            let _ = writeln!(
                text,
                "  ... and {} more",
                report.bad - report.problems.len() as u64
            );
        }
        bad += report.bad;
    }
    let _ = writeln!(
        text,
        "total: {imported} rows imported in {seconds:.1} s ({:.0} rows/s), {bad} bad lines",
        imported as f64 / seconds
    );
    crate::print(&text)
}

/// A fingerprint of a file: its first line (appends and rotation keep it), as 16 hex digits.
fn fingerprint(first_line: &[u8]) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms, which a std hasher is not.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in first_line {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path)
        .map_err(|error| Error::Client(format!("cannot open {}: {error}", path.display())))?;
    let read: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, read)))
}

/// The last line of the file with this fingerprint that the daemon holds; 0 for none.
async fn last_imported_line(client: &reqwest::Client, url: &str, source: &str) -> Result<u64> {
    let sql =
        format!("SELECT max(import_line) AS line FROM requests WHERE import_source = '{source}'");
    let batches = crate::sql::remote(client, url, &sql).await?;
    let line = batches
        .first()
        .filter(|batch| batch.num_rows() > 0)
        .and_then(|batch| {
            let column = batch.column(0).as_primitive_opt::<Int64Type>()?;
            (!column.is_null(0)).then(|| column.value(0))
        });
    Ok(line.unwrap_or(0).max(0) as u64)
}

async fn import_file(
    args: &ImportArgs,
    client: &reqwest::Client,
    path: &Path,
    progress: &ProgressBar,
    started: Instant,
    imported_before: u64,
) -> Result<FileReport> {
    let mut report = FileReport::default();
    let mut reader = open(path)?;
    let mut line = Vec::new();
    let read = |reader: &mut Box<dyn BufRead>, line: &mut Vec<u8>| {
        line.clear();
        reader
            .read_until(b'\n', line)
            .map_err(|error| Error::Client(format!("reading {}: {error}", path.display())))
    };
    if read(&mut reader, &mut line)? == 0 {
        return Ok(report);
    }
    let source = fingerprint(trim_end(&line));
    let already = last_imported_line(client, &args.url, &source).await?;
    let endpoint = format!(
        "{}/api/v1/requests",
        args.otlp_http_url.trim_end_matches('/')
    );
    let mut batch = Batch::default();
    let mut number = 0_u64;
    loop {
        number += 1;
        report.lines += 1;
        progress.inc(line.len() as u64);
        if number <= already {
            report.already += 1;
        } else {
            match std::str::from_utf8(trim_end(&line)) {
                Err(_) => report.bad_line(number, "not UTF-8"),
                Ok(text) if text.trim().is_empty() => report.lines -= 1,
                Ok(text) => match args.format.parse(text) {
                    Ok(mut record) => {
                        record.insert("import_source".into(), source.clone().into());
                        record.insert("import_line".into(), number.into());
                        if let Some(service) = &args.service {
                            record
                                .entry("service")
                                .or_insert_with(|| service.clone().into());
                        }
                        batch.push(number, &Value::Object(record));
                    }
                    Err(problem) => report.bad_line(number, &problem),
                },
            }
        }
        if batch.lines.len() >= args.batch {
            send(client, &endpoint, &mut batch, &mut report).await?;
        }
        let rate =
            (imported_before + report.imported) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.set_message(format!(
            "{} rows, {rate:.0} rows/s, {} bad",
            imported_before + report.imported,
            report.bad
        ));
        if read(&mut reader, &mut line)? == 0 {
            break;
        }
    }
    send(client, &endpoint, &mut batch, &mut report).await?;
    Ok(report)
}

fn trim_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Lines waiting to be sent, and the file line of each.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    lines: Vec<u64>,
}

impl Batch {
    fn push(&mut self, line: u64, record: &Value) {
        // Serializing a JSON value to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.body, record);
        self.body.push(b'\n');
        self.lines.push(line);
    }
}

/// Sends `batch`, waiting out overload (503, 429) for up to five minutes; counts what the
/// daemon stored and refused.
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    batch: &mut Batch,
    report: &mut FileReport,
) -> Result<()> {
    if batch.lines.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let answer = loop {
        let sent = client
            .post(endpoint)
            .header("content-type", "application/x-ndjson")
            .body(batch.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, "cannot reach apiscope; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => {
                return Err(Error::Client(format!(
                    "cannot reach apiscope at {endpoint}: {error} (see --otlp-http-url)"
                )));
            }
        };
        let status = response.status().as_u16();
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let body = response.bytes().await.unwrap_or_default();
        match status {
            200 | 400 => {
                break serde_json::from_slice::<Value>(&body).map_err(|error| {
                    Error::Client(format!("unreadable answer from {endpoint}: {error}"))
                })?;
            }
            429 | 503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
            }
            other => {
                return Err(Error::Client(format!(
                    "apiscope refused a batch of {} lines with HTTP {other}: {} \
                     (a smaller --batch may help)",
                    batch.lines.len(),
                    String::from_utf8_lossy(&body)
                )));
            }
        }
    };
    report.imported += answer["accepted"].as_u64().unwrap_or(0);
    let rejected = answer["rejected"].as_u64().unwrap_or(0);
    let mut named = 0;
    for problem in answer["errors"].as_array().into_iter().flatten() {
        let problem = problem.as_str().unwrap_or_default();
        // "line K: ..." counts lines of the batch; name the file's line instead.
        let (index, what) = problem
            .strip_prefix("line ")
            .and_then(|rest| rest.split_once(": "))
            .and_then(|(k, what)| Some((k.parse::<usize>().ok()?, what)))
            .unwrap_or((0, problem));
        let file_line = batch.lines.get(index.wrapping_sub(1)).copied().unwrap_or(0);
        report.bad_line(file_line, what);
        named += 1;
    }
    report.bad += rejected.saturating_sub(named);
    batch.body.clear();
    batch.lines.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_stable_and_tells_files_apart() {
        assert_eq!(fingerprint(b"a"), fingerprint(b"a"));
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b"").len(), 16);
        // Known FNV-1a value, so that a new version keeps recognising old imports.
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
    }
}
