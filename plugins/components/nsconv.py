"""NSConv: BatchNorm-free convolutions with scaled weight standardisation (FedMef).

Each ``nn.Conv2d`` becomes an `NSConv2d` that convolves with the standardised, masked weight

    W^ = gain * (W - mean(W)) / sqrt(max(var(W) * fan_in, 1e-4)) * mask

(statistics per output channel), and each ``nn.BatchNorm2d`` becomes ``nn.Identity``. Without
BatchNorm, activations stay zero-centred through the weights alone, which is what lets SAP drop
small activations cheaply, and training no longer depends on client batch statistics.

Memory: written out with differentiable ops, the standardisation makes autograd keep two extra
weight-sized tensors per layer for backward, and the convolution keeps W^ itself. With
``recompute=True`` (the default) the standardisation and the convolution form one autograd
function that saves only the input, the raw weight, the gain, the mask (parameters and the
engine's mask: nothing weight-sized of its own) and four per-channel statistics, and recomputes W^
in backward, with a closed-form gradient of the standardisation
(`fedprune.ops.conv.conv2d_function`). `NSConv2d` is a `fedprune.ops.layers.CodecConv2d`, so a
compressor of its input (SAP) sets its ``input_codec`` and the fused layer still saves nothing
weight-sized; neither component knows the other.

Growth: the engine scores growth candidates by the gradient w.r.t. the weight a layer actually
uses. Through the standardisation every pruned position of an output channel gets the same raw
gradient, so `NSConv2d` is a `fedprune.ops.layers.GrowthCapture` layer: in the growth pass its
derived weight is the masked standardised W^, whose gradient dL/dW^ is informative at every
position, pruned ones included (the weight gradient RigL-style growth ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fedprune
from fedprune.errors import FedpruneError
from fedprune.ops.conv import STATS, ConvSpec, conv2d_function, standardize
from fedprune.ops.layers import CodecConv2d, MaskedWeight
from fedprune.options import as_bool

__all__ = ["NSConv", "NSConv2d", "replace_modules"]


class NSConv2d(CodecConv2d, MaskedWeight):
    """``nn.Conv2d`` with a scaled, standardised, masked weight and a per-channel ``gain``.

    Made from an existing convolution by `NSConv2d.convert`, which keeps its ``weight`` and
    ``bias`` parameters (same objects, same names).
    """

    gain: nn.Parameter
    stats: str
    recompute: bool

    @classmethod
    def convert(cls, conv: nn.Conv2d, stats: str = "all", recompute: bool = True) -> NSConv2d:
        """Turn ``conv`` into this class in place (parameters, hooks and names are kept)."""
        if stats not in STATS:
            raise FedpruneError(f"nsconv: stats must be one of {STATS}, not {stats!r}")
        conv.__class__ = cls
        assert isinstance(conv, NSConv2d)
        w = conv.weight
        conv.gain = nn.Parameter(torch.ones(w.shape[0], 1, 1, 1, dtype=w.dtype, device=w.device))
        conv.stats = stats
        conv.recompute = recompute
        return conv

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stats={self.stats}, recompute={self.recompute}"

    def standardized_weight(self) -> Tensor:
        """W^ before masking (differentiable)."""
        return standardize(self.weight, self.gain, self.weight_mask, self.stats)

    def derived_weight(self) -> Tensor:
        w = self.standardized_weight()
        mask = self.weight_mask
        return w if mask is None else w * mask

    def fused(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        if self.recompute:
            spec = ConvSpec(self.stride, padding, self.dilation, self.groups, self.stats)
            return conv2d_function(x, self.weight, self.bias, spec, self.gain, self.weight_mask,
                                   self.input_codec)
        # Textbook form: autograd keeps the standardisation's intermediates and W^.
        w = self.derived_weight()
        if self.input_codec is None:
            return F.conv2d(x, w, self.bias, self.stride, padding, self.dilation, self.groups)
        spec = ConvSpec(self.stride, padding, self.dilation, self.groups)
        return conv2d_function(x, w, self.bias, spec, codec=self.input_codec)


def replace_modules(model: nn.Module, factory) -> int:
    """Replace each submodule for which ``factory`` returns a new module; return the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = factory(child)
            if new is not None and new is not child:
                setattr(parent, name, new)
                count += 1
    return count


class NSConv(fedprune.ModelTransform):
    """Model transform ``nsconv``: every ``nn.Conv2d`` -> `NSConv2d`, ``nn.BatchNorm2d`` removed.

    Options:

    - ``stats``: ``"all"`` takes the standardisation's mean and variance over every entry,
      zeros included (the FedMef authors' code); ``"active"`` over the mask's active entries
      only. Which of the two the paper means is not confirmed.
    - ``recompute``: recompute W^ in backward so nothing weight-sized is saved (default);
      ``False`` is the textbook differentiable form, for ablations.
    """

    def __init__(self, stats: str = "all", recompute: bool = True) -> None:
        if stats not in STATS:
            raise FedpruneError(f"nsconv.stats must be one of {', '.join(STATS)}, not {stats!r}")
        self.stats = stats
        self.recompute = as_bool(recompute, "nsconv.recompute")

    def apply(self, model: nn.Module) -> None:
        for module in model.modules():
            if type(module) is nn.Conv2d:
                NSConv2d.convert(module, self.stats, self.recompute)
        replace_modules(model, lambda m: nn.Identity() if type(m) is nn.BatchNorm2d else None)
