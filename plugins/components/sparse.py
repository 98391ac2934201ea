"""Sparse-training components any method can use: criteria for pruning and growth, and the
cosine adjustment schedule (RigL, Evci et al., ICML'20).

Mix them into a method by name, e.g. ``feddst+random`` (SET-style random growth in FedDST).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

import fedprune
from fedprune.errors import FedpruneError


class Magnitude(fedprune.PruningCriterion):
    """Prune the active weights of smallest |w|."""

    def scores(self, weight: Tensor, grad: Tensor | None) -> Tensor:
        return weight.abs()


class GradientGrowth(fedprune.GrowthCriterion):
    """RigL growth: the dense gradient of one mini-batch w.r.t. each layer's effective weight.

    Scores are signed gradients: the server sums them across clients and grows by |sum|.
    """

    def scores(self, weights: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> dict:
        return {name: grads[name] for name in weights}


class RandomGrowth(fedprune.GrowthCriterion):
    """SET growth: uniformly random inactive positions, from a seeded generator."""

    uses_gradient = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, weights: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> dict:
        return {
            name: torch.rand(w.shape, generator=self.generator).to(w.device)
            for name, w in weights.items()
        }


class SquaredGradientGrowth(fedprune.GrowthCriterion):
    """PruneFL importance: squared gradients accumulated over the local steps, over a cost.

    As in the paper, a client accumulates over every local step since the last
    reconfiguration, not only those of the adjustment round: the sum is the client's own state,
    kept between the rounds it takes part in (`client_state`) and reset once uploaded
    (`consumed`). The accumulator is a separate buffer filled explicitly after every backward
    pass (summing ``param.grad`` by reference changed meaning across torch versions). ``cost``
    is the per-parameter communication + compute time t_j; 1 where no device profile is given.
    """

    uses_gradient = False
    observes_training = True

    def __init__(self, cost: float = 1.0) -> None:
        if not cost > 0:
            raise FedpruneError(f"sqgrad.cost must be positive, not {cost!r}")
        self.cost = cost
        self.accumulated: dict[str, Tensor] = {}

    def load_client_state(self, state: Mapping[str, Tensor]) -> None:
        self.accumulated = dict(state)

    def client_state(self) -> dict[str, Tensor]:
        return self.accumulated

    def consumed(self) -> None:
        self.accumulated = {}

    def after_backward(self, params: Mapping[str, nn.Parameter]) -> None:
        for name, p in params.items():
            if p.grad is not None and p.dim() > 1:
                acc = self.accumulated.get(name)
                if acc is None:
                    self.accumulated[name] = p.grad.detach().pow(2)
                else:
                    acc.addcmul_(p.grad, p.grad)

    def scores(self, weights: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> dict:
        return {name: self.accumulated[name] / self.cost for name in weights}


class Cosine(fedprune.Schedule):
    """RigL's cosine decay: every ``interval`` rounds until ``stop``, adjust a fraction
    zeta_r = (alpha / 2) * (1 + cos(pi * r / R_stop)) of each layer's active weights.

    ``stop`` <= 1 is a fraction of the total rounds, > 1 a round number. No adjustment in the
    last round: a weight grown then would never train.
    """

    def __init__(self, alpha: float = 0.4, interval: int = 10, stop: float = 0.6) -> None:
        if not 0 <= alpha <= 1 or interval < 1 or not stop > 0:
            raise FedpruneError("cosine needs 0 <= alpha <= 1, interval >= 1 and stop > 0")
        self.alpha, self.interval, self.stop = alpha, int(interval), stop

    def stop_round(self, total_rounds: int) -> int:
        return round(self.stop * total_rounds) if self.stop <= 1 else int(self.stop)

    def rate(self, round: int, total_rounds: int) -> float:
        stop = self.stop_round(total_rounds)
        if round > stop or stop <= 0:
            return 0.0
        return self.alpha / 2 * (1 + math.cos(math.pi * round / stop))

    def fraction(self, round: int, total_rounds: int) -> float:
        if round % self.interval or round >= total_rounds:
            return 0.0
        return self.rate(round, total_rounds)
