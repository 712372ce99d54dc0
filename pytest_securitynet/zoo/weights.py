"""Turn a catalog entry into a ready model: eval mode, takes images in [0,1], normalisation inside.

The resolver says which files an entry needs and which loader reads them; the store finds them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pytest_securitynet.zoo.architectures import Normalized, build
from pytest_securitynet.catalog.entries import Catalog, ModelEntry
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.zoo.checkpoints import load_strict, reader_errors, safe_load, unreadable
from pytest_securitynet.zoo.resolver import fetch, resolve_model
from pytest_securitynet.zoo.store import FileStore

log = logging.getLogger(__name__)


def load_model(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    """Build `entry`'s architecture, load its weights and wrap it with its preprocessing (on CPU)."""
    plan = resolve_model(entry)
    files = fetch(plan, store)
    if entry.raw.get("pin_on_first_download"):
        from pytest_securitynet.catalog.pins import record_first_download

        pin = record_first_download(entry, files[0])  # trust on first use: later runs check this sha256
        log.warning("%s: pinned %s (sha256 %s) in %s on its first download", entry.id, pin.file, pin.sha256,
                    entry.raw["pin_on_first_download"])
    net = _LOADERS[plan.loader](entry, files, catalog, store)
    pre = entry.preprocess
    model = Normalized(net, pre["mean"], pre["std"], input_size=tuple(pre["input_size"][1:]))
    return model.eval().requires_grad_(False)


def state_dict_from(checkpoint: object, entry: ModelEntry) -> dict[str, torch.Tensor]:
    """Pick the state dict out of a checkpoint as the entry's `checkpoint` table says."""
    spec = entry.raw.get("checkpoint", {})
    key = spec.get("state_dict_key")
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise CatalogError(f"model {entry.id!r}: checkpoint has no entry {key!r} (field checkpoint.state_dict_key)")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise CatalogError(f"model {entry.id!r}: checkpoint is a {type(checkpoint).__name__}, not a state dict")
    prefix = spec.get("strip_prefix", "")
    if spec.get("only_prefixed"):
        # Checkpoints that also carry other copies of the model (an attacker's, a normaliser's)
        # keep just the prefixed ones, so that strict loading sees one clean state dict.
        checkpoint = {k: v for k, v in checkpoint.items() if k.startswith(prefix)}
    return {k.removeprefix(prefix): v for k, v in checkpoint.items()}


def _from_builder(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    """`url` and `file:` sources: the entry's named builder, then its checkpoint loaded strictly."""
    builder, args = entry.raw["builder"], entry.raw.get("builder_args", {})
    net = build(builder, **args)
    state = state_dict_from(safe_load(files[0], _weights(entry)), entry)
    described = f"{builder!r}" + (f" ({', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else "")
    load_strict(net, state, entry_id=entry.id, builder=described, path=files[0])
    return net


def _from_demo(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    from pytest_securitynet.zoo.demo import demo_network

    return demo_network(entry, catalog, store)


def _from_pytorchcv(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    from pytorchcv.model_provider import get_model

    name = entry.source.removeprefix("pytorchcv:")
    net = get_model(name, pretrained=False)
    state = state_dict_from(safe_load(files[0], _weights(entry)), entry)
    load_strict(net, state, entry_id=entry.id, builder=f"pytorchcv:{name}", path=files[0])
    return net


def _from_torchvision(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    import torchvision

    name = entry.source.split(":")[1]
    net = torchvision.models.get_model(name, weights=None)
    state = state_dict_from(safe_load(files[0], _weights(entry)), entry)
    load_strict(net, state, entry_id=entry.id, builder=f"torchvision:{name}", path=files[0])
    return net


def _from_timm(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    import timm

    # timm reads the file itself (safetensors, or torch.load with weights_only) and applies its own
    # per-model checkpoint filters, as for its hub downloads.
    try:
        return timm.create_model(entry.source.removeprefix("timm:"), pretrained=True,
                                 pretrained_cfg_overlay={"file": str(files[0])})
    except RuntimeError as exc:
        if "state_dict" in str(exc):  # torch's load_state_dict: the first lines name the keys
            keys = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:400]
            raise CatalogError(f"model {entry.id!r}: {files[0]} does not fit timm model "
                               f"{entry.source.removeprefix('timm:')}: {keys}") from None
        raise unreadable(files[0], exc, _weights(entry)) from None
    except reader_errors() as exc:
        raise unreadable(files[0], exc, _weights(entry)) from None


def _weights(entry: ModelEntry) -> str:
    return f"weights of {entry.id}"


def _from_robustbench(entry: ModelEntry, files: list[Path], catalog: Catalog, store: FileStore) -> nn.Module:
    from pytest_securitynet.zoo.robustbench import load_robustbench

    return load_robustbench(entry, store)


_LOADERS = {
    "builder": _from_builder,
    "robustbench": _from_robustbench,
    "demo": _from_demo,
    "pytorchcv": _from_pytorchcv,
    "torchvision": _from_torchvision,
    "timm": _from_timm,
}
