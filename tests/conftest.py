"""Shared fixtures: a temporary project root and helpers to drive the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from typer.testing import CliRunner

import orchestrate

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "tests" / "schemas"
CI_VARIABLES = (
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "JENKINS_URL",
    "JENKINS_HOME",
    "BUILD_URL",
    "GITHUB_STEP_SUMMARY",
    "ORCHESTRATE_SKIP",
    "ORCHESTRATE_SHARD",
    "ORCHESTRATE_ROOT",
    "NO_COLOR",
)


def beside_repository(repo: Path = REPO) -> Path | None:
    """The folder around a checkout, which tests must never open a file in (a clone alone
    must pass: the schemas once came from ../shared/). None where that folder also holds the
    temporary folder, the interpreter or the home folder (outside the checkout itself: a venv
    inside the clone, as README's commands make, is fine), or is the filesystem root."""
    import tempfile

    parent = repo.parent  # names the folder beside the checkout; reads nothing there
    shared_with = [Path(tempfile.gettempdir()), Path(sys.prefix), Path(sys.base_prefix), Path.home()]
    for place in (p.resolve() for p in shared_with):
        if place.is_relative_to(parent) and not place.is_relative_to(repo):
            return None
    if parent == Path(parent.anchor):
        return None
    return parent


def reads_beside_guard(repo: Path, parent: Path) -> Callable[[str, tuple[Any, ...]], None]:
    """An audit hook: opening a file in `parent` but outside `repo` raises, naming the path."""
    inside, beside = str(repo) + os.sep, str(parent) + os.sep

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(beside) and not path.startswith(inside) and path != str(repo):
            raise PermissionError(
                f"a test opened {path}, outside the repository {repo}: copy what it "
                "needs into the repository (tests/schemas/ for schemas)"
            )

    return hook


def _guard_reads_beside_the_repository() -> None:
    """Opening a file next to the checkout (../shared/...) fails the test that does it, with
    the path. Processes the tests start are checked by test_packaging's scan."""
    parent = beside_repository()
    if parent is not None:
        sys.addaudithook(reads_beside_guard(REPO, parent))


_guard_reads_beside_the_repository()


@pytest.fixture(autouse=True)
def _no_ci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI runs the suite with CI=true: tests that want a CI set it themselves."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Project:
    """A temporary project root with workflows/ and runs/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workflows = root / "workflows"
        self.runs = root / "runs"
        self.workflows.mkdir(parents=True)

    def workflow(self, name: str, steps: list[dict[str, Any]] | None = None, **extra: Any) -> Path:
        path = self.workflows / f"{name}.json"
        path.write_text(json.dumps({"steps": steps or [], **extra}, indent=1))
        return path

    def write(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def cli(self, *args: str, env: Mapping[str, str | None] | None = None) -> Any:
        """Run the CLI in-process (Typer's CliRunner) with stdout and stderr kept apart."""
        runner = CliRunner()
        return runner.invoke(orchestrate.app, ["--root", str(self.root), *args], env=env, catch_exceptions=False)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed `orchestrate` command as a real process."""
        full_env = dict(os.environ)
        for name in CI_VARIABLES:
            full_env.pop(name, None)
        # the orchestrate.py of this checkout, even when another copy is installed
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        return subprocess.run(
            [orchestrate_bin(), "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.runs.glob("*.json"))]

    def last_record(self) -> dict[str, Any]:
        records = self.records()
        assert records, "no run record was written"
        return records[-1]


def orchestrate_bin() -> str:
    candidate = Path(sys.executable).parent / "orchestrate"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("orchestrate")
    assert found, "the orchestrate console script is not installed (pip install -e .)"
    return found


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


def junit_schemas() -> list[Any]:
    import xmlschema

    return [
        xmlschema.XMLSchema(str(SCHEMAS / "jenkins-xunit-junit-10.xsd")),
        xmlschema.XMLSchema(str(SCHEMAS / "windyroad-JUnit.xsd")),
    ]


def assert_valid_junit(path_or_bytes: Path | bytes) -> None:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    for schema in junit_schemas():
        schema.validate(data.decode("utf-8"))


# --- the built distribution (tests/test_packaging.py, tests/test_templates.py) ------------

COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".ci-venv",
    "runs",
    "__pycache__",
    "build",
    "dist",
    "*.egg-info",
    "node_modules",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)


def copy_checkout(target: Path) -> Path:
    """This checkout's files (no git metadata, venvs, run records or build output) at target."""
    shutil.copytree(REPO, target, ignore=COPY_IGNORE)
    (target / "runs").mkdir()
    if (REPO / "runs" / ".gitkeep").exists():
        (target / "runs" / ".gitkeep").write_text("")
    return target


@pytest.fixture(scope="session")
def built_dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` of a copy of this checkout: {"wheel": ..., "sdist": ...}, built once."""
    import importlib.util

    assert importlib.util.find_spec("build"), (
        "build is not installed: pip install -e '.[test]' (the test extra brings it)"
    )
    base = tmp_path_factory.mktemp("dist")
    source = copy_checkout(base / "source")
    out = base / "out"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = sorted(out.glob("*.whl"))
    sdists = sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def tool_path(name: str) -> str:
    """A command the test extra installs beside this interpreter (pipx, shellcheck, actionlint)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]' (the test extra brings it)"
    return found


def run_in_pty(project: Project, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the real command with its terminal on a pty; its exit code and the screen's bytes."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "NO_COLOR")}
    full_env.update(PYTHONPATH=str(REPO), TERM="xterm", **(env or {}))
    process = subprocess.Popen(
        [orchestrate_bin(), "--root", str(project.root), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=full_env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    code = process.wait(10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")
