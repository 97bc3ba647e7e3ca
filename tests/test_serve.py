"""`orchestrate serve`: the HTTP API, against a real uvicorn server on 127.0.0.1.

Every test starts `orchestrate serve` as a child process on a free loopback port, so
requests go through uvicorn, FastAPI and the real `orchestrate run` children exactly as
in production. Nothing here binds or sends traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrate
import schemathesis
from conftest import CI_VARIABLES, REPO
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

# the installed console script, as a user runs it (python -m orchestrate where there is none)
_SCRIPT = Path(sys.executable).with_name("orchestrate")
ORCHESTRATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestrate"]
LOOPBACK = "127.0.0.1"
TOKEN = "s3cret-token-for-tests"

WORKFLOWS: dict[str, dict[str, Any]] = {
    "demo": {
        "name": "demo",
        "description": "two quick steps",
        "steps": [
            {"name": "hello", "type": "command", "run": ["python3", "-c", "print('hello from demo')"]},
            {"name": "second", "type": "command", "run": "echo second step ${GREETING:-}"},
        ],
    },
    "broken": {
        "name": "broken",
        "steps": [
            {"name": "boom", "type": "command", "run": "echo about to fail; exit 3"},
            {"name": "never", "type": "command", "run": "echo never"},
        ],
    },
    "slow": {
        "name": "slow",
        "steps": [
            {"name": "tick", "type": "command", "run": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done"},
        ],
    },
    "sleepy": {
        "name": "sleepy",
        "steps": [
            {"name": "nap", "type": "command", "run": ["sleep", "8"]},
        ],
    },
}


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for the real command: this checkout's orchestrate.py first."""
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _write_workflows(root: Path) -> Path:
    (root / "workflows").mkdir()
    for name, workflow in WORKFLOWS.items():
        (root / "workflows" / f"{name}.json").write_text(json.dumps(workflow), encoding="utf-8")
    return root


@pytest.fixture
def api_root(tmp_path: Path) -> Path:
    """A project root with the workflows above (the conftest's Project is for in-process CLI runs)."""
    return _write_workflows(tmp_path)


class Server:
    """A running `orchestrate serve` child process and a client for it."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.log = (root / f"server-{self.port}.log").open("wb")
        full_env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATE_API_TOKEN" and k not in CI_VARIABLES}
        # the orchestrate.py of this checkout (and so of the runs it starts), not an installed copy
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*ORCHESTRATE, "--root", str(root), "serve", "--host", LOOPBACK, "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
        self.client = httpx.Client(base_url=self.base, timeout=10)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return (self.root / f"server-{self.port}.log").read_text(errors="replace")

    def start(self, name: str, body: dict | None = None, **kwargs: Any) -> str:
        response = self.client.post("/start", params={"name": name}, json=body, **kwargs)
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def status(self, run_id: str, **kwargs: Any) -> dict:
        response = self.client.get(f"/status/{run_id}", **kwargs)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_for(self, run_id: str, accept: Callable[[dict], bool], timeout: float = 30, **kwargs: Any) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            record = self.status(run_id, **kwargs)
            if accept(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {record['status']} after {timeout}s: {record}")
            time.sleep(0.1)

    def wait_done(self, run_id: str, timeout: float = 30, **kwargs: Any) -> dict:
        return self.wait_for(run_id, lambda r: r["status"] in ("completed", "failed"), timeout, **kwargs)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.client.close()
        self.kill()
        self.log.close()


@pytest.fixture
def serve(api_root: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(api_root, *args, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    _end_leftover_runs(api_root / "runs")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tables of bad input below: they start no run, and a server a case saves 2-3 s."""
    root = _write_workflows(tmp_path_factory.mktemp("api"))
    server = Server(root)
    yield server
    server.close()
    _end_leftover_runs(root / "runs")


def _end_leftover_runs(runs_dir: Path) -> None:
    """End `orchestrate run` children a failed test left behind (they run in their own session)."""
    store = orchestrate.RunStore(runs_dir)
    for run_id in store.list_ids():
        try:
            # load() settles a dead run as failed, checking the pid's start time: a pid the
            # system has since given to another process (the test runner's shell) is never signalled
            record = store.load(run_id)
        except orchestrate.OrchestrateError:
            continue
        pid = record.get("pid")
        if record.get("status") == "running" and isinstance(pid, int):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# --- the seed's flow ----------------------------------------------------------------------


