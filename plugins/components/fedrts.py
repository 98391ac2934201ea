"""FedRTS (Huang et al., NeurIPS'25): masks drawn by Thompson sampling from Beta posteriors.

Every prunable position i holds a posterior Beta(alpha_i, beta_i) on "belongs in the mask",
Beta(1, 1) at the start and kept for the whole run (`FedRTS.state_dict`). Per layer l with K_l
active links, the schedule's decayed rate splits them into kappa_l "core" links and
K_l - kappa_l = floor(rate * K_l) others (the rate is read every round, not only when adjusting).

- Every round, for each active position, the outcome X_i fuses client and aggregate evidence:
  X_i = gamma * X^agg_i + (1 - gamma) * sum_n p_n X^n_i, p_n = n_n / sum n, where X^n (X^agg)
  is 1 on the top-kappa_l active weights of client n's upload (of the aggregate) by the pruning
  criterion (magnitude). gamma weighs the aggregate, as in the paper's Algorithm 2 and ablation.
- In adjustment rounds each client also uploads, per layer, the int32 indices of its top
  K_l - kappa_l inactive positions by |growth score| (the dense gradient of one batch), and no
  values. For inactive positions X^n_i = 1[i uploaded by n] and X^agg_i = ``inactive_outcome``
  (0.5, as in the authors' code; the paper rejects aggregated gradients here as too noisy).
- The update is alpha_i += lambda * X_i, beta_i += lambda * (1 - X_i) (``strength`` lambda = 10)
  on the positions observed: the active ones every round, all of them when adjusting.
- Adjustment: per layer the K_l positions of largest Beta draws (``sampling="thompson"``) or
  of largest posterior mean alpha / (alpha + beta) (``"mean"``, the paper's "w/o TS"
  ablation) form the new mask; ties keep current links. Draws come from the server's numpy
  generator keyed by round. Positions that join the mask start at 0 (W_agg * m), and every layer
  keeps exactly K_l links, though how many change is random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import fedprune
from fedprune import masks as M
from fedprune.contracts import (
    ClientContext,
    ClientResult,
    GrowthCriterion,
    Masks,
    PruningCriterion,
    RoundPlan,
    Schedule,
    ServerContext,
)
from fedprune.engine.aggregate import ScoreSum
from fedprune.errors import FedpruneError

SAMPLINGS = ("thompson", "mean")


def indicator(indices: Tensor, like: Tensor) -> Tensor:
    """A bool tensor shaped like ``like``, True at the flat ``indices``."""
    out = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    out[indices.to(like.device).long()] = True
    return out.view(like.shape)


def _as_float(value: Any, name: str, low: float, high: float) -> float:
    number = float(value)
    if not low <= number <= high:
        raise FedpruneError(f"fedrts_adjust.{name} must be in [{low}, {high}], not {value!r}")
    return number


class FedRTS(fedprune.Strategy):
    """FedRTS's adjustment: Beta posteriors per position, Thompson-sampled masks (module doc)."""

    uses = frozenset({"pruning_criterion", "growth_criterion", "schedule"})

    def __init__(
        self, gamma: float = 0.5, strength: float = 10.0, sampling: str = "thompson",
        inactive_outcome: float = 0.5,
    ) -> None:
        self.gamma = _as_float(gamma, "gamma", 0.0, 1.0)
        self.strength = _as_float(strength, "strength", 0.0, math.inf)
        self.inactive_outcome = _as_float(inactive_outcome, "inactive_outcome", 0.0, 1.0)
        if sampling not in SAMPLINGS:
            raise FedpruneError(
                f"fedrts_adjust.sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}"
            )
        self.sampling = sampling
        self.alpha: dict[str, Tensor] = {}
        self.beta: dict[str, Tensor] = {}
        self.outcomes = ScoreSum()

    # ----------------------------------------------------------------------------- schedule

    @staticmethod
    def outer_loop(server: ServerContext, round: int) -> bool:
        """An adjustment round (the paper's outer loop): the schedule adjusts in it."""
        return server.parts.need(Schedule).fraction(round, server.config.rounds) > 0

    @staticmethod
    def explore_counts(server: ServerContext, round: int) -> dict[str, int]:
        """K_l - kappa_l = floor(rate * K_l) per layer: the links outside the core."""
        assert server.masks is not None
        rate = server.parts.need(Schedule).rate(round, server.config.rounds)
        return {n: math.floor(rate * int(m.sum())) for n, m in server.masks.items()}

    def setup(self, server: ServerContext) -> None:
        self.alpha, self.beta = {}, {}  # Beta(1, 1), made on first use (`_posterior`)

    def plan(self, server: ServerContext, round: int) -> RoundPlan:
        if not server.masks or not self.outer_loop(server, round):
            return RoundPlan(round)
        return RoundPlan(round, self.explore_counts(server, round))

    # ------------------------------------------------------------------------------- client

    def client_end(self, ctx: ClientContext) -> ClientResult:
        """Indices (int32, no values) of the top K_l - kappa_l inactive |growth scores|."""
        if not ctx.adjusting or ctx.masks is None:
            return ClientResult()
        growth = ctx.parts.need(GrowthCriterion)
        grads = ctx.growth_gradients() if growth.uses_gradient else {}
        scores = growth.scores({n: ctx.params[n].detach() for n in ctx.masks}, grads)
        growth.consumed()
        return ClientResult(payload={
            f"{name}/index": M.top_indices(scores[name].abs(), ~mask, ctx.counts.get(name, 0))
            .to(torch.int32)
            for name, mask in ctx.masks.items()
        })

    # ------------------------------------------------------------------------------- server

    def _core(self, server: ServerContext, round: int, weights: Mapping[str, Tensor]) -> Masks:
        """Per layer, the top-kappa_l active positions of ``weights`` by the pruning criterion."""
        assert server.masks is not None
        pruning = server.parts.need(PruningCriterion)
        explore = self.explore_counts(server, round)
        return {
            name: M.top_mask(pruning.scores(weights[name], None), mask,
                             int(mask.sum()) - explore[name])
            for name, mask in server.masks.items()
        }

    def begin_round(self, server: ServerContext, plan: RoundPlan) -> None:
        self.outcomes = ScoreSum()

    def fold(self, server, plan, client, samples, state, result) -> None:
        """X^n: the client's top-kappa active weights, plus its uploaded inactive indices."""
        assert server.masks is not None
        outcome = self._core(server, plan.round, state)
        for name, mask in server.masks.items():
            index = result.payload.get(f"{name}/index")
            if index is not None:
                outcome[name] |= indicator(index, mask) & ~mask
        self.outcomes.add(outcome, samples)

    def _posterior(self, name: str, like: Tensor) -> tuple[Tensor, Tensor]:
        for table in (self.alpha, self.beta):
            old = table.get(name)
            table[name] = (torch.ones(like.shape, device=like.device) if old is None
                           else old.to(like.device))
        return self.alpha[name], self.beta[name]

    def server_masks(
        self, server: ServerContext, plan: RoundPlan, state: dict[str, Tensor],
        votes: Mapping[str, Tensor],
    ) -> Masks | None:
        masks = server.masks
        assert masks is not None
        clients = self.outcomes.take()
        if not clients:
            return masks
        adjusting = self.outer_loop(server, plan.round)
        core = self._core(server, plan.round, state)
        for name, mask in masks.items():
            aggregate = core[name].float()
            if adjusting:
                aggregate[~mask] = self.inactive_outcome
            x = self.gamma * aggregate + (1 - self.gamma) * clients[name]
            seen = torch.ones_like(mask) if adjusting else mask
            alpha, beta = self._posterior(name, mask)
            alpha.add_(torch.where(seen, x, 0), alpha=self.strength)
            beta.add_(torch.where(seen, 1 - x, 0), alpha=self.strength)
        return self.sample(server, plan.round) if adjusting else masks

    def sample(self, server: ServerContext, round: int) -> Masks:
        """Per layer the K_l positions of largest Beta draws (or posterior means)."""
        assert server.masks is not None
        generator = server.numpy_generator("fedrts-thompson", round)
        new = {}
        for name, mask in server.masks.items():
            alpha, beta = (t.double().cpu() for t in self._posterior(name, mask))
            if self.sampling == "thompson":
                score = torch.from_numpy(generator.beta(alpha.numpy(), beta.numpy()))
            else:
                score = alpha / (alpha + beta)
            everywhere = torch.ones(mask.shape, dtype=torch.bool)
            new[name] = M.keep_top(score, everywhere, int(mask.sum()),
                                   tiebreak=mask.cpu()).to(mask.device)
        return new

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": {n: t.cpu().clone() for n, t in self.alpha.items()},
                "beta": {n: t.cpu().clone() for n, t in self.beta.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha = {n: t.clone() for n, t in state.get("alpha", {}).items()}
        self.beta = {n: t.clone() for n, t in state.get("beta", {}).items()}
