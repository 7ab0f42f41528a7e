"""Stage 1: DINO pre-training of the log-mel ECAPA-TDNN (SPEC 4).

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
import json
import sys
from pathlib import Path

from ssrl.train import RuntimeConfig, run
from ssrl.train.dino_stage import AUGMENT_SOURCES, DINOStage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scp", required=True, help="training wav.scp ('utt path' per line)")
    ap.add_argument("--augment-dir", type=Path, default=None,
                    help="folder with noise.lst, music.lst, babble.lst and rir.lst")
    ap.add_argument("--no-augment", action="store_true", help="clean crops (debugging only; not SPEC 4)")
    ap.add_argument("--val-scp", default=None, help="validation wav.scp (with --val-trials)")
    ap.add_argument("--val-trials", default=None, help="validation trial list ('1|0 enroll test' per line)")
    ap.add_argument("--ckpt-dir", required=True, help="checkpoint folder (kept between runs for resuming)")
    ap.add_argument("--model-out", required=True, help="model file to write (<system>/model.pt)")
    ap.add_argument("--log-out", required=True, help="training log to write (<system>/train_log.tsv)")
    ap.add_argument("--hparams", required=True, help="JSON, see above")
    args = ap.parse_args(argv)
    if (args.augment_dir is None) == (not args.no_augment):
        ap.error("give --augment-dir, or --no-augment for clean crops")

    try:
        hp = json.loads(args.hparams)
        runtime = RuntimeConfig.from_dict(hp.get("train"))
        lists = None if args.no_augment else {k: args.augment_dir / f"{k}.lst" for k in AUGMENT_SOURCES}
        stage = DINOStage(hp, args.train_scp, lists, args.val_scp, args.val_trials)
        return run(stage, runtime, args.ckpt_dir, args.model_out, args.log_out)
    except (ValueError, json.JSONDecodeError) as exc:   # ManifestError, AudioError, config errors name the input
        print(f"train_dino: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
