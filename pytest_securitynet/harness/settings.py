"""A run's settings: options, ini values and `SECURITYNET_*` variables, parsed and checked once.

`settings_from` is the one place that reads the environment; everything else receives a frozen
`Settings`. A bad value raises `SettingsError` naming the option, which the plugin turns into a
usage error before any test runs.

Budgets are the per-benchmark knobs that trade fidelity for time (epochs, samples). A benchmark
declares them as a frozen dataclass decorated with `@budget("name")`; a run changes them with
`--securitynet-budget name.field=value` (repeatable, also the ini key `securitynet_budget` and
`SECURITYNET_BUDGET`), and `Settings.budget(cls)` hands the benchmark the resolved values.
Each value is checked against its field's declaration: its type, and the range and choices a
field declares with `budget_field(...)`; a number field without one must be finite and >= 0
(budgets count epochs and samples), so a new benchmark's budget is checked without more code.
"""

from __future__ import annotations

import dataclasses
import os
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, TypeVar

from pytest_securitynet.errors import CatalogError, SecurityNetError
from pytest_securitynet.zoo.store import default_cache_dir

T = TypeVar("T")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}

_BUDGETS: dict[str, type] = {}
SEED_MAX = 2**32 - 1
"""numpy's seeds are 0 .. 2**32 - 1; every sampled set is drawn from the run's seed."""
_UNSET = object()


class SettingsError(SecurityNetError):
    """A bad option, ini value or environment variable (the message names which)."""


def budget(name: str):
    """Class decorator: register a frozen dataclass of defaults as the budget `name`."""
    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@budget({name!r}) needs a dataclass, got {cls!r}")
        cls.budget_name = name
        _BUDGETS[name] = cls
        return cls
    return register


def budget_field(default: Any, *, minimum: Any = _UNSET, maximum: float | None = None,
                 choices: Iterable[str] | Callable[[], Iterable[str]] | None = None) -> Any:
    """A budget dataclass field with the values it accepts: `minimum`/`maximum` for numbers (a number
    field's minimum is 0 unless given; None: no bound), `choices` for text (a callable is asked when
    a value is checked, so names registered later count)."""
    metadata = {"maximum": maximum, "choices": choices}
    if minimum is not _UNSET:
        metadata["minimum"] = minimum
    return field(default=default, metadata=metadata)


