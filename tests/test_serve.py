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
from conftest import CI_VARIABLES
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

# the installed console script, as a user runs it (python -m orchestrate where there is none)
_SCRIPT = Path(sys.executable).with_name("orchestrate")
ORCHESTRATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestrate"]
LOOPBACK = "127.0.0.1"
TOKEN = "s3cret-token-for-tests"

WORKFLOWS: dict[str, dict[str, Any]] = {
    "demo": {"name": "demo", "description": "two quick steps", "steps": [
        {"name": "hello", "type": "command", "run": ["python3", "-c", "print('hello from demo')"]},
        {"name": "second", "type": "command", "run": "echo second step ${GREETING:-}"},
    ]},
    "broken": {"name": "broken", "steps": [
        {"name": "boom", "type": "command", "run": "echo about to fail; exit 3"},
        {"name": "never", "type": "command", "run": "echo never"},
    ]},
    "slow": {"name": "slow", "steps": [
        {"name": "tick", "type": "command",
         "run": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done"},
    ]},
    "sleepy": {"name": "sleepy", "steps": [
        {"name": "nap", "type": "command", "run": ["sleep", "8"]},
    ]},
}


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
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*ORCHESTRATE, "--root", str(root), "serve", "--host", LOOPBACK, "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
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
    cli = subprocess.run([*ORCHESTRATE, "--root", str(api_root), "status", run_id, "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
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
    server.wait_for(run_id, lambda r: any(e.get("step") == "tick" for e in r.get("log") or [])
                    or r.get("current") == "tick")
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
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATE_API_TOKEN"}
    # refused before anything is bound: nothing listens on 0.0.0.0 in this test
    result = subprocess.run([*ORCHESTRATE, "--root", str(api_root), "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 2
    assert "ORCHESTRATE_API_TOKEN" in result.stderr and "127.0.0.1" in result.stderr
    assert result.stdout == ""


UNKNOWN_RUN = "20000101T000000000Z-abcdef"


@pytest.mark.parametrize(("method", "url", "status", "message"), [
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
])
def test_bad_names_and_ids_are_client_errors(
        shared_server: Server, method: str, url: str, status: int, message: str) -> None:
    response = shared_server.client.request(method, url)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in json.dumps(response.json())


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"only": ["helo"]}, 422, "--only 'helo': no such step in demo (did you mean 'hello'?)"),
    ({"skip": ["x"]}, 422, "--skip 'x': no such step in demo"),
    ({"vars": {"A": "x\u0000y"}}, 422, "NUL"),
    ({"vars": {"A=B": "x"}}, 422, "vars key 'A=B': expected a variable name"),
    ({"vars": {"A": 1}}, 422, "vars.A"),
    ({"unexpected": 1}, 422, "unexpected"),
    ([1, 2], 422, "body: Input should be a valid dictionary"),
])
def test_bad_start_bodies_are_client_errors(shared_server: Server, body: Any, status: int, message: str) -> None:
    response = shared_server.client.post("/start", params={"name": "demo"}, json=body)

    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert shared_server.client.get("/runs").json() == []  # nothing was queued


def test_start_body_without_a_json_content_type_is_still_read(shared_server: Server) -> None:
    # what `curl -X POST URL -d '{"only": ["x"]}'` sends: application/x-www-form-urlencoded
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    response = shared_server.client.post("/start", params={"name": "demo"}, content=b'{"only": ["x"]}',
                                         headers=headers)
    not_json = shared_server.client.post("/start", params={"name": "demo"}, content=b"only=x", headers=headers)

    assert response.status_code == 422 and "--only 'x': no such step in demo" in response.json()["detail"]
    assert not_json.status_code == 422 and "body: expected JSON" in not_json.json()["detail"]


def test_definition_error_is_422_with_the_message(serve: Callable[..., Server], api_root: Path) -> None:
    (api_root / "workflows" / "typo.json").write_text(json.dumps(
        {"name": "typo", "steps": [{"name": "x", "type": "command", "rnu": "true"}]}))
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
    assert {op.label for op in operations} >= {"POST /start", "GET /status/{run_id}", "GET /runs",
                                               "GET /runs/{run_id}/logs/{step}"}
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
                *(client.get(f"/status/{run_ids[i % 2]}") for i in range(200)), return_exceptions=True)
        return [r.status_code if isinstance(r, httpx.Response) else -1 for r in responses]

    codes = asyncio.run(asyncio.wait_for(hammer(), timeout=60))

    assert codes == [200] * 200
    assert [server.wait_done(r, timeout=60)["status"] for r in run_ids] == ["completed", "completed"]


def test_import_orchestrate_does_not_import_the_server_extra() -> None:
    code = ("import sys, orchestrate; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', 'pydantic')))")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_without_the_extra_says_how_to_install_it(api_root: Path) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
            "import orchestrate; sys.exit(orchestrate.main(['--root', sys.argv[1], 'serve']))")

    result = subprocess.run([sys.executable, "-c", code, str(api_root)], capture_output=True, text=True,
                            timeout=60, check=False)

    assert result.returncode == 3, result.stderr
    assert "pipx install 'orchestrate-cli[server]'" in result.stderr
    assert "pipx inject orchestrate-cli fastapi uvicorn" in result.stderr
    assert "Traceback" not in result.stderr
