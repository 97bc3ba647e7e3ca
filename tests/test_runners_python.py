"""The python runner: the venv's own interpreter, venvs built from requirements, clear failures."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import Project

SCRIPT = "import sys\nprint('prefix', sys.prefix)\nprint('args', sys.argv[1:])\n"


def step(**extra: object) -> dict:
    return {"name": "py", "type": "python", "script": "app/main.py", "venv": "app/.venv", **extra}


def test_builds_venv_from_requirements_and_runs_script_with_its_python(project: Project) -> None:
    project.write("app/main.py", SCRIPT)
    project.write("app/requirements.txt", "# nothing to install\n")
    project.workflow("w", [step(requirements="app/requirements.txt", args=["--x", "y"])])
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stdout
    venv = project.root / "app/.venv"
    assert (venv / "bin/python").exists()
    assert f"prefix {venv}" in result.stdout
    assert "args ['--x', 'y']" in result.stdout
    assert "building virtualenv app/.venv (missing)" in result.stdout
    marker = (venv / ".orchestrate-requirements.sha256").read_text()
    # second run: untouched
    (venv / "keep.txt").write_text("still here")
    result = project.cli("run", "w")
    assert "building virtualenv" not in result.stdout
    assert (venv / "keep.txt").exists()
    # requirements change: rebuilt
    project.write("app/requirements.txt", "# changed\n")
    result = project.cli("run", "w")
    assert "building virtualenv app/.venv (requirements changed)" in result.stdout
    assert not (venv / "keep.txt").exists()
    assert (venv / ".orchestrate-requirements.sha256").read_text() != marker


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel built by hand, so installing it needs no network or build."""
    import zipfile

    path = folder / "localpkg-1.0-py3-none-any.whl"
    files = {
        "localpkg/__init__.py": "VALUE = 42\n",
        "localpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: localpkg\nVersion: 1.0\n",
        "localpkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        record = "".join(f"{name},,\n" for name in files) + "localpkg-1.0.dist-info/RECORD,,\n"
        archive.writestr("localpkg-1.0.dist-info/RECORD", record)
    return path


def test_requirements_with_packages_install_with_pip(project: Project, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    project.write("app/main.py", "import localpkg\nprint('value', localpkg.VALUE)\n")
    project.write("app/requirements.txt", f"{wheel}\n")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    result = project.run("run", "w", env={"PIP_NO_INDEX": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "value 42" in result.stdout
    project.write("app/requirements.txt", "not-a-real-package-xyz==1\n")
    result = project.run("run", "w", env={"PIP_NO_INDEX": "1"}, timeout=300)
    assert result.returncode == 1
    assert project.last_record()["log"][0]["message"] == (
        "pip install -r app/requirements.txt failed (exit code 1); see the step log")
    assert not (project.root / "app/.venv").exists()  # a half-built venv never passes as ready


def test_foreign_venv_is_never_touched(project: Project) -> None:
    import venv as venv_module

    venv_module.create(project.root / "app/.venv", with_pip=False)
    (project.root / "app/.venv/mine.txt").write_text("user's")
    project.write("app/main.py", SCRIPT)
    project.write("app/requirements.txt", "# anything\n")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    result = project.cli("run", "w")
    assert result.exit_code == 0
    assert (project.root / "app/.venv/mine.txt").exists()
    assert "building virtualenv" not in result.stdout


def test_missing_venv_fails_the_step_with_the_fix(project: Project) -> None:
    project.write("app/main.py", SCRIPT)
    project.workflow("w", [step()])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    message = project.last_record()["log"][0]["message"]
    assert message.startswith("virtualenv app/.venv does not exist; create it with: python3 -m venv app/.venv")
    dry = project.cli("run", "w", "--dry-run")
    assert dry.exit_code == 0
    assert "warning: virtualenv app/.venv does not exist" in dry.stdout


def test_venv_created_by_an_earlier_step_is_found(project: Project) -> None:
    project.write("app/main.py", SCRIPT)
    project.workflow("w", [{"name": "make venv", "type": "command", "run": [sys.executable, "-m", "venv", "--without-pip", "app/.venv"]},
                           step()])
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stdout


def test_failing_script_reports_exit_code(project: Project) -> None:
    project.write("app/main.py", "import sys\nprint('oops', file=sys.stderr)\nsys.exit(7)\n")
    project.write("app/requirements.txt", "")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    entry = project.last_record()["log"][0]
    assert entry["exit_code"] == 7 and entry["message"] == "script exited with code 7"
    assert "oops" in entry["output_tail"]


def test_missing_script(project: Project) -> None:
    project.write("app/requirements.txt", "")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    assert project.last_record()["log"][0]["message"] == "script app/main.py does not exist"
