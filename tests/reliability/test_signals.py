"""Guarantee 2 — signals: SIGINT or SIGTERM to `orchestrate run` while a step that ignores
SIGTERM and has grandchildren runs: the whole tree is gone within the grace period, the run
is recorded as failed with the reason, the JUnit report is written, exit 130 / 143."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _rel import PY, clean_env, kill_all, orchestrate_argv, processes_with, wait_gone

import orchestrate

STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
POLITE = "import sys, time; print('ready', flush=True); time.sleep(60)"


def _workflow(root: Path, marker: str, code: str) -> None:
    steps = [
        {"name": "first", "type": "command", "run": ["true"]},
        {
            "name": "stubborn",
            "type": "command",
            # the shell ignores SIGTERM too; two grandchildren, one in a subshell (reparented)
            "run": ("trap '' TERM; " if code == STUBBORN else "") + f'{PY} -c "{code}" {marker}-g1 & '
            f'( {PY} -c "{code}" {marker}-g2 & ) ; {PY} -c "{code}" {marker}-child',
        },
        {"name": "never", "type": "command", "run": ["true"]},
    ]
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": steps}))


def _interrupt(tmp: Path, signum: int, code: str) -> dict[str, Any]:
    root = tmp / f"project-{signum}-{len(code)}"
    marker = f"orch-signal-{signum}-{len(code)}-{id(root)}"
    _workflow(root, marker, code)
    junit_copy = root / "ci" / "report.xml"
    process = subprocess.Popen(
        orchestrate_argv(root, "run", "w", "--junit-xml", str(junit_copy)),
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        log = None
        deadline = time.monotonic() + 30
        while log is None and time.monotonic() < deadline:
            log = next((root / "runs").glob("*/02-stubborn.log"), None) if (root / "runs").exists() else None
            time.sleep(0.02)
        assert log is not None
        while log.read_bytes().count(b"ready") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(processes_with(marker)) >= 3
        sent = time.monotonic()
        process.send_signal(signum)
        left = wait_gone(marker, timeout=orchestrate.KILL_GRACE_S + 5)
        gone_after = time.monotonic() - sent
        out, err = process.communicate(timeout=20)
        return {
            "root": root,
            "code": process.returncode,
            "gone_after": gone_after,
            "left": left,
            "stdout": out.decode(),
            "stderr": err.decode(),
            "junit_copy": junit_copy,
        }
    finally:
        kill_all(marker)
        if process.poll() is None:
            process.kill()


def test_sigint_and_sigterm_end_the_whole_tree_and_record_the_reason(tmp_path: Path) -> None:
    cases = [(signal.SIGTERM, STUBBORN), (signal.SIGINT, STUBBORN), (signal.SIGTERM, POLITE)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda c: _interrupt(tmp_path, *c), cases))
    from conftest import assert_valid_junit

    for (signum, code), result in zip(cases, results, strict=True):
        name = signal.Signals(signum).name
        assert not result["left"], f"{name}: processes left: {result['left']}"
        # within the grace period: SIGTERM first, SIGKILL when it ends (plus scheduling slack)
        assert result["gone_after"] < orchestrate.KILL_GRACE_S + 1.0, result["gone_after"]
        if code == POLITE:
            assert result["gone_after"] < 2.0, "a step that obeys SIGTERM must not wait the grace period"
        assert result["code"] == (130 if signum == signal.SIGINT else 143), result["stderr"]
        assert "Traceback" not in result["stderr"]
        records = list((result["root"] / "runs").glob("*.json"))
        assert len(records) == 1
        record = json.loads(records[0].read_text())
        assert record["status"] == "failed" and record["interrupted"] is True
        assert f"interrupted by {name}" in record["message"]
        assert record["exit_code"] == result["code"]
        statuses = [e["status"] for e in record["log"]]
        assert statuses == ["passed", "failed", "skipped"], statuses
        assert f"interrupted by {name}" in record["log"][1]["message"]
        assert record["finished_at"] and record["current"] is None
        junit = result["root"] / "runs" / record["run_id"] / "junit.xml"
        assert_valid_junit(junit)
        assert f"interrupted by {name}" in junit.read_text()
        assert result["junit_copy"].read_bytes() == junit.read_bytes()
        assert not list((result["root"] / "runs").glob(f"{record['run_id']}.journal"))


def _start_stubborn(root: Path, marker: str, run: str) -> subprocess.Popen[bytes]:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(
        json.dumps({"steps": [{"name": "stubborn step", "type": "command", "run": run}]})
    )
    return subprocess.Popen(
        orchestrate_argv(root, "run", "w"),
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_started(root: Path, marker: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len(processes_with(marker)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(processes_with(marker)) >= count
    time.sleep(0.3)  # the handlers (trap, signal.signal) are set


def test_first_ctrl_c_says_what_it_stops_and_a_second_one_kills_at_once(tmp_path: Path) -> None:
    import select

    marker = f"orch-twice-{id(tmp_path)}"
    process = _start_stubborn(tmp_path / "p", marker, f"trap '' TERM INT; {PY} -c \"{STUBBORN}\" {marker}")
    try:
        _wait_started(tmp_path / "p", marker)
        assert process.stderr is not None
        process.send_signal(signal.SIGINT)
        ready, _, _ = select.select([process.stderr], [], [], 3)  # at once, not after the grace period
        assert ready, "nothing said on stderr after Ctrl-C"
        line = process.stderr.readline().decode()
        assert line == "orchestrate: stopping stubborn step (SIGTERM sent; SIGKILL in 5 s; Ctrl-C again to kill now)\n"
        assert processes_with(marker), "the stubborn step should still be in its grace period"
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        left = wait_gone(marker, timeout=orchestrate.KILL_GRACE_S + 5)
        assert not left
        assert time.monotonic() - sent < orchestrate.KILL_GRACE_S - 2, "the second Ctrl-C waited for the grace period"
        process.communicate(timeout=20)
        assert process.returncode == 130
    finally:
        kill_all(marker)
        if process.poll() is None:
            process.kill()


def test_ctrl_c_reaches_a_step_that_closed_its_output(tmp_path: Path) -> None:
    marker = f"orch-closed-sig-{id(tmp_path)}"
    root = tmp_path / "p"
    process = _start_stubborn(root, marker, f'exec >/dev/null 2>&1; {PY} -c "{POLITE}" {marker}')
    try:
        _wait_started(root, marker)
        process.send_signal(signal.SIGINT)
        assert not wait_gone(marker, timeout=orchestrate.KILL_GRACE_S + 5)
        process.communicate(timeout=20)
        assert process.returncode == 130
        record = json.loads(next((root / "runs").glob("*.json")).read_text())
        assert record["status"] == "failed" and record["log"][0]["message"] == "interrupted by SIGINT"
    finally:
        kill_all(marker)
        if process.poll() is None:
            process.kill()
