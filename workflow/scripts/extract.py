"""Embeddings of every utterance of one or more wav.scp files with a trained system (docs/method.md §5).

Whole utterances (WavLM systems: the first ``max_seconds_wavlm`` seconds),
peak-normalised and pre-emphasised, no augmentation; the model file's
``eval_state`` (EMA teacher) in eval mode; utterances batched by similar length
(zero-padded, exact: the result equals one-at-a-time extraction), read by
DataLoader workers, on CUDA when available.

Writes each --output (the i-th for the i-th --wav-scp): .npz with ``utts`` (N,)
in wav.scp order and ``embeddings`` (N, dim) float32. Several sets in one call
load the model once (a system's train and test sets are one job). Fails without
writing the failing set's file on unreadable or too-short audio or a non-finite
embedding (the message names the utterance).

Hyper-parameters (--hparams JSON): device ("auto" | "cpu" | "cuda" | "cuda:N"),
max_batch_seconds (padded audio per batch), max_batch_size (utterances per
batch), workers (DataLoader processes), max_seconds_wavlm (audio kept per file
for WavLM systems).

Example:
  python workflow/scripts/extract.py --model results/demo/dino/model.pt \\
      --wav-scp results/demo/data/train/wav.scp --output results/demo/dino/emb/train.npz \\
      --wav-scp results/demo/data/test/wav.scp --output results/demo/dino/emb/test.npz \\
      --hparams '{"device": "auto", "max_batch_seconds": 240, "max_batch_size": 64, "workers": 2,
      "max_seconds_wavlm": 100}'
"""

from __future__ import annotations

import argparse
import sys
import time

from ssrl.extract import embed_files, resolve_device
from ssrl.fileio import write_embeddings
from ssrl.hparams import read_hparams
from ssrl.manifest import read_wav_scp
from ssrl.models import WavLMFrontend, load_speaker_model
from ssrl.progress import format_duration

HPARAMS = {"device": str, "max_batch_seconds": float, "max_batch_size": int, "workers": int, "max_seconds_wavlm": float}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model file (<system>/model.pt)")
    ap.add_argument("--wav-scp", required=True, action="append", help="'utt path' per line (repeatable)")
    ap.add_argument(
        "--output", required=True, action="append", help="embedding file (.npz), one per --wav-scp, in the same order"
    )
    ap.add_argument("--hparams", required=True, help="JSON, see above")
    args = ap.parse_args(argv)
    hp = read_hparams(args.hparams, HPARAMS)

    if len(args.wav_scp) != len(args.output):
        ap.error(f"{len(args.wav_scp)} --wav-scp but {len(args.output)} --output: give one output per set")
    try:
        device = resolve_device(hp["device"])
        sets = [(read_wav_scp(scp), scp, out) for scp, out in zip(args.wav_scp, args.output)]
        model = load_speaker_model(args.model, device=device)
    except ValueError as exc:  # ManifestError, ModelFileError: messages name the file
        raise SystemExit(f"extract: {exc}") from None
    wavlm = isinstance(model.frontend, WavLMFrontend)
    max_seconds = float(hp["max_seconds_wavlm"]) if wavlm else None
    for wav_scp, scp_path, output in sets:
        start = time.monotonic()
        utts, paths = list(wav_scp), list(wav_scp.values())
        print(
            f"extract: {len(utts)} utterances from {scp_path} with {args.model} on {device}"
            + (f" (first {max_seconds:g} s of each file)" if wavlm else ""),
            file=sys.stderr,
        )
        try:
            emb = embed_files(
                model,
                utts,
                paths,
                device=device,
                max_batch_seconds=float(hp["max_batch_seconds"]),
                max_batch_size=hp["max_batch_size"],
                workers=hp["workers"],
                max_seconds=max_seconds,
            )
        except ValueError as exc:  # AudioError, too-short audio, non-finite embeddings
            raise SystemExit(f"extract: {scp_path}: {exc}") from None
        write_embeddings(output, utts, emb)
        print(
            f"extract: wrote {output} ({emb.shape[0]} x {emb.shape[1]}) in {format_duration(time.monotonic() - start)}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
