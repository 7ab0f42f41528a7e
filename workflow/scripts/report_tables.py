"""Result tables from the files the pipeline wrote (metrics, k-means quality, label logs).

Writes under --out-dir, for each table of main, ablations, wavlm, pseudo_labels, training, published:
  <table>.md   title, how-to-read line, Markdown table (EER %, 2 decimals; minDCF 4), notes
  <table>.csv  the same table at full precision (blank cells where a number is unknown)
and summary.md (a provenance block, then all tables; what `make demo` shows) and summary.html (the
same, for the Snakemake report). The provenance block names this job's commit and config hash (from
the environment Snakemake sets, ssrl.provenance) and warns when the inputs were made by others.

--spec is the run spec (JSON text, or the path of a JSON file) described in ssrl.report.spec: the run
name, K, the trial lists, config tables.compare and, per system, its table, kind and files.
--published is the YAML file of published reference numbers (config/published.yaml).

Example:
  python workflow/scripts/report_tables.py --spec spec.json --published config/published.yaml \\
      --out-dir results/demo/tables
"""

from __future__ import annotations

import argparse
import sys

from ssrl.provenance import now_iso
from ssrl.report.published import read_published
from ssrl.report.render import summary_markdown, write_tables
from ssrl.report.spec import load_run, provenance_lines, read_spec
from ssrl.report.tables import build_tables
from ssrl.results import ResultsError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="run spec: JSON text or a JSON file")
    ap.add_argument("--published", required=True, help="YAML file of published reference numbers")
    ap.add_argument("--out-dir", required=True, help="folder for the tables (results/<run>/tables)")
    args = ap.parse_args(argv)
    try:
        run = load_run(read_spec(args.spec))
        tables = build_tables(run, read_published(args.published))
    except (ResultsError, OSError) as exc:
        raise SystemExit(f"report_tables: {exc}") from None
    block = provenance_lines(run, now_iso())
    paths = write_tables(tables, args.out_dir, run.run, block)
    print(summary_markdown(tables, run.run, block), flush=True)
    print(f"report_tables: wrote {len(paths)} files under {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
