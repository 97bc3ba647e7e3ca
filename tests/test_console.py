"""What a person sees on a terminal: colour, step headers, the --quiet live line (through a real pty)."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from conftest import REPO, Project, orchestrate_bin


def _run_in_pty(project: Project, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "NO_COLOR")}
    full_env.update(PYTHONPATH=str(REPO), TERM="xterm", **(env or {}))
    process = subprocess.Popen([orchestrate_bin(), "--root", str(project.root), *args], stdin=slave,
                               stdout=slave, stderr=slave, env=full_env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    code = process.wait(10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_terminal_gets_colour_and_headers(project: Project) -> None:
    project.workflow("w", [{"name": "first", "type": "command", "run": "echo hello"},
                           {"name": "second", "type": "command", "run": "exit 1"}])
    code, screen = _run_in_pty(project, "run", "w")
    assert code == 1
    assert "\x1b[1m[1/2] first (command)\x1b[0m" in screen
    assert "\x1b[31m" in screen  # the failure in red


def test_no_color_disables_colour(project: Project) -> None:
    project.workflow("w", [{"name": "first", "type": "command", "run": "echo hello"}])
    code, screen = _run_in_pty(project, "run", "w", env={"NO_COLOR": "1"})
    assert code == 0
    assert "\x1b[" not in screen
    assert "[1/1] first (command)" in screen


def test_quiet_shows_a_live_status_line_on_a_terminal(project: Project) -> None:
    project.workflow("w", [{"name": "slow step", "type": "command", "run": "echo hidden; sleep 1.2"}])
    code, screen = _run_in_pty(project, "run", "w", "--quiet")
    assert code == 0
    assert "\r\x1b[2K[1/1] slow step … 1s" in screen
    assert "hidden" not in screen
    assert "w: 1 passed, 0 failed, 0 skipped" in screen
