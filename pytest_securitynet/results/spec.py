"""What a benchmark is, declared beside it: its id, settings, headline metrics, regression
tolerances, and how the report shows it.

A benchmark file declares `SPEC = BenchmarkSpec(...)` at module level; the plugin picks it up at
collection and writes it into the results JSON's top-level `benchmarks` block, so the report and
`--securitynet-compare` know the benchmark without importing its file (which needs torch and
pytest). Specs declared elsewhere (a conftest, another plugin) are added with `register_spec`.
Results files written before the block existed fall back on the built-in benchmarks' specs,
kept in `builtin_specs.json` (`python -m pytest_securitynet.results.spec benchmarks/test_*.py`
rewrites it from the benchmark files; `tests/test_spec.py` checks that it matches them).

No pytest, no torch: the report and `results/regression.py` import this module.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

BASELINE = "baseline"
"""Tolerance kind: against a re-run (a baseline or an earlier results JSON)."""
REPORTED = "reported"
"""Tolerance kind: against the numbers the SecurityNet database reports."""
BUILTIN_SPECS = Path(__file__).with_name("builtin_specs.json")
DEFAULT_POSITION = 100
"""Where sections of benchmarks that do not say go: after the paper's (10 to 50)."""
GENERIC_METRICS_MAX = 6
"""Without declared headline metrics, the report summarises up to this many numeric metrics."""


