//! `apiscope trace`: one trace as a waterfall in the terminal, from a daemon or a data
//! directory.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::sql::Reader;
use crate::{Error, Result};

/// Arguments of `apiscope trace`.
#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The trace id: 32 hex digits, or 16 for a 64-bit id.
    #[arg(required_unless_present = "endpoint")]
    id: Option<String>,
    /// Show a recent trace of this endpoint instead (`'POST /v2/orders'`): its latest call,
    /// or its slowest with --slowest.
    #[arg(long, conflicts_with = "id")]
    endpoint: Option<String>,
    /// With --endpoint: the slowest call rather than the latest.
    #[arg(long, requires = "endpoint")]
    slowest: bool,
    /// With --endpoint: how far back to look (`15m`, `2h`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Width of the bars, in characters.
    #[arg(long, default_value_t = 40)]
    width: usize,
    #[command(flatten)]
    from: crate::sql::ReadFrom,
}

pub(crate) async fn run(args: TraceArgs) -> Result<()> {
    let from = args.from.open(Duration::from_secs(60)).await?;
    let id = match (&args.id, &args.endpoint) {
        (Some(id), _) => id.clone(),
        (None, Some(endpoint)) => pick(&from, endpoint, args.slowest, args.since).await?,
        (None, None) => return Err(Error::Client("name a trace id or --endpoint".into())),
    };
    let trace = match &from {
        Reader::Store(engine) => {
            let max = query::QueryLimits::default().max_trace_spans;
            query::traces::trace(engine, &id, None, None, max)
                .await?
                .map(|trace| query::traces::jaeger_json(&trace))
        }
        Reader::Daemon(client, url) => fetch(client, url, &id).await?,
    };
    let Some(trace) = trace else {
        return Err(Error::Client(format!("no trace {id} is stored")));
    };
    crate::print(&waterfall(&trace, args.width.clamp(10, 400)))
}

/// The id of the latest (or slowest) server span of `endpoint` in the last `since`.
async fn pick(from: &Reader, endpoint: &str, slowest: bool, since: Duration) -> Result<String> {
    let order = if slowest {
        "duration_ns DESC"
    } else {
        "time DESC"
    };
    let sql = format!(
        "SELECT trace_id FROM spans WHERE endpoint = {} AND span_kind = 'server' \
         AND time >= now() - INTERVAL '{} seconds' ORDER BY {order} LIMIT 1",
        query::traces::literal(endpoint),
        since.as_secs().max(1)
    );
    let batches = from.query(&sql).await?;
    let found = batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).ok()?;
        let ids = ids.as_any().downcast_ref::<arrow::array::StringArray>()?;
        Some(ids.value(0).to_owned())
    });
    found.ok_or_else(|| {
        Error::Client(format!(
            "no call of `{endpoint}` in the last {}",
            humantime::format_duration(since)
        ))
    })
}

/// The trace from the daemon's Jaeger API; `None` when it has no such trace.
async fn fetch(client: &reqwest::Client, url: &str, id: &str) -> Result<Option<Value>> {
    let response = client
        .get(format!("{url}/api/traces/{id}"))
        .send()
        .await
        .map_err(crate::client::unreachable(url))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|error| Error::Client(format!("unreadable answer from {url}: {error}")))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        let message = body["errors"][0]["msg"].as_str().unwrap_or("failed");
        return Err(Error::Client(format!(
            "{message} (HTTP {})",
            status.as_u16()
        )));
    }
    Ok(body["data"].get(0).cloned())
}

