"""The run store: atomic records, the journal, interrupted runs, listing, pruning, bad ids."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import orchestrate
from conftest import Project


def _record(run_id: str, status: str = "completed", workflow: str = "w", **extra: object) -> dict:
    return {
        "schema_version": orchestrate.SCHEMA_VERSION,
        "run_id": run_id,
        "workflow": workflow,
        "status": status,
        "current": None,
        "started_at": "2026-11-27T15:40:00.000Z",
        "finished_at": None,
        "pid": None,
        "trigger": {"source": "cli"},
        "log": [],
        **extra,
    }


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    orchestrate.write_atomic(path, b"one")
    orchestrate.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["r.json"]
    assert path.stat().st_mode & 0o002 == 0


def test_create_never_overwrites(tmp_path: Path) -> None:
    store = orchestrate.RunStore(tmp_path / "runs")
    store.create(_record("20261127T154000000Z-aaaaaa"))
    with pytest.raises(FileExistsError):
        store.create(_record("20261127T154000000Z-aaaaaa", status="failed"))
    assert store.load("20261127T154000000Z-aaaaaa")["status"] == "completed"


def test_running_record_of_dead_process_reads_as_interrupted(tmp_path: Path) -> None:
    store = orchestrate.RunStore(tmp_path / "runs")
    dead = subprocess.Popen(["true"])
    dead.wait()
    entry = {"step": "a", "status": "running"}
    store.create(_record("20261127T154000000Z-bbbbbb", status="running", pid=dead.pid, log=[entry]))
    record = store.load("20261127T154000000Z-bbbbbb")
    assert record["status"] == "failed"
    assert record["message"].startswith(f"interrupted: orchestrate (pid {dead.pid}) stopped")
    assert record["log"][0]["status"] == "failed"
    alive = _record(
        "20261127T154000000Z-cccccc",
        status="running",
        pid=os.getpid(),
        pid_start=orchestrate.pid_start_time(os.getpid()),
    )
    store.create(alive)
    assert store.load("20261127T154000000Z-cccccc")["status"] == "running"


def test_journal_updates_are_applied_and_a_torn_line_ignored(tmp_path: Path) -> None:
    store = orchestrate.RunStore(tmp_path / "runs")
    run_id = "20261127T154000000Z-dddddd"
    record = _record(
        run_id,
        status="running",
        pid=os.getpid(),
        pid_start=orchestrate.pid_start_time(os.getpid()),
        log=[{"step": "a", "status": "pending"}, {"step": "b", "status": "pending"}],
    )
    store.create(record)
    recorder = orchestrate.RunRecorder(store, record, snapshot_interval=3600)  # journal only
    recorder.step_finished(0, {"step": "a", "status": "passed"})
    recorder.step_started(1, {"step": "b", "status": "running"})
    with open(store.journal_path(run_id), "ab") as handle:
        handle.write(b'{"seq": 99, "index": 1, "entry": {"st')
    loaded = store.load(run_id)
    assert [e["status"] for e in loaded["log"]] == ["passed", "running"]
    assert loaded["current"] == "b"
    on_disk = json.loads(store.record_path(run_id).read_text())
    assert on_disk["log"][0]["status"] == "pending"  # the snapshot itself was not rewritten
    recorder.finish()
    assert not store.journal_path(run_id).exists()
    assert json.loads(store.record_path(run_id).read_text())["log"][0]["status"] == "passed"


def test_snapshots_of_a_running_run_are_compact_and_the_finished_record_indented(tmp_path: Path) -> None:
    """Issue 15: json indents only in pure Python (a tenth of a short step's time); readers
    take both forms, and a filter that peeks at a record's head reads a compact one whole."""
    store = orchestrate.RunStore(tmp_path / "runs")
    run_id = "20261127T154000000Z-eeeeee"
    steps = [{"step": f"s{i}", "status": "pending"} for i in range(3)]
    record = _record(run_id, status="running", pid=os.getpid(), log=steps)
    record["pid_start"] = orchestrate.pid_start_time(os.getpid())
    store.create(record)
    recorder = orchestrate.RunRecorder(store, record, snapshot_interval=0)  # a snapshot at each update
    recorder.step_finished(0, {"step": "s0", "status": "passed", "message": "ünï"})
    recorder.step_started(1, {"step": "s1", "status": "running"})
    raw = store.record_path(run_id).read_bytes()
    assert raw.count(b"\n") == 1 and '"log":[{"step":"s0","status":"passed","message":"ünï"}'.encode() in raw
    assert store.load(run_id)["current"] == "s1"
    assert [r["run_id"] for r in store.summaries(workflow=record["workflow"])] == [run_id]
    recorder.step_finished(1, {"step": "s1", "status": "passed"})
    recorder.record["status"] = "completed"
    recorder.finish()
    raw = store.record_path(run_id).read_bytes()
    assert raw.startswith(b'{\n "schema_version": ') and b'\n "status": "completed"' in raw
    assert [e["status"] for e in store.load(run_id)["log"]] == ["passed", "passed", "pending"]
    assert [r["run_id"] for r in store.summaries(status="completed")] == [run_id]


def test_status_is_current_while_the_run_goes_on(project: Project) -> None:
    gate = project.root / "gate"
    project.workflow(
        "w",
        [
            {"name": "first", "type": "command", "run": "true"},
            {"name": "waits", "type": "command", "run": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
        ],
    )
    env = {**os.environ, "PYTHONPATH": str(Path(orchestrate.__file__).parent)}
    from conftest import orchestrate_bin

    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ids = orchestrate.RunStore(project.runs).list_ids()
            if ids:
                record = orchestrate.RunStore(project.runs).load(ids[0])
                if record["current"] == "waits":
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("status never showed the running step")
        shown = project.cli("status", ids[0])
        assert "— running (current: waits)" in shown.stdout
        assert record["log"][0]["status"] == "passed"
    finally:
        gate.write_text("")
        process.wait(20)
    assert project.cli("status", ids[0]).stdout.splitlines()[0].endswith("— completed")


def test_runs_lists_newest_first_with_filters_and_reports_unreadable(project: Project) -> None:
    store = orchestrate.RunStore(project.runs)
    store.create(_record("20261127T150000000Z-000001", workflow="a"))
    store.create(_record("20261127T150000000Z-000002", workflow="b", status="failed"))
    store.create(_record("20261127T150000000Z-000003", workflow="a"))
    (project.runs / "20261127T150000000Z-000004.json").write_text('{"schema_version": 1, "run_id": "x", "trunc')
    (project.runs / "20261127T150000000Z-000005.json").write_text(
        json.dumps(_record("20261127T150000000Z-000005") | {"schema_version": 99})
    )
    (project.runs / ".20261127T150000000Z-000006.json.123.tmp").write_text("{")
    result = project.cli("runs")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"20261127T150000000Z-00000{i}" for i in (5, 4, 3, 2, 1)]
    assert "unreadable:" in lines[0] and "schema_version 99 is newer" in lines[0]
    assert "unreadable:" in lines[1] and "20261127T150000000Z-000004.json" in lines[1]
    only_a = project.cli("runs", "--workflow", "a", "--json")
    assert [r["run_id"] for r in json.loads(only_a.stdout)] == [
        "20261127T150000000Z-000003",
        "20261127T150000000Z-000001",
    ]
    failed = project.cli("runs", "--status", "failed", "--json")
    assert [r["run_id"] for r in json.loads(failed.stdout)] == ["20261127T150000000Z-000002"]
    assert project.cli("runs", "--status", "faild").exit_code == 2
    assert len(json.loads(project.cli("runs", "--limit", "2", "--json").stdout)) == 2
    unreadable = project.cli("status", "20261127T150000000Z-000004")
    assert unreadable.exit_code == 3
    assert "20261127T150000000Z-000004.json: unreadable: not valid JSON" in unreadable.stderr


@pytest.mark.parametrize("run_id", ["../../etc/passwd", "", "x" * 101, "a/b", ".hidden", "a b"])
def test_bad_run_ids_are_refused(project: Project, run_id: str) -> None:
    for command in (["status", run_id], ["logs", run_id]):
        result = project.cli(*command)
        assert result.exit_code == 2
        assert "is not a run id" in result.stderr
        assert "Traceback" not in result.stderr


def test_prune_keeps_newest_and_never_running(project: Project) -> None:
    store = orchestrate.RunStore(project.runs)
    for i in range(1, 6):
        store.create(_record(f"20261127T150000000Z-00000{i}"))
        store.run_dir(f"20261127T150000000Z-00000{i}").mkdir()
    store.write_snapshot(
        _record(
            "20261127T150000000Z-000001",
            status="running",
            pid=os.getpid(),
            pid_start=orchestrate.pid_start_time(os.getpid()),
        )
    )
    result = project.cli("prune", "--keep", "2")
    assert result.exit_code == 0
    assert "removed 2 runs" in result.stdout
    assert store.list_ids() == [
        "20261127T150000000Z-000005",
        "20261127T150000000Z-000004",
        "20261127T150000000Z-000001",
    ]
    assert not store.run_dir("20261127T150000000Z-000002").exists()


def test_keep_runs_setting_prunes_after_each_run(project: Project) -> None:
    project.write("orchestrate.json", json.dumps({"keep_runs": 2}))
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    for _ in range(4):
        assert project.cli("run", "w", "--quiet").exit_code == 0
    assert len(orchestrate.RunStore(project.runs).list_ids()) == 2


def test_queued_and_running_runs_never_count_toward_keep_runs(project: Project) -> None:
    """500 runs queued on the HTTP server once pruned every finished record, CLI runs too."""
    project.write("orchestrate.json", json.dumps({"keep_runs": 3}))
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    for _ in range(2):
        assert project.cli("run", "w", "--quiet").exit_code == 0
    store = orchestrate.RunStore(project.runs)
    finished = store.list_ids()
    queued = [f"29991231T000000{n:03d}Z-0000aa" for n in range(20)]  # newer than any real run
    for run_id in queued:
        store.create(_record(run_id, status="pending", trigger={"source": "http"}))
    alive = _record(
        "29991231T000000999Z-0000bb",
        status="running",
        pid=os.getpid(),
        pid_start=orchestrate.pid_start_time(os.getpid()),
    )
    store.create(alive)

    assert project.cli("run", "w", "--quiet").exit_code == 0  # prunes after the run
    assert project.cli("run", "w", "--quiet").exit_code == 0

    ids = store.list_ids()
    assert set(queued) | {alive["run_id"]} <= set(ids)  # none of them pruned
    kept = [i for i in ids if i not in queued and i != alive["run_id"]]
    assert len(kept) == 3 and finished[0] in kept and finished[1] not in kept  # the newest 3 finished
    assert store.prune(1) == sorted(kept, reverse=True)[1:]
    assert set(queued) <= set(store.list_ids())


def test_prune_reads_a_dead_running_run_as_finished(project: Project) -> None:
    store = orchestrate.RunStore(project.runs)
    store.create(_record("20261127T150000000Z-000001", status="running", pid=2**22 + 12345))
    store.create(_record("20261127T150000000Z-000002"))
    store.create(_record("20261127T150000000Z-000003", status="pending"))
    assert store.prune(1) == ["20261127T150000000Z-000001"]  # interrupted: finished, and older


def test_logs_prints_full_output_by_name_or_number(project: Project) -> None:
    project.workflow(
        "w",
        [{"name": "a", "type": "command", "run": "echo alpha"}, {"name": "b", "type": "command", "run": "echo beta"}],
    )
    project.cli("run", "w")
    run_id = project.last_record()["run_id"]
    assert project.cli("logs", run_id, "b").stdout == "beta\n"
    assert project.cli("logs", run_id, "1").stdout == "alpha\n"
    both = project.cli("logs", run_id).stdout
    assert "=== a (passed) ===" in both and "beta" in both
    bad = project.cli("logs", run_id, "c")
    assert bad.exit_code == 2 and "has no step 'c'" in bad.stderr


def test_record_has_what_resume_will_need(project: Project) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    project.cli("run", "w")
    record = project.last_record()
    assert len(record["workflow_sha256"]) == 64
    assert len(record["log"][0]["definition_sha256"]) == 64
    for key in (
        "schema_version",
        "run_id",
        "workflow",
        "status",
        "current",
        "started_at",
        "finished_at",
        "pid",
        "trigger",
        "log",
    ):
        assert key in record
    for key in (
        "step",
        "type",
        "status",
        "started_at",
        "finished_at",
        "duration_s",
        "exit_code",
        "attempts",
        "message",
        "output_tail",
        "log_file",
    ):
        assert key in record["log"][0]
    assert record["log"][0]["log_file"] == f"runs/{record['run_id']}/01-a.log"
    assert "environ" not in json.dumps(record).lower()


def test_unwritable_runs_dir_is_exit_3_with_a_hint(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    project.write("runs", "a file where the folder should be")
    result = project.cli("run", "w")
    assert result.exit_code == 3
    assert "cannot write run records to" in result.stderr and "--runs-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_version_1_record_is_migrated_on_read(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    v1 = {
        "schema_version": 1,
        "run_id": "20261127T154000000Z-aaaaab",
        "workflow": "w",
        "status": "completed",
        "current": None,
        "started_at": "2026-11-27T15:40:00.000Z",
        "finished_at": "2026-11-27T15:40:01.000Z",
        "pid": None,
        "trigger": {"source": "cli"},
        "log": [{"step": "a", "status": "passed"}],
    }
    (runs / "20261127T154000000Z-aaaaab.json").write_text(json.dumps(v1))
    loaded = orchestrate.RunStore(runs).load("20261127T154000000Z-aaaaab")
    assert loaded["schema_version"] == orchestrate.SCHEMA_VERSION == 3
    assert loaded["running"] == []
    assert loaded["log"] == v1["log"]
    # the file itself is left as it was
    assert json.loads((runs / "20261127T154000000Z-aaaaab.json").read_text()) == v1


def test_a_malformed_record_is_never_written(tmp_path: Path) -> None:
    store = orchestrate.RunStore(tmp_path / "runs")
    with pytest.raises(AssertionError, match="status 'finished' is not one of"):
        store.create(_record("20261127T154000000Z-aaaaac", status="finished"))
    assert not (tmp_path / "runs" / "20261127T154000000Z-aaaaac.json").exists()


def test_an_unreadable_journal_makes_the_record_unreadable_not_stale(project: Project) -> None:
    run_id = "20261127T154000000Z-aaaaad"
    store = orchestrate.RunStore(project.runs)
    store.create(
        _record(
            run_id,
            status="running",
            pid=os.getpid(),
            pid_start=orchestrate.pid_start_time(os.getpid()),
            log=[{"step": "a", "status": "running"}],
        )
    )
    store.journal_path(run_id).mkdir()  # what a read error looks like, even to root
    result = project.cli("status", run_id)
    assert result.exit_code == 3
    assert result.stderr.strip() == (f"orchestrate: error: {store.journal_path(run_id)}: unreadable: Is a directory")


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """fsync/fdatasync calls, each with the name of the file it synced."""
    calls: dict[str, list[str]] = {"fsync": [], "fdatasync": []}
    for name in calls:
        real = getattr(os, name)

        def counting(fd: int, _name: str = name, _real=real) -> None:
            calls[_name].append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            _real(fd)

        monkeypatch.setattr(orchestrate.os, name, counting)
    return calls


def test_short_steps_are_not_synced_one_by_one(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: no fdatasync per step. A run of 1 step and one of 30 sync the same files: the
    record when it is created, the JUnit report and the record at the end."""
    project.workflow("one", [{"name": "s1", "type": "command", "run": ["true"]}])
    project.workflow("many", [{"name": f"s{i}", "type": "command", "run": ["true"]} for i in range(30)])
    # the first run in a project also makes runs/.hash-key once; count steady-state runs
    assert project.cli("run", "one", "--quiet").exit_code == 0
    counts = {}
    for name in ("one", "many"):
        calls = _count_syncs(monkeypatch)
        assert project.cli("run", name, "--quiet").exit_code == 0
        monkeypatch.undo()
        assert calls["fdatasync"] == []
        # temporary files: .<name>.<pid>.<thread>.tmp, moved into place once synced
        counts[name] = ["junit" if "junit.xml" in n else "record" if ".json" in n else n for n in calls["fsync"]]
    assert counts["one"] == counts["many"] == ["record", "junit", "record"]


def _synced_kind(name: str) -> str:
    """What a synced temporary file (.<name>.<pid>.<thread>.tmp) becomes."""
    for part, kind in (("hash-key", "key"), ("runs.jsonl", "runs.jsonl"), ("junit.xml", "junit"), (".json", "record")):
        if part in name:
            return kind
    return name


def test_the_index_is_a_cache_and_is_not_synced(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: runs/.index/'s rows are checked against the records whenever they are read, so
    a power cut costs a rebuild, never a wrong answer: they are written atomically, not synced."""
    project.write("src/a.txt", "one\n")
    project.workflow("w", [{"name": "build", "type": "command", "run": ["true"], "sources": ["src/**"]}])
    kinds = []
    for _ in range(2):
        calls = _count_syncs(monkeypatch)
        assert project.cli("run", "w", "--quiet").exit_code == 0
        monkeypatch.undo()
        kinds.append([_synced_kind(name) for name in calls["fsync"]])
    # the key and the list of runs are made once a project; the rows are never synced
    assert kinds == [["record", "key", "runs.jsonl", "junit", "record"], ["record", "junit", "record"]]
    lines = [json.loads(line) for line in (project.runs / ".index" / "runs.jsonl").read_text().splitlines()]
    statuses = {line["run_id"]: line["status"] for line in lines}  # a later line for a run wins
    first, second = sorted(statuses)
    assert statuses == {first: "completed", second: "completed"}
    entry = project.last_record()["log"][0]
    assert entry["status"] == "skipped" and entry["up_to_date_since"] == first


def test_a_step_that_ran_a_second_has_its_outcome_synced(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.workflow(
        "w",
        [
            {"name": "slow", "type": "command", "run": ["sleep", "1.1"]},
            {"name": "quick", "type": "command", "run": ["true"]},
        ],
    )
    calls = _count_syncs(monkeypatch)
    monkeypatch.setattr(orchestrate, "SNAPSHOT_INTERVAL_S", 3600.0)  # no periodic snapshot in between
    assert project.cli("run", "w", "--quiet").exit_code == 0
    monkeypatch.undo()
    journal = [n for n in calls["fdatasync"] if n.endswith(".journal")]
    assert len(journal) == 1 and calls["fdatasync"] == journal  # the slow step's outcome, not the quick one's


def _finished_runs(store: orchestrate.RunStore, count: int, workflow: str = "w", first: int = 0) -> list[str]:
    ids = []
    for i in range(first, first + count):
        run_id = f"20261127T{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}000Z-{i:06x}"
        store.create(_record(run_id, workflow=workflow))
        store.run_dir(run_id).mkdir()
        ids.append(run_id)
    return ids


def test_pruning_after_a_run_goes_in_bounded_batches(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: thousands of old runs are pruned a batch per run (PRUNE_BATCH, and never for
    longer than PRUNE_BUDGET_S), not all after one run."""
    monkeypatch.setattr(orchestrate, "PRUNE_BUDGET_S", 60.0)  # the batch alone bounds it here
    store = orchestrate.RunStore(project.runs)
    project.write("orchestrate.json", json.dumps({"keep_runs": 5}))
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    _finished_runs(store, 2 * orchestrate.PRUNE_BATCH + 30)
    counts = []
    for _ in range(4):
        assert project.cli("run", "w", "--quiet").exit_code == 0
        counts.append(len(store.list_ids()))
    total = 2 * orchestrate.PRUNE_BATCH + 30
    assert counts == [total + 1 - orchestrate.PRUNE_BATCH, total + 2 - 2 * orchestrate.PRUNE_BATCH, 5, 5]
    ids = store.list_ids()
    assert store.prune(1, batch=2) == ids[1:3]
    # a budget spent before the first removal (a slow listing) still lets PRUNE_AT_LEAST go:
    # pruning always makes progress
    _finished_runs(store, 20, first=1000)
    ids = store.list_ids()
    assert store.prune(1, budget_s=0.0) == ids[1 : 1 + orchestrate.PRUNE_AT_LEAST]


def test_after_a_run_one_stat_says_runs_holds_no_more_than_keep(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing 10,000 runs took 17 ms after every run; a folder's link count tells as much."""
    store = orchestrate.RunStore(project.runs)
    _finished_runs(store, 3)
    if os.stat(project.runs).st_nlink < 2:
        pytest.skip("this filesystem does not count subfolders in a folder's link count (btrfs)")
    monkeypatch.setattr(store, "list_ids", lambda: pytest.fail("listed runs/"))
    assert store.may_hold_more_than(3) is False and store.may_hold_more_than(5) is False
    monkeypatch.undo()
    assert store.may_hold_more_than(2) is True


def test_a_filtered_listing_parses_only_records_that_may_match(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: `runs --workflow W` and `--status S` read a record's first bytes and parse it
    only when it may match; the newest matching ones come first, and reading stops at --limit."""
    store = orchestrate.RunStore(project.runs)
    mine = _finished_runs(store, 3, workflow="mine")
    _finished_runs(store, 40, workflow="other", first=10)
    newest_mine = _finished_runs(store, 2, workflow="mine", first=60)
    failed = "20261127T235959000Z-ffffff"
    store.create(_record(failed, workflow="other", status="failed"))
    loaded: list[str] = []
    real_load = orchestrate.RunStore.load

    def counted_load(self: orchestrate.RunStore, run_id: str) -> dict[str, Any]:
        loaded.append(run_id)
        return real_load(self, run_id)

    monkeypatch.setattr(orchestrate.RunStore, "load", counted_load)
    assert [r["run_id"] for r in store.summaries(workflow="mine", limit=3)] == [*reversed(newest_mine), mine[-1]]
    assert loaded == [*reversed(newest_mine), mine[-1]]
    loaded.clear()
    assert [r["run_id"] for r in store.summaries(status="failed")] == [failed]
    assert loaded == [failed]


def test_status_of_an_id_or_the_latest_run_lists_no_history(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: `status ID` and `status latest` with 10,000 runs listed and sorted them all."""
    store = orchestrate.RunStore(project.runs)
    ids = _finished_runs(store, 80)
    monkeypatch.setattr(orchestrate.RunStore, "list_ids", lambda self: pytest.fail("sorted every run id"))
    assert orchestrate.resolve_run_ref(store, ids[3]) == ids[3]
    assert orchestrate.resolve_run_ref(store, "latest") == ids[-1]
    assert [r["run_id"] for r in store.summaries(limit=3)] == ids[-1:-4:-1]
    assert list(store.newest_ids()) == sorted(ids, reverse=True)  # past the first ones picked: all, in order
