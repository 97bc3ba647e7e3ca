"""`reports` on any step: JUnit XML from any tool (pytest, jest-junit, go-junit-report, Surefire)
read into the record, the run's junit.xml, the console and the GitHub step summary; the
hardened parser every JUnit file goes through; `python` steps with `module`."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import Project, assert_valid_junit

import orchestrate

CALC_TESTS = """\
def test_add():
    assert 1 + 1 == 2


def test_sub():
    assert 3 - 1 == 1, "three minus one"


def test_mul():
    assert 2 * 3 == 6
"""


def pytest_step(**extra: object) -> dict:
    """A real pytest, run as `python -m pytest` by the interpreter of the venv the tests run in
    (a virtualenv orchestrate did not build is used as it is)."""
    return {
        "name": "unit",
        "type": "python",
        "module": "pytest",
        "venv": sys.prefix,
        "args": ["-q", "-p", "no:cacheprovider", "--junitxml=reports/pytest-unit.xml", "tests"],
        "reports": ["reports/pytest-*.xml"],
        **extra,
    }


def junit_suites(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall("testsuite")


def test_a_pytest_step_with_one_failing_test_shows_it_everywhere(project: Project, tmp_path: Path) -> None:
    project.write("tests/test_calc.py", CALC_TESTS)
    project.workflow("unit", [pytest_step()])
    summary = tmp_path / "summary.md"
    result = project.run(
        "run",
        "unit",
        "--junit-xml",
        str(tmp_path / "out.xml"),
        env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    entry = project.last_record()["log"][0]
    assert entry["status"] == "failed"
    assert (entry["tests"], entry["failures"]) == (3, 1)
    assert entry["failed_tests"] == ["tests/test_calc.py › test_sub"]
    assert entry["message"] == "python -m pytest exited with code 1; 1 of 3 tests failed: tests/test_calc.py › test_sub"
    # the run's report: one testsuite for the run, one for the step with every test
    junit = project.runs / entry["log_file"].split("/")[1] / "junit.xml"
    assert_valid_junit(junit)
    assert_valid_junit(tmp_path / "out.xml")
    suites = junit_suites(junit)
    assert len(suites) == 2
    assert suites[1].get("name") == "unit › unit" and suites[1].get("tests") == "3"
    cases = [(c.get("classname"), c.get("name"), c.find("failure") is not None) for c in suites[1].findall("testcase")]
    assert cases == [
        ("tests.test_calc", "test_add", False),
        ("tests.test_calc", "test_sub", True),
        ("tests.test_calc", "test_mul", False),
    ]
    failure = suites[1].findall("testcase")[1].find("failure")
    assert failure is not None and "three minus one" in (failure.get("message") or "")
    # the console's summary table and the GitHub step summary name the failed test
    assert "failed  " in result.stdout and "1 of 3 tests failed: tests/test_calc.py › test_sub" in result.stdout
    assert "| unit | **failed** |" in summary.read_text()
    assert "tests/test_calc.py › test_sub |" in summary.read_text()
    # and an annotation on the test's file
    assert "::error file=tests/test_calc.py,title=unit%3A tests/test_calc.py › test_sub::" in result.stdout
    # the cases are kept beside the log, for a later run that re-uses the step
    saved = json.loads((project.root / entry["tests_file"]).read_text())
    assert [(c["name"], c["status"], c["file"]) for c in saved["cases"]] == [
        ("test_add", "passed", "tests/test_calc.py"),
        ("test_sub", "failed", "tests/test_calc.py"),
        ("test_mul", "passed", "tests/test_calc.py"),
    ]


def test_a_passing_pytest_step_records_its_tests(project: Project) -> None:
    project.write("tests/test_calc.py", CALC_TESTS.replace("== 1, ", "== 2, "))
    project.workflow("unit", [pytest_step()])
    result = project.run("run", "unit")
    assert result.returncode == 0, result.stdout + result.stderr
    entry = project.last_record()["log"][0]
    assert (entry["status"], entry["tests"], entry["failures"], entry["failed_tests"]) == ("passed", 3, 0, [])
    assert entry["message"] == "3 tests passed"


REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="jest tests" tests="2" failures="{failures}">
<testcase classname="cart adds" name="cart adds an item" time="0.01" file="web/cart.test.js">{failure}</testcase>
<testcase classname="cart empties" name="cart empties" time="0.02" file="web/cart.test.js"/>
</testsuite></testsuites>
"""


def writer_step(xml: str, exit_code: int = 0, path: str = "reports/jest.xml", **extra: object) -> dict:
    """A command step that writes `xml` to `path` and exits `exit_code` (a tool such as jest)."""
    code = (
        f"import pathlib, sys; p = pathlib.Path({path!r}); p.parent.mkdir(exist_ok=True); "
        f"p.write_text({xml!r}); sys.exit({exit_code})"
    )
    return {
        "name": "jest",
        "type": "command",
        "run": [sys.executable, "-c", code],
        "reports": ["reports/*.xml"],
        **extra,
    }


