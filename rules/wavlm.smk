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
# <system>/ckpt/ (a params value) holds the resumable checkpoints. Extraction (rules/extract.smk) keeps the
# first extract.max_seconds_wavlm seconds of every file for these systems (the model file's arch says
# WavLM), and scoring is as for every system.
#
# Hyper-parameters: every step starts from the ssrl section (+ quirk Q1) overridden by wavlm.<step>;
# step 1 leaves out the ssrl keys that act only in label updates or on a teacher. The keys that make a
# step what it is (init, schedule, label_update, teacher, frozen WavLM, ...) are set by
# ssrl.variants.WAVLM_STEPS, not in the config. With the WavLM frozen (step 2) the teacher runs the student's
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
# must exist and look like a WavLM checkpoint (ssrl.models.wavlm_checkpoint.checkpoint_problem). Only in the
# main Snakemake process (also for -n and --lint): a job re-reads this file, and step 1 checks every key
# when it loads the checkpoint, so jobs skip the torch import of the check. Resources: the `gpu`
# resource of each rule (profiles/slurm/config.yaml); gpu >= 2 runs torchrun.

if WAVLM["enabled"] and workflow.is_main_process:
    if WAVLM["checkpoint"] is not None:
        if WAVLM["tiny"]:
            raise ValueError(
                f"wavlm.tiny: true builds a random tiny WavLM, but wavlm.checkpoint is set "
                f"({WAVLM['checkpoint']}); set wavlm.tiny: false or wavlm.checkpoint: null"
            )
        from ssrl.models.wavlm_checkpoint import checkpoint_problem

        _WAVLM_PROBLEM = checkpoint_problem(WAVLM["checkpoint"], WAVLM["num_layers"])
        if _WAVLM_PROBLEM:
            raise ValueError(
                f"wavlm.checkpoint: {WAVLM['checkpoint']} {_WAVLM_PROBLEM} (wavlm.enabled is true; "
                f"set wavlm.enabled: false to run without the WavLM systems)"
            )


if WAVLM["enabled"] and wavlm_checkpoint() == run_path("wavlm_pretrain", "wavlm_tiny.pt"):

    rule wavlm_pretrain:
        input:
            wav_scp=f"{DATA_DIR}/train/wav.scp",
        output:
            model=run_path("wavlm_pretrain", "wavlm_tiny.pt"),
            log=run_path("wavlm_pretrain", "train_log.tsv"),
        log:
            log_path("wavlm_train/wavlm_pretrain"),
        benchmark:
            bench_path("wavlm_train/wavlm_pretrain")
        priority: PRIORITY["wavlm"]
        conda:
            ENV
        threads: 32
        resources:
            gpu=0,
        params:
            hparams=as_json(
                {"pretrain": WAVLM["pretrain"], "num_layers": WAVLM["num_layers"], "train": config["train"]}
            ),
            ckpt=run_path("wavlm_pretrain", "ckpt"),
        shell:
            train_command("pretrain_wavlm.py") + " --train-scp {input.wav_scp:q} --ckpt-dir {params.ckpt:q}"
            " --model-out {output.model:q} --log-out {output.log:q} --hparams {params.hparams:q} >> {log:q} 2>&1"


if WAVLM["enabled"]:

    rule wavlm_step1:
        input:
            **ssrl_train_input(
                labels=kmeans_path("dino", "labels.txt"),
                checkpoint=[wavlm_checkpoint()] if wavlm_checkpoint() is not None else [],
            ),
        output:
            **ssrl_train_output("wavlm_step1"),
        log:
            log_path("wavlm_train/wavlm_step1"),
        benchmark:
            bench_path("wavlm_train/wavlm_step1")
        priority: PRIORITY["wavlm"]
        conda:
            ENV
        threads: 32
        resources:
            gpu=0,
        params:
            **ssrl_train_params("wavlm_step1", _variants.wavlm_hparams(config, "step1", wavlm_arch())),
        shell:
            ssrl_train_shell()

    rule wavlm_step2:
        input:
            **ssrl_train_input(init=sys_path("wavlm_step1", "model.pt")),
        output:
            **ssrl_train_output("wavlm_step2"),
        log:
            log_path("wavlm_train/wavlm_step2"),
        benchmark:
            bench_path("wavlm_train/wavlm_step2")
        priority: PRIORITY["wavlm"]
        conda:
            ENV
        threads: 32
        resources:
            gpu=0,
        params:
            **ssrl_train_params("wavlm_step2", _variants.wavlm_hparams(config, "step2")),
        shell:
            ssrl_train_shell()

    rule wavlm_ft:
        input:
            **ssrl_train_input(init=sys_path("wavlm_step2", "model.pt")),
        output:
            **ssrl_train_output("wavlm_ft"),
        log:
            log_path("wavlm_train/wavlm_ft"),
        benchmark:
            bench_path("wavlm_train/wavlm_ft")
        priority: PRIORITY["wavlm"]
        conda:
            ENV
        threads: 32
        resources:
            gpu=0,
        params:
            **ssrl_train_params("wavlm_ft", _variants.wavlm_hparams(config, "ft")),
        shell:
            ssrl_train_shell()
