"""The design documents live in ``docs/`` and every pointer to them resolves.

Source files used to cite a design document that was never in the repository;
these checks keep every reference inside it: no file names that document, every
``docs/...`` path mentioned in the sources exists, and every relative link (and
``#anchor``) inside the Markdown files lands on a file and a heading that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "benchmarks", "docs")
SUFFIXES = {".py", ".cpp", ".h", ".md", ".toml", ".json", ".cfg", ".txt"}
TOP_LEVEL = ("README.md", "Makefile", "pyproject.toml")

# built from parts so that this file does not match itself
OLD_DOC = re.compile(r"\b" + "SP" + r"EC\b")
DOCS_PATH = re.compile(r"(?<![\w/.])docs/[\w./-]*[\w]")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _files() -> list[Path]:
    found = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for top in SCANNED:
        found += [p for p in sorted((ROOT / top).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return found


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text (repeated headings get ``-1``, ``-2``...; fenced code skipped)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_doc_paths(text: str) -> list[str]:
    """``docs/...`` paths named in ``text`` that do not exist under the repository root."""
    return [m for m in DOCS_PATH.findall(text) if not (ROOT / m).exists()]


def broken_links(doc: Path) -> list[str]:
    """Relative links of a Markdown file whose target file or ``#anchor`` does not exist."""
    bad = []
    for target in MD_LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        missing_anchor = (dest.exists() and bool(anchor) and dest.suffix == ".md"
                          and anchor not in anchors(dest.read_text(encoding="utf-8")))
        if not dest.exists() or missing_anchor:
            bad.append(target)
    return bad


def test_the_docs_exist():
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"README.md", "operator.md", "fast-paths.md", "models.md", "training.md"} <= names


def test_no_file_cites_the_old_out_of_tree_document():
    hits = [f"{_rel(p)}:{i}" for p in _files()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OLD_DOC.search(line)]
    assert hits == []


def test_every_docs_path_in_the_sources_exists():
    bad = {_rel(p): broken_doc_paths(p.read_text(encoding="utf-8")) for p in _files()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_sources_point_into_docs():
    """The docstrings that explain the math name the documents (not only the README)."""
    for name in ("operator.md", "fast-paths.md", "models.md"):
        assert any(f"docs/{name}" in p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py")), name


def test_readme_links_the_docs():
    assert "](docs/" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"], ids=_rel)
def test_markdown_links_resolve(doc: Path):
    assert broken_links(doc) == []


def test_docs_index_lists_every_document():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "README.md":
            assert f"]({doc.name}" in index, doc.name


# ----------------------------------------------------------------------------- the checkers themselves


def test_checkers_catch_what_they_are_for(tmp_path: Path):
    assert OLD_DOC.search("see " + "SP" + "EC section 2") and not OLD_DOC.search("SPECTRAL, a spec")
    missing = "docs/" + "no-such-file.md"  # built from parts: this file is scanned too
    assert broken_doc_paths(f"see docs/operator.md and {missing}.") == [missing]
    assert broken_doc_paths("src/acmix/docs/x is not a docs path") == []
    assert slug("2. The `fc` fold: exact (rewrite 3)") == "2-the-fc-fold-exact-rewrite-3"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Title here\n", encoding="utf-8")
    doc.write_text("[ok](b.md#title-here) [x](b.md#nope) [y](c.md) [w](https://example.org/z) [s](#self)\n"
                   "## Self\n", encoding="utf-8")
    assert broken_links(doc) == ["b.md#nope", "c.md"]