def test_a_tool_that_exits_0_but_reports_a_failure_fails_the_step(project: Project) -> None:
    xml = REPORT.format(failures=1, failure='<failure message="expected 1 item">stack</failure>')
    project.workflow("w", [writer_step(xml)])
    result = project.cli("run", "w")
    assert result.exit_code == 1, result.stdout
    entry = project.last_record()["log"][0]
    assert (entry["status"], entry["exit_code"]) == ("failed", 0)
    assert entry["message"] == "1 of 2 tests failed: web/cart.test.js › cart adds an item"
    assert_valid_junit(project.runs / project.last_record()["run_id"] / "junit.xml")


def test_a_report_from_before_the_step_is_not_read(project: Project) -> None:
    xml = REPORT.format(failures=1, failure='<failure message="old">old</failure>')
    project.write("reports/jest.xml", xml)  # left by an earlier run: the step writes nothing now
    project.workflow("w", [{"name": "jest", "type": "command", "run": ["true"], "reports": ["reports/*.xml"]}])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["message"] == "reports: no file matching 'reports/*.xml' was written by the step"
    assert "tests_file" not in entry


@pytest.mark.parametrize(
    "content, why",
    [
        ("<testsuites><testsuite", "not well-formed XML: unclosed token: line 1, column 12"),
        ("", "not well-formed XML: no element found: line 1, column 0"),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            "<testsuites>&lol2;</testsuites>",
            "it declares a DOCTYPE; JUnit reports have none, and its entities could expand without bound",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><testsuites/>',
            "it declares a DOCTYPE; JUnit reports have none, and its entities could expand without bound",
        ),
    ],
)
def test_a_malformed_or_hostile_report_is_the_steps_message(project: Project, content: str, why: str) -> None:
    project.workflow("w", [writer_step(content)])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["message"] == f"reports: reports/jest.xml is not a usable JUnit report ({why})"
    assert "Traceback" not in result.stdout + result.stderr


def test_a_fifo_or_a_link_where_a_report_should_be_is_refused_without_hanging(project: Project) -> None:
    code = (
        "import os; os.makedirs('reports', exist_ok=True); os.mkfifo('reports/a.xml'); "
        "os.symlink('/etc/passwd', 'reports/b.xml')"
    )
    project.workflow(
        "w",
        [
            {
                "name": "tool",
                "type": "command",
                "run": [sys.executable, "-c", code],
                "reports": ["reports/*.xml"],
                "timeout": 60,
            }
        ],
    )
    result = project.run("run", "w", timeout=60)
    assert result.returncode == 1
    entry = project.last_record()["log"][0]
    assert entry["message"] == (
        "reports: reports/a.xml is not a usable JUnit report (it is not a regular file); "
        "reports: reports/b.xml is not a usable JUnit report (it is a symbolic link; "
        "orchestrate reads reports only as files)"
    )


def test_a_report_over_the_size_limit_is_refused(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrate, "MAX_REPORT_BYTES", 1000)
    project.workflow("w", [writer_step(REPORT.format(failures=0, failure="") + " " * 2000)])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    assert project.last_record()["log"][0]["message"] == (
        "reports: reports/jest.xml is not a usable JUnit report (it is 0 MB; a report may be at most 0 MiB)"
    )


def test_a_secret_in_a_test_name_is_masked_in_the_record_report_and_saved_cases(project: Project) -> None:
    xml = REPORT.format(failures=1, failure='<failure message="token tok-12345 refused">tok-12345</failure>')
    xml = xml.replace("cart adds an item", "cart adds tok-12345")
    step = writer_step(xml, env={"API_TOKEN": "${API_TOKEN}"})
    project.workflow("w", [step], secrets=["API_TOKEN"])
    result = project.cli("run", "w", "--var", "API_TOKEN=tok-12345")
    assert result.exit_code == 1
    record = project.last_record()
    entry = record["log"][0]
    assert entry["failed_tests"] == ["web/cart.test.js › cart adds ***"]
    run_dir = project.runs / record["run_id"]
    for path in [project.runs / f"{record['run_id']}.json", run_dir / "junit.xml", *run_dir.glob("*.tests.json")]:
        assert "tok-12345" not in path.read_text(), path
    assert "tok-12345" not in result.stdout


