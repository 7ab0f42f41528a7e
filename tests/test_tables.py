"""ssrl.report (tables, plots) and the readers of ssrl.results, on fabricated pipeline files; the scripts and
report rules."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_CONFIG, deep_update, run_snakemake, write_config

from ssrl.fileio import write_json
from ssrl.provenance import STAMP_ENV
from ssrl.report import PLOT_NAMES, TABLE_NAMES
from ssrl.report.cost import COST_COLUMNS
from ssrl.report.plots import make_plots
from ssrl.report.published import read_published
from ssrl.report.render import to_markdown, write_tables
from ssrl.report.spec import TablesError, format_overrides, load_run, provenance_lines, provenance_warnings
from ssrl.report.tables import build_tables
from ssrl.results import LABEL_LOG_COLUMNS, ResultsError, read_label_log, read_metrics, read_train_record

PUBLISHED = REPO / "config" / "published.yaml"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- fabricated runs

# Distinct, recognisable values per system: eer (fraction), min_dcf_0.01, min_dcf_0.05.
METRICS = {
    "dino": (0.0523, 0.41, 0.2875),
    "iter_r1": (0.0417, 0.3512, 0.2231),
    "iter_r2": (0.0389, 0.3307, 0.2118),
    "ssrl": (0.0312, 0.2901, 0.1876),
    "ssrl_no_nlm": (0.0355, 0.3011, 0.1999),
    "wavlm_step1": (0.0611, 0.5012, 0.3333),
    "wavlm_step2": (0.0598, 0.4871, 0.3217),
    "wavlm_ft": (0.0577, 0.4702, 0.3109),
}
QUALITY = {  # k-means quality.json (iter_r2: no true labels -> no nmi/accuracy/purity)
    "dino": {"k": 8, "n_clusters": 8, "nmi": 0.7123, "accuracy": 0.6011, "purity": 0.6542},
    "iter_r1": {"k": 8, "n_clusters": 7, "nmi": 0.7811, "accuracy": 0.6733, "purity": 0.7125},
    "iter_r2": {"k": 8, "n_clusters": 6},
}


def label_log_rows(nmi0: float, truth: bool = True) -> list[dict]:
    """Two label-fixed epochs then three label-update epochs; live classes fall 8 -> 6."""
    rows = []
    for epoch, (phase, live) in enumerate([("fixed", 8), ("fixed", 8), ("update", 7), ("update", 7), ("update", 6)]):
        q = {"nmi": nmi0 + 0.011 * epoch, "accuracy": 0.5 + 0.013 * epoch, "purity": 0.55 + 0.017 * epoch}
        rows.append(
            {
                "epoch": epoch,
                "phase": phase,
                "relabelled": int(epoch >= 1),
                "replaced": int(phase == "update"),
                "live_classes": live,
                "changed": 3 * epoch,
                **(q if truth else dict.fromkeys(q, "")),
                "p_clean_mean": 0.9,
                "clean_tp": 10,
                "clean_fp": 1,
                "clean_tn": 2,
                "clean_fn": 3,
                "clean_tpr": 0.77,
                "clean_fpr": 0.33,
                "loss": 2.5 - 0.1 * epoch,
                "acc": 0.4,
                "teacher_eer": 0.05,
            }
        )
    return rows


LABEL_LOGS = {"ssrl": 0.7201, "ssrl_no_nlm": 0.7052, "wavlm_step2": 0.6501, "wavlm_ft": 0.6602}
# train_record.json: optimiser steps, global batch, CPU-seconds per system (distinct, recognisable)
TRAIN = {
    "dino": (100, 16, 301.5),
    "iter_r1": (40, 32, 120.25),
    "iter_r2": (40, 32, 130.5),
    "ssrl": (80, 32, 250.75),
    "ssrl_no_nlm": (80, 32, 240.125),
    "wavlm_step1": (30, 8, 90.5),
    "wavlm_step2": (20, 8, 60.25),
    "wavlm_ft": (10, 8, 45.0),
}
STAMP = {
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "dirty": False,
    "diff_sha256": None,
    "config_hash": "aaaaaaaaaaaaaaaa",
}


def train_record(name: str, gpu: bool = False, **stamp) -> dict:
    """A train_record.json as ssrl.train.record writes it."""
    steps, batch, cpu = TRAIN.get(name, (50, 32, 200.0))
    return {
        "stage": name,
        "optimiser_steps": steps,
        "global_batch": batch,
        "examples_seen": steps * batch,
        "epochs": 2,
        "steps_per_epoch": steps // 2,
        "processes": 2 if gpu else 1,
        "device": "cuda" if gpu else "cpu",
        "device_name": "NVIDIA H100" if gpu else "Some CPU",
        "threads_per_process": 1,
        "wall_s": cpu / 2,
        "cpu_s": cpu,
        "gpu_s": cpu / 4 if gpu else None,
        "peak_rss_bytes": 3 * 2**29,
        "peak_gpu_bytes": 2**30 if gpu else None,
        "attempts": 1,
        "finished": "2026-12-02T14:00:00Z",
        **{**STAMP, **stamp},
    }


def table_and_kind(name: str) -> tuple[str, str]:
    """The table and kind of a system name (the names rules/report.smk uses)."""
    if name in ("dino", "ssrl"):
        return "main", name
    if name.startswith("iter_r"):
        return "main", "iterative"
    if name in ("wavlm_step1", "wavlm_step2", "wavlm_ft"):
        return "wavlm", name
    return "ablations", "ablation"


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def fabricate(
    root: Path,
    systems=tuple(METRICS),
    trial_lists=("demo",),
    k: int = 8,
    checkpoint=None,
    compare=None,
    label_truth: bool = True,
    overrides=None,
    stamps=None,
    gpu: bool = False,
) -> dict:
    """Write the pipeline's files for ``systems`` under ``root`` (the results/<run>/ layout) and
    return the run spec that names them; ``stamps``: system -> stamp keys of its train_record.json
    (default :data:`STAMP`); ``gpu``: the records say CUDA."""
    rng = np.random.default_rng(0)
    spec_systems = []
    for name in systems:
        table, kind = table_and_kind(name)
        files = {
            "metrics": {},
            "det": {},
            "scores": {},
            "train_log": str(root / name / "train_log.tsv"),
            "train_record": str(root / name / "train_record.json"),
        }
        write_json(files["train_record"], train_record(name, gpu, **(stamps or {}).get(name, {})))
        eer, dcf1, dcf5 = METRICS.get(name, (0.0471, 0.3901, 0.2502))
        for t in trial_lists:
            n_t, n_n = 40, 60
            labels = np.r_[np.ones(n_t, int), np.zeros(n_n, int)]
            scores = np.r_[rng.normal(0.6, 0.15, n_t), rng.normal(0.1, 0.15, n_n)]
            files["metrics"][t] = str(root / name / "metrics" / f"{t}.json")
            write_json(
                files["metrics"][t],
                {
                    "trials": t,
                    "eer": eer,
                    "eer_threshold": 0.35,
                    "min_dcf_0.01": dcf1,
                    "min_dcf_0.05": dcf5,
                    "n_trials": n_t + n_n,
                    "n_target": n_t,
                    "n_nontarget": n_n,
                    "n_dropped": 0,
                    "score_norm": "none",
                    "asnorm_top_n": None,
                },
            )
            files["scores"][t] = str(root / name / "scores" / f"{t}.tsv")
            write_tsv(
                Path(files["scores"][t]),
                [
                    {"enroll": f"e{i}", "test": f"t{i}", "label": lab, "score": f"{s:.6f}"}
                    for i, (lab, s) in enumerate(zip(labels, scores))
                ],
                ["enroll", "test", "label", "score"],
            )
            files["det"][t] = str(root / name / "scores" / f"{t}.det.tsv")
            far = np.linspace(1.0, 0.0, 21)
            write_tsv(Path(files["det"][t]), [{"far": f, "frr": 1.0 - f**0.3} for f in far], ["far", "frr"])
        steps = np.arange(10, 110, 10)
        write_tsv(
            Path(files["train_log"]),
            [
                {
                    "kind": "step",
                    "epoch": s // 50,
                    "step": s,
                    "lr": 0.1 * (1 - s / 120),
                    "loss": 5.0 / (1 + s / 50),
                    "examples_per_s": 100.0,
                    "seconds": 1.0,
                }
                for s in steps
            ]
            + [{"kind": "epoch", "epoch": 1, "step": 100, "lr": 0.02, "loss": 2.0, "val_eer": 0.1, "seconds": 9.0}],
            ["kind", "epoch", "step", "lr", "loss", "examples_per_s", "val_eer", "seconds"],
        )
        if kind in ("dino", "iterative"):
            files["quality"] = str(root / name / f"kmeans_k{k}" / "quality.json")
            write_json(files["quality"], QUALITY.get(name, QUALITY["iter_r1"]))
        if kind in ("ssrl", "ablation", "wavlm_step2", "wavlm_ft"):
            files["label_log"] = str(root / name / "label_log.tsv")
            write_tsv(
                Path(files["label_log"]),
                label_log_rows(LABEL_LOGS.get(name, 0.7), label_truth),
                list(LABEL_LOG_COLUMNS),
            )
        entry = {"name": name, "table": table, "kind": kind, "files": files}
        if kind == "iterative":
            entry["round"] = int(name[len("iter_r") :])
        if kind == "ablation":
            entry["overrides"] = (overrides or {}).get(name, {"ssrl": {"nlm": False}})
        if table == "wavlm":
            entry["checkpoint"] = checkpoint
        spec_systems.append(entry)
    return {
        "run": "test",
        "k": k,
        "trial_lists": list(trial_lists),
        "compare": compare
        if compare is not None
        else {"dino": "sslsv_dino_ecapa_c1024", "wavlm_step1": "wavlm_base_plus_dino_labels"},
        "systems": spec_systems,
    }


@pytest.fixture
def demo_spec(tmp_path):
    return fabricate(tmp_path / "run")


def tables_of(spec) -> dict:
    return {t.name: t for t in build_tables(load_run(spec), read_published(PUBLISHED))}


def row(table, system, key="system"):
    match = table.frame[table.frame[key] == system]
    assert len(match) == 1, f"{system} rows: {len(match)}"
    return match.iloc[0]


def blank(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- tables


def test_main_table_values(demo_spec):
    main = tables_of(demo_spec)["main"]
    assert list(main.frame["system"]) == ["dino", "iter_r1", "iter_r2", "ssrl"]
    for name in ("dino", "iter_r1", "iter_r2", "ssrl"):
        r = row(main, name)
        eer, dcf1, dcf5 = METRICS[name]
        assert r["EER % (demo)"] == pytest.approx(100 * eer, abs=1e-12)  # fraction -> %
        assert r["minDCF 0.01 (demo)"] == dcf1 and r["minDCF 0.05 (demo)"] == dcf5
    assert row(main, "dino")["label NMI"] == 0.7123 and row(main, "dino")["label clusters"] == 8
    assert row(main, "iter_r1")["label clusters"] == 7
    assert blank(row(main, "iter_r2")["label NMI"])  # no truth in its quality.json
    assert row(main, "iter_r2")["label clusters"] == 6
    # SSRL: the final (last-epoch) online labels
    assert row(main, "ssrl")["label NMI"] == pytest.approx(0.7201 + 0.011 * 4)
    assert row(main, "ssrl")["label clusters"] == 6
    assert "round 1" in row(main, "iter_r1")["what it is"] and "DINO k-means" in row(main, "iter_r1")["what it is"]
    assert "round 1 k-means" in row(main, "iter_r2")["what it is"]


def test_markdown_formats_numbers_consistently(demo_spec):
    md = to_markdown(tables_of(demo_spec)["main"])
    assert md.startswith("# Main results")
    assert "EER in %" in md and "P_target 0.01 and 0.05" in md and "demo: 100 trials (40 target, 60 non-target)" in md
    dino = next(line for line in md.splitlines() if line.startswith("| dino |"))
    cells = [c.strip() for c in dino.strip("|").split("|")]
    # system, what, EER % (2 decimals), minDCF 0.01 / 0.05 (4 decimals), clusters, NMI (4 decimals),
    # train steps x batch, train CPU-s (1 decimal; no GPU column on CPU), published x4
    assert cells[2:9] == ["5.23", "0.4100", "0.2875", "8", "0.7123", "1600", "301.5"]
    assert cells[9:] == ["", "", "", ""]
    iter2 = next(line for line in md.splitlines() if line.startswith("| iter_r2 |"))
    assert [c.strip() for c in iter2.strip("|").split("|")][6] == ""  # blank NMI, not 'nan'
    assert "nan" not in md.lower().replace("nmi", "")


def test_published_column_only_on_the_matching_trial_list(tmp_path):
    vox = tables_of(fabricate(tmp_path / "vox", trial_lists=("vox1_o", "vox1_h")))
    r = row(vox["main"], "dino")
    assert (r["published EER %"], r["published minDCF"], r["published P_target"]) == (2.82, 0.3463, 0.01)
    assert "sslsv" in r["published reference"] and "DINO" in r["published reference"]
    assert all(blank(row(vox["main"], "ssrl")[c]) for c in ("published EER %", "published minDCF"))
    w = row(vox["wavlm"], "wavlm_step1")
    assert w["published EER %"] == 0.99 and blank(w["published minDCF"])  # the source gives no minDCF
    md = to_markdown(vox["main"])
    assert "| 2.82 | 0.3463 | 0.01 |" in md
    assert "does not score" not in md

    demo = tables_of(fabricate(tmp_path / "demo"))
    for table, system in (("main", "dino"), ("wavlm", "wavlm_step1")):
        r = row(demo[table], system)
        assert all(
            blank(r[c]) for c in ("published EER %", "published minDCF", "published P_target", "published reference")
        )
        assert any("VoxCeleb1-O" in note and "blank" in note for note in demo[table].notes)


def test_unknown_published_id_is_an_error(tmp_path):
    spec = fabricate(tmp_path / "r", systems=("dino", "ssrl"), compare={"dino": "no_such_ref"})
    with pytest.raises(TablesError, match=r"tables\.compare\.dino.*no_such_ref"):
        tables_of(spec)


def test_no_number_is_invented(tmp_path):
    """Every number in every CSV is an input value (metrics, quality, label logs, published file),
    an EER converted to %, or a count/epoch/round from them."""
    spec = fabricate(tmp_path / "vox", trial_lists=("vox1_o",))
    allowed = set()

    def collect(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            allowed.add(float(obj))

    for s in spec["systems"]:
        for path in s["files"]["metrics"].values():
            m = json.loads(Path(path).read_text())
            collect(m)
            allowed.add(100 * m["eer"])
        if "quality" in s["files"]:
            collect(json.loads(Path(s["files"]["quality"]).read_text()))
        if "label_log" in s["files"]:
            allowed.update(pd.read_csv(s["files"]["label_log"], sep="\t").select_dtypes("number").stack().tolist())
        record = json.loads(Path(s["files"]["train_record"]).read_text())
        collect(record)
        allowed.add(record["peak_rss_bytes"] / 2**20)
    # the training cost of a chain is a sum (cost.COST_RULE): iterative rounds 1..r, WavLM steps 1..s
    for chain in (("iter_r1", "iter_r2"), ("wavlm_step1", "wavlm_step2"), ("wavlm_step1", "wavlm_step2", "wavlm_ft")):
        allowed.add(float(sum(TRAIN[n][0] * TRAIN[n][1] for n in chain)))
        allowed.add(sum(TRAIN[n][2] for n in chain))
    collect(yaml.safe_load(PUBLISHED.read_text()))
    out = tmp_path / "tables"
    write_tables(build_tables(load_run(spec), read_published(PUBLISHED)), out, "vox")
    checked = 0
    for name in TABLE_NAMES:
        frame = pd.read_csv(out / f"{name}.csv")
        for col in frame.columns:
            for value in frame[col].dropna():
                if isinstance(value, str):
                    continue
                checked += 1
                assert any(math.isclose(value, a, rel_tol=1e-12, abs_tol=1e-12) for a in allowed), (name, col, value)
    assert checked > 50


def test_csv_has_full_precision_and_blanks(demo_spec, tmp_path):
    write_tables(build_tables(load_run(demo_spec), read_published(PUBLISHED)), tmp_path / "t", "test")
    main = pd.read_csv(tmp_path / "t" / "main.csv")
    assert main.loc[main["system"] == "iter_r1", "minDCF 0.01 (demo)"].item() == 0.3512
    assert main.loc[main["system"] == "dino", "EER % (demo)"].item() == pytest.approx(5.23, abs=1e-12)
    assert main.loc[main["system"] == "iter_r2", "label NMI"].isna().item()
    assert main["published EER %"].isna().all()
    raw = (tmp_path / "t" / "main.csv").read_text()
    assert "nan" not in raw.lower().replace("nmi", "")
    for name in TABLE_NAMES:
        assert (tmp_path / "t" / f"{name}.md").read_text().startswith("# ")
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert summary.startswith("# Results of run test")
    assert all(f"## {t}" in summary for t in ("Main results", "Ablations", "WavLM", "Pseudo-label", "Published"))
    html = (tmp_path / "t" / "summary.html").read_text()
    assert "<table>" in html and "5.23" in html and "sslsv" in html


def test_ablations_against_ssrl(demo_spec):
    abl = tables_of(demo_spec)["ablations"]
    assert list(abl.frame["system"]) == ["ssrl", "ssrl_no_nlm"]
    r = row(abl, "ssrl_no_nlm")
    assert r["EER % (demo)"] == pytest.approx(3.55, abs=1e-12) and r["what it is"] == "SSRL with ssrl.nlm=false"
    assert r["label NMI"] == pytest.approx(0.7052 + 0.044)


def test_empty_tables_are_written_with_a_note(tmp_path):
    spec = fabricate(tmp_path / "r", systems=("dino", "ssrl"))
    tables = tables_of(spec)
    for name, key in (("ablations", "ablations"), ("wavlm", "wavlm.enabled")):
        assert len(tables[name].frame) == 0
        md = to_markdown(tables[name])
        assert "(no rows)" in md and f"`{key}`" in md
    write_tables(list(tables.values()), tmp_path / "t", "r")
    assert list(pd.read_csv(tmp_path / "t" / "ablations.csv").columns)[:3] == ["system", "what it is", "EER % (demo)"]


def test_wavlm_front_end_note(tmp_path):
    rand = tables_of(fabricate(tmp_path / "a"))["wavlm"]
    assert list(rand.frame["system"]) == ["wavlm_step1", "wavlm_step2", "wavlm_ft"]
    assert set(rand.frame["front-end"]) == {"random-init front-end"}
    assert any("randomly initialised" in n for n in rand.notes)
    assert blank(row(rand, "wavlm_step1")["label NMI"])  # step 1 yields no labels
    assert row(rand, "wavlm_ft")["label NMI"] == pytest.approx(0.6602 + 0.044)
    real = tables_of(fabricate(tmp_path / "b", checkpoint="/data/WavLM-Large.pt"))["wavlm"]
    assert set(real.frame["front-end"]) == {"checkpoint WavLM-Large.pt"}
    assert not any("randomly initialised" in n for n in real.notes)


def test_pseudo_label_rows(demo_spec):
    pl = tables_of(demo_spec)["pseudo_labels"]
    assert list(pl.frame["labels"]) == ["k-means init", "round 1", "round 2", "SSRL", "SSRL", "SSRL"]
    init = pl.frame.iloc[0]
    assert (init["live clusters"], init["NMI"], init["accuracy"], init["purity"]) == (8, 0.7123, 0.6011, 0.6542)
    assert blank(init["epoch"])
    assert blank(pl.frame.iloc[2]["NMI"]) and pl.frame.iloc[2]["live clusters"] == 6
    ssrl = pl.frame[pl.frame["labels"] == "SSRL"]
    assert list(ssrl["epoch"]) == [2, 3, 4]  # label-update epochs only
    assert list(ssrl["live clusters"]) == [7, 7, 6]
    assert ssrl["NMI"].tolist() == pytest.approx([0.7201 + 0.011 * e for e in (2, 3, 4)])


def test_pseudo_labels_without_truth(tmp_path):
    spec = fabricate(tmp_path / "r", systems=("ssrl",), label_truth=False)
    pl = tables_of(spec)["pseudo_labels"]
    assert len(pl.frame) == 3 and pl.frame["NMI"].isna().all()
    assert any("no true speaker labels" in n for n in pl.notes)


def test_published_file_matches_spec_section_13():
    refs = read_published(PUBLISHED)
    got = {(r.eer_percent, r.min_dcf, r.p_target) for r in refs.values()}
    assert got == {
        (2.627, None, None),
        (3.016, None, None),
        (2.82, 0.3463, 0.01),
        (3.16, 0.223, 0.05),
        (1.80, 0.139, 0.05),
        (1.66, None, None),
        (0.99, None, None),
        (1.30, None, None),
    }
    assert all(r.trials == "vox1_o" and r.source for r in refs.values())
    assert not any("SSRL" in r.system for r in refs.values())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert set(v for v in config["tables"]["compare"].values() if v) <= set(refs)


def test_training_cost_sums_the_chain_after_dino(demo_spec):
    """cost.COST_RULE: iter_rN = rounds 1..N; SSRL and ablations their own stage; WavLM steps 1..s;
    DINO only in its own row; no GPU column on CPU."""
    tables = tables_of(demo_spec)
    crops, cpu = COST_COLUMNS["examples"], COST_COLUMNS["cpu"]
    expected = {
        "dino": ["dino"],
        "iter_r1": ["iter_r1"],
        "iter_r2": ["iter_r1", "iter_r2"],
        "ssrl": ["ssrl"],
        "ssrl_no_nlm": ["ssrl_no_nlm"],
        "wavlm_step1": ["wavlm_step1"],
        "wavlm_step2": ["wavlm_step1", "wavlm_step2"],
        "wavlm_ft": ["wavlm_step1", "wavlm_step2", "wavlm_ft"],
    }
    for table in ("main", "ablations", "wavlm"):
        t = tables[table]
        assert COST_COLUMNS["gpu"] not in t.frame.columns
        assert any(
            "summed: iter_rN = rounds 1..N" in n
            and "DINO's cost is in its own row only" in n
            and "(1600 utterances, 302 CPU-s in this run)" in n
            for n in t.notes
        ), table
        for name in t.frame["system"]:
            chain = expected[name]
            assert row(t, name)[crops] == sum(TRAIN[n][0] * TRAIN[n][1] for n in chain), (table, name)
            assert row(t, name)[cpu] == pytest.approx(sum(TRAIN[n][2] for n in chain), abs=1e-12), (table, name)
    training = tables["training"]
    assert list(training.frame["system"]) == list(METRICS)  # one row per job, its own cost
    r = row(training, "iter_r2")
    assert (r["optimiser steps"], r["global batch"], r["steps × batch"], r["CPU-s"]) == (40, 32, 1280, 130.5)
    assert r["peak RSS MiB"] == 1536 and r["commit"] == "0123456789ab" and r["config hash"] == "aaaaaaaaaaaaaaaa"


def test_gpu_seconds_column_when_a_job_ran_on_cuda(tmp_path):
    main = tables_of(fabricate(tmp_path / "g", systems=("dino", "iter_r1", "iter_r2", "ssrl"), gpu=True))["main"]
    assert row(main, "iter_r2")[COST_COLUMNS["gpu"]] == pytest.approx((120.25 + 130.5) / 4, abs=1e-12)
    assert row(main, "ssrl")[COST_COLUMNS["gpu"]] == pytest.approx(250.75 / 4, abs=1e-12)


def test_a_missing_training_record_leaves_the_chain_blank(tmp_path):
    spec = fabricate(tmp_path / "r", systems=("dino", "iter_r1", "iter_r2", "ssrl"))
    del spec["systems"][1]["files"]["train_record"]  # iter_r1
    main = tables_of(spec)["main"]
    assert blank(row(main, "iter_r1")[COST_COLUMNS["cpu"]]) and blank(row(main, "iter_r2")[COST_COLUMNS["cpu"]])
    assert row(main, "ssrl")[COST_COLUMNS["cpu"]] == 250.75


def _config_store(root: Path, configs: dict) -> None:
    for chash, cfg in configs.items():
        write_json(root / "provenance" / f"config-{chash}.json", cfg)


def test_tables_over_two_config_hashes_carry_a_warning(tmp_path, monkeypatch):
    monkeypatch.delenv(STAMP_ENV, raising=False)
    root = tmp_path / "r"
    spec = fabricate(
        root, stamps={"ssrl": {"config_hash": "bbbbbbbbbbbbbbbb"}, "ssrl_no_nlm": {"config_hash": "bbbbbbbbbbbbbbbb"}}
    )
    _config_store(
        root,
        {
            "aaaaaaaaaaaaaaaa": {"run": "r", "ssrl": {"lr": 0.1, "queue_len": 3}},
            "bbbbbbbbbbbbbbbb": {"run": "r", "ssrl": {"lr": 0.2, "queue_len": 3}},
        },
    )
    spec["provenance"] = str(root / "provenance.json")  # absent: the config store is still read
    run = load_run(spec)
    tables = build_tables(run, read_published(PUBLISHED))
    warning = provenance_warnings(run)
    assert len(warning) == 1 and warning[0].startswith("WARNING")
    assert "ssrl, ssrl_no_nlm: commit 0123456789ab, config bbbbbbbbbbbbbbbb" in warning[0]
    assert "config aaaaaaaaaaaaaaaa" in warning[0] and "ssrl.lr: 0.1 -> 0.2" in warning[0]
    assert "queue_len" not in warning[0]
    for t in tables:
        assert (t.notes[:1] == warning) == (t.name != "published"), t.name
    write_tables(tables, tmp_path / "t", "r", provenance_lines(run, "2026-12-02T15:00:00Z"))
    summary = (tmp_path / "t" / "summary.md").read_text()
    head = summary.split("## ")[0]
    assert "- commit: mixed, see the warning" in head and "- config hash: mixed, see the warning" in head
    assert "> **WARNING" in head and "ssrl.lr: 0.1 -> 0.2" in head
    assert "WARNING" in (tmp_path / "t" / "main.md").read_text()
    assert "<p class='warn'><b>WARNING" in (tmp_path / "t" / "summary.html").read_text()


def test_tables_built_under_another_commit_warn(tmp_path, monkeypatch):
    """The job building the tables (its stamp from the environment) counts as one of the files' sources."""
    spec = fabricate(tmp_path / "r", systems=("dino", "ssrl"))
    monkeypatch.setenv(STAMP_ENV, json.dumps({**STAMP}))
    assert provenance_warnings(load_run(spec)) == []
    monkeypatch.setenv(STAMP_ENV, json.dumps({**STAMP, "commit": "fedcba9876543210fedcba9876543210fedcba98"}))
    warning = provenance_warnings(load_run(spec))
    assert len(warning) == 1 and "dino, ssrl: commit 0123456789ab" in warning[0]
    assert "these tables (and any scoring rerun with them): commit fedcba987654" in warning[0]