def check_budget_value(option: str, value: Any, kind: Any, metadata: Mapping[str, Any]) -> None:
    """Raise `SettingsError` unless `value` is in the range and choices its field declares."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{option}={value}: give a finite number")
        low, high = metadata.get("minimum", 0), metadata.get("maximum")
        if low is not None and value < low:
            raise SettingsError(f"{option}={value}: give a number >= {low}")
        if high is not None and value > high:
            raise SettingsError(f"{option}={value}: give a number <= {high}")
    choices = metadata.get("choices")
    if choices is not None and isinstance(value, str):
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            raise SettingsError(f"{option}={value}: not one of {', '.join(allowed)}")


def declared_budgets() -> dict[str, type]:
    """Budget name -> dataclass, for every benchmark module imported so far."""
    return dict(_BUDGETS)


@dataclass(frozen=True)
class Settings:
    """Everything a run is configured with, resolved and validated."""

    catalogs: tuple[str, ...] = ()
    dataset_overrides: Mapping[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    mirrors: tuple[Path, ...] = ()
    offline: bool = False
    seed: int = 0
    members: int = 5000
    limit: int | None = None
    batch_size: int = 256
    device: str | None = None
    gpus: int = 0
    workers_per_gpu: int = 1
    timeout: float | None = None  # seconds per benchmark test; None or 0: no limit
    budgets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    allow_code_builders: bool = False  # catalog builders given as module:function may run (catalog/policy.py)
    bootstrap: int = 1000  # resamples of each metric's confidence interval (results/intervals.py); 0: none
    pins: Path | None = None  # the sha256 pin lock file (catalog/pins.py); None: beside the first user catalog
    pin_on_first_download: bool = False  # trust on first use: a direct-URL entry's first download is pinned

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalogs", tuple(str(c) for c in self.catalogs))
        object.__setattr__(self, "mirrors", tuple(Path(m) for m in self.mirrors))
        object.__setattr__(self, "dataset_overrides", MappingProxyType(dict(self.dataset_overrides)))
        object.__setattr__(self, "budgets", MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.budgets.items()}))
        _check_positive("--securitynet-members", self.members)
        _check_positive("--securitynet-batch-size", self.batch_size)
        if self.limit is not None:
            _check_positive("--securitynet-limit", self.limit)
        if self.gpus < 0:
            raise SettingsError(f"--gpus {self.gpus}: give a number of GPUs >= 0")
        _check_positive("--workers-per-gpu", self.workers_per_gpu)
        if self.timeout is not None and self.timeout < 0:
            raise SettingsError(f"--securitynet-timeout {self.timeout:g}: give seconds >= 0 (0: none)")
        if self.device is not None:
            check_device(self.device)
        if self.bootstrap < 0:
            raise SettingsError(f"--securitynet-bootstrap {self.bootstrap}: give a number of resamples >= 0 (0: no intervals)")
        if not 0 <= self.seed <= SEED_MAX:
            raise SettingsError(f"--securitynet-seed {self.seed}: give a seed from 0 to {SEED_MAX}")

    def as_dict(self) -> dict[str, Any]:
        """What the results file records as `run.settings`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "mirrors":
                value = [str(m) for m in value]
            elif f.name == "catalogs":
                value = list(value)
            elif f.name == "dataset_overrides":
                value = dict(value)
            elif f.name == "budgets":
                value = {k: dict(v) for k, v in value.items()}
            out[f.name] = value
        return out

    def budget(self, cls: type[T]) -> T:
        """The budget dataclass `cls` with this run's overrides applied (typed like its fields)."""
        name = getattr(cls, "budget_name", None)
        if name is None:
            raise TypeError(f"{cls.__name__} is not declared with @budget(...)")
        overrides = self.budgets.get(name, {})
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, raw in overrides.items():
            if key not in known:
                raise SettingsError(f"--securitynet-budget {name}.{key}: {name} has no {key!r}; "
                                    f"its fields are {', '.join(sorted(known))}")
            option = f"--securitynet-budget {name}.{key}"
            values[key] = _convert(option, raw, hints[key])
            check_budget_value(option, values[key], hints[key], known[key].metadata)
        return cls(**values)

    def check_budgets(self) -> None:
        """Every override names a declared budget and field, with a value of the field's type."""
        for name in self.budgets:
            if name not in _BUDGETS:
                known = ", ".join(sorted(_BUDGETS)) or "none"
                raise SettingsError(f"--securitynet-budget {name}.*: no collected benchmark declares a budget "
                                    f"{name!r} (declared: {known})")
            self.budget(_BUDGETS[name])


