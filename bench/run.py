"""apiscope against ClickHouse (chdb) and DuckDB, on the same generated spans, in one run.

Run through `bench/run`, which builds the release binary and the Python environment. For
each span count (1M and 8M by default) it measures:

1. Ingest: a fresh `apiscope serve` (fsync durability) receives the load generator's fleet
   over OTLP/gRPC as fast as it acknowledges; the figure is spans per CPU-second of the
   daemon (utime + stime from /proc, until every row is in Parquet), with its peak RSS.
   chdb inserts the same rows (apiscope's Parquet files, each rewritten by pyarrow with the
   resource attributes as the map SQL reads, see `peer_rows`) into the OpenTelemetry
   Collector exporter's `otel_traces` table; its figure is spans per CPU-second of this
   process. Then, on a fresh daemon, the acknowledgement latency at a fixed rate.
2. Storage: bytes per span of apiscope's Parquet, of `otel_traces` (active parts after
   OPTIMIZE FINAL), and of pyarrow's default zstd Parquet of the same rows (the columns
   apiscope's files hold, the resource attributes as a map; `end_time` and `duration_ms` are
   computed when read, and DuckDB's queries compute `duration_ns / 1e6` likewise). apiscope's figure counts its per-minute
   rollups too.
3. Queries: five questions, each hot (three warm-ups, then the median of five runs), on
   apiscope through its HTTP query API, on chdb's `otel_traces`, and on DuckDB reading
   apiscope's own Parquet files.

It prints one table of figures and ratios and writes it to bench/results/latest.md.
"""

import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import chdb
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from chdb import session as chdb_session
from deltalake import DeltaTable

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RUNS = 5
# Runs before the timed ones: a freshly started daemon reads footers and rollups on its first queries.
WARM_UPS = 3

# What `otel_traces` holds under apiscope's stored columns, in ClickHouse's SQL, so that
# chdb answers the same question (grouped by endpoint, not span name; the same error and
# dependency rules as apiscope's, see docs/tables.md).
CH_ATTR = "SpanAttributes['{}']"


def ch_first(*keys):
    """The first of `keys` present in SpanAttributes, else ''."""
    expression = CH_ATTR.format(keys[-1])
    for key in reversed(keys[:-1]):
        expression = f"if({CH_ATTR.format(key)} != '', {CH_ATTR.format(key)}, {expression})"
    return expression


def ch_joined(first, second, separator):
    """`first<separator>second`, or `first` alone when `second` is ''."""
    return f"if({second} != '', concat({first}, '{separator}', {second}), {first})"


CH_ENDPOINT = f"concat({ch_first('http.request.method', 'http.method')}, ' ', {CH_ATTR.format('http.route')})"
CH_STATUS = ch_first("http.response.status_code", "http.status_code")
CH_IS_ERROR = f"(StatusCode = 'Error' OR toInt32OrZero({CH_STATUS}) >= 500)"
CH_DEPENDENCY = (
    f"multiIf({CH_ATTR.format('peer.service')} != '', {CH_ATTR.format('peer.service')}, "
    f"{CH_ATTR.format('service.peer.name')} != '', {CH_ATTR.format('service.peer.name')}, "
    f"{ch_first('db.system.name', 'db.system')} != '', "
    f"{ch_joined(ch_first('db.system.name', 'db.system'), ch_first('db.namespace', 'db.name'), '/')}, "
    f"{CH_ATTR.format('rpc.service')} != '', {CH_ATTR.format('rpc.service')}, "
    f"{CH_ATTR.format('messaging.system')} != '', "
    f"{ch_joined(CH_ATTR.format('messaging.system'), ch_first('messaging.destination.name', 'messaging.destination'), '/')}, "
    f"{ch_joined(ch_first('server.address', 'net.peer.name'), ch_first('server.port', 'net.peer.port'), ':')})"
)

