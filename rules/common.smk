# Path and resource helpers shared by every rule file.
# Every path between stages is built here, so a rule file never spells a layout.

import json
import os
import shlex
import sys
from pathlib import Path

# Scripts import the library from this checkout (also inside conda envs and SLURM
# jobs, which inherit the environment and re-read this file).
# `python` in shell commands is the interpreter running Snakemake (e.g. .venv), unless
# a conda env (--sdm conda) puts its own first.
def _prepend_env_path(name, entry):
    parts = os.environ.get(name, "").split(os.pathsep)
    if parts[0] != entry:
        os.environ.update({name: os.pathsep.join(filter(None, [entry, *parts]))})


_prepend_env_path("PYTHONPATH", str(Path(workflow.basedir) / "src"))
_prepend_env_path("PATH", str(Path(sys.executable).parent))

RUN_DIR = f"results/{config['run']}"
DATA_DIR = f"{RUN_DIR}/data"
ENV = "../envs/ssrl.yaml"


def run_path(*parts):
    """A path under results/<run>/."""
    return "/".join([RUN_DIR, *map(str, parts)])


def sys_path(system, *parts):
    """A path under results/<run>/<system>/ (a trained model and what derives from it)."""
    return run_path(system, *parts)


def script_cmd(name, args):
    """Shell command running workflow/scripts/<name> with ``args`` (a shell template using
    {input}, {output}, ...) on {threads} OpenMP threads. The script is named by absolute path:
    the working directory may be anywhere (e.g. -d in tests)."""
    path = shlex.quote(str(Path(workflow.basedir) / "workflow" / "scripts" / name))
    return f"OMP_NUM_THREADS={{threads}} python {path} {args}"


def kmeans_path(system, name, k=None):
    """A file of <system>'s k-means pseudo labels (labels.txt, centers.npy, quality.json);
    k defaults to config kmeans.k."""
    return sys_path(system, f"kmeans_k{config['kmeans']['k'] if k is None else k}", name)


def score_path(system, trials, kind="metrics"):
    """<system>'s results on trial list <trials>: "metrics" (.json: EER, minDCF, counts),
    "scores" (.tsv: enroll test label score) or "det" (.det.tsv: far frr)."""
    return {
        "metrics": sys_path(system, "metrics", f"{trials}.json"),
        "scores": sys_path(system, "scores", f"{trials}.tsv"),
        "det": sys_path(system, "scores", f"{trials}.det.tsv"),
    }[kind]


def log_path(name):
    return run_path("logs", f"{name}.log")


def bench_path(name):
    return run_path("benchmarks", f"{name}.tsv")


def as_json(obj):
    """Hyper-parameters reach scripts as one JSON string through params:, so that
    editing any of them reruns the stage (Snakemake tracks params changes)."""
    return json.dumps(obj, sort_keys=True)


PLACEHOLDER_PREFIX = "/path/to/"  # config/voxceleb.yaml's stand-in for a local path


def placeholder_keys(node, where):
    """[(dotted key, value)] of every string under config ``node`` (dict, list or value; ``where`` is
    its dotted key) still holding a PLACEHOLDER_PREFIX path, in file order."""
    if isinstance(node, dict):
        return [hit for key, value in node.items() for hit in placeholder_keys(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [hit for i, value in enumerate(node) for hit in placeholder_keys(value, f"{where}[{i}]")]
    return [(where, node)] if isinstance(node, str) and node.startswith(PLACEHOLDER_PREFIX) else []


def launcher(wildcards, threads, resources):
    """Command prefix for a training/extraction script.

    gpu >= 2: torchrun --standalone with one worker per GPU (OMP threads split
    between workers); otherwise plain python on one device (CUDA if present).
    """
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus >= 2:
        omp = max(1, int(threads) // gpus)
        return f"OMP_NUM_THREADS={omp} torchrun --standalone --nproc_per_node={gpus}"
    return f"OMP_NUM_THREADS={threads} python"


def train_launcher(wildcards, threads, resources):
    """launcher() for training scripts: the rule's threads are shared by the compute
    threads and the DataLoader workers (config train.workers per process), so the
    compute threads get what the workers leave (at least one per process)."""
    procs = max(1, int(resources.get("gpu", 0) or 0))
    compute = max(procs, int(threads) - procs * int(config["train"]["workers"]))
    return launcher(wildcards, compute, resources)


def train_script(name):
    """Absolute path of workflow/scripts/<name> (the working directory may be anywhere)."""
    return shlex.quote(str(Path(workflow.basedir) / "workflow" / "scripts" / name))


def ssrl_stage_hparams(**overrides):
    """--hparams of train_ssrl.py (SSRL, ablations, iterative rounds): the ssrl section, with quirk
    Q1 from augment.student_none_is_noise, updated with ``overrides``; augmentation ranges; runtime."""
    return {
        "ssrl": {**config["ssrl"], "none_is_noise": config["augment"]["student_none_is_noise"], **overrides},
        "augment": {key: config["augment"][key] for key in ("snr_db", "babble_count")},
        "train": config["train"],
    }


def iterative_hparams():
    """--hparams of an iterative round: ssrl_stage_hparams with fixed labels (no relabelling, no NLM)
    for iterative.epochs epochs; the ssrl keys that only act in label updates are left out (stage
    defaults), so that editing them does not rerun the rounds."""
    update_only = {"lr_update_start", "queue_len", "gmm_max_iter", "gmm_tol", "margin_quirk", "sinkhorn_iters",
                   "sinkhorn_epsilon", "teacher_crop_s"}
    hp = ssrl_stage_hparams(label_update=False, nlm=False, update_epochs=0,
                            fixed_epochs=config["iterative"]["epochs"])
    hp["ssrl"] = {k: v for k, v in hp["ssrl"].items() if k not in update_only}
    return hp


def iterative_previous(wildcards):
    """The system whose model and k-means labels iterative round {r} starts from (round 1: dino)."""
    r = int(wildcards.r)
    return "dino" if r == 1 else f"iter_r{r - 1}"


def all_targets():
    """The final targets of the workflow (the default target's inputs)."""
    targets = [f"{DATA_DIR}/train/wav.scp"]
    if config["corpus"]["kind"] == "demo":
        targets.append(run_path("corpus", "baseline.json"))
    targets += REPORT_TARGETS  # rules/report.smk: result tables and plots (and all they need)
    targets += SSRL_TARGETS  # rules/ssrl.smk: k-means quality of the SSRL systems' embeddings
    return targets
