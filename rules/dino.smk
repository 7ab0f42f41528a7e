# Stage 1, DINO (docs/method.md §4): the log-mel ECAPA-TDNN pre-trained by self-distillation.
#   dino/model.pt        model file (eval_state = EMA teacher's SpeakerModel; student, teacher, head, centre)
#   dino/train_log.tsv   `step` rows every train.log_every steps, `epoch` rows (means, validation EER, time)
#   dino/train_record.json  cost (steps, global batch, processes, device, wall/CPU/GPU-seconds, peak memory)
#                        and the job stamp (commit, config hash): ssrl.train.record
# dino/ckpt/ holds the resumable checkpoints and the live log: a params value, not an output, so a
# killed or preempted job (exit 143 after SIGTERM) resumes where it stopped when it is rerun.
# Validation: EER of the teacher on the first trial list (TRIAL_LISTS) every dino.val_every epochs.
# One process on CPU or one GPU; resources gpu >= 2 (the SLURM profile) runs torchrun (DDP).


rule dino_train:
    input:
        wav_scp=f"{DATA_DIR}/train/wav.scp",
        augment=AUGMENT_LISTS,
        val_scp=f"{DATA_DIR}/test/wav.scp",
        val_trials=f"{DATA_DIR}/trials/{TRIAL_LISTS[0]}.txt",
    output:
        model=sys_path("dino", "model.pt"),
        log=sys_path("dino", "train_log.tsv"),
        record=sys_path("dino", "train_record.json"),
    log:
        log_path("dino_train"),
    benchmark:
        bench_path("dino_train")
    priority: PRIORITY["dino"]
    conda:
        ENV
    threads: 32
    resources:
        gpu=0,
    params:
        hparams=as_json(
            {
                **{key: config[key] for key in ("dino", "model", "train")},
                "augment": {key: config["augment"][key] for key in ("snr_db", "babble_count")},
            }
        ),
        ckpt=sys_path("dino", "ckpt"),
        augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
    shell:
        train_command("train_dino.py") + f" --train-scp {{input.wav_scp:q}} {AUGMENT_ARG}"
        " --val-scp {input.val_scp:q} --val-trials {input.val_trials:q} --ckpt-dir {params.ckpt:q}"
        " --model-out {output.model:q} --log-out {output.log:q} --record-out {output.record:q} --hparams {params.hparams:q} >> {log:q} 2>&1"
