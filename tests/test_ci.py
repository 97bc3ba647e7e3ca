"""orchestrate in CI: detection, GitHub Actions / GitLab console markup, the step summary,
when.changed against --from-ref or the CI base, and the shipped CI snippets (every
`orchestrate ...` line in them runs with --dry-run against a sample project)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CI_VARIABLES, Project, assert_valid_junit, orchestrate_bin

import orchestrate

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-value-42"
Z40 = "0" * 40
A = "a" * 40
B = "b" * 40


def github_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    summary = tmp_path / "summary.md"
    summary.write_text("")
    return {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/shop",
        "GITHUB_RUN_ID": "99",
        "GITHUB_SHA": "a" * 40,
        "GITHUB_REF_NAME": "main",
        "API_TOKEN": SECRET,
        **extra,
    }


def ci_project(project: Project) -> None:
    project.workflow(
        "ci",
        [
            {
                "name": "forger",
                "type": "command",
                "run": "echo hello; echo '::error::forged'; echo '::set-output name=x::y'; echo '::add-mask::hello'",
            },
            {"name": "uses secret", "type": "command", "run": "echo token is $API_TOKEN"},
            {"name": "tests: unit, fast", "type": "command", "run": "echo boom; exit 3"},
            {"name": "cleanup", "type": "command", "run": "echo cleaning", "when": {"status": "always"}},
            {"name": "deploy", "type": "command", "run": "echo deploying"},
        ],
        env={"API_TOKEN": "${API_TOKEN}"},
    )


# --- GitHub Actions ----------------------------------------------------------------------


def test_github_actions_groups_fence_masks_and_annotations(project: Project, tmp_path: Path) -> None:
    ci_project(project)
    result = project.run("run", "ci", env=github_env(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    # the secret is registered before anything else is printed, and never printed itself
    assert lines[0] == f"::add-mask::{SECRET}"
    assert SECRET not in result.stdout.replace(lines[0], "")
    assert "token is ***" in result.stdout
    groups = [line for line in lines if line.startswith("::group::")]
    assert groups == [
        "::group::forger (command)",
        "::group::uses secret (command)",
        "::group::tests: unit, fast (command)",
        "::group::cleanup (command)",
    ]
    assert lines.count("::endgroup::") == 4
    # each step's output sits inside a stop-commands fence with its own random token
    start = lines.index("::group::forger (command)")
    stop = lines[start + 1]
    token = stop.removeprefix("::stop-commands::")
    assert stop.startswith("::stop-commands::") and len(token) >= 32
    resume = lines.index(f"::{token}::")
    fenced = lines[start + 2 : resume]
    assert "::error::forged" in fenced and "::set-output name=x::y" in fenced
    assert lines[resume + 1] == "::endgroup::"
    tokens = [line.removeprefix("::stop-commands::") for line in lines if line.startswith("::stop-commands::")]
    assert len(set(tokens)) == 4
    # no forged command outside a fence
    fence = None
    for line in lines:
        if line.startswith("::stop-commands::"):
            fence = line.removeprefix("::stop-commands::")
        elif fence and line == f"::{fence}::":
            fence = None
        elif line in ("::error::forged", "::set-output name=x::y", "::add-mask::hello"):
            assert fence, f"{line!r} printed outside a stop-commands fence"
    # one annotation, for the failed step, with GitHub's property escaping
    annotations = [line for line in lines if line.startswith("::error ")]
    assert annotations == ["::error title=tests%3A unit%2C fast failed::command exited with code 3"]


def test_github_step_summary(project: Project, tmp_path: Path) -> None:
    ci_project(project)
    env = github_env(tmp_path)
    Path(env["GITHUB_STEP_SUMMARY"]).write_text("earlier step's summary\n")
    project.run("run", "ci", env=env)
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    record = project.last_record()
    assert summary.startswith("earlier step's summary\n### orchestrate: ci failed\n")
    assert (
        f"3 passed, 1 failed, 1 skipped · run `{record['run_id']}` · "
        "[job log](https://github.com/acme/shop/actions/runs/99)"
    ) in summary
    assert "| Step | Status | Time | Failed tests / reason |" in summary
    assert re.search(
        r"^\| tests: unit, fast \| \*\*failed\*\* \| \d+\.\ds \| command exited with code 3 \|$", summary, re.MULTILINE
    )
    assert "| deploy | skipped |  | an earlier step failed (tests: unit, fast) |" in summary
    gantt = summary[summary.index("```mermaid") :]
    assert gantt.startswith("```mermaid\ngantt\n    title ci\n    dateFormat x\n")
    assert re.search(r"^    tests  unit, fast :crit, s2, \d{13}, \d{13}$", gantt, re.MULTILINE)
    assert re.search(r"^    forger :done, s0, \d{13}, \d{13}$", gantt, re.MULTILINE)
    assert "deploy :" not in gantt
    assert SECRET not in summary
    assert record["trigger"]["provider"] == "github"
    assert record["trigger"]["job_url"] == "https://github.com/acme/shop/actions/runs/99"
    assert record["trigger"]["source"] == "ci"


def test_no_summary_and_no_markup_outside_github(project: Project, tmp_path: Path) -> None:
    ci_project(project)
    summary = tmp_path / "summary.md"
    result = project.run(
        "run",
        "ci",
        env={
            "CI": "true",
            "JENKINS_URL": "http://jenkins/",
            "BUILD_URL": "http://jenkins/job/shop/7/",
            "GITHUB_STEP_SUMMARY": str(summary),
            "API_TOKEN": SECRET,
        },
    )
    assert result.returncode == 1
    assert "::" not in result.stdout.replace("::error::forged", "").replace("::set-output name=x::y", "").replace(
        "::add-mask::hello", ""
    )
    assert "\x1b" not in result.stdout  # plain and colourless for a Jenkins console
    assert not summary.exists() or summary.read_text() == ""
    trigger = project.last_record()["trigger"]
    assert (trigger["source"], trigger["provider"], trigger["job_url"]) == (
        "ci",
        "jenkins",
        "http://jenkins/job/shop/7/",
    )


def test_gitlab_sections(project: Project) -> None:
    project.workflow("ci", [{"name": "unit tests", "type": "command", "run": "echo inside"}])
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    env.update(CI="true", GITLAB_CI="true", CI_JOB_URL="https://gitlab.example/j/5", PYTHONPATH=str(REPO))
    # bytes: text mode would turn the markers' \r into newlines
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(project.root), "run", "ci"],
        check=False,
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0
    out = result.stdout.decode()
    start = re.search(r"\x1b\[0Ksection_start:(\d+):step_1_unit_tests\r\x1b\[0Kunit tests \(command\)\n", out)
    end = re.search(r"\x1b\[0Ksection_end:(\d+):step_1_unit_tests\r\x1b\[0K\n", out)
    assert start and end and start.end() < out.index("inside") < end.start()
    assert int(end.group(1)) >= int(start.group(1))
    assert project.last_record()["trigger"]["job_url"] == "https://gitlab.example/j/5"


# --- when.changed in CI ------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout.strip()


@pytest.fixture
def repo_project(project: Project) -> Project:
    project.workflow(
        "ci",
        [
            {"name": "python", "type": "command", "run": "echo py", "when": {"changed": ["*.py"]}},
            {"name": "docs", "type": "command", "run": "echo docs", "when": {"changed": ["docs/**"]}},
            {"name": "release", "type": "command", "run": "echo rel", "when": {"branch": ["release/*"]}},
            {"name": "env", "type": "command", "run": "echo from=$ORCHESTRATE_FROM_REF to=$ORCHESTRATE_TO_REF"},
        ],
    )
    project.write("runs/.gitignore", "*\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "one")
    git(project.root, "branch", "base")
    project.write("docs/x.md", "x")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "two")
    return project


def statuses(project: Project) -> dict[str, str]:
    return {e["step"]: e["status"] for e in project.last_record()["log"]}


def test_from_ref_to_ref(repo_project: Project) -> None:
    result = repo_project.run("run", "ci", "--from-ref", "base", "--to-ref", "HEAD")
    assert result.returncode == 0, result.stderr
    assert statuses(repo_project) == {"python": "skipped", "docs": "passed", "release": "skipped", "env": "passed"}
    log = {e["step"]: e for e in repo_project.last_record()["log"]}
    assert log["python"]["message"] == ("when.changed ['*.py']: no changed file matches (1 changed, base...HEAD)")
    assert log["release"]["message"] == "when.branch ['release/*']: branch 'main' does not match"
    assert "from=base to=HEAD" in result.stdout
    assert_valid_junit(repo_project.root / repo_project.last_record()["junit"])


def test_unknown_from_ref_is_a_usage_error(repo_project: Project) -> None:
    result = repo_project.run("run", "ci", "--from-ref", "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("orchestrate: error: --from-ref nope --to-ref HEAD: cannot compare:")
    assert "fetch the full history" in result.stderr
    result = repo_project.run("run", "ci", "--to-ref", "HEAD")
    assert result.returncode == 2
    assert result.stderr == "orchestrate: error: --to-ref needs --from-ref: the commit to compare with\n"


def test_github_pull_request_base_from_event(repo_project: Project, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"base": {"sha": git(repo_project.root, "rev-parse", "base")}}}))
    env = github_env(tmp_path, GITHUB_EVENT_PATH=str(event), GITHUB_HEAD_REF="release/2.0", GITHUB_BASE_REF="main")
    result = repo_project.run("run", "ci", env=env)
    assert result.returncode == 0, result.stderr
    assert statuses(repo_project) == {"python": "skipped", "docs": "passed", "release": "passed", "env": "passed"}
    assert repo_project.last_record()["trigger"]["branch"] == "release/2.0"


def test_ci_base_missing_from_shallow_clone_runs_the_gated_steps(repo_project: Project, tmp_path: Path) -> None:
    env = github_env(tmp_path, GITHUB_BASE_REF="main")  # origin/main does not exist here
    result = repo_project.run("run", "ci", env=env)
    assert result.returncode == 0
    assert statuses(repo_project)["python"] == "passed"
    assert "fetch the full history" in repo_project.last_record()["trigger"]["compare"]["description"]


def test_terminal_run_without_a_base_runs_changed_steps(repo_project: Project) -> None:
    result = repo_project.run("run", "ci")
    assert result.returncode == 0
    assert statuses(repo_project) == {"python": "passed", "docs": "passed", "release": "skipped", "env": "passed"}
    assert repo_project.last_record()["trigger"]["source"] == "cli"


def test_pre_commit_framework_refs(repo_project: Project) -> None:
    base = git(repo_project.root, "rev-parse", "base")
    head = git(repo_project.root, "rev-parse", "HEAD")
    result = repo_project.run("run", "ci", env={"PRE_COMMIT_FROM_REF": base, "PRE_COMMIT_TO_REF": head})
    assert result.returncode == 0
    assert statuses(repo_project)["python"] == "skipped"
    assert repo_project.last_record()["trigger"]["source"] == "pre-push"


# --- the shipped snippets ---------------------------------------------------------------


def github_commands() -> list[str]:
    data = yaml.safe_load((REPO / "hooks" / "github-actions.yml").read_text())
    steps = [s for job in data["jobs"].values() for s in job["steps"]]
    return [line for s in steps for line in str(s.get("run", "")).splitlines()]


def gitlab_commands() -> list[str]:
    data = yaml.safe_load((REPO / "hooks" / "gitlab-ci.yml").read_text())
    job = data["orchestrate"]
    return [*job["before_script"], *job["script"]]


def jenkins_commands() -> list[str]:
    text = (REPO / "hooks" / "Jenkinsfile").read_text()
    return re.findall(r"^\s*sh\s+'([^']*)'\s*$", text, re.MULTILINE)


def pre_commit_commands() -> list[str]:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    return [shlex.join([*shlex.split(h["entry"]), *h.get("args", [])]) for h in hooks]


SNIPPETS = {
    "github-actions.yml": github_commands,
    "gitlab-ci.yml": gitlab_commands,
    "Jenkinsfile": jenkins_commands,
    ".pre-commit-hooks.yaml": pre_commit_commands,
}


def orchestrate_lines(commands: list[str]) -> list[list[str]]:
    """The orchestrate command lines (`orchestrate ...` or `.orchestrate-venv/bin/orchestrate ...`)."""
    return [shlex.split(c) for c in commands if re.match(r"\s*(\S*/)?orchestrate ", c)]


@pytest.mark.parametrize("snippet", sorted(SNIPPETS))
def test_snippet_commands_run_against_a_sample_project(snippet: str, project: Project) -> None:
    commands = SNIPPETS[snippet]()
    lines = orchestrate_lines(commands)
    assert lines, f"{snippet}: no orchestrate command found"
    if snippet != ".pre-commit-hooks.yaml":
        assert any("install" in c and "orchestrate-cli" in c for c in commands), (
            f"{snippet}: installs the orchestrate-cli distribution"
        )
    project.workflow("ci", [{"name": "unit", "type": "command", "run": "echo unit"}])
    project.workflow("pre-push", [{"name": "lint", "type": "command", "run": "echo lint"}])
    for argv in lines:
        result = project.run(*argv[1:], "--dry-run")
        assert result.returncode == 0, f"{snippet}: {shlex.join(argv)}: {result.stderr}"
        assert "dry run, nothing will run" in result.stdout


def test_snippets_publish_junit_even_when_the_run_failed() -> None:
    gha = yaml.safe_load((REPO / "hooks" / "github-actions.yml").read_text())
    steps = gha["jobs"]["orchestrate"]["steps"]
    run_step = next(s for s in steps if "orchestrate run" in str(s.get("run", "")))
    assert "--junit-xml reports/junit.xml" in run_step["run"]
    publish = [s for s in steps if "junit" in str(s.get("uses", "")).lower()]
    assert publish and publish[0]["if"] == "${{ !cancelled() }}"
    assert publish[0]["with"]["report_paths"] == "reports/junit.xml"
    gitlab = yaml.safe_load((REPO / "hooks" / "gitlab-ci.yml").read_text())["orchestrate"]
    assert gitlab["artifacts"]["when"] == "always"
    assert gitlab["artifacts"]["reports"]["junit"] == "reports/junit.xml"
    jenkins = (REPO / "hooks" / "Jenkinsfile").read_text()
    always = jenkins[jenkins.index("always {") :]
    assert "junit allowEmptyResults: true, testResults: 'reports/junit.xml'" in always
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hooks[0]["stages"] == ["pre-push"] and hooks[0]["pass_filenames"] is False


# --- README -------------------------------------------------------------------------


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it from git and CI") :]
    following = section.find("\n## ", 5)
    section = section[:following] if following != -1 else section
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_git_and_ci_commands_work(tmp_path: Path) -> None:
    """Every command in README's "Use it from git and CI", run in order in a fresh
    repository whose pushes go to a bare remote."""
    from test_hooks import GitProject

    gp = GitProject(tmp_path)
    gp.workflow([gp.record_step("lint"), gp.record_step("unit")], name="ci")
    gp.workflow([gp.record_step("lint"), gp.record_step("unit")])
    gp.commit("ci workflow")
    commands = readme_commands()
    assert any(c.startswith("orchestrate hook install") for c in commands)
    for command in commands:
        argv = shlex.split(command)
        env_prefix: dict[str, Any] = {}
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
            key, _, value = argv.pop(0).partition("=")
            env_prefix[key] = value
        if argv[0] == "orchestrate":
            result = gp.orchestrate(*argv[1:], **env_prefix)
        elif argv[:2] == ["git", "push"]:
            gp.commit(f"change for {command}", **{"src__readme.py": command + "\n"})
            result = gp.push(*[a for a in argv[2:] if a != "origin"], **env_prefix)
        elif argv[0] == "git":
            result = gp.git(*argv[1:], check=False)
        else:
            raise AssertionError(f"README command not covered by this test: {command}")
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


# === pure parts, called directly ===

# --- CI detection ---------------------------------------------------------------------


def test_detect_ci_github_pull_request(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"base": {"sha": B}}}))
    env = {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "42",
        "GITHUB_SHA": A,
        "GITHUB_HEAD_REF": "feat",
        "GITHUB_REF_NAME": "7/merge",
        "GITHUB_BASE_REF": "main",
        "GITHUB_EVENT_PATH": str(event),
    }
    ci = orchestrate.detect_ci(env, orchestrate.read_github_event(env))
    assert ci == {
        "provider": "github",
        "job_url": "https://github.com/o/r/actions/runs/42",
        "commit": A,
        "branch": "feat",
        "base": B,
    }
    assert (orchestrate.detect_ci(env, {}) or {}).get("base") == "origin/main"


def test_detect_ci_github_push_event():
    env = {"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main"}
    assert orchestrate.detect_ci(env, {"before": B})["base"] == B
    assert orchestrate.detect_ci(env, {"before": Z40})["base"] == ""


def test_detect_ci_gitlab_jenkins_generic_none():
    gl = orchestrate.detect_ci(
        {
            "GITLAB_CI": "true",
            "CI": "true",
            "CI_JOB_URL": "https://gl/j/1",
            "CI_COMMIT_SHA": A,
            "CI_COMMIT_BRANCH": "dev",
            "CI_COMMIT_BEFORE_SHA": Z40,
        }
    )
    assert gl == {"provider": "gitlab", "job_url": "https://gl/j/1", "commit": A, "branch": "dev", "base": ""}
    jk = orchestrate.detect_ci(
        {
            "JENKINS_URL": "http://j/",
            "BUILD_URL": "http://j/job/x/3/",
            "GIT_COMMIT": A,
            "GIT_BRANCH": "origin/main",
            "CHANGE_TARGET": "main",
        }
    )
    assert jk == {
        "provider": "jenkins",
        "job_url": "http://j/job/x/3/",
        "commit": A,
        "branch": "main",
        "base": "origin/main",
    }
    assert orchestrate.detect_ci({"CI": "true"})["provider"] == "generic"
    assert orchestrate.detect_ci({"CI": "false"}) is None
    assert orchestrate.detect_ci({}) is None


def test_build_trigger():
    git_state = {"commit": A, "branch": "main", "dirty": True}
    t = orchestrate.make_trigger(git_state, None)
    assert t["source"] == "cli" and t["git"] == git_state and t["provider"] is None
    push = orchestrate.parse_push_refs(f"refs/heads/main {A} refs/heads/main {B}", "origin", "u")
    t = orchestrate.make_trigger(git_state, None, push, "pre-push")
    assert t["source"] == "pre-push" and t["push"]["remote"] == "origin"
    ci = {"provider": "gitlab", "job_url": "u", "commit": B, "branch": "dev", "base": ""}
    t = orchestrate.make_trigger(git_state, ci)
    assert (t["source"], t["provider"], t["job_url"], t["commit"], t["branch"]) == ("ci", "gitlab", "u", B, "dev")


def test_strip_git_env_and_step_env():
    env = {
        "GIT_DIR": "/x/.git",
        "GIT_INDEX_FILE": "i",
        "GIT_PREFIX": "",
        "PATH": "/bin",
        "GIT_SSH_COMMAND": "ssh",
        "GIT_CONFIG_KEY_0": "a",
        "GIT_EXEC_PATH": "/g",
    }
    assert orchestrate.strip_git_env(env) == {
        "PATH": "/bin",
        "GIT_SSH_COMMAND": "ssh",
        "GIT_CONFIG_KEY_0": "a",
        "GIT_EXEC_PATH": "/g",
    }
    push = orchestrate.PushInfo("origin", "u", ())
    out = orchestrate.step_git_env(env, orchestrate.ChangeSet((), "", (), B, A), push)
    assert out["ORCHESTRATE_PUSH_REMOTE"] == "origin"
    assert (out["ORCHESTRATE_FROM_REF"], out["ORCHESTRATE_TO_REF"]) == (B, A)
    assert "GIT_DIR" not in out and out["GIT_TERMINAL_PROMPT"] == "0"


# --- GitHub / GitLab markup -----------------------------------------------------------


def test_gha_escapes():
    assert orchestrate.gha_escape_data("50% a\r\nb: c, d") == "50%25 a%0D%0Ab: c, d"
    assert orchestrate.gha_escape_property("50% a\nb: c, d") == "50%25 a%0Ab%3A c%2C d"
    assert orchestrate.gha_error("unit: tests, fast", "line1\nline2 100%") == (
        "::error title=unit%3A tests%2C fast::line1%0Aline2 100%25"
    )


def test_gha_masks_multiline_secret():
    assert orchestrate.gha_mask_lines(["tok%en", "l1\nl2", "  "]) == [
        "::add-mask::l1",
        "::add-mask::l2",
        "::add-mask::tok%25en",
    ]


def make_step(index: int, name: str) -> orchestrate.Step:
    return orchestrate.Step(index=index, name=name, type="command", config={}, resolved={})


def test_github_output_fences_and_annotates() -> None:
    out = orchestrate.GitHubCIOutput()
    assert out.run_started(orchestrate.Masker(["tok%en"])) == [
        "::add-mask::tok%2525en",
        "::add-mask::tok%25en",
    ]  # the value and its URL-encoded form
    start = out.step_started(make_step(0, "unit tests"))
    assert start[0] == "::group::unit tests (command)"
    token = start[1].removeprefix("::stop-commands::")
    assert len(token) > 30
    assert out.step_output_ended(make_step(0, "unit tests")) == [f"::{token}::", "::endgroup::"]
    assert out.step_finished(make_step(0, "unit tests"), {"status": "failed", "message": "exit 1"}) == [
        "::error title=unit tests failed::exit 1"
    ]
    assert out.step_finished(make_step(0, "u"), {"status": "failed", "message": "m", "allowed_failure": True}) == [
        "::warning title=u failed (continue_on_error)::m"
    ]
    assert out.step_finished(make_step(0, "u"), {"status": "passed"}) == []
    assert out.step_started(make_step(1, "b"))[1] != start[1]  # a fresh token per step


def test_gitlab_output_sections() -> None:
    out = orchestrate.GitLabCIOutput(clock=lambda: 1700000000.5)
    assert out.step_started(make_step(1, "ui smoke: tests")) == [
        "\x1b[0Ksection_start:1700000000:step_2_ui_smoke_tests\r\x1b[0Kui smoke: tests (command)"
    ]
    assert out.step_output_ended(make_step(1, "ui smoke: tests")) == [
        "\x1b[0Ksection_end:1700000000:step_2_ui_smoke_tests\r\x1b[0K"
    ]
    assert out.step_output_ended(make_step(1, "x")) == []


RECORD = {
    "run_id": "20261127T154000123Z-1a2b3c",
    "workflow": "deploy",
    "status": "failed",
    "trigger": {"job_url": "https://github.com/o/r/actions/runs/1"},
    "log": [
        {
            "step": "unit tests",
            "status": "passed",
            "duration_s": 1.92,
            "started_at": "2026-11-27T15:40:00.000Z",
            "finished_at": "2026-11-27T15:40:01.920Z",
        },
        {
            "step": "ui: smoke | e2e",
            "status": "failed",
            "duration_s": 10.0,
            "message": "exit 1",
            "failed_tests": ["login > works", {"name": "cart <b>"}],
            "started_at": "2026-11-27T15:40:01.920Z",
            "finished_at": "2026-11-27T15:40:11.920Z",
        },
        {"step": "notify", "status": "skipped", "message": "when.branch ['main']: no"},
    ],
}


def test_render_step_summary():
    md = orchestrate.render_step_summary(RECORD)
    assert md.startswith("### orchestrate: deploy failed\n")
    assert (
        "1 passed, 1 failed, 1 skipped · run `20261127T154000123Z-1a2b3c` · "
        "[job log](https://github.com/o/r/actions/runs/1)" in md
    )
    assert "| unit tests | passed | 1.9s |  |" in md
    assert "| ui: smoke \\| e2e | **failed** | 10.0s | login &gt; works; cart &lt;b&gt; |" in md
    assert "| notify | skipped |  | when.branch ['main']: no |" in md
    assert "```mermaid\ngantt\n    title deploy\n    dateFormat x\n" in md
    assert "    unit tests :done, s0, 1795794000000, 1795794001920\n" in md
    assert "    ui  smoke | e2e :crit, s1, 1795794001920, 1795794011920\n" in md
    assert "notify :" not in md


def test_append_step_summary(tmp_path):
    target = tmp_path / "summary.md"
    target.write_text("before\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(target)}
    assert orchestrate.append_step_summary(env, RECORD) == target
    assert target.read_text().startswith("before\n### orchestrate: deploy failed")
    assert orchestrate.append_step_summary({"GITHUB_STEP_SUMMARY": str(target)}, RECORD) is None


# --- issue 12: step output cannot forge workflow commands --------------------------------

_COMMAND_RE = re.compile(r"::([A-Za-z0-9_.-]+)(?: ([^:]*))?::(.*)\Z", re.DOTALL)


def github_runner(stdout: str) -> dict[str, Any]:
    """What the GitHub Actions runner makes of a job log, line by line as it reads it
    (actions/runner ActionCommandManager): a line that starts with '::' after leading
    spaces is a command; `::stop-commands::TOKEN` stops all processing until a command
    named TOKEN; `::group::`/`::endgroup::` nest the log; `::add-mask::` hides a value."""
    commands: list[tuple[str, str, str]] = []
    masks: list[str] = []
    depth, stopped = 0, None
    for line in stdout.split("\n"):
        match = _COMMAND_RE.match(line.lstrip())
        if match is None:
            continue
        name, props, data = match.group(1), match.group(2) or "", match.group(3)
        if stopped is not None:
            if name == stopped:
                stopped = None
            continue
        if name == "stop-commands":
            stopped = data
        elif name == "group":
            depth += 1
        elif name == "endgroup":
            depth -= 1
        elif name == "add-mask":
            masks.append(data)
        else:
            commands.append((name, props, data))
    return {"commands": commands, "masks": masks, "open_groups": depth, "stopped": stopped}


PLUGIN_FORGER = """
def execute(step):
    raise RuntimeError("boom\\n::error::forged by a message\\n\\x1b]0;owned\\x07\\x1b[2Jdone")
