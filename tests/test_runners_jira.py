"""The `jira` step against a real HTTP server on 127.0.0.1 that behaves like Jira
(tests/jira_server.py): exact requests for REST API 2 and 3, transitions, every error
shape, retries and timeouts, dry run, and the promise that the token is never written
or printed anywhere."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import REPO, SCHEMAS, Project
from jira_server import DEFAULT_TRANSITIONS, FakeJira, closed_port

import orchestrate as o

TOKEN = "jira-TEST-token-5f3c9a17"
USER = "ci-bot@example.com"
BASIC = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
ADF_SCHEMA = json.loads((SCHEMAS / "atlaskit-adf-schema-57.7.22-full.json").read_text())
ENV = {"JIRA_TOKEN": TOKEN}


@pytest.fixture
def jira() -> Any:
    with FakeJira() as server:
        yield server


@pytest.fixture(autouse=True)
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits, recorded instead of slept (in-process runs only)."""
    waits: list[float] = []
    monkeypatch.setattr(o, "_http_sleep", lambda seconds, guard=None: waits.append(seconds))
    return waits


def jira_step(server: FakeJira, version: int = 3, **overrides: Any) -> dict[str, Any]:
    step = {
        "name": "notify jira",
        "type": "jira",
        "jira_url": server.api_url(version),
        "user": USER,
        "token": "${JIRA_TOKEN}",
        "issue": "PROJ-123",
        "comment": "{workflow} {status}\n\n{summary}",
        "when": {"status": "always"},
    }
    step.update(overrides)
    return {k: v for k, v in step.items() if v is not None}


def write_workflow(project: Project, *steps: dict[str, Any], name: str = "notify") -> None:
    first = {"name": "unit", "type": "command", "run": ["python3", "-c", "print('ok')"]}
    project.workflow(name, [first, *steps])


def secret_forms() -> list[bytes]:
    return [TOKEN.encode(), BASIC.split(" ", 1)[1].encode()]


def assert_token_nowhere(project: Project, *outputs: str) -> int:
    """Every file orchestrate wrote under the project, and every captured output: no token,
    not even inside the Basic credentials. Returns how many files were checked."""
    checked = 0
    for path in project.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for form in secret_forms():
                if path.parent == project.workflows and form == TOKEN.encode():
                    continue  # a workflow with a literal token holds it by the user's choice
                assert form not in data, f"token leaked into {path}"
            checked += 1
    for text in outputs:
        for form in secret_forms():
            assert form.decode() not in text, f"token leaked into output: {text!r}"
    return checked


def entry(project: Project, step: str = "notify jira") -> dict[str, Any]:
    return next(e for e in project.last_record()["log"] if e["step"] == step)


def step_log(project: Project, step: str = "notify jira") -> str:
    return (project.root / entry(project, step)["log_file"]).read_text()


# -- happy paths: the exact requests ----------------------------------------------------


def test_api3_basic_auth_adf_comment_and_transition_by_category(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, transition={"to_status_category": "done"}))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    post, get, move = jira.requests
    assert (post.method, post.path) == ("POST", "/rest/api/3/issue/PROJ-123/comment")
    assert post.header("Authorization") == BASIC
    assert post.header("Content-Type") == "application/json"
    assert post.header("Accept") == "application/json"
    body = post.json["body"]
    jsonschema.validate(body, ADF_SCHEMA)
    assert set(post.json) == {"body"}
    texts = [p["content"][0]["text"] if p["content"] else "" for p in body["content"]]
    assert texts[0] == "notify passed" and texts[1] == ""
    assert re.fullmatch(r"unit: passed in \d+\.\ds", texts[2])
    assert all(p["content"] != [{"type": "text", "text": ""}] for p in body["content"])
    assert (get.method, get.path, get.query, get.body) == (
        "GET",
        "/rest/api/3/issue/PROJ-123",
        "fields=status&expand=transitions",
        b"",
    )
    assert get.header("Authorization") == BASIC and get.header("Content-Type") is None
    assert (move.method, move.path, move.json) == (
        "POST",
        "/rest/api/3/issue/PROJ-123/transitions",
        {"transition": {"id": "31"}},
    )
    assert move.header("Authorization") == BASIC
    record = entry(project)
    assert record["status"] == "passed"
    assert (record["jira_issue"], record["comment_id"], record["transition"]) == ("PROJ-123", "10000", "Close Issue")
    assert record["message"] == "commented on PROJ-123, moved by 'Close Issue' to 'Done'"
    assert "jira: commented on PROJ-123 (comment 10000)" in result.stdout
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_api2_bearer_plain_comment_and_transition_by_name(project: Project, jira: FakeJira) -> None:
    # a site root that is not *.atlassian.net means Server/Data Center: REST API 2
    step = jira_step(
        jira,
        jira_url=jira.url,
        user=None,
        transition="start progress",
        comment="Run {run_id} of {workflow}: {status}; failed: {failed_steps}; {{literal}}",
    )
    write_workflow(project, step)
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    post, get, move = jira.requests
    run_id = project.last_record()["run_id"]
    assert (post.method, post.path) == ("POST", "/rest/api/2/issue/PROJ-123/comment")
    assert post.header("Authorization") == f"Bearer {TOKEN}"
    # API 2 is wiki markup: what orchestrate fills in is escaped ("-" would start a strike)
    escaped_id = run_id.replace("-", "\\-")
    assert post.json == {"body": f"Run {escaped_id} of notify: passed; failed: none; {{literal}}"}
    assert get.path == "/rest/api/2/issue/PROJ-123"
    assert move.json == {"transition": {"id": "21"}}
    assert entry(project)["transition"] == "Start Progress"
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_empty_user_means_bearer(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, user="${JIRA_USER:-}"))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert jira.requests[0].header("Authorization") == f"Bearer {TOKEN}"


def test_comment_reports_an_earlier_failure(project: Project, jira: FakeJira) -> None:
    failing = {"name": "ui smoke", "type": "command", "run": ["python3", "-c", "raise SystemExit(3)"]}
    project.workflow("notify", [failing, jira_step(jira, 2, comment="{status}: {failed_steps}\n{summary}")])
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    body = jira.requests[0].json["body"]
    assert body.startswith("failed: ui smoke\nui smoke: failed in ")
    assert body.endswith("— command exited with code 3")
    assert entry(project)["status"] == "passed"


def test_long_comment_is_truncated_not_rejected(project: Project, jira: FakeJira) -> None:
    long_comment = "\n".join(f"line {i}: " + "x" * 90 for i in range(600))  # ~60,000 characters
    write_workflow(project, jira_step(jira, 3, comment=long_comment))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    body = jira.requests[0].json["body"]
    jsonschema.validate(body, ADF_SCHEMA)
    assert len(json.dumps(body, ensure_ascii=False, separators=(",", ":"))) <= o.JIRA_COMMENT_LIMIT
    last = body["content"][-1]["content"][0]["text"]
    assert re.fullmatch(r"\[… truncated by orchestrate: \d+ characters omitted\]", last)
    assert "comment longer than 32767 characters, truncated" in step_log(project)


# -- transitions ------------------------------------------------------------------------


def test_unavailable_transition_lists_available_ones(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, transition="Reopen"))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    record = entry(project)
    assert record["message"] == (
        "commented on PROJ-123, but transition 'Reopen' is not available for PROJ-123; available: "
        "'Start Progress' → In Progress [indeterminate], 'Close Issue' → Done [done]"
    )
    assert record["comment_id"] == "10000" and record["transition"] is None
    assert [r.method for r in jira.requests] == ["POST", "GET"]  # nothing was posted to transitions
    assert record["message"] in result.stdout


def test_unavailable_category(project: Project, jira: FakeJira) -> None:
    jira.transitions = [t for t in DEFAULT_TRANSITIONS if t["to"]["statusCategory"]["key"] != "done"]
    write_workflow(project, jira_step(jira, 3, transition={"to_status_category": "done"}))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert entry(project)["message"].startswith(
        "commented on PROJ-123, but a transition to status category 'done' is not available for PROJ-123; "
        "available: 'Start Progress' → In Progress [indeterminate]"
    )


