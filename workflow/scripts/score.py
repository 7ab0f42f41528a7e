"""Score a trial list with one system's embeddings: EER, minDCF and DET points (docs/method.md §10).

Writes
  --scores   TSV with a header: enroll, test, label (1 target / 0 non-target), score
  --det      TSV with a header: far, frr (DET curve points, increasing threshold)
  --metrics  JSON: eer and eer_threshold (accept when score >= threshold; EER interpolated where FRR and
             FAR cross), eer_ref (the reference's definition: (FRR + FAR) / 2 at the threshold minimising
             |FRR - FAR|), min_dcf_0.01,
             min_dcf_0.05, n_trials, n_target, n_nontarget, n_dropped, score_norm, asnorm_top_n

Hyper-parameters (--hparams JSON): asnorm (bool), asnorm_top_n (int), allow_missing (bool),
det_points (int). With asnorm, --cohort names the cohort embedding file (e.g. train-set embeddings).

Example:
  python workflow/scripts/score.py --emb results/demo/dino/emb/test.npz \\
      --trials results/demo/data/trials/demo.txt --hparams '{"asnorm": false, "asnorm_top_n": 300,
      "allow_missing": false, "det_points": 500}' --scores s.tsv --det s.det.tsv --metrics m.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssrl.fileio import read_embeddings
from ssrl.hparams import read_hparams
from ssrl.results import write_det, write_metrics, write_scores
from ssrl.score import compute_eer_ref, compute_eer_threshold, compute_min_dcf, det_curve, score_trials

HPARAMS = {"asnorm": bool, "asnorm_top_n": int, "allow_missing": bool, "det_points": int}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emb", required=True, help="test-set embeddings (.npz: utts, embeddings)")
    ap.add_argument("--trials", required=True, help="trial list: '1|0 enroll test' per line")
    ap.add_argument("--cohort", help="cohort embeddings (.npz) for AS-norm")
    ap.add_argument("--hparams", required=True, help="JSON, see above")
    ap.add_argument("--scores", required=True)
    ap.add_argument("--det", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    hp = read_hparams(args.hparams, HPARAMS)
    if hp["asnorm"] and not args.cohort:
        raise SystemExit("asnorm is on but no --cohort embedding file was given")

    utts, emb = read_embeddings(args.emb)
    cohort = read_embeddings(args.cohort)[1] if hp["asnorm"] else None
    try:
        res = score_trials(
            utts, emb, args.trials, cohort=cohort, top_n=hp["asnorm_top_n"], allow_missing=hp["allow_missing"]
        )
        eer, threshold = compute_eer_threshold(res.scores, res.labels)
        far, frr = det_curve(res.scores, res.labels, max_points=hp["det_points"])
    except ValueError as exc:
        raise SystemExit(f"score: {args.emb} x {args.trials}: {exc}") from None
    if res.n_dropped:
        print(
            f"score: dropped {res.n_dropped} trial(s) naming utterances without an embedding (allow_missing)",
            file=sys.stderr,
        )

    write_scores(args.scores, res.enroll.tolist(), res.test.tolist(), res.labels.tolist(), res.scores.tolist())
    write_det(args.det, far.tolist(), frr.tolist())
    n_target = int((res.labels == 1).sum())
    metrics = {
        "trials": Path(args.trials).stem,
        "eer": eer,
        "eer_threshold": threshold,
        "eer_ref": compute_eer_ref(res.scores, res.labels),
        "min_dcf_0.01": compute_min_dcf(res.scores, res.labels, 0.01),
        "min_dcf_0.05": compute_min_dcf(res.scores, res.labels, 0.05),
        "n_trials": int(len(res.labels)),
        "n_target": n_target,
        "n_nontarget": int(len(res.labels)) - n_target,
        "n_dropped": res.n_dropped,
        "score_norm": res.norm,
        "asnorm_top_n": hp["asnorm_top_n"] if hp["asnorm"] else None,
    }
    write_metrics(args.metrics, metrics)
    print(
        f"score: {metrics['trials']}: EER {100 * eer:.3f}%  minDCF(0.01) {metrics['min_dcf_0.01']:.4f}  "
        f"minDCF(0.05) {metrics['min_dcf_0.05']:.4f}  ({metrics['n_trials']} trials, norm {res.norm})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
