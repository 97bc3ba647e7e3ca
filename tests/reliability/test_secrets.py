"""Guarantee 6 — secrets: a token set through ${JIRA_TOKEN} and printed by steps in plain, split
across two writes, inside a URL, in a plugin's exception, never appears in any file under
runs/, in JUnit, or in orchestrate's stdout/stderr. Files under runs/ are not world-writable
(even with umask 000) and run records do not store the environment."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import quote

from _rel import PY, clean_env, orchestrate_argv

TOKEN = "tok-9f8e7d6c5b4a/+=@:x"  # with URL-special characters: its URL-encoded form must go too
PLUGIN = '''
import sys
def execute(step):
    print("plugin got token", step["token"], flush=True)
    sys.stderr.write("to stderr: " + step["token"] + "\\n")
    raise RuntimeError("jira refused " + step["token"])
'''
SPLIT = ("import sys, time, os\nt = os.environ['JIRA_TOKEN']\n"
         "sys.stdout.write('split: ' + t[:7]); sys.stdout.flush(); time.sleep(0.3)\n"
         "sys.stdout.write(t[7:] + ' end\\n'); sys.stdout.flush()\n"
         "sys.stderr.write('err ' + t[:3]); sys.stderr.flush(); time.sleep(0.2); sys.stderr.write(t[3:] + '\\n')\n"
         "sys.stdout.buffer.write(('byte by byte: ').encode()); sys.stdout.flush()\n"
         "[sys.stdout.write(c) or sys.stdout.flush() or time.sleep(0.005) for c in t]\n")


def _project(root: Path) -> None:
    (root / "workflows").mkdir(parents=True)
    (root / "integrations").mkdir()
    (root / "integrations" / "notify_runner.py").write_text(PLUGIN)
    steps = [
        {"name": "plain", "type": "command", "run": 'echo "plain: $JIRA_TOKEN"; echo "url: https://user:${JIRA_TOKEN}@host/x"'},
        {"name": "argv", "type": "command", "run": ["echo", "argv ${JIRA_TOKEN} https://user:${JIRA_TOKEN}@h"]},
        {"name": "encoded", "type": "command", "run": ["echo", "encoded https://user:" + quote(TOKEN, safe="") + "@h"]},
        {"name": "split", "type": "command", "run": [PY, "-c", SPLIT]},
        {"name": "fails", "type": "command", "run": 'echo "about to fail with $JIRA_TOKEN"; exit 1',
         "continue_on_error": True, "env": {"STEP_ENV_CANARY": "step-env-canary-42"}},
        {"name": "notify", "type": "notify", "token": "${JIRA_TOKEN}", "issue": "PROJ-1", "continue_on_error": True},
    ]
    (root / "workflows" / "w.json").write_text(json.dumps(
        {"secrets": ["JIRA_TOKEN"], "env": {"WORKFLOW_ENV": "x"}, "steps": steps}))


def _forms() -> list[bytes]:
    return [TOKEN.encode(), quote(TOKEN, safe="").encode(), TOKEN[:12].encode()]


def _assert_clean(label: str, data: bytes) -> None:
    for form in _forms():
        assert form not in data, f"the token ({form!r}) leaked into {label}"


def test_token_never_leaks_and_runs_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _project(root)
    env = clean_env(JIRA_TOKEN=TOKEN, ORCH_ENV_CANARY="env-canary-1234567")
    outputs = {}
    umask = ["sh", "-c", 'umask 000; exec "$@"', "sh"]  # the worst umask: nothing may rely on it
    for args in (("run", "w"), ("run", "w", "--json", "--debug"), ("run", "w", "--dry-run"),
                 ("run", "w", "--quiet", "--junit-xml", str(root / "ci" / "junit.xml"))):
        done = subprocess.run(umask + orchestrate_argv(root, *args), env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[" ".join(args)] = done
    run_ids = [p.stem for p in (root / "runs").glob("*.json")]
    assert len(run_ids) == 3
    for run_id in run_ids[:1]:
        for args in (("status", run_id), ("status", run_id, "--json"), ("logs", run_id), ("runs", "--json")):
            outputs[" ".join(args)] = subprocess.run(orchestrate_argv(root, *args), env=env, capture_output=True,
                                                     timeout=60)
    for label, done in outputs.items():
        _assert_clean(f"stdout of {label}", done.stdout)
        _assert_clean(f"stderr of {label}", done.stderr)
        assert b"internal error" not in done.stderr  # (the plugin's own traceback is step output)
    # the steps did print it: masked as *** everywhere, split writes included
    logs = b"".join(p.read_bytes() for p in (root / "runs").glob("*/*.log"))
    for expected in (b"plain: ***", b"url: https://user:***@host/x", b"argv *** https://user:***@h",
                     b"encoded https://user:***@h", b"split: *** end", b"err ***", b"byte by byte: ***",
                     b"plugin got token ***", b"to stderr: ***", b"jira refused ***"):
        assert expected in logs, expected
    for path in [*(root / "runs").rglob("*"), root / "ci" / "junit.xml"]:
        if path.is_file():
            data = path.read_bytes()
            _assert_clean(str(path), data)
            assert b"env-canary-1234567" not in data and b"step-env-canary-42" not in data, f"environment in {path}"
    for path in [root / "runs", *(root / "runs").rglob("*")]:
        mode = path.lstat().st_mode
        assert not mode & stat.S_IWOTH, f"{path} is world-writable ({stat.filemode(mode)})"
    record = json.loads((root / "runs" / f"{run_ids[0]}.json").read_text())
    assert "env" not in record and "environment" not in record
    assert not any("env" in entry for entry in record["log"])


def test_secret_split_at_every_offset_across_writes(tmp_path: Path) -> None:
    """The stream masker in-process: the token cut at every position over two writes."""
    import orchestrate

    masker = orchestrate.Masker([TOKEN])
    data = b"before https://u:" + TOKEN.encode() + b"@h after " + quote(TOKEN, safe="").encode() + b" end"
    for cut in range(1, len(data)):
        for second in range(cut, len(data) + 1, 7):
            stream = orchestrate.StreamMasker(masker)
            out = stream.feed(data[:cut]) + stream.feed(data[cut:second]) + stream.feed(data[second:]) + stream.flush()
            assert out == b"before https://u:***@h after *** end", (cut, second, out)
    assert os.environ.get("JIRA_TOKEN") != TOKEN
