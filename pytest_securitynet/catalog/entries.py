"""The catalog: data files describing models and datasets, validated against one schema.

Files are TOML. A file may hold `[datasets.<id>]` tables and `[[models]]` entries. The built-in
catalog is the repository's `catalog/` directory; users add files or directories of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from pytest_securitynet.catalog import policy, schema
from pytest_securitynet.errors import CatalogError

def _builtin_catalog() -> Path:
    """The repository's `catalog/` in a checkout or editable install, else the copy in the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "catalog"
    if (checkout / "datasets-securitynet.toml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "builtin"


BUILTIN_CATALOG = _builtin_catalog()


@dataclass(frozen=True)
class DatasetEntry:
    id: str
    source: str
    num_classes: int
    input_size: tuple[int, int, int]
    train_size: int
    test_size: int
    raw: dict[str, Any] = field(repr=False, compare=False)
    origin: str = ""

    @property
    def family(self) -> str:
        """The dataset this one is a copy of (e.g. cifar10 for cifar10-jpeg), else itself."""
        return self.raw.get("variant_of", self.id)


@dataclass(frozen=True)
class ModelEntry:
    id: str
    dataset: str
    architecture: str
    model_type: str
    source: str
    preprocess: dict[str, Any]
    annotations: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)
    origin: str = ""

    @property
    def purpose(self) -> str:
        return self.annotations["purpose"]

    @property
    def source_kind(self) -> str:
        """`pytorchcv`, `timm`, `torchvision`, `url`, `file`, `package`, `robustbench` or `demo`."""
        if self.source.startswith(("http://", "https://")):
            return "url"
        return self.source.split(":", 1)[0]

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.raw.get("tags", ()))

    @property
    def members(self) -> list[int] | list[str] | None:
        """The training members its `members_file` names (indices, or `class/file` names in an archive), else None."""
        return self.raw.get("members")

    def keywords(self) -> set[str]:
        """Words `-k` can match besides the id: dataset, architecture, type, purpose, zoo, tags."""
        return {self.dataset, self.architecture, self.model_type, self.purpose, self.source_kind, *self.tags}