@dataclass(frozen=True)
class Metric:
    """One recorded metric: how the report labels it and how far a re-measurement may drift.

    `baseline` and `reported` are absolute tolerances against a re-run and against the reported
    numbers; None leaves the metric out of that comparison. `headline=False` keeps a metric out of
    the report's summaries while it is still checked for regressions.
    """

    name: str
    label: str = ""
    higher_is_better: bool | None = None
    baseline: float | None = None
    reported: float | None = None
    headline: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a metric needs a name, got {self.name!r}")
        for kind in (BASELINE, REPORTED):
            value = getattr(self, kind)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"metric {self.name}: the {kind} tolerance must be a number >= 0, got {value!r}")

    def axis_label(self, default: str | None = None) -> str:
        """The label (else `default`, else the name) with the direction in which the value improves."""
        text = self.label or default or self.name
        if self.higher_is_better is None:
            return text
        return f"{text}, {'higher' if self.higher_is_better else 'lower'} is better"


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark as the report and the regression check see it.

    `id` is the rows' `benchmark`: `<file without test_>.<function without test_>`. `settings`
    orders the settings (the test id without the model id) in tables and figures; others follow,
    sorted. `main_setting` is the one other sections compare models on (the first setting when
    None). `metrics` are `Metric`s or plain names. `section` names a special report builder
    (`task`, `stealing`, `membership`, `evasion`, `backdoor`); without one the benchmark gets the
    generic section: its headline metrics per model and `group_by` columns (row fields or recorded
    metrics), and a figure of the first headline metric. `highlights` are the per-model table's
    columns on the page, each `metric` (in the main setting) or `setting metric`. `position`
    orders the sections; `short` names the benchmark in column titles.
    """

    id: str
    title: str
    metrics: tuple[Metric, ...] = ()
    settings: tuple[str, ...] = ()
    main_setting: str | None = None
    section: str | None = None
    group_by: tuple[str, ...] = ("setting",)
    highlights: tuple[str, ...] = ()
    short: str = ""
    description: str = ""
    position: int = DEFAULT_POSITION

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"benchmark id {self.id!r}: write <file without test_>.<function without test_>, "
                             "e.g. membership_inference.membership_inference")
        metrics = tuple(m if isinstance(m, Metric) else Metric(str(m)) for m in _sequence("metrics", self.metrics))
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {self.id}: a metric is declared twice in {names}")
        object.__setattr__(self, "metrics", metrics)
        for name in ("settings", "group_by", "highlights"):
            object.__setattr__(self, name, tuple(str(v) for v in _sequence(name, getattr(self, name))))
        if not self.group_by:
            object.__setattr__(self, "group_by", ("setting",))
        if not self.short:
            object.__setattr__(self, "short", self.id.split(".", 1)[0].replace("_", " "))

    # --- what the report and the regression check ask -------------------------------------

    @property
    def headline(self) -> tuple[str, ...]:
        """The metrics the report summarises, in order."""
        return tuple(m.name for m in self.metrics if m.headline)

    def metric(self, name: str) -> Metric:
        """The declared metric `name`, else a plain one."""
        return next((m for m in self.metrics if m.name == name), Metric(name))

    def tolerances(self, kind: str) -> dict[str, float]:
        """`{metric: absolute tolerance}` against a `BASELINE` re-run or the `REPORTED` numbers."""
        if kind not in (BASELINE, REPORTED):
            raise ValueError(f"tolerance kind {kind!r}: use {BASELINE!r} or {REPORTED!r}")
        return {m.name: float(getattr(m, kind)) for m in self.metrics if getattr(m, kind) is not None}

    def default_setting(self, present: Iterable[str]) -> str | None:
        """The main setting if any row has it, else the first of `present` in the spec's order."""
        present = list(present)
        if self.main_setting in present:
            return self.main_setting
        order = self.order(present)
        return order[0] if order else None

    def order(self, values: Iterable[Any]) -> list[str]:
        """`values` (settings) as strings, once each: the spec's order first, the rest sorted."""
        return ordered(values, self.settings)

    @property
    def slug(self) -> str:
        """The id as a file and HTML anchor name: `confidence_gap.confidence_gap` -> `confidence-gap-confidence-gap`."""
        return re.sub(r"[^a-z0-9]+", "-", self.id.lower()).strip("-")

    # --- JSON -------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (the results file's `benchmarks` block holds one per benchmark)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics":
                value = [{k.name: getattr(m, k.name) for k in fields(m)} for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkSpec:
        """The spec `as_dict` wrote; unknown keys (from a newer version) are ignored."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a benchmark spec must be an object, got {type(data).__name__}")
        known, metric_keys = {f.name for f in fields(cls)}, {f.name for f in fields(Metric)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["metrics"] = tuple(
                Metric(**{k: v for k, v in m.items() if k in metric_keys}) if isinstance(m, Mapping) else Metric(str(m))
                for m in _sequence("metrics", values.get("metrics") or ()))
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"bad benchmark spec {data.get('id')!r}: {exc}") from exc


def _sequence(name: str, value: Any) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list or tuple, got {value!r}")
    return tuple(value)


def ordered(values: Iterable[Any], order: Sequence[str]) -> list[str]:
    """`values` as strings, once each: those in `order` first (in that order), the rest sorted."""
    values = list(dict.fromkeys(str(v) for v in values))
    order = list(dict.fromkeys(order))
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def implied_spec(benchmark: str) -> BenchmarkSpec:
    """The spec of a benchmark that declares none: generic section, no tolerances."""
    return BenchmarkSpec(id=benchmark, title=benchmark)


# --- the registry ---------------------------------------------------------------------------

_REGISTRY: dict[str, BenchmarkSpec] = {}


def register_spec(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Make `spec` known to this process (a later spec with the same id replaces it); returns it."""
    if not isinstance(spec, BenchmarkSpec):
        raise TypeError(f"register_spec takes a BenchmarkSpec, got {type(spec).__name__}")
    _REGISTRY[spec.id] = spec
    return spec


def specs() -> dict[str, BenchmarkSpec]:
    """The specs registered in this process, by id."""
    return dict(_REGISTRY)


def builtin_specs() -> dict[str, BenchmarkSpec]:
    """The paper's benchmarks' specs, as their files declare them (`builtin_specs.json`)."""
    return dict(_builtin())


@lru_cache(maxsize=1)
def _builtin() -> dict[str, BenchmarkSpec]:
    if not BUILTIN_SPECS.is_file():
        return {}
    return specs_from_block(json.loads(BUILTIN_SPECS.read_text(encoding="utf-8"))["benchmarks"])


def specs_from_block(block: Mapping[str, Any] | None) -> dict[str, BenchmarkSpec]:
    """A results file's `benchmarks` block as specs; an entry that does not parse is skipped."""
    out = {}
    for key, data in (block or {}).items():
        try:
            spec = BenchmarkSpec.from_dict(data)
        except ValueError as exc:
            logger.warning("benchmark spec %s skipped: %s", key, exc)
            continue
        out[key] = spec if spec.id == key else replace(spec, id=key)
    return out


def resolve_specs(benchmarks: Iterable[str], *blocks: Mapping[str, Any] | None) -> list[BenchmarkSpec]:
    """One spec per benchmark id, in report order (`position`, then id).

    A spec comes from the first of: the `blocks` (results files' `benchmarks`, given first wins),
    the specs registered in this process, the built-in specs, else `implied_spec`. Specs of the
    blocks whose benchmark has no row are included too (their sections draw nothing).
    """
    found: dict[str, BenchmarkSpec] = {}
    for block in blocks:
        for key, spec in specs_from_block(block).items():
            found.setdefault(key, spec)
    registered, builtin = specs(), builtin_specs()
    for benchmark in dict.fromkeys(benchmarks):
        if benchmark not in found:
            found[benchmark] = registered.get(benchmark) or builtin.get(benchmark) or implied_spec(benchmark)
    return sorted(found.values(), key=lambda s: (s.position, s.id))


def spec_for(benchmark: str, *blocks: Mapping[str, Any] | None) -> BenchmarkSpec | None:
    """The spec of one benchmark: registered, else from `blocks`, else built-in; None if unknown."""
    if benchmark in _REGISTRY:
        return _REGISTRY[benchmark]
    for block in blocks:
        if block and benchmark in block:
            parsed = specs_from_block({benchmark: block[benchmark]})
            if parsed:
                return parsed[benchmark]
    return builtin_specs().get(benchmark)


# --- the built-in snapshot --------------------------------------------------------------------

def declared_specs(module: ModuleType) -> list[BenchmarkSpec]:
    """The specs a benchmark module declares: `SPEC` (one), `SPECS` (several benchmarks in one file)."""
    found = ([module.SPEC] if hasattr(module, "SPEC") else []) + list(getattr(module, "SPECS", ()))
    for spec in found:
        if not isinstance(spec, BenchmarkSpec):
            raise ValueError(f"{getattr(module, '__file__', module.__name__)}: SPEC must be a "
                             f"pytest_securitynet.results.spec.BenchmarkSpec, got {type(spec).__name__}")
    return found


def module_specs(path: Path) -> list[BenchmarkSpec]:
    """The specs a benchmark file declares, importing it (with its own imports: torch, pytest)."""
    path = Path(path)
    name = f"_securitynet_spec_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return declared_specs(module)


def write_builtin_specs(paths: Iterable[Path], out: Path = BUILTIN_SPECS) -> Path:
    """Write the specs the benchmark files `paths` declare as the built-in snapshot."""
    found = sorted((s for p in paths for s in module_specs(Path(p))), key=lambda s: (s.position, s.id))
    doc = {"about": "The built-in benchmarks' specs, as benchmarks/test_*.py declare them; for results files "
                    "without a `benchmarks` block. Rewrite: python -m pytest_securitynet.results.spec "
                    "benchmarks/test_*.py",
           "benchmarks": {s.id: s.as_dict() for s in found}}
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    _builtin.cache_clear()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_securitynet.results.spec",
                                     description="Rewrite the built-in benchmark specs from the benchmark files.")
    parser.add_argument("files", nargs="+", type=Path, help="benchmark files, e.g. benchmarks/test_*.py")
    parser.add_argument("-o", "--output", type=Path, default=BUILTIN_SPECS, help=f"default: {BUILTIN_SPECS}")
    args = parser.parse_args(argv)
    out = write_builtin_specs(args.files, args.output)
    print(f"{out}: {len(json.loads(out.read_text())['benchmarks'])} specs")
    return 0


if __name__ == "__main__":
    # Run the imported module's main: the benchmark files' specs are instances of its class, not this copy's.
    from pytest_securitynet.results import spec as _spec

    raise SystemExit(_spec.main())


__all__ = ["BASELINE", "REPORTED", "BenchmarkSpec", "Metric", "builtin_specs", "declared_specs", "implied_spec",
           "module_specs", "ordered", "register_spec", "resolve_specs", "spec_for", "specs", "specs_from_block",
           "write_builtin_specs"]
