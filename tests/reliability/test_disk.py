"""Guarantee 7 — disk trouble: runs/ not writable, or the disk filling up while a run writes
its record, journal, report or step log: one clear line on stderr, exit 3 (DESIGN.md: an
unusable environment, never mistaken for a step failure), every record already on disk still
whole, and the interrupted run reported as failed, never 'running'."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _rel import PY, all_records_parse, clean_env, cli, processes_with, wait_gone

import orchestrate

STEPS = [
    {"name": "first", "type": "command", "run": ["echo", "first"]},
    {
        "name": "stream",
        "type": "command",
        "run": [
            PY,
            "-c",
            "import sys\nfor i in range(300): print('line', i, 'x' * 100, flush=True)",
            "orch-disk-marker",
        ],
    },
    {"name": "last", "type": "command", "run": ["echo", "last"]},
]


def _project(root: Path) -> None:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": STEPS}))


def _assert_exit_3_one_line(result: Any, *words: str) -> None:
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert code == 3, (code, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrate: error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


def _previous_run(root: Path) -> dict[Path, bytes]:
    assert cli(root, "run", "w").exit_code == 0
    return {p: p.read_bytes() for p in (root / "runs").rglob("*") if p.is_file()}


def test_runs_folder_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _project(root)
    (root / "runs").write_text("not a folder")
    _assert_exit_3_one_line(cli(root, "run", "w"), str(root / "runs"), "--runs-dir")
    assert (root / "runs").read_text() == "not a folder"


def test_runs_folder_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root in CI, where chmod does not stop writes: the permission check is
    made to fail instead (os.access is what RunStore.ensure_dir asks)."""
    root = tmp_path / "project"
    _project(root)
    before = _previous_run(root)
    real_access = os.access
    monkeypatch.setattr(
        orchestrate.os,
        "access",
        lambda path, mode, **kw: False if Path(path) == root / "runs" else real_access(path, mode, **kw),
    )
    _assert_exit_3_one_line(cli(root, "run", "w"), str(root / "runs"), "Permission denied", "--runs-dir")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (root / "runs").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("err", [errno.EACCES, errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_write_seam_fails_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    root = tmp_path / "project"
    _project(root)
    before = _previous_run(root)

    def refuse(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(orchestrate, "write_atomic", refuse)
    _assert_exit_3_one_line(cli(root, "run", "w"), os.strerror(err))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (root / "runs").rglob("*") if p.is_file()} == before
    assert cli(root, "runs").exit_code == 0


DISK_FULL_AFTER = """
import errno, os, sys, orchestrate
fail_at, seam = int(os.environ["FAIL_AT"]), os.environ["FAIL_SEAM"]
calls = [0]
def failing(real):
    def patched(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= fail_at:  # and the disk stays full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)
    return patched
if seam == "fsync":  # every durable write of the store: records, journal, junit
    os.fsync = failing(os.fsync)
    os.fdatasync = failing(os.fdatasync)
else:  # the step logs (opened with os.fdopen when a step first prints)
    class FullDisk:
        def __init__(self, handle):
            self.handle, self.write = handle, failing(handle.write)
        def close(self):
            self.handle.close()
    real_fdopen = os.fdopen
    os.fdopen = lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs))
sys.exit(orchestrate.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("seam", ["fsync", "log"])
def test_disk_full_at_every_write_of_a_run(tmp_path: Path, seam: str) -> None:
    root = tmp_path / "project"
    _project(root)
    previous = _previous_run(root)
    n = 0
    while True:
        n += 1
        done = subprocess.run(
            [PY, "-c", DISK_FULL_AFTER, "--root", str(root), "run", "w"],
            capture_output=True,
            env=clean_env(FAIL_AT=str(n), FAIL_SEAM=seam),
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert not wait_gone("orch-disk-marker", 5)
        records = all_records_parse(root / "runs")  # whatever was on disk is whole
        for path, data in previous.items():
            if ".index" in path.relative_to(root / "runs").parts:
                continue  # not the earlier run's: every run adds to runs/.index/ (rebuilt when found wrong)
            assert path.read_bytes() == data, f"{path} changed"
        if done.returncode == 0:
            break
        _assert_exit_3_one_line(done, "No space left on device")
        for row in json.loads(cli(root, "runs", "--json", "--limit", "1000").stdout):
            assert "unreadable" not in row and row["status"] in ("completed", "failed"), row
        assert len(records) >= 1
        if seam == "log":  # the record and report could still be written: they say why it stopped
            newest = max(records, key=lambda r: r["run_id"])
            assert newest["status"] == "failed" and newest["exit_code"] == 3
            assert "No space left on device" in newest["message"]
            assert [e["status"] for e in newest["log"]].count("failed") == 1
            from conftest import assert_valid_junit

            assert_valid_junit(root / "runs" / newest["run_id"] / "junit.xml")
        assert n < 100
    assert n > 3, "the injected failure never hit a write"
    assert processes_with("orch-disk-marker") == []


# --- issue 11: writing only where it should ---------------------------------------------------------


def _run_real(root: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    from _rel import orchestrate_argv

    return subprocess.run(
        orchestrate_argv(root, *args),
        env=clean_env(),
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def test_disk_full_on_a_step_log_names_that_log(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _project(root)
    done = subprocess.run(
        [PY, "-c", DISK_FULL_AFTER, "--root", str(root), "run", "w"],
        capture_output=True,
        text=True,
        env=clean_env(FAIL_AT="1", FAIL_SEAM="log"),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    record = all_records_parse(root / "runs")[0]
    log = root / "runs" / record["run_id"] / "01-first.log"
    assert done.stderr == (
        f"orchestrate: error: cannot write {log}: No space left on device (free some space, or pass --runs-dir)\n"
    )
    assert (
        record["message"]
        == f"run stopped: cannot write {log}: No space left on device (free some space, or pass --runs-dir)"
    )


def test_junit_copy_onto_devices_fifos_and_links_writes_into_them(tmp_path: Path) -> None:
    import stat
    import threading

    root = tmp_path / "project"
    _project(root)
    from conftest import assert_valid_junit

    # The real /dev/stdout and /dev/full only where a regression cannot destroy them: 0.1.0 run
    # as root replaced them with regular files (and these machines are shared). /dev/fd/1 is
    # safe (nothing can be created in /proc); a device node made in tmp_path stands in for
    # /dev/full, and a link to /proc/self/fd/1 for the stdout pipe reached through a link.
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")
    stdouts = ["/dev/fd/1", str(stdout_link)] + (["/dev/stdout"] if os.geteuid() != 0 else [])
    for path in stdouts:  # the report arrives on stdout, whole, before the closing summary
        done = _run_real(root, "run", "w", "--quiet", "--junit-xml", path)
        assert done.returncode == 0, (path, done.stderr)
        start, end = done.stdout.index(b"<?xml"), done.stdout.index(b"</testsuites>") + len(b"</testsuites>")
        assert_valid_junit(done.stdout[start:end])
        assert done.stdout[end:].decode().splitlines()[-1].startswith("w: 3 passed, 0 failed, 0 skipped")
    assert stdout_link.is_symlink()
    # a FIFO: written into, still a FIFO afterwards
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read_fifo() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read_fifo)
    reader.start()
    done = _run_real(root, "run", "w", "--junit-xml", str(fifo))
    reader.join(timeout=30)
    assert done.returncode == 0, done.stderr
    assert received and received[0].rstrip().endswith(b"</testsuites>")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # a FIFO nobody reads: one line, exit 3, no hang
    done = _run_real(root, "run", "w", "--junit-xml", str(fifo))
    assert done.returncode == 3
    assert done.stderr.decode() == (
        f"orchestrate: error: cannot write the JUnit report to {fifo}: "
        f"No such device or address (a FIFO nobody reads)\n"
    )
    # a full device: it stays a device, the error says why
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the device /dev/full is
    except PermissionError:
        full = Path("/dev/full")  # not root: nothing can replace the real one
    done = _run_real(root, "run", "w", "--junit-xml", str(full))
    assert done.returncode == 3
    assert (
        done.stderr.decode()
        == f"orchestrate: error: cannot write the JUnit report to {full}: No space left on device\n"
    )
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    # a link to a regular file stays a link; its target gets the report
    target = tmp_path / "reports" / "junit.xml"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "junit-link.xml"
    link.symlink_to(target)
    done = _run_real(root, "run", "w", "--junit-xml", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes().rstrip().endswith(b"</testsuites>")


def test_planted_links_under_runs_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _project(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    runs = root / "runs"
    runs.mkdir()
    # a step log planted as a link (the run id is known ahead with --run-id, as `serve` does)
    run_id = "20261203T000000000Z-abcdef"
    (runs / run_id).mkdir()
    (runs / run_id / "01-first.log").symlink_to(victim)
    (runs / run_id / "junit.xml").symlink_to(outside / "junit.xml")
    done = _run_real(root, "run", "w", "--run-id", run_id)
    assert done.returncode == 3
    log = runs / run_id / "01-first.log"
    assert done.stderr.decode() == (
        f"orchestrate: error: cannot write {log}: it is a symbolic link; orchestrate "
        f"does not write through it: remove it\n"
    )
    assert victim.read_text() == "precious" and not (outside / "junit.xml").exists()
    assert (runs / run_id / "junit.xml").is_file() and not (runs / run_id / "junit.xml").is_symlink()
    # the run's whole folder planted as a link: refused before any step runs
    other = "20261203T000000001Z-abcdef"
    (runs / other).symlink_to(outside)
    done = _run_real(root, "run", "w", "--run-id", other)
    assert done.returncode == 3
    assert done.stderr.decode() == (
        f"orchestrate: error: {runs / other} is a symbolic link; orchestrate does not write through it: remove it\n"
    )
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
