# Shared by every rules/*.smk, each included after this file. It holds the config-derived constants and the
# final targets (built from the config alone, right after its validation in the Snakefile), the path helpers
# (every path between stages is built here, so a rule file never spells a layout), the shell-command
# helpers and the hyper-parameters of the training stages (ssrl.variants).

import json
import os
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the library of this checkout
from ssrl import report as _report
from ssrl import variants as _variants
from ssrl.preflight import placeholder_keys


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

# ---------------------------------------------------------------------------------------
# Constants from the config, read once here and used by the rule files below.
RUN_DIR = f"results/{config['run']}"
DATA_DIR = f"{RUN_DIR}/data"
ENV = "../envs/ssrl.yaml"
CORPUS = config["corpus"].get(config["corpus"]["kind"]) or {}  # the section of corpus.kind

# The trial lists downstream rules score (rules/data.smk writes them): the demo's one, a generic
# corpus' split, or the configured lists that are not null (rules/data.smk stops a run without any).
TRIAL_LISTS = (
    ["demo"]
    if config["corpus"]["kind"] == "demo"
    else (
        [CORPUS["split"]["name"]]
        if "split" in CORPUS
        else [name for name, path in (CORPUS.get("trials") or {}).items() if path]
    )
)

# The augmentation lists (data/augment/<name>.lst) every training stage reads.
AUGMENT_LISTS = expand(f"{DATA_DIR}/augment/{{name}}.lst", name=["noise", "music", "babble", "rir"])

# The training scripts' augmentation argument: the folder of the lists, or --no-augment for a generic
# corpus with `augment: none` (its lists are then empty; they stay inputs, so switching augmentation on
# or off reruns the training stages).
AUGMENT_ARG = "--no-augment" if CORPUS.get("augment") == "none" else "--augment-dir {params.augment_dir:q}"

# name (ssrl_...) -> overrides of the ssrl section; an ablation set to null is left out (a config
# merged over another cannot delete its keys: `ablations: {ssrl_queue1: null}` drops one)
ABLATIONS = {
    name: overrides or {} for name, overrides in (config.get("ablations") or {}).items() if overrides is not None
}
SSRL_SYSTEMS = ["ssrl", *ABLATIONS]  # rules/ssrl.smk
ITERATIVE_ROUNDS = int((config.get("iterative") or {}).get("rounds", 0))  # rules/iterative.smk
WAVLM = config.get("wavlm") or {"enabled": False}  # rules/wavlm.smk
WAVLM_SYSTEMS = ["wavlm_step1", "wavlm_step2", "wavlm_ft"] if WAVLM["enabled"] else []


def run_path(*parts):
    """A path under results/<run>/."""
    return "/".join([RUN_DIR, *map(str, parts)])


def sys_path(system, *parts):
    """A path under results/<run>/<system>/ (a trained model and what derives from it)."""
    return run_path(system, *parts)


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


# ---------------------------------------------------------------------------------------
def final_targets():
    """The final targets of the workflow (the inputs of the default target), from the config alone. The
    training list, the demo's baseline, the result tables and plots (rules/report.smk; they request every scored
    system) and the k-means quality of the SSRL systems' embeddings (`ssrl` always, the ablations with
    kmeans.ablation_quality: a train-set extraction + k-means each)."""
    targets = [f"{DATA_DIR}/train/wav.scp"]
    if config["corpus"]["kind"] == "demo":
        targets.append(run_path("corpus", "baseline.json"))
    targets += [run_path("tables", "summary.md"), *[run_path("plots", f"{name}.png") for name in _report.PLOT_NAMES]]
    quality = SSRL_SYSTEMS if config["kmeans"]["ablation_quality"] else ["ssrl"]
    targets += [kmeans_path(system, "quality.json") for system in quality]
    return targets


# ---------------------------------------------------------------------------------------
# Shell commands of the rules.
# Every attempt of a job appends to its log (`>> {log}` in the rules) under a header line, so that a
# retried job's log keeps what the earlier attempts wrote (e.g. "stopped by SIGTERM; checkpoint ...").
# Snakemake deletes a job's log before each attempt, so the history lives in a hidden file beside it
# (logs/.<name>.log.attempts) that the log is hard-linked to (copied where links are not supported);
# the history starts over when the previous attempt succeeded (a new run of the job, not a retry).
# The TERM/INT traps make a signalled shell exit 143/130 (its EXIT trap would otherwise see status 0).
LOG_ATTEMPT = (
    'hist="$(dirname {log:q})/.$(basename {log:q}).attempts"; touch "$hist"; '
    'case "$(tail -n 1 "$hist")" in "=== attempt ended: exit 0"*) : > "$hist";; esac; '
    'ln -f "$hist" {log:q} 2>/dev/null || cp "$hist" {log:q}; '
    'echo "=== attempt $(( $(grep -c "^=== attempt [0-9]" "$hist" || true) + 1 )):'
    ' $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)${{SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}} ===" >> {log:q}; '
    "trap 'echo \"=== attempt ended: exit $?\" >> \"$hist\"' EXIT; trap 'exit 143' TERM; trap 'exit 130' INT; "
)


