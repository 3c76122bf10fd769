"""apiscope on a bucket against apiscope on a local directory, in one run.

Run through `bench/store` (which builds the release binary and the Python environment):

    bench/store                      # 1M spans
    bench/store --spans 200000

An S3-compatible server (moto's, on loopback: it stands for S3, and its own CPU is not
counted) holds the bucket. For each store, a fresh `apiscope serve` receives the load
generator's fleet over OTLP/gRPC as fast as it acknowledges it; the figures are:

- ingest: spans per CPU-second of the daemon, until every row is stored;
- requests to the store per hour of ingest at a fixed rate (the load generator at
  `--rate` spans/s for `--seconds`, scaled to an hour), by operation, with `/metrics`
  scraped every 15 s meanwhile as Prometheus would (a scrape after a flush lists the store
  for the Parquet gauges);
- the hot median (three warm-ups, five runs) of the endpoint question and of the same
  question in SQL over the spans, over the stored rows.

It prints a table of figures and ratios (bucket / local).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import run

BUCKET = "bench"


class Moto:
    """moto's S3 server on a free loopback port."""

    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = Path(os.sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=5).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=30).read()

    def env(self):
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def store_requests(daemon):
    """Requests to the store so far, by operation."""
    with urllib.request.urlopen(daemon.http + "/metrics", timeout=30) as response:
        text = response.read().decode()
    counts = {}
    for match in re.finditer(
            r'^apiscope_store_requests_total\{operation="(\w+)",outcome="(\w+)"\} ([\d.e+]+)$',
            text, re.MULTILINE):
        counts[match.group(1)] = counts.get(match.group(1), 0) + float(match.group(3))
        if match.group(2) == "error":
            counts["failed"] = counts.get("failed", 0) + float(match.group(3))
    return counts


def measure(binary, spans, rate, seconds, work, store_flags):
    figures = {}
    data = os.path.join(work, "ingest")
    daemon = run.Daemon(binary, data, "--durability", "fsync", *store_flags)
    cpu_before = daemon.cpu_seconds()
    sent = run.loadgen(binary, daemon.grpc, "--rate", "0", "--spans", str(spans),
                       "--connections", "4", "--batch", "1000")
    stored = run.acknowledged(sent)
    while daemon.metric("apiscope_buffer_rows") > 0:
        time.sleep(0.5)
    figures["ingest spans/CPU-s"] = stored / (daemon.cpu_seconds() - cpu_before)
    figures["failed requests during ingest"] = store_requests(daemon).get("failed", 0)
    queries = run.QUERIES["endpoint latency and errors"]
    for name in ["apiscope", "apiscope raw"]:
        figures[f"{name} endpoint query ms"] = run.hot_median(
            lambda sql=queries[name]: daemon.query(sql)) * 1000
    daemon.stop()
    shutil.rmtree(data, ignore_errors=True)

    paced = os.path.join(work, "paced")
    daemon = run.Daemon(binary, paced, "--durability", "fsync", *store_flags)
    before = store_requests(daemon)
    load = subprocess.Popen(
        [binary, "loadgen", "--protocol", "grpc", "--endpoint", daemon.grpc, "--seed", "7",
         "--rate", str(rate), "--duration", f"{seconds}s", "--connections", "8",
         "--batch", "500"], stdout=subprocess.DEVNULL)
    started = time.time()
    while load.poll() is None:
        time.sleep(min(15.0, max(0.0, started + seconds - time.time())) or 0.2)
        if load.poll() is None:
            store_requests(daemon)
    after = store_requests(daemon)
    for operation in sorted(set(after) | set(before)):
        done = after.get(operation, 0) - before.get(operation, 0)
        figures[f"{operation} requests/hour @{rate // 1000}k spans/s"] = done * 3600 / seconds
    daemon.stop()
    shutil.rmtree(paced, ignore_errors=True)
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-store-")
    local = measure(args.binary, args.spans, args.rate, args.seconds,
                    os.path.join(work, "local"), [])
    moto = Moto()
    saved = dict(os.environ)
    os.environ.update(moto.env())
    try:
        bucket = measure(args.binary, args.spans, args.rate, args.seconds,
                         os.path.join(work, "bucket"), ["--store", f"s3://{BUCKET}/apiscope"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        moto.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(f"| figure ({args.spans:,} spans) | local directory | bucket (moto) | bucket / local |")
    print("|---|---|---|---|")
    for name in sorted(set(local) | set(bucket)):
        here, there = local.get(name, 0.0), bucket.get(name, 0.0)
        ratio = f"{there / here:.2f}" if here else "-"
        print(f"| {name} | {here:,.1f} | {there:,.1f} | {ratio} |")


if __name__ == "__main__":
    main()
