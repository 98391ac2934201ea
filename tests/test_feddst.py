"""FedDST: client prune/grow, server vote and re-prune, schedule, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse_components import Recorder, make_simulation, plugin_manager

from fedprune import masks as M
from fedprune.cli import main
from fedprune.contracts import RoundPlan
from fedprune.engine.config import MethodSettings


@pytest.fixture(scope="module")
def server(digits):
    """A FedDST simulation whose server step the property tests drive with synthetic votes."""
    return make_simulation("feddst", digits)


def test_recipe_is_the_paper_level_one():
    method = plugin_manager().registry.method("feddst")
    assert (method.strategy, method.pruning_criterion, method.growth_criterion,
            method.schedule) == ("client_adjust", "magnitude", "gradient", "cosine")
    assert dict(method.options) == {"cosine.alpha": 0.5, "cosine.interval": 10,
                                    "cosine.stop": 0.5}
    mixed = plugin_manager().registry.method("feddst+random")
    assert mixed.growth_criterion == "random" and mixed.strategy == "client_adjust"


def test_client_adjustment_keeps_counts_and_grows_zero_weights(digits):
    sim = make_simulation("feddst", digits)
    masks = sim.prepared.masks
    counts = M.adjustment_counts(masks, 0.3)
    update = sim.prepared.trainer.train(1, sim.prepared.state, masks, RoundPlan(1, counts), 0.05)
    assert update.masks is not None and not update.payload
    for name, mask in masks.items():
        new = update.masks[name]
        grown, pruned = new & ~mask, mask & ~new
        assert int(new.sum()) == int(mask.sum())
        k = min(counts[name], int((~mask).sum()))  # ERK may make a small layer dense
        assert int(grown.sum()) == int(pruned.sum()) == k
        assert (update.state[name][grown] == 0).all()  # new weights start at exactly 0
        assert (update.state[name][~new] == 0).all()
        # Growth ranks inactive positions only: no surviving weight was wiped.
        assert (update.state[name][mask & new] != 0).all()


def test_an_adjustment_round_changes_the_global_mask_at_constant_density(digits):
    recorder = Recorder()
    sim = make_simulation("feddst", digits, recorder=recorder,
                          options={"cosine.interval": 1, "cosine.stop": 1.0})
    target = {n: int(m.sum()) for n, m in sim.prepared.masks.items()}
    for round_ in range(1, 4):
        sim.step(round_, [0, 2])
        assert {n: int(m.sum()) for n, m in sim.prepared.masks.items()} == target
        for name, mask in sim.prepared.masks.items():
            assert (sim.prepared.state[name][~mask] == 0).all()
    assert recorder.of("fedprune_masks_updated")


def test_alpha_zero_never_changes_the_mask(digits):
    recorder = Recorder()
    options = {"cosine.alpha": 0, "cosine.interval": 1, "cosine.stop": 1.0}
    sim = make_simulation("feddst", digits, recorder=recorder, options=options)
    initial = {n: m.clone() for n, m in sim.prepared.masks.items()}
    sim.run()
    assert not recorder.of("fedprune_masks_updated")
    assert all(torch.equal(sim.prepared.masks[n], initial[n]) for n in initial)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    clients=st.integers(1, 4),
    min_votes=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
    spread=st.floats(0.0, 0.5),
)
def test_server_vote_and_reprune_meet_the_target(server, seed, clients, min_votes, spread):
    """Whatever the clients hold, the global mask has exactly the target count per layer."""
    gen = torch.Generator().manual_seed(seed)
    sim = server
    sim.prepared.parts.settings = MethodSettings(min_votes=min_votes)
    state = {k: v.clone() for k, v in sim.prepared.state.items()}
    votes = {}
    for name, mask in sim.prepared.masks.items():
        held = torch.zeros(mask.shape)
        for _ in range(clients):
            flips = torch.rand(mask.shape, generator=gen) < spread  # client masks differ
            held += (mask ^ flips).float() / clients
        votes[name] = held
        state[name] = torch.randn(mask.shape, generator=gen) * (held > 0)
    before = {n: state[n].clone() for n in votes}
    new = sim.strategy.server_masks(sim.prepared, RoundPlan(1), state, votes)
    for name, mask in sim.prepared.masks.items():
        voted = votes[name] > min_votes
        assert int(new[name].sum()) == int(mask.sum())
        if int(voted.sum()) >= int(mask.sum()):
            assert not (new[name] & ~voted).any()
            # Magnitude re-prune: no dropped voted weight is larger than a kept one.
            weight = before[name].abs()
            kept, dropped = weight[new[name]], weight[voted & ~new[name]]
            if dropped.numel():
                assert dropped.max() <= kept.min()



def test_bench_cli_end_to_end(tmp_path):
    """The tiny config of the issue; cosine.stop=1 so round 2 is an adjustment round."""
    out = tmp_path / "out"
    args = [
        "bench", "--methods", "feddst,prunefl,feddst+random,prunefl+prunefl_adaptive",
        "--rounds", "4", "--clients", "4", "--clients-per-round", "2", "--local-steps", "2",
        "--density", "0.3", "-o", "cosine.interval=2", "-o", "cosine.stop=1.0",
        "-o", "cnn.width=4", "-o", "prunefl_adaptive.init_max_reconfigs=10",
        "--output", str(out), "--no-tracking", "--threads", "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert {m: r["status"] for m, r in runs.items()} == dict.fromkeys(
        ["feddst", "prunefl", "feddst+random", "prunefl+prunefl_adaptive"], "ok")
    for method in ("feddst", "prunefl", "feddst+random"):
        assert runs[method]["density"] == pytest.approx(0.3, abs=0.005)
        assert "non-zero" in runs[method]["density_basis"]
    assert runs["feddst+random"]["components"]["growth_criterion"] == "random"
    adaptive = runs["prunefl+prunefl_adaptive"]
    assert adaptive["components"]["mask_policy"] == "prunefl_adaptive"
    assert 0 < adaptive["density"] <= 1