# -- Jira's error answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, headers, expected",
    [
        (
            401,
            "Client must be authenticated to access this resource.",
            {"Content-Type": "text/plain"},
            "authentication failed for ci-bot@example.com at {site} — check JIRA_TOKEN",
        ),
        (
            403,
            {"errorMessages": ["You do not have the permission to comment on this issue."], "errors": {}},
            {},
            (
                "permission denied: ci-bot@example.com may not comment on PROJ-123 at {site} "
                "(You do not have the permission to comment on this issue.)"
            ),
        ),
        (
            403,
            "",
            {"X-Seraph-LoginReason": "AUTHENTICATION_DENIED"},
            (
                "login for ci-bot@example.com at {site} is blocked by a CAPTCHA after failed attempts — sign in "
                "once in a browser, then check JIRA_TOKEN"
            ),
        ),
        (
            404,
            {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}},
            {},
            "issue PROJ-123 not found or not visible to ci-bot@example.com at {site}",
        ),
        (
            400,
            {"errorMessages": ["Comment is invalid."], "errors": {"comment": "Comment body can not be empty!"}},
            {},
            "Jira rejected the comment on PROJ-123 (400): Comment is invalid.; comment: Comment body can not be empty!",
        ),
    ],
)
def test_error_answers_become_one_readable_message(
    project: Project, jira: FakeJira, slept: list[float], status: int, body: Any, headers: dict[str, str], expected: str
) -> None:
    jira.script(status, body, headers=headers, times=4)
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    message = expected.format(site=jira.url)
    assert entry(project)["message"] == message
    assert message in result.stdout
    assert len(jira.requests) == 1 and slept == []  # a 4xx is never retried
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_404_from_something_that_is_not_jira(project: Project, jira: FakeJira) -> None:
    jira.script_html_error(404, "Page Not Found")
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == (
        f"{jira.api_url(2)}/issue/PROJ-123/comment answered 404 (HTML page 'Page Not Found') — is jira_url the Jira site?"
    )


def test_token_user_var_named_in_401(project: Project, jira: FakeJira) -> None:
    jira.script(401, "")
    write_workflow(project, jira_step(jira, 2, user=None, token="${MY_PAT}"))
    project.cli("run", "notify", env={"MY_PAT": TOKEN})
    assert entry(project)["message"] == f"authentication failed for the token's owner at {jira.url} — check MY_PAT"


def test_token_echoed_by_the_server_is_masked(project: Project, jira: FakeJira) -> None:
    jira.script(400, {"errorMessages": [f"Bad credentials {TOKEN} / {BASIC}"], "errors": {}})
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == "Jira rejected the comment on PROJ-123 (400): Bad credentials *** / Basic ***"
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_html_error_page_is_summarized(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script_html_error(502, "502 Bad Gateway", times=4)
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == (
        f"Jira server error 502 at {jira.url}: HTML page '502 Bad Gateway' — not retried: the comment may "
        "have been posted; check PROJ-123 before running again"
    )
    log = project.root / entry(project)["log_file"]
    assert "The proxy could not reach Jira" not in result.stdout + (log.read_text() if log.exists() else "")
    assert len(jira.requests) == 1 and slept == []
    assert "<html" not in json.dumps(project.last_record()).lower()


def test_html_login_page_with_200(project: Project, jira: FakeJira) -> None:
    jira.script(
        200,
        "<html><head><title>Log in - Jira</title></head></html>",
        headers={"Content-Type": "text/html"},
        off_spec=True,
    )  # a single sign-on page in front of Jira, not Jira
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == (
        f"{jira.api_url(2)}/issue/PROJ-123/comment answered 200 without a Jira comment "
        "(HTML page 'Log in - Jira') — is jira_url the Jira REST API?"
    )


def test_redirect_is_not_followed(project: Project, jira: FakeJira) -> None:
    jira.script(302, b"", headers={"Location": "https://sso.example.com/login"})
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert len(jira.requests) == 1
    assert entry(project)["message"].endswith(
        "redirected (302) to https://sso.example.com/login — put the final URL (https, no login page) in jira_url"
    )


# -- retries and timeouts ---------------------------------------------------------------


def test_429_with_retry_after_then_success(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script(429, {"errorMessages": ["Rate limit exceeded."]}, headers={"Retry-After": "2"})
    write_workflow(project, jira_step(jira, 3))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert slept == [2.0] and len(jira.requests) == 2
    assert jira.requests[0].json == jira.requests[1].json
    assert (
        f"jira: POST {jira.api_url(3)}/issue/PROJ-123/comment: HTTP 429; retrying in 2s (attempt 2 of 4)"
        in step_log(project)
    )
    assert len(jira.comments) == 1


def test_429_on_every_attempt(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script(429, "", headers={"Retry-After": "100", "RateLimit-Reason": "jira-burst-based"}, times=4)
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert slept == [100.0] * 3  # Retry-After is honoured up to 120 s
    assert entry(project)["message"] == (
        f"rate limited by Jira at {jira.url} (429; Retry-After: 100; "
        "RateLimit-Reason: jira-burst-based) after 4 attempts — try again later"
    )
    assert len(jira.comments) == 0 and len(jira.requests) == 4


def test_503_three_times_then_success(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script(503, {"errorMessages": ["Service unavailable"], "errors": {}}, times=3)
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert slept == [1.0, 2.0, 4.0] and len(jira.requests) == 4
    assert entry(project)["comment_id"] == "10000"


def test_503_every_time_fails_with_attempt_count(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script(503, {"errorMessages": ["Service unavailable"], "errors": {}}, times=10)
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    assert entry(project)["message"] == f"Jira server error 503 at {jira.url} after 4 attempts: Service unavailable"
    assert len(jira.requests) == 4 and slept == [1.0, 2.0, 4.0]


def test_server_that_never_answers(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script_hang(30, times=4)
    write_workflow(project, jira_step(jira, 2, read_timeout=0.5, connect_timeout=2))
    started = time.monotonic()
    result = project.cli("run", "notify", env=ENV)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    # a POST that got no answer may have been applied: it is not repeated (no duplicate comment)
    assert entry(project)["message"] == (
        f"cannot comment on PROJ-123: no response from 127.0.0.1:{jira.port} within 0.5s (read_timeout); "
        "not retried: the comment may have been posted; check PROJ-123 before running again"
    )
    assert len(jira.requests) == 1 and slept == []


def test_step_timeout_bounds_the_read_timeout(project: Project, jira: FakeJira) -> None:
    jira.script_hang(30)
    write_workflow(project, jira_step(jira, 2, timeout=0.5))
    project.cli("run", "notify", env=ENV)
    assert "within 0.5s (read_timeout)" in entry(project)["message"]


def test_connection_refused(project: Project, slept: list[float]) -> None:
    port = closed_port()
    step = {
        "name": "notify jira",
        "type": "jira",
        "jira_url": f"http://127.0.0.1:{port}/rest/api/2",
        "user": USER,
        "token": "${JIRA_TOKEN}",
        "issue": "PROJ-123",
        "comment": "hello",
    }
    write_workflow(project, step)
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    assert entry(project)["message"] == (
        f"cannot comment on PROJ-123: connection refused by 127.0.0.1:{port} after 4 attempts"
    )
    assert slept == [1.0, 2.0, 4.0]
    assert_token_nowhere(project, result.stdout, result.stderr)


# -- dry run, validation, warnings ------------------------------------------------------


def test_dry_run_shows_requests_masked_and_sends_nothing(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, comment="Deploy {status}", transition="Done"))
    result = project.cli("run", "notify", "--dry-run", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    start = lines.index(f"POST {jira.api_url(3)}/issue/PROJ-123/comment")
    assert lines[start + 1] == f"Authorization: Basic *** (user {USER})"
    assert lines[start + 2] == (
        'body: {"body": {"type": "doc", "version": 1, "content": [{"type": "paragraph", '
        '"content": [{"type": "text", "text": "Deploy passed"}]}]}}'
    )
    assert lines[start + 3] == ("transition: if the run so far passed: the transition named 'Done'; if it failed: none")
    assert lines[start + 4] == f"GET {jira.api_url(3)}/issue/PROJ-123?fields=status&expand=transitions"
    assert f"POST {jira.api_url(3)}/issue/PROJ-123/transitions" in lines
    assert 'body: {"transition": {"id": "<looked up at run time>"}}' in lines
    assert jira.requests == []
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_dry_run_bearer(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, user=None, comment="hi"))
    result = project.cli("run", "notify", "--dry-run", env=ENV)
    assert "Authorization: Bearer *** (personal access token)" in result.stdout
    assert 'body: {"body": "hi"}' in result.stdout
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_literal_token_warns_and_is_masked(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, token=TOKEN))
    result = project.cli("run", "notify")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "key 'token' holds a literal token" in result.stderr
    assert "the Jira token is written in notify.json" in step_log(project)
    assert jira.requests[0].header("Authorization") == BASIC
    assert_token_nowhere(project, result.stdout, result.stderr)


def test_empty_token_fails_the_step_not_the_definition(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, token="${JIRA_TOKEN:-}"))
    validated = project.cli("validate", "notify", env={"JIRA_TOKEN": ""})
    assert validated.exit_code == 0
    assert "key 'token' is empty; set JIRA_TOKEN before the step runs" in validated.stderr
    result = project.cli("run", "notify", env={"JIRA_TOKEN": ""})
    assert result.exit_code == 1
    assert entry(project)["message"].startswith("key 'token' is empty: set JIRA_TOKEN")
    assert jira.requests == []


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"issue": "proj-123"},
            (
                "key 'issue': 'proj-123' is not a Jira issue key (expected e.g. PROJ-123: "
                "a capital letter, capitals/digits/_, a dash, a number)"
            ),
        ),
        ({"issue": "${JIRA_ISSUE}"}, "key 'issue': 'PROJ-7 ' is not a Jira issue key"),
        ({"comment": "Deploy {stauts}"}, "key 'comment': unknown placeholder {stauts} (did you mean 'status'?)"),
        (
            {"comment": "Deploy {nope}"},
            (
                "key 'comment': unknown placeholder {nope} (placeholders: {workflow}, "
                "{run_id}, {status}, {failed_steps}, {summary}, {git_branch}, {git_commit}, "
                "{ci_url}; write {{ or }} for a literal brace)"
            ),
        ),
        ({"comment": 'json: {"a": 1}'}, "key 'comment': unknown placeholder {\"a\": 1}"),
        (
            {"comment": "a } b"},
            "key 'comment': Single '}' encountered in format string (write {{ or }} for a literal brace)",
        ),
        (
            {"comment": "{status!r}"},
            "key 'comment': placeholder {status!r}: conversions and format specs are not supported",
        ),
        ({"jira_url": "jira.example.com"}, "key 'jira_url': 'jira.example.com' is not an http(s) URL"),
        (
            {"jira_url": "https://x.atlassian.net/rest/api/4"},
            ("key 'jira_url': 'https://x.atlassian.net/rest/api/4' is not a Jira REST API base"),
        ),
        (
            {"transition": {"to_status_categry": "done"}},
            ("key 'transition': unknown key 'to_status_categry' (did you mean 'to_status_category'?)"),
        ),
        ({"transition": ["Done"]}, "key 'transition' must be a string or an object, not list"),
        ({"read_timeout": 0}, "key 'read_timeout': must be a positive number of seconds, not 0"),
        ({"tokn": "x"}, "unknown key 'tokn' (did you mean 'token'?)"),
        ({"token": None}, "missing required key 'token'"),
    ],
)
def test_definition_errors(project: Project, jira: FakeJira, override: dict[str, Any], message: str) -> None:
    step = {**jira_step(jira, 2), **override}
    write_workflow(project, {k: v for k, v in step.items() if v is not None})
    result = project.cli("run", "notify", env={**ENV, "JIRA_ISSUE": "PROJ-7 "})
    assert result.exit_code == 2
    assert result.stderr.startswith('orchestrate: error: workflows/notify.json: steps[1] "notify jira": ')
    assert message in result.stderr
    assert jira.requests == [] and not list(project.runs.glob("*.json"))


