"""SAP (scaled activation pruning, FedMef): conv inputs kept sparse for backward.

Each convolution (and, with ``linear=True``, each linear layer) computes its forward from the full
input x, but keeps for backward only what x~ needs: x where |x| exceeds a threshold t, zero
elsewhere, with t the gamma-quantile of |x| over the whole input tensor. Backward rebuilds x~,
computes the weight gradient from it and the input gradient exactly (it needs only the weight).

Never more memory than the plain layer. Where the op that produced x keeps x itself for its own
backward (torch's ReLU keeps its output), or keeps a tensor s that x is an exact function of
(ReLU6 keeps its input: x = clamp(s, 0, 6)), a compressed copy would come on top of that full one.
There the layer saves x or s (the same storage: no extra byte) and backward rebuilds x, then
x~ = hardshrink(x, t) (`fedprune.ops.graph.source_of`). Elsewhere x is compressed:

- ``storage="mask"`` (default): the kept values plus a 1-bit keep-mask packed 8 per byte,
  (1 - gamma) + 1/32 of the dense float32 tensor.
- ``storage="indices"``: the kept values plus their int32 positions, the FedMef authors' storage
  (with ``values="float16"``: their accounting); as large as the dense tensor at gamma = 0.5.

Threshold: an exact quantile over the whole tensor dominates a CPU step, so by default t is the
quantile of a ``sample``-entry sample of |x|, one uniformly random entry from each of ``sample``
equal spans of the flattened input (a jittered stride: a fixed stride can alias with the
feature-map width). Positions are computed in integer arithmetic, exact for any size, from
torch's global generator, which the engine seeds per (run, round, client). Entries equal to t
are dropped (ties, such as a ReLU output's zeros, never push the kept fraction above the
target; dropping a zero costs nothing); NaN entries are kept, as hardshrink keeps them.

Speed: on float32 CPU tensors the codec runs native kernels (`fedprune.ops.native`, compiled on
first use from ``fedprune/ops/sap_kernels.cpp``) that compute exactly what the pure-torch path
computes, the same bits included; elsewhere, or where they cannot be built, the torch path runs.

One copy per input: where two layers read the same tensor (ResNet's downsample and the block's
first conv), the encoding is cached by the tensor's identity and version for as long as it lives,
so both layers save the very same tensors.

Layers: plain ``nn.Conv2d`` (and, with ``linear``, ``nn.Linear``) become the core's
`fedprune.ops.layers.CodecConv2d` / `CodecLinear` by swapping their class in place (parameters,
names and hooks untouched); every `CodecConv2d` (a transform's layer too, e.g. NSConv's, which
keeps its fused recompute form) gets this codec as its ``input_codec``. In the engine's growth
pass and without autograd, layers run uncompressed.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fedprune
from fedprune.errors import FedpruneError
from fedprune.ops import native
from fedprune.ops.bits import pack_bits, unpack_bits
from fedprune.ops.conv import Encoded
from fedprune.ops.graph import source_of
from fedprune.ops.layers import CodecConv2d, CodecLinear
from fedprune.options import as_bool, as_number

__all__ = ["SAP", "sample_positions"]

THRESHOLDS = ("estimate", "exact")
VALUES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGES = ("mask", "indices")
KERNELS = ("fedprune_sap", Path(native.__file__).with_name("sap_kernels.cpp"))


def _kernels(x: Tensor) -> Any:
    """``torch.ops.fedprune_sap`` for a float32 CPU tensor when the kernels load, else None."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not native.load(*KERNELS):
        return None
    return torch.ops.fedprune_sap


# --------------------------------------------------------------------------- the threshold


_M32 = 0xFFFFFFFF


def sample_positions(n: int, sample: int, seed: int) -> Tensor:
    """Position i of the sample: in the i-th of ``sample`` equal spans of range(n), at an offset
    from a 32-bit hash of (i, ``seed``). Integer arithmetic, exact while a span (n / sample)
    is below 2**31; the native kernels compute the same positions."""
    i = torch.arange(sample, dtype=torch.int64)
    h = (i * 0x9E3779B1 + seed).bitwise_and_(_M32)
    for _ in range(2):
        h = (h ^ (h >> 16)).mul_(0x45D9F3B).bitwise_and_(_M32)
    h ^= h >> 16
    bounds = torch.arange(sample + 1, dtype=torch.int64).mul_(n).floor_divide_(sample)
    start, span = bounds[:-1], bounds.diff()
    return start + (h * span >> 32)


def _evict(cache: dict, key: int, _ref: Any) -> None:
    cache.pop(key, None)


