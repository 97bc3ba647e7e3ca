"""The pre-push hook with real git: a work repository, a bare remote, `orchestrate hook install`
and real `git push`es. The hook runs the installed `orchestrate` console script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CI_VARIABLES, orchestrate_bin, tool_path

import orchestrate

REPO = Path(__file__).resolve().parent.parent
Z40 = "0" * 40
Z64 = "0" * 64
A = "a" * 40
B = "b" * 40


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a developer's shell: no CI, no git hook variables, no
    ORCHESTRATE_* left over, git configured only by a private global file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_", "ORCHESTRATE_", "PRE_COMMIT")) and k not in CI_VARIABLES
    }
    env.update(
        HOME=str(tmp / "home"),
        GIT_CONFIG_GLOBAL=str(tmp / "gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
        PYTHONPATH=str(REPO),  # this checkout's orchestrate.py
        PATH=f"{Path(orchestrate_bin()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


class GitProject:
    """A repository that is also an orchestrate project, with a bare remote `origin`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "home").mkdir(exist_ok=True)
        (tmp / "gitconfig").write_text(
            "[user]\n\tname = Test\n\temail = test@example.com\n"
            "[init]\n\tdefaultBranch = main\n"
            "[advice]\n\tdetachedHead = false\n"
        )
        self.env = clean_env(tmp)
        self.remote = tmp / "remote.git"
        self.root = tmp / "work"
        self.out = tmp / "out"
        self.out.mkdir()
        self.git_in(tmp, "init", "-q", "--bare", str(self.remote))
        self.git_in(tmp, "init", "-q", str(self.root))
        self.git("remote", "add", "origin", str(self.remote))
        self.write("runs/.gitignore", "*\n!.gitignore\n")
        self.write("src/app.py", "print('app')\n")
        self.workflow([self.record_step("check")])
        self.commit("initial")

    # --- helpers ------------------------------------------------------------------------
    def git_in(self, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *args],
            check=False,
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, f"git {args}: {result.stderr}"
        return result

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.git_in(self.root, *args, check=check)

    def head(self, ref: str = "HEAD", cwd: Path | None = None) -> str:
        return self.git_in(cwd or self.root, "rev-parse", ref).stdout.strip()

    def push(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        full = {**self.env, **env}
        return subprocess.run(
            ["git", "push", "origin", *args],
            check=False,
            cwd=cwd or self.root,
            env=full,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=180,
        )

    def remote_has(self, commit: str) -> bool:
        return self.git_in(self.remote, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def commit(self, message: str, **files: str) -> str:
        for relative, text in files.items():
            self.write(relative.replace("__", "/"), text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.head()

    def record_step(self, name: str, **extra: Any) -> dict[str, Any]:
        """A step that appends its name and environment to out/, and fails when
        out/fail-<name> exists."""
        script = (
            f'echo "{name}" >> "{self.out}/order"; env > "{self.out}/env-{name}"; test ! -e "{self.out}/fail-{name}"'
        )
        return {"name": name, "type": "command", "run": script, **extra}

    def workflow(self, steps: list[dict[str, Any]], name: str = "pre-push") -> None:
        self.write(f"workflows/{name}.json", json.dumps({"steps": steps}, indent=1))

    def orchestrate(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [orchestrate_bin(), *args],
            check=False,
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "runs").glob("*.json"))]

    def ran(self) -> list[str]:
        order = self.out / "order"
        return order.read_text().splitlines() if order.exists() else []

    def step_env(self, name: str) -> dict[str, str]:
        lines = (self.out / f"env-{name}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def reset_out(self) -> None:
        for path in self.out.iterdir():
            path.unlink()


@pytest.fixture
def gp(tmp_path: Path) -> GitProject:
    project = GitProject(tmp_path)
    result = project.orchestrate("hook", "install")
    assert result.returncode == 0, result.stderr
    return project


# --- install, uninstall, status ---------------------------------------------------------


def test_install_says_where_and_status_says_what_git_runs(gp: GitProject) -> None:
    status = gp.orchestrate("hook", "status")
    assert status.returncode == 0
    hook = gp.root / ".git" / "hooks" / "pre-push"
    assert status.stdout.splitlines()[0] == f"git runs {hook}: orchestrate workflow 'pre-push'"
    assert os.access(hook, os.X_OK)
    assert hook.read_text() == (REPO / "hooks" / "pre-push").read_text()
    info = json.loads(gp.orchestrate("hook", "status", "--json").stdout)
    assert info["state"] == "orchestrate" and info["legacy"] is None


def test_install_message_and_workflow_option(tmp_path: Path) -> None:
    gp = GitProject(tmp_path)
    result = gp.orchestrate("hook", "install", "--workflow", "quick")
    hook = gp.root / ".git" / "hooks" / "pre-push"
    assert result.stdout.splitlines() == [
        f"installed pre-push hook at {hook} (workflow 'quick')",
        "skip it for one push with: git push --no-verify (or ORCHESTRATE_SKIP=1 git push)",
    ]
    gp.workflow([gp.record_step("quick-step")], name="quick")
    assert gp.push("main").returncode == 0
    assert gp.ran() == ["quick-step"]


def test_shipped_hook_is_the_installed_one_and_shellcheck_clean() -> None:
    assert (REPO / "hooks" / "pre-push").read_text() == orchestrate.render_hook()
    assert os.access(REPO / "hooks" / "pre-push", os.X_OK)
    result = subprocess.run(
        [tool_path("shellcheck"), "-s", "sh", str(REPO / "hooks" / "pre-push")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_unknown_hook_type(gp: GitProject) -> None:
    result = gp.orchestrate("hook", "install", "--hook", "pre-pushh")
    assert result.returncode == 2
    assert result.stderr == (
        "orchestrate: error: hook 'pre-pushh': orchestrate installs only pre-push (did you mean 'pre-push'?)\n"
    )


def test_outside_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = subprocess.run(
        [orchestrate_bin(), "--root", str(plain), "hook", "install"],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "not inside a git repository" in result.stderr and "git init" in result.stderr


# --- pushes --------------------------------------------------------------------------


def test_push_passes_and_is_recorded(gp: GitProject) -> None:
    head = gp.head()
    result = gp.push("main")
    assert result.returncode == 0, result.stderr
    assert gp.remote_has(head)
    assert gp.ran() == ["check"]
    record = gp.records()[-1]
    assert record["status"] == "completed"
    trigger = record["trigger"]
    assert trigger["source"] == "pre-push" and trigger["branch"] == "main"
    assert trigger["push"] == {
        "remote": "origin",
        "url": str(gp.remote),
        "refs": [
            {"local_ref": "refs/heads/main", "local_oid": head, "remote_ref": "refs/heads/main", "remote_oid": Z40}
        ],
    }
    env = gp.step_env("check")
    assert env["ORCHESTRATE_PUSH_REMOTE"] == "origin"
    assert env["ORCHESTRATE_TO_REF"] == head and env["ORCHESTRATE_FROM_REF"] == ""
    assert "GIT_PREFIX" not in env  # exported by git for the hook, not for steps
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_failing_workflow_rejects_push_and_no_verify_bypasses(gp: GitProject) -> None:
    (gp.out / "fail-check").touch()
    head = gp.head()
    result = gp.push("main")
    assert result.returncode != 0
    assert "pre-push: 0 passed, 1 failed, 0 skipped" in result.stdout + result.stderr
    assert "failed to push some refs" in result.stderr
    assert not gp.remote_has(head)
    assert gp.records()[-1]["status"] == "failed"
    result = gp.push("--no-verify", "main")
    assert result.returncode == 0
    assert gp.remote_has(head)
    assert gp.ran() == ["check"]  # the hook ran once, for the rejected push


def test_up_to_date_tag_only_and_deletion_only_pushes_are_skipped(gp: GitProject) -> None:
    assert gp.push("main").returncode == 0
    assert gp.push("main:other").returncode == 0  # a branch to delete below
    runs = len(gp.records())
    result = gp.push("main")
    assert result.returncode == 0
    assert (
        "orchestrate pre-push: nothing to check: nothing to push (everything up to date)"
        in result.stdout + result.stderr
    )
    gp.git("tag", "v1")
    result = gp.push("v1")
    assert result.returncode == 0
    assert "nothing to check: push only carries tags (v1)" in result.stdout + result.stderr
    result = gp.push(":other")
    assert result.returncode == 0
    assert "nothing to check: push only deletes refs/heads/other" in result.stdout + result.stderr
    assert len(gp.records()) == runs  # no run was recorded for them
    assert gp.ran() == ["check"]


def test_push_of_commits_the_remote_has_is_skipped(gp: GitProject) -> None:
    assert gp.push("main").returncode == 0
    result = gp.push("main:copy")
    assert result.returncode == 0
    assert "nothing to check: push carries no new commits" in result.stdout + result.stderr
    assert gp.ran() == ["check"]


def _recording_shims(folder: Path, names: tuple[str, ...]) -> Path:
    """Programs that only record that they were started (in folder/started)."""
    folder.mkdir()
    for name in names:
        shim = folder / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder}/started"\nexit 0\n')
        shim.chmod(0o755)
    return folder


@pytest.mark.parametrize(
    "lines,reason",
    [
        ("", "nothing to push (everything up to date)"),
        (
            f"(delete) {Z40} refs/heads/old {A}\n(delete) {Z64} refs/heads/older {B}{B[:24]}\n",
            "push only deletes refs/heads/old, refs/heads/older",
        ),
        (f"refs/tags/v1 {A} refs/tags/v1 {Z40}\n(delete) {Z40} refs/tags/v0 {B}\n", "push only carries tags (v1)"),
        (
            f"refs/heads/main {A} refs/heads/main {A}\n",
            "push carries no new commits (every pushed commit is on the remote already)",
        ),
    ],
)
def test_a_push_with_nothing_to_check_starts_no_program(tmp_path: Path, lines: str, reason: str) -> None:
    """Issue 15: the hook script ends such a push with shell builtins alone: no orchestrate
    (no Python), no git, not even cat. PATH holds only programs that record being started."""
    shims = _recording_shims(tmp_path / "bin", ("orchestrate", "git", "cat", "sed", "printf"))
    hook = tmp_path / "pre-push"
    hook.write_text(orchestrate.PRE_PUSH_HOOK)
    hook.chmod(0o755)
    done = subprocess.run(
        ["/bin/sh", str(hook), "origin", "/remote.git"],
        input=lines,
        capture_output=True,
        text=True,
        env={"PATH": str(shims), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"orchestrate pre-push: nothing to check: {reason}\n", "")
    assert not (shims / "started").exists()


@pytest.mark.parametrize(
    "lines",
    [
        f"refs/heads/main {A} refs/heads/main {B}\n",  # new commits
        f"(delete) {Z40} refs/heads/old {A}\nrefs/heads/main {A} refs/heads/main {Z40}\n",  # and a new branch
        "garbage\n",
        f"refs/heads/main {A} refs/heads/main\n",
        f"refs/heads/main x{A} refs/heads/main {B} extra\n",
    ],
)
def test_the_hook_hands_anything_else_to_orchestrate_unchanged(tmp_path: Path, lines: str) -> None:
    """What may need a check, or is not what git writes, reaches orchestrate line for line,
    with the workflow's name left to git config (read by orchestrate with its other git calls)."""
    record = tmp_path / "argv"
    shim = tmp_path / "bin" / "orchestrate"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\ncat > "{record}.stdin"\n')
    shim.chmod(0o755)
    hook = tmp_path / "pre-push"
    hook.write_text(orchestrate.PRE_PUSH_HOOK)
    hook.chmod(0o755)
    env = {"PATH": f"{shim.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(hook), "origin", "/remote.git"], input=lines, capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == [
        "run",
        "pre-push",
        "--workflow-from-git-config",
        "--git-hook",
        "pre-push",
        "--push-remote",
        "origin",
        "--push-url",
        "/remote.git",
    ]
    assert [line for line in (tmp_path / "argv.stdin").read_text().splitlines() if line] == lines.splitlines()
    done = subprocess.run(
        [str(hook), "origin", "/remote.git"],
        input=lines,
        capture_output=True,
        text=True,
        env={**env, "ORCHESTRATE_PRE_PUSH_WORKFLOW": "mine"},
        timeout=60,
    )
    assert record.read_text().splitlines()[:3] == ["run", "mine", "--git-hook"]


def test_a_pushed_commit_costs_orchestrate_three_git_calls(gp: GitProject) -> None:
    """Issue 15: status (commit, branch, dirty, changed and untracked files), config (the
    workflow's name) and one rev-list per pushed ref, started together; a `when` gate adds the
    diff it reads. (0.2.0 ran git config from the hook and ten git calls from orchestrate.)
    orchestrate is run as the hook runs it, with a `git` first on PATH that logs each call
    (under `git push`, git's own exec path comes first)."""
    real_git = shutil.which("git", path=gp.env["PATH"])
    log = gp.tmp / "git-calls"
    wrapper = gp.tmp / "wrapped" / "git"
    wrapper.parent.mkdir()
    # the subcommand (after `-C DIR`, as orchestrate starts git where it is not in that folder)
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = -C ]; then echo "$3"; else echo "$1"; fi >> "{log}"\nexec "{real_git}" "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**gp.env, "PATH": f"{wrapper.parent}{os.pathsep}{gp.env['PATH']}"}
    assert gp.push("main").returncode == 0

    def hook_run(workflow_steps: list[dict[str, Any]]) -> list[str]:
        gp.workflow(workflow_steps)
        parent = gp.head()
        head = gp.commit("more", **{"src__more.py": f"x = '{parent}'\n"})
        log.unlink(missing_ok=True)
        done = subprocess.run(
            [
                orchestrate_bin(),
                "run",
                "pre-push",
                "--workflow-from-git-config",
                "--git-hook",
                "pre-push",
                "--push-remote",
                "origin",
                "--push-url",
                str(gp.remote),
            ],
            cwd=gp.root,
            env=env,
            input=f"refs/heads/main {head} refs/heads/main {parent}\n",
            text=True,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "orchestrate: warning" not in done.stderr, done.stderr
        gp.git("update-ref", "refs/remotes/origin/main", head)
        return sorted(log.read_text().split())

    assert hook_run([gp.record_step("check")]) == ["config", "rev-list", "status"]
    assert hook_run([gp.record_step("gated", when={"changed": ["src/**"]})]) == ["config", "diff", "rev-list", "status"]
    assert gp.ran() == ["check", "check", "gated"]


def test_foreign_hook_is_kept_chained_and_restored(tmp_path: Path) -> None:
    gp = GitProject(tmp_path)
    hook = gp.root / ".git" / "hooks" / "pre-push"
    foreign = (
        f'#!/bin/sh\necho legacy >> "{gp.out}/order"\n'
        f'echo "$1 $2" > "{gp.out}/legacy-args"\ncat > "{gp.out}/legacy-stdin"\n'
    )
    hook.write_text(foreign)
    hook.chmod(0o755)
    assert json.loads(gp.orchestrate("hook", "status", "--json").stdout)["state"] == "foreign"
    refused = gp.orchestrate("hook", "install")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"orchestrate: error: {hook}: a pre-push hook orchestrate did not write is already "
        "there; rerun with --force to keep it as pre-push.legacy and run it before "
        "orchestrate, or move it away\n"
    )
    assert hook.read_text() == foreign
    forced = gp.orchestrate("hook", "install", "--force")
    assert forced.returncode == 0
    assert "the previous hook is kept as pre-push.legacy and runs first" in forced.stdout
    assert "pre-push.legacy first, then orchestrate" in gp.orchestrate("hook", "status").stdout
    head = gp.head()
    assert gp.push("main").returncode == 0
    assert gp.ran() == ["legacy", "check"]
    assert (gp.out / "legacy-args").read_text() == f"origin {gp.remote}\n"
    assert (gp.out / "legacy-stdin").read_text() == (f"refs/heads/main {head} refs/heads/main {Z40}\n")
    assert gp.records()[-1]["trigger"]["push"]["refs"][0]["local_oid"] == head
    removed = gp.orchestrate("hook", "uninstall")
    assert removed.stdout == "removed orchestrate's pre-push hook; restored the previous hook from pre-push.legacy\n"
    assert hook.read_text() == foreign
    assert not (hook.parent / "pre-push.legacy").exists()
    again = gp.orchestrate("hook", "uninstall")
    assert again.returncode == 2 and "not written by orchestrate; left as it is" in again.stderr


def test_failing_legacy_hook_stops_the_push_before_orchestrate(tmp_path: Path) -> None:
    gp = GitProject(tmp_path)
    hook = gp.root / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho 'legacy says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    assert gp.orchestrate("hook", "install", "--force").returncode == 0
    result = gp.push("main")
    assert result.returncode != 0 and "legacy says no" in result.stderr
    assert gp.ran() == [] and gp.records() == []


def test_core_hooks_path(tmp_path: Path) -> None:
    gp = GitProject(tmp_path)
    gp.git("config", "core.hooksPath", ".githooks")
    result = gp.orchestrate("hook", "install")
    assert result.stdout.startswith(f"installed pre-push hook at {gp.root / '.githooks' / 'pre-push'}")
    assert not (gp.root / ".git" / "hooks" / "pre-push").exists()
    status = gp.orchestrate("hook", "status").stdout
    assert f"hooks folder: {gp.root / '.githooks'} (core.hooksPath = .githooks)" in status
    assert gp.push("main").returncode == 0
    assert gp.ran() == ["check"]


def test_git_worktree(gp: GitProject) -> None:
    worktree = gp.tmp / "wt"
    gp.git("worktree", "add", "-q", str(worktree), "-b", "side")
    status = subprocess.run(
        [orchestrate_bin(), "hook", "status"],
        check=False,
        cwd=worktree,
        env=gp.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert status.stdout.startswith(f"git runs {gp.root / '.git' / 'hooks' / 'pre-push'}")
    (worktree / "src" / "side.py").write_text("x = 1\n")
    gp.git_in(worktree, "add", "-A")
    gp.git_in(worktree, "commit", "-qm", "side")
    result = gp.push("side", cwd=worktree)
    assert result.returncode == 0, result.stderr
    assert gp.ran() == ["check"]
    # the run belongs to the worktree's checkout: its root, its branch
    records = [json.loads(p.read_text()) for p in (worktree / "runs").glob("*.json")]
    assert [r["trigger"]["branch"] for r in records] == ["side"]


def test_orchestrate_missing_from_path(gp: GitProject) -> None:
    path = "/usr/bin:/bin"
    result = gp.push("main", PATH=path)
    assert result.returncode != 0
    assert (
        "orchestrate pre-push: orchestrate not found (ORCHESTRATE_BIN, PATH, ~/.local/bin): "
        "install it with 'pipx install orchestrate-cli', or skip this check with "
        "'git push --no-verify'"
    ) in result.stderr
    assert not gp.remote_has(gp.head())
    result = gp.push("main", PATH=path, ORCHESTRATE_ALLOW_MISSING="1")
    assert result.returncode == 0 and "push allowed" in result.stderr
    assert gp.ran() == []


def test_orchestrate_found_by_orchestrate_bin_and_local_bin(gp: GitProject) -> None:
    result = gp.push("main", PATH="/usr/bin:/bin", ORCHESTRATE_BIN=orchestrate_bin())
    assert result.returncode == 0, result.stderr
    local_bin = gp.tmp / "home" / ".local" / "bin"
    local_bin.mkdir(parents=True)
    (local_bin / "orchestrate").symlink_to(orchestrate_bin())
    gp.commit("second", **{"src__b.py": "b = 2\n"})
    result = gp.push("main", PATH="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert gp.ran() == ["check", "check"]


def test_workflow_from_git_config_and_environment(gp: GitProject) -> None:
    gp.workflow([gp.record_step("configured")], name="configured")
    gp.workflow([gp.record_step("from-env")], name="from-env")
    gp.git("config", "orchestrate.prePushWorkflow", "configured")
    assert "orchestrate workflow 'configured'" in gp.orchestrate("hook", "status").stdout
    assert gp.push("main").returncode == 0
    gp.commit("second", **{"src__b.py": "b = 2\n"})
    assert gp.push("main", ORCHESTRATE_PRE_PUSH_WORKFLOW="from-env").returncode == 0
    assert gp.ran() == ["configured", "from-env"]


# --- ORCHESTRATE_SKIP ------------------------------------------------------------------


def test_orchestrate_skip_all_keeps_required_steps(gp: GitProject) -> None:
    gp.workflow([gp.record_step("lint"), gp.record_step("secrets scan", required=True)])
    (gp.out / "fail-lint").touch()
    result = gp.push("main", ORCHESTRATE_SKIP="1")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "orchestrate: ORCHESTRATE_SKIP=1: skipping lint" in output
    assert "ORCHESTRATE_SKIP: step 'secrets scan' is required and runs anyway" in output
    assert gp.ran() == ["secrets scan"]
    record = gp.records()[-1]
    assert [(e["step"], e["status"], e["message"]) for e in record["log"]] == [
        ("lint", "skipped", "ORCHESTRATE_SKIP=1"),
        ("secrets scan", "passed", ""),
    ]
    junit = (gp.root / record["junit"]).read_text()
    assert '<skipped message="ORCHESTRATE_SKIP=1"' in junit


def test_orchestrate_skip_named_steps(gp: GitProject) -> None:
    gp.workflow([gp.record_step("lint"), gp.record_step("unit tests"), gp.record_step("e2e")])
    result = gp.push("main", ORCHESTRATE_SKIP="lint, e2e,lnt")
    assert result.returncode == 0
    assert gp.ran() == ["unit tests"]
    assert "ORCHESTRATE_SKIP: no step 'lnt' in this workflow (did you mean 'lint'?)" in result.stderr


# --- when.changed and when.branch ---------------------------------------------------


def gated_workflow(gp: GitProject) -> None:
    gp.workflow(
        [
            gp.record_step("python", when={"changed": ["*.py"]}),
            gp.record_step("docs", when={"changed": ["docs/**"]}),
            gp.record_step("main only", when={"branch": ["main"]}),
            gp.record_step("always"),
        ]
    )


def test_changed_gating_on_existing_branch(gp: GitProject) -> None:
    gated_workflow(gp)
    gp.commit("gated workflow")
    assert gp.push("main").returncode == 0  # the first push: every file is new
    assert gp.ran() == ["python", "main only", "always"]
    gp.reset_out()
    base = gp.head()
    tip = gp.commit("docs", **{"docs__guide.md": "# guide\n"})
    assert gp.push("main").returncode == 0
    assert gp.ran() == ["docs", "main only", "always"]
    record = gp.records()[-1]
    python = record["log"][0]
    assert python["status"] == "skipped"
    assert python["message"] == ("when.changed ['*.py']: no changed file matches (1 changed, pushed to origin: main)")
    assert record["trigger"]["compare"]["from_ref"] == base
    env = gp.step_env("docs")
    assert (env["ORCHESTRATE_FROM_REF"], env["ORCHESTRATE_TO_REF"]) == (base, tip)
    junit = (gp.root / record["junit"]).read_text()
    assert (
        "<skipped message=\"when.changed ['*.py']: no changed file matches (1 changed, pushed to origin: main)\""
    ) in junit.replace("&apos;", "'")


def test_changed_gating_on_new_branch_counts_only_commits_not_on_the_remote(gp: GitProject) -> None:
    gated_workflow(gp)
    gp.commit("docs on main", **{"docs__a.md": "a\n"})
    assert gp.push("main").returncode == 0
    gp.reset_out()
    gp.git("checkout", "-q", "-b", "feature/x")
    gp.commit("code", **{"src__deep__mod.py": "m = 1\n"})
    result = gp.push("feature/x")
    assert result.returncode == 0, result.stderr
    # docs/a.md is on the remote already: only the feature's own commit counts
    assert gp.ran() == ["python", "always"]
    log = {e["step"]: e for e in gp.records()[-1]["log"]}
    assert log["main only"]["message"] == "when.branch ['main']: branch 'feature/x' does not match"
    assert log["docs"]["message"].startswith("when.changed ['docs/**']: no changed file matches")


# --- what is pushed: the warning, and checking the pushed commit in its own worktree -------

BROKEN = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


def calc_step(**extra: Any) -> dict[str, Any]:
    """A unit test of src/calc.py's add(), as a developer's pre-push check would be."""
    code = (
        "import sys; sys.path.insert(0, 'src'); from calc import add; "
        "assert add(2, 2) == 4, 'add(2, 2) is %s' % add(2, 2); print('add works')"
    )
    return {"name": "unit tests", "type": "command", "run": ["python3", "-c", code], **extra}


def broken_commit_fixed_in_the_working_tree(gp: GitProject) -> str:
    gp.workflow([calc_step()])
    broken = gp.commit("add() with a bug", **{"src__calc.py": BROKEN})
    gp.write("src/calc.py", FIXED)  # fixed, but not committed
    return broken


def worktrees(gp: GitProject) -> list[str]:
    listed = gp.git("worktree", "list", "--porcelain").stdout
    return [line[len("worktree ") :] for line in listed.splitlines() if line.startswith("worktree ")]


def assert_no_worktree_left(gp: GitProject) -> None:
    assert worktrees(gp) == [str(gp.root)]
    assert sorted(os.listdir(gp.root / "runs" / ".worktrees")) == []


def test_hook_warns_in_one_line_when_the_working_tree_is_not_what_is_pushed(gp: GitProject) -> None:
    broken = broken_commit_fixed_in_the_working_tree(gp)
    gp.write("src/helpers.py", "x = 1\n")  # untracked, where a step looks (its cwd)
    gp.write("notes.txt", "mine\n")  # untracked, nowhere a step looks: not named
    gp.workflow([calc_step(), gp.record_step("in src", cwd="src")])
    gp.git("add", "workflows/pre-push.json")  # staged, not committed
    result = gp.push("main")
    assert result.returncode == 0, result.stderr  # the working tree passes: the warning says so
    warnings = [line for line in result.stderr.splitlines() if "orchestrate: warning" in line]
    assert warnings == [
        "orchestrate: warning: pre-push: the working tree is not what is pushed (modified or staged: "
        "src/calc.py, workflows/pre-push.json; untracked: src/helpers.py); the checks see the working tree: "
        'commit or stash first, or set "pre_push": {"checkout": "pushed"} in orchestrate.json to check '
        "the pushed commit"
    ]
    assert gp.remote_has(broken)


def test_hook_warns_when_the_pushed_branch_is_not_head(gp: GitProject) -> None:
    gp.git("branch", "other")
    gp.commit("on main only", **{"src__app.py": "print('main')\n"})
    other = gp.head("other")
    result = gp.push("other")
    assert result.returncode == 0, result.stderr
    assert (
        f"orchestrate: warning: pre-push: the working tree is not what is pushed (the pushed other "
        f"({other[:12]}) is not the checked-out HEAD ({gp.head()[:12]}); modified or staged: src/app.py)"
        in result.stderr
    )


def test_no_warning_when_the_working_tree_is_the_pushed_commit(gp: GitProject) -> None:
    gp.write("notes.txt", "untracked, used by no step\n")
    result = gp.push("main")
    assert result.returncode == 0 and "orchestrate: warning" not in result.stderr, result.stderr


def test_pushed_checkout_catches_a_broken_commit_fixed_but_not_committed(gp: GitProject) -> None:
    broken = broken_commit_fixed_in_the_working_tree(gp)
    gp.write("orchestrate.json", json.dumps({"pre_push": {"checkout": "pushed"}}))
    result = gp.push("main")
    assert result.returncode == 1, result.stdout + result.stderr
    assert not gp.remote_has(broken)
    record = gp.records()[-1]  # in the real runs/
    assert record["status"] == "failed"
    worktree = gp.root / "runs" / ".worktrees" / record["run_id"]
    assert (
        f"orchestrate: pre-push: checking main at {broken[:12]} in its own worktree runs/.worktrees/{record['run_id']}"
    ) in result.stdout
    assert "AssertionError: add(2, 2) is 0" in result.stdout
    assert record["trigger"]["checkout"] == {"commit": broken, "worktree": str(worktree), "shared": []}
    assert "orchestrate: warning" not in result.stderr
    assert_no_worktree_left(gp)
    assert (gp.root / "src" / "calc.py").read_text() == FIXED  # the developer's files untouched
    fixed = gp.commit("fix add()")
    result = gp.push("main")
    assert result.returncode == 0, result.stdout + result.stderr
    assert gp.remote_has(fixed)
    assert_no_worktree_left(gp)


def test_shared_paths_are_linked_into_the_worktree_and_survive_it(gp: GitProject) -> None:
    gp.write(".gitignore", ".venv/\nnode_modules/\n")
    gp.write(".venv/bin/tool", "#!/bin/sh\necho tool from the shared venv\n")
    os.chmod(gp.root / ".venv" / "bin" / "tool", 0o755)
    gp.workflow([{"name": "uses the venv", "type": "command", "run": ".venv/bin/tool"}])
    gp.write("orchestrate.json", json.dumps({"pre_push": {"checkout": "pushed", "share": [".venv", "node_modules"]}}))
    gp.commit("a step that needs the venv")
    result = gp.push("main")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tool from the shared venv" in result.stdout
    assert "; linked: .venv\n" in result.stdout
    assert (
        f"orchestrate: warning: pre_push.share 'node_modules': no such file or folder in {gp.root}; not linked"
    ) in result.stderr
    assert (gp.root / ".venv" / "bin" / "tool").is_file()  # removing the worktree kept the real one
    assert_no_worktree_left(gp)


def test_run_isolated_checks_head_not_the_working_tree(gp: GitProject) -> None:
    broken = broken_commit_fixed_in_the_working_tree(gp)
    plain = gp.orchestrate("run", "pre-push")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    isolated = gp.orchestrate("run", "pre-push", "--isolated")
    assert isolated.returncode == 1, isolated.stdout + isolated.stderr
    assert f"checking HEAD at {broken[:12]} in its own worktree" in isolated.stdout
    assert_no_worktree_left(gp)


def test_workflow_missing_from_the_pushed_commit(gp: GitProject) -> None:
    gp.workflow([gp.record_step("new")], name="quick")  # not committed
    result = gp.orchestrate("run", "quick", "--isolated")
    assert result.returncode == 2
    assert result.stderr == (
        f"orchestrate: error: workflows/quick.json is not in the commit being checked "
        f"(HEAD {gp.head()[:12]}): commit it, or run without --isolated / "
        '"pre_push": {"checkout": "pushed"}\n'
    )
    assert_no_worktree_left(gp)


def start_isolated_sleeper(gp: GitProject) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    started = gp.out / "started"
    gp.workflow([{"name": "slow", "type": "command", "run": f'touch "{started}"; sleep 60'}])
    gp.commit("a slow check")
    process = subprocess.Popen(
        [orchestrate_bin(), "run", "pre-push", "--isolated"],
        cwd=gp.root,
        env=gp.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    for _ in range(600):
        if started.exists():
            break
        time.sleep(0.05)
    assert started.exists(), "the step never started"
    [owner] = [json.loads(p.read_text()) for p in (gp.root / "runs" / ".worktrees").glob("*.json")]
    return process, owner


def test_ctrl_c_removes_the_worktree(gp: GitProject) -> None:
    process, _owner = start_isolated_sleeper(gp)
    assert len(worktrees(gp)) == 2
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert_no_worktree_left(gp)


def test_a_killed_run_leaves_a_worktree_the_next_run_removes(gp: GitProject) -> None:
    process, _owner = start_isolated_sleeper(gp)
    process.kill()
    process.communicate(timeout=60)
    [stale] = [Path(p) for p in worktrees(gp) if p != str(gp.root)]
    assert stale.parent == gp.root / "runs" / ".worktrees"
    gp.workflow([gp.record_step("quick")])
    gp.commit("quick again")
    result = gp.orchestrate("run", "pre-push", "--isolated")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"orchestrate: removed runs/.worktrees/{stale.name}, the worktree of a run that was killed" in result.stdout
    assert_no_worktree_left(gp)


def test_share_never_links_outside_the_worktree_through_a_committed_symlink(gp: GitProject, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (gp.root / "lib").symlink_to(outside)  # committed: a symlink leading out of the checkout
    gp.write("orchestrate.json", json.dumps({"pre_push": {"checkout": "pushed", "share": ["lib/venvs"]}}))
    gp.workflow([gp.record_step("check")])
    gp.commit("a symlinked lib")
    (gp.root / "lib").unlink()  # in the working tree, lib is a real folder again, with a venv
    gp.write("lib/venvs/tool", "mine\n")
    result = gp.orchestrate("run", "pre-push", "--isolated")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "orchestrate: warning: pre_push.share 'lib/venvs': leads out of the worktree through a symlink "
        "in the commit; not linked"
    ) in result.stderr
    assert list(outside.iterdir()) == []
    assert_no_worktree_left(gp)


def test_stale_cleanup_touches_only_its_own_entries(gp: GitProject) -> None:
    folder = gp.root / "runs" / ".worktrees"
    folder.mkdir(parents=True)
    (folder / "..json").write_text("{}")
    keep = folder / "README"
    keep.write_text("not an owner file\n")
    removed = orchestrate.clean_stale_worktrees(gp.root, gp.root / "runs")
    assert removed == [] and folder.is_dir() and keep.exists() and (folder / "..json").exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"pre_push": {"checkout": "pushd"}},
            "orchestrate.json: key 'pre_push.checkout' must be \"working-tree\" or \"pushed\", not 'pushd' "
            "(did you mean 'pushed'?)",
        ),
        (
            {"pre_push": {"share": ["../elsewhere"]}},
            "orchestrate.json: key 'pre_push.share' lists '../elsewhere': give a path inside the project, relative "
            'to it, such as ".venv"',
        ),
        (
            {"pre_push": {"share": ["/home/me/.venv"]}},
            "orchestrate.json: key 'pre_push.share' lists '/home/me/.venv': give a path inside the project, "
            'relative to it, such as ".venv"',
        ),
        (
            {"pre_push": {"chekout": "pushed"}},
            "orchestrate.json: pre_push: unknown key 'chekout' (did you mean 'checkout'?)",
        ),
    ],
)
def test_bad_pre_push_settings(gp: GitProject, settings: dict[str, Any], message: str) -> None:
    gp.write("orchestrate.json", json.dumps(settings))
    result = gp.orchestrate("run", "pre-push")
    assert result.returncode == 2
    assert result.stderr == f"orchestrate: error: {message}\n"


# --- stdin handling ---------------------------------------------------------------------


def test_git_hook_mode_rejects_garbage_on_stdin(gp: GitProject) -> None:
    result = subprocess.run(
        [orchestrate_bin(), "run", "pre-push", "--git-hook", "pre-push"],
        check=False,
        cwd=gp.root,
        env=gp.env,
        input="not a ref line\n",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        "--git-hook pre-push: stdin line 1 is not '<local ref> <local oid> <remote ref> <remote oid>': 'not a ref line'"
    ) in result.stderr
    assert gp.ran() == []


def test_without_git_hook_stdin_is_never_read(gp: GitProject) -> None:
    result = subprocess.run(
        [orchestrate_bin(), "run", "pre-push"],
        check=False,
        cwd=gp.root,
        env=gp.env,
        input="garbage that would fail parsing\n",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert gp.records()[-1]["trigger"]["source"] == "cli"


# === pure parts and git helpers, called directly ===

# --- parse_push_refs ---------------------------------------------------------------


def test_parse_push_refs_all_kinds():
    text = (
        f"refs/heads/main {A} refs/heads/main {B}\n"
        f"\n"
        f"(delete) {Z40} refs/heads/old {B}\n"
        f"refs/tags/v1 {A} refs/tags/v1 {Z40}\n"
    )
    push = orchestrate.parse_push_refs(text, "origin", "../r.git")
    assert [r.remote_ref for r in push.refs] == ["refs/heads/main", "refs/heads/old", "refs/tags/v1"]
    assert push.refs[1].is_deletion and not push.refs[0].is_deletion
    assert push.refs[2].is_tag and push.refs[2].is_new
    assert push.updates == (push.refs[0],)
    assert push.branches == ["main"]
    assert push.as_dict()["refs"][0] == {
        "local_ref": "refs/heads/main",
        "local_oid": A,
        "remote_ref": "refs/heads/main",
        "remote_oid": B,
    }


def test_parse_push_refs_sha256_zero():
    push = orchestrate.parse_push_refs(f"(delete) {Z64} refs/heads/x {'c' * 64}\n")
    assert push.refs[0].is_deletion


@pytest.mark.parametrize(
    "line",
    [
        "refs/heads/main abc refs/heads/main def",
        "only three fields here",
        f"refs/heads/main {A} refs/heads/main {B} extra",
    ],
)
def test_parse_push_refs_rejects_garbage(line):
    with pytest.raises(orchestrate.UsageError, match=r"stdin line 1 is not '<local ref> <local oid>"):
        orchestrate.parse_push_refs(line + "\n")


@pytest.mark.parametrize(
    "text, new, expected",
    [
        ("", True, "nothing to push (everything up to date)"),
        (
            f"(delete) {Z40} refs/heads/a {B}\n(delete) {Z40} refs/heads/b {B}\n",
            True,
            "push only deletes refs/heads/a, refs/heads/b",
        ),
        (f"refs/tags/v1 {A} refs/tags/v1 {Z40}\n", True, "push only carries tags (v1)"),
        (
            f"refs/tags/v1 {A} refs/tags/v1 {Z40}\n(delete) {Z40} refs/heads/b {B}\n",
            True,
            "push only carries tags (v1)",
        ),
        (
            f"refs/heads/main {A} refs/heads/copy {Z40}\n",
            False,
            "push carries no new commits (every pushed commit is on the remote already)",
        ),
        (f"refs/heads/main {A} refs/heads/main {B}\n", True, None),
    ],
)
def test_push_skip_reason(text, new, expected):
    assert orchestrate.push_skip_reason(orchestrate.parse_push_refs(text), lambda ref: new) == expected


# --- globs and gates -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path, pattern, expected",
    [
        ("a.py", "*.py", True),
        ("src/deep/a.py", "*.py", True),
        ("src/a.pyc", "*.py", False),
        ("src/a.py", "src/**", True),
        ("src/x/y/z.txt", "src/**", True),
        ("lib/src/a.py", "src/**", False),
        ("src/a.py", "src/*.py", True),
        ("src/x/a.py", "src/*.py", False),
        ("src/x/a.py", "src/**/*.py", True),
        ("src/a.py", "src/**/*.py", True),
        ("docs/index.md", "docs/", True),
        ("setup.py", "/setup.py", True),
        ("sub/setup.py", "/setup.py", False),
        ("a/b/Makefile", "**/Makefile", True),
        ("file1.txt", "file[0-9].txt", True),
        ("fileX.txt", "file[!0-9].txt", True),
        ("file1.txt", "file[!0-9].txt", False),
        ("a+b(c).txt", "a+b(c).txt", True),
        ("x.py", "?.py", True),
        ("xy.py", "?.py", False),
    ],
)
def test_path_matches(path, pattern, expected):
    assert orchestrate.path_matches(path, pattern) is expected


@pytest.mark.parametrize(
    "branch, pattern, expected",
    [
        ("main", "main", True),
        ("main", "refs/heads/main", True),
        ("mainline", "main", False),
        ("release/1.2", "release/*", True),
        ("release/1.2/hotfix", "release/*", False),
        ("release/1.2/hotfix", "release/**", True),
        ("feature-x", "feature-*", True),
    ],
)
def test_branch_matches(branch, pattern, expected):
    assert orchestrate.branch_matches(branch, pattern) is expected


def test_gate_reason():
    changes = orchestrate.ChangeSet(("src/a.py", "README.md"), "origin/main...HEAD", ("feat/x",))
    assert orchestrate.gate_reason({}, changes) is None
    assert orchestrate.gate_reason({"changed": ["*.py"]}, changes) is None
    assert orchestrate.gate_reason({"changed": ["docs/**"]}, changes) == (
        "when.changed ['docs/**']: no changed file matches (2 changed, origin/main...HEAD)"
    )
    assert orchestrate.gate_reason({"branch": ["feat/*"]}, changes) is None
    assert orchestrate.gate_reason({"branch": ["main", "release/*"]}, changes) == (
        "when.branch ['main', 'release/*']: branch 'feat/x' does not match"
    )
    unknown = orchestrate.ChangeSet(None, "", ())
    assert orchestrate.gate_reason({"changed": ["docs/**"]}, unknown) is None  # nothing to compare: runs
    assert "no branch (detached HEAD" in orchestrate.gate_reason({"branch": "main"}, unknown)


# --- ORCHESTRATE_SKIP ---------------------------------------------------------------


class S:
    def __init__(self, name, required=False):
        self.name, self.required = name, required


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, (False, [])),
        ("", (False, [])),
        ("0", (False, [])),
        ("false", (False, [])),
        ("1", (True, [])),
        ("true", (True, [])),
        ("ALL", (True, [])),
        ("lint", (False, ["lint"])),
        ("lint, e2e tests ,", (False, ["lint", "e2e tests"])),
    ],
)
def test_parse_skip_env(value, expected):
    assert orchestrate.parse_skip_env(value) == expected


