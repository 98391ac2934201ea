"""BaE (budget-aware extrusion, FedMef, Huang et al., CVPR'24): push the weights about to be
pruned towards 0 before they are, so their information moves into the weights that stay."""

from __future__ import annotations

import math

import torch

import fedprune
from fedprune.contracts import ClientContext
from fedprune.errors import FedpruneError


class BaE(fedprune.Regularizer):
    """Budget-aware extrusion: push the weights about to be pruned to 0 before they are.

    In an adjustment round, `begin` marks theta_low: per layer the k_l active weights of lowest
    pruning score (the method's criterion, on the weights the client starts from), fixed for the
    round. Local training then minimises CE + ``lam`` * ||theta_low||_2^2, so what those
    weights carry moves into the weights that stay before the server prunes them.

    The budget is the adjustment round's T local iterations. Step t (0-based) trains at
    mu_t = max(eta_t, beta_t) with beta_t = p(t) * (2 * sigmoid(||theta_low||) - 1) * eta_0 and
    the REX decay p(t) = (2T - 2t) / (2T - t): the larger the marked weights still are, the
    larger the step, decaying to 0 at the end of the budget. eta_t is the run's constant local
    learning rate; eta_0 is ``eta0`` (default: that same rate). As 2 * sigmoid(x) - 1 < 1 for
    every x, beta_t < eta_0, so with the default ``eta0`` the learning rate stays the run's:
    beta_t only raises it where eta_0 exceeds the local rate (``-o bae.eta0=...``), as in the
    paper's setting where eta_t decays over training from eta_0. The authors' code also has a
    variant whose budget spans several rounds before the adjustment; it is not implemented.
    Outside adjustment rounds there is no penalty and the learning rate is the run's.
    """

    def __init__(self, lam: float = 0.01, eta0: float | None = None) -> None:
        self.lam = float(lam)
        if not self.lam >= 0:
            raise FedpruneError(f"bae.lam must be >= 0, not {lam!r}")
        self.eta0 = None if eta0 is None else float(eta0)
        if self.eta0 is not None and not self.eta0 > 0:
            raise FedpruneError(f"bae.eta0 must be positive, not {eta0!r}")
        # layer name -> (its weight parameter, flat indices of its marked entries)
        self._marked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._start = 0.0  # ||theta_low|| when marked

    def begin(self, ctx: ClientContext) -> None:
        """Mark theta_low for this client's round (nothing outside adjustment rounds)."""
        self._marked = {}
        self._start = 0.0
        if not ctx.adjusting or not ctx.masks:
            return
        criterion = ctx.parts.one(fedprune.PruningCriterion)
        with torch.no_grad():
            for name, k in ctx.counts.items():
                mask = ctx.masks[name]
                k = min(int(k), int(mask.sum()))
                if k <= 0:
                    continue
                weight = ctx.params[name]
                w = weight.detach()
                scores = criterion.scores(w, None) if criterion is not None else w.abs()
                inactive = torch.full_like(scores, math.inf, dtype=torch.float32)
                scores = torch.where(mask, scores.float(), inactive).flatten()
                self._marked[name] = (weight, torch.topk(scores, k, largest=False).indices)
        self._start = self.norm()

    def marked(self) -> dict[str, torch.Tensor]:
        """theta_low as bool masks per layer (empty outside adjustment rounds)."""
        out = {}
        for name, (weight, index) in self._marked.items():
            where = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            where[index] = True
            out[name] = where.view_as(weight)
        return out

    def norm(self) -> float:
        """||theta_low||_2 at the current weights."""
        with torch.no_grad():
            return math.sqrt(float(sum(_sq_norm(w, i) for w, i in self._marked.values())))

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | None:
        if not self._marked or self.lam == 0:
            return None
        # A gather of the marked entries: backward keeps k_l indices, nothing weight-sized.
        return self.lam * torch.stack([_sq_norm(w, i) for w, i in self._marked.values()]).sum()

    def learning_rate(self, step: int, total_steps: int, lr: float, lr0: float) -> float:
        if not self._marked:
            return lr
        t, budget = step, total_steps
        p = (2 * budget - 2 * t) / (2 * budget - t) if 0 <= t < budget else 0.0  # REX
        eta0 = lr if self.eta0 is None else self.eta0
        beta = p * (2 / (1 + math.exp(-self.norm())) - 1) * eta0
        return max(lr, beta)

    def end(self, ctx: ClientContext) -> dict[str, float]:
        """``bae_norm_ratio``: ||theta_low|| at the end of the budget over its start value."""
        if not self._marked or self._start == 0:
            return {}
        return {"bae_norm_ratio": self.norm() / self._start}


def _sq_norm(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return weight.reshape(-1)[index].square().sum()

