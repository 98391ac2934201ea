"""Sparse-training components any method can use: criteria for pruning and growth, and the
cosine adjustment schedule (RigL). Implementations: `fedprune_plugins.components.sparse`.

Mix them into a method by name, e.g. ``feddst+random`` (SET-style random growth in FedDST).
"""

from fedprune import Component, hookimpl

IMPL = "fedprune_plugins.components.sparse"


@hookimpl
def fedprune_pruning_criteria():
    return [Component("magnitude", f"{IMPL}:Magnitude", "prune the active weights of smallest |w|")]


@hookimpl
def fedprune_growth_criteria():
    return [
        Component("gradient", f"{IMPL}:GradientGrowth",
                  "RigL: grow where |dense gradient| is largest"),
        Component("random", f"{IMPL}:RandomGrowth",
                  "SET: grow uniformly random inactive positions"),
        Component("sqgrad", f"{IMPL}:SquaredGradientGrowth",
                  "PruneFL: accumulated squared gradient over local steps, divided by cost"),
    ]


@hookimpl
def fedprune_schedules():
    return [Component("cosine", f"{IMPL}:Cosine",
                      "RigL cosine-decayed adjustment every interval rounds")]
