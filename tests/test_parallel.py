"""Steps in parallel (issue 16): `needs`, `--jobs`, the scheduler, and output people can read.
Real processes throughout; overlap is read from the steps' recorded start and end times, never
from a stopwatch (these machines are shared and noisy)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, Project, assert_valid_junit, orchestrate_bin, run_in_pty

PY = sys.executable


def cmd(name: str, run: object, **extra: object) -> dict:
    return {"name": name, "type": "command", "run": run, **extra}


def _ms(stamp: str) -> int:
    import datetime

    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def _spans(record: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {
        e["step"]: (_ms(e["started_at"]), _ms(e["finished_at"]))
        for e in record["log"]
        if e.get("started_at") and e.get("finished_at")
    }


def _max_overlap(spans: dict[str, tuple[int, int]]) -> int:
    """The most steps running at the same moment."""
    edges = sorted(
        [(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()], key=lambda edge: (edge[0], edge[1])
    )
    running = best = 0
    for _, delta in edges:
        running += delta
        best = max(best, running)
    return best


def _normalize(text: str) -> str:
    text = re.sub(r"[0-9]{8}T[0-9]{9}Z-[0-9a-f]{6}", "RUNID", text)
    return re.sub(r"[0-9]+\.[0-9]s", "N.Ns", text)


# --- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [cmd("a", "true"), cmd("b", "true", needs=["lint"])],
            "workflows/w.json: steps[1] \"b\": key 'needs[0]': no step named 'lint' in this workflow",
        ),
        (
            [cmd("lint", "true"), cmd("b", "true", needs=["lnit"])],
            "workflows/w.json: steps[1] \"b\": key 'needs[0]': no step named 'lnit' in this workflow (did you mean 'lint'?)",
        ),
        (
            [cmd("a", "true", needs=["a"])],
            "workflows/w.json: steps[0] \"a\": key 'needs[0]': a step cannot need itself",
        ),
        (
            [cmd("a", "true"), cmd("b", "true", needs=["a", "a"])],
            "workflows/w.json: steps[1] \"b\": key 'needs[1]': 'a' is listed twice",
        ),
        (
            [cmd("a", "true", needs=["b"]), cmd("b", "true", needs=["a"])],
            "workflows/w.json: steps[0] \"a\": key 'needs': the steps form a cycle: 'a' → 'b' → 'a'",
        ),
        # b has no needs: it depends on the step above it, a, which needs b
        (
            [cmd("a", "true", needs=["b"]), cmd("b", "true")],
            "workflows/w.json: steps[0] \"a\": key 'needs': the steps form a cycle: 'a' → 'b' → 'a'",
        ),
        ([cmd("a", "true", needs="b")], "workflows/w.json: steps[0] \"a\": key 'needs' must be a list, not string"),
    ],
)
def test_bad_needs_are_definition_errors(project: Project, steps: list, message: str) -> None:
    project.workflow("w", steps)
    for args in (("run", "w"), ("validate", "w"), ("run", "w", "--dry-run")):
        result = project.cli(*args)
        assert result.exit_code == 2, result.stderr
        assert result.stderr.strip() == f"orchestrate: error: {message}"
    assert not project.runs.exists() or not list(project.runs.glob("*.json"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--jobs", "0"), "--jobs '0': expected a number of steps at once, 1 to 256"),
        (("--jobs", "x"), "--jobs 'x': expected a number of steps at once, 1 to 256"),
        (
            ("--output", "groupd"),
            "--output 'groupd': expected one of live, grouped, prefixed (did you mean 'grouped'?)",
        ),
    ],
)
def test_bad_jobs_and_output_are_usage_errors(project: Project, args: tuple[str, ...], message: str) -> None:
    project.workflow("w", [cmd("a", "true")])
    for run in (project.cli, project.run):
        result = run("run", "w", *args)
        code = result.exit_code if hasattr(result, "exit_code") else result.returncode
        assert code == 2
        assert result.stderr.strip() == f"orchestrate: error: {message}"


def test_jobs_in_settings_must_be_a_sensible_number(project: Project) -> None:
    project.workflow("w", [cmd("a", "true")])
    project.write("orchestrate.json", json.dumps({"jobs": 0}))
    result = project.cli("run", "w")
    assert result.exit_code == 2
    assert result.stderr.strip() == "orchestrate: error: orchestrate.json: key 'jobs' must be between 1 and 256"


# --- running in parallel -------------------------------------------------------------------


def test_three_independent_steps_run_at_once_with_jobs_3(project: Project) -> None:
    project.workflow("w", [cmd(n, "sleep 1", needs=[]) for n in ("lint", "types", "unit")])
    result = project.run("run", "w", "--jobs", "3")
    assert result.returncode == 0, result.stderr
    record = project.last_record()
    spans = _spans(record)
    assert _max_overlap(spans) == 3
    # every step started before any of them ended: they ran side by side, not one after another
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
    assert record["duration_s"] < 2.9  # the sum would be 3 s
    assert record["options"]["jobs"] == 3


def test_jobs_bounds_how_many_steps_run_at_once(project: Project) -> None:
    project.workflow("w", [cmd(f"s{i}", "sleep 0.4", needs=[]) for i in range(5)])
    assert project.run("run", "w", "--jobs", "2").returncode == 0
    assert _max_overlap(_spans(project.last_record())) == 2


def test_jobs_setting_sets_the_default_and_the_flag_wins(project: Project) -> None:
    project.workflow("w", [cmd(f"s{i}", "sleep 0.3", needs=[]) for i in range(3)])
    project.write("orchestrate.json", json.dumps({"jobs": 1}))
    assert project.run("run", "w").returncode == 0
    assert _max_overlap(_spans(project.last_record())) == 1
    assert project.run("run", "w", "-j", "3").returncode == 0
    assert _max_overlap(_spans(project.last_record())) == 3


def test_without_needs_steps_run_in_order_whatever_jobs(project: Project) -> None:
    project.workflow("w", [cmd(f"s{i}", "sleep 0.2") for i in range(3)])
    assert project.run("run", "w", "--jobs", "8").returncode == 0
    record = project.last_record()
    spans = _spans(record)
    assert _max_overlap(spans) == 1
    assert sorted(spans, key=lambda n: spans[n][0]) == ["s0", "s1", "s2"]


def test_a_step_starts_when_its_needs_have_finished(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("slow", "sleep 1", needs=[]),
            cmd("fast", "sleep 0.1", needs=[]),
            cmd("after fast", "true", needs=["fast"]),
            cmd("after both", "true", needs=["slow", "fast"]),
        ],
    )
    assert project.run("run", "w", "--jobs", "4").returncode == 0
    spans = _spans(project.last_record())
    assert spans["after fast"][0] >= spans["fast"][1]
    assert spans["after fast"][1] <= spans["slow"][1]  # it did not wait for the slow one
    assert spans["after both"][0] >= spans["slow"][1]


def test_a_failure_skips_what_needs_it_and_keep_going_lets_the_other_branch_finish(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("build a", "sleep 0.2; exit 1", needs=[]),
            cmd("test a", "echo never", needs=["build a"]),
            cmd("deploy a", "echo never", needs=["test a"]),
            cmd("build b", "sleep 0.5", needs=[]),
            cmd("test b", "echo b", needs=["build b"]),
        ],
    )
    result = project.run("run", "w", "--jobs", "2", "--keep-going")
    assert result.returncode == 1
    entries = {e["step"]: e for e in project.last_record()["log"]}
    assert {n: e["status"] for n, e in entries.items()} == {
        "build a": "failed",
        "test a": "skipped",
        "deploy a": "skipped",
        "build b": "passed",
        "test b": "passed",
    }
    assert entries["test a"]["message"] == "a step it needs did not pass (build a)"
    assert entries["deploy a"]["message"] == "a step it needs did not pass (test a)"
    assert project.last_record()["message"] == "failed: build a"


def test_without_keep_going_running_steps_finish_and_the_rest_is_skipped(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("fails fast", "exit 1", needs=[]),
            cmd("long", "sleep 0.8; echo long done", needs=[]),
            cmd("after long", "echo never", needs=["long"]),
            cmd("report", "echo reporting", when={"status": "failure"}),
        ],
    )
    result = project.run("run", "w", "--jobs", "2")
    assert result.returncode == 1
    entries = {e["step"]: e for e in project.last_record()["log"]}
    assert entries["long"]["status"] == "passed"  # already running: it finished
    assert entries["after long"]["status"] == "skipped"
    assert entries["after long"]["message"] == "an earlier step failed (fails fast)"
    assert entries["report"]["status"] == "passed"  # waits for every step above it


def test_when_status_is_judged_on_the_steps_a_step_needs(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("broken", "exit 1", needs=[]),
            cmd("fine", "true", needs=[]),
            cmd("after fine fails", "echo no", needs=["fine"], when={"status": "failure"}),
            cmd("after broken fails", "echo yes", needs=["broken"], when={"status": "failure"}),
            cmd("cleanup fine", "echo clean", needs=["fine"], when={"status": "always"}),
        ],
    )
    result = project.run("run", "w", "--jobs", "2")
    assert result.returncode == 1
    entries = {e["step"]: e for e in project.last_record()["log"]}
    assert entries["after fine fails"]["status"] == "skipped"
    assert entries["after fine fails"]["message"] == "runs only after a failure (when.status = failure)"
    assert entries["after broken fails"]["status"] == "passed"
    assert entries["cleanup fine"]["status"] == "passed"


def test_an_always_step_without_needs_waits_for_every_step_above_it(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("slow", "sleep 0.6", needs=[]),
            cmd("quick", "true", needs=[]),
            cmd("cleanup", "true", when={"status": "always"}),
        ],
    )
    assert project.run("run", "w", "--jobs", "3").returncode == 0
    spans = _spans(project.last_record())
    assert spans["cleanup"][0] >= spans["slow"][1]


@pytest.mark.parametrize("flag", [("--skip", "lint"), ("--only", "package")])
def test_a_needed_step_left_out_counts_as_skipped_not_failed(project: Project, flag: tuple[str, str]) -> None:
    project.workflow("w", [cmd("lint", "true", needs=[]), cmd("package", "echo packaged", needs=["lint"])])
    result = project.run("run", "w", *flag)
    assert result.returncode == 0, result.stdout
    entries = {e["step"]: e["status"] for e in project.last_record()["log"]}
    assert entries == {"lint": "skipped", "package": "passed"}


def test_the_record_says_which_steps_are_running_in_start_order(project: Project) -> None:
    marker = project.root / "go"
    wait = f"while [ ! -e {marker} ]; do sleep 0.02; done"
    project.workflow("w", [cmd("first", wait, needs=[]), cmd("second", f"sleep 0.2; {wait}", needs=[])])
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline:
            shown = project.cli("status", "--json", _only_run_id(project))
            if shown.exit_code == 0:
                record = json.loads(shown.stdout)
                if len(record.get("running") or []) == 2:
                    seen = record
                    break
            time.sleep(0.05)
        assert seen is not None, "never saw both steps running"
        assert seen["running"] == ["first", "second"]
        assert seen["current"] == "first"
    finally:
        marker.touch()
        assert process.wait(30) == 0
    final = project.last_record()
    assert final["running"] == [] and final["current"] is None


def _only_run_id(project: Project) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = [p.stem for p in project.runs.glob("*.json")] if project.runs.exists() else []
        if ids:
            return ids[0]
        time.sleep(0.02)
    raise AssertionError("no run record appeared")


def test_ctrl_c_with_three_steps_running_leaves_no_process(project: Project, tmp_path: Path) -> None:
    tag = f"orchestrate-parallel-{os.getpid()}"
    started = tmp_path / "started"
    started.mkdir()
    # each step's shell and its grandchild ignore SIGTERM: only the SIGKILL after the grace ends them
    step = f"trap '' TERM; touch {started}/$ORCHESTRATE_STEP; sleep 300 # {tag}"
    project.workflow(
        "w",
        [cmd(n, step, needs=[]) for n in ("a", "b", "c")] + [cmd("cleanup", "echo cleanup", when={"status": "always"})],
    )
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--jobs", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 30
    while len(list(started.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(started.iterdir())) == 3
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert _processes_with(tag) == []
    record = project.last_record()
    assert record["status"] == "failed" and record["message"] == "interrupted by SIGINT (Ctrl-C)"
    entries = {e["step"]: e for e in record["log"]}
    for name in ("a", "b", "c"):
        assert entries[name]["status"] == "failed"
        assert entries[name]["message"] == "interrupted by SIGINT"
    assert entries["cleanup"]["status"] == "skipped"
    assert entries["cleanup"]["message"] == "run interrupted by SIGINT"
    assert_valid_junit(project.runs / record["run_id"] / "junit.xml")


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() not in handle.read():
                    continue
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(") ", 1)[1][0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(pid))
    return found


# --- output --------------------------------------------------------------------------------

# The output of this chain with the engine before issue 16 (run ids and durations normalized):
# --jobs 1 (and a chain under any --jobs) must print exactly this. One change since, on
# purpose (issue 12): output that does not end with a newline gets one before the status line.
CHAIN = [
    cmd("first", "echo one; printf 'no newline'"),
    cmd("flaky", "echo flaky >&2; exit 2", continue_on_error=True),
    cmd("second", ["python3", "-c", "print('two')"]),
    cmd("boom", "echo broken; exit 3"),
    cmd("later", "echo never"),
    cmd("on failure", "echo reporting", when={"status": "failure"}),
    cmd("cleanup", "echo cleaning", when={"status": "always"}),
]
CHAIN_OUTPUT = """\
orchestrate: chain (7 steps, run RUNID)
[1/7] first (command)
one
no newline
  passed in N.Ns
