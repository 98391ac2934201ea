"""The typed contracts: base classes, the adapter for duck-typed parts, the kinds table, and
strategies as ordinary components."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import fedprune
from fedprune import contracts, hookspecs
from fedprune.cli import main
from fedprune.errors import PluginError
from fedprune.registry import KINDS, SLOT_KINDS, Component, Method
from fedprune.testing import CHECKS, check_strategy, host_plugin_manager


class DuckMagnitude:
    """A pruning criterion written before the base classes existed."""

    def scores(self, weight, grad):
        return weight.abs()


def test_a_duck_typed_part_is_adapted_once_with_a_deprecation_warning():
    record = Component("duck", DuckMagnitude, kind="pruning_criterion", plugin="old")
    with pytest.warns(DeprecationWarning, match="does not subclass fedprune.PruningCriterion"):
        part = record.build()
    assert isinstance(part, fedprune.PruningCriterion)
    w = torch.tensor([-2.0, 1.0])
    assert torch.equal(part.scores(w, None), w.abs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record.build()  # once per component: no second warning


def test_a_part_missing_a_required_method_is_refused():
    record = Component("empty", object, kind="growth_criterion", plugin="old")
    with pytest.raises(PluginError, match=r"has no scores\(\)"):
        record.build()


def test_a_subclass_is_used_as_it_is_and_gets_the_no_op_defaults():
    class Quiet(fedprune.Regularizer):
        pass

    part = Component("quiet", Quiet, kind="regularizer").build()
    assert type(part) is Quiet and part.penalty(nn.Linear(1, 1)) is None
    assert part.learning_rate(0, 1, 0.1, 0.2) == 0.1 and part.end(None) == {}


def test_one_table_drives_hooks_slots_and_checks():
    for kind in KINDS:
        assert hasattr(hookspecs, f"fedprune_{kind.hook}")
        if kind.slot:
            assert SLOT_KINDS[kind.slot] is kind
        if kind.contract is not None and kind.name != "method":
            assert kind.name in CHECKS, f"no contract check for {kind.name}"
    with pytest.raises(PluginError, match="no slot bogus"):
        Method("m", bogus="x")


# ---------------------------------------------------------------------- strategies are parts


@pytest.mark.parametrize("name", ["fixed", "client_adjust", "server_adjust"])
def test_builtin_strategies_pass_the_strategy_contract(name, tmp_path):
    pm = host_plugin_manager()
    check_strategy(pm.registry.get(name, "strategy"), pm=pm, tmp=tmp_path)


class RandomSwap(fedprune.Strategy):
    """A new kind of adjustment, written as a plugin: in every round of the schedule the
    server swaps a random share of each layer's active positions for inactive ones (seeded by
    the server's stream), with no client work at all."""

    uses = frozenset({"schedule"})

    def plan(self, server, round):
        fraction = server.parts.need(fedprune.Schedule).fraction(round, server.config.rounds)
        counts = {n: int(fraction * int(m.sum())) for n, m in (server.masks or {}).items()}
        return fedprune.RoundPlan(round, counts if fraction > 0 else {})

    def server_masks(self, server, plan, state, votes):
        generator = server.generator("random-swap", plan.round)
        out = {}
        for name, mask in server.masks.items():
            flat = mask.flatten().clone()
            k = min(plan.counts.get(name, 0), int(flat.sum()), int((~flat).sum()))
            on, off = flat.nonzero().flatten(), (~flat).nonzero().flatten()
            flat[on[torch.randperm(len(on), generator=generator)[:k]]] = False
            flat[off[torch.randperm(len(off), generator=generator)[:k]]] = True
            out[name] = flat.view_as(mask)
        return out


def test_a_new_strategy_is_a_plugin_and_needs_no_engine_edit(tmp_path):
    check_strategy(RandomSwap, tmp=tmp_path)


def test_a_component_in_a_slot_the_strategy_never_uses_is_refused(tmp_path):
    plugin = types.ModuleType("swap")
    plugin.fedprune_strategies = fedprune.hookimpl(
        lambda: [Component("random_swap", RandomSwap)])
    plugin.fedprune_methods = fedprune.hookimpl(lambda: [Method(
        "swapper", strategy="random_swap", schedule="cosine", pruning_criterion="magnitude")])
    pm = host_plugin_manager()
    pm.register(plugin, name="swap")
    from fedprune.engine.config import RunConfig
    from fedprune.engine.parts import build_parts

    with pytest.raises(fedprune.errors.FedpruneError, match="does not use pruning_criterion"):
        build_parts(pm.registry, pm.registry.method("swapper"), RunConfig())


# ------------------------------------------------------------------------- what the bench refuses


class Rebuilder(fedprune.ActivationCompressor):
    """Replaces every conv with a new one: parameters are new objects (masks would be stale)."""

    def apply(self, model):
        for name, module in list(model.named_children()):
            if isinstance(module, nn.Conv2d):
                fresh = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                                  padding=module.padding, bias=module.bias is not None)
                setattr(model, name, fresh)


def test_the_bench_refuses_a_compressor_that_replaced_parameters(tmp_path, tiny_args, monkeypatch):
    from fedprune import plugins

    plugin = types.ModuleType("rebuilder")
    plugin.fedprune_activation_compressors = fedprune.hookimpl(
        lambda: [Component("rebuilder", Rebuilder)])
    real = plugins.get_plugin_manager

    def with_plugin(autoload=None):
        pm = real(autoload)
        pm.register(plugin, name="rebuilder")
        return pm

    monkeypatch.setattr(plugins, "get_plugin_manager", with_plugin)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--methods", "feddst+rebuilder", "--no-tracking",
                                       "--output", str(out), *tiny_args])
    assert result.exit_code == 1
    assert "activation compressor Rebuilder replaced or renamed parameters" in result.output


def test_contract_objects_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fedprune, fedprune.contracts; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    assert contracts.__name__ == "fedprune.contracts"
