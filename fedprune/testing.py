"""A pytest plugin for plugin authors: a clean plugin manager, a tiny federation, contract checks.

Opt in from your ``conftest.py``::

    pytest_plugins = ["fedprune.testing"]

It is not registered through a ``pytest11`` entry point: it imports torch, and every pytest
session in an environment with fedprune installed would pay for that.

Fixtures:

* ``fedprune_plugins``: override it to name the plugins under test, as entry-point names
  (``"snip"``: loads the installed package, so its packaging is tested too) or plugin objects.
* ``fedprune_pm``: a fresh `fedprune.plugins.PluginManager` with fedprune's own plugins and the
  plugins under test, and no other installed third-party plugin.
* ``tiny_federation``: a `TinyFederation` that runs method specs end to end on CPU in seconds.

Contract checks (``check_pruning_criterion`` and friends) drive a component the way the engine
does, on inputs drawn by hypothesis, and raise ``AssertionError`` naming what broke. Each takes a
`fedprune.Component` record, its factory, or an already built object; ``check_component`` looks
a name up in a plugin manager and picks the check for its kind.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from fedprune import hookimpl
from fedprune import masks as M
from fedprune.bench import BenchPlan, run_bench
from fedprune.contracts import (
    ActivationCompressor,
    ClientContext,
    GrowthCriterion,
    MaskPolicy,
    ModelTransform,
    Partitioner,
    PruningCriterion,
    Regularizer,
    RoundPlan,
    Schedule,
    adapt,
)
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.engine.parts import MethodParts
from fedprune.errors import FedpruneError, PluginError
from fedprune.memory import SavedTensorMeter
from fedprune.ops.layers import bind_masks, growth_gradients
from fedprune.plugins import ENABLE_ENV, GROUP, PluginManager, get_plugin_manager
from fedprune.registry import KINDS, Component, Method

if TYPE_CHECKING:
    from fedprune.engine.simulation import Simulation

__all__ = [
    "CHECKS",
    "EventRecorder",
    "TinyFederation",
    "check_activation_compressor",
    "check_component",
    "check_growth_criterion",
    "check_mask_policy",
    "check_method",
    "check_model",
    "check_model_transform",
    "check_partitioner",
    "check_pruning_criterion",
    "check_regularizer",
    "check_schedule",
    "check_strategy",
    "host_plugin_manager",
    "load_entry_point",
    "one_thread",
    "register_plugin",
    "tiny_config",
    "tiny_simulation",
]


# ------------------------------------------------------------------------------ plugin managers


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def host_plugin_manager() -> PluginManager:
    """fedprune's own plugins only: builtins and the ``fedprune`` distribution's entry points.

    Neither autoload nor ``FEDPRUNE_PLUGINS`` applies, so what else is installed in the
    environment cannot change a test's outcome.
    """
    with _without_env(ENABLE_ENV):
        return get_plugin_manager(autoload=False)


def load_entry_point(pm: PluginManager, name: str) -> Any:
    """Load the installed entry point ``name`` of the ``fedprune`` group into ``pm``.

    Unlike autoloading, a missing or broken entry point is an error here (with the plugin's own
    traceback): in a plugin's test suite, that is the bug to see.
    """
    found = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise PluginError(
            f"no installed entry point {name!r} in group {GROUP!r}; install the plugin's "
            "distribution (e.g. `pip install -e .`) and check [project.entry-points.fedprune]"
        )
    ep = found[0]
    plugin = ep.load()
    if not pm.has_plugin(name):
        pm.register(plugin, name=name)
    if ep.dist is not None:
        pm.set_distribution(name, ep.dist.name, ep.dist.version)
    return plugin


def register_plugin(pm: PluginManager, plugin: Any, name: str | None = None) -> Any:
    """Register ``plugin``: an entry-point name, a module, or an object with hookimpls."""
    if isinstance(plugin, str):
        return load_entry_point(pm, plugin)
    if name is None:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin)}"
    if not pm.is_registered(plugin):
        pm.register(plugin, name=name)
    return plugin


@pytest.fixture
def fedprune_plugins() -> list[Any]:
    """The plugins under test: override in your conftest.py, e.g. ``return ["snip"]``."""
    return []


@pytest.fixture
def fedprune_pm(fedprune_plugins) -> PluginManager:
    """A fresh plugin manager: fedprune's own plugins plus ``fedprune_plugins``, nothing else.

    Register more with ``fedprune_pm.register(plugin)`` (or `register_plugin`).
    """
    pm = host_plugin_manager()
    for plugin in fedprune_plugins:
        register_plugin(pm, plugin)
    return pm


# ----------------------------------------------------------------------------- tiny federation


def tiny_config(**settings: Any) -> RunConfig:
    """A run that takes well under a second per method on one CPU thread.

    The cosine schedule adjusts in round 1, so client- and server-side prune-and-grow both run.
    """
    options = {"cnn.width": 4, "cosine.interval": 1, "cosine.stop": 1.0}
    options.update(settings.pop("options", None) or {})
    base = dict(
        dataset="digits", model="cnn", rounds=2, clients=4, clients_per_round=2, local_steps=2,
        batch_size=16, eval_every=1, partition="iid", density=0.5, options=options,
    )
    return RunConfig(**{**base, **settings})


class EventRecorder:
    """A lifecycle plugin that records every call as ``(hook name, keyword arguments)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments of every call of hook ``name``, in order."""
        return [kwargs for hook, kwargs in self.events if hook == name]

    @hookimpl
    def fedprune_bench_start(self, bench):
        self.events.append(("fedprune_bench_start", {"bench": bench}))

    @hookimpl
    def fedprune_run_start(self, run):
        self.events.append(("fedprune_run_start", {"run": run}))

    @hookimpl
    def fedprune_client_trained(self, run, round, client):
        self.events.append(("fedprune_client_trained", {"run": run, "round": round,
                                                        "client": client}))

    @hookimpl
    def fedprune_masks_updated(self, run, round, masks):
        masks = {n: m.clone() for n, m in masks.items()}
        self.events.append(("fedprune_masks_updated", {"run": run, "round": round,
                                                       "masks": masks}))

    @hookimpl
    def fedprune_round_end(self, run, round, metrics):
        self.events.append(("fedprune_round_end", {"run": run, "round": round,
                                                   "metrics": dict(metrics)}))

    @hookimpl
    def fedprune_run_end(self, run, result):
        self.events.append(("fedprune_run_end", {"run": run, "result": result}))

    @hookimpl
    def fedprune_bench_end(self, bench, results):
        self.events.append(("fedprune_bench_end", {"bench": bench, "results": results}))


def tiny_simulation(
    spec: str,
    pm: PluginManager | None = None,
    *,
    config: RunConfig | None = None,
    data: Any = None,
    seed: int = 0,
    recorder: EventRecorder | None = None,
    **settings: Any,
) -> Simulation:
    """A `fedprune.engine.simulation.Simulation` of ``spec`` on ``config`` (default:
    `tiny_config` with ``settings``), prepared exactly as a bench prepares it; ``recorder``
    receives its events. Step it round by round (``sim.step(round, clients)``) or run it."""
    from fedprune.data.digits import load_digits
    from fedprune.engine.events import Observers
    from fedprune.engine.prepare import make_federation, prepare
    from fedprune.engine.simulation import Simulation

    pm = pm or host_plugin_manager()
    config = config or tiny_config(**settings)
    federation = make_federation(pm.registry, config, seed, data or load_digits())
    run = prepare(pm.registry, pm.registry.method(spec), federation)
    observers = None
    if recorder is not None:
        pm.register(recorder, name=f"event-recorder-{id(recorder)}")
        observers = Observers(pm.hook)
    return Simulation(run, observers)


@dataclass
class TinyFederation:
    """Runs method specs through `fedprune.bench.run_bench` with a tiny CPU configuration.

    ``run`` returns the results.json list; ``events`` then holds the lifecycle calls of that
    bench, as recorded by an `EventRecorder`.
    """

    pm: PluginManager
    root: Path
    config: RunConfig = field(default_factory=tiny_config)
    seeds: tuple[int, ...] = (0,)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _benches: int = 0

    def run(
        self,
        specs: str | Sequence[str],
        *,
        seeds: Sequence[int] | None = None,
        options: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> list[dict[str, Any]]:
        """Bench ``specs`` (``"feddst,feddst+taylor"`` or a list); ``settings`` and ``options``
        override the tiny configuration."""
        if isinstance(specs, str):
            specs = [s.strip() for s in specs.split(",") if s.strip()]
        config = dataclasses.replace(
            self.config, **settings, options={**self.config.options, **(options or {})}
        )
        self._benches += 1
        output = Path(self.root) / f"bench-{self._benches}"
        recorder = EventRecorder()
        threads = torch.get_num_threads()
        self.pm.register(recorder, name=f"event-recorder-{id(recorder)}")
        torch.set_num_threads(1)
        plan = BenchPlan(tuple(specs), tuple(seeds or self.seeds), (config,))
        try:
            return run_bench(self.pm, plan, output)
        finally:
            torch.set_num_threads(threads)
            self.pm.unregister(recorder)
            self.events = recorder.events

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def tiny_federation(fedprune_pm, tmp_path) -> TinyFederation:
    """A `TinyFederation` over ``fedprune_pm``, writing into ``tmp_path``."""
    return TinyFederation(fedprune_pm, tmp_path / "federation")


def check_method(spec: str, federation: TinyFederation) -> dict[str, Any]:
    """The recipe resolves, runs to the end on ``federation``, and does so reproducibly.

    Sparse methods without a mask policy must end at most at the requested density. Returns the
    run's result.
    """
    method = federation.pm.registry.method(spec)
    [result] = federation.run(spec)
    if result["status"] != "ok":
        raise AssertionError(
            f"method {spec!r} failed on the tiny federation: {result['error']}\n"
            f"{result.get('traceback', '')}"
        )
    rounds = federation.config.rounds
    names = federation.event_names()
    assert names.count("fedprune_round_end") == rounds, f"{spec!r}: not every round ended"
    assert 0.0 <= result["final_accuracy"] <= 1.0, f"{spec!r}: accuracy out of [0, 1]"
    assert math.isfinite(result["final_loss"]), f"{spec!r}: final loss is not finite"
    density = result["density"]
    if method.sparse and method.mask_policy is None:
        assert density <= federation.config.density + 0.02, (
            f"{spec!r} ends at density {density:.3f}, above the requested "
            f"{federation.config.density}: the masks are not enforced"
        )
    [again] = federation.run(spec)
    keys = ("final_accuracy", "final_loss", "density", "upload_bytes", "download_bytes")
    differ = [k for k in keys if again.get(k) != result[k]]
    assert not differ, (
        f"{spec!r} is not reproducible: {', '.join(differ)} changed between two runs with the "
        "same seed; draw randomness from a seeded generator, not torch's global stream"
    )
    return result


# ---------------------------------------------------------------------------- contract helpers


def _settings(max_examples: int, shrink: bool = True) -> Callable:
    """Reproducible examples; no shrinking where one example trains a model (too slow)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread: faster for tiny models, and fair on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _label(component: Any) -> str:
    if isinstance(component, Component):
        return f"{component.kind or 'component'} {component.name!r} (plugin {component.plugin!r})"
    if inspect.isclass(component) or inspect.isfunction(component):
        return repr(component.__name__)
    return repr(type(component).__name__)


