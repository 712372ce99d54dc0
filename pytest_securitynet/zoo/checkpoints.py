"""Reading checkpoint files and fitting them into networks, with one-line errors naming the file.

`torch.load` reports a damaged file with whatever its reader hit first (a miniz error, `EOFError`,
`KeyError`, `OSError` ...) and never names the file; `load_state_dict` reports a mismatch as a
multi-line list. Both become a `SecurityNetError` whose message names the file, the catalog entry
and what to do, so a run shows one line instead of a traceback.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pytest_securitynet.errors import CatalogError, UnreadableFileError, UnsafeCheckpointError

# What `torch.load` raises for truncated or damaged files (each seen on a real truncation).
_DAMAGED = (EOFError, RuntimeError, OSError, KeyError, ValueError, IndexError, struct.error, zipfile.BadZipFile)
_SHOWN = 6  # keys named in a mismatch message


def reader_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged weights file raises: torch's readers' errors, and safetensors' where installed."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return _DAMAGED
    return (*_DAMAGED, SafetensorError)


REFETCH = "Delete it and fetch it again (a sha256 in its catalog entry catches a damaged copy before loading)."


def safe_load(path: Path, what: str = "", advice: str = REFETCH) -> object:
    """`torch.load(weights_only=True)`: tensors and plain containers only; code-running pickles are
    refused (`UnsafeCheckpointError`), damaged files named (`UnreadableFileError`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise unreadable(path, exc, what, advice) from None
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is not a plain weights file and would need to run code to unpickle "
            f"({str(exc).splitlines()[0]}). Nothing from it was executed. Re-save it as a state_dict."
        ) from None
    except _DAMAGED as exc:
        raise unreadable(path, exc, what, advice) from None


def unreadable(path: Path, exc: BaseException, what: str = "", advice: str = REFETCH) -> UnreadableFileError:
    """The error for a file that exists but cannot be read: which file, what for, the reader's reason."""
    purpose = f" ({what})" if what else ""
    return UnreadableFileError(
        f"cannot read {path}{purpose}: the file is truncated or damaged ({first_line(exc)}). {advice}".strip())


def first_line(exc: BaseException) -> str:
    """An exception's type and the first sentence of its first line: readers often append paragraphs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_strict(net: nn.Module, state: Mapping[str, object], *, entry_id: str, builder: str, path: Path) -> None:
    """Load `state` into `net`, requiring every key to match in name and shape; a `CatalogError`
    naming the entry, builder, file and the first differing keys otherwise."""
    expected = net.state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in state.items()
              if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    if shapes:
        raise _misfit(entry_id, builder, path, [], [], shapes)
    try:
        # strict=False so that modules' own upgrade hooks (BatchNorm's num_batches_tracked) run first;
        # what is still missing or unexpected afterwards is an error, as under strict=True.
        result = net.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:
        raise CatalogError(f"model {entry_id!r}: {path} does not fit builder {builder}: {first_line(exc)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise _misfit(entry_id, builder, path, result.missing_keys, result.unexpected_keys, [])


def _misfit(entry_id: str, builder: str, path: Path, missing: list[str], unexpected: list[str],
            shapes: list[str]) -> CatalogError:
    parts = [f"{len(keys)} {label} ({_some(keys)})"
             for label, keys in (("keys missing from the checkpoint", missing),
                                 ("unexpected keys in it", unexpected),
                                 ("tensors of another shape", shapes)) if keys]
    return CatalogError(
        f"model {entry_id!r}: the checkpoint {path} does not fit builder {builder}: {'; '.join(parts)}. "
        f"Check the entry's builder, builder_args and checkpoint (state_dict_key, strip_prefix)."
    )


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
