"""DINO self-distillation (docs/method.md §4): the loss, the teacher centre, the multi-crop model.

* :func:`dino_loss`: cross-entropy between the centred, sharpened teacher
  distribution of each global view and the student distribution of every
  other view, averaged over view pairs and the batch.
* :class:`DINOCenter`: the running mean of the teacher logits (over all ranks).
* :class:`DINOModel`: a :class:`~ssrl.models.SpeakerModel` + :class:`~ssrl.models.DINOHead`
  that runs groups of crops of different lengths in one forward (one DDP call).
* :func:`output_std`: the collapse monitor logged for teacher and student.

The training stage that uses them is :class:`ssrl.train.dino_stage.DINOStage`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .models import DINOHead, SpeakerModel


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO loss (docs/method.md §4), a scalar.

    ``student_logits`` ``(batch, n_views, K)``, the global views first;
    ``teacher_logits`` ``(batch, n_global, K)`` of the global views; ``center``
    ``(K,)``. Teacher probabilities ``p = softmax((t - center) / teacher_temp)``
    (no gradient), student log-probabilities ``log q = log_softmax(s / student_temp)``;
    the cross-entropy ``-sum_k p_i[k] log q_j[k]`` of every pair (teacher view i,
    student view j) with ``j != i`` when j is a global view, averaged over the
    ``n_global * (n_views - 1)`` pairs (10 for 2 + 4 views) and the batch.
    Computed in float32.
    """
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError(
            f"dino_loss: expected (batch, views, K) logits, got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    b, n_views, k = student_logits.shape
    n_global = teacher_logits.shape[1]
    if teacher_logits.shape[0] != b or teacher_logits.shape[2] != k or not 1 <= n_global <= n_views:
        raise ValueError(
            f"dino_loss: teacher logits {tuple(teacher_logits.shape)} do not match student "
            f"{tuple(student_logits.shape)} (need the same batch and K, n_global <= n_views)"
        )
    if center.shape != (k,):
        raise ValueError(f"dino_loss: center has shape {tuple(center.shape)}, expected ({k},)")
    pairs = torch.ones(n_global, n_views, dtype=torch.float32, device=student_logits.device)
    pairs[:, :n_global].fill_diagonal_(0.0)
    n_pairs = pairs.sum()
    if n_pairs == 0:
        raise ValueError("dino_loss: a single global view and no local view leave no view pair")
    p_teacher = F.softmax((teacher_logits.detach().float() - center.float()) / teacher_temp, dim=-1)
    log_q = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    ce = -torch.einsum("bik,bjk->bij", p_teacher, log_q)  # (batch, n_global, n_views)
    return (ce * pairs).sum(dim=(1, 2)).mean() / n_pairs


class DINOCenter:
    """The teacher centre (docs/method.md §4): a ``(K,)`` vector, initially 0, updated after every
    step as ``center <- m * center + (1 - m) * mean(teacher logits of the batch)``,
    the mean taken over every teacher output of the global batch (all ranks, when
    a torch.distributed process group is running)."""

    def __init__(self, dim: int, momentum: float = 0.9, device: torch.device | str = "cpu"):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"DINOCenter: momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.value = torch.zeros(dim, device=device)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Fold in the teacher logits ``(..., K)`` of this rank's batch (collective under DDP)."""
        flat = teacher_logits.detach().float().reshape(-1, self.value.shape[0])
        stats = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        mean = stats[:-1] / stats[-1]
        self.value.mul_(self.momentum).add_(mean.to(self.value.device), alpha=1.0 - self.momentum)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"center": self.value.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        center = state["center"]
        if center.shape != self.value.shape:
            raise ValueError(
                f"DINOCenter: stored centre has shape {tuple(center.shape)}, expected {tuple(self.value.shape)}"
            )
        self.value.copy_(center)


class DINOModel(nn.Module):
    """Speaker model + DINO head over groups of crops.

    ``forward(*groups)``: each group ``(batch, n_i, samples_i)`` holds crops of one
    length (e.g. the global crops, then the local crops); each group goes through
    the speaker model AND the head as one batch of ``batch * n_i`` crops, a forward
    pass of its own, so every BatchNorm (encoder and head) normalises each group with
    its own statistics, as the reference runs the global and the local views. Returns
    ``(embeddings (batch, V, emb_dim), logits (batch, V, K))`` with ``V = sum n_i`` in
    group order.
    """

    def __init__(self, model: SpeakerModel, head: DINOHead):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, *groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not groups:
            raise ValueError("DINOModel: no crops given")
        b = groups[0].shape[0]
        embs, logits = [], []
        for g in groups:
            if g.dim() != 3 or g.shape[0] != b:
                raise ValueError(f"DINOModel: each group must be (batch={b}, views, samples), got {tuple(g.shape)}")
            if g.shape[1]:
                emb = self.model(g.reshape(b * g.shape[1], g.shape[2]))  # (batch * n_i, emb_dim)
                embs.append(emb.reshape(b, g.shape[1], -1))
                logits.append(self.head(emb).reshape(b, g.shape[1], -1))
        return torch.cat(embs, dim=1), torch.cat(logits, dim=1)


@torch.no_grad()
def output_std(logits: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: std over the batch of each prototype logit, averaged over prototypes.

    ``logits`` ``(..., K)`` (all leading dimensions are items). The DINO head's
    logits are cosines between the L2-normalised bottleneck vector and unit
    prototypes, so outputs spread uniformly over the sphere give about
    ``1 / sqrt(bottleneck)`` (0.0625 for 256), and 0 means every input gives the
    same output (collapse, to a uniform or to a one-hot teacher distribution alike).
    Returns a 0-d float32 tensor.
    """
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    return flat.std(dim=0, correction=0).mean()
