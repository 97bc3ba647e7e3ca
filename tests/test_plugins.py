"""Plugins: integrations/<type>_runner.py and entry points, run in a child interpreter."""

from __future__ import annotations

import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, Project


@pytest.fixture
def http_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()
            self.wfile.write(b"hi")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shipped_example_plugin_waits_for_http(project: Project, http_server: str) -> None:
    shutil.copytree(REPO / "integrations", project.root / "integrations")
    project.workflow(
        "w",
        [
            {"name": "server up", "type": "wait_for_http", "url": f"{http_server}/ok", "within": 5},
            {
                "name": "server down",
                "type": "wait_for_http",
                "url": f"{http_server}/down",
                "within": 0.5,
                "interval": 0.1,
            },
        ],
    )
    result = project.cli("run", "w", "--keep-going")
    assert result.exit_code == 1
    log = project.last_record()["log"]
    assert log[0]["status"] == "passed"
    assert f"{http_server}/ok answered 200 after 1 attempt(s)" in log[0]["output_tail"]
    assert log[1]["status"] == "failed"
    assert log[1]["message"] == (
        f"integrations/wait_for_http_runner.py: RuntimeError: {http_server}/down did not "
        f"answer 200 within 0.5s (last: HTTP 503)"
    )


def test_plugin_gets_interpolated_step_dict(project: Project) -> None:
    project.write(
        "integrations/echo_runner.py", "import json\ndef execute(step):\n    print(json.dumps(step, sort_keys=True))\n"
    )
    project.workflow("w", [{"name": "e", "type": "echo", "greeting": "${WHO:-world}", "retries": 0}])
    result = project.cli("run", "w")
    assert result.exit_code == 0, result.stdout
    assert '{"greeting": "world", "name": "e", "retries": 0, "type": "echo"}' in result.stdout


@pytest.mark.parametrize(
    "source,message",
    [
        (
            "def execute(step):\n    raise ValueError('bad config')\n",
            "integrations/broken_runner.py: ValueError: bad config",
        ),
        (
            "import not_a_module_xyz\n",
            "integrations/broken_runner.py: cannot load plugin: ModuleNotFoundError: No module named 'not_a_module_xyz'",
        ),
        ("x = 1\n", "integrations/broken_runner.py: has no execute(step) function"),
        (
            "def execute(step):\n    import os\n    os._exit(9)\n",
            "integrations/broken_runner.py: plugin process ended without a result (exit code 9)",
        ),
    ],
)
def test_plugin_failures_name_the_plugin(project: Project, source: str, message: str) -> None:
    project.write("integrations/broken_runner.py", source)
    project.workflow("w", [{"name": "b", "type": "broken"}])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    assert project.last_record()["log"][0]["message"] == message
    assert "Traceback" not in result.stderr


def test_plugin_timeout_ends_it(project: Project) -> None:
    project.write("integrations/slow_runner.py", "import time\ndef execute(step):\n    time.sleep(60)\n")
    project.workflow("w", [{"name": "s", "type": "slow", "timeout": 0.5}])
    result = project.cli("run", "w")
    assert result.exit_code == 1
    assert project.last_record()["log"][0]["message"] == "timed out after 0.5 s"


def test_entry_point_plugins_are_found(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    site = tmp_path / "site"
    (site / "myplugin").mkdir(parents=True)
    (site / "myplugin" / "__init__.py").write_text("def execute(step):\n    print('from entry point', step['name'])\n")
    dist = site / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[orchestrate.runners]\nmine = myplugin\n")
    project.workflow("w", [{"name": "ep", "type": "mine"}])
    # a real process, as after `pipx inject`: the plugin's package is on its path
    result = project.run("run", "w", env={"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from entry point ep" in result.stdout


def test_a_huge_step_reaches_the_plugin_without_the_environment(project: Project) -> None:
    """0.1.0 put the step dict in ORCHESTRATE_PLUGIN_STEP: one variable over 128 KiB made exec
    fail (E2BIG), and every process of the step could read the step's values there."""
    project.write(
        "integrations/big_runner.py",
        "import os, sys\n"
        "def execute(step):\n"
        "    leaked = [k for k in os.environ if k.startswith('ORCHESTRATE_PLUGIN')]\n"
        "    return f\"{len(step['payload'])} {step['payload'][-3:]} env={leaked} stdin={sys.stdin.read()!r}\"\n",
    )
    payload = "é" * 300_000 + "end"
    project.workflow("w", [{"name": "big", "type": "big", "payload": payload}])
    result = project.run("run", "w")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.last_record()["log"][0]["message"] == "300003 end env=[] stdin=''"