def _build(component: Any, options: Mapping[str, Any] | None, contract: type | None = None) -> Any:
    """A fresh part: a record's or a factory's product, or the object itself; adapted to
    ``contract`` as the engine adapts it (a duck-typed part works, with a DeprecationWarning)."""
    options = dict(options or {})
    if isinstance(component, Component):
        return component.build(**options)
    if inspect.isclass(component) or inspect.isfunction(component):
        built = component(**options)
    elif options:
        raise TypeError("options apply to a Component or a factory, not to a built object")
    else:
        built = component
    return built if contract is None else adapt(built, contract, _label(component))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_model(
    seed: int, width: int = 4, channels: int = 3, classes: int = 3, bn: bool = True
) -> nn.Module:
    """The small CNN (``bn=False``: without BatchNorm, so conv inputs are ReLU outputs and the
    model input: where a compressor is expected to save memory)."""
    from fedprune.models.cnn import SmallCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(classes, (channels, 8, 8), width)
    if not bn:
        for i, module in enumerate(model):
            if isinstance(module, nn.BatchNorm2d):
                model[i] = nn.Identity()
    return model


def _model_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    prunable = M.prunable_parameters(model)
    shapes = {n: m.weight.shape for n, m in prunable.items()}
    counts = M.target_counts(shapes, M.erk_densities(shapes, density))
    return M.random_masks(shapes, counts, _seeded(seed))


