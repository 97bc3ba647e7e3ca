"""The engine with real child processes: streaming, timeouts, retries, signals, conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Project, assert_valid_junit, orchestrate_bin, REPO

PY = sys.executable


def cmd(name: str, run: object, **extra: object) -> dict:
    return {"name": name, "type": "command", "run": run, **extra}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_failing_step_skips_the_rest_but_runs_always_and_failure_steps(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("ok", "echo one"),
            cmd("boom", "echo broken >&2; exit 3"),
            cmd("later", "echo should-not-run"),
            cmd("cleanup", "echo cleaning", when={"status": "always"}),
            cmd("on failure", "echo reporting", when={"status": "failure"}),
        ],
    )
    result = project.cli("run", "w")
    assert result.exit_code == 1
    record = project.last_record()
    assert record["status"] == "failed"
    statuses = {e["step"]: e["status"] for e in record["log"]}
    assert statuses == {
        "ok": "passed",
        "boom": "failed",
        "later": "skipped",
        "cleanup": "passed",
        "on failure": "passed",
    }
    later = record["log"][2]
    assert later["message"] == "an earlier step failed (boom)"
    assert record["log"][1]["exit_code"] == 3
    assert record["log"][1]["message"] == "command exited with code 3"
    assert "broken" in record["log"][1]["output_tail"]
    assert "should-not-run" not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("w: 3 passed, 1 failed, 1 skipped in ")
    assert_valid_junit(project.runs / record["run_id"] / "junit.xml")


def test_failure_only_step_is_skipped_when_all_pass(project: Project) -> None:
    project.workflow("w", [cmd("ok", "true"), cmd("on failure", "echo x", when={"status": "failure"})])
    result = project.cli("run", "w")
    assert result.exit_code == 0
    entry = project.last_record()["log"][1]
    assert entry["status"] == "skipped"
    assert entry["message"] == "runs only after a failure (when.status = failure)"


def test_continue_on_error_is_recorded_but_ignored_by_status(project: Project) -> None:
    project.workflow("w", [cmd("flaky lint", "exit 1", continue_on_error=True), cmd("next", "echo next")])
    result = project.cli("run", "w")
    assert result.exit_code == 0
    record = project.last_record()
    assert record["status"] == "completed"
    assert record["log"][0]["status"] == "failed" and record["log"][0]["allowed_failure"] is True
    assert record["log"][1]["status"] == "passed"
    assert "1 failed (1 allowed)" in result.stdout


def test_keep_going_runs_everything_and_still_fails(project: Project) -> None:
    project.workflow("w", [cmd("a", "exit 1"), cmd("b", "echo b-ran")])
    result = project.cli("run", "w", "--keep-going")
    assert result.exit_code == 1
    assert "b-ran" in result.stdout
    assert [e["status"] for e in project.last_record()["log"]] == ["failed", "passed"]


def test_only_and_skip(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo A"), cmd("b", "echo B"), cmd("c", "echo C")])
    result = project.cli("run", "w", "--only", "b")
    assert result.exit_code == 0
    assert [e["message"] for e in project.last_record()["log"]] == [
        "not selected by --only",
        "",
        "not selected by --only",
    ]
    result = project.cli("run", "w", "--skip", "a", "--skip", "c")
    assert [e["status"] for e in project.last_record()["log"]] == ["skipped", "passed", "skipped"]
    bad = project.cli("run", "w", "--only", "bb")
    assert bad.exit_code == 2
    assert "--only 'bb': no such step in w (did you mean 'b'?); steps: a, b, c" in bad.stderr


def test_step_environment_and_closed_stdin(project: Project) -> None:
    script = (
        "import os, sys; data = sys.stdin.read(); "
        "print({k: v for k, v in os.environ.items() if k.startswith(('ORCHESTRATE_', 'APP_', 'STEP_'))}, repr(data))"
    )
    project.workflow("w", [cmd("env check", [PY, "-c", script], env={"STEP_LEVEL": "s"})], env={"APP_LEVEL": "w"})
    result = project.run("run", "w")
    assert result.returncode == 0, result.stderr
    record = project.last_record()
    tail = record["log"][0]["output_tail"]
    assert f"'ORCHESTRATE_RUN_ID': '{record['run_id']}'" in tail
    assert "'ORCHESTRATE_WORKFLOW': 'w'" in tail
    assert "'ORCHESTRATE_STEP': 'env check'" in tail
    assert f"'ORCHESTRATE_ROOT': '{project.root}'" in tail
    assert "'APP_LEVEL': 'w'" in tail and "'STEP_LEVEL': 's'" in tail
    assert tail.endswith("''")  # stdin is closed: read() returns at once with nothing


def test_output_streams_live_before_the_step_ends(project: Project) -> None:
    gate = project.root / "gate"
    script = f"import os, time\nprint('first line', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\nprint('second line')"
    project.write("s.py", script)
    project.workflow("w", [cmd("stream", [PY, "s.py"])])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("CI", "GITHUB_ACTIONS"):
        env.pop(name, None)
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    seen = []
    while True:
        line = process.stdout.readline().decode()
        seen.append(line)
        if "first line" in line:
            break
        assert line, f"stream ended early: {seen}"
    assert not any("second line" in s for s in seen)
    gate.write_text("go")
    rest = process.stdout.read().decode()
    assert process.wait(30) == 0
    order = "".join(seen) + rest
    assert (
        order.index("[1/1] stream (command)")
        < order.index("first line")
        < order.index("second line")
        < order.index("passed in")
    )


def test_fifty_megabytes_of_output_reach_log_and_console_with_bounded_tail(project: Project) -> None:
    script = "import sys\nchunk = (b'x' * 1023 + b'\\n') * 1024\nfor _ in range(50): sys.stdout.buffer.write(chunk)\n"
    project.write("big.py", script)
    project.workflow("w", [cmd("big", [PY, "big.py"])])
    out_path = project.root / "console.out"
    with open(out_path, "wb") as out:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [orchestrate_bin(), "--root", str(project.root), "run", "w"],
            stdout=out,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    record = project.last_record()
    log = project.runs / record["run_id"] / "01-big.log"
    assert log.stat().st_size == 50 * 1024 * 1024
    assert out_path.stat().st_size > 50 * 1024 * 1024
    assert len(record["log"][0]["output_tail"]) <= 4096
    assert (project.runs / f"{record['run_id']}.json").stat().st_size < 20000


def test_timeout_ends_the_whole_process_tree(project: Project) -> None:
    pids = project.root / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; echo started; sleep 300"
    project.workflow("w", [cmd("hang", script, timeout=1), cmd("after", "echo after")])
    started = time.monotonic()
    result = project.cli("run", "w")
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["status"] == "failed"
    assert entry["message"] == "timed out after 1 s"
    assert entry["exit_code"] is None
    for pid in map(int, pids.read_text().split()):
        _wait_for(lambda pid=pid: not _alive(pid), 10)


def test_timeout_escalates_to_kill_when_term_is_ignored(project: Project) -> None:
    pids = project.root / "pids"
    script = f"trap '' TERM; (trap '' TERM; sleep 300) & echo $! > {pids}; sleep 300"
    project.workflow("w", [cmd("stubborn", script, timeout=1)])
    started = time.monotonic()
    result = project.cli("run", "w")
    assert result.exit_code == 1
    assert time.monotonic() - started < 1 + 5 + 5
    pid = int(pids.read_text())
    _wait_for(lambda: not _alive(pid), 10)


def test_retries_pass_on_second_attempt(project: Project) -> None:
    counter = project.root / "count"
    script = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo attempt $n; [ $n -ge 2 ]"
    project.workflow("w", [cmd("flaky", script, retries=2, retry_delay=0.1)])
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stdout
    entry = project.last_record()["log"][0]
    assert entry["status"] == "passed" and entry["attempts"] == 2
    assert "orchestrate: attempt 2 of 3 (after 0.1s)" in result.stdout
    log = (project.runs / project.last_record()["run_id"] / "01-flaky.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log


def test_retries_exhausted_record_all_attempts(project: Project) -> None:
    project.workflow("w", [cmd("never", "exit 4", retries=2)])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["attempts"] == 3 and entry["exit_code"] == 4


@pytest.mark.parametrize("signum,code,name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_ends_step_tree_records_failure_and_writes_report(
    project: Project, signum: int, code: int, name: str
) -> None:
    pids = project.root / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo ready; sleep 300"
    project.workflow("w", [cmd("long", script), cmd("cleanup", "echo cleanup", when={"status": "always"})])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    _wait_for(lambda: pids.exists() and pids.read_text().strip() != "")
    time.sleep(0.2)
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    record = project.last_record()
    assert record["status"] == "failed"
    assert record["message"].startswith(f"interrupted by {name}")
    assert record["log"][0]["status"] == "failed"
    assert record["log"][0]["message"] == f"interrupted by {name}"
    assert record["log"][1]["status"] == "skipped"
    assert (project.runs / record["run_id"] / "junit.xml").exists()
    assert_valid_junit(project.runs / record["run_id"] / "junit.xml")
    _wait_for(lambda: not _alive(int(pids.read_text())), 10)


def test_missing_command_and_cwd_fail_the_step_with_a_fix(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("nope", ["definitely-not-a-command-xyz"]),
            cmd("cwd", "true", cwd="missing/dir", when={"status": "always"}),
        ],
    )
    result = project.cli("run", "w")
    assert result.exit_code == 1
    log = project.last_record()["log"]
    assert log[0]["message"] == "command not found: 'definitely-not-a-command-xyz' (is it installed and on PATH?)"
    assert log[1]["message"] == "working directory missing/dir does not exist"


def test_json_output_goes_to_stdout_and_human_output_to_stderr(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo hello")])
    result = project.run("run", "w", "--json")
    assert result.returncode == 0
    record = json.loads(result.stdout)
    assert record["status"] == "completed" and record["log"][0]["status"] == "passed"
    assert "hello" in result.stderr and "w: 1 passed, 0 failed, 0 skipped" in result.stderr


def test_quiet_shows_only_failing_output_and_summary(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo noisy-but-fine"), cmd("b", "echo why-it-broke; exit 1")])
    result = project.run("run", "w", "--quiet")
    assert result.returncode == 1
    assert "noisy-but-fine" not in result.stdout
    assert "why-it-broke" in result.stdout
    assert "\r" not in result.stdout  # no live status line into a pipe
    assert result.stdout.rstrip().splitlines()[-1].startswith("w: 1 passed, 1 failed, 0 skipped")


def test_no_colour_into_a_pipe(project: Project) -> None:
    project.workflow("w", [cmd("a", "true")])
    result = project.run("run", "w")
    assert "\x1b[" not in result.stdout


def test_debug_echoes_commands(project: Project) -> None:
    project.workflow("w", [cmd("a", ["echo", "hi"])])
    result = project.cli("run", "w", "--debug")
    assert "+ echo hi" in result.stdout


def test_dry_run_prints_plan_and_writes_nothing(project: Project) -> None:
    project.workflow("w", [cmd("a", ["echo", "${WHO:-world}"]), cmd("b", "exit 1", when={"status": "always"})])
    result = project.cli("run", "w", "--dry-run")
    assert result.exit_code == 0
    assert "[1/2] a (command)" in result.stdout and "echo world" in result.stdout
    assert "[2/2] b (command, when always)" in result.stdout
    assert not project.runs.exists()


def test_run_ids_are_unique_and_sorted_by_start(project: Project) -> None:
    project.workflow("w", [cmd("a", "true")])
    for _ in range(3):
        assert project.cli("run", "w").exit_code == 0
    ids = [r["run_id"] for r in project.records()]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    listed = project.cli("runs").stdout.splitlines()
    assert [line.split()[0] for line in listed] == sorted(ids, reverse=True)


def test_background_process_left_by_a_step_ends_with_it(project: Project) -> None:
    pids = project.root / "pids"
    project.workflow("w", [cmd("daemon", f"sleep 300 & echo $! > {pids}; echo left it running")])
    started = time.monotonic()
    result = project.cli("run", "w")
    assert result.exit_code == 0
    assert time.monotonic() - started < 10
    _wait_for(lambda: not _alive(int(pids.read_text())), 10)


# --- issue 11: a step's time limit and Ctrl-C hold whatever the step does ---------------------


SLEEPER = f"{PY} -c 'import time; time.sleep(300)'"  # + a marker argument, found in /proc


def _marked(marker: str) -> list[int]:
    """Live processes whose command line carries marker (zombies do not count)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                if marker.encode() in handle.read() and _alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _kill_marked(marker: str) -> None:
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_step_that_closes_its_output_still_times_out(project: Project) -> None:
    marker = f"orch-closed-{os.getpid()}"
    project.workflow("w", [cmd("closed", f"exec >/dev/null 2>&1; {SLEEPER} {marker}", timeout=1)])
    try:
        started = time.monotonic()
        result = project.cli("run", "w")
        elapsed = time.monotonic() - started
        assert result.exit_code == 1
        entry = project.last_record()["log"][0]
        assert entry["message"] == "timed out after 1 s"
        assert elapsed < 15, "the wait after end-of-output ignored the timeout"
        _wait_for(lambda: not _marked(marker), 10)
    finally:
        _kill_marked(marker)


