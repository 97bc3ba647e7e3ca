"""The python runner: the venv's own interpreter, venvs built from requirements, clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    venv = project.root / "app/.venv"
    # built beside and moved into place: its scripts name the final folder, and they work
    assert (venv / "bin/pip").read_text().splitlines()[0].startswith(f"#!{venv}/bin/python")
    for name in ("bin/pip", "bin/activate", "pyvenv.cfg"):
        text = (venv / name).read_text()
        assert str(venv) in text and ".orchestrate-build-" not in text, name
    assert subprocess.run([str(venv / "bin/pip"), "--version"], capture_output=True).returncode == 0
    marker = (venv / ".orchestrate-requirements.sha256").read_text()
    # a rebuild whose pip fails keeps the previous venv, whole and working
    project.write("app/requirements.txt", "not-a-real-package-xyz==1\n")
    result = project.run("run", "w", env={"PIP_NO_INDEX": "1"}, timeout=300)
    assert result.returncode == 1
    assert project.last_record()["log"][0]["message"] == (
        "pip install -r app/requirements.txt failed (exit code 1); the previous virtualenv app/.venv "
        "was kept; see the step log"
    )
    assert (venv / ".orchestrate-requirements.sha256").read_text() == marker
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", "import localpkg; print(localpkg.VALUE)"], capture_output=True, text=True
    )
    assert done.stdout == "42\n"
    assert sorted(p.name for p in (project.root / "app").iterdir()) == [".venv", "main.py", "requirements.txt"]


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
    project.workflow(
        "w",
        [
            {
                "name": "make venv",
                "type": "command",
                "run": [sys.executable, "-m", "venv", "--without-pip", "app/.venv"],
            },
            step(),
        ],
    )
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


# --- issue 11: a python step never deletes what orchestrate did not build -------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_orchestrate_did_not_build_is_never_replaced(project: Project) -> None:
    project.write("src/app.py", "print('the users code')\n")
    project.write("src/.orchestrate-requirements.sha256", "planted, but no pyvenv.cfg\n")
    project.write("main.py", SCRIPT)
    project.write("requirements.txt", "# nothing\n")
    project.workflow(
        "w", [{"name": "py", "type": "python", "script": "main.py", "venv": "src", "requirements": "requirements.txt"}]
    )
    before = _tree(project.root / "src")
    message = (
        "venv src exists but is not a virtualenv orchestrate built (no pyvenv.cfg and "
        ".orchestrate-requirements.sha256 in it), so orchestrate leaves it untouched: move it away, "
        'or point "venv" at another folder'
    )
    dry = project.cli("run", "w", "--dry-run")
    assert dry.exit_code == 0 and f"warning: {message}" in dry.stdout and "build virtualenv" not in dry.stdout
    result = project.run("run", "w")
    assert result.returncode == 1
    assert project.last_record()["log"][0]["message"] == message
    assert _tree(project.root / "src") == before
    assert sorted(p.name for p in project.root.iterdir()) == ["main.py", "requirements.txt", "runs", "src", "workflows"]


def _outside(project: Project) -> str:
    outside = project.root.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    (project.root / "link").symlink_to(outside)
    return str(outside)


@pytest.mark.parametrize(
    "venv, script, message",
    [
        (".", "main.py", "key 'venv': '.' is the project root"),
        ("./", "main.py", "key 'venv': './' is the project root"),
        ("..", "main.py", "key 'venv': '..' is a folder above the project root"),
        ("OUTSIDE", "main.py", "key 'venv': 'OUTSIDE' is outside the project root"),
        ("link/venv", "main.py", "key 'venv': 'link/venv' is outside the project root (it resolves to OUTSIDE/venv)"),
        (
            "app",
            "app/main.py",
            "key 'venv': 'app' contains the step's script app/main.py; orchestrate replaces the whole venv folder when it rebuilds it, so",
        ),
        (
            "app/deps",
            "main.py",
            "key 'venv': 'app/deps' contains the step's requirements file app/deps/requirements.txt",
        ),
    ],
)
def test_a_venv_that_would_swallow_the_project_is_a_definition_error(
    project: Project, venv: str, script: str, message: str
) -> None:
    outside = _outside(project)
    venv = venv.replace("OUTSIDE", outside)
    message = message.replace("OUTSIDE", outside)
    project.write(script, SCRIPT)
    project.write("app/deps/requirements.txt", "# nothing\n")
    project.workflow(
        "w",
        [{"name": "py", "type": "python", "script": script, "venv": venv, "requirements": "app/deps/requirements.txt"}],
    )
    before = _tree(project.root)
    example = "app/.venv" if script.startswith("app/") else ".venv"
    expected = f'orchestrate: error: workflows/w.json: steps[0] "py": {message}'
    for args in (["validate", "w"], ["run", "w", "--dry-run"], ["run", "w"]):
        result = project.run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = result.stderr.strip()
        assert line.startswith(expected), (line, expected)
        assert line.endswith(f'needs a folder of its own inside the project, e.g. "venv": "{example}"'), line
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert _tree(project.root) == before and not project.runs.exists()


def test_a_venv_without_requirements_may_live_anywhere(project: Project, tmp_path: Path) -> None:
    """orchestrate only reads a venv it does not build: a shared one outside the project is fine."""
    import venv as venv_module

    shared = tmp_path / "shared-venv"
    venv_module.create(shared, with_pip=False)
    project.write("main.py", SCRIPT)
    project.workflow("w", [{"name": "py", "type": "python", "script": "main.py", "venv": str(shared)}])
    result = project.cli("run", "w")
    assert result.exit_code == 0 and f"prefix {shared}" in result.stdout


def test_two_runs_rebuilding_one_venv_at_once_build_it_once(project: Project, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    project.write("app/main.py", "import localpkg\nprint('value', localpkg.VALUE)\n")
    project.write("app/requirements.txt", f"{wheel}\n")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    from conftest import orchestrate_bin, REPO

    env["PYTHONPATH"] = str(REPO)
    argv = [orchestrate_bin(), "--root", str(project.root), "run", "w"]
    runs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("value 42" in out for out in outputs)
    assert sum(out.count("orchestrate: building virtualenv app/.venv (missing)") for out in outputs) == 1, outputs
    assert sorted(p.name for p in (project.root / "app").iterdir()) == [".venv", "main.py", "requirements.txt"]


def test_an_abandoned_build_is_cleaned_up_and_a_broken_venv_of_ours_rebuilt(project: Project) -> None:
    project.write("app/main.py", SCRIPT)
    project.write("app/requirements.txt", "# nothing\n")
    project.workflow("w", [step(requirements="app/requirements.txt")])
    assert project.cli("run", "w").exit_code == 0
    venv = project.root / "app/.venv"
    (venv / "bin/python").unlink()  # ours, but its interpreter is gone
    project.write("app/.venv.orchestrate-build-0badf00d/pyvenv.cfg", "left by a killed run\n")
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stdout
    assert "orchestrate: building virtualenv app/.venv (broken)" in result.stdout
    assert sorted(p.name for p in (project.root / "app").iterdir()) == [".venv", "main.py", "requirements.txt"]


def test_building_the_venv_counts_against_the_steps_timeout(project: Project, tmp_path: Path) -> None:
    """The script alone (5 s) is within the 6 s timeout; with the venv build before it (a venv
    with pip, then `pip install` of a wheel: well over a second however fast the machine) it
    is not. 0.1.0 gave each of the three processes the whole timeout."""
    wheel = _wheel(tmp_path)
    project.write("app/main.py", "import time\ntime.sleep(5)\nprint('finished')\n")
    project.write("app/requirements.txt", f"{wheel}\n")
    project.workflow("w", [step(requirements="app/requirements.txt", timeout=6)])
    result = project.run("run", "w", env={"PIP_NO_INDEX": "1"}, timeout=120)
    assert result.returncode == 1, result.stdout
    entry = project.last_record()["log"][0]
    assert entry["message"] == "timed out after 6 s"
    assert "finished" not in result.stdout and entry["duration_s"] < 6 + 5
