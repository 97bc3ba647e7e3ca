"""Loading and validating workflow files: every bad input is one clear line and exit 2."""

from __future__ import annotations

import json

import pytest

import orchestrate
from conftest import Project

PY = {"name": "py", "type": "python", "script": "s.py", "venv": ".venv"}
CMD = {"name": "cmd", "type": "command", "run": ["true"]}


def _doc(*steps: dict, **extra: object) -> str:
    return json.dumps({"steps": list(steps), **extra})


# (file content, expected message after "orchestrate: error: ")
BAD_WORKFLOWS = [
    ("{", "workflows/w.json: invalid JSON at line 1 column 2: Expecting property name enclosed in double quotes"),
    ('{"steps": [}', "workflows/w.json: invalid JSON at line 1 column 12: Expecting value"),
    ('{"steps": []', "workflows/w.json: invalid JSON at line 1 column 13: Expecting ',' delimiter"),
    ("", "workflows/w.json: file is empty; expected a JSON object"),
    ("[]", "workflows/w.json: expected a JSON object with a 'steps' list, not list"),
    ('"steps"', "workflows/w.json: expected a JSON object with a 'steps' list, not string"),
    ("{}", "workflows/w.json: missing required key 'steps'"),
    ('{"steps": {}}', "workflows/w.json: key 'steps' must be a list, not object"),
    ('{"steps": []}', "workflows/w.json: key 'steps' is empty; add at least one step"),
    (_doc(CMD, stesp=1), "workflows/w.json: unknown key 'stesp' (did you mean 'steps'?)"),
    (
        _doc(CMD, name="other"),
        "workflows/w.json: key 'name' is 'other' but the file is w.json; make them match (the file name is how you run it)",
    ),
    (_doc(CMD, env={"A": 1}), "workflows/w.json: key 'env.A' must be a string, not integer"),
    ('{"steps": [1]}', "workflows/w.json: steps[0]: expected an object, not integer"),
    (_doc({"type": "command", "run": "x"}), "workflows/w.json: steps[0]: missing required key 'name'"),
    (_doc({"name": "a", "run": "x"}), "workflows/w.json: steps[0] \"a\": missing required key 'type'"),
    (
        _doc({"name": 5, "type": "command", "run": "x"}),
        "workflows/w.json: steps[0]: key 'name' must be a string, not integer",
    ),
    (
        _doc({"name": "a", "type": "pyhton"}),
        "workflows/w.json: steps[0] \"a\": unknown step type 'pyhton' (did you mean 'python'?); built-in types: ",
    ),
    (_doc({**PY, "scirpt": "x"}), "workflows/w.json: steps[0] \"py\": unknown key 'scirpt' (did you mean 'script'?)"),
    (
        _doc({k: v for k, v in PY.items() if k != "script"}),
        "workflows/w.json: steps[0] \"py\": missing required key 'script'",
    ),
    (_doc({**PY, "args": "--fast"}), "workflows/w.json: steps[0] \"py\": key 'args' must be a list, not string"),
    (_doc({**PY, "args": [1]}), "workflows/w.json: steps[0] \"py\": key 'args[0]' must be a string, not integer"),
    (_doc({**CMD, "timeout": "10"}), "workflows/w.json: steps[0] \"cmd\": key 'timeout' must be a number, not string"),
    (
        _doc({**CMD, "timeout": 0}),
        "workflows/w.json: steps[0] \"cmd\": key 'timeout' must be a number of seconds above 0",
    ),
    (
        _doc({**CMD, "retries": True}),
        "workflows/w.json: steps[0] \"cmd\": key 'retries' must be an integer, not true/false",
    ),
    (_doc({**CMD, "retries": -1}), "workflows/w.json: steps[0] \"cmd\": key 'retries' must be between 0 and 100"),
    (
        _doc({**CMD, "continue_on_error": "yes"}),
        "workflows/w.json: steps[0] \"cmd\": key 'continue_on_error' must be true or false, not string",
    ),
    (
        _doc({**CMD, "when": {"status": "allways"}}),
        "workflows/w.json: steps[0] \"cmd\": key 'when.status' must be one of success, failure, always, not 'allways' (did you mean 'always'?)",
    ),
    (
        _doc({**CMD, "when": {"stauts": "always"}}),
        "workflows/w.json: steps[0] \"cmd\": unknown key 'when.stauts' (did you mean 'status'?)",
    ),
    (
        _doc({**CMD, "when": {"changed": []}}),
        "workflows/w.json: steps[0] \"cmd\": key 'when.changed' must be a non-empty list of glob strings",
    ),
    (_doc({**CMD, "env": ["A=1"]}), "workflows/w.json: steps[0] \"cmd\": key 'env' must be an object, not list"),
    (
        _doc({**CMD, "run": []}),
        "workflows/w.json: steps[0] \"cmd\": key 'run' is an empty list; give the command and its arguments",
    ),
    (_doc({**CMD, "run": ["ls", 3]}), "workflows/w.json: steps[0] \"cmd\": key 'run[1]' must be a string, not integer"),
    (_doc({**CMD, "run": 3}), "workflows/w.json: steps[0] \"cmd\": key 'run' must be a string or a list, not integer"),
    (
        _doc(CMD, CMD),
        "workflows/w.json: steps[1] \"cmd\": duplicate step name 'cmd' (also steps[0]); step names must be unique",
    ),
    (
        _doc({**CMD, "name": "a/b"}),
        "workflows/w.json: steps[0] \"a/b\": key 'name' must be at most 100 characters without '/', '\\' or control characters",
    ),
    (
        _doc({**CMD, "name": "a\u0000b"}),
        "key 'name' must be at most 100 characters without '/', '\\' or control characters",
    ),
    (_doc({**CMD, "name": "  "}), "workflows/w.json: steps[0] \"  \": key 'name' must not be empty"),
    (
        _doc({**CMD, "run": "echo ${NOPE_UNSET_VAR}"}),
        "workflows/w.json: steps[0] \"cmd\": key 'run': variable ${NOPE_UNSET_VAR} is not set (export it, pass --var NOPE_UNSET_VAR=VALUE, or write ${NOPE_UNSET_VAR:-default})",
    ),
    (
        _doc({**CMD, "run": "echo ${"}),
        "workflows/w.json: steps[0] \"cmd\": key 'run': unterminated '${' in 'echo ${' (write '$${' for a literal '${')",
    ),
    (
        _doc({**CMD, "run": "echo ${1abc}"}),
        "workflows/w.json: steps[0] \"cmd\": key 'run': '${1abc}' is not a variable reference: use ${NAME} or ${NAME:-default} (write '$${' for a literal '${')",
    ),
    (_doc({**CMD, "run": "echo ${A:-${B}}"}), "nested '${' inside '${A:-${B}' is not supported"),
    (_doc({**CMD, "shard": "second"}), 'workflows/w.json: steps[0] "cmd": key \'shard\' must be "all" or "first"'),
    (
        _doc(CMD, secrets=["not a var"]),
        "workflows/w.json: key 'secrets' lists 'not a var', which is not a variable name",
    ),
    ('{"steps": [], "steps": []}', "workflows/w.json: key 'steps' appears twice in the same object"),
    (
        '{"steps": [{"name": "a", "type": "command", "run": "x"},]}',
        "workflows/w.json: invalid JSON at line 1 column 56: trailing comma before ']' (JSON allows none: remove it)",
    ),
    (
        '{\n  "steps": [{"name": "a", "type": "command", "run": "x"}],\n  \n}',
        "workflows/w.json: invalid JSON at line 2 column 58: trailing comma before '}' (JSON allows none: remove it)",
    ),
    (
        '{"steps": [{"name": "a", "type": "command", "run": ["x", ]}]}',
        "workflows/w.json: invalid JSON at line 1 column 56: trailing comma before ']' (JSON allows none: remove it)",
    ),
    ('{"steps": [,]}', "workflows/w.json: invalid JSON at line 1 column 12: Expecting value"),
]


