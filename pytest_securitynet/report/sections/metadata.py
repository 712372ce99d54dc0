"""The metadata section (paper §4): stealing accuracy, target accuracy and membership inference AUC
against the architecture's publication year and the type of venue (catalog annotations)."""

from __future__ import annotations

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.sections.common import data_group, main_rows, section_rows, with_target_accuracy


def metadata(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty:
        return None
    stealing_spec, stealing = section_rows(ctx, "stealing", "attack_accuracy")
    stealing, stealing_setting = main_rows(stealing_spec, with_target_accuracy(stealing, ctx))
    _, task = section_rows(ctx, "task", "test_accuracy")
    mia_spec, mia = section_rows(ctx, "membership", "auc")
    mia, attack = main_rows(mia_spec, mia)
    panels = [(stealing, "attack_accuracy", f"model stealing ({stealing_setting})"),
              (task, "test_accuracy", "target task accuracy"),
              (mia, "auc", f"membership inference ({attack})" if len(mia) else "membership inference")]
    # a comparison needs at least two different years (venue types)
    by_year = [(f, m, t) for f, m, t in panels if len(f) and "year" in f and f["year"].nunique() >= 2]
    by_venue = [(f, m, t) for f, m, t in panels[::2] if len(f) and "venue_type" in f and f["venue_type"].nunique() >= 2]
    if not by_year and not by_venue:
        return None
    section = Section("metadata", "Metadata: publication year and venue type")
    section.add(Text("Annotations from the catalog: the year the model's architecture was published and the type "
                     f"of venue. Model stealing uses `{stealing_setting}`, membership inference "
                     f"`{attack}`, each benchmark's main setting where present."))
    if by_year:
        fig, axes = F.panels(len(by_year))
        for ax, (part, metric, title) in zip(axes, by_year):
            groups = F.scatter_groups(ax, part.dropna(subset=["year"]), "year", metric, data_group(part), title=title,
                                      xlabel=F.LABELS["year"], ylabel=F.LABELS[metric])
            for name, corr in groups.items():
                ctx.note_correlation("metadata-year", "year", metric, name, corr)
        section.add(ctx.figure(fig, "metadata-year", "Attack performance and accuracy vs publication year",
                               "Stealing attack accuracy (paper Fig. 10), target accuracy (Fig. 11) and membership "
                               "inference AUC (Fig. 16) against the publication year."))
    if by_venue:
        fig, axes = F.panels(len(by_venue), panel=(5.0, 3.8))
        for ax, (part, metric, title) in zip(axes, by_venue):
            F.strip_by_category(ax, part.dropna(subset=["venue_type"]), "venue_type", metric, xlabel="venue type",
                                ylabel=F.LABELS[metric], title=title, identify="model")
        section.add(ctx.figure(fig, "metadata-venue", "Attack performance by venue type",
                               "Stealing attack accuracy (paper Fig. 12) and membership inference AUC (Fig. 17) per "
                               "type of publishing venue (boxes where a venue type has 3 or more models)."))
    return section
