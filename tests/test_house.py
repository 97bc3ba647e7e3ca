"""The shape of orchestrate.py that issue 18 promises a newcomer: a table of contents that is
the module's real order, sections that only use what is above them, and functions short
enough to read at once. These read the source with `ast`; nothing is imported or run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "orchestrate.py"
BANNER_RE = re.compile(r"^# === (\d+)(?:\.(\d+))?\. (.+) ===$")
MAX_FUNCTION_LINES = 60
# the HTTP server (12) is started by the CLI (13) and borrows its boundary and paths
ALLOWED_LATER_REFERENCES = {(12, 13)}


@pytest.fixture(scope="module")
def source() -> tuple[list[str], ast.Module]:
    text = MODULE.read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def banners(lines: list[str]) -> list[tuple[int, int, int | None, str]]:
    found = []
    for number, line in enumerate(lines, 1):
        match = BANNER_RE.match(line)
        if match:
            sub = int(match.group(2)) if match.group(2) else None
            found.append((number, int(match.group(1)), sub, match.group(3)))
    return found


def section_at(found: list[tuple[int, int, int | None, str]], lineno: int) -> int:
    current = 0
    for line, section, _, _ in found:
        if line <= lineno:
            current = section
    return current


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def test_sections_are_numbered_in_order_and_listed_in_the_docstring(source):
    lines, tree = source
    found = banners(lines)
    numbers = [(section, sub or 0) for _, section, sub, _ in found]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    tops = [section for section, sub in numbers if sub == 0]
    assert tops == list(range(1, len(tops) + 1))
    docstring = ast.get_docstring(tree) or ""
    for _, section, sub, title in found:
        if sub is None:
            assert f"{section}. {title}" in docstring, f"section {section} ({title}) missing from the map"
    # every sub-section sits under its own section's banner
    assert all(sub is None or (section, 0) in numbers for _, section, sub, _ in found)


def test_text_utilities_and_sub_sections_have_their_own_banners(source):
    titles = {title for _, _, _, title in banners(source[0])}
    for title in ("Text utilities", "Globs", "Masking secrets", "HTTP helper", "Hook installation"):
        assert title in titles
    assert any(title.startswith("Jira") for title in titles)
    assert any(title.startswith("Cypress") for title in titles)


def later_references(text: str) -> set[str]:
    """Each use of a top-level name in a section above the one that defines it."""
    tree = ast.parse(text)
    found = banners(text.splitlines())
    home: dict[str, int] = {}
    for node in tree.body:
        for name in defined_names(node):
            home.setdefault(name, section_at(found, node.lineno))
    later = set()
    for node in tree.body:
        user = section_at(found, node.lineno)
        for sub in ast.walk(node):
            if not (isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)):
                continue
            if home.get(sub.id, 0) > user and (user, home[sub.id]) not in ALLOWED_LATER_REFERENCES:
                later.add(f"section {user} uses {sub.id} (section {home[sub.id]})")
    return later


def long_functions(text: str) -> list[str]:
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lengths = [(n, (n.end_lineno or n.lineno) - n.lineno + 1) for n in functions]
    return [f"{n.name} (line {n.lineno}): {length} lines" for n, length in lengths if length > MAX_FUNCTION_LINES]


def test_no_section_uses_a_later_one():
    """Reading top to bottom, a name is defined before the section that uses it: building
    blocks first, the server and the CLI last."""
    later = later_references(MODULE.read_text(encoding="utf-8"))
    assert not later, "\n".join(sorted(later))


def test_no_function_is_longer_than_a_screen():
    long = long_functions(MODULE.read_text(encoding="utf-8"))
    assert not long, "\n".join(long)


def test_the_checks_fire_on_a_module_that_breaks_them():
    """The two checks above are only as good as their parsing: a made-up module proves they
    see a forward reference (but not a field annotation or a use from above) and a long body."""
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    sample = (
        "# === 1. A ===\n"
        "def early():\n    return late()\n"
        "class Record:\n    late: int\n"
        "# === 2. B ===\n"
        "def late():\n    return early()\n"
        f"def too_long():\n{body}"
    )
    assert later_references(sample) == {"section 1 uses late (section 2)"}
    assert long_functions(sample) == [f"too_long (line 9): {MAX_FUNCTION_LINES + 1} lines"]
