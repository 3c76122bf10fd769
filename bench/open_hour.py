"""How many files the open hour holds while a steady load runs, in one run.

    target/bench-venv/bin/python bench/open_hour.py --binary target/release/apiscope

A fresh daemon receives the load generator's fleet at `--rate` spans/s for `--seconds` (by
default 30,000 spans/s for six minutes); `/metrics` is read every 5 s for the live files of
`spans` (all in the open hour). Then, once the buffer is empty and merges have had two
passes, the files at rest, by size. Prints one line.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time

import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--rate", type=int, default=30_000)
    parser.add_argument("--seconds", type=int, default=360)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="apiscope-bench-open-hour-")
    data = os.path.join(work, "data")
    daemon = run.Daemon(args.binary, data, "--durability", "fsync")
    load = subprocess.Popen(
        [args.binary, "loadgen", "--protocol", "grpc", "--endpoint", daemon.grpc, "--seed", "7",
         "--rate", str(args.rate), "--duration", f"{args.seconds}s", "--connections", "4",
         "--batch", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while load.poll() is None:
        samples.append(daemon.metric('apiscope_parquet_files{table="spans"}'))
        time.sleep(5)
    while daemon.metric("apiscope_buffer_rows") > 0:
        time.sleep(0.5)
    time.sleep(25)
    sizes = [os.path.getsize(os.path.join(data, "spans", f)) for f in run.live_files(data, "spans")]
    small = sum(1 for size in sizes if size <= 4 * 2**20)
    print(f"{args.rate:,} spans/s for {args.seconds} s: at most {max(samples):.0f} spans files "
          f"during the load (every minute: {[int(n) for n in samples[::12]]}); at rest "
          f"{len(sizes)} ({small} of at most 4 MiB); "
          f"{daemon.metric('apiscope_compacted_files_total'):.0f} files merged; "
          f"peak RSS {daemon.peak_rss() / 2**20:.0f} MiB")
    daemon.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
