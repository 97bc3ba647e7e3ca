"""The HTML report and the dashboard in a real browser: Debian's chromium, headless, driven
through selenium and Debian's chromium-driver (.ci/run installs both). Without them every
test here is skipped with that reason. The browser runs with a fresh profile and no
network service of its own; it only ever talks to servers on 127.0.0.1 and to files.

ORCHESTRATE_UPDATE_SCREENSHOT=1 also writes the failed run's screenshot to docs/report.png
(the one README shows)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, Project
from test_dashboard import TOKEN, XSS_NAME, Dash, write_workflows

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FAKE_CYPRESS = Path(__file__).with_name("fake_cypress.py")
XSS_OUTPUT = "</script><script>window.__xss=1</script><img src=x onerror=window.__xss=2>"


def _why_no_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"no {path}: install Debian's {package} (apt-get install -y chromium chromium-driver; .ci/run does)"
    return None


pytestmark = pytest.mark.skipif(_why_no_browser() is not None, reason=str(_why_no_browser()))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def start(javascript: bool = True) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tmp_path / f"chromium-profile-{len(drivers)}"
        for arg in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1280,800",
        ):
            options.add_argument(arg)
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        # the page's viewport itself is 1280x800 (a window of that size has less room inside)
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def wait_until(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # an element between two renders
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def png_colours(path: Path) -> tuple[int, int, int]:
    """(width, height, number of distinct pixel colours) of an 8-bit RGB/RGBA PNG, decoded
    with zlib: enough to tell a rendered page from a blank one, without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        if y % 4 == 0:  # every fourth row is plenty to count colours
            colours.update(bytes(line[x : x + 3]) for x in range(0, stride, channels * 2))
        previous = line
    return width, height, len(colours)


