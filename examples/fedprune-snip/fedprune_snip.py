"""Taylor pruning for fedprune: drop the weights whose removal changes the loss least.

SNIP's connection sensitivity |w * dL/dw| is the first-order Taylor estimate of how much the loss
changes when a weight is set to zero. Magnitude pruning looks at |w| alone; a large weight on a
connection the loss does not care about is kept, a small one it depends on is dropped.
"""

from __future__ import annotations

import fedprune
import torch


class Taylor(fedprune.PruningCriterion):
    """Scores |w * dL/dw|, or |w| where no gradient is at hand.

    The engine passes the dense gradient of one mini-batch where a client adjusts its mask, and
    ``grad=None`` on the server, which re-prunes the voted masks of every sparse method. There
    the score falls back to magnitude.
    """

    def scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        if grad is None:
            return weight.abs()
        return (weight * grad).abs()


@fedprune.hookimpl
def fedprune_pruning_criteria():
    return [fedprune.Component("taylor", Taylor, "SNIP / first-order Taylor: |w * dL/dw|")]


@fedprune.hookimpl
def fedprune_methods():
    return [
        fedprune.Method(
            "feddst_taylor",
            "FedDST whose clients prune by |w * dL/dw| instead of |w|",
            strategy="client_adjust",
            pruning_criterion="taylor",
            growth_criterion="gradient",
            schedule="cosine",
            options={"cosine.alpha": 0.5, "cosine.interval": 10, "cosine.stop": 0.5},
        )
    ]