def _assert_scores(label: str, scores: Any, like: torch.Tensor, what: str) -> None:
    assert isinstance(scores, torch.Tensor), f"{label}: {what} is {type(scores).__name__}"
    assert scores.shape == like.shape, (
        f"{label}: {what} has shape {tuple(scores.shape)}, the weight {tuple(like.shape)}"
    )
    assert bool(torch.isfinite(scores.float()).all()), f"{label}: {what} is not finite"


def _assert_prune_and_grow(
    label: str, mask: torch.Tensor, prune: torch.Tensor, grow: torch.Tensor, k: int
) -> None:
    new, grown = M.prune_and_grow(mask, prune, grow, k)
    expected = min(k, int(mask.sum()), int((~mask).sum()))
    assert new.dtype == torch.bool and new.shape == mask.shape, f"{label}: mask not boolean"
    assert int(new.sum()) == int(mask.sum()), f"{label}: prune and grow changed the count"
    assert int((mask & ~new).sum()) == expected, f"{label}: pruned the wrong number of weights"
    assert int(grown.sum()) == expected, f"{label}: grew the wrong number of weights"
    assert not bool((grown & mask).any()), f"{label}: grew a position that was active"


@st.composite
def _layer_shapes(draw) -> tuple[int, ...]:
    out = draw(st.integers(2, 8))  # at least two positions: one active, one not
    fan_in = draw(st.integers(1, 6))
    if draw(st.booleans()):
        k = draw(st.sampled_from([1, 3]))
        return (out, fan_in, k, k)
    return (out, fan_in)