# -- the real command, end to end ---------------------------------------------------------


def test_installed_command_end_to_end(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, transition="Close Issue"))
    result = project.run("run", "notify", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(r.method, r.path) for r in jira.requests] == [
        ("POST", "/rest/api/3/issue/PROJ-123/comment"),
        ("GET", "/rest/api/3/issue/PROJ-123"),
        ("POST", "/rest/api/3/issue/PROJ-123/transitions"),
    ]
    jsonschema.validate(jira.requests[0].json["body"], ADF_SCHEMA)
    jira.script(401, "")
    failed = project.run("run", "notify", "--json", env=ENV)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["log"][1]["message"] == (
        f"authentication failed for {USER} at {jira.url} — check JIRA_TOKEN"
    )
    dry = project.run("run", "notify", "--dry-run", env=ENV)
    assert dry.returncode == 0 and "Authorization: Basic ***" in dry.stdout
    checked = assert_token_nowhere(
        project, result.stdout, result.stderr, failed.stdout, failed.stderr, dry.stdout, dry.stderr
    )
    assert checked >= 8  # two records, their step logs and junit.xml files, the workflow


def test_seed_deploy_workflow_posts_to_the_test_server(
    project: Project, jira: FakeJira, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = REPO / "workflows" / "deploy.json"
    if not seed.exists():
        pytest.skip("workflows/deploy.json is not on this branch yet")
    shutil.copy(seed, project.workflows / "deploy.json")
    if "cypress" not in o.RUNNERS:  # the cypress step type comes from another branch

        class StandIn(o.Runner):
            type_name = "cypress"
            accepts_any_key = True

        monkeypatch.setitem(o.RUNNERS, "cypress", StandIn())
    env = {"JIRA_URL": jira.api_url(2), "JIRA_USER": USER, "JIRA_TOKEN": TOKEN}
    validated = project.cli("validate", "deploy", env={"JIRA_TOKEN": ""})
    assert validated.exit_code == 0, validated.stdout + validated.stderr
    result = project.cli("run", "deploy", "--only", "notify jira", env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    (post,) = jira.requests
    assert (post.method, post.path) == ("POST", "/rest/api/2/issue/PROJ-123/comment")
    assert post.header("Authorization") == BASIC
    assert post.json == {"body": json.loads(seed.read_text())["steps"][2]["comment"]}
    assert_token_nowhere(project, result.stdout, result.stderr)


# -- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, base, version, site",
    [
        ("https://x.atlassian.net/rest/api/2", "https://x.atlassian.net/rest/api/2", 2, "https://x.atlassian.net"),
        ("https://x.atlassian.net/rest/api/3/", "https://x.atlassian.net/rest/api/3", 3, "https://x.atlassian.net"),
        ("https://x.atlassian.net", "https://x.atlassian.net/rest/api/3", 3, "https://x.atlassian.net"),
        ("https://X.Atlassian.NET/", "https://X.Atlassian.NET/rest/api/3", 3, "https://X.Atlassian.NET"),
        ("https://jira.example.com", "https://jira.example.com/rest/api/2", 2, "https://jira.example.com"),
        ("https://example.com/jira/", "https://example.com/jira/rest/api/2", 2, "https://example.com/jira"),
        (
            "http://127.0.0.1:8080/jira/rest/api/latest",
            "http://127.0.0.1:8080/jira/rest/api/latest",
            2,
            "http://127.0.0.1:8080/jira",
        ),
    ],
)
def test_api_base_resolution(url: str, base: str, version: int, site: str) -> None:
    assert o.jira_api(url) == o.JiraApi(base, version, site)


@pytest.mark.parametrize(
    "key, ok",
    [
        ("PROJ-123", True),
        ("AB-1", True),
        ("A_1-9", True),
        ("proj-1", False),
        ("P-1", False),
        ("PROJ123", False),
        ("PROJ-12a", False),
        ("1PROJ-1", False),
        ("PROJ-1\n", False),
    ],
)
def test_issue_key_pattern(key: str, ok: bool) -> None:
    if ok:
        assert o.check_jira_issue_key(key) == key
    else:
        with pytest.raises(ValueError, match="is not a Jira issue key"):
            o.check_jira_issue_key(key)


def test_template_values() -> None:
    previous: list[dict[str, Any]] = [
        {"step": "unit", "status": "passed", "duration_s": 1.94},
        {"step": "ui", "status": "failed", "duration_s": 12.0, "message": "2 tests failed\nmore"},
        {"step": "lint", "status": "failed", "duration_s": 0.2, "message": "style", "allowed_failure": True},
        {"step": "docs", "status": "skipped", "message": "not changed"},
    ]
    trigger = {
        "source": "ci",
        "git": {"commit": "abc123", "branch": "main"},
        "ci": {"provider": "github", "job_url": "https://github.com/o/r/actions/runs/7"},
    }
    values = o.jira_template_values("deploy", "RID", previous, trigger)
    text = o.render_jira_comment(
        "{workflow} {run_id} {status} [{failed_steps}] {git_branch}@{git_commit} {ci_url}\n{summary}", values
    )
    assert text == (
        "deploy RID failed [ui, lint] main@abc123 https://github.com/o/r/actions/runs/7\n"
        "unit: passed in 1.9s\nui: failed in 12.0s — 2 tests failed\nlint: failed in 0.2s — style\n"
        "docs: skipped — not changed"
    )
    only_allowed = o.jira_template_values("w", "R", previous[2:3], {})
    assert only_allowed["status"] == "passed"  # continue_on_error failures do not fail the run
    empty = o.jira_template_values("w", "R", [], {})
    assert (
        o.render_jira_comment("{status} {failed_steps} {git_branch} {ci_url} {summary}", empty)
        == "passed none n/a n/a no earlier steps"
    )


def test_adf_document() -> None:
    doc = o.jira_adf_document("line one\n\n  indented\r\nlast")
    jsonschema.validate(doc, ADF_SCHEMA)
    assert doc == {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "line one"}]},
            {"type": "paragraph", "content": []},
            {"type": "paragraph", "content": [{"type": "text", "text": "  indented"}]},
            {"type": "paragraph", "content": [{"type": "text", "text": "last"}]},
        ],
    }
    with pytest.raises(jsonschema.ValidationError):  # the schema does forbid empty text nodes
        jsonschema.validate(
            {
                "type": "doc",
                "version": 1,
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}],
            },
            ADF_SCHEMA,
        )


