"""Option values from the command line and presets: strict booleans, numbers, sweeps.

``-o key=value`` values are read as JSON where they parse (numbers, ``true``/``false``, lists,
objects) and kept as strings otherwise. ``-o key=v1,v2`` (and ``--density 0.1,0.2``) is a sweep:
the bench runs one grid point per value. A comma inside JSON brackets or quotes is not a sweep
separator, so ``-o 'prunefl_adaptive.layer_cost={"a": 1, "b": 2}'`` stays one value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedprune.errors import FedpruneError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def as_bool(value: Any, name: str) -> bool:
    """``value`` as a boolean: True/False, 1/0 or the strings true/false, yes/no, on/off, 1/0.

    Anything else is an error: the string ``"False"`` must never read as true.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise FedpruneError(f"{name} must be true or false (or yes/no, 1/0), not {value!r}")


def as_number(value: Any, name: str, *, integer: bool = False) -> float:
    """``value`` as a finite number (an integer with ``integer``), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FedpruneError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise FedpruneError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise FedpruneError(f"{name} must be a finite number, not {value!r}")
    if integer and number != int(number):
        raise FedpruneError(f"{name} must be an integer, not {value!r}")
    return int(number) if integer else number


def parse_value(raw: str) -> Any:
    """A command-line value: JSON where it parses, else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def split_sweep(raw: str) -> list[str]:
    """Top-level comma-separated items of ``raw`` (commas inside brackets or quotes stay)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(raw[start:i])
            start = i + 1
    items.append(raw[start:])
    return [item.strip() for item in items]


def parse_options(pairs: Iterable[str]) -> dict[str, list[Any]]:
    """``key=value`` pairs as key -> list of values (several values: a sweep)."""
    options: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise FedpruneError(f"{pair!r} is not key=value (e.g. cosine.interval=5)")
        values = [parse_value(item) for item in split_sweep(raw)]
        if any(item == "" for item in split_sweep(raw)) and len(values) > 1:
            raise FedpruneError(f"{pair!r}: an empty value in a comma-separated sweep")
        options[key.strip()] = values
    return options


def option_grid(options: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of swept option values, in the order given (one dict if no sweep)."""
    grid: list[dict[str, Any]] = [{}]
    for key, values in options.items():
        grid = [{**point, key: value} for point in grid for value in values]
    return grid


def option_label(options: Mapping[str, Any]) -> str:
    """``a.x=1,b.y=true``: a grid point's options, canonical (sorted, JSON values)."""
    return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                    for k, v in sorted(options.items()))