def _tensor(draw, shape: tuple[int, ...], seed_name: str) -> torch.Tensor:
    seed = draw(st.integers(0, 2**16), label=seed_name)
    scale = draw(st.sampled_from([1e-4, 1.0, 50.0]))
    t = torch.randn(shape, generator=_seeded(seed)) * scale
    zeros = draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]))  # ties, e.g. freshly grown weights
    if zeros:
        t[torch.rand(shape, generator=_seeded(seed + 1)) < zeros] = 0.0
    return t


# ------------------------------------------------------------------------------------ criteria


def check_pruning_criterion(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 25
) -> None:
    """``scores(weight, grad)``: the weight's shape, finite, inputs untouched, for a client's
    gradient and for the server's ``grad=None``; `fedprune.masks.prune_and_grow` and
    `fedprune.masks.keep_top` on them keep masks boolean and hit the requested counts."""
    label = _label(component)

    @_settings(max_examples)
    @given(data=st.data())
    def run(data) -> None:
        criterion = _build(component, options, PruningCriterion)
        shape = data.draw(_layer_shapes(), label="shape")
        weight = _tensor(data.draw, shape, "weight seed")
        grad = _tensor(data.draw, shape, "grad seed") if data.draw(st.booleans()) else None
        numel = weight.numel()
        active = data.draw(st.integers(1, numel - 1), label="active")
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=_seeded(active))[:active]] = True
        mask = mask.view(shape)
        k = data.draw(st.integers(0, min(active, numel - active)), label="k")
        w0, g0 = weight.clone(), None if grad is None else grad.clone()
        scores = criterion.scores(weight, grad)
        where = "scores(weight, None)" if grad is None else "scores(weight, grad)"
        _assert_scores(label, scores, weight, where)
        assert torch.equal(weight, w0), f"{label}: {where} modified the weight in place"
        assert grad is None or g0 is None or torch.equal(grad, g0), (
            f"{label}: {where} modified the gradient")
        _assert_prune_and_grow(label, mask, scores, torch.randn(shape, generator=_seeded(k)), k)
        kept = M.keep_top(scores, mask, active)
        assert kept.dtype == torch.bool and int(kept.sum()) == active, f"{label}: keep_top count"

    with one_thread():
        run()


def check_growth_criterion(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 8
) -> None:
    """Driven like local training: ``begin(params)``, ``after_backward(params)`` after each step
    (when it ``observes_training``), then ``scores(weights, grads)`` with the engine's growth
    gradients (and with ``grads={}`` where ``uses_gradient`` is False): one finite tensor per
    layer, shaped like its weight; prune-and-grow on them grows only inactive positions and keeps
    each layer's count."""
    label = _label(component)

    @_settings(max_examples, shrink=False)
    @given(
        seed=st.integers(0, 2**16),
        width=st.integers(2, 4),
        density=st.sampled_from([0.1, 0.3, 0.5, 0.9]),
        steps=st.integers(1, 3),
        fraction=st.sampled_from([0.05, 0.2, 0.5]),
    )
    def run(seed, width, density, steps, fraction) -> None:
        growth = _build(component, options, GrowthCriterion)
        uses_gradient = growth.uses_gradient
        assert isinstance(uses_gradient, bool), f"{label}: uses_gradient must be a bool"
        assert isinstance(growth.observes_training, bool), (
            f"{label}: observes_training must be a bool")
        model = _tiny_model(seed, width)
        masks = _model_masks(model, density, seed)
        params = dict(model.named_parameters())
        prunable = M.prunable_parameters(model)
        M.apply_masks(params, masks)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        generator = _seeded(seed)
        growth.load_client_state({})
        growth.begin(params)
        for _ in range(steps):
            x, y = torch.randn(4, 3, 8, 8, generator=generator), torch.randint(3, (4,))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if growth.observes_training:
                growth.after_backward(params)
            M.mask_gradients(params, masks)
            optimizer.step()
            M.apply_masks(params, masks)
        x, y = torch.randn(4, 3, 8, 8, generator=generator), torch.randint(3, (4,))
        grads = growth_gradients(model, prunable, x, y)
        weights = {n: params[n].detach() for n in masks}
        counts = M.adjustment_counts(masks, fraction)
        # Client-side adjustment always passes gradients; server-side only if it uses them.
        for given_grads in [grads] if uses_gradient else [grads, {}]:
            scores = growth.scores(weights, given_grads)
            missing = sorted(set(weights) - set(scores))
            assert not missing, f"{label}: scores() has no entry for {', '.join(missing)}"
            for name, mask in masks.items():
                _assert_scores(label, scores[name], weights[name], f"scores()[{name!r}]")
                _assert_prune_and_grow(
                    label, mask, weights[name].abs(), scores[name], counts[name]
                )

    with one_thread():
        run()


