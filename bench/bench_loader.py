"""Data-loader throughput: augmented 2-second crops per second per worker process.

Each item is what an SSRL/WavLM training step reads for its student: load a
FLAC utterance, take a random 2 s crop, augment it (SSRL student policy by
default: 1/3 reverb, 2/3 additive, docs/method.md §2.1), peak-normalise, pre-emphasise.
The target is >= 200 crops/s per worker, so that a few workers per GPU keep up.

    python bench/bench_loader.py                       # synthetic files in a temp dir
    python bench/bench_loader.py --corpus results/demo/corpus/train \\
        --augment results/demo/data/augment --workers 4 --seconds 30

``--corpus`` is a folder searched recursively for .flac/.wav; ``--augment`` a
folder holding {noise,music,babble,rir}.lst (one audio path per line). Without
them the script writes synthetic stand-ins (utterances 4-10 s, minute-long
noise/music, babble, short RIRs; 16-bit WAV like MUSAN and RIRS_NOISES) to a
temporary folder first. ``--workers 0``
measures in this process; W > 0 runs a DataLoader with W worker processes and
reports the total rate divided by W.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssrl import SAMPLE_RATE
from ssrl.audio import write_audio
from ssrl.augment import Augmenter, AugmentPolicy
from ssrl.data import LabelledCropDataset, MultiCropDataset
from ssrl.manifest import read_list

SOURCES = ("noise", "music", "babble", "rir")


def make_synthetic(root: Path, n_utts: int, seed: int = 0) -> tuple[list[str], dict[str, list[str]]]:
    """Write synthetic FLAC utterances and augmentation sources under ``root``."""
    rng = np.random.default_rng(seed)

    def put(name: str, x: np.ndarray) -> str:
        """FLAC for utterances (as prepared from VoxCeleb); 16-bit WAV for the MUSAN/RIR stand-ins,
        as those corpora are distributed (a WAV crop is a seek, FLAC must be decoded)."""
        path = root / name
        write_audio(path, (0.9 * x / np.max(np.abs(x))).astype(np.float32))
        return str(path)

    def voiced(seconds: float) -> np.ndarray:
        t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        return x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)

    utts = [put(f"utt/{i:04d}.flac", voiced(rng.uniform(4, 10))) for i in range(n_utts)]
    lists = {
        "noise": [put(f"noise/{i}.wav", rng.standard_normal(60 * SAMPLE_RATE)) for i in range(6)],
        "music": [put(f"music/{i}.wav", voiced(60)) for i in range(6)],
        "babble": [put(f"babble/{i}.wav", voiced(30)) for i in range(12)],
        "rir": [],
    }
    taps = np.arange(SAMPLE_RATE // 2)
    for i in range(40):
        rir = rng.standard_normal(taps.size) * np.exp(-taps / rng.uniform(300, 3000))
        rir[: rng.integers(10, 200)] = 0.0
        lists["rir"].append(put(f"rir/{i}.wav", rir))
    return utts, lists


def measure(dataset, workers: int, seconds: float, crops_per_item: int) -> tuple[int, float, float]:
    """Read items for about ``seconds`` after one warm-up item -> (crops, wall seconds,
    CPU seconds of this process). The CPU time is the load-independent cost when
    ``workers == 0`` (on a shared machine the wall-clock rate understates it)."""
    order = np.random.default_rng(0).permutation(len(dataset)).tolist()
    loader = DataLoader(
        dataset, batch_size=None, sampler=order * 1000, num_workers=workers, prefetch_factor=4 if workers else None
    )
    crops, t0, c0 = 0, None, None
    for _ in loader:
        if t0 is None:  # worker start-up and first reads excluded
            t0, c0 = time.perf_counter(), time.process_time()
            continue
        crops += crops_per_item
        if time.perf_counter() - t0 >= seconds:
            break
    return crops, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="folder of .flac/.wav utterances (default: synthetic)")
    parser.add_argument("--augment", type=Path, help="folder with {noise,music,babble,rir}.lst (default: synthetic)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: this process)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement time")
    parser.add_argument("--crop-s", type=float, default=2.0, help="crop length in seconds")
    parser.add_argument(
        "--policy",
        choices=["ssrl", "dino"],
        default="ssrl",
        help="ssrl: one student crop per item; dino: 2 x 4 s + 4 x 2 s crops per item",
    )
    parser.add_argument("--n-utts", type=int, default=200, help="synthetic utterances to write")
    parser.add_argument(
        "--preload-mb",
        type=float,
        default=256.0,
        help="preload_mb of the Augmenter (noise/music/babble) and of the dataset (the utterances): each "
        "decoded into memory when its files fit (0: every crop read from disk)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        utts, lists = (None, None)
        if args.corpus is None or args.augment is None:
            t = time.perf_counter()
            utts, lists = make_synthetic(Path(tmp), args.n_utts)
            print(f"synthetic files written in {time.perf_counter() - t:.1f} s under {tmp}", file=sys.stderr)
        if args.corpus is not None:
            utts = sorted(str(p) for p in args.corpus.rglob("*") if p.suffix.lower() in (".flac", ".wav"))
            if not utts:
                parser.error(f"{args.corpus}: no .flac or .wav files")
        if args.augment is not None:
            lists = {name: read_list(args.augment / f"{name}.lst") for name in SOURCES}
        augmenter = Augmenter(**lists, preload_mb=args.preload_mb)
        if args.policy == "ssrl":
            dataset = LabelledCropDataset(
                utts,
                np.zeros(len(utts), dtype=np.int64),
                student_s=args.crop_s,
                teacher_s=None,
                augmenter=augmenter,
                policy=AugmentPolicy.ssrl_student(),
                preload_mb=args.preload_mb,
            )
            per_item, what = 1, f"{args.crop_s:g} s crops"
        else:
            dataset = MultiCropDataset(utts, augmenter=augmenter, local_s=args.crop_s, preload_mb=args.preload_mb)
            per_item = dataset.n_global + dataset.n_local
            what = f"crops ({dataset.n_global} x 4 s + {dataset.n_local} x {args.crop_s:g} s per item)"
        crops, elapsed, cpu = measure(dataset, args.workers, args.seconds, per_item)

    processes = max(1, args.workers)
    rate = crops / elapsed / processes
    line = (
        f"{args.policy} policy, {what}, {len(utts)} utterances, workers={args.workers}, "
        f"{augmenter.preloaded} augmentation files and {dataset.preloaded} utterances preloaded: "
        f"{crops} crops in {elapsed:.1f} s -> {rate:.0f} crops/s per worker process"
    )
    if args.workers == 0:
        line += f"; {crops / cpu:.0f} crops per CPU second"
    print(f"{line} (target >= 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
