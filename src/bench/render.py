"""A table as GitHub markdown, LaTeX that compiles (booktabs, ASCII only) or CSV of numbers.

``Table`` holds what a reader sees (text cells, bold cells, column groups, rules, caption) and the
numbers behind it (a tidy frame for CSV), so each format shows the same table without parsing
formatted strings back.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

import pandas as pd
from tabulate import tabulate

FORMATS = ("md", "latex", "csv")


@dataclass
class Table:
    """Text cells, with ``columns`` as (group, name) pairs: a group spans its columns in LaTeX."""

    columns: list[tuple[str, str]]
    rows: list[list[str]]
    numbers: pd.DataFrame  # the values behind the cells, one number per cell (CSV)
    caption: str = ""
    label: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of best cells
    rules: set[int] = field(default_factory=set)  # rows with a \midrule above them
    notes: list[str] = field(default_factory=list)  # lines under the table (markdown)


def number(value: float, digits: int = 1, signed: bool = False) -> str:
    """``61.0``, ``+7.9``; ``undef`` for NaN (a metric the labels do not define)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undef"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render(table: Table, fmt: str = "md") -> str:
    """``table`` in one of ``FORMATS``."""
    from bench.errors import BenchError

    if fmt == "csv":
        return table.numbers.to_csv(index=False, float_format="%.6g")
    if fmt == "md":
        return markdown(table)
    if fmt == "latex":
        return latex(table)
    raise BenchError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")


def markdown(table: Table) -> str:
    headers = [" ".join(p for p in pair if p) for pair in table.columns]
    rows = [[f"**{cell}**" if (r, c) in table.bold else cell for c, cell in enumerate(row)]
            for r, row in enumerate(table.rows)]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    title = f"**{table.caption}**\n\n" if table.caption else ""
    return title + text + "".join(f"\n{note}" for note in table.notes)


def tex(text: str) -> str:
    """Plain text as ASCII LaTeX: specials escaped, ± and Δ as math, other non-ASCII transliterated
    (accents dropped); a character with no ASCII form is written as its code point, ``[U+65E5]``
    (dropped, two categories ``tile_日本`` and ``tile_中国`` were both ``tile_``)."""
    text = re.sub(r"([_%&#$^{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")
    text = text.replace("±", "$\\pm$").replace("Δ", "$\\Delta$").replace("…", "...")
    return "".join(c if c.isascii() else "" if unicodedata.combining(c) else f"[U+{ord(c):04X}]"
                   for c in unicodedata.normalize("NFKD", text))


def latex(table: Table) -> str:
    """A ``table`` environment with booktabs rules, caption and label; groups as ``\\multicolumn``."""
    n = len(table.columns)
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{tex(table.caption)}}}",
             f"\\label{{{table.label or 'tab:bench'}}}", f"\\begin{{tabular}}{{l{'r' * (n - 1)}}}", "\\toprule"]
    groups, spans = [], []
    for group, _ in table.columns:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    if any(group for group, _ in groups):
        cells, start = [], 1
        for group, width in groups:
            cells.append(f"\\multicolumn{{{width}}}{{c}}{{{tex(group)}}}" if group and width > 1 else tex(group))
            if group:
                spans.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(cells) + " \\\\", " ".join(spans)]
    lines += [" & ".join(tex(name) for _, name in table.columns) + " \\\\", "\\midrule"]
    for r, row in enumerate(table.rows):
        if r in table.rules:
            lines.append("\\midrule")
        cells = [f"\\textbf{{{tex(cell)}}}" if (r, c) in table.bold else tex(cell) for c, cell in enumerate(row)]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)


def frame_markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A plain numeric frame as markdown (``undef`` for NaN), e.g. ``bench eval``'s metrics."""
    frame = frame.astype(object).where(frame.notna(), None)
    return tabulate(frame, headers=[frame.index.name or "", *frame.columns], tablefmt="github",
                    floatfmt=f".{digits}f", missingval="undef")
