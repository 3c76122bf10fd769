"""objective_status() over 28 days of the load generator's fleet, against the same counts
and burn rates from the raw spans (apiscope's SQL) and from chdb's `otel_traces`.

    target/bench-venv/bin/python bench/objectives.py --binary target/release/apiscope

A fresh daemon (retention 30d) gets the fleet's traffic for each of the last 28 days'
hours (`loadgen --ago Nh`, `--spans-per-hour` each), compacted and rolled up. Four
objectives over checkout's and catalog's endpoints are judged over one fixed 28-day window
ending at the minute after the last span, three ways:

- `objective_status(from, to)`: apiscope's answer, from the per-minute rollups;
- apiscope raw: one SQL statement counting each objective's good and bad server spans over
  the window and over each burn window (5m, 30m, 1h, 6h, 3d);
- chdb: the same counts over `otel_traces` holding the same rows.

The counts and burn rates must agree exactly; then each is timed hot (median of five after
three warm-ups). It prints a table of the figures.
"""

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time

import pyarrow.parquet as pq
from chdb import session as chdb_session

import run

DAYS = 28
# Each burn window, as objective_status names it, in seconds.
BURN_WINDOWS = [("5m", 300), ("30m", 1800), ("1h", 3600), ("6h", 21600), ("3d", 259200)]

# (name, service, endpoint or None, kind, threshold_ms, target): over the fleet's
# checkout and catalog, which follow the current semantic conventions.
OBJECTIVES = [
    ("orders-available", "checkout", "POST /v2/orders", "availability", None, 99.9),
    ("orders-fast", "checkout", "POST /v2/orders", "latency", 300, 99.0),
    ("search-fast", "catalog", "GET /v2/search", "latency", 200, 95.0),
    ("checkout-available", "checkout", None, "availability", None, 99.5),
]


def config_toml():
    out = []
    for name, service, endpoint, kind, threshold, target in OBJECTIVES:
        out.append("[[objectives]]")
        out.append(f'name = "{name}"')
        out.append(f'service = "{service}"')
        if endpoint:
            out.append(f'endpoint = "{endpoint}"')
        out.append(f'kind = "{kind}"')
        if threshold is not None:
            out.append(f"threshold_ms = {threshold}")
        out.append(f"target = {target}")
        out.append(f'window = "{DAYS}d"\n')
    return "\n".join(out)


def iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def counts_sql(bad, since):
    """The columns counting an objective's good calls and calls over the window, and its
    calls and bad calls over each burn window: `bad` is the engine's condition of a bad
    call, `since(seconds)` that of a burn window."""
    columns = [f"sum(CASE WHEN {bad} THEN 0 ELSE 1 END) AS good", "count(*) AS total"]
    for label, seconds in BURN_WINDOWS:
        columns.append(f"sum(CASE WHEN {since(seconds)} THEN 1 ELSE 0 END) AS total_{label}")
        columns.append(f"sum(CASE WHEN {since(seconds)} AND {bad} THEN 1 ELSE 0 END) AS bad_{label}")
    return columns


def raw_sql(engine, start, end):
    """One statement: per objective, the counts `judge` needs, from the raw spans."""
    parts = []
    for name, service, endpoint, kind, threshold, _ in OBJECTIVES:
        if engine == "apiscope":
            bad = "is_error" if kind == "availability" else f"NOT (duration_ms <= {threshold})"
            where = ["span_kind = 'server'", f"service_name = '{service}'",
                     f"time >= '{iso(start)}'", f"time < '{iso(end)}'"]
            if endpoint:
                where.append(f"endpoint = '{endpoint}'")
            since = lambda s: f"time >= '{iso(end - s)}'"
            table = "spans"
        else:
            bad = run.CH_IS_ERROR if kind == "availability" else f"NOT (Duration / 1e6 <= {threshold})"
            bounds = (f"Timestamp >= toDateTime64('{iso(start)[:-1]}', 9, 'UTC')",
                      f"Timestamp < toDateTime64('{iso(end)[:-1]}', 9, 'UTC')")
            where = ["SpanKind = 'Server'", f"ServiceName = '{service}'", *bounds]
            if endpoint:
                where.append(f"{run.CH_ENDPOINT} = '{endpoint}'")
            since = lambda s: f"Timestamp >= toDateTime64('{iso(end - s)[:-1]}', 9, 'UTC')"
            table = "otel_traces"
        columns = counts_sql(bad, since)
        parts.append(f"SELECT '{name}' AS name, {', '.join(columns)} FROM {table} "
                     f"WHERE {' AND '.join(where)}")
    return " UNION ALL ".join(parts) + " ORDER BY name"


