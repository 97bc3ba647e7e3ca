"""JUnit reports: valid against both schemas in tests/schemas whatever bytes a step prints."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orchestrate
from conftest import Project, assert_valid_junit

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


def test_every_byte_value_ansi_and_cdata_end_keep_the_report_valid(project: Project) -> None:
    script = (
        "import sys\n"
        "sys.stdout.buffer.write(bytes(range(256)) * 3)\n"
        "sys.stdout.buffer.write(b'\\x1b[31mred\\x1b[0m \\x1b]8;;http://x\\x07link\\x1b]8;;\\x07 ]]> <&> \\xff\\xfe\\xed\\xa0\\x80\\n')\n"
        "sys.exit(1)\n"
    )
    project.write("noise.py", script)
    project.workflow(
        "w",
        [
            {"name": 'noise <&> "q"', "type": "command", "run": [PY, "noise.py"]},
            {"name": "after", "type": "command", "run": "true"},
        ],
    )
    result = project.cli("run", "w")
    assert result.exit_code == 1
    record = project.last_record()
    junit = project.runs / record["run_id"] / "junit.xml"
    assert_valid_junit(junit)
    tree = ET.parse(junit)
    suite = tree.getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "]]>" in (failure.text or "")
    assert "\x1b" not in (failure.text or "")
    case = suite.find("testcase")
    assert case is not None and case.get("name") == 'noise <&> "q"'


def test_report_written_for_passing_run_and_copied_with_junit_xml(project: Project, tmp_path) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "echo ok"}])
    copy = tmp_path / "reports" / "junit.xml"
    result = project.cli("run", "w", "--junit-xml", str(copy))
    assert result.exit_code == 0
    record = project.last_record()
    original = (project.runs / record["run_id"] / "junit.xml").read_bytes()
    assert copy.read_bytes() == original
    assert_valid_junit(original)
    root = ET.fromstring(original)
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("classname") == "w" and case.get("name") == "a"
    run_id = root.find("testsuite/properties/property[@name='run_id']")
    assert run_id is not None and run_id.get("value") == record["run_id"]


def test_skipped_and_allowed_failures_are_skipped_cases() -> None:
    record = {
        "workflow": "w",
        "run_id": "r",
        "started_at": "2026-11-27T15:40:00.123Z",
        "duration_s": 1.5,
        "log": [
            {"step": "a", "status": "failed", "allowed_failure": True, "message": "exit 1", "duration_s": 0.1},
            {"step": "b", "status": "skipped", "message": "an earlier step failed (x)", "duration_s": None},
            {"step": "c", "status": "passed", "duration_s": 12345.6789},
        ],
    }
    xml = orchestrate.build_junit_xml(record)
    assert_valid_junit(xml)
    root = ET.fromstring(xml)
    skipped = root.findall("testsuite/testcase/skipped")
    assert [s.get("message") for s in skipped] == [
        "failed, allowed by continue_on_error: exit 1",
        "an earlier step failed (x)",
    ]
    suite = root.find("testsuite")
    assert suite is not None and suite.get("timestamp") == "2026-11-27T15:40:00"


def test_extra_testcases_become_their_own_suite() -> None:
    record = {
        "workflow": "deploy",
        "run_id": "r",
        "started_at": "2026-11-27T15:40:00.123Z",
        "duration_s": 3,
        "log": [
            {
                "step": "ui smoke",
                "status": "failed",
                "message": "1 of 2 tests failed",
                "duration_s": 2.0,
                "started_at": "2026-11-27T15:40:01.000Z",
            }
        ],
    }
    cases = [
        orchestrate.TestCase("login works", "login.cy.js", 0.5, "passed"),
        orchestrate.TestCase(
            "logout \x00 works", "login.cy.js", 0.25, "failed", "expected 1", "AssertionError\n  at x"
        ),
    ]
    xml = orchestrate.build_junit_xml(record, {0: cases}, shard=(2, 3))
    assert_valid_junit(xml)
    suites = ET.fromstring(xml).findall("testsuite")
    assert suites[0].get("name") == "deploy (shard 2/3)"
    assert suites[1].get("name") == "deploy (shard 2/3) › ui smoke"
    assert suites[1].get("tests") == "2" and suites[1].get("failures") == "1"
    assert suites[1].findall("testcase")[1].get("name") == "logout \\x00 works"


@pytest.mark.parametrize("text", ["\x00\x01\x1f", "\ud800 lone", "\ufffe\uffff", "ok\ttab\nnew"])
def test_xml_safe_removes_what_xml_forbids(text: str) -> None:
    safe = orchestrate.xml_safe(text)
    ET.fromstring(f"<a>{safe.replace('&', '&amp;').replace('<', '&lt;')}</a>".encode("utf-8", "surrogatepass"))


_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(list("&<>\"'\r\n\t\x1b]]>")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(_TEXT, st.sampled_from(["passed", "failed", "skipped", "pending"]), _TEXT, _TEXT, st.booleans()),
        max_size=4,
    ),
    cases=st.lists(st.tuples(_TEXT, _TEXT, st.sampled_from(["passed", "failed", "skipped"]), _TEXT, _TEXT), max_size=3),
    workflow=_TEXT,
    message=_TEXT,
)
def test_the_small_element_tree_writes_what_elementtree_writes(
    steps: list, cases: list, workflow: str, message: str
) -> None:
    """Issue 15: reports are written without importing xml.etree (4 ms of every run); the bytes
    are those ElementTree wrote, for any text in any field."""
    record = {
        "workflow": workflow,
        "run_id": "20261127T154000123Z-1a2b3c",
        "status": "failed",
        "started_at": "2026-11-27T15:40:00.123Z",
        "duration_s": 1.5,
        "message": message,
        "trigger": {"git": {"commit": "abc", "branch": workflow}},
        "log": [
            {
                "step": name,
                "status": status,
                "message": text,
                "output_tail": tail,
                "allowed_failure": allowed,
                "duration_s": 0.25,
                "started_at": "2026-11-27T15:40:00.500Z",
            }
            for name, status, text, tail, allowed in steps
        ],
    }
    testcases = (
        {
            0: [
                orchestrate.TestCase(name, classname, 0.5, status, text, body)
                for name, classname, status, text, body in cases
            ]
        }
        if steps
        else {}
    )
    ours = orchestrate.build_junit_xml(record, testcases, shard=(1, 2))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrate, "_SmallElementTree", ET)
        theirs = orchestrate.build_junit_xml(record, testcases, shard=(1, 2))
    assert ours == theirs
    assert_valid_junit(ours)


def test_writing_a_report_does_not_import_elementtree() -> None:
    code = (
        "import sys, orchestrate; orchestrate.build_junit_xml({'workflow': 'w', 'log': [{'step': 'a', "
        "'status': 'failed', 'message': '<&>'}]}); print('xml.etree.ElementTree' in sys.modules)"
    )
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout == "False\n", done.stderr
