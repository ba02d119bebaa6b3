"""Writing analysis results: one table as Markdown, CSV and JSON side by side, and figures.

Every ``acmix paper`` command ends here, so the output folder always holds a
human-readable table (``.md``), a spreadsheet one (``.csv``) and the exact
values with their context (``.json``: rows plus a ``meta`` dict saying how and
where they were measured).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["fmt", "markdown_table", "pyplot", "write_table"]


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: floats to ``digits`` significant digits, ints with thousands separators."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (``columns``: which keys, in order; default all of the first row)."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(folder: str | Path, name: str, rows: Sequence[Mapping[str, Any]], *, title: str,
                columns: Sequence[str] | None = None, notes: Iterable[str] = (),
                meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``folder/name.{md,csv,json}``; the Markdown has ``title``, the table and ``notes`` as a list."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cols = list(columns or (rows[0].keys() if rows else []))
    notes = list(notes)
    md = f"# {title}\n\n" + markdown_table(rows, cols)
    if notes:
        md += "\n" + "".join(f"- {n}\n" for n in notes)
    paths = {"md": folder / f"{name}.md", "csv": folder / f"{name}.csv", "json": folder / f"{name}.json"}
    paths["md"].write_text(md)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    payload = {"title": title, "meta": dict(meta or {}), "notes": notes, "rows": [dict(r) for r in rows]}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return paths


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (figures are written, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
