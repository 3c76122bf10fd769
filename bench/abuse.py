"""Ingest under attack: OTLP acknowledgements per second with and without an unfriendly
neighbour, and how long each timeout takes to let a silent client go.

    python3 bench/abuse.py --binary target/release/apiscope

Each phase starts a fresh daemon under `ulimit -n 1024` (the limit most services start with)
on loopback ports and sends OTLP/gRPC as fast as it is acknowledged (`apiscope loadgen
--rate 0`) for the same time. In the attack phase, before the load starts, four query
clients connect and then send statements that would build huge values, in a loop; then
about 1,500 connections per port are opened and held: idle on gRPC, half-sent headers on
HTTP, unfinished start-ups on PostgreSQL. The ratio of the two acknowledgement rates is the
figure; the issue asks for at least 0.8. The exporters connect before the attack: while an
attacker holds every connection of a port, a new exporter is refused (retryably) until idle
connections time out. Only the standard library is used.
"""

import argparse
import http.client
import json
import re
import resource
import socket
import subprocess
import tempfile
import threading
import time

CORPUS = [
    "SELECT repeat('x', 2000000000)",
    "SELECT lpad('x', 2000000000)",
    "SELECT array_repeat('x', 1000000000)",
    "SELECT range(0, 10000000000)",
    "SELECT count(*) FROM generate_series(1, 100000000000)",
    "SELECT length(string_agg(s, ',')) FROM (SELECT repeat('x', 1000000 + v) AS s "
    "FROM generate_series(1, 2000) AS t(v))",
    "SELECT cardinality(array_agg(v)) FROM generate_series(1, 300000000) AS t(v)",
    "WITH RECURSIVE t(s, n) AS (SELECT 'x', 1 UNION ALL SELECT s || s, n + 1 FROM t "
    "WHERE n < 40) SELECT max(length(s)) FROM t",
    "SELECT s || s || s || s FROM (SELECT repeat('x', 10000000) AS s)",
]


def start(binary, data_dir, extra):
    """A daemon under ulimit -n 1024; returns the process and its addresses."""

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    args = [binary, "serve", "--data-dir", data_dir]
    for flag in ["--otlp-grpc-addr", "--otlp-http-addr", "--http-addr", "--pg-addr"]:
        args += [flag, "127.0.0.1:0"]
    process = subprocess.Popen(
        args + extra,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        env={"NO_COLOR": "1", "APISCOPE_LOG": "info"},
    )
    deadline = time.time() + 60
    for line in process.stderr:
        if "apiscope ready" in line:
            addrs = dict(re.findall(r" (\w+_addr)=(\S+)", line))
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, addrs
        if time.time() > deadline:
            break
    process.kill()
    raise SystemExit("apiscope did not become ready")


def loadgen(binary, addrs, seconds):
    """The load generator, sending as fast as acknowledged; `acknowledged` reads its rate."""
    return subprocess.Popen(
        [binary, "loadgen", "--protocol", "grpc", "--endpoint", "http://" + addrs["otlp_grpc_addr"],
         "--rate", "0", "--duration", f"{seconds}s", "--connections", "4", "--batch", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def acknowledged(process):
    """Acknowledged spans per second, and failed spans, from the load generator's summary."""
    output = process.communicate()[0]
    line = next(l for l in output.splitlines() if l.startswith("acknowledged"))
    failed = next(l for l in output.splitlines() if l.startswith("failed"))
    return float(line.split()[2].rstrip("/s")), int(failed.split()[1])


def split(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def querier(addr, stop, answers):
    connection = http.client.HTTPConnection(*split(addr), timeout=60)
    n = 0
    while not stop.is_set():
        sql = CORPUS[n % len(CORPUS)]
        n += 1
        connection.request("POST", "/api/v1/query", json.dumps({"sql": sql}),
                           {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        answers.append(response.status)


def flood(addrs, per_port):
    held = []
    for key, opening in [
        ("otlp_grpc_addr", b""),
        ("otlp_http_addr", b"POST /v1/traces HTTP/1.1\r\n"),
        ("http_addr", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        ("pg_addr", bytes([0, 0, 0, 40, 0, 3])),
    ]:
        for _ in range(per_port):
            try:
                s = socket.create_connection(split(addrs[key]))
                s.sendall(opening)
                held.append(s)
            except OSError:
                pass
    return held


def closed_after(sock, within):
    started = time.time()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    return time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--per-port", type=int, default=1500)
    parser.add_argument("--queriers", type=int, default=4,
                        help="clients sending the oversized statements during the attack")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as quiet_dir:
        process, addrs = start(args.binary, quiet_dir, [])
        quiet, quiet_failed = acknowledged(loadgen(args.binary, addrs, args.seconds))
        process.terminate()
        process.wait()

    with tempfile.TemporaryDirectory() as attacked_dir:
        process, addrs = start(args.binary, attacked_dir, ["--query-timeout", "3s"])
        stop, answers = threading.Event(), []
        queriers = [threading.Thread(target=querier, args=(addrs["http_addr"], stop, answers))
                    for _ in range(args.queriers)]
        for q in queriers:
            q.start()
        # The exporters are connected before the attack, as running services are; the rate
        # is over the whole run, the attack taking all but its first second.
        sender = loadgen(args.binary, addrs, args.seconds)
        time.sleep(1)
        held = flood(addrs, args.per_port)
        attacked, attacked_failed = acknowledged(sender)
        stop.set()
        for q in queriers:
            q.join()
        for s in held:
            s.close()
        process.terminate()
        process.wait()

    with tempfile.TemporaryDirectory() as timeouts_dir:
        process, addrs = start(args.binary, timeouts_dir, [])
        slow = socket.create_connection(split(addrs["http_addr"]))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        kept = socket.create_connection(split(addrs["otlp_http_addr"]))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        pg = socket.create_connection(split(addrs["pg_addr"]))
        pg.sendall(bytes([0, 0, 0, 40]))
        grpc = socket.create_connection(split(addrs["otlp_grpc_addr"]))
        cases = [("slow HTTP header (http_header_timeout 10s)", slow),
                 ("idle HTTP/1.1 keep-alive (http_header_timeout 10s)", kept),
                 ("unfinished PostgreSQL start-up (pg_startup_timeout 10s)", pg),
                 ("idle gRPC connection (idle_timeout 60s)", grpc)]
        times = {}
        threads = [threading.Thread(target=lambda n=n, s=s: times.__setitem__(n, closed_after(s, 120)))
                   for n, s in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        process.terminate()
        process.wait()

    refused = sum(1 for status in answers if status != 200)
    print(f"acknowledged spans/s, quiet:        {quiet:12.0f} (failed {quiet_failed})")
    print(f"acknowledged spans/s, under attack: {attacked:12.0f} (failed {attacked_failed})")
    print(f"ratio:                              {attacked / quiet:12.2f}")
    print(f"oversized statements answered during the attack: {len(answers)}, refused {refused}")
    for name, _ in cases:
        print(f"closed after {times[name]:5.1f}s: {name}")


if __name__ == "__main__":
    main()
