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
degenerate. NSConv layers give that weight to the growth pass (`fedprune.ops.layers.GrowthCapture`).

SAP's gamma defaults to 0.5 here, the low end of the authors' code defaults (0.5-0.7); the
paper's value is not confirmed; on the digits default 0.5 and 0.7 differ within seed noise.
``-o sap.gamma=0.7`` saves more (docs/memory.md). SAP pays off only where nothing else keeps the
full conv input: in ResNet18 the in-place ReLU keeps it, so there ``fedmef+bitact`` (1-bit
activations) is the memory-efficient form; measured footprints are in docs/memory.md.
"""

from fedprune import Component, Method, hookimpl

#: SAP's fraction of dropped activation entries in the recipe (see the module docstring).
SAP_GAMMA = 0.5


@hookimpl
def fedprune_regularizers():
    return [
        Component(
            "bae", "fedprune_plugins.components.bae:BaE",
            "FedMef budget-aware extrusion: L2 on the weights to be pruned, REX-boosted lr",
        )
    ]


@hookimpl
def fedprune_methods():
    return [
        Method(
            "fedmef",
            "FedMef: NSConv + SAP clients, BaE before server prune/grow by sparse top-k gradients",
            strategy="server_adjust",
            pruning_criterion="magnitude",
            growth_criterion="gradient",
            regularizer="bae",
            schedule="cosine",
            model_transforms=("nsconv",),
            activation_compressors=("sap",),
            options={
                "distribution": "erk",
                "init": "random",
                "server_adjust.upload": "topk",
                "cosine.alpha": 0.4,
                "cosine.interval": 10,
                "cosine.stop": 0.6,
                "sap.gamma": SAP_GAMMA,
            },
        )
    ]
