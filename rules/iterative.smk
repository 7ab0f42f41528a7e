# Iterative clustering baseline (docs/method.md §8): rounds r = 1..R (config iterative.rounds) of
#   fixed labels of round r-1 --train--> iter_r<r>/model.pt --extract--> emb/train.npz --kmeans--> labels
# Round 1 starts from the DINO model and its k-means labels and centers, round r from iter_r<r-1>'s
# (encoder = the previous round's EMA teacher; a fresh AAM head initialised from the centers). The
# same stage and script as SSRL (train_ssrl.py) with the online label update and NLM off, for
# E_round epochs (iterative.budget x SSRL's epochs over the R rounds, ssrl.variants.iterative_round_epochs)
# on the SSRL label-fixed LR segment; the EMA teacher is kept and evaluated as in SSRL. Every round is scored (<system>/metrics/) and its labels' quality recorded
# (iter_r<r>/kmeans_k<k>/quality.json) by the extract / kmeans / score rules.
#   iter_r<r>/model.pt, train_log.tsv, label_log.tsv (fixed-label rows), train_record.json (cost,
#   provenance), ckpt/ (params, resumable)


rule iterative_train:
    input:
        **ssrl_train_input(
            init=lambda wildcards: sys_path(iterative_previous(wildcards), "model.pt"),
            labels=lambda wildcards: kmeans_path(iterative_previous(wildcards), "labels.txt"),
            centers=lambda wildcards: kmeans_path(iterative_previous(wildcards), "centers.npy"),
        ),
    output:
        **ssrl_train_output("iter_r{r}"),
    log:
        log_path("iterative_train/iter_r{r}"),
    benchmark:
        bench_path("iterative_train/iter_r{r}")
    wildcard_constraints:
        r=r"[1-9][0-9]*",
    priority: PRIORITY["iterative"]
    conda:
        ENV
    threads: 32
    resources:
        gpu=0,
    params:
        **ssrl_train_params(lambda wildcards: f"iter_r{wildcards.r}", _variants.iterative_hparams(config)),
    shell:
        ssrl_train_shell()
