"""Guarantee 1 — crash consistency: orchestrate killed with SIGKILL at any moment leaves only
whole records, `status`/`runs` report the run as failed (interrupted), its step processes are
ended by the watchdog, and a record that is corrupt anyway never stops `runs` listing the rest."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _rel import PY, all_records_parse, clean_env, cli, kill_all, processes_with, run, wait_gone

import orchestrate

SEED = 20261127
KILLS = 50
STREAM = (
    "import sys, time\n"
    "for i in range(250):\n"
    "    sys.stdout.write('line %d %s\\n' % (i, 'x' * 300)); sys.stdout.flush(); time.sleep(0.003)\n"
)
# orchestrate with every record update written as a full snapshot (write_atomic), so kills land
# inside record writes as often as possible; the plain command is used for the other half
LAUNCH_SNAPSHOT_EVERY_UPDATE = (
    "import sys, orchestrate\norchestrate.SNAPSHOT_INTERVAL_S = 0.0\nsys.exit(orchestrate.main(sys.argv[1:]))\n"
)


def _crash_workflow(root: Path, name: str, marker: str) -> Path:
    started = root / f"{name}.started"
    quick = [{"name": "first", "type": "command", "run": ["touch", str(started)]}]
    quick += [{"name": f"quick {i}", "type": "command", "run": ["true", marker]} for i in range(12)]
    stream = {
        "name": "stream",
        "type": "command",
        "run": f"{PY} -c 'import time; time.sleep(60)' {marker}-grandchild & exec {PY} -c \"$STREAM\" {marker}",
        "env": {"STREAM": STREAM},
    }
    tail = [{"name": f"late {i}", "type": "command", "run": ["true"]} for i in range(12)]
    cleanup = {"name": "cleanup", "type": "command", "run": ["true"], "when": {"status": "always"}}
    (root / "workflows").mkdir(parents=True, exist_ok=True)
    (root / "workflows" / f"{name}.json").write_text(json.dumps({"steps": quick + [stream] + tail + [cleanup]}))
    return started


def _one_kill(root: Path, trial: int, delay: float, snapshot_every_update: bool, moment: str) -> dict[str, Any]:
    marker = f"orch-crash-{SEED}-t{trial:02d}"  # no marker is a prefix of another
    started = _crash_workflow(root, f"crash{trial}", marker)
    launcher = ["-c", LAUNCH_SNAPSHOT_EVERY_UPDATE] if snapshot_every_update else ["-m", "orchestrate"]
    process = subprocess.Popen(
        [PY, *launcher, "--root", str(root), "run", f"crash{trial}"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # start-up time varies with load: count from the first step, or from the stream step
        deadline = time.monotonic() + 20
        while moment != "start-up" and process.poll() is None and time.monotonic() < deadline:
            if started.exists() if moment == "steps" else bool(processes_with(f"{marker}-grandchild")):
                break
            time.sleep(0.005)
        time.sleep(delay)
        alive_at_kill = processes_with(marker)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        left = wait_gone(marker, timeout=orchestrate.KILL_GRACE_S + 3)
    finally:
        kill_all(marker)
    return {"trial": trial, "pid": process.pid, "delay": delay, "left": left, "alive_at_kill": bool(alive_at_kill)}


def test_sigkill_at_fifty_random_moments(tmp_path: Path) -> None:
    root = tmp_path / "project"
    rng = random.Random(SEED)
    # ten kills during start-up (parsing, creating the record), twenty from the first step on
    # (between quick steps, during record writes, at the end: reports, final record), twenty
    # while the stream step prints and its grandchild sleeps
    moments = ["start-up"] * 10 + ["steps"] * 20 + ["stream"] * 20
    plan = [
        (i, rng.uniform(0.0, {"start-up": 0.5, "steps": 1.0, "stream": 0.8}[moment]), i % 2 == 0, moment)
        for i, moment in enumerate(moments)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:  # four at a time, all sharing one runs/
        outcomes = list(pool.map(lambda p: _one_kill(root, *p), plan))

    # the killed run's step process tree is gone: the watchdog ended it
    survivors = [o for o in outcomes if o["left"]]
    assert not survivors, f"step processes outlived a SIGKILLed orchestrate: {survivors}"
    # and the proof is not vacuous: many kills caught the streaming step and its grandchild
    assert sum(o["alive_at_kill"] for o in outcomes) >= 15, outcomes

    runs = root / "runs"
    records = all_records_parse(runs)  # every runs/*.json is a whole JSON document
    assert len(records) >= KILLS * 0.75, "most kills should land after the record was created"
    by_pid = {o["pid"]: o for o in outcomes}
    assert all(r["pid"] in by_pid for r in records)

    listed = run(root, "runs", "--json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == len(records), "runs shows exactly the records, never a temporary file"
    assert all(re.fullmatch(orchestrate.RUN_ID_RE.pattern, row["run_id"]) for row in rows)
    assert not [r for r in rows if "unreadable" in r]
    statuses = {row["status"] for row in rows}
    assert "running" not in statuses and "pending" not in statuses
    interrupted = [row for row in rows if row["status"] == "failed"]
    assert interrupted and all(row.get("interrupted") and "interrupted" in row["message"] for row in interrupted)
    assert all(row["status"] in ("failed", "completed") for row in rows)
    for row in interrupted[:5]:
        status = run(root, "status", row["run_id"])
        assert status.returncode == 0 and "failed" in status.stdout and "interrupted" in status.stdout
        assert "running" not in [
            e["status"] for e in json.loads(run(root, "status", row["run_id"], "--json").stdout)["log"]
        ]

    # temporary files of killed writers are never listed, and prune removes them
    subprocess.run(
        [PY, "-m", "orchestrate", "--root", str(root), "prune", "--keep", "1000"],
        env=clean_env(),
        check=True,
        capture_output=True,
    )
    assert [p.name for p in runs.glob(".*.tmp")] == []


LAUNCH_KILL_AT_WRITE = """
import os, signal, sys, orchestrate
kill_at, seam = int(os.environ["KILL_AT"]), os.environ["KILL_SEAM"]
calls = [0]
real = getattr(os, seam)
def patched(*args):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
setattr(os, seam, patched)
orchestrate.SNAPSHOT_INTERVAL_S = float(os.environ["SNAPSHOT"])
sys.exit(orchestrate.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("seam,snapshot", [("fsync", "0"), ("replace", "0"), ("write", "60")])
def test_sigkill_inside_every_record_write(tmp_path: Path, seam: str, snapshot: str) -> None:
    """Deterministic: SIGKILL at the Nth fsync/replace/write, for every N the run makes."""
    root = tmp_path / "project"
    (root / "workflows").mkdir(parents=True)
    steps = [{"name": f"s{i}", "type": "command", "run": ["echo", f"step {i}"]} for i in range(3)]
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": steps}))
    n = 0
    while True:
        n += 1
        done = subprocess.run(
            [PY, "-c", LAUNCH_KILL_AT_WRITE, "--root", str(root), "run", "w"],
            env=clean_env(KILL_AT=str(n), KILL_SEAM=seam, SNAPSHOT=snapshot),
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        for record in all_records_parse(root / "runs"):
            assert record["schema_version"] == orchestrate.SCHEMA_VERSION
        if done.returncode != -signal.SIGKILL:
            assert done.returncode == 0, done.stderr
            break
        assert n < 200
    rows = json.loads(run(root, "runs", "--json", "--limit", "1000").stdout)
    assert rows and not [r for r in rows if "unreadable" in r or r["status"] == "running"]
    assert rows[0]["status"] == "completed"
    assert sum(1 for r in rows if r["status"] == "failed" and r.get("interrupted")) >= 1


def _record(run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": run_id,
        "workflow": "w",
        "status": "completed",
        "current": None,
        "started_at": "2026-11-27T15:40:00.123Z",
        "finished_at": "2026-11-27T15:40:01.000Z",
        "duration_s": 1.0,
        "pid": 1,
        "trigger": {"source": "cli"},
        "log": [],
        **extra,
    }


CORRUPT = {
    "truncated": lambda rid: json.dumps(_record(rid)).encode()[:40],
    "garbage": lambda rid: os.urandom(64) + b"\x00\xff",
    "empty": lambda rid: b"",
    "newer-schema": lambda rid: json.dumps(_record(rid, schema_version=99)).encode(),
    "schema-string": lambda rid: json.dumps(_record(rid, schema_version="1")).encode(),
    "not-a-record": lambda rid: b"[1, 2, 3]",
    "no-run-id": lambda rid: b'{"schema_version": 1}',
    "deep": lambda rid: b"[" * 100000 + b"]" * 100000,
    "log-not-list": lambda rid: json.dumps(_record(rid, status="running", log={"a": 1})).encode(),
    "log-items-not-objects": lambda rid: json.dumps(_record(rid, status="running", log=[1, "x", None])).encode(),
    "trigger-not-object": lambda rid: json.dumps(_record(rid, trigger="cli")).encode(),
    "fields-wrong-types": lambda rid: json.dumps(
        _record(rid, status=5, duration_s="x", message=[1], workflow={})
    ).encode(),
    "unknown-status": lambda rid: json.dumps(_record(rid, status="exploded")).encode(),
    "entry-fields-wrong": lambda rid: json.dumps(_record(rid, log=[{"step": ["a"], "status": 1}])).encode(),
    "bool-schema": lambda rid: json.dumps(_record(rid, schema_version=True)).encode(),
}


def test_corrupt_records_are_reported_and_never_stop_listing(tmp_path: Path) -> None:
    root = tmp_path / "project"
    runs = root / "runs"
    runs.mkdir(parents=True)
    good = [f"20261127T1540{i:02d}000Z-aaaaa{i}" for i in range(3)]
    for rid in good:
        (runs / f"{rid}.json").write_text(json.dumps(_record(rid)))
    bad = {}
    for i, (kind, make) in enumerate(sorted(CORRUPT.items())):
        rid = f"20261127T1541{i:02d}000Z-bbbbb{i:x}"
        (runs / f"{rid}.json").write_bytes(make(rid))
        bad[rid] = kind
    listed = run(root, "runs", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    for rid in good:
        assert re.search(rf"^{rid}\s+completed", listed.stdout, re.MULTILINE), listed.stdout
    for rid, kind in bad.items():
        line = next((ln for ln in listed.stdout.splitlines() if ln.startswith(rid)), None)
        assert line is not None, f"{kind} record missing from runs"
        assert "unreadable" in line and str(runs / f"{rid}.json") in line, (kind, line)
    as_json = json.loads(cli(root, "runs", "--json", "--limit", "1000").stdout)
    assert len(as_json) == len(good) + len(bad)
    for rid, kind in bad.items():
        for command in (["status", rid], ["status", rid, "--json"], ["logs", rid]):
            result = cli(root, *command)
            assert "Traceback" not in result.stderr, (kind, result.stderr)
            assert result.exit_code == 3, (kind, command, result.exit_code, result.stderr)
            if result.exit_code == 3:
                assert len(result.stderr.splitlines()) == 1 and "unreadable" in result.stderr
                assert str(runs / f"{rid}.json") in result.stderr
    pruned = cli(root, "prune", "--keep", "0")
    assert pruned.exit_code == 0 and "Traceback" not in pruned.stderr
    assert all((runs / f"{rid}.json").exists() for rid in bad), "prune leaves unreadable records alone"


def test_torn_journal_line_keeps_everything_before_it(tmp_path: Path) -> None:
    root = tmp_path / "project"
    runs = root / "runs"
    runs.mkdir(parents=True)
    rid = "20261127T154000000Z-cccccc"
    entry = {"step": "a", "status": "pending"}
    (runs / f"{rid}.json").write_text(
        json.dumps(_record(rid, status="running", pid=2**22 + 7, log=[entry, entry], journal_seq=0))
    )
    passed = json.dumps({"seq": 1, "index": 0, "entry": {"step": "a", "status": "passed"}, "current": None})
    (runs / f"{rid}.journal").write_text(passed + "\n" + passed[:20])
    record = json.loads(run(root, "status", rid, "--json").stdout)
    assert record["status"] == "failed" and record["interrupted"]
    assert record["log"][0]["status"] == "passed"


LAUNCH_DIE_BEFORE_REGISTERING = """
import os, signal, sys, orchestrate
def die(pgid):  # SIGKILL in the window between the step's fork and its registration
    os.kill(os.getpid(), signal.SIGKILL)
orchestrate.WATCHDOG.watch = die
sys.exit(orchestrate.main(sys.argv[1:]))
"""


def test_sigkill_between_fork_and_registration_still_ends_the_step(tmp_path: Path) -> None:
    """The watchdog also finds the step by the token in its environment (the race the fifty
    kills once hit under load: orchestrate killed while Popen was starting the step)."""
    root = tmp_path / "project"
    marker = f"orch-crash-{SEED}-unregistered"
    sleeper = f"{PY} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'"
    step = {"name": "s", "type": "command", "run": f"{sleeper} {marker}-grandchild & exec {sleeper} {marker}"}
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": [step]}))
    try:
        done = subprocess.run(
            [PY, "-c", LAUNCH_DIE_BEFORE_REGISTERING, "--root", str(root), "run", "w"],
            env=clean_env(),
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == -signal.SIGKILL
        # they ignore SIGTERM: gone after the grace period, by SIGKILL
        assert wait_gone(marker, orchestrate.KILL_GRACE_S + 3) == []
    finally:
        kill_all(marker)
    rows = json.loads(run(root, "runs", "--json").stdout)
    assert rows[0]["status"] == "failed" and rows[0]["interrupted"]
