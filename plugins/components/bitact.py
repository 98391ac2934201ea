"""1-bit activations: ReLU, ReLU6 and Hardtanh that keep one bit per entry for backward.

The gradient of a clamp is the incoming gradient where the input lay strictly inside the clamp's
range and zero elsewhere, so one bit per entry is all backward needs. torch's own modules keep a
full tensor instead (ReLU its output; in-place ReLU6 a copy of its input), which in ResNet18 and
MobileNetV2 is a large share of the saved activations, and which makes SAP's compressed copy of a
conv input an extra copy rather than the only one. Component ``bitact`` swaps the modules' class in
place (parameters and names untouched) for subclasses whose autograd function saves the mask
packed 8 per byte. It changes no result: forward calls torch's own functions and the gradient is
bit-identical to torch's (NaN inputs included). Any method can use it (``feddst+bitact``).

Only modules are converted: activations called functionally (``F.relu``) in a model's ``forward``
are out of reach of a module transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fedprune
from fedprune.ops.bits import pack_bits, unpack_bits

__all__ = ["BitAct", "BitHardtanh", "BitReLU", "BitReLU6"]


class _BitClamp(torch.autograd.Function):
    """relu / hardtanh whose backward needs only the packed "inside the range" bits."""

    @staticmethod
    def forward(ctx, x, lower, upper, inplace):
        # The complement of torch's own test (threshold_backward / hardtanh_backward), so NaN
        # inputs pass their gradient exactly as they do in torch.
        dead = x <= lower if upper is None else (x <= lower).logical_or_(x >= upper)
        ctx.save_for_backward(pack_bits(dead.logical_not_()))
        ctx.shape = x.shape
        del dead
        if upper is None:
            out = torch.relu_(x) if inplace else torch.relu(x)
        else:
            out = F.hardtanh(x, lower, upper, inplace)
        if inplace:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        alive = unpack_bits(packed, grad.numel()).view(ctx.shape).view(torch.uint8)
        # grad where alive (1 > 0), exactly 0 elsewhere: torch's own ReLU backward kernel, much
        # faster than masked_fill or where on the CPU.
        return torch.ops.aten.threshold_backward(grad, alive, 0), None, None, None


def _tracked(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class BitReLU(nn.ReLU):
    """``nn.ReLU`` saving a 1-bit mask for backward."""

    def forward(self, x: Tensor) -> Tensor:
        if not _tracked(x):
            return F.relu(x, self.inplace)
        return _BitClamp.apply(x, 0.0, None, self.inplace)


def _hardtanh_forward(self: nn.Hardtanh, input: Tensor) -> Tensor:
    if not _tracked(input):
        return F.hardtanh(input, self.min_val, self.max_val, self.inplace)
    return _BitClamp.apply(input, self.min_val, self.max_val, self.inplace)


class BitHardtanh(nn.Hardtanh):
    """``nn.Hardtanh`` saving a 1-bit mask for backward."""

    def forward(self, input: Tensor) -> Tensor:
        return _hardtanh_forward(self, input)


class BitReLU6(nn.ReLU6):
    """``nn.ReLU6`` saving a 1-bit mask (0 < x < 6) for backward."""

    def forward(self, input: Tensor) -> Tensor:
        return _hardtanh_forward(self, input)


#: Exact module type -> its 1-bit subclass (exact types, so user subclasses keep their forward).
CONVERSIONS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: BitReLU,
    nn.ReLU6: BitReLU6,
    nn.Hardtanh: BitHardtanh,
}


class BitAct(fedprune.ActivationCompressor):
    """Activation compressor ``bitact``: ReLU / ReLU6 / Hardtanh modules keep 1 bit per entry.

    The modules' class is swapped in place, so the model's structure, parameters and names are
    unchanged. No options. Gradients are exact.
    """

    min_weight_grad_cosine = 1.0 - 1e-6

    def apply(self, model: nn.Module) -> None:
        for module in model.modules():
            new = CONVERSIONS.get(type(module))
            if new is not None:
                module.__class__ = new
