"""SAP (FedMef): conv inputs kept sparse for backward. Implementation:
`fedprune_plugins.components.sap`."""

from fedprune import Component, hookimpl


@hookimpl
def fedprune_activation_compressors():
    return [
        Component(
            "sap", "fedprune_plugins.components.sap:SAP",
            "FedMef SAP: convs keep only the top (1 - gamma) of |input| (values + 1-bit mask)",
        )
    ]
