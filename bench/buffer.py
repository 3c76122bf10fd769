"""What the rows not yet flushed cost a question, in one run.

    target/bench-venv/bin/python bench/buffer.py --binary target/release/apiscope

Two fresh daemons get the same 200,000 spans (the load generator's fleet, as fast as
acknowledged): one keeps them all in its buffer (`--flush-interval 1h`, `--flush-rows`
above the count), the other stores them, with their rollups, as usual. The hot median of
the endpoint question (`endpoint_stats`, which answers the buffer's share from a rollup of
the buffered rows made by the first question and kept while they are buffered, and the
files' from their rollups) and of the same question in SQL over the
spans, on each.
"""

import argparse
import os
import shutil
import tempfile
import time

import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--spans", type=int, default=200_000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-buffer-")
    queries = run.QUERIES["endpoint latency and errors"]
    figures = {}
    for place, flags in [
        ("buffer", ["--flush-interval", "1h", "--flush-rows", str(2 * args.spans)]),
        ("files", []),
    ]:
        data = os.path.join(work, place)
        daemon = run.Daemon(args.binary, data, *flags)
        run.loadgen(args.binary, daemon.grpc, "--rate", "0", "--spans", str(args.spans),
                    "--connections", "4", "--batch", "1000")
        if place == "files":
            while daemon.metric("apiscope_buffer_rows") > 0:
                time.sleep(0.5)
            run.wait_for_rollups(data)
        else:
            assert daemon.metric("apiscope_buffer_rows") >= args.spans * 0.99
        for name in ["apiscope", "apiscope raw"]:
            figures[(name, place)] = run.hot_median(lambda sql=queries[name]: daemon.query(sql))
        daemon.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(f"| question ({args.spans:,} spans) | all in the buffer (ms) | all in files (ms) | buffer / files |")
    print("|---|---|---|---|")
    for name, label in [("apiscope", "endpoint_stats"), ("apiscope raw", "the same in SQL over spans")]:
        here, there = figures[(name, "buffer")], figures[(name, "files")]
        print(f"| {label} | {here * 1000:.1f} | {there * 1000:.1f} | {here / there:.2f} |")


if __name__ == "__main__":
    main()
