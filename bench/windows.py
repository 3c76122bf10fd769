"""What the current minutes cost a question, at rest and during ingest, in one run.

    target/bench-venv/bin/python bench/windows.py --binary target/release/apiscope

A fresh daemon gets 2,000,000 spans as fast as it acknowledges; then `api_call_minutes`
and `endpoint_stats` are timed (medians, twice a second) over windows cut at whole minutes
and over windows that end now, at rest, during 40 s of ingest at 30,000 spans/s, and at
rest again. No other engine runs meanwhile. `SELECT 1` and a query whose time filter
prunes every file show what any query costs then.
"""

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time

import run

QUERIES = {
    "SELECT 1": "SELECT 1",
    "spans, every file pruned": "SELECT count(*) FROM spans WHERE time > now() + interval '1 day'",
    "api_call_minutes, an empty hour": "SELECT sum(calls) FROM api_call_minutes("
    "date_trunc('minute', now()) - interval '3 hour', date_trunc('minute', now()) - interval '2 hour')",
    "api_call_minutes, last hour in whole minutes": "SELECT sum(calls) FROM api_call_minutes("
    "date_trunc('minute', now()) - interval '1 hour', date_trunc('minute', now()))",
    "api_call_minutes, last hour to now": "SELECT sum(calls) FROM api_call_minutes(now() - interval '1 hour')",
    "api_call_minutes, the start cut only": "SELECT sum(calls) FROM api_call_minutes("
    "now() - interval '1 hour', date_trunc('minute', now()))",
    "api_call_minutes, the end cut only (the current minute)": "SELECT sum(calls) FROM api_call_minutes("
    "date_trunc('minute', now()) - interval '1 hour', now())",
    "endpoint_stats, whole minutes": run.QUERIES["endpoint latency and errors"]["apiscope"],
    "endpoint_stats(), the last hour to now": "SELECT * FROM endpoint_stats()",
}


def medians(daemon, rounds):
    times = {name: [] for name in QUERIES}
    for _ in range(rounds):
        started = time.time()
        for name, sql in QUERIES.items():
            began = time.perf_counter()
            daemon.query(sql)
            times[name].append(time.perf_counter() - began)
        time.sleep(max(0.0, started + 0.5 - time.time()))
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-windows-")
    daemon = run.Daemon(args.binary, work)
    run.loadgen(args.binary, daemon.grpc, "--rate", "0", "--spans", "2000000",
                "--connections", "4", "--batch", "1000")
    time.sleep(15)
    phases = {"at rest": medians(daemon, 15)}
    load = subprocess.Popen(
        [args.binary, "loadgen", "--protocol", "grpc", "--endpoint", daemon.grpc, "--seed", "7",
         "--rate", "30000", "--duration", "40s", "--connections", "4", "--batch", "500"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    phases["during ingest"] = medians(daemon, 40)
    load.wait()
    time.sleep(5)
    phases["at rest again"] = medians(daemon, 10)
    daemon.stop()
    shutil.rmtree(work, ignore_errors=True)
    print("| query (ms, median) | " + " | ".join(phases) + " |")
    print("|---|" + "---|" * len(phases))
    for name in QUERIES:
        print(f"| {name} | " + " | ".join(f"{p[name] * 1000:.1f}" for p in phases.values()) + " |")


if __name__ == "__main__":
    main()