def test_string_command_timeout_ends_as_fast_as_the_argv_form(project: Project) -> None:
    """`sh -c "sleep 30"` leaves sleep a zombie of init when the group is ended: a slow init
    (this machine's takes ~1 s to reap) kept the group "alive" and the step 2.2 s long."""
    project.workflow(
        "w", [cmd("string", "sleep 30", timeout=1, continue_on_error=True), cmd("argv", ["sleep", "30"], timeout=1)]
    )
    result = project.cli("run", "w")
    assert result.exit_code == 1
    for entry in project.last_record()["log"]:
        assert entry["message"] == "timed out after 1 s"
        assert 1.0 <= entry["duration_s"] < 1.5, entry


def test_processes_left_behind_are_ended_and_counted(project: Project) -> None:
    marker = f"orch-left-{os.getpid()}"
    script = (
        f"setsid {SLEEPER} {marker}-setsid & "
        f"nohup {SLEEPER} {marker}-nohup >/dev/null 2>&1 & "
        f"( {SLEEPER} {marker}-double & ) ; "
        f"sleep 0.3; echo left them"
    )
    project.workflow("w", [cmd("daemons", script), cmd("quiet", "true")])
    try:
        result = project.cli("run", "w")
        assert result.exit_code == 0, result.stdout
        _wait_for(lambda: not _marked(marker), 10)
        record = project.last_record()
        assert record["log"][0]["leftover_processes"] == 3
        assert record["log"][1]["leftover_processes"] == 0
        log = (project.runs / record["run_id"] / "01-daemons.log").read_text()
        assert log.endswith("left them\norchestrate: ended 3 processes the step left running\n")
    finally:
        _kill_marked(marker)


