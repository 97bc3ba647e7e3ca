"""Guarantee 5 — hostile output: whatever bytes a step prints (every byte value, ANSI and OSC
escapes, ']]>', invalid UTF-8, 50 MB without a newline, 10 MB lines), the console does not
hang, orchestrate's memory stays bounded, the step log holds every byte, the record keeps a
bounded readable tail, and the JUnit report validates against both schemas."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from _rel import PY, clean_env, orchestrate_argv

import orchestrate

HOSTILE = (
    bytes(range(256)) * 4
    + b"\x1b[31mred\x1b[0m \x1b[2J\x1b[H \x1b[?1049h"  # colour, clear screen, alt screen
    + b"\x1b]0;window title\x07 \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\"  # OSC title, hyperlink
    + b"\x1b]52;c;cGF5bG9hZA==\x07"  # OSC 52: write the clipboard
    + b"]]> <![CDATA[ ]]> </failure></testcase> &amp; <x/>\n"
    + b"\xff\xfe\xc0\xaf\xed\xa0\x80\xed\xbf\xbf\xf4\x90\x80\x80 \x80\x80\n"  # invalid UTF-8, encoded surrogates
    + b"\r\rcarriage\x00nul\x08backspace\x7f\n"
    + "unicode \u2028 \ufffe \U0001f600\n".encode()
)


def _measure(root: Path, *args: str) -> dict[str, Any]:
    """Run orchestrate under a helper that drains its console pipe and reports the peak RSS of
    its descendants (getrusage(RUSAGE_CHILDREN).ru_maxrss, KiB on Linux)."""
    helper = r"""
import json, resource, subprocess, sys, time
started = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
console = 0
while chunk := p.stdout.read(1 << 20):
    console += len(chunk)
