"""PruneFL (Jiang et al., TNNLS'22, arXiv 1909.12326): both variants of the paper.

``prunefl`` (default, for comparisons at equal density) is the fixed-density variant that
FedMef-era benchmarks use: random ERK mask at ``--density``; in adjustment rounds clients
accumulate squared gradients over their local steps (``sqgrad``, a separate buffer) and upload
them dense; the server prunes the k_l smallest-magnitude active weights of each layer and grows
the k_l inactive positions of largest importance g^2 / t (t: per-parameter cost, 1 without a
device profile), so every layer keeps its size.

``prunefl+prunefl_adaptive`` is the paper's original algorithm, where the model size is chosen
by an objective, not by ``--density``. The variant is a mask-policy component mixed into the
recipe. Implementation and the algorithm's details: `fedprune_plugins.components.prunefl`.
"""

from fedprune import Component, Method, hookimpl


@hookimpl
def fedprune_methods():
    return [
        Method(
            "prunefl",
            "PruneFL (fixed density): server prunes by |w|, grows by accumulated g^2 / cost",
            strategy="server_adjust",
            pruning_criterion="magnitude",
            growth_criterion="sqgrad",
            schedule="cosine",
        )
    ]


@hookimpl
def fedprune_mask_policies():
    return [
        Component(
            "prunefl_adaptive", "fedprune_plugins.components.prunefl:AdaptivePruneFL",
            "PruneFL original: initial pruning on one client's sample, then size chosen by "
            "sum(g^2) / (T0 + sum t) (use as prunefl+prunefl_adaptive)",
        )
    ]
