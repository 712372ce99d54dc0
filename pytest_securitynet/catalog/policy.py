"""What a catalog file may ask of the harness: file names that stay inside the cache, and builders
that are known architectures unless the user says the file may run code.

A catalog is data, but two of its fields reach further: a file name becomes a path in the cache
(downloads, lock files), and a `builder` names a function the harness calls. So file names must be
plain names, and a builder must be one registered in `zoo/architectures.py` or a torchvision model
builder (`torchvision.models:NAME`); any other `module:function` is code the catalog file runs,
accepted only with `--securitynet-allow-code-builders` (ini `securitynet_allow_code_builders`,
`securitynet catalog ... --allow-code-builders`).

`check_catalog` needs no torch and runs on every load; `check_builders` imports the registry to
check names and `builder_args` types, and runs where models are built or validated (with
`torchvision=True`, as `catalog validate` does, it also imports torchvision to check its names).
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

from pytest_securitynet.errors import CatalogError

if TYPE_CHECKING:
    from pytest_securitynet.catalog.entries import Catalog, DatasetEntry, ModelEntry

CODE_BUILDERS_OPTION = "--securitynet-allow-code-builders"
DATASET_NAME_FIELDS = ("file", "folder", "flag")  # each becomes a file or folder name in the cache
_REGISTERED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TORCHVISION = re.compile(r"^torchvision\.models:([a-z][a-z0-9_]*)$")
_CODE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


def check_catalog(catalog: Catalog, allow_code_builders: bool = False) -> None:
    """File names are plain names; builders are registered or torchvision ones unless code is allowed."""
    for dataset in catalog.datasets.values():
        for name in DATASET_NAME_FIELDS:
            if name in dataset.raw:
                _plain_name(dataset.raw[name], _where(dataset, "dataset"), name)
    for model in catalog.models.values():
        where = _where(model, "model")
        if model.source_kind == "url":
            _plain_name(urlparse(model.source).path.rsplit("/", 1)[-1], where, "source",
                        what="the last part of the URL (the file name in the cache)")
        builder = model.raw.get("builder")
        if builder is not None:
            _check_builder_form(builder, where, allow_code_builders)


def check_builders(catalog: Catalog, allow_code_builders: bool = False, torchvision: bool = False) -> None:
    """Each builder exists and its `builder_args` fit it (names, and types where the builder declares them).

    Imports the architecture registry (torch): call it where models are built or validated, not in
    quick listings. Torchvision builder names are checked against torchvision's list only with
    `torchvision=True` (importing torchvision takes seconds; a wrong name fails when built)."""
    from pytest_securitynet.zoo.architectures import BUILDERS

    torchvision_names: set[str] | None = None
    for model in catalog.models.values():
        builder = model.raw.get("builder")
        if builder is None:
            continue
        where = _where(model, "model")
        args = model.raw.get("builder_args", {})
        if _REGISTERED.match(builder):
            if builder not in BUILDERS:
                raise CatalogError(f"{where}: field builder: unknown builder {builder!r}; registered: "
                                   f"{', '.join(sorted(BUILDERS))} (or torchvision.models:NAME)")
            _check_args(BUILDERS[builder], args, where, builder)
        elif match := _TORCHVISION.match(builder):
            if torchvision and torchvision_names is None:
                torchvision_names = _torchvision_builders()
            if torchvision_names is not None and match.group(1) not in torchvision_names and not allow_code_builders:
                raise CatalogError(f"{where}: field builder: {builder!r} is not a torchvision model builder "
                                   f"(torchvision.models.list_models()); {_code_hint()}")
            if "weights" in args:
                raise CatalogError(f"{where}: field builder_args.weights: not allowed; the entry's source "
                                   f"gives the weights, checked against its sha256")
        _check_num_classes(model, args, where)


def _check_builder_form(builder: str, where: str, allow_code_builders: bool) -> None:
    if _REGISTERED.match(builder) or _TORCHVISION.match(builder):
        return
    if not _CODE.match(builder):
        raise CatalogError(f"{where}: field builder: {builder!r} is neither a registered builder name "
                           f"nor module:function")
    if not allow_code_builders:
        raise CatalogError(f"{where}: field builder: {builder!r} is a module:function builder, i.e. code "
                           f"this catalog file runs; {_code_hint()}")


def _code_hint() -> str:
    return (f"load the file only if you trust it, with {CODE_BUILDERS_OPTION} (ini securitynet_allow_code_builders "
            f"= true; securitynet catalog ... --allow-code-builders)")


def _plain_name(value: Any, where: str, field: str, what: str = "a file name") -> None:
    """A name that stays inside its cache directory: no separators, no `..`, not absolute."""
    text = str(value)
    bad = (not text or text in (".", "..") or any(c in text for c in "/\\\0")
           or re.match(r"^[A-Za-z]:", text) is not None)
    if bad:
        raise CatalogError(f"{where}: field {field}: {text!r} is not a plain name ({what} must have no /, \\, "
                           f"drive or '..'), so downloads and lock files stay inside the cache")


def _check_args(fn: Callable, args: dict, where: str, builder: str) -> None:
    signature = inspect.signature(fn)
    try:
        signature.bind(**args)
    except TypeError as exc:
        raise CatalogError(f"{where}: field builder_args: {exc} (builder {builder}{signature})") from None
    hints = typing.get_type_hints(fn)
    for key, value in args.items():
        kind = hints.get(key)
        if kind in (int, float, str, bool) and not _fits(value, kind):
            raise CatalogError(f"{where}: field builder_args.{key}: {value!r} is not of type {kind.__name__} "
                               f"(builder {builder}{signature})")


def _check_num_classes(model: ModelEntry, args: dict, where: str) -> None:
    if "num_classes" not in args:
        return
    value = args["num_classes"]
    if not _fits(value, int):
        raise CatalogError(f"{where}: field builder_args.num_classes: {value!r} is not of type int")
    if value != model.annotations["num_classes"]:
        raise CatalogError(f"{where}: field builder_args.num_classes: {value} but annotations.num_classes "
                           f"is {model.annotations['num_classes']}")


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _torchvision_builders() -> set[str]:
    import torchvision.models

    return set(torchvision.models.list_models(module=torchvision.models))


def _where(entry: DatasetEntry | ModelEntry, kind: str) -> str:
    return f"{entry.origin}: {kind} {entry.id!r}"
