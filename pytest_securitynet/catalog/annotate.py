"""Computed annotations: what the architecture itself says about a catalog model.

Parameters, FLOPs, whether it has batch normalisation or dropout, its input size and output
width are derived by building the architecture offline (pytorchcv, timm and torchvision build
without weights) on PyTorch's `meta` device, so nothing is allocated or initialised and no file is
read. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` for one image of the entry's input
size; it counts a multiply-add as 2 FLOPs (model-zoo tables such as pytorchcv's list MACs, half of
that). `securitynet catalog annotate` writes the results to `catalog/computed/architectures.csv`,
keyed by catalog id, so the generated catalog files stay untouched by the refresh.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, ModelEntry

log = logging.getLogger(__name__)

COMPUTED_CSV = BUILTIN_CATALOG / "computed" / "architectures.csv"
FIELDS = ("id", "built_with", "input_size", "output_width", "parameters", "flops", "has_batchnorm",
          "has_dropout", "architecture_input_size")


class NotBuildable(Exception):
    """The entry names no architecture that can be built offline (the reason is the message)."""


@dataclass(frozen=True)
class Computed:
    id: str
    built_with: str
    input_size: str
    output_width: int
    parameters: int
    flops: int | None
    has_batchnorm: bool
    has_dropout: bool
    architecture_input_size: str


def build_architecture(entry: ModelEntry, device: str | torch.device = "meta") -> tuple[nn.Module, str]:
    """The entry's architecture without weights, built on `device`, and how it was built."""
    kind = entry.source_kind
    with torch.device(device):
        if kind == "pytorchcv":
            from pytorchcv.model_provider import get_model

            name = entry.source.removeprefix("pytorchcv:")
            return get_model(name, pretrained=False), f"pytorchcv:{name}"
        if kind == "timm":
            import timm

            name = entry.source.removeprefix("timm:")
            return timm.create_model(name, pretrained=False), f"timm:{name}"
        if kind == "torchvision":
            import torchvision

            name = entry.source.split(":")[1]
            return torchvision.models.get_model(name, weights=None), f"torchvision:{name}"
        builder = entry.raw.get("builder")
        if builder:
            from pytest_securitynet.zoo.architectures import build

            return build(builder, **entry.raw.get("builder_args", {})), f"builder:{builder}"
    raise NotBuildable(f"{entry.id}: source {entry.source!r} names no architecture builder")


def output_width(net: nn.Module, input_size: Iterable[int], device: str | torch.device = "meta") -> int:
    """The width of the network's output for one input of `input_size` (C, H, W)."""
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, *input_size, device=device))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])


def compute(entry: ModelEntry, count_flops: bool = True) -> Computed:
    """Build `entry`'s architecture on the meta device and measure it (CPU fallback if meta fails)."""
    size = tuple(entry.preprocess["input_size"])
    try:
        net, how = build_architecture(entry, "meta")
        device = "meta"
        flops, width = _measure(net, size, device, count_flops)
    except NotBuildable:
        raise
    except (RuntimeError, NotImplementedError) as exc:  # an op without a meta kernel, e.g. `.item()`
        log.info("%s: meta build failed (%s); building on the CPU", entry.id, exc)
        net, how = build_architecture(entry, "cpu")
        device = "cpu"
        flops, width = _measure(net, size, device, count_flops)
    in_size = getattr(net, "in_size", None)
    return Computed(
        id=entry.id, built_with=how, input_size="x".join(map(str, size)), output_width=width,
        parameters=sum(p.numel() for p in net.parameters()), flops=flops,
        has_batchnorm=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()),
        has_dropout=any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules()),
        architecture_input_size="x".join(map(str, in_size)) if in_size else "",
    )


def _measure(net: nn.Module, size: tuple[int, ...], device: str, count_flops: bool) -> tuple[int | None, int]:
    if not count_flops:
        return None, output_width(net, size, device)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        width = output_width(net, size, device)
    return int(counter.get_total_flops()), width


def annotate(entries: Iterable[ModelEntry], count_flops: bool = True,
             progress: Callable[[str], None] | None = None) -> tuple[list[Computed], dict[str, str]]:
    """Computed annotations of every buildable entry, and the reason for each one skipped."""
    done, skipped = [], {}
    for entry in entries:
        start = time.perf_counter()
        try:
            done.append(compute(entry, count_flops))
        except NotBuildable as exc:
            skipped[entry.id] = str(exc)
            continue
        if progress:
            progress(f"{entry.id}: {time.perf_counter() - start:.1f}s")
    return done, skipped


def read_computed(path: Path = COMPUTED_CSV) -> dict[str, dict[str, str]]:
    """The computed annotations file as {id: {field: text}} (empty if there is none)."""
    if not Path(path).exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def write_computed(rows: Iterable[Computed], path: Path = COMPUTED_CSV, keep: dict[str, dict[str, str]] | None = None) -> Path:
    """Write `rows` (merged over `keep`, e.g. the current file when refreshing a selection), sorted by id."""
    merged = dict(keep or {})
    for row in rows:
        merged[row.id] = {k: _text(v) for k, v in asdict(row).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for model_id in sorted(merged):
            writer.writerow({k: merged[model_id].get(k, "") for k in FIELDS})
    return path


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
