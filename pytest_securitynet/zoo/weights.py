"""Turn a catalog entry into a ready model: eval mode, takes images in [0,1], normalisation inside."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from pytest_securitynet.zoo.architectures import Normalized, build
from pytest_securitynet.catalog.entries import Catalog, ModelEntry
from pytest_securitynet.errors import CatalogError, ChecksumError, MissingFileError, UnsafeCheckpointError
from pytest_securitynet.zoo.store import FileStore, sha256_of, verify_file

log = logging.getLogger(__name__)


def load_model(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    """Build `entry`'s architecture, load its weights and wrap it with its preprocessing (on CPU)."""
    loader = _LOADERS.get(entry.source_kind)
    if loader is None:
        raise CatalogError(f"{entry.origin}: model {entry.id!r}: field source: unsupported {entry.source!r}")
    net = loader(entry, catalog, store)
    pre = entry.preprocess
    model = Normalized(net, pre["mean"], pre["std"], input_size=tuple(pre["input_size"][1:]))
    return model.eval().requires_grad_(False)


def safe_load(path: Path) -> object:
    """`torch.load(weights_only=True)`: tensors and plain containers only; code-running pickles are refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is not a plain weights file and would need to run code to unpickle "
            f"({str(exc).splitlines()[0]}). Nothing from it was executed. Re-save it as a state_dict."
        ) from exc


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


def _with_weights(entry: ModelEntry, path: Path) -> nn.Module:
    net = build(entry.raw["builder"], **entry.raw.get("builder_args", {}))
    net.load_state_dict(state_dict_from(safe_load(path), entry), strict=True)
    return net


def _from_url(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    filename = os.path.basename(urlparse(entry.source).path)
    return _with_weights(entry, store.fetch(filename, entry.raw["sha256"], entry.source, subdir="weights"))


def _from_file(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    path = Path(entry.source.removeprefix("file:")).expanduser()
    if not path.is_absolute():
        path = Path(entry.origin).parent / path
    if not path.is_file():
        raise MissingFileError(f"model {entry.id!r}: local checkpoint {path} does not exist (field source in {entry.origin})")
    if "sha256" in entry.raw:
        verify_file(path, entry.raw["sha256"], origin=str(path))
    return _with_weights(entry, path)


def _from_demo(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    from pytest_securitynet.zoo.demo import demo_network

    return demo_network(entry, catalog, store)


def _from_pytorchcv(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    from pytorchcv.model_provider import get_model
    from pytorchcv.models.common import model_store

    name = entry.source.removeprefix("pytorchcv:")
    error, sha1, _tag = model_store.get_model_name_suffix_data(name)
    filename = f"{name}-{error}-{sha1[:8]}.pth"
    root = store.path("weights", "pytorchcv", filename).parent
    for mirror in store.mirrors:
        if (mirror / filename).is_file() and not (root / filename).exists():
            (root / filename).symlink_to((mirror / filename).resolve())
    if not (root / filename).exists() and store.offline:
        raise MissingFileError(
            f"model {entry.id!r}: pytorchcv weights {filename} are not in {root} and offline mode is on. "
            f"Get them from https://github.com/osmr/imgclsmob/releases ({filename}.zip), unzip into {root} "
            f"or a SECURITYNET_MIRROR directory."
        )
    path = Path(model_store.get_model_file(name, local_model_store_dir_path=str(root)))
    net = get_model(name, pretrained=False)
    net.load_state_dict(safe_load(path), strict=True)
    return net


def _from_torchvision(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    import torchvision

    _, name, weights_name = entry.source.split(":")
    weights = torchvision.models.get_weight(weights_name)
    filename = os.path.basename(urlparse(weights.url).path)
    path = store.fetch(filename, entry.raw.get("sha256"), weights.url, subdir="weights")
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    if "sha256" not in entry.raw and not sha256_of(path).startswith(prefix):
        raise ChecksumError(f"{path}: sha256 does not start with {prefix!r} as its torch.hub file name promises")
    net = torchvision.models.get_model(name, weights=None)
    net.load_state_dict(safe_load(path), strict=True)
    return net


def _from_timm(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    import timm

    name = entry.source.removeprefix("timm:")
    for mirror in store.mirrors:
        for suffix in (".safetensors", ".pth"):
            candidate = mirror / f"{name.replace('/', '_')}{suffix}"
            if candidate.is_file():
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(candidate)})
    if store.offline:
        raise MissingFileError(
            f"model {entry.id!r}: timm weights for {name!r} are not in any SECURITYNET_MIRROR directory and "
            f"offline mode is on. Save them as {name.replace('/', '_')}.safetensors in a mirror directory."
        )
    os.environ.setdefault("HF_HOME", str(store.path("huggingface", "x").parent))
    return timm.create_model(name, pretrained=True)


_LOADERS = {
    "url": _from_url,
    "file": _from_file,
    "demo": _from_demo,
    "pytorchcv": _from_pytorchcv,
    "torchvision": _from_torchvision,
    "timm": _from_timm,
}