# The five questions, as a user of each engine would write them, each with how its answers
# are compared before anything is timed ("check": one kind per column: `key` columns name a
# row, `count` and `rate` must be equal, `pct` within PERCENTILE_TOLERANCE; "rows": the
# number of rows).
QUERIES = {
    "endpoint latency and errors": {
        # The question as apiscope answers it (from per-minute rollups) over a window that
        # holds every span; "apiscope raw" is the same question in SQL over the spans.
        "apiscope": "SELECT service_name, endpoint, calls, p50_ms, p95_ms, p99_ms, error_rate FROM "
        "endpoint_stats('2000-01-01T00:00:00Z', '2100-01-01T00:00:00Z') ORDER BY calls DESC",
        "apiscope raw": "SELECT service_name, endpoint, count(*) AS calls, "
        "approx_percentile_cont(duration_ms, 0.5) AS p50, "
        "approx_percentile_cont(duration_ms, 0.95) AS p95, "
        "approx_percentile_cont(duration_ms, 0.99) AS p99, "
        "avg(CASE WHEN is_error THEN 1.0 ELSE 0.0 END) AS error_rate "
        "FROM spans WHERE span_kind = 'server' GROUP BY service_name, endpoint ORDER BY calls DESC",
        "duckdb": "SELECT service_name, endpoint, count(*) AS calls, approx_quantile(duration_ns / 1e6, 0.5), "
        "approx_quantile(duration_ns / 1e6, 0.95), approx_quantile(duration_ns / 1e6, 0.99), "
        "avg(CASE WHEN is_error THEN 1.0 ELSE 0.0 END) "
        "FROM {spans} WHERE span_kind = 'server' GROUP BY service_name, endpoint ORDER BY calls DESC",
        "chdb": "SELECT ServiceName, endpoint, calls, q[1], q[2], q[3], error_rate FROM ("
        f"SELECT ServiceName, {CH_ENDPOINT} AS endpoint, count() AS calls, "
        "quantiles(0.5, 0.95, 0.99)(Duration / 1e6) AS q, "
        f"countIf({CH_IS_ERROR}) / count() AS error_rate FROM otel_traces "
        "WHERE SpanKind = 'Server' GROUP BY ServiceName, endpoint) ORDER BY calls DESC",
        "check": ("key", "key", "count", "pct", "pct", "pct", "rate"),
    },
    "errors per client": {
        "apiscope": "SELECT client_id, count(*) AS errors FROM spans "
        "WHERE span_kind = 'server' AND status_code = 'error' GROUP BY client_id ORDER BY errors DESC",
        "duckdb": "SELECT client_id, count(*) AS errors FROM {spans} "
        "WHERE span_kind = 'server' AND status_code = 'error' GROUP BY client_id ORDER BY errors DESC",
        "chdb": f"SELECT {ch_first('client.id', 'app.client_id', 'http.request.header.x-client-id', 'enduser.id', 'user.id')} AS client, "
        "count() AS errors FROM otel_traces "
        "WHERE SpanKind = 'Server' AND StatusCode = 'Error' GROUP BY client ORDER BY errors DESC",
        "check": ("key", "count"),
    },
    "dependency latency": {
        "apiscope": "SELECT service_name, dependency, count(*) AS calls, "
        "approx_percentile_cont(duration_ms, 0.95) AS p95 FROM spans "
        "WHERE span_kind = 'client' GROUP BY service_name, dependency ORDER BY calls DESC",
        "duckdb": "SELECT service_name, dependency, count(*) AS calls, "
        "approx_quantile(duration_ns / 1e6, 0.95) FROM {spans} "
        "WHERE span_kind = 'client' GROUP BY service_name, dependency ORDER BY calls DESC",
        "chdb": f"SELECT ServiceName, {CH_DEPENDENCY} AS dependency, "
        "count() AS calls, quantile(0.95)(Duration / 1e6) FROM otel_traces "
        "WHERE SpanKind = 'Client' GROUP BY ServiceName, dependency ORDER BY calls DESC",
        "check": ("key", "key", "count", "pct"),
    },
    "one trace by id": {
        "apiscope": "SELECT * FROM spans WHERE trace_id = '{trace_id}'",
        "duckdb": "SELECT * FROM {spans} WHERE trace_id = '{trace_id}'",
        "chdb": "SELECT * FROM otel_traces WHERE TraceId = '{trace_id}'",
        "check": "rows",
    },
    "non-promoted attribute": {
        "apiscope": "SELECT count(*) FROM spans WHERE attributes['db.operation.name'] = 'SELECT'",
        "duckdb": "SELECT count(*) FROM {spans} WHERE attributes['db.operation.name'] = 'SELECT'",
        "chdb": "SELECT count() FROM otel_traces WHERE SpanAttributes['db.operation.name'] = 'SELECT'",
        "check": ("count",),
    },
}

