"""Named benchmark setups: ``benchmarks/presets/<name>.toml`` as ``fedprune bench`` parameters.

A preset file holds top-level keys named like the bench command's parameters (``rounds``,
``clients_per_round``, ...; dashes are accepted for underscores) and an optional ``option`` list
of ``"component.option=value"`` strings, or an ``[option]`` table that is flattened into that
form. A ``description`` key documents the preset and is not returned. `load_preset` returns only
the keys the file sets, so command-line options can override any of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fedprune.errors import FedpruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Preset keys and the types their values must have (int also satisfies float).
PRESET_KEYS: dict[str, type | tuple[type, ...]] = {
    "methods": str,
    "dataset": str,
    "model": str,
    "rounds": int,
    "clients": int,
    "clients_per_round": int,
    "local_epochs": int,
    "local_steps": int,
    "batch_size": int,
    "lr": (int, float),
    "momentum": (int, float),
    "weight_decay": (int, float),
    "density": (int, float),
    "partition": str,
    "dirichlet_alpha": (int, float),
    "eval_every": int,
    "seeds": (list, str),
    "option": list,
}
_FLOATS = {"lr", "momentum", "weight_decay", "density", "dirichlet_alpha"}


def presets_dir() -> Path:
    """``benchmarks/presets/`` of the source tree that holds the ``fedprune`` package."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "presets"


def list_presets() -> list[str]:
    """Names of the presets in `presets_dir`, sorted."""
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


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


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix == ".toml" or "/" in name_or_path or "\\" in name_or_path
    if looks_like_path:
        if not path.is_file():
            raise FedpruneError(f"preset file {path} not found")
        return path
    named = presets_dir() / f"{name_or_path}.toml"
    if named.is_file():
        return named
    available = ", ".join(list_presets()) or f"none (no presets in {presets_dir()})"
    raise FedpruneError(f"unknown preset {name_or_path!r}; available presets: {available}")


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The bench parameters a preset sets, keyed by parameter name (``option``: list of str).

    ``name_or_path`` is a preset name (looked up in `presets_dir`) or a path to a TOML file.
    Unknown keys and values of the wrong type raise `FedpruneError` naming the file.
    """
    path = _resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise FedpruneError(f"preset {path}: invalid TOML ({exc})") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "description":
            continue
        if name == "option" and isinstance(value, dict):
            value = _flatten(value)
        if name not in PRESET_KEYS:
            allowed = ", ".join(PRESET_KEYS)
            raise FedpruneError(f"preset {path}: unknown key {key!r}; allowed keys: {allowed}")
        expected = PRESET_KEYS[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = {int: "an integer", str: "a string", list: "a list"}.get(expected, "a number")
            if name == "seeds":
                kind = "a list of integers or a comma-separated string"
            raise FedpruneError(f"preset {path}: {key} must be {kind}, got {value!r}")
        if name == "option":
            if not all(isinstance(v, str) and "=" in v for v in value):
                raise FedpruneError(f"preset {path}: option must be a list of 'key=value' strings")
            value = list(value)
        elif name == "seeds" and isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise FedpruneError(f"preset {path}: seeds must be a list of integers")
        elif name in _FLOATS:
            value = float(value)
        out[name] = value
    return out
