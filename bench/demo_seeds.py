"""The demo's learning targets over several corpus seeds, from finished runs' result files.

Reads, for each run ``results/<run>/`` (one ``make demo``-style run per corpus seed, e.g. made by
``bench/demo_seeds.sh``), the files the pipeline wrote and prints one Markdown table of the demo's
learning checks, per seed and as the mean, each marked met or not met:

* DINO learns: its epoch loss falls (first -> last epoch) and its k-means labels reach NMI >= 0.75;
* the SSRL student fits its labels: training accuracy of the last epoch >= 0.6;
* SSRL cleans its labels: label NMI after the last label-update epoch >= k-means NMI + 0.03, and the
  live classes end closer to the true speaker count than they start;
* SSRL's EER <= 0.9 x DINO's EER;
* every training job's epoch loss falls between its first and last epoch;
* WavLM (when run): step 1 EER <= 45 %, step 2 keeps >= half of its classes with label NMI >= 0.3;

then the EER and final label NMI of every system (ablations, iterative rounds, WavLM steps) per seed,
and the wall and CPU seconds per stage (Snakemake ``benchmark:`` files, summed over the stage's jobs).

Usage: python bench/demo_seeds.py demo_s0 demo_s1 demo_s2 [--trials demo] [--results results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ssrl.results import read_label_log, read_metrics, read_quality, read_train_log


def epoch_losses(path: Path) -> list[float]:
    """Mean loss of each epoch of a train_log.tsv."""
    log = read_train_log(path)
    return [float(x) for x in log.loc[log["kind"] == "epoch", "loss"]]


def last_epoch(path: Path, column: str) -> float:
    log = read_train_log(path)
    return float(log.loc[log["kind"] == "epoch", column].iloc[-1])


def run_figures(run_dir: Path, trials: str) -> dict:
    """The checks' numbers for one run (None where a file is missing)."""
    out: dict = {"systems": {}}
    n_spk = len({line.split()[1] for line in (run_dir / "data/train/utt2spk").read_text().splitlines() if line})
    out["n_speakers"] = n_spk
    seed = (
        json.loads((run_dir / "corpus/baseline.json").read_text())["corpus"]["seed"]
        if (run_dir / "corpus/baseline.json").exists()
        else None
    )
    out["seed"] = seed
    falling = {}
    for log in sorted(run_dir.glob("*/train_log.tsv")):
        losses = epoch_losses(log)
        falling[log.parent.name] = (losses[0], losses[-1])
    out["falling"] = falling
    dino = run_dir / "dino"
    quality = sorted(dino.glob("kmeans_k*/quality.json"))
    out["kmeans_nmi"] = read_quality(quality[0])["nmi"] if quality else None
    ssrl_log = run_dir / "ssrl/label_log.tsv"
    if ssrl_log.exists():
        labels = read_label_log(ssrl_log)
        update = labels[labels["phase"] == "update"]
        last = update.iloc[-1] if len(update) else labels.iloc[-1]
        out["ssrl_label_nmi"] = float(last["nmi"])
        out["live_start"], out["live_end"] = int(labels["live_classes"].iloc[0]), int(last["live_classes"])
        out["ssrl_acc"] = last_epoch(run_dir / "ssrl/train_log.tsv", "acc")
    for metrics in sorted(run_dir.glob(f"*/metrics/{trials}.json")):
        system = metrics.parent.parent.name
        row = {"eer": read_metrics(metrics)["eer"]}
        if (metrics.parent.parent / "label_log.tsv").exists():
            lab = read_label_log(metrics.parent.parent / "label_log.tsv")
            if lab["nmi"].notna().any():
                row["label_nmi"] = float(lab["nmi"].dropna().iloc[-1])
                row["live"] = int(lab["live_classes"].iloc[-1])
        q = sorted((metrics.parent.parent).glob("kmeans_k*/quality.json"))
        if q and "label_nmi" not in row:
            row["label_nmi"] = read_quality(q[0])["nmi"]
        out["systems"][system] = row
    return out