# ---------------------------------------------------------------------------------- model parts


def _named(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, id(p)) for name, p in model.named_parameters()]


def check_activation_compressor(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 6
) -> None:
    """Applied to a tiny conv model: parameters keep their identity and names, the forward output
    is unchanged (training and evaluation), the gradient w.r.t. the input equals the uncompressed
    model's (a compressor may approximate weight gradients, never input ones), every weight
    gradient has at least the cosine similarity to the exact one that the component declares
    (``min_weight_grad_cosine``); and on single layers (conv, linear, ReLU, ReLU6, Hardtanh)
    autograd never saves more bytes than without the compressor and, unless it declares
    ``saves_memory = False``, fewer for at least one of them."""
    label = _label(component)

    @_settings(max_examples, shrink=False)
    @given(
        seed=st.integers(0, 2**16),
        width=st.integers(2, 4),
        batch=st.integers(1, 4),
        scale=st.sampled_from([1e-2, 1.0, 10.0]),
    )
    def run(seed, width, batch, scale) -> None:
        compressor = _build(component, options, ActivationCompressor)
        model = _tiny_model(seed, width)
        reference = copy.deepcopy(model)
        before = _named(model)
        compressor.apply(model)
        assert _named(model) == before, f"{label}: apply() replaced or renamed parameters"
        generator = _seeded(seed)
        x = torch.randn(batch, 3, 8, 8, generator=generator) * scale
        upstream = torch.randn(batch, 3, generator=generator)
        x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out_new = reference(x_ref), model(x_new)
        torch.testing.assert_close(out_new, out_ref, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{label}: forward output changed: {m}")
        (out_ref * upstream).sum().backward()
        (out_new * upstream).sum().backward()
        torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{label}: input gradient changed: {m}")
        bound = compressor.min_weight_grad_cosine
        exact = dict(reference.named_parameters())
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{label}: no gradient for {name}"
            assert bool(torch.isfinite(p.grad).all()), f"{label}: gradient of {name} not finite"
            want = exact[name].grad
            if p.dim() > 1 and want is not None and float(want.norm()) > 1e-6:
                cosine = float(F.cosine_similarity(p.grad.flatten(), want.flatten(), dim=0))
                assert cosine >= bound, (
                    f"{label}: the gradient of {name} has cosine similarity {cosine:.3f} to the "
                    f"exact one, below the declared min_weight_grad_cosine {bound}"
                )
        model.eval()
        reference.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{label}: evaluation output changed: {m}")
        _assert_saves_per_layer(label, compressor, seed)

    with one_thread():
        run()


def _single_layers() -> list[nn.Sequential]:
    return [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), nn.Sequential(nn.Flatten(), nn.Linear(
        192, 5)), nn.Sequential(nn.ReLU()), nn.Sequential(nn.ReLU6()), nn.Sequential(nn.Hardtanh())]


def _assert_saves_per_layer(label: str, compressor: ActivationCompressor, seed: int) -> None:
    """Saved bytes per single layer: never more with the compressor; fewer somewhere."""
    fewer = False
    for index, layer in enumerate(_single_layers()):
        compressed = copy.deepcopy(layer)
        compressor.apply(compressed)
        x = torch.randn(4, 3, 8, 8, generator=_seeded(seed + index)).requires_grad_()
        sizes = []
        for model in (layer, compressed):
            with SavedTensorMeter(model) as meter:
                model(x)
            sizes.append(meter.bytes)
        assert sizes[1] <= sizes[0], (
            f"{label}: {type(layer[-1]).__name__} saves {sizes[1]} bytes for backward with the "
            f"compressor, {sizes[0]} without: it costs memory"
        )
        fewer = fewer or sizes[1] < sizes[0]
    assert fewer or not compressor.saves_memory, (
        f"{label}: no layer saves fewer bytes with the compressor; declare "
        "saves_memory = False if it is not meant to"
    )


