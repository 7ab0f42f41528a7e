# Result tables, plots and the HTML report, built only from files the pipeline wrote.
#   tables/{main,ablations,wavlm,pseudo_labels,training,published}.{md,csv}, tables/summary.{md,html}
# summary.md / .html open with a provenance block read from results/<run>/provenance.json (written by the
# Snakefile's onstart handler before any job runs; not an input, so a new commit reruns nothing) and the
# systems' train_record.json files (inputs: the training-cost columns and the commit / config checks).
#   plots/{det,labels,training,scores}.png
# After a run:  snakemake --report results/<run>/report.html  (tables and plots, captions in report/)
#
# Which systems the tables hold comes from the config, read once below (REPORT_SYSTEMS). Absent
# sections mean no such systems: no `iterative` -> no rounds, no `ablations` -> an ablations table
# without rows, `wavlm.enabled` false or absent -> a wavlm table without rows.


report: "../report/workflow.rst"


# The systems of the result tables, in table order: name, table (main | ablations | wavlm), kind, and
# round (iterative), overrides (ablation) or checkpoint (WavLM, wavlm_checkpoint(); None: random init).
# The systems come from the constants of rules/common.smk: ITERATIVE_ROUNDS, ABLATIONS (name -> overrides
# of the ssrl section), WAVLM_SYSTEMS.
REPORT_SYSTEMS = [
    {"name": "dino", "table": "main", "kind": "dino"},
    *[{"name": f"iter_r{r}", "table": "main", "kind": "iterative", "round": r} for r in range(1, ITERATIVE_ROUNDS + 1)],
    {"name": "ssrl", "table": "main", "kind": "ssrl"},
    *[
        {"name": name, "table": "ablations", "kind": "ablation", "overrides": overrides}
        for name, overrides in ABLATIONS.items()
    ],
    *[{"name": name, "table": "wavlm", "kind": name, "checkpoint": wavlm_checkpoint()} for name in WAVLM_SYSTEMS],
]

# Each system's files (the run spec of ssrl.report.spec): metrics, det, scores per trial list; train_log;
# train_record (cost, provenance); k-means quality (DINO, iterative rounds); label_log (systems trained
# with online pseudo labels).
_REPORT_FILES = {}
for _s in REPORT_SYSTEMS:
    _REPORT_FILES[_s["name"]] = {
        **{key: {t: score_path(_s["name"], t, key) for t in TRIAL_LISTS} for key in ("metrics", "det", "scores")},
        "train_log": sys_path(_s["name"], "train_log.tsv"),
        "train_record": sys_path(_s["name"], "train_record.json"),
    }
    if _s["kind"] in ("dino", "iterative"):
        _REPORT_FILES[_s["name"]]["quality"] = kmeans_path(_s["name"], "quality.json")
    if _s["kind"] in ("ssrl", "ablation", "wavlm_step2", "wavlm_ft"):
        _REPORT_FILES[_s["name"]]["label_log"] = sys_path(_s["name"], "label_log.tsv")

# Run specs of the two rules, each naming only the files that rule declares as inputs.
_TABLES_SPEC, _PLOTS_SPEC = (
    {
        "run": config["run"],
        "k": config["kmeans"]["k"],
        "trial_lists": list(TRIAL_LISTS),
        "compare": dict(config["tables"]["compare"]),
        "provenance": run_path(_provenance.PROVENANCE_FILE),
        "systems": [
            {**s, "files": {k: v for k, v in _REPORT_FILES[s["name"]].items() if k in kinds}} for s in REPORT_SYSTEMS
        ],
    }
    for kinds in (
        ("metrics", "quality", "label_log", "train_record"),
        ("metrics", "det", "scores", "train_log", "quality", "label_log"),
    )
)
_TABLES_INPUTS, _PLOTS_INPUTS = (
    [
        path
        for s in spec["systems"]
        for value in s["files"].values()
        for path in (value.values() if isinstance(value, dict) else [value])
    ]
    for spec in (_TABLES_SPEC, _PLOTS_SPEC)
)
# config tables.published: an absolute path, or relative to the workflow folder.
_PUBLISHED = str(Path(workflow.basedir) / config["tables"]["published"])


rule tables:
    input:
        files=_TABLES_INPUTS,
        published=_PUBLISHED,
    output:
        md=[
            report(
                run_path("tables", f"{name}.md"),
                caption="../report/tables_md.rst",
                category="Tables",
                subcategory="Markdown",
                labels={"table": name},
            )
            for name in _report.TABLE_NAMES
        ],
        csv=[
            report(
                run_path("tables", f"{name}.csv"),
                caption="../report/tables_csv.rst",
                category="Tables",
                subcategory="CSV",
                labels={"table": name},
            )
            for name in _report.TABLE_NAMES
        ],
        summary=run_path("tables", "summary.md"),
        html=report(
            run_path("tables", "summary.html"),
            caption="../report/tables.rst",
            category="Tables",
            subcategory="All tables",
            labels={"table": "all"},
        ),
    log:
        log_path("tables"),
    conda:
        ENV
    params:
        spec=as_json(_TABLES_SPEC),
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        script_cmd(
            "report_tables.py",
            "--spec {params.spec:q} --published {input.published:q} --out-dir {params.out_dir:q} >> {log:q} 2>&1",
        )


rule plots:
    input:
        _PLOTS_INPUTS,
    output:
        det=report(
            run_path("plots", "det.png"),
            caption="../report/det.rst",
            category="Plots",
            labels={"figure": "DET curves"},
        ),
        labels=report(
            run_path("plots", "labels.png"),
            caption="../report/labels.rst",
            category="Plots",
            labels={"figure": "pseudo labels vs epoch"},
        ),
        training=report(
            run_path("plots", "training.png"),
            caption="../report/training.rst",
            category="Plots",
            labels={"figure": "training loss and LR"},
        ),
        scores=report(
            run_path("plots", "scores.png"),
            caption="../report/scores.rst",
            category="Plots",
            labels={"figure": "score histograms"},
        ),
    log:
        log_path("plots"),
    conda:
        ENV
    params:
        spec=as_json(_PLOTS_SPEC),
        out_dir=lambda wildcards, output: os.path.dirname(output.det),
    shell:
        script_cmd("report_plots.py", "--spec {params.spec:q} --out-dir {params.out_dir:q} >> {log:q} 2>&1")
