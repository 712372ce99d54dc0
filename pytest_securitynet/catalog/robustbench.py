"""RobustBench's model zoo as catalog files: `catalog/robustbench/<dataset>.toml`.

The entries are read from the `robustbench` package's own model-zoo source (its
`model_zoo/{cifar10,cifar100,imagenet}.py` tables: model name, threat model, Google Drive ids,
preprocessing), parsed without importing the package, so the catalog can be regenerated
without installing robustbench (which pins timm==1.0.9). Paper metadata (venue, year,
authors, architecture, reported clean and AutoAttack accuracy) comes from RobustBench's
`model_info/<dataset>/<threat model>/<name>.json` files where a copy of the repository is
given; the package does not ship them.

    python -m pytest_securitynet.catalog.robustbench --package DIR [--model-info DIR] --out catalog/robustbench

Annotations follow SecurityNet's codebook: purpose `security` (RobustBench's non-robust
`Standard` baselines: `benchmark`), `threat_model` (`Linf`, `L2`, `corruptions`) and
`training` (`standard`, `adversarial` for the L-p leaderboards, `corruption-robust`).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_securitynet.catalog.importer import toml_value

ZOO_FILES = {"cifar10": "cifar10.py", "cifar100": "cifar100.py", "imagenet": "imagenet.py"}
"""RobustBench's dataset -> the model-zoo module that lists its models."""
CATALOG_DATASET = {"cifar10": "cifar10", "cifar100": "cifar-100", "imagenet": "imagenet1k"}
"""RobustBench's dataset -> the catalog's dataset id."""
THREATS = {"Linf": "Linf", "L2": "L2", "corruptions": "corruptions"}
DATASET_NOTES = {
    "cifar10": {"topic_category": "natural scenery", "class_granularity": "coarse", "training_set_size": 50000,
                "num_classes": 10, "input_dims": "32x32x3"},
    "cifar100": {"topic_category": "natural scenery", "class_granularity": "fine", "training_set_size": 50000,
                 "num_classes": 100, "input_dims": "32x32x3"},
    "imagenet": {"topic_category": "natural scenery", "class_granularity": "fine", "training_set_size": 1281167,
                 "num_classes": 1000, "input_dims": "224x224x3"},
}
INPUT_SIZE = {"cifar10": [3, 32, 32], "cifar100": [3, 32, 32], "imagenet": [3, 224, 224]}
VENUE_TYPES = {"ICML": "machine learning", "NeurIPS": "machine learning", "ICLR": "machine learning",
               "CVPR": "computer vision", "ICCV": "computer vision", "ECCV": "computer vision",
               "AAAI": "artificial intelligence", "IJCAI": "artificial intelligence", "TMLR": "machine learning",
               "AISTATS": "machine learning", "UAI": "machine learning", "WACV": "computer vision",
               "BMVC": "computer vision", "IEEE S&P": "security", "USENIX Security": "security", "CCS": "security"}


@dataclass(frozen=True)
class ZooModel:
    """One model of RobustBench's zoo, as its package lists it."""

    dataset: str  # RobustBench's: cifar10, cifar100, imagenet
    threat_model: str  # Linf, L2, corruptions
    name: str
    gdrive_ids: tuple[str, ...] = ()  # empty: the package names no download (a timm model, or none)
    preprocessing: str | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False)


def zoo_models(package_dir: Path) -> list[ZooModel]:
    """Every model of the package's model-zoo tables, in the package's order."""
    models = []
    for dataset, filename in ZOO_FILES.items():
        path = Path(package_dir) / "model_zoo" / filename
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        tables = _ordered_dicts(tree)
        top = next((v for k, v in tables.items() if k.endswith("_models")), None)
        if top is None:
            raise ValueError(f"{path}: no `<dataset>_models` table")
        for threat_expr, table_expr in top:
            threat = _threat_name(threat_expr)
            table = tables.get(table_expr.id) if isinstance(table_expr, ast.Name) else table_expr
            for name_node, spec in table or []:
                models.append(_zoo_model(dataset, threat, name_node, spec, path))
    return models


