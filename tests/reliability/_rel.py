"""Helpers shared by the reliability suite (issue 6): real orchestrate processes, process-tree
inspection through /proc, and the checks every guarantee repeats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def orchestrate_argv(root: Path, *args: str) -> list[str]:
    """The real command, from this checkout (not whatever another worktree installed)."""
    return [PY, "-m", "orchestrate", "--root", str(root), *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "CI",
            "GITHUB_ACTIONS",
            "GITLAB_CI",
            "JENKINS_URL",
            "JENKINS_HOME",
            "BUILD_URL",
            "GITHUB_STEP_SUMMARY",
            "ORCHESTRATE_SKIP",
            "ORCHESTRATE_SHARD",
            "ORCHESTRATE_ROOT",
        )
    }
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def start(root: Path, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(orchestrate_argv(root, *args), env=env or clean_env(), stdin=subprocess.DEVNULL, **kwargs)


def run(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        orchestrate_argv(root, *args),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def _state(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 :].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains marker."""
    found = []
    needle = marker.encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline and _state(pid) not in (None, "Z", "X"):
            found.append(int(pid))
    return found


def wait_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_all(marker: str) -> None:
    """Test cleanup: never leave a process behind, whatever orchestrate did."""
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for_file(path: Path, timeout: float = 20, contains: bytes | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (contains is None or contains in path.read_bytes()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def all_records_parse(runs: Path) -> list[dict[str, Any]]:
    """Every runs/*.json left behind is a whole JSON document."""
    records = []
    for path in sorted(runs.glob("*.json")):
        records.append(json.loads(path.read_bytes()))
    return records


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_error(result: Any, *places: str) -> None:
    """Exit 2, exactly one line on stderr naming the place, no traceback."""
    stderr = result.stderr
    assert result.exit_code if hasattr(result, "exit_code") else result.returncode
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, f"exit {code}, stderr: {stderr!r}"
    assert "Traceback" not in stderr and "Traceback" not in (result.stdout or "")
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("orchestrate: error: "), lines[0]
    for place in places:
        assert place in lines[0], f"{place!r} not in {lines[0]!r}"


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI in-process (fast): Typer's CliRunner, stdout and stderr apart."""
    from typer.testing import CliRunner

    import orchestrate

    return CliRunner().invoke(orchestrate.app, ["--root", str(root), *args], env=env, catch_exceptions=False)
