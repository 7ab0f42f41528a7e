"""Stage 2: SSRL (docs/method.md §7), its ablations, the iterative-clustering rounds (docs/method.md §8) and the
WavLM steps (docs/method.md §9) on pseudo labels, by one stage (ssrl.train.ssrl_stage.SSRLStage).

Runs as ``python train_ssrl.py ...`` on one device or as
``torchrun --nproc_per_node N train_ssrl.py ...`` (DDP: NCCL on GPUs, gloo on CPU).
Resumes automatically from the newest checkpoint in --ckpt-dir made with the same
hyper-parameters and inputs (the ``train`` runtime section excepted).

Writes, only when training completes: --model-out (the model file: EMA teacher as
``eval_state``, student, teacher, head, and in ``extra`` the label state and the class ->
k-means id map), --log-out (TSV: ``step`` and ``epoch`` rows) and --label-log-out (TSV, one
row per epoch: phase, relabelling/replacement, live classes, label quality against
--utt2spk, the p_clean > 0.5 clean-label detector, loss, accuracy, teacher EER).

Exit codes: 0 done; 1 bad input or a non-finite loss (nothing written, the last good
checkpoint kept); 143 / 130 stopped by SIGTERM / SIGINT after saving a checkpoint (rerun to
resume).

Hyper-parameters (--hparams JSON): ``ssrl`` (ssrl.train.ssrl_stage.SSRLConfig), ``augment``
(snr_db, babble_count), ``train`` (ssrl.train.RuntimeConfig), and with ``ssrl.init: scratch``
(WavLM step 1, no --init-model) ``arch`` (ssrl.models.build_speaker_model architecture, e.g. a
WavLM checkpoint + an ECAPA back-end).

Example (SSRL from the DINO model and its k-means labels):
  python workflow/scripts/train_ssrl.py --system ssrl --train-scp results/demo/data/train/wav.scp \\
      --init-model results/demo/dino/model.pt --labels results/demo/dino/kmeans_k32/labels.txt \\
      --centers results/demo/dino/kmeans_k32/centers.npy --augment-dir results/demo/data/augment \\
      --val-scp results/demo/data/test/wav.scp --val-trials results/demo/data/trials/demo.txt \\
      --utt2spk results/demo/data/train/utt2spk --ckpt-dir results/demo/ssrl/ckpt \\
      --model-out results/demo/ssrl/model.pt --log-out results/demo/ssrl/train_log.tsv \\
      --label-log-out results/demo/ssrl/label_log.tsv --hparams '{"ssrl": {...}, "augment": {...}}'
"""

from __future__ import annotations

import argparse
import sys

from ssrl.train.script_args import add_training_arguments, augment_lists, train_main
from ssrl.train.ssrl_stage import SSRLStage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", required=True, help="system name (ssrl, ssrl_no_nlm, iter_r2, ...)")
    ap.add_argument("--train-scp", required=True, help="training wav.scp ('utt path' per line)")
    ap.add_argument(
        "--init-model", default=None, help="model file to start from (e.g. dino/model.pt); not with ssrl.init 'scratch'"
    )
    ap.add_argument("--labels", default=None, help="k-means labels ('utt label' per line; init 'encoder')")
    ap.add_argument("--centers", default=None, help="k-means centers (K, dim) .npy (head_init 'centers')")
    ap.add_argument("--utt2spk", default=None, help="true speakers of the training set (label log only)")
    ap.add_argument("--label-log-out", required=True, help="label log to write (<system>/label_log.tsv)")
    add_training_arguments(ap, no_augment_help="clean student crops (debugging only)")
    args = ap.parse_args(argv)
    lists = augment_lists(ap, args)

    return train_main(
        "train_ssrl",
        args,
        lambda hp: SSRLStage(
            hp,
            args.system,
            args.train_scp,
            args.init_model,
            labels=args.labels,
            centers=args.centers,
            augment_lists=lists,
            val_scp=args.val_scp,
            val_trials=args.val_trials,
            utt2spk=args.utt2spk,
            label_log=args.label_log_out,
            live_dir=args.ckpt_dir,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