def _ordered_dicts(tree: ast.Module) -> dict[str, list[tuple[ast.expr, ast.expr]]]:
    """Module-level `name = OrderedDict([(key, value), ...])` assignments, as (key, value) node pairs."""
    found = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        call = node.value
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "OrderedDict" and call.args:
            items = call.args[0]
            if isinstance(items, ast.List):
                found[node.targets[0].id] = [tuple(t.elts) for t in items.elts if isinstance(t, ast.Tuple)]
    return found


def _threat_name(node: ast.expr) -> str:
    name = node.attr if isinstance(node, ast.Attribute) else ast.literal_eval(node)
    if name not in THREATS:
        raise ValueError(f"unknown RobustBench threat model {name!r}")
    return THREATS[name]


def _zoo_model(dataset: str, threat: str, name_node: ast.expr, spec: ast.expr, path: Path) -> ZooModel:
    name = ast.literal_eval(name_node)
    fields: dict[str, Any] = {}
    if isinstance(spec, ast.Dict):
        for key, value in zip(spec.keys, spec.values):
            key = ast.literal_eval(key) if key is not None else None
            if key in ("gdrive_id", "preprocessing"):
                try:
                    fields[key] = ast.literal_eval(value)
                except ValueError:
                    fields[key] = None
    ids = fields.get("gdrive_id")
    ids = tuple(ids) if isinstance(ids, (list, tuple)) else ((ids,) if ids else ())
    return ZooModel(dataset, threat, name, ids, fields.get("preprocessing"))


def with_model_info(models: list[ZooModel], info_dir: Path | None) -> list[ZooModel]:
    """The models with RobustBench's `model_info` JSON attached where the directory has one."""
    if info_dir is None:
        return models
    out = []
    for m in models:
        path = Path(info_dir) / m.dataset / m.threat_model / f"{m.name}.json"
        info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        out.append(ZooModel(m.dataset, m.threat_model, m.name, m.gdrive_ids, m.preprocessing, info))
    return out


def entry_id(model: ZooModel) -> str:
    """`<catalog dataset>-<threat>-<name>-robustbench`, lower case, in the catalog's id alphabet."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.name.lower()).strip("-")
    return f"{CATALOG_DATASET[model.dataset]}-{model.threat_model.lower()}-{slug}-robustbench"


def _venue(info: dict[str, Any]) -> tuple[str | None, int | None]:
    text = str(info.get("venue", "")).strip()
    year = re.search(r"(19|20)\d\d", text)
    venue = re.sub(r"\s*(19|20)\d\d\s*", " ", text.split(",")[0]).strip(" ,") or None  # "arXiv, Mar 2021" -> arXiv
    return venue, int(year.group(0)) if year else None


def _year_from_name(name: str) -> int | None:
    match = re.search(r"(?<=[A-Za-z])(19|20)\d\d", name)
    return int(match.group(0)) if match else None


def _architecture(model: ZooModel) -> tuple[str, str]:
    """(architecture, model_type) from model_info's `architecture`, else from the name."""
    text = str(model.info.get("architecture", "")).strip() or model.name
    arch = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"
    lowered = arch.replace("-", "")
    for key, kind in (("wideresnet", "wide-resnet"), ("wrn", "wide-resnet"), ("preactresnet", "resnet"),
                      ("resnext", "resnext"), ("resnet", "resnet"), ("rn", "resnet"), ("xcit", "vit"),
                      ("swin", "vit"), ("vit", "vit"), ("deit", "vit"), ("convnext", "convnext"),
                      ("raws", "wide-resnet"), ("densenet", "densenet"), ("vgg", "vgg")):
        if lowered.startswith(key) or f"-{key}" in f"-{arch}":
            return arch, kind
    return arch, "other"


