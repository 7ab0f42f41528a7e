"""Optimiser helpers: weight-decay parameter groups and per-tensor gradient clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def decay_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups over ``module``'s trainable parameters: weights (2-D and up)
    with ``weight_decay``, and biases and other 1-D parameters (BatchNorm scales,
    ...) without (DINO, docs/method.md §4; the other stages decay all parameters).
    Parameters with ``requires_grad=False`` are left out. Each group has a ``name``
    ("decay" / "no_decay")."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def clip_grad_per_tensor(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor | None:
    """Scale each parameter's gradient so that its own L2 norm is at most ``max_norm``
    (``g *= max_norm / (||g|| + 1e-6)`` where that factor is < 1). Returns the
    norms before clipping ``(n_tensors,)``, or None if no parameter has a gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch.stack(torch._foreach_norm(grads))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scale.unbind()))
    return norms