def test_start_poll_and_fetch_junit_like_the_seed_curl_flow(serve: Callable[..., Server], api_root: Path) -> None:
    server = serve()
    response = server.client.post("/start", params={"name": "demo"})
    assert response.status_code == 202
    assert list(response.json()) == ["run_id"]
    run_id = response.json()["run_id"]

    record = server.wait_done(run_id)

    assert record["status"] == "completed"
    assert record["run_id"] == run_id and record["workflow"] == "demo"
    assert [(e["step"], e["status"]) for e in record["log"]] == [("hello", "passed"), ("second", "passed")]
    assert record["trigger"]["source"] == "http"
    junit = server.client.get(f"/runs/{run_id}/junit")
    assert junit.status_code == 200
    assert junit.headers["content-type"].startswith("application/xml")
    cases = [c.get("name") for c in ET.fromstring(junit.content).iter("testcase")]
    assert cases == ["hello", "second"]
    log = server.client.get(f"/runs/{run_id}/logs/hello")
    assert log.status_code == 200 and "hello from demo" in log.text
    # the same run store: the CLI sees the HTTP run
    cli = subprocess.run(
        [*ORCHESTRATE, "--root", str(api_root), "status", run_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=checkout_env(),
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["status"] == "completed"
    listed = server.client.get("/runs", params={"workflow": "demo"}).json()
    assert [r["run_id"] for r in listed] == [run_id]


def test_failing_workflow_ends_failed(serve: Callable[..., Server]) -> None:
    server = serve()
    run_id = server.start("broken")

    record = server.wait_done(run_id)

    assert record["status"] == "failed"
    assert [(e["step"], e["status"]) for e in record["log"]][:1] == [("boom", "failed")]
    assert server.client.get("/runs", params={"status": "failed"}).json()[0]["run_id"] == run_id
    assert server.client.get("/healthz").json() == {"status": "ok"}  # the server is unharmed


def test_body_vars_only_and_skip_reach_the_run(serve: Callable[..., Server]) -> None:
    server = serve()
    run_id = server.start("demo", {"vars": {"GREETING": "hi"}, "only": ["second"], "skip": []})

    record = server.wait_done(run_id)

    assert record["status"] == "completed"
    statuses = {e["step"]: e["status"] for e in record["log"]}
    assert statuses.get("second") == "passed" and statuses.get("hello") in (None, "skipped")
    assert "second step hi" in server.client.get(f"/runs/{run_id}/logs/second").text
    assert record["trigger"]["vars"] == ["GREETING"]  # names only: values may be secrets


def test_max_parallel_one_queues_the_rest_as_pending_in_order(serve: Callable[..., Server]) -> None:
    server = serve("--max-parallel", "1")
    run_ids = [server.start("slow") for _ in range(3)]

    server.wait_for(run_ids[0], lambda r: r["status"] == "running")
    states = [server.status(run_id)["status"] for run_id in run_ids]

    assert states == ["running", "pending", "pending"]
    records = [server.wait_done(run_id, timeout=60) for run_id in run_ids]
    assert [r["status"] for r in records] == ["completed"] * 3
    starts = [r["started_at"] for r in records]
    assert starts == sorted(starts)
    for earlier, later in itertools.pairwise(records):  # one at a time
        assert earlier["finished_at"] <= later["started_at"]


def test_log_is_streamed_while_the_step_runs(serve: Callable[..., Server]) -> None:
    server = serve()
    run_id = server.start("slow")
    server.wait_for(
        run_id, lambda r: any(e.get("step") == "tick" for e in r.get("log") or []) or r.get("current") == "tick"
    )
    deadline = time.monotonic() + 10
    while server.client.get(f"/runs/{run_id}/logs/tick").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)

    with server.client.stream("GET", f"/runs/{run_id}/logs/tick") as response:
        assert response.status_code == 200
        chunks = [chunk for chunk in response.iter_text()]

    text = "".join(chunks)
    assert "tick 1" in text and "tick 6" in text  # followed to the end of the step
    assert server.status(run_id)["status"] in ("running", "completed")


# --- security and input validation -------------------------------------------------------


def test_token_is_required_when_set(serve: Callable[..., Server]) -> None:
    server = serve(env={"ORCHESTRATE_API_TOKEN": TOKEN})
    good = {"Authorization": f"Bearer {TOKEN}"}

    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/workflows").status_code == 401
    assert server.client.get("/workflows", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert server.client.post("/start", params={"name": "demo"}).status_code == 401
    assert server.client.get("/workflows", headers=good).status_code == 200
    run_id = server.start("demo", headers=good)
    assert server.client.get(f"/status/{run_id}").status_code == 401
    assert server.wait_done(run_id, headers=good)["status"] == "completed"
    for path in ("/openapi.json", "/docs"):  # the schema and docs are behind the token too
        assert server.client.get(path).status_code == 401
        assert server.client.get(path, headers=good).status_code == 200


def test_non_loopback_host_is_refused_without_a_token(api_root: Path) -> None:
    env = {k: v for k, v in checkout_env().items() if k != "ORCHESTRATE_API_TOKEN"}
    # refused before anything is bound: nothing listens on 0.0.0.0 in this test
    result = subprocess.run(
        [*ORCHESTRATE, "--root", str(api_root), "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "ORCHESTRATE_API_TOKEN" in result.stderr and "127.0.0.1" in result.stderr
    assert result.stdout == ""


UNKNOWN_RUN = "20000101T000000000Z-abcdef"


@pytest.mark.parametrize(
    ("method", "url", "status", "message"),
    [
        ("POST", "/start?name=../etc/passwd", 400, "workflow name"),
        ("POST", "/start?name=..", 400, "workflow name"),
        ("POST", "/start?name=a%2Fb", 400, "workflow name"),
        ("POST", "/start?name=nope", 404, "unknown workflow 'nope'"),
        ("POST", "/start?name=dem", 404, "did you mean 'demo'?"),
        ("GET", "/status/%2E%2E", 400, "run id"),
        ("GET", "/status/..%5C..%5Cx", 400, "run id"),
        ("GET", "/status/not%20a%20run", 400, "is not a run id"),
        ("GET", "/status/not-a-run", 404, "unknown run 'not-a-run'"),  # a plain id, as the CLI takes it
        ("GET", f"/status/{UNKNOWN_RUN}", 404, f"unknown run '{UNKNOWN_RUN}'"),
        ("GET", f"/runs/{UNKNOWN_RUN}/junit", 404, "unknown run"),
        ("GET", "/runs/..%2e/junit", 400, "run id"),
        ("GET", f"/runs/{UNKNOWN_RUN}/logs/hello", 404, "unknown run"),
        ("GET", "/runs?workflow=../x", 400, "workflow name"),
        ("GET", "/runs?status=done", 422, "pattern"),
        ("GET", "/runs?limit=0", 422, "greater than"),
    ],
)
def test_bad_names_and_ids_are_client_errors(
    shared_server: Server, method: str, url: str, status: int, message: str
) -> None:
    response = shared_server.client.request(method, url)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in json.dumps(response.json())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"only": ["helo"]}, 422, "--only 'helo': no such step in demo (did you mean 'hello'?)"),
        ({"skip": ["x"]}, 422, "--skip 'x': no such step in demo"),
        ({"vars": {"A": "x\u0000y"}}, 422, "NUL"),
        ({"vars": {"A=B": "x"}}, 422, "vars key 'A=B': expected a variable name"),
        ({"vars": {"A": 1}}, 422, "vars.A"),
        ({"unexpected": 1}, 422, "unexpected"),
        ([1, 2], 422, "body: Input should be a valid dictionary"),
    ],
)
def test_bad_start_bodies_are_client_errors(shared_server: Server, body: Any, status: int, message: str) -> None:
    response = shared_server.client.post("/start", params={"name": "demo"}, json=body)

    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert shared_server.client.get("/runs").json() == []  # nothing was queued


