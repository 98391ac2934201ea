"""fedprune: compare federated pruning methods on equal terms.

Plugins import what they need from here: ``hookimpl`` to mark hook implementations, the
``Component`` and ``Method`` records that registration hooks return, and the base class of each
component kind (``PruningCriterion``, ``Strategy``, ...). Importing it does not import torch.
"""

import pluggy

from fedprune.contracts import (
    ActivationCompressor,
    ClientContext,
    ClientResult,
    GrowthCriterion,
    MaskPolicy,
    ModelTransform,
    Partitioner,
    PruningCriterion,
    Regularizer,
    RoundPlan,
    Schedule,
    ServerContext,
    Strategy,
)
from fedprune.registry import Component, Method

hookimpl = pluggy.HookimplMarker("fedprune")

__all__ = [
    "ActivationCompressor",
    "ClientContext",
    "ClientResult",
    "Component",
    "GrowthCriterion",
    "MaskPolicy",
    "Method",
    "ModelTransform",
    "Partitioner",
    "PruningCriterion",
    "Regularizer",
    "RoundPlan",
    "Schedule",
    "ServerContext",
    "Strategy",
    "hookimpl",
]
