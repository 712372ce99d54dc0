"""`securitynet report`: turn results files into an HTML page of the SecurityNet paper's analyses.

`build_report(paths, out_dir)` merges the results files, builds every section it has data for
(`sections.build_sections`: one per benchmark, as its spec in `results/spec.py` says), writes one
PNG per figure and one CSV per table into `out_dir`, and `index.html` plus `README.md` showing
them. See docs/reports.md.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.results.merge import Conflict, ResultSet, load_and_merge

GENERATOR = "securitynet report"
MANIFEST = "manifest.json"
TITLE = "SecurityNet report"


@dataclass
class Report:
    """What `build_report` wrote and found."""

    out_dir: Path
    index: Path
    sections: list[str]
    files: list[str]
    result_set: ResultSet
    correlations: Any = None  # pandas DataFrame: every correlation drawn in a figure

    @property
    def conflicts(self) -> list[Conflict]:
        return self.result_set.conflicts


def build_report(paths: Iterable[str | Path], out_dir: str | Path, *, reported: Iterable[str] | None = None,
                 use_reported: bool = True, embed: bool = False, title: str = TITLE, dpi: int | None = None,
                 command: str | None = None) -> Report:
    """Merge the results files `paths` and write the report into `out_dir` (created if needed).

    `reported`: reported-numbers CSVs or folders (default: the catalog's `reported/` folder);
    `use_reported=False` leaves the comparison out. `embed`: inline the PNGs into index.html.
    `dpi`: resolution of the PNGs (default `figures.DPI`). `command`: shown on the page as what made it.
    Files a previous report listed in `out_dir/manifest.json` are removed first, nothing else.
    """
    import pandas as pd

    from pytest_securitynet.report import figures
    from pytest_securitynet.report.blocks import Context, Section
    from pytest_securitynet.report.frames import load_reported, reported_paths
    from pytest_securitynet.report.render import render_html, render_markdown
    from pytest_securitynet.report.sections import build_sections

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no results files given")
    result_set = load_and_merge(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    ref = load_reported(reported_paths(list(reported) if reported is not None else None)) if use_reported else None
    ctx = Context(result_set, out, ref, dpi=dpi or figures.DPI)
    sections = build_sections(ctx)
    correlations = pd.DataFrame(ctx.correlations)
    if len(correlations):
        extra = Section("correlations", "All correlations")
        extra.add(ctx.table("correlations", "Every Pearson correlation of a figure above (r undefined below 3 "
                            "points or when a variable is constant; `distinct` is the smaller number of different x "
                            "and y values, and a figure shows r only where it is 3 or more).", correlations))
        sections.append(extra)
    subtitle = (f"Made by `{GENERATOR}` on {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
                f"{', '.join(f'`{p.name}`' for p in paths)}." + (f" Command: `{command}`" if command else ""))
    (out / "index.html").write_text(render_html(sections, out, title=title, subtitle=subtitle, embed=embed),
                                    encoding="utf-8")
    (out / "README.md").write_text(render_markdown(sections, title=title, subtitle=subtitle), encoding="utf-8")
    files = ["index.html", "README.md", *ctx.files]
    manifest = {"generator": GENERATOR, "inputs": [str(p) for p in paths], "sections": [s.id for s in sections],
                "files": files, "conflicts": [c.key for c in result_set.conflicts]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return Report(out_dir=out, index=out / "index.html", sections=[s.id for s in sections], files=files,
                  result_set=result_set, correlations=correlations)


def _remove_previous(out: Path) -> None:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if previous.get("generator") != GENERATOR:
        return
    root = out.resolve()
    for name in previous.get("files", []):
        path = (out / name).resolve()
        if path.is_file() and root in path.parents:
            path.unlink()
    triggers = out / "triggers"
    if triggers.is_dir() and not any(triggers.iterdir()):
        triggers.rmdir()


__all__ = ["Report", "build_report", "load_and_merge", "ResultSet"]