def test_start_body_must_be_json(shared_server: Server) -> None:
    # what a cross-site <form> or fetch() sends without a CORS preflight: text/plain or form
    # data; and what `curl -d '{...}'` sends without -H 'Content-Type: application/json'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = shared_server.client.post(
            "/start", params={"name": "demo"}, content=b'{"only": ["hello"]}', headers={"Content-Type": content_type}
        )
        media = content_type.split(";")[0]
        assert response.status_code == 415, response.text
        assert response.json()["detail"] == (
            f"body must be JSON: send it with Content-Type: application/json (not '{media}')"
        )
    assert shared_server.client.get("/runs").json() == []  # nothing was queued


def test_definition_error_is_422_with_the_message(serve: Callable[..., Server], api_root: Path) -> None:
    (api_root / "workflows" / "typo.json").write_text(
        json.dumps({"name": "typo", "steps": [{"name": "x", "type": "command", "rnu": "true"}]})
    )
    server = serve()

    response = server.client.post("/start", params={"name": "typo"})

    assert response.status_code == 422
    assert "'rnu'" in response.json()["detail"]


def test_unknown_step_log_is_404_with_a_suggestion(serve: Callable[..., Server]) -> None:
    server = serve()
    run_id = server.start("demo")
    server.wait_done(run_id)

    response = server.client.get(f"/runs/{run_id}/logs/helo")

    assert response.status_code == 404
    assert "did you mean 'hello'?" in response.json()["detail"]


