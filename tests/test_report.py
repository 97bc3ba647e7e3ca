"""The HTML report of a run (`orchestrate report`, `run --html-report`): what the page holds,
read back with the standard library's HTML parser, from real runs of the real command.
(What a browser makes of it is tests/test_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import orchestrate
from conftest import REPO, Project, orchestrate_bin

FAKE_CYPRESS = Path(__file__).with_name("fake_cypress.py")
XSS_NAME = "<img src=x onerror=window.__xss=1>"
XSS_OUTPUT = "</script><script>window.__xss=1</script><b onmouseover=alert(1)>"


def cmd(name: str, run: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "command", "run": run, **extra}


class Page(HTMLParser):
    """The elements of a page with their attributes and text, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("meta", "br", "img", "input", "rect", "line", "path"):
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": ""})

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element["text"] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and all(e["attrs"].get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_class(self, tag: str, cls: str) -> list[dict[str, Any]]:
        return [e for e in self.elements if e["tag"] == tag and cls in (e["attrs"].get("class") or "").split()]


def report_of(project: Project, run_id: str | None = None) -> str:
    record = project.last_record() if run_id is None else json.loads((project.runs / f"{run_id}.json").read_text())
    return (project.runs / record["run_id"] / "report.html").read_text()


# --- the pure pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,html",
    [
        ("\x1b[1;31mFAIL\x1b[0m ok", '<span class="b f1">FAIL</span> ok'),
        (
            "\x1b[32mgreen\x1b[39m plain \x1b[44;97mbg\x1b[m",
            '<span class="f2">green</span> plain <span class="f15 g4">bg</span>',
        ),
        ("\x1b[38;5;9mbright\x1b[0m\x1b[38;5;200mnot kept\x1b[0m", '<span class="f9">bright</span>not kept'),
        # the 1 of a true-colour triple is not bold; the colour itself is dropped
        ("\x1b[38;2;1;2;3mrgb\x1b[0m", "rgb"),
        (
            "\x1b[1mbold\x1b[22m \x1b[3;4mboth\x1b[23m u\x1b[24m",
            '<span class="b">bold</span> <span class="i u">both</span><span class="u"> u</span>',
        ),
        # cursor moves, OSC titles and hyperlinks, lone ESC and other controls are dropped
        ("a\x1b[2K\x1b[1Ab\x1b]0;title\x07c\x1b]8;;http://x\x1b\\d\x1b\x07\x00e", "abcde"),
        ("\x1b[31m<script>&\"'\x1b[0m", '<span class="f1">&lt;script&gt;&amp;&quot;&#x27;</span>'),
        ("progress 10%\rprogress 100%\r\n", "progress 10%\nprogress 100%\n"),
    ],
)
def test_ansi_colours_become_safe_spans(text: str, html: str) -> None:
    assert orchestrate.ansi_to_html(text) == html


def test_html_text_escapes_and_drops_what_html_cannot_carry() -> None:
    assert orchestrate.html_text("<a href='x'>&\"\x00\x1b\r") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"
    assert orchestrate.html_text("bad \udcff byte") == "bad ? byte"
    assert orchestrate.html_text(None) == ""


def _record(entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "run_id": "20261127T154000000Z-abcdef",
        "workflow": "w",
        "status": "failed",
        "started_at": "2026-11-27T15:40:00.000Z",
        "finished_at": "2026-11-27T15:40:10.000Z",
        "duration_s": 10.0,
        "trigger": {"source": "cli", "git": {"commit": "0123456789abcdef", "branch": "main"}},
        "message": "failed: b",
        "log": entries,
        **extra,
    }


def _entry(step: str, status: str, start: str | None, end: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "type": "command",
        "status": status,
        "started_at": start,
        "finished_at": end,
        "duration_s": None,
        "attempts": 1,
        "message": "",
        "output_tail": "",
        **extra,
    }


