"""The command line: README's commands exist and its examples run; exit codes; the installed command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import sys

import pytest

import orchestrate
from conftest import REPO, Project, assert_valid_junit, orchestrate_bin

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^##+ {re.escape(title)}\n(.*?)(?=^## )", README + "\n## end", re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _reference_commands() -> list[list[str]]:
    rows = re.findall(r"^\| `orchestrate ([^`]+)`", _section("Command reference"), re.M)
    return [[word for word in row.split() if re.fullmatch(r"[a-z][a-z-]*", word)][:2] for row in rows]


def _registered_commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(orchestrate.app)
    names = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if getattr(command, "hidden", False):
            continue
        names.add(name)
        for sub in getattr(command, "commands", {}):
            names.add(f"{name} {sub}")
    return names


@pytest.mark.parametrize("words", _reference_commands(), ids=lambda w: " ".join(w))
def test_every_command_in_readme_reference_exists(project: Project, words: list[str]) -> None:
    words = [w for w in words if not w.startswith("-")]
    result = project.cli(*words, "--help") if words else project.cli("--help")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_readme_reference_lists_every_command() -> None:
    documented = {" ".join(w) for w in _reference_commands()} | {w[0] for w in _reference_commands() if w}
    missing = {name for name in _registered_commands() if name not in documented}
    assert not missing, f"commands missing from README's command reference: {sorted(missing)}"


def test_readme_quick_start_runs(tmp_path: Path) -> None:
    block = re.search(r"```sh\n(.*?)```", _section("Quick start"), re.S)
    assert block
    project = Project(tmp_path / "mine")
    for line in block.group(1).splitlines():
        command = line.split("#")[0].split()
        assert command[0] == "orchestrate"
        result = (
            project.run(*command[1:])
            if False
            else subprocess.run(
                [orchestrate_bin(), *command[1:]],
                cwd=project.root,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                env=_clean_env(),
            )
        )
        assert result.returncode == 0, f"{line}: {result.stdout}{result.stderr}"
    assert (project.root / "runs/.gitignore").exists()
    assert project.last_record()["status"] == "completed"


def _clean_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "ORCHESTRATE_ROOT")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_readme_error_example_is_the_real_message(project: Project) -> None:
    example = re.search(r"^orchestrate: error: workflows/deploy.json: .*$", README, re.M)
    assert example
    project.workflow("deploy", [{"name": "unit tests", "type": "python", "scirpt": "x", "venv": "v"}])
    result = project.cli("validate", "deploy")
    assert result.stderr.strip() == example.group(0)


def test_shipped_demo_runs_offline_and_reports(tmp_path: Path) -> None:
    """README's first command: the sample workflow demo passes on a fresh copy."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "__pycache__"))
    result = subprocess.run(
        [orchestrate_bin(), "run", "demo"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=_clean_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = sorted((copy / "runs").glob("*.json"))
    record = json.loads(records[-1].read_text())
    assert record["status"] == "completed"
    assert [e["status"] for e in record["log"]] == ["passed", "passed", "passed"]
    assert_valid_junit(copy / "runs" / record["run_id"] / "junit.xml")
    assert result.stdout.rstrip().splitlines()[-1].startswith("demo: 3 passed, 0 failed, 0 skipped in ")


def test_shipped_workflows_validate(tmp_path: Path) -> None:
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(REPO), "validate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "workflows/demo.json: ok (3 steps" in result.stdout


def test_version_and_help_document_exit_codes(project: Project) -> None:
    result = project.run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"orchestrate {orchestrate.__version__}"
    help_text = project.cli("--help").stdout
    assert "Exit codes: 0" in help_text and "130/143" in help_text


@pytest.mark.parametrize(
    "args", [["nosuchcommand"], ["run"], ["runs", "--limit", "0"], ["prune"], ["run", "x", "--shard", "4/3"]]
)
def test_usage_errors_exit_2(project: Project, args: list[str]) -> None:
    project.workflow("x", [{"name": "a", "type": "command", "run": "true"}])
    result = project.run(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0", "-1/2", ""])
def test_bad_shard_values(project: Project, value: str) -> None:
    project.workflow("x", [{"name": "a", "type": "command", "run": "true"}])
    result = project.cli("run", "x", "--shard", value)
    assert result.exit_code == 2
    assert "--shard" in result.stderr and "expected I/N" in result.stderr


def test_root_from_environment_and_runs_dir_override(project: Project, tmp_path: Path) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "pwd"}])
    elsewhere = tmp_path / "records"
    result = subprocess.run(
        [orchestrate_bin(), "--runs-dir", str(elsewhere), "run", "w"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_clean_env(), "ORCHESTRATE_ROOT": str(project.root)},
    )
    assert result.returncode == 0, result.stderr
    assert str(project.root) in result.stdout
    assert list(elsewhere.glob("*.json"))


def test_init_never_overwrites(project: Project) -> None:
    assert project.cli("init").exit_code == 0
    (project.workflows / "pre-push.json").write_text('{"steps": [{"name": "mine", "type": "command", "run": "true"}]}')
    result = project.cli("init")
    assert "nothing to do" in result.stdout
    assert "mine" in (project.workflows / "pre-push.json").read_text()


def test_init_ci_scaffolds_the_workflow_the_ci_templates_run(project: Project) -> None:
    result = project.cli("init", "--ci")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "created workflows/pre-push.json",
        "created workflows/ci.json",
        "created runs/.gitignore",
        "next: orchestrate run pre-push   then: orchestrate hook install   in CI: orchestrate run ci",
    ]
    run = project.run("run", "ci", "--junit-xml", "reports/junit.xml", cwd=project.root)
    assert run.returncode == 0, run.stderr
    assert (project.root / "reports" / "junit.xml").exists()
    (project.workflows / "ci.json").write_text('{"steps": [{"name": "mine", "type": "command", "run": "true"}]}')
    again = project.cli("init", "--ci")
    assert again.stdout.splitlines()[0] == (
        "nothing to do: workflows/pre-push.json, workflows/ci.json and runs/.gitignore exist"
    )
    assert "mine" in (project.workflows / "ci.json").read_text()


