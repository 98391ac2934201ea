"""Where masks change: on the clients (FedDST) or on the server (PruneFL, FedMef).
Implementations: `fedprune_plugins.components.strategies`."""

from fedprune import Component, hookimpl

IMPL = "fedprune_plugins.components.strategies"


@hookimpl
def fedprune_strategies():
    return [
        Component("client_adjust", f"{IMPL}:ClientAdjust",
                  "clients prune and grow after training; the server votes and re-prunes"),
        Component("server_adjust", f"{IMPL}:ServerAdjust",
                  "clients upload growth scores (dense or top-k); the server prunes and grows "
                  "or runs the mask policy"),
    ]
