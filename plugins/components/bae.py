"""BaE (budget-aware extrusion, FedMef, Huang et al., CVPR'24): push the weights about to be
pruned towards 0 before they are, so what they carry moves into the weights that stay."""

from __future__ import annotations

import math

import torch

import fedprune
from fedprune.contracts import ClientContext
from fedprune.errors import FedpruneError
from fedprune.options import as_bool

FORMS = ("norm", "squared")


class BaE(fedprune.Regularizer):
    """Budget-aware extrusion.

    In an adjustment round, `begin` marks theta_low: per layer the k_l active weights of lowest
    pruning score (the method's criterion, on the weights the client starts from), fixed for the
    round. Local training then adds a penalty on them:

    - ``form="norm"`` (default, the authors' released code): ``lam`` * sum_l ||theta_low,l||_2,
      the un-squared per-layer norm. It pulls with the same force whatever the weights' size,
      so small weights reach 0 in a bounded number of steps, where a squared norm only shrinks
      them geometrically. ``lam`` defaults to 1, the released code's coefficient. The norm is
      not differentiable at 0, and its (sub)gradient through a momentum optimizer orbits 0 at
      the scale lr * lam / (1 - momentum), which can leave the marked weights larger than they
      started (measured on the digits default: ||theta_low|| end / start 0.59 and 3.4 in its
      two adjustment rounds). So it is minimised as the standard proximal step after each
      optimizer step, per layer theta_low,l <- theta_low,l * max(0, 1 - mu_t * lam /
      ||theta_low,l||): the same objective, reaching 0 exactly and staying there.
    - ``form="squared"`` (the paper's equation): ``lam`` * ||theta_low||_2^2.
    - ``ramp`` > 0 (the authors' development code): the coefficient starts at 0 and grows by
      ``ramp`` per local step up to ``lam``, reset at every extrusion (their values: ramp 1e-4,
      lam 0.01).
    - ``budget=True`` (default, fedprune's choice): each layer's coefficient of the norm form is
      at least 2 * ||theta_low,l|| / (T * eta_t) at the marking: the pull alone brings the layer
      to 0 in half the budget of T steps at the round's rate, and holds it there against the
      loss's gradient for the other half. With the released code's fixed coefficient the pull
      is T * eta_t * lam per layer, which on the digits default (5 local steps at 0.05) leaves
      half the norm (end / start 0.50 in round 10); a floor of one budget still leaves 0.21 to
      0.27 (seeds 0-2), two budgets 0 to 0.013. ``budget=False`` keeps the fixed coefficient.

    The budget is the adjustment round's T local steps. Step t (0-based) trains at
    mu_t = max(eta_t, beta_t) with beta_t = p(t) * (2 * sigmoid(||theta_low||) - 1) * eta_0 and
    the REX decay p(t) = (2T - 2t) / (2T - t): the larger the marked weights still are, the
    larger the step, decaying to 0 at the end of the budget. eta_t is the round's learning rate
    (the run's round-level schedule, ``--lr-schedule``) and eta_0 the initial one, so the boost
    acts once eta_t has decayed below beta_t (beta_t < eta_0 always). ``end`` reports
    ``bae_norm_ratio``: ||theta_low|| at the end of the budget over its start. The authors' code
    also has a variant whose budget spans several rounds before the adjustment; not implemented.
    Outside adjustment rounds there is no penalty and the learning rate is the round's.
    """

    def __init__(
        self, lam: float = 1.0, form: str = "norm", ramp: float = 0.0, budget: bool = True
    ) -> None:
        self.lam = float(lam)
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise FedpruneError(f"bae.lam must be a finite number >= 0, not {lam!r}")
        if form not in FORMS:
            raise FedpruneError(f"bae.form must be one of {', '.join(FORMS)}, not {form!r}")
        self.form = form
        self.ramp = float(ramp)
        if not (math.isfinite(self.ramp) and self.ramp >= 0):
            raise FedpruneError(f"bae.ramp must be a finite number >= 0, not {ramp!r}")
        self.budget = as_bool(budget, "bae.budget")
        # layer name -> (its weight parameter, flat indices of its marked entries)
        self._marked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._floor: dict[str, float] = {}  # per-layer coefficient floor (budget)
        self._start = 0.0  # ||theta_low|| when marked
        self._steps = 0  # penalties taken since the marking (for the ramp)

    def begin(self, ctx: ClientContext) -> None:
        """Mark theta_low for this client's round (nothing outside adjustment rounds)."""
        self._marked, self._floor, self._start, self._steps = {}, {}, 0.0, 0
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
                index = torch.topk(scores, k, largest=False).indices
                self._marked[name] = (weight, index)
                if self.budget and ctx.total_steps > 0:
                    norm = float(_sq_norm(weight, index)) ** 0.5
                    self._floor[name] = 2 * norm / (ctx.total_steps * ctx.lr)
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
            return math.sqrt(sum(float(_sq_norm(w, i)) for w, i in self._marked.values()))

    def coefficient(self) -> float:
        """The penalty's coefficient at the current step (``lam``, or the ramp towards it)."""
        return min(self.lam, self.ramp * self._steps) if self.ramp > 0 else self.lam

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | None:
        if not self._marked:
            return None
        self._steps += 1
        lam = self.coefficient()
        if lam == 0 or self.form != "squared":
            return None
        # A gather of the marked entries: backward keeps k_l indices, nothing weight-sized.
        return lam * torch.stack([_sq_norm(w, i) for w, i in self._marked.values()]).sum()

    def after_step(self, lr: float) -> None:
        """The proximal step of lr * lam * sum_l ||theta_low,l|| (block soft-thresholding)."""
        lam = self.coefficient()
        if not self._marked or self.form != "norm" or lam == 0:
            return
        with torch.no_grad():
            for name, (weight, index) in self._marked.items():
                flat = weight.view(-1)
                values = flat[index]
                norm = float(values.norm())
                pull = lr * max(lam, self._floor.get(name, 0.0))
                flat[index] = values * (max(0.0, 1.0 - pull / norm) if norm > 0 else 0.0)

    def learning_rate(self, step: int, total_steps: int, lr: float, lr0: float) -> float:
        if not self._marked:
            return lr
        t, budget = step, total_steps
        p = (2 * budget - 2 * t) / (2 * budget - t) if 0 <= t < budget else 0.0  # REX
        beta = p * (2 / (1 + math.exp(-self.norm())) - 1) * lr0
        return max(lr, beta)

    def end(self, ctx: ClientContext) -> dict[str, float]:
        """``bae_norm_ratio``: ||theta_low|| at the end of the budget over its start value."""
        if not self._marked or self._start == 0:
            return {}
        return {"bae_norm_ratio": self.norm() / self._start}


def _sq_norm(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return weight.reshape(-1)[index].square().sum()