def test_sweep_finds_only_this_steps_processes(project: Project) -> None:
    """A process of another step (another token) is not this step's leftover."""
    marker = f"orch-other-{os.getpid()}"
    other = subprocess.Popen(
        [PY, "-c", "import time; time.sleep(60)", marker],
        start_new_session=True,
        env={**os.environ, "ORCHESTRATE_STEP_TOKEN": "someone-elses"},
    )
    try:
        project.workflow("w", [cmd("quick", "setsid sleep 0.1 & echo hi")])
        assert project.cli("run", "w").exit_code == 0
        assert _alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_timeout_is_the_budget_of_the_whole_attempt(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrate

    class TwoProcesses(orchestrate.Runner):
        type_name = "two_processes"

        def execute(self, ctx: orchestrate.StepContext) -> orchestrate.StepResult:
            for _ in range(2):  # each alone within the timeout, both together beyond it
                result = ctx.run_process([PY, "-c", "import time; time.sleep(1.2)"])
                if result.exit_code != 0:
                    return orchestrate.StepResult("failed", "process failed", exit_code=result.exit_code)
            return orchestrate.StepResult("passed")

    monkeypatch.setitem(orchestrate.RUNNERS, "two_processes", TwoProcesses())
    project.workflow("w", [{"name": "both", "type": "two_processes", "timeout": 2, "retries": 1}])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["message"] == "timed out after 2 s" and entry["attempts"] == 2
    assert 4.0 <= entry["duration_s"] < 8, entry  # two attempts of 2 s each, never 2 x 2.4 s


def test_grace_period_is_an_option(project: Project) -> None:
    import orchestrate

    pids = project.root / "pids"
    project.workflow("w", [cmd("stubborn", f"trap '' TERM; echo $$ > {pids}; sleep 30", timeout=0.5)])
    workflow = orchestrate.load_workflow("w", project.workflows, root=project.root)
    options = orchestrate.RunOptions(kill_grace=0.3)
    record, code = orchestrate.execute_run(
        workflow, orchestrate.Settings(), project.root, orchestrate.RunStore(project.runs), options
    )
    assert code == 1 and record["log"][0]["message"] == "timed out after 0.5 s"
    assert record["log"][0]["duration_s"] < 0.5 + orchestrate.KILL_GRACE_S  # not the default 5 s
    _wait_for(lambda: not _alive(int(pids.read_text())), 10)


# --- issue 11: a bug in a built-in runner is exit 3, never a step failure ------------------------

BROKEN_RUNNER = """
import sys, orchestrate
def broken(self, ctx):
    ctx.emit("about to break")
    return 1 / 0
orchestrate.CommandRunner.execute = broken
sys.exit(orchestrate.main(sys.argv[1:]))
"""


def test_internal_error_in_a_built_in_runner_is_exit_3_with_the_report_written(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("checks", "echo never"),
            cmd("later", "echo never"),
            {"name": "cleanup", "type": "python", "script": "x.py", "venv": ".venv", "when": {"status": "always"}},
        ],
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [PY, "-c", BROKEN_RUNNER, "--root", str(project.root), "run", "w"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError: division by zero" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == (
        "orchestrate: internal error in the command runner: ZeroDivisionError: division by zero "
        "(a bug, not a step failure): please report it with the traceback above; exit code 3"
    )
    record = project.last_record()
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert record["message"] == "internal error in the command runner: ZeroDivisionError: division by zero"
    assert [e["status"] for e in record["log"]] == ["failed", "skipped", "failed"]  # cleanup still ran
    assert record["log"][0]["message"] == record["message"]
    log = (project.runs / record["run_id"] / "01-checks.log").read_text()
    assert "about to break" in log and "ZeroDivisionError: division by zero" in log and "Traceback" in log
    assert_valid_junit(project.runs / record["run_id"] / "junit.xml")
    assert "internal error in the command runner" in (project.runs / record["run_id"] / "junit.xml").read_text()


# --- steps on a terminal keep their colour and width ----------------------------------------


def _step_env_through_a_pty(project: Project, columns: int, env: dict[str, str]) -> dict[str, str]:
    """Run a step that records its environment, with orchestrate's console on a real pty
    `columns` wide; the step's own output goes through orchestrate's pipe."""
    import fcntl
    import pty
    import struct
    import termios

    out = project.root / "step-env"
    project.workflow("w", [cmd("env", f'env > "{out}"')])
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "GITHUB_ACTIONS", "NO_COLOR", "COLUMNS", "FORCE_COLOR", "CLICOLOR_FORCE")
    }
    full_env.update(PYTHONPATH=str(REPO), TERM="xterm", **env)
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=full_env,
        close_fds=True,
    )
    os.close(slave)
    try:
        while os.read(master, 65536):
            pass
    except OSError:
        pass  # EIO: the last writer closed the terminal
    assert process.wait(30) == 0
    os.close(master)
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def test_steps_on_a_terminal_see_its_width_and_keep_colour(project: Project) -> None:
    env = _step_env_through_a_pty(project, 137, {})
    assert (env["COLUMNS"], env["FORCE_COLOR"], env["CLICOLOR_FORCE"]) == ("137", "1", "1")


