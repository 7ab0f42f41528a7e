# WavLM systems (docs/method.md §9): three steps of the SSRL stage (train_ssrl.py), chained by their model files.
#   wavlm_step1  WavLM frozen (no_grad, eval mode); ECAPA back-end + layer weights + AAM head from scratch,
#                supervised on the fixed DINO k-means labels (dino/kmeans_k<K>/labels.txt), plain mean CE,
#                linear warm-up 0 -> lr then cosine to lr * lr_final, augmentation probability augment_prob;
#                no teacher: the student is validated and exported
#   wavlm_step2  SSRL (docs/method.md §7) whose student and EMA teacher both start as step 1's student (labels =
#                step 1's), WavLM frozen
#   wavlm_ft     step 2's full state (student, teacher, label queues, labels, removed classes, p_clean)
#                continued with WavLM trained too: E_fix = 0, one cosine lr * lr_update_start -> lr * lr_final;
#                the student's WavLM in train mode (the checkpoint's dropouts, layer drop, feature_grad_mult),
#                the teacher's forward in eval mode; EMA decay constant (wavlm.ft ema_start = ema_end)
# Each writes <system>/model.pt, train_log.tsv, label_log.tsv, train_record.json (cost, provenance);
# <system>/ckpt/ (a params value) holds the resumable checkpoints. Extraction (rules/embed.smk) keeps the
# first extract.max_seconds_wavlm seconds of every file for these systems (the model file's arch says
# WavLM), and scoring is as for every system.
#
# Hyper-parameters: every step starts from the ssrl section (+ quirk Q1) overridden by wavlm.<step>;
# step 1 leaves out the ssrl keys that act only in label updates or on a teacher. The keys that make a
# step what it is (init, schedule, label_update, teacher, frozen WavLM, ...) are set by wavlm_hparams
# (rules/common.smk), not in the config. With the WavLM frozen (step 2) the teacher runs the student's
# WavLM (an EMA copy of frozen weights would be the same weights): one copy in memory, checkpoints and
# model files. In step 2-ft
# wavlm.teacher_shares_wavlm is quirk Q3 (default on: the reference's teacher uses the student's
# WavLM; off: an EMA copy).
#
# Demo front-end (wavlm.checkpoint null, wavlm.tiny true, a wavlm.pretrain section): wavlm_pretrain
# pre-trains the tiny WavLM on the training audio without labels (ssrl.train.wavlm_pretrain: k-means
# units of MFCC frames, masked prediction) and writes wavlm_pretrain/wavlm_tiny.pt in the official
# WavLM-Large.pt format; step 1 imports it as its checkpoint (wavlm_checkpoint in rules/common.smk).
# wavlm_pretrain/ckpt/ (a params value) holds the resumable checkpoints.
#
# Start-up check (wavlm.enabled with wavlm.checkpoint set): before any job is planned, the checkpoint
# must exist and look like a WavLM checkpoint (wavlm_checkpoint_problem in rules/common.smk). Only in the
# main Snakemake process (also for -n and --lint): a job re-reads this file, and step 1 checks every key
# when it loads the checkpoint, so jobs skip the torch import of the check. Resources: the `gpu`
# resource of each rule (profiles/slurm/config.yaml); gpu >= 2 runs torchrun.

WAVLM = config.get("wavlm") or {"enabled": False}

if WAVLM["enabled"] and workflow.is_main_process:
    if WAVLM["checkpoint"] is not None:
        if WAVLM["tiny"]:
            raise ValueError(f"wavlm.tiny: true builds a random tiny WavLM, but wavlm.checkpoint is set "
                             f"({WAVLM['checkpoint']}); set wavlm.tiny: false or wavlm.checkpoint: null")
        _WAVLM_PROBLEM = wavlm_checkpoint_problem(WAVLM["checkpoint"], WAVLM["num_layers"])
        if _WAVLM_PROBLEM:
            raise ValueError(f"wavlm.checkpoint: {WAVLM['checkpoint']} {_WAVLM_PROBLEM} (wavlm.enabled is true; "
                             f"set wavlm.enabled: false to run without the WavLM systems)")


# The shell command of the three steps; {params.init} holds the step's init arguments.
_WAVLM_SHELL = (
    train_command("train_ssrl.py") + " --system {params.system} --train-scp {input.wav_scp:q} {params.init}"
    f" {AUGMENT_ARG} --val-scp {{input.val_scp:q}} --val-trials {{input.val_trials:q}}"
    " --utt2spk {input.utt2spk:q} --ckpt-dir {params.ckpt:q} --model-out {output.model:q}"
    " --log-out {output.log:q} --label-log-out {output.label_log:q} --record-out {output.record:q}"
    " --hparams {params.hparams:q} >> {log:q} 2>&1"
)
# Inputs of every step: training list (+ truth for the label log only), augmentation, validation.
_WAVLM_COMMON_INPUT = {
    "wav_scp": f"{DATA_DIR}/train/wav.scp",
    "utt2spk": f"{DATA_DIR}/train/utt2spk",
    "augment": AUGMENT_LISTS,
    "val_scp": f"{DATA_DIR}/test/wav.scp",
    "val_trials": f"{DATA_DIR}/trials/{TRIAL_LISTS[0]}.txt",
}


