"""orchestrate: run a project's check-and-release workflow from a git hook, a CI job or a terminal.

A workflow is a JSON file of ordered steps (Python scripts in their own virtualenvs, Cypress
suites, Jira updates, shell commands, plugins). ``orchestrate run NAME`` runs them in the
foreground, streams their output, records the run in ``runs/<run_id>.json``, writes a JUnit
report to ``runs/<run_id>/junit.xml`` and exits non-zero when a step fails.

Promises: a definition error is one line naming the file, the step and the key (exit 2) and
nothing runs; a run record is never torn; secrets are masked as ``***`` in everything
orchestrate prints or writes; a step's whole process tree ends with the step.

Map of this module (``grep -n '^# ===' orchestrate.py``; sub-sections
are numbered N.M):
  1. Constants and exit codes          2. Errors
  3. Text utilities                    4. Workflow model
  5. Run store                         6. Processes
  7. Git and CI                        8. Reports
  9. Runners                           10. Loading and validating workflows
  11. Engine                           12. HTTP server
  13. CLI and main
"""

from __future__ import annotations

# Start-up is paid on every push (a git hook), so the module body stays cheap: no typing at
# run time (annotations are strings; names only type checkers need are under TYPE_CHECKING),
# no hashlib (it loads OpenSSL: sha256_hex), regexes compiled on first use (lazy_regex), and
# subprocess, threading, shlex and xml imported by the functions that need them. Measured with
# `python -X importtime -c 'import orchestrate'` and bench/run.py (issue 15).
import _thread  # locks without importing threading (a run in one thread never needs it)
import functools
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is at run time, without importing typing
if TYPE_CHECKING:
    from typing import Any, TypedDict

    import typer  # imported for real only when the CLI app is built (see build_app)
else:

    class TypedDict(dict):
        """Stands in for typing.TypedDict at run time: the record classes built on it only
        document the records' shape for type checkers."""

        def __init_subclass__(cls, total: bool = True, **kwargs: object) -> None:
            super().__init_subclass__(**kwargs)


__version__ = "0.2.0"

__all__ = [
    "DefinitionError",
    "OrchestrateError",
    "RunOptions",
    "RunStore",
    "Runner",
    "Settings",
    "Step",
    "StepContext",
    "StepFailure",
    "StepResult",
    "TestCase",
    "UsageError",
    "Workflow",
    "build_junit_xml",
    "execute_run",
    "list_workflows",
    "load_settings",
    "load_workflow",
    "main",
    "register_runner",
]


# === 1. Constants and exit codes ===


EXIT_OK = 0


EXIT_STEP_FAILED = 1


EXIT_USAGE = 2


EXIT_INTERNAL = 3


EXIT_SIGINT = 130


EXIT_SIGTERM = 143


EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader left (`| head`)


# runs/<run_id>.json: v1 first version; v2 adds "running" (the steps running now, in start
# order; "current" is the first of them) and options.jobs; v3 adds "resumed_from" (the run a
# `resume` continues) and, per step, what its inputs were (values_sha256, tree_sha256, and
# inputs_sha256 for a step with `sources`), why it did not run its work again
# (reused_from, up_to_date_since) or why it did (rerun_reason), its saved test cases
# (tests_file) and failed_test_details; definition_sha256 covers the workflow's env from v3 on.
# Older records are migrated on read (migrate_record), newer ones refused.
SCHEMA_VERSION = 3


RUN_STATUSES = ("pending", "running", "failed", "completed")


RUN_STATUS_ALIASES = {"passed": "completed"}  # what a run that passed is called in its summary line


WHEN_STATUSES = ("success", "failure", "always")


MAX_WORKFLOW_BYTES = 4 * 1024 * 1024  # a workflow is a hand-written file; 4 MiB is far beyond any real one


TAIL_MAX_BYTES = 4096  # the run record keeps a bounded tail; the step log keeps everything


TAIL_MAX_LINES = 40


READ_CHUNK = 1024 * 1024  # large binary reads: line-by-line reading is several times slower


KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this many seconds (as docker stop and systemd do)


SNAPSHOT_INTERVAL_S = 0.5  # between full rewrites of a running record; the journal covers the gap


SYNC_AFTER_STEP_S = 1.0  # a step that ran this long has its outcome synced to disk (RunRecorder)


DEFAULT_KEEP_RUNS = 300


PRUNE_BATCH = 200  # runs removed at most after one run (the next runs remove the rest)


PRUNE_BUDGET_S = 0.03  # nor once this long has passed since the prune began (listing included)


PRUNE_AT_LEAST = 5  # but these go in any case: a slow listing never stops pruning altogether


MAX_JOBS = 256  # steps at once: far beyond what one machine runs usefully


# Modes given explicitly wherever orchestrate creates something under runs/: with the
# umask 000 some CI images and containers run with, open()'s 0o666 and mkdir's 0o777
# would make run records, logs and folders world-writable (anyone could forge a result).
RUNS_FILE_MODE = 0o644


RUNS_DIR_MODE = 0o755


class _LazyRegex:
    """A regex compiled on first use (see lazy_regex)."""

    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str | bytes, flags: int) -> None:
        self._source, self._flags = source, flags
        self._compiled: re.Pattern[Any] | None = None

    def __getattr__(self, name: str) -> Any:  # match, search, sub, pattern, ...: the compiled regex's
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = re.compile(self._source, self._flags)
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"lazy_regex({self._source!r})"


def lazy_regex(source: str, flags: int = 0) -> re.Pattern[str]:
    """re.compile(source, flags) on first use: compiling this module's regexes when it was
    imported cost about 2 ms of every start, and most runs use only a few of them."""
    return _LazyRegex(source, flags)  # type: ignore[return-value]  # behaves as the Pattern it compiles


_SHA256: Any = None


def builtin_sha256() -> Any:
    """hashlib.sha256 without importing hashlib, which loads OpenSSL (about 3 ms at every
    start): CPython's own implementation gives the same digest. For short texts; a file's
    content goes through hashlib, which is faster per byte."""
    global _SHA256
    if _SHA256 is None:
        try:
            from _sha2 import sha256 as implementation  # type: ignore[import-not-found]  # Python 3.12+
        except ImportError:
            try:
                from _sha256 import sha256 as implementation  # type: ignore[import-not-found,no-redef]
            except ImportError:  # a build without it
                from hashlib import sha256 as implementation  # type: ignore[assignment,no-redef]
        _SHA256 = implementation
    return _SHA256


def sha256_hex(data: bytes) -> str:
    return str(builtin_sha256()(data).hexdigest())


def hmac_sha256_hex(key: bytes, data: bytes) -> str:
    """hmac.new(key, data, "sha256").hexdigest() (RFC 2104) over builtin_sha256: a run keys
    its values' hash without importing hmac, and with it OpenSSL."""
    global _HMAC_PADS
    if _HMAC_PADS is None:
        _HMAC_PADS = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))
    sha256 = builtin_sha256()
    block = (sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    inner = sha256(block.translate(_HMAC_PADS[0]) + data).digest()
    return str(sha256(block.translate(_HMAC_PADS[1]) + inner).hexdigest())


_HMAC_PADS: tuple[bytes, bytes] | None = None  # (ipad, opad) translation tables, as hmac's


def define_typing_names() -> None:
    """Typer and FastAPI read this module's annotations (strings, PEP 563) against its globals,
    where `Any` is not defined at import (typing costs 3 ms of every start): build_app and
    create_app define it first, as does anyone calling typing.get_type_hints on this module."""
    import typing

    globals().setdefault("Any", typing.Any)


SECRET_KEY_RE = lazy_regex(r"token|password|passwd|secret|api[_-]?key", re.IGNORECASE)


_SECRET_KEY_WORDS = ("token", "password", "passwd", "secret", "apikey", "api_key", "api-key")


def is_secret_key(key: str) -> bool:
    """Whether a key's name says its value is a secret (SECRET_KEY_RE): for the usual ASCII
    names without compiling the regex (every workflow load asks; re.compile cost 0.2 ms)."""
    if key.isascii():
        lowered = key.lower()
        return any(word in lowered for word in _SECRET_KEY_WORDS)
    return SECRET_KEY_RE.search(key) is not None


MIN_SECRET_LEN = 4  # a shorter secret is a definition error: masking "abc" would garble every line


CYPRESS_FAILED_NAMES_MAX = 100  # names kept in the run record; the JUnit report has all


MAX_HTTP_VARS_BYTES = 2 * 1024 * 1024  # what `run --vars-stdin` reads at most


# === 1.1. Record classes: the subset of dataclasses orchestrate uses ===

# Record classes. The standard dataclasses module imports inspect, and generating this module's
# classes with it cost about 20 ms at every start (measured with bench/run.py and -X importtime),
# which a git hook pays on every push. This is the subset orchestrate uses: annotated fields
# with defaults or default factories, __init__ (positional or keyword), __repr__, __eq__, and
# frozen classes that hash; one generated __init__ per class, shared __repr__ and __eq__.


_MISSING = object()


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def _record_repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__qualname__}({inner})"


def _record_eq(self: Any, other: Any) -> Any:
    if type(other) is not type(self):
        return NotImplemented
    return all(getattr(self, n) == getattr(other, n) for n in self.__record_fields__)


def _record_hash(self: Any) -> int:
    return hash(tuple(getattr(self, n) for n in self.__record_fields__))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")


class _DataclassFields:
    """`__dataclass_fields__` of a record class, built on first use: dataclasses.fields(),
    asdict() and replace() work on these classes as on real dataclasses, for code that imports
    dataclasses anyway (type checkers see the classes as dataclasses: both must agree)."""

    def __get__(self, obj: Any, cls: Any) -> dict[str, Any]:
        import dataclasses

        fields: dict[str, Any] = {}
        for name in cls.__record_fields__:
            default = cls.__record_defaults__.get(name, _MISSING)
            if isinstance(default, _Factory):
                spec = dataclasses.field(default_factory=default.factory)
            elif default is _MISSING:
                spec = dataclasses.field()
            else:
                spec = dataclasses.field(default=default)
            spec.name = name
            spec.type = cls.__annotations__.get(name, "Any")
            spec._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields() keeps
            fields[name] = spec
        cls.__dataclass_fields__ = fields  # built once per class
        return fields


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorator: decorator


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made anew for each instance (as dataclasses.field)."""
    return _Factory(default_factory)


def _record_init(cls: Any, names: Sequence[str], defaults: dict[str, Any], frozen: bool) -> Callable[..., None]:
    """The generated __init__ of a record class: positional or keyword fields, defaults, factories."""
    params, lines = [], []
    assign = "__setattr(self, {0!r}, {1})" if frozen else "self.{0} = {1}"
    for name in names:
        if name in defaults:
            if isinstance(defaults[name], _Factory):
                params.append(f"{name}=__missing")
                value = f"__defaults[{name!r}].factory() if {name} is __missing else {name}"
            else:
                params.append(f"{name}=__defaults[{name!r}]")
                value = name
        else:
            params.append(name)
            value = name
        lines.append("    " + assign.format(name, value))
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(lines) or "    pass") + "\n"
    namespace: dict[str, Any] = {"__defaults": defaults, "__missing": _MISSING, "__setattr": object.__setattr__}
    exec(source, namespace)  # generated from the class's own field names
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: Any = None, *, frozen: bool = False) -> Any:
    """The subset of @dataclasses.dataclass described above."""

    def wrap(cls: Any) -> Any:
        names = [
            n
            for n, a in cls.__dict__.get("__annotations__", {}).items()  # noqa: RUF063  (inspect is what this avoids importing)
            if not str(a).startswith(("ClassVar", "typing.ClassVar"))
        ]
        defaults: dict[str, Any] = {}
        for name in names:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], _Factory):
                    delattr(cls, name)

        def first_init(self: Any, *args: Any, **kwargs: Any) -> None:
            # compiled when the first instance is made: exec() for all 26 classes at import
            # cost about 3 ms of every start, and a run makes instances of a few of them
            init = _record_init(cls, names, defaults, frozen)
            cls.__init__ = init
            init(self, *args, **kwargs)

        first_init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = first_init
        cls.__record_fields__ = tuple(names)
        cls.__record_defaults__ = defaults
        cls.__dataclass_fields__ = _DataclassFields()
        cls.__repr__ = _record_repr
        cls.__eq__ = _record_eq
        if frozen:
            cls.__setattr__ = _frozen_setattr
            cls.__hash__ = _record_hash
        else:
            cls.__hash__ = None
        return cls

    return wrap if cls is None else wrap(cls)


# === 2. Errors ===
# One exception family, each with its exit code, caught once at the CLI boundary; and the
# helpers that word its one-line messages.


class OrchestrateError(Exception):
    """A problem to tell the user in one line; the CLI turns it into its exit code."""

    exit_code = EXIT_INTERNAL


class DefinitionError(OrchestrateError):
    """The workflow (or settings) file is wrong; nothing ran."""

    exit_code = EXIT_USAGE


class UsageError(OrchestrateError):
    """The command line is wrong; nothing ran."""

    exit_code = EXIT_USAGE


class StoreError(OrchestrateError):
    """runs/ cannot be read or written: the environment is unusable (exit 3)."""

    exit_code = EXIT_INTERNAL


class RecordUnreadable(StoreError):
    """A run record exists but cannot be used (corrupt, newer schema)."""


class StepFailure(Exception):
    """Raised by a runner: the step failed, with this message."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived while a step ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def shorten_middle(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters in the middle: a long path or id usually differs from
    its neighbours at the end, so a message keeps the start and the end."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def plural(count: int, noun: str) -> str:
    """ "1 step", "2 steps": counts in messages read as English."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# === 3. Text utilities ===
# Pure text helpers that the model, the runners, the reports and the server all use.


# === 3.1. Globs ===


# One translator for every glob orchestrate matches (Cypress `spec`, `when.changed`,
# `when.branch`), built so that a hostile pattern cannot hang a run:
# - braces are expanded after counting: a pattern that would expand to more than
#   GLOB_MAX_PATTERNS patterns is refused (0.1.0 expanded "{a,b}" x 16 recursively, which
#   hung `validate` for over a minute), and so is one longer than GLOB_MAX_LENGTH;
# - the expanded patterns become one regular expression whose matching time is linear in the
#   path's length: a fixed-width chunk between two `*` of a segment, and the segments between
#   two `**/`, are matched at their leftmost place and never retried (an atomic group, written
#   as a lookahead and a backreference, as CPython's fnmatch does since 3.9), which is exact
#   for globs and leaves no backtracking that grows with the path;
# - a character class is checked when the workflow is loaded: `[z-a]` is a definition error.
GLOB_MAX_PATTERNS = 1000


GLOB_MAX_LENGTH = 10_000


_GLOB_MAX_NESTING = 32


class GlobError(ValueError):
    """A glob that cannot be used; the message says why (the caller names the key)."""


def _brace_pairs(pattern: str) -> dict[int, int]:
    """Index of each '{' that has a matching '}' -> index of that '}'."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for index, char in enumerate(pattern):
        if char == "{":
            stack.append(index)
            if len(stack) > _GLOB_MAX_NESTING:
                raise GlobError(f"braces are nested more than {_GLOB_MAX_NESTING} deep")
        elif char == "}" and stack:
            pairs[stack.pop()] = index
    return pairs


def _parse_braces(pattern: str, pairs: dict[int, int], start: int, end: int) -> list[Any]:
    """pattern[start:end] as a sequence of literal strings and groups (lists of sequences).
    As in bash, braces without a top-level comma ("{x}") or without their closing brace stay
    literal (what is inside them is still read)."""
    import itertools

    items: list[Any] = []
    literal: list[str] = []
    index = start
    while index < end:
        char = pattern[index]
        close = pairs.get(index, -1) if char == "{" else -1
        if 0 <= close < end:
            commas, inner = [], index + 1
            while inner < close:
                if pattern[inner] == "{" and inner in pairs:
                    inner = pairs[inner] + 1
                    continue
                if pattern[inner] == ",":
                    commas.append(inner)
                inner += 1
            if commas:
                if literal:
                    items.append("".join(literal))
                    literal = []
                bounds = [index, *commas, close]
                items.append(
                    [_parse_braces(pattern, pairs, left + 1, right) for left, right in itertools.pairwise(bounds)]
                )
                index = close + 1
                continue
        literal.append(char)
        index += 1
    if literal:
        items.append("".join(literal))
    return items


def _brace_count(sequence: list[Any]) -> int:
    total = 1
    for item in sequence:
        if isinstance(item, list):
            total *= sum(_brace_count(alternative) for alternative in item)
            if total > GLOB_MAX_PATTERNS:
                return total
    return total


def _brace_expand(sequence: list[Any]) -> list[str]:
    results = [""]
    for item in sequence:
        if isinstance(item, str):
            results = [prefix + item for prefix in results]
        else:
            endings = [text for alternative in item for text in _brace_expand(alternative)]
            results = [prefix + ending for prefix in results for ending in endings]
    return results


def expand_braces(pattern: str) -> list[str]:
    """Expand shell braces: "a.{js,ts}" -> ["a.js", "a.ts"], nested groups included.

    Like bash, a group without a top-level comma ("{x}") or without its closing brace
    stays literal. Duplicates are dropped, first occurrence kept. GlobError when the pattern
    would expand to more than GLOB_MAX_PATTERNS patterns (counted before anything is built).
    """
    if len(pattern) > GLOB_MAX_LENGTH:
        raise GlobError(f"the pattern is {len(pattern):,} characters long; at most {GLOB_MAX_LENGTH:,} are allowed")
    if "{" not in pattern:
        return [pattern]
    sequence = _parse_braces(pattern, _brace_pairs(pattern), 0, len(pattern))
    if _brace_count(sequence) > GLOB_MAX_PATTERNS:
        raise GlobError(
            f"its braces expand to more than {GLOB_MAX_PATTERNS:,} patterns, the most "
            f"orchestrate accepts (list fewer alternatives, or use * and ?)"
        )
    return list(dict.fromkeys(_brace_expand(sequence)))


_CLASS_SPECIAL = frozenset("\\]^-[&~|")


def _glob_class(pattern: str, pos: int) -> tuple[str, int] | None:
    """The regex of the character class at pattern[pos] == '[' and the index after it, or None
    when it has no closing ']' (then '[' is literal). A class never matches '/'."""
    index = pos + 1
    negate = index < len(pattern) and pattern[index] in "!^"
    if negate:
        index += 1
    start = index
    if index < len(pattern) and pattern[index] == "]":
        index += 1  # a ']' first is a member, as in fnmatch
    close = pattern.find("]", index)
    if close < 0:
        return None
    body = pattern[start:close]
    parts: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise GlobError(f"the character range {low}-{high} in [{body}] is reversed (write {high}-{low})")
            parts.append(_class_char(low) + "-" + _class_char(high))
            k += 3
        else:
            parts.append(_class_char(body[k]))
            k += 1
    inner = "".join(parts)
    return (f"[^/{inner}]" if negate else f"(?!/)[{inner}]"), close + 1


def _class_char(char: str) -> str:
    return "\\" + char if char in _CLASS_SPECIAL else char


def _glob_tokens(pattern: str) -> list[tuple[str, str]]:
    """A brace-free glob as tokens: ("sep", "/"), ("star", ""), ("one", regex) for a literal,
    `?` or a class (each matches exactly one character)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(pattern):
        char = pattern[pos]
        if char == "/":
            tokens.append(("sep", "/"))
        elif char == "*":
            tokens.append(("star", ""))
        elif char == "?":
            tokens.append(("one", "[^/]"))
        elif char == "[":
            found = _glob_class(pattern, pos)
            if found is not None:
                tokens.append(("one", found[0]))
                pos = found[1]
                continue
            tokens.append(("one", re.escape(char)))
        else:
            tokens.append(("one", re.escape(char)))
        pos += 1
    return tokens


class _GroupNames:
    def __init__(self) -> None:
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"g{self.count}"


def _segment_regex(tokens: list[tuple[str, str]], names: _GroupNames) -> str:
    """One path segment: fixed chunks between stars; the chunks between the first and the last
    star are found at their leftmost place, atomically (see the comment above)."""
    chunks: list[str] = [""]
    for kind, text in tokens:
        if kind == "star":
            chunks.append("")
        else:
            chunks[-1] += text
    if len(chunks) == 1:
        return chunks[0]
    first, *middle, last = chunks
    out = [first]
    for chunk in middle:
        if chunk:
            name = names.next()
            out.append(f"(?=(?P<{name}>[^/]*?{chunk}))(?P={name})")
    out.append("[^/]*" + last)
    return "".join(out)


def _glob_pattern_regex(pattern: str, names: _GroupNames) -> str:
    """The regex of one brace-free glob over a POSIX relative path (to be matched from its start).

    `*` and `?` stay inside one path segment, `[...]`/`[!...]` are character classes,
    `**/` is any number of directories (none included) and a final `**` is anything."""
    tokens = _glob_tokens(pattern)
    segments: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token[0] == "sep":
            segments.append([])
        else:
            segments[-1].append(token)
    globstar = [("star", ""), ("star", "")]
    ends_anything = len(segments) > 0 and segments[-1] == globstar
    if ends_anything:
        segments.pop()
    # runs of segments between `**/` (consecutive `**` are one)
    runs: list[list[str]] = [[]]
    for index, segment in enumerate(segments):
        if segment == globstar and index < len(segments) - 1 + (1 if ends_anything else 0):
            if runs[-1] or len(runs) == 1:
                runs.append([])
            continue
        runs[-1].append(_segment_regex(segment, names))
    out: list[str] = []
    for position, run in enumerate(runs):
        text = "".join(part + "/" for part in run)
        last_run = position == len(runs) - 1
        if last_run and not ends_anything:
            text = text[:-1]  # the last segment has no '/' after it
        if position == 0:
            out.append(text)
        elif last_run and not ends_anything:
            out.append(f"(?:[^/]+/)*{text}")
        else:
            name = names.next()
            out.append(f"(?=(?P<{name}>(?:[^/]+/)*?{text}))(?P={name})")
    if ends_anything:
        out.append(".*")
    return "".join(out) + r"\Z"


@functools.lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob (braces included) to one regex over POSIX relative paths, to be used with
    .match(). Raises GlobError for a pattern that cannot be used (see above)."""
    names = _GroupNames()
    alternatives = [_glob_pattern_regex(expanded, names) for expanded in expand_braces(pattern)]
    try:
        return re.compile(
            alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")", re.DOTALL
        )
    except (re.error, RecursionError, OverflowError) as exc:  # not expected: every piece is escaped
        raise GlobError(f"cannot be compiled ({exc})") from None


def check_glob(pattern: str, where: str, key: str) -> None:
    """A definition-time check of a glob: DefinitionError naming the key."""
    try:
        glob_regex(pattern)
    except GlobError as exc:
        raise DefinitionError(f"{where}: key '{key}': invalid glob {_shorten(pattern, 80)!r}: {exc}") from None


def find_spec_files(project: Path, folder: str, spec: str) -> list[str]:
    """Spec files under `project/folder` whose folder-relative path matches `spec`.

    Returns POSIX paths relative to the project, sorted, so every machine builds the
    same list. node_modules and dot-folders and dot-files are never searched, as in
    Cypress's own spec finder.
    """
    base = project / folder
    if not base.is_dir():
        return []
    pattern = glob_regex(spec.strip().removeprefix("./"))
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "node_modules" and not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = os.path.join(dirpath, filename)
            in_folder = os.path.relpath(path, base).replace(os.sep, "/")
            if pattern.match(in_folder):
                found.append(os.path.relpath(path, project).replace(os.sep, "/"))
    return sorted(found)


_GLOB_CHARS = frozenset("*?[{")


def _literal_glob(pattern: str) -> bool:
    return not any(char in _GLOB_CHARS for char in pattern)


def _glob_base(pattern: str) -> str:
    """The literal folder a glob starts in: "src" for "src/**/*.py", "" for "*.toml"."""
    literal = []
    for part in pattern.split("/")[:-1]:
        if not _literal_glob(part) or part in ("", "."):
            break
        literal.append(part)
    return "/".join(literal)


def match_files(root: Path, patterns: Sequence[str], runs_dir: Path | None = None) -> list[tuple[str, os.stat_result]]:
    """The files under `root` whose root-relative POSIX path matches one of the globs (glob_regex:
    `**` any depth, anchored at the root), sorted, each with its lstat. Only the literal folder
    each glob starts in is searched, and no deeper than it can match; a symbolic link to a
    folder is never followed (a link is listed as itself), and .git, the runs folder, and
    node_modules and dot-folders reached through a wildcard are never searched."""
    return [(relative, info) for relative, _path, info in _matching_files(root, patterns, runs_dir)]


def _matching_files(
    root: Path, patterns: Sequence[str], runs_dir: Path | None = None
) -> list[tuple[str, str, os.stat_result]]:
    """match_files with each file's full path too (a string: hashing 10,000 sources must not
    pay for pathlib)."""
    found: dict[str, tuple[str, os.stat_result]] = {}
    runs = os.path.abspath(runs_dir) if runs_dir is not None else None
    base_dir = os.fspath(root)  # strings, not Paths: pathlib costs more than the stat (10,000 files)
    for raw in patterns:
        pattern = raw.strip().removeprefix("./")
        if not pattern:
            continue
        if _literal_glob(pattern):
            full = os.path.join(base_dir, pattern)
            try:
                found[pattern] = (full, os.lstat(full))
            except OSError:
                pass
            continue
        _walk_for_glob(base_dir, pattern, runs, found)
    return [(relative, path, info) for relative, (path, info) in sorted(found.items())]


def _walk_for_glob(base_dir: str, pattern: str, runs: str | None, found: dict[str, tuple[str, os.stat_result]]) -> None:
    """Add to `found` the files a wildcard glob matches, searching from its literal folder."""
    import stat

    regex = glob_regex(pattern)
    base = _glob_base(pattern)
    depth_left = None if "**" in pattern else pattern.count("/") - base.count("/") - (1 if base else 0)
    stack: list[tuple[str, int | None]] = [(base, depth_left)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(base_dir, folder) if folder else base_dir))
        except OSError:
            continue
        for entry in entries:
            relative = f"{folder}/{entry.name}" if folder else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if _searchable_folder(entry, runs, depth):
                    stack.append((relative, None if depth is None else depth - 1))
            elif regex.match(relative):
                found[relative] = (entry.path, info)


def _searchable_folder(entry: os.DirEntry[str], runs: str | None, depth: int | None) -> bool:
    """Not .git, node_modules, a dot-folder or the runs folder, and not below the glob's depth."""
    return not (
        entry.name == ".git"
        or entry.name == "node_modules"
        or entry.name.startswith(".")
        or (runs is not None and os.path.abspath(entry.path) == runs)
        or (depth is not None and depth <= 0)
    )


def check_path_globs(values: Any, where: str, key: str) -> None:
    """`sources` and `reports`: a non-empty list of globs relative to the project root."""
    for i, pattern in enumerate(values):
        text = pattern.strip().removeprefix("./")
        parts = text.split("/")
        if not text or os.path.isabs(text) or ".." in parts:
            raise DefinitionError(
                f"{where}: key '{key}[{i}]': {pattern!r} must be a glob relative to the "
                'project root, inside it (e.g. "src/**/*.py")'
            )
        check_glob(text, where, f"{key}[{i}]")
    if not values:
        raise DefinitionError(f"{where}: key '{key}' is empty; list at least one glob, or leave the key out")


def changed_glob(pattern: str) -> re.Pattern[str]:
    """The regex of a `when.changed` glob, gitignore-style: a pattern without "/" matches a
    file name at any depth (`*.py`), one with "/" is anchored at the repository root
    (`src/**`, `/setup.py`), a trailing "/" means the whole folder (`docs/`). GlobError
    when it cannot be used (checked when the workflow is loaded)."""
    pattern = pattern.strip()
    if pattern.endswith("/"):
        pattern += "**"
    if pattern.startswith("/"):
        pattern = pattern[1:]
    elif "/" not in pattern:
        pattern = "**/" + pattern
    return glob_regex(pattern)


def branch_glob(pattern: str) -> re.Pattern[str]:
    """The regex of a `when.branch` pattern: `main`, `release/*` (one level), `feature/**`."""
    return glob_regex(pattern.strip().removeprefix("refs/heads/"))


def path_matches(path: str, pattern: str) -> bool:
    """Whether a repository path matches a `when.changed` glob (see changed_glob)."""
    return bool(changed_glob(pattern).match(path))


def branch_matches(branch: str, pattern: str) -> bool:
    """`main`, `release/*` (one level), `feature/**` (any depth)."""
    return bool(branch_glob(pattern).match(branch))


def _as_patterns(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(item) for item in value or ()]


# === 3.2. Masking secrets ===
# Secret values (from `secrets`, from variables whose names say secret, and their encoded
# forms) are replaced by *** in everything orchestrate prints or writes, also when a value
# is split across two chunks of a stream.


# patterns some paths need: plain strings, compiled (and cached by re) on first use, not at
# every start of a git hook
_VAR_REFERENCE_RE = r"\$\{([A-Za-z_][A-Za-z0-9_]*)"


def _secret_variable_names(data: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """Secret value -> "${NAME}" for every variable a definition error might otherwise quote:
    those listed in "secrets" and those referenced from a secret-named key anywhere in the
    file, found before validation so that an error in steps[0] cannot show a token that only
    steps[3]'s "token" key marks as secret."""
    names: dict[str, str] = {}
    listed = data.get("secrets")
    for var in listed if isinstance(listed, list) else ():
        if isinstance(var, str) and variables.get(var):
            names.setdefault(variables[var], f"${{{var}}}")
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        elif isinstance(value, str) and is_secret_key(key):
            for var in re.findall(_VAR_REFERENCE_RE, value):
                if variables.get(var):
                    names.setdefault(variables[var], f"${{{var}}}")
    return names


def _name_secrets(text: str, names: Mapping[str, str]) -> str:
    """text with every secret value (and its encoded forms) replaced by the ${NAME} it came
    from, or *** for a literal one: how a definition error quotes a secret."""
    for value, name in sorted(names.items(), key=lambda item: len(item[0]), reverse=True):
        for form in sorted(secret_forms(value) | {repr(value)[1:-1]}, key=len, reverse=True):
            if form in text:
                text = text.replace(form, name)
    return text


_PERCENT_ESCAPE_RE = r"%[0-9A-F]{2}"  # compiled on first use (secret_forms)


def secret_forms(secret: str) -> set[str]:
    """The ways programs print a secret: as it is, URL-encoded (quote with no safe character
    and with its default safe '/', quote_plus, and each with lower-case %xx as some encoders
    write them), JSON string escaped (ASCII-only and not) and XML-escaped."""
    from urllib.parse import quote, quote_plus

    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        # as XML text and attributes carry it (JUnit files tools write)
        secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"),
    }
    forms |= {re.sub(_PERCENT_ESCAPE_RE, lambda m: m.group().lower(), form) for form in forms if "%" in form}
    return {form for form in forms if form}


class Masker:
    """Replaces every secret value by *** (also its encoded forms: see secret_forms)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LEN:
                forms |= secret_forms(secret)
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted(forms, key=len, reverse=True)
        self.byte_secrets = [s.encode("utf-8", "surrogateescape") for s in self.secrets]

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def mask_bytes(self, data: bytes) -> bytes:
        for secret in self.byte_secrets:
            if secret in data:
                data = data.replace(secret, b"***")
        return data

    def mask_readable(self, text: str) -> str:
        """Text a step produced, fit for orchestrate's own lines and records: masked, escapes
        and control characters removed, and masked again, since removing `ESC[31m` or a NUL
        from the middle of a token puts the token back together."""
        return self.mask(readable(self.mask(text)))

    def mask_tree(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list):
            return [self.mask_tree(v) for v in value]
        if isinstance(value, dict):
            return {k: self.mask_tree(v) for k, v in value.items()}
        return value


_HOLD_ANCHOR = 16  # bytes of a secret's start searched for as one string (see _partial_secret)


def _partial_secret(buffer: bytes, secret: bytes) -> int:
    """The length of the longest end of buffer that is the start of secret (shorter than it).

    Linear in the secret's length, not quadratic (slicing secret[:n] for every n cost 3 s
    on 20 MB of output with a 120 KB secret): an end of 16 bytes or more must begin with
    the secret's first 16 bytes, which bytes.find locates in C; the few shorter ends are
    compared directly. Each place found is checked without copying, longest first."""
    longest = min(len(secret) - 1, len(buffer))
    if longest <= 0:
        return 0
    view, whole = memoryview(buffer), memoryview(secret)
    anchor = secret[:_HOLD_ANCHOR]
    if longest >= len(anchor):
        pos = buffer.find(anchor, len(buffer) - longest)
        while pos >= 0 and len(buffer) - pos >= len(anchor):
            if view[pos:] == whole[: len(buffer) - pos]:
                return len(buffer) - pos
            pos = buffer.find(anchor, pos + 1)
    for size in range(min(longest, len(anchor) - 1), 0, -1):
        if view[len(buffer) - size :] == whole[:size]:
            return size
    return 0


class StreamMasker:
    """Masks a byte stream whose secrets may be split across two writes: it holds back only
    a suffix that could still become a secret, so output stays live."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        if not self.masker:
            return data
        buffer = self.masker.mask_bytes(self.pending + data)
        hold = max(_partial_secret(buffer, secret) for secret in self.masker.byte_secrets)
        self.pending = buffer[len(buffer) - hold :] if hold else b""
        return buffer[: len(buffer) - hold] if hold else buffer

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self.masker.mask_bytes(rest)


# === 3.3. Terminal and XML-safe text ===
# What may reach a terminal or an XML file: control characters and ANSI sequences removed
# or kept on purpose, characters XML 1.0 forbids replaced.


_ANSI_RE = lazy_regex(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


_CONTROL_RE = lazy_regex(r"[\x00-\x08\x0b-\x1f\x7f]")


def readable_text(data: bytes) -> str:
    """Bytes a step printed, as text fit for a record: decoded leniently, escapes removed."""
    return readable(data.decode("utf-8", "replace"))


def readable(text: str) -> str:
    """Text without terminal escapes and control characters (newlines and tabs kept)."""
    if _plain(text):  # most text: no escape, no control character (no regex to compile or run)
        return text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ANSI_RE.sub("", text.replace("\r\n", "\n"))
    return _CONTROL_RE.sub("", text.replace("\r", "\n"))


def _plain(text: str) -> bool:
    """ASCII without control characters other than tab, newline and carriage return."""
    return text.isascii() and text.replace("\n", "").replace("\t", "").replace("\r", "").isprintable()


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The characters XML 1.0 forbids, listed directly. The same set written as the complement of the
# allowed ranges ("[^\x09\x0a\x0d\x20-\ud7ff...\U0010ffff]") takes ~5 ms to compile, at every
# start of every command (python -X importtime); this one ~0.5 ms, and substitutes faster too.
_XML_ILLEGAL_RE = lazy_regex("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """Text that XML 1.0 can carry: escapes removed, forbidden characters shown as \\xNN
    (pytest's junitxml does the same)."""
    if _plain(text):
        return text
    text = _ANSI_RE.sub("", text)
    return _XML_ILLEGAL_RE.sub(
        lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256 else "\\u%04x" % ord(m.group()), text
    )


# === 3.4. Paths ===
# Paths shown to people (relative to the project root) and containment checks.


def _display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# === 4. Workflow model ===
# What a workflow is once loaded: its steps, settings and run options, and what a step's
# run produces (results, test cases) and the events a run reports to its sinks.


@dataclass
class KeySpec:
    """A type-specific key of a step type: its allowed types and whether it is required."""

    types: tuple[type, ...]
    required: bool = False
    item_type: type | None = None


@dataclass
class Step:
    """One validated step, its values interpolated."""

    index: int
    name: str
    type: str
    config: dict[str, Any]
    resolved: dict[str, Any]  # the whole step definition, its ${NAME} values interpolated
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    continue_on_error: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    when: dict[str, Any] = field(default_factory=dict)
    required: bool = False
    shard: str = "all"
    label: str = ""
    definition_sha256: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # as written, before ${VAR}
    needs: list[str] | None = None  # None: the step depends on the step above it
    sources: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    # the ${NAME}s the step's strings and the workflow's env used, with the values they had
    # (in memory only: a record keeps their keyed hash, values_sha256)
    variables: dict[str, str | None] = field(default_factory=dict)

    @property
    def when_status(self) -> str:
        return self.when.get("status", "success")


@dataclass
class Workflow:
    """A validated workflow file."""

    name: str
    path: Path
    description: str
    env: dict[str, str]
    steps: list[Step]
    secrets: set[str]
    sha256: str
    display_path: str = ""
    warnings: list[str] = field(default_factory=list)
    # every string that used a ${NAME}: (where, key, names), and the union of those names
    references: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    variables_used: set[str] = field(default_factory=set)


@dataclass
class Settings:
    """Project settings from <root>/orchestrate.json."""

    cypress_modules: dict[str, str] = field(default_factory=dict)
    keep_runs: int = DEFAULT_KEEP_RUNS
    jobs: int | None = None  # steps at once; None: the number of CPUs
    raw: dict[str, Any] = field(default_factory=dict)
    pre_push_checkout: str = "working-tree"  # or "pushed": check the pushed commit in a worktree
    pre_push_share: list[str] = field(default_factory=list)  # untracked paths linked into it
    root: Path | None = None  # the project root the file was read from


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


# \Z, not $: '$' also matches before a trailing newline, and "w\n" would become a file name
_PLAIN_NAME_RE = lazy_regex(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")


def _describe_type(types: tuple[type, ...]) -> str:
    if types == (int, float):
        return "a number"
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _value_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return _TYPE_NAMES.get(type(value), type(value).__name__).replace("an ", "").replace("a ", "")


def check_plain_name(name: str, what: str) -> str:
    """A name that becomes a file name: no separators, no traversal, no control characters."""
    if not isinstance(name, str) or not _PLAIN_NAME_RE.match(name) or ".." in name:
        shown = repr(shorten_middle(str(name)))
        raise UsageError(
            f"{what} {shown} is not a plain name: use letters, digits, '_', '-' and '.', "
            f"at most 100 characters, no '/' or '..'"
        )
    return name


def check_workflow_name(name: str) -> str:
    if name.endswith(".json"):
        name = name[: -len(".json")]
    return check_plain_name(name, "workflow name")


def _canonical_hash(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_hex(data.encode("utf-8", "surrogatepass"))


@dataclass
class TestCase:
    """A test case a step reports itself (Cypress), for the JUnit report."""

    __test__ = False  # not a pytest class
    name: str
    classname: str
    time: float
    status: str
    message: str = ""
    text: str = ""
    file: str = ""  # the test's file relative to the project root, where known

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classname": self.classname,
            "time": self.time,
            "status": self.status,
            "message": self.message,
            "text": self.text,
            "file": self.file,
        }


@dataclass
class StepResult:
    """What a runner returns: the step's status, message and extra record fields."""

    status: str
    message: str = ""
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    testcases: list[TestCase] = field(default_factory=list)


@dataclass
class RunOptions:
    """The options of one `orchestrate run`."""

    dry_run: bool = False
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    keep_going: bool = False
    quiet: bool = False
    json_output: bool = False
    debug: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    junit_xml: Path | None = None
    shard: tuple[int, int] | None = None
    git_hook: str | None = None
    from_ref: str | None = None
    to_ref: str | None = None
    push_remote: str | None = None
    push_url: str | None = None
    run_id: str | None = None
    jobs: int | None = None  # steps at once; None: settings.jobs, else the number of CPUs
    output: str | None = None  # live | grouped | prefixed; None: live unless steps can overlap
    isolated: bool = False  # run in a temporary worktree of the commit being checked
    html_report: Path | None = None  # --html-report: the run's HTML report, also written here
    workflow_from_git_config: bool = False  # git config orchestrate.prePushWorkflow overrides NAME (the hook)
    git: Any = None  # what section 7 learned before the run (push, compared changes, skips)
    kill_grace: float = KILL_GRACE_S  # SIGTERM, then SIGKILL this many seconds later
    # `variables` came from the HTTP API (run --vars-stdin): ${NAME} values only, never put
    # into any environment, and only names the workflow uses (check_http_variables)
    vars_from_http: bool = False
    force: bool = False  # --force / ORCHESTRATE_FORCE=1: no step is up to date
    resume_of: Any = None  # `resume RUN`: RUN's record (the new record names it in resumed_from)


def step_by_name_or_number(value: str, names: Sequence[str]) -> str | None:
    """The step a user means: its name, else its number (1 = the first, as `logs` counts)."""
    if value in names:
        return value
    if value.isdigit() and 1 <= int(value) <= len(names):
        return names[int(value) - 1]
    return None


class RunSink:
    """Receives the events of one run. The engine calls a sink's methods one at a time (steps
    that run in parallel threads take turns), so a sink needs no lock of its own; it keeps
    whatever per-step state it needs keyed by the step's index."""

    def run_started(self, workflow: Workflow, record: dict[str, Any], masker: Masker) -> None:
        """Before any step."""

    def step_started(self, step: Step, entry: dict[str, Any]) -> None:
        """A step starts (its entry is `running`)."""

    def step_skipped(self, step: Step, entry: dict[str, Any]) -> None:
        """A step will not run; entry["message"] says why."""

    def step_reused(self, step: Step, entry: dict[str, Any]) -> None:
        """A step took over an earlier run's result (entry["reused_from"]) instead of running."""

    def step_finished(self, step: Step, entry: dict[str, Any], log_path: Path) -> None:
        """A step ended (passed, failed or skipped by its runner); its log is complete."""

    def run_finished(self, workflow: Workflow, record: dict[str, Any]) -> None:
        """After the last step, once the record and the JUnit report are written."""

    def tick(self) -> None:
        """Called now and then while steps run (live status lines)."""

    def debug(self, text: str) -> None:
        """With --debug: a command orchestrate is about to run."""


# === 5. Run store ===


RUN_ID_RE = lazy_regex(r"^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{6,32}\Z")


_HEAD_PEEK_RE = rb'\n "(status|workflow)": "([^"\\\n]{0,100})"'  # compiled on first use (RunStore._peek)


_LOOSE_RUN_ID_RE = lazy_regex(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z")


_NEWEST_FIRST = 64  # RunStore.newest_ids: picked without sorting every name


def utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _epoch_ms(value: Any) -> int | None:
    """Milliseconds since the epoch of a record timestamp ("2026-11-27T15:40:00.123Z", as
    utc_now writes them), without importing datetime at the end of every run."""
    if not isinstance(value, str) or len(value) != 24 or value[10] != "T" or value[-1] != "Z":
        return None
    try:
        year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
        hour, minute, second, milli = int(value[11:13]), int(value[14:16]), int(value[17:19]), int(value[20:23])
    except ValueError:
        return None
    # days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146097 + day_of_era - 719468
    return ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli


def step_offsets(record: Mapping[str, Any]) -> list[float | None] | None:
    """Each step's start, in seconds after the run started, when some steps of the run
    overlapped in time (ran in parallel); None when they ran one after another."""
    spans = []
    for entry in record.get("log") or ():
        start, end = _epoch_ms(entry.get("started_at")), _epoch_ms(entry.get("finished_at"))
        spans.append((start, end if end is not None else start))
    timed = sorted((s, e) for s, e in spans if s is not None and e is not None)
    latest_end = None
    for start, end in timed:
        if latest_end is not None and start < latest_end:
            break
        latest_end = end if latest_end is None else max(latest_end, end)
    else:
        return None
    origin = _epoch_ms(record.get("started_at")) or timed[0][0]
    return [None if s is None else max(0, s - origin) / 1000 for s, _ in spans]


def new_run_id() -> str:
    """Sortable by start time (UTC, milliseconds) and unique across concurrent runs."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1000):03d}Z-" + os.urandom(3).hex()


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _LOOSE_RUN_ID_RE.match(run_id):
        shown = repr(shorten_middle(str(run_id)))
        raise UsageError(f"{shown} is not a run id (ids look like 20261127T154000123Z-1a2b3c; see: orchestrate runs)")
    return run_id


def _hostname() -> str:
    """gethostname(2), which is uname's nodename on POSIX: without importing socket (~3 ms at
    every start, -X importtime) for the one name."""
    return os.uname().nodename


def pid_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, so a reused pid is not taken for our run."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int | None, start: str | None = None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        current = pid_start_time(pid)
        if current is not None and current != start:
            return False
    return True


def write_atomic(path: Path, data: bytes, mode: int = RUNS_FILE_MODE, *, durable: bool = True) -> None:
    """Temporary file in the same folder, flush, fsync, os.replace: a reader or a crash never
    sees a torn file (the pipx and git approach). The temporary file is created anew, never
    opened through a link planted at its name; os.replace replaces a link at `path` itself.
    Without `durable` there is no fsync: for caches, where a file a power cut left empty or
    missing costs a rebuild or work done again, never a wrong answer (a reader still never
    sees half of an old file and half of a new one)."""
    # pid and thread in the name: steps finishing in parallel threads never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_thread.get_native_id()}.tmp")
    _unlink_quietly(tmp)  # a leftover of a killed writer with the same pid and thread id
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def make_runs_dirs(path: Path, runs_dir: Path) -> None:
    """Create `path` and every folder between it and `runs_dir` with RUNS_DIR_MODE. mkdir's
    mode is masked by the umask and never widened: with umask 000, Path.mkdir()'s default
    0o777 made Cypress report and artifact folders world-writable. A symbolic link (or a file)
    on the way is refused with StoreError, so a link planted under runs/ never leads a write
    outside it."""
    import stat

    current = runs_dir
    for part in path.relative_to(runs_dir).parts:
        current = current / part
        try:
            os.mkdir(current, RUNS_DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create {current}: {exc.strerror or exc}") from None
        try:
            info = os.lstat(current)
        except OSError as exc:
            raise StoreError(f"cannot create {current}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StoreError(
                f"{current} is {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a folder'}; "
                f"orchestrate does not write through it: remove it"
            )


def copy_into_runs(source: Path, target: Path, runs_dir: Path) -> None:
    """Copy a file (a screenshot, a video) under runs/ as a new file with RUNS_FILE_MODE and the
    source's times: never through a link planted at `target`, never with the source's mode
    (a file Cypress wrote under umask 000 is world-writable)."""
    import shutil

    make_runs_dirs(target.parent, runs_dir)
    _unlink_quietly(target)  # a retry's copy, or a planted link: replaced, never followed
    info = source.stat()
    with (
        open(source, "rb") as reader,
        os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, RUNS_FILE_MODE), "wb") as writer,
    ):
        shutil.copyfileobj(reader, writer, READ_CHUNK)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def _dump_record(record: dict[str, Any], *, compact: bool = False) -> bytes:
    """A finished record is indented for the people who read it; a running one's snapshots
    are compact: json's C encoder does not indent, and the Python one it falls back to took
    a tenth of every short step's time (a 1,000-step record: 8.6 ms indented, 3.1 ms compact)."""
    if compact:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(record, indent=1, ensure_ascii=False)
    return text.encode("utf-8", "surrogateescape") + b"\n"


class StepEntry(TypedDict, total=False):
    """One step of a run record's "log" (what _pending_entry starts and the engine fills)."""

    step: str
    type: str
    status: str  # pending | running | passed | failed | skipped
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    exit_code: int | None
    attempts: int
    message: str
    output_tail: str
    log_file: str
    definition_sha256: str
    allowed_failure: bool
    values_sha256: str  # keyed hash (runs/.hash-key) of the ${NAME} values the step used
    tree_sha256: str | None  # its files under `sources`, or the commit and working tree
    inputs_sha256: str  # a `sources` step: definition, values and files together
    reused_from: str  # resume: the run whose result this step carries
    up_to_date_since: str  # `sources`: skipped, its inputs unchanged since this run passed it
    rerun_reason: str  # resume: why a step that had passed ran again
    tests_file: str  # runs/<run_id>/NN-step.tests.json: its test cases


class RunRecord(TypedDict, total=False):
    """runs/<run_id>.json (see SCHEMA_VERSION for its versions)."""

    schema_version: int
    run_id: str
    workflow: str
    status: str  # pending | running | failed | completed
    current: str | None
    running: list[str]
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    exit_code: int | None
    message: str
    pid: int | None
    pid_start: str | None
    host: str
    trigger: dict[str, Any]
    workflow_file: str
    workflow_sha256: str
    options: dict[str, Any]
    log: list[StepEntry]
    junit: str
    interrupted: bool
    journal_seq: int
    resumed_from: str


def migrate_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of an older schema_version in today's shape (on read; files are not rewritten)."""
    if record.get("schema_version") == 1:
        current = record.get("current")
        record["running"] = [current] if isinstance(current, str) and record.get("status") == "running" else []
        record["schema_version"] = 2
    if record.get("schema_version") == 2:
        record["schema_version"] = 3  # every v3 key is optional: a v2 record is a v3 one without them
    return record


def check_record(record: Mapping[str, Any]) -> None:
    """Before every write: a record that readers would refuse is orchestrate's bug, never
    something to put on disk."""
    problem = _record_shape_problem(record)
    if problem is None and record.get("schema_version") != SCHEMA_VERSION:
        problem = f"schema_version {record.get('schema_version')!r} is not {SCHEMA_VERSION}"
    if problem is not None:
        raise AssertionError(f"run record {record.get('run_id')!r} is malformed: {problem}")


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "workflow": (str,),
    "status": (str,),
    "current": (str, type(None)),
    "started_at": (str, type(None)),
    "finished_at": (str, type(None)),
    "duration_s": (int, float, type(None)),
    "exit_code": (int, type(None)),
    "message": (str, type(None)),
    "pid": (int, type(None)),
    "trigger": (dict, type(None)),
    "log": (list,),
    "running": (list,),
}


_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (str,),
    "status": (str,),
    "message": (str, type(None)),
    "duration_s": (int, float, type(None)),
    "output_tail": (str, type(None)),
    "log_file": (str, type(None)),
}


def _record_shape_problem(record: Mapping[str, Any]) -> str | None:
    """The types every reader relies on; a record written by hand or damaged otherwise is
    reported as unreadable instead of crashing `runs` for every other record."""
    for key, types in _RECORD_FIELDS.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            return f"key '{key}' has the wrong type"
    if record.get("status") not in RUN_STATUSES:
        return f"status {record.get('status')!r} is not one of {', '.join(RUN_STATUSES)}"
    for i, entry in enumerate(record.get("log", [])):
        if not isinstance(entry, dict):
            return f"log[{i}] is not an object"
        for key, types in _ENTRY_FIELDS.items():
            if key in entry and (not isinstance(entry[key], types) or isinstance(entry[key], bool)):
                return f"log[{i}].{key} has the wrong type"
    return None


class RunStore:
    """runs/<run_id>.json (snapshot), runs/<run_id>.journal (append-only step updates between
    snapshots) and runs/<run_id>/ (logs, junit.xml, artifacts)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir

    # paths
    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{check_run_id(run_id)}.json"

    def journal_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{check_run_id(run_id)}.journal"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / check_run_id(run_id)

    def junit_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "junit.xml"

    # writing
    def ensure_dir(self) -> None:
        try:
            self.runs_dir.mkdir(mode=RUNS_DIR_MODE, parents=True, exist_ok=True)
            if not os.access(self.runs_dir, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise StoreError(
                f"cannot write run records to {self.runs_dir}: {exc.strerror or exc} "
                f"(make it writable, or pass --runs-dir)"
            ) from None

    def create(self, record: dict[str, Any]) -> None:
        """Write a new record; never replaces an existing one (os.link is exclusive)."""
        check_record(record)
        self.ensure_dir()
        path = self.record_path(record["run_id"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new.tmp")
        try:
            # a running run's record is compact until it ends (see _dump_record)
            write_atomic(tmp, _dump_record(record, compact=record.get("status") == "running"))
            try:
                os.link(tmp, path)
            finally:
                _unlink_quietly(tmp)
        except FileExistsError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write_snapshot(self, record: dict[str, Any], *, compact: bool = False) -> int:
        """Replace the record atomically; returns its size in bytes."""
        check_record(record)
        path = self.record_path(record["run_id"])
        data = _dump_record(record, compact=compact)
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc} (the previous record is intact)") from None
        return len(data)

    # reading
    def load(self, run_id: str) -> dict[str, Any]:
        path = self.record_path(run_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no run '{run_id}' in {self.runs_dir} (see: orchestrate runs)") from None
        except OSError as exc:
            raise RecordUnreadable(f"{path}: unreadable: {exc.strerror or exc}") from None
        return self._parse(path, data)

    def _parse(self, path: Path, data: bytes) -> dict[str, Any]:
        try:
            record = json.loads(data.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as exc:
            raise RecordUnreadable(f"{path}: unreadable: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or "run_id" not in record:
            raise RecordUnreadable(f"{path}: unreadable: not a run record")
        version = record.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RecordUnreadable(f"{path}: unreadable: schema_version {version!r} is not a version number")
        if version > SCHEMA_VERSION:
            raise RecordUnreadable(
                f"{path}: unreadable: schema_version {version!r} is newer than this orchestrate "
                f"understands ({SCHEMA_VERSION}); upgrade orchestrate"
            )
        record = migrate_record(record)
        self._apply_journal(record)
        problem = _record_shape_problem(record)
        if problem:  # every reader (runs, status, logs, prune, junit) may rely on these types
            raise RecordUnreadable(f"{path}: unreadable: not a run record: {problem}")
        return self._settle(record)

    def _apply_journal(self, record: dict[str, Any]) -> None:
        if record.get("status") not in ("running", "pending") and not record.get("journal_seq"):
            return
        try:
            journal = self.journal_path(record["run_id"])
        except UsageError:
            return  # a hand-made record with a strange id: it has no journal of ours
        try:
            lines = journal.read_bytes().splitlines()
        except FileNotFoundError:
            return  # no step has been recorded since the last snapshot
        except OSError as exc:  # never show a stale record as if it were current
            raise RecordUnreadable(f"{journal}: unreadable: {exc.strerror or exc}") from None
        seen = record.get("journal_seq", 0)
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                break  # a line torn by a crash: everything before it stands
            if not isinstance(event, dict) or not isinstance(event.get("seq", 0), int):
                break  # not a line orchestrate wrote: stop trusting the journal here
            if event.get("seq", 0) <= seen:
                continue
            index = event.get("index")
            log = record.get("log")
            if isinstance(index, int) and isinstance(log, list) and 0 <= index < len(log) and "entry" in event:
                log[index] = event["entry"]
            for key in ("current", "running"):
                if key in event:
                    record[key] = event[key]
            seen = event.get("seq", seen)

    def _settle(self, record: dict[str, Any]) -> dict[str, Any]:
        """A run left 'running' by a process that no longer exists is failed (interrupted)."""
        if (
            record.get("status") == "running"
            and record.get("host") in (None, _hostname())
            and not process_alive(record.get("pid"), record.get("pid_start"))
        ):
            record["status"] = "failed"
            record["message"] = f"interrupted: orchestrate (pid {record.get('pid')}) stopped before the run ended"
            record["interrupted"] = True
            for entry in record.get("log", []):
                if entry.get("status") == "running":
                    entry["status"] = "failed"
                    entry["message"] = "interrupted"
        return record

    def list_ids(self) -> list[str]:
        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.runs_dir}: {exc.strerror or exc}") from None
        match = _LOOSE_RUN_ID_RE.match  # once: 10,000 names
        ids = [name[:-5] for name in names if name.endswith(".json") and name[0] != "." and match(name[:-5])]
        ids.sort(reverse=True)
        return ids

    def newest_ids(self) -> Iterator[str]:
        """list_ids(), lazily: a reader that stops after the newest few (runs --limit 20, the
        latest run) does not sort and check every name (5 ms of a listing at 10,000 runs; the
        directory listing itself is the rest, and only an index could spare it)."""
        import heapq

        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read {self.runs_dir}: {exc.strerror or exc}") from None
        candidates = [name[:-5] for name in names if name.endswith(".json") and name[0] != "."]
        match = _LOOSE_RUN_ID_RE.match
        first = heapq.nlargest(_NEWEST_FIRST, candidates)
        yield from (run_id for run_id in first if match(run_id))
        if len(candidates) > _NEWEST_FIRST:
            candidates.sort(reverse=True)
            yield from (run_id for run_id in candidates[_NEWEST_FIRST:] if match(run_id))

    def summaries(
        self, workflow: str | None = None, status: str | None = None, limit: int | None = 20
    ) -> list[dict[str, Any]]:
        """Newest first; reads only as many records as it needs. With a filter, a record whose
        first bytes show it cannot match (another workflow; a finished status that is not the
        one asked for) is not parsed (a record of 1,000 steps is 400 KB)."""
        rows: list[dict[str, Any]] = []
        for run_id in self.newest_ids():
            if limit is not None and len(rows) >= limit:
                break
            if workflow is not None or status is not None:
                head = self._peek(run_id)
                if workflow is not None and head.get("workflow") not in (None, workflow):
                    continue
                if status is not None and head.get("status") in ("failed", "completed") and head["status"] != status:
                    continue  # a finished snapshot never changes again
            try:
                record = self.load(run_id)
            except (RecordUnreadable, UsageError) as exc:
                if workflow is None and status is None:
                    rows.append({"run_id": run_id, "unreadable": str(exc)})
                continue
            if workflow is not None and record.get("workflow") != workflow:
                continue
            if status is not None and record.get("status") != status:
                continue
            rows.append(record)
        return rows

    def may_hold_more_than(self, keep: int) -> bool:
        """Whether runs/ may hold more than `keep` runs, with one stat(2) where the filesystem
        counts a folder's subfolders in its link count (ext4, XFS, tmpfs: every run has its
        folder); elsewhere (btrfs says 1) from the listing, which took 17 ms at 10,000 runs."""
        try:
            links = os.stat(self.runs_dir).st_nlink
        except OSError:
            return False
        if links >= 2:
            return links - 2 > keep  # prune then lists runs/ once, within its budget
        return len(self.list_ids()) > keep

    def prune(self, keep: int, *, batch: int | None = None, budget_s: float | None = None) -> list[str]:
        """Delete the oldest finished runs beyond the newest `keep` finished ones. Running and
        pending runs neither count nor go: 500 runs queued on the HTTP server once made
        every finished record, CLI runs included, "older than the newest 300". With `batch`
        and `budget_s` (after a run), at most that many go and the work stops once the budget
        is spent: the next runs take the rest (thousands at once took seconds)."""
        removed: list[str] = []
        import shutil

        deadline = None if budget_s is None else time.monotonic() + budget_s
        finished = 0
        for run_id in self.newest_ids():
            if (batch is not None and len(removed) >= batch) or (
                deadline is not None and len(removed) >= PRUNE_AT_LEAST and time.monotonic() > deadline
            ):
                return removed  # temporary files of dead writers wait for a prune with time to spare
            if self._peek_status(run_id) not in ("failed", "completed"):
                try:  # the full read settles a run whose process is gone as failed
                    status = self.load(run_id).get("status")
                except (UsageError, RecordUnreadable):
                    continue  # gone meanwhile, or unreadable: the user may want to look at it
                if status in ("running", "pending"):
                    continue
            finished += 1
            if finished <= keep:
                continue
            try:
                self.load(run_id)
            except (UsageError, RecordUnreadable):
                continue  # prune leaves unreadable records alone
            for path in (self.record_path(run_id), self.journal_path(run_id)):
                _unlink_quietly(path)
            shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
            removed.append(run_id)
        self._remove_stale_temp_files()
        return removed

    def _peek_status(self, run_id: str) -> str | None:
        """The status a snapshot starts with (see _peek). A finished snapshot never changes
        again: prune reads only this much of each record it keeps, instead of parsing
        keep_runs records after every run."""
        status = self._peek(run_id).get("status")
        return status if status in RUN_STATUSES else None

    def _peek(self, run_id: str) -> dict[str, str]:
        """ "workflow" and "status" as a snapshot's first bytes give them (finished records are
        written with one-space indentation, so only the top level's keys read '\\n "status": ');
        a key that is not there (a running run's compact snapshot, a record written by hand,
        unreadable) is missing, and the caller reads the whole record."""
        try:
            with open(self.record_path(run_id), "rb") as handle:
                head = handle.read(512)
        except OSError:
            return {}
        return {
            match.group(1).decode(): match.group(2).decode("utf-8", "replace")
            for match in re.finditer(_HEAD_PEEK_RE, head)
        }

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of writers killed mid-write (their pid is in the name)."""
        try:
            names = os.listdir(self.runs_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                parts = name.split(".")
                pid = next((int(p) for p in parts if p.isdigit()), None)
                if pid is not None and not process_alive(pid):
                    _unlink_quietly(self.runs_dir / name)


def step_entry(record: Mapping[str, Any], step: str) -> dict[str, Any] | None:
    """A step's entry in a record, as `logs` and the HTTP API take STEP: the step of that
    name, else the step of that 1-based number (a step named "2" is that step, not the second)."""
    entries = [e for e in record.get("log") or [] if isinstance(e, dict)]
    for entry in entries:
        if entry.get("step") == step:
            return entry
    if step.isdigit() and 1 <= int(step) <= len(entries):
        return entries[int(step) - 1]
    return None


def step_log_path(store: RunStore, run_id: str, entry: Mapping[str, Any] | None) -> Path | None:
    """A step's log file, or None while it has none. Only the file name from the record is
    trusted: the file is always looked up inside the run's own folder, whatever the record says."""
    if entry is None or not entry.get("log_file"):
        return None
    path = store.run_dir(run_id) / Path(str(entry["log_file"])).name
    return path if path.is_file() else None


class RunRecorder:
    """Keeps one run's record current: a journal line per step update and now and then a full
    snapshot, so recording a step costs the same at step 1,000 as at step 1 (rewriting the
    whole record each time would be O(N^2)).

    Durability: every line is written (a SIGKILL loses nothing: the kernel has it); only a power
    cut can lose what was not synced. The journal is synced after a step that ran for
    SYNC_AFTER_STEP_S or longer, and every snapshot (the record's creation, the periodic ones,
    the run's end) is fsync'd before it replaces the record. One fdatasync per step cost
    0.3 ms on a quiet disk and 1.7 ms while another process synced (bench/run.py), more than
    the rest of a short step's bookkeeping; a power cut loses at most the outcomes of the
    short steps since the last sync, and the record then reads as interrupted.

    A snapshot rewrites every step's entry, pending ones included, so one every
    SNAPSHOT_INTERVAL_S would still cost O(N) per interval: 12-21 snapshots of 420 KB took
    0.8-2.5 s of a 1,000-step run (cProfile, busy disk). So a snapshot also waits until the
    journal written since the last one is half its size: the bytes rewritten stay
    proportional to the bytes journaled, whatever N."""

    def __init__(self, store: RunStore, record: dict[str, Any], snapshot_interval: float | None = None) -> None:
        self.store = store
        self.record = record
        self.seq = 0
        self.journal_fd: int | None = None
        self.snapshot_interval = SNAPSHOT_INTERVAL_S if snapshot_interval is None else snapshot_interval
        self.last_snapshot = time.monotonic()  # the record was just written whole
        self.snapshot_bytes = 0  # size of the last snapshot
        self.journal_bytes = 0  # journal written since the last snapshot
        self.running: list[str] = []  # names of the steps running now, in start order
        # steps finish in worker threads when they run in parallel: one writer at a time
        self.lock = _thread.RLock()

    def snapshot(self, *, final: bool = False) -> None:
        self.record["journal_seq"] = self.seq
        self.snapshot_bytes = self.store.write_snapshot(self.record, compact=not final)
        self.journal_bytes = 0
        self.last_snapshot = time.monotonic()

    def step_started(self, index: int, entry: dict[str, Any]) -> None:
        """A step starts: it joins `running` (in start order; `current` is the first of them).
        The line is written but not fsync'd: a crash loses at most that "running" mark, which
        the settled record reports as interrupted anyway."""
        with self.lock:
            self.running.append(entry["step"])
            self._update(index, entry, durable=False)

    def step_finished(self, index: int, entry: dict[str, Any]) -> None:
        """A step's outcome (passed, failed or skipped); synced when the step ran for a second
        or more (losing its outcome to a power cut would cost that much work again)."""
        duration = entry.get("duration_s")
        durable = isinstance(duration, (int, float)) and duration >= SYNC_AFTER_STEP_S
        with self.lock:
            if entry["step"] in self.running:
                self.running.remove(entry["step"])
            self._update(index, entry, durable=durable)

    def _update(self, index: int, entry: dict[str, Any], durable: bool) -> None:
        self.record["log"][index] = entry
        self.record["running"] = list(self.running)
        self.record["current"] = self.running[0] if self.running else None
        self.seq += 1
        if (
            time.monotonic() - self.last_snapshot >= self.snapshot_interval
            and 2 * self.journal_bytes >= self.snapshot_bytes
        ):
            self.snapshot()
            return
        line = (
            json.dumps(
                {
                    "seq": self.seq,
                    "index": index,
                    "entry": entry,
                    "current": self.record["current"],
                    "running": self.record["running"],
                },
                ensure_ascii=False,
            ).encode("utf-8", "surrogateescape")
            + b"\n"
        )
        try:
            if self.journal_fd is None:
                self.journal_fd = os.open(
                    self.store.journal_path(self.record["run_id"]),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW,
                    RUNS_FILE_MODE,
                )
            os.write(self.journal_fd, line)
            self.journal_bytes += len(line)
            if durable:
                # fdatasync: the appended bytes and the file's size, without the timestamps fsync adds
                getattr(os, "fdatasync", os.fsync)(self.journal_fd)
        except OSError as exc:
            raise StoreError(
                f"cannot write {self.store.journal_path(self.record['run_id'])}: {exc.strerror or exc}"
            ) from None

    def finish(self) -> None:
        with self.lock:
            self._finish()

    def _finish(self) -> None:
        self.snapshot(final=True)
        if self.journal_fd is not None:
            os.close(self.journal_fd)
            self.journal_fd = None
        _unlink_quietly(self.store.journal_path(self.record["run_id"]))


def name_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "step"


def step_log_name(step: Step, total: int) -> str:
    width = max(2, len(str(total)))
    return f"{step.index + 1:0{width}d}-{name_slug(step.name)}.log"


# === 5.1. The index beside the records (runs/.index/) ===
# What a run needs to know about earlier ones without reading them all: the last run that
# passed each (workflow, step) with recorded inputs (`sources`, resume), found in O(1) runs.
# One small file per key, written atomically and not synced (a cache: a power cut costs a
# rebuild or a step run again); every row is checked against the record it names before it
# is believed, so a torn, stale or forged index costs a rebuild from the records, never a
# wrong answer. runs.jsonl (synced when rebuilt; a power cut may lose the lines of the runs
# that ended just before it) lists every run (run_id, workflow, status, started_at),
# appended as runs end, for tools that want the list without reading every record;
# orchestrate itself never reads it (`runs` lists runs/ and peeks at the records).


INDEX_DIR = ".index"


INDEX_VERSION = 1


def _index_key(workflow: str, step: str) -> str:
    return sha256_hex(f"{workflow}\0{step}".encode("utf-8", "surrogateescape"))[:40]


def _pass_of(entry: Mapping[str, Any], run_id: str) -> str | None:
    """The run whose passing result an entry stands for: its own when it passed, the one it
    carries when it was re-used or up to date; None when it holds no pass with inputs."""
    if not isinstance(entry.get("inputs_sha256"), str):
        return None
    if entry.get("status") == "passed":
        reused = entry.get("reused_from")
        return reused if isinstance(reused, str) and reused else run_id
    since = entry.get("up_to_date_since")
    if entry.get("status") == "skipped" and isinstance(since, str) and since:
        return since
    return None


class StepIndex:
    """runs/.index/: steps/<key>.json (the newest record holding a pass of a step, with the
    inputs it passed with) and runs.jsonl; rebuilt from the records when missing or when a
    row does not match its record."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.folder = store.runs_dir / INDEX_DIR
        self.rebuilt = False  # at most one rebuild per process and index

    def _row_path(self, workflow: str, step: str) -> Path:
        return self.folder / "steps" / f"{_index_key(workflow, step)}.json"

    def _lock(self) -> Any:
        """An exclusive flock on runs/.index/lock while the index is written (runs end at once)."""
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def held() -> Any:
            make_runs_dirs(self.folder / "steps", self.store.runs_dir)
            fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | os.O_CLOEXEC, RUNS_FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return held()

    def _read_row(self, workflow: str, step: str) -> dict[str, Any] | bool | None:
        """The row, None when there is none, False when it is unusable (torn, foreign)."""
        try:
            data = self._row_path(workflow, step).read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return False
        try:
            row = json.loads(data)
        except ValueError:
            return False
        if (
            not isinstance(row, dict)
            or row.get("version") != INDEX_VERSION
            or row.get("workflow") != workflow
            or row.get("step") != step
            or not isinstance(row.get("run_id"), str)
            or not isinstance(row.get("passed_in"), str)
            or not isinstance(row.get("inputs_sha256"), str)
        ):
            return False
        return row

    def _confirmed(self, row: Mapping[str, Any]) -> bool:
        """Whether the record a row names still holds that pass (not pruned, not changed)."""
        try:
            record = self.store.load(row["run_id"])
        except OrchestrateError:
            return False
        if record.get("workflow") != row["workflow"]:
            return False
        entry = next((e for e in record.get("log", []) if e.get("step") == row["step"]), None)
        return (
            entry is not None
            and entry.get("inputs_sha256") == row["inputs_sha256"]
            and _pass_of(entry, row["run_id"]) == row["passed_in"]
        )

    def last_pass(self, workflow: str, step: str) -> dict[str, Any] | None:
        """{"run_id", "passed_in", "inputs_sha256", ...} of the newest run holding a pass of the
        step, or None. Reads one row and one record, however many runs there are."""
        if not (self.folder / "version").is_file():
            self.rebuild()
        row = self._read_row(workflow, step)
        if row is None and not self.rebuilt:
            return None
        if row is False or (isinstance(row, dict) and not self._confirmed(row)):
            if self.rebuilt:
                return None
            self.rebuild()
            row = self._read_row(workflow, step)
        return row if isinstance(row, dict) and self._confirmed(row) else None

    def _row(self, record: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any] | None:
        passed_in = _pass_of(entry, record["run_id"])
        if passed_in is None:
            return None
        return {
            "version": INDEX_VERSION,
            "workflow": record.get("workflow"),
            "step": entry.get("step"),
            "run_id": record["run_id"],
            "passed_in": passed_in,
            "inputs_sha256": entry["inputs_sha256"],
            "finished_at": entry.get("finished_at"),
        }

    @staticmethod
    def _summary(record: Mapping[str, Any]) -> bytes:
        return (
            json.dumps(
                {
                    "run_id": record.get("run_id"),
                    "workflow": record.get("workflow"),
                    "status": record.get("status"),
                    "started_at": record.get("started_at"),
                },
                ensure_ascii=False,
            )
            + "\n"
        ).encode("utf-8", "surrogateescape")

    def record_run(self, record: Mapping[str, Any]) -> None:
        """A finished run into the index: its passes (a row is replaced only by a newer run's)
        and its line in runs.jsonl."""
        if not (self.folder / "version").is_file():
            self.rebuild()
            return  # the rebuild read this run's record too
        with self._lock():
            for entry in record.get("log", []):
                row = self._row(record, entry)
                if row is None or not isinstance(row["workflow"], str) or not isinstance(row["step"], str):
                    continue
                current = self._read_row(row["workflow"], row["step"])
                if isinstance(current, dict) and current["run_id"] > row["run_id"]:
                    continue
                write_atomic(self._row_path(row["workflow"], row["step"]), _dump_record(row), durable=False)
            fd = os.open(
                self.folder / "runs.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW, RUNS_FILE_MODE
            )
            try:
                os.write(fd, self._summary(record))
            finally:
                os.close(fd)

    def rebuild(self) -> None:
        """Every row and runs.jsonl anew from the records (newest first: the first pass found
        for a step is its row). Unreadable records are left out."""
        self.rebuilt = True
        with self._lock():
            rows: dict[str, dict[str, Any]] = {}
            lines: list[bytes] = []
            for run_id in self.store.list_ids():
                try:
                    record = self.store.load(run_id)
                except OrchestrateError:
                    continue
                lines.append(self._summary(record))
                for entry in record.get("log", []):
                    row = self._row(record, entry)
                    if row is None or not isinstance(row["workflow"], str) or not isinstance(row["step"], str):
                        continue
                    rows.setdefault(_index_key(row["workflow"], row["step"]), row)
            steps = self.folder / "steps"
            with os.scandir(steps) as entries:  # _lock made the folder
                occupied = any(entries)
            if occupied:
                import shutil

                shutil.rmtree(steps, ignore_errors=True)
                make_runs_dirs(steps, self.store.runs_dir)
            for key, row in rows.items():
                write_atomic(steps / f"{key}.json", _dump_record(row), durable=False)
            # runs.jsonl is not checked when read, unlike the rows: its rebuild is synced
            write_atomic(self.folder / "runs.jsonl", b"".join(reversed(lines)))
            write_atomic(self.folder / "version", f"{INDEX_VERSION}\n".encode(), durable=False)


# === 6. Processes ===


class OutputSink:
    """Where one step's output goes: masked, to its log file, to the console, and into a
    bounded tail for the record. Output is handled in chunks, never whole in memory."""

    def __init__(
        self,
        log_path: Path | None,
        masker: Masker,
        console_write: Callable[[bytes], None] | None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.stream_masker = StreamMasker(masker)
        self.log_path = log_path
        self.log_file: Any = None  # created with the first byte: a silent step costs no file
        self.console_write = console_write
        self.on_idle = on_idle
        self.tail = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        """data may be a view of a buffer the caller reuses: nothing here keeps a reference."""
        self._emit(self.stream_masker.feed(data))  # type: ignore[arg-type]

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self.log_path is not None:
            try:
                if self.log_file is None:
                    # O_NOFOLLOW: a link planted at the log's name is not followed out of runs/
                    self.log_file = os.fdopen(
                        os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW, RUNS_FILE_MODE),
                        "ab",
                        buffering=0,
                    )
                self.log_file.write(data)
            except OSError as exc:  # disk full, quota, I/O error: the run cannot be recorded
                import errno

                path, self.log_path = self.log_path, None
                self._close_log()
                if exc.errno == errno.ELOOP:
                    raise StoreError(
                        f"cannot write {path}: it is a symbolic link; orchestrate does not write through it: remove it"
                    ) from None
                raise StoreError(
                    f"cannot write {path}: {exc.strerror or exc} (free some space, or pass --runs-dir)"
                ) from None
        if self.console_write is not None:
            self.console_write(data)
        self.tail += data[-TAIL_MAX_BYTES * 2 :]
        if len(self.tail) > TAIL_MAX_BYTES * 4:
            del self.tail[: len(self.tail) - TAIL_MAX_BYTES * 2]

    def flush(self) -> None:
        self._emit(self.stream_masker.flush())

    def line(self, text: str) -> None:
        self.write(text.encode("utf-8", "surrogateescape") + b"\n")

    def tail_text(self) -> str:
        text = self.stream_masker.masker.mask_readable(readable_text(bytes(self.tail[-TAIL_MAX_BYTES:])))
        lines = text.rstrip("\n").split("\n")
        return "\n".join(lines[-TAIL_MAX_LINES:])

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._close_log()

    def _close_log(self) -> None:
        log_file, self.log_file = self.log_file, None
        if log_file is not None:
            try:
                log_file.close()
            except OSError:
                pass


@dataclass
class ProcessResult:
    """How a step process ended (the end of what it printed is the sink's tail_text())."""

    exit_code: int | None
    timed_out: bool
    leftover_processes: int = 0  # what it left running after it exited, ended by orchestrate


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag plus a byte on a pipe that the output loop watches, so a
    signal interrupts a step at once without raising in the middle of a record write. `count`
    says how many arrived: a second one ends the step's processes without the grace period.
    `announce`, when set, is told at once what is being stopped (the engine prints it)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.announce: Callable[[str], None] | None = None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1
        try:
            os.write(self.write_fd, b"!")
        except OSError:
            pass

    def __enter__(self) -> SignalGuard:
        # only the main thread may set handlers; elsewhere (a server thread) signal.signal raises
        # ValueError and the guard just watches its pipe (asking threading costs 2 ms of start-up)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)

    def interrupt(self, signum: int) -> None:
        """Stop the run as if `signum` had arrived (every step watching this guard ends)."""
        self._handler(signum, None)

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def sleep(self, seconds: float) -> None:
        import select

        deadline = time.monotonic() + seconds
        while self.signum is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([self.read_fd], [], [], left)
        self.check()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# === 6.1. A step process's tree ===


# Each step attempt's processes carry ORCHESTRATE_STEP_TOKEN=<random> in their environment (the
# engine sets one per attempt, so steps running at the same time never find each other's). When
# a process ends, whatever it left running is ended too: its process group, and on Linux every
# process whose /proc/<pid>/environ carries the token, which finds what left the group (setsid,
# a double fork, nohup … &). Without /proc (macOS) only the group can be found. Zombies do not
# count: killpg(pgid, 0) succeeds on them, and a container's init may take seconds to reap them
# (a `sh -c "sleep 30"` timing out took 2.2 s instead of 1 because of that).
STEP_TOKEN_ENV = "ORCHESTRATE_STEP_TOKEN"


# a process ending sooner than this is swept with a scan of the pids allocated since it started
# (from /proc/loadavg's last pid); after a longer run the pids may have wrapped: a full scan
_QUICK_SCAN_S = 1.0


_QUICK_SCAN_PIDS = 64  # fewer pids allocated since then than this: each is looked up, /proc is not listed


def new_step_token() -> str:
    return os.urandom(8).hex()


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of a process, from /proc."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # io.open costs 4x as much
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = stat[stat.rindex(b")") + 2 :].split()
        return fields[0].decode("ascii", "replace"), int(fields[2]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


_NS_PER_TICK = 0  # of /proc/<pid>/stat's start time (SC_CLK_TCK); -1: no such clock here


_BOOT_TICKS_AGREE: bool | None = None  # whether boot_ticks() and /proc agreed (None: not checked yet)


def _check_boot_ticks(read_before: int, proc_start: int) -> None:
    """Where /proc counts start times on another clock than CLOCK_BOOTTIME (an emulated /proc),
    the boot clock is not used again in this process: a bound later than a step's real
    start would hide what it left running. One disagreement is final."""
    global _BOOT_TICKS_AGREE, _NS_PER_TICK
    if read_before <= proc_start <= read_before + 100:  # within a second
        if _BOOT_TICKS_AGREE is None:
            _BOOT_TICKS_AGREE = True
    else:
        _NS_PER_TICK = -1
        _BOOT_TICKS_AGREE = False


def boot_ticks() -> int | None:
    """CLOCK_BOOTTIME in the clock ticks of /proc/<pid>/stat's start time (the kernel counts
    it the same way, rounding down), or None where there is no such clock or no /proc."""
    global _NS_PER_TICK
    if not _NS_PER_TICK:
        usable = hasattr(time, "CLOCK_BOOTTIME") and os.path.isdir("/proc/self")
        _NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK") if usable else -1
    if _NS_PER_TICK < 0:
        return None
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


def _is_thread_group_leader(pid: int) -> bool:
    """Whether `pid` is a process, not another thread of one (/proc/<tid> exists for threads
    too, though listing /proc does not show them)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError, IndexError):
        return False
    return True


_LOADAVG_FD: int | None = None  # /proc/loadavg, kept open: pread renders it anew each time


def _last_pid() -> int | None:
    """The pid allocated last (/proc/loadavg's last field). Opening the file at every step
    cost 26 us of it, a pread on the open descriptor 6 us."""
    global _LOADAVG_FD
    try:
        if _LOADAVG_FD is None:
            _LOADAVG_FD = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_LOADAVG_FD, 256, 0).split()[-1])
    except (OSError, ValueError, IndexError):
        return None


class ProcessTree:
    """The processes one step process stands for: its group, and what carries its token."""

    def __init__(self, pgid: int, token: str, *, started_after: int | None = None) -> None:
        """`started_after`: boot_ticks() read before the process was started, a lower bound of
        its start time that spares reading /proc/<pgid>/stat (20 us of each short step). It
        only lets in more of the processes that started in the same tick, and none of those
        is in the step's new session or carries its token."""
        self.pgid = pgid
        self.needle = f"\0{STEP_TOKEN_ENV}={token}\0".encode()
        self.started = time.monotonic()
        if started_after is None or _BOOT_TICKS_AGREE is not True:
            # until one step's check has passed, every step reads /proc (steps start in parallel)
            stat = _proc_stat(pgid)
            if started_after is not None and stat is not None:
                _check_boot_ticks(started_after, stat[2])
            started_after = stat[2] if stat is not None else None
        self.start_ticks = started_after

    def members(self) -> dict[int, int] | None:
        """Live processes of the tree other than the step process itself, {pid: start ticks};
        None where /proc cannot tell (then only the group is known, through killpg)."""
        if self.start_ticks is None:
            return None
        pids = self._candidate_pids()
        if pids is None:
            return None
        found: dict[int, int] = {}
        own = os.getpid()
        for pid in pids:
            if pid in (own, self.pgid):
                continue
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X", "x") or stat[2] < self.start_ticks:
                continue
            if (stat[1] == self.pgid or self._tagged(pid)) and _is_thread_group_leader(pid):
                found[pid] = stat[2]
        return found

    def _candidate_pids(self) -> Iterable[int] | None:
        """The pids that may belong to the tree; None when /proc cannot be listed."""
        last = _last_pid()
        quick = last is not None and last >= self.pgid and time.monotonic() - self.started < _QUICK_SCAN_S
        if quick and last is not None and last - self.pgid <= _QUICK_SCAN_PIDS:
            # the few pids allocated since the step started: looked up one by one, without
            # listing /proc (0.1 ms a step, most of it for the one pid of a /bin/true)
            return range(self.pgid + 1, last + 1)
        try:
            names = os.listdir("/proc")
        except OSError:
            return None
        pids = [int(name) for name in names if name.isdigit()]
        if quick and last is not None:
            pids = [pid for pid in pids if self.pgid < pid <= last]
        return pids

    def _tagged(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            return False
        return self.needle in b"\0" + environ + b"\0"

    def signal(self, signum: int, pids: Mapping[int, int]) -> None:
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, start in pids.items():
            stat = _proc_stat(pid)
            if stat is not None and stat[2] == start:  # the same process, not a reused pid
                try:
                    os.kill(pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass


def stop_tree(
    tree: ProcessTree,
    process: Any,
    grace: float = KILL_GRACE_S,
    guard: SignalGuard | None = None,
    until: float | None = None,
    signals_seen: int | None = None,
) -> int:
    """End a step process's tree: SIGTERM, then SIGKILL after `grace` seconds, at `until` (the
    step's deadline), or at once when a signal beyond the `signals_seen` first ones arrives
    (default: those received so far). Returns how many processes besides the step process
    were found (what it left running, once it exited)."""
    if signals_seen is None:
        signals_seen = guard.count if guard is not None else 0
    found = tree.members()
    if process.poll() is not None and found is not None and not found:
        return 0  # the usual end of a step: nothing left, one scan
    if found is None and process.poll() is not None and not _group_alive(tree.pgid):
        return 0
    found = dict(found or {})
    tree.signal(signal.SIGTERM, found)
    kill_at = time.monotonic() + grace
    if until is not None:
        kill_at = min(kill_at, until)
    while True:
        if process.poll() is not None:
            alive = tree.members()
            if alive is None:
                if not _group_alive(tree.pgid):
                    break
            else:
                found.update(alive)
                if not alive:
                    break
        if time.monotonic() >= kill_at or (guard is not None and guard.count > signals_seen):
            break
        time.sleep(0.02)
    tree.signal(signal.SIGKILL, {**found, **(tree.members() or {})})
    process.wait()
    return len(found)


def end_process_group(
    process: Any, grace: float = KILL_GRACE_S, *, guard: SignalGuard | None = None, tree: ProcessTree | None = None
) -> int:
    """SIGTERM to the step's whole process group (and what carries its token), SIGKILL after
    the grace period."""
    pgid = process.pid
    if not isinstance(pgid, int) or pgid <= 0:
        # never signal group 0 (our own) or -1 (everything): only a fake process has such a pid
        process.wait()
        return 0
    return stop_tree(tree or ProcessTree(pgid, ""), process, grace, guard)


# The watchdog: a step runs in its own session (so a timeout or Ctrl-C can end its whole tree),
# which also means nothing ends it when orchestrate itself is killed with SIGKILL (or by the
# OOM killer): PR_SET_PDEATHSIG would only reach the direct child, and setting it from a
# preexec_fn is not safe once threads exist. So orchestrate starts one tiny /bin/sh per
# process that reads "+PGID" / "-PGID" lines from a pipe only orchestrate holds the write end
# of. When orchestrate dies, however it dies, the kernel closes that pipe and `read` sees end
# of file. Unless orchestrate said "bye" (a clean exit), the shell then ends every registered
# group and every process whose environment carries this orchestrate's ORCHESTRATE_WATCHDOG
# token (from /proc: that also catches a step started in the milliseconds between fork and
# registration, and anything that left the group): SIGTERM, then SIGKILL after the grace
# period, as end_process_group does. The shell sits in its own session, so a signal to
# orchestrate's process group does not take it down first. (dash's kill takes no "--".)
_WATCHDOG_SCRIPT = r"""
grace=$1 token=$2 groups=" "
while IFS= read -r line; do
  case $line in
    +*) groups="$groups${line#+} " ;;
    -*) g=${line#-}; case $groups in *" $g "*) groups="${groups%%" $g "*} ${groups#*" $g "}" ;; esac ;;
    bye) exit 0 ;;
  esac
done
tagged() {
  grep -la "ORCHESTRATE_WATCHDOG=$token" /proc/[0-9]*/environ 2>/dev/null |
    sed -n 's|^/proc/\([0-9][0-9]*\)/environ$|\1|p'
}
end() {
  for g in $groups; do kill "-$1" "-$g" 2>/dev/null; done
  for p in $(tagged); do kill "-$1" "$p" 2>/dev/null; done
}
end TERM
i=0
while [ "$i" -lt "$grace" ]; do
  alive=$(tagged)
  for g in $groups; do kill -0 "-$g" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && exit 0
  sleep 0.1; i=$((i + 1))
done
end KILL
"""


WATCHDOG_ENV = "ORCHESTRATE_WATCHDOG"


class StepWatchdog:
    """Ends this process's steps if it dies without ending them (see the comment above)."""

    def __init__(self, grace: float = KILL_GRACE_S) -> None:
        self.grace = grace
        self.token = os.urandom(8).hex()
        self.write_fd: int | None = None
        self.owner_pid = 0
        self.process: Any = None  # kept so Popen.__del__ does not warn while it waits for EOF
        self.released = ""  # "-PGID" lines not sent yet (see release)
        # steps may start processes from several threads: one writer at a time on the pipe, one
        # watchdog started (_thread: the threading module is not imported at start-up)
        import _thread

        self.lock = _thread.allocate_lock()

    def step_env(self, env: dict[str, str]) -> dict[str, str]:
        """The step's environment, tagged so the watchdog can find its processes."""
        with self.lock:
            self._ensure()
            return {**env, WATCHDOG_ENV: self.token}

    def _ensure(self) -> int | None:
        if self.write_fd is not None and self.owner_pid == os.getpid():
            return self.write_fd
        import atexit

        if self.owner_pid != os.getpid():
            self.token = os.urandom(8).hex()  # a forked copy gets its own
            self.released = ""
        read_fd, write_fd = os.pipe()  # not inheritable (PEP 446): steps never hold it open
        argv = [
            "/bin/sh",
            "-c",
            _WATCHDOG_SCRIPT,
            "orchestrate-watchdog",
            str(max(1, int(self.grace * 10))),
            self.token,
        ]
        try:
            if can_spawn():
                devnull = _devnull_write()
                self.process = SpawnedProcess(
                    spawn_process(argv, os.environ, stdin=read_fd, stdout=devnull, stderr=devnull, new_session=True)
                )
            else:
                import subprocess

                self.process = subprocess.Popen(
                    argv,
                    stdin=read_fd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError:
            os.close(write_fd)
            return None  # best effort: without /bin/sh, steps still end with every clean exit
        finally:
            os.close(read_fd)
        if self.owner_pid == 0:
            atexit.register(self.close)
        self.write_fd, self.owner_pid = write_fd, os.getpid()
        return write_fd

    def _send(self, line: str) -> None:
        with self.lock:
            self._write(line)

    def _write(self, line: str) -> None:  # with self.lock held
        fd = self._ensure()
        if fd is None:
            return
        lines, self.released = self.released + line, ""
        try:
            os.write(fd, lines.encode())
        except OSError:  # the watchdog was killed: start a new one next time
            os.close(fd)
            self.write_fd = None

    def watch(self, pgid: int) -> None:
        if isinstance(pgid, int) and pgid > 1:  # never 0 or 1: 'kill -1' means every process
            self._send(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        """The group ended. Said with the next step's "+" line (or by flush), in one write: each
        write wakes the shell, which reads a byte at a time (0.1 ms a step, bench/run.py)."""
        if isinstance(pgid, int) and pgid > 1:
            with self.lock:
                self.released += f"-{pgid}\n"

    def flush(self) -> None:
        """Tell the watchdog now what release() held back (at the end of a run: a process that
        lives on must not leave it holding the number of a group that is gone)."""
        with self.lock:
            if self.released and self.write_fd is not None and self.owner_pid == os.getpid():
                self._write("")

    def close(self) -> None:
        """A clean exit: every step has been ended by run_process; nothing to do."""
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.write_fd is not None and self.owner_pid == os.getpid():
            try:
                os.write(self.write_fd, b"bye\n")
                os.close(self.write_fd)
            except OSError:
                pass
            self.write_fd = None


WATCHDOG = StepWatchdog()


_DEVNULL_FD: int | None = None


def _devnull() -> int:
    """One /dev/null for every step's stdin (subprocess.DEVNULL opens it again per process)."""
    global _DEVNULL_FD
    if _DEVNULL_FD is None:
        with WATCHDOG.lock:  # two threads starting their first step at once open it once
            if _DEVNULL_FD is None:
                _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY)
    return _DEVNULL_FD


_DEVNULL_WRITE_FD: int | None = None


def _devnull_write() -> int:
    """/dev/null for writing, opened once (the watchdog's stdout and stderr)."""
    global _DEVNULL_WRITE_FD
    if _DEVNULL_WRITE_FD is None:
        _DEVNULL_WRITE_FD = os.open(os.devnull, os.O_WRONLY)
    return _DEVNULL_WRITE_FD


def devnull_onto(fd: int) -> None:
    """Descriptor `fd` is /dev/null from now on (reads end, writes vanish); OSError if not."""
    null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself when it is closed
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the process exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# === 6.2. Starting a process without the subprocess module ===
# subprocess costs about 5 ms to import (threading, selectors, locale, contextlib) and
# Popen about 0.2 ms more than os.posix_spawn for each step (bench/run.py). os.posix_spawn
# cannot change the working directory, so it is used where none is needed (the step runs
# where orchestrate runs, git takes -C) and subprocess everywhere else, and whenever a test
# has put a stand-in for subprocess.Popen (pytest-subprocess: the Cypress tests).


class _PipeEnd:
    """The read end of a child's pipe, as Popen.stdout is used here: fileno() and close()."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def fileno(self) -> int:
        if self.fd is None:
            raise ValueError("I/O operation on closed pipe")
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # as a Popen's pipes are closed once nobody holds them
        try:
            self.close()
        except Exception:  # OSError, or a module already torn down at exit
            pass


class SpawnedProcess:
    """A child started by spawn_process: what run_process, stop_tree and GitCall use of a Popen."""

    def __init__(self, pid: int, stdout: int | None = None, stderr: int | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = _PipeEnd(stdout) if stdout is not None else None
        self.stderr = _PipeEnd(stderr) if stderr is not None else None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __del__(self) -> None:
        if self.returncode is None:  # reaped if it has ended (Popen keeps a list for later ones)
            try:
                self.poll()
            except Exception:  # OSError, or a module already torn down at exit
                pass

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Everything the child printed on its stdout and stderr pipes, then its exit; TimeoutError
        when that takes longer than `timeout` seconds."""
        import select

        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        out = err = b""
        streams = {stream.fileno(): (stream, bytearray()) for stream in (self.stdout, self.stderr) if stream}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        while streams:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.pid}")
            for fd, _ in poller.poll(int(left * 1000) + 1):
                chunk = os.read(fd, READ_CHUNK)
                if chunk:
                    streams[fd][1].extend(chunk)
                else:
                    poller.unregister(fd)
                    stream, data = streams.pop(fd)
                    stream.close()
                    if stream is self.stdout:
                        out = bytes(data)
                    else:
                        err = bytes(data)
        self.wait()
        return out, err


def _subprocess_timeout() -> type[BaseException]:
    """subprocess.TimeoutExpired if subprocess is loaded (a Popen may have been used), else
    TimeoutError (what SpawnedProcess raises): catching it never imports subprocess."""
    module = sys.modules.get("subprocess")
    return module.TimeoutExpired if module is not None else TimeoutError


def can_spawn(cwd: Path | str | None = None) -> bool:
    """Whether spawn_process may start a child here (see the comment above it)."""
    if not hasattr(os, "posix_spawn") or not sys.platform.startswith("linux"):
        return False
    # (another thread may be importing subprocess right now: a module without Popen yet)
    popen = getattr(sys.modules.get("subprocess"), "Popen", None)
    if popen is not None and getattr(popen, "__module__", "subprocess") != "subprocess":
        return False  # a stand-in for Popen, which a test wants used
    if cwd is None:
        return True
    try:
        return os.path.samestat(os.stat(cwd), os.stat("."))
    except OSError:
        return False


def _executable(name: str, env: Mapping[str, str]) -> str:
    """The file exec runs for argv[0], found on the child's PATH as subprocess finds it."""
    if "/" in name:
        return name
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    import errno

    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def spawn_process(
    argv: Sequence[str], env: Mapping[str, str], *, stdin: int, stdout: int, stderr: int, new_session: bool = False
) -> int:
    """os.posix_spawn with what subprocess.Popen(close_fds=True, restore_signals=True) gives a
    child: only stdin, stdout and stderr open (an inheritable descriptor orchestrate was given
    is closed), SIGPIPE and SIGXFSZ back to their default (Python ignores them), optionally
    its own session. Returns the pid; FileNotFoundError when argv[0] is not found."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_DUP2, stdin, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 2 and fd not in (stdin, stdout, stderr) and os.get_inheritable(fd):
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:  # the listing's own descriptor, closed by now
                pass
    except (OSError, ValueError):
        pass
    return os.posix_spawn(
        _executable(argv[0], env),
        list(argv),
        dict(env),
        file_actions=actions,
        setsid=new_session,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
    )


def run_process(
    argv: Sequence[str] | str,
    *,
    cwd: Path,
    env: dict[str, str],
    sink: OutputSink,
    timeout: float | None = None,
    guard: SignalGuard | None = None,
    grace: float = KILL_GRACE_S,
    deadline: float | None = None,
    stdin: int | None = None,
    name: str | None = None,
) -> ProcessResult:
    """The one way orchestrate starts a process: stdin closed (or the given descriptor), its own
    process group (so a timeout or Ctrl-C ends the whole tree), stdout and stderr streamed in
    large chunks. `deadline` (time.monotonic()) is when the step's attempt runs out of time,
    shared by every process the attempt starts; `timeout` is the same for this process alone.
    Safe to call from several threads at once."""
    if timeout:
        deadline = min(deadline if deadline is not None else float("inf"), time.monotonic() + timeout)
    if deadline is not None and time.monotonic() >= deadline:
        return ProcessResult(exit_code=None, timed_out=True)
    token = env.get(STEP_TOKEN_ENV) or new_step_token()
    child_env = WATCHDOG.step_env({**env, STEP_TOKEN_ENV: token})
    started_after = boot_ticks()
    process = _start_process(argv, cwd, child_env, stdin)
    WATCHDOG.watch(process.pid)
    assert process.stdout is not None
    try:
        out_fd = process.stdout.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream, not a pipe
        return _read_unselectable(process, sink)
    tree = ProcessTree(process.pid, token, started_after=started_after)
    _widen_pipe(out_fd)
    pump = _OutputPump(process, tree, out_fd, sink, guard=guard, grace=grace, deadline=deadline)
    try:
        pump.run()
    except BaseException as exc:
        pump.stop_after(exc, name)
        raise
    finally:
        pump.close()
    code = process.wait()
    timed_out = pump.timed_out
    return ProcessResult(exit_code=None if timed_out else code, timed_out=timed_out, leftover_processes=pump.leftovers)


def _start_process(argv: Sequence[str] | str, cwd: Path, child_env: dict[str, str], stdin: int | None) -> Any:
    """Start argv (a string is run by /bin/sh) in a session of its own, stdout and stderr on one
    pipe; a StepFailure in one line when it cannot start."""
    shell = isinstance(argv, str)
    try:
        if can_spawn(cwd):
            return _spawn_with_pipe(["/bin/sh", "-c", argv] if isinstance(argv, str) else argv, child_env, stdin)
        import subprocess

        return subprocess.Popen(
            argv,
            shell=shell,
            executable="/bin/sh" if shell else None,
            cwd=str(cwd),
            env=child_env,
            stdin=_devnull() if stdin is None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        missing = exc.filename if exc.filename and str(exc.filename) != str(cwd) else argv[0]
        if not Path(cwd).is_dir():
            raise StepFailure(f"working directory {cwd} does not exist") from None
        raise StepFailure(f"command not found: {missing!r} (is it installed and on PATH?)") from None
    except PermissionError as exc:
        raise StepFailure(f"cannot execute {argv[0] if not shell else '/bin/sh'!r}: {exc.strerror}") from None
    except OSError as exc:
        shown = (argv if len(argv) <= 200 else argv[:200] + "…") if isinstance(argv, str) else argv[0]
        raise StepFailure(f"cannot start {shown!r}: {exc.strerror or exc}") from None


def _spawn_with_pipe(argv: Sequence[str], child_env: dict[str, str], stdin: int | None) -> SpawnedProcess:
    """spawn_process with stdout and stderr on a new pipe whose read end the result owns."""
    read_end, write_end = os.pipe()
    try:
        pid = spawn_process(
            argv,
            child_env,
            stdin=_devnull() if stdin is None else stdin,
            stdout=write_end,
            stderr=write_end,
            new_session=True,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return SpawnedProcess(pid, stdout=read_end)


def _widen_pipe(out_fd: int) -> None:
    """Non-blocking reads, and on Linux a 1 MiB pipe instead of 64 KiB, so a read can take a
    whole READ_CHUNK."""
    os.set_blocking(out_fd, False)
    try:
        import fcntl

        fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, READ_CHUNK)
    except (ImportError, AttributeError, OSError):
        pass  # elsewhere, or above /proc/sys/fs/pipe-max-size: the default pipe works


_FREE_READ_BUFFERS: list[memoryview] = []  # of READ_CHUNK bytes, for _OutputPump


class _OutputPump:
    """The loop that watches one running process: its output (handed to the sink in large
    chunks), its exit, the deadline and signals, until the process and what it left running
    have ended."""

    def __init__(
        self,
        process: Any,
        tree: ProcessTree,
        out_fd: int,
        sink: OutputSink,
        *,
        guard: SignalGuard | None,
        grace: float,
        deadline: float | None,
    ) -> None:
        import select

        self.process, self.tree, self.out_fd, self.sink = process, tree, out_fd, sink
        self.guard, self.grace, self.deadline = guard, grace, deadline
        # One buffer for every read: os.read() allocates a fresh READ_CHUNK each time, and the
        # kernel faulted its pages in anew (194,000 minor faults for 1 GB of output, 1 every
        # 5 KB; 1,800 this way). The chunk handed on is a copy of what was read, as before.
        # Buffers go back to a pool when the process is done with: a new zeroed 1 MiB at every
        # start was 40 us of each short step.
        try:
            self.view = _FREE_READ_BUFFERS.pop()  # atomic: steps in parallel threads take their own
        except IndexError:
            self.view = memoryview(bytearray(READ_CHUNK))
        self.poller = select.poll()  # the selectors module costs 1 ms of start-up for the same poll(2)
        self.poller.register(out_fd, select.POLLIN)
        if guard is not None:
            self.poller.register(guard.read_fd, select.POLLIN)
        # A step that closes its stdout and stderr (`exec >/dev/null 2>&1; sleep 30`) ends the
        # output long before it exits: the wait for its exit is watched like the output, for the
        # deadline and for signals, woken by a pidfd where there is one.
        self.exit_fd = _pidfd(process.pid)
        if self.exit_fd is not None:
            self.poller.register(self.exit_fd, select.POLLIN)
        self.timed_out = False
        self.eof = False
        self.leftovers = 0
        self.exited_at: float | None = None

    def run(self) -> None:
        while not self._turn():
            pass

    def _turn(self) -> bool:
        """One pass of the loop; True when the process is done with."""
        now = time.monotonic()
        self._check_signal()
        if self.deadline is not None and now >= self.deadline:
            self.timed_out = True
            stop_tree(self.tree, self.process, self.grace, self.guard)
            self._drain_rest()
            return True
        if self.exited_at is None and self.process.poll() is not None:
            self.exited_at = now
        if self.exited_at is not None and (self.eof or now - self.exited_at > 0.2):
            self._end_leftovers()
            return True
        events = self.poller.poll(self._wait_ms(now))
        if not events and self.sink.on_idle is not None:
            self.sink.on_idle()
        if any(fd == self.out_fd for fd, _ in events):
            self._read_available()
        return False

    def _check_signal(self) -> None:
        if self.guard is not None and self.guard.signum is not None:
            raise RunInterrupted(self.guard.signum)

    def _drain_rest(self) -> None:
        if not self.eof:
            _drain(self.out_fd, self.sink)

    def _end_leftovers(self) -> None:
        """The step is done. What it left running ends with it (a push must not hang on a
        forgotten daemon, and the pipe may be held by one): SIGTERM, the grace period (bounded
        by the deadline), SIGKILL."""
        self.leftovers = stop_tree(self.tree, self.process, self.grace, self.guard, until=self.deadline)
        self._drain_rest()
        if self.leftovers:
            plural = "es" if self.leftovers > 1 else ""
            self.sink.line(f"orchestrate: ended {self.leftovers} process{plural} the step left running")
        self._check_signal()

    def _wait_ms(self, now: float) -> int:
        """How long poll() may sleep: long while output may come, short once the process exited
        (without a pidfd, its exit is noticed by asking), never past the deadline."""
        if self.eof:
            wait = 0.5 if self.exit_fd is not None else 0.05
        else:
            wait = 0.5 if self.exited_at is None else 0.05
        if self.deadline is not None:
            wait = max(0.0, min(wait, self.deadline - now))
        return int(wait * 1000) + (wait > 0)  # milliseconds, rounded up

    def _read_available(self) -> None:
        """While output flows, read until the pipe is empty (EAGAIN) before asking the selector
        again, gathering the reads into one buffer: a writer's small writes (8 KiB from `head`)
        make many short reads, and a select, a waitpid and a pass through the sink for each
        cost more than the read itself."""
        view, filled = self.view, 0
        for _ in range(256):
            try:
                size = os.readv(self.out_fd, [view[filled:]])
            except BlockingIOError:
                break
            if not size:
                self.eof = True
                break
            filled += size
            if filled == READ_CHUNK:
                self.sink.write(view)  # a view: the sink copies only what it keeps
                filled = 0
                if self.guard is not None and self.guard.signum is not None:
                    break
        if filled:
            self.sink.write(view[:filled])
        if self.eof:
            self.poller.unregister(self.out_fd)

    def stop_after(self, exc: BaseException, name: str | None) -> None:
        """The loop ended by an exception (a signal, or a bug): the whole tree ends now."""
        interrupted = isinstance(exc, RunInterrupted)
        guard = self.guard
        announce = guard.announce if interrupted and guard is not None and name is not None else None
        if announce is not None and self.process.poll() is None:  # poll() only when it is needed
            announce(f"stopping {name} (SIGTERM sent; SIGKILL in {self.grace:g} s; Ctrl-C again to kill now)")
        # the first signal stopped the step: any later one, even one that arrives while the
        # tree is still being looked for, means "kill now"
        stop_tree(self.tree, self.process, self.grace, guard, signals_seen=1 if interrupted else None)

    def close(self) -> None:
        if self.exit_fd is not None:
            os.close(self.exit_fd)
        self.process.stdout.close()
        WATCHDOG.release(self.process.pid)
        self.sink.flush()
        _FREE_READ_BUFFERS.append(self.view)  # nothing holds a view of it: chunks are copies


def _read_unselectable(process: Any, sink: OutputSink) -> ProcessResult:
    """Output that is not a pipe (a stand-in process such as pytest-subprocess's) cannot be
    watched for a timeout or a signal: read it to the end."""
    output, _ = process.communicate()  # in memory already: nothing to stream
    try:
        if output:
            sink.write(output if isinstance(output, bytes) else str(output).encode())
    finally:
        sink.flush()
    code = process.wait()
    return ProcessResult(exit_code=code, timed_out=False)


def _drain(fd: int, sink: OutputSink) -> None:
    import select

    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            return
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            return
        sink.write(chunk)


# === 7. Git and CI ===
#
# Everything orchestrate knows about git and CI systems: the pre-push hook's ref lines, the
# files a push or a CI comparison changes, `when.changed` / `when.branch` gates,
# ORCHESTRATE_SKIP, CI detection for the run's trigger, GitHub Actions / GitLab console
# markup, and installing the pre-push hook.  The parsing, matching and rendering functions
# are pure; only `run_git`, the `*_changes` functions, `git_info`, `read_github_event`,
# `append_step_summary` and the hook install functions touch processes or files.
#
# What a run takes from here is wired explicitly by the CLI (run_wiring in section 13):
# prepare_git_state before the run (read the push, end a run with nothing to check), git_gate
# (ORCHESTRATE_SKIP, when.changed, when.branch), git_step_environment (the steps' environment),
# GitHubStepSummary ($GITHUB_STEP_SUMMARY) and detect_ci_output (console markup).


GIT_TIMEOUT = 60.0  # seconds; a git call that takes longer is stuck (a lock, a dead NFS mount)


# pre-commit's list (pre_commit/git.py no_git_env): variables git sets for a hook that would
# point a nested git at the wrong repository (GIT_DIR, GIT_INDEX_FILE, GIT_WORK_TREE...) are
# dropped; these configure transport or identity and are kept.
_GIT_ENV_KEEP = frozenset(
    {
        "GIT_EXEC_PATH",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSL_CAINFO",
        "GIT_SSL_NO_VERIFY",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "GIT_ALLOW_PROTOCOL",
        "GIT_ASKPASS",
        "GIT_TERMINAL_PROMPT",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    }
)


_GIT_ENV_KEEP_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")


# githooks(5): all-zero object names mean "no object": 40 hex digits for SHA-1 repositories,
# 64 for SHA-256 ones.
_ZERO_OID_RE = lazy_regex(r"\A(?:0{40}|0{64})\Z")


_OID_RE = lazy_regex(r"\A(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")


class GitError(OrchestrateError):
    """git could not be run, or a git command failed where orchestrate needs its answer."""

    exit_code = 3


def strip_git_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the GIT_* variables a hook exports (GIT_DIR, GIT_INDEX_FILE, GIT_PREFIX...)."""
    return {
        key: value
        for key, value in env.items()
        if not key.startswith("GIT_") or key in _GIT_ENV_KEEP or key.startswith(_GIT_ENV_KEEP_PREFIXES)
    }


# What orchestrate's own git calls (status, rev-parse, rev-list, diff, config: all local and
# read-only) may take from the environment: where the user's config and identity live, the
# locale, and the SSH agent and proxies a future remote call would need. Nothing else: a
# GIT_CONFIG_COUNT/KEY/VALUE triple in the environment once set core.fsmonitor, which
# `git status` runs as a command (and LD_PRELOAD, GIT_EXEC_PATH or GIT_DIR steer git too).
_GIT_CALL_ENV = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "XDG_CONFIG_HOME",
        "SSH_AUTH_SOCK",
        "GNUPGHOME",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_CEILING_DIRECTORIES",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSL_CAINFO",
    }
)


def git_call_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The clean, fixed environment of orchestrate's own git calls (see _GIT_CALL_ENV)."""
    child = {k: v for k, v in env.items() if k in _GIT_CALL_ENV or k.startswith("LC_")}
    child["GIT_TERMINAL_PROMPT"] = "0"
    child["GIT_OPTIONAL_LOCKS"] = "0"  # `git status` must not take index.lock during a push
    return child


def run_git(args: Sequence[str], cwd: Path, *, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    """Run `git ARGS` in `cwd` and return its stdout (utf-8, undecodable bytes escaped).

    The one place orchestrate runs git (GitCall): stdin is closed and prompts are off so it can
    never wait for a user (a push from an IDE has nobody to answer), the environment is a fixed
    few variables (no GIT_DIR or other hook variable, so `cwd` decides the repository; no
    GIT_CONFIG_* or LD_*), and a hung git is ended after GIT_TIMEOUT.
    """
    return GitCall(args, cwd, env).output(check=check)


class GitCall:
    """One git command (with run_git's rules), started at once and read with output(): the
    independent git calls of a pre-push run overlap instead of following one another."""

    def __init__(self, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.argv = ["git", *args]
        self.cwd = cwd
        self.result: tuple[int, bytes, bytes] | None = None
        child_env = git_call_environment(os.environ if env is None else env)
        self.process: Any = None
        try:
            if can_spawn():  # git -C: the same as starting git there
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                try:
                    pid = spawn_process(
                        ["git", "-C", str(cwd), *args], child_env, stdin=_devnull(), stdout=out_w, stderr=err_w
                    )
                except BaseException:
                    os.close(out_r)
                    os.close(err_r)
                    raise
                finally:
                    os.close(out_w)
                    os.close(err_w)
                self.process = SpawnedProcess(pid, stdout=out_r, stderr=err_r)
            else:
                import subprocess

                self.process = subprocess.Popen(
                    self.argv,
                    cwd=cwd,
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
        except FileNotFoundError:
            self.process = None

    def output(self, check: bool = True) -> str:
        """git's stdout; GitError when git is missing, hangs, or (with check) fails."""
        if self.process is None:
            raise GitError("git: command not found; install git or put it on PATH")
        if self.result is None:
            try:
                out, err = self.process.communicate(timeout=GIT_TIMEOUT)
            except (TimeoutError, _subprocess_timeout()):
                import shlex

                self.process.kill()
                self.process.communicate()
                raise GitError(f"{shlex.join(self.argv)}: no answer after {GIT_TIMEOUT:.0f}s in {self.cwd}") from None
            self.result = (self.process.returncode, out, err)
        code, out, err = self.result
        if check and code != 0:
            import shlex

            why = err.decode("utf-8", "replace").strip().splitlines()
            raise GitError(f"{shlex.join(self.argv)} failed in {self.cwd}: {why[-1] if why else f'exit {code}'}")
        return out.decode("utf-8", "surrogateescape")

    def succeeded(self) -> bool:
        try:
            self.output()
        except GitError:
            return False
        return True


def _git_lines(args: Sequence[str], cwd: Path) -> list[str]:
    """`run_git` for -z output: the NUL-separated items."""
    return [item for item in run_git(args, cwd).split("\0") if item]


# === 7.1. Push refs ===


def is_zero_oid(oid: str) -> bool:
    return bool(_ZERO_OID_RE.match(oid))


@dataclass(frozen=True)
class PushRef:
    """One ref line git writes to a pre-push hook's stdin."""

    local_ref: str
    local_oid: str
    remote_ref: str
    remote_oid: str

    @property
    def is_deletion(self) -> bool:
        return is_zero_oid(self.local_oid)

    @property
    def is_new(self) -> bool:
        """The remote has no such ref yet (a new branch or tag)."""
        return is_zero_oid(self.remote_oid)

    @property
    def is_tag(self) -> bool:
        return self.remote_ref.startswith("refs/tags/")

    @property
    def branch(self) -> str | None:
        """The remote branch name pushed to ("main" for refs/heads/main), None for others."""
        prefix = "refs/heads/"
        return self.remote_ref[len(prefix) :] if self.remote_ref.startswith(prefix) else None

    def as_dict(self) -> dict[str, str]:
        return {
            "local_ref": self.local_ref,
            "local_oid": self.local_oid,
            "remote_ref": self.remote_ref,
            "remote_oid": self.remote_oid,
        }


@dataclass(frozen=True)
class PushInfo:
    """What `git push` is about to send: the remote and every ref line."""

    remote: str
    url: str
    refs: tuple[PushRef, ...]

    @property
    def updates(self) -> tuple[PushRef, ...]:
        """Branch updates: what the workflow checks (no deletions, no tags)."""
        return tuple(ref for ref in self.refs if not ref.is_deletion and not ref.is_tag)

    @property
    def branches(self) -> list[str]:
        return [ref.branch for ref in self.updates if ref.branch]

    def as_dict(self) -> dict[str, Any]:
        return {"remote": self.remote, "url": self.url, "refs": [ref.as_dict() for ref in self.refs]}


def parse_push_refs(text: str, remote: str = "", url: str = "") -> PushInfo:
    """Parse git's pre-push stdin: `<local ref> SP <local oid> SP <remote ref> SP <remote oid>`.

    Blank lines are ignored. A malformed line is a UsageError naming it: it means orchestrate
    was not started by git (or by a hook that mangled stdin), and guessing would let a push
    through unchecked.
    """
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not (_OID_RE.match(fields[1]) and _OID_RE.match(fields[3])):
            raise UsageError(
                f"--git-hook pre-push: stdin line {number} is not "
                f"'<local ref> <local oid> <remote ref> <remote oid>': {shorten_middle(line, 200)!r} "
                "(git writes these lines; run the hook from git, or pass --from-ref/--to-ref)"
            )
        refs.append(PushRef(*fields))
    return PushInfo(remote=remote, url=url, refs=tuple(refs))


def push_skip_reason(push: PushInfo, has_new_commits: Callable[[PushRef], bool]) -> str | None:
    """Why this push needs no workflow run at all, or None when it must be checked.

    Skipped: nothing to push (git still runs the hook for "Everything up-to-date"), only
    deletions, only tags, or branch updates whose commits all are on the remote already
    (`git push origin main:copy`). `has_new_commits` answers the last question with git.
    """
    if not push.refs:
        return "nothing to push (everything up to date)"
    if all(ref.is_deletion for ref in push.refs):
        names = ", ".join(ref.remote_ref for ref in push.refs)
        return f"push only deletes {names}"
    updates = push.updates
    if not updates:
        tags = ", ".join(
            ref.remote_ref.removeprefix("refs/tags/") for ref in push.refs if ref.is_tag and not ref.is_deletion
        )
        return f"push only carries tags ({tags})"
    if not any(has_new_commits(ref) for ref in updates):
        return "push carries no new commits (every pushed commit is on the remote already)"
    return None


class PushedCommits:
    """The commits each pushed ref brings that the remote lacks, oldest first with their parents
    (what `git push` sends): one `git rev-list` per ref, all started together and each read
    once (push_skip_reason, push_range and push_changes share them). Against the remote's tip
    when this repository has that object; else (a new branch, a tip never fetched) the commits
    on no remote ref: a second call, only then."""

    def __init__(self, root: Path, refs: Iterable[PushRef] = ()) -> None:
        self.root = root
        self.calls: dict[PushRef, tuple[GitCall, bool]] = {}
        self.found: dict[PushRef, tuple[list[list[str]], bool]] = {}
        for ref in refs:
            self._start(ref)

    def _start(self, ref: PushRef) -> None:
        against_tip = not ref.is_new
        exclude = [f"^{ref.remote_oid}"] if against_tip else ["--not", "--remotes"]
        call = GitCall(["rev-list", "--reverse", "--topo-order", "--parents", ref.local_oid, *exclude], self.root)
        self.calls[ref] = (call, against_tip)

    def _read(self, ref: PushRef) -> tuple[list[list[str]], bool]:
        if ref not in self.found:
            if ref not in self.calls:
                self._start(ref)
            call, against_tip = self.calls[ref]
            if against_tip and not call.succeeded():  # git does not have the remote's tip
                call = GitCall(
                    ["rev-list", "--reverse", "--topo-order", "--parents", ref.local_oid, "--not", "--remotes"],
                    self.root,
                )
                against_tip = False
            self.found[ref] = ([line.split() for line in call.output().splitlines() if line.strip()], against_tip)
        return self.found[ref]

    def new_commits(self, ref: PushRef) -> list[str]:
        return [line[0] for line in self._read(ref)[0]]

    def has_remote_tip(self, ref: PushRef) -> bool:
        """Whether the range starts at the remote's tip (this repository has that commit)."""
        return self._read(ref)[1]

    def parent_of_first(self, ref: PushRef) -> str:
        """The first parent of the oldest new commit ("" for a root commit or no new commit)."""
        lines = self._read(ref)[0]
        return lines[0][1] if lines and len(lines[0]) > 1 else ""


def push_has_new_commits(root: Path, ref: PushRef, commits: PushedCommits | None = None) -> bool:
    return bool((commits or PushedCommits(root)).new_commits(ref))


@dataclass(frozen=True)
class ChangeSet:
    """What a run compares against, for `when.changed` and `when.branch`.

    files is None when there is nothing to compare with (a terminal run without
    --from-ref): `changed` gates then stay open rather than silently skipping work.
    """

    files: tuple[str, ...] | None = None
    description: str = ""
    branches: tuple[str, ...] = ()
    from_ref: str = ""
    to_ref: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "from_ref": self.from_ref,
            "to_ref": self.to_ref,
            "branches": list(self.branches),
            "files": None if self.files is None else len(self.files),
        }


def push_range(root: Path, ref: PushRef, commits: PushedCommits | None = None) -> tuple[str, str]:
    """(from, to) object names for one pushed ref: from is "" when every commit is new."""
    commits = commits or PushedCommits(root)
    if commits.has_remote_tip(ref):
        return ref.remote_oid, ref.local_oid
    if not commits.new_commits(ref):
        return ref.local_oid, ref.local_oid
    return commits.parent_of_first(ref), ref.local_oid


def push_changes(
    root: Path, push: PushInfo, commits: PushedCommits | None = None, *, list_files: bool = True
) -> ChangeSet:
    """The files the pushed commits change: remote oid..local oid for an existing branch;
    for a new branch, from the parent of its first commit not on any remote ref. Without
    list_files (no step has a `when` gate to read them), files stays None and git diff is not run."""
    commits = commits or PushedCommits(root, push.updates)
    ranges = [push_range(root, ref, commits) for ref in push.updates]
    diffs = (
        [
            GitCall(["diff", "--name-only", "--no-renames", "-z", a, b], root)
            if a
            else GitCall(["ls-tree", "-r", "--name-only", "-z", b], root)  # a root commit: every file is new
            for a, b in ranges
            if a != b
        ]
        if list_files
        else []
    )
    files: set[str] = set()
    for call in diffs:
        files.update(item for item in call.output().split("\0") if item)
    first_from, first_to = ranges[0] if ranges else ("", "")
    names = ", ".join(ref.remote_ref.removeprefix("refs/heads/") for ref in push.updates)
    return ChangeSet(
        files=tuple(sorted(files)) if list_files else None,
        description=f"pushed to {push.remote or '?'}: {names}",
        branches=tuple(push.branches),
        from_ref=first_from,
        to_ref=first_to,
    )


def compare_changes(
    root: Path, from_ref: str, to_ref: str = "HEAD", *, branches: Sequence[str] = (), explicit: bool = True
) -> ChangeSet:
    """The files changed on `to_ref` since it left `from_ref` (`git diff from...to`, the
    merge-base comparison a pull request shows).

    An unknown ref given on the command line is a UsageError; one guessed from CI variables
    (a shallow clone lacks the base) only opens the gates, with the reason kept.
    """
    try:
        files = _git_lines(["diff", "--name-only", "--no-renames", "-z", f"{from_ref}...{to_ref}", "--"], root)
    except GitError as exc:
        hint = "fetch the full history in CI (actions/checkout fetch-depth: 0, GitLab GIT_DEPTH: 0)"
        if explicit:
            raise UsageError(f"--from-ref {from_ref} --to-ref {to_ref}: cannot compare: {exc}; {hint}") from None
        return ChangeSet(None, f"cannot compare {from_ref}...{to_ref} ({hint})", tuple(branches), from_ref, to_ref)
    return ChangeSet(tuple(sorted(set(files))), f"{from_ref}...{to_ref}", tuple(branches), from_ref, to_ref)


# === 7.2. when.changed and when.branch gates ===

# Globs are glob_regex() of section 3.1 (Cypress specs use the same syntax).


def gate_reason(when: Mapping[str, Any], changes: ChangeSet) -> str | None:
    """Why `when.changed` / `when.branch` keep a step from running, or None when it runs."""
    branch_patterns = _as_patterns(when.get("branch"))
    if branch_patterns:
        if not changes.branches:
            return f"when.branch {branch_patterns}: no branch (detached HEAD, or a push of no branch)"
        if not any(branch_matches(branch, pattern) for branch in changes.branches for pattern in branch_patterns):
            shown = ", ".join(repr(branch) for branch in changes.branches)
            return f"when.branch {branch_patterns}: branch {shown} does not match"
    changed_patterns = _as_patterns(when.get("changed"))
    if (
        changed_patterns
        and changes.files is not None
        and not any(path_matches(path, pattern) for path in changes.files for pattern in changed_patterns)
    ):
        return (
            f"when.changed {changed_patterns}: no changed file matches "
            f"({len(changes.files)} changed, {changes.description})"
        )
    return None


# === 7.3. ORCHESTRATE_SKIP ===


_SKIP_ALL = frozenset({"1", "true", "yes", "all", "*"})


_SKIP_NONE = frozenset({"", "0", "false", "no"})


def parse_skip_env(value: str | None) -> tuple[bool, list[str]]:
    """ORCHESTRATE_SKIP: "1" (or true/yes/all) skips every step, "a,b c" skips the steps named
    a and "b c" (names may hold spaces, so only commas separate them)."""
    text = (value or "").strip()
    if text.lower() in _SKIP_NONE:
        return False, []
    if text.lower() in _SKIP_ALL:
        return True, []
    return False, [name.strip() for name in text.split(",") if name.strip()]


def skip_env_plan(value: str | None, steps: Sequence[Any]) -> tuple[dict[str, str], list[str]]:
    """Which steps ORCHESTRATE_SKIP skips ({name: reason}) and warnings to print.

    A step with `"required": true` is never skipped this way (that is what required means:
    a team's last line of defence). A name matching no step is a warning, not an error:
    the variable may be set for several workflows at once.
    """
    skip_all, given = parse_skip_env(value)
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    by_name = {step.name: step for step in steps}
    names = []
    for item in given:
        name = step_by_name_or_number(item, list(by_name))
        if name is None:
            warnings.append(f"ORCHESTRATE_SKIP: no step {item!r} in this workflow{did_you_mean(item, by_name)}")
        else:
            names.append(name)
    for step in steps:
        if not (skip_all or step.name in names):
            continue
        if step.required:
            warnings.append(f"ORCHESTRATE_SKIP: step {step.name!r} is required and runs anyway")
        else:
            skipped[step.name] = f"ORCHESTRATE_SKIP={value}"
    return skipped, warnings


# === 7.4. Git state and CI detection ===


@dataclass(frozen=True)
class GitStatus:
    """The checkout at a project root, from one `git status --porcelain=v2 --branch` call."""

    in_repository: bool = False
    commit: str | None = None  # HEAD; None before the first commit
    branch: str | None = None  # None when detached
    changed: tuple[str, ...] = ()  # tracked files changed in the index or the working tree
    untracked: tuple[str, ...] | None = None  # None unless asked for (untracked=True)

    def info(self, root: Path | None = None, runs_dir: Path | None = None) -> dict[str, Any]:
        """{"commit", "branch", "dirty", "changed", "prefix"}; {} outside a repository. "dirty"
        counts untracked files too (not ignored ones) when they were asked for; "changed" lists
        every file that differs from the commit (modified, staged, deleted, untracked) relative
        to the repository's top level, the run records under `runs_dir` left out; "prefix" is
        `root`'s path below that top level."""
        if not self.in_repository:
            return {}
        prefix = (repository_prefix(root) or "") if root is not None else ""
        runs_prefix = ""
        if runs_dir is not None and root is not None:
            runs_prefix = prefix + _display_path(runs_dir, root).rstrip("/") + "/"
        changed = sorted(
            {
                path
                for path in (*self.changed, *(self.untracked or ()))
                if not (runs_prefix and path.startswith(runs_prefix))
            }
        )
        return {
            "commit": self.commit,
            "branch": self.branch,
            "dirty": bool(changed),
            "changed": changed,
            "prefix": prefix,
        }


def start_git_status(root: Path, untracked: bool = False) -> GitCall:
    """`git status` for GitStatus, started now (read_git_status reads it). Paths come relative to
    the repository's top; renames are listed as a deletion and an addition."""
    return GitCall(
        [
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--no-renames",
            f"--untracked-files={'all' if untracked else 'no'}",
        ],
        root,
    )


def read_git_status(call: GitCall, untracked: bool = False) -> GitStatus:
    try:
        out = call.output(check=False)
    except GitError:
        return GitStatus()
    commit = branch = None
    seen_header = False
    changed: list[str] = []
    others: list[str] = []
    for item in out.split("\0"):
        if item.startswith("# branch.oid "):
            seen_header = True
            oid = item[len("# branch.oid ") :]
            commit = None if oid == "(initial)" else oid
        elif item.startswith("# branch.head "):
            head = item[len("# branch.head ") :]
            branch = None if head == "(detached)" else head
        elif item.startswith("? "):
            others.append(item[2:])
        elif item.startswith("1 "):  # 1 XY sub mH mI mW hH hI path
            changed.append(item.split(" ", 8)[-1])
        elif item.startswith("u "):  # u XY sub m1 m2 m3 mW h1 h2 h3 path
            changed.append(item.split(" ", 10)[-1])
        elif item and not item.startswith("#"):
            changed.append(item)
    if not seen_header:
        return GitStatus()
    return GitStatus(True, commit, branch, tuple(changed), tuple(others) if untracked else None)


def git_info(root: Path, runs_dir: Path | None = None) -> dict[str, Any]:
    """GitStatus.info() of the checkout at `root`, untracked files included, from one `git
    status` call; {} outside a repository (orchestrate runs fine without git)."""
    return read_git_status(start_git_status(root, untracked=True), untracked=True).info(root, runs_dir)


def repository_prefix(root: Path) -> str | None:
    """`git rev-parse --show-prefix` without running git: the root's path below the nearest
    folder up with a .git (folder or file, as in a linked worktree), "" at the top; None when
    none is found (then git is asked)."""
    path = os.path.abspath(root)
    parts: list[str] = []
    while True:
        if os.path.lexists(os.path.join(path, ".git")):
            return "".join(f"{part}/" for part in reversed(parts))
        parent = os.path.dirname(path)
        if parent == path:
            return None
        parts.append(os.path.basename(path))
        path = parent


def read_github_event(env: Mapping[str, str]) -> dict[str, Any]:
    """The webhook payload GitHub Actions leaves at GITHUB_EVENT_PATH ({} if unreadable)."""
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def detect_ci(env: Mapping[str, str], event: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The CI system this run is in, from its documented variables, or None outside CI.

    Returns {"provider", "job_url", "commit", "branch", "base"}: base is what `when.changed`
    compares with (a pull request's base, a push's previous tip), "" when unknown.
    """
    if env.get("GITHUB_ACTIONS") == "true":
        return _github_ci(env, event or {})
    if env.get("GITLAB_CI"):
        return _gitlab_ci(env)
    if env.get("JENKINS_URL") or env.get("JENKINS_HOME"):
        branch = env.get("CHANGE_BRANCH") or env.get("BRANCH_NAME") or env.get("GIT_BRANCH", "")
        target = env.get("CHANGE_TARGET", "")
        return {
            "provider": "jenkins",
            "job_url": env.get("BUILD_URL", ""),
            "commit": env.get("GIT_COMMIT", ""),
            "branch": branch.removeprefix("origin/"),
            "base": f"origin/{target}" if target else "",
        }
    if _truthy(env.get("CI")):
        return {"provider": "generic", "job_url": "", "commit": "", "branch": "", "base": ""}
    return None


def _github_ci(env: Mapping[str, str], event: Mapping[str, Any]) -> dict[str, Any]:
    job_url = ""
    if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        job_url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    base = ""
    pull = event.get("pull_request")
    if isinstance(pull, dict) and isinstance(pull.get("base"), dict):
        base = str(pull["base"].get("sha") or "")
    elif env.get("GITHUB_BASE_REF"):
        base = f"origin/{env['GITHUB_BASE_REF']}"
    elif isinstance(event.get("before"), str) and not is_zero_oid(event["before"]):
        base = event["before"]  # a push event: the branch tip before this push
    return {
        "provider": "github",
        "job_url": job_url,
        "commit": env.get("GITHUB_SHA", ""),
        "branch": env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME", ""),
        "base": base,
    }


def _gitlab_ci(env: Mapping[str, str]) -> dict[str, Any]:
    base = env.get("CI_MERGE_REQUEST_DIFF_BASE_SHA", "")
    before = env.get("CI_COMMIT_BEFORE_SHA", "")
    if not base and before and not is_zero_oid(before):
        base = before
    return {
        "provider": "gitlab",
        "job_url": env.get("CI_JOB_URL", ""),
        "commit": env.get("CI_COMMIT_SHA", ""),
        "branch": (
            env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
            or env.get("CI_COMMIT_BRANCH")
            or env.get("CI_COMMIT_REF_NAME", "")
        ),
        "base": base,
    }


def make_trigger(
    git: Mapping[str, Any], ci: Mapping[str, Any] | None, push: PushInfo | None = None, hook: str | None = None
) -> dict[str, Any]:
    """The run record's "trigger": source (pre-push | ci | cli), provider, job_url, commit,
    branch, the git state, and the push's ref lines when started by the hook."""
    source = hook if hook else ("ci" if ci else "cli")
    trigger: dict[str, Any] = {
        "source": source,
        "provider": ci["provider"] if ci else None,
        "job_url": (ci or {}).get("job_url") or None,
        "commit": (ci or {}).get("commit") or git.get("commit"),
        "branch": (ci or {}).get("branch") or git.get("branch"),
        "git": {"commit": git.get("commit"), "branch": git.get("branch"), "dirty": git.get("dirty")},
    }
    if ci:
        trigger["ci"] = dict(ci)
    if push is not None:
        trigger["push"] = push.as_dict()
    return trigger


def step_git_env(env: Mapping[str, str], changes: ChangeSet | None, push: PushInfo | None) -> dict[str, str]:
    """A step's environment in hook or CI mode: git's hook variables removed (a step's own
    `git` must see its cwd, not the pushing repository's index), no credential prompts,
    and ORCHESTRATE_PUSH_REMOTE / ORCHESTRATE_FROM_REF / ORCHESTRATE_TO_REF set."""
    out = strip_git_env(env)
    out["GIT_TERMINAL_PROMPT"] = "0"
    out["ORCHESTRATE_PUSH_REMOTE"] = push.remote if push else ""
    out["ORCHESTRATE_FROM_REF"] = changes.from_ref if changes else ""
    out["ORCHESTRATE_TO_REF"] = changes.to_ref if changes else ""
    return out


@dataclass
class PushedWorktree:
    """A temporary worktree of the commit being checked."""

    repo: Path  # the project root in the developer's checkout
    path: Path  # the worktree (the repository's top level at the commit)
    root: Path  # the project root inside it
    commit: str
    owner_file: Path
    shared: list[str] = field(default_factory=list)


@dataclass
class GitState:
    """What this section learns before a run starts; the engine carries it as RunOptions.git."""

    git: dict[str, Any] = field(default_factory=dict)
    ci: dict[str, Any] | None = None
    push: PushInfo | None = None
    changes: ChangeSet | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # ORCHESTRATE_SKIP: step -> reason
    checkout: PushedWorktree | None = None  # the run checks this worktree (--isolated)


def run_branch_names(state: GitState | None, trigger: Mapping[str, Any]) -> list[str]:
    """The branch names this run is about, each once: the pushed branches (remote and
    local names), the CI system's branch, the checkout's branch."""
    names: list[Any] = []
    if state is not None:
        if state.push is not None:
            for ref in state.push.updates:
                names.append(ref.branch)
                names.append(
                    ref.local_ref.removeprefix("refs/heads/") if ref.local_ref.startswith("refs/heads/") else None
                )
        names += [(state.ci or {}).get("branch"), state.git.get("branch")]
    names.append(trigger.get("branch"))
    return list(dict.fromkeys(str(n) for n in names if n))


RUN_COMMIT_MESSAGES_LIMIT = 1000  # per pushed ref: a new long-lived branch can carry thousands


def run_commit_messages(root: Path, state: GitState | None) -> tuple[list[str], str]:
    """The messages of the commits this run checks, newest first, and what they are: the
    pushed commits (each pushed ref's new commits), else the compared range (--from-ref,
    pre-commit's refs, the CI base), else none and why."""
    ranges: list[list[str]] = []
    if state is not None and state.push is not None:
        for ref in state.push.updates:
            from_oid, to_oid = push_range(root, ref)
            if from_oid != to_oid:
                ranges.append([to_oid, f"^{from_oid}"] if from_oid else [to_oid, "--not", "--remotes"])
        what = "the pushed commits"
    elif state is not None and state.changes is not None and state.changes.from_ref and state.changes.to_ref:
        ranges.append([state.changes.to_ref, f"^{state.changes.from_ref}"])
        what = f"the commits {state.changes.from_ref}..{state.changes.to_ref}"
    elif state is not None and (state.ci or {}).get("base"):
        base = str((state.ci or {})["base"])
        ranges.append(["HEAD", f"^{base}"])
        what = f"the commits {base}..HEAD"
    else:
        return [], "no commits to read (not a push, no --from-ref)"
    messages: list[str] = []
    for revisions in ranges:
        try:
            out = run_git(
                ["log", f"--max-count={RUN_COMMIT_MESSAGES_LIMIT}", "--format=%B%x00", *revisions, "--"],
                root,
                check=False,
            )
        except GitError:
            out = ""
        messages += [m.strip() for m in out.split("\0") if m.strip()]
    return messages, what


# === 7.5. GitHub Actions and GitLab console markup ===


def gha_escape_data(text: str) -> str:
    """Escape a workflow command's message (actions/toolkit command.ts escapeData)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gha_escape_property(text: str) -> str:
    """Escape a workflow command's property value (escapeProperty: also ':' and ',')."""
    return gha_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def gha_group(title: str) -> str:
    return f"::group::{gha_escape_data(title)}"


def gha_endgroup() -> str:
    return "::endgroup::"


def new_stop_token() -> str:
    """A token a step cannot guess, so its output cannot end the fence early."""
    import secrets

    return "orchestrate-" + secrets.token_hex(16)


def gha_stop_commands(token: str) -> str:
    """Until `gha_resume_commands(token)`, the runner treats `::...::` lines as plain text:
    a step printing `::error::` or `::set-output` cannot forge annotations or outputs."""
    return f"::stop-commands::{token}"


def gha_resume_commands(token: str) -> str:
    return f"::{token}::"


def gha_mask_lines(values: Iterable[str]) -> list[str]:
    """`::add-mask::` for every secret, line by line (the runner masks single lines)."""
    lines = []
    for value in sorted(set(values)):
        for part in value.splitlines():
            if part.strip():
                lines.append(f"::add-mask::{gha_escape_data(part)}")
    return lines


GHA_TEST_ANNOTATIONS = 10  # per step: GitHub shows at most 10 error annotations of a step


def gha_error(title: str, message: str, file: str | None = None) -> str:
    where = f"file={gha_escape_property(file)}," if file else ""
    return f"::error {where}title={gha_escape_property(title)}::{gha_escape_data(message)}"


def gha_warning(title: str, message: str) -> str:
    return f"::warning title={gha_escape_property(title)}::{gha_escape_data(message)}"


_GITLAB_SECTION_RE = lazy_regex(r"[^A-Za-z0-9_.-]+")


def gitlab_section_name(index: int, step_name: str) -> str:
    return f"step_{index + 1}_" + _GITLAB_SECTION_RE.sub("_", step_name)[:60]


def gitlab_section_start(name: str, header: str, when: float, collapsed: bool = False) -> str:
    """GitLab's collapsible job-log section: ESC[0Ksection_start:TS:NAME\\r ESC[0K HEADER."""
    option = "[collapsed=true]" if collapsed else ""
    return f"\x1b[0Ksection_start:{int(when)}:{name}{option}\r\x1b[0K{header}"


def gitlab_section_end(name: str, when: float) -> str:
    return f"\x1b[0Ksection_end:{int(when)}:{name}\r\x1b[0K"


class PlainCIOutput:
    """Console decorations for a CI provider; plain output (Jenkins, a terminal) needs none.

    The Console prints what these return: `run_started` before any step (GitHub masks must
    come before a secret's first appearance), `step_started` before a step's header,
    `fence_output` on every chunk of its output, `step_output_ended` after its last chunk,
    `step_finished` after its status line.
    """

    name = "none"

    def run_started(self, masker: Masker) -> list[str]:
        return []

    def escape(self, text: str) -> str:
        """Step-derived text on a line of orchestrate's own, outside any fence."""
        return text

    def fence(self, step: Step, lines: list[str]) -> list[str]:
        """A step's own lines printed by orchestrate (the --quiet failure tail)."""
        return lines

    def step_started(self, step: Step) -> list[str]:
        return []

    def fence_output(self, data: bytes) -> bytes:
        return data

    def step_output_ended(self, step: Step) -> list[str]:
        return []

    def step_finished(self, step: Step, entry: dict[str, Any]) -> list[str]:
        return []


class GitHubCIOutput(PlainCIOutput):
    """GitHub Actions: a log group per step, child output fenced with ::stop-commands:: (a
    step printing `::error::` or `::set-output` cannot forge workflow commands), secrets
    registered with ::add-mask::, an ::error annotation per failed step."""

    name = "github"

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {}  # by step index: steps may one day run side by side

    def run_started(self, masker: Masker) -> list[str]:
        return gha_mask_lines(masker.secrets)

    def escape(self, text: str) -> str:
        # the runner reads every line that starts with '::' (after spaces) as a command:
        # escaped, a step's "boom\n::error::x" stays on orchestrate's line as text
        return gha_escape_data(text)

    def fence(self, step: Step, lines: list[str]) -> list[str]:
        token = new_stop_token()
        return [gha_stop_commands(token), *lines, gha_resume_commands(token)]

    def step_started(self, step: Step) -> list[str]:
        token = self._tokens[step.index] = new_stop_token()
        return [gha_group(f"{step.name} ({step.type})"), gha_stop_commands(token)]

    def step_output_ended(self, step: Step) -> list[str]:
        token = self._tokens.pop(step.index, "")
        return ([gha_resume_commands(token)] if token else []) + [gha_endgroup()]

    def step_finished(self, step: Step, entry: dict[str, Any]) -> list[str]:
        if entry.get("status") != "failed":
            return []
        message = str(entry.get("message") or "step failed")
        if entry.get("allowed_failure"):
            return [gha_warning(f"{step.name} failed (continue_on_error)", message)]
        # one annotation on the file of each failed test a report names (GitHub shows ten per step)
        tests = [
            gha_error(
                f"{step.name}: {detail['name']}", str(detail.get("message") or "failed"), file=str(detail["file"])
            )
            for detail in (entry.get("failed_test_details") or [])[:GHA_TEST_ANNOTATIONS]
            if isinstance(detail, dict) and detail.get("file") and detail.get("name")
        ]
        return [*tests, gha_error(f"{step.name} failed", message)]


class GitLabCIOutput(PlainCIOutput):
    """GitLab CI: a collapsible job-log section per step."""

    name = "gitlab"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sections: dict[int, str] = {}  # by step index

    def step_started(self, step: Step) -> list[str]:
        section = self._sections[step.index] = gitlab_section_name(step.index, step.name)
        return [gitlab_section_start(section, f"{step.name} ({step.type})", self._clock())]

    def step_output_ended(self, step: Step) -> list[str]:
        section = self._sections.pop(step.index, "")
        return [gitlab_section_end(section, self._clock())] if section else []


CI_OUTPUTS: dict[str, Callable[[], PlainCIOutput]] = {"github": GitHubCIOutput, "gitlab": GitLabCIOutput}


def detect_ci_provider(env: Mapping[str, str] | None = None) -> str | None:
    ci = detect_ci(os.environ if env is None else env, {})
    return ci["provider"] if ci else None


def detect_ci_output() -> PlainCIOutput:
    factory = CI_OUTPUTS.get(detect_ci_provider() or "")
    return factory() if factory else PlainCIOutput()


# === 7.6. Hook installation ===


HOOK_ID = "orchestrate-hook-id: 5c1e0a8f3b7d4e2a"  # marks hooks orchestrate wrote; never change


SUPPORTED_HOOKS = ("pre-push",)


PRE_PUSH_HOOK = r"""#!/bin/sh
# orchestrate pre-push hook: runs an orchestrate workflow before `git push` sends anything;
# a failing workflow stops the push.
# orchestrate-hook-id: 5c1e0a8f3b7d4e2a
#
# Install: orchestrate hook install     Remove: orchestrate hook uninstall
# A hook that was here before is kept as pre-push.legacy and runs first.
#
#   skip this push:         git push --no-verify
#   skip the workflow:      ORCHESTRATE_SKIP=1 git push   (steps marked "required" still run)
#   skip some steps:        ORCHESTRATE_SKIP="lint,e2e tests" git push
#   another workflow:       git config orchestrate.prePushWorkflow NAME
#                           (or ORCHESTRATE_PRE_PUSH_WORKFLOW=NAME)
#   orchestrate elsewhere:  ORCHESTRATE_BIN=/path/to/orchestrate
#   not installed:          the push fails and says how to install it;
#                           ORCHESTRATE_ALLOW_MISSING=1 lets it through
#
# git runs `pre-push <remote name> <remote url>` with one line per ref on stdin:
#   <local ref> <local oid> <remote ref> <remote oid>
# Plain POSIX sh, shell builtins only: a push with nothing to check (up to date, only
# deletions, only tags) ends here before any other program starts; otherwise orchestrate gets
# the lines, and reads the workflow's name from git config along with its other git calls.

default_workflow=pre-push
remote=$1 url=$2

# What is pushed, and whether any of it needs a check.
refs='' check='' deleted='' tags='' updates=''
classify() {  # the fields of one ref line
    [ $# -gt 0 ] || return 0
    if [ $# -ne 4 ]; then
        check=1  # not what git writes: orchestrate says what is wrong
        return 0
    fi
    case $2$4 in
        *[!0-9a-f]*) check=1; return 0 ;;
    esac
    case $2 in
        *[!0]*) ;;
        *) deleted="$deleted${deleted:+, }$3"; return 0 ;;
    esac
    case $3 in
        refs/tags/*) tags="$tags${tags:+, }${3#refs/tags/}"; return 0 ;;
    esac
    updates=1
    [ "$2" = "$4" ] || check=1
}
while IFS= read -r line || [ -n "$line" ]; do
    refs="$refs$line
"
    set -f
    # shellcheck disable=SC2086 # split the line into its fields on purpose
    classify $line
    set +f
done

# A hook that was here before orchestrate's: run it first, with the same arguments and stdin.
legacy=$0.legacy
if [ -f "$legacy" ] && [ -x "$legacy" ]; then
    if [ -n "$refs" ]; then
        printf '%s' "$refs" | "$legacy" "$remote" "$url" || exit
    else
        "$legacy" "$remote" "$url" </dev/null || exit
    fi
fi

if [ -z "$check" ]; then
    if [ -z "$refs" ]; then
        reason="nothing to push (everything up to date)"
    elif [ -n "$updates" ]; then
        reason="push carries no new commits (every pushed commit is on the remote already)"
    elif [ -n "$tags" ]; then
        reason="push only carries tags ($tags)"
    else
        reason="push only deletes $deleted"
    fi
    echo "orchestrate pre-push: nothing to check: $reason"
    exit 0
fi

# Find orchestrate: $ORCHESTRATE_BIN, then PATH, then pipx's default ~/.local/bin.
bin=${ORCHESTRATE_BIN:-}
if [ -n "$bin" ]; then
    if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
        echo "orchestrate pre-push: ORCHESTRATE_BIN=$bin is not an executable file" >&2
        exit 1
    fi
else
    saved_ifs=$IFS
    IFS=:
    set -f
    # shellcheck disable=SC2086 # split PATH on ':' on purpose
    for dir in $PATH; do
        if [ -f "${dir:-.}/orchestrate" ] && [ -x "${dir:-.}/orchestrate" ]; then
            bin=${dir:-.}/orchestrate
            break
        fi
    done
    set +f
    IFS=$saved_ifs
    if [ -z "$bin" ] && [ -x "${HOME:-/nonexistent}/.local/bin/orchestrate" ]; then
        bin=$HOME/.local/bin/orchestrate
    fi
fi

if [ -z "$bin" ]; then
    if [ "${ORCHESTRATE_ALLOW_MISSING:-}" = 1 ] || [ "${ORCHESTRATE_SKIP:-}" = 1 ]; then
        echo "orchestrate pre-push: orchestrate not found; push allowed (ORCHESTRATE_ALLOW_MISSING/ORCHESTRATE_SKIP)" >&2
        exit 0
    fi
    echo "orchestrate pre-push: orchestrate not found (ORCHESTRATE_BIN, PATH, ~/.local/bin): install it with 'pipx install orchestrate-cli', or skip this check with 'git push --no-verify'" >&2
    exit 1
fi

# The workflow: $ORCHESTRATE_PRE_PUSH_WORKFLOW, else `git config orchestrate.prePushWorkflow`
# (orchestrate reads it), else the default.
if [ -n "${ORCHESTRATE_PRE_PUSH_WORKFLOW:-}" ]; then
    set -- run "$ORCHESTRATE_PRE_PUSH_WORKFLOW" --git-hook pre-push --push-remote "$remote" --push-url "$url"
else
    set -- run "$default_workflow" --workflow-from-git-config --git-hook pre-push --push-remote "$remote" --push-url "$url"
fi
exec "$bin" "$@" <<EOF
$refs
EOF
"""


def render_hook(hook: str = "pre-push", workflow: str | None = None) -> str:
    """The hook script `hook install` writes; `workflow` replaces the default workflow name."""
    if hook not in SUPPORTED_HOOKS:
        raise UsageError(
            f"hook {hook!r}: orchestrate installs only "
            f"{', '.join(SUPPORTED_HOOKS)}{did_you_mean(hook, SUPPORTED_HOOKS)}"
        )
    text = PRE_PUSH_HOOK
    if workflow:
        check_workflow_name(workflow)
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", workflow):
            raise UsageError(f"--workflow {workflow!r}: use letters, digits and . _ + - only in a hook's workflow name")
        text = text.replace("\ndefault_workflow=pre-push\n", f"\ndefault_workflow={workflow}\n")
    return text


def hooks_dir(repo_dir: Path) -> Path:
    """The folder git really runs hooks from: `git rev-parse --git-path hooks` follows
    core.hooksPath and, in a linked worktree, the main repository's common folder."""
    try:
        out = run_git(["rev-parse", "--git-path", "hooks"], repo_dir).strip()
    except GitError as exc:
        raise UsageError(
            f"{repo_dir}: not inside a git repository ({exc}); run `git init` first or pass --root"
        ) from None
    path = Path(out)
    return path if path.is_absolute() else (repo_dir / path).resolve()


def is_our_hook(path: Path) -> bool:
    try:
        return HOOK_ID in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _hook_workflow(text: str) -> str:
    match = re.search(r"^default_workflow=(\S+)$", text, re.MULTILINE)
    return match.group(1) if match else "pre-push"


def _write_executable(path: Path, text: str) -> None:
    """Write a hook atomically (a push racing the install sees old or new, never half)."""
    tmp = path.with_name(f".{path.name}.orchestrate-tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.chmod(0o755)
    os.replace(tmp, path)


@dataclass
class HookChange:
    """What hook install or uninstall did, in one sentence."""

    path: Path
    message: str
    legacy: Path | None = None


def install_hook(
    repo_dir: Path, hook: str = "pre-push", workflow: str | None = None, force: bool = False
) -> HookChange:
    """Install orchestrate's hook; a foreign hook is refused, or with force kept as
    HOOK.legacy and run first (pre-commit's convention)."""
    text = render_hook(hook, workflow)
    folder = hooks_dir(repo_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hook
    legacy = folder / f"{hook}.legacy"
    kept: Path | None = legacy if legacy.exists() else None
    if (path.exists() or path.is_symlink()) and not is_our_hook(path):
        if not force:
            raise UsageError(
                f"{path}: a {hook} hook orchestrate did not write is already there; "
                f"rerun with --force to keep it as {legacy.name} and run it before "
                "orchestrate, or move it away"
            )
        if legacy.exists() or legacy.is_symlink():
            raise UsageError(
                f"{path}: both a foreign {hook} hook and {legacy.name} exist; move one of them away, then rerun"
            )
        os.replace(path, legacy)
        kept = legacy
    _write_executable(path, text)
    message = f"installed {hook} hook at {path} (workflow {_hook_workflow(text)!r})"
    if kept:
        message += f"; the previous hook is kept as {kept.name} and runs first"
    return HookChange(path, message, kept)


def uninstall_hook(repo_dir: Path, hook: str = "pre-push") -> HookChange:
    """Remove orchestrate's hook (never a foreign one) and put HOOK.legacy back."""
    if hook not in SUPPORTED_HOOKS:
        render_hook(hook)  # raises the usage error
    folder = hooks_dir(repo_dir)
    path = folder / hook
    legacy = folder / f"{hook}.legacy"
    if not (path.exists() or path.is_symlink()):
        return HookChange(path, f"no {hook} hook at {path}; nothing to remove")
    if not is_our_hook(path):
        raise UsageError(
            f"{path}: this {hook} hook was not written by orchestrate; "
            "left as it is (remove it yourself if you mean to)"
        )
    path.unlink()
    if legacy.exists() or legacy.is_symlink():
        os.replace(legacy, path)
        return HookChange(
            path, f"removed orchestrate's {hook} hook; restored the previous hook from {legacy.name}", path
        )
    return HookChange(path, f"removed orchestrate's {hook} hook from {path}")


def hook_status(repo_dir: Path, hook: str = "pre-push") -> dict[str, Any]:
    """What git will run on push, as data: hooks folder, whether core.hooksPath moved it,
    the hook's owner (orchestrate | foreign | none), its workflow and chained legacy hook."""
    folder = hooks_dir(repo_dir)
    path = folder / hook
    legacy = folder / f"{hook}.legacy"
    hooks_path = run_git(["config", "--get", "core.hooksPath"], repo_dir, check=False).strip()
    configured = run_git(["config", "--get", "orchestrate.prePushWorkflow"], repo_dir, check=False).strip()
    state = "none"
    workflow = None
    if path.exists():
        state = "orchestrate" if is_our_hook(path) else "foreign"
    executable = path.exists() and os.access(path, os.X_OK)
    if state == "orchestrate":
        text = path.read_text(encoding="utf-8", errors="replace")
        workflow = os.environ.get("ORCHESTRATE_PRE_PUSH_WORKFLOW") or configured or _hook_workflow(text)
    has_legacy = legacy.exists() and os.access(legacy, os.X_OK)
    if state == "none":
        summary = f"git runs no {hook} hook (none at {path}); install: orchestrate hook install"
    elif not executable:
        summary = f"git ignores {path}: it is not executable (chmod +x it)"
    elif state == "foreign":
        summary = (
            f"git runs {path}, a hook orchestrate did not write; "
            "orchestrate hook install --force keeps it and runs it first"
        )
    else:
        summary = f"git runs {path}: orchestrate workflow {workflow!r}"
        if has_legacy:
            summary = f"git runs {path}: {legacy.name} first, then orchestrate workflow {workflow!r}"
    return {
        "hook": hook,
        "hooks_dir": str(folder),
        "core_hooks_path": hooks_path or None,
        "path": str(path),
        "state": state,
        "executable": executable,
        "workflow": workflow,
        "legacy": str(legacy) if has_legacy else None,
        "summary": summary,
    }


# === 8. Reports ===


def _junit_time(seconds: Any) -> str:
    return f"{float(seconds or 0):.3f}"


def _junit_timestamp(iso: str | None) -> str:
    # the Ant schema's pattern: no fraction, no zone (UTC by our convention)
    return (iso or utc_now())[:19]


class _XmlElement:
    """An element of _SmallElementTree."""

    __slots__ = ("attrib", "children", "tag", "text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag, self.attrib, self.text = tag, attrib, ""
        self.children: list[_XmlElement] = []


def _xml_escape(text: str, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\r", "&#13;").replace("\n", "&#10;").replace("\t", "&#09;")
    return text


class _SmallElementTree:
    """The part of xml.etree.ElementTree that build_junit_xml uses, writing the same bytes as
    ET.tostring(root, encoding="utf-8"): importing ElementTree cost about 4 ms of every run
    (a run writes its report whatever happens). tests/test_junit.py compares the two."""

    @staticmethod
    def Element(tag: str, **attrib: str) -> _XmlElement:  # ElementTree's names
        return _XmlElement(tag, attrib)

    @staticmethod
    def SubElement(parent: _XmlElement, tag: str, **attrib: str) -> _XmlElement:
        element = _XmlElement(tag, attrib)
        parent.children.append(element)
        return element

    @staticmethod
    def tostring(root: _XmlElement, encoding: str = "utf-8") -> bytes:
        parts: list[str] = []

        def write(element: _XmlElement) -> None:
            parts.append("<" + element.tag)
            for key, value in element.attrib.items():
                parts.append(f' {key}="{_xml_escape(value, attribute=True)}"')
            if element.text or element.children:
                parts.append(">" + _xml_escape(element.text or ""))
                for child in element.children:
                    write(child)
                parts.append(f"</{element.tag}>")
            else:
                parts.append(" />")

        write(root)
        return "".join(parts).encode(encoding, "xmlcharrefreplace")


def build_junit_xml(
    record: dict[str, Any], testcases: dict[int, list[TestCase]] | None = None, shard: tuple[int, int] | None = None
) -> bytes:
    """One <testsuite> per run (a <testcase> per step), plus one per step that reported its own
    test cases; valid against both Jenkins xunit's junit-10.xsd and the Ant-style JUnit.xsd."""
    hostname = xml_safe(_hostname() or "localhost") or "localhost"
    workflow = xml_safe(record.get("workflow") or "workflow")
    suite_name = workflow + (f" (shard {shard[0]}/{shard[1]})" if shard else "")
    root = _SmallElementTree.Element("testsuites")
    _junit_run_suite(root, record, suite_name, workflow, hostname)
    entries = record.get("log", [])
    for n, (index, cases) in enumerate(sorted((testcases or {}).items()), start=1):
        entry = entries[index] if index < len(entries) else {"step": f"step {index}"}
        _junit_step_suite(root, n, entry, cases, suite_name, workflow, hostname)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + _SmallElementTree.tostring(root, encoding="utf-8") + b"\n"


def _junit_run_suite(root: _XmlElement, record: dict[str, Any], suite_name: str, workflow: str, hostname: str) -> None:
    """The run's own <testsuite>: its properties, a <testcase> per step, and in system-out one
    line per step with its start (testcase has no start attribute in either schema)."""
    ET: Any = _SmallElementTree
    suite = ET.SubElement(root, "testsuite")
    entries = record.get("log", [])
    failures = sum(1 for e in entries if e.get("status") == "failed" and not e.get("allowed_failure"))
    skipped = sum(1 for e in entries if e.get("status") in ("skipped", "pending") or e.get("allowed_failure"))
    suite.attrib.update(
        name=suite_name,
        package=workflow,
        id="0",
        timestamp=_junit_timestamp(record.get("started_at")),
        hostname=hostname,
        tests=str(len(entries)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=_junit_time(record.get("duration_s")),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "status", "workflow_sha256"):
        if record.get(key):
            ET.SubElement(props, "property", name=key, value=xml_safe(str(record[key])))
    git = (record.get("trigger") or {}).get("git") or {}
    for key in ("commit", "branch"):
        if git.get(key):
            ET.SubElement(props, "property", name=f"git.{key}", value=xml_safe(str(git[key])))
    out_lines = [_junit_step_case(suite, workflow, entry) for entry in entries]
    ET.SubElement(suite, "system-out").text = xml_safe(
        "\n".join(out_lines) + ("\n" + record["message"] if record.get("message") else "")
    )
    ET.SubElement(suite, "system-err").text = ""


def _junit_step_case(suite: _XmlElement, workflow: str, entry: Mapping[str, Any]) -> str:
    """A step's <testcase> in the run's suite; returns its system-out line."""
    ET: Any = _SmallElementTree
    case = ET.SubElement(
        suite,
        "testcase",
        classname=workflow,
        name=xml_safe(entry.get("step") or "step"),
        time=_junit_time(entry.get("duration_s")),
    )
    status = entry.get("status")
    message = xml_safe(entry.get("message") or "")
    if status == "failed" and entry.get("allowed_failure"):
        ET.SubElement(case, "skipped", message=f"failed, allowed by continue_on_error: {message}")
    elif status == "failed":
        failure = ET.SubElement(case, "failure", message=message or "failed", type="StepFailed")
        failure.text = xml_safe(entry.get("output_tail") or "")
    elif status in ("skipped", "pending"):
        ET.SubElement(case, "skipped", message=message or "not run")
    started = f", started {entry['started_at']}" if entry.get("started_at") else ""
    return f"[{status}] {entry.get('step')} ({_junit_time(entry.get('duration_s'))}s{started})" + (
        f": {entry.get('message')}" if entry.get("message") else ""
    )


def _junit_step_suite(
    root: _XmlElement,
    number: int,
    entry: dict[str, Any],
    cases: list[TestCase],
    suite_name: str,
    workflow: str,
    hostname: str,
) -> None:
    """The <testsuite> of the test cases one step reported (its JUnit files, Cypress specs)."""
    ET: Any = _SmallElementTree
    step_name = xml_safe(entry["step"])
    sub = ET.SubElement(root, "testsuite")
    sub.attrib.update(
        name=f"{suite_name} › {step_name}",
        package=f"{workflow}.{step_name}",
        id=str(number),
        timestamp=_junit_timestamp(entry.get("started_at")),
        hostname=hostname,
        tests=str(len(cases)),
        failures=str(sum(1 for c in cases if c.status == "failed")),
        errors="0",
        skipped=str(sum(1 for c in cases if c.status == "skipped")),
        time=_junit_time(sum(c.time for c in cases)),
    )
    ET.SubElement(sub, "properties")
    for case_data in cases:
        case = ET.SubElement(
            sub,
            "testcase",
            classname=xml_safe(case_data.classname) or step_name,
            name=xml_safe(case_data.name) or "test",
            time=_junit_time(case_data.time),
        )
        if case_data.status == "failed":
            failure = ET.SubElement(case, "failure", message=xml_safe(case_data.message) or "failed", type="TestFailed")
            failure.text = xml_safe(case_data.text)
        elif case_data.status == "skipped":
            ET.SubElement(case, "skipped", message=xml_safe(case_data.message) or "skipped")
    ET.SubElement(sub, "system-out").text = ""
    ET.SubElement(sub, "system-err").text = ""


# === 8.1. Test reports a step writes (`reports`), and the one JUnit parser ===
# Every JUnit file orchestrate reads (Cypress's, and whatever a step's `reports` globs match:
# pytest --junitxml, jest-junit, go-junit-report, Maven Surefire) goes through parse_junit_xml:
# a file is a step's output, so it may be hostile. expat is driven directly, so a DOCTYPE (and
# with it every entity declaration: "billion laughs", external entities) is refused before
# anything is expanded, and a file is read only up to MAX_REPORT_BYTES, never through a
# symbolic link, and only when it is a regular file (a FIFO would hang the run).


def _valid_seconds(value: Any) -> bool:
    """A usable duration: a finite, non-negative JSON number (true/false are not numbers)."""
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _seconds(value: str | None) -> float:
    """A JUnit time attribute as seconds; 0 where it is missing or not a duration."""
    try:
        seconds = float((value or "0").replace(",", ""))
    except ValueError:
        return 0.0
    return seconds if _valid_seconds(seconds) else 0.0


MAX_REPORT_BYTES = 64 * 1024 * 1024


MAX_REPORT_FILES = 1000  # per step and attempt: beyond it the step says so


MAX_STEP_TESTCASES = 50_000  # cases one step keeps for the report (and its .tests.json)


MAX_TEST_TEXT = 16 * 1024  # a failure's text kept per case; the tool's own file has it all


REPORT_FAILED_NAMES_MAX = CYPRESS_FAILED_NAMES_MAX


_TEST_FILE_SUFFIXES = (".py", ".java", ".kt", ".scala", ".groovy", ".js", ".ts", ".rb", ".cs", ".go")


_TEST_FILE_PREFIXES = ("", "src/test/java/", "src/test/kotlin/", "src/test/scala/", "test/", "tests/")


class ReportError(ValueError):
    """A test report that cannot be used; the message says why (the caller names the file)."""


def parse_junit_xml(data: bytes) -> Any:
    """The element tree of a JUnit XML document, hardened: no DTD or entity declaration is
    accepted (ReportError), nor a document over MAX_REPORT_BYTES; ReportError when it is not
    well-formed. Only the five predefined entities and character references are expanded."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(
            f"it is {len(data) / 1e6:.0f} MB; a report may be at most {MAX_REPORT_BYTES // (1024 * 1024)} MiB"
        )
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def refuse(*_: Any) -> None:
        raise ReportError("it declares a DOCTYPE; JUnit reports have none, and its entities could expand without bound")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except expat.ExpatError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    except (ValueError, LookupError, AssertionError) as exc:  # ValueError covers ReportError
        if isinstance(exc, ReportError):
            raise
        raise ReportError(f"not a JUnit report ({type(exc).__name__}: {exc})") from None


def read_report_file(path: Path) -> bytes:
    """A report's bytes: a regular file, not followed through a symbolic link, at most
    MAX_REPORT_BYTES (ReportError otherwise; OSError when it cannot be opened)."""
    import errno
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReportError("it is a symbolic link; orchestrate reads reports only as files") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReportError("it is not a regular file")
        if info.st_size > MAX_REPORT_BYTES:
            raise ReportError(
                f"it is {info.st_size / 1e6:.0f} MB; a report may be at most {MAX_REPORT_BYTES // (1024 * 1024)} MiB"
            )
        chunks, size = [], 0
        while size <= MAX_REPORT_BYTES:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _root_relative(path: Path | str, root: Path) -> str:
    """`path` relative to the project root, POSIX-style, when it is inside it; else as given."""
    text = os.path.normpath(os.path.join(root, path))
    base = os.path.abspath(root)
    if _inside(text, base):
        return os.path.relpath(text, base).replace(os.sep, "/")
    return str(path).replace(os.sep, "/")


def case_file_of(classname: str, root: Path, given: str = "") -> str:
    """The file a JUnit test case belongs to, relative to the root: its `file` attribute (or
    its suite's), else found from a dotted classname (pytest's `tests.test_calc`, Surefire's
    `com.acme.CalcTest` under src/test/java/), else ""."""
    if given:
        return _root_relative(given.replace("\\", "/"), root)
    parts = [p for p in classname.replace("::", ".").split(".") if p]
    if not parts or len(parts) > 32 or any("/" in p for p in parts):
        return ""
    for count in range(len(parts), 0, -1):
        base = "/".join(parts[:count])
        for prefix in _TEST_FILE_PREFIXES:
            for suffix in _TEST_FILE_SUFFIXES:
                candidate = f"{prefix}{base}{suffix}"
                if (root / candidate).is_file():
                    return candidate
    return ""


def junit_test_cases(document: Any, root: Path) -> list[TestCase]:
    """Every <testcase> of a JUnit document (nested suites too), in document order. A case
    with <failure> or <error> failed, one with <skipped> was skipped; `file` comes from the
    case, its suite, or its classname (case_file_of)."""
    cases: list[TestCase] = []
    files: dict[str, str] = {}  # classname -> file: looked up once per class
    stack: list[tuple[Any, str]] = [(document, document.get("file", "") if document.tag == "testsuite" else "")]
    while stack:
        element, suite_file = stack.pop()
        children = list(element)
        for child in reversed(children):
            if child.tag == "testsuite":
                stack.append((child, child.get("file") or suite_file))
        if element.tag == "testsuites":
            continue
        for case in element.findall("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            skipped = case.find("skipped")
            if problem is not None:
                status, message, text = "failed", problem.get("message", ""), problem.text or ""
            elif skipped is not None:
                status, message, text = "skipped", skipped.get("message", ""), ""
            else:
                status, message, text = "passed", "", ""
            classname = case.get("classname", "")
            given = case.get("file") or suite_file
            key = f"{classname}\0{given}"
            if key not in files:
                files[key] = case_file_of(classname, root, given)
            cases.append(
                TestCase(
                    name=case.get("name", ""),
                    classname=classname,
                    time=_seconds(case.get("time")),
                    status=status,
                    message=message,
                    text=text[:MAX_TEST_TEXT],
                    file=files[key],
                )
            )
    return cases


def case_display_name(case: TestCase) -> str:
    """`file › test` (or `classname › test`): how the record and messages name a reported test."""
    return " › ".join(part for part in (case.file or case.classname, case.name) if part)


def report_snapshot(step: Step, root: Path, runs_dir: Path) -> dict[str, tuple[int, int, int]]:
    """The files a step's `reports` globs match now, with what identifies their version:
    a file that is the same afterwards is from before the step and is not read."""
    return {
        path: (info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        for path, info in match_files(root, step.reports, runs_dir)
    }


def read_step_reports(
    step: Step, root: Path, runs_dir: Path, before: Mapping[str, tuple[int, int, int]], masker: Masker
) -> tuple[list[TestCase], list[str], list[str]]:
    """The test cases of the reports the step (re)wrote since `before`, masked; the files
    read; and one problem line per report that could not be used (none found included)."""
    found = [
        (path, info)
        for path, info in match_files(root, step.reports, runs_dir)
        if before.get(path) != (info.st_mtime_ns, info.st_ctime_ns, info.st_size)
    ]
    problems: list[str] = []
    if not found:
        shown = ", ".join(repr(p) for p in step.reports)
        return [], [], [f"reports: no file matching {shown} was written by the step"]
    if len(found) > MAX_REPORT_FILES:
        problems.append(f"reports: {len(found)} files match; the first {MAX_REPORT_FILES} were read")
        found = found[:MAX_REPORT_FILES]
    cases: list[TestCase] = []
    for path, _info in found:
        try:
            cases += junit_test_cases(parse_junit_xml(read_report_file(root / path)), root)
        except (ReportError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"reports: {masker.mask_readable(path)} is not a usable JUnit report ({why})")
    if len(cases) > MAX_STEP_TESTCASES:
        problems.append(f"reports: {len(cases)} test cases; the first {MAX_STEP_TESTCASES} are kept")
        cases = cases[:MAX_STEP_TESTCASES]
    masked = [
        TestCase(
            name=masker.mask_readable(c.name),
            classname=masker.mask_readable(c.classname),
            time=c.time,
            status=c.status,
            message=masker.mask_readable(c.message),
            text=masker.mask_readable(c.text),
            file=masker.mask_readable(c.file),
        )
        for c in cases
    ]
    return masked, [path for path, _ in found], problems


def failed_test_details(failed: Iterable[TestCase]) -> list[dict[str, str]]:
    """The record's `failed_test_details`: each failed test's name (as in failed_tests), its
    file relative to the root and the first line of its message, for annotations on the file."""
    return [
        {
            "name": case_display_name(case),
            "file": case.file,
            "message": _shorten((case.message or case.text or "failed").strip().split("\n", 1)[0], 300),
        }
        for case in list(failed)[:REPORT_FAILED_NAMES_MAX]
    ]


def apply_step_reports(result: StepResult, cases: list[TestCase], problems: list[str]) -> StepResult:
    """A step's result with its reports read in: the counts and failed names in the record,
    the cases for the JUnit report; a step whose tool passed fails when a report records a
    failed test or could not be read."""
    failed = [c for c in cases if c.status == "failed"]
    extra = dict(result.extra)
    extra.update(
        tests=extra.get("tests", 0) + len(cases),
        failures=extra.get("failures", 0) + len(failed),
        failed_tests=[*(extra.get("failed_tests") or []), *(case_display_name(c) for c in failed)][
            :REPORT_FAILED_NAMES_MAX
        ],
        failed_test_details=[*(extra.get("failed_test_details") or []), *failed_test_details(failed)][
            :REPORT_FAILED_NAMES_MAX
        ],
    )
    parts = []
    if failed:
        names = ", ".join(case_display_name(c) for c in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        parts.append(f"{len(failed)} of {len(cases)} tests failed: {names}{more}")
    parts += problems
    status, message = result.status, result.message
    if parts:
        if status == "passed":
            status, message = "failed", "; ".join(parts)
        else:
            message = "; ".join(filter(None, [message, *parts]))
    elif status == "passed" and not message:
        message = f"{plural(len(cases), 'test')} passed"
    return StepResult(
        status=status,
        message=message,
        exit_code=result.exit_code,
        extra=extra,
        testcases=[*result.testcases, *cases][:MAX_STEP_TESTCASES],
    )


_STD_STREAM_PATH_RE = lazy_regex(r"/dev/(?:(stdout)|(stderr)|fd/([0-9]+))|/proc/self/fd/([0-9]+)")


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_report_copy(path: Path, data: bytes) -> None:
    """Write `--junit-xml PATH` without destroying what PATH is: /dev/stdout and its kind are
    written to the descriptor itself; a device, FIFO or socket is opened and written into
    (never replaced by a regular file: as root, /dev/full used to become one); a symbolic link
    to a regular file stays a link and its target is replaced atomically; anything else is
    replaced atomically as before. Raises OSError."""
    import stat

    stream = _STD_STREAM_PATH_RE.fullmatch(str(path))
    if stream is not None:
        fd = 1 if stream.group(1) else 2 if stream.group(2) else int(stream.group(3) or stream.group(4))
        for handle in (sys.stdout, sys.stderr):
            try:
                handle.flush()
            except (OSError, ValueError):
                pass
        _write_fd(fd, data)
        return
    try:
        info: os.stat_result | None = os.stat(path)  # through a link: what it leads to
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "is a folder", str(path))
    if info is not None and not stat.S_ISREG(info.st_mode):
        # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) instead of hanging the run
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            os.set_blocking(fd, True)
            _write_fd(fd, data)
        finally:
            os.close(fd)
        return
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def summary_counts(record: dict[str, Any]) -> str:
    entries = record.get("log", [])
    passed = sum(1 for e in entries if e.get("status") == "passed")
    failed = sum(1 for e in entries if e.get("status") == "failed")
    allowed = sum(1 for e in entries if e.get("allowed_failure"))
    skipped = sum(1 for e in entries if e.get("status") in ("skipped", "pending"))
    failed_text = f"{failed} failed" + (f" ({allowed} allowed)" if allowed else "")
    return f"{passed} passed, {failed_text}, {skipped} skipped"


def closing_line(record: dict[str, Any]) -> str:
    return (
        f"{record.get('workflow')}: {summary_counts(record)} in "
        f"{float(record.get('duration_s') or 0):.1f}s (run {record.get('run_id')})"
    )


def render_step_table(record: dict[str, Any], detail_text: Callable[[str], str] = readable) -> list[str]:
    """One row per step: status, duration and, when steps overlapped, when each started; a
    step's message (its own text) goes through detail_text."""
    rows = []
    offsets = step_offsets(record)
    for i, entry in enumerate(record.get("log", [])):
        status = entry.get("status", "?")
        label = "failed*" if entry.get("allowed_failure") else status
        detail = detail_text(str(entry.get("message") or ""))
        start = ""
        if offsets is not None:
            start = f"{'+' + format_duration(offsets[i]) if offsets[i] is not None else '-':>8}"
        rows.append(
            f"  {label:<8}{start} {format_duration(entry.get('duration_s')):>7}  {entry.get('step')}"
            + (f" — {detail}" if detail and status != "passed" else "")
        )
    if any(e.get("allowed_failure") for e in record.get("log", [])):
        rows.append("  (* failure allowed by continue_on_error)")
    return rows


_COLORS = {"passed": "32", "failed": "31", "skipped": "33", "header": "1", "dim": "2"}


class _ConsoleStream:
    """A console stream that may go away (`orchestrate run deploy | head`, a CI log pipe
    closed early): the run, its record and its report matter more than its echo, so after
    EPIPE output is dropped and the run carries on. Before, the BrokenPipeError ended the run
    mid-step with exit 0 and left a record that later read as interrupted."""

    def __init__(self, stream: Any, binary: bool = False) -> None:
        self._stream = stream
        self._binary = binary
        self.gone = False
        inner = getattr(stream, "buffer", None)
        self.buffer = _ConsoleStream(inner, binary=True) if inner is not None and not binary else None

    def _went_away(self) -> None:
        self.gone = True
        if self.buffer is not None:
            self.buffer.gone = True
        try:  # so the interpreter's final flush of sys.stdout does not complain either
            devnull_onto(self._stream.fileno())
        except (OSError, AttributeError, ValueError):
            pass

    def write(self, data: Any) -> None:
        if self.gone:
            return
        try:
            self._stream.write(data)
        except BrokenPipeError:
            self._went_away()

    def flush(self) -> None:
        if self.gone:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._went_away()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())


class Console(RunSink):
    """Everything orchestrate prints while running. Colour only on a terminal without NO_COLOR;
    live status lines only on a terminal, never into a pipe or CI log.

    Output modes: `live` streams the one running step's output as it comes (a chain, or
    --jobs 1); `grouped` prints each step's output whole when it ends, from its log file, so
    steps running in parallel never interleave (the default when they can); `prefixed` streams
    every line as it comes with `name | ` in front. Under GitHub Actions and GitLab a step is
    one group or section: `prefixed` is printed grouped there."""

    MODES = ("live", "grouped", "prefixed")

    def __init__(
        self,
        quiet: bool = False,
        stream: Any = None,
        debug: bool = False,
        color: bool | None = None,
        ci: PlainCIOutput | None = None,
        output: str = "live",
    ) -> None:
        self.stream = _ConsoleStream(stream if stream is not None else sys.stdout)
        self.quiet = quiet
        self.debug_enabled = debug
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.is_tty = is_tty
        self.color = (
            is_tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb" if color is None else color
        )
        self.ci = ci if ci is not None else PlainCIOutput()
        if output == "prefixed" and self.ci.name != "none":
            output = "grouped"
        self.mode = output
        self.masker = Masker()
        self.total = 0
        self.lock = _thread.RLock()  # prefixed output arrives from the steps' threads
        self.running: dict[int, tuple[Step, float]] = {}  # index -> (step, started), start order
        self.live_lines = 0  # status lines drawn at the bottom of the terminal
        self.at_line_start = True  # live mode: the last byte of step output was a newline
        self.last_output = 0.0
        self.partial: dict[int, bytes] = {}  # prefixed mode: each step's unfinished line

    # -- plain writing -------------------------------------------------------------------

    def style(self, text: str, kind: str) -> str:
        return f"\x1b[{_COLORS[kind]}m{text}\x1b[0m" if self.color else text

    def write(self, text: str) -> None:
        """One of orchestrate's own lines. Not masked as a whole: the summary, the run id and
        step names are orchestrate's; what came from a step (messages, output tails, test
        names) was masked where it was produced and goes through step_text() here."""
        with self.lock:
            self._clear_live()
            self.stream.write(text + "\n")
            self.stream.flush()

    def step_text(self, text: str) -> str:
        """Text a step produced, for a line of orchestrate's own: masked, without escapes or
        control characters (a raw ESC or BEL never reaches the terminal this way), and
        escaped as the CI system needs (GitHub: a newline cannot start a forged command)."""
        return self.ci.escape(self.masker.mask_readable(text))

    def _lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.stream.write(line + "\n")

    def debug(self, text: str) -> None:
        if self.debug_enabled:
            self.write(self.style(text, "dim"))

    def _binary(self) -> Any:
        return getattr(self.stream, "buffer", None)

    def _raw(self, data: bytes) -> None:
        binary = self._binary()
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:
            self.stream.write(bytes(data).decode("utf-8", "replace"))
            self.stream.flush()

    def _number(self, step: Step) -> str:
        return f"[{step.index + 1}/{self.total}]"

    # -- live status lines ----------------------------------------------------------------

    def _live_text(self) -> list[str]:
        now = time.monotonic()
        return [f"{self._number(step)} {step.name} … {now - since:.0f}s" for step, since in self.running.values()]

    def _clear_live(self) -> None:
        if not self.live_lines:
            return
        if self.live_lines == 1:
            self.stream.write("\r\x1b[2K")
        else:  # up to the first status line, then clear to the end of the screen
            self.stream.write(f"\r\x1b[{self.live_lines - 1}A\x1b[J")
        self.live_lines = 0

    def _draw_live(self) -> None:
        """The status lines: one per running step (on one line with --quiet); in live mode
        only while the step is silent and its output is at the start of a line."""
        if not self.is_tty or not self.running:
            return
        if self.quiet:
            text = [" · ".join(self._live_text())]
        elif self.mode == "live":
            if not self.at_line_start or time.monotonic() - self.last_output < 1.0:
                return
            text = self._live_text()[:1]
        else:
            text = self._live_text()
        self._clear_live()
        self.stream.write("\r\x1b[2K" + "\n".join(self.style(t, "dim") if not self.quiet else t for t in text))
        self.stream.flush()
        self.live_lines = len(text)

    def tick(self) -> None:
        with self.lock:
            self._draw_live()

    # -- step output ----------------------------------------------------------------------

    def step_output_writer(self, step: Step) -> Callable[[bytes], None] | None:
        """How a step's output reaches the terminal while it runs (None: it does not)."""
        if self.quiet or self.mode == "grouped":
            return None
        if self.mode == "prefixed":
            return lambda data: self._prefixed(step, data)

        def write(data: bytes) -> None:
            with self.lock:
                self._clear_live()
                self._raw(self.ci.fence_output(data))
                if data:
                    self.at_line_start = bytes(data[-1:]) == b"\n"
                self.last_output = time.monotonic()

        return write

    _PREFIX_LINE_MAX = 64 * 1024  # a line that never ends is printed in pieces of this size

    def _prefixed(self, step: Step, data: bytes) -> None:
        with self.lock:
            pending = self.partial.get(step.index, b"") + bytes(data)
            lines = pending.split(b"\n")
            rest = lines.pop()
            while len(rest) > self._PREFIX_LINE_MAX:
                lines.append(rest[: self._PREFIX_LINE_MAX])
                rest = rest[self._PREFIX_LINE_MAX :]
            self.partial[step.index] = rest
            if lines:
                self._clear_live()
                prefix = f"{step.name} | ".encode("utf-8", "replace")
                self._raw(b"".join(prefix + line + b"\n" for line in lines))
                self._draw_live()

    def _flush_prefixed(self, step: Step) -> None:
        rest = self.partial.pop(step.index, b"")
        if rest:
            prefix = f"{step.name} | ".encode("utf-8", "replace")
            self._raw(prefix + rest + b"\n")

    def _replay_log(self, log_path: Path) -> None:
        """Grouped mode: a finished step's whole output, from its log (already masked)."""
        try:
            handle = open(log_path, "rb")
        except OSError:
            return  # a silent step has no log file
        last = b"\n"
        with handle:
            while chunk := handle.read(READ_CHUNK):
                self._raw(self.ci.fence_output(chunk))
                last = chunk[-1:]
        if last != b"\n":
            self._raw(b"\n")

    # -- the run's events (RunSink) ---------------------------------------------------------

    def run_started(self, workflow: Workflow, record: dict[str, Any], masker: Masker) -> None:
        with self.lock:
            self.masker = masker
            self.total = len(workflow.steps)
            self._lines(self.ci.run_started(masker))
            if not self.quiet:
                self.write(
                    self.style(
                        f"orchestrate: {workflow.name} ({plural(len(workflow.steps), 'step')}, run {record['run_id']})",
                        "dim",
                    )
                )

    def _header(self, step: Step) -> None:
        self._lines(self.ci.step_started(step))
        self.write(self.style(f"{self._number(step)} {step.name} ({step.type})", "header"))

    def step_started(self, step: Step, entry: dict[str, Any]) -> None:
        with self.lock:
            self.running[step.index] = (step, time.monotonic())
            self.last_output = time.monotonic()
            self.at_line_start = True
            if not self.quiet:
                if self.mode == "live":
                    self._header(step)
                elif self.mode == "prefixed" or not self.is_tty:
                    self.write(self.style(f"{self._number(step)} {step.name} ({step.type}) started", "dim"))
            self._draw_live()

    def step_skipped(self, step: Step, entry: dict[str, Any]) -> None:
        if not self.quiet:
            self.write(
                self.style(
                    f"{self._number(step)} {step.name} ({step.type}): skipped — "
                    f"{self.step_text(str(entry.get('message', '')))}",
                    "skipped",
                )
            )

    def step_reused(self, step: Step, entry: dict[str, Any]) -> None:
        if not self.quiet:
            self.write(
                self.style(
                    f"{self._number(step)} {step.name} ({step.type}): passed — "
                    f"{self.step_text(str(entry.get('message', '')))}",
                    "passed",
                )
            )

    def step_finished(self, step: Step, entry: dict[str, Any], log_path: Path) -> None:
        with self.lock:
            self.running.pop(step.index, None)
            self._clear_live()
            binary = self._binary()
            if binary is not None:
                binary.flush()
            status = entry["status"]
            kind = (
                "failed"
                if status == "failed" and not entry.get("allowed_failure")
                else ("skipped" if status != "passed" else "passed")
            )
            if not self.quiet:
                if self.mode == "grouped":
                    self._header(step)
                    self._replay_log(log_path)
                elif self.mode == "prefixed":
                    self._flush_prefixed(step)
                elif not self.at_line_start:
                    # output that did not end with a newline: the next line (a fence's closing
                    # token, a GitLab section end, the status) must start a line of its own
                    self._raw(b"\n")
                self.at_line_start = True
                if self.mode != "prefixed":
                    self._lines(self.ci.step_output_ended(step))
            if self.quiet and status == "failed":
                self.write(self.style(f"[{step.index + 1}] {step.name} ({step.type}) failed; last output:", "failed"))
                if entry.get("output_tail"):
                    # the step's own lines: fenced under GitHub, like its live output
                    for line in self.ci.fence(step, [self.masker.mask_readable(str(entry["output_tail"]))]):
                        self.write(line)
            text = (
                f"  {status}"
                + (" (allowed)" if entry.get("allowed_failure") else "")
                + f" in {format_duration(entry.get('duration_s'))}"
                + (f": {self.step_text(str(entry['message']))}" if entry.get("message") and status != "passed" else "")
            )
            if self.mode == "prefixed":
                text = f"{self._number(step)} {step.name}:{text[1:]}"
            if not self.quiet or status == "failed":
                self.write(self.style(text, kind))
            self._lines(self.ci.step_finished(step, entry))
            self.stream.flush()
            self._draw_live()

    def run_finished(self, workflow: Workflow, record: dict[str, Any]) -> None:
        with self.lock:
            self._clear_live()
            self.running.clear()
            if not self.quiet:
                self.write("")
            for row in render_step_table(record, self.step_text):
                status = row.split()[0] if row.strip() else ""
                kind = {"passed": "passed", "failed": "failed", "skipped": "skipped"}.get(status)
                self.write(self.style(row, kind) if kind else row)
            kind = "passed" if record["status"] == "completed" else "failed"
            self.write(self.style(closing_line(record), kind))


# === 8.2. HTML report ===
#
# `orchestrate report RUN_ID` and `run --html-report PATH`: one self-contained page per run
# (no external asset, readable with JavaScript off, offline and on paper), drawn from the run
# record, the ends of the step logs (the record's output_tail has its colours stripped) and
# the test cases of runs/<run_id>/junit.xml. Every piece of text a step produced is escaped
# in one place (html_text); the page's own style and script are the only ones a browser may
# run (a Content-Security-Policy with their hashes). The server's dashboard (section 12)
# shows the same body with its own page around it.


HTML_TAIL_MAX_BYTES = 8192  # of each step log's end shown in the report (the full log is linked)


HTML_TAIL_MAX_LINES = 80


HTML_JUNIT_MAX_BYTES = 32 * 1024 * 1024  # a JUnit file beyond this is not read back into a page


# status -> (symbol, text): the page never tells a status by colour alone
_STATUS_MARKS = {
    "passed": ("✓", "passed"),
    "failed": ("✗", "failed"),
    "allowed": ("!", "failed (allowed)"),
    "skipped": ("–", "skipped"),
    "pending": ("○", "pending"),
    "running": ("…", "running"),
    "reused": ("↺", "reused"),
    "completed": ("✓", "completed"),
}


def html_text(value: Any) -> str:
    """Any value as HTML text (element content or a quoted attribute): escaped, control
    characters dropped (they are not allowed in HTML), lone surrogates shown as U+FFFD."""
    text = _CONTROL_RE.sub("", str(value if value is not None else "").replace("\r", ""))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace('"', "&quot;").replace("'", "&#x27;")
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def entry_kind(entry: Mapping[str, Any]) -> str:
    """How the report shows a step: passed, failed, allowed (failure allowed by
    continue_on_error), skipped, pending, running or reused."""
    status = str(entry.get("status") or "pending")
    if status == "failed" and entry.get("allowed_failure"):
        return "allowed"
    if entry.get("reused") and status in ("passed", "skipped"):
        return "reused"
    return status if status in _STATUS_MARKS else "pending"


def status_label(kind: str) -> str:
    symbol, text = _STATUS_MARKS.get(kind, ("?", kind))
    return f"{symbol} {text}"


@functools.cache
def _sgr_re() -> re.Pattern[str]:
    return re.compile(r"\x1b\[([0-9;:]*)m")


def ansi_to_html(text: str) -> str:
    """Terminal output as HTML: a small, safe subset of SGR (bold, dim, italic, underline,
    the 16 colours, foreground and background; 256-colour codes below 16) becomes
    <span class="...">; every other escape sequence and control character is dropped and
    all text is escaped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    state: dict[str, Any] = {}
    pos = 0

    def emit(chunk: str) -> None:
        chunk = html_text(_ANSI_RE.sub("", chunk))
        if not chunk:
            return
        classes = [name for name in ("b", "d", "i", "u") if state.get(name)]
        if state.get("fg") is not None:
            classes.append(f"f{state['fg']}")
        if state.get("bg") is not None:
            classes.append(f"g{state['bg']}")
        out.append(f'<span class="{" ".join(classes)}">{chunk}</span>' if classes else chunk)

    for match in _sgr_re().finditer(text):
        emit(text[pos : match.start()])
        _apply_sgr(state, match.group(1))
        pos = match.end()
    emit(text[pos:])
    return "".join(out)


def _sgr_simple(state: dict[str, Any], code: int) -> bool:
    """Apply one SGR code that takes no parameters; False when it is not one of those."""
    if code == 0:
        state.clear()
    elif code in (1, 2, 3, 4):
        state["bdiu"[code - 1]] = True
    elif code == 22:
        state.pop("b", None)
        state.pop("d", None)
    elif code in (23, 24):
        state.pop("iu"[code - 23], None)
    elif code in (39, 49):
        state.pop("fg" if code == 39 else "bg", None)
    else:
        return False
    return True


def _sgr_colour(code: int) -> tuple[str, int] | None:
    """The 16-colour SGR codes: ("fg" or "bg", colour 0-15); None for any other code."""
    for layer, normal, bright in (("fg", 30, 90), ("bg", 40, 100)):
        if normal <= code <= normal + 7:
            return layer, code - normal
        if bright <= code <= bright + 7:
            return layer, code - bright + 8
    return None


def _apply_sgr(state: dict[str, Any], params: str) -> None:
    codes = [int(p) if p.isdigit() else 0 for p in params.replace(":", ";").split(";")] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        i += 1
        colour = _sgr_colour(code)
        if colour is not None:
            state[colour[0]] = colour[1]
        elif code in (38, 48):  # 5;N (256 colours) or 2;R;G;B (true colour): only N < 16 is kept
            mode = codes[i] if i < len(codes) else None
            if mode == 5 and i + 1 < len(codes):
                if codes[i + 1] < 16:
                    state["fg" if code == 38 else "bg"] = codes[i + 1]
                i += 2
            else:
                i += 4 if mode == 2 else 1
        else:
            _sgr_simple(state, code)


def _open_regular(path: Path) -> int | None:
    """A descriptor of `path` if it is a regular file; None for a symbolic link, a FIFO (whose
    open would block), a device or anything missing. Files under runs/ are read this way: a
    record is data, and a name in it must never make orchestrate read elsewhere."""
    import stat

    try:
        fd = os.open(
            path,
            os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0),
        )
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def read_log_tail(
    path: Path, masker: Masker | None = None, max_bytes: int = HTML_TAIL_MAX_BYTES, max_lines: int = HTML_TAIL_MAX_LINES
) -> str | None:
    """The end of a step log as text with its escape sequences (for ansi_to_html), masked
    again with `masker`; None when there is no regular file to read."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, max_bytes)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if start > 0 and len(lines) > 1:
        lines = lines[1:]  # the first line was cut by the window
    if lines and lines[-1] == "":
        lines.pop()
    lines = lines[-max_lines:]
    if masker:
        # a secret printed with an escape sequence inside it ("ab\x1b[1mc") is whole once
        # the escapes are gone: such a line loses its colours rather than show the secret
        for n, line in enumerate(lines):
            line = masker.mask(line)
            plain = _ANSI_RE.sub("", line)
            lines[n] = masker.mask(plain) if masker.mask(plain) != plain else line
    return "\n".join(lines)


def _junit_without_testcases(record: Mapping[str, Any]) -> bytes | None:
    """What build_junit_xml writes for this record when no step reported test cases."""
    options = record.get("options")
    shard = options.get("shard") if isinstance(options, Mapping) else None
    try:
        index, total = (int(n) for n in shard.split("/")) if isinstance(shard, str) else (0, 0)
        return build_junit_xml(dict(record), shard=(index, total) if total else None)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        return None  # a record written by hand: the file is parsed


def read_junit_testcases(path: Path, record: Mapping[str, Any]) -> tuple[dict[int, list[TestCase]], str | None]:
    """The per-step test cases build_junit_xml wrote into a run's junit.xml, keyed by step
    index, and a problem line when the file exists but cannot be used. Parsed as the Cypress
    runner parses reports (ElementTree: no external entities, expat's expansion limits),
    with a size limit, never through a link or from a FIFO. The file of a run whose steps
    reported no test cases, byte for byte what build_junit_xml writes for its record, holds
    none: it is not parsed (ElementTree's import was 4 ms of every `run --html-report`)."""
    fd = _open_regular(path)
    if fd is None:
        return {}, None
    try:
        size = os.fstat(fd).st_size
        if size > HTML_JUNIT_MAX_BYTES:
            return {}, f"{path.name} is {size // (1024 * 1024)} MiB: too large to show its test cases"
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
    except OSError as exc:
        return {}, f"{path.name}: unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if data == _junit_without_testcases(record):
        return {}, None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        return {}, f"{path.name}: unreadable: {exc}"
    workflow = xml_safe(str(record.get("workflow") or "workflow"))
    by_package: dict[str, int] = {}
    for index, entry in enumerate(record.get("log") or ()):
        by_package.setdefault(f"{workflow}.{xml_safe(str(entry.get('step') or ''))}", index)
    found: dict[int, list[TestCase]] = {}
    for suite in root.findall("testsuite")[1:]:  # the first one is the run's (a case per step)
        step_index = by_package.get(suite.get("package", ""))
        if step_index is None:
            continue
        for case in suite.findall("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            status = "failed" if problem is not None else "skipped" if case.find("skipped") is not None else "passed"
            found.setdefault(step_index, []).append(
                TestCase(
                    name=case.get("name", ""),
                    classname=case.get("classname", ""),
                    time=_seconds(case.get("time")),
                    status=status,
                    message=problem.get("message", "") if problem is not None else "",
                    text=(problem.text or "") if problem is not None else "",
                )
            )
    return found, None


def _ms_text(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    return format_duration(seconds).replace(".0s", "s")


_SVG_WIDTH, _SVG_LABEL_W, _SVG_RIGHT_PAD, _SVG_ROW_H, _SVG_TOP = 960, 250, 120, 24, 26


_SVG_DEFS = (
    '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" class="hatch-bg"/>'
    '<line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern>'
    '<pattern id="stripes" width="8" height="8" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(-45)"><rect width="8" height="8" class="stripe-bg"/>'
    '<line x1="0" y1="0" x2="0" y2="8" class="stripe-line"/></pattern></defs>'
)


def _timeline_svg(record: Mapping[str, Any], now_ms: int) -> str:
    """The steps on a real clock: one row per step, in start order, its bar from its true
    start to its end (overlap shows steps that ran in parallel). Shapes and words tell the
    status as well as the colour: solid (passed), hatched with a heavy edge (failed), dashed
    outline (failure allowed), striped (running), hollow (reused), a diamond and no bar
    (skipped or not run)."""
    entries = list(record.get("log") or ())
    if not entries:
        return ""
    origin = _epoch_ms(record.get("started_at"))
    spans, unstarted = _timeline_spans(entries, origin, now_ms)
    if origin is None:
        origin = spans[0][0] if spans else now_ms
    total = max(1, max([end for _, end, _ in spans] + [origin + 1]) - origin)
    height = _SVG_TOP + _SVG_ROW_H * (len(spans) + len(unstarted)) + 8
    parts = [
        f'<svg class="timeline" viewBox="0 0 {_SVG_WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="timeline-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="timeline-title">Timeline of the steps, in start order</title>',
        _SVG_DEFS,
        _timeline_ticks(total, height),
    ]
    for row, (start, end, index) in enumerate(spans):
        parts.append(_timeline_bar(entries[index], index, row, start - origin, end - origin, total))
    for row, index in enumerate(unstarted, start=len(spans)):
        parts.append(_timeline_mark(entries[index], index, row))
    parts.append("</svg>")
    return "".join(parts)


def _timeline_spans(
    entries: Sequence[Mapping[str, Any]], origin: int | None, now_ms: int
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """(start, end, index) of the steps that started, by start then step order; the others."""
    spans: list[tuple[int, int, int]] = []
    unstarted: list[int] = []
    for index, entry in enumerate(entries):
        start = _epoch_ms(entry.get("started_at"))
        if start is None:
            unstarted.append(index)
            continue
        end = _epoch_ms(entry.get("finished_at"))
        if end is None:
            duration = entry.get("duration_s")
            end = (
                start + int(float(duration) * 1000)
                if isinstance(duration, (int, float))
                and not isinstance(duration, bool)
                and entry.get("status") != "running"
                else max(start, now_ms)
            )
        if origin is not None and start < origin:  # a clock set back mid-run: never left of zero
            start, end = origin, max(end, origin)
        spans.append((start, max(end, start), index))
    spans.sort(key=lambda span: (span[0], span[2]))
    return spans, unstarted


def _timeline_ticks(total: int, height: int) -> str:
    chart_w = _SVG_WIDTH - _SVG_LABEL_W - _SVG_RIGHT_PAD
    out, tick, step = [], 0, _tick_step(total)
    while tick <= total:
        x = _SVG_LABEL_W + tick / total * chart_w
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_SVG_TOP - 6}" x2="{x:.1f}" y2="{height - 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{_SVG_TOP - 10}">{_ms_text(tick)}</text>'
        )
        tick += step
    return "".join(out)


def _timeline_label(entry: Mapping[str, Any], index: int) -> tuple[str, str]:
    name = str(entry.get("step") or f"step {index + 1}")
    return name, name if len(name) <= 30 else name[:29] + "…"


def _timeline_bar(entry: Mapping[str, Any], index: int, row: int, start: int, end: int, total: int) -> str:
    """One step that ran: its bar from `start` to `end` (ms after the run started)."""
    kind = entry_kind(entry)
    chart_w = _SVG_WIDTH - _SVG_LABEL_W - _SVG_RIGHT_PAD
    y = _SVG_TOP + row * _SVG_ROW_H
    x = _SVG_LABEL_W + start / total * chart_w
    w = max(3.0, (end - start) / total * chart_w)
    name, shown = _timeline_label(entry, index)
    took = _ms_text(end - start)
    tip = f"{name}: {status_label(kind)}, started +{_ms_text(start)}, {took}"
    label_x, anchor = (x + w + 6, "start") if x + w + 6 < _SVG_WIDTH - 70 else (x - 6, "end")
    return (
        f'<g class="bar {kind}" data-step="{html_text(name)}" data-index="{index}" '
        f'data-start-ms="{start}" data-end-ms="{end}"><title>{html_text(tip)}</title>'
        f'<text class="name" x="{_SVG_LABEL_W - 8}" y="{y + 16}">{html_text(_STATUS_MARKS[kind][0] + " " + shown)}</text>'
        f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{_SVG_ROW_H - 8}" rx="2"/>'
        f'<text class="what" x="{label_x:.1f}" y="{y + 16}" text-anchor="{anchor}">'
        f"{html_text(_STATUS_MARKS[kind][1])} {took}</text></g>"
    )


def _timeline_mark(entry: Mapping[str, Any], index: int, row: int) -> str:
    """One step that never started (skipped, not run): a diamond and the reason."""
    kind = entry_kind(entry)
    y = _SVG_TOP + row * _SVG_ROW_H
    name, shown = _timeline_label(entry, index)
    cx, cy = _SVG_LABEL_W + 6, y + _SVG_ROW_H / 2
    reason = str(entry.get("message") or "")
    reason = reason if len(reason) <= 60 else reason[:59] + "…"
    return (
        f'<g class="mark {kind}" data-step="{html_text(name)}" data-index="{index}">'
        f"<title>{html_text(name + ': ' + status_label(kind) + (' — ' + reason if reason else ''))}</title>"
        f'<text class="name" x="{_SVG_LABEL_W - 8}" y="{y + 16}">{html_text(_STATUS_MARKS[kind][0] + " " + shown)}</text>'
        f'<path d="M{cx - 5} {cy} L{cx} {cy - 5} L{cx + 5} {cy} L{cx} {cy + 5} Z"/>'
        f'<text class="what" x="{cx + 10}" y="{y + 16}">{html_text(_STATUS_MARKS[kind][1])}'
        f"{html_text(' — ' + reason) if reason else ''}</text></g>"
    )


def _tick_step(total_ms: int) -> int:
    for step in (
        100,
        200,
        500,
        1000,
        2000,
        5000,
        10_000,
        15_000,
        30_000,
        60_000,
        120_000,
        300_000,
        600_000,
        900_000,
        1_800_000,
        3_600_000,
    ):
        if total_ms / step <= 8:
            return step
    return max(1, total_ms // 8)


def _iso_text(value: Any) -> str:
    """A record timestamp as people read it: 2026-11-27 15:40:00 UTC."""
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return f"{value[:10]} {value[11:19]} UTC"
    return str(value or "-")


def _test_rows(entry: Mapping[str, Any], cases: Sequence[TestCase] | None) -> list[tuple[str, str, str]]:
    """(file, test name, message) of a step's failed tests: from its JUnit cases when the run
    has them (every test, with its file), else from the record's failed_tests names."""
    if cases:
        return [(c.classname, c.name, c.message) for c in cases if c.status == "failed"]
    rows = []
    for name in _failed_tests(entry):
        spec, sep, rest = name.partition(" › ")
        rows.append((spec, rest, "") if sep else ("", name, ""))
    return rows


def render_report_body(
    record: Mapping[str, Any],
    testcases: Mapping[int, Sequence[TestCase]] | None = None,
    tails: Mapping[int, str] | None = None,
    log_links: Mapping[int, str] | None = None,
    junit_problem: str | None = None,
    now_ms: int | None = None,
) -> str:
    """The report of one run as an HTML fragment (header, timeline, steps, failed tests,
    output): what the report file and the dashboard's run page both show. Pure: whatever it
    shows comes in through its arguments. `tails` holds each step's log end with its escape
    sequences (else the record's output_tail is shown); `log_links` each full log's URL."""
    testcases = testcases or {}
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    entries = [e for e in (record.get("log") or ()) if isinstance(e, Mapping)]
    parts = [_report_header(record, now_ms)]
    if entries:
        parts.append('<section id="timeline"><h2>Timeline</h2>' + _timeline_svg(record, now_ms) + "</section>")
        parts.append(_report_steps(entries, _epoch_ms(record.get("started_at"))))
    else:
        parts.append('<p class="empty">No steps recorded yet.</p>')
    failed = _report_failed_tests(entries, testcases, junit_problem)
    if failed:
        parts.append(failed)
    output = _report_output(entries, tails or {}, log_links or {})
    if output:
        parts.append(output)
    return "\n".join(parts)


def _run_took_text(record: Mapping[str, Any], started_ms: int | None, now_ms: int) -> str:
    """How long the run took, or has taken so far while it runs; "-" when unknown."""
    duration = record.get("duration_s")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        return format_duration(float(duration))
    if started_ms is not None and record.get("status") == "running":
        return format_duration(max(0, now_ms - started_ms) / 1000) + " so far"
    return "-"


def _trigger_facts(trigger: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The header's "Trigger" row, and its "Git" row when the run knew its branch or commit."""
    git: Mapping[str, Any] = trigger["git"] if isinstance(trigger.get("git"), Mapping) else {}
    hook = html_text(f" ({trigger['hook']})") if trigger.get("hook") else ""
    facts = [("Trigger", html_text(trigger.get("source") or "?") + hook)]
    if git.get("commit") or git.get("branch"):
        commit = f" @ <code>{html_text(str(git.get('commit'))[:12])}</code>" if git.get("commit") else ""
        dirty = " (uncommitted changes)" if git.get("dirty") else ""
        facts.append(("Git", html_text(git.get("branch") or "detached") + commit + dirty))
    return facts


def _report_header(record: Mapping[str, Any], now_ms: int) -> str:
    """The run's name, status and facts: id, trigger, git, start, duration, step counts."""
    status = str(record.get("status") or "pending")
    run_kind = "failed" if status == "failed" else status if status in _STATUS_MARKS else "pending"
    trigger: Mapping[str, Any] = record["trigger"] if isinstance(record.get("trigger"), Mapping) else {}
    started_ms = _epoch_ms(record.get("started_at"))
    took = _run_took_text(record, started_ms, now_ms)
    facts = [("Run", f"<code>{html_text(record.get('run_id'))}</code>"), *_trigger_facts(trigger)]
    facts.append(("Started", html_text(_iso_text(record.get("started_at")))))
    facts.append(("Duration", f'<span id="run-elapsed" data-started-ms="{started_ms or ""}">{html_text(took)}</span>'))
    facts.append(("Steps", html_text(summary_counts(dict(record)))))
    if record.get("message"):
        facts.append(("Message", html_text(record.get("message"))))
    return (
        f'<header class="run"><h1>{html_text(record.get("workflow") or "run")} '
        f'<span id="run-status" class="status {run_kind}">{html_text(status_label(run_kind))}</span></h1><dl>'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        + "</dl></header>"
    )


def _report_steps(entries: Sequence[Mapping[str, Any]], origin_ms: int | None) -> str:
    """The table of steps: status (text, not colour alone), start offset, duration, attempts."""
    rows = []
    for index, entry in enumerate(entries):
        kind = entry_kind(entry)
        start = _epoch_ms(entry.get("started_at"))
        offset = f"+{_ms_text(start - origin_ms)}" if start is not None and origin_ms is not None else "-"
        dur = entry.get("duration_s")
        dur_text = (
            format_duration(float(dur))
            if isinstance(dur, (int, float)) and not isinstance(dur, bool)
            else "running"
            if kind == "running"
            else "-"
        )
        attempts = entry.get("attempts")
        message = str(entry.get("message") or "")
        rows.append(
            f'<tr id="step-row-{index}" class="{kind}" data-step="{html_text(entry.get("step"))}"'
            f' data-started-ms="{start if start is not None else ""}"><td>{index + 1}</td>'
            f'<td><a href="#step-{index + 1}">{html_text(entry.get("step"))}</a></td>'
            f"<td>{html_text(entry.get('type') or '')}</td>"
            f'<td class="status {kind}">{html_text(status_label(kind))}</td><td>{html_text(offset)}</td>'
            f'<td class="duration">{html_text(dur_text)}</td><td>{html_text(attempts if attempts else "-")}</td>'
            f'<td class="message">{html_text(message)}</td></tr>'
        )
    return (
        '<section id="steps"><h2>Steps</h2><table class="steps"><thead><tr><th>#</th><th>Step</th>'
        "<th>Type</th><th>Status</th><th>Started</th><th>Duration</th><th>Attempts</th>"
        "<th>Message</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def _report_failed_tests(
    entries: Sequence[Mapping[str, Any]], testcases: Mapping[int, Sequence[TestCase]], junit_problem: str | None
) -> str:
    """Each step's failed tests with their files ("" when none failed and JUnit read fine)."""
    blocks = []
    for index, entry in enumerate(entries):
        tests = _test_rows(entry, testcases.get(index))
        if not tests:
            continue
        counted = entry.get("tests")
        total_tests = len(testcases[index]) if testcases.get(index) else counted if isinstance(counted, int) else None
        head = f"{len(tests)} failed" + (f" of {total_tests} tests" if total_tests else "")
        items = "".join(
            f'<li class="failed-test"><span class="file">{html_text(spec) if spec else "(no file)"}</span> '
            f'<span class="test-name">{html_text(name)}</span>'
            + (f'<div class="test-message">{html_text(msg)}</div>' if msg else "")
            + "</li>"
            for spec, name, msg in tests
        )
        blocks.append(
            f'<h3>{html_text(entry.get("step"))} <span class="count">({html_text(head)})</span></h3>'
            f'<ul class="failed-tests">{items}</ul>'
        )
    if not blocks and not junit_problem:
        return ""
    return (
        '<section id="failed-tests"><h2>Failed tests</h2>'
        + "".join(blocks)
        + (f'<p class="problem">{html_text(junit_problem)}</p>' if junit_problem else "")
        + "</section>"
    )


def _report_output(entries: Sequence[Mapping[str, Any]], tails: Mapping[int, str], log_links: Mapping[int, str]) -> str:
    """Each step's output end, ANSI colours as HTML, with a link to the full log."""
    logs = []
    for index, entry in enumerate(entries):
        kind = entry_kind(entry)
        tail = tails.get(index)
        body = ansi_to_html(tail) if tail is not None else html_text(entry.get("output_tail") or "")
        link = log_links.get(index)
        if not body and kind in ("skipped", "pending"):
            continue
        logs.append(
            f'<div class="log {kind}" id="step-{index + 1}"><h3><span class="status {kind}">'
            f"{html_text(status_label(kind))}</span> {html_text(entry.get('step'))}"
            + (f' <a class="full-log" href="{html_text(link)}">full log</a>' if link else "")
            + f'</h3><pre id="tail-{index}">{body or "<i>(no output)</i>"}</pre></div>'
        )
    if not logs:
        return ""
    return (
        '<section id="output"><h2>Output</h2><p class="hint">The last lines of each step; '
        "“full log” opens all of it.</p>" + "".join(logs) + "</section>"
    )


_REPORT_CSS = """
:root{color-scheme:light;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--dim:#57606a;--line:#d0d7de}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid var(--line)}h3{font-size:14px;margin:14px 0 4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dt{color:var(--dim)}dd{margin:0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.status{font-weight:600;white-space:nowrap}.status.passed,.status.completed{color:var(--ok)}.status.failed{color:var(--bad)}
.status.allowed,.status.skipped{color:var(--warn)}.status.running,.status.pending,.status.reused{color:var(--dim)}
table.steps{border-collapse:collapse;width:100%}table.steps th,table.steps td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
table.steps td.message{color:var(--dim);word-break:break-word}table.steps td:nth-child(2){min-width:9em}tr.failed td{background:#fff5f5}
svg.timeline{display:block;max-width:100%;height:auto;font:12px system-ui,sans-serif}
svg .grid{stroke:#eaeef2}svg .tick{fill:var(--dim);text-anchor:middle;font-size:11px}svg .name{text-anchor:end;fill:#1f2328}svg .what{fill:var(--dim)}
svg .bar rect{stroke-width:1.5}svg .passed rect{fill:var(--ok);stroke:var(--ok)}
svg .failed rect{fill:url(#hatch);stroke:var(--bad);stroke-width:3}svg .allowed rect{fill:#fff8c5;stroke:var(--warn);stroke-dasharray:4 3}
svg .running rect{fill:url(#stripes);stroke:#0969da}svg .reused rect{fill:#fff;stroke:var(--ok)}
svg .mark path{fill:#fff;stroke:var(--warn);stroke-width:1.5}svg .hatch-bg{fill:#ffebe9}svg .hatch-line{stroke:var(--bad);stroke-width:3}
svg .stripe-bg{fill:#ddf4ff}svg .stripe-line{stroke:#0969da;stroke-width:3}
ul.failed-tests{margin:4px 0;padding-left:20px}.file{font:12px ui-monospace,monospace;color:var(--dim)}.test-name{font-weight:600}
.test-message{font:12px ui-monospace,monospace;white-space:pre-wrap;color:var(--bad)}.problem,.hint,.empty{color:var(--dim)}
.log pre{background:#f6f8fa;border:1px solid var(--line);padding:8px;overflow:auto;max-height:420px;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;word-break:break-all}
.log.folded pre{display:none}.fold{font:12px system-ui;margin-left:8px}
.b{font-weight:700}.d{opacity:.7}.i{font-style:italic}.u{text-decoration:underline}
.f0{color:#24292f}.f1{color:#cf222e}.f2{color:#116329}.f3{color:#7d4e00}.f4{color:#0550ae}.f5{color:#8250df}.f6{color:#1b7c83}.f7{color:#6e7781}
.f8{color:#57606a}.f9{color:#a40e26}.f10{color:#1a7f37}.f11{color:#633c01}.f12{color:#218bff}.f13{color:#a475f9}.f14{color:#3192aa}.f15{color:#8c959f}
.g0{background:#24292f;color:#fff}.g1{background:#ffebe9}.g2{background:#dafbe1}.g3{background:#fff8c5}.g4{background:#ddf4ff}.g5{background:#fbefff}.g6{background:#d8f3f6}.g7{background:#eaeef2}
.g8{background:#57606a;color:#fff}.g9{background:#ffcecb}.g10{background:#aceebb}.g11{background:#fae17d}.g12{background:#b6e3ff}.g13{background:#ecd8ff}.g14{background:#b3f0f5}.g15{background:#fff}
@media print{body{max-width:none;padding:0;font-size:11pt}.log pre,.log.folded pre{display:block;max-height:none;overflow:visible;background:#fff;border-color:#999}
.fold,nav,.no-print{display:none}tr.failed td{background:none}h2{break-after:avoid}.log,tr,li{break-inside:avoid}a{color:inherit;text-decoration:none}}
"""


# Folds the logs of the steps that passed; everything stays visible with JavaScript off and
# everything unfolds to be printed.
_REPORT_JS = """
(function(){
  var logs = document.querySelectorAll(".log");
  logs.forEach(function(log){
    var head = log.querySelector("h3"); if (!head) return;
    var button = document.createElement("button"); button.type = "button"; button.className = "fold";
    function show(){ button.textContent = log.classList.contains("folded") ? "show" : "hide"; }
    button.addEventListener("click", function(){ log.classList.toggle("folded"); show(); });
    if (log.classList.contains("passed") || log.classList.contains("reused")) log.classList.add("folded");
    show(); head.appendChild(button);
  });
  window.addEventListener("beforeprint", function(){ logs.forEach(function(l){ l.classList.remove("folded"); }); });
})();
"""


@functools.cache
def _csp_hash(text: str) -> str:
    import binascii  # base64.b64encode's own, without importing base64 and struct

    digest = builtin_sha256()(text.encode("utf-8")).digest()
    return "'sha256-" + binascii.b2a_base64(digest, newline=False).decode("ascii") + "'"


def render_html_report(
    record: Mapping[str, Any],
    testcases: Mapping[int, Sequence[TestCase]] | None = None,
    tails: Mapping[int, str] | None = None,
    log_links: Mapping[int, str] | None = None,
    junit_problem: str | None = None,
    now_ms: int | None = None,
) -> str:
    """The self-contained HTML report of one run (see render_report_body for the arguments):
    no external asset, and a Content-Security-Policy that lets the browser run only the
    page's own style and script, whatever text ends up in it."""
    policy = (
        f"default-src 'none'; style-src {_csp_hash(_REPORT_CSS)}; script-src {_csp_hash(_REPORT_JS)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    title = f"{record.get('workflow') or 'run'} {record.get('status') or ''} — run {record.get('run_id') or ''}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="orchestrate {__version__}">'
        f"<title>{html_text(title)}</title><style>{_REPORT_CSS}</style></head>\n<body>\n"
        + render_report_body(record, testcases, tails, log_links, junit_problem, now_ms)
        + f'\n<footer class="hint">orchestrate {__version__} · report written {html_text(_iso_text(utc_now()))}</footer>'
        f"\n<script>{_REPORT_JS}</script>\n</body></html>\n"
    )


def gather_report_inputs(
    record: Mapping[str, Any], store: RunStore, link_base: Path | None, masker: Masker | None = None
) -> dict[str, Any]:
    """What render_report_body needs beyond the record, read from the run's folder: each
    step log's end (masked again with `masker`), links to the logs relative to `link_base`
    (the report's folder; None: no links) and the JUnit test cases."""
    run_id = str(record.get("run_id") or "")
    try:
        run_dir = store.run_dir(run_id)
    except UsageError:
        return {}
    tails: dict[int, str] = {}
    links: dict[int, str] = {}
    for index, entry in enumerate(record.get("log") or ()):
        if not isinstance(entry, Mapping) or not entry.get("log_file"):
            continue
        # only the file name is taken from the record: the log is always looked up in the run's folder
        path = run_dir / Path(str(entry["log_file"])).name
        tail = read_log_tail(path, masker)
        if tail is None:
            continue
        tails[index] = tail
        if link_base is not None:
            from urllib.parse import quote

            links[index] = quote(os.path.relpath(path, link_base).replace(os.sep, "/"))
    testcases, problem = read_junit_testcases(store.junit_path(run_id), record)
    return {"testcases": testcases, "tails": tails, "log_links": links, "junit_problem": problem}


def check_report_target(path: Path, flag: str) -> Path:
    """An HTML report may replace a regular file, never a folder, a link, a FIFO or a device
    (`--html /dev/null` as root would replace the device node)."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(mode):
        raise UsageError(f"{flag} {path}: is a symbolic link; give the path of a file to write (or of its target)")
    if stat.S_ISDIR(mode):
        raise UsageError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'report.html'}")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{flag} {path}: is not a regular file (a FIFO, socket or device); give a file path")
    return path


def write_html_report(
    record: Mapping[str, Any],
    store: RunStore,
    path: Path | None = None,
    masker: Masker | None = None,
    flag: str = "--html",
) -> Path:
    """Write the run's HTML report atomically (default runs/<run_id>/report.html); returns
    where. Folders it creates and the file get the modes of everything under runs/."""
    target = path if path is not None else store.run_dir(str(record.get("run_id"))) / "report.html"
    check_report_target(target, flag)
    try:
        target.parent.mkdir(mode=RUNS_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {target.parent} for the HTML report: {exc.strerror or exc}") from None
    inputs = gather_report_inputs(record, store, target.parent.absolute(), masker)
    page = render_html_report(record, **inputs)
    try:
        write_atomic(target, page.encode("utf-8", "replace"))
    except OSError as exc:
        raise StoreError(f"cannot write the HTML report {target}: {exc.strerror or exc}") from None
    return target


class HtmlReportSink(RunSink):
    """`run --html-report PATH`: the report, once the record and JUnit file are written (a
    failed or interrupted run too). A report that cannot be written is a warning: the run's
    outcome and exit code stay what its steps made them."""

    def __init__(self, path: Path, store: RunStore) -> None:
        self.path = path
        self.store = store
        self.masker: Masker | None = None

    def run_started(self, workflow: Workflow, record: dict[str, Any], masker: Masker) -> None:
        self.masker = masker

    def run_finished(self, workflow: Workflow, record: dict[str, Any]) -> None:
        try:
            write_html_report(record, self.store, self.path, self.masker, flag="--html-report")
        except OrchestrateError as exc:
            sys.stderr.write(f"orchestrate: warning: {exc}\n")


# === 8.3. GitHub step summary ===


def _md_cell(text: Any, limit: int = 300) -> str:
    """A Markdown table cell: one line, no pipe breaking the row, no HTML."""
    value = " ".join(str(text or "").split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _failed_tests(entry: Mapping[str, Any]) -> list[str]:
    names = []
    for item in entry.get("failed_tests") or ():
        if isinstance(item, Mapping):
            names.append(str(item.get("name") or item.get("title") or item))
        else:
            names.append(str(item))
    return names


def _mermaid_label(text: str) -> str:
    # ':' ends a gantt task label and '#'/';' start comments/statements in Mermaid
    return re.sub(r"[:#;\n\r]+", " ", text).strip() or "step"


def render_gantt(record: Mapping[str, Any]) -> str:
    """A Mermaid `gantt` of the steps that ran, on a real clock (dateFormat x = epoch ms)."""
    lines = [
        "```mermaid",
        "gantt",
        f"    title {_mermaid_label(str(record.get('workflow', 'run')))}",
        "    dateFormat x",
        "    axisFormat %M:%S",
        "    section steps",
    ]
    drawn = 0
    for index, entry in enumerate(record.get("log") or ()):
        start_ms = _epoch_ms(entry.get("started_at"))
        if start_ms is None or entry.get("status") == "skipped":
            continue
        end_ms = _epoch_ms(entry.get("finished_at"))
        if end_ms is None:
            end_ms = start_ms + int(float(entry.get("duration_s") or 0) * 1000)
        # an allowed failure (continue_on_error) did not fail the run: not drawn as critical
        tag = (
            ""
            if entry.get("allowed_failure")
            else {"passed": "done, ", "failed": "crit, ", "running": "active, "}.get(str(entry.get("status")), "")
        )
        lines.append(
            f"    {_mermaid_label(str(entry.get('step', '')))} :{tag}s{index}, {start_ms}, {max(end_ms, start_ms + 1)}"
        )
        drawn += 1
    lines.append("```")
    return "\n".join(lines) if drawn else ""


def render_step_summary(record: Mapping[str, Any]) -> str:
    """The Markdown appended to $GITHUB_STEP_SUMMARY: headline, table, gantt timeline."""
    log = list(record.get("log") or ())
    trigger = record.get("trigger") or {}
    head = f"### orchestrate: {_md_cell(record.get('workflow'))} {record.get('status', '')}"
    # counted as the console's closing line counts them: "1 failed (1 allowed)"
    meta = summary_counts(dict(record)) + f" · run `{record.get('run_id', '')}`"
    if trigger.get("job_url"):
        meta += f" · [job log]({trigger['job_url']})"
    rows = ["| Step | Status | Time | Failed tests / reason |", "|---|---|---:|---|"]
    for entry in log:
        status = str(entry.get("status", ""))
        allowed = status == "failed" and bool(entry.get("allowed_failure"))
        shown = "failed (allowed)" if allowed else f"**{status}**" if status == "failed" else status
        duration = entry.get("duration_s")
        took = f"{float(duration):.1f}s" if isinstance(duration, (int, float)) and status != "skipped" else ""
        failed = _failed_tests(entry)
        detail = "; ".join(failed[:10]) + (f" (+{len(failed) - 10} more)" if len(failed) > 10 else "")
        if not detail and status in ("failed", "skipped"):
            detail = str(entry.get("message") or "")
        rows.append(f"| {_md_cell(entry.get('step'))} | {shown} | {took} | {_md_cell(detail)} |")
    sections = [head, "", meta, "", *rows, ""]
    gantt = render_gantt(record)
    if gantt:
        sections += [gantt, ""]
    return "\n".join(sections) + "\n"


def append_step_summary(env: Mapping[str, str], record: Mapping[str, Any]) -> Path | None:
    """Append the run's summary to $GITHUB_STEP_SUMMARY (under GitHub Actions only)."""
    target = env.get("GITHUB_STEP_SUMMARY")
    if env.get("GITHUB_ACTIONS") != "true" or not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(render_step_summary(record))
    return path


# === 9. Runners ===


@dataclass
class StepContext:
    """Everything a runner may use while its step runs."""

    step: Step
    workflow: Workflow
    settings: Settings
    root: Path
    runs_dir: Path
    run_id: str
    run_dir: Path
    env: dict[str, str]
    cwd: Path
    masker: Masker
    previous: list[dict[str, Any]]
    trigger: dict[str, Any]
    options: RunOptions
    sink: OutputSink | None = None
    guard: SignalGuard | None = None
    debug_write: Callable[[str], None] | None = None
    last_process: ProcessResult | None = None
    # A runner's own memory across the attempts of one step: on a retry (`retries`) the
    # engine calls execute() again with this same context, so what an attempt already did
    # outside (a Jira comment posted) can be kept here and not done twice.
    runner_state: dict[str, Any] = field(default_factory=dict)
    # the attempt's time budget: one deadline (time.monotonic()) for every process it starts
    deadline: float | None = None
    timed_out: bool = False  # the attempt ran out of time (a process, or a wait of the runner)
    leftover_processes: int = 0  # processes the attempt's processes left running, ended

    def run_process(
        self,
        argv: Sequence[str] | str,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
    ) -> ProcessResult:
        if self.sink is None:
            raise RuntimeError("run_process outside a running step")
        if self.options.debug and self.debug_write is not None:
            import shlex

            shown = argv if isinstance(argv, str) else shlex.join(argv)
            self.debug_write(f"+ {self.masker.mask(shown)}  (in {cwd or self.cwd})")
        result = run_process(
            argv,
            cwd=cwd or self.cwd,
            env=env if env is not None else self.env,
            sink=self.sink,
            deadline=self.deadline,
            timeout=self.step.timeout if self.deadline is None else None,
            guard=self.guard,
            grace=self.options.kill_grace,
            stdin=stdin,
            name=self.step.name,
        )
        self.last_process = result
        self.timed_out = self.timed_out or result.timed_out
        self.leftover_processes += result.leftover_processes
        return result

    def time_left(self) -> float | None:
        """Seconds until the attempt's deadline (None: no timeout)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def emit(self, line: str) -> None:
        if self.sink is not None:
            self.sink.line(line)


class Runner:
    """A step type. Runners return a StepResult (or raise StepFailure) and never print: the
    engine streams, times, records and reports."""

    type_name: str = ""
    keys: dict[str, KeySpec] = {}
    accepts_any_key = False

    def check_definition(self, step: Step, workflow_path: Path, settings: Settings) -> None:
        """Definition-time checks beyond key types; raise DefinitionError."""

    def check_paths(self, step: Step, where: str, root: Path) -> None:
        """Definition-time checks of the step's paths against the project root (`where` names
        the file and the step); raise DefinitionError."""

    def preflight(self, ctx: StepContext) -> list[str]:
        """Problems on disk, reported ahead of time by validate and --dry-run."""
        return []

    def describe(self, ctx: StepContext) -> list[str]:
        """The dry-run plan: what the step would do, secrets masked."""
        return []

    def execute(self, ctx: StepContext) -> StepResult:
        raise NotImplementedError


RUNNERS: dict[str, Runner] = {}


def register_runner(cls: type[Runner]) -> type[Runner]:
    RUNNERS[cls.type_name] = cls()
    return cls


def _process_result(result: ProcessResult, what: str) -> StepResult:
    if result.timed_out:
        raise StepFailure("")  # replaced by the engine with the timeout message
    if result.exit_code == 0:
        return StepResult("passed", exit_code=0)
    if result.exit_code is not None and result.exit_code < 0:
        name = (
            signal.Signals(-result.exit_code).name
            if -result.exit_code in signal.Signals._value2member_map_
            else str(-result.exit_code)
        )
        return StepResult("failed", f"{what} was killed by {name}", exit_code=result.exit_code)
    return StepResult("failed", f"{what} exited with code {result.exit_code}", exit_code=result.exit_code)


# === 9.1. Python ===
# `python` steps: a script or module run by a virtualenv's own interpreter; the venv is
# built, rebuilt and swapped only when orchestrate built it (its marker proves it).


def venv_python(venv: Path) -> Path:
    """A virtualenv's interpreter (POSIX layout: orchestrate runs steps on Linux and macOS)."""
    return venv / "bin" / "python"


# A virtualenv orchestrate builds carries this marker (the requirements file's sha256 on its
# first line) next to its pyvenv.cfg. Only a folder with both, and not a symbolic link, is ever
# rebuilt or removed: a `"venv": "src"` that is the user's source folder is left alone (0.1.0
# ran rmtree on any folder without bin/python, the project root included).
_REQUIREMENTS_MARKER = ".orchestrate-requirements.sha256"


_VENV_BUILD_INFIX = ".orchestrate-build-"  # <venv>.orchestrate-build-<random>: a build under way


_VENV_OLD_INFIX = ".orchestrate-old-"  # the previous venv between the swap and its removal


_VENV_LOCK_SUFFIX = ".orchestrate-lock"  # beside the venv: one build at a time across runs


_NOT_A_VENV = "not a virtualenv"


def venv_built_by_orchestrate(venv: Path) -> bool:
    """Whether `venv` is a virtualenv orchestrate built: a real folder (not a link) holding
    pyvenv.cfg and the marker orchestrate writes when a build succeeds."""
    try:
        if venv.is_symlink() or not venv.is_dir():
            return False
        marker = venv / _REQUIREMENTS_MARKER
        return (venv / "pyvenv.cfg").is_file() and marker.is_file() and not marker.is_symlink()
    except OSError:
        return False


class _VenvLock:
    """An exclusive flock on <venv>.orchestrate-lock, waited for within the step's deadline and
    its signals. The file is removed on release; a waiter that then holds the lock of a removed
    file tries again with the file on disk (so two runs never both believe they hold it)."""

    def __init__(self, ctx: StepContext, venv: Path) -> None:
        self.ctx = ctx
        self.path = venv.with_name(venv.name + _VENV_LOCK_SUFFIX)
        self.fd: int | None = None

    def __enter__(self) -> _VenvLock:
        import fcntl

        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not told:
                            self.ctx.emit(
                                f"orchestrate: waiting for another run building virtualenv "
                                f"{self.ctx.step.config['venv']}"
                            )
                            told = True
                        left = self.ctx.time_left()
                        if left is not None and left <= 0:
                            self.ctx.timed_out = True
                            raise StepFailure("") from None
                        pause = 0.1 if left is None else max(0.0, min(0.1, left))
                        if self.ctx.guard is not None:
                            self.ctx.guard.sleep(pause)
                        else:
                            time.sleep(pause)
                held = os.fstat(fd)
                try:
                    current = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                    self.fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        _unlink_quietly(self.path)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _relocate_venv(built: Path, final: Path) -> None:
    """A venv records its own path in its scripts' #! lines, bin/activate* and pyvenv.cfg: a venv
    built in <venv>.orchestrate-build-… and moved into place must name its final folder, or
    bin/pip and every installed console script would point at a folder that no longer exists."""
    old, new = os.fsencode(str(built)), os.fsencode(str(final))
    candidates = [built / "pyvenv.cfg"]
    bin_dir = venv_python(built).parent
    try:
        candidates += sorted(bin_dir.iterdir())
    except OSError:
        pass
    for path in candidates:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 1024 * 1024:
                continue
            data = path.read_bytes()
            if old not in data or not (
                data.startswith(b"#!") or path.name.lower().startswith("activate") or path.name == "pyvenv.cfg"
            ):
                continue  # never edit a binary: its length matters
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            os.chmod(path, mode)
        except OSError:
            continue


@register_runner
class PythonRunner(Runner):
    """A Python script (or module, `python -m`) run by its own virtualenv's interpreter."""

    type_name = "python"
    keys = {
        "script": KeySpec((str,)),
        "module": KeySpec((str,)),  # instead of script: `python -m MODULE` (pytest, mypy...)
        "venv": KeySpec((str,), required=True),
        "args": KeySpec((list,), item_type=str),
        "requirements": KeySpec((str,)),
    }

    def check_definition(self, step: Step, workflow_path: Path, settings: Settings) -> None:
        where = f"{workflow_path.parent.name}/{workflow_path.name}: {step.label}"
        has_script, has_module = "script" in step.config, "module" in step.config
        if has_script == has_module:
            raise DefinitionError(
                f"{where}: "
                + (
                    "give either 'script' or 'module', not both"
                    if has_script
                    else "missing required key 'script' (or 'module' to run `python -m MODULE`)"
                )
            )
        module = step.config.get("module")
        if module is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", module):
            raise DefinitionError(
                f"{where}: key 'module': {module!r} is not a module name "
                '(dotted names such as "pytest" or "mypkg.cli")'
            )

    def check_paths(self, step: Step, where: str, root: Path) -> None:
        """A venv orchestrate builds (the step has `requirements`) must be a folder of its own
        inside the root: never the root, a folder above it or outside it (links resolved), and
        never a folder that holds the step's script or requirements file, since a rebuild
        replaces the whole folder. A venv without `requirements` is only read: anywhere goes."""
        config = step.config
        if not config.get("requirements"):
            return
        real_root = os.path.realpath(root)
        shown = config["venv"]
        venv = os.path.realpath(os.path.join(root, shown))
        example = os.path.join(os.path.dirname(config.get("script") or config["requirements"]), ".venv")
        fix = (
            f"a virtualenv built from 'requirements' needs a folder of its own inside the project, "
            f'e.g. "venv": "{example}"'
        )
        if venv == real_root:
            raise DefinitionError(f"{where}: key 'venv': {shown!r} is the project root; {fix}")
        if _inside(real_root, venv):
            raise DefinitionError(f"{where}: key 'venv': {shown!r} is a folder above the project root; {fix}")
        if not _inside(venv, real_root):
            resolved = "" if venv == os.path.normpath(os.path.join(root, shown)) else f" (it resolves to {venv})"
            raise DefinitionError(f"{where}: key 'venv': {shown!r} is outside the project root{resolved}; {fix}")
        for key, label in (("script", "script"), ("requirements", "requirements file")):
            if key in config and _inside(os.path.realpath(os.path.join(root, config[key])), venv):
                raise DefinitionError(
                    f"{where}: key 'venv': {shown!r} contains the step's {label} {config[key]}; "
                    f"orchestrate replaces the whole venv folder when it rebuilds it, so {fix}"
                )

    def _paths(self, ctx: StepContext) -> tuple[Path, Path | None, Path | None]:
        """The venv, the script (None for a `module` step) and the requirements file."""
        config = ctx.step.config
        requirements = ctx.root / config["requirements"] if config.get("requirements") else None
        script = ctx.root / config["script"] if "script" in config else None
        return ctx.root / config["venv"], script, requirements

    @staticmethod
    def _target(ctx: StepContext, script: Path | None) -> list[str]:
        """What the interpreter runs: the script, or -m MODULE."""
        return [str(script)] if script is not None else ["-m", ctx.step.config["module"]]

    def _venv_fix(self, ctx: StepContext, venv: Path) -> str:
        shown = ctx.step.config["venv"]
        return (
            f"virtualenv {shown} does not exist; create it with: python3 -m venv {shown} && "
            f'{shown}/bin/pip install -r <your requirements file> (or add "requirements" to the '
            f"step and orchestrate builds it)"
        )

    def _not_a_venv(self, ctx: StepContext) -> str:
        shown = ctx.step.config["venv"]
        return (
            f"venv {shown} exists but is not a virtualenv orchestrate built (no pyvenv.cfg and "
            f"{_REQUIREMENTS_MARKER} in it), so orchestrate leaves it untouched: move it away, or "
            f'point "venv" at another folder'
        )

    def preflight(self, ctx: StepContext) -> list[str]:
        venv, script, requirements = self._paths(ctx)
        problems = []
        if requirements is None and not venv_python(venv).exists():
            problems.append(self._venv_fix(ctx, venv))
        if requirements is not None and not requirements.is_file():
            problems.append(f"requirements file {ctx.step.config['requirements']} does not exist")
        if requirements is not None and self._venv_state(venv, requirements) == _NOT_A_VENV:
            problems.append(self._not_a_venv(ctx))
        if script is not None and not script.is_file():
            problems.append(f"script {ctx.step.config['script']} does not exist")
        return problems

    def describe(self, ctx: StepContext) -> list[str]:
        venv, _script, requirements = self._paths(ctx)
        lines = []
        if requirements is not None:
            state = self._venv_state(venv, requirements)
            if state not in ("ready", _NOT_A_VENV):
                lines.append(
                    f"build virtualenv {ctx.step.config['venv']} from {ctx.step.config['requirements']} ({state})"
                )
        argv = [
            str(venv_python(venv).relative_to(ctx.root) if venv.is_relative_to(ctx.root) else venv_python(venv)),
            *([ctx.step.config["script"]] if "script" in ctx.step.config else ["-m", ctx.step.config["module"]]),
            *ctx.step.config.get("args", []),
        ]
        import shlex

        lines.append(ctx.masker.mask(shlex.join(argv)))
        return lines

    @staticmethod
    def _venv_state(venv: Path, requirements: Path) -> str:
        """ready, missing, requirements changed, broken (ours, without its interpreter), or
        not a virtualenv (a folder orchestrate did not build and cannot use)."""
        if not os.path.lexists(venv):
            return "missing"
        if not venv_built_by_orchestrate(venv):
            # a virtualenv orchestrate did not build is used as it is, never touched
            return "ready" if venv_python(venv).exists() else _NOT_A_VENV
        if not venv_python(venv).exists():
            return "broken"
        try:
            digest = sha256_hex(requirements.read_bytes())
            recorded = (venv / _REQUIREMENTS_MARKER).read_text(errors="replace").split("\n", 1)[0].strip()
        except OSError:
            return "ready"
        return "ready" if recorded == digest else "requirements changed"

    def _build_venv(self, ctx: StepContext, venv: Path, requirements: Path) -> None:
        """Build into <venv>.orchestrate-build-<random> beside it and swap it in only once pip
        has succeeded: a failed rebuild leaves the previous venv as it was. One build at a time
        (a lock file beside the venv), so two runs never build into the same folder."""
        config = ctx.step.config
        if not requirements.is_file():
            raise StepFailure(f"requirements file {config['requirements']} does not exist")
        try:
            venv.parent.mkdir(parents=True, exist_ok=True)
            lock = _VenvLock(ctx, venv)
            lock.__enter__()
        except OSError as exc:
            raise StepFailure(
                f"cannot lock virtualenv {config['venv']}: {venv.name + _VENV_LOCK_SUFFIX}: {exc.strerror or exc}"
            ) from None
        try:
            state = self._venv_state(venv, requirements)  # another run may have built it meanwhile
            if state == "ready":
                return
            if state == _NOT_A_VENV:
                raise StepFailure(self._not_a_venv(ctx))
            self._remove_abandoned_builds(venv)
            self._build_and_swap(ctx, venv, requirements, state)
        finally:
            lock.__exit__()

    @staticmethod
    def _remove_abandoned_builds(venv: Path) -> None:
        """Folders of builds whose run was killed (their names are orchestrate's own)."""
        import shutil

        try:
            siblings = list(venv.parent.iterdir())
        except OSError:
            return
        for path in siblings:
            if (
                path.name.startswith((venv.name + _VENV_BUILD_INFIX, venv.name + _VENV_OLD_INFIX))
                and not path.is_symlink()
                and path.is_dir()
            ):
                shutil.rmtree(path, ignore_errors=True)

    def _build_and_swap(self, ctx: StepContext, venv: Path, requirements: Path, state: str) -> None:
        import shutil

        config = ctx.step.config
        data = requirements.read_bytes()
        ctx.emit(f"orchestrate: building virtualenv {config['venv']} ({state}) from {config['requirements']}")
        kept = f"; the previous virtualenv {config['venv']} was kept" if os.path.lexists(venv) else ""
        build = venv.with_name(f"{venv.name}{_VENV_BUILD_INFIX}{os.urandom(4).hex()}")
        has_requirements = any(line.strip() and not line.strip().startswith(b"#") for line in data.splitlines())
        try:
            # no pip when nothing is to be installed: creating a venv without it is offline and fast
            create = [sys.executable, "-m", "venv", "--prompt", venv.name, str(build)] + (
                [] if has_requirements else ["--without-pip"]
            )
            result = ctx.run_process(create)
            if result.exit_code != 0:
                raise StepFailure(f"could not create virtualenv {config['venv']} (exit code {result.exit_code}){kept}")
            if has_requirements:
                result = ctx.run_process(
                    [
                        str(venv_python(build)),
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "-r",
                        str(requirements),
                    ]
                )
                if result.exit_code != 0:
                    raise StepFailure(
                        f"pip install -r {config['requirements']} failed "
                        f"(exit code {result.exit_code}){kept}; see the step log"
                    )
            _relocate_venv(build, venv)
            (build / _REQUIREMENTS_MARKER).write_text(
                sha256_hex(data) + "\n"
                "# orchestrate built this virtualenv from the requirements file with this sha256;\n"
                "# it rebuilds (replaces) it when that file changes. Delete this file to keep it as is.\n"
            )
            self._swap(ctx, build, venv)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)  # only ever the folder this build created
            raise

    @staticmethod
    def _swap(ctx: StepContext, build: Path, venv: Path) -> None:
        import shutil

        try:
            if not os.path.lexists(venv):
                os.rename(build, venv)
                return
            if not venv_built_by_orchestrate(venv):  # checked again: it is about to move
                raise StepFailure(
                    f"venv {ctx.step.config['venv']} changed while orchestrate rebuilt it; it was left untouched"
                )
            old = venv.with_name(f"{venv.name}{_VENV_OLD_INFIX}{os.urandom(4).hex()}")
            os.rename(venv, old)
            try:
                os.rename(build, venv)
            except OSError:
                os.rename(old, venv)
                raise
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise StepFailure(
                f"could not move the new virtualenv into {ctx.step.config['venv']}: {exc.strerror or exc}"
            ) from None

    def execute(self, ctx: StepContext) -> StepResult:
        venv, script, requirements = self._paths(ctx)
        if requirements is not None:
            state = self._venv_state(venv, requirements)
            if state == _NOT_A_VENV:
                raise StepFailure(self._not_a_venv(ctx))
            if state != "ready":
                self._build_venv(ctx, venv, requirements)
        python = venv_python(venv)
        if not python.exists():
            raise StepFailure(self._venv_fix(ctx, venv))
        if script is not None and not script.is_file():
            raise StepFailure(f"script {ctx.step.config['script']} does not exist")
        argv = [str(python), *self._target(ctx, script), *ctx.step.config.get("args", [])]
        return _process_result(
            ctx.run_process(argv), "script" if script is not None else f"python -m {ctx.step.config['module']}"
        )


# === 9.2. Commands ===
# `command` steps: an argv list, or a string run by /bin/sh.


@register_runner
class CommandRunner(Runner):
    """A command: an argv list run directly, or a string run by /bin/sh."""

    type_name = "command"
    keys = {"run": KeySpec((str, list), required=True, item_type=None)}

    def check_definition(self, step: Step, workflow_path: Path, settings: Settings) -> None:
        run = step.resolved.get("run")
        where = f"{workflow_path.parent.name}/{workflow_path.name}: {step.label}"
        if isinstance(run, list):
            if not run:
                raise DefinitionError(f"{where}: key 'run' is an empty list; give the command and its arguments")
            for i, item in enumerate(run):
                if not isinstance(item, str):
                    raise DefinitionError(f"{where}: key 'run[{i}]' must be a string, not {_value_type_name(item)}")
        elif not str(run).strip():
            raise DefinitionError(f"{where}: key 'run' is empty; give a command")

    def preflight(self, ctx: StepContext) -> list[str]:
        import shutil

        run = ctx.step.config["run"]
        if isinstance(run, list):
            program = run[0]
            if "/" in program:
                if not (ctx.cwd / program).exists():
                    return [f"command {program} does not exist"]
            elif shutil.which(program, path=ctx.env.get("PATH")) is None:
                return [f"command '{program}' is not on PATH"]
        return []

    def describe(self, ctx: StepContext) -> list[str]:
        import shlex

        run = ctx.step.config["run"]
        return [ctx.masker.mask(run if isinstance(run, str) else shlex.join(run))]

    def execute(self, ctx: StepContext) -> StepResult:
        return _process_result(ctx.run_process(ctx.step.config["run"]), "command")


# === 9.3. Plugins ===
# Plugin runners: step types from entry points, run in a child interpreter.


def _find_plugin(step_type: str, root: Path) -> str | None:
    """Where a plugin type is defined: a file under integrations/, or an entry point."""
    path = root / "integrations" / f"{step_type}_runner.py"
    if path.is_file():
        return str(path)
    if step_type in _entry_point_names():
        return f"entry point {step_type}"
    return None


_ENTRY_POINTS: dict[str, Any] | None = None


def _entry_point_names() -> dict[str, Any]:
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:  # importlib.metadata costs tens of ms: only for plugin types
        from importlib.metadata import entry_points

        _ENTRY_POINTS = {ep.name: ep for ep in entry_points(group="orchestrate.runners")}
    return _ENTRY_POINTS


# The step dict reaches the child on its stdin (a file that has no name: memfd or an unlinked
# temporary file), never in an environment variable: a big step made exec fail with E2BIG, and
# the environment of a process is readable by its other processes for as long as they live. The
# child then puts /dev/null on its stdin, as every step has.
_PLUGIN_BOOTSTRAP = r"""
import json, os, sys, traceback
result_path = os.environ.pop("ORCHESTRATE_PLUGIN_RESULT")
with os.fdopen(os.dup(0), "rb") as source:
    step = json.loads(source.read().decode("utf-8", "surrogateescape"))
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
kind, target, type_name = sys.argv[1], sys.argv[2], sys.argv[3]
def report(ok, message):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with open(os.open(result_path, flags, 0o600), "w", encoding="utf-8", errors="replace") as handle:
        json.dump({"ok": ok, "message": message}, handle)
try:
    if kind == "file":
        import importlib.util
        sys.path.insert(0, os.path.dirname(target))
        spec = importlib.util.spec_from_file_location(type_name + "_runner", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        execute = getattr(module, "execute", None)
    else:
        from importlib.metadata import entry_points
        loaded = [ep for ep in entry_points(group="orchestrate.runners") if ep.name == type_name][0].load()
        execute = getattr(loaded, "execute", loaded)
except BaseException as exc:
    traceback.print_exc()
    report(False, target + ": cannot load plugin: " + type(exc).__name__ + ": " + str(exc))
    sys.exit(1)
if not callable(execute):
    report(False, target + ": has no execute(step) function")
    sys.exit(1)
try:
    result = execute(step)
except SystemExit as exc:
    if exc.code not in (None, 0):
        report(False, target + ": called sys.exit(" + repr(exc.code) + ")")
        sys.exit(1)
    result = None
except BaseException as exc:
    traceback.print_exc()
    report(False, target + ": " + (type(exc).__name__ + ": " + str(exc) if str(exc) else type(exc).__name__))
    sys.exit(1)
sys.stdout.flush()
report(True, result if isinstance(result, str) else "")
"""


def _unnamed_file(data: bytes) -> int:
    """A read-only descriptor of a file holding `data` that no path leads to (memfd on Linux,
    else a temporary file unlinked at once), positioned at its start."""
    try:
        fd = os.memfd_create("orchestrate-step", getattr(os, "MFD_CLOEXEC", 0))
    except (AttributeError, OSError):
        import tempfile

        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class PluginRunner(Runner):
    """A type that is not built in: integrations/<type>_runner.py or an entry point in group
    orchestrate.runners. execute(step) runs in a child interpreter, so a plugin gets the same
    streaming, timeout and process-tree handling as any step and cannot take orchestrate down."""

    accepts_any_key = True

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def _target(self, root: Path) -> tuple[str, str]:
        path = root / "integrations" / f"{self.type_name}_runner.py"
        if path.is_file():
            return "file", str(path)
        if self.type_name in _entry_point_names():
            return "entry_point", f"entry point '{self.type_name}'"
        raise StepFailure(f"plugin for type '{self.type_name}' not found: add integrations/{self.type_name}_runner.py")

    def describe(self, ctx: StepContext) -> list[str]:
        kind, target = self._target(ctx.root)
        shown = _display_path(Path(target), ctx.root) if kind == "file" else target
        return [f"plugin {shown}: execute(step)"]

    def execute(self, ctx: StepContext) -> StepResult:
        kind, target = self._target(ctx.root)
        shown = _display_path(Path(target), ctx.root) if kind == "file" else target
        result_path = ctx.run_dir / f".plugin-result-{ctx.step.index + 1}.json"
        _unlink_quietly(result_path)  # the child creates it anew (O_EXCL): never through a link
        env = dict(ctx.env, ORCHESTRATE_PLUGIN_RESULT=str(result_path))
        step_file = _unnamed_file(json.dumps(ctx.step.resolved, ensure_ascii=False).encode("utf-8", "surrogateescape"))
        try:
            process = ctx.run_process(
                [sys.executable, "-c", _PLUGIN_BOOTSTRAP, kind, shown if kind != "file" else target, self.type_name],
                env=env,
                stdin=step_file,
            )
        finally:
            os.close(step_file)
        try:
            outcome = json.loads(result_path.read_text(encoding="utf-8"))
            result_path.unlink()
        except (OSError, ValueError):
            outcome = None
        if process.timed_out:
            raise StepFailure("")
        if outcome is None:
            return StepResult(
                "failed",
                f"{shown}: plugin process ended without a result (exit code {process.exit_code})",
                exit_code=process.exit_code,
            )
        message = ctx.masker.mask(str(outcome.get("message", "")).replace(target, shown))
        if outcome.get("ok") and process.exit_code == 0:
            return StepResult("passed", message, exit_code=0)
        return StepResult("failed", message or f"{shown}: failed", exit_code=process.exit_code)


# === 9.4. HTTP helper ===
# The one place orchestrate talks HTTP.  It retries what a retry can fix (a refused or
# timed-out connection, 429, 5xx — or fewer statuses, as the caller says) and nothing
# else, and it never puts request headers (where credentials live) into a message.


HTTP_ATTEMPTS = 4  # 1 try + 3 retries


HTTP_BACKOFF_S = 1.0  # 1 s, 2 s, 4 s between attempts


HTTP_MAX_DELAY_S = 30.0  # cap for the backoff between attempts


# A server's Retry-After is waited for up to this; a longer one ends the retries at once
# (waiting less than the server asked only earns another 429).
HTTP_MAX_RETRY_AFTER_S = 120.0


HTTP_CONNECT_TIMEOUT_S = 10.0


HTTP_READ_TIMEOUT_S = 30.0


# RFC 9110 §9.2.2: only these may be repeated blindly after the request may have reached
# the server.  A POST whose response never came is not retried (it may have been applied:
# a second Jira comment is worse than a failed step).
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass
class HttpResponse:
    """A finished HTTP exchange (any status).  Header names are lower-case.  `stopped`
    says why no further attempt was made although the status is one that is retried
    (a Retry-After too long, the deadline)."""

    status: int
    headers: dict[str, str]
    text: str
    attempts: int
    url: str
    stopped: str = ""

    def json(self) -> Any:
        return json.loads(self.text)


class HttpTransportError(Exception):
    """No HTTP response at all after the last attempt.  `kind` is one of refused,
    dns, connect_timeout, read_timeout, aborted, tls, proxy, connection, deadline.
    `maybe_applied` is True when the request may have reached the server (a timeout or a
    dropped connection after sending).  The message names host and port only: never a
    header, never a credential."""

    def __init__(self, kind: str, message: str, attempts: int, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.maybe_applied = maybe_applied


class _AuthorizationHeader:
    """requests' `auth=` hook that sets one Authorization header.  Credentials must go
    through `auth=`: given as a plain header, requests replaces them with ~/.netrc's (or
    $NETRC's) entry for the host, and the wrong account's refusal then blames the token."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<Authorization ***>"


def _http_sleep(seconds: float, guard: SignalGuard | None = None) -> None:
    """Wait between attempts; with a guard, Ctrl-C/SIGTERM end the wait at once.  The seam
    tests monkeypatch to make backoff instant."""
    if guard is not None:
        guard.sleep(seconds)
    else:
        time.sleep(seconds)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date, RFC 9110
    §10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _proxy_for(url: str) -> tuple[str, str]:
    """(host:port of the proxy requests uses for `url`, the variable that names it)."""
    from urllib.parse import urlsplit

    import requests.utils

    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url)) or ""
    scheme = urlsplit(url).scheme
    variable = next(
        (
            name
            for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY")
            if proxy and os.environ.get(name) == proxy
        ),
        f"{scheme.upper()}_PROXY",
    )
    return (_host_port(proxy) if proxy else "?"), variable


def _transport_failure(
    exc: Exception, method: str, url: str, connect_timeout: float, read_timeout: float
) -> tuple[str, str, str, bool, bool]:
    """Classify a requests exception as (kind, message, hint, retryable, maybe_applied);
    the hint (" — what to do") goes after any "after N attempts"."""
    from urllib.parse import urlsplit

    import requests  # already loaded by the caller; local so module import stays cheap
    import urllib3

    where = _host_port(url)
    host = urlsplit(url).hostname or where
    again = method in _IDEMPOTENT_METHODS
    note = "" if again else " (not retried: the request may already have been applied)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return (
            "connect_timeout",
            f"could not connect to {where} within {connect_timeout:.3g}s (connect_timeout)",
            "",
            True,
            False,
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return (
            "read_timeout",
            f"no response from {where} within {read_timeout:.3g}s (read_timeout){note}",
            "",
            again,
            True,
        )
    if isinstance(exc, requests.exceptions.ProxyError):
        # refused or unreachable proxy: the request never left for the server
        proxy, variable = _proxy_for(url)
        return (
            "proxy",
            f"cannot connect to the proxy {proxy} ({variable}) on the way to {where}",
            f" — check {variable} and NO_PROXY",
            True,
            False,
        )
    if isinstance(exc, requests.exceptions.SSLError):
        why, hint = _tls_failure(str(exc))
        return "tls", f"TLS handshake with {where} failed ({why})", hint, False, False
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, urllib3.exceptions.NameResolutionError):
            return "dns", f"cannot resolve host {host!r}", " — check the URL", True, False
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            if _caused_by(reason, ConnectionRefusedError):
                return "refused", f"connection refused by {where}", "", True, False
            return "connection", f"could not connect to {where}", "", True, False
        # The connection broke after the request was sent (RemoteDisconnected, reset).
        return "aborted", f"{where} closed the connection without a response{note}", "", again, True
    if isinstance(exc, OSError) and "CA certificate bundle" in str(exc):
        return "tls", f"cannot use the CA bundle ({exc})", "", False, False
    return "connection", f"request to {where} failed ({type(exc).__name__})", "", False, False


def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    auth: Any = None,
    verify: bool | str = True,
    connect_timeout: float = HTTP_CONNECT_TIMEOUT_S,
    read_timeout: float = HTTP_READ_TIMEOUT_S,
    attempts: int = HTTP_ATTEMPTS,
    backoff: float = HTTP_BACKOFF_S,
    max_delay: float = HTTP_MAX_DELAY_S,
    max_retry_after: float = HTTP_MAX_RETRY_AFTER_S,
    deadline: float | None = None,
    retry_statuses: Callable[[int], bool] = lambda status: status == 429 or status >= 500,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[int, str, float], None] | None = None,
) -> HttpResponse:
    """Send one request, retrying connection failures and `retry_statuses` with exponential backoff
    (backoff * 2**n, capped at `max_delay`), or after the server's Retry-After when it sends one (up
    to `max_retry_after`; longer ends the retries). `deadline` (a time.monotonic() value, e.g. from
    the step's timeout) bounds every wait and every timeout: no attempt starts or waits past it.
    Returns the last response whatever its status (the caller maps statuses to messages); raises
    HttpTransportError when no response ever came. Redirects are not followed: a POST silently
    turned into a GET by a redirect is a lost comment. `auth` is requests' auth hook (see
    _AuthorizationHeader). `on_retry(attempt, reason, delay)` is told before each wait."""
    import requests  # here, not at module top: start-up time matters in a git hook

    sleep = sleep or _http_sleep
    method = method.upper()
    for attempt in range(1, attempts + 1):
        connect, read = _attempt_timeouts(url, attempt, deadline, connect_timeout, read_timeout)
        delay = min(max_delay, backoff * 2 ** (attempt - 1))
        try:
            resp = requests.request(
                method,
                url,
                headers=headers,
                json=json_body,
                auth=auth,
                verify=verify,
                timeout=(connect, read),
                allow_redirects=False,
            )
        except (requests.exceptions.RequestException, OSError) as exc:
            reason = _retryable_failure(exc, method, url, (connect, read), attempt, attempts, deadline, delay)
        else:
            result = HttpResponse(resp.status_code, _lower_keys(resp.headers), resp.text, attempt, url)
            if not retry_statuses(resp.status_code) or attempt == attempts:
                return result
            reason = f"HTTP {resp.status_code}"
            wait = _retry_delay(result, delay, max_retry_after, deadline)
            if wait is None:
                return result
            delay = wait
        if on_retry is not None:
            on_retry(attempt, reason, delay)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _attempt_timeouts(
    url: str, attempt: int, deadline: float | None, connect_timeout: float, read_timeout: float
) -> tuple[float, float]:
    """An attempt's (connect, read) timeouts, shortened to what the deadline leaves; raises
    when nothing is left."""
    if deadline is None:
        return connect_timeout, read_timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise HttpTransportError(
            "deadline", f"the step's timeout ran out before the request to {_host_port(url)} could be sent", attempt - 1
        )
    return min(connect_timeout, left), min(read_timeout, left)


def _retryable_failure(
    exc: Exception,
    method: str,
    url: str,
    timeouts: tuple[float, float],
    attempt: int,
    attempts: int,
    deadline: float | None,
    delay: float,
) -> str:
    """A request that got no response: the reason to retry it, or HttpTransportError when it
    may not be retried (not retryable, the last attempt, or no time left for the wait)."""
    kind, message, hint, retryable, maybe_applied = _transport_failure(exc, method, url, *timeouts)
    tries = f" after {attempt} attempts" if attempt > 1 else ""
    if not retryable or attempt == attempts:
        raise HttpTransportError(kind, message + tries + hint, attempt, maybe_applied) from None
    if deadline is not None and time.monotonic() + delay >= deadline:
        raise HttpTransportError(
            kind,
            message + tries + " (the step's timeout leaves no time for another attempt)" + hint,
            attempt,
            maybe_applied,
        ) from None
    return message


def _retry_delay(result: HttpResponse, delay: float, max_retry_after: float, deadline: float | None) -> float | None:
    """How long to wait before retrying a retryable status: the server's Retry-After when it
    sends one, else the backoff; None (with result.stopped saying why) when the wait is longer
    than orchestrate waits or would pass the deadline."""
    retry_after = parse_retry_after(result.headers.get("retry-after"))
    if retry_after is not None:
        if retry_after > max_retry_after:
            result.stopped = (
                f"not retried: the server asks to wait {retry_after:g}s, more than "
                f"orchestrate waits ({max_retry_after:g}s)"
            )
            return None
        delay = retry_after
    if deadline is not None and time.monotonic() + delay >= deadline:
        result.stopped = f"not retried: waiting {delay:g}s would pass the step's timeout"
        return None
    return delay


def _tls_failure(text: str) -> tuple[str, str]:
    """What went wrong in a TLS handshake, from the SSL error's text, and what to do."""
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate not trusted", (
            ' — if the site uses a private CA, give the step "ca_bundle" '
            "(or set REQUESTS_CA_BUNDLE) with its CA certificate file"
        )
    if "match" in text and "hostname" in text.lower():
        return "the certificate is for another host name", " — check the host name in the URL"
    if any(
        s in text
        for s in (
            "WRONG_VERSION_NUMBER",
            "record layer failure",
            "UNKNOWN_PROTOCOL",
            "packet length too long",
            "HTTP_REQUEST",
        )
    ):
        return "the server does not speak TLS on that port", " — is the URL http:// rather than https://?"
    return "TLS error", (
        ' — check the certificate ("ca_bundle" or REQUESTS_CA_BUNDLE for a '
        "private CA) and the http/https scheme of the URL"
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def summarize_http_body(text: str, content_type: str = "", limit: int = 200) -> str:
    """One short line describing an error body: Jira's errorMessages/errors, another
    JSON message, an HTML page's title, or the first line of text.  Never the whole page."""
    import html

    text = text or ""
    stripped = text.strip()
    if not stripped:
        return "empty body"
    looks_html = "html" in content_type.lower() or stripped[:200].lower().startswith(("<!doctype html", "<html"))
    if not looks_html:
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return _shorten(_json_error_summary(data), limit)
        if data is None and "<" not in stripped[:1]:
            return _shorten(stripped.splitlines()[0], limit)
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if match and match.group(1).strip():
        return f"HTML page {_shorten(html.unescape(' '.join(match.group(1).split())), 80)!r}"
    body_text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return f"HTML page {_shorten(html.unescape(body_text), 80)!r}" if body_text else "HTML page"


def _json_error_summary(data: dict[str, Any]) -> str:
    """Jira's errorMessages and errors, else another API's message/error, else the object."""
    parts = [str(m) for m in data.get("errorMessages") or [] if m]
    errors = data.get("errors")
    if isinstance(errors, dict):
        parts += [f"{k}: {v}" for k, v in errors.items()]
    for key in ("message", "error"):
        if not parts and isinstance(data.get(key), str):
            parts.append(data[key])
    return "; ".join(parts) if parts else json.dumps(data, sort_keys=True)


# === 9.5. Jira: pure helpers ===


JIRA_ISSUE_KEY_RE = lazy_regex(r"[A-Z][A-Z0-9_]+-[0-9]+")


# Keys inside free text (a branch name, a commit message); compiled on first use (re's cache)
_JIRA_KEY_IN_TEXT = r"(?<![A-Za-z0-9])[A-Z][A-Z0-9_]+-[0-9]+(?![A-Za-z0-9])"


_JIRA_PROJECT = r"[A-Z][A-Z0-9_]+"


# A URL in a comment: it ends at whitespace or at characters no URL carries unencoded;
# trailing sentence punctuation is not part of it.
_URL_IN_TEXT = r"https?://[^\s<>\"'`{}|\\^\[\]]+"


_URL_TRAILING = ".,;:!?)"


# Jira Cloud stores a comment in a field limited to 32,767 characters (Java string length, so
# UTF-16 code units); longer bodies are rejected with a 400.  We cut and say so instead.
JIRA_COMMENT_LIMIT = 32_767


JIRA_TRUNCATION_MARKER = "\n[… truncated by orchestrate: {omitted} characters omitted]"


JIRA_PLACEHOLDERS = ("workflow", "run_id", "status", "failed_steps", "summary", "git_branch", "git_commit", "ci_url")


JIRA_UNKNOWN_VALUE = "n/a"


JIRA_ISSUES_FROM = ("branch", "commits")


# More keys than this found by issues_from is a mistake (a merge of a long branch, a commit
# message listing a backlog), not a set of issues to comment on: the step fails, sends nothing.
JIRA_MAX_FOUND_ISSUES = 20


# The names Jira gives its three status categories (a category's own name is the preferred
# target when several transitions lead into it)
JIRA_CATEGORY_NAMES = {"new": "To Do", "indeterminate": "In Progress", "done": "Done"}


JIRA_TRANSITION_KEYS = ("name", "to_status_category", "prefer", "fields")


# Characters Jira's wiki markup (API 2, Server/Data Center) gives a meaning: *bold*,
# _italic_, -strike-, +underline+, ^sup^, ~sub~, ??cite??, {macro}, [link], |table|,
# !image!, # lists.  A backslash before one shows it as written.
_JIRA_WIKI_SPECIAL = "*_-+^~?{}[]|!#"


_JIRA_API_PATH_RE = lazy_regex(r"^(?P<prefix>.*)/rest/api/(?P<version>2|3|latest)$")


_ENV_REF_RE = lazy_regex(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class JiraApi:
    """Where a Jira REST API lives and which version it speaks."""

    base: str  # ".../rest/api/2" or ".../rest/api/3", no trailing slash
    version: int  # 2: wiki-markup string bodies, 3: Atlassian Document Format
    site: str  # the site root, for messages


def jira_api(jira_url: str) -> JiraApi:
    """Resolve `jira_url` to an API base.  An explicit `.../rest/api/2|3` is kept
    (`latest` is API 2); a site root uses API 3 on Jira Cloud (`*.atlassian.net`, and
    `https://api.atlassian.com/ex/jira/<cloudId>` for scoped API tokens) and API 2
    elsewhere (Server/Data Center has no API 3).  ValueError says why not."""
    from urllib.parse import urlsplit

    parts = urlsplit(jira_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{jira_url!r} is not an http(s) URL (expected e.g. https://your-site.atlassian.net)")
    if parts.username is not None or parts.password is not None:
        # messages name the URL: credentials in it would be printed and written everywhere
        raise ValueError(
            f"{parts.scheme}://***@{parts.hostname}…: credentials do not belong in the URL; "
            'give them as "user" and "token"'
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{jira_url!r} has a query or fragment; give the site root "
            "or the API base, e.g. https://jira.example.com/rest/api/2"
        )
    path = parts.path.rstrip("/")
    root = f"{parts.scheme}://{parts.netloc}"
    match = _JIRA_API_PATH_RE.match(path)
    if match:
        version = 3 if match["version"] == "3" else 2
        site = root + match["prefix"]
        return JiraApi(base=f"{root}{path}", version=version, site=site)
    if "/rest/" in path + "/":
        raise ValueError(
            f"{jira_url!r} is not a Jira REST API base (expected .../rest/api/2, .../rest/api/3 or the site root)"
        )
    site = root + path  # a context path such as /jira is kept
    hostname = (parts.hostname or "").lower()
    cloud = hostname.endswith(".atlassian.net") or (
        hostname == "api.atlassian.com" and re.fullmatch(r"/ex/jira/[^/]+", path) is not None
    )
    version = 3 if cloud else 2
    return JiraApi(base=f"{site}/rest/api/{version}", version=version, site=site)


def check_jira_issue_key(issue: str) -> str:
    """An issue key (PROJ-123) or a numeric issue id (10042): Jira takes either in a path."""
    if not (JIRA_ISSUE_KEY_RE.fullmatch(issue) or re.fullmatch(r"[1-9][0-9]{0,17}", issue)):
        raise ValueError(
            f"{issue!r} is not a Jira issue key (expected e.g. PROJ-123: "
            "a capital letter, capitals/digits/_, a dash, a number) or a numeric issue id"
        )
    return issue


def find_jira_issue_keys(texts: Iterable[str], projects: Sequence[str] = ()) -> list[str]:
    """Issue keys named in `texts` (a branch name, commit messages), first seen first, each
    once; with `projects`, only keys of those projects (UTF-8 and SHA-256 look like keys)."""
    wanted = set(projects)
    found: dict[str, None] = {}
    for text in texts:
        for match in re.finditer(_JIRA_KEY_IN_TEXT, text):
            key = match.group()
            if not wanted or key.rsplit("-", 1)[0] in wanted:
                found.setdefault(key)
    return list(found)


def jira_template_fields(template: str) -> list[str]:
    """The placeholders a comment template uses.  ValueError for an unknown one, a
    malformed brace, or a conversion/format spec; `{{` and `}}` are literal braces."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    fields = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in JIRA_PLACEHOLDERS:
            hint = did_you_mean(name, JIRA_PLACEHOLDERS) or (
                " (placeholders: "
                + ", ".join(f"{{{p}}}" for p in JIRA_PLACEHOLDERS)
                + "; write {{ or }} for a literal brace)"
            )
            raise ValueError(f"unknown placeholder {shown}{hint}")
        if spec or conversion:
            raise ValueError(f"placeholder {shown}: conversions and format specs are not supported, write {{{name}}}")
        fields.append(name)
    return fields


def render_jira_comment(template: str, values: dict[str, str]) -> str:
    """Substitute placeholders (only names, never attribute or index lookups)."""
    import string

    jira_template_fields(template)
    out = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(values.get(name) or JIRA_UNKNOWN_VALUE)
    return "".join(out)


def _run_status_so_far(previous: list[dict]) -> str:
    # a continue_on_error step's failure is recorded as allowed_failure and does not fail the run
    failed = [e for e in previous if e.get("status") == "failed" and not e.get("allowed_failure")]
    return "failed" if failed else "passed"


def jira_template_values(workflow: str, run_id: str, previous: list[dict], trigger: dict) -> dict[str, str]:
    """The values a comment template can use, from the run so far."""
    lines = []
    for entry in previous:
        line = f"{entry.get('step')}: {entry.get('status')}"
        if isinstance(entry.get("duration_s"), (int, float)):
            line += f" in {entry['duration_s']:.1f}s"
        if entry.get("status") in ("failed", "skipped") and entry.get("message"):
            line += f" — {_shorten(str(entry['message']).splitlines()[0], 200)}"
        lines.append(line)
    failed = [str(e.get("step")) for e in previous if e.get("status") == "failed"]
    git = trigger.get("git")
    git = git if isinstance(git, dict) else {}
    ci = trigger.get("ci")  # ci_info(): GitHub Actions, GitLab CI, Jenkins
    ci = ci if isinstance(ci, dict) else {}
    return {
        "workflow": workflow,
        "run_id": run_id,
        "status": _run_status_so_far(previous),
        "failed_steps": ", ".join(failed) if failed else "none",
        "summary": "\n".join(lines) if lines else "no earlier steps",
        "git_branch": str(git.get("branch") or ""),
        "git_commit": str(git.get("commit") or ""),
        "ci_url": str(ci.get("job_url") or ""),
    }


def jira_unicode_text(text: str) -> str:
    """`text` as Unicode JSON can carry: git hands orchestrate undecodable bytes of a branch
    name or message as lone surrogates (surrogateescape), which no JSON text may hold and
    Jira refuses; each such byte becomes U+FFFD."""
    if not re.search("[\ud800-\udfff]", text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return re.sub("[\ud800-\udfff]", "\ufffd", text)


def _split_urls(text: str) -> list[tuple[str, bool]]:
    """`text` cut into (piece, is_url) runs, URLs without trailing sentence punctuation."""
    pieces: list[tuple[str, bool]] = []
    last = 0
    for match in re.finditer(_URL_IN_TEXT, text):
        url = match.group()
        while url and url[-1] in _URL_TRAILING and not (url[-1] == ")" and url.count("(") >= url.count(")")):
            url = url[:-1]
        if len(url) <= len("https://"):
            continue
        if match.start() > last:
            pieces.append((text[last : match.start()], False))
        pieces.append((url, True))
        last = match.start() + len(url)
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces


def jira_wiki_escape(text: str) -> str:
    """Text shown as written by Jira's wiki markup (API 2): a backslash before each
    character the markup gives a meaning; URLs are left whole (Jira links them)."""
    return "".join(
        piece if is_url else "".join("\\" + c if c in _JIRA_WIKI_SPECIAL else c for c in piece)
        for piece, is_url in _split_urls(text)
    )


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def truncate_jira_text(text: str, limit: int = JIRA_COMMENT_LIMIT, marker: str = JIRA_TRUNCATION_MARKER) -> str:
    """Cut `text` to at most `limit` UTF-16 code units, ending with `marker` (its
    {omitted} says how much was cut).  Text within the limit is returned unchanged."""
    total = _utf16_len(text)
    if total <= limit:
        return text
    keep = limit - _utf16_len(marker.format(omitted=total))
    head = text.encode("utf-16-le")[: 2 * max(keep, 0)].decode("utf-16-le", errors="ignore")
    return head + marker.format(omitted=total - _utf16_len(head))


def _adf_inline(line: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for piece, is_url in _split_urls(line):
        node: dict[str, Any] = {"type": "text", "text": piece}
        if is_url:
            node["marks"] = [{"type": "link", "attrs": {"href": piece}}]
        nodes.append(node)
    return nodes


def jira_adf_document(text: str) -> dict[str, Any]:
    """Atlassian Document Format for plain text: one paragraph per line, an empty line
    an empty paragraph (ADF forbids empty text nodes), each URL a text node with a link
    mark so Jira shows it as a link."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": _adf_inline(line)} for line in lines],
    }


def jira_comment_payload(
    text: str, api_version: int, limit: int = JIRA_COMMENT_LIMIT, *, visibility: dict[str, Any] | None = None
) -> tuple[dict[str, Any], bool]:
    """The JSON body of POST/PUT .../comment and whether it was truncated.  API 2 takes a
    string of wiki markup (the truncation marker escaped to show as written); API 3 an
    ADF document, sized so its serialized form fits the limit too (Jira stores the ADF
    JSON in the same limited field).  `visibility` restricts who sees the comment."""
    text = text.rstrip("\n")
    extra = {"visibility": dict(visibility)} if visibility else {}
    if api_version != 3:
        body = truncate_jira_text(
            text, limit, jira_wiki_escape(JIRA_TRUNCATION_MARKER).replace("\\{omitted\\}", "{omitted}")
        )
        return {"body": body, **extra}, body != text

    def fits(budget: int) -> tuple[dict[str, Any], bool] | None:
        cut = truncate_jira_text(text, budget)
        doc = jira_adf_document(cut)
        size = _utf16_len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
        return ({"body": doc, **extra}, cut != text) if size <= limit else None

    best = fits(limit)
    if best is not None:
        return best
    low, high = 0, limit  # the largest text budget whose document fits: ~15 tries
    best = fits(0) or (
        {"body": jira_adf_document(JIRA_TRUNCATION_MARKER.strip().format(omitted=len(text))), **extra},
        True,
    )
    while low < high - 1:
        middle = (low + high) // 2
        found = fits(middle)
        if found is None:
            high = middle
        else:
            low, best = middle, found
    return best


def jira_auth_header(user: str | None, token: str) -> str:
    """user + token: HTTP Basic (Jira Cloud: account e-mail + API token); token alone:
    Bearer (Server/Data Center personal access token)."""
    import base64

    if user:
        return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode("ascii")
    return "Bearer " + token


def token_is_literal(raw_value: Any) -> bool:
    """True when the token is written in the workflow file itself rather than taken from
    the environment: any text outside ${VAR} references, or a non-empty ${VAR:-default}."""
    if not isinstance(raw_value, str) or not raw_value:
        return False
    if any(m["default"] for m in _ENV_REF_RE.finditer(raw_value)):
        return True
    return bool(_ENV_REF_RE.sub("", raw_value).strip())


def _token_source(raw_value: Any) -> str:
    """Where the user should look when the token is refused."""
    if isinstance(raw_value, str):
        match = _ENV_REF_RE.fullmatch(raw_value.strip())
        if match:
            return match["name"]
    return "the step's token"


def _parse_transition_target(value: Any, where: str) -> dict[str, Any]:
    """One transition target: a name, or an object with `name` or `to_status_category`
    (optional `prefer` with a category, optional `fields`)."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}is empty (give a transition name such as 'Done')")
        return {"name": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}must be a transition name or an object, not {_value_type_name(value)}")
    for key in value:
        if key not in JIRA_TRANSITION_KEYS:
            raise ValueError(
                f"{where}unknown key {key!r}" + did_you_mean(key, [*JIRA_TRANSITION_KEYS, "on_success", "on_failure"])
            )
    if ("name" in value) == ("to_status_category" in value):
        raise ValueError(
            f'{where}expected {{"to_status_category": "done"}} (a status category key or name: '
            'new, indeterminate, done) or {"name": "Close Issue"}'
        )
    for key in ("name", "to_status_category", "prefer"):
        if key in value and (not isinstance(value[key], str) or not value[key].strip()):
            raise ValueError(f"{where}key {key!r} must be a non-empty string")
    if "prefer" in value and "name" in value:
        raise ValueError(
            f"{where}'prefer' picks among the transitions into a category; with 'name' the transition is already chosen"
        )
    if "fields" in value and not isinstance(value["fields"], dict):
        raise ValueError(f'{where}\'fields\' must be an object such as {{"resolution": {{"name": "Fixed"}}}}')
    return dict(value)


def parse_jira_transition(value: Any) -> dict[str, dict[str, Any] | None]:
    """The step's `transition` as {"on_success": target or None, "on_failure": target or
    None}.  A plain name or target object applies only when the run so far passed: a
    notification that runs `when: always` must not close the issue of a failed run."""
    if value is None:
        return {"on_success": None, "on_failure": None}
    if isinstance(value, dict) and ({"on_success", "on_failure"} & set(value)):
        extra = [k for k in value if k not in ("on_success", "on_failure")]
        if extra:
            raise ValueError(f"with on_success/on_failure, key {extra[0]!r} belongs inside one of them")
        return {
            outcome: (None if value.get(outcome) is None else _parse_transition_target(value[outcome], f"{outcome}: "))
            for outcome in ("on_success", "on_failure")
        }
    return {"on_success": _parse_transition_target(value, ""), "on_failure": None}


def describe_jira_target(target: dict[str, Any]) -> str:
    if "name" in target:
        return f"the transition named {target['name']!r}"
    prefer = f", preferring {target['prefer']!r}" if target.get("prefer") else ""
    return f"a transition to category {target['to_status_category']!r}{prefer}"


def _category_matches(category: Any, wanted: str) -> bool:
    category = category if isinstance(category, dict) else {}
    return wanted.casefold() in (str(category.get("key", "")).casefold(), str(category.get("name", "")).casefold())


def jira_status_is_target(status: dict[str, Any], target: dict[str, Any]) -> bool:
    """Is an issue whose status is `status` (GET issue's fields.status) already where
    `target` leads?  For a name: the status has that name (a transition name cannot be
    compared before the transitions are known); for a category: the status is in it."""
    if not isinstance(status, dict) or not status:
        return False
    if "name" in target:
        return str(status.get("name", "")).casefold() == target["name"].casefold()
    return _category_matches(status.get("statusCategory"), target["to_status_category"])


def select_jira_transition(transitions: list[dict], target: dict[str, Any], issue: str) -> tuple[dict, list[dict]]:
    """Pick from Jira's list of transitions: by transition name (case-insensitive; else
    by target status name), or into a status category.  Several into the category: the
    one `prefer` names, else one whose transition or target status name is the
    category's own name ("Done", "In Progress", "To Do"), else the first in Jira's order.
    Returns (chosen, the other transitions that matched).  ValueError lists what is
    available; an empty list says the user may lack the permission."""
    if not transitions:
        raise ValueError(
            f"Jira offers no transitions for {issue} — the user may lack the "
            "'Transition issues' permission in its project"
        )
    if "name" in target:
        key = target["name"].casefold()
        for field_of in (lambda t: t.get("name"), lambda t: (t.get("to") or {}).get("name")):
            found = [t for t in transitions if str(field_of(t) or "").casefold() == key]
            if found:
                return found[0], []
        asked = f"transition {target['name']!r}"
    else:
        wanted = target["to_status_category"]
        matches = [t for t in transitions if _category_matches((t.get("to") or {}).get("statusCategory"), wanted)]
        if matches:
            chosen = _preferred_transition(matches, target.get("prefer"), wanted, issue)
            return chosen, [t for t in matches if t is not chosen]
        asked = f"a transition to status category {wanted!r}"
    available = ", ".join(_transition_label(t) for t in transitions)
    raise ValueError(f"{asked} is not available for {issue}; available: {available}")


def _transition_label(t: dict) -> str:
    to: dict = t.get("to") or {}
    category = (to.get("statusCategory") or {}).get("key")
    goes = f" → {to.get('name')}" if to.get("name") else ""
    return f"{t.get('name')!r}{goes}" + (f" [{category}]" if category else "")


def _transition_named(t: dict, name: str) -> bool:
    return name.casefold() in (
        str(t.get("name") or "").casefold(),
        str((t.get("to") or {}).get("name") or "").casefold(),
    )


def _preferred_transition(matches: list[dict], prefer: str | None, wanted: str, issue: str) -> dict:
    """Among the transitions into one category: the one `prefer` names, else the one named
    like the category itself, else Jira's first."""
    if prefer:
        pinned = [t for t in matches if _transition_named(t, prefer)]
        if not pinned:
            raise ValueError(
                f"no transition into category {wanted!r} is named {prefer!r} (prefer) for "
                f"{issue}; matching: {', '.join(_transition_label(t) for t in matches)}"
            )
        return pinned[0]
    category = (matches[0].get("to") or {}).get("statusCategory") or {}
    own = str(category.get("name") or JIRA_CATEGORY_NAMES.get(str(category.get("key")), ""))
    return next((t for t in matches if own and _transition_named(t, own)), matches[0])


def _rate_limit_details(resp: HttpResponse) -> str:
    shown = [
        f"{name}: {_shorten(resp.headers[name.lower()], 60)}"
        for name in ("Retry-After", "RateLimit-Reason")
        if resp.headers.get(name.lower())
    ]
    return "".join(f"; {item}" for item in shown)


def jira_error_message(
    resp: HttpResponse, *, action: str, issue: str, user: str | None, site: str, token_source: str
) -> str:
    """One readable line for a failed Jira response."""
    status = resp.status
    who = user or "the token's owner"
    detail = summarize_http_body(resp.text, resp.headers.get("content-type", ""))
    is_json = detail != "empty body" and not detail.startswith("HTML page")
    tries = f" after {resp.attempts} attempts" if resp.attempts > 1 else ""
    stopped = f"; {resp.stopped}" if resp.stopped else ""
    if status == 401:
        return f"authentication failed for {who} at {site} — check {token_source}"
    if status == 403:
        if "AUTHENTICATION_DENIED" in resp.headers.get("x-seraph-loginreason", ""):
            return (
                f"login for {who} at {site} is blocked by a CAPTCHA after failed "
                "attempts — sign in once in a browser, then check " + token_source
            )
        return f"permission denied: {who} may not {action} on {issue} at {site} ({detail})"
    if status == 404:
        if is_json:
            return f"issue {issue} not found or not visible to {who} at {site}"
        return f"{resp.url} answered 404 ({detail}) — is jira_url the Jira site?"
    if status == 400:
        if action.startswith("transition") and "required" in detail.lower():
            return (
                f"Jira rejected the {action} on {issue} (400): {detail} — give the field in the "
                'transition\'s "fields", e.g. "fields": {"resolution": {"name": "Fixed"}}'
            )
        return f"Jira rejected the {action} on {issue} (400): {detail}"
    if status == 409:
        return (
            f"Jira refused the {action} on {issue} (409 conflict: the issue was changed at the "
            f"same time by someone else) — run the step again"
        )
    if status == 413:
        return (
            f"Jira refused the {action} on {issue} (413): the issue has reached Jira's per-issue "
            f"limit (of comments or attachments) — delete old ones or comment elsewhere ({detail})"
        )
    if status == 429:
        return f"rate limited by Jira at {site} (429{_rate_limit_details(resp)}){tries}{stopped} — try again later"
    if status >= 500:
        return f"Jira server error {status} at {site}{tries}{stopped}: {detail}"
    if 300 <= status < 400:
        where = resp.headers.get("location", "?")
        return f"{resp.url} redirected ({status}) to {where} — put the final URL (https, no login page) in jira_url"
    return f"Jira answered {status} to the {action} on {issue}: {detail}"


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Last line of defence, applied on top of the masker to everything this runner says."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# === 9.6. Jira: the runner ===


class _BadJiraKey(ValueError):
    """A jira step's key is wrong: which key (None: the message says it) and why."""

    def __init__(self, key: str | None, why: str) -> None:
        super().__init__(why)
        self.key = key


def _jira_key_check(key: str, check: Callable[[], Any]) -> None:
    try:
        check()
    except ValueError as exc:
        raise _BadJiraKey(key, str(exc)) from None


def _check_jira_site(config: Mapping[str, Any]) -> None:
    _jira_key_check("jira_url", lambda: jira_api(config["jira_url"]))


def _check_jira_issues(config: Mapping[str, Any]) -> None:
    """`issue` (a key or a list; empty means "skip the step") or `issues_from` + `projects`."""
    if "issue" not in config and "issues_from" not in config:
        raise _BadJiraKey(
            None,
            'missing required key \'issue\' (an issue key, a list of them, or "issues_from": ["branch", "commits"])',
        )
    issues = config.get("issue", [])
    for index, issue in enumerate([issues] if isinstance(issues, str) else issues):
        if issue:  # empty ("${JIRA_ISSUE:-}" unset): the step is skipped at run time
            _jira_key_check(
                "issue" if isinstance(issues, str) else f"issue[{index}]",
                functools.partial(check_jira_issue_key, issue),
            )
    sources = config.get("issues_from")
    if sources is not None:
        if not sources:
            raise _BadJiraKey("issues_from", 'is empty; give ["branch"], ["commits"] or both')
        for source in sources:
            if source not in JIRA_ISSUES_FROM:
                raise _BadJiraKey(
                    "issues_from",
                    f"{source!r} is not a source of issue keys (branch, commits)"
                    + did_you_mean(source, JIRA_ISSUES_FROM),
                )
    for project in config.get("projects", []):
        if not re.fullmatch(_JIRA_PROJECT, project):
            raise _BadJiraKey("projects", f"{project!r} is not a Jira project key (e.g. PROJ)")
    if "projects" in config and sources is None:
        raise _BadJiraKey("projects", 'restricts the keys issues_from finds; add "issues_from"')


def _check_jira_comment(config: Mapping[str, Any]) -> None:
    if not config["comment"].strip():
        raise _BadJiraKey("comment", "is empty (Jira rejects an empty comment)")
    _jira_key_check("comment", lambda: jira_template_fields(config["comment"]))
    if config.get("update") not in (None, "run"):
        raise _BadJiraKey(
            "update",
            f'{config["update"]!r}: the one value is "run" (one comment per issue and run, edited by later steps)',
        )
    _jira_key_check("transition", lambda: parse_jira_transition(config.get("transition")))


def _check_jira_visibility(config: Mapping[str, Any]) -> None:
    visibility = config.get("visibility")
    if visibility is None:
        return
    unknown = [k for k in visibility if k not in ("type", "value", "identifier")]
    if unknown:
        raise _BadJiraKey(
            "visibility", f"unknown key {unknown[0]!r}" + did_you_mean(unknown[0], ["type", "value", "identifier"])
        )
    named = [visibility.get(k) for k in ("value", "identifier")]
    if visibility.get("type") not in ("role", "group") or not any(isinstance(n, str) and n.strip() for n in named):
        raise _BadJiraKey(
            "visibility",
            'expected {"type": "role", "value": "Developers"} (type role or group; value the role or group name)',
        )


def _check_jira_transport(config: Mapping[str, Any]) -> None:
    if "ca_bundle" in config and not config["ca_bundle"].strip():
        raise _BadJiraKey("ca_bundle", "is empty; give the CA certificate file (PEM), or leave the key out")
    for key in ("connect_timeout", "read_timeout"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise _BadJiraKey(key, f"must be a positive number of seconds, not {value!r}")


@dataclass
class JiraPlan:
    """Everything a jira step will send, computed before any request.  `issues` are the
    ones the step names ("" entries are skipped); issues_from adds the keys found in the
    run's branch and commits at run time."""

    api: JiraApi
    issues: list[str]
    issues_from: list[str]
    projects: list[str]
    user: str | None
    token: str
    comment_payload: dict[str, Any]
    truncated: bool
    transition: dict[str, dict[str, Any] | None]
    update: str | None
    verify: bool | str
    connect_timeout: float
    read_timeout: float

    @property
    def secrets(self) -> tuple[str, ...]:
        auth = jira_auth_header(self.user, self.token).split(" ", 1)[1]
        return (self.token, auth, f"{self.user}:{self.token}" if self.user else "")

    @property
    def auth(self) -> _AuthorizationHeader:
        return _AuthorizationHeader(jira_auth_header(self.user, self.token))

    def headers(self, *, with_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "orchestrate"}
        if with_body:
            headers["Content-Type"] = "application/json"
        return headers

    def url(self, issue: str, what: str = "") -> str:
        from urllib.parse import quote

        return f"{self.api.base}/issue/{quote(issue, safe='')}" + (f"/{what}" if what else "")


class _JiraIssueWork:
    """What the attempts of a jira step did for one issue (kept across the step's attempts
    in ctx.runner_state, so a retry never posts a comment Jira already answered).  A plain
    class: a dataclass costs its creation at every start of orchestrate."""

    def __init__(self, issue: str, found: bool) -> None:
        self.issue = issue
        self.found = found  # found by issues_from rather than named by the step
        self.comment_id: str | None = None
        self.comment: str | None = None  # added, updated, uncertain (may have been posted), or None
        self.uncertain_reason = ""
        self.transition: str | None = None
        self.moved: str | None = None  # moved, already, not moved (outcome), no such issue, or None
        self.to_status: str | None = None
        self.also_matched: list[str] = []

    def record(self) -> dict[str, Any]:
        return {
            "issue": self.issue,
            "comment_id": self.comment_id,
            "comment": self.comment,
            "transition": self.transition,
            "moved": self.moved,
            "status": self.to_status,
            "also_matched": self.also_matched,
        }


@register_runner
class JiraRunner(Runner):
    """Comment on Jira issues and optionally transition them (Cloud or Server/DC)."""

    type_name = "jira"
    keys = {
        "jira_url": KeySpec((str,), required=True),
        "user": KeySpec((str,)),
        "token": KeySpec((str,), required=True),
        "issue": KeySpec((str, list), item_type=str),
        "issues_from": KeySpec((list,), item_type=str),
        "projects": KeySpec((list,), item_type=str),
        "comment": KeySpec((str,), required=True),
        "update": KeySpec((str,)),
        "visibility": KeySpec((dict,)),
        "transition": KeySpec((str, dict)),
        "ca_bundle": KeySpec((str,)),
        "connect_timeout": KeySpec((int, float)),
        "read_timeout": KeySpec((int, float)),
    }

    # -- definition time ------------------------------------------------------------

    def check_definition(self, step: Step, workflow_path: Path, settings: Settings) -> None:
        shown = f"{workflow_path.parent.name}/{workflow_path.name}"
        try:
            for check in (
                _check_jira_site,
                _check_jira_issues,
                _check_jira_comment,
                _check_jira_visibility,
                _check_jira_transport,
            ):
                check(step.config)
        except _BadJiraKey as exc:
            what = f"key {exc.key!r}: {exc}" if exc.key else str(exc)
            raise DefinitionError(f"{shown}: {step.label}: {what}") from None

    def plan(self, ctx: StepContext) -> JiraPlan:
        """Resolve the step into the requests it makes (pure apart from ctx)."""
        config = ctx.step.config
        api = jira_api(config["jira_url"])
        issues = config.get("issue", [])
        issues = [check_jira_issue_key(i) for i in ([issues] if isinstance(issues, str) else issues) if i]
        values = jira_template_values(ctx.workflow.name, ctx.run_id, ctx.previous, ctx.trigger)
        if api.version != 3:  # wiki markup: what orchestrate fills in shows as written
            values = {k: (v if k == "ci_url" else jira_wiki_escape(v)) for k, v in values.items()}
        token = config["token"]
        user = config.get("user") or None
        secrets = (token, jira_auth_header(user, token).split(" ", 1)[1])
        text = _scrub(ctx.masker.mask(jira_unicode_text(render_jira_comment(config["comment"], values))), secrets)
        payload, truncated = jira_comment_payload(text, api.version, visibility=config.get("visibility"))
        bundle = config.get("ca_bundle")
        # the step's own `timeout` bounds each wait too (the engine only times processes)
        cap = ctx.step.timeout or float("inf")
        return JiraPlan(
            api=api,
            issues=list(dict.fromkeys(issues)),
            issues_from=list(config.get("issues_from", [])),
            projects=list(config.get("projects", [])),
            user=user,
            token=token,
            comment_payload=payload,
            truncated=truncated,
            transition=parse_jira_transition(config.get("transition")),
            update=config.get("update"),
            verify=str(ctx.root / bundle) if bundle else True,
            connect_timeout=min(cap, float(config.get("connect_timeout") or HTTP_CONNECT_TIMEOUT_S)),
            read_timeout=min(cap, float(config.get("read_timeout") or HTTP_READ_TIMEOUT_S)),
        )

    def preflight(self, ctx: StepContext) -> list[str]:
        from urllib.parse import urlsplit

        warnings: list[str] = []
        if not ctx.step.config["token"]:
            warnings.append(
                f"key 'token' is empty; set {_token_source(_jira_raw_value(ctx, 'token'))} before the step runs"
            )
        bundle = ctx.step.config.get("ca_bundle")
        if bundle and not (ctx.root / bundle).is_file():
            warnings.append(f"ca_bundle {bundle} does not exist")
        try:
            api = jira_api(ctx.step.config["jira_url"])
        except ValueError:
            return warnings
        host = urlsplit(api.site).hostname or ""
        if api.site.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            warnings.append("jira_url uses http://: the token would cross the network unencrypted; use https://")
        return warnings

    def describe(self, ctx: StepContext) -> list[str]:
        plan = self.plan(ctx)
        scheme = "Basic" if plan.user else "Bearer"
        who = f" (user {plan.user})" if plan.user else " (personal access token)"
        auth = f"Authorization: {scheme} ***{who}"

        def say(text: str) -> str:
            return _scrub(ctx.masker.mask(text), plan.secrets)

        lines = _describe_jira_issues(plan)
        issue = plan.issues[0] if plan.issues and not plan.issues_from else "<issue>"
        if plan.update == "run":
            lines.append("update: run — PUT to this run's comment when an earlier step of the run posted one")
        lines += [
            f"POST {plan.url(issue, 'comment')}",
            f"  {auth}",
            f"  body: {json.dumps(plan.comment_payload, ensure_ascii=False)}",
        ]
        if plan.truncated:
            lines.append(f"  (comment truncated to Jira's {JIRA_COMMENT_LIMIT} characters)")
        lines += _describe_jira_transition(plan, issue, auth)
        return [say(line.replace("%3Cissue%3E", "<issue>")) for line in lines]

    # -- run time -------------------------------------------------------------------

    def resolve_issues(self, ctx: StepContext, plan: JiraPlan) -> tuple[list[tuple[str, bool]], str]:
        """(issue, found by issues_from) for each issue to comment on, each once, and why
        there are none when the list is empty."""
        issues = [(i, False) for i in plan.issues]
        if not plan.issues_from:
            raw = _jira_raw_value(ctx, "issue")
            variable = _token_source(raw) if isinstance(raw, str) else ""
            why = (
                f"no Jira issue: key 'issue' is empty ({variable} is not set)"
                if variable and variable != "the step's token"
                else "no Jira issue: key 'issue' is empty"
            )
            return issues, why
        state = ctx.options.git if isinstance(ctx.options.git, GitState) else None
        texts: list[str] = []
        looked: list[str] = []
        if "branch" in plan.issues_from:
            branches = run_branch_names(state, ctx.trigger)
            texts += branches
            looked.append(
                "branch " + ", ".join(repr(jira_unicode_text(b)) for b in branches)
                if branches
                else "no branch (detached HEAD)"
            )
        if "commits" in plan.issues_from:
            messages, what = run_commit_messages(ctx.root, state)
            texts += messages
            looked.append(f"{what} ({len(messages)})" if messages or what.startswith("the ") else what)
        named = {i for i, _ in issues}
        issues += [(key, True) for key in find_jira_issue_keys(texts, plan.projects) if key not in named]
        only = f" of project {', '.join(plan.projects)}" if plan.projects else ""
        return issues, f"no Jira issue key{only} in {' or '.join(looked)}"

    def execute(self, ctx: StepContext) -> StepResult:
        try:
            plan = self.plan(ctx)
        except ValueError as exc:  # checked at load time too; here before any request
            raise StepFailure(f"{ctx.step.label}: {exc}") from None

        def say(text: str) -> str:
            return _scrub(ctx.masker.mask(text), plan.secrets)

        raw_token = _jira_raw_value(ctx, "token")
        issues, why_none = self.resolve_issues(ctx, plan)
        extra: dict[str, Any] = {
            "jira_issue": issues[0][0] if issues else None,
            "comment_id": None,
            "transition": None,
            "jira_site": plan.api.site,
            "jira_update": plan.update,
            "jira_issues": [],
        }
        if not issues:
            return StepResult(status="skipped", message=say(why_none), extra=extra)
        refused = self._refuse_to_send(ctx, plan, issues, raw_token)
        if refused:
            return StepResult(status="failed", extra=extra, message=say(refused))
        if plan.truncated:
            ctx.emit(f"jira: comment longer than {JIRA_COMMENT_LIMIT} characters, truncated")
        if len(issues) > 1 or any(found for _, found in issues):
            ctx.emit(say(f"jira: issues: {', '.join(i for i, _ in issues)}"))
        # the step's timeout is a deadline for the whole attempt: every wait and request fits in it
        deadline = time.monotonic() + ctx.step.timeout if ctx.step.timeout else None
        passed = _run_status_so_far(ctx.previous) == "passed"
        works: dict[str, _JiraIssueWork] = ctx.runner_state.setdefault("issues", {})
        messages: list[str] = []
        failed = False
        for issue, found in issues:
            work = works.setdefault(issue, _JiraIssueWork(issue, found))
            ok, message = self._issue(ctx, plan, work, passed, deadline, raw_token)
            failed = failed or not ok
            if message:
                messages.append(message)
        records = [works[i].record() for i, _ in issues]
        extra["jira_issues"] = records
        extra.update(comment_id=records[0]["comment_id"], transition=records[0]["transition"])
        return StepResult(status="failed" if failed else "passed", message=say("; ".join(messages)), extra=extra)

    def _refuse_to_send(
        self, ctx: StepContext, plan: JiraPlan, issues: list[tuple[str, bool]], raw_token: Any
    ) -> str | None:
        """Why nothing may be sent (the step fails with that), or None; warns of a literal token."""
        searched = [i for i, by_search in issues if by_search]
        if len(searched) > JIRA_MAX_FOUND_ISSUES:
            return (
                f"issues_from found {len(searched)} issue keys ({', '.join(searched[:5])}, …), more than "
                f'{JIRA_MAX_FOUND_ISSUES}: nothing was sent; narrow them with "projects" or name the '
                'issues in "issue"'
            )
        if not plan.token:
            raise StepFailure(
                f"key 'token' is empty: set {_token_source(raw_token)} (for Jira Cloud "
                "an API token, for Server/Data Center a personal access token)"
            )
        if isinstance(plan.verify, str) and not Path(plan.verify).is_file():
            raise StepFailure(
                f"ca_bundle {ctx.step.config['ca_bundle']} does not exist (a PEM file of "
                "the CA certificates that signed Jira's certificate)"
            )
        if token_is_literal(raw_token) and not ctx.runner_state.get("warned"):
            ctx.runner_state["warned"] = True
            ctx.emit(
                _scrub(
                    ctx.masker.mask(
                        f"warning: {ctx.step.label}: the Jira token is written in {ctx.workflow.path.name}; use "
                        f'"token": "${{JIRA_TOKEN}}" and keep it out of the repository'
                    ),
                    plan.secrets,
                )
            )
        return None

    def _earlier_comment(self, ctx: StepContext, plan: JiraPlan, issue: str) -> str | None:
        """The id of the comment an earlier `"update": "run"` step of this run posted on
        `issue` at the same site (their run-record entries carry it)."""
        for entry in reversed(ctx.previous):
            if (
                entry.get("type") != "jira"
                or entry.get("jira_update") != "run"
                or entry.get("jira_site") != plan.api.site
            ):
                continue
            for item in entry.get("jira_issues") or []:
                if isinstance(item, dict) and item.get("issue") == issue and item.get("comment_id"):
                    return str(item["comment_id"])
        return None

    def _issue(
        self,
        ctx: StepContext,
        plan: JiraPlan,
        work: _JiraIssueWork,
        passed: bool,
        deadline: float | None,
        raw_token: Any,
    ) -> tuple[bool, str]:
        """Comment on one issue (unless an earlier attempt did), then transition it.
        Returns (ok, the issue's part of the step message)."""
        exchange = _JiraExchange(ctx, plan, work, deadline, raw_token)
        earlier = self._earlier_comment(ctx, plan, work.issue) if plan.update == "run" else None
        commented = exchange.comment(earlier)
        if isinstance(commented, tuple):  # it failed, or the issue does not exist
            return commented
        return exchange.transition(commented, work.comment != "uncertain", passed)


def _describe_jira_issues(plan: JiraPlan) -> list[str]:
    """--dry-run: which issues the step comments on, when that is not just one key."""
    if plan.issues_from:
        found = " and ".join(
            {"branch": "the branch name", "commits": "the commit messages"}[s] for s in plan.issues_from
        )
        only = f" (projects: {', '.join(plan.projects)})" if plan.projects else ""
        return [f"issues: {', '.join(plan.issues + ['keys found in ' + found + only])}, each commented once"]
    if len(plan.issues) != 1:
        return [f"issues: {', '.join(plan.issues) or 'none (the step will be skipped)'}"]
    return []


def _describe_jira_transition(plan: JiraPlan, issue: str, auth: str) -> list[str]:
    """--dry-run: the transition for each outcome and the two requests it takes."""
    on_success, on_failure = plan.transition["on_success"], plan.transition["on_failure"]
    if not (on_success or on_failure):
        return []
    lines = [
        "transition: "
        + "; ".join(
            f"{label}: {describe_jira_target(target) if target else 'none'}"
            for label, target in (("if the run so far passed", on_success), ("if it failed", on_failure))
        )
    ]
    body: dict[str, Any] = {"transition": {"id": "<looked up at run time>"}}
    fields = [t.get("fields") for t in (on_success, on_failure) if t and t.get("fields")]
    if fields:
        body["fields"] = fields[0]
    return lines + [
        f"GET {plan.url(issue)}?fields=status&expand=transitions",
        f"  {auth}",
        f"POST {plan.url(issue, 'transitions')}",
        f"  {auth}",
        f"  body: {json.dumps(body, ensure_ascii=False)}",
    ]


class _JiraExchange:
    """The requests one attempt of a jira step makes for one issue: the comment (at most once
    per issue, whatever the step's retries: `work` remembers), then the transition. Every
    line it says is masked and scrubbed of the credentials."""

    def __init__(
        self, ctx: StepContext, plan: JiraPlan, work: _JiraIssueWork, deadline: float | None, raw_token: Any
    ) -> None:
        self.ctx, self.plan, self.work = ctx, plan, work
        self.issue = work.issue
        self.deadline = deadline
        self.raw_token = raw_token

    def say(self, text: str) -> str:
        return _scrub(self.ctx.masker.mask(text), self.plan.secrets)

    def call(
        self, method: str, url: str, body: Any, action: str, retry_statuses: Callable[[int], bool] | None = None
    ) -> HttpResponse | HttpTransportError:
        ctx, plan = self.ctx, self.plan

        def on_retry(attempt: int, reason: str, delay: float) -> None:
            ctx.emit(
                self.say(
                    f"jira: {method} {url}: {reason}; retrying in {delay:g}s (attempt {attempt + 1} of {HTTP_ATTEMPTS})"
                )
            )

        if ctx.options.debug and ctx.debug_write is not None:
            ctx.debug_write(self.say(f"+ {method} {url}"))
        try:
            return http_request(
                method,
                url,
                headers=plan.headers(with_body=body is not None),
                json_body=body,
                auth=plan.auth,
                verify=plan.verify,
                connect_timeout=plan.connect_timeout,
                read_timeout=plan.read_timeout,
                deadline=self.deadline,
                on_retry=on_retry,
                retry_statuses=retry_statuses or (lambda s: s == 429 or s >= 500),
                sleep=lambda seconds: _http_sleep(seconds, ctx.guard),
            )
        except HttpTransportError as exc:
            return exc

    def refused(self, resp: HttpResponse, action: str) -> str:
        return jira_error_message(
            resp,
            action=action,
            issue=self.issue,
            user=self.plan.user,
            site=self.plan.api.site,
            token_source=_token_source(self.raw_token),
        )

    # -- the comment -------------------------------------------------------------------

    def comment(self, earlier: str | None) -> str | tuple[bool, str]:
        """What the step's message says of the comment, or (ok, message) to end with."""
        work, issue = self.work, self.issue
        if work.comment in ("added", "updated"):
            self.ctx.emit(
                self.say(
                    f"jira: {issue}: comment {work.comment_id} was {work.comment} by an earlier attempt; not sent again"
                )
            )
            return f"commented on {issue}"
        if work.comment == "uncertain":
            self.ctx.emit(
                self.say(
                    f"jira: {issue}: an earlier attempt's comment may have been posted "
                    f"({work.uncertain_reason}); not sent again"
                )
            )
            return f"the comment on {issue} may have been posted ({work.uncertain_reason}; not sent again)"
        resp, action = self._send_comment(earlier)
        if isinstance(resp, HttpTransportError):
            return self._comment_lost(resp, action)
        if not 200 <= resp.status < 300:
            return self._comment_refused(resp, action)
        try:
            work.comment_id = str(resp.json()["id"])
        except (ValueError, KeyError, TypeError):
            # A 2xx without Jira's JSON is a login page or proxy, not Jira.
            detail = summarize_http_body(resp.text, resp.headers.get("content-type", ""))
            return False, self.say(
                f"{resp.url} answered {resp.status} without a Jira comment ({detail}) — is jira_url the Jira REST API?"
            )
        work.comment = action
        verb = "commented on" if action == "added" else f"updated comment {work.comment_id} on"
        self.ctx.emit(
            self.say(
                f"jira: {verb} {issue} (comment {work.comment_id})" if action == "added" else f"jira: {verb} {issue}"
            )
        )
        return f"{verb} {issue}"

    def _send_comment(self, earlier: str | None) -> tuple[HttpResponse | HttpTransportError, str]:
        """Edit the run's earlier comment (`"update": "run"`) or post a new one: the answer and
        "updated" or "added"."""
        plan, issue = self.plan, self.issue
        if earlier is not None:
            # PUT is idempotent: its retries (429, 5xx, a lost answer) cannot duplicate it
            resp = self.call("PUT", plan.url(issue, f"comment/{earlier}"), plan.comment_payload, "comment edit")
            if not (isinstance(resp, HttpResponse) and resp.status == 404 and "comment" in resp.text.lower()):
                return resp, "updated"
            self.ctx.emit(self.say(f"jira: {issue}: comment {earlier} is gone; posting a new one"))
        # Jira processed nothing only after a refused connection, 429 or 503; a 500, 502 or
        # 504 may come after the comment was stored, so it is not sent again
        return self.call(
            "POST",
            plan.url(issue, "comment"),
            plan.comment_payload,
            "comment",
            retry_statuses=lambda status: status in (429, 503),
        ), "added"

    def _comment_lost(self, resp: HttpTransportError, action: str) -> tuple[bool, str]:
        issue = self.issue
        if resp.maybe_applied and action == "added":
            self.work.comment, self.work.uncertain_reason = "uncertain", resp.kind.replace("_", " ")
            detail = str(resp).replace(" (not retried: the request may already have been applied)", "")
            message = self.say(
                f"cannot comment on {issue}: {detail}; not retried: the comment may "
                f"have been posted; check {issue} before running again"
            )
            self.ctx.emit(f"jira: {message}")
            return False, message
        return False, self.say(f"cannot comment on {issue}: {resp}")

    def _comment_refused(self, resp: HttpResponse, action: str) -> tuple[bool, str]:
        work, issue = self.work, self.issue
        if (
            resp.status == 404 and work.found and action == "added" and "json" in resp.headers.get("content-type", "")
        ):  # Jira's own "no such issue"
            self.ctx.emit(self.say(f"jira: {issue}: no such issue (found in the branch or a commit message); ignored"))
            work.moved = "no such issue"
            return True, f"{issue}: no such issue, ignored"
        message = self.refused(resp, "comment" if action == "added" else "comment edit")
        if action == "added" and resp.status >= 500 and resp.status != 503:
            work.comment, work.uncertain_reason = "uncertain", f"Jira answered {resp.status}"
            message = self.say(
                f"{message} — not retried: the comment may have been posted; check {issue} before running again"
            )
            self.ctx.emit(f"jira: {message}")  # a later attempt's message refers to it
            return False, message
        return False, self.say(message)

    # -- the transition: only for the outcome it is meant for --------------------------

    def transition(self, done: str, ok: bool, passed: bool) -> tuple[bool, str]:
        work, issue = self.work, self.issue
        target = self.plan.transition["on_success" if passed else "on_failure"]
        settled = self._settled_without_lookup(done, ok, passed, target)
        if settled is not None or target is None:  # (no target is always settled)
            return settled if settled is not None else (ok, done)
        found = self._issue_transitions(done)
        if isinstance(found[0], bool):
            return found  # type: ignore[return-value]
        transitions, status = found
        if jira_status_is_target(status, target):
            work.moved, work.to_status = "already", str(status.get("name"))
            self.ctx.emit(self.say(f"jira: {issue} is already in {work.to_status}; not transitioned"))
            return ok, f"{done}, already in {work.to_status}"
        try:
            chosen, others = select_jira_transition(transitions, target, issue)
        except ValueError as exc:
            return False, self.say(f"{done}, but {exc}")
        goes_to = chosen.get("to") or {}
        if status.get("id") is not None and goes_to.get("id") == status.get("id"):
            work.moved, work.to_status = "already", str(status.get("name"))
            return ok, f"{done}, already in {work.to_status}"
        return self._send_transition(done, ok, target, chosen, others)

    def _settled_without_lookup(
        self, done: str, ok: bool, passed: bool, target: dict[str, Any] | None
    ) -> tuple[bool, str] | None:
        """The outcome when no transition applies to this run's result, or an earlier attempt
        already settled it; None when the issue's transitions must be looked up."""
        work = self.work
        if target is None:
            if self.plan.transition["on_failure" if passed else "on_success"] is not None:
                work.moved = "not moved"
                return ok, f"{done}, not moved (the run so far {'passed' if passed else 'failed'})"
            return ok, done
        if work.moved == "already":
            return ok, f"{done}, already in {work.to_status}"
        if work.moved == "moved":  # by an earlier attempt
            return ok, f"{done}, moved by {work.transition!r}" + (f" to {work.to_status!r}" if work.to_status else "")
        return None

    def _send_transition(
        self, done: str, ok: bool, target: dict[str, Any], chosen: dict[str, Any], others: list[dict[str, Any]]
    ) -> tuple[bool, str]:
        """POST the chosen transition (with the target's `fields`) and say what moved."""
        work, issue = self.work, self.issue
        goes_to = chosen.get("to") or {}
        body: dict[str, Any] = {"transition": {"id": str(chosen.get("id"))}}
        if target.get("fields"):
            body["fields"] = target["fields"]
        action = f"transition {chosen.get('name')!r}"
        # like a comment: sent again only where Jira cannot have applied it
        moved = self.call(
            "POST",
            self.plan.url(issue, "transitions"),
            body,
            action,
            retry_statuses=lambda status: status in (429, 503),
        )
        if isinstance(moved, HttpTransportError):
            return False, self.say(f"{done}, but cannot transition {issue}: {moved}")
        if not 200 <= moved.status < 300:
            return False, self.say(f"{done}, but {self.refused(moved, action)}")
        work.transition, work.moved = str(chosen.get("name")), "moved"
        work.to_status = str(goes_to.get("name")) if goes_to.get("name") else None
        work.also_matched = [str(t.get("name")) for t in others]
        message = f"{done}, moved by {chosen.get('name')!r}" + (f" to {work.to_status!r}" if work.to_status else "")
        if others:
            message += f" (also matched: {', '.join(repr(n) for n in work.also_matched)})"
        self.ctx.emit(self.say(f"jira: {message}"))
        return ok, message

    def _issue_transitions(self, done: str) -> tuple[list[Any], dict[str, Any]] | tuple[bool, str]:
        """The issue's transitions and current status, or (False, message) when they cannot be read."""
        issue = self.issue
        looked = self.call("GET", self.plan.url(issue) + "?fields=status&expand=transitions", None, "read transitions")
        if isinstance(looked, HttpTransportError):
            return False, self.say(f"{done}, but cannot read the transitions of {issue}: {looked}")
        if not 200 <= looked.status < 300:
            return False, self.say(f"{done}, but {self.refused(looked, 'read transitions')}")
        try:
            data = looked.json()
            transitions = data["transitions"]
            status = (data.get("fields") or {}).get("status") or {}
            if not isinstance(transitions, list) or not isinstance(status, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = summarize_http_body(looked.text, looked.headers.get("content-type", ""))
            return False, self.say(f"{done}, but GET {issue} answered without its transitions ({detail})")
        return transitions, status


def _jira_raw_value(ctx: StepContext, key: str) -> Any:
    """The value of `key` as written in the workflow file, before ${VAR} interpolation:
    says whether a token is literal and which variable to blame when Jira refuses it."""
    return ctx.step.source.get(key)


# === 9.7. Cypress: end-to-end suites ===
#
# orchestrate expands the spec glob itself and hands Cypress an explicit, comma-joined list
# of files: Cypress splits its own --spec value on commas, so a glob such as
# "**/*.cy.{js,ts}" would reach it in pieces. Results are read from the JUnit files Cypress
# writes, never from its exit code alone: that code is the number of failed tests modulo
# 256, so 256 failures exit 0.


CYPRESS_DEFAULT_FOLDER = "cypress/e2e"


CYPRESS_DEFAULT_SPEC = "**/*.cy.{js,jsx,ts,tsx}"


CYPRESS_INSTALL_HINT = 'run "npm ci" (or "npm install cypress --save-dev") in {project}'


CYPRESS_HISTORY_RUNS = 50  # earlier runs read for spec durations when sharding


# (cypress config key, default folder, name under runs/<id>/artifacts/<step>/)
CYPRESS_ARTIFACT_DIRS = (
    ("screenshotsFolder", "cypress/screenshots", "screenshots"),
    ("videosFolder", "cypress/videos", "videos"),
)


def resolve_cypress_project(value: str, modules: dict[str, str], root: Path | None = None) -> str:
    """The project folder (relative to the root) for a step's `project` value.

    A value with a '/' (or "." itself) is a folder; any other is a short name from
    `cypress_modules` in orchestrate.json, or else a folder of that name under `root`
    (`"project": "e2e"`). Raises ValueError naming the known names.
    """
    if "/" in value or value in (".", ".."):
        return value
    if value in modules:
        return modules[value]
    if root is not None and (root / value).is_dir():
        return value
    if modules:
        known = "known: " + ", ".join(sorted(modules))
    else:
        known = "orchestrate.json defines no cypress_modules"
    raise ValueError(
        f"{value!r} is not a cypress_modules short name ({known})"
        f"{did_you_mean(value, modules)}; write a folder with a '/', e.g. './{value}'"
    )


def _cypress_option_value(values: dict[str, Any]) -> str:
    """--env/--config value: "k=v,k2=v2", or JSON when a value would not survive that.

    Cypress splits the k=v form on commas and reads a JSON object whole, so values with
    a comma, lists and objects go as JSON (both forms are documented by Cypress).
    """

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    scalar = all(isinstance(v, (str, int, float)) for v in values.values())
    if scalar and not any("," in k or "," in text(v) for k, v in values.items()):
        return ",".join(f"{k}={text(v)}" for k, v in values.items())
    return json.dumps(dict(values), separators=(",", ":"))


def cypress_argv(
    project: Path,
    specs: Sequence[str],
    report_dir: Path,
    *,
    browser: str | None = None,
    headed: bool = False,
    config: dict[str, Any] | None = None,
) -> list[str]:
    """The command that runs the project's own Cypress on exactly `specs`. The step's `env`
    goes in the environment (cypress_env_variables), never here: every local user can read
    a command line (ps), and a step's env often holds a token."""
    argv = [
        str(project / "node_modules" / ".bin" / "cypress"),
        "run",
        "--project",
        str(project),
        "--spec",
        ",".join(specs),
        "--reporter",
        "junit",
        "--reporter-options",
        # [hash] is mocha-junit-reporter's: one file per spec, none overwritten. includePending:
        # without it the reporter leaves pending tests out (mocha counted 9 tests, the record 8)
        f"mochaFile={report_dir / 'results-[hash].xml'},includePending=true",
    ]
    if browser:
        argv += ["--browser", browser]
    if headed:
        argv.append("--headed")
    if config:
        argv += ["--config", _cypress_option_value(config)]
    return argv


# Linux refuses an exec whose argv and environment pass ARG_MAX (E2BIG), and any single
# argument longer than 128 KiB (MAX_ARG_STRLEN), which the comma-joined --spec list of a few
# thousand spec files is. So specs are run in batches, each one `cypress run`, whose results
# merge into the one step: a batch's --spec stays under CYPRESS_SPEC_ARG_BYTES and its whole
# command line under half of what ARG_MAX leaves beside the environment.
CYPRESS_SPEC_ARG_BYTES = 100_000


def _argv_budget(env: Mapping[str, str]) -> int:
    """Bytes a command line may take: well below ARG_MAX once the environment is counted."""
    try:
        arg_max = os.sysconf("SC_ARG_MAX")
    except (AttributeError, ValueError, OSError):
        arg_max = 256 * 1024
    if arg_max <= 0:
        arg_max = 256 * 1024
    environment = sum(len(k.encode()) + len(v.encode()) + 2 + 8 for k, v in env.items())  # + the pointer
    return max(16 * 1024, (arg_max - environment) // 2)


def spec_batches(specs: Sequence[str], budget: int = CYPRESS_SPEC_ARG_BYTES) -> list[list[str]]:
    """`specs` in order, cut into batches whose comma-joined length stays within `budget`."""
    batches: list[list[str]] = [[]]
    size = 0
    for name in specs:
        cost = len(name.encode("utf-8", "surrogateescape")) + 1
        if batches[-1] and size + cost > budget:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += cost
    return batches if batches[0] else []


def cypress_env_variables(env: Mapping[str, str]) -> dict[str, str]:
    """A cypress step's `env` as Cypress reads it from the environment: CYPRESS_<name> is
    Cypress.env("<name>"), its value coerced to a number, boolean or JSON as with --env."""
    return {f"CYPRESS_{name}": value for name, value in env.items()}


def mask_cypress_reports(report_dir: Path, masker: Masker) -> None:
    """Cypress's own JUnit files, kept under runs/: a test that prints a token in its
    failure message or title must not leave it there."""
    if not masker or not report_dir.is_dir():
        return
    for path in report_dir.glob("*.xml"):
        try:
            data = path.read_bytes()
            masked = masker.mask_bytes(data)
            if masked != data:
                write_atomic(path, masked)
        except OSError:
            continue  # read_cypress_reports has already reported an unreadable file


@dataclass
class CypressTest:
    """One test case from a Cypress JUnit file."""

    spec: str
    suite: str  # describe() titles, outermost first, space-joined as mocha does
    title: str
    time: float
    status: str  # "passed" | "failed" | "skipped"
    message: str = ""
    text: str = ""

    @property
    def display_name(self) -> str:
        """`spec › suite › test`, how the record and messages name a test."""
        return " › ".join(part for part in (self.spec, self.suite, self.title) if part)


@dataclass
class CypressReport:
    """One JUnit file: Cypress writes one per spec."""

    spec: str
    time: float
    tests: list[CypressTest]


def _project_relative(path: str, project: Path | None) -> str:
    """A spec path as the project names it: mocha-junit-reporter writes `file` absolute (and
    with backslashes on Windows); the spec list, the record and the durations use the path
    relative to the Cypress project, so that duration-balanced sharding finds them."""
    path = path.replace("\\", "/")
    if project is not None and os.path.isabs(path):
        base = os.path.abspath(project)
        if _inside(os.path.normpath(path), base):
            path = os.path.relpath(os.path.normpath(path), base).replace(os.sep, "/")
    return path.removeprefix("./")


def parse_cypress_junit_specs(
    data: bytes | str, fallback_spec: str = "", project: Path | None = None
) -> list[CypressReport]:
    """Parse a mocha-junit-reporter file as Cypress writes it, one report per spec in it.

    Shape (one file per spec, usually): <testsuites name="Mocha Tests" time tests failures>, a
    first <testsuite name="Root Suite" file="/abs/cypress/e2e/x.cy.js">, then one <testsuite>
    per describe() whose <testcase name="<suite titles> <test title>" classname="<test
    title>"> holds <failure message type> or <skipped/> (pending tests, with includePending).
    A testsuite without `file` belongs to the spec of the last one that had it, so a file
    holding several specs attributes each test to its own. Counts come from the test cases,
    not from the summary attributes. Raises ReportError on a torn, foreign or hostile file
    (parse_junit_xml)."""
    root = parse_junit_xml(data.encode("utf-8") if isinstance(data, str) else data)
    order: list[str] = []
    tests: dict[str, list[CypressTest]] = {}
    suite_time: dict[str, float] = {}
    spec = _project_relative(fallback_spec, project)
    for suite in root.iter("testsuite"):
        if suite.get("file"):
            spec = _project_relative(suite.get("file", ""), project)
        if spec not in tests:
            order.append(spec)
            tests[spec] = []
            suite_time[spec] = 0.0
        suite_time[spec] += _seconds(suite.get("time"))
        suite_name = suite.get("name", "")
        for case in suite.findall("testcase"):
            full = case.get("name", "")
            title = case.get("classname") or full
            if full.endswith(" " + title):
                suite_title = full[: -len(title) - 1]
            else:
                suite_title = "" if suite_name == "Root Suite" else suite_name
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None:
                status = "failed"
                message = problem.get("message", "")
                text = problem.text or ""
            elif case.find("skipped") is not None:
                status, message, text = "skipped", "", ""
            else:
                status, message, text = "passed", "", ""
            tests[spec].append(CypressTest(spec, suite_title, title, _seconds(case.get("time")), status, message, text))
    if not order:
        order, tests, suite_time = [spec], {spec: []}, {spec: 0.0}
    reports = []
    for name in order:
        if len(order) == 1 and root.tag == "testsuites" and root.get("time"):
            time = _seconds(root.get("time"))
        else:
            time = suite_time[name] or sum(t.time for t in tests[name])
        reports.append(CypressReport(spec=name, time=round(time, 3), tests=tests[name]))
    return reports


def parse_cypress_junit(data: bytes | str, fallback_spec: str = "", project: Path | None = None) -> CypressReport:
    """One mocha-junit-reporter file as one report (its first spec names it): see
    parse_cypress_junit_specs, which keeps the specs of a file apart."""
    reports = parse_cypress_junit_specs(data, fallback_spec, project)
    return CypressReport(
        spec=reports[0].spec, time=round(sum(r.time for r in reports), 3), tests=[t for r in reports for t in r.tests]
    )


def read_cypress_reports(report_dir: Path, project: Path | None = None) -> tuple[list[CypressReport], list[str]]:
    """Every JUnit file in `report_dir` (sorted) as one report per spec, and one problem line
    per unreadable file."""
    reports: list[CypressReport] = []
    problems: list[str] = []
    if not report_dir.is_dir():
        return reports, problems
    for path in sorted(report_dir.glob("*.xml")):
        try:
            reports += parse_cypress_junit_specs(read_report_file(path), project=project)
        except (ReportError, OSError) as exc:
            problems.append(f"unreadable JUnit file {path.name} ({exc})")
    reports.sort(key=lambda report: report.spec)  # file names are content hashes: order by spec
    return reports, problems


def plan_shards(specs: Iterable[str], shard_count: int, durations: dict[str, float] | None = None) -> list[list[str]]:
    """Split `specs` into `shard_count` lists: deterministic and duration-balanced.

    Greedy longest-processing-time: specs from longest to shortest (ties by name), each
    to the shard with the least time so far (ties: fewer specs, then lower number). So
    the busiest shard gets at most the ideal share plus the longest single spec. A spec
    with no recorded duration counts as the mean of the recorded ones; with none
    recorded every spec weighs the same and the split is even by count. The result
    depends only on the arguments: every machine of a CI matrix computes the same plan
    from the same spec list and history.
    """
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, got {shard_count}")
    unique = sorted(set(specs))
    durations = durations or {}
    # rounded to ms: no float noise between hosts
    known = {s: round(float(durations[s]), 3) for s in unique if _valid_seconds(durations.get(s))}
    default = round(sum(known.values()) / len(known), 3) if known else 1.0
    weight = {spec: known.get(spec, default) for spec in unique}
    shards: list[list[str]] = [[] for _ in range(shard_count)]
    loads = [0.0] * shard_count
    for spec in sorted(unique, key=lambda s: (-weight[s], s)):
        target = min(range(shard_count), key=lambda i: (loads[i], len(shards[i]), i))
        shards[target].append(spec)
        loads[target] += weight[spec]
    return [sorted(shard) for shard in shards]


def shard_specs(
    specs: Sequence[str],
    shard_index: int,
    shard_count: int,
    durations: dict[str, float] | None = None,
) -> list[str]:
    """The specs of shard `shard_index` (1-based, as in `--shard 2/3`) of `shard_count`."""
    if not 1 <= shard_index <= shard_count:
        raise ValueError(f"shard {shard_index}/{shard_count}: need 1 <= I <= N")
    return plan_shards(specs, shard_count, durations)[shard_index - 1]


def spec_durations_from_records(
    records: Iterable[dict[str, Any]], step_name: str, workflow: str | None = None
) -> dict[str, float]:
    """Per-spec seconds from earlier run records' `spec_durations`, newest first wins.

    `records` must come newest first (as RunStore.summaries returns them); only entries of
    the step `step_name` (of `workflow`, when given) count.
    """
    durations: dict[str, float] = {}
    for record in records:
        if workflow is not None and record.get("workflow") != workflow:
            continue
        for entry in record.get("log") or ():
            if not isinstance(entry, dict) or entry.get("step") != step_name:
                continue
            recorded = entry.get("spec_durations")
            if not isinstance(recorded, dict):
                continue
            for spec, seconds in recorded.items():
                if spec not in durations and _valid_seconds(seconds):
                    durations[spec] = float(seconds)
    return durations


def _artifact_snapshot(folders: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    snapshot: dict[Path, tuple[int, int]] = {}
    for folder in folders:
        if folder.is_dir():
            for path in folder.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    snapshot[path] = (stat.st_mtime_ns, stat.st_size)
    return snapshot


def _cypress_artifact_folders(project: Path, config: dict[str, Any]) -> list[tuple[str, Path]]:
    folders = []
    for key, default, label in CYPRESS_ARTIFACT_DIRS:
        value = config.get(key)
        folders.append((label, project / (value if isinstance(value, str) and value else default)))
    return folders


def collect_cypress_artifacts(
    folders: Sequence[tuple[str, Path]],
    before: dict[Path, tuple[int, int]],
    dest: Path,
    runs_dir: Path | None = None,
    masker: Masker | None = None,
) -> list[Path]:
    """Copy the screenshots and videos that are new or changed since `before` to `dest`
    (under `runs_dir`: folders and files get the runs/ modes, links there are not followed).

    Cypress empties these folders before a run by default (trashAssetsBeforeRuns), so
    what is there afterwards and differs from the snapshot is this run's. Their names
    come from test titles, so the copies' names are masked.
    """
    copied: list[Path] = []
    after = _artifact_snapshot(folder for _, folder in folders)
    base = runs_dir if runs_dir is not None else dest.parent
    for label, folder in folders:
        for path in sorted(p for p in after if folder in p.parents):
            if before.get(path) == after[path]:
                continue
            parts = path.relative_to(folder).parts
            if masker:
                parts = tuple(masker.mask(part).replace("/", "_") for part in parts)
            target = dest.joinpath(label, *parts)
            copy_into_runs(path, target, base)
            copied.append(target)
    return copied


def _drop_write_by_others(folder: Path) -> None:
    """Cypress writes its JUnit files under runs/ with the umask it was given (000 in some CI
    images): take group and world write away before they are read, like every file under runs/."""
    try:
        paths = list(folder.iterdir())
    except OSError:
        return
    for path in paths:
        try:
            info = path.lstat()
            if not path.is_symlink() and info.st_mode & 0o022:
                os.chmod(path, info.st_mode & 0o7755)
        except OSError:
            continue


@register_runner
class CypressRunner(Runner):
    """Runs a Cypress project's own `cypress run` on an explicit list of spec files.

    Passes only when Cypress exits 0 and its JUnit files record no failed test; every
    test becomes a JUnit test case of the run's report. Under `--shard I/N` it runs the
    duration-balanced share I of the spec files.
    """

    type_name = "cypress"
    keys = {
        "project": KeySpec((str,), required=True),
        "folder": KeySpec((str,)),
        "spec": KeySpec((str,)),
        "browser": KeySpec((str,)),
        # the common key: set in the step's environment like any step's, and passed to
        # Cypress as CYPRESS_<name> (Cypress turns "true" and "3" back into a boolean and a number)
        "env": KeySpec((dict,), item_type=str),
        "config": KeySpec((dict,)),
        "headed": KeySpec((bool,)),
        "allow_empty": KeySpec((bool,)),
    }

    def check_definition(self, step: Step, workflow_path: Path, settings: Settings) -> None:
        where = f"{workflow_path.parent.name}/{workflow_path.name}: {step.label}"
        try:
            resolve_cypress_project(step.config["project"], settings.cypress_modules, settings.root)
        except ValueError as exc:
            raise DefinitionError(f"{where}: key 'project': {exc}") from None
        for key in ("folder", "spec"):
            value = step.config.get(key)
            if value is not None and (not value.strip() or os.path.isabs(value)):
                raise DefinitionError(f"{where}: key '{key}': {value!r} must be a non-empty path inside the project")
        spec = step.config.get("spec")
        if spec is not None:
            check_glob(spec.strip().removeprefix("./"), where, "spec")

    # -- the parts shared by preflight, describe and execute --

    def _project(self, ctx: StepContext) -> Path:
        relative = resolve_cypress_project(ctx.step.config["project"], ctx.settings.cypress_modules, ctx.root)
        return Path(os.path.abspath(ctx.root / relative))

    @staticmethod
    def _step_folder(ctx: StepContext) -> str:
        """The step's folder name under runs/<run_id>/: its log file's name without .log."""
        return step_log_name(ctx.step, len(ctx.workflow.steps)).removesuffix(".log")

    def _report_dir(self, ctx: StepContext) -> Path:
        return ctx.run_dir / "cypress" / self._step_folder(ctx)

    def _install_problems(self, ctx: StepContext, project: Path) -> list[str]:
        """What on disk keeps Cypress from starting, each with its fix."""
        import shutil

        shown = _display_path(project, ctx.root)
        if not project.is_dir():
            return [
                (
                    f"Cypress project folder {shown} does not exist "
                    "(check the step's 'project', or create it in an earlier step)"
                )
            ]
        problems = []
        if not (project / "package.json").is_file():
            problems.append(
                f"{shown} has no package.json: not a Node project "
                '(run "npm init -y" and "npm install cypress --save-dev" there)'
            )
        if not (project / "node_modules" / ".bin" / "cypress").is_file():
            problems.append(f"Cypress is not installed in {shown}: " + CYPRESS_INSTALL_HINT.format(project=shown))
        if shutil.which("node", path=ctx.env.get("PATH", os.defpath)) is None:
            problems.append("node is not on PATH: install Node.js or add its bin folder to PATH")
        return problems

    _EMPTY_HINT = " (set 'folder' or 'spec', or \"allow_empty\": true to skip the step instead)"

    def _specs(self, ctx: StepContext, project: Path) -> tuple[list[str], str]:
        """All matching spec files, and what to say when there are none."""
        folder = ctx.step.config.get("folder", CYPRESS_DEFAULT_FOLDER)
        pattern = ctx.step.config.get("spec", CYPRESS_DEFAULT_SPEC)
        specs = find_spec_files(project, folder, pattern)
        return specs, f"no spec files match {pattern!r} in {_display_path(project / folder, ctx.root)}"

    def _share(self, ctx: StepContext, specs: list[str]) -> list[str]:
        """This shard's specs (all of them when not sharded)."""
        if ctx.options.shard is None:
            return specs
        index, count = ctx.options.shard
        return shard_specs(specs, index, count, self._recorded_durations(ctx))

    def _recorded_durations(self, ctx: StepContext) -> dict[str, float]:
        records = RunStore(ctx.runs_dir).summaries(workflow=ctx.workflow.name, limit=CYPRESS_HISTORY_RUNS)
        return spec_durations_from_records(records, ctx.step.name, ctx.workflow.name)

    def _argv(self, ctx: StepContext, project: Path, specs: Sequence[str]) -> list[str]:
        config = ctx.step.config
        return cypress_argv(
            project,
            specs,
            self._report_dir(ctx),
            browser=config.get("browser"),
            headed=bool(config.get("headed")),
            config=config.get("config"),
        )

    # -- the Runner protocol --

    def preflight(self, ctx: StepContext) -> list[str]:
        project = self._project(ctx)
        problems = self._install_problems(ctx, project)
        if project.is_dir():
            specs, empty = self._specs(ctx, project)
            if not specs:
                allowed = ctx.step.config.get("allow_empty")
                problems.append(empty + (": the step will be skipped" if allowed else self._EMPTY_HINT))
        return problems

    def _batches(self, ctx: StepContext, project: Path, specs: Sequence[str]) -> list[list[str]]:
        """The specs cut so that no `cypress run` command line is too long to start (E2BIG)."""
        others = sum(len(arg.encode()) + 1 for arg in self._argv(ctx, project, []))
        budget = min(CYPRESS_SPEC_ARG_BYTES, _argv_budget(ctx.env) - others)
        return spec_batches(specs, max(4096, budget))

    def describe(self, ctx: StepContext) -> list[str]:
        project = self._project(ctx)
        specs, _ = self._specs(ctx, project)
        share = self._share(ctx, specs)
        env_prefix = [f"{k}={v}" for k, v in cypress_env_variables(ctx.step.env).items()]
        import shlex

        lines = [
            ctx.masker.mask(
                f"cd {shlex.quote(str(project))} && {shlex.join([*env_prefix, *self._argv(ctx, project, batch)])}"
            )
            for batch in (self._batches(ctx, project, share) or [["<no spec files>"]])
        ]
        if specs and ctx.options.shard is not None:  # (no specs: preflight warns)
            index, count = ctx.options.shard
            lines.append(f"shard {index}/{count}: {len(share)} of {len(specs)} spec files")
        return lines

    def execute(self, ctx: StepContext) -> StepResult:
        import shutil

        config = ctx.step.config
        project = self._project(ctx)
        problems = self._install_problems(ctx, project)
        if problems:
            raise StepFailure("; ".join(problems))
        shard = "{}/{}".format(*ctx.options.shard) if ctx.options.shard else None
        extra: dict[str, Any] = {
            "tests": 0,
            "failures": 0,
            "failed_tests": [],
            "specs": [],
            "spec_durations": {},
            "artifacts": [],
            "shard": shard,
        }
        specs, empty = self._specs(ctx, project)
        if not specs:
            if config.get("allow_empty"):
                return StepResult(status="skipped", message=empty, extra=extra)
            raise StepFailure(empty + self._EMPTY_HINT)
        share = self._share(ctx, specs)
        extra["specs"] = share
        if not share:  # only a shard can come out empty: N shards over fewer than N specs
            count = ctx.options.shard[1] if ctx.options.shard else 1
            message = f"shard {shard} has no spec files to run ({len(specs)} spec files over {count} shards)"
            return StepResult(status="skipped", message=message, extra=extra)

        report_dir = self._report_dir(ctx)
        shutil.rmtree(report_dir, ignore_errors=True)  # a retry must not read the last attempt's files
        make_runs_dirs(report_dir, ctx.runs_dir)
        code, artifacts, batches = self._run_batches(ctx, project, specs, share, shard)
        if batches > 1:
            extra["batches"] = batches
        _drop_write_by_others(report_dir)
        reports, unreadable = read_cypress_reports(report_dir, project)
        mask_cypress_reports(report_dir, ctx.masker)
        tests = [test for report in reports for test in report.tests]
        self._record_results(ctx, project, extra, share, reports, tests, artifacts)
        message = self._failure_message(ctx, code, tests, bool(reports), unreadable, report_dir)
        status = "failed" if message else "passed"
        if status == "passed":
            message = f"{len(tests)} Cypress tests passed in {len(share)} spec files"
        testcases = self._testcases(ctx, project, tests)
        return StepResult(
            status=status, message=ctx.masker.mask(message), exit_code=code, extra=extra, testcases=testcases
        )

    def _run_batches(
        self, ctx: StepContext, project: Path, specs: list[str], share: list[str], shard: str | None
    ) -> tuple[int | None, list[Path], int]:
        """Run Cypress over this shard's specs, in as many batches as the command line needs;
        returns the first exit code that was not 0, the artifacts copied, the batch count."""
        folders = _cypress_artifact_folders(project, ctx.step.config.get("config") or {})
        batches = self._batches(ctx, project, share)
        ctx.emit(
            f"cypress: {len(share)} of {len(specs)} spec files"
            + (f" (shard {shard})" if shard else "")
            + (f" in {len(batches)} batches (one command line would be too long)" if len(batches) > 1 else "")
        )
        artifacts: list[Path] = []
        code: int | None = 0
        for number, batch in enumerate(batches, start=1):
            if len(batches) > 1:
                ctx.emit(f"cypress: batch {number} of {len(batches)}: {len(batch)} spec files")
            # Cypress empties its screenshot and video folders before each run: each batch's
            # artifacts are copied before the next batch starts
            before = _artifact_snapshot(folder for _, folder in folders)
            process = ctx.run_process(
                self._argv(ctx, project, batch), cwd=project, env={**ctx.env, **cypress_env_variables(ctx.step.env)}
            )
            artifacts += collect_cypress_artifacts(
                folders, before, ctx.run_dir / "artifacts" / self._step_folder(ctx), ctx.runs_dir, ctx.masker
            )
            if code == 0:
                code = process.exit_code  # the first batch that did not pass speaks for the step
            if ctx.timed_out:
                break
        return code, artifacts, len(batches)

    def _record_results(
        self,
        ctx: StepContext,
        project: Path,
        extra: dict[str, Any],
        share: list[str],
        reports: list[CypressReport],
        tests: list[CypressTest],
        artifacts: list[Path],
    ) -> None:
        """What the record keeps of the reports: counts, failed tests, spec durations, artifacts."""
        mask, readable = ctx.masker.mask, ctx.masker.mask_readable
        failed = [test for test in tests if test.status == "failed"][:CYPRESS_FAILED_NAMES_MAX]
        extra.update(
            tests=len(tests),
            failures=sum(1 for test in tests if test.status == "failed"),
            failed_tests=[readable(t.display_name) for t in failed],
            specs=[mask(spec) for spec in share],
            spec_durations={mask(r.spec): r.time for r in reports if r.spec},
            # the same form as the record's log_file: runs/<run_id>/artifacts/...
            artifacts=[p.relative_to(ctx.runs_dir.parent).as_posix() for p in artifacts],
        )
        extra["failed_test_details"] = [
            {
                "name": readable(t.display_name),
                "file": readable(_root_relative(project / t.spec, ctx.root)) if t.spec else "",
                "message": _shorten(readable(t.message or "failed").strip().split("\n", 1)[0], 300),
            }
            for t in failed
        ]

    def _testcases(self, ctx: StepContext, project: Path, tests: list[CypressTest]) -> list[TestCase]:
        readable = ctx.masker.mask_readable
        return [
            TestCase(
                name=readable(" › ".join(p for p in (t.suite, t.title) if p)),
                classname=readable(t.spec) or "cypress",
                time=t.time,
                status=t.status,
                message=readable(t.message),
                text=readable(t.text),
                file=readable(_root_relative(project / t.spec, ctx.root)) if t.spec else "",
            )
            for t in tests
        ]

    def _failure_message(
        self,
        ctx: StepContext,
        code: int | None,
        tests: list[CypressTest],
        any_report: bool,
        unreadable: list[str],
        report_dir: Path,
    ) -> str:
        """Why the step failed, or "" when it passed. A timeout is reported by the engine, which
        keeps the tests counted so far."""
        failed = [test for test in tests if test.status == "failed"]
        if failed:
            names = ", ".join(t.display_name for t in failed[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            message = f"{len(failed)} of {len(tests)} Cypress tests failed: {names}{more}"
        elif not any_report and not unreadable:
            message = (
                f"Cypress exited {code} and wrote no JUnit report to "
                f"{_display_path(report_dir, ctx.root)}: it stopped before running a spec "
                "(see the step log)"
            )
        elif code != 0:
            message = f"Cypress exited {code} although its JUnit reports record no failed test (see the step log)"
        else:
            message = ""
        if unreadable:
            message = "; ".join(filter(None, [message, *unreadable]))
        return message


# === 10. Loading and validating workflows ===


COMMON_KEYS: dict[str, KeySpec] = {
    "name": KeySpec((str,), required=True),
    "type": KeySpec((str,), required=True),
    "description": KeySpec((str,)),
    "timeout": KeySpec((int, float)),
    "retries": KeySpec((int,)),
    "retry_delay": KeySpec((int, float)),
    "continue_on_error": KeySpec((bool,)),
    "env": KeySpec((dict,), item_type=str),
    "cwd": KeySpec((str,)),
    "when": KeySpec((dict,)),
    "required": KeySpec((bool,)),
    "shard": KeySpec((str,)),
    "needs": KeySpec((list,), item_type=str),
    "sources": KeySpec((list,), item_type=str),  # globs: the step is up to date while they are unchanged
    "reports": KeySpec((list,), item_type=str),  # globs: JUnit XML files the step writes
}


WORKFLOW_KEYS: dict[str, KeySpec] = {
    "name": KeySpec((str,)),
    "description": KeySpec((str,)),
    "env": KeySpec((dict,), item_type=str),
    "secrets": KeySpec((list,), item_type=str),
    "steps": KeySpec((list,), required=True),
}


WHEN_KEYS = ("status", "changed", "branch")


SETTINGS_KEYS: dict[str, KeySpec] = {
    "cypress_modules": KeySpec((dict,), item_type=str),
    "keep_runs": KeySpec((int,)),
    "jobs": KeySpec((int,)),
    "pre_push": KeySpec((dict,)),
}


PRE_PUSH_KEYS: dict[str, KeySpec] = {
    "checkout": KeySpec((str,)),
    "share": KeySpec((list,), item_type=str),
}


PRE_PUSH_CHECKOUTS = ("working-tree", "pushed")


_STEP_TYPE_RE = lazy_regex(r"^[a-z][a-z0-9_]{0,49}\Z")


_VAR_NAME_RE = lazy_regex(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


_VAR_EXPR_RE = lazy_regex(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


MAX_NUMBER = 2**53  # beyond this a JSON number is no longer exact in JavaScript or a float


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in a workflow file
        return bool in types
    if isinstance(value, (int, float)) and not -MAX_NUMBER <= value <= MAX_NUMBER:
        return False  # 1e999 is inf and 10**400 overflows float(): no key means such numbers
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def check_value(value: Any, spec: KeySpec, where: str, key: str) -> None:
    """Raise DefinitionError unless value matches spec (type, and item type of lists/dicts)."""
    if not _type_ok(value, spec.types):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _type_ok(0, spec.types):
            raise DefinitionError(f"{where}: key '{key}' is out of range (at most {MAX_NUMBER})")
        raise DefinitionError(
            f"{where}: key '{key}' must be {_describe_type(spec.types)}, not {_value_type_name(value)}"
        )
    if spec.item_type is not None and isinstance(value, list):
        for i, item in enumerate(value):
            if not _type_ok(item, (spec.item_type,)):
                raise DefinitionError(
                    f"{where}: key '{key}[{i}]' must be {_describe_type((spec.item_type,))}, "
                    f"not {_value_type_name(item)}"
                )
    if spec.item_type is not None and isinstance(value, dict):
        for k, item in value.items():
            if not _type_ok(item, (spec.item_type,)):
                raise DefinitionError(
                    f"{where}: key '{key}.{k}' must be {_describe_type((spec.item_type,))}, "
                    f"not {_value_type_name(item)}"
                )


def interpolate(value: str, variables: dict[str, str], where: str) -> tuple[str, list[str]]:
    """Expand ${VAR} and ${VAR:-default}; '$${' is a literal '${'. Returns (text, names used)."""
    if "$" not in value:
        return value, []
    out: list[str] = []
    used: list[str] = []
    i = 0
    while True:
        j = value.find("$", i)
        if j < 0:
            out.append(value[i:])
            break
        out.append(value[i:j])
        if value.startswith("$${", j):
            out.append("${")
            i = j + 3
            continue
        if not value.startswith("${", j):
            out.append("$")
            i = j + 1
            continue
        end = value.find("}", j)
        if end < 0:
            raise DefinitionError(f"{where}: unterminated '${{' in {value!r} (write '$${{' for a literal '${{')")
        expr = value[j + 2 : end]
        match = _VAR_EXPR_RE.fullmatch(expr)
        if not match:
            raise DefinitionError(
                f"{where}: '${{{expr}}}' is not a variable reference: use ${{NAME}} or "
                f"${{NAME:-default}} (write '$${{' for a literal '${{')"
            )
        name, default = match.group(1), match.group(2)
        if default is not None and "${" in default:
            raise DefinitionError(f"{where}: nested '${{' inside '${{{expr}}}' is not supported")
        current = variables.get(name)
        if current is not None and (current != "" or default is None):
            out.append(current)
        elif default is not None:
            out.append(default)
        else:
            raise DefinitionError(
                f"{where}: variable ${{{name}}} is not set (export it, pass --var {name}=VALUE, "
                f"or write ${{{name}:-default}})"
            )
        used.append(name)
        i = end + 1
    return "".join(out), used


def _interpolate_tree(
    value: Any,
    variables: dict[str, str],
    where: str,
    key: str,
    secrets: dict[str, str],
    refs: list[tuple[str, str, tuple[str, ...]]],
) -> Any:
    """Interpolate every string inside value; values of secret-named keys that came from a
    variable are remembered as secrets (with the ${NAME}s they came from), and every
    (where, key, names used) goes into refs."""
    if isinstance(value, str):
        if "\x00" in value:  # argv, environment and paths cannot carry NUL: fail now, not mid-run
            raise DefinitionError(f"{where}: key '{key}' contains a NUL character")
        text, used = interpolate(value, variables, f"{where}: key '{key}'")
        if used:
            refs.append((where, key, tuple(used)))
            if is_secret_key(key.rsplit(".", 1)[-1]) and text:
                secrets.setdefault(text, ", ".join(f"${{{n}}}" for n in dict.fromkeys(used)))
        return text
    if isinstance(value, list):
        return [_interpolate_tree(v, variables, where, f"{key}[{i}]", secrets, refs) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if key == "env" and any(not k or "=" in k or "\x00" in k for k in value):
            bad = next(k for k in value if not k or "=" in k or "\x00" in k)
            raise DefinitionError(
                f"{where}: key '{key}' has {bad!r}, which is not an environment "
                f"variable name (no '=', no NUL, not empty)"
            )
        return {k: _interpolate_tree(v, variables, where, f"{key}.{k}", secrets, refs) for k, v in value.items()}
    return value


# names whose value steers a program before it runs its own code: a caller of the HTTP API
# may set a workflow's ${NAME}s, never one of these in a step's environment
_PROTECTED_ENV_RE = r"^(?:LD_|DYLD_|PYTHON|GIT_)|^(?:PATH|BASH_ENV|ENV|NODE_OPTIONS|PERL5OPT|RUBYOPT)\Z"


def check_http_variables(workflow: Workflow, names: Iterable[str]) -> None:
    """DefinitionError unless every name is a ${NAME} the workflow uses and none of them
    reaches a protected environment variable (LD_*, PYTHON*, PATH, GIT_*...) of a step."""
    accepted = sorted(workflow.variables_used)
    for name in sorted(set(names)):
        if name not in workflow.variables_used:
            raise DefinitionError(
                f"vars key '{name}': workflow {workflow.name} does not use ${{{name}}}; accepted: "
                + (", ".join(accepted) if accepted else "none (the workflow uses no ${NAME})")
            )
        for where, key, used in workflow.references:
            env_name = key[len("env.") :] if key.startswith("env.") else None
            if env_name is not None and name in used and re.match(_PROTECTED_ENV_RE, env_name):
                raise DefinitionError(
                    f"vars key '{name}': {where} puts ${{{name}}} into {env_name}, which a caller "
                    f"of the HTTP API may not set (LD_*, PYTHON*, PATH, GIT_* and the like)"
                )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(ValueError):
    pass


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; RFC 8259 does not, and no key means them
    raise _NotJSON(f"{name} is not a JSON value")


def _trailing_comma(text: str, error_pos: int) -> int | None:
    """Where the comma is, when a JSON error is a `,` right before `]` or `}` (JavaScript and
    Python allow one; JSON does not, and the decoder's "Expecting value" does not say so)."""
    if error_pos >= len(text) or text[error_pos] not in "]}":
        return None
    before = len(text[:error_pos].rstrip())
    return before - 1 if before and text[before - 1] == "," else None


def parse_json_file(path: Path, shown: str, max_bytes: int = MAX_WORKFLOW_BYTES) -> Any:
    """Read a JSON document with one clear message for every way it can be wrong."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DefinitionError(
                f"{shown}: file is {size / 1e6:.1f} MB; a workflow file may be at most {max_bytes // (1024 * 1024)} MiB"
            )
        data = path.read_bytes()
    except DefinitionError:
        raise
    except IsADirectoryError:
        raise DefinitionError(f"{shown}: is a folder, not a JSON file") from None
    except OSError as exc:
        raise DefinitionError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DefinitionError(f"{shown}: file is UTF-16; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM some Windows editors add; JSON allows ignoring it
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DefinitionError(
            f"{shown}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}); save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DefinitionError(f"{shown}: file is empty; expected a JSON object")
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        comma = _trailing_comma(text, exc.pos)
        if comma is not None:
            line, column = text.count("\n", 0, comma) + 1, comma - text.rfind("\n", 0, comma)
            raise DefinitionError(
                f"{shown}: invalid JSON at line {line} column {column}: trailing comma before "
                f"'{text[exc.pos]}' (JSON allows none: remove it)"
            ) from None
        raise DefinitionError(f"{shown}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _NotJSON as exc:
        raise DefinitionError(f"{shown}: invalid JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise DefinitionError(f"{shown}: key '{exc}' appears twice in the same object") from None
    except RecursionError:
        raise DefinitionError(f"{shown}: JSON is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (CVE-2020-10735 limit)
        raise DefinitionError(f"{shown}: invalid JSON: {str(exc).split(';')[0]}") from None
    problem = _check_document(document)
    if problem:
        raise DefinitionError(f"{shown}: {problem}")
    return document


MAX_NESTING = 64  # far beyond any workflow; keeps every recursive walk of a document safe


def _check_document(document: Any) -> str | None:
    """What no later stage can handle, found with one iterative walk: nesting deeper than
    MAX_NESTING (validation, masking and hashing recurse) and lone surrogates from '\\ud800'
    escapes (they cannot be encoded as UTF-8 for argv, environment or the run record)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"JSON is nested more than {MAX_NESTING} levels deep"
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE_RE.search(value):
                return f"string {shorten_middle(value, 40)!r} contains a lone UTF-16 surrogate (\\uD800-\\uDFFF); use the real character"
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, dict):
            stack.extend((key, depth + 1) for key in value)
            stack.extend((item, depth + 1) for item in value.values())
    return None


_SURROGATE_RE = lazy_regex("[\ud800-\udfff]")


def _check_keys(obj: dict[str, Any], specs: dict[str, KeySpec], where: str, extra_allowed: bool = False) -> None:
    for key in obj:
        if key not in specs and not extra_allowed:
            raise DefinitionError(f"{where}: unknown key '{key}'{did_you_mean(key, specs)}")
    for key, spec in specs.items():
        if key in obj:
            check_value(obj[key], spec, where, key)
        elif spec.required:
            raise DefinitionError(f"{where}: missing required key '{key}'")


def load_settings(root: Path) -> Settings:
    path = root / "orchestrate.json"
    if not path.exists():
        return Settings(root=root)
    shown = "orchestrate.json"
    data = parse_json_file(path, shown)
    if not isinstance(data, dict):
        raise DefinitionError(f"{shown}: expected a JSON object, not {_value_type_name(data)}")
    _check_keys(data, SETTINGS_KEYS, shown)
    keep = data.get("keep_runs", DEFAULT_KEEP_RUNS)
    if keep < 1:
        raise DefinitionError(f"{shown}: key 'keep_runs' must be at least 1")
    jobs = data.get("jobs")
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise DefinitionError(f"{shown}: key 'jobs' must be between 1 and {MAX_JOBS}")
    pre_push = data.get("pre_push", {})
    _check_keys(pre_push, PRE_PUSH_KEYS, f"{shown}: pre_push")
    checkout = pre_push.get("checkout", "working-tree")
    if checkout not in PRE_PUSH_CHECKOUTS:
        raise DefinitionError(
            f'{shown}: key \'pre_push.checkout\' must be "working-tree" or "pushed", '
            f"not {checkout!r}{did_you_mean(checkout, PRE_PUSH_CHECKOUTS)}"
        )
    for item in pre_push.get("share", []):
        parts = Path(item).parts
        if not item or Path(item).is_absolute() or ".." in parts or parts in ((), (".",)) or parts[0] == ".git":
            raise DefinitionError(
                f"{shown}: key 'pre_push.share' lists {item!r}: give a path inside the "
                'project, relative to it, such as ".venv"'
            )
    return Settings(
        cypress_modules=dict(data.get("cypress_modules", {})),
        keep_runs=keep,
        jobs=jobs,
        raw=data,
        pre_push_checkout=checkout,
        pre_push_share=list(pre_push.get("share", [])),
        root=root,
    )


def list_workflows(workflows_dir: Path) -> list[tuple[str, Path]]:
    if not workflows_dir.is_dir():
        return []
    return sorted((p.stem, p) for p in workflows_dir.glob("*.json") if p.is_file())


def _validate_common(step: dict[str, Any], where: str) -> None:
    """The rules of the keys every step type shares, beyond their JSON types."""
    _check_step_name(step["name"], where)
    _check_step_limits(step, where)
    for key, value in step.get("when", {}).items():
        if key not in WHEN_KEYS:
            raise DefinitionError(f"{where}: unknown key 'when.{key}'{did_you_mean(key, WHEN_KEYS)}")
        if key == "status":
            _check_when_status(value, where)
        else:
            _check_when_globs(key, value, where)


def _check_step_name(name: str, where: str) -> None:
    if not name.strip():
        raise DefinitionError(f"{where}: key 'name' must not be empty")
    if len(name) > 100 or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise DefinitionError(
            f"{where}: key 'name' must be at most 100 characters without '/', '\\' or control characters"
        )


def _check_step_limits(step: dict[str, Any], where: str) -> None:
    if "timeout" in step and not step["timeout"] > 0:
        raise DefinitionError(f"{where}: key 'timeout' must be a number of seconds above 0")
    if "retries" in step and not 0 <= step["retries"] <= 100:
        raise DefinitionError(f"{where}: key 'retries' must be between 0 and 100")
    if "retry_delay" in step and not 0 <= step["retry_delay"] <= 3600:
        raise DefinitionError(f"{where}: key 'retry_delay' must be between 0 and 3600 seconds")
    if "shard" in step and step["shard"] not in ("all", "first"):
        raise DefinitionError(
            f'{where}: key \'shard\' must be "all" or "first"{did_you_mean(step["shard"], ["all", "first"])}'
        )


def _check_when_status(value: Any, where: str) -> None:
    if value not in WHEN_STATUSES:
        shown = value if isinstance(value, str) else _value_type_name(value)
        raise DefinitionError(
            f"{where}: key 'when.status' must be one of success, failure, always, "
            f"not '{shown}'{did_you_mean(str(value), WHEN_STATUSES)}"
        )


def _check_when_globs(key: str, value: Any, where: str) -> None:
    """when.changed / when.branch: one glob or a non-empty list of them, each one valid."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise DefinitionError(f"{where}: key 'when.{key}' must be a non-empty list of glob strings")
    as_matched = changed_glob if key == "changed" else branch_glob
    for i, pattern in enumerate(items):
        try:
            as_matched(pattern)
        except GlobError as exc:
            shown = f"when.{key}" if isinstance(value, str) else f"when.{key}[{i}]"
            raise DefinitionError(f"{where}: key '{shown}': invalid glob {_shorten(pattern, 80)!r}: {exc}") from None


def load_workflow(
    name: str,
    workflows_dir: Path,
    variables: dict[str, str] | None = None,
    settings: Settings | None = None,
    root: Path | None = None,
) -> Workflow:
    """Load and strictly validate workflows/<name>.json; DefinitionError on the first problem."""
    name = check_workflow_name(name)
    root = root if root is not None else workflows_dir.parent
    settings = settings or Settings()
    path = workflows_dir / f"{name}.json"
    shown = _display_path(path, root)
    if not path.is_file():
        known = [n for n, _ in list_workflows(workflows_dir)]
        hint = did_you_mean(name, known) or (
            f"; known: {', '.join(known)}"
            if known
            else f"; {_display_path(workflows_dir, root)}/ has no workflows (try: orchestrate init)"
        )
        raise UsageError(f"no workflow '{name}': {shown} does not exist{hint}")
    data = parse_json_file(path, shown)
    sha256 = sha256_hex(path.read_bytes())
    return build_workflow(
        data, name, path, shown, variables if variables is not None else dict(os.environ), settings, root, sha256
    )


def build_workflow(
    data: Any,
    name: str,
    path: Path,
    shown: str,
    variables: dict[str, str],
    settings: Settings,
    root: Path,
    sha256: str = "",
) -> Workflow:
    """Validate a parsed workflow document: pure except for plugin lookup under root.

    A DefinitionError never quotes a secret: its value becomes the ${NAME} it came from."""
    names = _secret_variable_names(data, variables) if isinstance(data, dict) else {}
    try:
        return _build_workflow(data, name, path, shown, variables, settings, root, sha256)
    except DefinitionError as exc:
        if not names:
            raise
        raise DefinitionError(_name_secrets(str(exc), names)) from None


def _build_workflow(
    data: Any, name: str, path: Path, shown: str, variables: dict[str, str], settings: Settings, root: Path, sha256: str
) -> Workflow:
    _check_workflow_document(data, name, shown)
    secrets = _declared_secrets(data, variables, shown)  # value -> where it came from
    refs: list[tuple[str, str, tuple[str, ...]]] = []
    warnings: list[str] = []
    env = _interpolate_tree(data.get("env", {}), variables, shown, "env", secrets, refs)
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, raw_step in enumerate(data["steps"]):
        where, runner = _check_step_document(raw_step, index, shown, root, seen)
        _note_literal_tokens(raw_step, index, where, secrets, warnings)
        step = _resolve_step(raw_step, index, runner, variables, where, secrets, refs)
        for key in ("sources", "reports"):
            if key in step.resolved:
                check_path_globs(step.resolved[key], where, key)
        runner.check_definition(step, path, settings)
        runner.check_paths(step, where, root)
        steps.append(step)
        _note_jira_credential(step, secrets)
    check_step_needs(steps, shown)
    _check_secret_lengths(secrets, shown)
    _stamp_step_hashes(steps, env, Masker(secrets), refs, variables, shown)
    return Workflow(
        name=name,
        path=path,
        description=data.get("description", ""),
        env=env,
        steps=steps,
        secrets=set(secrets),
        sha256=sha256,
        display_path=shown,
        warnings=warnings,
        references=refs,
        variables_used={n for _, _, used in refs for n in used},
    )


def _check_workflow_document(data: Any, name: str, shown: str) -> None:
    """The workflow file's own keys: an object whose name matches its file, with steps."""
    if not isinstance(data, dict):
        raise DefinitionError(f"{shown}: expected a JSON object with a 'steps' list, not {_value_type_name(data)}")
    _check_keys(data, WORKFLOW_KEYS, shown)
    if "name" in data and data["name"] != name:
        raise DefinitionError(
            f"{shown}: key 'name' is '{data['name']}' but the file is {name}.json; "
            f"make them match (the file name is how you run it)"
        )
    if not data["steps"]:
        raise DefinitionError(f"{shown}: key 'steps' is empty; add at least one step")


def _declared_secrets(data: dict[str, Any], variables: dict[str, str], shown: str) -> dict[str, str]:
    """The values of the variables the workflow's 'secrets' key names, each with its ${NAME}."""
    secrets: dict[str, str] = {}
    for var in data.get("secrets", []):
        if not _VAR_NAME_RE.match(var):
            raise DefinitionError(f"{shown}: key 'secrets' lists '{var}', which is not a variable name")
        if variables.get(var):
            secrets.setdefault(variables[var], f"${{{var}}}")
    return secrets


def _check_step_document(raw_step: Any, index: int, shown: str, root: Path, seen: dict[str, int]) -> tuple[str, Runner]:
    """Check one step's keys before interpolation; its label for messages and its runner."""
    where = f"{shown}: steps[{index}]"
    if not isinstance(raw_step, dict):
        raise DefinitionError(f"{where}: expected an object, not {_value_type_name(raw_step)}")
    step_name = raw_step.get("name")
    if isinstance(step_name, str):
        where = f'{shown}: steps[{index}] "{step_name}"'
    for key in ("name", "type"):
        if key not in raw_step:
            raise DefinitionError(f"{where}: missing required key '{key}'")
        check_value(raw_step[key], COMMON_KEYS[key], where, key)
    runner = _step_runner(raw_step["type"], where, root)
    specs = {**COMMON_KEYS, **runner.keys}
    _check_keys(raw_step, specs, where, extra_allowed=runner.accepts_any_key)
    _validate_common(raw_step, where)
    step_name = raw_step["name"]  # a string now: _check_keys has checked it
    if step_name in seen:
        raise DefinitionError(
            f"{where}: duplicate step name '{step_name}' (also steps[{seen[step_name]}]); step names must be unique"
        )
    seen[step_name] = index
    return where, runner


def _step_runner(step_type: str, where: str, root: Path) -> Runner:
    """The built-in runner of a step type, else its plugin, else a message listing both."""
    runner = RUNNERS.get(step_type)
    if runner is not None:
        return runner
    if not _STEP_TYPE_RE.match(step_type) or _find_plugin(step_type, root) is None:
        plugins = sorted(p.name[: -len("_runner.py")] for p in (root / "integrations").glob("*_runner.py"))
        plugins += sorted(n for n in _entry_point_names() if n not in plugins)
        raise DefinitionError(
            f"{where}: unknown step type '{step_type}'{did_you_mean(step_type, list(RUNNERS) + plugins)}; "
            f"built-in types: {', '.join(sorted(RUNNERS))}; plugins: "
            f"{', '.join(plugins) if plugins else 'none (add integrations/' + step_type + '_runner.py)'}"
        )
    return PluginRunner(step_type)


def _note_literal_tokens(
    raw_step: dict[str, Any], index: int, where: str, secrets: dict[str, str], warnings: list[str]
) -> None:
    """A token written into the file is masked like a declared secret, with a warning."""
    for key, value in raw_step.items():
        if key == "token" and isinstance(value, str) and value and "${" not in value:
            secrets.setdefault(value, f"in steps[{index}] key 'token'")
            warnings.append(
                f"{where}: key 'token' holds a literal token; keep it out of the file with "
                f'"token": "${{JIRA_TOKEN}}" (it is masked as *** all the same)'
            )


def _resolve_step(
    raw_step: dict[str, Any],
    index: int,
    runner: Runner,
    variables: dict[str, str],
    where: str,
    secrets: dict[str, str],
    refs: list[tuple[str, str, tuple[str, ...]]],
) -> Step:
    """The Step of a checked step definition, its ${NAME} values interpolated."""
    resolved = {
        k: (v if k in ("name", "type") else _interpolate_tree(v, variables, where, k, secrets, refs))
        for k, v in raw_step.items()
    }
    step_name = raw_step["name"]
    return Step(
        index=index,
        name=step_name,
        type=raw_step["type"],
        config={k: v for k, v in resolved.items() if k not in COMMON_KEYS},
        resolved=resolved,
        timeout=float(resolved["timeout"]) if "timeout" in resolved else None,
        retries=resolved.get("retries", 0),
        retry_delay=float(resolved.get("retry_delay", 0)),
        continue_on_error=resolved.get("continue_on_error", False),
        env=dict(resolved.get("env", {})),
        cwd=resolved.get("cwd"),
        when=dict(resolved.get("when", {})),
        required=resolved.get("required", False),
        shard=resolved.get("shard", "all"),
        label=f'steps[{index}] "{step_name}"',
        source=raw_step,
        needs=list(raw_step["needs"]) if "needs" in raw_step else None,
        sources=list(resolved.get("sources", [])),
        reports=list(resolved.get("reports", [])),
    )


def _note_jira_credential(step: Step, secrets: dict[str, str]) -> None:
    """The Basic credential a jira step sends: a step printing its headers prints this."""
    user, token = step.config.get("user"), step.config.get("token")
    if step.type == "jira" and isinstance(user, str) and user and isinstance(token, str) and token:
        import base64

        secrets.setdefault(
            base64.b64encode(f"{user}:{token}".encode()).decode("ascii"), f"user:token of steps[{step.index}]"
        )


def _check_secret_lengths(secrets: dict[str, str], shown: str) -> None:
    for value, source in secrets.items():
        if len(value) < MIN_SECRET_LEN:
            raise DefinitionError(
                f"{shown}: secret {source} is {len(value)} character{'s' if len(value) != 1 else ''} "
                f"long; a secret needs at least {MIN_SECRET_LEN}, as masking a shorter value would "
                f"garble ordinary output (use a longer secret)"
            )


def _stamp_step_hashes(
    steps: list[Step],
    env: Any,
    masker: Masker,
    refs: list[tuple[str, str, tuple[str, ...]]],
    variables: dict[str, str],
    shown: str,
) -> None:
    """Each step's definition hash and the variables it uses (what --resume and sources compare)."""
    # the workflow's env reaches every step: A=1 and A=2 must not hash the same (secrets in it
    # are masked here; their values enter values_sha256, keyed, never in clear)
    shared_env = masker.mask_tree(env)
    env_names = [name for where, key, used in refs if where == shown and key.startswith("env") for name in used]
    step_names: dict[int, list[str]] = {}
    prefix = f"{shown}: steps["
    for where, _key, used in refs:
        if where.startswith(prefix):
            number = where[len(prefix) : where.find("]", len(prefix))]
            if number.isdigit():
                step_names.setdefault(int(number), []).extend(used)
    for step in steps:
        step.definition_sha256 = _canonical_hash({"step": masker.mask_tree(step.resolved), "env": shared_env})
        step.variables = {name: variables.get(name) for name in sorted({*env_names, *step_names.get(step.index, [])})}


def check_step_needs(steps: Sequence[Step], shown: str) -> None:
    """`needs` names steps of the same workflow, never the step itself, and forms no cycle."""
    names = {step.name: step for step in steps}
    for step in steps:
        for i, need in enumerate(step.needs or ()):
            where = f"{shown}: {step.label}: key 'needs[{i}]'"
            if need == step.name:
                raise DefinitionError(f"{where}: a step cannot need itself")
            if need not in names:
                raise DefinitionError(f"{where}: no step named {need!r} in this workflow{did_you_mean(need, names)}")
            if need in (step.needs or [])[:i]:
                raise DefinitionError(f"{where}: {need!r} is listed twice")
    cycle = _dependency_cycle(steps)
    if cycle:
        first = steps[cycle[0]]
        raise DefinitionError(
            f"{shown}: {first.label}: key 'needs': the steps form a cycle: "
            + " → ".join(repr(steps[i].name) for i in cycle)
        )


def step_dependencies(steps: Sequence[Step]) -> list[tuple[int, ...]]:
    """The steps each step waits for, by index: its `needs`; without `needs`, the step above it
    (a workflow without `needs` is a chain, as before `needs` existed), or every step above it
    for a `when.status` failure/always step (it judges them all)."""
    index_of = {step.name: step.index for step in steps}
    deps: list[tuple[int, ...]] = []
    for i, step in enumerate(steps):
        if step.needs is not None:
            deps.append(tuple(index_of[name] for name in step.needs))
        elif step.when_status != "success":
            deps.append(tuple(range(i)))
        else:
            deps.append((i - 1,) if i else ())
    return deps


def _dependency_cycle(steps: Sequence[Step]) -> list[int] | None:
    """A cycle in the step graph as the indices along it (first repeated at the end), or None."""
    deps = step_dependencies(steps)
    state = [0] * len(steps)  # 1: on the current path, 2: done
    for start in range(len(steps)):
        if state[start]:
            continue
        path = [start]
        stack = [iter(deps[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state[nxt]:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(deps[nxt]))
    return None


# === 11. Engine ===


def parse_shard(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", value or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UsageError(f"--shard {value!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/3")
    return int(match.group(1)), int(match.group(2))


def parse_vars(pairs: Iterable[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _VAR_NAME_RE.match(key):
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE with KEY a variable name (letters, digits, _)")
        result[key] = value
    return result


def _pending_entry(step: Step, log_file: str) -> dict[str, Any]:
    return {
        "step": step.name,
        "type": step.type,
        "status": "pending",
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "exit_code": None,
        "attempts": 0,
        "message": "",
        "output_tail": "",
        "log_file": log_file,
        "definition_sha256": step.definition_sha256,
    }


def select_steps(workflow: Workflow, options: RunOptions) -> dict[int, str]:
    """Steps excluded before the run starts, with the reason (pure). --only and --skip take
    step names or numbers."""
    names = [s.name for s in workflow.steps]
    chosen_names: dict[str, set[str]] = {}
    for flag, chosen in (("--only", options.only), ("--skip", options.skip)):
        chosen_names[flag] = set()
        for value in chosen:
            name = step_by_name_or_number(value, names)
            if name is None:
                numbers = f"1-{len(names)}" if len(names) > 1 else "1"
                raise UsageError(
                    f"{flag} {value!r}: no such step in {workflow.name}{did_you_mean(value, names)}; "
                    f"steps: {', '.join(names)} (or their numbers, {numbers})"
                )
            chosen_names[flag].add(name)
    excluded: dict[int, str] = {}
    for step in workflow.steps:
        if options.only and step.name not in chosen_names["--only"]:
            excluded[step.index] = "not selected by --only"
        elif step.name in chosen_names["--skip"]:
            excluded[step.index] = "skipped by --skip"
        elif step.shard == "first" and options.shard is not None and options.shard[0] != 1:
            excluded[step.index] = f"runs on shard 1 only (this is shard {options.shard[0]}/{options.shard[1]})"
    return excluded


class StepGraph:
    """The dependencies of a workflow's steps (see step_dependencies), with every step's
    ancestors (what it waits for, transitively) as a bitmask, and whether any two steps can run
    at the same time. Pure: computed once per run from the validated steps."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.deps = step_dependencies(steps)
        self.explicit = [step.needs is not None for step in steps]
        self.ancestors = [0] * len(steps)
        import itertools

        order = self._order()
        for index in order:
            mask = 0
            for dep in self.deps[index]:
                mask |= self.ancestors[dep] | (1 << dep)
            self.ancestors[index] = mask
        # a chain (every step after the one before it) never has two steps running at once
        self.parallel = any(not (self.ancestors[b] >> a) & 1 for a, b in itertools.pairwise(order))

    def _order(self) -> list[int]:
        """Indices in an order where every step comes after its dependencies (lowest first)."""
        if all(dep < index for index, deps in enumerate(self.deps) for dep in deps):
            return list(range(len(self.deps)))  # what the heap below gives, without importing it
        import heapq

        waiting = [len(d) for d in self.deps]
        users: list[list[int]] = [[] for _ in self.deps]
        for index, deps in enumerate(self.deps):
            for dep in deps:
                users[dep].append(index)
        ready = [i for i, n in enumerate(waiting) if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            index = heapq.heappop(ready)
            order.append(index)
            for user in users[index]:
                waiting[user] -= 1
                if not waiting[user]:
                    heapq.heappush(ready, user)
        return order

    def is_ancestor(self, ancestor: int, index: int) -> bool:
        return bool((self.ancestors[index] >> ancestor) & 1)

    def ancestor_indices(self, index: int) -> list[int]:
        mask = self.ancestors[index]
        return [i for i in range(mask.bit_length()) if (mask >> i) & 1]


# What a finished step means for the steps after it.
PASSED, FAILED, ALLOWED, SKIPPED, BLOCKED = "passed", "failed", "allowed", "skipped", "blocked"


def status_gate(
    step: Step,
    graph: StepGraph,
    outcomes: Sequence[str | None],
    failed: Sequence[str],
    keep_going: bool,
    names: Sequence[str],
) -> tuple[str | None, bool]:
    """Why a step does not run given the outcomes so far, or None; and whether that skip
    blocks the steps that need it (pure).

    `when.status` is judged on the steps it depends on, transitively: `always` runs once they
    have finished, `failure` only when one of them failed. A `success` step does not start once
    any step has failed, unless --keep-going; then only a failure among the steps it `needs`
    (or a need skipped because of one) keeps it from running: dependencies by position, without
    `needs`, only order the steps."""
    when = step.when_status
    index = step.index
    if when == "always":
        return None, False
    if when == "failure":
        if any(outcomes[i] == FAILED for i in graph.ancestor_indices(index)):
            return None, False
        return "runs only after a failure (when.status = failure)", False
    if failed and not keep_going:
        return f"an earlier step failed ({', '.join(failed)})", True
    if graph.explicit[index]:
        bad = [names[d] for d in graph.deps[index] if outcomes[d] in (FAILED, BLOCKED)]
        if bad:
            return f"a step it needs did not pass ({', '.join(bad)})", True
    return None, False


def _step_environment(workflow: Workflow, step: Step, root: Path, run_id: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(workflow.env)
    env.update(step.env)
    env.update(
        ORCHESTRATE_RUN_ID=run_id,
        ORCHESTRATE_WORKFLOW=workflow.name,
        ORCHESTRATE_STEP=step.name,
        ORCHESTRATE_ROOT=str(root),
    )
    return env


def make_context(
    workflow: Workflow,
    step: Step,
    settings: Settings,
    root: Path,
    store: RunStore,
    run_id: str,
    options: RunOptions,
    masker: Masker,
    previous: list[dict[str, Any]],
    trigger: dict[str, Any],
    base_env: dict[str, str],
) -> StepContext:
    cwd = (root / step.cwd) if step.cwd else root
    return StepContext(
        step=step,
        workflow=workflow,
        settings=settings,
        root=root,
        runs_dir=store.runs_dir,
        run_id=run_id,
        run_dir=store.runs_dir / run_id,
        env=_step_environment(workflow, step, root, run_id, base_env),
        cwd=cwd,
        masker=masker,
        previous=previous,
        trigger=trigger,
        options=options,
    )


def runner_for(step: Step) -> Runner:
    return RUNNERS.get(step.type) or PluginRunner(step.type)


def plan_run(
    workflow: Workflow,
    settings: Settings,
    root: Path,
    store: RunStore,
    options: RunOptions,
    env_hooks: Iterable[EnvHook] = (),
) -> list[dict[str, Any]]:
    """What a run would do, step by step, with warnings about what is missing on disk."""
    excluded = select_steps(workflow, options)
    masker = Masker(workflow.secrets)
    base_env = _base_environment(options, env_hooks)
    plan = []
    for step in workflow.steps:
        ctx = make_context(workflow, step, settings, root, store, "dry-run", options, masker, [], {}, base_env)
        runner = runner_for(step)
        item: dict[str, Any] = {
            "step": step.name,
            "type": step.type,
            "skip": excluded.get(step.index),
            "when": step.when_status,
            "commands": [],
            "warnings": [],
        }
        if item["skip"] is None:
            try:
                item["commands"] = [masker.mask(line) for line in runner.describe(ctx)]
            except StepFailure as exc:
                item["warnings"].append(masker.mask(str(exc)))
            item["warnings"] += [masker.mask(w) for w in runner.preflight(ctx)]
            if step.cwd and not ctx.cwd.is_dir():
                item["warnings"].append(f"working directory {step.cwd} does not exist")
        plan.append(item)
    return plan


def terminal_environment(env: dict[str, str], stream: Any) -> None:
    """When orchestrate's console is a terminal, a step's output goes through a pipe, so
    pytest, ruff and friends would drop their colour and wrap at 80 columns: tell them the
    terminal's width and to keep colour (FORCE_COLOR, CLICOLOR_FORCE), unless NO_COLOR is set.
    Variables the user set are kept as they are."""
    try:
        if not stream.isatty():
            return
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return
    if columns > 0:
        env.setdefault("COLUMNS", str(columns))
    if "NO_COLOR" not in env and env.get("TERM") != "dumb":
        env.setdefault("FORCE_COLOR", "1")
        env.setdefault("CLICOLOR_FORCE", "1")


def _base_environment(options: RunOptions, env_hooks: Iterable[EnvHook] = ()) -> dict[str, str]:
    """The environment every step starts from: orchestrate's own, with --var on top (not
    variables from the HTTP API: those fill ${NAME}s only), the terminal's width and colour
    wishes, then the hooks."""
    env = dict(os.environ)
    if not options.vars_from_http:
        env.update(options.variables)
    terminal_environment(env, sys.stderr if options.json_output else sys.stdout)
    for hook in env_hooks:
        hook(env, options)
    return env


StepGate = Callable[[Step, RunOptions], "str | None"]


EnvHook = Callable[[dict[str, str], RunOptions], None]


# fields a step's entry gets when it starts, is skipped or is re-used ("start", "skip", "reuse")
EntryFields = Callable[[Step, str], "dict[str, Any]"]


# an earlier run's result a step may take over instead of running: (that run's id, its entry)
StepReuse = Callable[[Step, RunOptions], "tuple[str, dict[str, Any]] | None"]


@dataclass
class RunWiring:
    """Everything a run consults beyond its workflow, settings and options, built in one place
    (the CLI's run_wiring): gates that may skip a step (ORCHESTRATE_SKIP, when.changed), hooks
    that shape the environment every step starts from, and the sinks that show and report the
    run (the console, the GitHub step summary)."""

    gates: list[StepGate] = field(default_factory=list)
    env_hooks: list[EnvHook] = field(default_factory=list)
    sinks: list[RunSink] = field(default_factory=list)
    entry_fields: list[EntryFields] = field(default_factory=list)  # what step entries also record
    reuse: list[StepReuse] = field(default_factory=list)  # results a step may take over (resume)


class _Sinks:
    """The sinks of one run behind one lock: events from parallel steps never interleave."""

    def __init__(self, sinks: Sequence[RunSink]) -> None:
        self.sinks = list(sinks)
        self.lock = _thread.RLock()

    def emit(self, event: str, *args: Any) -> None:
        with self.lock:
            for sink in self.sinks:
                getattr(sink, event)(*args)


def default_jobs(settings: Settings) -> int:
    return settings.jobs or os.cpu_count() or 1


def interpolation_values(options: RunOptions) -> dict[str, str]:
    """What ${NAME} reads: the step environment, and every variable given to the run."""
    return {**_base_environment(options), **options.variables}


def read_http_variables(stream: Any) -> dict[str, str]:
    """`run --vars-stdin`: the JSON object of variables the HTTP server passes on stdin."""
    data = stream.read(MAX_HTTP_VARS_BYTES + 1)
    problem = "more than 2 MiB" if len(data) > MAX_HTTP_VARS_BYTES else None
    variables: Any = None
    if problem is None:
        try:
            variables = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            problem = "not valid JSON"
    if problem is None and not (
        isinstance(variables, dict)
        and all(
            isinstance(k, str) and _VAR_NAME_RE.match(k) and isinstance(v, str) and "\x00" not in v
            for k, v in variables.items()
        )
    ):
        problem = "not an object of variable names to strings"
    if problem is not None or not isinstance(variables, dict):
        raise UsageError(
            f'--vars-stdin: stdin is {problem}; it takes what orchestrate serve passes ({{"NAME": "value"}})'
        )
    return variables


class Engine:
    """Runs one workflow: a scheduler over the step graph. A step starts once every step it
    depends on has finished, at most `jobs` at a time, in step order among those ready. Each
    event (step started, skipped, finished; run started, finished) goes to the recorder and to
    every sink. When only one step can run (a chain, or --jobs 1), it runs in this thread: the
    sequential case is the same code, with no thread to pay for."""

    def __init__(
        self,
        workflow: Workflow,
        settings: Settings,
        root: Path,
        store: RunStore,
        options: RunOptions,
        wiring: RunWiring | None = None,
    ) -> None:
        self.workflow = workflow
        self.settings = settings
        self.root = root
        self.store = store
        self.options = options
        self.wiring = wiring or RunWiring()
        self.sinks = _Sinks(self.wiring.sinks)
        self.masker = Masker(workflow.secrets)
        self.testcases: dict[int, list[TestCase]] = {}
        self.graph = StepGraph(workflow.steps)
        self.jobs = max(1, options.jobs or default_jobs(settings))
        self.names = [step.name for step in workflow.steps]
        self.internal_error: str | None = None  # the first bug a built-in runner raised

    def _new_record(self, run_id: str, trigger: dict[str, Any]) -> dict[str, Any]:
        total = len(self.workflow.steps)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "workflow": self.workflow.name,
            "status": "running",
            "current": None,
            "running": [],
            "started_at": utc_now(),
            "finished_at": None,
            "duration_s": None,
            "exit_code": None,
            "message": "",
            "pid": os.getpid(),
            "pid_start": pid_start_time(os.getpid()),
            "host": _hostname(),
            "trigger": trigger,
            "workflow_file": self.workflow.display_path,
            "workflow_sha256": self.workflow.sha256,
            "options": {
                "only": self.options.only,
                "skip": self.options.skip,
                "keep_going": self.options.keep_going,
                "jobs": self.jobs,
                "shard": "%d/%d" % self.options.shard if self.options.shard else None,
            },
            "log": [
                _pending_entry(s, f"{self.store.runs_dir.name}/{run_id}/{step_log_name(s, total)}")
                for s in self.workflow.steps
            ],
            "junit": f"{self.store.runs_dir.name}/{run_id}/junit.xml",
            **({"resumed_from": self.options.resume_of["run_id"]} if self.options.resume_of else {}),
        }

    def start(self, trigger: dict[str, Any]) -> RunRecorder:
        self.store.ensure_dir()
        if self.options.run_id:
            run_id = check_run_id(self.options.run_id)
            record = self._new_record(run_id, trigger)
            try:
                existing = self.store.load(run_id)
            except UsageError:
                existing = None
            if existing is not None:
                if existing.get("status") != "pending":
                    raise UsageError(f"run {run_id} already exists with status {existing.get('status')}")
                record["trigger"] = {
                    **existing.get("trigger", {}),
                    **trigger,
                    "source": existing.get("trigger", {}).get("source", trigger.get("source")),
                }
                record["started_at"] = utc_now()
                self.store.write_snapshot(record)
            else:
                self.store.create(record)
        else:
            for _ in range(20):
                run_id = new_run_id()
                record = self._new_record(run_id, trigger)
                try:
                    self.store.create(record)
                    break
                except FileExistsError:
                    continue
            else:
                raise StoreError(f"could not allocate a unique run id in {self.store.runs_dir}")
        make_runs_dirs(self.store.run_dir(run_id), self.store.runs_dir)  # a planted link is refused
        return RunRecorder(self.store, record)

    def run(self, trigger: dict[str, Any]) -> tuple[dict[str, Any], int]:
        # a bad --only/--skip is a usage error: reported before a record exists (nothing ran)
        excluded = select_steps(self.workflow, self.options)
        recorder = self.start(trigger)
        record = recorder.record
        started = time.monotonic()
        base_env = _base_environment(self.options, self.wiring.env_hooks)
        self.sinks.emit("run_started", self.workflow, record, self.masker)
        with SignalGuard() as guard:
            guard.announce = self._announce
            scheduler = _Scheduler(self, recorder, guard, excluded, base_env)
            try:
                interrupted, failed = scheduler.run()
            except StoreError as exc:
                self._record_store_failure(recorder, exc, started)
                raise
            exit_code = self._finish_run(recorder, interrupted, failed, started)
        WATCHDOG.flush()
        self.sinks.emit("run_finished", self.workflow, record)
        return record, exit_code

    def _announce(self, text: str) -> None:
        """Said at once, on stderr, when a signal stops a step (the grace period may follow)."""
        try:
            sys.stderr.write(f"orchestrate: {self.masker.mask(text)}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _finish_run(
        self, recorder: RunRecorder, interrupted: RunInterrupted | None, failed: list[str], started: float
    ) -> int:
        record = recorder.record
        record["current"] = None
        record["running"] = []
        record["finished_at"] = utc_now()
        record["duration_s"] = round(time.monotonic() - started, 3)
        if interrupted is not None:
            record["status"] = "failed"
            record["interrupted"] = True
            name = interrupted.args[0]
            record["message"] = f"interrupted by {name}" + (" (Ctrl-C)" if interrupted.signum == signal.SIGINT else "")
            exit_code = EXIT_SIGINT if interrupted.signum == signal.SIGINT else EXIT_SIGTERM
        elif self.internal_error is not None:
            record["status"] = "failed"
            record["message"] = self.internal_error
            record["internal_error"] = True
            exit_code = EXIT_INTERNAL
        elif failed:
            record["status"] = "failed"
            record["message"] = f"failed: {', '.join(failed)}"
            exit_code = EXIT_STEP_FAILED
        else:
            record["status"] = "completed"
            exit_code = EXIT_OK
        record["exit_code"] = exit_code
        self._write_reports(record)
        recorder.finish()
        return exit_code

    def _record_store_failure(self, recorder: RunRecorder, exc: StoreError, started: float) -> None:
        """Best effort after runs/ stopped taking writes: mark the run failed and try once to
        save the record and report. When that fails too, the last whole snapshot stays on
        disk, and status/runs report the run as interrupted once this process is gone."""
        record = recorder.record
        for entry in record["log"]:
            if entry.get("status") in ("running", "pending"):
                entry.update(
                    status="failed" if entry["status"] == "running" else "skipped", message=f"run stopped: {exc}"
                )
        record.update(
            status="failed",
            current=None,
            running=[],
            finished_at=utc_now(),
            exit_code=EXIT_INTERNAL,
            duration_s=round(time.monotonic() - started, 3),
            message=f"run stopped: {exc}",
        )
        for attempt in (lambda: self._write_reports(record), recorder.finish):
            try:
                attempt()
            except (OrchestrateError, OSError):
                pass  # the same disk trouble again: the one line the CLI prints says it all

    def _write_reports(self, record: dict[str, Any]) -> None:
        xml = build_junit_xml(record, self.testcases, shard=self.options.shard)
        path = self.store.junit_path(record["run_id"])
        try:
            write_atomic(path, xml)
        except OSError as exc:
            raise StoreError(f"cannot write the JUnit report: {exc.strerror or exc}") from None
        if self.options.junit_xml is not None:
            try:
                write_report_copy(self.options.junit_xml, xml)
            except OSError as exc:
                import errno

                why = " (a FIFO nobody reads)" if exc.errno == errno.ENXIO else ""
                raise StoreError(
                    f"cannot write the JUnit report to {self.options.junit_xml}: {exc.strerror or exc}{why}"
                ) from None

    def previous_entries(self, step: Step, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries a runner may read as "the run so far": those of the steps this one
        depends on, transitively, in step order (in a chain, every step above it)."""
        if not self.graph.parallel:
            # the entries as they are: copying each of them made step k cost O(k) (cProfile)
            return log[: step.index]
        return [log[i] for i in self.graph.ancestor_indices(step.index)]

    def run_step(
        self,
        step: Step,
        entry: dict[str, Any],
        recorder: RunRecorder,
        guard: SignalGuard,
        base_env: dict[str, str],
        inline: bool,
    ) -> dict[str, Any]:
        record = recorder.record
        runner = runner_for(step)
        ctx = self._step_context(step, record, guard, base_env)
        log_path = self.store.run_dir(record["run_id"]) / step_log_name(step, len(self.workflow.steps))
        entry.update(status="running", started_at=utc_now())
        recorder.step_started(step.index, entry)
        self.sinks.emit("step_started", step, entry)
        started = time.monotonic()
        console = self._console()
        sink = OutputSink(
            log_path,
            self.masker,
            console.step_output_writer(step) if console is not None else None,
            # while a step runs in this thread, its output loop drives the live lines
            on_idle=(lambda: self.sinks.emit("tick")) if inline else None,
        )
        ctx.sink = sink
        attempts = 0
        result = StepResult("failed", "did not run")
        try:
            while True:
                attempts += 1
                result = self._attempt(step, runner, ctx, attempts)
                if result.status != "failed" or attempts > step.retries:
                    break
                guard.sleep(step.retry_delay)
        except RunInterrupted as exc:
            result = StepResult("failed", f"interrupted by {exc.args[0]}")
            entry["leftover_processes"] = ctx.leftover_processes
            self._finish_entry(entry, result, attempts, started, sink, step, recorder, log_path)
            raise
        except StoreError:
            # runs/ became unwritable mid-step (disk full): not the step's failure and not a
            # runner bug; Engine.run records what it still can and the CLI exits 3
            try:
                sink.close()
            except StoreError:
                pass
            raise
        except Exception as exc:
            result = self._runner_bug(step, exc, sink)
        entry["leftover_processes"] = ctx.leftover_processes
        self._finish_entry(entry, result, attempts, started, sink, step, recorder, log_path)
        return entry

    def _step_context(
        self, step: Step, record: dict[str, Any], guard: SignalGuard, base_env: dict[str, str]
    ) -> StepContext:
        """What a runner gets for this step: its resolved definition, paths, environment, the
        entries of the steps before it, the run's signal guard and --debug writer."""
        ctx = make_context(
            self.workflow,
            step,
            self.settings,
            self.root,
            self.store,
            record["run_id"],
            self.options,
            self.masker,
            self.previous_entries(step, record["log"]),
            record["trigger"],
            base_env,
        )
        ctx.guard = guard
        ctx.debug_write = self._debug_writer()
        return ctx

    def _attempt(self, step: Step, runner: Runner, ctx: StepContext, attempts: int) -> StepResult:
        """One attempt of a step: the runner's result, made a failure when the attempt ran out of
        time, with the test reports the attempt wrote."""
        if attempts > 1:
            ctx.emit(f"orchestrate: attempt {attempts} of {step.retries + 1} (after {step.retry_delay:g}s)")
        ctx.last_process = None
        # `timeout` is the budget of the whole attempt: every process it starts (a venv
        # build, pip, the script) and every wait shares this one deadline
        ctx.deadline = time.monotonic() + step.timeout if step.timeout else None
        ctx.timed_out = False
        ctx.env[STEP_TOKEN_ENV] = new_step_token()  # finds this attempt's processes only
        # `reports`: what the globs match now is from before the attempt and not read
        reports_before = report_snapshot(step, self.root, self.store.runs_dir) if step.reports else None
        try:
            if step.cwd and not ctx.cwd.is_dir():
                raise StepFailure(f"working directory {step.cwd} does not exist")
            result = runner.execute(ctx)
        except StepFailure as exc:
            result = StepResult("failed", str(exc))
            if ctx.last_process is not None and ctx.last_process.exit_code is not None:
                result.exit_code = ctx.last_process.exit_code
        if ctx.timed_out:
            result = StepResult(
                "failed",
                f"timed out after {step.timeout:g} s",
                exit_code=None,
                extra=result.extra,
                testcases=result.testcases,
            )
        if reports_before is not None:
            cases, _files, problems = read_step_reports(
                step, self.root, self.store.runs_dir, reports_before, self.masker
            )
            result = apply_step_reports(result, cases, problems)
        return result

    def _runner_bug(self, step: Step, exc: Exception, sink: OutputSink) -> StepResult:
        """A bug in a built-in runner (plugins run in a child interpreter: their exceptions are
        step failures) is not a failed check: the run goes on to its report and cleanup steps,
        and ends with exit 3, not 1, so CI does not read it as "tests failed"."""
        import traceback

        trace = self.masker.mask(traceback.format_exc().rstrip())
        sink.line(trace)
        sys.stderr.write(trace + "\n")
        sys.stderr.flush()
        message = self.masker.mask(f"internal error in the {step.type} runner: {type(exc).__name__}: {exc}")
        if self.internal_error is None:
            self.internal_error = message
        return StepResult("failed", message)

    def _console(self) -> Console | None:
        return next((s for s in self.wiring.sinks if isinstance(s, Console)), None)

    def _debug_writer(self) -> Callable[[str], None] | None:
        if not self.options.debug:
            return None
        return lambda text: self.sinks.emit("debug", text)

    def _finish_entry(
        self,
        entry: dict[str, Any],
        result: StepResult,
        attempts: int,
        started: float,
        sink: OutputSink,
        step: Step,
        recorder: RunRecorder,
        log_path: Path,
    ) -> None:
        sink.close()
        entry.update(result.extra)
        if isinstance(entry.get("failed_tests"), list):  # test names a step reported: its text
            entry["failed_tests"] = [
                self.masker.mask_readable(t) if isinstance(t, str) else t for t in entry["failed_tests"]
            ]
        entry.update(
            status=result.status,
            finished_at=utc_now(),
            duration_s=round(time.monotonic() - started, 3),
            exit_code=result.exit_code,
            attempts=attempts,
            message=self.masker.mask_readable(result.message),
            output_tail=sink.tail_text(),
        )
        if result.status == "failed" and step.continue_on_error:
            entry["allowed_failure"] = True
        if result.testcases:
            self.testcases[step.index] = result.testcases
            entry["tests_file"] = self._save_testcases(recorder.record["run_id"], step, result.testcases)
        recorder.step_finished(step.index, entry)
        self.sinks.emit("step_finished", step, entry, log_path)

    def _save_testcases(self, run_id: str, step: Step, cases: Sequence[TestCase]) -> str:
        """runs/<run_id>/NN-step.tests.json: the step's test cases (masked where they were read,
        bounded), so a later run that re-uses the step can rebuild its part of the report."""
        name = step_log_name(step, len(self.workflow.steps)).removesuffix(".log") + ".tests.json"
        kept = [
            dict(case.as_dict(), message=case.message[:MAX_TEST_TEXT], text=case.text[:MAX_TEST_TEXT])
            for case in cases[:MAX_STEP_TESTCASES]
        ]
        data = json.dumps({"version": 1, "step": step.name, "cases": kept}, ensure_ascii=False)
        try:
            write_atomic(
                self.store.run_dir(run_id) / name, self.masker.mask(data).encode("utf-8", "surrogateescape") + b"\n"
            )
        except OSError as exc:
            raise StoreError(f"cannot write {name}: {exc.strerror or exc}") from None
        return f"{self.store.runs_dir.name}/{run_id}/{name}"

    def skip_step(self, step: Step, recorder: RunRecorder, reason: str) -> None:
        entry = dict(recorder.record["log"][step.index])
        entry.update(self._entry_fields(step, "skip"))
        entry.update(status="skipped", message=reason)
        recorder.step_finished(step.index, entry)
        self.sinks.emit("step_skipped", step, entry)

    def _entry_fields(self, step: Step, event: str) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for hook in self.wiring.entry_fields:
            fields.update(hook(step, event))
        return fields

    def find_reuse(self, step: Step) -> tuple[str, dict[str, Any]] | None:
        for hook in self.wiring.reuse:
            found = hook(step, self.options)
            if found is not None:
                return found
        return None

    # what a re-used step carries over from the entry it takes over
    REUSED_KEYS = (
        "exit_code",
        "output_tail",
        "tests",
        "failures",
        "failed_tests",
        "failed_test_details",
        "specs",
        "spec_durations",
        "artifacts",
        "shard",
        "batches",
    )

    def reuse_step(self, step: Step, recorder: RunRecorder, from_run: str, earlier: Mapping[str, Any]) -> None:
        """The step passes with the result it had in run `from_run`: its log copied into this
        run's folder, its test cases into this run's report."""
        run_id = recorder.record["run_id"]
        entry = dict(recorder.record["log"][step.index])
        source = self._run_file(earlier.get("log_file"))
        if source is not None and source.is_file() and not source.is_symlink():
            try:
                copy_into_runs(
                    source,
                    self.store.run_dir(run_id) / step_log_name(step, len(self.workflow.steps)),
                    self.store.runs_dir,
                )
            except OSError as exc:
                raise StoreError(
                    f"cannot copy the log of {step.name!r} from run {from_run}: {exc.strerror or exc}"
                ) from None
        entry.update({key: earlier[key] for key in self.REUSED_KEYS if key in earlier})
        entry.update(self._entry_fields(step, "reuse"))
        now = utc_now()
        entry.update(
            status="passed",
            started_at=now,
            finished_at=now,
            duration_s=0.0,
            attempts=0,
            message=f"re-used from run {from_run} (inputs unchanged)",
            reused_from=from_run,
        )
        cases = self._load_testcases(earlier.get("tests_file"))
        if cases:
            self.testcases[step.index] = cases
            entry["tests_file"] = self._save_testcases(run_id, step, cases)
        recorder.step_finished(step.index, entry)
        self.sinks.emit("step_reused", step, entry)

    def _run_file(self, recorded: Any) -> Path | None:
        """A file a record names as runs/<run_id>/<name> (log_file, tests_file), under this
        store; None for anything else (a record is data: it never points outside runs/)."""
        if not isinstance(recorded, str):
            return None
        parts = recorded.split("/")
        if len(parts) != 3 or not RUN_ID_RE.match(parts[1]) or not _PLAIN_NAME_RE.match(parts[2]):
            return None
        return self.store.runs_dir / parts[1] / parts[2]

    def _load_testcases(self, recorded: Any) -> list[TestCase]:
        path = self._run_file(recorded)
        if path is None:
            return []
        try:
            document = json.loads(read_report_file(path))
        except (OSError, ValueError):  # ReportError is a ValueError
            return []
        cases = document.get("cases") if isinstance(document, dict) else None
        kept = []
        for item in (cases if isinstance(cases, list) else [])[:MAX_STEP_TESTCASES]:
            if not isinstance(item, dict):
                continue
            kept.append(
                TestCase(
                    name=str(item.get("name", "")),
                    classname=str(item.get("classname", "")),
                    time=_seconds(str(item.get("time", 0))),
                    status=item["status"] if item.get("status") in ("passed", "failed", "skipped") else "passed",
                    message=str(item.get("message", ""))[:MAX_TEST_TEXT],
                    text=str(item.get("text", ""))[:MAX_TEST_TEXT],
                    file=str(item.get("file", "")),
                )
            )
        return kept


def outcome_of(entry: Mapping[str, Any]) -> str:
    status = entry.get("status")
    if status == "failed":
        return ALLOWED if entry.get("allowed_failure") else FAILED
    return PASSED if status == "passed" else SKIPPED


class _Scheduler:
    """One run's walk over the step graph (see Engine). Readiness is kept incrementally (a count
    of unfinished dependencies per step and a heap of ready steps), so a 1,000-step chain costs
    O(log N) per step here, not a scan of every waiting step."""

    def __init__(
        self,
        engine: Engine,
        recorder: RunRecorder,
        guard: SignalGuard,
        excluded: dict[int, str],
        base_env: dict[str, str],
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self.guard = guard
        self.excluded = excluded
        self.base_env = base_env
        self.steps = engine.workflow.steps
        deps = engine.graph.deps
        self.outcomes: list[str | None] = [None] * len(self.steps)
        self.unfinished = [len(d) for d in deps]  # dependencies not finished yet, per step
        self.users: list[list[int]] = [[] for _ in deps]
        for index, step_deps in enumerate(deps):
            for dep in step_deps:
                self.users[dep].append(index)
        self.ready = [i for i, n in enumerate(self.unfinished) if n == 0]  # a heap; sorted is one
        self.running: dict[int, Any] = {}  # index -> its thread
        self.failed: list[str] = []
        self.interrupted: RunInterrupted | None = None
        self.events: Any = None  # queue of (index, entry | exception) from the threads
        self.problem: BaseException | None = None

    def run(self) -> tuple[RunInterrupted | None, list[str]]:
        jobs = self.engine.jobs
        while True:
            startable = self._startable()
            if not startable and not self.running:
                break
            if startable and not self.running and (len(startable) == 1 or jobs == 1):
                self.ready = startable[1:]
                self._run_inline(startable[0])
                continue
            room = max(0, jobs - len(self.running))
            self.ready = startable[room:]
            for index in startable[:room]:
                self._start_thread(index)
            self._wait_for_one()
            if self.problem is not None:
                self._stop_others()
                raise self.problem
        return self.interrupted, self.failed

    def _startable(self) -> list[int]:
        """The ready steps that may run, in step order. A ready step found skipped is recorded
        at once, which may make the steps after it ready: they are judged in the same pass."""
        import heapq

        startable = []
        while self.ready:
            index = heapq.heappop(self.ready)
            reason, blocks = self._skip_reason(index)
            if reason is None:
                # an earlier run's result is taken over before the gates judge the step: a
                # re-used step carries its log and test cases, a gated one would not
                reused = self.engine.find_reuse(self.steps[index])
                if reused is not None:
                    self.engine.reuse_step(self.steps[index], self.recorder, *reused)
                    self._done(index, PASSED)
                    continue
                reason = self._gate_reason(index)
            if reason is None:
                startable.append(index)
                continue
            self.engine.skip_step(self.steps[index], self.recorder, reason)
            self._done(index, BLOCKED if blocks else SKIPPED)
        startable.sort()
        return startable

    def _done(self, index: int, outcome: str) -> None:
        import heapq

        self.outcomes[index] = outcome
        if outcome == FAILED:
            self.failed.append(self.steps[index].name)
        for user in self.users[index]:
            self.unfinished[user] -= 1
            if not self.unfinished[user]:
                heapq.heappush(self.ready, user)

    def _skip_reason(self, index: int) -> tuple[str | None, bool]:
        reason = self.excluded.get(index)
        if reason is not None:
            return reason, False
        if self.interrupted is None and self.guard.signum is not None:
            self.interrupted = RunInterrupted(self.guard.signum)
        if self.interrupted is not None:
            return f"run interrupted by {self.interrupted.args[0]}", True
        step = self.steps[index]
        return status_gate(
            step, self.engine.graph, self.outcomes, self.failed, self.engine.options.keep_going, self.engine.names
        )

    def _gate_reason(self, index: int) -> str | None:
        """What the run's gates (RunWiring.gates) say: why the step is skipped, or None."""
        for gate in self.engine.wiring.gates:
            reason = gate(self.steps[index], self.engine.options)
            if reason:
                return reason
        return None

    def _entry(self, index: int) -> dict[str, Any]:
        """A copy of the step's entry with what RunWiring.entry_fields add when it starts, worked
        out here in the scheduler's thread, in step order: steps started together still start
        in that order (the first to be ready first)."""
        entry = dict(self.recorder.record["log"][index])
        entry.update(self.engine._entry_fields(self.steps[index], "start"))
        return entry

    def _run_inline(self, index: int) -> None:
        entry = self._entry(index)
        try:
            entry = self.engine.run_step(
                self.steps[index], entry, self.recorder, self.guard, self.base_env, inline=True
            )
        except RunInterrupted as exc:
            self.interrupted = self.interrupted or exc
            entry = self.recorder.record["log"][index]
        self._finished(index, entry)

    def _start_thread(self, index: int) -> None:
        import queue
        import threading

        if self.events is None:
            self.events = queue.SimpleQueue()
        entry = self._entry(index)
        thread = threading.Thread(
            target=self._thread_main, args=(index, entry), name=f"orchestrate-step-{index + 1}", daemon=True
        )
        self.running[index] = thread
        thread.start()

    def _thread_main(self, index: int, entry: dict[str, Any]) -> None:
        try:
            entry = self.engine.run_step(
                self.steps[index], entry, self.recorder, self.guard, self.base_env, inline=False
            )
            self.events.put((index, entry))
        except BaseException as exc:  # handed to the scheduler's thread, which decides
            self.events.put((index, exc))

    def _wait_for_one(self) -> None:
        """Until a running step finishes; the live lines tick meanwhile."""
        import queue

        while True:
            try:
                index, result = self.events.get(timeout=0.25)
                break
            except queue.Empty:
                self.engine.sinks.emit("tick")
        self.running.pop(index).join()
        if isinstance(result, RunInterrupted):
            self.interrupted = self.interrupted or result
            result = self.recorder.record["log"][index]
        elif isinstance(result, BaseException):
            self.problem = self.problem or result
            return
        self._finished(index, result)

    def _finished(self, index: int, entry: dict[str, Any]) -> None:
        self._done(index, outcome_of(entry))
        if self.interrupted is None and self.guard.signum is not None:
            self.interrupted = RunInterrupted(self.guard.signum)

    def _stop_others(self) -> None:
        """runs/ failed under one step: end the others (as SIGTERM would) and wait for them."""
        self.guard.interrupt(signal.SIGTERM)
        for thread in list(self.running.values()):
            thread.join()
        self.running.clear()


def execute_run(
    workflow: Workflow,
    settings: Settings,
    root: Path,
    store: RunStore,
    options: RunOptions,
    wiring: RunWiring | None = None,
    trigger: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run a workflow and prune old runs; returns the final record and the exit code. `wiring`
    says what the run consults and who hears of it (see RunWiring): nothing else is."""
    engine = Engine(workflow, settings, root, store, options, wiring)
    record, code = engine.run(trigger if trigger is not None else {"source": "api"})
    if settings.keep_runs:
        try:
            if store.may_hold_more_than(settings.keep_runs):
                store.prune(settings.keep_runs, batch=PRUNE_BATCH, budget_s=PRUNE_BUDGET_S)
        except OrchestrateError as exc:  # the run is recorded; say why old ones stay
            sys.stderr.write(f"orchestrate: warning: could not prune old runs: {exc}\n")
    try:
        StepIndex(store).record_run(record)
    except (OrchestrateError, OSError) as exc:  # the index is rebuilt from the records when needed
        sys.stderr.write(f"orchestrate: warning: could not update {store.runs_dir / INDEX_DIR}: {exc}\n")
    return record, code


# === 11.1. What is pushed, and checking exactly that ===
#
# A pre-push hook runs in the developer's working tree, which may hold fixes that are not in
# the pushed commit: the checks pass and the remote gets the broken commit. Before a run the
# hook names the files where the two differ; with "pre_push": {"checkout": "pushed"} (or
# `run --isolated`) the workflow runs in a temporary `git worktree` of the pushed commit
# under runs/.worktrees/<run_id>, removed afterwards. Each worktree has an owner file
# (<run_id>.json: pid, start time, shared links) written before it exists, so one left by a
# killed run is found and removed at the next isolated run.


WORKTREES_DIR = ".worktrees"


MAX_NAMED_FILES = 5  # a one-line warning names this many files, then "and N more"


def _step_paths(step: Step, settings: Settings) -> list[str]:
    """The folders a step reads by its own keys (cwd, a script's or requirements file's
    folder, a Cypress project), relative to the project root; the root itself is left out."""
    folders = []
    if step.cwd:
        folders.append(step.cwd)
    for key in ("script", "requirements"):
        value = step.config.get(key)
        if isinstance(value, str):
            folders.append(os.path.dirname(value))
    project = step.config.get("project") if step.type == "cypress" else None
    if isinstance(project, str):
        try:
            folders.append(resolve_cypress_project(project, settings.cypress_modules, settings.root))
        except ValueError:
            pass
    cleaned = [os.path.normpath(folder).replace(os.sep, "/") for folder in folders if folder]
    return [folder for folder in cleaned if folder not in (".", "") and not folder.startswith("../")]


def untracked_file_is_used(path: str, workflow: Workflow, settings: Settings, prefix: str = "") -> bool:
    """Whether an untracked file (repository-relative) is under a folder a step uses or
    matches a `when.changed` pattern: a file the checks may read that the push does not carry."""
    for step in workflow.steps:
        if any(path_matches(path, pattern) for pattern in _as_patterns(step.when.get("changed"))):
            return True
        if any(path.startswith(f"{prefix}{folder}/") for folder in _step_paths(step, settings)):
            return True
    return False


def _short_list(items: Sequence[str], limit: int = MAX_NAMED_FILES) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def pushed_commit(root: Path, push: PushInfo | None) -> tuple[str, str]:
    """(commit, what it is) that is checked: the first pushed branch's commit, else HEAD."""
    if push is not None and push.updates:
        ref = push.updates[0]
        return ref.local_oid, ref.local_ref.removeprefix("refs/heads/")
    try:
        return run_git(["rev-parse", "--verify", "HEAD^{commit}"], root).strip(), "HEAD"
    except GitError:
        raise UsageError(
            f"--isolated: {root} is not in a git repository with a commit; it checks a commit in its own worktree"
        ) from None


def working_tree_difference(
    root: Path, push: PushInfo, workflow: Workflow, settings: Settings, runs_dir: Path, status: GitStatus | None = None
) -> str | None:
    """One line saying how the working tree differs from the pushed commit, or None: the
    pushed branch is not HEAD, tracked files are modified or staged, untracked files lie
    where the workflow looks. Named files are repository-relative. With the run's `git
    status` (untracked files listed), git is run again only when the pushed commit is not HEAD."""
    updates = push.updates
    if not updates:
        return None
    commit, name = updates[0].local_oid, updates[0].local_ref.removeprefix("refs/heads/")
    parts = []
    try:
        if status is None or status.untracked is None:
            status = read_git_status(start_git_status(root, untracked=True), untracked=True)
        if not status.in_repository:
            return None
        head = status.commit or ""
        prefix = repository_prefix(root)
        if prefix is None:
            prefix = run_git(["rev-parse", "--show-prefix"], root).strip()
        if head and head != commit:
            parts.append(f"the pushed {name} ({commit[:12]}) is not the checked-out HEAD ({head[:12]})")
        if head == commit:  # the working tree against HEAD: what `git status` said
            modified = sorted(set(status.changed))
        else:
            modified = _git_lines(["diff", "--name-only", "--no-renames", "-z", commit, "--"], root)
        untracked = list(status.untracked or ())
    except GitError:
        return None  # git cannot tell; the run goes on as before
    runs_prefix = _display_path(runs_dir, root).rstrip("/") + "/"
    untracked = [
        path
        for path in untracked
        if not path.startswith(prefix + runs_prefix) and untracked_file_is_used(path, workflow, settings, prefix)
    ]
    if modified:
        parts.append(f"modified or staged: {_short_list(modified)}")
    if untracked:
        parts.append(f"untracked: {_short_list(untracked)}")
    if not parts:
        return None
    return (
        f"pre-push: the working tree is not what is pushed ({'; '.join(parts)}); the checks see "
        'the working tree: commit or stash first, or set "pre_push": {"checkout": "pushed"} in '
        "orchestrate.json to check the pushed commit"
    )


def _worktrees_dir(runs_dir: Path) -> Path:
    return runs_dir / WORKTREES_DIR


def _remove_worktree(repo: Path, path: Path, shared_links: Iterable[Path]) -> None:
    """Remove a worktree orchestrate made, never what a shared link points to."""
    import shutil

    for link in shared_links:
        if link.is_symlink():
            _unlink_quietly(link)
    if path.exists():
        run_git(["worktree", "remove", "--force", "--force", str(path)], repo, check=False)
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # rmtree never follows symlinks
    run_git(["worktree", "prune"], repo, check=False)


def clean_stale_worktrees(repo: Path, runs_dir: Path) -> list[Path]:
    """Remove worktrees under runs/.worktrees whose owning orchestrate is gone (killed, or
    a crash); returns them. One whose owner still runs (a concurrent push) is left alone."""
    folder = _worktrees_dir(runs_dir)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.endswith(".json") or not _LOOSE_RUN_ID_RE.match(name[: -len(".json")]):
            continue  # only <run_id>.json: never "..json" or a name that is not a folder of ours
        owner_file = folder / name
        try:
            owner = json.loads(owner_file.read_text(encoding="utf-8"))
            pid, start = int(owner.get("pid", 0)), owner.get("start")
            links = [Path(str(link)) for link in owner.get("links", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            pid, start, links = 0, None, []
        if process_alive(pid, start):
            continue
        path = folder / name[: -len(".json")]
        _remove_worktree(repo, path, [link for link in links if folder in link.parents])
        _unlink_quietly(owner_file)
        removed.append(path)
    return removed


def add_pushed_worktree(repo: Path, runs_dir: Path, name: str, commit: str, share: Sequence[str]) -> PushedWorktree:
    """`git worktree add --detach` of `commit` at runs/.worktrees/NAME, with each `share`
    path of the project linked into it (a venv, node_modules: untracked things steps need)."""
    folder = _worktrees_dir(runs_dir)
    folder.mkdir(mode=RUNS_DIR_MODE, parents=True, exist_ok=True)
    path = folder / name
    top = Path(run_git(["rev-parse", "--show-toplevel"], repo).strip())
    prefix = run_git(["rev-parse", "--show-prefix"], repo).strip()
    root = path / prefix if prefix else path
    links = [root / item for item in share]
    owner_file = folder / f"{name}.json"
    # the owner file first: a kill during `worktree add` still leaves something to clean up
    owner_file.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "start": pid_start_time(os.getpid()),
                "commit": commit,
                "repository": str(top),
                "links": [str(link) for link in links],
            }
        )
        + "\n",
        encoding="utf-8",
    )
    checkout = PushedWorktree(repo=repo, path=path, root=root, commit=commit, owner_file=owner_file)
    try:
        # no hooks: a post-checkout hook has no business in a throw-away checkout
        run_git(["-c", "core.hooksPath=/dev/null", "worktree", "add", "--detach", "--quiet", str(path), commit], repo)
        for item, link in zip(share, links, strict=True):
            target = repo / item
            if link.exists() or link.is_symlink():
                sys.stderr.write(
                    f"orchestrate: warning: pre_push.share {item!r}: the pushed commit has its own; not linked\n"
                )
            elif not link.parent.resolve().is_relative_to(path.resolve()):
                # a folder on the way is a symlink the commit carries: never link outside
                sys.stderr.write(
                    f"orchestrate: warning: pre_push.share {item!r}: leads out of the "
                    "worktree through a symlink in the commit; not linked\n"
                )
            elif target.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=target.is_dir())
                checkout.shared.append(item)
            else:
                sys.stderr.write(
                    f"orchestrate: warning: pre_push.share {item!r}: no such file or folder in {repo}; not linked\n"
                )
    except BaseException:
        remove_pushed_worktree(checkout)
        raise
    return checkout


def remove_pushed_worktree(checkout: PushedWorktree) -> None:
    _remove_worktree(checkout.repo, checkout.path, [checkout.root / item for item in checkout.shared])
    _unlink_quietly(checkout.owner_file)


def wants_pushed_checkout(settings: Settings, options: RunOptions) -> bool:
    """`run --isolated`, or a pre-push run with "pre_push": {"checkout": "pushed"}."""
    return options.isolated or (options.git_hook == "pre-push" and settings.pre_push_checkout == "pushed")


def enter_pushed_checkout(
    paths: Any, workflow: Workflow, settings: Settings, options: RunOptions, human: Any
) -> tuple[PushedWorktree, Any, Settings, Workflow]:
    """Make the worktree of the commit being checked and load the workflow as that commit
    has it; returns (worktree, paths, settings, workflow) for the run. Run records stay in
    the real runs/. The caller removes the worktree (remove_pushed_worktree) in a finally."""
    state = options.git if isinstance(options.git, GitState) else None
    commit, what = pushed_commit(paths.root, state.push if state else None)
    for stale in clean_stale_worktrees(paths.root, paths.runs_dir):
        human.write(f"orchestrate: removed {_display_path(stale, paths.root)}, the worktree of a run that was killed\n")
    if not options.run_id:
        options.run_id = new_run_id()  # the worktree is named after the run
    checkout = add_pushed_worktree(paths.root, paths.runs_dir, options.run_id, commit, settings.pre_push_share)
    try:
        workflows_dir = paths.workflows_dir
        try:
            workflows_dir = checkout.root / workflows_dir.relative_to(paths.root)
        except ValueError:
            pass  # --workflows-dir outside the project: the same files either way
        isolated_paths = type(paths)(root=checkout.root, workflows_dir=workflows_dir, runs_dir=paths.runs_dir)
        if not (workflows_dir / f"{workflow.name}.json").is_file():
            raise UsageError(
                f"{workflow.display_path} is not in the commit being checked ({what} "
                f"{commit[:12]}): commit it, or run without --isolated / "
                '"pre_push": {"checkout": "pushed"}'
            )
        isolated_settings = load_settings(checkout.root)
        isolated = load_workflow(
            workflow.name, workflows_dir, _base_environment(options), isolated_settings, checkout.root
        )
        if state is not None:
            state.checkout = checkout
            state.skipped, _ = skip_env_plan(os.environ.get("ORCHESTRATE_SKIP"), isolated.steps)
        shared = f"; linked: {', '.join(checkout.shared)}" if checkout.shared else ""
        human.write(
            f"orchestrate: {workflow.name}: checking {what} at {commit[:12]} in its own worktree "
            f"{_display_path(checkout.path, paths.root)}{shared}\n"
        )
        human.flush()
    except BaseException:
        remove_pushed_worktree(checkout)
        raise
    return checkout, isolated_paths, isolated_settings, isolated


# === 11.2. Wiring into a run ===


def _read_hook_stdin() -> str:
    stream = sys.stdin
    if stream is None:
        return ""
    if stream.isatty():
        raise UsageError(
            "--git-hook pre-push reads git's ref lines from stdin, which is a "
            "terminal here; let git run the hook (git push), or compare commits "
            "with --from-ref REF [--to-ref REF]"
        )
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    return data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data


def _gated(workflow: Workflow) -> bool:
    return any(step.when.get("changed") or step.when.get("branch") for step in workflow.steps)


class RunGitCalls:
    """The git calls a run starts before it reads its workflow, so that they overlap each other
    and the parsing: `git status` (in pre-push mode with the untracked files, for the warning
    about the working tree) and, for the installed hook, the workflow's name from git config."""

    def __init__(self, root: Path, options: RunOptions) -> None:
        # untracked files too: for the warning about the working tree (pre-push), and since a
        # run's record counts them as changes (`dirty`, a step's tree state for resume)
        self.untracked = True
        self.status_call = start_git_status(root, untracked=self.untracked)
        self.config_call = (
            GitCall(["config", "--get", "orchestrate.prePushWorkflow"], root)
            if options.workflow_from_git_config
            else None
        )
        self._status: GitStatus | None = None

    def workflow_name(self, name: str) -> str:
        """`name`, unless git config's orchestrate.prePushWorkflow names another."""
        if self.config_call is None:
            return name
        try:
            configured = self.config_call.output(check=False).strip()
        except GitError:
            return name
        return configured or name

    def status(self) -> GitStatus:
        if self._status is None:
            self._status = read_git_status(self.status_call, untracked=self.untracked)
        return self._status

    def close(self) -> None:
        """Wait for the calls nobody read (the run ended before it needed them: a definition
        error), so no process or pipe is left behind in a process that goes on."""
        for call in (self.status_call, self.config_call):
            if call is not None:
                try:
                    call.output(check=False)
                except GitError:
                    pass


def prepare_git_state(
    paths: Any,
    workflow: Workflow,
    options: RunOptions,
    env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
    calls: RunGitCalls | None = None,
) -> int | None:
    """Before a run: read the push (hook mode), end a run with nothing to check (exit 0 and
    one line why), plan ORCHESTRATE_SKIP, and find the changes `when.changed` compares.

    The compared range, first found: the push's refs; --from-ref/--to-ref; pre-commit's
    PRE_COMMIT_FROM_REF/PRE_COMMIT_TO_REF; the CI system's base (pull request base, previous
    push tip). Without any, `when.changed` steps run (nothing says they may be skipped).
    """
    env = os.environ if env is None else env
    root = paths.root
    calls = calls or RunGitCalls(root, options)
    event = read_github_event(env) if env.get("GITHUB_ACTIONS") == "true" else {}
    human = sys.stderr if options.json_output else sys.stdout
    commits = None
    if options.git_hook == "pre-push":
        text = _read_hook_stdin() if stdin_text is None else stdin_text
        push = parse_push_refs(text, options.push_remote or "", options.push_url or "")
        commits = PushedCommits(root, push.updates)  # runs while git status does
    state = GitState(git=calls.status().info(root, paths.runs_dir), ci=detect_ci(env, event))
    options.git = state
    if options.git_hook == "pre-push":
        state.push = push
        if _push_has_nothing_to_check(paths, workflow, options, state, commits, calls, human):
            return EXIT_OK
    _plan_skipped_steps(state, workflow, env, human)
    state.changes = _changes_to_compare(root, workflow, options, state, env, commits)
    return None


def _push_has_nothing_to_check(
    paths: Any,
    workflow: Workflow,
    options: RunOptions,
    state: GitState,
    commits: PushedCommits | None,
    calls: RunGitCalls,
    human: Any,
) -> bool:
    """Pre-push: True (and one line why) for a push with no new commits; else warn when the
    working tree that will be checked differs from what is pushed."""
    root = paths.root
    assert state.push is not None
    reason = push_skip_reason(state.push, lambda ref: push_has_new_commits(root, ref, commits))
    if reason:
        human.write(f"orchestrate: {workflow.name}: nothing to check: {reason}\n")
        human.flush()
        return True
    settings = load_settings(root)
    if not wants_pushed_checkout(settings, options):
        difference = working_tree_difference(root, state.push, workflow, settings, paths.runs_dir, calls.status())
        if difference:
            sys.stderr.write(f"orchestrate: warning: {difference}\n")
    return False


def _plan_skipped_steps(state: GitState, workflow: Workflow, env: Mapping[str, str], human: Any) -> None:
    skip_value = env.get("ORCHESTRATE_SKIP")
    state.skipped, warnings = skip_env_plan(skip_value, workflow.steps)
    for warning in warnings:
        sys.stderr.write(f"orchestrate: warning: {warning}\n")
    if state.skipped:
        human.write(f"orchestrate: ORCHESTRATE_SKIP={skip_value}: skipping {', '.join(state.skipped)}\n")


def _changes_to_compare(
    root: Path,
    workflow: Workflow,
    options: RunOptions,
    state: GitState,
    env: Mapping[str, str],
    commits: PushedCommits | None,
) -> ChangeSet | None:
    """What `when.changed` compares, from the first source found (see prepare_git_state)."""
    branch = (state.ci or {}).get("branch") or state.git.get("branch")
    branches = (branch,) if branch else ()
    if state.push is not None:
        # the changed files only when a step's `when` reads them: a git diff less otherwise
        return push_changes(root, state.push, commits, list_files=_gated(workflow))
    if options.from_ref or options.to_ref:
        if not options.from_ref:
            raise UsageError("--to-ref needs --from-ref: the commit to compare with")
        return compare_changes(root, options.from_ref, options.to_ref or "HEAD", branches=branches)
    if env.get("PRE_COMMIT_FROM_REF") and env.get("PRE_COMMIT_TO_REF"):
        return compare_changes(
            root, env["PRE_COMMIT_FROM_REF"], env["PRE_COMMIT_TO_REF"], branches=branches, explicit=False
        )
    if _gated(workflow):
        base = (state.ci or {}).get("base")
        return (
            compare_changes(root, base, "HEAD", branches=branches, explicit=False)
            if base
            else ChangeSet(None, "nothing to compare with (no push, no --from-ref)", branches)
        )
    return state.changes


def git_gate(step: Step, options: RunOptions) -> str | None:
    """A step gate (RunWiring.gates): ORCHESTRATE_SKIP, then `when.branch` and `when.changed`."""
    state = options.git
    if not isinstance(state, GitState):
        return None
    if step.name in state.skipped:
        return state.skipped[step.name]
    if state.changes is None or not (step.when.get("changed") or step.when.get("branch")):
        return None
    return gate_reason(step.when, state.changes)


def git_step_environment(env: dict[str, str], options: RunOptions) -> None:
    """An environment hook (RunWiring.env_hooks): hook variables out,
    ORCHESTRATE_PUSH_REMOTE/FROM_REF/TO_REF in."""
    state = options.git
    if isinstance(state, GitState):
        updated = step_git_env(env, state.changes, state.push)
        env.clear()
        env.update(updated)


class GitHubStepSummary(RunSink):
    """A run sink: the Markdown summary under GitHub Actions, once the run has ended."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env

    def run_finished(self, workflow: Workflow, record: dict[str, Any]) -> None:
        try:
            append_step_summary(self.env, record)
        except OSError as exc:
            sys.stderr.write(f"orchestrate: warning: cannot append to $GITHUB_STEP_SUMMARY: {exc.strerror or exc}\n")


def build_trigger(root: Path, options: RunOptions) -> dict[str, Any]:
    """The run record's trigger for this run (see make_trigger)."""
    state = options.git if isinstance(options.git, GitState) else None
    if state is None:
        env = os.environ
        event = read_github_event(env) if env.get("GITHUB_ACTIONS") == "true" else {}
        state = GitState(git=git_info(root), ci=detect_ci(env, event))
    hook = options.git_hook or ("pre-push" if os.environ.get("PRE_COMMIT_FROM_REF") else None)
    trigger = make_trigger(state.git, state.ci, state.push, hook)
    if state.changes is not None:
        trigger["compare"] = state.changes.as_dict()
    if state.checkout is not None:
        trigger["checkout"] = {
            "commit": state.checkout.commit,
            "worktree": str(state.checkout.path),
            "shared": list(state.checkout.shared),
        }
    if options.shard:
        trigger["shard"] = "%d/%d" % options.shard
    return trigger


# === 11.3. Inputs: up to date (`sources`) and resume ===
#
# What a step's result depended on, recorded with every step so a later run can tell whether
# running it again could change anything: its definition (definition_sha256: its keys and the
# workflow's env, secrets masked), the ${NAME} values it used (values_sha256: an HMAC keyed by
# runs/.hash-key, so a short secret cannot be recovered from the record by trying values),
# and its files (tree_sha256): the content of what its `sources` globs match, or, without
# `sources`, the commit and every file that differs from it (untracked ones too). File
# contents are hashed once and then known by size, mtime, ctime and inode (runs/.index/
# hashes.json), as git's index knows them; a file changed within the last second is read
# again, since a second write in the same clock tick would leave its times as they were.


HASH_CACHE_FILE = "hashes.json"


# in the whole-tree state (a step without `sources`), a changed file bigger than this counts by
# its size, mtime and inode, not its content: every run records the tree, and reading an
# untracked 1 GB file at the start of each push is not what a hook may cost
TREE_CONTENT_LIMIT = 8 * 1024 * 1024


RACY_WINDOW_NS = 1_000_000_000


MAX_HASH_CACHE_ENTRIES = 200_000


class FileHashes:
    """sha256 of files' content, cached by (size, mtime_ns, ctime_ns, inode)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self.path = runs_dir / INDEX_DIR / HASH_CACHE_FILE
        self.entries: dict[str, list[Any]] | None = None
        self.changed = False
        self.files_read = 0  # files whose content was read (tests and bench/ count them)
        self.lock = _thread.RLock()  # steps compute their inputs in parallel threads

    def _load(self) -> dict[str, list[Any]]:
        if self.entries is None:
            try:
                data = json.loads(self.path.read_bytes())
                files = data.get("files") if isinstance(data, dict) and data.get("version") == 1 else None
            except (OSError, ValueError):
                files = None  # missing or torn: a cache, rebuilt as files are read
            self.entries = files if isinstance(files, dict) else {}
        return self.entries

    def digest(self, path: Path | str, info: os.stat_result) -> str:
        """A file's fingerprint from its lstat `info`: a link is its target's name, a FIFO,
        socket or device only its kind (never opened), a regular file its content's sha256."""
        import stat

        if info.st_mode & 0o170000 != 0o100000:  # not S_ISREG (tested inline: 10,000 calls a run)
            if stat.S_ISLNK(info.st_mode):
                try:
                    return "link:" + sha256_hex(os.fsencode(os.readlink(path)))
                except OSError:
                    return "link:?"
            return f"special:{stat.S_IFMT(info.st_mode):o}"
        key = os.fspath(path)
        entries = self.entries if self.entries is not None else self._load()
        known = entries.get(key)  # a dict read: atomic under the GIL, no lock needed
        if (
            known is not None
            and len(known) == 5
            and known[0] == info.st_size
            and known[1] == info.st_mtime_ns
            and known[2] == info.st_ctime_ns
            and known[3] == info.st_ino
        ):
            return str(known[4])
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return "unreadable"
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                return f"special:{stat.S_IFMT(opened.st_mode):o}"
            if opened.st_size < READ_CHUNK:  # most files: no OpenSSL to load for them
                content = builtin_sha256()()
            else:
                import hashlib

                content = hashlib.sha256()
            while chunk := os.read(fd, READ_CHUNK):
                content.update(chunk)
        except OSError:
            return "unreadable"
        finally:
            os.close(fd)
        digest = content.hexdigest()
        with self.lock:
            self.files_read += 1
            if max(opened.st_mtime_ns, opened.st_ctime_ns) < time.time_ns() - RACY_WINDOW_NS:
                self._load()[key] = [opened.st_size, opened.st_mtime_ns, opened.st_ctime_ns, opened.st_ino, digest]
                self.changed = True
        return digest

    def save(self) -> None:
        with self.lock:
            if not self.changed or self.entries is None:
                return
            entries = self.entries
            if len(entries) > MAX_HASH_CACHE_ENTRIES:  # the oldest first out (insertion order)
                entries = dict(list(entries.items())[-MAX_HASH_CACHE_ENTRIES:])
            make_runs_dirs(self.path.parent, self.runs_dir)
            write_atomic(
                self.path,
                json.dumps({"version": 1, "files": entries}, separators=(",", ":"), ensure_ascii=False).encode(
                    "utf-8", "surrogateescape"
                ),
            )
            self.changed = False


def project_hash_key(runs_dir: Path) -> bytes:
    """The key of values_sha256: 32 random bytes in runs/.hash-key (0600), made on first use;
    beside the index, not in it, so a removed index does not make every recorded value new."""
    folder = runs_dir
    path = folder / ".hash-key"
    for _ in range(3):
        try:
            with open(path, "rb") as handle:
                key = handle.read(64)
            if len(key) == 32:
                return key
            _unlink_quietly(path)  # torn by a killed writer: made anew
        except FileNotFoundError:
            pass
        tmp = folder / f".hash-key.{os.getpid()}.{_thread.get_native_id()}.tmp"
        _unlink_quietly(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # exclusive: two runs starting at once end up with one key
        except FileExistsError:
            pass
        finally:
            _unlink_quietly(tmp)
    raise StoreError(f"cannot read {path}: remove it and run again")


def values_sha256(step: Step, key: bytes) -> str:
    return hmac_sha256_hex(
        key, json.dumps(step.variables, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )


def sources_sha256(step: Step, root: Path, runs_dir: Path, hashes: FileHashes) -> str:
    """The names and contents of the files the step's `sources` globs match."""
    with hashes.lock:
        hashes._load()
    lines = [
        f"{relative}\0{hashes.digest(path, info)}\n"
        for relative, path, info in _matching_files(root, step.sources, runs_dir)
    ]
    return sha256_hex(("sources\n" + "".join(lines)).encode("utf-8", "surrogateescape"))


def tree_sha256(git: Mapping[str, Any], root: Path, hashes: FileHashes) -> str | None:
    """The commit and the content of every file that differs from it (git_info's "changed"):
    the whole working tree, without reading the files git knows are unchanged. None outside
    a repository."""
    if not git or "changed" not in git:
        return None
    prefix = str(git.get("prefix") or "")
    top = Path(os.path.normpath(root / ("../" * prefix.count("/")))) if prefix else root
    digest = builtin_sha256()(f"tree\n{git.get('commit')}\n".encode())
    for relative in git["changed"]:
        path = top / relative
        try:
            info = os.lstat(path)
            state = (
                f"large:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
                if info.st_size > TREE_CONTENT_LIMIT
                else hashes.digest(path, info)
            )
        except OSError:
            state = "absent"
        digest.update(f"{relative}\0{state}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class StepInputs(RunSink):
    """The inputs of each step of one run, for its entry (values_sha256, tree_sha256 and, with
    `sources`, inputs_sha256), and the up-to-date gate: a step with `sources` whose inputs are
    those of its last pass is skipped (not with --force). A RunSink only to save the hash
    cache once the run has ended."""

    def __init__(self, workflow: Workflow, root: Path, store: RunStore, git: Mapping[str, Any] | None) -> None:
        self.workflow = workflow
        self.root = root
        self.store = store
        self.git = git or {}
        self._key: bytes | None = None  # read when the first step starts (runs/ exists then)
        self.hashes = FileHashes(store.runs_dir)
        self.index = StepIndex(store)
        self.lock = _thread.RLock()
        self.computed: dict[int, dict[str, Any]] = {}
        self.up_to_date: dict[int, str] = {}
        self._tree: tuple[str | None] | None = None

    def tree(self) -> str | None:
        with self.lock:
            if self._tree is None:
                self._tree = (tree_sha256(self.git, self.root, self.hashes),)
            return self._tree[0]

    def of(self, step: Step) -> dict[str, Any]:
        """{"definition_sha256", "values_sha256", "tree_sha256"[, "inputs_sha256"]}: computed
        once per run and step (when it is first judged or starts)."""
        with self.lock:
            if step.index in self.computed:
                return self.computed[step.index]
        with self.lock:
            if self._key is None:
                self._key = project_hash_key(self.store.runs_dir)
        fields: dict[str, Any] = {
            "definition_sha256": step.definition_sha256,
            "values_sha256": values_sha256(step, self._key),
        }
        if step.sources:
            fields["tree_sha256"] = sources_sha256(step, self.root, self.store.runs_dir, self.hashes)
            fields["inputs_sha256"] = _canonical_hash(
                [fields["definition_sha256"], fields["values_sha256"], fields["tree_sha256"]]
            )
        else:
            fields["tree_sha256"] = self.tree()
        with self.lock:
            return self.computed.setdefault(step.index, fields)

    def gate(self, step: Step, options: RunOptions) -> str | None:
        """A step gate (RunWiring.gates): `up to date (inputs unchanged since run <id>)`."""
        if not step.sources or options.force:
            return None
        inputs = self.of(step)["inputs_sha256"]
        last = self.index.last_pass(self.workflow.name, step.name)
        if last is None or last["inputs_sha256"] != inputs:
            return None
        with self.lock:
            self.up_to_date[step.index] = last["passed_in"]
        return f"up to date (inputs unchanged since run {last['passed_in']})"

    def entry_fields(self, step: Step, event: str) -> dict[str, Any]:
        """What the step's entry records (RunWiring.entry_fields): its inputs when it starts or
        is re-used, and when skipped only what was worked out already (an up-to-date skip)."""
        if event == "skip" and step.index not in self.computed:
            return {}
        fields = dict(self.of(step))
        if event == "skip" and step.index in self.up_to_date:
            fields["up_to_date_since"] = self.up_to_date[step.index]
        return fields

    def run_finished(self, workflow: Workflow, record: dict[str, Any]) -> None:
        try:
            self.hashes.save()
        except (OSError, OrchestrateError) as exc:
            sys.stderr.write(f"orchestrate: warning: cannot save {self.hashes.path}: {exc}\n")


def resume_point(record: Mapping[str, Any], workflow: Workflow | None = None) -> str:
    """The step a resume of `record` starts from: its first failed step (an allowed failure
    does not count). UsageError (exit 2) for a run that did not fail, one that failed before
    any step did, or a workflow that no longer has that step."""
    run_id, status, name = record.get("run_id"), record.get("status"), record.get("workflow")
    if status in ("running", "pending"):
        raise UsageError(f"run {run_id} is still {status}: resume it once it has ended")
    if status != "failed":
        raise UsageError(
            f"run {run_id} did not fail (status {status}): nothing to resume; "
            f"start a new run with: orchestrate run {name}"
        )
    failed = next(
        (e.get("step") for e in record.get("log", []) if e.get("status") == "failed" and not e.get("allowed_failure")),
        None,
    )
    if not isinstance(failed, str):
        why = f" ({record['message']})" if record.get("message") else ""
        raise UsageError(
            f"run {run_id} failed before any step did{why}: nothing to resume; "
            f"start a new run with: orchestrate run {name}"
        )
    if workflow is not None and failed not in {step.name for step in workflow.steps}:
        raise UsageError(
            f"{workflow.display_path} has no step {failed!r} any more, the step that failed in "
            f"run {run_id}: the workflow changed too much to resume it; start a new run with: "
            f"orchestrate run {name}"
        )
    return failed


class ResumePlan:
    """`resume RUN`: the steps of RUN above its first failed step that passed are re-used
    (RunWiring.reuse) when their definition, values and files are those they passed with;
    otherwise they run again and their entry says why (rerun_reason)."""

    def __init__(self, record: Mapping[str, Any], inputs: StepInputs) -> None:
        self.record = record
        self.run_id = str(record["run_id"])
        self.inputs = inputs
        self.first_failed = resume_point(record)
        log = [e for e in record.get("log", []) if isinstance(e.get("step"), str)]
        names = [e["step"] for e in log]
        self.earlier = {e["step"]: e for e in log[: names.index(self.first_failed)]}
        self.reasons: dict[str, str] = {self.first_failed: f"failed in run {self.run_id}"}

    def _why_not(self, step: Step, earlier: Mapping[str, Any]) -> str | None:
        current = self.inputs.of(step)
        since = f"since run {self.run_id}"
        if "values_sha256" not in earlier:
            return f"run {self.run_id} did not record its inputs"
        # values first: a variable's value is also in the (interpolated) definition
        if earlier.get("values_sha256") != current["values_sha256"]:
            return f"the variables it uses changed {since}"
        if earlier.get("definition_sha256") != current["definition_sha256"]:
            return f"its definition changed {since}"
        if current["tree_sha256"] is None:
            return "not in a git repository: orchestrate cannot tell whether its files changed"
        if earlier.get("tree_sha256") != current["tree_sha256"]:
            return f"its sources changed {since}" if step.sources else f"the commit or the working tree changed {since}"
        return None

    def reuse(self, step: Step, options: RunOptions) -> tuple[str, dict[str, Any]] | None:
        """(the run, its entry) whose result the step takes over, or None: it runs."""
        earlier = self.earlier.get(step.name)
        if earlier is None or earlier.get("status") != "passed":
            return None
        why = "--force" if options.force else self._why_not(step, earlier)
        if why is not None:
            self.reasons[step.name] = why
            return None
        return self.run_id, dict(earlier)

    def entry_fields(self, step: Step, event: str) -> dict[str, Any]:
        return {"rerun_reason": self.reasons[step.name]} if event == "start" and step.name in self.reasons else {}


# === 12. HTTP server ===
#
# `orchestrate serve` (the optional `server` extra): the seed's HTTP service shape on the
# same run store the CLI uses. Each run is its own `orchestrate run NAME --run-id ID` child
# process, so a crashing workflow never takes the server down and `status`/`runs` on the
# CLI see HTTP runs like any other. FastAPI and uvicorn are imported inside create_app()
# and serve() only: the base install (typer + requests) must never import them.
#
# Annotations in this section use only builtins and `Any`: FastAPI evaluates string
# annotations (PEP 563) against this module's globals, where no FastAPI name lives.


SERVER_EXTRA_HINT = (
    "pipx install 'orchestrate-cli[server]' (or, into an existing pipx install: "
    "pipx inject orchestrate-cli fastapi uvicorn; in a virtualenv: pip install 'orchestrate-cli[server]')"
)


API_TOKEN_ENV = "ORCHESTRATE_API_TOKEN"


SERVER_STOPPED = "server stopped"


MAX_QUEUED_RUNS = 1000  # pending runs one server holds before /start answers 429


_LOG_FOLLOW_INTERVAL_S = 0.25


_RUN_STATUS_PATTERN = "^(pending|running|failed|completed)$"


MAX_REQUEST_BODY = 1024 * 1024  # a /start body is a few hundred bytes; 1 MiB is far beyond


REQUEST_READ_TIMEOUT_S = 10.0  # a request's headers, and then its body, must arrive within this


MAX_REQUEST_HEADERS = 16 * 1024  # h11's limit on the request line and headers


# === 12.1. Who may talk to the server ===
#
# The trust model (README "HTTP API"): a run executes workflow code as the user running the
# server, so the server must know who asks. Without a token it binds only loopback, and then
# the danger is a web page in the developer's browser: a cross-site form POST needs no CORS
# preflight when its Content-Type is text/plain, and DNS rebinding makes a hostile name
# resolve to 127.0.0.1. So every request's Host must be the bound address (or localhost,
# 127.0.0.1, [::1]) with the bound port, or a name given with --allowed-host; a request with
# an Origin other than the server's own is refused; POST bodies must be application/json
# (which a cross-site page cannot send without a preflight nobody answers). Bodies are
# bounded before anything parses them or checks the token, and a caller's `vars` only fill
# the workflow's own ${NAME}s (see check_http_variables), never the environment of
# orchestrate, its git calls or protected variables of a step.


@dataclass(frozen=True)
class BindAddress:
    """--host as given: the address to bind and its form in a URL or Host header."""

    address: str  # "::1", "127.0.0.1", "localhost"
    url_host: str  # "[::1]", "127.0.0.1", "localhost"


def parse_bind_host(host: str) -> BindAddress:
    """`--host` in any usual spelling: 127.0.0.1, localhost, ::1 or [::1] (as in a URL)."""
    import ipaddress

    text = host.strip()
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(inner)
    except ValueError:
        ip = None
    if ip is not None:
        return BindAddress(str(ip), f"[{ip}]" if ip.version == 6 else str(ip))
    if inner is not text or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9.])?", inner):
        raise UsageError(f"--host {host!r}: expected an IP address (127.0.0.1, ::1 or [::1]) or a host name")
    return BindAddress(inner.lower(), inner.lower())


def _split_host_port(value: str) -> tuple[str, int | None] | None:
    """'name:8000' -> ('name', 8000), '[::1]:80' -> ('[::1]', 80), 'name' -> ('name', None)."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?", value.strip())
    if match is None:
        return None
    return match.group(1).lower().rstrip("."), int(match.group(2)) if match.group(2) else None


@dataclass
class HostPolicy:
    """Which Host headers name this server (see the trust model above)."""

    port: int
    local_names: frozenset[str]  # allowed with the bound port only
    allowed: frozenset[tuple[str, int | None]]  # --allowed-host NAME[:PORT]; no port: any

    @classmethod
    def build(cls, bind: BindAddress, port: int, allowed_hosts: Iterable[str] = ()) -> HostPolicy:
        allowed = set()
        for entry in allowed_hosts:
            parsed = _split_host_port(entry)
            if parsed is None or not parsed[0]:
                raise UsageError(f"--allowed-host {entry!r}: expected NAME or NAME:PORT, e.g. orchestrate.example.com")
            allowed.add(parsed)
        names = frozenset({bind.url_host.lower(), "localhost", "127.0.0.1", "[::1]"})
        return cls(port=port, local_names=names, allowed=frozenset(allowed))

    def accepts(self, host_header: str) -> bool:
        parsed = _split_host_port(host_header)
        if parsed is None:
            return False
        name, port = parsed
        if name in self.local_names and (port or 80) == self.port:
            return True
        return (name, None) in self.allowed or (name, port) in self.allowed


def _same_origin(origin: str, host_header: str) -> bool:
    """Origin (scheme://host[:port]) names the same host and port as the Host header."""
    match = re.fullmatch(r"(https?)://([^/?#]+)", origin.strip().lower())
    host = _split_host_port(host_header)
    if match is None or host is None:
        return False  # "null" (a sandboxed frame, a file: page) and anything else
    default = 443 if match.group(1) == "https" else 80
    theirs = _split_host_port(match.group(2))
    return theirs is not None and (theirs[0], theirs[1] or default) == (host[0], host[1] or default)


def check_request_head(
    method: str, headers: Mapping[str, str], policy: HostPolicy, max_body: int = MAX_REQUEST_BODY
) -> tuple[int, str] | None:
    """(status, message) for a request refused on its headers alone, or None (pure)."""
    host = headers.get("host", "")
    if not policy.accepts(host):
        return 403, (
            f"Host {host!r} is not this server: use http://127.0.0.1:{policy.port}, or start "
            f"it with --allowed-host NAME for a name a proxy or DNS gives it"
        )
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, host):
        return 403, f"cross-origin request refused: Origin {origin!r} is not this server's origin"
    length = headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > max_body):
        return 413, f"request body over {max_body // 1024} KiB: this API takes small JSON bodies"
    has_body = (length not in ("", "0")) or "transfer-encoding" in headers
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if method in ("POST", "PUT", "PATCH") and has_body and media != "application/json":
        return 415, (f"body must be JSON: send it with Content-Type: application/json (not {media or 'none'!r})")
    return None


class RequestGuard:
    """ASGI middleware in front of everything (the token check and FastAPI's body parsing
    included): refuses by Host, Origin, Content-Type and Content-Length, then reads the
    body itself, counting bytes as they arrive (413 beyond max_body: four concurrent 100 MB
    bodies once took the server to 1.25 GiB) and within REQUEST_READ_TIMEOUT_S (408), and
    hands the app the body it read. Refusals close the connection."""

    def __init__(
        self, app: Any, policy: HostPolicy, max_body: int = MAX_REQUEST_BODY, timeout: float = REQUEST_READ_TIMEOUT_S
    ) -> None:
        self.app = app
        self.policy = policy
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        refused = check_request_head(scope["method"], headers, self.policy, self.max_body)
        if refused is not None:
            await self._refuse(send, *refused)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await self._refuse(send, 408, f"request body not received within {self.timeout:g} s")
                return
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self._refuse(
                    send, 413, f"request body over {self.max_body // 1024} KiB: this API takes small JSON bodies"
                )
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body: list[bytes] | None = [b"".join(chunks)]

        async def replay() -> Any:
            nonlocal body
            if body is not None:
                data, body = body[0], None
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # http.disconnect, for a streaming response

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Any, status: int, message: str) -> None:
        data = json.dumps({"detail": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )  # whatever the client still sends is not read
        await send({"type": "http.response.body", "body": data, "more_body": False})


def _bounded_protocol(timeout: float = REQUEST_READ_TIMEOUT_S) -> Any:
    """uvicorn's h11 protocol, closing a connection whose request line and headers have not
    all arrived within `timeout` (uvicorn times out only idle keep-alive connections: a
    client sending a header byte now and then, or nothing, held a connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):  # type: ignore[misc]
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self._between_requests():
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if not self._between_requests():
                self._disarm()  # the request's head is in: RequestGuard bounds its body

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: could resolve anywhere, so treat it as exposed


def _check_text(value: str, what: str) -> str:
    """Reject what cannot travel as an argv element: NUL bytes and unpaired surrogates."""
    if "\x00" in value:
        raise UsageError(f"{what}: NUL character is not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what}: not valid UTF-8 text") from None
    return value


def _child_command(env: dict[str, str]) -> list[str]:
    """How to start `orchestrate` with the interpreter this server runs on.

    The console script beside sys.executable (a pipx or virtualenv install) imports the
    module as `orchestrate`, as plugins that import orchestrate expect; without one,
    `python -m orchestrate` with this module's folder put on PYTHONPATH in `env`.
    """
    script = Path(sys.executable).with_name("orchestrate")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    module_dir = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [module_dir, env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "orchestrate"]


@dataclass
class QueuedRun:
    """A run the HTTP server accepted and has not started yet."""

    run_id: str
    argv: list[str]
    variables: dict[str, str] = field(default_factory=dict)  # on the child's stdin: never its env or argv


class RunDispatcher:
    """Starts queued runs as child processes, at most `max_parallel` at once, in order.

    A thread, not asyncio: the children are plain processes, and reaping them every
    fraction of a second costs nothing. Pending runs live only in memory (their vars may
    hold secrets), so a stopped server fails its queue with "server stopped".
    """

    def __init__(
        self,
        store: RunStore,
        root: Path,
        child_argv: list[str],
        max_parallel: int,
        env: dict[str, str],
        max_queued: int = MAX_QUEUED_RUNS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.child_argv = child_argv
        self.max_parallel = max(1, max_parallel)
        self.max_queued = max(1, max_queued)
        self.env = env
        self.log = log or _server_log
        import threading

        self._queue: list[QueuedRun] = []  # at most max_queued: pop(0) is cheap enough
        self._reserved = 0  # places promised to /start requests that are writing their record
        self._running: dict[str, tuple[Any, Any]] = {}  # run id -> (Popen, its output file)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Any = None

    # -- called from request handlers
    def reserve(self) -> bool:
        """Claim a place in the queue, or False when it is full. Check and claim under one
        lock: /start runs in a thread pool, and checking the length first and enqueueing
        after writing the record let 1,004 of 1,300 concurrent starts in against 1,000."""
        with self._cond:
            if len(self._queue) + self._reserved >= self.max_queued:
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """Give back a place reserve() claimed, for a start that did not happen."""
        with self._cond:
            self._reserved -= 1

    def submit(self, run: QueuedRun) -> None:
        """Queue a run in the place reserve() claimed for it."""
        with self._cond:
            self._reserved -= 1
            self._queue.append(run)
            self._cond.notify()

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- lifecycle
    def start(self) -> None:
        import threading

        self._thread = threading.Thread(target=self._loop, name="orchestrate-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop starting runs; fail the queue. Running children finish on their own."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for run in left:
            self._fail_pending(run.run_id, SERVER_STOPPED)

    # -- the thread
    def _loop(self) -> None:
        """Never ends but by stop(): whatever goes wrong with one run (runs/ unwritable, a
        child that cannot start, a bug) is logged and fails that run, and the loop goes on.
        Once, one StoreError ended this thread and every later run stayed pending forever
        while /start still answered 202."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                try:
                    self._reap()
                    while self._queue and len(self._running) < self.max_parallel:
                        run = self._queue.pop(0)
                        try:
                            self._spawn(run)
                        except Exception as exc:
                            self._report(run.run_id, "could not start it", exc)
                except Exception as exc:  # only a bug gets here: keep serving
                    self._report(None, "dispatcher", exc)
                self._cond.wait(timeout=0.2)

    def _report(self, run_id: str | None, what: str, exc: BaseException) -> None:
        """Log a failure, and fail the run it concerns if its record can still be written."""
        reason = str(exc) if isinstance(exc, OrchestrateError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, OrchestrateError):
            import traceback

            self.log("".join(traceback.format_exception(exc)).rstrip())
        self.log(f"orchestrate serve: error: {f'run {run_id}: ' if run_id else ''}{what}: {reason}")
        if run_id is None:
            return
        try:
            self._fail_pending(run_id, f"{what}: {reason}")
        except Exception as again:
            self.log(f"orchestrate serve: error: run {run_id}: cannot record its failure either: {again}")

    def _spawn(self, run: QueuedRun) -> None:
        import subprocess
        import tempfile

        # the child's own output (it runs --quiet; its steps log to runs/): kept only to say
        # why a run that never started failed, closed when the child is reaped
        output = tempfile.TemporaryFile()
        # the caller's vars reach the run on stdin (`run --vars-stdin`), through an unlinked
        # 0600 file: never in its argv (every local user reads argv with ps) and never in
        # its environment (that of orchestrate itself, and of every git it runs)
        variables = tempfile.TemporaryFile()
        try:
            variables.write(json.dumps(run.variables).encode("utf-8"))
            variables.seek(0)
            proc = subprocess.Popen(
                run.argv,
                cwd=self.root,
                env=self.env,
                stdin=variables,
                stdout=output,
                stderr=subprocess.STDOUT,
                # its own session: Ctrl-C on the server's terminal does not end runs that
                # already started; they finish and record themselves.
                start_new_session=True,
            )
        except OSError as exc:
            output.close()
            self._fail_pending(run.run_id, f"could not start orchestrate run: {exc}")
            return
        finally:
            variables.close()
        self._running[run.run_id] = (proc, output)

    def _reap(self) -> None:
        for run_id, (proc, output) in list(self._running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._running[run_id]
            try:
                output.seek(0)
                tail = output.read()[-2000:].decode("utf-8", "replace").strip()
            finally:
                output.close()
            # A child that exits before adopting its pending record (an option it
            # refused, an unusable environment) would leave the run pending forever.
            last_line = tail.splitlines()[-1] if tail else ""
            try:
                self._fail_pending(
                    run_id,
                    f"orchestrate run exited with code {code} before starting"
                    + (f": {last_line}" if last_line else ""),
                )
            except Exception as exc:
                self._report(None, f"run {run_id}: cannot record how it ended", exc)

    def _fail_pending(self, run_id: str, message: str) -> None:
        """Mark a run failed if (and only if) it is still pending."""
        try:
            record = self.store.load(run_id)
        except OrchestrateError:
            return
        if record.get("status") != "pending":
            return
        record.update(status="failed", finished_at=utc_now(), current=None, message=message)
        self.store.write_snapshot(record)


def _server_log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail_orphaned_pending_runs(store: RunStore) -> list[str]:
    """Fail runs a previous server queued but never started ("server stopped").

    A pending HTTP run belongs to the server whose pid its trigger names; while that
    server lives (another server on the same runs folder) its queue is left alone.
    """
    failed = []
    for summary in store.summaries(status="pending", limit=None):
        run_id = summary.get("run_id")
        if not run_id or summary.get("unreadable"):
            continue
        try:
            record = store.load(run_id)
        except OrchestrateError:
            continue
        trigger = record.get("trigger") or {}
        if record.get("status") != "pending" or trigger.get("source") != "http":
            continue
        server_pid = trigger.get("server_pid")
        if isinstance(server_pid, int) and server_pid != os.getpid() and process_alive(server_pid):
            continue
        record.update(status="failed", finished_at=utc_now(), current=None, message=SERVER_STOPPED)
        store.write_snapshot(record)
        failed.append(run_id)
    return failed


def _parse_start_body(raw: bytes) -> Any:
    """A /start body as JSON: (status, message) in an HTTPError-like ValueError on failure."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, f"body: JSON is nested more than {MAX_NESTING} levels deep") from None
    except (ValueError, _NotJSON) as exc:
        shown = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        raise ApiError(
            422, f'body: not valid JSON ({shown}); expected JSON like {{"vars": {{}}, "only": [], "skip": []}}'
        ) from None
    if _check_document(body) is not None:  # deep nesting, lone surrogates
        raise ApiError(400, f"body: {_check_document(body)}")
    return body


class ApiError(Exception):
    """What an endpoint answers instead of its result: an HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# === 12.2. The endpoints' work ===
#
# Each endpoint of create_app() is a thin FastAPI function over one of these: they take the
# server's state, return data or raise ApiError, and touch no FastAPI name, so tests call them.


@dataclass
class ServerState:
    """What the endpoints work on: the project's folders, its run store, the dispatcher."""

    root: Path
    workflows_dir: Path
    runs_dir: Path
    store: RunStore
    dispatcher: Any


def api_workflow_name(name: str) -> str:
    try:
        return check_workflow_name(_check_text(name, "workflow name"))
    except (UsageError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None


def api_record(store: RunStore, run_id: str) -> dict[str, Any]:
    """GET /status/{run_id}: the record as stored (secrets already masked)."""
    try:
        check_run_id(_check_text(run_id, "run id"))
    except (UsageError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    try:
        return store.load(run_id)
    except UsageError:
        raise ApiError(404, f"unknown run '{run_id}'") from None
    except OrchestrateError as exc:  # unreadable record: the server's data, not the request
        raise ApiError(500, str(exc)) from None


def api_start_request(raw: bytes, parse_request: Callable[[Any], Any]) -> Any:
    """The checked body of POST /start and POST /runs/{run_id}/resume: JSON, the request
    model (`parse_request`: vars, only, skip), text an argv and an environment can carry."""
    request = parse_request(_parse_start_body(raw))
    try:
        for key, value in request.vars.items():
            _check_text(key, "vars key")
            _check_text(value, f"vars[{key!r}]")
            if not _VAR_NAME_RE.match(key):  # the names --var KEY=VALUE takes
                raise UsageError(f"vars key {key!r}: expected a variable name (letters, digits, _)")
        for step_name in [*request.only, *request.skip]:
            _check_text(step_name, "step name")
    except UsageError as exc:
        raise ApiError(422, str(exc)) from None
    return request


def _load_checked(state: ServerState, name: str, request: Any, record: Mapping[str, Any] | None = None) -> Workflow:
    """The workflow a request runs, checked as `run` (and, for a resume, `resume`) checks it."""
    try:
        variables = {**os.environ, **request.vars}  # what the run interpolates with
        workflow = load_workflow(name, state.workflows_dir, variables, load_settings(state.root), state.root)
        check_http_variables(workflow, request.vars)
        if record is not None:
            resume_point(record, workflow)
        select_steps(workflow, RunOptions(only=request.only, skip=request.skip))
    except OrchestrateError as exc:
        raise ApiError(422, str(exc)) from None
    return workflow


def api_start(state: ServerState, name: str, raw: bytes, parse_request: Callable[[Any], Any]) -> dict[str, str]:
    """POST /start?name=NAME: check everything a run would, queue it, answer its id."""
    name = api_workflow_name(name)
    request = api_start_request(raw, parse_request)
    known = dict(list_workflows(state.workflows_dir))
    if name not in known:
        raise ApiError(404, f"unknown workflow '{name}'{did_you_mean(name, known)}")
    workflow = _load_checked(state, name, request)
    return _queue_run(state, name, workflow, request, ["run", name])


def api_resume(state: ServerState, run_id: str, raw: bytes, parse_request: Callable[[Any], Any]) -> dict[str, str]:
    """POST /runs/{run_id}/resume: what `orchestrate resume` checks (the run exists, failed,
    its failed step is still in its workflow) with /start's checks of the body; then queued as
    `orchestrate resume RUN_ID`. 404 unknown run, 409 a run that did not fail, 422 the rest."""
    record = api_record(state.store, run_id)
    request = api_start_request(raw, parse_request)
    try:
        resume_point(record)
    except UsageError as exc:
        raise ApiError(409, str(exc)) from None
    name = str(record.get("workflow"))
    workflow = _load_checked(state, name, request, record)
    return _queue_run(state, name, workflow, request, ["resume", run_id], resumed_from=run_id)


def _queue_run(
    state: ServerState, name: str, workflow: Workflow, request: Any, command: list[str], resumed_from: str | None = None
) -> dict[str, str]:
    """Queue `orchestrate <command>` for a checked request: a pending record, then the child."""
    dispatcher = state.dispatcher
    if not dispatcher.reserve():
        raise ApiError(429, f"{dispatcher.max_queued} runs already wait; try again when some have started")
    try:
        run_id = _queue_record(state.store, name, workflow, request, resumed_from)
    except BaseException:
        dispatcher.release()
        raise
    argv = [
        *dispatcher.child_argv,
        "--root",
        str(state.root),
        "--workflows-dir",
        str(state.workflows_dir),
        "--runs-dir",
        str(state.runs_dir),
        *command,
        f"--run-id={run_id}",
        "--quiet",
        "--vars-stdin",
    ]
    # --opt=value, so a value starting with '-' is never read as an option
    argv += [f"--only={s}" for s in request.only] + [f"--skip={s}" for s in request.skip]
    dispatcher.submit(QueuedRun(run_id, argv, dict(request.vars)))
    return {"run_id": run_id}


def _queue_record(store: RunStore, name: str, workflow: Workflow, request: Any, resumed_from: str | None = None) -> str:
    run_id = new_run_id()
    store.create(
        {
            **({"resumed_from": resumed_from} if resumed_from else {}),
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "workflow": name,
            "status": "pending",
            "current": None,
            "running": [],
            "started_at": None,
            "finished_at": None,
            "pid": None,
            "message": "",
            "workflow_sha256": workflow.sha256,
            "options": {"only": request.only, "skip": request.skip},
            # the run keeps this trigger when it adopts the record; var values stay out of it
            # (they may be secrets): names only
            "trigger": {
                "source": "http",
                "server_pid": os.getpid(),
                "queued_at": utc_now(),
                "vars": sorted(request.vars),
            },
            "log": [],
        }
    )
    return run_id


def api_runs(store: RunStore, workflow: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    """GET /runs: run history, newest first."""
    return store.summaries(
        workflow=api_workflow_name(workflow) if workflow is not None else None, status=status, limit=limit
    )


def api_workflows(workflows_dir: Path, root: Path) -> list[dict[str, Any]]:
    """GET /workflows: the workflow files with their descriptions (an invalid one is listed too)."""
    listed = []
    for name, path in list_workflows(workflows_dir):
        description = None
        try:
            description = json.loads(path.read_text(encoding="utf-8")).get("description")
        except (OSError, ValueError, AttributeError):
            pass  # `validate` says what is wrong with it
        listed.append({"name": name, "path": os.path.relpath(path, root), "description": description})
    return listed


def api_junit(store: RunStore, run_id: str) -> bytes:
    """GET /runs/{run_id}/junit: the JUnit report (404 until the run has written it)."""
    record = api_record(store, run_id)
    try:
        return store.junit_path(run_id).read_bytes()
    except FileNotFoundError:
        raise ApiError(404, f"run '{run_id}' has no JUnit report yet (status {record.get('status')})") from None


def api_step_log(store: RunStore, run_id: str, step: str) -> Path | None:
    """GET /runs/{run_id}/logs/{step}: the step's log file (step_entry's lookup, as `logs`);
    None for a finished step that printed nothing."""
    record = api_record(store, run_id)
    entry = step_entry(record, step)
    path = step_log_path(store, run_id, entry)
    if path is not None:
        return path
    if entry is not None and entry.get("status") in ("passed", "failed", "skipped"):
        return None  # it printed nothing: no file was ever created
    if entry is not None:
        raise ApiError(404, f"step '{step}' of run '{run_id}' has no log yet")
    names = [str(e.get("step", "")) for e in record.get("log") or []]
    raise ApiError(404, f"run '{run_id}' has no step '{step}'{did_you_mean(step, names)}")


def step_still_writing(store: RunStore, run_id: str, step: str) -> bool:
    """Whether a followed log may still grow: its run and its step have not ended."""
    try:
        current = store.load(run_id)
    except OrchestrateError:
        return False
    if current.get("status") not in ("pending", "running"):
        return False
    entry = step_entry(current, step)
    return entry is not None and entry.get("status") in ("pending", "running")


def create_app(
    root: Path,
    workflows_dir: Path,
    runs_dir: Path,
    max_parallel: int = 2,
    token: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allowed_hosts: Sequence[str] = (),
    max_queued: int = MAX_QUEUED_RUNS,
) -> Any:
    """The ASGI application of `orchestrate serve` (needs the `server` extra): FastAPI behind
    RequestGuard, which knows the address it is served on (host, port, allowed_hosts)."""
    define_typing_names()
    from fastapi import FastAPI

    root = Path(root).resolve()
    workflows_dir = Path(workflows_dir)
    runs_dir = Path(runs_dir)
    store = RunStore(runs_dir)
    # the runs never need the API token: keep it out of their environment (and their steps')
    child_env = {k: v for k, v in os.environ.items() if k != API_TOKEN_ENV}
    dispatcher = RunDispatcher(store, root, _child_command(child_env), max_parallel, child_env, max_queued=max_queued)
    policy = HostPolicy.build(parse_bind_host(host), port, allowed_hosts)

    state = ServerState(root, workflows_dir, runs_dir, store, dispatcher)
    start_request, error_body, parse_request = _start_request_models()
    docs_off: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None} if token is not None else {}
    app = FastAPI(
        title="orchestrate",
        version=__version__,
        description="Start orchestrate workflows and follow their runs over HTTP.",
        lifespan=_server_lifespan(state),
        # with a token, the schema and docs are behind it too (added to the router below)
        **docs_off,
    )
    app.state.dispatcher = dispatcher
    app.state.store = store
    api = _api_router(app, token, error_body)

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict:
        """Liveness probe; the only endpoint that never needs the token."""
        return {"status": "ok"}

    _add_start_routes(api, state, start_request, error_body, parse_request)
    _add_record_routes(api, store, root, workflows_dir)
    register_dashboard(app, api, store, root, workflows_dir, token is not None)
    app.include_router(api)
    _add_error_handlers(app)
    guarded = RequestGuard(app, policy)
    guarded.state = app.state  # type: ignore[attr-defined]
    return guarded


def _start_request_models() -> tuple[Any, Any, Callable[[Any], Any]]:
    """The body of POST /start and /runs/{id}/resume, the error body, and the parser that turns
    a bad body into one 422 line."""
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class StartRequest(BaseModel):
        """Optional body of POST /start: what `--var`, `--only` and `--skip` give on the CLI."""

        model_config = ConfigDict(extra="forbid")
        vars: dict[str, str] = Field(default_factory=dict, description="--var KEY=VALUE")
        only: list[str] = Field(default_factory=list, description="--only STEP")
        skip: list[str] = Field(default_factory=list, description="--skip STEP")

    class ErrorBody(BaseModel):
        detail: str

    def parse_request(body: Any) -> Any:
        try:
            return StartRequest.model_validate({} if body is None else body)
        except ValidationError as exc:
            raise ApiError(
                422, "; ".join(".".join(["body", *map(str, e["loc"])]) + f": {e['msg']}" for e in exc.errors())
            ) from None

    return StartRequest, ErrorBody, parse_request


def _server_lifespan(state: ServerState) -> Any:
    """Start the dispatcher when the server starts (after failing runs an earlier server left
    pending) and stop it when the server stops."""
    import contextlib

    store, dispatcher, runs_dir = state.store, state.dispatcher, state.runs_dir

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fail_orphaned_pending_runs(store)
        dispatcher.start()
        yield
        dispatcher.stop()

    return lifespan


def _api_router(app: Any, token: str | None, error_body: Any) -> Any:
    """The router of every endpoint that needs the token (when there is one), with the schema
    and docs behind it too."""
    import hmac

    from fastapi import APIRouter, HTTPException, Security
    from fastapi.security import HTTPBearer

    ErrorBody = error_body
    bearer = HTTPBearer(auto_error=False, description=f"the value of {API_TOKEN_ENV}")

    def require_token(credentials: Any = Security(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        # constant time, so the token cannot be guessed a byte at a time from timings
        if not given or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise HTTPException(
                status_code=401,
                detail=f"missing or wrong bearer token ({API_TOKEN_ENV})",
                headers={"WWW-Authenticate": "Bearer"},
            )

    errors: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}}
    if token is not None:
        errors[401] = {"model": ErrorBody}
    api = APIRouter(dependencies=[Security(require_token)], responses=errors)
    if token is not None:
        from fastapi.openapi.docs import get_swagger_ui_html

        @api.get("/openapi.json", include_in_schema=False)
        def openapi_schema() -> dict:
            return app.openapi()

        @api.get("/docs", include_in_schema=False)
        def docs() -> Any:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="orchestrate API")

    return api


def _add_start_routes(api: Any, state: ServerState, start_request: Any, error_body: Any, parse_request: Any) -> None:
    """POST /start and POST /runs/{run_id}/resume: queue a run (the work is api_start/api_resume)."""
    import asyncio

    from fastapi import Query, Request

    StartRequest, ErrorBody = start_request, error_body
    start_body_schema = StartRequest.model_json_schema()

    def queue_route(path: str, endpoint: Any, *statuses: int) -> None:
        """A POST that queues a run: 202, an optional JSON body as /start's, these error statuses."""
        api.post(
            path,
            status_code=202,
            tags=["runs"],
            responses={status: {"model": ErrorBody} for status in statuses},
            openapi_extra={
                "requestBody": {"required": False, "content": {"application/json": {"schema": start_body_schema}}}
            },
        )(endpoint)

    async def start(request: Any, name: str = Query(..., description="workflow name (workflows/NAME.json)")) -> dict:
        """Queue a run of workflow NAME; it starts as soon as fewer than --max-parallel run."""
        raw = await request.body()  # read (at most MAX_REQUEST_BODY) by RequestGuard already
        # the rest reads and writes files: off the event loop, as FastAPI runs a plain def
        return await asyncio.to_thread(api_start, state, name, raw, parse_request)

    start.__annotations__["request"] = Request  # a FastAPI name: not resolvable from the module
    queue_route("/start", start, 413, 415, 422, 429)

    async def resume(request: Any, run_id: str) -> dict:
        """Resume failed run RUN_ID as a new run (`orchestrate resume`): body as for /start."""
        raw = await request.body()
        return await asyncio.to_thread(api_resume, state, run_id, raw, parse_request)

    resume.__annotations__["request"] = Request
    queue_route("/runs/{run_id}/resume", resume, 409, 413, 415, 422, 429)


def _add_record_routes(api: Any, store: RunStore, root: Path, workflows_dir: Path) -> None:
    """The read-only endpoints: a run's record, the run list, workflows, JUnit, step logs."""

    from fastapi import Query
    from fastapi.responses import PlainTextResponse, Response, StreamingResponse

    @api.get("/status/{run_id}", tags=["runs"])
    def status(run_id: str) -> dict:
        """The run's record, as stored (secrets already masked): current, status, log, ..."""
        return api_record(store, run_id)

    @api.get("/runs", tags=["runs"])
    def runs(
        workflow: str | None = Query(None, description="only runs of this workflow"),
        status: str | None = Query(None, pattern=_RUN_STATUS_PATTERN),
        limit: int = Query(20, ge=1, le=1000),
    ) -> list:
        """Run history, newest first."""
        return api_runs(store, workflow, status, limit)

    @api.get("/workflows", tags=["workflows"])
    def workflows() -> list:
        """The workflows under workflows/, with their descriptions."""
        return api_workflows(workflows_dir, root)

    @api.get(
        "/runs/{run_id}/junit",
        tags=["runs"],
        response_class=Response,
        responses={200: {"content": {"application/xml": {}}}},
    )
    def junit(run_id: str) -> Any:
        """The run's JUnit XML report (404 until the run has written it)."""
        return Response(content=api_junit(store, run_id), media_type="application/xml")

    @api.get(
        "/runs/{run_id}/logs/{step}",
        tags=["runs"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def logs(run_id: str, step: str) -> Any:
        """A step's full log (masked); followed until the step ends while it is running."""
        path = api_step_log(store, run_id, step)
        if path is None:
            return PlainTextResponse("")

        return StreamingResponse(_follow_log(store, run_id, step, path), media_type="text/plain; charset=utf-8")


async def _follow_log(store: RunStore, run_id: str, step: str, path: Path) -> Any:
    """A step's log as it grows, until its step has ended and the file is read to its end."""
    import asyncio

    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while True:
            chunk = await asyncio.to_thread(handle.read, READ_CHUNK)
            if chunk:
                yield chunk
                continue
            if not await asyncio.to_thread(step_still_writing, store, run_id, step):
                while rest := await asyncio.to_thread(handle.read, READ_CHUNK):
                    yield rest
                return
            await asyncio.sleep(_LOG_FOLLOW_INTERVAL_S)
    finally:
        handle.close()


def _add_error_handlers(app: Any) -> None:
    """ApiError and OrchestrateError as JSON bodies with their status, never a traceback."""
    from fastapi.responses import JSONResponse

    @app.exception_handler(ApiError)
    async def api_error(request: Any, exc: Any) -> Any:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.exception_handler(OrchestrateError)
    async def orchestrate_error(request: Any, exc: Any) -> Any:
        status_code = 400 if isinstance(exc, UsageError) else 422 if isinstance(exc, DefinitionError) else 500
        return JSONResponse(status_code=status_code, content={"detail": str(exc)})


def _listen(bind: BindAddress, port: int) -> Any:
    """The listening socket, bound now: a host that cannot be bound ([::1] without IPv6, a
    name that does not resolve, a port in use) is refused at once with one line, not after
    the server has started."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bind.address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OrchestrateError(
            f"cannot listen on {bind.url_host}:{port}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (is another server running? pick another --port)" if exc.errno == 98 else ""
        raise OrchestrateError(f"cannot listen on {bind.url_host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


# === 12.3. Dashboard ===
#
# `/` lists runs, `/ui/runs/{run_id}` shows one run's report and follows it while it runs, a
# form starts a workflow through POST /start (so with exactly its checks). Pages are built
# here from the same pieces as the HTML report (section 8); nothing comes from another
# origin. A page itself holds run data only when the server needs no token: with a token a
# browser cannot send the Authorization header on a navigation, so the page is an empty
# shell whose script asks for the token once, keeps it in sessionStorage (never a URL or a
# cookie) and fetches the same HTML, rendered and escaped here, from /ui/parts/... with the
# header. Every page sends a Content-Security-Policy allowing only its own script and style
# (a fresh nonce per response) and requests to this server.


_DASHBOARD_CSS = """
nav.top{display:flex;gap:16px;align-items:baseline;border-bottom:1px solid var(--line);padding-bottom:8px}
nav.top a{color:inherit}nav.top .brand{font-weight:700}
#note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:10px 0}
#auth{border:1px solid var(--line);padding:10px;margin:10px 0;background:#f6f8fa}
#auth input{font:inherit;width:22em}
form.filters{margin:12px 0;display:flex;gap:12px;align-items:end;flex-wrap:wrap}
form.filters label,#start label{display:flex;flex-direction:column;font-size:12px;color:var(--dim)}
#start{border:1px solid var(--line);padding:10px;margin:16px 0}#start .fields{display:flex;gap:12px;flex-wrap:wrap;align-items:start}
#start textarea{font:12px ui-monospace,monospace;width:18em;height:4.5em}#start-error{color:var(--bad);display:block;margin-top:6px;white-space:pre-wrap}
table.runs{border-collapse:collapse;width:100%}table.runs th,table.runs td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
table.runs td.message{color:var(--dim);word-break:break-word}
"""


_DASHBOARD_JS = r"""
(function () {
  "use strict";
  var body = document.body;
  var tokenMode = body.getAttribute("data-token") === "required";
  var KEY = "orchestrate.api-token";
  var ANSI = /\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
  var note = document.getElementById("note");
  function say(text) { note.textContent = text || ""; note.hidden = !text; }
  function token() { try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; } }
  function call(url, options) {
    options = options || {};
    var headers = options.headers || {};
    if (tokenMode && token()) headers["Authorization"] = "Bearer " + token();
    options.headers = headers; options.credentials = "omit"; options.cache = "no-store";
    return fetch(url, options).then(function (response) {
      if (response.status === 401 && tokenMode) {
        askToken("The server did not accept the token: enter it again.");
        throw new Error("unauthorized");
      }
      return response;
    });
  }
  function problem(response) {
    return response.json().then(function (data) { return data.detail || ("HTTP " + response.status); },
                                function () { return "HTTP " + response.status; });
  }
  var authDone = null;
  function askToken(message) {
    try { sessionStorage.removeItem(KEY); } catch (e) {}
    document.getElementById("auth-message").textContent = message;
    document.getElementById("auth").hidden = false;
    document.getElementById("token").focus();
  }
  function withToken(then) {
    var input = document.getElementById("token");
    function use() {
      var value = input.value.trim();
      if (!value) return;
      try { sessionStorage.setItem(KEY, value); } catch (e) {}
      input.value = "";
      document.getElementById("auth").hidden = true;
      if (authDone) { var next = authDone; authDone = null; next(); } else then();
    }
    document.getElementById("token-use").addEventListener("click", use);
    input.addEventListener("keydown", function (event) { if (event.key === "Enter") { event.preventDefault(); use(); } });
    if (tokenMode && !token()) {
      authDone = then;
      askToken("This server needs its API token (ORCHESTRATE_API_TOKEN). It is kept for this tab only, never in a cookie or the address.");
    } else {
      then();
    }
  }
  function since(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    return s < 60 ? s + "s" : Math.floor(s / 60) + "m" + ("0" + (s % 60)).slice(-2) + "s";
  }
  // "full log" links: with a token they are fetched with it and shown in place
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a.full-log") : null;
    if (!link || !tokenMode) return;
    event.preventDefault();
    var pre = link.closest(".log").querySelector("pre");
    call(link.getAttribute("href")).then(function (response) {
      return response.ok ? response.text().then(function (text) { pre.textContent = text.replace(ANSI, ""); })
                         : problem(response).then(say);
    }).catch(function () {});
  });

  function runPage() {
    var id = body.getAttribute("data-run-id");
    var content = document.getElementById("content");
    var seen = null, live = true, following = {};
    function load() {
      return call("/ui/parts/runs/" + encodeURIComponent(id)).then(function (response) {
        if (!response.ok) return problem(response).then(say);
        // HTML rendered and escaped by the server (render_report_body)
        return response.text().then(function (html) { content.innerHTML = html; tick(); });
      });
    }
    function follow(index) {
      if (following[index]) return;
      following[index] = true;
      call("/runs/" + encodeURIComponent(id) + "/logs/" + (index + 1)).then(function (response) {
        if (!response.ok || !response.body) { following[index] = false; return; }
        var reader = response.body.getReader(), decoder = new TextDecoder(), text = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) return;
            text = (text + decoder.decode(chunk.value, {stream: true})).slice(-8192);
            var pre = document.getElementById("tail-" + index);
            if (pre) pre.textContent = text.replace(ANSI, "").split("\n").slice(-80).join("\n");
            return pump();
          });
        }
        return pump();
      }).catch(function () { following[index] = false; });
    }
    function poll() {
      call("/status/" + encodeURIComponent(id)).then(function (response) {
        if (!response.ok) { return problem(response).then(say); }
        return response.json().then(function (record) {
          var log = record.log || [];
          var signature = record.status + "|" + log.map(function (e) { return e.status; }).join(",");
          var loaded = signature !== seen ? load() : Promise.resolve();
          seen = signature;
          live = record.status === "running" || record.status === "pending";
          body.setAttribute("data-status", record.status);
          return loaded.then(function () {
            log.forEach(function (entry, index) { if (entry.status === "running") follow(index); });
            if (live) setTimeout(poll, 1000);
          });
        });
      }).catch(function (error) {
        if (error.message === "unauthorized") return;
        say("Lost contact with the server (" + error.message + "); trying again.");
        setTimeout(function () { say(""); poll(); }, 2000);
      });
    }
    function tick() {
      if (!live) return;
      var now = Date.now();
      var elapsed = document.getElementById("run-elapsed");
      var started = elapsed && Number(elapsed.getAttribute("data-started-ms"));
      if (started) elapsed.textContent = since(now - started) + " so far";
      document.querySelectorAll("tr.running[data-started-ms]").forEach(function (row) {
        var cell = row.querySelector("td.duration");
        var at = Number(row.getAttribute("data-started-ms"));
        if (cell && at) cell.textContent = "running " + since(now - at);
      });
    }
    setInterval(tick, 1000);
    poll();
  }

  function listPage() {
    var runs = document.getElementById("runs");
    var form = document.getElementById("start");
    var pick = document.getElementById("start-name");
    var filter = document.getElementById("filter-workflow");
    function load() {
      // the filters of this page's own address: never a token
      return call("/ui/parts/runs" + location.search).then(function (response) {
        if (!response.ok) return problem(response).then(say);
        return response.text().then(function (html) {
          runs.innerHTML = html;  // rendered and escaped by the server (runs_table)
          var table = runs.querySelector("table.runs");
          if (table && table.getAttribute("data-live") === "1") setTimeout(load, 2000);
        });
      });
    }
    function workflows() {
      return call("/workflows").then(function (response) {
        if (!response.ok) return problem(response).then(say);
        return response.json().then(function (list) {
          var chosen = filter.getAttribute("data-chosen") || "";
          pick.textContent = "";
          if (filter.options.length <= 1) {
            list.forEach(function (w) {
              var option = document.createElement("option");
              option.value = w.name; option.textContent = w.name; option.selected = w.name === chosen;
              filter.appendChild(option);
            });
          }
          list.forEach(function (w) {
            var option = document.createElement("option");
            option.value = w.name; option.textContent = w.name + (w.description ? " — " + w.description : "");
            pick.appendChild(option);
          });
          form.hidden = false;
        });
      });
    }
    function lines(id) {
      return document.getElementById(id).value.split("\n").map(function (l) { return l.trim(); })
        .filter(function (l) { return l; });
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var error = document.getElementById("start-error");
      error.textContent = "";
      var vars = {}, bad = null;
      document.getElementById("start-vars").value.split("\n").forEach(function (line, n) {
        if (!line.trim()) return;
        var at = line.indexOf("=");
        if (at < 1) { bad = bad || ("vars line " + (n + 1) + ": expected KEY=VALUE"); return; }
        vars[line.slice(0, at).trim()] = line.slice(at + 1);
      });
      if (bad) { error.textContent = bad; return; }
      var request = {vars: vars, only: lines("start-only"), skip: lines("start-skip")};
      call("/start?name=" + encodeURIComponent(pick.value), {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(request)
      }).then(function (response) {
        if (response.status === 202) {
          return response.json().then(function (data) { location.assign("/ui/runs/" + encodeURIComponent(data.run_id)); });
        }
        return problem(response).then(function (text) { error.textContent = text; });
      }).catch(function (e) { if (e.message !== "unauthorized") error.textContent = e.message; });
    });
    if (!tokenMode) {
      var table = runs.querySelector("table.runs");
      if (table && table.getAttribute("data-live") === "1") setTimeout(load, 2000);
      workflows();
    } else {
      load().then(workflows);
    }
  }

  withToken(body.getAttribute("data-page") === "run" ? runPage : listPage);
})();
"""


def dashboard_csp(nonce: str) -> str:
    """The pages' Content-Security-Policy: only their own script and style (this response's
    nonce), requests to this server only, no framing, no plugins, no forms elsewhere."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def _dashboard_document(
    nonce: str, title: str, page: str, token_required: bool, content: str, extra_attrs: str = ""
) -> str:
    token_attr = "required" if token_required else "none"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f'<title>{html_text(title)}</title><style nonce="{nonce}">{_REPORT_CSS}{_DASHBOARD_CSS}</style></head>\n'
        f'<body data-page="{page}" data-token="{token_attr}"{extra_attrs}>\n'
        '<nav class="top"><span class="brand">orchestrate</span><a href="/">runs</a>'
        '<a href="/docs">API</a></nav>\n'
        '<div id="note" role="status" hidden></div>\n'
        '<div id="auth" hidden><p id="auth-message"></p><label>API token '
        '<input id="token" type="password" autocomplete="off" spellcheck="false"></label> '
        '<button id="token-use" type="button">Use token</button></div>\n'
        f'{content}\n<script nonce="{nonce}">{_DASHBOARD_JS}</script>\n</body></html>\n'
    )


_NEEDS_SCRIPT = (
    '<noscript><p class="problem">This server needs its API token, which the page can only send '
    "with JavaScript: turn it on, or use the API (README: HTTP API).</p></noscript>"
)


def runs_table(rows: Sequence[Mapping[str, Any]], filtered: bool = False) -> str:
    """The runs as an HTML table, newest first, as GET /runs lists them (escaped)."""
    if not rows:
        return f'<p class="empty">{"No runs match these filters." if filtered else "No runs yet."}</p>'
    live = any(row.get("status") in ("pending", "running") for row in rows)
    out = [
        f'<table class="runs" data-live="{1 if live else 0}"><thead><tr><th>Run</th><th>Workflow</th>'
        "<th>Status</th><th>Started</th><th>Duration</th><th>Trigger</th><th>Message</th></tr></thead><tbody>"
    ]
    for row in rows:
        run_id = html_text(row.get("run_id"))
        if "unreadable" in row:
            out.append(
                f'<tr class="unreadable"><td><code>{run_id}</code></td>'
                f'<td colspan="6" class="message">unreadable: {html_text(row["unreadable"])}</td></tr>'
            )
            continue
        status = str(row.get("status") or "pending")
        kind = status if status in _STATUS_MARKS else "pending"
        duration = row.get("duration_s")
        took = (
            format_duration(float(duration))
            if isinstance(duration, (int, float)) and not isinstance(duration, bool)
            else "-"
        )
        trigger = row.get("trigger") if isinstance(row.get("trigger"), Mapping) else {}
        out.append(
            f'<tr class="{kind}" data-run-id="{run_id}"><td><a href="/ui/runs/{run_id}"><code>{run_id}</code></a></td>'
            f'<td>{html_text(row.get("workflow"))}</td><td class="status {kind}">{html_text(status_label(kind))}</td>'
            f"<td>{html_text(_iso_text(row.get('started_at')) if row.get('started_at') else '-')}</td>"
            f"<td>{html_text(took)}</td><td>{html_text((trigger or {}).get('source') or '?')}</td>"
            f'<td class="message">{html_text(row.get("message") or "")}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def dashboard_page(
    nonce: str,
    token_required: bool,
    workflows: Sequence[str],
    workflow: str | None,
    status: str | None,
    runs_html: str | None,
) -> str:
    """`/`: the filters, the start form (shown by the script: it posts JSON) and the runs
    (`runs_html`; None when the script fetches them with the token)."""
    options = "".join(
        f'<option value="{html_text(w)}"{" selected" if w == workflow else ""}>{html_text(w)}</option>'
        for w in workflows
    )
    statuses = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in RUN_STATUSES)
    content = (
        "<main><h1>Runs</h1>"
        '<form class="filters" method="get" action="/">'
        f'<label>Workflow <select id="filter-workflow" name="workflow" data-chosen="{html_text(workflow or "")}">'
        f'<option value="">all</option>{options}</select></label>'
        f'<label>Status <select name="status"><option value="">all</option>{statuses}</select></label>'
        '<button type="submit">Filter</button></form>'
        '<form id="start" hidden><h2>Start a workflow</h2><div class="fields">'
        '<label>Workflow <select id="start-name" required></select></label>'
        '<label>vars (KEY=VALUE, one a line) <textarea id="start-vars" spellcheck="false"></textarea></label>'
        '<label>only these steps (one a line) <textarea id="start-only" spellcheck="false"></textarea></label>'
        '<label>skip these steps (one a line) <textarea id="start-skip" spellcheck="false"></textarea></label>'
        '</div><button type="submit">Start</button><output id="start-error"></output></form>'
        f'<div id="runs">{runs_html if runs_html is not None else _NEEDS_SCRIPT}</div></main>'
    )
    return _dashboard_document(nonce, "orchestrate: runs", "list", token_required, content)


def run_page(nonce: str, token_required: bool, run_id: str, body_html: str | None) -> str:
    """`/ui/runs/{run_id}`: the run's report (`body_html`; None when the script fetches it
    with the token), kept current by the script while the run goes on."""
    content = f'<main id="content">{body_html if body_html is not None else _NEEDS_SCRIPT}</main>'
    return _dashboard_document(
        nonce, f"orchestrate: run {run_id}", "run", token_required, content, f' data-run-id="{html_text(run_id)}"'
    )


def _dashboard_response(text: str, nonce: str, status_code: int = 200) -> Any:
    """A dashboard page or part, with the headers that keep it from being framed, sniffed,
    cached or given scripts other than its own (the nonce)."""
    from fastapi.responses import HTMLResponse

    return HTMLResponse(
        text,
        status_code=status_code,
        headers={
            "Content-Security-Policy": dashboard_csp(nonce),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
        },
    )


def _new_nonce() -> str:
    import base64

    return base64.b64encode(os.urandom(18)).decode("ascii")


def _dashboard_filters(workflow: str | None, status: str | None) -> tuple[str | None, str | None]:
    """The list's filters, checked (400 for a bad workflow name or an unknown status)."""
    from fastapi import HTTPException

    try:
        workflow = check_workflow_name(_check_text(workflow, "workflow name")) if workflow else None
    except (UsageError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    if status and status not in RUN_STATUSES:
        raise HTTPException(status_code=400, detail=f"status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
    return workflow, status or None


def _dashboard_run_body(store: RunStore, root: Path, workflows_dir: Path, run_id: str) -> str:
    """One run's report body (as `orchestrate report` draws it), its logs linked to the API."""
    from fastapi import HTTPException

    try:
        check_run_id(_check_text(run_id, "run id"))
    except (UsageError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    try:
        record = store.load(run_id)
    except UsageError:
        raise HTTPException(status_code=404, detail=f"unknown run '{run_id}'") from None
    except OrchestrateError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from None
    paths = Paths(root=root, workflows_dir=workflows_dir, runs_dir=store.runs_dir)
    inputs = gather_report_inputs(record, store, None, _workflow_masker(paths, record))
    inputs["log_links"] = {i: f"/runs/{quote_path(run_id)}/logs/{i + 1}" for i in inputs.get("tails", {})}
    return render_report_body(record, **inputs)


def _dashboard_runs_html(store: RunStore, workflow: str | None, status: str | None, limit: int) -> str:
    rows = store.summaries(workflow=workflow, status=status, limit=limit)
    return runs_table(rows, filtered=bool(workflow or status))


def dashboard_list_view(
    store: RunStore, workflows_dir: Path, token_required: bool, workflow: str | None, status: str | None
) -> Any:
    """GET /: the list of runs (filled in by the page's script when a token is needed)."""
    from fastapi import HTTPException

    nonce = _new_nonce()
    try:
        chosen, state = _dashboard_filters(workflow, status)
    except HTTPException as exc:
        problem = f'<p class="problem">{html_text(exc.detail)}</p>'
        return _dashboard_response(dashboard_page(nonce, token_required, [], None, None, problem), nonce, 400)
    names = [] if token_required else [n for n, _ in list_workflows(workflows_dir)]
    runs_html = None if token_required else _dashboard_runs_html(store, chosen, state, 50)
    return _dashboard_response(dashboard_page(nonce, token_required, names, chosen, state, runs_html), nonce)


def dashboard_run_view(store: RunStore, root: Path, workflows_dir: Path, token_required: bool, run_id: str) -> Any:
    """GET /ui/runs/{run_id}: one run's page (its report fetched by the script with a token)."""
    from fastapi import HTTPException

    nonce = _new_nonce()
    if token_required:
        try:
            check_run_id(_check_text(run_id, "run id"))
        except (UsageError, ValueError) as exc:
            return _dashboard_response(
                run_page(nonce, True, "?", f'<p class="problem">{html_text(exc)}</p>'), nonce, 400
            )
        return _dashboard_response(run_page(nonce, True, run_id, None), nonce)
    try:
        return _dashboard_response(
            run_page(nonce, False, run_id, _dashboard_run_body(store, root, workflows_dir, run_id)), nonce
        )
    except HTTPException as exc:
        problem = f'<p class="problem">{html_text(exc.detail)}</p>'
        return _dashboard_response(run_page(nonce, False, run_id, problem), nonce, exc.status_code)


def register_dashboard(
    app: Any, api: Any, store: RunStore, root: Path, workflows_dir: Path, token_required: bool
) -> None:
    """The dashboard's routes: the pages on `app` (they hold data only without a token) and
    the parts the pages fetch on `api` (behind the token like every other endpoint)."""
    from fastapi import Query

    @app.get("/", include_in_schema=False)
    def dashboard(workflow: str | None = Query(None), status: str | None = Query(None)) -> Any:
        return dashboard_list_view(store, workflows_dir, token_required, workflow, status)

    @app.get("/ui/runs/{run_id}", include_in_schema=False)
    def run_view(run_id: str) -> Any:
        return dashboard_run_view(store, root, workflows_dir, token_required, run_id)

    @api.get("/ui/parts/runs", include_in_schema=False)
    def runs_part(
        workflow: str | None = Query(None), status: str | None = Query(None), limit: int = Query(50, ge=1, le=1000)
    ) -> Any:
        chosen, state = _dashboard_filters(workflow, status)
        return _dashboard_response(_dashboard_runs_html(store, chosen, state, limit), _new_nonce())

    @api.get("/ui/parts/runs/{run_id}", include_in_schema=False)
    def run_part(run_id: str) -> Any:
        return _dashboard_response(_dashboard_run_body(store, root, workflows_dir, run_id), _new_nonce())


def quote_path(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def serve(
    host: str,
    port: int,
    max_parallel: int,
    root: Path,
    workflows_dir: Path,
    runs_dir: Path,
    allowed_hosts: Sequence[str] = (),
    max_queued: int = MAX_QUEUED_RUNS,
) -> None:
    """Run the HTTP API in the foreground until Ctrl-C."""
    token = os.environ.get(API_TOKEN_ENV) or None
    bind = parse_bind_host(host)
    HostPolicy.build(bind, port, allowed_hosts)  # a bad --allowed-host is a usage error now
    if not _is_loopback_host(bind.address) and token is None:
        raise UsageError(
            f"refusing to serve on {host}: anyone who can reach it could start workflows. "
            f"Set {API_TOKEN_ENV} (clients then send 'Authorization: Bearer <token>') "
            f"or keep the default --host 127.0.0.1"
        )
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise OrchestrateError(
            f"orchestrate serve needs the 'server' extra ({exc.name} is missing): {SERVER_EXTRA_HINT}"
        ) from None
    sock = _listen(bind, port)
    app = create_app(
        root,
        workflows_dir,
        runs_dir,
        max_parallel=max_parallel,
        token=token,
        host=host,
        port=port,
        allowed_hosts=allowed_hosts,
        max_queued=max_queued,
    )
    print(
        f"orchestrate serve: http://{bind.url_host}:{port} (API docs at /docs), "
        f"at most {max_parallel} run(s) at once, "
        f"{'bearer token required' if token else 'no token (loopback only)'}",
        file=sys.stderr,
    )
    config = uvicorn.Config(
        app,
        log_level="info",
        http=_bounded_protocol(),
        # a client following a log must not hold a Ctrl-C'd server open for long
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_REQUEST_HEADERS,
    )
    uvicorn.Server(config).run(sockets=[sock])


# === 13. CLI and main ===

# The Typer app is built on first use (``orchestrate.app``, or any command line main() does
# not take itself): importing Typer costs more than the rest of a run put together, and a git
# hook pays start-up on every push. main() reads the everyday ``run`` command line itself, with
# the same options and the same checks (tests/test_cli.py holds the two to parity), and hands
# everything else — help, other commands, anything unusual, every error — to Typer.


@dataclass
class Paths:
    """Where the project root, its workflows and its run records are."""

    root: Path
    workflows_dir: Path
    runs_dir: Path


_MESSAGE_CONTROL_RE = lazy_regex(r"[\x00-\x08\x0a-\x1f\x7f]")


def _err(text: str) -> None:
    """One line on stderr: control characters a message quotes from a file or an argument
    (a newline, an ANSI or OSC escape in a key name) are shown escaped, never acted on."""
    text = _MESSAGE_CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_workflow_command(paths: Paths, name: str, options: RunOptions) -> int:
    """`orchestrate run`: load, validate, then run or plan. Returns the exit code."""
    human = sys.stderr if options.json_output else sys.stdout
    settings = load_settings(paths.root)
    # git works while the workflow is read (a dry run needs no git)
    git_calls = None if options.dry_run else RunGitCalls(paths.root, options)
    try:
        if git_calls is not None:
            name = git_calls.workflow_name(name)
        if options.vars_from_http:
            options.variables = read_http_variables(sys.stdin.buffer)
        workflow = load_workflow(name, paths.workflows_dir, interpolation_values(options), settings, paths.root)
        if options.vars_from_http:  # the server checked them; a run checks what it is given itself
            check_http_variables(workflow, options.variables)
    except BaseException:
        if git_calls is not None:
            git_calls.close()
        raise
    if options.resume_of is not None:
        resume_point(options.resume_of, workflow)  # before anything is written
    for warning in workflow.warnings:
        _err(f"orchestrate: warning: {warning}")
    store = RunStore(paths.runs_dir)
    if options.dry_run:
        return print_plan(workflow, settings, paths, store, options, human)
    early = prepare_git_state(paths, workflow, options, calls=git_calls)
    if early is not None:
        return early
    checkout = None
    if wants_pushed_checkout(settings, options):
        checkout, paths, settings, workflow = enter_pushed_checkout(paths, workflow, settings, options, human)
    try:
        trigger = build_trigger(paths.root, options)
        wiring = run_wiring(workflow, settings, options, human, paths)
        if options.html_report is not None:
            wiring.sinks.append(HtmlReportSink(options.html_report, store))
        record, code = execute_run(workflow, settings, paths.root, store, options, wiring, trigger)
    finally:
        if checkout is not None:
            remove_pushed_worktree(checkout)
    if options.json_output:
        sys.stdout.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    if record.get("internal_error"):
        _err(
            f"orchestrate: {record['message']} (a bug, not a step failure): please report it with "
            f"the traceback above; exit code 3"
        )
    return code


def cmd_resume(paths: Paths, run_ref: str, options: RunOptions) -> int:
    """`orchestrate resume RUN`: a new run of RUN's workflow that starts again from RUN's first
    failed step; the steps above it that passed are re-used when nothing they depend on
    changed (ResumePlan). --only, --skip, --keep-going and --shard default to RUN's."""
    store = RunStore(paths.runs_dir)
    record = store.load(resolve_run_ref(store, run_ref))
    resume_point(record)
    stored: dict[str, Any] = record["options"] if isinstance(record.get("options"), dict) else {}
    if not options.only and not options.skip:
        options.only = [s for s in stored.get("only") or [] if isinstance(s, str)]
        options.skip = [s for s in stored.get("skip") or [] if isinstance(s, str)]
    options.keep_going = options.keep_going or stored.get("keep_going") is True
    if options.shard is None and isinstance(stored.get("shard"), str):
        options.shard = parse_shard(stored["shard"])
    options.resume_of = record
    return run_workflow_command(paths, str(record.get("workflow")), options)


def run_wiring(
    workflow: Workflow, settings: Settings, options: RunOptions, human: Any, paths: Paths | None = None
) -> RunWiring:
    """Everything a run consults and who hears of it, in one place (see RunWiring)."""
    jobs = options.jobs or default_jobs(settings)
    output = options.output or ("grouped" if jobs > 1 and StepGraph(workflow.steps).parallel else "live")
    console = Console(quiet=options.quiet, stream=human, debug=options.debug, ci=detect_ci_output(), output=output)
    wiring = RunWiring(gates=[git_gate], env_hooks=[git_step_environment], sinks=[console, GitHubStepSummary()])
    if paths is not None:  # what each step's inputs are, `sources` steps up to date, resume
        state = options.git if isinstance(options.git, GitState) else None
        inputs = StepInputs(workflow, paths.root, RunStore(paths.runs_dir), state.git if state else None)
        wiring.gates.append(inputs.gate)
        wiring.entry_fields.append(inputs.entry_fields)
        wiring.sinks.append(inputs)
        if options.resume_of is not None:
            plan = ResumePlan(options.resume_of, inputs)
            wiring.reuse.append(plan.reuse)
            wiring.entry_fields.append(plan.entry_fields)
    return wiring


def print_plan(
    workflow: Workflow, settings: Settings, paths: Paths, store: RunStore, options: RunOptions, out: Any
) -> int:
    plan = plan_run(workflow, settings, paths.root, store, options)
    out.write(f"{workflow.name} ({workflow.display_path}): {plural(len(plan), 'step')} — dry run, nothing will run\n")
    for number, item in enumerate(plan, start=1):
        when = f", when {item['when']}" if item["when"] != "success" else ""
        out.write(
            f"  [{number}/{len(plan)}] {item['step']} ({item['type']}{when})"
            + (f": skipped — {item['skip']}" if item["skip"] else "")
            + "\n"
        )
        for line in item["commands"]:
            out.write(f"        {line}\n")
        for warning in item["warnings"]:
            out.write(f"        warning: {warning}\n")
    if options.json_output:
        sys.stdout.write(json.dumps({"workflow": workflow.name, "dry_run": True, "plan": plan}, indent=2) + "\n")
    out.flush()
    return EXIT_OK


def check_init_target(root: Path, folder: Path, name: str, option: str) -> None:
    """`init` never creates a file through a symbolic link leading outside the root: a folder
    under the root that resolves elsewhere, or a link at the file's own name. (A folder given
    outside the root with --workflows-dir/--runs-dir is the user's explicit choice.)"""
    real_root = os.path.realpath(root)
    inside = _inside(os.path.normpath(folder), os.path.normpath(root))
    if inside and not _inside(os.path.realpath(folder), real_root):
        shown = os.path.relpath(folder, root)
        raise UsageError(
            f"{shown} leads outside the project root (to {os.path.realpath(folder)}); "
            f"orchestrate init does not create files through it: remove the link, or pass "
            f"{option} {os.path.realpath(folder)}"
        )
    target = folder / name
    if os.path.islink(target) and not _inside(
        os.path.realpath(target), real_root if inside else os.path.realpath(folder)
    ):
        shown = os.path.relpath(target, root) if inside else str(target)
        raise UsageError(
            f"{shown} is a symbolic link to {os.path.realpath(target)}, outside the project "
            f"root; orchestrate init does not write through it: remove the link"
        )


_INIT_WORKFLOW = {
    "name": "pre-push",
    "description": "Checks run before every git push",
    # independent checks run at once ("needs": []); see README "Steps in parallel"
    "steps": [
        {
            "name": "lint",
            "type": "command",
            "needs": [],
            "run": ["python3", "-c", "print('replace me with your linter, e.g. ruff check .')"],
        },
        {
            "name": "tests",
            "type": "command",
            "needs": [],
            "run": ["python3", "-c", "print('replace me with your tests, e.g. pytest -q')"],
        },
    ],
}


# what the CI templates in hooks/ run (`orchestrate run ci`)
_INIT_CI_WORKFLOW = {
    "name": "ci",
    "description": "Checks the CI job runs (hooks/github-actions.yml, gitlab-ci.yml, Jenkinsfile)",
    "steps": [
        {"name": "hello", "type": "command", "run": ["python3", "-c", "print('replace me with your CI checks')"]},
    ],
}


def scaffold_project(paths: Paths, ci: bool = False) -> list[Path]:
    """`orchestrate init`: workflows/pre-push.json (and workflows/ci.json with ci) and
    runs/.gitignore. Never over a file that exists, never through a symbolic link leading
    outside the root (everything is checked before anything is written). Returns what it created."""
    workflows = [("pre-push", _INIT_WORKFLOW)] + ([("ci", _INIT_CI_WORKFLOW)] if ci else [])
    files = [
        (paths.workflows_dir, f"{name}.json", "--workflows-dir", 0o755, json.dumps(document, indent=2) + "\n")
        for name, document in workflows
    ]
    files.append(
        (
            paths.runs_dir,
            ".gitignore",
            "--runs-dir",
            RUNS_DIR_MODE,
            "# run records are local state, never committed\n*\n!.gitignore\n",
        )
    )
    for folder, name, option, _mode, _text in files:
        check_init_target(paths.root, folder, name, option)
    created = []
    for folder, name, _option, mode, text in files:
        folder.mkdir(mode=mode, parents=True, exist_ok=True)
        target = folder / name
        if os.path.lexists(target):
            continue
        try:  # O_EXCL: never through a link, never over a file made meanwhile
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        created.append(target)
    return created


def find_project_root(start: Path) -> Path:
    """The project root for a command run without --root, found as git finds its top level:
    the nearest folder from `start` up that has workflows/ or orchestrate.json, never above
    the git repository's top level (the first folder up with .git). Outside a repository, or
    with no such folder in it, `start` itself."""
    found: Path | None = None
    for folder in (start, *start.parents):
        if found is None and ((folder / "workflows").is_dir() or (folder / "orchestrate.json").is_file()):
            found = folder
        if (folder / ".git").exists():
            return found or start
    return start


def _workflow_masker(paths: Paths, record: Mapping[str, Any]) -> Masker | None:
    """The secrets of the run's workflow as it is defined now, to mask logs read back (they
    were masked when written; a workflow that no longer loads is no reason to refuse)."""
    try:
        workflow = load_workflow(
            str(record.get("workflow")), paths.workflows_dir, dict(os.environ), load_settings(paths.root), paths.root
        )
    except OrchestrateError:
        return None
    return Masker(workflow.secrets)


def make_paths(root: Path | str | None, workflows_dir: Path | str | None, runs_dir: Path | str | None) -> Paths:
    base = (Path(root) if root else find_project_root(Path.cwd())).absolute()
    return Paths(
        root=base,
        workflows_dir=(Path(workflows_dir) if workflows_dir else base / "workflows").absolute(),
        runs_dir=(Path(runs_dir) if runs_dir else base / "runs").absolute(),
    )


def make_run_options(
    *,
    dry_run: bool = False,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    keep_going: bool = False,
    quiet: bool = False,
    json_output: bool = False,
    debug: bool = False,
    var: Sequence[str] = (),
    junit_xml: Path | str | None = None,
    shard: str | None = None,
    git_hook: str | None = None,
    push_remote: str | None = None,
    push_url: str | None = None,
    from_ref: str | None = None,
    to_ref: str | None = None,
    run_id: str | None = None,
    jobs: str | int | None = None,
    output: str | None = None,
    vars_stdin: bool = False,
    isolated: bool = False,
    html_report: Path | str | None = None,
    force: bool = False,
    workflow_from_git_config: bool = False,
) -> RunOptions:
    """The checked options of `orchestrate run`, from either command-line parser."""
    check_run_modes(git_hook, output, vars_stdin, var)
    return RunOptions(
        dry_run=dry_run,
        only=list(only),
        skip=list(skip),
        keep_going=keep_going,
        quiet=quiet,
        json_output=json_output,
        debug=debug,
        variables=parse_vars(var),
        junit_xml=Path(junit_xml) if junit_xml is not None else None,
        shard=parse_shard(shard) if shard is not None else None,
        git_hook=git_hook,
        from_ref=from_ref,
        to_ref=to_ref,
        push_remote=push_remote,
        push_url=push_url,
        run_id=check_run_id(run_id) if run_id else None,
        jobs=parse_jobs(jobs) if jobs is not None else None,
        output=output,
        vars_from_http=vars_stdin,
        isolated=isolated,
        # checked before the run: a report path it could never write is a usage error
        html_report=check_report_target(Path(html_report), "--html-report") if html_report is not None else None,
        force=force,
        workflow_from_git_config=workflow_from_git_config,
    )


def check_run_modes(git_hook: str | None, output: str | None, vars_stdin: bool, var: Sequence[str]) -> None:
    """The options make_run_options checks before it converts any value: a known --git-hook and
    --output, and --vars-stdin alone (stdin cannot also carry git's ref lines)."""
    if git_hook is not None and git_hook != "pre-push":
        raise UsageError(f"--git-hook {git_hook!r}: only 'pre-push' is supported")
    if output is not None and output not in Console.MODES:
        raise UsageError(
            f"--output {output!r}: expected one of {', '.join(Console.MODES)}{did_you_mean(output, Console.MODES)}"
        )
    if vars_stdin and (git_hook is not None or var):
        raise UsageError("--vars-stdin reads the variables from stdin: it cannot be combined with --var or --git-hook")


def parse_jobs(value: str | int) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_JOBS:
        raise UsageError(f"--jobs {value!r}: expected a number of steps at once, 1 to {MAX_JOBS}")
    return int(text)


_RUN_ID_PREFIX_RE = lazy_regex(r"\A[0-9A-Za-z][0-9A-Za-z-]{0,63}\Z")


def resolve_run_ref(store: RunStore, ref: str) -> str:
    """The run id `status` and `logs` mean: an id, "latest", or the unique run whose id
    starts with `ref` (`20261127T1540`, or the random tail `1a2b3c`)."""
    if ref == "latest":
        latest = next(store.newest_ids(), None)
        if latest is None:
            raise UsageError(f"no runs yet in {store.runs_dir} (start one: orchestrate run NAME)")
        return latest
    if RUN_ID_RE.match(ref or "") and store.record_path(ref).exists():
        return ref  # a whole id: no listing (10,000 runs took 16 ms to list)
    ids = store.list_ids()
    if ref in ids:
        return ref
    if not _RUN_ID_PREFIX_RE.match(ref or ""):
        return check_run_id(ref)  # raises: not a run id
    matches = [run_id for run_id in ids if run_id.startswith(ref) or run_id.endswith("-" + ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
        raise UsageError(
            f"run {ref!r} is ambiguous: {plural(len(matches), 'run')} match ({shown}); give more of the id"
        )
    if re.fullmatch(r"\d{8}T\d{9}Z-[0-9a-f]{6}", ref):
        return ref  # a whole id of a run that does not exist: the store says so
    raise UsageError(f"no run id in {store.runs_dir} starts with {ref!r} (see: orchestrate runs)")


def guarded(
    func: Callable[..., int | None], *args: Any, passthrough: tuple[type[BaseException], ...] = (), **kwargs: Any
) -> int:
    """The one place domain errors become one-line messages and exit codes."""
    try:
        return func(*args, **kwargs) or EXIT_OK
    except passthrough:
        raise
    except OrchestrateError as exc:
        _err(f"orchestrate: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("orchestrate: interrupted")
        return EXIT_SIGINT
    except BrokenPipeError:
        if stdout_reader_left():  # `orchestrate runs | head`: not an error, nothing to say
            return stdout_gone()
        raise
    except Exception:
        import traceback

        traceback.print_exc()
        _err(
            "orchestrate: internal error (a bug, not a step failure): please report it "
            "with the traceback above; exit code 3"
        )
        return EXIT_INTERNAL


# === 13.1. Commands: each does its work and returns a CommandResult; render() prints it ===


@dataclass
class CommandResult:
    """What a command did: `data` is what --json prints; `out` the lines for a person, in
    order, each for stdout (1) or stderr (2); `stream`, when set, writes output too large for
    lines (a step's whole log) after them."""

    data: Any = None
    out: list[tuple[int, str]] = field(default_factory=list)
    exit_code: int = EXIT_OK
    stream: Callable[[], None] | None = None

    def say(self, text: str) -> None:
        self.out.append((1, text))

    def warn(self, text: str) -> None:
        self.out.append((2, f"orchestrate: warning: {text}"))

    def error(self, text: str) -> None:
        self.out.append((2, f"orchestrate: error: {text}"))


def render(result: CommandResult, json_output: bool = False) -> int:
    """The one place a command's result is printed: as JSON (`data`, on stdout; what is said
    on stderr still goes there) or as text. Returns the exit code."""
    for fd, text in result.out:
        if fd == 2:
            _err(text)
        elif not json_output:
            sys.stdout.write(text + "\n")
    if json_output:
        sys.stdout.write(json.dumps(result.data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    if result.stream is not None:
        result.stream()
    return result.exit_code


def cmd_validate(paths: Paths, names: Sequence[str] = (), var: Sequence[str] = ()) -> CommandResult:
    """`orchestrate validate [NAME...]`: check definitions; warn about what is missing on disk."""
    result = CommandResult(data=[])
    variables = {**os.environ, **parse_vars(var)}
    settings = load_settings(paths.root)
    chosen = list(names) or [n for n, _ in list_workflows(paths.workflows_dir)]
    if not chosen:
        raise UsageError(f"no workflows in {paths.workflows_dir} (try: orchestrate init)")
    store = RunStore(paths.runs_dir)
    for name in chosen:
        try:
            workflow = load_workflow(name, paths.workflows_dir, variables, settings, paths.root)
        except OrchestrateError as exc:
            result.error(str(exc))
            result.data.append({"workflow": name, "ok": False, "error": str(exc)})
            result.exit_code = EXIT_USAGE
            continue
        plan = plan_run(workflow, settings, paths.root, store, RunOptions(variables=parse_vars(var)))
        warnings = workflow.warnings + [
            f'{workflow.display_path}: steps[{i}] "{item["step"]}": {w}'
            for i, item in enumerate(plan)
            for w in item["warnings"]
        ]
        for warning in warnings:
            result.warn(warning)
        result.say(
            f"{workflow.display_path}: ok ({plural(len(workflow.steps), 'step')}"
            + (f", {plural(len(warnings), 'warning')}" if warnings else "")
            + ")"
        )
        result.data.append({"workflow": name, "ok": True, "steps": len(workflow.steps), "warnings": warnings})
    return result


def cmd_list(paths: Paths) -> CommandResult:
    """`orchestrate list`: the workflows with their step count and description."""
    found = list_workflows(paths.workflows_dir)
    result = CommandResult(data=[])
    if not found:
        result.say(f"no workflows in {paths.workflows_dir} (try: orchestrate init)")
        return result
    width = max(len(n) for n, _ in found)
    settings = load_settings(paths.root)
    for name, path in found:
        try:  # the checks `validate` makes: a file that parses but would not run is invalid too
            workflow = load_workflow(name, paths.workflows_dir, dict(os.environ), settings, paths.root)
            description = parse_json_file(path, name).get("description", "")
        except OrchestrateError:
            result.say(f"{name:<{width}}  {'invalid':>9}  (see: orchestrate validate {name})")
            result.data.append({"name": name, "valid": False})
            continue
        result.say(f"{name:<{width}}  {plural(len(workflow.steps), 'step'):>9}  {description}".rstrip())
        result.data.append({"name": name, "valid": True, "steps": len(workflow.steps), "description": description})
    return result


def cmd_status(paths: Paths, run_ref: str = "latest") -> CommandResult:
    """`orchestrate status [RUN]`: one run, its status, current step and every step's result."""
    store = RunStore(paths.runs_dir)
    record = store.load(resolve_run_ref(store, run_ref))
    result = CommandResult(data=record)
    result.say(
        f"run {record['run_id']}: {record.get('workflow')} — {record.get('status')}"
        + (f" (current: {record['current']})" if record.get("current") else "")
    )
    result.say(
        f"  started {record.get('started_at')}"
        + (
            f", finished {record['finished_at']} ({format_duration(record.get('duration_s'))})"
            if record.get("finished_at")
            else ""
        )
    )
    trigger = record.get("trigger") or {}
    git = trigger.get("git") or {}
    result.say(
        f"  trigger {trigger.get('source', '?')}"
        + (f", {git.get('branch') or 'detached'} @ {str(git.get('commit'))[:12]}" if git.get("commit") else "")
    )
    if record.get("message"):
        result.say(f"  {record['message']}")
    for row in render_step_table(record):
        result.say(row)
    return result


def cmd_runs(paths: Paths, workflow: str | None = None, status: str | None = None, limit: int = 20) -> CommandResult:
    """`orchestrate runs`: recent runs, newest first."""
    status = RUN_STATUS_ALIASES.get(status or "", status)
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(
            f"--status {status!r}: expected one of {', '.join(RUN_STATUSES)}{did_you_mean(status, RUN_STATUSES)}"
        )
    rows = RunStore(paths.runs_dir).summaries(workflow=workflow, status=status, limit=limit)
    result = CommandResult(data=rows)
    if not rows:
        result.say("no runs yet")
    for row in rows:
        if "unreadable" in row:
            result.say(f"{row['run_id']}  unreadable: {row['unreadable']}")
            continue
        result.say(
            f"{row['run_id']}  {row.get('status', '?'):<9}  {format_duration(row.get('duration_s')):>7}  "
            f"{row.get('workflow')}  ({(row.get('trigger') or {}).get('source', '?')})"
            + (f"  {row['message']}" if row.get("message") else "")
        )
    return result


def cmd_logs(paths: Paths, run_ref: str, step: str | None = None) -> CommandResult:
    """`orchestrate logs RUN [STEP]`: the full output of a run's steps, from their log files."""
    store = RunStore(paths.runs_dir)
    run_id = resolve_run_ref(store, run_ref)
    record = store.load(run_id)
    entries = [e for e in record.get("log") or [] if isinstance(e, dict)]
    chosen = entries
    if step is not None:
        entry = step_entry(record, step)
        if entry is None:
            names = [str(e.get("step")) for e in entries]
            raise UsageError(f"run {run_id} has no step {step!r}{did_you_mean(step, names)}; steps: {', '.join(names)}")
        chosen = [entry]
    result = CommandResult(data=[{"step": e.get("step"), "log_file": e.get("log_file")} for e in chosen])

    def stream() -> None:
        out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
        for entry in chosen:
            if len(chosen) > 1:
                sys.stdout.write(f"=== {entry.get('step')} ({entry.get('status')}) ===\n")
            path = step_log_path(store, run_id, entry)
            if path is None:
                sys.stdout.write("(no output recorded)\n")
                continue
            with open(path, "rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    if out is not None:
                        sys.stdout.flush()
                        out.write(chunk)
                    else:
                        sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()

    result.stream = stream
    return result


def cmd_prune(paths: Paths, keep: int) -> CommandResult:
    """`orchestrate prune --keep N`: delete old finished runs, keeping the newest N."""
    removed = RunStore(paths.runs_dir).prune(keep)
    result = CommandResult(data={"removed": removed})
    result.say(f"removed {plural(len(removed), 'run')}")
    return result


def cmd_init(paths: Paths, ci: bool = False) -> CommandResult:
    """`orchestrate init [--ci]`: scaffold the sample workflows and runs/.gitignore."""
    created = scaffold_project(paths, ci)
    result = CommandResult(data={"created": [_display_path(p, paths.root) for p in created]})
    for path in created:
        result.say(f"created {_display_path(path, paths.root)}")
    if not created:
        wanted = ["workflows/pre-push.json", *(["workflows/ci.json"] if ci else []), "runs/.gitignore"]
        result.say(f"nothing to do: {', '.join(wanted[:-1])} and {wanted[-1]} exist")
    result.say(
        "next: orchestrate run pre-push   then: orchestrate hook install"
        + ("   in CI: orchestrate run ci" if ci else "")
    )
    return result


def cmd_hook_install(
    paths: Paths, hook: str = "pre-push", workflow: str | None = None, force: bool = False
) -> CommandResult:
    """`orchestrate hook install`: the hook where git looks for it."""
    change = install_hook(paths.root, hook, workflow, force)
    result = CommandResult(data={"path": str(change.path), "legacy": str(change.legacy) if change.legacy else None})
    result.say(change.message)
    result.say("skip it for one push with: git push --no-verify (or ORCHESTRATE_SKIP=1 git push)")
    return result


def cmd_hook_uninstall(paths: Paths, hook: str = "pre-push") -> CommandResult:
    """`orchestrate hook uninstall`: remove orchestrate's hook, restore the one it replaced."""
    change = uninstall_hook(paths.root, hook)
    result = CommandResult(data={"path": str(change.path)})
    result.say(change.message)
    return result


def cmd_hook_status(paths: Paths, hook: str = "pre-push") -> CommandResult:
    """`orchestrate hook status`: what git will run on push."""
    if hook not in SUPPORTED_HOOKS:
        render_hook(hook)  # the usage error with its suggestion
    info = hook_status(paths.root, hook)
    result = CommandResult(data=info)
    result.say(info["summary"])
    result.say(
        f"  hooks folder: {info['hooks_dir']}"
        + (f" (core.hooksPath = {info['core_hooks_path']})" if info["core_hooks_path"] else "")
    )
    return result


def cmd_report(paths: Paths, run_ref: str, html: Path | None = None) -> CommandResult:
    """`orchestrate report RUN [--html PATH]`: the run's self-contained HTML report."""
    store = RunStore(paths.runs_dir)
    record = store.load(resolve_run_ref(store, run_ref))
    target = write_html_report(record, store, html, _workflow_masker(paths, record))
    result = CommandResult(data={"run_id": record["run_id"], "path": str(target)})
    result.say(f"wrote {_display_path(target, paths.root)} (run {record['run_id']}, {record.get('status')})")
    return result


def stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, or not a file: nobody left
        return False


def stdout_gone() -> int:
    """End quietly after stdout's reader left, as a command killed by SIGPIPE does (`yes | head`):
    what is still buffered goes to /dev/null, so the interpreter's last flush does not print a
    BrokenPipeError traceback."""
    try:
        devnull_onto(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    return EXIT_SIGPIPE


def complete_workflow_name(incomplete: str) -> list[str]:
    """Shell completion of `orchestrate run <TAB>`: the workflows of the project found from
    the current folder (or $ORCHESTRATE_ROOT)."""
    paths = make_paths(os.environ.get("ORCHESTRATE_ROOT"), None, None)
    return [name for name, _ in list_workflows(paths.workflows_dir) if name.startswith(incomplete)]


# Every option of `run`, declared once for the three parsers that read them: Typer's `run` and
# `resume` (_with_run_options) and main()'s fast path (parse_fast_run). Each is (parameter of
# make_run_options, type, default, flags, the rest of its typer.Option), in `run --help` order.
_RUN_OPTIONS: tuple[tuple[str, Any, Any, tuple[str, ...], dict[str, Any]], ...] = (
    ("dry_run", bool, False, ("--dry-run",), {"help": "Validate and print the plan; run nothing."}),
    ("only", list[str], [], ("--only",), {"help": "Run only this step (repeatable)."}),
    ("skip", list[str], [], ("--skip",), {"help": "Skip this step (repeatable)."}),
    ("keep_going", bool, False, ("--keep-going",), {"help": "Run every step even after a failure; still exit 1."}),
    ("quiet", bool, False, ("--quiet", "-q"), {"help": "Only failing output and the summary."}),
    ("json_output", bool, False, ("--json",), {"help": "Print the final run record as JSON on stdout."}),
    ("debug", bool, False, ("--debug",), {"help": "Echo each command orchestrate runs."}),
    ("var", list[str], [], ("--var",), {"help": "KEY=VALUE for ${KEY} in the workflow (repeatable)."}),
    ("junit_xml", Path, None, ("--junit-xml",), {"help": "Also write the JUnit report here."}),
    (
        "shard",
        str,
        None,
        ("--shard",),
        {"envvar": "ORCHESTRATE_SHARD", "help": "I/N: run shard I of N of each Cypress suite."},
    ),
    ("git_hook", str, None, ("--git-hook",), {"help": "Hook mode (pre-push): read git's ref lines from stdin."}),
    ("push_remote", str, None, ("--push-remote",), {"help": "Remote name git passes to pre-push."}),
    ("push_url", str, None, ("--push-url",), {"help": "Remote URL git passes to pre-push."}),
    ("from_ref", str, None, ("--from-ref",), {"help": "Compare from this ref for when.changed (CI)."}),
    ("to_ref", str, None, ("--to-ref",), {"help": "Compare to this ref for when.changed (CI)."}),
    ("run_id", str, None, ("--run-id",), {"hidden": True, "help": "Adopt a pre-assigned run id (HTTP server)."}),
    (
        "jobs",
        str,
        None,
        ("--jobs", "-j"),
        {"help": 'Steps at once (default: "jobs" in orchestrate.json, else the number of CPUs); 1 runs them in order.'},
    ),
    (
        "output",
        str,
        None,
        ("--output",),
        {
            "help": "live, grouped (each step whole when it ends; the default when steps run in parallel) or prefixed (every line as it comes, 'name | ' in front)."
        },
    ),
    (
        "vars_stdin",
        bool,
        False,
        ("--vars-stdin",),
        {"hidden": True, "help": "Read ${NAME} values as a JSON object from stdin (HTTP server)."},
    ),
    (
        "isolated",
        bool,
        False,
        ("--isolated",),
        {
            "help": "Run in a temporary git worktree of the commit "
            "being checked (the pushed one, else HEAD), not the working tree."
        },
    ),
    (
        "html_report",
        Path,
        None,
        ("--html-report",),
        {"help": "Also write the run's HTML report here (a failed or interrupted run too)."},
    ),
    (
        "force",
        bool,
        False,
        ("--force",),
        {"envvar": "ORCHESTRATE_FORCE", "help": "Run every step, even those up to date (their `sources` unchanged)."},
    ),
    (
        "workflow_from_git_config",
        bool,
        False,
        ("--workflow-from-git-config",),
        {
            "help": "Run the workflow `git config orchestrate.prePushWorkflow` names, if any, instead of NAME "
            "(what the installed pre-push hook passes)."
        },
    ),
)


# `resume` takes run's options but --dry-run and --workflow-from-git-config, in this --help
# order, some with a help of their own (their default is what RUN did)
_RESUME_OPTIONS = (
    "only",
    "skip",
    "keep_going",
    "quiet",
    "json_output",
    "debug",
    "var",
    "junit_xml",
    "shard",
    "git_hook",
    "push_remote",
    "push_url",
    "from_ref",
    "to_ref",
    "run_id",
    "jobs",
    "output",
    "vars_stdin",
    "isolated",
    "force",
    "html_report",
)


_RESUME_HELP = {
    "only": "Run only this step (repeatable; default: as RUN did).",
    "skip": "Skip this step (repeatable; default: as RUN did).",
    "shard": "I/N: run shard I of N of each Cypress suite (default: as RUN did).",
    "jobs": "Steps at once (as on run).",
    "output": "live, grouped or prefixed (as on run).",
    "isolated": "Run in a temporary git worktree of the commit being checked (as on run).",
    "force": "Run every step again: re-use none, skip none as up to date.",
    "html_report": "Also write the run's HTML report here (as on run).",
}


def build_app() -> Any:
    """The Typer application: every command, its options and its --help text."""
    global typer  # the commands' annotations (typer.Context) are resolved in module globals
    import typer

    define_typing_names()
    app = _new_app()
    # in this order in `orchestrate --help` (the `hook` group comes after every command)
    _add_run_commands(app)
    _add_workflow_commands(app)
    _add_run_record_commands(app)
    _add_setup_commands(app)
    _add_serve_command(app)
    return app


def _new_app() -> Any:
    """The Typer app with no command yet: its help, the global options and --version."""
    from typer.core import TyperGroup

    class GlobalOptionsAnywhere(TyperGroup):
        """`orchestrate run pre-push --root ..` works as `orchestrate --root .. run pre-push`."""

        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, hoist_global_options(args))  # type: ignore[no-any-return]

    app = typer.Typer(
        name="orchestrate",
        cls=GlobalOptionsAnywhere,
        add_completion=True,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        help="Run a project's check-and-release workflow (workflows/<name>.json).\n\n"
        "Exit codes: 0 every step passed or was skipped; 1 a step failed; 2 usage or "
        "definition error (nothing ran); 3 internal error; 130/143 interrupted.",
    )

    @app.callback()
    def cli(
        ctx: typer.Context,
        root: Path = typer.Option(
            None,
            "--root",
            envvar="ORCHESTRATE_ROOT",
            help="Project root (default: the nearest folder up with workflows/ or "
            "orchestrate.json, within the git repository; else the current "
            "directory). Also accepted after the command.",
            show_default=False,
        ),
        workflows_dir: Path = typer.Option(
            None, "--workflows-dir", help="Folder of workflow files (default: ROOT/workflows)."
        ),
        runs_dir: Path = typer.Option(None, "--runs-dir", help="Folder of run records (default: ROOT/runs)."),
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ) -> None:
        """Run a project's check-and-release workflow from a git hook, a CI job or a terminal."""
        ctx.obj = make_paths(root, workflows_dir, runs_dir)

    return app


def _version_callback(value: bool) -> None:
    """`orchestrate --version` with other arguments (main() answers a lone --version itself)."""
    if value:
        typer.echo(f"orchestrate {__version__}")
        raise typer.Exit(0)


def _ctx_paths(ctx: typer.Context) -> Paths:
    """The Paths the app's callback made of the global options."""
    return ctx.obj  # type: ignore[no-any-return]


def _boundary(func: Callable[..., int | None]) -> Callable[..., None]:
    """A command as Typer calls it: errors become messages and exit codes (guarded), and the
    code leaves as typer.Exit (Typer's own Exit and Abort pass through)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        raise typer.Exit(guarded(func, *args, passthrough=(typer.Exit, typer.Abort), **kwargs))

    return wrapper


def _with_run_options(
    names: Sequence[str], helps: Mapping[str, str]
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Give a command the options `names` of _RUN_OPTIONS, after its own parameters, with the
    help texts in `helps` instead of run's: Typer reads them from its signature, and the
    command receives them as **values for make_run_options."""
    import inspect

    specs = {spec[0]: spec for spec in _RUN_OPTIONS}

    def decorate(func: Callable[..., int]) -> Callable[..., int]:
        signature = inspect.signature(func, eval_str=True)
        own = [parameter for parameter in signature.parameters.values() if parameter.kind is not parameter.VAR_KEYWORD]
        options = []
        for name in names:
            _, kind, default, flags, keywords = specs[name]
            option = typer.Option(
                list(default) if isinstance(default, list) else default,
                *flags,
                **{**keywords, "help": helps.get(name, keywords["help"])},
            )
            options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
        func.__signature__ = signature.replace(parameters=[*own, *options])  # type: ignore[attr-defined]
        return func

    return decorate


def _add_run_commands(app: Any) -> None:
    """`run` and `resume`, with the same options (_RUN_OPTIONS)."""

    @app.command()
    @_boundary
    @_with_run_options([spec[0] for spec in _RUN_OPTIONS], {})
    def run(
        ctx: typer.Context,
        name: str = typer.Argument(
            ..., help="Workflow name (workflows/NAME.json).", autocompletion=complete_workflow_name
        ),
        **values: Any,
    ) -> int:
        """Run workflow NAME: each step in order, live output, a record in runs/ and a JUnit report."""
        return run_workflow_command(_ctx_paths(ctx), name, make_run_options(**values))

    @app.command()
    @_boundary
    @_with_run_options(_RESUME_OPTIONS, _RESUME_HELP)
    def resume(
        ctx: typer.Context,
        run_ref: str = typer.Argument(
            ..., metavar="RUN", help="The failed run: its id, a unique start or end of one, or 'latest'."
        ),
        **values: Any,
    ) -> int:
        """Re-run failed RUN from its first failed step, as a new run; steps above it that passed are re-used while nothing they depend on changed."""
        return cmd_resume(_ctx_paths(ctx), run_ref, make_run_options(**values))


def _add_workflow_commands(app: Any) -> None:
    """`validate` and `list`: the workflow definitions, nothing run."""

    @app.command()
    @_boundary
    def validate(
        ctx: typer.Context,
        names: list[str] = typer.Argument(None, help="Workflow names (default: all under workflows/)."),
        var: list[str] = typer.Option(
            [], "--var", help="KEY=VALUE for ${KEY} in the workflow (repeatable), as on run."
        ),
    ) -> int:
        """Check workflow definitions without running anything; warn about what is missing on disk."""
        return render(cmd_validate(_ctx_paths(ctx), names or [], var))

    @app.command("list")
    @_boundary
    def list_command(ctx: typer.Context) -> int:
        """List the workflows with their step count and description."""
        return render(cmd_list(_ctx_paths(ctx)))


def _add_run_record_commands(app: Any) -> None:
    """`status`, `runs`, `logs`, `report` and `prune`: the records in runs/."""

    @app.command()
    @_boundary
    def status(
        ctx: typer.Context,
        run_id: str = typer.Argument("latest", help="Run id, a unique start of one, or 'latest' (the default)."),
        json_output: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    ) -> int:
        """Show one run (the latest by default): its status, current step and every step's result."""
        return render(cmd_status(_ctx_paths(ctx), run_id), json_output)

    @app.command()
    @_boundary
    def runs(
        ctx: typer.Context,
        workflow: str = typer.Option(None, "--workflow", "-w", help="Only runs of this workflow."),
        status_filter: str = typer.Option(
            None, "--status", "-s", help="Only runs with this status: pending, running, failed, completed (or passed)."
        ),
        limit: int = typer.Option(20, "--limit", "-n", min=1, help="At most this many runs."),
        json_output: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
    ) -> int:
        """List recent runs, newest first."""
        return render(cmd_runs(_ctx_paths(ctx), workflow, status_filter, limit), json_output)

    @app.command()
    @_boundary
    def logs(
        ctx: typer.Context,
        run_id: str = typer.Argument(..., help="Run id, a unique start of one, or 'latest'."),
        step: str = typer.Argument(None, help="Step name or number (default: all steps)."),
    ) -> int:
        """Print the full output of a run's steps from their log files."""
        return render(cmd_logs(_ctx_paths(ctx), run_id, step))

    @app.command()
    @_boundary
    def report(
        ctx: typer.Context,
        run_id: str = typer.Argument(..., help="Run id, a unique start of one, or 'latest'."),
        html: Path = typer.Option(None, "--html", help="Where to write it (default: runs/RUN_ID/report.html)."),
    ) -> int:
        """Write a run's self-contained HTML report: header, timeline, steps, failed tests, output."""
        return render(cmd_report(_ctx_paths(ctx), run_id, html))

    @app.command()
    @_boundary
    def prune(
        ctx: typer.Context,
        keep: int = typer.Option(..., "--keep", min=0, help="Keep the newest N runs."),
    ) -> int:
        """Delete old runs, keeping the newest N (running ones are never deleted)."""
        return render(cmd_prune(_ctx_paths(ctx), keep))


def _add_setup_commands(app: Any) -> None:
    """`init` and the `hook` group: setting a project up."""

    @app.command()
    @_boundary
    def init(
        ctx: typer.Context,
        ci: bool = typer.Option(
            False, "--ci", help="Also scaffold workflows/ci.json, the workflow the CI templates in hooks/ run."
        ),
    ) -> int:
        """Scaffold workflows/pre-push.json and runs/.gitignore (never overwrites a file)."""
        return render(cmd_init(_ctx_paths(ctx), ci))

    hook_app = typer.Typer(
        name="hook",
        no_args_is_help=True,
        rich_markup_mode=None,
        help="Install, remove or inspect orchestrate's git pre-push hook.",
    )
    app.add_typer(hook_app, name="hook")

    @hook_app.command("install")
    @_boundary
    def hook_install(
        ctx: typer.Context,
        hook: str = typer.Option("pre-push", "--hook", help="Which git hook (pre-push)."),
        workflow: str = typer.Option(None, "--workflow", help="Workflow the hook runs (default: pre-push)."),
        force: bool = typer.Option(False, "--force", help="Keep a foreign hook as HOOK.legacy and run it first."),
    ) -> int:
        """Install the hook into the folder git uses (core.hooksPath and worktrees respected)."""
        return render(cmd_hook_install(_ctx_paths(ctx), hook, workflow, force))

    @hook_app.command("uninstall")
    @_boundary
    def hook_uninstall(
        ctx: typer.Context,
        hook: str = typer.Option("pre-push", "--hook", help="Which git hook (pre-push)."),
    ) -> int:
        """Remove orchestrate's hook (never a foreign one) and restore the hook it replaced."""
        return render(cmd_hook_uninstall(_ctx_paths(ctx), hook))

    @hook_app.command("status")
    @_boundary
    def hook_status_command(
        ctx: typer.Context,
        hook: str = typer.Option("pre-push", "--hook", help="Which git hook (pre-push)."),
        json_output: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    ) -> int:
        """Say what git will run on push: the hooks folder, the hook's owner and its workflow."""
        return render(cmd_hook_status(_ctx_paths(ctx), hook), json_output)


def _add_serve_command(app: Any) -> None:
    """`serve`: the HTTP API."""

    @app.command("serve")
    @_boundary
    def serve_command(
        ctx: typer.Context,
        host: str = typer.Option(
            "127.0.0.1", "--host", help="Address to bind; anything but loopback needs ORCHESTRATE_API_TOKEN."
        ),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
        max_parallel: int = typer.Option(
            2, "--max-parallel", min=1, help="Runs at once; more starts wait as pending, in order."
        ),
        allowed_host: list[str] = typer.Option(
            [],
            "--allowed-host",
            help="Another name clients (a reverse proxy) reach the server by, NAME or NAME:PORT (repeatable).",
        ),
        max_queued: int = typer.Option(
            MAX_QUEUED_RUNS, "--max-queued", min=1, help="Pending runs the server holds; more starts get 429."
        ),
    ) -> int:
        """Serve the HTTP API (the 'server' extra): POST /start?name=NAME, GET /status/RUN_ID, docs at /docs.

        Each run is its own `orchestrate run` process on the same run store as the CLI. With
        ORCHESTRATE_API_TOKEN set, every endpoint but /healthz needs 'Authorization: Bearer <token>'.
        """
        paths = _ctx_paths(ctx)
        serve(
            host,
            port,
            max_parallel,
            paths.root,
            paths.workflows_dir,
            paths.runs_dir,
            allowed_hosts=allowed_host,
            max_queued=max_queued,
        )
        return EXIT_OK


_APP: Any = None


def __getattr__(name: str) -> Any:
    """``orchestrate.app`` is built on first access (PEP 562)."""
    global _APP
    if name == "app":
        if _APP is None:
            _APP = build_app()
        return _APP
    raise AttributeError(f"module 'orchestrate' has no attribute {name!r}")


_FAST_GLOBAL_OPTIONS = {"--root": "root", "--workflows-dir": "workflows_dir", "--runs-dir": "runs_dir"}


# run's options as main()'s fast path reads them (from _RUN_OPTIONS, as Typer's `run`): each
# flag or value option by the flags that name it, and the ones that may be given again
_FAST_RUN_FLAGS = {flag: name for name, kind, _default, flags, _ in _RUN_OPTIONS if kind is bool for flag in flags}


_FAST_RUN_VALUES = {flag: name for name, kind, _default, flags, _ in _RUN_OPTIONS if kind is not bool for flag in flags}


_FAST_REPEATABLE = ("only", "skip", "var")


_FORCE_VALUES = frozenset({"1", "0", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"})


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """`run pre-push --root ..` read as `--root .. run pre-push`: a global option given after
    the command moves before it (Click only takes a group's options before the command).
    Nothing after `--` moves; an option without its value stays for Typer to report."""
    args = list(args)
    index = 0
    while index < len(args):  # find the command: the first word that is not a global option's
        arg = args[index]
        if arg == "--":
            return args
        if arg in _FAST_GLOBAL_OPTIONS:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            break
    else:
        return args
    head, moved, kept = args[:index], [], []
    rest = args[index:]
    position = 0
    while position < len(rest):
        arg = rest[position]
        if arg == "--":
            kept += rest[position:]
            break
        option, has_value, _ = arg.partition("=")
        if option in _FAST_GLOBAL_OPTIONS and has_value:
            moved.append(arg)
        elif option in _FAST_GLOBAL_OPTIONS and position + 1 < len(rest):
            moved += [arg, rest[position + 1]]
            position += 1
        else:
            kept.append(arg)
        position += 1
    return head + moved + kept


def parse_fast_run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> tuple[Any, ...] | None:
    """Read `[--root R] [--workflows-dir W] [--runs-dir D] run NAME [run options]` without Typer
    (the global options may also come after `run`, as hoist_global_options reads them).
    Returns (root, workflows_dir, runs_dir, name, run option values), or None for anything else,
    which Typer then parses (and reports, if it is wrong)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    words = _read_fast_run_words(argv)
    if words is None:
        return None
    global_values, name, run_values = words
    if not _fast_run_environment(global_values, run_values, env):
        return None
    return (
        global_values.get("root"),
        global_values.get("workflows_dir"),
        global_values.get("runs_dir"),
        name,
        run_values,
    )


def _read_fast_run_words(argv: Sequence[str]) -> tuple[dict[str, str], str, dict[str, Any]] | None:
    """The command line of parse_fast_run, word by word: (global option values, the workflow
    name, run option values), or None for anything it does not read."""
    global_values: dict[str, str] = {}
    run_values: dict[str, Any] = {key: [] for key in _FAST_REPEATABLE}
    name: str | None = None
    seen_run = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not seen_run and arg == "run":
            seen_run, i = True, i + 1
            continue
        if not arg.startswith("-"):
            if not seen_run or name is not None:
                return None
            name, i = arg, i + 1
            continue
        option = _read_fast_run_option(argv, i, seen_run)
        if option is None:
            return None  # --help, --version, a typo, '--', '-qx': Typer decides
        is_global, key, value, i = option
        if key in _FAST_REPEATABLE:
            run_values[key].append(value)
        else:
            (global_values if is_global else run_values)[key] = value
    if not seen_run or name is None:
        return None
    return global_values, name, run_values


def _read_fast_run_option(argv: Sequence[str], i: int, seen_run: bool) -> tuple[bool, str, Any, int] | None:
    """The option argv[i] as (whether it is a global option, its key, its value, the index after
    it): a flag of run is True, another option's value follows '=' or is the next word (not an
    option itself). None for what the tables do not know, or a value missing."""
    option, has_value, value = argv[i].partition("=")
    is_global = option in _FAST_GLOBAL_OPTIONS  # before or after `run` (hoist_global_options)
    if seen_run and option in _FAST_RUN_FLAGS and not has_value:
        return False, _FAST_RUN_FLAGS[option], True, i + 1
    table = _FAST_GLOBAL_OPTIONS if is_global or not seen_run else _FAST_RUN_VALUES
    if option not in table:
        return None
    if not has_value:
        if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            return None
        i += 1
        value = argv[i]
    return is_global, table[option], value, i + 1


def _fast_run_environment(global_values: dict[str, str], run_values: dict[str, Any], env: Mapping[str, str]) -> bool:
    """Fill in what the environment gives, as Typer reads it, for options the command line did
    not give: ORCHESTRATE_ROOT, ORCHESTRATE_SHARD, ORCHESTRATE_FORCE. False for a
    ORCHESTRATE_FORCE that is no boolean."""
    if "root" not in global_values and env.get("ORCHESTRATE_ROOT"):
        global_values["root"] = env["ORCHESTRATE_ROOT"]
    if "shard" not in run_values and env.get("ORCHESTRATE_SHARD"):
        run_values["shard"] = env["ORCHESTRATE_SHARD"]
    if "force" not in run_values and env.get("ORCHESTRATE_FORCE"):
        if env["ORCHESTRATE_FORCE"].strip().lower() not in _FORCE_VALUES:
            return False  # Typer reports the value it cannot read as a boolean
        run_values["force"] = _truthy(env["ORCHESTRATE_FORCE"])
    return True


def _run_fast(parsed: tuple[Any, ...]) -> int:
    root, workflows_dir, runs_dir, name, values = parsed
    return run_workflow_command(make_paths(root, workflows_dir, runs_dir), name, make_run_options(**values))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `orchestrate` command; returns the exit code. A reader of stdout that
    leaves early (`orchestrate runs | head`) ends it quietly with EXIT_SIGPIPE; a run goes on
    and keeps its own exit code (see Console)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.stdin is None or sys.stdout is None or sys.stderr is None:
        reopen_closed_standard_streams()
    try:
        if args == ["--version"]:
            sys.stdout.write(f"orchestrate {__version__}\n")
            code = EXIT_OK
        else:
            # shell completion (`_ORCHESTRATE_COMPLETE=...`) is Typer's business, whatever argv holds
            parsed = None if "_ORCHESTRATE_COMPLETE" in os.environ else parse_fast_run(args)
            if parsed is not None:
                return guarded(_run_fast, parsed)
            code = _run_typer(args)
            # Click ends a command whose output met EPIPE with exit 1 (--help | head)
            if code == 1 and stdout_reader_left():
                return stdout_gone()
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_gone()
    return code


def reopen_closed_standard_streams() -> None:
    """As git does: a standard descriptor orchestrate was started without (`orchestrate run w
    >&-`) is /dev/null, and its Python stream with it. Else the first file orchestrate opens
    takes that number and what is written there lands in it, and the console's first write
    was an internal error (Python leaves sys.stdout None)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            devnull_onto(fd)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", encoding="utf-8", closefd=False))


def _run_typer(args: list[str]) -> int:
    try:
        __getattr__("app")(args=args, prog_name="orchestrate")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return EXIT_OK


def console_main() -> None:
    """The `orchestrate` command (console script, `python -m orchestrate`): main(), the atexit
    handlers and a flush of stdout and stderr, then os._exit. The interpreter's own teardown,
    freeing this module's thousands of objects, took 5 ms of every run and every push, and
    has nothing else to do: the threads orchestrate starts are daemons it would abandon too.
    Where a flush fails or another library's thread still runs, the ordinary exit does it."""
    code = main()
    threading = sys.modules.get("threading")
    if threading is not None and any(
        t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        sys.exit(code)  # joins the thread, then runs the atexit handlers, as always
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    console_main()
