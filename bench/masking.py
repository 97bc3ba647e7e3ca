#!/usr/bin/env python3
"""Masking cost (issue 12): a step printing SIZE bytes with a long secret vs with none.

    python bench/masking.py [--quick] [--size MB] [--secret-kb KB] [--checkout DIR] [--json-out PATH]

Standard library only. One workflow, one `command` step printing SIZE bytes of 80-byte
lines (`yes | head -c`), run by the real `orchestrate run` of DIR (default: this checkout).
The workflow lists "secrets": ["BIG"]; the baseline runs it with BIG unset (nothing to
mask), the measured side with BIG set to a random secret of KB kilobytes (default 120),
alternating the two so that drift on a noisy machine hits both alike. It also times
StreamMasker alone, in-process, on the same bytes in 64 KiB writes, and on output that
keeps ending in the secret's first half (the hold-back's worst ordinary case).

The figure is the ratio of medians, secret / no secret; the target is <= 1.5x. Before
issue 12 the hold-back sliced the secret once per possible length on every write:
quadratic in the secret's length (20 MB with a 120 KB secret went from 0.1 s to 3 s).
It prints a table, writes JSON (--json-out) and exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MB = 1000 * 1000
TARGET_RATIO = 1.5


def project(root: Path, size: int) -> None:
    (root / "workflows").mkdir(parents=True)
    step = {"name": "print", "type": "command", "run": f"yes {'x' * 79} | head -c {size}"}
    (root / "workflows" / "w.json").write_text(json.dumps({"secrets": ["BIG"], "steps": [step]}))


def timed_run(checkout: Path, root: Path, secret: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BIG")}
    env["PYTHONPATH"] = str(checkout)
    if secret is not None:
        env["BIG"] = secret
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrate", "--root", str(root), "run", "w", "--quiet"],
        # cwd: `python -m` imports from the current folder before PYTHONPATH
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: orchestrate run failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return took


def in_process(checkout: Path, data: bytes, secret: str, writes: list[bytes]) -> dict[str, float]:
    """StreamMasker alone: the same bytes with and without the secret, and the worst case."""
    sys.path.insert(0, str(checkout))
    import orchestrate

    def feed(masker: Any, chunks: list[bytes]) -> float:
        stream = orchestrate.StreamMasker(masker)
        started = time.perf_counter()
        for chunk in chunks:
            stream.feed(chunk)
        stream.flush()
        return time.perf_counter() - started

    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    return {
        "none_s": feed(orchestrate.Masker(), chunks),
        "secret_s": feed(orchestrate.Masker([secret]), chunks),
        "partial_ends_s": feed(orchestrate.Masker([secret]), writes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 MB, 2 pairs: a smoke test")
    parser.add_argument("--size", type=float, default=20.0, help="MB the step prints (default 20)")
    parser.add_argument("--secret-kb", type=float, default=120.0, help="secret length in KB (default 120)")
    parser.add_argument("--reps", type=int, default=5, help="alternating pairs (default 5)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="folder holding the orchestrate.py to time")
    parser.add_argument("--json-out", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    size = int((2.0 if args.quick else args.size) * MB)
    reps = 2 if args.quick else args.reps
    secret = os.urandom(int(args.secret_kb * 1000) // 2).hex()
    with tempfile.TemporaryDirectory(prefix="orchestrate-bench-mask-") as tmp:
        root = Path(tmp) / "p"
        project(root, size)
        timed_run(args.checkout, root, None)  # warm-up: caches, first run id
        plain: list[float] = []
        masked: list[float] = []
        for n in range(reps):
            pair = [(plain, None), (masked, secret)]
            for side, value in pair if n % 2 == 0 else pair[::-1]:
                side.append(timed_run(args.checkout, root, value))
    line = ("x" * 79 + "\n").encode()
    data = line * (size // len(line))
    half = secret[: len(secret) // 2].encode()
    writes = [b"y" * 4000 + half] * max(1, size // (4000 + len(half)))
    alone = in_process(args.checkout, data, secret, writes)
    ratio = statistics.median(masked) / statistics.median(plain)
    figures = {
        "size_bytes": size,
        "secret_bytes": len(secret),
        "pairs": reps,
        "run_no_secret_s": [round(t, 4) for t in plain],
        "run_secret_s": [round(t, 4) for t in masked],
        "run_ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
        "stream_masker": {k: round(v, 4) for k, v in alone.items()},
    }
    print(f"masking: {size / MB:.0f} MB of output, a {len(secret) / 1000:.0f} KB secret, {reps} pairs")
    print(f"  orchestrate run, no secret   median {statistics.median(plain):.3f} s")
    print(f"  orchestrate run, the secret  median {statistics.median(masked):.3f} s")
    print(
        f"  ratio                        {ratio:.2f}x (target <= {TARGET_RATIO}x: "
        f"{'ok' if figures['ok'] else 'MISSED'})"
    )
    print(
        f"  StreamMasker alone: {alone['none_s']:.3f} s without, {alone['secret_s']:.3f} s with the secret, "
        f"{alone['partial_ends_s']:.3f} s for {len(writes)} writes ending in half the secret"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