@pytest.mark.parametrize("content,message", BAD_WORKFLOWS, ids=[m[:60] for _, m in BAD_WORKFLOWS])
def test_bad_workflow_is_one_line_exit_2_and_nothing_written(project: Project, content: str, message: str) -> None:
    project.write("workflows/w.json", content)
    result = project.cli("run", "w")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("orchestrate: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not project.runs.exists() or not any(project.runs.iterdir())


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"\xef\xbb\xbf" + _doc(CMD).encode(), None),  # a UTF-8 BOM is accepted
        ("\ufeff".encode("utf-16") + b"{}", "file is UTF-16; save it as UTF-8"),
        (
            b'{"steps": [{"name": "caf\xe9", "type": "command", "run": "x"}]}',
            "not valid UTF-8 (byte 0xe9 at line 1); save the file as UTF-8",
        ),
        (b"[" * 10000 + b"]" * 10000, "JSON is nested too deeply"),
    ],
)
def test_encodings_and_nesting(project: Project, raw: bytes, message: str | None) -> None:
    project.write("workflows/w.json", raw)
    result = project.cli("validate", "w")
    if message is None:
        assert result.exit_code == 0, result.stderr
    else:
        assert result.exit_code == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_oversized_file_is_refused_without_reading_it(project: Project) -> None:
    path = project.workflows / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    result = project.cli("run", "big")
    assert result.exit_code == 2
    assert "workflows/big.json: file is 52.4 MB; a workflow file may be at most 4 MiB" in result.stderr


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "", "..", "x" * 101, "a\x00b", "-rf"])
def test_workflow_name_must_be_plain(project: Project, name: str) -> None:
    project.workflow("ok", [CMD])
    result = project.cli("run", "--", name) if name.startswith("-") else project.cli("run", name)
    assert result.exit_code == 2
    assert "is not a plain name" in result.stderr