/// A trace in Jaeger's JSON model as lines: each span under its parent, its service and name,
/// a bar placed and scaled within the trace's time, its duration, errors and warnings marked.
pub(crate) fn waterfall(trace: &Value, width: usize) -> String {
    let empty = Vec::new();
    let spans = trace["spans"].as_array().unwrap_or(&empty);
    let services: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .map(|processes| {
            processes
                .iter()
                .map(|(id, p)| (id.as_str(), p["serviceName"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    let ids: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s["spanID"].as_str()?, i)))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let parent = span["references"]
            .get(0)
            .and_then(|r| r["spanID"].as_str())
            .and_then(|id| ids.get(id).copied())
            .filter(|&p| p != i);
        match parent {
            Some(parent) => children[parent].push(i),
            None => roots.push(i),
        }
    }
    let start = |i: usize| spans[i]["startTime"].as_i64().unwrap_or(0);
    let duration = |i: usize| spans[i]["duration"].as_i64().unwrap_or(0);
    let begin = (0..spans.len()).map(start).min().unwrap_or(0);
    let end = (0..spans.len())
        .map(|i| start(i) + duration(i))
        .max()
        .unwrap_or(begin);
    let total = (end - begin).max(1);
    roots.sort_by_key(|&i| start(i));
    for list in &mut children {
        list.sort_by_key(|&i| start(i));
    }
    // Depth-first, each span once (the references hold no loops, but a bad answer might).
    let mut order = Vec::new();
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
    }
    let label = |i: usize, depth: usize| {
        let service = services
            .get(spans[i]["processID"].as_str().unwrap_or(""))
            .copied()
            .unwrap_or("?");
        let name = spans[i]["operationName"].as_str().unwrap_or("");
        format!("{}{service}  {name}", "  ".repeat(depth))
    };
    let label_width = order
        .iter()
        .map(|&(i, depth)| label(i, depth).chars().count())
        .max()
        .unwrap_or(0)
        .min(80);
    let service_count = services
        .values()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut out = format!(
        "trace {}  {} span{}, {} service{}, {}\n",
        trace["traceID"].as_str().unwrap_or("?"),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        service_count,
        if service_count == 1 { "" } else { "s" },
        millis(total)
    );
    for (i, depth) in order {
        let offset = ((start(i) - begin) as f64 / total as f64 * width as f64).floor() as usize;
        let offset = offset.min(width - 1);
        let length = ((duration(i) as f64 / total as f64 * width as f64).round() as usize)
            .clamp(1, width - offset);
        let bar = format!(
            "{}{}{}",
            " ".repeat(offset),
            "█".repeat(length),
            " ".repeat(width - offset - length)
        );
        let failed = spans[i]["tags"].as_array().is_some_and(|tags| {
            tags.iter()
                .any(|t| t["key"] == "error" && t["value"] == true)
        });
        let mut label = label(i, depth);
        if label.chars().count() > label_width {
            label = label.chars().take(label_width - 1).collect::<String>() + "…";
        }
        out.push_str(&format!(
            "{label:<label_width$}  |{bar}| {:>10}{}\n",
            millis(duration(i)),
            if failed { "  ✗ error" } else { "" }
        ));
        for warning in spans[i]["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{}⚠ {}\n",
                "  ".repeat(depth + 1),
                warning.as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// Microseconds as milliseconds with two decimals.
fn millis(us: i64) -> String {
    format!("{:.2} ms", us as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_waterfall_nests_children_and_scales_bars_to_the_trace() {
        let span = |id: &str, parent: Option<&str>, name: &str, start: i64, duration: i64| {
            json!({
                "spanID": id,
                "operationName": name,
                "references": parent.map_or(json!([]), |p| json!([{"refType": "CHILD_OF", "spanID": p}])),
                "startTime": start,
                "duration": duration,
                "processID": if name.starts_with("db") { "p2" } else { "p1" },
                "tags": if name == "db fail" { json!([{"key": "error", "value": true}]) } else { json!([]) },
                "warnings": if name == "db fail" { json!(["starts early"]) } else { json!(null) },
            })
        };
        let trace = json!({
            "traceID": "abc",
            "spans": [
                span("c", Some("a"), "db fail", 1_500, 500),
                span("a", None, "GET /", 1_000, 1_000),
                span("b", Some("a"), "cache", 1_000, 250),
            ],
            "processes": {"p1": {"serviceName": "web"}, "p2": {"serviceName": "pg"}},
        });
        let text = waterfall(&trace, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "trace abc  3 spans, 2 services, 1.00 ms");
        assert!(lines[1].starts_with("web  GET /"), "{text}");
        assert!(
            lines[1].contains(&format!("|{}|", "█".repeat(20))),
            "{text}"
        );
        assert!(lines[2].starts_with("  web  cache"), "{text}");
        assert!(
            lines[2].contains(&format!("|{}{}|", "█".repeat(5), " ".repeat(15))),
            "{text}"
        );
        assert!(lines[3].starts_with("  pg  db fail"), "{text}");
        assert!(
            lines[3].contains(&format!("|{}{}|", " ".repeat(10), "█".repeat(10))),
            "{text}"
        );
        assert!(lines[3].ends_with("0.50 ms  ✗ error"), "{text}");
        assert_eq!(lines[4], "    ⚠ starts early");
    }
}