def test_format_overrides():
    assert (
        format_overrides({"ssrl": {"queue_len": 1, "nlm": False}, "x": None})
        == "ssrl.queue_len=1, ssrl.nlm=false, x=null"
    )
    assert format_overrides({}) == "no overrides"


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_file_and_key(tmp_path):
    spec = fabricate(tmp_path / "r", systems=("dino", "ssrl"))
    metrics = Path(spec["systems"][0]["files"]["metrics"]["demo"])
    m = json.loads(metrics.read_text())
    del m["min_dcf_0.05"]
    metrics.write_text(json.dumps(m))
    with pytest.raises(ResultsError, match=re.escape(str(metrics)) + r".*min_dcf_0\.05"):
        read_metrics(metrics)
    m.update({"min_dcf_0.05": 0.1, "eer": 4.2})  # a percentage, not a fraction
    metrics.write_text(json.dumps(m))
    with pytest.raises(ResultsError, match="fraction"):
        read_metrics(metrics)

    log = Path(spec["systems"][1]["files"]["label_log"])
    lines = log.read_text().splitlines()
    lines[3] = lines[3].replace("fixed", "frozen").replace("update", "frozen")
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsError, match=re.escape(f"{log}:4:") + ".*phase"):
        read_label_log(log)

    bad = tmp_path / "published.yaml"
    bad.write_text("references:\n  x: {system: s, trials: vox1_o, eer_percent: 1.0, min_dcf: 0.2, p_target: null}\n")
    with pytest.raises(TablesError, match=r"references\.x.*source"):
        read_published(bad)
    bad.write_text(
        "references:\n  x: {system: s, trials: vox1_o, eer_percent: 1.0, min_dcf: 0.2, p_target: null, source: here}\n"
    )
    with pytest.raises(TablesError, match=r"references\.x.*together"):
        read_published(bad)

    record = Path(spec["systems"][1]["files"]["train_record"])
    r = json.loads(record.read_text())
    r["cpu_s"] = "12 s"
    record.write_text(json.dumps(r))
    with pytest.raises(ResultsError, match=re.escape(str(record)) + r": cpu_s: expected a finite number"):
        read_train_record(record)
    del r["config_hash"]
    record.write_text(json.dumps(r))
    with pytest.raises(ResultsError, match=re.escape(str(record)) + r": missing key\(s\) \['config_hash'\]"):
        read_train_record(record)

    spec["systems"][0]["files"]["metrics"] = {"other": str(metrics)}
    with pytest.raises(TablesError, match=r"spec\.systems\[0\]\.files\.metrics"):
        load_run(spec)


