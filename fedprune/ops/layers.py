"""Layer protocols the engine talks to, and the layers compressors and transforms share.

Protocols are declared as mixin classes with class-attribute defaults, so the engine asks
``isinstance`` rather than probing attributes:

- `MaskedWeight`: a layer whose forward needs its weight's mask (a standardisation would otherwise
  spread weight into pruned positions). The engine keeps ``weight_mask`` set (`bind_masks`).
- `GrowthCapture`: a layer whose forward uses a weight derived from its parameter. While
  ``capture_effective_weight`` is True (the engine's growth pass, `growth_gradients`), forward
  keeps that derived weight as ``effective_weight`` with its gradient retained, so growth ranks
  dL/dW_eff, which is informative at pruned positions too.

`CodecConv2d` and `CodecLinear` are ``nn.Conv2d`` and ``nn.Linear`` whose saved input goes
through ``input_codec`` (None: kept as is). A compressor sets the codec; a transform subclasses
`CodecConv2d` to derive its weight. Neither needs to know the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedprune.ops.conv import (
    ConvSpec,
    InputCodec,
    conv2d_function,
    conv_input_padding,
    linear_function,
    needs_grad,
)

__all__ = [
    "CodecConv2d",
    "CodecLinear",
    "GrowthCapture",
    "MaskedWeight",
    "bind_masks",
    "growth_gradients",
]


class MaskedWeight:
    """Mixin: forward reads ``weight_mask`` (bool, the weight's shape; None when dense)."""

    weight_mask: Tensor | None = None


class GrowthCapture:
    """Mixin: forward can expose the derived weight it convolves with (see the module doc)."""

    capture_effective_weight: bool = False
    effective_weight: Tensor | None = None


def _unbatched(x: Tensor, dims: int) -> bool:
    return x.dim() == dims - 1


class CodecConv2d(nn.Conv2d, GrowthCapture):
    """``nn.Conv2d`` through `conv2d_function`: the input is saved via ``input_codec``.

    Subclasses derive the weight (`derived_weight`) and choose the fused form (`fused`).
    Made from an existing convolution by swapping its class, so parameters keep their identity.
    """

    input_codec: InputCodec | None = None

    def derived_weight(self) -> Tensor:
        """The weight the convolution uses, differentiable w.r.t. the parameters."""
        return self.weight

    def fused(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        """The training forward through one autograd function (batched input, numeric padding)."""
        spec = ConvSpec(self.stride, padding, self.dilation, self.groups)
        return conv2d_function(x, self.weight, self.bias, spec, codec=self.input_codec)

    def forward(self, x: Tensor) -> Tensor:
        if self.capture_effective_weight:
            w = self.derived_weight().view_as(self.weight)  # a non-leaf whose .grad is kept
            w.retain_grad()
            self.effective_weight = w
            return self._conv_forward(x, w, self.bias)
        self.effective_weight = None
        if not needs_grad(x, self):
            with torch.no_grad():
                return self._conv_forward(x, self.derived_weight(), self.bias)
        if _unbatched(x, 4):  # nn.Conv2d accepts (C, H, W)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x, padding = conv_input_padding(self, x)
        return self.fused(x, padding)


class CodecLinear(nn.Linear, GrowthCapture):
    """``nn.Linear`` whose input is saved via ``input_codec`` (None: torch's own linear)."""

    input_codec: InputCodec | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.capture_effective_weight:
            w = self.weight.view_as(self.weight)
            w.retain_grad()
            self.effective_weight = w
            return F.linear(x, w, self.bias)
        self.effective_weight = None
        if self.input_codec is None or not needs_grad(x, self):
            return super().forward(x)
        return linear_function(x, self.weight, self.bias, self.input_codec)


def bind_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> None:
    """Give every `MaskedWeight` layer its current mask (None: dense)."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedWeight):
            key = f"{name}.weight" if name else "weight"
            module.weight_mask = masks.get(key) if masks else None


def growth_gradients(
    model: nn.Module, prunable: Mapping[str, nn.Conv2d | nn.Linear], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """Dense gradient of one mini-batch's loss w.r.t. the weight each layer actually uses.

    `GrowthCapture` layers report the gradient of their derived weight; others ``weight.grad``.
    Parameter gradients are cleared before and after.
    """
    capturing = [m for m in prunable.values() if isinstance(m, GrowthCapture)]
    for capture in capturing:
        capture.capture_effective_weight = True
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        out = {}
        for name, module in prunable.items():
            effective = module.effective_weight if isinstance(module, GrowthCapture) else None
            grad = effective.grad if effective is not None else module.weight.grad
            if grad is None:
                grad = torch.zeros_like(module.weight)
            out[name] = grad.detach().clone()
        return out
    finally:
        for capture in capturing:
            capture.capture_effective_weight = False
            capture.effective_weight = None
        model.zero_grad(set_to_none=True)