def test_internal_error_is_exit_3_with_traceback_and_hint(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(orchestrate, "load_settings", broken)
    result = project.cli("run", "w")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
    assert "internal error (a bug, not a step failure)" in result.stderr


# main() reads the everyday `run` command line itself, without importing Typer (start-up time
# matters in a git hook). These cases hold its reading to Typer's, option for option.
PARITY_CASES = [
    ["run", "w"],
    ["run", "w", "--quiet"],
    ["run", "-q", "w", "--json", "--debug", "--dry-run", "--keep-going"],
    ["run", "w", "--only", "a", "--only=b", "--skip", "c"],
    ["run", "w", "--var", "A=1", "--var=B=two=2", "--junit-xml", "out/j.xml"],
    ["run", "w", "--shard", "2/3", "--from-ref", "main", "--to-ref=HEAD"],
    ["run", "w", "--git-hook", "pre-push", "--push-remote", "origin", "--push-url", "git@x:y.git"],
    ["--workflows-dir", "wf", "--runs-dir=rr", "run", "w", "--run-id", "20261127T154000123Z-abcdef"],
    ["run", "w", "--isolated", "--git-hook", "pre-push"],
    # global options after the command (hoist_global_options; the last one given wins)
    ["run", "w", "--root", "sub", "-q"],
    ["--root", "a", "run", "w", "--root=b", "--runs-dir", "rr", "--workflows-dir=wf"],
    ["run", "w", "--html-report", "out/report.html"],
    ["run", "w", "--html-report=r.html", "-q"],
]


@pytest.mark.parametrize("args", PARITY_CASES, ids=lambda a: " ".join(a))
def test_fast_run_parsing_matches_typer(project: Project, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    captured: list[tuple] = []

    def capture(paths: Any, name: str, options: Any) -> int:
        captured.append((paths, name, options))
        return 0

    monkeypatch.setattr(orchestrate, "run_workflow_command", capture)
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("ORCHESTRATE_SHARD", "1/2")
    typer_result = CliRunnerNoRoot().invoke(orchestrate.app, args, catch_exceptions=False)
    assert typer_result.exit_code == 0, typer_result.output
    parsed = orchestrate.parse_fast_run(args, {"ORCHESTRATE_SHARD": "1/2"})
    assert parsed is not None
    assert orchestrate.guarded(orchestrate._run_fast, parsed) == 0
    assert captured[0] == captured[1]


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["--help"],
        ["run", "w", "--help"],
        ["run", "w", "--bogus"],
        ["run", "a", "b"],
        ["run", "w", "--only"],
        ["run", "w", "--var", "-x"],
        ["status", "x"],
        ["run", "w", "-qd"],
        ["--version"],
        ["run", "--", "w"],
    ],
)
def test_everything_else_goes_to_typer(args: list[str]) -> None:
    assert orchestrate.parse_fast_run(args, {}) is None