# --- crashes and restarts ----------------------------------------------------------------


def test_run_killed_midway_shows_failed(serve: Callable[..., Server]) -> None:
    server = serve()
    run_id = server.start("sleepy")
    record = server.wait_for(run_id, lambda r: r["status"] == "running" and bool(r.get("pid")))

    os.kill(record["pid"], signal.SIGKILL)

    record = server.wait_done(run_id, timeout=15)
    assert record["status"] == "failed"
    assert "interrupted" in record.get("message", "")


def test_queued_runs_of_a_dead_server_fail_with_server_stopped(serve: Callable[..., Server]) -> None:
    first = serve("--max-parallel", "1")
    running = first.start("slow")
    queued = [first.start("demo"), first.start("demo")]
    first.wait_for(running, lambda r: r["status"] == "running")

    first.kill(signal.SIGKILL)  # no chance to clean up its queue
    second = serve()

    for run_id in queued:
        record = second.status(run_id)
        assert record["status"] == "failed"
        assert record["message"] == "server stopped"
    # the run that had started is its own process: it finishes on its own
    assert second.wait_done(running, timeout=30)["status"] == "completed"


# --- robustness --------------------------------------------------------------------------


def test_openapi_schema_fuzzing_finds_no_server_error(serve: Callable[..., Server]) -> None:
    # The schema comes from the live server. schemathesis.pytest.from_fixture would be the
    # usual way, but it reads Item._nodeid, which pytest 9 removed; so Hypothesis drives
    # each operation's strategy here. Bounded (25 examples an operation) to stay quick;
    # the only check is "no 5xx": bad input must be a 4xx with a message, never a crash.
    server = serve()
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    # .ok() raises on an operation the schema defines badly: that fails the test too
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.label for op in operations} >= {
        "POST /start",
        "GET /status/{run_id}",
        "GET /runs",
        "GET /runs/{run_id}/logs/{step}",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        fuzz()


def test_200_concurrent_status_requests_while_two_runs_execute(serve: Callable[..., Server]) -> None:
    server = serve()
    run_ids = [server.start("slow"), server.start("slow")]
    for run_id in run_ids:
        server.wait_for(run_id, lambda r: r["status"] == "running")

    async def hammer() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.base, timeout=30, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.get(f"/status/{run_ids[i % 2]}") for i in range(200)), return_exceptions=True
            )
        return [r.status_code if isinstance(r, httpx.Response) else -1 for r in responses]

    codes = asyncio.run(asyncio.wait_for(hammer(), timeout=60))

    assert codes == [200] * 200
    assert [server.wait_done(r, timeout=60)["status"] for r in run_ids] == ["completed", "completed"]