def test_timeline_bars_are_in_start_order_with_true_times_and_overlap() -> None:
    record = _record(
        [
            _entry("late", "passed", "2026-11-27T15:40:06.000Z", "2026-11-27T15:40:10.000Z", duration_s=4.0),
            _entry("first", "passed", "2026-11-27T15:40:00.000Z", "2026-11-27T15:40:05.000Z", duration_s=5.0),
            _entry("parallel", "failed", "2026-11-27T15:40:01.000Z", "2026-11-27T15:40:04.000Z", duration_s=3.0),
            _entry("allowed", "failed", "2026-11-27T15:40:02.000Z", "2026-11-27T15:40:03.000Z", allowed_failure=True),
            _entry("never", "skipped", None, None, message="an earlier step failed (parallel)"),
            _entry("cached", "passed", "2026-11-27T15:40:07.000Z", "2026-11-27T15:40:07.010Z", reused=True),
            _entry("clock", "passed", "2026-11-27T15:39:59.000Z", "2026-11-27T15:40:00.500Z"),
        ]
    )
    page = Page(orchestrate.render_html_report(record, now_ms=0))
    bars = page.by_class("g", "bar")
    assert [b["attrs"]["data-step"] for b in bars] == ["first", "clock", "parallel", "allowed", "late", "cached"]
    assert [(b["attrs"]["data-start-ms"], b["attrs"]["data-end-ms"]) for b in bars] == [
        ("0", "5000"),
        ("0", "500"),
        ("1000", "4000"),
        ("2000", "3000"),
        ("6000", "10000"),
        ("7000", "7010"),
    ]
    assert [b["attrs"]["class"] for b in bars] == [
        "bar passed",
        "bar passed",
        "bar failed",
        "bar allowed",
        "bar passed",
        "bar reused",
    ]
    assert "↺ reused" in page.by_class("td", "status")[5]["text"]
    del bars[1], bars[-1]
    # each status says itself in words as well as by shape and colour
    assert [b["text"].strip() for b in bars][1:3] == [
        "parallel: ✗ failed, started +1s, 3s✗ parallelfailed 3s",
        "allowed: ! failed (allowed), started +2s, 1s! allowedfailed (allowed) 1s",
    ]
    (skipped,) = page.by_class("g", "mark")
    assert skipped["attrs"]["class"] == "mark skipped"
    assert "skipped — an earlier step failed (parallel)" in skipped["text"]
    rects = [e for e in page.elements if e["tag"] == "rect" and "x" in e["attrs"] and "rx" in e["attrs"]]
    xs = [float(r["attrs"]["x"]) for r in rects]
    assert xs == sorted(xs) and xs[1] < xs[0] + float(rects[0]["attrs"]["width"])  # overlap is drawn


def test_step_table_has_one_row_per_step_with_status_text() -> None:
    record = _record(
        [
            _entry("a", "passed", "2026-11-27T15:40:00.000Z", "2026-11-27T15:40:01.500Z", duration_s=1.5),
            _entry(
                "b",
                "failed",
                "2026-11-27T15:40:01.500Z",
                "2026-11-27T15:40:02.000Z",
                duration_s=0.5,
                attempts=3,
                message="command exited with code 4",
            ),
            _entry("c", "skipped", None, None, attempts=0, message="an earlier step failed (b)"),
        ]
    )
    page = Page(orchestrate.render_html_report(record))
    rows = [e for e in page.elements if e["tag"] == "tr" and e["attrs"].get("id", "").startswith("step-row-")]
    cells = [[c for c in re.split(r"\s{2,}", row["text"].strip())] for row in rows]
    assert [row["attrs"]["class"] for row in rows] == ["passed", "failed", "skipped"]
    status_cells = page.by_class("td", "status")
    assert [c["text"] for c in status_cells] == ["✓ passed", "✗ failed", "– skipped"]
    assert [c["text"] for c in page.by_class("td", "message")] == [
        "",
        "command exited with code 4",
        "an earlier step failed (b)",
    ]
    assert len(cells) == 3
    header = page.find("h1")[0]["text"]
    assert header == "w ✗ failed"
    facts = dict(zip([e["text"] for e in page.find("dt")], [e["text"] for e in page.find("dd")], strict=True))
    assert facts == {
        "Run": "20261127T154000000Z-abcdef",
        "Trigger": "cli",
        "Git": "main @ 0123456789ab",
        "Started": "2026-11-27 15:40:00 UTC",
        "Duration": "10.0s",
        "Steps": "1 passed, 1 failed, 1 skipped",
        "Message": "failed: b",
    }


