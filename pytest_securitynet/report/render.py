"""Write the sections as `index.html` (and the same content as `README.md`, which GitHub renders
when the folder is browsed). Images are referenced by relative paths, so the folder works as a
whole wherever it is copied; `embed=True` inlines them as data URIs for a single-file page."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from pytest_securitynet.report.blocks import Figure, Gallery, Section, Table, Text

GALLERY_WIDTH = 190
"""Width in px of a gallery image in README.md (trigger PNGs are a few pixels wide)."""
MAX_TABLE_ROWS = 60
"""Tables longer than this scroll inside a box of bounded height on the page, and fold into a
<details> element in README.md; every row is shown either way (and is in the table's CSV)."""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1250px;
       padding: 0 1.2rem 3rem; color: #1d1d1f; line-height: 1.45; }
header { border-bottom: 2px solid #ccc; margin-bottom: 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; display: inline-block; width: 95%; }
details.section > summary { cursor: pointer; }
details.section > summary::marker { font-size: 1.3rem; }
nav ul { columns: 3; list-style: none; padding-left: 0; font-size: .95rem; }
code { background: #f2f2f2; padding: 0 .25em; border-radius: 3px; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: .9rem; color: #444; margin: .3rem 0; }
.scroll { overflow-x: auto; }
.scroll.tall { max-height: 36em; overflow-y: auto; }
.scroll.tall th { position: sticky; top: 0; }
table.data { border-collapse: collapse; font-size: .82rem; font-variant-numeric: tabular-nums; }
table.data th, table.data td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: left; vertical-align: top; }
table.data th { background: #f6f6f6; }
table.data tr:nth-child(even) td { background: #fbfbfb; }
.gallery { display: flex; flex-wrap: wrap; gap: 1rem; }
.gallery figure { width: 260px; margin: 0; }
.gallery img { width: 100%; image-rendering: pixelated; }
.note { color: #8a4b00; }
"""


def _inline(text: str) -> str:
    """Escape `text` for HTML, turning `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _src(out: Path, name: str, embed: bool) -> str:
    if not embed:
        return html.escape(name)
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_html(sections: Iterable[Section], out: Path, *, title: str, subtitle: str, embed: bool = False) -> str:
    sections = list(sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="securitynet report">', '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<header><h1>{html.escape(title)}</h1><p>{_inline(subtitle)}</p>"
        "<p>Each section folds: click its heading.</p></header>",
        "<nav><ul>", *(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections), "</ul></nav>",
        "<main>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.id}"><details class="section" open>'
                     f'<summary><h2>{html.escape(section.title)}</h2></summary>')
        for block in section.blocks:
            parts.append(_html_block(block, out, embed))
        parts.append("</details></section>")
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _html_block(block, out: Path, embed: bool) -> str:
    if isinstance(block, Text):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Table):
        rows = len(block.display)
        table = block.display.to_html(index=False, escape=True, border=0, classes="data", na_rep="")
        tall = rows > MAX_TABLE_ROWS
        note = f' <span class="note">All {rows} rows; the box scrolls.</span>' if tall else ""
        return (f'<figure class="table"><figcaption>{_inline(block.caption)} '
                f'(<a href="{html.escape(block.csv)}">CSV</a>){note}</figcaption>'
                f'<div class="scroll{" tall" if tall else ""}">{table}</div></figure>')
    if isinstance(block, Figure):
        image = f'<img src="{_src(out, block.png, embed)}" alt="{html.escape(block.caption)}">'
        if not embed:  # a click opens the PNG at full size
            image = f'<a href="{html.escape(block.png)}">{image}</a>'
        return f"<figure>{image}<figcaption>{_inline(block.caption)}</figcaption></figure>"
    if isinstance(block, Gallery):
        items = "".join(f'<figure><img src="{_src(out, name, embed)}" alt="{html.escape(caption)}">'
                        f"<figcaption>{_inline(caption)}</figcaption></figure>" for name, caption in block.images)
        return f'<p>{_inline(block.caption)}</p><div class="gallery">{items}</div>'
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(sections: Iterable[Section], *, title: str, subtitle: str) -> str:
    lines = [f"# {title}", "", subtitle, ""]
    sections = list(sections)
    lines += [f"- [{s.title}](#{_anchor(s.title)})" for s in sections] + [""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _md_block(block) + [""]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _md_block(block) -> list[str]:
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Table):
        table = _md_table(block.display)
        if len(block.display) <= MAX_TABLE_ROWS:
            return [f"{block.caption} ([CSV]({block.csv}))", "", *table]
        # GitHub renders a table inside <details> when blank lines set it apart.
        return [f"{block.caption} ([CSV]({block.csv}))", "",
                f"<details><summary>All {len(block.display)} rows (click to show)</summary>", "", *table, "",
                "</details>"]
    if isinstance(block, Figure):
        return [f"![{_md_alt(block.caption)}]({block.png})", "", f"*{block.caption}*"]
    if isinstance(block, Gallery):
        cells = [f'<img src="{html.escape(name)}" alt="{html.escape(c)}" width="{GALLERY_WIDTH}"><br>{_md_cell(c)}'
                 for name, c in block.images]
        rows = [cells[i:i + 3] for i in range(0, len(cells), 3)]
        width = max((len(r) for r in rows), default=1)
        table = ["| " + " | ".join([" "] * width) + " |", "|" + "---|" * width]
        table += ["| " + " | ".join(r + [" "] * (width - len(r))) + " |" for r in rows]
        return [block.caption, "", *table]
    raise TypeError(f"unknown block {type(block).__name__}")


def _md_alt(text: str) -> str:
    return text.replace("[", "(").replace("]", ")")


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [header, rule, *body]
