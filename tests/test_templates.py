"""The CI templates in hooks/ run as shipped: each template's own shell lines (GitHub `run:`
steps, GitLab `before_script`/`script`, Jenkinsfile `sh` steps) run in a temporary clone of
this repository, with only the install line pointed at the wheel just built; the JUnit report
appears where the template publishes it and the exit code follows the run's. The templates
also pass their CI systems' own checks: SchemaStore's GitHub and GitLab schemas (the ones
check-jsonschema ships), actionlint, and shellcheck on every shell line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CI_VARIABLES, REPO, assert_valid_junit, copy_checkout, tool_path

HOOKS = REPO / "hooks"
DISTRIBUTION = "orchestrate-cli"


# --- reading the templates ---------------------------------------------------------------


def github_template(path: Path = HOOKS / "github-actions.yml") -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    [job] = data["jobs"].values()
    return job


def github_scripts(path: Path = HOOKS / "github-actions.yml") -> list[str]:
    return [str(step["run"]) for step in github_template(path)["steps"] if "run" in step]


def gitlab_job() -> dict[str, Any]:
    return yaml.safe_load((HOOKS / "gitlab-ci.yml").read_text())["orchestrate"]


def gitlab_lines() -> list[str]:
    job = gitlab_job()
    return [*job.get("before_script", []), *job["script"]]


def jenkins_lines(name: str = "Jenkinsfile") -> list[str]:
    return re.findall(r"^\s*sh\s+'([^']*)'\s*$", (HOOKS / name).read_text(), re.MULTILINE)


def point_install_at(line: str, wheel: Path) -> str:
    """The template's install line with the distribution replaced by the wheel just built."""
    replaced = re.sub(rf"(?<![\w./-]){re.escape(DISTRIBUTION)}(?![\w-])", str(wheel), line)
    return replaced


def is_install_line(line: str) -> bool:
    return bool(re.search(rf"\b(pipx|pip) install\b.*(?<![\w./-]){re.escape(DISTRIBUTION)}(?![\w-])", line))


def test_each_template_installs_the_distribution_exactly_once() -> None:
    for name, lines in (
        ("github-actions.yml", github_scripts()),
        ("gitlab-ci.yml", gitlab_lines()),
        ("Jenkinsfile", jenkins_lines()),
    ):
        assert sum(map(is_install_line, lines)) == 1, f"{name}: {lines}"
        run_lines = [line for line in lines if re.search(r"(^|/)orchestrate run ci\b", line)]
        assert run_lines and all("--junit-xml reports/junit.xml" in line for line in run_lines), name


def test_jenkins_never_installs_into_the_system_python() -> None:
    """Debian 12 agents refuse `pip install --user` (externally-managed-environment)."""
    for name in ("Jenkinsfile", "Jenkinsfile.shard"):
        lines = jenkins_lines(name)
        assert "python3 -m venv .orchestrate-venv" in lines, name
        installs = [line for line in lines if " install " in f" {line} "]
        assert installs and all(line.startswith(".orchestrate-venv/bin/python -m pip install") for line in installs)
        assert not any("--user" in line or line.startswith("pipx") for line in lines), name


# --- running them ----------------------------------------------------------------------------


