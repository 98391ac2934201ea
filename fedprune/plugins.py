"""The plugin manager: entry-point loading, registration, and what each plugin registers.

Built-in plugins ship in the ``fedprune`` distribution and are found through the same
``fedprune`` entry-point group as third-party ones. ``FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD=1`` keeps
entry points of other distributions out (the project's own tests run that way); names listed in
``FEDPRUNE_PLUGINS`` (comma separated) are loaded even then. An entry point that fails to import
gives a warning naming it and is skipped; everything else keeps working.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata

import pluggy

from fedprune import hookspecs
from fedprune.errors import PluginError
from fedprune.registry import KIND_HOOKS, Component, Method, Registry

GROUP = "fedprune"
HOST_DISTRIBUTION = "fedprune"
DISABLE_ENV = "FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD"
ENABLE_ENV = "FEDPRUNE_PLUGINS"


class PluginLoadWarning(UserWarning):
    """An installed plugin could not be loaded; it is skipped."""


@dataclass
class PluginInfo:
    """One loaded plugin, as `fedprune plugins` shows it."""

    name: str
    distribution: str
    version: str
    registers: dict[str, list[str]] = field(default_factory=dict)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus fedprune's registry of named records."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self._registry: Registry | None = None

    def register(self, plugin, name=None):  # noqa: D102 - pluggy's signature
        self._registry = None
        return super().register(plugin, name)

    def unregister(self, plugin=None, name=None):  # noqa: D102
        self._registry = None
        return super().unregister(plugin, name)

    def set_distribution(self, name: str, distribution: str, version: str) -> None:
        """Record which distribution (and version) provides plugin ``name``."""
        self._dists[name] = (distribution, version)

    def load_entry_points(self, autoload: bool | None = None) -> None:
        """Register every plugin of the ``fedprune`` entry-point group.

        With autoload off, only the host's own entry points and those named in
        ``FEDPRUNE_PLUGINS`` are loaded.
        """
        if autoload is None:
            autoload = not os.environ.get(DISABLE_ENV)
        wanted = {n.strip() for n in os.environ.get(ENABLE_ENV, "").split(",") if n.strip()}
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if self.has_plugin(ep.name) or self.is_blocked(ep.name):
                continue
            if not autoload and dist != HOST_DISTRIBUTION and ep.name not in wanted:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the host down
                warnings.warn(
                    f"fedprune plugin {ep.name!r} from {dist} {version} failed to load and is "
                    f"skipped: {type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            self.register(plugin, name=ep.name)
            self.set_distribution(ep.name, dist, version)

    @property
    def registry(self) -> Registry:
        """Every registered record, collected once per set of plugins."""
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry()
        for kind, suffix in KIND_HOOKS.items():
            caller = getattr(self.hook, f"fedprune_{suffix}")
            # Call each implementation on its own so every record knows its plugin.
            for impl in reversed(caller.get_hookimpls()):
                try:
                    records = impl.function() or ()
                    records = list(records)
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed in fedprune_{suffix}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                for record in records:
                    if not isinstance(record, (Component, Method)):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} returned {record!r} from "
                            f"fedprune_{suffix}; expected fedprune.Component or fedprune.Method"
                        )
                    if (kind == "method") != isinstance(record, Method):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} returned {record.name!r} from "
                            f"fedprune_{suffix}: methods go in fedprune_methods, components "
                            "in their kind's hook"
                        )
                    registry.add(replace(record, kind=kind, plugin=impl.plugin_name))
        return registry

    def plugin_infos(self) -> list[PluginInfo]:
        """Loaded plugins with their distribution, version and registrations."""
        infos = {}
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, ("-", "-"))
            infos[name] = PluginInfo(name, dist, version)
        for record in self.registry.records():
            info = infos.get(record.plugin)
            if info is not None:
                info.registers.setdefault(record.kind, []).append(record.name)
        return sorted(infos.values(), key=lambda i: (i.distribution != HOST_DISTRIBUTION, i.name))


def get_plugin_manager(autoload: bool | None = None) -> PluginManager:
    """A manager with the built-in core plugins and the installed entry points registered."""
    from fedprune import builtins

    pm = PluginManager()
    pm.register(builtins, name="builtins")
    pm.set_distribution("builtins", HOST_DISTRIBUTION, _version())
    pm.load_entry_points(autoload)
    return pm


def _version() -> str:
    try:
        return metadata.version(HOST_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