def test_run_does_not_import_typer_requests_or_openssl(project: Project) -> None:
    """A run in a git repository (its steps' values and working tree are hashed) imports
    neither Typer nor requests, nor hashlib or hmac (OpenSSL: 3 ms of every push)."""
    project.workflow("w", [{"name": "a", "type": "command", "run": "true", "env": {"X": "${HOME}"}}])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=project.root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project.root, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=project.root, check=True)
    (project.root / "changed.txt").write_text("not committed\n")
    heavy = ("typer", "requests", "hashlib", "hmac", "_hashlib")
    code = (
        "import sys, orchestrate; rc = orchestrate.main(['--root', sys.argv[1], 'run', 'w', '-q']); "
        f"print(rc, [m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(project.root)], capture_output=True, text=True, env=_clean_env(), timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr
    entry = project.last_record()["log"][0]
    assert entry["status"] == "passed" and len(entry["values_sha256"]) == 64 and len(entry["tree_sha256"]) == 64


class CliRunnerNoRoot:
    """Typer's CliRunner without the --root that Project.cli adds."""

    def invoke(self, app, args, **kwargs):  # type: ignore[no-untyped-def]
        from typer.testing import CliRunner

        return CliRunner().invoke(app, args, **kwargs)


def test_init_never_writes_through_a_link_leading_outside_the_root(project: Project, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project.workflows.rmdir()
    project.workflows.symlink_to(outside)
    result = project.cli("init")
    assert result.exit_code == 2
    assert result.stderr == (
        f"orchestrate: error: workflows leads outside the project root (to {outside}); "
        f"orchestrate init does not create files through it: remove the link, or pass "
        f"--workflows-dir {outside}\n"
    )
    assert list(outside.iterdir()) == [] and not project.runs.exists()
    # a link planted at the file's own name, dangling into the outside
    project.workflows.unlink()
    project.workflows.mkdir()
    project.runs.mkdir()
    (project.runs / ".gitignore").symlink_to(outside / "gitignore")
    result = project.cli("init")
    assert result.exit_code == 2
    assert result.stderr == (
        f"orchestrate: error: runs/.gitignore is a symbolic link to {outside / 'gitignore'}, "
        f"outside the project root; orchestrate init does not write through it: remove the link\n"
    )
    assert list(outside.iterdir()) == [] and not (project.workflows / "pre-push.json").exists()
    # an explicit folder outside the root is the user's choice; a link inside the root is fine
    (project.runs / ".gitignore").unlink()
    (project.root / "mine.json").write_text("{}")
    (project.workflows / "pre-push.json").symlink_to(project.root / "mine.json")
    result = project.cli("--runs-dir", str(outside / "runs"), "init")
    assert result.exit_code == 0, result.stderr
    assert (outside / "runs" / ".gitignore").is_file() and (project.root / "mine.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (
            b"not json",
            "orchestrate: error: --vars-stdin: stdin is not valid JSON; it takes what orchestrate serve passes",
        ),
        (b'{"A B": "x"}', "orchestrate: error: --vars-stdin: stdin is not an object of variable names to strings"),
        (b'{"GREETING": 1}', "orchestrate: error: --vars-stdin: stdin is not an object of variable names to strings"),
        (
            b'{"OTHER": "x"}',
            "orchestrate: error: vars key 'OTHER': workflow w does not use ${OTHER}; accepted: GREETING",
        ),
    ],
)
def test_vars_stdin_takes_only_the_workflows_names(project: Project, stdin: bytes, message: str) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "echo ${GREETING:-none} $GREETING"}])
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--vars-stdin"],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=_clean_env(),
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith(message)
    assert not project.runs.exists()


