"""FedAvg (McMahan et al., AISTATS'17): the dense baseline every table is read against.

No mask, no adjustment: clients train the dense model from the global weights and the server
takes the sample-weighted average. Everything it does is the engine's default behaviour.
"""

from fedprune import Method, hookimpl


@hookimpl
def fedprune_methods():
    return [
        Method("fedavg", "dense FedAvg: sample-weighted average of client models", sparse=False)
    ]