# --------------------------------------------------------------------------- plots and scripts


def test_plots_are_written(tmp_path):
    spec = fabricate(tmp_path / "run", systems=("dino", "iter_r1", "ssrl", "wavlm_step2"))
    paths = make_plots(spec, tmp_path / "plots")
    assert [p.name for p in paths] == [f"{n}.png" for n in PLOT_NAMES]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, p
    assert not list((tmp_path / "plots").glob(".*tmp*"))  # atomic writes left nothing behind


def test_scripts(demo_spec, tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(demo_spec))
    load_script("report_tables").main(
        ["--spec", str(spec_file), "--published", str(PUBLISHED), "--out-dir", str(tmp_path / "tables")]
    )
    assert "# Results of run test" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == sorted(
        [f"{n}.{e}" for n in TABLE_NAMES for e in ("md", "csv")] + ["summary.md", "summary.html"]
    )
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "**Provenance**" in summary and "- commit: 0123456789ab\n" in summary
    assert "- config hash: aaaaaaaaaaaaaaaa\n" in summary and "WARNING" not in summary
    demo_spec["compare"] = {"dino": "missing"}
    with pytest.raises(SystemExit, match="report_tables: config tables.compare.dino"):
        load_script("report_tables").main(
            ["--spec", json.dumps(demo_spec), "--published", str(PUBLISHED), "--out-dir", str(tmp_path / "t2")]
        )
    assert not (tmp_path / "t2").exists()