class SAP(fedprune.ActivationCompressor):
    """Activation compressor ``sap``; also the codec the converted layers call.

    Options:

    - ``gamma``: fraction of each input's entries dropped (0 <= gamma < 1).
    - ``threshold``: ``"estimate"`` (quantile of a ``sample``-entry sample) or ``"exact"``
      (quantile of the whole tensor).
    - ``values``: ``"float32"`` keeps the kept values at the input's precision; ``"bfloat16"``
      or ``"float16"`` rounds them (the weight gradient then sees the rounded values).
    - ``storage``: ``"mask"`` (values + 1-bit mask) or ``"indices"`` (values + int32 positions,
      the FedMef authors' storage).
    - ``linear``: compress linear layers' inputs too (the classifier included).
    - ``sample``: sample size of the estimate; inputs no larger are thresholded exactly.
    """

    # The FedMef authors' storage: kept values in float16 plus their int32 positions.
    accountings = {"paper": {"storage": "indices", "values": "float16"}}

    def __init__(
        self,
        gamma: float = 0.5,
        threshold: str = "estimate",
        values: str = "float32",
        storage: str = "mask",
        linear: bool = False,
        sample: int = 32768,
    ) -> None:
        self.gamma = float(gamma)
        if not 0.0 <= self.gamma < 1.0:
            raise FedpruneError(f"sap.gamma must lie in [0, 1), not {gamma!r}")
        for name, value, allowed in (("threshold", threshold, THRESHOLDS),
                                     ("values", values, tuple(VALUES)),
                                     ("storage", storage, STORAGES)):
            if value not in allowed:
                raise FedpruneError(
                    f"sap.{name} must be one of {', '.join(allowed)}, not {value!r}")
        # Keeping the largest (1 - gamma) of |x| keeps at least that share of its energy; the
        # weight gradient is declared to stay at half the corresponding cosine, sqrt(1 - gamma).
        self.min_weight_grad_cosine = 0.5 * math.sqrt(1.0 - self.gamma)
        self.threshold_method = threshold
        self.values = values
        self.storage = storage
        self.linear = as_bool(linear, "sap.linear")
        self.sample = int(as_number(sample, "sap.sample", integer=True))
        if not 1 <= self.sample < 2**24:
            raise FedpruneError(f"sap.sample must lie in [1, 2**24), not {sample!r}")
        self._cache: dict[int, tuple[weakref.ref, int, Encoded]] = {}
        self._left_alone: dict[str, str] = {}
        self._model: weakref.ref | None = None
        self._example: Tensor | None = None
        self._record: dict[str, str] | None = None  # set while `skipped` probes
        self._layer = ""

    # Models are deep-copied and pickled with their layers' codec: per-process state stays.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_cache={}, _model=None, _example=None, _record=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"SAP(gamma={self.gamma}, threshold={self.threshold_method!r}, "
                f"values={self.values!r}, storage={self.storage!r}, linear={self.linear})")

    # ------------------------------------------------------------------------------- apply

    def apply(self, model: nn.Module) -> None:
        self._left_alone = {}
        for name, module in model.named_modules():
            if type(module) is nn.Conv2d:
                module.__class__ = CodecConv2d
            elif type(module) is nn.Linear and self.linear:
                module.__class__ = CodecLinear
            if isinstance(module, CodecConv2d) or (self.linear and isinstance(module, CodecLinear)):
                module.input_codec = self
            elif isinstance(module, nn.Conv2d) or (self.linear and isinstance(module, nn.Linear)):
                self._left_alone[name] = (f"{type(module).__name__} has its own forward: "
                                          "not converted")
        self._model = weakref.ref(model)

    def calibrate(self, model: nn.Module, inputs: Tensor) -> None:
        """Keep the batch for `skipped`, which probes the model as it is when asked."""
        self._model = weakref.ref(model)
        self._example = inputs.detach()

    def skipped(self) -> dict[str, str]:
        """Layers not converted, and layers whose input its producer keeps in full (found by one
        forward of a copy of the model, on the batch `calibrate` got, under a forked RNG)."""
        out = dict(self._left_alone)
        model = self._model() if self._model is not None else None
        if model is None or self._example is None:
            return out
        probe = copy.deepcopy(model)
        codec = next((m.input_codec for m in probe.modules()
                      if isinstance(m, (CodecConv2d, CodecLinear))
                      and isinstance(m.input_codec, SAP)), None)
        if codec is None:
            return out

        def enter(name: str) -> Any:
            return lambda module, args: setattr(codec, "_layer", name)

        hooks = [m.register_forward_pre_hook(enter(n)) for n, m in probe.named_modules()
                 if getattr(m, "input_codec", None) is codec]
        codec._record = {}
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                probe.train()
                probe(self._example)
            out.update(codec._record)
        finally:
            codec._record = None
            for hook in hooks:
                hook.remove()
        return out

    # ------------------------------------------------------------------------------- codec

    def threshold(self, x: Tensor) -> float | None:
        """t such that the entries of ``x`` with |x| > t are kept (None: keep everything)."""
        n = x.numel()
        drop = int(self.gamma * n)
        if drop <= 0:
            return None
        flat = x.detach().reshape(-1)
        kernels = _kernels(flat)
        if self.threshold_method == "exact" or n <= self.sample:
            if kernels is not None:
                return kernels.kth(flat.contiguous(), drop)
            return float(flat.abs().kthvalue(drop).values)
        seed = int(torch.randint(_M32 + 1, ()))  # the one draw from torch's global generator
        k = min(max(round(self.gamma * self.sample), 1), self.sample)
        if kernels is not None:
            return kernels.sample_kth(flat.contiguous(), self.sample, seed, k)
        index = sample_positions(n, self.sample, seed).to(flat.device)
        return float(flat.index_select(0, index).abs_().kthvalue(k).values)

    def encode(self, x: Tensor) -> Encoded:
        """What backward needs to rebuild x~. Where the op that made x keeps x, or a tensor s
        with x = f(s) (ReLU6 keeps its input), for its own backward: s, with f as context
        (0 extra bytes). Where nothing is dropped and values stay float32: x. Else the kept
        values and their mask or indices, the same tensors for the same live, unchanged
        input."""
        source = source_of(x)
        if source is not None:
            node, kept, rebuild = source
            if self._record is not None:
                how = "saved as is" if rebuild is None else "x rebuilt from the input it keeps"
                self._record[self._layer] = (
                    f"input kept in full by {type(node).__name__}: {how} (0 extra bytes), "
                    "x~ rebuilt in backward")
            return Encoded((kept,), rebuild)
        if int(self.gamma * x.numel()) <= 0 and self.values == "float32":
            return Encoded((x,))
        key = id(x)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is x and hit[1] == x._version:
            return hit[2]
        flat = x.detach().reshape(-1)
        t = self.threshold(flat)
        t = -1.0 if t is None else t  # nothing to drop: every entry kept, at ``values``
        kernels = _kernels(flat) if self.storage == "mask" else None
        if kernels is not None:
            values, where = kernels.encode(flat.contiguous(), t)
        else:
            keep = torch.le(flat.abs(), t).logical_not_()  # NaN kept, as by hardshrink
            values = flat.masked_select(keep)
            where = pack_bits(keep) if self.storage == "mask" else (
                keep.nonzero().view(-1).to(torch.int32))
        dtype = VALUES[self.values]
        saved = Encoded((values if dtype is None else values.to(dtype), where))
        ref = weakref.ref(x, functools.partial(_evict, self._cache, key))
        self._cache[key] = (ref, x._version, saved)
        return saved

    def decode(self, saved: Encoded, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """x~: the kept entries of x at their positions, zero elsewhere."""
        if len(saved.tensors) == 1:  # x, or what x is rebuilt from: threshold it now
            kept, rebuild = saved.tensors[0].detach(), saved.context
            x = kept if rebuild is None else rebuild(kept)
            t = self.threshold(x)
            if t is None:
                return x
            if rebuild is None:  # x itself, shared with another node: never written
                return F.hardshrink(x, t)
            kernels = _kernels(x)  # x is this backward's own: pruned in place
            if kernels is not None and x.is_contiguous():
                return kernels.shrink_(x, t)
            return x.masked_fill_(torch.le(x.abs(), t), 0)  # NaN kept, as by hardshrink
        values, where = saved.tensors
        n = math.prod(shape)
        if self.storage == "indices":
            out = values.new_zeros(n, dtype=dtype)
            return out.index_copy_(0, where.long(), values.to(dtype)).view(shape)
        kernels = _kernels(values.new_empty(0, dtype=dtype))
        if kernels is not None:
            return kernels.decode(values.float().contiguous(), where, n).view(shape)
        keep = unpack_bits(where, n)
        index = torch.int32 if n < 2**31 else torch.int64
        rank = torch.cumsum(keep, 0, dtype=index).mul_(keep)  # 1-based; 0 where dropped
        table = torch.cat([values.new_zeros(1), values]).to(dtype)
        return table.index_select(0, rank).view(shape)
