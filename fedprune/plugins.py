"""The plugin manager: entry-point loading, registration, and what each plugin registers.

Built-in plugins ship in the ``fedprune`` distribution and are found through the same
``fedprune`` entry-point group as third-party ones. Environment:

- ``FEDPRUNE_DISABLE_PLUGINS=a,b``: never load the plugins named ``a`` and ``b`` (the analogue of
  pytest's ``-p no:name``), built-in or not.
- ``FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD=1``: load only the ``fedprune`` distribution's own entry
  points, plus those named in ``FEDPRUNE_PLUGINS`` (comma separated).

An entry point that fails to import gives a warning naming it and is skipped; everything else
keeps working. Its error and traceback are kept for ``fedprune plugins`` and ``fedprune -v``.
"""

from __future__ import annotations

import os
import traceback
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import pluggy

from fedprune import hookspecs
from fedprune.errors import PluginError
from fedprune.registry import KINDS, Component, Method, Registry

GROUP = "fedprune"
HOST_DISTRIBUTION = "fedprune"
DISABLE_ENV = "FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD"
ENABLE_ENV = "FEDPRUNE_PLUGINS"
BLOCK_ENV = "FEDPRUNE_DISABLE_PLUGINS"


class PluginLoadWarning(UserWarning):
    """An installed plugin could not be loaded; it is skipped."""


@dataclass
class PluginInfo:
    """One plugin, as `fedprune plugins` shows it: ``status`` is loaded, failed or disabled."""

    name: str
    distribution: str
    version: str
    status: str = "loaded"
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None


def _names(variable: str) -> set[str]:
    return {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus fedprune's registry of named records."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self._registry: Registry | None = None
        self.failures: dict[str, PluginInfo] = {}
        self.disabled: dict[str, PluginInfo] = {}

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._registry = None
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._registry = None
        return super().unregister(plugin, name)

    def set_distribution(self, name: str, distribution: str, version: str) -> None:
        """Record which distribution (and version) provides plugin ``name``."""
        self._dists[name] = (distribution, version)

    def load_entry_points(self, autoload: bool | None = None) -> None:
        """Register every plugin of the ``fedprune`` entry-point group.

        With autoload off, only the host's own entry points and those named in
        ``FEDPRUNE_PLUGINS`` are loaded; names in ``FEDPRUNE_DISABLE_PLUGINS`` never are.
        """
        if autoload is None:
            autoload = not os.environ.get(DISABLE_ENV)
        wanted, blocked = _names(ENABLE_ENV), _names(BLOCK_ENV)
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if self.has_plugin(ep.name) or self.is_blocked(ep.name):
                continue
            if ep.name in blocked:
                self.disabled[ep.name] = PluginInfo(ep.name, dist, version, "disabled")
                continue
            if not autoload and dist != HOST_DISTRIBUTION and ep.name not in wanted:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the host down
                error = f"{type(exc).__name__}: {exc}"
                self.failures[ep.name] = PluginInfo(
                    ep.name, dist, version, "failed", error=error,
                    traceback=traceback.format_exc(),
                )
                warnings.warn(
                    f"fedprune plugin {ep.name!r} from {dist} {version} failed to load and is "
                    f"skipped: {error} (fedprune -v shows the traceback; disable it with "
                    f"{BLOCK_ENV}={ep.name})",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            self.register(plugin, name=ep.name)
            self.set_distribution(ep.name, dist, version)

    @property
    def registry(self) -> Registry:
        """Every registered record, collected once per set of plugins (duplicates refused)."""
        if self._registry is None:
            self._registry = self.collect(strict=True)
        return self._registry

    def collect(self, strict: bool = True) -> Registry:
        """Call every registration hook; ``strict=False`` records name clashes instead."""
        registry = Registry(strict=strict)
        for kind in KINDS:
            caller = getattr(self.hook, f"fedprune_{kind.hook}")
            # Call each implementation on its own so every record knows its plugin.
            for impl in reversed(caller.get_hookimpls()):
                try:
                    records = list(impl.function() or ())
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed in fedprune_{kind.hook}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                for record in records:
                    if not isinstance(record, (Component, Method)):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} returned {record!r} from "
                            f"fedprune_{kind.hook}; expected fedprune.Component or "
                            "fedprune.Method"
                        )
                    if (kind.name == "method") != isinstance(record, Method):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} returned {record.name!r} from "
                            f"fedprune_{kind.hook}: methods go in fedprune_methods, components "
                            "in their kind's hook"
                        )
                    if isinstance(record, Method):
                        registry.add(record.replace(plugin=impl.plugin_name))
                    else:
                        registry.add(replace(record, kind=kind.name, plugin=impl.plugin_name))
        return registry

    def plugin_infos(self, registry: Registry | None = None) -> list[PluginInfo]:
        """Loaded, failed and disabled plugins with their distribution, version and records."""
        infos = {}
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, ("-", "-"))
            infos[name] = PluginInfo(name, dist, version)
        for record in (registry or self.registry).records():
            info = infos.get(record.plugin)
            if info is not None:
                info.registers.setdefault(record.kind, []).append(record.name)
        everything = [*infos.values(), *self.failures.values(), *self.disabled.values()]
        return sorted(everything, key=lambda i: (i.distribution != HOST_DISTRIBUTION, i.name))


def get_plugin_manager(autoload: bool | None = None) -> PluginManager:
    """A manager with the built-in core plugins and the installed entry points registered."""
    from fedprune import builtins

    pm = PluginManager()
    pm.register(builtins, name="builtins")
    pm.set_distribution("builtins", HOST_DISTRIBUTION, version())
    pm.load_entry_points(autoload)
    return pm


def version() -> str:
    """fedprune's installed version."""
    try:
        return metadata.version(HOST_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
