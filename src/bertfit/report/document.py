"""The report as a document: blocks (headings, paragraphs, tables, images) and the two renderers.

report.md and report.html are rendered from one list of blocks, so they cannot drift apart.
Everything that came from the user (texts, label names, file names, settings) is escaped for the
format it lands in. Tasks build their result sections from these blocks.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Longest text shown in a table cell, in characters; longer ones end in an ellipsis.
MAX_TEXT_CHARS = 200

def finite(value: Any) -> bool:
    # numbers.Real, not (int, float): counts computed with numpy arrive as np.int64.
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


# Inline content: a plain string (user text, escaped on output), bold, or code.
Inline = str | Strong | Code
Cell = str | Strong


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    parts: list[Inline]
    muted: bool = False


@dataclass
class Bullets:
    items: list[list[Inline]]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    # "l" or "r" per column; numbers are right-aligned so digits line up.
    align: list[str]
    # Optional per-cell 0..1 intensity used to tint cells in the HTML (the confusion matrix).
    shade: list[list[float | None]] | None = None


@dataclass
class Image:
    rel_path: str
    alt: str


Block = Heading | Paragraph | Bullets | Table | Image

_NEWLINES = re.compile(r"\r\n|\r|\n")
# Backslash-escape what starts Markdown syntax anywhere in a line: emphasis, code, table cells,
# strikethrough and GitHub's $math$; "<" only where it could open raw HTML, and "]" only where it
# could close a link ("](", "][", "]:"), so plain text like "<0.1%" or "bertfit[report]" stays as is.
_MD_ALWAYS = re.compile(r"([\\`*|~$]|<(?=[A-Za-z/!?])|\](?=[(\[:]))")
# Intraword underscores ("very_negative") are never emphasis in CommonMark, so they stay readable.
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# Only special at the start of a line: headings, quotes, and list markers ("- ", "+ ", "1. "),
# which need a following space, so "-3" or "0.83" stay untouched.
_MD_LEADING = re.compile(r"^(\s*)([#>]|[+\-](?=\s|$)|\d+(?=[.)](?:\s|$)))")


def _one_line(text: str) -> str:
    """Newlines would end a table row or a list item, so they are shown as a visible ↵."""
    return _NEWLINES.sub(" ↵ ", text)


def _md_escape(text: str) -> str:
    text = _one_line(str(text))
    text = _MD_ALWAYS.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    # For an ordered-list marker the escape goes before its "." or ")", after the digits.
    return _MD_LEADING.sub(
        lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)),
        text,
    )


def _html_escape(text: str) -> str:
    return html.escape(_one_line(str(text)), quote=True)


def _md_inline(parts: Iterable[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Strong):
            out.append(f"**{_md_escape(part.text)}**")
        elif isinstance(part, Code):
            text = _one_line(part.text)
            # A code span cannot contain a backslash escape; a longer fence holds backticks instead.
            out.append(f"`` {text} ``" if "`" in text else f"`{text}`")
        else:
            out.append(_md_escape(part))
    return "".join(out)


def _html_inline(parts: Iterable[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Strong):
            out.append(f"<strong>{_html_escape(part.text)}</strong>")
        elif isinstance(part, Code):
            out.append(f"<code>{_html_escape(part.text)}</code>")
        else:
            out.append(_html_escape(part))
    return "".join(out)


def render_markdown(blocks: Sequence[Block]) -> str:
    chunks: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            chunks.append("#" * block.level + " " + _md_escape(block.text))
        elif isinstance(block, Paragraph):
            text = _md_inline(block.parts)
            chunks.append(f"*{text}*" if block.muted else text)
        elif isinstance(block, Bullets):
            chunks.append("\n".join("- " + _md_inline(item) for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_escape(h) for h in block.header) + " |"]
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in block.align) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_md_inline([cell]) for cell in row) + " |")
            chunks.append("\n".join(lines))
        elif isinstance(block, Image):
            chunks.append(f"![{_md_escape(block.alt)}]({block.rel_path})")
    return "\n\n".join(chunks) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.2rem; line-height: 1.5; }
h1 { font-size: 1.7rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; vertical-align: top; }
th { background: #f6f8fa; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td:not(.shaded) { background: #fafbfc; }
td.text { max-width: 38rem; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; }
p.muted { color: #57606a; font-style: italic; }
"""


def _html_table(block: Table) -> str:
    head = "".join(
        f'<th class="{"r" if a == "r" else "l"}">{_html_escape(h)}</th>'
        for h, a in zip(block.header, block.align)
    )
    body = []
    for i, row in enumerate(block.rows):
        cells = []
        for j, cell in enumerate(row):
            align = block.align[j] if j < len(block.align) else "l"
            classes = [align]
            style = ""
            shade = block.shade[i][j] if block.shade else None
            if shade is not None:
                classes.append("shaded")
                # Same Blues-like tint as the heatmap; white text once the cell gets dark.
                style = f' style="background: rgba(33,102,172,{0.08 + 0.8 * shade:.3f});'
                style += ' color: #fff;"' if shade > 0.55 else '"'
            if align == "l" and isinstance(cell, str) and len(cell) > 40:
                classes.append("text")
            cells.append(f'<td class="{" ".join(classes)}"{style}>{_html_inline([cell])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(title: str, blocks: Sequence[Block], root: Path) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_html_escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            css = ' class="muted"' if block.muted else ""
            parts.append(f"<p{css}>{_html_inline(block.parts)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{_html_inline(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Image):
            # Embedded, so the file works when opened directly or mailed without the plots folder.
            data = base64.b64encode((root / block.rel_path).read_bytes()).decode("ascii")
            parts.append(
                f'<p><img src="data:image/png;base64,{data}" alt="{_html_escape(block.alt)}"></p>'
            )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_html_escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------


def fmt_int(value: Any) -> str:
    return f"{int(value):,}" if finite(value) else str(value)


def fmt_score(value: Any) -> str:
    return f"{float(value):.4f}" if finite(value) else "–"


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not finite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{float(value):,.1f}"


def fmt_percent(part: float, whole: float) -> str:
    return fmt_fraction(part / whole) if whole else "–"


def fmt_fraction(fraction: float) -> str:
    percent = 100.0 * fraction
    # "0.0%" would read as none at all; a handful of truncated texts out of 38k is not none.
    if 0 < percent < 0.1:
        return "<0.1%"
    return f"{percent:.1f}%"


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_setting(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config sections become dotted keys (``optim.lr``) so one table shows everything."""
    out: list[tuple[str, Any]] = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def truncate(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"