@pytest.mark.parametrize("version", [2, 3])
def test_truncation(version: int) -> None:
    text = ("x" * 99 + "\n") * 1000
    payload, truncated = o.jira_comment_payload(text, version)
    body = payload["body"]
    serialized = body if version == 2 else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    assert truncated and o.JIRA_COMMENT_LIMIT - 200 < len(serialized) <= o.JIRA_COMMENT_LIMIT
    if version == 3:
        jsonschema.validate(body, ADF_SCHEMA)
    assert o.jira_comment_payload("short\n", version) == (
        {"body": "short" if version == 2 else o.jira_adf_document("short")},
        False,
    )


def test_truncation_counts_utf16_units_like_jira() -> None:
    out = o.truncate_jira_text("😀" * 20000)  # 20,000 code points, 40,000 UTF-16 units
    assert len(out.encode("utf-16-le")) // 2 <= o.JIRA_COMMENT_LIMIT
    assert out.endswith("characters omitted]") and "\ufffd" not in out


def test_auth_and_literal_token() -> None:
    assert o.jira_auth_header(USER, TOKEN) == BASIC
    assert o.jira_auth_header(None, TOKEN) == o.jira_auth_header("", TOKEN) == f"Bearer {TOKEN}"
    assert [
        o.token_is_literal(v)
        for v in ("${JIRA_TOKEN}", "${JIRA_TOKEN:-}", "${JIRA_TOKEN:-abc}", "abc", "pre${X}", None)
    ] == [False, False, True, True, True, False]


@pytest.mark.parametrize(
    "text, ctype, expected",
    [
        ('{"errorMessages": ["Bad"], "errors": {"comment": "too long"}}', "application/json", "Bad; comment: too long"),
        ('{"message": "Rate limit exceeded"}', "application/json", "Rate limit exceeded"),
        (
            "<html><head><title>502 Bad  Gateway</title></head><body>" + "x" * 5000 + "</body></html>",
            "text/html",
            "HTML page '502 Bad Gateway'",
        ),
        ("<!DOCTYPE html><html><body><h1>Oops</h1></body></html>", "", "HTML page 'Oops'"),
        ("plain failure\nsecond line", "text/plain", "plain failure"),
        ("", "", "empty body"),
    ],
)
def test_summarize_error_bodies(text: str, ctype: str, expected: str) -> None:
    assert o.summarize_http_body(text, ctype) == expected


def test_retry_after_forms() -> None:
    assert o.parse_retry_after("3") == 3.0
    assert o.parse_retry_after(None) is None and o.parse_retry_after("soon") is None
    assert o.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


# -- the HTTP helper on its own ------------------------------------------------------------


def no_sleep(seconds: float) -> None:
    pytest.fail(f"the request was retried (it would have waited {seconds}s)")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_http_helper_does_not_retry_4xx(jira: FakeJira, status: int) -> None:
    jira.script(status, {"errorMessages": ["no"]}, times=5)
    resp = o.http_request("GET", jira.api_url(3) + "/issue/PROJ-123/transitions", sleep=no_sleep)
    assert resp.status == status and resp.attempts == 1


def test_http_helper_retries_idempotent_read_timeouts(jira: FakeJira) -> None:
    jira.script_hang(10, times=4)
    waits: list[float] = []
    with pytest.raises(o.HttpTransportError) as info:
        o.http_request("GET", jira.api_url(3) + "/issue/PROJ-123/transitions", read_timeout=0.2, sleep=waits.append)
    assert info.value.kind == "read_timeout" and info.value.attempts == 4 and waits == [1.0, 2.0, 4.0]
    assert str(info.value).endswith("within 0.2s (read_timeout) after 4 attempts")


def test_http_helper_connection_dropped_after_post(jira: FakeJira) -> None:
    jira.script(close=True)
    with pytest.raises(o.HttpTransportError) as info:
        o.http_request("POST", jira.api_url(2) + "/issue/PROJ-123/comment", json_body={"body": "x"}, sleep=no_sleep)
    assert info.value.kind == "aborted"
    assert str(info.value) == (
        f"127.0.0.1:{jira.port} closed the connection without a response "
        "(not retried: the request may already have been applied)"
    )


def test_http_helper_dns_failure() -> None:
    with pytest.raises(o.HttpTransportError) as info:
        o.http_request("GET", "http://no-such-host.invalid/x", attempts=1)
    assert info.value.kind == "dns" and str(info.value) == "cannot resolve host 'no-such-host.invalid' — check the URL"


# -- issue 14 §1: transitions follow the outcome --------------------------------------------


FAILING = {"name": "ui smoke", "type": "command", "run": ["python3", "-c", "raise SystemExit(3)"]}
PASSING = {"name": "unit", "type": "command", "run": ["python3", "-c", "print('ok')"]}
WONT_DO: dict[str, Any] = {
    "id": "41",
    "name": "Won't Do",
    "to": {"id": "10002", "name": "Won't Do", "statusCategory": {"id": 3, "key": "done", "name": "Done"}},
}
DONE: dict[str, Any] = {
    "id": "51",
    "name": "Done",
    "to": {"id": "10001", "name": "Done", "statusCategory": {"id": 3, "key": "done", "name": "Done"}},
}


def routes(jira: FakeJira) -> list[tuple[str, str]]:
    return [(r.method, r.path + (f"?{r.query}" if r.query else "")) for r in jira.requests]


def test_plain_transition_on_a_failed_run_comments_and_does_not_close(project: Project, jira: FakeJira) -> None:
    # README's old example: "when": "always" with a plain transition closed the issue of a failed run
    project.workflow("notify", [FAILING, jira_step(jira, 3, transition={"to_status_category": "done"})])
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    assert routes(jira) == [("POST", "/rest/api/3/issue/PROJ-123/comment")]
    assert jira.issue_status("PROJ-123") == "To Do" and jira.applied_transitions == []
    record = entry(project)
    assert record["status"] == "passed"
    assert record["message"] == "commented on PROJ-123, not moved (the run so far failed)"
    assert record["jira_issues"][0]["moved"] == "not moved"


@pytest.mark.parametrize("first, moved_to, transition_id", [(PASSING, "Done", "31"), (FAILING, "In Progress", "21")])
def test_on_success_and_on_failure(
    project: Project, jira: FakeJira, first: dict[str, Any], moved_to: str, transition_id: str
) -> None:
    transition = {"on_success": {"to_status_category": "done"}, "on_failure": "Start Progress"}
    project.workflow("notify", [first, jira_step(jira, 2, transition=transition)])
    project.cli("run", "notify", env=ENV)
    assert jira.applied_transitions == [("PROJ-123", transition_id)]
    assert jira.issue_status("PROJ-123") == moved_to
    assert entry(project)["message"].endswith(f" to {moved_to!r}")


def test_only_on_failure_leaves_a_passed_run_alone(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, transition={"on_failure": "Start Progress"}))
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    assert entry(project)["message"] == "commented on PROJ-123, not moved (the run so far passed)"
    assert [r.method for r in jira.requests] == ["POST"]


@pytest.mark.parametrize("transition", [{"to_status_category": "done"}, "Done", "done"])
def test_issue_already_in_the_target_is_not_transitioned(project: Project, jira: FakeJira, transition: Any) -> None:
    jira.add_issue("PROJ-123", status="Done")
    write_workflow(project, jira_step(jira, 3, transition=transition))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert routes(jira) == [
        ("POST", "/rest/api/3/issue/PROJ-123/comment"),
        ("GET", "/rest/api/3/issue/PROJ-123?fields=status&expand=transitions"),
    ]
    record = entry(project)
    assert record["status"] == "passed"
    assert record["message"] == "commented on PROJ-123, already in Done"
    assert record["jira_issues"][0]["moved"] == "already"