def check_model_transform(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 6
) -> None:
    """Applied to a tiny conv model: every prunable weight keeps its name and its `Parameter`
    object (so all methods start from the same weights), and the model trains with masks bound
    to modules that declare ``weight_mask``."""
    label = _label(component)

    @_settings(max_examples, shrink=False)
    @given(seed=st.integers(0, 2**16), width=st.integers(2, 4),
           density=st.sampled_from([0.2, 0.5, 1.0]))
    def run(seed, width, density) -> None:
        transform = _build(component, options, ModelTransform)
        model = _tiny_model(seed, width)
        weights = {n: m.weight for n, m in M.prunable_parameters(model).items()}
        transform.apply(model)
        after = {n: m.weight for n, m in M.prunable_parameters(model).items()}
        assert set(after) == set(weights), f"{label}: the prunable weights changed names"
        for name, weight in weights.items():
            assert after[name] is weight, f"{label}: {name} is a new Parameter"
        masks = _model_masks(model, density, seed)
        M.apply_masks(dict(model.named_parameters()), masks)
        bind_masks(model, masks)
        x = torch.randn(2, 3, 8, 8, generator=_seeded(seed))
        out = model(x)
        assert out.shape == (2, 3), f"{label}: output shape {tuple(out.shape)}"
        out.sum().backward()
        for name, weight in weights.items():
            assert weight.grad is not None, f"{label}: no gradient for {name}"
            assert bool(torch.isfinite(weight.grad).all()), f"{label}: {name} grad not finite"

    with one_thread():
        run()


def check_regularizer(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 8
) -> None:
    """In training and adjustment rounds alike: ``begin(ctx)``, then per step a
    ``penalty(model)`` that is None or a finite scalar tensor differentiable w.r.t. the
    parameters, and ``learning_rate(step, total_steps, lr, lr0)`` finite and >= 0; ``end(ctx)``
    returns finite float metrics."""
    label = _label(component)

    @_settings(max_examples, shrink=False)
    @given(
        seed=st.integers(0, 2**16),
        density=st.sampled_from([0.2, 0.5, 1.0]),
        adjusting=st.booleans(),
        steps=st.integers(1, 3),
        round_=st.integers(1, 50),
    )
    def run(seed, density, adjusting, steps, round_) -> None:
        regularizer = _build(component, options, Regularizer)
        model = _tiny_model(seed)
        masks = _model_masks(model, density, seed)
        params = dict(model.named_parameters())
        M.apply_masks(params, masks)
        counts = M.adjustment_counts(masks, 0.2) if adjusting else {}
        ctx = _client_context(model, masks, RoundPlan(round_, counts), steps)
        regularizer.begin(ctx)
        generator = _seeded(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(steps):
            lr = regularizer.learning_rate(step, steps, 0.05, 0.1)
            assert math.isfinite(lr) and lr >= 0, f"{label}: learning rate {lr!r}"
            x = torch.randn(4, 3, 8, 8, generator=generator)
            loss = F.cross_entropy(model(x), torch.randint(3, (4,), generator=generator))
            penalty = regularizer.penalty(model)
            optimizer.zero_grad()
            if penalty is None:
                loss.backward()
            else:
                _assert_penalty(label, penalty, params)
                (loss + penalty).backward()
            M.mask_gradients(params, masks)
            optimizer.step()
            M.apply_masks(params, masks)
        metrics = regularizer.end(ctx)
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (
            f"{label}: end() metrics must be finite floats, got {metrics!r}")

    with one_thread():
        run()


class _Magnitude(PruningCriterion):
    def scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return weight.abs()


def _client_context(
    model: nn.Module, masks: dict[str, torch.Tensor], plan: RoundPlan, steps: int
) -> ClientContext:
    """A client's context as the engine builds it, on random data, with a magnitude criterion."""
    parts = MethodParts(Method("check"), MethodSettings(), {"pruning_criterion": _Magnitude()})
    generator = _seeded(0)

    def gradient_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 3, 8, 8, generator=generator), torch.randint(3, (4,))

    return ClientContext(
        model=model, params=dict(model.named_parameters()),
        prunable=M.prunable_parameters(model), masks=masks, plan=plan, client=0, samples=16,
        total_steps=steps, lr=0.05, lr0=0.1, parts=parts, config=tiny_config(),
        gradient_batch=gradient_batch,
    )