def test_unknown_workflow_suggests_close_name(project: Project) -> None:
    project.workflow("deploy", [CMD])
    result = project.cli("run", "deplyo")
    assert result.exit_code == 2
    assert "no workflow 'deplyo': workflows/deplyo.json does not exist (did you mean 'deploy'?)" in result.stderr


def test_unknown_type_lists_plugins_found(project: Project) -> None:
    project.write("integrations/slack_runner.py", "def execute(step):\n    pass\n")
    project.workflow("w", [{"name": "a", "type": "slak"}])
    result = project.cli("validate", "w")
    assert result.exit_code == 2
    assert "unknown step type 'slak' (did you mean 'slack'?)" in result.stderr
    assert "plugins: slack" in result.stderr


def test_interpolation_environment_vars_defaults_and_escapes(project: Project) -> None:
    settings = orchestrate.Settings()
    project.workflow("w", [{**CMD, "run": ["echo", "${A}", "${B:-fallback}", "$${LITERAL}", "$HOME", "${E:-}"]}])
    wf = orchestrate.load_workflow("w", project.workflows, {"A": "from-var", "E": ""}, settings, project.root)
    assert wf.steps[0].config["run"] == ["echo", "from-var", "fallback", "${LITERAL}", "$HOME", ""]


def test_var_flag_overrides_environment(project: Project) -> None:
    project.workflow("w", [{**CMD, "run": ["echo", "${GREETING}"]}])
    result = project.cli("run", "w", "--var", "GREETING=hello-from-var", env={"GREETING": "env"})
    assert result.exit_code == 0, result.stderr
    assert "hello-from-var" in result.stdout


@pytest.mark.parametrize("value", ["novalue", "=x", "1A=b", "A B=c"])
def test_bad_var_flag(project: Project, value: str) -> None:
    project.workflow("w", [CMD])
    result = project.cli("run", "w", "--var", value)
    assert result.exit_code == 2
    assert f"--var {value!r}: expected KEY=VALUE" in result.stderr


