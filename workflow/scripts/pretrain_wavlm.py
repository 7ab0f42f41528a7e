"""Masked-prediction pre-training of the tiny WavLM on the training audio (ssrl.train.wavlm_pretrain).

HuBERT-style, at toy size, without speaker labels: k-means units of MFCC frames as
targets, span masks on the CNN features, cross-entropy on the masked frames. Runs as
``python pretrain_wavlm.py ...`` on one device or under ``torchrun`` (DDP). Resumes
automatically from the newest checkpoint in --ckpt-dir made with the same
hyper-parameters and training list.

Writes --model-out, the WavLM in Microsoft's official ``{"cfg", "model"}`` checkpoint
format (what WavLM-Large.pt holds), and --log-out (TSV: ``step`` rows every
``train.log_every`` steps, ``epoch`` rows) only when training completes.

Exit codes: 0 done; 1 bad input or a non-finite loss; 143 / 130 stopped by SIGTERM /
SIGINT after saving a checkpoint (rerun to resume).

Hyper-parameters (--hparams JSON): ``pretrain`` (ssrl.train.wavlm_pretrain.PretrainConfig,
config ``wavlm.pretrain``), ``num_layers`` (transformer layers, config ``wavlm.num_layers``),
``train`` (ssrl.train.RuntimeConfig).

Example:
  python workflow/scripts/pretrain_wavlm.py --train-scp results/demo/data/train/wav.scp \\
      --ckpt-dir results/demo/wavlm_pretrain/ckpt --model-out results/demo/wavlm_pretrain/wavlm_tiny.pt \\
      --log-out results/demo/wavlm_pretrain/train_log.tsv \\
      --hparams "$(python -c 'import json,yaml; c=yaml.safe_load(open("config/config.yaml")); \\
      print(json.dumps({"pretrain": c["wavlm"]["pretrain"], "num_layers": c["wavlm"]["num_layers"], \\
      "train": c["train"]}))')"
"""

from __future__ import annotations

import argparse
import sys

from ssrl.train.script_args import train_main
from ssrl.train.wavlm_pretrain import WavLMPretrainStage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scp", required=True, help="training wav.scp ('utt path' per line)")
    ap.add_argument("--ckpt-dir", required=True, help="checkpoint folder (kept between runs for resuming)")
    ap.add_argument("--model-out", required=True, help="WavLM checkpoint to write (official format)")
    ap.add_argument("--log-out", required=True, help="training log to write (TSV)")
    ap.add_argument("--hparams", required=True, help="JSON, see above")
    args = ap.parse_args(argv)

    return train_main("pretrain_wavlm", args, lambda hp: WavLMPretrainStage(hp, args.train_scp))


if __name__ == "__main__":
    sys.exit(main())
