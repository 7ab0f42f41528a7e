"""The report stage (rules/report.smk, workflow/scripts/report_tables.py and report_plots.py): the result
tables and figures, built only from the files the pipeline wrote.

* :mod:`ssrl.report.spec`: the run spec (which systems exist, where their files are) and the loaded run;
* :mod:`ssrl.report.tables`: the system and pseudo-label tables, with :mod:`ssrl.report.cost` (training
  cost) and :mod:`ssrl.report.published` (the published numbers);
* :mod:`ssrl.report.render`: the renderings (Markdown, CSV, the summary with its provenance block);
* :mod:`ssrl.report.plots`: the figures.

The names below are read by rules/report.smk when the Snakefile is parsed: this module imports nothing
heavy.
"""

TABLE_NAMES = ("main", "ablations", "wavlm", "pseudo_labels", "training", "published")
"""File stems of the tables (``tables/<name>.{md,csv}``, besides ``summary.md`` / ``.html``)."""

PLOT_NAMES = ("det", "labels", "training", "scores")
"""File stems of the figures (``plots/<name>.png``)."""

KINDS = ("dino", "iterative", "ssrl", "ablation", "wavlm_step1", "wavlm_step2", "wavlm_ft")
"""The kinds of system a run spec names."""

SYSTEM_TABLES = ("main", "ablations", "wavlm")
"""The tables a system row goes to."""
