"""A fake Jira for tests: a real HTTP server on 127.0.0.1 that answers like Jira's REST
API 2 and 3 for the operations the `jira` step uses, checks every request it receives and
every response it sends against Atlassian's OpenAPI document, records every request, and
can be scripted per test.

    with FakeJira() as jira:                      # or the `fake_jira` fixture
        jira.add_issue("PROJ-123")
        jira.script(status=429, headers={"Retry-After": "2"})   # next request only
        ... run a step with jira_url=jira.api_url(3) ...
        assert jira.requests[0].json["body"]["type"] == "doc"

The contract (tests/schemas/jira-cloud-platform-v3-subset.openapi.json, plus the
updateComment operation the subset lacks): a request must name an operation of the
document (method and path; API 2 has the same operations under /rest/api/2), carry only
the query parameters it declares, and a body that validates against the operation's
request schema (no read-only properties, no lone surrogates); an API 3 comment body must
be an Atlassian Document Format document (tests/schemas/atlaskit-adf-schema-57.7.22-full.json),
an API 2 one a string (wiki markup).  A response with a status the operation declares
must match its schema; a 2xx the operation does not declare is a contract breach too.
Each breach is kept in `violations` (the request is answered 400), and leaving the
`with` block with any raises AssertionError, so every test that uses the server checks
the contract.  A scripted response that deliberately is not Jira (a login page answering
200) says so with `off_spec=True`.

Scripted responses are consumed first-in first-out by the requests they match (any
request by default, or a given method and/or path substring); when none matches, the
built-in behaviour answers:

    GET  /rest/api/{2,3}/issue/KEY?fields=status&expand=transitions   200 the issue
    POST /rest/api/{2,3}/issue/KEY/comment          201 {"id": "10000", ...}
    PUT  /rest/api/{2,3}/issue/KEY/comment/ID       200 the updated comment
    GET  /rest/api/{2,3}/issue/KEY/transitions      200 {"transitions": [...]}
    POST /rest/api/{2,3}/issue/KEY/transitions      204 (400 for an unknown id or a
                                                    missing required field)
    unknown issue                                   404 Jira-style errorMessages
    wrong or missing Authorization (when expect_auth is set)  401

An issue is known by its key or its numeric id, has a status (To Do at first) that a
transition changes, and is offered the transitions that lead elsewhere than its status.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["DEFAULT_TRANSITIONS", "FakeJira", "OpenApiContract", "RecordedRequest", "Scripted", "closed_port"]

SCHEMAS = Path(__file__).resolve().parent / "schemas"

DEFAULT_TRANSITIONS: list[dict[str, Any]] = [
    {
        "id": "11",
        "name": "To Do",
        "to": {"id": "10000", "name": "To Do", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}},
    },
    {
        "id": "21",
        "name": "Start Progress",
        "to": {
            "id": "3",
            "name": "In Progress",
            "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"},
        },
    },
    {
        "id": "31",
        "name": "Close Issue",
        "to": {"id": "10001", "name": "Done", "statusCategory": {"id": 3, "key": "done", "name": "Done"}},
    },
]

NOT_FOUND = {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}


# -- the OpenAPI contract -----------------------------------------------------------------


class OpenApiContract:
    """Atlassian's OpenAPI subset as a checker of requests and responses (jsonschema on the
    referenced schemas, resolved against the document itself)."""

    URI = "urn:jira-cloud-platform-v3"

    def __init__(self) -> None:
        import jsonschema
        from referencing import Registry
        from referencing.jsonschema import DRAFT4

        document = json.loads((SCHEMAS / "jira-cloud-platform-v3-subset.openapi.json").read_text())
        extra = json.loads((SCHEMAS / "jira-cloud-platform-v3-updatecomment.openapi.json").read_text())
        for path, operations in extra["paths"].items():
            document["paths"].setdefault(path, {}).update(operations)
        self.document = document
        self.adf = json.loads((SCHEMAS / "atlaskit-adf-schema-57.7.22-full.json").read_text())
        self._registry = Registry().with_resource(self.URI, DRAFT4.create_resource(document))
        draft4 = jsonschema.Draft4Validator

        def openapi_type(validator: Any, types: Any, instance: Any, schema: dict[str, Any]) -> Any:
            if instance is None and schema.get("nullable"):  # OpenAPI 3.0's nullable
                return
            yield from draft4.VALIDATORS["type"](validator, types, instance, schema)

        def read_only(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
            if value:
                yield jsonschema.ValidationError("is a read-only property: a request must not send it")

        self._request_class = jsonschema.validators.extend(draft4, {"type": openapi_type, "readOnly": read_only})
        self._response_class = jsonschema.validators.extend(draft4, {"type": openapi_type})
        self._adf_validator = jsonschema.Draft4Validator(self.adf)
        self.routes: list[tuple[str, re.Pattern[str], dict[str, Any], str]] = []
        for template, operations in document["paths"].items():
            pattern = re.escape(template.removeprefix("/rest/api/3"))
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
            regex = re.compile(r"^(?P<_prefix>.*)/rest/api/(?P<_version>2|3)" + pattern + r"$")
            for method, operation in operations.items():
                if method != "parameters":
                    self.routes.append((method.upper(), regex, operation, template))

    def operation(self, method: str, path: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        for route_method, regex, operation, _template in self.routes:
            match = regex.match(path)
            if match and route_method == method:
                return operation, match.groupdict()
        return None

    def _errors(self, cls: Any, schema: dict[str, Any], instance: Any) -> list[str]:
        validator = cls(
            {"$ref": f"{self.URI}{schema['$ref']}"} if "$ref" in schema else schema, registry=self._registry
        )
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(instance)
        ]

    def check_request(self, method: str, path: str, query: str, headers: dict[str, str], raw: bytes) -> list[str]:
        found = self.operation(method, path)
        where = f"{method} {path}"
        if found is None:
            return [f"{where}: no operation of the Jira OpenAPI document has this method and path"]
        operation, params = found
        name = operation["operationId"]
        problems: list[str] = []
        declared = {p["name"]: p for p in operation.get("parameters", [])}
        for key, value in params.items():
            if not key.startswith("_") and not value:
                problems.append(f"{name}: path parameter {key} is empty")
        for key, values in parse_qs(query, keep_blank_values=True).items():
            spec = declared.get(key)
            if spec is None or spec.get("in") != "query":
                problems.append(f"{name}: query parameter {key!r} is not one the operation declares")
                continue
            schema = spec.get("schema", {})
            items = schema.get("items", {}) if schema.get("type") == "array" else schema
            for value in values:
                if items.get("type") == "boolean" and value not in ("true", "false"):
                    problems.append(f"{name}: query parameter {key}={value!r} is not a boolean")
        body = operation.get("requestBody")
        if body is None:
            if raw:
                problems.append(f"{name}: takes no request body, got {len(raw)} bytes")
            return problems
        if not raw:
            if body.get("required"):
                problems.append(f"{name}: the request body is required")
            return problems
        if "application/json" not in headers.get("content-type", ""):
            problems.append(f"{name}: Content-Type {headers.get('content-type')!r}, expected application/json")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            return [*problems, f"{name}: the body is not JSON ({exc})"]
        problems += [f"{name}: request body {e}" for e in _lone_surrogates(data)]
        schema = body["content"]["application/json"]["schema"]
        problems += [f"{name}: request body {e}" for e in self._errors(self._request_class, schema, data)]
        if name in ("addComment", "updateComment") and isinstance(data, dict):
            comment = data.get("body")
            if params["_version"] == "3":
                problems += [
                    f"{name}: body (ADF) {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                    for e in self._adf_validator.iter_errors(comment)
                ]
            elif not isinstance(comment, str):
                problems.append(f"{name}: API 2 takes the comment body as a string of wiki markup")
        return problems

    def check_response(self, method: str, path: str, status: int, content_type: str, data: bytes) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return []
        operation, _params = found
        name = operation["operationId"]
        declared = operation.get("responses", {}).get(str(status))
        if declared is None:
            if 200 <= status < 300:
                return [
                    f"{name}: answered {status}, which the operation does not declare "
                    f"(it declares {', '.join(operation.get('responses', {}))})"
                ]
            return []  # 429, 5xx...: Jira sends them, the document describes none
        if status == 204:
            return [f"{name}: a 204 carries no body, got {len(data)} bytes"] if data else []
        schema = (declared.get("content") or {}).get("application/json", {}).get("schema")
        if not schema or not 200 <= status < 300:
            return []
        if "json" not in content_type:
            return [f"{name}: answered {status} with Content-Type {content_type!r}, not JSON"]
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            return [f"{name}: the {status} body is not JSON ({exc})"]
        return [f"{name}: response {status} {e}" for e in self._errors(self._response_class, schema, parsed)]


def _lone_surrogates(value: Any, where: str = "") -> list[str]:
    if isinstance(value, str):
        return (
            [f"{where or '(root)'}: holds a lone UTF-16 surrogate (not Unicode text)"]
            if re.search("[\ud800-\udfff]", value)
            else []
        )
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _lone_surrogates(v, f"{where}/{i}")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _lone_surrogates(v, f"{where}/{k}")]
    return []


_CONTRACT: OpenApiContract | None = None


def contract() -> OpenApiContract:
    global _CONTRACT
    if _CONTRACT is None:
        _CONTRACT = OpenApiContract()
    return _CONTRACT


# -- the server -----------------------------------------------------------------------------


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
    off_spec: bool = False  # deliberately not what Jira answers: not checked


_ROUTES = {
    "issue": re.compile(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3)/issue/(?P<key>[^/]+)$"),
    "comment": re.compile(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3)/issue/(?P<key>[^/]+)/comment$"),
    "comment_id": re.compile(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3)/issue/(?P<key>[^/]+)/comment/(?P<id>[^/]+)$"),
    "transitions": re.compile(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3)/issue/(?P<key>[^/]+)/transitions$"),
}


class FakeJira:
    """Start with `start()` or a `with` block; `stop()` ends it and releases hung handlers.
    With `certfile`/`keyfile` it speaks HTTPS."""

    def __init__(
        self,
        *,
        transitions: list[dict[str, Any]] | None = None,
        expect_auth: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.transitions = [dict(t) for t in (transitions or DEFAULT_TRANSITIONS)]
        self.expect_auth = expect_auth  # e.g. "Bearer tok" or "Basic ..."; None: accept any
        self.issues: dict[str, dict[str, Any]] = {}  # key -> {"id", "key", "status"}
        self.required_fields: dict[str, list[str]] = {}  # transition id -> fields it demands
        self.requests: list[RecordedRequest] = []
        self.comments: list[dict[str, Any]] = []  # {"issue", "id", "body", "visibility", "edits"}
        self.applied_transitions: list[tuple[str, str]] = []  # (issue key, transition id)
        self.transition_fields: list[dict[str, Any]] = []  # the "fields" each transition sent
        self.violations: list[str] = []
        self.certfile, self.keyfile = certfile, keyfile
        self._scripts: list[Scripted] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._next_comment_id = 10000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_issue("PROJ-123")

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeJira:
        contract()  # load the documents before the first request, not inside a handler
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True  # a hung handler must not block shutdown
        if self.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certfile, self.keyfile)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeJira:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        if exc_type is None and self.violations:
            raise AssertionError(
                "the loopback Jira saw requests or sent responses that break "
                "Jira's OpenAPI document:\n  " + "\n  ".join(self.violations)
            )

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeJira not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The site root, e.g. http://127.0.0.1:40123"""
        return f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.port}"

    def api_url(self, version: int) -> str:
        return f"{self.url}/rest/api/{version}"

    # -- scripting ------------------------------------------------------------------

    def status_named(self, name: str) -> dict[str, Any]:
        for transition in [*self.transitions, *DEFAULT_TRANSITIONS]:
            if transition["to"]["name"] == name:
                return json.loads(json.dumps(transition["to"]))
        raise KeyError(f"no transition leads to a status named {name!r}")

    def add_issue(self, *keys: str, status: str = "To Do") -> None:
        for key in keys:
            self.issues[key] = {
                "id": str(10000 + len(self.issues) + 1),
                "key": key,
                "status": self.status_named(status) if status else {},
            }

    def issue_status(self, key: str) -> str:
        return self.issues[key]["status"].get("name", "")

    def script(
        self,
        status: int = 200,
        body: Any = b"",
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
        close: bool = False,
        off_spec: bool = False,
    ) -> None:
        """Queue `times` identical responses for the next matching requests."""
        with self._lock:
            for _ in range(times):
                self._scripts.append(
                    Scripted(status, body, dict(headers or {}), delay, method, path_contains, close, off_spec)
                )

    def script_html_error(self, status: int = 502, title: str = "502 Bad Gateway", **kw: Any) -> None:
        page = (
            f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{'The proxy could not reach Jira. ' * 40}</p></body></html>"
        )
        self.script(status, page, headers={"Content-Type": "text/html; charset=utf-8"}, **kw)

    def script_hang(self, seconds: float = 30.0, **kw: Any) -> None:
        """An answer that comes too late to be read (never checked: nobody sees it)."""
        self.script(201, {"id": "never"}, delay=seconds, off_spec=True, **kw)

    def script_jira_error(
        self, status: int, messages: list[str] | None = None, errors: dict[str, str] | None = None, **kw: Any
    ) -> None:
        self.script(status, {"errorMessages": messages or [], "errors": errors or {}}, **kw)

    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    def requests_of(self, method: str, what: str) -> list[RecordedRequest]:
        """The requests to one route ("issue", "comment", "comment_id", "transitions")."""
        return [r for r in self.requests if r.method == method and _ROUTES[what].match(r.path)]

    # -- request handling -----------------------------------------------------------

    def _take_script(self, method: str, path: str) -> Scripted | None:
        with self._lock:
            for i, s in enumerate(self._scripts):
                if (s.method is None or s.method == method) and (s.path_contains is None or s.path_contains in path):
                    return self._scripts.pop(i)
        return None

    def _find_issue(self, key_or_id: str) -> dict[str, Any] | None:
        if key_or_id in self.issues:
            return self.issues[key_or_id]
        return next((i for i in self.issues.values() if i["id"] == key_or_id), None)

    def _available(self, issue: dict[str, Any]) -> list[dict[str, Any]]:
        current = issue["status"].get("id")
        return [t for t in self.transitions if t["to"]["id"] != current]

    def _default(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        if self.expect_auth is not None and req.header("Authorization") != self.expect_auth:
            # Jira Cloud answers a bad token with 401 and a short plain-text body.
            return (
                401,
                "Client must be authenticated to access this resource.",
                {"Content-Type": "text/plain;charset=UTF-8", "WWW-Authenticate": 'Basic realm="protected-area"'},
            )
        route, match = next(
            ((name, m) for name, regex in _ROUTES.items() if (m := regex.match(req.path))), (None, None)
        )
        if match is None:
            return 404, {"errorMessages": ["null for uri: " + req.path], "errors": {}}, {}
        issue = self._find_issue(match["key"])
        if issue is None:
            return 404, NOT_FOUND, {}
        key = issue["key"]
        data = req.json if isinstance(req.json, dict) else {}
        issue_self = f"{self.url}{match['prefix']}/rest/api/{match['version']}/issue/{issue['id']}"
        if route == "issue" and req.method == "GET":
            query = parse_qs(req.query)
            fields = ",".join(query.get("fields", ["*all"])).split(",")
            answer: dict[str, Any] = {
                "id": issue["id"],
                "key": key,
                "self": issue_self,
                "fields": {"status": issue["status"]} if ("status" in fields or "*all" in fields) else {},
            }
            if "transitions" in ",".join(query.get("expand", [])).split(","):
                answer["transitions"] = self._available(issue)
            return 200, answer, {}
        if route == "comment" and req.method == "POST":
            body = data.get("body")
            if match["version"] == "3" and not isinstance(body, dict):
                return (
                    400,
                    {
                        "errorMessages": [],
                        "errors": {
                            "comment": "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
                        },
                    },
                    {},
                )
            if match["version"] == "2" and not isinstance(body, str):
                return 400, {"errorMessages": ["Can not deserialize instance of java.lang.String"], "errors": {}}, {}
            if not body:
                return 400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}, {}
            with self._lock:
                comment_id = str(self._next_comment_id)
                self._next_comment_id += 1
                comment = {
                    "issue": key,
                    "id": comment_id,
                    "body": body,
                    "visibility": data.get("visibility"),
                    "edits": 0,
                }
                self.comments.append(comment)
            return 201, self._comment_json(comment, issue_self), {}
        if route == "comment_id" and req.method == "PUT":
            found = [c for c in self.comments if c["issue"] == key and c["id"] == match["id"]]
            if not found:
                return 404, {"errorMessages": [f"Can not find a comment for the id: {match['id']}."], "errors": {}}, {}
            [comment] = found
            comment.update(body=data.get("body"), visibility=data.get("visibility"), edits=comment["edits"] + 1)
            return 200, self._comment_json(comment, issue_self), {}
        if route == "transitions" and req.method == "GET":
            return 200, {"expand": "transitions", "transitions": self._available(issue)}, {}
        if route == "transitions" and req.method == "POST":
            wanted = str((data.get("transition") or {}).get("id"))
            chosen = next((t for t in self._available(issue) if t["id"] == wanted), None)
            if chosen is None:
                return (
                    400,
                    {"errorMessages": [f"Transition id '{wanted}' is not valid for this issue."], "errors": {}},
                    {},
                )
            given = data.get("fields") or {}
            missing = [f for f in self.required_fields.get(wanted, []) if f not in given]
            if missing:
                return 400, {"errorMessages": [], "errors": {f: f"Field '{f}' is required" for f in missing}}, {}
            issue["status"] = json.loads(json.dumps(chosen["to"]))
            self.applied_transitions.append((key, wanted))
            self.transition_fields.append(given)
            return 204, b"", {}
        return 405, {"errorMessages": ["Method Not Allowed"], "errors": {}}, {}

    def _comment_json(self, comment: dict[str, Any], issue_self: str) -> dict[str, Any]:
        out = {
            "id": comment["id"],
            "self": f"{issue_self}/comment/{comment['id']}",
            "body": comment["body"],
            "created": "2026-12-03T10:00:00.000+0000",
            "updated": "2026-12-03T10:00:00.000+0000",
        }
        if comment.get("visibility"):
            out["visibility"] = comment["visibility"]
        return out

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
                req = RecordedRequest(
                    self.command, parts.path, parts.query, {k.lower(): v for k, v in self.headers.items()}, raw, parsed
                )
                with fake._lock:
                    fake.requests.append(req)
                breaches = contract().check_request(req.method, req.path, req.query, req.headers, raw)
                scripted = fake._take_script(self.command, parts.path)
                if breaches:
                    with fake._lock:
                        fake.violations.extend(breaches)
                    self._send(
                        400, {"errorMessages": [f"loopback Jira: {b}" for b in breaches], "errors": {}}, {}, check=False
                    )
                    return
                if scripted is not None:
                    if scripted.delay and fake._stopping.wait(scripted.delay):
                        return  # server stopping: give up silently
                    if scripted.close:
                        self.close_connection = True
                        return
                    self._send(scripted.status, scripted.body, scripted.headers, check=not scripted.off_spec)
                    return
                status, body, headers = fake._default(req)
                self._send(status, body, headers)

            def _send(self, status: int, body: Any, headers: dict[str, str], *, check: bool = True) -> None:
                if isinstance(body, bytes):
                    data, ctype = body, "application/octet-stream"
                elif isinstance(body, str):
                    data, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
                else:
                    data, ctype = json.dumps(body).encode("utf-8"), "application/json;charset=UTF-8"
                names = {k.lower(): v for k, v in headers.items()}
                if check:
                    breaches = contract().check_response(
                        self.command,
                        urlsplit(self.path).path,
                        status,
                        names.get("content-type", ctype if data else ""),
                        data,
                    )
                    if breaches:
                        with fake._lock:
                            fake.violations.extend(breaches)
                self.send_response(status)
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
