"""Access levels: what an attack may see of a model.

* ``gradients`` (white-box): logits and their input-gradients (PGD, APGD, FAB, FMN, CW);
* ``scores``: logits only, no gradients (Square);
* ``labels``: the predicted class only (HopSkipJump, Boundary, RayS).

A label-only model may be any callable that returns class scores ``(N, classes)`` or labels ``(N,)``; the
decision-based attacks read nothing but the label either way (`squiggles.attacks._decision.LabelOracle`).

Example:
    >>> import torch
    >>> as_labels(torch.tensor([[0.1, 2.0], [3.0, -1.0]]), 2).tolist()
    [1, 0]
    >>> as_labels(torch.tensor([4, 1]), 2).tolist()
    [4, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from squiggles.errors import SquigglesError

ACCESS_LEVELS = ("gradients", "scores", "labels")


def check_access(access: str) -> str:
    if access not in ACCESS_LEVELS:
        raise SquigglesError(f"access must be one of {', '.join(ACCESS_LEVELS)}, got {access!r}")
    return access


def as_labels(out: Any, n: int) -> Tensor:
    """Predicted labels from a model's output: the argmax of class scores ``(N, K)``, or labels ``(N,)`` as given."""
    if isinstance(out, Tensor) and out.shape[:1] == (n,):
        if out.dim() == 2 and out.dtype.is_floating_point and out.shape[1] >= 1:
            return out.argmax(1)
        if out.dim() == 1 and not out.dtype.is_floating_point and out.dtype != torch.bool:
            return out.long()
    what = f"a tensor of shape {tuple(out.shape)} and dtype {out.dtype}" if isinstance(out, Tensor) else type(
        out).__name__
    raise SquigglesError(
        f"the model returned {what} for {n} inputs; it must return class scores shaped (N, classes) or integer "
        "labels shaped (N,) (wrap a remote endpoint so that it returns a LongTensor of labels: see docs/labels.md)"
    )


def num_classes_of(out: Any) -> int | None:
    """The number of classes a model's output reveals (``None`` for bare labels)."""
    return out.shape[1] if isinstance(out, Tensor) and out.dim() == 2 else None


@torch.no_grad()
def predicted_labels(model: Callable[[Tensor], Any], x: Tensor, batch_size: int = 1000) -> Tensor:
    """Labels of ``model`` on ``x`` (eval mode for a module), batched on the model's device, returned on x's."""
    from squiggles.runtime import _model_device, eval_mode

    device = _model_device(model, x) if isinstance(model, torch.nn.Module) else x.device
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        if isinstance(model, torch.nn.Module):
            with eval_mode(model):
                out = model(xb)
        else:
            out = model(xb)
        outs.append(as_labels(out, len(xb)).to(x.device))
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long, device=x.device)
