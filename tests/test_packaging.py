"""The distribution: `python -m build` makes an sdist and a wheel named orchestrate-cli that
install with pipx and run `orchestrate run demo` outside the checkout; every install line in
the documentation and the templates names that distribution."""

from __future__ import annotations

import email
import os
import re
import shlex
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import CI_VARIABLES, REPO, beside_repository, reads_beside_guard, tool_path

import orchestrate

DISTRIBUTION = "orchestrate-cli"


def read_pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_distribution_name_version_and_command() -> None:
    project = read_pyproject()["project"]
    assert project["name"] == DISTRIBUTION
    assert project["version"] == orchestrate.__version__ == "0.2.0"
    assert project["scripts"] == {"orchestrate": "orchestrate:console_main"}
    assert sorted(project["dependencies"]) == ["requests>=2.28,<3", "typer>=0.24,<0.29"]


def test_wheel_holds_only_the_module_and_its_metadata(built_dist: dict[str, Path]) -> None:
    wheel = built_dist["wheel"]
    assert wheel.name == "orchestrate_cli-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(archive.read("orchestrate_cli-0.2.0.dist-info/METADATA"))
        entry_points = archive.read("orchestrate_cli-0.2.0.dist-info/entry_points.txt").decode()
    assert [n for n in names if not n.startswith("orchestrate_cli-0.2.0.dist-info/")] == ["orchestrate.py"]
    assert metadata["Name"] == DISTRIBUTION and metadata["Version"] == "0.2.0"
    assert "orchestrate = orchestrate:console_main" in entry_points
    with tarfile.open(built_dist["sdist"]) as archive:
        members = {
            Path(m.name).relative_to("orchestrate_cli-0.2.0").as_posix()
            for m in archive.getmembers()
            if m.name != "orchestrate_cli-0.2.0"
        }
    assert {"orchestrate.py", "pyproject.toml", "README.md", "PKG-INFO"} <= members


def sample_project(target: Path) -> Path:
    """The repository's sample project without orchestrate.py next to it: what a user has."""
    import shutil

    for folder in ("workflows", "scripts", "integrations"):
        shutil.copytree(
            REPO / folder, target / folder, ignore=shutil.ignore_patterns(".venv", "node_modules", "__pycache__")
        )
    assert not (target / "orchestrate.py").exists()
    return target