def test_vars_stdin_fills_names_but_not_the_environment(project: Project) -> None:
    project.workflow(
        "w", [{"name": "a", "type": "command", "run": "echo ${GREETING:-none} env=${GREETING_ENV:-unset}$GREETING"}]
    )
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(project.root), "run", "w", "--vars-stdin"],
        input=b'{"GREETING": "hi"}',
        capture_output=True,
        timeout=60,
        env=_clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "hi env=unset\n" in result.stdout.decode()  # $GREETING: not in the step's environment
    cli = project.cli("run", "w", "--var", "GREETING=hey")
    assert "hey env=unsethey" in cli.stdout  # --var keeps its meaning: the environment too
    both = project.cli("run", "w", "--var", "GREETING=x", "--vars-stdin")
    assert both.exit_code == 2 and "--vars-stdin reads the variables from stdin" in both.stderr


# --- where people trip ---------------------------------------------------------------------


def _git_init(path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(path)], check=True, capture_output=True, timeout=60)


def _in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a folder, without --root."""
    return subprocess.run(
        [orchestrate_bin(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=_clean_env(),
    )


def test_run_and_runs_from_a_subfolder_find_the_project_root(project: Project) -> None:
    _git_init(project.root)
    project.workflow("w", [{"name": "where", "type": "command", "run": "pwd"}])
    deep = project.root / "src" / "pkg"
    deep.mkdir(parents=True)
    result = _in(deep, "run", "w")
    assert result.returncode == 0, result.stderr
    assert f"{project.root}\n" in result.stdout  # steps run at the root, as from the root
    assert len(project.records()) == 1  # the record is in the root's runs/, not src/pkg/runs/
    listed = _in(deep, "runs")
    assert listed.returncode == 0 and " w  (cli)" in listed.stdout
    assert not (deep / "runs").exists()


def test_the_root_search_stops_at_the_repository_top(tmp_path: Path) -> None:
    outer = Project(tmp_path / "outer")  # has workflows/, but is above the repository
    outer.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    repo = outer.root / "repo"
    (repo / "src").mkdir(parents=True)
    _git_init(repo)
    result = _in(repo / "src", "run", "w")
    assert result.returncode == 2
    assert result.stderr.startswith("orchestrate: error: no workflow 'w': ")
    assert not (outer.root / "runs").exists()


def test_orchestrate_json_marks_the_root_and_outside_git_the_current_folder_is(tmp_path: Path) -> None:
    repo = tmp_path / "mono"
    (repo / "apps" / "shop" / "src").mkdir(parents=True)
    _git_init(repo)
    (repo / "apps" / "shop" / "orchestrate.json").write_text("{}")
    assert orchestrate.find_project_root(repo / "apps" / "shop" / "src") == repo / "apps" / "shop"
    plain = tmp_path / "plain" / "sub"
    plain.mkdir(parents=True)
    (tmp_path / "plain" / "workflows").mkdir()
    assert orchestrate.find_project_root(plain) == plain  # no repository: no search upwards


def _three_runs(project: Project) -> list[str]:
    project.workflow(
        "w",
        [
            {"name": "a", "type": "command", "run": "echo from a"},
            {"name": "b", "type": "command", "run": "echo from b"},
        ],
    )
    for _ in range(3):
        assert project.run("run", "w", "-q").returncode == 0
    return [r["run_id"] for r in project.records()]


def test_status_and_logs_take_latest_and_unique_prefixes(project: Project) -> None:
    ids = _three_runs(project)
    latest = ids[-1]
    plain = project.run("status")
    assert plain.returncode == 0 and plain.stdout.startswith(f"run {latest}: w — completed")
    assert project.run("status", "latest").stdout == plain.stdout
    assert project.run("status", latest[-6:]).stdout.startswith(f"run {latest}: ")  # the random tail
    assert json.loads(project.run("status", ids[0], "--json").stdout)["run_id"] == ids[0]
    logs = project.run("logs", "latest", "2")
    assert logs.returncode == 0 and logs.stdout == "from b\n"
    assert project.run("logs", latest[-6:], "b").stdout == "from b\n"


def test_ambiguous_and_unknown_run_prefixes(project: Project) -> None:
    ids = _three_runs(project)
    common = os.path.commonprefix(ids)  # noqa: RUF071 -- run ids are strings, not paths
    ambiguous = project.run("status", common)
    assert ambiguous.returncode == 2
    assert ambiguous.stderr == (
        f"orchestrate: error: run {common!r} is ambiguous: 3 runs match "
        f"({ids[2]}, {ids[1]}, {ids[0]}); give more of the id\n"
    )
    unknown = project.run("logs", "19990101")
    assert unknown.returncode == 2
    assert unknown.stderr == (
        f"orchestrate: error: no run id in {project.runs} starts with '19990101' (see: orchestrate runs)\n"
    )
    assert "is not a run id" in project.run("status", "../etc").stderr


def test_status_without_runs(project: Project) -> None:
    result = project.run("status")
    assert result.returncode == 2
    assert result.stderr == f"orchestrate: error: no runs yet in {project.runs} (start one: orchestrate run NAME)\n"


def test_runs_status_passed_means_completed(project: Project) -> None:
    _three_runs(project)
    passed = project.run("runs", "--status", "passed")
    assert passed.returncode == 0 and len(passed.stdout.splitlines()) == 3
    assert passed.stdout == project.run("runs", "--status", "completed").stdout
    bad = project.run("runs", "--status", "pased")
    assert bad.returncode == 2
    assert bad.stderr == ("orchestrate: error: --status 'pased': expected one of pending, running, failed, completed\n")


def test_only_and_skip_take_step_numbers_and_suggest_names(project: Project) -> None:
    project.workflow("w", [{"name": n, "type": "command", "run": f"echo {n}"} for n in ("lint", "unit", "e2e")])
    only = project.run("run", "w", "--only", "2")
    assert only.returncode == 0
    assert [e["status"] for e in project.last_record()["log"]] == ["skipped", "passed", "skipped"]
    skip = project.run("run", "w", "--skip", "1", "--skip", "e2e")
    assert [e["status"] for e in project.last_record()["log"]] == ["skipped", "passed", "skipped"]
    assert skip.returncode == 0
    for flag, value, hint in (("--only", "unti", " (did you mean 'unit'?)"), ("--skip", "4", "")):
        bad = project.run("run", "w", flag, value)
        assert bad.returncode == 2
        assert bad.stderr == (
            f"orchestrate: error: {flag} {value!r}: no such step in w{hint}; steps: lint, "
            "unit, e2e (or their numbers, 1-3)\n"
        )


def test_orchestrate_skip_takes_step_numbers(project: Project) -> None:
    project.workflow("w", [{"name": n, "type": "command", "run": f"echo {n}"} for n in ("lint", "unit", "e2e")])
    result = project.run("run", "w", env={"ORCHESTRATE_SKIP": "2,e2e,lintt"})
    assert result.returncode == 0
    assert [e["status"] for e in project.last_record()["log"]] == ["passed", "skipped", "skipped"]
    assert (
        "orchestrate: warning: ORCHESTRATE_SKIP: no step 'lintt' in this workflow (did you mean 'lint'?)"
        in result.stderr
    )


def test_one_step_reads_one_step(project: Project) -> None:
    project.workflow("w", [{"name": "only", "type": "command", "run": "true"}])
    assert project.run("run", "w").stdout.startswith("orchestrate: w (1 step, run ")
    assert project.run("run", "w", "--dry-run").stdout.startswith("w (workflows/w.json): 1 step — dry run")
    assert project.run("validate", "w").stdout == "workflows/w.json: ok (1 step)\n"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "w", "--root", "{root}"],
        ["run", "--root={root}", "w", "-q"],
        ["status", "--root", "{root}"],
        ["runs", "--root", "{root}", "--limit", "1"],
        ["validate", "w", "--root", "{root}"],
    ],
)
def test_global_options_after_the_command(project: Project, tmp_path: Path, args: list[str]) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    assert project.run("run", "w").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _in(elsewhere, *[a.replace("{root}", str(project.root)) for a in args])
    assert result.returncode == 0, result.stderr
    assert not (elsewhere / "runs").exists()


def test_hoist_global_options() -> None:
    hoist = orchestrate.hoist_global_options
    assert hoist(["run", "w", "--root", "..", "-q"]) == ["--root", "..", "run", "w", "-q"]
    assert hoist(["--runs-dir", "r", "hook", "status", "--root=x"]) == ["--runs-dir", "r", "--root=x", "hook", "status"]
    assert hoist(["run", "w", "--", "--root", "x"]) == ["run", "w", "--", "--root", "x"]
    assert hoist(["run", "w", "--root"]) == ["run", "w", "--root"]  # no value: Typer reports it
    assert hoist(["--root", "run", "run", "w"]) == ["--root", "run", "run", "w"]


def test_a_long_value_in_a_message_keeps_its_end(project: Project) -> None:
    value = "20261127T154000123Z-" + "x" * 80 + "/tail-that-differs"
    result = project.run("status", value)
    assert result.returncode == 2
    shown = orchestrate.shorten_middle(value)
    assert result.stderr.startswith(f"orchestrate: error: {shown!r} is not a run id")
    assert shown.endswith("x/tail-that-differs") and len(shown) == 60 and "…" in shown
    assert orchestrate.shorten_middle("short") == "short"


def test_shell_completion_installs_and_completes(tmp_path: Path, project: Project) -> None:
    project.workflow("deploy", [{"name": "a", "type": "command", "run": "true"}])
    project.workflow("demo", [{"name": "a", "type": "command", "run": "true"}])
    env = {**_clean_env(), "HOME": str(tmp_path / "home"), "SHELL": "/bin/bash"}
    (tmp_path / "home").mkdir()
    shown = subprocess.run(
        [orchestrate_bin(), "--show-completion", "bash"], capture_output=True, text=True, env=env, timeout=60
    )
    assert shown.returncode == 0 and "_ORCHESTRATE_COMPLETE=complete_bash" in shown.stdout
    installed = subprocess.run(
        [orchestrate_bin(), "--install-completion", "bash"], capture_output=True, text=True, env=env, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    assert "orchestrate" in (tmp_path / "home" / ".bashrc").read_text()
    words = subprocess.run(
        [orchestrate_bin()],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "_ORCHESTRATE_COMPLETE": "complete_bash", "COMP_WORDS": "orchestrate run de", "COMP_CWORD": "2"},
    )
    assert words.stdout.split() == ["demo", "deploy"]


def test_readme_lists_exactly_the_git_variables_steps_see() -> None:
    text = " ".join(_section("Use it from git and CI").split())
    sentence = re.search(
        r"steps see only those that configure transport or identity, when they are set: "
        r"(.*?)\. Every other",
        text,
    )
    assert sentence, "README no longer says which GIT_* variables steps see"
    named = set(re.findall(r"`(GIT_[A-Z_]+?)(?:_<n>)?`", sentence.group(1)))
    assert named == (orchestrate._GIT_ENV_KEEP - {"GIT_TERMINAL_PROMPT"}) | {
        p.rstrip("_") for p in orchestrate._GIT_ENV_KEEP_PREFIXES
    }
    assert "`GIT_TERMINAL_PROMPT=0`" in text


def test_a_step_named_like_a_number_is_that_step_in_logs_and_the_api(project: Project) -> None:
    """One lookup for `logs RUN STEP` and GET /runs/{id}/logs/{step}: a name wins over a number."""
    import orchestrate

    project.workflow(
        "w",
        [
            {"name": "first", "type": "command", "run": "echo from-first"},
            {"name": "1", "type": "command", "run": "echo from-the-step-named-1"},
        ],
    )
    assert project.cli("run", "w").exit_code == 0
    shown = project.cli("logs", "latest", "1")
    assert shown.exit_code == 0 and shown.stdout == "from-the-step-named-1\n"
    assert project.cli("logs", "latest", "2").stdout == "from-the-step-named-1\n"  # its number too
    record = project.last_record()
    assert (orchestrate.step_entry(record, "1") or {}).get("step") == "1"
    assert (orchestrate.step_entry(record, "first") or {}).get("step") == "first"
    assert orchestrate.step_entry(record, "3") is None


def test_commands_are_functions_that_return_data(project: Project) -> None:
    """What --json prints and what a person reads come from one result, rendered in one place."""
    import orchestrate

    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}], description="about w")
    paths = orchestrate.make_paths(project.root, None, None)
    listed = orchestrate.cmd_list(paths)
    assert listed.data == [{"name": "w", "valid": True, "steps": 1, "description": "about w"}]
    assert listed.out == [(1, "w     1 step  about w")]
    assert project.cli("run", "w").exit_code == 0
    status = orchestrate.cmd_status(paths, "latest")
    assert status.data["workflow"] == "w" and status.data["status"] == "completed"
    as_json = project.cli("status", "--json")
    assert json.loads(as_json.stdout) == status.data
    runs = orchestrate.cmd_runs(paths, status="passed")
    assert [r["run_id"] for r in runs.data] == [status.data["run_id"]]
    with pytest.raises(orchestrate.UsageError, match="--status 'done': expected one of"):
        orchestrate.cmd_runs(paths, status="done")


def _with_reader_gone(project: Project, *args: str) -> tuple[int, bytes]:
    """The command with stdout on a real pipe whose reader closes before anything is read, as
    `orchestrate ... | true` (or `| head` once it has its lines): exit status and stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader leaves: every write of the command meets EPIPE
    err = process.stderr.read()
    return process.wait(timeout=120), err