def test_reports_keys_are_checked_when_the_workflow_loads(project: Project) -> None:
    for value, message in [
        ([], "key 'reports' is empty; list at least one glob, or leave the key out"),
        (
            ["/abs/*.xml"],
            "key 'reports[0]': '/abs/*.xml' must be a glob relative to the project "
            'root, inside it (e.g. "src/**/*.py")',
        ),
        (
            ["../x/*.xml"],
            "key 'reports[0]': '../x/*.xml' must be a glob relative to the project "
            'root, inside it (e.g. "src/**/*.py")',
        ),
        (
            ["r/[z-a].xml"],
            "key 'reports[0]': invalid glob 'r/[z-a].xml': the character range z-a in [z-a] is reversed (write a-z)",
        ),
    ]:
        project.workflow("w", [{"name": "a", "type": "command", "run": "true", "reports": value}])
        result = project.cli("run", "w")
        assert result.exit_code == 2
        assert result.stderr == f'orchestrate: error: workflows/w.json: steps[0] "a": {message}\n'


def test_parse_junit_xml_refuses_entities_and_keeps_predefined_ones() -> None:
    root = orchestrate.parse_junit_xml(b'<testsuites><testsuite name="a &amp; b &#65;"/></testsuites>')
    assert root.find("testsuite").get("name") == "a & b A"
    with pytest.raises(orchestrate.ReportError, match="DOCTYPE"):
        orchestrate.parse_junit_xml(b'<!DOCTYPE t [<!ENTITY e SYSTEM "file:///etc/hostname">]><t>&e;</t>')


def test_surefire_classnames_find_their_java_file(project: Project) -> None:
    project.write("src/test/java/com/acme/CalcTest.java", "class CalcTest {}\n")
    xml = (
        '<testsuite name="com.acme.CalcTest" tests="1" failures="1"><testcase classname="com.acme.CalcTest" '
        'name="adds" time="0.1"><failure message="boom" type="AssertionError">at com.acme.CalcTest.adds'
        "</failure></testcase></testsuite>"
    )
    project.workflow("w", [writer_step(xml, exit_code=1, path="reports/TEST-com.acme.CalcTest.xml")])
    project.cli("run", "w")
    entry = project.last_record()["log"][0]
    assert entry["failed_tests"] == ["src/test/java/com/acme/CalcTest.java › adds"]


# --- python steps with `module` ------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"script": "a.py", "module": "pytest"}, "give either 'script' or 'module', not both"),
        ({}, "missing required key 'script' (or 'module' to run `python -m MODULE`)"),
        (
            {"module": "py test"},
            "key 'module': 'py test' is not a module name (dotted names such as \"pytest\" or \"mypkg.cli\")",
        ),
    ],
)
def test_python_takes_exactly_one_of_script_and_module(project: Project, keys: dict, message: str) -> None:
    project.workflow("w", [{"name": "py", "type": "python", "venv": ".venv", **keys}])
    result = project.cli("run", "w")
    assert result.exit_code == 2
    assert result.stderr == f'orchestrate: error: workflows/w.json: steps[0] "py": {message}\n'


def test_a_module_step_runs_python_dash_m_in_its_venv(project: Project) -> None:
    project.write("pkg/__init__.py", "")
    project.write("pkg/hello.py", "import sys\nprint('hello from', sys.prefix, sys.argv[1:])\n")
    project.workflow(
        "w", [{"name": "py", "type": "python", "module": "pkg.hello", "venv": sys.prefix, "args": ["--x"]}]
    )
    planned = project.cli("run", "w", "--dry-run")
    assert f"        {sys.prefix}/bin/python -m pkg.hello --x\n" in planned.stdout
    result = project.run("run", "w")
    assert result.returncode == 0, result.stderr
    assert f"hello from {sys.prefix} ['--x']" in result.stdout
    project.write("pkg/hello.py", "raise SystemExit(3)\n")
    project.cli("run", "w")
    assert project.last_record()["log"][0]["message"] == "python -m pkg.hello exited with code 3"


def test_match_files_searches_only_where_a_glob_can_match(tmp_path: Path) -> None:
    for name in [
        "src/a.py",
        "src/deep/b.py",
        "src/.hidden/c.py",
        "src/node_modules/d.py",
        "e.py",
        "runs/f.py",
        "pyproject.toml",
        "other/g.py",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    os.symlink(tmp_path / "other", tmp_path / "src" / "linked")
    found = [
        path
        for path, _ in orchestrate.match_files(tmp_path, ["src/**/*.py", "pyproject.toml", "*.py"], tmp_path / "runs")
    ]
    assert found == ["e.py", "pyproject.toml", "src/a.py", "src/deep/b.py"]
    assert [p for p, _ in orchestrate.match_files(tmp_path, ["**/*.py"], tmp_path / "runs")] == [
        "e.py",
        "other/g.py",
        "src/a.py",
        "src/deep/b.py",
    ]
