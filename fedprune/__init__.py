"""fedprune: compare federated pruning methods on equal terms.

Plugins import what they need from here: ``hookimpl`` to mark hook implementations, and the
``Component`` and ``Method`` records that registration hooks return.
"""

import pluggy

from fedprune.registry import Component, Method

hookimpl = pluggy.HookimplMarker("fedprune")

__all__ = ["Component", "Method", "hookimpl"]
