"""BaE extrudes on a preset's model too: ResNet18 under NSConv, the preset's learning rate, one
adjustment round's budget of local steps (5 epochs of a CIFAR-10 client of 100: 40 steps). Batch
and images are smaller than the preset's (4 of 16x16, not 64 of 32x32) to keep the test fast:
the extrusion is a per-step proximal shrinkage, set by the steps and the rate.

(On the MobileNetV2 preset the BatchNorm-free model's local training diverges at the preset's
rate on these inputs, with or without BaE: docs/methods.md, "FedMef".)"""

from __future__ import annotations

import math

import torch

from fedprune import masks as M
from fedprune.contracts import Regularizer, RoundPlan
from fedprune.data.synthetic import load_synthetic
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import make_federation, prepare
from fedprune.options import parse_options
from fedprune.presets import load_preset

PRESET = "fedmef-cifar10-resnet18"
STEPS = 5 * math.ceil(50_000 / 100 / 64)  # 5 local epochs of 500 samples at batch 64


def test_bae_leaves_at_most_a_tenth_of_the_marked_norm_on_a_presets_model(pm):
    preset = load_preset(PRESET)
    config = RunConfig(
        model=preset["model"], lr=preset["lr"], momentum=preset["momentum"],
        weight_decay=preset["weight_decay"], density=preset["density"], batch_size=4,
        local_steps=STEPS, clients=2, clients_per_round=1, partition="iid",
        options={k: v[0] for k, v in parse_options(preset["option"]).items()})
    data = load_synthetic("3,16,16", 10, size=64, test_size=8)
    run = prepare(pm.registry, pm.registry.method("fedmef"),
                  make_federation(pm.registry, config, 0, data))
    counts = M.adjustment_counts(run.masks, config.options["cosine.alpha"])
    state = {k: v.detach().clone() for k, v in run.state.items()}
    update = run.trainer.train(0, state, run.masks, RoundPlan(10, counts), config.lr)
    marked = run.parts.one(Regularizer).marked()
    assert marked and any(m.any() for m in marked.values())

    def norm(tensors):
        return math.sqrt(sum(float(tensors[n][m].double().square().sum())
                             for n, m in marked.items()))

    assert norm(update.state) <= 0.1 * norm(state)
    assert update.metrics["bae_norm_ratio"] <= 0.1
    assert torch.isfinite(torch.tensor(update.loss))
