"""Plain-text tables for command output (no dependency: columns padded to their widest cell)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None, markdown: bool = False) -> str:
    """Padded plain-text columns, or a Markdown (GitHub) table with markdown=True."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[str(row.get(col, "")) for col in columns] for row in rows]
    if markdown:
        escape = lambda v: v.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(escape(v) for v in r) + " |" for r in cells])
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