"""


def forging_project(project: Project) -> None:
    project.write("integrations/forge_runner.py", PLUGIN_FORGER)
    project.workflow(
        "ci",
        [
            {"name": "no newline", "type": "command", "run": "printf 'last line without newline'"},
            {"name": "forged message", "type": "forge", "continue_on_error": True},
            {
                "name": "tail",
                "type": "command",
                "run": "echo '::error::forged by a tail'; printf '\\033[31mred\\007'; exit 4",
            },
        ],
        env={"API_TOKEN": "${API_TOKEN:-}"},
    )


def test_github_runner_sees_only_orchestrates_commands(project: Project, tmp_path: Path) -> None:
    forging_project(project)
    for quiet in ((), ("--quiet",)):
        env = github_env(tmp_path)
        result = project.run("run", "ci", *quiet, env=env)
        assert result.returncode == 1, result.stderr
        seen = github_runner(result.stdout)
        assert seen["stopped"] is None and seen["open_groups"] == 0, result.stdout
        assert seen["masks"][0] == SECRET
        # the annotations orchestrate means, and nothing a step forged
        assert [(name, props) for name, props, _ in seen["commands"]] == [
            ("warning", "title=forged message failed (continue_on_error)"),
            ("error", "title=tail failed"),
        ], quiet
        # the message is one escaped line: its "::error::" is text, its escapes are gone
        assert seen["commands"][0][2] == (
            "integrations/forge_runner.py: RuntimeError: boom%0A::error::forged by a message%0Adone"
        )
        assert seen["commands"][1][2] == "command exited with code 4"
        assert re.search(
            r"^  failed \(allowed\) in \d+\.\ds: integrations/forge_runner\.py: RuntimeError: "
            r"boom%0A::error::forged by a message%0Adone$",
            result.stdout,
            re.M,
        )
        if not quiet:
            # the fence closes on a line of its own although the step's output did not end a line
            assert "last line without newline\n::orchestrate-" in result.stdout


def test_no_raw_escape_from_a_step_through_orchestrates_own_lines(project: Project) -> None:
    forging_project(project)
    quiet = project.run("run", "ci", "--quiet")
    assert quiet.returncode == 1
    assert "\x1b" not in quiet.stdout and "\x07" not in quiet.stdout  # only orchestrate's lines here
    assert "boom\n::error::forged by a message\n]0;owned" not in quiet.stdout
    loud = project.run("run", "ci")
    # the live stream is the step's own, byte for byte; orchestrate's lines stay clean
    assert "\x1b[31mred\x07" in loud.stdout
    own = [line for line in loud.stdout.splitlines() if line.startswith(("  failed", "  passed", "ci: "))]
    assert own and not any("\x1b" in line or "\x07" in line for line in own)


def test_step_summary_shows_allowed_failures_as_allowed(project: Project, tmp_path: Path) -> None:
    project.workflow(
        "ci",
        [
            {"name": "flaky", "type": "command", "run": "exit 1", "continue_on_error": True},
            {"name": "broken", "type": "command", "run": "exit 2"},
        ],
    )
    env = github_env(tmp_path)
    result = project.run("run", "ci", env=env)
    assert result.returncode == 1
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    record = project.last_record()
    assert "0 passed, 2 failed (1 allowed), 0 skipped · run" in summary
    assert "0 passed, 2 failed (1 allowed), 0 skipped in" in result.stdout.splitlines()[-1]
    assert re.search(r"^\| flaky \| failed \(allowed\) \| \d+\.\ds \| command exited with code 1 \|$", summary, re.M)
    assert re.search(r"^\| broken \| \*\*failed\*\* \|", summary, re.M)
    assert re.search(r"^    flaky :s0, \d{13}, \d{13}$", summary, re.M)
    assert re.search(r"^    broken :crit, s1, \d{13}, \d{13}$", summary, re.M)
    assert record["log"][0]["allowed_failure"] is True


def test_gitlab_section_end_starts_a_line(project: Project) -> None:
    project.workflow("ci", [{"name": "unit", "type": "command", "run": "printf 'no newline'"}])
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    env.update(CI="true", GITLAB_CI="true", PYTHONPATH=str(REPO))  # this checkout's orchestrate
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(project.root), "run", "ci"],
        check=False,
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert b"no newline\n\x1b[0Ksection_end:" in result.stdout


def test_run_git_takes_no_config_or_loader_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a").write_text("a")
    git(repo, "add", "a")
    git(repo, "commit", "-qm", "one")
    marker = tmp_path / "fsmonitor-ran"
    # what `{"vars": {...}}` once made orchestrate's own `git status` run
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.fsmonitor")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch {marker}; false")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor'='touch {marker}'")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_EXEC_PATH", str(tmp_path))
    monkeypatch.setenv("LD_PRELOAD", str(tmp_path / "evil.so"))

    assert orchestrate.run_git(["status", "--porcelain"], repo) == ""

    assert not marker.exists()
    env = orchestrate.git_call_environment(
        {
            "HOME": "/h",
            "PATH": "/bin",
            "LC_ALL": "C",
            "SSH_AUTH_SOCK": "/s",
            "GIT_CONFIG_COUNT": "1",
            "GIT_DIR": "/x",
            "PYTHONPATH": "/p",
            "LD_PRELOAD": "/e.so",
            "GIT_SSH_COMMAND": "ssh -i k",
        }
    )
    assert env == {
        "HOME": "/h",
        "PATH": "/bin",
        "LC_ALL": "C",
        "SSH_AUTH_SOCK": "/s",
        "GIT_SSH_COMMAND": "ssh -i k",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
    }