class Clone:
    """A temporary clone of this repository: the files, committed in a fresh git repository."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        (tmp / "gitconfig").write_text(
            "[user]\n\tname = CI\n\temail = ci@example.com\n[init]\n\tdefaultBranch = main\n"
        )
        self.root = copy_checkout(tmp / "workspace")
        self.tools = tmp / "tools"  # what a CI image has on PATH, and nothing of this test's venv
        self.tools.mkdir()
        for name in ("python3", "python"):
            (self.tools / name).symlink_to(sys._base_executable)  # type: ignore[attr-defined]
        self.git("init", "-q")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "the repository as shipped")

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in CI_VARIABLES
            and not k.startswith(
                ("GIT_", "ORCHESTRATE_", "PYTHON", "PIPX_", "VIRTUAL_ENV", "GITHUB_", "GITLAB_", "CI_")
            )
        }
        env.update(
            HOME=str(self.home),
            GIT_CONFIG_GLOBAL=str(self.tmp / "gitconfig"),
            GIT_CONFIG_NOSYSTEM="1",
            PATH=os.pathsep.join([str(self.tools), "/usr/local/bin", "/usr/bin", "/bin"]),
            CI="true",
        )
        return env

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.root, env=self.base_env(), check=True, capture_output=True, timeout=60)

    def break_ci_workflow(self) -> None:
        """Add a failing step to workflows/ci.json and commit it, as a developer would."""
        path = self.root / "workflows" / "ci.json"
        data = json.loads(path.read_text())
        data["steps"].append({"name": "broken check", "type": "command", "run": "echo 'assertion failed'; exit 3"})
        path.write_text(json.dumps(data, indent=2))
        self.git("commit", "-q", "-am", "a broken check")
        report = self.root / "reports" / "junit.xml"
        if report.exists():
            report.unlink()

    def sh(self, argv: list[str], script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        path = self.tmp / "step.sh"
        path.write_text(script + "\n")
        return subprocess.run(
            [*argv, str(path)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )


def run_github(clone: Clone, wheel: Path) -> tuple[int, str]:
    """Each `run:` step as the runner does (bash -eo pipefail), stopping at the first failure."""
    env = clone.base_env()
    pipx_bin = clone.tmp / "pipx-bin"
    if not (clone.tools / "pipx").exists():  # preinstalled on GitHub's runners
        (clone.tools / "pipx").symlink_to(tool_path("pipx"))
    summary = clone.tmp / "step-summary.md"
    summary.touch()
    env.update(
        GITHUB_ACTIONS="true",
        GITHUB_WORKSPACE=str(clone.root),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_REPOSITORY="acme/shop",
        GITHUB_RUN_ID="1",
        GITHUB_SHA="0" * 40,
        GITHUB_REF_NAME="main",
        RUNNER_TEMP=str(clone.tmp),
        PIPX_HOME=str(clone.tmp / "pipx-home"),
        PIPX_BIN_DIR=str(pipx_bin),
    )
    env["PATH"] = f"{pipx_bin}{os.pathsep}{env['PATH']}"  # as on GitHub's images
    log = ""
    for script in github_scripts():
        if is_install_line(script):
            script = point_install_at(script, wheel)
        result = clone.sh(["bash", "--noprofile", "--norc", "-eo", "pipefail"], script, env)
        log += result.stdout + result.stderr
        if result.returncode != 0:
            return result.returncode, log
    assert (pipx_bin / "orchestrate").exists(), "the run did not use the orchestrate pipx installed"
    return 0, log


def run_gitlab(clone: Clone, wheel: Path) -> tuple[int, str]:
    """before_script and script in one shell, as GitLab's runner does; `python` is the image's
    (a fresh virtualenv stands in for the python:3.12 image's interpreter)."""
    job = gitlab_job()
    image = clone.tmp / "image-python"
    if not image.exists():
        subprocess.run(
            [sys._base_executable, "-m", "venv", str(image)],  # type: ignore[attr-defined]
            check=True,
            capture_output=True,
            timeout=120,
        )
    env = clone.base_env()
    env.update({key: str(value) for key, value in job.get("variables", {}).items()})
    env.update(
        GITLAB_CI="true",
        CI_PROJECT_DIR=str(clone.root),
        CI_JOB_URL="https://gitlab.example/job/1",
        CI_COMMIT_BRANCH="main",
    )
    env["PATH"] = f"{image / 'bin'}{os.pathsep}{env['PATH']}"
    lines = [point_install_at(line, wheel) if is_install_line(line) else line for line in gitlab_lines()]
    result = clone.sh(["bash", "--noprofile", "--norc", "-eo", "pipefail"], "\n".join(lines), env)
    assert (image / "bin" / "orchestrate").exists(), "the run did not use the orchestrate pip installed"
    return result.returncode, result.stdout + result.stderr


def run_jenkins(clone: Clone, wheel: Path) -> tuple[int, str]:
    """Each `sh` step as Jenkins runs it (sh -xe), stopping at the first failure."""
    env = clone.base_env()
    env.update(
        JENKINS_URL="http://127.0.0.1:8080/",
        WORKSPACE=str(clone.root),
        BUILD_URL="http://127.0.0.1:8080/job/shop/1/",
        BRANCH_NAME="main",
    )
    log = ""
    for line in jenkins_lines():
        if is_install_line(line):
            line = point_install_at(line, wheel)
        result = clone.sh(["/bin/sh", "-xe"], line, env)
        log += result.stdout + result.stderr
        if result.returncode != 0:
            return result.returncode, log
    assert (clone.root / ".orchestrate-venv" / "bin" / "orchestrate").exists()
    return 0, log


RUNNERS = {"github-actions.yml": run_github, "gitlab-ci.yml": run_gitlab, "Jenkinsfile": run_jenkins}


def published_report(template: str) -> str:
    """Where the template publishes the JUnit report (its reporter's own setting)."""
    if template == "github-actions.yml":
        [publish] = [s for s in github_template()["steps"] if "junit" in str(s.get("uses", "")).lower()]
        assert publish["if"] == "${{ !cancelled() }}"
        return str(publish["with"]["report_paths"])
    if template == "gitlab-ci.yml":
        assert gitlab_job()["artifacts"]["when"] == "always"
        return str(gitlab_job()["artifacts"]["reports"]["junit"])
    text = (HOOKS / "Jenkinsfile").read_text()
    match = re.search(r"always \{\s*junit [^\n]*testResults: '([^']+)'", text)
    assert match, "Jenkinsfile: no junit step in post { always { ... } }"
    return match.group(1)


def published_html_report(template: str) -> str:
    """Where the template publishes the HTML report (issue 19): its artifact's path."""
    if template == "github-actions.yml":
        [publish] = [s for s in github_template()["steps"] if s.get("name") == "Publish the HTML report"]
        assert publish["if"] == "${{ !cancelled() }}" and "upload-artifact" in publish["uses"]
        return str(publish["with"]["path"])
    if template == "gitlab-ci.yml":
        artifacts = gitlab_job()["artifacts"]
        assert artifacts["when"] == "always" and artifacts["expose_as"]
        return next(p for p in artifacts["paths"] if p.endswith(".html"))
    text = (HOOKS / "Jenkinsfile").read_text()
    match = re.search(r"archiveArtifacts artifacts: '([^',]+\.html)", text)
    assert match and "publishHTML(" in text, "Jenkinsfile: the report is neither archived nor published"
    return match.group(1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("template", sorted(RUNNERS))
def test_template_runs_as_shipped_and_its_exit_code_follows_the_run(
    template: str, built_dist: dict[str, Path], tmp_path: Path
) -> None:
    clone = Clone(tmp_path)
    report = clone.root / published_report(template)
    page = clone.root / published_html_report(template)
    code, log = RUNNERS[template](clone, built_dist["wheel"])
    assert code == 0, log[-4000:]
    assert "ci: 2 passed, 0 failed, 0 skipped in " in log
    assert_valid_junit(report)
    assert page.read_text().startswith("<!DOCTYPE html>") and "completed" in page.read_text()
    assert 'tests="2" failures="0"' in report.read_text()
    assert list((clone.root / "runs").glob("*.json")), "no run record to keep as an artifact"

    clone.break_ci_workflow()
    code, log = RUNNERS[template](clone, built_dist["wheel"])
    assert code == 1, log[-4000:]
    assert "ci: 2 passed, 1 failed, 0 skipped in " in log
    assert_valid_junit(report)
    assert 'failures="1"' in report.read_text() and "broken check" in report.read_text()
    assert "broken check" in page.read_text()  # a failed run publishes its report too


# --- the CI systems' own checks --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, schema",
    [
        ("github-actions.yml", "vendor.github-workflows"),
        ("github-actions-shard.yml", "vendor.github-workflows"),
        ("gitlab-ci.yml", "vendor.gitlab-ci"),
    ],
)
def test_templates_match_their_ci_schemas(name: str, schema: str) -> None:
    result = subprocess.run(
        [tool_path("check-jsonschema"), "--builtin-schema", schema, str(HOOKS / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["github-actions.yml", "github-actions-shard.yml"])
def test_github_templates_pass_actionlint_with_shellcheck(name: str) -> None:
    result = subprocess.run(
        [tool_path("actionlint"), "-shellcheck", tool_path("shellcheck"), "-no-color", str(HOOKS / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def shell_snippets() -> list[tuple[str, str, str]]:
    """(template, shell dialect, script) for every shell line a template runs."""

    def expanded(script: str) -> str:  # the runner substitutes ${{ ... }} before the shell runs
        return re.sub(r"\$\{\{.*?\}\}", "1", script)

    found = [("github-actions.yml", "bash", expanded(s)) for s in github_scripts()]
    found += [
        ("github-actions-shard.yml", "bash", expanded(s)) for s in github_scripts(HOOKS / "github-actions-shard.yml")
    ]
    found.append(("gitlab-ci.yml", "bash", "\n".join(gitlab_lines())))
    found += [(name, "sh", line) for name in ("Jenkinsfile", "Jenkinsfile.shard") for line in jenkins_lines(name)]
    return found


@pytest.mark.parametrize(
    "template, dialect, script", shell_snippets(), ids=[f"{t}:{s[:40]}" for t, _, s in shell_snippets()]
)
def test_template_shell_lines_pass_shellcheck(template: str, dialect: str, script: str) -> None:
    result = subprocess.run(
        [tool_path("shellcheck"), "-s", dialect, "-"], input=script, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{template}: {result.stdout}"


@pytest.mark.parametrize("bad, code", [("echo $1", "SC2086"), ("cd somewhere\nls", "SC2164")])
def test_shellcheck_is_really_checking(bad: str, code: str) -> None:
    result = subprocess.run(
        [tool_path("shellcheck"), "-s", "sh", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and code in result.stdout
