"""The SecurityNet statistics (the paper's Figure 1) computed from the catalog, as tables and PNGs.

Counts are over the catalog entries that come from the SecurityNet database (those with a
`database` table) unless asked for all entries, so they reproduce the database's own counts:
models per dataset and table, publishing years, model types, countries and venues. A model made
in several countries is counted once under its countries in alphabetical order ("China, USA"),
however the database lists them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pytest_securitynet.catalog.entries import Catalog, ModelEntry

TABLES = ("benchmark", "security")


@dataclass(frozen=True)
class Panel:
    """One panel of Figure 1: counts of `key` values, per table where `by_table`."""

    name: str
    title: str
    key: str
    tables: tuple[str, ...]
    top: int | None = None


PANELS = (
    Panel("years", "Publishing year of benchmark models", "year", ("benchmark",)),
    Panel("benchmark-model-types", "Top benchmark model types", "model_type", ("benchmark",), top=10),
    Panel("security-model-types", "Top security model types", "model_type", ("security",), top=10),
    Panel("countries", "Top countries by model table", "country", TABLES, top=10),
    Panel("venues", "Top venues by model table", "venue", TABLES, top=10),
    Panel("benchmark-datasets", "Top benchmark models' datasets", "dataset", ("benchmark",), top=10),
)


def records(catalog: Catalog, database_only: bool = True) -> list[dict[str, object]]:
    """One flat record per model: table, dataset (the database's name), year, type, country, venue."""
    out = []
    for entry in catalog.models.values():
        if database_only and "database" not in entry.raw:
            continue
        out.append(_record(entry))
    return out


def _record(entry: ModelEntry) -> dict[str, object]:
    notes = entry.annotations
    return {
        "table": entry.raw.get("database", {}).get("table", entry.purpose),
        "dataset": notes.get("dataset", entry.dataset),  # the database's name, as its counts are keyed
        "dataset_id": entry.dataset,  # the catalog's id, which the printed tables and plots show
        "year": notes.get("year", "unknown"),
        "model_type": entry.model_type,
        "country": normalise_countries(notes.get("country", "unknown")),
        "venue": notes.get("venue", "unknown"),
    }


def normalise_countries(value: object) -> str:
    """`"USA, China"` and `"China, USA"` are one value: the countries sorted, comma-separated."""
    parts = sorted({part.strip() for part in str(value).split(",") if part.strip()}, key=str.casefold)
    return ", ".join(parts) or "unknown"


def scope_line(catalog: Catalog, counted: int, database_only: bool = True) -> str:
    """What the counts cover, and how they relate to `catalog list` (every entry of the catalog)."""
    total = len(catalog.models)
    if not database_only:
        return f"Counting all {total} catalog models (`catalog list` shows the same {total})."
    others = Counter(_origin(entry) for entry in catalog.models.values() if "database" not in entry.raw)
    extra = ", ".join(f"{name} ({n})" for name, n in sorted(others.items()))
    return (f"Counting the {counted} models of the SecurityNet database; the catalog holds {total} "
            f"(`catalog list`), {total - counted} not from the database" + (f": {extra}" if extra else "")
            + ". `--all` counts every model.")


def _origin(entry: ModelEntry) -> str:
    return entry.tags[0] if entry.tags else Path(entry.origin).stem


def dataset_table_counts(recs: Iterable[dict[str, object]]) -> dict[tuple[str, str], int]:
    """{(table, dataset): number of models}."""
    return dict(Counter((str(r["table"]), str(r["dataset"])) for r in recs))


def panel_counts(recs: list[dict[str, object]], panel: Panel) -> dict[str, Counter]:
    """{table: Counter(value -> models)} for the panel's tables."""
    return {table: Counter(str(r[panel.key]) for r in recs if r["table"] == table) for table in panel.tables}


def panel_rows(counts: dict[str, Counter], panel: Panel) -> list[tuple[str, list[int]]]:
    """Rows of (value, [count per table]), sorted by total (years: by year), cut to the panel's top."""
    total = Counter()
    for counter in counts.values():
        total.update(counter)
    if panel.key == "year":
        order = sorted(total)
    else:
        order = [value for value, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))]
    if panel.top:
        order = order[: panel.top]
    return [(value, [counts[t][value] for t in panel.tables]) for value in order]


def dataset_ids(recs: Iterable[dict[str, object]]) -> dict[str, str]:
    """The catalog id (`cifar10`) each database dataset name (`CIFAR-10`) is shown as; ids joined by `/`."""
    ids: dict[str, set[str]] = {}
    for r in recs:
        ids.setdefault(str(r["dataset"]), set()).add(str(r.get("dataset_id", r["dataset"])))
    return {name: "/".join(sorted(found)) for name, found in ids.items()}


def _label(panel: Panel, value: str, ids: dict[str, str]) -> str:
    return ids.get(value, value) if panel.key == "dataset" else value


def format_tables(recs: list[dict[str, object]]) -> str:
    """Every count as plain-text tables: models per dataset (by catalog id) and table, then each Figure 1 panel."""
    lines = [f"{len(recs)} models", "", "Models per dataset and table"]
    counts = dataset_table_counts(recs)
    ids = dataset_ids(recs)
    datasets = sorted({d for _, d in counts}, key=lambda d: (-sum(counts.get((t, d), 0) for t in TABLES), ids[d]))
    lines.append(_row(["dataset", *TABLES, "total"]))
    for dataset in datasets:
        per = [counts.get((t, dataset), 0) for t in TABLES]
        lines.append(_row([ids[dataset], *per, sum(per)]))
    lines.append(_row(["total", *[sum(v for (t, _), v in counts.items() if t == table) for table in TABLES], len(recs)]))
    for panel in PANELS:
        lines += ["", f"{panel.title} ({panel.name})", _row([panel.key, *panel.tables])]
        for value, per in panel_rows(panel_counts(recs, panel), panel):
            lines.append(_row([_label(panel, value, ids), *per]))
    return "\n".join(lines)


def _row(cells: list[object]) -> str:
    first, *rest = cells
    return f"{str(first):32}" + "".join(f"{str(c):>12}" for c in rest)


def plot(recs: list[dict[str, object]], out_dir: Path) -> list[Path]:
    """One PNG per Figure 1 panel (bar charts, counts per table side by side) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ids = dataset_ids(recs)
    for panel in PANELS:
        rows = panel_rows(panel_counts(recs, panel), panel)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        width = 0.8 / len(panel.tables)
        for i, table in enumerate(panel.tables):
            xs = [x + (i - (len(panel.tables) - 1) / 2) * width for x in range(len(rows))]
            ax.bar(xs, [per[i] for _, per in rows], width=width, label=f"{table} models")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([_label(panel, value, ids) for value, _ in rows], rotation=45, ha="right")
        ax.set_xlabel(panel.key.replace("_", " "))
        ax.set_ylabel("number of models")
        ax.set_title(panel.title)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{panel.name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
