"""The trace APIs against ClickHouse (chdb) on the same spans, in one run.

Run through `bench/traces` (which builds the release binary and the Python environment):

    bench/traces                     # 8M spans
    bench/traces --spans 1000000

A fresh `apiscope serve` receives the load generator's fleet over OTLP/gRPC; the rows are
then loaded into chdb's `otel_traces` as `bench/run.py` does. Each figure is a hot median
(three warm-ups, then the median of five runs) of:

- one trace by id through the Jaeger API (`GET /api/traces/{id}`), without time bounds and
  with the trace's own start and end as bounds, and through the Tempo API as protobuf,
  against chdb's `SELECT * FROM otel_traces WHERE TraceId = ...` (also with the bounds);
  the median over five traces picked across the data;
- a search over the hour holding the fleet: Tempo's `/api/search` with a TraceQL query
  (20 traces, their root span, start and duration) against chdb's two queries for the same
  (the latest 20 matching traces, then their summary), and the Jaeger search (20 whole
  traces) against chdb's ids then those traces' spans.

It prints a table of figures and ratios.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import urllib.parse
import urllib.request

import pyarrow.parquet as pq
from chdb import session as chdb_session

import run

SERVICE = "checkout"
MIN_DURATION_MS = 100


def get(url, accept=None):
    request = urllib.request.Request(url, headers={"accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans", type=int, default=8_000_000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-traces-")
    data = os.path.join(work, "apiscope")

    daemon = run.Daemon(args.binary, data, "--durability", "fsync")
    sent = run.loadgen(args.binary, daemon.grpc, "--rate", "0", "--spans", str(args.spans),
                       "--connections", "4", "--batch", "1000")
    spans = run.acknowledged(sent)
    daemon.stop()

    peers = os.path.join(work, "peers")
    os.makedirs(peers)
    # The files the log lists: compaction's inputs stay on disk a while after it.
    files = sorted(run.spans_files(data))
    for number, path in enumerate(files):
        source = pq.ParquetFile(path)
        pq.write_table(run.peer_rows(source.read()), os.path.join(peers, f"{number}.parquet"),
                       compression="zstd", row_group_size=source.metadata.row_group(0).num_rows)
    ch = chdb_session.Session(os.path.join(work, "chdb"))
    ch.query((run.HERE / "otel_traces.sql").read_text())
    ch.query(run.CHDB_INSERT.format(files=f"{peers}/*.parquet"))
    ch.query("OPTIMIZE TABLE otel_traces FINAL")

    # Five traces across the data, with their bounds (µs).
    picked = []
    for path in files[:: max(1, len(files) // 5)][:5]:
        table = pq.read_table(path, columns=["trace_id"])
        trace_id = table.column("trace_id")[table.num_rows // 2].as_py()
        bounds = ch.query(
            f"SELECT toUnixTimestamp64Micro(min(Timestamp)), "
            f"toUnixTimestamp64Micro(max(Timestamp)) + 1 FROM otel_traces WHERE TraceId = '{trace_id}'",
            "CSV").bytes().decode().strip().split(",")
        picked.append((trace_id, int(bounds[0]), int(bounds[1])))
    hour = ch.query("SELECT toUnixTimestamp(min(Timestamp)), toUnixTimestamp(max(Timestamp)) + 1 "
                    "FROM otel_traces", "CSV").bytes().decode().strip().split(",")
    lo_s, hi_s = int(hour[0]), int(hour[1])

    daemon = run.Daemon(args.binary, data)
    figures = {"spans": spans}

    def over_traces(measure):
        return statistics.median(run.hot_median(lambda: measure(*one)) for one in picked)

    figures["jaeger trace by id, no bounds"] = over_traces(
        lambda t, lo, hi: get(f"{daemon.http}/api/traces/{t}"))
    figures["jaeger trace by id, bounds"] = over_traces(
        lambda t, lo, hi: get(f"{daemon.http}/api/traces/{t}?start={lo}&end={hi}"))
    figures["tempo trace by id (protobuf), no bounds"] = over_traces(
        lambda t, lo, hi: get(f"{daemon.http}/api/v2/traces/{t}", "application/protobuf"))
    figures["chdb trace by id, no bounds"] = over_traces(
        lambda t, lo, hi: ch.query(f"SELECT * FROM otel_traces WHERE TraceId = '{t}'", "CSV"))
    figures["chdb trace by id, bounds"] = over_traces(
        lambda t, lo, hi: ch.query(
            f"SELECT * FROM otel_traces WHERE TraceId = '{t}' AND Timestamp >= "
            f"fromUnixTimestamp64Micro({lo}) AND Timestamp < fromUnixTimestamp64Micro({hi})", "CSV"))

    traceql = f'{{resource.service.name="{SERVICE}" && duration > {MIN_DURATION_MS}ms}}'
    tempo_url = (f"{daemon.http}/api/search?" + urllib.parse.urlencode(
        {"q": traceql, "limit": 20, "spss": 3, "start": lo_s, "end": hi_s}))
    found = json.loads(get(tempo_url))["traces"]
    assert len(found) == 20, found
    figures["tempo search, 1 hour"] = run.hot_median(lambda: get(tempo_url))
    window = (f"Timestamp >= toDateTime64({lo_s}, 9) AND Timestamp < toDateTime64({hi_s}, 9)")
    matching = (f"SELECT TraceId FROM otel_traces WHERE {window} AND ServiceName = '{SERVICE}' "
                f"AND Duration > {MIN_DURATION_MS * 1_000_000} GROUP BY TraceId "
                f"ORDER BY max(Timestamp) DESC LIMIT 20")

    def chdb_search(whole):
        ids = ch.query(matching, "CSV").bytes().decode().split()
        listed = ", ".join("'" + i.strip('"') + "'" for i in ids)
        if whole:
            ch.query(f"SELECT * FROM otel_traces WHERE TraceId IN ({listed})", "CSV")
        else:
            ch.query(f"SELECT TraceId, min(Timestamp), max(Timestamp + toIntervalNanosecond(Duration)), "
                     f"argMinIf(ServiceName, Timestamp, ParentSpanId = ''), "
                     f"argMinIf(SpanName, Timestamp, ParentSpanId = '') "
                     f"FROM otel_traces WHERE TraceId IN ({listed}) GROUP BY TraceId", "CSV")

    figures["chdb search (summaries), 1 hour"] = run.hot_median(lambda: chdb_search(False))
    jaeger_url = (f"{daemon.http}/api/traces?" + urllib.parse.urlencode(
        {"service": SERVICE, "minDuration": f"{MIN_DURATION_MS}ms", "limit": 20,
         "start": lo_s * 1_000_000, "end": hi_s * 1_000_000}))
    assert len(json.loads(get(jaeger_url))["data"]) == 20
    figures["jaeger search, 1 hour"] = run.hot_median(lambda: get(jaeger_url))
    figures["chdb search (whole traces), 1 hour"] = run.hot_median(lambda: chdb_search(True))
    daemon.stop()
    ch.close()
    shutil.rmtree(work)

    ms = lambda name: figures[name] * 1000  # noqa: E731
    lines = [
        f"{spans} spans; hot medians (ms); ratio = apiscope / chdb",
        "",
        "| figure | apiscope | chdb | ratio |",
        "|---|---|---|---|",
    ]
    for ours, theirs, label in [
        ("jaeger trace by id, no bounds", "chdb trace by id, no bounds", "trace by id, no time bounds"),
        ("jaeger trace by id, bounds", "chdb trace by id, bounds", "trace by id, the trace's bounds"),
        ("tempo trace by id (protobuf), no bounds", "chdb trace by id, no bounds", "trace by id, Tempo protobuf, no bounds"),
        ("tempo search, 1 hour", "chdb search (summaries), 1 hour", "TraceQL search, 20 traces, 1 hour"),
        ("jaeger search, 1 hour", "chdb search (whole traces), 1 hour", "Jaeger search, 20 whole traces, 1 hour"),
    ]:
        lines.append(f"| {label} | {ms(ours):.1f} | {ms(theirs):.1f} | {figures[ours] / figures[theirs]:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
