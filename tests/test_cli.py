"""The command line: README's commands exist and its examples run; exit codes; the installed command."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

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
        result = project.run(*command[1:]) if False else subprocess.run(
            [orchestrate_bin(), *command[1:]], cwd=project.root, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL, env=_clean_env())
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
    result = subprocess.run([orchestrate_bin(), "run", "demo"], cwd=copy, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL, env=_clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    records = sorted((copy / "runs").glob("*.json"))
    record = json.loads(records[-1].read_text())
    assert record["status"] == "completed"
    assert [e["status"] for e in record["log"]] == ["passed", "passed", "passed"]
    assert_valid_junit(copy / "runs" / record["run_id"] / "junit.xml")
    assert result.stdout.rstrip().splitlines()[-1].startswith("demo: 3 passed, 0 failed, 0 skipped in ")


def test_shipped_workflows_validate(tmp_path: Path) -> None:
    result = subprocess.run([orchestrate_bin(), "--root", str(REPO), "validate"], capture_output=True,
                            text=True, timeout=60, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert "workflows/demo.json: ok (3 steps" in result.stdout


def test_version_and_help_document_exit_codes(project: Project) -> None:
    result = project.run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"orchestrate {orchestrate.__version__}"
    help_text = project.cli("--help").stdout
    assert "Exit codes: 0" in help_text and "130/143" in help_text


@pytest.mark.parametrize("args", [["nosuchcommand"], ["run"], ["runs", "--limit", "0"], ["prune"], ["run", "x", "--shard", "4/3"]])
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
    result = subprocess.run([orchestrate_bin(), "--runs-dir", str(elsewhere), "run", "w"], capture_output=True,
                            text=True, cwd=tmp_path, env={**_clean_env(), "ORCHESTRATE_ROOT": str(project.root)})
    assert result.returncode == 0, result.stderr
    assert str(project.root) in result.stdout
    assert list(elsewhere.glob("*.json"))


def test_init_never_overwrites(project: Project) -> None:
    assert project.cli("init").exit_code == 0
    (project.workflows / "pre-push.json").write_text('{"steps": [{"name": "mine", "type": "command", "run": "true"}]}')
    result = project.cli("init")
    assert "nothing to do" in result.stdout
    assert "mine" in (project.workflows / "pre-push.json").read_text()


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
    ["run", "w", "--html-report", "out/report.html"],
    ["run", "w", "--html-report=r.html", "-q"],
]


@pytest.mark.parametrize("args", PARITY_CASES, ids=lambda a: " ".join(a))
def test_fast_run_parsing_matches_typer(project: Project, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    captured: list[tuple] = []
    monkeypatch.setattr(orchestrate, "run_workflow_command",
                        lambda paths, name, options: captured.append((paths, name, options)) or 0)
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("ORCHESTRATE_SHARD", "1/2")
    typer_result = CliRunnerNoRoot().invoke(orchestrate.app, args, catch_exceptions=False)
    assert typer_result.exit_code == 0, typer_result.output
    parsed = orchestrate.parse_fast_run(args, {"ORCHESTRATE_SHARD": "1/2"})
    assert parsed is not None
    assert orchestrate.guarded(orchestrate._run_fast, parsed) == 0
    assert captured[0] == captured[1]


@pytest.mark.parametrize("args", [["run"], ["--help"], ["run", "w", "--help"], ["run", "w", "--bogus"],
                                  ["run", "a", "b"], ["run", "w", "--only"], ["run", "w", "--var", "-x"],
                                  ["status", "x"], ["run", "w", "-qd"], ["--version"], ["run", "--", "w"]])
def test_everything_else_goes_to_typer(args: list[str]) -> None:
    assert orchestrate.parse_fast_run(args, {}) is None


def test_run_does_not_import_typer(project: Project) -> None:
    project.workflow("w", [{"name": "a", "type": "command", "run": "true"}])
    code = ("import sys, orchestrate; rc = orchestrate.main(['--root', sys.argv[1], 'run', 'w', '-q']); "
            "print(rc, 'typer' in sys.modules, 'requests' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(project.root)], capture_output=True, text=True,
                          env=_clean_env(), timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "0 False False", done.stdout + done.stderr


class CliRunnerNoRoot:
    """Typer's CliRunner without the --root that Project.cli adds."""

    def invoke(self, app, args, **kwargs):  # type: ignore[no-untyped-def]
        from typer.testing import CliRunner

        return CliRunner().invoke(app, args, **kwargs)