if WAVLM["enabled"] and wavlm_checkpoint() == run_path("wavlm_pretrain", "wavlm_tiny.pt"):

    rule wavlm_pretrain:
        input:
            wav_scp=f"{DATA_DIR}/train/wav.scp",
        output:
            model=run_path("wavlm_pretrain", "wavlm_tiny.pt"),
            log=run_path("wavlm_pretrain", "train_log.tsv"),
        params:
            hparams=as_json({"pretrain": WAVLM["pretrain"], "num_layers": WAVLM["num_layers"],
                             "train": config["train"]}),
            ckpt=run_path("wavlm_pretrain", "ckpt"),
        threads: 32
        resources:
            gpu=0,
        log:
            log_path("wavlm_train/wavlm_pretrain"),
        benchmark:
            bench_path("wavlm_train/wavlm_pretrain")
        conda:
            ENV
        shell:
            train_command("pretrain_wavlm.py") + " --train-scp {input.wav_scp:q} --ckpt-dir {params.ckpt:q}"
            " --model-out {output.model:q} --log-out {output.log:q} --hparams {params.hparams:q} >> {log:q} 2>&1"


if WAVLM["enabled"]:

    rule wavlm_step1:
        input:
            **_WAVLM_COMMON_INPUT,
            labels=kmeans_path("dino", "labels.txt"),
            checkpoint=[wavlm_checkpoint()] if wavlm_checkpoint() is not None else [],
        output:
            model=sys_path("wavlm_step1", "model.pt"),
            log=sys_path("wavlm_step1", "train_log.tsv"),
            label_log=sys_path("wavlm_step1", "label_log.tsv"),
            record=sys_path("wavlm_step1", "train_record.json"),
        params:
            system="wavlm_step1",
            hparams=as_json(wavlm_hparams("step1")),
            init=lambda wildcards, input: f"--labels {shlex.quote(input.labels)}",
            ckpt=sys_path("wavlm_step1", "ckpt"),
            augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
        threads: 32
        resources:
            gpu=0,
        log:
            log_path("wavlm_train/wavlm_step1"),
        benchmark:
            bench_path("wavlm_train/wavlm_step1")
        conda:
            ENV
        shell:
            _WAVLM_SHELL

    rule wavlm_step2:
        input:
            **_WAVLM_COMMON_INPUT,
            init=sys_path("wavlm_step1", "model.pt"),
        output:
            model=sys_path("wavlm_step2", "model.pt"),
            log=sys_path("wavlm_step2", "train_log.tsv"),
            label_log=sys_path("wavlm_step2", "label_log.tsv"),
            record=sys_path("wavlm_step2", "train_record.json"),
        params:
            system="wavlm_step2",
            hparams=as_json(wavlm_hparams("step2")),
            init=lambda wildcards, input: f"--init-model {shlex.quote(input.init)}",
            ckpt=sys_path("wavlm_step2", "ckpt"),
            augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
        threads: 32
        resources:
            gpu=0,
        log:
            log_path("wavlm_train/wavlm_step2"),
        benchmark:
            bench_path("wavlm_train/wavlm_step2")
        conda:
            ENV
        shell:
            _WAVLM_SHELL

    rule wavlm_ft:
        input:
            **_WAVLM_COMMON_INPUT,
            init=sys_path("wavlm_step2", "model.pt"),
        output:
            model=sys_path("wavlm_ft", "model.pt"),
            log=sys_path("wavlm_ft", "train_log.tsv"),
            label_log=sys_path("wavlm_ft", "label_log.tsv"),
            record=sys_path("wavlm_ft", "train_record.json"),
        params:
            system="wavlm_ft",
            hparams=as_json(wavlm_hparams("ft")),
            init=lambda wildcards, input: f"--init-model {shlex.quote(input.init)}",
            ckpt=sys_path("wavlm_ft", "ckpt"),
            augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
        threads: 32
        resources:
            gpu=0,
        log:
            log_path("wavlm_train/wavlm_ft"),
        benchmark:
            bench_path("wavlm_train/wavlm_ft")
        conda:
            ENV
        shell:
            _WAVLM_SHELL
