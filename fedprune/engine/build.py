"""From names to objects: a method's parts, the model it trains and its initial masks.

Every method of a bench starts from a deep copy of one base model built from the seed, so the
initial weights are identical across methods; transforms and compressors then change the copy
in place, reusing its parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedprune import masks as M
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.registry import Method, Registry
from fedprune.seeding import torch_generator


@dataclass
class MethodParts:
    """A method with each slot's component built from its options."""

    method: Method
    settings: MethodSettings
    pruning: Any = None
    growth: Any = None
    regularizer: Any = None
    schedule: Any = None
    policy: Any = None
    transforms: list[Any] = field(default_factory=list)
    compressors: list[Any] = field(default_factory=list)


def method_options(method: Method, config: RunConfig) -> dict[str, Any]:
    """The recipe's option defaults overridden by the run's options."""
    return {**method.options, **config.options}


def build_parts(registry: Registry, method: Method, config: RunConfig) -> MethodParts:
    options = method_options(method, config)

    def build(name: str | None, kind: str) -> Any:
        if name is None:
            return None
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in options.items() if k.startswith(prefix)}
        return registry.get(name, kind).build(**own)

    settings = MethodSettings.from_options({k: v for k, v in options.items() if "." not in k})
    return MethodParts(
        method=method,
        settings=settings,
        pruning=build(method.pruning_criterion, "pruning_criterion"),
        growth=build(method.growth_criterion, "growth_criterion"),
        regularizer=build(method.regularizer, "regularizer"),
        schedule=build(method.schedule, "schedule"),
        policy=build(method.mask_policy, "mask_policy"),
        transforms=[build(n, "model_transform") for n in method.model_transforms],
        compressors=[build(n, "activation_compressor") for n in method.activation_compressors],
    )


def build_base_model(
    registry: Registry, config: RunConfig, num_classes: int, input_shape: tuple, seed: int
) -> nn.Module:
    """The model every method of this seed starts from, initialised from the seed alone."""
    component = registry.get(config.model, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_generator(seed, "model-init").initial_seed())
        return component.build(
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            **config.component_options(config.model),
        )


def method_model(base: nn.Module, parts: MethodParts) -> nn.Module:
    """A copy of ``base`` with the method's transforms, then compressors, applied."""
    model = copy.deepcopy(base)
    for part in (*parts.transforms, *parts.compressors):
        part.apply(model)
    return model


def initial_masks(
    model: nn.Module, parts: MethodParts, density: float, seed: int
) -> dict[str, torch.Tensor] | None:
    """Masks at ``density`` over the prunable weights (None for dense methods)."""
    if not parts.method.sparse:
        return None
    prunable = M.prunable_parameters(model, parts.settings.prune_classifier)
    shapes = {name: module.weight.shape for name, module in prunable.items()}
    densities = M.DISTRIBUTIONS[parts.settings.distribution](shapes, density)
    counts = M.target_counts(shapes, densities)
    if parts.settings.init == "magnitude":
        return M.top_masks({n: m.weight.detach().abs() for n, m in prunable.items()}, counts)
    return M.random_masks(shapes, counts, torch_generator(seed, "initial-mask"))


def bind_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Give modules that declare ``weight_mask`` their current mask (None: dense)."""
    for name, module in model.named_modules():
        if hasattr(module, "weight_mask"):
            key = f"{name}.weight" if name else "weight"
            module.weight_mask = masks.get(key) if masks else None