# The live measurement: spans per second sent while the open hour is queried, and for how
# long (long enough for a dozen timings of each question at one question a second).
LIVE_RATE = 30_000
LIVE_SECONDS = 90

# How far apart two engines' percentiles may be and still answer alike: each engine's
# estimate has its own error (apiscope's sketch 1%, DuckDB's t-digest, ClickHouse's
# `quantile` a sample of 8,192 values per group).
PERCENTILE_TOLERANCE = 0.05


def differences(check, expected, got):
    """How `got` differs from `expected` (rows as lists), or None when they agree."""
    if check == "rows":
        return None if len(expected) == len(got) else f"{len(got)} rows, not {len(expected)}"

    def keyed(rows):
        out = {}
        for row in rows:
            key = tuple("" if v is None else str(v) for v, kind in zip(row, check) if kind == "key")
            out[key] = [v for v, kind in zip(row, check) if kind != "key"]
        return out

    kinds = [kind for kind in check if kind != "key"]
    mine, theirs = keyed(expected), keyed(got)
    if mine.keys() != theirs.keys():
        return f"groups differ: {sorted(mine.keys() ^ theirs.keys())[:3]}"
    for key, values in mine.items():
        for kind, a, b in zip(kinds, values, theirs[key]):
            a, b = float(a or 0), float(b or 0)
            if kind == "count" and a != b:
                return f"{key}: {b:g}, not {a:g}"
            if kind == "rate" and abs(a - b) > 1e-9:
                return f"{key}: rate {b:g}, not {a:g}"
            if kind == "pct" and abs(a - b) > PERCENTILE_TOLERANCE * max(abs(a), abs(b)):
                return f"{key}: percentile {b:g}, not {a:g}"
    return None


CHDB_INSERT = """
INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind,
    ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode,
    StatusMessage)
SELECT time, trace_id, span_id, ifNull(parent_span_id, ''), span_name,
    concat(upper(substring(span_kind, 1, 1)), substring(span_kind, 2)), service_name,
    mapApply((k, v) -> (k, ifNull(v, '')), resource_attributes), ifNull(scope_name, ''),
    mapApply((k, v) -> (k, ifNull(v, '')), attributes), toUInt64(duration_ns),
    concat(upper(substring(status_code, 1, 1)), substring(status_code, 2)),
    ifNull(status_message, '')
FROM file('{files}', Parquet)
"""


