"""Example plugin: wait until a URL answers, e.g. before an end-to-end suite starts.

A step of type "wait_for_http" runs this file's execute(step). Keys (besides the common
ones): "url" (required), "expect_status" (default 200), "within" (seconds, default 30),
"interval" (seconds between tries, default 0.5). Returning normally means passed; raising
means failed with the exception's message. What it prints goes to the console and the
step's log like any step's output.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request


def execute(step: dict) -> str:
    url = step.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("key 'url' must be an http:// or https:// URL")
    expected = int(step.get("expect_status", 200))
    within = float(step.get("within", 30))
    interval = float(step.get("interval", 0.5))
    deadline = time.monotonic() + within
    last = "no answer"
    attempt = 0
    while True:
        attempt += 1
        try:
            with urllib.request.urlopen(url, timeout=min(5.0, within)) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            status = None
            last = str(getattr(exc, "reason", exc))
        if status == expected:
            print(f"{url} answered {status} after {attempt} attempt(s)", flush=True)
            return f"{url} answered {status}"
        if status is not None:
            last = f"HTTP {status}"
        if time.monotonic() + interval > deadline:
            raise RuntimeError(f"{url} did not answer {expected} within {within:g}s (last: {last})")
        time.sleep(interval)
