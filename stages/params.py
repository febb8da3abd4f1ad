"""Typed access to params.yaml: every lookup names the dotted key when it is missing or mistyped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.errors import StageError

_MISSING = object()


class ParamsError(StageError):
    """A key of params.yaml is missing or has a value of the wrong type or range."""


class Params:
    """The parsed params.yaml; `get*` methods read dotted keys such as `select.target`."""

    def __init__(self, data: Mapping[str, Any], source: str = "params.yaml") -> None:
        if not isinstance(data, Mapping):
            raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
        self.data = data
        self.source = source

    def _lookup(self, key: str) -> Any:
        node: Any = self.data
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, Mapping) or part not in node:
                where = ".".join(key.split(".")[:depth]) or "the top level"
                raise ParamsError(f"{self.source}: missing key '{key}' (no '{part}' under {where})")
            node = node[part]
        return node

    def _fail(self, key: str, value: Any, expected: str) -> ParamsError:
        return ParamsError(f"{self.source}: '{key}' must be {expected}, got {value!r}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The raw value of `key`; `default` if given and the key is absent."""
        try:
            return self._lookup(key)
        except ParamsError:
            if default is _MISSING:
                raise
            return default

    def get_str(self, key: str, *, choices: Sequence[str] | None = None, optional: bool = False) -> str | None:
        """A string value, optionally restricted to `choices`; null allowed only if `optional`."""
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self._fail(key, value, "a non-empty string" + (" or null" if optional else ""))
        if choices is not None and value not in choices:
            raise self._fail(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    def get_int(self, key: str, *, min: int | None = None, optional: bool = False) -> int | None:
        """An integer value at least `min`; null allowed only if `optional`."""
        value = self.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, "an integer" + (" or null" if optional else ""))
        if min is not None and value < min:
            raise self._fail(key, value, f"an integer >= {min}")
        return value

    def get_float(
        self,
        key: str,
        *,
        min: float | None = None,
        max: float | None = None,
        min_inclusive: bool = True,
        optional: bool = False,
    ) -> float | None:
        """A number in [min, max] (or (min, max] if not `min_inclusive`); null only if `optional`."""
        value = self.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, value, "a number" + (" or null" if optional else ""))
        value = float(value)
        low_ok = min is None or (value >= min if min_inclusive else value > min)
        if not low_ok or (max is not None and value > max):
            low = "-inf" if min is None else f"{min:g}"
            high = "inf" if max is None else f"{max:g}"
            raise self._fail(key, value, f"a number in {'[' if min_inclusive else '('}{low}, {high}]")
        return value

    def get_bool(self, key: str) -> bool:
        """A true/false value."""
        value = self.get(key)
        if not isinstance(value, bool):
            raise self._fail(key, value, "true or false")
        return value

    def get_mapping(self, key: str, *, optional: bool = False) -> dict[str, Any] | None:
        """A mapping value (a section); null allowed only if `optional`."""
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(key, value, "a mapping" + (" or null" if optional else ""))
        return dict(value)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and parse `path`, with a clear error when it is absent or not valid YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameters file not found (run from the repository root or pass --params)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return Params(data if data is not None else {}, source=str(path))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys, e.g. {'select': {'method': 'x'}} -> {'select.method': 'x'}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
