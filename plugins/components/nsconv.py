"""NSConv: BatchNorm-free convolutions with scaled weight standardisation (FedMef).

Each ``nn.Conv2d`` becomes an `NSConv2d` that convolves with the standardised, masked weight

    W^ = gain * (W - mean(W)) / sqrt(max(var(W) * n, 1e-4)) * mask

(statistics per output channel, over its n = fan_in entries or its active ones), and each
``nn.BatchNorm2d`` becomes ``nn.Identity``. Without BatchNorm, activations stay zero-centred
through the weights alone, which is what lets SAP drop small activations cheaply, and training
no longer depends on client batch statistics.

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

__all__ = ["NSConv", "NSConv2d", "Scaled", "replace_modules", "variance_gain"]


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


SCALING = ("auto", "all", "none")
#: Elementwise activations NSConv scales to preserve the signal's variance.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish,
    nn.Mish,
)


#: The FedMef authors' VPReLU constant (NF-Nets' value for ReLU, estimated there by sampling;
#: the exact 1 / std(relu(x)) = sqrt(2 / (1 - 1/pi)) = 1.7128585... is 0.06% smaller).
VPRELU = 1.7139588594436646


def variance_gain(activation: nn.Module) -> float:
    """gamma with Var(gamma * f(x)) = 1 for x ~ N(0, 1) (the NF-Nets rule).

    ReLU gets the authors' constant `VPRELU`; every other elementwise activation its exact
    value by quadrature on a fine grid: ReLU6 1.712859 (it almost never reaches 6), Hardtanh
    1.392036, SiLU 1.787187.
    """
    if type(activation) is nn.ReLU:
        return VPRELU
    x = torch.linspace(-12.0, 12.0, 480_001, dtype=torch.float64)
    density = torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    with torch.no_grad():
        y = activation(x.clone()).double()
    mean = torch.trapezoid(y * density, x)
    second = torch.trapezoid(y * y * density, x)
    return float((second - mean * mean).rsqrt())


class Scaled(nn.Module):
    """``gain * activation(x)``: a variance-preserving activation (nothing extra is saved)."""

    def __init__(self, activation: nn.Module, gain: float) -> None:
        super().__init__()
        self.activation = activation
        self.gain = gain

    def extra_repr(self) -> str:
        return f"gain={self.gain:.10g}"

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x) * self.gain


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
      only (and the scale preserves the variance over the active fan-in). Which of the two the
      paper means is not confirmed; on sparse digits runs ``"active"`` trains markedly better
      (docs/methods.md).
    - ``recompute``: recompute W^ in backward so nothing weight-sized is saved (default);
      ``False`` is the textbook differentiable form, for ablations.
    - ``scale_activations``: which elementwise activations become `Scaled` by their
      `variance_gain`. Without BatchNorm a plain activation shrinks the signal's second moment
      at every layer (ReLU halves it): a 17-block MobileNetV2 starts with logits of RMS ~1e-4
      on unit-variance input. ``"auto"`` (default) does what the authors' BN-free models do:
      their MobileNetV2 scales its activations (VPReLU), their ResNet keeps plain ReLU, where
      the residual sums already double the variance each block ReLU halves (scaled, ResNet18's
      logits grow 50-fold over BatchNorm's). So ``auto`` scales every activation but plain
      ``nn.ReLU``; ``"all"`` and ``"none"`` are there for ablations. ``benchmarks/init_signal.py``
      measures the logits' RMS of each built-in model both ways.
    """

    # The FedMef authors' code keeps the standardised weight W^ for backward (textbook autograd).
    accountings = {"paper": {"recompute": False}}

    def __init__(
        self, stats: str = "all", recompute: bool = True, scale_activations: str = "auto"
    ) -> None:
        if stats not in STATS:
            raise FedpruneError(f"nsconv.stats must be one of {', '.join(STATS)}, not {stats!r}")
        if scale_activations not in SCALING:
            raise FedpruneError(f"nsconv.scale_activations must be one of {', '.join(SCALING)}, "
                                f"not {scale_activations!r}")
        self.stats = stats
        self.recompute = as_bool(recompute, "nsconv.recompute")
        self.scaling = scale_activations

    def apply(self, model: nn.Module) -> None:
        for module in model.modules():
            if type(module) is nn.Conv2d:
                NSConv2d.convert(module, self.stats, self.recompute)
        replace_modules(model, lambda m: nn.Identity() if type(m) is nn.BatchNorm2d else None)
        if self.scaling != "none":
            gains: dict[tuple, float] = {}
            skip = (nn.ReLU,) if self.scaling == "auto" else ()

            def scaled(module: nn.Module) -> nn.Module | None:
                if type(module) not in ACTIVATIONS or type(module) in skip:
                    return None
                key = (type(module), repr(module))
                if key not in gains:
                    gains[key] = variance_gain(module)
                return Scaled(module, gains[key])

            replace_modules(model, scaled)
