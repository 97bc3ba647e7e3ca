"""Doing only the work that is left (issue 17): `orchestrate resume RUN`, steps skipped as up
to date while their `sources` are unchanged, and the index beside the records that finds a
step's last pass. Everything through the real command, in real git repositories."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_valid_junit
from test_hooks import GitProject

import orchestrate

JUNIT = (
    '<testsuite name="t" tests="2" failures="0"><testcase classname="tests.test_a" name="test_one" time="0.1"/>'
    '<testcase classname="tests.test_a" name="test_two" time="0.2"/></testsuite>'
)


@pytest.fixture
def work(tmp_path: Path) -> GitProject:
    """A git repository that is an orchestrate project (no hook installed)."""
    return GitProject(tmp_path)


def four_steps(gp: GitProject, **third: Any) -> None:
    """lint, unit (writes a JUnit report), e2e (fails while out/fail-e2e exists), package."""
    report = f"mkdir -p reports && printf '%s' '{JUNIT}' > reports/unit.xml && echo \"unit\" >> \"{gp.out}/order\""
    gp.workflow(
        [
            gp.record_step("lint"),
            {"name": "unit", "type": "command", "run": report, "reports": ["reports/*.xml"]},
            gp.record_step("e2e", **third),
            gp.record_step("package"),
        ]
    )
    gp.write(".gitignore", "reports/\n")
    gp.commit("four steps")


def entries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["step"]: entry for entry in record["log"]}


def test_resume_after_a_failure_in_the_middle_of_four_steps_reruns_two(work: GitProject) -> None:
    four_steps(work)
    (work.out / "fail-e2e").write_text("")
    first = work.orchestrate("run", "pre-push")
    assert first.returncode == 1
    failed = work.records()[-1]
    assert work.ran() == ["lint", "unit", "e2e"]
    work.reset_out()  # the fix: e2e passes now

    result = work.orchestrate("resume", "latest")
    assert result.returncode == 0, result.stdout + result.stderr
    assert work.ran() == ["e2e", "package"]  # the two from the failed step on
    record = work.records()[-1]
    assert record["resumed_from"] == failed["run_id"] and record["status"] == "completed"
    steps = entries(record)
    for name in ("lint", "unit"):
        assert steps[name]["status"] == "passed"
        assert steps[name]["reused_from"] == failed["run_id"]
        assert steps[name]["message"] == f"re-used from run {failed['run_id']} (inputs unchanged)"
    assert steps["e2e"]["rerun_reason"] == f"failed in run {failed['run_id']}"
    assert "reused_from" not in steps["e2e"] and "reused_from" not in steps["package"]
    assert f"[1/4] lint (command): passed — re-used from run {failed['run_id']} (inputs unchanged)" in result.stdout
    # the re-used steps' test cases are in this run's report (logs: see the test below)
    junit = work.root / "runs" / record["run_id"] / "junit.xml"
    assert_valid_junit(junit)
    assert "test_one" in junit.read_text() and "test_two" in junit.read_text()
    assert steps["unit"]["tests"] == 2
    assert (work.root / steps["unit"]["tests_file"]).is_file()
    assert steps["unit"]["tests_file"].startswith(f"runs/{record['run_id']}/")


def test_a_reused_steps_log_is_copied(work: GitProject) -> None:
    work.workflow([{"name": "hello", "type": "command", "run": "echo hello world"}, work.record_step("flaky")])
    work.commit("w")
    (work.out / "fail-flaky").write_text("")
    assert work.orchestrate("run", "pre-push").returncode == 1
    work.reset_out()
    assert work.orchestrate("resume", "latest").returncode == 0
    record = work.records()[-1]
    assert entries(record)["hello"]["reused_from"]
    assert work.orchestrate("logs", "latest", "hello").stdout == "hello world\n"
    assert entries(record)["hello"]["output_tail"] == "hello world"


@pytest.mark.parametrize(
    "change, reason",
    [
        ("definition", "its definition changed since run {}"),
        ("tracked file", "the commit or the working tree changed since run {}"),
        ("untracked file", "the commit or the working tree changed since run {}"),
        ("commit", "the commit or the working tree changed since run {}"),
        ("variable", "the variables it uses changed since run {}"),
    ],
)
def test_a_passed_step_runs_again_when_what_it_depends_on_changed(work: GitProject, change: str, reason: str) -> None:
    lint = work.record_step("lint")
    lint["run"] += " # ${LEVEL:-1}"
    work.workflow([lint, work.record_step("e2e")])
    work.commit("w")
    (work.out / "fail-e2e").write_text("")
    assert work.orchestrate("run", "pre-push", "--var", "LEVEL=1").returncode == 1
    failed = work.records()[-1]["run_id"]
    work.reset_out()
    variable = "1"
    if change == "definition":
        lint["run"] += " && true"
        work.workflow([lint, work.record_step("e2e")])
    elif change == "tracked file":
        work.write("src/app.py", "print('changed')\n")
    elif change == "untracked file":
        work.write("src/new.py", "print('new')\n")
    elif change == "commit":
        work.commit("another", src__other_py="x = 1\n")
    else:
        variable = "2"
    result = work.orchestrate("resume", failed, "--var", f"LEVEL={variable}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert work.ran() == ["lint", "e2e"]
    lint_entry = entries(work.records()[-1])["lint"]
    assert lint_entry["rerun_reason"] == reason.format(failed)
    assert "reused_from" not in lint_entry


def test_force_reuses_nothing(work: GitProject) -> None:
    work.workflow([work.record_step("lint"), work.record_step("e2e")])
    work.commit("w")
    (work.out / "fail-e2e").write_text("")
    work.orchestrate("run", "pre-push")
    work.reset_out()
    assert work.orchestrate("resume", "latest", "--force").returncode == 0
    assert work.ran() == ["lint", "e2e"]
    assert entries(work.records()[-1])["lint"]["rerun_reason"] == "--force"


def test_resume_refuses_what_it_cannot_resume_with_one_line(work: GitProject) -> None:
    work.workflow([work.record_step("lint"), work.record_step("e2e")])
    work.commit("w")
    assert work.orchestrate("run", "pre-push").returncode == 0
    passed = work.records()[-1]["run_id"]
    result = work.orchestrate("resume", passed)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"orchestrate: error: run {passed} did not fail (status completed): nothing to "
        "resume; start a new run with: orchestrate run pre-push\n"
    )
    result = work.orchestrate("resume", "20991231T000000000Z-abcdef")
    assert result.returncode == 2
    assert result.stderr.startswith("orchestrate: error: no run '20991231T000000000Z-abcdef' in ")
    result = work.orchestrate("resume", "nosuchprefix")
    assert result.returncode == 2
    assert "no run id in" in result.stderr and "starts with 'nosuchprefix'" in result.stderr
    (work.out / "fail-e2e").write_text("")
    assert work.orchestrate("run", "pre-push").returncode == 1
    failed = work.records()[-1]["run_id"]
    work.workflow([work.record_step("lint"), work.record_step("e2e renamed")])
    before = sorted(p.name for p in (work.root / "runs").iterdir())
    result = work.orchestrate("resume", failed)
    assert result.returncode == 2
    assert result.stderr == (
        f"orchestrate: error: workflows/pre-push.json has no step 'e2e' any more, the step "
        f"that failed in run {failed}: the workflow changed too much to resume it; start a "
        "new run with: orchestrate run pre-push\n"
    )
    assert sorted(p.name for p in (work.root / "runs").iterdir()) == before  # nothing written


def test_resume_keeps_the_runs_only_and_skip(work: GitProject) -> None:
    work.workflow([work.record_step("lint"), work.record_step("unit"), work.record_step("e2e")])
    work.commit("w")
    (work.out / "fail-e2e").write_text("")
    assert work.orchestrate("run", "pre-push", "--skip", "unit").returncode == 1
    work.reset_out()
    assert work.orchestrate("resume", "latest").returncode == 0
    assert work.ran() == ["e2e"]
    assert entries(work.records()[-1])["unit"]["message"] == "skipped by --skip"


# --- up to date: `sources` --------------------------------------------------------------


def sources_workflow(gp: GitProject) -> None:
    gp.write("api/server.py", "print('api')\n")
    gp.write("web/app.js", "console.log('web')\n")
    gp.workflow(
        [
            gp.record_step("api tests", sources=["api/**/*.py", "pyproject.toml"]),
            gp.record_step("web tests", sources=["web/**"]),
            gp.record_step("always"),
        ]
    )
    gp.commit("sources")


def test_changing_a_source_reruns_only_its_step(work: GitProject) -> None:
    sources_workflow(work)
    assert work.orchestrate("run", "pre-push").returncode == 0
    first = work.records()[-1]["run_id"]
    assert work.ran() == ["api tests", "web tests", "always"]
    work.reset_out()

    result = work.orchestrate("run", "pre-push")
    assert result.returncode == 0
    assert work.ran() == ["always"]
    steps = entries(work.records()[-1])
    for name in ("api tests", "web tests"):
        assert steps[name]["status"] == "skipped"
        assert steps[name]["message"] == f"up to date (inputs unchanged since run {first})"
        assert steps[name]["up_to_date_since"] == first
    assert f"[1/3] api tests (command): skipped — up to date (inputs unchanged since run {first})" in result.stdout
    junit = (work.root / "runs" / work.records()[-1]["run_id"] / "junit.xml").read_text()
    assert f'<skipped message="up to date (inputs unchanged since run {first})"' in junit
    work.reset_out()

    work.write("web/app.js", "console.log('changed')\n")  # uncommitted: the content counts
    assert work.orchestrate("run", "pre-push").returncode == 0
    assert work.ran() == ["web tests", "always"]
    second = work.records()[-1]["run_id"]
    work.reset_out()
    work.write("pyproject.toml", "[project]\n")  # a new file a glob now matches
    assert work.orchestrate("run", "pre-push").returncode == 0
    assert work.ran() == ["api tests", "always"]
    steps = entries(work.records()[-1])
    assert steps["web tests"]["message"] == f"up to date (inputs unchanged since run {second})"


def test_force_and_orchestrate_force_run_everything(work: GitProject) -> None:
    sources_workflow(work)
    work.orchestrate("run", "pre-push")
    for args, env in ((["--force"], {}), ([], {"ORCHESTRATE_FORCE": "1"})):
        work.reset_out()
        assert work.orchestrate("run", "pre-push", *args, **env).returncode == 0
        assert work.ran() == ["api tests", "web tests", "always"]


def test_a_step_whose_definition_or_variables_changed_is_not_up_to_date(work: GitProject) -> None:
    step = work.record_step("api tests", sources=["api/**"])
    step["run"] += " # ${MODE:-fast}"
    work.write("api/x.py", "")
    work.workflow([step])
    work.commit("w")
    work.orchestrate("run", "pre-push")
    work.reset_out()
    work.orchestrate("run", "pre-push", "--var", "MODE=slow")
    assert work.ran() == ["api tests"]
    work.reset_out()
    work.orchestrate("run", "pre-push", "--var", "MODE=slow")
    assert work.ran() == []
    step["timeout"] = 30
    work.workflow([step])
    work.orchestrate("run", "pre-push", "--var", "MODE=slow")
    assert work.ran() == ["api tests"]


def test_a_failed_step_is_never_up_to_date(work: GitProject) -> None:
    work.write("api/x.py", "")
    work.workflow([work.record_step("api tests", sources=["api/**"])])
    work.commit("w")
    (work.out / "fail-api tests").write_text("")
    assert work.orchestrate("run", "pre-push").returncode == 1
    assert work.orchestrate("run", "pre-push").returncode == 1
    assert work.ran() == ["api tests", "api tests"]


def test_a_pre_push_of_the_same_tree_twice_runs_nothing_the_second_time(tmp_path: Path) -> None:
    """A rebase or an amend that changed nothing makes a new commit of the same tree: pushing
    it runs nothing. (The same commit pushed to a second remote is not even a run: the hook
    sees that every pushed commit is on a remote already.)"""
    gp = GitProject(tmp_path)
    assert gp.orchestrate("hook", "install").returncode == 0
    sources_workflow(gp)
    gp.workflow(
        [
            step | {"sources": ["workflows/*.json"]} if step["name"] == "always" else step
            for step in json.loads((gp.root / "workflows/pre-push.json").read_text())["steps"]
        ]
    )
    gp.commit("every step has sources")
    assert gp.push("main").returncode == 0
    assert gp.ran() == ["api tests", "web tests", "always"]
    gp.reset_out()
    before = gp.head()
    gp.git("commit", "-q", "--amend", "--no-edit", "--date=2020-01-01T00:00:00")  # same tree, new commit
    assert gp.head() != before
    result = gp.push("--force", "main")
    assert result.returncode == 0, result.stderr
    assert gp.ran() == []  # nothing ran
    record = gp.records()[-1]
    assert record["trigger"]["push"]["refs"][0]["local_oid"] == gp.head()
    assert {entry["status"] for entry in record["log"]} == {"skipped"}
    assert all(entry["message"].startswith("up to date (inputs unchanged since run ") for entry in record["log"])


# --- the index --------------------------------------------------------------------------


def index_rows(gp: GitProject) -> list[Path]:
    return sorted((gp.root / "runs" / ".index" / "steps").glob("*.json"))


@pytest.mark.parametrize("damage", ["torn", "missing", "forged", "pruned"])
def test_a_damaged_index_is_never_trusted(work: GitProject, damage: str) -> None:
    work.write("api/x.py", "")
    work.workflow([work.record_step("api tests", sources=["api/**"])])
    work.commit("w")
    work.orchestrate("run", "pre-push")
    first = work.records()[-1]["run_id"]
    [row] = index_rows(work)
    work.reset_out()
    if damage == "torn":
        row.write_bytes(row.read_bytes()[:20])
    elif damage == "missing":
        import shutil

        shutil.rmtree(work.root / "runs" / ".index")
    elif damage == "forged":
        # a row that claims a pass of other inputs, naming a run that does not hold it
        data = json.loads(row.read_text())
        work.write("api/x.py", "changed")
        data["inputs_sha256"] = "0" * 64
        row.write_text(json.dumps(data))
        (work.root / "runs" / f"{first}.json").write_text(
            (work.root / "runs" / f"{first}.json")
            .read_text()
            .replace(json.loads(row.read_text())["inputs_sha256"], "0" * 64)
        )
    else:
        for path in (work.root / "runs").glob(f"{first}*"):
            if path.is_file():
                path.unlink()
    work.orchestrate("run", "pre-push")
    if damage in ("torn", "missing"):
        assert work.ran() == []  # rebuilt from the records: the pass is still known
        assert entries(work.records()[-1])["api tests"]["up_to_date_since"] == first
    else:
        assert work.ran() == ["api tests"]  # the record does not hold what the row claims


def test_the_index_lists_every_run_for_runs_to_read(work: GitProject) -> None:
    work.orchestrate("run", "pre-push")
    work.orchestrate("run", "pre-push")
    lines = [json.loads(line) for line in (work.root / "runs/.index/runs.jsonl").read_text().splitlines()]
    ids = [r["run_id"] for r in work.records()]
    assert [line["run_id"] for line in lines if line["status"] == "completed"] == ids
    assert {line["workflow"] for line in lines} == {"pre-push"}


def test_values_are_hashed_with_a_key_never_in_clear(work: GitProject) -> None:
    import hashlib

    step = {"name": "deploy", "type": "command", "run": "true", "env": {"API_TOKEN": "${API_TOKEN}"}}
    work.workflow([step])
    work.commit("w")
    work.orchestrate("run", "pre-push", API_TOKEN="tok-9876543")
    record_text = (work.root / "runs" / f"{work.records()[-1]['run_id']}.json").read_text()
    assert "tok-9876543" not in record_text
    assert hashlib.sha256(b"tok-9876543").hexdigest() not in record_text
    key = work.root / "runs/.hash-key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32


# --- hashing: size and mtime, as git's index ----------------------------------------------


def test_hashes_are_reused_by_size_and_mtime_and_recent_files_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    path = tmp_path / "a.txt"
    path.write_text("one")
    hashes = orchestrate.FileHashes(runs)
    first = hashes.digest(path, os.lstat(path))
    # written within the last second: a second write in the same clock tick would leave its
    # times as they are, so it is read every time
    assert hashes.digest(path, os.lstat(path)) == first and hashes.files_read == 2
    hashes.save()
    assert not hashes.path.exists()
    # older than the window (here: no window): hashed once, then known by its size and times
    monkeypatch.setattr(orchestrate, "RACY_WINDOW_NS", -(10**18))
    hashes.digest(path, os.lstat(path))
    hashes.save()
    again = orchestrate.FileHashes(runs)
    assert again.digest(path, os.lstat(path)) == first and again.files_read == 0
    path.write_text("two")  # the same size: its mtime and ctime tell
    assert again.digest(path, os.lstat(path)) != first and again.files_read == 1
    hashes.path.write_bytes(b'{"version": 1, "files": {"')  # torn: a cache, started anew
    assert orchestrate.FileHashes(runs).digest(path, os.lstat(path)) != first
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert again.digest(fifo, os.lstat(fifo)) == "special:10000"  # never opened


def test_resume_takes_run_s_html_report_flag(project: Project) -> None:
    flag = project.root / "fixed"
    project.workflow(
        "w",
        [{"name": "a", "type": "command", "run": "echo a"}, {"name": "b", "type": "command", "run": f"test -e {flag}"}],
    )
    assert project.cli("run", "w").exit_code == 1
    flag.write_text("")
    page = project.root / "out" / "report.html"
    result = project.cli("resume", "latest", "--html-report", str(page))
    assert result.exit_code == 0, result.stderr
    assert page.read_text().startswith("<!DOCTYPE html>") and "completed" in page.read_text()