def test_secret_values_are_collected_and_hashes_exclude_them(project: Project) -> None:
    project.write("integrations/notify_runner.py", "def execute(step):\n    pass\n")
    project.workflow(
        "w", [{"name": "n", "type": "notify", "token": "${MY_TOKEN}", "api_password": "${PW}"}], secrets=["OTHER"]
    )
    env = {"MY_TOKEN": "tok-123456", "PW": "pw-abcdef", "OTHER": "other-secret"}
    wf = orchestrate.load_workflow("w", project.workflows, env, orchestrate.Settings(), project.root)
    assert wf.secrets == {"tok-123456", "pw-abcdef", "other-secret"}
    wf2 = orchestrate.load_workflow(
        "w", project.workflows, {**env, "MY_TOKEN": "different-token"}, orchestrate.Settings(), project.root
    )
    assert wf.steps[0].definition_sha256 == wf2.steps[0].definition_sha256


def test_literal_token_warns_and_is_masked(project: Project) -> None:
    project.write("integrations/notify_runner.py", "def execute(step):\n    print('using', step['token'])\n")
    project.workflow("w", [{"name": "n", "type": "notify", "token": "literal-secret-value"}])
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stderr
    assert "key 'token' holds a literal token" in result.stderr
    assert "literal-secret-value" not in result.stdout + result.stderr
    assert "using ***" in result.stdout


def test_validate_all_and_list(project: Project) -> None:
    project.workflow("a", [CMD], description="first one")
    project.workflow("b", [CMD, {**CMD, "name": "cmd2"}])
    project.write("workflows/broken.json", "{")
    project.workflow("typo", [{**CMD, "rnu": "x"}], description="parses, but would not run")
    result = project.cli("validate")
    assert result.exit_code == 2
    assert "workflows/a.json: ok (1 step)" in result.stdout
    assert "workflows/b.json: ok (2 steps)" in result.stdout
    assert "workflows/broken.json: invalid JSON" in result.stderr
    listing = project.cli("list")
    assert listing.exit_code == 0
    assert listing.stdout.splitlines() == [
        "a          1 step  first one",
        "b         2 steps",
        "broken    invalid  (see: orchestrate validate broken)",
        "typo      invalid  (see: orchestrate validate typo)",
    ]


def test_validate_takes_var_like_run(project: Project) -> None:
    project.workflow("w", [{**CMD, "run": "echo ${GREETING}"}])
    assert project.cli("validate", "w").exit_code == 2
    result = project.cli("validate", "w", "--var", "GREETING=hi")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "workflows/w.json: ok (1 step)\n"
    bad = project.cli("validate", "w", "--var", "no-equals")
    assert bad.exit_code == 2
    assert bad.stderr == (
        "orchestrate: error: --var 'no-equals': expected KEY=VALUE with KEY a variable name (letters, digits, _)\n"
    )


def test_validate_warns_about_missing_venv_ahead_of_time(project: Project) -> None:
    project.workflow("w", [PY])
    result = project.cli("validate", "w")
    assert result.exit_code == 0
    assert "virtualenv .venv does not exist; create it with: python3 -m venv .venv" in result.stderr
    assert "script s.py does not exist" in result.stderr


def test_settings_file_is_validated(project: Project) -> None:
    project.workflow("w", [CMD])
    project.write("orchestrate.json", json.dumps({"keep_run": 5}))
    result = project.cli("run", "w")
    assert result.exit_code == 2
    assert "orchestrate.json: unknown key 'keep_run' (did you mean 'keep_runs'?)" in result.stderr


# --- issue 11: hostile globs end quickly with a clear message -------------------------------------

CY = {"name": "ui", "type": "cypress", "project": "e2e/app"}


def _cut(pattern: str) -> str:
    return pattern if len(pattern) <= 80 else pattern[:79] + "…"


