"""Guarantee 3 — concurrency: twenty runs of one workflow started at once, sharing runs/ (a CI
job and several local pushes), leave twenty distinct, complete, valid records and reports;
retention pruning running at the same time never deletes a running run or a file being written."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from _rel import PY, clean_env, orchestrate_argv

import orchestrate

N = 20
# each step checks that its own run's record and folder still exist: if a concurrent prune
# deleted them, the step fails and so does the run
CHECK_OWN_RUN = (
    'test -f "$ORCHESTRATE_ROOT/runs/$ORCHESTRATE_RUN_ID.json" && '
    'test -d "$ORCHESTRATE_ROOT/runs/$ORCHESTRATE_RUN_ID" && echo "own run intact $ORCHESTRATE_RUN_ID"'
)


def _project(root: Path, keep_runs: int | None = None) -> None:
    steps = [
        {"name": "check 1", "type": "command", "run": CHECK_OWN_RUN},
        {
            "name": "overlap",
            "type": "command",
            "run": [PY, "-c", "import time; [print(i, flush=True) or time.sleep(0.01) for i in range(40)]"],
        },
        {"name": "check 2", "type": "command", "run": CHECK_OWN_RUN},
        {"name": "always", "type": "command", "run": CHECK_OWN_RUN, "when": {"status": "always"}},
    ]
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "w.json").write_text(json.dumps({"steps": steps}))
    if keep_runs is not None:
        (root / "orchestrate.json").write_text(json.dumps({"keep_runs": keep_runs}))


def _start_all(root: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    started = []
    for i in range(N):
        copy = root / "ci" / f"report-{i}.xml"
        process = subprocess.Popen(
            orchestrate_argv(root, "run", "w", "--quiet", "--json", "--junit-xml", str(copy)),
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append((process, copy))
    return started


def test_twenty_runs_at_once_leave_twenty_complete_records(tmp_path: Path) -> None:
    from conftest import assert_valid_junit

    root = tmp_path / "project"
    _project(root)
    results = [(p.communicate(timeout=120), p.returncode, copy) for p, copy in _start_all(root)]
    for (_out, err), code, _ in results:
        assert code == 0, err.decode()
    printed = [json.loads(out) for (out, _), _, _ in results]
    ids = {r["run_id"] for r in printed}
    assert len(ids) == N, "every run has its own id"
    records = {p.stem: json.loads(p.read_text()) for p in (root / "runs").glob("*.json")}
    assert set(records) == ids
    for run_id, record in records.items():
        assert record["status"] == "completed" and record["exit_code"] == 0
        assert [e["status"] for e in record["log"]] == ["passed"] * 4
        assert record["finished_at"] and record["current"] is None
        assert f"own run intact {run_id}" in record["log"][0]["output_tail"]
        assert_valid_junit(root / "runs" / run_id / "junit.xml")
    # no temporary file left behind; runs/.index/ and runs/.hash-key (issue 17) are kept on purpose
    assert not list((root / "runs").glob("*.journal"))
    assert [p.name for p in (root / "runs").glob(".*")] in ([], [".hash-key", ".index"], [".index", ".hash-key"])
    assert not list((root / "runs").rglob("*.tmp"))
    for _, _, copy in results:
        assert copy.exists()
    listed = subprocess.run(orchestrate_argv(root, "runs", "--json"), env=clean_env(), capture_output=True, check=True)
    assert {row["run_id"] for row in json.loads(listed.stdout)} == ids  # the default limit shows all 20


def test_pruning_during_twenty_runs_never_touches_a_running_one(tmp_path: Path) -> None:
    """keep_runs=2 makes every finishing run prune; a thread prunes to zero the whole time."""
    from conftest import assert_valid_junit

    root = tmp_path / "project"
    _project(root, keep_runs=2)
    store = orchestrate.RunStore(root / "runs")
    stop = threading.Event()
    pruned: list[str] = []
    errors: list[BaseException] = []

    def prune_forever() -> None:
        while not stop.is_set():
            try:
                pruned.extend(store.prune(0))
            except BaseException as exc:
                errors.append(exc)
                return

    pruner = threading.Thread(target=prune_forever)
    pruner.start()
    try:
        started = _start_all(root)
        cli_prunes = [
            subprocess.run(orchestrate_argv(root, "prune", "--keep", "0"), env=clean_env(), capture_output=True)
            for _ in range(3)
        ]
        results = [(p.communicate(timeout=120), p.returncode, copy) for p, copy in started]
    finally:
        stop.set()
        pruner.join()
    assert not errors, errors
    assert all(r.returncode == 0 for r in cli_prunes), [r.stderr for r in cli_prunes]
    for (out, err), code, copy in results:
        assert code == 0, err.decode()  # a step that found its run deleted would have failed it
        record = json.loads(out)
        assert record["status"] == "completed"
        assert_valid_junit(copy)  # written from the run's folder's report: never half-deleted
    assert len(set(pruned)) == len(pruned)
    assert pruned, "the pruning thread removed finished runs while others ran"
    assert len(list((root / "runs").glob("*.json"))) <= 2
    # afterwards only what keep_runs allows is left, with no stray journal or temporary file
    # (runs/.index/ and runs/.hash-key, issue 17, are not a run's and stay)
    left = sorted(p.name for p in (root / "runs").iterdir() if p.name not in (".index", ".hash-key"))
    assert all(name.split(".")[0] in {n.split(".")[0] for n in left if n.endswith(".json")} for name in left), left
