"""FedRTS (Huang et al., NeurIPS'25): federated dynamic sparse training by Thompson sampling.

The recipe: a random ERK mask with the output layer dense; masked FedAvg every round, during
which the server keeps a Beta posterior per prunable position, fed by the clients' and the
aggregate's top-kappa magnitude indicators (gamma 0.5 on the aggregate, strength lambda 10);
every 10 rounds until 60% of the run (the paper's 300 of 500) clients also upload the indices of
their top K - kappa inactive gradients, and the server samples each layer's new K links from the
posteriors (new weights 0). kappa follows the cosine rate (alpha 0.4): K - kappa = floor(rate K).

Ablations: ``-o fedrts_adjust.gamma=0`` (clients only), ``gamma=1`` (aggregate only),
``-o fedrts_adjust.sampling=mean`` ("w/o TS": top-K of the posterior mean). Details, and how
this differs from the authors' code (whose current version never changes its mask):
`fedprune_plugins.components.fedrts` and docs/fedtiny_fedrts.md.
"""

from fedprune import Component, Method, hookimpl


@hookimpl
def fedprune_strategies():
    return [
        Component(
            "fedrts_adjust", "fedprune_plugins.components.fedrts:FedRTS",
            "FedRTS: Beta posteriors per position from top-k indicators, Thompson-sampled masks",
        )
    ]


@hookimpl
def fedprune_methods():
    return [
        Method(
            "fedrts",
            "FedRTS: Thompson-sampled masks from clients' and aggregated top-k indicators",
            strategy="fedrts_adjust",
            pruning_criterion="magnitude",
            growth_criterion="gradient",
            schedule="cosine",
            options={
                "distribution": "erk",
                "init": "random",
                "cosine.alpha": 0.4,
                "cosine.interval": 10,
                "cosine.stop": 0.6,
            },
        )
    ]
