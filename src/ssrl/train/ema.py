"""EMA teacher (docs/method.md §4, §7): an exponential moving average of the student.

The teacher is a copy of the student that is never trained by gradient and
always runs in eval mode. After every optimiser step each floating-point
parameter and buffer (BatchNorm running mean/var) of the teacher becomes
``decay * teacher + (1 - decay) * student``; student parameters that do not
require grad (e.g. the fixed weight-norm gain of the DINO prototype layer, a
frozen WavLM) and integer buffers (``num_batches_tracked``) are copied.
Tensors the teacher shares with the student (the same tensor object, e.g. the
student's WavLM used by the reference step 2-ft teacher, docs/method.md §9 Q3) are left
alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off, in eval mode.

    The trainer puts the teacher back in eval mode before every step, so a
    stage cannot accidentally train its BatchNorm statistics.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """One EMA step of ``teacher`` towards ``student`` (both unwrapped, same names).

    Raises ValueError if a teacher parameter or buffer has no student
    counterpart of the same shape (the teacher must be a copy of the student).
    """
    s_params = dict(student.named_parameters())
    s_buffers = dict(student.named_buffers())
    ema_t: list[torch.Tensor] = []
    ema_s: list[torch.Tensor] = []
    for kind, source, items in (
        ("parameter", s_params, teacher.named_parameters()),
        ("buffer", s_buffers, teacher.named_buffers()),
    ):
        for name, t in items:
            s = source.get(name)
            if s is None or s.shape != t.shape:
                raise ValueError(
                    f"EMA teacher {kind} {name!r} {tuple(t.shape)} has no matching student "
                    f"{kind} (found {None if s is None else tuple(s.shape)})"
                )
            if s is t:
                continue
            if t.is_floating_point() and (kind == "buffer" or s.requires_grad):
                ema_t.append(t)
                ema_s.append(s.detach())
            else:
                t.copy_(s)
    if ema_t:
        torch._foreach_mul_(ema_t, decay)
        torch._foreach_add_(ema_t, ema_s, alpha=1.0 - decay)
