#!/usr/bin/env python3
"""Stand-in for a project's node_modules/.bin/cypress, for orchestrate's tests.

The real Cypress binary cannot be downloaded on the machines these tests run on, so the
tests copy this script into a temporary project as node_modules/.bin/cypress. It
accepts what orchestrate passes:

    cypress run --project DIR --spec a.cy.js,b.cy.js --reporter junit
        --reporter-options mochaFile=DIR/results-[hash].xml,includePending=true
        [--browser B] [--headed] [--env k=v,...] [--config k=v,...]

and, for each spec in turn, does what comment lines in the spec file itself say:

    // fake: suite login page     describe() title (default: the file's stem)
    // fake: pass 3               3 passing tests
    // fake: fail 2               2 failing tests (an AssertionError each)
    // fake: skip 1               1 pending test
    // fake: time 1.5             each test takes 1.5 s (reported, not slept)
    // fake: sleep 2              really sleep 2 s before the spec's results
    // fake: screenshot           a PNG per failed test under cypress/screenshots/<spec>/
    // fake: video                cypress/videos/<spec>.mp4
    // fake: crash                stop here: exit 1, no JUnit file for this spec

It writes one JUnit file per spec in mocha-junit-reporter's layout as Cypress produces
it (<testsuites name="Mocha Tests">, a first "Root Suite" testsuite carrying the spec's
file as an absolute path, then one testsuite per describe, testcase name = "<suite>
<test>", classname = "<test>"; pending tests only with includePending=true in the reporter
options, as <skipped/>), with [hash] replaced by the MD5 of the content, prints progress like Cypress,
and exits with its number of failed tests modulo 256, as Cypress does. When
FAKE_CYPRESS_CALLS names a file, each call appends its argv, cwd and environment there
as one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import quoteattr


def parse_args(argv: list[str]) -> dict:
    if not argv or argv[0] != "run":
        sys.stderr.write("fake cypress: only `cypress run` is supported\n")
        raise SystemExit(1)
    options: dict = {"headed": False}
    pos = 1
    while pos < len(argv):
        flag = argv[pos]
        if flag == "--headed":
            options["headed"] = True
            pos += 1
            continue
        if not flag.startswith("--") or pos + 1 >= len(argv):
            sys.stderr.write(f"fake cypress: unexpected argument {flag!r}\n")
            raise SystemExit(1)
        options[flag[2:]] = argv[pos + 1]
        pos += 2
    return options


def reporter_options(options: dict) -> dict:
    pairs = (pair.partition("=") for pair in options.get("reporter-options", "").split(","))
    return {key: value for key, _, value in pairs if key}


def reporter_file(options: dict) -> str:
    return reporter_options(options).get("mochaFile", "test-results.xml")


def read_directives(path: Path) -> dict:
    plan = {
        "suite": path.name.split(".")[0],
        "pass": 0,
        "fail": 0,
        "skip": 0,
        "time": 0.05,
        "sleep": 0.0,
        "screenshot": False,
        "video": False,
        "crash": False,
    }
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("// fake:"):
            continue
        word, _, rest = line[len("// fake:") :].strip().partition(" ")
        if word in ("pass", "fail", "skip"):
            plan[word] = int(rest)
        elif word in ("time", "sleep"):
            plan[word] = float(rest)
        elif word == "suite":
            plan["suite"] = rest.strip()
        elif word in ("screenshot", "video", "crash"):
            plan[word] = True
    return plan


def junit_xml(spec: str, plan: dict, include_pending: bool = False) -> tuple[str, int]:
    """`spec` goes into the Root Suite's `file` as given: the caller passes the absolute path,
    as the real reporter writes it. Pending tests appear (as <skipped/>) only with the
    reporter option includePending=true, as in mocha-junit-reporter 2.x."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    suite = plan["suite"]
    cases = []
    for kind in ("pass", "fail", "skip"):
        if kind == "skip" and not include_pending:
            continue
        for number in range(1, plan[kind] + 1):
            title = {"pass": "passes", "fail": "fails", "skip": "is pending"}[kind] + f" {number}"
            cases.append((kind, title))
    failures = sum(1 for kind, _ in cases if kind == "fail")
    total = plan["time"] * len(cases)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="Mocha Tests" time="{total:.4f}" tests="{len(cases)}" failures="{failures}">',
        (
            f'  <testsuite name="Root Suite" timestamp="{stamp}" tests="0" file={quoteattr(spec)} '
            'time="0.0000" failures="0">'
        ),
        "  </testsuite>",
        (
            f'  <testsuite name={quoteattr(suite)} timestamp="{stamp}" tests="{len(cases)}" '
            f'time="{total:.4f}" failures="{failures}">'
        ),
    ]
    for kind, title in cases:
        lines.append(
            f"    <testcase name={quoteattr(suite + ' ' + title)} "
            f'time="{plan["time"]:.4f}" classname={quoteattr(title)}>'
        )
        if kind == "fail":
            message = f"expected '<h1>' to have text 'Welcome', but the text was '{title}'"
            lines.append(
                f'      <failure message={quoteattr(message)} type="AssertionError">'
                f"<![CDATA[AssertionError: {message}\n"
                f"    at Context.eval (webpack:///./{spec}:4:12)]]></failure>"
            )
        elif kind == "skip":
            lines.append("      <skipped/>")
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(lines), failures


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    project = Path(options.get("project", "."))
    calls = os.environ.get("FAKE_CYPRESS_CALLS")
    if calls:
        with open(calls, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}) + "\n")
    specs = [s for s in options.get("spec", "").split(",") if s]
    if not specs:
        print("Can't run because no spec files were found.", file=sys.stderr)
        return 1
    mocha_file = reporter_file(options)
    print("=" * 72)
    print(
        f"  (Run Starting)  Cypress: 15.3.0 (fake)  Browser: {options.get('browser', 'electron')}"
        f"{' (headed)' if options['headed'] else ' (headless)'}  Specs: {len(specs)} found"
    )
    failed_total = 0
    for number, spec in enumerate(specs, 1):
        path = Path(spec) if Path(spec).is_absolute() else project / spec
        if not path.is_file():
            print(f"Can't run because no spec files were found: {spec}", file=sys.stderr)
            return 1
        plan = read_directives(path)
        print(f"  Running:  {spec}  ({number} of {len(specs)})", flush=True)
        if plan["crash"]:
            print(
                "  Oops...we found an error preparing this test file:\n"
                f"    > {spec}\n  Error: Webpack Compilation Error",
                file=sys.stderr,
            )
            return 1
        time.sleep(plan["sleep"])
        include_pending = reporter_options(options).get("includePending") == "true"
        xml, failures = junit_xml(str(path.resolve()), plan, include_pending)
        failed_total += failures
        digest = hashlib.md5(xml.encode("utf-8")).hexdigest()
        target = Path(mocha_file.replace("[hash]", digest))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(xml, encoding="utf-8")
        spec_name = Path(spec).name
        if plan["screenshot"]:
            for failed in range(1, plan["fail"] + 1):
                shot = (
                    project / "cypress" / "screenshots" / spec_name / f"{plan['suite']} -- fails {failed} (failed).png"
                )
                shot.parent.mkdir(parents=True, exist_ok=True)
                shot.write_bytes(b"\x89PNG\r\n\x1a\n fake")
        if plan["video"]:
            video = project / "cypress" / "videos" / f"{spec_name}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(b"fake mp4")
        print(f"    {plan['pass']} passing, {failures} failing, {plan['skip']} pending", flush=True)
    print(f"  (Run Finished)  {failed_total} tests failed" if failed_total else "  (Run Finished)  All specs passed!")
    return failed_total % 256


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
