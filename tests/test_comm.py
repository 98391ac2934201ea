"""Communication accounting: sparse values, the cheaper position encoding, and when positions
travel at all (only when the receiver does not know the mask)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse_components import Recorder, make_simulation

from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import Schedule


def expected_state_bytes(state, masks, positions):
    """Dense tensors as they are; masked ones as values (+ bitmap or int32 indices)."""
    total = 0
    for name, tensor in state.items():
        size, numel = tensor.element_size(), tensor.numel()
        if name not in masks:
            total += numel * size
            continue
        nnz = int(masks[name].sum())
        where = min(math.ceil(numel / 8), 4 * nnz) if positions else 0
        total += min(numel * size, nnz * size + where)
    return total


# ------------------------------------------------------------------------------------ formulas


def test_positions_pick_the_cheaper_encoding():
    assert comm.positions_bytes(1000, 10) == 40  # 10 int32 indices beat a 125-byte bitmap
    assert comm.positions_bytes(1000, 500) == 125  # the bitmap beats 2000 bytes of indices
    assert comm.positions_bytes(64, 2) == 8 and comm.positions_bytes(64, 3) == 8
    assert comm.positions_bytes(1000, 0) == 0


@settings(max_examples=50, deadline=None)
@given(numel=st.integers(1, 10**7), share=st.floats(0, 1),
       value_bytes=st.sampled_from([1, 2, 4, 8]))
def test_sparse_bytes_never_exceed_dense(numel, share, value_bytes):
    nnz = round(share * numel)
    dense = numel * value_bytes
    with_positions = comm.sparse_bytes(numel, nnz, value_bytes)
    without = comm.sparse_bytes(numel, nnz, value_bytes, positions=False)
    assert comm.positions_bytes(numel, nnz) == min(math.ceil(numel / 8), 4 * nnz)
    assert without == nnz * value_bytes <= with_positions <= dense
    assert with_positions == min(dense, nnz * value_bytes + comm.positions_bytes(numel, nnz))
    assert comm.sparse_bytes(numel, numel, value_bytes) == dense  # a full tensor travels dense


def test_state_bytes_counts_masked_tensors_sparse_and_the_rest_dense(digits):
    sim = make_simulation("prunefl", digits)
    for positions in (True, False):
        state, masks = sim.prepared.state, sim.prepared.masks
        assert comm.state_bytes(state, masks, positions) == expected_state_bytes(
            state, masks, positions)
    dense = sum(t.numel() * t.element_size() for t in sim.prepared.state.values())
    assert comm.state_bytes(sim.prepared.state, None) == dense
    assert comm.state_bytes(sim.prepared.state, sim.prepared.masks) < dense


# ------------------------------------------------------------------------------- in a round


def _reports(recorder):
    return [(c["round"], c["client"]) for c in recorder.of("fedprune_client_trained")]


def test_unchanged_mask_uploads_values_only_and_downloads_positions(digits):
    recorder = Recorder()
    sim = make_simulation("prunefl", digits, recorder=recorder)  # round 1 adjusts nothing
    masks, state = sim.prepared.masks, sim.prepared.state
    metrics = sim.step(1, [0, 1])
    up = expected_state_bytes(state, masks, positions=False)
    down = expected_state_bytes(state, masks, positions=True)
    for _, report in _reports(recorder):
        assert (report.upload_bytes, report.download_bytes) == (up, down)
    assert metrics["round_upload_bytes"] == 2 * up and metrics["round_download_bytes"] == 2 * down


def test_a_client_that_changed_its_mask_uploads_positions(digits):
    recorder = Recorder()
    sim = make_simulation("feddst", digits, recorder=recorder, rounds=2,
                          options={"cosine.interval": 1, "cosine.stop": 1.0})
    masks, state = sim.prepared.masks, sim.prepared.state
    sim.step(1, [0, 1])  # an adjustment round: every client prunes and grows
    changed = expected_state_bytes(state, masks, positions=True)  # same counts per layer
    sim.step(2, [2, 3])  # no adjustment in the last round
    unchanged = expected_state_bytes(sim.prepared.state, sim.prepared.masks, positions=False)
    by_round = {}
    for round_, report in _reports(recorder):
        by_round.setdefault(round_, set()).add(report.upload_bytes)
    assert by_round == {1: {changed}, 2: {unchanged}}
    assert changed > unchanged


def test_dense_squared_gradients_upload_full_score_tensors(digits):
    recorder = Recorder()
    sim = make_simulation("prunefl", digits, recorder=recorder, rounds=2,
                          options={"cosine.interval": 1, "cosine.stop": 1.0})
    masks, state = sim.prepared.masks, sim.prepared.state
    sim.step(1, [0, 1])
    scores = sum(m.numel() * 4 for m in masks.values())  # float32, dense: no positions
    expected = expected_state_bytes(state, masks, positions=False) + scores
    assert {r.upload_bytes for _, r in _reports(recorder)} == {expected}


def test_top_k_growth_scores_upload_k_values_and_their_positions(digits):
    recorder = Recorder()
    options = {"cosine.interval": 1, "cosine.stop": 1.0, "server_adjust.upload": "topk"}
    sim = make_simulation("prunefl+gradient", digits, recorder=recorder, rounds=2, options=options)
    masks, state = sim.prepared.masks, sim.prepared.state
    counts = M.adjustment_counts(masks, sim.prepared.parts.one(Schedule).fraction(1, 2))
    sim.step(1, [0, 1])
    scores = 0
    for name, mask in masks.items():
        k = min(counts[name], int((~mask).sum()))
        scores += min(mask.numel() * 4, k * 4 + min(math.ceil(mask.numel() / 8), 4 * k))
    expected = expected_state_bytes(state, masks, positions=False) + scores
    assert {r.upload_bytes for _, r in _reports(recorder)} == {expected}
    dense_scores = sum(m.numel() * 4 for m in masks.values())
    assert scores < dense_scores


@settings(max_examples=40, deadline=None)
@given(numel=st.integers(1, 300), density=st.floats(0, 1), positions=st.booleans(),
       seed=st.integers(0, 2**16))
def test_encoded_messages_are_exactly_the_bytes_reported(numel, density, positions, seed):
    """What travels (encode_state's arrays) is what the accounting counts, and decodes back."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(numel, generator=gen) < density
    state = {"w": torch.randn(numel, generator=gen) * mask, "b": torch.randn(3, generator=gen)}
    masks = {"w": mask}
    message = comm.encode_state(state, masks, positions)
    assert comm.payload_bytes(message) == comm.state_bytes(state, masks, positions)
    decoded = comm.decode_state(message, state, masks)
    assert all(torch.equal(decoded[k], state[k]) for k in state)