def test_page_has_no_external_asset_and_only_its_own_script_and_style() -> None:
    record = _record(
        [
            _entry(
                XSS_NAME,
                "failed",
                "2026-11-27T15:40:00.000Z",
                "2026-11-27T15:40:01.000Z",
                output_tail=XSS_OUTPUT,
                message=XSS_OUTPUT,
            )
        ]
    )
    html = orchestrate.render_html_report(
        record, tails={0: "\x1b[31m" + XSS_OUTPUT + "\x1b[0m"}, log_links={0: "01-x.log"}
    )
    page = Page(html)
    assert [e["tag"] for e in page.elements if e["tag"] in ("script", "style", "img", "link", "iframe")] == [
        "style",
        "script",
    ]
    assert not [e for e in page.elements if any(k.startswith("on") for k in e["attrs"])]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    (meta,) = page.find("meta", http_equiv="Content-Security-Policy")
    policy = meta["attrs"]["content"]
    style = page.find("style")[0]["text"]
    script = page.find("script")[0]["text"]

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert policy == (
        f"default-src 'none'; style-src {sha(style)}; script-src {sha(script)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    # the step's name and output are text on the page, exactly as the step gave them
    assert XSS_NAME in page.find("h1")[0]["text"] or XSS_NAME in page.by_class("g", "bar")[0]["attrs"]["data-step"]
    assert page.find("pre", id="tail-0")[0]["text"] == XSS_OUTPUT
    assert page.by_class("td", "message")[0]["text"] == XSS_OUTPUT


# --- real runs --------------------------------------------------------------------------


def test_run_html_report_on_a_failed_parallel_run(project: Project) -> None:
    project.workflow(
        "w",
        [
            cmd("lint", "printf '\\033[32mclean\\033[0m\\n'; sleep 0.6"),
            cmd("unit", "printf '\\033[1;31mFAIL\\033[0m test_login\\n'; sleep 0.3; exit 3", needs=[]),
            cmd("deploy", "echo deploying", needs=["lint", "unit"]),
        ],
    )
    target = project.root / "out" / "nested" / "report.html"
    result = project.run("run", "w", "--jobs", "2", "--html-report", str(target))
    assert result.returncode == 1, result.stderr
    page = Page(target.read_text())
    record = project.last_record()
    in_start_order = sorted(record["log"][:2], key=lambda e: (e["started_at"], e["step"]))
    bars = page.by_class("g", "bar")
    assert [(b["attrs"]["data-step"], b["attrs"]["class"]) for b in bars] == [
        (e["step"], "bar passed" if e["step"] == "lint" else "bar failed") for e in in_start_order
    ]
    starts = [int(b["attrs"]["data-start-ms"]) for b in bars]
    ends = [int(b["attrs"]["data-end-ms"]) for b in bars]
    assert max(starts) < min(ends), "the two steps ran at the same time: their bars overlap"
    assert [c["text"] for c in page.by_class("td", "status")] == ["✓ passed", "✗ failed", "– skipped"]
    assert page.find("pre", id="tail-1")[0]["text"] == "FAIL test_login"
    assert '<pre id="tail-1"><span class="b f1">FAIL</span> test_login</pre>' in target.read_text()
    link = page.find("a", class_="full-log")
    assert [a["attrs"]["href"] for a in link] == [
        f"../../runs/{record['run_id']}/01-lint.log",
        f"../../runs/{record['run_id']}/02-unit.log",
    ]
    assert (target.parent / link[1]["attrs"]["href"]).read_text() == "\x1b[1;31mFAIL\x1b[0m test_login\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not list(target.parent.glob(".*.tmp"))


def test_report_command_latest_prefix_and_default_path(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo one")])
    assert project.cli("run", "w", "-q").exit_code == 0
    first = project.last_record()["run_id"]
    time.sleep(0.01)
    assert project.cli("run", "w", "-q").exit_code == 0
    second = project.last_record()["run_id"]
    result = project.cli("report", "latest")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"wrote runs/{second}/report.html (run {second}, completed)\n"
    result = project.cli("report", first[:-2])
    assert result.stdout == f"wrote runs/{first}/report.html (run {first}, completed)\n"
    assert "✓ completed" in report_of(project, first)
    shared = os.path.commonprefix([first, second])  # noqa: RUF071 -- run ids are strings, not paths
    result = project.cli("report", shared)
    assert result.exit_code == 2
    assert result.stderr == (
        f"orchestrate: error: run '{shared}' is ambiguous: 2 runs match ({second}, {first}); give more of the id\n"
    )
    result = project.cli("report", "20990101")
    assert result.exit_code == 2
    assert result.stderr == (
        f"orchestrate: error: no run id in {project.runs} starts with '20990101' (see: orchestrate runs)\n"
    )
    target = project.root / "elsewhere.html"
    result = project.cli("report", second, "--html", str(target))
    assert result.stdout == f"wrote elsewhere.html (run {second}, completed)\n"
    assert '<pre id="tail-0">one</pre>' in target.read_text()


def test_report_of_no_runs_is_a_usage_error(project: Project) -> None:
    result = project.cli("report", "latest")
    assert result.exit_code == 2
    assert result.stderr == f"orchestrate: error: no runs yet in {project.runs} (start one: orchestrate run NAME)\n"


def test_report_files_keep_their_modes_under_umask_000(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo one")])
    target = project.root / "new" / "dir" / "r.html"
    old = os.umask(0)
    try:
        result = project.run("run", "w", "-q", "--html-report", str(target))
        assert result.returncode == 0, result.stderr
        assert project.cli("report", "latest").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755
    record = project.last_record()
    assert stat.S_IMODE((project.runs / record["run_id"] / "report.html").stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_report_never_replaces_a_fifo_folder_or_link(project: Project, tmp_path: Path, kind: str) -> None:
    project.workflow("w", [cmd("a", "echo one")])
    target = tmp_path / "target"
    kept = tmp_path / "kept.html"
    kept.write_text("the user's file")
    if kind == "fifo":
        os.mkfifo(target)
        message = f"{target}: is not a regular file (a FIFO, socket or device); give a file path"
    elif kind == "folder":
        target.mkdir()
        message = f"{target}: is a folder; give a file name, e.g. {target / 'report.html'}"
    else:
        target.symlink_to(kept)
        message = f"{target}: is a symbolic link; give the path of a file to write (or of its target)"
    result = project.run("run", "w", "--html-report", str(target))
    assert result.returncode == 2
    assert result.stderr == f"orchestrate: error: --html-report {message}\n"
    assert not project.runs.exists() or not project.records()  # nothing ran
    assert project.cli("run", "w", "-q").exit_code == 0
    result = project.cli("report", "latest", "--html", str(target))
    assert result.exit_code == 2
    assert result.stderr == f"orchestrate: error: --html {message}\n"
    assert kept.read_text() == "the user's file"
    assert stat.S_ISFIFO(os.lstat(target).st_mode) if kind == "fifo" else True


def test_interrupted_run_still_writes_its_report(project: Project) -> None:
    marker = project.root / "started"
    project.workflow("w", [cmd("long", f"echo ready; touch {marker}; sleep 300")])
    target = project.root / "r.html"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--html-report", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    page = Page(target.read_text())
    assert page.find("h1")[0]["text"] == "w ✗ failed"
    assert [c["text"] for c in page.by_class("td", "message")] == ["interrupted by SIGINT"]
    assert page.find("pre", id="tail-0")[0]["text"] == "ready"


def test_secrets_are_masked_again_even_split_by_colour_codes(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "hunter2-very-secret")
    # a step that prints the secret with a colour code inside it: the log masks only whole
    # secrets, so the colour split one reaches the log; the report must not show it
    project.workflow(
        "w",
        [cmd("leak", "printf 'token hunter2-\\033[1mvery-secret\\033[0m\\n'; echo plain ${DEPLOY_TOKEN}")],
        secrets=["DEPLOY_TOKEN"],
    )
    result = project.run("run", "w", "-q", "--html-report", str(project.root / "r.html"))
    assert result.returncode == 0, result.stderr
    for html in ((project.root / "r.html").read_text(),):
        assert "very-secret" not in html
        assert Page(html).find("pre", id="tail-0")[0]["text"] == "token ***\nplain ***"
    assert project.cli("report", "latest").exit_code == 0
    assert "very-secret" not in report_of(project)


def test_log_names_in_a_record_never_lead_outside_the_run(project: Project, tmp_path: Path) -> None:
    project.workflow("w", [cmd("a", "echo mine"), cmd("b", "echo also mine")])
    assert project.cli("run", "w", "-q").exit_code == 0
    record = project.last_record()
    run_dir = project.runs / record["run_id"]
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's business")
    record["log"][0]["log_file"] = str(outside)  # a hand-edited record
    (project.runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    (run_dir / "02-b.log").unlink()
    (run_dir / "02-b.log").symlink_to(outside)
    assert project.cli("report", "latest").exit_code == 0
    html = report_of(project)
    assert "not the run's business" not in html
    page = Page(html)
    assert page.find("pre", id="tail-0")[0]["text"] == "mine"  # the record's own tail
    assert page.find("pre", id="tail-1")[0]["text"] == "also mine"
    (run_dir / "02-b.log").unlink()
    os.mkfifo(run_dir / "02-b.log")  # a FIFO would block a plain open() forever
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(project.root), "report", "latest"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


def test_failed_cypress_tests_with_their_files(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Cypress binary cannot be downloaded here: tests/fake_cypress.py stands in for it.
    node = tmp_path / "node-bin"
    node.mkdir()
    (node / "node").write_text("#!/bin/sh\necho v20.0.0\n")
    (node / "node").chmod(0o755)
    monkeypatch.setenv("PATH", f"{node}{os.pathsep}{os.environ['PATH']}")
    web = project.root / "web"
    project.write("web/package.json", json.dumps({"devDependencies": {"cypress": "15.3.0"}}))
    binary = web / "node_modules" / ".bin" / "cypress"
    binary.parent.mkdir(parents=True)
    shutil.copy(FAKE_CYPRESS, binary)
    binary.chmod(0o755)
    project.write("web/cypress/e2e/login.cy.js", "// fake: suite login\n// fake: pass 1\n// fake: fail 2\n")
    project.write("web/cypress/e2e/cart.cy.js", "// fake: suite cart\n// fake: pass 2\n")
    project.workflow("ui", [{"name": "ui smoke", "type": "cypress", "project": "./web"}])
    result = project.run("run", "ui", "-q", "--html-report", str(project.root / "r.html"))
    assert result.returncode == 1, result.stderr
    page = Page((project.root / "r.html").read_text())
    tests = page.by_class("li", "failed-test")
    assert [
        (t["text"].split(" ", 1)[0], page.by_class("span", "test-name")[i]["text"]) for i, t in enumerate(tests)
    ] == [("cypress/e2e/login.cy.js", "login › fails 1"), ("cypress/e2e/login.cy.js", "login › fails 2")]
    assert [m["text"] for m in page.by_class("div", "test-message")] == [
        "expected '<h1>' to have text 'Welcome', but the text was 'fails 1'",
        "expected '<h1>' to have text 'Welcome', but the text was 'fails 2'",
    ]
    assert page.find("h3")[0]["text"] == "ui smoke (2 failed of 5 tests)"


def test_unreadable_junit_is_said_and_names_come_from_the_record(project: Project) -> None:
    project.workflow("w", [cmd("a", "echo x")])
    assert project.cli("run", "w", "-q").exit_code == 0
    record = project.last_record()
    record["log"][0]["failed_tests"] = ["cypress/e2e/a.cy.js › suite › one", "no file here"]
    (project.runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    (project.runs / record["run_id"] / "junit.xml").write_text("<testsuites><testsuite")
    assert project.cli("report", "latest").exit_code == 0
    page = Page(report_of(project))
    assert [t["text"] for t in page.by_class("span", "file")] == ["cypress/e2e/a.cy.js", "(no file)"]
    assert [t["text"] for t in page.by_class("span", "test-name")] == ["suite › one", "no file here"]
    assert [p["text"] for p in page.by_class("p", "problem")] == [
        "junit.xml: unreadable: unclosed token: line 1, column 12"
    ]


def test_run_html_report_without_test_cases_loads_no_xml_parser_or_openssl(project: Project) -> None:
    """Issue 15: the junit.xml of a run whose steps reported no test cases is the one
    build_junit_xml writes for its record, so the report does not parse it (ElementTree's
    import was 4 ms of every `run --html-report`), and its CSP hashes need no hashlib."""
    project.workflow("w", [cmd("a", "echo one"), cmd("b", "exit 3")])
    target = project.root / "report.html"
    heavy = ("xml.etree.ElementTree", "hashlib", "base64")
    code = (
        "import sys, orchestrate\n"
        "rc = orchestrate.main(['--root', sys.argv[1], 'run', 'w', '-q', '--shard', '1/1', '--html-report', sys.argv[2]])\n"
        f"print(rc, [m for m in {heavy!r} if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, str(project.root), str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] == "1 []", done.stdout + done.stderr
    html = target.read_text()
    assert "unreadable" not in html and "exited with code 3" in html
    # `orchestrate report` of the finished run writes the same page (but for its nonce and hashes)
    assert project.cli("report", "latest", "--html", str(project.root / "again.html")).exit_code == 0
    again = (project.root / "again.html").read_text()
    assert re.sub(r"'sha256-[^']+'|nonce-[^']+", "", again) == re.sub(r"'sha256-[^']+'|nonce-[^']+", "", html)