def judged(rows):
    """{name: (total, good, {window: burn rate or None})} from raw counts."""
    targets = {o[0]: o[5] for o in OBJECTIVES}
    out = {}
    for row in rows:
        name, good, total = row[0], int(row[1]), int(row[2])
        allowed = (100.0 - targets[name]) / 100.0
        burns = {}
        for k, (label, _) in enumerate(BURN_WINDOWS):
            window_total, window_bad = int(row[3 + 2 * k] or 0), int(row[4 + 2 * k] or 0)
            burns[label] = window_bad / window_total / allowed if window_total else None
        out[name] = (total, good, burns)
    return out


def status_judged(rows, columns):
    out = {}
    for row in rows:
        record = dict(zip(columns, row))
        burns = {label: record[f"burn_rate_{label}"] for label, _ in BURN_WINDOWS}
        out[record["name"]] = (int(record["total"]), int(record["good"]), burns)
    return out


def agree(expected, got, what):
    assert expected.keys() == got.keys(), (what, expected.keys(), got.keys())
    for name, (total, good, burns) in expected.items():
        other = got[name]
        assert (total, good) == other[:2], (what, name, (total, good), other[:2])
        for label, burn in burns.items():
            seen = other[2][label]
            assert (burn is None) == (seen is None), (what, name, label, burn, seen)
            assert burn is None or abs(burn - seen) <= 1e-9 * max(1.0, abs(burn)), \
                (what, name, label, burn, seen)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans-per-hour", type=int, default=3000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-objectives-")
    data = os.path.join(work, "data")
    config = os.path.join(work, "objectives.toml")
    with open(config, "w") as f:
        f.write(config_toml())
    daemon = run.Daemon(args.binary, data, "--retention", "30d", "--config", config)
    began = time.time()
    sent = 0
    for hours_ago in range(DAYS * 24, -1, -1):
        summary = run.loadgen(args.binary, daemon.grpc, "--rate", "0", "--spans",
                              str(args.spans_per_hour), "--connections", "1", "--batch", "500",
                              "--ago", f"{hours_ago}h")
        sent += run.acknowledged(summary)
    while daemon.metric("apiscope_buffer_rows") > 0:
        time.sleep(0.5)
    run.wait_for_final_form(daemon, data)
    loaded_s = time.time() - began
    end = (int(time.time()) // 60 + 1) * 60
    start = end - DAYS * 86400

    status_sql = f"SELECT * FROM objective_status('{iso(start)}', '{iso(end)}') ORDER BY name"
    answer = daemon.query(status_sql)
    from_rollups = status_judged(answer["rows"], [c["name"] for c in answer["columns"]])
    apiscope_raw = raw_sql("apiscope", start, end)
    from_spans = judged(daemon.query(apiscope_raw)["rows"])
    agree(from_spans, from_rollups, "objective_status against the raw spans")

    peers = os.path.join(work, "peers")
    os.makedirs(peers)
    for number, path in enumerate(run.spans_files(data)):
        pq.write_table(run.peer_rows(pq.read_table(path)), os.path.join(peers, f"{number}.parquet"),
                       compression="zstd")
    ch = chdb_session.Session(os.path.join(work, "chdb"))
    ch.query((run.HERE / "otel_traces.sql").read_text())
    ch.query(run.CHDB_INSERT.format(files=f"{peers}/*.parquet"))
    ch.query("OPTIMIZE TABLE otel_traces FINAL")
    chdb_sql = raw_sql("chdb", start, end)
    from_chdb = judged(json.loads(ch.query(chdb_sql, "JSONCompact").bytes())["data"])
    agree(from_spans, from_chdb, "chdb against apiscope's raw spans")

    timings = {
        "apiscope objective_status (rollups)": run.hot_median(lambda: daemon.query(status_sql)),
        "apiscope raw SQL over spans": run.hot_median(lambda: daemon.query(apiscope_raw)),
        "chdb over otel_traces": run.hot_median(lambda: ch.query(chdb_sql, "JSONCompact")),
    }
    calls = sum(total for total, _, _ in from_spans.values())
    daemon.stop()
    shutil.rmtree(work, ignore_errors=True)

    print(f"{sent:,} spans over {DAYS} days + the current hour ({loaded_s:.0f} s to load, "
          f"compact and roll up); the objectives judge {calls:,} calls; counts and burn rates "
          f"agree exactly across the three.\n")
    print("| objective | total | good | burn 5m | burn 1h | burn 6h | burn 3d |")
    print("|---|---|---|---|---|---|---|")
    for name, (total, good, burns) in from_rollups.items():
        cells = " | ".join("-" if burns[w] is None else f"{burns[w]:.2f}"
                           for w in ("5m", "1h", "6h", "3d"))
        print(f"| {name} | {total:,} | {good:,} | {cells} |")
    print("\n| engine (hot median) | ms | against objective_status |")
    print("|---|---|---|")
    base = timings["apiscope objective_status (rollups)"]
    for name, seconds in timings.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
