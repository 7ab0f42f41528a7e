"""The WavLM front-end in the SSRL-family stage (the WavLM steps, docs/method.md §9): the options
``freeze_wavlm``, ``gradient_checkpointing`` and ``wavlm_lr_scale`` of :class:`~ssrl.train.ssrl_config.SSRLConfig`
applied to the student model (:func:`setup_wavlm`) and to the optimiser's parameter groups
(:func:`param_groups`). Quirk Q3 (``teacher_shares_wavlm``) is set where the teacher is made, in
:meth:`ssrl.train.ssrl_stage.SSRLStage.build`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..models import SpeakerModel
from ..models.wavlm import WavLMFrontend
from .ssrl_config import SSRLConfig


def setup_wavlm(model: SpeakerModel, cfg: SSRLConfig, name: str, source: object) -> bool:
    """Freeze (or unfreeze) the WavLM of ``model`` and set its gradient checkpointing, as configured;
    returns whether DDP must look for parameters without a gradient (``find_unused_parameters``).

    A WavLM option set for a model without a WavLM front-end is a ValueError naming the system
    ``name`` and ``source`` (the init model file or the architecture it was built from)."""
    asked = [
        key
        for key, on in (
            ("freeze_wavlm", cfg.freeze_wavlm),
            ("teacher_shares_wavlm", cfg.teacher_shares_wavlm),
            ("gradient_checkpointing", cfg.gradient_checkpointing),
            ("wavlm_lr_scale", cfg.wavlm_lr_scale != 1.0),
        )
        if on
    ]
    if not isinstance(model.frontend, WavLMFrontend):
        if asked:
            raise ValueError(
                f"{name}: {' / '.join(asked)} need a WavLM front-end, but {source} has a "
                f"{type(model.frontend).__name__}"
            )
        return False
    model.frontend.freeze_wavlm(cfg.freeze_wavlm)
    model.frontend.set_gradient_checkpointing(cfg.gradient_checkpointing)
    # A trained WavLM with layer drop (or no gradient into its CNN) leaves parameters without a
    # gradient in some steps, which DDP must be told about.
    reg = model.frontend.wavlm.regularisation
    return not cfg.freeze_wavlm and (reg["encoder_layer_drop"] > 0 or reg["feature_grad_mult"] == 0)


def param_groups(student: nn.Module, weight_decay: float, wavlm_lr_scale: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups of ``student`` (a model + head with ``student.model.frontend``):
    its trainable parameters as group ``model``, and a trained WavLM as group ``wavlm`` with
    ``lr_scale = wavlm_lr_scale``; ``weight_decay`` on all of them. Frozen parameters are left out."""
    params = [p for p in student.parameters() if p.requires_grad]
    frontend = student.model.frontend
    wavlm = set()
    if isinstance(frontend, WavLMFrontend) and not frontend.wavlm_frozen:
        wavlm = {id(p) for p in frontend.wavlm.parameters()}
    groups = [{"name": "model", "params": [p for p in params if id(p) not in wavlm], "weight_decay": weight_decay}]
    if wavlm:
        groups.append(
            {
                "name": "wavlm",
                "params": [p for p in params if id(p) in wavlm],
                "weight_decay": weight_decay,
                "lr_scale": wavlm_lr_scale,
            }
        )
    return groups