[2/7] flaky (command)
flaky
  failed (allowed) in N.Ns: command exited with code 2
[3/7] second (command)
two
  passed in N.Ns
[4/7] boom (command)
broken
  failed in N.Ns: command exited with code 3
[5/7] later (command): skipped — an earlier step failed (boom)
[6/7] on failure (command)
reporting
  passed in N.Ns
[7/7] cleanup (command)
cleaning
  passed in N.Ns

  passed      N.Ns  first
  failed*     N.Ns  flaky — command exited with code 2
  passed      N.Ns  second
  failed      N.Ns  boom — command exited with code 3
  skipped        -  later — an earlier step failed (boom)
  passed      N.Ns  on failure
  passed      N.Ns  cleanup
  (* failure allowed by continue_on_error)
chain: 4 passed, 2 failed (1 allowed), 1 skipped in N.Ns (run RUNID)
"""


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_a_chain_prints_exactly_what_it_printed_before_parallel_steps(project: Project, jobs: str) -> None:
    project.workflow("chain", CHAIN)
    result = project.run("run", "chain", "--jobs", jobs)
    assert result.returncode == 1
    assert _normalize(result.stdout) == CHAIN_OUTPUT
    assert result.stderr == ""


def test_jobs_1_runs_steps_with_needs_one_at_a_time_in_step_order(project: Project) -> None:
    project.workflow("w", [cmd("c", "echo c", needs=["b"]), cmd("a", "echo a", needs=[]), cmd("b", "echo b", needs=[])])
    result = project.run("run", "w", "--jobs", "1")
    assert result.returncode == 0
    headers = [line for line in result.stdout.splitlines() if re.match(r"\[\d/3\] ", line)]
    assert headers == ["[2/3] a (command)", "[3/3] b (command)", "[1/3] c (command)"]


def _parallel_workflow(project: Project) -> None:
    # each step prints in several pieces with pauses, so parallel output would interleave
    def noisy(name: str) -> str:
        return f"for i in 1 2 3; do echo {name}-$i; sleep 0.1; done; printf '{name}-end'"

    project.workflow(
        "w",
        [cmd(n, noisy(n), needs=[]) for n in ("alpha", "beta", "gamma")]
        + [cmd("last", "echo last", needs=["alpha", "beta", "gamma"])],
    )


def test_grouped_output_prints_each_step_whole(project: Project) -> None:
    _parallel_workflow(project)
    result = project.run("run", "w", "--jobs", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("alpha", "beta", "gamma"):
        start = lines.index(f"[{('alpha', 'beta', 'gamma').index(name) + 1}/4] {name} ({'command'})")
        assert lines[start + 1 : start + 5] == [f"{name}-1", f"{name}-2", f"{name}-3", f"{name}-end"]
        assert lines[start + 5].startswith("  passed in ")
    assert "  passed     +0.0s" in result.stdout  # the summary shows when each step started


def test_prefixed_output_streams_every_line_with_the_step_name(project: Project) -> None:
    _parallel_workflow(project)
    result = project.run("run", "w", "--jobs", "3", "--output", "prefixed")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("alpha", "beta", "gamma"):
        mine = [line for line in lines if line.startswith(f"{name} | ")]
        assert mine == [f"{name} | {name}-1", f"{name} | {name}-2", f"{name} | {name}-3", f"{name} | {name}-end"]
    # interleaved: the first lines of the three steps come before the last of any of them
    first_lines = [lines.index(f"{n} | {n}-1") for n in ("alpha", "beta", "gamma")]
    last_lines = [lines.index(f"{n} | {n}-end") for n in ("alpha", "beta", "gamma")]
    assert max(first_lines) < min(last_lines)


def test_prefixed_output_cuts_a_line_that_never_ends(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("endless", [PY, "-c", "import sys; sys.stdout.write('x' * 200000)"], needs=[]),
            cmd("other", "true", needs=[]),
        ],
    )
    result = project.run("run", "w", "--jobs", "2", "--output", "prefixed")
    assert result.returncode == 0
    pieces = [line for line in result.stdout.splitlines() if line.startswith("endless | ")]
    assert "".join(p[len("endless | ") :] for p in pieces) == "x" * 200000
    assert max(len(p) for p in pieces) <= 64 * 1024 + len("endless | ")


def test_step_logs_are_byte_identical_to_a_sequential_run(project: Project) -> None:
    _parallel_workflow(project)
    assert project.run("run", "w", "--jobs", "3").returncode == 0
    parallel = project.last_record()
    assert project.run("run", "w", "--jobs", "1").returncode == 0
    sequential = project.last_record()
    for p_entry, s_entry in zip(parallel["log"], sequential["log"], strict=True):
        p_log = (project.root / p_entry["log_file"]).read_bytes()
        s_log = (project.root / s_entry["log_file"]).read_bytes()
        assert p_log == s_log and p_log


def _github_runner_view(text: str) -> dict[str, Any]:
    """Read a log the way the GitHub runner does: `::stop-commands::T` turns command processing
    off until a line `::T::`; `::group::` / `::endgroup::` open and close groups (they do not
    nest); the lines in between belong to the group."""
    groups: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    stopped: str | None = None
    errors: list[str] = []
    for line in text.split("\n"):
        if stopped is not None:
            if line == f"::{stopped}::":
                stopped = None
            elif current is not None:
                current[1].append(line)
            continue
        if line.startswith("::stop-commands::"):
            stopped = line[len("::stop-commands::") :]
        elif line.startswith("::group::"):
            assert current is None, f"group {line!r} opened inside {current[0]!r}"
            current = (line[len("::group::") :], [])
        elif line == "::endgroup::":
            assert current is not None, "endgroup without a group"
            groups.append(current)
            current = None
        elif line.startswith("::error"):
            errors.append(line)
        elif current is not None:
            current[1].append(line)
    return {"groups": groups, "open_group": current, "stopped": stopped, "errors": errors}


def test_github_output_of_a_parallel_run_keeps_each_step_in_its_own_closed_group(project: Project) -> None:
    _parallel_workflow(project)
    project.workflow(
        "w",
        [
            *json.loads((project.workflows / "w.json").read_text())["steps"],
            cmd("bad", "echo ::error::forged; printf 'no newline'; exit 1", needs=[]),
        ],
    )
    summary = project.root / "summary.md"
    result = project.run("run", "w", "--jobs", "4", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 1
    view = _github_runner_view(result.stdout)
    assert view["stopped"] is None and view["open_group"] is None  # every fence and group closed
    groups = dict(view["groups"])
    for name in ("alpha", "beta", "gamma"):
        assert groups[f"{name} (command)"][1:] == [f"{name}-1", f"{name}-2", f"{name}-3", f"{name}-end"]
    assert groups["bad (command)"][1:] == ["::error::forged", "no newline"]
    assert view["errors"] == ["::error title=bad failed::command exited with code 1"]
    assert "gantt" in summary.read_text()


def test_live_status_lines_on_a_terminal(project: Project) -> None:
    project.workflow("w", [cmd("one", "sleep 1.3", needs=[]), cmd("two", "sleep 1.3", needs=[])])
    code, screen = run_in_pty(project, "run", "w", "--jobs", "2")
    assert code == 0
    screen = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    # one line per running step, redrawn in place (cursor up, clear) as the seconds pass
    assert "[1/2] one … 1s\r\n[2/2] two … 1s" in screen
    assert "\x1b[1A\x1b[J" in screen


def test_the_pre_push_workflow_init_writes_runs_its_checks_in_parallel(project: Project) -> None:
    assert project.cli("init").exit_code == 0
    steps = json.loads((project.workflows / "pre-push.json").read_text())["steps"]
    independent = [s["name"] for s in steps if s.get("needs") == []]
    assert len(independent) >= 2
    result = project.run("run", "pre-push", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    record = project.last_record()
    assert record["options"]["jobs"] == 2
    assert {e["step"] for e in record["log"] if e["status"] == "passed"} >= set(independent)
    # the graph lets them overlap, so the output is grouped: a start line, then each check whole
    for number, name in enumerate(independent, start=1):
        assert f"[{number}/{len(steps)}] {name} (command) started\n" in result.stdout


def _smallest_topological_order(deps: list[list[int]]) -> list[int]:
    """The oracle, by its definition: at each point the lowest step whose needs are all done."""
    order: list[int] = []
    while len(order) < len(deps):
        order.append(min(i for i, ds in enumerate(deps) if i not in order and all(d in order for d in ds)))
    return order


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_step_order_is_the_lowest_ready_first_order(data: st.DataObject) -> None:
    """Issue 15: where every step needs only steps above it (the usual workflow), the order
    is taken as it is, without heapq; for any DAG it is the lowest-ready-first order."""
    size = data.draw(st.integers(0, 12))
    rank = data.draw(st.permutations(list(range(size))))  # a hidden order that keeps it acyclic
    deps = [
        sorted(data.draw(st.sets(st.sampled_from([j for j in range(size) if rank[j] < rank[i]]))) if rank[i] else [])
        for i in range(size)
    ]
    from types import SimpleNamespace

    import orchestrate

    def graph(needs: list[list[int]]) -> orchestrate.StepGraph:
        steps = [
            SimpleNamespace(name=f"s{i}", index=i, needs=[f"s{j}" for j in ds], when_status="success")
            for i, ds in enumerate(needs)
        ]
        return orchestrate.StepGraph(steps)  # type: ignore[arg-type]

    assert graph(deps)._order() == _smallest_topological_order(deps)
    backward = [[j for j in ds if j < i] for i, ds in enumerate(deps)]
    assert graph(backward)._order() == _smallest_topological_order(backward) == list(range(size))
