"""Figures, built only from the files the pipeline wrote: the report's DET curves, pseudo-label quality,
training curves and score histograms (:func:`make_plots`), and the k-means stage's cluster-size histogram
(:func:`plot_cluster_sizes`). matplotlib's Agg renderer through :class:`matplotlib.figure.Figure` (no
pyplot, no global backend).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.special import ndtri

from ..fileio import atomic_path
from ..progress import Progress
from ..results import read_det, read_scores, read_train_log
from . import PLOT_NAMES
from .spec import TablesError, load_run, trial_list_name

_LINESTYLES = {"main": "-", "ablations": "--", "wavlm": ":"}
_DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass
class DetCurve:
    """DET points of one system on one trial list (fractions) and its EER (fraction)."""

    far: np.ndarray
    frr: np.ndarray
    eer: float
    n_target: int
    n_nontarget: int


def _colour(i: int) -> Any:
    """The i-th line colour: tab10, then Dark2 (18 distinct colours, then repeating)."""
    from matplotlib import colormaps

    palette = [*colormaps["tab10"].colors, *colormaps["Dark2"].colors]
    return palette[i % len(palette)]


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _panels(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` panels of ``size`` (inches) in rows of at most ``ncols``; the (rows * cols,)
    axes in reading order (those past ``n`` are hidden by the caller)."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _empty_figure(path: str | os.PathLike, message: str) -> None:
    fig = Figure(figsize=(6, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    _save(fig, path)


def plot_det(curves: Mapping[str, Mapping[str, DetCurve]], groups: Mapping[str, str], path: str | os.PathLike) -> None:
    """DET curves (normal-deviate axes, FAR vs FRR in %) of every system, one panel per trial
    list. ``curves``: trial list -> system -> :class:`DetCurve`; ``groups``: system -> table
    (sets the line style)."""
    lists = list(curves)
    if not lists or not any(curves.values()):
        return _empty_figure(path, "no DET curves")
    fig = Figure(figsize=(6.2 * len(lists), 6.2), layout="constrained")
    axes = fig.subplots(1, len(lists), squeeze=False)[0]
    for ax, t in zip(axes, lists):
        eps = min(min(0.5 / c.n_target, 0.5 / c.n_nontarget) for c in curves[t].values())
        lo = max(_DET_TICKS[0], max((x for x in _DET_TICKS if x <= eps), default=_DET_TICKS[0]))
        for i, (name, c) in enumerate(curves[t].items()):
            x = ndtri(np.clip(c.far, lo, 1.0 - lo))
            y = ndtri(np.clip(c.frr, lo, 1.0 - lo))
            (line,) = ax.plot(
                x,
                y,
                linestyle=_LINESTYLES.get(groups.get(name, "main"), "-"),
                color=_colour(i),
                label=f"{name} (EER {100 * c.eer:.2f} %)",
            )
            e = ndtri(min(max(c.eer, lo), 0.99))
            ax.plot([e], [e], marker="o", markersize=4, color=line.get_color())
        ticks = [v for v in _DET_TICKS if v >= lo]
        ax.set_xticks(ndtri(ticks), [f"{100 * v:g}" for v in ticks])
        ax.set_yticks(ndtri(ticks), [f"{100 * v:g}" for v in ticks])
        ax.set_xlim(ndtri(lo), ndtri(0.5))
        ax.set_ylim(ndtri(lo), ndtri(0.5))
        ax.plot(ax.get_xlim(), ax.get_ylim(), color="0.8", linewidth=0.8, zorder=0)
        ax.set_xlabel("false acceptance rate (%)")
        ax.set_ylabel("false rejection rate (%)")
        ax.set_title(f"DET: {trial_list_name(t)}")
        ax.grid(True, color="0.9")
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)


def plot_labels(logs: Mapping[str, pd.DataFrame], init: Mapping[str, Any] | None, path: str | os.PathLike) -> None:
    """Label NMI and live clusters vs epoch for the SSRL systems (``logs``: system -> label log),
    with the k-means init (``init``: DINO quality.json, or None) as dashed reference lines."""
    if not logs:
        return _empty_figure(path, "no SSRL label logs")
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_nmi, ax_live = fig.subplots(1, 2)
    have_truth = False
    for i, (name, log) in enumerate(logs.items()):
        colour = _colour(i)
        if log["nmi"].notna().any():
            have_truth = True
            ax_nmi.plot(log["epoch"], log["nmi"], marker=".", color=colour, label=name)
        ax_live.plot(log["epoch"], log["live_classes"], marker=".", color=colour, label=name)
        update = log.loc[log["phase"] == "update", "epoch"]
        if name == "ssrl" and len(update):
            for ax in (ax_nmi, ax_live):
                ax.axvline(update.iloc[0] - 0.5, color="0.6", linestyle=":", linewidth=1)
    if init is not None:
        if init.get("nmi") is not None:
            ax_nmi.axhline(
                init["nmi"], color="k", linestyle="--", linewidth=1, label=f"k-means init ({init['nmi']:.3f})"
            )
        ax_live.axhline(
            init["n_clusters"], color="k", linestyle="--", linewidth=1, label=f"k-means init ({init['n_clusters']})"
        )
    if not have_truth:
        ax_nmi.text(
            0.5, 0.5, "no true speaker labels:\nNMI unavailable", ha="center", va="center", transform=ax_nmi.transAxes
        )
    ax_nmi.set_ylabel("NMI of the pseudo labels")
    ax_live.set_ylabel("live clusters")
    ax_live.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, title in ((ax_nmi, "label NMI"), (ax_live, "live clusters")):
        ax.set_xlabel("epoch (dotted: first SSRL label-update epoch)")
        ax.set_title(title)
        ax.grid(True, color="0.9")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path)


def plot_training(logs: Mapping[str, pd.DataFrame], path: str | os.PathLike, ncols: int = 3) -> None:
    """Training loss (left axis) and learning rate (right axis, log scale) vs optimiser step,
    one panel per system (``logs``: system -> train log; ``step`` rows, else ``epoch`` rows)."""
    if not logs:
        return _empty_figure(path, "no training logs")
    n = len(logs)
    fig, axes = _panels(n, ncols, (4.6, 3.0))
    for ax, (name, log) in zip(axes, logs.items()):
        rows = log[log["kind"] == "step"]
        if not len(rows):
            rows = log[log["kind"] == "epoch"]
        ax.set_title(name)
        ax.set_xlabel("optimiser step")
        if not len(rows):
            ax.text(0.5, 0.5, "empty log", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(rows["step"], rows["loss"], color="tab:blue")
        ax.set_ylabel("loss", color="tab:blue")
        lr = rows[["step", "lr"]].dropna()
        if len(lr) and (lr["lr"] > 0).any():
            ax2 = ax.twinx()
            ax2.plot(lr["step"], lr["lr"], color="tab:orange", linestyle="--")
            ax2.set_yscale("log")
            ax2.set_ylabel("learning rate", color="tab:orange")
        ax.grid(True, color="0.9")
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)


def plot_scores(
    scores: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
    path: str | os.PathLike,
    ncols: int = 3,
    bins: int = 60,
) -> None:
    """Target / non-target score histograms, one panel per (system, trial list); ``scores``:
    ``(system, list) -> (labels, scores, metrics)``; the EER threshold is drawn as a line.
    ``bins``: at most this many bins (fewer, about sqrt(trials), for short lists)."""
    if not scores:
        return _empty_figure(path, "no trial scores")
    n = len(scores)
    fig, axes = _panels(n, ncols, (4.4, 3.0))
    for ax, ((name, t), (labels, values, metrics)) in zip(axes, scores.items()):
        edges = np.histogram_bin_edges(values, bins=min(bins, max(10, int(math.sqrt(len(values))))))
        for lab, colour, text in ((0, "tab:red", "non-target"), (1, "tab:green", "target")):
            if (labels == lab).any():
                density, _ = np.histogram(values[labels == lab], bins=edges, density=True)
                ax.stairs(density, edges, fill=True, alpha=0.55, color=colour, label=text)
        if metrics.get("eer_threshold") is not None:
            ax.axvline(metrics["eer_threshold"], color="k", linestyle="--", linewidth=1, label="EER threshold")
        ax.set_title(f"{name}, {t} (EER {100 * metrics['eer']:.2f} %)", fontsize=9)
        ax.set_xlabel("score" + (" (AS-norm)" if metrics.get("score_norm") == "asnorm" else " (cosine)"))
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)


def make_plots(spec: Mapping[str, Any], out_dir: str | os.PathLike, progress_every_s: float = 10.0) -> list[Path]:
    """Read the DET points, scores, training and label logs named by a run spec and write
    ``<out_dir>/{det,labels,training,scores}.png``; returns the paths written."""
    run = load_run(spec)
    out_dir = Path(out_dir)
    groups = {s.name: s.table for s in run.systems}
    curves: dict[str, dict[str, DetCurve]] = {t: {} for t in run.trial_lists}
    score_data = {}
    train_logs = {}
    progress = Progress(len(run.systems), "plots: reading", unit="system", every_s=progress_every_s)
    for s in run.systems:
        for key in ("det", "scores", "train_log"):
            if key not in s.files:
                raise TablesError(f"spec: system {s.name!r} has no files.{key}")
        for t in run.trial_lists:
            m = s.metrics[t]
            far, frr = read_det(s.files["det"][t])
            curves[t][s.name] = DetCurve(far, frr, float(m["eer"]), int(m["n_target"]), int(m["n_nontarget"]))
            labels, values = read_scores(s.files["scores"][t])
            score_data[(s.name, t)] = (labels, values, m)
        train_logs[s.name] = read_train_log(s.files["train_log"])
        progress.update(1)
    dino = run.system("dino")
    paths = {name: out_dir / f"{name}.png" for name in PLOT_NAMES}
    plot_det(curves, groups, paths["det"])
    plot_labels(
        {s.name: s.label_log for s in run.systems if s.label_log is not None},
        dino.quality if dino is not None else None,
        paths["labels"],
    )
    plot_training(train_logs, paths["training"])
    plot_scores(score_data, paths["scores"])
    return list(paths.values())


def plot_cluster_sizes(
    path: str | os.PathLike, sizes: np.ndarray, speaker_sizes: np.ndarray | None, title: str
) -> None:
    """The k-means stage's ``sizes.png``: histogram of the (k,) cluster ``sizes`` (empty clusters left out)
    and of the true speakers' sizes when known."""
    used = sizes[sizes > 0]
    top = int(max(used.max(), speaker_sizes.max() if speaker_sizes is not None else 0))
    bins = np.linspace(0.5, top + 0.5, min(top, 60) + 1)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(used, bins=bins, alpha=0.7, label=f"k-means clusters ({len(used)} non-empty)")
    if speaker_sizes is not None:
        ax.hist(speaker_sizes, bins=bins, alpha=0.5, label=f"true speakers ({len(speaker_sizes)})")
    ax.set_xlabel("utterances per cluster")
    ax.set_ylabel("clusters")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save(fig, path, dpi=120)
