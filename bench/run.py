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
import urllib.request
from pathlib import Path

import chdb
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from chdb import session as chdb_session

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RUNS = 5
# Runs before the timed ones: a freshly started daemon reads footers and rollups on its first queries.
WARM_UPS = 3

# The five questions, as a user of each engine would write them.
QUERIES = {
    "endpoint latency and errors": {
        # The question as apiscope answers it (from per-minute rollups) over a window that
        # holds every span; "apiscope raw" is the same question in SQL over the spans.
        "apiscope": "SELECT endpoint, calls, p50_ms, p95_ms, p99_ms, error_rate FROM "
        "endpoint_stats('2000-01-01T00:00:00Z', '2100-01-01T00:00:00Z') ORDER BY calls DESC",
        "apiscope raw": "SELECT endpoint, count(*) AS calls, "
        "approx_percentile_cont(duration_ms, 0.5) AS p50, "
        "approx_percentile_cont(duration_ms, 0.95) AS p95, "
        "approx_percentile_cont(duration_ms, 0.99) AS p99, "
        "avg(CASE WHEN status_code = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate "
        "FROM spans WHERE span_kind = 'server' GROUP BY endpoint ORDER BY calls DESC",
        "duckdb": "SELECT endpoint, count(*) AS calls, approx_quantile(duration_ns / 1e6, 0.5), "
        "approx_quantile(duration_ns / 1e6, 0.95), approx_quantile(duration_ns / 1e6, 0.99), "
        "avg(CASE WHEN status_code = 'error' THEN 1.0 ELSE 0.0 END) "
        "FROM {spans} WHERE span_kind = 'server' GROUP BY endpoint ORDER BY calls DESC",
        "chdb": "SELECT SpanName, count() AS calls, quantiles(0.5, 0.95, 0.99)(Duration / 1e6), "
        "countIf(StatusCode = 'Error') / count() FROM otel_traces WHERE SpanKind = 'Server' "
        "GROUP BY SpanName ORDER BY calls DESC",
    },
    "errors per client": {
        "apiscope": "SELECT client_id, count(*) AS errors FROM spans "
        "WHERE span_kind = 'server' AND status_code = 'error' GROUP BY client_id ORDER BY errors DESC",
        "duckdb": "SELECT client_id, count(*) AS errors FROM {spans} "
        "WHERE span_kind = 'server' AND status_code = 'error' GROUP BY client_id ORDER BY errors DESC",
        "chdb": "SELECT SpanAttributes['client.id'] AS client, count() AS errors FROM otel_traces "
        "WHERE SpanKind = 'Server' AND StatusCode = 'Error' GROUP BY client ORDER BY errors DESC",
    },
    "dependency latency": {
        "apiscope": "SELECT service_name, dependency, count(*) AS calls, "
        "approx_percentile_cont(duration_ms, 0.95) AS p95 FROM spans "
        "WHERE span_kind = 'client' GROUP BY service_name, dependency ORDER BY calls DESC",
        "duckdb": "SELECT service_name, dependency, count(*) AS calls, "
        "approx_quantile(duration_ns / 1e6, 0.95) FROM {spans} "
        "WHERE span_kind = 'client' GROUP BY service_name, dependency ORDER BY calls DESC",
        "chdb": "SELECT ServiceName, multiIf(SpanAttributes['peer.service'] != '', "
        "SpanAttributes['peer.service'], SpanAttributes['db.system.name'] != '', "
        "SpanAttributes['db.system.name'], SpanAttributes['db.system'] != '', "
        "SpanAttributes['db.system'], SpanAttributes['messaging.system']) AS dependency, "
        "count() AS calls, quantile(0.95)(Duration / 1e6) FROM otel_traces "
        "WHERE SpanKind = 'Client' GROUP BY ServiceName, dependency ORDER BY calls DESC",
    },
    "one trace by id": {
        "apiscope": "SELECT * FROM spans WHERE trace_id = '{trace_id}'",
        "duckdb": "SELECT * FROM {spans} WHERE trace_id = '{trace_id}'",
        "chdb": "SELECT * FROM otel_traces WHERE TraceId = '{trace_id}'",
    },
    "non-promoted attribute": {
        "apiscope": "SELECT count(*) FROM spans WHERE attributes['db.operation.name'] = 'SELECT'",
        "duckdb": "SELECT count(*) FROM {spans} WHERE attributes['db.operation.name'] = 'SELECT'",
        "chdb": "SELECT count() FROM otel_traces WHERE SpanAttributes['db.operation.name'] = 'SELECT'",
    },
}

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
        request = urllib.request.Request(
            self.http + "/api/v1/query", data=sql.encode(),
            headers={"content-type": "application/sql"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)

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


def parquet_bytes(data_dir):
    return sum(os.path.getsize(f) for f in glob.glob(f"{data_dir}/spans/*/*/*.parquet"))


def rollup_bytes(data_dir):
    return sum(os.path.getsize(f) for f in glob.glob(f"{data_dir}/spans/*/*/.rollup/*.parquet"))


def wait_for_rollups(data_dir):
    """Until every spans file has its per-minute rollup (the daemon writes them every 5 s)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        missing = [f for f in glob.glob(f"{data_dir}/spans/*/*/*.parquet")
                   if not os.path.exists(os.path.join(os.path.dirname(f), ".rollup", os.path.basename(f)))]
        if not missing:
            return
        time.sleep(0.2)
    raise RuntimeError(f"rollups missing for {len(missing)} files")


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


def measure(binary, spans, work):
    data = os.path.join(work, f"apiscope-{spans}")
    figures = {}

    # 1. apiscope ingest, until every row is in Parquet.
    daemon = Daemon(binary, data, "--durability", "fsync")
    cpu_before = daemon.cpu_seconds()
    started = time.time()
    sent = loadgen(binary, daemon.grpc, "--rate", "0", "--spans", str(spans),
                   "--connections", "4", "--batch", "1000")
    stored = acknowledged(sent)
    while daemon.metric("apiscope_buffer_rows") > 0:
        time.sleep(0.5)
    # The rollups of the last files are part of ingesting them.
    wait_for_rollups(data)
    figures["apiscope ingest spans/CPU-s"] = stored / (daemon.cpu_seconds() - cpu_before)
    figures["apiscope ingest spans/s (wall)"] = stored / (time.time() - started)
    figures["apiscope peak RSS MiB"] = daemon.peak_rss() / 2**20
    daemon.stop()
    figures["spans"] = stored

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
    for number, path in enumerate(glob.glob(f"{data}/spans/*/*/*.parquet")):
        source = pq.ParquetFile(path)
        pq.write_table(peer_rows(source.read()), os.path.join(peers, f"{number}.parquet"),
                       compression="zstd", row_group_size=source.metadata.row_group(0).num_rows)

    # chdb: the same rows into otel_traces.
    ch_dir = os.path.join(work, f"chdb-{spans}")
    ch = chdb_session.Session(ch_dir)
    ch.query((HERE / "otel_traces.sql").read_text())
    cpu_before = time.process_time()
    ch.query(CHDB_INSERT.format(files=f"{peers}/*.parquet"))
    figures["chdb ingest spans/CPU-s"] = stored / (time.process_time() - cpu_before)
    ch.query("OPTIMIZE TABLE otel_traces FINAL")
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
    del table

    # 3. Queries, hot.
    daemon = Daemon(binary, data)
    wait_for_rollups(data)
    duck = duckdb.connect()
    duck.execute("SET threads = 2")
    spans_relation = f"read_parquet('{data}/spans/*/*/*.parquet', hive_partitioning = false)"
    for name, sql in QUERIES.items():
        texts = {engine: text.format(spans=spans_relation, trace_id=trace_id)
                 for engine, text in sql.items()}
        figures[f"apiscope {name} s"] = hot_median(lambda: daemon.query(texts["apiscope"]))
        if "apiscope raw" in texts:
            figures[f"apiscope raw {name} s"] = hot_median(lambda: daemon.query(texts["apiscope raw"]))
        figures[f"chdb {name} s"] = hot_median(lambda: ch.query(texts["chdb"], "CSV"))
        figures[f"duckdb {name} s"] = hot_median(lambda: duck.sql(texts["duckdb"]).to_arrow_table())
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
        lines += [
            f"### {spans:,} spans",
            "",
            "| figure | apiscope | peer | apiscope / peer | target |",
            "|---|---|---|---|---|",
            f"| ingest, spans per CPU-second (fsync) | {f['apiscope ingest spans/CPU-s']:,.0f} | chdb {f['chdb ingest spans/CPU-s']:,.0f} | {ratio('apiscope ingest spans/CPU-s', 'chdb ingest spans/CPU-s'):.2f} | >= 2 |",
            f"| ingest wall rate, load generator on the same cores | {f['apiscope ingest spans/s (wall)']:,.0f} spans/s | | | |",
            f"| acknowledgement p50 / p99 at 100k spans/s offered | {f['apiscope ack p50 ms @100k/s']:.1f} / {f['apiscope ack p99 ms @100k/s']:.1f} ms ({f['apiscope spans/s reached @100k/s']:,.0f} spans/s reached) | | | p99 < 50 ms |",
            f"| peak RSS during ingest | {f['apiscope peak RSS MiB']:,.0f} MiB | | | < 1024 MiB |",
            f"| bytes per span | {f['apiscope bytes/span']:.1f} | chdb {f['chdb bytes/span']:.1f} | {ratio('apiscope bytes/span', 'chdb bytes/span'):.2f} | <= 0.6 |",
            f"| bytes per span | | pyarrow zstd {f['pyarrow zstd bytes/span']:.1f} | {ratio('apiscope bytes/span', 'pyarrow zstd bytes/span'):.2f} | <= 0.8 |",
            f"| of which per-minute rollups | {f['apiscope rollup bytes/span']:.2f} | | | |",
        ]
        targets = {"endpoint latency and errors": ("<= 0.4", "<= 1"), "non-promoted attribute": ("<= 1", "")}
        for name in QUERIES:
            a, c, d = (f[f"{engine} {name} s"] for engine in ("apiscope", "chdb", "duckdb"))
            chdb_target, duck_target = targets.get(name, ("", ""))
            if name == "one trace by id":
                chdb_target = "< 50 ms"
            lines.append(f"| {name}, hot median (ms) | {a * 1000:.1f} | chdb {c * 1000:.1f} | {a / c:.2f} | {chdb_target} |")
            lines.append(f"| {name}, hot median (ms) | | duckdb {d * 1000:.1f} | {a / d:.2f} | {duck_target} |")
            if f"apiscope raw {name} s" in f:
                r = f[f"apiscope raw {name} s"]
                lines.append(f"| {name}, SQL over the spans, hot median (ms) | {r * 1000:.1f} | chdb {c * 1000:.1f} | {r / c:.2f} | |")
                lines.append(f"| {name}, SQL over the spans, hot median (ms) | | duckdb {d * 1000:.1f} | {r / d:.2f} | |")
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
