"""SAP (scaled activation pruning, FedMef): conv inputs kept sparse for backward.

Each convolution (and, with ``linear=True``, each linear layer) computes its forward from the full
input x, but keeps for backward only the top (1 - gamma) fraction of |x| over the whole input
tensor. Backward rebuilds x~ (x there, zero elsewhere), computes the weight gradient from x~ and
the input gradient exactly (it needs only the weight).

Storage is the kept values plus a 1-bit mask packed 8 per byte: (1 - gamma) + 1/32 of the dense
tensor with float32 values. Values plus int32 indices, the FedMef authors' storage, cost as much as
the dense tensor at gamma = 0.5. ``values="bfloat16"`` halves the values again.

Threshold: an exact k-th value over the whole tensor dominates a CPU step, so by default the
threshold is the k-th value of a sample of |x| taken at a jittered stride (one uniformly random
entry per block of numel / sample entries). The sample is unbiased for any layout, where a fixed
stride can alias with the feature-map width (a stride of 64 on 32-wide maps sees one column).
Entries equal to the threshold are dropped, so ties (the zeros of a ReLU output) never push the
kept fraction above the target; dropping a zero costs nothing, as x~ is exact there.

One copy per input: where two layers read the same tensor (ResNet's downsample and the block's
first conv), the encoding is cached by the tensor's identity and version for as long as the tensor
lives, so both layers save the very same tensors (one copy in memory; the meter deduplicates
by storage).

Layers: plain ``nn.Conv2d`` (and, with ``linear``, ``nn.Linear``) become the core's
`fedprune.ops.layers.CodecConv2d` / `CodecLinear` by swapping their class in place (parameters,
names and hooks untouched); every `CodecConv2d` (a transform's layer too, e.g. NSConv's, which
keeps its fused recompute form) gets this codec as its ``input_codec``. In the engine's growth
pass and without autograd, layers run uncompressed.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

import fedprune
from fedprune.errors import FedpruneError
from fedprune.ops.bits import pack_bits, unpack_bits
from fedprune.ops.layers import CodecConv2d, CodecLinear
from fedprune.options import as_bool

__all__ = ["SAP"]

THRESHOLDS = ("estimate", "exact")
VALUES = {"float32": None, "bfloat16": torch.bfloat16}


def _evict(cache: dict, key: int, _ref: Any) -> None:
    cache.pop(key, None)


class SAP(fedprune.ActivationCompressor):
    """Activation compressor ``sap``; also the codec the converted layers call.

    Options:

    - ``gamma``: fraction of each input's entries dropped (0 <= gamma < 1).
    - ``threshold``: ``"estimate"`` (k-th value of a ``sample``-entry sample) or ``"exact"``
      (k-th value of the whole tensor).
    - ``values``: ``"float32"`` keeps the kept values at the input's precision; ``"bfloat16"``
      rounds them to bf16 (the weight gradient then sees the rounded values).
    - ``linear``: compress linear layers' inputs too (the classifier included).
    - ``sample``: sample size of the estimate; inputs no larger are thresholded exactly.
    - ``seed``: seed of the sampling generator (private, so sampling leaves torch's global
      random stream alone).
    """

    def __init__(
        self,
        gamma: float = 0.5,
        threshold: str = "estimate",
        values: str = "float32",
        linear: bool = False,
        sample: int = 262144,
        seed: int = 0,
    ) -> None:
        self.gamma = float(gamma)
        if not 0.0 <= self.gamma < 1.0:
            raise FedpruneError(f"sap.gamma must lie in [0, 1), not {gamma!r}")
        if threshold not in THRESHOLDS:
            raise FedpruneError(
                f"sap.threshold must be one of {', '.join(THRESHOLDS)}, not {threshold!r}"
            )
        if values not in VALUES:
            raise FedpruneError(f"sap.values must be one of {', '.join(VALUES)}, not {values!r}")
        # Keeping the largest (1 - gamma) of |x| keeps at least that share of its energy; the
        # weight gradient is declared to stay at half the corresponding cosine, sqrt(1 - gamma).
        self.min_weight_grad_cosine = 0.5 * math.sqrt(1.0 - self.gamma)
        self.threshold_method = threshold
        self.values = values
        self.linear = as_bool(linear, "sap.linear")
        self.sample = int(sample)
        if self.sample < 1:
            raise FedpruneError(f"sap.sample must be at least 1, not {sample!r}")
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._cache: dict[int, tuple[weakref.ref, int, tuple[Tensor, Tensor]]] = {}

    # Models are deep-copied and may be pickled: the cache and generator are per process.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"SAP(gamma={self.gamma}, threshold={self.threshold_method!r}, "
            f"values={self.values!r}, linear={self.linear})"
        )

    # ------------------------------------------------------------------------------- apply

    def apply(self, model: nn.Module) -> None:
        for module in model.modules():
            if type(module) is nn.Conv2d:
                module.__class__ = CodecConv2d
            elif type(module) is nn.Linear and self.linear:
                module.__class__ = CodecLinear
            if isinstance(module, (CodecConv2d, CodecLinear)) and (
                self.linear or isinstance(module, CodecConv2d)
            ):
                module.input_codec = self

    # ------------------------------------------------------------------------------- codec

    def threshold(self, magnitude: Tensor) -> Tensor | None:
        """The value t such that entries with |x| > t are kept (None: keep everything).

        ``magnitude`` is |x| flattened.
        """
        n = magnitude.numel()
        drop = int(self.gamma * n)
        if drop <= 0:
            return None
        if self.threshold_method == "exact" or n <= self.sample:
            return magnitude.kthvalue(drop).values
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        # Jittered stride: one uniformly random entry in each of `sample` equal spans.
        position = torch.arange(self.sample, dtype=torch.float32)
        position += torch.rand(self.sample, generator=self._generator)
        index = (position * (n / self.sample)).long().clamp_(max=n - 1)
        sample = magnitude[index.to(magnitude.device)]
        k = min(max(round(self.gamma * self.sample), 1), self.sample)
        return sample.kthvalue(k).values

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(kept values, packed keep-mask) of ``x``; the same tensors for the same live input."""
        key = id(x)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is x and hit[1] == x._version:
            return hit[2]
        flat = x.detach().reshape(-1)
        magnitude = flat.abs()
        t = self.threshold(magnitude)
        keep = torch.ones_like(flat, dtype=torch.bool) if t is None else magnitude > t
        del magnitude
        values = flat[keep]
        dtype = VALUES[self.values]
        if dtype is not None:
            values = values.to(dtype)
        saved = (values, pack_bits(keep))
        ref = weakref.ref(x, functools.partial(_evict, self._cache, key))
        self._cache[key] = (ref, x._version, saved)
        return saved

    def decode(self, saved: Sequence[Tensor], shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """x~: the kept values at their positions, zero elsewhere."""
        values, packed = saved
        n = math.prod(shape)
        out = torch.zeros(n, dtype=dtype, device=values.device)
        out[unpack_bits(packed, n)] = values.to(dtype)
        return out.view(shape)
