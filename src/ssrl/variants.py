"""The named configurations of the SSRL-family stage (ssrl.train.ssrl_stage): the --hparams of every
system that workflow/scripts/train_ssrl.py trains, built from the workflow config.

One stage trains them all; a variant is a small set of :class:`~ssrl.train.ssrl_config.SSRLConfig`
values (how a stage starts from its ``init`` is ssrl.train.ssrl_init), not a branch in the stage:

* ``ssrl`` and its ablations: the config's ``ssrl`` section (+ quirk Q1 from
  ``augment.student_none_is_noise``), an ablation's overrides on top (:func:`ssrl_hparams`);
* an iterative round (docs/method.md §8): :data:`ITERATIVE_ROUND` (fixed labels, no NLM) for
  :func:`iterative_round_epochs` epochs; the keys of :data:`LABEL_UPDATE_KEYS` are left to the
  stage's defaults (:func:`iterative_hparams`);
* the WavLM steps (docs/method.md §9): :data:`WAVLM_STEPS` (what makes each step what it is),
  over the ``ssrl`` section and the config's ``wavlm.<step>`` overrides; step 1 leaves out
  :data:`WAVLM_STEP1_UNUSED` and gets the architecture (:func:`wavlm_hparams`).

A key a variant leaves out is one that cannot act in it, so that editing it in the config does
not rerun that variant's systems (Snakemake reruns a job whose params change). Torch-free: the
Snakefile imports it when it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AUGMENT_KEYS = ("snr_db", "babble_count")
"""The ``augment`` config keys a training stage takes (ranges; the lists come as files)."""

LABEL_UPDATE_KEYS = frozenset(
    {
        "lr_update_start",
        "queue_len",
        "gmm_max_iter",
        "gmm_tol",
        "margin_quirk",
        "sinkhorn_iters",
        "sinkhorn_epsilon",
        "teacher_crop_s",
    }
)
"""``ssrl`` keys that act only in online label updates (relabelling, queues, NLM) and its LR segment."""

TEACHER_KEYS = frozenset({"ema_start", "ema_end", "removed_permanent"})
"""``ssrl`` keys that act only with an EMA teacher or on removed classes."""

ITERATIVE_ROUND = {"label_update": False, "nlm": False, "update_epochs": 0}
"""An iterative round: the label-fixed segment only, stretched to E_round epochs."""

WAVLM_STEP1_UNUSED = LABEL_UPDATE_KEYS | TEACHER_KEYS | {"fixed_epochs", "update_epochs", "lr_fixed_start", "nlm"}
"""``ssrl`` keys WavLM step 1 (no teacher, no label update, its own schedule) does not take."""

WAVLM_STEPS: dict[str, dict[str, Any]] = {
    "step1": {
        "init": "scratch",
        "head_init": "random",
        "label_update": False,
        "nlm": False,
        "update_epochs": 0,
        "schedule": "warmup_cosine",
        "freeze_wavlm": True,
        "teacher": False,
    },
    "step2": {"init": "student", "schedule": "ssrl", "freeze_wavlm": True, "teacher_shares_wavlm": True},
    "ft": {"init": "full", "schedule": "ssrl", "freeze_wavlm": False},
}
"""The keys that define each WavLM step (set here, never in the config): step 1 a supervised student
on a frozen WavLM, step 2 SSRL from step 1's student (the teacher shares the frozen WavLM), 2-ft step 2's
whole state continued with the WavLM trained (``wavlm`` config keys add Q3 and the fine-tuning knobs)."""

WAVLM_FT_KEYS = ("teacher_shares_wavlm", "gradient_checkpointing", "wavlm_lr_scale")
"""``wavlm`` config keys (not of ``wavlm.ft``) that step 2-ft passes to the stage."""


def ssrl_hparams(config: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """--hparams of SSRL (``overrides``: an ablation's): the ``ssrl`` section with quirk Q1 from
    ``augment.student_none_is_noise``, updated with ``overrides``; augmentation ranges; ``train``."""
    return {
        "ssrl": {**config["ssrl"], "none_is_noise": config["augment"]["student_none_is_noise"], **overrides},
        "augment": {key: config["augment"][key] for key in AUGMENT_KEYS},
        "train": config["train"],
    }


def iterative_round_epochs(config: Mapping[str, Any]) -> int:
    """E_round, the epochs of each iterative round, by the budget rule: the R rounds together train
    ``iterative.budget`` times SSRL's E_fix + E_upd epochs, E_round = round(budget * (E_fix + E_upd) / R),
    at least 1 (paper: 1.0 * 105 / 5 = 21)."""
    it, ssrl = config["iterative"], config["ssrl"]
    total = it["budget"] * (ssrl["fixed_epochs"] + ssrl["update_epochs"])
    return max(1, round(total / max(it["rounds"], 1)))


def iterative_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """--hparams of an iterative round: :func:`ssrl_hparams` with :data:`ITERATIVE_ROUND` for
    :func:`iterative_round_epochs` epochs, without :data:`LABEL_UPDATE_KEYS`."""
    hp = ssrl_hparams(config, **ITERATIVE_ROUND, fixed_epochs=iterative_round_epochs(config))
    hp["ssrl"] = {key: value for key, value in hp["ssrl"].items() if key not in LABEL_UPDATE_KEYS}
    return hp


def wavlm_hparams(config: Mapping[str, Any], step: str, arch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """--hparams of WavLM step ``step`` (step1 | step2 | ft): the ``ssrl`` section (step 1 without
    :data:`WAVLM_STEP1_UNUSED`) updated with ``wavlm.<step>``, then :data:`WAVLM_STEPS` ``[step]``;
    step 1 also gets ``arch`` (the build_speaker_model architecture), step 2-ft :data:`WAVLM_FT_KEYS`."""
    wavlm = config["wavlm"]
    if step == "step1":
        if arch is None:
            raise ValueError("WavLM step 1 builds its model: give its architecture")
        hp = ssrl_hparams(config)
        hp["ssrl"] = {key: value for key, value in hp["ssrl"].items() if key not in WAVLM_STEP1_UNUSED}
        hp["ssrl"].update(wavlm["step1"], **WAVLM_STEPS["step1"])
        hp["arch"] = dict(arch)
        return hp
    extra = {key: wavlm[key] for key in WAVLM_FT_KEYS} if step == "ft" else {}
    return ssrl_hparams(config, **wavlm[step], **WAVLM_STEPS[step], **extra)
