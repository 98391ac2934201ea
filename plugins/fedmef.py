"""FedMef (Huang et al., CVPR'24): memory-efficient federated dynamic pruning.

The recipe: a random ERK mask; NSConv (BatchNorm removed, standardised convolution weights) and
SAP (conv inputs kept sparse for backward) on the clients; every ``interval`` rounds until
``stop``, clients train with budget-aware extrusion (BaE, the ``bae`` regularizer below), then
upload the values and indices of their top-k_l dense gradients among inactive positions; the
server averages the weights, sums the sparse gradients weighted by n_k / sum n, prunes the k_l
smallest-magnitude active weights per layer (mostly the ones BaE pushed to 0) and grows the k_l
inactive positions of largest aggregated |g| at 0. Growth scores are gradients with respect to
NSConv's effective (standardised, masked) weight: through the standardisation every pruned
position of an output channel has the same raw gradient, which would make top-|g| growth
degenerate. The engine asks layers for that weight through ``capture_effective_weight``.

SAP's gamma defaults to 0.5 here, the low end of the authors' code defaults (0.5-0.7); the
paper's value is not confirmed; on the digits default 0.5 and 0.7 differ within seed noise.
``-o sap.gamma=0.7`` saves more (docs/memory.md). SAP pays off only where nothing else keeps the
full conv input: in ResNet18 the in-place ReLU keeps it, so there ``fedmef+bitact`` (1-bit
activations) is the memory-efficient form; measured footprints are in docs/memory.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from fedprune import Component, Method, hookimpl
from fedprune.errors import FedpruneError

if TYPE_CHECKING:
    from fedprune.engine.events import ClientContext

#: SAP's fraction of dropped activation entries in the recipe (see the module docstring).
SAP_GAMMA = 0.5


class BaE:
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

    def begin(self, ctx: ClientContext) -> None:
        """Mark theta_low for this client's round (nothing outside adjustment rounds)."""
        self._marked = {}
        if not ctx.adjusting or not ctx.masks:
            return
        criterion = ctx.pruning_criterion
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
        return self.lam * sum(_sq_norm(w, i) for w, i in self._marked.values())

    def learning_rate(self, step: int, total_steps: int, base_lr: float) -> float:
        if not self._marked:
            return base_lr
        t, budget = step, total_steps
        p = (2 * budget - 2 * t) / (2 * budget - t) if 0 <= t < budget else 0.0  # REX
        eta0 = base_lr if self.eta0 is None else self.eta0
        beta = p * (2 / (1 + math.exp(-self.norm())) - 1) * eta0
        return max(base_lr, beta)


def _sq_norm(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return weight.reshape(-1)[index].square().sum()


@hookimpl
def fedprune_regularizers():
    return [
        Component(
            "bae",
            BaE,
            "FedMef budget-aware extrusion: L2 on the weights to be pruned, REX-boosted lr",
        )
    ]


@hookimpl
def fedprune_methods():
    return [
        Method(
            "fedmef",
            "FedMef: NSConv + SAP clients, BaE before server prune/grow by sparse top-k gradients",
            adjust="server",
            pruning_criterion="magnitude",
            growth_criterion="gradient",
            regularizer="bae",
            schedule="cosine",
            model_transforms=("nsconv",),
            activation_compressors=("sap",),
            options={
                "distribution": "erk",
                "init": "random",
                "gradient.upload_topk": True,
                "cosine.alpha": 0.4,
                "cosine.interval": 10,
                "cosine.stop": 0.6,
                "sap.gamma": SAP_GAMMA,
            },
        )
    ]
