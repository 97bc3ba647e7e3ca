#!/usr/bin/env python3
"""Performance benchmark for orchestrate (issue 7): each figure against its baseline.

    python bench/run.py [--quick | --full] [--orchestrate CMD] [--json-out PATH]

Standard library only. It builds its own temporary projects (git repositories with
workflows/<name>.json of `command` steps running /bin/true) and measures, each against
a baseline in the same invocation, alternating the two (A B, then B A, ...) so that
drift on a noisy machine hits both alike:

1. fixed cost   `orchestrate --root P run one` vs `python -c pass` (the interpreter
                orchestrate runs on) and vs `pre-commit run --hook-stage pre-push` with
                one equivalent `language: system` hook; `--version` and `--help`.
   hook         the installed pre-push hook vs the orchestrate command it runs; the hook
                given a push of tags only (nothing to check) vs `python -c pass`; `git push`
                of a fresh commit to a local bare remote with orchestrate's hook, with
                lefthook's (its npm package, which ships the binary, installed into the bench
                cache) and with none, interleaved: what each hook adds.
2. per step     workflows of N /bin/true steps vs a bash script of N /bin/true lines, and
                the slope again while another process fdatasyncs a file in a loop.
   parallel     8 independent sleeping steps with --jobs 8 vs one such step (net of the
                fixed cost), and a chain's per-step cost vs the release before parallel
                steps (v0.1.0's orchestrate.py, taken from git).
                per-step cost at N = (t(N) - t(1)) / (N - 1), from medians: the fixed
                cost cancels. slope = per-step cost at the largest N; flatness = per-step
                cost at the largest N / at N = 10.
3. streaming    one step printing SIZE bytes of 80-byte lines vs the same pipeline
                through `tee FILE >/dev/null`. Throughput is net of each side's fixed
                cost (the same command printing 0 bytes); peak RSS from wait4(2).
4. history      a run's start-up, `runs --limit 20`, `runs --workflow W --limit 20` and
                `status ID` with 10 and 10,000 earlier runs (real runs, cloned under fresh
                sortable run ids); then a run that prunes thousands of them (keep_runs 300)
                vs one that prunes nothing.
5. globs        the glob matcher (issue 11) in the orchestrate interpreter: `when.changed`
                patterns against paths, base vs 10x the patterns and vs 10x the path
                length (hostile shapes: several `**`, several `*`), interleaved in one
                process; and `run --dry-run` of workflows whose brace patterns 0.1.0
                expanded for minutes ("{a,b}" x 16, "{a,b,c,d}" x 12: now a definition
                error) vs the dry run of a plain one.
6. report       `run ten --html-report FILE` vs `run ten` (10 steps that print a line):
                the cost of the HTML report is the difference of the medians; also the
                report alone, written 50 times in one process from the same record.
7. inputs       (issue 17) hashing a step's `sources`: 10,000 files of 100 MB in all, the
                first time (every file read) vs the second (size and mtime known: nothing
                read), against a walk that only lists and stats them; and the index lookup
                of a step's last pass with 10 and with 10,000 earlier runs.

It prints one table, writes bench/results.json (or --json-out) with every figure, the
targets of issues 7 and 15 and pass/fail for each, and exits 0 even when a target fails: the
numbers are the output (CI runs --quick as a smoke test and asserts no threshold).
Exit 1 means a measured command failed, 2 a usage error.

Modes: --quick (CI smoke test, well under a minute: small N and sizes, few
repetitions, pre-commit only when already installed in the bench cache), default
(N up to 1,000, 200 MB, 10,000 runs), --full (adds 1 GB of output, more repetitions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MB = 1000 * 1000
MiB = 1024 * 1024
LINE = "x" * 79  # `yes LINE` prints 80-byte lines: text a test suite might print
RUN_ID_RE = re.compile(r"^(\d{8}T\d{6})(\d{3})Z-([0-9a-f]+)$")  # 20261127T154000123Z-1a2b3c
SECTIONS = ("fixed", "hook", "steps", "parallel", "stream", "history", "globs", "report", "inputs")
# The release the per-step cost of a chain is compared with (issue 16: the parallel engine must
# not make the sequential case slower). Its orchestrate.py is taken from git.
BASELINE_REF = "v0.1.0"


@dataclass(frozen=True)
class Mode:
    name: str
    reps_fixed: int  # alternating pairs for sub-second commands
    reps_steps: int  # pairs for N <= 100
    reps_big: int  # pairs for N = 1,000 and for streaming
    step_counts: tuple[int, ...]
    parallel_sleep: float  # seconds each of the 8 parallel steps sleeps
    chain_n: int  # steps of the chain compared with the baseline release
    stream_sizes: tuple[int, ...]
    history_sizes: tuple[int, int]
    install_precommit: bool
    timeout: float  # seconds, for one measured command
    reps_history: int = 11
    input_files: tuple[int, int] = (10_000, 100 * MB)  # files hashed as a step's sources, their total size


QUICK = Mode(
    "quick",
    5,
    3,
    3,
    (1, 10, 100),
    0.2,
    100,
    (10 * MB,),
    (10, 1000),
    False,
    60,
    reps_history=3,
    input_files=(1000, 10 * MB),
)
NORMAL = Mode("normal", 15, 21, 5, (1, 10, 100, 1000), 0.5, 1000, (10 * MB, 200 * MB), (10, 10000), True, 300)
FULL = Mode("full", 21, 31, 7, (1, 10, 100, 1000), 0.5, 1000, (10 * MB, 200 * MB, 1000 * MB), (10, 10000), True, 600)


# === Measuring ===


class CommandFailed(Exception):
    """A measured or set-up command exited non-zero: the benchmark's numbers would lie."""


@dataclass
class Sample:
    seconds: float
    maxrss_kib: int  # peak RSS of the process and the descendants it waited for
    cpu_seconds: float  # user + system CPU: steadier than wall time on a busy machine


@dataclass
class Cmd:
    """One side of a comparison: a command line, where and how it runs, its samples."""

    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    stdin: bytes = b""
    after: Callable[[], None] | None = None  # untimed clean-up after each run
    ok_codes: tuple[int, ...] = (0,)  # a definition error (2) is the expected end of some
    samples: list[Sample] = field(default_factory=list)

    def times_ms(self) -> list[float]:
        return [s.seconds * 1000 for s in self.samples]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms())

    @property
    def peak_rss_mib(self) -> float:
        return max(s.maxrss_kib for s in self.samples) / 1024

    def summary(self) -> dict[str, Any]:
        t = self.times_ms()
        return {
            "label": self.label,
            "argv": self.argv,
            "runs": len(t),
            "median_ms": round(statistics.median(t), 3),
            "min_ms": round(min(t), 3),
            "max_ms": round(max(t), 3),
            "times_ms": [round(x, 3) for x in t],
            "peak_rss_mib": round(self.peak_rss_mib, 2),
            "median_cpu_ms": round(statistics.median(s.cpu_seconds for s in self.samples) * 1000, 3),
        }

    def cell(self) -> str:
        t = self.times_ms()
        return f"{_ms(statistics.median(t))} ({_ms(min(t), False)}–{_ms(max(t))})"


def _ms(value: float, unit: bool = True) -> str:
    if value >= 10000:
        text, suffix = f"{value / 1000:.1f}", " s"
    elif value >= 1000:
        text, suffix = f"{value / 1000:.2f}", " s"
    elif value >= 100:
        text, suffix = f"{value:.0f}", " ms"
    else:
        text, suffix = f"{value:.1f}", " ms"
    return text + suffix if unit else text


