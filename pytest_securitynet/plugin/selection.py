"""Models a `-k` expression can select, decided before their tests are generated.

Parametrizing every benchmark with every catalog model makes 17,000 items to deselect for `-k demo`
(about 15 s of collection). A model is left out only when none of its tests can match. pytest
matches each `-k` word as a case-insensitive substring of a test's names: the model's id and
keywords (known here), and the rest, the same for every model: the function, file and folder
names, the settings' ids and the marks. A word found in the model's names is true; a word found
in none of the rest (nor across the model id's edge in the test name) is false; any other word is
tried both ways. So `-k` selects what it would select without this filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pytest
from _pytest.mark.expression import Expression

MAX_UNKNOWN = 10
"""Expressions with more undecided words than this keep every model (2**N evaluations per model)."""
PLUGIN_MARKS = ("xdist_group", "benchmark_models", "security_models", "skip", "skipif", "timeout",
                "securitynet_heavy", "parametrize", "usefixtures", "filterwarnings")


class _Undecided(Exception):
    def __init__(self, key: tuple) -> None:
        self.key = key


def compile_keyword(expression: str | None) -> Expression | None:
    """The compiled `-k` expression, or None when there is none or pytest will reject it (it says why)."""
    expression = (expression or "").strip()
    if not expression:
        return None
    try:
        return Expression.compile(expression)
    except SyntaxError:
        return None


@dataclass(frozen=True)
class SharedNames:
    """What every test of one benchmark function matches besides its model: names, ids, marks."""

    function: str
    names: tuple[str, ...]
    ids: tuple[str, ...]


def shared_names(metafunc: pytest.Metafunc) -> SharedNames:
    """A superset of the names `-k` sees on `metafunc`'s tests, apart from the model's."""
    definition = metafunc.definition
    config = metafunc.config
    names = {definition.name, definition.path.name, metafunc.module.__name__, *PLUGIN_MARKS}
    try:
        names.update(definition.path.parent.relative_to(config.rootpath).parts)
    except ValueError:
        names.update(definition.path.parent.parts)
    if metafunc.cls is not None:
        names.add(metafunc.cls.__name__)
    names.update(vars(metafunc.function))
    names.update(mark.name for mark in definition.iter_markers())
    names.update(line.split(":")[0].split("(")[0].strip() for line in config.getini("markers"))
    ids: set[str] = set()
    for mark in definition.iter_markers("parametrize"):
        ids.update(_param_ids(mark))
    for name in metafunc.fixturenames:  # parametrized fixtures add their ids to the test's name too
        definitions = getattr(metafunc, "_arg2fixturedefs", {}).get(name) or ()
        params = getattr(definitions[-1], "params", None) if definitions else None
        if params is not None:
            given = getattr(definitions[-1], "ids", None)
            ids.update(str(i) for i in given or () if not callable(given))
            ids.update(_plain_id(v) or f"{name}{i}" for i, v in enumerate(params))
            ids.update(f"{name}{i}" for i in range(len(params)))
            ids.update(str(getattr(v, "id", "") or "") for v in params)
    return SharedNames(definition.name, tuple(n for n in names if n), tuple(i for i in ids if i))


def _param_ids(mark) -> set[str]:
    """Every id a `parametrize` mark may give (explicit ids, plain values, or argname + index)."""
    argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
    argvalues = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", [])
    names = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
    given = mark.kwargs.get("ids")
    out: set[str] = set()
    for index, value in enumerate(argvalues):
        if isinstance(given, (list, tuple)) and index < len(given) and given[index] is not None:
            out.add(str(given[index]))
        explicit = getattr(value, "id", None)
        if explicit is not None:
            out.add(str(explicit))
        values = getattr(value, "values", value if len(names) > 1 else (value,))
        for name, item in zip(names, values):
            out.update({_plain_id(item), f"{name}{index}"})
    return {i for i in out if i}


def _plain_id(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float, bool)) or value is None else ""


def may_match(expression: Expression, model_names: Iterable[str], model_id: str, rest: SharedNames) -> bool:
    """Whether some test of the model (`model_names`: its id and keywords) can satisfy `expression`."""
    own = [n.lower() for n in model_names]
    others = [n.lower() for n in rest.names]
    # The test's name, `function[<model id>-<setting ids>]`, can match across the model id's edges.
    edges = [f"{rest.function}[{model_id}]".lower(),
             *(f"{rest.function}[{model_id}-{i}]".lower() for i in rest.ids),
             *(f"{i}-{model_id}]".lower() for i in rest.ids)]
    ids = [i.lower() for i in rest.ids]

    def decide(word: str) -> bool | None:
        word = word.lower()
        if any(word in n for n in own):
            return True
        if any(word in n for n in others) or any(word in n for n in ids) or any(word in n for n in edges):
            return None
        return False

    return _search(expression, decide, {})


def model_may_match(expression: Expression, model_names: Iterable[str], all_names: Iterable[str]) -> bool:
    """Whether `expression` can hold for some test of a model, knowing only model names, for
    `securitynet catalog prefetch -k`: a word in the model's own names (id, keywords) is true, a word
    only other models' names hold (`all_names`) is false, and any other word (a benchmark's, a
    setting's) is undecided."""
    own = [n.lower() for n in model_names]
    every = [n.lower() for n in all_names]

    def decide(word: str) -> bool | None:
        word = word.lower()
        if any(word in n for n in own):
            return True
        return False if any(word in n for n in every) else None

    return _search(expression, decide, {})


def _search(expression: Expression, decide: Callable[[str], bool | None], assigned: dict[tuple, bool]) -> bool:
    def matcher(name: str, **kwargs) -> bool:
        key = (name, tuple(sorted(kwargs.items())))
        if key in assigned:
            return assigned[key]
        known = None if kwargs else decide(name)
        if known is not None:
            return known
        raise _Undecided(key)

    try:
        return expression.evaluate(matcher)
    except _Undecided as undecided:
        if len(assigned) >= MAX_UNKNOWN:
            return True
        return (_search(expression, decide, {**assigned, undecided.key: True})
                or _search(expression, decide, {**assigned, undecided.key: False}))