def test_a_reader_that_leaves_ends_any_command_quietly_with_141(project: Project) -> None:
    """Issue 15: `orchestrate runs | head` printed a BrokenPipeError traceback. Every command
    ends quietly with 141 (128 + SIGPIPE), as `yes | head` does; a run keeps its own status."""
    project.workflow("ok", [{"name": "loud", "type": "command", "run": "yes 0123456789 | head -c 300000"}])
    project.workflow("bad", [{"name": "no", "type": "command", "run": "false"}])
    assert project.cli("run", "ok", "--quiet").exit_code == 0
    run_id = project.last_record()["run_id"]
    for args in (
        ["runs"],
        ["runs", "--json"],
        ["logs", run_id, "loud"],
        ["status", run_id],
        ["list"],
        ["validate"],
        ["--help"],
        ["--version"],
        ["run", "ok", "--dry-run"],
        ["runs", "--bogus"],
    ):
        code, err = _with_reader_gone(project, *args)
        expected = 2 if args == ["runs", "--bogus"] else 141  # a usage error says so on stderr first
        assert (code, err if expected == 141 else b"") == (expected, b""), (args, err.decode())
    assert _with_reader_gone(project, "run", "ok") == (0, b"")
    code, err = _with_reader_gone(project, "run", "bad")
    assert code == 1 and b"Traceback" not in err and b"BrokenPipe" not in err
    assert [r["status"] for r in project.records()][-2:] == ["completed", "failed"]