def settings_from(options: Mapping[str, Any] | None = None, ini: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings: options over ini values over `SECURITYNET_*` variables over defaults.

    `options` holds the plugin's option values by dest name without the prefix (`seed`, `members`,
    `catalog`, `dataset`, `budget` ...); None or missing means not given.
    """
    options, ini = dict(options or {}), dict(ini or {})
    env = os.environ if environ is None else environ

    def given(name: str) -> Any:
        value = options.get(name)
        return None if value in (None, [], ()) else value

    overrides = parse_overrides([*ini.get("dataset", []), *_env_list(env, "SECURITYNET_DATASET"),
                                 *(given("dataset") or [])])
    budgets = parse_budgets([*ini.get("budget", []), *_env_list(env, "SECURITYNET_BUDGET"),
                             *(given("budget") or [])])
    cache = given("cache") or env.get("SECURITYNET_CACHE") or None
    offline = bool(given("offline")) or _env_bool(env, "SECURITYNET_OFFLINE")
    catalogs = [*_env_paths(env, "SECURITYNET_CATALOG"), *(given("catalog") or [])]
    return Settings(
        catalogs=tuple(catalogs), dataset_overrides=overrides,
        cache_dir=Path(cache).expanduser() if cache else default_cache_dir(),
        mirrors=tuple(Path(p).expanduser() for p in _env_paths(env, "SECURITYNET_MIRROR")),
        offline=offline,
        seed=_int("--securitynet-seed", given("seed"), 0),
        members=_int("--securitynet-members", given("members"), 5000),
        limit=_int("--securitynet-limit", given("limit"), None),
        batch_size=_int("--securitynet-batch-size", given("batch_size"), 256),
        device=given("device"),
        gpus=_int("--gpus", given("gpus"), 0),
        workers_per_gpu=_int("--workers-per-gpu", given("workers_per_gpu"), 1),
        timeout=_seconds("--securitynet-timeout", given("timeout") if given("timeout") is not None
                         else (ini.get("timeout") or None)),
        budgets=budgets,
        allow_code_builders=bool(given("allow_code_builders")) or _ini_bool(ini.get("allow_code_builders")),
        bootstrap=_int("--securitynet-bootstrap", given("bootstrap"), 1000),
        pins=Path(pins).expanduser() if (pins := given("pins") or ini.get("pins") or env.get("SECURITYNET_PINS")) else None,
        pin_on_first_download=(bool(given("pin_on_first_download")) or _ini_bool(ini.get("pin_on_first_download"))
                               or _env_bool(env, "SECURITYNET_PIN_ON_FIRST_DOWNLOAD")),
    )


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`["cifar10=cifar10-jpeg", ...]` -> `{"cifar10": "cifar10-jpeg"}`."""
    out = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, other = part.partition("=")
            if not sep or not name or not other:
                raise CatalogError(f"bad dataset override {part!r}: write DATASET=OTHER, e.g. cifar10=cifar10-jpeg")
            out[name.strip()] = other.strip()
    return out


def parse_budgets(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """`["neural_cleanse.epochs=10", ...]` -> `{"neural_cleanse": {"epochs": "10"}}` (typed later)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            key, sep, value = part.partition("=")
            name, dot, field_name = key.partition(".")
            if not sep or not dot or not name or not field_name or not value:
                raise SettingsError(f"--securitynet-budget {part!r}: write NAME.FIELD=VALUE, "
                                    f"e.g. neural_cleanse.epochs=10")
            out.setdefault(name, {})[field_name] = value
    return out


def check_device(device: str) -> None:
    """A torch device string (`cpu`, `cuda`, `cuda:1`, `mps`), or SettingsError."""
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingsError(f"--securitynet-device {device!r}: not a torch device; write cpu, cuda or cuda:N") from None


def _check_positive(option: str, value: int) -> None:
    if value < 1:
        raise SettingsError(f"{option} {value}: give a number >= 1")


def _int(option: str, value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{option} {value!r}: not a whole number") from None


def _seconds(option: str, value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{option} {value!r}: give seconds, e.g. 3600 (0: none)") from None


def _convert(option: str, raw: Any, kind: Any) -> Any:
    if kind is bool or kind == "bool":
        text = str(raw).strip().lower()
        if text in TRUE | FALSE:
            return text in TRUE
        raise SettingsError(f"{option}={raw!r}: write true or false")
    for cast in (int, float, str):
        if kind is cast:
            try:
                return cast(raw)
            except (TypeError, ValueError):
                raise SettingsError(f"{option}={raw!r}: not a {cast.__name__}") from None
    return raw


def _env_list(env: Mapping[str, str], name: str) -> list[str]:
    raw = env.get(name, "")
    return [raw] if raw.strip() else []


def _env_paths(env: Mapping[str, str], name: str) -> list[str]:
    return [p for p in env.get(name, "").split(os.pathsep) if p.strip()]


def _ini_bool(value: Any) -> bool:
    """An ini flag: pytest gives a bool for `type="bool"`; other sources may give text."""
    return value if isinstance(value, bool) else str(value or "").strip().lower() in TRUE


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in TRUE
