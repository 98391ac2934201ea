"""FedDST (Bibikar et al., AAAI'22): federated dynamic sparse training, paper-level defaults.

ERK random mask at the target density; in adjustment rounds every client, after local training,
prunes by magnitude and grows by the dense gradient of one mini-batch (new weights 0, growth
only among inactive positions) and uploads weights and mask; the server takes the sparse
average, keeps the positions held by any client (``min_votes`` = 0: the union) and re-prunes
each layer to its target by magnitude. Schedule: cosine, alpha 0.5, every 10 rounds until R/2.

Reference-code deviations not copied: the prune count follows the cosine decay, growth ranks
inactive positions only, clients are sampled without replacement, and runs are seeded.
"""

from fedprune import Method, hookimpl


@hookimpl
def fedprune_methods():
    return [
        Method(
            "feddst",
            "FedDST: client-side prune/grow, server mask vote and magnitude re-prune",
            strategy="client_adjust",
            pruning_criterion="magnitude",
            growth_criterion="gradient",
            schedule="cosine",
            options={"cosine.alpha": 0.5, "cosine.interval": 10, "cosine.stop": 0.5},
        )
    ]