def test_no_color_keeps_steps_colourless_but_tells_the_width(project: Project) -> None:
    env = _step_env_through_a_pty(project, 99, {"NO_COLOR": "1"})
    assert env["COLUMNS"] == "99"
    assert "FORCE_COLOR" not in env and "CLICOLOR_FORCE" not in env


def test_a_users_own_settings_win(project: Project) -> None:
    env = _step_env_through_a_pty(project, 99, {"COLUMNS": "200", "FORCE_COLOR": "0"})
    assert (env["COLUMNS"], env["FORCE_COLOR"], env["CLICOLOR_FORCE"]) == ("200", "0", "1")


def test_steps_into_a_pipe_get_no_terminal_variables(project: Project) -> None:
    out = project.root / "step-env"
    project.workflow("w", [cmd("env", f'env > "{out}"')])
    result = project.run("run", "w", env={"TERM": "xterm"})
    assert result.returncode == 0
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert not names & {"FORCE_COLOR", "CLICOLOR_FORCE"} - set(os.environ)
    assert "COLUMNS" not in names or "COLUMNS" in os.environ


def test_the_watchdog_hears_of_each_step_in_one_write(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the watchdog shell reads a byte at a time and each write wakes it: a step's
    "-PGID" line goes with the next step's "+PGID" line, and the run's end says the last one."""
    import orchestrate

    project.workflow("w", [{"name": f"s{i}", "type": "command", "run": ["true"]} for i in range(10)])
    sent: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if fd == orchestrate.WATCHDOG.write_fd:
            sent.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(orchestrate.os, "write", write)
    assert project.cli("run", "w", "--quiet").exit_code == 0
    monkeypatch.undo()
    assert len(sent) == 11  # one per step, and the flush at the end of the run
    lines = b"".join(sent).decode().split()
    started = [line[1:] for line in lines if line.startswith("+")]
    assert len(started) == 10 and [line[1:] for line in lines if line.startswith("-")] == started
    assert sent[-1].decode() == f"-{started[-1]}\n" and orchestrate.WATCHDOG.released == ""


SPAWN_LAUNCHER = (
    "import sys, orchestrate\ncode = orchestrate.main(sys.argv[1:])\n"
    "sys.stderr.write('subprocess imported: %s\\n' % ('subprocess' in sys.modules))\nsys.exit(code)\n"
)


def test_steps_started_without_subprocess_get_what_popen_gave_them(project: Project) -> None:
    """Issue 15: where a step runs in orchestrate's own folder, it is started with os.posix_spawn
    (subprocess is not even imported: 5 ms of start-up): its own session, stdin /dev/null,
    SIGPIPE at its default (`yes | head` ends), no descriptor orchestrate was given, PATH from
    the step's environment, and the same messages for a missing or unrunnable command."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    tools = project.root / "tools"
    tools.mkdir(parents=True)
    (tools / "mytool").write_text("#!/bin/sh\necho from PATH\n")
    (tools / "mytool").chmod(0o755)
    project.workflow(
        "w",
        [
            {"name": "session", "type": "command", "run": "ps -o sid= -p $$; echo pid $$"},
            {"name": "stdin", "type": "command", "run": "cat; echo stdin ok"},
            {"name": "pipe", "type": "command", "run": "yes | head -n 2"},
            {"name": "fds", "type": "command", "run": "ls /proc/$$/fd"},
            {"name": "path", "type": "command", "run": ["mytool"], "env": {"PATH": f"{tools}:/usr/bin:/bin"}},
        ],
    )
    project.workflow("missing", [{"name": "m", "type": "command", "run": ["no-such-tool-here"]}])
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPAWN_LAUNCHER, "run", "w"],
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(write_end,),
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("subprocess imported: False\n")
    logs = {
        entry["step"]: (project.runs / project.last_record()["run_id"] / Path(entry["log_file"]).name)
        for entry in project.last_record()["log"]
    }
    sid, pid = logs["session"].read_text().split("\n")[:2]
    assert sid.strip() == pid.split()[1]  # the step's shell leads its own session
    assert logs["stdin"].read_text() == "stdin ok\n"
    assert logs["pipe"].read_text() == "y\ny\n"
    fds = logs["fds"].read_text().split()
    assert str(write_end) not in fds, fds
    assert logs["path"].read_text() == "from PATH\n"
    missing = subprocess.run(
        [sys.executable, "-c", SPAWN_LAUNCHER, "run", "missing"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert project.last_record()["log"][0]["message"] == (
        "command not found: 'no-such-tool-here' (is it installed and on PATH?)"
    )


def test_runs_that_end_early_leave_no_git_process_or_pipe_behind(project: Project) -> None:
    """The git calls a run starts before it reads its workflow (issue 15) are waited for when
    the workflow turns out invalid: a process that goes on (the test suite, a server) keeps no
    pipe and no zombie. 300 such runs leaked 600 descriptors until select() refused them."""
    project.workflow("bad", [{"name": "no run", "type": "command"}])
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(30):
        assert project.cli("run", "bad").exit_code == 2
    assert len(set(os.listdir("/proc/self/fd")) - before) <= 1  # the listing's own descriptor
    children = [line for line in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
    zombies = [pid for pid in children if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"]
    assert zombies == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here: the sweep has only the process group")
def test_boot_ticks_read_before_a_start_bound_the_start_time_proc_gives() -> None:
    """Issue 15: a step's process tree takes the boot-clock ticks read before the start as the
    step's start time instead of reading /proc/<pid>/stat: never later than what /proc says
    (a later one would hide a leftover process), and at most a tick or two earlier."""
    import orchestrate

    for _ in range(100):
        before = orchestrate.boot_ticks()
        child = subprocess.Popen(["sleep", "0"])
        with open(f"/proc/{child.pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        child.wait()
        started = int(fields[19])  # field 22 of proc(5): starttime, counted from field 3 here
        assert before is not None and before <= started <= before + 2, (before, started)


def test_a_boot_clock_that_disagrees_with_proc_is_not_used_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """An emulated /proc may count start times on another clock: checked at the first step,
    and from then on every step's start time comes from /proc again."""
    import orchestrate

    monkeypatch.setattr(orchestrate, "_BOOT_TICKS_AGREE", None)
    monkeypatch.setattr(orchestrate, "_NS_PER_TICK", 0)
    assert orchestrate.boot_ticks() is not None
    with subprocess.Popen(["sleep", "5"]) as child:
        try:
            real = orchestrate._proc_stat(child.pid)
            assert real is not None
            # two steps started at once (--jobs) read the clock before either was checked
            late, early = 10**12, real[2] - 1  # a bound after the real start, and a good one
            first = orchestrate.ProcessTree(child.pid, "t", started_after=late)
            second = orchestrate.ProcessTree(child.pid, "t", started_after=early)
            assert first.start_ticks == second.start_ticks == real[2]
            assert orchestrate.boot_ticks() is None
            assert orchestrate.ProcessTree(child.pid, "t", started_after=early).start_ticks == real[2]
        finally:
            child.kill()


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="no /proc/loadavg here")
def test_the_last_pid_is_read_anew_from_one_descriptor() -> None:
    """The leftover sweep asks which pids were allocated since a step started: /proc/loadavg,
    kept open and read with pread (26 us a step when opened each time)."""
    import orchestrate

    seen = []
    for _ in range(3):
        with subprocess.Popen(["true"]) as child:
            child.wait()
        last = orchestrate._last_pid()
        assert last is not None and (last >= child.pid or last < 300)  # or the pids wrapped
        seen.append(last)
    assert seen[0] != seen[-1]  # not a stale first reading
