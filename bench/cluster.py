"""apiscope's SQL on its Ballista cluster against one node, in one run.

Run through `bench/cluster` (which builds the release binary and the Python environment):

    bench/cluster                    # 8M spans
    bench/cluster --spans 1000000

A collector (`apiscope serve --store DIR`, a local directory standing for the bucket) receives
the load generator's fleet and flushes it. Then, over the same store, each query is timed
(three warm-ups, then the median of five runs) on:

- the collector alone (one node: its own engine, the 2 cores);
- a front-end (`serve --cluster`) over a scheduler and one executor (`--concurrency 2`);
- the same with a second executor (`--concurrency 2` each): two executors on the same 2 cores,
  so the ratio shows the cluster's overhead more than a speed-up.

The queries: three scans of every span (the endpoint question in SQL, with its percentile
sketch; a distinct count of traces, which shuffles every trace id; a join of server spans
with their client spans) and a tiny one (`SELECT span_id FROM spans LIMIT 1`, which stops at
the first rows it reads): planning, scheduling and fetching a job against answering locally.
Every answer is checked against the collector's.

It prints a table of figures and ratios.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import run

QUERIES = {
    "endpoint question (SQL, sketch)": run.QUERIES["endpoint latency and errors"]["apiscope raw"],
    "distinct traces": "SELECT count(DISTINCT trace_id) FROM spans",
    "server x client join": "SELECT s.endpoint, c.dependency, count(*) AS calls, "
    "sum(c.duration_ms) AS ms FROM spans s JOIN spans c "
    "ON c.trace_id = s.trace_id AND c.parent_span_id = s.span_id "
    "WHERE s.span_kind = 'server' AND c.span_kind = 'client' "
    "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
    "tiny (LIMIT 1)": "SELECT span_id FROM spans LIMIT 1",
}

# How each answer is checked against the collector's (see run.differences): percentiles
# within the tolerance two sketches may differ by, sums of milliseconds alike.
CHECKS = {
    "endpoint question (SQL, sketch)": run.QUERIES["endpoint latency and errors"]["check"],
    "distinct traces": ("count",),
    "server x client join": ("key", "key", "count", "pct"),
}


def free_ports(count):
    """A free loopback port whose next `count - 1` ports are free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for next_port in range(port + 1, port + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", next_port))
            return port
        except OSError:
            continue


class Role:
    """`apiscope scheduler` or `apiscope executor`, its log discarded."""

    def __init__(self, binary, *args):
        self.process = subprocess.Popen(
            [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "APISCOPE_LOG": "warn"})

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def executors_registered(metrics_url):
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("apiscope_cluster_executors "):
                return float(line.split()[1])
    return 0.0


def wait_for_executors(metrics_url, count):
    deadline = time.time() + 120
    while True:
        try:
            if executors_registered(metrics_url) >= count:
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{count} executors did not register")
        time.sleep(0.2)


def timed(daemon, queries, expected):
    """The hot median of each query on `daemon`, in ms; each answer checked."""
    figures = {}
    for name, sql in queries.items():
        rows = daemon.query(sql)["rows"]
        if name in CHECKS:
            wrong = run.differences(CHECKS[name], expected[name], rows)
        else:
            wrong = None if len(rows) == 1 else f"{len(rows)} rows, not 1"
        if wrong:
            raise RuntimeError(f"{name}: {wrong}")
        figures[name] = run.hot_median(lambda sql=sql: daemon.query(sql)) * 1000
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans", type=int, default=8_000_000)
    args = parser.parse_args()
    binary = args.binary
    work = tempfile.mkdtemp(prefix="apiscope-bench-cluster-")
    store = os.path.join(work, "store")
    roles = []
    daemons = []
    try:
        collector = run.Daemon(binary, os.path.join(work, "collector"), "--store", store)
        daemons.append(collector)
        sent = run.loadgen(binary, collector.grpc, "--rate", "0", "--spans", str(args.spans),
                           "--connections", "4", "--batch", "1000")
        stored = run.acknowledged(sent)
        while collector.metric("apiscope_buffer_rows") > 0:
            time.sleep(0.5)
        expected = {name: collector.query(sql)["rows"] for name, sql in QUERIES.items()}
        results = {"one node": timed(collector, QUERIES, expected)}

        port = free_ports(1)
        scheduler = f"127.0.0.1:{port}"
        roles.append(Role(binary, "scheduler", "--bind", scheduler, "--store", store))
        front = run.Daemon(binary, os.path.join(work, "front"), "--store", store,
                           "--cluster", f"df://{scheduler}", "--query-timeout", "600s")
        daemons.append(front)
        for executors in (1, 2):
            port = free_ports(3)
            roles.append(Role(binary, "executor", "--scheduler", f"df://{scheduler}",
                              "--bind", f"127.0.0.1:{port}", "--store", store,
                              "--concurrency", "2",
                              "--work-dir", os.path.join(work, f"executor-{executors}")))
            wait_for_executors(f"http://{scheduler}/metrics", executors)
            name = f"cluster, {executors} executor{'s' if executors > 1 else ''}"
            results[name] = timed(front, QUERIES, expected)
    finally:
        for role in roles:
            role.stop()
        for daemon in daemons:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)

    one, c1, c2 = results["one node"], results["cluster, 1 executor"], results["cluster, 2 executors"]
    print(f"{stored:,} spans; hot medians in ms (three warm-ups, five runs)\n")
    print("| query | one node | cluster, 1 executor | cluster, 2 executors "
          "| 1 executor / one node | 2 executors / 1 executor |")
    print("|---|---|---|---|---|---|")
    for name in QUERIES:
        print(f"| {name} | {one[name]:,.1f} | {c1[name]:,.1f} | {c2[name]:,.1f} "
              f"| {c1[name] / one[name]:.2f} | {c2[name] / c1[name]:.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
