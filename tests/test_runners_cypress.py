"""The cypress step type: spec discovery, the exact Cypress command, results per test,
clear errors, and sharding across CI machines.

The real Cypress binary cannot be downloaded on the machines these tests run on (only the
npm package is reachable; its install step fetches the binary from elsewhere), so no test
runs real Cypress. Instead:

- end to end, each test builds a temporary Cypress project whose node_modules/.bin/cypress
  is tests/fake_cypress.py, a stand-in that accepts orchestrate's command line, writes one
  JUnit file per spec in the layout Cypress's mocha-junit-reporter produces, and exits
  with its failure count modulo 256, as Cypress does. It records the argv, cwd and
  environment it really received, so those are checked as a child process saw them;
- the exact argv, cwd and environment of the Cypress process are checked with
  pytest-subprocess (a faked `Popen`, whose callback writes the JUnit files Cypress would),
  and also at orchestrate's own seam, `orchestrate.run_process`. orchestrate's process
  helper reads a fake process's in-memory output to the end and never signals its pid 0.

A `node` stub on PATH stands in for Node.js, which the step checks for before it starts.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Project, assert_valid_junit
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import orchestrate

FAKE_CYPRESS = Path(__file__).with_name("fake_cypress.py")
INSTALL_HINT = 'run "npm ci" (or "npm install cypress --save-dev") in web'


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def node_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `node` executable on PATH, whether or not Node.js is installed here."""
    bin_dir = tmp_path / "node-bin"
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.write_text("#!/bin/sh\necho v20.0.0\n")
    node.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    return bin_dir


def make_cypress_project(project: Project, specs: dict[str, str], folder: str = "web", install: bool = True) -> Path:
    """A Cypress project under the root: package.json, the stand-in cypress, spec files."""
    web = project.root / folder
    project.write(f"{folder}/package.json", json.dumps({"devDependencies": {"cypress": "15.3.0"}}))
    if install:
        binary = web / "node_modules" / ".bin" / "cypress"
        binary.parent.mkdir(parents=True)
        shutil.copy(FAKE_CYPRESS, binary)
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    for name, body in specs.items():
        project.write(f"{folder}/cypress/e2e/{name}", body)
    return web


def cypress_workflow(project: Project, name: str = "ui", **keys: Any) -> None:
    step = {"name": "ui smoke", "type": "cypress", "project": "./web", **keys}
    project.workflow(name, [step])


def spec(*lines: str) -> str:
    return "".join(f"// fake: {line}\n" for line in lines) + "describe('x', () => {});\n"


def cypress_entry(project: Project) -> dict[str, Any]:
    return project.last_record()["log"][0]


def junit_cypress_cases(project: Project) -> list[dict[str, Any]]:
    import xml.etree.ElementTree as ET

    record = project.last_record()
    root = ET.parse(project.runs / record["run_id"] / "junit.xml").getroot()
    suites = root.findall("testsuite")
    cases = []
    for case in suites[1].findall("testcase"):
        failure = case.find("failure")
        cases.append(
            {
                "classname": case.get("classname"),
                "name": case.get("name"),
                "failure": None if failure is None else failure.get("message"),
                "skipped": case.find("skipped") is not None,
            }
        )
    return cases


# --- results per test, end to end with the stand-in --------------------------------------


def test_all_pass_records_every_spec_and_test(project: Project) -> None:
    make_cypress_project(
        project,
        {
            "login.cy.js": spec("pass 3", "time 1.5"),
            "nested/cart.cy.ts": spec("pass 2", "skip 1"),
            "notes.md": "not a spec",
        },
    )
    cypress_workflow(project)
    result = project.cli("run", "ui")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Running:  cypress/e2e/login.cy.js" in result.stdout  # output streams like any step
    entry = cypress_entry(project)
    assert entry["status"] == "passed"
    assert entry["message"] == "6 Cypress tests passed in 2 spec files"
    assert (entry["tests"], entry["failures"], entry["failed_tests"]) == (6, 0, [])
    assert entry["specs"] == ["cypress/e2e/login.cy.js", "cypress/e2e/nested/cart.cy.ts"]
    assert entry["spec_durations"] == {"cypress/e2e/login.cy.js": 4.5, "cypress/e2e/nested/cart.cy.ts": 0.15}
    assert entry["shard"] is None and entry["artifacts"] == []
    assert entry["exit_code"] == 0
    cases = junit_cypress_cases(project)
    assert [c["name"] for c in cases] == [
        "login › passes 1",
        "login › passes 2",
        "login › passes 3",
        "cart › passes 1",
        "cart › passes 2",
        "cart › is pending 1",
    ]
    assert cases[0]["classname"] == "cypress/e2e/login.cy.js"
    assert [c["skipped"] for c in cases] == [False] * 5 + [True]


def test_failed_tests_reach_the_record_the_summary_and_a_valid_report(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("suite login page", "pass 1", "fail 2"), "b.cy.js": spec("pass 2")})
    cypress_workflow(project)
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    entry = cypress_entry(project)
    assert entry["status"] == "failed"
    assert (entry["tests"], entry["failures"]) == (5, 2)
    assert entry["failed_tests"] == [
        "cypress/e2e/a.cy.js › login page › fails 1",
        "cypress/e2e/a.cy.js › login page › fails 2",
    ]
    assert entry["message"] == (
        "2 of 5 Cypress tests failed: cypress/e2e/a.cy.js › login page › fails 1, "
        "cypress/e2e/a.cy.js › login page › fails 2"
    )
    assert entry["exit_code"] == 2
    assert "2 of 5 Cypress tests failed" in result.stdout
    failing = [c for c in junit_cypress_cases(project) if c["failure"]]
    assert [(c["classname"], c["name"]) for c in failing] == [
        ("cypress/e2e/a.cy.js", "login page › fails 1"),
        ("cypress/e2e/a.cy.js", "login page › fails 2"),
    ]
    assert failing[0]["failure"] == "expected '<h1>' to have text 'Welcome', but the text was 'fails 1'"
    assert_valid_junit(project.runs / project.last_record()["run_id"] / "junit.xml")