@dataclass
class Catalog:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)

    def model(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise CatalogError(f"unknown model id {model_id!r}; see `securitynet catalog list`") from None

    def dataset(self, dataset_id: str) -> DatasetEntry:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            known = ", ".join(sorted(self.datasets))
            raise CatalogError(f"unknown dataset id {dataset_id!r}; catalogued datasets: {known}") from None


def catalog_paths(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The built-in catalog followed by the user catalogs `extra` (files or directories)."""
    return [BUILTIN_CATALOG, *(Path(p).expanduser() for p in extra)]


def load_catalog(paths: Iterable[str | os.PathLike] | None = None, cache_dir: Path | None = None,
                 allow_code_builders: bool = False) -> Catalog:
    """Load and validate every `.toml` file under `paths` (default: built-in plus user catalogs).

    File names must stay inside the cache and builders must be registered ones unless
    `allow_code_builders` (see catalog/policy.py); this is checked on every load, cached or not.
    With `cache_dir`, the validated entries are kept there as JSON, one file per selection of
    catalog paths, valid while each file's path, size and modification time stay the same, so
    that collection does not parse and validate 500 entries every run.
    """
    roots = catalog_paths() if paths is None else [Path(p) for p in paths]
    files = [file for path in roots for file in _toml_files(path)]
    catalog = None
    cached = _cache_file(roots, cache_dir) if cache_dir is not None else None
    key = _cache_key(files) if cached is not None else ""
    if cached is not None and cached.is_file():
        try:
            doc = json.loads(cached.read_text(encoding="utf-8"))
            fresh = doc.get("key") == key and doc.get("members_files", []) == _file_stamps(doc.get("members_files", []))
            catalog = _from_cache(doc) if fresh else None
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            catalog = None  # a stale or torn cache file is rebuilt below
    if catalog is None:
        catalog = Catalog()
        for file in files:
            _load_file(file, catalog)
        _check_references(catalog)
        if cached is not None:
            _write_cache(cached, key, catalog)
    policy.check_catalog(catalog, allow_code_builders)
    return catalog


def _cache_file(roots: list[Path], cache_dir: Path) -> Path:
    """One cache file per selection of catalog paths: an edited catalog replaces it, never adds one."""
    selection = "\0".join(str(Path(root).expanduser().resolve()) for root in roots)
    return Path(cache_dir) / "catalog" / f"selection-{hashlib.sha256(selection.encode()).hexdigest()[:32]}.json"


def _cache_key(files: list[Path]) -> str:
    key = hashlib.sha256(Path(schema.__file__).read_bytes() + Path(__file__).read_bytes())
    for file in files:
        stat = file.stat()
        key.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return key.hexdigest()


def _from_cache(doc: dict) -> Catalog:
    # Plain JSON rather than pickle: a cache directory may be shared, and JSON cannot run code.
    catalog = Catalog()
    for item in doc["datasets"]:
        catalog.datasets[item["id"]] = _dataset(item["id"], item["raw"], item["origin"])
    for item in doc["models"]:
        catalog.models[item["raw"]["id"]] = _model(item["raw"], item["origin"])
    return catalog


def _file_stamps(stamps: list) -> list:
    """[path, size, mtime_ns] of every file a cache entry lists, as they are now (a missing file differs)."""
    now = []
    for path, *_ in stamps:
        try:
            stat = Path(path).stat()
        except OSError:
            return []
        now.append([path, stat.st_size, stat.st_mtime_ns])
    return now


def _write_cache(target: Path, key: str, catalog: Catalog) -> None:
    members = sorted({m.raw["members_path"] for m in catalog.models.values() if "members_path" in m.raw})
    doc = {"key": key,
           "datasets": [{"id": d.id, "raw": d.raw, "origin": d.origin} for d in catalog.datasets.values()],
           "models": [{"raw": m.raw, "origin": m.origin} for m in catalog.models.values()],
           "members_files": _file_stamps([[path] for path in members])}
    temporary = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        text = json.dumps(doc)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)  # readers see the old file or the whole new one
    except (OSError, TypeError, ValueError):
        # A read-only or full cache, or TOML values JSON cannot hold (dates), only cost speed; a
        # half-written temporary file must not stay to fill the disk.
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return
    _remove_stale(target.parent)


def _remove_stale(folder: Path) -> None:
    """Remove cache files earlier versions kept per edit (named by a bare hash), and temporary files
    of writers killed over an hour ago. A reader holding one open still reads it whole."""
    cutoff = time.time() - 3600
    for path in folder.iterdir():
        legacy = path.suffix == ".json" and re.fullmatch(r"[0-9a-f]{32}", path.stem) is not None
        try:
            if legacy or (path.suffix == ".tmp" and path.stat().st_mtime < cutoff):
                path.unlink(missing_ok=True)
        except OSError:
            continue


def _toml_files(path: Path) -> list[Path]:
    if path.is_dir():
        # A pin lock file (catalog/pins.py) kept inside a catalog folder is not a catalog file.
        return sorted(f for f in path.rglob("*.toml") if f.name != "securitynet-pins.toml")
    if path.is_file():
        return [path]
    raise CatalogError(f"catalog path {path} does not exist")


def _load_file(file: Path, catalog: Catalog) -> None:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                           f"save catalog files as UTF-8") from None
    except OSError as exc:
        raise CatalogError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{file}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"datasets", "models"}
    if unknown:
        raise CatalogError(f"{file}: unknown top-level table(s) {sorted(unknown)}; use [datasets.ID] or [[models]]")
    if not isinstance(data.get("datasets", {}), dict) or not isinstance(data.get("models", []), list):
        raise CatalogError(f"{file}: datasets must be tables [datasets.ID] and models an array [[models]]")
    for dataset_id, raw in data.get("datasets", {}).items():
        _validate(raw, schema.DATASET, file, f"dataset {dataset_id!r}")
        _validate(dataset_id, schema._ID, file, f"dataset {dataset_id!r}")
        _add(catalog.datasets, dataset_id, _dataset(dataset_id, raw, file), file)
    for index, raw in enumerate(data.get("models", [])):
        name = f"model {raw.get('id', f'#{index}')!r}" if isinstance(raw, dict) else f"model #{index}"
        _validate(raw, schema.MODEL, file, name)
        if "members_file" in raw:
            raw["members_path"] = str(_members_path(file, raw["members_file"], name))
        _add(catalog.models, raw["id"], _model(raw, file), file)


def _validate(instance: Any, entry_schema: dict, file: Path, entry: str) -> None:
    validator = jsonschema.Draft202012Validator(entry_schema)
    # Every problem of the entry at once, in a stable order, so one edit can fix them all.
    errors = sorted(validator.iter_errors(instance), key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    if errors:
        problems = "; ".join(f"field {'.'.join(str(p) for p in e.absolute_path) or '(entry)'}: {e.message}"
                             for e in errors)
        raise CatalogError(f"{file}: {entry}: {problems}")


def _add(table: dict, key: str, value: Any, file: Path) -> None:
    if key in table:
        raise CatalogError(f"{file}: id {key!r} is already defined in {table[key].origin}")
    table[key] = value


def _dataset(dataset_id: str, raw: dict, file: Path | str) -> DatasetEntry:
    return DatasetEntry(
        id=dataset_id, source=raw["source"], num_classes=raw["num_classes"],
        input_size=tuple(raw["input_size"]), train_size=raw["train_size"], test_size=raw["test_size"],
        raw=raw, origin=str(file),
    )


def _model(raw: dict, file: Path | str) -> ModelEntry:
    return ModelEntry(
        id=raw["id"], dataset=raw["dataset"], architecture=raw["architecture"], model_type=raw["model_type"],
        source=raw["source"], preprocess=raw["preprocess"], annotations=raw["annotations"],
        raw=raw, origin=str(file),
    )


def _members_path(file: Path, value: str, entry: str) -> Path:
    """Where a `members_file` is: resolved (symlinks too) relative to its catalog file, and inside that
    file's folder, so a catalog cannot make the harness read (and quote) any file on the machine."""
    folder = file.parent.resolve()
    path = (folder / Path(value).expanduser()).resolve()
    if not path.is_relative_to(folder):
        raise CatalogError(f"{file}: {entry}: field members_file: {value!r} is outside the catalog file's folder "
                           f"{folder}; keep the members list in that folder")
    return path


INDEXED_SOURCES = ("torchvision", "sklearn-digits", "medmnist")
"""Dataset sources whose training split has a fixed order, so a members file lists indices into it."""


def read_members_file(path: Path, dataset: DatasetEntry, where: str) -> list[int] | list[str]:
    """The training members a `members_file` lists, checked against `dataset`'s training split.

    One sample per line; blank lines and text after `#` are ignored. For an indexed dataset a
    sample is an index into the training split (0 .. train_size - 1); for an `image-folder-archive`
    it is a file name inside the archive's training split, `<class>/<file>` (the archive root and
    `train/` may precede it). Whether named files exist is checked against the archive itself
    (`zoo.members`). Errors name the members file, the line and the sample.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise CatalogError(f"{where}: field members_file: {path} is not a regular file")
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{where}: field members_file: {path} is not UTF-8 text (byte "
                           f"{exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"{where}: field members_file: cannot read {path}: {exc.strerror or exc}") from None
    samples = [(number, line.split("#", 1)[0].strip()) for number, line in enumerate(lines, 1)]
    samples = [(number, text) for number, text in samples if text]
    if not samples:
        raise CatalogError(f"{where}: field members_file: {path} lists no samples")
    if dataset.source in INDEXED_SOURCES:
        values: list = []
        for number, text in samples:
            if not re.fullmatch(r"[0-9]+", text) or int(text) >= dataset.train_size:
                raise CatalogError(f"{path}:{number}: {_sample(text, values)} is not in the train split of dataset "
                                   f"{dataset.id!r} (indices 0 to {dataset.train_size - 1}) ({where})")
            values.append(int(text))
    elif dataset.source == "image-folder-archive":
        prefix = f"{dataset.raw['archive_root'].rstrip('/')}/train/"
        values = [text[len(prefix):] if text.startswith(prefix) else text for _, text in samples]
        classes = dataset.raw.get("class_names")
        for index, ((number, text), name) in enumerate(zip(samples, values)):
            parts = name.split("/")
            if len(parts) != 2 or not all(parts) or (classes and parts[0] not in classes):
                raise CatalogError(f"{path}:{number}: {_sample(text, values[:index])} is not in the train split of dataset "
                                   f"{dataset.id!r} (write <class>/<file>, a class among its class_names) ({where})")
    else:
        raise CatalogError(f"{where}: field members_file: dataset {dataset.id!r} ({dataset.source}) has no fixed "
                           f"sample order; members files need a {', '.join(INDEXED_SOURCES)} or image-folder-archive dataset")
    seen: dict = {}
    for (number, text), value in zip(samples, values):
        if value in seen:
            raise CatalogError(f"{path}:{number}: sample {text!r} is listed twice (first on line {seen[value]}) ({where})")
        seen[value] = number
    return values


def _sample(text: str, valid_before: list) -> str:
    """How an error shows a bad line: quoted once earlier lines showed the file is a members list;
    a file whose first sample is bad may be any file, and its contents are not printed."""
    if valid_before:
        return f"sample {text!r}"
    return "the first sample (not shown: the file does not start like a members list)"


def _check_references(catalog: Catalog) -> None:
    for entry in catalog.models.values():
        where = f"{entry.origin}: model {entry.id!r}"
        if entry.dataset not in catalog.datasets:
            raise CatalogError(f"{where}: field dataset: unknown dataset {entry.dataset!r}")
        dataset = catalog.datasets[entry.dataset]
        if entry.annotations["num_classes"] != dataset.num_classes:
            raise CatalogError(
                f"{where}: field annotations.num_classes: {entry.annotations['num_classes']} "
                f"but dataset {dataset.id!r} has {dataset.num_classes} classes"
            )
        channels = entry.preprocess["input_size"][0]
        for key in ("mean", "std"):
            if len(entry.preprocess[key]) != channels:
                raise CatalogError(f"{where}: field preprocess.{key}: needs {channels} values, one per channel")
        if "members_path" in entry.raw:
            entry.raw["members"] = read_members_file(Path(entry.raw["members_path"]), dataset, where)
    for dataset in catalog.datasets.values():
        parent = dataset.raw.get("variant_of")
        if parent is not None and parent not in catalog.datasets:
            raise CatalogError(f"{dataset.origin}: dataset {dataset.id!r}: field variant_of: unknown dataset {parent!r}")
