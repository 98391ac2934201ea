"""Registration, duplicate names, A+B mixing and plugin loading failures."""

from __future__ import annotations

import types
from importlib import metadata

import pytest

import fedprune
from fedprune.errors import FedpruneError, PluginError
from fedprune.plugins import PluginLoadWarning, PluginManager, get_plugin_manager


def plugin(name, hook, records):
    module = types.ModuleType(name)
    setattr(module, hook, fedprune.hookimpl(lambda: records))
    return module


def test_builtin_methods_and_components_are_registered(pm):
    reg = pm.registry
    assert {"fedavg", "feddst", "prunefl"} <= set(reg.names("method"))
    assert "magnitude" in reg.names("pruning_criterion")
    assert {"digits", "cifar10"} <= set(reg.names("dataset"))
    assert reg.get("fedavg", "method").plugin == "fedavg"


def test_duplicate_names_are_an_error_naming_both_plugins(pm):
    pm.register(plugin("impostor", "fedprune_pruning_criteria",
                       [fedprune.Component("feddst", object, "clash")]), name="impostor")
    with pytest.raises(PluginError) as err:
        _ = pm.registry
    assert "'feddst'" in str(err.value)
    assert "'feddst' (plugin" not in str(err.value)
    assert "impostor" in str(err.value) and "plugin 'feddst'" in str(err.value)


def test_a_plus_b_puts_the_component_into_its_slot(pm):
    method = pm.registry.method("feddst+random")
    assert method.name == "feddst+random"
    assert method.growth_criterion == "random"
    assert method.strategy == "client_adjust"


def test_unknown_names_list_what_is_available(pm):
    with pytest.raises(FedpruneError, match="unknown method 'fedavgg'.*Did you mean 'fedavg'"):
        pm.registry.method("fedavgg")
    with pytest.raises(FedpruneError, match="mixable component 'nope'.*Available: .*magnitude"):
        pm.registry.method("feddst+nope")
    with pytest.raises(FedpruneError, match="'fedavg' in 'feddst\\+fedavg' is a method, not"):
        pm.registry.method("feddst+fedavg")  # a method is not a component
    with pytest.raises(FedpruneError, match="'fedavg' is dense"):
        pm.registry.method("fedavg+magnitude")  # nothing in a dense method would use it


def test_records_of_the_wrong_kind_are_rejected(pm):
    pm.register(plugin("confused", "fedprune_methods",
                       [fedprune.Component("x", object)]), name="confused")
    with pytest.raises(PluginError, match="confused.*methods go in fedprune_methods"):
        _ = pm.registry


def test_component_options_come_from_the_factory_signature(pm):
    cosine = pm.registry.get("cosine", "schedule")
    assert cosine.options() == {"alpha": 0.4, "interval": 10, "stop": 0.6}
    with pytest.raises(FedpruneError, match="has no option speed; its options are: alpha"):
        cosine.build(speed=1)


def test_a_broken_entry_point_warns_and_everything_else_works(monkeypatch):
    real = metadata.entry_points

    class Broken:
        name, group, value = "broken", "fedprune", "not_a_module_xyz"
        dist = types.SimpleNamespace(name="fedprune-broken", version="9.9")

        def load(self):
            raise ImportError("no module named not_a_module_xyz")

    def fake(**kw):
        return list(real(**kw)) + [Broken()]

    monkeypatch.setattr(metadata, "entry_points", fake)
    monkeypatch.setenv("FEDPRUNE_PLUGINS", "broken")
    with pytest.warns(PluginLoadWarning, match="'broken' from fedprune-broken 9.9 failed"):
        pm = get_plugin_manager()
    assert "fedavg" in pm.registry.names("method")


def test_autoload_off_skips_other_distributions(monkeypatch):
    real = metadata.entry_points
    loaded = []

    class Other:
        name, group, value = "other", "fedprune", "x"
        dist = types.SimpleNamespace(name="fedprune-other", version="1.0")

        def load(self):
            loaded.append(True)
            return types.ModuleType("other")

    monkeypatch.setattr(metadata, "entry_points", lambda **kw: list(real(**kw)) + [Other()])
    pm = PluginManager()
    pm.load_entry_points(autoload=False)
    assert not loaded and pm.has_plugin("fedavg")
    monkeypatch.setenv("FEDPRUNE_PLUGINS", "other")
    pm2 = PluginManager()
    pm2.load_entry_points(autoload=False)
    assert loaded and pm2.has_plugin("other")


def test_plugin_infos_report_distribution_and_registrations(pm):
    infos = {i.name: i for i in pm.plugin_infos()}
    assert infos["fedavg"].distribution == "fedprune"
    assert infos["fedavg"].registers == {"method": ["fedavg"]}
    assert "growth_criterion" in infos["sparse"].registers
