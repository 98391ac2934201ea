"""PruneFL (Jiang et al., TNNLS'22, arXiv 1909.12326): both variants of the paper.

``prunefl`` (default, for comparisons at equal density) is the fixed-density variant that
FedMef-era benchmarks use: random ERK mask at ``--density``; in adjustment rounds clients
accumulate squared gradients over their local steps (``sqgrad``, a separate buffer) and upload
them dense; the server prunes the k_l smallest-magnitude active weights of each layer and grows
the k_l inactive positions of largest importance g^2 / t (t: per-parameter cost, 1 without a
device profile), so every layer keeps its size.

``prunefl+prunefl_adaptive`` is the paper's original algorithm, where the model size is chosen
by an objective, not by ``--density``. The variant is a mask-policy component mixed into the
recipe (``A+B`` puts B into its kind's slot), which is how fedprune exposes a method's option:

1. Initial pruning on the server with a small sample (200 examples) of one client: starting
   from the dense model, repeat {a few SGD steps with a fresh optimizer, squared gradients
   accumulated in a separate buffer; reconfigure} until the density changes by less than 10%
   across 5 reconfigurations (at most ``init_max_reconfigs``). The trained weights are kept, as
   the selected client's pruned model is what the paper's FL starts from.
2. In every adjustment round of the schedule (the cosine schedule only says *when*; d_t and the
   objective say how much), reconfigure with the clients' averaged accumulated squared
   gradients Z.

A reconfiguration keeps, per layer, the top (1 - d_t) of the active weights by magnitude,
d_t = prune_rate * 0.5^(t / half_life) (paper: 0.3 and 10,000 iterations; t counts local SGD
steps, i.e. round x local steps per round, or rounds with ``unit="round"``). Then every other
position (just dropped or inactive, all layers together) is a candidate, added in descending
Z_j / t_j while that ratio exceeds the objective sum(Z) / (T0 + sum t) of the current set
(kept plus added so far): adding j raises the objective exactly when Z_j / t_j exceeds it,
so this greedy order maximises it. Re-added weights keep their value; new ones start at 0.

Costs: ``cost`` is t_j for every weight, ``layer_cost`` overrides it per layer (the paper
profiles them per device); ``t0`` is the fixed per-round time T0 as a multiple of the dense
prunable model's total cost sum_j t_j, so it does not depend on the model size (default 0.1:
fedprune's choice, the paper measures T0 per device). Leave
``sqgrad.cost`` at 1 with this policy: the policy divides by t_j itself and needs raw g^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

import fedprune
from fedprune import masks as M
from fedprune.engine.training import data_batches, local_steps, sgd_steps
from fedprune.errors import FedpruneError
from fedprune.options import as_bool


def reconfigure(
    masks: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    importance: Mapping[str, torch.Tensor],
    prune_rate: float,
    costs: Mapping[str, float],
    fixed_cost: float,
) -> dict[str, torch.Tensor]:
    """One PruneFL reconfiguration: magnitude prune, then objective-driven additions.

    Per layer the ceil(prune_rate * active) smallest-magnitude active weights are dropped (a
    non-empty layer keeps at least one); then candidates from all layers are added in
    descending importance / cost while that ratio exceeds sum(importance) / (fixed_cost +
    sum(cost)) of the current set. Ties are broken by position, so the result is deterministic.
    """
    kept = {}
    for name, mask in masks.items():
        active = int(mask.sum())
        keep = max(1, active - math.ceil(prune_rate * active)) if active else 0
        kept[name] = M.keep_top(weights[name].detach().abs().cpu(), mask.cpu(), keep)

    names = list(masks)
    z_kept = sum(float(importance[n].double().cpu()[kept[n]].sum()) for n in names)
    t_kept = fixed_cost + sum(costs[n] * int(kept[n].sum()) for n in names)
    z = torch.cat([importance[n].detach().double().cpu().flatten() for n in names])
    t = torch.cat([torch.full((masks[n].numel(),), float(costs[n]), dtype=torch.float64)
                   for n in names])
    free = ~torch.cat([kept[n].flatten() for n in names])
    position = torch.nonzero(free).flatten()
    order = position[torch.argsort(z[position] / t[position], descending=True, stable=True)]
    z_sorted, t_sorted = z[order], t[order]
    # The objective before candidate i is added: the kept set plus every earlier candidate.
    z_before = z_kept + torch.cumsum(z_sorted, 0) - z_sorted
    t_before = t_kept + torch.cumsum(t_sorted, 0) - t_sorted
    # ratio_i > objective, without dividing (an empty, free set has objective 0)
    gains = torch.where(t_before > 0, z_sorted * t_before > t_sorted * z_before, z_sorted > 0)
    stop = int(torch.nonzero(~gains)[0]) if not bool(gains.all()) else len(order)
    chosen = torch.cat([kept[n].flatten() for n in names])
    chosen[order[:stop]] = True

    out, offset = {}, 0
    for name in names:
        size = masks[name].numel()
        out[name] = chosen[offset : offset + size].view(masks[name].shape).to(masks[name].device)
        offset += size
    return out


def objective(
    masks: Mapping[str, torch.Tensor],
    importance: Mapping[str, torch.Tensor],
    costs: Mapping[str, float],
    fixed_cost: float,
) -> float:
    """PruneFL's objective of a mask set: sum(Z) / (T0 + sum(t)) over its active positions."""
    z = sum(float(importance[n].double()[m].sum()) for n, m in masks.items())
    t = fixed_cost + sum(costs[n] * int(m.sum()) for n, m in masks.items())
    return z / t if t > 0 else 0.0