def test_junit_with_cypress_suites_validates_against_both_schemas_whatever_the_text(project: Project) -> None:
    # names with XML specials, and a shard and a --junit-xml copy: every consumer must accept it
    make_cypress_project(project, {"x.cy.js": spec('suite <weird> & "quoted" ünïcode ✓', "fail 1", "pass 1", "skip 1")})
    cypress_workflow(project)
    copy = project.root / "reports" / "junit.xml"
    result = project.cli("run", "ui", "--shard", "1/1", "--junit-xml", str(copy))
    assert result.exit_code == 1
    assert_valid_junit(copy)
    assert_valid_junit(project.runs / project.last_record()["run_id"] / "junit.xml")
    assert b'name="ui (shard 1/1) \xe2\x80\xba ui smoke"' in copy.read_bytes()


@pytest.mark.parametrize("failures, exit_code", [(256, 0), (300, 44)])
def test_more_than_255_failures_are_counted_from_the_xml_not_the_exit_code(
    project: Project, failures: int, exit_code: int
) -> None:
    make_cypress_project(project, {"many.cy.js": spec(f"fail {failures}")})
    cypress_workflow(project)
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    entry = cypress_entry(project)
    assert entry["exit_code"] == exit_code  # what Cypress said: failures modulo 256
    assert (entry["status"], entry["tests"], entry["failures"]) == ("failed", failures, failures)
    assert len(entry["failed_tests"]) == orchestrate.CYPRESS_FAILED_NAMES_MAX
    assert entry["message"].startswith(f"{failures} of {failures} Cypress tests failed: ")
    assert entry["message"].endswith(f" and {failures - 3} more")
    assert sum(1 for c in junit_cypress_cases(project) if c["failure"]) == failures


def test_crash_without_xml_fails_the_step_with_its_exit_code(project: Project) -> None:
    make_cypress_project(project, {"broken.cy.js": spec("crash")})
    cypress_workflow(project)
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    entry = cypress_entry(project)
    assert entry["status"] == "failed" and entry["exit_code"] == 1
    assert entry["message"] == (
        f"Cypress exited 1 and wrote no JUnit report to runs/{project.last_record()['run_id']}"
        "/cypress/01-ui-smoke: it stopped before running a spec (see the step log)"
    )
    assert (entry["tests"], entry["failures"]) == (0, 0)
    assert "Webpack Compilation Error" in entry["output_tail"]
    assert_valid_junit(project.runs / project.last_record()["run_id"] / "junit.xml")


