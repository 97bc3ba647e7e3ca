"""Load figure for `orchestrate serve`: concurrent GET /status while two runs execute.

    python bench/serve_load.py [--connections 200] [--requests 10]

Starts `orchestrate serve` on a free port of 127.0.0.1 (never anything else) in a
temporary project, starts two runs of a workflow that sleeps, then opens `connections`
keep-alive connections at once, each sending `requests` GET /status/<run_id> one after
another, and prints requests/s, p50 and p99 latency and the errors (anything but a 200).
Bounded: connections x requests requests, 60 s at most; it ends the runs it started.

The client is a few lines of asyncio on raw HTTP/1.1, not httpx: httpx's async pool with
200 connections tops out near 40 requests/s here and would measure itself, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
SLOW = {"name": "slow", "steps": [{"name": "work", "type": "command", "run": ["sleep", "120"]}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _call(base: str, method: str, path: str) -> dict:
    request = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        return dict(json.load(response))


async def _connection(port: int, paths: list[str], latencies: list[float]) -> int:
    """One keep-alive connection sending its requests in turn; returns its error count."""
    errors = 0
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        for path in paths:
            started = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            errors += not head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    return errors


async def _measure(port: int, run_ids: list[str], connections: int, requests: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    began = time.perf_counter()
    results = await asyncio.gather(
        *(
            _connection(port, [f"/status/{run_ids[(c + r) % len(run_ids)]}" for r in range(requests)], latencies)
            for c in range(connections)
        ),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - began
    errors = sum(r if isinstance(r, int) else requests for r in results)
    return latencies, errors, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10, help="requests per connection")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        (root / "workflows" / "slow.json").write_text(json.dumps(SLOW))
        port = _free_port()
        base = f"http://{LOOPBACK}:{port}"
        env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATE_API_TOKEN"}
        script = Path(sys.executable).with_name("orchestrate")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "orchestrate"]
        server = subprocess.Popen(
            [*command, "--root", str(root), "serve", "--host", LOOPBACK, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        run_ids: list[str] = []
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _call(base, "GET", "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            run_ids = [_call(base, "POST", "/start?name=slow")["run_id"] for _ in range(2)]
            while any(_call(base, "GET", f"/status/{r}")["status"] != "running" for r in run_ids):
                time.sleep(0.1)
            latencies, errors, elapsed = asyncio.run(
                asyncio.wait_for(_measure(port, run_ids, args.connections, args.requests), timeout=60)
            )
            still_running = all(_call(base, "GET", f"/status/{r}")["status"] == "running" for r in run_ids)
        finally:
            server.terminate()
            server.wait(timeout=10)
            for run_id in run_ids:  # the runs live in their own sessions: end them too
                try:
                    pid = json.loads((root / "runs" / f"{run_id}.json").read_text()).get("pid")
                    if isinstance(pid, int):
                        os.kill(pid, signal.SIGTERM)
                except (OSError, ValueError):
                    pass
            time.sleep(1)  # let them record their end before the folder goes

    total = len(latencies)
    load = os.getloadavg()[0]
    print(
        f"GET /status: {total} requests on {args.connections} concurrent keep-alive connections, "
        f"2 runs executing{'' if still_running else ' (they ended early!)'}; "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
    )
    print(
        f"  {total / elapsed:.0f} requests/s, p50 {_percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.0f} ms, errors {errors}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
