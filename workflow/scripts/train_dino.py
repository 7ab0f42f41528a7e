"""Stage 1: DINO pre-training of the log-mel ECAPA-TDNN (docs/method.md §4).

Runs as ``python train_dino.py ...`` on one device or as
``torchrun --nproc_per_node N train_dino.py ...`` (DDP: NCCL on GPUs, gloo on
CPU). Resumes automatically from the newest checkpoint in --ckpt-dir made with
the same hyper-parameters (the ``train`` runtime section excepted).

Writes --model-out (the model file: EMA teacher as ``eval_state``, student,
teacher, head, centre) and --log-out (TSV: ``step`` rows every
``train.log_every`` steps and ``epoch`` rows with means, validation EER and
time) only when training completes.

Exit codes: 0 done; 1 bad input or a non-finite loss (nothing written, the
last good checkpoint kept); 143 / 130 stopped by SIGTERM / SIGINT after saving
a checkpoint (rerun to resume).

Hyper-parameters (--hparams JSON): ``dino`` (ssrl.train.dino_stage.DINOConfig),
``model`` (architecture for ssrl.models.build_speaker_model), ``augment``
(snr_db, babble_count), ``train`` (ssrl.train.RuntimeConfig).

Example:
  python workflow/scripts/train_dino.py --train-scp results/demo/data/train/wav.scp \\
      --augment-dir results/demo/data/augment --val-scp results/demo/data/test/wav.scp \\
      --val-trials results/demo/data/trials/demo.txt --ckpt-dir results/demo/dino/ckpt \\
      --model-out results/demo/dino/model.pt --log-out results/demo/dino/train_log.tsv \\
      --hparams "$(python -c 'import json,yaml; c=yaml.safe_load(open("config/config.yaml")); \\
      print(json.dumps({k: c[k] for k in ("dino", "model", "augment", "train")}))')"
"""

from __future__ import annotations

import argparse
import sys

from ssrl.train.dino_stage import DINOStage
from ssrl.train.script_args import add_training_arguments, augment_lists, train_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scp", required=True, help="training wav.scp ('utt path' per line)")
    add_training_arguments(ap, no_augment_help="clean crops (debugging only; not docs/method.md §4)")
    args = ap.parse_args(argv)
    lists = augment_lists(ap, args)

    return train_main(
        "train_dino", args, lambda hp: DINOStage(hp, args.train_scp, lists, args.val_scp, args.val_trials)
    )


if __name__ == "__main__":
    sys.exit(main())