def test_category_prefers_the_transition_named_like_the_category(project: Project, jira: FakeJira) -> None:
    jira.transitions = [DEFAULT_TRANSITIONS[1], WONT_DO, DONE]  # Jira's order: Won't Do before Done
    write_workflow(project, jira_step(jira, 3, transition={"to_status_category": "done"}))
    project.cli("run", "notify", env=ENV)
    assert jira.applied_transitions == [("PROJ-123", "51")]
    record = entry(project)
    assert record["message"] == "commented on PROJ-123, moved by 'Done' to 'Done' (also matched: \"Won't Do\")"
    assert (record["transition"], record["jira_issues"][0]["also_matched"]) == ("Done", ["Won't Do"])


def test_category_without_a_same_named_transition_takes_jiras_first(project: Project, jira: FakeJira) -> None:
    other = {**DONE, "id": "61", "name": "Resolve", "to": {**DONE["to"], "id": "10003", "name": "Resolved"}}
    jira.transitions = [WONT_DO, other]
    write_workflow(project, jira_step(jira, 2, transition={"to_status_category": "done"}))
    project.cli("run", "notify", env=ENV)
    assert jira.applied_transitions == [("PROJ-123", "41")]
    assert entry(project)["jira_issues"][0]["also_matched"] == ["Resolve"]


def test_prefer_pins_the_transition(project: Project, jira: FakeJira) -> None:
    jira.transitions = [WONT_DO, DONE]
    write_workflow(project, jira_step(jira, 2, transition={"to_status_category": "done", "prefer": "won't do"}))
    project.cli("run", "notify", env=ENV)
    assert jira.applied_transitions == [("PROJ-123", "41")]
    jira.add_issue("PROJ-123")
    write_workflow(project, jira_step(jira, 2, transition={"to_status_category": "done", "prefer": "Fixed"}))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert entry(project)["message"] == (
        "commented on PROJ-123, but no transition into category 'done' is named 'Fixed' (prefer) for PROJ-123; "
        "matching: \"Won't Do\" → Won't Do [done], 'Done' → Done [done]"
    )


def test_fields_go_with_the_transition_and_a_missing_one_is_explained(project: Project, jira: FakeJira) -> None:
    jira.required_fields = {"31": ["resolution"]}
    write_workflow(project, jira_step(jira, 3, transition="Close Issue"))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert entry(project)["message"] == (
        "commented on PROJ-123, but Jira rejected the transition 'Close Issue' on PROJ-123 (400): resolution: "
        "Field 'resolution' is required — give the field in the transition's \"fields\", e.g. "
        '"fields": {"resolution": {"name": "Fixed"}}'
    )
    fields = {"resolution": {"name": "Fixed"}}
    write_workflow(project, jira_step(jira, 3, transition={"name": "Close Issue", "fields": fields}))
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    assert jira.requests[-1].json == {"transition": {"id": "31"}, "fields": fields}
    assert jira.transition_fields == [fields] and jira.issue_status("PROJ-123") == "Done"


def test_no_transitions_at_all_names_the_permission(project: Project, jira: FakeJira) -> None:
    jira.transitions = []
    jira.issues["PROJ-123"]["status"] = dict(DEFAULT_TRANSITIONS[0]["to"])
    write_workflow(project, jira_step(jira, 2, transition="Close Issue"))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert entry(project)["message"] == (
        "commented on PROJ-123, but Jira offers no transitions for PROJ-123 — the user may lack the "
        "'Transition issues' permission in its project"
    )


@pytest.mark.parametrize(
    "transition, message",
    [
        (
            {"on_success": "Done", "prefer": "x"},
            "key 'transition': with on_success/on_failure, key 'prefer' belongs inside one of them",
        ),
        ({"on_sucess": "Done"}, "key 'transition': unknown key 'on_sucess' (did you mean 'on_success'?)"),
        (
            {"on_failure": {"to_status_categry": "done"}},
            ("key 'transition': on_failure: unknown key 'to_status_categry' (did you mean 'to_status_category'?)"),
        ),
        ({"name": "Close", "prefer": "Done"}, "key 'transition': 'prefer' picks among the transitions into a category"),
        ({"to_status_category": "done", "fields": ["resolution"]}, "key 'transition': 'fields' must be an object"),
        ({"on_success": ""}, "key 'transition': on_success: is empty (give a transition name such as 'Done')"),
    ],
)
def test_transition_definition_errors(project: Project, jira: FakeJira, transition: Any, message: str) -> None:
    write_workflow(project, jira_step(jira, 2, transition=transition))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 2
    assert message in result.stderr
    assert jira.requests == []


# -- issue 14 §2: one comment, never two ---------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_comment_answered_with_a_server_error_is_not_posted_again(
    project: Project, jira: FakeJira, slept: list[float], status: int
) -> None:
    # a 504 from a proxy in front of Jira often comes after Jira stored the comment: once
    # posted four identical comments
    jira.script_jira_error(status, ["Gateway timeout"], times=4)
    write_workflow(project, jira_step(jira, 2, retries=2))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    assert len(jira.requests_of("POST", "comment")) == 1 and slept == []
    record = entry(project)
    assert record["attempts"] == 3
    assert record["message"] == (
        f"the comment on PROJ-123 may have been posted (Jira answered {status}; not sent again)"
    )
    assert record["jira_issues"][0]["comment"] == "uncertain"
    assert (
        f"Jira server error {status} at {jira.url}: Gateway timeout — not retried: the comment may have been "
        "posted; check PROJ-123 before running again"
    ) in result.stdout


@pytest.mark.parametrize("status, headers", [(429, {"Retry-After": "3"}), (503, {"Retry-After": "5"}), (503, {})])
def test_comment_retried_where_jira_processed_nothing(
    project: Project, jira: FakeJira, slept: list[float], status: int, headers: dict[str, str]
) -> None:
    jira.script_jira_error(status, ["busy"], headers=headers, times=2)
    write_workflow(project, jira_step(jira, 3))
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    assert len(jira.requests_of("POST", "comment")) == 3 and len(jira.comments) == 1
    assert slept == [float(headers["Retry-After"])] * 2 if headers else slept == [1.0, 2.0]


