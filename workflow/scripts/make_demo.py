"""Generate the embedded demo corpus (ssrl.demo.generate_corpus).

Writes the audio and baseline.json under --corpus-dir and the manifests under
--data-dir:
  <data-dir>/train/{wav.scp,utt2spk}, <data-dir>/test/{wav.scp,utt2spk},
  <data-dir>/trials/demo.txt, <data-dir>/augment/{noise,music,babble,rir}.lst

Hyper-parameters (--hparams JSON, the corpus.demo config): seed, n_train_speakers,
n_test_speakers, utts_per_speaker, min_dur, max_dur, n_noise, n_music, n_speech, n_rir.

Example:
  python workflow/scripts/make_demo.py --corpus-dir results/demo/corpus --data-dir results/demo/data \\
      --workers 2 --hparams '{"seed": 0, "n_train_speakers": 48, "n_test_speakers": 16,
      "utts_per_speaker": 24, "min_dur": 2.0, "max_dur": 8.0, "n_noise": 12, "n_music": 8,
      "n_speech": 10, "n_rir": 24}'
"""

from __future__ import annotations

import argparse
import sys

from ssrl.demo import SessionStyle, generate_corpus
from ssrl.hparams import read_hparams

HPARAMS = {
    **dict.fromkeys(
        ("seed", "n_train_speakers", "n_test_speakers", "utts_per_speaker", "n_noise", "n_music", "n_speech", "n_rir"),
        int,
    ),
    "min_dur": float,
    "max_dur": float,
    "session": dict,
}


def parse_hparams(text: str) -> dict:
    """The corpus.demo config: the size keys, and ``session`` (SessionStyle fields) -> ``style``."""
    hp = read_hparams(text, HPARAMS, optional=("session",))
    session = hp.pop("session", None) or {}
    try:
        hp["style"] = SessionStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in session.items()})
    except TypeError as exc:
        raise SystemExit(f"--hparams: session: {exc}") from None
    return hp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", required=True, help="JSON object: the corpus.demo config")
    parser.add_argument("--corpus-dir", required=True, help="audio and baseline.json go here")
    parser.add_argument("--data-dir", required=True, help="manifests go here")
    parser.add_argument("--workers", type=int, default=1, help="synthesis processes (the result does not depend on it)")
    args = parser.parse_args(argv)
    hp = parse_hparams(args.hparams)
    try:
        summary = generate_corpus(
            args.corpus_dir,
            args.data_dir,
            workers=max(1, args.workers),
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            **hp,
        )
    except ValueError as exc:
        raise SystemExit(f"make_demo: {exc}") from exc
    print(
        f"demo corpus: {summary['n_train_speakers']} training speakers ({summary['n_train_utts']} utterances, "
        f"{summary['train_hours']:.2f} h), {summary['n_test_speakers']} test speakers "
        f"({summary['n_test_utts']} utterances), {summary['n_trials']} trials; MFCC-mean baseline EER "
        f"{100 * summary['baseline_eer']:.2f} %",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