def thread_env(omp):
    """Shell prefix ``nt=<omp>; OMP_NUM_THREADS=$nt MKL_NUM_THREADS=$nt NUMBA_NUM_THREADS=$nt`` for the
    command that follows: ``omp`` compute threads (a template or shell arithmetic) for OpenMP, MKL and
    numba's pool (the k-means and scoring kernels). Snakemake sets MKL_NUM_THREADS to the rule's threads;
    left there, torch's MKL calls (the STFT of the mel front-end) run more threads than the job computes
    on, and their spin-waiting took 4-6x the CPU time of a training step on 2 loaded cores
    (bench/RESULTS.md, "Threads"). numba sizes its pool from the CPUs the process may run on, which
    outside a SLURM allocation is the whole machine, not the job's threads."""
    return f"nt={omp}; OMP_NUM_THREADS=$nt MKL_NUM_THREADS=$nt NUMBA_NUM_THREADS=$nt"


def script_cmd(name, args, omp="{threads}"):
    """Shell command running workflow/scripts/<name> with ``args`` (a shell template using
    {input}, {output}, ...) on ``omp`` compute threads (thread_env; a template: default the rule's
    threads), after LOG_ATTEMPT (``args`` ends with ``>> {log:q} 2>&1``).
    The script is named by absolute path: the working directory may be anywhere (-d in tests)."""
    return f"{LOG_ATTEMPT}{thread_env(omp)} python {script_path(name)} {args}"


def as_json(obj):
    """Hyper-parameters reach scripts as one JSON string through params:, so that
    editing any of them reruns the stage (Snakemake tracks params changes)."""
    return json.dumps(obj, sort_keys=True)


def compute_threads(workers, procs="1"):
    """Shell arithmetic for the compute threads per process: what ``procs`` processes with ``workers``
    DataLoader processes each leave of the rule's {threads}, shared out, at least 1. Evaluated by the
    shell, not a params value: running with another --cores (which caps threads) never reruns a job."""
    left = f"({{threads}} - {procs} * {workers}) / {procs}"
    return f"$(( {left} > 1 ? {left} : 1 ))"


def train_command(script):
    """Shell template starting training script ``script`` (workflow/scripts/) with the rule's {threads}
    and {resources.gpu}: gpu >= 2 runs torchrun --standalone with one worker per GPU, otherwise one
    python process (on CUDA if present); compute threads per worker (thread_env) from compute_threads
    with train.workers DataLoader processes per worker. Starts with LOG_ATTEMPT (the rule appends to {log})."""
    return (
        f"{LOG_ATTEMPT}gpus={{resources.gpu}}; procs=$(( gpus > 1 ? gpus : 1 )); "
        'if [ "$gpus" -ge 2 ]; then run="torchrun --standalone --nproc_per_node=$gpus"; else run=python; fi; '
        f"{thread_env(compute_threads(int(config['train']['workers']), '$procs'))} $run {script_path(script)}"
    )


def script_path(name):
    """Absolute path of workflow/scripts/<name> (the working directory may be anywhere)."""
    return shlex.quote(str(Path(workflow.basedir) / "workflow" / "scripts" / name))


def extract_command(pairs):
    """extract.py on the rule's model with (--wav-scp, --output) ``pairs`` of shell templates."""
    sets = " ".join(f"--wav-scp {scp} --output {out}" for scp, out in pairs)
    return script_cmd(
        "extract.py",
        f"--model {{input.model:q}} {sets} --hparams {{params.hparams:q}} >> {{log:q}} 2>&1",
        # compute threads: what the DataLoader processes (extract.workers) leave of the rule's threads
        omp=compute_threads(int(config["extract"]["workers"])),
    )


ITERATIVE_SYSTEM = r"iter_r[1-9][0-9]*"
"""Regex of the iterative rounds' system names (rules/iterative.smk)."""