def entry(model: ZooModel) -> dict[str, Any]:
    """The catalog entry (a TOML-ready dict) of one zoo model."""
    info = model.info
    standard = model.name == "Standard" or model.name.startswith("Standard_")
    venue, year = _venue(info)
    architecture, model_type = _architecture(model)
    notes: dict[str, Any] = {"task_type": "classification", **DATASET_NOTES[model.dataset]}
    if venue and venue.lower() not in ("unpublished", "n/a"):
        notes["venue"] = venue
        notes["venue_type"] = next((t for k, t in VENUE_TYPES.items() if venue.startswith(k)), "other")
    if year or _year_from_name(model.name):
        notes["year"] = year or _year_from_name(model.name)
    authors = [a for a in re.split(r",| and ", str(info.get("authors", ""))) if a.strip()]
    if authors:
        notes["num_authors"] = len(authors)
    notes["purpose"] = "benchmark" if standard else "security"
    notes["training"] = "standard" if standard else (
        "corruption-robust" if model.threat_model == "corruptions" else "adversarial")
    notes["threat_model"] = model.threat_model
    if info.get("link"):
        notes["paper"] = str(info["link"])
    reported = {k: info[k] for k in ("clean_acc", "autoattack_acc", "corruptions_acc", "reported", "eps",
                                     "additional_data", "unreliable", "architecture") if info.get(k) not in (None, "")}
    out: dict[str, Any] = {
        "id": entry_id(model), "dataset": CATALOG_DATASET[model.dataset], "architecture": architecture,
        "model_type": model_type, "source": f"robustbench:{model.dataset}/{model.threat_model}/{model.name}",
        "tags": ["robustbench", model.threat_model.lower()],
        "preprocess": {"input_size": INPUT_SIZE[model.dataset], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "annotations": notes,
    }
    if reported:
        out["robustbench"] = reported
    if not model.gdrive_ids:
        out["unavailable"] = (f"robustbench {model.name} ({model.dataset}, {model.threat_model}) names no weights "
                              "file of its own (its weights come from timm or torchvision at build time)")
    return out


def toml_text(entries: list[dict[str, Any]], header: str) -> str:
    """Catalog TOML for `entries` (`[[models]]` tables with inline tables for nested values)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for e in entries:
        lines += ["", "[[models]]"]
        for key, value in e.items():
            if key not in ("annotations", "robustbench"):
                lines.append(f"{key} = {toml_value(value)}")
        for table in ("robustbench", "annotations"):
            if table in e:
                lines.append(f"[models.{table}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in e[table].items()]
    return "\n".join(lines) + "\n"


def generate(package_dir: Path, info_dir: Path | None, out_dir: Path, version: str) -> dict[str, int]:
    """Write one catalog file per dataset; answer {file name: entries}."""
    models = with_model_info(zoo_models(package_dir), info_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for dataset in ZOO_FILES:
        entries = [entry(m) for m in models if m.dataset == dataset]
        header = (f"RobustBench's {dataset} model zoo (robustbench {version}), generated by\n"
                  "`python -m pytest_securitynet.catalog.robustbench`: do not edit by hand. Loading needs\n"
                  "`pip install 'pytest-securitynet[robust]'` (docs/catalog.md, \"RobustBench\").")
        name = f"{CATALOG_DATASET[dataset]}.toml"
        (out_dir / name).write_text(toml_text(entries, header), encoding="utf-8")
        counts[name] = len(entries)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_securitynet.catalog.robustbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="the robustbench package directory (unpacked wheel or site-packages)")
    parser.add_argument("--model-info", type=Path, help="RobustBench's model_info directory (from its repository)")
    parser.add_argument("--version", default="1.1.1", help="the robustbench version the tables come from")
    parser.add_argument("--out", type=Path, default=Path("catalog/robustbench"))
    args = parser.parse_args(argv)
    if not (args.package / "model_zoo").is_dir():
        print(f"--package {args.package}: no model_zoo directory; give the robustbench package directory", file=sys.stderr)
        return 2
    for name, count in generate(args.package, args.model_info, args.out, args.version).items():
        print(f"{args.out / name}: {count} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
