# Iterative clustering baseline (docs/method.md §8): rounds r = 1..R (config iterative.rounds) of
#   fixed labels of round r-1 --train--> iter_r<r>/model.pt --extract--> emb/train.npz --kmeans--> labels
# Round 1 starts from the DINO model and its k-means labels and centers, round r from iter_r<r-1>'s
# (encoder = the previous round's EMA teacher; a fresh AAM head initialised from the centers). The
# same stage and script as SSRL (train_ssrl.py) with the online label update and NLM off, for
# E_round epochs (iterative.budget x SSRL's epochs over the R rounds, iterative_round_epochs in
# common.smk) on the SSRL label-fixed LR segment; the EMA teacher is kept and evaluated as
# in SSRL. Every round is scored (<system>/metrics/) and its labels' quality recorded
# (iter_r<r>/kmeans_k<k>/quality.json) by the extract / kmeans / score rules.
#   iter_r<r>/model.pt, train_log.tsv, label_log.tsv (fixed-label rows), train_record.json (cost,
#   provenance), ckpt/ (params, resumable)
# Uses AUGMENT_LISTS of rules/ssrl.smk (included before this file).


rule iterative_train:
    input:
        wav_scp=f"{DATA_DIR}/train/wav.scp",
        utt2spk=f"{DATA_DIR}/train/utt2spk",
        init=lambda wildcards: sys_path(iterative_previous(wildcards), "model.pt"),
        labels=lambda wildcards: kmeans_path(iterative_previous(wildcards), "labels.txt"),
        centers=lambda wildcards: kmeans_path(iterative_previous(wildcards), "centers.npy"),
        augment=AUGMENT_LISTS,
        val_scp=f"{DATA_DIR}/test/wav.scp",
        val_trials=f"{DATA_DIR}/trials/{TRIAL_LISTS[0]}.txt",
    output:
        model=sys_path("iter_r{r}", "model.pt"),
        log=sys_path("iter_r{r}", "train_log.tsv"),
        label_log=sys_path("iter_r{r}", "label_log.tsv"),
        record=sys_path("iter_r{r}", "train_record.json"),
    params:
        hparams=as_json(iterative_hparams()),
        ckpt=lambda wildcards: sys_path(f"iter_r{wildcards.r}", "ckpt"),
        augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
    wildcard_constraints:
        r=r"[1-9][0-9]*",
    threads: 32
    resources:
        gpu=0,
    log:
        log_path("iterative_train/iter_r{r}"),
    benchmark:
        bench_path("iterative_train/iter_r{r}")
    conda:
        ENV
    shell:
        train_command("train_ssrl.py") + " --system iter_r{wildcards.r} --train-scp {input.wav_scp:q}"
        " --init-model {input.init:q} --labels {input.labels:q} --centers {input.centers:q}"
        f" {AUGMENT_ARG} --val-scp {{input.val_scp:q}} --val-trials {{input.val_trials:q}}"
        " --utt2spk {input.utt2spk:q} --ckpt-dir {params.ckpt:q} --model-out {output.model:q}"
        " --log-out {output.log:q} --label-log-out {output.label_log:q} --record-out {output.record:q} --hparams {params.hparams:q}"
        " >> {log:q} 2>&1"