def train_embedding_systems():
    """Regex of the systems whose train-set embeddings are used (rules/extract.smk): k-means of dino, ssrl
    and the iterative rounds, the ablations with kmeans.ablation_quality, every system as the AS-norm
    cohort."""
    if config["score"]["asnorm"]:
        return r"[a-z0-9_]+"
    systems = ["dino", "ssrl", ITERATIVE_SYSTEM]
    if config["kmeans"]["ablation_quality"]:
        systems += [re.escape(name) for name in ABLATIONS]
    return "|".join(systems)


# ---------------------------------------------------------------------------------------
# The rules of workflow/scripts/train_ssrl.py (SSRL and its ablations, the iterative rounds, the WavLM
# steps): one set of inputs, outputs, params and one shell line; a rule adds its init files and its
# hyper-parameters (ssrl.variants).
def ssrl_train_input(**init):
    """Inputs of a train_ssrl.py rule: the training list (+ its truth, for the label log only), the
    augmentation lists, the validation set (the first trial list), and ``init``: the files it starts
    from (``init`` model, k-means ``labels`` / ``centers``, a WavLM ``checkpoint``)."""
    return {
        "wav_scp": f"{DATA_DIR}/train/wav.scp",
        "utt2spk": f"{DATA_DIR}/train/utt2spk",
        "augment": AUGMENT_LISTS,
        "val_scp": f"{DATA_DIR}/test/wav.scp",
        "val_trials": f"{DATA_DIR}/trials/{TRIAL_LISTS[0]}.txt",
        **init,
    }


def ssrl_train_output(system):
    """Outputs of a train_ssrl.py rule for ``system`` (a name or a wildcard pattern)."""
    return {
        "model": sys_path(system, "model.pt"),
        "log": sys_path(system, "train_log.tsv"),
        "label_log": sys_path(system, "label_log.tsv"),
        "record": sys_path(system, "train_record.json"),
    }


def ssrl_train_params(system, hparams):
    """params of a train_ssrl.py rule: ``system`` (a name, or a function of the wildcards) and its
    ``hparams`` (a dict, or a function of the wildcards), the init arguments from the rule's inputs,
    the checkpoint folder <system>/ckpt/ (a params value, never an output: a killed job resumes) and the
    augmentation folder."""
    name = system if callable(system) else lambda wildcards: system
    hp = hparams if callable(hparams) else lambda wildcards: hparams
    flags = {"init": "--init-model", "labels": "--labels", "centers": "--centers"}
    return {
        "system": name,
        "hparams": lambda wildcards: as_json(hp(wildcards)),
        "init": lambda wildcards, input: " ".join(
            f"{flag} {shlex.quote(getattr(input, key))}" for key, flag in flags.items() if hasattr(input, key)
        ),
        "ckpt": lambda wildcards: sys_path(name(wildcards), "ckpt"),
        "augment_dir": lambda wildcards, input: os.path.dirname(input.augment[0]),
    }


def ssrl_train_shell():
    """The shell line of a train_ssrl.py rule (inputs, outputs and params as above)."""
    return (
        train_command("train_ssrl.py") + " --system {params.system} --train-scp {input.wav_scp:q} {params.init}"
        f" {AUGMENT_ARG} --val-scp {{input.val_scp:q}} --val-trials {{input.val_trials:q}}"
        " --utt2spk {input.utt2spk:q} --ckpt-dir {params.ckpt:q} --model-out {output.model:q}"
        " --log-out {output.log:q} --label-log-out {output.label_log:q} --record-out {output.record:q}"
        " --hparams {params.hparams:q} >> {log:q} 2>&1"
    )


def iterative_previous(wildcards):
    """The system whose model and k-means labels iterative round {r} starts from (round 1: dino)."""
    r = int(wildcards.r)
    return "dino" if r == 1 else f"iter_r{r - 1}"


PRIORITY = {"dino": 10, "ssrl": 6, "iterative": 5, "wavlm": 3}
"""Rule priorities: the order in which ready jobs start when cores are short (a local run; on SLURM, the
order of submission). DINO first: every chain but the WavLM pre-training's waits for it. Then the
SSRL systems (each one long job that cannot be split), the iterative rounds (the longest serial chain
of short jobs: R x train, extract, k-means), the WavLM training chain, and last every other job
(extraction and scoring of finished systems, the DINO system's own k-means), which fill the gaps.
Measured on the demo's 2 cores, from DINO's end to the last job: 585 s with only DINO first, 622 s
with the iterative rounds first (the third SSRL job then ran alone for 184 s), 555 / 572 / 559 s in
this order on seeds 0 / 1 / 2 (bench/RESULTS.md, "The demo's schedule")."""


