"""Training heads on top of the speaker embedding (docs/method.md §3.2, §3.3).

* :class:`DINOHead`: projection MLP + weight-normalised prototype layer (DINO).
* :class:`AAMSoftmax`: additive angular margin softmax (ArcFace) for pseudo labels.
* :class:`SoftmaxHead`: dropout + linear classifier (ablation).

``build_head(spec)`` builds one from the ``head`` dict of a model file, e.g.
``{"type": "aam", "emb_dim": 512, "n_classes": 8000, "scale": 32.0, "margin": 0.2}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations


def _trunc_normal_linear(module: nn.Module) -> None:
    """Truncated-normal init (std 0.02) of a Linear weight, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DINOHead(nn.Module):
    """Embedding (batch, in_dim) -> prototype logits (batch, n_prototypes).

    MLP in_dim -> hidden (BN, GELU) -> hidden (BN, GELU) -> mid, Linear mid ->
    bottleneck, L2 normalisation, then a bias-free weight-normalised Linear
    bottleneck -> n_prototypes whose weight norm g is fixed to 1 (not trained),
    so the logits are cosines between the bottleneck vector and the prototypes.
    Paper size: 40,915,200 trainable parameters + 65,536 frozen norms.

    ``last_layer`` is the prototype layer (its trainable tensor is
    ``last_layer.parametrizations.weight.original1``); the DINO trainer freezes it
    during epoch 0.
    """

    def __init__(
        self, in_dim: int = 512, n_prototypes: int = 65536, hidden: int = 2048, mid: int = 8192, bottleneck: int = 256
    ):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, mid),
            nn.Linear(mid, bottleneck),
        )
        self.mlp.apply(_trunc_normal_linear)
        last = nn.Linear(bottleneck, n_prototypes, bias=False)
        _trunc_normal_linear(last)
        self.last_layer = parametrizations.weight_norm(last, name="weight", dim=0)
        norm = self.last_layer.parametrizations.weight.original0  # g: (n_prototypes, 1)
        with torch.no_grad():
            norm.fill_(1.0)
        norm.requires_grad_(False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(embeddings), dim=-1)
        return self.last_layer(x)


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax: embeddings (batch, emb_dim) -> logits (batch, n_classes).

    Logits are ``scale * cos(theta_j)`` between the L2-normalised embedding and
    the L2-normalised weight row j. With ``labels`` the target logit becomes
    ``scale * cos(theta_y + margin)``, or ``scale * (cos(theta_y) - sin(pi - m) * m)``
    where ``cos(theta_y) <= cos(pi - m)`` (the "easy_margin=False" form). Without
    labels: plain ``scale * cos(theta)`` (inference, relabelling).
    """

    def __init__(self, emb_dim: int, n_classes: int, scale: float = 32.0, margin: float = 0.2):
        super().__init__()
        self.emb_dim = emb_dim
        self.n_classes = n_classes
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(n_classes, emb_dim))
        nn.init.xavier_normal_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(batch, emb_dim) -> (batch, n_classes) cosines, computed in float32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos
        labels = labels.view(-1, 1).long()
        cos_y = cos.gather(1, labels)
        sin_y = (1.0 - cos_y.pow(2)).clamp(0.0, 1.0).sqrt()
        cos_plus = cos_y * math.cos(self.margin) - sin_y * math.sin(self.margin)  # cos(theta + m)
        fallback = cos_y - math.sin(math.pi - self.margin) * self.margin
        target = torch.where(cos_y > math.cos(math.pi - self.margin), cos_plus, fallback)
        return self.scale * cos.scatter(1, labels, target)

    @torch.no_grad()
    def init_from_centers(self, centers: np.ndarray | torch.Tensor) -> None:
        """Copy k-means centers (n_classes, emb_dim) into the weight (rows are normalised in forward)."""
        centers = torch.as_tensor(centers)
        if tuple(centers.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"centers shape {tuple(centers.shape)} does not match the AAM weight "
                f"{tuple(self.weight.shape)} (n_classes, emb_dim)"
            )
        if not torch.isfinite(centers).all():
            raise ValueError("centers contain NaN or inf")
        self.weight.copy_(centers.to(self.weight))


class SoftmaxHead(nn.Module):
    """Dropout on the embedding, then Linear with bias (bias 0): (batch, emb_dim) -> (batch, n_classes).

    ``labels`` is accepted for a uniform head interface and ignored.
    """

    def __init__(self, emb_dim: int, n_classes: int, dropout: float = 0.5):
        super().__init__()
        self.emb_dim = emb_dim
        self.n_classes = n_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(emb_dim, n_classes)
        nn.init.zeros_(self.fc.bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.dropout(embeddings))


HEADS = {"dino": DINOHead, "aam": AAMSoftmax, "softmax": SoftmaxHead}


def build_head(spec: dict) -> nn.Module:
    """Build a head from ``{"type": "dino" | "aam" | "softmax", **constructor kwargs}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"head spec must be a dict with a 'type' key, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    if kind not in HEADS:
        raise ValueError(f"unknown head type {kind!r}; expected one of {sorted(HEADS)}")
    try:
        return HEADS[kind](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for head {kind!r}: {err}") from None
