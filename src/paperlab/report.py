"""Reporting helpers for the chapters: the reproduction scorecard.

Every chapter ends with a table of | paper's claim | our setting | our number | held? |, each row built
from results computed in the chapter (never typed in). :func:`scorecard` renders it as a Markdown table,
which both the Jupyter Book and the offline rendering show as a table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One scorecard row. ``held``: True, False, or None when this setting cannot test the claim
    (e.g. a GPU speed claim on a CPU); ``note`` says why, or what to read into the number."""

    claim: str
    setting: str
    number: str
    held: bool | None
    note: str = ""


def verdict(held: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not tested here"}[held]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def scorecard_markdown(rows: list[Row], header: tuple[str, str, str, str] = (
        "paper's claim", "our setting", "our number", "held?")) -> str:
    """The rows as a Markdown table (a note, if any, follows the verdict)."""
    if not rows:
        raise ValueError("a scorecard needs at least one row")
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    for row in rows:
        held = verdict(row.held) + (f" ({row.note})" if row.note else "")
        lines.append(f"| {_cell(row.claim)} | {_cell(row.setting)} | {_cell(row.number)} | {_cell(held)} |")
    return "\n".join(lines)


def scorecard(rows: list[Row], header: tuple[str, str, str, str] | None = None):
    """Display object for a notebook (IPython Markdown), or the Markdown string outside IPython."""
    text = scorecard_markdown(rows, header) if header else scorecard_markdown(rows)
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython is installed with the book extras
        return text
    return Markdown(text)