def iterative_chain_priority(wildcards):
    """Priority of an extraction or k-means job: PRIORITY["iterative"] for an iterative round's system
    (wildcard {system} iter_r<r>), else 0."""
    return PRIORITY["iterative"] if re.fullmatch(ITERATIVE_SYSTEM, wildcards.system) else 0


def wavlm_checkpoint():
    """The WavLM checkpoint of the WavLM systems: config wavlm.checkpoint, or, when it is null with
    wavlm.tiny true and a wavlm.pretrain section, the tiny WavLM that rule wavlm_pretrain pre-trains
    on the training audio (official format); None: a randomly initialised WavLM."""
    wavlm = config["wavlm"]
    if wavlm["checkpoint"] is None and wavlm["tiny"] and wavlm.get("pretrain"):
        return run_path("wavlm_pretrain", "wavlm_tiny.pt")
    return wavlm["checkpoint"]


def wavlm_arch():
    """build_speaker_model architecture of step 1: WavLM (wavlm_checkpoint() or random init, first
    num_layers layers, quirk Q7) + the ECAPA back-end of wavlm.encoder (1024-d input, no log, norm not
    detached)."""
    wavlm = config["wavlm"]
    path = wavlm_checkpoint()
    frontend = {
        "checkpoint": path,
        "num_layers": wavlm["num_layers"],
        "tiny": wavlm["tiny"] and path is None,
        "normalize_input": wavlm["normalize_input"],
    }
    return {"frontend": {"type": "wavlm", **frontend}, "encoder": dict(wavlm["encoder"])}


# ---------------------------------------------------------------------------------------
# SLURM preflight (ssrl.preflight): under a profile that gives the rules SLURM resources
# (slurm_account / slurm_partition, e.g. profiles/slurm), before anything is submitted and
# only in the main Snakemake process: placeholders left in the profile and requests that no
# node of the rule's partition can satisfy (sinfo) stop a run and are listed by a dry run;
# at the start of a real run, a cluster whose sacct fails (no accounting) must let the
# executor follow jobs with squeue. Called at the end of the Snakefile (every rule defined).
def rule_slurm_resources(rule):
    """{key: value} of ``rule``'s resources as Snakemake resolved them (default-resources,
    the rule's resources, set-resources), evaluated for attempt 1; a value that needs a job's
    wildcards or input is left out."""
    import asyncio

    values = {}
    for key, res in rule.resources.items():
        try:
            values[key] = res.evaluate(
                wildcards={}, input=[], attempt=1, threads=1, rulename=rule.name, async_run=asyncio.run
            ).value
        except Exception:  # noqa: BLE001 - resource callables may need a job's wildcards or input
            continue
    return values


def slurm_preflight():
    """Stop (or, in a dry run, warn) before submission when the SLURM profile cannot work: see above."""
    from ssrl import preflight

    if not workflow.is_main_process:
        return
    # Rules that never reach SLURM (localrules, rules without a command such as `all`) are left out.
    remote = [rule for rule in workflow.rules if not (rule.name in workflow._localrules or rule.norun)]
    resources = {rule.name: rule_slurm_resources(rule) for rule in remote}
    if not any("slurm_partition" in res or "slurm_account" in res for res in resources.values()):
        return
    requests = [preflight.Request.from_resources(name, res) for name, res in resources.items()]
    nodes, _, _, note = preflight.query(status=False)
    problems = preflight.unrunnable(requests, nodes) if nodes is not None else []
    message = preflight.report(preflight.placeholder_findings(resources), problems, None)
    if nodes is None:
        print(f"SLURM preflight: partitions not checked ({note})", file=sys.stderr)
    if message and workflow.output_settings.dryrun:
        print(f"SLURM preflight: a real run would stop here:\n{message}", file=sys.stderr)
    elif message:
        raise ValueError(f"SLURM preflight: nothing was submitted.\n{message}")


onstart:
    # The job-status check needs the executor's settings, which are known only once the run starts.
    if workflow.executor_settings is not None and hasattr(workflow.executor_settings, "status_command"):
        from ssrl import preflight

        _, sacct_error, min_job_age, _ = preflight.query(nodes=False)
        problem = preflight.status_problem(workflow.executor_settings.status_command, sacct_error, min_job_age)
        if problem:
            raise ValueError(f"SLURM preflight: nothing was submitted: {problem}")