def test_nonzero_exit_with_passing_reports_still_fails(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 2"), "b.cy.js": spec("crash")})
    cypress_workflow(project)
    assert project.cli("run", "ui").exit_code == 1
    entry = cypress_entry(project)
    assert entry["message"] == ("Cypress exited 1 although its JUnit reports record no failed test (see the step log)")
    assert (entry["tests"], entry["failures"]) == (2, 0)


def test_an_unreadable_report_fails_the_step(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1")})
    cypress_workflow(project)
    real = orchestrate.run_process

    def tear_the_report(argv: Any, **kwargs: Any) -> orchestrate.ProcessResult:
        result = real(argv, **kwargs)
        mocha_file = Path(argv[argv.index("--reporter-options") + 1].removeprefix("mochaFile="))
        for path in mocha_file.parent.glob("*.xml"):
            path.write_text(path.read_text()[:60])
        return result

    monkeypatch.setattr(orchestrate, "run_process", tear_the_report)
    assert project.cli("run", "ui").exit_code == 1
    assert "unreadable JUnit file results-" in cypress_entry(project)["message"]


def test_a_retry_does_not_count_the_previous_attempts_reports(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1", "fail 1")})
    cypress_workflow(project, retries=1)
    assert project.cli("run", "ui").exit_code == 1
    entry = cypress_entry(project)
    assert entry["attempts"] == 2
    assert (entry["tests"], entry["failures"]) == (2, 1)


def test_timeout_ends_cypress_and_keeps_what_it_reported(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1"), "b.cy.js": spec("pass 1", "sleep 30")})
    cypress_workflow(project, timeout=1.5)
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    entry = cypress_entry(project)
    assert entry["message"] == "timed out after 1.5 s"
    assert entry["tests"] == 1 and entry["duration_s"] < 15


def test_screenshots_and_videos_of_the_run_are_copied_and_listed(project: Project) -> None:
    web = make_cypress_project(project, {"a.cy.js": spec("fail 1", "screenshot", "video")})
    old = project.write("web/cypress/screenshots/old.cy.js/from an earlier run.png", b"old")
    cypress_workflow(project)
    project.cli("run", "ui")
    run_id = project.last_record()["run_id"]
    base = f"runs/{run_id}/artifacts/01-ui-smoke"
    assert cypress_entry(project)["artifacts"] == [
        f"{base}/screenshots/a.cy.js/a -- fails 1 (failed).png",
        f"{base}/videos/a.cy.js.mp4",
    ]
    for path in cypress_entry(project)["artifacts"]:
        assert (project.root / path).is_file()
    assert old.is_file() and (web / "cypress/videos/a.cy.js.mp4").is_file()


# --- the exact command ------------------------------------------------------------------


def test_exact_argv_cwd_and_environment_at_the_process_seam(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    web = make_cypress_project(project, {"b.cy.js": spec("pass 1"), "a.cy.jsx": spec("pass 1")})
    cypress_workflow(
        project,
        browser="chrome",
        headed=True,
        env={"API_URL": "http://x", "RETRIES": "2"},
        config={"video": False, "viewportWidth": 1280},
    )
    calls: list[dict[str, Any]] = []

    def fake_run_process(argv: Any, *, cwd: Path, env: dict[str, str], **kwargs: Any) -> Any:
        calls.append({"argv": argv, "cwd": cwd, "env": env})
        return orchestrate.ProcessResult(exit_code=0, timed_out=False)

    monkeypatch.setattr(orchestrate, "run_process", fake_run_process)
    project.cli("run", "ui")
    [call] = calls
    run_id = project.last_record()["run_id"]
    report = project.runs / run_id / "cypress" / "01-ui-smoke"
    assert call["argv"] == [
        f"{web}/node_modules/.bin/cypress",
        "run",
        "--project",
        str(web),
        "--spec",
        "cypress/e2e/a.cy.jsx,cypress/e2e/b.cy.js",
        "--reporter",
        "junit",
        "--reporter-options",
        f"mochaFile={report}/results-[hash].xml,includePending=true",
        "--browser",
        "chrome",
        "--headed",
        "--config",
        "video=false,viewportWidth=1280",
    ]
    assert call["cwd"] == web
    assert call["env"]["API_URL"] == "http://x"  # a step's env is in its environment too
    # and reaches Cypress.env() as CYPRESS_<name>, never on the command line (issue 12)
    assert (call["env"]["CYPRESS_API_URL"], call["env"]["CYPRESS_RETRIES"]) == ("http://x", "2")
    assert call["env"]["ORCHESTRATE_STEP"] == "ui smoke"
    # Cypress ran nothing: no report is a failure, never a pass
    assert "wrote no JUnit report" in cypress_entry(project)["message"]


def test_exact_argv_and_environment_with_pytest_subprocess(project: Project, fp: Any) -> None:
    """The real Cypress cannot run here: pytest-subprocess fakes its process."""
    web = make_cypress_project(project, {"login.cy.js": spec("pass 1")}, install=True)
    cypress_workflow(project, browser="electron", env={"SHOP": "demo"}, config={"retries": 1})
    fp.allow_unregistered(True)  # git and the like run for real

    seen: dict[str, Any] = {}

    def write_reports(process: Any) -> None:
        seen["kwargs"] = process.kwargs
        argv = process.args
        mocha_file = argv[argv.index("--reporter-options") + 1].split(",")[0].split("=", 1)[1]
        target = Path(mocha_file.replace("[hash]", "fake1"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="Mocha Tests" time="0.5" tests="2" failures="1">'
            '<testsuite name="Root Suite" timestamp="2026-11-27T15:40:00" tests="0" file="cypress/e2e/login.cy.js" time="0" failures="0"></testsuite>'
            '<testsuite name="login" timestamp="2026-11-27T15:40:00" tests="2" time="0.5" failures="1">'
            '<testcase name="login works" time="0.2" classname="works"></testcase>'
            '<testcase name="login rejects" time="0.3" classname="rejects"><failure message="expected 401" type="AssertionError">'
            "AssertionError: expected 401</failure></testcase></testsuite></testsuites>"
        )

    run_id_holder: dict[str, str] = {}
    binary = str(web / "node_modules" / ".bin" / "cypress")
    fp.register(
        [binary, fp.any()], stdout=["Running: login.cy.js", "1 of 2 failed"], returncode=1, callback=write_reports
    )
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    run_id_holder["id"] = project.last_record()["run_id"]
    [call] = [c for c in fp.calls if c[0] == binary]
    report = project.runs / run_id_holder["id"] / "cypress" / "01-ui-smoke"
    assert list(call) == [
        binary,
        "run",
        "--project",
        str(web),
        "--spec",
        "cypress/e2e/login.cy.js",
        "--reporter",
        "junit",
        "--reporter-options",
        f"mochaFile={report}/results-[hash].xml,includePending=true",
        "--browser",
        "electron",
        "--config",
        "retries=1",
    ]
    entry = cypress_entry(project)
    assert entry["tests"] == 2 and entry["failures"] == 1
    assert entry["failed_tests"] == ["cypress/e2e/login.cy.js › login › rejects"]
    assert "Running: login.cy.js" in entry["output_tail"]
    env = seen["kwargs"]["env"]
    assert env["SHOP"] == "demo" and env["CYPRESS_SHOP"] == "demo" and env["ORCHESTRATE_STEP"] == "ui smoke"
    assert env["ORCHESTRATE_RUN_ID"] == run_id_holder["id"]
    assert seen["kwargs"]["cwd"] == str(web) and seen["kwargs"]["start_new_session"] is True


def test_the_child_process_gets_that_argv_cwd_and_environment(project: Project) -> None:
    web = make_cypress_project(project, {"a.cy.js": spec("pass 1")})
    cypress_workflow(project, env={"SHOP": "demo"})
    calls = project.root / "calls.jsonl"
    result = project.cli("run", "ui", env={"FAKE_CYPRESS_CALLS": str(calls)})
    assert result.exit_code == 0
    [call] = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["argv"][:5] == ["run", "--project", str(web), "--spec", "cypress/e2e/a.cy.js"]
    assert "--env" not in call["argv"]
    assert Path(call["cwd"]) == web
    assert call["env"]["CYPRESS_SHOP"] == "demo" and call["env"]["ORCHESTRATE_WORKFLOW"] == "ui"


def test_dry_run_shows_the_exact_command_line_with_secrets_masked(project: Project) -> None:
    web = make_cypress_project(project, {"a.cy.js": spec("pass 1"), "b.cy.js": spec("pass 1")})
    cypress_workflow(project, env={"API_TOKEN": "${API_TOKEN}"}, config={"retries": {"runMode": 2}})
    result = project.cli("run", "ui", "--dry-run", env={"API_TOKEN": "s3cr3t-value"})
    assert result.exit_code == 0, result.stderr
    expected = (
        f"cd {web} && CYPRESS_API_TOKEN=*** {web}/node_modules/.bin/cypress run --project {web} "
        "--spec cypress/e2e/a.cy.js,cypress/e2e/b.cy.js --reporter junit --reporter-options "
        f"'mochaFile={project.runs}/dry-run/cypress/01-ui-smoke/results-[hash].xml,includePending=true' "
        '--config \'{"retries":{"runMode":2}}\''
    )
    assert f"        {expected}\n" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr
    assert not project.runs.exists() or not list(project.runs.glob("*.json"))  # nothing ran


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"a": "1", "b": True, "c": 2.5}, "a=1,b=true,c=2.5"),
        ({"list": "a,b"}, '{"list":"a,b"}'),
        ({"obj": {"x": 1}}, '{"obj":{"x":1}}'),
    ],
)
def test_env_and_config_values(values: dict[str, Any], expected: str) -> None:
    assert orchestrate._cypress_option_value(values) == expected


def test_spec_glob_braces_and_double_star(tmp_path: Path) -> None:
    for rel in [
        "cypress/e2e/b.cy.js",
        "cypress/e2e/a/z.cy.tsx",
        "cypress/e2e/a/y.cy.ts",
        "cypress/e2e/a/deep/w.cy.jsx",
        "cypress/e2e/notes.md",
        "cypress/e2e/node_modules/q.cy.js",
        "cypress/e2e/.cache/h.cy.js",
        "cypress/other/o.cy.js",
        "cypress/e2e/x.cy.json",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    find = orchestrate.find_spec_files
    assert find(tmp_path, "cypress/e2e", orchestrate.CYPRESS_DEFAULT_SPEC) == [
        "cypress/e2e/a/deep/w.cy.jsx",
        "cypress/e2e/a/y.cy.ts",
        "cypress/e2e/a/z.cy.tsx",
        "cypress/e2e/b.cy.js",
    ]
    assert find(tmp_path, "cypress/e2e/", "a/*.{ts,tsx}") == ["cypress/e2e/a/y.cy.ts", "cypress/e2e/a/z.cy.tsx"]
    assert find(tmp_path, "cypress/e2e", "./a/**/*.cy.[jt]sx") == [
        "cypress/e2e/a/deep/w.cy.jsx",
        "cypress/e2e/a/z.cy.tsx",
    ]
    assert find(tmp_path, "cypress", "{e2e,other}/[!a]*.cy.js") == ["cypress/e2e/b.cy.js", "cypress/other/o.cy.js"]
    assert find(tmp_path, "missing", "**") == []


@pytest.mark.parametrize(
    "pattern, expanded",
    [
        ("*.cy.{js,ts}", ["*.cy.js", "*.cy.ts"]),
        ("{a,b}/{c,d}", ["a/c", "a/d", "b/c", "b/d"]),
        ("x{a,{b,c}}", ["xa", "xb", "xc"]),
        ("{x}{a,b}", ["{x}a", "{x}b"]),
        ("{a", ["{a"]),
        ("{a,a}", ["a"]),
    ],
)
def test_brace_expansion(pattern: str, expanded: list[str]) -> None:
    assert orchestrate.expand_braces(pattern) == expanded


# Shape copied from a real Cypress run's mocha-junit-reporter file (Windows path separators,
# nested describe, CDATA stack, a pending test).
REAL_CYPRESS_JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="Mocha Tests" time="6.1000" tests="3" failures="1">
  <testsuite name="Root Suite" timestamp="2021-08-18T11:06:04" tests="0" file="cypress\\e2e\\todo.cy.js" time="0.0000" failures="0">
  </testsuite>
  <testsuite name="adds items" timestamp="2021-08-18T11:06:04" tests="3" time="2.0000" failures="1">
    <testcase name="example to-do app adds items displays two todo items by default" time="1.5000" classname="displays two todo items by default">
      <failure message="Timed out retrying after 4000ms: expected &apos;&lt;li&gt;&apos; to have text &apos;Walk the dog2&apos;" type="AssertionError"><![CDATA[AssertionError: Timed out retrying after 4000ms
    at Context.eval (webpack:///./cypress/e2e/todo.cy.js:30:39)]]></failure>
    </testcase>
    <testcase name="example to-do app adds items can add new todo items" time="0.5000" classname="can add new todo items">
    </testcase>
    <testcase name="example to-do app adds items later" time="0.0000" classname="later"><skipped/></testcase>
  </testsuite>
</testsuites>
"""


def test_parse_a_real_cypress_junit_file() -> None:
    report = orchestrate.parse_cypress_junit(REAL_CYPRESS_JUNIT.encode())
    assert report.spec == "cypress/e2e/todo.cy.js" and report.time == 6.1
    assert [(t.suite, t.title, t.status, t.time) for t in report.tests] == [
        ("example to-do app adds items", "displays two todo items by default", "failed", 1.5),
        ("example to-do app adds items", "can add new todo items", "passed", 0.5),
        ("example to-do app adds items", "later", "skipped", 0.0),
    ]
    failed = report.tests[0]
    assert failed.display_name == (
        "cypress/e2e/todo.cy.js › example to-do app adds items › displays two todo items by default"
    )
    assert failed.message.startswith("Timed out retrying after 4000ms: expected '<li>'")
    assert failed.text.startswith("AssertionError: Timed out")


# --- clear errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "no project",
            ("Cypress project folder web does not exist (check the step's 'project', or create it in an earlier step)"),
        ),
        (
            "no package.json",
            (
                'web has no package.json: not a Node project (run "npm init -y" and '
                '"npm install cypress --save-dev" there)'
            ),
        ),
        ("not installed", f"Cypress is not installed in web: {INSTALL_HINT}"),
        ("no node", "node is not on PATH: install Node.js or add its bin folder to PATH"),
    ],
)
def test_what_is_missing_on_disk_fails_the_step_with_the_fix(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str, message: str
) -> None:
    if case != "no project":
        web = make_cypress_project(project, {"a.cy.js": spec("pass 1")}, install=case != "not installed")
        if case == "no package.json":
            (web / "package.json").unlink()
        if case == "no node":
            empty = tmp_path / "empty-bin"
            empty.mkdir()
            monkeypatch.setenv("PATH", str(empty))
    cypress_workflow(project)
    validated = project.cli("validate", "ui")
    assert validated.exit_code == 0
    assert f'orchestrate: warning: workflows/ui.json: steps[0] "ui smoke": {message}' in validated.stderr
    planned = project.cli("run", "ui", "--dry-run")
    assert planned.exit_code == 0 and f"warning: {message}" in planned.stdout
    result = project.cli("run", "ui")
    assert result.exit_code == 1, result.stdout
    entry = cypress_entry(project)
    assert entry["status"] == "failed" and entry["message"] == message
    assert "Traceback" not in result.stdout + result.stderr


def test_an_earlier_step_may_install_cypress(project: Project) -> None:
    """What is on disk is checked when the step starts: `npm ci` in a step before is fine."""
    make_cypress_project(project, {"a.cy.js": spec("pass 1")}, install=False)
    install = (
        f"mkdir -p web/node_modules/.bin && cp {FAKE_CYPRESS} web/node_modules/.bin/cypress"
        " && chmod +x web/node_modules/.bin/cypress"
    )
    project.workflow(
        "ui",
        [
            {"name": "npm ci", "type": "command", "run": install},
            {"name": "ui smoke", "type": "cypress", "project": "./web"},
        ],
    )
    result = project.cli("run", "ui")
    assert result.exit_code == 0, result.stdout
    assert project.last_record()["log"][1]["tests"] == 1


def test_no_matching_specs_fails_or_with_allow_empty_skips(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1")})
    cypress_workflow(project, folder="cypress/smoke")
    message = (
        "no spec files match '**/*.cy.{js,jsx,ts,tsx}' in web/cypress/smoke (set 'folder' or "
        "'spec', or \"allow_empty\": true to skip the step instead)"
    )
    assert f"warning: {message}" in project.cli("run", "ui", "--dry-run").stdout
    assert project.cli("run", "ui").exit_code == 1
    assert cypress_entry(project)["message"] == message

    cypress_workflow(project, folder="cypress/e2e", spec="**/*.feature", allow_empty=True)
    result = project.cli("run", "ui")
    assert result.exit_code == 0
    entry = cypress_entry(project)
    assert entry["status"] == "skipped"
    assert entry["message"] == "no spec files match '**/*.feature' in web/cypress/e2e"


# --- definitions and cypress_modules --------------------------------------------------------


def test_cypress_modules_short_names_resolve(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 2")}, folder="apps/shop")
    project.write("orchestrate.json", json.dumps({"cypress_modules": {"shop": "apps/shop"}}))
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress", "project": "shop"}])
    result = project.cli("run", "ui")
    assert result.exit_code == 0, result.stdout
    assert cypress_entry(project)["tests"] == 2
    assert f"--project {project.root / 'apps/shop'} " in project.cli("run", "ui", "--dry-run").stdout


def test_a_project_without_slash_that_is_a_folder_is_that_folder(project: Project) -> None:
    """Not a cypress_modules name, but a folder under the root: no './e2e' needed."""
    make_cypress_project(project, {"a.cy.js": spec("pass 2")}, folder="e2e")
    project.write("orchestrate.json", json.dumps({"cypress_modules": {"shop": "apps/shop"}}))
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress", "project": "e2e"}])
    assert project.cli("validate", "ui").exit_code == 0
    result = project.cli("run", "ui")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert cypress_entry(project)["tests"] == 2
    assert f"--project {project.root / 'e2e'} " in project.cli("run", "ui", "--dry-run").stdout


@pytest.mark.parametrize(
    "modules, value, message",
    [
        (
            {"smoke": "a/b", "regression": "c/d"},
            "smok",
            (
                "workflows/ui.json: steps[0] \"ui smoke\": key 'project': 'smok' is not a cypress_modules short name "
                "(known: regression, smoke) (did you mean 'smoke'?); write a folder with a '/', e.g. './smok'"
            ),
        ),
        (
            None,
            "web",
            (
                "workflows/ui.json: steps[0] \"ui smoke\": key 'project': 'web' is not a cypress_modules short name "
                "(orchestrate.json defines no cypress_modules); write a folder with a '/', e.g. './web'"
            ),
        ),
    ],
)
def test_unknown_short_name_is_a_definition_error(
    project: Project, modules: dict[str, str] | None, value: str, message: str
) -> None:
    if modules is not None:
        project.write("orchestrate.json", json.dumps({"cypress_modules": modules}))
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress", "project": value}])
    for args in (["run", "ui"], ["run", "ui", "--dry-run"], ["validate", "ui"]):
        result = project.cli(*args)
        assert result.exit_code == 2
        assert result.stderr == f"orchestrate: error: {message}\n"
    assert not project.runs.exists() or not list(project.runs.glob("*.json"))


@pytest.mark.parametrize(
    "step, message",
    [
        ({"folder": "/abs"}, "key 'folder': '/abs' must be a non-empty path inside the project"),
        ({"spec": " "}, "key 'spec': ' ' must be a non-empty path inside the project"),
        ({"headed": "yes"}, "key 'headed' must be true or false, not string"),
        ({"env": {"A": 1}}, "key 'env.A' must be a string, not integer"),
        ({"config": []}, "key 'config' must be an object, not list"),
        ({"projet": "x"}, "unknown key 'projet' (did you mean 'project'?)"),
        ({"project": None}, "key 'project' must be a string, not null"),
    ],
)
def test_bad_cypress_keys(project: Project, step: dict[str, Any], message: str) -> None:
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress", "project": "./web", **step}])
    result = project.cli("validate", "ui")
    assert result.exit_code == 2
    assert result.stderr == f'orchestrate: error: workflows/ui.json: steps[0] "ui smoke": {message}\n'


def test_missing_project_key(project: Project) -> None:
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress"}])
    result = project.cli("validate", "ui")
    assert result.exit_code == 2
    assert "steps[0] \"ui smoke\": missing required key 'project'" in result.stderr


# --- sharding ---------------------------------------------------------------------------------


def check_plan(specs: list[str], count: int, durations: dict[str, float] | None) -> list[list[str]]:
    """The properties every shard plan must have."""
    plan = orchestrate.plan_shards(specs, count, durations)
    assert len(plan) == count
    flat = [s for shard in plan for s in shard]
    assert len(flat) == len(set(flat)), "disjoint"
    assert sorted(flat) == sorted(set(specs)), "covers every spec"
    shuffled = list(specs)
    random.Random(len(specs)).shuffle(shuffled)
    assert orchestrate.plan_shards(shuffled, count, durations) == plan, "independent of input order"
    for index in range(1, count + 1):
        assert orchestrate.shard_specs(specs, index, count, durations) == plan[index - 1]
    if durations and all(s in durations for s in specs):
        loads = [sum(durations[s] for s in shard) for shard in plan]
        ideal = sum(durations.values()) / count
        assert max(loads) <= ideal + max(durations.values()) + 1e-9, "balanced by duration"
    if not durations:
        sizes = [len(shard) for shard in plan]
        assert max(sizes) - min(sizes) <= 1, "even by count"
    return plan


@pytest.mark.parametrize("count", range(1, 6))
def test_shards_are_disjoint_complete_stable_and_balanced(count: int) -> None:
    rng = random.Random(count)
    for total in range(1, 41):
        specs = [f"cypress/e2e/spec-{i:02d}.cy.js" for i in range(total)]
        check_plan(specs, count, None)
        durations = {s: round(rng.uniform(0.2, 180.0), 3) for s in specs}
        check_plan(specs, count, durations)
        check_plan(specs, count, {s: d for s, d in durations.items() if rng.random() < 0.5})
        check_plan(specs, count, {s: 0.0 for s in specs})


@settings(max_examples=200, deadline=None)
@given(
    durations=st.dictionaries(
        st.text("abcdefgh/.", min_size=1, max_size=12), st.floats(0, 1e5, allow_nan=False), min_size=1, max_size=40
    ),
    count=st.integers(1, 5),
)
def test_shard_properties_hold_for_any_recorded_durations(durations: dict[str, float], count: int) -> None:
    rounded = {s: round(d, 3) for s, d in durations.items()}
    check_plan(list(rounded), count, rounded)


def test_shard_plan_is_the_same_on_another_machine() -> None:
    """Another interpreter with another hash seed (as on another CI machine) plans the same."""
    specs = [f"cypress/e2e/{name}.cy.js" for name in ("z", "a", "m", "b", "y", "c", "k", "q")]
    durations = {"cypress/e2e/z.cy.js": 30.5, "cypress/e2e/a.cy.js": 12.25, "cypress/e2e/m.cy.js": 12.25}
    here = orchestrate.plan_shards(specs, 3, durations)
    code = (
        "import json, sys, orchestrate; specs, durations = json.load(sys.stdin); "
        "print(json.dumps(orchestrate.plan_shards(specs[::-1], 3, durations)))"
    )
    for seed in ("0", "1", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([specs, durations]),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(done.stdout) == here


def test_durations_come_from_earlier_records_newest_first() -> None:
    records: list[dict[str, Any]] = [
        {
            "workflow": "w",
            "log": [{"step": "ui", "spec_durations": {"a": 2.0}}, {"step": "other", "spec_durations": {"b": 9.0}}],
        },
        {
            "workflow": "w",
            "log": [{"step": "ui", "spec_durations": {"a": 5.0, "b": 3.0, "c": "x", "d": -1, "e": True}}],
        },
        {"workflow": "v", "log": [{"step": "ui", "spec_durations": {"f": 1.0}}]},
        {"run_id": "x", "unreadable": "bad"},
    ]
    assert orchestrate.spec_durations_from_records(records, "ui", "w") == {"a": 2.0, "b": 3.0}


@pytest.mark.parametrize("index, count", [(0, 3), (4, 3), (1, 0)])
def test_shard_specs_rejects_impossible_shards(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        orchestrate.shard_specs(["a"], index, count)


def test_shards_of_a_run_split_the_suite_end_to_end(project: Project) -> None:
    specs = {f"s{i}.cy.js": spec("pass 1") for i in range(7)}
    make_cypress_project(project, specs)
    project.workflow(
        "ui",
        [
            {"name": "ui smoke", "type": "cypress", "project": "./web"},
            {"name": "lint", "type": "command", "run": "true"},
            {"name": "once", "type": "command", "run": "true", "shard": "first"},
        ],
    )
    seen: list[str] = []
    for index in (1, 2, 3):
        result = project.cli("run", "ui", "--shard", f"{index}/3")
        assert result.exit_code == 0, result.stdout
        record = project.last_record()
        entry = record["log"][0]
        assert entry["shard"] == f"{index}/3" and record["options"]["shard"] == f"{index}/3"
        assert entry["tests"] == len(entry["specs"]) in (2, 3)
        seen += entry["specs"]
        assert record["log"][1]["status"] == "passed"  # other steps run on every shard
        assert record["log"][2]["status"] == ("passed" if index == 1 else "skipped")
        junit = (project.runs / record["run_id"] / "junit.xml").read_text()
        assert f'name="ui (shard {index}/3)"' in junit
        assert_valid_junit(project.runs / record["run_id"] / "junit.xml")
    assert sorted(seen) == sorted(f"cypress/e2e/{name}" for name in specs)


def test_shards_balance_by_durations_recorded_in_earlier_runs(project: Project) -> None:
    times = {"long": 20, "mid1": 9, "mid2": 8, "short1": 2, "short2": 1}
    make_cypress_project(project, {f"{n}.cy.js": spec("pass 1", f"time {t}") for n, t in times.items()})
    cypress_workflow(project)
    assert project.cli("run", "ui").exit_code == 0  # a full run records every spec's duration
    durations = cypress_entry(project)["spec_durations"]
    assert durations == {f"cypress/e2e/{n}.cy.js": float(t) for n, t in times.items()}
    result = project.cli("run", "ui", env={"ORCHESTRATE_SHARD": "1/2"})
    assert result.exit_code == 0
    assert cypress_entry(project)["specs"] == ["cypress/e2e/long.cy.js"]  # 20 s alone; 20 s on shard 2
    project.cli("run", "ui", "--shard", "2/2")
    assert cypress_entry(project)["specs"] == [
        "cypress/e2e/mid1.cy.js",
        "cypress/e2e/mid2.cy.js",
        "cypress/e2e/short1.cy.js",
        "cypress/e2e/short2.cy.js",
    ]


def test_a_shard_with_nothing_to_run_skips_the_step(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1"), "b.cy.js": spec("pass 1")})
    cypress_workflow(project)
    result = project.cli("run", "ui", "--shard", "3/3")
    assert result.exit_code == 0
    entry = cypress_entry(project)
    assert entry["status"] == "skipped"
    assert entry["message"] == "shard 3/3 has no spec files to run (2 spec files over 3 shards)"
    assert entry["specs"] == [] and entry["shard"] == "3/3"
    dry = project.cli("run", "ui", "--dry-run", "--shard", "2/3").stdout
    assert "--spec cypress/e2e/b.cy.js " in dry and "shard 2/3: 1 of 2 spec files" in dry


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0", "2", "-1/3", "1/3/5"])
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_bad_shard_values_are_usage_errors(project: Project, value: str, source: str) -> None:
    make_cypress_project(project, {"a.cy.js": spec("pass 1")})
    cypress_workflow(project)
    if source == "flag":
        result = project.cli("run", "ui", "--shard", value)
    else:
        result = project.cli("run", "ui", env={"ORCHESTRATE_SHARD": value})
    assert result.exit_code == 2
    assert result.stderr == (
        f"orchestrate: error: --shard {value!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/3\n"
    )
    assert not project.runs.exists() or not list(project.runs.glob("*.json"))


# --- what ships ------------------------------------------------------------------------------


def test_sample_project_is_a_real_cypress_project() -> None:
    sample = REPO / "scripts" / "node" / "cypress" / "project1"
    package = json.loads((sample / "package.json").read_text())
    assert "cypress" in package["devDependencies"]
    lock = json.loads((sample / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/cypress"]["version"] == package["devDependencies"]["cypress"]
    assert (sample / "cypress.config.js").is_file() and not (sample / "node_modules").exists()
    specs = orchestrate.find_spec_files(sample, orchestrate.CYPRESS_DEFAULT_FOLDER, orchestrate.CYPRESS_DEFAULT_SPEC)
    assert specs == ["cypress/e2e/home.cy.js", "cypress/e2e/sanity.cy.js"]
    for name in specs:
        assert "describe(" in (sample / name).read_text()


def test_sample_project_plan_from_the_repository(tmp_path: Path) -> None:
    """Without node_modules the plan warns with the fix and still shows the exact command."""
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "smoke.json").write_text(
        json.dumps(
            {"steps": [{"name": "ui smoke tests", "type": "cypress", "project": "scripts/node/cypress/project1"}]}
        )
    )
    result = CliRunner().invoke(
        orchestrate.app,
        [
            "--root",
            str(REPO),
            "--workflows-dir",
            str(workflows),
            "--runs-dir",
            str(tmp_path / "runs"),
            "run",
            "smoke",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    sample = REPO / "scripts/node/cypress/project1"
    assert (
        f"{sample}/node_modules/.bin/cypress run --project {sample} "
        "--spec cypress/e2e/home.cy.js,cypress/e2e/sanity.cy.js --reporter junit"
    ) in result.stdout
    if not (sample / "node_modules").exists():
        assert (
            'warning: Cypress is not installed in scripts/node/cypress/project1: run "npm ci" '
            '(or "npm install cypress --save-dev") in scripts/node/cypress/project1'
        ) in result.stdout


def test_shard_ci_examples_run_three_shards_and_publish_every_report() -> None:
    import yaml

    workflow = yaml.safe_load((REPO / "hooks" / "github-actions-shard.yml").read_text())
    [job] = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert job["strategy"]["fail-fast"] is False
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "orchestrate run deploy --shard ${{ matrix.shard }}/3" in runs
    uploads = [s for s in job["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["if"] == "always()"
    jenkins = (REPO / "hooks" / "Jenkinsfile.shard").read_text()
    assert "parallel {" in jenkins
    for index in (1, 2, 3):
        assert f"orchestrate run deploy --shard {index}/3 --junit-xml reports/junit-shard-{index}.xml" in jenkins
    assert jenkins.count("junit ") >= 3


def test_every_orchestrate_command_in_the_shard_examples_is_valid(project: Project) -> None:
    """Each `orchestrate …` line of the examples runs as a dry run against a deploy workflow."""
    project.workflow("deploy", [{"name": "ui smoke", "type": "command", "run": "true"}])
    lines = []
    for name in ("github-actions-shard.yml", "Jenkinsfile.shard"):
        for raw in (REPO / "hooks" / name).read_text().splitlines():
            text = raw.strip().removeprefix("run:").removeprefix("sh").strip().strip("'\"")
            text = text.removeprefix(".orchestrate-venv/bin/")  # Jenkins: the workspace's virtualenv
            if text.startswith("orchestrate "):
                lines.append(text.replace("${{ matrix.shard }}", "2"))
    assert len(lines) == 4  # one in the GitHub matrix job, one per Jenkins branch
    for line in lines:
        result = project.cli(*shlex.split(line)[1:], "--dry-run")
        assert result.exit_code == 0, (line, result.stderr)


# --- issue 11: E2BIG and the modes of what orchestrate writes under runs/ -------------------------


def test_thousands_of_specs_run_in_batches_that_merge_into_one_step(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One comma-joined --spec of 2,400 long paths is ~170 KB: more than Linux takes as one
    argument (128 KiB), so 0.1.0 could not even start Cypress (E2BIG)."""
    names = {
        f"area-{i // 100:02d}/a-rather-long-spec-file-name-for-batching-{i:04d}.cy.js": spec("pass 1")
        for i in range(2400)
    }
    make_cypress_project(project, names)
    names["area-00/a-rather-long-spec-file-name-for-batching-0007.cy.js"] = spec("fail 1")
    project.write("web/cypress/e2e/area-00/a-rather-long-spec-file-name-for-batching-0007.cy.js", spec("fail 1"))
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CYPRESS_CALLS", str(calls))
    cypress_workflow(project)
    dry = project.cli("run", "ui", "--dry-run")
    assert dry.stdout.count("node_modules/.bin/cypress run --project") == 2
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    assert "cypress: 2400 of 2400 spec files in 2 batches (one command line would be too long)" in result.stdout
    entry = cypress_entry(project)
    assert (entry["tests"], entry["failures"], entry["batches"], len(entry["specs"])) == (2400, 1, 2, 2400)
    assert entry["message"] == (
        "1 of 2400 Cypress tests failed: cypress/e2e/area-00/"
        "a-rather-long-spec-file-name-for-batching-0007.cy.js › a-rather-long-spec-file-name-for-batching-0007 › fails 1"
    )
    argvs = [json.loads(line)["argv"] for line in calls.read_text().splitlines()]
    spec_args = [argv[argv.index("--spec") + 1] for argv in argvs]
    assert len(spec_args) == 2 and all(len(arg.encode()) <= orchestrate.CYPRESS_SPEC_ARG_BYTES for arg in spec_args)
    assert sorted(",".join(spec_args).split(",")) == sorted(f"cypress/e2e/{n}" for n in names)
    assert len(junit_cypress_cases(project)) == 2400


def test_spec_batches_keep_order_and_budget() -> None:
    assert orchestrate.spec_batches([]) == []
    assert orchestrate.spec_batches(["aaaa", "bbbb", "cccc"], budget=10) == [["aaaa", "bbbb"], ["cccc"]]
    assert orchestrate.spec_batches(["a" * 50, "b"], budget=10) == [["a" * 50], ["b"]]  # one too long alone still runs


def test_folders_and_files_under_runs_are_never_world_writable(project: Project) -> None:
    make_cypress_project(project, {"a.cy.js": spec("fail 1", "screenshot", "video")})
    cypress_workflow(project)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    from conftest import orchestrate_bin

    done = subprocess.run(
        ["sh", "-c", 'umask 000; exec "$@"', "sh", orchestrate_bin(), "--root", str(project.root), "run", "ui"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    run_dir = project.runs / project.last_record()["run_id"]
    assert cypress_entry(project)["artifacts"], "the stand-in wrote no screenshot or video"
    checked = list(run_dir.rglob("*"))
    assert any(p.name == "01-ui-smoke" and p.parent.name == "cypress" for p in checked)
    for path in [run_dir, *checked]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = orchestrate.RUNS_DIR_MODE if path.is_dir() else orchestrate.RUNS_FILE_MODE
        assert mode == expected, f"{path}: {oct(mode)}"


# --- issue 12: secrets never on Cypress's command line or in its files under runs/ --------

SECRET = "tok-5c0ffee5ecre7"


def test_secret_env_goes_to_cypress_as_environment_never_argv_and_its_files_are_masked(project: Project) -> None:
    make_cypress_project(
        project,
        {
            "login.cy.js": spec(f"suite login as {SECRET}", "pass 1", "fail 1", "screenshot"),
            f"{SECRET}.cy.js": spec("pass 1"),
        },
    )
    project.workflow(
        "ui",
        [
            {
                "name": "ui smoke",
                "type": "cypress",
                "project": "./web",
                "env": {"API_TOKEN": "${API_TOKEN}", "SHOP": "demo"},
            }
        ],
    )
    calls = project.root / "calls.jsonl"

    result = project.cli("run", "ui", env={"FAKE_CYPRESS_CALLS": str(calls), "API_TOKEN": SECRET})

    assert result.exit_code == 1
    [call] = [json.loads(line) for line in calls.read_text().splitlines()]
    assert SECRET not in " ".join(a for a in call["argv"] if not a.startswith("cypress/e2e/"))
    assert "--env" not in call["argv"]
    assert call["env"]["CYPRESS_API_TOKEN"] == SECRET and call["env"]["CYPRESS_SHOP"] == "demo"
    entry = cypress_entry(project)
    run_dir = project.runs / project.last_record()["run_id"]
    assert entry["artifacts"] == [
        f"runs/{run_dir.name}/artifacts/01-ui-smoke/screenshots/login.cy.js/login as *** -- fails 1 (failed).png"
    ]
    assert sorted(entry["spec_durations"]) == ["cypress/e2e/***.cy.js", "cypress/e2e/login.cy.js"]
    assert sorted(entry["specs"]) == ["cypress/e2e/***.cy.js", "cypress/e2e/login.cy.js"]
    assert entry["failed_tests"] == ["cypress/e2e/login.cy.js › login as *** › fails 1"]
    raw = list((run_dir / "cypress" / "01-ui-smoke").glob("*.xml"))
    assert len(raw) == 2 and any(b'name="login as ***"' in path.read_bytes() for path in raw)
    for path in project.runs.rglob("*"):
        assert SECRET not in path.name
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr


# --- what the real mocha-junit-reporter writes (issue 17) ------------------------------------


def test_pending_tests_are_counted_and_specs_are_project_relative(project: Project) -> None:
    """mocha counted 9 tests, the record 8: without includePending=true the reporter leaves
    pending tests out. Its `file` attributes are absolute: the record, the JUnit classname and
    the durations must use the project-relative spec path, as the spec list does."""
    make_cypress_project(project, {"a.cy.js": spec("pass 6", "fail 1", "skip 2")})
    cypress_workflow(project)
    result = project.cli("run", "ui")
    assert result.exit_code == 1
    entry = cypress_entry(project)
    assert (entry["tests"], entry["failures"]) == (9, 1)
    assert entry["failed_tests"] == ["cypress/e2e/a.cy.js › a › fails 1"]
    assert entry["failed_test_details"] == [
        {
            "name": "cypress/e2e/a.cy.js › a › fails 1",
            "file": "web/cypress/e2e/a.cy.js",
            "message": "expected '<h1>' to have text 'Welcome', but the text was 'fails 1'",
        }
    ]
    assert list(entry["spec_durations"]) == entry["specs"] == ["cypress/e2e/a.cy.js"]
    cases = junit_cypress_cases(project)
    assert {c["classname"] for c in cases} == {"cypress/e2e/a.cy.js"}
    assert sum(c["skipped"] for c in cases) == 2
    saved = json.loads((project.root / entry["tests_file"]).read_text())
    assert {c["file"] for c in saved["cases"]} == {"web/cypress/e2e/a.cy.js"}


def test_a_report_file_holding_several_specs_attributes_each_suite_to_its_own(tmp_path: Path) -> None:
    web = tmp_path / "web"
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="Mocha Tests" time="3.0000" tests="3" failures="1">
  <testsuite name="Root Suite" tests="0" file="{web}/cypress/e2e/a.cy.js" time="0.0000" failures="0"></testsuite>
  <testsuite name="login" tests="2" time="1.0000" failures="1">
    <testcase name="login works" time="0.5" classname="works"/>
    <testcase name="login fails" time="0.5" classname="fails"><failure message="no">x</failure></testcase>
  </testsuite>
  <testsuite name="Root Suite" tests="0" file="{web}/cypress/e2e/b.cy.js" time="0.0000" failures="0"></testsuite>
  <testsuite name="cart" tests="1" time="2.0000" failures="0">
    <testcase name="cart adds" time="2.0" classname="adds"/>
  </testsuite>
</testsuites>
"""
    reports = orchestrate.parse_cypress_junit_specs(xml.encode(), project=web)
    assert [(r.spec, r.time, [t.display_name for t in r.tests]) for r in reports] == [
        ("cypress/e2e/a.cy.js", 1.0, ["cypress/e2e/a.cy.js › login › works", "cypress/e2e/a.cy.js › login › fails"]),
        ("cypress/e2e/b.cy.js", 2.0, ["cypress/e2e/b.cy.js › cart › adds"]),
    ]
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "results-1.xml").write_text(xml)
    found, problems = orchestrate.read_cypress_reports(folder, web)
    assert problems == [] and [r.spec for r in found] == ["cypress/e2e/a.cy.js", "cypress/e2e/b.cy.js"]
    assert orchestrate.spec_durations_from_records(
        [{"workflow": "w", "log": [{"step": "s", "spec_durations": {r.spec: r.time for r in found}}]}], "s"
    ) == {"cypress/e2e/a.cy.js": 1.0, "cypress/e2e/b.cy.js": 2.0}
