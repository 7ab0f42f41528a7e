"""Speaker-ID probe of WavLM front-ends: how much speaker information their hidden states carry.

Every utterance of a training set (``--wav-scp`` + ``--utt2spk``, e.g. the demo's
results/demo/data/train/) is read whole, peak-normalised and pre-emphasised as extraction
does (:func:`ssrl.data.normalise_waveform`), and summarised by the per-dimension mean and
standard deviation over its frames of:

* each WavLM transformer layer's hidden states (``layer i``) and their plain average
  (``layer mean``, the layer weighting of WavLM step 1 at its uniform start), for every
  front-end named (``--random-tiny``: the tiny randomly initialised WavLM of the demo
  when no pre-training runs; ``--checkpoint PATH``: any checkpoint ssrl.models.wavlm reads,
  e.g. the workflow's results/demo/wavlm_pretrain/wavlm_tiny.pt);
* the log mel spectrogram (80 bins, 25 ms / 10 ms) as a reference.

Each speaker's utterances are split in two halves (the first ``ceil(n / 2)`` in wav.scp
order train, the rest test); a multinomial logistic regression (scikit-learn, standardised
features) is fitted on the training halves and its speaker-ID accuracy on the test halves
is printed per feature set, side by side with chance (1 / speakers). Speaker labels are used
only here, never by the pre-training.

    python bench/wavlm_probe.py --wav-scp results/demo/data/train/wav.scp \\
        --utt2spk results/demo/data/train/utt2spk --random-tiny \\
        --checkpoint results/demo/wavlm_pretrain/wavlm_tiny.pt
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ssrl.audio import load_audio
from ssrl.data import normalise_waveform
from ssrl.features import MelFrontend
from ssrl.manifest import read_utt2spk, read_wav_scp
from ssrl.models.wavlm import WavLM
from ssrl.models.wavlm_checkpoint import load_wavlm

LOG_FLOOR = 1e-6  # added to mel power before the log


def mean_std(frames: torch.Tensor) -> np.ndarray:
    """(T, D) frames -> (2 D,) float64: per-dimension mean, then standard deviation (over T)."""
    frames = frames.double()
    return torch.cat([frames.mean(0), frames.std(0, unbiased=False)]).numpy()


@torch.no_grad()
def wavlm_features(model: WavLM, waves: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-utterance mean+std of each layer's hidden states and of their average -> name: (N, 2 D)."""
    model.eval()
    rows: dict[str, list[np.ndarray]] = {}
    for wave in waves:
        hidden, _ = model(wave[None])  # (L, 1, T, D)
        layers = {f"layer {i + 1}": h[0] for i, h in enumerate(hidden)}
        layers["layer mean"] = hidden.mean(0)[0]
        for name, frames in layers.items():
            rows.setdefault(name, []).append(mean_std(frames))
    return {name: np.stack(r) for name, r in rows.items()}


@torch.no_grad()
def logmel_features(waves: list[torch.Tensor]) -> np.ndarray:
    """Per-utterance mean+std of the 80-bin log mel spectrogram -> (N, 160)."""
    mel = MelFrontend()
    return np.stack([mean_std(torch.log(mel(w[None])[0] + LOG_FLOOR).T) for w in waves])


def split_halves(speakers: list[str]) -> np.ndarray:
    """Boolean (N,) train mask: the first ceil(n / 2) utterances (in list order) of each speaker."""
    seen: dict[str, int] = {}
    counts = {s: speakers.count(s) for s in set(speakers)}
    train = np.zeros(len(speakers), dtype=bool)
    for i, s in enumerate(speakers):
        train[i] = seen.get(s, 0) < (counts[s] + 1) // 2
        seen[s] = seen.get(s, 0) + 1
    return train


def probe_accuracy(x: np.ndarray, speakers: list[str], train: np.ndarray, seed: int = 0) -> float:
    """Accuracy (a fraction) on ~train of a standardised logistic regression fitted on train."""
    y = np.asarray(speakers)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x[train], y[train])
    return float((clf.predict(x[~train]) == y[~train]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wav-scp", required=True)
    ap.add_argument("--utt2spk", required=True)
    ap.add_argument("--checkpoint", action="append", default=[], help="WavLM checkpoint to probe (repeatable)")
    ap.add_argument("--random-tiny", action="store_true", help="also probe the random-init tiny WavLM")
    ap.add_argument("--num-layers", type=int, default=2, help="transformer layers kept (config wavlm.num_layers)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the random-init tiny WavLM")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    scp, utt2spk = read_wav_scp(args.wav_scp), read_utt2spk(args.utt2spk)
    missing = [u for u in scp if u not in utt2spk]
    if missing:
        print(
            f"wavlm_probe: {args.utt2spk} lacks {len(missing)} utterance(s) of {args.wav_scp}, e.g. {missing[0]}",
            file=sys.stderr,
        )
        return 1
    utts = list(scp)
    speakers = [utt2spk[u] for u in utts]
    train = split_halves(speakers)
    t0 = time.perf_counter()
    waves = [torch.from_numpy(normalise_waveform(load_audio(scp[u]))) for u in utts]
    print(
        f"{len(utts)} utterances, {len(set(speakers))} speakers ({train.sum()} train / {(~train).sum()} test), "
        f"{sum(len(w) for w in waves) / 16000 / 3600:.2f} h, read in {time.perf_counter() - t0:.1f} s"
    )

    fronts: list[tuple[str, WavLM]] = []
    if args.random_tiny:
        torch.manual_seed(args.seed)
        fronts.append(("random-init tiny WavLM", load_wavlm(None, args.num_layers, tiny=True)))
    fronts += [(f"checkpoint {path}", load_wavlm(path, args.num_layers)) for path in args.checkpoint]

    results: list[tuple[str, str, float]] = []
    for front, model in fronts:
        t0 = time.perf_counter()
        feats = wavlm_features(model, waves)
        seconds = time.perf_counter() - t0
        for name, x in feats.items():
            results.append((front, name, probe_accuracy(x, speakers, train)))
        print(f"{front}: features in {seconds:.1f} s")
    results.append(("log-mel statistics", "80 log mel bins", probe_accuracy(logmel_features(waves), speakers, train)))

    width = max(len(f) for f, _, _ in results)
    print(
        f"\nspeaker-ID accuracy, logistic regression on per-utterance mean+std (chance "
        f"{100 / len(set(speakers)):.1f} %)"
    )
    print(f"{'front-end':<{width}}  {'features':<16}  accuracy")
    for front, name, acc in results:
        print(f"{front:<{width}}  {name:<16}  {100 * acc:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
