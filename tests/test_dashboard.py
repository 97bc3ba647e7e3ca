"""The dashboard of `orchestrate serve` over HTTP: pages, their security headers, the parts
the pages fetch, token mode. A real `orchestrate serve` on 127.0.0.1 (nothing else is ever
contacted); what a browser makes of the pages is tests/test_browser.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CI_VARIABLES, REPO

_SCRIPT = Path(sys.executable).with_name("orchestrate")
ORCHESTRATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestrate"]
TOKEN = "dash-board-token-0123456789"
XSS_NAME = "<img src=x onerror=window.__xss=1>"


class Dash:
    """A running `orchestrate serve` and plain HTTP requests to it."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log_path = root / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and k != "ORCHESTRATE_API_TOKEN"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if token:
            env["ORCHESTRATE_API_TOKEN"] = token
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*ORCHESTRATE, "--root", str(root), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.base + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()

    def post_json(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_done(self, run_id: str, token: str | None = None, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, _, text = self.get(f"/status/{run_id}", token)
            record = json.loads(text)
            if status == 200 and record["status"] in ("completed", "failed"):
                return dict(record)
            assert time.monotonic() < deadline, record
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def write_workflows(root: Path) -> None:
    (root / "workflows").mkdir(parents=True, exist_ok=True)
    workflows = {
        "demo": {"steps": [{"name": "hello", "type": "command", "run": "printf '\\033[32mhello\\033[0m\\n'"}]},
        "xss": {
            "steps": [
                {"name": XSS_NAME, "type": "command", "run": "echo '</script><script>window.__xss=1</script>'; exit 1"}
            ]
        },
    }
    for name, workflow in workflows.items():
        (root / "workflows" / f"{name}.json").write_text(json.dumps(workflow))


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Any]:
    servers: list[Dash] = []

    def start(token: str | None = None) -> Dash:
        write_workflows(tmp_path)
        server = Dash(tmp_path, token)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


CSP_RE = re.compile(
    r"^default-src 'none'; script-src 'nonce-([A-Za-z0-9+/=]+)'; style-src 'nonce-\1'; "
    r"img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    r"frame-ancestors 'none'$"
)


def test_pages_send_a_csp_with_a_fresh_nonce_for_their_own_script_only(dash: Any) -> None:
    server = dash()
    nonces = []
    for path in ("/", "/"):
        status, headers, html = server.get(path)
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        match = CSP_RE.match(headers["content-security-policy"])
        assert match, headers["content-security-policy"]
        nonce = match.group(1)
        nonces.append(nonce)
        # the page's one script and one style carry the nonce; nothing is loaded from elsewhere
        assert re.findall(r"<script[^>]*>", html) == [f'<script nonce="{nonce}">']
        assert re.findall(r"<style[^>]*>", html) == [f'<style nonce="{nonce}">']
        assert not re.search(r"""(src|href|action)=["']?(https?:)?//""", html)
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
    assert nonces[0] != nonces[1]


def test_dashboard_lists_runs_like_get_runs_with_filters(dash: Any) -> None:
    server = dash()
    ids = []
    for name in ("demo", "xss", "demo"):
        status, body = server.post_json(f"/start?name={name}", {})
        assert status == 202, body
        ids.append(body["run_id"])
        server.wait_done(body["run_id"])
    _, _, html = server.get("/")
    listed = re.findall(r'<tr class="(\w+)" data-run-id="([^"]+)">', html)
    assert listed == [("completed", ids[2]), ("failed", ids[1]), ("completed", ids[0])]
    api = json.loads(server.get("/runs")[2])
    assert [r["run_id"] for r in api] == [i for _, i in listed]
    _, _, html = server.get("/?workflow=demo&status=completed")
    assert re.findall(r'data-run-id="([^"]+)"', html) == [ids[2], ids[0]]
    assert '<option value="demo" selected>demo</option>' in html
    assert '<option value="completed" selected>completed</option>' in html
    _, _, html = server.get("/?status=failed")
    assert re.findall(r'data-run-id="([^"]+)"', html) == [ids[1]]
    # the step name that tries to be markup is text in the list, as everywhere
    assert "failed: &lt;img src=x onerror=window.__xss=1&gt;" in html
    assert "<img src=x" not in html
    status, _, html = server.get("/?status=bogus")
    assert status == 400
    assert (
        '<p class="problem">status &#x27;bogus&#x27;: expected one of pending, running, failed, completed</p>' in html
    )


def test_run_page_holds_the_report_and_links_logs_through_the_api(dash: Any) -> None:
    server = dash()
    _, body = server.post_json("/start?name=xss", {})
    run_id = body["run_id"]
    server.wait_done(run_id)
    status, headers, html = server.get(f"/ui/runs/{run_id}")
    assert status == 200
    assert CSP_RE.match(headers["content-security-policy"])
    assert f'data-run-id="{run_id}"' in html
    assert '<td class="status failed">✗ failed</td>' in html
    assert '<pre id="tail-0">&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;</pre>' in html
    assert f'<a class="full-log" href="/runs/{run_id}/logs/1">full log</a>' in html
    assert server.get(f"/runs/{run_id}/logs/1")[2] == "</script><script>window.__xss=1</script>\n"
    assert html.count("<script") == 1
    part = server.get(f"/ui/parts/runs/{run_id}")
    assert part[0] == 200 and part[2] in html
    assert server.get("/ui/runs/20261127T154000123Z-abcdef")[0] == 404
    status, _, html = server.get("/ui/runs/bad%20id")
    assert status == 400
    assert "&#x27;bad id&#x27; is not a run id" in html


def test_token_mode_pages_hold_no_data_and_parts_need_the_token(dash: Any) -> None:
    server = dash(TOKEN)
    status, body = server.post_json("/start?name=xss", {}, TOKEN)
    assert status == 202
    run_id = body["run_id"]
    server.wait_done(run_id, TOKEN)
    for path in ("/", f"/ui/runs/{run_id}"):
        status, _, html = server.get(path)
        assert status == 200
        assert 'data-token="required"' in html
        assert "window.__xss" not in html and "xss" not in html.split("<script")[0].split("</nav>")[1]
        assert "This server needs its API token" in html  # the <noscript> line
    for path in ("/ui/parts/runs", f"/ui/parts/runs/{run_id}"):
        status, _, text = server.get(path)
        assert status == 401
        assert json.loads(text) == {"detail": "missing or wrong bearer token (ORCHESTRATE_API_TOKEN)"}
        status, _, text = server.get(path, TOKEN)
        assert status == 200
        assert run_id in text
    assert TOKEN not in server.output()