def run_once(cmd: Cmd, timeout: float) -> Sample:
    """Run cmd once: wall time from spawn to reap, and rusage from wait4(2).

    wait4 gives this child's own peak RSS (the maximum over it and the descendants it
    reaped), unlike RUSAGE_CHILDREN, which keeps the maximum over every child so far.
    """
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd.argv,
            cwd=cmd.cwd,
            env=cmd.env,
            stdin=subprocess.PIPE if cmd.stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # so a timeout ends the whole tree
        )
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill)
        timer.start()
        try:
            if cmd.stdin:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(cmd.stdin)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in cmd.ok_codes or timed_out.is_set():
            err.seek(0)
            tail = err.read()[-3000:].decode(errors="replace")
            why = f"timed out after {timeout:g}s" if timed_out.is_set() else f"exited {proc.returncode}"
            raise CommandFailed(f"{cmd.label}: `{shlex.join(cmd.argv)}` in {cmd.cwd} {why}\n{tail}")
    if cmd.after:
        cmd.after()
    return Sample(elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def measure_pair(a: Cmd, b: Cmd, reps: int, timeout: float, warmup: int = 1) -> tuple[Cmd, Cmd]:
    """Alternate A and B (A B, B A, A B, ...): slow drift and periodic noise hit both."""
    measure_rounds([(a, b, reps)], timeout, warmup)
    return a, b


def measure_rounds(pairs: list[tuple[Cmd, Cmd, int]], timeout: float, warmup: int = 1) -> None:
    """Several (A, B, repetitions) measured in rounds: each round runs every pair that still
    needs samples, A and B alternating, the pairs' order rotating. Figures derived from
    several pairs (a slope from t(N) - t(1)) then see the same drift in all of them."""
    for a, b, _ in pairs:
        for _ in range(warmup):
            run_once(a, timeout)
            run_once(b, timeout)
    for i in range(max(reps for _, _, reps in pairs)):
        shift = i % len(pairs)
        for a, b, reps in pairs[shift:] + pairs[:shift]:
            if i < reps:
                for cmd in (a, b) if i % 2 == 0 else (b, a):
                    cmd.samples.append(run_once(cmd, timeout))


def check_output(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    """A set-up command (not timed): its stdout, or CommandFailed with its stderr."""
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise CommandFailed(
            f"set-up command `{shlex.join(argv)}` in {cwd} exited {proc.returncode}\n"
            f"{proc.stdout.decode(errors='replace')[-1500:]}{proc.stderr.decode(errors='replace')[-1500:]}"
        )
    return proc.stdout.decode(errors="replace")


# === Results ===


@dataclass
class Row:
    figure: str
    orchestrate: str
    baseline: str
    value: str
    target: str = ""
    verdict: str = ""


class Results:
    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.targets: list[dict[str, Any]] = []
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def target(self, name: str, figure: str, value: float | None, op: str, limit: float, unit: str, text: str) -> str:
        """Record a target of issue 7; returns the table's verdict cell."""
        ok = None if value is None else (value <= limit if op == "<=" else value >= limit)
        self.targets.append(
            {
                "name": name,
                "figure": figure,
                "description": text,
                "value": None if value is None else round(value, 4),
                "op": op,
                "limit": limit,
                "unit": unit,
                "pass": ok,
            }
        )
        return "skipped" if ok is None else ("PASS" if ok else "FAIL")

    def skip(self, figure: str, label: str, reason: str) -> None:
        self.figures[figure] = {"skipped": reason}
        self.rows.append(Row(label, "—", "—", "—", "", "skipped (see note)"))
        self.notes.append(f"{label}: skipped: {reason}")

    def table(self) -> str:
        head = Row("figure", "orchestrate median (min–max)", "baseline median (min–max)", "value", "target", "")
        rows = [head, *self.rows]
        cols = ["figure", "orchestrate", "baseline", "value", "target", "verdict"]
        widths = {c: max(len(getattr(r, c)) for r in rows) for c in cols}
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(getattr(r, c).ljust(widths[c]) for c in cols).rstrip())
            if i == 0:
                lines.append("  ".join("-" * widths[c] for c in cols))
        return "\n".join(lines)


# === The benchmark ===


def step(name: str, run: list[str]) -> dict[str, Any]:
    return {"name": name, "type": "command", "run": run}


TRUE_STEP = [step("s1", ["/bin/true"])]


class Bench:
    def __init__(self, orchestrate: list[str], mode: Mode, work: Path, cache: Path) -> None:
        self.orch = orchestrate
        self.mode = mode
        self.work = work
        self.cache = cache
        self.results = Results()
        self.python = interpreter_of(orchestrate)
        self.baseline_ref = BASELINE_REF  # what the chain's per-step cost is compared with
        self.env = bench_env(orchestrate, cache, self.results.notes)

    # --- projects ---

    def git(self, cwd: Path, *args: str) -> str:
        argv = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args]
        return check_output(argv, cwd, self.env).strip()

    def project(self, name: str, workflows: dict[str, list[dict[str, Any]]]) -> Path:
        """A git repository with workflows/<name>.json, runs/ ignored, one commit."""
        root = self.work / name
        (root / "workflows").mkdir(parents=True)
        for wf, steps in workflows.items():
            doc = {"name": wf, "steps": steps}
            (root / "workflows" / f"{wf}.json").write_text(json.dumps(doc, indent=1) + "\n")
        (root / ".gitignore").write_text("runs/\n")
        self.git(root, "init", "-q")
        self.git(root, "add", "-A")
        self.git(root, "commit", "-q", "-m", "bench project")
        return root

    def orch_cmd(self, label: str, root: Path, *args: str, clean: bool = True) -> Cmd:
        """`orchestrate --root ROOT ARGS`; clean: empty runs/ after each run (untimed), so
        a figure measures one thing (the history figures measure what runs/ holds)."""
        after = (lambda: _empty(root / "runs")) if clean else None
        return Cmd(label, [*self.orch, "--root", str(root), *args], root, self.env, after=after)

    # --- 1. fixed cost ---

    def fixed(self) -> None:
        m, r = self.mode, self.results
        root = self.project("fixed", {"one": TRUE_STEP})
        python = Cmd("python -c pass", [self.python, "-c", "pass"], root, self.env)
        run_one = self.orch_cmd("orchestrate run one", root, "run", "one")
        measure_pair(run_one, python, m.reps_fixed, m.timeout)
        ratio = run_one.median_ms / python.median_ms
        verdict = r.target(
            "fixed_vs_python",
            "fixed_run_vs_python",
            ratio,
            "<=",
            3.0,
            "x",
            "orchestrate run one ≤ 3× python -c pass",
        )
        r.figures["fixed_run_vs_python"] = _pair(run_one, python, ratio=ratio, cpu_ratio=_cpu_ratio(run_one, python))
        r.rows.append(
            Row("fixed: run one vs python -c pass", run_one.cell(), python.cell(), f"{ratio:.2f}×", "≤ 3×", verdict)
        )
        r.figures["fixed_run_peak_rss"] = {"peak_rss_mib": round(run_one.peak_rss_mib, 2)}

        for flag in ("--version", "--help"):
            cmd = Cmd(f"orchestrate {flag}", [*self.orch, flag], root, self.env)
            base = Cmd("python -c pass", [self.python, "-c", "pass"], root, self.env)
            measure_pair(cmd, base, m.reps_fixed, m.timeout)
            ratio = cmd.median_ms / base.median_ms
            key = f"{flag.strip('-')}_vs_python"
            r.figures[key] = _pair(cmd, base, ratio=ratio, cpu_ratio=_cpu_ratio(cmd, base))
            target, verdict = "", ""
            if flag == "--version":
                target = "≤ 2×"
                verdict = r.target(
                    "version_vs_python", key, ratio, "<=", 2.0, "x", "orchestrate --version ≤ 2× python -c pass"
                )
            r.rows.append(
                Row(f"fixed: {flag} vs python -c pass", cmd.cell(), base.cell(), f"{ratio:.2f}×", target, verdict)
            )

        precommit = self.precommit()
        if isinstance(precommit, str):
            r.skip("fixed_run_vs_precommit", "fixed: run one vs pre-commit", precommit)
            r.target(
                "fixed_vs_precommit",
                "fixed_run_vs_precommit",
                None,
                "<=",
                0.5,
                "x",
                "orchestrate run one ≤ 0.5× pre-commit run --hook-stage pre-push",
            )
            return
        argv, version = precommit
        # One local `language: system` hook, the equivalent of the one /bin/true step.
        (root / ".pre-commit-config.yaml").write_text(
            "repos:\n- repo: local\n  hooks:\n  - id: s1\n    name: s1\n    entry: /bin/true\n"
            "    language: system\n    pass_filenames: false\n    always_run: true\n"
        )
        self.git(root, "add", ".pre-commit-config.yaml")
        self.git(root, "commit", "-q", "-m", "pre-commit config")
        pc = Cmd("pre-commit run", [*argv, "run", "--hook-stage", "pre-push"], root, self.env)
        run_one = self.orch_cmd("orchestrate run one", root, "run", "one")
        measure_pair(run_one, pc, m.reps_fixed, m.timeout)
        ratio = run_one.median_ms / pc.median_ms
        verdict = r.target(
            "fixed_vs_precommit",
            "fixed_run_vs_precommit",
            ratio,
            "<=",
            0.5,
            "x",
            "orchestrate run one ≤ 0.5× pre-commit run --hook-stage pre-push",
        )
        r.figures["fixed_run_vs_precommit"] = _pair(run_one, pc, ratio=ratio, precommit_version=version)
        r.rows.append(
            Row(
                f"fixed: run one vs pre-commit {version}", run_one.cell(), pc.cell(), f"{ratio:.2f}×", "≤ 0.5×", verdict
            )
        )

    def precommit(self) -> tuple[list[str], str] | str:
        """pre-commit's argv and version, from the bench's own venv (installed there with
        pip unless --quick), else from PATH; or why it is skipped."""
        venv = self.cache / "pre-commit-venv"
        exe = venv / "bin" / "pre-commit"
        if not exe.exists() and shutil.which("pre-commit"):
            exe = Path(shutil.which("pre-commit") or "")
        elif not exe.exists():
            if not self.mode.install_precommit:
                return f"not installed in {venv} (--quick installs nothing; a normal run installs it)"
            try:
                print(f"installing pre-commit into {venv} ...", file=sys.stderr)
                check_output([sys.executable, "-m", "venv", str(venv)], self.work, self.env, 300)
                check_output(
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "pre-commit"],
                    self.work,
                    self.env,
                    600,
                )
            except (CommandFailed, subprocess.TimeoutExpired, OSError) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                return f"could not install pre-commit: {str(exc).splitlines()[0]}"
        version = check_output([str(exe), "--version"], self.work, self.env).strip().split()[-1]
        return [str(exe)], version

    # --- 1b. the installed pre-push hook ---

    def hook(self) -> None:
        m, r = self.mode, self.results
        label = "hook: pre-push hook vs direct"
        root = self.project("hook", {"pre-push": TRUE_STEP})
        self.git(root, "commit", "-q", "--allow-empty", "-m", "second")
        head, parent = self.git(root, "rev-parse", "HEAD", "HEAD~1").split()
        hook = root / ".git" / "hooks" / "pre-push"
        how = "orchestrate hook install"
        try:
            check_output([*self.orch, "--root", str(root), "hook", "install"], root, self.env)
        except CommandFailed as exc:
            why = [line for line in str(exc).splitlines()[1:] if line.strip()][-1:] or ["?"]
            self.results.notes.append(f"hook: `orchestrate hook install` failed: {why[0].strip()}")
        if not hook.exists() and (REPO / "hooks" / "pre-push").exists():
            how = "copied from hooks/pre-push"
            shutil.copy(REPO / "hooks" / "pre-push", hook)
            hook.chmod(0o755)
        if not hook.exists():
            r.skip("hook_overhead", label, "no hooks/pre-push in the repository and `hook install` made none")
            r.target("hook_overhead", "hook_overhead", None, "<=", 10.0, "ms", "pre-push hook adds ≤ 10 ms")
            return
        remote = str(self.work / "remote.git")
        refs = f"refs/heads/main {head} refs/heads/main {parent}\n".encode()
        direct_argv = self.hook_target(hook, root, remote, refs)
        if direct_argv is None:
            r.skip(
                "hook_overhead",
                label,
                "the hook does not run `orchestrate` from PATH, so the "
                "command it runs could not be recorded for the direct comparison",
            )
            r.target("hook_overhead", "hook_overhead", None, "<=", 10.0, "ms", "pre-push hook adds ≤ 10 ms")
            return
        via_hook = Cmd(
            "pre-push hook",
            [str(hook), "origin", remote],
            root,
            self.env,
            stdin=refs,
            after=lambda: _empty(root / "runs"),
        )
        direct = Cmd(
            "orchestrate (as the hook calls it)",
            direct_argv,
            root,
            self.env,
            stdin=refs,
            after=lambda: _empty(root / "runs"),
        )
        measure_pair(via_hook, direct, m.reps_fixed, m.timeout)
        overhead = via_hook.median_ms - direct.median_ms
        verdict = r.target(
            "hook_overhead",
            "hook_overhead",
            overhead,
            "<=",
            10.0,
            "ms",
            "the installed pre-push hook adds ≤ 10 ms over calling orchestrate directly",
        )
        r.figures["hook_overhead"] = _pair(via_hook, direct, overhead_ms=round(overhead, 3), installed_by=how)
        r.rows.append(Row(label, via_hook.cell(), direct.cell(), f"{overhead:+.1f} ms", "≤ 10 ms", verdict))
        self.hook_nothing_to_check(hook, remote)
        self.hook_vs_lefthook()

    def hook_nothing_to_check(self, hook: Path, remote: str) -> None:
        """The installed hook given what git gives it for a push of tags only (nothing to
        check), against `python -c pass`: it must end before Python starts, or about as soon."""
        m, r = self.mode, self.results
        tags = f"refs/tags/v1 {'a' * 40} refs/tags/v1 {'0' * 40}\n".encode()
        cmd = Cmd("pre-push hook, tags only", [str(hook), "origin", remote], hook.parent, self.env, stdin=tags)
        base = Cmd("python -c pass", [self.python, "-c", "pass"], hook.parent, self.env)
        measure_pair(cmd, base, m.reps_fixed, m.timeout)
        ratio = cmd.median_ms / base.median_ms
        verdict = r.target(
            "hook_nothing_to_check",
            "hook_nothing_to_check",
            ratio,
            "<=",
            1.5,
            "x",
            "a push with nothing to check (tags only) ends in the hook within 1.5× python -c pass",
        )
        r.figures["hook_nothing_to_check"] = _pair(cmd, base, ratio=ratio)
        r.rows.append(
            Row(
                "hook: push of tags only (nothing to check) vs python -c pass",
                cmd.cell(),
                base.cell(),
                f"{ratio:.2f}×",
                "≤ 1.5×",
                verdict,
            )
        )

    def hook_vs_lefthook(self) -> None:
        """`git push` of a fresh commit to a local bare remote: with orchestrate's installed hook
        (a one-step /bin/true workflow), with lefthook's (one /bin/true command) and with no
        hook, interleaved; what each hook adds is its push minus the push without a hook."""
        m, r = self.mode, self.results
        label = "hook: git push, orchestrate's hook vs lefthook's (added ms)"
        found = self.lefthook()
        if isinstance(found, str):
            r.skip("hook_vs_lefthook", label, found)
            r.target(
                "hook_vs_lefthook",
                "hook_vs_lefthook",
                None,
                "<=",
                1.0,
                "x",
                "orchestrate's pre-push hook adds ≤ what lefthook's adds to a git push",
            )
            return
        lefthook, version = found
        env = dict(self.env, PATH=f"{lefthook.parent}{os.pathsep}{self.env['PATH']}")

        def pushing(name: str, setup: Callable[[Path], None]) -> Cmd:
            remote = self.work / f"{name}-remote.git"
            self.git(self.work, "init", "-q", "--bare", str(remote))
            root = self.project(f"push-{name}", {"pre-push": TRUE_STEP})
            self.git(root, "remote", "add", "origin", str(remote))
            self.git(root, "push", "-q", "--no-verify", "origin", "HEAD:main")
            setup(root)

            def next_commit() -> None:  # untimed: each measured push carries one new commit
                _empty(root / "runs")
                self.git(root, "commit", "-q", "--allow-empty", "-m", "next")

            next_commit()
            return Cmd(f"git push ({name})", ["git", "push", "-q", "origin", "HEAD:main"], root, env, after=next_commit)

        def with_lefthook(root: Path) -> None:
            (root / "lefthook.yml").write_text("pre-push:\n  commands:\n    s1:\n      run: /bin/true\n")
            self.git(root, "add", "lefthook.yml")
            self.git(root, "commit", "-q", "-m", "lefthook")
            check_output([str(lefthook), "install"], root, env)

        def with_orchestrate(root: Path) -> None:
            check_output([*self.orch, "--root", str(root), "hook", "install"], root, env)

        plain = pushing("no-hook", lambda root: None)
        lh = pushing("lefthook", with_lefthook)
        orch = pushing("orchestrate", with_orchestrate)
        measure_rounds([(orch, plain, m.reps_fixed), (lh, plain, m.reps_fixed)], m.timeout)
        orch_added = orch.median_ms - plain.median_ms
        lh_added = lh.median_ms - plain.median_ms
        ratio = _ratio(orch_added, lh_added)
        verdict = r.target(
            "hook_vs_lefthook",
            "hook_vs_lefthook",
            ratio,
            "<=",
            1.0,
            "x",
            f"orchestrate's pre-push hook adds ≤ what lefthook {version}'s adds to a git push",
        )
        r.figures["hook_vs_lefthook"] = {
            "lefthook_version": version,
            "orchestrate_added_ms": round(orch_added, 3),
            "lefthook_added_ms": round(lh_added, 3),
            "ratio": _round(ratio),
            "orchestrate": orch.summary(),
            "lefthook": lh.summary(),
            "no_hook": plain.summary(),
            "ratio_of_min": round(
                (min(orch.times_ms()) - min(plain.times_ms())) / max(1e-9, min(lh.times_ms()) - min(plain.times_ms())),
                4,
            ),
        }
        r.rows.append(Row("hook: git push, no hook", plain.cell(), "", ""))
        r.rows.append(
            Row(
                label.replace("(added ms)", f"{version}"),
                f"{orch.cell()} (+{orch_added:.1f} ms)",
                f"{lh.cell()} (+{lh_added:.1f} ms)",
                _x(ratio),
                "≤ 1×",
                verdict,
            )
        )

    def lefthook(self) -> tuple[Path, str] | str:
        """lefthook's binary, from its npm package (which ships the binary) installed into the
        bench cache on the first non-quick run, and its version; or why it is skipped."""
        folder = self.cache / "lefthook-npm"
        found = sorted(folder.glob("node_modules/lefthook-*/bin/lefthook"))
        if not found:
            if not self.mode.install_precommit:
                return f"not installed in {folder} (--quick installs nothing; a normal run installs it)"
            npm = shutil.which("npm")
            if not npm:
                return "npm is not installed (the lefthook npm package ships lefthook's binary)"
            print(f"installing lefthook into {folder} ...", file=sys.stderr)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # 2.2.1: later releases' builds for other platforms are not all served
                check_output(
                    [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "-E", "lefthook@2.2.1"],
                    folder,
                    self.env,
                    600,
                )
            except (CommandFailed, subprocess.TimeoutExpired, OSError) as exc:
                return f"could not install lefthook: {str(exc).splitlines()[0]}"
            found = sorted(folder.glob("node_modules/lefthook-*/bin/lefthook"))
            if not found:
                return f"the lefthook npm package brought no binary for this platform into {folder}"
        exe = found[0]
        version = check_output([str(exe), "version"], self.work, self.env).strip()
        return exe, version

    def hook_target(self, hook: Path, root: Path, remote: str, refs: bytes) -> list[str] | None:
        """The orchestrate command line the hook runs, found by running the hook once with
        a recording `orchestrate` first on PATH (the real orchestrate gets the same
        arguments), or None when the hook does not take orchestrate from PATH."""
        shim_dir = self.work / "shim"
        shim_dir.mkdir(exist_ok=True)
        record = shim_dir / "argv"
        shim = shim_dir / "orchestrate"
        shim.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\ncat >/dev/null\n")
        shim.chmod(0o755)
        env = dict(self.env, PATH=f"{shim_dir}{os.pathsep}{self.env['PATH']}")
        subprocess.run([str(hook), "origin", remote], cwd=root, env=env, input=refs, capture_output=True, timeout=120)
        _empty(root / "runs")
        if record.exists():
            args = record.read_bytes().split(b"\0")[:-1]
            return [*self.orch, *(a.decode() for a in args)]
        return None

    # --- 2. per-step cost ---

    def steps(self) -> None:
        m, r = self.mode, self.results
        counts = m.step_counts
        root = self.project(
            "steps", {f"steps{n}": [step(f"s{i + 1}", ["/bin/true"]) for i in range(n)] for n in counts}
        )
        scripts = self.work / "bash"
        scripts.mkdir()
        orch: dict[int, Cmd] = {}
        bash: dict[int, Cmd] = {}
        for n in counts:
            script = scripts / f"steps{n}.sh"
            script.write_text("#!/bin/bash\n" + "/bin/true\n" * n)
            orch[n] = self.orch_cmd(f"orchestrate run steps{n}", root, "run", f"steps{n}")
            bash[n] = Cmd(f"bash steps{n}.sh", ["bash", str(script)], root, self.env)
        measure_rounds([(orch[n], bash[n], m.reps_big if n >= 1000 else m.reps_steps) for n in counts], m.timeout)

        def per_step(side: dict[int, Cmd], n: int) -> float:
            return (side[n].median_ms - side[1].median_ms) / (n - 1)

        fig: dict[str, Any] = {"estimator": "(median t(N) - median t(1)) / (N - 1)", "by_n": {}}
        for n in counts:
            entry = _pair(orch[n], bash[n], ratio=orch[n].median_ms / bash[n].median_ms)
            if n > 1:
                entry["orchestrate_ms_per_step"] = round(per_step(orch, n), 4)
                entry["bash_ms_per_step"] = round(per_step(bash, n), 4)
            fig["by_n"][str(n)] = entry
            r.rows.append(
                Row(
                    f"steps: N={n} vs bash",
                    orch[n].cell(),
                    bash[n].cell(),
                    f"{orch[n].median_ms / bash[n].median_ms:.2f}×",
                )
            )
        top = max(counts)
        slope, bash_slope = per_step(orch, top), per_step(bash, top)
        ratio = _ratio(slope, bash_slope)
        flat = _ratio(per_step(orch, top), per_step(orch, 10))
        bash_flat = _ratio(per_step(bash, top), per_step(bash, 10))
        for name, value in (("slope ratio", ratio), ("flatness", flat)):
            if value is None:
                r.notes.append(
                    f"steps: {name} not computed: a per-step cost came out ≤ 0 (too noisy; "
                    "run again on a quieter machine)"
                )
        in_run = self.in_run_flatness(root, top)
        fig.update(
            slope_ms_per_step=round(slope, 4),
            bash_slope_ms_per_step=round(bash_slope, 4),
            slope_ratio=_round(ratio),
            flatness=_round(flat),
            bash_flatness=_round(bash_flat),
            flatness_n=[10, top],
            in_run=in_run,
        )
        r.figures["per_step"] = fig
        v1 = r.target(
            "per_step_vs_bash", "per_step", ratio, "<=", 1.3, "x", f"per-step cost (slope at N={top}) ≤ 1.3× bash's"
        )
        r.rows.append(
            Row(
                f"steps: slope at N={top} (ms/step)",
                f"{slope:.3f} ms/step",
                f"{bash_slope:.3f} ms/step",
                _x(ratio),
                "≤ 1.3×",
                v1,
            )
        )
        v2 = r.target("flatness", "per_step", flat, "<=", 1.3, "x", f"per-step cost at N={top} ≤ 1.3× that at N=10")
        r.rows.append(
            Row(
                f"steps: flatness per-step N={top} / N=10",
                _x(flat, ""),
                f"{_x(bash_flat, '')} (bash)",
                _x(flat, ""),
                "≤ 1.3",
                v2,
            )
        )
        self.steps_busy_disk(root, scripts, top, fig)
        if "late_over_early" in in_run:
            k = in_run["window"]
            r.rows.append(
                Row(
                    f"steps: in one N={top} run, last {k} / first {k} steps",
                    f"{in_run['late_ms_per_step']:.3f} / {in_run['early_ms_per_step']:.3f} ms/step",
                    "",
                    _x(in_run["late_over_early"], ""),
                )
            )

    def steps_busy_disk(self, root: Path, scripts: Path, top: int, fig: dict[str, Any]) -> None:
        """The slope again while another process writes and fdatasyncs a file in a loop (what a
        busy disk does to a sync per step), against bash's in the same conditions."""
        m, r = self.mode, self.results
        sides = {
            n: (
                self.orch_cmd(f"orchestrate run steps{n} (busy disk)", root, "run", f"steps{n}"),
                Cmd(f"bash steps{n}.sh (busy disk)", ["bash", str(scripts / f"steps{n}.sh")], root, self.env),
            )
            for n in (1, top)
        }
        with DiskSyncer(self.work / "syncer.data") as syncer:
            measure_rounds(
                [(a, b, m.reps_big if n >= 1000 else m.reps_steps) for n, (a, b) in sides.items()], m.timeout
            )
        slope = (sides[top][0].median_ms - sides[1][0].median_ms) / (top - 1)
        bash_slope = (sides[top][1].median_ms - sides[1][1].median_ms) / (top - 1)
        ratio = _ratio(slope, bash_slope)
        fig["busy_disk"] = {
            "slope_ms_per_step": round(slope, 4),
            "bash_slope_ms_per_step": round(bash_slope, 4),
            "slope_ratio": _round(ratio),
            "fdatasyncs_by_the_writer": syncer.syncs,
            "orchestrate": sides[top][0].summary(),
            "bash": sides[top][1].summary(),
        }
        verdict = r.target(
            "per_step_vs_bash_busy_disk",
            "per_step",
            ratio,
            "<=",
            1.3,
            "x",
            f"per-step cost (slope at N={top}) ≤ 1.3× bash's while another process syncs the disk",
        )
        r.rows.append(
            Row(
                f"steps: slope at N={top}, another process fdatasyncing",
                f"{slope:.3f} ms/step",
                f"{bash_slope:.3f} ms/step",
                _x(ratio),
                "≤ 1.3×",
                verdict,
            )
        )

    def in_run_flatness(self, root: Path, n: int) -> dict[str, Any]:
        """From one more run's record: the mean interval between step starts over the last k
        steps ÷ over the first k. Start-up noise does not enter it, so it shows a cost that
        grows with the step's index (an O(N^2) record) even on a busy machine."""
        check_output([*self.orch, "--root", str(root), "run", f"steps{n}"], root, self.env, self.mode.timeout)
        try:
            (record,) = [json.loads(p.read_text()) for p in (root / "runs").glob("*.json")]
            starts = [dt.datetime.strptime(e["started_at"], "%Y-%m-%dT%H:%M:%S.%fZ") for e in record["log"]]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return {"error": f"cannot read step start times from the run record: {exc!r}"}
        finally:
            _empty(root / "runs")
        k = max(10, n // 10)
        early = (starts[k] - starts[0]).total_seconds() * 1000 / k
        late = (starts[-1] - starts[-1 - k]).total_seconds() * 1000 / k
        return {
            "window": k,
            "early_ms_per_step": round(early, 4),
            "late_ms_per_step": round(late, 4),
            "late_over_early": _round(_ratio(late, early)),
        }

    # --- 2b. steps in parallel ---

    def parallel(self) -> None:
        """8 independent sleeping steps with --jobs 8 against one such step, both net of the
        fixed cost (a one-step /bin/true run in the same rounds); and the per-step cost of a
        chain against the same chain run by the release before parallel steps existed."""
        m, r = self.mode, self.results
        pause = m.parallel_sleep
        sleeper = ["sleep", f"{pause:g}"]
        root = self.project(
            "parallel",
            {
                "eight": [dict(step(f"s{i + 1}", sleeper), needs=[]) for i in range(8)],
                "sleep1": [step("s1", sleeper)],
                "true1": TRUE_STEP,
            },
        )
        eight = self.orch_cmd("orchestrate run eight --jobs 8", root, "run", "eight", "--jobs", "8")
        one = self.orch_cmd("orchestrate run sleep1", root, "run", "sleep1")
        fixed = self.orch_cmd("orchestrate run true1", root, "run", "true1")
        fixed_base = Cmd("python -c pass", [self.python, "-c", "pass"], root, self.env)
        measure_rounds([(eight, one, m.reps_steps), (fixed, fixed_base, m.reps_steps)], m.timeout)
        fixed_ms = fixed.median_ms
        value = (eight.median_ms - fixed_ms) / (pause * 1000)
        verdict = r.target(
            "parallel_eight",
            "parallel_eight",
            value,
            "<=",
            1.2,
            "x",
            f"8 independent {pause:g} s steps with --jobs 8 end within 1.2× one step's time plus the fixed cost",
        )
        r.figures["parallel_eight"] = _pair(
            eight, one, fixed_ms=round(fixed_ms, 3), step_s=pause, eight_net_over_one_step=round(value, 4)
        )
        r.rows.append(
            Row(
                f"parallel: 8 × sleep {pause:g} --jobs 8, net of fixed, / one step",
                eight.cell(),
                one.cell(),
                f"{value:.2f}×",
                "≤ 1.2×",
                verdict,
            )
        )
        self.chain_vs_release(root)

    def chain_vs_release(self, root: Path) -> None:
        m, r = self.mode, self.results
        label = f"parallel: chain of {m.chain_n}, per step vs {self.baseline_ref}"
        old = self.work / "baseline"
        old.mkdir()
        try:
            source = check_output(
                ["git", "-C", str(REPO), "show", f"{self.baseline_ref}:orchestrate.py"], REPO, self.env
            )
        except CommandFailed:
            r.skip(
                "chain_vs_release",
                label,
                f"git has no {self.baseline_ref} here (a shallow clone?): `git fetch --tags` to compare with it",
            )
            r.target(
                "chain_vs_release",
                "chain_vs_release",
                None,
                "<=",
                1.05,
                "x",
                f"per-step cost of a chain ≤ 1.05× {self.baseline_ref}'s",
            )
            return
        (old / "orchestrate.py").write_text(source)
        chain = self.project(
            "chain", {"chain": [step(f"s{i + 1}", ["/bin/true"]) for i in range(m.chain_n)], "one": TRUE_STEP}
        )

        def side(label: str, pythonpath: str, workflow: str) -> Cmd:
            env = dict(self.env, PYTHONPATH=pythonpath)
            return Cmd(
                label,
                [self.python, "-m", "orchestrate", "--root", str(chain), "run", workflow],
                chain,
                env,
                after=lambda: _empty(chain / "runs"),
            )

        new_n, new_1 = side("this orchestrate", str(REPO), "chain"), side("this orchestrate", str(REPO), "one")
        old_n, old_1 = side(self.baseline_ref, str(old), "chain"), side(self.baseline_ref, str(old), "one")
        measure_rounds([(new_n, old_n, m.reps_big), (new_1, old_1, m.reps_steps)], m.timeout)
        new_slope = (new_n.median_ms - new_1.median_ms) / (m.chain_n - 1)
        old_slope = (old_n.median_ms - old_1.median_ms) / (m.chain_n - 1)
        ratio = _ratio(new_slope, old_slope)
        verdict = r.target(
            "chain_vs_release",
            "chain_vs_release",
            ratio,
            "<=",
            1.05,
            "x",
            f"per-step cost of a {m.chain_n}-step chain ≤ 1.05× {self.baseline_ref}'s",
        )

        def cpu_ms(cmd: Cmd) -> float:
            return statistics.median(s.cpu_seconds for s in cmd.samples) * 1000

        # CPU time as well: steadier than wall time when other jobs share the machine
        cpu_ratio = _ratio(cpu_ms(new_n) - cpu_ms(new_1), cpu_ms(old_n) - cpu_ms(old_1))
        r.figures["chain_vs_release"] = {
            "n": m.chain_n,
            "ms_per_step": round(new_slope, 4),
            "release_ms_per_step": round(old_slope, 4),
            "ratio": _round(ratio),
            "cpu_ratio": _round(cpu_ratio),
            "this": new_n.summary(),
            "release": old_n.summary(),
        }
        r.rows.append(
            Row(
                f"parallel: chain of {m.chain_n}, CPU per step vs {self.baseline_ref}",
                f"{(cpu_ms(new_n) - cpu_ms(new_1)) / (m.chain_n - 1):.3f} ms/step",
                f"{(cpu_ms(old_n) - cpu_ms(old_1)) / (m.chain_n - 1):.3f} ms/step",
                _x(cpu_ratio),
            )
        )
        r.rows.append(Row(label, f"{new_slope:.3f} ms/step", f"{old_slope:.3f} ms/step", _x(ratio), "≤ 1.05×", verdict))

    # --- 3. streaming ---

    def stream(self) -> None:
        m, r = self.mode, self.results
        sizes = m.stream_sizes
        root = self.project(
            "stream",
            {f"out{size}": [step("out", ["/bin/sh", "-c", f"yes {LINE} | head -c {size}"])] for size in (0, *sizes)},
        )
        tee_file = self.work / "tee.out"

        def pair(size: int) -> tuple[Cmd, Cmd]:
            a = self.orch_cmd(f"orchestrate run out{size}", root, "run", f"out{size}")
            b = Cmd(
                f"tee {size}",
                ["/bin/sh", "-c", f"yes {LINE} | head -c {size} | tee {tee_file} >/dev/null"],
                root,
                self.env,
                after=lambda: tee_file.unlink(missing_ok=True),
            )
            return a, b

        pairs = {size: pair(size) for size in (0, *sizes)}
        measure_rounds([(*pairs[size], m.reps_fixed if size == 0 else m.reps_big) for size in pairs], m.timeout)
        zero_o, zero_t = pairs[0]
        fig: dict[str, Any] = {
            "estimator": "throughput = SIZE / (median t(SIZE) - median t(0)), each side net of its fixed cost",
            "zero_bytes": _pair(zero_o, zero_t),
            "by_size": {},
        }
        with_target = [s for s in sizes if s >= 200 * MB] or [max(sizes)]
        rss: dict[int, float] = {}
        for size in sizes:
            o, t = pairs[size]
            net_o = o.median_ms - zero_o.median_ms
            net_t = t.median_ms - zero_t.median_ms
            thr_o = size / MB / (net_o / 1000) if net_o > 0 else None
            thr_t = size / MB / (net_t / 1000) if net_t > 0 else None
            ratio = _ratio(thr_o or 0, thr_t or 0)
            label = _size(size)
            if ratio is None:
                r.notes.append(
                    f"stream: {label}: the output took less time than the noise in the 0-byte run "
                    "(too small or too noisy to give a throughput)"
                )
            rss[size] = o.peak_rss_mib
            fig["by_size"][str(size)] = _pair(
                o,
                t,
                orchestrate_mb_per_s=_round(thr_o, 1),
                tee_mb_per_s=_round(thr_t, 1),
                throughput_ratio=_round(ratio),
                end_to_end_ratio=round(t.median_ms / o.median_ms, 4),
            )
            target, verdict = "", ""
            if size in with_target:
                target = "≥ 0.9×"
                verdict = r.target(
                    f"streaming_{label.replace(' ', '')}",
                    "streaming",
                    ratio,
                    ">=",
                    0.9,
                    "x",
                    f"streaming throughput at {label} ≥ 0.9× tee's",
                )
            rate = lambda v: "" if v is None else f" {v:.0f} MB/s"  # noqa: E731
            r.rows.append(
                Row(
                    f"stream: {label} vs tee (throughput)",
                    f"{o.cell()}{rate(thr_o)}",
                    f"{t.cell()}{rate(thr_t)}",
                    _x(ratio),
                    target,
                    verdict,
                )
            )
        top, low = max(sizes), min(sizes)
        fig["peak_rss_mib"] = {str(s): round(v, 2) for s, v in rss.items()}
        v = r.target("peak_rss", "streaming", rss[top], "<=", 40.0, "MiB", f"peak RSS at {_size(top)} ≤ 40 MiB")
        r.rows.append(
            Row(f"stream: peak RSS at {_size(top)}", f"{rss[top]:.1f} MiB", "", f"{rss[top]:.1f} MiB", "≤ 40 MiB", v)
        )
        growth = rss[top] - rss[low]
        fig["rss_growth_mib"] = round(growth, 2)
        fig["rss_growth_between"] = [low, top]
        if top > low:
            v = r.target(
                "rss_growth",
                "streaming",
                growth,
                "<=",
                5.0,
                "MiB",
                f"peak RSS growth {_size(low)} → {_size(top)} ≤ 5 MiB",
            )
            r.rows.append(
                Row(
                    f"stream: RSS growth {_size(low)} → {_size(top)}",
                    f"{rss[low]:.1f} → {rss[top]:.1f} MiB",
                    "",
                    f"{growth:+.1f} MiB",
                    "≤ 5 MiB",
                    v,
                )
            )
        else:
            r.notes.append("stream: one output size only, so no RSS growth target")
        r.figures["streaming"] = fig

    # --- 4. history ---

    def history(self) -> None:
        """What a history of 10,000 runs costs against one of 10 (real runs cloned under fresh
        ids): a run's start-up (keep_runs above the history, so nothing is pruned), `runs
        --limit 20`, `runs --workflow W --limit 20`, `status ID`; then, with keep_runs back at
        its default, what pruning thousands of old runs adds to one run."""
        m, r = self.mode, self.results
        small_n, big_n = m.history_sizes
        small = self.project("history-small", {"tiny": TRUE_STEP})
        big = self.project("history-big", {"tiny": TRUE_STEP})
        real = 2  # real runs in each project; the rest are clones of them under fresh ids
        keep_all = json.dumps({"keep_runs": 10 * big_n}) + "\n"
        for root, n in ((small, small_n), (big, big_n)):
            (root / "orchestrate.json").write_text(keep_all)
            for _ in range(real):
                check_output([*self.orch, "--root", str(root), "run", "tiny"], root, self.env)
            made = clone_runs(root / "runs", n - real)
            if isinstance(made, str):
                for figure in (
                    "history_run",
                    "history_runs",
                    "history_runs_filtered",
                    "history_status",
                    "history_prune",
                ):
                    r.skip(figure, f"history: {figure}", made)
                r.target(
                    "history_runs", "history_runs", None, "<=", 1.1, "x", "runs --limit 20 at 10,000 runs ≤ 1.1× at 10"
                )
                return
        small_ids = run_ids(small / "runs")
        big_ids = run_ids(big / "runs")
        label_big = f"{len(big_ids):,}"

        def compare(figure: str, text: str, big_args: list[str], small_args: list[str], target: float | None) -> None:
            a = self.orch_cmd(f"{text} ({label_big} runs)", big, *big_args, clean=False)
            b = self.orch_cmd(f"{text} ({len(small_ids)} runs)", small, *small_args, clean=False)
            measure_pair(a, b, m.reps_history, m.timeout)
            ratio = a.median_ms / b.median_ms
            verdict = ""
            if target is not None:
                verdict = r.target(
                    figure,
                    figure,
                    ratio,
                    "<=",
                    target,
                    "x",
                    f"{text} with {label_big} runs ≤ {target:g}× with {len(small_ids)}",
                )
            r.figures[figure] = _pair(
                a, b, ratio=ratio, cpu_ratio=_cpu_ratio(a, b), runs=[len(big_ids), len(small_ids)]
            )
            r.rows.append(
                Row(
                    f"history: {text}, {label_big} vs {len(small_ids)} runs",
                    a.cell(),
                    b.cell(),
                    f"{ratio:.2f}×",
                    f"≤ {target:g}×" if target is not None else "",
                    verdict,
                )
            )

        compare("history_run", "run tiny (start-up)", ["run", "tiny"], ["run", "tiny"], 1.1)
        compare("history_runs", "runs --limit 20", ["runs", "--limit", "20"], ["runs", "--limit", "20"], 1.1)
        compare(
            "history_runs_filtered",
            "runs --workflow tiny --limit 20",
            ["runs", "--workflow", "tiny", "--limit", "20"],
            ["runs", "--workflow", "tiny", "--limit", "20"],
            1.1,
        )
        # status of a run in the middle of the history: neither the newest nor the oldest.
        compare(
            "history_status",
            "status ID",
            ["status", big_ids[len(big_ids) // 2]],
            ["status", small_ids[len(small_ids) // 2]],
            None,
        )

        # keep_runs at its default: every run of the big project now prunes a batch of the
        # thousands beyond it; the small project's run prunes nothing
        (big / "orchestrate.json").unlink()
        a = self.orch_cmd(f"run tiny, pruning ({label_big} runs, keep_runs 300)", big, "run", "tiny", clean=False)
        b = self.orch_cmd(f"run tiny ({len(small_ids)} runs)", small, "run", "tiny", clean=False)
        measure_pair(a, b, m.reps_history, m.timeout)
        added = a.median_ms - b.median_ms
        left = len(run_ids(big / "runs"))
        verdict = r.target(
            "history_prune",
            "history_prune",
            added,
            "<=",
            50.0,
            "ms",
            "pruning thousands of old runs adds ≤ 50 ms to one run",
        )
        r.figures["history_prune"] = _pair(
            a,
            b,
            added_ms=round(added, 3),
            runs_before=len(big_ids),
            runs_after=left,
            worst_added_ms=round(max(a.times_ms()) - statistics.median(b.times_ms()), 3),
        )
        r.rows.append(
            Row(
                f"history: a run that prunes ({label_big} → {left:,} runs) vs one that does not",
                a.cell(),
                b.cell(),
                f"{added:+.1f} ms",
                "≤ 50 ms",
                verdict,
            )
        )

    # --- 5. HTML report ---

    def report(self) -> None:
        m, r = self.mode, self.results
        n = 10
        root = self.project(
            "report", {"ten": [step(f"s{i + 1}", ["/bin/echo", f"step {i + 1} says hello"]) for i in range(n)]}
        )
        in_process: dict[str, Any] | None = None
        try:
            check_output([*self.orch, "--root", str(root), "run", "ten"], root, self.env, m.timeout)
            code = (
                "import json, pathlib, statistics, sys, time, orchestrate as o\n"
                "store = o.RunStore(pathlib.Path(sys.argv[1])); record = store.load(store.list_ids()[0])\n"
                "times = []\n"
                "for _ in range(50):\n"
                "    t = time.perf_counter(); o.write_html_report(record, store, pathlib.Path(sys.argv[2]))\n"
                "    times.append((time.perf_counter() - t) * 1000)\n"
                "print(json.dumps({'median_ms': round(statistics.median(times), 3), 'min_ms': round(min(times), 3),"
                " 'bytes': pathlib.Path(sys.argv[2]).stat().st_size}))\n"
            )
            in_process = json.loads(
                check_output(
                    [self.python, "-c", code, str(root / "runs"), str(root / "once.html")], root, self.env, m.timeout
                )
            )
        except (CommandFailed, ValueError) as exc:
            r.notes.append(f"report: the in-process figure is missing: {str(exc).splitlines()[0]}")
        finally:
            _empty(root / "runs")
        a = self.orch_cmd(
            f"run ten ({n} steps) --html-report", root, "run", "ten", "--html-report", str(root / "report.html")
        )
        b = self.orch_cmd(f"run ten ({n} steps)", root, "run", "ten")
        measure_pair(a, b, m.reps_steps * 2, m.timeout)
        added = a.median_ms - b.median_ms
        verdict = r.target(
            "html_report_cost",
            "html_report",
            added,
            "<=",
            5.0,
            "ms",
            f"--html-report adds at most 5 ms to a {n}-step run (difference of medians)",
        )
        r.figures["html_report"] = _pair(
            a,
            b,
            ratio=a.median_ms / b.median_ms,
            added_ms=added,
            added_min_ms=min(a.times_ms()) - min(b.times_ms()),
            steps=n,
            in_process=in_process,
        )
        r.rows.append(
            Row(
                f"report: run {n} steps --html-report vs without",
                a.cell(),
                b.cell(),
                f"{added:+.1f} ms",
                "≤ +5 ms",
                verdict,
            )
        )
        if in_process is not None:
            r.rows.append(
                Row(
                    "report: the report alone, in one process",
                    f"{in_process['median_ms']:.2f} ms",
                    "",
                    f"{in_process['bytes']:,} bytes",
                )
            )

    # --- 5. globs ---

    def globs(self) -> None:
        m, r = self.mode, self.results
        out = check_output([self.python, "-c", GLOB_SCRIPT, str(m.reps_fixed)], self.work, self.env, m.timeout)
        data = json.loads(out)
        # The ratio of the minimums: the figure is about how the work grows, and noise on a shared
        # machine only ever adds time (a 10x workload is ~10.3x its base; medians of a few rounds
        # on a loaded machine moved that by ±50 %).
        fig: dict[str, Any] = {
            "estimator": "ratio of the minimum times over interleaved rounds to match every "
            "path against every pattern (path_matches, as when.changed does)",
            **data,
        }
        for key, label, target in (
            ("patterns_10x", "10× the patterns", True),
            ("path_10x", "10× the path length", True),
            ("braces_10x", "10× the brace alternatives (one glob)", False),
        ):
            ratio = data[key]["min_ms"] / data[data[key]["against"]]["min_ms"]
            fig[f"{key}_ratio"] = round(ratio, 4)
            verdict = ""
            if target:
                verdict = r.target(
                    f"glob_{key}", "glob_matching", ratio, "<=", 12.0, "x", f"glob matching with {label} ≤ 12× the time"
                )
            cell = lambda d: f"{_ms(d['min_ms'])} min, {_ms(d['median_ms'], False)} median"  # noqa: E731
            r.rows.append(
                Row(
                    f"globs: {label}",
                    cell(data[key]),
                    cell(data[data[key]["against"]]),
                    f"{ratio:.2f}×",
                    "≤ 12×" if target else "",
                    verdict,
                )
            )
        r.figures["glob_matching"] = fig

        spec16 = "{a,b}" * 16
        changed12 = "{a,b,c,d}" * 12
        root = self.project(
            "globs",
            {
                "braces16": [{"name": "ui", "type": "cypress", "project": "./web", "spec": spec16}],
                "braces12": [
                    {"name": "lint", "type": "command", "run": ["/bin/true"], "when": {"changed": [changed12]}}
                ],
                "plain": [
                    {"name": "ui", "type": "cypress", "project": "./web", "spec": "**/*.cy.{js,ts}"},
                    {"name": "lint", "type": "command", "run": ["/bin/true"], "when": {"changed": ["src/**"]}},
                ],
            },
        )
        dry: dict[str, Any] = {}
        for name, shown in (("braces16", '"{a,b}" × 16'), ("braces12", '"{a,b,c,d}" × 12')):
            a = Cmd(
                f"orchestrate run {name} --dry-run",
                [*self.orch, "--root", str(root), "run", name, "--dry-run"],
                root,
                self.env,
                ok_codes=(2,),
            )
            b = self.orch_cmd("orchestrate run plain --dry-run", root, "run", "plain", "--dry-run")
            measure_pair(a, b, m.reps_fixed, m.timeout)
            seconds = a.median_ms / 1000
            verdict = r.target(
                f"dry_run_{name}",
                "glob_dry_run",
                seconds,
                "<=",
                0.5,
                "s",
                f"run --dry-run of a workflow with {shown} < 0.5 s",
            )
            dry[name] = _pair(
                a, b, ratio=a.median_ms / b.median_ms, pattern=spec16 if name == "braces16" else changed12
            )
            r.rows.append(
                Row(
                    f"globs: --dry-run with {shown} vs a plain one",
                    a.cell(),
                    b.cell(),
                    f"{a.median_ms / b.median_ms:.2f}×",
                    "< 0.5 s",
                    verdict,
                )
            )
        r.figures["glob_dry_run"] = dry

    # --- 6. inputs ---

    def inputs(self) -> None:
        m, r = self.mode, self.results
        files, size = m.input_files
        runs_small, runs_big = m.history_sizes
        out = check_output(
            [
                self.python,
                "-c",
                INPUTS_SCRIPT,
                str(self.work / "inputs"),
                str(files),
                str(size),
                str(runs_small),
                str(runs_big),
                str(m.reps_fixed),
            ],
            self.work,
            self.env,
            m.timeout * 4,
        )
        data = json.loads(out)
        hashing = data["hashing"]
        second = hashing["second"]["min_ms"]
        net = hashing["second_hashing"]["min_ms"]
        verdict = r.target(
            "inputs_second_hash",
            "inputs_hashing",
            net,
            "<=",
            50.0,
            "ms",
            f"hashing {files:,} source files ({_size(size)}) the second time ≤ 50 ms",
        )
        hashing["second_vs_walk"] = _round(_ratio(second, hashing["walk"]["min_ms"]))
        hashing["second_vs_first"] = _round(_ratio(second, hashing["first"]["min_ms"]))
        r.rows.append(
            Row(
                f"inputs: hashing {files:,} files ({_size(size)}) the second time",
                f"{_ms(net)} min",
                "",
                "",
                "≤ 50 ms",
                verdict,
            )
        )
        r.rows.append(
            Row(
                "inputs: the second time with the walk vs the walk (list + stat)",
                f"{_ms(second)} min",
                f"{_ms(hashing['walk']['min_ms'])} min",
                _x(hashing["second_vs_walk"]),
            )
        )
        r.rows.append(
            Row(
                "inputs: the first time (every file read) vs the walk",
                f"{_ms(hashing['first']['min_ms'])} min",
                f"{_ms(hashing['walk']['min_ms'])} min",
                _x(_ratio(hashing["first"]["min_ms"], hashing["walk"]["min_ms"])),
            )
        )
        r.figures["inputs_hashing"] = hashing
        index = data["index"]
        ratio = _ratio(index["big"]["min_ms"], index["small"]["min_ms"])
        index["ratio"] = _round(ratio)
        verdict = r.target(
            "index_lookup",
            "index_lookup",
            ratio,
            "<=",
            2.0,
            "x",
            f"the last pass of a step with {runs_big:,} runs ≤ 2× with {runs_small}",
        )
        r.rows.append(
            Row(
                f"inputs: a step's last pass, {runs_big:,} vs {runs_small} runs",
                f"{_ms(index['big']['min_ms'])} min",
                f"{_ms(index['small']['min_ms'])} min",
                _x(ratio),
                "≤ 2×",
                verdict,
            )
        )
        r.figures["index_lookup"] = index


# Run by the orchestrate interpreter (issue 17): times hashing a step's sources the first and
# the second time against a stat-only walk, and the index lookup of a step's last pass with few
# and with many runs; prints JSON. Minimums of interleaved rounds: noise only ever adds time.
INPUTS_SCRIPT = r"""
import json, os, statistics, sys, time
from pathlib import Path
import orchestrate

work, files, size, small, big, reps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
reps = max(3, reps)

def stats(samples):
    return {"min_ms": round(min(samples), 3), "median_ms": round(statistics.median(samples), 3),
            "max_ms": round(max(samples), 3), "runs": len(samples)}

# hashing: files of equal size under src/, 100 to a folder
root = work / "tree"
chunk = os.urandom(size // files)
for k in range(files):
    path = root / "src" / f"d{k // 100}" / f"f{k}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chunk)
time.sleep(1.1)  # older than the one-second window in which a file is always read again
step = orchestrate.Step(index=0, name="s", type="command", config={}, resolved={}, sources=["src/**/*.py"])
runs = work / "runs"
runs.mkdir(parents=True, exist_ok=True)
first, second, walk, hashing_only = [], [], [], []
for i in range(reps):
    (runs / ".index" / "hashes.json").unlink(missing_ok=True)
    hashes = orchestrate.FileHashes(runs)
    t = time.perf_counter(); expected = orchestrate.sources_sha256(step, root, runs, hashes); first.append((time.perf_counter() - t) * 1000)
    hashes.save()
    again = orchestrate.FileHashes(runs)
    t = time.perf_counter(); digest = orchestrate.sources_sha256(step, root, runs, again); second.append((time.perf_counter() - t) * 1000)
    assert digest == expected and again.files_read == 0, again.files_read
    t = time.perf_counter(); listed = orchestrate._matching_files(root, step.sources, runs); walk.append((time.perf_counter() - t) * 1000)
    assert len(listed) == files
    # the hashing alone, the second time: the cache read from disk and every file's lookup
    fresh = orchestrate.FileHashes(runs)
    t = time.perf_counter()
    fresh._load()
    for _relative, path, info in listed:
        fresh.digest(path, info)
    hashing_only.append((time.perf_counter() - t) * 1000)
    assert fresh.files_read == 0
hashing = {"files": files, "bytes": size, "first": stats(first), "second": stats(second), "walk": stats(walk),
           "second_hashing": stats(hashing_only),
           "estimator": "minimum over rounds; second = a fresh process's cache read from runs/.index/hashes.json; "
                        "second_hashing = the same without listing and stat-ing the files (walk)"}

# the index: N small finished records of one workflow, the step passed in the oldest one only
def make_runs(folder, count):
    store = orchestrate.RunStore(folder)
    store.ensure_dir()
    base = time.time() - count - 10
    for n in range(count):
        run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(base + n)) + f"000Z-{n:06x}"
        entry = {"step": "s", "type": "command", "status": "passed" if n == 0 else "skipped", "message": "",
                 "log_file": f"runs/{run_id}/01-s.log", "definition_sha256": "d" * 64}
        if n == 0:
            entry["inputs_sha256"] = "i" * 64
        else:
            entry.update(inputs_sha256="i" * 64, up_to_date_since="first")
        record = {"schema_version": orchestrate.SCHEMA_VERSION, "run_id": run_id, "workflow": "w",
                  "status": "completed", "current": None, "running": [], "started_at": None, "finished_at": None,
                  "pid": None, "trigger": {}, "log": [entry]}
        (folder / f"{run_id}.json").write_bytes(orchestrate._dump_record(record))  # not timed: no fsync
    orchestrate.StepIndex(store).rebuild()
    return store

stores = {"small": make_runs(work / "runs-small", small), "big": make_runs(work / "runs-big", big)}
times = {"small": [], "big": []}
for i in range(reps * 4):
    for name in (("small", "big") if i % 2 else ("big", "small")):
        index = orchestrate.StepIndex(stores[name])
        t = time.perf_counter()
        found = index.last_pass("w", "s")
        times[name].append((time.perf_counter() - t) * 1000)
        assert found is not None and not index.rebuilt
index = {name: {**stats(samples), "runs": len(stores[name].list_ids())} for name, samples in times.items()}
print(json.dumps({"hashing": hashing, "index": index}))
"""


# Run by the orchestrate interpreter: times path_matches (when.changed's matcher) over
# workloads that differ by one factor, in interleaved rounds, and prints JSON.
GLOB_SCRIPT = r"""
import json, statistics, sys, time
import orchestrate

reps = int(sys.argv[1])
SHAPES = ["src/mod#/**/*.py", "**/test_#*.py", "docs#/", "*.x#", "**/a/**/a/**/b#", "**/*a*a*a*b#",
          "lib/**/v#/*.{js,ts}", "/setup#.cfg", "**/cache#/**", "x#/*/y/*/z"]

def patterns(count):
    return [SHAPES[k % len(SHAPES)].replace("#", str(k)) for k in range(count)]

def paths(segments, count=50):
    # near misses that make a backtracking matcher try every split: 'a' folders for the
    # several-** shape, a long run of 'a' for the *a*a*a one (0.1.0: cubic, 350 ms a path at 400)
    return ["a/" * segments + "a" * (6 * segments) + f".{k}" for k in range(count)]

def spec_paths(count=500):
    # every alternative "specK" starts like "specK9": each one is tried, none matches
    return [f"spec{k % 100}9/" + "a/" * 10 + "x.cy.jsx" for k in range(count)]

def brace_patterns(count):
    return ["{" + ",".join(f"spec{k}" for k in range(count)) + "}/**/*.cy.{js,ts}"]

workloads = {
    "base": (patterns(10), paths(12)),
    "patterns_10x": (patterns(100), paths(12)),
    "path_10x": (patterns(10), paths(120)),
    "braces_base": (brace_patterns(10), spec_paths()),
    "braces_10x": (brace_patterns(100), spec_paths()),
}
against = {"patterns_10x": "base", "path_10x": "base", "braces_10x": "braces_base"}

def once(pats, items):
    started = time.perf_counter()
    for _ in range(20):  # the base takes some 10 ms: far above the timer's and the scheduler's noise
        for path in items:
            for pattern in pats:
                orchestrate.path_matches(path, pattern)
    return (time.perf_counter() - started) * 1000

for pats, items in workloads.values():  # compile (cached) and warm up
    once(pats, items)
times = {name: [] for name in workloads}
names = list(workloads)
for i in range(reps):
    order = names[i % len(names):] + names[:i % len(names)]
    for name in order:
        times[name].append(once(*workloads[name]))
result = {}
for name, samples in times.items():
    pats, items = workloads[name]
    result[name] = {"median_ms": round(statistics.median(samples), 4), "min_ms": round(min(samples), 4),
                    "max_ms": round(max(samples), 4), "runs": len(samples), "patterns": len(pats),
                    "paths": len(items), "path_length": len(items[0])}
    if name in against:
        result[name]["against"] = against[name]
print(json.dumps(result))
"""


# === Helpers ===


def _cpu_ratio(a: Cmd, b: Cmd) -> float | None:
    """Median CPU time of a over b's: steadier than wall time when other jobs share the machine."""
    return _ratio(
        statistics.median(s.cpu_seconds for s in a.samples), statistics.median(s.cpu_seconds for s in b.samples)
    )


class DiskSyncer:
    """Another process writing 64 KiB and fdatasync-ing it in a loop while a figure is measured:
    what a busy disk does to a program that syncs (issue 15: one fdatasync per step cost 0.3 ms on
    a quiet disk, 1.7 ms on a busy one)."""

    SCRIPT = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "block, count = b'x' * 65536, 0\n"
        "while True:\n"
        "    os.write(fd, block); os.fdatasync(fd); count += 1\n"
        "    if count % 64 == 0:\n"
        "        os.lseek(fd, 0, 0); os.ftruncate(fd, 0); print(count, flush=True)\n"
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.syncs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DiskSyncer:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(self.path)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.process is not None
        self.process.kill()
        out, _ = self.process.communicate()
        lines = out.split()
        self.syncs = int(lines[-1]) if lines else 0
        self.path.unlink(missing_ok=True)


def _pair(a: Cmd, b: Cmd, **extra: Any) -> dict[str, Any]:
    out = {
        "orchestrate": a.summary(),
        "baseline": b.summary(),
        # noise on a shared machine only ever adds time: the minimums show the floor
        "ratio_of_min": round(min(a.times_ms()) / min(b.times_ms()), 4),
    }
    out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in extra.items()})
    return out


def _ratio(num: float, den: float) -> float | None:
    """num / den, or None when either is not positive (noise swamped a difference)."""
    return num / den if num > 0 and den > 0 else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _x(value: float | None, unit: str = "×") -> str:
    return "n/a (noise)" if value is None else f"{value:.2f}{unit}"


def _size(size: int) -> str:
    return f"{size // (1000 * MB)} GB" if size >= 1000 * MB and size % (1000 * MB) == 0 else f"{size // MB} MB"


def _empty(folder: Path) -> None:
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name != ".gitkeep":
                entry.unlink(missing_ok=True)


def run_ids(runs: Path) -> list[str]:
    """Run ids in runs/, oldest first (ids sort by start time)."""
    return sorted(p.stem for p in runs.glob("*.json") if RUN_ID_RE.match(p.stem))


def clone_runs(runs: Path, count: int) -> int | str:
    """Add `count` copies of the newest real run under fresh, older run ids of the same
    format (every file and folder named after the id, with the id replaced inside too).
    Returns the count, or why it could not."""
    ids = run_ids(runs)
    if not ids:
        names = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
        return f"no run record named like 20261127T154000123Z-1a2b3c.json in runs/ (found {names[:5]})"
    template = ids[-1]
    entries = [p for p in runs.iterdir() if p.name.startswith(template)]
    record = json.loads((runs / f"{template}.json").read_text())
    oldest = RUN_ID_RE.match(ids[0])
    assert oldest is not None
    start = dt.datetime.strptime(oldest.group(1) + oldest.group(2), "%Y%m%dT%H%M%S%f")
    start -= dt.timedelta(seconds=count * 7)
    hex_len = len(oldest.group(3))
    for i in range(count):
        when = start + dt.timedelta(seconds=i * 7, milliseconds=i % 1000)
        new_id = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z-" + secrets.token_hex(8)[:hex_len]
        iso = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        for entry in entries:
            target = runs / entry.name.replace(template, new_id, 1)
            if entry.name == f"{template}.json":
                copy = dict(record, run_id=new_id, started_at=iso)
                if record.get("finished_at"):
                    copy["finished_at"] = iso
                text = json.dumps(copy).replace(template, new_id)
                target.write_text(text)
            elif entry.is_dir():
                _copy_tree(entry, target, template, new_id)
            else:
                _copy_file(entry, target, template, new_id)
    return count


def _copy_tree(src: Path, dst: Path, old: str, new: str) -> None:
    dst.mkdir()
    for entry in src.iterdir():
        if entry.is_dir():
            _copy_tree(entry, dst / entry.name, old, new)
        else:
            _copy_file(entry, dst / entry.name.replace(old, new), old, new)


def _copy_file(src: Path, dst: Path, old: str, new: str) -> None:
    data = src.read_bytes()
    dst.write_bytes(data.replace(old.encode(), new.encode()))


def interpreter_of(orchestrate: list[str]) -> str:
    """The Python that runs orchestrate: the baseline for `python -c pass` is the same
    interpreter (a pyenv shim or another version would measure something else)."""
    first = orchestrate[0]
    if "python" in Path(first).name:
        return first
    path = Path(shutil.which(first) or first)
    try:
        head = path.read_bytes()[:1024].decode(errors="replace").splitlines()
    except OSError:
        return sys.executable
    if head and head[0].startswith("#!"):
        shebang = head[0][2:].strip().split()
        if shebang and "python" in Path(shebang[0]).name:
            return shebang[0]
        if shebang and Path(shebang[0]).name == "env" and len(shebang) > 1:
            return shutil.which(shebang[-1]) or sys.executable
        for line in head[1:4]:  # pip's launcher for long paths: '''exec' /path/python "$0" "$@"
            found = re.match(r"'''exec' (\S+) ", line)
            if found:
                return found.group(1)
    return sys.executable


def bench_env(orchestrate: list[str], cache: Path, notes: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    # Not the user's CI integration, skip switch or root: the bench decides those.
    for name in (
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
        "ORCHESTRATE_SKIP",
        "ORCHESTRATE_ROOT",
        "ORCHESTRATE_BIN",
        "ORCHESTRATE_PRE_PUSH_WORKFLOW",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
    ):
        env.pop(name, None)
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        # With it, an editable install recompiles orchestrate.py on every start (a pipx
        # install has its .pyc): that is not what a user's push pays.
        notes.append("PYTHONDONTWRITEBYTECODE was set: unset for the measured commands")
    env["PRE_COMMIT_HOME"] = str(cache / "pre-commit-home")
    env["NO_COLOR"] = "1"
    # The hook finds orchestrate on PATH, as after `pipx install`.
    exe = shutil.which(orchestrate[0])
    if exe:
        env["PATH"] = f"{Path(exe).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def find_orchestrate(arg: str | None) -> list[str]:
    if arg:
        return shlex.split(arg)
    beside = Path(sys.executable).parent / "orchestrate"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("orchestrate")
    if found:
        return [found]
    raise SystemExit(
        "bench/run.py: no `orchestrate` beside this Python nor on PATH: install it "
        "(pip install -e .) or pass --orchestrate CMD"
    )


def machine_info(orchestrate: list[str], python: str, env: dict[str, str]) -> dict[str, Any]:
    def read(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "orchestrate": orchestrate,
        "orchestrate_version": read([*orchestrate, "--version"]),
        "python": python,
        "python_version": read([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "typer_version": read([python, "-c", "import typer; print(typer.__version__)"]),
        "repo_commit": read(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "bench_python": sys.version.split()[0],
    }


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI smoke test: small and fast (< 60 s)")
    size.add_argument("--full", action="store_true", help="also 1 GB of output, more repetitions")
    parser.add_argument(
        "--orchestrate",
        metavar="CMD",
        help="command to run orchestrate (default: the console script beside this Python, else on PATH)",
    )
    parser.add_argument("--json-out", metavar="PATH", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--only", metavar="SECTIONS", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (path printed)")
    parser.add_argument(
        "--baseline-ref",
        metavar="REF",
        default=BASELINE_REF,
        help=f"the git tag or commit whose orchestrate.py the chain figure compares with (default {BASELINE_REF})",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    mode = QUICK if args.quick else FULL if args.full else NORMAL
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}: choose from {', '.join(SECTIONS)}")

    orchestrate = find_orchestrate(args.orchestrate)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orchestrate-bench"
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    bench = Bench(orchestrate, mode, work, cache)
    bench.baseline_ref = args.baseline_ref
    started = time.perf_counter()
    load_at_start = list(os.getloadavg())
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"orchestrate bench ({mode.name}): {shlex.join(orchestrate)}; projects in {work}", file=sys.stderr)
    failures: list[str] = []
    try:
        for name in sections:  # one failing section does not hide the others' figures
            t0 = time.perf_counter()
            try:
                getattr(bench, name)()
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                failures.append(f"{name}: {exc}")
                bench.results.notes.append(f"{name}: FAILED, figures missing: {str(exc).splitlines()[0]}")
            print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = "\n".join(failures) or None
    r = bench.results
    info = machine_info(orchestrate, bench.python, bench.env)
    info["loadavg_at_start"] = load_at_start  # 1, 5, 15 min: other jobs on the machine
    info["loadavg_at_end"] = list(os.getloadavg())
    info["nice"] = os.nice(0)
    doc = {
        "schema_version": 1,
        "mode": mode.name,
        "command": command,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": info,
        "figures": r.figures,
        "targets": r.targets,
        "all_targets_pass": all(t["pass"] for t in r.targets if t["pass"] is not None),
        "notes": r.notes,
        "error": failed,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"\n{info['orchestrate_version']} on {info['cpus']} × {info['cpu']}, Python {info['python_version']}, "
        f"Typer {info['typer_version'] or '?'}, mode {mode.name}, load average "
        f"{load_at_start[0]:.2f} at start, {info['loadavg_at_end'][0]:.2f} at end"
    )
    print(r.table())
    for note in r.notes:
        print(f"note: {note}")
    passed = sum(1 for t in r.targets if t["pass"])
    judged = sum(1 for t in r.targets if t["pass"] is not None)
    print(f"targets: {passed} of {judged} met; results in {args.json_out} ({doc['seconds']}s)")
    if failed:
        print(
            f"bench/run.py: a measured command failed, so the figures above are incomplete:\n{failed}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