def pipx_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CI_VARIABLES and not k.startswith(("PYTHON", "PIPX_", "VIRTUAL_ENV"))
    }
    env.update(
        PIPX_HOME=str(tmp / "pipx-home"),
        PIPX_BIN_DIR=str(tmp / "pipx-bin"),
        PIPX_MAN_DIR=str(tmp / "pipx-man"),
        HOME=str(tmp / "home"),
    )
    env["PATH"] = f"{tmp / 'pipx-bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_pipx_install_runs_demo_outside_the_checkout(built_dist: dict[str, Path], tmp_path: Path, kind: str) -> None:
    env = pipx_env(tmp_path)
    (tmp_path / "home").mkdir()
    installed = subprocess.run(
        [tool_path("pipx"), "install", str(built_dist[kind])],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = tmp_path / "pipx-bin" / "orchestrate"
    assert command.exists()
    project = sample_project(tmp_path / "my-project")
    version = subprocess.run(
        [str(command), "--version"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert version.stdout == "orchestrate 0.2.0\n"
    # the module that runs is the installed one, not this checkout's
    venv_python = tmp_path / "pipx-home" / "venvs" / DISTRIBUTION / "bin" / "python"
    where = subprocess.run(
        [str(venv_python), "-c", "import orchestrate; print(orchestrate.__file__)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(tmp_path / "pipx-home")), where.stdout + where.stderr
    run = subprocess.run(
        [str(command), "run", "demo"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().splitlines()[-1].startswith("demo: 3 passed, 0 failed, 0 skipped in ")
    assert list((project / "runs").glob("*.json"))


# --- every install line names the distribution ---------------------------------------------

SCANNED = [
    "README.md",
    ".pre-commit-hooks.yaml",
    "orchestrate.py",
    "bench/run.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "hooks").iterdir() if p.is_file()),
]
_INSTALL_RE = re.compile(r"\b(pipx\s+(?:install|inject)|pip3?\s+install)\s+([^`;&|\n()\"\\#]*)")
# pip and pipx options that take a value (everything else starting with '-' is a flag)
_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "--suffix",
    "--python",
    "-t",
    "--target",
    "--pip-args",
    "-f",
    "--find-links",
}
_DISTRIBUTION_RE = re.compile(rf"{re.escape(DISTRIBUTION)}(\[[a-z,]+\])?([<>=!~]=?[0-9][0-9a-z.*]*)?")


def install_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, its arguments) for every pip/pipx install or pipx inject in a text."""
    found = []
    for match in _INSTALL_RE.finditer(text):
        rest = re.sub(r"<[^>]*>", "PLACEHOLDER", match.group(2))
        try:
            words = shlex.split(rest)
        except ValueError:  # the command ends inside a quoted message: 'install it with ...', or
            words = []
            for word in rest.split():
                bare = word.strip("'\",")
                words.append(bare if bare in (".", "..") else bare.rstrip("."))
                if word.rstrip(",.").endswith("'"):
                    break
        found.append((" ".join(match.group(1).split()), words))
    return found


def named_distributions(command: str, words: list[str]) -> list[str]:
    """What an install line installs, by name: paths, URLs, wheels and requirement files are
    not names; for `pipx inject`, the first name is the environment the rest go into."""
    if {"-r", "--requirement"} & set(words):
        return []  # a requirements file: what it installs is the file's business
    names: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word in _VALUE_OPTIONS:
            skip_next = True
            continue
        if word.startswith("-") or word == "PLACEHOLDER" or word.startswith("{"):
            continue
        local = (
            word.startswith((".", "/", "~", "$", "git+", "http"))
            or "/" in word
            or word.endswith((".whl", ".tar.gz", ".zip"))
        )
        if not local:
            names.append(word)
        if command == "pipx inject":
            break  # the rest are what goes into that environment
    return names


@pytest.mark.parametrize("relative", SCANNED)
def test_every_install_line_names_this_distribution(relative: str) -> None:
    text = (REPO / relative).read_text()
    for command, words in install_commands(text):
        for name in named_distributions(command, words):
            assert _DISTRIBUTION_RE.fullmatch(name), (
                f"{relative}: `{command} {' '.join(words)}` installs {name!r}, not {DISTRIBUTION!r} "
                f"(the index's 'orchestrate' is another project)"
            )


@pytest.mark.parametrize(
    "line, wrong",
    [
        ("pipx install orchestrate", "orchestrate"),
        ("python3 -m pip install --user --quiet pipx", "pipx"),
        ("pipx inject orchestrate fastapi uvicorn", "orchestrate"),
        ("run: pipx install 'orchestrate[server]'", "orchestrate[server]"),
        ("`pip install -q orchestrate==0.1`", "orchestrate==0.1"),
    ],
)
def test_the_install_line_check_catches_other_distributions(line: str, wrong: str) -> None:
    [(command, words)] = install_commands(line)
    names = named_distributions(command, words)
    assert names == [wrong] and not _DISTRIBUTION_RE.fullmatch(names[0])


@pytest.mark.parametrize(
    "line",
    [
        "pipx install orchestrate-cli",
        "pipx install 'orchestrate-cli[server]'",
        "pip install -e '.[test,server]'",
        "pipx inject orchestrate-cli fastapi uvicorn",
        "pipx install git+https://example.com/x.git",
        "pip install -r <your requirements file>",
        ".venv/bin/pip install -q orchestrate-cli==0.2.0",
        "pipx install --force .",
    ],
)
def test_the_install_line_check_accepts_this_distribution_and_paths(line: str) -> None:
    [(command, words)] = install_commands(line)
    assert all(_DISTRIBUTION_RE.fullmatch(name) for name in named_distributions(command, words))


# --- the repository alone ------------------------------------------------------------------

EXEMPT = "# names the folder beside the checkout; reads nothing there"


def paths_leaving_the_repository(source: str, depth: int) -> list[str]:
    """Expressions in a test file that reach above the checkout: a chain of `.parent` (or
    `.parents[N]`) from `__file__` longer than the file's depth in the repository, `.parent`
    of a name for the repository root, or a literal path to a sibling folder or to `..`."""
    import ast

    found = []
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if hasattr(node, "lineno") and lines[node.lineno - 1].endswith(EXEMPT):
            continue
        hops, inner = 0, node
        while True:
            if isinstance(inner, ast.Attribute) and inner.attr == "parent":
                hops, inner = hops + 1, inner.value
            elif (
                isinstance(inner, ast.Subscript)
                and isinstance(inner.value, ast.Attribute)
                and inner.value.attr == "parents"
                and isinstance(inner.slice, ast.Constant)
            ):
                hops, inner = hops + int(str(inner.slice.value)) + 1, inner.value.value
            elif (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Attribute)
                and inner.func.attr in ("resolve", "absolute")
            ):
                inner = inner.func.value
            else:
                break
        if (hops and "__file__" in ast.unparse(inner) and hops > depth + 1) or (
            hops and isinstance(inner, ast.Name) and inner.id in ("REPO", "ROOT") and isinstance(node, ast.Attribute)
        ):
            found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(r"(^|/)\.\./(shared|main|wt\d+)\b|^/work/", node.value)
        ):
            found.append(repr(node.value))
    return found


def test_nothing_under_tests_reads_outside_the_repository() -> None:
    offenders = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        depth = len(path.relative_to(REPO).parts) - 1  # tests/x.py: 1, its parent.parent is the root
        found = paths_leaving_the_repository(path.read_text(), depth)
        if found:
            offenders[str(path.relative_to(REPO))] = found
    assert offenders == {}


@pytest.mark.parametrize(
    "source, depth",
    [
        ('SCHEMAS = Path(__file__).resolve().parent.parent.parent / "shared"', 1),
        ("REPO = Path(__file__).resolve().parents[2]", 1),
        ("REPO = Path(__file__).resolve().parents[3]", 2),
        ('data = (REPO.parent / "shared" / "x.xsd").read_text()', 1),
        ('schema = open("../shared/junit-10.xsd")', 1),
    ],
)
def test_the_scan_catches_each_way_out(source: str, depth: int) -> None:
    assert paths_leaving_the_repository(source, depth)


@pytest.mark.parametrize(
    "source, depth",
    [
        ("REPO = Path(__file__).resolve().parent.parent", 1),
        ("REPO = Path(__file__).resolve().parents[2]", 2),
        ('SCHEMAS = REPO / "tests" / "schemas"', 1),
        ('bad_name = "../x"', 1),
    ],
)
def test_the_scan_lets_the_repository_be(source: str, depth: int) -> None:
    assert paths_leaving_the_repository(source, depth) == []


def test_opening_a_file_beside_the_repository_fails_the_test(tmp_path: Path) -> None:
    """The guard's rule, wherever this checkout happens to sit (CI may clone it anywhere)."""
    outer = tmp_path / "outer"
    repo = outer / "repo"
    (repo / ".venv").mkdir(parents=True)
    (outer / "shared").mkdir()
    hook = reads_beside_guard(repo, outer)
    with pytest.raises(PermissionError, match=r"a test opened .*/outer/shared/junit-10\.xsd, outside the repository"):
        hook("open", (str(outer / "shared" / "junit-10.xsd"), "r", 0))
    hook("open", (str(repo / "tests" / "schemas" / "x.xsd"), "r", 0))  # inside: fine
    hook("open", (str(tmp_path / "elsewhere"), "r", 0))  # not beside it: not this rule's business
    # the checkout's own venv (README's commands put it there) does not turn the guard off
    assert beside_repository(repo) == outer
    guarded = beside_repository()
    if guarded is not None:  # this checkout's guard is on: it catches a real open
        with pytest.raises(PermissionError, match="outside the repository"):
            open(guarded / "shared" / "junit-10.xsd")
