"""What the training scripts (``workflow/scripts/train_*.py``, ``pretrain_wavlm.py``) share: the
command-line arguments (training inputs besides the stage's own, validation, checkpoints, outputs,
hyper-parameters) and :func:`train_main`, which builds the stage and runs it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..augment import AUGMENT_SOURCES
from .config import RuntimeConfig
from .loop import run
from .stage import Stage


def add_training_arguments(ap: argparse.ArgumentParser, no_augment_help: str) -> None:
    """Add --augment-dir / --no-augment, --val-scp, --val-trials, --ckpt-dir, --model-out,
    --log-out, --record-out and --hparams to ``ap``."""
    ap.add_argument(
        "--augment-dir", type=Path, default=None, help="folder with " + ", ".join(f"{k}.lst" for k in AUGMENT_SOURCES)
    )
    ap.add_argument("--no-augment", action="store_true", help=no_augment_help)
    ap.add_argument("--val-scp", default=None, help="validation wav.scp (with --val-trials)")
    ap.add_argument("--val-trials", default=None, help="validation trial list ('1|0 enroll test' per line)")
    ap.add_argument("--ckpt-dir", required=True, help="checkpoint folder (kept between runs for resuming)")
    ap.add_argument("--model-out", required=True, help="model file to write (<system>/model.pt)")
    ap.add_argument("--log-out", required=True, help="training log to write (<system>/train_log.tsv)")
    ap.add_argument(
        "--record-out",
        default=None,
        help="cost and provenance record to write (<system>/train_record.json, ssrl.train.record)",
    )
    ap.add_argument("--hparams", required=True, help="JSON, see above")


def augment_lists(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Path] | None:
    """The augmentation list of each source under --augment-dir, or None with --no-augment;
    exactly one of the two must be given (``ap.error`` otherwise)."""
    if (args.augment_dir is None) == (not args.no_augment):
        ap.error("give --augment-dir, or --no-augment for clean crops")
    return None if args.no_augment else {k: args.augment_dir / f"{k}.lst" for k in AUGMENT_SOURCES}


def train_main(script: str, args: argparse.Namespace, make_stage: Callable[[Mapping[str, Any]], Stage]) -> int:
    """Run the stage ``make_stage(hparams)`` (``args.hparams``: JSON; its ``train`` section is the
    :class:`RuntimeConfig`) with the checkpoint folder and outputs of ``args``; returns the exit code
    of :func:`ssrl.train.run`, or 1 after printing ``<script>: <error>`` for bad input (manifest,
    audio, model file and config errors name the input)."""
    try:
        hp = json.loads(args.hparams)
        runtime = RuntimeConfig.from_dict(hp.get("train"))
        return run(
            make_stage(hp), runtime, args.ckpt_dir, args.model_out, args.log_out, getattr(args, "record_out", None)
        )
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return 1