def test_step_retry_repeats_only_the_transition(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script_jira_error(409, ["Conflict"], method="POST", path_contains="/transitions")
    write_workflow(project, jira_step(jira, 3, transition="Close Issue", retries=2))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert [m for m, _ in routes(jira)] == ["POST", "GET", "POST", "GET", "POST"]
    assert len(jira.requests_of("POST", "comment")) == 1 and len(jira.comments) == 1
    record = entry(project)
    assert (record["status"], record["attempts"], record["comment_id"]) == ("passed", 2, "10000")
    assert record["message"] == "commented on PROJ-123, moved by 'Close Issue' to 'Done'"
    assert "jira: PROJ-123: comment 10000 was added by an earlier attempt; not sent again" in step_log(project)


def test_step_retry_after_an_uncertain_comment_still_transitions(project: Project, jira: FakeJira) -> None:
    jira.script_jira_error(504, ["Gateway timeout"], method="POST", path_contains="/comment")
    write_workflow(project, jira_step(jira, 3, transition="Close Issue", retries=1))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert len(jira.requests_of("POST", "comment")) == 1
    assert jira.applied_transitions == [("PROJ-123", "31")]
    assert entry(project)["message"] == (
        "the comment on PROJ-123 may have been posted (Jira answered 504; not "
        "sent again), moved by 'Close Issue' to 'Done'"
    )


def test_read_timeout_then_step_retry_does_not_post_again(project: Project, jira: FakeJira) -> None:
    jira.script_hang(30)
    write_workflow(project, jira_step(jira, 2, read_timeout=0.3, retries=1))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert len(jira.requests_of("POST", "comment")) == 1
    assert entry(project)["message"] == ("the comment on PROJ-123 may have been posted (read timeout; not sent again)")


def test_retry_after_longer_than_two_minutes_ends_the_retries(
    project: Project, jira: FakeJira, slept: list[float]
) -> None:
    jira.script(429, "", headers={"Retry-After": "600"}, times=4)
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert slept == [] and len(jira.requests) == 1
    assert entry(project)["message"] == (
        f"rate limited by Jira at {jira.url} (429; Retry-After: 600); not retried: the server asks to wait 600s, "
        "more than orchestrate waits (120s) — try again later"
    )


def test_retry_after_is_never_waited_past_the_steps_timeout(
    project: Project, jira: FakeJira, slept: list[float]
) -> None:
    jira.script(429, "", headers={"Retry-After": "10"}, times=4)
    write_workflow(project, jira_step(jira, 2, timeout=5))
    project.cli("run", "notify", env=ENV)
    assert slept == [] and len(jira.requests) == 1
    assert entry(project)["message"] == (
        f"rate limited by Jira at {jira.url} (429; Retry-After: 10); not retried: waiting 10s would pass the "
        "step's timeout — try again later"
    )


def test_backoff_never_waits_past_the_steps_timeout(project: Project, slept: list[float]) -> None:
    port = closed_port()
    step = {
        "name": "notify jira",
        "type": "jira",
        "jira_url": f"http://127.0.0.1:{port}/rest/api/2",
        "user": USER,
        "token": "${JIRA_TOKEN}",
        "issue": "PROJ-123",
        "comment": "hello",
        "timeout": 1.5,
    }
    write_workflow(project, step)
    project.cli("run", "notify", env=ENV)
    assert slept == [1.0]  # a 1 s wait fits in 1.5 s, a 2 s one does not (the fake sleep takes no time)
    assert entry(project)["message"] == (
        f"cannot comment on PROJ-123: connection refused by 127.0.0.1:{port} after 2 attempts (the step's "
        "timeout leaves no time for another attempt)"
    )


def test_update_run_keeps_one_comment_per_issue_and_run(project: Project, jira: FakeJira) -> None:
    steps = [
        jira_step(jira, 3, name="started", comment="{workflow} started", update="run"),
        PASSING,
        jira_step(jira, 3, name="finished", comment="{workflow} {status}: {failed_steps}", update="run"),
        jira_step(jira, 3, name="separate", comment="a comment of its own"),
    ]
    project.workflow("notify", steps)
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert routes(jira) == [
        ("POST", "/rest/api/3/issue/PROJ-123/comment"),
        ("PUT", "/rest/api/3/issue/PROJ-123/comment/10000"),
        ("POST", "/rest/api/3/issue/PROJ-123/comment"),
    ]
    assert [(c["id"], c["edits"]) for c in jira.comments] == [("10000", 1), ("10001", 0)]
    assert jira.comments[0]["body"] == o.jira_adf_document("notify passed: none")
    finished = entry(project, "finished")
    assert (finished["message"], finished["comment_id"]) == ("updated comment 10000 on PROJ-123", "10000")
    assert finished["jira_issues"][0]["comment"] == "updated"
    project.cli("run", "notify", env=ENV)  # another run: a comment of its own
    assert [c["id"] for c in jira.comments] == ["10000", "10001", "10002", "10003"]


def test_update_run_posts_anew_when_the_comment_was_deleted(project: Project, jira: FakeJira) -> None:
    steps = [
        jira_step(jira, 2, name="started", comment="started", update="run"),
        jira_step(jira, 2, name="finished", comment="finished", update="run"),
    ]
    project.workflow("notify", steps)
    jira.script_jira_error(404, ["Can not find a comment for the id: 10000."], method="PUT")
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    assert [m for m, _ in routes(jira)] == ["POST", "PUT", "POST"]
    assert entry(project, "finished")["message"] == "commented on PROJ-123"
    assert "jira: PROJ-123: comment 10000 is gone; posting a new one" in step_log(project, "finished")


# -- issue 14 §3: the right issues ---------------------------------------------------------


def git_repo(root: Path, *messages: str, branch: str | bytes = "main") -> list[str]:
    """A git repository at `root` (the project) with one commit per message; the commit ids."""
    import subprocess

    def git(*args: str | bytes) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
            cwd=root,
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return done.stdout.decode().strip()

    root.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main")
    ids = []
    for number, message in enumerate(messages):
        (root / f"file{number}.txt").write_text(message)
        git("add", "-A")
        git("commit", "-q", "-m", message)
        ids.append(git("rev-parse", "HEAD"))
    if branch != "main":
        git("checkout", "-q", "-b", branch)
    return ids


def test_issue_list_with_a_numeric_id_each_commented_once(project: Project, jira: FakeJira) -> None:
    jira.add_issue("PROJ-7")
    seven_id = jira.issues["PROJ-7"]["id"]
    write_workflow(project, jira_step(jira, 3, issue=["PROJ-123", seven_id, "PROJ-123"], transition="Close Issue"))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    assert [r.path for r in jira.requests_of("POST", "comment")] == [
        "/rest/api/3/issue/PROJ-123/comment",
        f"/rest/api/3/issue/{seven_id}/comment",
    ]
    assert jira.applied_transitions == [("PROJ-123", "31"), ("PROJ-7", "31")]
    record = entry(project)
    assert record["message"] == (
        "commented on PROJ-123, moved by 'Close Issue' to 'Done'; "
        f"commented on {seven_id}, moved by 'Close Issue' to 'Done'"
    )
    assert [i["issue"] for i in record["jira_issues"]] == ["PROJ-123", seven_id]
    assert (record["jira_issue"], record["comment_id"]) == ("PROJ-123", "10000")


def test_issues_from_branch_and_pushed_commits_of_a_real_push(tmp_path: Path, jira: FakeJira) -> None:
    from test_hooks import GitProject

    gp = GitProject(tmp_path)
    gp.env.update(PYTHONPATH=str(REPO), JIRA_TOKEN=TOKEN)  # the hook runs this checkout's orchestrate
    assert gp.orchestrate("hook", "install").returncode == 0
    jira.add_issue("PROJ-7", "PROJ-8", "PROJ-9", "OTHER-1")
    step = jira_step(
        jira, 2, issue=None, issues_from=["branch", "commits"], projects=["PROJ"], comment="{git_branch}: {status}"
    )
    gp.workflow([gp.record_step("check"), step])
    gp.commit("PROJ-9: add the notify workflow")
    pushed = gp.push("main")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert [(c["issue"], c["body"]) for c in jira.comments] == [("PROJ-9", "main: passed")]
    gp.git("checkout", "-q", "-b", "feature/PROJ-7-login")
    gp.commit("PROJ-8: validate the form", src__form_py="x = 1\n")
    gp.commit("Refs PROJ-7, OTHER-1 and UTF-8 handling", src__form_py="x = 2\n")
    pushed = gp.push("-u", "feature/PROJ-7-login")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    # the branch's key first, then the pushed commits' (newest first); PROJ-9 was pushed before,
    # OTHER-1 and UTF-8 are not of project PROJ
    assert [(c["issue"], c["body"]) for c in jira.comments[1:]] == [
        ("PROJ-7", "feature/PROJ\\-7\\-login: passed"),
        ("PROJ-8", "feature/PROJ\\-7\\-login: passed"),
    ]
    record = gp.records()[-1]
    notify = record["log"][1]
    assert notify["message"] == "commented on PROJ-7; commented on PROJ-8"
    assert "jira: issues: PROJ-7, PROJ-8" in (gp.root / notify["log_file"]).read_text()


def test_issues_from_compared_commits(project: Project, jira: FakeJira) -> None:
    ids = git_repo(project.root, "PROJ-1 old", "PROJ-2 first", "fixes PROJ-3 (and PROJ-2)", branch="topic")
    jira.add_issue("PROJ-1", "PROJ-2", "PROJ-3")
    write_workflow(project, jira_step(jira, 3, issue=None, issues_from=["commits"]))
    result = project.cli("run", "notify", "--from-ref", ids[0], env=ENV)
    assert result.exit_code == 0, result.stdout
    assert [c["issue"] for c in jira.comments] == ["PROJ-3", "PROJ-2"]


def test_no_key_found_skips_the_step(project: Project, jira: FakeJira) -> None:
    ids = git_repo(project.root, "initial", "no key here")
    write_workflow(project, jira_step(jira, 3, issue=None, issues_from=["branch", "commits"], projects=["PROJ"]))
    result = project.cli("run", "notify", "--from-ref", ids[0], env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    record = entry(project)
    assert record["status"] == "skipped"
    assert record["message"] == (
        f"no Jira issue key of project PROJ in branch 'main' or the commits {ids[0]}..HEAD (1)"
    )
    assert jira.requests == [] and project.last_record()["status"] == "completed"


def test_no_key_outside_git_skips_the_step(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, issue=None, issues_from=["branch", "commits"]))
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    assert entry(project)["message"] == (
        "no Jira issue key in no branch (detached HEAD) or no commits to read (not a push, no --from-ref)"
    )


def test_empty_issue_variable_skips_the_step(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, issue="${JIRA_ISSUE:-}"))
    assert project.cli("validate", "notify", env=ENV).exit_code == 0
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (entry(project)["status"], entry(project)["message"]) == (
        "skipped",
        "no Jira issue: key 'issue' is empty (JIRA_ISSUE is not set)",
    )
    assert jira.requests == []