def failed_run(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real run that failed: parallel steps, Cypress tests failing (tests/fake_cypress.py
    stands in for the Cypress binary, which cannot be downloaded here), an allowed failure, a
    skipped step, a step whose output tries to be markup. Returns its report."""
    node = tmp_path / "node-bin"
    node.mkdir()
    (node / "node").write_text("#!/bin/sh\necho v20.0.0\n")
    (node / "node").chmod(0o755)
    monkeypatch.setenv("PATH", f"{node}{os.pathsep}{os.environ['PATH']}")
    binary = project.root / "web" / "node_modules" / ".bin" / "cypress"
    binary.parent.mkdir(parents=True)
    shutil.copy(FAKE_CYPRESS, binary)
    binary.chmod(0o755)
    project.write("web/package.json", json.dumps({"devDependencies": {"cypress": "15.3.0"}}))
    project.write(
        "web/cypress/e2e/login.cy.js", "// fake: suite login\n// fake: pass 3\n// fake: fail 2\n// fake: sleep 0.6\n"
    )
    project.write("web/cypress/e2e/cart.cy.js", "// fake: suite cart\n// fake: pass 4\n")
    project.workflow(
        "ci",
        [
            {
                "name": "lint",
                "type": "command",
                "run": "printf '\\033[32m✓ 42 files clean\\033[0m\\n'; sleep 0.4",
                "needs": [],
            },
            {
                "name": "unit tests",
                "type": "command",
                "needs": [],
                "run": "printf 'collected 12 items\\n\\033[1;32m12 passed\\033[0m in 0.8s\\n'; sleep 0.8",
            },
            {"name": "ui smoke", "type": "cypress", "project": "./web", "needs": []},
            {
                "name": "docs links",
                "type": "command",
                "run": f"echo '{XSS_OUTPUT}'; sleep 0.2; exit 3",
                "needs": ["lint"],
                "continue_on_error": True,
            },
            {"name": "package", "type": "command", "run": "echo packaging", "needs": ["unit tests", "ui smoke"]},
        ],
    )
    report = tmp_path / "report.html"
    result = project.run("run", "ci", "--jobs", "4", "-q", "--html-report", str(report))
    assert result.returncode == 1, result.stdout + result.stderr
    return report


def test_failed_report_in_the_browser(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Callable[..., Any]
) -> None:
    from selenium.webdriver.common.by import By

    report = failed_run(project, tmp_path, monkeypatch)
    record = project.last_record()
    driver = browser()
    driver.get(report.as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "table.steps tbody tr")
    assert [
        (r.find_elements(By.TAG_NAME, "td")[1].text, r.find_element(By.CSS_SELECTOR, "td.status").text) for r in rows
    ] == [
        ("lint", "✓ passed"),
        ("unit tests", "✓ passed"),
        ("ui smoke", "✗ failed"),
        ("docs links", "! failed (allowed)"),
        ("package", "– skipped"),
    ]
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "li.failed-test .test-name")] == [
        "login › fails 1",
        "login › fails 2",
    ]
    assert {e.text for e in driver.find_elements(By.CSS_SELECTOR, "li.failed-test .file")} == {
        "cypress/e2e/login.cy.js"
    }
    # the timeline's bars, top to bottom, are the steps in the order they started
    bars = driver.find_elements(By.CSS_SELECTOR, "svg.timeline g.bar")
    started = sorted((e["started_at"], i) for i, e in enumerate(record["log"]) if e.get("started_at"))
    assert [int(b.get_attribute("data-index")) for b in bars] == [i for _, i in started]
    tops = [b.find_element(By.TAG_NAME, "rect").rect["y"] for b in bars]
    lefts = [b.find_element(By.TAG_NAME, "rect").rect["x"] for b in bars]
    assert tops == sorted(tops) and lefts == sorted(lefts)
    assert len(set(tops)) == len(tops)
    # the markup in a step's output is text, and ran nowhere
    assert driver.execute_script("return window.__xss") is None
    assert driver.find_element(By.ID, "tail-3").text == XSS_OUTPUT
    # the page's own script ran (its CSP hash is right): passed steps' logs are folded
    assert driver.find_element(By.CSS_SELECTOR, "#step-1 button.fold").text == "show"
    assert not driver.find_element(By.ID, "tail-0").is_displayed()
    assert driver.find_element(By.ID, "tail-2").is_displayed()
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    # printed, every log is unfolded
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert driver.find_element(By.ID, "tail-0").is_displayed()
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    width, height, colours = png_colours(shot)
    assert (width, height) == (1280, 800)
    assert colours >= 12, f"the screenshot looks blank ({colours} colours)"
    if os.environ.get("ORCHESTRATE_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, REPO / "docs" / "report.png")


def test_report_reads_with_javascript_off(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Callable[..., Any]
) -> None:
    from selenium.webdriver.common.by import By

    report = failed_run(project, tmp_path, monkeypatch)
    driver = browser(javascript=False)
    driver.get(report.as_uri())
    assert driver.find_element(By.TAG_NAME, "h1").text == "ci ✗ failed"
    assert not driver.find_elements(By.CSS_SELECTOR, "button.fold")  # the script did not run ...
    for n in range(4):  # ... and every log is there to read
        assert driver.find_element(By.ID, f"tail-{n}").is_displayed()
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.timeline g.bar")) == 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Dash]]:
    servers: list[Dash] = []

    def start(token: str | None = None, workflows: dict[str, Any] | None = None) -> Dash:
        write_workflows(tmp_path)
        for name, workflow in (workflows or {}).items():
            (tmp_path / "workflows" / f"{name}.json").write_text(json.dumps(workflow))
        servers.append(Dash(tmp_path, token))
        return servers[-1]

    yield start
    for one in servers:
        one.close()


SLOW = {
    "steps": [
        {
            "name": "count",
            "type": "command",
            "run": "for i in 1 2 3 4 5 6; do printf '\\033[33mtick\\033[0m %s\\n' $i; sleep 0.5; done; exit 4",
        }
    ]
}


def test_live_run_page_moves_from_running_to_failed(server: Callable[..., Dash], browser: Callable[..., Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dash = server(workflows={"slow": SLOW})
    driver = browser()
    driver.get(dash.base + "/")
    wait_until(lambda: driver.find_element(By.ID, "start").is_displayed(), what="the start form")
    Select(driver.find_element(By.ID, "start-name")).select_by_value("slow")
    driver.find_element(By.CSS_SELECTOR, "#start button[type=submit]").click()
    wait_until(lambda: "/ui/runs/" in driver.current_url, what="the run page")
    run_id = driver.current_url.rsplit("/", 1)[1]
    assert wait_until(lambda: driver.find_element(By.ID, "run-status").text == "… running", what="running")
    # the run is running a moment before its first step is: the page catches up at its next poll
    assert wait_until(
        lambda: driver.find_element(By.CSS_SELECTOR, "#step-row-0 td.status").text == "… running",
        what="the first step running",
    )
    # the output tail and the elapsed time move while the step runs
    wait_until(lambda: "tick 2" in driver.find_element(By.ID, "tail-0").text, what="live output")
    wait_until(lambda: driver.find_element(By.ID, "run-elapsed").text.endswith("s so far"), what="elapsed time")
    assert wait_until(lambda: driver.find_element(By.ID, "run-status").text == "✗ failed", timeout=30, what="failed")
    assert driver.find_element(By.CSS_SELECTOR, "#step-row-0 td.status").text == "✗ failed"
    assert driver.find_element(By.CSS_SELECTOR, "#step-row-0 td.message").text == "command exited with code 4"
    assert driver.find_element(By.ID, "tail-0").text.splitlines()[-1] == "tick 6"
    assert json.loads(dash.get(f"/status/{run_id}")[2])["status"] == "failed"
    driver.get(dash.base + "/?status=failed")
    assert [e.get_attribute("data-run-id") for e in driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")] == [
        run_id
    ]


def test_start_form_shows_what_post_start_refuses(server: Callable[..., Dash], browser: Callable[..., Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dash = server()
    driver = browser()
    driver.get(dash.base + "/")
    wait_until(lambda: driver.find_element(By.ID, "start").is_displayed(), what="the start form")
    Select(driver.find_element(By.ID, "start-name")).select_by_value("demo")
    driver.find_element(By.ID, "start-vars").send_keys("1BAD=x")
    driver.find_element(By.CSS_SELECTOR, "#start button[type=submit]").click()
    error = wait_until(lambda: driver.find_element(By.ID, "start-error").text, what="the refusal")
    assert error == "vars key '1BAD': expected a variable name (letters, digits, _)"
    driver.find_element(By.ID, "start-vars").clear()
    driver.find_element(By.ID, "start-skip").send_keys("no such step")
    driver.find_element(By.CSS_SELECTOR, "#start button[type=submit]").click()
    wait_until(
        lambda: driver.find_element(By.ID, "start-error").text.startswith("--skip 'no such step'"),
        what="the unknown step",
    )
    assert driver.current_url == dash.base + "/"
    assert json.loads(dash.get("/runs")[2]) == []


def test_no_script_runs_from_step_names_or_output(server: Callable[..., Dash], browser: Callable[..., Any]) -> None:
    from selenium.webdriver.common.by import By

    dash = server()
    status, body = dash.post_json("/start?name=xss", {})
    assert status == 202
    run_id = body["run_id"]
    dash.wait_done(run_id)
    driver = browser()
    for path in ("/", f"/ui/runs/{run_id}"):
        driver.get(dash.base + path)
        time.sleep(0.5)  # room for anything that would run
        assert driver.execute_script("return window.__xss") is None, path
    assert driver.find_element(By.CSS_SELECTOR, "#step-row-0 td a").text == XSS_NAME
    assert driver.find_element(By.ID, "tail-0").text == "</script><script>window.__xss=1</script>"


def test_token_mode_asks_once_and_never_puts_the_token_in_a_url_or_cookie(
    server: Callable[..., Dash], browser: Callable[..., Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dash = server(token=TOKEN, workflows={"slow": SLOW})
    driver = browser()
    driver.get(dash.base + "/")
    assert wait_until(lambda: driver.find_element(By.ID, "auth").is_displayed(), what="the token prompt")
    driver.find_element(By.ID, "token").send_keys("wrong-token")
    driver.find_element(By.ID, "token-use").click()
    assert wait_until(lambda: driver.find_element(By.ID, "auth-message").text, what="the refusal") == (
        "The server did not accept the token: enter it again."
    )
    driver.find_element(By.ID, "token").send_keys(TOKEN + "\n")
    wait_until(lambda: driver.find_element(By.ID, "start").is_displayed(), what="the start form")
    assert not driver.find_element(By.ID, "auth").is_displayed()
    Select(driver.find_element(By.ID, "start-name")).select_by_value("demo")
    driver.find_element(By.CSS_SELECTOR, "#start button[type=submit]").click()
    wait_until(lambda: "/ui/runs/" in driver.current_url, what="the run page")
    # asked once: the next page of the tab has it, from sessionStorage
    assert wait_until(lambda: driver.find_element(By.ID, "run-status").text == "✓ completed", what="completed")
    assert not driver.find_element(By.ID, "auth").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('orchestrate.api-token')") == TOKEN
    assert driver.execute_script("return document.cookie") == ""
    assert driver.get_cookies() == []
    urls = driver.execute_script("return performance.getEntries().map(function (e) { return e.name; })")
    urls.append(driver.current_url)
    assert urls and not [u for u in urls if TOKEN in u]
    driver.get(dash.base + "/")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr"), what="the runs")
    assert TOKEN not in driver.current_url
    assert TOKEN not in dash.output()  # nor in the server's access log
