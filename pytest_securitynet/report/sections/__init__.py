"""The report's sections, each reproducing one of the SecurityNet paper's analyses from whatever the
results hold. A section builder returns None when its data is absent, so the page has no empty
sections; inside a section, each figure or table is made only when its data exists.

The page is: the sections about the inputs, the per-dataset summary, then one section per benchmark
in its spec's `position` order, then the sections that compare benchmarks (model purpose, metadata,
reported numbers). A benchmark's spec names its builder (`BenchmarkSpec.section`); a spec naming
none, or one this module does not know, gets the generic section.
"""

from __future__ import annotations

from typing import Callable, Optional

from pytest_securitynet.report.blocks import Context, Section
from pytest_securitynet.report.sections.backdoor import backdoor_detection
from pytest_securitynet.report.sections.datasets import per_dataset
from pytest_securitynet.report.sections.evasion import evasion
from pytest_securitynet.report.sections.generic import generic
from pytest_securitynet.report.sections.membership import membership_inference
from pytest_securitynet.report.sections.metadata import metadata
from pytest_securitynet.report.sections.overview import duplicates, not_passed, overview
from pytest_securitynet.report.sections.purpose import purposes
from pytest_securitynet.report.sections.reported import reported
from pytest_securitynet.report.sections.robustness import robust_vs_standard
from pytest_securitynet.report.sections.stealing import model_stealing
from pytest_securitynet.results.spec import BenchmarkSpec

Builder = Callable[[Context], Optional[Section]]
BenchmarkBuilder = Callable[[Context, BenchmarkSpec], Optional[Section]]

BEFORE: tuple[Builder, ...] = (overview, duplicates, not_passed, per_dataset)
AFTER: tuple[Builder, ...] = (purposes, robust_vs_standard, metadata, reported)
SPECIAL: dict[str, BenchmarkBuilder | None] = {
    "task": None,  # the target's own accuracy: drawn by the per-dataset, purpose and metadata sections
    "stealing": model_stealing,
    "membership": membership_inference,
    "backdoor": backdoor_detection,
    "evasion": evasion,
}
"""Builders of the paper's benchmarks, by the name a spec gives in `section`."""


def builder_for(spec: BenchmarkSpec) -> BenchmarkBuilder | None:
    """The spec's special builder, else the generic one; None when the benchmark has no section of its own."""
    if spec.section in SPECIAL:
        return SPECIAL[spec.section]
    return generic


def build_sections(ctx: Context) -> list[Section]:
    """Every section that has data, in page order."""
    out: list[Section | None] = [builder(ctx) for builder in BEFORE]
    for spec in ctx.specs_in(ctx.passed):
        builder = builder_for(spec)
        if builder is not None:
            out.append(builder(ctx, spec))
    out += [builder(ctx) for builder in AFTER]
    return [s for s in out if s is not None and s.blocks]

__all__ = ["SPECIAL", "build_sections", "builder_for", "generic"]