def test_import_orchestrate_does_not_import_the_server_extra() -> None:
    code = (
        "import sys, orchestrate; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', 'pydantic')))"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_without_the_extra_says_how_to_install_it(api_root: Path) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
        "import orchestrate; sys.exit(orchestrate.main(['--root', sys.argv[1], 'serve']))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code, str(api_root)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 3, result.stderr
    assert "pipx install 'orchestrate-cli[server]'" in result.stderr
    assert "pipx inject orchestrate-cli fastapi uvicorn" in result.stderr
    assert "Traceback" not in result.stderr


# --- issue 12: the server runs only what its caller is allowed to run ---------------------


def _host(server: Server, host: str | None = None) -> str:
    return host if host is not None else f"{LOOPBACK}:{server.port}"


@pytest.mark.parametrize(
    ("host", "origin", "status", "detail"),
    [
        (
            "evil.example:{port}",
            None,
            403,
            "Host 'evil.example:{port}' is not this server: use http://127.0.0.1:{port}, or start it with "
            "--allowed-host NAME for a name a proxy or DNS gives it",
        ),
        ("127.0.0.1:1", None, 403, "Host '127.0.0.1:1' is not this server"),
        ("127.0.0.1", None, 403, "Host '127.0.0.1' is not this server"),  # port 80
        ("", None, 403, "Host '' is not this server"),
        (
            "127.0.0.1:{port}",
            "http://evil.example",
            403,
            "cross-origin request refused: Origin 'http://evil.example' is not this server's origin",
        ),
        ("127.0.0.1:{port}", "null", 403, "cross-origin request refused: Origin 'null'"),
        ("127.0.0.1:{port}", "http://127.0.0.1:1", 403, "cross-origin request refused"),
        ("127.0.0.1:{port}", "https://127.0.0.1:{port}", 200, None),  # same host and port
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}", 200, None),
        ("localhost:{port}", None, 200, None),
        ("LOCALHOST:{port}", "http://localhost:{port}", 200, None),
        ("[::1]:{port}", None, 200, None),
    ],
)
def test_host_and_origin_are_checked(
    shared_server: Server, host: str, origin: str | None, status: int, detail: str | None
) -> None:
    port = shared_server.port
    headers = {"Host": host.format(port=port)}
    if origin is not None:
        headers["Origin"] = origin.format(port=port)
    for method, url in (("GET", "/workflows"), ("POST", "/start?name=nope")):
        response = shared_server.client.request(method, url, headers=headers)
        if status == 200:
            assert response.status_code == (200 if method == "GET" else 404), response.text
        else:
            assert response.status_code == status, response.text
            assert response.json()["detail"].startswith(detail.format(port=port))  # type: ignore[union-attr]
            assert response.headers["connection"] == "close"


def test_allowed_host_for_a_reverse_proxy(serve: Callable[..., Server]) -> None:
    server = serve("--allowed-host", "orchestrate.example.com", "--allowed-host", "ci.example.com:8443")
    ok = [
        {"Host": "orchestrate.example.com"},
        {"Host": "orchestrate.example.com:443"},
        {"Host": "orchestrate.example.com", "Origin": "https://orchestrate.example.com"},
        {"Host": "ci.example.com:8443"},
    ]
    refused = [
        {"Host": "ci.example.com"},
        {"Host": "ci.example.com:443"},
        {"Host": "example.com"},
        {"Host": "orchestrate.example.com", "Origin": "https://evil.example"},
    ]
    for headers in ok:
        assert server.client.get("/workflows", headers=headers).status_code == 200, headers
    for headers in refused:
        assert server.client.get("/workflows", headers=headers).status_code == 403, headers


def test_vars_may_set_only_names_the_workflow_uses(shared_server: Server) -> None:
    attack = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor", "GIT_CONFIG_VALUE_0": "touch /tmp/x"}

    response = shared_server.client.post("/start", params={"name": "demo"}, json={"vars": attack})

    assert response.status_code == 422
    assert response.json()["detail"] == (
        "vars key 'GIT_CONFIG_COUNT': workflow demo does not use ${GIT_CONFIG_COUNT}; accepted: GREETING"
    )
    assert shared_server.client.get("/runs").json() == []


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def test_http_vars_reach_interpolation_only_never_git_or_the_environment(
    serve: Callable[..., Server], api_root: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "fsmonitor-ran"
    # a workflow that names the variables (so they are accepted) and puts one into a step's PATH
    (api_root / "workflows" / "names.json").write_text(
        json.dumps(
            {
                "steps": [
                    {
                        "name": "show",
                        "type": "command",
                        "env": {"SHOWN": "${GIT_CONFIG_VALUE_0:-}"},  # a name the workflow maps into its env itself
                        "run": 'echo key=${GIT_CONFIG_KEY_0:-} count=${GIT_CONFIG_COUNT:-}; echo "shown=$SHOWN"; '
                        "echo env=$(env | grep -c '^GIT_CONFIG\\|^LD_PRELOAD') ${LD_PRELOAD:-}",
                    }
                ]
            }
        )
    )
    (api_root / "workflows" / "path.json").write_text(
        json.dumps(
            {"steps": [{"name": "s", "type": "command", "run": "true", "env": {"PATH": "${TOOLS}:/usr/bin:/bin"}}]}
        )
    )
    (api_root / ".gitignore").write_text("runs/\nserver-*.log\n")
    _git(api_root, "init", "-q")
    _git(api_root, "add", "-A")
    _git(api_root, "commit", "-qm", "init")
    server = serve()
    attack = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.fsmonitor",
        "GIT_CONFIG_VALUE_0": f"touch {marker}; false",
        "LD_PRELOAD": "/nonexistent.so",
    }

    run_id = server.start("names", {"vars": attack})
    record = server.wait_done(run_id)
    refused = server.client.post("/start", params={"name": "path"}, json={"vars": {"TOOLS": "/tmp/evil"}})

    assert record["status"] == "completed", record
    log = server.client.get(f"/runs/{run_id}/logs/show").text
    # values for ${NAME}, never environment variables of the step
    assert log == f"key=core.fsmonitor count=1\nshown=touch {marker}; false\nenv=0 /nonexistent.so\n"
    assert record["trigger"]["git"]["commit"]  # orchestrate's own git status did run...
    assert not marker.exists()  # ...without the caller's config
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "vars key 'TOOLS': workflows/path.json: steps[0] \"s\" puts ${TOOLS} into PATH, which a caller "
        "of the HTTP API may not set (LD_*, PYTHON*, PATH, GIT_* and the like)"
    )


