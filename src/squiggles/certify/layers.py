"""A network as a chain of operations that bound propagation knows: affine maps, ReLU and max pooling.

`chain_of(model, in_shape)` unrolls nested `nn.Sequential` models into this chain. Each affine operation can
push an interval forward (``interval``, in centre-radius form, which is exact for one affine map) and pull a
linear bound backward (``back``: ``A -> A W``, plus the bias term), which is all that IBP and CROWN need. Every
operation uses the module's own parameters through differentiable torch functions, so certified training can
backpropagate through the bounds. A layer outside the list is refused by name, before any work.

Example:
    >>> import torch
    >>> from torch import nn
    >>> chain = chain_of(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (1, 2, 2))
    >>> [type(op).__name__ for op in chain]
    ['Reshape', 'Dense', 'Relu', 'Dense']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.errors import ModelError

Shape = tuple[int, ...]
SUPPORTED = ("Linear", "Conv2d", "ReLU", "Flatten", "Normalize", "AvgPool2d", "MaxPool2d (by its intervals)",
             "BatchNorm1d/2d (eval mode)", "Dropout (eval mode)", "Identity", "nn.Sequential of these")


class UnsupportedLayer(ModelError):
    """The model holds a layer that bound propagation cannot bound."""


@dataclass
class Dense:
    """``x @ W.T + b`` on flat features."""

    layer: nn.Linear
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def interval(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer(c), F.linear(r, self.layer.weight.abs())

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``a``: B x S x out -> (B x S x in, B x S)."""
        bias = a @ self.layer.bias if self.layer.bias is not None else a.new_zeros(a.shape[:2])
        return a @ self.layer.weight, bias