class AdaptivePruneFL(fedprune.MaskPolicy):
    """PruneFL's original algorithm as a mask policy: the objective chooses the model size.

    ``history`` records (round, density) after every reconfiguration (round 0: initial pruning);
    ``init_densities`` the density before and after each reconfiguration of initial pruning.
    """

    def __init__(
        self,
        prune_rate: float = 0.3,
        half_life: float = 10000.0,
        unit: str = "step",
        t0: float = 0.1,
        cost: float = 1.0,
        layer_cost: Mapping[str, float] | None = None,
        start: str = "dense",
        init_samples: int = 200,
        init_steps: int = 5,
        init_window: int = 5,
        init_tolerance: float = 0.1,
        init_max_reconfigs: int = 30,
        init_client: int | None = None,
        keep_init_weights: bool = True,
    ) -> None:
        if not 0 <= prune_rate < 1:
            raise FedpruneError(f"prunefl_adaptive.prune_rate must be in [0, 1), got {prune_rate}")
        if half_life <= 0 or t0 < 0 or cost <= 0:
            raise FedpruneError("prunefl_adaptive needs half_life > 0, t0 >= 0 and cost > 0")
        if any(float(c) <= 0 for c in (layer_cost or {}).values()):
            raise FedpruneError("prunefl_adaptive.layer_cost values must be positive")
        if unit not in ("step", "round"):
            raise FedpruneError(f"prunefl_adaptive.unit must be step or round, not {unit!r}")
        if start not in ("dense", "mask"):
            raise FedpruneError(f"prunefl_adaptive.start must be dense or mask, not {start!r}")
        if min(init_samples, init_window, init_max_reconfigs) < 1 or init_steps < 1:
            raise FedpruneError("prunefl_adaptive init_* counts must be at least 1")
        if not 0 < init_tolerance < 1:
            raise FedpruneError("prunefl_adaptive.init_tolerance must be in (0, 1)")
        self.prune_rate, self.half_life, self.unit = prune_rate, float(half_life), unit
        self.t0, self.cost, self.layer_cost = t0, cost, dict(layer_cost or {})
        self.start = start
        self.init_samples, self.init_steps = int(init_samples), int(init_steps)
        self.init_window, self.init_tolerance = int(init_window), init_tolerance
        self.init_max_reconfigs, self.init_client = int(init_max_reconfigs), init_client
        self.keep_init_weights = as_bool(keep_init_weights, "prunefl_adaptive.keep_init_weights")
        self.steps_per_round = 1.0  # set from the run's configuration in `initial_client`
        self.history: list[tuple[int, float]] = []
        self.init_densities: list[float] = []

    # ----------------------------------------------------------------------------- the parts

    def rate(self, t: float) -> float:
        """d_t = prune_rate * 0.5^(t / half_life)."""
        return self.prune_rate * 0.5 ** (t / self.half_life)

    def costs(self, masks: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], float]:
        """Per-layer t_j and T0 (``t0`` times the dense prunable model's total cost)."""
        unknown = sorted(set(self.layer_cost) - set(masks))
        if unknown:
            raise FedpruneError(
                f"prunefl_adaptive.layer_cost names no prunable layer: {', '.join(unknown)}; "
                f"prunable layers: {', '.join(masks)}"
            )
        costs = {n: float(self.layer_cost.get(n, self.cost)) for n in masks}
        return costs, self.t0 * sum(costs[n] * m.numel() for n, m in masks.items())

    def _reconfigure(self, masks, weights, importance, t):
        costs, fixed = self.costs(masks)
        return reconfigure(masks, weights, importance, self.rate(t), costs, fixed)

    # ------------------------------------------------------------------------ policy interface

    def update(self, masks, weights, scores, counts, round, total_rounds):
        """An adjustment round: reconfigure with the clients' averaged squared gradients."""
        t = round * (self.steps_per_round if self.unit == "step" else 1.0)
        new = self._reconfigure(masks, weights, scores, t)
        self.history.append((round, M.density(new)))
        return new

    def initial_client(self, client_sizes, config, generator):
        """The client whose sample initial pruning uses: ``init_client``, else drawn."""
        self.steps_per_round = float(np.mean([local_steps(n, config) for n in client_sizes]))
        client = self.init_client
        if client is None:
            client = int(torch.randint(len(client_sizes), (1,), generator=generator))
        if not 0 <= client < len(client_sizes):
            raise FedpruneError(
                f"prunefl_adaptive.init_client must be in [0, {len(client_sizes)}), got {client}"
            )
        return client

    def initial(self, model, masks, data, indices, config, generator):
        """Initial pruning on a small sample of this client's data."""
        pool = np.asarray(indices)
        sample = pool[torch.randperm(len(pool), generator=generator)[: self.init_samples].numpy()]
        params = dict(model.named_parameters())
        saved = None if self.keep_init_weights else {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        current = {n: torch.ones_like(m) if self.start == "dense" else m.clone()
                   for n, m in masks.items()}
        M.apply_masks(params, current)
        device = next(model.parameters()).device
        densities = [M.density(current)]
        steps = 0
        model.train()
        for _ in range(self.init_max_reconfigs):
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr,
                                        momentum=config.momentum,
                                        weight_decay=config.weight_decay)
            squared = _SquaredGradients(current)
            batches = data_batches(data, sample, config.batch_size, self.init_steps, generator,
                                   device)
            steps += sgd_steps(model, params, batches, optimizer, masks=current,
                               growth=squared)[1]
            weights = {n: params[n].detach() for n in current}
            t = steps if self.unit == "step" else 0.0
            current = self._reconfigure(current, weights, squared.sums, t)
            M.apply_masks(params, current)
            densities.append(M.density(current))
            if len(densities) > self.init_window:
                before = densities[-1 - self.init_window]
                if abs(densities[-1] - before) < self.init_tolerance * before:
                    break
        model.zero_grad(set_to_none=True)
        if saved is not None:
            model.load_state_dict(saved)
            M.apply_masks(params, current)
        self.init_densities = densities
        self.history.append((0, M.density(current)))
        return current

    def state_dict(self):
        return {"history": list(self.history), "init_densities": list(self.init_densities),
                "steps_per_round": self.steps_per_round}

    def load_state_dict(self, state):
        self.history = [tuple(h) for h in state["history"]]
        self.init_densities = list(state["init_densities"])
        self.steps_per_round = float(state["steps_per_round"])


class _SquaredGradients(fedprune.GrowthCriterion):
    """Squared gradients of initial pruning, accumulated in float64 explicit buffers (never by
    reference to ``.grad``)."""

    observes_training = True

    def __init__(self, masks):
        self.sums = {n: torch.zeros_like(m, dtype=torch.float64) for n, m in masks.items()}

    def after_backward(self, params):
        for name, acc in self.sums.items():
            grad = params[name].grad.detach().double()
            acc.addcmul_(grad, grad)