def _assert_penalty(label: str, penalty: Any, params: dict[str, nn.Parameter]) -> None:
    assert isinstance(penalty, torch.Tensor) and penalty.dim() == 0, (
        f"{label}: penalty must be a scalar tensor or None, got {penalty!r}"
    )
    assert bool(torch.isfinite(penalty)), f"{label}: penalty is not finite"
    assert penalty.requires_grad, (
        f"{label}: penalty does not depend on the parameters; return None instead"
    )
    grads = torch.autograd.grad(
        penalty, list(params.values()), allow_unused=True, retain_graph=True
    )
    present = [g for g in grads if g is not None]
    assert present, f"{label}: penalty has no gradient w.r.t. any parameter"
    assert all(bool(torch.isfinite(g).all()) for g in present), (
        f"{label}: penalty gradient is not finite"
    )


def check_schedule(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 50
) -> None:
    """``fraction(round, total_rounds)`` is a float in [0, 1] for every round, and the same
    every time it is asked."""
    label = _label(component)

    @_settings(max_examples)
    @given(total=st.integers(1, 1000), data=st.data())
    def run(total, data) -> None:
        schedule = _build(component, options, Schedule)
        rounds = data.draw(st.lists(st.integers(1, total), min_size=1, max_size=20))
        for r in rounds:
            f = schedule.fraction(r, total)
            assert isinstance(f, (float, int)) and not isinstance(f, bool), (
                f"{label}: fraction({r}, {total}) is {type(f).__name__}, not a float"
            )
            assert 0.0 <= f <= 1.0, f"{label}: fraction({r}, {total}) = {f}, outside [0, 1]"
            assert schedule.fraction(r, total) == f, f"{label}: fraction() is not repeatable"

    with one_thread():
        run()


def check_mask_policy(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 3
) -> None:
    """``initial_client(...)`` and, when it names a client, ``initial(...)`` on that client's
    digits data, and ``update(...)`` return boolean masks for exactly the given layers, shaped
    like them."""
    from fedprune.data.digits import load_digits

    label = _label(component)
    data = load_digits()
    config = tiny_config()

    def assert_masks(masks, like, what):
        assert set(masks) == set(like), f"{label}: {what} returned other layers"
        for name, mask in masks.items():
            assert mask.dtype == torch.bool and mask.shape == like[name].shape, (
                f"{label}: {what} mask {name!r} is not a bool tensor of the layer's shape"
            )

    @_settings(max_examples, shrink=False)
    @given(seed=st.integers(0, 2**16), density=st.sampled_from([0.2, 0.5]),
           fraction=st.sampled_from([0.1, 0.3]), round_=st.integers(1, 20))
    def run(seed, density, fraction, round_) -> None:
        from fedprune.models.cnn import SmallCNN

        policy = _build(component, options, MaskPolicy)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SmallCNN(data.num_classes, data.input_shape, 4)
        masks = _model_masks(model, density, seed)
        params = dict(model.named_parameters())
        M.apply_masks(params, masks)
        rng = np.random.default_rng(seed)
        clients = np.array_split(rng.permutation(len(data.train)), 4)
        generator = _seeded(seed)
        chosen = policy.initial_client([len(c) for c in clients], config, generator)
        if chosen is not None:
            assert 0 <= chosen < len(clients), f"{label}: initial_client() chose {chosen!r}"
            before = masks
            masks = policy.initial(model, masks, data.train, clients[chosen], config, generator)
            assert_masks(masks, before, "initial()")
            M.apply_masks(params, masks)
        weights = {n: params[n].detach() for n in masks}
        scores = {n: torch.randn(w.shape, generator=_seeded(seed)) for n, w in weights.items()}
        counts = M.adjustment_counts(masks, fraction)
        new = policy.update(masks, weights, scores, counts, round_, 20)
        assert_masks(new, weights, "update()")

    with one_thread():
        run()


# ------------------------------------------------------------------------- models and partitions


def check_model(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 3
) -> None:
    """``factory(num_classes, input_shape)`` gives logits ``(batch, num_classes)`` with
    gradients, and the same weights for the same torch seed (methods share initial weights)."""
    label = _label(component)

    def build(classes, shape, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if isinstance(component, Component):
                return component.build(num_classes=classes, input_shape=shape, **(options or {}))
            return component(num_classes=classes, input_shape=shape, **(options or {}))

    @_settings(max_examples, shrink=False)
    @given(seed=st.integers(0, 2**16), classes=st.integers(2, 10),
           channels=st.sampled_from([1, 3]), size=st.sampled_from([8, 16]))
    def run(seed, classes, channels, size) -> None:
        model = build(classes, (channels, size, size), seed)
        out = model(torch.randn(2, channels, size, size, generator=_seeded(seed)))
        assert out.shape == (2, classes), f"{label}: output shape {tuple(out.shape)}"
        out.sum().backward()
        assert M.prunable_parameters(model), f"{label}: no conv or linear layer to prune"

    with one_thread():
        one, two = build(10, (3, 8, 8), 0), build(10, (3, 8, 8), 0)
        for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(),
                                     strict=True):
            assert torch.equal(a, b), f"{label}: {name} differs between two builds, same seed"
        run()


