"""What a person sees on a terminal: colour, step headers, the --quiet live line (through a real pty)."""

from __future__ import annotations


from conftest import Project, run_in_pty


def test_terminal_gets_colour_and_headers(project: Project) -> None:
    project.workflow(
        "w",
        [
            {"name": "first", "type": "command", "run": "echo hello"},
            {"name": "second", "type": "command", "run": "exit 1"},
        ],
    )
    code, screen = run_in_pty(project, "run", "w")
    assert code == 1
    assert "\x1b[1m[1/2] first (command)\x1b[0m" in screen
    assert "\x1b[31m" in screen  # the failure in red


def test_no_color_disables_colour(project: Project) -> None:
    project.workflow("w", [{"name": "first", "type": "command", "run": "echo hello"}])
    code, screen = run_in_pty(project, "run", "w", env={"NO_COLOR": "1"})
    assert code == 0
    assert "\x1b[" not in screen
    assert "[1/1] first (command)" in screen


def test_quiet_shows_a_live_status_line_on_a_terminal(project: Project) -> None:
    project.workflow("w", [{"name": "slow step", "type": "command", "run": "echo hidden; sleep 1.2"}])
    code, screen = run_in_pty(project, "run", "w", "--quiet")
    assert code == 0
    assert "\r\x1b[2K[1/1] slow step … 1s" in screen
    assert "hidden" not in screen
    assert "w: 1 passed, 0 failed, 0 skipped" in screen