class Daemon:
    """A release `apiscope serve` on free loopback ports, logging JSON."""

    def __init__(self, binary, data_dir, *extra):
        self.process = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--log-format", "json",
             "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0",
             "--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", *extra],
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        for line in self.process.stderr:
            record = json.loads(line)
            fields = record.get("fields", {})
            if fields.get("message") == "apiscope ready":
                self.grpc = "http://" + fields["otlp_grpc_addr"]
                self.http = "http://" + fields["http_addr"]
                break
            if time.time() > deadline:
                raise RuntimeError("apiscope did not start")
        else:
            raise RuntimeError("apiscope exited at start")
        # Keep reading its log, so that a full pipe never blocks it.
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024

    def query(self, sql):
        """Its answer to `sql`; a refusal raises with the daemon's message and the SQL."""
        request = urllib.request.Request(
            self.http + "/api/v1/query", data=sql.encode(),
            headers={"content-type": "application/sql"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{error}: {error.read().decode()}\n{sql}") from None

    def metric(self, name):
        with urllib.request.urlopen(self.http + "/metrics", timeout=30) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=300)


def loadgen(binary, endpoint, *args):
    """Runs the load generator; its summary as {name: text}."""
    output = subprocess.run(
        [binary, "loadgen", "--protocol", "grpc", "--endpoint", endpoint, "--seed", "7", *args],
        capture_output=True, text=True, check=True).stdout
    summary = {}
    for line in output.splitlines():
        name, _, rest = line.partition("  ")
        if rest:
            summary[name.strip()] = rest.strip()
    return summary


def acknowledged(summary):
    return int(summary["acknowledged"].split()[0])


def latency(summary):
    text = summary["acknowledgement"]
    p50 = float(re.search(r"p50 ([\d.]+) ms", text).group(1))
    p99 = float(re.search(r"p99 ([\d.]+) ms", text).group(1))
    return p50, p99


def hot_median(run):
    for _ in range(WARM_UPS):
        run()
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def live_files(data_dir, table):
    """The Parquet files `table`'s Delta log lists (removed files stay a while on disk for
    queries already reading them: they are not the table's), relative to the table."""
    root = os.path.join(data_dir, table)
    return [os.path.relpath(uri.removeprefix("file://"), root)
            for uri in DeltaTable(root).file_uris()]


def spans_files(data_dir):
    return [os.path.join(data_dir, "spans", f) for f in live_files(data_dir, "spans")]


def parquet_bytes(data_dir):
    return sum(os.path.getsize(f) for f in spans_files(data_dir))


def rollups_of_spans(data_dir):
    """The live rollups of spans files: `api_call_minutes/<hour>/spans-<file name>`."""
    return [f for f in live_files(data_dir, "api_call_minutes")
            if os.path.basename(f).startswith("spans-")]


def rollup_bytes(data_dir):
    return sum(os.path.getsize(os.path.join(data_dir, "api_call_minutes", f))
               for f in rollups_of_spans(data_dir))


def rollups_missing(data_dir):
    rollups = set(rollups_of_spans(data_dir))
    return [f for f in live_files(data_dir, "spans")
            if os.path.join(os.path.dirname(f), "spans-" + os.path.basename(f)) not in rollups]


def wait_for_rollups(data_dir):
    """Until every spans file has its per-minute rollup (the daemon writes them every 5 s)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        missing = rollups_missing(data_dir)
        if not missing:
            return
        time.sleep(0.5)
    raise RuntimeError(f"rollups missing for {len(missing)} files")


def wait_for_final_form(daemon, data_dir):
    """Until compaction has nothing left to merge (two maintenance passes in a row merged
    nothing) and every file has its rollup: each span in the form queries read."""
    deadline = time.time() + 900
    merged = passes = None
    while time.time() < deadline:
        now = (daemon.metric("apiscope_compacted_files_total"),
               daemon.metric('apiscope_maintenance_passes_total{outcome="ok"}'))
        if merged != now[0]:
            merged, passes = now
        elif now[1] >= passes + 2 and not rollups_missing(data_dir):
            return
        time.sleep(1)
    raise RuntimeError("compaction did not settle")


STRING_MAP = pa.map_(pa.string(), pa.string())


def peer_rows(table):
    """apiscope's stored spans as the peers get them: `resource_attributes` as the map SQL
    reads, from the stored JSON pairs of `resource` (each distinct text decoded once), and
    no `resource`."""
    def decode(text):
        return None if text is None else [(key, value) for key, value in json.loads(text)]

    maps = []
    for chunk in table.column("resource").chunks:
        if pa.types.is_dictionary(chunk.type):
            decoded = pa.array([decode(t) for t in chunk.dictionary.to_pylist()], STRING_MAP)
            maps.append(decoded.take(chunk.indices))
        else:
            maps.append(pa.array([decode(t) for t in chunk.to_pylist()], STRING_MAP))
    column = table.column_names.index("resource_attributes")
    table = table.set_column(column, pa.field("resource_attributes", STRING_MAP),
                             pa.chunked_array(maps, STRING_MAP))
    return table.drop_columns(["resource"])


def ingest(binary, data, spans, *loadgen_args):
    """A fresh daemon over `data` fed `spans` spans as fast as it acknowledges; returns it
    (still running) with its figures: spans per CPU-second until every row is in Parquet
    with its rollup (how it was counted before), and until compaction has nothing left to
    merge (the whole cost of a span's final form, as chdb's counts its OPTIMIZE)."""
    figures = {}
    daemon = Daemon(binary, data, "--durability", "fsync")
    cpu_before = daemon.cpu_seconds()
    started = time.time()
    sent = loadgen(binary, daemon.grpc, "--rate", "0", "--spans", str(spans),
                   "--connections", "4", "--batch", "1000", *loadgen_args)
    stored = acknowledged(sent)
    while daemon.metric("apiscope_buffer_rows") > 0:
        time.sleep(0.5)
    figures["spans/s (wall)"] = stored / (time.time() - started)
    # The rollups of the last files are part of ingesting them.
    wait_for_rollups(data)
    figures["spans/CPU-s, flushed"] = stored / (daemon.cpu_seconds() - cpu_before)
    wait_for_final_form(daemon, data)
    figures["spans/CPU-s, compacted"] = stored / (daemon.cpu_seconds() - cpu_before)
    figures["peak RSS MiB"] = daemon.peak_rss() / 2**20
    figures["files"] = len(live_files(data, "spans"))
    return daemon, stored, figures


def measure(binary, spans, work):
    data = os.path.join(work, f"apiscope-{spans}")
    figures = {}

    # 1. apiscope ingest into the open hour, until each span is in its final form there.
    daemon, stored, ingested = ingest(binary, data, spans)
    for name, value in ingested.items():
        figures[f"apiscope ingest {name}"] = value
    daemon.stop()
    figures["spans"] = stored

    # The same traffic two hours ago: an hour closed, compacted to the end.
    closed = os.path.join(work, f"closed-{spans}")
    daemon, _, compacted = ingest(binary, closed, spans, "--ago", "2h")
    figures["apiscope compacted hour files"] = compacted["files"]
    daemon.stop()

    # Acknowledgement latency at a fixed rate, on a fresh daemon.
    fixed = os.path.join(work, f"fixed-{spans}")
    daemon = Daemon(binary, fixed, "--durability", "fsync")
    paced = loadgen(binary, daemon.grpc, "--rate", "100000", "--duration", "15s",
                    "--connections", "8", "--batch", "500")
    figures["apiscope ack p50 ms @100k/s"], figures["apiscope ack p99 ms @100k/s"] = latency(paced)
    figures["apiscope spans/s reached @100k/s"] = acknowledged(paced) / 15
    daemon.stop()
    shutil.rmtree(fixed)

    # The rows as the peers get them (see `peer_rows`): a file per file of apiscope's, in
    # row groups of the same size.
    peers = os.path.join(work, f"peers-{spans}")
    os.makedirs(peers)
    for number, path in enumerate(spans_files(data)):
        source = pq.ParquetFile(path)
        pq.write_table(peer_rows(source.read()), os.path.join(peers, f"{number}.parquet"),
                       compression="zstd", row_group_size=source.metadata.row_group(0).num_rows)

    # chdb: the same rows into otel_traces, merged to the end as apiscope's are.
    ch_dir = os.path.join(work, f"chdb-{spans}")
    ch = chdb_session.Session(ch_dir)
    ch.query((HERE / "otel_traces.sql").read_text())
    cpu_before = time.process_time()
    ch.query(CHDB_INSERT.format(files=f"{peers}/*.parquet"))
    figures["chdb ingest spans/CPU-s, inserted"] = stored / (time.process_time() - cpu_before)
    ch.query("OPTIMIZE TABLE otel_traces FINAL")
    figures["chdb ingest spans/CPU-s, merged"] = stored / (time.process_time() - cpu_before)
    chdb_rows = int(ch.query("SELECT count() FROM otel_traces", "CSV").bytes().decode().strip())
    assert chdb_rows == stored, (chdb_rows, stored)

    # 2. Storage.
    figures["apiscope rollup bytes/span"] = rollup_bytes(data) / stored
    figures["apiscope bytes/span"] = (parquet_bytes(data) + rollup_bytes(data)) / stored
    parts = ch.query("SELECT sum(bytes_on_disk) FROM system.parts "
                     "WHERE table = 'otel_traces' AND active", "CSV")
    figures["chdb bytes/span"] = int(parts.bytes().decode().strip()) / stored
    table = pq.ParquetDataset(glob.glob(f"{peers}/*.parquet")).read()
    shutil.rmtree(peers)
    default_zstd = os.path.join(work, f"pyarrow-{spans}.parquet")
    pq.write_table(table, default_zstd, compression="zstd")
    figures["pyarrow zstd bytes/span"] = os.path.getsize(default_zstd) / stored
    os.remove(default_zstd)
    trace_id = table.column("trace_id")[table.num_rows // 2].as_py()
    # A second of LIVE_RATE's traffic per file, for chdb's inserts while it is queried.
    arriving = os.path.join(work, f"arriving-{spans}")
    os.makedirs(arriving)
    for second in range(LIVE_SECONDS):
        rows = table.slice(second * LIVE_RATE % max(1, table.num_rows - LIVE_RATE), LIVE_RATE)
        pq.write_table(rows, os.path.join(arriving, f"{second}.parquet"), compression="zstd")
    del table

    # 3. Queries, hot: on the open hour at rest, and on the closed hour compacted to the end.
    # Each engine's answer is checked against apiscope's first; one that differs is
    # reported as such and not timed.
    daemon = Daemon(binary, data)
    wait_for_rollups(data)
    past = Daemon(binary, closed)
    wait_for_rollups(closed)
    duck = duckdb.connect()
    duck.execute("SET threads = 2")
    spans_relation = f"read_parquet({spans_files(data)!r}, hive_partitioning = false)"
    past_trace = past.query("SELECT trace_id FROM spans LIMIT 1")["rows"][0][0]
    for name, sql in QUERIES.items():
        texts = {engine: text.format(spans=spans_relation, trace_id=trace_id)
                 for engine, text in sql.items() if engine != "check"}
        past_texts = {engine: text.format(trace_id=past_trace)
                      for engine, text in sql.items() if engine.startswith("apiscope")}
        # Per engine: what is timed, and the rows of its answer.
        apiscope_rows = lambda answer: answer["rows"]
        runs = {
            "apiscope": (lambda: daemon.query(texts["apiscope"]), apiscope_rows),
            "apiscope compacted": (lambda: past.query(past_texts["apiscope"]), apiscope_rows),
            "chdb": (lambda: ch.query(texts["chdb"], "JSONCompact"),
                     lambda answer: json.loads(answer.bytes())["data"]),
            "duckdb": (lambda: duck.sql(texts["duckdb"]).to_arrow_table(),
                       lambda answer: [list(row.values()) for row in answer.to_pylist()]),
        }
        if "apiscope raw" in texts:
            runs["apiscope raw"] = (lambda: daemon.query(texts["apiscope raw"]), apiscope_rows)
            runs["apiscope raw compacted"] = (
                lambda: past.query(past_texts["apiscope raw"]), apiscope_rows)
        expected = apiscope_rows(runs["apiscope"][0]())
        for engine, (run, rows) in runs.items():
            got = rows(run())
            if engine.endswith("compacted"):
                # The same traffic two hours earlier, under other ids: the same shape.
                alike = got and (sql["check"] == "rows" or len(got) == len(expected))
                differs = None if alike else f"{len(got)} rows, not {len(expected)}"
            else:
                differs = differences(sql["check"], expected, got)
            if differs:
                figures[f"{engine} {name} differs"] = differs
            else:
                figures[f"{engine} {name} s"] = hot_median(run)
    past.stop()

    # 4. The open hour while it grows, one engine at a time: the load generator sends
    # LIVE_RATE spans/s to the daemon while one question a second is timed, each in turn,
    # then chdb gets a second's worth of rows each second (its merges run in the
    # background meanwhile) while its questions are timed the same way; the median per
    # question. One question a second, as an engineer asks them: runs until 2026-12-07
    # morning timed every question each second, one after the other, which kept the
    # daemon's query threads busy the whole of every second (59 CPU-seconds in 60 s on a
    # probe) and measured how the questions slow each other on two cores as much as the
    # open hour. Each engine ingests and answers alone, as on a machine of its own: on
    # these two cores one engine's inserts, merges and queries would otherwise slow the
    # other's. The answers change as rows arrive, so they were compared at rest only.
    load = subprocess.Popen(
        [binary, "loadgen", "--protocol", "grpc", "--endpoint", daemon.grpc, "--seed", "7",
         "--rate", str(LIVE_RATE), "--duration", f"{LIVE_SECONDS}s", "--connections", "4",
         "--batch", "500"], stdout=subprocess.DEVNULL)
    texts = [(f"{engine} live {name} s", text.format(spans=spans_relation, trace_id=trace_id))
             for name, sql in QUERIES.items()
             for engine, text in sql.items() if engine in ("apiscope", "apiscope raw")]
    live = {}
    rounds = 0
    while load.poll() is None:
        started = time.time()
        key, text = texts[rounds % len(texts)]
        rounds += 1
        began = time.perf_counter()
        daemon.query(text)
        live.setdefault(key, []).append(time.perf_counter() - began)
        time.sleep(max(0.0, started + 1 - time.time()))
    # chdb's questions can take longer than a second: each round first inserts every
    # second's rows due by then, so that it too receives LIVE_RATE rows a second.
    began_inserts = time.time()
    inserted = 0
    asked = 0
    names = list(QUERIES)
    while inserted < LIVE_SECONDS:
        started = time.time()
        due = min(LIVE_SECONDS, int(started - began_inserts) + 1)
        for second in range(inserted, due):
            ch.query(CHDB_INSERT.format(files=os.path.join(arriving, f"{second}.parquet")))
        inserted = due
        name = names[asked % len(names)]
        asked += 1
        began = time.perf_counter()
        ch.query(QUERIES[name]["chdb"].format(trace_id=trace_id), "JSONCompact")
        live.setdefault(f"chdb live {name} s", []).append(time.perf_counter() - began)
        time.sleep(max(0.0, started + 1 - time.time()))
    for name, times in live.items():
        figures[name] = statistics.median(times)
    figures["live rounds"] = rounds
    figures["apiscope live files"] = len(live_files(data, "spans"))
    shutil.rmtree(arriving)
    daemon.stop()
    ch.close()
    return figures


def report(results):
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.python_version()} Python, chdb {chdb.__version__}, "
        f"duckdb {duckdb.__version__}; `bench/run`.",
        "",
    ]
    for spans, f in results.items():
        ratio = lambda a, b: f[a] / f[b]

        def ms(engine, name):
            """An engine's hot median in ms, or why it was not timed."""
            if f"{engine} {name} s" in f:
                return f"{f[f'{engine} {name} s'] * 1000:.1f}"
            return f"differs ({f.get(f'{engine} {name} differs', 'not run')})"

        def over(engine, name, other):
            a, b = f.get(f"{engine} {name} s"), f.get(f"{other} {name} s")
            return f"{a / b:.2f}" if a and b else "-"

        lines += [
            f"### {spans:,} spans",
            "",
            "| figure | apiscope | peer | apiscope / peer | target |",
            "|---|---|---|---|---|",
            f"| ingest, spans per CPU-second (fsync), until stored with rollups / inserted (the method before) | {f['apiscope ingest spans/CPU-s, flushed']:,.0f} | chdb {f['chdb ingest spans/CPU-s, inserted']:,.0f} | {ratio('apiscope ingest spans/CPU-s, flushed', 'chdb ingest spans/CPU-s, inserted'):.2f} | |",
            f"| ingest, spans per CPU-second (fsync), until merged to the end (compaction / OPTIMIZE FINAL counted) | {f['apiscope ingest spans/CPU-s, compacted']:,.0f} | chdb {f['chdb ingest spans/CPU-s, merged']:,.0f} | {ratio('apiscope ingest spans/CPU-s, compacted', 'chdb ingest spans/CPU-s, merged'):.2f} | >= 2 |",
            f"| ingest wall rate, load generator on the same cores | {f['apiscope ingest spans/s (wall)']:,.0f} spans/s | | | |",
            f"| acknowledgement p50 / p99 at 100k spans/s offered | {f['apiscope ack p50 ms @100k/s']:.1f} / {f['apiscope ack p99 ms @100k/s']:.1f} ms ({f['apiscope spans/s reached @100k/s']:,.0f} spans/s reached) | | | p99 < 50 ms |",
            f"| peak RSS during ingest | {f['apiscope ingest peak RSS MiB']:,.0f} MiB | | | < 1024 MiB |",
            f"| spans files: open hour at rest / the hour compacted to the end | {f['apiscope ingest files']} / {f['apiscope compacted hour files']} | | | |",
            f"| spans files in the open hour after {LIVE_SECONDS} s of ingest ({f['live rounds']} questions asked, one a second) at {LIVE_RATE:,} spans/s | {f['apiscope live files']} | | | |",
            f"| bytes per span | {f['apiscope bytes/span']:.1f} | chdb {f['chdb bytes/span']:.1f} | {ratio('apiscope bytes/span', 'chdb bytes/span'):.2f} | <= 0.6 |",
            f"| bytes per span | | pyarrow zstd {f['pyarrow zstd bytes/span']:.1f} | {ratio('apiscope bytes/span', 'pyarrow zstd bytes/span'):.2f} | <= 0.8 |",
            f"| of which per-minute rollups | {f['apiscope rollup bytes/span']:.2f} | | | |",
        ]
        targets = {"endpoint latency and errors": ("<= 0.4", "<= 1"), "non-promoted attribute": ("<= 1", "")}
        for name in QUERIES:
            chdb_target, duck_target = targets.get(name, ("", ""))
            if name == "one trace by id":
                chdb_target = "< 50 ms"
            for label, engine in [("", "apiscope"), (", SQL over the spans", "apiscope raw")]:
                if engine == "apiscope raw" and "apiscope raw" not in QUERIES[name]:
                    continue
                first = "" if engine == "apiscope" else " "
                lines.append(f"| {name}{label}, hot median (ms), open hour at rest | {ms(engine, name)} | chdb {ms('chdb', name)} | {over(engine, name, 'chdb')} | {chdb_target if not first else ''} |")
                lines.append(f"| {name}{label}, hot median (ms), open hour at rest | | duckdb {ms('duckdb', name)} | {over(engine, name, 'duckdb')} | {duck_target if not first else ''} |")
                lines.append(f"| {name}{label}, hot median (ms), open hour at rest / compacted | {ms(engine, name)} / {ms(engine + ' compacted', name)} | | {over(engine, name, engine + ' compacted')} | <= 1.5 |")
                lines.append(f"| {name}{label}, median (ms), open hour during ingest at {LIVE_RATE:,} spans/s, one question a second | {ms(engine + ' live', name)} | chdb {ms('chdb live', name)} | {over(engine + ' live', name, 'chdb live')} | |")
                lines.append(f"| {name}{label}, median (ms), open hour during ingest / compacted | {ms(engine + ' live', name)} / {ms(engine + ' compacted', name)} | | {over(engine + ' live', name, engine + ' compacted')} | <= 2 |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans", default="1000000,8000000")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="apiscope-bench-", dir=os.environ.get("TMPDIR")) as work:
        for spans in (int(s) for s in args.spans.split(",")):
            print(f"measuring {spans:,} spans ...", file=sys.stderr, flush=True)
            results[spans] = measure(args.binary, spans, work)
            print(json.dumps(results[spans], indent=1), file=sys.stderr, flush=True)
    text = report(results)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