def check_partitioner(
    component: Any, options: Mapping[str, Any] | None = None, *, max_examples: int = 15
) -> None:
    """``split(labels, num_clients, generator)``: one index array per client, every sample in
    exactly one client, and the same split for the same generator seed."""
    label = _label(component)

    @_settings(max_examples)
    @given(seed=st.integers(0, 2**16), classes=st.integers(2, 10),
           per_class=st.integers(50, 100), clients=st.integers(1, 4))
    def run(seed, classes, per_class, clients) -> None:
        partitioner = _build(component, options, Partitioner)
        labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))
        parts = partitioner.split(labels, clients, np.random.default_rng(seed))
        assert len(parts) == clients, f"{label}: {len(parts)} parts for {clients} clients"
        joined = np.sort(np.concatenate([np.asarray(p) for p in parts]))
        assert np.array_equal(joined, np.arange(len(labels))), (
            f"{label}: not every sample is in exactly one client"
        )
        again = partitioner.split(labels, clients, np.random.default_rng(seed))
        assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True)), (
            f"{label}: the split is not determined by the generator"
        )

    with one_thread():
        run()


def check_strategy(
    component: Any, options: Mapping[str, Any] | None = None, *, pm: PluginManager | None = None,
    tmp: Path | None = None,
) -> None:
    """In a method that fills every slot the strategy ``uses`` (magnitude, gradient, cosine
    adjusting every round), the strategy runs a tiny federation to the end, reproducibly
    (`check_method`), and a fixed-size strategy never lets a layer exceed its target count."""
    import tempfile

    label = _label(component)
    pm = pm or host_plugin_manager()
    if isinstance(component, Component) and pm.registry.find(component.name) is component:
        name = component.name
    else:
        name = "checked_strategy"
        record = Component(name, component.factory if isinstance(component, Component)
                           else component, "strategy under check")

        class _Plugin:
            @hookimpl
            def fedprune_strategies(self):
                return [record]

        register_plugin(pm, _Plugin(), name=f"check-strategy-{id(record)}")
    strategy = pm.registry.get(name, "strategy").build(**dict(options or {}))
    defaults = {"pruning_criterion": "magnitude", "growth_criterion": "gradient",
                "schedule": "cosine"}
    slots = {slot: value for slot, value in defaults.items() if slot in strategy.uses}
    method = Method(f"check_{name}", "strategy under check",
                    options={f"{name}.{k}": v for k, v in (options or {}).items()},
                    parts={"strategy": name, **slots})

    class _Recipe:
        @hookimpl
        def fedprune_methods(self):
            return [method]

    register_plugin(pm, _Recipe(), name=f"check-recipe-{id(method)}")
    with tempfile.TemporaryDirectory() if tmp is None else contextlib.nullcontext(
            str(tmp)) as root:
        result = check_method(method.name, TinyFederation(pm, Path(root)))
    if strategy.fixed_size:
        assert result["density"] <= tiny_config().density + 0.02, (
            f"{label}: a fixed-size strategy ended at density {result['density']:.3f}")


def _check_for(kind: str) -> Callable[..., None] | None:
    return globals().get(f"check_{kind}")


#: Kind -> contract check, for every kind in `fedprune.registry.KINDS` that has one (datasets
#: are tested by their own plugins; methods with `check_method`).
CHECKS: dict[str, Callable[..., None]] = {
    kind.name: check for kind in KINDS if kind.name != "method"
    if (check := _check_for(kind.name)) is not None
}


def check_component(
    pm: PluginManager, name: str, options: Mapping[str, Any] | None = None, **kwargs: Any
) -> None:
    """Run the contract check for the registered component ``name``, whatever its kind."""
    kinds = [k for k in CHECKS if name in pm.registry.names(k)]
    if not kinds:
        others = "a method: use check_method" if name in pm.registry.names("method") else (
            "not registered, or of a kind without a contract check"
        )
        raise FedpruneError(f"{name!r} is {others}")
    record = pm.registry.get(name, kinds[0])
    if kinds[0] == "strategy":
        kwargs.setdefault("pm", pm)
    CHECKS[kinds[0]](record, options, **kwargs)