def test_definition_error_422_names_the_variable_not_the_secret(serve: Callable[..., Server], api_root: Path) -> None:
    secret = "tok-2b7e151628aed2a6"
    (api_root / "workflows" / "note.json").write_text(
        json.dumps(
            {
                "steps": [
                    {
                        "name": "note",
                        "type": "jira",
                        "jira_url": "https://jira.example.com/rest/api/2",
                        "issue": "${JIRA_TOKEN}",
                        "token": "${JIRA_TOKEN}",
                        "comment": "x",
                    }
                ]
            }
        )
    )
    server = serve()

    response = server.client.post("/start", params={"name": "note"}, json={"vars": {"JIRA_TOKEN": secret}})

    assert response.status_code == 422
    assert secret not in response.text and "${JIRA_TOKEN}" in response.json()["detail"]


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def test_bodies_are_bounded_and_deep_nesting_is_400(shared_server: Server) -> None:
    port = shared_server.port
    head = (f"POST /start?name=demo HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n").encode()
    # a declared length over 1 MiB: refused before a byte of it is read
    sock = _raw(port, head + b"Content-Length: 104857600\r\n\r\n")
    reply = _read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b'{"detail": "request body over 1024 KiB: this API takes small JSON bodies"}' in reply
    # a chunked body that never says its length: counted as it arrives
    too_big = shared_server.client.post(
        "/start",
        params={"name": "demo"},
        headers={"Content-Type": "application/json"},
        content=iter([b"[" + b" " * 65536] * 20),
    )
    assert too_big.status_code == 413
    deep = shared_server.client.post(
        "/start",
        params={"name": "demo"},
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert deep.status_code == 400
    assert deep.json()["detail"] == "body: JSON is nested more than 64 levels deep"
    nested = shared_server.client.post(
        "/start", params={"name": "demo"}, json={"vars": {"A": "x"}, "only": [[[[]]]] * 1, "x": [[1]] * 3}
    )
    assert nested.status_code == 422
    deeper = shared_server.client.post(
        "/start", params={"name": "demo"}, content=b"[" * 70 + b"]" * 70, headers={"Content-Type": "application/json"}
    )
    assert deeper.status_code == 400 and "nested more than 64 levels deep" in deeper.json()["detail"]
    assert shared_server.client.get("/healthz").json() == {"status": "ok"}


def test_incomplete_requests_are_closed_after_a_bounded_time(shared_server: Server) -> None:
    port = shared_server.port
    started = time.monotonic()
    silent = _raw(port, b"")
    half_head = _raw(port, f"GET /workflows HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n".encode())
    half_body = _raw(
        port,
        (
            f"POST /start?name=demo HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"vars"'
        ).encode(),
    )
    replies = [_read_all(sock) for sock in (silent, half_head, half_body)]
    waited = time.monotonic() - started
    for sock in (silent, half_head, half_body):
        sock.close()
    # each connection was closed by the server (recv returned end of file, not our timeout)
    assert replies[0] == b"" and replies[1] == b""
    assert replies[2].startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 10 s" in replies[2]
    assert waited < 29  # closed by the server's bound (10 s), not by this test's 30 s timeout
    assert shared_server.client.get("/healthz").status_code == 200


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def test_four_concurrent_100MB_unauthenticated_bodies_keep_the_server_small(serve: Callable[..., Server]) -> None:
    """The measurement the issue asks for: the server's own peak RSS (VmHWM of the real process)."""
    import threading

    server = serve(env={"ORCHESTRATE_API_TOKEN": TOKEN})
    port = server.port
    before = _peak_rss_mib(server.proc.pid)
    results: list[bytes] = []
    chunk = b" " * (1024 * 1024)

    def send(chunked: bool) -> None:
        head = f"POST /start?name=demo HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n" + (
            "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: 104857600\r\n\r\n"
        )
        sock = _raw(port, head.encode())
        sent = 0
        try:
            while sent < 100 * 1024 * 1024:
                sock.sendall(b"100000\r\n" + chunk + b"\r\n" if chunked else chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered 413 and closed the connection: nothing more is read
        results.append(_read_all(sock))
        sock.close()

    threads = [threading.Thread(target=send, args=(n % 2 == 0,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = _peak_rss_mib(server.proc.pid)

    assert not any(thread.is_alive() for thread in threads)
    assert peak < 100, f"server peak RSS {peak:.0f} MiB (before the requests: {before:.0f} MiB)"
    assert all(reply == b"" or reply.startswith(b"HTTP/1.1 413 ") for reply in results), results
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).json() == []


def test_queue_limit_holds_under_concurrent_starts(serve: Callable[..., Server]) -> None:
    server = serve("--max-parallel", "1", "--max-queued", "5")
    first = server.start("sleepy")
    server.wait_for(first, lambda r: r["status"] == "running")

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.post("/start", params={"name": "demo"}) for _ in range(60)))
        return [r.status_code for r in responses]

    codes = asyncio.run(burst())

    assert sorted(codes) == [202] * 5 + [429] * 55
    assert len(server.client.get("/runs", params={"status": "pending"}).json()) == 5
    assert server.client.post("/start", params={"name": "demo"}).json() == {
        "detail": "5 runs already wait; try again when some have started"
    }


def test_dispatcher_survives_a_store_error(serve: Callable[..., Server], api_root: Path) -> None:
    (api_root / "workflows" / "victim.json").write_text(json.dumps(WORKFLOWS["demo"] | {"name": "victim"}))
    server = serve("--max-parallel", "1")
    busy = server.start("slow")
    server.wait_for(busy, lambda r: r["status"] == "running")
    victim = server.start("victim")
    # the victim's child exits before adopting its record (its workflow is gone), and the
    # server's write that would fail it hits a folder where its temporary file goes
    (api_root / "workflows" / "victim.json").unlink()
    # write_atomic's temporary name carries the writing thread's id: block every thread's
    blockers = [
        api_root / "runs" / f".{victim}.json.{server.proc.pid}.{task}.tmp"
        for task in os.listdir(f"/proc/{server.proc.pid}/task")
    ]
    for blocker in blockers:
        blocker.mkdir()
    assert server.wait_done(busy, timeout=60)["status"] == "completed"

    later = server.start("demo")  # the dispatcher still starts runs

    assert server.wait_done(later, timeout=60)["status"] == "completed"
    deadline = time.monotonic() + 10
    while f"orchestrate serve: error: run {victim}" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (
        f"orchestrate serve: error: run {victim}: cannot record how it ended: cannot write "
        f"{api_root / 'runs' / victim}.json: File exists (the previous record is intact)\n"
    ) in server.output()
    for blocker in blockers:
        blocker.rmdir()


def test_docs_need_the_token_too_as_the_readme_says(serve: Callable[..., Server]) -> None:
    readme = (REPO / "README.md").read_text()
    assert "`/docs` and `/openapi.json` need the token too" in readme
    server = serve(env={"ORCHESTRATE_API_TOKEN": TOKEN})
    for path in ("/docs", "/openapi.json"):
        assert server.client.get(path).status_code == 401
        assert server.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize(
    ("given", "address", "url_host"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("::1", "::1", "[::1]"),
        ("[::1]", "::1", "[::1]"),
        ("localhost", "localhost", "localhost"),
        (" 0.0.0.0 ", "0.0.0.0", "0.0.0.0"),
    ],
)
def test_bind_host_spellings(given: str, address: str, url_host: str) -> None:
    assert orchestrate.parse_bind_host(given) == orchestrate.BindAddress(address, url_host)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--host", "[::1"],
            2,
            "orchestrate: error: --host '[::1': expected an IP address (127.0.0.1, ::1 or [::1]) or a host name\n",
        ),
        (["--host", "[localhost]"], 2, "orchestrate: error: --host '[localhost]': expected an IP address"),
        (["--allowed-host", "a:b:c"], 2, "orchestrate: error: --allowed-host 'a:b:c': expected NAME or NAME:PORT"),
    ],
)
def test_bad_host_options_are_refused_at_once(api_root: Path, args: list[str], code: int, message: str) -> None:
    result = subprocess.run(
        [*ORCHESTRATE, "--root", str(api_root), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=checkout_env(),
        check=False,
    )
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert result.stdout == ""


def test_a_port_in_use_is_refused_at_once(api_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*ORCHESTRATE, "--root", str(api_root), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=checkout_env(),
            check=False,
        )
    assert result.returncode == 3
    assert result.stderr == (
        f"orchestrate: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another server running? pick another --port)\n"
    )


def test_the_endpoints_work_is_callable_without_a_server(tmp_path: Path) -> None:
    """The endpoints are thin: what they do is in top-level functions tests can call."""
    root = tmp_path / "p"
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "demo.json").write_text(
        json.dumps({"description": "d", "steps": [{"name": "hello", "type": "command", "run": "true"}]})
    )
    store = orchestrate.RunStore(root / "runs")
    assert orchestrate.api_workflows(root / "workflows", root) == [
        {"name": "demo", "path": "workflows/demo.json", "description": "d"}
    ]
    with pytest.raises(orchestrate.ApiError) as bad:
        orchestrate.api_record(store, "../x")
    assert bad.value.status == 400
    with pytest.raises(orchestrate.ApiError) as missing:
        orchestrate.api_record(store, "20261127T154000000Z-aaaaaa")
    assert missing.value.status == 404 and str(missing.value) == "unknown run '20261127T154000000Z-aaaaaa'"
    with pytest.raises(orchestrate.ApiError) as name:
        orchestrate.api_runs(store, "../etc", None, 20)
    assert name.value.status == 400


