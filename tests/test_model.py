"""orchestrate's own record classes (a start-up-cheap subset of dataclasses)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import orchestrate
from conftest import REPO


@orchestrate.dataclass
class Sample:
    """A record with every kind of field."""

    name: str
    count: int = 0
    tags: list[str] = orchestrate.field(default_factory=list)


@orchestrate.dataclass(frozen=True)
class Point:
    """A frozen record."""

    x: int
    y: int = 0


def test_init_positional_keyword_defaults_and_factories() -> None:
    a = Sample("a")
    b = Sample(name="a", count=0)
    assert a == b and a is not b
    assert a.tags == [] and a.tags is not b.tags  # a fresh list each time
    assert Sample("x", 2, ["t"]).tags == ["t"]
    assert repr(Sample("x", 2)) == "Sample(name='x', count=2, tags=[])"
    assert Sample("a") != Sample("b") and Sample("a") != "a"
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        hash(Sample("a"))


def test_frozen_records_hash_and_refuse_changes() -> None:
    p = Point(1)
    assert {p, Point(1, 0)} == {Point(1)}
    with pytest.raises(AttributeError, match="frozen"):
        p.x = 3  # type: ignore[misc]


def test_importing_orchestrate_stays_light() -> None:
    """What a git hook pays at every push: none of these on the way to running a workflow
    (issue 15: typing, hashlib, shlex, subprocess, threading and xml.etree cost 2-5 ms each)."""
    code = "import sys, orchestrate; print(sorted(m for m in %r if m in sys.modules))" % (
        (
            "dataclasses",
            "inspect",
            "typer",
            "requests",
            "socket",
            "fastapi",
            "uvicorn",
            "rich",
            "typing",
            "hashlib",
            "shlex",
            "subprocess",
            "threading",
            "selectors",
            "xml.etree.ElementTree",
            "urllib.request",
            "tempfile",
            "shutil",
            "datetime",
        ),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def _fields(record: Any) -> tuple[str, ...]:
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(record))


def test_run_options_fields_are_what_the_cli_fills() -> None:
    assert "shard" in _fields(orchestrate.RunOptions()) and "variables" in _fields(orchestrate.RunOptions())


def test_the_standard_dataclasses_functions_work_on_records() -> None:
    """mypy sees these classes as dataclasses (dataclass_transform): runtime agrees."""
    import dataclasses

    result = orchestrate.StepResult("failed", "boom", exit_code=3)
    assert dataclasses.is_dataclass(result)
    assert dataclasses.asdict(result) == {
        "status": "failed",
        "message": "boom",
        "exit_code": 3,
        "extra": {},
        "testcases": [],
    }
    assert [f.name for f in dataclasses.fields(Sample)] == ["name", "count", "tags"]
    changed = dataclasses.replace(Sample("a", 2, ["t"]), count=5)
    assert changed == Sample("a", 5, ["t"])
    assert dataclasses.replace(Point(1), y=2) == Point(1, 2)
    assert Sample("b").tags == []  # a factory still makes a fresh default


def test_annotations_resolve_once_typing_names_are_defined() -> None:
    """`Any` is not imported at start-up (issue 15); Typer and FastAPI resolve annotations after
    define_typing_names(), as anyone calling typing.get_type_hints may."""
    import typing

    orchestrate.define_typing_names()
    hints = typing.get_type_hints(orchestrate.create_app)
    assert hints["return"] is typing.Any and hints["root"] is orchestrate.Path
    assert typing.get_type_hints(orchestrate.RunStore.summaries)["return"] == list[dict[str, typing.Any]]


@pytest.mark.parametrize("key", [b"", b"k", b"x" * 64, b"y" * 65, bytes(range(256))])
@pytest.mark.parametrize("data", [b"", b"{}", "ünïcode".encode(), b"\0" * 1000])
def test_hmac_without_openssl_is_hmac(key: bytes, data: bytes) -> None:
    import hashlib
    import hmac

    assert orchestrate.hmac_sha256_hex(key, data) == hmac.new(key, data, "sha256").hexdigest()
    assert orchestrate.sha256_hex(data) == hashlib.sha256(data).hexdigest()
