"""NSConv (FedMef): BatchNorm-free convolutions with scaled weight standardisation.
Implementation: `fedprune_plugins.components.nsconv`."""

from fedprune import Component, hookimpl


@hookimpl
def fedprune_model_transforms():
    return [
        Component(
            "nsconv", "fedprune_plugins.components.nsconv:NSConv",
            "FedMef NSConv: BatchNorm removed, conv weights standardised per channel with a gain",
        )
    ]