# --- POST /runs/{run_id}/resume (issue 17) -----------------------------------------------------


def test_resume_a_failed_run_over_http(serve: Callable[..., Server], api_root: Path) -> None:
    flag = api_root / "fixed"
    (api_root / "workflows" / "flaky.json").write_text(
        json.dumps(
            {
                "steps": [
                    {"name": "first", "type": "command", "run": "echo first"},
                    {"name": "second", "type": "command", "run": f"test -e {flag} && echo second ${{GREETING:-}}"},
                ]
            }
        )
    )
    server = serve()
    failed = server.start("flaky")
    assert server.wait_done(failed)["status"] == "failed"
    flag.write_text("")
    response = server.client.post(f"/runs/{failed}/resume", json={"vars": {"GREETING": "again"}})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    record = server.wait_done(run_id)
    assert record["status"] == "completed" and record["resumed_from"] == failed
    assert record["trigger"]["source"] == "http" and record["trigger"]["vars"] == ["GREETING"]
    entries = {e["step"]: e for e in record["log"]}
    # not a git repository: orchestrate cannot tell whether files changed, so `first` runs again
    assert entries["first"]["rerun_reason"] == (
        "not in a git repository: orchestrate cannot tell whether its files changed"
    )
    assert entries["second"]["rerun_reason"] == f"failed in run {failed}"
    assert "second again" in server.client.get(f"/runs/{run_id}/logs/second").text
    # what cannot be resumed, with the same one line as the CLI
    again = server.client.post(f"/runs/{run_id}/resume")
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"run {run_id} did not fail (status completed): nothing to resume; start a new run with: orchestrate run flaky"
    )
    assert server.client.post("/runs/20991231T000000000Z-abcdef/resume").status_code == 404
    assert server.client.post("/runs/..%2Fx/resume").status_code in (400, 404)
    bad = server.client.post(f"/runs/{failed}/resume", json={"vars": {"NOPE": "x"}})
    assert bad.status_code == 422 and "does not use ${NOPE}" in bad.json()["detail"]
    # the checks every route has: another origin, a body that is not JSON
    foreign = server.client.post(f"/runs/{failed}/resume", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    form = server.client.post(
        f"/runs/{failed}/resume", content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