err = p.stderr.read()
code = p.wait()
print(json.dumps({"code": code, "console_bytes": console, "stderr": err.decode("utf-8", "replace")[-2000:],
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "seconds": time.monotonic() - started}))
"""
    done = subprocess.run(
        [PY, "-c", helper, *orchestrate_argv(root, *args)], env=clean_env(), capture_output=True, timeout=120, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _project(root: Path, steps: list[dict[str, Any]]) -> None:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": steps}))


def _printer(code: str, exit_code: int = 0) -> list[str]:
    return [PY, "-c", f"import sys, os\nout = sys.stdout.buffer\n{code}\nout.flush()\nsys.exit({exit_code})"]


def _only_record(root: Path) -> dict[str, Any]:
    (path,) = list((root / "runs").glob("*.json"))
    data = path.read_bytes()
    data.decode("utf-8")  # strictly UTF-8: no surrogate-escaped bytes leak into the record
    return json.loads(data)


def test_every_byte_escape_and_invalid_utf8(tmp_path: Path) -> None:
    from conftest import assert_valid_junit

    root = tmp_path / "project"
    (root / "hostile.bin").parent.mkdir(parents=True)
    (root / "hostile.bin").write_bytes(HOSTILE)
    _project(
        root,
        [
            {"name": "passes", "type": "command", "run": _printer("out.write(open('hostile.bin','rb').read())")},
            {
                "name": "fails",
                "type": "command",
                "run": _printer("out.write(open('hostile.bin','rb').read())", 1),
                "continue_on_error": False,
            },
        ],
    )
    result = subprocess.run(orchestrate_argv(root, "run", "w"), env=clean_env(), capture_output=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert b"Traceback" not in result.stderr
    record = _only_record(root)
    run_dir = root / "runs" / record["run_id"]
    for entry in record["log"]:
        assert (run_dir / Path(entry["log_file"]).name).read_bytes() == HOSTILE  # byte-exact
        tail = entry["output_tail"]
        assert len(tail.encode()) <= orchestrate.TAIL_MAX_BYTES * 3
        assert "\x1b" not in tail and "\x00" not in tail and "\x07" not in tail
        assert "]]>" in tail and "red" in tail and "\ufffd" in tail
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in tail)
    junit = run_dir / "junit.xml"
    assert_valid_junit(junit)
    text = junit.read_text(encoding="utf-8")
    assert "]]&gt;" in text and "\x1b" not in text
    logs = subprocess.run(
        orchestrate_argv(root, "logs", record["run_id"], "passes"), env=clean_env(), capture_output=True, timeout=60
    )
    assert logs.returncode == 0 and logs.stdout == HOSTILE


def test_hostile_step_names_and_messages_still_make_valid_junit(tmp_path: Path) -> None:
    from conftest import assert_valid_junit

    root = tmp_path / "project"
    names = ["]]> & <x>", "quotes \" '", "emoji \U0001f600", "\ufffe\uffff", "\u2028sep", "\x85next"]
    _project(
        root,
        [
            {
                "name": name,
                "type": "command",
                "run": ["sh", "-c", "printf '\\033]0;x\\007'; exit 3"],
                "continue_on_error": True,
            }
            for name in names
        ]
        + [{"name": "plain", "type": "command", "run": ["false"]}],
    )
    result = subprocess.run(orchestrate_argv(root, "run", "w"), env=clean_env(), capture_output=True, timeout=60)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    record = _only_record(root)
    assert_valid_junit(root / "runs" / record["run_id"] / "junit.xml")


def _baseline_kib(tmp_path: Path) -> int:
    root = tmp_path / "baseline"
    _project(root, [{"name": "tiny", "type": "command", "run": _printer("out.write(b'hello\\n')")}])
    measured = _measure(root, "run", "w")
    assert measured["code"] == 0
    return int(measured["peak_kib"])


def test_fifty_megabytes_without_a_newline_and_ten_megabyte_lines(tmp_path: Path) -> None:
    """The CI-sized variant; bench/ holds the 1 GB one."""
    baseline = _baseline_kib(tmp_path)
    root = tmp_path / "project"
    fifty = "chunk = bytes(range(32, 127)) * 700\nfor i in range(50 * 1024 * 1024 // len(chunk)): out.write(chunk)"
    lines = "for i in range(10): out.write(bytes([65 + i]) * (10 * 1024 * 1024) + b'\\n')"
    _project(
        root,
        [
            {"name": "no newline", "type": "command", "run": _printer(fifty)},
            {"name": "long lines", "type": "command", "run": _printer(lines)},
        ],
    )
    measured = _measure(root, "run", "w")
    assert measured["code"] == 0, measured["stderr"]
    assert measured["console_bytes"] > 145 * 1024 * 1024  # streamed live, not dropped
    # 150 MB went through: holding even one 10 MB line or the 50 MB stream would show here
    growth_mib = (measured["peak_kib"] - baseline) / 1024
    assert growth_mib < 40, f"peak RSS grew by {growth_mib:.0f} MiB over a trivial run"
    record = _only_record(root)
    run_dir = root / "runs" / record["run_id"]
    chunk = bytes(range(32, 127)) * 700
    expected = chunk * (50 * 1024 * 1024 // len(chunk))
    log = (run_dir / Path(record["log"][0]["log_file"]).name).read_bytes()
    assert len(log) == len(expected) and hashlib.sha256(log).digest() == hashlib.sha256(expected).digest()
    log2 = (run_dir / Path(record["log"][1]["log_file"]).name).read_bytes()
    assert log2 == b"".join(bytes([65 + i]) * (10 * 1024 * 1024) + b"\n" for i in range(10))
    for entry in record["log"]:
        assert len(entry["output_tail"].encode()) <= orchestrate.TAIL_MAX_BYTES * 3
    assert (root / "runs" / f"{record['run_id']}.json").stat().st_size < 64 * 1024


def test_console_going_away_does_not_stop_the_run(tmp_path: Path) -> None:
    """`orchestrate run w | head -1`: the reader leaves; the run still completes and records."""
    root = tmp_path / "project"
    _project(
        root,
        [
            {
                "name": "talks",
                "type": "command",
                "run": _printer("for i in range(20000): out.write(b'line %d\\n' % i)"),
            },
            {"name": "after", "type": "command", "run": ["echo", "after"]},
        ],
    )
    done = subprocess.run(
        ["sh", "-c", '"$@" | head -c 100 >/dev/null', "sh", *orchestrate_argv(root, "run", "w")],
        env=clean_env(),
        capture_output=True,
        timeout=60,
    )
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    record = _only_record(root)
    assert record["status"] == "completed", record["message"]
    assert [e["status"] for e in record["log"]] == ["passed", "passed"]
    log = (root / "runs" / record["run_id"] / Path(record["log"][0]["log_file"]).name).read_bytes()
    assert log.count(b"\n") == 20000
