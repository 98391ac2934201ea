"""FedTiny (Huang et al., ICDCS'23): adaptive BatchNorm selection, then progressive pruning.

``fedtiny``: before round 1 the server draws candidate masks (magnitude of the initial weights
at noisy layer densities); clients re-estimate each candidate's BatchNorm statistics by forward
passes, the server pools them, clients evaluate every candidate, and the lowest sample-weighted
loss wins (adaptive BN selection). Then, in the schedule's adjustment rounds, one layer at a
time (back to front) is adjusted: clients upload its top-k inactive gradients as values and
positions, the server prunes by magnitude and grows by the averaged gradient, at 0. Schedule:
the authors' code defaults, rate 0.1 every 10 rounds until round 100, indexed by round.

``fedtiny_clean``: "FedTiny" as the FedMef and FedRTS papers ran it (the authors' library's
``fedtinyclean``): neither module; an ERK mask by magnitude of the initial weights, and every
10 rounds until round 100 (rate 0.2) clients upload dense gradients of one batch, which the
server averages by samples to prune and grow every layer (just-pruned weights may regrow).
The same as ``fedtiny -o fedtiny_adjust.abns=false -o fedtiny_adjust.progressive=false`` with
those settings. No server pre-training in either (the authors' code pre-trains on test images).

Implementation: `fedprune_plugins.components.fedtiny`; deviations from the authors' code:
docs/fedtiny_fedrts.md.
"""

from fedprune import Component, Method, hookimpl

SCHEDULE = {"cosine.interval": 10, "cosine.stop": 100}


@hookimpl
def fedprune_strategies():
    return [
        Component(
            "fedtiny_adjust", "fedprune_plugins.components.fedtiny:FedTiny",
            "FedTiny: adaptive BN selection of the initial mask, then layer-by-layer server "
            "prune/grow from top-k gradients",
        )
    ]


@hookimpl
def fedprune_methods():
    parts = {"strategy": "fedtiny_adjust", "pruning_criterion": "magnitude",
             "growth_criterion": "gradient", "schedule": "cosine"}
    return [
        Method(
            "fedtiny",
            "FedTiny: adaptive BatchNorm selection, then progressive (layer-wise) pruning",
            parts=parts,
            options={"distribution": "erk", "init": "magnitude", "cosine.alpha": 0.1,
                     **SCHEDULE},
        ),
        Method(
            "fedtiny_clean",
            "FedTiny as FedMef/FedRTS compared against: dense-gradient server prune/grow",
            parts=parts,
            options={"distribution": "erk", "init": "magnitude", "regrow_pruned": True,
                     "fedtiny_adjust.abns": False, "fedtiny_adjust.progressive": False,
                     "cosine.alpha": 0.2, **SCHEDULE},
        ),
    ]
