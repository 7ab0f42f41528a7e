"""Result plots from the files the pipeline wrote (DET points, trial scores, training and label logs).

Writes under --out-dir:
  det.png       DET curves of every system, one panel per trial list (normal-deviate axes)
  labels.png    label NMI and live clusters vs epoch of the SSRL systems, k-means init as reference
  training.png  training loss and learning rate vs optimiser step, one panel per system
  scores.png    target / non-target score histograms per system and trial list, EER threshold marked

--spec is the run spec (JSON text, or the path of a JSON file) described in ssrl.report.spec.

Example:
  python workflow/scripts/report_plots.py --spec spec.json --out-dir results/demo/plots
"""

from __future__ import annotations

import argparse
import sys

from ssrl.report.plots import make_plots
from ssrl.report.spec import read_spec
from ssrl.results import ResultsError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="run spec: JSON text or a JSON file")
    ap.add_argument("--out-dir", required=True, help="folder for the figures (results/<run>/plots)")
    args = ap.parse_args(argv)
    try:
        paths = make_plots(read_spec(args.spec), args.out_dir)
    except (ResultsError, OSError) as exc:
        raise SystemExit(f"report_plots: {exc}") from None
    print(f"report_plots: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)


if __name__ == "__main__":
    main()