@dataclass
class Conv:
    """A 2-D convolution; its transpose is ``conv_transpose2d`` with the output padding that restores the input."""

    layer: nn.Conv2d
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def interval(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        conv = self.layer
        radius = F.conv2d(r, conv.weight.abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv(c), radius

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        conv = self.layer
        b, s = a.shape[:2]
        flat = a.reshape(b * s, *self.out_shape)
        pad = [self.in_shape[i + 1] - _transposed_size(self.out_shape[i + 1], conv, i) for i in range(2)]
        back = F.conv_transpose2d(flat, conv.weight, None, conv.stride, conv.padding, tuple(pad), conv.groups,
                                  conv.dilation)
        bias = (a.sum((3, 4)) @ conv.bias) if conv.bias is not None else a.new_zeros(b, s)
        return back.reshape(b, s, *self.in_shape), bias


def _transposed_size(out: int, conv: nn.Conv2d, i: int) -> int:
    stride, pad, dil = conv.stride[i], conv.padding[i], conv.dilation[i]
    return (out - 1) * stride - 2 * pad + dil * (conv.kernel_size[i] - 1) + 1


@dataclass
class ScaleShift:
    """``x * scale + shift`` with per-channel (dim 1) or scalar factors: `Normalize` and eval-mode batch norm."""

    scale: Tensor
    shift: Tensor
    in_shape: Shape
    out_shape: Shape

    def _view(self, v: Tensor, ndim: int) -> Tensor:
        return v.view(1, -1, *([1] * (ndim - 2))) if v.numel() > 1 else v.reshape(())

    def forward(self, x: Tensor) -> Tensor:
        return x * self._view(self.scale, x.dim()) + self._view(self.shift, x.dim())

    def interval(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(c), r * self._view(self.scale, r.dim()).abs()

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        # a is B x S x C x ...: the channel axis is 2 here.
        scale, shift = (self._view(v, a.dim() - 1).unsqueeze(0) for v in (self.scale, self.shift))
        shift_full = shift.expand(1, 1, *self.in_shape) if shift.dim() else shift
        return a * scale, (a * shift_full).flatten(2).sum(2)


@dataclass
class AvgPool:
    """Average pooling: a depthwise convolution with equal, positive weights."""

    layer: nn.AvgPool2d
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def interval(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer(c), self.layer(r)

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        # Pooling is linear with no bias; its transpose spreads each coefficient evenly over its window.
        b, s = a.shape[:2]
        back = _pool_transpose(self.layer, a.reshape(b * s, *self.out_shape), self.in_shape)
        return back.reshape(b, s, *self.in_shape), a.new_zeros(b, s)


def _pool_transpose(layer: nn.AvgPool2d, a: Tensor, in_shape: Shape) -> Tensor:
    channels = in_shape[0]
    k = _pair(layer.kernel_size)
    stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
    pad = _pair(layer.padding)
    if layer.ceil_mode or (any(pad) and not layer.count_include_pad) or layer.divisor_override is not None:
        raise UnsupportedLayer("AvgPool2d with ceil_mode, count_include_pad=False or divisor_override is not "
                               "supported by bound propagation; use the defaults")
    weight = torch.full((channels, 1, *k), 1.0 / (k[0] * k[1]), dtype=a.dtype, device=a.device)
    out_hw = a.shape[-2:]
    extra = [in_shape[i + 1] - ((out_hw[i] - 1) * stride[i] - 2 * pad[i] + k[i]) for i in range(2)]
    full = F.conv_transpose2d(a, weight, None, stride, pad, 0, channels)
    return F.pad(full, (0, extra[1], 0, extra[0]))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class Reshape:
    """`nn.Flatten` (or any reshape between the previous op's shape and the next's)."""

    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), *self.out_shape)

    def interval(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(c), self.forward(r)

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        return a.reshape(*a.shape[:2], *self.in_shape), a.new_zeros(a.shape[:2])


@dataclass
class Relu:
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_min(0)


@dataclass
class MaxPool:
    """Max pooling: monotone, so its interval is the pool of each end (CROWN stops there and uses it)."""

    layer: nn.MaxPool2d
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


Op = Dense | Conv | ScaleShift | AvgPool | Reshape | Relu | MaxPool
AFFINE = (Dense, Conv, ScaleShift, AvgPool, Reshape)


def chain_of(model: nn.Module, in_shape: Shape) -> list[Op]:
    """The model as a list of operations, checked layer by layer on a zero input of ``in_shape``."""
    if not isinstance(model, nn.Module):
        raise UnsupportedLayer("bound propagation needs an nn.Module (an nn.Sequential of supported layers); "
                               f"got {type(model).__name__}")
    param = next(model.parameters(), None)
    x = torch.zeros(1, *in_shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    ops: list[Op] = []
    with torch.no_grad():
        for name, layer in _leaves(model, ""):
            _refuse_training_mode(name, layer)  # before the forward, which would update batch-norm statistics
            y = layer(x)
            op = _op_for(name, layer, tuple(x.shape[1:]), tuple(y.shape[1:]))
            if op is not None:
                ops.append(op)
            x = y
    return ops


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or "model", module)]


def _refuse_training_mode(name: str, layer: nn.Module) -> None:
    if isinstance(layer, (nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d)) and layer.training:
        raise UnsupportedLayer(f"layer {name} ({type(layer).__name__}) is in training mode; call model.eval() "
                               "before bounding")


def _op_for(name: str, layer: nn.Module, in_shape: Shape, out_shape: Shape) -> Op | None:
    from squiggles.models import Normalize

    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return None
    if isinstance(layer, nn.Linear):
        return Dense(layer, in_shape, out_shape)
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UnsupportedLayer(f"layer {name} (Conv2d): only numeric zero padding is supported by bound "
                                   f"propagation, got padding={layer.padding!r}, padding_mode={layer.padding_mode!r}")
        return Conv(layer, in_shape, out_shape)
    if isinstance(layer, nn.ReLU):
        return Relu(in_shape, out_shape)
    if isinstance(layer, nn.Flatten):
        return Reshape(in_shape, out_shape)
    if isinstance(layer, Normalize):
        return ScaleShift(1.0 / layer.std, -layer.mean / layer.std, in_shape, out_shape)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batch_norm(name, layer, in_shape, out_shape)
    if isinstance(layer, nn.AvgPool2d):
        return AvgPool(layer, in_shape, out_shape)
    if isinstance(layer, nn.MaxPool2d):
        return MaxPool(layer, in_shape, out_shape)
    raise UnsupportedLayer(f"layer {name} ({type(layer).__name__}) is not supported by bound propagation; "
                           f"supported: {', '.join(SUPPORTED)}")


def _batch_norm(name: str, layer: nn.Module, in_shape: Shape, out_shape: Shape) -> ScaleShift:
    if layer.running_mean is None:
        raise UnsupportedLayer(f"layer {name} ({type(layer).__name__}) keeps no running statistics, so it has "
                               "no fixed affine map to bound; build it with track_running_stats=True")
    if len(in_shape) != (1 if isinstance(layer, nn.BatchNorm1d) else 3):
        raise UnsupportedLayer(f"layer {name} ({type(layer).__name__}) on inputs of shape {in_shape} is not supported")
    inv = torch.rsqrt(layer.running_var + layer.eps)
    weight = layer.weight if layer.weight is not None else torch.ones_like(inv)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(inv)
    return ScaleShift(weight * inv, bias - layer.running_mean * inv * weight, in_shape, out_shape)


def numel(shape: Shape) -> int:
    return math.prod(shape)
