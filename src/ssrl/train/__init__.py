"""The shared trainer of every training stage (DINO, SSRL, iterative rounds, WavLM).

* :mod:`.stage`: :class:`Stage` (the extension point: what a stage trains).
* :mod:`.loop`: :class:`Trainer` (how: DDP, schedules, EMA, checkpoints, resume, logs),
  :func:`run` (entry point for scripts; returns the exit code).
* :mod:`.config`: :class:`RuntimeConfig` (config ``train:``) and ``config_from_dict``, which
  builds a stage's typed config.
* :mod:`.distributed`: torchrun/process-group setup, gather helpers,
  global-batch BatchNorm.
* :mod:`.schedules`: per-step LR and EMA schedules as numpy arrays.
* :mod:`.ema`: EMA teacher construction and update.
* :mod:`.checkpoint`: atomic, pruned, resumable checkpoints and RNG states.
* :mod:`.validation`: sharded embedding extraction and EER during training.
* :mod:`.optim`: parameter groups and per-tensor gradient clipping.
* :mod:`.dino_stage`: DINO (docs/method.md §4) as a Stage; stages live beside the trainer
  because they sit above it in the layering (they import it).
* :mod:`.ssrl_stage`: SSRL (docs/method.md §7), its ablations, the iterative rounds (docs/method.md §8)
  and the WavLM steps (docs/method.md §9) as one Stage; its hyper-parameters in :mod:`.ssrl_config`
  (named configurations: :mod:`ssrl.variants`), how it starts (``init``) in :mod:`.ssrl_init`.
"""

from .checkpoint import CheckpointManager
from .config import RuntimeConfig
from .distributed import (
    DistEnv,
    GlobalBatchNorm,
    all_gather_array,
    all_gather_objects,
    all_gather_tensor,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    init_distributed,
    shutdown,
)
from .ema import ema_update, make_teacher
from .loop import NonFiniteLossError, Trainer, TrainingInterrupted, run
from .optim import clip_grad_per_tensor, decay_param_groups
from .stage import Stage, file_digest
from .validation import ValidationSet, extract_embeddings, validation_eer

__all__ = [
    "CheckpointManager",
    "DistEnv",
    "GlobalBatchNorm",
    "NonFiniteLossError",
    "RuntimeConfig",
    "Stage",
    "Trainer",
    "TrainingInterrupted",
    "ValidationSet",
    "all_gather_array",
    "all_gather_objects",
    "all_gather_tensor",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "clip_grad_per_tensor",
    "convert_sync_batchnorm",
    "decay_param_groups",
    "ema_update",
    "extract_embeddings",
    "file_digest",
    "init_distributed",
    "make_teacher",
    "run",
    "shutdown",
    "validation_eer",
]
