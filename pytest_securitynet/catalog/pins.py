"""Trust-on-first-use sha256 pins: a lock file that makes entries without a recorded checksum runnable.

Some database entries name a weights file whose sha256 the catalog never recorded (the
robust-models-transfer checkpoints, direct URLs), or no direct file at all (MedMNIST,
AdversaryLossLandscape: weights downloaded by hand). A lock file beside the user's catalog,
`securitynet-pins.toml`, records for such an entry the file's name and sha256 (and, for entries
whose catalog names no architecture, the builder that reads it). With a pin, the entry loads like
any entry with a sha256: every later load checks the file against it.

A pin is written two ways: `securitynet catalog pin ID FILE` (a file the user obtained), or, only
when asked for (`--securitynet-pin-on-first-download`, `catalog prefetch --pin-on-first-download`),
by the first download of a direct-URL entry. The second trusts whatever that first download
returned: it protects later runs against a changed or corrupt file, not the first one.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.catalog.entries import Catalog, ModelEntry
from pytest_securitynet.errors import CatalogError

PINS_FILE = "securitynet-pins.toml"
_HEADER = ("# sha256 pins of catalog entries whose catalog records none (trust on first use).\n"
           "# Written by `securitynet catalog pin` and by downloads with --securitynet-pin-on-first-download;\n"
           "# every later load checks the file against its pin. Delete an entry to pin it again.\n")


@dataclass(frozen=True)
class Pin:
    """One entry's pinned weights file: its name (in `<cache>/weights/` or a mirror) and sha256."""

    model_id: str
    file: str
    sha256: str
    how: str  # "by hand" or "first download"
    builder: str | None = None
    builder_args: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)


def pins_path(catalogs: Iterable[str], explicit: str | Path | None = None) -> Path:
    """The lock file: `explicit` (option or SECURITYNET_PINS), else beside the first user catalog
    (next to the file, or next to the folder so that a catalog folder never loads it as a catalog
    file), else in the current directory."""
    if explicit:
        return Path(explicit).expanduser()
    catalogs = list(catalogs)
    if catalogs:
        return Path(catalogs[0]).expanduser().resolve().parent / PINS_FILE
    return Path.cwd() / PINS_FILE


def read_pins(path: Path) -> dict[str, Pin]:
    """The pins of a lock file (none when it does not exist); a malformed one is a `CatalogError`."""
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"pin lock file {path}: not valid TOML ({exc}); fix or delete it") from None
    pins = {}
    for model_id, raw in (doc.get("models") or {}).items():
        sha = raw.get("sha256", "") if isinstance(raw, dict) else ""
        name = raw.get("file", "") if isinstance(raw, dict) else ""
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or not name or "/" in name or "\\" in name:
            raise CatalogError(f"pin lock file {path}: models.{model_id!r} needs `file` (a plain file name) and "
                               f"`sha256` (64 lowercase hex digits); fix or delete that entry")
        pins[model_id] = Pin(model_id, name, sha, raw.get("how", "by hand"), raw.get("builder"),
                             dict(raw.get("builder_args", {})), dict(raw.get("checkpoint", {})))
    return pins


def write_pin(path: Path, pin: Pin) -> None:
    """Add (or replace) one pin in the lock file, under a file lock so that parallel workers add theirs."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        pins = read_pins(path)
        pins[pin.model_id] = pin
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(_HEADER + "".join(_pin_text(p) for _, p in sorted(pins.items())), encoding="utf-8")
        tmp.replace(path)


def _pin_text(pin: Pin) -> str:
    lines = [f"\n[models.{json.dumps(pin.model_id)}]", f"file = {json.dumps(pin.file)}",
             f"sha256 = {json.dumps(pin.sha256)}", f"how = {json.dumps(pin.how)}"]
    if pin.builder:
        lines.append(f"builder = {json.dumps(pin.builder)}")
    for name in ("builder_args", "checkpoint"):
        table = getattr(pin, name)
        if table:
            lines.append(f"{name} = {{ " + ", ".join(f"{k} = {_value(v)}" for k, v in table.items()) + " }")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    """A TOML scalar (JSON's strings, numbers and booleans are TOML's too)."""
    if not isinstance(value, (str, int, float, bool)):
        raise CatalogError(f"pin: {value!r} is not a string, number or boolean")
    return json.dumps(value)


def pinnable_by_download(entry: ModelEntry) -> bool:
    """A direct-URL entry with a builder whose catalog records no sha256: the first download can pin it."""
    return entry.source_kind == "url" and "builder" in entry.raw and not entry.raw.get("sha256")


def apply_pins(catalog: Catalog, lock: Path, pin_on_first_download: bool = False) -> Catalog:
    """`catalog` with the lock file's pins applied: each pinned entry gets its file name and sha256
    (and a builder, where the pin names one) and is no longer unavailable. With
    `pin_on_first_download`, unpinned direct-URL entries become loadable too, marked so that loading
    records their first download's sha256 in `lock`. An entry whose catalog records a sha256 keeps it."""
    pins = read_pins(lock)
    for model_id, entry in list(catalog.models.items()):
        pin = pins.get(model_id)
        if entry.raw.get("sha256") or entry.source_kind != "url":
            continue  # the catalog's own checksum, or a loader that checks its files itself
        if pin is not None:
            catalog.models[model_id] = pinned_entry(entry, pin, lock)
        elif pin_on_first_download and pinnable_by_download(entry):
            raw = {k: v for k, v in entry.raw.items() if k != "unavailable"} | {"pin_on_first_download": str(lock)}
            catalog.models[model_id] = dataclasses.replace(entry, raw=raw)
    return catalog


