"""Guarantee 4 — bad input: every malformed workflow file or command line is exit 2, one line
on stderr naming the place, no traceback, and nothing written under runs/ (nothing ran)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _rel import assert_one_line_error, files_under
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrate

W = "workflows/w.json"
OK_STEP = {"name": "a", "type": "command", "run": ["true"]}


def _doc(steps: Any = None, **extra: Any) -> bytes:
    return json.dumps({"steps": [OK_STEP] if steps is None else steps, **extra}).encode()


def _steps(*steps: dict[str, Any]) -> bytes:
    return _doc(list(steps))


# (id, file bytes, words the one line must contain)
FILE_CASES: list[tuple[str, bytes, list[str]]] = [
    ("empty-file", b"", [W, "empty"]),
    ("whitespace-only", b"  \n\t ", [W, "empty"]),
    ("malformed", b"{steps: []}", [W, "invalid JSON at line 1"]),
    ("truncated", _doc()[:-7], [W, "invalid JSON"]),
    ("truncated-string", b'{"steps": [{"name": "a', [W, "invalid JSON"]),
    ("trailing-comma", b'{"steps": [],}', [W, "invalid JSON"]),
    ("trailing-garbage", _doc() + b"}", [W, "invalid JSON"]),
    ("two-documents", _doc() + _doc(), [W, "invalid JSON"]),
    ("single-quotes", b"{'steps': []}", [W, "invalid JSON"]),
    ("comment", b'// c\n{"steps": []}', [W, "invalid JSON"]),
    ("nan", b'{"steps": [{"name": "a", "type": "command", "run": "true", "timeout": NaN}]}', [W, "NaN"]),
    ("infinity", b'{"steps": [{"name": "a", "type": "command", "run": "true", "timeout": Infinity}]}', [W, "Infinity"]),
    (
        "float-overflow",
        b'{"steps": [{"name": "a", "type": "command", "run": "true", "timeout": 1e999}]}',
        [W, "'timeout'", "out of range"],
    ),
    (
        "int-overflow",
        b'{"steps": [{"name": "a", "type": "command", "run": "true", "timeout": 1' + b"0" * 400 + b"}]}",
        [W, "'timeout'", "out of range"],
    ),
    (
        "int-too-many-digits",
        b'{"steps": [{"name": "a", "type": "command", "run": "true", "retries": 1' + b"0" * 5000 + b"}]}",
        [W, "invalid JSON", "digits"],
    ),
    ("utf16-le-bom", "\ufeff".encode("utf-16-le") + _doc().decode().encode("utf-16-le"), [W, "UTF-16"]),
    ("utf16-be-bom", "\ufeff".encode("utf-16-be") + _doc().decode().encode("utf-16-be"), [W, "UTF-16"]),
    ("utf16-no-bom", _doc().decode().encode("utf-16-le"), [W]),
    ("latin1", b'{"steps": [{"name": "caf\xe9", "type": "command", "run": "true"}]}', [W, "UTF-8", "0xe9"]),
    ("invalid-utf8-continuation", b'{"steps": [{"name": "\x80", "type": "command", "run": "true"}]}', [W, "UTF-8"]),
    ("overlong-utf8", b'{"steps": [{"name": "\xc0\xaf", "type": "command", "run": "true"}]}', [W, "UTF-8"]),
    ("lone-surrogate-escape", b'{"steps": [{"name": "\\ud800", "type": "command", "run": "true"}]}', [W, "surrogate"]),
    (
        "lone-surrogate-in-run",
        b'{"steps": [{"name": "a", "type": "command", "run": ["echo", "\\udfff"]}]}',
        [W, "surrogate"],
    ),
    ("deep-10000-array", b"[" * 10000 + b"]" * 10000, [W, "nested"]),
    ("deep-10000-object", b'{"a":' * 10000 + b"1" + b"}" * 10000, [W, "nested"]),
    (
        "deep-900-in-steps",
        b'{"steps": [{"name": "a", "type": "command", "run": "true", "env": ' + b"[" * 900 + b"]" * 900 + b"}]}",
        [W, "nested"],
    ),
    ("duplicate-key", b'{"steps": [], "steps": []}', [W, "'steps'", "twice"]),
    (
        "duplicate-key-in-step",
        b'{"steps": [{"name": "a", "name": "b", "type": "command", "run": "x"}]}',
        [W, "'name'", "twice"],
    ),
    ("top-level-list", b"[]", [W, "JSON object"]),
    ("top-level-null", b"null", [W, "JSON object"]),
    ("top-level-string", b'"steps"', [W, "JSON object"]),
    ("top-level-number", b"42", [W, "JSON object"]),
    ("no-steps-key", b"{}", [W, "'steps'"]),
    ("empty-steps", _doc([]), [W, "'steps'", "empty"]),
    ("steps-not-list", _doc({"a": 1}), [W, "'steps'"]),
    ("step-not-object", _doc(["echo hi"]), [W, "steps[0]", "object"]),
    ("step-null", _doc([None]), [W, "steps[0]"]),
    ("step-empty-object", _doc([{}]), [W, "steps[0]", "'name'"]),
    ("unknown-workflow-key", _doc(stepz=[]), [W, "'stepz'"]),
    ("workflow-name-mismatch", _doc(name="other"), [W, "'name'"]),
    ("workflow-env-not-object", _doc(env=["A=1"]), [W, "'env'"]),
    ("workflow-env-value-number", _doc(env={"A": 1}), [W, "'env.A'"]),
    ("workflow-env-bad-name", _doc(env={"A=B": "1"}), [W, "'env'"]),
    ("workflow-env-empty-name", _doc(env={"": "1"}), [W, "'env'"]),
    ("secrets-not-list", _doc(secrets="JIRA_TOKEN"), [W, "'secrets'"]),
    ("secrets-bad-name", _doc(secrets=["JIRA-TOKEN"]), [W, "'secrets'"]),
    ("secrets-item-number", _doc(secrets=[1]), [W, "'secrets[0]'"]),
    ("duplicate-step-names", _steps(OK_STEP, OK_STEP), [W, "steps[1]", "duplicate"]),
    ("unknown-type", _steps({"name": "a", "type": "nosuch"}), [W, "steps[0]", "'nosuch'"]),
    ("type-with-slash", _steps({"name": "a", "type": "../x"}), [W, "steps[0]", "unknown step type"]),
    ("type-empty", _steps({"name": "a", "type": ""}), [W, "steps[0]", "unknown step type"]),
    ("type-uppercase", _steps({"name": "a", "type": "Command"}), [W, "steps[0]", "did you mean"]),
    ("type-with-newline", _steps({"name": "a", "type": "com\nmand"}), [W, "steps[0]", "\\n"]),
    ("type-with-nul", _steps({"name": "a", "type": "x\x00y"}), [W, "steps[0]"]),
    ("unknown-step-key", _steps({**OK_STEP, "scirpt": "x"}), [W, "steps[0]", "'scirpt'"]),
    ("unknown-key-with-escape", _steps({**OK_STEP, "\x1b]0;pwned\x07": 1}), [W, "steps[0]", "\\x1b"]),
    ("name-with-slash", _steps({**OK_STEP, "name": "a/b"}), [W, "steps[0]", "'name'"]),
    ("name-with-backslash", _steps({**OK_STEP, "name": "a\\b"}), [W, "steps[0]", "'name'"]),
    ("name-with-nul", _steps({**OK_STEP, "name": "a\x00b"}), [W, "steps[0]", "'name'"]),
    ("name-with-newline", _steps({**OK_STEP, "name": "a\nb"}), [W, "steps[0]", "'name'"]),
    ("name-empty", _steps({**OK_STEP, "name": ""}), [W, "steps[0]", "'name'"]),
    ("name-blank", _steps({**OK_STEP, "name": "   "}), [W, "steps[0]", "'name'"]),
    ("name-too-long", _steps({**OK_STEP, "name": "n" * 101}), [W, "steps[0]", "'name'"]),
    ("run-empty-list", _steps({**OK_STEP, "run": []}), [W, "steps[0]", "'run'"]),
    ("run-blank", _steps({**OK_STEP, "run": "  "}), [W, "steps[0]", "'run'"]),
    ("run-item-number", _steps({**OK_STEP, "run": ["echo", 1]}), [W, "steps[0]", "'run[1]'"]),
    ("run-with-nul", _steps({**OK_STEP, "run": "echo a\x00b"}), [W, "steps[0]", "'run'", "NUL"]),
    ("arg-with-nul", _steps({**OK_STEP, "run": ["echo", "a\x00b"]}), [W, "steps[0]", "NUL"]),
    ("env-value-with-nul", _steps({**OK_STEP, "env": {"A": "a\x00b"}}), [W, "steps[0]", "NUL"]),
    ("env-name-with-equals", _steps({**OK_STEP, "env": {"A=B": "x"}}), [W, "steps[0]", "'env'"]),
    ("timeout-zero", _steps({**OK_STEP, "timeout": 0}), [W, "steps[0]", "'timeout'"]),
    ("timeout-negative", _steps({**OK_STEP, "timeout": -1}), [W, "steps[0]", "'timeout'"]),
    ("retries-negative", _steps({**OK_STEP, "retries": -1}), [W, "steps[0]", "'retries'"]),
    ("retries-huge", _steps({**OK_STEP, "retries": 10**6}), [W, "steps[0]", "'retries'"]),
    ("retry-delay-huge", _steps({**OK_STEP, "retry_delay": 10**6}), [W, "steps[0]", "'retry_delay'"]),
    ("shard-bad", _steps({**OK_STEP, "shard": "last"}), [W, "steps[0]", "'shard'"]),
    ("when-unknown-key", _steps({**OK_STEP, "when": {"stat": "always"}}), [W, "steps[0]", "'when.stat'"]),
    ("when-status-bad", _steps({**OK_STEP, "when": {"status": "sometimes"}}), [W, "steps[0]", "'when.status'"]),
    ("when-status-list", _steps({**OK_STEP, "when": {"status": ["always"]}}), [W, "steps[0]", "'when.status'"]),
    ("when-changed-empty", _steps({**OK_STEP, "when": {"changed": []}}), [W, "steps[0]", "'when.changed'"]),
    ("when-branch-number", _steps({**OK_STEP, "when": {"branch": 1}}), [W, "steps[0]", "'when.branch'"]),
    ("interp-unterminated", _steps({**OK_STEP, "run": "echo ${"}), [W, "steps[0]", "'run'", "unterminated"]),
    ("interp-unterminated-name", _steps({**OK_STEP, "run": "echo ${HOME"}), [W, "steps[0]", "unterminated"]),
    ("interp-empty", _steps({**OK_STEP, "run": "echo ${}"}), [W, "steps[0]", "not a variable reference"]),
    ("interp-bad-name", _steps({**OK_STEP, "run": "echo ${1X}"}), [W, "steps[0]", "not a variable reference"]),
    ("interp-space", _steps({**OK_STEP, "run": "echo ${A B}"}), [W, "steps[0]", "not a variable reference"]),
    ("interp-nested-default", _steps({**OK_STEP, "run": "echo ${ORCH_UNSET_A:-${HOME}}"}), [W, "steps[0]", "nested"]),
    ("interp-nested-name", _steps({**OK_STEP, "run": "echo ${A${B}}"}), [W, "steps[0]"]),
    (
        "interp-unset",
        _steps({**OK_STEP, "run": "echo ${ORCH_SURELY_UNSET}"}),
        [W, "steps[0]", "ORCH_SURELY_UNSET", "not set"],
    ),
    (
        "interp-unset-in-list",
        _steps({**OK_STEP, "run": ["echo", "${ORCH_SURELY_UNSET}"]}),
        [W, "steps[0]", "'run[1]'", "not set"],
    ),
    (
        "interp-unset-in-env",
        _steps({**OK_STEP, "env": {"X": "${ORCH_SURELY_UNSET}"}}),
        [W, "steps[0]", "'env.X'", "not set"],
    ),
    ("interp-unset-workflow-env", _doc(env={"X": "${ORCH_SURELY_UNSET}"}), [W, "'env.X'", "not set"]),
    ("interp-dollar-dollar-then-bad", _steps({**OK_STEP, "run": "echo $${X} ${"}), [W, "unterminated"]),
]


def _wrong_value(spec: orchestrate.KeySpec) -> list[Any]:
    """Values of the wrong type for a key spec (and wrong item types for lists and objects)."""
    wrong: list[Any] = []
    if str not in spec.types:
        wrong.append("text")
    if not set(spec.types) & {int, float}:
        wrong.append(3)
    if bool not in spec.types:
        wrong.append(True)
    if list not in spec.types:
        wrong.append(["x"])
    if dict not in spec.types:
        wrong.append({"x": "y"})
    wrong.append(None)
    if spec.item_type is str and list in spec.types:
        wrong.append([1])
    if spec.item_type is str and dict in spec.types:
        wrong.append({"K": 1})
    return wrong


_SAMPLE = {str: "x", int: 1, float: 1.0, bool: True, list: ["x"], dict: {}}
BASES: dict[str, dict[str, Any]] = {
    "python": {"name": "s", "type": "python", "script": "main.py", "venv": ".venv"},
    "command": {"name": "s", "type": "command", "run": ["true"]},
    "cypress": {"name": "s", "type": "cypress", "project": "web", "folder": "cypress/e2e"},
    "jira": {
        "name": "s",
        "type": "jira",
        "jira_url": "https://jira.example/rest/api/2",
        "user": "u",
        "token": "t0ken-value",
        "issue": "PROJ-1",
        "comment": "done",
    },
}


def _type_cases() -> list[tuple[str, bytes, list[str]]]:
    """Every key of every built-in type (plus the keys all steps share), each wrong type."""
    cases = []
    for type_name, runner in sorted(orchestrate.RUNNERS.items()):
        base = dict(
            BASES.get(type_name)
            or {
                "name": "s",
                "type": type_name,
                **{k: _SAMPLE[spec.types[0]] for k, spec in runner.keys.items() if spec.required},
            }
        )
        for key, spec in {**orchestrate.COMMON_KEYS, **runner.keys}.items():
            for n, value in enumerate(_wrong_value(spec)):
                step = {**base, key: value}
                if key == "name" and not isinstance(value, str):
                    words = [W, "steps[0]", "'name'"]
                else:
                    words = [W, "steps[0]", f"'{key}"]
                cases.append((f"{type_name}-{key}-wrong{n}", _steps(step), words))
    return cases


ALL_FILE_CASES = FILE_CASES + _type_cases()


def _write_plugin(root: Path) -> None:
    (root / "integrations").mkdir(parents=True, exist_ok=True)
    (root / "integrations" / "notify_runner.py").write_text("def execute(step):\n    return None\n")


@pytest.mark.parametrize("data,words", [c[1:] for c in ALL_FILE_CASES], ids=[c[0] for c in ALL_FILE_CASES])
def test_bad_workflow_file(project: Any, data: bytes, words: list[str]) -> None:
    _write_plugin(project.root)
    project.write("workflows/w.json", data)
    for args in (("run", "w"), ("validate", "w")):
        result = project.cli(*args)
        assert_one_line_error(result, *words)
    assert files_under(project.runs) == [], "a definition error must write nothing under runs/"


def test_case_count() -> None:
    assert len(ALL_FILE_CASES) + len(CLI_CASES) + len(SETTINGS_CASES) >= 100


def test_fifty_megabyte_file(project: Any) -> None:
    path = project.workflows / "w.json"
    with open(path, "wb") as handle:  # real bytes, not a sparse file: the size check must come first
        handle.write(b'{"steps": [' + b" " * (50 * 1024 * 1024) + b"]}")
    result = project.cli("run", "w")
    assert_one_line_error(result, W, "MB")
    assert files_under(project.runs) == []


def test_utf8_bom_is_accepted(project: Any) -> None:
    """By design (DESIGN.md: JSON allows ignoring it; some Windows editors add it)."""
    project.write("workflows/w.json", b"\xef\xbb\xbf" + _doc())
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stderr


def test_name_with_path_separator_is_a_plain_name_error(project: Any) -> None:
    project.write("workflows/w.json", _doc())
    (project.root / "x.json").write_bytes(_doc())
    for name in ("../x", "workflows/w", "/etc/passwd", "w\x00", ".w", "", "a" * 300, "..", "w\n"):
        result = project.cli("run", name)
        assert_one_line_error(result, "workflow name")
    assert files_under(project.runs) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("$${X}", "${X}"),
        ("$${ORCH_SURELY_UNSET}", "${ORCH_SURELY_UNSET}"),
        ("$$${ORCH_SET}", "$${ORCH_SET}"),  # "$${" is the escape, not "$$"
        ("${ORCH_SURELY_UNSET:-dflt}", "dflt"),
        ("${ORCH_SURELY_UNSET:-}end", "end"),
        ("${ORCH_EMPTY:-fallback}", "fallback"),
        ("${ORCH_SET}", "value"),
        ("${ORCH_SET:-a:-b}", "value"),
        ("${ORCH_SURELY_UNSET:-a}b}", "ab}"),
        ("$ORCH_SET $", "$ORCH_SET $"),
        ("a$", "a$"),
        ("}{$", "}{$"),
    ],
)
def test_interpolation_edges_that_are_valid(project: Any, text: str, expected: str) -> None:
    """Interpolated once, by orchestrate: the argv the command gets holds the result."""
    project.write("workflows/w.json", _steps({**OK_STEP, "run": ["printf", "%s", text]}))
    result = project.cli("run", "w", env={"ORCH_SET": "value", "ORCH_EMPTY": ""})
    assert result.exit_code == 0, result.stderr
    log = next(project.runs.glob("*/01-a.log")).read_text()
    assert log == expected


# CLI arguments: (id, argv after --root, words)
CLI_CASES: list[tuple[str, list[str], list[str]]] = [
    ("status-traversal", ["status", "../../etc/passwd"], ["not a run id"]),
    ("status-slash", ["status", "a/b"], ["not a run id"]),
    ("status-dotdot", ["status", ".."], ["not a run id"]),
    ("status-empty", ["status", ""], ["not a run id"]),
    ("status-very-long", ["status", "2" * 5000], ["not a run id"]),
    ("status-nul", ["status", "a\x00b"], ["not a run id"]),
    ("status-newline", ["status", "a\nb"], ["not a run id"]),
    ("status-unknown", ["status", "20261127T154000123Z-abcdef"], ["no run", "20261127T154000123Z-abcdef"]),
    ("logs-traversal", ["logs", "../x"], ["not a run id"]),
    ("logs-empty", ["logs", ""], ["not a run id"]),
    ("logs-unknown", ["logs", "20261127T154000123Z-abcdef"], ["no run"]),
    ("run-unknown-workflow", ["run", "nosuch"], ["no workflow 'nosuch'"]),
    ("run-typo-workflow", ["run", "ww"], ["no workflow 'ww'", "did you mean 'w'"]),
    ("validate-unknown", ["validate", "nosuch"], ["no workflow 'nosuch'"]),
    ("var-no-equals", ["run", "w", "--var", "X"], ["--var 'X'"]),
    ("var-empty-key", ["run", "w", "--var", "=v"], ["--var '=v'"]),
    ("var-digit-key", ["run", "w", "--var", "1X=v"], ["--var '1X=v'"]),
    ("var-dash-key", ["run", "w", "--var", "A-B=v"], ["--var 'A-B=v'"]),
    ("var-empty", ["run", "w", "--var", ""], ["--var ''"]),
    ("shard-zero", ["run", "w", "--shard", "0/2"], ["--shard '0/2'"]),
    ("shard-above", ["run", "w", "--shard", "3/2"], ["--shard '3/2'"]),
    ("shard-letters", ["run", "w", "--shard", "a/b"], ["--shard 'a/b'"]),
    ("shard-zero-total", ["run", "w", "--shard", "1/0"], ["--shard '1/0'"]),
    ("shard-three-parts", ["run", "w", "--shard", "1/2/3"], ["--shard '1/2/3'"]),
    ("shard-no-slash", ["run", "w", "--shard", "2"], ["--shard '2'"]),
    ("shard-huge", ["run", "w", "--shard", "99999/99999"], ["--shard"]),
    ("shard-negative", ["run", "w", "--shard", "-1/2"], ["--shard"]),
    ("only-unknown", ["run", "w", "--only", "nosuch"], ["--only 'nosuch'", "no such step"]),
    ("only-typo", ["run", "w", "--only", "aa"], ["--only 'aa'", "did you mean 'a'"]),
    ("only-one-bad", ["run", "w", "--only", "a", "--only", "zz"], ["--only 'zz'"]),
    ("skip-unknown", ["run", "w", "--skip", "nosuch"], ["--skip 'nosuch'"]),
    ("only-dry-run", ["run", "w", "--dry-run", "--only", "nosuch"], ["--only 'nosuch'"]),
    ("git-hook-bad", ["run", "w", "--git-hook", "pre-commit"], ["--git-hook"]),
    ("run-id-traversal", ["run", "w", "--run-id", "../x"], ["not a run id"]),
    ("runs-bad-status", ["runs", "--status", "done"], ["--status 'done'"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_command_line(project: Any, argv: list[str], words: list[str]) -> None:
    project.write("workflows/w.json", _doc())
    result = project.cli(*argv)
    assert_one_line_error(result, *words)
    assert files_under(project.runs) == []


SETTINGS_CASES: list[tuple[str, bytes, list[str]]] = [
    ("settings-malformed", b"{", ["orchestrate.json", "invalid JSON"]),
    ("settings-list", b"[]", ["orchestrate.json", "JSON object"]),
    ("settings-unknown-key", b'{"keep_run": 3}', ["orchestrate.json", "'keep_run'", "did you mean"]),
    ("settings-keep-string", b'{"keep_runs": "3"}', ["orchestrate.json", "'keep_runs'"]),
    ("settings-keep-zero", b'{"keep_runs": 0}', ["orchestrate.json", "'keep_runs'"]),
    ("settings-keep-float", b'{"keep_runs": 2.5}', ["orchestrate.json", "'keep_runs'"]),
    ("settings-keep-huge", b'{"keep_runs": 1e400}', ["orchestrate.json", "'keep_runs'"]),
    ("settings-modules-number", b'{"cypress_modules": {"a": 1}}', ["orchestrate.json", "'cypress_modules.a'"]),
]


@pytest.mark.parametrize("data,words", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_bad_settings_file(project: Any, data: bytes, words: list[str]) -> None:
    project.write("workflows/w.json", _doc())
    project.write("orchestrate.json", data)
    assert_one_line_error(project.cli("run", "w"), *words)
    assert files_under(project.runs) == []


# --- property: any JSON value as a workflow file -----------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_KEYS = sorted(
    {*orchestrate.COMMON_KEYS, "script", "venv", "args", "requirements", "run", "project", "folder", "token"}
    - {"name", "type"}
)
_near_steps = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=12), _json_values),
        "type": st.sampled_from(["command", "python", "notify", "nosuch", "", "Command"]) | _json_values,
    },
    optional={k: _json_values | st.text(alphabet="${}:-AZ_a \x00/", max_size=12) for k in _KEYS},
)
_near_workflows = st.fixed_dictionaries(
    {"steps": st.lists(_near_steps, max_size=3)},
    optional={"env": _json_values, "secrets": _json_values, "name": _json_values, "description": _json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=_json_values | _near_workflows)
def test_any_json_value_is_exit_0_1_2_never_a_traceback(tmp_path_factory: Any, document: Any) -> None:
    """Dry runs and validate only: a generated workflow must never execute generated commands."""
    from conftest import Project

    project = Project(tmp_path_factory.mktemp("prop") / "project")
    _write_plugin(project.root)
    project.write("workflows/w.json", json.dumps(document))
    for args in (("run", "w", "--dry-run"), ("validate", "w")):
        result = project.cli(*args)
        assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.exit_code == 2:
            assert len(result.stderr.splitlines()) >= 1
    assert files_under(project.runs) == []
