# Path and resource helpers shared by every rule file.
# Every path between stages is built here, so a rule file never spells a layout.

import json
import os
import re
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


# The training scripts' augmentation argument: the folder of data/augment/*.lst, or --no-augment for a
# generic corpus with `augment: none` (its lists are then empty; they stay inputs, so switching
# augmentation on or off reruns the training stages).
AUGMENT_ARG = ("--no-augment" if (config["corpus"].get(config["corpus"]["kind"]) or {}).get("augment") == "none"
               else "--augment-dir {params.augment_dir:q}")


def run_path(*parts):
    """A path under results/<run>/."""
    return "/".join([RUN_DIR, *map(str, parts)])


def sys_path(system, *parts):
    """A path under results/<run>/<system>/ (a trained model and what derives from it)."""
    return run_path(system, *parts)


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


def script_cmd(name, args, omp="{threads}"):
    """Shell command running workflow/scripts/<name> with ``args`` (a shell template using
    {input}, {output}, ...) on ``omp`` OpenMP threads (a template: default the rule's threads),
    after LOG_ATTEMPT (``args`` ends with ``>> {log:q} 2>&1``).
    The script is named by absolute path: the working directory may be anywhere (-d in tests)."""
    return f"{LOG_ATTEMPT}OMP_NUM_THREADS={omp} python {script_path(name)} {args}"


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


def compute_threads(workers, procs="1"):
    """Shell arithmetic for OMP_NUM_THREADS per process: what ``procs`` processes with ``workers``
    DataLoader processes each leave of the rule's {threads}, shared out, at least 1. Evaluated by the
    shell, not a params value: running with another --cores (which caps threads) never reruns a job."""
    left = f"({{threads}} - {procs} * {workers}) / {procs}"
    return f"$(( {left} > 1 ? {left} : 1 ))"


def train_command(script):
    """Shell template starting training script ``script`` (workflow/scripts/) with the rule's {threads}
    and {resources.gpu}: gpu >= 2 runs torchrun --standalone with one worker per GPU, otherwise one
    python process (on CUDA if present); OMP_NUM_THREADS per worker from compute_threads with
    train.workers DataLoader processes per worker. Starts with LOG_ATTEMPT (the rule appends to {log})."""
    return (
        f"{LOG_ATTEMPT}gpus={{resources.gpu}}; procs=$(( gpus > 1 ? gpus : 1 )); "
        'if [ "$gpus" -ge 2 ]; then run="torchrun --standalone --nproc_per_node=$gpus"; else run=python; fi; '
        f"OMP_NUM_THREADS={compute_threads(int(config['train']['workers']), '$procs')} $run {script_path(script)}"
    )


def script_path(name):
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


def iterative_round_epochs():
    """E_round, the epochs of each iterative round, by the budget rule: the R rounds together train
    iterative.budget times SSRL's E_fix + E_upd epochs, E_round = round(budget * (E_fix + E_upd) / R),
    at least 1 (paper: 1.0 * 105 / 5 = 21)."""
    it, ssrl = config["iterative"], config["ssrl"]
    total = it["budget"] * (ssrl["fixed_epochs"] + ssrl["update_epochs"])
    return max(1, round(total / max(it["rounds"], 1)))


def iterative_hparams():
    """--hparams of an iterative round: ssrl_stage_hparams with fixed labels (no relabelling, no NLM)
    for iterative_round_epochs() epochs; the ssrl keys that only act in label updates are left out
    (stage defaults), so that editing them does not rerun the rounds."""
    update_only = {"lr_update_start", "queue_len", "gmm_max_iter", "gmm_tol", "margin_quirk", "sinkhorn_iters",
                   "sinkhorn_epsilon", "teacher_crop_s"}
    hp = ssrl_stage_hparams(label_update=False, nlm=False, update_epochs=0, fixed_epochs=iterative_round_epochs())
    hp["ssrl"] = {k: v for k, v in hp["ssrl"].items() if k not in update_only}
    return hp


def iterative_previous(wildcards):
    """The system whose model and k-means labels iterative round {r} starts from (round 1: dino)."""
    r = int(wildcards.r)
    return "dino" if r == 1 else f"iter_r{r - 1}"


# WavLM systems (rules/wavlm.smk): ssrl keys that act only in label updates (relabelling, queues, NLM)
# or in the SSRL label-fixed LR segment: not part of WavLM step 1's hyper-parameters, so editing them
# does not rerun it.
_WAVLM_STEP1_UNUSED = {"fixed_epochs", "update_epochs", "lr_fixed_start", "lr_update_start", "queue_len", "nlm",
                       "gmm_max_iter", "gmm_tol", "margin_quirk", "sinkhorn_iters", "sinkhorn_epsilon",
                       "teacher_crop_s", "ema_start", "ema_end", "removed_permanent"}