TOO_MANY = "its braces expand to more than 1,000 patterns, the most orchestrate accepts (list fewer alternatives, or use * and ?)"
HOSTILE_GLOBS = [
    (
        {**CY, "spec": "[z-a].cy.js"},
        "steps[0] \"ui\": key 'spec': invalid glob '[z-a].cy.js': the character range z-a in [z-a] is reversed (write a-z)",
    ),
    ({**CY, "spec": "{a,b}" * 16}, f"steps[0] \"ui\": key 'spec': invalid glob '{_cut('{a,b}' * 16)}': {TOO_MANY}"),
    (
        {**CY, "spec": "{a,b,c,d}" * 12},
        f"steps[0] \"ui\": key 'spec': invalid glob '{_cut('{a,b,c,d}' * 12)}': {TOO_MANY}",
    ),
    ({**CY, "spec": "{" * 40 + "a,b" + "}" * 40}, "key 'spec': invalid glob '" + "{" * 40),
    (
        {**CMD, "when": {"changed": ["src/**", "[z-a]/*.py"]}},
        "steps[0] \"cmd\": key 'when.changed[1]': invalid glob '[z-a]/*.py': the character range z-a in [z-a] is reversed (write a-z)",
    ),
    (
        {**CMD, "when": {"changed": "{x,y}" * 11}},
        f"steps[0] \"cmd\": key 'when.changed': invalid glob '{_cut('{x,y}' * 11)}': {TOO_MANY}",
    ),
    (
        {**CMD, "when": {"branch": ["release/[9-0]"]}},
        "steps[0] \"cmd\": key 'when.branch[0]': invalid glob 'release/[9-0]': the character range 9-0 in [9-0] is reversed (write 0-9)",
    ),
]


@pytest.mark.parametrize("step,message", HOSTILE_GLOBS, ids=[m[:50] for _, m in HOSTILE_GLOBS])
def test_hostile_globs_are_definition_errors_in_validate_dry_run_and_run(
    project: Project, step: dict, message: str
) -> None:
    project.workflow("w", [step])
    for args in (["validate", "w"], ["run", "w", "--dry-run"], ["run", "w"]):
        result = project.run(*args, timeout=30)  # 0.1.0 took over a minute on the brace patterns
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("orchestrate: error: workflows/w.json: ")
        assert message in result.stderr, (message, result.stderr)
    assert not project.runs.exists()


def test_globs_at_the_limit_still_work(project: Project) -> None:
    # 2**9 = 512 patterns, and a long list of alternatives: accepted, matched in one regex
    pattern = "{a,b}" * 9 + ".cy.js"
    assert orchestrate.glob_regex(pattern).match("ab" * 4 + "a.cy.js")
    assert not orchestrate.glob_regex(pattern).match("ab" * 4 + "c.cy.js")
    names = ",".join(f"spec{i}" for i in range(1000))
    assert orchestrate.glob_regex("{" + names + "}.cy.js").match("spec999.cy.js")
    with pytest.raises(orchestrate.GlobError, match="more than 1,000 patterns"):
        orchestrate.expand_braces("{" + names + ",one-too-many}")
    project.workflow("w", [{**CMD, "when": {"changed": ["*.{py,pyi}"], "branch": "release/{1,2}.*"}}])
    assert project.cli("validate", "w").exit_code == 0
    assert orchestrate.path_matches("pkg/stubs/mod.pyi", "*.{py,pyi}")
    assert orchestrate.branch_matches("release/2.x", "release/{1,2}.*")


def test_definition_hash_covers_the_workflow_env_and_steps_keep_the_values_they_used(project: Project) -> None:
    """Issue 17: A=1 and A=2 in the workflow's env hashed the same; the values a step used
    stay in memory only (the record gets their keyed hash)."""

    def load(env_value: str, extra: dict | None = None) -> orchestrate.Workflow:
        project.workflow(
            "w",
            [{"name": "a", "type": "command", "run": "echo ${WHO}"}, {"name": "b", "type": "command", "run": "true"}],
            env={"A": env_value, "URL": "${BASE:-http://x}"},
        )
        return orchestrate.load_workflow(
            "w", project.workflows, {"WHO": "me", **(extra or {})}, orchestrate.Settings(), project.root
        )

    one, two = load("1"), load("2")
    assert one.steps[0].definition_sha256 != two.steps[0].definition_sha256
    assert one.steps[1].definition_sha256 != two.steps[1].definition_sha256
    assert one.steps[0].variables == {"BASE": None, "WHO": "me"}
    assert one.steps[1].variables == {"BASE": None}
    assert load("1", {"BASE": "http://y"}).steps[1].variables == {"BASE": "http://y"}