CONSOLE_MAIN_PROBE = """
import atexit, os, sys, threading, time
import orchestrate

def fake_main():
    atexit.register(lambda: print("atexit handler ran", flush=False))
    sys.stdout.write("x" * 300000 + "\\n")  # more than a pipe holds: still buffered at the end
    if sys.argv[1] == "thread":
        def late():
            time.sleep(0.3)
            open(sys.argv[2], "w").write("the thread finished")
        threading.Thread(target=late).start()
    return 7

class TornDown:
    def __del__(self):
        os.write(2, b"interpreter teardown")

kept = TornDown()  # freed only by the interpreter's teardown, which os._exit skips
orchestrate.main = fake_main
orchestrate.console_main()
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_console_main_flushes_runs_atexit_and_waits_for_a_foreign_thread(tmp_path: Path, mode: str) -> None:
    """Issue 15: the console script ends with os._exit (the interpreter's teardown cost 5 ms a
    run): buffered output and atexit handlers still come out, the exit code is main()'s, and
    a non-daemon thread someone else started gets the ordinary exit that waits for it."""
    marker = tmp_path / "thread-done"
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_MAIN_PROBE, mode, str(marker)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout == "x" * 300000 + "\natexit handler ran\n"
    assert done.stderr == ("" if mode == "plain" else "interpreter teardown")
    assert marker.exists() == (mode == "thread")
    if mode == "thread":
        assert marker.read_text() == "the thread finished"


def test_the_console_script_keeps_a_failed_runs_output_and_exit_code(project: Project) -> None:
    project.workflow(
        "w",
        [
            {"name": "loud", "type": "command", "run": "yes 0123456789 | head -c 200000; exit 4"},
            {"name": "after", "type": "command", "run": "echo never"},
        ],
    )
    done = project.run("run", "w")
    assert done.returncode == 1, done.stderr
    assert done.stdout.count("0123456789") >= 200000 // 11 - 1
    assert done.stdout.rstrip().endswith(f"(run {project.last_record()['run_id']})")
    assert (project.root / "runs" / project.last_record()["run_id"] / "01-loud.log").stat().st_size == 200000


@pytest.mark.parametrize("closed", [">&-", "2>&-", "<&-", ">&- 2>&- <&-"])
def test_a_closed_standard_descriptor_is_dev_null(project: Project, closed: str) -> None:
    """`orchestrate run w >&-` was an internal error (Python leaves sys.stdout None), and a file
    orchestrate opened would have taken descriptor 1. As git does, a closed stdin, stdout or
    stderr is /dev/null: the run is recorded whole and exits with its own status."""
    project.workflow("ok", [{"name": "a", "type": "command", "run": "echo from a"}])
    project.workflow("bad", [{"name": "b", "type": "command", "run": "echo from b; exit 5"}])
    for workflow, code, printed in (("ok", 0, "from a\n"), ("bad", 1, "from b\n")):
        script = f'exec "$0" --root "$1" run {workflow} {closed}'
        done = subprocess.run(
            ["sh", "-c", script, orchestrate_bin(), str(project.root)],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=60,
        )
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
        record = project.last_record()
        assert record["workflow"] == workflow and record["status"] == ("completed" if code == 0 else "failed")
        log = project.root / "runs" / record["run_id"] / record["log"][0]["log_file"].rsplit("/", 1)[-1]
        assert log.read_text() == printed
    listed = subprocess.run(
        ["sh", "-c", f'exec "$0" --root "$1" runs {closed}', orchestrate_bin(), str(project.root)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
