"""Per-step schedules (learning rate, EMA decay), precomputed as numpy arrays.

Every schedule is a function returning a float64 array with one value per
optimiser step; the trainer indexes it with the global step, so a resumed run
continues exactly where it stopped. Segments use the convention of docs/method.md §7:
the value at step ``i`` (``i = 1..n``) of an ``n``-step segment is the value at
the *end* of that step, so a segment ends exactly on its final value and the
next segment starts from there.
"""

from __future__ import annotations

import numpy as np


def _check_steps(n: int, what: str) -> None:
    if int(n) != n or n < 0:
        raise ValueError(f"{what}: number of steps must be a non-negative integer, got {n!r}")


def linear(start: float, end: float, n: int) -> np.ndarray:
    """``n`` values of a linear ramp from ``start`` to ``end``: step ``i = 1..n`` gets
    ``start + (end - start) * i / n`` (the last step is exactly ``end``)."""
    _check_steps(n, "linear")
    i = np.arange(1, n + 1, dtype=np.float64)
    return start + (end - start) * i / max(n, 1)


def cosine(start: float, end: float, n: int) -> np.ndarray:
    """``n`` values of a half-cosine from ``start`` to ``end`` (docs/method.md §7):
    step ``i = 1..n`` gets ``end + (start - end) * (1 + cos(pi * i / n)) / 2``."""
    _check_steps(n, "cosine")
    i = np.arange(1, n + 1, dtype=np.float64)
    return end + (start - end) * (1.0 + np.cos(np.pi * i / max(n, 1))) / 2.0


def warmup_cosine(
    peak: float, final: float, total_steps: int, warmup_steps: int, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then a
    cosine from ``peak`` to ``final`` over the remaining steps (DINO, docs/method.md §4;
    WavLM step 1, docs/method.md §9). Returns ``(total_steps,)``."""
    _check_steps(total_steps, "warmup_cosine")
    _check_steps(warmup_steps, "warmup_cosine")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_cosine: {warmup_steps} warm-up steps exceed the {total_steps} total steps")
    return np.concatenate([linear(warmup_start, peak, warmup_steps), cosine(peak, final, total_steps - warmup_steps)])


def piecewise_cosine(segments: list[tuple[float, float, int]]) -> np.ndarray:
    """Concatenated cosine segments ``[(start, end, n_steps), ...]`` (the SSRL
    label-fixed / label-update schedule of docs/method.md §7: each phase restarts at its
    own start value). Returns ``(sum of n_steps,)``."""
    if not segments:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([cosine(start, end, n) for start, end, n in segments])


def ema_decay(start: float, end: float, total_steps: int) -> np.ndarray:
    """EMA teacher decay annealed linearly per step from ``start`` (first step) to
    ``end`` (last step) over all training steps (docs/method.md §4, §7): step ``t = 0..T-1``
    gets ``start + (end - start) * t / (T - 1)``."""
    _check_steps(total_steps, "ema_decay")
    return np.linspace(start, end, total_steps, dtype=np.float64)


def ssrl_lr(
    lr: float,
    fixed_steps: int,
    update_steps: int,
    fixed_start: float = 0.1,
    update_start: float = 0.5,
    final: float = 0.01,
) -> np.ndarray:
    """The SSRL per-step learning rate (docs/method.md §7): two cosine segments, as fractions of ``lr``.

    Label-fixed phase (``fixed_steps``): cosine from ``lr * fixed_start`` to ``lr * final``
    (paper: lr/10 -> lr/100); label-update phase (``update_steps``): restarts at
    ``lr * update_start`` and follows a cosine down to ``lr * final`` (paper: lr/2 ->
    lr/100). Step ``i = 1..n`` of a segment gets ``final + (start - final) * (1 +
    cos(pi * i / n)) / 2``. A phase of 0 steps is left out, so ``fixed_steps = 0`` gives
    one cosine from ``lr * update_start`` (WavLM step 2-ft: lr/20 -> lr/100) and
    ``update_steps = 0`` the label-fixed segment alone (iterative rounds, docs/method.md §8).
    Returns ``(fixed_steps + update_steps,)``.
    """
    _check_steps(fixed_steps, "ssrl_lr")
    _check_steps(update_steps, "ssrl_lr")
    return piecewise_cosine(
        [(lr * fixed_start, lr * final, fixed_steps), (lr * update_start, lr * final, update_steps)]
    )
