"""What a question costs a second after the one before, against right after it.

    target/bench-venv/bin/python bench/pause.py --binary target/release/apiscope

A fresh daemon gets 2,000,000 spans as fast as it acknowledges; then, for 40 s at rest and
for 40 s of ingest at 30,000 spans/s, the per-endpoint question and the non-promoted
attribute filter of `bench/run` are each asked a second after the question before and again
right after it (medians in ms). An engineer's questions and a dashboard's refreshes come
seconds apart; a benchmark's come back to back. The difference is what a query pays for
having been the first in a while (bringing the tables' logs up to date, for one).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import run

SECONDS = 40


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-pause-", dir=os.environ.get("TMPDIR"))
    try:
        daemon = run.Daemon(args.binary, os.path.join(work, "data"))
        run.loadgen(args.binary, daemon.grpc, "--rate", "0", "--spans", "2000000")
        questions = {
            "endpoint": run.QUERIES["endpoint latency and errors"]["apiscope"],
            "attribute": run.QUERIES["non-promoted attribute"]["apiscope"],
        }
        for text in questions.values():
            for _ in range(run.WARM_UPS):
                daemon.query(text)

        def timed(text):
            began = time.perf_counter()
            daemon.query(text)
            return (time.perf_counter() - began) * 1000

        def phase(label, load=None):
            times = {(name, when): [] for name in questions for when in ("after", "right")}
            end = time.time() + SECONDS
            while load.poll() is None if load else time.time() < end:
                for name, text in questions.items():
                    time.sleep(1.05)
                    times[(name, "after")].append(timed(text))
                    times[(name, "right")].append(timed(text))
            for name in questions:
                after = statistics.median(times[(name, "after")])
                right = statistics.median(times[(name, "right")])
                print(f"{label:>14} | {name:>9} | a second after: {after:6.1f} ms | "
                      f"right after: {right:6.1f} ms | {after / right:.2f}", flush=True)

        phase("at rest")
        load = subprocess.Popen(
            [args.binary, "loadgen", "--protocol", "grpc", "--endpoint", daemon.grpc,
             "--seed", "7", "--rate", "30000", "--duration", f"{SECONDS}s",
             "--connections", "4", "--batch", "500"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        phase("during ingest", load)
        daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