def wavlm_checkpoint_problem(path, num_layers):
    """What is wrong with WavLM checkpoint ``path`` for ``num_layers`` layers, or None if it looks right.

    Cheap enough for every `snakemake` start (the weights are not read): a file is opened with
    torch.load(weights_only=True, mmap=True) (zip-format files, i.e. torch.save since PyTorch 1.6; an
    older file is read whole) and must be the official WavLM dict ({"cfg", "model"} with WavLM's gated
    relative-position parameters) or a torchaudio WavLM state dict; a directory must be a Hugging Face
    WavLM (config.json with model_type wavlm + model.safetensors or pytorch_model.bin). The checkpoint
    must have at least ``num_layers`` transformer layers. Every key and shape is checked when step 1
    loads it (ssrl.models.wavlm.load_wavlm).
    """
    import torch
    import zipfile

    p = Path(path)
    if str(path).startswith(PLACEHOLDER_PREFIX):
        return "is still a placeholder; point it at your copy of WavLM-Large.pt"
    if not p.exists():
        return "not found"
    if p.is_dir():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as err:
            return f"is a directory but not a Hugging Face WavLM (config.json: {err})"
        if cfg.get("model_type") != "wavlm":
            return f"is a Hugging Face {cfg.get('model_type')!r} model, not WavLM (config.json model_type)"
        if not any((p / name).exists() for name in ("model.safetensors", "pytorch_model.bin")):
            return "has no model.safetensors or pytorch_model.bin"
        layers = cfg.get("num_hidden_layers", 0)
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            return f"cannot be read by torch.load(weights_only=True): {err}"
        if isinstance(obj, dict) and isinstance(obj.get("cfg"), dict) and isinstance(obj.get("model"), dict):
            if "encoder.layers.0.self_attn.grep_a" not in obj["model"]:
                return ("has the official {'cfg', 'model'} layout but no WavLM gated relative-position "
                        "parameters (encoder.layers.0.self_attn.grep_a): a HuBERT / wav2vec 2.0 checkpoint?")
            layers = obj["cfg"].get("encoder_layers", 0)
        else:
            if isinstance(obj, dict) and isinstance(obj.get("state_dict", obj.get("model")), dict):
                obj = obj.get("state_dict", obj.get("model"))
            if not (isinstance(obj, dict) and "encoder.transformer.layers.0.attention.gru_rel_pos_const" in obj):
                return ("is not a WavLM checkpoint (expected the official WavLM-Large.pt {'cfg', 'model'} dict, "
                        "a torchaudio WavLM state dict, or a Hugging Face WavLM directory)")
            layers = len({k.split(".")[3] for k in obj if k.startswith("encoder.transformer.layers.")})
    if layers < num_layers:
        return f"has {layers} transformer layers, fewer than wavlm.num_layers = {num_layers}"
    return None


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
    frontend = {"checkpoint": path, "num_layers": wavlm["num_layers"], "tiny": wavlm["tiny"] and path is None,
                "normalize_input": wavlm["normalize_input"]}
    return {"frontend": {"type": "wavlm", **frontend}, "encoder": dict(wavlm["encoder"])}


def wavlm_hparams(step):
    """--hparams of train_ssrl.py for WavLM step ``step`` (step1 | step2 | ft): the ssrl section (step 1:
    without its label-update and EMA keys) updated with wavlm.<step>, then the keys that define the step.
    Step 1 has no teacher (a supervised student, validated and exported itself) and gets the arch
    (wavlm_arch); step 2 starts student and teacher from step 1's student; with the WavLM frozen the
    teacher shares it (same weights as an EMA copy, one copy in memory and files), in step 2-ft as
    wavlm.teacher_shares_wavlm says (quirk Q3)."""
    wavlm = config["wavlm"]
    if step == "step1":
        hp = ssrl_stage_hparams()
        hp["ssrl"] = {key: value for key, value in hp["ssrl"].items() if key not in _WAVLM_STEP1_UNUSED}
        hp["ssrl"].update(wavlm["step1"], init="scratch", head_init="random", label_update=False, nlm=False,
                          update_epochs=0, schedule="warmup_cosine", freeze_wavlm=True, teacher=False)
        hp["arch"] = wavlm_arch()
        return hp
    if step == "step2":
        return ssrl_stage_hparams(**wavlm["step2"], init="student", schedule="ssrl", freeze_wavlm=True,
                                  teacher_shares_wavlm=True)
    return ssrl_stage_hparams(**wavlm["ft"], init="full", schedule="ssrl", freeze_wavlm=False,
                              teacher_shares_wavlm=wavlm["teacher_shares_wavlm"],
                              gradient_checkpointing=wavlm["gradient_checkpointing"],
                              wavlm_lr_scale=wavlm["wavlm_lr_scale"])


def all_targets():
    """The final targets of the workflow (the default target's inputs)."""
    targets = [f"{DATA_DIR}/train/wav.scp"]
    if config["corpus"]["kind"] == "demo":
        targets.append(run_path("corpus", "baseline.json"))
    targets += REPORT_TARGETS  # rules/report.smk: result tables and plots (and all they need)
    targets += SSRL_TARGETS  # rules/ssrl.smk: k-means quality of the SSRL systems' embeddings
    return targets


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
            values[key] = res.evaluate(wildcards={}, input=[], attempt=1, threads=1, rulename=rule.name,
                                       async_run=asyncio.run).value
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


def train_embedding_systems():
    """Regex of the systems whose train-set embeddings are used (rules/embed.smk): k-means of dino, ssrl
    and the iterative rounds, the ablations with kmeans.ablation_quality, every system as the AS-norm
    cohort. Reads ABLATIONS of rules/ssrl.smk when called (from embed.smk, included after it)."""
    if config["score"]["asnorm"]:
        return r"[a-z0-9_]+"
    systems = ["dino", "ssrl", r"iter_r[1-9][0-9]*"]
    if config["kmeans"]["ablation_quality"]:
        systems += [re.escape(name) for name in ABLATIONS]
    return "|".join(systems)


def extract_command(pairs):
    """extract.py on the rule's model with (--wav-scp, --output) ``pairs`` of shell templates."""
    sets = " ".join(f"--wav-scp {scp} --output {out}" for scp, out in pairs)
    return script_cmd(
        "extract.py",
        f"--model {{input.model:q}} {sets} --hparams {{params.hparams:q}} >> {{log:q}} 2>&1",
        # compute threads: what the DataLoader processes (extract.workers) leave of the rule's threads
        omp=compute_threads(int(config["extract"]["workers"])),
    )