def test_skip_env_plan_required_and_unknown():
    steps = [S("lint"), S("unit tests", required=True), S("e2e")]
    skipped, warnings = orchestrate.skip_env_plan("1", steps)
    assert skipped == {"lint": "ORCHESTRATE_SKIP=1", "e2e": "ORCHESTRATE_SKIP=1"}
    assert warnings == ["ORCHESTRATE_SKIP: step 'unit tests' is required and runs anyway"]
    skipped, warnings = orchestrate.skip_env_plan("lnt,e2e", steps)
    assert skipped == {"e2e": "ORCHESTRATE_SKIP=lnt,e2e"}
    assert warnings == ["ORCHESTRATE_SKIP: no step 'lnt' in this workflow (did you mean 'lint'?)"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stdout.strip()


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("GIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (tmp_path / "gitconfig").write_text("[user]\n\tname = T\n\temail = t@example.com\n[init]\n\tdefaultBranch = main\n")


# --- real git: changes, git_info --------------------------------------------------------


@pytest.fixture
def repo(tmp_path, git_env):
    remote = tmp_path / "remote.git"
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(tmp_path, "init", "-q", str(work))
    git(work, "remote", "add", "origin", str(remote))
    (work / "README.md").write_text("hi\n")
    (work / "src").mkdir()
    (work / "src" / "a.py").write_text("a = 1\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "one")
    return work


def commit(work, path, text, msg="c"):
    p = work / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    git(work, "add", path)
    git(work, "commit", "-qm", msg)
    return git(work, "rev-parse", "HEAD")


def test_git_info(repo):
    info = orchestrate.git_info(repo)
    assert info == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "branch": "main",
        "dirty": False,
        "changed": [],
        "prefix": "",
    }
    # issue 17: untracked files count (they change what the checks see); ignored ones and the
    # run records do not
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore logs")
    (repo / "x.log").write_text("x")
    (repo / "runs").mkdir()
    (repo / "runs" / "r.json").write_text("{}")
    assert orchestrate.git_info(repo, repo / "runs")["dirty"] is False
    (repo / "new.txt").write_text("x")
    assert orchestrate.git_info(repo, repo / "runs")["changed"] == ["new.txt"]
    assert orchestrate.git_info(repo)["dirty"] is True
    (repo / "new.txt").unlink()
    (repo / "README.md").write_text("changed\n")
    assert orchestrate.git_info(repo, repo / "runs")["changed"] == ["README.md"]
    assert orchestrate.git_info(repo)["dirty"] is True
    git(repo, "checkout", "-q", "--detach")
    assert orchestrate.git_info(repo)["branch"] is None
    assert orchestrate.git_info(repo.parent) == {}  # not a repository


def test_git_info_ignores_hook_git_dir(repo, monkeypatch, tmp_path):
    other = tmp_path / "other"
    git(tmp_path, "init", "-q", str(other))
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # what a hook may export
    assert orchestrate.git_info(repo)["commit"] == head


def test_push_changes_root_commit_new_branch(repo):
    head = git(repo, "rev-parse", "HEAD")
    push = orchestrate.parse_push_refs(f"refs/heads/main {head} refs/heads/main {Z40}", "origin", "u")
    assert orchestrate.push_skip_reason(push, lambda r: orchestrate.push_has_new_commits(repo, r)) is None
    changes = orchestrate.push_changes(repo, push)
    assert changes.files == ("README.md", "src/a.py")
    assert (changes.from_ref, changes.to_ref, changes.branches) == ("", head, ("main",))


def test_push_changes_existing_branch_and_new_branch(repo):
    git(repo, "push", "-q", "origin", "main")
    base = git(repo, "rev-parse", "HEAD")
    tip = commit(repo, "docs/guide.md", "g")
    push = orchestrate.parse_push_refs(f"refs/heads/main {tip} refs/heads/main {base}", "origin", "u")
    changes = orchestrate.push_changes(repo, push)
    assert changes.files == ("docs/guide.md",)
    assert (changes.from_ref, changes.to_ref) == (base, tip)
    # a new branch carries only the commits no remote ref has
    git(repo, "checkout", "-qb", "feat")
    tip2 = commit(repo, "src/b.py", "b")
    push = orchestrate.parse_push_refs(f"refs/heads/feat {tip2} refs/heads/feat {Z40}", "origin", "u")
    changes = orchestrate.push_changes(repo, push)
    assert changes.files == ("docs/guide.md", "src/b.py")
    assert changes.from_ref == base and changes.branches == ("feat",)


def test_push_of_known_commits_to_new_name_is_nothing_new(repo):
    git(repo, "push", "-q", "origin", "main")
    head = git(repo, "rev-parse", "HEAD")
    push = orchestrate.parse_push_refs(f"refs/heads/main {head} refs/heads/copy {Z40}", "origin", "u")
    assert orchestrate.push_skip_reason(push, lambda r: orchestrate.push_has_new_commits(repo, r)) == (
        "push carries no new commits (every pushed commit is on the remote already)"
    )


def test_compare_changes(repo):
    git(repo, "branch", "base")
    commit(repo, "src/c.py", "c")
    changes = orchestrate.compare_changes(repo, "base", "HEAD", branches=["main"])
    assert changes.files == ("src/c.py",) and changes.description == "base...HEAD"
    with pytest.raises(orchestrate.UsageError, match=r"--from-ref nope --to-ref HEAD: cannot compare"):
        orchestrate.compare_changes(repo, "nope")
    guessed = orchestrate.compare_changes(repo, "origin/nope", explicit=False)
    assert guessed.files is None and "fetch the full history" in guessed.description


# --- hook install --------------------------------------------------------------------


def test_render_hook_workflow_and_errors():
    text = orchestrate.render_hook("pre-push", "quick")
    assert "\ndefault_workflow=quick\n" in text and orchestrate.HOOK_ID in text
    with pytest.raises(
        orchestrate.UsageError, match=r"orchestrate installs only pre-push \(did you mean 'pre-push'\?\)"
    ):
        orchestrate.render_hook("pre-pushh")
    with pytest.raises(orchestrate.UsageError):
        orchestrate.render_hook("pre-push", "a b")


def test_install_uninstall_cycle_with_foreign_hook(repo):
    hooks = repo / ".git" / "hooks"
    foreign = hooks / "pre-push"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    foreign.chmod(0o755)
    assert orchestrate.hook_status(repo)["state"] == "foreign"
    with pytest.raises(orchestrate.UsageError, match=r"not write is already there; rerun with --force"):
        orchestrate.install_hook(repo)
    change = orchestrate.install_hook(repo, force=True)
    assert change.legacy == hooks / "pre-push.legacy"
    assert (hooks / "pre-push.legacy").read_text() == "#!/bin/sh\nexit 0\n"
    assert orchestrate.is_our_hook(foreign) and os.access(foreign, os.X_OK)
    status = orchestrate.hook_status(repo)
    assert status["state"] == "orchestrate" and status["legacy"]
    assert "pre-push.legacy first, then orchestrate workflow 'pre-push'" in status["summary"]
    # reinstalling our own hook needs no force and keeps the legacy one
    assert "kept as pre-push.legacy" in orchestrate.install_hook(repo, workflow="quick").message
    assert orchestrate.hook_status(repo)["workflow"] == "quick"
    change = orchestrate.uninstall_hook(repo)
    assert "restored the previous hook" in change.message
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"
    assert not (hooks / "pre-push.legacy").exists()
    with pytest.raises(orchestrate.UsageError, match="not written by orchestrate; left as it is"):
        orchestrate.uninstall_hook(repo)


def test_install_respects_core_hooks_path(repo):
    git(repo, "config", "core.hooksPath", ".githooks")
    change = orchestrate.install_hook(repo)
    assert change.path == repo / ".githooks" / "pre-push"
    status = orchestrate.hook_status(repo)
    assert status["core_hooks_path"] == ".githooks"
    assert status["hooks_dir"] == str(repo / ".githooks")


def test_install_in_worktree_uses_common_hooks(repo, tmp_path):
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(wt), "-b", "side")
    change = orchestrate.install_hook(wt)
    assert change.path == repo / ".git" / "hooks" / "pre-push"


def test_hooks_dir_outside_repo(tmp_path, git_env):
    with pytest.raises(orchestrate.UsageError, match="not inside a git repository"):
        orchestrate.hooks_dir(tmp_path)
