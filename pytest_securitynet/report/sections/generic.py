"""The section of a benchmark without a special builder: its headline metrics per model and setting
(or the spec's `group_by` columns), their summary per dataset, and a figure of the first headline
metric. Everything it needs comes from the benchmark's spec, so a new attack file gets a section
without an edit here."""

from __future__ import annotations

import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.report.sections.common import data_panels, describe, ordered
from pytest_securitynet.report.sections.datasets import headline
from pytest_securitynet.results.spec import BenchmarkSpec


def generic(ctx: Context, spec: BenchmarkSpec) -> Section | None:
    """Per-model table, per-dataset summary and a figure of the spec's headline metrics; None without rows."""
    frame = benchmark_rows(ctx.passed, spec.id)
    metrics = headline(ctx.passed, spec) if len(frame) else []
    if not metrics:
        return None
    keys = [c for c in spec.group_by if c in frame.columns] or ["setting"]
    numeric = {m: _numbers(frame[m]) for m in metrics}
    numeric = {m: v for m, v in numeric.items() if v.notna().any()}
    section = Section(spec.slug, spec.title)
    section.add(Text(spec.description or f"Rows of `{spec.id}`: its headline metrics per model and "
                                         f"{', '.join(f'`{k}`' for k in keys)}."))

    table = _per_model(frame, spec, keys, metrics, numeric)
    section.add(ctx.table(spec.slug, f"{spec.title}: headline metrics per model and {', '.join(keys)}"
                          f"{_best_first(spec, next(iter(numeric), None))}.", table))
    summary = _summary(frame, keys, numeric)
    if len(summary):
        display = summary.assign(cell=[_cell(r) for r in summary.itertuples()])
        display = display.pivot_table(index=[*keys, "metric"], columns="data", values="cell",
                                      aggfunc="first").reset_index()
        display.columns.name = None
        section.add(ctx.table(f"{spec.slug}-summary", f"{spec.title}: mean ± standard deviation (n = models) "
                              "per dataset.", summary, display))
    if numeric:
        first = next(iter(numeric))
        section.add(_figure(ctx, spec, frame.assign(**{first: numeric[first]}), keys[0], first))
    return section


def _numbers(values: pd.Series) -> pd.Series:
    """A metric as floats (booleans as 0/1); what is not a number becomes NaN."""
    return pd.to_numeric(values.map(lambda v: float(v) if isinstance(v, bool) else v), errors="coerce")


def _order(frame: pd.DataFrame, key: str, spec: BenchmarkSpec) -> list[str]:
    return spec.order(frame[key]) if key == "setting" else ordered(frame[key], ())


def _per_model(frame: pd.DataFrame, spec: BenchmarkSpec, keys: list[str], metrics: list[str],
               numeric: dict[str, pd.Series]) -> pd.DataFrame:
    table = frame[["model", "data", *keys, *metrics]].copy()
    rank = pd.Series(0, index=table.index)
    first = next(iter(numeric), None)
    direction = spec.metric(first).higher_is_better if first else None
    table["_key"] = pd.Categorical(table[keys[0]].astype(str), _order(frame, keys[0], spec), ordered=True)
    if direction is not None:
        rank = -numeric[first] if direction else numeric[first]
    table = table.assign(_rank=rank).sort_values(["_key", *keys[1:], "_rank", "model"])
    return table.drop(columns=["_key", "_rank"]).reset_index(drop=True)


def _best_first(spec: BenchmarkSpec, metric: str | None) -> str:
    direction = spec.metric(metric).higher_is_better if metric else None
    return "" if direction is None else f", best `{metric}` first ({'higher' if direction else 'lower'} is better)"


def _summary(frame: pd.DataFrame, keys: list[str], numeric: dict[str, pd.Series]) -> pd.DataFrame:
    records = []
    for metric, values in numeric.items():
        for group_values, part in frame.assign(_value=values).groupby(["data", *keys]):
            stats = describe(part["_value"])
            if stats["n"]:
                records.append({**dict(zip(["data", *keys], group_values)), "metric": metric, **stats})
    return pd.DataFrame(records)


def _cell(row) -> str:
    spread = f" ± {row.std:.3f}" if row.n > 1 else ""
    return f"{row.mean:.3f}{spread} ({row.n})"


def _figure(ctx: Context, spec: BenchmarkSpec, frame: pd.DataFrame, key: str, metric: str):
    datas = data_panels(frame)
    categories = _order(frame, key, spec)
    fig, axes = F.panels(len(datas))
    label = spec.metric(metric).axis_label(F.LABELS.get(metric))
    for ax, data in zip(axes, datas):
        F.strip_by_category(ax, frame[frame["data"] == data], key, metric, order=categories, xlabel=key,
                            ylabel=label, title=data, connect="model" if len(categories) > 1 else None,
                            identify="model")
    joined = "; lines join the values of one model" if len(categories) > 1 else ""
    return ctx.figure(fig, spec.slug, f"{spec.title}: {metric} per {key}",
                      f"`{metric}` of each model per `{key}`, one panel per dataset (boxes where a {key} has 3 or "
                      f"more models){joined}.")