def pinned_entry(entry: ModelEntry, pin: Pin, lock: Path) -> ModelEntry:
    """`entry` as its pin makes it: the pinned file and sha256, the pin's builder, no longer unavailable."""
    raw = {k: v for k, v in entry.raw.items() if k != "unavailable"}
    raw |= {"sha256": pin.sha256, "pinned_file": pin.file, "pinned_in": str(lock)}
    if pin.builder:
        raw |= {"builder": pin.builder, "builder_args": pin.builder_args}
    if pin.checkpoint:
        raw["checkpoint"] = pin.checkpoint
    if "builder" not in raw:
        raise CatalogError(f"pin lock file {lock}: {entry.id!r} names no builder and its catalog entry has none; "
                           f"pin it again with `securitynet catalog pin {entry.id} FILE --builder NAME`")
    return dataclasses.replace(entry, raw=raw)


def record_first_download(entry: ModelEntry, path: Path) -> Pin | None:
    """Pin `path` (the file an entry marked for pin-on-first-download was loaded from) in the entry's
    lock file; None for entries not so marked."""
    lock = entry.raw.get("pin_on_first_download")
    if not lock:
        return None
    from pytest_securitynet.zoo.store import sha256_of

    pin = Pin(entry.id, path.name, sha256_of(path), "first download")
    write_pin(Path(lock), pin)
    return pin


def pin_by_hand(catalog: Catalog, model_id: str, file: Path, lock: Path, cache_dir: Path, *,
                builder: str | None = None, builder_args: dict[str, Any] | None = None,
                state_dict_key: str | None = None, strip_prefix: str | None = None,
                allow_code_builders: bool = False) -> tuple[Pin, Path]:
    """`securitynet catalog pin ID FILE`: copy FILE into the cache where the store looks for the
    entry's weights, check that the entry loads from it, then record its sha256 in `lock`."""
    import shutil

    from pytest_securitynet.catalog.policy import check_builders
    from pytest_securitynet.zoo.resolver import url_file_name
    from pytest_securitynet.zoo.store import FileStore, sha256_of
    from pytest_securitynet.zoo.weights import load_model

    entry = catalog.model(model_id)
    if entry.raw.get("sha256") and not entry.raw.get("pinned_file"):
        raise CatalogError(f"catalog pin: {model_id!r} already has a sha256 in its catalog file {entry.origin}; "
                           f"put its file into the cache or a SECURITYNET_MIRROR directory instead")
    if entry.source_kind != "url":
        raise CatalogError(f"catalog pin: {model_id!r} is loaded by {entry.source_kind} ({entry.source}), "
                           f"which checks its own files; only entries with a URL source can be pinned")
    if not file.is_file():
        raise CatalogError(f"catalog pin: {file} is not a file; give the weights file you downloaded for {model_id}")
    if not builder and "builder" not in entry.raw:
        raise CatalogError(f"catalog pin: the catalog names no architecture for {model_id!r}; give --builder NAME "
                           f"(with --builder-arg NAME=VALUE and --state-dict-key as needed; docs/catalog.md, "
                           f"'Pinning weights', gives them per family)")
    # A direct-URL entry keeps the URL's file name, so that a later download and this copy are one file.
    direct = url_file_name(entry.source)
    name = direct if Path(direct).suffix else file.name
    checkpoint = {k: v for k, v in (("state_dict_key", state_dict_key), ("strip_prefix", strip_prefix)) if v}
    pin = Pin(model_id, name, sha256_of(file), "by hand", builder, dict(builder_args or {}), checkpoint)
    trial = pinned_entry(entry, pin, lock)
    check_builders(Catalog({model_id: trial}, catalog.datasets), allow_code_builders)
    store = FileStore(cache_dir=cache_dir)
    copy = store.path("weights", name)
    store.write(copy, lambda tmp: shutil.copyfile(file, tmp))
    try:
        load_model(trial, catalog, store)  # builds and loads strictly: a file that does not fit is not pinned
    except Exception:
        copy.unlink(missing_ok=True)
        raise
    write_pin(lock, pin)
    return pin, copy
