"""k-means pseudo labels from train-set embeddings (docs/method.md §6).

Writes
  --labels   'utt label' per line (label in [0, k); labels of clusters that ended empty are unused)
  --centers  (k, dim) float32 .npy: cluster means of the L2-normalised embeddings
  --quality  JSON: k, n_utts, dim, n_iter, converged, inertia, seconds, device, seed, max_iter,
             n_init, cluster-size statistics (n_clusters non-empty, n_empty, size_min/median/mean/max,
             n_singletons, sizes: the k cluster sizes in label order) and, with --utt2spk, the
             quality against the true speakers (nmi, accuracy, purity, n_speakers)
  --plot     PNG histogram of cluster sizes (and of true speaker sizes with --utt2spk)

Hyper-parameters (--hparams JSON): max_iter, seed, n_init, device ("auto": CUDA when the machine has a
GPU, else the CPU; "cpu"; "cuda"; "cuda:N"). torch is imported only on a CUDA device.

Example:
  python workflow/scripts/kmeans.py --emb results/demo/dino/emb/train.npz --k 62 \\
      --utt2spk results/demo/data/train/utt2spk --hparams '{"max_iter": 100, "seed": 0, "n_init": 1, "device": "auto"}' \\
      --labels l.txt --centers c.npy --quality q.json --plot sizes.png
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from ssrl.fileio import read_embeddings
from ssrl.hparams import read_hparams
from ssrl.kmeans import cluster_quality, kmeans
from ssrl.manifest import ManifestError, read_utt2spk, write_labels
from ssrl.results import size_stats, write_centers, write_quality

HPARAMS = {"max_iter": int, "seed": int, "n_init": int, "device": str}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emb", required=True, help="train-set embeddings (.npz: utts, embeddings)")
    ap.add_argument("--k", type=int, required=True, help="number of clusters")
    ap.add_argument("--utt2spk", help="true speakers of the embedded utterances, for quality metrics only")
    ap.add_argument("--hparams", required=True, help="JSON, see above")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--centers", required=True)
    ap.add_argument("--quality", required=True)
    ap.add_argument("--plot", required=True)
    args = ap.parse_args(argv)
    hp = read_hparams(args.hparams, HPARAMS)

    utts, emb = read_embeddings(args.emb)
    for bad, what in ((~np.isfinite(emb).all(axis=1), "contain NaN/inf"), (~emb.any(axis=1), "are all zeros")):
        if bad.any():
            raise SystemExit(f"{args.emb}: {int(bad.sum())} embedding(s) {what}, first {utts[int(np.argmax(bad))]!r}")
    truth = None
    if args.utt2spk:
        try:
            utt2spk = read_utt2spk(args.utt2spk)
        except ManifestError as exc:
            raise SystemExit(str(exc)) from None
        missing = [u for u in utts if u not in utt2spk]
        if missing:
            raise SystemExit(
                f"{args.utt2spk}: {len(missing)} of the {len(utts)} utterances in {args.emb} have no "
                f"speaker, e.g. {', '.join(map(repr, missing[:5]))}"
            )
        truth = np.array([utt2spk[u] for u in utts])
    if not 1 <= args.k <= len(utts):
        raise SystemExit(f"--k {args.k}: must be between 1 and the number of embeddings ({len(utts)}) in {args.emb}")

    try:
        res = kmeans(emb, args.k, seed=hp["seed"], max_iter=hp["max_iter"], n_init=hp["n_init"], device=hp["device"])
    except ValueError as exc:
        raise SystemExit(f"kmeans: {args.emb}: {exc}") from None
    sizes = np.bincount(res.labels, minlength=args.k)
    quality = {
        "k": args.k,
        "n_utts": len(utts),
        "dim": int(emb.shape[1]),
        "n_iter": res.n_iter,
        "converged": res.converged,
        "inertia": res.inertia,
        "seconds": round(res.seconds, 3),
        **hp,
        "device": res.device,
        "distances_computed": round(res.work, 4),
    }
    speaker_sizes = None
    if truth is not None:
        quality.update(cluster_quality(res.labels, truth))
        speaker_sizes = np.array(sorted(Counter(truth.tolist()).values()))
    quality.update(size_stats(sizes))  # n_clusters here equals cluster_quality's

    from ssrl.report.plots import plot_cluster_sizes  # matplotlib: imported once the clustering is done

    write_labels(args.labels, utts, res.labels)
    write_centers(args.centers, res.centers)
    plot_cluster_sizes(args.plot, sizes, speaker_sizes, f"k-means k={args.k}: cluster sizes")
    write_quality(args.quality, quality)
    summary = (
        f"k-means k={args.k}: {quality['n_clusters']} non-empty clusters, {res.n_iter} iterations "
        f"({'converged' if res.converged else 'max_iter reached'}), {res.seconds:.1f} s on {res.device}"
    )
    if truth is not None:
        summary += f"; NMI {quality['nmi']:.4f}  accuracy {quality['accuracy']:.4f}  purity {quality['purity']:.4f}"
    print(summary, flush=True)


if __name__ == "__main__":
    main()