def test_found_key_jira_does_not_know_is_ignored(project: Project, jira: FakeJira) -> None:
    ids = git_repo(project.root, "initial", "SHA-256 digests for PROJ-123")
    write_workflow(project, jira_step(jira, 2, issue=None, issues_from=["commits"]))
    result = project.cli("run", "notify", "--from-ref", ids[0], env=ENV)
    assert result.exit_code == 0, result.stdout
    assert [c["issue"] for c in jira.comments] == ["PROJ-123"]
    assert entry(project)["message"] == "SHA-256: no such issue, ignored; commented on PROJ-123"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"issue": None},
            'missing required key \'issue\' (an issue key, a list of them, or "issues_from": ["branch", "commits"])',
        ),
        ({"issue": ["PROJ-1", "bad"]}, "key 'issue[1]': 'bad' is not a Jira issue key"),
        (
            {"issue": None, "issues_from": ["branches"]},
            ("key 'issues_from': 'branches' is not a source of issue keys (branch, commits) (did you mean 'branch'?)"),
        ),
        ({"issue": None, "issues_from": []}, "key 'issues_from': is empty"),
        ({"issues_from": ["branch"], "projects": ["proj"]}, "key 'projects': 'proj' is not a Jira project key"),
        ({"projects": ["PROJ"]}, "key 'projects': restricts the keys issues_from finds; add \"issues_from\""),
        ({"update": "always"}, "key 'update': 'always': the one value is \"run\""),
        (
            {"visibility": {"type": "team", "value": "x"}},
            'key \'visibility\': expected {"type": "role", "value": "Developers"}',
        ),
        ({"visibility": {"type": "role", "vale": "x"}}, "key 'visibility': unknown key 'vale' (did you mean 'value'?)"),
        ({"ca_bundle": " "}, "key 'ca_bundle': is empty"),
        (
            {"jira_url": "https://me:hunter2-password@x.atlassian.net"},
            "key 'jira_url': https://***@x.atlassian.net…: credentials do not belong in the URL; give them as \"user\" "
            'and "token"',
        ),
    ],
)
def test_more_definition_errors(project: Project, jira: FakeJira, override: dict[str, Any], message: str) -> None:
    step = {**jira_step(jira, 2), **override}
    write_workflow(project, {k: v for k, v in step.items() if v is not None})
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 2
    assert result.stderr.startswith('orchestrate: error: workflows/notify.json: steps[1] "notify jira": ')
    assert message in result.stderr and "hunter2" not in result.stderr
    assert jira.requests == []


def test_find_issue_keys() -> None:
    texts = ["feature/PROJ-12-login_AB-3", "Fix PROJ-12, ABC_1-7; not xPROJ-1 nor PROJ-1a nor proj-4 (UTF-8)"]
    assert o.find_jira_issue_keys(texts) == ["PROJ-12", "AB-3", "ABC_1-7", "UTF-8"]
    assert o.find_jira_issue_keys(texts, ["PROJ", "ABC_1"]) == ["PROJ-12", "ABC_1-7"]


# -- issue 14 §4: authentication and the network -------------------------------------------


@pytest.mark.parametrize("user, expected", [(USER, BASIC), (None, f"Bearer {TOKEN}")])
def test_netrc_never_replaces_the_steps_credentials(
    project: Project, jira: FakeJira, tmp_path: Path, user: str | None, expected: str
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone-else password not-the-token\n")
    netrc.chmod(0o600)
    write_workflow(project, jira_step(jira, 2, user=user))
    result = project.cli("run", "notify", env={**ENV, "NETRC": str(netrc)})
    assert result.exit_code == 0, result.stdout
    assert [r.header("Authorization") for r in jira.requests] == [expected]


@pytest.mark.parametrize(
    "url, base, version",
    [
        (
            "https://api.atlassian.com/ex/jira/0a1b2c3d-4e5f",
            "https://api.atlassian.com/ex/jira/0a1b2c3d-4e5f/rest/api/3",
            3,
        ),
        (
            "https://api.atlassian.com/ex/jira/0a1b2c3d-4e5f/",
            "https://api.atlassian.com/ex/jira/0a1b2c3d-4e5f/rest/api/3",
            3,
        ),
        ("https://api.atlassian.com/ex/jira/0a1b/rest/api/2", "https://api.atlassian.com/ex/jira/0a1b/rest/api/2", 2),
        ("https://api.atlassian.com/other/thing", "https://api.atlassian.com/other/thing/rest/api/2", 2),
    ],
)
def test_scoped_token_gateway_uses_api3(url: str, base: str, version: int) -> None:
    api = o.jira_api(url)
    assert (api.base, api.version) == (base, version)


def test_scoped_token_gateway_path_is_an_operation_of_the_document(jira: FakeJira) -> None:
    # the gateway's /ex/jira/<cloudId> prefix stands where a site's context path does
    jira_url = f"{jira.url}/ex/jira/0a1b2c3d/rest/api/3"
    resp = o.http_request("GET", f"{jira_url}/issue/PROJ-123?fields=status", sleep=no_sleep)
    assert resp.status == 200 and resp.json()["fields"]["status"]["name"] == "To Do"


PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def test_refused_proxy_is_named_not_the_jira_host(project: Project, jira: FakeJira, slept: list[float]) -> None:
    proxy_port = closed_port()
    env: dict[str, str | None] = {
        **ENV,
        **{name: None for name in PROXY_VARIABLES},
        "HTTP_PROXY": f"http://proxy-user:proxy-pass@127.0.0.1:{proxy_port}",
    }
    write_workflow(project, jira_step(jira, 2))
    result = project.cli("run", "notify", env=env)  # type: ignore[arg-type]
    assert result.exit_code == 1
    assert entry(project)["message"] == (
        f"cannot comment on PROJ-123: cannot connect to the proxy 127.0.0.1:{proxy_port} (HTTP_PROXY) on the way "
        f"to 127.0.0.1:{jira.port} after 4 attempts — check HTTP_PROXY and NO_PROXY"
    )
    assert jira.requests == [] and slept == [1.0, 2.0, 4.0]
    assert "proxy-pass" not in result.stdout + json.dumps(project.last_record())
    env["NO_PROXY"] = "127.0.0.1"
    assert project.cli("run", "notify", env=env).exit_code == 0  # type: ignore[arg-type]


def test_https_to_a_plain_http_port(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 2, jira_url=f"https://127.0.0.1:{jira.port}/rest/api/2"))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 1
    assert entry(project)["message"] == (
        f"cannot comment on PROJ-123: TLS handshake with 127.0.0.1:{jira.port} failed (the server does not speak "
        "TLS on that port) — is the URL http:// rather than https://?"
    )
    assert jira.requests == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "jira.pem", folder / "jira.key"
    assert shutil.which("openssl"), "these tests make their certificate with the openssl command: install it"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_private_ca_is_explained_and_ca_bundle_trusts_it(project: Project, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with FakeJira(certfile=str(cert), keyfile=str(key)) as jira:
        write_workflow(project, jira_step(jira, 3))
        assert project.cli("run", "notify", env={**ENV, "REQUESTS_CA_BUNDLE": None}).exit_code == 1
        assert entry(project)["message"] == (
            f"cannot comment on PROJ-123: TLS handshake with 127.0.0.1:{jira.port} failed (certificate not "
            'trusted) — if the site uses a private CA, give the step "ca_bundle" (or set REQUESTS_CA_BUNDLE) '
            "with its CA certificate file"
        )
        project.write("certs/jira-ca.pem", cert.read_text())
        write_workflow(project, jira_step(jira, 3, ca_bundle="certs/jira-ca.pem"))
        assert project.cli("run", "notify", env=ENV).exit_code == 0
        write_workflow(project, jira_step(jira, 3))
        assert project.cli("run", "notify", env={**ENV, "REQUESTS_CA_BUNDLE": str(cert)}).exit_code == 0
        assert len(jira.comments) == 2


def test_missing_ca_bundle_is_one_line(project: Project, jira: FakeJira) -> None:
    write_workflow(project, jira_step(jira, 3, ca_bundle="certs/nope.pem"))
    validated = project.cli("validate", "notify", env=ENV)
    assert validated.exit_code == 0 and "ca_bundle certs/nope.pem does not exist" in validated.stderr
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert entry(project)["message"] == (
        "ca_bundle certs/nope.pem does not exist (a PEM file of the CA certificates that signed Jira's certificate)"
    )
    assert jira.requests == []


def test_413_and_409_are_one_line_each(project: Project, jira: FakeJira) -> None:
    jira.script_jira_error(
        413, ["The number of comments on this issue has reached the limit"], method="POST", path_contains="/comment"
    )
    write_workflow(project, jira_step(jira, 2))
    project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == (
        "Jira refused the comment on PROJ-123 (413): the issue has reached Jira's per-issue limit (of comments "
        "or attachments) — delete old ones or comment elsewhere (The number of comments on this issue has "
        "reached the limit)"
    )
    jira.script_jira_error(409, ["Conflict"], method="POST", path_contains="/transitions")
    write_workflow(project, jira_step(jira, 2, transition="Close Issue"))
    project.cli("run", "notify", env=ENV)
    assert entry(project)["message"] == (
        "commented on PROJ-123, but Jira refused the transition 'Close Issue' on PROJ-123 (409 conflict: the "
        "issue was changed at the same time by someone else) — run the step again"
    )


def test_branch_name_that_is_not_utf8(project: Project, jira: FakeJira) -> None:
    git_repo(project.root, "initial", branch=b"feature/PROJ-7-caf\xe9")
    jira.add_issue("PROJ-7")
    write_workflow(project, jira_step(jira, 3, issue=None, issues_from=["branch"], comment="on {git_branch}"))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    (comment,) = jira.comments
    assert comment["issue"] == "PROJ-7"
    assert comment["body"] == o.jira_adf_document("on feature/PROJ-7-caf\ufffd")


# -- issue 14 §5: comments people can read -------------------------------------------------


def test_urls_become_adf_links(project: Project, jira: FakeJira, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "7",
        "GITHUB_SERVER_URL": "https://github.com",
    }.items():
        monkeypatch.setenv(name, value)
    write_workflow(project, jira_step(jira, 3, comment="CI: {ci_url}\nSee https://example.com/docs/x?a=1 (or not)."))
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    body = jira.comments[0]["body"]
    jsonschema.validate(body, ADF_SCHEMA)
    link = [{"type": "link", "attrs": {"href": "https://github.com/o/r/actions/runs/7"}}]
    assert body["content"][0]["content"] == [
        {"type": "text", "text": "CI: "},
        {"type": "text", "text": "https://github.com/o/r/actions/runs/7", "marks": link},
    ]
    assert body["content"][1]["content"] == [
        {"type": "text", "text": "See "},
        {
            "type": "text",
            "text": "https://example.com/docs/x?a=1",
            "marks": [{"type": "link", "attrs": {"href": "https://example.com/docs/x?a=1"}}],
        },
        {"type": "text", "text": " (or not)."},
    ]


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("https://a.example/x).", [("https://a.example/x", True), (").", False)]),
        ("(https://a.example/wiki/A_(b))", [("(", False), ("https://a.example/wiki/A_(b)", True), (")", False)]),
        ("http:// alone", [("http:// alone", False)]),
        (
            "two: http://a.example, https://b.example!",
            [("two: ", False), ("http://a.example", True), (", ", False), ("https://b.example", True), ("!", False)],
        ),
    ],
)
def test_url_pieces(text: str, pieces: list[tuple[str, bool]]) -> None:
    assert o._split_urls(text) == pieces
    jsonschema.validate(o.jira_adf_document(text), ADF_SCHEMA)