def checks(fig: dict) -> list[tuple[str, str, bool | None]]:
    """(check, value text, met) for one run."""
    rows = []
    dl = fig["falling"].get("dino")
    rows.append(
        (
            "DINO loss falls (first -> last epoch)",
            f"{dl[0]:.2f} -> {dl[1]:.2f}" if dl else "-",
            None if dl is None else dl[1] < dl[0],
        )
    )
    nmi = fig["kmeans_nmi"]
    rows.append(
        ("DINO k-means NMI >= 0.75", "-" if nmi is None else f"{nmi:.3f}", None if nmi is None else nmi >= 0.75)
    )
    acc = fig.get("ssrl_acc")
    rows.append(
        (
            "SSRL student training accuracy >= 0.6",
            "-" if acc is None else f"{acc:.2f}",
            None if acc is None else acc >= 0.6,
        )
    )
    lab = fig.get("ssrl_label_nmi")
    rows.append(
        (
            "SSRL label NMI >= k-means NMI + 0.03",
            "-" if lab is None else f"{nmi:.3f} -> {lab:.3f}",
            None if lab is None or nmi is None else lab >= nmi + 0.03,
        )
    )
    if "live_end" in fig:
        n = fig["n_speakers"]
        rows.append(
            (
                f"live classes move toward the {n} speakers",
                f"{fig['live_start']} -> {fig['live_end']}",
                abs(fig["live_end"] - n) < abs(fig["live_start"] - n),
            )
        )
    eer = {s: r["eer"] for s, r in fig["systems"].items()}
    if "ssrl" in eer and "dino" in eer:
        rows.append(
            (
                "SSRL EER <= 0.9 x DINO EER",
                f"{100 * eer['ssrl']:.2f} vs {100 * eer['dino']:.2f} %",
                eer["ssrl"] <= 0.9 * eer["dino"],
            )
        )
    bad = [s for s, (a, b) in fig["falling"].items() if not b < a]
    rows.append(("every training job's loss falls", "all" if not bad else "not: " + ", ".join(bad), not bad))
    if "wavlm_step1" in eer:
        rows.append(("WavLM step 1 EER <= 45 %", f"{100 * eer['wavlm_step1']:.2f} %", eer["wavlm_step1"] <= 0.45))
    step2 = fig["systems"].get("wavlm_step2", {})
    if "live" in step2:
        log = read_label_log(Path(fig["run_dir"]) / "wavlm_step2/label_log.tsv")
        start = int(log["live_classes"].iloc[0])
        ok = step2["live"] >= start / 2 and step2.get("label_nmi", 0) >= 0.3
        rows.append(
            (
                "WavLM step 2: >= half its classes live, label NMI >= 0.3",
                f"{step2['live']}/{start} live, NMI {step2.get('label_nmi', float('nan')):.3f}",
                ok,
            )
        )
    return rows


def mark(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**not met**")


STAGES = {
    "demo_corpus": "corpus synthesis",
    "dino_train": "DINO",
    "ssrl_train": "SSRL + ablations",
    "iterative_train": "iterative rounds",
    "wavlm_train": "WavLM pre-training, steps 1, 2, 2-ft",
    "extract": "extraction",
    "kmeans": "k-means",
    "score": "scoring",
    "tables": "tables",
    "plots": "plots",
}


def stage_times(run_dir: Path) -> dict[str, tuple[int, float, float]]:
    """stage -> (jobs, wall s, CPU s) from results/<run>/benchmarks/ (a file or a folder per rule)."""
    out: dict[str, tuple[int, float, float]] = {}
    for path in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(run_dir / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        stage = STAGES.get(rule, rule)
        frame = pd.read_csv(path, sep="\t")
        jobs, wall, cpu = out.get(stage, (0, 0.0, 0.0))
        out[stage] = (jobs + 1, wall + float(frame["s"].iloc[-1]), cpu + float(frame["cpu_time"].iloc[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run names (results/<run>/)")
    ap.add_argument("--trials", default="demo", help="trial list whose metrics are read")
    ap.add_argument("--results", default="results", help="results folder")
    args = ap.parse_args(argv)
    figs = []
    for run in args.runs:
        fig = run_figures(Path(args.results) / run, args.trials)
        fig["run_dir"] = str(Path(args.results) / run)
        figs.append(fig)
    heads = [f"seed {f['seed']}" if f["seed"] is not None else run for f, run in zip(figs, args.runs)]
    table = [{name: (text, met) for name, text, met in checks(f)} for f in figs]
    print("| check | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for name in dict.fromkeys(name for t in table for name in t):
        cells = [f"{t[name][0]} ({mark(t[name][1])})" if name in t else "-" for t in table]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    systems = sorted({s for f in figs for s in f["systems"]}, key=lambda s: (s != "dino", s != "ssrl", s))
    frame = pd.DataFrame({h: {s: f["systems"].get(s, {}).get("eer") for s in systems} for h, f in zip(heads, figs)})
    frame = 100 * frame
    frame["mean"] = frame.mean(axis=1)
    nmi = pd.DataFrame({h: {s: f["systems"].get(s, {}).get("label_nmi") for s in systems} for h, f in zip(heads, figs)})
    nmi["mean"] = nmi.mean(axis=1)
    print(
        "| system | "
        + " | ".join(f"EER % {h}" for h in frame.columns)
        + " | "
        + " | ".join(f"label NMI {h}" for h in nmi.columns)
        + " |"
    )
    print("|---|" + "---|" * (len(frame.columns) + len(nmi.columns)))
    for s in systems:
        e = " | ".join("-" if pd.isna(v) else f"{v:.2f}" for v in frame.loc[s])
        n = " | ".join("-" if pd.isna(v) else f"{v:.3f}" for v in nmi.loc[s])
        print(f"| {s} | {e} | {n} |")
    print()
    times = [stage_times(Path(args.results) / run) for run in args.runs]
    stages = [
        s for s in dict.fromkeys([*STAGES.values(), *(k for t in times for k in t)]) if any(s in t for t in times)
    ]
    print("| stage | jobs | " + " | ".join(f"wall s / CPU s {h}" for h in heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for stage in stages:
        jobs = max(t.get(stage, (0, 0, 0))[0] for t in times)
        cells = " | ".join(f"{t[stage][1]:.0f} / {t[stage][2]:.0f}" if stage in t else "-" for t in times)
        print(f"| {stage} | {jobs} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