# --------------------------------------------------------------------------- the report rules


def effective_config() -> dict:
    return deep_update(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()), yaml.safe_load(TINY_CONFIG.read_text())
    )


@pytest.mark.slow
def test_report_rules(workdir):
    """On the tiny config, with fabricated inputs: the tables and plots jobs take every expected
    file and write every declared output; then the Snakemake HTML report includes them."""
    cfg = effective_config()
    rounds = int((cfg.get("iterative") or {}).get("rounds", 0))
    systems = ["dino", *[f"iter_r{r}" for r in range(1, rounds + 1)], "ssrl"]
    ablations = [name for name, overrides in (cfg.get("ablations") or {}).items() if overrides is not None]
    wavlm = bool((cfg.get("wavlm") or {}).get("enabled"))
    all_systems = [*systems, *ablations, *(["wavlm_step1", "wavlm_step2", "wavlm_ft"] if wavlm else [])]
    run_dir = workdir / "results" / cfg["run"]
    fabricate(run_dir, systems=all_systems, k=cfg["kmeans"]["k"])
    config = write_config(workdir / "config.yaml", {})
    targets = ["results/tiny/tables/summary.md", "results/tiny/plots/det.png"]
    # the job listing (inputs and outputs of each job) is printed by a real run as by a dry run
    out = run_snakemake(
        workdir, "--cores", "2", *targets, "--allowed-rules", "tables", "plots", configfile=config
    ).stdout
    jobs = {
        name: re.search(rf"^(?:local)?rule {name}:\n((?:[ \t].*\n)*)", out, re.M).group(1)
        for name in ("tables", "plots")
    }
    k = cfg["kmeans"]["k"]
    expected = [f"results/tiny/{s}/metrics/demo.json" for s in all_systems]
    expected += [f"results/tiny/{s}/kmeans_k{k}/quality.json" for s in systems if s != "ssrl"]
    expected += [
        f"results/tiny/{s}/label_log.tsv" for s in ["ssrl", *ablations, *(["wavlm_step2", "wavlm_ft"] if wavlm else [])]
    ]
    for path in expected + [str(REPO / "config" / "published.yaml")]:
        assert path in jobs["tables"], path
    for name in TABLE_NAMES:
        assert (
            f"results/tiny/tables/{name}.md" in jobs["tables"] and f"results/tiny/tables/{name}.csv" in jobs["tables"]
        )
    for s in all_systems:
        for path in (f"{s}/scores/demo.det.tsv", f"{s}/scores/demo.tsv", f"{s}/train_log.tsv"):
            assert f"results/tiny/{path}" in jobs["plots"], path
    assert "det.tsv" not in jobs["tables"] and "train_log" not in jobs["tables"]
    assert (run_dir / "tables" / "summary.md").read_text().startswith("# Results of run tiny")
    assert all((run_dir / "plots" / f"{n}.png").stat().st_size > 5000 for n in PLOT_NAMES)
    run_snakemake(workdir, "--report", "report.html", *targets, "--allowed-rules", "tables", "plots", configfile=config)
    html = (workdir / "report.html").read_text()
    assert "summary.html" in html and "det.png" in html and "Tables" in html and "Plots" in html
