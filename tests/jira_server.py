"""A fake Jira for tests: a real HTTP server on 127.0.0.1 that answers like Jira's REST
API 2 and 3 for the endpoints the `jira` step uses, records every request, and can be
scripted per test.

    with FakeJira() as jira:                      # or the `fake_jira` fixture
        jira.add_issue("PROJ-123")
        jira.script(status=429, headers={"Retry-After": "2"})   # next request only
        ... run a step with jira_url=jira.api_url(3) ...
        assert jira.requests[0].json["body"]["type"] == "doc"

Scripted responses are consumed first-in first-out by the requests they match (any
request by default, or a given method and/or path substring); when none matches, the
built-in behaviour answers:

    POST /rest/api/{2,3}/issue/KEY/comment      201 {"id": "10000", ...}
    GET  /rest/api/{2,3}/issue/KEY/transitions  200 {"transitions": [...]}
    POST /rest/api/{2,3}/issue/KEY/transitions  204 (400 for an unknown id)
    unknown issue                               404 Jira-style errorMessages
    wrong or missing Authorization (when expect_auth is set)  401
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_TRANSITIONS", "FakeJira", "RecordedRequest", "Scripted", "closed_port"]

DEFAULT_TRANSITIONS: list[dict[str, Any]] = [
    {"id": "11", "name": "To Do",
     "to": {"id": "10000", "name": "To Do",
            "statusCategory": {"id": 2, "key": "new", "name": "To Do"}}},
    {"id": "21", "name": "Start Progress",
     "to": {"id": "3", "name": "In Progress",
            "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"}}},
    {"id": "31", "name": "Close Issue",
     "to": {"id": "10001", "name": "Done",
            "statusCategory": {"id": 3, "key": "done", "name": "Done"}}},
]

_ROUTE = re.compile(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3)/issue/(?P<key>[^/]+)/(?P<what>comment|transitions)$")

NOT_FOUND = {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
             "errors": {}}


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # parsed body, or None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Scripted:
    status: int = 200
    body: Any = b""  # bytes / str sent as is, anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a hang when > read timeout)
    method: str | None = None  # match only this method
    path_contains: str | None = None  # match only paths containing this
    close: bool = False  # drop the connection without any response


class FakeJira:
    """Start with `start()` or a `with` block; `stop()` ends it and releases hung handlers."""

    def __init__(self, *, transitions: list[dict[str, Any]] | None = None,
                 expect_auth: str | None = None) -> None:
        self.transitions = [dict(t) for t in (transitions or DEFAULT_TRANSITIONS)]
        self.expect_auth = expect_auth  # e.g. "Bearer tok" or "Basic ..."; None: accept any
        self.issues: set[str] = {"PROJ-123"}
        self.requests: list[RecordedRequest] = []
        self.comments: list[dict[str, Any]] = []
        self.applied_transitions: list[tuple[str, str]] = []  # (issue, transition id)
        self._scripts: list[Scripted] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._next_comment_id = 10000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeJira:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True  # a hung handler must not block shutdown
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeJira:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeJira not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The site root, e.g. http://127.0.0.1:40123"""
        return f"http://127.0.0.1:{self.port}"

    def api_url(self, version: int) -> str:
        return f"{self.url}/rest/api/{version}"

    # -- scripting ------------------------------------------------------------------

    def add_issue(self, *keys: str) -> None:
        self.issues.update(keys)

    def script(self, status: int = 200, body: Any = b"", *, headers: dict[str, str] | None = None,
               delay: float = 0.0, method: str | None = None, path_contains: str | None = None,
               times: int = 1, close: bool = False) -> None:
        """Queue `times` identical responses for the next matching requests."""
        with self._lock:
            for _ in range(times):
                self._scripts.append(Scripted(status, body, dict(headers or {}), delay,
                                              method, path_contains, close))

    def script_html_error(self, status: int = 502, title: str = "502 Bad Gateway", **kw: Any) -> None:
        page = (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
                f"<h1>{title}</h1><p>{'The proxy could not reach Jira. ' * 40}</p></body></html>")
        self.script(status, page, headers={"Content-Type": "text/html; charset=utf-8"}, **kw)

    def script_hang(self, seconds: float = 30.0, **kw: Any) -> None:
        self.script(200, {"id": "never"}, delay=seconds, **kw)

    def script_jira_error(self, status: int, messages: list[str] | None = None,
                          errors: dict[str, str] | None = None, **kw: Any) -> None:
        self.script(status, {"errorMessages": messages or [], "errors": errors or {}}, **kw)

    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    # -- request handling -----------------------------------------------------------

    def _take_script(self, method: str, path: str) -> Scripted | None:
        with self._lock:
            for i, s in enumerate(self._scripts):
                if (s.method is None or s.method == method) and (
                        s.path_contains is None or s.path_contains in path):
                    return self._scripts.pop(i)
        return None

    def _default(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        if self.expect_auth is not None and req.header("Authorization") != self.expect_auth:
            # Jira Cloud answers a bad token with 401 and a short plain-text body.
            return 401, "Client must be authenticated to access this resource.", {
                "Content-Type": "text/plain;charset=UTF-8", "WWW-Authenticate": 'Basic realm="protected-area"'}
        match = _ROUTE.match(req.path)
        if not match:
            return 404, {"errorMessages": ["null for uri: " + req.path], "errors": {}}, {}
        key, what = match["key"], match["what"]
        if key not in self.issues:
            return 404, NOT_FOUND, {}
        if what == "comment" and req.method == "POST":
            body = (req.json or {}).get("body")
            if match["version"] == "3" and not isinstance(body, dict):
                return 400, {"errorMessages": [], "errors": {"comment": "Operation value must be an Atlassian Document (see the Atlassian Document Format)"}}, {}
            if match["version"] == "2" and not isinstance(body, str):
                return 400, {"errorMessages": ["Can not deserialize instance of java.lang.String"], "errors": {}}, {}
            if not body:
                return 400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}, {}
            with self._lock:
                comment_id = str(self._next_comment_id)
                self._next_comment_id += 1
                self.comments.append({"issue": key, "id": comment_id, "body": body})
            return 201, {"id": comment_id, "self": f"{self.url}{req.path}/{comment_id}", "body": body}, {}
        if what == "transitions" and req.method == "GET":
            return 200, {"expand": "transitions", "transitions": self.transitions}, {}
        if what == "transitions" and req.method == "POST":
            wanted = str(((req.json or {}).get("transition") or {}).get("id"))
            if wanted not in {t["id"] for t in self.transitions}:
                return 400, {"errorMessages": [f"Transition id '{wanted}' is not valid for this issue."], "errors": {}}, {}
            self.applied_transitions.append((key, wanted))
            return 204, b"", {}
        return 405, {"errorMessages": ["Method Not Allowed"], "errors": {}}, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                parts = urlsplit(self.path)
                req = RecordedRequest(self.command, parts.path, parts.query,
                                      {k.lower(): v for k, v in self.headers.items()}, raw, parsed)
                with fake._lock:
                    fake.requests.append(req)
                scripted = fake._take_script(self.command, parts.path)
                if scripted is not None:
                    if scripted.delay and fake._stopping.wait(scripted.delay):
                        return  # server stopping: give up silently
                    if scripted.close:
                        self.close_connection = True
                        return
                    status, body, headers = scripted.status, scripted.body, scripted.headers
                else:
                    status, body, headers = fake._default(req)
                self._send(status, body, headers)

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                if isinstance(body, bytes):
                    data, ctype = body, "application/octet-stream"
                elif isinstance(body, str):
                    data, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
                else:
                    data, ctype = json.dumps(body).encode("utf-8"), "application/json;charset=UTF-8"
                self.send_response(status)
                names = {k.lower() for k in headers}
                if "content-type" not in names and data:
                    self.send_header("Content-Type", ctype)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler


def closed_port() -> int:
    """A loopback port that was just open and is now closed: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
