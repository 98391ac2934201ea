"""Named benchmark setups: ``<name>.toml`` files shipped in this package (package data, so
``--preset`` works from any install), read as ``fedprune bench`` parameters.

A preset file holds top-level keys named like the bench command's parameters (``rounds``,
``clients_per_round``, ...; dashes are accepted for underscores): every `RunConfig` field that
is a bench option (their types come from the same declarations), plus ``methods``, ``seeds``
and an optional ``option`` list of ``"component.option=value"`` strings, or an ``[option]``
table that is flattened into that form. A ``description`` key documents the preset and is not
returned. `load_preset` returns only the keys the file sets, so command-line options can
override any of them.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from fedprune.engine.config import config_fields
from fedprune.errors import FedpruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def preset_keys() -> dict[str, type | tuple[type, ...]]:
    """Preset keys and the types their values must have (int also satisfies float)."""
    keys: dict[str, type | tuple[type, ...]] = {"methods": str, "seeds": (list, str)}
    for f in config_fields():
        default = f.default
        if isinstance(default, bool):
            keys[f.name] = bool
        elif isinstance(default, float) or f.metadata.get("sweep"):
            keys[f.name] = (int, float)
        elif isinstance(default, int) or f.type in ("int", "int | None"):
            keys[f.name] = int
        else:
            keys[f.name] = str
    keys["option"] = list
    return keys


def _files() -> Any:
    return resources.files(__name__)


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[:-5] for p in _files().iterdir() if p.name.endswith(".toml"))


def _flatten(table: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            if isinstance(value, bool):
                value = str(value).lower()
            out.append(f"{prefix}{key}={value}")
    return out


def _read(name_or_path: str) -> tuple[str, str]:
    """(where, TOML text) of a preset name or a path to a TOML file."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or "/" in name_or_path or "\\" in name_or_path:
        if not path.is_file():
            raise FedpruneError(f"preset file {path} not found")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FedpruneError(f"preset file {path} cannot be read: {exc}") from None
    named = _files() / f"{name_or_path}.toml"
    if named.is_file():
        return f"preset {name_or_path!r}", named.read_text(encoding="utf-8")
    available = ", ".join(list_presets()) or "none"
    raise FedpruneError(f"unknown preset {name_or_path!r}; available presets: {available}")


def _matches(value: Any, expected: type | tuple[type, ...]) -> bool:
    """``value`` has the expected type (a TOML boolean is never a number)."""
    return not isinstance(value, bool) and isinstance(value, expected)


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The bench parameters a preset sets, keyed by parameter name (``option``: list of str).

    ``name_or_path`` is a preset name or a path to a TOML file. Unknown keys and values of the
    wrong type raise `FedpruneError` naming the file.
    """
    where, text = _read(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FedpruneError(f"{where}: invalid TOML ({exc})") from None
    keys = preset_keys()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "description":
            continue
        if name == "option" and isinstance(value, dict):
            value = _flatten(value)
        if name not in keys:
            raise FedpruneError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(keys)}")
        expected = keys[name]
        if not _matches(value, expected):
            kind = {int: "an integer", str: "a string", list: "a list"}.get(
                expected if isinstance(expected, type) else float, "a number")
            if name == "seeds":
                kind = "a list of integers or a comma-separated string"
            raise FedpruneError(f"{where}: {key} must be {kind}, got {value!r}")
        if name == "option":
            if not all(isinstance(v, str) and "=" in v for v in value):
                raise FedpruneError(f"{where}: option must be a list of 'key=value' strings")
            value = list(value)
        elif name == "seeds" and isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise FedpruneError(f"{where}: seeds must be a list of integers")
        elif expected == (int, float):
            value = float(value)
        out[name] = value
    return out
