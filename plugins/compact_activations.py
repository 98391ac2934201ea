"""1-bit activations for any method (``feddst+bitact``). Implementation:
`fedprune_plugins.components.bitact`."""

from fedprune import Component, hookimpl


@hookimpl
def fedprune_activation_compressors():
    return [
        Component(
            "bitact", "fedprune_plugins.components.bitact:BitAct",
            "ReLU/ReLU6 keep a 1-bit mask for backward instead of a full tensor (exact gradients)",
        )
    ]
