# SSRL reproduction pipeline: DINO -> k-means pseudo labels -> SSRL, the iterative
# clustering baseline, the WavLM systems, scoring and the result tables.
#
#   snakemake --cores all                                  # embedded demo (CPU, minutes)
#   snakemake --profile slurm --cores all --configfile config/voxceleb.yaml
#   snakemake results/demo/dino/model.pt --cores all       # one stage and what it needs

from snakemake.utils import min_version, validate

min_version("9.27")


# The demo defaults; --configfile FILE is merged over them (config/voxceleb.yaml).
configfile: f"{workflow.basedir}/config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/provenance.smk"
include: "rules/data.smk"
include: "rules/dino.smk"
include: "rules/ssrl.smk"
include: "rules/iterative.smk"
include: "rules/wavlm.smk"
include: "rules/extract.smk"
include: "rules/kmeans.smk"
include: "rules/score.smk"
include: "rules/report.smk"


# <system> names a trained model (dino, ssrl, iter_r2, wavlm_step1, ...).
wildcard_constraints:
    system=r"[a-z0-9_]+",


rule all:
    default_target: True
    input:
        final_targets(),


# Before anything is submitted to SLURM: the profile's placeholders and each rule's request against the
# cluster's partitions (rules/common.smk).
slurm_preflight()


# results/<run>/provenance.json (rules/provenance.smk): written when an invocation starts running jobs,
# completed with its end time and status.
onstart:
    provenance_start()


onsuccess:
    provenance_finish("succeeded")


onerror:
    provenance_finish("failed")