def test_api2_escapes_what_orchestrate_writes(project: Project, jira: FakeJira) -> None:
    failing = {
        "name": "ui-smoke_[e2e]",
        "type": "command",
        "run": ["python3", "-c", "raise SystemExit(3)"],
        "continue_on_error": True,
    }
    project.workflow("notify", [failing, jira_step(jira, 2, comment="*Run* {status}\n{summary}\n{failed_steps}")])
    result = project.cli("run", "notify", env=ENV)
    assert result.exit_code == 0, result.stdout
    body = jira.comments[0]["body"]
    lines = body.split("\n")
    assert lines[0] == "*Run* passed"  # the user's own markup stays markup
    assert re.fullmatch(r"ui\\-smoke\\_\\\[e2e\\\]: failed in \d+\.\ds — command exited with code 3", lines[1])
    assert lines[2] == "ui\\-smoke\\_\\[e2e\\]"


def test_api2_truncation_marker_is_escaped() -> None:
    payload, truncated = o.jira_comment_payload("x" * 40000, 2)
    assert truncated
    assert re.search(r"\n\\\[… truncated by orchestrate: \d+ characters omitted\\\]\Z", payload["body"])
    assert len(payload["body"]) <= o.JIRA_COMMENT_LIMIT


def test_wiki_escape_leaves_urls_whole() -> None:
    assert o.jira_wiki_escape("a-b *c* {d} see https://x.example/a_b-c!") == (
        "a\\-b \\*c\\* \\{d\\} see https://x.example/a_b-c\\!"
    )


@pytest.mark.parametrize("version", [2, 3])
def test_visibility_is_sent_as_jira_defines_it(project: Project, jira: FakeJira, version: int) -> None:
    visibility = {"type": "role", "value": "Developers"}
    steps = [
        jira_step(jira, version, name="a", visibility=visibility, update="run"),
        jira_step(jira, version, name="b", visibility=visibility, update="run"),
    ]
    project.workflow("notify", steps)
    assert project.cli("run", "notify", env=ENV).exit_code == 0
    post, put = jira.requests
    assert post.json["visibility"] == put.json["visibility"] == visibility
    assert jira.comments[0]["visibility"] == visibility


def test_dry_run_with_issues_from(project: Project, jira: FakeJira) -> None:
    step = jira_step(
        jira,
        2,
        issue=None,
        issues_from=["branch", "commits"],
        projects=["PROJ"],
        transition={"on_success": {"name": "Close Issue", "fields": {"resolution": {"name": "Fixed"}}}},
    )
    write_workflow(project, step)
    result = project.cli("run", "notify", "--dry-run", env=ENV)
    assert result.exit_code == 0, result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert (
        "issues: keys found in the branch name and the commit messages (projects: PROJ), each commented once"
    ) in lines
    assert f"POST {jira.api_url(2)}/issue/<issue>/comment" in lines
    assert (
        'body: {"transition": {"id": "<looked up at run time>"}, "fields": {"resolution": {"name": "Fixed"}}}' in lines
    )
    assert jira.requests == []


def test_too_many_found_keys_send_nothing(project: Project, jira: FakeJira) -> None:
    backlog = "Backlog: " + " ".join(f"PROJ-{n}" for n in range(1, 26))
    ids = git_repo(project.root, "initial", backlog)
    write_workflow(project, jira_step(jira, 2, issue=None, issues_from=["commits"]))
    assert project.cli("run", "notify", "--from-ref", ids[0], env=ENV).exit_code == 1
    assert entry(project)["message"] == (
        "issues_from found 25 issue keys (PROJ-1, PROJ-2, PROJ-3, PROJ-4, PROJ-5, …), more than 20: nothing was "
        'sent; narrow them with "projects" or name the issues in "issue"'
    )
    assert jira.requests == []


def test_found_key_answered_by_something_that_is_not_jira_fails(project: Project, jira: FakeJira) -> None:
    ids = git_repo(project.root, "initial", "PROJ-123 done")
    jira.script_html_error(404, "Page Not Found")
    write_workflow(project, jira_step(jira, 2, issue=None, issues_from=["commits"]))
    assert project.cli("run", "notify", "--from-ref", ids[0], env=ENV).exit_code == 1
    assert entry(project)["message"].endswith("answered 404 (HTML page 'Page Not Found') — is jira_url the Jira site?")


def test_transition_answered_with_500_is_not_sent_again(project: Project, jira: FakeJira, slept: list[float]) -> None:
    jira.script_jira_error(500, ["boom"], method="POST", path_contains="/transitions", times=4)
    write_workflow(project, jira_step(jira, 2, transition="Close Issue"))
    assert project.cli("run", "notify", env=ENV).exit_code == 1
    assert len(jira.requests_of("POST", "transitions")) == 1 and slept == []
    assert entry(project)["message"] == f"commented on PROJ-123, but Jira server error 500 at {jira.url}: boom"
