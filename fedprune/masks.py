"""Sparse-training primitives: which weights are prunable, layer densities, masks, prune and grow.

A mask set is a plain ``dict[name, BoolTensor]`` keyed by ``model.named_parameters()`` names, one
bool tensor shaped like its parameter. Functions here are pure where they can be, so property
tests can drive them directly; the engine and the method plugins compose them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from fedprune.errors import FedpruneError

Masks = dict[str, torch.Tensor]


Prunable = nn.Conv2d | nn.Linear


def prunable_parameters(model: nn.Module, prune_classifier: bool = False) -> dict[str, Prunable]:
    """Names of conv and linear weights, mapped to their module.

    Biases, normalisation parameters and gains are never prunable. The classifier (the last
    linear layer) stays dense unless ``prune_classifier``: FedMef-era comparisons leave it dense.
    """
    found = {
        f"{name}.weight" if name else "weight": module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight is not None
    }
    if not prune_classifier:
        linears = [n for n, m in found.items() if isinstance(m, nn.Linear)]
        if linears:
            del found[linears[-1]]
    return found


# ------------------------------------------------------------------------------ layer densities


def uniform_densities(shapes: Mapping[str, torch.Size], density: float) -> dict[str, float]:
    """Every layer at ``density``."""
    _check_density(density)
    return {name: density for name in shapes}


def erk_densities(shapes: Mapping[str, torch.Size], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (RigL): d_l proportional to sum(shape_l) / prod(shape_l).

    The scale is solved so the overall density is ``density``; a layer whose density would exceed
    1 is made dense and the scale solved again for the rest.
    """
    _check_density(density)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    dense: set[str] = set()
    total = sum(numel.values())
    while True:
        budget = density * total - sum(numel[n] for n in dense)
        weight = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        if weight == 0:
            break
        eps = budget / weight
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1]
        if not over:
            break
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


DISTRIBUTIONS = {"uniform": uniform_densities, "erk": erk_densities}


def target_counts(
    shapes: Mapping[str, torch.Size], densities: Mapping[str, float]
) -> dict[str, int]:
    """Active weights per layer: round(density * numel), at least one."""
    return {
        n: max(1, min(math.prod(s), round(densities[n] * math.prod(s))))
        for n, s in shapes.items()
    }


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise FedpruneError(f"density must be in (0, 1], got {density}")


# ----------------------------------------------------------------------------------- mask making


def random_masks(
    shapes: Mapping[str, torch.Size], counts: Mapping[str, int], generator: torch.Generator
) -> Masks:
    """Uniformly random positions, ``counts[name]`` per layer."""
    out = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        keep = torch.randperm(numel, generator=generator)[: counts[name]]
        out[name] = _from_indices(keep, shape)
    return out


def top_masks(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Masks:
    """The ``counts[name]`` highest scores per layer (e.g. magnitude of the initialisation)."""
    return {
        name: _from_indices(torch.topk(s.flatten(), counts[name], sorted=False).indices, s.shape)
        for name, s in scores.items()
    }


def _from_indices(indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    mask[indices] = True
    return mask.view(shape)


# ---------------------------------------------------------------------------------- enforcement


def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place (exactly, even where a weight is inf or nan)."""
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(~mask, 0)


def mask_gradients(params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradient of every masked-out weight, so the optimizer cannot move it."""
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.masked_fill_(~mask, 0)


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter], changed: Masks
) -> None:
    """Zero every optimizer state tensor (e.g. momentum) at the ``changed`` positions."""
    for name, where in changed.items():
        state = optimizer.state.get(params[name], {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == where.shape:
                value.masked_fill_(where, 0)


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of active entries over all masked parameters."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


# -------------------------------------------------------------------------------- prune and grow


def _ranked(scores: torch.Tensor, worst: float) -> torch.Tensor:
    """Flat scores in a floating dtype of their own precision, non-finite ones set to ``worst``
    (a diverged run's NaN must never win a place in the mask)."""
    flat = scores.flatten()
    if not flat.is_floating_point():
        flat = flat.double()
    return torch.where(torch.isfinite(flat), flat, torch.full_like(flat, worst))


def prune_and_grow(
    mask: torch.Tensor,
    prune_scores: torch.Tensor,
    grow_scores: torch.Tensor,
    k: int,
    regrow_pruned: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the ``k`` lowest-scoring active positions and grow ``k`` positions of largest
    ``|grow_scores|`` (signed scores such as aggregated gradients rank by magnitude).

    Growth candidates are the positions inactive before pruning, so prune and grow sets are
    disjoint, or with ``regrow_pruned`` every position inactive after pruning (RigL: a weight
    just dropped may come straight back). Either way the count of active weights is unchanged.
    Non-finite scores are pruned first and grown last. Returns (new mask, grown positions).
    """
    flat = mask.flatten()
    k = min(k, int(flat.sum()), int((~flat).sum()))
    if k <= 0:
        return mask.clone(), torch.zeros_like(mask)
    inf = math.inf
    prune = _ranked(prune_scores, -inf)
    drop = torch.topk(torch.where(flat, prune, torch.full_like(prune, inf)), k, largest=False)
    new = flat.clone()
    new[drop.indices] = False
    grow = _ranked(grow_scores.abs(), -1.0)
    candidates = ~new if regrow_pruned else ~flat
    top = torch.topk(torch.where(candidates, grow, torch.full_like(grow, -inf)), k)
    new[top.indices] = True
    grown = new & ~flat
    return new.view_as(mask), grown.view_as(mask)


def top_indices(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` largest ``|scores|`` among the ``allowed`` positions (fewer if
    fewer are allowed); non-finite scores rank last, positions not allowed never appear."""
    flat = _ranked(scores.abs(), -1.0)
    flat = torch.where(allowed.flatten(), flat, torch.full_like(flat, -math.inf))
    k = min(k, int(allowed.sum()))
    return torch.topk(flat, k).indices if k > 0 else flat.new_zeros(0, dtype=torch.long)


def top_mask(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """`top_indices` as a bool tensor shaped like ``scores``: what a top-k upload sends."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[top_indices(scores, allowed, k)] = True
    return out.view(scores.shape)


def adjustment_counts(masks: Mapping[str, torch.Tensor], fraction: float) -> dict[str, int]:
    """k_l = ceil(fraction * active_l) per layer (RigL's drop count)."""
    return {n: math.ceil(fraction * int(m.sum())) for n, m in masks.items()}


def keep_top(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    count: int,
    tiebreak: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``count`` best positions: candidates first, then by score, then by ``tiebreak``.

    Re-pruning a voted mask back to its target: candidates (voted positions) rank above the
    rest, so when fewer than ``count`` were voted for, the target is still met exactly. Ties in
    score (e.g. freshly grown weights, all exactly 0) are broken by ``tiebreak`` (e.g. votes).
    """
    order = torch.arange(candidates.numel())
    keys = [k for k in (tiebreak, scores, candidates) if k is not None]  # least significant first
    for key in keys:
        ranked = _ranked(key, -math.inf)[order]
        order = order[torch.argsort(ranked, stable=True, descending=True)]
    return _from_indices(order[:count], candidates.shape)


def changed_positions(old: Masks, new: Masks) -> Masks:
    """Positions active in ``new`` but not in ``old`` (grown), per layer."""
    return {n: new[n] & ~old[n] for n in new}
